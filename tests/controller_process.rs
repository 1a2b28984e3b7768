//! The `logroute controller` binary as child processes against the in-test API server
//! (real list + watch over HTTP): readiness with LogRoutes that exist before it starts,
//! a standby replica, and a takeover after the leader is killed (issue 11, items 1 and 6).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::apiserver::ApiServer;

const OPERATOR_NS: &str = "logroute-system";
/// Short lease timings (flags), so that a takeover takes seconds.
const LEASE_SECONDS: u64 = 4;
const RENEW_DEADLINE_SECONDS: u64 = 3;
const RETRY_SECONDS: u64 = 1;

/// One `logroute controller` process; killed on drop.
struct ControllerProc {
    child: Option<Child>,
    log: PathBuf,
    port: u16,
    identity: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl ControllerProc {
    fn start(dir: &Path, kubeconfig: &Path, identity: &str) -> ControllerProc {
        let port = free_port();
        let log = dir.join(format!("controller-{identity}.log"));
        let file = std::fs::File::create(&log).expect("controller log file");
        let child = Command::new(env!("CARGO_BIN_EXE_logroute"))
            .args(["controller", "--namespace", OPERATOR_NS])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--lease-duration-seconds", &LEASE_SECONDS.to_string()])
            .args([
                "--lease-renew-deadline-seconds",
                &RENEW_DEADLINE_SECONDS.to_string(),
            ])
            .args(["--lease-retry-seconds", &RETRY_SECONDS.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("LOGROUTE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn logroute controller");
        ControllerProc {
            child: Some(child),
            log,
            port,
            identity: identity.to_string(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path`: status and body; `None` when nothing answers.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string());
        Some((status, body))
    }

    fn readyz(&self) -> Option<u16> {
        self.get("/readyz").map(|(status, _)| status)
    }

    /// Sum of the samples of metric `name` (any labels).
    fn metric(&self, name: &str) -> f64 {
        let body = self.get("/metrics").map(|(_, b)| b).unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Poll `check` until it holds; fail after `timeout` (or when the process exits) with
    /// what was expected and the process's log.
    #[track_caller]
    fn wait_until(&mut self, what: &str, timeout: Duration, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "controller {} exited ({status}) while waiting for {what}; its log:\n{}",
                    self.identity,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "controller {}: no {what} within {timeout:?}; its log:\n{}",
                self.identity,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn route(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "logroute.dev/v1alpha1", "kind": "LogRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"sinks": [{"name": "central", "syslog": {"address": "syslog.logging.svc:514"}}]},
    })
}

/// Whether the route has Ready=True status and its compiled ConfigMap exists.
fn compiled(api: &ApiServer, ns: &str, name: &str) -> bool {
    let ready = api
        .get("logroute.dev/v1alpha1", "LogRoute", ns, name)
        .and_then(|r| r["status"]["conditions"].as_array().cloned())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
    let config_map = format!("lr.{ns}.{name}");
    ready
        && api
            .get("v1", "ConfigMap", OPERATOR_NS, &config_map)
            .is_some()
}

fn lease_holder(api: &ApiServer) -> Option<String> {
    api.get(
        "coordination.k8s.io/v1",
        "Lease",
        OPERATOR_NS,
        "logroute-controller",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
}

#[test]
fn replicas_become_ready_stand_by_and_take_over_after_the_leader_is_killed() {
    let api = ApiServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let ns = format!("tenant-{}", std::process::id());
    for name in [OPERATOR_NS, ns.as_str()] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
    }
    let existing = ["first", "second", "third"];
    for name in existing {
        api.apply(route(&ns, name));
    }

    // Started while LogRoutes exist: ready within 10 s, caches synced, routes compiled.
    let mut a = ControllerProc::start(dir.path(), &kubeconfig, "ctl-a");
    a.wait_until("/readyz 200", Duration::from_secs(10), |c| {
        c.readyz() == Some(200)
    });
    a.wait_until(
        "\"caches synced\" in its log",
        Duration::from_secs(5),
        |c| c.log().contains("caches synced"),
    );
    a.wait_until(
        "Ready=True and a ConfigMap for every existing route",
        Duration::from_secs(20),
        |_| existing.iter().all(|n| compiled(&api, &ns, n)),
    );
    assert_eq!(lease_holder(&api).as_deref(), Some("ctl-a"));

    // A second replica: ready at once as a standby, and it does not reconcile.
    let mut b = ControllerProc::start(dir.path(), &kubeconfig, "ctl-b");
    let b_started = Instant::now();
    b.wait_until("/readyz 200 as standby", Duration::from_secs(10), |c| {
        c.readyz() == Some(200)
    });
    api.apply(route(&ns, "while-a-leads"));
    a.wait_until(
        "the route created while it leads compiled",
        Duration::from_secs(20),
        |_| compiled(&api, &ns, "while-a-leads"),
    );
    // Standby for longer than a lease lasts: were it to ignore ctl-a's live lease, it
    // would have taken it over by now. (A duration is the property here, not an event.)
    while b_started.elapsed() < Duration::from_secs(LEASE_SECONDS + 2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let b_log = b.log();
    assert!(
        !b_log.contains("became leader") && !b_log.contains("caches synced"),
        "the standby acted as leader while ctl-a held the lease; its log:\n{b_log}"
    );
    let reconciled = "logroute_controller_reconciliations_total";
    assert!(
        a.metric(reconciled) >= 4.0,
        "the leader counts its reconciles in {reconciled}"
    );
    assert_eq!(b.metric(reconciled), 0.0, "the standby reconciled");
    assert_eq!(lease_holder(&api).as_deref(), Some("ctl-a"));

    // kill -9 the leader: the standby takes over once the lease has stood still for its
    // duration, syncs, and reconciles what changes from then on.
    a.kill9();
    let killed = Instant::now();
    b.wait_until("the lease", Duration::from_secs(LEASE_SECONDS + 10), |_| {
        lease_holder(&api).as_deref() == Some("ctl-b")
    });
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(LEASE_SECONDS - RETRY_SECONDS),
        "ctl-b took the lease {took:?} after ctl-a died, before the lease ({LEASE_SECONDS} s) could have expired"
    );
    b.wait_until(
        "\"caches synced\" after the takeover",
        Duration::from_secs(10),
        |c| c.log().contains("caches synced"),
    );
    assert_eq!(b.readyz(), Some(200));
    api.apply(route(&ns, "after-takeover"));
    b.wait_until(
        "the route created after the takeover compiled",
        Duration::from_secs(20),
        |_| compiled(&api, &ns, "after-takeover"),
    );
}

#[test]
fn a_leader_is_not_ready_while_its_initial_lists_are_held() {
    let api = ApiServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let ns = format!("held-{}", std::process::id());
    for name in [OPERATOR_NS, ns.as_str()] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
    }
    api.apply(route(&ns, "only"));
    api.hold_lists(true);

    let mut c = ControllerProc::start(dir.path(), &kubeconfig, "ctl-held");
    c.wait_until("the lease", Duration::from_secs(10), |_| {
        lease_holder(&api).as_deref() == Some("ctl-held")
    });
    c.wait_until("/readyz to answer", Duration::from_secs(10), |c| {
        c.readyz().is_some()
    });
    assert_eq!(
        c.readyz(),
        Some(503),
        "a leader whose lists are unanswered claims to be ready"
    );
    api.hold_lists(false);
    c.wait_until(
        "/readyz 200 once lists are answered",
        Duration::from_secs(10),
        |c| c.readyz() == Some(200),
    );
    c.wait_until("the route compiled", Duration::from_secs(20), |_| {
        compiled(&api, &ns, "only")
    });
}
