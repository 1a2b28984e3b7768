//! The operator's tenancy policy as the compiler applies it: egress destinations, the
//! stdout sink and credentials over plain HTTP.

use std::collections::BTreeMap;

use super::*;
use crate::route::egress::{Action, BUILTIN_API_SERVER, BUILTIN_LINK_LOCAL, BUILTIN_LOOPBACK};

const OP: &str = "logroute-system";

fn route(ns: &str, sinks: &str) -> LogRoute {
    let yaml = format!(
        "apiVersion: logroute.dev/v1alpha1\nkind: LogRoute\nmetadata: {{name: r1, namespace: {ns}}}\nspec:\n  sinks: {sinks}\n"
    );
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("test YAML: {e}\n{yaml}"))
}

fn secrets(ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    (ns == "payments" && name == "es-key")
        .then(|| BTreeMap::from([("key".to_string(), b"k".to_vec())]))
}

fn namespaces() -> Vec<(String, BTreeMap<String, String>)> {
    vec![
        (
            "payments".into(),
            BTreeMap::from([("tier".into(), "prod".into())]),
        ),
        ("dev".into(), BTreeMap::new()),
        (OP.into(), BTreeMap::new()),
    ]
}

fn with_policy(policy: &Policy, ns: &str, sinks: &str) -> Result<Compiled, Vec<Problem>> {
    let all = namespaces();
    let lookup = secrets;
    let env = CompileEnv {
        operator_namespace: OP,
        namespaces: Some(&all),
        secrets: Some(&lookup),
    };
    compile_with_policy(&route(ns, sinks), &env, policy)
}

/// The single problem, which must be Forbidden at `path` and mention every needle.
fn forbidden(result: Result<Compiled, Vec<Problem>>, path: &str, needles: &[&str]) {
    let problems = result.expect_err("the route must be refused");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(p.reason, Reason::Forbidden, "{p}");
    assert_eq!(p.path, path, "{p}");
    for n in needles {
        assert!(p.message.contains(n), "expected {n:?} in {p}");
    }
}

const STDOUT: &str = "[{name: debug, stdout: {}}]";

#[test]
fn stdout_is_for_the_operator_namespace_unless_the_policy_names_the_tenant() {
    let default = Policy::default();
    forbidden(
        with_policy(&default, "payments", STDOUT),
        "spec.sinks[0].stdout",
        &["operator namespace", "logroute-system"],
    );
    with_policy(&default, OP, STDOUT).expect("the operator may debug with stdout");
    let dev = Policy::parse("stdout: {namespaces: [dev]}").expect("policy");
    with_policy(&dev, "dev", STDOUT).expect("the policy lets dev use stdout");
    forbidden(
        with_policy(&dev, "payments", STDOUT),
        "spec.sinks[0].stdout",
        &[],
    );
}

#[test]
fn built_in_denials_name_the_field_and_the_rule() {
    let p = Policy::default().with_api_server(Some("10.96.0.1"));
    for (sinks, path, rule) in [
        (
            "[{name: s, syslog: {address: '169.254.169.254:514'}}]",
            "spec.sinks[0].syslog.address",
            BUILTIN_LINK_LOCAL,
        ),
        (
            "[{name: s, syslog: {address: 'localhost:514', transport: udp}}]",
            "spec.sinks[0].syslog.address",
            BUILTIN_LOOPBACK,
        ),
        (
            "[{name: e, elasticsearch: {endpoints: ['https://kubernetes.default.svc']}}]",
            "spec.sinks[0].elasticsearch.endpoints[0]",
            BUILTIN_API_SERVER,
        ),
        (
            "[{name: e, elasticsearch: {endpoints: ['https://es.svc', 'https://10.96.0.1:443']}}]",
            "spec.sinks[0].elasticsearch.endpoints[1]",
            BUILTIN_API_SERVER,
        ),
    ] {
        forbidden(with_policy(&p, "payments", sinks), path, &[rule, "egress"]);
        with_policy(&p, OP, sinks).expect("operator-namespace routes are unrestricted");
    }
}

