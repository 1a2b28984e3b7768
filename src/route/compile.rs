//! The LogRoute compiler: a pure function from a LogRoute (plus the namespaces and Secrets
//! it may refer to) to a [`CompiledRoute`] and its resolved credentials.
//!
//! Every rule lives here so that the controller and `logroute check` (and the agent's
//! `--routes` mode) agree on what a valid LogRoute is. All problems are collected, each
//! with the field path a person has to edit.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use sha2::{Digest, Sha256};

use crate::api::{
    Compression, ElasticsearchAuth, ElasticsearchSink, LogRoute, RelpConfig, SecretKeyRef,
    SecretRef, Sink, StreamName, SyslogFormat, SyslogFraming, SyslogSink, SyslogTransport,
    TlsConfig,
};
use crate::route::document::{
    CompiledFilter, CompiledMultiline, CompiledRoute, CompiledSink, CredentialRef,
    DOCUMENT_VERSION, ElasticsearchConfig, ElasticsearchCredentials, HostContainerSelector,
    IndexTarget, LabelOperator, LabelRequirement, NamespaceScope, PodSelector, RelpSettings,
    RouteIdentity, Scope, SinkConfig, StdoutConfig, SyslogConfig, TlsSettings,
};
use crate::route::egress::{Destination, Scheme, Verdict, url_destination};
use crate::route::policy::{Policy, RoutePolicy};

/// Largest compiled program a user regex may produce. Rust's regex engine is linear-time;
/// this caps the memory of each pattern and, with it, its cost per byte of text (see
/// `route::matcher` for what that cost is and the other bounds on it).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Cache of each pattern's lazy DFA, per thread that matches with it (the regex crate's
/// default, made explicit: it is the memory a route's pattern may take on each thread).
/// A pattern whose DFA outgrows it still matches, on the slower PikeVM.
pub const REGEX_DFA_SIZE_LIMIT: usize = 2 << 20;
/// Longest pattern accepted, before compiling it at all.
pub const REGEX_MAX_LEN: usize = 4096;
/// Most sinks in one LogRoute.
pub const MAX_SINKS: usize = 16;

/// Why a LogRoute was not compiled; becomes the Ready=False reason. Ordered by what a
/// person should fix first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The spec asks for something its namespace may not have (tenancy).
    Forbidden,
    /// The spec breaks a rule (bad regex, address, duplicate name, ...).
    InvalidSpec,
    /// A referenced Secret or key does not exist.
    SecretNotFound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Forbidden => "Forbidden",
            Reason::SecretNotFound => "SecretNotFound",
        }
    }
}

/// One problem with a LogRoute, at a field path such as `spec.sinks[0].syslog.address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    pub reason: Reason,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Reads Secrets for the compiler. The controller backs it with the API; `check` has none
/// and only checks references for form; the agent's `--routes` mode reads a directory.
pub trait SecretLookup {
    /// The Secret's data, or `None` when it does not exist.
    fn get(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;

    /// Added to the "does not exist" message: what else makes a Secret invisible here
    /// (the controller reads only labelled Secrets).
    fn missing_hint(&self, _namespace: &str, _name: &str) -> Option<String> {
        None
    }
}

impl<F> SecretLookup for F
where
    F: Fn(&str, &str) -> Option<BTreeMap<String, Vec<u8>>>,
{
    fn get(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self(namespace, name)
    }
}

/// What a compilation may consult besides the LogRoute itself.
pub struct CompileEnv<'a> {
    /// The namespace logroute runs in; only LogRoutes there may select other namespaces
    /// or host containers.
    pub operator_namespace: &'a str,
    /// Every namespace with its labels, to resolve `namespaceSelector`. `None` offline.
    pub namespaces: Option<&'a [(String, BTreeMap<String, String>)]>,
    /// Secret access; `None` offline (references are then checked for form only).
    pub secrets: Option<&'a dyn SecretLookup>,
}

/// A compiled LogRoute.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub document: CompiledRoute,
    /// Resolved credential values keyed as the document's `CredentialRef`s name them.
    /// Empty when the route references no Secret (or offline).
    pub credentials: BTreeMap<String, Vec<u8>>,
    /// The Secrets (namespace, name) the route references, for re-triggering.
    pub secret_refs: Vec<(String, String)>,
    /// Allowed but worth telling the user (e.g. something unresolved offline).
    pub warnings: Vec<String>,
}

/// Name of the compiled ConfigMap and credentials Secret for a LogRoute: `lr.<ns>.<name>`.
/// Namespaces cannot contain dots, so distinct LogRoutes never share a name; names too
/// long for a DNS subdomain (253) are shortened and given a hash suffix.
pub fn compiled_object_name(namespace: &str, name: &str) -> String {
    let full = format!("lr.{namespace}.{name}");
    if full.len() <= 253 {
        return full;
    }
    let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let mut cut = 240;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = full[..cut].trim_end_matches(['.', '-']);
    format!("{prefix}-{hash}")
}

