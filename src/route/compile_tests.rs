use std::collections::BTreeMap;

use super::*;
use crate::route::document::NamespaceScope;

const OP: &str = "logroute-system";

fn route(yaml: &str) -> LogRoute {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("test YAML does not parse: {e}\n{yaml}"))
}

fn secrets(ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    match (ns, name) {
        ("payments", "es-basic") => Some(BTreeMap::from([
            ("username".to_string(), b"elastic".to_vec()),
            ("password".to_string(), b"s3cret".to_vec()),
        ])),
        ("payments", "syslog-ca") => {
            Some(BTreeMap::from([("ca.crt".to_string(), b"PEM".to_vec())]))
        }
        ("payments", "half") => Some(BTreeMap::from([("username".to_string(), b"u".to_vec())])),
        _ => None,
    }
}

fn namespaces() -> Vec<(String, BTreeMap<String, String>)> {
    vec![
        (
            "payments".into(),
            BTreeMap::from([("team".into(), "pay".into())]),
        ),
        (
            "shop".into(),
            BTreeMap::from([("team".into(), "shop".into())]),
        ),
        (
            "billing".into(),
            BTreeMap::from([("team".into(), "pay".into())]),
        ),
    ]
}

fn compile_online(yaml: &str) -> Result<Compiled, Vec<Problem>> {
    let ns = namespaces();
    let lookup = secrets;
    compile(
        &route(yaml),
        &CompileEnv {
            operator_namespace: OP,
            namespaces: Some(&ns),
            secrets: Some(&lookup),
        },
    )
}

fn header(ns: &str) -> String {
    format!(
        "apiVersion: logroute.dev/v1alpha1\nkind: LogRoute\nmetadata: {{name: r1, namespace: {ns}, uid: u-1, generation: 3}}\n"
    )
}

fn with_spec(ns: &str, spec: &str) -> String {
    format!("{}spec:\n{}", header(ns), spec)
}

const STDOUT_SINK: &str = "  sinks: [{name: debug, stdout: {}}]\n";

#[test]
fn minimal_route_gets_defaults_and_own_namespace_scope() {
    let c = compile_online(&with_spec("payments", STDOUT_SINK)).expect("valid");
    let d = &c.document;
    assert_eq!(d.version, DOCUMENT_VERSION);
    assert_eq!(d.route.key(), "payments/r1");
    assert_eq!(d.route.uid.as_deref(), Some("u-1"));
    assert_eq!(d.route.generation, Some(3));
    assert_eq!(
        d.scope.namespaces,
        NamespaceScope::List(vec!["payments".into()])
    );
    assert_eq!(d.scope.host_containers, None);
    assert_eq!(
        d.selector.streams,
        vec![StreamName::Stdout, StreamName::Stderr]
    );
    assert!(d.credentials_secret.is_none());
    assert!(c.credentials.is_empty());
}

#[test]
fn syslog_defaults_and_parsing() {
    let c = compile_online(&with_spec(
        "payments",
        "  sinks:\n  - name: central\n    syslog: {address: 'syslog.logging.svc:6514', facility: local3, severity: warning}\n",
    ))
    .expect("valid");
    let SinkConfig::Syslog(s) = &c.document.sinks[0].config else {
        panic!("not syslog")
    };
    assert_eq!((s.host.as_str(), s.port), ("syslog.logging.svc", 6514));
    assert_eq!(s.transport, SyslogTransport::Tcp);
    assert_eq!(s.format, SyslogFormat::Rfc5424);
    assert_eq!(s.framing, SyslogFraming::OctetCounting);
    assert_eq!(s.facility, 19);
    assert_eq!(s.severity, Some(4));
    assert_eq!(s.max_message_bytes, 65_536);

    let c = compile_online(&with_spec(
        "payments",
        "  sinks: [{name: u, syslog: {address: '[fd00::1]:514', transport: udp}}]\n",
    ))
    .expect("valid");
    let SinkConfig::Syslog(s) = &c.document.sinks[0].config else {
        panic!("not syslog")
    };
    assert_eq!(
        (s.host.as_str(), s.port, s.max_message_bytes),
        ("fd00::1", 514, 8192)
    );
}

