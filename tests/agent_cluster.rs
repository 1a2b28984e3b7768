//! The agent in cluster mode, as a child process (`logroute agent` without `--routes`),
//! against the test API server (real list + watch over HTTP), real dockerd and rsyslog.
//! Compiled routes are written the way the controller writes them (support/cluster.rs).
//!
//! Every case asserts what rsyslog received: each expected line exactly once, in order,
//! with its pod in the structured data. Issue 11 lists the promises these check.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::agent_proc::AgentProc;
use support::cluster::{Cluster, PodId};
use support::docker::TestContainer;
use support::rsyslog::{Received, Rsyslog};
use support::sequence;
use support::suspend;

const WAIT: Duration = Duration::from_secs(30);
const ACTIVE: &str = "logroute_agent_routes{state=\"active\"}";
const DROPPED: &str = "logroute_agent_records_dropped_total";

const TCP_ROUTE: &str = r#"
sinks:
- name: central
  syslog: {address: "127.0.0.1:{tcp}"}
"#;

/// `n` lines `<prefix>-1` … `<prefix>-n`, one every `pause_us` microseconds.
fn ticker(prefix: &str, n: usize, pause_us: u32) -> String {
    format!("i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo {prefix}-$i; usleep {pause_us}; done")
}

/// Lines the container has written to its log so far, as Docker holds them.
fn printed(c: &TestContainer) -> usize {
    let out = Command::new("docker")
        .args(["logs", &c.id])
        .output()
        .expect("run docker logs");
    out.stdout.iter().filter(|b| **b == b'\n').count()
}

