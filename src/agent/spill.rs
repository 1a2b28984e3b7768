//! Spill files: the lines a lagging lane missed, kept on disk so that they outlive the
//! container's log.
//!
//! A lane that fell behind (its sink's queue was full) normally catches up from Docker's
//! log, which is the buffer while it lags. That buffer disappears when the container is
//! removed: the kubelet deletes a dead pod's containers about a second after they exit,
//! so a pod's last burst, read by the shared reader while one sink was slow, would reach
//! that sink only if it caught up within that second. So while a lane is detached, every
//! line the shared reader reads past it is also appended to the lane's spill file (in the
//! state directory, each record length-prefixed and CRC-32 checked). A catch-up whose
//! start is covered by the spill reads the spill first and Docker only after it; once
//! Docker no longer has the container, the spill is all there is, and the lane drains it
//! into its sink when the sink takes records again.
//!
//! Bounds: the agent's spill files together stay within `--spill-bytes`, one lane's
//! within a quarter of that. A lane whose spill is full stops spilling (its later lines
//! are still in Docker's log while the container exists, and are counted as dropped if
//! they are not). A lane's spill is deleted when it rejoins the shared reader, ends or is
//! dropped; spill files do not survive an agent restart (the directory is emptied at
//! start), so what a removed container's spill still held when the agent stopped is
//! counted as dropped then.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::mpsc;

use crate::agent::docker::{Cursor, LogLine, StreamCursor};
use crate::agent::lane::{furthest, later, reached};
use crate::api::StreamName;
use crate::record::Timestamp;

const DIR_NAME: &str = "spill";
/// Bytes before each record: payload length and CRC-32 of the payload.
const HEADER: usize = 8;
/// Stream, truncated flag, timestamp, both stream cursors.
const FIXED: usize = 1 + 1 + 12 + 2 * 16;
/// Lines per batch handed to the container task, and bytes.
const BATCH_LINES: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;

/// The agent's spill directory, its byte budget and its metrics.
pub struct SpillBudget {
    dir: PathBuf,
    used: AtomicU64,
    limit: u64,
    lane_limit: u64,
    next: AtomicU64,
    bytes: IntGauge,
    written: IntCounter,
    read: IntCounter,
}

impl SpillBudget {
    /// Empty (or create) `state_dir/spill` and budget `limit` bytes for it. `None` when
    /// `limit` is 0 (spilling disabled).
    pub fn open(
        state_dir: &Path,
        limit: u64,
        metrics: &crate::metrics::AgentMetrics,
    ) -> io::Result<Option<Arc<SpillBudget>>> {
        let dir = state_dir.join(DIR_NAME);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        if limit == 0 {
            return Ok(None);
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Some(Arc::new(SpillBudget {
            dir,
            used: AtomicU64::new(0),
            limit,
            lane_limit: (limit / 4).max(1),
            next: AtomicU64::new(0),
            bytes: metrics.spill_bytes.clone(),
            written: metrics.spill_lines_written.clone(),
            read: metrics.spill_lines_read.clone(),
        })))
    }

    fn take(&self, n: u64) -> bool {
        let limit = self.limit;
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                (used + n <= limit).then_some(used + n)
            })
            .is_ok();
        if ok {
            self.bytes.add(n as i64);
        }
        ok
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.bytes.sub(n as i64);
    }
}

/// One detached lane's spill file, being written.
pub struct Spill {
    budget: Arc<SpillBudget>,
    path: PathBuf,
    file: Option<BufWriter<File>>,
    /// The spill holds every line after `anchor` up to `end`, in the order read.
    anchor: Cursor,
    end: Cursor,
    bytes: u64,
    lines: u64,
    scratch: Vec<u8>,
    /// Per stream, the timestamp and a hash of the last line written (see `push`).
    last: [Option<(Timestamp, u64)>; 2],
}

