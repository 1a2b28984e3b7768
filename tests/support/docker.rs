//! Real dockerd for tests: a busybox image built `FROM scratch`, containers labelled the
//! way cri-dockerd labels pod containers, removed when the test is done.
//!
//! Every container carries the label `logroute.test=1` and a name starting with
//! `lrtest-` (or `k8s_` for pod-like ones) so that leftovers of a killed run are easy to
//! find: `docker rm -f $(docker ps -aq --filter label=logroute.test=1)`.

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};

use super::env;

pub const BUSYBOX_IMAGE: &str = "logroute-test-busybox:latest";
pub const TEST_LABEL: &str = "logroute.test";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The test image: `/bin/busybox` from Debian's busybox-static with its applets linked
/// into /bin, so `sh -c '...'`, `seq`, `printf`, `head`, `usleep` work. Built once per
/// process; another process building the same tag concurrently is harmless.
pub fn busybox_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(build_busybox_image);
    BUSYBOX_IMAGE
}

fn build_busybox_image() {
    let exists = Command::new("docker")
        .args(["image", "inspect", BUSYBOX_IMAGE])
        .output();
    if exists.is_ok_and(|o| o.status.success()) {
        return;
    }
    let busybox = std::path::Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install Debian's busybox-static"
    );
    let dir = tempfile::tempdir().expect("temporary build context");
    std::fs::copy(busybox, dir.path().join("busybox"))
        .expect("copy /bin/busybox into the build context");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\nCMD [\"sh\"]\n",
    )
    .expect("write Dockerfile");
    let out = Command::new("docker")
        .args(["build", "-q", "-t", BUSYBOX_IMAGE])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("run `docker build`");
    assert!(
        out.status.success(),
        "docker build of {BUSYBOX_IMAGE} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client for the local dockerd, or `None` (after `env::missing`, which fails in CI)
/// when there is none.
pub async fn docker() -> Option<Docker> {
    if !std::path::Path::new(DOCKER_SOCKET).exists() {
        env::missing(
            "dockerd",
            "no socket at /var/run/docker.sock; apt-get install docker.io and start dockerd",
        );
        return None;
    }
    let docker = logroute::agent::docker::connect(&format!("unix://{DOCKER_SOCKET}"))
        .expect("docker client");
    if let Err(e) = logroute::agent::docker::negotiate(&docker).await {
        env::missing("dockerd", &format!("dockerd does not answer: {e}"));
        return None;
    }
    Some(docker)
}

/// Labels cri-dockerd puts on a pod's workload container.
pub fn pod_labels(
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
) -> HashMap<String, String> {
    HashMap::from([
        (
            "io.kubernetes.pod.namespace".to_string(),
            namespace.to_string(),
        ),
        ("io.kubernetes.pod.name".to_string(), pod.to_string()),
        ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
        (
            "io.kubernetes.container.name".to_string(),
            container.to_string(),
        ),
        (
            "io.kubernetes.docker.type".to_string(),
            "container".to_string(),
        ),
    ])
}

/// Labels cri-dockerd puts on a pod's sandbox container: the pod's own labels copied,
/// plus the pod identity and `podsandbox`.
pub fn sandbox_labels(
    namespace: &str,
    pod: &str,
    uid: &str,
    pod_labels: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod_labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.insert("io.kubernetes.pod.namespace".into(), namespace.into());
    labels.insert("io.kubernetes.pod.name".into(), pod.into());
    labels.insert("io.kubernetes.pod.uid".into(), uid.into());
    labels.insert("io.kubernetes.container.name".into(), "POD".into());
    labels.insert("io.kubernetes.docker.type".into(), "podsandbox".into());
    labels
}

/// A Pod of node `node-1` (the agents' node) as a client writes it to the API server:
/// the server gives it its uid, which the pod's containers must then carry
/// ([`pod_labels`]).
pub fn pod_object(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> serde_json::Value {
    let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect()
    };
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": map(labels), "annotations": map(annotations)},
        "spec": {"nodeName": super::agent_proc::NODE, "containers": [{"name": "c", "image": "busybox"}]},
    })
}