#[test]
fn relp_defaults_and_tls() {
    let c = compile_online(&with_spec(
        "payments",
        "  sinks: [{name: r, syslog: {address: 'rsyslog:2514', transport: relp}}]\n",
    ))
    .expect("valid");
    let SinkConfig::Syslog(s) = &c.document.sinks[0].config else {
        panic!("not syslog")
    };
    assert_eq!(s.transport, SyslogTransport::Relp);
    assert_eq!(
        s.relp,
        Some(RelpSettings {
            window: 128,
            ack_timeout_ms: 30_000
        })
    );
    assert_eq!(s.tls, None, "plain RELP unless relp.tls");
    assert_eq!(s.max_message_bytes, 65_536);

    let c = compile_online(&with_spec(
        "payments",
        "  sinks:\n  - name: r\n    syslog:\n      address: 'rsyslog:2514'\n      transport: relp\n      relp: {tls: true, window: 16, ackTimeoutMs: 5000}\n      tls: {caSecretRef: {name: syslog-ca, key: ca.crt}, serverName: rsyslog.logging.svc}\n",
    ))
    .expect("valid");
    let SinkConfig::Syslog(s) = &c.document.sinks[0].config else {
        panic!("not syslog")
    };
    assert_eq!(
        s.relp,
        Some(RelpSettings {
            window: 16,
            ack_timeout_ms: 5000
        })
    );
    let tls = s.tls.as_ref().expect("RELP over TLS");
    assert_eq!(tls.server_name, "rsyslog.logging.svc");
    assert!(
        tls.ca.is_some(),
        "the CA Secret is resolved as for transport: tls"
    );
    assert!(!c.credentials.is_empty());
    // Another transport has no RELP settings.
    let c = compile_online(&with_spec(
        "payments",
        "  sinks: [{name: t, syslog: {address: 'h:514'}}]\n",
    ))
    .expect("valid");
    let SinkConfig::Syslog(s) = &c.document.sinks[0].config else {
        panic!("not syslog")
    };
    assert_eq!(s.relp, None);
}

#[test]
fn credentials_resolve_into_the_secret_not_the_document() {
    let c = compile_online(&with_spec(
        "payments",
        "  sinks:\n  - name: search\n    elasticsearch:\n      endpoints: ['https://es:9200/']\n      auth: {basicSecretRef: {name: es-basic}}\n      tls: {caSecretRef: {name: syslog-ca, key: ca.crt}}\n",
    ))
    .expect("valid");
    let json = c.document.to_json();
    assert!(
        !json.contains("s3cret"),
        "password leaked into the document: {json}"
    );
    assert_eq!(
        c.document.credentials_secret.as_deref(),
        Some("lr.payments.r1")
    );
    assert_eq!(
        c.credentials.get("search.password").map(Vec::as_slice),
        Some(&b"s3cret"[..])
    );
    assert_eq!(
        c.credentials.get("search.ca.crt").map(Vec::as_slice),
        Some(&b"PEM"[..])
    );
    assert_eq!(
        c.secret_refs,
        vec![
            ("payments".into(), "es-basic".into()),
            ("payments".into(), "syslog-ca".into())
        ]
    );
    let SinkConfig::Elasticsearch(e) = &c.document.sinks[0].config else {
        panic!("not es")
    };
    assert_eq!(e.endpoints, vec!["https://es:9200".to_string()]);
    assert_eq!(e.target, IndexTarget::Index("logroute-%Y.%m.%d".into()));
    assert_eq!(e.tls.as_ref().map(|t| t.server_name.as_str()), Some("es"));
    assert_eq!(
        (e.max_events, e.max_bytes, e.max_concurrency),
        (1000, 5 << 20, 2)
    );
}

#[test]
fn operator_namespace_resolves_namespace_selector_and_host_containers() {
    let c = compile_online(&with_spec(
        OP,
        &("  selector:\n    namespaceSelector: {matchLabels: {team: pay}}\n    hostContainers: {names: [nginx]}\n".to_owned()
            + STDOUT_SINK),
    ))
    .expect("valid");
    assert_eq!(
        c.document.scope.namespaces,
        NamespaceScope::List(vec!["billing".into(), "payments".into()])
    );
    assert_eq!(
        c.document
            .scope
            .host_containers
            .as_ref()
            .map(|h| h.names.clone()),
        Some(vec!["nginx".into()])
    );

    let c = compile_online(&with_spec(
        OP,
        &("  selector: {namespaceSelector: {}}\n".to_owned() + STDOUT_SINK),
    ))
    .expect("valid");
    assert_eq!(c.document.scope.namespaces, NamespaceScope::All);
}

