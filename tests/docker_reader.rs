//! The agent's read side against a real dockerd: discovery and log following.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::LogsOptions;
use futures::StreamExt;
use logroute::agent::docker::{
    ContainerEvent, Cursor, DockerError, LogLine, ReadOptions, follow, watch_containers,
};
use logroute::api::StreamName;
use logroute::metrics::AgentMetrics;
use prometheus::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use support::docker::{Spec, TestContainer, pod_labels, pod_uid, sandbox_labels};

const FOLLOW_TIMEOUT: Duration = Duration::from_secs(120);

fn metrics() -> AgentMetrics {
    AgentMetrics::new(&Registry::new())
}

/// Follow a container to the end of its log, collecting its lines. `delay` slows the
/// consumer down after every batch.
async fn read_all(
    docker: &Docker,
    c: &TestContainer,
    from: Option<Cursor>,
    opts: ReadOptions,
    metrics: &AgentMetrics,
    delay: Duration,
) -> (Vec<LogLine>, Cursor) {
    let info = c.info().await;
    let (tx, mut rx) = mpsc::channel::<Vec<LogLine>>(1);
    let shutdown = CancellationToken::new();
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(batch) = rx.recv().await {
            assert!(!batch.is_empty(), "empty batch");
            all.extend(batch);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        all
    });
    let result = tokio::time::timeout(
        FOLLOW_TIMEOUT,
        follow(docker, &info, from, &opts, &tx, metrics, &shutdown),
    )
    .await
    .unwrap_or_else(|_| panic!("follow of {} did not end within {FOLLOW_TIMEOUT:?}", c.name));
    drop(tx);
    let cursor = result.unwrap_or_else(|e| panic!("follow of {} failed: {e}", c.name));
    let lines = collector.await.expect("collector task");
    (lines, cursor)
}

fn stream_messages(lines: &[LogLine], stream: StreamName) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.message.clone())
        .collect()
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn concurrent_containers_deliver_every_line_once_in_order() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let script =
        "i=1; while [ $i -le 800 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done";
    let mut containers = Vec::new();
    for _ in 0..4 {
        containers.push(TestContainer::run(&docker, Spec::sh(script)).await);
    }
    let m = metrics();
    let reads = containers
        .iter()
        .map(|c| read_all(&docker, c, None, ReadOptions::default(), &m, Duration::ZERO));
    for (c, (lines, cursor)) in containers
        .iter()
        .zip(futures::future::join_all(reads).await)
    {
        assert_eq!(
            stream_messages(&lines, StreamName::Stdout),
            numbered("out ", 800),
            "stdout of {}",
            c.name
        );
        assert_eq!(
            stream_messages(&lines, StreamName::Stderr),
            numbered("err ", 800),
            "stderr of {}",
            c.name
        );
        assert_eq!(
            lines.last().map(|l| l.cursor),
            Some(cursor),
            "returned cursor is the last line's"
        );
        assert!(lines.iter().all(|l| !l.truncated));
    }
    assert_eq!(m.records_read.with_label_values(&["stdout"]).get(), 4 * 800);
    assert_eq!(m.records_read.with_label_values(&["stderr"]).get(), 4 * 800);
    assert_eq!(
        m.containers_followed.get(),
        0,
        "no container counted as followed after the reads ended"
    );
}

