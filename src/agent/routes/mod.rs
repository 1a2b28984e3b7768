//! The route table: compiled routes with their sink workers, rebuilt live when routes
//! change, and the two places routes come from (LogRoute files on a plain Docker host, or
//! the controller's compiled ConfigMaps in a cluster).
//!
//! A route whose document did not change keeps its sink workers (and their queues and
//! connections) across updates; when only its credentials changed, the workers get the
//! new ones and use them from their next attempt, so a batch held back by a wrong
//! password is sent once the Secret is fixed. A route whose document changed gets new
//! workers and the old ones stop: they start no new send (a send in flight ends first),
//! and what they had queued is not sent with the old settings (say, to an address the
//! user just corrected) but re-read by each lane from its checkpoint and sent with the
//! new ones. Lanes re-claim their checkpoints only once the old workers have ended, so
//! nothing is stranded and nothing repeated. A route that leaves the table stops its
//! workers the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::docker::parse_timestamp;
use crate::metrics::AgentMetrics;
use crate::record::Timestamp;
use crate::route::CompiledRoute;
use crate::route::matcher::{Filtered, RouteMatcher};
use crate::sink::worker::{self, QueueBounds, QueueBytes, SinkQueue};
use crate::sink::{Credentials, SinkContext};

/// A compiled route and the credentials its sinks need.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteInput {
    pub document: CompiledRoute,
    pub credentials: Credentials,
}

/// One sink of an active route: its queue and the route's pre-resolved counter.
pub struct SinkHandle {
    pub name: String,
    pub queue: SinkQueue,
    pub routed: IntCounter,
    /// Lanes of this sink that fell behind (`logroute_agent_lanes_detached`).
    pub detached: IntGauge,
    /// The earliest log position a new lane of this sink may start at: the route's
    /// creation for sinks the route had when the agent first saw it, the time the agent
    /// saw the edit for sinks added later. `None`: the agent's default start point
    /// (routes compiled from files carry no creation time).
    pub since: Option<Timestamp>,
}

/// A route in force, with its sink queues.
pub struct ActiveRoute {
    pub key: String,
    pub matcher: RouteMatcher,
    pub sinks: Vec<SinkHandle>,
    filtered: [IntCounter; 3],
    /// The route's credentials, watched by its sink workers.
    credentials: watch::Sender<Arc<Credentials>>,
    /// Cancelled when the route leaves the table: its workers stop at once (what they
    /// had queued is re-read from the lanes' checkpoints if the route comes back).
    stop: CancellationToken,
    /// This version's sink workers (closed once they are spawned).
    workers: TaskTracker,
}

impl ActiveRoute {
    /// A route over ready sink handles; its filter counters are registered in `metrics`.
    pub fn new(
        key: &str,
        matcher: RouteMatcher,
        sinks: Vec<SinkHandle>,
        metrics: &AgentMetrics,
    ) -> Self {
        let filtered = [Filtered::Stream, Filtered::Include, Filtered::Exclude].map(|f| {
            metrics
                .records_filtered
                .with_label_values(&[key, f.as_str()])
        });
        ActiveRoute {
            key: key.to_string(),
            matcher,
            sinks,
            filtered,
            credentials: watch::Sender::new(Arc::default()),
            stop: CancellationToken::new(),
            workers: closed_tracker(),
        }
    }

    /// Resolves once this version's sink workers have ended, after the route left the
    /// table or was replaced: from then on no acknowledgement of theirs can move a lane's
    /// checkpoint, so lanes may re-claim their checkpoints and resume from them.
    pub async fn retired(&self) {
        self.workers.wait().await
    }

    pub fn filtered(&self, why: Filtered) -> &IntCounter {
        &self.filtered[why as usize]
    }
}

/// The routes in force, shared with every container task through a `watch` channel.
#[derive(Default)]
pub struct RouteTable {
    pub routes: Vec<Arc<ActiveRoute>>,
}

impl RouteTable {
    /// Records waiting in all sink queues.
    pub fn queued(&self) -> usize {
        self.routes
            .iter()
            .flat_map(|r| &r.sinks)
            .map(|s| s.queue.len())
            .sum()
    }

