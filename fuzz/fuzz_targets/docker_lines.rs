//! Docker frames (timestamp prefix, partial-line marks) through the line assembler:
//! memory stays bounded by the line limit, and nothing panics on any byte sequence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logroute::agent::docker::{Cursor, Frame, LineAssembler, parse_timestamp, split_frame};
use logroute::record::Timestamp;

#[path = "common.rs"]
mod common;
use common::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let tty = input.byte() % 4 == 0;
    let max = 1 + usize::from(input.byte()) * 8;
    let start = Timestamp {
        secs: 1_700_000_000 + i64::from(input.byte()),
        nanos: 0,
    };
    let mut asm = LineAssembler::new(Cursor::at(start), max, tty);
    let mut out = Vec::new();
    while !input.is_empty() {
        let kind = input.byte();
        let raw = input.bytes();
        let _ = parse_timestamp(raw);
        let _ = split_frame(raw);
        // Most frames get a well-formed timestamp so that the assembler's paths beyond
        // the prefix are reached; some are fed as they came.
        let framed;
        let payload: &[u8] = if kind & 0x80 == 0 {
            let secs = 1_700_000_000 + i64::from(kind & 0x3f);
            let ts = chrono::DateTime::from_timestamp(secs, u32::from(kind) * 1_000_003)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S%.9fZ ");
            framed = [ts.to_string().as_bytes(), raw].concat();
            &framed
        } else {
            raw
        };
        let frame = match kind % 3 {
            0 => Frame::Stdout(payload),
            1 => Frame::Stderr(payload),
            _ => Frame::Console(payload),
        };
        asm.push(frame, &mut out);
        if kind == 0x7f {
            asm.restart(asm.cursor());
        }
    }
    asm.flush(&mut out);
    for line in &out {
        // Invalid UTF-8 becomes U+FFFD (3 bytes for 1): the bound is on the raw bytes.
        assert!(
            line.message.len() <= 3 * max,
            "line of {} bytes past the limit {max}",
            line.message.len()
        );
    }
});
