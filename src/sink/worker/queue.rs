//! A (route, sink) queue bounded twice: by entries (the channel's capacity,
//! `--queue-records`) and by the bytes of the records waiting in it and in the batch its
//! worker is sending. Counting entries alone let 8,192 lines of 1 MiB each wait in one
//! queue; the byte bound keeps a route whose sink is a black hole from taking the node's
//! memory, whatever its lines weigh.
//!
//! The byte limit of each queue is its share of the agent's `--queue-bytes` budget (see
//! `RouteTableManager::apply`). A lane whose entry does not fit detaches, exactly as when
//! the channel is full, and catches up from Docker once the worker has sent enough.
//! An empty queue always takes one entry, so a line heavier than the limit still moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;
use tokio::sync::mpsc;

use super::Queued;

/// What an entry costs besides its message: the record, its position and the channel
/// slot, rounded up.
pub const ENTRY_OVERHEAD: usize = 192;

/// Bytes an entry holds while queued or in the batch being sent.
pub fn weight(entry: &Queued) -> usize {
    match entry {
        Queued::Record(r, _) => r.message.len() + ENTRY_OVERHEAD,
        Queued::Position(_) => ENTRY_OVERHEAD,
    }
}

/// Bytes held by a queue and its worker, and the queue's limit.
pub struct QueueBytes {
    used: AtomicUsize,
    limit: AtomicUsize,
    gauge: Option<IntGauge>,
}

impl QueueBytes {
    pub fn new(limit: usize, gauge: Option<IntGauge>) -> Self {
        QueueBytes {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit.max(1)),
            gauge,
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Take `n` bytes if they fit (or the queue holds nothing).
    fn reserve(&self, n: usize) -> bool {
        let limit = self.limit();
        let fits = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                (used == 0 || used.saturating_add(n) <= limit).then_some(used + n)
            })
            .is_ok();
        if fits {
            self.show();
        }
        fits
    }

    /// Give back bytes of entries that were sent (or will never be).
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(n))
            });
        self.show();
    }

    fn show(&self) {
        if let Some(g) = &self.gauge {
            g.set(self.used() as i64);
        }
    }
}

/// What bounds a new queue: entries, and the shared byte count with its limit.
pub struct QueueBounds {
    pub records: usize,
    pub bytes: Arc<QueueBytes>,
}

/// The producer side of a (route, sink) queue.
#[derive(Clone)]
pub struct SinkQueue {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<QueueBytes>,
}

impl SinkQueue {
    pub fn new(tx: mpsc::Sender<Queued>, bytes: Arc<QueueBytes>) -> Self {
        SinkQueue { tx, bytes }
    }

    /// A queue of `capacity` entries and `limit` bytes, with its receiving end.
    pub fn channel(capacity: usize, limit: usize) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self::new(tx, Arc::new(QueueBytes::new(limit, None))), rx)
    }

    /// Queue `entry` unless the queue is full by entries or by bytes, or closed; the
    /// entry comes back then.
    pub fn try_send(&self, entry: Queued) -> Result<(), Queued> {
        let n = weight(&entry);
        if !self.bytes.reserve(n) {
            return Err(entry);
        }
        match self.tx.try_send(entry) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.bytes.release(n);
                Err(e.into_inner())
            }
        }
    }

    /// Room for `entries` entries weighing `bytes`: what a catch-up waits for before it
    /// hands over a batch of lines.
    pub fn has_room(&self, entries: usize, bytes: usize) -> bool {
        let used = self.bytes.used();
        self.tx.capacity() >= entries.min(self.tx.max_capacity())
            && (used == 0 || used.saturating_add(bytes) <= self.bytes.limit())
    }

    /// At most half full, by entries and by bytes: a lagging lane may start catching up.
    pub fn half_empty(&self) -> bool {
        self.tx.capacity() >= self.tx.max_capacity() / 2
            && self.bytes.used() <= self.bytes.limit() / 2
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> &Arc<QueueBytes> {
        &self.bytes
    }

    /// Set the byte limit (the queue's share of the agent's budget).
    pub fn set_limit(&self, limit: usize) {
        self.bytes.limit.store(limit.max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::checkpoint::{Checkpoints, LaneCheckpoint};
    use crate::agent::docker::Cursor;
    use crate::record::{ContainerInfo, Record, Timestamp};
    use crate::sink::worker::Position;

    fn entry(lane: &Arc<LaneCheckpoint>, bytes: usize) -> Queued {
        let record = Record {
            container: Arc::new(ContainerInfo::default()),
            stream: crate::api::StreamName::Stdout,
            timestamp: Timestamp { secs: 1, nanos: 0 },
            message: "x".repeat(bytes),
            truncated: false,
        };
        Queued::Record(
            Arc::new(record),
            Position {
                lane: lane.clone(),
                cursor: Cursor::default(),
                lines: 1,
            },
        )
    }

    /// A lane checkpoint for the entries (and the directory its file lives in).
    fn lane() -> (Arc<LaneCheckpoint>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = Checkpoints::open(dir.path())
            .expect("open checkpoints")
            .checkpoints;
        let (lane, _) = checkpoints
            .lane("c", "r", "s", Cursor::default())
            .expect("lane");
        (lane, dir)
    }

    #[test]
    fn bytes_bound_the_queue_before_entries_do_and_an_empty_queue_takes_any_entry() {
        let (lane, _dir) = lane();
        let (queue, mut rx) = SinkQueue::channel(100, 10_000);
        // Far heavier than the limit, but the queue is empty: it goes.
        assert!(queue.try_send(entry(&lane, 50_000)).is_ok());
        assert!(queue.try_send(entry(&lane, 10)).is_err(), "over the limit");
        assert!(!queue.has_room(1, 10));
        // The worker sent it: the bytes come back.
        let sent = rx.try_recv().expect("queued");
        queue.bytes().release(weight(&sent));
        assert_eq!(queue.bytes().used(), 0);
        for _ in 0..4 {
            assert!(queue.try_send(entry(&lane, 2_000)).is_ok());
        }
        assert!(!queue.half_empty());
        assert!(
            queue.try_send(entry(&lane, 2_000)).is_err(),
            "5 x 2,192 bytes exceed 10,000"
        );
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.bytes().used(), 4 * (2_000 + ENTRY_OVERHEAD));
    }

    #[test]
    fn entries_bound_the_queue_too_and_a_refused_entry_takes_no_bytes() {
        let (lane, _dir) = lane();
        let (queue, _rx) = SinkQueue::channel(2, usize::MAX);
        assert!(queue.try_send(entry(&lane, 1)).is_ok());
        assert!(queue.try_send(entry(&lane, 1)).is_ok());
        assert!(queue.try_send(entry(&lane, 1)).is_err());
        assert_eq!(queue.bytes().used(), 2 * (1 + ENTRY_OVERHEAD));
    }
}
