//! A TTY container's log stream cut back into Docker's log entries, with bounded memory.
//!
//! A TTY container's log is not multiplexed: with `timestamps=true` dockerd writes each
//! entry of the log file as `<timestamp> <bytes>`, back to back, with nothing that gives
//! an entry's length. An entry is either a line, ending with `\n`, or a *partial* entry
//! without one: dockerd's copier splits a line every 16 KiB, and every piece of a line
//! carries the timestamp of its first piece. So a partial entry ends where its own
//! `<timestamp> ` starts again (payload containing that exact nanosecond timestamp
//! is the one ambiguity, and it is resolved the same way on every read).
//!
//! The decoder hands bytes on as they come, never a whole entry: what it holds back is at
//! most one header (64 bytes). Each entry is announced with [`TtyEvent::Begin`], so the
//! caller can count entries exactly as it counts the frames of a multiplexed stream, which
//! is what makes a cursor into a TTY log as exact as one into a multiplexed log.
//!
//! Known limit: a container whose last output before it stopped had no newline leaves a
//! partial entry that nothing ends; if it is started again, its next entry is read as the
//! rest of that line (with its timestamp in the text). Bytes are not lost or repeated.

use crate::record::Timestamp;

use super::timestamp::parse_timestamp;

/// Longer than any header dockerd writes (30 bytes and a space).
const MAX_HEADER: usize = 64;

/// What the decoder found in the stream, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtyEvent<'a> {
    /// A log entry stamped with this time starts.
    Begin(Timestamp),
    /// Bytes of the current entry; `line_end` when they end it with its `\n` (not
    /// included). An entry may come in any number of pieces, some of them empty.
    Bytes { bytes: &'a [u8], line_end: bool },
}

/// The stream holds something other than timestamped log entries (dockerd reports errors
/// inside the stream this way). Nothing more is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLog;

#[derive(Debug, Default)]
pub struct TtyDecoder {
    /// Bytes of an incomplete header, or the end of a piece that may start a marker.
    carry: Vec<u8>,
    /// `<timestamp> ` of the entry being read; empty between entries.
    marker: Vec<u8>,
    timestamp: Timestamp,
    broken: bool,
}

/// Where the current entry's bytes stop in the input.
enum Scan {
    /// At a newline: the entry is a complete line.
    Newline(usize),
    /// At the entry's own header: the entry was partial, the next piece starts here.
    Marker(usize),
    /// Not in this input. The bytes from here on may be the start of a marker.
    Open(usize),
}

fn scan(input: &[u8], marker: &[u8]) -> Scan {
    let first = marker[0];
    for (i, &b) in input.iter().enumerate() {
        if b == b'\n' {
            return Scan::Newline(i);
        }
        if b == first {
            let rest = &input[i..];
            if rest.len() >= marker.len() {
                if rest.starts_with(marker) {
                    return Scan::Marker(i);
                }
            } else if marker.starts_with(rest) {
                return Scan::Open(i);
            }
        }
    }
    Scan::Open(input.len())
}

