//! The agent end to end into a real OpenSearch-compatible server: real dockerd →
//! `Agent` (production wiring, routes from a LogRoute file, pods from the test API server)
//! → `osmem-server`, directly and through nginx with TLS and Basic auth.
//!
//! `_count` and `_search` prove that every line is indexed once, with its pod metadata.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logroute::agent::pods::PodCache;
use logroute::agent::{Agent, AgentArgs, RouteSource};
use serde_json::Value;
use support::apiserver::ApiServer;
use support::docker::{Spec, TestContainer, docker, eventually, pod_labels, pod_object};
use support::nginx::{Nginx, ProxyAuth};
use support::osmem::Osmem;

const WAIT: Duration = Duration::from_secs(90);

struct Harness {
    agent: Agent,
    api: ApiServer,
    docker: bollard::Docker,
    ns: String,
    dir: tempfile::TempDir,
}

impl Harness {
    /// Start an agent whose routes file is `routes` (`{ns}` substituted); `None` outside
    /// CI when Docker is missing.
    async fn start(test: &str, routes: &str, secrets: &[(&str, &[u8])]) -> Option<Self> {
        let docker = docker().await?;
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = format!("{test}-{}", std::process::id());
        for (key, value) in secrets {
            write_secret(dir.path(), &ns, key, value);
        }
        let routes_path = dir.path().join("routes.yaml");
        std::fs::write(&routes_path, routes.replace("{ns}", &ns)).expect("write routes");
        let args = AgentArgs {
            node_name: Some("node-1".into()),
            namespace: "logroute-system".into(),
            docker_host: "unix:///var/run/docker.sock".into(),
            state_dir: dir.path().join("state"),
            metrics_addr: "127.0.0.1:0".parse().expect("addr"),
            routes: vec![],
            secrets_dir: Some(dir.path().join("secrets")),
            max_line_bytes: 1024 * 1024,
            pod_name: None,
            shutdown_grace_seconds: 5,
            queue_records: 8192,
            queue_bytes: 64 << 20,
            spill_bytes: 256 << 20,
            catchup_streams: 8,
            checkpoint_sync_ms: 1000,
            route_grace_seconds: 600,
            routes_poll_ms: 2000,
        };
        let api = ApiServer::start();
        let (cache, driver) = PodCache::watch(api.client().await, support::agent_proc::NODE);
        tokio::spawn(driver);
        let source = RouteSource::Files {
            paths: vec![routes_path],
            secrets_dir: args.secrets_dir.clone(),
            poll: Duration::from_millis(100),
        };
        let agent = Agent::start(&args, source, Some(cache))
            .await
            .expect("agent starts");
        let h = Self {
            agent,
            api,
            docker,
            ns,
            dir,
        };
        eventually(WAIT, "the route to be active", || async {
            (h.agent.route_table().routes.len() == 1).then_some(())
        })
        .await;
        Some(h)
    }

    /// Write a pod of this node into the API server; returns its name and the uid the
    /// server gave it (which its containers' labels carry).
    fn pod(&mut self, name: &str, labels: &[(&str, &str)]) -> (String, String) {
        let stored = self.api.apply(pod_object(&self.ns, name, labels, &[]));
        let uid = stored["metadata"]["uid"].as_str().expect("server-set uid");
        (name.to_string(), uid.to_string())
    }

    async fn run(&self, pod: &(String, String), container: &str, script: &str) -> TestContainer {
        TestContainer::run(
            &self.docker,
            Spec::sh(script).labels(pod_labels(&self.ns, &pod.0, &pod.1, container)),
        )
        .await
    }

    /// Sum of a metric's samples whose line contains every one of `parts`.
    fn metric(&self, name: &str, parts: &[&str]) -> f64 {
        let text = logroute::metrics::render(&self.agent.registry);
        text.lines()
            .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// `secrets/<ns>/es/<key>`, replaced atomically like a kubelet-updated Secret volume.
fn write_secret(dir: &Path, ns: &str, key: &str, value: &[u8]) {
    let secret: PathBuf = dir.join("secrets").join(ns).join("es");
    std::fs::create_dir_all(&secret).expect("secret dir");
    let tmp = secret.join(format!(".{key}.tmp"));
    std::fs::write(&tmp, value).expect("write secret");
    std::fs::rename(&tmp, secret.join(key)).expect("replace secret");
}

/// How many documents carry each message.
fn messages(hits: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for hit in hits {
        let message = hit["_source"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("document without message: {hit}"));
        *counts.entry(message.to_string()).or_default() += 1;
    }
    counts
}

async fn wait_count(os: &Osmem, index: &str, n: u64) {
    eventually(WAIT, &format!("{n} documents in {index}"), || async {
        os.refresh().await;
        (os.count(index).await >= n).then_some(())
    })
    .await;
    // A little longer: anything beyond n would be a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    os.refresh().await;
    assert_eq!(os.count(index).await, n, "documents in {index}");
}

#[tokio::test]
async fn every_line_is_indexed_once_with_pod_metadata() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let routes = format!(
        r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {{ name: search, namespace: "{{ns}}" }}
spec:
  sinks:
    - name: search
      elasticsearch:
        endpoints: ["{url}"]
        index: 'logs-{{namespace}}-%Y.%m.%d'
        batch: {{ maxEvents: 200, timeoutMs: 200 }}
"#,
        url = os.url
    );
    let Some(mut h) = Harness::start("agent-es", &routes, &[]).await else {
        return;
    };
    const N: usize = 400;
    let pods: Vec<_> = (0..3)
        .map(|i| h.pod(&format!("api-{i}"), &[("app", "api"), ("tier", "web")]))
        .collect();
    let mut containers = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let script = format!(
            "i=0; while [ $i -lt {N} ]; do echo \"c{i} line $i\"; i=$((i+1)); done; echo \"c{i} oops\" >&2"
        );
        containers.push(h.run(pod, "api", &script).await);
    }
    let index = format!("logs-{}-*", h.ns);
    wait_count(&os, &index, (3 * (N + 1)) as u64).await;

