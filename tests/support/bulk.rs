//! A fault-injecting Elasticsearch `_bulk` server for tests (HTTP/1.1 on 127.0.0.1).
//!
//! It follows the documented `_bulk` contract and is strict wherever Elasticsearch is:
//! `Content-Type` must be `application/json` or `application/x-ndjson` (else 406), the
//! body must be non-empty (else 400 `parse_exception`) and end with a newline (else 400
//! `illegal_argument_exception`), action lines must be `index` or `create` objects with
//! known metadata and an `_index` (else 400 for the whole request; `update`/`delete`
//! are refused too, since the sink never sends them), index names are validated
//! (`invalid_index_name_exception` per item), `create` of an existing `_id` is 409
//! `version_conflict_engine_exception`, `Content-Encoding: gzip` bodies are inflated and
//! bodies larger than `max_content_length` after inflation are refused with 413 (empty
//! body), like `http.max_content_length`. The answer is 200 with `took`, `errors` and one
//! item per action in order, with `_index`, `_id`, `_version`, `result`, `_shards`,
//! `_seq_no`, `_primary_term`, `status`, and `error.{type,reason}` for failures.
//! Dynamic mapping is modelled per index (object/text/long/double/boolean/date, first
//! type wins, date detection on strings), so a conflicting value is a 400
//! `mapper_parsing_exception` for that item only.
//!
//! Scriptable faults: whole-request statuses for the next requests (429 with an
//! `es_rejected_execution_exception` body, 503, ...), per-item statuses inside a 200
//! (from some request on), a delay per request, an expected `Authorization` value (401
//! otherwise). It records each request (time, documents, inflated bytes, gzip, status), the highest number of requests in flight at
//! once, how many times each document id was received, and every stored document.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

/// Field types of the modelled dynamic mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Object,
    Text,
    Long,
    Double,
    Boolean,
    Date,
}

impl FieldType {
    fn name(self) -> &'static str {
        match self {
            FieldType::Object => "object",
            FieldType::Text => "text",
            FieldType::Long => "long",
            FieldType::Double => "float",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
        }
    }
}

/// A document the server accepted.
#[derive(Clone, Debug)]
pub struct StoredDoc {
    pub index: String,
    pub id: String,
    pub source: Value,
    /// 1 when written once; more when an `index` action overwrote it.
    pub version: u64,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub at: Instant,
    pub documents: usize,
    /// Body length after gzip inflation (what `http.max_content_length` limits).
    pub bytes: usize,
    pub gzip: bool,
    pub status: u16,
    pub authorization: Option<String>,
}

#[derive(Clone, Copy, Debug)]
struct ItemFault {
    status: u16,
    every: usize,
    /// Requests reaching item processing that pass unharmed before the fault starts.
    skip: usize,
    requests: usize,
}

#[derive(Default)]
struct IndexState {
    docs: BTreeMap<String, StoredDoc>,
    mapping: BTreeMap<String, FieldType>,
}

struct State {
    fail_requests: VecDeque<u16>,
    item_fault: Option<ItemFault>,
    delay: Duration,
    max_content_length: usize,
    authorization: Option<String>,
    indices: BTreeMap<String, IndexState>,
    requests: Vec<RequestLog>,
    in_flight: usize,
    max_in_flight: usize,
    received: HashMap<String, usize>,
    next_auto_id: u64,
    seq_no: u64,
}

