//! The node agent: Docker logs → pod metadata → routes → sinks.
//!
//! [`Agent::start`] wires the parts together; `logroute agent` and the integration
//! tests both go through it, so the tests exercise the production path.

pub mod checkpoint;
mod container;
pub mod docker;
pub mod health;
pub mod lane;
#[cfg(test)]
mod lane_model;
mod line_bytes;
pub mod multiline;
pub mod pipeline;
pub mod pods;
pub mod routes;
pub mod source;
pub mod spill;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::Registry;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::http::{self, Readiness};
use crate::metrics::AgentMetrics;
use crate::record::Timestamp;
use checkpoint::{Checkpoints, PreviousRun};
use docker::Cursor;
use pipeline::{AgentContext, SelfIdentity};
use pods::PodCache;
use routes::{RouteTable, RouteTableManager, SinkSettings};
use tokio_util::task::TaskTracker;

/// `logroute agent` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Name of this node (Kubernetes) or host; HOSTNAME of syslog messages.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The operator's namespace: compiled routes are read from here (cluster mode), and
    /// LogRoutes of this namespace may select other namespaces and host containers.
    #[arg(long, env = "LOGROUTE_NAMESPACE", default_value = "logroute-system")]
    pub namespace: String,
    /// Docker endpoint (`unix:///var/run/docker.sock`, `tcp://host:2375`).
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
    /// Where per-(container, sink) checkpoints are kept.
    #[arg(long, env = "LOGROUTE_STATE_DIR", default_value = "/var/lib/logroute")]
    pub state_dir: PathBuf,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "LOGROUTE_METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,
    /// LogRoute YAML files to compile locally instead of watching the cluster (plain
    /// Docker host mode; pod metadata then comes from Docker labels alone).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub routes: Vec<PathBuf>,
    /// In --routes mode, Secrets referenced by routes are read from
    /// `DIR/<namespace>/<secret>/<key>` (the layout of a mounted Secret volume).
    #[arg(long, env = "LOGROUTE_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Longest line kept whole after joining Docker's 16 KiB partial messages; longer
    /// lines are cut, marked and counted.
    #[arg(long, env = "LOGROUTE_MAX_LINE_BYTES", default_value_t = 1024 * 1024)]
    pub max_line_bytes: usize,
    /// Name of the agent's own pod (downward API), so its logs are never forwarded.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// How long to keep delivering queued records after SIGTERM.
    #[arg(long, env = "LOGROUTE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// Records buffered per (route, sink). This is the lag limit of the shared reader:
    /// when a sink's queue is full, that sink falls behind on its own (per container) and
    /// catches up from Docker later, while the container's other sinks stay live.
    #[arg(long, env = "LOGROUTE_QUEUE_RECORDS", default_value_t = 8192)]
    pub queue_records: usize,
    /// Bytes of records the agent buffers, all (route, sink) queues together: each
    /// queue gets an even share (never less than --max-line-bytes), so one route whose
    /// sink stopped taking records cannot take the node's memory, whatever its lines
    /// weigh. A queue over its share falls behind like a full one.
    #[arg(long, env = "LOGROUTE_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub queue_bytes: usize,
    /// Bytes of spill files in the state directory, all lagging sinks together (one
    /// lane takes at most a quarter): while a sink lags, the lines it misses are kept
    /// there too, so that it still gets them after Docker removed the container (a
    /// deleted pod's last burst). 0 turns spilling off.
    #[arg(long, env = "LOGROUTE_SPILL_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub spill_bytes: u64,
    /// Docker log streams open at once to catch lagging sinks up, agent-wide. Lagging
    /// (container, sink) lanes beyond it wait holding only their cursor, so memory stays
    /// bounded however many sinks lag.
    #[arg(long, env = "LOGROUTE_CATCHUP_STREAMS", default_value_t = 8)]
    pub catchup_streams: usize,
    /// How often the checkpoint file is msync'd to disk (it is also synced at
    /// shutdown). An agent crash loses nothing in between; a node crash may repeat up to
    /// this much of each sink's stream.
    #[arg(long, env = "LOGROUTE_CHECKPOINT_SYNC_MS", default_value_t = 1000)]
    pub checkpoint_sync_ms: u64,
    /// How long a (container, route, sink) lane whose route went away (withdrawn as
    /// invalid, its Secret deleted to be recreated, no longer matching the pod) keeps its
    /// checkpoint. A route back within this time resumes exactly where its sink stopped.
    #[arg(long, env = "LOGROUTE_ROUTE_GRACE_SECONDS", default_value_t = 600)]
    pub route_grace_seconds: u64,
    /// In --routes mode, how often the files (and --secrets-dir) are checked for changes.
    #[arg(long, env = "LOGROUTE_ROUTES_POLL_MS", default_value_t = 2000)]
    pub routes_poll_ms: u64,
}

