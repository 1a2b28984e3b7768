//! Per-container work: resolve who the container is, match it against the route table
//! once, then read → (multiline) → filter → queue, re-matching only when the route table
//! or the container's pod changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::docker::{self, ContainerEvent, Cursor, DockerContainer, LogLine, ReadOptions};
use crate::agent::multiline::{Joined, Joiner};
use crate::agent::pods::{self, PodCache, PodRef};
use crate::agent::routes::{ActiveRoute, RouteTable};
use crate::api::{EXCLUDE_KEY, StreamName};
use crate::metrics::AgentMetrics;
use crate::record::{ContainerInfo, PodInfo, Record};
use crate::route::matcher::Filtered;

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
    /// Where reading starts for a container with no checkpoint: the agent's start.
    pub start: Cursor,
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

/// Follow Docker's container events: one task per running workload container.
pub async fn manage(ctx: Arc<AgentContext>, mut events: mpsc::Receiver<ContainerEvent>) {
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some(event) = events.recv().await {
        tasks.retain(|_, t| !t.is_finished());
        let ContainerEvent::Running(container) = event else {
            continue;
        };
        if tasks.contains_key(&container.id) {
            continue;
        }
        if let Some(why) = static_exclusion(&ctx.identity, &container) {
            tracing::debug!(container = %container.name, why, "not forwarding this container");
            continue;
        }
        let id = container.id.clone();
        let ctx = ctx.clone();
        tasks.insert(
            id,
            tokio::spawn(async move { follow_container(ctx, container).await }),
        );
    }
    for (_, task) in tasks {
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

async fn follow_container(ctx: Arc<AgentContext>, container: DockerContainer) {
    let pod_ref = pods::pod_ref(&container.labels);
    let mut pod_changes = ctx.pods.as_ref().map(PodCache::changes);
    let mut routes_rx = ctx.routes.clone();
    let info = resolve_info(&ctx, &container, pod_ref.as_ref()).await;
    let mut router = Router::new(info, ctx.read.max_line_bytes);
    router.rematch(&routes_rx.borrow_and_update());
    tracing::info!(container = %container.name, routes = router.routes.len(), "following container");

    let (tx, mut rx) = mpsc::channel::<Vec<LogLine>>(8);
    let reader = {
        let ctx = ctx.clone();
        let container = container.clone();
        tokio::spawn(async move {
            docker::follow(
                &ctx.docker,
                &container,
                Some(ctx.start),
                &ctx.read,
                &tx,
                &ctx.metrics,
                &ctx.stop,
            )
            .await
        })
    };
    loop {
        let deadline = router.next_deadline();
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(lines) => router.route_lines(&lines, Instant::now()).await,
                None => break,
            },
            changed = routes_rx.changed() => {
                if changed.is_err() { break; }
                let table = routes_rx.borrow_and_update().clone();
                router.flush_all().await;
                router.rematch(&table);
            }
            Some(()) = wait_changed(&mut pod_changes) => {
                if let Some(r) = &pod_ref {
                    let info = resolve_info_now(&ctx, &container, r).await;
                    if info != *router.info {
                        router.flush_all().await;
                        router.info = Arc::new(info);
                        router.rematch(&routes_rx.borrow());
                    }
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => router.flush_due(Instant::now()).await,
        }
    }
    router.flush_all().await;
    match reader.await {
        Ok(Ok(_)) => tracing::info!(container = %container.name, "container log read to the end"),
        Ok(Err(e)) => {
            tracing::warn!(container = %container.name, error = %e, "stopped reading container")
        }
        Err(e) => {
            tracing::error!(container = %container.name, error = %e, "log reader task failed")
        }
    }
}

async fn wait_changed(rx: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn resolve_info(
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

async fn resolve_info_now(ctx: &AgentContext, c: &DockerContainer, r: &PodRef) -> ContainerInfo {
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

/// The routes one container matched, with their multiline state.
struct Matched {
    route: Arc<ActiveRoute>,
    /// Per stream (stdout, stderr), when the route joins lines.
    joiners: Option<[Joiner; 2]>,
}

/// Routing state of one container.
struct Router {
    info: Arc<ContainerInfo>,
    routes: Vec<Matched>,
    max_bytes: usize,
}

fn stream_index(s: StreamName) -> usize {
    match s {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

impl Router {
    fn new(info: ContainerInfo, max_bytes: usize) -> Self {
        Self {
            info: Arc::new(info),
            routes: Vec::new(),
            max_bytes,
        }
    }

    fn excluded_by_pod(&self) -> bool {
        self.info
            .pod
            .as_ref()
            .is_some_and(|p| p.annotations.get(EXCLUDE_KEY).is_some_and(|v| v == "true"))
    }

    /// Re-evaluate which routes take this container. Call after flushing.
    fn rematch(&mut self, table: &RouteTable) {
        if self.excluded_by_pod() {
            self.routes.clear();
            return;
        }
        self.routes = table
            .routes
            .iter()
            .filter(|r| r.matcher.matches_container(&self.info))
            .map(|r| Matched {
                route: r.clone(),
                joiners: r.matcher.document.multiline.as_ref().map(|m| {
                    let joiner = || {
                        Joiner::new(
                            m.max_lines,
                            self.max_bytes,
                            Duration::from_millis(m.timeout_ms.into()),
                        )
                    };
                    [joiner(), joiner()]
                }),
            })
            .collect();
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.routes
            .iter()
            .flat_map(|m| m.joiners.iter().flatten())
            .filter_map(Joiner::deadline)
            .min()
    }

    async fn route_lines(&mut self, lines: &[LogLine], now: Instant) {
        if self.routes.is_empty() {
            return;
        }
        for line in lines {
            // One record shared by every route that takes the line as it is.
            let mut shared: Option<Arc<Record>> = None;
            for m in &mut self.routes {
                if !m.route.matcher.takes_stream(line.stream) {
                    m.route.filtered(Filtered::Stream).inc();
                    continue;
                }
                match &mut m.joiners {
                    Some(joiners) => {
                        let start = m
                            .route
                            .matcher
                            .multiline_start
                            .as_ref()
                            .expect("multiline routes have a start");
                        let joiner = &mut joiners[stream_index(line.stream)];
                        if let Some(done) =
                            joiner.push(start, line.timestamp, &line.message, line.truncated, now)
                        {
                            let record = Arc::new(joined_record(&self.info, line.stream, done));
                            emit(&m.route, record).await;
                        }
                    }
                    None => {
                        let record = shared
                            .get_or_insert_with(|| {
                                Arc::new(Record {
                                    container: self.info.clone(),
                                    stream: line.stream,
                                    timestamp: line.timestamp,
                                    message: line.message.clone(),
                                    truncated: line.truncated,
                                })
                            })
                            .clone();
                        emit(&m.route, record).await;
                    }
                }
            }
        }
    }

    async fn flush_due(&mut self, now: Instant) {
        self.flush(|j| j.deadline().is_some_and(|d| d <= now)).await;
    }

    async fn flush_all(&mut self) {
        self.flush(|_| true).await;
    }

    async fn flush(&mut self, due: impl Fn(&Joiner) -> bool) {
        for m in &mut self.routes {
            let Some(joiners) = &mut m.joiners else {
                continue;
            };
            for (i, joiner) in joiners.iter_mut().enumerate() {
                if !due(joiner) {
                    continue;
                }
                if let Some(done) = joiner.flush() {
                    let stream = if i == 0 {
                        StreamName::Stdout
                    } else {
                        StreamName::Stderr
                    };
                    emit(&m.route, Arc::new(joined_record(&self.info, stream, done))).await;
                }
            }
        }
    }
}

fn joined_record(info: &Arc<ContainerInfo>, stream: StreamName, j: Joined) -> Record {
    Record {
        container: info.clone(),
        stream,
        timestamp: j.timestamp,
        message: j.message,
        truncated: j.truncated,
    }
}

/// Apply the route's message filters and queue the record for each of its sinks. A full
/// queue holds the container's reader back (Docker's log file is the buffer meanwhile).
async fn emit(route: &ActiveRoute, record: Arc<Record>) {
    if let Some(why) = route.matcher.filter_message(&record.message) {
        route.filtered(why).inc();
        return;
    }
    for sink in &route.sinks {
        if sink.queue.send(record.clone()).await.is_ok() {
            sink.routed.inc();
        }
    }
}
