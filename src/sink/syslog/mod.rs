//! Syslog sink: RFC 5424 / RFC 3164 over UDP, TCP or TLS (RFC 6587 framing), or RELP
//! (plain or over TLS).
//!
//! A batch is encoded into one buffer and written with as few system calls as the socket
//! allows. The connection is opened on the first send and again on the send after a
//! failure; the caller owns backoff and retry counting. What "accepted" means: for TCP and
//! TLS, every byte of the record's frame was handed to the kernel; for UDP, its datagram
//! was sent; for RELP, the receiver acknowledged it (see `relp`). See `encode` for the
//! wire format and `transport` for dead-peer detection.
//!
//! A receiver must accept messages of `maxMessageBytes` (default 65536 on TCP/TLS, 8192
//! on UDP): rsyslog's default `maxMessageSize` is 8 KiB, and its imtcp `maxFrameSize`
//! (200000 by default) must also be at least that large for octet-counted frames.

pub mod encode;
mod relp;
mod tls;
mod transport;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use tokio_util::sync::CancellationToken;

use encode::Encoder;
pub use encode::SD_ID;

use super::egress::EgressGuard;
use super::{SendFailure, SinkContext};
use crate::record::Record;
use crate::route::document::{RelpSettings, SyslogConfig, SyslogTransport};
use transport::{CONNECT_TIMEOUT, Connection, Protocol, Target};

/// RFC 5424 §6.1: every receiver must accept messages of 480 octets; smaller limits
/// cannot hold a header with structured data.
pub const MIN_MESSAGE_BYTES: u32 = 480;
/// Largest UDP message: what fits one IPv4 datagram with room to spare, as the LogRoute
/// API documents.
pub const MAX_UDP_MESSAGE_BYTES: u32 = 65000;

/// Errors of the syslog sink. Configuration errors come from [`SyslogSink::new`];
/// the others from a send, after which the connection is dropped and reopened on the next
/// send.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error(
        "syslog maxMessageBytes {limit} is outside {min}..={max} for {transport}; choose a size the receiver accepts"
    )]
    MessageLimit {
        limit: u32,
        min: u32,
        max: u32,
        transport: &'static str,
    },
    #[error("syslog {what} {value} is out of range (0..={max})")]
    OutOfRange {
        what: &'static str,
        value: u8,
        max: u8,
    },
    #[error(transparent)]
    Tls(#[from] crate::sink::tls::TlsError),
    #[error(
        "`{name}` is not a valid TLS server name; set tls.serverName to a DNS name or IP address in the receiver's certificate"
    )]
    ServerName { name: String },
    #[error("cannot resolve syslog receiver {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("cannot connect to syslog receiver {addr}: {source}; is it running and reachable?")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to syslog receiver {addr} took longer than {timeout:?}; is it reachable?")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error(
        "TLS handshake with syslog receiver {addr} (server name {server_name}) failed: {source}; check that tls.caSecretRef holds the CA that signed the receiver's certificate and that tls.serverName is a name in it"
    )]
    Handshake {
        addr: String,
        server_name: String,
        source: io::Error,
    },
    #[error("writing to syslog receiver {addr} failed: {source}; the connection will be reopened")]
    Write { addr: String, source: io::Error },
    #[error(
        "stopped connecting or waiting for answers from syslog receiver {addr}: the sink is shutting down"
    )]
    ShuttingDown { addr: String },
    #[error("not connecting to syslog receiver {addr}: {source}")]
    Egress {
        addr: String,
        source: crate::sink::egress::EgressRefused,
    },
    #[error(
        "RELP receiver {addr} refused the session: rsp {code} {text}; check the receiver's imrelp settings and its log"
    )]
    RelpRefused {
        addr: String,
        code: u16,
        text: String,
    },
    #[error(
        "RELP receiver {addr} does not offer the syslog command (offered: {offered}); is the address an imrelp listener?"
    )]
    RelpOffer { addr: String, offered: String },
    #[error(
        "RELP receiver {addr} answered rsp {code} {text}; the {unacked} unacknowledged messages are sent again after a backoff; the receiver's log says why it refused (a full queue, a message over its maxDataSize)"
    )]
    RelpRejected {
        addr: String,
        code: u16,
        text: String,
        unacked: usize,
    },
    #[error(
        "RELP receiver {addr} acknowledged none of {in_flight} messages within {timeout:?} (relp.ackTimeoutMs); they are sent again on a new connection; is the receiver overloaded or blocked on its output?"
    )]
    RelpStall {
        addr: String,
        in_flight: usize,
        timeout: Duration,
    },
    #[error(
        "RELP receiver {addr} closed the session (serverclose) with {unacked} messages unacknowledged; they are sent again on a new connection"
    )]
    RelpServerClose { addr: String, unacked: usize },
    #[error(
        "the RELP connection to {addr} ended with {unacked} messages unacknowledged ({source}); they are sent again on a new connection"
    )]
    RelpEnded {
        addr: String,
        unacked: usize,
        source: io::Error,
    },
    #[error(
        "RELP receiver {addr} broke the protocol: {detail}; is the address an imrelp listener?"
    )]
    RelpProtocol { addr: String, detail: String },
}

