//! When the leading controller is ready: every cache it reconciles from has completed its
//! initial list.
//!
//! Readiness is derived from the `InitDone` events of the watches the leader owns, not from
//! `Store::wait_until_ready`. In kube-runtime 5 a store's readiness is a `DelayedInit`
//! around a `futures` oneshot receiver, which keeps the waker of only the task that polled
//! it last: when the Controller's applier and a second task both wait on the same store,
//! one of them is never woken. That is how the controller once reconciled for ever while
//! its `/readyz` stayed 503. [`CacheSync`] keeps its state in a `tokio::sync::watch`
//! channel, which wakes every waiter.
//!
//! Definition (also in README): a standby replica is ready after its first attempt at the
//! Lease that did not win it (it serves nothing that needs a cache, and a rollout of two
//! replicas must finish); the leader is ready once its
//! LogRoute, namespace and Secret-metadata watches have each delivered their first complete
//! list (`InitDone`). A later re-list does not make it unready: the stores keep their last
//! complete state until the new list is complete.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::http::Readiness;

/// A watch whose initial list the leader needs before it is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cache {
    /// LogRoutes in all namespaces: what the Controller reconciles.
    Routes,
    /// Namespace labels: what namespaceSelectors are resolved against.
    Namespaces,
    /// Secret metadata: what re-triggers routes whose credentials change.
    Secrets,
}

impl Cache {
    pub const ALL: [Cache; 3] = [Cache::Routes, Cache::Namespaces, Cache::Secrets];

    fn name(self) -> &'static str {
        match self {
            Cache::Routes => "LogRoutes",
            Cache::Namespaces => "namespaces",
            Cache::Secrets => "Secret metadata",
        }
    }
}

/// Which caches have completed their initial list; sets `readiness` once all have.
/// Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct CacheSync {
    synced: Arc<watch::Sender<BTreeSet<Cache>>>,
    readiness: Readiness,
}

impl CacheSync {
    pub fn new(readiness: Readiness) -> Self {
        Self {
            synced: Arc::new(watch::Sender::new(BTreeSet::new())),
            readiness,
        }
    }

    /// Note a watcher event of `cache`; its first `InitDone` marks it synced.
    pub fn observe<K>(&self, cache: Cache, event: &watcher::Event<K>) {
        if matches!(event, watcher::Event::InitDone) {
            self.mark(cache);
        }
    }

    fn mark(&self, cache: Cache) {
        let mut all_now = false;
        self.synced.send_if_modified(|synced| {
            if !synced.insert(cache) {
                return false;
            }
            debug!(cache = cache.name(), "initial list complete");
            all_now = synced.len() == Cache::ALL.len();
            true
        });
        if all_now {
            info!("caches synced; reconciling");
            self.readiness.set(true);
        }
    }

    /// Whether every cache has completed its initial list.
    pub fn all_synced(&self) -> bool {
        self.synced.borrow().len() == Cache::ALL.len()
    }

    /// Wait until `cache` has completed its initial list (any number of tasks may wait).
    pub async fn synced(&self, cache: Cache) {
        let mut rx = self.synced.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|synced| synced.contains(&cache)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Namespace;

    use super::*;

    fn events(sync: &CacheSync, cache: Cache, list: &[watcher::Event<Namespace>]) {
        for e in list {
            sync.observe(cache, e);
        }
    }

    #[test]
    fn ready_only_once_every_initial_list_is_complete_and_stays_ready_on_a_relist() {
        let readiness = Readiness::default();
        let sync = CacheSync::new(readiness.clone());
        let partial = [
            watcher::Event::Init,
            watcher::Event::InitApply(Namespace::default()),
        ];
        for cache in Cache::ALL {
            events(&sync, cache, &partial);
        }
        assert!(
            !readiness.get(),
            "an initial list in progress is not synced"
        );

        events(&sync, Cache::Secrets, &[watcher::Event::InitDone]);
        events(&sync, Cache::Routes, &[watcher::Event::InitDone]);
        events(&sync, Cache::Routes, &[watcher::Event::InitDone]);
        assert!(
            !readiness.get() && !sync.all_synced(),
            "namespaces not listed yet"
        );

        events(&sync, Cache::Namespaces, &[watcher::Event::InitDone]);
        assert!(readiness.get() && sync.all_synced());

        events(&sync, Cache::Routes, &partial);
        assert!(
            readiness.get(),
            "a re-list in progress keeps the last state"
        );
    }

    /// The failure mode of `Store::wait_until_ready` shared by two tasks: here every
    /// waiter wakes.
    #[tokio::test]
    async fn every_waiter_wakes() {
        let sync = CacheSync::new(Readiness::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = sync.clone();
                tokio::spawn(async move { s.synced(Cache::Namespaces).await })
            })
            .collect();
        tokio::task::yield_now().await;
        sync.mark(Cache::Namespaces);
        for (i, w) in waiters.into_iter().enumerate() {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap_or_else(|_| panic!("waiter {i} was not woken by the namespace InitDone"))
                .expect("waiter task");
        }
        // Waiting for a cache that is already synced returns at once.
        tokio::time::timeout(Duration::from_secs(1), sync.synced(Cache::Namespaces))
            .await
            .expect("already synced");
    }
}
