//! Every metric a logroute process exports, in one registry per process.
//!
//! Label values are always bounded: route keys (`namespace/name`, one per LogRoute), sink
//! names and kinds, streams, and `&'static str` reasons. Never pod names, container ids or
//! message text.

use std::collections::HashMap;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 1 ms to ~30 s.
/// Round trips on a LAN or loopback are well under a millisecond.
const RTT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn plain_counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    reg.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// Add the process's CPU, memory and file descriptor metrics (`process_*`, Linux) to
/// `reg`; a registry that has them already keeps them.
fn process_metrics(reg: &Registry) {
    let _ = reg.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
}

/// Metrics of the controller.
#[derive(Clone)]
pub struct ControllerMetrics {
    /// `result`: `ready`, `invalid`, `error`, `deleted`.
    pub reconciliations: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    /// `ready`: `true` / `false`.
    pub routes: IntGaugeVec,
    /// Agent health report polls; `result`: `ok`, `version`, `request`, `status`,
    /// `timeout`, `parse`.
    pub agent_reports: IntCounterVec,
    /// Nodes whose agent report counts in route health now.
    pub agents_reporting: IntGauge,
    /// 1 while this replica leads (reconciles), else 0.
    pub leader: IntGauge,
    /// LogRoute status writes made for delivery health.
    pub health_writes: IntCounter,
}

