//! What the controller remembers about each LogRoute between reconciles: the Secrets it
//! referenced (to re-trigger it when one changes), whether it selects namespaces (to
//! re-trigger it when namespace labels change), its Ready state (for the `routes` gauge)
//! and which compiled objects it last left behind (to skip needless deletes).
//!
//! A pure state machine: reconcile feeds it, the trigger streams and metrics read it.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::reflector::ObjectRef;

use super::Guarded;

/// `namespace/name` of a LogRoute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub namespace: String,
    pub name: String,
}

impl RouteKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn object_ref(&self) -> ObjectRef<Guarded> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether a compiled object is known to exist. `None` after a restart: unknown, so the
/// controller deletes rather than assumes.
pub type Known = Option<bool>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    /// Secrets `(namespace, name)` the route's spec refers to, found or not.
    secrets: BTreeSet<(String, String)>,
    namespace_selector: bool,
    ready: Option<bool>,
    config_map: Known,
    secret: Known,
    /// What was last reported for an object that does not read as a LogRoute.
    malformed_reported: Option<String>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RouteIndex {
    routes: BTreeMap<RouteKey, Entry>,
}

impl RouteIndex {
    /// Record what the route's current spec refers to. Called before the Secrets are read,
    /// so that a Secret created while the route is being reconciled still re-triggers it.
    pub fn set_refs(
        &mut self,
        key: &RouteKey,
        secrets: BTreeSet<(String, String)>,
        namespace_selector: bool,
    ) {
        let entry = self.routes.entry(key.clone()).or_default();
        entry.secrets = secrets;
        entry.namespace_selector = namespace_selector;
    }

    pub fn set_ready(&mut self, key: &RouteKey, ready: bool) {
        self.routes.entry(key.clone()).or_default().ready = Some(ready);
    }

    pub fn set_config_map(&mut self, key: &RouteKey, exists: bool) {
        self.routes.entry(key.clone()).or_default().config_map = Some(exists);
    }

    pub fn set_secret(&mut self, key: &RouteKey, exists: bool) {
        self.routes.entry(key.clone()).or_default().secret = Some(exists);
    }

    pub fn config_map(&self, key: &RouteKey) -> Known {
        self.routes.get(key).and_then(|e| e.config_map)
    }

    pub fn secret(&self, key: &RouteKey) -> Known {
        self.routes.get(key).and_then(|e| e.secret)
    }

    pub fn malformed_reported(&self, key: &RouteKey) -> Option<&str> {
        self.routes
            .get(key)
            .and_then(|e| e.malformed_reported.as_deref())
    }

    pub fn set_malformed_reported(&mut self, key: &RouteKey, fingerprint: Option<String>) {
        self.routes
            .entry(key.clone())
            .or_default()
            .malformed_reported = fingerprint;
    }

    /// Forget a route (it was deleted and cleaned up).
    pub fn remove(&mut self, key: &RouteKey) {
        self.routes.remove(key);
    }

    /// Routes that referred to this Secret when last reconciled.
    pub fn routes_for_secret(&self, namespace: &str, name: &str) -> Vec<RouteKey> {
        self.routes
            .iter()
            .filter(|(_, e)| e.secrets.iter().any(|(ns, n)| ns == namespace && n == name))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Routes that use a namespaceSelector.
    pub fn routes_with_namespace_selector(&self) -> Vec<RouteKey> {
        self.routes
            .iter()
            .filter(|(_, e)| e.namespace_selector)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// `(ready, not ready)` counts of routes reconciled at least once.
    pub fn ready_counts(&self) -> (i64, i64) {
        let ready = self
            .routes
            .values()
            .filter(|e| e.ready == Some(true))
            .count();
        let not_ready = self
            .routes
            .values()
            .filter(|e| e.ready == Some(false))
            .count();
        (ready as i64, not_ready as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn secret_changes_map_to_the_routes_that_referenced_them() {
        let mut index = RouteIndex::default();
        let a = RouteKey::new("team-a", "errors");
        let b = RouteKey::new("team-b", "all");
        index.set_refs(
            &a,
            secrets(&[("team-a", "es-creds"), ("team-a", "ca")]),
            false,
        );
        index.set_refs(&b, secrets(&[("team-b", "es-creds")]), true);

        assert_eq!(
            index.routes_for_secret("team-a", "es-creds"),
            vec![a.clone()]
        );
        assert_eq!(
            index.routes_for_secret("team-b", "es-creds"),
            vec![b.clone()]
        );
        assert!(index.routes_for_secret("team-c", "es-creds").is_empty());
        assert_eq!(index.routes_with_namespace_selector(), vec![b.clone()]);

        // A new spec without the reference stops the re-trigger.
        index.set_refs(&a, secrets(&[("team-a", "ca")]), false);
        assert!(index.routes_for_secret("team-a", "es-creds").is_empty());

        index.remove(&b);
        assert!(index.routes_for_secret("team-b", "es-creds").is_empty());
        assert!(index.routes_with_namespace_selector().is_empty());
    }

    #[test]
    fn ready_counts_follow_the_last_reconcile_of_each_route() {
        let mut index = RouteIndex::default();
        let a = RouteKey::new("ns", "a");
        let b = RouteKey::new("ns", "b");
        index.set_ready(&a, true);
        index.set_ready(&b, true);
        assert_eq!(index.ready_counts(), (2, 0));
        index.set_ready(&b, false);
        assert_eq!(index.ready_counts(), (1, 1));
        index.remove(&a);
        assert_eq!(index.ready_counts(), (0, 1));
        // Known-objects state is independent and unknown until set.
        assert_eq!(index.config_map(&b), None);
        index.set_config_map(&b, false);
        index.set_secret(&b, true);
        assert_eq!(
            (index.config_map(&b), index.secret(&b)),
            (Some(false), Some(true))
        );
    }
}