#[tokio::test]
async fn long_lines_are_joined_and_cut_past_the_limit() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let script = "head -c 102400 /dev/zero | tr '\\0' x; echo; echo after; \
                  head -c 50000 /dev/zero | tr '\\0' y; echo; printf 'no newline'";
    let c = TestContainer::run(&docker, Spec::sh(script)).await;
    let m = metrics();
    let (lines, _) = read_all(
        &docker,
        &c,
        None,
        ReadOptions::default(),
        &m,
        Duration::ZERO,
    )
    .await;
    let got: Vec<(usize, bool)> = lines
        .iter()
        .map(|l| (l.message.len(), l.truncated))
        .collect();
    assert_eq!(
        got,
        vec![(102400, false), (5, false), (50000, false), (10, false)],
        "line lengths"
    );
    assert!(
        lines[0].message.bytes().all(|b| b == b'x') && lines[2].message.bytes().all(|b| b == b'y')
    );
    assert_eq!(lines[1].message, "after");
    assert_eq!(lines[3].message, "no newline");
    assert_eq!(m.lines_truncated.get(), 0);

    let cut = ReadOptions {
        max_line_bytes: 60000,
        ..Default::default()
    };
    let (lines, _) = read_all(&docker, &c, None, cut, &m, Duration::ZERO).await;
    let got: Vec<(usize, bool)> = lines
        .iter()
        .map(|l| (l.message.len(), l.truncated))
        .collect();
    assert_eq!(
        got,
        vec![(60000, true), (5, false), (50000, false), (10, false)],
        "line lengths with a 60000 limit"
    );
    assert_eq!(m.lines_truncated.get(), 1);
}

#[tokio::test]
async fn invalid_utf8_is_replaced() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let c = TestContainer::run(
        &docker,
        Spec::sh("printf 'ok\\n\\377\\376 bad\\n'; printf 'caf\\303\\251\\n' >&2"),
    )
    .await;
    let (lines, _) = read_all(
        &docker,
        &c,
        None,
        ReadOptions::default(),
        &metrics(),
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        stream_messages(&lines, StreamName::Stdout),
        vec!["ok", "\u{FFFD}\u{FFFD} bad"]
    );
    assert_eq!(stream_messages(&lines, StreamName::Stderr), vec!["café"]);
}

#[tokio::test]
async fn tty_output_is_read_as_stdout_lines() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let script = "echo one; echo two >&2; head -c 40000 /dev/zero | tr '\\0' t; echo; printf last";
    let c = TestContainer::run(&docker, Spec::sh(script).tty()).await;
    assert!(c.info().await.tty);
    let (lines, _) = read_all(
        &docker,
        &c,
        None,
        ReadOptions::default(),
        &metrics(),
        Duration::ZERO,
    )
    .await;
    let long = "t".repeat(40000);
    assert_eq!(
        stream_messages(&lines, StreamName::Stdout),
        vec!["one", "two", long.as_str(), "last"]
    );
    assert!(lines.iter().all(|l| l.stream == StreamName::Stdout));
}

const PAD: &str = "padding-padding-padding-padding-padding-padding-padding-padding-padding-padding";

/// Eight containers print 20,000 lines each and exit together. Their readers open the
/// follow late, after the first 10,000 lines, and consume slowly: dockerd 20.10 sends
/// the log as it stood when the request opened, finds the container gone by then and
/// ends the stream without the last 10,000 lines (a plain follow lost them for most of
/// these containers on the development machine). Every line must arrive anyway, once.
#[tokio::test]
async fn short_lived_containers_are_read_to_the_end_by_a_late_slow_reader() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    const N: usize = 20_000;
    let script =
        format!("seq 1 10000 | sed 's/$/ {PAD}/'; sleep 1; seq 10001 {N} | sed 's/$/ {PAD}/'");
    let mut containers = Vec::new();
    for _ in 0..8 {
        containers.push(TestContainer::run(&docker, Spec::sh(script.clone()).created_only()).await);
    }
    for c in &containers {
        c.start().await;
    }
    let m = metrics();
    let opts = ReadOptions {
        batch_lines: 100,
        ..Default::default()
    };
    let reads = containers.iter().map(|c| async {
        wait_for_line_number(&docker, c, 10_000).await;
        read_all(
            &docker,
            c,
            None,
            opts.clone(),
            &m,
            Duration::from_millis(20),
        )
        .await
    });
    let results = futures::future::join_all(reads).await;
    let expected: Vec<String> = (1..=N).map(|i| format!("{i} {PAD}")).collect();
    for (c, (lines, _)) in containers.iter().zip(results) {
        let got = stream_messages(&lines, StreamName::Stdout);
        if got != expected {
            let mut seen = HashMap::new();
            for l in &got {
                *seen.entry(l.as_str()).or_insert(0) += 1;
            }
            let missing = expected
                .iter()
                .filter(|e| !seen.contains_key(e.as_str()))
                .count();
            let repeated = seen.values().filter(|&&n| n > 1).count();
            panic!(
                "{}: got {} lines, {missing} missing, {repeated} repeated (expected 1..={N} once each)",
                c.name,
                got.len()
            );
        }
    }
}

