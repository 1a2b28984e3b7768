//! The operator's tenancy policy: where tenant LogRoutes may send logs, and which
//! tenants may use the stdout sink or send credentials over plain `http://`.
//!
//! It is a YAML file owned by whoever installs logroute (the chart renders it from its
//! `egressPolicy` values into a ConfigMap the controller mounts; `logroute controller
//! --egress-policy FILE`). Tenants cannot change it: it is not a resource they can write.
//! Without a file, [`Policy::default`] applies: every destination allowed to tenants
//! except the built-in denials (loopback, link-local, the API server), no stdout sink and
//! no plain-HTTP credentials outside the operator namespace.
//!
//! ```yaml
//! defaultAction: deny              # what a destination no rule matches gets (default allow)
//! rules:                           # first match wins
//!   - name: central-logging
//!     action: allow
//!     hosts: ["*.logging.svc.cluster.local", "logs.example.com"]
//!     cidrs: ["10.96.0.0/12"]
//!     ports: [6514, 9200]
//!     schemes: [tls, https]
//!   - name: team-a-own-es
//!     action: allow
//!     namespaceSelector: {matchLabels: {team: a}}
//!     hosts: ["es.team-a.svc.cluster.local"]
//! stdout: {namespaces: [dev]}      # tenants allowed the stdout sink
//! plainHttpCredentials: {}         # `{}` = every tenant; absent = none
//! restrictOperatorNamespace: false # true: the operator namespace's routes obey it too
//! apiServer: ["10.0.0.1"]          # extra API server names/addresses to deny
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use super::compile::selector_matches;
use super::egress::{Action, Cidr, EgressRule, EgressRules, Scheme};

/// The policy file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub default_action: Action,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    /// Tenant namespaces that may use the stdout sink; absent means none.
    #[serde(default)]
    pub stdout: Option<NamespaceMatch>,
    /// Tenant namespaces whose Elasticsearch credentials may travel over `http://`.
    #[serde(default)]
    pub plain_http_credentials: Option<NamespaceMatch>,
    /// Apply rules and denials to the operator namespace's routes too.
    #[serde(default)]
    pub restrict_operator_namespace: bool,
    /// API server names or addresses besides `kubernetes.default.svc` and the address
    /// the controller reads from `KUBERNETES_SERVICE_HOST`.
    #[serde(default)]
    pub api_server: Vec<String>,
}

/// Namespaces by name or by label; with neither, every namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceMatch {
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
}

/// One rule of the file: [`EgressRule`] plus the namespaces it applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    pub name: String,
    pub action: Action,
    /// Namespaces the rule applies to; with neither this nor `namespaceSelector`, all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub schemes: Vec<Scheme>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the egress policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("egress policy {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

/// What the policy means for one LogRoute.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePolicy {
    /// `None`: unrestricted.
    pub egress: Option<EgressRules>,
    pub stdout_allowed: bool,
    pub plain_http_credentials: bool,
}

impl RoutePolicy {
    /// No restriction at all (the agent's `--routes` files, which their host's owner writes).
    pub fn unrestricted() -> Self {
        Self {
            egress: None,
            stdout_allowed: true,
            plain_http_credentials: true,
        }
    }
}

