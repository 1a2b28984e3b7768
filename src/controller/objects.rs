//! The compiled objects in the operator namespace: a ConfigMap with `route.json`, and a
//! Secret with the resolved credentials when the route has any. Building them is pure;
//! writing them is server-side apply with the controller's field manager.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use sha2::{Digest, Sha256};

use super::error::{Error, is_not_found};
use crate::api::{
    FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, ROUTE_DOCUMENT_KEY, ROUTE_LABEL,
    SOURCE_NAME_ANNOTATION, SOURCE_NAMESPACE_ANNOTATION, SOURCE_UID_ANNOTATION,
};
use crate::route::Compiled;

/// Most characters in a label value.
const LABEL_VALUE_MAX: usize = 63;

/// Where a compiled object came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl Source {
    /// Read back from a compiled object's annotations; `None` when they are missing.
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Option<Self> {
        let a = annotations?;
        Some(Self {
            namespace: a.get(SOURCE_NAMESPACE_ANNOTATION)?.clone(),
            name: a.get(SOURCE_NAME_ANNOTATION)?.clone(),
            uid: a.get(SOURCE_UID_ANNOTATION).cloned(),
        })
    }
}

/// The `logroute.dev/route` label value, `<namespace>.<name>`. A label value holds at
/// most 63 characters, and a LogRoute name may be far longer: then the value is cut and
/// ends in a hash of the whole, so it stays valid and distinct. Readers take the route's
/// identity from the annotations, never from this value.
pub fn route_label_value(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    if full.len() <= LABEL_VALUE_MAX {
        return full;
    }
    let hash = Sha256::digest(full.as_bytes());
    let suffix: String = hash.iter().take(5).map(|b| format!("{b:02x}")).collect();
    // Namespaces and names are lowercase alphanumerics, '-' and '.'; the head must end
    // alphanumeric before the `-` we add.
    let keep = LABEL_VALUE_MAX - suffix.len() - 1;
    let head: String = full.chars().take(keep).collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{suffix}")
}

fn metadata(source: &Source, object_name: &str, operator_namespace: &str) -> ObjectMeta {
    let mut annotations = BTreeMap::from([
        (
            SOURCE_NAMESPACE_ANNOTATION.to_string(),
            source.namespace.clone(),
        ),
        (SOURCE_NAME_ANNOTATION.to_string(), source.name.clone()),
    ]);
    if let Some(uid) = &source.uid {
        annotations.insert(SOURCE_UID_ANNOTATION.to_string(), uid.clone());
    }
    ObjectMeta {
        name: Some(object_name.to_string()),
        namespace: Some(operator_namespace.to_string()),
        labels: Some(BTreeMap::from([
            (
                ROUTE_LABEL.to_string(),
                route_label_value(&source.namespace, &source.name),
            ),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        ])),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap agents read. It never holds credentials.
pub fn config_map(
    source: &Source,
    object_name: &str,
    operator_namespace: &str,
    compiled: &Compiled,
) -> ConfigMap {
    ConfigMap {
        metadata: metadata(source, object_name, operator_namespace),
        data: Some(BTreeMap::from([(
            ROUTE_DOCUMENT_KEY.to_string(),
            compiled.document.to_json(),
        )])),
        ..ConfigMap::default()
    }
}

/// The Secret beside the ConfigMap holding the resolved credentials.
pub fn credentials_secret(
    source: &Source,
    object_name: &str,
    operator_namespace: &str,
    compiled: &Compiled,
) -> Secret {
    Secret {
        metadata: metadata(source, object_name, operator_namespace),
        type_: Some("Opaque".to_string()),
        data: Some(
            compiled
                .credentials
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

pub async fn apply_config_map(api: &Api<ConfigMap>, cm: &ConfigMap) -> Result<(), Error> {
    let name = cm.metadata.name.clone().unwrap_or_default();
    api.patch(&name, &apply_params(), &Patch::Apply(cm))
        .await
        .map_err(Error::api("apply ConfigMap", object(api, &name)))?;
    Ok(())
}

pub async fn apply_secret(api: &Api<Secret>, secret: &Secret) -> Result<(), Error> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    api.patch(&name, &apply_params(), &Patch::Apply(secret))
        .await
        .map_err(Error::api("apply Secret", object(api, &name)))?;
    Ok(())
}

/// Delete an object; one that is already gone is fine.
pub async fn delete<K>(api: &Api<K>, name: &str, action: &'static str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::api(action, object(api, name))(e)),
    }
}

fn object<K: kube::Resource>(api: &Api<K>, name: &str) -> String {
    match api.namespace() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_label_value(v: &str) -> bool {
        v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    }

    #[test]
    fn short_route_label_is_namespace_dot_name() {
        assert_eq!(route_label_value("payments", "errors"), "payments.errors");
    }

    #[test]
    fn long_route_label_is_cut_hashed_and_valid() {
        let name = format!("{}-x", "a".repeat(60));
        let v = route_label_value("payments", &name);
        assert!(valid_label_value(&v), "invalid label value {v:?}");
        assert_eq!(v.len(), 63);
        assert!(v.starts_with("payments.aaaa"), "{v}");
        // Distinct inputs that share the first 52 characters stay distinct.
        let other = route_label_value("payments", &format!("{}-y", "a".repeat(60)));
        assert_ne!(v, other);
        // A cut that would end on '-' or '.' is trimmed back to an alphanumeric.
        let dashy = route_label_value(
            "ns",
            &format!("{}{}", "b".repeat(49), "-.-.-.-.-.-.-.-.-.-.c"),
        );
        assert!(valid_label_value(&dashy), "invalid label value {dashy:?}");
    }

    #[test]
    fn source_round_trips_through_annotations() {
        let source = Source {
            namespace: "a".into(),
            name: "b".into(),
            uid: Some("u-1".into()),
        };
        let meta = metadata(&source, "a-b", "logroute-system");
        assert_eq!(
            Source::from_annotations(meta.annotations.as_ref()),
            Some(source)
        );
        assert_eq!(Source::from_annotations(None), None);
        assert_eq!(Source::from_annotations(Some(&BTreeMap::new())), None);
    }
}