impl TtyDecoder {
    /// Decode the next bytes of the stream (any piece of it), calling `on` for what they
    /// hold.
    pub fn feed(&mut self, chunk: &[u8], on: &mut impl FnMut(TtyEvent<'_>)) -> Result<(), NotLog> {
        if self.broken {
            return Err(NotLog);
        }
        let joined;
        let mut input = if self.carry.is_empty() {
            chunk
        } else {
            let mut c = std::mem::take(&mut self.carry);
            c.extend_from_slice(chunk);
            joined = c;
            &joined[..]
        };
        while !input.is_empty() {
            if self.marker.is_empty() {
                let Some(space) = input.iter().take(MAX_HEADER).position(|&b| b == b' ') else {
                    if input.len() >= MAX_HEADER {
                        self.broken = true;
                        return Err(NotLog);
                    }
                    self.carry = input.to_vec();
                    return Ok(());
                };
                let Some(ts) = parse_timestamp(&input[..space]) else {
                    self.broken = true;
                    return Err(NotLog);
                };
                self.timestamp = ts;
                self.marker.extend_from_slice(&input[..=space]);
                on(TtyEvent::Begin(ts));
                input = &input[space + 1..];
                continue;
            }
            match scan(input, &self.marker) {
                Scan::Newline(i) => {
                    on(TtyEvent::Bytes {
                        bytes: &input[..i],
                        line_end: true,
                    });
                    self.marker.clear();
                    input = &input[i + 1..];
                }
                Scan::Marker(i) => {
                    if i > 0 {
                        on(TtyEvent::Bytes {
                            bytes: &input[..i],
                            line_end: false,
                        });
                    }
                    on(TtyEvent::Begin(self.timestamp));
                    input = &input[i + self.marker.len()..];
                }
                Scan::Open(i) => {
                    if i > 0 {
                        on(TtyEvent::Bytes {
                            bytes: &input[..i],
                            line_end: false,
                        });
                    }
                    self.carry = input[i..].to_vec();
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The stream has ended for good: bytes held back belong to the last entry.
    pub fn finish(&mut self, on: &mut impl FnMut(TtyEvent<'_>)) {
        if !self.marker.is_empty() && !self.carry.is_empty() {
            on(TtyEvent::Bytes {
                bytes: &self.carry,
                line_end: false,
            });
        }
        *self = TtyDecoder::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2024-05-01T10:00:00.000000001Z";
    const T2: &str = "2024-05-01T10:00:00.000000002Z";

    /// What the decoder makes of `stream` fed in pieces of `size` bytes, with the pieces
    /// of an entry joined: (timestamp, bytes, ended by a newline).
    fn decode(stream: &[u8], size: usize) -> Result<Vec<(Timestamp, Vec<u8>, bool)>, NotLog> {
        let mut d = TtyDecoder::default();
        let mut entries: Vec<(Timestamp, Vec<u8>, bool)> = Vec::new();
        let mut on = |ev: TtyEvent<'_>| match ev {
            TtyEvent::Begin(ts) => entries.push((ts, Vec::new(), false)),
            TtyEvent::Bytes { bytes, line_end } => {
                let e = entries.last_mut().expect("bytes after a begin");
                assert!(!e.2, "bytes after the end of the line");
                e.1.extend_from_slice(bytes);
                e.2 = line_end;
            }
        };
        for piece in stream.chunks(size.max(1)) {
            d.feed(piece, &mut on)?;
        }
        d.finish(&mut on);
        Ok(entries)
    }

    fn ts(text: &str) -> Timestamp {
        parse_timestamp(text.as_bytes()).expect("timestamp")
    }

    #[test]
    fn entries_are_found_whatever_the_pieces_the_stream_comes_in() {
        let long = "x".repeat(40);
        let stream = format!(
            "{T1} one\r\n{T2} {long}{T2} {long}{T2} end2\r\n{T1} 22{T1} 2024\n{T2} no newline"
        );
        let expected = vec![
            (ts(T1), b"one\r".to_vec(), true),
            (ts(T2), long.clone().into_bytes(), false),
            (ts(T2), long.into_bytes(), false),
            (ts(T2), b"end2\r".to_vec(), true),
            (ts(T1), b"22".to_vec(), false),
            (ts(T1), b"2024".to_vec(), true),
            (ts(T2), b"no newline".to_vec(), false),
        ];
        for size in [1, 2, 7, 30, 31, 32, 100, stream.len()] {
            assert_eq!(
                decode(stream.as_bytes(), size),
                Ok(expected.clone()),
                "pieces of {size} bytes"
            );
        }
    }

    #[test]
    fn an_other_timestamp_inside_a_line_is_text() {
        let stream = format!("{T1} a {T2} b\n");
        assert_eq!(
            decode(stream.as_bytes(), 5),
            Ok(vec![(ts(T1), format!("a {T2} b").into_bytes(), true)])
        );
    }

    #[test]
    fn what_is_not_a_log_entry_is_refused() {
        assert_eq!(decode(b"Error grabbing logs: boom\n", 8), Err(NotLog));
        assert_eq!(decode(&[b'x'; 100], 100), Err(NotLog));
        let mut d = TtyDecoder::default();
        let mut events = 0;
        let stream = format!("{T1} ok\nError: boom\n");
        assert_eq!(d.feed(stream.as_bytes(), &mut |_| events += 1), Err(NotLog));
        assert_eq!(events, 2, "the entry before the error was decoded");
        assert_eq!(d.feed(b"more", &mut |_| events += 1), Err(NotLog));
    }

    #[test]
    fn memory_held_is_one_header_at_most() {
        let mut d = TtyDecoder::default();
        let mut bytes = 0;
        let mut on = |ev: TtyEvent<'_>| {
            if let TtyEvent::Bytes { bytes: b, .. } = ev {
                bytes += b.len();
            }
        };
        d.feed(format!("{T1} ").as_bytes(), &mut on)
            .expect("header");
        for _ in 0..1000 {
            d.feed(&[b'2'; 4096], &mut on).expect("payload");
            assert!(d.carry.len() < MAX_HEADER, "carry of {}", d.carry.len());
        }
        // A run of '2' may start the marker: only the last byte is held back.
        assert_eq!(bytes, 1000 * 4096 - 1);
    }
}
