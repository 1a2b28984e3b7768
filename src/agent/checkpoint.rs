//! Checkpoints: per (container, route, sink), the cursor just past the last record that
//! sink accepted, in one memory-mapped file under `--state-dir`.
//!
//! Why a memory map: a store into a shared file mapping is a memcpy into the page cache,
//! cheap enough to do after every accepted batch, and the kernel keeps those pages when
//! the process is killed. So an agent killed with `kill -9` resumes exactly where the
//! accepted data ends. Only a crash of the whole node can lose what was not written back
//! yet: the file is msync'd every `--checkpoint-sync-ms` (and at shutdown), so a node
//! crash may repeat up to that much of each sink's stream, never lose it.
//!
//! The sync never holds the store's mutex while it waits for the disk: sink workers
//! advance their lanes under that mutex on async worker threads, and an msync of a
//! slow or busy disk can take far longer than a batch. It writes the heartbeat under the
//! lock (a memcpy), then, without the lock, has the kernel write the file's dirty pages
//! back with `fdatasync` on a second handle of the file. On Linux that is what
//! `msync(MS_SYNC)` of the mapping does (both end in `vfs_fsync_range` over the file's
//! page cache, which the mapping shares), and the file handle, unlike the mapping, stays
//! valid while the map grows and is remapped. Writing pages back while lanes keep
//! writing gives up no guarantee: the kernel writes dirty pages back whenever it likes
//! anyway, so a copy may always reach the disk half-written — which is what the two
//! copies per block below are for. (On a device that needs stable pages during
//! write-back, a store into a page being written waits for it, lock or no lock; that is
//! the price of the memory map.)
//!
//! Layout (`checkpoints.v1`): blocks of [`BLOCK`] bytes. Block 0 is the header, every
//! other block one slot. Each block holds two copies of its content ([`COPY`] bytes
//! each), each with a sequence number and a CRC-32. A write goes to the older copy, so a
//! write torn by a kill leaves the other copy intact (the previous position), and a copy
//! whose checksum does not match is never trusted.
//!
//! Copy layout: `seq u64 | used u8 | pad | payload | crc32 u32` (little endian), the CRC
//! over everything before it. Slot payload: container id (64 bytes, ASCII), a 64-bit
//! hash of `route \0 sink`, then the cursor (per stream: secs i64, nanos u32, seen u32).
//! Header payload: magic, the time the agent was last known alive (a heartbeat written
//! at each sync).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use memmap2::MmapMut;
use sha2::{Digest, Sha256};

use crate::agent::docker::{Cursor, StreamCursor};
use crate::record::Timestamp;

/// File name inside the state directory.
pub const FILE_NAME: &str = "checkpoints.v1";
const MAGIC: &[u8; 8] = b"LRCKPT01";
const COPY: usize = 128;
const BLOCK: usize = 2 * COPY;
const CRC_AT: usize = COPY - 4;
const ID_AT: usize = 16;
const ID_LEN: usize = 64;
const LANE_AT: usize = ID_AT + ID_LEN;
const CURSOR_AT: usize = LANE_AT + 8;
const INITIAL_SLOTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "cannot use checkpoint file {path}: {source}; --state-dir (LOGROUTE_STATE_DIR) must be a writable directory"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the file said about the previous run, which decides where containers without a
/// checkpoint start (see [`Checkpoints::open`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreviousRun {
    /// No checkpoint file: the agent's first start on this node.
    None,
    /// A clean file; the previous agent was last alive at this time.
    AliveUntil(Timestamp),
    /// The file was torn or corrupt: which containers it covered is unknown.
    Damaged,
}

/// An opened checkpoint file and what was found in it.
pub struct Opened {
    pub checkpoints: Arc<Checkpoints>,
    pub previous: PreviousRun,
    /// Person-readable problems found while loading (torn or corrupt parts).
    pub problems: Vec<String>,
}

struct Slot {
    container: String,
    lane: u64,
    cursor: Cursor,
    used: bool,
    /// Sequence number and copy index (0 or 1) of the newest valid copy.
    seq: u64,
    copy: usize,
    /// Bumped each time a lane claims the slot (in memory only): handles of an earlier
    /// claim — a stopped worker's late acknowledgement after a route edit — no longer
    /// move it.
    owner: u64,
}

