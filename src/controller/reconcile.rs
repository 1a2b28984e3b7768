//! Reconcile one LogRoute: compile it, publish (or withdraw) its compiled objects, report
//! the outcome in its status and Events; on deletion, remove what it published.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta};
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::context::Context;
use super::error::Error;
use super::index::RouteKey;
use super::objects::{self, Source};
use super::secrets::{self, Recording};
use super::status::{self, NOTE_MAX, Outcome};
use super::{Guarded, RouteMetaApi};
use crate::api::{FINALIZER, LogRoute, LogRouteStatus};
use crate::route::{CompileEnv, Compiled, Problem, compile_with_policy, compiled_object_name};

/// Re-read every route this often even without a change, in case a watch event was lost.
/// A spec that is invalid is not retried faster: it changes only when someone edits it or
/// a Secret or namespace it depends on changes, and those re-trigger it at once.
pub const RESYNC: Duration = Duration::from_secs(15 * 60);

/// `reconciliations_total{result}` values.
mod result {
    pub const READY: &str = "ready";
    pub const INVALID: &str = "invalid";
    pub const ERROR: &str = "error";
    pub const DELETED: &str = "deleted";
}

pub fn route_key(meta: &ObjectMeta) -> Result<RouteKey, Error> {
    match (&meta.namespace, &meta.name) {
        (Some(ns), Some(name)) => Ok(RouteKey::new(ns, name)),
        _ => Err(Error::Unnamed(format!(
            "{:?}/{:?}",
            meta.namespace, meta.name
        ))),
    }
}

/// The Controller's reconcile function.
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values::<&str>(&[])
        .start_timer();
    let key = route_key(obj.meta())?;
    let api: RouteMetaApi = Api::namespaced(ctx.client.clone(), &key.namespace);
    let meta: Arc<PartialObjectMeta<LogRoute>> =
        Arc::new(obj.meta().clone().into_response_partial());
    let (obj_ref, key_ref, ctx_ref) = (&obj, &key, &ctx);
    let outcome = finalizer(&api, FINALIZER, meta, move |event| async move {
        match event {
            FinalizerEvent::Apply(_) => apply(obj_ref, key_ref, ctx_ref).await,
            FinalizerEvent::Cleanup(_) => cleanup(key_ref, ctx_ref).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer {
        route: key.to_string(),
        source: Box::new(e),
    });
    timer.observe_duration();
    if outcome.is_ok() {
        ctx.reset_failures(&key);
    }
    outcome
}

/// The Controller's error policy: retry the object with exponential backoff (5 s doubling
/// to 5 min, plus up to 10 % jitter so that many failing routes do not retry in step).
pub fn error_policy(obj: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconciliations
        .with_label_values(&[result::ERROR])
        .inc();
    let Ok(key) = route_key(obj.meta()) else {
        return Action::requeue(super::context::backoff(u32::MAX));
    };
    let delay = ctx.next_retry(&key);
    let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 10));
    warn!(route = %key, error = %error, kind = error.kind(), retry_in = ?delay + jitter, "reconcile failed");
    Action::requeue(delay + jitter)
}

async fn apply(obj: &Guarded, key: &RouteKey, ctx: &Context) -> Result<Action, Error> {
    match &obj.0 {
        Ok(route) => apply_route(route, key, ctx).await,
        Err(invalid) => apply_malformed(obj, &invalid.error, key, ctx).await,
    }
}

async fn apply_route(route: &LogRoute, key: &RouteKey, ctx: &Context) -> Result<Action, Error> {
    let namespaces = ctx.namespace_list().await?;
    let namespace_selector = route.spec.selector.namespace_selector.is_some();

    // First pass: learn which Secrets the spec refers to.
    let recording = Recording::default();
    let first = {
        let env = CompileEnv {
            operator_namespace: &ctx.operator_namespace,
            namespaces: Some(&namespaces),
            secrets: Some(&recording),
        };
        compile_with_policy(route, &env, &ctx.policy)
    };
    let refs: BTreeSet<(String, String)> = recording.into_refs();
    // Index before reading, so a Secret created from now on re-triggers this route.
    // A policy with namespace selectors makes every route depend on namespace labels.
    let label_dependent = namespace_selector || ctx.policy.uses_namespace_labels();
    ctx.index().set_refs(key, refs.clone(), label_dependent);

    let compiled = if refs.is_empty() {
        first
    } else {
        let fetched = secrets::fetch(&ctx.client, &key.namespace, &refs).await?;
        let env = CompileEnv {
            operator_namespace: &ctx.operator_namespace,
            namespaces: Some(&namespaces),
            secrets: Some(&fetched),
        };
        compile_with_policy(route, &env, &ctx.policy)
    };

    let object_name = compiled_object_name(&key.namespace, &key.name);
    let source = Source {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        uid: route.uid(),
    };
    let all_namespaces: Vec<String> = namespaces.into_iter().map(|(name, _)| name).collect();
    match compiled {
        Ok(compiled) => {
            publish(&source, key, &object_name, &compiled, ctx).await?;
            let outcome = Outcome::Ready {
                compiled: &compiled,
                namespace_selector,
                all_namespaces: &all_namespaces,
            };
            report(route, key, &outcome, ctx).await?;
            finish(key, true, result::READY, ctx);
            Ok(Action::requeue(RESYNC))
        }
        Err(problems) => {
            withdraw(key, &object_name, ctx).await?;
            report(route, key, &Outcome::Invalid(&problems), ctx).await?;
            log_problems(key, &problems);
            finish(key, false, result::INVALID, ctx);
            Ok(Action::requeue(RESYNC))
        }
    }
}