    let hits = os.search_all(&index).await;
    let counts = messages(&hits);
    for i in 0..3 {
        for n in 0..N {
            let m = format!("c{i} line {n}");
            assert_eq!(counts.get(&m), Some(&1), "{m} indexed once");
        }
    }
    let find = |message: &str| -> &Value {
        &hits
            .iter()
            .find(|h| h["_source"]["message"] == message)
            .unwrap_or_else(|| panic!("no document {message:?}"))["_source"]
    };
    let doc = find("c1 line 7");
    let k = &doc["kubernetes"];
    assert_eq!(k["namespace"], h.ns.as_str(), "{doc}");
    assert_eq!(k["pod"]["name"], "api-1", "{doc}");
    assert_eq!(k["pod"]["uid"], pods[1].1.as_str(), "{doc}");
    assert_eq!(k["container"]["name"], "api", "{doc}");
    assert_eq!(k["node"]["name"], "node-1", "{doc}");
    assert_eq!(k["labels"]["app"], "api", "{doc}");
    assert_eq!(k["labels"]["tier"], "web", "{doc}");
    assert_eq!(doc["log"]["iostream"], "stdout", "{doc}");
    assert_eq!(doc["container"]["id"], containers[1].id.as_str(), "{doc}");
    // Docker's own timestamp, nanoseconds kept: RFC 3339 with nine fraction digits.
    let ts = doc["@timestamp"].as_str().expect("@timestamp");
    let fraction = ts
        .split_once('.')
        .map(|(_, f)| f.trim_end_matches('Z'))
        .unwrap_or("");
    assert_eq!(fraction.len(), 9, "nanosecond @timestamp, got {ts}");
    let err = find("c2 oops");
    assert_eq!(err["log"]["iostream"], "stderr", "{err}");
    assert_eq!(
        h.metric("logroute_agent_records_sent_total", &["elasticsearch"]),
        (3 * (N + 1)) as f64
    );
    let text = logroute::metrics::render(&h.agent.registry);
    support::promtool::check_metrics("agent", &text);
}

/// Wrong credentials are a clear, counted error that names no secret; once the Secret is
/// fixed, every line arrives, once.
#[tokio::test]
async fn wrong_credentials_then_fixed_loses_nothing() {
    let Some(os) = Osmem::start().await else {
        return;
    };
    let auth = ProxyAuth::Basic {
        user: "logroute".into(),
        password: "s3cret-Pa55".into(),
    };
    let Some(proxy) = Nginx::start(os.authority(), auth).await else {
        return;
    };
    let routes = format!(
        r#"
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {{ name: secured, namespace: "{{ns}}" }}
spec:
  sinks:
    - name: search
      elasticsearch:
        endpoints: ["{url}"]
        index: 'secured-{{namespace}}'
        auth:
          basicSecretRef: {{ name: es }}
        tls:
          caSecretRef: {{ name: es, key: ca.crt }}
          serverName: localhost
        batch: {{ maxEvents: 100, timeoutMs: 200 }}
"#,
        url = proxy.url
    );
    let secrets: [(&str, &[u8]); 3] = [
        ("username", b"logroute"),
        ("password", b"Wr0ng-Pa55"),
        ("ca.crt", &proxy.pki.ca_pem),
    ];
    let Some(mut h) = Harness::start("agent-es-auth", &routes, &secrets).await else {
        return;
    };
    let pod = h.pod("worker-0", &[("app", "worker")]);
    const N: usize = 300;
    let _c = h
        .run(
            &pod,
            "worker",
            &format!(
                "i=0; while [ $i -lt {N} ]; do echo \"secured $i\"; i=$((i+1)); done; sleep 3600"
            ),
        )
        .await;
    eventually(WAIT, "an auth error counted", || async {
        (h.metric("logroute_agent_send_errors_total", &["reason=\"auth\""]) > 0.0).then_some(())
    })
    .await;
    // A pattern, so that "no index yet" counts 0.
    let index = format!("secured-{}*", h.ns);
    os.refresh().await;
    assert_eq!(
        os.count(&index).await,
        0,
        "nothing indexed with wrong credentials"
    );

    write_secret(h.dir.path(), &h.ns, "password", b"s3cret-Pa55");
    wait_count(&os, &index, N as u64).await;
    let counts = messages(&os.search_all(&index).await);
    for n in 0..N {
        assert_eq!(counts.get(&format!("secured {n}")), Some(&1), "line {n}");
    }
}
