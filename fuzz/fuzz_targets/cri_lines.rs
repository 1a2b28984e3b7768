//! CRI log files (`<timestamp> <stream> <P|F> <message>` lines) through the parser and
//! the partial joiner: nothing panics on any bytes, memory stays within the line limit,
//! and resuming from the position after any record yields exactly the records after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logroute::agent::source::cri::{CriRecord, FilePosition, Joiner, parse_entry, parse_header};

#[path = "common.rs"]
mod common;
use common::Input;

/// Feeds the complete lines of `file` from `from`, as the reader does.
fn feed(j: &mut Joiner, file: &[u8], from: u64, max: usize) -> Vec<CriRecord> {
    let mut out = Vec::new();
    let mut at = from as usize;
    while let Some(i) = file[at..].iter().position(|&b| b == b'\n') {
        let line = &file[at..at + i];
        let end = (at + i + 1) as u64;
        let _ = parse_header(line);
        match parse_entry(line) {
            Ok(e) => j.entry(&e, at as u64, end, &mut out),
            Err(_) => j.skip_line(end),
        }
        // A line in progress per stream, each within the limit.
        assert!(
            j.pending_bytes() <= 2 * max,
            "held {} bytes for a limit of {max} per stream",
            j.pending_bytes()
        );
        at += i + 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max = 1 + usize::from(input.byte()) * 4;
    let pick = usize::from(input.byte());
    let mut file = Vec::new();
    while !input.is_empty() {
        let kind = input.byte();
        let raw = input.bytes();
        let _ = parse_entry(raw);
        // Most lines get a well-formed header so that the joiner's paths are reached;
        // some are taken as they came.
        if kind & 0x80 == 0 {
            let ts = chrono::DateTime::from_timestamp(1_700_000_000 + i64::from(kind), 7)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S%.9fZ");
            let stream = if kind & 1 == 0 { "stdout" } else { "stderr" };
            let tag = match (kind >> 1) & 3 {
                0 | 1 => "P",
                2 => "F",
                _ => "F:x",
            };
            file.extend_from_slice(format!("{ts} {stream} {tag} ").as_bytes());
        }
        file.extend_from_slice(raw);
        file.push(b'\n');
    }
    let mut j = Joiner::new(&FilePosition::default(), max, None);
    let all = feed(&mut j, &file, 0, max);
    for r in &all {
        assert!(r.message.chars().count() <= max);
        assert_eq!(FilePosition::decode(&r.position.encode()), Some(r.position));
    }
    if all.is_empty() {
        return;
    }
    let i = pick % all.len();
    let p = all[i].position;
    let mut resumed = Joiner::new(&p, max, None);
    let rest = feed(&mut resumed, &file, p.offset, max);
    let text = |rs: &[CriRecord]| -> Vec<(String, bool)> {
        rs.iter().map(|r| (r.message.clone(), r.truncated)).collect()
    };
    assert_eq!(text(&rest), text(&all[i + 1..]), "resumed after record {i}");
    assert_eq!(resumed.position(), j.position());
});
