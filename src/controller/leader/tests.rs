//! Leader election against the scripted API server.

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
    let mut elector = LeaderElector::new(ctx.client.clone(), LeaseSettings::new(OP_NS, "pod-a"));

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
    let mut elector = LeaderElector::new(ctx.client.clone(), LeaseSettings::new(OP_NS, "pod-a"));
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

/// Settings with client-go's default timings.
fn settings() -> LeaseSettings {
    LeaseSettings::new(OP_NS, "pod-a")
}

/// What a test sees of the `lead` task: when its token was cancelled and when the task
/// was dropped (stopped or aborted).
struct LeadProbe {
    cancelled: tokio::sync::oneshot::Receiver<Instant>,
    dropped: tokio::sync::oneshot::Receiver<Instant>,
}

struct SendOnDrop(Option<tokio::sync::oneshot::Sender<Instant>>);

impl Drop for SendOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Instant::now());
        }
    }
}

/// Start `run_elected` with a `lead` that, once, notes when it is cancelled and when it
/// is dropped. `obey`: whether it stops when cancelled (else it must be aborted).
fn start(
    elector: LeaderElector,
    shutdown: CancellationToken,
    obey: bool,
) -> (
    tokio::task::JoinHandle<Result<(), Error>>,
    LeadProbe,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (cancel_tx, cancelled) = tokio::sync::oneshot::channel();
    let (drop_tx, dropped) = tokio::sync::oneshot::channel();
    let mut probes = Some((cancel_tx, drop_tx));
    let standby = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let standby_count = standby.clone();
    let task = tokio::spawn(run_elected(
        elector,
        shutdown,
        move || {
            standby_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
        move |stop: CancellationToken| {
            let probe = probes.take();
            async move {
                let Some((cancel_tx, drop_tx)) = probe else {
                    return Ok(());
                };
                let _dropped = SendOnDrop(Some(drop_tx));
                stop.cancelled().await;
                let _ = cancel_tx.send(Instant::now());
                if !obey {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        },
    ));
    (task, LeadProbe { cancelled, dropped }, standby)
}

/// `fut`, or a failure naming `what` when it has not happened within a minute (of the
/// paused clock, which runs ahead whenever every task waits).
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("expected {what} within 60 s; it did not happen"))
}

/// Acquire (no Lease yet) at the current instant.
async fn acquire(api: &mut crate::controller::fixtures::ApiServer) {
    api.serve(Call::get(lease_path()).not_found()).await;
    api.serve(Call::post(LEASES)).await;
}

/// One successful renewal.
async fn renew(api: &mut crate::controller::fixtures::ApiServer, resource_version: &str) {
    api.serve(Call::get(lease_path()).reply(200, lease("pod-a", resource_version, 15)))
        .await;
    api.serve(Call::put(lease_path())).await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_renewal_stops_the_leader_within_the_renew_deadline_of_the_last_success() {
    let (ctx, mut api, _) = context(&[]);
    let s = settings();
    let elector = LeaderElector::new(ctx.client.clone(), s.clone());
    let shutdown = CancellationToken::new();
    let (task, probe, standby) = start(elector, shutdown.clone(), true);

    acquire(&mut api).await;
    renew(&mut api, "2").await;
    let last_success = Instant::now();
    // The next renewal's GET is sent and never answered.
    let _hung = api.hang(Call::get(lease_path())).await;
    let cancelled = within("the lead token cancelled", probe.cancelled)
        .await
        .expect("lead token cancelled");
    let after = cancelled.duration_since(last_success);
    assert!(
        after <= s.renew_deadline,
        "the leader stopped {after:?} after its last successful renewal; it must stop within the renew deadline ({:?})",
        s.renew_deadline
    );
    assert!(
        after + s.retry_period >= s.renew_deadline,
        "stopped after {after:?}: too early, renewal was still possible"
    );
    within("the lead task to end", probe.dropped)
        .await
        .expect("lead task ended");

    // Back to standby: it contends again and finds the lease taken.
    assert_eq!(
        standby.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a replica that won the lease at once was never a standby"
    );
    api.serve(Call::get(lease_path()).reply(200, lease("pod-b", "3", 15)))
        .await;
    within("on_standby after the loss", async {
        while standby.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    shutdown.cancel();
    within("run_elected to return", task)
        .await
        .expect("join")
        .expect("a lost lease is no failure");
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_ignores_cancellation_is_aborted_before_its_lease_can_expire() {
    let (ctx, mut api, _) = context(&[]);
    let s = settings();
    let elector = LeaderElector::new(ctx.client.clone(), s.clone());
    let shutdown = CancellationToken::new();
    let (task, probe, _) = start(elector, shutdown.clone(), false);

    acquire(&mut api).await;
    let last_success = Instant::now();
    let _hung = api.hang(Call::get(lease_path())).await;
    let dropped = within("the stuck lead task to be dropped", probe.dropped)
        .await
        .expect("lead task dropped");
    let cancelled = probe.cancelled.await.expect("token cancelled first");
    let after = dropped.duration_since(last_success);
    assert!(
        dropped >= cancelled && after < s.lease_duration,
        "the stuck leader was dropped {after:?} after its last renewal; the lease ({:?}) may pass to another replica then",
        s.lease_duration
    );

    api.serve(Call::get(lease_path()).reply(200, lease("pod-b", "3", 15)))
        .await;
    shutdown.cancel();
    within("run_elected to return", task)
        .await
        .expect("join")
        .expect("an aborted stuck leader is no failure");
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_by_another_replica_stops_the_leader_at_once() {
    let (ctx, mut api, _) = context(&[]);
    let elector = LeaderElector::new(ctx.client.clone(), settings());
    let shutdown = CancellationToken::new();
    let (task, probe, _) = start(elector, shutdown.clone(), false);

    acquire(&mut api).await;
    api.serve(Call::get(lease_path()).reply(200, lease("pod-b", "7", 15)))
        .await;
    let seen = Instant::now();
    let dropped = within("the stuck lead task to be dropped", probe.dropped)
        .await
        .expect("lead task dropped");
    let late = dropped.duration_since(seen);
    assert!(
        late < Duration::from_millis(100),
        "a leader whose lease another replica holds ran on for {late:?}"
    );
    shutdown.cancel();
    // Standby after the loss: it may be sleeping or asking; either way it ends.
    drop(api);
    within("run_elected to return", task)
        .await
        .expect("join")
        .expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_leader_then_releases_the_lease() {
    let (ctx, mut api, _) = context(&[]);
    let elector = LeaderElector::new(ctx.client.clone(), settings());
    let shutdown = CancellationToken::new();
    let (task, probe, _) = start(elector, shutdown.clone(), true);

    acquire(&mut api).await;
    shutdown.cancel();
    within("the lead task to stop", probe.dropped)
        .await
        .expect("lead stopped");
    api.serve(Call::get(lease_path()).reply(200, lease("pod-a", "2", 15)))
        .await;
    api.serve(Call::put(lease_path()).body(|l| {
        assert!(l["spec"].get("holderIdentity").is_none(), "released: {l}");
    }))
    .await;
    within("run_elected to return", task)
        .await
        .expect("join")
        .expect("clean shutdown");
}
