//! Egress rules: may a route's sink connect to this destination?
//!
//! [`EgressRules`] are the operator's egress policy as it applies to one LogRoute (see
//! [`crate::route::policy`]), compiled into the route document's sinks. The same pure
//! function [`EgressRules::check`] answers twice:
//! - the controller asks at compile time, with the host as written (a name, or an
//!   address literal), so that a refused destination never reaches an agent and the
//!   LogRoute's status names the rule;
//! - the agent's sink transports ask again at connect time for every address the name
//!   resolved to, because DNS can change (or be made to change) after compilation.
//!
//! Order of evaluation:
//! 1. Built-in denials, for every tenant: loopback and unspecified addresses (and
//!    `localhost`), link-local addresses (169.254.0.0/16 — the cloud metadata endpoint —
//!    and fe80::/10) and the Kubernetes API server (its Service names and the addresses
//!    the controller learned). Only an `allow` rule that names the destination itself —
//!    a CIDR holding the address, or a host pattern matching the name — lifts one: an
//!    allowed *name* never unlocks the address it resolves to.
//! 2. The operator's rules, in order; the first that matches decides.
//! 3. The policy's default action.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as the IPv4 address they carry.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Rule name of the built-in loopback denial.
pub const BUILTIN_LOOPBACK: &str = "builtin:loopback";
/// Rule name of the built-in link-local denial (cloud metadata endpoints live here).
pub const BUILTIN_LINK_LOCAL: &str = "builtin:link-local";
/// Rule name of the built-in API server denial.
pub const BUILTIN_API_SERVER: &str = "builtin:api-server";
/// Rule name reported when no rule matched and the default action refused.
pub const DEFAULT_RULE: &str = "default";

/// Names under which Pods reach the API server (plus any cluster domain suffix).
const API_SERVER_NAMES: &[&str] = &["kubernetes", "kubernetes.default", "kubernetes.default.svc"];

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// How a sink talks to its destination.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Udp,
    Tcp,
    Tls,
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Udp => "udp",
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One operator rule, already known to apply to the route's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    pub name: String,
    pub action: Action,
    /// Host patterns: an exact name, or `*.suffix` for any name below `suffix`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Address ranges, `a.b.c.d/n` or `x::/n` (a bare address is a /32 or /128).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Ports; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Schemes; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemes: Vec<Scheme>,
}

/// The effective egress rules of one route. Absent from a sink (`None`) means
/// unrestricted: an operator-namespace route, or a document from `--routes` files.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EgressRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<EgressRule>,
    /// Extra API server names and addresses (the controller adds the ClusterIP it
    /// learned from `KUBERNETES_SERVICE_HOST`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_server: Vec<String>,
    #[serde(default)]
    pub default_action: Action,
}

/// A destination as far as it is known: the host as written (name or address literal),
/// the address it resolved to (at connect time), the port and the scheme.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    pub host: &'a str,
    pub address: Option<IpAddr>,
    pub port: u16,
    pub scheme: Scheme,
}

/// The answer for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused by the rule of this name.
    Deny {
        rule: String,
    },
    /// Compile time only: a rule that decides by address applies, and a name has no
    /// address until the agent resolves it; the agent decides.
    Deferred {
        rule: String,
    },
}

