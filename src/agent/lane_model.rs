//! A model-based test of the lane engine.
//!
//! The real [`Lane`], [`Checkpoints`] and [`LineAssembler`] are driven the way the
//! container task and the sink workers drive them, against a simulated Docker log (both
//! streams, equal timestamps, slight cross-stream inversions, rotation) and simulated
//! sinks whose bounded queues are drained in steps (a stall is a sink that is not
//! drained). Random sequences interleave writes, head reads, catch-ups (which re-read the
//! log from a lane's position and may find its oldest lines rotated away), route edits,
//! deletes and re-adds, grace-period expiry, agent restarts (lanes dropped, the
//! checkpoint file reopened from disk) and the container's end.
//!
//! The property, per sink: the lines it received are the log's lines it should get, in
//! order, each once; a line it should have got and did not is either rotated away and
//! counted (`rotated`), or fell in a window where its route was withdrawn past the grace
//! period and is covered by the `withdrawn` count. Never a silent gap.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::checkpoint::{Checkpoints, LaneCheckpoint};
use crate::agent::docker::{Cursor, Frame, LineAssembler, LogLine, ResumeFilter};
use crate::agent::lane::{CatchUp, Lane, furthest, reached};
use crate::agent::routes::{ActiveRoute, SinkHandle};
use crate::api::StreamName;
use crate::metrics::AgentMetrics;
use crate::record::{ContainerInfo, Timestamp};
use crate::route::document::CompiledRoute;
use crate::route::matcher::RouteMatcher;
use crate::sink::worker::{Queued, SinkQueue};

const CONTAINER: &str = "c1";
const MAX_LINE_BYTES: usize = 1 << 20;

/// What a route takes, which decides the lines its sinks should get.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Every line, one record each.
    All,
    /// Stdout only, and not lines starting with `x` (filtered lines owe positions).
    StdoutNoX,
    /// Every line, joined: a line starting with a space continues the record before it.
    Multiline,
}

struct Spec {
    key: &'static str,
    sinks: &'static [&'static str],
    kind: Kind,
    yaml: &'static str,
}

const SPECS: [Spec; 3] = [
    Spec {
        key: "ns/all",
        sinks: &["one", "two"],
        kind: Kind::All,
        yaml: "metadata: {name: all, namespace: ns}
spec:
  sinks:
  - {name: one, stdout: {}}
  - {name: two, stdout: {}}
",
    },
    Spec {
        key: "ns/some",
        sinks: &["one"],
        kind: Kind::StdoutNoX,
        yaml: "metadata: {name: some, namespace: ns}
spec:
  selector: {streams: [stdout]}
  filter: {exclude: '^x'}
  sinks:
  - {name: one, stdout: {}}
",
    },
    Spec {
        key: "ns/joined",
        sinks: &["one"],
        kind: Kind::Multiline,
        yaml: "metadata: {name: joined, namespace: ns}
spec:
  multiline: {start: '^\\S', maxLines: 3, timeoutMs: 1000}
  sinks:
  - {name: one, stdout: {}}
",
    },
];

/// The compiled documents of [`SPECS`], compiled once.
fn documents() -> &'static [CompiledRoute] {
    static DOCS: OnceLock<Vec<CompiledRoute>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        SPECS
            .iter()
            .map(|s| {
                let file = dir.path().join("route.yaml");
                let yaml = format!(
                    "apiVersion: logroute.dev/v1alpha1\nkind: LogRoute\n{}",
                    s.yaml
                );
                std::fs::write(&file, yaml).expect("write route");
                crate::agent::routes::load_file(&file, "logroute-system", None)
                    .expect("route compiles")
                    .into_values()
                    .next()
                    .expect("one route")
                    .document
            })
            .collect()
    })
}

/// One line of the simulated json-file log.
struct Entry {
    stream: StreamName,
    ts: Timestamp,
    text: String,
}

/// The container's log as Docker holds it.
struct Log {
    entries: Vec<Entry>,
    /// Entries before this index were rotated away.
    first: usize,
    stopped: bool,
    clock: Timestamp,
    last: [Timestamp; 2],
}

/// A line to write: stderr?, clock step, stamped slightly early?, text kind.
type Write = (bool, u8, bool, u8);

impl Log {
    fn write(&mut self, lines: &[Write]) {
        if self.stopped {
            return;
        }
        for &(stderr, step, early, text) in lines {
            let nanos = match step % 4 {
                0 => 0,
                1 => 1_000,
                2 => 1_000_000_000,
                _ => 3_000_000_000,
            };
            self.clock = add_nanos(self.clock, nanos);
            let (stream, i) = if stderr {
                (StreamName::Stderr, 1)
            } else {
                (StreamName::Stdout, 0)
            };
            // dockerd stamps a line when it reads it and files it a moment later, under
            // a lock both streams share: a line may trail the other stream by microseconds.
            let ts = if early {
                add_nanos(self.clock, -500)
            } else {
                self.clock
            };
            let ts = ts.max(self.last[i]);
            self.last[i] = ts;
            let id = self.entries.len();
            let text = match text % 3 {
                0 => format!("s{id}"),
                1 => format!(" c{id}"),
                _ => format!("x{id}"),
            };
            self.entries.push(Entry { stream, ts, text });
        }
    }
}

fn add_nanos(t: Timestamp, nanos: i64) -> Timestamp {
    let total = i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos) + i128::from(nanos);
    Timestamp {
        secs: (total.div_euclid(1_000_000_000)) as i64,
        nanos: total.rem_euclid(1_000_000_000) as u32,
    }
}

/// The line id a message part stands for (`s12`, ` c12`, `x12`).
fn line_id(part: &str) -> usize {
    part.trim_start()[1..].parse().expect("a model line")
}

/// A simulated Docker logs stream from a cursor: `since` in whole seconds, the rest
/// skipped by the real line assembler. Lines rotated away before it got to them are
/// gone for it.
struct Reader {
    assembler: LineAssembler,
    since: Timestamp,
    next: usize,
}

impl Reader {
    fn new(from: Cursor, log: &Log) -> Self {
        Reader {
            assembler: LineAssembler::new(from, MAX_LINE_BYTES, false),
            since: Timestamp {
                secs: from.since().secs,
                nanos: 0,
            },
            next: log.first,
        }
    }

