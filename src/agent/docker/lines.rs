//! From Docker log frames to log lines, without I/O.
//!
//! With `timestamps=true` each frame is `<RFC 3339 nano timestamp> <bytes>`. A line ends
//! with `\n`; a line longer than dockerd's 16 KiB buffer comes as several frames without
//! one, all stamped with the first fragment's time, and a container's last output may end
//! without a newline at all. TTY containers are not multiplexed: bollard hands over one
//! chunk per `\n`, in which the fragments of a long line follow each other with their
//! timestamp prefix repeated inside the chunk. (So for TTY containers the memory bound
//! is bollard's: it holds a whole line before handing it over; the cut to
//! `max_line_bytes` happens after. Multiplexed streams come in frames of at most 16 KiB.)

use std::borrow::Cow;

use crate::api::StreamName;
use crate::record::Timestamp;

use super::cursor::{Cursor, ResumeFilter};

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

/// One frame of a log stream, as bollard decoded it.
#[derive(Clone, Copy, Debug)]
pub enum Frame<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
    /// Unmultiplexed bytes: a TTY container's output, or dockerd writing an error into
    /// the body of a multiplexed stream.
    Console(&'a [u8]),
}

/// What became of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Beyond the cursor: consumed.
    New,
    /// At or before the cursor: already delivered by an earlier read.
    Skipped,
    /// Not a timestamped log frame (dockerd reports errors this way); nothing consumed.
    NotLog,
}

/// Parses Docker's RFC 3339 timestamp (`2024-05-01T10:00:00.123456789Z`).
pub fn parse_timestamp(text: &[u8]) -> Option<Timestamp> {
    parse_fixed_utc(text).or_else(|| parse_rfc3339(text))
}

