//! Leader election on a `coordination.k8s.io/v1` Lease, so that two controller replicas
//! never reconcile at once. kube 5 has no helper for it; this follows client-go's
//! leaderelection: acquire or renew with get + create/replace guarded by resourceVersion,
//! judge expiry by how long the record has stood still on *our* clock (never by comparing
//! the holder's timestamps with ours, which would trust both clocks), stop leading when a
//! renewal has not succeeded within the renew deadline, and release the lease on shutdown
//! so a successor need not wait for it to expire.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::{Error, is_conflict};

/// Lease name in the operator namespace.
pub const LEASE_NAME: &str = "logroute-controller";

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease is honoured without renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops leading (shorter than
    /// `lease_duration`, so it stops before anyone else may take over).
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: LEASE_NAME.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Result of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed just now).
    Leader,
    /// Someone else holds a live lease.
    HeldBy(String),
    /// Our write lost a race; try again.
    Conflict,
}

/// What to do with a lease as read. Pure, for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Renew,
    TakeOver,
    Wait,
}

/// `unchanged_for`: how long the lease record has stood still as seen by this replica.
pub fn decide(
    spec: &LeaseSpec,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    if holder.is_empty() || unchanged_for >= duration {
        Decision::TakeOver
    } else {
        Decision::Wait
    }
}

