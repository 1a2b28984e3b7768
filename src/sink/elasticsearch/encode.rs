//! Records → `_bulk` NDJSON: one `create` action line and one ECS document per record,
//! serialized straight into the request buffer. Pure: no I/O, no clock.
//!
//! # Document fields (Elastic Common Schema names)
//!
//! | field                          | from                                                  |
//! |--------------------------------|-------------------------------------------------------|
//! | `@timestamp`                   | Docker's timestamp, RFC 3339 UTC with 9 fraction digits |
//! | `message`                      | the record's message                                  |
//! | `log.iostream`                 | `stdout` / `stderr`                                   |
//! | `log.flags`                    | `["truncated"]` when the agent cut the line (else absent) |
//! | `container.id`                 | full Docker container id                              |
//! | `container.name`               | pod container name, else the Docker name              |
//! | `container.image.name`         | image as Docker reports it                            |
//! | `container.runtime`            | `docker`                                              |
//! | `container.labels.*`           | Docker labels, non-pod containers only (dots → `_`)   |
//! | `host.name`                    | node (or Docker host) name                            |
//! | `kubernetes.namespace`         | pod namespace                                         |
//! | `kubernetes.node.name`         | node name                                             |
//! | `kubernetes.pod.name` / `.uid` | pod                                                   |
//! | `kubernetes.container.name`    | container name in the pod spec                        |
//! | `kubernetes.labels.*`          | pod labels, dots in keys replaced by `_`              |
//! | `kubernetes.<kind>.name`       | pod owner for kinds Filebeat knows: `replicaset`, `statefulset`, `daemonset`, `job`, `cronjob`, `deployment` |
//!
//! Label keys are "de-dotted" like Filebeat's default `labels.dedot: true`:
//! `app.kubernetes.io/name` becomes `app_kubernetes_io/name`. Without it, `app` and
//! `app.kubernetes.io/name` would need `app` to be both a string and an object, and one
//! of the two documents would be rejected by the mapping.
//!
//! # Document ids
//!
//! Every document gets a deterministic `_id` and is written with `op_type: create`, so
//! that sending a record again (after a lost response, a retried request, the agent's own
//! resend after a failed batch, or an agent restart that re-reads from a checkpoint) is
//! answered with 409 `version_conflict_engine_exception`, which the sink counts as
//! `duplicate` and treats as delivered: nothing is indexed twice.
//!
//! The id is 20 URL-safe base64 characters of SHA-256 over the record's place in its
//! container's log: container id, stream, and the record's [`LogPosition`] (timestamp of
//! its last line and its frame count at that timestamp). The position is the same every
//! time the log is read and differs for every record, so two identical lines with the
//! same timestamp are two documents however they fall into batches and resends, and a
//! record read again is the same document. The message is not part of the id. (A
//! multiline record joined differently after a restart, because its lines arrived at
//! another pace than the join timeout, ends at another line and is a new document.)
//! Data streams require `create` anyway; the cost is that Elasticsearch looks the id up
//! on every write instead of taking its append-only fast path.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use sha2::{Digest, Sha256};

use super::index::IndexTemplate;
use crate::record::{ContainerInfo, LogPosition, Record, Timestamp};

/// One batch as NDJSON: all action and document lines in one buffer, with the byte range
/// of each record's two lines so that any subset can be sent again without re-encoding.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    pub buf: Vec<u8>,
    pub spans: Vec<Range<usize>>,
}

impl EncodedBatch {
    /// The request body for some records of the batch (in the given order).
    pub fn body_for(&self, items: &[usize]) -> Vec<u8> {
        let len = items.iter().map(|&i| self.spans[i].len()).sum();
        let mut body = Vec::with_capacity(len);
        for &i in items {
            body.extend_from_slice(&self.buf[self.spans[i].clone()]);
        }
        body
    }
}

#[derive(Serialize)]
struct ActionLine<'a> {
    create: ActionMeta<'a>,
}

#[derive(Serialize)]
struct ActionMeta<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: &'a str,
}

/// Encodes batches for one sink.
#[derive(Debug, Clone)]
pub struct Encoder {
    template: IndexTemplate,
    /// Host name used when a record's container carries none.
    node: String,
}

impl Encoder {
    pub fn new(template: IndexTemplate, node: String) -> Self {
        Self { template, node }
    }

