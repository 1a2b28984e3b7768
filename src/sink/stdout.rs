//! Debug sink: one JSON object per record on standard output.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use super::{SendFailure, SinkContext, SinkError};
use crate::record::Record;

pub struct StdoutSink {
    ctx: SinkContext,
    out: tokio::io::Stdout,
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn new(ctx: SinkContext) -> Self {
        Self {
            ctx,
            out: tokio::io::stdout(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), SendFailure> {
        self.buf.clear();
        for record in batch {
            serde_json::to_writer(
                &mut self.buf,
                &to_json(record, &self.ctx.route, &self.ctx.sink),
            )
            .expect("JSON into a Vec cannot fail");
            self.buf.push(b'\n');
        }
        let written = async {
            self.out.write_all(&self.buf).await?;
            self.out.flush().await
        };
        written.await.map_err(|e| SendFailure {
            accepted: 0,
            error: SinkError::Stdout(e),
        })
    }
}

/// The stdout sink's JSON shape: flat, with the pod metadata when there is a pod.
pub fn to_json(record: &Record, route: &str, sink: &str) -> Value {
    let c = &record.container;
    let mut obj = Map::new();
    obj.insert(
        "time".into(),
        json!(
            record
                .timestamp
                .to_datetime()
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        ),
    );
    obj.insert("route".into(), json!(route));
    obj.insert("sink".into(), json!(sink));
    obj.insert("node".into(), json!(c.node));
    obj.insert("container_id".into(), json!(c.short_id()));
    obj.insert("container_name".into(), json!(c.display_name()));
    obj.insert("image".into(), json!(c.image));
    if let Some(pod) = &c.pod {
        obj.insert("namespace".into(), json!(pod.namespace));
        obj.insert("pod".into(), json!(pod.name));
        obj.insert("pod_uid".into(), json!(pod.uid));
        obj.insert("labels".into(), json!(pod.labels));
    } else {
        obj.insert("docker_name".into(), json!(c.name));
    }
    obj.insert("stream".into(), json!(record.stream.as_str()));
    obj.insert("message".into(), json!(record.message));
    if record.truncated {
        obj.insert("truncated".into(), json!(true));
    }
    Value::Object(obj)
}