struct Inner {
    file: File,
    map: MmapMut,
    header: (u64, usize),
    slots: Vec<Slot>,
    index: HashMap<(String, u64), usize>,
}

/// The checkpoint store. One per agent, shared by container tasks (which claim slots) and
/// sink workers (which advance them).
pub struct Checkpoints {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Another handle on the file, for writing it back without taking `inner`.
    sync_file: File,
    lanes: Mutex<Vec<Weak<LaneCheckpoint>>>,
}

/// The checkpoint of one (container, route, sink) lane, advanced by its sink worker.
pub struct LaneCheckpoint {
    store: Arc<Checkpoints>,
    slot: usize,
    /// Whose slot it is: a released slot may be claimed by another lane, and late
    /// entries of this lane must not move that lane's position.
    container: String,
    hash: u64,
    pub route: String,
    pub sink: String,
    /// Newest timestamp (ns since the epoch) read from the container, for lag.
    head_ns: AtomicI64,
    /// Newest timestamp (ns) of the position the sink accepted.
    accepted_ns: AtomicI64,
    /// Lines its lane queued that the sink has not accepted yet: what is lost, and
    /// counted, if the route goes away for good before they are sent.
    unaccepted: AtomicU64,
    /// The claim this handle belongs to (see `Slot::owner`).
    owner: u64,
}

