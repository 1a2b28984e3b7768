//! The test API server (tests/support/apiserver) against the real kube client: a
//! reflector fills from the initial list, follows later changes, re-watches after dropped
//! connections and re-lists after 410; selectors filter; writes behave as the API server's.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use logroute::api::LogRoute;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::docker::eventually;

const WAIT: Duration = Duration::from_secs(20);

fn config_map(name: &str, labels: Value, data: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "ns1", "labels": labels},
           "data": {"v": data}})
}

/// A reflector over the config maps of ns1 selected by `labels`, driven in the background.
fn reflect(client: kube::Client, labels: Option<&str>) -> Store<ConfigMap> {
    let (store, writer) = reflector::store();
    let mut config = watcher::Config::default();
    if let Some(l) = labels {
        config = config.labels(l);
    }
    let api: Api<ConfigMap> = Api::namespaced(client, "ns1");
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(stream.for_each(|_| async {}));
    store
}

/// name → data["v"] of what the store holds.
fn seen(store: &Store<ConfigMap>) -> BTreeMap<String, String> {
    store
        .state()
        .iter()
        .map(|cm| {
            (
                cm.name_any(),
                cm.data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// name → data["v"] of what the server holds in ns1 for `select`.
fn truth(server: &ApiServer, select: impl Fn(&Value) -> bool) -> BTreeMap<String, String> {
    server
        .list("v1", "ConfigMap", Some("ns1"))
        .into_iter()
        .filter(|o| select(o))
        .map(|o| {
            (
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                o["data"]["v"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn converge(store: &Store<ConfigMap>, want: &BTreeMap<String, String>, what: &str) {
    eventually(WAIT, what, || async {
        let got = seen(store);
        (got == *want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_reflector_lists_watches_rewatches_and_relists() {
    let server = ApiServer::start();
    for i in 0..3 {
        server.apply(config_map(&format!("cm{i}"), json!({"app": "a"}), "1"));
    }
    let store = reflect(server.client().await, None);
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .expect("initial list within 20 s")
        .expect("store ready");
    assert_eq!(
        seen(&store).len(),
        3,
        "the initial list fills the store: {:?}",
        seen(&store)
    );

    server.apply(config_map("cm3", json!({}), "1"));
    server.apply(config_map("cm0", json!({"app": "a"}), "2"));
    server.delete("v1", "ConfigMap", "ns1", "cm1");
    converge(
        &store,
        &truth(&server, |_| true),
        "ADDED, MODIFIED and DELETED seen by the reflector",
    )
    .await;

    // Dropped connections: the watcher re-watches from its last resourceVersion and
    // misses nothing written while it was away.
    eventually(WAIT, "an open watch", || async {
        (server.open_watches() > 0).then_some(())
    })
    .await;
    let watches_before = server
        .requests()
        .iter()
        .filter(|r| r.contains("watch=true"))
        .count();
    server.drop_watches();
    server.apply(config_map("cm4", json!({}), "1"));
    server.apply(config_map("cm2", json!({"app": "a"}), "3"));
    converge(
        &store,
        &truth(&server, |_| true),
        "changes made while the watch was down",
    )
    .await;
    let requests = server.requests();
    let watches: Vec<_> = requests
        .iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert!(
        watches.len() > watches_before,
        "a new watch after drop_watches: {requests:#?}"
    );
    assert!(
        watches
            .last()
            .is_some_and(|w| !w.contains("resourceVersion=0&") && w.contains("resourceVersion=")),
        "re-watch from a resourceVersion: {watches:#?}"
    );

    // Compacted history: the re-watch gets 410 Expired and the watcher lists again.
    let lists_before = requests
        .iter()
        .filter(|r| {
            r.starts_with("GET /api/v1/namespaces/ns1/configmaps?") && !r.contains("watch=")
        })
        .count();
    server.compact();
    server.drop_watches();
    server.delete("v1", "ConfigMap", "ns1", "cm3");
    server.apply(config_map("cm5", json!({}), "1"));
    converge(
        &store,
        &truth(&server, |_| true),
        "the store after 410 and re-list",
    )
    .await;
    let lists_after = server
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET /api/v1/namespaces/ns1/configmaps?") && !r.contains("watch=")
        })
        .count();
    assert!(
        lists_after > lists_before,
        "410 made the watcher re-list ({lists_before} → {lists_after} lists)"
    );
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let server = ApiServer::start();
    server.apply(config_map("in", json!({"app": "a", "tier": "x"}), "1"));
    server.apply(config_map("out", json!({"app": "b"}), "1"));
    let store = reflect(server.client().await, Some("app=a,tier in (x,y)"));
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .expect("initial list")
        .expect("ready");
    let selected = |o: &Value| {
        o["metadata"]["labels"]["app"] == "a"
            && o["metadata"]["labels"]["tier"]
                .as_str()
                .is_some_and(|t| t == "x" || t == "y")
    };
    converge(
        &store,
        &truth(&server, selected),
        "only selected objects listed",
    )
    .await;
    // Relabelling moves objects into and out of the selection: ADDED / DELETED.
    server.apply(config_map("out", json!({"app": "a", "tier": "y"}), "1"));
    server.apply(config_map("in", json!({"app": "a"}), "1"));
    converge(
        &store,
        &truth(&server, selected),
        "relabelled objects enter and leave",
    )
    .await;
    assert_eq!(seen(&store).keys().collect::<Vec<_>>(), ["out"]);

    let client = server.client().await;
    for (name, node) in [("p1", "node-1"), ("p2", "node-2")] {
        server.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns2"}, "spec": {"nodeName": node, "containers": []}}));
    }
    let pods: Api<Pod> = Api::all(client);
    for (fields, want) in [
        ("spec.nodeName=node-1", vec!["p1"]),
        ("spec.nodeName!=node-1", vec!["p2"]),
        ("metadata.name=p2,metadata.namespace=ns2", vec!["p2"]),
    ] {
        let got: Vec<String> = pods
            .list(&ListParams::default().fields(fields))
            .await
            .expect("list pods")
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(got, want, "fieldSelector {fields}");
    }
    let meta = pods
        .list_metadata(&ListParams::default().fields("spec.nodeName=node-2"))
        .await
        .expect("metadata-only list");
    let names: Vec<String> = meta.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["p2"], "PartialObjectMetadata list");
    let got = pods
        .list(&ListParams::default().labels("!app"))
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(got, 2, "!app selects pods without the label");
}

#[tokio::test]
async fn writes_follow_the_api_server_rules() {
    let server = ApiServer::start();
    let client = server.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "ns1");
    let ssa = PatchParams::apply("test-manager");

    // Server-side apply creates, then updates; an unchanged apply writes nothing.
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "1"}});
    let created = maps
        .patch("a", &ssa, &Patch::Apply(&body))
        .await
        .expect("apply creates");
    assert!(
        created.uid().is_some() && created.creation_timestamp().is_some(),
        "server-owned metadata: {created:?}"
    );
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "2"}});
    let updated = maps
        .patch("a", &ssa, &Patch::Apply(&body))
        .await
        .expect("apply updates");
    assert_eq!(
        updated
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(
        updated.labels().get("x").map(String::as_str),
        Some("1"),
        "maps merge recursively"
    );
    let again = maps
        .patch("a", &ssa, &Patch::Apply(&body))
        .await
        .expect("apply again");
    assert_eq!(
        again.resource_version(),
        updated.resource_version(),
        "an unchanged apply is no write"
    );
    let no_manager = maps
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": null}})),
        )
        .await
        .expect("merge patch");
    assert!(
        no_manager.data.unwrap_or_default().is_empty(),
        "merge patch null removes"
    );

    // Create conflicts and stale replaces.
    let err = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap(),
        )
        .await
        .expect_err("create twice");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
    let mut stale = created.clone();
    stale.data = None;
    let err = maps
        .replace("a", &PostParams::default(), &stale)
        .await
        .expect_err("stale replace");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // Finalizers: delete marks, emptying the finalizers removes.
    // As kube's finalizer helper sends it: a missing path tests equal to null.
    let patch = json!([
        {"op": "test", "path": "/metadata/labels/x", "value": "1"},
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["test/hold"]}
    ]);
    maps.patch(
        "a",
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(patch).unwrap()),
    )
    .await
    .expect("json patch");
    maps.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let held = maps.get("a").await.expect("still there while finalized");
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "deletionTimestamp set: {held:?}"
    );
    let patch = json!([{"op": "remove", "path": "/metadata/finalizers/0"}]);
    maps.patch(
        "a",
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(patch).unwrap()),
    )
    .await
    .expect("drop finalizer");
    assert!(
        maps.get_opt("a").await.expect("get").is_none(),
        "gone once its finalizers are"
    );

    // Status subresource: spec untouched by status writes and vice versa; generation
    // counts spec changes.
    let routes: Api<LogRoute> = Api::namespaced(client, "ns1");
    let route = json!({"apiVersion": "logroute.dev/v1alpha1", "kind": "LogRoute", "metadata": {"name": "r", "namespace": "ns1"},
        "spec": {"sinks": [{"name": "s", "syslog": {"address": "127.0.0.1:514", "transport": "udp"}}]}});
    let stored = server.apply(route);
    assert_eq!(stored["metadata"]["generation"], 1);
    let status = json!({"apiVersion": "logroute.dev/v1alpha1", "kind": "LogRoute", "status": {"observedGeneration": 1, "conditions": []}, "spec": {"sinks": []}});
    let after = routes
        .patch_status("r", &PatchParams::apply("ctl"), &Patch::Apply(&status))
        .await
        .expect("status apply");
    assert_eq!(
        after.spec.sinks.len(),
        1,
        "a status write leaves spec alone"
    );
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    let spec = json!({"spec": {"sinks": [{"name": "t", "syslog": {"address": "127.0.0.1:514", "transport": "udp"}}]}, "status": null});
    let edited = routes
        .patch("r", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .expect("spec edit");
    assert_eq!(
        edited.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );
    assert!(
        edited.status.is_some(),
        "a main-resource write leaves status alone"
    );
}

#[tokio::test]
async fn held_lists_and_paused_watches_hold_clients_back() {
    let server = ApiServer::start();
    server.apply(config_map("a", json!({}), "1"));
    let maps: Api<ConfigMap> = Api::namespaced(server.client().await, "ns1");
    server.hold_lists(true);
    let held = tokio::time::timeout(
        Duration::from_millis(300),
        maps.list(&ListParams::default()),
    )
    .await;
    assert!(held.is_err(), "a list answered while lists were held");
    server.hold_lists(false);
    let listed = tokio::time::timeout(WAIT, maps.list(&ListParams::default()))
        .await
        .expect("list answered once released");
    assert_eq!(listed.expect("list").items.len(), 1);

    let store = reflect(server.client().await, None);
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .expect("initial list")
        .expect("ready");
    eventually(WAIT, "an open watch", || async {
        (server.open_watches() > 0).then_some(())
    })
    .await;
    server.pause_watches(true);
    server.apply(config_map("b", json!({}), "1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen(&store).len(), 1, "a paused watch sent an event");
    server.pause_watches(false);
    converge(
        &store,
        &truth(&server, |_| true),
        "what a paused watch held back, once unpaused",
    )
    .await;
}