    /// Up to `n` more entries of the log, as lines.
    fn read(&mut self, log: &Log, n: usize) -> Vec<LogLine> {
        self.next = self.next.max(log.first);
        let end = self.next.saturating_add(n).min(log.entries.len());
        let mut out = Vec::new();
        while self.next < end {
            let e = &log.entries[self.next];
            self.next += 1;
            if e.ts < self.since {
                continue;
            }
            let stamp =
                e.ts.to_datetime()
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            let raw = format!("{stamp} {}\n", e.text);
            let frame = match e.stream {
                StreamName::Stdout => Frame::Stdout(raw.as_bytes()),
                StreamName::Stderr => Frame::Stderr(raw.as_bytes()),
            };
            self.assembler.push(frame, &mut out);
        }
        out
    }

    fn at_end(&self, log: &Log) -> bool {
        self.next.max(log.first) >= log.entries.len()
    }
}

/// A lane started without a checkpoint.
#[derive(Debug)]
struct Start {
    /// Its position: lines after it may be delivered.
    at: Cursor,
    /// The first line written after it started.
    from: usize,
}

/// What one sink received and what was counted against it.
#[derive(Default, Debug)]
struct Received {
    /// Line ids, in the order received; a joined record contributes its lines in order.
    got: Vec<usize>,
    /// Lines counted as dropped with reason `rotated`.
    rotated: u64,
    /// Lines counted as not resumed with reason `withdrawn`.
    withdrawn: u64,
    /// Each time the grace period of its parked lane ended: its checkpoint. Until its
    /// next start, the lines after it are not owed (those read while it was parked are
    /// counted as `withdrawn`).
    expiries: Vec<Cursor>,
    /// Lines the head read while a lane of this sink was parked, in grace periods that
    /// ran out.
    parked_read: BTreeSet<usize>,
    /// Lines the head had read past a lane's checkpoint when the lane was parked, in
    /// grace periods that ran out: its sink had not accepted them.
    parked_owed: BTreeSet<usize>,
    /// The same for lanes parked when the agent restarted (see [`Tolerate::returned`]).
    restart_owed: BTreeSet<usize>,
    /// Each time a lane of this sink started without a checkpoint.
    starts: Vec<Start>,
    /// Lines a lane had to read again from its checkpoint after an edit, a re-add or a
    /// restart, because the head had read them already (see [`Tolerate::resumed`]).
    resumed: BTreeSet<usize>,
    /// Lines between the head and a lane's checkpoint when the lane started over ahead
    /// of the head (see [`Tolerate::ahead`]).
    ahead: BTreeSet<usize>,
    /// Lines a stopped catch-up had read past the lane's position, which the next
    /// catch-up must read again (see [`Tolerate::abandoned`]).
    abandoned: BTreeSet<usize>,
}

struct RouteState {
    active: Option<Arc<ActiveRoute>>,
    /// The sink workers' ends of the active version's queues.
    queues: Vec<mpsc::Receiver<Queued>>,
    received: Vec<Received>,
}

/// A lane whose route went away, waiting for it to come back.
struct Parked {
    checkpoint: Arc<LaneCheckpoint>,
    read: u64,
    /// Ids of the lines counted in `read`.
    ids: Vec<usize>,
    /// `Lane::behind` when parked (`Following::rematch`).
    behind: u64,
    /// Lines the head had read past the lane's checkpoint when it was parked: its sink
    /// had not accepted them.
    owed: BTreeSet<usize>,
}

/// A catch-up stream of a detached lane.
struct CatchReader {
    lane: u64,
    generation: u64,
    reader: Reader,
}

struct Model {
    dir: tempfile::TempDir,
    metrics: AgentMetrics,
    store: Arc<Checkpoints>,
    capacity: usize,
    log: Log,
    head_reader: Reader,
    head: Cursor,
    head_done: bool,
    /// Gaps and repeats the property tolerates.
    tolerate: Tolerate,
    /// The container task ended (its log read, no lane left behind, none parked): route
    /// changes no longer reach it.
    ended: bool,
    /// `Following::finished`.
    finished: Vec<(Arc<ActiveRoute>, String)>,
    lanes: Vec<Lane>,
    catchups: Vec<CatchReader>,
    parked: Vec<Parked>,
    routes: Vec<RouteState>,
    next_lane: u64,
    generation: u64,
    now: Instant,
    info: Arc<ContainerInfo>,
}

#[derive(Clone, Debug)]
enum Op {
    Write(Vec<Write>),
    HeadRead(usize),
    Drain { route: usize, sink: usize, n: usize },
    StartCatchups,
    CatchupStep { which: usize, n: usize },
    PauseCatchup(usize),
    Rotate(usize),
    Tick(u64),
    Edit { route: usize, deliver: usize },
    Delete { route: usize, deliver: usize },
    Readd(usize),
    Expire,
    Restart { deliver: usize },
    Stop,
}

