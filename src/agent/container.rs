//! One container's task: a shared head reader feeding the container's lanes (one per
//! matched (route, sink), see [`crate::agent::lane`]), catch-up streams for lanes that
//! fell behind, and the end of the log.
//!
//! Where reading starts: each lane at its checkpoint; a lane without one at the agent's
//! start point for new containers ([`AgentContext::start`]). The head starts at the
//! furthest of them (per stream); lanes behind it start detached and catch up on their
//! own, so a restart never holds healthy sinks back for a lagging one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::checkpoint::LaneCheckpoint;
use crate::agent::docker::{self, Cursor, DockerContainer, DockerError, LogLine};
use crate::agent::lane::{CatchUp, Lane, Outcome, furthest, reached};
use crate::agent::pipeline::{AgentContext, resolve_info, resolve_info_now};
use crate::agent::pods::{self, PodCache};
use crate::agent::routes::{ActiveRoute, RouteTable};
use crate::agent::spill::SpillSnapshot;
use crate::api::EXCLUDE_KEY;
use crate::record::{ContainerInfo, Timestamp};
use crate::sink::worker::{ENTRY_OVERHEAD, SinkQueue};

/// How often lanes waiting to catch up look for room in their sink's queue.
const CATCHUP_POLL: Duration = Duration::from_millis(100);

/// From a catch-up stream to its container task.
enum CatchMsg {
    Lines {
        lane: u64,
        generation: u64,
        lines: Vec<LogLine>,
    },
    Ended {
        lane: u64,
        generation: u64,
        result: Result<Cursor, DockerError>,
    },
    /// The sink's queue had no room for [`CATCHUP_STALL`]: the catch-up closed its
    /// stream and gave its permit back, so a dead sink cannot hold the agent's catch-up
    /// streams while healthy sinks wait for one.
    Paused { lane: u64, generation: u64 },
}

/// How long a catch-up waits for room in its sink's queue before it gives up its stream.
const CATCHUP_STALL: Duration = Duration::from_secs(1);

/// Longest a container waits, on a route edit or delete, for the old version's sink
/// workers to end (see `Following::await_retired`). A connection attempt or backoff ends
/// at once; only a write to a receiver that stopped reading can take longer.
const RETIRE_WAIT: Duration = Duration::from_secs(5);

struct Following {
    ctx: Arc<AgentContext>,
    container: DockerContainer,
    info: Arc<ContainerInfo>,
    lanes: Vec<Lane>,
    /// Per stream, the furthest position the head has read.
    head: Cursor,
    catch_tx: mpsc::Sender<CatchMsg>,
    generation: u64,
    /// The head has read the whole log: lanes still behind finish on their catch-up.
    head_done: bool,
    /// Docker removed the container: lanes behind can only catch up from their spills.
    gone: bool,
    /// Lanes that read the log to its end, by route version and sink: a later rematch
    /// (another route changed) must not bring them back from their checkpoints, which
    /// may still stand before records waiting in their queues.
    finished: Vec<(Arc<ActiveRoute>, String)>,
    /// Checkpoints of lanes whose route went away (withdrawn, its Secret missing for a
    /// while, or no longer matching): kept for the grace period so that the lane resumes
    /// exactly where its sink stopped if the route comes back.
    parked: Vec<Parked>,
}

/// A lane without its route, waiting for it to come back.
struct Parked {
    checkpoint: Arc<LaneCheckpoint>,
    until: Instant,
    /// Lines the head read from the container since the lane was parked.
    read: u64,
    /// Lines the lane had consumed that its sink did not get (see [`Lane::behind`]);
    /// with those still queued ([`LaneCheckpoint::unaccepted`]), lost if the route does
    /// not come back.
    behind: u64,
}