pub struct BulkServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BulkServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            fail_requests: VecDeque::new(),
            item_fault: None,
            delay: Duration::ZERO,
            max_content_length: 100 * 1024 * 1024,
            authorization: None,
            indices: BTreeMap::new(),
            requests: Vec::new(),
            in_flight: 0,
            max_in_flight: 0,
            received: HashMap::new(),
            next_auto_id: 0,
            seq_no: 0,
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer the next requests, one per status, with that status for the whole request
    /// (`0`: answer that request normally).
    pub fn fail_next(&self, statuses: &[u16]) {
        self.lock().fail_requests.extend(statuses);
    }

    /// In the next `requests` requests that reach item processing, answer the items at
    /// positions `0, every, 2·every, ...` with `status` (e.g. 429) instead of storing them.
    pub fn fail_items(&self, status: u16, every: usize, requests: usize) {
        self.fail_items_after(0, status, every, requests);
    }

    /// As [`BulkServer::fail_items`], starting after `skip` requests that reach item
    /// processing were answered normally.
    pub fn fail_items_after(&self, skip: usize, status: u16, every: usize, requests: usize) {
        self.lock().item_fault = Some(ItemFault {
            status,
            every: every.max(1),
            skip,
            requests,
        });
    }

    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// `http.max_content_length` (bytes after gzip inflation); default 100 MiB.
    pub fn set_max_content_length(&self, bytes: usize) {
        self.lock().max_content_length = bytes;
    }

    /// Require this exact `Authorization` header; anything else gets 401.
    pub fn require_authorization(&self, value: &str) {
        self.lock().authorization = Some(value.to_string());
    }

    /// Declare a field's type (like an index template would), `path` dotted.
    pub fn map_field(&self, index: &str, path: &str, ty: FieldType) {
        let mut s = self.lock();
        let idx = s.indices.entry(index.to_string()).or_default();
        for (dot, _) in path.match_indices('.') {
            idx.mapping
                .insert(path[..dot].to_string(), FieldType::Object);
        }
        idx.mapping.insert(path.to_string(), ty);
    }

    pub fn docs(&self) -> Vec<StoredDoc> {
        self.lock()
            .indices
            .values()
            .flat_map(|i| i.docs.values().cloned())
            .collect()
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.lock().requests.clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// How many times an action with this `_id` reached item processing.
    pub fn received(&self, id: &str) -> usize {
        self.lock().received.get(id).copied().unwrap_or(0)
    }
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

/// Elasticsearch's shape for a whole-request error.
fn es_error(status: u16, kind: &str, reason: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({
            "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
            "status": status
        }),
    )
}

struct InFlight(Arc<Mutex<State>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight -= 1;
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let delay = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        s.delay
    };
    let _guard = InFlight(state.clone());
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(es_error(
                400,
                "parse_exception",
                "request body could not be read",
            ));
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header("authorization");
    let gzip = header("content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let path = parts.uri.path().to_string();
    let mut log = RequestLog {
        at,
        documents: 0,
        bytes: 0,
        gzip,
        status: 0,
        authorization: authorization.clone(),
    };
    let response = respond(
        &state,
        &parts.method,
        &path,
        &header("content-type"),
        header("content-encoding"),
        authorization,
        body,
        &mut log,
    );
    log.status = response.status().as_u16();
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .requests
        .push(log);
    Ok(response)
}

