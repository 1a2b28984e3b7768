//! A containerd of the test's own, driven through its CRI API, so that the CRI log files
//! (partial lines, reopen after rename) are containerd's own.
//!
//! Each [`Containerd`] has its own root, state and socket in a temporary directory and a
//! config that enables the CRI plugin with a local image as the sandbox image: a busybox
//! image built `FROM scratch` out of Debian's busybox-static (the same recipe as the
//! Docker test image) and imported with `ctr images import`, so nothing is pulled. Pod
//! sandboxes use the host network, so no CNI plugin is needed; containers write their
//! logs under `logs_root()/<namespace>_<pod>_<uid>/<container>/<attempt>.log`, the
//! kubelet's layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, ReopenContainerLogRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use sha2::{Digest as _, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

use super::env;

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const RUNC: &str = "/usr/sbin/runc";
const BUSYBOX: &str = "/bin/busybox";
/// The image tests run, also the sandbox ("pause") image: its command sleeps.
pub const IMAGE: &str = "docker.io/logroute-test/busybox:latest";
const NAMESPACE: &str = "k8s.io";

pub type Cri = RuntimeServiceClient<Channel>;

/// A running containerd with the CRI plugin.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    sandboxes: Vec<String>,
    pub cri: Cri,
}

/// A pod sandbox.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `<logs root>/<namespace>_<name>_<uid>`.
    pub log_dir: PathBuf,
    config: PodSandboxConfig,
}

impl Pod {
    /// The log directory of one of its containers.
    pub fn container_dir(&self, container: &str) -> PathBuf {
        self.log_dir.join(container)
    }
}

