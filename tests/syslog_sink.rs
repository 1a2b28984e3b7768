//! The syslog sink against a real rsyslogd (tests/support/rsyslog.rs): what rsyslog parses
//! out of each transport, format and framing, limits, reconnection and TLS.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use logroute::api::StreamName;
use logroute::metrics::AgentMetrics;
use logroute::record::{ContainerInfo, PodInfo, Record, Timestamp};
use logroute::route::document::{
    CredentialRef, SyslogConfig, SyslogFormat, SyslogFraming, SyslogTransport, TlsSettings,
};
use logroute::sink::syslog::SyslogSink;
use logroute::sink::{Credentials, SinkContext};
use prometheus::Registry;
use support::rsyslog::{Received, Rsyslog};

const WAIT: Duration = Duration::from_secs(15);
const NODE: &str = "node-1";

struct Harness {
    registry: Registry,
    ctx: SinkContext,
}

fn harness(credentials: Credentials) -> Harness {
    let registry = Registry::new();
    let ctx = SinkContext {
        route: "payments/central".into(),
        sink: "syslog".into(),
        metrics: AgentMetrics::new(&registry),
        credentials: Arc::new(credentials),
        node: NODE.into(),
    };
    Harness { registry, ctx }
}

impl Harness {
    /// Value of a syslog-sink counter, or sample count of a histogram, with `extra` labels.
    fn metric(&self, name: &str, extra: &[(&str, &str)]) -> u64 {
        let mut want: BTreeMap<&str, &str> = [
            ("kind", "syslog"),
            ("route", "payments/central"),
            ("sink", "syslog"),
        ]
        .into();
        want.extend(extra.iter().copied());
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .filter(|m| {
                let labels: BTreeMap<&str, &str> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                labels == want
            })
            .map(|m| {
                if m.get_histogram().get_sample_count() > 0 {
                    m.get_histogram().get_sample_count()
                } else {
                    m.get_counter().get_value() as u64
                }
            })
            .sum()
    }
}

fn config(
    port: u16,
    transport: SyslogTransport,
    format: SyslogFormat,
    framing: SyslogFraming,
) -> SyslogConfig {
    SyslogConfig {
        host: "127.0.0.1".into(),
        port,
        transport,
        format,
        framing,
        facility: 16,
        severity: None,
        max_message_bytes: if transport == SyslogTransport::Udp {
            8192
        } else {
            65536
        },
        tls: None,
        relp: None,
        egress: None,
    }
}

fn tcp(port: u16) -> SyslogConfig {
    config(
        port,
        SyslogTransport::Tcp,
        SyslogFormat::Rfc5424,
        SyslogFraming::OctetCounting,
    )
}

fn pod(namespace: &str, name: &str, container: &str, id: &str) -> Arc<ContainerInfo> {
    Arc::new(ContainerInfo {
        id: id.into(),
        name: format!("k8s_{container}_{name}_{namespace}_uid_0"),
        image: "busybox".into(),
        node: NODE.into(),
        pod: Some(PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            uid: "uid".into(),
            container_name: container.into(),
            ..PodInfo::default()
        }),
        ..ContainerInfo::default()
    })
}

fn host(name: &str, id: &str) -> Arc<ContainerInfo> {
    Arc::new(ContainerInfo {
        id: id.into(),
        name: name.into(),
        node: NODE.into(),
        ..ContainerInfo::default()
    })
}

fn record(container: &Arc<ContainerInfo>, stream: StreamName, message: &str) -> Arc<Record> {
    let now = chrono::Utc::now();
    Arc::new(Record {
        container: container.clone(),
        stream,
        timestamp: Timestamp {
            secs: now.timestamp(),
            nanos: now.timestamp_subsec_nanos(),
        },
        message: message.into(),
        truncated: false,
    })
}

const POD_ID: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
const HOST_ID: &str = "bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222";

/// Messages of one marker, in arrival order.
fn tagged<'a>(got: &'a [Received], marker: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.msg.contains(marker)).collect()
}