#[test]
fn operator_rules_allow_and_refuse_and_travel_in_the_document() {
    let p = Policy::parse(
        "defaultAction: deny\nrules:\n- {name: central, action: allow, hosts: ['*.logging.svc'], ports: [6514], schemes: [tls]}\n- {name: prod-relay, action: allow, namespaceSelector: {matchLabels: {tier: prod}}, hosts: [relay.example.com]}\n",
    )
    .expect("policy");
    let ok = with_policy(
        &p,
        "dev",
        "[{name: s, syslog: {address: 'syslog.logging.svc:6514', transport: tls}}]",
    )
    .expect("allowed by `central`");
    let SinkConfig::Syslog(cfg) = &ok.document.sinks[0].config else {
        panic!("a syslog sink");
    };
    let rules = cfg
        .egress
        .as_ref()
        .expect("tenant sinks carry their egress rules");
    assert_eq!(rules.default_action, Action::Deny);
    assert_eq!(
        rules.rules.len(),
        1,
        "dev is not prod: only `central` applies"
    );
    let json = ok.document.to_json();
    let back = crate::route::CompiledRoute::from_json(&json).expect("round trip");
    assert_eq!(back, ok.document);

    forbidden(
        with_policy(
            &p,
            "dev",
            "[{name: s, syslog: {address: 'syslog.logging.svc:514'}}]",
        ),
        "spec.sinks[0].syslog.address",
        &["\"default\"", "syslog.logging.svc:514 (tcp)"],
    );
    forbidden(
        with_policy(
            &p,
            "dev",
            "[{name: s, syslog: {address: 'relay.example.com:514'}}]",
        ),
        "spec.sinks[0].syslog.address",
        &["\"default\""],
    );
    with_policy(
        &p,
        "payments",
        "[{name: s, syslog: {address: 'relay.example.com:514'}}]",
    )
    .expect("payments is labelled tier=prod");

    let deny = Policy::parse("rules: [{name: no-team-b, action: deny, hosts: ['*.team-b.svc']}]")
        .expect("policy");
    forbidden(
        with_policy(
            &deny,
            "payments",
            "[{name: s, syslog: {address: 'es.team-b.svc:514'}}]",
        ),
        "spec.sinks[0].syslog.address",
        &["\"no-team-b\""],
    );
}

#[test]
fn an_address_rule_defers_a_name_to_the_agent_with_a_warning() {
    let p = Policy::parse(
        "defaultAction: deny\nrules: [{name: pods, action: allow, cidrs: [10.0.0.0/8]}]",
    )
    .expect("policy");
    let c = with_policy(
        &p,
        "dev",
        "[{name: s, syslog: {address: 'syslog.logging.svc:514'}}]",
    )
    .expect("decided at connect time");
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("\"pods\"") && w.contains("resolves")),
        "{:?}",
        c.warnings
    );
    forbidden(
        with_policy(&p, "dev", "[{name: s, syslog: {address: '192.0.2.1:514'}}]"),
        "spec.sinks[0].syslog.address",
        &["\"default\""],
    );
}

#[test]
fn credentials_over_plain_http_are_refused_for_tenants_unless_allowed() {
    let sinks = "[{name: e, elasticsearch: {endpoints: ['http://es.logging.svc:9200'], auth: {apiKeySecretRef: {name: es-key, key: key}}}}]";
    forbidden(
        with_policy(&Policy::default(), "payments", sinks),
        "spec.sinks[0].elasticsearch.auth",
        &["https://"],
    );
    let allowed = Policy::parse("plainHttpCredentials: {namespaces: [payments]}").expect("policy");
    with_policy(&allowed, "payments", sinks).expect("the policy allows it for payments");
    with_policy(
        &Policy::default(),
        "payments",
        "[{name: e, elasticsearch: {endpoints: ['http://es.logging.svc:9200']}}]",
    )
    .expect("plain http without credentials stays allowed");
}

#[test]
fn without_a_policy_nothing_is_restricted() {
    let all = namespaces();
    let env = CompileEnv {
        operator_namespace: OP,
        namespaces: Some(&all),
        secrets: None,
    };
    let c = compile(
        &route(
            "payments",
            "[{name: s, syslog: {address: '127.0.0.1:514'}}, {name: d, stdout: {}}]",
        ),
        &env,
    )
    .expect("agent --routes files are trusted");
    let SinkConfig::Syslog(cfg) = &c.document.sinks[0].config else {
        panic!("a syslog sink");
    };
    assert_eq!(cfg.egress, None);
}
