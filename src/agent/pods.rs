//! Pod metadata for containers: the cri-dockerd labels on a Docker container name its pod;
//! the pod itself (labels, annotations, owner) comes from a reflector over this node's
//! pods in a cluster, or from the pod's sandbox container labels on a plain Docker host.

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// This node's pods, kept by a reflector over the API server (tests run one: the
/// watch, its initial list and its re-lists are what they exercise).
#[derive(Clone)]
pub struct PodCache {
    store: Store<Pod>,
    changes: watch::Receiver<u64>,
}

impl PodCache {
    /// A cache over a store someone else writes; `changes` ticks on every pod event.
    pub fn new(store: Store<Pod>, changes: watch::Receiver<u64>) -> Self {
        Self { store, changes }
    }

    /// Start watching this node's pods (field selector `spec.nodeName`), with
    /// managedFields stripped to save memory. Returns the cache and the future that
    /// drives the watch; the caller spawns it.
    pub fn watch(client: Client, node: &str) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        let (tick, changes) = watch::channel(0u64);
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = watcher(api, config)
            .default_backoff()
            .modify(|pod| pod.managed_fields_mut().clear())
            .reflect(writer)
            .touched_objects();
        let driver = async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => {
                        tick.send_modify(|n| *n += 1);
                    }
                    Err(e) => tracing::warn!(error = %e, "pod watch error; retrying with backoff"),
                }
            }
        };
        (Self::new(store, changes), driver)
    }

    pub async fn wait_until_ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// A receiver that changes whenever any pod of the node changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
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
