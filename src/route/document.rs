//! The compiled route document (`route.json` in each compiled ConfigMap).
//!
//! This is the contract between the controller (which writes it) and the agents (which
//! read it). Everything in it is already validated and resolved: regexes compile, sink
//! addresses are split into host and port, defaults are filled in, the namespaces the
//! route may see are listed explicitly, and credentials are replaced by keys of the
//! compiled Secret that sits beside the ConfigMap. An agent must refuse a document whose
//! `version` it does not know rather than guess at its meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::route::egress::EgressRules;

pub use crate::api::{Compression, StreamName, SyslogFormat, SyslogFraming, SyslogTransport};

/// The only document version this build writes and reads. Bump it on any change that an
/// older agent would misread; add optional fields without bumping.
pub const DOCUMENT_VERSION: u32 = 1;

/// A fully validated and resolved LogRoute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledRoute {
    /// Always [`DOCUMENT_VERSION`] when written by this build.
    pub version: u32,
    pub route: RouteIdentity,
    /// What the route may and does see.
    pub scope: Scope,
    pub selector: PodSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<CompiledFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiline: Option<CompiledMultiline>,
    pub sinks: Vec<CompiledSink>,
    /// Name of the Secret (in the operator namespace) holding the resolved credentials
    /// that [`CredentialRef`]s point into; absent when the route uses none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// Where the document came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteIdentity {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The LogRoute's `metadata.creationTimestamp` (RFC 3339). Agents start a
    /// container's lanes for this route no earlier than this, so a pod created together
    /// with its route loses no line because an agent learned of the route late. Absent
    /// for routes compiled from files (`--routes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

impl RouteIdentity {
    /// `namespace/name`, the route's identity in logs and metric labels (bounded: one
    /// value per LogRoute).
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Namespace scoping, explicit so that an agent never has to reason about tenancy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// Pods of these namespaces are visible to the route.
    pub namespaces: NamespaceScope,
    /// Non-pod Docker containers the route takes; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_containers: Option<HostContainerSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceScope {
    /// Every namespace (an operator-namespace route with an empty namespaceSelector).
    All,
    /// Exactly these namespaces (sorted, deduplicated).
    List(Vec<String>),
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostContainerSelector {
    /// Exact Docker names; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Pod-level selection, evaluated once per container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
    /// Container names; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Streams; never empty after compilation.
    pub streams: Vec<StreamName>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Regexes, already checked to compile within the size limit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledMultiline {
    pub start: String,
    pub max_lines: u32,
    pub timeout_ms: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledSink {
    pub name: String,
    #[serde(flatten)]
    pub config: SinkConfig,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum SinkConfig {
    Syslog(SyslogConfig),
    Elasticsearch(ElasticsearchConfig),
    Stdout(StdoutConfig),
}

impl SinkConfig {
    /// Bounded label value for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Syslog(_) => "syslog",
            SinkConfig::Elasticsearch(_) => "elasticsearch",
            SinkConfig::Stdout(_) => "stdout",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyslogConfig {
    pub host: String,
    pub port: u16,
    pub transport: SyslogTransport,
    pub format: SyslogFormat,
    /// Meaningful for tcp/tls only.
    pub framing: SyslogFraming,
    /// Facility code 0–23.
    pub facility: u8,
    /// Fixed severity 0–7; absent means stderr → 3 (err), stdout → 6 (info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
    pub max_message_bytes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// Present exactly when `transport` is relp. RELP over TLS when `tls` is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relp: Option<RelpSettings>,
    /// The operator's egress rules for this route, checked against every address the
    /// agent connects to; absent means unrestricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRules>,
}

/// RELP settings, validated: see [`crate::api::RelpConfig`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelpSettings {
    /// Most messages sent and not yet acknowledged.
    pub window: u32,
    pub ack_timeout_ms: u32,
}

/// TLS client settings with secret material replaced by credential keys.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CredentialRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<CredentialRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<CredentialRef>,
    /// Name checked against the server certificate.
    pub server_name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A key in the route's compiled credentials Secret (`credentialsSecret`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ElasticsearchConfig {
    /// Base URLs without trailing slash.
    pub endpoints: Vec<String>,
    pub target: IndexTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ElasticsearchCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    pub max_events: u32,
    pub max_bytes: u64,
    pub timeout_ms: u32,
    pub compression: Compression,
    pub request_timeout_ms: u32,
    pub max_concurrency: u32,
    /// As [`SyslogConfig::egress`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRules>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum IndexTarget {
    /// Index name template (`{namespace}`... and strftime patterns, UTC); `op_type: index`.
    Index(String),
    /// Data stream name template `<type>-<dataset>-<namespace>`; `op_type: create`.
    DataStream(String),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum ElasticsearchCredentials {
    Basic {
        username: CredentialRef,
        password: CredentialRef,
    },
    ApiKey {
        key: CredentialRef,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StdoutConfig {}

/// Why a document cannot be used by this agent.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("route document is not valid JSON for version {DOCUMENT_VERSION}: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "route document version {found} is not understood by this agent (it reads version {DOCUMENT_VERSION}); upgrade the agent to match the controller"
    )]
    UnknownVersion { found: u64 },
}

impl CompiledRoute {
    /// Parse a `route.json`, checking the version before anything else so that a newer
    /// controller's document is refused with a clear message rather than half-read.
    pub fn from_json(text: &str) -> Result<Self, DocumentError> {
        #[derive(Deserialize)]
        struct Probe {
            version: u64,
        }
        let probe: Probe = serde_json::from_str(text)?;
        if probe.version != u64::from(DOCUMENT_VERSION) {
            return Err(DocumentError::UnknownVersion {
                found: probe.version,
            });
        }
        Ok(serde_json::from_str(text)?)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("compiled route always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_version_is_refused_before_parsing_the_rest() {
        let err = CompiledRoute::from_json(r#"{"version": 2, "whatever": true}"#).unwrap_err();
        assert!(
            matches!(err, DocumentError::UnknownVersion { found: 2 }),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade the agent"));
    }
}