pub(super) async fn follow_container(
    ctx: Arc<AgentContext>,
    container: DockerContainer,
    removed: CancellationToken,
) {
    let pod_ref = pods::pod_ref(&container.labels);
    let mut pod_changes = ctx.pods.as_ref().map(PodCache::changes);
    let mut routes_rx = ctx.routes.clone();
    let info = resolve_info(&ctx, &container, pod_ref.as_ref()).await;
    let (catch_tx, mut catch_rx) = mpsc::channel(4);
    let mut f = Following {
        ctx: ctx.clone(),
        container: container.clone(),
        info: Arc::new(info),
        lanes: Vec::new(),
        head: default_start(&ctx, &container),
        catch_tx,
        generation: 0,
        head_done: false,
        gone: false,
        finished: Vec::new(),
        parked: Vec::new(),
    };
    f.start(&routes_rx.borrow_and_update());
    tracing::info!(container = %container.name, lanes = f.lanes.len(), detached = f.lanes.iter().filter(|l| l.is_detached()).count(), "following container");

    let (tx, mut rx) = mpsc::channel::<Vec<LogLine>>(8);
    let mut reader = {
        let ctx = ctx.clone();
        let container = container.clone();
        let from = f.head;
        tokio::spawn(async move {
            docker::follow(
                &ctx.docker,
                &container,
                Some(from),
                &ctx.read,
                &tx,
                &ctx.metrics,
                &ctx.stop,
            )
            .await
        })
    };
    let mut catchup_tick = tokio::time::interval(CATCHUP_POLL);
    catchup_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if f.head_done && f.lanes.is_empty() && f.parked.is_empty() {
            break;
        }
        let deadline = f.lanes.iter().filter_map(Lane::deadline).min();
        let expiry = f.parked.iter().map(|p| p.until).min();
        let waiting = f
            .lanes
            .iter_mut()
            .any(|l| l.detached_mut().is_some_and(|d| d.catchup.is_none()));
        tokio::select! {
            batch = rx.recv(), if !f.head_done => match batch {
                Some(lines) => f.head_batch(&lines),
                None => {
                    f.head_done = true;
                    match (&mut reader).await {
                        Ok(Ok(_)) if !ctx.stop.is_cancelled() => {
                            tracing::info!(container = %container.name, "container log read to the end");
                            f.end_live_lanes();
                            f.settle_gone();
                        }
                        Ok(Err(e @ DockerError::ContainerGone { .. })) => {
                            tracing::warn!(container = %container.name, error = %e, "container removed");
                            f.end_live_lanes();
                            f.gone = true;
                            f.settle_gone();
                        }
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => {
                            tracing::warn!(container = %container.name, error = %e, "stopped reading container");
                            break;
                        }
                        Err(e) => {
                            tracing::error!(container = %container.name, error = %e, "log reader task failed");
                            break;
                        }
                    }
                }
            },
            Some(msg) = catch_rx.recv() => f.catchup_message(msg),
            changed = routes_rx.changed() => {
                if changed.is_err() { break; }
                let table = routes_rx.borrow_and_update().clone();
                f.apply_table(&table).await;
            }
            Some(()) = wait_changed(&mut pod_changes) => {
                if let Some(r) = &pod_ref {
                    let info = resolve_info_now(&ctx, &container, r).await;
                    if info != *f.info {
                        f.flush(true);
                        f.info = Arc::new(info);
                        let table = routes_rx.borrow_and_update().clone();
                        f.apply_table(&table).await;
                    }
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => f.flush(false),
            _ = sleep_until(expiry), if expiry.is_some() => f.expire_parked(),
            _ = catchup_tick.tick(), if waiting => f.start_catchups(),
            _ = removed.cancelled(), if !f.gone => f.container_removed(),
            _ = ctx.stop.cancelled() => {
                f.count_gone_at_stop();
                break;
            }
        }
    }
    if !reader.is_finished() {
        reader.abort();
    }
}

async fn wait_changed(rx: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Following {
    fn excluded_by_pod(&self) -> bool {
        self.info
            .pod
            .as_ref()
            .is_some_and(|p| p.annotations.get(EXCLUDE_KEY).is_some_and(|v| v == "true"))
    }

    /// The first match: lanes at their checkpoints, the head at the furthest of them.
    fn start(&mut self, table: &RouteTable) {
        self.rematch(table);
        if self.lanes.is_empty() {
            return;
        }
        let head = self
            .lanes
            .iter()
            .skip(1)
            .fold(self.lanes[0].pos, |h, l| furthest(h, &l.pos));
        self.head = head;
        for lane in &mut self.lanes {
            if lane.pos != head {
                lane.start_detached(head);
            }
        }
    }

    /// Re-evaluate which (route, sink) lanes this container has. Call after flushing.
    /// Kept lanes keep their position; new lanes start at the head; lanes of routes
    /// that no longer take the container free their checkpoint.
    fn rematch(&mut self, table: &RouteTable) {
        let wanted: Vec<_> = if self.excluded_by_pod() {
            Vec::new()
        } else {
            table
                .routes
                .iter()
                .filter(|r| r.matcher.matches_container(&self.info))
                .flat_map(|r| (0..r.sinks.len()).map(move |i| (r.clone(), i)))
                .collect()
        };
        let mut old = std::mem::take(&mut self.lanes);
        for (route, i) in wanted {
            let name = &route.sinks[i].name;
            if let Some(at) = old
                .iter()
                .position(|l| l.route.key == route.key && l.sink_name() == name)
            {
                let lane = old.swap_remove(at);
                if Arc::ptr_eq(&lane.route, &route) {
                    self.lanes.push(lane);
                    continue;
                }
                // The route was edited: its old workers have ended (`await_retired`)
                // and what they held is not delivered. The lane starts over from what
                // its sink accepted, with the new version (a new claim of its checkpoint,
                // so an acknowledgement of a worker left behind cannot move it).
                tracing::info!(container = %self.container.name, route = %route.key, sink = %name, "route edited; this sink resumes from its checkpoint with the new version");
                drop(lane);
            }
            if self
                .finished
                .iter()
                .any(|(r, s)| Arc::ptr_eq(r, &route) && s == name)
            {
                continue;
            }
            self.parked
                .retain(|p| !(p.checkpoint.route == route.key && p.checkpoint.sink == *name));
            let start = lane_start(&self.ctx, &self.container, route.sinks[i].since);
            // A lane never starts past the head: the head's lines are the ones at hand.
            let start = if reached(&start, &self.head) {
                self.head
            } else {
                start
            };
            let checkpoints = &self.ctx.checkpoints;
            match checkpoints.lane(&self.container.id, &route.key, name, start) {
                // The log was read to its end and this sink has all of it.
                Ok((_, pos)) if self.head_done && reached(&pos, &self.head) => {}
                Ok((checkpoint, pos)) => {
                    let id = self.ctx.next_lane.fetch_add(1, Ordering::Relaxed);
                    let mut lane = Lane::new(
                        id,
                        route,
                        i,
                        checkpoint,
                        pos,
                        self.ctx.read.max_line_bytes,
                        self.ctx.spill.clone(),
                    );
                    if !reached(&pos, &self.head) {
                        lane.start_detached(self.head);
                    } else if pos != self.head {
                        lane.resume_ahead();
                    }
                    self.lanes.push(lane);
                }
                Err(e) => {
                    tracing::error!(container = %self.container.name, route = %route.key, sink = %name, error = %e, "no checkpoint for this sink; it gets nothing of this container")
                }
            }
        }
        let until = Instant::now() + self.ctx.route_grace;
        for lane in old {
            tracing::info!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), grace = ?self.ctx.route_grace, "route no longer takes this container; its checkpoint is kept for the grace period");
            self.parked.push(Parked {
                checkpoint: lane.checkpoint.clone(),
                until,
                read: 0,
                behind: lane.behind(&self.head),
            });
        }
    }

    /// Parked lanes whose route did not come back within the grace period give up their
    /// checkpoint; what the container wrote meanwhile is counted as not resumed.
    fn expire_parked(&mut self) {
        let now = Instant::now();
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.until <= now);
        self.parked = kept;
        for p in expired {
            let (route, sink) = (&p.checkpoint.route, &p.checkpoint.sink);
            if self
                .lanes
                .iter()
                .any(|l| l.route.key == *route && l.sink_name() == sink)
            {
                continue;
            }
            // The route's old workers have stopped: what they had queued stays unsent.
            let unsent = p.behind + p.checkpoint.unaccepted();
            tracing::warn!(container = %self.container.name, %route, %sink, read = p.read, unsent, "route did not come back within the grace period: its checkpoint is dropped; the lines read meanwhile and those its sink had not taken are not sent to this sink");
            self.ctx
                .metrics
                .records_unresumed
                .with_label_values(&["withdrawn"])
                .inc_by(p.read + unsent);
            p.checkpoint.release();
        }
    }

    fn head_batch(&mut self, lines: &[LogLine]) {
        let now = Instant::now();
        for p in &mut self.parked {
            p.read += lines.len() as u64;
        }
        for line in lines {
            let before = self.head;
            self.head = furthest(self.head, &line.cursor);
            let mut shared = None;
            for lane in &mut self.lanes {
                if let Outcome::Detached =
                    lane.head_line(line, &before, &self.info, &mut shared, now)
                {
                    tracing::warn!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), "sink queue full: this sink falls behind on this container and will catch up from Docker; its other sinks go on");
                }
            }
        }
        if let Some(newest) = lines.iter().map(|l| l.timestamp).max() {
            for lane in &mut self.lanes {
                lane.checkpoint.set_head(newest);
                lane.settle();
            }
        }
    }

    /// Follow a new route table: lanes of changed routes flush, their old workers are
    /// waited for, then every lane is matched again.
    async fn apply_table(&mut self, table: &RouteTable) {
        self.flush_changed(table);
        self.await_retired(table).await;
        self.rematch(table);
    }

    /// Wait (at most [`RETIRE_WAIT`]) until the workers of every route version this
    /// container's lanes use and `table` no longer has have ended. A lane of an edited
    /// route claims its checkpoint again only after that, so the checkpoint it resumes
    /// from includes every record the old workers delivered: nothing is sent twice. A
    /// worker still inside a write after the wait (a syslog receiver that stopped reading)
    /// is left behind; what it writes then may arrive again through the new version.
    async fn await_retired(&self, table: &RouteTable) {
        let mut gone: Vec<&Arc<ActiveRoute>> = Vec::new();
        let routes = self.lanes.iter().map(|l| &l.route);
        for route in routes.chain(self.finished.iter().map(|(r, _)| r)) {
            let current = table.routes.iter().any(|r| Arc::ptr_eq(r, route));
            if !current && !gone.iter().any(|g| Arc::ptr_eq(g, route)) {
                gone.push(route);
            }
        }
        for route in gone {
            if tokio::time::timeout(RETIRE_WAIT, route.retired())
                .await
                .is_err()
            {
                tracing::warn!(container = %self.container.name, route = %route.key, wait = ?RETIRE_WAIT, "the route's old sink workers are still sending; resuming anyway, and what they deliver from now on may arrive twice");
            }
        }
    }

    /// Before a rematch: lanes whose route version is no longer in `table` emit what
    /// their multiline joiners hold. Other lanes keep theirs, so another tenant's edit
    /// never cuts a stack trace in two.
    fn flush_changed(&mut self, table: &RouteTable) {
        let now = Instant::now();
        for lane in &mut self.lanes {
            if !table.routes.iter().any(|r| Arc::ptr_eq(r, &lane.route)) {
                lane.flush(&self.info, now, true);
            }
        }
    }

    fn flush(&mut self, all: bool) {
        let now = Instant::now();
        for lane in &mut self.lanes {
            lane.flush(&self.info, now, all);
        }
    }

    /// The head read the whole log: live lanes emit what their joiners hold and end.
    /// Their checkpoints stay (at the log's end) until the container is removed, so that
    /// a restarted agent neither re-reads the log nor mistakes a finished lane for a
    /// new one.
    fn end_live_lanes(&mut self) {
        self.flush(true);
        for lane in self.lanes.iter().filter(|l| !l.is_detached()) {
            self.finished
                .push((lane.route.clone(), lane.sink_name().to_string()));
        }
        self.lanes.retain(Lane::is_detached);
    }

    /// Start catch-up streams for detached lanes whose sink has room again, as far as
    /// the agent-wide limit of catch-up streams allows.
    fn start_catchups(&mut self) {
        for lane in &mut self.lanes {
            let queue = lane.sink().queue.clone();
            if !queue.half_empty() {
                continue;
            }
            if self.gone && !lane.spill_covers_rest() {
                continue; // nothing left to read for it: it settles when the head is done
            }
            let Some(d) = lane.detached_mut() else {
                continue;
            };
            if d.catchup.is_some() {
                continue;
            }
            let Ok(permit) = self.ctx.catchups.clone().try_acquire_owned() else {
                return;
            };
            self.generation += 1;
            let stop = self.ctx.stop.child_token();
            let spill = lane.spill_snapshot();
            lane.catchup_started(CatchUp {
                generation: self.generation,
                stop: stop.clone(),
            });
            let from = if spill.is_some() {
                "its spill file, then Docker"
            } else {
                "Docker"
            };
            tracing::info!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), from, "catching up");
            tokio::spawn(catch_up(
                self.ctx.clone(),
                self.container.clone(),
                Source {
                    from: lane.pos,
                    spill,
                    docker: !self.gone,
                },
                (lane.id, self.generation),
                queue,
                self.catch_tx.clone(),
                stop,
                permit,
            ));
        }
    }

    /// Docker removed the container (its head reader may still be reading what dockerd
    /// had open of the log: lanes behind go on counting and spilling what it reads).
    fn container_removed(&mut self) {
        self.gone = true;
        self.settle_gone();
    }

    /// Once the container is gone and the head has read all it could: lanes still
    /// behind whose spills hold the rest of their lines stay, to drain them; the others
    /// count what they missed as dropped (`removed`) now, instead of when their sinks
    /// would have had room.
    fn settle_gone(&mut self) {
        if !self.gone || !self.head_done {
            return;
        }
        let mut kept = Vec::with_capacity(self.lanes.len());
        for mut lane in std::mem::take(&mut self.lanes) {
            let running = lane.detached_mut().is_some_and(|d| d.catchup.is_some());
            if !lane.is_detached() || running || lane.spill_covers_rest() {
                kept.push(lane);
                continue;
            }
            let lost = lane.lost_at_end();
            count_lost(&self.ctx, &lane, lost, "removed");
            tracing::warn!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), lost, "container removed while this sink was behind");
        }
        self.lanes = kept;
    }

    /// The agent stops: spills do not outlive it, so what lanes of a removed container
    /// still missed is lost.
    fn count_gone_at_stop(&self) {
        if !self.gone {
            return;
        }
        for lane in &self.lanes {
            count_lost(&self.ctx, lane, lane.lost_at_end(), "removed");
        }
    }

    fn catchup_message(&mut self, msg: CatchMsg) {
        let (id, generation) = match &msg {
            CatchMsg::Lines {
                lane, generation, ..
            }
            | CatchMsg::Ended {
                lane, generation, ..
            }
            | CatchMsg::Paused { lane, generation } => (*lane, *generation),
        };
        let Some(at) = self.lanes.iter_mut().position(|l| {
            l.id == id
                && l.detached_mut()
                    .and_then(|d| d.catchup.as_ref())
                    .is_some_and(|c| c.generation == generation)
        }) else {
            return;
        };
        let lane = &mut self.lanes[at];
        match msg {
            CatchMsg::Paused { .. } => {
                tracing::info!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), "sink queue still full; catch-up stream released until it drains");
                lane.stop_catchup(&self.head);
            }
            CatchMsg::Lines { lines, .. } => {
                let now = Instant::now();
                for line in &lines {
                    if lane
                        .catchup_line(line, &self.info, &self.head, now)
                        .is_err()
                    {
                        tracing::info!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), "sink queue full again; catch-up paused");
                        return;
                    }
                }
                lane.settle();
                if self.head_done {
                    return; // nothing to rejoin: the catch-up reads to the log's end
                }
                if let Some(lost) = lane.try_rejoin(&self.head) {
                    count_lost(&self.ctx, lane, lost, "rotated");
                    tracing::info!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), lost, "caught up; back on the shared reader");
                }
            }
            CatchMsg::Ended { result, .. } => {
                if self.ctx.stop.is_cancelled() {
                    return;
                }
                match result {
                    Ok(_) => {
                        // The container stopped and its log was read to the end.
                        let lost = lane.lost_at_end();
                        count_lost(&self.ctx, lane, lost, "rotated");
                        lane.end_catchup();
                        lane.flush(&self.info, Instant::now(), true);
                        if !lane.is_detached() {
                            let lane = self.lanes.swap_remove(at);
                            self.finished
                                .push((lane.route.clone(), lane.sink_name().to_string()));
                        }
                    }
                    Err(e @ DockerError::ContainerGone { .. }) if lane.spill_covers_rest() => {
                        // Docker lost the container while this lane was behind; its
                        // spill has the rest (or part of it): catch up from there.
                        tracing::info!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), error = %e, "container gone; catching up from the spill file");
                        self.gone = true;
                        lane.stop_catchup(&self.head);
                    }
                    Err(e @ DockerError::ContainerGone { .. }) if !self.head_done => {
                        // The head still reads what dockerd had open of the removed
                        // log: the lane goes on counting (and spilling) what it misses,
                        // and settles once the head is done.
                        tracing::info!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), error = %e, "container gone while this sink catches up; it settles when the shared reader is done");
                        self.gone = true;
                        lane.stop_catchup(&self.head);
                    }
                    Err(e) if e.is_permanent() => {
                        let lost = lane.lost_at_end();
                        count_lost(&self.ctx, lane, lost, "removed");
                        tracing::warn!(container = %self.container.name, route = %lane.route.key, sink = %lane.sink_name(), error = %e, lost, "catch-up ended");
                        self.lanes.swap_remove(at);
                    }
                    Err(e) => {
                        tracing::warn!(container = %self.container.name, error = %e, "catch-up failed; retrying");
                        lane.stop_catchup(&self.head);
                    }
                }
            }
        }
    }
}

