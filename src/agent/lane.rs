//! Lanes: what one sink of one route gets from one container, and where it stands.
//!
//! A container has one shared reader (the head) and one lane per (route, sink) it
//! matched. A lane owns its multiline joiners and its position: the cursor just past the
//! last line it queued or filtered out, never past a line still held in a joiner. Each
//! queued record carries that position, and the sink worker checkpoints it once the
//! sink accepted the record.
//!
//! Isolation: a lane never waits for its sink. When its queue is full it *detaches*: it
//! drops its joiners (their lines are read again), keeps only its position, and the
//! head goes on for the other lanes. Once the sink drains its queue the lane catches up
//! with a Docker stream of its own from its position ([`Detached`]); when that stream
//! has reached the head, the lane rejoins the head, skipping what it already took.
//!
//! Accounting: while detached, a lane counts the lines the head read past it
//! (`missed`); while catching up it counts the lines it read again from that range
//! (`recovered`). What Docker rotated away in between is the difference, counted as
//! dropped with reason `rotated` (in lines) when the lane rejoins or its log ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use crate::agent::checkpoint::LaneCheckpoint;
use crate::agent::docker::{Cursor, LogLine, StreamCursor};
use crate::agent::multiline::{Joined, Joiner};
use crate::agent::routes::{ActiveRoute, SinkHandle};
use crate::agent::spill::{Spill, SpillBudget, SpillSnapshot};
use crate::api::StreamName;
use crate::record::{ContainerInfo, Record};
use crate::route::matcher::Filtered;
use crate::sink::worker::{Position, Queued};

/// `a` is strictly after `b` in its stream.
pub fn later(a: &StreamCursor, b: &StreamCursor) -> bool {
    (a.timestamp, a.seen) > (b.timestamp, b.seen)
}

/// Per stream, the later of two cursors.
pub fn furthest(a: Cursor, b: &Cursor) -> Cursor {
    let pick = |x: StreamCursor, y: StreamCursor| if later(&y, &x) { y } else { x };
    Cursor {
        stdout: pick(a.stdout, b.stdout),
        stderr: pick(a.stderr, b.stderr),
    }
}

/// `a` is at or after `b` on both streams.
pub fn reached(a: &Cursor, b: &Cursor) -> bool {
    !later(&b.stdout, &a.stdout) && !later(&b.stderr, &a.stderr)
}

