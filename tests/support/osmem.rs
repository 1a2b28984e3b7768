//! A real OpenSearch-compatible server for end-to-end tests: `osmem-server` from PyPI,
//! pinned by hash in tests/requirements-osmem.txt
//! (`pip install --require-hashes -r tests/requirements-osmem.txt`).
//!
//! The server is started on a free loopback port (`-addr 127.0.0.1:0`; it prints its URL
//! as the first JSON line on stdout), exits with the test process (`-parent-pid`) and is
//! killed when the [`Osmem`] value is dropped.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::env;

pub const INSTALL: &str = "pip install --require-hashes -r tests/requirements-osmem.txt";

pub struct Osmem {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    _child: tokio::process::Child,
}

/// The osmem-server binary, or `None` (after [`env::missing`]) when it is not installed.
pub fn binary() -> Option<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import osmem_server;print(osmem_server.resolve_binary())",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if std::path::Path::new(&path).exists() {
                return Some(path);
            }
            env::missing(
                "osmem-server",
                &format!("resolve_binary() named {path:?}, which does not exist; {INSTALL}"),
            );
            None
        }
        _ => {
            env::missing("osmem-server (PyPI, python3 module osmem_server)", INSTALL);
            None
        }
    }
}

impl Osmem {
    /// Start a fresh, empty server; `None` outside CI when osmem-server is not installed.
    pub async fn start() -> Option<Self> {
        let bin = binary()?;
        let mut child = tokio::process::Command::new(&bin)
            .args([
                "-addr",
                "127.0.0.1:0",
                "-no-stdin-watch",
                "-no-ja",
                "-parent-pid",
            ])
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} failed: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("osmem-server printed no ready line within 30 s"))
            .unwrap_or_else(|e| panic!("reading osmem-server's stdout failed: {e}"))
            .unwrap_or_else(|| panic!("osmem-server exited before printing its URL"));
        let ready: Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("osmem-server's first line {first:?} is not JSON: {e}"));
        let url = ready["url"]
            .as_str()
            .unwrap_or_else(|| panic!("osmem-server's ready line has no url: {first}"))
            .to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let server = Self { url, _child: child };
        let (status, _) = http("GET", &server.url, None).await;
        assert_eq!(
            status, 200,
            "osmem-server at {} does not answer GET /",
            server.url
        );
        Some(server)
    }

    /// Host and port, for a proxy in front of it.
    pub fn authority(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Make everything indexed so far searchable.
    pub async fn refresh(&self) {
        let (status, body) = http("POST", &format!("{}/_refresh", self.url), None).await;
        assert_eq!(status, 200, "_refresh failed: {body}");
    }

    /// Create an index with settings/mappings (`PUT /<index>`).
    pub async fn create_index(&self, index: &str, body: Value) {
        let (status, answer) = http("PUT", &format!("{}/{index}", self.url), Some(body)).await;
        assert_eq!(status, 200, "creating index {index} failed: {answer}");
    }

    /// `_count` of an index pattern (after [`Osmem::refresh`]).
    pub async fn count(&self, index: &str) -> u64 {
        let (status, body) = http("GET", &format!("{}/{index}/_count", self.url), None).await;
        assert_eq!(status, 200, "_count on {index} failed: {body}");
        body["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("_count answer without count: {body}"))
    }

    /// Every hit (`_index`, `_id`, `_source`) of an index pattern, up to 10 000.
    pub async fn search_all(&self, index: &str) -> Vec<Value> {
        let query = serde_json::json!({"size": 10000, "query": {"match_all": {}}});
        let (status, body) = http(
            "POST",
            &format!("{}/{index}/_search", self.url),
            Some(query),
        )
        .await;
        assert_eq!(status, 200, "_search on {index} failed: {body}");
        body["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("_search answer without hits: {body}"))
    }
}

/// One plain-HTTP JSON request; the answer's status and body (`Value::Null` when empty or
/// not JSON).
pub async fn http(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .expect("valid request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
