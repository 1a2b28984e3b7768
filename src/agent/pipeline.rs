//! Which containers are read and who they are: one task per running workload container
//! (see [`crate::agent::container`] for what the task does), its pod metadata, and the
//! containers never read at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::checkpoint::Checkpoints;
use crate::agent::container;
use crate::agent::docker::{ContainerEvent, Cursor, DockerContainer, ReadOptions};
use crate::agent::pods::{self, PodCache, PodRef};
use crate::agent::routes::RouteTable;
use crate::api::EXCLUDE_KEY;
use crate::metrics::AgentMetrics;
use crate::record::{ContainerInfo, PodInfo};

/// How long a container whose pod is not in the cache yet waits for it before being
/// routed with the metadata its Docker labels carry.
pub const POD_WAIT: Duration = Duration::from_secs(5);

/// Everything container tasks share.
pub struct AgentContext {
    pub docker: bollard::Docker,
    pub node: String,
    pub metrics: AgentMetrics,
    pub routes: watch::Receiver<Arc<RouteTable>>,
    /// This node's pods (cluster mode); `None` on a plain Docker host, where pod labels
    /// come from sandbox containers.
    pub pods: Option<PodCache>,
    pub identity: SelfIdentity,
    pub read: ReadOptions,
    /// Where a (container, sink) lane without a checkpoint starts reading: decided at
    /// the agent's start from the checkpoint file (see `Agent::start`).
    pub start: Cursor,
    /// The earliest position any lane starts at without a checkpoint: after a clean
    /// restart, shortly before the previous agent's last heartbeat (what came before
    /// was delivered or checkpointed); otherwise the beginning of the log.
    pub restart_floor: Cursor,
    /// How long a lane whose route went away keeps its checkpoint (`--route-grace-seconds`).
    pub route_grace: Duration,
    pub checkpoints: Arc<Checkpoints>,
    /// Limits the Docker streams open for lagging lanes (`--catchup-streams`).
    pub catchups: Arc<Semaphore>,
    /// Numbers lanes, to route catch-up messages.
    pub next_lane: AtomicU64,
    /// Where detached lanes keep what they miss (`--spill-bytes`; `None`: disabled).
    pub spill: Option<Arc<crate::agent::spill::SpillBudget>>,
    pub stop: CancellationToken,
}

/// How the agent recognises its own container, so its logs are never forwarded.
#[derive(Clone, Debug, Default)]
pub struct SelfIdentity {
    /// Docker id (or prefix) of the agent's own container, when it runs in one.
    pub container_id: Option<String>,
    /// `(namespace, pod name)` of the agent's pod (downward API).
    pub pod: Option<(String, String)>,
}

impl SelfIdentity {
    fn is_self(&self, c: &DockerContainer) -> bool {
        let by_id = self
            .container_id
            .as_deref()
            .is_some_and(|id| !id.is_empty() && c.id.starts_with(id));
        let by_pod = self.pod.as_ref().is_some_and(|(ns, name)| {
            pods::pod_ref(&c.labels).is_some_and(|r| r.namespace == *ns && r.name == *name)
        });
        by_id || by_pod
    }

    /// The agent's own container id, as the kernel shows it in this process's mounts
    /// (Docker bind-mounts `/etc/hostname` from `/var/lib/docker/containers/<id>/`).
    pub fn detect_container_id() -> Option<String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mounts.lines().find_map(|line| {
            let (_, rest) = line.split_once("/containers/")?;
            let id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            (id.len() == 64).then_some(id)
        })
    }
}

