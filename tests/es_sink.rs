//! The Elasticsearch sink against a real OpenSearch-compatible server (osmem-server), the
//! same behind nginx for TLS and authentication, and the fault-injecting bulk server for
//! what no real server here produces (429s, 503s, 413s, slow answers).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logroute::agent::checkpoint::{Checkpoints, LaneCheckpoint};
use logroute::agent::docker::Cursor;
use logroute::api::StreamName;
use logroute::metrics::AgentMetrics;
use logroute::record::{ContainerInfo, LogPosition, PodInfo, Record, Timestamp};
use logroute::route::document::{CompiledSink, SinkConfig};
use logroute::route::document::{
    Compression, CredentialRef, ElasticsearchConfig, ElasticsearchCredentials, IndexTarget,
    TlsSettings,
};
use logroute::sink::elasticsearch::{ElasticsearchSink, RetryPolicy};
use logroute::sink::worker::{self, Position, Queued};
use logroute::sink::{Credentials, SendFailure, SinkContext};
use serde_json::{Value, json};
use support::bulk::{BulkServer, FieldType};
use support::nginx::{Nginx, ProxyAuth};
use support::osmem::Osmem;

const ROUTE: &str = "payments/errors";
const SINK: &str = "search";
/// 2024-03-01T00:00:00Z
const T0: i64 = 1_709_251_200;

fn ctx(credentials: Credentials) -> (SinkContext, AgentMetrics) {
    let metrics = AgentMetrics::new(&prometheus::Registry::new());
    let ctx = SinkContext {
        route: ROUTE.into(),
        sink: SINK.into(),
        metrics: metrics.clone(),
        credentials: Arc::new(credentials),
        node: "node-a".into(),
    };
    (ctx, metrics)
}

fn config(endpoints: &[&str], index: &str) -> ElasticsearchConfig {
    ElasticsearchConfig {
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        target: IndexTarget::Index(index.into()),
        auth: None,
        tls: None,
        max_events: 100,
        max_bytes: 5 * 1024 * 1024,
        timeout_ms: 1000,
        compression: Compression::None,
        request_timeout_ms: 10_000,
        max_concurrency: 2,
        egress: None,
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        max_retries: 3,
    }
}

fn sink(cfg: ElasticsearchConfig, credentials: Credentials) -> (ElasticsearchSink, AgentMetrics) {
    let (ctx, metrics) = ctx(credentials);
    let mut sink = ElasticsearchSink::new(cfg, ctx).expect("valid sink configuration");
    sink.set_retry_policy(fast_retries());
    (sink, metrics)
}

fn pod_container(id: &str, pod: &str, labels: &[(&str, &str)]) -> Arc<ContainerInfo> {
    Arc::new(ContainerInfo {
        id: format!("{id:0<64}"),
        name: format!("k8s_api_{pod}_payments_uid-{pod}_0"),
        image: "registry.local/payments/api:1.4".into(),
        labels: BTreeMap::new(),
        node: "node-a".into(),
        pod: Some(PodInfo {
            namespace: "payments".into(),
            name: pod.into(),
            uid: format!("uid-{pod}"),
            container_name: "api".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
            owner_kind: Some("ReplicaSet".into()),
            owner_name: Some("api-5d8f".into()),
        }),
    })
}

fn host_container() -> Arc<ContainerInfo> {
    Arc::new(ContainerInfo {
        id: format!("{:f<64}", "db"),
        name: "postgres".into(),
        image: "postgres:16".into(),
        labels: BTreeMap::from([("com.example.tier".into(), "db".into())]),
        node: "node-a".into(),
        pod: None,
    })
}

fn record(c: &Arc<ContainerInfo>, i: u32, message: String) -> Arc<Record> {
    Arc::new(Record {
        container: c.clone(),
        stream: if i % 5 == 0 {
            StreamName::Stderr
        } else {
            StreamName::Stdout
        },
        timestamp: Timestamp {
            secs: T0 + i64::from(i / 100),
            nanos: ((u64::from(i) * 1_000_003) % 1_000_000_000) as u32,
        },
        message,
        truncated: false,
    })
}

fn lines(c: &Arc<ContainerInfo>, n: u32, tag: &str) -> Vec<Arc<Record>> {
    (0..n)
        .map(|i| record(c, i, format!("{tag} line {i}")))
        .collect()
}

/// Positions as Docker's reader gives them to these records read in this order from one
/// log: per (container, stream, timestamp), the frames at that timestamp so far.
fn read_positions(batch: &[Arc<Record>]) -> Vec<LogPosition> {
    let mut seen: HashMap<(String, StreamName, Timestamp), u32> = HashMap::new();
    batch
        .iter()
        .map(|r| {
            let n = seen
                .entry((r.container.id.clone(), r.stream, r.timestamp))
                .or_insert(0);
            *n += 1;
            LogPosition {
                timestamp: r.timestamp,
                seen: *n,
            }
        })
        .collect()
}

