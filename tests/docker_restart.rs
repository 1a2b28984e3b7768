//! dockerd restarted under the agent's feet. Its own test binary with a single test, so
//! that no other Docker test of this crate runs while the daemon is down.
//!
//! The daemon is killed (SIGKILL, as in a crash: the containers keep running under their
//! shims; a containerd that dockerd started dies with it and is started again) and then
//! started again with `--live-restore`, which reattaches to the containers and resumes
//! copying their output.
//! CI starts dockerd with `--live-restore` as well, so that this restart, like any later
//! one, leaves the containers of other tests running.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logroute::agent::docker::{
    ContainerEvent, LogLine, ReadOptions, follow, negotiate, watch_containers,
};
use logroute::api::StreamName;
use logroute::metrics::AgentMetrics;
use prometheus::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use support::docker::{Spec, TestContainer, eventually};

const PID_FILE: &str = "/var/run/docker.pid";
const MANAGED_CONTAINERD_PID_FILE: &str = "/var/run/docker/containerd/containerd.pid";
const LINES: usize = 300;

#[tokio::test]
async fn reading_survives_a_dockerd_restart() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    if !Path::new(PID_FILE).exists() {
        support::env::missing("a dockerd this test may restart", "no /var/run/docker.pid");
        return;
    }
    let c = TestContainer::run(
        &docker,
        Spec::sh(format!(
            "i=1; while [ $i -le {LINES} ]; do echo \"line $i\"; i=$((i+1)); usleep 50000; done"
        )),
    )
    .await;
    let info = c.info().await;
    let m = AgentMetrics::new(&Registry::new());
    let shutdown = CancellationToken::new();

    let (events_tx, mut events_rx) = mpsc::channel(4096);
    let watcher = tokio::spawn(watch_containers(
        docker.clone(),
        events_tx,
        m.clone(),
        shutdown.clone(),
    ));
    let (tx, mut rx) = mpsc::channel::<Vec<LogLine>>(64);
    let reader = {
        let (docker, m, shutdown) = (docker.clone(), m.clone(), shutdown.clone());
        tokio::spawn(async move {
            follow(
                &docker,
                &info,
                None,
                &ReadOptions::default(),
                &tx,
                &m,
                &shutdown,
            )
            .await
        })
    };

    // Restart once the stream is well under way.
    let mut lines: Vec<LogLine> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines.len() < 20 {
        let batch = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("expected 20 lines before the restart, got {}", lines.len())
            });
        lines.extend(batch.expect("follow ended before the restart"));
    }
    let before = lines.len();
    restart_dockerd().await;
    negotiate(&docker).await.expect("restarted dockerd answers");

    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(batch) = rx.recv().await {
            lines.extend(batch);
        }
        lines
    })
    .await
    .expect("follow ends once the container has exited and its log is read");
    let cursor = reader
        .await
        .expect("reader task")
        .expect("follow survives the restart");
    let got: Vec<String> = all
        .iter()
        .filter(|l| l.stream == StreamName::Stdout)
        .map(|l| l.message.clone())
        .collect();
    let expected: Vec<String> = (1..=LINES).map(|i| format!("line {i}")).collect();
    assert!(
        got == expected,
        "after a restart at line {before}: got {} lines, expected line 1..line {LINES} once each; first differences: {:?}",
        got.len(),
        got.iter()
            .zip(&expected)
            .filter(|(g, e)| g != e)
            .take(3)
            .collect::<Vec<_>>()
    );
    assert_eq!(all.last().map(|l| l.cursor), Some(cursor));

    // Discovery reconnected, counted it, and announced the running containers again.
    eventually(
        Duration::from_secs(30),
        "docker_reconnects to count the restart",
        || {
            let n = m.docker_reconnects.get();
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    let other = TestContainer::run(&docker, Spec::sh("sleep 30")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline.into(), events_rx.recv()).await {
            Ok(Some(ContainerEvent::Running(r))) if r.id == other.id => break,
            Ok(Some(_)) => {}
            Ok(None) => panic!("discovery stopped after the restart"),
            Err(_) => panic!("a container started after the restart was not announced"),
        }
    }
    shutdown.cancel();
    watcher.await.expect("watcher task");
}

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
async fn restart_dockerd() {
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