impl ControllerMetrics {
    pub fn new(reg: &Registry) -> Self {
        process_metrics(reg);
        Self {
            reconciliations: counter(
                reg,
                "logroute_controller_reconciliations_total",
                "LogRoute reconciliations by result",
                &["result"],
            ),
            reconcile_duration: histogram(
                reg,
                "logroute_controller_reconcile_duration_seconds",
                "Time spent reconciling one LogRoute",
                &[],
                LATENCY_BUCKETS,
            ),
            routes: gauge(
                reg,
                "logroute_controller_routes",
                "LogRoutes by Ready condition",
                &["ready"],
            ),
            agent_reports: counter(
                reg,
                "logroute_controller_agent_reports_total",
                "Polls of agents' route health reports by result",
                &["result"],
            ),
            agents_reporting: {
                let g = IntGauge::new(
                    "logroute_controller_agents_reporting",
                    "Nodes whose agent report counts in route health",
                )
                .expect("valid metric");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            leader: {
                let g = IntGauge::new(
                    "logroute_controller_leader",
                    "1 while this controller replica holds the leader Lease and reconciles",
                )
                .expect("valid metric");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            health_writes: plain_counter(
                reg,
                "logroute_controller_health_status_writes_total",
                "LogRoute status writes for delivery health",
            ),
        }
    }
}

/// Metrics of the node agent and its sinks.
#[derive(Clone)]
pub struct AgentMetrics {
    /// 1 once routes and pods are synced and containers are read (`/readyz`), else 0.
    pub ready: IntGauge,
    pub containers_followed: IntGauge,
    /// `stream`.
    pub records_read: IntCounterVec,
    /// `stream`.
    pub bytes_read: IntCounterVec,
    /// Lines longer than the agent's limit, cut and marked.
    pub lines_truncated: IntCounter,
    /// `route`, `sink`.
    pub records_routed: IntCounterVec,
    /// `route`, `reason` (`include`, `exclude`, `stream`).
    pub records_filtered: IntCounterVec,
    /// `route`, `sink`, `reason`: `rejected` (permanently refused by the sink),
    /// `rotated` (lines Docker rotated away before a lagging sink caught up, counted in
    /// lines), `removed` (the container was removed before a lagging sink caught up).
    pub records_dropped: IntCounterVec,
    /// `reason`: `withdrawn` (lines of a container that a route had taken, not sent
    /// because the route went away and did not come back within the grace period: read
    /// while it was gone, or taken and not yet accepted by the sink when it went).
    pub records_unresumed: IntCounterVec,
    /// `kind`, `route`, `sink`.
    pub records_sent: IntCounterVec,
    /// `kind`, `route`, `sink`, `reason`.
    pub send_errors: IntCounterVec,
    /// `kind`, `route`, `sink`.
    pub send_retries: IntCounterVec,
    /// `kind`, `route`, `sink`: messages cut to the sink's size limit.
    pub records_cut: IntCounterVec,
    /// `kind`, `route`, `sink`.
    pub sink_reconnects: IntCounterVec,
    /// `kind`, `route`, `sink`, `rule`: resolved addresses a sink did not connect to
    /// because the operator's egress policy refuses them (`rule`: the policy's rule name
    /// or a `builtin:` one; bounded by the policy).
    pub egress_refused: IntCounterVec,
    /// `route`, `sink`.
    pub queue_depth: IntGaugeVec,
    /// `route`, `sink`: bytes of records waiting in a sink queue or in the batch being
    /// sent (bounded by the queue's share of `--queue-bytes`).
    pub queue_bytes: IntGaugeVec,
    /// `route`, `sink`: seconds the sink is behind, the worst of its containers: newest
    /// line read from the container minus newest record the sink accepted.
    pub sink_lag_seconds: GaugeVec,
    /// `route`, `sink`: (container, sink) lanes that fell behind the shared reader and
    /// read on their own from Docker.
    pub lanes_detached: IntGaugeVec,
    /// Docker log streams opened to catch a lagging lane up.
    pub catchup_streams: IntGauge,
    /// Sink worker tasks running: one per (route, sink) in force, plus workers of
    /// replaced or removed routes until they have stopped.
    pub sink_workers: IntGauge,
    /// Bytes in spill files (lines lagging lanes missed, kept on disk; `--spill-bytes`).
    pub spill_bytes: IntGauge,
    /// Lines written to spill files, and read back by catch-ups.
    pub spill_lines_written: IntCounter,
    pub spill_lines_read: IntCounter,
    /// `kind`, `route`, `sink`: one send (a batch) from start to acceptance.
    pub send_latency: HistogramVec,
    /// `kind`, `route`, `sink`: Docker timestamp → accepted by the sink.
    pub end_to_end_latency: HistogramVec,
    pub docker_reconnects: IntCounter,
    /// Loaded routes; `state`: `active`, `rejected`.
    pub routes_loaded: IntGaugeVec,
    /// Elasticsearch bulk documents; `route`, `sink`, `result` (`created`, `indexed`,
    /// `rejected`, `retried`).
    pub es_documents: IntCounterVec,
    /// RELP messages the receiver acknowledged (`rsp 200`); `route`, `sink`.
    pub relp_acks: IntCounterVec,
    /// RELP messages sent again because the connection they went out on ended before
    /// the receiver acknowledged them; `route`, `sink`.
    pub relp_resends: IntCounterVec,
    /// RELP round-trip time: a message written to its `rsp`; `route`, `sink`.
    pub relp_ack_rtt: HistogramVec,
    /// `route`, `sink`.
    pub es_bulk_duration: HistogramVec,
    /// `route`, `sink`: documents per bulk request.
    pub es_batch_size: HistogramVec,
}

impl AgentMetrics {
    pub fn new(reg: &Registry) -> Self {
        let sink = &["kind", "route", "sink"];
        let sink_reason = &["kind", "route", "sink", "reason"];
        process_metrics(reg);
        Self {
            ready: {
                let g = IntGauge::new(
                    "logroute_agent_ready",
                    "1 when the agent is ready (routes and pods synced, containers read), else 0",
                )
                .expect("valid metric");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            containers_followed: {
                let g = IntGauge::new(
                    "logroute_agent_containers_followed",
                    "Containers whose logs are being read",
                )
                .expect("valid metric");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            records_read: counter(
                reg,
                "logroute_agent_records_read_total",
                "Log records read from Docker",
                &["stream"],
            ),
            bytes_read: counter(
                reg,
                "logroute_agent_bytes_read_total",
                "Message bytes read from Docker",
                &["stream"],
            ),
            lines_truncated: {
                let c = IntCounter::new(
                    "logroute_agent_lines_truncated_total",
                    "Lines longer than --max-line-bytes, cut and marked",
                )
                .expect("valid metric");
                reg.register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            records_routed: counter(
                reg,
                "logroute_agent_records_routed_total",
                "Records queued for a sink of a route",
                &["route", "sink"],
            ),
            records_filtered: counter(
                reg,
                "logroute_agent_records_filtered_total",
                "Records of a matched container that a route's filter left out",
                &["route", "reason"],
            ),
            records_dropped: counter(
                reg,
                "logroute_agent_records_dropped_total",
                "Records that will never reach a sink, by reason",
                &["route", "sink", "reason"],
            ),
            records_unresumed: counter(
                reg,
                "logroute_agent_records_unresumed_total",
                "Lines of a container a route had taken, not sent because the route went away and did not come back within the grace period (read while it was gone, or not yet accepted when it went)",
                &["reason"],
            ),
            records_sent: counter(
                reg,
                "logroute_agent_records_sent_total",
                "Records accepted by a sink",
                sink,
            ),
            egress_refused: counter(
                reg,
                "logroute_agent_egress_refused_total",
                "Resolved sink addresses not connected to because the egress policy refuses them",
                &["kind", "route", "sink", "rule"],
            ),
            send_errors: counter(
                reg,
                "logroute_agent_send_errors_total",
                "Failed send attempts",
                sink_reason,
            ),
            send_retries: counter(
                reg,
                "logroute_agent_send_retries_total",
                "Retried sends",
                sink,
            ),
            records_cut: counter(
                reg,
                "logroute_agent_records_cut_total",
                "Records cut to the sink's maximum message size",
                sink,
            ),
            sink_reconnects: counter(
                reg,
                "logroute_agent_sink_reconnects_total",
                "Connections (re)opened to a sink after the first",
                sink,
            ),
            queue_depth: gauge(
                reg,
                "logroute_agent_queue_depth",
                "Records waiting in a sink queue",
                &["route", "sink"],
            ),
            queue_bytes: gauge(
                reg,
                "logroute_agent_queue_bytes",
                "Bytes of records waiting in a sink queue or in the batch being sent",
                &["route", "sink"],
            ),
            sink_lag_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "logroute_agent_sink_lag_seconds",
                        "How far a sink is behind its containers' logs (worst container)",
                    ),
                    &["route", "sink"],
                )
                .expect("valid metric");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            lanes_detached: gauge(
                reg,
                "logroute_agent_lanes_detached",
                "Container lanes of a sink that fell behind and catch up on their own Docker stream",
                &["route", "sink"],
            ),
            spill_bytes: {
                let g = IntGauge::new(
                    "logroute_agent_spill_bytes",
                    "Bytes in spill files: lines lagging sinks missed, kept on disk",
                )
                .expect("valid metric");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            spill_lines_written: plain_counter(
                reg,
                "logroute_agent_spill_lines_written_total",
                "Lines written to spill files for lagging sinks",
            ),
            spill_lines_read: plain_counter(
                reg,
                "logroute_agent_spill_lines_read_total",
                "Lines read back from spill files by catch-ups",
            ),
            sink_workers: {
                let g = IntGauge::new(
                    "logroute_agent_sink_workers",
                    "Sink worker tasks running (one per route and sink in force, plus stopping ones)",
                )
                .expect("valid metric");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            catchup_streams: {
                let g = IntGauge::new(
                    "logroute_agent_catchup_streams",
                    "Docker log streams open to catch lagging sinks up",
                )
                .expect("valid metric");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            send_latency: histogram(
                reg,
                "logroute_agent_send_latency_seconds",
                "Time for one send to a sink",
                sink,
                LATENCY_BUCKETS,
            ),
            end_to_end_latency: histogram(
                reg,
                "logroute_agent_end_to_end_latency_seconds",
                "Docker record timestamp to acceptance by the sink",
                sink,
                LATENCY_BUCKETS,
            ),
            docker_reconnects: {
                let c = IntCounter::new(
                    "logroute_agent_docker_reconnects_total",
                    "Reconnections to the Docker daemon",
                )
                .expect("valid metric");
                reg.register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            routes_loaded: gauge(
                reg,
                "logroute_agent_routes",
                "Routes known to the agent",
                &["state"],
            ),
            es_documents: counter(
                reg,
                "logroute_agent_elasticsearch_documents_total",
                "Bulk item outcomes",
                &["route", "sink", "result"],
            ),
            relp_acks: counter(
                reg,
                "logroute_agent_relp_acks_total",
                "RELP messages acknowledged by the receiver",
                &["route", "sink"],
            ),
            relp_resends: counter(
                reg,
                "logroute_agent_relp_resends_total",
                "RELP messages sent again after their connection ended unacknowledged",
                &["route", "sink"],
            ),
            relp_ack_rtt: histogram(
                reg,
                "logroute_agent_relp_ack_rtt_seconds",
                "Time from writing a RELP message to its acknowledgement",
                &["route", "sink"],
                RTT_BUCKETS,
            ),
            es_bulk_duration: histogram(
                reg,
                "logroute_agent_elasticsearch_bulk_duration_seconds",
                "Duration of one _bulk request",
                &["route", "sink"],
                LATENCY_BUCKETS,
            ),
            es_batch_size: histogram(
                reg,
                "logroute_agent_elasticsearch_batch_documents",
                "Documents per _bulk request",
                &["route", "sink"],
                &[
                    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                ],
            ),
        }
    }
}

/// Render a registry in the Prometheus text format.
impl AgentMetrics {
    /// Remove every series labelled with `route`: a deleted route leaves no series
    /// behind, so the exposition follows the routes in force, not every route ever seen.
    pub fn forget_route(&self, route: &str) {
        forget(&self.records_routed, route);
        forget(&self.records_filtered, route);
        forget(&self.records_dropped, route);
        forget(&self.records_sent, route);
        forget(&self.send_errors, route);
        forget(&self.send_retries, route);
        forget(&self.records_cut, route);
        forget(&self.sink_reconnects, route);
        forget(&self.queue_depth, route);
        forget(&self.queue_bytes, route);
        forget(&self.sink_lag_seconds, route);
        forget(&self.lanes_detached, route);
        forget(&self.send_latency, route);
        forget(&self.end_to_end_latency, route);
        forget(&self.es_documents, route);
        forget(&self.es_bulk_duration, route);
        forget(&self.es_batch_size, route);
        forget(&self.relp_acks, route);
        forget(&self.relp_resends, route);
        forget(&self.relp_ack_rtt, route);
    }
}

/// Remove the series of `vec` whose `route` label is `route`.
fn forget<T: MetricVecBuilder>(vec: &MetricVec<T>, route: &str) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("route") == Some(&route) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

pub fn render(reg: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&reg.gather(), &mut buf)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}
