//! From Docker log frames to log lines, without I/O.
//!
//! With `timestamps=true` each log entry comes as `<RFC 3339 nano timestamp> <bytes>`. A
//! line ends with `\n`; a line longer than dockerd's 16 KiB buffer comes as several
//! entries without one, all stamped with the first entry's time, and a container's last
//! output may end without a newline at all. Multiplexed streams (non-TTY containers) come
//! in frames of one entry each; a TTY container's stream is unframed bytes, which
//! [`TtyDecoder`] cuts back into entries. Either way an entry is counted in the cursor
//! when it starts, and the assembler holds at most `max_line_bytes` per stream.
//!
//! A line longer than `max_line_bytes` is handed out as soon as that much of it has been
//! read: its first `max_line_bytes` (cut at a character boundary), flagged `truncated`.
//! The rest of it up to its newline is read and dropped, so a line that never ends
//! costs one record and bounded memory. The cut line's cursor says "every entry stamped
//! with this time" (`seen == u32::MAX`): the entries of a line share its first entry's
//! timestamp, and the next line is stamped later, so resuming from it skips exactly the
//! rest of the cut line. (journald stamps every entry on its own; there, resuming from a
//! cut line's cursor yields the rest of that line as one more line.)

use crate::api::StreamName;
use crate::record::Timestamp;

use super::cursor::{Cursor, ResumeFilter};
use super::timestamp::split_frame;
use super::tty::{TtyDecoder, TtyEvent};
use crate::agent::line_bytes::{cut_to_char_boundary, extend_bounded};

/// One log line of a container, as read from Docker.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub stream: StreamName,
    /// Docker's timestamp of the line (of its first fragment when it was split).
    pub timestamp: Timestamp,
    /// Without the trailing newline (`\n` or `\r\n`); invalid UTF-8 replaced by U+FFFD.
    pub message: String,
    /// The line was longer than the limit and was cut.
    pub truncated: bool,
    /// The position right after this line: resuming from it yields the next line.
    pub cursor: Cursor,
}

/// One frame of a log stream, as read from Docker.
#[derive(Clone, Copy, Debug)]
pub enum Frame<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
    /// Unmultiplexed bytes: any piece of a TTY container's output, or dockerd writing an
    /// error into the body of a multiplexed stream.
    Console(&'a [u8]),
}

/// What became of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Held something beyond the cursor: consumed.
    New,
    /// Held nothing beyond the cursor (already delivered by an earlier read).
    Skipped,
    /// Not a timestamped log frame (dockerd reports errors this way). For a TTY stream,
    /// entries before the error were consumed.
    NotLog,
}

/// A line whose entries are still arriving.
#[derive(Debug)]
struct Pending {
    timestamp: Timestamp,
    bytes: Vec<u8>,
    /// Its first `max_line_bytes` were handed out, flagged truncated: the rest of it is
    /// dropped up to its newline.
    cut: bool,
}

/// Turns one container's frames into lines and keeps its cursor.
#[derive(Debug)]
pub struct LineAssembler {
    max_line_bytes: usize,
    /// Set for a TTY container.
    tty: Option<TtyDecoder>,
    /// The TTY entry being read was consumed by an earlier read: its bytes are skipped.
    tty_skipping: bool,
    /// After the last line handed out.
    committed: Cursor,
    /// After the last entry consumed (ahead of `committed` while a line is pending).
    working: Cursor,
    filter: ResumeFilter,
    pending: [Option<Pending>; 2],
}

