//! Route delivery health in each LogRoute's status: the `Delivering` condition and
//! `status.health`, from the agents' reports.
//!
//! Design (issue 15): a pull model. Every agent serves what it sees of each route on its
//! metrics port (`/routes`, see [`crate::agent::health`]). The leader finds the agent pods
//! by label in its own namespace, polls each every `--health-poll-ms` with bounded
//! concurrency, and attributes each report to the node its pod is scheduled on, so a bad
//! agent can only misreport its own node. A node whose agent has not answered for
//! `--health-stale-seconds` is forgotten. Agents get no new permission at all.
//!
//! Writes are bounded and skipped when nothing changed: after each poll round the health
//! each route should show is compared with what its status shows; routes that differ
//! are queued, and one writer patches them at most `--status-writes-per-second` in total,
//! whatever the number of nodes or routes. A change of the condition or of a sink's state
//! goes first and at once; a change of counts alone is written at most every
//! `--health-refresh-seconds` per route.
//!
//! The status has one writer identity (the controller's field manager): a reconcile keeps
//! the health part it finds (see [`super::status::desired`]) and this writer keeps the
//! rest, each patching the whole status.

pub mod agents;
pub mod aggregate;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::index::RouteKey;
use super::status::{self, DELIVERING};
use super::{Guarded, RouteMetaApi};
use crate::api::{LogRoute, LogRouteStatus, RouteHealth};
use crate::metrics::ControllerMetrics;
use aggregate::{Delivering, Fleet};

/// `logroute controller` flags of the health reports.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthArgs {
    /// Label selector of the agent pods in the operator namespace.
    #[arg(
        long,
        env = "LOGROUTE_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/component=agent"
    )]
    pub agent_selector: String,
    /// Port of the agents' `/routes` report when the pod names no `metrics` port.
    #[arg(long, env = "LOGROUTE_AGENT_PORT", default_value_t = 9091)]
    pub agent_port: u16,
    /// Time between two polls of every agent.
    #[arg(long, env = "LOGROUTE_HEALTH_POLL_MS", default_value_t = 15_000)]
    pub health_poll_ms: u64,
    /// A node whose agent has not answered for this long no longer counts.
    #[arg(long, env = "LOGROUTE_HEALTH_STALE_SECONDS", default_value_t = 60)]
    pub health_stale_seconds: u64,
    /// Agents polled at once.
    #[arg(long, env = "LOGROUTE_HEALTH_CONCURRENCY", default_value_t = 32)]
    pub health_concurrency: usize,
    /// Most LogRoute status writes per second for health, all routes together.
    #[arg(long, env = "LOGROUTE_STATUS_WRITES_PER_SECOND", default_value_t = 2.0)]
    pub status_writes_per_second: f64,
    /// Shortest time between two writes of one route whose counts alone changed.
    #[arg(long, env = "LOGROUTE_HEALTH_REFRESH_SECONDS", default_value_t = 60)]
    pub health_refresh_seconds: u64,
    /// A sink further behind than this is `Lagging`.
    #[arg(long, env = "LOGROUTE_LAG_THRESHOLD_SECONDS", default_value_t = 60)]
    pub lag_threshold_seconds: u64,
}

impl HealthArgs {
    fn poll(&self) -> Duration {
        Duration::from_millis(self.health_poll_ms.max(100))
    }

    fn write_gap(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.status_writes_per_second.clamp(0.01, 1000.0))
    }
}

