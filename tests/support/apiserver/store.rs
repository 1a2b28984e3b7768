//! The in-memory object store of the test API server: objects as JSON values, one global
//! resourceVersion counter, server-owned metadata, finalizer-aware deletion and a bounded
//! history of changes that watches replay.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

use super::select::Selector;

/// A resource type the server knows. Everything else answers 404, as an API server does
/// for a resource it does not serve.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource: writes to the main resource leave `.status` alone.
    pub status: bool,
    /// The server counts `metadata.generation` (1 on create, +1 when `.spec` changes).
    pub generation: bool,
}

const fn res(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
) -> Resource {
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced,
        status,
        generation: status && !group.is_empty(),
    }
}

pub static RESOURCES: &[Resource] = &[
    res("", "v1", "pods", "Pod", true, true),
    res("", "v1", "configmaps", "ConfigMap", true, false),
    res("", "v1", "secrets", "Secret", true, false),
    res("", "v1", "namespaces", "Namespace", false, true),
    res("", "v1", "events", "Event", true, false),
    res("", "v1", "nodes", "Node", false, true),
    res("events.k8s.io", "v1", "events", "Event", true, false),
    res("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    res(
        "logroute.dev",
        "v1alpha1",
        "logroutes",
        "LogRoute",
        true,
        true,
    ),
];

