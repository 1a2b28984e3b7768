use std::net::IpAddr;

use super::*;

fn rule(name: &str, action: Action) -> EgressRule {
    EgressRule {
        name: name.into(),
        action,
        ..EgressRule::default()
    }
}

fn at(host: &str, port: u16, scheme: Scheme) -> Destination<'_> {
    Destination {
        host,
        address: None,
        port,
        scheme,
    }
}

fn resolved<'a>(host: &'a str, address: &str, port: u16) -> Destination<'a> {
    Destination {
        host,
        address: Some(address.parse::<IpAddr>().expect("test address")),
        port,
        scheme: Scheme::Tcp,
    }
}

fn deny(rule: &str) -> Verdict {
    Verdict::Deny { rule: rule.into() }
}

#[test]
fn built_in_denials_hold_by_default() {
    let rules = EgressRules {
        api_server: vec!["10.96.0.1".into()],
        ..EgressRules::default()
    };
    for (host, expected) in [
        ("169.254.169.254", BUILTIN_LINK_LOCAL),
        ("[fe80::1]", BUILTIN_LINK_LOCAL),
        ("::ffff:169.254.169.254", BUILTIN_LINK_LOCAL),
        ("127.0.0.1", BUILTIN_LOOPBACK),
        ("127.9.9.9", BUILTIN_LOOPBACK),
        ("::1", BUILTIN_LOOPBACK),
        ("0.0.0.0", BUILTIN_LOOPBACK),
        ("localhost", BUILTIN_LOOPBACK),
        ("LocalHost.", BUILTIN_LOOPBACK),
        ("kubernetes.default.svc", BUILTIN_API_SERVER),
        ("kubernetes.default.svc.cluster.local", BUILTIN_API_SERVER),
        ("kubernetes", BUILTIN_API_SERVER),
        ("10.96.0.1", BUILTIN_API_SERVER),
    ] {
        assert_eq!(
            rules.check(&at(host, 514, Scheme::Tcp)),
            deny(expected),
            "{host}"
        );
    }
    for host in [
        "syslog.logging.svc",
        "10.0.0.5",
        "kubernetes.example.com",
        "fd00::1",
    ] {
        assert_eq!(
            rules.check(&at(host, 514, Scheme::Tcp)),
            Verdict::Allow,
            "{host}"
        );
    }
}

#[test]
fn a_name_resolving_to_a_denied_address_is_refused_at_connect_time() {
    let rules = EgressRules::default();
    assert_eq!(
        rules.check(&at("evil.example.com", 514, Scheme::Tcp)),
        Verdict::Allow
    );
    assert_eq!(
        rules.check(&resolved("evil.example.com", "169.254.169.254", 514)),
        deny(BUILTIN_LINK_LOCAL)
    );
    assert_eq!(
        rules.check(&resolved("evil.example.com", "::ffff:127.0.0.1", 514)),
        deny(BUILTIN_LOOPBACK)
    );
}

#[test]
fn only_an_allow_naming_the_destination_itself_lifts_a_built_in_denial() {
    let by_name = EgressRules {
        rules: vec![EgressRule {
            hosts: vec!["*.example.com".into()],
            ..rule("example", Action::Allow)
        }],
        ..EgressRules::default()
    };
    assert_eq!(
        by_name.check(&resolved("metadata.example.com", "169.254.169.254", 80)),
        deny(BUILTIN_LINK_LOCAL),
        "an allowed name must not unlock the metadata address it resolves to"
    );
    let by_cidr = EgressRules {
        rules: vec![EgressRule {
            cidrs: vec!["127.0.0.0/8".into()],
            ports: vec![5514],
            ..rule("node-local-relay", Action::Allow)
        }],
        ..EgressRules::default()
    };
    assert_eq!(
        by_cidr.check(&at("127.0.0.1", 5514, Scheme::Tcp)),
        Verdict::Allow
    );
    assert_eq!(
        by_cidr.check(&at("127.0.0.1", 22, Scheme::Tcp)),
        deny(BUILTIN_LOOPBACK),
        "the lifting rule's ports still apply"
    );
    let api_by_name = EgressRules {
        rules: vec![EgressRule {
            hosts: vec!["kubernetes.default.svc".into()],
            ..rule("audit", Action::Allow)
        }],
        ..EgressRules::default()
    };
    assert_eq!(
        api_by_name.check(&at("kubernetes.default.svc", 443, Scheme::Https)),
        Verdict::Allow
    );
}

