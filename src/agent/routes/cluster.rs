//! Cluster mode: routes from the controller's compiled ConfigMaps and credential
//! Secrets in the operator namespace, through a list + watch of each.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

use super::{RouteInput, RouteTableManager};
use crate::api::{ROUTE_DOCUMENT_KEY, ROUTE_LABEL};
use crate::route::CompiledRoute;
use crate::sink::Credentials;

/// One event of either watch.
enum Event {
    Map(watcher::Event<ConfigMap>),
    Secret(watcher::Event<Secret>),
}

/// Cluster mode: the compiled ConfigMaps and credential Secrets (label
/// `logroute.dev/route`) of the operator namespace, applied on every change. A document
/// the agent cannot read (a newer version, malformed) is refused loudly and the route's
/// previous version stays in force; a route whose credentials Secret has not arrived yet
/// waits for it.
///
/// The table is first published once *both* initial lists are in (kube's watcher ends
/// each with `InitDone`): before that the manager publishes nothing and the agent reads
/// no container. A re-list after a dropped watch or `410 Gone` is swapped in whole at its
/// `InitDone`, so the table is never rebuilt from a half-filled store. Events that arrive
/// together (a burst, or the ConfigMap and Secret of one route) are applied as one change.
pub async fn watch_cluster(
    client: Client,
    namespace: String,
    mut manager: RouteTableManager,
    stop: CancellationToken,
) {
    let config = watcher::Config::default().labels(ROUTE_LABEL);
    let (maps, mut maps_writer) = reflector::store::<ConfigMap>();
    let (secrets, mut secrets_writer) = reflector::store::<Secret>();
    let map_events = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        config.clone(),
    )
    .default_backoff()
    .map(|e| e.map(Event::Map));
    let secret_events = watcher(Api::<Secret>::namespaced(client, &namespace), config)
        .default_backoff()
        .map(|e| e.map(Event::Secret));
    let mut events = std::pin::pin!(futures::stream::select(map_events, secret_events));
    let (mut maps_synced, mut secrets_synced) = (false, false);
    let mut kept: BTreeMap<String, RouteInput> = BTreeMap::new();
    loop {
        let first = tokio::select! {
            event = events.next() => event,
            _ = stop.cancelled() => return,
        };
        let mut changed = false;
        let mut next = first;
        loop {
            match next {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch of compiled routes failed; retrying with backoff")
                }
                Some(Ok(Event::Map(e))) => {
                    maps_synced |= matches!(e, watcher::Event::InitDone);
                    changed |= settles(&e);
                    maps_writer.apply_watcher_event(&e);
                }
                Some(Ok(Event::Secret(e))) => {
                    secrets_synced |= matches!(e, watcher::Event::InitDone);
                    changed |= settles(&e);
                    secrets_writer.apply_watcher_event(&e);
                }
            }
            // Take whatever else is already there before rebuilding.
            match events.next().now_or_never() {
                Some(event) => next = event,
                None => break,
            }
        }
        if changed && maps_synced && secrets_synced {
            kept = cluster_inputs(&maps, &secrets, &kept);
            manager.apply(kept.clone());
        }
    }
}

/// Whether the event leaves the store in a state worth applying (not mid-list).
fn settles<K>(event: &watcher::Event<K>) -> bool {
    !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_))
}

fn cluster_inputs(
    maps: &Store<ConfigMap>,
    secrets: &Store<Secret>,
    previous: &BTreeMap<String, RouteInput>,
) -> BTreeMap<String, RouteInput> {
    let mut out = BTreeMap::new();
    for cm in maps.state() {
        let name = cm.name_any();
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(ROUTE_DOCUMENT_KEY)) else {
            tracing::error!(configmap = %name, "compiled ConfigMap has no {ROUTE_DOCUMENT_KEY}; ignored");
            continue;
        };
        let document = match CompiledRoute::from_json(text) {
            Ok(d) => d,
            Err(e) => {
                let kept = previous.iter().find(|(_, v)| {
                    crate::route::compiled_object_name(
                        &v.document.route.namespace,
                        &v.document.route.name,
                    ) == name
                });
                tracing::error!(configmap = %name, error = %e, kept_previous = kept.is_some(), "route document refused");
                if let Some((k, v)) = kept {
                    out.insert(k.clone(), v.clone());
                }
                continue;
            }
        };
        let credentials = match &document.credentials_secret {
            None => Credentials::new(),
            Some(secret_name) => {
                let found = secrets
                    .state()
                    .into_iter()
                    .find(|s| s.name_any() == *secret_name);
                match found {
                    Some(s) => s
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone()))
                        .collect(),
                    None => {
                        tracing::warn!(configmap = %name, secret = %secret_name, "credentials Secret not there yet; route waits");
                        continue;
                    }
                }
            }
        };
        out.insert(
            document.route.key(),
            RouteInput {
                document,
                credentials,
            },
        );
    }
    out
}
