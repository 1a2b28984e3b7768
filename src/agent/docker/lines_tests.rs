//! Unit tests of [`LineAssembler`]: joining, cutting, TTY streams and resuming.

use super::*;
use crate::agent::docker::parse_timestamp;

const T1: &str = "2024-05-01T10:00:00.000000001Z";
const T2: &str = "2024-05-01T10:00:00.000000002Z";
const T3: &str = "2024-05-01T10:00:01.500000000Z";

fn frame(ts: &str, payload: &[u8]) -> Vec<u8> {
    let mut f = format!("{ts} ").into_bytes();
    f.extend_from_slice(payload);
    f
}

/// Frames of one read, tagged with their stream (`o`, `e`, `c` for console).
fn read(asm: &mut LineAssembler, frames: &[(char, Vec<u8>)]) -> Vec<LogLine> {
    let mut out = Vec::new();
    for (kind, bytes) in frames {
        let f = match kind {
            'o' => Frame::Stdout(bytes),
            'e' => Frame::Stderr(bytes),
            _ => Frame::Console(bytes),
        };
        assert_ne!(
            asm.push(f, &mut out),
            Pushed::NotLog,
            "frame {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    out
}

fn messages(lines: &[LogLine]) -> Vec<(StreamName, String)> {
    lines
        .iter()
        .map(|l| (l.stream, l.message.clone()))
        .collect()
}

#[test]
fn joins_partial_fragments_with_the_first_timestamp_and_strips_newlines() {
    let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
    let lines = read(
        &mut asm,
        &[
            ('o', frame(T1, b"aaa")),
            ('e', frame(T2, b"err line\r\n")),
            ('o', frame(T1, b"bbb")),
            ('o', frame(T1, b"ccc\n")),
            ('o', frame(T2, b"\n")),
        ],
    );
    assert_eq!(
        messages(&lines),
        vec![
            (StreamName::Stderr, "err line".to_string()),
            (StreamName::Stdout, "aaabbbccc".to_string()),
            (StreamName::Stdout, String::new()),
        ]
    );
    assert_eq!(
        lines[1].timestamp,
        parse_timestamp(T1.as_bytes()).expect("ts")
    );
    assert!(lines.iter().all(|l| !l.truncated));
}

#[test]
fn cuts_long_lines_at_the_limit_and_discards_the_rest_of_them() {
    let mut asm = LineAssembler::new(Cursor::default(), 5, false);
    let lines = read(
        &mut asm,
        &[
            ('o', frame(T1, b"abc")),
            ('o', frame(T1, b"defgh")),
            ('o', frame(T1, b"ij\n")),
            ('o', frame(T2, b"ok\n")),
        ],
    );
    assert_eq!(
        messages(&lines),
        vec![
            (StreamName::Stdout, "abcde".into()),
            (StreamName::Stdout, "ok".into())
        ]
    );
    assert_eq!([lines[0].truncated, lines[1].truncated], [true, false]);
    assert_eq!(asm.pending[0].as_ref().map(|p| p.bytes.len()), None);
}

#[test]
fn a_cut_never_splits_a_character() {
    // "é" is two bytes; the limit falls between them.
    let mut asm = LineAssembler::new(Cursor::default(), 4, false);
    let lines = read(&mut asm, &[('o', frame(T1, "abcé\n".as_bytes()))]);
    assert_eq!(lines[0].message, "abc");
    assert!(lines[0].truncated);
}

#[test]
fn invalid_utf8_is_replaced() {
    let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
    let lines = read(&mut asm, &[('o', frame(T1, b"\xff\xfe bad\n"))]);
    assert_eq!(lines[0].message, "\u{FFFD}\u{FFFD} bad");
}

#[test]
fn tty_chunks_lose_their_inner_timestamps_and_carriage_returns() {
    let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, true);
    let mut long = frame(T1, b"xxxx");
    long.extend_from_slice(&frame(T1, b"yyyy"));
    long.extend_from_slice(&frame(T1, b"zz\r\n"));
    let lines = read(
        &mut asm,
        &[
            ('c', long),
            ('c', frame(T2, b"next\r\n")),
            ('c', frame(T3, b"no newline")),
        ],
    );
    assert_eq!(
        messages(&lines),
        vec![
            (StreamName::Stdout, "xxxxyyyyzz".into()),
            (StreamName::Stdout, "next".into())
        ]
    );
    let mut out = Vec::new();
    asm.flush(&mut out);
    assert_eq!(
        messages(&out),
        vec![(StreamName::Stdout, "no newline".into())]
    );
}

#[test]
fn console_frames_of_a_multiplexed_stream_are_not_log() {
    let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
    let mut out = Vec::new();
    assert_eq!(
        asm.push(Frame::Console(b"Error grabbing logs: boom\n"), &mut out),
        Pushed::NotLog
    );
    assert_eq!(
        asm.push(Frame::Stdout(b"garbage"), &mut out),
        Pushed::NotLog
    );
    assert!(out.is_empty());
}

/// A log with long lines on stdout and stderr lines between their fragments.
fn log() -> Vec<(char, Vec<u8>)> {
    vec![
        ('o', frame(T1, b"one\n")),
        ('o', frame(T2, b"long-")),
        ('e', frame(T2, b"e1\n")),
        ('o', frame(T2, b"line\n")),
        ('e', frame(T3, b"e2\n")),
        ('o', frame(T2, b"late-")),
        ('o', frame(T2, b"stamped\n")),
        ('o', frame(T3, b"last\n")),
    ]
}

#[test]
fn a_restart_from_any_line_cursor_yields_exactly_the_following_lines() {
    let all = read(
        &mut LineAssembler::new(Cursor::default(), 1 << 20, false),
        &log(),
    );
    assert_eq!(all.len(), 6);
    for k in 0..all.len() {
        let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
        asm.restart(all[k].cursor);
        // Docker's `since` is whole seconds here: everything of this log is re-sent.
        let rest = read(&mut asm, &log());
        assert_eq!(
            messages(&rest),
            messages(&all[k + 1..]),
            "resuming after line {k}"
        );
        assert_eq!(asm.cursor(), all[all.len() - 1].cursor);
    }
}

#[test]
fn a_read_that_ends_mid_line_is_resumed_without_loss() {
    let frames = log();
    let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, false);
    // The first read stops after "long-" and "e1".
    let first = read(&mut asm, &frames[..3]);
    assert_eq!(
        messages(&first),
        vec![
            (StreamName::Stdout, "one".into()),
            (StreamName::Stderr, "e1".into())
        ]
    );
    asm.restart(asm.cursor());
    let second = read(&mut asm, &frames);
    assert_eq!(
        messages(&second),
        vec![
            (StreamName::Stdout, "long-line".into()),
            (StreamName::Stderr, "e2".into()),
            (StreamName::Stdout, "late-stamped".into()),
            (StreamName::Stdout, "last".into()),
        ]
    );
}