/// The form dockerd writes on every frame (Go's `RFC3339NanoFixed` in UTC): exactly
/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`. Parsed by hand because it is done once per line;
/// anything else (offsets, fewer digits, a leap second) is left to chrono.
fn parse_fixed_utc(t: &[u8]) -> Option<Timestamp> {
    if t.len() != 30
        || t[4] != b'-'
        || t[7] != b'-'
        || t[10] != b'T'
        || t[13] != b':'
        || t[16] != b':'
        || t[19] != b'.'
        || t[29] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        t[r].iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let nanos = num(20..29)?;
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(Timestamp {
        secs: days * 86_400 + hour * 3600 + minute * 60 + second,
        nanos: u32::try_from(nanos).ok()?,
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339(text: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(text).ok()?;
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(Timestamp {
        secs: t.timestamp(),
        nanos: t.timestamp_subsec_nanos(),
    })
}

/// Splits `<timestamp> <payload>`; returns the timestamp, the prefix including its space,
/// and the payload.
pub fn split_frame(frame: &[u8]) -> Option<(Timestamp, &[u8], &[u8])> {
    let space = frame.iter().take(64).position(|&b| b == b' ')?;
    let ts = parse_timestamp(&frame[..space])?;
    Some((ts, &frame[..=space], &frame[space + 1..]))
}

/// Removes every occurrence of `marker` (the repeated `<timestamp> ` prefix of the later
/// fragments of a long TTY line).
fn strip_marker<'a>(payload: &'a [u8], marker: &[u8]) -> Cow<'a, [u8]> {
    let find = |from: usize| {
        payload[from..]
            .windows(marker.len())
            .position(|w| w == marker)
            .map(|p| p + from)
    };
    let Some(first) = find(0) else {
        return Cow::Borrowed(payload);
    };
    let mut out = Vec::with_capacity(payload.len());
    let mut from = 0;
    let mut next = Some(first);
    while let Some(at) = next {
        out.extend_from_slice(&payload[from..at]);
        from = at + marker.len();
        next = find(from);
    }
    out.extend_from_slice(&payload[from..]);
    Cow::Owned(out)
}

/// Drops an incomplete UTF-8 sequence that a cut left at the end.
fn cut_to_char_boundary(bytes: &mut Vec<u8>) {
    let len = bytes.len();
    let mut start = len;
    while start > 0 && len - start < 3 && bytes[start - 1] & 0xC0 == 0x80 {
        start -= 1;
    }
    if start == 0 {
        return;
    }
    let width = match bytes[start - 1] {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    };
    if width > len - (start - 1) {
        bytes.truncate(start - 1);
    }
}

/// A line whose fragments are still arriving.
#[derive(Debug)]
struct Pending {
    timestamp: Timestamp,
    bytes: Vec<u8>,
    truncated: bool,
}

/// Turns one container's frames into lines and keeps its cursor.
///
/// Memory is bounded by `max_line_bytes` per stream: past it a line is cut, marked, and
/// the rest of it is read and dropped up to its newline.
#[derive(Debug)]
pub struct LineAssembler {
    max_line_bytes: usize,
    tty: bool,
    /// After the last line handed out.
    committed: Cursor,
    /// After the last frame consumed (ahead of `committed` while a line is pending).
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
            tty,
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
    }

    /// Consume one frame; completed lines are appended to `out`.
    pub fn push(&mut self, frame: Frame<'_>, out: &mut Vec<LogLine>) -> Pushed {
        let (stream, raw) = match frame {
            Frame::Stdout(b) => (StreamName::Stdout, b),
            Frame::Stderr(b) => (StreamName::Stderr, b),
            Frame::Console(b) if self.tty => (StreamName::Stdout, b),
            Frame::Console(_) => return Pushed::NotLog,
        };
        let Some((ts, prefix, payload)) = split_frame(raw) else {
            return Pushed::NotLog;
        };
        if self.filter.skip(stream, ts) {
            return Pushed::Skipped;
        }
        self.working.stream_mut(stream).advance(ts);
        let payload = if self.tty {
            strip_marker(payload, prefix)
        } else {
            Cow::Borrowed(payload)
        };
        let (body, complete) = match payload.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (&payload[..], false),
        };
        let max = self.max_line_bytes;
        let p = self.pending[slot(stream)].get_or_insert_with(|| Pending {
            timestamp: ts,
            bytes: Vec::with_capacity(body.len().min(max)),
            truncated: false,
        });
        if !p.truncated {
            let room = max - p.bytes.len();
            if body.len() <= room {
                p.bytes.extend_from_slice(body);
            } else {
                p.bytes.extend_from_slice(&body[..room]);
                cut_to_char_boundary(&mut p.bytes);
                p.truncated = true;
            }
        }
        if complete {
            self.complete(stream, out);
        }
        Pushed::New
    }

    /// The log has ended for good (the container stopped and was read to the end): hand
    /// out lines that never got their newline.
    pub fn flush(&mut self, out: &mut Vec<LogLine>) {
        for stream in [StreamName::Stdout, StreamName::Stderr] {
            if self.pending[slot(stream)].is_some() {
                self.complete(stream, out);
            }
        }
    }

    fn complete(&mut self, stream: StreamName, out: &mut Vec<LogLine>) {
        let Some(mut p) = self.pending[slot(stream)].take() else {
            return;
        };
        if !p.truncated && p.bytes.last() == Some(&b'\r') {
            p.bytes.pop();
        }
        let message = match String::from_utf8(p.bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        *self.committed.stream_mut(stream) = *self.working.stream(stream);
        let peer = other(stream);
        if self.pending[slot(peer)].is_none() {
            let now = self.working.stream(stream).timestamp;
            self.committed.lift_idle(peer, now);
            self.working.lift_idle(peer, now);
        }
        out.push(LogLine {
            stream,
            timestamp: p.timestamp,
            message,
            truncated: p.truncated,
            cursor: self.committed,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2024-05-01T10:00:00.000000001Z";
    const T2: &str = "2024-05-01T10:00:00.000000002Z";
    const T3: &str = "2024-05-01T10:00:01.500000000Z";

    fn frame(ts: &str, payload: &[u8]) -> Vec<u8> {
        let mut f = format!("{ts} ").into_bytes();
        f.extend_from_slice(payload);
        f
    }

    /// Frames of one read, tagged with their stream (`o`, `e`, `c` for console).
    fn read(asm: &mut LineAssembler, frames: &[(char, Vec<u8>)]) -> Vec<LogLine> {
        let mut out = Vec::new();
        for (kind, bytes) in frames {
            let f = match kind {
                'o' => Frame::Stdout(bytes),
                'e' => Frame::Stderr(bytes),
                _ => Frame::Console(bytes),
            };
            assert_ne!(
                asm.push(f, &mut out),
                Pushed::NotLog,
                "frame {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        out
    }

    fn messages(lines: &[LogLine]) -> Vec<(StreamName, String)> {
        lines
            .iter()
            .map(|l| (l.stream, l.message.clone()))
            .collect()
    }

    #[test]
    fn parses_docker_timestamps() {
        assert_eq!(
            parse_timestamp(T1.as_bytes()),
            Some(Timestamp {
                secs: 1_714_557_600,
                nanos: 1
            })
        );
        assert_eq!(
            parse_timestamp(b"2024-05-01T12:00:00.5+02:00"),
            Some(Timestamp {
                secs: 1_714_557_600,
                nanos: 500_000_000
            })
        );
        assert_eq!(parse_timestamp(b"Error grabbing logs:"), None);
        assert_eq!(split_frame(b"no timestamp here"), None);
        assert_eq!(split_frame(b""), None);
    }

    #[test]
    fn the_hand_parser_agrees_with_chrono() {
        let mut t = chrono::DateTime::parse_from_rfc3339("1999-12-31T23:59:59.999999999Z")
            .expect("start")
            .to_utc();
        // About three days apart, across month ends and leap days, up to 2100.
        for i in 0..12_000u32 {
            let text = t.format("%Y-%m-%dT%H:%M:%S.%fZ").to_string();
            assert_eq!(text.len(), 30, "{text}");
            assert_eq!(
                parse_fixed_utc(text.as_bytes()),
                parse_rfc3339(text.as_bytes()),
                "{text}"
            );
            t += chrono::Duration::seconds(259_201) + chrono::Duration::nanoseconds(i64::from(i));
        }
        for bad in [
            "2024-02-30T10:00:00.000000000Z",
            "2023-02-29T10:00:00.000000000Z",
            "2024-13-01T10:00:00.000000000Z",
            "2024-05-01T24:00:00.000000000Z",
            "2024-05-01T10:00:00.00000000xZ",
        ] {
            assert_eq!(parse_fixed_utc(bad.as_bytes()), None, "{bad}");
            assert_eq!(parse_timestamp(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            parse_fixed_utc(b"2024-02-29T00:00:00.000000007Z"),
            Some(Timestamp {
                secs: 1_709_164_800,
                nanos: 7
            })
        );
    }

    #[test]
    fn joins_partial_fragments_with_the_first_timestamp_and_strips_newlines() {
        let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
        let lines = read(
            &mut asm,
            &[
                ('o', frame(T1, b"aaa")),
                ('e', frame(T2, b"err line\r\n")),
                ('o', frame(T1, b"bbb")),
                ('o', frame(T1, b"ccc\n")),
                ('o', frame(T2, b"\n")),
            ],
        );
        assert_eq!(
            messages(&lines),
            vec![
                (StreamName::Stderr, "err line".to_string()),
                (StreamName::Stdout, "aaabbbccc".to_string()),
                (StreamName::Stdout, String::new()),
            ]
        );
        assert_eq!(
            lines[1].timestamp,
            parse_timestamp(T1.as_bytes()).expect("ts")
        );
        assert!(lines.iter().all(|l| !l.truncated));
    }

    #[test]
    fn cuts_long_lines_at_the_limit_and_discards_the_rest_of_them() {
        let mut asm = LineAssembler::new(Cursor::default(), 5, false);
        let lines = read(
            &mut asm,
            &[
                ('o', frame(T1, b"abc")),
                ('o', frame(T1, b"defgh")),
                ('o', frame(T1, b"ij\n")),
                ('o', frame(T2, b"ok\n")),
            ],
        );
        assert_eq!(
            messages(&lines),
            vec![
                (StreamName::Stdout, "abcde".into()),
                (StreamName::Stdout, "ok".into())
            ]
        );
        assert_eq!([lines[0].truncated, lines[1].truncated], [true, false]);
        assert_eq!(asm.pending[0].as_ref().map(|p| p.bytes.len()), None);
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is two bytes; the limit falls between them.
        let mut asm = LineAssembler::new(Cursor::default(), 4, false);
        let lines = read(&mut asm, &[('o', frame(T1, "abcé\n".as_bytes()))]);
        assert_eq!(lines[0].message, "abc");
        assert!(lines[0].truncated);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
        let lines = read(&mut asm, &[('o', frame(T1, b"\xff\xfe bad\n"))]);
        assert_eq!(lines[0].message, "\u{FFFD}\u{FFFD} bad");
    }

    #[test]
    fn tty_chunks_lose_their_inner_timestamps_and_carriage_returns() {
        let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, true);
        let mut long = frame(T1, b"xxxx");
        long.extend_from_slice(&frame(T1, b"yyyy"));
        long.extend_from_slice(&frame(T1, b"zz\r\n"));
        let lines = read(
            &mut asm,
            &[
                ('c', long),
                ('c', frame(T2, b"next\r\n")),
                ('c', frame(T3, b"no newline")),
            ],
        );
        assert_eq!(
            messages(&lines),
            vec![
                (StreamName::Stdout, "xxxxyyyyzz".into()),
                (StreamName::Stdout, "next".into())
            ]
        );
        let mut out = Vec::new();
        asm.flush(&mut out);
        assert_eq!(
            messages(&out),
            vec![(StreamName::Stdout, "no newline".into())]
        );
    }

    #[test]
    fn console_frames_of_a_multiplexed_stream_are_not_log() {
        let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
        let mut out = Vec::new();
        assert_eq!(
            asm.push(Frame::Console(b"Error grabbing logs: boom\n"), &mut out),
            Pushed::NotLog
        );
        assert_eq!(
            asm.push(Frame::Stdout(b"garbage"), &mut out),
            Pushed::NotLog
        );
        assert!(out.is_empty());
    }

    /// A log with long lines on stdout and stderr lines between their fragments.
    fn log() -> Vec<(char, Vec<u8>)> {
        vec![
            ('o', frame(T1, b"one\n")),
            ('o', frame(T2, b"long-")),
            ('e', frame(T2, b"e1\n")),
            ('o', frame(T2, b"line\n")),
            ('e', frame(T3, b"e2\n")),
            ('o', frame(T2, b"late-")),
            ('o', frame(T2, b"stamped\n")),
            ('o', frame(T3, b"last\n")),
        ]
    }

    #[test]
    fn a_restart_from_any_line_cursor_yields_exactly_the_following_lines() {
        let all = read(
            &mut LineAssembler::new(Cursor::default(), 1 << 20, false),
            &log(),
        );
        assert_eq!(all.len(), 6);
        for k in 0..all.len() {
            let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
            asm.restart(all[k].cursor);
            // Docker's `since` is whole seconds here: everything of this log is re-sent.
            let rest = read(&mut asm, &log());
            assert_eq!(
                messages(&rest),
                messages(&all[k + 1..]),
                "resuming after line {k}"
            );
            assert_eq!(asm.cursor(), all[all.len() - 1].cursor);
        }
    }

    #[test]
    fn a_read_that_ends_mid_line_is_resumed_without_loss() {
        let frames = log();
        let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
        // The first read stops after "long-" and "e1".
        let first = read(&mut asm, &frames[..3]);
        assert_eq!(
            messages(&first),
            vec![
                (StreamName::Stdout, "one".into()),
                (StreamName::Stderr, "e1".into())
            ]
        );
        asm.restart(asm.cursor());
        let second = read(&mut asm, &frames);
        assert_eq!(
            messages(&second),
            vec![
                (StreamName::Stdout, "long-line".into()),
                (StreamName::Stderr, "e2".into()),
                (StreamName::Stdout, "late-stamped".into()),
                (StreamName::Stdout, "last".into()),
            ]
        );
    }
}
