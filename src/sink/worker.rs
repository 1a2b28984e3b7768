//! The queue in front of each (route, sink): a bounded channel drained by one task that
//! sends in batches and retries failures with exponential backoff and jitter.
//!
//! How entries are gathered into a send is the sink's choice ([`Batching`]): syslog and
//! stdout take whatever is queued at once; Elasticsearch fills bulk requests, lingering
//! up to `batch.timeoutMs` for a low-rate stream and sending at once for a busy one.
//!
//! A sink's failures stay inside its worker: the worker backs off and retries the unsent
//! rest of the batch while the queue fills. What happens when the queue is full is the
//! producer's business (see the agent pipeline: the lane detaches and catches up later).
//!
//! After every accepted prefix of a batch the worker advances the checkpoint of each
//! (container, route, sink) lane in it to the position just past its last accepted
//! record, so a checkpoint never passes a record the sink did not take. Records still
//! queued when the agent stops are not lost: their lanes' checkpoints stop short of
//! them, and the next agent reads them again from Docker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Credentials, SinkClient, SinkContext, SinkError};
use crate::agent::checkpoint::LaneCheckpoint;
use crate::agent::docker::Cursor;
use crate::record::{LogPosition, Record};
use crate::route::document::CompiledSink;
pub use batching::Batching;
use batching::{Carried, gather};
pub use queue::{ENTRY_OVERHEAD, QueueBounds, QueueBytes, SinkQueue};

mod batching;
mod queue;

/// Most records handed to a syslog or stdout sink in one batch.
pub const MAX_BATCH: usize = 1024;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where a lane's data ends in Docker's log once an entry is accepted.
#[derive(Clone)]
pub struct Position {
    pub lane: Arc<LaneCheckpoint>,
    pub cursor: Cursor,
    /// Lines of the log the entry accounts for: a record's lines (several when joined),
    /// 0 for a position entry. The lane's count of lines queued and not yet accepted
    /// goes down by as many once the sink takes it.
    pub lines: u64,
}

/// What a (route, sink) queue carries; entries of one lane are in log order.
pub enum Queued {
    /// A record, and its lane's position just past it.
    Record(Arc<Record>, Position),
    /// A position without a record: the lane's lines up to here were filtered out. Lets
    /// the checkpoint move past a long filtered stretch.
    Position(Position),
}

impl Queued {
    fn record(&self) -> Option<&Arc<Record>> {
        match self {
            Queued::Record(r, _) => Some(r),
            _ => None,
        }
    }
}

/// A record's position in its own stream, from its lane's position just past it.
fn log_position(record: &Record, p: &Position) -> LogPosition {
    let c = p.cursor.stream(record.stream);
    LogPosition {
        timestamp: c.timestamp,
        seen: c.seen,
    }
}

/// Backoff before retry number `attempt` (1-based): doubling from 100 ms to 10 s, with
/// up to 25 % jitter so that many workers do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let jitter = base.mul_f64(fastrand::f64() * 0.25);
    base + jitter
}

/// Start the worker for `sink`; entries sent to the returned queue are delivered in
/// order. The worker ends once every sender is dropped and the queue is drained, or when
/// `stop` is cancelled (what is still queued then is read again by the next agent, or by
/// the lanes of an edited route from their checkpoints).
///
/// The worker runs on `tracker` and is also tracked by `own` (its route's workers): once
/// `own` is empty, every acknowledgement the stopped workers will ever make has been
/// applied to the lanes' checkpoints, so a lane may claim its checkpoint again without a
/// late acknowledgement being lost (a repeat) — see the container task's route edits.
/// A stopped worker starts no new send; a send in flight ends first (a connection
/// attempt at once, a syslog write on its own timeout, a bulk request when answered or
/// given up).
///
/// `credentials` carries the route's resolved credentials. When they change (a Secret
/// was fixed or rotated) the worker rebuilds its client with them before its next
/// attempt, so a batch held back by, say, a wrong password goes out with the right one:
/// nothing queued is lost and nothing is reordered. An error building the client from
/// the first credentials is returned; from later ones it is logged and the worker keeps
/// the client it has.
pub fn spawn(
    tracker: &TaskTracker,
    own: &TaskTracker,
    sink: &CompiledSink,
    ctx: SinkContext,
    credentials: watch::Receiver<Arc<Credentials>>,
    QueueBounds { records, bytes }: QueueBounds,
    stop: CancellationToken,
) -> Result<SinkQueue, SinkError> {
    let client = build_client(sink, &ctx, credentials.borrow().clone(), &stop)?;
    let (tx, rx) = mpsc::channel(records.max(1));
    let queue = SinkQueue::new(tx, bytes.clone());
    let source = ClientSource {
        sink: sink.clone(),
        credentials,
        pending: false,
    };
    tracker.spawn(own.track_future(run(client, source, ctx, rx, bytes, stop)));
    Ok(queue)
}

