//! Pod metadata for containers: the cri-dockerd labels on a Docker container name its pod;
//! the pod itself (labels, annotations, owner) comes from a reflector over this node's
//! pods in a cluster, or from the pod's sandbox container labels on a plain Docker host.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::record::PodInfo;

pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
pub const DOCKER_TYPE_LABEL: &str = "io.kubernetes.docker.type";
/// cri-dockerd (like dockershim) stores pod annotations on the sandbox container as
/// labels with this prefix.
pub const SANDBOX_ANNOTATION_PREFIX: &str = "annotation.";

/// The pod a workload container belongs to, from its cri-dockerd labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container_name: String,
}

/// `Some` for a cri-dockerd workload container; `None` for host containers and sandboxes.
pub fn pod_ref(labels: &BTreeMap<String, String>) -> Option<PodRef> {
    if labels
        .get(DOCKER_TYPE_LABEL)
        .is_some_and(|t| t != "container")
    {
        return None;
    }
    Some(PodRef {
        namespace: labels.get(POD_NAMESPACE_LABEL)?.clone(),
        name: labels.get(POD_NAME_LABEL)?.clone(),
        uid: labels.get(POD_UID_LABEL).cloned().unwrap_or_default(),
        container_name: labels.get(CONTAINER_NAME_LABEL)?.clone(),
    })
}

/// Pod metadata from the API object.
pub fn pod_info_from_pod(r: &PodRef, pod: &Pod) -> PodInfo {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .or(pod.owner_references().first());
    PodInfo {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        uid: pod.metadata.uid.clone().unwrap_or_else(|| r.uid.clone()),
        container_name: r.container_name.clone(),
        labels: pod.labels().clone(),
        annotations: pod.annotations().clone(),
        owner_kind: owner.map(|o| o.kind.clone()),
        owner_name: owner.map(|o| o.name.clone()),
    }
}

/// Pod metadata on a plain Docker host: labels and annotations from the sandbox
/// container's labels when it exists (cri-dockerd copies them there), else only what
/// the workload container's labels say.
pub fn pod_info_from_sandbox(
    r: &PodRef,
    sandbox_labels: Option<&BTreeMap<String, String>>,
) -> PodInfo {
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    for (k, v) in sandbox_labels.into_iter().flatten() {
        if let Some(a) = k.strip_prefix(SANDBOX_ANNOTATION_PREFIX) {
            annotations.insert(a.to_string(), v.clone());
        } else if !k.starts_with("io.kubernetes.") {
            labels.insert(k.clone(), v.clone());
        }
    }
    PodInfo {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        uid: r.uid.clone(),
        container_name: r.container_name.clone(),
        labels,
        annotations,
        owner_kind: None,
        owner_name: None,
    }
}

/// This node's pods, from a list + watch of the API (field selector `spec.nodeName`).
///
/// Two promises the pipeline builds on:
/// - *synced*: [`PodCache::wait_synced`] returns once the initial list is in the cache
///   (kube's watcher sends `InitDone`), so no container is matched against a cache that
///   is still filling. A re-list (after a dropped watch or `410 Gone`) swaps the new list
///   in at once at its `InitDone`: the cache is never empty or half-filled meanwhile.
/// - *departed pods keep their metadata*: a pod deleted from the API (a `DELETED` event,
///   or missing from a re-list) stays answerable by [`PodCache::get`] until
///   [`PodCache::forget`] is called for it — the pipeline does so when Docker removes the
///   pod's last container — so the rest of a deleted pod's log (its shutdown lines) is
///   routed with the same labels, annotations and exclusion as before.
#[derive(Clone)]
pub struct PodCache {
    store: Store<Pod>,
    departed: Arc<Mutex<Departed>>,
    changes: watch::Receiver<u64>,
    synced: watch::Receiver<bool>,
}

/// Deleted pods by (namespace, name), with their last known state.
type Departed = HashMap<(String, String), Arc<Pod>>;

/// Most departed pods kept; past it the oldest half is dropped (a node runs far fewer
/// pods than this at once, so only a leak of `forget` calls could reach it).
const MAX_DEPARTED: usize = 4096;

