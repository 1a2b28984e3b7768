//! The route table: compiled routes with their sink workers, rebuilt live when routes
//! change, and the two places routes come from (LogRoute files on a plain Docker host, or
//! the controller's compiled ConfigMaps in a cluster).
//!
//! A route whose document did not change keeps its sink workers (and their queues and
//! connections) across updates; when only its credentials changed, the workers get the
//! new ones and use them from their next attempt, so a batch held back by a wrong
//! password is sent once the Secret is fixed. A route whose document changed gets new
//! workers; the old ones finish what is queued with the old settings and stop once no
//! container holds them any more.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{LogRoute, ROUTE_DOCUMENT_KEY, ROUTE_LABEL};
use crate::metrics::AgentMetrics;
use crate::route::matcher::{Filtered, RouteMatcher};
use crate::route::{CompileEnv, CompiledRoute, SecretLookup, compile};
use crate::sink::worker::{self, Queued};
use crate::sink::{Credentials, SinkContext};
use tokio_util::task::TaskTracker;

/// A compiled route and the credentials its sinks need.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteInput {
    pub document: CompiledRoute,
    pub credentials: Credentials,
}

/// One sink of an active route: its queue and the route's pre-resolved counter.
pub struct SinkHandle {
    pub name: String,
    pub queue: mpsc::Sender<Queued>,
    pub routed: IntCounter,
    /// Lanes of this sink that fell behind (`logroute_agent_lanes_detached`).
    pub detached: IntGauge,
}

/// A route in force, with its sink queues.
pub struct ActiveRoute {
    pub key: String,
    pub matcher: RouteMatcher,
    pub sinks: Vec<SinkHandle>,
    filtered: [IntCounter; 3],
    /// The route's credentials, watched by its sink workers.
    credentials: watch::Sender<Arc<Credentials>>,
}

impl ActiveRoute {
    /// A route over ready sink handles; its filter counters are registered in `metrics`.
    pub fn new(
        key: &str,
        matcher: RouteMatcher,
        sinks: Vec<SinkHandle>,
        metrics: &AgentMetrics,
    ) -> Self {
        let filtered = [Filtered::Stream, Filtered::Include, Filtered::Exclude].map(|f| {
            metrics
                .records_filtered
                .with_label_values(&[key, f.as_str()])
        });
        ActiveRoute {
            key: key.to_string(),
            matcher,
            sinks,
            filtered,
            credentials: watch::Sender::new(Arc::default()),
        }
    }

    pub fn filtered(&self, why: Filtered) -> &IntCounter {
        &self.filtered[why as usize]
    }
}

/// The routes in force, shared with every container task through a `watch` channel.
#[derive(Default)]
pub struct RouteTable {
    pub routes: Vec<Arc<ActiveRoute>>,
}

impl RouteTable {
    /// Records waiting in all sink queues.
    pub fn queued(&self) -> usize {
        self.routes
            .iter()
            .flat_map(|r| &r.sinks)
            .map(|s| s.queue.max_capacity() - s.queue.capacity())
            .sum()
    }
}

/// Settings for building sink workers.
#[derive(Clone)]
pub struct SinkSettings {
    pub metrics: AgentMetrics,
    pub node: String,
    pub queue_records: usize,
    pub stop: CancellationToken,
    /// Every sink worker, so that shutdown can wait for them before the final sync.
    pub workers: TaskTracker,
}

/// Owns the table and publishes a new one on every change.
pub struct RouteTableManager {
    current: BTreeMap<String, (RouteInput, Arc<ActiveRoute>)>,
    rejected: usize,
    tx: watch::Sender<Arc<RouteTable>>,
    settings: SinkSettings,
}

impl RouteTableManager {
    pub fn new(settings: SinkSettings) -> (Self, watch::Receiver<Arc<RouteTable>>) {
        let (tx, rx) = watch::channel(Arc::new(RouteTable::default()));
        (
            Self {
                current: BTreeMap::new(),
                rejected: 0,
                tx,
                settings,
            },
            rx,
        )
    }