impl Policy {
    /// Read and check a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| PolicyError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parse and check policy YAML; an empty document is the default policy.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let policy: Policy = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if r.name.is_empty() || r.name.starts_with("builtin:") || r.name == "default" {
                return Err(format!(
                    "{at}.name: give each rule a name (not empty, not `default`, not starting with `builtin:`)"
                ));
            }
            if !names.insert(r.name.as_str()) {
                return Err(format!("{at}.name: {:?} is used twice", r.name));
            }
            for c in &r.cidrs {
                Cidr::parse(c).map_err(|why| format!("{at}.cidrs: {why}"))?;
            }
            for h in &r.hosts {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
                    return Err(format!(
                        "{at}.hosts: {h:?} is not a host pattern (an exact name, or *.suffix)"
                    ));
                }
            }
            if r.ports.contains(&0) {
                return Err(format!("{at}.ports: ports are 1 to 65535"));
            }
        }
        Ok(())
    }

    /// Add the API server address (e.g. from `KUBERNETES_SERVICE_HOST`) to the denials.
    pub fn with_api_server(mut self, host: Option<&str>) -> Self {
        if let Some(h) = host.map(str::trim).filter(|h| !h.is_empty()) {
            if !self.api_server.iter().any(|a| a == h) {
                self.api_server.push(h.to_string());
            }
        }
        self
    }

    /// Whether any part of the policy depends on namespace labels (routes must then be
    /// compiled again when their namespace's labels change).
    pub fn uses_namespace_labels(&self) -> bool {
        self.rules.iter().any(|r| r.namespace_selector.is_some())
            || [&self.stdout, &self.plain_http_credentials]
                .into_iter()
                .flatten()
                .any(|m| m.namespace_selector.is_some())
    }

    /// The policy as it applies to a route in `namespace` (with these labels, `None`
    /// when unknown: selectors then match nothing).
    pub fn for_route(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
        operator_namespace: &str,
    ) -> RoutePolicy {
        if namespace == operator_namespace && !self.restrict_operator_namespace {
            return RoutePolicy::unrestricted();
        }
        let applies = |names: &[String], sel: &Option<LabelSelector>| {
            (names.is_empty() && sel.is_none())
                || names.iter().any(|n| n == namespace)
                || sel
                    .as_ref()
                    .zip(labels)
                    .is_some_and(|(s, l)| selector_matches(s, l))
        };
        let allowed = |m: &Option<NamespaceMatch>| {
            namespace == operator_namespace
                || m.as_ref()
                    .is_some_and(|m| applies(&m.namespaces, &m.namespace_selector))
        };
        let rules = self
            .rules
            .iter()
            .filter(|r| applies(&r.namespaces, &r.namespace_selector))
            .map(|r| EgressRule {
                name: r.name.clone(),
                action: r.action,
                hosts: r.hosts.clone(),
                cidrs: r.cidrs.clone(),
                ports: r.ports.clone(),
                schemes: r.schemes.clone(),
            })
            .collect();
        RoutePolicy {
            egress: Some(EgressRules {
                rules,
                api_server: self.api_server.clone(),
                default_action: self.default_action,
            }),
            stdout_allowed: allowed(&self.stdout),
            plain_http_credentials: allowed(&self.plain_http_credentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP: &str = "logroute-system";

    #[test]
    fn the_operator_namespace_is_unrestricted_unless_the_policy_says_so() {
        let p = Policy::default();
        assert_eq!(p.for_route(OP, None, OP), RoutePolicy::unrestricted());
        let strict = Policy {
            restrict_operator_namespace: true,
            ..Policy::default()
        };
        let r = strict.for_route(OP, None, OP);
        assert!(r.egress.is_some());
        assert!(
            r.stdout_allowed,
            "stdout stays the operator's debugging tool"
        );
    }

    #[test]
    fn rules_apply_by_namespace_name_or_label() {
        let p = Policy::parse(
            "rules:\n- {name: everyone, action: allow, hosts: [a]}\n- {name: by-name, action: allow, namespaces: [pay]}\n- {name: by-label, action: deny, namespaceSelector: {matchLabels: {tier: prod}}}\nstdout: {namespaces: [dev]}\n",
        )
        .expect("valid policy");
        let names = |ns: &str, labels: &[(&str, &str)]| {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let r = p.for_route(ns, Some(&labels), OP);
            r.egress
                .expect("tenant routes get rules")
                .rules
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("pay", &[]), ["everyone", "by-name"]);
        assert_eq!(names("shop", &[("tier", "prod")]), ["everyone", "by-label"]);
        assert!(p.uses_namespace_labels());
        assert!(p.for_route("dev", None, OP).stdout_allowed);
        assert!(!p.for_route("pay", None, OP).stdout_allowed);
        assert!(!p.for_route("pay", None, OP).plain_http_credentials);
    }

    #[test]
    fn bad_policies_are_refused_with_the_place() {
        for (yaml, needle) in [
            (
                "rules: [{name: x, action: allow, cidrs: [10.0.0.0/33]}]",
                "rules[0].cidrs",
            ),
            (
                "rules: [{name: x, action: allow}, {name: x, action: deny}]",
                "used twice",
            ),
            (
                "rules: [{name: 'builtin:x', action: allow}]",
                "rules[0].name",
            ),
            ("rules: [{name: x, action: maybe}]", "rules[0].action"),
            (
                "rules: [{name: x, action: allow, hosts: ['a*b']}]",
                "host pattern",
            ),
            ("defaultActon: deny", "unknown field"),
        ] {
            let err = Policy::parse(yaml).expect_err(yaml);
            assert!(
                err.contains(needle),
                "{yaml}: expected {needle:?} in {err:?}"
            );
        }
        assert_eq!(
            Policy::parse("").expect("empty is default"),
            Policy::default()
        );
    }

    #[test]
    fn the_api_server_address_is_added_once() {
        let p = Policy::default()
            .with_api_server(Some("10.96.0.1"))
            .with_api_server(Some("10.96.0.1"))
            .with_api_server(None);
        assert_eq!(p.api_server, ["10.96.0.1"]);
    }
}