fn es_documents(m: &AgentMetrics, result: &str) -> u64 {
    m.es_documents
        .with_label_values(&[ROUTE, SINK, result])
        .get()
}

fn send_errors(m: &AgentMetrics, reason: &str) -> u64 {
    m.send_errors
        .with_label_values(&["elasticsearch", ROUTE, SINK, reason])
        .get()
}

fn expect_ok(result: Result<(), SendFailure>) {
    if let Err(f) = result {
        panic!(
            "send failed after accepting {} records: {}",
            f.accepted, f.error
        );
    }
}

/// Messages of stored documents with how often each occurs.
fn message_counts<'a>(sources: impl Iterator<Item = &'a Value>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for s in sources {
        let m = s["message"]
            .as_str()
            .unwrap_or_else(|| panic!("document without message: {s}"));
        *counts.entry(m.to_string()).or_insert(0) += 1;
    }
    counts
}

fn assert_each_once(counts: &HashMap<String, usize>, batch: &[Arc<Record>]) {
    let mut expected: HashMap<String, usize> = HashMap::new();
    for r in batch {
        *expected.entry(r.message.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        counts, &expected,
        "every record must be indexed exactly once"
    );
}

// ---------------------------------------------------------------- osmem-server

#[tokio::test]
async fn every_record_is_indexed_once_with_its_ecs_fields() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let web = pod_container(
        "a1",
        "api-5d8f-x7k2p",
        &[("app", "api"), ("app.kubernetes.io/name", "payments-api")],
    );
    let db = host_container();
    let mut batch: Vec<Arc<Record>> = (0..600)
        .map(|i| {
            if i % 3 == 0 {
                record(&db, i, format!("db line {i}"))
            } else {
                record(&web, i, format!("web line {i}"))
            }
        })
        .collect();
    // Two identical lines with the same timestamp are two documents.
    batch.push(record(&web, 7, "same instant".into()));
    batch.push(record(&web, 7, "same instant".into()));
    let mut cfg = config(&[&os.url], "logs-{namespace}-%Y.%m.%d");
    cfg.max_concurrency = 3;
    let (mut sink, metrics) = sink(cfg, Credentials::new());

    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    os.refresh().await;
    assert_eq!(os.count("logs-*").await, 602);
    assert_eq!(os.count("logs-payments-2024.03.01").await, 402);
    assert_eq!(os.count("logs-none-2024.03.01").await, 200);
    let hits = os.search_all("logs-*").await;
    assert_each_once(&message_counts(hits.iter().map(|h| &h["_source"])), &batch);

    let doc = |message: &str| -> Value {
        hits.iter()
            .map(|h| h["_source"].clone())
            .find(|s| s["message"] == message)
            .unwrap_or_else(|| panic!("no document with message {message:?}"))
    };
    assert_eq!(
        doc("web line 205"),
        json!({
            "@timestamp": "2024-03-01T00:00:02.205000615Z",
            "message": "web line 205",
            "log": {"iostream": "stderr"},
            "container": {"id": web.id, "name": "api", "image": {"name": "registry.local/payments/api:1.4"}, "runtime": "docker"},
            "host": {"name": "node-a"},
            "kubernetes": {
                "namespace": "payments",
                "node": {"name": "node-a"},
                "pod": {"name": "api-5d8f-x7k2p", "uid": "uid-api-5d8f-x7k2p"},
                "container": {"name": "api"},
                "labels": {"app": "api", "app_kubernetes_io/name": "payments-api"},
                "replicaset": {"name": "api-5d8f"}
            }
        })
    );
    let host_doc = doc("db line 3");
    assert_eq!(host_doc["container"]["name"], "postgres");
    assert_eq!(
        host_doc["container"]["labels"],
        json!({"com_example_tier": "db"})
    );
    assert!(host_doc.get("kubernetes").is_none(), "{host_doc}");
    assert_eq!(es_documents(&metrics, "created"), 602);
    assert_eq!(
        metrics
            .records_sent
            .with_label_values(&["elasticsearch", ROUTE, SINK])
            .get(),
        602
    );

    // Sending the same batch again (what the agent does after a failed send) adds nothing.
    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    os.refresh().await;
    assert_eq!(os.count("logs-*").await, 602);
    assert_eq!(es_documents(&metrics, "duplicate"), 602);
}

/// Runs of identical lines with one timestamp, as a busy or chatty container writes them
/// (journald-style coarse clocks make these common): `runs` × `per_run` records.
fn identical_runs(c: &Arc<ContainerInfo>, runs: u32, per_run: u32) -> Vec<Arc<Record>> {
    (0..runs)
        .flat_map(|run| (0..per_run).map(move |_| run))
        .map(|run| {
            Arc::new(Record {
                container: c.clone(),
                stream: StreamName::Stdout,
                timestamp: Timestamp {
                    secs: T0,
                    nanos: run * 1000,
                },
                message: format!("repeated {run}"),
                truncated: false,
            })
        })
        .collect()
}

