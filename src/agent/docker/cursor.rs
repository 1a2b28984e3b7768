//! Where a container's log has been read up to, precisely enough that a re-read resumes
//! right after the last delivered record: nothing lost, nothing repeated.
//!
//! Docker offers no offset into a log, only `since` (a time, inclusive) and each record's
//! timestamp. Timestamps are not unique (the fragments of a line longer than 16 KiB all
//! carry the timestamp of the first one) and are not ordered across streams (a stderr line
//! can sit in the file between two stdout fragments that carry an earlier time). So the
//! cursor is kept per stream: the last timestamp and how many frames at exactly that
//! timestamp were consumed. A re-read starts at the earlier of the two streams and
//! [`ResumeFilter`] skips, per stream, what is at or before the cursor.

use serde::{Deserialize, Serialize};

use crate::api::StreamName;
use crate::record::Timestamp;

/// How much earlier than the other stream's a new frame of an idle stream may be stamped.
///
/// dockerd stamps a line when its copier reads it and writes it a moment later under a
/// lock shared by both streams, so a frame can trail the other stream by the time
/// between the two: microseconds normally, never seconds. An idle stream's cursor is
/// moved up to this far behind the other stream, so that `since` is not pinned to the
/// last stderr line of an hour ago; a re-read therefore covers at most this much extra.
pub const STREAM_SKEW_SECS: i64 = 2;

/// Position in one stream: frames stamped before `timestamp` and the first `seen` frames
/// stamped exactly `timestamp` have been consumed. `seen == u32::MAX` is the position of
/// a line cut at `--max-line-bytes` before its end: every frame stamped `timestamp` (the
/// rest of that line, whose pieces all carry its first piece's time) counts as consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawStreamCursor", into = "RawStreamCursor")]
pub struct StreamCursor {
    pub timestamp: Timestamp,
    pub seen: u32,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct RawStreamCursor {
    secs: i64,
    nanos: u32,
    seen: u32,
}

impl From<RawStreamCursor> for StreamCursor {
    fn from(r: RawStreamCursor) -> Self {
        StreamCursor {
            timestamp: Timestamp {
                secs: r.secs,
                nanos: r.nanos,
            },
            seen: r.seen,
        }
    }
}

impl From<StreamCursor> for RawStreamCursor {
    fn from(c: StreamCursor) -> Self {
        RawStreamCursor {
            secs: c.timestamp.secs,
            nanos: c.timestamp.nanos,
            seen: c.seen,
        }
    }
}

impl StreamCursor {
    /// Account for one more consumed frame stamped `ts`.
    pub(crate) fn advance(&mut self, ts: Timestamp) {
        if self.timestamp == ts {
            self.seen = self.seen.saturating_add(1);
        } else {
            *self = StreamCursor {
                timestamp: ts,
                seen: 1,
            };
        }
    }
}

/// Where a container's log was read up to. `Cursor::default()` is the beginning of the log.
/// TTY containers use only `stdout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub stdout: StreamCursor,
    pub stderr: StreamCursor,
}

impl Cursor {
    /// Just before `ts`: every frame stamped `ts` or later is still to be read.
    pub fn at(ts: Timestamp) -> Self {
        let c = StreamCursor {
            timestamp: ts,
            seen: 0,
        };
        Cursor {
            stdout: c,
            stderr: c,
        }
    }

    pub fn stream(&self, stream: StreamName) -> &StreamCursor {
        match stream {
            StreamName::Stdout => &self.stdout,
            StreamName::Stderr => &self.stderr,
        }
    }

    pub fn stream_mut(&mut self, stream: StreamName) -> &mut StreamCursor {
        match stream {
            StreamName::Stdout => &mut self.stdout,
            StreamName::Stderr => &mut self.stderr,
        }
    }

    /// The time a re-read must start at (Docker's `since` is inclusive).
    pub fn since(&self) -> Timestamp {
        self.stdout.timestamp.min(self.stderr.timestamp)
    }

    /// The newest timestamp consumed on either stream.
    pub fn latest(&self) -> Timestamp {
        self.stdout.timestamp.max(self.stderr.timestamp)
    }

    /// Move `stream`'s position up to [`STREAM_SKEW_SECS`] before `other_ts` when it lags
    /// further behind. Only valid when `stream` has no line in progress.
    pub(crate) fn lift_idle(&mut self, stream: StreamName, other_ts: Timestamp) {
        let floor = Timestamp {
            secs: other_ts.secs.saturating_sub(STREAM_SKEW_SECS),
            nanos: other_ts.nanos,
        };
        let c = self.stream_mut(stream);
        if c.timestamp < floor {
            *c = StreamCursor {
                timestamp: floor,
                seen: 0,
            };
        }
    }
}

/// Decides, frame by frame, whether a re-read from `cursor.since()` has reached new data.
///
/// Per stream, frames stamped before the cursor are skipped, then the first `seen` frames
/// stamped exactly at it; the first frame past that and everything after it on that
/// stream are new (even if a clock step stamps a later frame earlier).
#[derive(Clone, Debug)]
pub struct ResumeFilter {
    cursor: Cursor,
    remaining: [u32; 2],
    passed: [bool; 2],
}