#[test]
fn first_matching_rule_decides_then_the_default() {
    let rules = EgressRules {
        rules: vec![
            EgressRule {
                hosts: vec!["*.logging.svc".into()],
                schemes: vec![Scheme::Tls, Scheme::Https],
                ..rule("central", Action::Allow)
            },
            EgressRule {
                cidrs: vec!["10.0.0.0/8".into()],
                ..rule("no-pod-network", Action::Deny)
            },
        ],
        default_action: Action::Deny,
        ..EgressRules::default()
    };
    assert_eq!(
        rules.check(&at("es.logging.svc", 9200, Scheme::Https)),
        Verdict::Allow
    );
    assert_eq!(
        rules.check(&at("es.logging.svc", 9200, Scheme::Http)),
        Verdict::Deferred {
            rule: "no-pod-network".into()
        },
        "http is not allowed by `central`; the next rule needs the address"
    );
    assert_eq!(
        rules.check(&at("10.1.2.3", 514, Scheme::Tcp)),
        deny("no-pod-network")
    );
    assert_eq!(
        rules.check(&resolved("x.example.com", "10.1.2.3", 514)),
        deny("no-pod-network")
    );
    assert_eq!(
        rules.check(&resolved("x.example.com", "192.0.2.1", 514)),
        deny(DEFAULT_RULE)
    );
    assert_eq!(
        rules.check(&at("logging.svc", 6514, Scheme::Tls)),
        Verdict::Deferred {
            rule: "no-pod-network".into()
        },
        "`*.logging.svc` matches names below logging.svc only"
    );
}

#[test]
fn host_patterns_and_cidrs() {
    assert!(host_pattern_matches("*.example.com", "a.example.com"));
    assert!(host_pattern_matches("*.Example.com.", "a.b.example.com"));
    assert!(!host_pattern_matches("*.example.com", "example.com"));
    assert!(!host_pattern_matches("*.example.com", "badexample.com"));
    assert!(host_pattern_matches("es.svc", "es.svc"));
    let c = Cidr::parse("10.0.0.0/8").expect("cidr");
    assert!(c.contains("10.255.0.1".parse().expect("ip")));
    assert!(!c.contains("11.0.0.1".parse().expect("ip")));
    assert!(c.contains("::ffff:10.0.0.1".parse().expect("ip")));
    assert!(
        Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains("1.2.3.4".parse().expect("ip"))
    );
    let v6 = Cidr::parse("fd00::/8").expect("cidr");
    assert!(v6.contains("fd12::1".parse().expect("ip")));
    assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("example.com/8").is_err());
    assert_eq!(
        Cidr::parse("192.0.2.7").expect("bare"),
        Cidr::parse("192.0.2.7/32").expect("/32")
    );
}

#[test]
fn urls_give_host_port_and_scheme() {
    assert_eq!(
        url_destination("https://es.svc:9243/prefix"),
        Some(("es.svc".into(), 9243, Scheme::Https))
    );
    assert_eq!(
        url_destination("http://[fe80::1]/"),
        Some(("fe80::1".into(), 80, Scheme::Http))
    );
    assert_eq!(
        url_destination("https://169.254.169.254"),
        Some(("169.254.169.254".into(), 443, Scheme::Https))
    );
    assert_eq!(url_destination("ftp://x"), None);
    assert_eq!(url_destination("http://:80"), None);
}