impl Model {
    fn new(capacity: usize, present: [bool; 3], tolerate: Tolerate) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Checkpoints::open(dir.path())
            .expect("checkpoints")
            .checkpoints;
        let log = Log {
            entries: Vec::new(),
            first: 0,
            stopped: false,
            clock: Timestamp {
                secs: 1_700_000_000,
                nanos: 0,
            },
            last: [Timestamp::default(); 2],
        };
        let mut m = Model {
            head_reader: Reader::new(Cursor::default(), &log),
            dir,
            metrics: AgentMetrics::new(&prometheus::Registry::new()),
            store,
            capacity,
            log,
            head: Cursor::default(),
            head_done: false,
            ended: false,
            finished: Vec::new(),
            tolerate,
            lanes: Vec::new(),
            catchups: Vec::new(),
            parked: Vec::new(),
            routes: SPECS
                .iter()
                .map(|s| RouteState {
                    active: None,
                    queues: Vec::new(),
                    received: s.sinks.iter().map(|_| Received::default()).collect(),
                })
                .collect(),
            next_lane: 1,
            generation: 0,
            now: Instant::now(),
            info: Arc::new(ContainerInfo::default()),
        };
        for (r, on) in present.into_iter().enumerate() {
            if on {
                m.activate(r);
            }
        }
        m.rematch();
        m
    }

    fn apply(&mut self, op: &Op) {
        let route_change = matches!(op, Op::Edit { .. } | Op::Delete { .. } | Op::Readd(_));
        if route_change && self.head_done && self.tolerate.revived {
            return;
        }
        match op {
            Op::Write(lines) => self.log.write(lines),
            Op::HeadRead(n) => self.head_read(*n),
            Op::Drain { route, sink, n } => {
                let sink = sink % SPECS[*route].sinks.len();
                self.deliver(*route, sink, *n);
            }
            Op::StartCatchups => self.start_catchups(),
            Op::CatchupStep { which, n } => {
                let ids = self.catching_up();
                if let Some(id) = ids.get(which % ids.len().max(1)) {
                    self.catchup_step(*id, *n);
                }
            }
            Op::PauseCatchup(which) => {
                let ids = self.catching_up();
                if let Some(&id) = ids.get(which % ids.len().max(1)) {
                    self.pause(id);
                }
            }
            Op::Rotate(k) => {
                // Only what the head has read: a head that loses lines loses them for
                // every sink, and nothing in the agent could know.
                let mut first = (self.log.first + k).min(self.head_reader.next);
                if self.tolerate.same_stamp {
                    // Never between lines of one stream stamped alike.
                    let e = &self.log.entries;
                    while first > self.log.first
                        && e[first..].iter().any(|r| {
                            e[..first]
                                .iter()
                                .any(|g| g.stream == r.stream && g.ts == r.ts)
                        })
                    {
                        first -= 1;
                    }
                }
                self.log.first = self.log.first.max(first);
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(*ms);
                for lane in &mut self.lanes {
                    lane.flush(&self.info, self.now, false);
                }
            }
            Op::Edit { route, deliver } => {
                if self.routes[*route].active.is_some() {
                    self.retire(*route, *deliver);
                    self.activate(*route);
                    self.rematch();
                }
            }
            Op::Delete { route, deliver } => {
                if self.routes[*route].active.is_some() {
                    self.retire(*route, *deliver);
                    self.rematch();
                }
            }
            Op::Readd(route) => {
                if self.routes[*route].active.is_none() {
                    self.activate(*route);
                    self.rematch();
                }
            }
            Op::Expire => self.expire(),
            Op::Restart { deliver } => self.restart(*deliver),
            Op::Stop => self.log.stopped = true,
        }
        let live: Vec<(u64, u64)> = self
            .lanes
            .iter_mut()
            .filter_map(|l| {
                let id = l.id;
                l.detached_mut()
                    .and_then(|d| d.catchup.as_ref())
                    .map(|c| (id, c.generation))
            })
            .collect();
        self.catchups
            .retain(|c| live.contains(&(c.lane, c.generation)));
        self.ended |= self.head_done && self.lanes.is_empty() && self.parked.is_empty();
    }

    /// A new version of route `r` with fresh queues.
    fn activate(&mut self, r: usize) {
        let spec = &SPECS[r];
        let mut sinks = Vec::new();
        let mut queues = Vec::new();
        for name in spec.sinks {
            let (queue, rx) = SinkQueue::channel(self.capacity, usize::MAX);
            sinks.push(SinkHandle {
                name: (*name).into(),
                queue,
                routed: self
                    .metrics
                    .records_routed
                    .with_label_values(&[spec.key, name]),
                detached: self
                    .metrics
                    .lanes_detached
                    .with_label_values(&[spec.key, name]),
                since: None,
            });
            queues.push(rx);
        }
        let matcher = RouteMatcher::new(documents()[r].clone()).expect("matcher");
        let route = ActiveRoute::new(spec.key, matcher, sinks, &self.metrics);
        self.routes[r].active = Some(Arc::new(route));
        self.routes[r].queues = queues;
    }

    /// Route `r` leaves the table (edited or deleted): its lanes emit what their joiners
    /// hold, its workers deliver the first `deliver` entries of each queue and stop.
    fn retire(&mut self, r: usize, deliver: usize) {
        let Some(route) = self.routes[r].active.take() else {
            return;
        };
        for lane in &mut self.lanes {
            if Arc::ptr_eq(&lane.route, &route) {
                lane.flush(&self.info, self.now, true);
            }
        }
        for sink in 0..SPECS[r].sinks.len() {
            self.deliver(r, sink, deliver);
        }
        self.routes[r].queues.clear();
    }

    /// The sink worker of (`r`, `sink`) takes up to `n` entries; the sink accepts them.
    fn deliver(&mut self, r: usize, sink: usize, n: usize) {
        let state = &mut self.routes[r];
        let Some(rx) = state.queues.get_mut(sink) else {
            return;
        };
        for _ in 0..n {
            let Ok(entry) = rx.try_recv() else {
                return;
            };
            let p = match entry {
                Queued::Record(record, p) => {
                    for part in record.message.split('\n') {
                        let id = line_id(part);
                        let e = &self.log.entries[id];
                        assert_eq!(part, e.text, "a record's text is its lines' text");
                        assert_eq!(record.stream, e.stream, "line {id} on its own stream");
                        state.received[sink].got.push(id);
                    }
                    p
                }
                Queued::Position(p) => p,
            };
            p.lane.advance(p.cursor);
            p.lane.accepted_lines(p.lines);
        }
    }

    fn table(&self) -> Vec<Arc<ActiveRoute>> {
        self.routes
            .iter()
            .filter_map(|r| r.active.clone())
            .collect()
    }

    fn received(&mut self, key: &str, sink: &str) -> &mut Received {
        let r = SPECS
            .iter()
            .position(|s| s.key == key)
            .expect("known route");
        let s = SPECS[r]
            .sinks
            .iter()
            .position(|n| *n == sink)
            .expect("known sink");
        &mut self.routes[r].received[s]
    }

    /// `Following::rematch`: kept lanes stay, edited ones start over from their
    /// checkpoint, new ones start at the head, lanes of routes gone are parked.
    fn rematch(&mut self) {
        if self.ended {
            return;
        }
        let wanted: Vec<(Arc<ActiveRoute>, usize)> = self
            .table()
            .into_iter()
            .flat_map(|r| (0..r.sinks.len()).map(move |i| (r.clone(), i)))
            .collect();
        let mut old = std::mem::take(&mut self.lanes);
        for (route, i) in wanted {
            let name = route.sinks[i].name.clone();
            if let Some(at) = old
                .iter()
                .position(|l| l.route.key == route.key && l.sink_name() == name)
            {
                let lane = old.swap_remove(at);
                if Arc::ptr_eq(&lane.route, &route) {
                    self.lanes.push(lane);
                    continue;
                }
                self.drop_tally(&lane);
            }
            if self
                .finished
                .iter()
                .any(|(r, s)| Arc::ptr_eq(r, &route) && *s == name)
            {
                continue;
            }
            self.parked
                .retain(|p| !(p.checkpoint.route == route.key && p.checkpoint.sink == name));
            let fresh = self.store.get(CONTAINER, &route.key, &name).is_none();
            let (checkpoint, pos) = self
                .store
                .lane(CONTAINER, &route.key, &name, self.head)
                .expect("checkpoint slot");
            if self.head_done && reached(&pos, &self.head) {
                continue; // `Following::rematch`: this sink has all of the ended log
            }
            let (head, from) = (self.head, self.log.entries.len());
            if fresh {
                let rec = self.received(&route.key, &name);
                rec.starts.push(Start { at: head, from });
            } else {
                let behind = self.between(pos, head);
                let ahead = self.between(head, pos);
                let rec = self.received(&route.key, &name);
                rec.resumed.extend(behind);
                rec.ahead.extend(ahead);
            }
            let id = self.next_lane;
            self.next_lane += 1;
            let mut lane = Lane::new(id, route, i, checkpoint, pos, MAX_LINE_BYTES, None);
            if !reached(&pos, &self.head) {
                lane.start_detached(self.head);
            } else if pos != self.head {
                lane.resume_ahead();
            }
            self.lanes.push(lane);
        }
        for lane in old {
            self.drop_tally(&lane);
            let at = self
                .store
                .get(CONTAINER, &lane.route.key, lane.sink_name())
                .unwrap_or_default();
            let read: BTreeSet<usize> = (0..self.head_reader.next).collect();
            let owed = self
                .between(at, self.head)
                .intersection(&read)
                .copied()
                .collect();
            self.parked.push(Parked {
                checkpoint: lane.checkpoint.clone(),
                read: 0,
                ids: Vec::new(),
                behind: lane.behind(&self.head),
                owed,
            });
        }
    }

    /// A detached lane is dropped with what it counted as missed and not recovered: the
    /// lines the head read that its sink did not get may go uncounted (see
    /// [`Tolerate::resumed`]).
    fn drop_tally(&mut self, lane: &Lane) {
        if !lane.is_detached() {
            return;
        }
        let read = self.head_reader.next;
        let (route, sink) = (lane.route.key.clone(), lane.sink_name().to_string());
        let rec = self.received(&route, &sink);
        let got: BTreeSet<usize> = rec.got.iter().copied().collect();
        rec.resumed.extend((0..read).filter(|i| !got.contains(i)));
    }

    /// The grace period of every parked lane ends.
    fn expire(&mut self) {
        for p in std::mem::take(&mut self.parked) {
            let (route, sink) = (p.checkpoint.route.clone(), p.checkpoint.sink.clone());
            let at = self.store.get(CONTAINER, &route, &sink).unwrap_or_default();
            p.checkpoint.release();
            let unsent = p.behind + p.checkpoint.unaccepted();
            let rec = self.received(&route, &sink);
            rec.withdrawn += p.read + unsent;
            rec.parked_read.extend(p.ids);
            rec.parked_owed.extend(p.owed);
            rec.expiries.push(at);
        }
    }

    /// `Following::head_batch`, and the end of the head's stream.
    fn head_read(&mut self, n: usize) {
        if self.head_done {
            return;
        }
        let lines = self.head_reader.read(&self.log, n);
        if lines.is_empty() {
            if self.log.stopped && self.head_reader.at_end(&self.log) {
                self.head_done = true;
                for lane in &mut self.lanes {
                    lane.flush(&self.info, self.now, true);
                }
                for lane in self.lanes.iter().filter(|l| !l.is_detached()) {
                    self.finished
                        .push((lane.route.clone(), lane.sink_name().to_string()));
                }
                self.lanes.retain(Lane::is_detached);
            }
            return;
        }
        let ids: Vec<usize> = lines.iter().map(|l| line_id(&l.message)).collect();
        for p in &mut self.parked {
            p.read += lines.len() as u64;
            p.ids.extend(&ids);
        }
        for line in &lines {
            let before = self.head;
            self.head = furthest(self.head, &line.cursor);
            let mut shared = None;
            for lane in &mut self.lanes {
                lane.head_line(line, &before, &self.info, &mut shared, self.now);
            }
        }
        for lane in &mut self.lanes {
            lane.settle();
        }
    }

    /// Ids of lanes with a catch-up running.
    fn catching_up(&mut self) -> Vec<u64> {
        self.lanes
            .iter_mut()
            .filter_map(|l| {
                let id = l.id;
                l.detached_mut()
                    .is_some_and(|d| d.catchup.is_some())
                    .then_some(id)
            })
            .collect()
    }

    /// `Following::start_catchups`, without the agent-wide stream limit.
    fn start_catchups(&mut self) {
        for lane in &mut self.lanes {
            let queue = lane.sink().queue.clone();
            if !queue.half_empty() {
                continue;
            }
            if lane.detached_mut().is_none_or(|d| d.catchup.is_some()) {
                continue;
            }
            self.generation += 1;
            lane.catchup_started(CatchUp {
                generation: self.generation,
                stop: CancellationToken::new(),
            });
            self.catchups.push(CatchReader {
                lane: lane.id,
                generation: self.generation,
                reader: Reader::new(lane.pos, &self.log),
            });
        }
    }

    /// The catch-up of lane `id` gives up its stream (`CatchMsg::Paused`).
    fn pause(&mut self, id: u64) {
        let Some(at) = self.lanes.iter().position(|l| l.id == id) else {
            return;
        };
        let read = self
            .catchups
            .iter()
            .find(|c| c.lane == id)
            .map(|c| c.reader.assembler.cursor());
        let head = self.head;
        self.lanes[at].stop_catchup(&head);
        if let Some(read) = read {
            self.abandon(at, read);
        }
    }

    /// Lane `at`'s catch-up stopped after reading up to `read`.
    fn abandon(&mut self, at: usize, read: Cursor) {
        let lane = &self.lanes[at];
        let lines = self.between(lane.pos, read);
        let (route, sink) = (lane.route.key.clone(), lane.sink_name().to_string());
        self.received(&route, &sink).abandoned.extend(lines);
    }

    /// Up to `n` entries of one lane's catch-up stream (`Following::catchup_message`).
    fn catchup_step(&mut self, id: u64, n: usize) {
        let Some(at) = self.lanes.iter().position(|l| l.id == id) else {
            return;
        };
        let lane = &mut self.lanes[at];
        let Some(generation) = lane
            .detached_mut()
            .and_then(|d| d.catchup.as_ref())
            .map(|c| c.generation)
        else {
            return;
        };
        let Some(c) = self
            .catchups
            .iter_mut()
            .find(|c| c.lane == id && c.generation == generation)
        else {
            return;
        };
        let lines = c.reader.read(&self.log, n);
        let (route, sink) = (lane.route.key.clone(), lane.sink_name().to_string());
        if lines.is_empty() {
            if self.log.stopped && c.reader.at_end(&self.log) {
                // The container stopped and its log was read to the end.
                let lost = lane.lost_at_end();
                lane.end_catchup();
                lane.flush(&self.info, self.now, true);
                if !lane.is_detached() {
                    let lane = self.lanes.swap_remove(at);
                    self.finished
                        .push((lane.route.clone(), lane.sink_name().to_string()));
                }
                self.received(&route, &sink).rotated += lost;
            }
            return;
        }
        for line in &lines {
            if lane
                .catchup_line(line, &self.info, &self.head, self.now)
                .is_err()
            {
                self.abandon(at, line.cursor);
                return;
            }
        }
        lane.settle();
        if self.head_done {
            return;
        }
        if let Some(lost) = lane.try_rejoin(&self.head) {
            self.received(&route, &sink).rotated += lost;
        }
    }

    /// The agent is killed: workers deliver the first `deliver` entries of each queue,
    /// everything in memory is lost, and a new agent starts from the checkpoint file.
    fn restart(&mut self, deliver: usize) {
        let present: Vec<usize> = (0..SPECS.len())
            .filter(|&r| self.routes[r].active.is_some())
            .collect();
        for &r in &present {
            for sink in 0..SPECS[r].sinks.len() {
                self.deliver(r, sink, deliver);
            }
            self.routes[r].active = None;
            self.routes[r].queues.clear();
        }
        for lane in std::mem::take(&mut self.lanes) {
            self.drop_tally(&lane);
        }
        self.catchups.clear();
        for p in std::mem::take(&mut self.parked) {
            let (route, sink) = (p.checkpoint.route.clone(), p.checkpoint.sink.clone());
            let rec = self.received(&route, &sink);
            rec.restart_owed.extend(p.owed);
        }
        self.store = Checkpoints::open(self.dir.path())
            .expect("reopen checkpoints")
            .checkpoints;
        for &r in &present {
            self.activate(r);
        }
        // `Following::start`: lanes at their checkpoints, the head at the furthest.
        self.head_done = false;
        self.ended = false;
        self.rematch();
        if let Some(first) = self.lanes.first() {
            let head = self
                .lanes
                .iter()
                .fold(first.pos, |h, l| furthest(h, &l.pos));
            // The new head reads again what the old one had read past it.
            let again = self.between(head, self.head);
            for rec in self.routes.iter_mut().flat_map(|r| &mut r.received) {
                rec.resumed.extend(&again);
            }
            self.head = head;
            for lane in &mut self.lanes {
                if lane.pos != head {
                    lane.start_detached(head);
                }
            }
        }
        self.head_reader = Reader::new(self.head, &self.log);
    }

    /// Every route back, the container stopped, every sink drained: run until every
    /// lane has read the log to its end.
    fn finish(&mut self) -> Result<(), String> {
        for r in 0..SPECS.len() {
            self.apply(&Op::Readd(r));
        }
        self.log.stopped = true;
        for _ in 0..1000 {
            for (r, spec) in SPECS.iter().enumerate() {
                for s in 0..spec.sinks.len() {
                    self.deliver(r, s, usize::MAX);
                }
            }
            self.apply(&Op::HeadRead(usize::MAX));
            self.apply(&Op::Tick(2_000));
            self.apply(&Op::StartCatchups);
            for id in self.catching_up() {
                self.catchup_step(id, usize::MAX);
            }
            let queued = self
                .routes
                .iter()
                .flat_map(|r| &r.queues)
                .any(|q| !q.is_empty());
            if self.head_done && !self.lanes.iter().any(Lane::is_detached) && !queued {
                // A route that did not come back is owed nothing after it went away.
                self.expire();
                for (r, spec) in SPECS.iter().enumerate() {
                    if self.routes[r].active.is_some() {
                        continue;
                    }
                    for (s, name) in spec.sinks.iter().enumerate() {
                        let at = self.store.get(CONTAINER, spec.key, name);
                        let rec = &mut self.routes[r].received[s];
                        if rec.expiries.len() < rec.starts.len() {
                            rec.expiries.push(at.unwrap_or_default());
                        }
                    }
                }
                return Ok(());
            }
        }
        Err(format!(
            "the lanes never finished: head done {}, {} lanes detached",
            self.head_done,
            self.lanes.iter().filter(|l| l.is_detached()).count()
        ))
    }

    /// Ids of the log's lines after `at` (what a lane starting there should get).
    fn after(&self, at: Cursor) -> BTreeSet<usize> {
        let mut filter = ResumeFilter::new(at);
        (0..self.log.entries.len())
            .filter(|&i| {
                let e = &self.log.entries[i];
                !filter.skip(e.stream, e.ts)
            })
            .collect()
    }

    /// Ids of the lines after `from` up to `to`.
    fn between(&self, from: Cursor, to: Cursor) -> BTreeSet<usize> {
        let upto = self.after(to);
        self.after(from).difference(&upto).copied().collect()
    }

    /// The property, for every sink, tolerating the known gaps in `tolerate`.
    fn check(&self, tolerate: Tolerate) -> Result<(), String> {
        for (r, spec) in SPECS.iter().enumerate() {
            for (s, rec) in self.routes[r].received.iter().enumerate() {
                let sink = format!("{}/{}", spec.key, spec.sinks[s]);
                self.check_sink(spec.kind, rec, tolerate)
                    .map_err(|e| format!("sink {sink}: {e}; received {rec:?}"))?;
            }
        }
        Ok(())
    }

    fn check_sink(&self, kind: Kind, rec: &Received, tolerate: Tolerate) -> Result<(), String> {
        let takes = |id: usize| {
            let e = &self.log.entries[id];
            kind != Kind::StdoutNoX || (e.stream == StreamName::Stdout && !e.text.starts_with('x'))
        };
        let Some(first) = rec.starts.first() else {
            // The container ended before the route took it.
            return match rec.got.is_empty() {
                true => Ok(()),
                false => Err("received lines without ever having a lane".into()),
            };
        };
        // Lines a sink may get: those after where one of its lanes started. Lines it must
        // get: those after where its first lane started, except while its route was
        // withdrawn past the grace period (between what it had received and a new start).
        let mut allowed = BTreeSet::new();
        let mut windows = BTreeSet::new();
        for start in &rec.starts {
            allowed.extend(self.after(start.at).into_iter().filter(|&i| takes(i)));
        }
        for (k, &at) in rec.expiries.iter().enumerate() {
            let hi = rec
                .starts
                .get(k + 1)
                .map_or(self.log.entries.len(), |s| s.from);
            windows.extend(self.after(at).into_iter().filter(|&i| i < hi && takes(i)));
        }
        let expected: BTreeSet<usize> = self
            .after(first.at)
            .into_iter()
            .filter(|&i| takes(i))
            .collect();
        // In order, each once.
        let mut seen = BTreeSet::new();
        let mut last: [Option<usize>; 2] = [None, None];
        let mut last_any = None;
        // A line stamped like a line rotated away on its stream: a cursor at that stamp
        // counts frames that are no longer there (see `Tolerate::same_stamp`).
        let stamp_rotated = |i: usize| {
            let e = &self.log.entries[i];
            self.log.entries[..self.log.first]
                .iter()
                .any(|r| r.stream == e.stream && r.ts == e.ts)
        };
        for &id in &rec.got {
            let again = (tolerate.ahead && rec.ahead.contains(&id))
                || (tolerate.same_stamp && stamp_rotated(id))
                || (tolerate.returned && rec.starts[1..].iter().any(|s| id < s.from));
            if !seen.insert(id) {
                if again {
                    continue;
                }
                return Err(format!("line {id} received twice"));
            }
            if !allowed.contains(&id) && !again {
                return Err(format!("line {id} received but not expected"));
            }
            if again {
                continue;
            }
            let i = usize::from(self.log.entries[id].stream == StreamName::Stderr);
            if last[i].is_some_and(|l| l > id) {
                return Err(format!(
                    "line {id} received after a later line of its stream"
                ));
            }
            if kind != Kind::Multiline && last_any.is_some_and(|l| l > id) {
                return Err(format!("line {id} received after a later line"));
            }
            last[i] = Some(id);
            last_any = Some(id);
        }
        // Missing lines: in a withdrawal window, or rotated away and counted.
        let missing: Vec<usize> = expected.difference(&seen).copied().collect();
        let (withdrawn, rotated): (Vec<usize>, Vec<usize>) =
            missing.iter().partition(|i| windows.contains(i));
        let (read_meanwhile, before): (Vec<usize>, Vec<usize>) =
            withdrawn.iter().partition(|i| rec.parked_read.contains(i));
        if read_meanwhile.len() as u64 > rec.withdrawn {
            return Err(format!(
                "{} lines read while the route was withdrawn missing ({read_meanwhile:?}), {} counted",
                read_meanwhile.len(),
                rec.withdrawn
            ));
        }
        // Of the rest, those its sink had not accepted when the lane was parked are
        // owed a count too (unless a resumed lane had lost track of them already, see
        // `Tolerate::resumed`); those the head read after the grace period are not.
        let (owed, before): (Vec<usize>, Vec<usize>) = before.iter().partition(|i| {
            rec.parked_owed.contains(i) && !(tolerate.resumed && rec.resumed.contains(i))
        });
        if !tolerate.withdrawn && (read_meanwhile.len() + owed.len()) as u64 > rec.withdrawn {
            return Err(format!(
                "{} lines read while the route was withdrawn and {} read before but not accepted missing ({owed:?}), {} counted",
                read_meanwhile.len(),
                owed.len(),
                rec.withdrawn
            ));
        }
        let across_restart: Vec<usize> = before
            .iter()
            .copied()
            .filter(|i| rec.restart_owed.contains(i))
            .collect();
        if !tolerate.returned && !across_restart.is_empty() {
            return Err(format!(
                "{} lines not accepted when the route was withdrawn across an agent restart missing ({across_restart:?}), not counted",
                across_restart.len()
            ));
        }
        // A line Docker still has may be skipped when rotation removed lines of its
        // stream with its very timestamp: a cursor counts frames seen at a timestamp,
        // and a re-read counts from the first that is left.
        let gone = |i: usize| {
            let e = &self.log.entries[i];
            i < self.log.first
                || self.log.entries[..self.log.first]
                    .iter()
                    .any(|r| r.stream == e.stream && r.ts == e.ts)
        };
        if let Some(i) = rotated.iter().find(|&&i| !gone(i)) {
            return Err(format!(
                "line {i} missing though Docker still has it (rotated up to {})",
                self.log.first
            ));
        }
        let (unnoticed, rotated): (Vec<usize>, Vec<usize>) =
            rotated.iter().partition(|i| rec.resumed.contains(i));
        if !tolerate.resumed && !unnoticed.is_empty() {
            return Err(format!(
                "{} lines rotated away before a resumed lane read them again ({unnoticed:?}), not counted",
                unnoticed.len()
            ));
        }
        // Unless tolerated, lines a stopped catch-up had read are owed a count like any
        // other line rotated away.
        let (abandoned, rotated): (Vec<usize>, Vec<usize>) = rotated
            .iter()
            .partition(|i| tolerate.abandoned && rec.abandoned.contains(i));
        let shares_stamp = |i: usize| {
            let e = &self.log.entries[i];
            i >= self.log.first
                || self.log.entries[..self.log.first]
                    .iter()
                    .enumerate()
                    .any(|(j, r)| j != i && r.stream == e.stream && r.ts == e.ts)
        };
        let (same_stamp, rotated): (Vec<usize>, Vec<usize>) =
            rotated.iter().partition(|&&i| shares_stamp(i));
        if !tolerate.same_stamp && !same_stamp.is_empty() {
            return Err(format!(
                "{} lines Docker still has skipped after lines of their timestamp were rotated away ({same_stamp:?})",
                same_stamp.len()
            ));
        }
        let counted = rec.rotated;
        let silent = (rotated.len() as u64) > counted;
        // A route that takes every line counts exactly what it lost (tolerated lines may
        // be counted or not); one that filters also counts lost lines it would have
        // filtered out.
        let most =
            rotated.len() + unnoticed.len() + abandoned.len() + same_stamp.len() + withdrawn.len();
        let tolerated =
            !(rec.resumed.is_empty() && rec.ahead.is_empty() && rec.abandoned.is_empty());
        let over = kind != Kind::StdoutNoX && !tolerated && most < counted as usize;
        if silent || over {
            return Err(format!(
                "{} lines lost to rotation ({rotated:?}), {counted} counted",
                rotated.len()
            ));
        }
        Ok(())
    }
}

