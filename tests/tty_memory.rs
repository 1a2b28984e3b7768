//! Memory bounds the agent promises (README "Memory"), measured as peak RSS:
//!
//! - A TTY container writing one enormous line: memory stays bounded by
//!   `--max-line-bytes`, the cut is forwarded and counted, and the next line arrives; for
//!   the reader alone (this process's peak RSS) and for the agent binary (its peak RSS).
//! - A route whose receiver stopped taking records, fed 1 MiB lines: its queue stays
//!   within its share of `--queue-bytes`, another route keeps flowing, and once the
//!   receiver is back every line arrives exactly once (read again from Docker).
//!
//! In their own test binary, one at a time, so that the peaks measured are the tests'.

mod support;

use std::time::{Duration, Instant};

use logroute::agent::docker::{LogLine, ReadOptions, follow};
use logroute::metrics::AgentMetrics;
use prometheus::Registry;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use support::agent_proc::AgentProc;
use support::docker::{Spec, TestContainer, pod_labels, pod_uid};
use support::rsyslog::Rsyslog;
use support::suspend::{listener_pid, set_suspended};

/// Taken by every test of this file.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The line written: 200 MB without a newline.
const LINE_BYTES: usize = 200_000_000;
/// What the agent cuts at by default (`--max-line-bytes`).
const MAX_LINE_BYTES: usize = 1 << 20;
/// Peak RSS growth allowed while reading: the assembler holds at most one cut line
/// (1 MiB) and hands it out once, the socket is read 256 KiB at a time; the rest is
/// allocator slack. Reading through bollard holds the whole 200 MB line.
const RSS_BOUND_KIB: u64 = 16 * 1024;

/// Peak RSS growth allowed for the agent binary: the reader's share as above, plus the
/// cut record on its way through the lane, the syslog sink's queue and its encoder.
const AGENT_RSS_BOUND_KIB: u64 = 32 * 1024;

/// A field of /proc/<pid>/status (`self` for this process), in KiB.
fn status_kib(pid: &str, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

/// Reset the peak RSS (VmHWM) of `pid` to its current RSS and return it.
fn reset_peak(pid: &str) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    status_kib(pid, "VmHWM")
}

fn script() -> String {
    format!("head -c {LINE_BYTES} /dev/zero | tr '\\0' x; printf '\\nshort line\\n'")
}

#[tokio::test]
async fn a_200_mb_tty_line_is_cut_with_bounded_memory_and_the_next_line_arrives() {
    // This one measures this process's own peak: no other test may run meanwhile (the
    // stalled-route test reads 150 MB back from rsyslog).
    let _serial = SERIAL.lock().await;
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let script = format!("head -c {LINE_BYTES} /dev/zero | tr '\\0' x; printf '\\nshort line\\n'");
    let c = TestContainer::run(&docker, Spec::sh(script).tty().created_only()).await;
    let m = AgentMetrics::new(&Registry::new());
    let opts = ReadOptions {
        max_line_bytes: MAX_LINE_BYTES,
        unix_socket: Some("/var/run/docker.sock".into()),
        ..Default::default()
    };
    let (tx, mut rx) = mpsc::channel::<Vec<LogLine>>(1);
    // Keep what each line was, not the line.
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(batch) = rx.recv().await {
            for l in batch {
                let head: String = l.message.chars().take(20).collect();
                seen.push((l.message.len(), head, l.truncated));
            }
        }
        seen
    });

    let baseline = reset_peak("self");
    c.start().await;
    let info = c.info().await;
    let started = Instant::now();
    let cursor = tokio::time::timeout(
        Duration::from_secs(180),
        follow(
            &docker,
            &info,
            None,
            &opts,
            &tx,
            &m,
            &CancellationToken::new(),
        ),
    )
    .await
    .expect("follow ends within 3 minutes")
    .expect("follow succeeds");
    drop(tx);
    let seen = collector.await.expect("collector");
    let peak = status_kib("self", "VmHWM");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "read {LINE_BYTES} B TTY line in {:?}; VmHWM {baseline} KiB -> {peak} KiB (+{growth} KiB); cursor {cursor:?}",
        started.elapsed()
    );

    let x = "x".repeat(20);
    assert_eq!(
        seen,
        vec![
            (MAX_LINE_BYTES, x, true),
            ("short line".len(), "short line".to_string(), false)
        ],
        "expected the cut line (1 MiB, truncated) and then the short line"
    );
    assert_eq!(m.lines_truncated.get(), 1, "the cut is counted");
    assert!(
        growth < RSS_BOUND_KIB,
        "peak RSS grew by {growth} KiB while reading, expected under {RSS_BOUND_KIB} KiB"
    );
}