/// The status `route` should show with `health` and `delivering` in it; `None` when the
/// route is not Ready (its health is the reconcile's to remove).
pub fn with_health(
    current: &LogRouteStatus,
    health: Option<RouteHealth>,
    delivering: &Delivering,
) -> Option<LogRouteStatus> {
    let ready = status::ready_condition(current)?;
    if ready.status != "True" {
        return None;
    }
    let previous = current.conditions.iter().find(|c| c.type_ == DELIVERING);
    let last_transition_time = match previous {
        Some(c) if c.status == delivering.status => c.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let mut conditions: Vec<Condition> = current
        .conditions
        .iter()
        .filter(|c| c.type_ != DELIVERING)
        .cloned()
        .collect();
    conditions.push(Condition {
        type_: DELIVERING.to_string(),
        status: delivering.status.to_string(),
        reason: delivering.reason.to_string(),
        message: status::truncate(&delivering.message, 4096),
        observed_generation: ready.observed_generation,
        last_transition_time,
    });
    Some(LogRouteStatus {
        conditions,
        health,
        ..current.clone()
    })
}

/// `status` with the health part (`health`, the `Delivering` condition) of `from`.
fn with_health_of(status: &LogRouteStatus, from: &LogRouteStatus) -> LogRouteStatus {
    let mut conditions: Vec<Condition> = status
        .conditions
        .iter()
        .filter(|c| c.type_ != DELIVERING)
        .cloned()
        .collect();
    conditions.extend(
        from.conditions
            .iter()
            .filter(|c| c.type_ == DELIVERING)
            .cloned(),
    );
    LogRouteStatus {
        conditions,
        health: from.health.clone(),
        ..status.clone()
    }
}

/// Whether going from `current` to `desired` changes more than counts (condition, a
/// sink's state or error, the nodes): such a write goes first and is not held back.
pub fn urgent(current: &LogRouteStatus, desired: &LogRouteStatus) -> bool {
    let condition = |s: &LogRouteStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == DELIVERING)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let shape = |s: &LogRouteStatus| {
        s.health.as_ref().map(|h| {
            (
                h.nodes,
                h.sinks_delivering.clone(),
                h.sinks
                    .iter()
                    .map(|s| (s.name.clone(), s.state.clone(), s.error.clone()))
                    .collect::<Vec<_>>(),
            )
        })
    };
    condition(current) != condition(desired) || shape(current) != shape(desired)
}

/// The route's sinks as (name, kind), in spec order.
fn spec_sinks(route: &LogRoute) -> Vec<(String, String)> {
    route
        .spec
        .sinks
        .iter()
        .map(|s| {
            let kind = if s.syslog.is_some() {
                "syslog"
            } else if s.elasticsearch.is_some() {
                "elasticsearch"
            } else {
                "stdout"
            };
            (s.name.clone(), kind.to_string())
        })
        .collect()
}

struct Shared {
    fleet: Mutex<Fleet>,
    /// Last health write per route: when (for the refresh limit), and what.
    written: Mutex<HashMap<RouteKey, (Instant, LogRouteStatus)>>,
}

/// How long after a write the status written stands in for a cached object that does
/// not show it yet (the watch event is on its way), so it is not written twice.
const UNSEEN_WRITE: Duration = Duration::from_secs(10);

impl Shared {
    /// The status `route` should show now, from the fleet's reports of it.
    fn desired(&self, route: &LogRoute, args: &HealthArgs) -> Option<Desired> {
        let key = route_key(route)?;
        let written = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let fleet = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
        let reports = fleet.route_reports(&format!("{}/{}", key.namespace, key.name));
        desired(route, key, &reports, &fleet, args, written.as_ref())
    }
}

/// (route, its status now, the status it should show).
type Desired = (RouteKey, LogRouteStatus, LogRouteStatus);

fn route_key(route: &LogRoute) -> Option<RouteKey> {
    Some(RouteKey::new(
        route.metadata.namespace.as_deref()?,
        route.metadata.name.as_deref()?,
    ))
}

/// The status `route` should show given the nodes' `reports` of it; `None` when it is
/// not Ready. `written` is this writer's last write of the route: while the cached
/// object does not show it yet, it is what the status is.
fn desired(
    route: &LogRoute,
    key: RouteKey,
    reports: &[(&str, &crate::agent::health::RouteReport)],
    fleet: &Fleet,
    args: &HealthArgs,
    written: Option<&(Instant, LogRouteStatus)>,
) -> Option<Desired> {
    let cached = route.status.clone().unwrap_or_default();
    let current = match written {
        Some((at, status)) if at.elapsed() < UNSEEN_WRITE => with_health_of(&cached, status),
        _ => cached,
    };
    let (health, delivering) = aggregate::route_health(
        reports,
        &spec_sinks(route),
        fleet.window_seconds(),
        Duration::from_secs(args.lag_threshold_seconds),
        fleet.nodes(),
    );
    let desired = with_health(&current, health, &delivering)?;
    Some((key, current, desired))
}