/// A container without a checkpoint, after a restart, starts this long before the
/// previous agent's last heartbeat: it covers a container the previous agent saw start
/// shortly before it died but had not matched yet (pod lookup waits up to
/// [`pipeline::POD_WAIT`]). Such a container was never delivered, so nothing repeats.
pub const RESTART_MARGIN_SECS: i64 = 30;

/// Where (container, sink) lanes without a checkpoint start reading:
/// - first start on this node (no checkpoint file): now — what ran before is not ours;
/// - after a clean restart: [`RESTART_MARGIN_SECS`] before the previous agent's last
///   heartbeat, which covers every container started while no agent was running;
/// - after a damaged checkpoint file: the beginning of what Docker still holds (nothing
///   lost, but lines may be repeated to sinks whose checkpoint was lost).
pub fn start_point(previous: PreviousRun, now: Timestamp) -> Cursor {
    match previous {
        PreviousRun::None => Cursor::at(now),
        PreviousRun::AliveUntil(t) => Cursor::at(Timestamp {
            secs: t.secs - RESTART_MARGIN_SECS,
            nanos: t.nanos,
        }),
        PreviousRun::Damaged => Cursor::default(),
    }
}

/// The earliest position a lane without a checkpoint starts at (see
/// [`pipeline::AgentContext::restart_floor`]).
pub fn restart_floor(previous: PreviousRun) -> Cursor {
    match previous {
        PreviousRun::AliveUntil(_) => start_point(previous, Timestamp::now()),
        PreviousRun::None | PreviousRun::Damaged => Cursor::default(),
    }
}

/// Where routes come from.
pub enum RouteSource {
    /// LogRoute YAML files, recompiled when they change (plain Docker host).
    Files {
        paths: Vec<PathBuf>,
        secrets_dir: Option<PathBuf>,
        poll: Duration,
    },
    /// The controller's compiled ConfigMaps in the operator namespace.
    Cluster(kube::Client),
}

/// A running agent.
pub struct Agent {
    pub metrics: AgentMetrics,
    pub registry: Registry,
    pub ready: Readiness,
    /// This node's route health, served on `/routes` for the controller.
    pub health: health::Reports,
    routes: watch::Receiver<Arc<RouteTable>>,
    stop: CancellationToken,
    sink_stop: CancellationToken,
    manager: tokio::task::JoinHandle<()>,
    workers: TaskTracker,
    checkpoints: Arc<Checkpoints>,
}