    /// Give each (route, sink) queue its share of the agent's byte budget: `budget`
    /// split evenly, but never less than `floor` (one line of the longest length the
    /// agent keeps whole, so any line can wait in any queue).
    fn share_budget(&self, budget: usize, floor: usize) -> usize {
        let queues = self.routes.iter().map(|r| r.sinks.len()).sum::<usize>();
        let share = (budget / queues.max(1)).max(floor);
        for sink in self.routes.iter().flat_map(|r| &r.sinks) {
            sink.queue.set_limit(share);
        }
        share
    }
}

fn closed_tracker() -> TaskTracker {
    let t = TaskTracker::new();
    t.close();
    t
}

/// How long after a route's removal its series are removed a second time.
const SERIES_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Settings for building sink workers.
#[derive(Clone)]
pub struct SinkSettings {
    pub metrics: AgentMetrics,
    pub node: String,
    pub queue_records: usize,
    /// The agent's budget for queued records, in bytes, shared by every (route, sink)
    /// queue (`--queue-bytes`), and the least share of one queue.
    pub queue_bytes: usize,
    pub queue_floor: usize,
    pub stop: CancellationToken,
    /// Every sink worker, so that shutdown can wait for them before the final sync.
    pub workers: TaskTracker,
}

/// Owns the table and publishes a new one on every change.
pub struct RouteTableManager {
    current: BTreeMap<String, (RouteInput, Arc<ActiveRoute>)>,
    rejected: usize,
    tx: watch::Sender<Arc<RouteTable>>,
    /// Turns true at the first [`RouteTableManager::apply`]: the source has read all its
    /// routes once (cluster: both initial lists; files: every file tried once).
    synced: watch::Sender<bool>,
    settings: SinkSettings,
}

impl RouteTableManager {
    pub fn new(settings: SinkSettings) -> (Self, watch::Receiver<Arc<RouteTable>>) {
        let (tx, rx) = watch::channel(Arc::new(RouteTable::default()));
        (
            Self {
                current: BTreeMap::new(),
                rejected: 0,
                tx,
                synced: watch::Sender::new(false),
                settings,
            },
            rx,
        )
    }

    /// Turns true once the first complete set of routes was applied.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Replace the set of routes. Unchanged routes keep their workers; a route whose
    /// sinks cannot be built (say, a CA that is not PEM) is rejected alone, loudly, and
    /// its last good version stays in force. A route that left the set stops its workers
    /// and loses its metric series.
    pub fn apply(&mut self, inputs: BTreeMap<String, RouteInput>) {
        let mut next = BTreeMap::new();
        let mut rejected = 0;
        let mut replaced = Vec::new();
        for (key, input) in inputs {
            let previous = self.current.remove(&key);
            if let Some((old, active)) = &previous {
                if *old == input {
                    next.insert(key, previous.expect("just matched"));
                    continue;
                }
                if old.document == input.document {
                    tracing::info!(route = %key, "route credentials changed; its sinks take the new ones");
                    active
                        .credentials
                        .send_replace(Arc::new(input.credentials.clone()));
                    let active = active.clone();
                    next.insert(key, (input, active));
                    continue;
                }
            }
            match self.build(&key, &input, previous.as_ref().map(|(_, a)| a.as_ref())) {
                Ok(active) => {
                    tracing::info!(route = %key, sinks = active.sinks.len(), "route active");
                    if let Some((_, old)) = &previous {
                        // Edited: the old workers stop; lanes resume from their
                        // checkpoints with the new version (see the container task).
                        replaced.push(old.clone());
                    }
                    next.insert(key, (input, Arc::new(active)));
                }
                Err(e) => {
                    rejected += 1;
                    match previous {
                        Some(kept) => {
                            tracing::error!(route = %key, error = %e, "route edit rejected; its previous version stays in force — fix the LogRoute");
                            next.insert(key, kept);
                        }
                        None => {
                            tracing::error!(route = %key, error = %e, "route rejected; fix the LogRoute")
                        }
                    }
                }
            }
        }
        let removed = std::mem::take(&mut self.current);
        self.current = next;
        self.rejected = rejected;
        let m = &self.settings.metrics;
        m.routes_loaded
            .with_label_values(&["active"])
            .set(self.current.len() as i64);
        m.routes_loaded
            .with_label_values(&["rejected"])
            .set(rejected as i64);
        // Old workers are told to stop before the lanes hear of the change; each lane
        // waits for them to end (`ActiveRoute::retired`) before it claims its checkpoint.
        for old in replaced {
            old.stop.cancel();
        }
        for (key, (_, active)) in &removed {
            tracing::info!(route = %key, "route removed; its sink workers stop");
            active.stop.cancel();
        }
        let routes = self.current.values().map(|(_, a)| a.clone()).collect();
        let table = RouteTable { routes };
        let share = table.share_budget(self.settings.queue_bytes, self.settings.queue_floor);
        tracing::debug!(share, "queue byte limit of each (route, sink)");
        self.tx.send_replace(Arc::new(table));
        self.synced.send_replace(true);
        for (key, _) in removed {
            self.forget_series(key);
        }
    }

