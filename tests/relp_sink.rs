//! The syslog sink over RELP against a real rsyslogd with imrelp (Debian's rsyslog-relp;
//! tests/support/rsyslog.rs): order and completeness over RELP and RELP/TLS, a receiver
//! killed with SIGKILL mid-stream (RELP loses nothing; plain TCP loses what sat in the
//! sockets), refusals a person can act on.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logroute::api::StreamName;
use logroute::metrics::AgentMetrics;
use logroute::record::{ContainerInfo, PodInfo, Record, Timestamp};
use logroute::route::document::{
    CredentialRef, RelpSettings, SyslogConfig, SyslogFormat, SyslogFraming, SyslogTransport,
    TlsSettings,
};
use logroute::sink::syslog::SyslogSink;
use logroute::sink::{Credentials, SinkContext};
use prometheus::Registry;
use support::rsyslog::{Received, Rsyslog};

const WAIT: Duration = Duration::from_secs(60);
const NODE: &str = "node-1";
const ROUTE: &str = "payments/central";
const SINK: &str = "relp";

fn context(registry: &Registry, credentials: Credentials) -> SinkContext {
    SinkContext {
        route: ROUTE.into(),
        sink: SINK.into(),
        metrics: AgentMetrics::new(registry),
        credentials: Arc::new(credentials),
        node: NODE.into(),
    }
}

/// Sum of a route's series of `name` (a counter's value or a histogram's sample count).
fn metric(registry: &Registry, name: &str, extra: &[(&str, &str)]) -> u64 {
    registry
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
            labels.get("route") == Some(&ROUTE)
                && extra.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .map(|m| m.get_counter().get_value() as u64 + m.get_histogram().get_sample_count())
        .sum()
}

fn credentials(rs: &Rsyslog) -> Credentials {
    Credentials::from([
        ("ca".to_string(), rs.ca_pem()),
        ("tls.crt".to_string(), rs.client_cert_pem()),
        ("tls.key".to_string(), rs.client_key_pem()),
    ])
}

fn config(port: u16, transport: SyslogTransport, tls: bool, window: u32) -> SyslogConfig {
    SyslogConfig {
        host: "127.0.0.1".into(),
        port,
        transport,
        format: SyslogFormat::Rfc5424,
        framing: SyslogFraming::OctetCounting,
        facility: 16,
        severity: None,
        max_message_bytes: 65536,
        tls: tls.then(|| TlsSettings {
            ca: Some(CredentialRef { key: "ca".into() }),
            client_cert: Some(CredentialRef {
                key: "tls.crt".into(),
            }),
            client_key: Some(CredentialRef {
                key: "tls.key".into(),
            }),
            ..TlsSettings::default()
        }),
        relp: (transport == SyslogTransport::Relp).then_some(RelpSettings {
            window,
            ack_timeout_ms: 10_000,
        }),
        egress: None,
    }
}

fn records(marker: &str, n: usize) -> Vec<Arc<Record>> {
    let container = Arc::new(ContainerInfo {
        id: "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111".into(),
        name: "k8s_api_api-0_payments_uid_0".into(),
        image: "busybox".into(),
        node: NODE.into(),
        pod: Some(PodInfo {
            namespace: "payments".into(),
            name: "api-0".into(),
            uid: "uid".into(),
            container_name: "api".into(),
            ..PodInfo::default()
        }),
        ..ContainerInfo::default()
    });
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            Arc::new(Record {
                container: container.clone(),
                stream: StreamName::Stdout,
                timestamp: Timestamp {
                    secs: now.timestamp(),
                    nanos: now.timestamp_subsec_nanos(),
                },
                message: format!("{marker} {i:07} padding-to-look-like-a-log-line"),
                truncated: false,
            })
        })
        .collect()
}