/// Gaps the random test lets pass, each only for lines that Docker rotated away: known
/// accounting bugs, each failed by an `#[ignore]`d test below until it is fixed.
#[derive(Clone, Copy)]
struct Tolerate {
    /// A lane that starts over from its checkpoint behind the head (a route edit, a
    /// re-add within the grace period, an agent restart) starts detached with every line
    /// up to the head taken as counted: what Docker rotated away in that range is
    /// neither delivered nor counted. Likewise a detached lane dropped by an edit, a
    /// delete or a restart takes its tally of missed lines with it.
    resumed: bool,
    /// A catch-up that stops (its sink's queue filled again, or it paused) has counted
    /// the lines it read past the lane's position as recovered; the next catch-up reads
    /// them again from the position, and what Docker rotated away meanwhile is neither
    /// delivered nor counted.
    abandoned: bool,
    /// A route withdrawn past its grace period counts the lines the head read while it
    /// was gone and those its lane had read before and its sink never accepted
    /// (queued, held in a joiner, or missed while detached); a count short of those
    /// is a gap. (Lines the head reads after the grace period are not the route's.)
    withdrawn: bool,
    /// A lane parked when the agent restarts is forgotten with it: what its sink had
    /// not accepted is neither sent nor counted if the route never comes back. And when
    /// it comes back after a restart whose head starts behind, its new lane starts at
    /// that head and gets again what its previous lanes delivered.
    returned: bool,
    /// Route changes after the head read the whole log are not made. (Lanes that ended
    /// are no longer brought back by a rematch — `a_route_change_after_the_log_ended_
    /// sends_nothing_twice` — but once the container task has ended, a route edited or
    /// deleted while its queue still held records of the container loses them: nothing
    /// reads them again.)
    revived: bool,
    /// A lane that starts over from a checkpoint ahead of the head (its catch-up ran
    /// ahead of the head before an edit; or its route was withdrawn across a restart,
    /// whose head started at the furthest checkpoint of the routes present) starts live
    /// without skipping: the head's lines up to its checkpoint are sent again.
    ahead: bool,
    /// A cursor counts the frames read at its timestamp; when rotation removed some of
    /// them, a re-read from it skips as many of those left, which were never read
    /// (counted as `rotated` when a detached lane skips them, silent for a head that
    /// restarts there), and lanes started there disagree on what was read: a line read
    /// again under the cursor of the line rotated away may be sent twice. Rotation then
    /// never separates lines of one stream stamped alike.
    same_stamp: bool,
}