/// Validate and compile without an operator policy: every destination and sink kind is
/// allowed. For the agent's `--routes` files, which the host's owner writes; the
/// controller and `logroute check` use [`compile_with_policy`].
/// Returns every problem found, not just the first; problems are ordered by [`Reason`]
/// (tenancy first), then by their place in the spec.
pub fn compile(route: &LogRoute, env: &CompileEnv<'_>) -> Result<Compiled, Vec<Problem>> {
    compile_inner(route, env, None)
}

/// Validate and compile under the operator's tenancy policy (egress destinations, the
/// stdout sink, credentials over plain HTTP). The route's effective egress rules go into
/// its sinks, for the agent to check again at connect time.
pub fn compile_with_policy(
    route: &LogRoute,
    env: &CompileEnv<'_>,
    policy: &Policy,
) -> Result<Compiled, Vec<Problem>> {
    compile_inner(route, env, Some(policy))
}

fn compile_inner(
    route: &LogRoute,
    env: &CompileEnv<'_>,
    policy: Option<&Policy>,
) -> Result<Compiled, Vec<Problem>> {
    let namespace = route.metadata.namespace.clone().unwrap_or_default();
    let tenancy = match policy {
        None => RoutePolicy::unrestricted(),
        Some(p) => {
            let labels = env
                .namespaces
                .and_then(|all| all.iter().find(|(n, _)| *n == namespace))
                .map(|(_, labels)| labels);
            p.for_route(&namespace, labels, env.operator_namespace)
        }
    };
    let mut c = Compiler {
        env,
        tenancy,
        problems: Vec::new(),
        warnings: Vec::new(),
        credentials: BTreeMap::new(),
        secret_refs: BTreeSet::new(),
    };
    let name = route.metadata.name.clone().unwrap_or_default();
    if namespace.is_empty() {
        c.invalid(
            "metadata.namespace",
            "a LogRoute must have a namespace".into(),
        );
    }
    if name.is_empty() {
        c.invalid("metadata.name", "a LogRoute must have a name".into());
    }
    let spec = &route.spec;
    let privileged = namespace == env.operator_namespace;

    let scope = c.scope(&namespace, privileged, &spec.selector);
    let selector = c.pod_selector(&spec.selector);
    let filter = spec.filter.as_ref().and_then(|f| {
        let include = f
            .include
            .as_deref()
            .and_then(|p| c.regex("spec.filter.include", p));
        let exclude = f
            .exclude
            .as_deref()
            .and_then(|p| c.regex("spec.filter.exclude", p));
        (include.is_some() || exclude.is_some()).then_some(CompiledFilter { include, exclude })
    });
    let multiline = spec.multiline.as_ref().and_then(|m| {
        let start = c.regex("spec.multiline.start", &m.start);
        let max_lines = c.range("spec.multiline.maxLines", m.max_lines, 1, 10_000, 500);
        let timeout_ms = c.range("spec.multiline.timeoutMs", m.timeout_ms, 10, 60_000, 1000);
        start.map(|start| CompiledMultiline {
            start,
            max_lines,
            timeout_ms,
        })
    });
    let sinks = c.sinks(&namespace, &spec.sinks);

    if !c.problems.is_empty() {
        let mut problems = c.problems;
        problems.sort_by_key(|p| p.reason);
        return Err(problems);
    }
    let credentials_secret = (!c.credentials.is_empty() || has_credential_refs(&sinks))
        .then(|| compiled_object_name(&namespace, &name));
    Ok(Compiled {
        document: CompiledRoute {
            version: DOCUMENT_VERSION,
            route: RouteIdentity {
                namespace,
                name,
                uid: route.metadata.uid.clone(),
                generation: route.metadata.generation,
                created: route
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string()),
            },
            scope,
            selector,
            filter,
            multiline,
            sinks,
            credentials_secret,
        },
        credentials: c.credentials,
        secret_refs: c.secret_refs.into_iter().collect(),
        warnings: c.warnings,
    })
}

fn has_credential_refs(sinks: &[CompiledSink]) -> bool {
    sinks.iter().any(|s| match &s.config {
        SinkConfig::Syslog(cfg) => cfg.tls.as_ref().is_some_and(TlsSettings::has_refs),
        SinkConfig::Elasticsearch(cfg) => {
            cfg.auth.is_some() || cfg.tls.as_ref().is_some_and(TlsSettings::has_refs)
        }
        SinkConfig::Stdout(_) => false,
    })
}

impl TlsSettings {
    fn has_refs(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some()
    }
}

struct Compiler<'e, 'a> {
    env: &'e CompileEnv<'a>,
    /// What the operator's policy allows this route.
    tenancy: RoutePolicy,
    problems: Vec<Problem>,
    warnings: Vec<String>,
    credentials: BTreeMap<String, Vec<u8>>,
    secret_refs: BTreeSet<(String, String)>,
}

impl Compiler<'_, '_> {
    fn problem(&mut self, reason: Reason, path: &str, message: String) {
        self.problems.push(Problem {
            path: path.to_string(),
            message,
            reason,
        });
    }