const ROUTE: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: all, namespace: "{ns}"}
spec:
  sinks:
  - name: central
    syslog: {address: "127.0.0.1:{tcp}", maxMessageBytes: 1048576}
"#;

/// The agent binary, syslog sink: the cut record and the short line reach rsyslog, the
/// cut is counted, and the agent's peak RSS grows by less than [`AGENT_RSS_BOUND_KIB`].
#[tokio::test]
async fn the_agent_forwards_a_200_mb_tty_line_cut_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let Some(rsyslog) = Rsyslog::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = format!("tty-{}", std::process::id());
    let routes = dir.path().join("routes.yaml");
    let text = ROUTE
        .replace("{ns}", &ns)
        .replace("{tcp}", &rsyslog.tcp_port.to_string());
    std::fs::write(&routes, text).expect("write routes");
    let agent = AgentProc::start(dir.path(), &routes, &[]);
    let pid = agent.pid().expect("agent pid").to_string();
    let baseline = reset_peak(&pid);
    let started = Instant::now();
    let spec = Spec::sh(script())
        .tty()
        .labels(pod_labels(&ns, "tty", &pod_uid(), "app"));
    let _c = TestContainer::run(&docker, spec).await;
    let deadline = started + Duration::from_secs(180);
    let got = loop {
        let got: Vec<String> = rsyslog.received().into_iter().map(|r| r.msg).collect();
        if got.iter().any(|m| m == "short line") {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "no \"short line\" at rsyslog within 180 s; received {} messages, starting {:?}; agent log:\n{}",
            got.len(),
            got.iter()
                .map(|m| m.chars().take(40).collect::<String>())
                .collect::<Vec<_>>(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let peak = status_kib(&pid, "VmHWM");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "agent: {LINE_BYTES} B TTY line forwarded in {:?}; VmHWM {baseline} KiB -> {peak} KiB (+{growth} KiB)",
        started.elapsed()
    );
    let shape: Vec<(bool, bool)> = got
        .iter()
        .map(|m| (m.starts_with(&"x".repeat(100_000)), m == "short line"))
        .collect();
    assert_eq!(
        shape,
        vec![(true, false), (false, true)],
        "expected the cut line (x..., cut again by the syslog sink to fit 1 MiB) and then the short line"
    );
    assert_eq!(
        agent.metric("logroute_agent_lines_truncated_total"),
        1.0,
        "the cut is counted"
    );
    assert!(
        growth < AGENT_RSS_BOUND_KIB,
        "the agent's peak RSS grew by {growth} KiB, expected under {AGENT_RSS_BOUND_KIB} KiB"
    );
}

/// Lines of the stalled tenant: numbered, each just under 1 MiB.
const BIG_LINES: usize = 150;
const BIG_LINE_BYTES: usize = 1_000_000;
/// Lines of the other route's container.
const SMALL_LINES: usize = 2_000;
/// The agent's queue budget in this test: 16 MiB for both routes' queues together.
const QUEUE_BYTES: usize = 16 << 20;
/// Peak RSS growth allowed: the stalled queue's share (8 MiB) plus the batch its worker
/// holds and has encoded (at most the same again), the container's reader hand-off
/// (8 batches of at most ~1 MiB + one line) and allocator slack. Without the byte bound
/// the stalled queue alone held all 150 lines (about 150 MB).
const BUDGET_RSS_BOUND_KIB: u64 = 80 * 1024;

const TWO_ROUTES: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: big, namespace: "{big}"}
spec:
  sinks:
  - name: stalled
    syslog: {address: "127.0.0.1:{stalled}", maxMessageBytes: 1048576}
---
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: small, namespace: "{small}"}
spec:
  sinks:
  - name: live
    syslog: {address: "127.0.0.1:{live}"}
"#;

