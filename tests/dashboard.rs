//! The Grafana dashboard (charts/logroute/files/dashboard.json) and the alert rules use
//! only metric names that the agent and the controller really export: every PromQL
//! expression is parsed for its metric names, and each must be a family (or a
//! histogram's `_bucket`/`_sum`/`_count`) of the expositions rendered from the
//! processes' own registries, with every family given a series (as
//! tests/metrics_exposition.rs does). The dashboard also has a panel for each thing
//! issue 15 lists.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use logroute::metrics::{AgentMetrics, ControllerMetrics, render};
use prometheus::Registry;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The agent's exposition with a series in every family.
fn agent_exposition() -> String {
    let reg = Registry::new();
    let m = AgentMetrics::new(&reg);
    let sink = ["syslog", "ns/r", "central"];
    let rs = ["ns/r", "central"];
    m.ready.set(1);
    m.containers_followed.set(3);
    m.records_read.with_label_values(&["stdout"]).inc();
    m.bytes_read.with_label_values(&["stdout"]).inc_by(10);
    m.lines_truncated.inc();
    m.records_routed.with_label_values(&rs).inc();
    m.records_filtered
        .with_label_values(&["ns/r", "include"])
        .inc();
    m.records_dropped
        .with_label_values(&["ns/r", "central", "rotated"])
        .inc();
    m.records_unresumed.with_label_values(&["withdrawn"]).inc();
    m.records_sent.with_label_values(&sink).inc();
    m.send_errors
        .with_label_values(&["syslog", "ns/r", "central", "connect"])
        .inc();
    m.send_retries.with_label_values(&sink).inc();
    m.records_cut.with_label_values(&sink).inc();
    m.sink_reconnects.with_label_values(&sink).inc();
    m.egress_refused
        .with_label_values(&["syslog", "ns/r", "central", "builtin:loopback"])
        .inc();
    m.queue_depth.with_label_values(&rs).set(1);
    m.queue_bytes.with_label_values(&rs).set(100);
    m.sink_lag_seconds.with_label_values(&rs).set(1.5);
    m.lanes_detached.with_label_values(&rs).set(1);
    m.catchup_streams.set(1);
    m.sink_workers.set(1);
    m.spill_bytes.set(1);
    m.spill_lines_written.inc();
    m.spill_lines_read.inc();
    m.send_latency.with_label_values(&sink).observe(0.01);
    m.end_to_end_latency.with_label_values(&sink).observe(0.2);
    m.docker_reconnects.inc();
    m.routes_loaded.with_label_values(&["active"]).set(1);
    m.es_documents
        .with_label_values(&["ns/r", "search", "created"])
        .inc();
    m.es_bulk_duration
        .with_label_values(&["ns/r", "search"])
        .observe(0.1);
    m.es_batch_size
        .with_label_values(&["ns/r", "search"])
        .observe(10.0);
    render(&reg)
}

/// The controller's exposition with a series in every family.
fn controller_exposition() -> String {
    let reg = Registry::new();
    let m = ControllerMetrics::new(&reg);
    m.reconciliations.with_label_values(&["ready"]).inc();
    m.reconcile_duration
        .with_label_values(&[] as &[&str])
        .observe(0.01);
    m.routes.with_label_values(&["true"]).set(1);
    m.agent_reports.with_label_values(&["ok"]).inc();
    m.agents_reporting.set(2);
    m.leader.set(1);
    m.health_writes.inc();
    render(&reg)
}

/// Every sample name an exposition can hold: each family, and for histograms and
/// summaries their `_bucket`, `_sum` and `_count` series.
fn names(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        out.insert(name.to_string());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        }
    }
    out
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: what remains once label matchers,
/// strings, range selectors, grouping clauses, functions and keywords are removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let strip = |text: &str, re: &str| {
        regex::Regex::new(re)
            .expect("regex")
            .replace_all(text, " ")
            .into_owned()
    };
    let mut e = strip(expr, r#""(?:[^"\\]|\\.)*""#);
    e = strip(&e, r"\{[^}]*\}");
    e = strip(&e, r"\[[^\]]*\]");
    e = strip(
        &e,
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
    );
    let ident = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").expect("regex");
    let mut out = BTreeSet::new();
    for m in ident.find_iter(&e) {
        let before = &e[..m.start()];
        if before.ends_with(|c: char| c.is_ascii_digit() || c == '.') {
            continue; // exponent of a number such as 1e3
        }
        let after = e[m.end()..].trim_start();
        if after.starts_with('(') || KEYWORDS.contains(&m.as_str()) {
            continue;
        }
        out.insert(m.as_str().to_string());
    }
    out
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("charts/logroute/files/dashboard.json"))
        .expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a target has an expr");
            out.push((
                p["title"].as_str().unwrap_or_default().to_string(),
                expr.to_string(),
            ));
        }
    }
    let label_values =
        regex::Regex::new(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)").expect("regex");
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            let c = label_values
                .captures(q)
                .expect("a label_values(metric, label) query");
            out.push((format!("variable {}", v["name"]), c[1].to_string()));
        }
    }
    out
}

fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("charts/logroute/files/alerts.yaml"))
        .expect("read the rules");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("rules YAML");
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["alert"].as_str().unwrap_or_default().to_string(),
                r["expr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_extractor_finds_metric_names_only() {
    let found = metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route=~"x|y",le!="1e3"}[$__rate_interval]))) and on (instance) b unless c offset 5m > 1e3"#,
    );
    assert_eq!(
        found,
        ["a_bucket", "b", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let agent = names(&agent_exposition());
    let controller = names(&controller_exposition());
    assert!(
        agent.contains("process_cpu_seconds_total"),
        "the agent exports process metrics"
    );
    assert!(controller.contains("process_resident_memory_bytes"));
    let known: BTreeSet<String> = agent.union(&controller).cloned().collect();
    let d = dashboard();
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for (place, expr) in dashboard_exprs(&d).into_iter().chain(alert_exprs()) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place}: no metric found in {expr}");
        for n in names {
            if !known.contains(&n) {
                unknown.push(format!("{place}: {n}"));
            }
            used.insert(n);
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics neither process exports: {unknown:#?}"
    );
    // What issue 15 asks the dashboard to show.
    let dashboard_used: BTreeSet<String> = dashboard_exprs(&d)
        .into_iter()
        .flat_map(|(_, e)| metric_names(&e))
        .collect();
    for wanted in [
        "logroute_agent_records_sent_total",
        "logroute_agent_records_dropped_total",
        "logroute_agent_sink_lag_seconds",
        "logroute_agent_queue_depth",
        "logroute_agent_send_errors_total",
        "logroute_agent_elasticsearch_documents_total",
        "logroute_agent_catchup_streams",
        "logroute_agent_containers_followed",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "logroute_controller_reconciliations_total",
    ] {
        assert!(
            dashboard_used.contains(wanted),
            "no dashboard panel uses {wanted}"
        );
    }
}

#[test]
fn dashboard_panels_are_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "logroute");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().unwrap_or(-1), g["w"].as_i64().unwrap_or(0));
        assert!(
            x >= 0 && w > 0 && x + w <= 24,
            "panel {} outside the grid",
            p["title"]
        );
        if p["type"] != "row" {
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{} has no description",
                p["title"]
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}