fn index(s: StreamName) -> usize {
    match s {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

fn other(s: StreamName) -> StreamName {
    match s {
        StreamName::Stdout => StreamName::Stderr,
        StreamName::Stderr => StreamName::Stdout,
    }
}

/// The sink's queue is full: the lane must detach.
pub struct Full;

/// After a rejoin: head lines the lane already took on its own are skipped, per stream,
/// up to the first line past `at`.
struct Skip {
    at: Cursor,
    passed: [bool; 2],
}

impl Skip {
    fn skip(&mut self, line: &LogLine) -> bool {
        let i = index(line.stream);
        if self.passed[i] {
            return false;
        }
        if later(line.cursor.stream(line.stream), self.at.stream(line.stream)) {
            self.passed[i] = true;
            return false;
        }
        true
    }
}

/// A running catch-up stream of a detached lane.
pub struct CatchUp {
    pub generation: u64,
    pub stop: CancellationToken,
}

/// A lane that fell behind.
pub struct Detached {
    /// Lines past the lane's position that it has not got: those it had consumed but not
    /// covered (held in a joiner, or the line whose record did not fit), then every
    /// line the head read while the lane was detached.
    missed: u64,
    /// Per stream, the furthest head line counted in `missed`.
    missed_upto: Cursor,
    /// Of those, lines the catch-up read again.
    recovered: u64,
    /// Per stream, the furthest line the catch-up counted (re-reads count once); lines
    /// up to it are not among `missed`.
    counted: Cursor,
    /// Where `counted` started: lines up to it were never the head's to count.
    floor: Cursor,
    /// Lines this catch-up counted that the position does not cover yet (held in a
    /// joiner, or the line that did not fit), and whether they were counted in
    /// `recovered` (else the catch-up read them ahead of the head): a catch-up that
    /// stops gives them back, since the next one reads them again — or finds them
    /// rotated away.
    unsettled: Vec<(StreamName, StreamCursor, bool)>,
    /// Per stream, the furthest line taken in the current catch-up.
    reached: Cursor,
    pub catchup: Option<CatchUp>,
    /// The lines the head read while the lane was detached, on disk (see
    /// [`crate::agent::spill`]); opened at the first such line.
    spill: Option<Box<Spill>>,
    gauge: IntGauge,
}

impl Detached {
    /// `missed` and `recovered` as they stand once the lines the current catch-up
    /// counted but the position does not cover are given back: a recovered one is
    /// recovered no more; one read ahead of the head that the head has passed since
    /// (without counting it, as the catch-up had it) is missed.
    fn without_unsettled(&self, head: &Cursor) -> (u64, u64) {
        let (mut missed, mut recovered) = (self.missed, self.recovered);
        for (s, c, was_recovered) in &self.unsettled {
            if *was_recovered {
                recovered -= 1;
            } else if !later(c, head.stream(*s)) {
                missed += 1;
            }
        }
        (missed, recovered)
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Some(c) = &self.catchup {
            c.stop.cancel();
        }
    }
}

enum Mode {
    Live(Option<Skip>),
    Detached(Box<Detached>),
}

/// A joiner and the cursor just past its last line.
struct Joining {
    joiner: Joiner,
    last: Cursor,
}

pub struct Lane {
    /// Unique per lane instance, to route catch-up messages.
    pub id: u64,
    pub route: Arc<ActiveRoute>,
    sink: usize,
    pub checkpoint: Arc<LaneCheckpoint>,
    /// Just past the last line queued or filtered; never past a line held in a joiner.
    pub pos: Cursor,
    joiners: Option<[Joining; 2]>,
    /// Lines were filtered out since the last entry queued: a position entry is owed.
    owed: bool,
    /// Lines consumed that `pos` does not cover yet (held in joiners).
    held: u64,
    mode: Mode,
    max_bytes: usize,
    /// Where detached lanes spill what they miss; `None`: they do not.
    spill_budget: Option<Arc<SpillBudget>>,
}

/// What a line did to a lane.
pub enum Outcome {
    Taken,
    /// The lane detached on this line.
    Detached,
}

impl Lane {
    pub fn new(
        id: u64,
        route: Arc<ActiveRoute>,
        sink: usize,
        checkpoint: Arc<LaneCheckpoint>,
        pos: Cursor,
        max_bytes: usize,
        spill_budget: Option<Arc<SpillBudget>>,
    ) -> Self {
        let mut lane = Lane {
            id,
            route,
            sink,
            checkpoint,
            pos,
            joiners: None,
            owed: false,
            held: 0,
            mode: Mode::Live(None),
            max_bytes,
            spill_budget,
        };
        lane.reset_joiners();
        lane
    }

    pub fn sink(&self) -> &SinkHandle {
        &self.route.sinks[self.sink]
    }

    pub fn sink_name(&self) -> &str {
        &self.sink().name
    }

    pub fn is_detached(&self) -> bool {
        matches!(self.mode, Mode::Detached(_))
    }

    pub fn detached_mut(&mut self) -> Option<&mut Detached> {
        match &mut self.mode {
            Mode::Detached(d) => Some(d.as_mut()),
            Mode::Live(_) => None,
        }
    }

    fn reset_joiners(&mut self) {
        let max_bytes = self.max_bytes;
        self.joiners = self.route.matcher.document.multiline.as_ref().map(|m| {
            let joining = || Joining {
                joiner: Joiner::new(
                    m.max_lines,
                    max_bytes,
                    Duration::from_millis(m.timeout_ms.into()),
                ),
                last: Cursor::default(),
            };
            [joining(), joining()]
        });
    }

    /// Start live although the head is behind the lane's position (on some stream): the
    /// head's lines up to that position are ones the lane's sink already has, and are
    /// skipped. A lane resumed from a checkpoint ahead of the head (a withdrawn route
    /// back after an agent restart, an edit after a catch-up ran ahead) would otherwise
    /// send them again.
    pub fn resume_ahead(&mut self) {
        self.mode = Mode::Live(Some(Skip {
            at: self.pos,
            passed: [false; 2],
        }));
    }

    /// Start detached behind `head`, where the head starts: lines up to it are not
    /// read by the head, so none of them counts as missed.
    pub fn start_detached(&mut self, head: Cursor) {
        self.held = 0;
        self.detach(head, None);
    }

    /// Fall behind: lines past `counted` on each stream are counted as missed until
    /// the catch-up reads them again. The lines held (consumed past the position) are
    /// missed already; `failed` is the line that did not fit, if one did not.
    fn detach(&mut self, counted: Cursor, failed: Option<&LogLine>) {
        // Per stream, the furthest line counted in `missed` now: the head must not
        // count these again when it reads them (a catch-up may have read them ahead).
        let mut missed_upto = counted;
        if self.held > 0 {
            for s in [StreamName::Stdout, StreamName::Stderr] {
                let held = self.joiners.as_ref().map(|j| *j[index(s)].last.stream(s));
                let upto = missed_upto.stream_mut(s);
                if let Some(h) = held.filter(|h| later(h, upto)) {
                    *upto = h;
                }
            }
            if let Some(line) = failed {
                let s = line.stream;
                if later(line.cursor.stream(s), missed_upto.stream(s)) {
                    *missed_upto.stream_mut(s) = *line.cursor.stream(s);
                }
            }
        }
        self.reset_joiners();
        self.owed = false;
        let missed = std::mem::take(&mut self.held);
        let gauge = self
            .route
            .sinks
            .get(self.sink)
            .map(|s| s.detached.clone())
            .expect("lane sink index is valid");
        gauge.inc();
        self.mode = Mode::Detached(Box::new(Detached {
            missed,
            missed_upto,
            recovered: 0,
            counted,
            floor: counted,
            unsettled: Vec::new(),
            reached: self.pos,
            catchup: None,
            spill: None,
            gauge,
        }));
    }

    /// Keep a line the head read while the lane is detached in its spill; `before` is
    /// the head's position before the line (where a new spill is anchored).
    fn spill(&mut self, line: &LogLine, before: &Cursor) {
        let Mode::Detached(d) = &mut self.mode else {
            return;
        };
        let Some(budget) = &self.spill_budget else {
            return;
        };
        d.spill
            .get_or_insert_with(|| Box::new(Spill::create(budget, *before)))
            .push(line);
    }

    /// The lane's spill holds every line after its position (and some): a catch-up can
    /// start with it, and needs Docker only past its end.
    pub fn spill_covers_rest(&self) -> bool {
        match &self.mode {
            Mode::Detached(d) => d.spill.as_ref().is_some_and(|s| s.covers(&self.pos)),
            Mode::Live(_) => false,
        }
    }

    /// What the spill holds now, for a catch-up from the lane's position.
    pub fn spill_snapshot(&mut self) -> Option<SpillSnapshot> {
        let pos = self.pos;
        match &mut self.mode {
            Mode::Detached(d) => d.spill.as_mut().filter(|s| s.covers(&pos))?.snapshot(),
            Mode::Live(_) => None,
        }
    }

    /// A line of the shared head reader; `before` is the head's position before it.
    pub fn head_line(
        &mut self,
        line: &LogLine,
        before: &Cursor,
        info: &Arc<ContainerInfo>,
        shared: &mut Option<Arc<Record>>,
        now: Instant,
    ) -> Outcome {
        match &mut self.mode {
            Mode::Detached(d) => {
                // Not missed if a catch-up already took it (catch-ups can run ahead), nor
                // twice when dockerd's follow sends a line again (it does when a
                // json-file log rotates under it).
                let s = line.stream;
                let own = line.cursor.stream(s);
                if later(own, d.counted.stream(s)) && later(own, d.missed_upto.stream(s)) {
                    d.missed += 1;
                    *d.missed_upto.stream_mut(s) = *own;
                }
                self.spill(line, before);
                return Outcome::Taken;
            }
            Mode::Live(skip) => {
                if let Some(s) = skip {
                    if s.skip(line) {
                        return Outcome::Taken;
                    }
                    if s.passed == [true; 2] {
                        *skip = None;
                    }
                }
            }
        }
        match self.take(line, info, shared, now) {
            Ok(()) => Outcome::Taken,
            Err(Full) => {
                self.detach(self.pos, Some(line));
                self.spill(line, before);
                Outcome::Detached
            }
        }
    }

    /// A line of this lane's own catch-up stream. `Err` when the queue filled up: the
    /// catch-up must stop; it starts again from [`Lane::pos`] later.
    pub fn catchup_line(
        &mut self,
        line: &LogLine,
        info: &Arc<ContainerInfo>,
        head: &Cursor,
        now: Instant,
    ) -> Result<(), Full> {
        let Mode::Detached(d) = &mut self.mode else {
            return Ok(());
        };
        let s = line.stream;
        let own = line.cursor.stream(s);
        if later(own, d.counted.stream(s)) {
            // Recovered: a line counted in `missed` (read by the head while the lane
            // was detached, or held by the lane when it detached).
            let recovered = !later(own, d.missed_upto.stream(s));
            if recovered {
                d.recovered += 1;
            }
            d.unsettled.push((s, *own, recovered));
            *d.counted.stream_mut(s) = *own;
        }
        d.reached = furthest(d.reached, &line.cursor);
        let result = self.take(line, info, &mut None, now);
        if result.is_err() {
            self.stop_catchup(head);
        } else {
            let pos = self.pos;
            if let Mode::Detached(d) = &mut self.mode {
                d.unsettled.retain(|(s, c, _)| later(c, pos.stream(*s)));
            }
        }
        result
    }

    /// Stop the running catch-up (or forget one that ended without reaching the end);
    /// the next one starts again from [`Lane::pos`]: what it had read past the position
    /// is read again — or, if Docker rotated it away meanwhile, counted as missed.
    /// `head` is where the shared reader stands.
    pub fn stop_catchup(&mut self, head: &Cursor) {
        let pos = self.pos;
        if let Mode::Detached(d) = &mut self.mode {
            if let Some(c) = d.catchup.take() {
                c.stop.cancel();
            }
            (d.missed, d.recovered) = d.without_unsettled(head);
            for (s, c, _) in std::mem::take(&mut d.unsettled) {
                if !later(&c, head.stream(s)) && later(&c, d.missed_upto.stream(s)) {
                    *d.missed_upto.stream_mut(s) = c;
                }
            }
            for s in [StreamName::Stdout, StreamName::Stderr] {
                let back = if later(pos.stream(s), d.floor.stream(s)) {
                    *pos.stream(s)
                } else {
                    *d.floor.stream(s)
                };
                if later(d.counted.stream(s), &back) {
                    *d.counted.stream_mut(s) = back;
                }
            }
            d.reached = pos;
            self.reset_joiners();
            self.owed = false;
            self.held = 0;
        }
    }

    /// A catch-up is about to start from [`Lane::pos`].
    pub fn catchup_started(&mut self, catchup: CatchUp) {
        let pos = self.pos;
        if let Mode::Detached(d) = &mut self.mode {
            d.reached = pos;
            d.catchup = Some(catchup);
        }
    }

    /// Rejoin the head when the catch-up has reached it. Returns the lines lost to
    /// rotation while detached.
    pub fn try_rejoin(&mut self, head: &Cursor) -> Option<u64> {
        let Mode::Detached(d) = &self.mode else {
            return None;
        };
        if d.catchup.is_none() || !reached(&d.reached, head) {
            return None;
        }
        let lost = d.missed.saturating_sub(d.recovered);
        let at = d.reached;
        self.mode = Mode::Live(Some(Skip {
            at,
            passed: [false; 2],
        }));
        Some(lost)
    }

    /// The catch-up read the log to its end (the container stopped): the lane is live
    /// again, skipping what the head still brings up to where the catch-up got.
    pub fn end_catchup(&mut self) {
        if let Mode::Detached(d) = &self.mode {
            let at = d.reached;
            self.mode = Mode::Live(Some(Skip {
                at,
                passed: [false; 2],
            }));
        }
    }

    /// Lines the lane consumed past its position, its sink not having them: held in its
    /// joiners, or (detached) missed and not recovered. With the lines queued and not
    /// accepted ([`LaneCheckpoint::unaccepted`]), what its sink loses if the lane is
    /// dropped for good.
    /// `head` is where the shared reader stands.
    pub fn behind(&self, head: &Cursor) -> u64 {
        match &self.mode {
            Mode::Detached(d) => {
                let (missed, recovered) = d.without_unsettled(head);
                missed.saturating_sub(recovered)
            }
            Mode::Live(_) => self.held,
        }
    }

    /// The lane's log has ended (the container stopped and was read to its end, or was
    /// removed): lines missed and never recovered are lost. Returns their number.
    pub fn lost_at_end(&self) -> u64 {
        match &self.mode {
            Mode::Detached(d) => {
                tracing::debug!(
                    missed = d.missed,
                    recovered = d.recovered,
                    "lane ends behind"
                );
                d.missed.saturating_sub(d.recovered)
            }
            Mode::Live(_) => 0,
        }
    }

    /// Route filter, joiner, message filter, queue.
    fn take(
        &mut self,
        line: &LogLine,
        info: &Arc<ContainerInfo>,
        shared: &mut Option<Arc<Record>>,
        now: Instant,
    ) -> Result<(), Full> {
        let route = self.route.clone();
        let matcher = &route.matcher;
        let s = line.stream;
        self.held += 1;
        if !matcher.takes_stream(s) {
            route.filtered(Filtered::Stream).inc();
            self.pos = self.position_after(s, &line.cursor);
            self.owed = true;
            self.held -= 1;
            return Ok(());
        }
        let Some(joiners) = &mut self.joiners else {
            let record = shared
                .get_or_insert_with(|| {
                    Arc::new(Record {
                        container: info.clone(),
                        stream: s,
                        timestamp: line.timestamp,
                        message: line.message.clone(),
                        truncated: line.truncated,
                    })
                })
                .clone();
            return self.offer(record, s, &line.cursor, 1);
        };
        let start = matcher
            .multiline_start
            .as_ref()
            .expect("multiline routes have a start");
        let j = &mut joiners[index(s)];
        let ended_at = j.last;
        j.last = line.cursor;
        match j
            .joiner
            .push(start, line.timestamp, &line.message, line.truncated, now)
        {
            Some(done) => {
                let lines = done.lines.into();
                self.offer(Arc::new(joined(info, s, done)), s, &ended_at, lines)
            }
            None => Ok(()),
        }
    }

    /// Queue a finished record of `lines` lines, whose last line ends at `end`, unless
    /// filtered.
    fn offer(
        &mut self,
        record: Arc<Record>,
        s: StreamName,
        end: &Cursor,
        lines: u64,
    ) -> Result<(), Full> {
        if let Some(why) = self.route.matcher.filter_message(&record.message) {
            self.route.filtered(why).inc();
            self.pos = self.position_after(s, end);
            self.owed = true;
            self.held = self.held.saturating_sub(lines);
            return Ok(());
        }
        let cursor = self.position_after(s, end);
        let entry = Queued::Record(
            record,
            Position {
                lane: self.checkpoint.clone(),
                cursor,
                lines,
            },
        );
        match self.sink().queue.try_send(entry) {
            Ok(()) => {
                self.sink().routed.inc();
                self.checkpoint.queued_lines(lines);
                self.pos = cursor;
                self.owed = false;
                self.held = self.held.saturating_sub(lines);
                Ok(())
            }
            // Full by entries or by bytes, or closed (the route is being replaced).
            Err(_) => Err(Full),
        }
    }

    /// The lane's position once everything up to `end` on stream `s` is dealt with: the
    /// other stream moves up too unless its joiner still holds lines.
    fn position_after(&self, s: StreamName, end: &Cursor) -> Cursor {
        let mut p = self.pos;
        *p.stream_mut(s) = *end.stream(s);
        let o = other(s);
        let held = self
            .joiners
            .as_ref()
            .is_some_and(|j| j[index(o)].joiner.deadline().is_some());
        if !held && later(end.stream(o), p.stream(o)) {
            *p.stream_mut(o) = *end.stream(o);
        }
        p
    }

    /// After a batch: queue the position owed for filtered lines, if there is room.
    pub fn settle(&mut self) {
        if !self.owed {
            return;
        }
        let entry = Queued::Position(Position {
            lane: self.checkpoint.clone(),
            cursor: self.pos,
            lines: 0,
        });
        if self.sink().queue.try_send(entry).is_ok() {
            self.owed = false;
        }
    }

    /// When a joiner must emit its record if no line comes first.
    pub fn deadline(&self) -> Option<Instant> {
        if self.is_detached() {
            return None;
        }
        self.joiners
            .iter()
            .flatten()
            .filter_map(|j| j.joiner.deadline())
            .min()
    }

    /// Emit what the joiners hold when due (`all`: everything, e.g. at the log's end).
    pub fn flush(&mut self, info: &Arc<ContainerInfo>, now: Instant, all: bool) {
        if self.is_detached() {
            return;
        }
        for s in [StreamName::Stdout, StreamName::Stderr] {
            let Some(joiners) = &mut self.joiners else {
                return;
            };
            let j = &mut joiners[index(s)];
            if !all && j.joiner.deadline().is_none_or(|d| d > now) {
                continue;
            }
            let Some(done) = j.joiner.flush() else {
                continue;
            };
            let end = j.last;
            let lines = done.lines.into();
            if self
                .offer(Arc::new(joined(info, s, done)), s, &end, lines)
                .is_err()
            {
                self.detach(self.pos, None);
                return;
            }
        }
    }
}

fn joined(info: &Arc<ContainerInfo>, stream: StreamName, j: Joined) -> Record {
    Record {
        container: info.clone(),
        stream,
        timestamp: j.timestamp,
        message: j.message,
        truncated: j.truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::checkpoint::Checkpoints;
    use crate::metrics::AgentMetrics;
    use crate::record::Timestamp;
    use crate::route::matcher::RouteMatcher;
    use tokio::sync::mpsc;

    fn sc(secs: i64, seen: u32) -> StreamCursor {
        StreamCursor {
            timestamp: Timestamp { secs, nanos: 0 },
            seen,
        }
    }

    fn line(stream: StreamName, stdout: StreamCursor, stderr: StreamCursor) -> LogLine {
        LogLine {
            stream,
            timestamp: Timestamp::default(),
            message: String::new(),
            truncated: false,
            cursor: Cursor { stdout, stderr },
        }
    }

    #[test]
    fn positions_order_by_time_then_frames_seen() {
        assert!(later(&sc(2, 0), &sc(1, 9)));
        assert!(later(&sc(1, 2), &sc(1, 1)));
        assert!(!later(&sc(1, 1), &sc(1, 1)));
        let a = Cursor {
            stdout: sc(5, 1),
            stderr: sc(1, 0),
        };
        let b = Cursor {
            stdout: sc(4, 0),
            stderr: sc(3, 2),
        };
        let f = furthest(a, &b);
        assert_eq!((f.stdout, f.stderr), (sc(5, 1), sc(3, 2)));
        assert!(reached(&f, &a) && reached(&f, &b));
        assert!(!reached(&a, &b), "behind on stderr");
    }

    #[test]
    fn after_a_rejoin_lines_already_taken_are_skipped_per_stream() {
        let mut skip = Skip {
            at: Cursor {
                stdout: sc(10, 2),
                stderr: sc(8, 1),
            },
            passed: [false; 2],
        };
        let out = StreamName::Stdout;
        let err = StreamName::Stderr;
        assert!(skip.skip(&line(out, sc(10, 1), sc(8, 1))));
        assert!(skip.skip(&line(out, sc(10, 2), sc(8, 1))));
        assert!(
            !skip.skip(&line(out, sc(10, 3), sc(8, 1))),
            "first new stdout line"
        );
        // Once past, every later stdout line is new, even one stamped earlier (a clock
        // step), while stderr is still filtered on its own.
        assert!(!skip.skip(&line(out, sc(9, 1), sc(8, 1))));
        assert!(skip.skip(&line(err, sc(10, 3), sc(8, 1))));
        assert!(!skip.skip(&line(err, sc(10, 3), sc(11, 1))));
        assert_eq!(skip.passed, [true; 2]);
    }

    const ROUTE: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: r, namespace: ns}
spec:
  sinks:
  - name: out
    stdout: {}
"#;

    const MULTILINE_ROUTE: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: r, namespace: ns}
spec:
  multiline: {start: '^\S'}
  sinks:
  - name: out
    stdout: {}
"#;

    /// A lane of a one-sink route whose queue (of `capacity`) the test drains itself.
    fn lane(capacity: usize) -> (Lane, mpsc::Receiver<Queued>, tempfile::TempDir) {
        lane_of(ROUTE, capacity)
    }

    fn lane_of(yaml: &str, capacity: usize) -> (Lane, mpsc::Receiver<Queued>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("route.yaml");
        std::fs::write(&file, yaml).expect("write route");
        let inputs = crate::agent::routes::load_file(&file, "logroute-system", None)
            .expect("route compiles");
        let document = inputs.into_values().next().expect("one route").document;
        let metrics = AgentMetrics::new(&prometheus::Registry::new());
        let (queue, rx) = crate::sink::worker::SinkQueue::channel(capacity, usize::MAX);
        let sink = SinkHandle {
            name: "out".into(),
            queue,
            routed: metrics.records_routed.with_label_values(&["ns/r", "out"]),
            detached: metrics.lanes_detached.with_label_values(&["ns/r", "out"]),
            since: None,
        };
        let matcher = RouteMatcher::new(document).expect("matcher");
        let route = Arc::new(ActiveRoute::new("ns/r", matcher, vec![sink], &metrics));
        let store = Checkpoints::open(&dir.path().join("state"))
            .expect("checkpoints")
            .checkpoints;
        let (checkpoint, pos) = store
            .lane("c1", "ns/r", "out", Cursor::default())
            .expect("slot");
        (
            Lane::new(1, route, 0, checkpoint, pos, 1 << 20, None),
            rx,
            dir,
        )
    }

    /// Stdout line `n` (stamped second `n`).
    fn nth(n: i64) -> LogLine {
        let mut l = line(StreamName::Stdout, sc(n, 1), sc(0, 0));
        l.message = format!("line {n}");
        l
    }

    fn drain(rx: &mut mpsc::Receiver<Queued>) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        while let Ok(entry) = rx.try_recv() {
            if let Queued::Record(r, p) = entry {
                out.push((r.message.clone(), p.cursor.stdout.timestamp.secs));
            }
        }
        out
    }

    #[test]
    fn a_full_queue_detaches_the_lane_which_catches_up_counts_rotation_and_rejoins() {
        let (mut lane, mut rx, _dir) = lane(2);
        let info = Arc::new(ContainerInfo::default());
        let now = Instant::now();
        let mut head = Cursor::default();
        let mut feed_head = |lane: &mut Lane, n: i64| {
            let l = nth(n);
            head = furthest(head, &l.cursor);
            lane.head_line(&l, &Cursor::default(), &info, &mut None, now)
        };
        assert!(matches!(feed_head(&mut lane, 1), Outcome::Taken));
        assert!(matches!(feed_head(&mut lane, 2), Outcome::Taken));
        assert!(matches!(feed_head(&mut lane, 3), Outcome::Detached));
        for n in 4..=6 {
            feed_head(&mut lane, n);
        }
        assert_eq!(
            drain(&mut rx),
            vec![("line 1".into(), 1), ("line 2".into(), 2)],
            "each record carries the position just past it"
        );
        assert_eq!(
            lane.pos.stdout,
            sc(2, 1),
            "the position stops at the last queued line"
        );

        // Catching up from line 2: lines 3 and 4 were rotated away meanwhile.
        let head = nth(6).cursor;
        lane.catchup_started(CatchUp {
            generation: 1,
            stop: CancellationToken::new(),
        });
        for n in [5, 6] {
            assert!(lane.catchup_line(&nth(n), &info, &head, now).is_ok());
        }
        assert_eq!(lane.try_rejoin(&head), Some(2), "lines 3 and 4 are lost");
        assert_eq!(
            drain(&mut rx),
            vec![("line 5".into(), 5), ("line 6".into(), 6)]
        );
        // Back on the head: a line it already took is skipped, the next one is new.
        lane.head_line(&nth(6), &Cursor::default(), &info, &mut None, now);
        lane.head_line(&nth(7), &Cursor::default(), &info, &mut None, now);
        assert_eq!(drain(&mut rx), vec![("line 7".into(), 7)]);
        assert!(!lane.is_detached());
    }

    #[test]
    fn a_catch_up_that_fills_the_queue_again_starts_over_from_the_position() {
        let (mut lane, mut rx, _dir) = lane(1);
        let info = Arc::new(ContainerInfo::default());
        let now = Instant::now();
        lane.head_line(&nth(1), &Cursor::default(), &info, &mut None, now);
        lane.head_line(&nth(2), &Cursor::default(), &info, &mut None, now); // detaches
        assert_eq!(drain(&mut rx).len(), 1);
        let head = nth(4).cursor;
        lane.head_line(&nth(3), &Cursor::default(), &info, &mut None, now);
        lane.head_line(&nth(4), &Cursor::default(), &info, &mut None, now);
        lane.catchup_started(CatchUp {
            generation: 1,
            stop: CancellationToken::new(),
        });
        assert!(lane.catchup_line(&nth(2), &info, &head, now).is_ok());
        assert!(
            lane.catchup_line(&nth(3), &info, &head, now).is_err(),
            "queue full"
        );
        assert_eq!(lane.pos.stdout, sc(2, 1));
        assert!(lane.detached_mut().is_some_and(|d| d.catchup.is_none()));
        assert_eq!(drain(&mut rx), vec![("line 2".into(), 2)]);
        // The next catch-up reads line 3 again; nothing is lost, nothing counted twice.
        lane.catchup_started(CatchUp {
            generation: 2,
            stop: CancellationToken::new(),
        });
        assert!(lane.catchup_line(&nth(3), &info, &head, now).is_ok());
        assert_eq!(drain(&mut rx), vec![("line 3".into(), 3)]);
        assert!(lane.catchup_line(&nth(4), &info, &head, now).is_ok());
        assert_eq!(lane.try_rejoin(&head), Some(0));
        assert_eq!(drain(&mut rx), vec![("line 4".into(), 4)]);
    }

    #[test]
    fn the_position_never_passes_lines_held_in_a_joiner() {
        let (mut lane, mut rx, _dir) = lane_of(MULTILINE_ROUTE, 8);
        let info = Arc::new(ContainerInfo::default());
        let now = Instant::now();
        let text = |s, out, err, m: &str| {
            let mut l = line(s, out, err);
            l.message = m.into();
            l
        };
        let (o, e) = (StreamName::Stdout, StreamName::Stderr);
        // stdout "a" stays held (its record may go on); on stderr, "E2" completes "e1".
        for l in [
            text(o, sc(1, 1), sc(0, 0), "a"),
            text(e, sc(1, 1), sc(2, 1), "e1"),
            text(e, sc(1, 1), sc(3, 1), "E2"),
        ] {
            lane.head_line(&l, &Cursor::default(), &info, &mut None, now);
        }
        let Ok(Queued::Record(r, p)) = rx.try_recv() else {
            panic!("e1 is queued");
        };
        assert_eq!(r.message, "e1");
        assert_eq!(
            p.cursor,
            Cursor {
                stdout: sc(0, 0),
                stderr: sc(2, 1)
            },
            "past e1 on stderr, but not past the held stdout line"
        );
        assert!(rx.try_recv().is_err(), "a and E2 are still held");
    }
}
