//! The controller: keeps compiled ConfigMaps/Secrets in step with LogRoutes.
//!
//! Wiring only; the parts are:
//! - [`reconcile`]: compile one LogRoute, publish or withdraw its compiled objects, write
//!   its status and Events; the finalizer's cleanup.
//! - [`triggers`]: Secret, namespace and compiled-object watches that re-trigger routes.
//! - [`sweep`]: the start-up removal of compiled objects whose LogRoute is gone.
//! - [`leader`]: Lease-based leader election; only the leader runs the Controller.
//! - [`ready`]: when the leader is ready (`/readyz`): its caches' initial lists are done.
//!
//! The Kubernetes API calls the controller makes are the controller rows of
//! [`crate::permissions`]; the scripted API server of the tests refuses any call that is
//! not there, and the chart's RBAC is checked against the same table.

pub mod context;
pub mod error;
pub mod health;
pub mod index;
pub mod leader;
pub mod objects;
pub mod ready;
pub mod reconcile;
pub mod secrets;
pub mod status;
pub mod sweep;
pub mod triggers;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use std::future::Future;

use futures::{Stream, StreamExt};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use context::Context;
pub use error::Error;
use ready::{Cache, CacheSync};
pub use reconcile::{error_policy, reconcile};

use crate::api::LogRoute;
use crate::http::{self, Readiness};
use crate::metrics::ControllerMetrics;

/// A LogRoute as watched: one that does not deserialize is still delivered (as `Err`),
/// so it can be reported instead of breaking the watch for every other route.
pub type Guarded = DeserializeGuard<LogRoute>;
/// LogRoutes through the API without decoding their spec (finalizer and status patches).
pub type RouteMetaApi = Api<PartialObjectMeta<LogRoute>>;

/// Name the controller reports in Events.
const REPORTER: &str = "logroute-controller";
/// Wait between start-up sweep attempts that failed.
const SWEEP_RETRY: Duration = Duration::from_secs(10);

/// `logroute controller` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// The operator's namespace: compiled objects live here, and only LogRoutes here may
    /// select other namespaces or host containers.
    #[arg(long, env = "LOGROUTE_NAMESPACE", default_value = "logroute-system")]
    pub namespace: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "LOGROUTE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// How long the leader Lease is honoured without renewal; a standby takes over a
    /// lease that stood still this long.
    #[arg(long, env = "LOGROUTE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// A leader that has not renewed for this long stops reconciling (less than the lease
    /// duration, so it stops before anyone may take over).
    #[arg(
        long,
        env = "LOGROUTE_LEASE_RENEW_DEADLINE_SECONDS",
        default_value_t = 10
    )]
    pub lease_renew_deadline_seconds: u64,
    /// Time between attempts to acquire or renew the Lease.
    #[arg(long, env = "LOGROUTE_LEASE_RETRY_SECONDS", default_value_t = 2)]
    pub lease_retry_seconds: u64,
    /// The operator's tenancy policy (YAML; see `route::policy`). Without it, tenants may
    /// send anywhere except loopback, link-local and the API server.
    #[arg(long, env = "LOGROUTE_EGRESS_POLICY")]
    pub egress_policy: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub health: health::HealthArgs,
}

impl ControllerArgs {
    /// The Lease settings from the flags; refuses timings under which a leader could act
    /// after its lease passed to another replica.
    pub fn lease_settings(&self, identity: &str) -> anyhow::Result<leader::LeaseSettings> {
        let (duration, deadline, retry) = (
            self.lease_duration_seconds,
            self.lease_renew_deadline_seconds,
            self.lease_retry_seconds,
        );
        anyhow::ensure!(
            retry >= 1 && retry < deadline && deadline < duration,
            "lease timings must satisfy 1 <= --lease-retry-seconds ({retry}) < --lease-renew-deadline-seconds ({deadline}) < --lease-duration-seconds ({duration})"
        );
        Ok(leader::LeaseSettings {
            lease_duration: Duration::from_secs(duration),
            renew_deadline: Duration::from_secs(deadline),
            retry_period: Duration::from_secs(retry),
            ..leader::LeaseSettings::new(&self.namespace, identity)
        })
    }
}