impl EgressRules {
    /// Judge a destination; see the module documentation for the order.
    pub fn check(&self, dest: &Destination<'_>) -> Verdict {
        let name = normalize_name(dest.host);
        let literal = name.parse::<IpAddr>().ok();
        let address = dest.address.or(literal).map(canonical);
        let name_for_patterns = literal.is_none().then_some(name.as_str());

        if let Some(builtin) = self.builtin(name_for_patterns, address) {
            let lifted = self.rules.iter().any(|r| {
                r.action == Action::Allow
                    && r.applies_to(dest)
                    && match builtin.1 {
                        Matched::Address => address.is_some_and(|a| r.cidr_holds(a)),
                        Matched::Name => name_for_patterns.is_some_and(|n| r.host_matches(n)),
                    }
            });
            if !lifted {
                return Verdict::Deny {
                    rule: builtin.0.to_string(),
                };
            }
        }
        for rule in &self.rules {
            if !rule.applies_to(dest) {
                continue;
            }
            let any_host = rule.hosts.is_empty() && rule.cidrs.is_empty();
            let by_name = name_for_patterns.is_some_and(|n| rule.host_matches(n));
            let by_address = address.is_some_and(|a| rule.cidr_holds(a));
            if any_host || by_name || by_address {
                return match rule.action {
                    Action::Allow => Verdict::Allow,
                    Action::Deny => Verdict::Deny {
                        rule: rule.name.clone(),
                    },
                };
            }
            if address.is_none() && !rule.cidrs.is_empty() {
                return Verdict::Deferred {
                    rule: rule.name.clone(),
                };
            }
        }
        match self.default_action {
            Action::Allow => Verdict::Allow,
            Action::Deny => Verdict::Deny {
                rule: DEFAULT_RULE.to_string(),
            },
        }
    }

    /// The built-in denial that hits this name or address, and by which of the two.
    fn builtin(
        &self,
        name: Option<&str>,
        address: Option<IpAddr>,
    ) -> Option<(&'static str, Matched)> {
        if let Some(a) = address {
            if a.is_loopback() || a.is_unspecified() {
                return Some((BUILTIN_LOOPBACK, Matched::Address));
            }
            if is_link_local(a) {
                return Some((BUILTIN_LINK_LOCAL, Matched::Address));
            }
            let api = self
                .api_server
                .iter()
                .filter_map(|s| s.parse::<IpAddr>().ok())
                .any(|s| canonical(s) == a);
            if api {
                return Some((BUILTIN_API_SERVER, Matched::Address));
            }
        }
        if let Some(n) = name {
            if n == "localhost" || n.ends_with(".localhost") {
                return Some((BUILTIN_LOOPBACK, Matched::Name));
            }
            let api = API_SERVER_NAMES.contains(&n)
                || n.starts_with("kubernetes.default.svc.")
                || self.api_server.iter().any(|s| normalize_name(s) == n);
            if api {
                return Some((BUILTIN_API_SERVER, Matched::Name));
            }
        }
        None
    }
}

#[derive(Clone, Copy)]
enum Matched {
    Address,
    Name,
}

impl EgressRule {
    fn applies_to(&self, dest: &Destination<'_>) -> bool {
        (self.ports.is_empty() || self.ports.contains(&dest.port))
            && (self.schemes.is_empty() || self.schemes.contains(&dest.scheme))
    }

    fn host_matches(&self, name: &str) -> bool {
        self.hosts.iter().any(|p| host_pattern_matches(p, name))
    }

    fn cidr_holds(&self, address: IpAddr) -> bool {
        self.cidrs
            .iter()
            .filter_map(|c| Cidr::parse(c).ok())
            .any(|c| c.contains(address))
    }
}

/// Host, port and scheme of an `http(s)://host[:port][/path]` URL (ports default to 80
/// and 443); `None` when it is not such a URL.
pub fn url_destination(url: &str) -> Option<(String, u16, Scheme)> {
    let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest, 443)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest, 80)
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then(|| (host.to_string(), port, scheme))
}

/// `*.example.com` matches names strictly below `example.com`; anything else matches
/// exactly. Case and a trailing dot are ignored.
pub fn host_pattern_matches(pattern: &str, name: &str) -> bool {
    let pattern = normalize_name(pattern);
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == name,
    }
}

fn normalize_name(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// An address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `x::/n`, or a bare address.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let base: IpAddr = addr.parse().map_err(|_| {
            format!("{s:?} is not an address range (write e.g. 10.0.0.0/8 or fd00::/8)")
        })?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { base, prefix })
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.base, canonical(a)) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                prefix_eq(u32::from(b).into(), u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                prefix_eq(u128::from(b), u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
