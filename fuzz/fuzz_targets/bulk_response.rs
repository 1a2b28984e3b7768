//! The `_bulk` response classifier on any status and body: never panics, and an item
//! verdict has exactly one outcome per document sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logroute::sink::elasticsearch::retry::{Verdict, classify};

fuzz_target!(|data: &[u8]| {
    let (head, body) = data.split_at(data.len().min(3));
    let head = [head.first(), head.get(1), head.get(2)].map(|b| b.copied().unwrap_or(0));
    let status = 100 + u16::from_le_bytes([head[0], head[1]]) % 500;
    let sent = usize::from(head[2]);
    if let Verdict::Items(items) = classify(status, body, sent) {
        assert_eq!(items.len(), sent, "one outcome per document");
    }
});
