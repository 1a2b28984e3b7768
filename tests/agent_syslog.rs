//! The agent end to end: real dockerd → `Agent` (the production wiring, routes from a
//! LogRoute file, pods from the test API server) → real rsyslog on loopback.
//!
//! Every test uses its own namespace, pods and rsyslog, so tests can run in parallel on
//! one daemon: each agent sees every container, but routes only its own test's pods.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use logroute::agent::pods::PodCache;
use logroute::agent::{Agent, AgentArgs, RouteSource};
use support::apiserver::ApiServer;
use support::docker::{Spec, TestContainer, docker, eventually, pod_labels, pod_object};
use support::rsyslog::{Received, Rsyslog};

const WAIT: Duration = Duration::from_secs(60);

struct Harness {
    agent: Option<Agent>,
    routes: PathBuf,
    api: ApiServer,
    rsyslog: Rsyslog,
    docker: bollard::Docker,
    ns: String,
    _dir: tempfile::TempDir,
}

fn args(dir: &std::path::Path, pod_name: Option<&str>) -> AgentArgs {
    AgentArgs {
        node_name: Some("node-1".into()),
        namespace: "logroute-system".into(),
        docker_host: "unix:///var/run/docker.sock".into(),
        state_dir: dir.join("state"),
        metrics_addr: "127.0.0.1:0".parse().expect("addr"),
        routes: vec![],
        secrets_dir: Some(dir.join("secrets")),
        max_line_bytes: 1024 * 1024,
        pod_name: pod_name.map(str::to_owned),
        shutdown_grace_seconds: 5,
        queue_records: 8192,
        queue_bytes: 64 << 20,
        spill_bytes: 256 << 20,
        catchup_streams: 8,
        checkpoint_sync_ms: 1000,
        route_grace_seconds: 600,
        routes_poll_ms: 2000,
    }
}

/// Start rsyslog and an agent whose routes file is `routes` (with `{tcp}`, `{udp}`,
/// `{tls}` and `{ns}` substituted). With `self_pod`, the agent's own pod is that pod of
/// the test namespace, which is then also the operator namespace. `None` outside CI when
/// Docker or rsyslog is missing.
async fn start(test: &str, routes: &str, self_pod: Option<&str>) -> Option<Harness> {
    let docker = docker().await?;
    let rsyslog = Rsyslog::start_or_skip()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = format!("{test}-{}", std::process::id());
    let ca_dir = dir.path().join("secrets").join(&ns).join("syslog-ca");
    std::fs::create_dir_all(&ca_dir).expect("secrets dir");
    std::fs::write(ca_dir.join("ca.crt"), rsyslog.ca_pem()).expect("write CA");
    let routes_path = dir.path().join("routes.yaml");
    write_routes(&routes_path, &render(routes, &rsyslog, &ns));
    let api = ApiServer::start();
    let (cache, driver) = PodCache::watch(api.client().await, support::agent_proc::NODE);
    tokio::spawn(driver);
    let mut a = args(dir.path(), self_pod);
    if self_pod.is_some() {
        a.namespace = ns.clone();
    }
    let source = RouteSource::Files {
        paths: vec![routes_path.clone()],
        secrets_dir: a.secrets_dir.clone(),
        poll: Duration::from_millis(100),
    };
    let agent = Agent::start(&a, source, Some(cache))
        .await
        .expect("agent starts");
    let h = Harness {
        agent: Some(agent),
        routes: routes_path,
        api,
        rsyslog,
        docker,
        ns,
        _dir: dir,
    };
    h.wait_routes(routes.matches("kind: LogRoute").count())
        .await;
    Some(h)
}

fn render(routes: &str, rsyslog: &Rsyslog, ns: &str) -> String {
    routes
        .replace("{tcp}", &rsyslog.tcp_port.to_string())
        .replace("{udp}", &rsyslog.udp_port.to_string())
        .replace("{tls}", &rsyslog.tls_port.to_string())
        .replace("{ns}", ns)
}

