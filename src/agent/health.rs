//! Route health as this node's agent sees it, served as JSON on `/routes` (the metrics
//! port) for the controller, which sums every node's report into each LogRoute's status.
//!
//! Why a pull of a small report rather than agents writing status: agents get no write
//! access to anything tenants own, a report is attributed by the controller to the node
//! its pod runs on (so one bad agent can only misreport its own node), and the controller
//! alone decides how often the API is written.
//!
//! The report is built from the agent's own metrics, sampled every [`SAMPLE_EVERY`]:
//! counts over the last [`WINDOW`] are differences between the newest sample and the
//! oldest one inside the window. A sink's last success is the sample at which its
//! `records_sent` grew (so it is exact to [`SAMPLE_EVERY`]); it is failing from the first
//! sample at which its `send_errors` grew while nothing was accepted, until a sample at
//! which records were accepted again. Error text is the error's metric reason (`connect`,
//! `tls`, `auth`, ...): bounded, and by construction free of credentials and message
//! content. Nothing here touches the sink workers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::checkpoint::Checkpoints;
use super::routes::RouteTable;
use crate::http::Readiness;
use crate::metrics::AgentMetrics;

/// Version of the `/routes` document; the controller ignores reports of another version.
pub const REPORT_VERSION: u32 = 1;
/// Path of the report on the agent's metrics port.
pub const REPORT_PATH: &str = "/routes";
/// How often the metrics are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window counts cover.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Send-error reasons that say nothing about the sink (the agent is stopping).
const IGNORED_ERRORS: &[&str] = &["shutdown"];

/// What one agent reports: every route in its table, every sink of each.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub version: u32,
    /// The node the agent says it runs on (informative only: the controller attributes a
    /// report to the node of the pod it polled).
    pub node: String,
    pub window_seconds: u64,
    pub routes: Vec<RouteReport>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteReport {
    /// `namespace/name`.
    pub route: String,
    pub sinks: Vec<SinkReport>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkReport {
    pub sink: String,
    /// `syslog`, `elasticsearch`, `stdout`; empty until the sink has sent or failed once.
    #[serde(default)]
    pub kind: String,
    /// Records accepted during the window.
    pub delivered: u64,
    /// Records dropped during the window, by reason.
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
    /// Failed send attempts during the window, by reason.
    #[serde(default)]
    pub send_errors: BTreeMap<String, u64>,
    /// Containers whose logs this node delivers to the sink now.
    pub lanes: u32,
    /// Records waiting in the sink's queue.
    #[serde(default)]
    pub queued: i64,
    /// Newest line read minus newest line accepted, worst container, in seconds.
    pub lag_seconds: f64,
    #[serde(default)]
    pub last_success: Option<DateTime<Utc>>,
    /// Set while the sink is failing: since when.
    #[serde(default)]
    pub failing_since: Option<DateTime<Utc>>,
    /// Reason of the most recent failed send (a bounded metric label).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Cumulative counts of one (route, sink) at one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub kind: String,
    pub sent: u64,
    pub dropped: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

/// Current values of one (route, sink) at one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gauges {
    pub lanes: u32,
    pub queued: i64,
    pub lag_seconds: f64,
}

/// `(route, sink)`.
pub type SinkKey = (String, String);

/// One sampling of the metrics and the route table.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub totals: HashMap<SinkKey, Totals>,
    pub gauges: HashMap<SinkKey, Gauges>,
    /// Routes in force and their sinks, in table order.
    pub routes: Vec<(String, Vec<String>)>,
}