    /// Replace the set of routes. Unchanged routes keep their workers; a route whose
    /// sinks cannot be built (say, a CA that is not PEM) is rejected alone, loudly.
    pub fn apply(&mut self, inputs: BTreeMap<String, RouteInput>) {
        let mut next = BTreeMap::new();
        let mut rejected = 0;
        for (key, input) in inputs {
            if let Some((old, active)) = self.current.remove(&key) {
                if old == input {
                    next.insert(key, (old, active));
                    continue;
                }
                if old.document == input.document {
                    tracing::info!(route = %key, "route credentials changed; its sinks take the new ones");
                    active
                        .credentials
                        .send_replace(Arc::new(input.credentials.clone()));
                    next.insert(key, (input, active));
                    continue;
                }
            }
            match self.build(&key, &input) {
                Ok(active) => {
                    tracing::info!(route = %key, sinks = active.sinks.len(), "route active");
                    next.insert(key, (input, Arc::new(active)));
                }
                Err(e) => {
                    rejected += 1;
                    tracing::error!(route = %key, error = %e, "route rejected; fix the LogRoute");
                }
            }
        }
        for key in self.current.keys() {
            if !next.contains_key(key) {
                tracing::info!(route = %key, "route removed");
            }
        }
        self.current = next;
        self.rejected = rejected;
        let m = &self.settings.metrics;
        m.routes_loaded
            .with_label_values(&["active"])
            .set(self.current.len() as i64);
        m.routes_loaded
            .with_label_values(&["rejected"])
            .set(rejected as i64);
        let routes = self.current.values().map(|(_, a)| a.clone()).collect();
        self.tx.send_replace(Arc::new(RouteTable { routes }));
    }

    fn build(&self, key: &str, input: &RouteInput) -> Result<ActiveRoute, String> {
        let matcher =
            RouteMatcher::new(input.document.clone()).map_err(|e| format!("bad pattern: {e}"))?;
        let credentials = Arc::new(input.credentials.clone());
        let (credentials_tx, credentials_rx) = watch::channel(credentials.clone());
        let m = &self.settings.metrics;
        let mut sinks = Vec::new();
        for sink in &input.document.sinks {
            let ctx = SinkContext {
                route: key.to_string(),
                sink: sink.name.clone(),
                metrics: m.clone(),
                credentials: credentials.clone(),
                node: self.settings.node.clone(),
            };
            let queue = worker::spawn(
                &self.settings.workers,
                sink,
                ctx,
                credentials_rx.clone(),
                self.settings.queue_records,
                self.settings.stop.clone(),
            )
            .map_err(|e| format!("sink {}: {e}", sink.name))?;
            sinks.push(SinkHandle {
                name: sink.name.clone(),
                queue,
                routed: m.records_routed.with_label_values(&[key, &sink.name]),
                detached: m.lanes_detached.with_label_values(&[key, &sink.name]),
            });
        }
        let mut route = ActiveRoute::new(key, matcher, sinks, m);
        route.credentials = credentials_tx;
        Ok(route)
    }
}

/// Secrets on a plain Docker host: `DIR/<namespace>/<secret>/<key>`, the layout of a
/// mounted Secret volume per namespace.
pub struct DirSecrets(pub PathBuf);

impl SecretLookup for DirSecrets {
    fn get(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let dir = self.0.join(namespace).join(name);
        let mut data = BTreeMap::new();
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let key = entry.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') || !entry.path().is_file() {
                continue;
            }
            data.insert(key, std::fs::read(entry.path()).ok()?);
        }
        Some(data)
    }
}

/// Names, sizes and modification times of the files under `dir` (three levels deep:
/// `<namespace>/<secret>/<key>`), to notice a changed Secret.
fn tree_stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    fn walk(dir: &Path, depth: u32, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Follow symlinks: a Secret volume's keys link into a timestamped directory.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth > 0 {
                    walk(&path, depth - 1, out);
                }
            } else {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 2, &mut out);
    out.sort();
    out
}