/// Poll the end of a container's log until its last line starts with a number >= `n`.
async fn wait_for_line_number(docker: &Docker, c: &TestContainer, n: u64) {
    support::docker::eventually(
        Duration::from_secs(60),
        &format!("line {n} in {}'s log", c.name),
        || async {
            let options = LogsOptions {
                stdout: true,
                tail: "1".into(),
                ..Default::default()
            };
            let last = docker
                .logs(&c.id, Some(options))
                .next()
                .await?
                .ok()?
                .to_string();
            let number: u64 = last.split(' ').next()?.trim().parse().ok()?;
            (number >= n).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn resuming_from_any_line_cursor_yields_exactly_the_rest() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    // Interleaved streams and 40 KB lines (three fragments each) every 50 iterations.
    let script = "i=1; while [ $i -le 300 ]; do echo \"o$i\"; echo \"e$i\" >&2; \
                  if [ $((i % 50)) -eq 0 ]; then head -c 40000 /dev/zero | tr '\\0' L; echo \" $i\"; fi; \
                  i=$((i+1)); done";
    let c = TestContainer::run(&docker, Spec::sh(script)).await;
    c.wait_exit(Duration::from_secs(60)).await;
    let m = metrics();
    let (all, end) = read_all(
        &docker,
        &c,
        None,
        ReadOptions::default(),
        &m,
        Duration::ZERO,
    )
    .await;
    assert_eq!(all.len(), 606, "300 stdout + 300 stderr + 6 long lines");
    let key = |l: &LogLine| (l.stream, l.message.clone(), l.timestamp);
    let mut points: Vec<usize> = (0..all.len()).step_by(41).collect();
    // Right before and after long lines, and the very end.
    for (i, l) in all.iter().enumerate() {
        if l.message.len() > 1000 {
            points.extend([i.saturating_sub(1), i, (i + 1).min(all.len() - 1)]);
        }
    }
    points.push(all.len() - 1);
    for k in points {
        let from = all[k].cursor;
        let (rest, cursor) = read_all(
            &docker,
            &c,
            Some(from),
            ReadOptions::default(),
            &m,
            Duration::ZERO,
        )
        .await;
        let expected: Vec<_> = all[k + 1..].iter().map(key).collect();
        let got: Vec<_> = rest.iter().map(key).collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "number of lines after line {k} ({:?})",
            all[k].message
        );
        assert!(
            got == expected,
            "lines after line {k} differ from the full read"
        );
        assert_eq!(cursor, end, "cursor after resuming from line {k}");
    }
    // The cursor is what a checkpoint stores.
    let json = serde_json::to_string(&all[10].cursor).expect("cursor to JSON");
    assert_eq!(
        serde_json::from_str::<Cursor>(&json).expect("cursor from JSON"),
        all[10].cursor
    );
}

#[tokio::test]
async fn unreadable_log_driver_is_refused() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let c = TestContainer::run(&docker, Spec::sh("echo hidden").log_driver("none")).await;
    let info = c.info().await;
    assert_eq!(info.log_driver, "none");
    assert!(!info.logs_readable());
    let (tx, _rx) = mpsc::channel(1);
    let r = follow(
        &docker,
        &info,
        None,
        &ReadOptions::default(),
        &tx,
        &metrics(),
        &CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(r, Err(DockerError::LogDriver { .. })),
        "expected a log driver error, got {r:?}"
    );
}