/// The part of a lease whose change proves its holder alive.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The record last seen and when (our clock) it was first seen like that.
    observed: Option<(Record, Instant)>,
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn object(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.name)
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One acquire-or-renew attempt.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, Error> {
        let now = MicroTime(Timestamp::now());
        let existing = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(Error::api("read Lease", self.object()))?;
        let Some(lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Leader)
                }
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(Error::api("create Lease", self.object())(e)),
            };
        };

        let unchanged_for = self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let mut next = spec.clone();
        match decide(
            &spec,
            &self.settings.identity,
            unchanged_for,
            self.settings.lease_duration,
        ) {
            Decision::Wait => return Ok(Attempt::HeldBy(spec.holder_identity.unwrap_or_default())),
            Decision::Renew => {}
            Decision::TakeOver => {
                next.acquire_time = Some(now.clone());
                next.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        next.holder_identity = Some(self.settings.identity.clone());
        next.lease_duration_seconds = Some(self.duration_seconds());
        next.renew_time = Some(now);
        self.replace(lease, next).await
    }

    /// Give the lease up (on shutdown) so a standby replica takes over at once.
    pub async fn release(&mut self) -> Result<(), Error> {
        let Some(lease) = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(Error::api("read Lease", self.object()))?
        else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        let next = LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..spec
        };
        match self.replace(lease, next).await? {
            Attempt::Leader => {
                info!(lease = %self.object(), "released the leader lease");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn replace(&mut self, mut lease: Lease, spec: LeaseSpec) -> Result<Attempt, Error> {
        lease.spec = Some(spec);
        lease.metadata.managed_fields = None;
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(Attempt::Leader)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(Error::api("update Lease", self.object())(e)),
        }
    }

    /// Note the lease as read; returns how long it has looked like this.
    fn observe(&mut self, lease: &Lease) -> Duration {
        let spec = lease.spec.as_ref();
        let record = Record {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.clone()),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let now = Instant::now();
        match &self.observed {
            Some((seen, since)) if *seen == record => now.duration_since(*since),
            _ => {
                self.observed = Some((record, now));
                Duration::ZERO
            }
        }
    }
}

/// Why a leading phase ended.
enum Leading {
    /// SIGTERM/SIGINT: stop gracefully while the lease is still ours, then release it.
    Shutdown,
    /// `lead` returned (or panicked) by itself.
    Finished(Result<Result<(), Error>, tokio::task::JoinError>),
    /// Another replica holds the lease: stop at once.
    Lost(String),
    /// No renewal succeeded within the renew deadline: stop before the lease can expire.
    Expired,
}

/// Run `lead` while this replica holds the lease, until `shutdown`. `lead` gets a token
/// that is cancelled when leadership ends or shutdown begins; it must then stop. After
/// a loss this replica goes back to standby and contends again. `on_standby` is called
/// once per standby phase, after its first attempt that did not win the lease. On shutdown the lease is
/// released once `lead` has stopped.
///
/// The lease may pass to another replica `lease_duration` after our last successful
/// renewal (measured from when that renewal was sent — conservative, as observers start
/// their clocks later). So, as in client-go, the whole renew loop is bounded by
/// `renew_deadline` from the last success: each attempt gets only what is left of it.
/// Once it is spent, `lead` is cancelled and given half of the remaining margin
/// (`lease_duration - renew_deadline`) to stop; then its task is aborted, so no reconcile
/// or sweep of ours runs once another replica may lead. When another replica already holds
/// the lease, the task is aborted at once.
pub async fn run_elected<F, Fut>(
    mut elector: LeaderElector,
    shutdown: CancellationToken,
    on_standby: impl Fn(),
    mut lead: F,
) -> Result<(), Error>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let settings = elector.settings().clone();
    let (retry, deadline) = (settings.retry_period, settings.renew_deadline);
    let stop_margin = settings.lease_duration.saturating_sub(deadline) / 2;
    loop {
        // Standby: contend until we lead or shut down.
        let mut standby_announced = false;
        let mut renewed = loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let sent = Instant::now();
            match tokio::time::timeout(deadline, elector.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leader)) => break sent,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot acquire the leader lease; retrying"),
                Err(_) => warn!("acquiring the leader lease timed out; retrying"),
            }
            // After the first attempt, not before it: a replica that wins at once is
            // never reported as a ready standby only to turn unready as a new leader.
            if !standby_announced {
                on_standby();
                standby_announced = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(retry) => {}
            }
        };

        info!(identity = %settings.identity, "became leader; starting the controller");
        let stop = shutdown.child_token();
        let mut task = tokio::spawn(lead(stop.clone()));
        let ended = loop {
            let left = renew_time_left(renewed, deadline, Instant::now());
            tokio::select! {
                _ = shutdown.cancelled() => break Leading::Shutdown,
                ended = &mut task => break Leading::Finished(ended),
                _ = tokio::time::sleep(retry.min(left)) => {}
            }
            let sent = Instant::now();
            let left = renew_time_left(renewed, deadline, sent);
            if left.is_zero() {
                break Leading::Expired;
            }
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => break Leading::Shutdown,
                attempt = tokio::time::timeout(left, elector.try_acquire_or_renew()) => attempt,
            };
            match attempt {
                Ok(Ok(Attempt::Leader)) => renewed = sent,
                Ok(Ok(Attempt::HeldBy(holder))) => break Leading::Lost(holder),
                Ok(Ok(Attempt::Conflict)) => {
                    warn!("renewing the leader lease conflicted; retrying")
                }
                Ok(Err(e)) => warn!(error = %e, "cannot renew the leader lease; retrying"),
                Err(_) => warn!("renewing the leader lease timed out"),
            }
        };
        stop.cancel();
        let stop_by = match &ended {
            Leading::Finished(_) => None,
            Leading::Lost(holder) => {
                warn!(%holder, "another replica holds the leader lease; stopping the controller now");
                Some(Instant::now())
            }
            Leading::Expired => {
                warn!(
                    ?deadline,
                    "leader lease not renewed within the renew deadline; stopping the controller before the lease can expire"
                );
                Some(renewed + deadline + stop_margin)
            }
            Leading::Shutdown => Some(renewed + deadline + stop_margin),
        };
        let stopped_by_us = stop_by.is_some();
        let result = match (ended, stop_by) {
            (Leading::Finished(result), _) => result,
            (_, stop_by) => stop_in_time(&mut task, stop_by.unwrap_or_else(Instant::now)).await,
        };
        let failure = match result {
            Ok(Ok(())) if stopped_by_us => None,
            Ok(Ok(())) => Some("the controller stopped by itself".to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            // Aborted by `stop_in_time`.
            Err(join) if stopped_by_us && join.is_cancelled() => None,
            Err(join) => Some(format!("the controller task failed: {join}")),
        };
        if shutdown.is_cancelled() || failure.is_some() {
            match tokio::time::timeout(deadline, elector.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot release the leader lease; a successor waits for it to expire")
                }
                Err(_) => {
                    warn!(
                        "releasing the leader lease timed out; a successor waits for it to expire"
                    )
                }
            }
            return match failure {
                Some(reason) => Err(Error::LeaderStopped(reason)),
                None => Ok(()),
            };
        }
        info!("lost leadership; back to standby");
    }
}

/// What is left of the renew deadline counted from the last successful renewal (pure).
pub fn renew_time_left(renewed: Instant, deadline: Duration, now: Instant) -> Duration {
    deadline.saturating_sub(now.saturating_duration_since(renewed))
}

/// Wait for the cancelled `task` until `stop_by`, then abort it.
async fn stop_in_time<T>(
    task: &mut tokio::task::JoinHandle<T>,
    stop_by: Instant,
) -> Result<T, tokio::task::JoinError> {
    match tokio::time::timeout_at(stop_by, &mut *task).await {
        Ok(result) => result,
        Err(_) => {
            warn!(
                "the controller did not stop in time; aborting it so that it cannot act without the lease"
            );
            task.abort();
            task.await
        }
    }
}

#[cfg(test)]
mod tests;