#[allow(clippy::too_many_arguments)]
fn respond(
    state: &Mutex<State>,
    method: &hyper::Method,
    path: &str,
    content_type: &Option<String>,
    content_encoding: Option<String>,
    authorization: Option<String>,
    body: Bytes,
    log: &mut RequestLog,
) -> Response<Full<Bytes>> {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(expected) = lock().authorization.clone() {
        if authorization.as_deref() != Some(expected.as_str()) {
            let mut r = es_error(
                401,
                "security_exception",
                "missing authentication credentials for REST request [/_bulk]",
            );
            r.headers_mut().insert(
                "www-authenticate",
                "Basic realm=\"security\" charset=\"UTF-8\""
                    .parse()
                    .expect("header"),
            );
            return r;
        }
    }
    if method == hyper::Method::GET && path == "/" {
        return json_response(
            200,
            &json!({"name": "bulk-test", "version": {"number": "8.15.0"}, "tagline": "You Know, for Search"}),
        );
    }
    let default_index = match path.trim_end_matches('/').strip_suffix("/_bulk") {
        Some("") => None,
        Some(p) if !p[1..].contains('/') => Some(p[1..].to_string()),
        _ => {
            return es_error(
                400,
                "illegal_argument_exception",
                &format!("no handler found for uri [{path}] and method [{method}]"),
            );
        }
    };
    if method != hyper::Method::POST && method != hyper::Method::PUT {
        return es_error(
            405,
            "illegal_argument_exception",
            &format!(
                "Incorrect HTTP method for uri [{path}] and method [{method}], allowed: [POST, PUT]"
            ),
        );
    }
    let ct = content_type.clone().unwrap_or_default();
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && mime != "application/x-ndjson" {
        return json_response(
            406,
            &json!({"error": format!("Content-Type header [{ct}] is not supported"), "status": 406}),
        );
    }
    let body = match content_encoding.as_deref() {
        None => body.to_vec(),
        Some(e) if e.eq_ignore_ascii_case("gzip") => {
            let mut out = Vec::new();
            if flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .is_err()
            {
                return es_error(400, "illegal_argument_exception", "invalid gzip body");
            }
            out
        }
        Some(other) => {
            return es_error(
                400,
                "illegal_argument_exception",
                &format!("unsupported content encoding [{other}]"),
            );
        }
    };
    log.documents = body.iter().filter(|b| **b == b'\n').count() / 2;
    log.bytes = body.len();
    if body.len() > lock().max_content_length {
        return Response::builder()
            .status(413)
            .body(Full::new(Bytes::new()))
            .expect("valid response");
    }
    if body.is_empty() {
        return es_error(400, "parse_exception", "request body is required");
    }
    if body.last() != Some(&b'\n') {
        return es_error(
            400,
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        );
    }
    let lines: Vec<&[u8]> = body[..body.len() - 1].split(|b| *b == b'\n').collect();
    let fault = lock().fail_requests.pop_front();
    if let Some(status) = fault.filter(|s| *s != 0) {
        return match status {
            429 => es_error(
                429,
                "es_rejected_execution_exception",
                "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1, max_coordinating_and_primary_bytes=0]",
            ),
            503 => es_error(
                503,
                "cluster_block_exception",
                "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];",
            ),
            s => es_error(s, "exception", "injected failure"),
        };
    }
    // Parse every action first: a malformed action line fails the whole request.
    let mut actions = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let n = i + 1;
        let Ok(Value::Object(action)) = serde_json::from_slice::<Value>(lines[i]) else {
            return es_error(
                400,
                "illegal_argument_exception",
                &format!("Malformed action/metadata line [{n}], expected START_OBJECT"),
            );
        };
        if action.len() != 1 {
            return es_error(
                400,
                "illegal_argument_exception",
                &format!("Malformed action/metadata line [{n}], expected a single action"),
            );
        }
        let (op, meta) = action.into_iter().next().expect("one entry");
        if op != "index" && op != "create" {
            return es_error(
                400,
                "illegal_argument_exception",
                &format!(
                    "Action/metadata line [{n}] contains an action [{op}] this test server does not implement"
                ),
            );
        }
        let Value::Object(meta) = meta else {
            return es_error(
                400,
                "illegal_argument_exception",
                &format!("Malformed action/metadata line [{n}], expected START_OBJECT"),
            );
        };
        for key in meta.keys() {
            if ![
                "_index",
                "_id",
                "routing",
                "pipeline",
                "require_alias",
                "dynamic_templates",
            ]
            .contains(&key.as_str())
            {
                return es_error(
                    400,
                    "illegal_argument_exception",
                    &format!("Action/metadata line [{n}] contains an unknown parameter [{key}]"),
                );
            }
        }
        let index = match (meta.get("_index"), &default_index) {
            (Some(Value::String(s)), _) => s.clone(),
            (None, Some(d)) => d.clone(),
            _ => {
                return es_error(
                    400,
                    "action_request_validation_exception",
                    "Validation Failed: 1: index is missing;",
                );
            }
        };
        let id = match meta.get("_id") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return es_error(
                    400,
                    "illegal_argument_exception",
                    &format!("Malformed action/metadata line [{n}], _id must be a string"),
                );
            }
        };
        let Some(source) = lines.get(i + 1) else {
            return es_error(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            );
        };
        actions.push((op, index, id, *source));
        i += 2;
    }
    let mut s = lock();
    let item_fault = match s.item_fault {
        Some(f) if f.skip > 0 => {
            s.item_fault = Some(ItemFault {
                skip: f.skip - 1,
                ..f
            });
            None
        }
        Some(f) if f.requests > 0 => {
            s.item_fault = Some(ItemFault {
                requests: f.requests - 1,
                ..f
            });
            Some(f)
        }
        _ => None,
    };
    let started = Instant::now();
    let mut errors = false;
    let mut items = Vec::new();
    for (pos, (op, index, id, source)) in actions.into_iter().enumerate() {
        let item = apply(&mut s, pos, &op, index, id, source, item_fault);
        errors |= item.get("error").is_some();
        let mut entry = Map::new();
        entry.insert(op, item);
        items.push(Value::Object(entry));
    }
    json_response(
        200,
        &json!({"took": started.elapsed().as_millis() as u64, "errors": errors, "items": items}),
    )
}

fn item_error(index: &str, id: Option<&str>, status: u16, kind: &str, reason: String) -> Value {
    json!({
        "_index": index, "_id": id, "status": status,
        "error": {"type": kind, "reason": reason, "index": index, "shard": "0", "index_uuid": "bulk-test-uuid"}
    })
}