#[tokio::test]
async fn every_transport_format_and_framing_delivers() {
    let Some(rs) = Rsyslog::start_relp_or_skip() else {
        return;
    };
    use SyslogFormat::*;
    use SyslogFraming::*;
    use SyslogTransport::*;
    let combos = [
        (Tcp, Rfc5424, OctetCounting),
        (Tcp, Rfc5424, Newline),
        (Tcp, Rfc3164, OctetCounting),
        (Tcp, Rfc3164, Newline),
        (Udp, Rfc5424, OctetCounting),
        (Udp, Rfc3164, OctetCounting),
        (Tls, Rfc5424, OctetCounting),
        (Tls, Rfc3164, Newline),
        (Relp, Rfc5424, OctetCounting),
        (Relp, Rfc3164, OctetCounting),
    ];
    let app = pod("payments", "payments-api-7d9f", "api", POD_ID);
    let nginx = host("nginx", HOST_ID);
    let h = harness(Credentials::from([("ca".to_string(), rs.ca_pem())]));
    for (i, &(transport, format, framing)) in combos.iter().enumerate() {
        let port = match transport {
            Udp => rs.udp_port,
            Tcp => rs.tcp_port,
            Tls => rs.tls_port,
            Relp => rs.relp_port,
        };
        let mut cfg = config(port, transport, format, framing);
        if transport == Tls {
            cfg.tls = Some(TlsSettings {
                ca: Some(CredentialRef { key: "ca".into() }),
                server_name: "localhost".into(),
                ..TlsSettings::default()
            });
        }
        let mut sink = SyslogSink::new(cfg, h.ctx.clone()).expect("valid config");
        let batch = [
            record(&app, StreamName::Stdout, &format!("combo{i} out")),
            record(
                &app,
                StreamName::Stderr,
                &format!("combo{i} err\n  at frame 1\n  at frame 2"),
            ),
            record(&nginx, StreamName::Stdout, &format!("combo{i} host")),
        ];
        sink.send(&batch)
            .await
            .unwrap_or_else(|e| panic!("{transport:?} {format:?} {framing:?}: {}", e.error));
    }
    let got = rs.wait_for(combos.len() * 3, WAIT);
    for (i, &(transport, format, framing)) in combos.iter().enumerate() {
        let what = format!("{transport:?} {format:?} {framing:?}");
        let msgs = tagged(&got, &format!("combo{i} "));
        assert_eq!(msgs.len(), 3, "{what}: {msgs:#?}");
        let input = match transport {
            Udp => "udp",
            Tcp => "tcp",
            Tls => "tls",
            Relp => "relp",
        };
        let multiline = match (transport, framing) {
            (Tcp | Tls, Newline) => format!("combo{i} err#012  at frame 1#012  at frame 2"),
            _ => format!("combo{i} err\n  at frame 1\n  at frame 2"),
        };
        let expected = [
            (
                "payments-api-7d9f",
                "aaaaaaaaaaaa",
                "stdout",
                6,
                format!("combo{i} out"),
            ),
            ("payments-api-7d9f", "aaaaaaaaaaaa", "stderr", 3, multiline),
            (
                "nginx",
                "bbbbbbbbbbbb",
                "stdout",
                6,
                format!("combo{i} host"),
            ),
        ];
        for (m, (app_name, procid, stream, severity, text)) in msgs.iter().zip(expected) {
            assert_eq!(m.input, input, "{what}");
            assert_eq!(m.hostname, NODE, "{what}");
            assert_eq!(m.severity, severity, "{what}: {m:?}");
            assert_eq!(m.facility, 16, "{what}: local0");
            assert_eq!(m.procid, procid, "{what}: {m:?}");
            match format {
                Rfc5424 => {
                    assert_eq!(m.app, app_name, "{what}");
                    assert_eq!(m.msgid, stream, "{what}");
                    assert_eq!(m.msg, text, "{what}");
                    let sd = if app_name == "nginx" {
                        r#"[logroute@32473 container="nginx" node="node-1"]"#.to_string()
                    } else {
                        r#"[logroute@32473 namespace="payments" pod="payments-api-7d9f" container="api" node="node-1"]"#
                            .to_string()
                    };
                    assert_eq!(m.sd, sd, "{what}");
                }
                Rfc3164 => {
                    assert_eq!(m.tag, format!("{app_name}[{procid}]:"), "{what}");
                    assert_eq!(
                        m.msg,
                        format!(" {text}"),
                        "{what}: rsyslog keeps the space after the colon"
                    );
                }
            }
        }
    }
    assert_eq!(
        h.metric("logroute_agent_records_sent_total", &[]),
        combos.len() as u64 * 3
    );
    assert_eq!(
        h.metric("logroute_agent_end_to_end_latency_seconds", &[]),
        combos.len() as u64 * 3
    );
    assert_eq!(
        h.metric("logroute_agent_send_latency_seconds", &[]),
        combos.len() as u64
    );
    assert_eq!(h.metric("logroute_agent_records_cut_total", &[]), 0);
}

