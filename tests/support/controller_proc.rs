//! One `logroute controller` child process against the in-test API server, with the
//! route health flags a test wants; killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OPERATOR_NS: &str = "logroute-system";

pub struct ControllerProc {
    child: Option<Child>,
    log: PathBuf,
    pub port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl ControllerProc {
    /// Start with `extra` flags (e.g. `--health-poll-ms 300`).
    pub fn start(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> ControllerProc {
        let port = free_port();
        let log = dir.join("controller.log");
        let file = std::fs::File::create(&log).expect("controller log file");
        let child = Command::new(env!("CARGO_BIN_EXE_logroute"))
            .args(["controller", "--namespace", OPERATOR_NS])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", "ctl")
            .env("LOGROUTE_LOG", "info,logroute::controller::health=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn logroute controller");
        ControllerProc {
            child: Some(child),
            log,
            port,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The body of `GET path` on the metrics port.
    pub fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    }

    /// Poll `check` until it gives `Some`; fail after `timeout` (or when the process
    /// exits) naming what was expected, what `seen` shows last, and the log.
    #[track_caller]
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check() {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "controller exited ({status}) while waiting for {what}; last seen: {last}\nlog:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}; last seen: {last}\ncontroller log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