/// Where lanes of `container` without a checkpoint start: the agent's start point, but
/// never before the container's current run began (less a second for lines stamped
/// while dockerd was recording the start), so that a restarted container's previous run
/// is not sent again.
fn default_start(ctx: &AgentContext, container: &DockerContainer) -> Cursor {
    match container.started_at {
        Some(t) => {
            let run = Cursor::at(Timestamp {
                secs: t.secs - 1,
                nanos: t.nanos,
            });
            if reached(&run, &ctx.start) {
                run
            } else {
                ctx.start
            }
        }
        None => ctx.start,
    }
}

/// Where a new lane (one without a checkpoint) of a sink starts: at the later of the
/// container's current run and the sink's `since` (the route's creation; see
/// [`crate::agent::routes::SinkHandle::since`]), but never before the agent's restart
/// floor. Sinks without a `since` (routes from files) start at the agent's start point.
/// So a pod created together with its LogRoute loses no line because the agent
/// learned of the route late, and an agent started after its routes existed reads what
/// their containers wrote since.
fn lane_start(ctx: &AgentContext, container: &DockerContainer, since: Option<Timestamp>) -> Cursor {
    new_lane_start(ctx.restart_floor, ctx.start, container.started_at, since)
}

/// [`lane_start`] without the context: `floor` is the agent's restart floor, `default`
/// its start point for sinks without a `since`, `started_at` the container's current run.
pub(crate) fn new_lane_start(
    floor: Cursor,
    default: Cursor,
    started_at: Option<Timestamp>,
    since: Option<Timestamp>,
) -> Cursor {
    let route = match since {
        Some(t) => furthest(Cursor::at(t), &floor),
        None => default,
    };
    match started_at {
        // Less a second for lines stamped while dockerd was recording the start.
        Some(t) => furthest(
            Cursor::at(Timestamp {
                secs: t.secs - 1,
                nanos: t.nanos,
            }),
            &route,
        ),
        None => route,
    }
}

