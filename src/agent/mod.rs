//! The node agent: Docker logs → pod metadata → routes → sinks.
//!
//! [`Agent::start`] wires the parts together; `logroute agent` and the integration
//! tests both go through it, so the tests exercise the production path.

pub mod docker;
pub mod multiline;
pub mod pipeline;
pub mod pods;
pub mod routes;

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
use pipeline::{AgentContext, SelfIdentity};
use pods::PodCache;
use routes::{RouteTable, RouteTableManager, SinkSettings};

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
    /// Records buffered per (route, sink) before that sink counts as lagging.
    #[arg(long, env = "LOGROUTE_QUEUE_RECORDS", default_value_t = 8192)]
    pub queue_records: usize,
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
    routes: watch::Receiver<Arc<RouteTable>>,
    stop: CancellationToken,
    sink_stop: CancellationToken,
    manager: tokio::task::JoinHandle<()>,
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
        let (manager, routes) = RouteTableManager::new(SinkSettings {
            metrics: metrics.clone(),
            node: node.clone(),
            queue_records: args.queue_records,
            stop: sink_stop.clone(),
        });
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
            start: docker::Cursor::at(crate::record::Timestamp::now()),
            stop: stop.clone(),
        });
        let (events_tx, events_rx) = mpsc::channel(1024);
        tokio::spawn(docker::watch_containers(
            docker,
            events_tx,
            metrics.clone(),
            stop.clone(),
        ));
        let manager = tokio::spawn(pipeline::manage(ctx, events_rx));
        let ready = Readiness::default();
        ready.set(true);
        Ok(Self {
            metrics,
            registry,
            ready,
            routes,
            stop,
            sink_stop,
            manager,
        })
    }

    /// The routes in force now.
    pub fn route_table(&self) -> Arc<RouteTable> {
        self.routes.borrow().clone()
    }

    /// Stop reading, give the sinks up to `grace` to deliver what is queued, then stop.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        let _ = self.manager.await;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && self.routes.borrow().queued() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.sink_stop.cancel();
    }
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
        let poll = Duration::from_secs(2);
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
    let server = http::serve(
        args.metrics_addr,
        agent.registry.clone(),
        agent.ready.clone(),
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
