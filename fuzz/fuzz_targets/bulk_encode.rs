//! The `_bulk` encoder: any records and index template give NDJSON whose every line is
//! one JSON object, two lines per record, and any subset of records re-encodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logroute::record::LogPosition;
use logroute::sink::elasticsearch::encode::Encoder;
use logroute::sink::elasticsearch::index::IndexTemplate;

#[path = "common.rs"]
mod common;
use common::{Input, container, record};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let template = input.string();
    let Ok(template) = IndexTemplate::parse(&template) else {
        return;
    };
    let node = input.string();
    let encoder = Encoder::new(template, node);
    let containers = [container(&mut input), container(&mut input)];
    let mut records = Vec::new();
    while !input.is_empty() && records.len() < 64 {
        let which = usize::from(input.byte() % 2);
        records.push(record(&mut input, &containers[which]));
    }
    // Positions as a reader would give them: the n-th record stamped the same
    // timestamp on its stream is frame n of that timestamp.
    let mut seen = std::collections::HashMap::new();
    let positions: Vec<LogPosition> = records
        .iter()
        .map(|r| {
            let n = seen
                .entry((r.container.id.clone(), r.stream, r.timestamp))
                .or_insert(0u32);
            *n += 1;
            LogPosition {
                timestamp: r.timestamp,
                seen: *n,
            }
        })
        .collect();
    let batch = encoder.encode(&records, &positions);
    assert_eq!(batch.spans.len(), records.len());
    let all: Vec<usize> = (0..records.len()).rev().collect();
    let body = batch.body_for(&all);
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    assert_eq!(lines.len(), 2 * records.len() + 1, "two lines per record");
    assert!(
        lines.last().is_some_and(|l| l.is_empty()),
        "ends with a newline"
    );
    for line in &lines[..lines.len() - 1] {
        let v: serde_json::Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(line)));
        assert!(v.is_object());
    }
});
