//! The agent's connect-time egress check against real receivers: a name whose resolved
//! address the policy refuses is never connected to (the send fails naming the rule, and
//! the refusal is counted), while a destination the policy allows by address is
//! delivered to.
//!
//! "localhost" stands in for a name that resolves to a refused address: the system
//! resolver turns it into 127.0.0.1 (loopback), and the rules allow the *name*
//! (`hosts: [localhost]`), which the controller would accept at compile time. Only the
//! resolved address can refuse it, exactly as for a tenant's DNS name that is later made
//! to point at the metadata endpoint.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use logroute::api::StreamName;
use logroute::metrics::AgentMetrics;
use logroute::record::{ContainerInfo, Record, Timestamp};
use logroute::route::document::{
    Compression, ElasticsearchConfig, IndexTarget, SyslogConfig, SyslogFormat, SyslogFraming,
    SyslogTransport,
};
use logroute::route::egress::{Action, EgressRule, EgressRules};
use logroute::sink::elasticsearch::{ElasticsearchSink, RetryPolicy};
use logroute::sink::syslog::SyslogSink;
use logroute::sink::{Credentials, SinkContext};
use support::bulk::BulkServer;
use support::rsyslog::Rsyslog;

const ROUTE: &str = "payments/egress";

fn ctx(sink: &str) -> (SinkContext, AgentMetrics) {
    let metrics = AgentMetrics::new(&prometheus::Registry::new());
    let ctx = SinkContext {
        route: ROUTE.into(),
        sink: sink.into(),
        metrics: metrics.clone(),
        credentials: Arc::new(Credentials::new()),
        node: "node-a".into(),
    };
    (ctx, metrics)
}

/// Rules that allow the name `localhost` but not its address.
fn name_only() -> EgressRules {
    EgressRules {
        rules: vec![EgressRule {
            name: "by-name".into(),
            action: Action::Allow,
            hosts: vec!["localhost".into()],
            ..EgressRule::default()
        }],
        ..EgressRules::default()
    }
}

/// Rules that allow loopback by address, on one port only.
fn loopback_port(port: u16) -> EgressRules {
    EgressRules {
        rules: vec![EgressRule {
            name: "node-relay".into(),
            action: Action::Allow,
            cidrs: vec!["127.0.0.0/8".into()],
            ports: vec![port],
            ..EgressRule::default()
        }],
        ..EgressRules::default()
    }
}

fn record(message: &str) -> Arc<Record> {
    let now = chrono::Utc::now();
    Arc::new(Record {
        container: Arc::new(ContainerInfo {
            id: format!("{:e<64}", "egress"),
            name: "egress-test".into(),
            node: "node-a".into(),
            labels: BTreeMap::new(),
            ..ContainerInfo::default()
        }),
        stream: StreamName::Stdout,
        timestamp: Timestamp {
            secs: now.timestamp(),
            nanos: now.timestamp_subsec_nanos(),
        },
        message: message.into(),
        truncated: false,
    })
}

fn refused(m: &AgentMetrics, kind: &str, sink: &str, rule: &str) -> u64 {
    m.egress_refused
        .with_label_values(&[kind, ROUTE, sink, rule])
        .get()
}

fn syslog(host: &str, port: u16, egress: EgressRules) -> SyslogConfig {
    SyslogConfig {
        host: host.into(),
        port,
        transport: SyslogTransport::Tcp,
        format: SyslogFormat::Rfc5424,
        framing: SyslogFraming::OctetCounting,
        facility: 16,
        severity: None,
        max_message_bytes: 65536,
        tls: None,
        relp: None,
        egress: Some(egress),
    }
}