#[test]
fn offline_compile_checks_form_but_resolves_nothing() {
    let r = route(&with_spec(
        "payments",
        "  sinks: [{name: s, elasticsearch: {endpoints: ['http://es:9200'], auth: {apiKeySecretRef: {name: nope, key: k}}}}]\n",
    ));
    let c = compile(
        &r,
        &CompileEnv {
            operator_namespace: OP,
            namespaces: None,
            secrets: None,
        },
    )
    .expect("valid offline");
    assert!(c.credentials.is_empty());
    assert_eq!(
        c.document.credentials_secret.as_deref(),
        Some("lr.payments.r1")
    );
}

/// Each invalid spec with the reason, field path and a fragment of the message.
#[test]
fn invalid_specs_name_field_and_fix() {
    let cases: &[(&str, &str, Reason, &str, &str)] = &[
        (
            "payments",
            "  sinks: []\n",
            Reason::InvalidSpec,
            "spec.sinks",
            "at least one sink",
        ),
        (
            "payments",
            "  sinks: [{name: a, stdout: {}}, {name: a, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[1].name",
            "used twice",
        ),
        (
            "payments",
            "  sinks: [{name: Bad_Name, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].name",
            "not a valid sink name",
        ),
        (
            "payments",
            "  sinks: [{name: a}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0]",
            "exactly one of",
        ),
        (
            "payments",
            "  sinks: [{name: a, stdout: {}, syslog: {address: 'h:1'}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0]",
            "exactly one of",
        ),
        (
            "payments",
            "  filter: {include: '(unclosed'}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.filter.include",
            "not a valid regular expression",
        ),
        (
            "payments",
            "  filter: {exclude: 'a{1000}{1000}'}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.filter.exclude",
            "simplify it",
        ),
        (
            "payments",
            "  multiline: {start: '^\\w{40}'}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.multiline.start",
            "compiles to more than 1048576 bytes",
        ),
        (
            "payments",
            "  multiline: {start: '^\\S', maxLines: 0}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.multiline.maxLines",
            "out of range",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'nohost'}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.address",
            "has no port",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'tcp://h:514'}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.address",
            "choose the protocol with `transport`",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:70000'}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.address",
            "from 1 to 65535",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:514', facility: local9}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.facility",
            "unknown facility",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:514', severity: loud}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.severity",
            "unknown severity",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:514', transport: udp, maxMessageBytes: 70000}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.maxMessageBytes",
            "480 to 65000",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:514', tls: {insecureSkipVerify: true}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.tls",
            "transport is not tls",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:2514', relp: {window: 8}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.relp",
            "transport is not relp",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:2514', transport: relp, relp: {window: 0}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.relp.window",
            "1 to 1024",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:2514', transport: relp, relp: {window: 4096}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.relp.window",
            "1 to 1024 (default 128)",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:2514', transport: relp, relp: {ackTimeoutMs: 10}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.relp.ackTimeoutMs",
            "1000 to 300000",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:2514', transport: relp, framing: newline}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.framing",
            "RELP frames every message itself",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:2514', transport: relp, tls: {insecureSkipVerify: true}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].syslog.tls",
            "set relp.tls: true",
        ),
        (
            "payments",
            "  sinks: [{name: a, syslog: {address: 'h:2514', transport: relp, relp: {tls: true}, tls: {caSecretRef: {name: nope, key: ca.crt}}}}]\n",
            Reason::SecretNotFound,
            "spec.sinks[0].syslog.tls.caSecretRef.name",
            "Secret payments/nope does not exist",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['es:9200']}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].elasticsearch.endpoints[0]",
            "http:// or https://",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['http://es:9200'], index: 'Logs-%Y'}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].elasticsearch.index",
            "lowercase",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['http://es:9200'], index: 'logs-{tenant}'}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].elasticsearch.index",
            "unknown placeholder",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['http://es:9200'], batch: {maxBytes: lots}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].elasticsearch.batch.maxBytes",
            "not a quantity",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['http://es:9200'], dataStream: {dataset: 'my-app'}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].elasticsearch.dataStream.dataset",
            "without '-'",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['http://es:9200'], auth: {}}}]\n",
            Reason::InvalidSpec,
            "spec.sinks[0].elasticsearch.auth",
            "exactly one of",
        ),
        (
            "payments",
            "  selector: {matchExpressions: [{key: app, operator: In}]}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.selector.matchExpressions[0].values",
            "at least one value",
        ),
        (
            "payments",
            "  selector: {matchLabels: {'bad key!': x}}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.selector.matchLabels[\"bad key!\"]",
            "invalid label key",
        ),
        (
            "payments",
            "  selector: {containers: [API]}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::InvalidSpec,
            "spec.selector.containers[0]",
            "not a container name",
        ),
        (
            "payments",
            "  selector: {namespaceSelector: {}}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::Forbidden,
            "spec.selector.namespaceSelector",
            "operator namespace",
        ),
        (
            "payments",
            "  selector: {hostContainers: {}}\n  sinks: [{name: a, stdout: {}}]\n",
            Reason::Forbidden,
            "spec.selector.hostContainers",
            "non-pod containers",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['http://es:9200'], auth: {apiKeySecretRef: {name: k, key: k, namespace: other}}}}]\n",
            Reason::Forbidden,
            "spec.sinks[0].elasticsearch.auth.apiKeySecretRef.namespace",
            "own namespace",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['http://es:9200'], auth: {apiKeySecretRef: {name: missing, key: k}}}}]\n",
            Reason::SecretNotFound,
            "spec.sinks[0].elasticsearch.auth.apiKeySecretRef.name",
            "does not exist",
        ),
        (
            "payments",
            "  sinks: [{name: a, elasticsearch: {endpoints: ['http://es:9200'], auth: {basicSecretRef: {name: half}}}}]\n",
            Reason::SecretNotFound,
            "spec.sinks[0].elasticsearch.auth.basicSecretRef",
            "no key \"password\"",
        ),
    ];
    for (ns, spec, reason, path, fragment) in cases {
        let problems = match compile_online(&with_spec(ns, spec)) {
            Ok(_) => panic!("expected {path} to be refused, but it compiled:\n{spec}"),
            Err(p) => p,
        };
        let found = problems.iter().find(|p| p.path == *path);
        let Some(p) = found else {
            panic!("no problem at {path} for\n{spec}\ngot: {problems:?}")
        };
        assert_eq!(p.reason, *reason, "reason for {path}: {p}");
        assert!(
            p.message.contains(fragment),
            "message for {path} should contain {fragment:?}: {p}"
        );
        assert_eq!(
            problems[0].reason, *reason,
            "first problem decides the Ready reason: {problems:?}"
        );
    }
}

