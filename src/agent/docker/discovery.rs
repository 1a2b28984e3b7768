//! Which containers run on this host: a list on every (re)connect, then Docker events.
//!
//! Nothing that ran while no one watched is missed: each (re)connect lists *all*
//! containers and announces, besides the running ones, those that exited at or after the
//! point discovery resumes from ([`Resume`]): on the agent's first connect its restart
//! start point, later the last moment it knew about (the list or the last event). The
//! event stream resumes from the same point, so a reconnect after a long backoff replays
//! what happened meanwhile. Announcements may repeat; receivers treat them as idempotent.

use std::collections::{BTreeMap, HashMap, HashSet};

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerSummaryStateEnum, EventMessage};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;
use crate::record::Timestamp;

use super::{Backoff, DockerError, negotiate};

/// Label cri-dockerd (and dockershim) put on pod containers: `container` or `podsandbox`.
pub const LABEL_DOCKER_TYPE: &str = "io.kubernetes.docker.type";

/// How far before the last moment it knew about discovery resumes: covers events stamped
/// a little out of order and the agent's and dockerd's clocks reading differently.
pub const RESUME_MARGIN_SECS: i64 = 2;

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
    /// When its last run ended; `None` while it has never stopped.
    pub finished_at: Option<Timestamp>,
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
            finished_at: state
                .finished_at
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

/// Where discovery resumes after a (re)connect: up to `seen_until` every container that
/// started or exited was announced (by a list, or by an event handled). Pure, for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    seen_until: Timestamp,
}

impl Resume {
    /// Before the first connect: everything since `floor` (the agent's restart start
    /// point) is to be announced.
    pub fn new(floor: Timestamp) -> Self {
        Self { seen_until: floor }
    }

    /// Where the next session subscribes to events from, and the oldest exit it announces.
    pub fn since(&self) -> Timestamp {
        Timestamp {
            secs: self
                .seen_until
                .secs
                .saturating_sub(RESUME_MARGIN_SECS)
                .max(0),
            nanos: if self.seen_until.secs >= RESUME_MARGIN_SECS {
                self.seen_until.nanos
            } else {
                0
            },
        }
    }

    /// A list requested at `at` (before the request) was announced in full.
    pub fn listed(&mut self, at: Timestamp) {
        self.seen_until = self.seen_until.max(at);
    }

    /// An event stamped `at` was handled.
    pub fn event(&mut self, at: Timestamp) {
        self.seen_until = self.seen_until.max(at);
    }
}

/// Whether a listed container is announced: running ones always, stopped ones when they
/// exited at or after `since` (earlier exits were seen by whoever watched then).
pub fn announce_listed(c: &DockerContainer, since: Timestamp) -> bool {
    c.running || c.finished_at.is_some_and(|f| f >= since)
}

/// When Docker says the event happened.
pub fn event_time(event: &EventMessage) -> Option<Timestamp> {
    if let Some(n) = event.time_nano.filter(|n| *n > 0) {
        return Some(Timestamp {
            secs: n.div_euclid(1_000_000_000),
            nanos: u32::try_from(n.rem_euclid(1_000_000_000)).unwrap_or(0),
        });
    }
    event
        .time
        .filter(|t| *t > 0)
        .map(|secs| Timestamp { secs, nanos: 0 })
}

/// Announce running containers, and those that exited at or after `floor`, then follow
/// Docker events until `shutdown` (or until the receiver is dropped). Every (re)connect
/// lists again and resumes events where the last session's knowledge ended; connection
/// failures are retried with backoff and counted in `docker_reconnects`.
pub async fn watch_containers(
    docker: Docker,
    tx: mpsc::Sender<ContainerEvent>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
    floor: Timestamp,
) {
    let mut backoff = Backoff::new();
    let mut resume = Resume::new(floor);
    let mut failed = false;
    loop {
        if failed {
            metrics.docker_reconnects.inc();
        }
        let mut listed = false;
        match session(&docker, &tx, &shutdown, &mut resume, &mut listed).await {
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
/// gone); `listed` tells whether it got as far as announcing the listed containers.
async fn session(
    docker: &Docker,
    tx: &mpsc::Sender<ContainerEvent>,
    shutdown: &CancellationToken,
    resume: &mut Resume,
    listed: &mut bool,
) -> Result<(), DockerError> {
    negotiate(docker).await?;
    // Subscribe before listing, from where the last session's knowledge ends, so that
    // whatever happens before, during or after the list is seen; Docker replays events
    // since then.
    let since = resume.since();
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
        since: Some(since.to_docker_since()),
        until: None,
        filters: Some(filters),
    }));
    let listed_at = Timestamp::now();
    let all = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await
        .map_err(|source| DockerError::Request {
            what: "list containers",
            container: None,
            source,
        })?;
    // Containers this list announced: a replayed start event from before the list adds
    // nothing about them.
    let mut announced = HashSet::new();
    for summary in all {
        let Some(id) = summary.id else { continue };
        if summary.state == Some(ContainerSummaryStateEnum::CREATED) {
            continue; // never started: no log
        }
        let Some(container) = inspect(docker, &id).await? else {
            continue;
        };
        if !announce_listed(&container, since) {
            continue;
        }
        announced.insert(id);
        if !send_running(container, tx).await {
            return Ok(());
        }
    }
    resume.listed(listed_at);
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
        let at = event_time(&event);
        let Some(id) = event.actor.and_then(|a| a.id) else {
            continue;
        };
        let sent = match event.action.as_deref() {
            Some("start") if announced.contains(&id) && at.is_some_and(|t| t < listed_at) => true,
            Some("start") => announce(docker, &id, tx).await?,
            Some("die") => tx.send(ContainerEvent::Stopped { id }).await.is_ok(),
            Some("destroy") => tx.send(ContainerEvent::Removed { id }).await.is_ok(),
            _ => true,
        };
        if !sent {
            return Ok(());
        }
        if let Some(at) = at {
            resume.event(at);
        }
    }
}