#[derive(Clone, Debug, Default)]
struct SinkState {
    last_success: Option<DateTime<Utc>>,
    failing_since: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

/// The pure part: samples in, report out.
pub struct Tracker {
    node: String,
    window: Duration,
    samples: VecDeque<(Instant, HashMap<SinkKey, Totals>)>,
    state: HashMap<SinkKey, SinkState>,
}

/// `new - old` per key of `new` (a key `old` lacks, or a counter that went backwards
/// because the route was removed and came back, counts from zero).
fn delta(
    new: &BTreeMap<String, u64>,
    old: Option<&BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    new.iter()
        .map(|(k, &v)| {
            let before = old.and_then(|o| o.get(k)).copied().unwrap_or(0);
            (k.clone(), if v >= before { v - before } else { v })
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

impl Tracker {
    pub fn new(node: String, window: Duration) -> Self {
        Self {
            node,
            window,
            samples: VecDeque::new(),
            state: HashMap::new(),
        }
    }

    /// Take one sample taken at `at` (monotonic) / `now` (wall clock) and return the
    /// report as of it.
    pub fn observe(&mut self, at: Instant, now: DateTime<Utc>, obs: Observation) -> NodeReport {
        let previous = self.samples.back().map(|(_, t)| t);
        for (key, totals) in &obs.totals {
            let before = previous.and_then(|p| p.get(key));
            let sent_grew = totals.sent > before.map_or(0, |b| b.sent);
            let mut errors = delta(&totals.errors, before.map(|b| &b.errors));
            errors.retain(|reason, _| !IGNORED_ERRORS.contains(&reason.as_str()));
            let state = self.state.entry(key.clone()).or_default();
            if sent_grew {
                state.last_success = Some(now);
                state.failing_since = None;
            } else if let Some((reason, _)) = errors.iter().max_by_key(|(_, n)| **n) {
                state.failing_since.get_or_insert(now);
                state.last_error = Some(reason.clone());
            }
        }
        self.state.retain(|key, _| obs.totals.contains_key(key));
        self.samples.push_back((at, obs.totals.clone()));
        // Keep the newest sample at or before the window's start as the baseline.
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| at.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
        // An agent younger than the window counts from zero: all it did is in the window.
        let empty = HashMap::new();
        let oldest = match self.samples.front() {
            Some((t, totals)) if at.duration_since(*t) >= self.window => Some(totals),
            _ => Some(&empty),
        };
        let mut routes = Vec::new();
        for (route, sinks) in &obs.routes {
            let mut reports = Vec::new();
            for sink in sinks {
                let key = (route.clone(), sink.clone());
                let totals = obs.totals.get(&key).cloned().unwrap_or_default();
                let first = oldest.and_then(|o| o.get(&key));
                let delivered = match first {
                    Some(f) if totals.sent >= f.sent => totals.sent - f.sent,
                    _ => totals.sent,
                };
                let gauges = obs.gauges.get(&key).cloned().unwrap_or_default();
                let state = self.state.get(&key).cloned().unwrap_or_default();
                reports.push(SinkReport {
                    sink: sink.clone(),
                    kind: totals.kind.clone(),
                    delivered,
                    dropped: delta(&totals.dropped, first.map(|f| &f.dropped)),
                    send_errors: delta(&totals.errors, first.map(|f| &f.errors)),
                    lanes: gauges.lanes,
                    queued: gauges.queued,
                    lag_seconds: gauges.lag_seconds,
                    last_success: state.last_success,
                    failing_since: state.failing_since,
                    last_error: state.last_error,
                });
            }
            routes.push(RouteReport {
                route: route.clone(),
                sinks: reports,
            });
        }
        NodeReport {
            version: REPORT_VERSION,
            node: self.node.clone(),
            window_seconds: self.window.as_secs(),
            routes,
        }
    }
}

/// Each series of `vec` as (labels, value).
fn series<C: Collector>(vec: &C) -> Vec<(HashMap<String, String>, f64)> {
    let mut out = Vec::new();
    for family in vec.collect() {
        let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
        for m in family.get_metric() {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let value = if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            out.push((labels, value));
        }
    }
    out
}

fn key_of(labels: &HashMap<String, String>) -> Option<SinkKey> {
    Some((labels.get("route")?.clone(), labels.get("sink")?.clone()))
}

/// Read the metrics, lanes and route table into an [`Observation`].
pub fn observe(
    metrics: &AgentMetrics,
    checkpoints: &Checkpoints,
    table: &RouteTable,
) -> Observation {
    let mut obs = Observation::default();
    for (labels, v) in series(&metrics.records_sent) {
        if let Some(key) = key_of(&labels) {
            let t = obs.totals.entry(key).or_default();
            t.sent += v as u64;
            t.kind = labels.get("kind").cloned().unwrap_or_default();
        }
    }
    for (labels, v) in series(&metrics.send_errors) {
        if let (Some(key), Some(reason)) = (key_of(&labels), labels.get("reason")) {
            let t = obs.totals.entry(key).or_default();
            *t.errors.entry(reason.clone()).or_default() += v as u64;
            if t.kind.is_empty() {
                t.kind = labels.get("kind").cloned().unwrap_or_default();
            }
        }
    }
    for (labels, v) in series(&metrics.records_dropped) {
        if let (Some(key), Some(reason)) = (key_of(&labels), labels.get("reason")) {
            let t = obs.totals.entry(key).or_default();
            *t.dropped.entry(reason.clone()).or_default() += v as u64;
        }
    }
    for (labels, v) in series(&metrics.queue_depth) {
        if let Some(key) = key_of(&labels) {
            obs.gauges.entry(key).or_default().queued = v as i64;
        }
    }
    for (key, lag) in checkpoints.lag_seconds() {
        obs.gauges.entry(key).or_default().lag_seconds = lag;
    }
    for (key, n) in checkpoints.lanes_per_sink() {
        obs.gauges.entry(key).or_default().lanes = n;
    }
    obs.routes = table
        .routes
        .iter()
        .map(|r| {
            (
                r.key.clone(),
                r.sinks.iter().map(|s| s.name.clone()).collect(),
            )
        })
        .collect();
    obs
}

/// The latest report, shared with the HTTP handler.
#[derive(Clone, Default)]
pub struct Reports(Arc<Mutex<NodeReport>>);

impl Reports {
    pub fn latest(&self) -> NodeReport {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, report: NodeReport) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }

    /// The `/routes` handler, to merge into the metrics server.
    pub fn router(&self) -> axum::Router {
        let reports = self.clone();
        axum::Router::new().route(
            REPORT_PATH,
            axum::routing::get(move || {
                let body =
                    serde_json::to_string(&reports.latest()).expect("a report serializes to JSON");
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        )
    }
}

/// Sample every [`SAMPLE_EVERY`] until `stop` (and publish `logroute_agent_ready`).
pub fn spawn(
    node: String,
    metrics: AgentMetrics,
    checkpoints: Arc<Checkpoints>,
    routes: watch::Receiver<Arc<RouteTable>>,
    ready: Readiness,
    stop: CancellationToken,
) -> Reports {
    let reports = Reports::default();
    let out = reports.clone();
    tokio::spawn(async move {
        let mut tracker = Tracker::new(node, WINDOW);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            metrics.ready.set(i64::from(ready.get()));
            let table = routes.borrow().clone();
            let obs = observe(&metrics, &checkpoints, &table);
            out.set(tracker.observe(Instant::now(), Utc::now(), obs));
        }
    });
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(r: &str, s: &str) -> SinkKey {
        (r.to_string(), s.to_string())
    }

    fn obs(sent: u64, errors: u64, dropped: u64) -> Observation {
        let mut o = Observation {
            routes: vec![("ns/r".into(), vec!["central".into(), "idle".into()])],
            ..Default::default()
        };
        let mut t = Totals {
            kind: "syslog".into(),
            sent,
            ..Default::default()
        };
        if errors > 0 {
            t.errors.insert("connect".into(), errors);
        }
        if dropped > 0 {
            t.dropped.insert("rotated".into(), dropped);
        }
        o.totals.insert(key("ns/r", "central"), t);
        o.gauges.insert(
            key("ns/r", "central"),
            Gauges {
                lanes: 2,
                queued: 5,
                lag_seconds: 1.5,
            },
        );
        o
    }

    #[test]
    fn counts_over_the_window_failing_and_recovery() {
        let start = Instant::now();
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: u64| start + Duration::from_secs(s);
        let wall = |s: i64| t0 + chrono::Duration::seconds(s);
        let mut tr = Tracker::new("n1".into(), Duration::from_secs(60));

        let r = tr.observe(at(0), wall(0), obs(100, 0, 0));
        let s = &r.routes[0].sinks[0];
        assert_eq!((s.delivered, s.lanes, s.queued), (100, 2, 5));
        assert_eq!(s.last_success, Some(wall(0)));
        assert_eq!(
            r.routes[0].sinks[1].lanes, 0,
            "a sink without lanes is idle"
        );

        let r = tr.observe(at(30), wall(30), obs(150, 3, 0));
        let s = &r.routes[0].sinks[0];
        assert_eq!(
            s.delivered, 150,
            "an agent younger than the window counts from zero"
        );
        assert_eq!(
            s.failing_since, None,
            "records were accepted in this sample too"
        );

        let r = tr.observe(at(40), wall(40), obs(150, 7, 2));
        let s = &r.routes[0].sinks[0];
        assert_eq!(s.failing_since, Some(wall(40)));
        assert_eq!(s.last_error.as_deref(), Some("connect"));
        assert_eq!(s.send_errors.get("connect"), Some(&7));
        assert_eq!(s.dropped.get("rotated"), Some(&2));
        assert_eq!(s.last_success, Some(wall(30)));

        let r = tr.observe(at(50), wall(50), obs(150, 9, 2));
        assert_eq!(
            r.routes[0].sinks[0].failing_since,
            Some(wall(40)),
            "since stays"
        );

        // The first sample is the newest at or before the window's start: the baseline.
        let r = tr.observe(at(80), wall(80), obs(170, 9, 2));
        let s = &r.routes[0].sinks[0];
        assert_eq!(s.failing_since, None, "records accepted again clear it");
        assert_eq!(s.delivered, 70);
        assert_eq!(s.send_errors.get("connect"), Some(&9));
        assert_eq!(s.last_success, Some(wall(80)));

        // Now the 40 s sample is: 30 s and 0 s are gone.
        let r = tr.observe(at(100), wall(100), obs(180, 9, 2));
        let s = &r.routes[0].sinks[0];
        assert_eq!(s.delivered, 30);
        assert_eq!(s.send_errors.get("connect"), Some(&2));
        assert!(s.dropped.is_empty(), "{:?}", s.dropped);
    }

    #[test]
    fn shutdown_errors_do_not_make_a_sink_failing() {
        let mut tr = Tracker::new("n1".into(), WINDOW);
        let now = Utc::now();
        tr.observe(Instant::now(), now, obs(1, 0, 0));
        let mut o = obs(1, 0, 0);
        o.totals
            .get_mut(&key("ns/r", "central"))
            .unwrap()
            .errors
            .insert("shutdown".into(), 1);
        let r = tr.observe(Instant::now(), now, o);
        assert_eq!(r.routes[0].sinks[0].failing_since, None);
    }
}