    /// Encode `records`; `positions[i]` is where `records[i]` ends in its log.
    ///
    /// # Panics
    /// When the two slices differ in length (a caller's bug).
    pub fn encode(&self, records: &[Arc<Record>], positions: &[LogPosition]) -> EncodedBatch {
        assert_eq!(
            records.len(),
            positions.len(),
            "every record needs its log position"
        );
        let mut out = EncodedBatch {
            buf: Vec::with_capacity(records.len() * 512),
            spans: Vec::with_capacity(records.len()),
        };
        // Consecutive records of one container within one second share their index name.
        let mut last: Option<(*const ContainerInfo, i64, String)> = None;
        // The container's part of the document, serialized once per container and batch
        // (the batch holds the `Arc`s, so the addresses stay unique meanwhile).
        let mut tails: HashMap<*const ContainerInfo, Vec<u8>> = HashMap::new();
        let mut second = SecondText::default();
        for (record, position) in records.iter().zip(positions) {
            let start = out.buf.len();
            let key = (Arc::as_ptr(&record.container), record.timestamp.secs);
            if last
                .as_ref()
                .is_some_and(|(ptr, secs, _)| (*ptr, *secs) != key)
            {
                last = None;
            }
            let (_, _, index) =
                last.get_or_insert_with(|| (key.0, key.1, self.template.render(record)));
            let id = document_id(record, *position);
            write_json(
                &mut out.buf,
                &ActionLine {
                    create: ActionMeta { index, id: &id },
                },
            );
            out.buf.push(b'\n');
            // The document as `EcsDocument` serializes it, with the container's part
            // copied from `tails`.
            out.buf.extend_from_slice(b"{\"@timestamp\":\"");
            second.write(record.timestamp, &mut out.buf);
            out.buf.extend_from_slice(b"\",\"message\":");
            write_json(&mut out.buf, &record.message);
            out.buf.extend_from_slice(b",\"log\":");
            write_json(
                &mut out.buf,
                &Log {
                    iostream: record.stream.as_str(),
                    truncated: record.truncated,
                },
            );
            let tail = tails.entry(key.0).or_insert_with(|| {
                let mut tail = Vec::new();
                write_json(
                    &mut tail,
                    &ContainerFields {
                        c: &record.container,
                        node: &self.node,
                    },
                );
                // `{"container":...}` → `,"container":...}`
                tail[0] = b',';
                tail
            });
            out.buf.extend_from_slice(tail);
            out.buf.push(b'\n');
            out.spans.push(start..out.buf.len());
        }
        out
    }
}

impl Encoder {
    /// The encoded size of a record of `record`'s container, except its message: the
    /// action line with the index name `record` gets, and the document without the
    /// message's text. With [`Encoder::estimate`] it lets a batch be weighed as records
    /// arrive without encoding them twice.
    pub fn container_overhead(&self, record: &Record) -> usize {
        const ACTION: usize = r#"{"create":{"_index":"","_id":"01234567890123456789"}}"#.len() + 1;
        const HEAD: usize =
            r#"{"@timestamp":"2024-01-01T00:00:00.000000000Z","message":"","log":{"iostream":"stdout"}"#
                .len()
                + 1;
        let mut tail = Vec::new();
        write_json(
            &mut tail,
            &ContainerFields {
                c: &record.container,
                node: &self.node,
            },
        );
        // The tail's `{` becomes the `,` after `log`; its `}` closes the document.
        ACTION + self.template.render(record).len() + HEAD + tail.len()
    }

    /// The encoded size of `record` given its container's
    /// [`Encoder::container_overhead`]: exact unless the message needs JSON escapes or
    /// the index name's length changes with the date (then a few bytes off).
    pub fn estimate(record: &Record, overhead: usize) -> usize {
        const FLAGS: usize = r#","flags":["truncated"]"#.len();
        let stderr = record.stream.as_str().len() - "stdout".len();
        overhead + record.message.len() + stderr + if record.truncated { FLAGS } else { 0 }
    }
}

/// `@timestamp` text, with the date and time of the current second formatted once.
#[derive(Default)]
struct SecondText {
    secs: Option<i64>,
    text: String,
}

impl SecondText {
    /// RFC 3339, UTC, always nine fraction digits (as [`Rfc3339Nanos`]).
    fn write(&mut self, ts: Timestamp, out: &mut Vec<u8>) {
        if self.secs != Some(ts.secs) {
            let t = Timestamp {
                secs: ts.secs,
                nanos: 0,
            };
            self.text = t.to_datetime().format("%Y-%m-%dT%H:%M:%S").to_string();
            self.secs = Some(ts.secs);
        }
        out.extend_from_slice(self.text.as_bytes());
        let mut nanos = ts.nanos;
        let mut digits = *b".000000000Z";
        for d in digits[1..10].iter_mut().rev() {
            *d = b'0' + (nanos % 10) as u8;
            nanos /= 10;
        }
        out.extend_from_slice(&digits);
    }
}

fn write_json<T: Serialize>(buf: &mut Vec<u8>, value: &T) {
    // Serializing our own types into a Vec cannot fail: keys are strings and no
    // Serialize impl here returns an error.
    serde_json::to_writer(buf, value).expect("serializing a document into a Vec cannot fail");
}

