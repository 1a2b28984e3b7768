//! A TTY container writing one enormous line: the reader's memory stays bounded by
//! `--max-line-bytes`, the cut is forwarded and counted, and the next line arrives.
//!
//! Alone in its own test binary, so that the process's peak RSS is this test's.

mod support;

use std::time::{Duration, Instant};

use logroute::agent::docker::{LogLine, ReadOptions, follow};
use logroute::metrics::AgentMetrics;
use prometheus::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use support::docker::{Spec, TestContainer};

/// The line written: 200 MB without a newline.
const LINE_BYTES: usize = 200_000_000;
/// What the agent cuts at by default (`--max-line-bytes`).
const MAX_LINE_BYTES: usize = 1 << 20;
/// Peak RSS growth allowed while reading: the assembler holds at most one cut line
/// (1 MiB) and hands it out once, the socket is read 256 KiB at a time; the rest is
/// allocator slack. Reading through bollard holds the whole 200 MB line.
const RSS_BOUND_KIB: u64 = 16 * 1024;

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[tokio::test]
async fn a_200_mb_tty_line_is_cut_with_bounded_memory_and_the_next_line_arrives() {
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

    // Peak RSS from here on (writing 5 to clear_refs resets VmHWM).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let baseline = status_kib("VmHWM");
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
    let peak = status_kib("VmHWM");
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