fn stream_index(s: StreamName) -> usize {
    match s {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

fn message_hash(message: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    message.hash(&mut h);
    h.finish()
}

impl Spill {
    /// A new spill whose first line is the one read after `anchor`.
    pub fn create(budget: &Arc<SpillBudget>, anchor: Cursor) -> Spill {
        let n = budget.next.fetch_add(1, Ordering::Relaxed);
        let path = budget.dir.join(format!("{n}.spill"));
        let file = match File::create(&path) {
            Ok(f) => Some(BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot create a spill file; this lane's missed lines stay in Docker's log only");
                None
            }
        };
        Spill {
            budget: budget.clone(),
            path,
            file,
            anchor,
            end: anchor,
            bytes: 0,
            lines: 0,
            scratch: Vec::new(),
            last: [None; 2],
        }
    }

    /// Append a line read after the spill's `end`. Once the file or the budget is full,
    /// or a write failed, the spill takes nothing more: it then holds the lines up to its
    /// `end`.
    ///
    /// When a json-file log rotates under dockerd's follow, dockerd sends the line it
    /// was at again: same timestamp, same text, but to the reader a new frame at that
    /// timestamp. Docker's file holds it once, so a re-read from the file never yields
    /// it; the spill skips it as well (a line at or before its `end`, or equal to the
    /// previous line of its stream in timestamp and text), so that reading the spill
    /// and then the file gives each line once.
    pub fn push(&mut self, line: &LogLine) {
        let s = line.stream;
        if !later(line.cursor.stream(s), self.end.stream(s)) {
            return;
        }
        let hash = message_hash(&line.message);
        if self.last[stream_index(s)] == Some((line.timestamp, hash)) {
            return;
        }
        let Some(file) = &mut self.file else {
            return;
        };
        encode(line, &mut self.scratch);
        let n = self.scratch.len() as u64;
        if self.bytes + n > self.budget.lane_limit || !self.budget.take(n) {
            tracing::warn!(
                lines = self.lines,
                bytes = self.bytes,
                "spill budget reached; later lines of this lane stay in Docker's log only"
            );
            self.file = None;
            return;
        }
        if let Err(e) = file.write_all(&self.scratch) {
            tracing::warn!(file = %self.path.display(), error = %e, "spill write failed; later lines of this lane stay in Docker's log only");
            self.budget.give_back(n);
            // A reader stops at the first record missing from the file and the
            // catch-up goes on from Docker there.
            self.file = None;
            return;
        }
        self.bytes += n;
        self.lines += 1;
        self.last[stream_index(s)] = Some((line.timestamp, hash));
        self.end = furthest(self.end, &line.cursor);
        self.budget.written.inc();
    }

    /// The spill holds every line after `from` up to its end, and some line after
    /// `from`: a catch-up from `from` can read it.
    pub fn covers(&self, from: &Cursor) -> bool {
        reached(from, &self.anchor) && !reached(from, &self.end)
    }

    pub fn end(&self) -> Cursor {
        self.end
    }

    /// Flush and open the file for a reader of what is written so far.
    pub fn snapshot(&mut self) -> Option<SpillSnapshot> {
        if let Some(file) = &mut self.file
            && let Err(e) = file.flush()
        {
            tracing::warn!(file = %self.path.display(), error = %e, "spill flush failed");
            return None;
        }
        let file = File::open(&self.path).ok()?;
        Some(SpillSnapshot {
            file,
            len: self.bytes,
            end: self.end,
            read: self.budget.read.clone(),
        })
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
        self.budget.give_back(self.bytes);
    }
}

/// What a spill held when a catch-up started: read it with [`SpillSnapshot::send_after`].
pub struct SpillSnapshot {
    file: File,
    len: u64,
    /// Just past the last line written.
    end: Cursor,
    read: IntCounter,
}

impl SpillSnapshot {
    pub fn end(&self) -> Cursor {
        self.end
    }

    /// Send the spilled lines after `from`, in batches, to `tx` (blocking: call from a
    /// blocking thread). Returns the position just past the last line read intact:
    /// `end` unless the file is damaged, `from` if nothing after it was read.
    pub fn send_after(self, from: Cursor, tx: &mpsc::Sender<Vec<LogLine>>) -> Cursor {
        let mut at = from;
        let mut reader = BufReader::with_capacity(256 * 1024, self.file.take(self.len));
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut header = [0u8; HEADER];
        let mut payload = Vec::new();
        loop {
            match reader.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    tracing::warn!(error = %e, "spill read failed; the rest comes from Docker if it still has it");
                    break;
                }
            }
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            payload.resize(len, 0);
            if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
                tracing::warn!(
                    "spill record damaged; the rest comes from Docker if it still has it"
                );
                break;
            }
            let Some(line) = decode(&payload) else {
                tracing::warn!(
                    "spill record unreadable; the rest comes from Docker if it still has it"
                );
                break;
            };
            at = furthest(at, &line.cursor);
            let s = line.stream;
            if !later(line.cursor.stream(s), from.stream(s)) {
                continue;
            }
            batch_bytes += line.message.len();
            batch.push(line);
            if batch.len() >= BATCH_LINES || batch_bytes >= BATCH_BYTES {
                self.read.inc_by(batch.len() as u64);
                if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                    return at;
                }
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.read.inc_by(batch.len() as u64);
            let _ = tx.blocking_send(batch);
        }
        at
    }
}

