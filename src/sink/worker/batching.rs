//! Gathering queue entries into batches: how many, how heavy, and how long to wait.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{MAX_BATCH, NON_IDEMPOTENT_STEP, Queued};
use crate::record::Record;

/// How a worker gathers queue entries into one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Most entries in a batch.
    pub max_records: usize,
    /// A batch takes no more entries once its records weigh this much (bytes as
    /// [`super::SinkClient::weigh`] estimates them).
    pub max_bytes: usize,
    /// A batch of this many records, or of records weighing `full_bytes`, is full: it
    /// goes as soon as the queue has nothing more ready. A smaller one waits for more up
    /// to `linger` after its first entry arrived.
    pub full_records: usize,
    pub full_bytes: usize,
    pub linger: Duration,
    /// Records per send; the lanes' checkpoints advance after each.
    pub step: usize,
}

impl Batching {
    /// Whatever is queued goes at once, in sends of [`NON_IDEMPOTENT_STEP`] records
    /// (syslog, stdout).
    pub const IMMEDIATE: Batching = Batching {
        max_records: MAX_BATCH,
        max_bytes: usize::MAX,
        full_records: 1,
        full_bytes: usize::MAX,
        linger: Duration::ZERO,
        step: NON_IDEMPOTENT_STEP,
    };
}

/// An entry taken from the queue that would have pushed its batch past
/// [`Batching::max_bytes`], with its weight: it starts the next batch.
pub(super) type Carried = Option<(Queued, usize)>;

/// Records and weight of a batch being gathered.
#[derive(Default)]
struct Fill {
    records: usize,
    bytes: usize,
}

impl Fill {
    /// Add `entry` to `batch`, or carry it when it is a record that does not fit.
    fn admit(
        &mut self,
        (entry, weight): (Queued, usize),
        batch: &mut Vec<Queued>,
        b: &Batching,
        carry: &mut Carried,
    ) -> bool {
        if entry.record().is_some() {
            if self.records > 0 && self.bytes.saturating_add(weight) > b.max_bytes {
                *carry = Some((entry, weight));
                return false;
            }
            self.records += 1;
            self.bytes = self.bytes.saturating_add(weight);
        }
        batch.push(entry);
        true
    }
}