    fn invalid(&mut self, path: &str, message: String) {
        self.problem(Reason::InvalidSpec, path, message);
    }

    /// Check a sink destination against the route's egress rules (when it has any).
    fn egress(&mut self, at: &str, host: &str, port: u16, scheme: Scheme) {
        let Some(rules) = &self.tenancy.egress else {
            return;
        };
        let dest = Destination {
            host,
            address: None,
            port,
            scheme,
        };
        match rules.check(&dest) {
            Verdict::Allow => {}
            Verdict::Deferred { rule } => self.warnings.push(format!(
                "{at}: whether {host}:{port} may be used depends on the addresses it resolves to (egress rule {rule:?}); the agent checks each connection"
            )),
            Verdict::Deny { rule } => self.problem(
                Reason::Forbidden,
                at,
                format!(
                    "{host}:{port} ({}) is refused by egress rule {rule:?} of the operator's egress policy; send to a destination the policy allows, or ask the cluster operator to allow this one",
                    scheme.as_str()
                ),
            ),
        }
    }

    fn range(&mut self, path: &str, value: Option<u32>, min: u32, max: u32, default: u32) -> u32 {
        match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.invalid(
                    path,
                    format!(
                        "{v} is out of range: use a value from {min} to {max} (default {default})"
                    ),
                );
                default
            }
        }
    }

    fn regex(&mut self, path: &str, pattern: &str) -> Option<String> {
        if pattern.len() > REGEX_MAX_LEN {
            self.invalid(
                path,
                format!(
                    "pattern is {} bytes long; the limit is {REGEX_MAX_LEN}",
                    pattern.len()
                ),
            );
            return None;
        }
        match regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
            .build()
        {
            Ok(_) => Some(pattern.to_string()),
            Err(regex::Error::CompiledTooBig(limit)) => {
                self.invalid(
                    path,
                    format!("pattern compiles to more than {limit} bytes; simplify it (avoid large repetition counts)"),
                );
                None
            }
            Err(e) => {
                let detail = e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                self.invalid(
                    path,
                    format!("not a valid regular expression (Rust regex syntax): {detail}"),
                );
                None
            }
        }
    }

    fn scope(&mut self, namespace: &str, privileged: bool, sel: &crate::api::Selector) -> Scope {
        let op = self.env.operator_namespace;
        let namespaces = match &sel.namespace_selector {
            None => NamespaceScope::List(vec![namespace.to_string()]),
            Some(_) if !privileged => {
                self.problem(
                    Reason::Forbidden,
                    "spec.selector.namespaceSelector",
                    format!(
                        "only LogRoutes in the operator namespace {op:?} may select other namespaces; remove namespaceSelector, or create this route in {op:?}"
                    ),
                );
                NamespaceScope::List(vec![namespace.to_string()])
            }
            Some(ns_sel) => {
                self.label_selector("spec.selector.namespaceSelector", ns_sel);
                if is_empty_selector(ns_sel) {
                    NamespaceScope::All
                } else if let Some(all) = self.env.namespaces {
                    let mut names: Vec<String> = all
                        .iter()
                        .filter(|(_, labels)| selector_matches(ns_sel, labels))
                        .map(|(n, _)| n.clone())
                        .collect();
                    names.sort();
                    names.dedup();
                    NamespaceScope::List(names)
                } else {
                    self.warnings.push(
                        "spec.selector.namespaceSelector: namespace labels are not known offline; the controller resolves the namespace list in the cluster".into(),
                    );
                    NamespaceScope::List(Vec::new())
                }
            }
        };
        let host_containers = match &sel.host_containers {
            None => None,
            Some(_) if !privileged => {
                self.problem(
                    Reason::Forbidden,
                    "spec.selector.hostContainers",
                    format!(
                        "only LogRoutes in the operator namespace {op:?} may select non-pod containers; remove hostContainers, or create this route in {op:?}"
                    ),
                );
                None
            }
            Some(h) => {
                for (i, n) in h.names.iter().enumerate() {
                    if n.is_empty() || n.starts_with('/') {
                        self.invalid(
                            &format!("spec.selector.hostContainers.names[{i}]"),
                            format!("{n:?} is not a Docker container name (give it without a leading '/')"),
                        );
                    }
                }
                Some(HostContainerSelector {
                    names: h.names.clone(),
                    match_labels: h.match_labels.clone(),
                })
            }
        };
        Scope {
            namespaces,
            host_containers,
        }
    }

    fn pod_selector(&mut self, sel: &crate::api::Selector) -> PodSelector {
        let as_label_selector = LabelSelector {
            match_labels: (!sel.match_labels.is_empty()).then(|| sel.match_labels.clone()),
            match_expressions: (!sel.match_expressions.is_empty())
                .then(|| sel.match_expressions.clone()),
        };
        self.label_selector("spec.selector", &as_label_selector);
        for (i, c) in sel.containers.iter().enumerate() {
            if !is_dns_label(c) {
                self.invalid(
                    &format!("spec.selector.containers[{i}]"),
                    format!("{c:?} is not a container name (lowercase letters, digits and '-', at most 63)"),
                );
            }
        }
        let mut streams: Vec<StreamName> = sel.streams.clone();
        streams.sort();
        streams.dedup();
        if streams.is_empty() {
            streams = vec![StreamName::Stdout, StreamName::Stderr];
        }
        PodSelector {
            match_labels: sel.match_labels.clone(),
            match_expressions: sel
                .match_expressions
                .iter()
                .filter_map(requirement)
                .collect(),
            containers: sel.containers.clone(),
            streams,
        }
    }

    fn label_selector(&mut self, path: &str, sel: &LabelSelector) {
        for (k, v) in sel.match_labels.iter().flatten() {
            if let Err(why) = check_label_key(k) {
                self.invalid(
                    &format!("{path}.matchLabels[{k:?}]"),
                    format!("invalid label key: {why}"),
                );
            }
            if let Err(why) = check_label_value(v) {
                self.invalid(
                    &format!("{path}.matchLabels[{k:?}]"),
                    format!("invalid label value {v:?}: {why}"),
                );
            }
        }
        for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            if let Err(why) = check_label_key(&req.key) {
                self.invalid(&format!("{at}.key"), format!("invalid label key: {why}"));
            }
            let values = req.values.as_deref().unwrap_or_default();
            match req.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => self.invalid(
                    &format!("{at}.values"),
                    format!("operator {} needs at least one value", req.operator),
                ),
                "Exists" | "DoesNotExist" if !values.is_empty() => self.invalid(
                    &format!("{at}.values"),
                    format!("operator {} takes no values; remove them", req.operator),
                ),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => self.invalid(
                    &format!("{at}.operator"),
                    format!("unknown operator {other:?}: use In, NotIn, Exists or DoesNotExist"),
                ),
            }
        }
    }

    fn sinks(&mut self, namespace: &str, sinks: &[Sink]) -> Vec<CompiledSink> {
        if sinks.is_empty() {
            self.invalid("spec.sinks", "a LogRoute needs at least one sink".into());
        }
        if sinks.len() > MAX_SINKS {
            self.invalid(
                "spec.sinks",
                format!("{} sinks; at most {MAX_SINKS} per LogRoute", sinks.len()),
            );
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, sink) in sinks.iter().enumerate() {
            let at = format!("spec.sinks[{i}]");
            if !is_dns_label(&sink.name) {
                self.invalid(
                    &format!("{at}.name"),
                    format!("{:?} is not a valid sink name (lowercase letters, digits and '-', at most 63)", sink.name),
                );
            } else if !seen.insert(sink.name.as_str()) {
                self.invalid(
                    &format!("{at}.name"),
                    format!(
                        "sink name {:?} is used twice; names must be unique",
                        sink.name
                    ),
                );
            }
            let kinds = [
                sink.syslog.is_some(),
                sink.elasticsearch.is_some(),
                sink.stdout.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                self.invalid(
                    &at,
                    "set exactly one of syslog, elasticsearch, stdout".into(),
                );
                continue;
            }
            let config = if let Some(s) = &sink.syslog {
                self.syslog(namespace, &sink.name, &format!("{at}.syslog"), s)
                    .map(SinkConfig::Syslog)
            } else if let Some(e) = &sink.elasticsearch {
                self.elasticsearch(namespace, &sink.name, &format!("{at}.elasticsearch"), e)
                    .map(SinkConfig::Elasticsearch)
            } else if self.tenancy.stdout_allowed {
                Some(SinkConfig::Stdout(StdoutConfig {}))
            } else {
                let op = self.env.operator_namespace;
                self.problem(
                    Reason::Forbidden,
                    &format!("{at}.stdout"),
                    format!("the stdout sink writes into the agent's own log on every node, which only the operator may read; only LogRoutes in the operator namespace {op:?} (or namespaces the egress policy's `stdout` names) may use it; use a syslog or elasticsearch sink"),
                );
                None
            };
            if let Some(config) = config {
                out.push(CompiledSink {
                    name: sink.name.clone(),
                    config,
                });
            }
        }
        out
    }

    fn syslog(&mut self, ns: &str, sink: &str, at: &str, s: &SyslogSink) -> Option<SyslogConfig> {
        let transport = s.transport.unwrap_or(SyslogTransport::Tcp);
        let address = parse_host_port(&s.address)
            .map_err(|why| self.invalid(&format!("{at}.address"), why))
            .ok();
        let facility = match s.facility.as_deref() {
            None => 16,
            Some(f) => facility_code(f).unwrap_or_else(|| {
                self.invalid(
                    &format!("{at}.facility"),
                    format!("unknown facility {f:?}: use kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, ntp, security, console, solaris-cron or local0..local7"),
                );
                16
            }),
        };
        let severity = s.severity.as_deref().and_then(|v| {
            let code = severity_code(v);
            if code.is_none() {
                self.invalid(
                    &format!("{at}.severity"),
                    format!("unknown severity {v:?}: use emerg, alert, crit, err, warning, notice, info or debug"),
                );
            }
            code
        });
        let (default_max, limit) = match transport {
            SyslogTransport::Udp => (8192, 65_000),
            _ => (65_536, 16 << 20),
        };
        let max_message_bytes = self.range(
            &format!("{at}.maxMessageBytes"),
            s.max_message_bytes,
            480,
            limit,
            default_max,
        );
        if s.framing.is_some() && matches!(transport, SyslogTransport::Udp | SyslogTransport::Relp)
        {
            self.invalid(
                &format!("{at}.framing"),
                "framing applies to tcp and tls only (RELP frames every message itself); remove it"
                    .into(),
            );
        }
        let relp = self.relp(at, transport, s.relp.as_ref());
        let relp_tls = s.relp.as_ref().is_some_and(|r| r.tls);
        let wants_tls = match transport {
            SyslogTransport::Tls => true,
            SyslogTransport::Relp => relp_tls,
            SyslogTransport::Udp | SyslogTransport::Tcp => false,
        };
        let tls = match (&s.tls, wants_tls) {
            (tls, true) => {
                let default = TlsConfig::default();
                let host = address
                    .as_ref()
                    .map(|(h, _)| h.as_str())
                    .unwrap_or_default();
                Some(self.tls(
                    ns,
                    sink,
                    &format!("{at}.tls"),
                    tls.as_ref().unwrap_or(&default),
                    host,
                ))
            }
            (Some(_), false) if transport == SyslogTransport::Relp => {
                self.invalid(
                    &format!("{at}.tls"),
                    "tls is set but relp.tls is not true; set relp.tls: true for RELP over TLS or remove tls".into(),
                );
                None
            }
            (Some(_), false) => {
                self.invalid(
                    &format!("{at}.tls"),
                    "tls is set but transport is not tls; set transport: tls or remove tls".into(),
                );
                None
            }
            (None, false) => None,
        };
        let (host, port) = address?;
        // RELP is TCP, or TLS with relp.tls, to the operator's egress policy.
        let scheme = match transport {
            SyslogTransport::Udp => Scheme::Udp,
            SyslogTransport::Tcp => Scheme::Tcp,
            SyslogTransport::Tls => Scheme::Tls,
            SyslogTransport::Relp if relp_tls => Scheme::Tls,
            SyslogTransport::Relp => Scheme::Tcp,
        };
        self.egress(&format!("{at}.address"), &host, port, scheme);
        Some(SyslogConfig {
            host,
            port,
            transport,
            format: s.format.unwrap_or(SyslogFormat::Rfc5424),
            framing: s.framing.unwrap_or(SyslogFraming::OctetCounting),
            facility,
            severity,
            max_message_bytes,
            tls,
            relp,
            egress: self.tenancy.egress.clone(),
        })
    }

    /// The RELP settings of a relp sink; `relp` on another transport is an error.
    fn relp(
        &mut self,
        at: &str,
        transport: SyslogTransport,
        r: Option<&RelpConfig>,
    ) -> Option<RelpSettings> {
        if transport != SyslogTransport::Relp {
            if r.is_some() {
                self.invalid(
                    &format!("{at}.relp"),
                    "relp is set but transport is not relp; set transport: relp or remove relp"
                        .into(),
                );
            }
            return None;
        }
        let r = r.cloned().unwrap_or_default();
        Some(RelpSettings {
            window: self.range(&format!("{at}.relp.window"), r.window, 1, 1024, 128),
            ack_timeout_ms: self.range(
                &format!("{at}.relp.ackTimeoutMs"),
                r.ack_timeout_ms,
                1000,
                300_000,
                30_000,
            ),
        })
    }

    fn elasticsearch(
        &mut self,
        ns: &str,
        sink: &str,
        at: &str,
        e: &ElasticsearchSink,
    ) -> Option<ElasticsearchConfig> {
        if e.endpoints.is_empty() {
            self.invalid(
                &format!("{at}.endpoints"),
                "give at least one endpoint URL, e.g. https://es.logging.svc:9200".into(),
            );
        }
        let mut endpoints = Vec::new();
        for (i, url) in e.endpoints.iter().enumerate() {
            match parse_endpoint(url) {
                Ok(u) => {
                    if let Some((host, port, scheme)) = url_destination(&u) {
                        self.egress(&format!("{at}.endpoints[{i}]"), &host, port, scheme);
                    }
                    endpoints.push(u)
                }
                Err(why) => self.invalid(&format!("{at}.endpoints[{i}]"), why),
            }
        }
        let target = match (&e.index, &e.data_stream) {
            (Some(_), Some(_)) => {
                self.invalid(at, "set either index or dataStream, not both".into());
                None
            }
            (Some(index), None) => match check_index_template(index) {
                Ok(()) => Some(IndexTarget::Index(index.clone())),
                Err(why) => {
                    self.invalid(&format!("{at}.index"), why);
                    None
                }
            },
            (None, Some(ds)) => {
                let parts = [
                    ("type", ds.type_.as_deref().unwrap_or("logs")),
                    ("dataset", ds.dataset.as_deref().unwrap_or("kubernetes")),
                    ("namespace", ds.namespace.as_deref().unwrap_or("default")),
                ];
                let mut ok = true;
                for (field, value) in parts {
                    if let Err(why) = check_data_stream_part(value) {
                        self.invalid(&format!("{at}.dataStream.{field}"), why);
                        ok = false;
                    }
                }
                ok.then(|| {
                    IndexTarget::DataStream(format!("{}-{}-{}", parts[0].1, parts[1].1, parts[2].1))
                })
            }
            (None, None) => Some(IndexTarget::Index("logroute-%Y.%m.%d".into())),
        };
        let auth = e
            .auth
            .as_ref()
            .and_then(|a| self.es_auth(ns, sink, &format!("{at}.auth"), a));
        if e.auth.is_some()
            && !self.tenancy.plain_http_credentials
            && endpoints.iter().any(|u| u.starts_with("http://"))
        {
            self.problem(
                Reason::Forbidden,
                &format!("{at}.auth"),
                "credentials would travel unencrypted to an http:// endpoint; use https:// endpoints (or ask the cluster operator to allow plain-HTTP credentials for this namespace in the egress policy)".into(),
            );
        }
        let tls = e.tls.as_ref().map(|t| {
            if !endpoints.iter().any(|u: &String| u.starts_with("https://")) {
                self.invalid(
                    &format!("{at}.tls"),
                    "tls is set but no endpoint uses https://".into(),
                );
            }
            let host = endpoints
                .first()
                .map(|u| endpoint_host(u))
                .unwrap_or_default();
            self.tls(ns, sink, &format!("{at}.tls"), t, &host)
        });
        let batch = e.batch.clone().unwrap_or_default();
        let max_events = self.range(
            &format!("{at}.batch.maxEvents"),
            batch.max_events,
            1,
            100_000,
            1000,
        );
        let max_bytes = match batch.max_bytes.as_deref() {
            None => 5 << 20,
            Some(q) => match parse_quantity(q) {
                Some(b) if (1024..=100 << 20).contains(&b) => b,
                Some(b) => {
                    self.invalid(
                        &format!("{at}.batch.maxBytes"),
                        format!("{q} ({b} bytes) is out of range: use 1Ki to 100Mi"),
                    );
                    5 << 20
                }
                None => {
                    self.invalid(
                        &format!("{at}.batch.maxBytes"),
                        format!("{q:?} is not a quantity; write e.g. 5Mi or 500k"),
                    );
                    5 << 20
                }
            },
        };
        let timeout_ms = self.range(
            &format!("{at}.batch.timeoutMs"),
            batch.timeout_ms,
            1,
            60_000,
            1000,
        );
        let request_timeout_ms = self.range(
            &format!("{at}.requestTimeoutMs"),
            e.request_timeout_ms,
            100,
            300_000,
            30_000,
        );
        let max_concurrency =
            self.range(&format!("{at}.maxConcurrency"), e.max_concurrency, 1, 64, 2);
        Some(ElasticsearchConfig {
            endpoints,
            target: target?,
            auth,
            tls,
            max_events,
            max_bytes,
            timeout_ms,
            compression: e.compression.unwrap_or(Compression::None),
            request_timeout_ms,
            max_concurrency,
            egress: self.tenancy.egress.clone(),
        })
    }

    fn es_auth(
        &mut self,
        ns: &str,
        sink: &str,
        at: &str,
        a: &ElasticsearchAuth,
    ) -> Option<ElasticsearchCredentials> {
        match (&a.basic_secret_ref, &a.api_key_secret_ref) {
            (Some(basic), None) => {
                let path = format!("{at}.basicSecretRef");
                let data = self.secret(ns, &path, &basic.name, basic.namespace.as_deref())?;
                let username = self.credential(
                    &path,
                    &basic.name,
                    data.as_ref(),
                    "username",
                    format!("{sink}.username"),
                )?;
                let password = self.credential(
                    &path,
                    &basic.name,
                    data.as_ref(),
                    "password",
                    format!("{sink}.password"),
                )?;
                Some(ElasticsearchCredentials::Basic { username, password })
            }
            (None, Some(key)) => {
                let key = self.secret_key(
                    ns,
                    &format!("{at}.apiKeySecretRef"),
                    key,
                    format!("{sink}.api-key"),
                )?;
                Some(ElasticsearchCredentials::ApiKey { key })
            }
            _ => {
                self.invalid(
                    at,
                    "set exactly one of basicSecretRef or apiKeySecretRef".into(),
                );
                None
            }
        }
    }

    fn tls(&mut self, ns: &str, sink: &str, at: &str, t: &TlsConfig, host: &str) -> TlsSettings {
        let ca = t.ca_secret_ref.as_ref().and_then(|r| {
            self.secret_key(
                ns,
                &format!("{at}.caSecretRef"),
                r,
                format!("{sink}.ca.crt"),
            )
        });
        let (client_cert, client_key) = match &t.client_cert_secret_ref {
            None => (None, None),
            Some(r) => self.client_cert(ns, sink, &format!("{at}.clientCertSecretRef"), r),
        };
        // An empty host only follows from an address already reported as invalid.
        let server_name = t.server_name.clone().unwrap_or_else(|| host.to_string());
        if t.insecure_skip_verify {
            self.warnings.push(format!(
                "{at}.insecureSkipVerify: the server certificate is not verified"
            ));
        }
        TlsSettings {
            ca,
            client_cert,
            client_key,
            server_name,
            insecure_skip_verify: t.insecure_skip_verify,
        }
    }

    fn client_cert(
        &mut self,
        ns: &str,
        sink: &str,
        at: &str,
        r: &SecretRef,
    ) -> (Option<CredentialRef>, Option<CredentialRef>) {
        let Some(data) = self.secret(ns, at, &r.name, r.namespace.as_deref()) else {
            return (None, None);
        };
        let cert = self.credential(
            at,
            &r.name,
            data.as_ref(),
            "tls.crt",
            format!("{sink}.tls.crt"),
        );
        let key = self.credential(
            at,
            &r.name,
            data.as_ref(),
            "tls.key",
            format!("{sink}.tls.key"),
        );
        (cert, key)
    }

    fn secret_key(
        &mut self,
        ns: &str,
        at: &str,
        r: &SecretKeyRef,
        credential_key: String,
    ) -> Option<CredentialRef> {
        if r.key.is_empty() {
            self.invalid(
                &format!("{at}.key"),
                "name the key of the Secret to use".into(),
            );
            return None;
        }
        let data = self.secret(ns, at, &r.name, r.namespace.as_deref())?;
        self.credential(at, &r.name, data.as_ref(), &r.key, credential_key)
    }

    /// Check a Secret reference for tenancy and existence. `Some(None)` means the
    /// reference is fine but cannot be resolved (offline).
    fn secret(
        &mut self,
        ns: &str,
        at: &str,
        name: &str,
        ref_namespace: Option<&str>,
    ) -> Option<Option<BTreeMap<String, Vec<u8>>>> {
        if let Some(other) = ref_namespace.filter(|other| !other.is_empty() && *other != ns) {
            self.problem(
                Reason::Forbidden,
                &format!("{at}.namespace"),
                format!("a LogRoute may only reference Secrets of its own namespace {ns:?}, not {other:?}; copy the Secret into {ns:?}"),
            );
            return None;
        }
        if !is_dns_subdomain(name) {
            self.invalid(
                &format!("{at}.name"),
                format!("{name:?} is not a valid Secret name"),
            );
            return None;
        }
        self.secret_refs.insert((ns.to_string(), name.to_string()));
        let Some(lookup) = self.env.secrets else {
            return Some(None);
        };
        match lookup.get(ns, name) {
            Some(data) => Some(Some(data)),
            None => {
                let message = match lookup.missing_hint(ns, name) {
                    None => format!("Secret {ns}/{name} does not exist; create it or fix the name"),
                    Some(hint) => format!("Secret {ns}/{name} does not exist or {hint}"),
                };
                self.problem(Reason::SecretNotFound, &format!("{at}.name"), message);
                None
            }
        }
    }

    fn credential(
        &mut self,
        at: &str,
        secret: &str,
        data: Option<&BTreeMap<String, Vec<u8>>>,
        key: &str,
        credential_key: String,
    ) -> Option<CredentialRef> {
        if let Some(data) = data {
            match data.get(key) {
                Some(value) => {
                    self.credentials
                        .insert(credential_key.clone(), value.clone());
                }
                None => {
                    self.problem(
                        Reason::SecretNotFound,
                        at,
                        format!("Secret {secret:?} has no key {key:?}; add it to the Secret"),
                    );
                    return None;
                }
            }
        }
        Some(CredentialRef {
            key: credential_key,
        })
    }
}

