//! `/metrics`, `/healthz` and `/readyz`, served by every logroute process (and the
//! agent's `/routes` health report, see `agent::health`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// Shared readiness flag: set once the process has done what it needs before it is useful
/// (controller: caches synced; agent: routes loaded and Docker reached).
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    ready: Readiness,
}

/// Serve until `shutdown` is cancelled. Binding errors are returned at once so a wrong
/// `--metrics-addr` fails start-up instead of going unnoticed.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    ready: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    serve_with(addr, registry, ready, Router::new(), shutdown).await
}

/// [`serve`] with more routes (the agent's `/routes` health report).
pub async fn serve_with(
    addr: SocketAddr,
    registry: Registry,
    ready: Readiness,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, ready })
        .merge(extra);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.registry),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