/// See the module documentation.
pub fn document_id(record: &Record, position: LogPosition) -> String {
    let mut h = Sha256::new();
    h.update(record.container.id.as_bytes());
    h.update([0]);
    h.update(record.stream.as_str().as_bytes());
    h.update([0]);
    h.update(position.timestamp.secs.to_be_bytes());
    h.update(position.timestamp.nanos.to_be_bytes());
    h.update(position.seen.to_be_bytes());
    let digest: [u8; 32] = h.finalize().into();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..15])
}

/// `@timestamp`: RFC 3339, UTC, always nine fraction digits.
struct Rfc3339Nanos(Timestamp);

impl Serialize for Rfc3339Nanos {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.to_datetime().format("%Y-%m-%dT%H:%M:%S%.9fZ"))
    }
}

/// Label maps with dots in keys replaced by `_`.
struct Dedotted<'a>(&'a std::collections::BTreeMap<String, String>);

impl Serialize for Dedotted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            if k.contains('.') {
                m.serialize_entry(&k.replace('.', "_"), v)?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

struct Name<'a>(&'a str);

impl Serialize for Name<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("name", self.0)?;
        m.end()
    }
}

/// Owner kinds that get a `kubernetes.<kind>.name` field, as Filebeat names them.
fn owner_field(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "ReplicaSet" => "replicaset",
        "StatefulSet" => "statefulset",
        "DaemonSet" => "daemonset",
        "Job" => "job",
        "CronJob" => "cronjob",
        "Deployment" => "deployment",
        _ => return None,
    })
}

/// The ECS document of one record (see the module documentation for the fields).
pub struct EcsDocument<'a> {
    pub record: &'a Record,
    /// Fallback for `host.name` when the container carries no node name.
    pub node: &'a str,
}

impl Serialize for EcsDocument<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.record;
        let c = &*r.container;
        let node = if c.node.is_empty() {
            self.node
        } else {
            c.node.as_str()
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("@timestamp", &Rfc3339Nanos(r.timestamp))?;
        m.serialize_entry("message", &r.message)?;
        m.serialize_entry(
            "log",
            &Log {
                iostream: r.stream.as_str(),
                truncated: r.truncated,
            },
        )?;
        write_container_fields(&mut m, c, node)?;
        m.end()
    }
}

/// `container`, `host` and `kubernetes`: the fields that depend on the container only.
fn write_container_fields<M: SerializeMap>(
    m: &mut M,
    c: &ContainerInfo,
    node: &str,
) -> Result<(), M::Error> {
    m.serialize_entry("container", &Container { c })?;
    m.serialize_entry("host", &Name(node))?;
    if let Some(pod) = &c.pod {
        m.serialize_entry("kubernetes", &Kubernetes { pod, node })?;
    }
    Ok(())
}

/// An object with just the container's fields of [`EcsDocument`].
struct ContainerFields<'a> {
    c: &'a ContainerInfo,
    /// Fallback for `host.name`, as in [`EcsDocument`].
    node: &'a str,
}

impl Serialize for ContainerFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let node = if self.c.node.is_empty() {
            self.node
        } else {
            self.c.node.as_str()
        };
        let mut m = s.serialize_map(None)?;
        write_container_fields(&mut m, self.c, node)?;
        m.end()
    }
}

struct Log<'a> {
    iostream: &'a str,
    truncated: bool,
}

impl Serialize for Log<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("iostream", self.iostream)?;
        if self.truncated {
            m.serialize_entry("flags", &["truncated"])?;
        }
        m.end()
    }
}

struct Container<'a> {
    c: &'a ContainerInfo,
}

impl Serialize for Container<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.c;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &c.id)?;
        m.serialize_entry("name", c.display_name())?;
        m.serialize_entry("image", &Name(&c.image))?;
        m.serialize_entry("runtime", "docker")?;
        if c.pod.is_none() && !c.labels.is_empty() {
            m.serialize_entry("labels", &Dedotted(&c.labels))?;
        }
        m.end()
    }
}

struct Kubernetes<'a> {
    pod: &'a crate::record::PodInfo,
    node: &'a str,
}

impl Serialize for Kubernetes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.pod;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("namespace", &p.namespace)?;
        m.serialize_entry("node", &Name(self.node))?;
        m.serialize_entry(
            "pod",
            &Pod {
                name: &p.name,
                uid: &p.uid,
            },
        )?;
        m.serialize_entry("container", &Name(&p.container_name))?;
        if !p.labels.is_empty() {
            m.serialize_entry("labels", &Dedotted(&p.labels))?;
        }
        if let (Some(kind), Some(name)) = (p.owner_kind.as_deref(), p.owner_name.as_deref()) {
            if let Some(field) = owner_field(kind) {
                m.serialize_entry(field, &Name(name))?;
            }
        }
        m.end()
    }
}

#[derive(Serialize)]
struct Pod<'a> {
    name: &'a str,
    uid: &'a str,
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
