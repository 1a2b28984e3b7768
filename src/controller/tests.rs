//! Reconcile scenarios against the scripted API server: every request the controller
//! makes is asserted, in order, and any other request fails the test.

use std::sync::{Arc, Mutex};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::error::Error;
use super::fixtures::{Call, OP_NS, context, metric};
use super::index::RouteKey;
use super::reconcile::{RESYNC, error_policy, reconcile};
use super::{Guarded, sweep};
use crate::api::FINALIZER;

const NS: &str = "payments";
const NAME: &str = "errors";
const COMPILED: &str = "lr.payments.errors";

const SYSLOG: &str =
    r#"{"sinks": [{"name": "central", "syslog": {"address": "syslog.logging.svc:514"}}]}"#;
const SYSLOG_FILTERED: &str = r#"{"filter": {"include": "ERROR"},
    "sinks": [{"name": "central", "syslog": {"address": "syslog.logging.svc:514"}}]}"#;
const BAD_REGEX: &str = r#"{"filter": {"include": "("},
    "sinks": [{"name": "central", "syslog": {"address": "syslog.logging.svc:514"}}]}"#;
const ES_BASIC: &str = r#"{"sinks": [{"name": "search", "elasticsearch": {
    "endpoints": ["https://es.logging.svc:9200"], "auth": {"basicSecretRef": {"name": "es-creds"}}}}]}"#;
const ES_OTHER_NAMESPACE: &str = r#"{"sinks": [{"name": "search", "elasticsearch": {
    "endpoints": ["https://es.logging.svc:9200"],
    "auth": {"basicSecretRef": {"name": "es-creds", "namespace": "kube-system"}}}}]}"#;

fn route_json(namespace: &str, spec: &str, generation: i64, status: Option<&Value>) -> Value {
    let spec: Value = serde_json::from_str(spec).expect("test spec is JSON");
    let mut route = json!({
        "apiVersion": "logroute.dev/v1alpha1",
        "kind": "LogRoute",
        "metadata": {"name": NAME, "namespace": namespace, "uid": "uid-1", "generation": generation,
                     "resourceVersion": "7", "finalizers": [FINALIZER]},
        "spec": spec,
    });
    if let Some(status) = status {
        route["status"] = status.clone();
    }
    route
}

fn guarded(route: &Value) -> Arc<Guarded> {
    let guard: Guarded = serde_json::from_value(route.clone()).expect("a LogRoute-shaped object");
    Arc::new(guard)
}

fn route(spec: &str, generation: i64, status: Option<&Value>) -> (Value, Arc<Guarded>) {
    let json = route_json(NS, spec, generation, status);
    let g = guarded(&json);
    (json, g)
}

fn cm_path() -> String {
    format!("/api/v1/namespaces/{OP_NS}/configmaps/{COMPILED}")
}
fn secret_path() -> String {
    format!("/api/v1/namespaces/{OP_NS}/secrets/{COMPILED}")
}
fn route_path(ns: &str) -> String {
    format!("/apis/logroute.dev/v1alpha1/namespaces/{ns}/logroutes/{NAME}")
}
fn status_path(ns: &str) -> String {
    format!("{}/status", route_path(ns))
}
fn events_path(ns: &str) -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{ns}/events")
}

/// Keeps the status a status patch wrote, to feed the next step.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Option<Value>>>);

impl Captured {
    fn keep(&self, v: &Value) {
        *self.0.lock().expect("capture lock") = Some(v.clone());
    }
    fn get(&self) -> Value {
        self.0
            .lock()
            .expect("capture lock")
            .clone()
            .expect("nothing was captured")
    }
}

fn ready_condition(status_patch: &Value) -> &Value {
    status_patch["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition in {status_patch}"))
}