fn lane_hash(route: &str, sink: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(route.as_bytes())
        .chain_update([0u8])
        .chain_update(sink.as_bytes())
        .finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn nanos(ts: Timestamp) -> i64 {
    ts.secs.saturating_mul(1_000_000_000) + i64::from(ts.nanos)
}

/// Map `file` into memory.
#[allow(unsafe_code)]
fn map(file: &File, path: &Path) -> Result<MmapMut, CheckpointError> {
    // SAFETY: the mapping is only ever accessed through the returned MmapMut, under the
    // store's mutex. The file is private to this agent (its state directory); another
    // process truncating it under us would be a deployment error (two agents sharing a
    // state dir), which the DaemonSet's one-pod-per-node rule excludes.
    unsafe { MmapMut::map_mut(file) }.map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put_stream(b: &mut [u8], at: usize, c: &StreamCursor) {
    put_u64(b, at, c.timestamp.secs as u64);
    put_u32(b, at + 8, c.timestamp.nanos);
    put_u32(b, at + 12, c.seen);
}
fn get_stream(b: &[u8], at: usize) -> StreamCursor {
    StreamCursor {
        timestamp: Timestamp {
            secs: get_u64(b, at) as i64,
            nanos: get_u32(b, at + 8),
        },
        seen: get_u32(b, at + 12),
    }
}

/// The valid copy of a block with the highest sequence number: `Ok(None)` when the
/// block was never written, `Err` when it was written but no copy checks out.
fn newest_copy(block: &[u8]) -> Result<Option<(u64, usize)>, ()> {
    let mut best: Option<(u64, usize)> = None;
    let mut written = false;
    for copy in 0..2 {
        let c = &block[copy * COPY..(copy + 1) * COPY];
        if c.iter().all(|&b| b == 0) {
            continue;
        }
        written = true;
        if crc32fast::hash(&c[..CRC_AT]) != get_u32(c, CRC_AT) {
            continue;
        }
        let seq = get_u64(c, 0);
        if best.is_none_or(|(s, _)| seq > s) {
            best = Some((seq, copy));
        }
    }
    match best {
        Some(b) => Ok(Some(b)),
        None if written => Err(()),
        None => Ok(None),
    }
}

/// Write `fill`'s content into the older copy of `block` with sequence `seq`.
fn write_copy(block: &mut [u8], copy: usize, seq: u64, fill: impl FnOnce(&mut [u8])) {
    let c = &mut block[copy * COPY..(copy + 1) * COPY];
    let mut buf = [0u8; COPY];
    put_u64(&mut buf, 0, seq);
    fill(&mut buf);
    let crc = crc32fast::hash(&buf[..CRC_AT]);
    put_u32(&mut buf, CRC_AT, crc);
    c.copy_from_slice(&buf);
}

impl Checkpoints {
    /// Open (or create) `dir/checkpoints.v1`.
    ///
    /// Damage is never fatal and never trusted: a slot whose copies all fail their
    /// checksum, or slots cut off by a truncated file, are dropped with a problem
    /// reported, and the result says [`PreviousRun::Damaged`] so that the caller starts
    /// containers without a checkpoint from a safe point.
    pub fn open(dir: &Path) -> Result<Opened, CheckpointError> {
        let path = dir.join(FILE_NAME);
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len() as usize;
        let mut problems = Vec::new();
        let mut damaged = false;
        if len % BLOCK != 0 || (existed && len < BLOCK) {
            problems.push(format!(
                "its length ({len} bytes) is not a whole number of {BLOCK}-byte blocks: the file was truncated"
            ));
            damaged = true;
        }
        let whole = (len / BLOCK).max(1 + INITIAL_SLOTS);
        file.set_len((whole * BLOCK) as u64).map_err(io)?;
        let mut map = map(&file, &path)?;
        // The header.
        let mut previous = if existed {
            PreviousRun::Damaged
        } else {
            PreviousRun::None
        };
        let mut header = (0, 1);
        match newest_copy(&map[..BLOCK]) {
            Ok(Some((seq, copy))) => {
                let c = &map[copy * COPY..(copy + 1) * COPY];
                if &c[16..24] == MAGIC {
                    header = (seq, copy);
                    let at = get_stream(c, 24).timestamp;
                    previous = PreviousRun::AliveUntil(at);
                } else {
                    problems.push("its header is not a logroute checkpoint header".into());
                }
            }
            Ok(None) if existed => problems.push("its header was never written".into()),
            Ok(None) => {}
            Err(()) => problems.push("its header fails its checksum".into()),
        }
        let mut slots = Vec::new();
        let mut index = HashMap::new();
        let mut corrupt = 0;
        for i in 0..whole - 1 {
            let block = &map[(i + 1) * BLOCK..(i + 2) * BLOCK];
            let mut slot = Slot {
                owner: 0,
                container: String::new(),
                lane: 0,
                cursor: Cursor::default(),
                used: false,
                seq: 0,
                copy: 1,
            };
            match newest_copy(block) {
                Ok(None) => {}
                Err(()) => {
                    corrupt += 1;
                    map[(i + 1) * BLOCK..(i + 2) * BLOCK].fill(0);
                }
                Ok(Some((seq, copy))) => {
                    let c = &block[copy * COPY..(copy + 1) * COPY];
                    slot.seq = seq;
                    slot.copy = copy;
                    slot.used = c[8] == 1;
                    if slot.used {
                        let id = &c[ID_AT..ID_AT + ID_LEN];
                        let end = id.iter().position(|&b| b == 0).unwrap_or(ID_LEN);
                        slot.container = String::from_utf8_lossy(&id[..end]).into_owned();
                        slot.lane = get_u64(c, LANE_AT);
                        slot.cursor = Cursor {
                            stdout: get_stream(c, CURSOR_AT),
                            stderr: get_stream(c, CURSOR_AT + 16),
                        };
                        index.insert((slot.container.clone(), slot.lane), i);
                    }
                }
            }
            slots.push(slot);
        }
        if corrupt > 0 {
            problems.push(format!(
                "{corrupt} checkpoint slot(s) fail their checksum and were dropped"
            ));
            damaged = true;
        }
        if damaged {
            previous = PreviousRun::Damaged;
        }
        let sync_file = file.try_clone().map_err(io)?;
        let store = Arc::new(Checkpoints {
            path,
            sync_file,
            inner: Mutex::new(Inner {
                file,
                map,
                header,
                slots,
                index,
            }),
            lanes: Mutex::new(Vec::new()),
        });
        store.heartbeat(Timestamp::now());
        Ok(Opened {
            checkpoints: store,
            previous,
            problems,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves whole copies behind (each write is one
        // copy_from_slice of a finished buffer), so the data is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record that the agent is alive now (the header's heartbeat).
    pub fn heartbeat(&self, now: Timestamp) {
        let mut inner = self.lock();
        let (seq, copy) = inner.header;
        let target = 1 - copy;
        write_copy(&mut inner.map[..BLOCK], target, seq + 1, |c| {
            c[8] = 1;
            c[16..24].copy_from_slice(MAGIC);
            put_stream(
                c,
                24,
                &StreamCursor {
                    timestamp: now,
                    seen: 0,
                },
            );
        });
        inner.header = (seq + 1, target);
    }

    /// Write the heartbeat, then the mapped pages back to disk. Blocks for as long as
    /// the disk takes: call it on a blocking thread. Lanes advance meanwhile (see the
    /// module documentation).
    pub fn sync(&self) -> Result<(), CheckpointError> {
        self.sync_with(File::sync_data)
    }

    /// [`Checkpoints::sync`] with the write-back step given (tests slow it down).
    fn sync_with(
        &self,
        write_back: impl FnOnce(&File) -> std::io::Result<()>,
    ) -> Result<(), CheckpointError> {
        self.heartbeat(Timestamp::now());
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        if cfg!(target_os = "linux") {
            write_back(&self.sync_file).map_err(io)
        } else {
            // Elsewhere only msync of the mapping is known to write it back.
            let inner = self.lock();
            inner.map.flush().map_err(io)?;
            drop(inner);
            write_back(&self.sync_file).map_err(io)
        }
    }

    /// Container ids that hold at least one slot.
    pub fn containers(&self) -> Vec<String> {
        let inner = self.lock();
        let mut ids: Vec<String> = inner.index.keys().map(|(c, _)| c.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The saved cursor of a lane, if any.
    pub fn get(&self, container: &str, route: &str, sink: &str) -> Option<Cursor> {
        let inner = self.lock();
        let i = *inner
            .index
            .get(&(container.to_string(), lane_hash(route, sink)))?;
        Some(inner.slots[i].cursor)
    }

    /// The lane's checkpoint, claiming a slot at `start` when it has none. Returns the
    /// handle and the lane's saved position (`start` for a new slot). Every call is a new
    /// claim: earlier handles of the same lane stop moving the slot.
    pub fn lane(
        self: &Arc<Self>,
        container: &str,
        route: &str,
        sink: &str,
        start: Cursor,
    ) -> Result<(Arc<LaneCheckpoint>, Cursor), CheckpointError> {
        let hash = lane_hash(route, sink);
        let mut inner = self.lock();
        let (slot, cursor) = match inner.index.get(&(container.to_string(), hash)) {
            Some(&i) => (i, inner.slots[i].cursor),
            None => {
                let i = match inner.slots.iter().position(|s| !s.used) {
                    Some(i) => i,
                    None => self.grow(&mut inner)?,
                };
                inner.slots[i].container = container.to_string();
                inner.slots[i].lane = hash;
                inner.slots[i].used = true;
                inner.index.insert((container.to_string(), hash), i);
                write_slot(&mut inner, i, start);
                (i, start)
            }
        };
        inner.slots[slot].owner += 1;
        let owner = inner.slots[slot].owner;
        drop(inner);
        let lane = Arc::new(LaneCheckpoint {
            store: self.clone(),
            slot,
            container: container.to_string(),
            hash,
            route: route.to_string(),
            sink: sink.to_string(),
            head_ns: AtomicI64::new(nanos(cursor.latest())),
            accepted_ns: AtomicI64::new(nanos(cursor.latest())),
            unaccepted: AtomicU64::new(0),
            owner,
        });
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.retain(|l| l.strong_count() > 0);
        lanes.push(Arc::downgrade(&lane));
        Ok((lane, cursor))
    }

    /// Drop every slot of `container` (it no longer exists).
    pub fn forget_container(&self, container: &str) {
        let mut inner = self.lock();
        let slots: Vec<usize> = inner
            .index
            .iter()
            .filter(|((c, _), _)| c == container)
            .map(|(_, &i)| i)
            .collect();
        for i in slots {
            free_slot(&mut inner, i);
        }
    }

    /// Seconds each (route, sink) is behind: for every live lane, newest timestamp read
    /// from its container minus newest timestamp its sink accepted; the worst per pair.
    pub fn lag_seconds(&self) -> HashMap<(String, String), f64> {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<(String, String), f64> = HashMap::new();
        for lane in lanes.iter().filter_map(Weak::upgrade) {
            let behind =
                lane.head_ns.load(Ordering::Relaxed) - lane.accepted_ns.load(Ordering::Relaxed);
            let secs = behind.max(0) as f64 / 1e9;
            let e = out
                .entry((lane.route.clone(), lane.sink.clone()))
                .or_default();
            *e = e.max(secs);
        }
        out
    }

    /// Live lanes (containers being delivered) of each (route, sink).
    pub fn lanes_per_sink(&self) -> HashMap<(String, String), u32> {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<(String, String), u32> = HashMap::new();
        for lane in lanes.iter().filter_map(Weak::upgrade) {
            *out.entry((lane.route.clone(), lane.sink.clone()))
                .or_default() += 1;
        }
        out
    }

    /// Double the number of slots.
    fn grow(&self, inner: &mut Inner) -> Result<usize, CheckpointError> {
        let old = inner.slots.len();
        let new = (old * 2).max(INITIAL_SLOTS);
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        // No msync first: unmapping a shared mapping leaves its dirty pages in the page
        // cache, which the new mapping and the next sync see.
        inner.file.set_len(((new + 1) * BLOCK) as u64).map_err(io)?;
        inner.map = map(&inner.file, &self.path)?;
        inner.slots.extend((old..new).map(|_| Slot {
            owner: 0,
            container: String::new(),
            lane: 0,
            cursor: Cursor::default(),
            used: false,
            seq: 0,
            copy: 1,
        }));
        Ok(old)
    }
}

fn write_slot(inner: &mut Inner, i: usize, cursor: Cursor) {
    let slot = &inner.slots[i];
    let (seq, target, used) = (slot.seq + 1, 1 - slot.copy, slot.used);
    let mut id = [0u8; ID_LEN];
    let n = slot.container.len().min(ID_LEN);
    id[..n].copy_from_slice(&slot.container.as_bytes()[..n]);
    let lane = slot.lane;
    let block = &mut inner.map[(i + 1) * BLOCK..(i + 2) * BLOCK];
    write_copy(block, target, seq, |c| {
        c[8] = u8::from(used);
        c[ID_AT..ID_AT + ID_LEN].copy_from_slice(&id);
        put_u64(c, LANE_AT, lane);
        put_stream(c, CURSOR_AT, &cursor.stdout);
        put_stream(c, CURSOR_AT + 16, &cursor.stderr);
    });
    let slot = &mut inner.slots[i];
    slot.seq = seq;
    slot.copy = target;
    slot.cursor = cursor;
}

fn free_slot(inner: &mut Inner, i: usize) {
    let key = (inner.slots[i].container.clone(), inner.slots[i].lane);
    inner.index.remove(&key);
    inner.slots[i].used = false;
    inner.slots[i].container.clear();
    inner.slots[i].lane = 0;
    write_slot(inner, i, Cursor::default());
}

impl LaneCheckpoint {
    /// The sink accepted everything up to `cursor`.
    pub fn advance(&self, cursor: Cursor) {
        let mut inner = self.store.lock();
        if self.owns(&inner) {
            write_slot(&mut inner, self.slot, cursor);
        }
        drop(inner);
        self.accepted_ns
            .store(nanos(cursor.latest()), Ordering::Relaxed);
    }

    /// The lane queued a record of `lines` lines.
    pub fn queued_lines(&self, lines: u64) {
        self.unaccepted.fetch_add(lines, Ordering::Relaxed);
    }

    /// The sink accepted records of `lines` lines.
    pub fn accepted_lines(&self, lines: u64) {
        // Saturating: handles of one claim only, so this never goes below zero.
        let _ = self
            .unaccepted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(lines))
            });
    }

    /// Lines queued under this claim and not accepted (see [`Self::queued_lines`]).
    pub fn unaccepted(&self) -> u64 {
        self.unaccepted.load(Ordering::Relaxed)
    }

    /// The container's log was read to its end and everything of it was accepted (or
    /// counted): the slot is free for another lane.
    pub fn release(&self) {
        let mut inner = self.store.lock();
        if self.owns(&inner) {
            free_slot(&mut inner, self.slot);
        }
    }

    fn owns(&self, inner: &Inner) -> bool {
        let slot = &inner.slots[self.slot];
        slot.used
            && slot.lane == self.hash
            && slot.container == self.container
            && slot.owner == self.owner
    }

    /// The newest line read from the container (lag is measured against it).
    pub fn set_head(&self, ts: Timestamp) {
        self.head_ns.fetch_max(nanos(ts), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(secs: i64, seen: u32) -> Cursor {
        let mut c = Cursor::at(Timestamp { secs, nanos: 7 });
        c.stdout.seen = seen;
        c
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn positions_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opened = Checkpoints::open(dir.path()).expect("open");
        assert_eq!(opened.previous, PreviousRun::None);
        let store = opened.checkpoints;
        let (a, start) = store
            .lane(ID, "ns/r", "syslog", cursor(10, 0))
            .expect("lane");
        assert_eq!(start, cursor(10, 0));
        let (b, _) = store.lane(ID, "ns/r", "es", cursor(10, 0)).expect("lane");
        for n in 1..=5 {
            a.advance(cursor(100, n));
        }
        b.advance(cursor(50, 1));
        drop((a, b, store));

        let opened = Checkpoints::open(dir.path()).expect("reopen");
        assert!(matches!(opened.previous, PreviousRun::AliveUntil(_)));
        assert!(opened.problems.is_empty(), "{:?}", opened.problems);
        let store = opened.checkpoints;
        assert_eq!(store.get(ID, "ns/r", "syslog"), Some(cursor(100, 5)));
        assert_eq!(store.get(ID, "ns/r", "es"), Some(cursor(50, 1)));
        assert_eq!(store.containers(), vec![ID.to_string()]);
        store.forget_container(ID);
        assert_eq!(store.get(ID, "ns/r", "syslog"), None);
    }

    #[test]
    fn a_torn_write_falls_back_to_the_previous_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path()).expect("open").checkpoints;
        let (a, _) = store.lane(ID, "ns/r", "s", cursor(1, 0)).expect("lane");
        a.advance(cursor(2, 1));
        a.advance(cursor(3, 1));
        drop((a, store));
        // Tear the newest copy of slot 0: garble its second half.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        let block = &mut bytes[BLOCK..2 * BLOCK];
        let newest = newest_copy(block).expect("valid").expect("written").1;
        block[newest * COPY + 100..newest * COPY + 110].fill(0xAA);
        std::fs::write(&path, &bytes).expect("write");
        let opened = Checkpoints::open(dir.path()).expect("reopen");
        assert!(opened.problems.is_empty(), "{:?}", opened.problems);
        assert_eq!(opened.checkpoints.get(ID, "ns/r", "s"), Some(cursor(2, 1)));
    }

    #[test]
    fn corruption_and_truncation_are_reported_and_never_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path()).expect("open").checkpoints;
        let (a, _) = store.lane(ID, "ns/r", "s", cursor(1, 0)).expect("lane");
        a.advance(cursor(2, 1));
        drop((a, store));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[BLOCK..2 * BLOCK].iter_mut().for_each(|b| *b ^= 0x5A);
        std::fs::write(&path, &bytes).expect("write");
        let opened = Checkpoints::open(dir.path()).expect("reopen");
        assert_eq!(opened.previous, PreviousRun::Damaged);
        assert!(
            opened
                .problems
                .iter()
                .any(|p| p.contains("1 checkpoint slot")),
            "{:?}",
            opened.problems
        );
        assert_eq!(opened.checkpoints.get(ID, "ns/r", "s"), None);
        drop(opened);

        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(100).expect("truncate");
        let opened = Checkpoints::open(dir.path()).expect("reopen truncated");
        assert_eq!(opened.previous, PreviousRun::Damaged);
        assert!(
            opened.problems.iter().any(|p| p.contains("truncated")),
            "{:?}",
            opened.problems
        );
    }

    #[test]
    fn the_file_grows_when_slots_run_out_and_freed_slots_are_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path()).expect("open").checkpoints;
        let lanes: Vec<_> = (0..INITIAL_SLOTS + 3)
            .map(|i| {
                store
                    .lane(&format!("c{i}"), "ns/r", "s", cursor(i as i64, 0))
                    .expect("lane")
                    .0
            })
            .collect();
        lanes[0].release();
        let (again, _) = store.lane("new", "ns/r", "s", cursor(1, 0)).expect("lane");
        assert_eq!(again.slot, 0);
        // A late entry of the released lane leaves the slot's new owner alone.
        lanes[0].advance(cursor(99, 9));
        assert_eq!(store.get("new", "ns/r", "s"), Some(cursor(1, 0)));
        drop((lanes, again, store));
        let store = Checkpoints::open(dir.path()).expect("reopen").checkpoints;
        assert_eq!(
            store.get(&format!("c{}", INITIAL_SLOTS + 2), "ns/r", "s"),
            Some(cursor(INITIAL_SLOTS as i64 + 2, 0))
        );
        assert_eq!(
            store.containers().len(),
            INITIAL_SLOTS + 3,
            "c1.. and \"new\""
        );
    }

    /// The write-back of a sync is held until the other thread says so: if advancing a
    /// lane, claiming slots (growing the file) or forgetting a container waited for it,
    /// they would never finish before the release, which only comes after them.
    #[cfg(target_os = "linux")]
    #[test]
    fn lanes_move_while_a_sync_waits_for_the_disk() {
        use std::sync::mpsc;
        use std::time::Duration;

        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path()).expect("open").checkpoints;
        let (a, _) = store.lane(ID, "ns/r", "s", cursor(1, 0)).expect("lane");
        let (entered_tx, entered) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let syncing = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.sync_with(|file| {
                    entered_tx.send(()).expect("test alive");
                    // Bounded so that a failing test ends.
                    let _ = released.recv_timeout(Duration::from_secs(120));
                    file.sync_data()
                })
            })
        };
        entered
            .recv_timeout(Duration::from_secs(60))
            .expect("the sync reached its write-back");

        let (done_tx, done) = mpsc::channel();
        let moving = {
            let store = store.clone();
            std::thread::spawn(move || {
                a.advance(cursor(5, 1));
                let claimed: Vec<_> = (0..=INITIAL_SLOTS)
                    .map(|i| {
                        store
                            .lane(&format!("c{i}"), "ns/r", "s", cursor(i as i64, 0))
                            .expect("lane")
                            .0
                    })
                    .collect();
                claimed[0].advance(cursor(7, 2));
                store.forget_container("c1");
                let _ = done_tx.send(());
                (a, claimed)
            })
        };
        let finished = done.recv_timeout(Duration::from_secs(30));
        let _ = release.send(());
        syncing.join().expect("sync thread").expect("sync");
        let lanes = moving.join().expect("lane thread");
        assert!(
            finished.is_ok(),
            "advance, claim and forget waited for the sync's write-back"
        );
        assert_eq!(store.get(ID, "ns/r", "s"), Some(cursor(5, 1)));
        assert!(
            store.inner.lock().expect("lock").slots.len() > INITIAL_SLOTS,
            "the file grew during the sync"
        );
        store.sync().expect("sync");
        drop((lanes, store));

        let store = Checkpoints::open(dir.path()).expect("reopen").checkpoints;
        assert_eq!(store.get(ID, "ns/r", "s"), Some(cursor(5, 1)));
        assert_eq!(store.get("c0", "ns/r", "s"), Some(cursor(7, 2)));
        assert_eq!(store.get("c1", "ns/r", "s"), None);
        let last = format!("c{INITIAL_SLOTS}");
        assert_eq!(
            store.get(&last, "ns/r", "s"),
            Some(cursor(INITIAL_SLOTS as i64, 0))
        );
    }
}