fn put_cursor(c: &StreamCursor, out: &mut Vec<u8>) {
    out.extend_from_slice(&c.timestamp.secs.to_le_bytes());
    out.extend_from_slice(&c.timestamp.nanos.to_le_bytes());
    out.extend_from_slice(&c.seen.to_le_bytes());
}

fn encode(line: &LogLine, out: &mut Vec<u8>) {
    out.clear();
    let len = FIXED + line.message.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(match line.stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    });
    out.push(line.truncated as u8);
    out.extend_from_slice(&line.timestamp.secs.to_le_bytes());
    out.extend_from_slice(&line.timestamp.nanos.to_le_bytes());
    put_cursor(&line.cursor.stdout, out);
    put_cursor(&line.cursor.stderr, out);
    out.extend_from_slice(line.message.as_bytes());
    let crc = crc32fast::hash(&out[HEADER..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn decode(p: &[u8]) -> Option<LogLine> {
    if p.len() < FIXED {
        return None;
    }
    let i64_at = |i: usize| i64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
    let cursor_at = |i: usize| StreamCursor {
        timestamp: Timestamp {
            secs: i64_at(i),
            nanos: u32_at(i + 8),
        },
        seen: u32_at(i + 12),
    };
    Some(LogLine {
        stream: match p[0] {
            0 => StreamName::Stdout,
            1 => StreamName::Stderr,
            _ => return None,
        },
        truncated: p[1] != 0,
        timestamp: Timestamp {
            secs: i64_at(2),
            nanos: u32_at(10),
        },
        cursor: Cursor {
            stdout: cursor_at(14),
            stderr: cursor_at(30),
        },
        message: String::from_utf8(p[FIXED..].to_vec()).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AgentMetrics;

    fn line(n: i64, stream: StreamName) -> LogLine {
        let at = StreamCursor {
            timestamp: Timestamp { secs: n, nanos: 5 },
            seen: 1,
        };
        let mut cursor = Cursor::default();
        *cursor.stream_mut(StreamName::Stdout) = at;
        *cursor.stream_mut(StreamName::Stderr) = at;
        LogLine {
            stream,
            timestamp: at.timestamp,
            message: format!("line {n:03} ünïcode"),
            truncated: n % 7 == 0,
            cursor,
        }
    }

    fn budget(dir: &Path, limit: u64) -> Arc<SpillBudget> {
        let metrics = AgentMetrics::new(&prometheus::Registry::new());
        SpillBudget::open(dir, limit, &metrics)
            .expect("spill dir")
            .expect("enabled")
    }

    fn read_all(snapshot: SpillSnapshot, from: Cursor) -> (Vec<LogLine>, Cursor) {
        let (tx, mut rx) = mpsc::channel(1024);
        let at = snapshot.send_after(from, &tx);
        drop(tx);
        let mut out = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            out.extend(batch);
        }
        (out, at)
    }

    #[test]
    fn a_spill_gives_back_the_lines_after_any_covered_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = budget(dir.path(), 1 << 20);
        let anchor = line(0, StreamName::Stdout).cursor;
        let mut spill = Spill::create(&b, anchor);
        for n in 1..=100 {
            let s = if n % 3 == 0 {
                StreamName::Stderr
            } else {
                StreamName::Stdout
            };
            spill.push(&line(n, s));
        }
        // Sent again (as dockerd does on rotation): skipped.
        spill.push(&line(50, StreamName::Stdout));
        assert!(spill.covers(&anchor));
        assert!(spill.covers(&line(40, StreamName::Stdout).cursor));
        assert!(
            !spill.covers(&line(100, StreamName::Stdout).cursor),
            "all read"
        );
        let from = line(40, StreamName::Stdout).cursor;
        let (lines, at) = read_all(spill.snapshot().expect("snapshot"), from);
        let got: Vec<String> = lines.iter().map(|l| l.message.clone()).collect();
        let want: Vec<String> = (41..=100)
            .map(|n| line(n, StreamName::Stdout).message)
            .collect();
        assert_eq!(got, want);
        assert_eq!(at, spill.end());
        assert!(
            lines
                .iter()
                .all(|l| l.truncated == (l.timestamp.secs % 7 == 0))
        );
        assert_eq!(lines[1].stream, StreamName::Stderr, "line 42 was stderr");
        let path = spill.path.clone();
        drop(spill);
        assert!(!path.exists(), "a dropped spill leaves no file");
        assert_eq!(
            b.used.load(Ordering::Relaxed),
            0,
            "and gives its bytes back"
        );
    }

    #[test]
    fn a_line_dockerd_sends_again_on_rotation_is_spilled_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = budget(dir.path(), 1 << 20);
        let mut spill = Spill::create(&b, Cursor::default());
        let first = line(1, StreamName::Stdout);
        spill.push(&first);
        // The same line again, to the reader the next frame at its timestamp.
        let mut again = first.clone();
        again.cursor.stdout.seen += 1;
        spill.push(&again);
        spill.push(&line(2, StreamName::Stdout));
        let (lines, _) = read_all(spill.snapshot().expect("snapshot"), Cursor::default());
        let got: Vec<String> = lines.into_iter().map(|l| l.message).collect();
        assert_eq!(
            got,
            vec![first.message, line(2, StreamName::Stdout).message]
        );
    }

    #[test]
    fn a_full_budget_ends_the_spill_and_a_damaged_record_ends_the_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = {
            let mut v = Vec::new();
            encode(&line(1, StreamName::Stdout), &mut v);
            v.len() as u64
        };
        // Room for 40 records in one lane (a quarter of the budget).
        let b = budget(dir.path(), record * 160);
        let mut spill = Spill::create(&b, Cursor::default());
        for n in 1..=100 {
            spill.push(&line(n, StreamName::Stdout));
        }
        assert_eq!(spill.lines, 40);
        assert_eq!(spill.end(), line(40, StreamName::Stdout).cursor);
        // Damage the 31st record: lines 1..=30 come back, and the position after them.
        spill.snapshot().expect("flushed");
        let mut bytes = std::fs::read(&spill.path).expect("read spill");
        bytes[(record * 30 + HEADER as u64 + 20) as usize] ^= 0xff;
        std::fs::write(&spill.path, bytes).expect("write spill");
        let (lines, at) = read_all(spill.snapshot().expect("snapshot"), Cursor::default());
        assert_eq!(lines.len(), 30);
        assert_eq!(at, line(30, StreamName::Stdout).cursor);
    }
}