/// A status patch with Ready=`ready`, `reason`, and a message containing every `needles`.
fn status_call(
    ns: &str,
    reply_route: &Value,
    ready: bool,
    reason: &'static str,
    needles: &[&'static str],
    keep: &Captured,
) -> Call {
    let needles: Vec<&'static str> = needles.to_vec();
    let keep = keep.clone();
    let generation = reply_route["metadata"]["generation"].clone();
    Call::apply(status_path(ns))
        .reply(200, reply_route.clone())
        .body(move |body| {
            assert_eq!(body["apiVersion"], "logroute.dev/v1alpha1");
            assert_eq!(body["kind"], "LogRoute");
            assert_eq!(body["status"]["observedGeneration"], generation, "{body}");
            let c = ready_condition(body);
            assert_eq!(c["status"], if ready { "True" } else { "False" }, "{body}");
            assert_eq!(c["reason"], reason, "{body}");
            assert_eq!(c["observedGeneration"], generation, "{body}");
            let message = c["message"].as_str().unwrap_or_default();
            for n in &needles {
                assert!(message.contains(n), "Ready message {message:?} lacks {n:?}");
            }
            keep.keep(&body["status"]);
        })
}

fn event_call(ns: &str, type_: &'static str, reason: &'static str) -> Call {
    Call::post(events_path(ns)).body(move |body| {
        assert_eq!(body["type"], type_, "{body}");
        assert_eq!(body["reason"], reason, "{body}");
        assert_eq!(body["regarding"]["name"], NAME, "{body}");
        assert_eq!(body["regarding"]["kind"], "LogRoute", "{body}");
        assert!(
            body["note"].as_str().is_some_and(|n| !n.is_empty()),
            "event without a note: {body}"
        );
    })
}

fn config_map_call(check: impl FnOnce(&Value) + Send + 'static) -> Call {
    Call::apply(cm_path()).body(move |cm| {
        assert_eq!(
            cm["metadata"]["labels"]["logroute.dev/route"], "payments.errors",
            "{cm}"
        );
        assert_eq!(
            cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "logroute-controller"
        );
        assert_eq!(
            cm["metadata"]["annotations"]["logroute.dev/source-namespace"],
            NS
        );
        assert_eq!(
            cm["metadata"]["annotations"]["logroute.dev/source-name"],
            NAME
        );
        assert_eq!(
            cm["metadata"]["annotations"]["logroute.dev/source-uid"],
            "uid-1"
        );
        let doc: Value = serde_json::from_str(
            cm["data"]["route.json"]
                .as_str()
                .expect("route.json is a string"),
        )
        .expect("route.json is JSON");
        assert_eq!(doc["version"], 1, "{doc}");
        check(&doc);
    })
}

fn secret_data(name: &str, data: &[(&str, &str)]) -> Value {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    };
    serde_json::to_value(secret).expect("a Secret serializes")
}

/// The read of one referenced Secret: a list in the route's namespace narrowed to the
/// credentials label and the name, answered with `secret` (or nothing).
fn labelled_secret_call(name: &'static str, secret: Option<Value>) -> Call {
    Call::get(format!("/api/v1/namespaces/{NS}/secrets"))
        .query("labelSelector=logroute.dev%2Fcredentials%3Dtrue")
        .query(&format!("fieldSelector=metadata.name%3D{name}"))
        .reply(
            200,
            json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "9"},
                   "items": secret.into_iter().collect::<Vec<_>>()}),
        )
}