#[tokio::test]
async fn follow_stops_on_shutdown_with_the_cursor_of_the_last_line_received() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let c = TestContainer::run(&docker, Spec::sh("seq 1 5; sleep 60")).await;
    let info = c.info().await;
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let m = metrics();
    let task = {
        let (docker, shutdown, m) = (docker.clone(), shutdown.clone(), m.clone());
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
    let mut lines: Vec<LogLine> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.len() < 5 {
        let batch = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("expected 5 lines, got {lines:?}"));
        lines.extend(batch.expect("follow ended early"));
    }
    assert_eq!(m.containers_followed.get(), 1);
    shutdown.cancel();
    let cursor = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("follow ends promptly on shutdown")
        .expect("follow task")
        .expect("follow result");
    assert_eq!(stream_messages(&lines, StreamName::Stdout), numbered("", 5));
    assert_eq!(cursor, lines[4].cursor);
    assert_eq!(m.containers_followed.get(), 0);
}

#[tokio::test]
async fn discovery_announces_new_containers_within_a_second_and_their_end() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let uid = pod_uid();
    let sandbox = TestContainer::run(
        &docker,
        Spec::sh("sleep 60").labels(sandbox_labels("team-a", "web-1", &uid, &[("app", "web")])),
    )
    .await;
    let (tx, mut rx) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    let m = metrics();
    let watcher = tokio::spawn(watch_containers(
        docker.clone(),
        tx,
        m.clone(),
        shutdown.clone(),
        logroute::record::Timestamp::now(),
    ));

    // Already running: announced by the initial list, with its pod labels.
    let announced = next_event(&mut rx, Duration::from_secs(10), |e| match e {
        ContainerEvent::Running(c) if c.id == sandbox.id => Some(c.clone()),
        _ => None,
    })
    .await;
    assert!(
        announced.cri_sandbox,
        "sandbox container recognised: {announced:?}"
    );
    assert_eq!(announced.labels.get("app").map(String::as_str), Some("web"));

    let spec = Spec::sh("echo hi; sleep 2")
        .labels(pod_labels("team-a", "web-1", &uid, "web"))
        .env("LOGSPOUT=ignore")
        .created_only();
    let c = TestContainer::run(&docker, spec).await;
    c.start().await;
    let started = Instant::now();
    let running = next_event(&mut rx, Duration::from_secs(5), |e| match e {
        ContainerEvent::Running(info) if info.id == c.id => Some(info.clone()),
        _ => None,
    })
    .await;
    let latency = started.elapsed();
    assert!(
        latency < Duration::from_secs(1),
        "new container announced after {latency:?}, expected under 1 s"
    );
    assert_eq!(running.name, c.name);
    assert_eq!(running.image, support::docker::BUSYBOX_IMAGE);
    assert_eq!(running.log_driver, "json-file");
    assert!(running.logspout_ignore && !running.cri_sandbox && !running.tty && running.running);
    assert_eq!(
        running
            .labels
            .get("io.kubernetes.container.name")
            .map(String::as_str),
        Some("web")
    );
    assert!(running.started_at.is_some());

    next_event(&mut rx, Duration::from_secs(15), |e| {
        (*e == ContainerEvent::Stopped { id: c.id.clone() }).then_some(())
    })
    .await;
    c.remove().await;
    next_event(&mut rx, Duration::from_secs(10), |e| {
        (*e == ContainerEvent::Removed { id: c.id.clone() }).then_some(())
    })
    .await;
    assert_eq!(m.docker_reconnects.get(), 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops on shutdown")
        .expect("watcher");
}

