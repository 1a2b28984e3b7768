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

/// Run `lead` while this replica holds the lease, until `shutdown`. `lead` gets a token
/// that is cancelled when leadership is lost or shutdown begins; it must then stop. After
/// a loss this replica goes back to standby and contends again. On shutdown the lease is
/// released once `lead` has stopped.
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
    let retry = elector.settings().retry_period;
    let deadline = elector.settings().renew_deadline;
    loop {
        on_standby();
        // Standby: contend until we lead or shut down.
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match tokio::time::timeout(deadline, elector.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leader)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot acquire the leader lease; retrying"),
                Err(_) => warn!("acquiring the leader lease timed out; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(retry) => {}
            }
        }

        info!(identity = %elector.settings().identity, "became leader; starting the controller");
        let stop = shutdown.child_token();
        let mut task = tokio::spawn(lead(stop.clone()));
        let mut renewed = Instant::now();
        let ended_by_itself = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                ended = &mut task => break Some(ended),
                _ = tokio::time::sleep(retry) => {}
            }
            let attempt = tokio::time::timeout(deadline, elector.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(Attempt::Leader)) => {
                    renewed = Instant::now();
                    continue;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    warn!(%holder, "another replica holds the leader lease; stopping the controller");
                    break None;
                }
                Ok(Ok(Attempt::Conflict)) => {
                    warn!("renewing the leader lease conflicted; retrying")
                }
                Ok(Err(e)) => warn!(error = %e, "cannot renew the leader lease; retrying"),
                Err(_) => warn!("renewing the leader lease timed out"),
            }
            if renewed.elapsed() >= deadline {
                warn!(
                    ?deadline,
                    "leader lease not renewed within the renew deadline; stopping the controller"
                );
                break None;
            }
        };
        stop.cancel();
        let stopped_by_us = ended_by_itself.is_none();
        let ended = match ended_by_itself {
            Some(ended) => ended,
            None => task.await,
        };
        let failure = match ended {
            Ok(Ok(())) if stopped_by_us => None,
            Ok(Ok(())) => Some("the controller stopped by itself".to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(join) => Some(format!("the controller task failed: {join}")),
        };
        if shutdown.is_cancelled() || failure.is_some() {
            if let Err(e) = elector.release().await {
                warn!(error = %e, "cannot release the leader lease; a successor waits for it to expire");
            }
            return match failure {
                Some(reason) => Err(Error::LeaderStopped(reason)),
                None => Ok(()),
            };
        }
        info!("lost leadership; back to standby");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controller::fixtures::{Call, OP_NS, context};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/logroute-system/leases";

    fn lease_path() -> String {
        format!("{LEASES}/{LEASE_NAME}")
    }

    fn lease(holder: &str, resource_version: &str, duration: i32) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": LEASE_NAME, "namespace": OP_NS, "resourceVersion": resource_version},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                        "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 3}})
    }

    fn spec(holder: Option<&str>, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_holder_is_respected_until_it_stands_still_for_its_duration() {
        let d = Duration::from_secs(15);
        assert_eq!(
            decide(&spec(Some("me"), 15), "me", Duration::ZERO, d),
            Decision::Renew
        );
        assert_eq!(
            decide(&spec(Some("other"), 15), "me", Duration::from_secs(14), d),
            Decision::Wait
        );
        assert_eq!(
            decide(&spec(Some("other"), 15), "me", Duration::from_secs(15), d),
            Decision::TakeOver
        );
        assert_eq!(
            decide(&spec(None, 15), "me", Duration::ZERO, d),
            Decision::TakeOver,
            "released"
        );
        assert_eq!(
            decide(&spec(Some(""), 15), "me", Duration::ZERO, d),
            Decision::TakeOver,
            "released"
        );
        let no_duration = LeaseSpec {
            holder_identity: Some("other".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(
            decide(&no_duration, "me", Duration::from_secs(10), d),
            Decision::Wait,
            "default duration"
        );
    }

    #[tokio::test]
    async fn acquire_renew_respect_conflict_and_release() {
        let (ctx, mut api, _) = context(&[]);
        let mut elector =
            LeaderElector::new(ctx.client.clone(), LeaseSettings::new(OP_NS, "pod-a"));

        let calls = vec![
            Call::get(lease_path()).not_found(),
            Call::post(LEASES).body(|l| {
                assert_eq!(l["spec"]["holderIdentity"], "pod-a", "{l}");
                assert_eq!(l["spec"]["leaseDurationSeconds"], 15, "{l}");
                assert_eq!(l["spec"]["leaseTransitions"], 0, "{l}");
            }),
        ];
        assert_eq!(
            api.run(calls, elector.try_acquire_or_renew())
                .await
                .expect("acquire"),
            Attempt::Leader
        );

        let calls = vec![
            Call::get(lease_path()).reply(200, lease("pod-a", "2", 15)),
            Call::put(lease_path()).body(|l| {
                assert_eq!(
                    l["metadata"]["resourceVersion"], "2",
                    "a renewal is guarded by resourceVersion: {l}"
                );
                assert_eq!(l["spec"]["holderIdentity"], "pod-a");
                assert_eq!(
                    l["spec"]["leaseTransitions"], 3,
                    "a renewal is no transition"
                );
                assert_ne!(
                    l["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z",
                    "renewTime moves"
                );
            }),
        ];
        assert_eq!(
            api.run(calls, elector.try_acquire_or_renew())
                .await
                .expect("renew"),
            Attempt::Leader
        );

        let calls = vec![Call::get(lease_path()).reply(200, lease("pod-b", "3", 15))];
        assert_eq!(
            api.run(calls, elector.try_acquire_or_renew())
                .await
                .expect("read"),
            Attempt::HeldBy("pod-b".into())
        );

        let calls = vec![
            Call::get(lease_path()).reply(200, lease("pod-a", "4", 15)),
            Call::put(lease_path()).conflict(),
        ];
        assert_eq!(
            api.run(calls, elector.try_acquire_or_renew())
                .await
                .expect("race"),
            Attempt::Conflict
        );

        let calls = vec![
            Call::get(lease_path()).reply(200, lease("pod-a", "5", 15)),
            Call::put(lease_path()).body(|l| {
                assert!(
                    l["spec"].get("holderIdentity").is_none(),
                    "released lease has no holder: {l}"
                );
                assert_eq!(l["spec"]["leaseDurationSeconds"], 1);
            }),
        ];
        api.run(calls, elector.release()).await.expect("release");

        // Releasing a lease someone else holds changes nothing.
        let calls = vec![Call::get(lease_path()).reply(200, lease("pod-b", "6", 15))];
        api.run(calls, elector.release())
            .await
            .expect("release of a foreign lease");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_as_a_new_transition() {
        let (ctx, mut api, _) = context(&[]);
        let mut elector =
            LeaderElector::new(ctx.client.clone(), LeaseSettings::new(OP_NS, "pod-a"));
        let calls = vec![
            Call::get(lease_path()).reply(200, lease("pod-b", "9", 0)),
            Call::put(lease_path()).body(|l| {
                assert_eq!(l["spec"]["holderIdentity"], "pod-a");
                assert_eq!(l["spec"]["leaseTransitions"], 4, "{l}");
                assert!(l["spec"]["acquireTime"].is_string(), "{l}");
            }),
        ];
        assert_eq!(
            api.run(calls, elector.try_acquire_or_renew())
                .await
                .expect("take over"),
            Attempt::Leader
        );
    }
}
