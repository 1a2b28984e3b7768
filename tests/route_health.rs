//! Route health in LogRoute status (issue 15), through the real controller process and
//! the in-test API server (real list + watch of agent pods and LogRoutes over HTTP). Two
//! nodes' agents are stand-ins serving `/routes` reports the test writes, so the sums,
//! the worst lag, a failing sink and its recovery, a node that goes silent, and the
//! absence of writes when nothing changed are each checked exactly.

mod support;

use std::time::Duration;

use serde_json::{Value, json};

use support::apiserver::ApiServer;
use support::controller_proc::{ControllerProc, OPERATOR_NS};
use support::fake_agent::FakeAgent;
use support::printer;

const TENANT: &str = "payments";
const ROUTE: &str = "errors";
/// Flags: poll twice a second, forget a node after 3 s of silence, write at once.
const FLAGS: &[&str] = &[
    "--health-poll-ms",
    "300",
    "--health-stale-seconds",
    "3",
    "--status-writes-per-second",
    "50",
    "--health-refresh-seconds",
    "0",
    "--lag-threshold-seconds",
    "60",
];

fn agent_pod(name: &str, node: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": OPERATOR_NS,
            "labels": {"app.kubernetes.io/component": "agent", "app.kubernetes.io/name": "logroute"}},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "logroute",
            "ports": [{"name": "metrics", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    })
}

/// What one node's agent reports for the route: `central` (syslog) and `search`.
fn report(node: &str, central: Value, search: Value) -> Value {
    json!({"version": 1, "node": node, "windowSeconds": 300, "routes": [
        {"route": format!("{TENANT}/{ROUTE}"), "sinks": [central, search]},
        {"route": "other/route", "sinks": [{"sink": "x", "delivered": 999, "lanes": 9, "lagSeconds": 999.0}]},
    ]})
}

fn sink(name: &str, kind: &str, delivered: u64, lanes: u32, lag: f64) -> Value {
    json!({"sink": name, "kind": kind, "delivered": delivered, "lanes": lanes, "lagSeconds": lag,
           "dropped": {}, "sendErrors": {}, "queued": 0,
           "lastSuccess": "2026-12-03T20:00:00Z"})
}

fn route_object(api: &ApiServer) -> Value {
    api.get("logroute.dev/v1alpha1", "LogRoute", TENANT, ROUTE)
        .expect("the LogRoute exists")
}

fn condition(obj: &Value, kind: &str) -> Option<(String, String, String)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

fn status_patches(api: &ApiServer) -> usize {
    let path = format!("/namespaces/{TENANT}/logroutes/{ROUTE}/status");
    api.requests()
        .iter()
        .filter(|r| r.starts_with("PATCH ") && r.contains(&path))
        .count()
}

