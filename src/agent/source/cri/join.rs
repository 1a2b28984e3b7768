//! From CRI log entries to log lines, without I/O: `P` entries joined per stream up to
//! `max_line_bytes`, and the [`FilePosition`] after each line.
//!
//! A line longer than `max_line_bytes` is handed out once, flagged `truncated`: its first
//! `max_line_bytes` (cut at a character boundary), when the entry that overflowed has
//! been read. Its later entries, up to and including its `F`, are read and dropped, so a
//! line that never ends costs one record and `max_line_bytes` of memory. Entries arrive
//! whole ([`Joiner::entry`]) or, for a file line too long to buffer, in pieces
//! ([`Joiner::begin`], [`Joiner::data`], [`Joiner::finish`]).

use crate::api::StreamName;
use crate::record::Timestamp;

use super::parse::{Entry, Header};
use super::position::{FileId, FilePosition, slot};
use crate::agent::line_bytes::{cut_to_char_boundary, extend_bounded};

/// One log line of a container, as read from its CRI log files. The same shape as the
/// Docker source's `LogLine`, with a file position for a cursor.
#[derive(Clone, Debug, PartialEq)]
pub struct CriRecord {
    pub stream: StreamName,
    /// The runtime's timestamp of the line (of its first entry when it was split).
    pub timestamp: Timestamp,
    /// Without the trailing newline (`\n` or `\r\n`); invalid UTF-8 replaced by U+FFFD.
    pub message: String,
    /// The line was longer than the limit and was cut.
    pub truncated: bool,
    /// The position right after this line: resuming from it yields the next line.
    pub position: FilePosition,
}

/// A line whose entries are still arriving.
#[derive(Debug)]
struct Pending {
    timestamp: Timestamp,
    bytes: Vec<u8>,
    /// File offset of its first entry (0 for a line carried over from a rotated file).
    start: u64,
    /// Longer than the limit: its first `max_line_bytes` are (or are about to be) handed
    /// out; the rest is dropped up to its `F`.
    cut: bool,
    /// The cut line's record was handed out.
    handed: bool,
}

/// The entry being read.
#[derive(Debug)]
struct Active {
    stream: StreamName,
    partial: bool,
    /// Delivered before (resume): read and ignored.
    skipped: bool,
    /// For [`Joiner::abort`]: what the pending line was before the entry.
    created: bool,
    mark: usize,
    was_cut: bool,
}

/// Joins the entries of one container's log files into lines and keeps the position.
#[derive(Debug)]
pub struct Joiner {
    max: usize,
    file: FileId,
    restart: u32,
    fingerprint: u32,
    since: Option<Timestamp>,
    pending: [Option<Pending>; 2],
    /// Per stream: entries starting before this offset were delivered.
    delivered: [u64; 2],
    /// The end of the last entry read.
    read: u64,
    active: Option<Active>,
}

impl Joiner {
    /// Starts at `from`. Lines stamped before `since` are read but not handed out.
    pub fn new(from: &FilePosition, max_line_bytes: usize, since: Option<Timestamp>) -> Self {
        let dropping = |s: StreamName| {
            from.dropping[slot(s)].then(|| Pending {
                timestamp: Timestamp::default(),
                bytes: Vec::new(),
                start: from.offset,
                cut: true,
                handed: true,
            })
        };
        Joiner {
            max: max_line_bytes.max(1),
            file: from.file,
            restart: from.restart,
            fingerprint: from.fingerprint,
            since,
            pending: [dropping(StreamName::Stdout), dropping(StreamName::Stderr)],
            delivered: [
                from.delivered_until(StreamName::Stdout),
                from.delivered_until(StreamName::Stderr),
            ],
            read: from.offset,
            active: None,
        }
    }

    /// The position after the last line handed out and everything read since that
    /// belongs to no line still in progress.
    pub fn position(&self) -> FilePosition {
        let offset = self
            .pending
            .iter()
            .flatten()
            .filter(|p| !p.cut)
            .map(|p| p.start)
            .min()
            .unwrap_or(self.read);
        let skip = [StreamName::Stdout, StreamName::Stderr]
            .into_iter()
            .find(|&s| self.delivered[slot(s)] > offset)
            .map(|s| (s, self.delivered[slot(s)]));
        FilePosition {
            file: self.file,
            restart: self.restart,
            fingerprint: self.fingerprint,
            offset,
            skip,
            dropping: [0, 1].map(|i| self.pending[i].as_ref().is_some_and(|p| p.cut)),
        }
    }

    /// Bytes held for lines in progress (at most `max_line_bytes` per stream).
    pub fn pending_bytes(&self) -> usize {
        self.pending.iter().flatten().map(|p| p.bytes.len()).sum()
    }

    /// The first line of the current file is known (see [`FilePosition::fingerprint`]).
    pub fn set_fingerprint(&mut self, fingerprint: u32) {
        self.fingerprint = fingerprint;
    }