/// Run until SIGTERM/SIGINT: serve metrics, contend for the leader lease, and while
/// leading run the Controller. Readiness (see [`ready`]): a standby replica is ready once
/// it has found the lease held; the leader once its LogRoute, namespace and
/// Secret-metadata watches have completed their initial list.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let lease = args.lease_settings(&identity())?;
    let client = Client::try_default().await.context(
        "cannot configure the Kubernetes client (in-cluster service account or KUBECONFIG)",
    )?;
    let registry = Registry::new();
    let metrics = ControllerMetrics::new(&registry);
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let server = http::serve(
        args.metrics_addr,
        registry,
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot serve metrics on {}", args.metrics_addr))?;

    let policy = match &args.egress_policy {
        Some(path) => crate::route::Policy::load(path)?,
        None => crate::route::Policy::default(),
    }
    .with_api_server(std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref());
    let identity = lease.identity.clone();
    info!(%identity, namespace = %args.namespace, "controller starting");
    let elector = leader::LeaderElector::new(client.clone(), lease);
    let standby_ready = readiness.clone();
    let elected = leader::run_elected(
        elector,
        shutdown.clone(),
        move || standby_ready.set(true),
        |stop| {
            lead(
                client.clone(),
                args.namespace.clone(),
                identity.clone(),
                metrics.clone(),
                readiness.clone(),
                LeadSettings {
                    policy: policy.clone(),
                    health: args.health.clone(),
                },
                stop,
            )
        },
    )
    .await;
    shutdown.cancel();
    if let Err(e) = server.await {
        warn!(error = %e, "metrics server task failed");
    }
    elected?;
    info!("controller stopped");
    Ok(())
}

/// What the leader works with besides its client and identity.
struct LeadSettings {
    policy: crate::route::Policy,
    health: health::HealthArgs,
}

/// What the leader does until `stop`: sweep orphans, then run the Controller.
/// [`leader::run_elected`] aborts this task if it does not stop in time, so nothing here
/// writes after the lease may have passed to another replica.
async fn lead(
    client: Client,
    operator_namespace: String,
    identity: String,
    metrics: ControllerMetrics,
    readiness: Readiness,
    settings: LeadSettings,
    stop: CancellationToken,
) -> Result<(), Error> {
    let LeadSettings {
        policy,
        health: health_args,
    } = settings;
    readiness.set(false);
    let _leading = Leading::new(&metrics);
    loop {
        let swept = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            swept = sweep::sweep(&client, &operator_namespace) => swept,
        };
        match swept {
            Ok(_) => break,
            Err(e) => warn!(error = %e, "start-up sweep failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SWEEP_RETRY) => {}
        }
    }

    let (namespaces, namespace_writer) = reflector::store();
    let reporter = Reporter {
        controller: REPORTER.to_string(),
        instance: Some(identity),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            operator_namespace,
            metrics,
            recorder,
            namespaces,
        )
        .with_policy(policy),
    );
    let sync = CacheSync::new(readiness);
    let (route_cache, route_writer) = reflector::store::<Guarded>();
    // Route health runs while this replica leads, and stops with it.
    let health_stop = stop.child_token();
    let _health_guard = health_stop.clone().drop_guard();
    tokio::spawn(health::run(
        client.clone(),
        ctx.operator_namespace.clone(),
        health_args,
        route_cache.clone(),
        ctx.metrics.clone(),
        health_stop,
    ));
    let route_sync = sync.clone();
    let route_events = watcher(
        Api::<Guarded>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(route_writer)
    .inspect(move |event| {
        if let Ok(event) = event {
            route_sync.observe(Cache::Routes, event);
        }
    })
    .applied_objects();
    // Reconciles compile namespaceSelectors against the namespace cache, so LogRoutes are
    // listed (and the Controller starts) only once that cache is filled. The namespace
    // watch is polled by the Controller as one of its triggers, so it fills meanwhile.
    let gate = sync.clone();
    let route_events = held_until(
        async move { gate.synced(Cache::Namespaces).await },
        route_events,
    );

    let controller = Controller::for_stream(route_events, route_cache)
        .with_config(controller::Config::default().debounce(Duration::from_millis(200)))
        .reconcile_on(triggers::triggers(ctx.clone(), namespace_writer, sync))
        .graceful_shutdown_on(stop.clone().cancelled_owned());

    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|outcome| async move {
            match outcome {
                Ok((route, _)) => debug!(%route, "reconciled"),
                // Already logged with its backoff by error_policy.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                // A trigger for a route that no longer exists (e.g. an orphan's event).
                Err(controller::Error::ObjectNotFound(route)) => {
                    debug!(%route, "triggered route not found")
                }
                Err(e) => warn!(error = %e, "controller watch error"),
            }
        })
        .await;
    Ok(())
}

/// `logroute_controller_leader` is 1 while this value lives (the task leading may be
/// aborted, so a drop guard rather than a reset at the end).
struct Leading(ControllerMetrics);

impl Leading {
    fn new(metrics: &ControllerMetrics) -> Self {
        metrics.leader.set(1);
        Self(metrics.clone())
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.leader.set(0);
    }
}

/// `stream`, not polled before `gate` completes.
fn held_until<S: Stream>(gate: impl Future<Output = ()>, stream: S) -> impl Stream<Item = S::Item> {
    futures::stream::once(gate)
        .filter_map(|()| std::future::ready(None))
        .chain(stream)
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}

/// This replica's name in the Lease and in Events: the pod name (`POD_NAME` from the
/// downward API), else the host name.
fn identity() -> String {
    let from_env = |key: &str| {
        std::env::var(key)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    from_env("POD_NAME")
        .or_else(|| from_env("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("logroute-controller-{:08x}", fastrand::u32(..)))
}