fn slot(stream: StreamName) -> usize {
    match stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

fn other(stream: StreamName) -> StreamName {
    match stream {
        StreamName::Stdout => StreamName::Stderr,
        StreamName::Stderr => StreamName::Stdout,
    }
}

impl LineAssembler {
    pub fn new(from: Cursor, max_line_bytes: usize, tty: bool) -> Self {
        LineAssembler {
            max_line_bytes: max_line_bytes.max(1),
            tty: tty.then(TtyDecoder::default),
            tty_skipping: false,
            committed: from,
            working: from,
            filter: ResumeFilter::new(from),
            pending: [None, None],
        }
    }

    /// The position after the last line handed out.
    pub fn cursor(&self) -> Cursor {
        self.committed
    }

    /// Prepare for a new read from `at`: lines in progress will be read again whole.
    pub fn restart(&mut self, at: Cursor) {
        self.committed = at;
        self.working = at;
        self.filter = ResumeFilter::new(at);
        self.pending = [None, None];
        if let Some(tty) = &mut self.tty {
            *tty = TtyDecoder::default();
        }
        self.tty_skipping = false;
    }

    /// Consume one frame; completed lines are appended to `out`.
    pub fn push(&mut self, frame: Frame<'_>, out: &mut Vec<LogLine>) -> Pushed {
        let (stream, raw) = match frame {
            Frame::Stdout(b) => (StreamName::Stdout, b),
            Frame::Stderr(b) => (StreamName::Stderr, b),
            Frame::Console(b) if self.tty.is_some() => return self.push_tty(b, out),
            Frame::Console(_) => return Pushed::NotLog,
        };
        let Some((ts, _, payload)) = split_frame(raw) else {
            return Pushed::NotLog;
        };
        if !self.begin(stream, ts) {
            return Pushed::Skipped;
        }
        match payload.strip_suffix(b"\n") {
            Some(body) => self.append(stream, body, true, out),
            None => self.append(stream, payload, false, out),
        }
        Pushed::New
    }

    /// A piece of a TTY container's output.
    fn push_tty(&mut self, bytes: &[u8], out: &mut Vec<LogLine>) -> Pushed {
        let Some(mut decoder) = self.tty.take() else {
            return Pushed::NotLog;
        };
        let mut pushed = Pushed::Skipped;
        let fed = decoder.feed(bytes, &mut |ev| {
            if self.tty_event(ev, out) {
                pushed = Pushed::New;
            }
        });
        self.tty = Some(decoder);
        match fed {
            Ok(()) => pushed,
            Err(_) => Pushed::NotLog,
        }
    }

    /// True when the event was beyond the cursor.
    fn tty_event(&mut self, ev: TtyEvent<'_>, out: &mut Vec<LogLine>) -> bool {
        match ev {
            TtyEvent::Begin(ts) => self.tty_skipping = !self.begin(StreamName::Stdout, ts),
            TtyEvent::Bytes { bytes, line_end } if !self.tty_skipping => {
                self.append(StreamName::Stdout, bytes, line_end, out);
            }
            TtyEvent::Bytes { .. } => {}
        }
        !self.tty_skipping
    }

    /// An entry stamped `ts` starts on `stream`; false when an earlier read consumed it.
    fn begin(&mut self, stream: StreamName, ts: Timestamp) -> bool {
        if self.filter.skip(stream, ts) {
            return false;
        }
        self.working.stream_mut(stream).advance(ts);
        self.pending[slot(stream)].get_or_insert_with(|| Pending {
            timestamp: ts,
            bytes: Vec::new(),
            cut: false,
        });
        true
    }

    /// Bytes of the current entry of `stream`; `line_end` when its newline follows them.
    fn append(&mut self, stream: StreamName, body: &[u8], line_end: bool, out: &mut Vec<LogLine>) {
        let max = self.max_line_bytes;
        let Some(p) = self.pending[slot(stream)].as_mut() else {
            return;
        };
        if !p.cut {
            let body = match body.strip_suffix(b"\r") {
                Some(b) if line_end => b,
                _ => body,
            };
            if line_end && body.is_empty() && p.bytes.last() == Some(&b'\r') {
                // Its `\r\n` was split between two entries.
                p.bytes.pop();
            }
            let room = max - p.bytes.len();
            if body.len() <= room {
                extend_bounded(&mut p.bytes, body, max);
            } else {
                extend_bounded(&mut p.bytes, &body[..room], max);
                cut_to_char_boundary(&mut p.bytes);
                p.cut = true;
                if !line_end {
                    // Every later entry with this timestamp is part of this line.
                    self.working.stream_mut(stream).seen = u32::MAX;
                }
                self.hand_out(stream, out);
            }
        }
        if line_end {
            self.complete(stream, out);
        }
    }

    /// The log has ended for good (the container stopped and was read to the end): hand
    /// out lines that never got their newline.
    pub fn flush(&mut self, out: &mut Vec<LogLine>) {
        if let Some(mut decoder) = self.tty.take() {
            decoder.finish(&mut |ev| {
                self.tty_event(ev, out);
            });
            self.tty = Some(decoder);
        }
        for stream in [StreamName::Stdout, StreamName::Stderr] {
            self.complete(stream, out);
        }
    }

    /// The line of `stream` has ended.
    fn complete(&mut self, stream: StreamName, out: &mut Vec<LogLine>) {
        let Some(p) = &mut self.pending[slot(stream)] else {
            return;
        };
        if !p.cut {
            self.hand_out(stream, out);
        }
        self.pending[slot(stream)] = None;
        self.commit(stream);
    }

    /// Hand out the pending line of `stream` as it stands.
    fn hand_out(&mut self, stream: StreamName, out: &mut Vec<LogLine>) {
        let Some(p) = &mut self.pending[slot(stream)] else {
            return;
        };
        let bytes = std::mem::take(&mut p.bytes);
        let (timestamp, truncated) = (p.timestamp, p.cut);
        let message = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        self.commit(stream);
        out.push(LogLine {
            stream,
            timestamp,
            message,
            truncated,
            cursor: self.committed,
        });
    }

    /// Everything consumed on `stream` so far is delivered.
    fn commit(&mut self, stream: StreamName) {
        *self.committed.stream_mut(stream) = *self.working.stream(stream);
        let peer = other(stream);
        if self.pending[slot(peer)].is_none() {
            let now = self.working.stream(stream).timestamp;
            self.committed.lift_idle(peer, now);
            self.working.lift_idle(peer, now);
        }
    }
}

#[cfg(test)]
#[path = "lines_tests.rs"]
mod tests;