const KNOWN_GAPS: Tolerate = Tolerate {
    resumed: true,
    abandoned: false,
    withdrawn: false,
    returned: true,
    revived: true,
    ahead: false,
    same_stamp: true,
};

const NO_GAPS: Tolerate = Tolerate {
    resumed: false,
    abandoned: false,
    withdrawn: false,
    returned: false,
    revived: false,
    ahead: false,
    same_stamp: false,
};

fn run(capacity: usize, present: [bool; 3], ops: &[Op], tolerate: Tolerate) -> Result<(), String> {
    let mut m = Model::new(capacity, present, tolerate);
    for op in ops {
        m.apply(op);
    }
    m.finish()?;
    m.check(tolerate)
}

fn op() -> impl Strategy<Value = Op> {
    let write = (any::<bool>(), 0..4u8, prop::bool::weighted(0.2), 0..3u8);
    prop_oneof![
        8 => prop::collection::vec(write, 1..6).prop_map(Op::Write),
        8 => (1..8usize).prop_map(Op::HeadRead),
        8 => (0..3usize, 0..2usize, 1..4usize)
            .prop_map(|(route, sink, n)| Op::Drain { route, sink, n }),
        4 => Just(Op::StartCatchups),
        8 => (0..4usize, 1..4usize).prop_map(|(which, n)| Op::CatchupStep { which, n }),
        1 => (0..4usize).prop_map(Op::PauseCatchup),
        2 => (1..4usize).prop_map(Op::Rotate),
        2 => prop_oneof![Just(300u64), Just(1_500u64)].prop_map(Op::Tick),
        1 => (0..3usize, 0..3usize).prop_map(|(route, deliver)| Op::Edit { route, deliver }),
        1 => (0..3usize, 0..3usize).prop_map(|(route, deliver)| Op::Delete { route, deliver }),
        1 => (0..3usize).prop_map(Op::Readd),
        1 => Just(Op::Expire),
        1 => (0..3usize).prop_map(|deliver| Op::Restart { deliver }),
        1 => Just(Op::Stop),
    ]
}

