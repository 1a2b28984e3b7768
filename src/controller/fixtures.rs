//! A scripted Kubernetes API server for reconcile tests (tower-test mock service).
//!
//! A test lists the calls it expects, in order, each with its method, path, query
//! essentials, an assertion on the request body and the answer to give. The scenario
//! fails on a call that differs, on an expected call that never comes, and on any call
//! nobody expected — each with a message saying what was expected and what was seen.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Namespace;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher};
use kube::{Client, api::ObjectMeta};
use prometheus::Registry;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::context::Context;
use crate::api::CREDENTIALS_SELECTOR;
use crate::metrics::ControllerMetrics;
use crate::permissions::{self, Component};

pub const OP_NS: &str = "logroute-system";
/// How long a test waits for a call (or a reconcile) before failing.
const WAIT: Duration = Duration::from_secs(10);

type BodyCheck = Box<dyn FnOnce(&Value) + Send>;

/// One expected API call and its answer.
pub struct Call {
    method: Method,
    path: String,
    /// `true`: `path` is a prefix (for generated names).
    prefix: bool,
    query: Vec<String>,
    check: Option<BodyCheck>,
    status: u16,
    /// `None`: answer with the request body (what a server returns for an apply/create).
    reply: Option<Value>,
}

impl Call {
    fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            prefix: false,
            query: Vec::new(),
            check: None,
            status: 200,
            reply: None,
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    pub fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }

    pub fn patch(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
    }

    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path).reply(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        )
    }

    /// Server-side apply by the controller's field manager.
    pub fn apply(path: impl Into<String>) -> Self {
        Self::patch(path)
            .query("fieldManager=logroute-controller")
            .query("force=true")
    }

    pub fn path_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }

    /// The query string must contain this.
    pub fn query(mut self, part: &str) -> Self {
        self.query.push(part.to_string());
        self
    }

    pub fn body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }

    pub fn reply(mut self, status: u16, body: Value) -> Self {
        self.status = status;
        self.reply = Some(body);
        self
    }

    pub fn not_found(self) -> Self {
        let what = self.path.rsplit('/').next().unwrap_or_default().to_string();
        self.reply(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                   "code": 404, "message": format!("{what:?} not found")}),
        )
    }

    pub fn conflict(self) -> Self {
        self.reply(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                   "code": 409, "message": "the object has been modified"}),
        )
    }

    fn describe(&self) -> String {
        format!(
            "{} {}{}",
            self.method,
            self.path,
            if self.prefix { "*" } else { "" }
        )
    }
}

/// The server side of the mock client.
pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// Run `work` (a reconcile) while answering exactly `calls`, in order.
    pub async fn run<T>(&mut self, calls: Vec<Call>, work: impl Future<Output = T>) -> T {
        let expected: Vec<String> = calls.iter().map(Call::describe).collect();
        let handle = &mut self.0;
        let serve = async move {
            for (i, call) in calls.into_iter().enumerate() {
                let next = tokio::time::timeout(WAIT, handle.next_request()).await;
                let Ok(Some((request, send))) = next else {
                    panic!(
                        "expected call #{i} {}, but none came within {WAIT:?}",
                        call.describe()
                    );
                };
                answer(i, call, request, send).await;
            }
        };
        let work = tokio::time::timeout(WAIT, work);
        let (out, ()) = tokio::join!(work, serve);
        match out {
            Ok(out) => out,
            Err(_) => {
                let pending = match futures::FutureExt::now_or_never(self.0.next_request()) {
                    Some(Some((req, _))) => format!(
                        "it is waiting on an unexpected call {} {}",
                        req.method(),
                        req.uri()
                    ),
                    _ => "no call is pending".to_string(),
                };
                panic!(
                    "the work did not finish within {WAIT:?}; {pending}; expected calls were {expected:?}"
                )
            }
        }
    }

    /// Answer the next call as `call` says, for tests that drive a long-running task
    /// themselves instead of handing [`ApiServer::run`] a future.
    pub async fn serve(&mut self, call: Call) {
        let (request, send) = self.next(&call).await;
        answer(0, call, request, send).await;
    }

    /// Take the next call, which must have `call`'s method and path, and never answer
    /// it: a hung API server. The call hangs for as long as the returned responder lives.
    pub async fn hang(&mut self, call: Call) -> mock::SendResponse<Response<Body>> {
        let (request, send) = self.next(&call).await;
        assert!(
            request.method() == call.method && request.uri().path() == call.path,
            "expected {} (to leave unanswered), saw {} {}",
            call.describe(),
            request.method(),
            request.uri()
        );
        send
    }

    async fn next(&mut self, call: &Call) -> (Request<Body>, mock::SendResponse<Response<Body>>) {
        match tokio::time::timeout(WAIT, self.0.next_request()).await {
            Ok(Some(next)) => next,
            _ => panic!(
                "expected call {}, but none came within {WAIT:?}",
                call.describe()
            ),
        }
    }

    /// Run `work` expecting no API call at all.
    pub async fn run_silent<T>(&mut self, work: impl Future<Output = T>) -> T {
        self.run(Vec::new(), work).await
    }
}