fn requirement(r: &LabelSelectorRequirement) -> Option<LabelRequirement> {
    let operator = match r.operator.as_str() {
        "In" => LabelOperator::In,
        "NotIn" => LabelOperator::NotIn,
        "Exists" => LabelOperator::Exists,
        "DoesNotExist" => LabelOperator::DoesNotExist,
        _ => return None,
    };
    Some(LabelRequirement {
        key: r.key.clone(),
        operator,
        values: r.values.clone().unwrap_or_default(),
    })
}

fn is_empty_selector(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// Standard LabelSelector semantics over a label map.
pub fn selector_matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exprs: Vec<LabelRequirement> = s
        .match_expressions
        .iter()
        .flatten()
        .filter_map(requirement)
        .collect();
    labels_match(
        s.match_labels.as_ref().unwrap_or(&BTreeMap::new()),
        &exprs,
        labels,
    )
}

/// `matchLabels` and `matchExpressions` against a label map.
pub fn labels_match(
    match_labels: &BTreeMap<String, String>,
    exprs: &[LabelRequirement],
    labels: &BTreeMap<String, String>,
) -> bool {
    match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && exprs.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.operator {
                LabelOperator::In => value.is_some_and(|v| r.values.contains(v)),
                LabelOperator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                LabelOperator::Exists => value.is_some(),
                LabelOperator::DoesNotExist => value.is_none(),
            }
        })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_label_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("at most 63 characters [A-Za-z0-9-_.], starting and ending alphanumeric".into())
    }
}