proptest! {
    // PROPTEST_CASES runs more (e.g. 20000 for a long hunt); 400 by default.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_sink_gets_every_line_once_in_order_or_a_counted_drop(
        capacity in 1..5usize,
        present in any::<[bool; 3]>(),
        ops in prop::collection::vec(op(), 1..150),
    ) {
        if let Err(e) = run(capacity, present, &ops, KNOWN_GAPS) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// Line writes for the regression cases: stdout or stderr, with a clock step.
fn lines(spec: &[(bool, u8)]) -> Op {
    Op::Write(
        spec.iter()
            .map(|&(err, step)| (err, step, false, 0))
            .collect(),
    )
}

fn strict(capacity: usize, present: [bool; 3], ops: &[Op]) {
    if let Err(e) = run(capacity, present, ops, NO_GAPS) {
        panic!("{e}");
    }
}

const ALL: [bool; 3] = [true, false, false];

#[test]
#[ignore = "bug: lines rotated away between a resumed lane's checkpoint and the head are not counted"]
fn a_line_rotated_away_before_an_edited_route_resumes_is_counted() {
    // Line 0 is queued, not accepted; Docker rotates it away; the route is edited and its
    // lane resumes from its checkpoint (before line 0) detached behind the head, counting
    // nothing up to the head: line 0 is neither delivered nor counted.
    strict(
        1,
        ALL,
        &[
            lines(&[(false, 0)]),
            Op::HeadRead(1),
            Op::Rotate(1),
            Op::Edit {
                route: 0,
                deliver: 0,
            },
        ],
    );
}

#[test]
fn a_line_read_by_a_stopped_catch_up_then_rotated_away_is_counted() {
    // Both sinks detach on line 1. Sink one's catch-up reads line 1 (counted recovered),
    // finds its queue full and stops; line 1 is rotated away before the next catch-up,
    // which finds nothing to read again: missed 1 - recovered 1 = 0 lost.
    strict(
        1,
        ALL,
        &[
            lines(&[(false, 0)]),
            Op::HeadRead(1),
            lines(&[(false, 1)]),
            Op::Rotate(1),
            Op::HeadRead(1),
            Op::StartCatchups,
            Op::CatchupStep { which: 0, n: 1 },
            Op::Rotate(1),
        ],
    );
}

#[test]
fn records_queued_when_a_route_is_withdrawn_for_good_are_counted() {
    // Line 0 is queued when the route is deleted; its worker stops; the grace period
    // ends with no line read meanwhile: `withdrawn` counts 0, line 0 was never delivered.
    strict(
        2,
        ALL,
        &[
            lines(&[(false, 0)]),
            Op::HeadRead(1),
            Op::Delete {
                route: 0,
                deliver: 0,
            },
            Op::Expire,
        ],
    );
}

#[test]
fn a_route_change_after_the_log_ended_sends_nothing_twice() {
    // Route "some" queues lines 3-5 and its live lane ends with the log (checkpoint
    // before line 3), while route "all" still catches up, so the container task goes on.
    // Another route appears: the rematch brings "some"'s lane back from its checkpoint,
    // and its catch-up queues lines 3-5 a second time.
    strict(
        3,
        [false; 3],
        &[
            lines(&[(false, 0), (false, 0)]),
            Op::HeadRead(1),
            lines(&[(false, 0), (false, 0), (false, 0), (false, 0)]),
            Op::Stop,
            Op::Readd(0),
            Op::HeadRead(2),
            Op::Readd(1),
            Op::HeadRead(3),
            Op::HeadRead(1),
            Op::Readd(2),
        ],
    );
}

#[test]
fn a_lane_resumed_ahead_of_the_head_skips_what_it_had() {
    // Route "some" is withdrawn (within its grace period) when the agent restarts; the
    // new head starts at the furthest checkpoint of the routes present, behind "some"'s.
    // When "some" comes back, its lane resumes at its checkpoint, live, without a skip,
    // and takes the head's lines up to it again.
    strict(
        1,
        ALL,
        &[
            lines(&[(false, 0)]),
            Op::HeadRead(1),
            Op::Readd(1),
            lines(&[(false, 0)]),
            Op::HeadRead(1),
            Op::Delete {
                route: 1,
                deliver: 0,
            },
            lines(&[(false, 0)]),
            Op::Restart { deliver: 0 },
        ],
    );
}

#[test]
fn a_line_held_when_a_lane_detaches_is_not_missed_twice() {
    // The multiline lane's catch-up reads s5 ahead of the head and rejoins; the joiner
    // timeout then finds the queue full and the lane detaches holding x4 and s5 (counted
    // missed). The head then read s5 and counted it again, and the catch-up recovered
    // only two of three: one line counted `rotated` that was delivered.
    let w = |v: &[(bool, u8, bool, u8)]| Op::Write(v.to_vec());
    let mut ops = vec![
        w(&[
            (false, 0, false, 0),
            (false, 1, false, 0),
            (false, 0, false, 0),
        ]),
        w(&[(true, 0, false, 0), (true, 0, false, 2)]),
        w(&[(false, 1, false, 0)]),
        Op::HeadRead(4),
        Op::HeadRead(1),
        Op::Drain {
            route: 2,
            sink: 0,
            n: 1,
        },
        Op::StartCatchups,
        Op::Stop,
        Op::Rotate(1),
        Op::Rotate(2),
        Op::CatchupStep { which: 0, n: 3 },
        Op::Tick(1500),
    ];
    for _ in 0..8 {
        ops.push(w(&[(false, 0, false, 0)]));
    }
    if let Err(e) = run(2, [false, false, true], &ops, KNOWN_GAPS) {
        panic!("{e}");
    }
}

#[test]
fn a_line_stamped_like_a_rotated_one_is_tolerated_once_more() {
    // Line 1 carries line 0's timestamp; line 0 is rotated away before the catch-up of
    // the restarted agent reads from before it, so line 1 is read under line 0's cursor
    // and the head then takes it again: the known same-stamp gap, a repeat here.
    let ops = [
        Op::Write(vec![(true, 0, false, 0)]),
        Op::HeadRead(1),
        Op::Restart { deliver: 0 },
        Op::StartCatchups,
        Op::HeadRead(1),
        Op::Rotate(1),
        Op::Write(vec![(true, 0, false, 0)]),
        Op::CatchupStep { which: 0, n: 1 },
    ];
    if let Err(e) = run(2, [true, false, false], &ops, KNOWN_GAPS) {
        panic!("{e}");
    }
    let strict = Tolerate {
        same_stamp: false,
        ..KNOWN_GAPS
    };
    assert!(
        run(2, [true, false, false], &ops, strict).is_err(),
        "without the same-stamp tolerance this case fails: the gap is real"
    );
}
