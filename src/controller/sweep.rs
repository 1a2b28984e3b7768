//! Start-up sweep: compiled objects whose LogRoute is gone (deleted while no controller
//! ran, or its finalizer removed by hand) would keep forwarding logs forever. Before the
//! new leader reconciles anything, it deletes every compiled ConfigMap/Secret whose source
//! LogRoute (namespace, name, uid from the annotations) no longer exists.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, ObjectMeta};
use kube::{Client, Resource};
use tracing::info;

use super::error::Error;
use super::objects::{self, Source};
use crate::api::{LogRoute, MANAGED_BY, MANAGED_BY_LABEL, ROUTE_LABEL};

/// `(namespace, name)` → uid of every LogRoute that exists.
pub type LiveRoutes = BTreeMap<(String, String), Option<String>>;

/// Label selector of every compiled object this controller wrote.
pub fn compiled_selector() -> String {
    format!("{ROUTE_LABEL},{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Whether a compiled object no longer belongs to a LogRoute. One without source
/// annotations is ours (by its labels) but cannot be traced back, so it goes too.
pub fn is_orphan(meta: &ObjectMeta, live: &LiveRoutes) -> bool {
    let Some(source) = Source::from_annotations(meta.annotations.as_ref()) else {
        return true;
    };
    match live.get(&(source.namespace, source.name)) {
        None => true,
        Some(live_uid) => match (&source.uid, live_uid) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        },
    }
}

/// Delete orphaned compiled objects in `operator_namespace`; returns how many went.
pub async fn sweep(client: &Client, operator_namespace: &str) -> Result<usize, Error> {
    let routes: Api<LogRoute> = Api::all(client.clone());
    let live: LiveRoutes = routes
        .list_metadata(&ListParams::default())
        .await
        .map_err(Error::api("list LogRoutes", "all namespaces"))?
        .items
        .into_iter()
        .filter_map(|r| Some(((r.metadata.namespace?, r.metadata.name?), r.metadata.uid)))
        .collect();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), operator_namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), operator_namespace);
    let removed = sweep_kind(&config_maps, &live, "ConfigMap").await?
        + sweep_kind(&secrets, &live, "Secret").await?;
    info!(removed, "start-up sweep of orphaned compiled objects done");
    Ok(removed)
}

async fn sweep_kind<K>(api: &Api<K>, live: &LiveRoutes, kind: &'static str) -> Result<usize, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (list_action, delete_action) = match kind {
        "Secret" => ("list compiled Secrets", "delete orphaned Secret"),
        _ => ("list compiled ConfigMaps", "delete orphaned ConfigMap"),
    };
    let listed = api
        .list_metadata(&ListParams::default().labels(&compiled_selector()))
        .await
        .map_err(Error::api(list_action, compiled_selector()))?;
    let mut removed = 0;
    for item in listed.items {
        if !is_orphan(&item.metadata, live) {
            continue;
        }
        let Some(name) = item.metadata.name.as_deref() else {
            continue;
        };
        let source = Source::from_annotations(item.metadata.annotations.as_ref());
        info!(
            kind,
            name,
            ?source,
            "deleting compiled object whose LogRoute no longer exists"
        );
        objects::delete(api, name, delete_action).await?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SOURCE_NAME_ANNOTATION, SOURCE_NAMESPACE_ANNOTATION, SOURCE_UID_ANNOTATION};

    fn meta(annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn orphans_are_objects_whose_route_is_gone_or_was_replaced() {
        let live = LiveRoutes::from([
            (
                ("a".to_string(), "kept".to_string()),
                Some("uid-1".to_string()),
            ),
            (
                ("a".to_string(), "recreated".to_string()),
                Some("uid-new".to_string()),
            ),
        ]);
        let src = |name: &'static str, uid: &'static str| {
            meta(&[
                (SOURCE_NAMESPACE_ANNOTATION, "a"),
                (SOURCE_NAME_ANNOTATION, name),
                (SOURCE_UID_ANNOTATION, uid),
            ])
        };
        assert!(!is_orphan(&src("kept", "uid-1"), &live));
        assert!(is_orphan(&src("recreated", "uid-old"), &live));
        assert!(is_orphan(&src("gone", "uid-2"), &live));
        assert!(is_orphan(&meta(&[]), &live), "untraceable objects go");
        let no_uid = meta(&[
            (SOURCE_NAMESPACE_ANNOTATION, "a"),
            (SOURCE_NAME_ANNOTATION, "kept"),
        ]);
        assert!(
            !is_orphan(&no_uid, &live),
            "without a uid, name and namespace decide"
        );
    }
}
