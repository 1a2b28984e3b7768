//! Restarting the shared dockerd for tests/docker_restart.rs and tests/delivery.rs
//! (SIGKILL as in a crash, then `dockerd --live-restore`, which reattaches to the running
//! containers).
//! Callers keep such tests serialized and short.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const PID_FILE: &str = "/var/run/docker.pid";
const MANAGED_CONTAINERD_PID_FILE: &str = "/var/run/docker/containerd/containerd.pid";

/// True when `pid` has exited: no /proc entry, or a zombie not reaped yet.
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Wait for the process named in `pid_file` to die (up to `timeout`), then remove the
/// file: a killed process stays a zombie until its parent reaps it, and dockerd takes
/// a pid file whose process has a /proc entry for a daemon still running. Returns
/// whether the process died.
async fn wait_dead_and_unlink(pid_file: &str, timeout: Duration) -> bool {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return true;
    };
    let pid = pid.trim().to_string();
    let deadline = Instant::now() + timeout;
    while !dead(&pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(pid_file);
    true
}

/// Kill dockerd and start it again with `--live-restore`; returns once it answers.
pub async fn restart_dockerd() {
    let pid = std::fs::read_to_string(PID_FILE).expect("read dockerd pid file");
    let pid = pid.trim().to_string();
    let status = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid} failed");
    assert!(
        wait_dead_and_unlink(PID_FILE, Duration::from_secs(20)).await,
        "dockerd {pid} survived SIGKILL"
    );
    // A containerd that dockerd started itself is killed along with it (parent-death
    // signal); a system containerd keeps running and is reused.
    wait_dead_and_unlink(MANAGED_CONTAINERD_PID_FILE, Duration::from_secs(5)).await;
    let log_path = std::env::temp_dir().join("logroute-test-dockerd.log");
    let log = std::fs::File::create(&log_path).expect("dockerd log file");
    // `setsid --fork`: the daemon runs in its own session and outlives this test.
    let started = Command::new("setsid")
        .args(["--fork", "dockerd", "--live-restore"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file handle"))
        .stderr(log)
        .status()
        .expect("start dockerd --live-restore");
    assert!(
        started.success(),
        "setsid --fork dockerd --live-restore failed: {started}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let answered = loop {
        // The socket file is recreated by the new daemon: connect anew each time.
        if let Ok(d) = logroute::agent::docker::connect("unix:///var/run/docker.sock") {
            if d.ping().await.is_ok() {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        answered,
        "dockerd --live-restore did not come back within 60 s; its log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}
