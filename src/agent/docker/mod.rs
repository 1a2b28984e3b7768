//! The agent's read side: which containers run ([`watch_containers`]) and what they log
//! ([`follow`]), through the Docker Engine API.
//!
//! Discovery and reading are separate: discovery announces containers, and the pipeline
//! runs one `follow` per container it wants. Both survive daemon restarts and dropped
//! sockets by reconnecting with backoff; `follow` resumes from its [`Cursor`] so that no
//! line is lost or repeated.

mod cursor;
mod discovery;
mod lines;
mod raw_logs;
mod reader;
mod timestamp;
mod tty;

use std::time::Duration;

use bollard::Docker;
use tokio_util::sync::CancellationToken;

pub use cursor::{Cursor, ResumeFilter, STREAM_SKEW_SECS, StreamCursor};
pub use discovery::{ContainerEvent, DockerContainer, announce_listed, inspect, watch_containers};
pub use lines::{Frame, LineAssembler, LogLine, Pushed};
pub use reader::{ReadOptions, follow};
pub use timestamp::{parse_timestamp, split_frame};

/// Seconds before a request that is not a stream gives up.
const REQUEST_TIMEOUT_SECS: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "Docker endpoint {host:?} is not supported: use unix:///path/to/docker.sock or tcp://host:port (--docker-host / DOCKER_HOST)"
    )]
    UnsupportedHost { host: String },
    #[error(
        "cannot use Docker endpoint {host:?}: {source}; check that dockerd runs and --docker-host points at it"
    )]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker request {what} failed{}: {source}", for_container(.container))]
    Request {
        what: &'static str,
        container: Option<String>,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "container {container} no longer exists; whatever it logged and was not read yet is gone with it"
    )]
    ContainerGone { container: String },
    #[error(
        "the logs of container {container} cannot be read through the Docker API: log driver {driver:?}; use json-file, local or journald"
    )]
    LogDriver { container: String, driver: String },
    #[error("dockerd reported an error inside the log stream of container {container}: {message}")]
    InStream { container: String, message: String },
    #[error("Docker's event stream ended; reconnecting")]
    EventsEnded,
    #[error("the receiver of container {container}'s log lines is gone")]
    ReceiverClosed { container: String },
}

fn for_container(c: &Option<String>) -> String {
    c.as_deref()
        .map(|c| format!(" for container {c}"))
        .unwrap_or_default()
}

impl DockerError {
    /// Bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DockerError::UnsupportedHost { .. } => "unsupported_host",
            DockerError::Connect { .. } => "connect",
            DockerError::Request { source, .. } => match source {
                bollard::errors::Error::DockerResponseServerError { .. } => "server",
                bollard::errors::Error::RequestTimeoutError => "timeout",
                _ => "transport",
            },
            DockerError::ContainerGone { .. } => "gone",
            DockerError::LogDriver { .. } => "log_driver",
            DockerError::InStream { .. } => "in_stream",
            DockerError::EventsEnded => "events_ended",
            DockerError::ReceiverClosed { .. } => "receiver_closed",
        }
    }

    /// Retrying cannot help: the container is gone, its logs are unreadable, or the
    /// configuration is wrong.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DockerError::UnsupportedHost { .. }
                | DockerError::Connect { .. }
                | DockerError::ContainerGone { .. }
                | DockerError::LogDriver { .. }
                | DockerError::ReceiverClosed { .. }
        )
    }

    /// Classify a failed request about `container`: 404 means it was removed, 501 that
    /// its log driver cannot be read back; anything else may pass.
    pub(crate) fn request(
        what: &'static str,
        container: &DockerContainer,
        source: bollard::errors::Error,
    ) -> Self {
        match &source {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => DockerError::ContainerGone {
                container: container.display(),
            },
            bollard::errors::Error::DockerResponseServerError {
                status_code: 501, ..
            } => DockerError::LogDriver {
                container: container.display(),
                driver: container.log_driver.clone(),
            },
            _ => DockerError::Request {
                what,
                container: Some(container.display()),
                source,
            },
        }
    }
}

/// A Docker client for `docker_host` (`unix:///path`, a bare socket path, or
/// `tcp://host:port`). No request is made; the API version is agreed on by [`negotiate`],
/// which [`watch_containers`] and [`follow`] call themselves.
pub fn connect(docker_host: &str) -> Result<Docker, DockerError> {
    let version = bollard::API_DEFAULT_VERSION;
    let result = if docker_host.starts_with("unix://") || docker_host.starts_with('/') {
        Docker::connect_with_unix(docker_host, REQUEST_TIMEOUT_SECS, version)
    } else if docker_host.starts_with("tcp://") || docker_host.starts_with("http://") {
        Docker::connect_with_http(docker_host, REQUEST_TIMEOUT_SECS, version)
    } else {
        return Err(DockerError::UnsupportedHost {
            host: docker_host.to_string(),
        });
    };
    result.map_err(|source| DockerError::Connect {
        host: docker_host.to_string(),
        source,
    })
}

/// The socket of a `unix://` (or bare path) Docker endpoint, for [`ReadOptions::unix_socket`].
pub fn unix_socket(docker_host: &str) -> Option<std::path::PathBuf> {
    let path = docker_host
        .strip_prefix("unix://")
        .or(docker_host.starts_with('/').then_some(docker_host))?;
    Some(path.into())
}

/// Lower the client's API version to the daemon's when the daemon is older than bollard
/// (dockerd 20.10 speaks 1.41 and refuses newer clients). Shared by all clones of `docker`.
pub async fn negotiate(docker: &Docker) -> Result<(), DockerError> {
    docker
        .clone()
        .negotiate_version()
        .await
        .map(|_| ())
        .map_err(|source| DockerError::Request {
            what: "version",
            container: None,
            source,
        })
}

/// Exponential backoff with jitter, from 100 ms up to 5 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// Wait for the next delay; false when `shutdown` came first.
    pub(crate) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next.mul_f64(0.8 + fastrand::f64() * 0.4);
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