/// Take entries (first the one carried over, if any) into the empty `batch` as `b`
/// says, weighing records with `weigh`. Returns false, with nothing to send, when the
/// queue is closed and drained or `stop` was cancelled (what was taken is then read
/// again by the next agent).
pub(super) async fn gather(
    rx: &mut mpsc::Receiver<Queued>,
    carry: &mut Carried,
    batch: &mut Vec<Queued>,
    b: &Batching,
    mut weigh: impl FnMut(&Arc<Record>) -> usize,
    stop: &CancellationToken,
) -> bool {
    let mut weighed = |e: Queued| {
        let w = e.record().map_or(0, &mut weigh);
        (e, w)
    };
    let first = match carry.take() {
        Some(c) => c,
        None => {
            let e = tokio::select! {
                e = rx.recv() => e,
                _ = stop.cancelled() => None,
            };
            let Some(e) = e else { return false };
            weighed(e)
        }
    };
    let deadline = tokio::time::Instant::now() + b.linger;
    let mut fill = Fill::default();
    fill.admit(first, batch, b, carry);
    loop {
        // Whatever is ready, up to the caps.
        while batch.len() < b.max_records {
            let Ok(e) = rx.try_recv() else { break };
            if !fill.admit(weighed(e), batch, b, carry) {
                return true;
            }
        }
        if batch.len() >= b.max_records
            || fill.records >= b.full_records
            || fill.bytes >= b.full_bytes
        {
            return true;
        }
        tokio::select! {
            biased;
            e = rx.recv() => match e {
                Some(e) => {
                    if !fill.admit(weighed(e), batch, b, carry) {
                        return true;
                    }
                }
                None => return true,
            },
            () = tokio::time::sleep_until(deadline) => return true,
            () = stop.cancelled() => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::checkpoint::{Checkpoints, LaneCheckpoint};
    use crate::agent::docker::Cursor;
    use crate::record::{ContainerInfo, Timestamp};
    use crate::sink::worker::Position;
    use tokio::time::Instant;

    struct Lane {
        _dir: tempfile::TempDir,
        lane: Arc<LaneCheckpoint>,
    }

    fn lane() -> Lane {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path()).expect("open").checkpoints;
        let (lane, _) = store
            .lane("c", "ns/r", "s", Cursor::default())
            .expect("lane");
        Lane { _dir: dir, lane }
    }

    fn entry(lane: &Lane, i: u32, message: &str) -> Queued {
        let timestamp = Timestamp {
            secs: i64::from(i),
            nanos: 0,
        };
        let mut cursor = Cursor::at(timestamp);
        cursor.stdout.seen = 1;
        Queued::Record(
            Arc::new(Record {
                container: Arc::new(ContainerInfo::default()),
                stream: crate::api::StreamName::Stdout,
                timestamp,
                message: message.into(),
                truncated: false,
            }),
            Position {
                lane: lane.lane.clone(),
                cursor,
                lines: 1,
            },
        )
    }

    fn bulk(full_records: usize, full_bytes: usize, linger_ms: u64) -> Batching {
        Batching {
            max_records: full_records * 2,
            max_bytes: full_bytes.saturating_mul(2),
            full_records,
            full_bytes,
            linger: Duration::from_millis(linger_ms),
            step: full_records * 2,
        }
    }

    async fn take(
        rx: &mut mpsc::Receiver<Queued>,
        carry: &mut Carried,
        b: &Batching,
        stop: &CancellationToken,
    ) -> Option<Vec<Queued>> {
        let mut batch = Vec::new();
        gather(rx, carry, &mut batch, b, |r| r.message.len(), stop)
            .await
            .then_some(batch)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_stream_lingers_to_fill_a_batch() {
        let l = lane();
        let (tx, mut rx) = mpsc::channel(100);
        let mut carry = None;
        let entries: Vec<Queued> = (0..10).map(|i| entry(&l, i, "m")).collect();
        let producer = tokio::spawn(async move {
            for e in entries {
                tx.send(e).await.expect("queue open");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Keep the queue open past the linger.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(tx);
        });
        let stop = CancellationToken::new();
        let started = Instant::now();
        let batch = take(&mut rx, &mut carry, &bulk(100, 1 << 20, 500), &stop)
            .await
            .expect("a batch");
        assert_eq!(batch.len(), 10, "all 10 records in one batch");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(500),
            "the batch waits the full linger from its first record"
        );
        producer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_a_backlog_in_full_batches() {
        let l = lane();
        let (tx, mut rx) = mpsc::channel(100);
        let mut carry = None;
        for i in 0..23 {
            tx.send(entry(&l, i, "m")).await.expect("queue open");
        }
        let stop = CancellationToken::new();
        let b = bulk(5, 1 << 20, 10_000);
        let started = Instant::now();
        // A backlog fills a batch up to its cap (two requests' worth) without waiting.
        let sizes = [10, 10];
        for size in sizes {
            let batch = take(&mut rx, &mut carry, &b, &stop).await.expect("a batch");
            assert_eq!(batch.len(), size);
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no lingering with a backlog"
        );
        // Three left: less than full, so they wait for the linger (or more records).
        let batch = take(&mut rx, &mut carry, &b, &stop).await.expect("a batch");
        assert_eq!(batch.len(), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // Six arriving at once: a full batch and one more; nothing else comes, so they
        // go at once.
        for i in 0..6 {
            tx.send(entry(&l, i, "m")).await.expect("queue open");
        }
        let started = Instant::now();
        let batch = take(&mut rx, &mut carry, &b, &stop).await.expect("a batch");
        assert_eq!((batch.len(), started.elapsed()), (6, Duration::ZERO));
        // A closed queue: what is there goes, then the worker ends.
        tx.send(entry(&l, 0, "m")).await.expect("queue open");
        drop(tx);
        let batch = take(&mut rx, &mut carry, &b, &stop).await.expect("a batch");
        assert_eq!(batch.len(), 1);
        assert!(take(&mut rx, &mut carry, &b, &stop).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_fill_a_batch_too() {
        let l = lane();
        let (tx, mut rx) = mpsc::channel(100);
        let mut carry = None;
        for i in 0..10 {
            tx.send(entry(&l, i, &"x".repeat(120)))
                .await
                .expect("queue open");
        }
        let stop = CancellationToken::new();
        // Full at 250 bytes, capped at 500: a backlog of 120-byte records goes four at a
        // time, at once (the fifth would pass the cap: it starts the next batch).
        let b = bulk(1000, 250, 10_000);
        let started = Instant::now();
        for _ in 0..2 {
            let batch = take(&mut rx, &mut carry, &b, &stop).await.expect("a batch");
            assert_eq!(batch.len(), 4);
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        // 240 bytes left: not full, so they linger.
        let batch = take(&mut rx, &mut carry, &b, &stop).await.expect("a batch");
        assert_eq!(
            (batch.len(), started.elapsed()),
            (2, Duration::from_secs(10))
        );
        // One record heavier than the cap still goes, alone.
        tx.send(entry(&l, 0, &"x".repeat(600)))
            .await
            .expect("queue open");
        tx.send(entry(&l, 1, "small")).await.expect("queue open");
        let batch = take(&mut rx, &mut carry, &b, &stop).await.expect("a batch");
        assert_eq!(batch.len(), 1);
        assert!(carry.is_some(), "the small record waits for the next batch");
        drop(tx);
        let batch = take(&mut rx, &mut carry, &b, &stop).await.expect("a batch");
        assert_eq!(batch.len(), 1);
        assert!(take(&mut rx, &mut carry, &b, &stop).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_while_lingering_sends_nothing() {
        let l = lane();
        let (tx, mut rx) = mpsc::channel(100);
        let mut carry = None;
        tx.send(entry(&l, 0, "m")).await.expect("queue open");
        let stop = CancellationToken::new();
        let canceller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop.cancel();
            })
        };
        assert!(
            take(&mut rx, &mut carry, &bulk(100, 1 << 20, 1000), &stop)
                .await
                .is_none()
        );
        canceller.await.expect("canceller");
        drop(tx);
    }

    #[test]
    fn syslog_and_stdout_keep_immediate_small_sends() {
        let b = Batching::IMMEDIATE;
        assert_eq!((b.full_records, b.linger, b.step), (1, Duration::ZERO, 64));
    }
}