impl SyslogError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SyslogError::MessageLimit { .. }
            | SyslogError::OutOfRange { .. }
            | SyslogError::Tls(_)
            | SyslogError::ServerName { .. } => "config",
            SyslogError::Resolve { .. } => "resolve",
            SyslogError::Connect { .. } => "connect",
            SyslogError::ConnectTimeout { .. } => "timeout",
            SyslogError::Handshake { .. } => "tls",
            SyslogError::Write { .. } => "write",
            SyslogError::Egress { .. } => "egress_refused",
            SyslogError::ShuttingDown { .. } => "shutdown",
            SyslogError::RelpRefused { .. } | SyslogError::RelpOffer { .. } => "relp_refused",
            SyslogError::RelpRejected { .. } => "relp_rejected",
            SyslogError::RelpStall { .. } => "relp_stall",
            SyslogError::RelpServerClose { .. } => "relp_serverclose",
            SyslogError::RelpEnded { .. } => "relp_ended",
            SyslogError::RelpProtocol { .. } => "relp_protocol",
        }
    }
}

/// Metric handles of one sink, resolved once.
struct Metrics {
    ctx: SinkContext,
    sent: IntCounter,
    cut: IntCounter,
    reconnects: IntCounter,
    send_latency: Histogram,
    end_to_end: Histogram,
}

impl Metrics {
    fn new(ctx: SinkContext) -> Self {
        let m = &ctx.metrics;
        let labels = ["syslog", ctx.route.as_str(), ctx.sink.as_str()];
        Self {
            sent: m.records_sent.with_label_values(&labels),
            cut: m.records_cut.with_label_values(&labels),
            reconnects: m.sink_reconnects.with_label_values(&labels),
            send_latency: m.send_latency.with_label_values(&labels),
            end_to_end: m.end_to_end_latency.with_label_values(&labels),
            ctx,
        }
    }

    fn error(&self, e: &SyslogError) {
        let labels = [
            "syslog",
            self.ctx.route.as_str(),
            self.ctx.sink.as_str(),
            e.reason(),
        ];
        self.ctx
            .metrics
            .send_errors
            .with_label_values(&labels)
            .inc();
    }
}

pub struct SyslogSink {
    target: Target,
    encoder: Encoder,
    conn: Option<Connection>,
    /// Connections opened so far; all but the first count as reconnects.
    connections: u64,
    /// The encoded batch and where each frame ends (and whether it was cut).
    buf: Vec<u8>,
    ends: Vec<usize>,
    cut: Vec<bool>,
    metrics: Metrics,
    /// Cancelled when the worker stops: a connection attempt (nothing written yet) is
    /// given up at once; a write in progress finishes or fails on its own.
    shutdown: CancellationToken,
    /// Set for `transport: relp`.
    relp: Option<Relp>,
}

/// The RELP side of a sink: settings, the session, and what is owed a resend.
struct Relp {
    window: usize,
    ack_timeout: Duration,
    session: Option<relp::Session>,
    /// Leading records of the next send that went out on a session which ended before
    /// acknowledging them: the worker sends them again, and they count as resends.
    resend: usize,
    acks: IntCounter,
    resends: IntCounter,
    rtt: Histogram,
}

impl Relp {
    fn new(settings: &RelpSettings, ctx: &SinkContext) -> Self {
        let labels = [ctx.route.as_str(), ctx.sink.as_str()];
        let m = &ctx.metrics;
        Self {
            window: settings.window.max(1) as usize,
            ack_timeout: Duration::from_millis(u64::from(settings.ack_timeout_ms)),
            session: None,
            resend: 0,
            acks: m.relp_acks.with_label_values(&labels),
            resends: m.relp_resends.with_label_values(&labels),
            rtt: m.relp_ack_rtt.with_label_values(&labels),
        }
    }
}

/// Keep the batch buffer across sends unless one huge batch blew it up.
const RETAINED_BUFFER_BYTES: usize = 4 << 20;