impl Resource {
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// By `apiVersion` and either the kind (`Pod`) or the plural (`pods`).
    pub fn by_api_version(api_version: &str, kind: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.api_version() == api_version && (r.kind == kind || r.plural == kind))
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// An error the server answers with a `kind: Status` body.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches replay it. `old` lets a watch with a selector turn a change
/// that moves an object into or out of the selection into ADDED or DELETED.
pub struct Change {
    pub rv: u64,
    pub resource: &'static Resource,
    pub kind: ChangeKind,
    pub old: Option<Value>,
    pub new: Value,
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The main resource: `.status` is kept where the resource has a status subresource.
    Main,
    /// The `/status` subresource: only `.status` changes.
    Status,
    /// A test control: everything but server-owned metadata.
    Whole,
}

type Key = (&'static str, &'static str, &'static str, String, String);

/// Watches starting before this many writes ago get 410 Gone.
const HISTORY: usize = 10_000;

#[derive(Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    pub rv: u64,
    history: VecDeque<Change>,
    /// Changes at or below this resourceVersion are forgotten.
    floor: u64,
    /// Method, path and query of every request, decoded.
    pub requests: Vec<String>,
    /// Bumped by `drop_watches`: every open watch ends.
    pub drop_epoch: u64,
    pub paused: bool,
    /// While set, list requests wait (watches are not held).
    pub hold_lists: bool,
}

fn key(r: &'static Resource, ns: &str, name: &str) -> Key {
    (
        r.group,
        r.version,
        r.plural,
        ns.to_string(),
        name.to_string(),
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

impl Store {
    pub fn get(&self, r: &'static Resource, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(r, ns, name))
    }

    /// Objects of `r` in `ns` (all namespaces for `None`) that `sel` selects, by name.
    pub fn list(&self, r: &'static Resource, ns: Option<&str>, sel: &Selector) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((g, v, p, n, _), _)| {
                (*g, *v, *p) == (r.group, r.version, r.plural) && ns.is_none_or(|ns| ns == n)
            })
            .map(|(_, o)| o)
            .filter(|o| sel.matches(o))
            .cloned()
            .collect()
    }

    pub fn create(
        &mut self,
        r: &'static Resource,
        ns: &str,
        mut obj: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::new(400, "BadRequest", "body is not an object"));
        }
        let mut name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if name.is_empty() {
            let Some(prefix) = meta_str(&obj, "generateName") else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value",
                ));
            };
            name = format!("{prefix}{:05x}", fastrand::u32(..0xfffff));
        }
        if self.objects.contains_key(&key(r, ns, &name)) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", r.plural),
            ));
        }
        if part != Part::Whole && r.status {
            obj.as_object_mut().map(|o| o.remove("status"));
        }
        self.rv += 1;
        let rv = self.rv;
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        let meta = meta_mut(&mut obj);
        meta.insert("name".into(), json!(name));
        if r.namespaced {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert("uid".into(), json!(uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.remove("deletionTimestamp");
        if r.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        self.objects.insert(key(r, ns, &name), obj.clone());
        self.record(r, ChangeKind::Added, None, obj.clone());
        Ok(obj)
    }

    /// Write `candidate` over the stored object (404 when there is none). Server-owned
    /// metadata is kept; an unchanged object is not written (no new resourceVersion, no
    /// event), as the API server does. An object being deleted whose finalizers are now
    /// empty is removed.
    pub fn update(
        &mut self,
        r: &'static Resource,
        ns: &str,
        name: &str,
        mut candidate: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let k = key(r, ns, name);
        let Some(old) = self.objects.get(&k).cloned() else {
            return Err(not_found(r, name));
        };
        if !candidate.is_object() {
            return Err(ApiError::new(400, "BadRequest", "body is not an object"));
        }
        if part == Part::Status {
            let status = candidate.get("status").cloned();
            candidate = old.clone();
            set_or_remove(&mut candidate, "status", status);
        } else if part == Part::Main && r.status {
            set_or_remove(&mut candidate, "status", old.get("status").cloned());
        }
        candidate["apiVersion"] = json!(r.api_version());
        candidate["kind"] = json!(r.kind);
        let old_meta = old["metadata"].clone();
        let meta = meta_mut(&mut candidate);
        for owned in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "resourceVersion",
        ] {
            match old_meta.get(owned) {
                Some(v) => meta.insert(owned.into(), v.clone()),
                None => meta.remove(owned),
            };
        }
        if r.generation && candidate.get("spec") != old.get("spec") {
            let g = old_meta["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut candidate).insert("generation".into(), json!(g));
        }
        let finalized = old_meta.get("deletionTimestamp").is_some()
            && candidate["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        if finalized {
            self.objects.insert(k, candidate);
            return Ok(self.remove(r, ns, name).expect("object just written"));
        }
        if candidate == old {
            return Ok(old);
        }
        self.rv += 1;
        meta_mut(&mut candidate).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.objects.insert(k, candidate.clone());
        self.record(r, ChangeKind::Modified, Some(old), candidate.clone());
        Ok(candidate)
    }

    /// Delete as the API server does: an object with finalizers only gets a
    /// deletionTimestamp; the others go at once. Returns the object as it now stands.
    pub fn delete(
        &mut self,
        r: &'static Resource,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let k = key(r, ns, name);
        let Some(old) = self.objects.get(&k).cloned() else {
            return Err(not_found(r, name));
        };
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            return Ok(self.remove(r, ns, name).expect("object exists"));
        }
        if old["metadata"].get("deletionTimestamp").is_some() {
            return Ok(old);
        }
        let mut new = old.clone();
        self.rv += 1;
        let meta = meta_mut(&mut new);
        meta.insert("deletionTimestamp".into(), json!(now()));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.objects.insert(k, new.clone());
        self.record(r, ChangeKind::Modified, Some(old), new.clone());
        Ok(new)
    }

    fn remove(&mut self, r: &'static Resource, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.objects.remove(&key(r, ns, name))?;
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.record(r, ChangeKind::Deleted, None, obj.clone());
        Some(obj)
    }

    fn record(&mut self, r: &'static Resource, kind: ChangeKind, old: Option<Value>, new: Value) {
        self.history.push_back(Change {
            rv: self.rv,
            resource: r,
            kind,
            old,
            new,
        });
        while self.history.len() > HISTORY {
            let gone = self.history.pop_front().expect("history not empty");
            self.floor = gone.rv;
        }
    }

    /// Forget every change so far and move the resourceVersion on (as a write would):
    /// every watch from a resourceVersion issued before now, open or new, gets 410, while
    /// a list made afterwards gives a resourceVersion that can be watched.
    pub fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.floor = self.rv;
    }

    /// The changes after `from` a watch of `r` in `ns` with `sel` must send, as
    /// (type, object); `None` when `from` is older than the history kept.
    pub fn changes_after(
        &self,
        r: &'static Resource,
        ns: Option<&str>,
        sel: &Selector,
        from: u64,
    ) -> Option<Vec<(&'static str, Value)>> {
        if from < self.floor {
            return None;
        }
        let mut out = Vec::new();
        for c in self.history.iter().filter(|c| c.rv > from) {
            if !std::ptr::eq(c.resource, r)
                || ns.is_some_and(|ns| meta_str(&c.new, "namespace") != Some(ns))
            {
                continue;
            }
            let now_in = sel.matches(&c.new);
            let was_in = c.old.as_ref().is_some_and(|o| sel.matches(o));
            let kind = match (c.kind, was_in, now_in) {
                (ChangeKind::Added, _, true) => "ADDED",
                (ChangeKind::Deleted, _, true) => "DELETED",
                (ChangeKind::Modified, true, true) => "MODIFIED",
                (ChangeKind::Modified, false, true) => "ADDED",
                (ChangeKind::Modified, true, false) => "DELETED",
                _ => continue,
            };
            out.push((kind, c.new.clone()));
        }
        Some(out)
    }
}

fn not_found(r: &Resource, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", r.plural),
    )
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn set_or_remove(obj: &mut Value, field: &str, value: Option<Value>) {
    let o = obj.as_object_mut().expect("object");
    match value {
        Some(v) => o.insert(field.into(), v),
        None => o.remove(field),
    };
}

fn uid() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u16(..0x1000),
        fastrand::u64(..1 << 48)
    )
}
