//! Delivery guarantees end to end: the built `logroute agent` binary (a child process the
//! test kills and restarts), real dockerd, rsyslog and osmem-server.
//!
//! The tests of this file run one at a time (they load the 2-core machine, and one
//! restarts dockerd). `LOGROUTE_LARGE=1` runs the large variants (200,000 lines, five
//! kills; a 30 s receiver outage).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use serde_json::json;
use tokio::sync::Mutex;

use support::agent_proc::AgentProc;
use support::docker::{Spec, TestContainer, docker, pod_labels, pod_uid};
use support::osmem::{self, Osmem};
use support::rsyslog::Rsyslog;

/// Taken by every test of this file (each runs on its own runtime; tokio's mutex works
/// across them).
static SERIAL: Mutex<()> = Mutex::const_new(());

fn large() -> bool {
    std::env::var("LOGROUTE_LARGE").is_ok_and(|v| v == "1")
}

const SYSLOG_ONLY: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: all, namespace: "{ns}"}
spec:
  sinks:
  - name: central
    syslog: {address: "127.0.0.1:{tcp}", maxMessageBytes: 1048576}
"#;

const SYSLOG_AND_ES: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: all, namespace: "{ns}"}
spec:
  sinks:
  - name: central
    syslog: {address: "127.0.0.1:{tcp}", maxMessageBytes: 1048576}
  - name: search
    elasticsearch:
      endpoints: ["{es}"]
      index: "lr-{pod}"
      batch: {timeoutMs: 200}
"#;

struct Setup {
    dir: tempfile::TempDir,
    routes: PathBuf,
    ns: String,
    rsyslog: Rsyslog,
    osmem: Option<Osmem>,
    docker: Docker,
}

/// Docker, rsyslog (and osmem-server when `es`) and a routes file; `None` outside CI
/// when one is missing.
async fn setup(test: &str, routes: &str, es: bool) -> Option<Setup> {
    let docker = docker().await?;
    let rsyslog = Rsyslog::start_or_skip()?;
    let osmem = if es {
        Some(Osmem::start().await?)
    } else {
        None
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = format!("{test}-{}", std::process::id());
    let text = routes
        .replace("{ns}", &ns)
        .replace("{tcp}", &rsyslog.tcp_port.to_string())
        .replace("{es}", osmem.as_ref().map_or("", |o| o.url.as_str()));
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, text).expect("write routes");
    Some(Setup {
        dir,
        routes: path,
        ns,
        rsyslog,
        osmem,
        docker,
    })
}

impl Setup {
    fn agent(&self, env: &[(&str, &str)]) -> AgentProc {
        AgentProc::start(self.dir.path(), &self.routes, env)
    }

    /// A pod container printing lines `<tag>-<n>` (n = 1..=lines), see [`Print`].
    async fn printer(&self, tag: &str, p: Print, log_opts: &[(&str, &str)]) -> TestContainer {
        let Print {
            lines,
            chunk,
            pause_ms,
            pad,
            linger,
        } = p;
        assert_eq!(lines % chunk, 0, "lines must be a multiple of chunk");
        let padding = if pad > 0 {
            format!("; s/$/ {}/", "x".repeat(pad))
        } else {
            String::new()
        };
        let script = format!(
            "i=1; while [ $i -le {lines} ]; do seq $i $((i+{chunk}-1)) | sed 's/^/{tag}-/{padding}'; i=$((i+{chunk})); usleep {}; done{}",
            pause_ms * 1000,
            if linger { "; sleep 600" } else { "" }
        );
        let labels = pod_labels(&self.ns, tag, &pod_uid(), "app");
        let spec = Spec::sh(script).labels(labels).log_opts(log_opts);
        TestContainer::run(&self.docker, spec).await
    }

    /// Messages rsyslog received, without padding (see [`Print`]).
    fn received(&self) -> Vec<String> {
        self.rsyslog
            .received()
            .into_iter()
            .map(|r| r.msg.split(' ').next().unwrap_or_default().to_string())
            .collect()
    }

    /// Documents in the pod index of `tag`.
    async fn es_count(&self, tag: &str) -> u64 {
        let es = self.osmem.as_ref().expect("osmem started");
        es.refresh().await;
        let (status, body) = osmem::http("GET", &format!("{}/lr-{tag}/_count", es.url), None).await;
        if status == 404 {
            return 0;
        }
        body["count"].as_u64().unwrap_or(0)
    }