#[tokio::test]
async fn a_stalled_route_of_1_mib_lines_stays_within_its_queue_share_and_others_flow() {
    let _serial = SERIAL.lock().await;
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let Some(stalled) = Rsyslog::start_or_skip() else {
        return;
    };
    let live = Rsyslog::start().expect("second rsyslog");
    let dir = tempfile::tempdir().expect("tempdir");
    let (big, small) = (
        format!("big-{}", std::process::id()),
        format!("small-{}", std::process::id()),
    );
    let routes = dir.path().join("routes.yaml");
    let text = TWO_ROUTES
        .replace("{big}", &big)
        .replace("{small}", &small)
        .replace("{stalled}", &stalled.tcp_port.to_string())
        .replace("{live}", &live.tcp_port.to_string());
    std::fs::write(&routes, text).expect("write routes");
    let queue_bytes = QUEUE_BYTES.to_string();
    let agent = AgentProc::start(
        dir.path(),
        &routes,
        &[("LOGROUTE_QUEUE_BYTES", queue_bytes.as_str())],
    );
    let pid = agent.pid().expect("agent pid").to_string();
    let receiver = listener_pid(stalled.tcp_port).expect("stalled rsyslog's pid");
    set_suspended(receiver, true);
    let baseline = reset_peak(&pid);

    let fill = BIG_LINE_BYTES - 8;
    let big_script = format!(
        "i=1; while [ $i -le {BIG_LINES} ]; do printf '%07d ' $i; head -c {fill} /dev/zero | tr '\\0' x; echo; i=$((i+1)); done"
    );
    let small_script = format!(
        "i=1; while [ $i -le {SMALL_LINES} ]; do echo small-$i; i=$((i+1)); usleep 2000; done"
    );
    let big_c = TestContainer::run(
        &docker,
        Spec::sh(big_script).labels(pod_labels(&big, "big", &pod_uid(), "app")),
    )
    .await;
    let _small_c = TestContainer::run(
        &docker,
        Spec::sh(small_script).labels(pod_labels(&small, "small", &pod_uid(), "app")),
    )
    .await;

    // The other route flows while the tenant's receiver takes nothing.
    let got = live.wait_for(SMALL_LINES, Duration::from_secs(120));
    let small_msgs: Vec<String> = got
        .iter()
        .map(|r| r.msg.clone())
        .filter(|m| m.starts_with("small-"))
        .collect();
    let expected: Vec<String> = (1..=SMALL_LINES).map(|i| format!("small-{i}")).collect();
    assert!(
        small_msgs == expected,
        "the other route got {} of {SMALL_LINES} lines (in order: {}) while the tenant's receiver was stalled; agent log:\n{}",
        small_msgs.len(),
        small_msgs.len() == SMALL_LINES,
        agent.log()
    );
    big_c.wait_exit(Duration::from_secs(120)).await;
    // Let the agent read all of the big container's log while the receiver is stalled.
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.metric("logroute_agent_lanes_detached") < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = status_kib(&pid, "VmHWM");
    let growth = peak.saturating_sub(baseline);
    let queued = agent.metric("logroute_agent_queue_bytes");
    eprintln!(
        "stalled route, {BIG_LINES} x {BIG_LINE_BYTES} B lines, --queue-bytes {QUEUE_BYTES}: VmHWM {baseline} KiB -> {peak} KiB (+{growth} KiB); queue bytes now {queued}"
    );
    assert!(
        growth < BUDGET_RSS_BOUND_KIB,
        "the agent's peak RSS grew by {growth} KiB with a stalled route, expected under {BUDGET_RSS_BOUND_KIB} KiB; agent log:\n{}",
        agent.log()
    );

    // The receiver is back: every big line arrives once, in order.
    set_suspended(receiver, false);
    let got = stalled.wait_for(BIG_LINES, Duration::from_secs(180));
    let numbers: Vec<usize> = got
        .iter()
        .filter_map(|r| r.msg.get(..7)?.parse().ok())
        .collect();
    let expected: Vec<usize> = (1..=BIG_LINES).collect();
    assert!(
        numbers == expected,
        "after the stall the tenant's receiver got lines {:?}... ({} in all), expected 1..={BIG_LINES} once each; agent log:\n{}",
        numbers.iter().take(20).collect::<Vec<_>>(),
        numbers.len(),
        agent.log()
    );
    assert!(
        got.iter().all(|r| r.msg.len() == BIG_LINE_BYTES),
        "every line arrives whole"
    );
}
