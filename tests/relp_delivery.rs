//! RELP end to end with the built `logroute agent` binary killed with SIGKILL mid-stream:
//! real dockerd, rsyslog with imrelp. The checkpoint advances only past acknowledged
//! messages, so a restarted agent resumes right after the last acknowledged one: nothing
//! is lost, and what is repeated is at most what was in flight (a window) per kill.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::agent_proc::AgentProc;
use support::docker::{Spec, TestContainer, docker, pod_labels, pod_uid};
use support::rsyslog::Rsyslog;

/// The route's RELP window: the bound on repeats per kill.
const WINDOW: usize = 64;

const ROUTE: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: all, namespace: "{ns}"}
spec:
  sinks:
  - name: central
    syslog:
      address: "127.0.0.1:{relp}"
      transport: relp
      maxMessageBytes: 1048576
      relp: {window: 64, ackTimeoutMs: 10000}
"#;

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_9_over_relp_resumes_after_the_last_acknowledged_message() {
    let (containers, lines, chunk, pause_ms, kills) = (4, 5_000, 100, 50, 3);
    let Some(docker) = docker().await else {
        return;
    };
    let Some(rs) = Rsyslog::start_relp_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = format!("relpkill-{}", std::process::id());
    let routes = dir.path().join("routes.yaml");
    let text = ROUTE
        .replace("{ns}", &ns)
        .replace("{relp}", &rs.relp_port.to_string());
    std::fs::write(&routes, text).expect("write routes");
    let received = || -> Vec<String> {
        rs.received()
            .into_iter()
            .map(|r| r.msg.split(' ').next().unwrap_or_default().to_string())
            .collect()
    };

    let mut agent = AgentProc::start(dir.path(), &routes, &[]);
    let tags: Vec<String> = (0..containers).map(|i| format!("r{i}")).collect();
    let mut running = Vec::new();
    for tag in &tags {
        let script = format!(
            "i=1; while [ $i -le {lines} ]; do seq $i $((i+{chunk}-1)) | sed 's/^/{tag}-/'; i=$((i+{chunk})); usleep {}; done",
            pause_ms * 1000
        );
        let labels = pod_labels(&ns, tag, &pod_uid(), "app");
        running.push(TestContainer::run(&docker, Spec::sh(script).labels(labels)).await);
    }
    let total = containers * lines;
    let mut mid_stream = 0;
    for kill in 0..kills {
        let before = received().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while received().len() == before && before < total {
            assert!(
                Instant::now() < deadline,
                "no progress after restart {kill}; agent log tail:\n{}",
                tail(&agent.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(50..700)));
        agent.kill9();
        let at = received().len();
        if at < total {
            mid_stream += 1;
        }
        eprintln!("kill {}: {at} of {total} lines received", kill + 1);
        agent.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let got = loop {
        let got = received();
        if got.len() >= total {
            // A repeat may still be on its way.
            std::thread::sleep(Duration::from_millis(500));
            break received();
        }
        assert!(
            Instant::now() < deadline,
            "rsyslog received {} of {total} lines; agent log tail:\n{}",
            got.len(),
            tail(&agent.log(), 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in &got {
        *seen.entry(m.as_str()).or_default() += 1;
    }
    let mut missing = Vec::new();
    let mut repeated = 0;
    for tag in &tags {
        for n in 1..=lines {
            match seen
                .get(format!("{tag}-{n}").as_str())
                .copied()
                .unwrap_or(0)
            {
                0 => missing.push(format!("{tag}-{n}")),
                k => repeated += k - 1,
            }
        }
    }
    let unexpected = got.len() + missing.len() - total - repeated;
    eprintln!(
        "RELP, agent kill -9 x{kills} ({mid_stream} mid-stream), {total} lines: {} missing, {repeated} repeated (at most {} allowed: a window per kill), {unexpected} unexpected",
        missing.len(),
        kills * WINDOW
    );
    assert!(
        missing.is_empty(),
        "{} lines lost (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(unexpected, 0, "messages that no container printed");
    assert!(
        repeated <= kills * WINDOW,
        "{repeated} lines repeated: more than the {WINDOW} in flight per kill, so a restart did not resume after the last acknowledged message"
    );
    // Per container, lines arrive in order, and a repeat only goes back to just after
    // what the receiver acknowledged: never further than a window.
    for tag in &tags {
        let seq: Vec<usize> = got
            .iter()
            .filter_map(|m| {
                m.strip_prefix(tag.as_str())?
                    .strip_prefix('-')?
                    .parse()
                    .ok()
            })
            .collect();
        let mut high = 0;
        for &n in &seq {
            assert!(
                n + WINDOW > high,
                "{tag}: line {n} came after line {high}: a resume went back further than a window"
            );
            high = high.max(n);
        }
    }
    assert!(
        mid_stream >= 1,
        "no kill happened while lines were arriving"
    );
    drop(running);
}