/// Write the compiled objects. The credentials Secret goes first when there is one and
/// is removed last when there no longer is, so an agent never reads a document naming a
/// Secret that does not exist yet.
async fn publish(
    source: &Source,
    key: &RouteKey,
    object_name: &str,
    compiled: &Compiled,
    ctx: &Context,
) -> Result<(), Error> {
    let op_ns = &ctx.operator_namespace;
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), op_ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), op_ns);
    if !compiled.credentials.is_empty() {
        objects::apply_secret(
            &secrets,
            &objects::credentials_secret(source, object_name, op_ns, compiled),
        )
        .await?;
        ctx.index().set_secret(key, true);
    }
    objects::apply_config_map(
        &config_maps,
        &objects::config_map(source, object_name, op_ns, compiled),
    )
    .await?;
    ctx.index().set_config_map(key, true);
    if compiled.credentials.is_empty() && ctx.index().secret(key) != Some(false) {
        objects::delete(&secrets, object_name, "delete Secret").await?;
        ctx.index().set_secret(key, false);
    }
    Ok(())
}

/// Remove the compiled objects of a route that may no longer forward (it turned invalid),
/// unless this controller already knows they are gone.
async fn withdraw(key: &RouteKey, object_name: &str, ctx: &Context) -> Result<(), Error> {
    if ctx.index().config_map(key) != Some(false) {
        let config_maps: Api<ConfigMap> =
            Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
        objects::delete(&config_maps, object_name, "delete ConfigMap").await?;
        ctx.index().set_config_map(key, false);
    }
    if ctx.index().secret(key) != Some(false) {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
        objects::delete(&secrets, object_name, "delete Secret").await?;
        ctx.index().set_secret(key, false);
    }
    Ok(())
}

/// Write the status when it changed, and record an Event for the change.
async fn report(
    route: &LogRoute,
    key: &RouteKey,
    outcome: &Outcome<'_>,
    ctx: &Context,
) -> Result<(), Error> {
    let previous = route.status.as_ref();
    let desired = status::desired(previous, route.metadata.generation, outcome);
    if previous == Some(&desired) {
        debug!(route = %key, "status unchanged");
        return Ok(());
    }
    let api: RouteMetaApi = Api::namespaced(ctx.client.clone(), &key.namespace);
    status::patch(&api, &key.name, &desired).await?;
    publish_event(route.object_ref(&()), &desired, ctx).await;
    Ok(())
}

/// An object the API holds but that does not read as a LogRoute (e.g. written before a CRD
/// schema change). It is reported and withdrawn; other routes are not affected.
async fn apply_malformed(
    obj: &Guarded,
    error: &str,
    key: &RouteKey,
    ctx: &Context,
) -> Result<Action, Error> {
    warn!(route = %key, error, "LogRoute cannot be read; withdrawing its compiled objects");
    let object_name = compiled_object_name(&key.namespace, &key.name);
    withdraw(key, &object_name, ctx).await?;
    // Its previous status cannot be read either, so remember what was reported to avoid
    // rewriting the same status (and triggering ourselves) on every reconcile.
    let generation = obj.meta().generation;
    let fingerprint = format!("{generation:?}:{error}");
    if ctx.index().malformed_reported(key) != Some(fingerprint.as_str()) {
        let desired = status::desired(None, generation, &Outcome::Malformed(error));
        let api: RouteMetaApi = Api::namespaced(ctx.client.clone(), &key.namespace);
        status::patch(&api, &key.name, &desired).await?;
        publish_event(obj.object_ref(&()), &desired, ctx).await;
        ctx.index().set_malformed_reported(key, Some(fingerprint));
    }
    finish(key, false, result::INVALID, ctx);
    Ok(Action::requeue(RESYNC))
}

/// The LogRoute is being deleted: remove what it published. Runs before the finalizer is
/// removed, and tolerates objects that were never created.
async fn cleanup(key: &RouteKey, ctx: &Context) -> Result<Action, Error> {
    let object_name = compiled_object_name(&key.namespace, &key.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    objects::delete(&config_maps, &object_name, "delete ConfigMap").await?;
    objects::delete(&secrets, &object_name, "delete Secret").await?;
    ctx.index().remove(key);
    ctx.refresh_route_gauge();
    ctx.metrics
        .reconciliations
        .with_label_values(&[result::DELETED])
        .inc();
    info!(route = %key, "LogRoute deleted; compiled objects removed");
    Ok(Action::await_change())
}

fn finish(key: &RouteKey, ready: bool, result: &str, ctx: &Context) {
    {
        let mut index = ctx.index();
        index.set_ready(key, ready);
        if ready {
            index.set_malformed_reported(key, None);
        }
    }
    ctx.refresh_route_gauge();
    ctx.metrics
        .reconciliations
        .with_label_values(&[result])
        .inc();
}

fn log_problems(key: &RouteKey, problems: &[Problem]) {
    for p in problems {
        info!(route = %key, reason = p.reason.as_str(), path = %p.path, "LogRoute not compiled: {}", p.message);
    }
}

/// Events are best effort: a failure to record one is logged, never fails the reconcile.
async fn publish_event(
    reference: k8s_openapi::api::core::v1::ObjectReference,
    status: &LogRouteStatus,
    ctx: &Context,
) {
    let Some(ready) = status::ready_condition(status) else {
        return;
    };
    let event = Event {
        type_: if ready.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: ready.reason.clone(),
        note: Some(status::truncate(&ready.message, NOTE_MAX)),
        action: "Compile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(error = %e, reason = %ready.reason, "cannot record Event; check the controller's RBAC for events.k8s.io");
    }
}
