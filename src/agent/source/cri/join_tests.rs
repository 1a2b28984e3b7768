use proptest::prelude::*;

use super::*;
use crate::agent::source::cri::parse::parse_entry;

const T0: &str = "2024-05-01T10:00:00.000000001Z";

fn ts(n: u32) -> String {
    format!("2024-05-01T10:00:{:02}.{:09}Z", n / 1000 % 60, n)
}

/// A CRI log line as the runtime writes it.
fn line(n: u32, stream: &str, partial: bool, msg: &[u8]) -> Vec<u8> {
    let tag = if partial { "P" } else { "F" };
    let mut l = format!("{} {stream} {tag} ", ts(n)).into_bytes();
    l.extend_from_slice(msg);
    l.push(b'\n');
    l
}

/// Feeds every complete line of `file` from `from` through the joiner, as the reader
/// does; returns the records and how many lines were not entries.
fn feed(j: &mut Joiner, file: &[u8], from: u64) -> (Vec<CriRecord>, usize) {
    let mut out = Vec::new();
    let mut malformed = 0;
    let mut at = from as usize;
    while let Some(i) = file[at..].iter().position(|&b| b == b'\n') {
        let end = (at + i + 1) as u64;
        match parse_entry(&file[at..at + i]) {
            Ok(e) => j.entry(&e, at as u64, end, &mut out),
            Err(_) => {
                malformed += 1;
                j.skip_line(end);
            }
        }
        at += i + 1;
    }
    (out, malformed)
}

fn joiner(max: usize) -> Joiner {
    Joiner::new(&FilePosition::default(), max, None)
}

fn messages(records: &[CriRecord]) -> Vec<(StreamName, String, bool)> {
    records
        .iter()
        .map(|r| (r.stream, r.message.clone(), r.truncated))
        .collect()
}

#[test]
fn partials_are_joined_with_the_first_timestamp() {
    let file = [
        line(1, "stdout", true, b"hello "),
        line(2, "stdout", true, b"big "),
        line(3, "stdout", false, b"world"),
        line(4, "stderr", false, b"alone"),
    ]
    .concat();
    let (out, bad) = feed(&mut joiner(1 << 20), &file, 0);
    assert_eq!(bad, 0);
    assert_eq!(
        messages(&out),
        [
            (StreamName::Stdout, "hello big world".into(), false),
            (StreamName::Stderr, "alone".into(), false)
        ]
    );
    assert_eq!(out[0].timestamp.nanos, 1);
    assert_eq!(out[1].position.offset, file.len() as u64);
    assert_eq!(out[1].position.skip, None);
}

#[test]
fn crlf_empty_messages_and_utf8_split_between_partials() {
    let file = [
        line(1, "stdout", false, b"dos\r"),
        line(2, "stdout", true, b"split crlf\r"),
        line(3, "stdout", false, b""),
        line(4, "stdout", false, b""),
        format!("{T0} stdout F\n").into_bytes(),
        line(5, "stdout", true, b"euro \xe2\x82"),
        line(6, "stdout", false, b"\xac!"),
        line(7, "stderr", false, b"bad \xff byte"),
        // A CR inside a line stays.
        line(8, "stdout", false, b"a\rb"),
    ]
    .concat();
    let (out, bad) = feed(&mut joiner(1 << 20), &file, 0);
    assert_eq!(bad, 0);
    let got: Vec<String> = out.iter().map(|r| r.message.clone()).collect();
    assert_eq!(
        got,
        [
            "dos",
            "split crlf",
            "",
            "",
            "euro €!",
            "bad \u{fffd} byte",
            "a\rb"
        ]
    );
}

#[test]
fn hostile_lines_are_skipped_or_kept_whole() {
    let file = [
        b"\n".to_vec(),
        b"not a log line at all\n".to_vec(),
        format!("{T0}\n").into_bytes(),
        format!("{T0} stdin F nope\n").into_bytes(),
        format!("{T0} stdout\n").into_bytes(),
        // No tag: kept, starting after the stream.
        format!("{T0} stdout hello there\n").into_bytes(),
        // Tags beyond the first are ignored.
        format!("{T0} stdout P:x:y part\n").into_bytes(),
        format!("{T0} stdout F:z -ial\n").into_bytes(),
        b"2024-13-01T00:00:00Z stdout F bad month\n".to_vec(),
    ]
    .concat();
    let (out, bad) = feed(&mut joiner(1 << 20), &file, 0);
    assert_eq!(bad, 5);
    let got: Vec<String> = out.iter().map(|r| r.message.clone()).collect();
    assert_eq!(got, ["", "hello there", "part-ial"]);
}

#[test]
fn a_ten_mib_line_that_never_ends_costs_one_record_and_bounded_memory() {
    let max = 64 * 1024;
    let mut j = joiner(max);
    let chunk = vec![b'x'; 16 * 1024];
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut peak = 0;
    for n in 0..640 {
        let l = line(n, "stdout", true, &chunk);
        let e = parse_entry(&l[..l.len() - 1]).unwrap();
        j.entry(&e, at, at + l.len() as u64, &mut out);
        at += l.len() as u64;
        peak = peak.max(j.pending_bytes());
        // The other stream goes on meanwhile.
        let l = line(n, "stderr", false, b"beside");
        let e = parse_entry(&l[..l.len() - 1]).unwrap();
        j.entry(&e, at, at + l.len() as u64, &mut out);
        at += l.len() as u64;
    }
    assert!(peak <= max, "held {peak} bytes for a {max}-byte limit");
    let cut: Vec<&CriRecord> = out
        .iter()
        .filter(|r| r.stream == StreamName::Stdout)
        .collect();
    assert_eq!(cut.len(), 1);
    assert!(cut[0].truncated);
    assert_eq!(cut[0].message.len(), max);
    assert_eq!(out.len(), 641);
    assert!(j.position().dropping[0]);
    // Its end, then a normal line.
    let tail = [
        line(700, "stdout", false, b"end"),
        line(701, "stdout", false, b"next"),
    ]
    .concat();
    let mut file = vec![0u8; at as usize];
    file.extend_from_slice(&tail);
    let (more, _) = feed(&mut j, &file, at);
    assert_eq!(
        messages(&more),
        [(StreamName::Stdout, "next".into(), false)]
    );
    assert!(!j.position().dropping[0]);
}

