//! Suspending a receiver (SIGSTOP / SIGCONT) to stand for a sink that is down without
//! closing its connections: it takes nothing, and loses nothing it had taken.
//!
//! Stopping rsyslog (SIGTERM) instead would drop what its kernel had already accepted
//! for it, which plain TCP syslog cannot know about (see src/sink/syslog/transport.rs).

use std::process::Command;

/// The process listening on TCP `port` on any local address.
pub fn listener_pid(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local_port = cols.get(1)?.rsplit_once(':')?.1;
        let listening = cols.get(3) == Some(&"0A");
        (listening && u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| cols.get(9).map(|s| s.to_string()))
            .flatten()
    })?;
    let target = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                return Some(pid);
            }
        }
    }
    None
}

/// Send `SIGSTOP` (`suspend`) or `SIGCONT` to `pid`.
pub fn set_suspended(pid: u32, suspend: bool) {
    let signal = if suspend { "-STOP" } else { "-CONT" };
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}
