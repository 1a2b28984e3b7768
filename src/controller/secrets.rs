//! Secrets for the compiler, read through the API: only the ones a route refers to, only
//! in the route's own namespace, and only when they carry the label
//! `logroute.dev/credentials=true` ([`CREDENTIALS_SELECTOR`]).
//!
//! The compiler's [`SecretLookup`] is synchronous, so the controller compiles twice: first
//! with [`Recording`], which notes every Secret the compiler asks for and answers "absent",
//! then (after reading exactly those Secrets) with [`Fetched`]. The compiler stays the one
//! place that knows where a spec refers to Secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client};

use super::error::Error;
use crate::api::CREDENTIALS_SELECTOR;
use crate::route::SecretLookup;

/// Notes which Secrets the compiler asked for; knows none of them.
#[derive(Default)]
pub struct Recording(Mutex<BTreeSet<(String, String)>>);

impl Recording {
    pub fn into_refs(self) -> BTreeSet<(String, String)> {
        self.0
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SecretLookup for Recording {
    fn get(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let mut refs = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        refs.insert((namespace.to_string(), name.to_string()));
        None
    }
}

/// Secrets read from the API; anything not here does not exist (or was not ours to read).
#[derive(Default)]
pub struct Fetched(BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>);

impl SecretLookup for Fetched {
    fn get(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.0
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    fn missing_hint(&self, namespace: &str, name: &str) -> Option<String> {
        Some(format!(
            "lacks the label {CREDENTIALS_SELECTOR} (the controller reads only Secrets so labelled); create it with the label, or add it: kubectl label secret -n {namespace} {name} {CREDENTIALS_SELECTOR}"
        ))
    }
}

/// Read the referenced Secrets that live in `route_namespace` and carry the credentials
/// label. Each is read with a list narrowed by the label selector and its name, so the
/// API server never sends the controller a Secret that is not labelled for logroute: an
/// unlabelled one looks absent (and the compiler says how to label it). References to
/// any other namespace are never read: the compiler refuses them (Forbidden), and the
/// controller must not read another tenant's Secret on a route's behalf even transiently.
pub async fn fetch(
    client: &Client,
    route_namespace: &str,
    refs: &BTreeSet<(String, String)>,
) -> Result<Fetched, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), route_namespace);
    let mut found = BTreeMap::new();
    for (namespace, name) in refs {
        if namespace != route_namespace {
            continue;
        }
        let params = ListParams::default()
            .labels(CREDENTIALS_SELECTOR)
            .fields(&format!("metadata.name={name}"));
        let listed = api.list(&params).await.map_err(Error::api(
            "read labelled Secret",
            format!("{namespace}/{name}"),
        ))?;
        let secret = listed
            .items
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
        if let Some(secret) = secret {
            let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (k, v) in secret.data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            // stringData is write-only in the API, but a mock or an old server may echo it.
            for (k, v) in secret.string_data.unwrap_or_default() {
                data.entry(k).or_insert_with(|| v.into_bytes());
            }
            found.insert((namespace.clone(), name.clone()), data);
        }
    }
    Ok(Fetched(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_notes_every_request_and_knows_nothing() {
        let rec = Recording::default();
        assert_eq!(rec.get("a", "x"), None);
        assert_eq!(rec.get("b", "y"), None);
        assert_eq!(rec.get("a", "x"), None);
        let refs = rec.into_refs();
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            vec![
                ("a".to_string(), "x".to_string()),
                ("b".to_string(), "y".to_string())
            ]
        );
    }
}
