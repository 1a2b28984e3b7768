//! Following a container's log directory as the runtime writes it: [`DirReader`] in a
//! blocking task per batch, woken by inotify, with a polling fallback.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::join::CriRecord;
use super::position::FilePosition;
use super::reader::{Batch, CriError, DirReader, Missing, ReadOptions, Start};

/// A wake-up for one follower: something happened in its directory.
#[derive(Debug, Default)]
struct Signal {
    notify: Notify,
    /// A file was created, renamed or removed (or events were lost).
    changed: AtomicBool,
}

type Registry = HashMap<WatchDescriptor, Vec<Arc<Signal>>>;

/// One inotify instance for all the followers of an agent (the kernel allows few
/// instances per user, 128 by default, but many watches), its events dispatched to the
/// followers by directory.
#[derive(Debug)]
pub struct DirWatcher {
    watches: Mutex<Watches>,
    registry: Arc<Mutex<Registry>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DirWatcher {
    /// Starts the instance and its dispatch task (until `stop`). An error (no inotify,
    /// the per-user limit reached) leaves followers to poll.
    pub fn start(stop: CancellationToken) -> std::io::Result<Arc<Self>> {
        let stream = Inotify::init()?.into_event_stream(vec![0u8; 16 * 1024])?;
        let registry = Arc::new(Mutex::new(Registry::new()));
        let watcher = Arc::new(DirWatcher {
            watches: Mutex::new(stream.watches()),
            registry: registry.clone(),
        });
        tokio::spawn(dispatch(stream, registry, stop));
        Ok(watcher)
    }

    fn watch(self: &Arc<Self>, dir: &Path) -> std::io::Result<Watch> {
        let mask = WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::ONLYDIR;
        let wd = lock(&self.watches).add(dir, mask)?;
        let signal = Arc::new(Signal::default());
        lock(&self.registry)
            .entry(wd.clone())
            .or_default()
            .push(signal.clone());
        Ok(Watch {
            wd,
            signal,
            watcher: self.clone(),
        })
    }
}

async fn dispatch(
    mut stream: inotify::EventStream<Vec<u8>>,
    registry: Arc<Mutex<Registry>>,
    stop: CancellationToken,
) {
    let changes = EventMask::CREATE
        | EventMask::MOVED_FROM
        | EventMask::MOVED_TO
        | EventMask::DELETE
        | EventMask::DELETE_SELF
        | EventMask::IGNORED;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = stop.cancelled() => break,
        };
        let event = match event {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "inotify failed; CRI log followers poll from now on");
                break;
            }
            None => break,
        };
        let registry = lock(&registry);
        let signals: Vec<&Arc<Signal>> = if event.mask.contains(EventMask::Q_OVERFLOW) {
            registry.values().flatten().collect()
        } else {
            registry.get(&event.wd).into_iter().flatten().collect()
        };
        let changed = event.mask.intersects(changes) || event.mask.contains(EventMask::Q_OVERFLOW);
        for s in signals {
            if changed {
                s.changed.store(true, Ordering::Relaxed);
            }
            s.notify.notify_one();
        }
    }
    // Followers fall back to their poll interval.
    for s in lock(&registry).values().flatten() {
        s.changed.store(true, Ordering::Relaxed);
        s.notify.notify_one();
    }
}

/// A follower's registration; removed on drop.
#[derive(Debug)]
struct Watch {
    wd: WatchDescriptor,
    signal: Arc<Signal>,
    watcher: Arc<DirWatcher>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut registry = lock(&self.watcher.registry);
        let Some(signals) = registry.get_mut(&self.wd) else {
            return;
        };
        signals.retain(|s| !Arc::ptr_eq(s, &self.signal));
        if signals.is_empty() {
            registry.remove(&self.wd);
            // Fails when the directory is gone (the kernel removed the watch): fine.
            let _ = lock(&self.watcher.watches).remove(self.wd.clone());
        }
    }
}

/// How a follower reads and waits.
#[derive(Clone, Copy, Debug)]
pub struct FollowOptions {
    pub read: ReadOptions,
    /// About how many records a batch holds at most.
    pub batch_records: usize,
    /// How often to look for new data and files without an inotify event (the only way
    /// when inotify is not available).
    pub poll: Duration,
}

/// Follows one container's log directory (see the module documentation of
/// [`super`]).
///
/// Not cancel-safe: a [`next_batch`](Self::next_batch) dropped while it reads loses its
/// batch; open a new follower at the last position handed out.
#[derive(Debug)]
pub struct Follower {
    reader: Arc<Mutex<DirReader>>,
    watch: Option<Watch>,
    opts: FollowOptions,
}

impl Follower {
    /// Opens `dir` at `start`; reports a position whose file is gone. With a `watcher`,
    /// waits for inotify events, else polls.
    pub fn open(
        dir: &Path,
        start: Start,
        opts: FollowOptions,
        watcher: Option<&Arc<DirWatcher>>,
    ) -> Result<(Self, Option<Missing>), CriError> {
        // Watch first: nothing written between the listing and the watch is missed.
        let watch = match watcher.map(|w| w.watch(dir)).transpose() {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "no inotify watch; polling");
                None
            }
        };
        let (reader, missing) = DirReader::open(dir, start, opts.read)?;
        Ok((
            Follower {
                reader: Arc::new(Mutex::new(reader)),
                watch,
                opts,
            },
            missing,
        ))
    }

    /// Whether inotify wakes this follower (else it polls).
    pub fn is_watched(&self) -> bool {
        self.watch.is_some()
    }

    /// The position after every record handed out.
    pub fn position(&self) -> FilePosition {
        lock(&self.reader).position()
    }

    /// Bytes the follower holds (read buffer and lines in progress).
    pub fn buffered_bytes(&self) -> usize {
        lock(&self.reader).buffered_bytes()
    }

    /// The next records, waiting until there are some.
    pub async fn next_batch(&mut self) -> Result<Batch, CriError> {
        loop {
            let batch = self.read(false).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            self.wait().await;
        }
    }

    /// For a container that exited: what is left in its files, without waiting. An
    /// empty batch means everything was read; then [`flush`](Self::flush).
    pub async fn read_to_end(&mut self) -> Result<Batch, CriError> {
        self.read(true).await
    }

    /// After [`read_to_end`](Self::read_to_end) came back empty: the lines the runtime
    /// never ended (it writes an `F` for a container's last line, so normally none).
    pub fn flush(&mut self) -> Vec<CriRecord> {
        lock(&self.reader).flush()
    }

    async fn read(&self, drain: bool) -> Result<Batch, CriError> {
        let reader = self.reader.clone();
        let limit = self.opts.batch_records.max(1);
        match tokio::task::spawn_blocking(move || lock(&reader).read(limit, drain)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    async fn wait(&self) {
        let retry = lock(&self.reader).retry_at();
        let mut poll = self.opts.poll;
        if let Some(at) = retry {
            poll = poll.min(at.saturating_duration_since(std::time::Instant::now()));
        }
        let changed = match &self.watch {
            Some(w) => {
                tokio::select! {
                    _ = w.signal.notify.notified() => w.signal.changed.swap(false, Ordering::Relaxed),
                    _ = tokio::time::sleep(poll) => retry.is_none(),
                }
            }
            None => {
                tokio::time::sleep(poll).await;
                true
            }
        };
        if changed {
            lock(&self.reader).dir_changed();
        }
    }
}

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
