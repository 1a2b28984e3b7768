//! The `LogRoute` custom resource (group `logroute.dev`, version `v1alpha1`) and the
//! constants every part of logroute agrees on.
//!
//! The doc comments on the spec types become the CRD's `kubectl explain` text, so they
//! are written for the person writing a LogRoute, not for the Rust reader.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, Time,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every logroute resource.
pub const GROUP: &str = "logroute.dev";
/// Finalizer the controller puts on each LogRoute so its compiled objects are removed.
pub const FINALIZER: &str = "logroute.dev/cleanup";
/// Label on compiled ConfigMaps/Secrets: `<namespace>.<name>` of the LogRoute they came from.
pub const ROUTE_LABEL: &str = "logroute.dev/route";
/// Label on compiled objects naming the component that manages them.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on compiled objects.
pub const MANAGED_BY: &str = "logroute-controller";
/// Annotations on compiled objects pointing back to the LogRoute (namespace, name, uid).
pub const SOURCE_NAMESPACE_ANNOTATION: &str = "logroute.dev/source-namespace";
pub const SOURCE_NAME_ANNOTATION: &str = "logroute.dev/source-name";
pub const SOURCE_UID_ANNOTATION: &str = "logroute.dev/source-uid";
/// Key of the compiled route document inside the ConfigMap.
pub const ROUTE_DOCUMENT_KEY: &str = "route.json";
/// Field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "logroute-controller";
/// Label a tenant puts on a Secret to let LogRoutes use it (value `true`). The controller
/// reads and watches only Secrets carrying it, so a LogRoute cannot ship an arbitrary
/// Secret of its namespace (a ServiceAccount token, another app's password) to a server
/// of its author's choice.
pub const CREDENTIALS_LABEL: &str = "logroute.dev/credentials";
/// [`CREDENTIALS_LABEL`] as a label selector.
pub const CREDENTIALS_SELECTOR: &str = "logroute.dev/credentials=true";
/// Pod annotation / container label that opts a workload out of log forwarding.
pub const EXCLUDE_KEY: &str = "logroute.dev/exclude";

/// A LogRoute selects container logs and names the sinks they are forwarded to.
///
/// A LogRoute sees only pods of its own namespace. LogRoutes in the operator's namespace
/// may additionally select other namespaces (`selector.namespaceSelector`) and non-pod
/// Docker containers (`selector.hostContainers`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "logroute.dev",
    version = "v1alpha1",
    kind = "LogRoute",
    plural = "logroutes",
    shortname = "lr",
    namespaced,
    status = "LogRouteStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Delivering","type":"string","jsonPath":".status.conditions[?(@.type==\"Delivering\")].status"}"#,
    printcolumn = r#"{"name":"Sinks","type":"string","jsonPath":".status.health.sinksDelivering"}"#,
    printcolumn = r#"{"name":"Lag","type":"string","jsonPath":".status.health.lag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Delivery","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Delivering\")].reason"}"#,
    printcolumn = r#"{"name":"Targets","type":"string","priority":1,"jsonPath":".status.sinks"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = no_null_in_enums)]
pub struct LogRouteSpec {
    /// Which containers' logs this route takes. Empty selects every container of the
    /// LogRoute's namespace.
    #[serde(default)]
    pub selector: Selector,
    /// Regular expressions applied to each message after multiline joining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Join lines into one record (stack traces). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<Multiline>,
    /// Where matching records go. At least one; names unique within the route.
    pub sinks: Vec<Sink>,
}

/// Container selection. All given criteria must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// Pod labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Pod label requirements (operators In, NotIn, Exists, DoesNotExist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
    /// Container names (as in the pod spec). Empty means every container of the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Output streams to take: `stdout`, `stderr`. Empty means both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamName>,
    /// Namespaces whose pods this route also sees, by namespace labels; `{}` means every
    /// namespace. Only honoured for LogRoutes in the operator's namespace; elsewhere the
    /// route is refused (Forbidden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Non-pod Docker containers (not started by Kubernetes) to take, by Docker name or
    /// label. Only allowed in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_containers: Option<HostContainers>,
}

