//! Which containers run on this host: a list on every (re)connect, then Docker events.

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;
use crate::record::Timestamp;

use super::{Backoff, DockerError, negotiate};

/// Label cri-dockerd (and dockershim) put on pod containers: `container` or `podsandbox`.
pub const LABEL_DOCKER_TYPE: &str = "io.kubernetes.docker.type";

/// Log drivers whose logs dockerd can give back through the API.
const READABLE_LOG_DRIVERS: &[&str] = &["json-file", "local", "journald"];

/// What the agent knows about a container from `docker inspect`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DockerContainer {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// The image as the container was created with it (`Config.Image`).
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Started with a TTY: its output is one unmultiplexed stream (read as stdout).
    pub tty: bool,
    /// Has env `LOGSPOUT=ignore`: its logs are never forwarded.
    pub logspout_ignore: bool,
    /// `HostConfig.LogConfig.Type`, e.g. `json-file`.
    pub log_driver: String,
    /// A pod's sandbox ("pause") container: carries the pod's labels, logs nothing useful.
    pub cri_sandbox: bool,
    /// When the container was (last) started.
    pub started_at: Option<Timestamp>,
    pub running: bool,
}

impl DockerContainer {
    /// Whether dockerd can give its logs back (json-file, local, journald).
    pub fn logs_readable(&self) -> bool {
        READABLE_LOG_DRIVERS.contains(&self.log_driver.as_str())
    }

    /// `name (short id)` for messages.
    pub fn display(&self) -> String {
        format!("{} ({})", self.name, &self.id[..self.id.len().min(12)])
    }

    /// Build from an inspect answer; fields Docker leaves out are empty.
    pub fn from_inspect(c: ContainerInspectResponse) -> Self {
        let config = c.config.unwrap_or_default();
        let labels: BTreeMap<String, String> =
            config.labels.unwrap_or_default().into_iter().collect();
        let state = c.state.unwrap_or_default();
        DockerContainer {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            tty: config.tty.unwrap_or(false),
            logspout_ignore: config
                .env
                .unwrap_or_default()
                .iter()
                .any(|e| e == "LOGSPOUT=ignore"),
            log_driver: c
                .host_config
                .and_then(|h| h.log_config)
                .and_then(|l| l.typ)
                .unwrap_or_default(),
            cri_sandbox: labels
                .get(LABEL_DOCKER_TYPE)
                .is_some_and(|t| t == "podsandbox"),
            labels,
            started_at: state
                .started_at
                .as_deref()
                .and_then(|s| super::parse_timestamp(s.as_bytes()))
                .filter(|t| t.secs > 0),
            running: state.running.unwrap_or(false),
        }
    }
}

/// What discovery tells the pipeline. `Running` is repeated for every running container
/// after each reconnect: receivers must treat it as "make sure this one is followed".
#[derive(Clone, Debug, PartialEq)]
pub enum ContainerEvent {
    /// Started (or found running). A short-lived container may have exited already by
    /// the time it is inspected (`running` is then false): follow it all the same, its
    /// log is complete. Sent for every container, also for those whose log driver cannot
    /// be read (see [`DockerContainer::logs_readable`]) and for pod sandboxes, which
    /// carry the pod's labels.
    Running(DockerContainer),
    /// The container exited (its log may still have unread lines).
    Stopped { id: String },
    /// The container and its log are gone.
    Removed { id: String },
}

/// Inspect one container; `None` when it does not exist.
pub async fn inspect(docker: &Docker, id: &str) -> Result<Option<DockerContainer>, DockerError> {
    match docker.inspect_container(id, None).await {
        Ok(c) => Ok(Some(DockerContainer::from_inspect(c))),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(DockerError::Request {
            what: "inspect",
            container: Some(id.to_string()),
            source,
        }),
    }
}

/// Announce running containers and follow Docker events until `shutdown` (or until the
/// receiver is dropped). On every (re)connect all running containers are announced
/// again; connection failures are retried with backoff and counted in
/// `docker_reconnects`.
pub async fn watch_containers(
    docker: Docker,
    tx: mpsc::Sender<ContainerEvent>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let mut failed = false;
    loop {
        if failed {
            metrics.docker_reconnects.inc();
        }
        let mut listed = false;
        match session(&docker, &tx, &shutdown, &mut listed).await {
            Ok(()) => return,
            Err(e) => {
                if shutdown.is_cancelled() {
                    return;
                }
                tracing::warn!(error = %e, reason = e.reason(), "watching Docker containers failed; reconnecting");
            }
        }
        if listed {
            backoff.reset();
        }
        failed = true;
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// One connection's worth of discovery. `Ok` means stop for good (shutdown or receiver
/// gone); `listed` tells whether it got as far as announcing the running containers.
async fn session(
    docker: &Docker,
    tx: &mpsc::Sender<ContainerEvent>,
    shutdown: &CancellationToken,
    listed: &mut bool,
) -> Result<(), DockerError> {
    negotiate(docker).await?;
    // Subscribe from a little before the list, so that a container started in between is
    // announced by its event; Docker replays events since then.
    let now = chrono::Utc::now() - chrono::Duration::seconds(2);
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "event".to_string(),
            vec![
                "start".to_string(),
                "die".to_string(),
                "destroy".to_string(),
            ],
        ),
    ]);
    let mut events = docker.events(Some(EventsOptions {
        since: Some(format!(
            "{}.{:09}",
            now.timestamp(),
            now.timestamp_subsec_nanos()
        )),
        until: None,
        filters: Some(filters),
    }));
    let running = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .map_err(|source| DockerError::Request {
            what: "list containers",
            container: None,
            source,
        })?;
    for summary in running {
        let Some(id) = summary.id else { continue };
        if !announce(docker, &id, tx).await? {
            return Ok(());
        }
    }
    *listed = true;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            event = events.next() => event,
        };
        let event = match event {
            None => return Err(DockerError::EventsEnded),
            Some(Err(source)) => {
                return Err(DockerError::Request {
                    what: "events",
                    container: None,
                    source,
                });
            }
            Some(Ok(event)) => event,
        };
        let Some(id) = event.actor.and_then(|a| a.id) else {
            continue;
        };
        let sent = match event.action.as_deref() {
            Some("start") => announce(docker, &id, tx).await?,
            Some("die") => tx.send(ContainerEvent::Stopped { id }).await.is_ok(),
            Some("destroy") => tx.send(ContainerEvent::Removed { id }).await.is_ok(),
            _ => true,
        };
        if !sent {
            return Ok(());
        }
    }
}

/// Inspect and announce a started container; false when the receiver is gone.
async fn announce(
    docker: &Docker,
    id: &str,
    tx: &mpsc::Sender<ContainerEvent>,
) -> Result<bool, DockerError> {
    let Some(container) = inspect(docker, id).await? else {
        return Ok(true);
    };
    if !container.logs_readable() {
        tracing::warn!(
            container = %container.display(),
            driver = %container.log_driver,
            "container's log driver cannot be read through the Docker API; its logs will not be forwarded (use json-file, local or journald)"
        );
    }
    Ok(tx.send(ContainerEvent::Running(container)).await.is_ok())
}