#[test]
fn all_problems_are_reported_tenancy_first() {
    let problems = compile_online(&with_spec(
        "payments",
        "  filter: {include: '('}\n  selector: {hostContainers: {}}\n  sinks: [{name: a, syslog: {address: x}}]\n",
    ))
    .unwrap_err();
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "spec.selector.hostContainers",
            "spec.filter.include",
            "spec.sinks[0].syslog.address"
        ]
    );
}

#[test]
fn compiled_names_are_unique_and_bounded() {
    assert_eq!(compiled_object_name("a-b", "c"), "lr.a-b.c");
    assert_ne!(
        compiled_object_name("a-b", "c"),
        compiled_object_name("a", "b-c")
    );
    let long = "x".repeat(253);
    let n1 = compiled_object_name("ns", &long);
    let n2 = compiled_object_name("ns", &format!("{}y", &long[..252]));
    assert!(n1.len() <= 253 && n2.len() <= 253);
    assert_ne!(n1, n2);
}

#[test]
fn quantities() {
    assert_eq!(parse_quantity("5Mi"), Some(5 << 20));
    assert_eq!(parse_quantity("500k"), Some(500_000));
    assert_eq!(parse_quantity("1024"), Some(1024));
    assert_eq!(parse_quantity("5MB"), None);
}

#[test]
fn label_selector_semantics() {
    let labels = BTreeMap::from([
        ("app".to_string(), "a".to_string()),
        ("tier".to_string(), "web".to_string()),
    ]);
    let req = |key: &str, operator, values: &[&str]| LabelRequirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let none = BTreeMap::new();
    assert!(labels_match(
        &BTreeMap::from([("app".into(), "a".into())]),
        &[],
        &labels
    ));
    assert!(!labels_match(
        &BTreeMap::from([("app".into(), "b".into())]),
        &[],
        &labels
    ));
    assert!(labels_match(
        &none,
        &[req("tier", LabelOperator::In, &["web", "db"])],
        &labels
    ));
    assert!(!labels_match(
        &none,
        &[req("tier", LabelOperator::NotIn, &["web"])],
        &labels
    ));
    assert!(labels_match(
        &none,
        &[req("zone", LabelOperator::NotIn, &["x"])],
        &labels
    ));
    assert!(labels_match(
        &none,
        &[req("app", LabelOperator::Exists, &[])],
        &labels
    ));
    assert!(labels_match(
        &none,
        &[req("zone", LabelOperator::DoesNotExist, &[])],
        &labels
    ));
}