fn check_label_key(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err(format!("prefix {prefix:?} must be a DNS subdomain"));
            }
            check_label_name(name)
        }
        None => check_label_name(key),
    }
}

fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Ok(())
    } else {
        check_label_name(v)
    }
}

/// `host:port` or `[v6]:port`.
fn parse_host_port(address: &str) -> Result<(String, u16), String> {
    let hint = "write host:port, e.g. syslog.logging.svc:6514 or [fd00::1]:514";
    if let Some((scheme, _)) = address.split_once("://") {
        return Err(format!(
            "{address:?} carries a scheme ({scheme}://); write only host:port and choose the protocol with `transport` (udp, tcp or tls)"
        ));
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{address:?} is not an address: {hint}"))?;
        (host, port)
    } else {
        address
            .rsplit_once(':')
            .ok_or_else(|| format!("{address:?} has no port: {hint}"))?
    };
    if host.is_empty()
        || host.contains(['/', ' '])
        || (host.contains(':') && !address.starts_with('['))
    {
        return Err(format!("{address:?} has no valid host: {hint}"));
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok((host.to_string(), p as u16)),
        _ => Err(format!(
            "port {port:?} of {address:?} is not a number from 1 to 65535"
        )),
    }
}

/// `http(s)://host[:port][/path]`, returned without a trailing slash.
fn parse_endpoint(url: &str) -> Result<String, String> {
    let hint = "write e.g. https://es.logging.svc:9200";
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://; {hint}"))?;
    if rest.contains(['?', '#', '@', ' ']) {
        return Err(format!(
            "{url:?} must not carry a query, fragment or credentials (use auth); {hint}"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} has no host; {hint}"));
    }
    if authority.starts_with('[') || authority.contains(':') {
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:1")
        } else {
            authority.to_string()
        };
        parse_host_port(&with_port).map_err(|why| format!("{url:?}: {why}"))?;
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn endpoint_host(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default().to_string();
    }
    authority.split(':').next().unwrap_or_default().to_string()
}

const INDEX_PLACEHOLDERS: &[&str] = &["{namespace}", "{pod}", "{container}", "{node}"];
const DATE_DIRECTIVES: &[char] = &['Y', 'y', 'm', 'd', 'H', 'j', 'V', 'G', '%'];

fn check_index_template(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > 200 {
        return Err("index template must be 1 to 200 characters".into());
    }
    if t.starts_with(['-', '_', '+']) {
        return Err(format!(
            "{t:?}: index names cannot start with '-', '_' or '+'"
        ));
    }
    let mut rest = t;
    while let Some(c) = rest.chars().next() {
        if c == '{' {
            let p = INDEX_PLACEHOLDERS
                .iter()
                .find(|p| rest.starts_with(**p))
                .ok_or_else(|| {
                    format!(
                        "{t:?}: unknown placeholder; use {}",
                        INDEX_PLACEHOLDERS.join(", ")
                    )
                })?;
            rest = &rest[p.len()..];
        } else if c == '%' {
            let d = rest[1..].chars().next();
            if !d.is_some_and(|d| DATE_DIRECTIVES.contains(&d)) {
                return Err(format!(
                    "{t:?}: unsupported date pattern; use %Y %y %m %d %H %j %V %G or %%"
                ));
            }
            rest = &rest[2..];
        } else {
            if c.is_ascii_uppercase()
                || matches!(
                    c,
                    '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
                )
            {
                return Err(format!(
                    "{t:?}: index names are lowercase and cannot contain {c:?}"
                ));
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    Ok(())
}

fn check_data_stream_part(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 100
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.'))
        && !v.starts_with(['_', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?}: data stream parts are lowercase letters, digits, '_' and '.', without '-'"
        ))
    }
}

/// Kubernetes-style quantity (`5Mi`, `500k`, `1048576`) to bytes.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn facility_code(name: &str) -> Option<u8> {
    const NAMES: &[&str] = &[
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
    ];
    if let Some(i) = NAMES.iter().position(|n| *n == name) {
        return Some(i as u8);
    }
    let local: u8 = name.strip_prefix("local")?.parse().ok()?;
    (local <= 7).then_some(16 + local)
}

fn severity_code(name: &str) -> Option<u8> {
    Some(match name {
        "emerg" | "emergency" => 0,
        "alert" => 1,
        "crit" | "critical" => 2,
        "err" | "error" => 3,
        "warning" | "warn" => 4,
        "notice" => 5,
        "info" | "informational" => 6,
        "debug" => 7,
        _ => return None,
    })
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "tenancy_tests.rs"]
mod tenancy_tests;
