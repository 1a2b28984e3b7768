//! Elasticsearch sink: `_bulk` delivery with per-item handling.
//!
//! Batching: the sink worker gathers records for this sink as
//! [`ElasticsearchSink::batching`] says: a send holds up to `maxConcurrency` requests'
//! worth of records (`maxEvents` documents, `maxBytes` bytes each, weighed with
//! [`ElasticsearchSink::weigh`]); once it holds one full request it goes as soon as the
//! queue has nothing more ready, and a smaller one waits up to `batch.timeoutMs` for more.
//!
//! One [`ElasticsearchSink::send`] resolves a whole batch: it encodes the records once
//! ([`encode`]), cuts them into bulk requests of at most `maxEvents` documents and
//! `maxBytes` bytes (exactly, on the encoded bodies), runs up to `maxConcurrency`
//! requests at once, reads every per-item result and decides with [`retry::classify`] what to do with each document. Transient
//! failures (429/5xx/timeouts/connection errors, whole or per item) are retried inside the
//! send with exponential backoff and jitter, up to [`RetryPolicy::max_retries`] times per
//! request; whole-request failures move to the next endpoint. Only what no retry inside
//! one send can fix (bad credentials, a write-blocked index, a refused request, or a
//! cluster that stayed unavailable through every retry) is handed back as a
//! [`SendFailure`] — the caller resends after its own backoff, and the document ids,
//! derived from each record's position in its container's log (see [`encode`]), make
//! documents that did get in answer 409, counted as `duplicate`, so nothing is indexed
//! twice and no two records are taken for one.

mod deliver;
pub mod encode;
pub mod index;
pub mod retry;
mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prometheus::{Histogram, IntCounter};
use tokio_util::sync::CancellationToken;

pub use deliver::{RetryPolicy, plan_requests};
use encode::Encoder;
use index::{IndexTemplate, TemplateError};
use transport::Transport;

use super::worker::Batching;
use super::{SendFailure, SinkContext};
use crate::record::{ContainerInfo, LogPosition, Record};
use crate::route::document::{ElasticsearchConfig, IndexTarget};

const KIND: &str = "elasticsearch";

/// Errors of the Elasticsearch sink. Messages never carry credentials or document bodies.
#[derive(Debug, thiserror::Error)]
pub enum ElasticsearchError {
    #[error("invalid Elasticsearch endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("invalid Elasticsearch index template {template:?}: {source}")]
    InvalidIndexTemplate {
        template: String,
        source: TemplateError,
    },
    #[error(
        "credential {key:?} is missing from the route's compiled credentials Secret; check that the Secret the LogRoute refers to exists and has the expected keys"
    )]
    MissingCredential { key: String },
    #[error(
        "credential {key:?} cannot be sent in an HTTP header (control characters?); fix the value in the Secret the LogRoute refers to"
    )]
    InvalidCredential { key: String },
    #[error("Elasticsearch TLS settings ({what}): {reason}")]
    Tls { what: String, reason: String },
    #[error("Elasticsearch TLS settings: {0}")]
    TlsSetup(#[from] crate::sink::tls::TlsError),
    #[error(
        "authentication failed for endpoint {endpoint} (HTTP {status}): check the Secret referenced by the route's elasticsearch auth (username/password or API key) and that user's or key's privileges on the target index; the batch will be resent"
    )]
    Auth { endpoint: String, status: u16 },
    #[error(
        "writes to {index} at {endpoint} are blocked for writes (cluster_block_exception, e.g. read-only after the disk flood-stage watermark); free disk space or remove the block, the batch will be resent"
    )]
    IndexBlocked { endpoint: String, index: String },
    #[error(
        "{endpoint} refused the bulk request with HTTP {status} {error_type}; check that the endpoint is an Elasticsearch or OpenSearch base URL (and what any proxy in between does); the batch will be resent"
    )]
    Refused {
        endpoint: String,
        status: u16,
        error_type: String,
    },
    #[error(
        "Elasticsearch stayed unavailable through {attempts} attempts (last at {endpoint}: {last}); the batch will be resent"
    )]
    Unavailable {
        endpoint: String,
        attempts: u32,
        last: String,
    },
    #[error("the agent is shutting down; the rest of the batch was not delivered")]
    ShuttingDown,
}

impl ElasticsearchError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ElasticsearchError::InvalidEndpoint { .. }
            | ElasticsearchError::InvalidIndexTemplate { .. }
            | ElasticsearchError::MissingCredential { .. }
            | ElasticsearchError::InvalidCredential { .. } => "invalid_config",
            ElasticsearchError::Tls { .. } | ElasticsearchError::TlsSetup(_) => "tls_config",
            ElasticsearchError::Auth { .. } => "auth",
            ElasticsearchError::IndexBlocked { .. } => "index_blocked",
            ElasticsearchError::Refused { .. } => "refused",
            ElasticsearchError::Unavailable { .. } => "unavailable",
            ElasticsearchError::ShuttingDown => "shutdown",
        }
    }
}

