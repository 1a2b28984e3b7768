//! Tenancy in the controller: the egress policy refuses destinations with the rule named
//! in the status and a Warning Event, and the controller never asks for a Secret that is
//! not labelled for logroute (the scripted API server also refuses that in every test).

use super::*;
use crate::route::Policy;

fn strict_context() -> (
    Arc<super::super::Context>,
    super::super::fixtures::ApiServer,
) {
    let (ctx, api, _) = context(&[(NS, &[("tier", "prod")])]);
    let ctx = Arc::try_unwrap(ctx)
        .unwrap_or_else(|_| panic!("a fresh context has one owner"))
        .with_policy(
            Policy::parse(
                "rules: [{name: no-team-b, action: deny, hosts: ['*.team-b.svc'], namespaceSelector: {matchLabels: {tier: prod}}}]",
            )
            .expect("test policy")
            .with_api_server(Some("10.96.0.1")),
        );
    (Arc::new(ctx), api)
}

#[tokio::test]
async fn a_refused_destination_names_field_and_rule_in_status_and_event() {
    for (spec, path, rule) in [
        (
            r#"{"sinks": [{"name": "meta", "syslog": {"address": "169.254.169.254:514"}}]}"#,
            "spec.sinks[0].syslog.address",
            "builtin:link-local",
        ),
        (
            r#"{"sinks": [{"name": "api", "elasticsearch": {"endpoints": ["https://10.96.0.1"]}}]}"#,
            "spec.sinks[0].elasticsearch.endpoints[0]",
            "builtin:api-server",
        ),
        (
            r#"{"sinks": [{"name": "other", "syslog": {"address": "logs.team-b.svc:514"}}]}"#,
            "spec.sinks[0].syslog.address",
            "no-team-b",
        ),
    ] {
        let (ctx, mut api) = strict_context();
        let status = Captured::default();
        let (json, obj) = route(spec, 1, None);
        let calls = vec![
            Call::delete(cm_path()).not_found(),
            Call::delete(secret_path()).not_found(),
            status_call(NS, &json, false, "Forbidden", &[path, rule], &status),
            event_call(NS, "Warning", "Forbidden"),
        ];
        api.run(calls, reconcile(obj, ctx.clone()))
            .await
            .unwrap_or_else(|e| panic!("reconcile {spec}: {e}"));
    }
}

#[tokio::test]
async fn an_allowed_tenant_route_carries_its_egress_rules_to_the_agents() {
    let (ctx, mut api) = strict_context();
    let status = Captured::default();
    let (json, obj) = route(SYSLOG, 1, None);
    let calls = vec![
        config_map_call(|doc| {
            let egress = &doc["sinks"][0]["syslog"]["egress"];
            assert_eq!(egress["rules"][0]["name"], "no-team-b", "{doc}");
            assert_eq!(egress["apiServer"][0], "10.96.0.1", "{doc}");
        }),
        Call::delete(secret_path()).not_found(),
        status_call(NS, &json, true, "Compiled", &[], &status),
        event_call(NS, "Normal", "Compiled"),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("reconcile");
    assert_eq!(
        ctx.index().routes_with_namespace_selector(),
        vec![RouteKey::new(NS, NAME)],
        "a policy with namespace selectors makes the route follow its namespace's labels"
    );
}

#[tokio::test]
async fn an_unlabelled_secret_is_never_requested_and_the_status_says_how_to_label_it() {
    let (ctx, mut api, _) = context(&[(NS, &[])]);
    let status = Captured::default();
    let (json, obj) = route(ES_BASIC, 1, None);
    // The server holds es-creds without the label: the label-selected list is empty.
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
                "lacks the label logroute.dev/credentials=true",
                "kubectl label secret",
            ],
            &status,
        ),
        event_call(NS, "Warning", "SecretNotFound"),
    ];
    api.run(calls, reconcile(obj, ctx.clone()))
        .await
        .expect("reconcile");
}

#[test]
fn the_scripted_server_decodes_the_label_selector() {
    assert_eq!(
        super::super::fixtures::query_param(
            "fieldSelector=metadata.name%3Dx&labelSelector=logroute.dev%2Fcredentials%3Dtrue",
            "labelSelector"
        )
        .as_deref(),
        Some(crate::api::CREDENTIALS_SELECTOR)
    );
}
