//! The agent's half of the egress policy: every address a sink is about to connect to is
//! checked against the route's [`EgressRules`] (compiled into the sink's configuration by
//! the controller) after DNS resolution, so a name that resolves to the metadata endpoint
//! or the API server — now, though not at compile time — is never connected to.
//!
//! Refused addresses are counted (`logroute_agent_egress_refused_total{kind, route,
//! sink, rule}`; the rule names come from the operator's bounded policy) and, when no
//! address is left, the connection attempt fails with [`EgressRefused`].

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use prometheus::IntCounterVec;

use super::SinkContext;
use crate::route::egress::{Destination, EgressRules, Scheme, Verdict};

/// No address of `host` may be connected to.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the operator's egress policy refuses {host} at {address} (rule {rule:?}); the route's sink may not send there — ask the cluster operator, or change the destination"
)]
pub struct EgressRefused {
    pub host: String,
    pub address: IpAddr,
    pub rule: String,
}

/// The connect-time check of one sink.
#[derive(Clone)]
pub struct EgressGuard {
    rules: Arc<EgressRules>,
    kind: &'static str,
    route: String,
    sink: String,
    refused: IntCounterVec,
}

impl EgressGuard {
    /// `None` when the sink is unrestricted (no rules in its configuration).
    pub fn new(rules: Option<&EgressRules>, kind: &'static str, ctx: &SinkContext) -> Option<Self> {
        Some(Self {
            rules: Arc::new(rules?.clone()),
            kind,
            route: ctx.route.clone(),
            sink: ctx.sink.clone(),
            refused: ctx.metrics.egress_refused.clone(),
        })
    }

    /// Judge one resolved address; a refusal is counted.
    pub fn check(
        &self,
        host: &str,
        address: SocketAddr,
        scheme: Scheme,
    ) -> Result<(), EgressRefused> {
        let dest = Destination {
            host,
            address: Some(address.ip()),
            port: address.port(),
            scheme,
        };
        match self.rules.check(&dest) {
            Verdict::Allow => Ok(()),
            // With an address every rule can decide; treat the impossible as a refusal.
            Verdict::Deny { rule } | Verdict::Deferred { rule } => {
                self.refused
                    .with_label_values(&[self.kind, &self.route, &self.sink, &rule])
                    .inc();
                Err(EgressRefused {
                    host: host.to_string(),
                    address: address.ip(),
                    rule,
                })
            }
        }
    }

    /// The addresses that may be connected to, in their order; the first refusal when
    /// none may.
    pub fn filter(
        &self,
        host: &str,
        addresses: Vec<SocketAddr>,
        scheme: Scheme,
    ) -> Result<Vec<SocketAddr>, EgressRefused> {
        let mut allowed = Vec::with_capacity(addresses.len());
        let mut first_refusal = None;
        for a in addresses {
            match self.check(host, a, scheme) {
                Ok(()) => allowed.push(a),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        match (allowed.is_empty(), first_refusal) {
            (true, Some(refusal)) => Err(refusal),
            _ => Ok(allowed),
        }
    }
}

/// A hyper resolver that resolves with the system resolver and then drops every address
/// the egress policy refuses, for each (port, scheme) the sink uses with that host.
#[derive(Clone)]
pub struct GuardedResolver {
    guard: Option<EgressGuard>,
    /// Host → the (port, scheme) pairs of the endpoints that name it.
    targets: Arc<Vec<(String, u16, Scheme)>>,
}

impl GuardedResolver {
    pub fn new(guard: Option<EgressGuard>, targets: Vec<(String, u16, Scheme)>) -> Self {
        Self {
            guard,
            targets: Arc::new(targets),
        }
    }

    async fn resolve(self, name: Name) -> Result<std::vec::IntoIter<SocketAddr>, BoxError> {
        let host = name.as_str().to_string();
        let resolved: Vec<SocketAddr> =
            tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
        let Some(guard) = &self.guard else {
            return Ok(resolved.into_iter());
        };
        let uses: Vec<(u16, Scheme)> = self
            .targets
            .iter()
            .filter(|(h, _, _)| h.eq_ignore_ascii_case(&host))
            .map(|(_, port, scheme)| (*port, *scheme))
            .collect();
        let mut allowed = resolved;
        for (port, scheme) in uses {
            let with_port: Vec<SocketAddr> = allowed
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect();
            allowed = guard.filter(&host, with_port, scheme)?;
        }
        // The connector sets the port itself.
        Ok(allowed
            .into_iter()
            .map(|a| SocketAddr::new(a.ip(), 0))
            .collect::<Vec<_>>()
            .into_iter())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(self.clone().resolve(name))
    }
}

/// The egress refusal somewhere in an error's source chain (hyper wraps the resolver's).
pub fn refusal_in<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressRefused> {
    loop {
        if let Some(r) = e.downcast_ref::<EgressRefused>() {
            return Some(r);
        }
        e = e.source()?;
    }
}