#[tokio::test]
async fn syslog_never_connects_to_a_refused_resolved_address() {
    let Some(rs) = Rsyslog::start_or_skip() else {
        return;
    };
    let (ctx, metrics) = ctx("central");
    let mut sink = SyslogSink::new(syslog("localhost", rs.tcp_port, name_only()), ctx.clone())
        .expect("valid config");
    let failure = sink
        .send(&[record("egress-refused marker")])
        .await
        .expect_err("the resolved loopback address must be refused");
    let text = failure.error.to_string();
    assert_eq!(failure.error.reason(), "egress_refused", "{text}");
    assert!(
        text.contains("builtin:loopback") && text.contains("127.0.0.1"),
        "{text}"
    );
    assert_eq!(failure.accepted, 0);
    assert!(
        refused(&metrics, "syslog", "central", "builtin:loopback") >= 1,
        "the refusal is counted"
    );
    assert!(
        !rs.received()
            .iter()
            .any(|r| r.msg.contains("egress-refused")),
        "nothing may reach the receiver"
    );

    // Allowed by address (and port): delivered, through the same name.
    let mut sink = SyslogSink::new(
        syslog("localhost", rs.tcp_port, loopback_port(rs.tcp_port)),
        ctx,
    )
    .expect("valid config");
    sink.send(&[record("egress-allowed marker")])
        .await
        .unwrap_or_else(|f| panic!("allowed by node-relay: {}", f.error));
    let got = rs.wait_for(1, Duration::from_secs(15));
    assert!(
        got.iter().any(|r| r.msg.contains("egress-allowed marker")),
        "expected the allowed message at rsyslog, got {got:?}"
    );
}

fn es(url: &str, egress: EgressRules) -> ElasticsearchConfig {
    ElasticsearchConfig {
        endpoints: vec![url.to_string()],
        target: IndexTarget::Index("logs-egress".into()),
        auth: None,
        tls: None,
        max_events: 10,
        max_bytes: 1 << 20,
        timeout_ms: 1000,
        compression: Compression::None,
        request_timeout_ms: 5_000,
        max_concurrency: 1,
        egress: Some(egress),
    }
}

fn es_sink(cfg: ElasticsearchConfig, ctx: SinkContext) -> ElasticsearchSink {
    let mut sink = ElasticsearchSink::new(cfg, ctx).expect("valid config");
    sink.set_retry_policy(RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        max_retries: 2,
    });
    sink
}

#[tokio::test]
async fn elasticsearch_never_connects_to_a_refused_name_or_literal() {
    let server = BulkServer::start().await;
    let literal = server.url();
    let port: u16 = literal
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the bulk server URL has a port");
    let by_name = format!("http://localhost:{port}");

    for (url, rules, what) in [
        (&by_name, name_only(), "a name resolving to loopback"),
        (&literal, EgressRules::default(), "a loopback literal"),
    ] {
        let (ctx, metrics) = ctx("search");
        let mut sink = es_sink(es(url, rules), ctx);
        let failure = sink
            .send(&[record("refused")], &[position()])
            .await
            .expect_err("loopback must be refused");
        let text = failure.error.to_string();
        assert!(text.contains("builtin:loopback"), "{what}: {text}");
        assert!(
            refused(&metrics, "elasticsearch", "search", "builtin:loopback") >= 1,
            "{what}: the refusal is counted"
        );
        assert!(
            server.requests().is_empty(),
            "{what}: no request may reach the server, saw {}",
            server.requests().len()
        );
    }

    let (ctx, metrics) = ctx("search");
    let mut sink = es_sink(es(&by_name, loopback_port(port)), ctx);
    sink.send(&[record("allowed")], &[position()])
        .await
        .unwrap_or_else(|f| panic!("allowed by node-relay: {}", f.error));
    assert_eq!(server.docs().len(), 1, "the allowed document is stored");
    assert_eq!(
        refused(&metrics, "elasticsearch", "search", "builtin:loopback"),
        0
    );
}

/// The log position of a test record (the first frame of its timestamp).
fn position() -> logroute::record::LogPosition {
    logroute::record::LogPosition {
        timestamp: logroute::record::Timestamp {
            secs: 1_700_000_000,
            nanos: 0,
        },
        seen: 1,
    }
}