#[tokio::test]
async fn structured_data_escaping_survives_rsyslog_parsing() {
    let Some(rs) = Rsyslog::start_or_skip() else {
        return;
    };
    let h = harness(Credentials::new());
    let mut sink = SyslogSink::new(tcp(rs.tcp_port), h.ctx.clone()).expect("valid config");
    let odd = pod(r#"ns"with\quotes]"#, "pod]x", r#"c"1"#, POD_ID);
    sink.send(&[record(&odd, StreamName::Stdout, "escaped ] \" \\ fine")])
        .await
        .expect("sent");
    let got = rs.wait_for(1, WAIT);
    assert_eq!(
        got[0].sd,
        r#"[logroute@32473 namespace="ns\"with\\quotes\]" pod="pod\]x" container="c\"1" node="node-1"]"#
    );
    assert_eq!(
        got[0].msg, "escaped ] \" \\ fine",
        "MSG starts right after the structured data"
    );
}

#[tokio::test]
async fn a_100_kib_message_arrives_whole_over_tcp() {
    let Some(rs) = Rsyslog::start_or_skip() else {
        return;
    };
    let h = harness(Credentials::new());
    let mut cfg = tcp(rs.tcp_port);
    cfg.max_message_bytes = 200_000;
    let mut sink = SyslogSink::new(cfg, h.ctx.clone()).expect("valid config");
    let big: String = (0..100 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let app = pod("payments", "api-0", "api", POD_ID);
    sink.send(&[
        record(&app, StreamName::Stdout, &big),
        record(&app, StreamName::Stdout, "after"),
    ])
    .await
    .expect("sent");
    let got = rs.wait_for(2, WAIT);
    assert_eq!(got[0].msg.len(), big.len(), "whole 100 KiB message");
    assert!(got[0].msg == big, "content intact");
    assert_eq!(
        got[1].msg, "after",
        "the next frame starts where the big one ends"
    );
    assert_eq!(h.metric("logroute_agent_records_cut_total", &[]), 0);
}

#[tokio::test]
async fn an_over_limit_message_arrives_cut_marked_and_counted() {
    let Some(rs) = Rsyslog::start_or_skip() else {
        return;
    };
    let h = harness(Credentials::new());
    let mut sink = SyslogSink::new(tcp(rs.tcp_port), h.ctx.clone()).expect("valid config");
    let big = "é".repeat(60_000); // 120 000 bytes, over the 65536 limit
    let app = pod("payments", "api-0", "api", POD_ID);
    sink.send(&[
        record(&app, StreamName::Stdout, &big),
        record(&app, StreamName::Stdout, "small"),
    ])
    .await
    .expect("sent");
    let got = rs.wait_for(2, WAIT);
    assert!(
        got[0].raw.len() <= 65536,
        "message within the limit: {}",
        got[0].raw.len()
    );
    let (kept, marker) = got[0].msg.split_once('…').expect("cut marker");
    assert!(
        big.starts_with(kept) && kept.len() > 60_000,
        "kept a prefix cut at a character boundary"
    );
    assert_eq!(marker, format!("[cut {} bytes]", big.len() - kept.len()));
    assert_eq!(got[1].msg, "small");
    assert_eq!(h.metric("logroute_agent_records_cut_total", &[]), 1);
    assert_eq!(h.metric("logroute_agent_records_sent_total", &[]), 2);
}

#[tokio::test]
async fn a_udp_datagram_never_exceeds_the_limit() {
    let Some(rs) = Rsyslog::start_or_skip() else {
        return;
    };
    let h = harness(Credentials::new());
    let cfg = config(
        rs.udp_port,
        SyslogTransport::Udp,
        SyslogFormat::Rfc5424,
        SyslogFraming::OctetCounting,
    );
    let mut sink = SyslogSink::new(cfg, h.ctx.clone()).expect("valid config");
    let app = pod("payments", "api-0", "api", POD_ID);
    let fits = "f".repeat(7000);
    sink.send(&[
        record(&app, StreamName::Stdout, &"x".repeat(20_000)),
        record(&app, StreamName::Stdout, &fits),
    ])
    .await
    .expect("sent");
    let got = rs.wait_for(2, WAIT);
    let cut = got
        .iter()
        .find(|r| r.msg.starts_with('x'))
        .expect("cut datagram arrived");
    assert_eq!(
        cut.raw.len(),
        8192,
        "the datagram is filled up to the limit, not beyond"
    );
    let (kept, marker) = cut.msg.split_once('…').expect("cut marker");
    assert_eq!(marker, format!("[cut {} bytes]", 20_000 - kept.len()));
    assert!(
        got.iter().any(|r| r.msg == fits),
        "a message under the limit is whole"
    );
    assert_eq!(h.metric("logroute_agent_records_cut_total", &[]), 1);
}

#[tokio::test]
async fn a_tcp_receiver_that_goes_away_fails_sends_until_it_is_back() {
    receiver_goes_away_and_comes_back(SyslogTransport::Tcp).await;
}

#[tokio::test]
async fn a_tls_receiver_that_goes_away_fails_sends_until_it_is_back() {
    receiver_goes_away_and_comes_back(SyslogTransport::Tls).await;
}

async fn receiver_goes_away_and_comes_back(transport: SyslogTransport) {
    let Some(mut rs) = Rsyslog::start_or_skip() else {
        return;
    };
    let h = harness(Credentials::from([("ca".to_string(), rs.ca_pem())]));
    let port = if transport == SyslogTransport::Tls {
        rs.tls_port
    } else {
        rs.tcp_port
    };
    let mut cfg = config(
        port,
        transport,
        SyslogFormat::Rfc5424,
        SyslogFraming::OctetCounting,
    );
    if transport == SyslogTransport::Tls {
        cfg.tls = Some(TlsSettings {
            ca: Some(CredentialRef { key: "ca".into() }),
            ..TlsSettings::default()
        });
    }
    let mut sink = SyslogSink::new(cfg, h.ctx.clone()).expect("valid config");
    let app = pod("payments", "api-0", "api", POD_ID);
    // Two sends on one connection: whatever the receiver sent in between (TLS session
    // tickets) must not look like a closed connection.
    sink.send(&[record(&app, StreamName::Stdout, "before 1")])
        .await
        .expect("sent");
    rs.wait_for(1, WAIT);
    sink.send(&[record(&app, StreamName::Stdout, "before 2")])
        .await
        .expect("sent");
    rs.wait_for(2, WAIT);
    assert_eq!(
        h.metric("logroute_agent_sink_reconnects_total", &[]),
        0,
        "one connection so far"
    );

    rs.stop();
    let batch = [
        record(&app, StreamName::Stdout, "during 1"),
        record(&app, StreamName::Stdout, "during 2"),
    ];
    let failure = sink.send(&batch).await.expect_err("receiver is down");
    assert_eq!(
        failure.accepted, 0,
        "nothing may count as written into a closed connection"
    );
    assert_eq!(failure.error.reason(), "connect", "{}", failure.error);
    let text = failure.error.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("refused"),
        "{text}"
    );

    rs.restart().expect("restart rsyslogd");
    sink.send(&batch).await.expect("receiver is back");
    let got = rs.wait_for(4, WAIT);
    let texts: Vec<&str> = got.iter().map(|r| r.msg.as_str()).collect();
    assert_eq!(texts, ["before 1", "before 2", "during 1", "during 2"]);
    assert_eq!(h.metric("logroute_agent_sink_reconnects_total", &[]), 1);
    assert_eq!(
        h.metric("logroute_agent_send_errors_total", &[("reason", "connect")]),
        1
    );
    assert_eq!(h.metric("logroute_agent_records_sent_total", &[]), 4);
}

#[tokio::test]
async fn tls_verifies_the_receiver_against_the_configured_ca() {
    let Some(rs) = Rsyslog::start_or_skip() else {
        return;
    };
    let h = harness(Credentials::from([
        ("ca".to_string(), rs.ca_pem()),
        ("stranger".to_string(), rs.stranger_ca_pem()),
        ("tls.crt".to_string(), rs.client_cert_pem()),
        ("tls.key".to_string(), rs.client_key_pem()),
    ]));
    let tls = |port, ca: &str, server_name: &str| {
        let mut cfg = config(
            port,
            SyslogTransport::Tls,
            SyslogFormat::Rfc5424,
            SyslogFraming::OctetCounting,
        );
        cfg.tls = Some(TlsSettings {
            ca: Some(CredentialRef { key: ca.into() }),
            server_name: server_name.into(),
            ..TlsSettings::default()
        });
        cfg
    };
    let app = pod("payments", "api-0", "api", POD_ID);

    // The wrong CA: the handshake fails, and the error says what to check.
    let mut sink = SyslogSink::new(tls(rs.tls_port, "stranger", "localhost"), h.ctx.clone())
        .expect("valid config");
    let failure = sink
        .send(&[record(&app, StreamName::Stdout, "never")])
        .await
        .expect_err("untrusted");
    assert_eq!((failure.accepted, failure.error.reason()), (0, "tls"));
    let text = failure.error.to_string();
    assert!(
        text.contains("invalid peer certificate") && text.contains("tls.caSecretRef"),
        "{text}"
    );

    // A name the certificate does not carry.
    let mut sink = SyslogSink::new(tls(rs.tls_port, "ca", "syslog.example"), h.ctx.clone())
        .expect("valid config");
    let failure = sink
        .send(&[record(&app, StreamName::Stdout, "never")])
        .await
        .expect_err("wrong name");
    assert!(
        failure.error.to_string().contains("not valid for name"),
        "{}",
        failure.error
    );

    // The right CA, by DNS name and by IP address (the certificate carries both).
    for name in ["localhost", ""] {
        let mut sink =
            SyslogSink::new(tls(rs.tls_port, "ca", name), h.ctx.clone()).expect("valid config");
        sink.send(&[record(&app, StreamName::Stdout, &format!("tls ok {name}"))])
            .await
            .expect("trusted");
    }
    // Mutual TLS: the receiver requires a client certificate signed by its CA.
    let mut cfg = tls(rs.mtls_port, "ca", "localhost");
    if let Some(t) = cfg.tls.as_mut() {
        t.client_cert = Some(CredentialRef {
            key: "tls.crt".into(),
        });
        t.client_key = Some(CredentialRef {
            key: "tls.key".into(),
        });
    }
    let mut sink = SyslogSink::new(cfg, h.ctx.clone()).expect("valid config");
    sink.send(&[record(&app, StreamName::Stdout, "mtls ok")])
        .await
        .expect("client certificate accepted");
    // insecureSkipVerify trusts anything.
    let mut cfg = tls(rs.tls_port, "stranger", "wrong.example");
    if let Some(t) = cfg.tls.as_mut() {
        t.insecure_skip_verify = true;
    }
    let mut sink = SyslogSink::new(cfg, h.ctx.clone()).expect("valid config");
    sink.send(&[record(&app, StreamName::Stdout, "insecure ok")])
        .await
        .expect("not verified");

    let got = rs.wait_for(4, WAIT);
    let mut seen: Vec<(&str, &str)> = got
        .iter()
        .map(|r| (r.input.as_str(), r.msg.as_str()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("mtls", "mtls ok"),
            ("tls", "insecure ok"),
            ("tls", "tls ok "),
            ("tls", "tls ok localhost")
        ]
    );
    assert_eq!(
        h.metric("logroute_agent_send_errors_total", &[("reason", "tls")]),
        2
    );
}

/// A TLS receiver that closes properly (close_notify, then FIN) between two sends: the
/// second send notices the close before writing and goes to a new connection.
#[tokio::test]
async fn a_tls_close_notify_between_sends_leads_to_a_new_connection() {
    let Some(rs) = Rsyslog::start_or_skip() else {
        return;
    };
    let certs = rustls_pemfile::certs(&mut &rs.server_cert_pem()[..])
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut &rs.server_key_pem()[..])
        .expect("pem")
        .expect("key");
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut received = Vec::new();
        let mut closed_tx = Some(closed_tx);
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            let mut buf = vec![0u8; 4096];
            let n = tls.read(&mut buf).await.expect("read a frame");
            received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if let Some(tx) = closed_tx.take() {
                tls.shutdown().await.expect("close_notify");
                drop(tls);
                let _ = tx.send(());
            }
        }
        received
    });

    let h = harness(Credentials::from([("ca".to_string(), rs.ca_pem())]));
    let mut cfg = config(
        port,
        SyslogTransport::Tls,
        SyslogFormat::Rfc5424,
        SyslogFraming::OctetCounting,
    );
    cfg.tls = Some(TlsSettings {
        ca: Some(CredentialRef { key: "ca".into() }),
        ..TlsSettings::default()
    });
    let mut sink = SyslogSink::new(cfg, h.ctx.clone()).expect("valid config");
    let app = pod("payments", "api-0", "api", POD_ID);
    sink.send(&[record(&app, StreamName::Stdout, "one")])
        .await
        .expect("first send");
    tokio::time::timeout(WAIT, closed_rx)
        .await
        .expect("server closed in time")
        .expect("server closed");
    sink.send(&[record(&app, StreamName::Stdout, "two")])
        .await
        .expect("second send");
    let received = tokio::time::timeout(WAIT, server)
        .await
        .expect("the second send reached a second connection in time")
        .expect("server task");
    assert!(
        received[0].ends_with("] one") && received[1].ends_with("] two"),
        "{received:?}"
    );
    assert_eq!(h.metric("logroute_agent_sink_reconnects_total", &[]), 1);
}