#[test]
fn a_long_line_is_handed_out_at_the_cut_without_waiting_for_its_newline() {
    let mut asm = LineAssembler::new(Cursor::default(), 5, false);
    let mut out = Vec::new();
    asm.push(Frame::Stdout(&frame(T1, b"abc")), &mut out);
    assert!(out.is_empty(), "not cut yet: {out:?}");
    asm.push(Frame::Stdout(&frame(T1, b"defgh")), &mut out);
    assert_eq!(messages(&out), vec![(StreamName::Stdout, "abcde".into())]);
    assert!(out[0].truncated);
    // Every later entry of this line is covered by the cut line's cursor.
    assert_eq!(out[0].cursor.stdout.seen, u32::MAX);
    for _ in 0..1000 {
        asm.push(Frame::Stdout(&frame(T1, b"more")), &mut out);
        let held = asm.pending[0].as_ref().map_or(0, |p| p.bytes.capacity());
        assert_eq!(held, 0, "bytes held for a cut line");
    }
    asm.push(Frame::Stdout(&frame(T1, b"end\n")), &mut out);
    asm.push(Frame::Stdout(&frame(T2, b"ok\n")), &mut out);
    assert_eq!(
        messages(&out),
        vec![
            (StreamName::Stdout, "abcde".into()),
            (StreamName::Stdout, "ok".into())
        ]
    );
    // Resuming from the cut line skips the rest of it.
    let mut again = LineAssembler::new(out[0].cursor, 5, false);
    let mut rest = Vec::new();
    for f in [&b"abc"[..], b"defgh", b"more", b"end\n"] {
        assert_eq!(
            again.push(Frame::Stdout(&frame(T1, f)), &mut rest),
            Pushed::Skipped
        );
    }
    again.push(Frame::Stdout(&frame(T2, b"ok\n")), &mut rest);
    assert_eq!(messages(&rest), vec![(StreamName::Stdout, "ok".into())]);
}