impl PodCache {
    /// Start watching this node's pods, with managedFields stripped to save memory.
    /// Returns the cache and the future that drives the watch; the caller spawns it.
    pub fn watch(client: Client, node: &str) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (store, mut writer) = reflector::store();
        let (tick, changes) = watch::channel(0u64);
        let (synced_tx, synced) = watch::channel(false);
        let departed: Arc<Mutex<Departed>> = Arc::default();
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = watcher(api, config)
            .default_backoff()
            .modify(|pod| pod.managed_fields_mut().clear());
        let cache = Self {
            store: store.clone(),
            departed: departed.clone(),
            changes,
            synced,
        };
        let driver = async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(error = %e, "pod watch error; retrying with backoff");
                        continue;
                    }
                };
                let before = matches!(event, watcher::Event::InitDone).then(|| store.state());
                if let watcher::Event::Delete(pod) = &event {
                    remember(&departed, Arc::new(pod.clone()));
                }
                writer.apply_watcher_event(&event);
                if let Some(before) = before {
                    // Pods deleted while the watch was down are missing from the re-list.
                    for pod in before {
                        let r = ObjectRef::from_obj(pod.as_ref());
                        if store.get(&r).is_none() {
                            remember(&departed, pod);
                        }
                    }
                    synced_tx.send_replace(true);
                }
                if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                    tick.send_modify(|n| *n += 1);
                }
            }
        };
        (cache, driver)
    }

    /// Wait until the initial list is in the cache; false when the watch ended first.
    pub async fn wait_synced(&self) -> bool {
        let mut synced = self.synced.clone();
        synced.wait_for(|s| *s).await.is_ok()
    }

    /// The pod, also when it was deleted from the API and not forgotten yet.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.store
            .get(&ObjectRef::new(name).within(namespace))
            .or_else(|| {
                lock(&self.departed)
                    .get(&(namespace.to_string(), name.to_string()))
                    .cloned()
            })
    }

    /// The pod's metadata is no longer needed (Docker removed its containers).
    pub fn forget(&self, namespace: &str, name: &str) {
        lock(&self.departed).remove(&(namespace.to_string(), name.to_string()));
    }

    /// Deleted pods whose metadata is still kept.
    pub fn departed(&self) -> usize {
        lock(&self.departed).len()
    }

    /// A receiver that changes whenever any pod of the node changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn remember(departed: &Mutex<Departed>, pod: Arc<Pod>) {
    let mut map = lock(departed);
    if map.len() >= MAX_DEPARTED {
        let drop: Vec<_> = map.keys().take(MAX_DEPARTED / 2).cloned().collect();
        for k in drop {
            map.remove(&k);
        }
    }
    map.insert((pod.namespace().unwrap_or_default(), pod.name_any()), pod);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn workload_containers_name_their_pod_and_sandboxes_do_not() {
        let workload = labels(&[
            (POD_NAME_LABEL, "web-1"),
            (POD_NAMESPACE_LABEL, "shop"),
            (POD_UID_LABEL, "u1"),
            (CONTAINER_NAME_LABEL, "nginx"),
            (DOCKER_TYPE_LABEL, "container"),
        ]);
        let r = pod_ref(&workload).expect("pod container");
        assert_eq!(
            (
                r.namespace.as_str(),
                r.name.as_str(),
                r.container_name.as_str()
            ),
            ("shop", "web-1", "nginx")
        );
        let mut sandbox = workload.clone();
        sandbox.insert(DOCKER_TYPE_LABEL.into(), "podsandbox".into());
        assert_eq!(pod_ref(&sandbox), None);
        assert_eq!(pod_ref(&labels(&[("com.example", "x")])), None);
    }

    #[test]
    fn sandbox_labels_give_pod_labels_and_annotations() {
        let r = PodRef {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "u1".into(),
            container_name: "nginx".into(),
        };
        let sandbox = labels(&[
            ("app", "web"),
            (POD_NAME_LABEL, "web-1"),
            ("annotation.logroute.dev/exclude", "true"),
        ]);
        let info = pod_info_from_sandbox(&r, Some(&sandbox));
        assert_eq!(info.labels, labels(&[("app", "web")]));
        assert_eq!(
            info.annotations
                .get("logroute.dev/exclude")
                .map(String::as_str),
            Some("true")
        );
    }
}
