//! Everything a reconcile needs, passed by `Arc` (no globals), so that tests can build one
//! around a scripted API server.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use super::error::Error;
use super::index::{RouteIndex, RouteKey};
use crate::metrics::ControllerMetrics;
use crate::route::Policy;

/// First retry after a failed reconcile; doubles per consecutive failure of the object.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
/// Longest wait between retries of a failing object.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    /// Where compiled objects live; the only namespace whose LogRoutes may select other
    /// namespaces or host containers.
    pub operator_namespace: String,
    pub metrics: ControllerMetrics,
    pub recorder: Recorder,
    /// Every namespace with its labels (metadata only), to resolve namespaceSelectors.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// The operator's tenancy policy (egress, stdout, plain-HTTP credentials).
    pub policy: Policy,
    index: Mutex<RouteIndex>,
    failures: Mutex<HashMap<RouteKey, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        operator_namespace: String,
        metrics: ControllerMetrics,
        recorder: Recorder,
        namespaces: Store<PartialObjectMeta<Namespace>>,
    ) -> Self {
        Self {
            client,
            operator_namespace,
            metrics,
            recorder,
            namespaces,
            policy: Policy::default(),
            index: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Compile under this policy instead of [`Policy::default`].
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The route index. Never held across an `.await`.
    pub fn index(&self) -> MutexGuard<'_, RouteIndex> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publish the `routes{ready}` gauge from the index.
    pub fn refresh_route_gauge(&self) {
        let (ready, not_ready) = self.index().ready_counts();
        self.metrics.routes.with_label_values(&["true"]).set(ready);
        self.metrics
            .routes
            .with_label_values(&["false"])
            .set(not_ready);
    }

    /// Every namespace and its labels, once the namespace cache has been filled.
    pub async fn namespace_list(&self) -> Result<Vec<(String, BTreeMap<String, String>)>, Error> {
        self.namespaces
            .wait_until_ready()
            .await
            .map_err(|_| Error::NamespaceCacheGone)?;
        let mut list: Vec<_> = self
            .namespaces
            .state()
            .iter()
            .filter_map(|ns| {
                let name = ns.metadata.name.clone()?;
                Some((name, ns.metadata.labels.clone().unwrap_or_default()))
            })
            .collect();
        list.sort();
        Ok(list)
    }

    /// Count one more consecutive failure of `key` and say how long to wait before retrying.
    pub fn next_retry(&self, key: &RouteKey) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    /// The object reconciled: its next failure starts the backoff afresh.
    pub fn reset_failures(&self, key: &RouteKey) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failures.remove(key);
    }
}

/// Delay before retry number `failures` (1-based), without jitter: 5s, 10s, 20s ... 300s.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