/// Poll agents and write health until `stop`.
pub async fn run(
    client: Client,
    namespace: String,
    args: HealthArgs,
    routes: Store<Guarded>,
    metrics: ControllerMetrics,
    stop: CancellationToken,
) {
    let (pods, writer) = reflector::store::<Pod>();
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let watch = watcher(
        pod_api,
        watcher::Config::default()
            .labels(&args.agent_selector)
            .any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .for_each(|event| async move {
        if let Err(e) = event {
            warn!(error = %e, "agent pod watch failed; retrying with backoff");
        }
    });
    let shared = Arc::new(Shared {
        fleet: Mutex::default(),
        written: Mutex::default(),
    });
    let pending: Arc<Mutex<Pending>> = Arc::default();
    let wake = Arc::new(tokio::sync::Notify::new());
    let writer = write_loop(
        client,
        args.clone(),
        routes.clone(),
        shared.clone(),
        pending.clone(),
        wake.clone(),
        metrics.clone(),
    );
    let poller = poll_loop(args, pods, routes, shared, pending, wake, metrics);
    info!(%namespace, "route health: polling agent reports");
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = watch => {}
        _ = writer => {}
        _ = poller => {}
    }
}

/// Routes waiting for a write: urgent ones first.
#[derive(Default)]
struct Pending {
    urgent: VecDeque<RouteKey>,
    refresh: VecDeque<RouteKey>,
    queued: HashSet<RouteKey>,
}

impl Pending {
    fn push(&mut self, key: RouteKey, urgent: bool) {
        if urgent {
            if let Some(i) = self.refresh.iter().position(|k| k == &key) {
                self.refresh.remove(i);
            } else if self.queued.contains(&key) {
                return;
            }
            self.urgent.push_back(key.clone());
        } else if !self.queued.contains(&key) {
            self.refresh.push_back(key.clone());
        }
        self.queued.insert(key);
    }

    fn pop(&mut self) -> Option<RouteKey> {
        let key = self
            .urgent
            .pop_front()
            .or_else(|| self.refresh.pop_front())?;
        self.queued.remove(&key);
        Some(key)
    }
}

async fn poll_loop(
    args: HealthArgs,
    pods: Store<Pod>,
    routes: Store<Guarded>,
    shared: Arc<Shared>,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<tokio::sync::Notify>,
    metrics: ControllerMetrics,
) {
    let http = agents::client();
    let timeout = args.poll().min(Duration::from_secs(5));
    let stale = Duration::from_secs(args.health_stale_seconds.max(1));
    let refresh = Duration::from_secs(args.health_refresh_seconds);
    let mut tick = tokio::time::interval(args.poll());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut targets: Vec<agents::Agent> = pods
            .state()
            .iter()
            .filter_map(|p| agents::agent_of(p, args.agent_port))
            .collect();
        targets.sort();
        let results: Vec<_> = futures::stream::iter(targets)
            .map(|agent| {
                let http = &http;
                async move {
                    let report = agents::poll(http, &agent.url, timeout).await;
                    (agent, report)
                }
            })
            .buffer_unordered(args.health_concurrency.max(1))
            .collect()
            .await;
        let now = Instant::now();
        {
            let mut fleet = shared.fleet.lock().unwrap_or_else(|e| e.into_inner());
            for (agent, report) in results {
                match report {
                    Ok(report) => {
                        let result = if fleet.record(&agent.node, report, now) {
                            "ok"
                        } else {
                            "version"
                        };
                        metrics.agent_reports.with_label_values(&[result]).inc();
                    }
                    Err(e) => {
                        metrics.agent_reports.with_label_values(&[e.reason()]).inc();
                        debug!(pod = %agent.pod, node = %agent.node, error = %e, "agent report not read");
                    }
                }
            }
            for node in fleet.age_out(now, stale) {
                info!(%node, "no report from the node's agent for {stale:?}; it no longer counts in route health");
            }
            metrics.agents_reporting.set(fleet.nodes() as i64);
        }
        let written = shared
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut queue = pending.lock().unwrap_or_else(|e| e.into_inner());
        let fleet = shared.fleet.lock().unwrap_or_else(|e| e.into_inner());
        // One pass over the reports for all routes: O(nodes × routes) per round.
        let by_route = fleet.by_route();
        for obj in routes.state() {
            let Ok(route) = &obj.0 else { continue };
            let Some(key) = route_key(route) else {
                continue;
            };
            let name = format!("{}/{}", key.namespace, key.name);
            let reports = by_route.get(name.as_str()).map_or(&[][..], Vec::as_slice);
            let last = written.get(&key);
            let Some((key, current, desired)) = desired(route, key, reports, &fleet, &args, last)
            else {
                continue;
            };
            if desired == current {
                continue;
            }
            let is_urgent = urgent(&current, &desired);
            let due = written
                .get(&key)
                .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= refresh);
            if is_urgent || due {
                queue.push(key, is_urgent);
            }
        }
        drop(by_route);
        drop(fleet);
        let any = !queue.queued.is_empty();
        drop(queue);
        if any {
            wake.notify_one();
        }
    }
}