fn index(stream: StreamName) -> usize {
    match stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

impl ResumeFilter {
    pub fn new(cursor: Cursor) -> Self {
        ResumeFilter {
            cursor,
            remaining: [cursor.stdout.seen, cursor.stderr.seen],
            passed: [false; 2],
        }
    }

    /// True when the frame on `stream` stamped `ts` was consumed before (skip it).
    pub fn skip(&mut self, stream: StreamName, ts: Timestamp) -> bool {
        let i = index(stream);
        if self.passed[i] {
            return false;
        }
        let at = self.cursor.stream(stream).timestamp;
        if ts < at {
            return true;
        }
        if ts == at && self.remaining[i] > 0 {
            self.remaining[i] -= 1;
            return true;
        }
        self.passed[i] = true;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: StreamName = StreamName::Stdout;
    const ERR: StreamName = StreamName::Stderr;

    fn ts(secs: i64, nanos: u32) -> Timestamp {
        Timestamp { secs, nanos }
    }

    /// Reads `frames` as a consumer would, returning the cursor after each frame.
    fn consume(frames: &[(StreamName, Timestamp)]) -> Vec<Cursor> {
        let mut c = Cursor::default();
        frames
            .iter()
            .map(|(s, t)| {
                c.stream_mut(*s).advance(*t);
                c
            })
            .collect()
    }

    /// Frames a re-read from `cursor` delivers, in file order.
    fn resume(frames: &[(StreamName, Timestamp)], cursor: Cursor) -> Vec<usize> {
        let since = cursor.since();
        let mut f = ResumeFilter::new(cursor);
        (0..frames.len())
            .filter(|&i| frames[i].1 >= since && !f.skip(frames[i].0, frames[i].1))
            .collect()
    }

    #[test]
    fn resuming_after_every_frame_yields_exactly_the_rest() {
        // Equal timestamps (fragments of a long line), and a stderr line filed between
        // stdout fragments that carry an earlier time.
        let frames = [
            (OUT, ts(10, 5)),
            (OUT, ts(10, 7)),
            (ERR, ts(10, 8)),
            (OUT, ts(10, 7)),
            (OUT, ts(10, 7)),
            (ERR, ts(10, 8)),
            (ERR, ts(11, 0)),
            (OUT, ts(11, 0)),
            (OUT, ts(12, 1)),
        ];
        let cursors = consume(&frames);
        for (k, cursor) in cursors.iter().enumerate() {
            let expected: Vec<usize> = (k + 1..frames.len()).collect();
            assert_eq!(
                resume(&frames, *cursor),
                expected,
                "resuming after frame {k} from {cursor:?}"
            );
        }
        assert_eq!(
            resume(&frames, Cursor::default()),
            (0..frames.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn cursor_at_keeps_frames_at_that_time() {
        let frames = [
            (OUT, ts(9, 0)),
            (OUT, ts(10, 0)),
            (ERR, ts(10, 0)),
            (OUT, ts(10, 1)),
        ];
        assert_eq!(resume(&frames, Cursor::at(ts(10, 0))), vec![1, 2, 3]);
    }

    #[test]
    fn once_past_the_cursor_every_later_frame_of_the_stream_is_new() {
        let mut f = ResumeFilter::new(Cursor::at(ts(10, 0)));
        assert!(!f.skip(OUT, ts(10, 5)));
        // A clock stepped back: still new, not silently dropped.
        assert!(!f.skip(OUT, ts(9, 0)));
        // The other stream is filtered on its own.
        assert!(f.skip(ERR, ts(9, 0)));
    }

    #[test]
    fn an_idle_stream_is_lifted_to_the_skew_window_only() {
        let mut c = Cursor::default();
        c.stdout.advance(ts(100, 3));
        c.lift_idle(ERR, c.stdout.timestamp);
        assert_eq!(
            c.stderr,
            StreamCursor {
                timestamp: ts(100 - STREAM_SKEW_SECS, 3),
                seen: 0
            }
        );
        assert_eq!(c.since(), ts(98, 3));
        // A stream that is already closer is left alone.
        c.stderr.advance(ts(99, 0));
        c.lift_idle(ERR, ts(100, 5));
        assert_eq!(
            c.stderr,
            StreamCursor {
                timestamp: ts(99, 0),
                seen: 1
            }
        );
    }

    #[test]
    fn cursor_round_trips_through_json() {
        let mut c = Cursor::default();
        c.stdout.advance(ts(1_700_000_000, 123_456_789));
        c.stdout.advance(ts(1_700_000_000, 123_456_789));
        let json = serde_json::to_string(&c).expect("serialize");
        assert_eq!(
            json,
            r#"{"stdout":{"secs":1700000000,"nanos":123456789,"seen":2},"stderr":{"secs":0,"nanos":0,"seen":0}}"#
        );
        assert_eq!(
            serde_json::from_str::<Cursor>(&json).expect("deserialize"),
            c
        );
    }
}
