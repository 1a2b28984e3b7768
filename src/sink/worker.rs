//! The queue in front of each (route, sink): a bounded channel drained by one task that
//! sends in batches and retries failures with exponential backoff and jitter.
//!
//! A sink's failures stay inside its worker: the worker backs off and retries the unsent
//! rest of the batch while the queue fills. What happens when the queue is full is the
//! producer's business (see the agent pipeline).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{SinkClient, SinkContext};
use crate::record::Record;

/// Most records handed to a sink in one send.
pub const MAX_BATCH: usize = 1024;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Backoff before retry number `attempt` (1-based): doubling from 100 ms to 10 s, with
/// up to 25 % jitter so that many workers do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let jitter = base.mul_f64(fastrand::f64() * 0.25);
    base + jitter
}

/// Start the worker; records sent to the returned queue are delivered in order. The
/// worker ends once every sender is dropped and the queue is drained, or when `stop` is
/// cancelled (the records still queued then are counted as dropped, reason `shutdown`).
pub fn spawn(
    client: SinkClient,
    ctx: SinkContext,
    capacity: usize,
    stop: CancellationToken,
) -> (mpsc::Sender<Arc<Record>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let handle = tokio::spawn(run(client, ctx, rx, stop));
    (tx, handle)
}

async fn run(
    mut client: SinkClient,
    ctx: SinkContext,
    mut rx: mpsc::Receiver<Arc<Record>>,
    stop: CancellationToken,
) {
    let kind = client.kind();
    let depth = ctx
        .metrics
        .queue_depth
        .with_label_values(&[&ctx.route, &ctx.sink]);
    let retries = ctx
        .metrics
        .send_retries
        .with_label_values(&[kind, &ctx.route, &ctx.sink]);
    let dropped = ctx
        .metrics
        .records_dropped
        .with_label_values(&[&ctx.route, &ctx.sink, "shutdown"]);
    let mut batch: Vec<Arc<Record>> = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            _ = stop.cancelled() => 0,
        };
        if received == 0 {
            break;
        }
        depth.set(rx.len() as i64);
        let mut done = 0;
        let mut attempt = 0;
        while done < batch.len() {
            match client.send(&batch[done..]).await {
                Ok(()) => done = batch.len(),
                Err(failure) => {
                    done += failure.accepted;
                    attempt += 1;
                    ctx.metrics
                        .send_errors
                        .with_label_values(&[kind, &ctx.route, &ctx.sink, failure.error.reason()])
                        .inc();
                    if attempt == 1 || attempt % 10 == 0 {
                        tracing::warn!(route = %ctx.route, sink = %ctx.sink, attempt, error = %failure.error, "send failed; retrying with backoff");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(attempt)) => retries.inc(),
                        _ = stop.cancelled() => {
                            dropped.inc_by((batch.len() - done) as u64);
                            done = batch.len();
                        }
                    }
                }
            }
        }
        batch.clear();
    }
    rx.close();
    let mut left = 0u64;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    dropped.inc_by(left);
    depth.set(0);
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