#[test]
fn a_cut_keeps_whole_characters() {
    let mut j = joiner(5);
    let file = line(1, "stdout", false, "abcd€".as_bytes());
    let (out, _) = feed(&mut j, &file, 0);
    assert_eq!(out[0].message, "abcd");
    assert!(out[0].truncated);
}

#[test]
fn a_line_exactly_at_the_limit_is_whole() {
    let file = [
        line(1, "stdout", true, b"abc"),
        line(2, "stdout", false, b"de"),
        line(3, "stdout", false, b"abcdef"),
    ]
    .concat();
    let (out, _) = feed(&mut joiner(5), &file, 0);
    assert_eq!(
        messages(&out),
        [
            (StreamName::Stdout, "abcde".into(), false),
            (StreamName::Stdout, "abcde".into(), true)
        ]
    );
}

#[test]
fn since_filters_by_the_first_entry_s_time() {
    let file = [
        line(1, "stdout", true, b"old "),
        line(9, "stdout", false, b"line"),
        line(10, "stdout", false, b"new"),
    ]
    .concat();
    let since = crate::agent::docker::parse_timestamp(ts(5).as_bytes());
    let mut j = Joiner::new(&FilePosition::default(), 100, since);
    let (out, _) = feed(&mut j, &file, 0);
    assert_eq!(messages(&out), [(StreamName::Stdout, "new".into(), false)]);
}

#[test]
fn flush_hands_out_lines_without_their_end() {
    let file = [
        line(1, "stdout", true, b"never "),
        line(2, "stdout", true, b"ended"),
    ]
    .concat();
    let mut j = joiner(100);
    let (out, _) = feed(&mut j, &file, 0);
    assert!(out.is_empty());
    assert_eq!(
        j.position().offset,
        0,
        "a line in progress keeps the position"
    );
    let mut out = Vec::new();
    j.flush(&mut out);
    assert_eq!(out[0].message, "never ended");
    assert_eq!(out[0].position.offset, file.len() as u64);
}

#[test]
fn encoded_positions_round_trip_and_reject_garbage() {
    let p = FilePosition {
        file: FileId {
            dev: 2049,
            ino: 1 << 40,
        },
        restart: 7,
        fingerprint: 0xdead_beef,
        offset: 123_456,
        skip: Some((StreamName::Stderr, 200_000)),
        dropping: [true, false],
    };
    assert_eq!(FilePosition::decode(&p.encode()), Some(p));
    assert_eq!(
        FilePosition::decode(&FilePosition::default().encode()),
        Some(FilePosition::default())
    );
    let mut bad = p.encode();
    bad[28] |= 0x40;
    assert_eq!(FilePosition::decode(&bad), None);
    assert_eq!(FilePosition::decode(&p.encode()[1..]), None);
}

/// One entry of a generated log: stream, tag, message.
fn entries() -> impl Strategy<Value = Vec<(bool, bool, Vec<u8>)>> {
    let message = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..12),
        Just(b"\r".to_vec()),
        Just(vec![0xe2, 0x82]),
        Just(vec![0xac]),
    ]
    .prop_map(|m: Vec<u8>| m.into_iter().filter(|&b| b != b'\n').collect::<Vec<u8>>());
    proptest::collection::vec((any::<bool>(), any::<bool>(), message), 0..40)
}

fn render(entries: &[(bool, bool, Vec<u8>)]) -> Vec<u8> {
    entries
        .iter()
        .enumerate()
        .flat_map(|(n, (stderr, partial, m))| {
            line(
                n as u32,
                if *stderr { "stderr" } else { "stdout" },
                *partial,
                m,
            )
        })
        .collect()
}

proptest! {
    /// Resuming from the position after any record yields exactly the records after it,
    /// whatever the interleaving of partial lines, cuts and bytes.
    #[test]
    fn resuming_from_any_position_repeats_and_loses_nothing(
        entries in entries(),
        max in 1usize..24,
    ) {
        let file = render(&entries);
        let mut j = Joiner::new(&FilePosition::default(), max, None);
        let (all, bad) = feed(&mut j, &file, 0);
        prop_assert_eq!(bad, 0);
        for r in &all {
            // Invalid bytes become U+FFFD: one character per byte at most.
            prop_assert!(r.message.chars().count() <= max);
        }
        for (i, r) in all.iter().enumerate() {
            let p = FilePosition::decode(&r.position.encode()).unwrap();
            let mut resumed = Joiner::new(&p, max, None);
            let (rest, _) = feed(&mut resumed, &file, p.offset);
            prop_assert_eq!(messages(&rest), messages(&all[i + 1..]), "resumed after record {}", i);
            prop_assert_eq!(resumed.position(), j.position());
        }
    }

    /// Any bytes: no panic, memory within the limit.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        max in 1usize..32,
    ) {
        let mut with_prefix = format!("{T0} stdout P ").into_bytes();
        with_prefix.extend_from_slice(&bytes);
        for file in [bytes.clone(), with_prefix] {
            let mut j = joiner(max);
            let _ = feed(&mut j, &file, 0);
            prop_assert!(j.pending_bytes() <= 2 * max);
            let mut out = Vec::new();
            j.flush(&mut out);
        }
    }
}