#[test]
fn status_sums_two_nodes_shows_failure_and_recovery_and_ages_out_a_silent_node() {
    let api = ApiServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    for ns in [OPERATOR_NS, TENANT] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.apply(json!({
        "apiVersion": "logroute.dev/v1alpha1", "kind": "LogRoute",
        "metadata": {"name": ROUTE, "namespace": TENANT},
        "spec": {"sinks": [
            {"name": "central", "syslog": {"address": "syslog.logging.svc:514"}},
            {"name": "search", "elasticsearch": {"endpoints": ["https://es.logging.svc:9200"]}},
        ]},
    }));
    let (n1, n2) = (FakeAgent::start(), FakeAgent::start());
    n1.report(&report(
        "n1",
        sink("central", "syslog", 10, 1, 2.0),
        sink("search", "elasticsearch", 10, 1, 0.5),
    ));
    // Node 2's agent claims to be node 1: the report counts for the node its pod runs on.
    n2.report(&report(
        "n1",
        sink("central", "syslog", 32, 2, 7.4),
        sink("search", "elasticsearch", 32, 2, 0.0),
    ));
    api.apply(agent_pod("agent-a", "node-1", n1.port));
    api.apply(agent_pod("agent-b", "node-2", n2.port));
    // An agent pod of another namespace is never polled (the controller lists its own).
    let mut outsider = agent_pod("agent-x", "node-9", n1.port);
    outsider["metadata"]["namespace"] = json!(TENANT);
    api.apply(outsider);

    let mut ctl = ControllerProc::start(dir.path(), &kubeconfig, FLAGS);
    let healthy = ctl.wait_for(
        "the sum of both nodes in status",
        Duration::from_secs(30),
        || {
            let obj = route_object(&api);
            let h = &obj["status"]["health"];
            let ok = h["nodes"] == 2
                && h["sinks"][0]["delivered"] == 42
                && h["sinks"][0]["containers"] == 3
                && condition(&obj, "Delivering").is_some_and(|c| c.0 == "True");
            if ok {
                Ok(obj)
            } else {
                Err(obj["status"].to_string())
            }
        },
    );
    let h = &healthy["status"]["health"];
    assert_eq!(h["sinks"][0]["lagSeconds"], 7, "worst lag of the two nodes");
    assert_eq!(h["lag"], "7s");
    assert_eq!(h["sinksDelivering"], "2/2");
    assert_eq!(h["sinks"][1]["name"], "search");
    assert_eq!(h["sinks"][1]["delivered"], 42);
    assert_eq!(h["sinks"][0]["lastDelivery"], "2026-12-03T20:00:00Z");
    assert_eq!(
        condition(&healthy, "Ready").map(|c| c.0),
        Some("True".into()),
        "Ready stays beside Delivering"
    );
    assert_eq!(printer::column(&healthy, "Delivering"), "True");
    assert_eq!(printer::column(&healthy, "Sinks"), "2/2");
    assert_eq!(printer::column(&healthy, "Lag"), "7s");
    let healthy_table = printer::get_table(&healthy, false);
    println!("healthy route:\n{healthy_table}");
    assert!(
        !api.requests().iter().any(|r| r.contains("/namespaces/payments/pods")
            || (r.starts_with("GET /api/v1/pods"))),
        "the controller read pods outside its namespace"
    );

    // Nothing changes: no status write for many poll rounds.
    let before = status_patches(&api);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        status_patches(&api),
        before,
        "status patched although no report changed"
    );

    // Node 1's syslog sink fails.
    let mut failing = sink("central", "syslog", 0, 1, 95.0);
    failing["failingSince"] = json!("2026-12-03T20:01:00Z");
    failing["lastError"] = json!("connect");
    failing["sendErrors"] = json!({"connect": 14});
    failing["dropped"] = json!({"rotated": 3});
    n1.report(&report(
        "n1",
        failing,
        sink("search", "elasticsearch", 10, 1, 0.5),
    ));
    let failed = ctl.wait_for(
        "Delivering=False SinkFailing",
        Duration::from_secs(20),
        || {
            let obj = route_object(&api);
            match condition(&obj, "Delivering") {
                Some((s, r, _)) if s == "False" && r == "SinkFailing" => Ok(obj),
                other => Err(format!("{other:?}")),
            }
        },
    );
    let central = &failed["status"]["health"]["sinks"][0];
    assert_eq!(central["state"], "Failing");
    assert_eq!(
        central["error"],
        "cannot connect to the receiver on 1 of 2 nodes since 2026-12-03T20:01:00Z"
    );
    assert_eq!(central["sendErrors"], 14);
    assert_eq!(central["dropped"]["rotated"], 3);
    assert_eq!(central["lagSeconds"], 95);
    let message = condition(&failed, "Delivering").unwrap().2;
    assert!(message.starts_with("central: cannot connect"), "{message}");
    assert_eq!(printer::column(&failed, "Sinks"), "1/2");
    let failing_table = printer::get_table(&failed, false);
    println!("failing route:\n{failing_table}");
    println!(
        "failing route, wide:\n{}",
        printer::get_table(&failed, true)
    );

    // Fixed: the error clears.
    n1.report(&report(
        "n1",
        sink("central", "syslog", 25, 1, 1.0),
        sink("search", "elasticsearch", 10, 1, 0.5),
    ));
    let recovered = ctl.wait_for("Delivering=True again", Duration::from_secs(20), || {
        let obj = route_object(&api);
        match condition(&obj, "Delivering") {
            Some((s, _, _)) if s == "True" => Ok(obj),
            other => Err(format!("{other:?}")),
        }
    });
    let central = &recovered["status"]["health"]["sinks"][0];
    assert_eq!(central["state"], "Delivering");
    assert!(central.get("error").is_none(), "error cleared: {central}");
    assert_eq!(central["delivered"], 57);

    // Node 2 goes silent (its agent answers 503): after 3 s it no longer counts.
    n2.fail(503);
    let alone = ctl.wait_for("node 2 aged out", Duration::from_secs(20), || {
        let obj = route_object(&api);
        let h = &obj["status"]["health"];
        if h["nodes"] == 1 {
            Ok(obj)
        } else {
            Err(h.to_string())
        }
    });
    let h = &alone["status"]["health"];
    assert_eq!(h["sinks"][0]["delivered"], 25);
    assert_eq!(h["sinks"][0]["containers"], 1);
    assert_eq!(h["lag"], "1s");
    let metrics = ctl.get("/metrics").unwrap_or_default();
    assert!(
        metrics.contains("logroute_controller_agents_reporting 1"),
        "{metrics}"
    );
    assert!(metrics.contains("logroute_controller_agent_reports_total{result=\"status\"}"));
}