#[tokio::test]
async fn records_read_again_are_the_same_documents_and_identical_lines_are_not_collapsed() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let c = pod_container("r1", "api-5d8f-r1", &[]);
    let batch = identical_runs(&c, 50, 4);
    let positions = read_positions(&batch);
    let (mut sink, metrics) = sink(config(&[&os.url], "logs-resend"), Credentials::new());

    // Split where a failed send could leave it: the second send starts in a run.
    expect_ok(sink.send(&batch[..102], &positions[..102]).await);
    expect_ok(sink.send(&batch[102..], &positions[102..]).await);
    os.refresh().await;
    assert_eq!(
        os.count("logs-resend").await,
        200,
        "every one of 4 identical lines per timestamp is a document"
    );
    // The rest of a batch resent after a partial failure, and an agent restarted from an
    // older checkpoint reading the first half again: the same positions, no new document.
    expect_ok(sink.send(&batch[150..], &positions[150..]).await);
    expect_ok(sink.send(&batch[..100], &positions[..100]).await);
    os.refresh().await;
    assert_eq!(os.count("logs-resend").await, 200);
    assert_eq!(es_documents(&metrics, "created"), 200);
    assert_eq!(es_documents(&metrics, "duplicate"), 150);
    let hits = os.search_all("logs-resend").await;
    let counts = message_counts(hits.iter().map(|h| &h["_source"]));
    assert!(
        counts.len() == 50 && counts.values().all(|n| *n == 4),
        "each message 4 times, got {counts:?}"
    );
}

#[tokio::test]
async fn a_mapping_error_rejects_that_document_only_gzip_on() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let mapping = json!({"mappings": {"properties": {"kubernetes": {"properties": {"labels": {"properties": {"build": {"type": "long"}}}}}}}});
    os.create_index("logs-typed", mapping).await;
    let good = pod_container("b1", "api-1", &[("build", "17")]);
    let bad = pod_container("b2", "api-2", &[("build", "not-a-number")]);
    let mut batch = lines(&good, 20, "good");
    batch.insert(10, record(&bad, 10, "bad".into()));
    let mut cfg = config(&[&os.url], "logs-typed");
    cfg.compression = Compression::Gzip;
    let (mut sink, metrics) = sink(cfg, Credentials::new());

    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    os.refresh().await;
    let hits = os.search_all("logs-typed").await;
    assert_each_once(
        &message_counts(hits.iter().map(|h| &h["_source"])),
        &[&batch[..10], &batch[11..]].concat(),
    );
    assert_eq!(es_documents(&metrics, "rejected"), 1);
    assert_eq!(send_errors(&metrics, "mapper_parsing_exception"), 1);
    assert_eq!(
        metrics
            .records_dropped
            .with_label_values(&[ROUTE, SINK, "rejected"])
            .get(),
        1
    );
}

// ---------------------------------------------------------------- nginx: TLS and auth

fn tls(server_name: &str) -> Option<TlsSettings> {
    Some(TlsSettings {
        ca: Some(CredentialRef {
            key: "ca.crt".into(),
        }),
        server_name: server_name.into(),
        ..Default::default()
    })
}

fn key(k: &str) -> CredentialRef {
    CredentialRef { key: k.into() }
}

/// A wrong secret is a clear error naming the endpoint and not the secret; once fixed,
/// resending the batch indexes everything once.
async fn wrong_then_right(
    os: &Osmem,
    proxy: &Nginx,
    mut cfg: ElasticsearchConfig,
    wrong: Credentials,
    right: Credentials,
    secret: &str,
) {
    let batch = lines(&pod_container("c1", "api-1", &[]), 50, "secured");
    cfg.endpoints = vec![proxy.url.clone()];
    let (mut bad, metrics) = sink(cfg.clone(), wrong);
    let failure = bad
        .send(&batch, &read_positions(&batch))
        .await
        .expect_err("wrong credentials must fail the send");
    let message = failure.error.to_string();
    assert_eq!(failure.accepted, 0, "{message}");
    assert!(
        message.contains(&format!("authentication failed for endpoint {}", proxy.url)),
        "{message}"
    );
    assert!(
        message.contains("HTTP 401") && message.contains("check the Secret"),
        "{message}"
    );
    assert!(
        !message.contains(secret),
        "the error must not carry the secret: {message}"
    );
    assert_eq!(failure.error.reason(), "auth");
    assert_eq!(send_errors(&metrics, "auth"), 1);

    let (mut good, _) = sink(cfg, right);
    expect_ok(good.send(&batch, &read_positions(&batch)).await);
    os.refresh().await;
    let hits = os.search_all("logs-secure").await;
    assert_each_once(&message_counts(hits.iter().map(|h| &h["_source"])), &batch);
}