impl SyslogSink {
    /// Validate the configuration and build the TLS client; no network I/O.
    pub fn new(cfg: SyslogConfig, ctx: SinkContext) -> Result<Self, SyslogError> {
        let max = match cfg.transport {
            SyslogTransport::Udp => MAX_UDP_MESSAGE_BYTES,
            SyslogTransport::Tcp | SyslogTransport::Tls | SyslogTransport::Relp => u32::MAX,
        };
        if !(MIN_MESSAGE_BYTES..=max).contains(&cfg.max_message_bytes) {
            return Err(SyslogError::MessageLimit {
                limit: cfg.max_message_bytes,
                min: MIN_MESSAGE_BYTES,
                max,
                transport: transport_name(cfg.transport),
            });
        }
        if cfg.facility > 23 {
            return Err(SyslogError::OutOfRange {
                what: "facility",
                value: cfg.facility,
                max: 23,
            });
        }
        if let Some(severity) = cfg.severity.filter(|&s| s > 7) {
            return Err(SyslogError::OutOfRange {
                what: "severity",
                value: severity,
                max: 7,
            });
        }
        let protocol = match (cfg.transport, &cfg.tls) {
            (SyslogTransport::Udp, _) => Protocol::Udp,
            (SyslogTransport::Tcp, _) | (SyslogTransport::Relp, None) => Protocol::Tcp,
            (SyslogTransport::Tls, _) | (SyslogTransport::Relp, Some(_)) => {
                let settings = cfg.tls.clone().unwrap_or_default();
                Protocol::Tls(tls::client(&settings, &ctx.credentials, &cfg.host)?)
            }
        };
        let relp = match cfg.transport {
            SyslogTransport::Relp => Some(Relp::new(
                &cfg.relp.clone().unwrap_or(RelpSettings {
                    window: 128,
                    ack_timeout_ms: 30_000,
                }),
                &ctx,
            )),
            _ => None,
        };
        let display = if cfg.host.contains(':') {
            format!("[{}]:{}", cfg.host, cfg.port)
        } else {
            format!("{}:{}", cfg.host, cfg.port)
        };
        Ok(Self {
            target: Target {
                host: cfg.host.clone(),
                port: cfg.port,
                protocol,
                display,
                egress: EgressGuard::new(cfg.egress.as_ref(), "syslog", &ctx),
            },
            encoder: Encoder::new(&cfg, &ctx.node),
            conn: None,
            connections: 0,
            buf: Vec::new(),
            ends: Vec::new(),
            cut: Vec::new(),
            metrics: Metrics::new(ctx),
            shutdown: CancellationToken::new(),
            relp,
        })
    }

    /// How the worker should hand records over: for RELP, a window per send, so the
    /// checkpoint advances as each window is acknowledged.
    pub fn batching(&self) -> crate::sink::worker::Batching {
        let mut b = crate::sink::worker::Batching::IMMEDIATE;
        if let Some(relp) = &self.relp {
            b.step = relp.window;
        }
        b
    }

    pub fn set_shutdown(&mut self, token: CancellationToken) {
        self.shutdown = token;
    }