/// Docker containers outside Kubernetes, chosen by name and/or label. `{}` selects all.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostContainers {
    /// Exact Docker container names (without the leading `/`). Empty means any name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Docker labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// A container output stream.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
}

impl StreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// Message filters. A record is forwarded when it matches `include` (if set) and does not
/// match `exclude` (if set). Patterns use Rust regex syntax (RE2-like, linear time).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Forward only records whose message matches this pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
    /// Drop records whose message matches this pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
}

/// Multiline joining: a line matching `start` begins a new record; other lines are
/// appended to the current one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Multiline {
    /// Pattern that marks the first line of a record, e.g. `^\S`.
    pub start: String,
    /// Most lines in one record (1–10000, default 500); a longer run is split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lines: Option<u32>,
    /// Emit a pending record after this many milliseconds without a new line
    /// (10–60000, default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

/// One destination. Set exactly one of `syslog`, `elasticsearch`, `stdout`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sink {
    /// Name of the sink, unique in this route (DNS label: lowercase letters, digits, `-`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elasticsearch: Option<ElasticsearchSink>,
    /// Print each record as one JSON line on the agent's standard output (debugging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<StdoutSink>,
}

/// Forward to a syslog receiver.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyslogSink {
    /// `host:port` of the receiver (IPv6 as `[addr]:port`).
    pub address: String,
    /// `udp`, `tcp` (default), `tls` or `relp` (RELP: every message acknowledged by the
    /// receiver; see `relp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<SyslogTransport>,
    /// `rfc5424` (default) or `rfc3164`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SyslogFormat>,
    /// Stream framing for tcp/tls: `octet-counting` (default, RFC 6587) or `newline`.
    /// Not for relp, which frames every message itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framing: Option<SyslogFraming>,
    /// Facility name (`kern`..`local7`), default `local0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<String>,
    /// Fixed severity name (`emerg`..`debug`); by default stderr is `err`, stdout `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Largest message sent, in bytes, header included (default 65536 for tcp/tls, 8192
    /// for udp; at most 65000 for udp). Longer records are cut, marked and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u32>,
    /// TLS settings for `transport: tls`, and for `transport: relp` with `relp.tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// RELP settings, for `transport: relp` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relp: Option<RelpConfig>,
}

/// RELP (rsyslog's Reliable Event Logging Protocol, imrelp): the receiver acknowledges
/// each message, and the agent's checkpoint advances only past acknowledged ones.
/// Messages unacknowledged when a connection ends are sent again on the next one
/// (at least once: a receiver that took a message but died before acknowledging it gets
/// it twice).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelpConfig {
    /// RELP over TLS (imrelp `tls="on"`), verified and authenticated with the `tls`
    /// settings (CA and client certificate Secrets as for `transport: tls`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// Messages sent and not yet acknowledged, at most (1–1024, default 128; rsyslog's
    /// omrelp uses 128). A larger window hides more round-trip time; a receiver that
    /// crashes may get up to this many messages twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// How long to wait for an acknowledgement before the connection is given up as
    /// stalled and its unacknowledged messages are sent again on a new one, in
    /// milliseconds (1000–300000, default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    Udp,
    Tcp,
    Tls,
    Relp,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    Rfc5424,
    Rfc3164,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SyslogFraming {
    OctetCounting,
    Newline,
}

/// TLS client settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM CA bundle to trust instead of the system roots (a key of a Secret in this
    /// LogRoute's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate for mutual TLS: a `kubernetes.io/tls` Secret (keys `tls.crt`,
    /// `tls.key`) in this LogRoute's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretRef>,
    /// Name expected in the server's certificate; defaults to the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Skip certificate verification. Never use outside tests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A Secret in the LogRoute's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    pub name: String,
    /// Must be empty or the LogRoute's own namespace; other namespaces are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One key of a Secret in the LogRoute's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key within the Secret's data.
    pub key: String,
    /// Must be empty or the LogRoute's own namespace; other namespaces are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Index into Elasticsearch (or OpenSearch) with the `_bulk` API.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElasticsearchSink {
    /// Base URLs (`http://` or `https://`), tried in order with failover.
    pub endpoints: Vec<String>,
    /// Index name template: `{namespace}`, `{pod}`, `{container}`, `{node}` and strftime
    /// date patterns (`%Y.%m.%d`, UTC). Default `logroute-%Y.%m.%d`. Exclusive with
    /// `dataStream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// Write to a data stream `<type>-<dataset>-<namespace>` with `op_type: create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_stream: Option<DataStream>,
    /// Credentials, from Secrets in this LogRoute's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ElasticsearchAuth>,
    /// TLS settings for `https://` endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Batching limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// `gzip` to compress request bodies, `none` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Per-request timeout in milliseconds (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u32>,
    /// Bulk requests in flight at once (1–64, default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// Data stream naming: `<type>-<dataset>-<namespace>`; `{namespace}` etc. allowed in
