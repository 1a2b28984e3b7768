//! The controller's one error type.

use kube::runtime::finalizer;

/// Why a reconcile, the sweep or leader election failed. Every variant names the object
/// it failed on; all of them are transient from the controller's point of view (they are
/// retried with backoff), since a bad spec is not an error but a Ready=False status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Kubernetes API call failed: {action} {object}: {source}; check the API server and the controller's RBAC"
    )]
    Api {
        /// What was attempted, e.g. `apply ConfigMap`.
        action: &'static str,
        /// `namespace/name` (or a list selector) of the object.
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("LogRoute {route}: {source}")]
    Finalizer {
        route: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },
    #[error("object {0} has no namespace or name; the API server should never send one")]
    Unnamed(String),
    #[error("leader stopped: {0}; exiting so that the pod restarts")]
    LeaderStopped(String),
    #[error("the namespace cache stopped before it was filled; the controller is shutting down")]
    NamespaceCacheGone,
}

impl Error {
    pub(crate) fn api(
        action: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Self {
        let object = object.into();
        move |source| Error::Api {
            action,
            object,
            source,
        }
    }

    /// Bounded label value, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Api { .. } => "api",
            Error::Finalizer { source, .. } => match source.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
            Error::Unnamed(_) => "unnamed",
            Error::NamespaceCacheGone => "shutdown",
            Error::LeaderStopped(_) => "leader",
        }
    }
}

/// `true` when the API answered 404 Not Found.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// `true` when the API answered 409 Conflict (stale resourceVersion or already exists).
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}