    /// The newest `@timestamp` (ms since the epoch) indexed for pod `tag`.
    async fn es_newest_ms(&self, tag: &str) -> Option<i64> {
        let es = self.osmem.as_ref().expect("osmem started");
        es.refresh().await;
        let query = json!({"size": 1, "sort": [{"@timestamp": {"order": "desc"}}], "query": {"match_all": {}}});
        let (status, body) =
            osmem::http("POST", &format!("{}/lr-{tag}/_search", es.url), Some(query)).await;
        if status != 200 {
            return None;
        }
        body["hits"]["hits"][0]["sort"][0].as_i64()
    }
}

/// What a printer container prints: `lines` lines, `chunk` at a time with `pause_ms`
/// between chunks, each followed by a space and `pad` bytes of padding; then it exits
/// (or with `linger`, sleeps on).
#[derive(Clone, Copy)]
struct Print {
    lines: usize,
    chunk: usize,
    pause_ms: u64,
    pad: usize,
    linger: bool,
}

impl Print {
    fn new(lines: usize, chunk: usize, pause_ms: u64) -> Self {
        Print {
            lines,
            chunk,
            pause_ms,
            pad: 0,
            linger: false,
        }
    }
}

/// How often each expected line `<tag>-<n>` arrived.
struct Tally {
    missing: Vec<String>,
    repeated: Vec<(String, usize)>,
    unexpected: usize,
}

fn tally(received: &[String], tags: &[String], lines: usize) -> Tally {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in received {
        *seen.entry(m.as_str()).or_default() += 1;
    }
    let mut missing = Vec::new();
    let mut repeated = Vec::new();
    let mut expected = 0;
    for tag in tags {
        for n in 1..=lines {
            let key = format!("{tag}-{n}");
            match seen.get(key.as_str()).copied().unwrap_or(0) {
                0 => missing.push(key),
                1 => expected += 1,
                k => {
                    expected += 1;
                    repeated.push((key, k));
                }
            }
        }
    }
    let unexpected = seen.len() - expected;
    Tally {
        missing,
        repeated,
        unexpected,
    }
}

impl Tally {
    fn assert_exactly_once(&self, what: &str) {
        assert!(
            self.missing.is_empty() && self.repeated.is_empty() && self.unexpected == 0,
            "{what}: {} lines missing (first: {:?}), {} repeated (first: {:?}), {} unexpected messages",
            self.missing.len(),
            self.missing.iter().take(5).collect::<Vec<_>>(),
            self.repeated.len(),
            self.repeated.iter().take(5).collect::<Vec<_>>(),
            self.unexpected
        );
    }
}