/// `dataset` and `namespace`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataStream {
    /// Default `logs`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub type_: Option<String>,
    /// Default `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Set exactly one of `basicSecretRef` (keys `username`, `password`) or `apiKeySecretRef`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElasticsearchAuth {
    /// Secret with keys `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_secret_ref: Option<SecretRef>,
    /// Secret key holding an encoded API key (the `encoded` value Elasticsearch returns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

/// A batch is sent when any limit is reached.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// Most documents per request (1–100000, default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u32>,
    /// Most bytes per request before compression, as a quantity (`5Mi`, `500k`;
    /// default `5Mi`, at most `100Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<String>,
    /// Send a partial batch after this many milliseconds (1–60000, default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

/// Debug sink: JSON lines on the agent's standard output.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StdoutSink {}

/// Observed state, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogRouteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when compiled and published to the agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Sink names and kinds, e.g. `central(syslog),search(elasticsearch)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<String>,
    /// Namespaces the route currently covers, when it uses a namespaceSelector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Delivery health over all nodes, from the agents' reports (see the `Delivering`
    /// condition). Absent while the route is not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RouteHealth>,
}

/// How the route's records are being delivered, summed over every node whose agent
/// reported in the last minute or so.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteHealth {
    /// The recent window the counts cover, e.g. `5m`.
    pub window: String,
    /// Nodes whose agents reported this route.
    pub nodes: u32,
    /// Sinks delivering of all sinks, e.g. `1/2`.
    pub sinks_delivering: String,
    /// The worst lag of any sink on any node, e.g. `3s` or `4m12s`.
    pub lag: String,
    /// One entry per sink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkHealth>,
}

/// Delivery health of one sink of the route, over all nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkHealth {
    /// The sink's name in the spec.
    pub name: String,
    /// `syslog`, `elasticsearch` or `stdout`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// `Delivering`, `Failing`, `Lagging` or `Idle` (no container matched).
    pub state: String,
    /// Records the sink accepted during the window.
    pub delivered: u64,
    /// Records that will never reach the sink, by reason, during the window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
    /// Failed send attempts during the window (each is retried).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub send_errors: u64,
    /// Containers whose logs go to the sink now.
    pub containers: u32,
    /// The last time any node's agent saw the sink accept records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<Time>,
    /// The worst lag on any node, in seconds: newest line read minus newest line accepted.
    pub lag_seconds: i64,
    /// What is wrong, when the sink is failing: which kind of error, on how many nodes,
    /// since when. Never message content or credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Remove `null` from every `enum` list below `schema`.
///
/// schemars lists `null` among an `Option<enum>` field's values; the CRD already says
/// `nullable: true` there, and kube-apiserver releases before kubernetes PR 104969
/// refuse a CRD whose enums hold a literal `null` ("per-version schemas may not all be
/// set to identical values"). logroute never writes `null` for these fields (absent
/// means default), so the value is not needed. `tests/crd_schema.rs` checks the result.
pub fn no_null_in_enums(schema: &mut schemars::Schema) {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                    values.retain(|v| !v.is_null());
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        map.values_mut().for_each(walk);
    }
}

/// The CustomResourceDefinition as YAML, exactly as `crds/logroute.dev_logroutes.yaml`
/// holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = LogRoute::crd();
    format!(
        "# Generated by `logroute crd` from src/api.rs; do not edit.\n{}",
        serde_yaml::to_string(&crd).expect("CRD serializes to YAML")
    )
}