impl Agent {
    /// Start discovery, routing and sinks. `pods` is this node's pod cache in a cluster
    /// (tests pass one over a store they feed) and `None` on a plain Docker host.
    pub async fn start(
        args: &AgentArgs,
        source: RouteSource,
        pods: Option<PodCache>,
    ) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let metrics = AgentMetrics::new(&registry);
        let stop = CancellationToken::new();
        let sink_stop = CancellationToken::new();
        let node = args.node_name.clone().unwrap_or_else(local_hostname);
        let docker = docker::connect(&args.docker_host)
            .with_context(|| format!("cannot use Docker at {}", args.docker_host))?;
        let opened = Checkpoints::open(&args.state_dir)?;
        let spill = spill::SpillBudget::open(&args.state_dir, args.spill_bytes, &metrics)
            .with_context(|| {
                format!(
                    "cannot prepare the spill directory in {}",
                    args.state_dir.display()
                )
            })?;
        let checkpoints = opened.checkpoints;
        let restart_floor = restart_floor(opened.previous);
        let start = start_point(opened.previous, Timestamp::now());
        if !opened.problems.is_empty() {
            tracing::warn!(
                file = %checkpoints.path().display(),
                problems = %opened.problems.join("; "),
                "checkpoint file damaged: its damaged parts are ignored, and sinks without a valid checkpoint read each container from the beginning of the log Docker still holds (nothing is lost; lines they had already received may be sent again)"
            );
        }
        let workers = TaskTracker::new();
        let (manager, routes) = RouteTableManager::new(SinkSettings {
            metrics: metrics.clone(),
            node: node.clone(),
            queue_records: args.queue_records,
            queue_bytes: args.queue_bytes,
            queue_floor: args.max_line_bytes + crate::sink::worker::ENTRY_OVERHEAD,
            stop: sink_stop.clone(),
            workers: workers.clone(),
        });
        let routes_synced = manager.synced();
        match source {
            RouteSource::Files {
                paths,
                secrets_dir,
                poll,
            } => {
                tokio::spawn(routes::watch_files(
                    paths,
                    args.namespace.clone(),
                    secrets_dir,
                    manager,
                    poll,
                    stop.clone(),
                ));
            }
            RouteSource::Cluster(client) => {
                tokio::spawn(routes::watch_cluster(
                    client,
                    args.namespace.clone(),
                    manager,
                    stop.clone(),
                ));
            }
        }
        let identity = SelfIdentity {
            container_id: SelfIdentity::detect_container_id(),
            pod: args.pod_name.clone().map(|p| (args.namespace.clone(), p)),
        };
        let ready = Readiness::default();
        let (go, went) = watch::channel(false);
        tokio::spawn(become_ready(
            routes_synced,
            pods.clone(),
            ready.clone(),
            go,
            stop.clone(),
        ));
        let ctx = Arc::new(AgentContext {
            docker: docker.clone(),
            node,
            metrics: metrics.clone(),
            routes: routes.clone(),
            pods,
            identity,
            read: docker::ReadOptions {
                max_line_bytes: args.max_line_bytes,
                unix_socket: docker::unix_socket(&args.docker_host),
                ..Default::default()
            },
            start,
            restart_floor,
            route_grace: Duration::from_secs(args.route_grace_seconds),
            checkpoints: checkpoints.clone(),
            catchups: Arc::new(tokio::sync::Semaphore::new(args.catchup_streams.max(1))),
            next_lane: Default::default(),
            spill,
            stop: stop.clone(),
        });
        let (events_tx, events_rx) = mpsc::channel(1024);
        tokio::spawn(sync_checkpoints(
            checkpoints.clone(),
            workers.clone(),
            metrics.clone(),
            Duration::from_millis(args.checkpoint_sync_ms.max(10)),
            stop.clone(),
        ));
        // Discovery announces what runs and what exited since the start point; the sweep
        // what exited earlier with a lane left unfinished. After a damaged checkpoint file
        // the start point is the beginning of Docker's logs: only running containers are
        // re-read then, not every exited container the host still keeps.
        let exited_since = match opened.previous {
            PreviousRun::Damaged => Timestamp::now(),
            _ => start.since(),
        };
        tokio::spawn(sweep_checkpoints(
            docker.clone(),
            checkpoints.clone(),
            events_tx.clone(),
            exited_since,
        ));
        tokio::spawn(docker::watch_containers(
            docker,
            events_tx,
            metrics.clone(),
            stop.clone(),
            exited_since,
        ));
        let manager = tokio::spawn(pipeline::manage(ctx, events_rx, went));
        let health = health::spawn(
            node_name(args),
            metrics.clone(),
            checkpoints.clone(),
            routes.clone(),
            ready.clone(),
            stop.clone(),
        );
        Ok(Self {
            metrics,
            registry,
            ready,
            health,
            routes,
            stop,
            sink_stop,
            manager,
            workers,
            checkpoints,
        })
    }

    /// The routes in force now.
    pub fn route_table(&self) -> Arc<RouteTable> {
        self.routes.borrow().clone()
    }

    /// Stop reading, give the sinks up to `grace` to deliver what is queued, stop them,
    /// and write the final checkpoints to disk. What was not delivered by then is read
    /// again by the next agent from the checkpoints.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        let _ = self.manager.await;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && self.routes.borrow().queued() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.sink_stop.cancel();
        self.workers.close();
        if tokio::time::timeout(WORKER_STOP, self.workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "a sink worker is still in a send after {WORKER_STOP:?}; checkpoints are written without it"
            );
        }
        let checkpoints = self.checkpoints.clone();
        match tokio::task::spawn_blocking(move || checkpoints.sync()).await {
            Ok(Ok(())) => {
                tracing::info!(file = %self.checkpoints.path().display(), "final checkpoints written")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "final checkpoints not synced"),
            Err(e) => tracing::error!(error = %e, "final checkpoint sync failed"),
        }
    }
}

