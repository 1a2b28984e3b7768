//! Sum the agents' reports into a route's delivery health and its `Delivering`
//! condition. Pure: reports and the route's sinks in, status parts out.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::agent::health::{NodeReport, REPORT_VERSION, RouteReport};
use crate::api::{RouteHealth, SinkHealth};

/// `Delivering` condition reasons.
pub mod reason {
    pub const DELIVERING: &str = "Delivering";
    pub const SINK_FAILING: &str = "SinkFailing";
    pub const LAGGING: &str = "Lagging";
    pub const NO_MATCHING_CONTAINERS: &str = "NoMatchingContainers";
    pub const NO_REPORTS: &str = "NoReports";
}

/// Sink states in `status.health.sinks[].state`.
pub mod state {
    pub const DELIVERING: &str = "Delivering";
    pub const FAILING: &str = "Failing";
    pub const LAGGING: &str = "Lagging";
    pub const IDLE: &str = "Idle";
}

/// The latest report of every node, by the node its agent pod runs on.
#[derive(Default)]
pub struct Fleet {
    nodes: BTreeMap<String, (Instant, NodeReport)>,
}

impl Fleet {
    /// Keep `report` as `node`'s. Reports of another version are ignored (false).
    pub fn record(&mut self, node: &str, report: NodeReport, at: Instant) -> bool {
        if report.version != REPORT_VERSION {
            return false;
        }
        self.nodes.insert(node.to_string(), (at, report));
        true
    }

    /// Forget nodes that have not reported for `stale`; returns them.
    pub fn age_out(&mut self, now: Instant, stale: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, (at, _))| now.saturating_duration_since(*at) > stale)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            self.nodes.remove(n);
        }
        gone
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The window the reports cover (the first report's; all agents use the same).
    pub fn window_seconds(&self) -> u64 {
        self.nodes
            .values()
            .next()
            .map_or(crate::agent::health::WINDOW.as_secs(), |(_, r)| {
                r.window_seconds
            })
    }

    /// The reports of one route (`namespace/name`), with the node they came from.
    pub fn route_reports(&self, route: &str) -> Vec<(&str, &RouteReport)> {
        self.nodes
            .iter()
            .filter_map(|(node, (_, report))| {
                let r = report.routes.iter().find(|r| r.route == route)?;
                Some((node.as_str(), r))
            })
            .collect()
    }

    /// Each route's reports, with the node they came from.
    pub fn by_route(&self) -> HashMap<&str, Vec<(&str, &RouteReport)>> {
        let mut out: HashMap<&str, Vec<(&str, &RouteReport)>> = HashMap::new();
        for (node, (_, report)) in &self.nodes {
            for route in &report.routes {
                out.entry(route.route.as_str())
                    .or_default()
                    .push((node.as_str(), route));
            }
        }
        out
    }
}

/// The `Delivering` condition's status, reason and message.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivering {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What a send error's reason means, for people.
pub fn error_text(reason: &str) -> String {
    match reason {
        "connect" => "cannot connect to the receiver".into(),
        "timeout" => "connection attempts time out".into(),
        "resolve" => "cannot resolve the receiver's address".into(),
        "tls" => "TLS handshake fails".into(),
        "write" => "writing to the receiver fails".into(),
        "egress_refused" => "the egress policy refuses the receiver's address".into(),
        "config" | "invalid_config" => "the sink's configuration is refused by the agent".into(),
        "tls_config" => "the sink's TLS settings are refused by the agent".into(),
        "auth" => "the server refuses the credentials (401/403)".into(),
        "index_blocked" => "the index is blocked (read-only)".into(),
        "refused" => "the server refuses the requests".into(),
        "unavailable" => "the server is unavailable or overloaded".into(),
        other => format!("sends fail ({other})"),
    }
}

