//! `--routes` mode: LogRoute YAML files compiled by the agent itself (a plain Docker
//! host), recompiled when a file or a Secret under `--secrets-dir` changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{RouteInput, RouteTableManager};
use crate::api::LogRoute;
use crate::route::{CompileEnv, SecretLookup, compile};

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
    let mut first_pass_done = false;
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
        // The first pass is applied even when no file compiled, so the agent turns
        // ready (with no routes) and says why in its log rather than hanging.
        if changed || !first_pass_done {
            first_pass_done = true;
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