/// The Docker name cri-dockerd gives a pod's container (`POD` for the sandbox).
pub fn cri_name(container: &str, pod: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("k8s_{container}_{pod}_{namespace}_{uid}_{attempt}")
}

/// A fresh pod uid, unique across test processes.
pub fn pod_uid() -> String {
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        std::process::id(),
        next_seq(),
        fastrand::u64(..) & 0xffff_ffff_ffff
    )
}

fn next_seq() -> usize {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// What to run. `script` runs under `sh -c`.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub script: String,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub tty: bool,
    /// Docker name; default `lrtest-<pid>-<n>`.
    pub name: Option<String>,
    /// Created but not started (start with [`TestContainer::start`]).
    pub created_only: bool,
    /// Docker log driver; default the daemon's (json-file).
    pub log_driver: Option<String>,
    /// Log driver options, e.g. json-file `max-size` / `max-file`.
    pub log_opts: HashMap<String, String>,
}

impl Spec {
    pub fn sh(script: impl Into<String>) -> Self {
        Spec {
            script: script.into(),
            ..Default::default()
        }
    }

    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.to_string());
        self
    }

    pub fn labels(mut self, labels: HashMap<String, String>) -> Self {
        self.labels.extend(labels);
        self
    }

    pub fn tty(mut self) -> Self {
        self.tty = true;
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn log_driver(mut self, driver: &str) -> Self {
        self.log_driver = Some(driver.to_string());
        self
    }

    pub fn log_opts(mut self, opts: &[(&str, &str)]) -> Self {
        self.log_opts
            .extend(opts.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    pub fn created_only(mut self) -> Self {
        self.created_only = true;
        self
    }
}

/// A test container, force-removed on drop.
pub struct TestContainer {
    pub docker: Docker,
    pub id: String,
    pub name: String,
}

impl TestContainer {
    /// Create (and unless `created_only`, start) a container of the busybox image.
    pub async fn run(docker: &Docker, spec: Spec) -> TestContainer {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("lrtest-{}-{}", std::process::id(), next_seq()));
        let mut labels = spec.labels.clone();
        labels.insert(TEST_LABEL.to_string(), "1".to_string());
        let body = ContainerCreateBody {
            image: Some(busybox_image().to_string()),
            cmd: Some(vec!["sh".into(), "-c".into(), spec.script.clone()]),
            env: Some(spec.env.clone()),
            labels: Some(labels),
            tty: Some(spec.tty),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                log_config: (spec.log_driver.is_some() || !spec.log_opts.is_empty()).then(|| {
                    HostConfigLogConfig {
                        typ: Some(
                            spec.log_driver
                                .clone()
                                .unwrap_or_else(|| "json-file".into()),
                        ),
                        config: Some(spec.log_opts.clone()),
                    }
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    platform: String::new(),
                }),
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("creating test container {name} failed: {e}"));
        let c = TestContainer {
            docker: docker.clone(),
            id: created.id,
            name,
        };
        if !spec.created_only {
            c.start().await;
        }
        c
    }

    pub async fn start(&self) {
        self.docker
            .start_container(
                &self.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .unwrap_or_else(|e| panic!("starting test container {} failed: {e}", self.name));
    }

    /// Inspect through the code under test.
    pub async fn info(&self) -> logroute::agent::docker::DockerContainer {
        logroute::agent::docker::inspect(&self.docker, &self.id)
            .await
            .expect("inspect test container")
            .unwrap_or_else(|| panic!("test container {} vanished", self.name))
    }

    /// Wait until the container has exited; fails after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self
                .docker
                .inspect_container(&self.id, None)
                .await
                .ok()
                .and_then(|c| c.state);
            let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
            if !running {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "test container {} still running after {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Remove now (force), e.g. to test what happens when a container disappears.
    pub async fn remove(&self) {
        let _ = self
            .docker
            .remove_container(
                &self.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        // Sync on purpose: drop may run outside a runtime, and must finish before exit.
        let _ = Command::new("docker").args(["rm", "-f", &self.id]).output();
    }
}

/// Poll `check` until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