impl Containerd {
    /// Starts one, or returns `None` (after [`env::missing`], which fails in CI) when
    /// containerd, runc or busybox-static is not installed.
    pub async fn start_or_skip() -> Option<Self> {
        for (bin, package) in [
            (CONTAINERD, "containerd"),
            (CTR, "containerd"),
            (RUNC, "runc"),
            (BUSYBOX, "busybox-static"),
        ] {
            if !Path::new(bin).exists() {
                env::missing(
                    &format!("{bin} (Debian's {package})"),
                    "run scripts/test-deps.sh",
                );
                return None;
            }
        }
        Some(Self::start().await)
    }

    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lr-ctrd")
            .tempdir()
            .expect("temporary directory for containerd");
        let root = dir.path();
        std::fs::create_dir_all(root.join("logs")).expect("create the logs root");
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_tcp_service = true
  # The sandbox asks for oom_score_adj -998, which lowering needs CAP_SYS_RESOURCE that
  # a container running these tests may lack: never go below containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      # runc's state of its own, apart from any other containerd's on the machine.
      Root = "{root}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{root}/cni-bin"
    conf_dir = "{root}/cni-conf"
"#,
            root = root.display()
        );
        std::fs::write(root.join("config.toml"), config).expect("write containerd config");
        let log = std::fs::File::create(root.join("containerd.log")).expect("containerd log");
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut me = Containerd {
            cri: connect(&root.join("containerd.sock")).await,
            dir,
            child: Some(child),
            sandboxes: Vec::new(),
        };
        me.wait_ready().await;
        me.import_image();
        me
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Where pods' log directories are.
    pub fn logs_root(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// containerd's own log, for failure messages.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = VersionRequest {
                version: "v1".into(),
            };
            match self.cri.version(req).await {
                Ok(v) => {
                    let v = v.into_inner();
                    eprintln!(
                        "containerd CRI ready: {} {} (CRI {})",
                        v.runtime_name, v.runtime_version, v.runtime_api_version
                    );
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.cri = connect(&self.socket()).await;
                }
                Err(e) => panic!(
                    "containerd's CRI did not answer within 30 s: {e}\n{}",
                    self.daemon_log()
                ),
            }
        }
    }

    /// Builds the busybox image as a Docker archive and imports it.
    fn import_image(&self) {
        let work = self.dir.path().join("image");
        let rootfs = work.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("image rootfs");
        std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox into the image");
        let applets = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&applets.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                std::os::unix::fs::symlink("busybox", bin.join(applet))
                    .expect("link a busybox applet");
            }
        }
        let archive = work.join("archive");
        std::fs::create_dir_all(&archive).expect("archive dir");
        run(Command::new("tar")
            .arg("-cf")
            .arg(archive.join("layer.tar"))
            .arg("-C")
            .arg(&rootfs)
            .arg("."));
        let layer = std::fs::read(archive.join("layer.tar")).expect("read the layer");
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sleep", "2147483647"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&Sha256::digest(&layer)))]},
        })
        .to_string();
        let config_name = format!("{}.json", hex(&Sha256::digest(config.as_bytes())));
        std::fs::write(archive.join(&config_name), &config).expect("image config");
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": [IMAGE.trim_start_matches("docker.io/")],
            "Layers": ["layer.tar"],
        }]);
        std::fs::write(archive.join("manifest.json"), manifest.to_string()).expect("manifest");
        let tarball = work.join("image.tar");
        run(Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&archive)
            .arg("manifest.json")
            .arg(&config_name)
            .arg("layer.tar"));
        run(Command::new(CTR)
            .arg("--address")
            .arg(self.socket())
            .args(["-n", NAMESPACE, "images", "import"])
            .arg(&tarball));
    }

    /// Runs a pod sandbox on the host network.
    pub async fn run_pod(&mut self, namespace: &str, name: &str) -> Pod {
        let uid = uuid_like();
        let log_dir = self.logs_root().join(format!("{namespace}_{name}_{uid}"));
        std::fs::create_dir_all(&log_dir).expect("pod log directory");
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            // No hostname: a host-network pod has no UTS namespace of its own.
            hostname: String::new(),
            log_directory: log_dir.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            labels: HashMap::from([("logroute.test".into(), "true".into())]),
            ..Default::default()
        };
        let resp = self
            .cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox failed: {e}\n{}", self.daemon_log()));
        let id = resp.into_inner().pod_sandbox_id;
        self.sandboxes.push(id.clone());
        Pod {
            id,
            namespace: namespace.into(),
            name: name.into(),
            uid,
            log_dir,
            config,
        }
    }

    /// Creates and starts a container running `sh -c script`, logging to
    /// `<container>/<attempt>.log` in the pod's log directory. Returns its id.
    pub async fn run_container(
        &mut self,
        pod: &Pod,
        container: &str,
        attempt: u32,
        script: &str,
    ) -> String {
        std::fs::create_dir_all(pod.container_dir(container)).expect("container log dir");
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: container.into(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{container}/{attempt}.log"),
            ..Default::default()
        };
        let resp = self
            .cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer failed: {e}\n{}", self.daemon_log()));
        let id = resp.into_inner().container_id;
        self.cri
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer failed: {e}\n{}", self.daemon_log()));
        id
    }

    /// The kubelet's rotation: rename `<attempt>.log` to `<attempt>.log.<timestamp>`, then
    /// have the runtime reopen `<attempt>.log`. Returns the rotated file's path.
    pub async fn rotate(&mut self, pod: &Pod, container: &str, attempt: u32, id: &str) -> PathBuf {
        let dir = pod.container_dir(container);
        let current = dir.join(format!("{attempt}.log"));
        // The kubelet stamps with seconds; tests rotate faster, so keep names unique.
        let mut stamp = chrono::Utc::now();
        let rotated = loop {
            let p = dir.join(format!("{attempt}.log.{}", stamp.format("%Y%m%d-%H%M%S")));
            if !p.exists() {
                break p;
            }
            stamp += chrono::Duration::seconds(1);
        };
        std::fs::rename(&current, &rotated).expect("rename the log file");
        self.cri
            .reopen_container_log(ReopenContainerLogRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("ReopenContainerLog failed: {e}\n{}", self.daemon_log()));
        rotated
    }

    /// Whether the container has exited.
    pub async fn exited(&mut self, id: &str) -> bool {
        let status = self
            .cri
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus failed: {e}"))
            .into_inner()
            .status
            .expect("a container status");
        status.state == ContainerState::ContainerExited as i32
    }

    /// Waits until the container has exited.
    pub async fn wait_exit(&mut self, id: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.exited(id).await {
            assert!(
                Instant::now() < deadline,
                "container {id} still running after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop_container(&mut self, id: &str) {
        self.cri
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 1,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer failed: {e}"));
    }

    pub async fn remove_container(&mut self, id: &str) {
        self.cri
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer failed: {e}"));
    }

    /// Stops and removes the pod with its containers (their log files stay, as the
    /// kubelet leaves them until it cleans up).
    pub async fn remove_pod(&mut self, pod: &Pod) {
        self.cri
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox failed: {e}"));
        self.cri
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox failed: {e}"));
        self.sandboxes.retain(|s| *s != pod.id);
    }

    /// Removes every pod left and stops containerd.
    pub async fn shutdown(mut self) {
        for id in std::mem::take(&mut self.sandboxes) {
            let _ = self
                .cri
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let _ = self
                .cri
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
        }
        self.stop();
    }

    /// Kills containerd, the shims it started (found by its socket in their command
    /// line) and unmounts what is left under the test's directory.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Containers still running (a test that failed before removing its pods) would
        // outlive their shims: kill them by the pids runc recorded in its own state.
        for pid in container_pids(&self.dir.path().join("runc")) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = child.kill();
        let _ = child.wait();
        let socket = self.socket().display().to_string();
        for pid in processes_mentioning(&socket) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn connect(socket: &Path) -> Cri {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }));
    RuntimeServiceClient::new(channel)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_like() -> String {
    let h = hex(&Sha256::digest(format!(
        "{:?}{}",
        Instant::now(),
        std::process::id()
    )));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The init pids of the containers runc keeps state for under `root`.
fn container_pids(root: &Path) -> Vec<u32> {
    let Ok(namespaces) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    namespaces
        .flatten()
        .filter_map(|ns| std::fs::read_dir(ns.path()).ok())
        .flat_map(|containers| containers.flatten())
        .filter_map(|c| std::fs::read(c.path().join("state.json")).ok())
        .filter_map(|state| {
            let state: serde_json::Value = serde_json::from_slice(&state).ok()?;
            u32::try_from(state.get("init_process_pid")?.as_u64()?).ok()
        })
        .filter(|pid| *pid > 1)
        .collect()
}

/// Processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}