#[tokio::test]
async fn tls_with_basic_auth() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let auth = ProxyAuth::Basic {
        user: "logroute".into(),
        password: "s3cret-Pa55".into(),
    };
    let Some(proxy) = Nginx::start(os.authority(), auth).await else {
        return;
    };
    let mut cfg = config(&[], "logs-secure");
    cfg.tls = tls("localhost");
    cfg.auth = Some(ElasticsearchCredentials::Basic {
        username: key("username"),
        password: key("password"),
    });
    let creds = |password: &str| -> Credentials {
        [
            ("username".to_string(), b"logroute".to_vec()),
            ("password".to_string(), password.as_bytes().to_vec()),
            ("ca.crt".to_string(), proxy.pki.ca_pem.clone()),
        ]
        .into()
    };
    wrong_then_right(
        &os,
        &proxy,
        cfg,
        creds("Wr0ng-Pa55"),
        creds("s3cret-Pa55\n"),
        "Wr0ng-Pa55",
    )
    .await;
}

#[tokio::test]
async fn tls_with_api_key() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let api_key = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==";
    let Some(proxy) = Nginx::start(os.authority(), ProxyAuth::ApiKey(api_key.into())).await else {
        return;
    };
    let mut cfg = config(&[], "logs-secure");
    // No serverName: the certificate is checked against the URL's IP address.
    cfg.tls = tls("");
    cfg.auth = Some(ElasticsearchCredentials::ApiKey {
        key: key("api-key"),
    });
    let creds = |k: &str| -> Credentials {
        [
            ("api-key".to_string(), k.as_bytes().to_vec()),
            ("ca.crt".to_string(), proxy.pki.ca_pem.clone()),
        ]
        .into()
    };
    wrong_then_right(
        &os,
        &proxy,
        cfg,
        creds("d3Jvbmcta2V5"),
        creds(api_key),
        "d3Jvbmcta2V5",
    )
    .await;
}

#[tokio::test]
async fn tls_client_certificate_and_server_verification() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let Some(proxy) = Nginx::start(os.authority(), ProxyAuth::ClientCert).await else {
        return;
    };
    let batch = lines(&pod_container("d1", "api-1", &[]), 10, "mtls");
    let mut cfg = config(&[&proxy.url], "logs-secure");
    let mut settings = tls("localhost").expect("tls settings");
    settings.client_cert = Some(key("tls.crt"));
    settings.client_key = Some(key("tls.key"));
    cfg.tls = Some(settings.clone());
    let creds: Credentials = [
        ("ca.crt".to_string(), proxy.pki.ca_pem.clone()),
        ("tls.crt".to_string(), proxy.pki.client_cert.clone()),
        ("tls.key".to_string(), proxy.pki.client_key.clone()),
    ]
    .into();
    let (mut good, _) = sink(cfg.clone(), creds.clone());
    expect_ok(good.send(&batch, &read_positions(&batch)).await);
    os.refresh().await;
    assert_eq!(os.count("logs-secure").await, 10);

    // Without the custom CA the server certificate is not trusted...
    let mut untrusted = cfg.clone();
    untrusted.tls = Some(TlsSettings {
        ca: None,
        ..settings.clone()
    });
    let (mut s, _) = sink(untrusted, creds.clone());
    let failure = s
        .send(&batch, &read_positions(&batch))
        .await
        .expect_err("an unknown CA must fail the handshake");
    assert_eq!(failure.error.reason(), "unavailable", "{}", failure.error);
    assert!(
        failure.error.to_string().contains("certificate"),
        "{}",
        failure.error
    );

    // ...unless verification is explicitly skipped.
    let mut skip = cfg;
    skip.tls = Some(TlsSettings {
        ca: None,
        insecure_skip_verify: true,
        ..settings
    });
    let (mut s, _) = sink(skip, creds);
    expect_ok(s.send(&batch, &read_positions(&batch)).await);
}

// ---------------------------------------------------------------- fault-injecting server

/// Stored documents' messages with how often each occurs; panics on overwritten ones.
fn stored_once(server: &BulkServer) -> HashMap<String, usize> {
    let docs = server.docs();
    for d in &docs {
        assert_eq!(d.version, 1, "document {} was written more than once", d.id);
    }
    message_counts(docs.iter().map(|d| &d.source))
}

