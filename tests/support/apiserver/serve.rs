//! HTTP side of the test API server: paths to resources, verbs to store operations,
//! and watches as chunked streams of JSON lines.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::patch;
use super::select::Selector;
use super::store::{ApiError, Part, Resource, Store};

pub type Body = BoxBody<Bytes, std::io::Error>;

pub async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, shared.clone()));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// What a path names.
pub struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
}

fn target(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || ApiError::new(404, "NotFound", format!("the server could not find {path}"));
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let (namespace, plural, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" => {
            (Some(ns.to_string()), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return Err(not_found()),
    };
    let resource = Resource::find(group, version, plural).ok_or_else(not_found)?;
    let (name, status) = match tail {
        [] => (None, false),
        [name] => (Some(name.to_string()), false),
        [name, "status"] => (Some(name.to_string()), true),
        _ => return Err(not_found()),
    };
    if namespace.is_some() && !resource.namespaced
        || (name.is_some() && namespace.is_none() && resource.namespaced)
        || (status && !resource.status)
    {
        return Err(not_found());
    }
    Ok(Target {
        resource,
        namespace,
        name,
        status,
    })
}

fn full(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("response")
}

/// As PartialObjectMetadata, when the client asked for metadata only.
pub fn shape(obj: Value, meta_only: bool) -> Value {
    if !meta_only {
        return obj;
    }
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let line = format!(
        "{} {}",
        req.method(),
        percent_decode(req.uri().path_and_query().map_or("", |p| p.as_str()))
    );
    shared.store.lock().expect("store").requests.push(line);
    Ok(match respond(req, &shared).await {
        Ok(r) => r,
        Err(e) => full(e.code, &e.status()),
    })
}

async fn respond(req: Request<Incoming>, shared: &Arc<Shared>) -> Result<Response<Body>, ApiError> {
    let t = target(req.uri().path())?;
    let q = Query::parse(req.uri().query());
    let meta_only = req
        .headers()
        .get("accept")
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .unwrap_or("")
        .to_string();
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::new(400, "BadRequest", format!("reading body: {e}")))?
        .to_bytes();
    let r = t.resource;
    let ns = t.namespace.clone().unwrap_or_default();
    let part = if t.status { Part::Status } else { Part::Main };
    let parse = || -> Result<Value, ApiError> {
        serde_json::from_slice(&body)
            .or_else(|_| serde_yaml::from_slice(&body))
            .map_err(|e| ApiError::new(400, "BadRequest", format!("body is not JSON: {e}")))
    };
    let Some(name) = t.name.clone() else {
        return match method {
            Method::GET => {
                let sel = Selector::parse(q.get("labelSelector"), q.get("fieldSelector"))
                    .map_err(|e| ApiError::new(400, "BadRequest", e))?;
                if matches!(q.get("watch"), Some("true" | "1")) {
                    Ok(super::watch::watch(shared.clone(), &t, sel, &q, meta_only))
                } else {
                    shared.lists_released().await;
                    let store = shared.store.lock().expect("store");
                    let items: Vec<Value> = store
                        .list(r, t.namespace.as_deref(), &sel)
                        .into_iter()
                        .map(|o| shape(o, meta_only))
                        .collect();
                    let kind = if meta_only {
                        "PartialObjectMetadataList".to_string()
                    } else {
                        format!("{}List", r.kind)
                    };
                    let api_version = if meta_only {
                        "meta.k8s.io/v1".to_string()
                    } else {
                        r.api_version()
                    };
                    Ok(full(
                        200,
                        &json!({
                            "apiVersion": api_version, "kind": kind,
                            "metadata": {"resourceVersion": store.rv.to_string()},
                            "items": items,
                        }),
                    ))
                }
            }
            Method::POST if !t.status => {
                let obj = parse()?;
                let created = shared.write(|s| s.create(r, &ns, obj, Part::Main))?;
                Ok(full(201, &created))
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} on a collection"),
            )),
        };
    };
    match method {
        Method::GET => {
            let store = shared.store.lock().expect("store");
            let obj = store.get(r, &ns, &name).cloned().ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", r.plural),
                )
            })?;
            Ok(full(200, &shape(obj, meta_only)))
        }
        Method::PUT => {
            let obj = parse()?;
            let out = shared.write(|s| {
                let stored_rv = s
                    .get(r, &ns, &name)
                    .and_then(|o| o["metadata"]["resourceVersion"].as_str().map(String::from));
                let sent_rv = obj["metadata"]["resourceVersion"].as_str();
                if let (Some(sent), Some(stored)) = (sent_rv, stored_rv.as_deref())
                    && sent != stored
                {
                    return Err(conflict(r, &name));
                }
                s.update(r, &ns, &name, obj, part)
            })?;
            Ok(full(200, &out))
        }
        Method::DELETE => Ok(full(200, &shared.write(|s| s.delete(r, &ns, &name))?)),
        Method::PATCH => {
            let kind = content_type.split(';').next().unwrap_or("").trim();
            let p = parse()?;
            let field_manager = q.get("fieldManager").is_some_and(|m| !m.is_empty());
            let out =
                shared.write(|s| patch_object(s, r, &ns, &name, part, kind, &p, field_manager))?;
            Ok(full(200, &out))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} on an object"),
        )),
    }
}

fn conflict(r: &Resource, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            r.plural
        ),
    )
}

#[allow(clippy::too_many_arguments)]
fn patch_object(
    s: &mut Store,
    r: &'static Resource,
    ns: &str,
    name: &str,
    part: Part,
    content_type: &str,
    p: &Value,
    field_manager: bool,
) -> Result<Value, ApiError> {
    let current = s.get(r, ns, name).cloned();
    let invalid = |e: String| ApiError::new(422, "Invalid", e);
    let candidate = match content_type {
        "application/apply-patch+yaml" => {
            if !field_manager {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "fieldManager is required for apply patch",
                ));
            }
            let Some(mut obj) = current.clone() else {
                if part == Part::Status {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        format!("{} \"{name}\" not found", r.plural),
                    ));
                }
                let mut obj = p.clone();
                obj["metadata"]["name"] = json!(name);
                return s.create(r, ns, obj, Part::Main);
            };
            patch::merge(&mut obj, p);
            obj
        }
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let mut obj = current.clone().ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", r.plural),
                )
            })?;
            patch::merge(&mut obj, p);
            obj
        }
        "application/json-patch+json" => {
            let obj = current.clone().ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", r.plural),
                )
            })?;
            patch::json_patch(&obj, p).map_err(invalid)?
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("content type {other:?}"),
            ));
        }
    };
    let sent_rv = p["metadata"]["resourceVersion"].as_str();
    let stored_rv = current
        .as_ref()
        .and_then(|o| o["metadata"]["resourceVersion"].as_str());
    if content_type != "application/json-patch+json" && sent_rv.is_some() && sent_rv != stored_rv {
        return Err(conflict(r, name));
    }
    s.update(r, ns, name, candidate, part)
}