    /// Remove a removed route's metric series now, and again once its workers had time
    /// to leave a send in flight (which may count one more error), unless the route came
    /// back meanwhile.
    fn forget_series(&self, key: String) {
        let metrics = self.settings.metrics.clone();
        metrics.forget_route(&key);
        let table = self.tx.subscribe();
        tokio::spawn(async move {
            tokio::time::sleep(SERIES_LINGER).await;
            if !table.borrow().routes.iter().any(|r| r.key == key) {
                metrics.forget_route(&key);
            }
        });
    }

    /// Build a route's matcher and sink workers. `previous` is the version it replaces.
    fn build(
        &self,
        key: &str,
        input: &RouteInput,
        previous: Option<&ActiveRoute>,
    ) -> Result<ActiveRoute, String> {
        let stop = self.settings.stop.child_token();
        let created = input
            .document
            .route
            .created
            .as_deref()
            .and_then(|c| parse_timestamp(c.as_bytes()));
        let matcher =
            RouteMatcher::new(input.document.clone()).map_err(|e| format!("bad pattern: {e}"))?;
        let credentials = Arc::new(input.credentials.clone());
        let (credentials_tx, credentials_rx) = watch::channel(credentials.clone());
        let m = &self.settings.metrics;
        let mut sinks = Vec::new();
        let workers = TaskTracker::new();
        for sink in &input.document.sinks {
            let ctx = SinkContext {
                route: key.to_string(),
                sink: sink.name.clone(),
                metrics: m.clone(),
                credentials: credentials.clone(),
                node: self.settings.node.clone(),
            };
            let bytes = Arc::new(QueueBytes::new(
                self.settings.queue_bytes,
                Some(m.queue_bytes.with_label_values(&[key, &sink.name])),
            ));
            let queue = worker::spawn(
                &self.settings.workers,
                &workers,
                sink,
                ctx,
                credentials_rx.clone(),
                QueueBounds {
                    records: self.settings.queue_records,
                    bytes,
                },
                stop.clone(),
            )
            .map_err(|e| {
                stop.cancel();
                format!("sink {}: {e}", sink.name)
            })?;
            let since = match previous {
                None => created,
                Some(p) => match p.sinks.iter().find(|s| s.name == sink.name) {
                    Some(kept) => kept.since,
                    None => Some(Timestamp::now()),
                },
            };
            sinks.push(SinkHandle {
                name: sink.name.clone(),
                queue,
                routed: m.records_routed.with_label_values(&[key, &sink.name]),
                detached: m.lanes_detached.with_label_values(&[key, &sink.name]),
                since,
            });
        }
        let mut route = ActiveRoute::new(key, matcher, sinks, m);
        route.credentials = credentials_tx;
        route.stop = stop;
        workers.close();
        route.workers = workers;
        Ok(route)
    }
}

mod cluster;
mod files;

pub use cluster::watch_cluster;
pub use files::{DirSecrets, load_file, watch_files};

#[cfg(test)]
mod tests;