async fn write_loop(
    client: Client,
    args: HealthArgs,
    routes: Store<Guarded>,
    shared: Arc<Shared>,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<tokio::sync::Notify>,
    metrics: ControllerMetrics,
) {
    let gap = args.write_gap();
    loop {
        wake.notified().await;
        loop {
            let next = pending.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(key) = next else { break };
            let obj = routes.get(&reflector::ObjectRef::new(&key.name).within(&key.namespace));
            let Some(route) = obj.as_deref().and_then(|o| o.0.as_ref().ok()) else {
                continue;
            };
            // Recomputed from the newest object: a reconcile may have written since.
            let Some((key, current, desired)) = shared.desired(route, &args) else {
                continue;
            };
            if desired == current {
                continue;
            }
            let api: RouteMetaApi = Api::namespaced(client.clone(), &key.namespace);
            match status::patch(&api, &key.name, &desired).await {
                Ok(()) => {
                    metrics.health_writes.inc();
                    shared
                        .written
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone(), (Instant::now(), desired.clone()));
                    let delivering = desired.conditions.iter().find(|c| c.type_ == DELIVERING);
                    debug!(route = %key, delivering = ?delivering.map(|c| &c.reason), "route health written");
                }
                Err(e) => {
                    warn!(route = %key, error = %e, "cannot write route health; retried after the next poll")
                }
            }
            tokio::time::sleep(gap).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::status::READY;

    fn ready_status() -> LogRouteStatus {
        LogRouteStatus {
            conditions: vec![Condition {
                type_: READY.into(),
                status: "True".into(),
                reason: "Compiled".into(),
                message: "compiled".into(),
                observed_generation: Some(2),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            sinks: Some("central(syslog)".into()),
            ..Default::default()
        }
    }

    fn delivering(status: &'static str, reason: &'static str) -> Delivering {
        Delivering {
            status,
            reason,
            message: "m".into(),
        }
    }

    #[test]
    fn health_goes_beside_ready_and_keeps_its_transition_time() {
        let first = with_health(&ready_status(), None, &delivering("True", "Delivering")).unwrap();
        assert_eq!(first.conditions.len(), 2);
        assert_eq!(first.conditions[0], ready_status().conditions[0]);
        assert_eq!(first.conditions[1].observed_generation, Some(2));
        let again = with_health(&first, None, &delivering("True", "Delivering")).unwrap();
        assert_eq!(first, again, "same health, same status: nothing to write");
        assert!(!urgent(&first, &again));
        let failing = with_health(&first, None, &delivering("False", "SinkFailing")).unwrap();
        assert!(urgent(&first, &failing));
        let mut not_ready = ready_status();
        not_ready.conditions[0].status = "False".into();
        assert_eq!(
            with_health(&not_ready, None, &delivering("True", "Delivering")),
            None
        );
    }

    #[test]
    fn a_write_not_yet_seen_stands_in_for_the_health_part_only() {
        let written =
            with_health(&ready_status(), None, &delivering("False", "SinkFailing")).unwrap();
        let mut cached = ready_status();
        cached.conditions[0].message = "compiled again".into();
        let base = with_health_of(&cached, &written);
        assert_eq!(
            base.conditions[0].message, "compiled again",
            "Ready is the cache's"
        );
        assert_eq!(
            base.conditions[1].reason, "SinkFailing",
            "Delivering is the write's"
        );
    }

    #[test]
    fn urgent_writes_overtake_refreshes_once() {
        let mut p = Pending::default();
        let (a, b) = (RouteKey::new("ns", "a"), RouteKey::new("ns", "b"));
        p.push(a.clone(), false);
        p.push(b.clone(), false);
        p.push(b.clone(), true);
        p.push(b.clone(), true);
        assert_eq!(p.pop(), Some(b));
        assert_eq!(p.pop(), Some(a));
        assert_eq!(p.pop(), None);
    }
}