/// Readiness of the agent: the route table has been built from the complete set of
/// routes (cluster: the initial lists of compiled ConfigMaps and Secrets; files: each
/// file tried once) and, in a cluster, the node's pods are listed. Until then `/readyz`
/// answers 503 and no container is read, so no container is matched against a partial
/// table (which would start its lanes late, or not at all). Once ready it stays ready: a
/// watch that fails later keeps the last table and pods in force while it retries.
async fn become_ready(
    mut routes: watch::Receiver<bool>,
    pods: Option<PodCache>,
    ready: Readiness,
    go: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let synced = async {
        let routes_ok = routes.wait_for(|s| *s).await.is_ok();
        let pods_ok = match &pods {
            Some(p) => p.wait_synced().await,
            None => true,
        };
        routes_ok && pods_ok
    };
    tokio::select! {
        ok = synced => if ok {
            tracing::info!("routes and pods synced; reading containers");
            ready.set(true);
            go.send_replace(true);
        },
        _ = stop.cancelled() => {}
    }
}

/// How long shutdown waits for sink workers to leave a send in progress.
const WORKER_STOP: Duration = Duration::from_secs(5);

/// msync the checkpoint file every `every` and publish how far each sink lags.
async fn sync_checkpoints(
    checkpoints: Arc<Checkpoints>,
    workers: TaskTracker,
    metrics: AgentMetrics,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let c = checkpoints.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || c.sync()).await {
            tracing::warn!(error = %e, "checkpoint sync failed; retrying at the next interval");
        }
        metrics.sink_workers.set(workers.len() as i64);
        metrics.sink_lag_seconds.reset();
        for ((route, sink), lag) in checkpoints.lag_seconds() {
            metrics
                .sink_lag_seconds
                .with_label_values(&[&route, &sink])
                .set(lag);
        }
    }
}

/// Checkpoints of containers that are gone are dropped. Containers with a checkpoint that
/// exited before `floor` (so discovery does not announce them) are announced, so that the
/// lanes the previous agent left unfinished are read to their end.
async fn sweep_checkpoints(
    docker: bollard::Docker,
    checkpoints: Arc<Checkpoints>,
    events: mpsc::Sender<docker::ContainerEvent>,
    floor: Timestamp,
) {
    if docker::negotiate(&docker).await.is_err() {
        return;
    }
    for id in checkpoints.containers() {
        match docker::inspect(&docker, &id).await {
            Ok(None) => {
                tracing::info!(container = %id, "container of a checkpoint is gone; checkpoint dropped");
                checkpoints.forget_container(&id);
            }
            Ok(Some(c)) if !c.running && !docker::announce_listed(&c, floor) => {
                let _ = events.send(docker::ContainerEvent::Running(c)).await;
            }
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "cannot inspect the container of a checkpoint; kept")
            }
        }
    }
}

fn node_name(args: &AgentArgs) -> String {
    args.node_name.clone().unwrap_or_else(local_hostname)
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `logroute agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let (source, pods) = if args.routes.is_empty() {
        let client = kube::Client::try_default().await.context(
            "no --routes given, so the agent reads routes from the cluster, but no Kubernetes API is reachable; run in a cluster or pass --routes FILE",
        )?;
        let node = args
            .node_name
            .clone()
            .context("--node-name (NODE_NAME) is required in a cluster")?;
        let (cache, driver) = PodCache::watch(client.clone(), &node);
        tokio::spawn(driver);
        (RouteSource::Cluster(client), Some(cache))
    } else {
        let poll = Duration::from_millis(args.routes_poll_ms.max(10));
        (
            RouteSource::Files {
                paths: args.routes.clone(),
                secrets_dir: args.secrets_dir.clone(),
                poll,
            },
            None,
        )
    };
    let agent = Agent::start(&args, source, pods).await?;
    let http_stop = CancellationToken::new();
    let server = http::serve_with(
        args.metrics_addr,
        agent.registry.clone(),
        agent.ready.clone(),
        agent.health.router(),
        http_stop.clone(),
    )
    .await
    .with_context(|| format!("cannot serve metrics on {}", args.metrics_addr))?;
    tracing::info!(metrics = %args.metrics_addr, "agent running");
    shutdown_signal().await;
    tracing::info!("shutting down");
    agent
        .shutdown(Duration::from_secs(args.shutdown_grace_seconds))
        .await;
    http_stop.cancel();
    let _ = server.await;
    Ok(())
}

/// SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
}