/// Poll until rsyslog holds `n` messages, or until `timeout` (then say so, with the
/// agent's log, and return what arrived: the caller's tally names what is missing).
fn wait_received(s: &Setup, agent: &AgentProc, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = s.received();
        if got.len() >= n {
            return got;
        }
        if Instant::now() > deadline {
            eprintln!(
                "rsyslog received {} of {n} messages within {timeout:?}; agent log tail:\n{}",
                got.len(),
                tail(&agent.log(), 60)
            );
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll until the agent has nothing queued, no lagging lane and every sink has accepted
/// what was read: what it will deliver is delivered.
fn wait_settled(agent: &AgentProc, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let queued = agent.metric("logroute_agent_queue_depth");
        let detached = agent.metric("logroute_agent_lanes_detached");
        let lag = agent.metric("logroute_agent_sink_lag_seconds");
        let metrics_up = !agent.metrics().is_empty();
        if metrics_up && queued == 0.0 && detached == 0.0 && lag == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent not settled after {timeout:?}: {queued} queued, {detached} lanes detached, {lag} s lag; warnings in its log:\n{}",
            tail(
                &agent
                    .log()
                    .lines()
                    .filter(|l| !l.contains(" INFO "))
                    .collect::<Vec<_>>()
                    .join("\n"),
                30
            )
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll until the pod index of `tag` holds `n` documents (more cannot happen: ids are
/// deterministic), failing with the count seen.
async fn wait_documents(s: &Setup, tag: &str, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let count = s.es_count(tag).await;
        if count == n {
            return;
        }
        assert!(
            Instant::now() < deadline && count < n,
            "Elasticsearch holds {count} documents of {tag}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_stream_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    // (containers, lines each, lines per chunk, pause per chunk, kills)
    let (containers, lines, chunk, pause_ms, kills) = if large() {
        (4, 50_000, 500, 50, 5)
    } else {
        (4, 5_000, 100, 50, 3)
    };
    let Some(s) = setup("kill9", SYSLOG_AND_ES, true).await else {
        return;
    };
    let mut agent = s.agent(&[]);
    let tags: Vec<String> = (0..containers).map(|i| format!("k{i}")).collect();
    let mut running = Vec::new();
    for tag in &tags {
        running.push(
            s.printer(tag, Print::new(lines, chunk, pause_ms), &[])
                .await,
        );
    }
    let total = containers * lines;
    let started = Instant::now();
    let mut mid_stream = 0;
    for kill in 0..kills {
        // Let the restarted agent make progress, then kill it at a random moment.
        let before = s.received().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.received().len() == before && before < total {
            assert!(
                Instant::now() < deadline,
                "no progress after restart {kill}; agent log tail:\n{}",
                tail(&agent.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(50..700)));
        agent.kill9();
        let at = s.received().len();
        if at < total {
            mid_stream += 1;
        }
        eprintln!("kill {}: {at} of {total} lines received", kill + 1);
        agent.restart();
    }
    let got = wait_received(&s, &agent, total, Duration::from_secs(300));
    // Elasticsearch (osmem, debug build) may still be catching up.
    wait_settled(&agent, Duration::from_secs(300));
    let got = if got.len() > total { got } else { s.received() };
    let t = tally(&got, &tags, lines);
    eprintln!(
        "kill -9 x{kills} ({mid_stream} while lines were still arriving), {total} lines in {:?}: {} missing, {} repeated, {} unexpected",
        started.elapsed(),
        t.missing.len(),
        t.repeated.len(),
        t.unexpected
    );
    t.assert_exactly_once("syslog after kill -9 restarts");
    for tag in &tags {
        wait_documents(&s, tag, lines as u64, Duration::from_secs(60)).await;
    }
    assert!(
        mid_stream >= 1,
        "no kill happened while lines were arriving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_outage_does_not_hold_elasticsearch_back() {
    let _serial = SERIAL.lock().await;
    let outage = Duration::from_secs(if large() { 30 } else { 10 });
    let Some(s) = setup("outage", SYSLOG_AND_ES, true).await else {
        return;
    };
    // A small queue, so that the syslog sink falls behind early in the outage.
    let agent = s.agent(&[("LOGROUTE_QUEUE_RECORDS", "300")]);
    // Two pods at 200 lines/s each, for the outage and some seconds around it.
    let seconds = outage.as_secs() as usize + 10;
    let lines = seconds * 200;
    let tags = vec!["o0".to_string(), "o1".to_string()];
    let mut running = Vec::new();
    for tag in &tags {
        running.push(
            s.printer(
                tag,
                Print {
                    pad: 4000,
                    ..Print::new(lines, 20, 100)
                },
                &[],
            )
            .await,
        );
    }
    assert!(
        wait_received(&s, &agent, 400, Duration::from_secs(30)).len() >= 400,
        "lines did not start arriving"
    );
    // rsyslog suspended: it takes nothing more, its connection stays open, and the
    // agent's writes back up until the sink's queue is full.
    let rsyslogd = support::suspend::listener_pid(s.rsyslog.tcp_port).expect("rsyslogd pid");
    support::suspend::set_suspended(rsyslogd, true);
    let stopped = Instant::now();
    let mut worst = Duration::ZERO;
    let mut samples = 0;
    let mut detached_seen = false;
    while stopped.elapsed() < outage {
        tokio::time::sleep(Duration::from_millis(250)).await;
        detached_seen |= agent.metric("logroute_agent_lanes_detached{sink=\"central\"}") > 0.0;
        if stopped.elapsed() < Duration::from_secs(2) {
            continue; // what was in flight when rsyslog stopped
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let newest = s.es_newest_ms("o0").await.unwrap_or(0);
        let lag = Duration::from_millis((now_ms - newest).max(0) as u64);
        worst = worst.max(lag);
        samples += 1;
    }
    eprintln!(
        "during a {outage:?} syslog outage, Elasticsearch was at most {worst:?} behind ({samples} samples)"
    );
    support::suspend::set_suspended(rsyslogd, false);
    assert!(
        detached_seen,
        "the syslog sink never fell behind on its own; agent log tail:\n{}",
        tail(&agent.log(), 40)
    );
    assert!(
        worst < Duration::from_secs(3),
        "Elasticsearch fell {worst:?} behind while syslog was down"
    );
    let total = tags.len() * lines;
    let got = wait_received(&s, &agent, total, Duration::from_secs(120));
    wait_settled(&agent, Duration::from_secs(60));
    let got = if got.len() > total { got } else { s.received() };
    tally(&got, &tags, lines).assert_exactly_once("syslog after its outage");
    for tag in &tags {
        wait_documents(&s, tag, lines as u64, Duration::from_secs(60)).await;
    }
    assert_eq!(
        agent.metric("logroute_agent_records_dropped_total"),
        0.0,
        "nothing is lost when Docker still holds the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerd_restart_during_catch_up_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    if !Path::new(support::dockerd::PID_FILE).exists() {
        support::env::missing("a dockerd this test may restart", "no /var/run/docker.pid");
        return;
    }
    let Some(s) = setup("dockerd", SYSLOG_ONLY, false).await else {
        return;
    };
    let agent = s.agent(&[("LOGROUTE_QUEUE_RECORDS", "200")]);
    let tags = vec!["d0".to_string()];
    let lines = 6_000;
    // 1,000 lines/s: still writing while the sink catches up and dockerd restarts.
    let _c = s
        .printer(
            &tags[0],
            Print {
                pad: 2000,
                ..Print::new(lines, 50, 50)
            },
            &[],
        )
        .await;
    assert!(
        wait_received(&s, &agent, 100, Duration::from_secs(30)).len() >= 100,
        "lines did not start arriving"
    );
    let rsyslogd = support::suspend::listener_pid(s.rsyslog.tcp_port).expect("rsyslogd pid");
    support::suspend::set_suspended(rsyslogd, true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.metric("logroute_agent_lanes_detached") < 1.0 {
        assert!(Instant::now() < deadline, "the sink never fell behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    support::suspend::set_suspended(rsyslogd, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.metric("logroute_agent_catchup_streams") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no catch-up started; agent log tail:\n{}",
            tail(&agent.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    support::dockerd::restart_dockerd().await;
    let got = wait_received(&s, &agent, lines, Duration::from_secs(180));
    wait_settled(&agent, Duration::from_secs(60));
    let got = if got.len() > lines { got } else { s.received() };
    tally(&got, &tags, lines).assert_exactly_once("syslog after a dockerd restart in catch-up");
}

/// A sink whose receiver is down while its container's json-file log rotates many
/// times over; the agent runs with `spill_bytes` of spill files.
async fn rotation_while_the_sink_is_down(
    spill_bytes: &str,
) -> Option<(Setup, AgentProc, TestContainer)> {
    let mut s = setup("rotate", SYSLOG_ONLY, false).await?;
    let agent = s.agent(&[
        ("LOGROUTE_QUEUE_RECORDS", "100"),
        ("LOGROUTE_SPILL_BYTES", spill_bytes),
        ("LOGROUTE_LOG", "info,logroute::agent::lane=debug"),
    ]);
    s.rsyslog.stop();
    // 6,000 lines of ~100 bytes (~1 MB in json-file) at 500 lines/s through a log of at
    // most 2 x 50 KB. (Faster rotation makes dockerd's own follow skip lines, which
    // no reader can see or count.)
    let c = s
        .printer(
            "r0",
            Print {
                pad: 90,
                ..Print::new(ROTATED_LINES, 50, 100)
            },
            &[("max-size", "50k"), ("max-file", "2")],
        )
        .await;
    c.wait_exit(Duration::from_secs(60)).await;
    s.rsyslog.restart().expect("rsyslog restarts");
    // The container is kept (not removed) until the test ends.
    Some((s, agent, c))
}

const ROTATED_LINES: usize = 6_000;

/// With spill files (the default) the lines the sink missed are on disk as well:
/// rotation takes none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_rotated_away_while_the_sink_is_down_come_from_the_spill() {
    let _serial = SERIAL.lock().await;
    let Some((s, agent, _c)) = rotation_while_the_sink_is_down("268435456").await else {
        return;
    };
    let tags = vec!["r0".to_string()];
    let got = wait_received(&s, &agent, ROTATED_LINES, Duration::from_secs(120));
    wait_settled(&agent, Duration::from_secs(60));
    let got = if got.len() > ROTATED_LINES {
        got
    } else {
        s.received()
    };
    tally(&got, &tags, ROTATED_LINES).assert_exactly_once("syslog after rotation, spilled");
    // Nothing was lost; the count may still show a line or so: a line dockerd's follow
    // sent again at a rotation is counted as missed while the lane lags, and no re-read
    // brings it (see `lines_rotated_away_before_catch_up_are_counted_as_lost`).
    let counted = agent.metric("logroute_agent_records_dropped_total");
    assert!(
        counted <= (ROTATED_LINES / 100) as f64,
        "{counted} counted lost although every line arrived"
    );
    eprintln!(
        "rotation with spill: {ROTATED_LINES} of {ROTATED_LINES} delivered once, {counted} counted lost (dockerd's repeats)"
    );
    assert!(
        agent.metric("logroute_agent_spill_lines_read_total") > 0.0,
        "the catch-up read the spill"
    );
}

/// Without spill files, what rotation took is lost, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_rotated_away_before_catch_up_are_counted_as_lost() {
    let _serial = SERIAL.lock().await;
    let Some((s, mut agent, _c)) = rotation_while_the_sink_is_down("0").await else {
        return;
    };
    let tags = vec!["r0".to_string()];
    let lines = ROTATED_LINES;
    let deadline = Instant::now() + Duration::from_secs(120);
    let dropped = "logroute_agent_records_dropped_total{reason=\"rotated\"}";
    loop {
        let lost = agent.metric(dropped) as usize;
        let got = s.received();
        if lost > 0 && got.len() + lost >= lines {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after rotation: {} received, {lost} counted lost of {lines}; agent log tail:\n{}",
            got.len(),
            tail(&agent.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_settled(&agent, Duration::from_secs(60));
    assert!(agent.running(), "the agent goes on after the loss");
    let lost = agent.metric(dropped) as usize;
    let got = s.received();
    let t = tally(&got, &tags, lines);
    assert!(
        t.repeated.is_empty() && t.unexpected == 0,
        "repeated: {:?}",
        &t.repeated[..t.repeated.len().min(5)]
    );
    // Every line that did not arrive is counted. The count may exceed the missing lines
    // by a few: dockerd's follow sends a line again now and then when a json-file log
    // rotates under it, and a repeated frame at the same timestamp cannot be told from
    // a new one (seen here: 1 in 6,000).
    let slack = lines / 100;
    assert!(
        t.missing.len() <= lost && lost <= t.missing.len() + slack,
        "{} lines missing, {lost} counted lost (rotated); agent log:\n{}",
        t.missing.len(),
        agent
            .log()
            .lines()
            .filter(|l| l.contains("catch") || l.contains("lost") || l.contains("lane"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "rotation: {} of {lines} delivered, {} missing ({:?} to {:?}), {lost} counted lost (rotated)",
        got.len(),
        t.missing.len(),
        t.missing.first(),
        t.missing.last()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_file_is_reported_and_not_trusted() {
    let _serial = SERIAL.lock().await;
    let Some(s) = setup("damaged", SYSLOG_ONLY, false).await else {
        return;
    };
    let mut agent = s.agent(&[]);
    let tags = vec!["x0".to_string()];
    let lines = 3_000;
    // Lingers after printing: only running containers are read after a restart whose
    // checkpoints are lost.
    let _c = s
        .printer(
            &tags[0],
            Print {
                linger: true,
                ..Print::new(lines, 100, 20)
            },
            &[],
        )
        .await;
    assert!(
        wait_received(&s, &agent, 500, Duration::from_secs(30)).len() >= 500,
        "lines did not start arriving"
    );
    // SIGTERM: the agent delivers what it can and writes its final checkpoints; the
    // next agent resumes there without repeating.
    assert!(
        agent.terminate(Duration::from_secs(30)),
        "agent did not exit cleanly on SIGTERM; log tail:\n{}",
        tail(&agent.log(), 40)
    );
    assert!(agent.log().contains("final checkpoints written"));
    agent.restart();
    let got = wait_received(&s, &agent, lines, Duration::from_secs(60));
    wait_settled(&agent, Duration::from_secs(30));
    let got = if got.len() > lines { got } else { s.received() };
    tally(&got, &tags, lines).assert_exactly_once("after SIGTERM and restart");
    let delivered = got.len();

    // Corrupt every slot, then truncate: each time the agent says so, names the file,
    // starts from the beginning of the retained log, and keeps running.
    for damage in ["corrupt", "truncated"] {
        assert!(agent.terminate(Duration::from_secs(30)), "clean exit");
        let path = agent.checkpoint_file();
        let mut bytes = std::fs::read(&path).expect("checkpoint file exists");
        match damage {
            "corrupt" => bytes[256..].iter_mut().for_each(|b| *b ^= 0xA5),
            _ => bytes.truncate(300),
        }
        std::fs::write(&path, &bytes).expect("damage checkpoint file");
        let before = s.received().len();
        agent.restart();
        let log = agent.log();
        assert!(
            log.contains("checkpoint file damaged") && log.contains(&path.display().to_string()),
            "{damage}: no clear warning naming {}; log:\n{log}",
            path.display()
        );
        // The safe point is the beginning of the log Docker still holds: every line
        // again, none lost.
        let got = wait_received(&s, &agent, before + lines, Duration::from_secs(60));
        assert!(agent.running(), "{damage}: the agent keeps running");
        let t = tally(&got[before..], &tags, lines);
        assert!(
            t.missing.is_empty(),
            "{damage}: lines missing after the restart: {:?}",
            &t.missing[..t.missing.len().min(5)]
        );
    }
    assert!(delivered >= lines);
}
