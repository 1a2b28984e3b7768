//! Tests of the bulk encoder (a file of their own to keep `encode.rs` short).

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

/// Positions as a reader of a log holding just these records would give them.
fn read_positions(records: &[Arc<Record>]) -> Vec<LogPosition> {
    let mut seen: HashMap<(String, &str, Timestamp), u32> = HashMap::new();
    records
        .iter()
        .map(|r| {
            let n = seen
                .entry((r.container.id.clone(), r.stream.as_str(), r.timestamp))
                .or_insert(0);
            *n += 1;
            LogPosition {
                timestamp: r.timestamp,
                seen: *n,
            }
        })
        .collect()
}

fn encode(enc: &Encoder, records: &[Arc<Record>]) -> EncodedBatch {
    enc.encode(records, &read_positions(records))
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
    let batch = encode(
        &enc,
        &[record(
            &pod_container(),
            1_709_251_199,
            123,
            "boom \"quoted\"",
        )],
    );
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
    let l = lines(&encode(&enc, &[Arc::new(r)]));
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
fn ids_come_from_log_positions_not_from_batches() {
    let c = pod_container();
    let enc = Encoder::new(IndexTemplate::parse("x").unwrap(), "n".into());
    let batch = [
        record(&c, 5, 1, "same"),
        record(&c, 5, 1, "same"),
        record(&c, 5, 2, "same"),
    ];
    let positions = read_positions(&batch);
    let ids = |b: &EncodedBatch| -> Vec<String> {
        lines(b)
            .iter()
            .step_by(2)
            .map(|a| a["create"]["_id"].as_str().unwrap().to_string())
            .collect()
    };
    let first = ids(&enc.encode(&batch, &positions));
    assert_eq!(
        first,
        ids(&enc.encode(&batch, &positions)),
        "a resend must carry the same ids"
    );
    assert_ne!(first[0], first[1]);
    assert_ne!(first[0], first[2]);
    assert_ne!(first[1], first[2]);
    // Resending the second of two identical lines alone (the rest of a batch after a
    // partial failure) keeps its own id: it must not collide with the first.
    assert_eq!(ids(&enc.encode(&batch[1..], &positions[1..]))[0], first[1]);
    // The id is the position's: the same record at another position is another
    // document; another container at the same position too.
    let moved = LogPosition {
        seen: 7,
        ..positions[0]
    };
    assert_ne!(ids(&enc.encode(&batch[..1], &[moved]))[0], first[0]);
    let other = Arc::new(ContainerInfo {
        id: "fedcba".into(),
        ..(*c).clone()
    });
    let twin = record(&other, 5, 1, "same");
    assert_ne!(ids(&enc.encode(&[twin], &positions[..1]))[0], first[0]);
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
    let batch = encode(&enc, &records);
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
fn estimates_match_encoded_sizes() {
    let host = Arc::new(ContainerInfo {
        id: "abc".into(),
        name: "db".into(),
        labels: BTreeMap::from([("a.b".into(), "c".into())]),
        ..ContainerInfo::default()
    });
    let enc = Encoder::new(
        IndexTemplate::parse("logs-{namespace}-%Y.%m.%d").unwrap(),
        "fallback".into(),
    );
    for c in [pod_container(), host] {
        let mut records = Vec::new();
        for (i, msg) in ["", "a", "a longer message with spaces"].iter().enumerate() {
            let mut r = (*record(&c, 1_709_251_199, i as u32 * 1000, msg)).clone();
            r.truncated = i == 1;
            r.stream = if i == 2 {
                StreamName::Stdout
            } else {
                StreamName::Stderr
            };
            records.push(Arc::new(r));
        }
        let batch = encode(&enc, &records);
        for (r, span) in records.iter().zip(&batch.spans) {
            let overhead = enc.container_overhead(r);
            assert_eq!(Encoder::estimate(r, overhead), span.len(), "{r:?}");
        }
    }
}

#[test]
fn body_for_picks_whole_records() {
    let c = pod_container();
    let enc = Encoder::new(IndexTemplate::parse("x").unwrap(), "n".into());
    let batch = encode(
        &enc,
        &[
            record(&c, 1, 0, "a"),
            record(&c, 2, 0, "b"),
            record(&c, 3, 0, "c"),
        ],
    );
    let body = batch.body_for(&[2, 0]);
    let text = String::from_utf8(body).unwrap();
    let messages: Vec<&str> = text.lines().filter(|l| l.contains("message")).collect();
    assert_eq!(messages.len(), 2);
    assert!(messages[0].contains("\"message\":\"c\"") && messages[1].contains("\"message\":\"a\""));
    assert!(text.ends_with('\n'));
}