#[track_caller]
fn until_printed(c: &TestContainer, n: usize) {
    let deadline = Instant::now() + WAIT;
    while printed(c) < n {
        assert!(
            Instant::now() < deadline,
            "container {} printed {} of {n} lines within {WAIT:?}",
            c.name,
            printed(c)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The records rsyslog received from `pod` (APP-NAME is the pod).
fn of_pod(rs: &Rsyslog, pod: &PodId) -> Vec<Received> {
    rs.received()
        .into_iter()
        .filter(|r| r.app == pod.name)
        .collect()
}

/// Wait until at least `n` records of `pod` arrived; fail naming `what` with the agent's
/// log after [`WAIT`].
fn wait_for_lines(rs: &Rsyslog, pod: &PodId, n: usize, what: &str, agent: &AgentProc) {
    let deadline = Instant::now() + WAIT;
    while of_pod(rs, pod).len() < n {
        assert!(
            Instant::now() < deadline,
            "{what}; agent log:\n{}",
            log_tail(agent)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `n` records of `pod` arrived (or `timeout` passed), then until nothing
/// more arrives for 500 ms, so that repeats would be seen too. Returns them.
fn settle(rs: &Rsyslog, pod: &PodId, n: usize, timeout: Duration) -> Vec<Received> {
    let deadline = Instant::now() + timeout;
    while of_pod(rs, pod).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    loop {
        let before = of_pod(rs, pod).len();
        std::thread::sleep(Duration::from_millis(500));
        let after = of_pod(rs, pod);
        if after.len() == before {
            return after;
        }
    }
}

/// `None` when `got` holds `<prefix>-1` … `<prefix>-n` once each, in order; otherwise
/// what is wrong (counts, missing ranges, repeats).
fn check_sequence(got: &[Received], prefix: &str, n: usize) -> Option<String> {
    let nums: Vec<usize> = got
        .iter()
        .filter_map(|r| r.msg.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok())
        .collect();
    if nums == (1..=n).collect::<Vec<_>>() {
        return None;
    }
    let seen = sequence::counts(&nums, n);
    let missing = sequence::missing_ranges(&seen, n);
    let repeated = seen.iter().filter(|c| **c > 1).count();
    let ordered = nums.windows(2).all(|w| w[0] < w[1]);
    Some(format!(
        "{} of the {n} lines {prefix}-1..={prefix}-{n} received; missing {missing:?}; {repeated} repeated; in order: {ordered}",
        nums.len()
    ))
}

fn log_tail(agent: &AgentProc) -> String {
    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Every record names its namespace and pod in the structured data.
fn check_metadata(got: &[Received], ns: &str, pod: &PodId) -> Option<String> {
    let bad: Vec<&str> = got
        .iter()
        .filter(|r| {
            r.sd_param("namespace").as_deref() != Some(ns)
                || r.sd_param("pod").as_deref() != Some(&pod.name)
        })
        .map(|r| r.sd.as_str())
        .take(3)
        .collect();
    (!bad.is_empty()).then(|| format!("records without their pod metadata, e.g. {bad:?}"))
}

#[track_caller]
fn wait_active(agent: &mut AgentProc, n: usize) {
    agent.wait_until(&format!("{n} active routes"), WAIT, |a| {
        a.metric(ACTIVE) == n as f64
    });
}

/// Panic with every problem found, and the agent's log tail.
#[track_caller]
fn verdict(problems: Vec<String>, agent: &AgentProc) {
    assert!(
        problems.is_empty(),
        "{}\n--- agent log (tail) ---\n{}",
        problems.join("\n"),
        log_tail(agent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_started_after_routes_and_pods_forwards_every_line() {
    let Some(c) = Cluster::start("late-agent").await else {
        return;
    };
    c.route("all", TCP_ROUTE);
    c.publish("all");
    let pod = c.pod("web", &[("app", "web")], &[]);
    const N: usize = 400;
    let container = c.run(&pod, "api", &ticker("line", N, 10_000)).await;
    until_printed(&container, 50);
    // The API server answers no list yet: the agent cannot have synced.
    c.api.hold_lists(true);
    let mut agent = c.agent(&[]);
    let mut problems = Vec::new();
    match agent.readyz() {
        Some(503) => {}
        other => problems.push(format!(
            "/readyz before routes and pods were listed: {other:?}, want 503"
        )),
    }
    c.api.hold_lists(false);
    agent.wait_ready(WAIT);
    container.wait_exit(WAIT).await;
    let got = settle(&c.rsyslog, &pod, N, WAIT);
    problems.extend(check_sequence(&got, "line", N));
    problems.extend(check_metadata(&got, &c.ns, &pod));
    verdict(problems, &agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_killed_and_restarted_loses_and_repeats_nothing() {
    let Some(c) = Cluster::start("kill9").await else {
        return;
    };
    let mut agent = c.agent(&[]);
    agent.wait_ready(WAIT);
    c.route("all", TCP_ROUTE);
    c.publish("all");
    wait_active(&mut agent, 1);
    let pod = c.pod("steady", &[("app", "steady")], &[]);
    const N: usize = 600;
    let container = c.run(&pod, "api", &ticker("tick", N, 10_000)).await;
    wait_for_lines(&c.rsyslog, &pod, 100, "100 lines before the kill", &agent);
    agent.kill9();
    // Lines written while no agent runs.
    until_printed(&container, printed(&container) + 100);
    agent.restart();
    agent.wait_ready(WAIT);
    container.wait_exit(WAIT).await;
    let got = settle(&c.rsyslog, &pod, N, WAIT);
    let nums: Vec<usize> = got
        .iter()
        .filter_map(|r| r.msg.strip_prefix("tick-")?.parse().ok())
        .collect();
    // The documented window: a kill between a send and the store of its checkpoint
    // repeats that send (here one or two records: the ticker is slow). Under a loaded
    // machine the kill can land there; anything else is a failure.
    let mut problems: Vec<String> = match sequence::one_send_repeated(&nums, N, 64) {
        Some((a, b)) => {
            eprintln!(
                "the kill landed between a send and its checkpoint: tick-{a}..=tick-{b} repeated once"
            );
            Vec::new()
        }
        None => check_sequence(&got, "tick", N).into_iter().collect(),
    };
    problems.extend(check_metadata(&got, &c.ns, &pod));
    verdict(problems, &agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_and_pod_created_together_deliver_the_first_line() {
    let Some(c) = Cluster::start("together").await else {
        return;
    };
    let mut agent = c.agent(&[]);
    agent.wait_ready(WAIT);
    // One `kubectl apply`: the LogRoute and the pod; the container prints at once.
    c.route("all", TCP_ROUTE);
    let pod = c.pod("fresh", &[("app", "fresh")], &[]);
    const N: usize = 300;
    let container = c.run(&pod, "api", &ticker("first", N, 10_000)).await;
    // A slow controller: the compiled route arrives after ~100 lines (1–2 s).
    until_printed(&container, 100);
    c.publish("all");
    wait_active(&mut agent, 1);
    container.wait_exit(WAIT).await;
    let got = settle(&c.rsyslog, &pod, N, WAIT);
    let mut problems: Vec<String> = check_sequence(&got, "first", N).into_iter().collect();
    problems.extend(check_metadata(&got, &c.ns, &pod));
    verdict(problems, &agent);
}

const TLS_ROUTE: &str = r#"
sinks:
- name: secure
  syslog:
    address: "127.0.0.1:{tls}"
    transport: tls
    tls: {caSecretRef: {name: syslog-ca, key: ca.crt}, serverName: localhost}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_secret_rotated_while_lines_flow_loses_nothing() {
    let Some(c) = Cluster::start("rotate").await else {
        return;
    };
    let mut agent = c.agent(&[]);
    agent.wait_ready(WAIT);
    let ca = c.rsyslog.ca_pem();
    c.secret("syslog-ca", &[("ca.crt", &ca)]);
    c.route("tls", TLS_ROUTE);
    c.publish("tls");
    wait_active(&mut agent, 1);
    let pod = c.pod("rotating", &[("app", "r")], &[]);
    const N: usize = 800;
    let container = c.run(&pod, "api", &ticker("rot", N, 10_000)).await;
    wait_for_lines(
        &c.rsyslog,
        &pod,
        100,
        "100 lines before the rotation",
        &agent,
    );
    // Rotation: the Secret is deleted, so the controller withdraws the route (ConfigMap,
    // then its Secret); the new Secret comes back ~1.5 s later and the route with it.
    c.api.delete("v1", "Secret", &c.ns, "syslog-ca");
    c.withdraw("tls");
    wait_active(&mut agent, 0);
    until_printed(&container, printed(&container) + 150);
    c.secret("syslog-ca", &[("ca.crt", &ca)]);
    c.publish("tls");
    wait_active(&mut agent, 1);
    container.wait_exit(WAIT).await;
    let got = settle(&c.rsyslog, &pod, N, WAIT);
    let mut problems: Vec<String> = check_sequence(&got, "rot", N).into_iter().collect();
    problems.extend(check_metadata(&got, &c.ns, &pod));
    let dropped = agent.metric(DROPPED);
    if dropped != 0.0 {
        problems.push(format!(
            "{dropped} records counted dropped across a Secret rotation, want 0"
        ));
    }
    verdict(problems, &agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_deleted_while_its_sink_lags_keeps_its_metadata_for_the_tail() {
    let Some(c) = Cluster::start("tail").await else {
        return;
    };
    // A small queue, so that the suspended sink falls behind and reads the tail back
    // from Docker after the pod is gone from the API.
    let mut agent = c.agent(&[("LOGROUTE_QUEUE_RECORDS", "64")]);
    agent.wait_ready(WAIT);
    c.route(
        "by-label",
        &format!("selector: {{matchLabels: {{app: tail}}}}\n{TCP_ROUTE}"),
    );
    c.publish("by-label");
    wait_active(&mut agent, 1);
    let pod = c.pod("shutting-down", &[("app", "tail")], &[]);
    let pid = suspend::listener_pid(c.rsyslog.tcp_port).expect("rsyslog's TCP listener");
    const N: usize = 3000;
    let script = "echo warm; sleep 2; seq 1 3000 | sed 's/^/tail-/'; sleep 3; echo tail-3001";
    let container = c.run(&pod, "api", script).await;
    wait_for_lines(&c.rsyslog, &pod, 1, "the warm-up line", &agent);
    suspend::set_suspended(pid, true);
    until_printed(&container, 1 + N);
    c.delete_pod(&pod);
    container.wait_exit(WAIT).await;
    suspend::set_suspended(pid, false);
    let got: Vec<Received> = settle(&c.rsyslog, &pod, 1 + N + 1, WAIT)
        .into_iter()
        .filter(|r| r.msg != "warm")
        .collect();
    let mut problems: Vec<String> = check_sequence(&got, "tail", N + 1).into_iter().collect();
    problems.extend(check_metadata(&got, &c.ns, &pod));
    verdict(problems, &agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_and_expired_watches_relist_and_apply_the_missed_change() {
    let Some(c) = Cluster::start("relist").await else {
        return;
    };
    let mut agent = c.agent(&[]);
    agent.wait_ready(WAIT);
    let v1 = TCP_ROUTE.replace("{tcp}\"}", "{tcp}\", facility: local1}");
    c.route("all", &v1);
    c.publish("all");
    wait_active(&mut agent, 1);
    let pod = c.pod("ticker", &[("app", "t")], &[]);
    const N: usize = 800;
    let container = c.run(&pod, "api", &ticker("w", N, 10_000)).await;
    wait_for_lines(&c.rsyslog, &pod, 100, "100 lines before the outage", &agent);
    let lists = |c: &Cluster| {
        c.api
            .requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET /api/v1/namespaces/logroute-system/configmaps?")
                    && !r.contains("watch=")
            })
            .count()
    };
    let lists_before = lists(&c);
    // An outage of the watch: the route changes meanwhile, the history is compacted and
    // the connections drop, so the agent's re-watch gets 410 and must re-list.
    c.api.pause_watches(true);
    c.route(
        "all",
        &TCP_ROUTE.replace("{tcp}\"}", "{tcp}\", facility: local2}"),
    );
    c.publish("all");
    c.api.compact();
    c.api.drop_watches();
    c.api.pause_watches(false);
    let mut problems = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !of_pod(&c.rsyslog, &pod).iter().any(|r| r.facility == 18) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !of_pod(&c.rsyslog, &pod).iter().any(|r| r.facility == 18) {
        problems.push(format!(
            "the route change made during the outage was not applied within {WAIT:?}"
        ));
    }
    if lists(&c) <= lists_before {
        problems.push("the agent did not re-list its ConfigMaps after 410".to_string());
    }
    container.wait_exit(WAIT).await;
    let got = settle(&c.rsyslog, &pod, N, WAIT);
    problems.extend(check_sequence(&got, "w", N));
    verdict(problems, &agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn container_that_ran_while_no_agent_ran_is_read_at_the_next_start() {
    let Some(c) = Cluster::start("downtime").await else {
        return;
    };
    let mut agent = c.agent(&[]);
    agent.wait_ready(WAIT);
    c.route("all", TCP_ROUTE);
    c.publish("all");
    wait_active(&mut agent, 1);
    let warm = c.pod("warm", &[], &[]);
    let _warm = c.run(&warm, "c", "echo warm").await;
    wait_for_lines(&c.rsyslog, &warm, 1, "the warm-up line", &agent);
    assert!(
        agent.terminate(Duration::from_secs(20)),
        "agent stops cleanly on SIGTERM; log:\n{}",
        log_tail(&agent)
    );
    // A CronJob-like pod that runs ~1–2 s during the agent's rollout.
    let pod = c.pod("cron", &[("app", "cron")], &[]);
    const N: usize = 200;
    let started = Instant::now();
    let container = c.run(&pod, "job", &ticker("job", N, 5_000)).await;
    container.wait_exit(WAIT).await;
    // The rollout's downtime, not a wait for something: the new agent starts 5 s after
    // the job did, past the few seconds of Docker events a reconnect may replay, so only
    // a discovery that lists exited containers finds the job.
    let downtime = started + Duration::from_secs(5);
    while Instant::now() < downtime {
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.restart();
    agent.wait_ready(WAIT);
    let got = settle(&c.rsyslog, &pod, N, WAIT);
    let mut problems: Vec<String> = check_sequence(&got, "job", N).into_iter().collect();
    problems.extend(check_metadata(&got, &c.ns, &pod));
    verdict(problems, &agent);
}