    /// Reading goes on at the start of the next file. Lines in progress go on there
    /// (the runtime may reopen its log in the middle of a line); a resume from a position
    /// taken before they end reads only their part in the new file.
    pub fn next_file(&mut self, file: FileId, restart: u32, fingerprint: u32) {
        self.abort();
        self.file = file;
        self.restart = restart;
        self.fingerprint = fingerprint;
        self.read = 0;
        self.delivered = [0, 0];
        for p in self.pending.iter_mut().flatten() {
            p.start = 0;
        }
    }

    /// One whole entry, `start..end` in the file.
    pub fn entry(&mut self, e: &Entry<'_>, start: u64, end: u64, out: &mut Vec<CriRecord>) {
        self.begin(
            Header {
                timestamp: e.timestamp,
                stream: e.stream,
                partial: e.partial,
            },
            start,
        );
        self.data(e.message);
        self.finish(end, out);
    }

    /// A line of the file that is not an entry ends at `end`: skipped.
    pub fn skip_line(&mut self, end: u64) {
        self.abort();
        self.read = end;
    }

    /// An entry starts at `start`; its message follows in [`data`](Self::data).
    pub fn begin(&mut self, h: Header, start: u64) {
        self.abort();
        let s = slot(h.stream);
        if start < self.delivered[s] {
            self.active = Some(Active {
                stream: h.stream,
                partial: h.partial,
                skipped: true,
                created: false,
                mark: 0,
                was_cut: false,
            });
            return;
        }
        let created = self.pending[s].is_none();
        let p = self.pending[s].get_or_insert_with(|| Pending {
            timestamp: h.timestamp,
            bytes: Vec::new(),
            start,
            cut: false,
            handed: false,
        });
        self.active = Some(Active {
            stream: h.stream,
            partial: h.partial,
            skipped: false,
            created,
            mark: p.bytes.len(),
            was_cut: p.cut,
        });
    }

    /// Message bytes of the entry begun last.
    pub fn data(&mut self, bytes: &[u8]) {
        let Some(a) = self.active.as_ref().filter(|a| !a.skipped) else {
            return;
        };
        let max = self.max;
        let Some(p) = self.pending[slot(a.stream)].as_mut() else {
            return;
        };
        if p.cut {
            return;
        }
        let room = max - p.bytes.len();
        if bytes.len() <= room {
            extend_bounded(&mut p.bytes, bytes, max);
        } else {
            extend_bounded(&mut p.bytes, &bytes[..room], max);
            cut_to_char_boundary(&mut p.bytes);
            p.cut = true;
        }
    }

    /// The entry begun last ends at `end` (after its newline).
    pub fn finish(&mut self, end: u64, out: &mut Vec<CriRecord>) {
        self.read = end;
        let Some(a) = self.active.take() else {
            return;
        };
        if a.skipped {
            return;
        }
        let s = slot(a.stream);
        let Some(p) = self.pending[s].as_mut() else {
            return;
        };
        if p.cut && p.handed {
            // The rest of a line already handed out cut.
            self.delivered[s] = end;
            if !a.partial {
                self.pending[s] = None;
            }
            return;
        }
        if !p.cut && a.partial {
            return;
        }
        let truncated = p.cut;
        let mut bytes = std::mem::take(&mut p.bytes);
        let timestamp = p.timestamp;
        if truncated && a.partial {
            p.handed = true;
        } else {
            self.pending[s] = None;
            if !truncated && bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        self.delivered[s] = end;
        self.hand_out(a.stream, timestamp, bytes, truncated, out);
    }

    /// Drops the entry begun last (its file ended without its newline).
    pub fn abort(&mut self) {
        let Some(a) = self.active.take() else {
            return;
        };
        if a.skipped {
            return;
        }
        let s = slot(a.stream);
        if a.created {
            self.pending[s] = None;
        } else if let Some(p) = self.pending[s].as_mut() {
            p.bytes.truncate(a.mark);
            p.cut = a.was_cut;
        }
    }

    /// The log has ended for good (the container exited and its files were read to the
    /// end): lines that never got their `F` are handed out as they stand.
    pub fn flush(&mut self, out: &mut Vec<CriRecord>) {
        self.abort();
        for stream in [StreamName::Stdout, StreamName::Stderr] {
            let s = slot(stream);
            let Some(p) = self.pending[s].take() else {
                continue;
            };
            self.delivered[s] = self.read;
            if !p.cut {
                self.hand_out(stream, p.timestamp, p.bytes, false, out);
            }
        }
    }

    fn hand_out(
        &mut self,
        stream: StreamName,
        timestamp: Timestamp,
        bytes: Vec<u8>,
        truncated: bool,
        out: &mut Vec<CriRecord>,
    ) {
        if self.since.is_some_and(|since| timestamp < since) {
            return;
        }
        let message = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        out.push(CriRecord {
            stream,
            timestamp,
            message,
            truncated,
            position: self.position(),
        });
    }
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
