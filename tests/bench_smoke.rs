//! The benchmark harness (bench/run.sh) in smoke mode: a few thousand lines from one
//! container through every scenario and all its sinks (fast syslog counter, rsyslog over
//! TCP and RELP, osmem-server). Not a timed test: it checks only that the harness runs
//! and that every line arrived, so that the harness cannot rot between benchmark runs.
//!
//! It uses the binaries `cargo test` built (debug profile) instead of building release
//! ones, which would take minutes.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use support::{env, osmem, rsyslog};

#[test]
fn the_benchmark_harness_runs_and_counts_every_line() {
    if !Path::new("/var/run/docker.sock").exists() {
        env::missing(
            "dockerd",
            "no socket at /var/run/docker.sock; apt-get install docker.io and start dockerd",
        );
        return;
    }
    if !Path::new(rsyslog::RSYSLOGD).exists() || !Path::new(rsyslog::IMRELP).exists() {
        env::missing(
            "rsyslogd with imrelp",
            "apt-get install -y rsyslog rsyslog-relp",
        );
        return;
    }
    if osmem::binary().is_none() {
        return;
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_logroute"))
        .parent()
        .expect("the binary is in a directory");
    assert!(
        Path::new(env!("CARGO_BIN_EXE_lrbench")).starts_with(bin_dir),
        "lrbench and logroute are built into the same directory"
    );
    let started = Instant::now();
    let out = Command::new("bash")
        .args(["bench/run.sh", "--smoke"])
        .env("LRBENCH_BIN_DIR", bin_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run bash bench/run.sh --smoke");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("SMOKE OK"),
        "bench/run.sh --smoke failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    for scenario in [
        "backlog 1c",
        "live 1c",
        "rsyslog 1c",
        "osmem 1c",
        "fast counter",
        "one route",
    ] {
        assert!(
            stdout.contains(&format!("| {scenario} |")),
            "the report has no row for {scenario}:\n{stdout}"
        );
    }
    eprintln!("bench smoke took {:?}", started.elapsed());
}