/// Inspect and announce a started container; false when the receiver is gone.
async fn announce(
    docker: &Docker,
    id: &str,
    tx: &mpsc::Sender<ContainerEvent>,
) -> Result<bool, DockerError> {
    match inspect(docker, id).await? {
        Some(container) => Ok(send_running(container, tx).await),
        None => Ok(true),
    }
}

/// Announce an inspected container; false when the receiver is gone.
async fn send_running(container: DockerContainer, tx: &mpsc::Sender<ContainerEvent>) -> bool {
    if !container.logs_readable() {
        tracing::warn!(
            container = %container.display(),
            driver = %container.log_driver,
            "container's log driver cannot be read through the Docker API; its logs will not be forwarded (use json-file, local or journald)"
        );
    }
    tx.send(ContainerEvent::Running(container)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64, nanos: u32) -> Timestamp {
        Timestamp { secs, nanos }
    }

    #[test]
    fn a_reconnect_resumes_from_the_last_thing_seen_not_from_now() {
        let mut r = Resume::new(ts(1_000, 5));
        assert_eq!(
            r.since(),
            ts(998, 5),
            "first connect: the agent's floor, less the margin"
        );
        r.listed(ts(2_000, 0));
        r.event(ts(2_010, 7));
        // A replayed event from before does not move the point back.
        r.event(ts(1_500, 0));
        assert_eq!(r.since(), ts(2_008, 7));
        // However long the backoff before the next connect, nothing moves until a list
        // or an event was handled: the gap is replayed.
        assert_eq!(r.since(), ts(2_008, 7));
        r.listed(ts(2_100, 0));
        assert_eq!(r.since(), ts(2_098, 0));
    }

    #[test]
    fn a_floor_at_the_epoch_is_never_negative() {
        assert_eq!(Resume::new(ts(0, 0)).since(), ts(0, 0));
        assert_eq!(Resume::new(ts(1, 500)).since(), ts(0, 0));
    }

    #[test]
    fn stopped_containers_are_announced_when_they_exited_since_the_resume_point() {
        let since = ts(1_000, 0);
        let c = |running, finished: Option<Timestamp>| DockerContainer {
            running,
            finished_at: finished,
            ..DockerContainer::default()
        };
        assert!(announce_listed(&c(true, None), since));
        assert!(
            announce_listed(&c(true, Some(ts(10, 0))), since),
            "restarted"
        );
        assert!(announce_listed(&c(false, Some(ts(1_000, 0))), since));
        assert!(announce_listed(&c(false, Some(ts(5_000, 0))), since));
        assert!(!announce_listed(
            &c(false, Some(ts(999, 999_999_999))),
            since
        ));
        assert!(
            !announce_listed(&c(false, None), since),
            "never ran to an end"
        );
    }

    #[test]
    fn event_time_prefers_nanoseconds() {
        let e = EventMessage {
            time: Some(1_700_000_000),
            time_nano: Some(1_700_000_000_123_456_789),
            ..EventMessage::default()
        };
        assert_eq!(event_time(&e), Some(ts(1_700_000_000, 123_456_789)));
        let e = EventMessage {
            time: Some(1_700_000_000),
            ..EventMessage::default()
        };
        assert_eq!(event_time(&e), Some(ts(1_700_000_000, 0)));
        assert_eq!(event_time(&EventMessage::default()), None);
    }
}
