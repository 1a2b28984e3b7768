//! What besides a LogRoute's own changes makes it reconcile again:
//! - a Secret it refers to is created, changed, deleted, labelled or unlabelled
//!   (metadata-only watch of the Secrets carrying `logroute.dev/credentials=true` — never
//!   of the others — mapped through the route index);
//! - namespace labels change, for routes with a namespaceSelector (the same namespace
//!   watch fills the namespace cache the compiler reads);
//! - one of its compiled ConfigMaps/Secrets is changed or deleted by someone else (it is
//!   put back; watched in the operator namespace only, by the route label).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::warn;

use super::Guarded;
use super::context::Context;
use super::index::{RouteIndex, RouteKey};
use super::objects::Source;
use super::ready::{Cache, CacheSync};
use crate::api::{CREDENTIALS_SELECTOR, MANAGED_BY, MANAGED_BY_LABEL, ROUTE_LABEL};

type NamespaceMeta = PartialObjectMeta<Namespace>;

/// All trigger streams merged. The namespace watch also fills `namespaces` (whose reader
/// is `ctx.namespaces`), so this stream must be polled for reconciles to make progress —
/// the Controller does so once it runs. The namespace and Secret watches report their
/// initial lists to `sync` (readiness).
pub fn triggers(
    ctx: Arc<Context>,
    namespaces: Writer<NamespaceMeta>,
    sync: CacheSync,
) -> impl Stream<Item = ObjectRef<Guarded>> + Send + 'static {
    let client = ctx.client.clone();
    let config = watcher::Config::default().any_semantic();

    let ns_ctx = ctx.clone();
    let mut writer = namespaces;
    let ns_sync = sync.clone();
    let namespace_triggers = watcher(Api::<NamespaceMeta>::all(client.clone()), config.clone())
        .default_backoff()
        .map(move |event| match event {
            Ok(event) => {
                let changed = namespace_changed(&ns_ctx.namespaces, &event);
                writer.apply_watcher_event(&event);
                ns_sync.observe(Cache::Namespaces, &event);
                if changed {
                    ns_ctx.index().routes_with_namespace_selector()
                } else {
                    Vec::new()
                }
            }
            Err(e) => {
                warn!(error = %e, "namespace watch failed; retrying with backoff");
                Vec::new()
            }
        });

    let secret_ctx = ctx.clone();
    let secret_triggers = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        config.clone().labels(CREDENTIALS_SELECTOR),
    )
    .default_backoff()
    .inspect(move |event| {
        if let Ok(event) = event {
            sync.observe(Cache::Secrets, event);
        }
    })
    .touched_objects()
    .map(move |secret| match secret {
        Ok(secret) => routes_for_secret(
            &secret_ctx.index(),
            &secret_ctx.operator_namespace,
            &secret.metadata,
        ),
        Err(e) => {
            warn!(error = %e, "Secret watch failed; retrying with backoff");
            Vec::new()
        }
    });

    let compiled_ctx = ctx.clone();
    let compiled_secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &ctx.operator_namespace),
        config.clone().labels(ROUTE_LABEL),
    )
    .default_backoff()
    .touched_objects()
    .map(move |secret| match secret {
        Ok(secret) => routes_for_secret(
            &compiled_ctx.index(),
            &compiled_ctx.operator_namespace,
            &secret.metadata,
        ),
        Err(e) => {
            warn!(error = %e, "compiled Secret watch failed; retrying with backoff");
            Vec::new()
        }
    });

    let compiled_config_maps = watcher(
        Api::<PartialObjectMeta<ConfigMap>>::namespaced(client, &ctx.operator_namespace),
        config.labels(ROUTE_LABEL),
    )
    .default_backoff()
    .touched_objects()
    .map(|cm| match cm {
        Ok(cm) => compiled_object_source(&cm.metadata).into_iter().collect(),
        Err(e) => {
            warn!(error = %e, "compiled ConfigMap watch failed; retrying with backoff");
            Vec::new()
        }
    });

    let merged: Vec<BoxStream<'static, Vec<RouteKey>>> = vec![
        namespace_triggers.boxed(),
        secret_triggers.boxed(),
        compiled_secrets.boxed(),
        compiled_config_maps.boxed(),
    ];
    stream::select_all(merged)
        .flat_map(|keys| stream::iter(keys.into_iter().map(|k| k.object_ref())))
}