/// Send `batch` as the sink worker does: `step` records per send, the unaccepted rest
/// again after a short backoff. Returns the number of failed sends.
async fn send_all(sink: &mut SyslogSink, batch: &[Arc<Record>], step: usize) -> usize {
    let mut done = 0;
    let mut failures = 0;
    let deadline = Instant::now() + WAIT;
    while done < batch.len() {
        let end = (done + step).min(batch.len());
        match sink.send(&batch[done..end]).await {
            Ok(()) => done = end,
            Err(f) => {
                done += f.accepted;
                failures += 1;
                if failures <= 3 {
                    eprintln!("send failed after {done} lines: {}", f.error);
                }
                assert!(
                    Instant::now() < deadline,
                    "still failing after {WAIT:?}: {}",
                    f.error
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    failures
}

/// Sequence numbers of `marker`'s lines in arrival order.
fn sequence(got: &[Received], marker: &str) -> Vec<usize> {
    got.iter()
        .filter_map(|r| {
            let rest = r.msg.strip_prefix(marker)?.trim_start();
            rest.split(' ').next()?.parse().ok()
        })
        .collect()
}

/// What arrived of lines 0..n: missing, repeated (extra copies).
fn tally(seq: &[usize], n: usize) -> (Vec<usize>, usize) {
    let mut seen = vec![0usize; n];
    for &i in seq {
        seen[i] += 1;
    }
    let missing = (0..n).filter(|&i| seen[i] == 0).collect();
    let repeated = seen.iter().map(|&c| c.saturating_sub(1)).sum();
    (missing, repeated)
}

#[tokio::test]
async fn every_line_arrives_once_in_order_over_relp() {
    let Some(rs) = Rsyslog::start_relp_or_skip() else {
        return;
    };
    in_order(&rs, rs.relp_port, false, "relp").await;
}

#[tokio::test]
async fn every_line_arrives_once_in_order_over_relp_tls() {
    let Some(rs) = Rsyslog::start_relp_or_skip() else {
        return;
    };
    in_order(&rs, rs.relps_port, true, "relps").await;
}

async fn in_order(rs: &Rsyslog, port: u16, tls: bool, input: &str) {
    const N: usize = 20_000;
    let registry = Registry::new();
    let cfg = config(port, SyslogTransport::Relp, tls, 128);
    let mut sink = SyslogSink::new(cfg, context(&registry, credentials(rs))).expect("config");
    let batch = records("ordered", N);
    // Sends of several windows: the window is refilled as acknowledgements come back.
    let failures = send_all(&mut sink, &batch, 1000).await;
    assert_eq!(failures, 0, "no send may fail against a healthy receiver");
    // Everything acknowledged was written by rsyslog before it answered (direct queue).
    let got = rs.received();
    let seq = sequence(&got, "ordered");
    assert_eq!(seq, (0..N).collect::<Vec<_>>(), "every line once, in order");
    assert!(
        got.iter().all(|r| r.input == input),
        "all came in on {input}"
    );
    assert_eq!(
        metric(&registry, "logroute_agent_relp_acks_total", &[]),
        N as u64
    );
    assert_eq!(
        metric(&registry, "logroute_agent_relp_ack_rtt_seconds", &[]),
        N as u64
    );
    assert_eq!(
        metric(&registry, "logroute_agent_relp_resends_total", &[]),
        0
    );
    assert_eq!(
        metric(&registry, "logroute_agent_records_sent_total", &[]),
        N as u64
    );
    // One session for all sends: what the receiver sent between them (TLS session
    // tickets) did not pass for a closed session.
    assert_eq!(
        metric(&registry, "logroute_agent_sink_reconnects_total", &[]),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_mid_stream_loses_nothing_over_relp_and_lines_over_tcp() {
    let Some(mut rs) = Rsyslog::start_relp_or_skip() else {
        return;
    };
    let relp = crash(&mut rs, SyslogTransport::Relp, "crash-relp", 100_000).await;
    let tcp = crash(&mut rs, SyslogTransport::Tcp, "crash-tcp", 100_000).await;
    eprintln!(
        "receiver SIGKILLed mid-stream, 100000 lines each: RELP {} missing, {} repeated ({} resent); TCP {} missing, {} repeated",
        relp.missing.len(),
        relp.repeated,
        relp.resent,
        tcp.missing.len(),
        tcp.repeated
    );
    assert!(
        relp.missing.is_empty(),
        "RELP lost {} lines (first: {:?})",
        relp.missing.len(),
        &relp.missing[..relp.missing.len().min(5)]
    );
    // Repeats are possible only for what was unacknowledged when the receiver died: at
    // most a window per connection that ended.
    assert!(
        relp.repeated as u64 <= relp.resent,
        "{} repeats but only {} messages were sent again",
        relp.repeated,
        relp.resent
    );
    // README: plain TCP has no acknowledgements, so what the receiver's kernel took
    // and rsyslog never processed is gone. If this fails, the comparison is not honest.
    assert!(
        !tcp.missing.is_empty(),
        "plain TCP lost nothing when the receiver was killed; the test no longer shows what RELP fixes"
    );
}

struct Crash {
    missing: Vec<usize>,
    repeated: usize,
    resent: u64,
}

/// Stream `n` lines; once some have arrived freeze rsyslog, SIGKILL it half a second
/// later, restart it half a second after that, and tally what arrived when the sender is
/// done.
async fn crash(rs: &mut Rsyslog, transport: SyslogTransport, marker: &str, n: usize) -> Crash {
    let registry = Registry::new();
    let port = match transport {
        SyslogTransport::Relp => rs.relp_port,
        _ => rs.tcp_port,
    };
    let cfg = config(port, transport, false, 128);
    let mut sink = SyslogSink::new(cfg, context(&registry, Credentials::new())).expect("config");
    let batch = records(marker, n);
    // Sends of several windows for RELP, so that a window is nearly always in flight.
    let step = match transport {
        SyslogTransport::Relp => 1000,
        _ => sink.batching().step,
    };
    let sender = tokio::spawn(async move { send_all(&mut sink, &batch, step).await });
    let deadline = Instant::now() + WAIT;
    // The kill point: a few megabytes (some 20,000 lines) written out by rsyslog, found
    // by the file's size (counting lines while they pour in would lag behind).
    let start = rs.received_bytes();
    loop {
        if rs.received_bytes() >= start + 8_000_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{marker}: rsyslog wrote {} bytes within {WAIT:?}",
            rs.received_bytes() - start
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A receiver that hangs (and is then killed by its liveness probe): while it takes
    // nothing, a TCP sender keeps filling the sockets' buffers; a RELP sender stops at
    // its window.
    rs.freeze();
    let seen = rs.count_containing(marker);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = rs.count_containing(marker);
    rs.kill9();
    eprintln!(
        "{marker}: rsyslog hung with {seen} of {n} lines written out ({frozen} when killed; sender done: {})",
        sender.is_finished()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    rs.restart().expect("restart rsyslogd");
    let failures = sender.await.expect("sender");
    if transport == SyslogTransport::Relp {
        // Nothing counts as sent before it is acknowledged: the sender saw the kill.
        assert!(
            failures > 0,
            "{marker}: the kill went unnoticed by the sender"
        );
    }
    // What TCP lost never comes: wait for all, or until nothing more arrives.
    let deadline = Instant::now() + WAIT;
    let mut last = (rs.count_containing(marker), Instant::now());
    loop {
        let count = rs.count_containing(marker);
        if count != last.0 {
            last = (count, Instant::now());
        }
        let quiet = last.1.elapsed() > Duration::from_secs(2);
        if quiet && (count >= n || transport == SyslogTransport::Tcp) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{marker}: {count} of {n} lines arrived within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seq = sequence(&rs.received(), marker);
    let (missing, repeated) = tally(&seq, n);
    Crash {
        missing,
        repeated,
        resent: metric(&registry, "logroute_agent_relp_resends_total", &[]),
    }
}

#[tokio::test]
async fn a_listener_that_is_not_relp_is_refused_with_a_message() {
    let Some(rs) = Rsyslog::start_relp_or_skip() else {
        return;
    };
    // imtcp takes the open frame as a syslog message and never answers.
    let registry = Registry::new();
    let mut cfg = config(rs.tcp_port, SyslogTransport::Relp, false, 8);
    cfg.relp = Some(RelpSettings {
        window: 8,
        ack_timeout_ms: 1000,
    });
    let mut sink = SyslogSink::new(cfg, context(&registry, Credentials::new())).expect("config");
    let failure = sink
        .send(&records("not-relp", 1))
        .await
        .expect_err("imtcp does not speak RELP");
    assert_eq!(failure.accepted, 0);
    assert_eq!(failure.error.reason(), "relp_stall", "{}", failure.error);
    let text = failure.error.to_string();
    assert!(text.contains("relp.ackTimeoutMs"), "{text}");
    assert_eq!(
        metric(
            &registry,
            "logroute_agent_send_errors_total",
            &[("reason", "relp_stall")]
        ),
        1
    );
}
