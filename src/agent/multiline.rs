//! Multiline joining (pure): a line matching the route's start pattern opens a record,
//! following lines are appended with `\n` until the next start, `maxLines`, the byte
//! limit, or a quiet period of `timeoutMs`.
//!
//! One joiner per (container, route, stream): stdout and stderr interleave freely and
//! must not be glued together.

use std::time::{Duration, Instant};

use regex::Regex;

use crate::record::Timestamp;

/// A finished (possibly joined) message.
#[derive(Debug, PartialEq)]
pub struct Joined {
    /// Timestamp of the first line.
    pub timestamp: Timestamp,
    pub message: String,
    pub truncated: bool,
    /// How many lines it joins (for accounting).
    pub lines: u32,
}

#[derive(Debug)]
struct Pending {
    joined: Joined,
    lines: u32,
    deadline: Instant,
}

#[derive(Debug)]
pub struct Joiner {
    max_lines: u32,
    max_bytes: usize,
    timeout: Duration,
    pending: Option<Pending>,
}

impl Joiner {
    pub fn new(max_lines: u32, max_bytes: usize, timeout: Duration) -> Self {
        Self {
            max_lines,
            max_bytes,
            timeout,
            pending: None,
        }
    }

    /// Feed one line; returns the previous record when this line completes it. A line
    /// before any start line (or after a record hit `max_lines`) opens a record itself,
    /// so nothing is ever held without bound or dropped.
    pub fn push(
        &mut self,
        start: &Regex,
        timestamp: Timestamp,
        line: &str,
        truncated: bool,
        now: Instant,
    ) -> Option<Joined> {
        let continues = self
            .pending
            .as_ref()
            .is_some_and(|p| p.lines < self.max_lines)
            && !crate::route::matcher::is_match_bounded(start, line);
        if continues && let Some(p) = self.pending.as_mut() {
            let j = &mut p.joined;
            if j.message.len() + 1 + line.len() <= self.max_bytes {
                j.message.push('\n');
                j.message.push_str(line);
            } else {
                j.truncated = true;
            }
            j.truncated |= truncated;
            p.lines += 1;
            p.deadline = now + self.timeout;
            return None;
        }
        let done = self.flush();
        self.pending = Some(Pending {
            joined: Joined {
                timestamp,
                message: line.to_string(),
                truncated,
                lines: 1,
            },
            lines: 1,
            deadline: now + self.timeout,
        });
        done
    }

    /// When the pending record must be emitted if no line comes before.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// Emit the pending record (timeout, stream end, shutdown).
    pub fn flush(&mut self) -> Option<Joined> {
        self.pending.take().map(|p| Joined {
            lines: p.lines,
            ..p.joined
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp { secs: s, nanos: 0 }
    }

    #[test]
    fn joins_a_stack_trace_until_the_next_start_line() {
        let start = Regex::new(r"^\S").expect("regex");
        let now = Instant::now();
        let mut j = Joiner::new(500, 1 << 20, Duration::from_secs(1));
        assert_eq!(
            j.push(&start, ts(1), "Exception in thread main", false, now),
            None
        );
        assert_eq!(
            j.push(&start, ts(2), "  at a.b(C.java:1)", false, now),
            None
        );
        assert_eq!(
            j.push(&start, ts(3), "  at d.e(F.java:2)", false, now),
            None
        );
        let done = j
            .push(&start, ts(4), "next record", false, now)
            .expect("previous record completes");
        assert_eq!(
            done.message,
            "Exception in thread main\n  at a.b(C.java:1)\n  at d.e(F.java:2)"
        );
        assert_eq!(done.timestamp, ts(1));
        assert_eq!(j.flush().map(|r| r.message), Some("next record".into()));
        assert_eq!(j.flush(), None);
    }

    #[test]
    fn max_lines_and_max_bytes_bound_a_record() {
        let start = Regex::new(r"^START").expect("regex");
        let now = Instant::now();
        let mut j = Joiner::new(2, 12, Duration::from_secs(1));
        assert_eq!(j.push(&start, ts(1), "START", false, now), None);
        assert_eq!(j.push(&start, ts(1), "aaaaaaaaaaaa", false, now), None);
        let first = j
            .push(&start, ts(1), "b", false, now)
            .expect("max_lines reached");
        assert_eq!(first.message, "START");
        assert!(first.truncated, "the line that did not fit is marked");
        assert_eq!(j.flush().map(|r| r.message), Some("b".into()));
    }

    #[test]
    fn deadline_moves_with_each_line() {
        let start = Regex::new(r"^\S").expect("regex");
        let t0 = Instant::now();
        let mut j = Joiner::new(10, 100, Duration::from_millis(500));
        assert_eq!(j.deadline(), None);
        j.push(&start, ts(1), "a", false, t0);
        j.push(&start, ts(1), " b", false, t0 + Duration::from_millis(100));
        assert_eq!(j.deadline(), Some(t0 + Duration::from_millis(600)));
    }
}
