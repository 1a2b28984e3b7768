//! `promtool check metrics` (Debian's `prometheus` package): the exposition text must
//! parse and follow Prometheus' naming and help conventions.

use std::io::Write;
use std::process::{Command, Stdio};

use super::env;

pub const INSTALL: &str = "apt-get install -y --no-install-recommends prometheus";

/// Lint `text`; panics with promtool's findings when it has any. Returns without
/// checking (after [`env::missing`]) when promtool is not installed outside CI.
pub fn check_metrics(what: &str, text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) => return env::missing("promtool", INSTALL),
    };
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics on the {what} exposition: {findings}\n--- exposition ---\n{text}"
    );
}

/// Run `promtool <args>`; panics with its output unless it succeeds. Returns false
/// (after [`env::missing`]) when promtool is not installed outside CI.
pub fn run(args: &[&str]) -> bool {
    let out = match Command::new("promtool").args(args).output() {
        Ok(o) => o,
        Err(_) => {
            env::missing("promtool", INSTALL);
            return false;
        }
    };
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}