/// Wait for the first event `pick` accepts, skipping others (other tests' containers).
async fn next_event<T>(
    rx: &mut mpsc::Receiver<ContainerEvent>,
    timeout: Duration,
    mut pick: impl FnMut(&ContainerEvent) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(e)) => {
                if let Some(v) = pick(&e) {
                    return v;
                }
                seen.push(e);
            }
            Ok(None) => panic!("discovery ended; events seen: {seen:?}"),
            Err(_) => panic!("expected event not seen within {timeout:?}; events seen: {seen:?}"),
        }
    }
}

/// Reading through the unix socket directly (`ReadOptions::unix_socket`, what the agent
/// does) yields exactly what reading through bollard yields: lines, streams, timestamps,
/// cuts and cursors, from the start and from a cursor in the middle.
#[tokio::test]
async fn the_direct_socket_reader_yields_what_bollard_yields() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let script = "seq 1 3000 | sed 's/^/out /'; seq 1 50 | sed 's/^/err /' >&2; \
                  head -c 40000 /dev/zero | tr '\\0' x; echo; printf '\\377 bad\\n'; \
                  head -c 70000 /dev/zero | tr '\\0' y; echo; printf 'no newline'";
    let c = TestContainer::run(&docker, Spec::sh(script)).await;
    let m = metrics();
    let bollard = ReadOptions {
        max_line_bytes: 60000,
        ..Default::default()
    };
    let direct = ReadOptions {
        unix_socket: Some("/var/run/docker.sock".into()),
        ..bollard.clone()
    };
    let (via_bollard, end_bollard) =
        read_all(&docker, &c, None, bollard.clone(), &m, Duration::ZERO).await;
    let (via_socket, end_socket) =
        read_all(&docker, &c, None, direct.clone(), &m, Duration::ZERO).await;
    assert_eq!(via_bollard.len(), 3000 + 50 + 4);
    assert_eq!(via_socket, via_bollard);
    assert_eq!(end_socket, end_bollard);
    let from = Some(via_bollard[1234].cursor);
    let (rest_bollard, _) = read_all(&docker, &c, from, bollard, &m, Duration::ZERO).await;
    let (rest_socket, _) = read_all(&docker, &c, from, direct.clone(), &m, Duration::ZERO).await;
    assert_eq!(rest_socket, rest_bollard);
    assert_eq!(rest_socket.len(), via_bollard.len() - 1235);

    // Errors are classified as through bollard: a removed container is gone for good.
    let info = c.info().await;
    c.remove().await;
    let (tx, _rx) = mpsc::channel(1);
    let r = follow(
        &docker,
        &info,
        None,
        &direct,
        &tx,
        &m,
        &CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(r, Err(DockerError::ContainerGone { .. })),
        "expected the container to be gone, got {r:?}"
    );
}

/// What the agent reads with: Docker's unix socket, directly.
fn direct(max_line_bytes: usize) -> ReadOptions {
    ReadOptions {
        max_line_bytes,
        unix_socket: Some("/var/run/docker.sock".into()),
        ..Default::default()
    }
}