#[tokio::test]
async fn a_new_route_first_gets_the_finalizer_and_nothing_else() {
    let (ctx, mut api, _) = context(&[(NS, &[])]);
    let mut json = route_json(NS, SYSLOG, 1, None);
    json["metadata"]["finalizers"] = Value::Null;
    let added = {
        let mut r = json.clone();
        r["metadata"]["finalizers"] = json!([FINALIZER]);
        r
    };
    let calls = vec![Call::patch(route_path(NS)).reply(200, added).body(|patch| {
        assert_eq!(
            patch,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
        );
    })];
    let action = api
        .run(calls, reconcile(guarded(&json), ctx.clone()))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_valid_route_is_published_reported_and_then_left_alone() {
    let (ctx, mut api, registry) = context(&[(NS, &[])]);
    let (json, obj) = route(SYSLOG, 1, None);
    let status = Captured::default();
    let calls = vec![
        config_map_call(|doc| {
            assert_eq!(
                doc["route"],
                json!({"namespace": NS, "name": NAME, "uid": "uid-1", "generation": 1})
            );
            assert_eq!(doc["scope"]["namespaces"], json!({"list": [NS]}));
            assert_eq!(doc["sinks"][0]["name"], "central");
            assert!(doc.get("credentialsSecret").is_none(), "{doc}");
        }),
        Call::delete(secret_path()).not_found(),
        status_call(
            NS,
            &json,
            true,
            "Compiled",
            &["compiled 1 sink: central(syslog)"],
            &status,
        ),
        event_call(NS, "Normal", "Compiled"),
    ];
    let action = api
        .run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(RESYNC));
    assert_eq!(status.get()["sinks"], "central(syslog)");
    assert!(
        status.get().get("namespaces").is_none(),
        "no namespaceSelector, no namespaces: {}",
        status.get()
    );
    assert_eq!(
        metric(
            &registry,
            r#"logroute_controller_reconciliations_total{result="ready"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&registry, r#"logroute_controller_routes{ready="true"}"#),
        Some(1.0)
    );

    // The same route with the status it now has: the ConfigMap is re-applied (a no-op on
    // the server), nothing else is written and no Event is recorded.
    let (_, obj) = route(SYSLOG, 1, Some(&status.get()));
    let calls = vec![config_map_call(|_| {})];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("steady-state reconcile");
    assert_eq!(
        metric(
            &registry,
            r#"logroute_controller_reconciliations_total{result="ready"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn an_updated_route_is_recompiled_with_its_new_generation() {
    let (ctx, mut api, _) = context(&[(NS, &[])]);
    let first = Captured::default();
    let (json, obj) = route(SYSLOG, 1, None);
    let calls = vec![
        config_map_call(|doc| assert!(doc.get("filter").is_none(), "{doc}")),
        Call::delete(secret_path()).not_found(),
        status_call(NS, &json, true, "Compiled", &[], &first),
        event_call(NS, "Normal", "Compiled"),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("first reconcile");

    // The user edits the spec: generation 2.
    let second = Captured::default();
    let (json, obj) = route(SYSLOG_FILTERED, 2, Some(&first.get()));
    let calls = vec![
        config_map_call(|doc| {
            assert_eq!(doc["route"]["generation"], 2, "{doc}");
            assert_eq!(doc["filter"]["include"], "ERROR", "{doc}");
        }),
        status_call(NS, &json, true, "Compiled", &[], &second),
        // The Recorder has already published this Event once: it patches the series.
        Call::patch(events_path(NS)).path_prefix(),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("reconcile after the edit");
    assert_eq!(
        ready_condition(&json!({"status": second.get()}))["lastTransitionTime"],
        ready_condition(&json!({"status": first.get()}))["lastTransitionTime"],
        "Ready stayed True, so its transition time must not move"
    );
}

#[tokio::test]
async fn invalid_then_valid_then_invalid_withdraws_the_compiled_objects() {
    let (ctx, mut api, registry) = context(&[(NS, &[])]);
    let s1 = Captured::default();
    let (json, obj) = route(BAD_REGEX, 1, None);
    let calls = vec![
        Call::delete(cm_path()).not_found(),
        Call::delete(secret_path()).not_found(),
        status_call(
            NS,
            &json,
            false,
            "InvalidSpec",
            &["spec.filter.include"],
            &s1,
        ),
        event_call(NS, "Warning", "InvalidSpec"),
    ];
    let action = api
        .run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("invalid reconcile");
    assert_eq!(
        action,
        Action::requeue(RESYNC),
        "an invalid spec is not retried fast"
    );
    assert_eq!(
        s1.get().get("sinks"),
        None,
        "an invalid route forwards nowhere: {}",
        s1.get()
    );

    let s2 = Captured::default();
    let (json, obj) = route(SYSLOG, 2, Some(&s1.get()));
    let calls = vec![
        config_map_call(|_| {}),
        // The compiled Secret is known to be gone: no second delete.
        status_call(NS, &json, true, "Compiled", &[], &s2),
        event_call(NS, "Normal", "Compiled"),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("valid reconcile");

    let s3 = Captured::default();
    let (json, obj) = route(BAD_REGEX, 3, Some(&s2.get()));
    let calls = vec![
        Call::delete(cm_path()),
        status_call(
            NS,
            &json,
            false,
            "InvalidSpec",
            &["spec.filter.include"],
            &s3,
        ),
        Call::patch(events_path(NS)).path_prefix(),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("invalid again");
    assert_eq!(
        metric(
            &registry,
            r#"logroute_controller_reconciliations_total{result="invalid"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&registry, r#"logroute_controller_routes{ready="false"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&registry, r#"logroute_controller_routes{ready="true"}"#),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_its_creation_publishes_the_route() {
    let (ctx, mut api, _) = context(&[(NS, &[])]);
    let s1 = Captured::default();
    let (json, obj) = route(ES_BASIC, 1, None);
    let calls = vec![
        labelled_secret_call("es-creds", None),
        Call::delete(cm_path()).not_found(),
        Call::delete(secret_path()).not_found(),
        status_call(
            NS,
            &json,
            false,
            "SecretNotFound",
            &[
                "basicSecretRef",
                "es-creds",
                "kubectl label secret -n payments es-creds logroute.dev/credentials=true",
            ],
            &s1,
        ),
        event_call(NS, "Warning", "SecretNotFound"),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("reconcile without the Secret");
    assert_eq!(
        ctx.index().routes_for_secret(NS, "es-creds"),
        vec![RouteKey::new(NS, NAME)],
        "creating the Secret must re-trigger this route"
    );

    // The Secret appears; the Secret watch re-triggers the route.
    let (json, obj) = route(ES_BASIC, 1, Some(&s1.get()));
    let s2 = Captured::default();
    let calls = vec![
        labelled_secret_call(
            "es-creds",
            Some(secret_data(
                "es-creds",
                &[("username", "elastic"), ("password", "s3cret")],
            )),
        ),
        Call::apply(secret_path()).body(|secret| {
            assert_eq!(secret["kind"], "Secret");
            assert_eq!(
                secret["metadata"]["labels"]["logroute.dev/route"],
                "payments.errors"
            );
            let decoded: Secret = serde_json::from_value(secret.clone()).expect("a Secret");
            let data = decoded.data.unwrap_or_default();
            let value = |k: &str| {
                data.get(k)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            };
            assert_eq!(
                value("search.username").as_deref(),
                Some("elastic"),
                "{secret}"
            );
            assert_eq!(
                value("search.password").as_deref(),
                Some("s3cret"),
                "{secret}"
            );
        }),
        config_map_call(|doc| {
            assert_eq!(doc["credentialsSecret"], COMPILED, "{doc}");
            let text = doc.to_string();
            assert!(
                !text.contains("s3cret"),
                "credentials must never be in the ConfigMap: {text}"
            );
        }),
        status_call(NS, &json, true, "Compiled", &["search(elasticsearch)"], &s2),
        event_call(NS, "Normal", "Compiled"),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("reconcile with the Secret");
}

#[tokio::test]
async fn a_secret_of_another_namespace_is_refused_and_never_read() {
    let (ctx, mut api, _) = context(&[(NS, &[]), ("kube-system", &[])]);
    let status = Captured::default();
    let (json, obj) = route(ES_OTHER_NAMESPACE, 1, None);
    // No GET of kube-system/es-creds: the scripted server fails on it.
    let calls = vec![
        Call::delete(cm_path()).not_found(),
        Call::delete(secret_path()).not_found(),
        status_call(
            NS,
            &json,
            false,
            "Forbidden",
            &[
                "spec.sinks[0].elasticsearch.auth.basicSecretRef.namespace",
                "own namespace",
            ],
            &status,
        ),
        event_call(NS, "Warning", "Forbidden"),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("reconcile");
    assert!(
        ctx.index()
            .routes_for_secret("kube-system", "es-creds")
            .is_empty()
    );
}

#[tokio::test]
async fn a_namespace_selector_is_resolved_into_the_status_and_document() {
    let (ctx, mut api, _) = context(&[
        (OP_NS, &[]),
        ("payments", &[("team", "pay")]),
        ("billing", &[("team", "pay")]),
        ("shop", &[("team", "shop")]),
    ]);
    let spec = r#"{"selector": {"namespaceSelector": {"matchLabels": {"team": "pay"}}},
        "sinks": [{"name": "out", "stdout": {}}]}"#;
    let json = route_json(OP_NS, spec, 1, None);
    let compiled = format!("lr.{OP_NS}.{NAME}");
    let status = Captured::default();
    let calls = vec![
        Call::apply(format!("/api/v1/namespaces/{OP_NS}/configmaps/{compiled}")).body(|cm| {
            let doc: Value =
                serde_json::from_str(cm["data"]["route.json"].as_str().unwrap_or_default())
                    .expect("route.json is JSON");
            assert_eq!(
                doc["scope"]["namespaces"],
                json!({"list": ["billing", "payments"]}),
                "{doc}"
            );
        }),
        Call::delete(format!("/api/v1/namespaces/{OP_NS}/secrets/{compiled}")).not_found(),
        status_call(
            OP_NS,
            &json,
            true,
            "Compiled",
            &["covers 2 namespaces"],
            &status,
        ),
        event_call(OP_NS, "Normal", "Compiled"),
    ];
    api.run(calls, reconcile(guarded(&json), ctx.clone()))
        .await
        .expect("reconcile");
    assert_eq!(status.get()["namespaces"], json!(["billing", "payments"]));
    assert_eq!(
        ctx.index().routes_with_namespace_selector(),
        vec![RouteKey::new(OP_NS, NAME)]
    );
}

#[tokio::test]
async fn deletion_removes_the_compiled_objects_then_the_finalizer() {
    let (ctx, mut api, registry) = context(&[(NS, &[])]);
    let mut json = route_json(NS, ES_BASIC, 2, None);
    json["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let mut gone = json.clone();
    gone["metadata"]["finalizers"] = json!([]);
    let calls = vec![
        Call::delete(cm_path()),
        Call::delete(secret_path()),
        Call::patch(route_path(NS)).reply(200, gone).body(|patch| {
            assert_eq!(
                patch,
                &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                        {"op": "remove", "path": "/metadata/finalizers/0"}])
            );
        }),
    ];
    let action = api
        .run(calls, reconcile(guarded(&json), ctx.clone()))
        .await
        .expect("cleanup");
    assert_eq!(action, Action::await_change());
    assert_eq!(
        metric(
            &registry,
            r#"logroute_controller_reconciliations_total{result="deleted"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_failed_cleanup_keeps_the_finalizer() {
    let (ctx, mut api, _) = context(&[(NS, &[])]);
    let mut json = route_json(NS, SYSLOG, 2, None);
    json["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let calls = vec![Call::delete(cm_path()).reply(
        500,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "etcd unavailable"}),
    )];
    let err = api
        .run(calls, reconcile(guarded(&json), ctx.clone()))
        .await
        .expect_err("cleanup must fail");
    assert!(err.to_string().contains("delete ConfigMap"), "{err}");
}

#[tokio::test]
async fn a_malformed_route_is_reported_once_and_withdrawn() {
    let (ctx, mut api, _) = context(&[(NS, &[])]);
    let mut json = route_json(NS, SYSLOG, 5, None);
    json["spec"]["sinks"] = json!("not a list");
    let obj = guarded(&json);
    assert!(
        matches!(obj.as_ref(), DeserializeGuard(Err(_))),
        "the fixture must fail to decode"
    );
    let status = Captured::default();
    let calls = vec![
        Call::delete(cm_path()).not_found(),
        Call::delete(secret_path()).not_found(),
        status_call(
            NS,
            &json,
            false,
            "InvalidSpec",
            &["not a valid LogRoute"],
            &status,
        ),
        event_call(NS, "Warning", "InvalidSpec"),
    ];
    api.run(calls, reconcile(obj.clone(), ctx.clone()))
        .await
        .expect("reconcile");
    // Nothing changed: no write at all (a status write would re-trigger it forever).
    api.run_silent(reconcile(obj, ctx.clone()))
        .await
        .expect("second reconcile");
}

#[tokio::test]
async fn the_start_up_sweep_deletes_only_orphans() {
    let (ctx, mut api, _) = context(&[]);
    let compiled = |name: &str, source: &str, uid: &str| {
        json!({"metadata": {"name": name, "namespace": OP_NS,
            "labels": {"logroute.dev/route": format!("payments.{source}"), "app.kubernetes.io/managed-by": "logroute-controller"},
            "annotations": {"logroute.dev/source-namespace": "payments", "logroute.dev/source-name": source,
                            "logroute.dev/source-uid": uid}}})
    };
    let list = |items: Vec<Value>| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items});
    let routes = list(vec![
        json!({"metadata": {"name": "kept", "namespace": "payments", "uid": "uid-kept"}}),
        json!({"metadata": {"name": "recreated", "namespace": "payments", "uid": "uid-new"}}),
    ]);
    let calls = vec![
        Call::get("/apis/logroute.dev/v1alpha1/logroutes").reply(200, routes),
        Call::get(format!("/api/v1/namespaces/{OP_NS}/configmaps"))
            .query("labelSelector=logroute.dev%2Froute%2Capp.kubernetes.io%2Fmanaged-by%3Dlogroute-controller")
            .reply(
                200,
                list(vec![
                    compiled("lr.payments.kept", "kept", "uid-kept"),
                    compiled("lr.payments.recreated", "recreated", "uid-old"),
                    compiled("lr.payments.gone", "gone", "uid-gone"),
                ]),
            ),
        Call::delete(format!("/api/v1/namespaces/{OP_NS}/configmaps/lr.payments.recreated")),
        Call::delete(format!("/api/v1/namespaces/{OP_NS}/configmaps/lr.payments.gone")),
        Call::get(format!("/api/v1/namespaces/{OP_NS}/secrets"))
            .query("labelSelector=")
            .reply(200, list(vec![compiled("lr.payments.kept", "kept", "uid-kept"), compiled("lr.payments.gone", "gone", "uid-gone")])),
        Call::delete(format!("/api/v1/namespaces/{OP_NS}/secrets/lr.payments.gone")),
    ];
    let removed = api
        .run(calls, sweep::sweep(&ctx.client, OP_NS))
        .await
        .expect("sweep");
    assert_eq!(removed, 3);
}

#[tokio::test]
async fn failures_are_counted_and_retried_with_growing_delays() {
    let (ctx, _api, registry) = context(&[]);
    let (_, obj) = route(SYSLOG, 1, None);
    let first = error_policy(obj.clone(), &Error::NamespaceCacheGone, ctx.clone());
    let second = error_policy(obj, &Error::NamespaceCacheGone, ctx.clone());
    // 5 s then 10 s, each with at most 10 % jitter.
    let in_range = |a: &Action, lo: u64, hi: u64| {
        (lo..=hi).any(|ms| *a == Action::requeue(std::time::Duration::from_millis(ms)))
    };
    assert!(in_range(&first, 5_000, 5_500), "{first:?}");
    assert!(in_range(&second, 10_000, 11_000), "{second:?}");
    assert_eq!(
        metric(
            &registry,
            r#"logroute_controller_reconciliations_total{result="error"}"#
        ),
        Some(2.0)
    );
}

#[path = "tenancy_tests.rs"]
mod tenancy;