fn build_client(
    sink: &CompiledSink,
    ctx: &SinkContext,
    credentials: Arc<Credentials>,
    stop: &CancellationToken,
) -> Result<SinkClient, SinkError> {
    let ctx = SinkContext {
        credentials,
        ..ctx.clone()
    };
    let mut client = SinkClient::new(sink, ctx)?;
    client.set_shutdown(stop.clone());
    Ok(client)
}

/// What a worker needs to rebuild its client when the credentials change.
struct ClientSource {
    sink: CompiledSink,
    credentials: watch::Receiver<Arc<Credentials>>,
    /// [`ClientSource::changed`] saw a change that [`ClientSource::renewed`] has not
    /// taken yet (waiting on a watch marks the value seen).
    pending: bool,
}

impl ClientSource {
    /// A client built from new credentials, if they changed since the last call.
    fn renewed(&mut self, ctx: &SinkContext, stop: &CancellationToken) -> Option<SinkClient> {
        if !std::mem::take(&mut self.pending) && !self.credentials.has_changed().unwrap_or(false) {
            return None;
        }
        let credentials = self.credentials.borrow_and_update().clone();
        match build_client(&self.sink, ctx, credentials, stop) {
            Ok(client) => {
                tracing::info!(route = %ctx.route, sink = %ctx.sink, "credentials changed; the sink uses the new ones from its next attempt");
                Some(client)
            }
            Err(e) => {
                tracing::error!(route = %ctx.route, sink = %ctx.sink, error = %e, "the changed credentials cannot be used; keeping the previous ones");
                None
            }
        }
    }

    /// Resolves when the credentials change (never, once their sender is gone).
    async fn changed(&mut self) {
        if self.credentials.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.pending = true;
    }
}

/// Records per send for a sink that cannot tell a resend from a new record (syslog,
/// stdout), so that the checkpoint follows the sink closely: an agent killed after a
/// send was written but before its checkpoint was stored repeats at most that send, and
/// a send this small is one socket write unless the receiver is backed up.
/// Elasticsearch deduplicates resends by `_id`, so it sends whole batches.
pub const NON_IDEMPOTENT_STEP: usize = 64;

/// Advance the checkpoints of the lanes in `entries` (all accepted).
fn accepted(entries: &[Queued]) {
    // A batch holds few lanes: the last position per lane, found by linear search.
    let mut last: Vec<(&Position, u64)> = Vec::new();
    for entry in entries {
        let (Queued::Record(_, p) | Queued::Position(p)) = entry;
        match last.iter_mut().find(|(l, _)| Arc::ptr_eq(&l.lane, &p.lane)) {
            Some((l, lines)) => {
                *l = p;
                *lines += p.lines;
            }
            None => last.push((p, p.lines)),
        }
    }
    for (p, lines) in last {
        p.lane.advance(p.cursor);
        p.lane.accepted_lines(lines);
    }
}