/// Metric handles of one (route, sink), resolved once.
struct SinkMetrics {
    created: IntCounter,
    indexed: IntCounter,
    duplicate: IntCounter,
    rejected: IntCounter,
    retried: IntCounter,
    dropped_rejected: IntCounter,
    records_sent: IntCounter,
    send_retries: IntCounter,
    bulk_duration: Histogram,
    batch_size: Histogram,
    send_latency: Histogram,
    end_to_end: Histogram,
}

impl SinkMetrics {
    fn new(ctx: &SinkContext) -> Self {
        let m = &ctx.metrics;
        let (route, sink) = (ctx.route.as_str(), ctx.sink.as_str());
        let doc = |result: &str| m.es_documents.with_label_values(&[route, sink, result]);
        Self {
            created: doc("created"),
            indexed: doc("indexed"),
            duplicate: doc("duplicate"),
            rejected: doc("rejected"),
            retried: doc("retried"),
            dropped_rejected: m
                .records_dropped
                .with_label_values(&[route, sink, "rejected"]),
            records_sent: m.records_sent.with_label_values(&[KIND, route, sink]),
            send_retries: m.send_retries.with_label_values(&[KIND, route, sink]),
            bulk_duration: m.es_bulk_duration.with_label_values(&[route, sink]),
            batch_size: m.es_batch_size.with_label_values(&[route, sink]),
            send_latency: m.send_latency.with_label_values(&[KIND, route, sink]),
            end_to_end: m.end_to_end_latency.with_label_values(&[KIND, route, sink]),
        }
    }
}

/// The sink; its state lives on the heap so that [`super::SinkClient`] stays small.
pub struct ElasticsearchSink(Box<Inner>);

struct Inner {
    ctx: SinkContext,
    metrics: SinkMetrics,
    encoder: Encoder,
    transport: Transport,
    max_events: usize,
    max_bytes: usize,
    concurrency: usize,
    linger: Duration,
    policy: RetryPolicy,
    shutdown: CancellationToken,
    /// [`Encoder::container_overhead`] per container (keyed by the `Arc`'s address, which
    /// the held `Arc` keeps unique), for [`ElasticsearchSink::weigh`].
    overheads: HashMap<usize, (Arc<ContainerInfo>, usize)>,
}

/// Containers whose document overhead [`ElasticsearchSink::weigh`] remembers; past
/// this the cache starts over (containers come and go).
const MAX_OVERHEADS: usize = 1024;

impl ElasticsearchSink {
    /// Validate the configuration and load credentials and TLS material; no network I/O.
    pub fn new(cfg: ElasticsearchConfig, ctx: SinkContext) -> Result<Self, ElasticsearchError> {
        Inner::new(cfg, ctx).map(|inner| Self(Box::new(inner)))
    }

    /// Cancelling `token` interrupts a send (in-flight requests and backoff waits): it
    /// returns a [`SendFailure`] with [`ElasticsearchError::ShuttingDown`] at once.
    pub fn set_shutdown(&mut self, token: CancellationToken) {
        self.0.shutdown = token;
    }

    /// Override the retry schedule (tests use a fast one).
    pub fn set_retry_policy(&mut self, policy: RetryPolicy) {
        self.0.policy = policy;
    }

    /// Deliver a batch; see the module documentation. `positions[i]` is where `batch[i]`
    /// ends in its container's log: it makes the document id. `Ok` means every record is
    /// in the index (created, or found there already) or was permanently rejected and
    /// counted.
    ///
    /// # Panics
    /// When `positions` is not as long as `batch`.
    pub async fn send(
        &mut self,
        batch: &[Arc<Record>],
        positions: &[LogPosition],
    ) -> Result<(), SendFailure> {
        self.0.send(batch, positions).await
    }

    /// How the sink worker gathers records for this sink: see the module documentation.
    pub fn batching(&self) -> Batching {
        let i = &self.0;
        let max_records = i.max_events.saturating_mul(i.concurrency);
        Batching {
            max_records,
            max_bytes: i.max_bytes.saturating_mul(i.concurrency),
            full_records: i.max_events,
            full_bytes: i.max_bytes,
            linger: i.linger,
            step: max_records,
        }
    }

    /// The size `record` will have in a bulk request body (an estimate: exact unless its
    /// message needs JSON escapes).
    pub fn weigh(&mut self, record: &Arc<Record>) -> usize {
        let i = &mut *self.0;
        let key = Arc::as_ptr(&record.container) as usize;
        let overhead = match i.overheads.get(&key) {
            Some((_, n)) => *n,
            None => {
                if i.overheads.len() >= MAX_OVERHEADS {
                    i.overheads.clear();
                }
                let n = i.encoder.container_overhead(record);
                i.overheads.insert(key, (record.container.clone(), n));
                n
            }
        };
        Encoder::estimate(record, overhead)
    }
}