fn count_lost(ctx: &AgentContext, lane: &Lane, lost: u64, reason: &'static str) {
    if lost == 0 {
        return;
    }
    tracing::warn!(route = %lane.route.key, sink = %lane.sink_name(), lost, reason, "lines lost for this sink: neither Docker nor a spill file had them when it caught up");
    ctx.metrics
        .records_dropped
        .with_label_values(&[&lane.route.key, lane.sink_name(), reason])
        .inc_by(lost);
}

/// Counts an open catch-up stream while alive.
struct Streaming(prometheus::IntGauge);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Gives back, when dropped, the count a catch-up took out of `containers_followed`.
struct NotCounted(prometheus::IntGauge);

impl Drop for NotCounted {
    fn drop(&mut self) {
        self.0.inc();
    }
}

/// Where a catch-up reads from.
struct Source {
    /// The lane's position: the catch-up yields the lines after it.
    from: Cursor,
    /// The lane's spill, when it holds every line after `from`: read first.
    spill: Option<SpillSnapshot>,
    /// Docker still has the container: read it after the spill.
    docker: bool,
}

/// Read the container's log after `source.from` for one lane (from its spill, then from
/// Docker) and hand it to the container task, waiting for room in the sink's queue
/// before each batch so that the lane does not fill it again at once.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    ctx: Arc<AgentContext>,
    container: DockerContainer,
    source: Source,
    (lane, generation): (u64, u64),
    queue: SinkQueue,
    out: mpsc::Sender<CatchMsg>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    ctx.metrics.catchup_streams.inc();
    let _streaming = Streaming(ctx.metrics.catchup_streams.clone());
    let (tx, rx) = mpsc::channel::<Vec<LogLine>>(1);
    let read = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        async move {
            // `tx` is dropped when the read ends, which ends `forward`.
            let mut from = source.from;
            if let Some(spill) = source.spill {
                let tx = tx.clone();
                let start = from;
                match tokio::task::spawn_blocking(move || spill.send_after(start, &tx)).await {
                    Ok(at) => from = furthest(from, &at),
                    Err(e) => tracing::error!(error = %e, "spill reader failed"),
                }
            }
            if stop.is_cancelled() {
                return Ok(from);
            }
            if !source.docker {
                return Err(DockerError::ContainerGone {
                    container: container.name.clone(),
                });
            }
            // `follow` counts itself in `containers_followed`; a catch-up reads a
            // container that its shared reader already counts, so it takes itself out.
            ctx.metrics.containers_followed.dec();
            let _not_counted = NotCounted(ctx.metrics.containers_followed.clone());
            docker::follow(
                &ctx.docker,
                &container,
                Some(from),
                &ctx.read,
                &tx,
                &ctx.metrics,
                &stop,
            )
            .await
        }
    };
    // Ok(true): the queue stayed full for CATCHUP_STALL; the read is stopped. It owns the
    // receiver, so that a spill reader blocked on a send ends once it returns.
    let forward = async {
        let mut rx = rx;
        while let Some(lines) = rx.recv().await {
            if stop.is_cancelled() {
                return false;
            }
            let entries = lines.len() + 1;
            let bytes = lines
                .iter()
                .map(|l| l.message.len() + ENTRY_OVERHEAD)
                .sum::<usize>();
            let stalled = Instant::now() + CATCHUP_STALL;
            while !queue.has_room(entries, bytes) {
                if Instant::now() >= stalled {
                    stop.cancel();
                    return true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stop.cancelled() => return false,
                }
            }
            let msg = CatchMsg::Lines {
                lane,
                generation,
                lines,
            };
            if out.send(msg).await.is_err() {
                return false;
            }
        }
        false
    };
    let (result, stalled) = tokio::join!(read, forward);
    if stalled {
        let _ = out.send(CatchMsg::Paused { lane, generation }).await;
        return;
    }
    let _ = out
        .send(CatchMsg::Ended {
            lane,
            generation,
            result,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 0 }
    }

    #[test]
    fn a_new_lane_starts_at_the_later_of_the_containers_run_and_the_routes_creation() {
        let first_start = Cursor::default();
        let now = Cursor::at(t(5_000));
        // Route created after the container started: from the route's creation.
        assert_eq!(
            new_lane_start(first_start, now, Some(t(1_000)), Some(t(2_000))),
            Cursor::at(t(2_000))
        );
        // Container started after the route: from the container's start (less 1 s).
        assert_eq!(
            new_lane_start(first_start, now, Some(t(3_000)), Some(t(2_000))),
            Cursor::at(t(2_999))
        );
        // After a clean restart, never before the restart floor.
        let floor = Cursor::at(t(4_000));
        assert_eq!(
            new_lane_start(floor, floor, Some(t(1_000)), Some(t(2_000))),
            floor
        );
        // Routes from files carry no creation time: the agent's start point.
        assert_eq!(new_lane_start(first_start, now, Some(t(1_000)), None), now);
        assert_eq!(
            new_lane_start(first_start, now, Some(t(6_000)), None),
            Cursor::at(t(5_999))
        );
    }
}