/// A TTY container's lines, short and long (three 16 KiB entries each), arrive once and
/// in order, through the socket reader as through bollard; with a limit, the long ones
/// are cut and counted; and a read resumed from any line's cursor, also from a cut
/// line's, yields exactly the rest of the log.
#[tokio::test]
async fn tty_lines_arrive_once_in_order_and_a_resumed_read_yields_exactly_the_rest() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let script = "i=1; while [ $i -le 300 ]; do echo \"line $i\"; \
                  if [ $((i % 60)) -eq 0 ]; then head -c 40000 /dev/zero | tr '\\0' L; echo \" $i\"; fi; \
                  i=$((i+1)); done; printf 'no newline'";
    let c = TestContainer::run(&docker, Spec::sh(script).tty()).await;
    c.wait_exit(Duration::from_secs(60)).await;
    let long = "L".repeat(40000);
    let mut expected = Vec::new();
    for i in 1..=300 {
        expected.push(format!("line {i}"));
        if i % 60 == 0 {
            expected.push(format!("{long} {i}"));
        }
    }
    expected.push("no newline".into());

    let m = metrics();
    let (all, end) = read_all(&docker, &c, None, direct(1 << 20), &m, Duration::ZERO).await;
    assert_eq!(stream_messages(&all, StreamName::Stdout), expected);
    assert!(
        all.iter()
            .all(|l| l.stream == StreamName::Stdout && !l.truncated)
    );
    assert_eq!(end, all[all.len() - 1].cursor);
    let (via_bollard, _) = read_all(
        &docker,
        &c,
        None,
        ReadOptions::default(),
        &m,
        Duration::ZERO,
    )
    .await;
    assert!(via_bollard == all, "bollard and the socket reader differ");
    assert_eq!(m.lines_truncated.get(), 0);

    let (cut, cut_end) = read_all(&docker, &c, None, direct(30000), &m, Duration::ZERO).await;
    let shape: Vec<(usize, bool)> = cut.iter().map(|l| (l.message.len(), l.truncated)).collect();
    let expected_shape: Vec<(usize, bool)> = expected
        .iter()
        .map(|e| (e.len().min(30000), e.len() > 30000))
        .collect();
    assert_eq!(shape, expected_shape, "line lengths with a 30000 limit");
    assert_eq!(m.lines_truncated.get(), 5);

    let key = |l: &LogLine| (l.message.clone(), l.timestamp, l.truncated);
    for (lines, limit, end) in [(&all, 1 << 20, end), (&cut, 30000, cut_end)] {
        let mut points: Vec<usize> = (0..lines.len()).step_by(53).collect();
        for (i, l) in lines.iter().enumerate() {
            if l.message.len() > 1000 {
                points.extend([i - 1, i, i + 1]);
            }
        }
        points.push(lines.len() - 1);
        for k in points {
            let (rest, cursor) = read_all(
                &docker,
                &c,
                Some(lines[k].cursor),
                direct(limit),
                &m,
                Duration::ZERO,
            )
            .await;
            let expected: Vec<_> = lines[k + 1..].iter().map(key).collect();
            let got: Vec<_> = rest.iter().map(key).collect();
            assert_eq!(
                got.len(),
                expected.len(),
                "number of lines after line {k} ({:.20?}, limit {limit})",
                lines[k].message
            );
            assert!(
                got == expected,
                "lines after line {k} differ from the full read (limit {limit})"
            );
            assert_eq!(cursor, end, "cursor after resuming from line {k}");
        }
    }
}

/// A TTY line that never ends (`yes | tr -d '\n'`, the case that once forwarded
/// nothing at all): its first `max_line_bytes` arrive, flagged and counted, while the
/// container is still writing it.
#[tokio::test]
async fn a_tty_line_that_never_ends_is_forwarded_cut_while_it_is_written() {
    let Some(docker) = support::docker::docker().await else {
        return;
    };
    let c = TestContainer::run(&docker, Spec::sh("yes | tr -d '\\n'").tty()).await;
    let info = c.info().await;
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let m = metrics();
    let task = {
        let (docker, shutdown, m) = (docker.clone(), shutdown.clone(), m.clone());
        tokio::spawn(async move {
            follow(&docker, &info, None, &direct(100_000), &tx, &m, &shutdown).await
        })
    };
    let batch: Vec<LogLine> = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a cut line within 60 s")
        .expect("follow ended early");
    let expected = "y".repeat(100_000);
    assert_eq!(batch.len(), 1, "one cut line, then nothing until a newline");
    assert!(batch[0].truncated && batch[0].message == expected);
    assert_eq!(m.lines_truncated.get(), 1);
    assert!(
        c.info().await.running,
        "the container is still writing its line"
    );
    shutdown.cancel();
    let cursor = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("follow ends promptly on shutdown")
        .expect("follow task")
        .expect("follow result");
    assert_eq!(cursor, batch[0].cursor);
}
