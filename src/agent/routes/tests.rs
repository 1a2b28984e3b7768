//! The route table manager: last good version on a failed edit, `since` of sinks,
//! workers and metric series of removed routes.

use std::collections::BTreeMap;
use std::path::Path;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::agent::routes::files::DirSecrets;

const ROUTE: &str = "default/r";

fn route_yaml(sinks: &str) -> String {
    format!(
        "apiVersion: logroute.dev/v1alpha1\nkind: LogRoute\nmetadata: {{ name: r, namespace: default }}\nspec:\n  sinks:\n{sinks}"
    )
}

const STDOUT_A: &str = "    - name: a\n      stdout: {}\n";
const STDOUT_B: &str = "    - name: b\n      stdout: {}\n";
/// Compiles (the Secret exists), but its CA is not PEM, so the sink cannot be built.
const BROKEN_TLS: &str = "    - name: a\n      syslog: { address: '127.0.0.1:1', transport: tls, tls: { caSecretRef: { name: ca, key: ca.crt } } }\n";

fn inputs(dir: &Path, sinks: &str) -> BTreeMap<String, RouteInput> {
    let file = dir.join("route.yaml");
    std::fs::write(&file, route_yaml(sinks)).expect("write route");
    let secrets = DirSecrets(dir.join("secrets"));
    load_file(&file, "logroute-system", Some(&secrets)).expect("route compiles")
}

fn manager(metrics: &AgentMetrics) -> (RouteTableManager, watch::Receiver<Arc<RouteTable>>) {
    RouteTableManager::new(SinkSettings {
        metrics: metrics.clone(),
        node: "node-1".into(),
        queue_records: 16,
        queue_bytes: 10_000,
        queue_floor: 1_000,
        stop: CancellationToken::new(),
        workers: TaskTracker::new(),
    })
}

#[tokio::test]
async fn a_failed_edit_keeps_the_last_good_version_and_a_removed_route_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("secrets/default/ca");
    std::fs::create_dir_all(&ca).expect("secret dir");
    std::fs::write(ca.join("ca.crt"), "not a certificate").expect("write CA");
    let registry = Registry::new();
    let metrics = AgentMetrics::new(&registry);
    let (mut m, table) = manager(&metrics);
    let synced = m.synced();
    assert!(!*synced.borrow(), "not synced before the first apply");

    m.apply(inputs(dir.path(), STDOUT_A));
    assert!(*synced.borrow(), "synced after the first apply");
    let first = table.borrow().routes[0].clone();
    assert_eq!(
        first.sinks[0].since, None,
        "routes from files carry no creation time"
    );
    first.sinks[0].routed.inc();

    // A sink added by an edit starts at the edit, the kept one keeps its `since`.
    m.apply(inputs(dir.path(), &format!("{STDOUT_A}{STDOUT_B}")));
    let edited = table.borrow().routes[0].clone();
    assert_eq!(edited.sinks.len(), 2);
    assert_eq!(edited.sinks[0].since, None);
    assert!(
        edited.sinks[1].since.is_some(),
        "new sink starts at the edit"
    );

    // An edit whose sinks cannot be built: the previous version stays in force.
    m.apply(inputs(dir.path(), BROKEN_TLS));
    let kept = table.borrow().routes[0].clone();
    assert!(Arc::ptr_eq(&kept, &edited), "last good version kept");
    assert_eq!(
        metrics.routes_loaded.with_label_values(&["rejected"]).get(),
        1
    );

    // Removed: its workers stop and its series go.
    m.apply(BTreeMap::new());
    assert!(table.borrow().routes.is_empty());
    assert!(
        kept.stop.is_cancelled(),
        "workers of a removed route are stopped"
    );
    let exposition = crate::metrics::render(&registry);
    assert!(
        !exposition.contains(&format!("route=\"{ROUTE}\"")),
        "no series of the removed route left:\n{exposition}"
    );
}

#[tokio::test]
async fn routes_from_the_cluster_start_their_sinks_at_the_routes_creation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let metrics = AgentMetrics::new(&registry);
    let (mut m, table) = manager(&metrics);
    let mut routes = inputs(dir.path(), STDOUT_A);
    for input in routes.values_mut() {
        input.document.route.created = Some("2026-12-01T10:00:00Z".into());
    }
    m.apply(routes);
    let since = table.borrow().routes[0].sinks[0].since;
    assert_eq!(
        since,
        parse_timestamp(b"2026-12-01T10:00:00Z"),
        "a route's sinks start at its creationTimestamp"
    );
    assert!(since.is_some());
}

#[tokio::test]
async fn the_byte_budget_is_shared_evenly_by_every_queue_and_retired_workers_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = AgentMetrics::new(&Registry::new());
    let (mut m, table) = manager(&metrics);
    m.apply(inputs(dir.path(), STDOUT_A));
    let one = table.borrow().routes[0].clone();
    assert_eq!(one.sinks[0].queue.bytes().limit(), 10_000, "one queue: all");

    m.apply(inputs(dir.path(), &format!("{STDOUT_A}{STDOUT_B}")));
    let two = table.borrow().routes[0].clone();
    for sink in &two.sinks {
        assert_eq!(sink.queue.bytes().limit(), 5_000, "two queues: half each");
    }
    // The replaced version's workers were told to stop and end.
    tokio::time::timeout(std::time::Duration::from_secs(5), one.retired())
        .await
        .expect("the old version's workers end");

    // Many queues: never below the floor (one longest line).
    let mut many = BTreeMap::new();
    for i in 0..20 {
        let mut routes = inputs(dir.path(), STDOUT_A);
        let (_, mut input) = routes.pop_first().expect("one route");
        input.document.route.name = format!("r{i}");
        many.insert(format!("default/r{i}"), input);
    }
    m.apply(many);
    for route in &table.borrow().routes {
        assert_eq!(route.sinks[0].queue.bytes().limit(), 1_000, "floor");
    }
}