#[tokio::test]
async fn per_item_429_resends_only_those_items() {
    let server = BulkServer::start().await;
    server.fail_items(429, 3, 1);
    let batch = lines(&pod_container("e1", "api-1", &[]), 30, "item");
    let (mut sink, metrics) = sink(config(&[&server.url()], "logs-fault"), Credentials::new());

    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    let requests = server.requests();
    let sizes: Vec<usize> = requests.iter().map(|r| r.documents).collect();
    assert_eq!(
        sizes,
        vec![30, 10],
        "the retry must carry only the 10 rejected items"
    );
    assert_each_once(&stored_once(&server), &batch);
    for d in server.docs() {
        let i: usize = d.source["message"]
            .as_str()
            .and_then(|m| m.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("message ends with its number");
        let expected = if i % 3 == 0 { 2 } else { 1 };
        assert_eq!(
            server.received(&d.id),
            expected,
            "{} was received a wrong number of times",
            d.source["message"]
        );
    }
    assert_eq!(es_documents(&metrics, "retried"), 10);
    assert_eq!(es_documents(&metrics, "created"), 30);
    assert_eq!(
        metrics
            .send_retries
            .with_label_values(&["elasticsearch", ROUTE, SINK])
            .get(),
        1
    );
}

#[tokio::test]
async fn identical_lines_with_one_timestamp_survive_a_partial_429_and_the_resend() {
    let server = BulkServer::start().await;
    // Four identical lines stamped with the same nanosecond, in requests of two.
    let batch = identical_runs(&pod_container("o1", "api-1", &[]), 1, 4);
    let positions = read_positions(&batch);
    let mut cfg = config(&[&server.url()], "logs-fault");
    cfg.max_events = 2;
    cfg.max_concurrency = 1;
    let (mut sink, metrics) = sink(cfg, Credentials::new());
    // The first request goes through; in the second, the first item is answered 429 on
    // every attempt, so the send gives up after its retries.
    server.fail_items_after(1, 429, 2, 1 + fast_retries().max_retries as usize);

    let failure = sink
        .send(&batch, &positions)
        .await
        .expect_err("the third line is refused through every retry");
    assert_eq!(
        (failure.accepted, failure.error.reason()),
        (2, "unavailable")
    );
    assert_eq!(server.docs().len(), 3, "lines 1, 2 and 4 are in");
    // What the sink worker does next: send the rest again after a backoff.
    expect_ok(sink.send(&batch[2..], &positions[2..]).await);
    let docs = server.docs();
    assert_eq!(
        docs.len(),
        4,
        "the resent third line must be a new document, not a duplicate of the first: {:?}",
        docs.iter().map(|d| &d.id).collect::<Vec<_>>()
    );
    assert_each_once(&stored_once(&server), &batch);
    assert_eq!(es_documents(&metrics, "created"), 4);
    assert_eq!(
        es_documents(&metrics, "duplicate"),
        1,
        "only the fourth line, stored by the first send, is resent"
    );
}

#[tokio::test]
async fn whole_request_429_and_503_are_retried_with_backoff() {
    let server = BulkServer::start().await;
    server.fail_next(&[429, 503]);
    let batch = lines(&pod_container("f1", "api-1", &[]), 20, "whole");
    let (mut sink, metrics) = sink(config(&[&server.url()], "logs-fault"), Credentials::new());
    sink.set_retry_policy(RetryPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        max_retries: 3,
    });

    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    let requests = server.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 503, 200]);
    let gap1 = requests[1].at - requests[0].at;
    let gap2 = requests[2].at - requests[1].at;
    assert!(
        gap1 >= Duration::from_millis(50),
        "first retry came after {gap1:?}, expected a backoff of at least 50 ms"
    );
    assert!(
        gap2 >= Duration::from_millis(100),
        "second retry came after {gap2:?}, expected at least 100 ms"
    );
    assert_each_once(&stored_once(&server), &batch);
    assert_eq!(send_errors(&metrics, "http_429"), 1);
    assert_eq!(send_errors(&metrics, "http_503"), 1);
    assert_eq!(
        metrics
            .send_retries
            .with_label_values(&["elasticsearch", ROUTE, SINK])
            .get(),
        2
    );
}

#[tokio::test]
async fn a_mapping_error_is_counted_and_not_retried() {
    let server = BulkServer::start().await;
    server.map_field("logs-fault", "kubernetes.labels.build", FieldType::Long);
    let good = pod_container("g1", "api-1", &[("build", "17")]);
    let bad = pod_container("g2", "api-2", &[("build", "nightly")]);
    let mut batch = lines(&good, 10, "good");
    batch.push(record(&bad, 3, "bad".into()));
    let (mut sink, metrics) = sink(config(&[&server.url()], "logs-fault"), Credentials::new());

    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    assert_eq!(
        server.requests().len(),
        1,
        "a mapping error must not be retried"
    );
    assert_each_once(&stored_once(&server), &batch[..10]);
    assert_eq!(es_documents(&metrics, "rejected"), 1);
    assert_eq!(send_errors(&metrics, "mapper_parsing_exception"), 1);
    assert_eq!(
        metrics
            .records_dropped
            .with_label_values(&[ROUTE, SINK, "rejected"])
            .get(),
        1
    );
}

#[tokio::test]
async fn an_oversized_request_is_split() {
    let server = BulkServer::start().await;
    let c = pod_container("h1", "api-1", &[]);
    let mut batch = lines(&c, 40, "split");
    // Each record encodes to 500–700 bytes: the 40 do not fit in one request.
    server.set_max_content_length(8 * 1024);
    // One record too large on its own: rejected and counted, not retried forever.
    batch.push(record(&c, 99, "x".repeat(10 * 1024)));
    let (mut sink, metrics) = sink(config(&[&server.url()], "logs-fault"), Credentials::new());

    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    let requests = server.requests();
    assert_eq!(requests[0].status, 413, "{requests:?}");
    assert_eq!(requests[0].documents, 41, "{requests:?}");
    let accepted: usize = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.documents)
        .sum();
    assert_eq!(
        accepted, 40,
        "the split requests must carry each fitting record once: {requests:?}"
    );
    assert_each_once(&stored_once(&server), &batch[..40]);
    assert_eq!(es_documents(&metrics, "rejected"), 1);
    assert_eq!(send_errors(&metrics, "request_too_large"), 1);
}