/// `3s`, `4m12s`, `2h5m`.
pub fn duration_text(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn window_text(secs: u64) -> String {
    if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The route's health from the reports of the nodes that know it. `sinks` are the
/// route's sinks (name, kind) in spec order; a reported sink the spec no longer has is
/// left out. `None` reports (no node knows the route yet) gives no health and an Unknown
/// condition.
pub fn route_health(
    reports: &[(&str, &RouteReport)],
    sinks: &[(String, String)],
    window_seconds: u64,
    lag_threshold: Duration,
    reporting_nodes: usize,
) -> (Option<RouteHealth>, Delivering) {
    if reports.is_empty() {
        let message = if reporting_nodes == 0 {
            "no agent has reported to the controller yet".to_string()
        } else {
            format!(
                "none of the {reporting_nodes} reporting agent{} has loaded this route yet",
                plural(reporting_nodes)
            )
        };
        return (
            None,
            Delivering {
                status: "Unknown",
                reason: reason::NO_REPORTS,
                message,
            },
        );
    }
    let threshold = lag_threshold.as_secs_f64();
    let mut out = Vec::new();
    let mut failing_text = Vec::new();
    let mut lagging_text = Vec::new();
    for (name, kind) in sinks {
        let mut h = SinkHealth {
            name: name.clone(),
            kind: kind.clone(),
            ..Default::default()
        };
        let mut lag = 0f64;
        let mut last: Option<DateTime<Utc>> = None;
        let mut failing_since: Option<DateTime<Utc>> = None;
        let mut failing_nodes = 0usize;
        let mut lagging_nodes = 0usize;
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, route) in reports {
            let Some(s) = route.sinks.iter().find(|s| &s.sink == name) else {
                continue;
            };
            if h.kind.is_empty() {
                h.kind = s.kind.clone();
            }
            h.delivered += s.delivered;
            for (r, n) in &s.dropped {
                *h.dropped.entry(r.clone()).or_default() += n;
            }
            h.send_errors += s.send_errors.values().sum::<u64>();
            h.containers += s.lanes;
            lag = lag.max(s.lag_seconds);
            if s.lag_seconds > threshold {
                lagging_nodes += 1;
            }
            last = last.max(s.last_success);
            if let Some(since) = s.failing_since {
                failing_nodes += 1;
                failing_since = Some(failing_since.map_or(since, |f| f.min(since)));
                *reasons
                    .entry(s.last_error.as_deref().unwrap_or("unknown"))
                    .or_default() += 1;
            }
        }
        h.lag_seconds = lag.round() as i64;
        h.last_delivery = last.map(|t| Time(to_jiff(t)));
        h.state = if failing_nodes > 0 {
            state::FAILING
        } else if lagging_nodes > 0 {
            state::LAGGING
        } else if h.containers == 0 {
            state::IDLE
        } else {
            state::DELIVERING
        }
        .to_string();
        if failing_nodes > 0 {
            let (reason, _) = reasons
                .iter()
                .max_by_key(|(_, n)| **n)
                .expect("a failing node has a reason");
            let since = failing_since
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            let error = format!(
                "{} on {failing_nodes} of {} node{} since {since}",
                error_text(reason),
                reports.len(),
                plural(reports.len())
            );
            failing_text.push(format!("{name}: {error}"));
            h.error = Some(error);
        } else if lagging_nodes > 0 {
            lagging_text.push(format!(
                "{name} is more than {} behind on {lagging_nodes} node{}",
                duration_text(threshold as i64),
                plural(lagging_nodes)
            ));
        }
        out.push(h);
    }
    let delivering_sinks = out.iter().filter(|s| s.state == state::DELIVERING).count();
    let worst = out.iter().map(|s| s.lag_seconds).max().unwrap_or(0);
    let health = RouteHealth {
        window: window_text(window_seconds),
        nodes: reports.len() as u32,
        sinks_delivering: format!("{delivering_sinks}/{}", out.len()),
        lag: duration_text(worst),
        sinks: out.clone(),
    };
    let nodes = reports.len();
    let condition = if !failing_text.is_empty() {
        Delivering {
            status: "False",
            reason: reason::SINK_FAILING,
            message: failing_text.join("; "),
        }
    } else if !lagging_text.is_empty() {
        Delivering {
            status: "False",
            reason: reason::LAGGING,
            message: lagging_text.join("; "),
        }
    } else if out.iter().all(|s| s.state == state::IDLE) {
        Delivering {
            status: "False",
            reason: reason::NO_MATCHING_CONTAINERS,
            message: format!(
                "no container on the {nodes} node{} whose agents report matches the route",
                plural(nodes)
            ),
        }
    } else {
        Delivering {
            status: "True",
            reason: reason::DELIVERING,
            message: format!(
                "{delivering_sinks} of {} sink{} delivering; {nodes} node{} report the route",
                out.len(),
                plural(out.len()),
                plural(nodes)
            ),
        }
    };
    (Some(health), condition)
}

fn to_jiff(t: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::health::SinkReport;

    fn sink(name: &str, delivered: u64, lanes: u32, lag: f64) -> SinkReport {
        SinkReport {
            sink: name.into(),
            kind: "syslog".into(),
            delivered,
            lanes,
            lag_seconds: lag,
            ..Default::default()
        }
    }

    fn route(sinks: Vec<SinkReport>) -> RouteReport {
        RouteReport {
            route: "ns/r".into(),
            sinks,
        }
    }

    fn spec() -> Vec<(String, String)> {
        vec![
            ("central".into(), "syslog".into()),
            ("search".into(), "elasticsearch".into()),
        ]
    }

    const LAG: Duration = Duration::from_secs(60);

    #[test]
    fn sums_nodes_and_takes_the_worst_lag() {
        let a = route(vec![sink("central", 10, 1, 2.0), sink("search", 5, 1, 0.2)]);
        let b = route(vec![sink("central", 32, 2, 7.4), sink("search", 1, 2, 0.0)]);
        let (h, c) = route_health(&[("n1", &a), ("n2", &b)], &spec(), 300, LAG, 2);
        let h = h.expect("health");
        assert_eq!((h.sinks[0].delivered, h.sinks[0].containers), (42, 3));
        assert_eq!(h.sinks[0].lag_seconds, 7);
        assert_eq!((h.lag.as_str(), h.sinks_delivering.as_str()), ("7s", "2/2"));
        assert_eq!((h.window.as_str(), h.nodes), ("5m", 2));
        assert_eq!((c.status, c.reason), ("True", reason::DELIVERING));
    }

    #[test]
    fn failing_beats_lagging_and_names_the_error_and_nodes() {
        let mut failing = sink("central", 0, 1, 90.0);
        failing.failing_since = Some("2026-12-03T20:00:00Z".parse().unwrap());
        failing.last_error = Some("connect".into());
        let a = route(vec![failing, sink("search", 1, 1, 0.0)]);
        let b = route(vec![sink("central", 3, 1, 0.0), sink("search", 1, 1, 0.0)]);
        let (h, c) = route_health(&[("n1", &a), ("n2", &b)], &spec(), 300, LAG, 2);
        let h = h.unwrap();
        assert_eq!(h.sinks[0].state, state::FAILING);
        assert_eq!(
            h.sinks[0].error.as_deref(),
            Some("cannot connect to the receiver on 1 of 2 nodes since 2026-12-03T20:00:00Z")
        );
        assert_eq!((c.status, c.reason), ("False", reason::SINK_FAILING));
        assert!(
            c.message.starts_with("central: cannot connect"),
            "{}",
            c.message
        );
        assert_eq!(h.sinks_delivering, "1/2");
    }

    #[test]
    fn lagging_idle_and_unreported() {
        let a = route(vec![sink("central", 1, 1, 61.0), sink("search", 1, 1, 0.0)]);
        let (_, c) = route_health(&[("n1", &a)], &spec(), 300, LAG, 1);
        assert_eq!((c.status, c.reason), ("False", reason::LAGGING));
        assert_eq!(c.message, "central is more than 1m0s behind on 1 node");

        let idle = route(vec![sink("central", 0, 0, 0.0)]);
        let (h, c) = route_health(&[("n1", &idle)], &spec(), 300, LAG, 1);
        assert_eq!(c.reason, reason::NO_MATCHING_CONTAINERS);
        assert_eq!(
            h.unwrap().sinks[1].state,
            state::IDLE,
            "unreported sink is idle"
        );

        let (h, c) = route_health(&[], &spec(), 300, LAG, 3);
        assert!(h.is_none());
        assert_eq!((c.status, c.reason), ("Unknown", reason::NO_REPORTS));
    }

    #[test]
    fn fleet_ages_out_silent_nodes_and_ignores_other_versions() {
        let mut f = Fleet::default();
        let t = Instant::now();
        let report = NodeReport {
            version: REPORT_VERSION,
            routes: vec![route(vec![])],
            ..Default::default()
        };
        assert!(f.record("n1", report.clone(), t));
        assert!(f.record("n2", report.clone(), t + Duration::from_secs(50)));
        assert!(!f.record(
            "n3",
            NodeReport {
                version: 99,
                ..Default::default()
            },
            t
        ));
        assert_eq!(f.by_route()["ns/r"].len(), 2);
        assert_eq!(f.route_reports("ns/r").len(), 2);
        assert!(f.route_reports("ns/other").is_empty());
        let gone = f.age_out(t + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(gone, vec!["n1".to_string()]);
        assert_eq!(f.nodes(), 1);
    }
}
