//! The built `logroute agent` binary as a child process, so that a test can kill it
//! (`kill -9`), stop it (SIGTERM) and start it again on the same state directory.
//!
//! Two modes: `--routes FILE` ([`AgentProc::start`]), and cluster mode
//! ([`AgentProc::start_cluster`]: no `--routes`, the API server named by a kubeconfig
//! through `KUBECONFIG`, node `node-1` through `NODE_NAME`).
//!
//! Its log (stderr) goes to `<dir>/agent-<n>.log`, one file per start; its metrics are
//! served on a free loopback port and read with [`AgentProc::metric`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the agent's routes come from.
enum Mode {
    Routes(PathBuf),
    Cluster {
        kubeconfig: PathBuf,
        namespace: String,
    },
}

/// The node name every agent started here runs as (`--node-name`, `NODE_NAME`).
pub const NODE: &str = "node-1";

pub struct AgentProc {
    child: Option<Child>,
    dir: PathBuf,
    mode: Mode,
    env: Vec<(String, String)>,
    port: u16,
    starts: usize,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl AgentProc {
    /// Start `logroute agent --routes ROUTES --state-dir DIR/state` with `env` set
    /// (e.g. `LOGROUTE_QUEUE_RECORDS`), and wait until its route is active.
    pub fn start(dir: &Path, routes: &Path, env: &[(&str, &str)]) -> AgentProc {
        let mut a = AgentProc {
            child: None,
            dir: dir.to_path_buf(),
            mode: Mode::Routes(routes.to_path_buf()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: 0,
            starts: 0,
        };
        a.restart();
        a
    }

    /// Start `logroute agent` in cluster mode against the API server of `kubeconfig`,
    /// reading compiled routes from `namespace`, and wait until it serves `/healthz`
    /// (not until it is ready: see [`AgentProc::wait_ready`]).
    pub fn start_cluster(
        dir: &Path,
        kubeconfig: &Path,
        namespace: &str,
        env: &[(&str, &str)],
    ) -> AgentProc {
        let mut a = AgentProc {
            child: None,
            dir: dir.to_path_buf(),
            mode: Mode::Cluster {
                kubeconfig: kubeconfig.to_path_buf(),
                namespace: namespace.to_string(),
            },
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: 0,
            starts: 0,
        };
        a.restart();
        a
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn checkpoint_file(&self) -> PathBuf {
        self.state_dir().join("checkpoints.v1")
    }

    /// The log of the latest start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.join(format!("agent-{n}.log"))
    }

    /// Start again (after [`AgentProc::kill9`] or [`AgentProc::terminate`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent still running");
        self.starts += 1;
        self.port = free_port();
        let log = std::fs::File::create(self.log_path(self.starts)).expect("agent log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_logroute"));
        cmd.args(["agent", "--node-name", NODE]);
        match &self.mode {
            Mode::Routes(routes) => {
                cmd.arg("--routes").arg(routes);
            }
            Mode::Cluster {
                kubeconfig,
                namespace,
            } => {
                cmd.args(["--namespace", namespace])
                    .env("KUBECONFIG", kubeconfig)
                    .env("NODE_NAME", NODE)
                    .env_remove("HTTPS_PROXY")
                    .env_remove("https_proxy");
            }
        }
        cmd.arg("--state-dir")
            .arg(self.state_dir())
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.port)])
            .env("LOGROUTE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn logroute agent"));
        match self.mode {
            Mode::Routes(_) => self.wait_until("an active route", Duration::from_secs(30), |a| {
                a.metric("logroute_agent_routes{state=\"active\"}") >= 1.0
            }),
            Mode::Cluster { .. } => {
                self.wait_until("/healthz answering", Duration::from_secs(30), |a| {
                    a.get("/healthz").is_some()
                })
            }
        }
    }

    /// Poll `check` until it holds; fail after `timeout` with the agent's log, or at
    /// once when the agent exits.
    #[track_caller]
    pub fn wait_until(&mut self, what: &str, timeout: Duration, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "agent exited ({status}) while waiting for {what}; its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent: no {what} {timeout:?} after start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The status of `GET /readyz`; `None` when the agent does not answer.
    pub fn readyz(&self) -> Option<u16> {
        self.get("/readyz").map(|(status, _)| status)
    }

    /// Wait until `/readyz` answers 200.
    #[track_caller]
    pub fn wait_ready(&mut self, timeout: Duration) {
        self.wait_until("/readyz 200", timeout, |a| a.readyz() == Some(200));
    }

    /// SIGKILL, as in a crash; waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to `timeout`) for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of the running agent (e.g. to read `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The agent's metrics port (its `/routes` report is there too).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET /metrics`; empty when the agent does not answer.
    pub fn metrics(&self) -> String {
        self.get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// `GET path` on the agent's metrics port: status and body, `None` when it does not
    /// answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string());
        Some((status, body))
    }

    /// Sum of the samples whose name and labels start with `prefix` (e.g.
    /// `logroute_agent_records_dropped_total{route="ns/r",sink="s",reason="rotated"}`
    /// or a bare metric name).
    pub fn metric(&self, prefix: &str) -> f64 {
        let (name, labels) = match prefix.split_once('{') {
            Some((n, l)) => (n, Some(l.trim_end_matches('}'))),
            None => (prefix, None),
        };
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                let (n, rest) = l.split_at(l.find(['{', ' ']).unwrap_or(l.len()));
                n == name && labels.is_none_or(|want| want.split(',').all(|kv| rest.contains(kv)))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
