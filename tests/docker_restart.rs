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
use support::dockerd::{PID_FILE, restart_dockerd};
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
        logroute::record::Timestamp::now(),
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