/// Compile the LogRoutes of one YAML file (several documents allowed).
pub fn load_file(
    path: &Path,
    operator_namespace: &str,
    secrets: Option<&dyn SecretLookup>,
) -> Result<BTreeMap<String, RouteInput>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde::Deserialize::deserialize(doc)
            .map_err(|e| format!("{}: not valid YAML: {e}", path.display()))?;
        if matches!(value, serde_yaml::Value::Null) {
            continue;
        }
        let mut route: LogRoute = serde_path_to_error::deserialize(value)
            .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
        if route.metadata.namespace.is_none() {
            route.metadata.namespace = Some("default".into());
        }
        let env = CompileEnv {
            operator_namespace,
            namespaces: None,
            secrets,
        };
        let compiled = compile(&route, &env).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            format!(
                "{}: {} is invalid: {}",
                path.display(),
                route.name_any(),
                list.join("; ")
            )
        })?;
        let key = compiled.document.route.key();
        out.insert(
            key,
            RouteInput {
                document: compiled.document,
                credentials: compiled.credentials,
            },
        );
    }
    Ok(out)
}

/// `--routes` mode: compile the files now and again whenever one changes (checked every
/// `interval`). A file that stops compiling keeps its previous routes, and says why.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    operator_namespace: String,
    secrets_dir: Option<PathBuf>,
    mut manager: RouteTableManager,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut last_good: BTreeMap<PathBuf, BTreeMap<String, RouteInput>> = BTreeMap::new();
    let mut seen: BTreeMap<PathBuf, Option<SystemTime>> = BTreeMap::new();
    let mut secrets_seen = None;
    let secrets = secrets_dir.map(DirSecrets);
    loop {
        let mut changed = false;
        // A changed Secret recompiles every file: which routes use it is the compiler's
        // business, and the files are few.
        let stamp = secrets.as_ref().map(|s| tree_stamp(&s.0));
        if stamp != secrets_seen {
            secrets_seen = stamp;
            seen.clear();
        }
        for path in &paths {
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if seen.get(path) == Some(&mtime) && mtime.is_some() {
                continue;
            }
            seen.insert(path.clone(), mtime);
            match load_file(
                path,
                &operator_namespace,
                secrets.as_ref().map(|s| s as &dyn SecretLookup),
            ) {
                Ok(routes) => {
                    last_good.insert(path.clone(), routes);
                    changed = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "routes file rejected; keeping its previous routes")
                }
            }
        }
        if changed {
            manager.apply(
                last_good
                    .values()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Cluster mode: the compiled ConfigMaps and credential Secrets (label
/// `logroute.dev/route`) of the operator namespace, applied on every change. A document
/// the agent cannot read (a newer version, malformed) is refused loudly and the route's
/// previous version stays in force; a route whose credentials Secret has not arrived yet
/// waits for it.
pub async fn watch_cluster(
    client: Client,
    namespace: String,
    mut manager: RouteTableManager,
    stop: CancellationToken,
) {
    let config = watcher::Config::default().labels(ROUTE_LABEL);
    let (maps, maps_writer) = reflector::store::<ConfigMap>();
    let (secrets, secrets_writer) = reflector::store::<Secret>();
    let map_events = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        config.clone(),
    )
    .default_backoff()
    .reflect(maps_writer)
    .touched_objects()
    .map(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    let secret_events = watcher(Api::<Secret>::namespaced(client, &namespace), config)
        .default_backoff()
        .reflect(secrets_writer)
        .touched_objects()
        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    let mut events = std::pin::pin!(futures::stream::select(map_events, secret_events));
    let mut kept: BTreeMap<String, RouteInput> = BTreeMap::new();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(())) => {}
                Some(Err(e)) => { tracing::warn!(error = %e, "watch of compiled routes failed; retrying"); continue; }
                None => return,
            },
            _ = stop.cancelled() => return,
        }
        // Coalesce bursts (a route's ConfigMap and Secret usually change together).
        tokio::time::sleep(Duration::from_millis(50)).await;
        kept = cluster_inputs(&maps, &secrets, &kept);
        manager.apply(kept.clone());
    }
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
