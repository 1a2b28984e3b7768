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
//! that sending a record again (after a lost response, a retried request, or the agent's
//! own resend after a failed batch) is answered with 409 `version_conflict_engine_exception`,
//! which the sink counts as `duplicate` and treats as delivered: nothing is indexed twice.
//! The id is 20 URL-safe base64 characters of SHA-256 over container id, stream, timestamp
//! and message, plus an occurrence number when the same (container, stream, timestamp,
//! message) appears more than once in a batch. Limit: two identical lines of one stream
//! with the very same nanosecond timestamp that fall into different batches collapse into
//! one document. Data streams require `create` anyway; the cost is that Elasticsearch
//! looks the id up on every write instead of taking its append-only fast path.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use sha2::{Digest, Sha256};

use super::index::IndexTemplate;
use crate::record::{ContainerInfo, Record, Timestamp};

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

    pub fn encode(&self, records: &[Arc<Record>]) -> EncodedBatch {
        let mut out = EncodedBatch {
            buf: Vec::with_capacity(records.len() * 512),
            spans: Vec::with_capacity(records.len()),
        };
        let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
        // Consecutive records of one container within one second share their index name.
        let mut last: Option<(*const ContainerInfo, i64, String)> = None;
        // The container's part of the document, serialized once per container and batch
        // (the batch holds the `Arc`s, so the addresses stay unique meanwhile).
        let mut tails: HashMap<*const ContainerInfo, Vec<u8>> = HashMap::new();
        let mut second = SecondText::default();
        for record in records {
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
            let id = document_id(record, &mut seen);
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
pub fn document_id(record: &Record, seen: &mut HashMap<[u8; 32], u32>) -> String {
    let mut h = Sha256::new();
    h.update(record.container.id.as_bytes());
    h.update([0]);
    h.update(record.stream.as_str().as_bytes());
    h.update([0]);
    h.update(record.timestamp.secs.to_be_bytes());
    h.update(record.timestamp.nanos.to_be_bytes());
    h.update(record.message.as_bytes());
    let base: [u8; 32] = h.finalize().into();
    let n = seen.entry(base).or_insert(0);
    let digest: [u8; 32] = if *n == 0 {
        base
    } else {
        let mut h = Sha256::new();
        h.update(base);
        h.update(n.to_be_bytes());
        h.finalize().into()
    };
    *n += 1;
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
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::*;
    use crate::api::StreamName;
    use crate::record::PodInfo;

    fn pod_container() -> Arc<ContainerInfo> {
        Arc::new(ContainerInfo {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "k8s_api_web-7d4b9c-x2x_payments_uid-1_0".into(),
            image: "registry.local/web:1.2".into(),
            labels: BTreeMap::from([("io.kubernetes.pod.name".into(), "web-7d4b9c-x2x".into())]),
            node: "node-a".into(),
            pod: Some(PodInfo {
                namespace: "payments".into(),
                name: "web-7d4b9c-x2x".into(),
                uid: "uid-1".into(),
                container_name: "api".into(),
                labels: BTreeMap::from([
                    ("app".into(), "web".into()),
                    ("app.kubernetes.io/name".into(), "web".into()),
                ]),
                annotations: BTreeMap::new(),
                owner_kind: Some("ReplicaSet".into()),
                owner_name: Some("web-7d4b9c".into()),
            }),
        })
    }

    fn record(c: &Arc<ContainerInfo>, secs: i64, nanos: u32, msg: &str) -> Arc<Record> {
        Arc::new(Record {
            container: c.clone(),
            stream: StreamName::Stderr,
            timestamp: Timestamp { secs, nanos },
            message: msg.into(),
            truncated: false,
        })
    }

    fn lines(batch: &EncodedBatch) -> Vec<Value> {
        batch
            .buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn pod_record_becomes_an_ecs_document() {
        let enc = Encoder::new(
            IndexTemplate::parse("logs-{namespace}-%Y.%m.%d").unwrap(),
            "fallback".into(),
        );
        // 2024-02-29T23:59:59.000000123Z
        let batch = enc.encode(&[record(
            &pod_container(),
            1_709_251_199,
            123,
            "boom \"quoted\"",
        )]);
        assert!(batch.buf.ends_with(b"\n"));
        let l = lines(&batch);
        assert_eq!(l.len(), 2);
        let action = &l[0]["create"];
        assert_eq!(action["_index"], "logs-payments-2024.02.29");
        assert_eq!(action["_id"].as_str().unwrap().len(), 20);
        assert_eq!(
            l[1],
            json!({
                "@timestamp": "2024-02-29T23:59:59.000000123Z",
                "message": "boom \"quoted\"",
                "log": {"iostream": "stderr"},
                "container": {
                    "id": "0123456789abcdef0123456789abcdef",
                    "name": "api",
                    "image": {"name": "registry.local/web:1.2"},
                    "runtime": "docker"
                },
                "host": {"name": "node-a"},
                "kubernetes": {
                    "namespace": "payments",
                    "node": {"name": "node-a"},
                    "pod": {"name": "web-7d4b9c-x2x", "uid": "uid-1"},
                    "container": {"name": "api"},
                    "labels": {"app": "web", "app_kubernetes_io/name": "web"},
                    "replicaset": {"name": "web-7d4b9c"}
                }
            })
        );
    }

    #[test]
    fn host_container_has_docker_labels_and_no_kubernetes_object() {
        let c = Arc::new(ContainerInfo {
            id: "abc".into(),
            name: "My_DB".into(),
            image: "postgres".into(),
            labels: BTreeMap::from([("com.example.tier".into(), "db".into())]),
            node: String::new(),
            pod: None,
        });
        let mut r = (*record(&c, 0, 0, "x")).clone();
        r.truncated = true;
        let enc = Encoder::new(
            IndexTemplate::parse("logs-{namespace}-{container}-{node}").unwrap(),
            "host-1".into(),
        );
        let l = lines(&enc.encode(&[Arc::new(r)]));
        assert_eq!(l[0]["create"]["_index"], "logs-none-my_db-");
        assert_eq!(l[1]["host"]["name"], "host-1");
        assert_eq!(
            l[1]["container"]["labels"],
            json!({"com_example_tier": "db"})
        );
        assert_eq!(l[1]["log"]["flags"], json!(["truncated"]));
        assert_eq!(l[1]["@timestamp"], "1970-01-01T00:00:00.000000000Z");
        assert!(l[1].get("kubernetes").is_none());
    }

    #[test]
    fn ids_are_stable_and_distinct_for_repeated_lines() {
        let c = pod_container();
        let enc = Encoder::new(IndexTemplate::parse("x").unwrap(), "n".into());
        let batch = [
            record(&c, 5, 1, "same"),
            record(&c, 5, 1, "same"),
            record(&c, 5, 2, "same"),
        ];
        let ids = |b: &EncodedBatch| -> Vec<String> {
            lines(b)
                .iter()
                .step_by(2)
                .map(|a| a["create"]["_id"].as_str().unwrap().to_string())
                .collect()
        };
        let first = ids(&enc.encode(&batch));
        assert_eq!(
            first,
            ids(&enc.encode(&batch)),
            "a resend must carry the same ids"
        );
        assert_ne!(first[0], first[1]);
        assert_ne!(first[0], first[2]);
        assert_ne!(first[1], first[2]);
        // The record alone (as the first of a later batch) keeps its id.
        assert_eq!(ids(&enc.encode(&batch[2..]))[0], first[2]);
    }

    /// The batch encoder copies the container's part of each document from a cache;
    /// what it writes must be what `EcsDocument` serializes.
    #[test]
    fn batch_documents_are_what_ecs_document_serializes() {
        let host = Arc::new(ContainerInfo {
            id: "abc".into(),
            name: "db".into(),
            labels: BTreeMap::from([("a.b".into(), "c".into())]),
            ..ContainerInfo::default()
        });
        let pod = pod_container();
        let mut records = Vec::new();
        for i in 0..40u32 {
            let c = if i % 3 == 0 { &host } else { &pod };
            let mut r = (*record(
                c,
                1_709_251_199 + i64::from(i / 7),
                i * 37_777_777 % 1_000_000_000,
                "m \"q\" \u{1}é",
            ))
            .clone();
            r.truncated = i % 5 == 0;
            records.push(Arc::new(r));
        }
        let enc = Encoder::new(IndexTemplate::parse("x").unwrap(), "fallback".into());
        let batch = enc.encode(&records);
        let docs: Vec<&[u8]> = batch
            .buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .skip(1)
            .step_by(2)
            .collect();
        assert_eq!(docs.len(), records.len());
        for (doc, r) in docs.iter().zip(&records) {
            let expected = serde_json::to_vec(&EcsDocument {
                record: r,
                node: "fallback",
            })
            .unwrap();
            assert_eq!(
                String::from_utf8_lossy(doc),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn body_for_picks_whole_records() {
        let c = pod_container();
        let enc = Encoder::new(IndexTemplate::parse("x").unwrap(), "n".into());
        let batch = enc.encode(&[
            record(&c, 1, 0, "a"),
            record(&c, 2, 0, "b"),
            record(&c, 3, 0, "c"),
        ]);
        let body = batch.body_for(&[2, 0]);
        let text = String::from_utf8(body).unwrap();
        let messages: Vec<&str> = text.lines().filter(|l| l.contains("message")).collect();
        assert_eq!(messages.len(), 2);
        assert!(
            messages[0].contains("\"message\":\"c\"") && messages[1].contains("\"message\":\"a\"")
        );
        assert!(text.ends_with('\n'));
    }
}
