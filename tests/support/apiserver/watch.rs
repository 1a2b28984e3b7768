//! Watches as the API server streams them: chunked JSON lines, first the changes after
//! the requested resourceVersion from the history, then live ones.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use futures::channel::mpsc;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Shared;
use super::select::Selector;
use super::serve::{Body, Query, Target, shape};
use super::store::ApiError;

/// Idle watches send a BOOKMARK this often (when asked to) and notice a gone client.
const WATCH_TICK: Duration = Duration::from_secs(1);

fn frame(event: &str, obj: Value) -> Result<Frame<Bytes>, std::io::Error> {
    let mut line = json!({"type": event, "object": obj}).to_string();
    line.push('\n');
    Ok(Frame::data(Bytes::from(line)))
}

/// A chunked stream of watch events: first those after `resourceVersion` from the
/// history (or ADDED for every object when it is absent, "0" or `sendInitialEvents`),
/// then live ones, until `timeoutSeconds`, `drop_watches` or the client going away.
pub fn watch(
    shared: Arc<Shared>,
    t: &Target,
    sel: Selector,
    q: &Query,
    meta_only: bool,
) -> Response<Body> {
    let (mut tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
    let r = t.resource;
    let ns = t.namespace.clone();
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800u64);
    let bookmarks = q.get("allowWatchBookmarks") == Some("true");
    let from: Option<u64> = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let streaming = q.get("sendInitialEvents") == Some("true");
    let initial = from.is_none() || streaming;
    tokio::spawn(async move {
        let _open = shared.open_watch();
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut ticks = shared.tick.subscribe();
        let (epoch, mut pos, first) = {
            let store = shared.store.lock().expect("store");
            let first: Vec<Value> = if initial {
                store.list(r, ns.as_deref(), &sel)
            } else {
                Vec::new()
            };
            let pos = if initial { store.rv } else { from.unwrap_or(0) };
            (store.drop_epoch, pos, first)
        };
        for obj in first {
            if tx
                .send(frame("ADDED", shape(obj, meta_only)))
                .await
                .is_err()
            {
                return;
            }
        }
        // A streaming list ends its initial events with this bookmark.
        if streaming {
            let b = json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": pos.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            let _ = tx.send(frame("BOOKMARK", b)).await;
        }
        loop {
            ticks.borrow_and_update();
            let (dropped, batch) = {
                let store = shared.store.lock().expect("store");
                let batch = if store.paused {
                    Some((Vec::new(), pos))
                } else {
                    store
                        .changes_after(r, ns.as_deref(), &sel, pos)
                        .map(|c| (c, store.rv))
                };
                (store.drop_epoch != epoch, batch)
            };
            if dropped {
                let _ = tx
                    .send(Err(std::io::Error::other("watch dropped by the test")))
                    .await;
                return;
            }
            let Some((changes, now)) = batch else {
                let gone = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {pos} (compacted)"),
                );
                let _ = tx.send(frame("ERROR", gone.status())).await;
                return;
            };
            for (kind, obj) in changes {
                if tx.send(frame(kind, shape(obj, meta_only))).await.is_err() {
                    return;
                }
            }
            pos = now;
            tokio::select! {
                _ = ticks.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tokio::time::sleep(WATCH_TICK) => {
                    if tx.is_closed() {
                        return;
                    }
                    if bookmarks {
                        let b = json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": pos.to_string()}});
                        if tx.send(frame("BOOKMARK", b)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(rx)))
        .expect("watch response")
}