/// Whether a namespace event changes what a namespaceSelector can match: a namespace
/// appeared, went, or its labels changed. Compared with the cache before the event.
pub fn namespace_changed(
    cache: &Store<NamespaceMeta>,
    event: &watcher::Event<NamespaceMeta>,
) -> bool {
    match event {
        watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
            let before = cache.get(&ObjectRef::from_obj(ns));
            labels(before.as_ref().map(|b| &b.metadata)) != labels(Some(&ns.metadata))
                || before.is_none()
        }
        watcher::Event::Delete(_) => true,
        watcher::Event::Init | watcher::Event::InitDone => false,
    }
}

fn labels(meta: Option<&ObjectMeta>) -> Option<&BTreeMap<String, String>> {
    meta.and_then(|m| m.labels.as_ref())
}

/// Routes to reconcile when this Secret changed: those that refer to it, and — for a
/// compiled credentials Secret in the operator namespace — the route it belongs to.
pub fn routes_for_secret(
    index: &RouteIndex,
    operator_namespace: &str,
    meta: &ObjectMeta,
) -> Vec<RouteKey> {
    let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
        return Vec::new();
    };
    let mut routes = index.routes_for_secret(namespace, name);
    if namespace == operator_namespace {
        if let Some(source) = compiled_object_source(meta) {
            if !routes.contains(&source) {
                routes.push(source);
            }
        }
    }
    routes
}

/// The route a compiled object belongs to, if it is one of ours.
pub fn compiled_object_source(meta: &ObjectMeta) -> Option<RouteKey> {
    let labels = meta.labels.as_ref()?;
    if !labels.contains_key(ROUTE_LABEL)
        || labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY)
    {
        return None;
    }
    let source = Source::from_annotations(meta.annotations.as_ref())?;
    Some(RouteKey::new(source.namespace, source.name))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kube::runtime::reflector;

    use super::*;
    use crate::api::{SOURCE_NAME_ANNOTATION, SOURCE_NAMESPACE_ANNOTATION};

    fn ns(name: &str, labels: &[(&str, &str)]) -> NamespaceMeta {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }

    #[test]
    fn only_label_changes_and_membership_changes_count() {
        let (reader, mut writer) = reflector::store::<NamespaceMeta>();
        let event = watcher::Event::Apply(ns("team-a", &[("tier", "prod")]));
        assert!(
            namespace_changed(&reader, &event),
            "a new namespace is a change"
        );
        writer.apply_watcher_event(&event);

        let same = watcher::Event::Apply(ns("team-a", &[("tier", "prod")]));
        assert!(
            !namespace_changed(&reader, &same),
            "same labels (e.g. a status update) is no change"
        );

        let relabelled = watcher::Event::Apply(ns("team-a", &[("tier", "dev")]));
        assert!(namespace_changed(&reader, &relabelled));
        writer.apply_watcher_event(&relabelled);

        assert!(namespace_changed(
            &reader,
            &watcher::Event::Delete(ns("team-a", &[]))
        ));
        assert!(!namespace_changed(&reader, &watcher::Event::InitDone));
    }

    fn compiled_meta(namespace: &str, name: &str, managed_by: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some("logroute-system".into()),
            name: Some(format!("{namespace}-{name}")),
            labels: Some(BTreeMap::from([
                (ROUTE_LABEL.to_string(), format!("{namespace}.{name}")),
                (MANAGED_BY_LABEL.to_string(), managed_by.to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                (
                    SOURCE_NAMESPACE_ANNOTATION.to_string(),
                    namespace.to_string(),
                ),
                (SOURCE_NAME_ANNOTATION.to_string(), name.to_string()),
            ])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn secret_events_map_to_referring_routes_and_to_the_owner_of_a_compiled_secret() {
        let mut index = RouteIndex::default();
        let route = RouteKey::new("team-a", "errors");
        index.set_refs(
            &route,
            BTreeSet::from([("team-a".to_string(), "es-creds".to_string())]),
            false,
        );

        let user_secret = ObjectMeta {
            namespace: Some("team-a".into()),
            name: Some("es-creds".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(
            routes_for_secret(&index, "logroute-system", &user_secret),
            vec![route.clone()]
        );

        let same_name_elsewhere = ObjectMeta {
            namespace: Some("team-b".into()),
            ..user_secret.clone()
        };
        assert!(routes_for_secret(&index, "logroute-system", &same_name_elsewhere).is_empty());

        let compiled = compiled_meta("team-a", "errors", MANAGED_BY);
        assert_eq!(
            routes_for_secret(&index, "logroute-system", &compiled),
            vec![route]
        );

        let foreign = compiled_meta("team-a", "errors", "someone-else");
        assert!(routes_for_secret(&index, "logroute-system", &foreign).is_empty());
    }
}