async fn run(
    mut client: SinkClient,
    mut source: ClientSource,
    ctx: SinkContext,
    mut rx: mpsc::Receiver<Queued>,
    bytes: Arc<QueueBytes>,
    stop: CancellationToken,
) {
    let kind = client.kind();
    let batching = client.batching();
    let step = batching.step.max(1);
    let depth = ctx
        .metrics
        .queue_depth
        .with_label_values(&[&ctx.route, &ctx.sink]);
    let retries = ctx
        .metrics
        .send_retries
        .with_label_values(&[kind, &ctx.route, &ctx.sink]);
    let mut batch: Vec<Queued> = Vec::new();
    let mut records: Vec<Arc<Record>> = Vec::new();
    let mut positions: Vec<LogPosition> = Vec::new();
    let mut carry: Carried = None;
    'receive: loop {
        let weigh = |r: &Arc<Record>| client.weigh(r);
        if !gather(&mut rx, &mut carry, &mut batch, &batching, weigh, &stop).await {
            break;
        }
        depth.set(rx.len() as i64);
        records.clear();
        positions.clear();
        for entry in &batch {
            if let Queued::Record(r, p) = entry {
                records.push(r.clone());
                positions.push(log_position(r, p));
            }
        }
        // Entries up to `checkpointed` have had their positions applied.
        let mut checkpointed = 0;
        let mut done = 0;
        let mut attempt = 0;
        loop {
            if stop.is_cancelled() {
                break 'receive;
            }
            if let Some(renewed) = source.renewed(&ctx, &stop) {
                client = renewed;
            }
            let end = (done + step).min(records.len());
            let result = if done < end {
                client
                    .send(&records[done..end], &positions[done..end])
                    .await
            } else {
                Ok(())
            };
            let (newly, failure) = match result {
                Ok(()) => (end - done, None),
                Err(f) => (f.accepted, Some(f.error)),
            };
            done += newly;
            // Entries through the `done`-th record, and the non-record entries after
            // it when everything was accepted.
            let upto = if done == records.len() {
                batch.len()
            } else {
                nth_record_end(&batch, done)
            };
            accepted(&batch[checkpointed..upto]);
            checkpointed = upto;
            let Some(error) = failure else {
                if done == records.len() {
                    break;
                }
                continue;
            };
            attempt += 1;
            ctx.metrics
                .send_errors
                .with_label_values(&[kind, &ctx.route, &ctx.sink, error.reason()])
                .inc();
            if attempt == 1 || attempt % 10 == 0 {
                tracing::warn!(route = %ctx.route, sink = %ctx.sink, attempt, error = %error, "send failed; retrying with backoff");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(attempt)) => retries.inc(),
                // New credentials are worth trying at once.
                _ = source.changed() => retries.inc(),
                _ = stop.cancelled() => break 'receive,
            }
        }
        bytes.release(batch.iter().map(queue::weight).sum());
        batch.clear();
    }
    depth.set(0);
}

/// Index just past the entry holding the `n`-th record (entries before the first record
/// when `n` is 0).
fn nth_record_end(batch: &[Queued], n: usize) -> usize {
    if n == 0 {
        return batch
            .iter()
            .position(|e| e.record().is_some())
            .unwrap_or(batch.len());
    }
    let mut seen = 0;
    for (i, e) in batch.iter().enumerate() {
        if e.record().is_some() {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    batch.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let d1 = backoff(1);
        assert!(
            d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(125),
            "{d1:?}"
        );
        let d4 = backoff(4);
        assert!(
            d4 >= Duration::from_millis(800) && d4 <= Duration::from_millis(1000),
            "{d4:?}"
        );
        let d30 = backoff(30);
        assert!(
            d30 >= BACKOFF_MAX && d30 <= BACKOFF_MAX.mul_f64(1.25),
            "{d30:?}"
        );
    }
}

#[cfg(test)]
mod accepted_tests {
    use super::*;
    use crate::agent::checkpoint::Checkpoints;
    use crate::record::{ContainerInfo, Timestamp};

    fn at(secs: i64) -> Cursor {
        Cursor::at(Timestamp { secs, nanos: 0 })
    }

    fn record() -> Arc<Record> {
        Arc::new(Record {
            container: Arc::new(ContainerInfo::default()),
            stream: crate::api::StreamName::Stdout,
            timestamp: Timestamp::default(),
            message: String::new(),
            truncated: false,
        })
    }

    #[test]
    fn only_the_accepted_prefix_moves_checkpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path()).expect("open").checkpoints;
        let (a, _) = store.lane("a", "ns/r", "s", at(1)).expect("lane");
        let (b, _) = store.lane("b", "ns/r", "s", at(1)).expect("lane");
        let rec = |lane: &Arc<LaneCheckpoint>, secs| {
            Queued::Record(
                record(),
                Position {
                    lane: lane.clone(),
                    cursor: at(secs),
                    lines: 1,
                },
            )
        };
        let batch = vec![
            Queued::Position(Position {
                lane: b.clone(),
                cursor: at(5),
                lines: 0,
            }),
            rec(&a, 10),
            rec(&b, 11),
            rec(&a, 12),
        ];
        assert_eq!(nth_record_end(&batch, 0), 1);
        assert_eq!(nth_record_end(&batch, 2), 3);
        // The sink took two records: a@10 and b@11, not a@12.
        accepted(&batch[..nth_record_end(&batch, 2)]);
        assert_eq!(store.get("a", "ns/r", "s"), Some(at(10)));
        assert_eq!(store.get("b", "ns/r", "s"), Some(at(11)));
        accepted(&batch[3..]);
        assert_eq!(store.get("a", "ns/r", "s"), Some(at(12)));
        assert_eq!(store.get("b", "ns/r", "s"), Some(at(11)));
    }
}