#[tokio::test]
async fn a_slow_server_sees_at_most_max_concurrency_requests() {
    let server = BulkServer::start().await;
    server.set_delay(Duration::from_millis(200));
    let batch = lines(&pod_container("i1", "api-1", &[]), 100, "slow");
    let mut cfg = config(&[&server.url()], "logs-fault");
    cfg.max_events = 10;
    cfg.max_concurrency = 3;
    let (mut sink, _) = sink(cfg, Credentials::new());

    let started = Instant::now();
    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    assert_eq!(server.requests().len(), 10);
    assert_eq!(server.max_in_flight(), 3, "requests in flight at once");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "10 requests of 200 ms, 3 at a time, took {:?}",
        started.elapsed()
    );
    assert_each_once(&stored_once(&server), &batch);
}

#[tokio::test]
async fn gzip_bodies_are_compressed() {
    let server = BulkServer::start().await;
    let batch = lines(&pod_container("j1", "api-1", &[]), 50, "gzip");
    let mut cfg = config(&[&server.url()], "logs-fault");
    cfg.compression = Compression::Gzip;
    let (mut sink, _) = sink(cfg, Credentials::new());
    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    let requests = server.requests();
    assert!(
        !requests.is_empty() && requests.iter().all(|r| r.gzip),
        "{requests:?}"
    );
    assert_each_once(&stored_once(&server), &batch);
}

/// Bodies from 64 KiB up are compressed on the blocking pool: they arrive whole and
/// decompress to every document.
#[tokio::test]
async fn large_gzip_bodies_are_compressed_whole() {
    let server = BulkServer::start().await;
    let c = pod_container("j2", "api-1", &[]);
    let batch: Vec<_> = (0..600)
        .map(|i| record(&c, i, format!("large gzip line {i} {}", "p".repeat(400))))
        .collect();
    let mut cfg = config(&[&server.url()], "logs-fault");
    cfg.compression = Compression::Gzip;
    cfg.max_events = 300;
    let (mut sink, _) = sink(cfg, Credentials::new());
    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    let requests = server.requests();
    assert!(
        requests.len() >= 2
            && requests
                .iter()
                .all(|r| r.gzip && r.status == 200 && r.bytes >= 64 * 1024),
        "expected gzip requests of 64 KiB and more: {requests:?}"
    );
    assert_each_once(&stored_once(&server), &batch);
}

#[tokio::test]
async fn a_dead_endpoint_fails_over_to_the_next() {
    let server = BulkServer::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("address"))
    };
    let batch = lines(&pod_container("k1", "api-1", &[]), 10, "failover");
    let (mut sink, metrics) = sink(
        config(&[&dead, &server.url()], "logs-fault"),
        Credentials::new(),
    );
    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    assert_eq!(send_errors(&metrics, "transport"), 1);
    assert_each_once(&stored_once(&server), &batch);
}

#[tokio::test]
async fn a_send_that_gives_up_reports_the_accepted_prefix_and_a_resend_duplicates_nothing() {
    let server = BulkServer::start().await;
    // First request answered normally, then the cluster stays unavailable past the retries.
    server.fail_next(&[0, 503, 503, 503, 503]);
    let batch = lines(&pod_container("l1", "api-1", &[]), 10, "prefix");
    let mut cfg = config(&[&server.url()], "logs-fault");
    cfg.max_events = 5;
    cfg.max_concurrency = 1;
    let (mut sink, metrics) = sink(cfg, Credentials::new());

    let failure = sink
        .send(&batch, &read_positions(&batch))
        .await
        .expect_err("the second request must give up");
    assert_eq!(failure.accepted, 5);
    assert_eq!(failure.error.reason(), "unavailable");
    assert!(
        failure.error.to_string().contains("HTTP 503"),
        "{}",
        failure.error
    );
    assert_eq!(send_errors(&metrics, "unavailable"), 1);

    // The agent resends the whole batch: the first five answer 409 and count as delivered.
    expect_ok(sink.send(&batch, &read_positions(&batch)).await);
    assert_each_once(&stored_once(&server), &batch);
    assert_eq!(es_documents(&metrics, "duplicate"), 5);
}

