//! Containers that ran while no agent did are read at the next start (issue 11, item 5):
//! discovery lists exited containers too, from the agent's restart start point on.
//! Real dockerd and rsyslog; the agent is the built binary (host mode, `--routes`).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use logroute::agent::docker::{ContainerEvent, DockerContainer, watch_containers};
use logroute::metrics::AgentMetrics;
use logroute::record::Timestamp;
use prometheus::Registry;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use support::agent_proc::AgentProc;
use support::docker::{Spec, TestContainer, docker, pod_labels, pod_uid};
use support::rsyslog::Rsyslog;

/// The tests of this file run one at a time (the machine is small).
static SERIAL: Mutex<()> = Mutex::const_new(());

const LINES: usize = 500;

const ROUTES: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: all, namespace: "{ns}"}
spec:
  sinks:
  - name: central
    syslog: {address: "127.0.0.1:{tcp}"}
"#;

/// A pod container of namespace `ns` that prints `<tag>-1` … `<tag>-LINES` and exits.
fn printer(ns: &str, tag: &str) -> Spec {
    Spec::sh(format!(
        "i=1; while [ $i -le {LINES} ]; do echo {tag}-$i; i=$((i+1)); done"
    ))
    .labels(pod_labels(ns, tag, &pod_uid(), "app"))
}

#[tokio::test]
async fn a_container_that_ran_while_the_agent_was_stopped_is_read_exactly_once_at_its_next_start() {
    let _serial = SERIAL.lock().await;
    let Some(docker) = docker().await else {
        return;
    };
    let Some(rsyslog) = Rsyslog::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = format!("restart-{}", std::process::id());
    let routes = dir.path().join("routes.yaml");
    let text = ROUTES
        .replace("{ns}", &ns)
        .replace("{tcp}", &rsyslog.tcp_port.to_string());
    std::fs::write(&routes, text).expect("write routes");

    let mut agent = AgentProc::start(dir.path(), &routes, &[]);
    assert!(
        agent.terminate(Duration::from_secs(30)),
        "the agent did not exit cleanly on SIGTERM; its log:\n{}",
        agent.log()
    );

    // While no agent runs: a container prints its lines and exits.
    let tag = format!("gap{}", std::process::id());
    let c = TestContainer::run(&docker, printer(&ns, &tag)).await;
    c.wait_exit(Duration::from_secs(30)).await;
    // A rollout's gap is longer than the 2 s that discovery's event subscription reaches
    // back: let the exit be older than that, as it would be.
    let finished = c.info().await.finished_at.expect("finish time");
    while Timestamp::now().secs < finished.secs + 4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    agent.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = Vec::new();
    while received.len() < LINES && Instant::now() < deadline {
        received = messages(&rsyslog);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Delivered what it will deliver (a repeat would come now).
    wait_settled(&agent, Duration::from_secs(30));
    let received = messages(&rsyslog);

    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in &received {
        *seen.entry(m.as_str()).or_default() += 1;
    }
    let expected: Vec<String> = (1..=LINES).map(|n| format!("{tag}-{n}")).collect();
    let missing = expected
        .iter()
        .filter(|e| !seen.contains_key(e.as_str()))
        .count();
    let repeated = seen.values().filter(|n| **n > 1).count();
    assert!(
        missing == 0 && repeated == 0 && received.len() == LINES,
        "expected each of the {LINES} lines of the container that ran while the agent was stopped exactly once; \
         got {} messages: {missing} lines missing, {repeated} repeated; agent log:\n{}",
        received.len(),
        agent.log()
    );
}

/// Messages rsyslog received.
fn messages(rsyslog: &Rsyslog) -> Vec<String> {
    rsyslog.received().into_iter().map(|r| r.msg).collect()
}

/// Poll until the agent has nothing queued, no lagging lane and no sink lag.
fn wait_settled(agent: &AgentProc, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let queued = agent.metric("logroute_agent_queue_depth");
        let detached = agent.metric("logroute_agent_lanes_detached");
        let lag = agent.metric("logroute_agent_sink_lag_seconds");
        if !agent.metrics().is_empty() && queued == 0.0 && detached == 0.0 && lag == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent not settled after {timeout:?}: {queued} queued, {detached} lanes detached, {lag} s lag"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Discovery itself: an exited container is announced (as not running) when it exited
/// at or after the floor, and not when it exited before.
#[tokio::test]
async fn discovery_announces_containers_that_exited_since_its_floor() {
    let _serial = SERIAL.lock().await;
    let Some(docker) = docker().await else {
        return;
    };
    // Older than the exited container: Docker lists newest first, so when the marker is
    // announced the list has passed the exited container.
    let marker = TestContainer::run(&docker, Spec::sh("sleep 120")).await;
    let before = Timestamp::now();
    let exited = TestContainer::run(&docker, Spec::sh("echo done")).await;
    exited.wait_exit(Duration::from_secs(30)).await;
    let finished = exited.info().await.finished_at.expect("finish time");

    let seen = announced(&docker, before, &exited.id).await;
    let found = seen.last().expect("announced");
    assert!(
        !found.running && found.id == exited.id,
        "announced as not running: {found:?}"
    );

    let after = Timestamp {
        secs: finished.secs + 10,
        nanos: 0,
    };
    let seen = announced(&docker, after, &marker.id).await;
    assert!(
        seen.iter().all(|c| c.id != exited.id),
        "an exited container was announced although it finished ({finished:?}) 10 s before the floor"
    );
}

/// Run discovery from `floor` and collect what it announces up to and including `until`
/// (a container id); fails when that is not announced within 20 s.
async fn announced(
    docker: &bollard::Docker,
    floor: Timestamp,
    until: &str,
) -> Vec<DockerContainer> {
    let (tx, mut rx) = mpsc::channel(4096);
    let shutdown = CancellationToken::new();
    let metrics = AgentMetrics::new(&Registry::new());
    let watcher = tokio::spawn(watch_containers(
        docker.clone(),
        tx,
        metrics,
        shutdown.clone(),
        floor,
    ));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(ContainerEvent::Running(c))) => {
                let last = c.id == until;
                seen.push(c);
                if last {
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("discovery stopped"),
            Err(_) => panic!(
                "container {until} was not announced within 20 s (floor {floor:?}); announced: {:?}",
                seen.iter()
                    .map(|c: &DockerContainer| &c.name)
                    .collect::<Vec<_>>()
            ),
        }
    }
    shutdown.cancel();
    watcher.await.expect("watcher task");
    seen
}