async fn answer(
    i: usize,
    call: Call,
    request: Request<Body>,
    send: mock::SendResponse<Response<Body>>,
) {
    let (parts, body) = request.into_parts();
    let seen = format!("{} {}", parts.method, parts.uri);
    let path = parts.uri.path();
    let path_ok = if call.prefix {
        path.starts_with(&call.path)
    } else {
        path == call.path
    };
    assert!(
        parts.method == call.method && path_ok,
        "call #{i}: expected {}, saw {seen}",
        call.describe()
    );
    let query = parts.uri.query().unwrap_or_default();
    // Every call the controller makes in a test must be one the chart's RBAC grants.
    let request = permissions::Request::parse(parts.method.as_str(), path, query)
        .unwrap_or_else(|| panic!("call #{i} {seen}: not a Kubernetes API request"));
    assert!(
        request.allowed(Component::Controller, OP_NS),
        "call #{i} {seen} ({request:?}) is not in src/permissions.rs: add the row and the chart rule, or do not make the call"
    );
    // Outside the operator namespace the controller asks only for Secrets labelled for
    // logroute: a tenant's other Secrets never reach it.
    if request.resource == "secrets" && request.namespace.as_deref() != Some(OP_NS) {
        assert!(
            query_param(query, "labelSelector").as_deref() == Some(CREDENTIALS_SELECTOR),
            "call #{i} {seen}: a Secret request outside the operator namespace without the label selector {CREDENTIALS_SELECTOR}"
        );
        assert!(
            request.verb != "get",
            "call #{i} {seen}: Secrets are read through a label-selected list, never by name"
        );
    }
    for part in &call.query {
        assert!(
            query.contains(part.as_str()),
            "call #{i} {seen}: query lacks {part:?}"
        );
    }
    let bytes = body
        .collect_bytes()
        .await
        .unwrap_or_else(|e| panic!("call #{i} {seen}: unreadable body: {e}"));
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("call #{i} {seen}: body is not JSON: {e}"))
    };
    if let Some(check) = call.check {
        check(&value);
    }
    let reply = call.reply.unwrap_or(value);
    let response = Response::builder()
        .status(call.status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
        .unwrap_or_else(|e| panic!("call #{i}: cannot build the response: {e}"));
    send.send_response(response);
}

/// The decoded value of one query parameter (`%XX` and `+` decoded).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Context around the mock server, with the namespace cache filled with `namespaces`
/// (name, labels).
pub fn context(namespaces: &[(&str, &[(&str, &str)])]) -> (Arc<Context>, ApiServer, Registry) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let registry = Registry::new();
    let metrics = ControllerMetrics::new(&registry);
    let (store, mut writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for (name, labels) in namespaces {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let meta = ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        };
        writer.apply_watcher_event(&watcher::Event::InitApply(PartialObjectMeta {
            types: None,
            metadata: meta,
            _phantom: Default::default(),
        }));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let reporter = Reporter {
        controller: "logroute-controller".into(),
        instance: Some("test".into()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Context::new(client, OP_NS.to_string(), metrics, recorder, store);
    (Arc::new(ctx), ApiServer(handle), registry)
}

/// A metric's value as rendered in the text format, e.g.
/// `metric(&reg, "logroute_controller_reconciliations_total{result=\"ready\"}")`.
pub fn metric(registry: &Registry, series: &str) -> Option<f64> {
    crate::metrics::render(registry).lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