/// Write then rename, so the agent never reads half a file.
fn write_routes(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write routes");
    std::fs::rename(&tmp, path).expect("replace routes");
}

impl Harness {
    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    fn write_routes(&self, routes: &str) {
        write_routes(&self.routes, &render(routes, &self.rsyslog, &self.ns));
    }

    async fn wait_routes(&self, n: usize) {
        eventually(WAIT, &format!("{n} active routes"), || async {
            (self.agent().route_table().routes.len() == n).then_some(())
        })
        .await;
    }

    /// Write a pod of this node into the API server; returns its name and the uid the
    /// server gave it (which its containers' labels carry).
    fn pod(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> (String, String) {
        let stored = self
            .api
            .apply(pod_object(&self.ns, name, labels, annotations));
        let uid = stored["metadata"]["uid"].as_str().expect("server-set uid");
        (name.to_string(), uid.to_string())
    }

    async fn run(&self, pod: &(String, String), container: &str, script: &str) -> TestContainer {
        self.run_spec(pod, container, Spec::sh(script)).await
    }

    async fn run_spec(&self, pod: &(String, String), container: &str, spec: Spec) -> TestContainer {
        TestContainer::run(
            &self.docker,
            spec.labels(pod_labels(&self.ns, &pod.0, &pod.1, container)),
        )
        .await
    }

    fn metric(&self, name: &str) -> f64 {
        let text = logroute::metrics::render(&self.agent().registry);
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.rsyslog.stop();
    }
}

/// Structured-data parameter of a received RFC 5424 message.
fn sd_param(r: &Received, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = r.sd.find(&needle)? + needle.len();
    let rest = &r.sd[start..];
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

fn by_container(got: &[Received]) -> BTreeMap<String, Vec<&Received>> {
    let mut map: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in got {
        map.entry(format!(
            "{}/{}",
            r.app,
            sd_param(r, "container").unwrap_or_default()
        ))
        .or_default()
        .push(r);
    }
    map
}

const ONE_ROUTE_TCP: &str = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: all, namespace: "{ns}"}
spec:
  sinks:
  - name: central
    syslog: {address: "127.0.0.1:{tcp}", maxMessageBytes: 1048576}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_line_arrives_once_in_order_with_pod_metadata() {
    let Some(mut h) = start("lines", ONE_ROUTE_TCP, None).await else {
        return;
    };
    const N: usize = 2000;
    let mut containers = Vec::new();
    for i in 0..3 {
        let pod = h.pod(&format!("web-{i}"), &[("app", "web")], &[]);
        let script = format!(
            "seq 1 {N} | sed 's/^/line-/'; echo oops-on-stderr >&2; head -c 102400 /dev/zero | tr '\\0' x; echo; printf 'bad \\377\\376 utf8\\n'"
        );
        containers.push(h.run(&pod, "api", &script).await);
    }
    let expected = 3 * (N + 3);
    let got = h.rsyslog.wait_for(expected, WAIT);
    let groups = by_container(&got);
    assert_eq!(
        groups.len(),
        3,
        "three containers: {:?}",
        groups.keys().collect::<Vec<_>>()
    );
    for (key, records) in &groups {
        let stdout: Vec<&str> = records
            .iter()
            .filter(|r| r.msgid == "stdout")
            .map(|r| r.msg.as_str())
            .collect();
        let seq: Vec<String> = (1..=N).map(|i| format!("line-{i}")).collect();
        assert_eq!(&stdout[..N], &seq[..], "{key}: lines once, in order");
        assert_eq!(
            stdout.len(),
            N + 2,
            "{key}: {N} lines + the long line + the bad UTF-8 line"
        );
        let long = stdout[N];
        assert!(
            long.len() == 102_400 && long.bytes().all(|b| b == b'x'),
            "{key}: 100 KiB line whole, got {} bytes",
            long.len()
        );
        assert_eq!(
            stdout[N + 1],
            "bad \u{fffd}\u{fffd} utf8",
            "{key}: invalid UTF-8 replaced"
        );
        let stderr: Vec<&&Received> = records.iter().filter(|r| r.msgid == "stderr").collect();
        assert_eq!(stderr.len(), 1, "{key}: one stderr line");
        assert_eq!(stderr[0].msg, "oops-on-stderr");
        assert_eq!(stderr[0].severity, 3, "stderr is err");
        let r = records[0];
        assert_eq!(r.hostname, "node-1");
        assert_eq!(
            sd_param(r, "namespace").as_deref(),
            Some(h.ns.as_str()),
            "namespace in SD: {}",
            r.sd
        );
        assert_eq!(sd_param(r, "container").as_deref(), Some("api"));
        assert!(r.app.starts_with("web-"), "APP-NAME is the pod: {}", r.app);
        assert_eq!(sd_param(r, "pod").as_deref(), Some(r.app.as_str()));
    }
    assert_eq!(got.len(), expected, "nothing repeated");
    drop(containers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn selectors_filters_and_multiline() {
    let routes = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: app-a-errors, namespace: "{ns}"}
spec:
  selector: {matchLabels: {app: a}}
  filter: {include: ERROR, exclude: healthz}
  sinks: [{name: s, syslog: {address: "127.0.0.1:{tcp}", facility: local1}}]
---
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: traces, namespace: "{ns}"}
spec:
  selector: {matchLabels: {app: b}, streams: [stderr]}
  multiline: {start: '^\S', timeoutMs: 200}
  sinks: [{name: s, syslog: {address: "127.0.0.1:{tcp}", facility: local2}}]
"#;
    let Some(mut h) = start("filters", routes, None).await else {
        return;
    };
    let a = h.pod("pod-a", &[("app", "a")], &[]);
    let b = h.pod("pod-b", &[("app", "b")], &[]);
    let _ca = h
        .run(
            &a,
            "main",
            "echo 'ERROR one'; echo 'INFO two'; echo 'ERROR healthz'; echo 'ERROR three'",
        )
        .await;
    let _cb = h
        .run(
            &b,
            "main",
            "echo 'ERROR from b'; printf 'Exception: boom\\n  at one\\n  at two\\nnext\\n' >&2",
        )
        .await;
    let got = h.rsyslog.wait_for(4, WAIT);
    let local1: Vec<&str> = got
        .iter()
        .filter(|r| r.facility == 17)
        .map(|r| r.msg.as_str())
        .collect();
    let local2: Vec<&str> = got
        .iter()
        .filter(|r| r.facility == 18)
        .map(|r| r.msg.as_str())
        .collect();
    assert_eq!(
        local1,
        vec!["ERROR one", "ERROR three"],
        "include/exclude on app=a only"
    );
    assert_eq!(
        local2,
        vec!["Exception: boom\n  at one\n  at two", "next"],
        "stack trace is one record"
    );
    assert!(
        got.iter().all(|r| r.app != "pod-b" || r.facility == 18),
        "app=b never reaches the app=a route"
    );
    assert!(
        h.metric("logroute_agent_records_filtered_total") >= 3.0,
        "filtered records are counted"
    );
}

/// Filters judge a long line by its first 64 KiB, and lines of 4 KiB and more are
/// matched off the async worker (the agent runs on a multi-thread runtime here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_filtered_by_their_beginning() {
    let routes = r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: long-errors, namespace: "{ns}"}
