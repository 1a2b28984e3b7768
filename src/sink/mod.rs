//! Sinks: where records go. Each (route, sink) pair gets its own client and queue.

pub mod egress;
pub mod elasticsearch;
pub mod stdout;
pub mod syslog;
pub mod tls;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::metrics::AgentMetrics;
use crate::record::{LogPosition, Record};
use crate::route::document::{CompiledSink, SinkConfig};

/// Resolved credentials of a route, keyed by `CredentialRef::key`.
pub type Credentials = BTreeMap<String, Vec<u8>>;

/// What a sink client needs besides its configuration.
#[derive(Clone)]
pub struct SinkContext {
    /// Route key `namespace/name` (metric label).
    pub route: String,
    /// Sink name within the route (metric label).
    pub sink: String,
    pub metrics: AgentMetrics,
    pub credentials: Arc<Credentials>,
    /// Node or host name, for syslog HOSTNAME and document fields.
    pub node: String,
}

/// A failed send: the first `accepted` records of the batch were accepted (or
/// permanently rejected and counted); the rest must be sent again after a backoff.
#[derive(Debug)]
pub struct SendFailure {
    pub accepted: usize,
    pub error: SinkError,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Syslog(#[from] syslog::SyslogError),
    #[error(transparent)]
    Elasticsearch(#[from] elasticsearch::ElasticsearchError),
    #[error("writing to standard output failed: {0}")]
    Stdout(std::io::Error),
}

impl SinkError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::Syslog(e) => e.reason(),
            SinkError::Elasticsearch(e) => e.reason(),
            SinkError::Stdout(_) => "io",
        }
    }
}

/// A connected (or lazily connecting) sink client.
///
/// One lives in each sink worker for the worker's whole life and is never moved on the
/// hot path, so the variants' differing sizes cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum SinkClient {
    Stdout(stdout::StdoutSink),
    Syslog(syslog::SyslogSink),
    Elasticsearch(elasticsearch::ElasticsearchSink),
}

impl SinkClient {
    /// Build a client; no I/O happens until the first send.
    pub fn new(sink: &CompiledSink, ctx: SinkContext) -> Result<Self, SinkError> {
        Ok(match &sink.config {
            SinkConfig::Stdout(_) => SinkClient::Stdout(stdout::StdoutSink::new(ctx)),
            SinkConfig::Syslog(cfg) => {
                SinkClient::Syslog(syslog::SyslogSink::new(cfg.clone(), ctx)?)
            }
            SinkConfig::Elasticsearch(cfg) => {
                SinkClient::Elasticsearch(elasticsearch::ElasticsearchSink::new(cfg.clone(), ctx)?)
            }
        })
    }

    /// Cancelling `token` makes a send that is waiting (on a connection, a request or a
    /// backoff) give up at once and report what was accepted so far. A syslog write in
    /// progress is not cut: it ends on its own write timeout, so no half frame is sent.
    pub fn set_shutdown(&mut self, token: tokio_util::sync::CancellationToken) {
        match self {
            SinkClient::Elasticsearch(s) => s.set_shutdown(token),
            SinkClient::Syslog(s) => s.set_shutdown(token),
            SinkClient::Stdout(_) => {}
        }
    }

    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkClient::Stdout(_) => "stdout",
            SinkClient::Syslog(_) => "syslog",
            SinkClient::Elasticsearch(_) => "elasticsearch",
        }
    }

    /// Deliver a batch; `positions[i]` is where `batch[i]` ends in its container's log
    /// (a sink that deduplicates identifies records by it). `Ok` means every record was
    /// accepted or permanently rejected (and counted); see [`SendFailure`] for the rest.
    pub async fn send(
        &mut self,
        batch: &[Arc<Record>],
        positions: &[LogPosition],
    ) -> Result<(), SendFailure> {
        match self {
            SinkClient::Stdout(s) => s.send(batch).await,
            SinkClient::Syslog(s) => s.send(batch).await,
            SinkClient::Elasticsearch(s) => s.send(batch, positions).await,
        }
    }

    /// How the worker gathers records into sends for this sink.
    pub fn batching(&self) -> worker::Batching {
        match self {
            SinkClient::Elasticsearch(s) => s.batching(),
            SinkClient::Syslog(s) => s.batching(),
            SinkClient::Stdout(_) => worker::Batching::IMMEDIATE,
        }
    }

    /// A record's weight against [`worker::Batching::max_bytes`].
    pub fn weigh(&mut self, record: &Arc<Record>) -> usize {
        match self {
            SinkClient::Elasticsearch(s) => s.weigh(record),
            SinkClient::Syslog(_) | SinkClient::Stdout(_) => record.message.len(),
        }
    }
}