/// Flags of the end-to-end run: the agent samples every 5 s (fixed), the controller
/// polls every 500 ms. The documented delay (docs/status.md) is one sample plus one poll
/// plus the write queue: 5 s + 0.5 s here, 5 s + 15 s with the defaults.
const E2E_FLAGS: &[&str] = &[
    "--health-poll-ms",
    "500",
    "--health-stale-seconds",
    "15",
    "--status-writes-per-second",
    "20",
    "--health-refresh-seconds",
    "0",
];
/// One agent sample (5 s) + one controller poll (0.5 s) + the time the sink takes to see
/// its peer gone (writes into a closed TCP connection may first succeed), with room.
const SHOWN_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_get_shows_a_failing_syslog_sink_and_its_recovery() {
    use support::cluster::Cluster;
    let Some(mut c) = Cluster::start("health").await else {
        return;
    };
    // In the operator namespace, so the controller's default egress policy lets it send
    // to the loopback receiver; `namespaceSelector: {}` takes the tenant's pods.
    let spec = c.render(
        r#"
selector: {namespaceSelector: {}}
sinks:
- name: central
  syslog: {address: "127.0.0.1:{tcp}"}
"#,
    );
    c.api.apply(json!({
        "apiVersion": "logroute.dev/v1alpha1", "kind": "LogRoute",
        "metadata": {"name": "all", "namespace": OPERATOR_NS}, "spec": spec,
    }));
    let mut ctl = ControllerProc::start(c.dir.path(), &c.kubeconfig, E2E_FLAGS);
    let mut agent = c.agent(&[]);
    agent.wait_ready(Duration::from_secs(30));
    c.api.apply(agent_pod(
        "logroute-agent-1",
        support::agent_proc::NODE,
        agent.port(),
    ));
    let pod = c.pod("ticker", &[("app", "ticker")], &[]);
    let _ticker = c
        .run(
            &pod,
            "c",
            "i=0; while true; do i=$((i+1)); echo tick-$i; usleep 100000; done",
        )
        .await;
    let get = |api: &ApiServer| {
        api.get("logroute.dev/v1alpha1", "LogRoute", OPERATOR_NS, "all")
            .expect("the LogRoute exists")
    };
    let delivering = |obj: &Value| printer::column(obj, "Delivering");

    let healthy = ctl.wait_for("DELIVERING True", Duration::from_secs(60), || {
        let obj = get(&c.api);
        let delivered = obj["status"]["health"]["sinks"][0]["delivered"]
            .as_u64()
            .unwrap_or(0);
        if delivering(&obj) == "True" && delivered > 0 {
            Ok(obj)
        } else {
            Err(format!(
                "{}\n{}",
                printer::get_table(&obj, true),
                obj["status"]
            ))
        }
    });
    assert_eq!(printer::column(&healthy, "Ready"), "True");
    assert_eq!(printer::column(&healthy, "Sinks"), "1/1");
    let central = &healthy["status"]["health"]["sinks"][0];
    assert_eq!(central["kind"], "syslog");
    assert_eq!(central["containers"], 1);
    assert!(central["lastDelivery"].is_string(), "{central}");
    println!("healthy:\n{}", printer::get_table(&healthy, false));

    c.rsyslog.stop();
    let stopped = std::time::Instant::now();
    let failed = ctl.wait_for("DELIVERING False (SinkFailing)", SHOWN_WITHIN, || {
        let obj = get(&c.api);
        match condition(&obj, "Delivering") {
            Some((s, r, _)) if s == "False" && r == "SinkFailing" => Ok(obj),
            other => Err(format!(
                "{other:?}; agent /routes: {:?}",
                agent.get("/routes")
            )),
        }
    });
    println!(
        "failure shown {:?} after rsyslog stopped",
        stopped.elapsed()
    );
    let central = &failed["status"]["health"]["sinks"][0];
    assert_eq!(central["state"], "Failing");
    let error = central["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("cannot connect to the receiver on 1 of 1 node since "),
        "{error}"
    );
    assert!(central["sendErrors"].as_u64().unwrap_or(0) > 0, "{central}");
    assert_eq!(printer::column(&failed, "Sinks"), "0/1");
    println!("failing:\n{}", printer::get_table(&failed, false));
    println!("failing, wide:\n{}", printer::get_table(&failed, true));

    c.rsyslog.restart().expect("rsyslog restarts");
    let restarted = std::time::Instant::now();
    // The sink retries with a backoff of at most 10 s; then one sample and one poll.
    let recovered = ctl.wait_for(
        "DELIVERING True again",
        SHOWN_WITHIN + Duration::from_secs(12),
        || {
            let obj = get(&c.api);
            if delivering(&obj) == "True" {
                Ok(obj)
            } else {
                Err(format!("{}", obj["status"]))
            }
        },
    );
    println!(
        "recovery shown {:?} after rsyslog restarted",
        restarted.elapsed()
    );
    let central = &recovered["status"]["health"]["sinks"][0];
    assert_eq!(central["state"], "Delivering");
    assert!(central.get("error").is_none(), "{central}");
    println!("recovered:\n{}", printer::get_table(&recovered, false));
    c.rsyslog.wait_for(1, Duration::from_secs(10));
}