/// Follow Docker's container events: one task per running workload container. Nothing
/// is read before `ready` turns true (routes and pods synced, see `Agent::start`).
pub async fn manage(
    ctx: Arc<AgentContext>,
    mut events: mpsc::Receiver<ContainerEvent>,
    mut ready: watch::Receiver<bool>,
) {
    tokio::select! {
        r = ready.wait_for(|r| *r) => if r.is_err() { return },
        _ = ctx.stop.cancelled() => return,
    }
    // Each container's task, and the token that tells it Docker removed the container.
    let mut tasks: HashMap<String, (tokio::task::JoinHandle<()>, CancellationToken)> =
        HashMap::new();
    // The pod of each workload container seen, to forget a deleted pod's metadata once
    // Docker removed the last of its containers.
    let mut pod_of: HashMap<String, (String, String)> = HashMap::new();
    while let Some(event) = events.recv().await {
        tasks.retain(|_, (t, _)| !t.is_finished());
        let container = match event {
            ContainerEvent::Running(container) => container,
            ContainerEvent::Removed { id } => {
                // Its log is gone: so are its checkpoints. Its task, if it still has
                // sinks behind, gives them what their spills hold and counts the rest.
                ctx.checkpoints.forget_container(&id);
                if let Some((_, removed)) = tasks.get(&id) {
                    removed.cancel();
                }
                if let (Some(pod), Some(cache)) = (pod_of.remove(&id), &ctx.pods)
                    && !pod_of.values().any(|p| *p == pod)
                {
                    cache.forget(&pod.0, &pod.1);
                }
                continue;
            }
            ContainerEvent::Stopped { .. } => continue,
        };
        if let Some(r) = pods::pod_ref(&container.labels) {
            pod_of.insert(container.id.clone(), (r.namespace, r.name));
        }
        if tasks.contains_key(&container.id) {
            continue;
        }
        if let Some(why) = static_exclusion(&ctx.identity, &container) {
            tracing::debug!(container = %container.name, why, "not forwarding this container");
            continue;
        }
        let id = container.id.clone();
        let ctx = ctx.clone();
        let removed = CancellationToken::new();
        let gone = removed.clone();
        tasks.insert(
            id,
            (
                tokio::spawn(
                    async move { container::follow_container(ctx, container, gone).await },
                ),
                removed,
            ),
        );
    }
    for (_, (task, _)) in tasks {
        let _ = task.await;
    }
}

/// Containers that are never read at all.
fn static_exclusion(identity: &SelfIdentity, c: &DockerContainer) -> Option<&'static str> {
    if c.cri_sandbox {
        Some("pod sandbox")
    } else if identity.is_self(c) {
        Some("the agent itself")
    } else if !c.logs_readable() {
        Some(
            "its log driver cannot be read through the Docker API (use json-file, local or journald)",
        )
    } else if c.logspout_ignore {
        Some("env LOGSPOUT=ignore")
    } else if c.labels.get(EXCLUDE_KEY).is_some_and(|v| v == "true") {
        Some("label logroute.dev/exclude=true")
    } else {
        None
    }
}

pub(super) async fn resolve_info(
    ctx: &AgentContext,
    c: &DockerContainer,
    pod_ref: Option<&PodRef>,
) -> ContainerInfo {
    let Some(r) = pod_ref else {
        return container_info(ctx, c, None);
    };
    if let Some(cache) = &ctx.pods {
        let mut changes = cache.changes();
        let waited = tokio::time::timeout(POD_WAIT, async {
            loop {
                if cache.get(&r.namespace, &r.name).is_some() {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(namespace = %r.namespace, pod = %r.name, "pod not in the cache after {POD_WAIT:?}; routing with Docker labels only");
        }
    }
    resolve_info_now(ctx, c, r).await
}

pub(super) async fn resolve_info_now(
    ctx: &AgentContext,
    c: &DockerContainer,
    r: &PodRef,
) -> ContainerInfo {
    let pod = match &ctx.pods {
        Some(cache) => match cache.get(&r.namespace, &r.name) {
            Some(pod) => pods::pod_info_from_pod(r, &pod),
            None => pods::pod_info_from_sandbox(r, None),
        },
        None => pods::pod_info_from_sandbox(r, sandbox_labels(&ctx.docker, &r.uid).await.as_ref()),
    };
    container_info(ctx, c, Some(pod))
}

/// Labels of a pod's sandbox container (plain Docker host mode).
async fn sandbox_labels(
    docker: &bollard::Docker,
    pod_uid: &str,
) -> Option<BTreeMap<String, String>> {
    if pod_uid.is_empty() {
        return None;
    }
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![
            format!("{}={pod_uid}", pods::POD_UID_LABEL),
            format!("{}=podsandbox", pods::DOCKER_TYPE_LABEL),
        ],
    )]);
    let options = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let list = docker.list_containers(Some(options)).await.ok()?;
    list.into_iter()
        .find_map(|s| s.labels)
        .map(|l| l.into_iter().collect())
}

fn container_info(ctx: &AgentContext, c: &DockerContainer, pod: Option<PodInfo>) -> ContainerInfo {
    ContainerInfo {
        id: c.id.clone(),
        name: c.name.clone(),
        image: c.image.clone(),
        labels: c.labels.clone(),
        node: ctx.node.clone(),
        pod,
    }
}