#[tokio::test]
async fn wrong_credentials_on_the_fault_server_surface_as_auth() {
    let server = BulkServer::start().await;
    server.require_authorization("ApiKey right");
    let batch = lines(&pod_container("m1", "api-1", &[]), 5, "auth");
    let mut cfg = config(&[&server.url()], "logs-fault");
    cfg.auth = Some(ElasticsearchCredentials::ApiKey { key: key("k") });
    let (mut bad, _) = sink(cfg.clone(), [("k".to_string(), b"wrong".to_vec())].into());
    let failure = bad
        .send(&batch, &read_positions(&batch))
        .await
        .expect_err("401 must fail the send");
    assert_eq!((failure.accepted, failure.error.reason()), (0, "auth"));
    assert_eq!(
        server.requests().len(),
        1,
        "an auth failure is not retried inside the send"
    );
    let (mut good, _) = sink(cfg, [("k".to_string(), b"right".to_vec())].into());
    expect_ok(good.send(&batch, &read_positions(&batch)).await);
    assert!(
        server
            .requests()
            .iter()
            .skip(1)
            .all(|r| r.authorization.as_deref() == Some("ApiKey right"))
    );
    assert_each_once(&stored_once(&server), &batch);
}

#[tokio::test]
async fn shutdown_interrupts_a_send() {
    let server = BulkServer::start().await;
    server.set_delay(Duration::from_secs(30));
    let batch = lines(&pod_container("n1", "api-1", &[]), 5, "shutdown");
    let (mut sink, _) = sink(config(&[&server.url()], "logs-fault"), Credentials::new());
    let token = tokio_util::sync::CancellationToken::new();
    sink.set_shutdown(token.clone());
    let send = tokio::spawn(async move {
        sink.send(&batch, &read_positions(&batch))
            .await
            .map_err(|f| (f.accepted, f.error.reason()))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.max_in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = Instant::now();
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), send)
        .await
        .expect("send must return promptly after shutdown")
        .expect("send task");
    assert_eq!(result, Err((0, "shutdown")));
    assert!(cancelled.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------- batching by the sink worker

/// A sink worker for one Elasticsearch sink, fed as the agent's lanes feed it.
struct Worker {
    queue: worker::SinkQueue,
    lane: Arc<LaneCheckpoint>,
    checkpoints: Arc<Checkpoints>,
    metrics: AgentMetrics,
    stop: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(cfg: ElasticsearchConfig, capacity: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let checkpoints = Checkpoints::open(dir.path())
            .expect("open checkpoints")
            .checkpoints;
        let (lane, _) = checkpoints
            .lane("c1", ROUTE, SINK, Cursor::default())
            .expect("lane checkpoint");
        let (ctx, metrics) = ctx(Credentials::new());
        let (_keep, credentials) = tokio::sync::watch::channel(Arc::new(Credentials::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let sink = CompiledSink {
            name: SINK.into(),
            config: SinkConfig::Elasticsearch(cfg),
        };
        let queue = worker::spawn(
            &tokio_util::task::TaskTracker::new(),
            &tokio_util::task::TaskTracker::new(),
            &sink,
            ctx,
            credentials,
            worker::QueueBounds {
                records: capacity,
                bytes: std::sync::Arc::new(worker::QueueBytes::new(usize::MAX, None)),
            },
            stop.clone(),
        )
        .expect("sink worker");
        Self {
            queue,
            lane,
            checkpoints,
            metrics,
            stop,
            _dir: dir,
        }
    }

    /// Queue `records` as a lane does: each with the position just past it, counted
    /// like Docker frames (per timestamp).
    fn entries(&self, records: &[Arc<Record>]) -> Vec<(Queued, Cursor)> {
        let mut cursor = Cursor::default();
        records
            .iter()
            .map(|r| {
                let c = cursor.stream_mut(r.stream);
                if c.timestamp == r.timestamp {
                    c.seen += 1;
                } else {
                    c.timestamp = r.timestamp;
                    c.seen = 1;
                }
                let position = Position {
                    lane: self.lane.clone(),
                    cursor,
                    lines: 1,
                };
                (Queued::Record(r.clone(), position), cursor)
            })
            .collect()
    }

    fn checkpoint(&self) -> Option<Cursor> {
        self.checkpoints.get("c1", ROUTE, SINK)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Wait until the server stored `n` documents; fail naming what it has.
async fn await_docs(server: &BulkServer, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let stored = server.docs().len();
        if stored >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} stored documents within {within:?}, the server has {stored} after requests {:?}",
            server
                .requests()
                .iter()
                .map(|r| (r.documents, r.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_low_rate_stream_lingers_into_one_bulk_request() {
    let server = BulkServer::start().await;
    let mut cfg = config(&[&server.url()], "logs-linger");
    cfg.timeout_ms = 500;
    let w = Worker::start(cfg, 1000);
    // Ten identical lines with one timestamp: ten documents, told apart by position.
    let records = identical_runs(&pod_container("q1", "api-1", &[]), 1, 10);
    let entries = w.entries(&records);
    let last = entries.last().map(|(_, c)| *c);
    let first_sent = Instant::now();
    for (entry, _) in entries {
        assert!(w.queue.try_send(entry).is_ok(), "queue has room");
        // The pace of a quiet container, not a wait for something.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    await_docs(&server, 10, Duration::from_secs(10)).await;
    let requests = server.requests();
    assert_eq!(
        requests.iter().map(|r| r.documents).collect::<Vec<_>>(),
        vec![10],
        "ten records 20 ms apart within timeoutMs 500 make one bulk request"
    );
    let waited = requests[0].at - first_sent;
    assert!(
        waited >= Duration::from_millis(450),
        "the request went {waited:?} after the first record; it should linger about 500 ms"
    );
    assert_each_once(&stored_once(&server), &records);
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.checkpoint() != last {
        assert!(
            Instant::now() < deadline,
            "checkpoint {:?}, expected {last:?}",
            w.checkpoint()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_backlog_goes_out_in_bulks_of_max_events_above_1024() {
    let server = BulkServer::start().await;
    let mut cfg = config(&[&server.url()], "logs-backlog");
    cfg.max_events = 5000;
    cfg.max_bytes = 100 << 20;
    cfg.max_concurrency = 2;
    let w = Worker::start(cfg, 20_000);
    let records = lines(&pod_container("s1", "api-1", &[]), 12_000, "backlog");
    // Queued without yielding: the worker finds a backlog of 12,000.
    for (entry, _) in w.entries(&records) {
        assert!(w.queue.try_send(entry).is_ok(), "queue has room");
    }
    await_docs(&server, 12_000, Duration::from_secs(60)).await;
    let mut sizes: Vec<usize> = server.requests().iter().map(|r| r.documents).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        sizes,
        vec![5000, 5000, 2000],
        "full bulks of maxEvents while there is a backlog, then the rest"
    );
    assert_each_once(&stored_once(&server), &records);
    let sent = w
        .metrics
        .records_sent
        .with_label_values(&["elasticsearch", ROUTE, SINK]);
    // The server stores before the worker has read the last answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent.get() < 12_000 {
        assert!(
            Instant::now() < deadline,
            "records sent {}, expected 12000",
            sent.get()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bulk_requests_stay_within_max_bytes() {
    let server = BulkServer::start().await;
    let max_bytes = 16 * 1024;
    let mut cfg = config(&[&server.url()], "logs-bytes");
    cfg.max_events = 1000;
    cfg.max_bytes = max_bytes as u64;
    cfg.max_concurrency = 1;
    let w = Worker::start(cfg, 1000);
    let c = pod_container("u1", "api-1", &[]);
    let records: Vec<Arc<Record>> = (0..120)
        .map(|i| {
            record(
                &c,
                i,
                format!("{i:04} {}", "b".repeat(900 + (i as usize % 7) * 50)),
            )
        })
        .collect();
    for (entry, _) in w.entries(&records) {
        assert!(w.queue.try_send(entry).is_ok(), "queue has room");
    }
    await_docs(&server, 120, Duration::from_secs(30)).await;
    let requests = server.requests();
    let largest_record = 2000;
    for (i, r) in requests.iter().enumerate() {
        assert!(
            r.bytes <= max_bytes,
            "request {i} has {} bytes, over maxBytes {max_bytes}",
            r.bytes
        );
        if i + 1 < requests.len() {
            assert!(
                r.bytes + largest_record > max_bytes,
                "request {i} has {} bytes: a backlog must fill requests up to maxBytes",
                r.bytes
            );
        }
    }
    assert!(requests.len() >= 8, "{} requests", requests.len());
    assert_each_once(&stored_once(&server), &records);
}

/// Throughput of one sink into osmem-server with the default batch settings (1000
/// documents per request, 2 in flight). Prints docs/s; run with
/// `cargo test --release --test es_sink -- --ignored --nocapture indexing_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check: run explicitly"]
async fn indexing_throughput_into_osmem() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let web = pod_container(
        "t1",
        "api-5d8f-x7k2p",
        &[("app", "api"), ("app.kubernetes.io/name", "payments-api")],
    );
    let total = 100_000u32;
    let batch: Vec<Arc<Record>> = (0..total)
        .map(|i| {
            record(
                &web,
                i,
                format!(
                    "GET /api/v1/payments/{i} 200 0.0{}s user-agent=curl/8.5",
                    i % 10
                ),
            )
        })
        .collect();
    let mut cfg = config(&[&os.url], "logs-bench-%Y.%m.%d");
    cfg.max_events = 1000;
    let (mut sink, metrics) = sink(cfg, Credentials::new());
    let started = Instant::now();
    // Batches of maxEvents × maxConcurrency keep both requests of a send busy.
    for chunk in batch.chunks(2000) {
        expect_ok(sink.send(chunk, &read_positions(chunk)).await);
    }
    let elapsed = started.elapsed();
    os.refresh().await;
    assert_eq!(os.count("logs-bench-*").await, u64::from(total));
    let bulk = metrics.es_bulk_duration.with_label_values(&[ROUTE, SINK]);
    println!(
        "indexed {total} documents into osmem-server in {:.2} s: {:.0} docs/s ({} bulk requests, {:.0} ms each on average)",
        elapsed.as_secs_f64(),
        f64::from(total) / elapsed.as_secs_f64(),
        bulk.get_sample_count(),
        bulk.get_sample_sum() * 1000.0 / bulk.get_sample_count().max(1) as f64,
    );
}