spec:
  filter: {include: ERROR, exclude: healthz}
  sinks: [{name: s, syslog: {address: "127.0.0.1:{tcp}", maxMessageBytes: 524288}}]
"#;
    let Some(mut h) = start("longfilter", routes, None).await else {
        return;
    };
    let a = h.pod("pod-long", &[("app", "long")], &[]);
    let _c = h
        .run(
            &a,
            "main",
            "printf 'ERROR '; head -c 5000 /dev/zero | tr '\\0' a; echo; \
             head -c 70000 /dev/zero | tr '\\0' b; echo ' ERROR'; \
             printf 'ERROR '; head -c 70000 /dev/zero | tr '\\0' c; echo ' healthz'; \
             echo 'ERROR healthz'; echo 'ERROR end'",
        )
        .await;
    let got = h.rsyslog.wait_for(3, WAIT);
    let msgs: Vec<&str> = got.iter().map(|r| r.msg.as_str()).collect();
    let expected = [
        format!("ERROR {}", "a".repeat(5000)),
        format!("ERROR {} healthz", "c".repeat(70000)),
        "ERROR end".to_string(),
    ];
    assert_eq!(
        msgs.len(),
        3,
        "got {:?}",
        msgs.iter()
            .map(|m| &m[..m.len().min(40)])
            .collect::<Vec<_>>()
    );
    for (m, e) in msgs.iter().zip(&expected) {
        assert!(
            m == e,
            "expected {}… ({} bytes), got {}… ({} bytes)",
            &e[..e.len().min(40)],
            e.len(),
            &m[..m.len().min(40)],
            m.len()
        );
    }
    assert!(
        h.metric("logroute_agent_records_filtered_total") >= 2.0,
        "the line with ERROR past 64 KiB and 'ERROR healthz' are counted as filtered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn own_output_and_opted_out_containers_are_never_forwarded() {
    let Some(mut h) = start("optout", ONE_ROUTE_TCP, Some("logroute-agent-x")).await else {
        return;
    };
    // The agent's own pod, in the namespace the route covers.
    let own = h.pod("logroute-agent-x", &[], &[]);
    let _own = h.run(&own, "agent", "echo SELF").await;
    let p1 = h.pod("ignored-env", &[], &[]);
    let _c1 = h
        .run_spec(&p1, "c", Spec::sh("echo LEAK-env").env("LOGSPOUT=ignore"))
        .await;
    let p2 = h.pod("ignored-label", &[], &[]);
    let mut labels = HashMap::from([("logroute.dev/exclude".to_string(), "true".to_string())]);
    labels.extend(pod_labels(&h.ns, &p2.0, &p2.1, "c"));
    let _c2 = TestContainer::run(&h.docker, Spec::sh("echo LEAK-label").labels(labels)).await;
    let p3 = h.pod(
        "ignored-annotation",
        &[],
        &[("logroute.dev/exclude", "true")],
    );
    let _c3 = h.run(&p3, "c", "echo LEAK-annotation").await;
    let control = h.pod("control", &[], &[]);
    let _c4 = h.run(&control, "c", "sleep 1; echo CONTROL").await;
    let got = h.rsyslog.wait_for(1, WAIT);
    assert!(
        got.iter().any(|r| r.msg == "CONTROL"),
        "the control container is forwarded"
    );
    let leaked: Vec<&str> = got
        .iter()
        .map(|r| r.msg.as_str())
        .filter(|m| *m != "CONTROL")
        .collect();
    assert!(
        leaked.is_empty(),
        "opted-out output was forwarded: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_change_live_without_losing_lines() {
    let v1 = ONE_ROUTE_TCP.replace("maxMessageBytes: 1048576", "facility: local1");
    let Some(mut h) = start("live", &v1, None).await else {
        return;
    };
    let pod = h.pod("ticker", &[], &[]);
    let _c = h
        .run(
            &pod,
            "c",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo tick-$i; sleep 0.01; done",
        )
        .await;
    h.rsyslog.wait_for(20, WAIT);
    h.write_routes(&ONE_ROUTE_TCP.replace("maxMessageBytes: 1048576", "facility: local2"));
    eventually(WAIT, "records under the changed route", || async {
        h.rsyslog
            .received()
            .iter()
            .any(|r| r.facility == 18)
            .then_some(())
    })
    .await;
    let added = format!(
        "{}---{}",
        ONE_ROUTE_TCP.replace("facility: local1", ""),
        ONE_ROUTE_TCP
            .replace("name: all", "name: extra")
            .replace("maxMessageBytes: 1048576", "facility: local3")
    );
    h.write_routes(&added);
    h.wait_routes(2).await;
    eventually(WAIT, "records under the added route", || async {
        h.rsyslog
            .received()
            .iter()
            .any(|r| r.facility == 19)
            .then_some(())
    })
    .await;
    h.write_routes("# no routes\n");
    h.wait_routes(0).await;
    // Let what was queued before the removal drain, then check nothing new arrives.
    let settled = eventually(WAIT, "delivery to settle after the removal", || async {
        let before = h.rsyslog.received().len();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = h.rsyslog.received();
        (after.len() == before).then_some(after)
    })
    .await;
    let main_route: Vec<u64> = settled
        .iter()
        .filter(|r| r.facility != 19)
        .filter_map(|r| r.msg.strip_prefix("tick-")?.parse().ok())
        .collect();
    let expected: Vec<u64> = (main_route[0]..main_route[0] + main_route.len() as u64).collect();
    assert_eq!(
        main_route, expected,
        "across the change every line arrived once, in order"
    );
    assert!(settled.iter().any(|r| r.facility == 17) && settled.iter().any(|r| r.facility == 18));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_containers_arrive_complete() {
    let Some(mut h) = start("burst", ONE_ROUTE_TCP, None).await else {
        return;
    };
    const N: usize = 5000;
    let mut containers = Vec::new();
    for i in 0..8 {
        let pod = h.pod(&format!("job-{i}"), &[], &[]);
        containers.push(h.run(&pod, "job", &format!("seq 1 {N}")).await);
    }
    let got = h.rsyslog.wait_for(8 * N, Duration::from_secs(180));
    for (key, records) in by_container(&got) {
        let nums: Vec<usize> = records.iter().filter_map(|r| r.msg.parse().ok()).collect();
        assert_eq!(
            nums,
            (1..=N).collect::<Vec<_>>(),
            "{key}: complete, once, in order"
        );
    }
    assert_eq!(got.len(), 8 * N, "nothing repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receiver_outage_delays_but_loses_nothing() {
    let routes = ONE_ROUTE_TCP.to_owned()
        + r#"---
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: tls, namespace: "{ns}"}
spec:
  sinks:
  - name: secure
    syslog:
      address: "127.0.0.1:{tls}"
      transport: tls
      facility: local4
      tls: {caSecretRef: {name: syslog-ca, key: ca.crt}, serverName: localhost}
"#;
    let Some(mut h) = start("outage", &routes, None).await else {
        return;
    };
    let pod = h.pod("steady", &[], &[]);
    let _warm = h.run(&pod, "warm", "echo warm").await;
    h.rsyslog.wait_for(2, WAIT);
    h.rsyslog.stop();
    let _c = h.run(&pod, "c", "seq 1 500").await;
    eventually(WAIT, "send errors while the receiver is down", || async {
        (h.metric("logroute_agent_send_errors_total") > 0.0).then_some(())
    })
    .await;
    h.rsyslog.restart().expect("rsyslog restarts");
    let got = h.rsyslog.wait_for(2 + 2 * 500, WAIT);
    for facility in [16u8, 20] {
        let nums: Vec<usize> = got
            .iter()
            .filter(|r| r.facility == facility && sd_param(r, "container").as_deref() == Some("c"))
            .filter_map(|r| r.msg.parse().ok())
            .collect();
        assert_eq!(
            nums,
            (1..=500).collect::<Vec<_>>(),
            "facility {facility}: all lines after the outage, once"
        );
    }
    assert!(
        h.metric("logroute_agent_sink_reconnects_total") >= 2.0,
        "reconnects are counted"
    );
}