    /// Send a batch. On failure the first `accepted` records were written whole; the
    /// connection is dropped and the next send opens a new one.
    pub async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), SendFailure> {
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = if self.relp.is_some() {
            self.deliver_relp(batch).await
        } else {
            self.encode(batch);
            self.deliver().await
        };
        let accepted = match &result {
            Ok(()) => batch.len(),
            Err((accepted, _)) => *accepted,
        };
        self.account(&batch[..accepted], started, result.is_ok());
        if self.buf.capacity() > RETAINED_BUFFER_BYTES {
            self.buf = Vec::new();
        }
        result.map_err(|(accepted, error)| {
            self.metrics.error(&error);
            SendFailure {
                accepted,
                error: error.into(),
            }
        })
    }

    fn encode(&mut self, batch: &[Arc<Record>]) {
        self.buf.clear();
        self.ends.clear();
        self.cut.clear();
        for record in batch {
            let cut = self.encoder.encode(record, &mut self.buf);
            self.ends.push(self.buf.len());
            self.cut.push(cut);
        }
    }

    /// RELP frames (`TXNR syslog LEN MSG LF`, the octet-counted message inside),
    /// numbered from `txnr`.
    fn encode_relp(&mut self, batch: &[Arc<Record>], mut txnr: u32) {
        self.buf.clear();
        self.ends.clear();
        self.cut.clear();
        for record in batch {
            relp::frame::push_head(&mut self.buf, txnr, "syslog");
            let cut = self.encoder.encode(record, &mut self.buf);
            relp::frame::push_trailer(&mut self.buf);
            self.ends.push(self.buf.len());
            self.cut.push(cut);
            txnr = relp::frame::next_txnr(txnr);
        }
    }

    /// Send over RELP and wait for the acknowledgements; accepted is what was
    /// acknowledged. A session that was idle and turns out to have ended before
    /// acknowledging anything (the receiver restarted meanwhile) is replaced at once,
    /// without a failure and its backoff.
    async fn deliver_relp(&mut self, batch: &[Arc<Record>]) -> Result<(), (usize, SyslogError)> {
        for attempt in 0..2 {
            let relp = self.relp.as_mut().expect("relp sink");
            // Taken out, as in `deliver`: a dropped future takes the session along.
            let idle = relp.session.take();
            let (mut session, reused) = match idle.and_then(|mut s| s.looks_open().then_some(s)) {
                Some(s) => (s, true),
                None => (self.open_relp().await.map_err(|e| (0, e))?, false),
            };
            self.encode_relp(batch, session.next_txnr());
            let relp = self.relp.as_mut().expect("relp sink");
            relp.resends.inc_by(relp.resend.min(batch.len()) as u64);
            relp.resend = 0;
            let (window, timeout) = (relp.window, relp.ack_timeout);
            let result = session
                .exchange(
                    &self.buf,
                    &self.ends,
                    window,
                    timeout,
                    &relp.rtt,
                    &self.shutdown,
                )
                .await;
            match result {
                Ok(()) => {
                    relp.acks.inc_by(batch.len() as u64);
                    relp.session = Some(session);
                    return Ok(());
                }
                Err(f) => {
                    relp.acks.inc_by(f.acked as u64);
                    relp.resend = f.written - f.acked;
                    if attempt == 0 && reused && f.acked == 0 && f.ended() {
                        tracing::debug!(receiver = %self.target.display, error = %f.error, "idle RELP session had ended; opening a new one");
                        continue;
                    }
                    return Err((f.acked, f.error));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    async fn open_relp(&mut self) -> Result<relp::Session, SyslogError> {
        let addr = self.target.display.clone();
        let timeout = self
            .relp
            .as_ref()
            .map_or(CONNECT_TIMEOUT, |r| r.ack_timeout);
        let conn = tokio::select! {
            conn = Connection::open(&self.target) => conn?,
            () = self.shutdown.cancelled() => {
                return Err(SyslogError::ShuttingDown { addr });
            }
        };
        self.connections += 1;
        if self.connections > 1 {
            self.metrics.reconnects.inc();
        }
        let io = conn.into_io().expect("RELP runs over a stream connection");
        let session = relp::Session::open(io, &addr, timeout).await?;
        tracing::debug!(receiver = %addr, connections = self.connections, "RELP session opened");
        Ok(session)
    }

    async fn deliver(&mut self) -> Result<(), (usize, SyslogError)> {
        // Taken out for the write: if the caller drops this future half-way, the
        // connection (and its half-written frame) goes with it.
        let open = self
            .conn
            .take()
            .and_then(|mut conn| conn.peer_is_open().then_some(conn));
        let mut conn = match open {
            Some(conn) => conn,
            None => {
                let conn = tokio::select! {
                    conn = Connection::open(&self.target) => conn.map_err(|e| (0, e))?,
                    () = self.shutdown.cancelled() => {
                        return Err((0, SyslogError::ShuttingDown { addr: self.target.display.clone() }));
                    }
                };
                self.connections += 1;
                if self.connections > 1 {
                    self.metrics.reconnects.inc();
                }
                tracing::debug!(receiver = %self.target.display, connections = self.connections, "syslog connection opened");
                conn
            }
        };
        match conn.write_frames(&self.buf, &self.ends).await {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err((accepted, source)) => Err((
                accepted,
                SyslogError::Write {
                    addr: self.target.display.clone(),
                    source,
                },
            )),
        }
    }

    fn account(&self, accepted: &[Arc<Record>], started: Instant, whole_batch: bool) {
        let m = &self.metrics;
        m.sent.inc_by(accepted.len() as u64);
        m.cut
            .inc_by(self.cut[..accepted.len()].iter().filter(|&&c| c).count() as u64);
        let now = crate::record::Timestamp::now();
        for record in accepted {
            m.end_to_end.observe(record.timestamp.seconds_until(now));
        }
        if whole_batch {
            m.send_latency.observe(started.elapsed().as_secs_f64());
        }
    }
}

fn transport_name(t: SyslogTransport) -> &'static str {
    match t {
        SyslogTransport::Udp => "udp",
        SyslogTransport::Tcp => "tcp",
        SyslogTransport::Tls => "tls",
        SyslogTransport::Relp => "relp",
    }
}