#[allow(clippy::too_many_arguments)]
fn apply(
    s: &mut State,
    pos: usize,
    op: &str,
    index: String,
    id: Option<String>,
    source: &[u8],
    fault: Option<ItemFault>,
) -> Value {
    if let Some(why) = invalid_index_name(&index) {
        return item_error(
            &index,
            id.as_deref(),
            400,
            "invalid_index_name_exception",
            format!("Invalid index name [{index}], {why}"),
        );
    }
    let id = id.unwrap_or_else(|| {
        s.next_auto_id += 1;
        format!("auto-{:016}", s.next_auto_id)
    });
    *s.received.entry(id.clone()).or_default() += 1;
    if let Some(f) = fault {
        if pos % f.every == 0 {
            return item_error(
                &index,
                Some(&id),
                f.status,
                "es_rejected_execution_exception",
                "rejected execution of primary operation [shard_detail=[logs][0]]".into(),
            );
        }
    }
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(source) else {
        return item_error(
            &index,
            Some(&id),
            400,
            "document_parsing_exception",
            "[1:1] failed to parse: not a JSON object".into(),
        );
    };
    let idx = s.indices.entry(index.clone()).or_default();
    let mut added = BTreeMap::new();
    if let Err(reason) = check_object(&idx.mapping, &mut added, "", &doc, &id) {
        return item_error(&index, Some(&id), 400, "mapper_parsing_exception", reason);
    }
    let existing = idx.docs.get(&id).map(|d| d.version);
    if op == "create" && existing.is_some() {
        return item_error(
            &index,
            Some(&id),
            409,
            "version_conflict_engine_exception",
            format!(
                "[{id}]: version conflict, document already exists (current version [{}])",
                existing.unwrap_or(1)
            ),
        );
    }
    idx.mapping.extend(added);
    let version = existing.map_or(1, |v| v + 1);
    idx.docs.insert(
        id.clone(),
        StoredDoc {
            index: index.clone(),
            id: id.clone(),
            source: Value::Object(doc),
            version,
        },
    );
    s.seq_no += 1;
    let (status, result) = if version == 1 {
        (201, "created")
    } else {
        (200, "updated")
    };
    json!({
        "_index": index, "_id": id, "_version": version, "result": result,
        "_shards": {"total": 2, "successful": 1, "failed": 0},
        "_seq_no": s.seq_no - 1, "_primary_term": 1, "status": status
    })
}

fn invalid_index_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    if name != name.to_lowercase() {
        return Some("must be lowercase");
    }
    if name.chars().any(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
        )
    }) {
        return Some(
            "must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, #, :]",
        );
    }
    if name.starts_with(['-', '_', '+']) {
        return Some("must not start with '_', '-', or '+'");
    }
    if name == "." || name == ".." {
        return Some("must not be '.' or '..'");
    }
    if name.len() > 255 {
        return Some("index name is too long");
    }
    None
}

/// Check a document against the mapping, collecting new dynamic fields in `added`.
fn check_object(
    mapping: &BTreeMap<String, FieldType>,
    added: &mut BTreeMap<String, FieldType>,
    prefix: &str,
    obj: &Map<String, Value>,
    id: &str,
) -> Result<(), String> {
    for (key, value) in obj {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        check_value(mapping, added, &path, value, id)?;
    }
    Ok(())
}

fn check_value(
    mapping: &BTreeMap<String, FieldType>,
    added: &mut BTreeMap<String, FieldType>,
    path: &str,
    value: &Value,
    id: &str,
) -> Result<(), String> {
    let known = mapping.get(path).or_else(|| added.get(path)).copied();
    let fail = |ty: FieldType| {
        Err(format!(
            "failed to parse field [{path}] of type [{}] in document with id '{id}'. Preview of field's value: '{}'",
            ty.name(),
            value
        ))
    };
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_value(mapping, added, path, v, id)),
        Value::Object(inner) => match known {
            None | Some(FieldType::Object) => {
                added.entry(path.to_string()).or_insert(FieldType::Object);
                check_object(mapping, added, path, inner, id)
            }
            Some(ty) => fail(ty),
        },
        scalar => {
            let Some(ty) = known else {
                added.insert(path.to_string(), dynamic_type(scalar));
                return Ok(());
            };
            let text = match scalar {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let ok = match ty {
                FieldType::Object => {
                    return Err(format!(
                        "object mapping for [{path}] tried to parse field [{path}] as object, but found a concrete value"
                    ));
                }
                FieldType::Text => true,
                FieldType::Long => text.parse::<i64>().is_ok(),
                FieldType::Double => text.parse::<f64>().is_ok(),
                FieldType::Boolean => text == "true" || text == "false",
                FieldType::Date => scalar.is_number() || is_date(&text),
            };
            if ok { Ok(()) } else { fail(ty) }
        }
    }
}

fn dynamic_type(v: &Value) -> FieldType {
    match v {
        Value::Bool(_) => FieldType::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => FieldType::Long,
        Value::Number(_) => FieldType::Double,
        Value::String(s) if is_date(s) => FieldType::Date,
        _ => FieldType::Text,
    }
}

/// `strict_date_optional_time`, approximately.
fn is_date(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
        || chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}