impl Inner {
    fn new(cfg: ElasticsearchConfig, ctx: SinkContext) -> Result<Self, ElasticsearchError> {
        let template = match &cfg.target {
            IndexTarget::Index(t) | IndexTarget::DataStream(t) => t,
        };
        let parsed = IndexTemplate::parse(template).map_err(|source| {
            ElasticsearchError::InvalidIndexTemplate {
                template: template.clone(),
                source,
            }
        })?;
        let egress = crate::sink::egress::EgressGuard::new(cfg.egress.as_ref(), KIND, &ctx);
        let transport = Transport::new(&cfg, &ctx.credentials, egress)?;
        Ok(Self {
            metrics: SinkMetrics::new(&ctx),
            encoder: Encoder::new(parsed, ctx.node.clone()),
            transport,
            max_events: cfg.max_events.max(1) as usize,
            max_bytes: usize::try_from(cfg.max_bytes).unwrap_or(usize::MAX).max(1),
            concurrency: cfg.max_concurrency.clamp(1, 64) as usize,
            linger: Duration::from_millis(cfg.timeout_ms.into()),
            policy: RetryPolicy::default(),
            overheads: HashMap::new(),
            shutdown: CancellationToken::new(),
            ctx,
        })
    }

    async fn send(
        &self,
        batch: &[Arc<Record>],
        positions: &[LogPosition],
    ) -> Result<(), SendFailure> {
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let encoded = self.encoder.encode(batch, positions);
        let requests = plan_requests(&encoded.spans, self.max_events, self.max_bytes);
        let mut done = vec![false; batch.len()];
        let mut failure = None;
        {
            let mut running = futures::stream::iter(requests)
                .map(|r| self.deliver(&encoded, batch, r))
                .buffer_unordered(self.concurrency);
            loop {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => {
                        failure = Some(ElasticsearchError::ShuttingDown);
                        break;
                    }
                    next = running.next() => {
                        let Some(report) = next else { break };
                        for i in report.done {
                            done[i] = true;
                        }
                        if let Some(e) = report.error {
                            failure = Some(e);
                            break;
                        }
                    }
                }
            }
        }
        self.metrics
            .send_latency
            .observe(started.elapsed().as_secs_f64());
        let Some(error) = failure else { return Ok(()) };
        let accepted = done.iter().take_while(|d| **d).count();
        self.ctx
            .metrics
            .send_errors
            .with_label_values(&[KIND, &self.ctx.route, &self.ctx.sink, error.reason()])
            .inc();
        tracing::error!(
            route = %self.ctx.route,
            sink = %self.ctx.sink,
            reason = error.reason(),
            accepted,
            batch = batch.len(),
            "{error}"
        );
        Err(SendFailure {
            accepted,
            error: error.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AgentMetrics;
    use crate::route::document::{Compression, CredentialRef, ElasticsearchCredentials};
    use crate::sink::Credentials;

    fn build(
        endpoint: &str,
        index: &str,
        auth: bool,
    ) -> Result<ElasticsearchSink, ElasticsearchError> {
        build_with(endpoint, index, auth, |_| {})
    }

    fn build_with(
        endpoint: &str,
        index: &str,
        auth: bool,
        edit: impl FnOnce(&mut ElasticsearchConfig),
    ) -> Result<ElasticsearchSink, ElasticsearchError> {
        let mut cfg = ElasticsearchConfig {
            endpoints: vec![endpoint.into()],
            target: IndexTarget::DataStream(index.into()),
            auth: auth.then(|| ElasticsearchCredentials::ApiKey {
                key: CredentialRef {
                    key: "api-key".into(),
                },
            }),
            tls: None,
            max_events: 1000,
            max_bytes: 5 << 20,
            timeout_ms: 1000,
            compression: Compression::Gzip,
            request_timeout_ms: 30_000,
            max_concurrency: 2,
            egress: None,
        };
        edit(&mut cfg);
        let ctx = SinkContext {
            route: "ns/r".into(),
            sink: "s".into(),
            metrics: AgentMetrics::new(&prometheus::Registry::new()),
            credentials: Arc::new(Credentials::new()),
            node: "n".into(),
        };
        ElasticsearchSink::new(cfg, ctx)
    }

    #[test]
    fn configuration_is_checked_when_the_sink_is_built() {
        assert!(
            build(
                "http://127.0.0.1:9200",
                "logs-kubernetes-{namespace}",
                false
            )
            .is_ok()
        );
        let e = build("http://127.0.0.1:9200", "logs-{tenant}", false)
            .err()
            .map(|e| e.reason());
        assert_eq!(e, Some("invalid_config"));
        let e = build("tcp://es:9200", "logs", false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("http or https"), "{e}");
        let e = build("http://es:9200", "logs", true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("\"api-key\" is missing"), "{e}");
    }

    #[test]
    fn the_sink_is_small_enough_to_sit_in_an_enum() {
        assert_eq!(
            std::mem::size_of::<ElasticsearchSink>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn batching_follows_the_route_settings() {
        let sink = build_with("http://127.0.0.1:9200", "logs", false, |c| {
            c.max_events = 5000;
            c.max_bytes = 1 << 20;
            c.timeout_ms = 250;
            c.max_concurrency = 3;
        })
        .expect("valid");
        assert_eq!(
            sink.batching(),
            Batching {
                max_records: 15_000,
                max_bytes: 3 << 20,
                full_records: 5000,
                full_bytes: 1 << 20,
                linger: Duration::from_millis(250),
                step: 15_000,
            }
        );
    }
}
