//! Turning fuzz bytes into structured input, shared by the targets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use logroute::api::StreamName;
use logroute::record::{ContainerInfo, PodInfo, Record, Timestamp};

/// Reads fields off the input: single bytes, and strings cut at NUL separators.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Bytes up to the next NUL (or the end).
    pub fn bytes(&mut self) -> &'a [u8] {
        let end = self
            .data
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.data.len());
        let (field, rest) = self.data.split_at(end);
        self.data = rest.get(1..).unwrap_or_default();
        field
    }

    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A container (pod or host) whose every name and label comes from the input.
pub fn container(input: &mut Input<'_>) -> Arc<ContainerInfo> {
    let is_pod = input.byte() % 2 == 0;
    let mut labels = BTreeMap::new();
    for _ in 0..input.byte() % 3 {
        labels.insert(input.string(), input.string());
    }
    Arc::new(ContainerInfo {
        id: input.string(),
        name: input.string(),
        image: input.string(),
        node: input.string(),
        pod: is_pod.then(|| PodInfo {
            namespace: input.string(),
            name: input.string(),
            uid: input.string(),
            container_name: input.string(),
            labels: labels.clone(),
            annotations: BTreeMap::new(),
            owner_kind: None,
            owner_name: None,
        }),
        labels,
    })
}

pub fn record(input: &mut Input<'_>, container: &Arc<ContainerInfo>) -> Arc<Record> {
    let stream = if input.byte() % 2 == 0 {
        StreamName::Stdout
    } else {
        StreamName::Stderr
    };
    let secs =
        i64::from(input.u16()) * 40_000 + 1_600_000_000 - i64::from(input.byte()) * 1_000_000_000;
    Arc::new(Record {
        container: container.clone(),
        stream,
        timestamp: Timestamp {
            secs,
            nanos: u32::from(input.u16()) * 15_259,
        },
        message: input.string(),
        truncated: input.byte() % 7 == 0,
    })
}