/// A receiver that stops reading and resets the connection in the middle of a batch:
/// only whole frames count as accepted, and the retry of the rest starts with the first
/// frame that was not.
#[tokio::test]
async fn a_connection_reset_mid_batch_accepts_only_whole_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        // First connection: read 1 MB, then close with data unread (a reset).
        let (mut first, _) = listener.accept().expect("first connection");
        let mut buf = vec![0u8; 1 << 20];
        first.read_exact(&mut buf).expect("read 1 MB");
        drop(first);
        // Second connection: read frames until the last record arrives.
        let (mut second, _) = listener.accept().expect("second connection");
        let mut data = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let frames = octet_counted_frames(&data);
            if frames.last().is_some_and(|f| f.contains("] record 199 ")) {
                return frames;
            }
            let n = second.read(&mut chunk).expect("read");
            assert!(
                n > 0,
                "connection closed before the last record; got {} frames",
                frames.len()
            );
            data.extend_from_slice(&chunk[..n]);
        }
    });

    let h = harness(Credentials::new());
    let mut cfg = tcp(port);
    cfg.max_message_bytes = 200_000;
    let mut sink = SyslogSink::new(cfg, h.ctx.clone()).expect("valid config");
    let app = pod("payments", "api-0", "api", POD_ID);
    // 200 records of 100 KB: 20 MB, more than loopback socket buffers hold.
    let batch: Vec<Arc<Record>> = (0..200)
        .map(|i| {
            record(
                &app,
                StreamName::Stdout,
                &format!("record {i} {}", "z".repeat(100_000)),
            )
        })
        .collect();
    let failure = sink
        .send(&batch)
        .await
        .expect_err("the receiver resets the connection");
    assert_eq!(failure.error.reason(), "write", "{}", failure.error);
    let accepted = failure.accepted;
    assert!(
        (9..200).contains(&accepted),
        "at least the 1 MB the receiver read, not all: {accepted}"
    );
    assert_eq!(
        h.metric("logroute_agent_records_sent_total", &[]),
        accepted as u64
    );

    sink.send(&batch[accepted..])
        .await
        .expect("retry on a new connection");
    let frames = tokio::task::spawn_blocking(move || server.join().expect("server thread"))
        .await
        .expect("join");
    assert_eq!(
        frames.len(),
        200 - accepted,
        "exactly the records not accepted"
    );
    assert!(
        frames[0].contains(&format!("] record {accepted} ")),
        "retry starts at record {accepted}"
    );
    assert_eq!(h.metric("logroute_agent_sink_reconnects_total", &[]), 1);
}

/// The complete RFC 6587 octet-counted frames at the start of `data`.
fn octet_counted_frames(data: &[u8]) -> Vec<String> {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let len: usize = std::str::from_utf8(&rest[..space])
            .expect("ascii")
            .parse()
            .expect("octet count");
        let Some(frame) = rest.get(space + 1..space + 1 + len) else {
            break;
        };
        frames.push(String::from_utf8_lossy(frame).into_owned());
        rest = &rest[space + 1 + len..];
    }
    frames
}