const T4: &str = "2024-05-01T10:00:02.000000000Z";
const T5: &str = "2024-05-01T10:00:03.000000000Z";

/// A TTY log as dockerd sends it: entries back to back, the pieces of a long line
/// (here 3 x 10 bytes, or 2 for the second long one) with their timestamp repeated.
fn tty_log() -> Vec<u8> {
    let x = "x".repeat(10);
    let mut log = String::new();
    log += &format!("{T1} one\r\n");
    log += &format!("{T2} {x}{T2} {x}{T2} {x}{T2} tail\r\n");
    log += &format!("{T3} two\r\n");
    log += &format!("{T4} 2024{T4} \r\n");
    log += &format!("{T5} last");
    log.into_bytes()
}

/// Feed `log` as TTY output in pieces of `size` bytes; `end` when the log is over.
fn read_tty(asm: &mut LineAssembler, log: &[u8], size: usize, end: bool) -> Vec<LogLine> {
    let mut out = Vec::new();
    for piece in log.chunks(size) {
        assert_ne!(asm.push(Frame::Console(piece), &mut out), Pushed::NotLog);
    }
    if end {
        asm.flush(&mut out);
    }
    out
}

#[test]
fn a_tty_line_is_cut_at_the_limit_whatever_the_pieces_it_comes_in() {
    for size in [1, 3, 31, 40, 1000] {
        let mut asm = LineAssembler::new(Cursor::default(), 15, true);
        let lines = read_tty(&mut asm, &tty_log(), size, true);
        let got: Vec<(&str, bool)> = lines
            .iter()
            .map(|l| (l.message.as_str(), l.truncated))
            .collect();
        assert_eq!(
            got,
            vec![
                ("one", false),
                ("xxxxxxxxxxxxxxx", true),
                ("two", false),
                ("2024", false),
                ("last", false)
            ],
            "pieces of {size} bytes"
        );
        assert!(lines.iter().all(|l| l.stream == StreamName::Stdout));
        assert_eq!(lines[1].timestamp, parse_timestamp(T2.as_bytes()).unwrap());
    }
}

#[test]
fn a_tty_read_resumed_from_any_line_cursor_yields_exactly_the_rest() {
    for max in [15, 1 << 20] {
        let all = read_tty(
            &mut LineAssembler::new(Cursor::default(), max, true),
            &tty_log(),
            7,
            true,
        );
        assert_eq!(all.len(), 5);
        for k in 0..all.len() {
            for size in [1, 7, 64] {
                let mut asm = LineAssembler::new(Cursor::default(), max, true);
                asm.restart(all[k].cursor);
                let rest = read_tty(&mut asm, &tty_log(), size, true);
                assert_eq!(
                    rest,
                    all[k + 1..].to_vec(),
                    "resuming after line {k} (limit {max}, pieces of {size})"
                );
            }
        }
    }
}

#[test]
fn a_tty_read_that_ends_mid_line_is_resumed_without_loss() {
    let log = tty_log();
    let all = read_tty(
        &mut LineAssembler::new(Cursor::default(), 1 << 20, true),
        &log,
        64,
        true,
    );
    // Stop inside the long line, at every byte of it.
    let start = 39;
    for stop in start..start + 90 {
        let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, true);
        let mut lines = read_tty(&mut asm, &log[..stop], 5, false);
        asm.restart(asm.cursor());
        lines.extend(read_tty(&mut asm, &log, 5, true));
        assert_eq!(lines, all, "a read stopped after {stop} bytes");
    }
}

#[test]
fn garbage_in_a_tty_stream_is_not_log() {
    let mut asm = LineAssembler::new(Cursor::default(), 1 << 20, true);
    let mut out = Vec::new();
    let mut bytes = frame(T1, b"ok\n");
    bytes.extend_from_slice(b"Error grabbing logs: boom\n");
    assert_eq!(asm.push(Frame::Console(&bytes), &mut out), Pushed::NotLog);
    assert_eq!(messages(&out), vec![(StreamName::Stdout, "ok".into())]);
}
