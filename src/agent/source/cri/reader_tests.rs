use std::fs::OpenOptions;
use std::io::Write as _;

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::api::StreamName;

fn ts(n: u32) -> String {
    format!("2024-05-01T10:{:02}:{:02}.{:09}Z", n / 60 % 60, n % 60, n)
}

fn entry(n: u32, stream: &str, partial: bool, msg: &str) -> String {
    format!(
        "{} {stream} {} {msg}\n",
        ts(n),
        if partial { "P" } else { "F" }
    )
}

fn lines(from: u32, to: u32) -> String {
    (from..to)
        .map(|n| entry(n, "stdout", false, &format!("line {n}")))
        .collect()
}

fn append(path: &Path, text: &str) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

const OPTS: ReadOptions = ReadOptions {
    max_line_bytes: 1024,
    since: None,
    rotate_grace: Duration::ZERO,
};

fn read_all(r: &mut DirReader, drain: bool) -> (Vec<CriRecord>, u64) {
    let mut records = Vec::new();
    let mut malformed = 0;
    loop {
        let b = r.read(7, drain).unwrap();
        if b.is_empty() {
            return (records, malformed);
        }
        malformed += b.malformed;
        records.extend(b.records);
    }
}

fn texts(records: &[CriRecord]) -> Vec<String> {
    records.iter().map(|r| r.message.clone()).collect()
}

fn numbered(from: u32, to: u32) -> Vec<String> {
    (from..to).map(|n| format!("line {n}")).collect()
}

#[test]
fn rotation_by_rename_reads_the_old_file_to_its_end_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    append(&log, &lines(0, 10));
    let (mut r, missing) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
    assert_eq!(missing, None);
    let (got, _) = read_all(&mut r, false);
    assert_eq!(texts(&got), numbered(0, 10));
    // The kubelet renames; the runtime still writes to the renamed file until it
    // reopens.
    let rotated = dir.path().join("0.log.20240501-100000");
    std::fs::rename(&log, &rotated).unwrap();
    append(&rotated, &lines(10, 15));
    r.dir_changed();
    let (got, _) = read_all(&mut r, false);
    assert_eq!(texts(&got), numbered(10, 15));
    // Reopened: an empty new file is not a reason to leave the old one yet.
    append(&log, "");
    append(&rotated, &lines(15, 17));
    r.dir_changed();
    let (got, _) = read_all(&mut r, false);
    assert_eq!(texts(&got), numbered(15, 17));
    append(&log, &lines(17, 20));
    let (got, _) = read_all(&mut r, false);
    assert_eq!(texts(&got), numbered(17, 20));
    assert_eq!(
        r.position().file,
        FileId::of(&std::fs::metadata(&log).unwrap())
    );
}

#[test]
fn a_line_without_its_newline_is_not_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    let whole = entry(1, "stderr", false, "complete");
    append(&log, &whole[..whole.len() - 4]);
    let (mut r, _) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
    assert!(r.read(10, false).unwrap().is_empty());
    assert_eq!(r.position().offset, 0);
    append(&log, &whole[whole.len() - 4..]);
    let (got, _) = read_all(&mut r, false);
    assert_eq!(texts(&got), ["complete"]);
    assert_eq!(got[0].stream, StreamName::Stderr);
    assert_eq!(r.position().offset, whole.len() as u64);
}

#[test]
fn resume_in_a_rotated_file_then_after_it_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    append(&log, &lines(0, 10));
    let (mut r, _) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
    let (got, _) = read_all(&mut r, false);
    let saved = got[4].position;
    let rotated = dir.path().join("0.log.20240501-100000");
    std::fs::rename(&log, &rotated).unwrap();
    append(&log, &lines(10, 20));
    // The rotated file is still there: resume in it, then go on in the new one.
    let (mut r, missing) = DirReader::open(dir.path(), Start::At(saved), OPTS).unwrap();
    assert_eq!(missing, None);
    let (got, _) = read_all(&mut r, false);
    assert_eq!(texts(&got), numbered(5, 20));
    // Deleted: reported, and reading goes on at the oldest file left.
    std::fs::remove_file(&rotated).unwrap();
    let (mut r, missing) = DirReader::open(dir.path(), Start::At(saved), OPTS).unwrap();
    assert_eq!(missing, Some(Missing::Deleted));
    let (got, _) = read_all(&mut r, false);
    assert_eq!(texts(&got), numbered(10, 20));
    // Compressed siblings say where it most likely went.
    append(&dir.path().join("0.log.20240501-090000.gz"), "");
    let (_, missing) = DirReader::open(dir.path(), Start::At(saved), OPTS).unwrap();
    assert_eq!(missing, Some(Missing::Compressed));
}

#[test]
fn a_reused_inode_is_not_taken_for_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    append(&log, &lines(0, 3));
    let (mut r, _) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
    let (got, _) = read_all(&mut r, false);
    let mut saved = got[1].position;
    assert_ne!(saved.fingerprint, 0);
    // Same identity, other first line: as if the inode went to a new file.
    saved.fingerprint ^= 1;
    let (_, missing) = DirReader::open(dir.path(), Start::At(saved), OPTS).unwrap();
    assert_eq!(missing, Some(Missing::Deleted));
}

#[test]
fn restarts_are_read_in_order_and_drain_moves_on_without_new_writes() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("0.log"), &lines(0, 3));
    append(&dir.path().join("1.log.20240501-100000"), &lines(3, 6));
    append(&dir.path().join("1.log"), "");
    append(&dir.path().join("1.log.20240501-090000.gz"), "not read");
    append(&dir.path().join("1.log.20240501-100001.gz.tmp"), "not read");
    let (mut r, _) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
    let (got, _) = read_all(&mut r, false);
    assert_eq!(texts(&got), numbered(0, 6));
    append(
        &dir.path().join("1.log.20240501-100000"),
        &entry(6, "stdout", true, "no end"),
    );
    let (got, _) = read_all(&mut r, true);
    assert!(got.is_empty());
    assert_eq!(texts(&r.flush()), ["no end"]);
}

#[test]
fn a_file_line_longer_than_the_buffer_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    let big = "y".repeat(300 * 1024);
    append(&log, &entry(1, "stdout", false, &big));
    append(&log, &format!("garbage {big}\n"));
    append(&log, &entry(2, "stdout", false, "after"));
    let (mut r, _) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
    let (got, malformed) = read_all(&mut r, false);
    assert_eq!(malformed, 1);
    assert_eq!(got.len(), 2);
    assert!(got[0].truncated);
    assert_eq!(got[0].message.len(), 1024);
    assert_eq!(got[1].message, "after");
    assert!(r.buffered_bytes() <= 2 * LINE_BUFFER_MAX + CHUNK);
}

proptest! {
    /// Entries written in arbitrary pieces, with rotations in between, read with a stop
    /// and a resume from a saved position anywhere: every line once, in order.
    #[test]
    fn every_line_once_across_rotations_and_resumes(
        plan in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u8..6), 1..60),
        stop_at in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        append(&log, "");
        let mut expected: Vec<String> = Vec::new();
        let mut open_line: [Option<String>; 2] = [None, None];
        // A line whose entries span a rotation: a resume taken before it ends reads only
        // its part in the new file (see `Joiner::next_file`).
        let mut spans_rotation = [false, false];
        let mut got: Vec<CriRecord> = Vec::new();
        let (mut r, _) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
        let mut rotations = 0;
        let stop = stop_at.index(plan.len());
        for (n, (stderr, partial, action)) in plan.iter().enumerate() {
            let n = n as u32;
            let stream = if *stderr { "stderr" } else { "stdout" };
            let text = format!("{stream}{n}");
            append(&log, &entry(n, stream, *partial, &text));
            let slot = usize::from(*stderr);
            let joined = open_line[slot].take().unwrap_or_default() + &text;
            if *partial {
                open_line[slot] = Some(joined);
            } else {
                expected.push(joined);
                spans_rotation[slot] = false;
            }
            match action {
                0 => {
                    for s in 0..2 {
                        spans_rotation[s] |= open_line[s].is_some();
                    }
                    rotations += 1;
                    std::fs::rename(&log, dir.path().join(format!("0.log.20240501-1{rotations:05}"))).unwrap();
                    append(&log, "");
                    r.dir_changed();
                }
                1 | 2 => got.extend(read_all(&mut r, false).0),
                _ => {}
            }
            if n as usize == stop && spans_rotation == [false, false] {
                got.extend(read_all(&mut r, false).0);
                let at = r.position();
                let (again, missing) = DirReader::open(dir.path(), Start::At(at), OPTS).unwrap();
                prop_assert_eq!(missing, None);
                r = again;
            }
        }
        got.extend(read_all(&mut r, true).0);
        prop_assert_eq!(texts(&got), expected);
    }
}

#[test]
fn ten_mib_without_an_end_hold_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    // 10 MiB of partial entries, as a runtime writes a line that never ends...
    let chunk = "p".repeat(16 * 1024);
    let mut text = String::new();
    for n in 0..640 {
        text.push_str(&entry(n, "stdout", true, &chunk));
    }
    append(&log, &text);
    // ...and 10 MiB on the other stream in one file line without its newline.
    append(
        &log,
        &format!("{} stderr F {}", ts(1000), "q".repeat(10 << 20)),
    );
    let (mut r, _) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
    let mut got = Vec::new();
    let mut peak = 0;
    loop {
        let b = r.read(7, false).unwrap();
        peak = peak.max(r.buffered_bytes());
        if b.is_empty() {
            break;
        }
        got.extend(b.records);
    }
    let bound = 2 * LINE_BUFFER_MAX + CHUNK + 2 * OPTS.max_line_bytes;
    assert!(peak <= bound, "held {peak} bytes (bound {bound})");
    assert_eq!(got.len(), 1, "the partial line once, cut");
    assert!(got[0].truncated && got[0].stream == StreamName::Stdout);
    assert_eq!(got[0].message.len(), OPTS.max_line_bytes);
    // The unterminated stderr line is not consumed: the position stays before it.
    assert_eq!(r.position().offset, text.len() as u64);
    append(&log, "\n");
    append(&log, &entry(1001, "stdout", false, "end"));
    append(&log, &entry(1002, "stdout", false, "next"));
    let (more, _) = read_all(&mut r, false);
    let summary: Vec<(StreamName, bool, usize)> = more
        .iter()
        .map(|r| (r.stream, r.truncated, r.message.len()))
        .collect();
    assert_eq!(
        summary,
        [
            (StreamName::Stderr, true, 1024),
            (StreamName::Stdout, false, 4)
        ]
    );
}

#[test]
fn two_quick_rotations_leave_an_empty_file_between() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    append(&log, &lines(0, 3));
    let (mut r, _) = DirReader::open(dir.path(), Start::Beginning, OPTS).unwrap();
    assert_eq!(texts(&read_all(&mut r, false).0), numbered(0, 3));
    std::fs::rename(&log, dir.path().join("0.log.20240501-100000")).unwrap();
    append(&log, "");
    std::fs::rename(&log, dir.path().join("0.log.20240501-100001")).unwrap();
    append(&log, &lines(3, 6));
    r.dir_changed();
    assert_eq!(texts(&read_all(&mut r, false).0), numbered(3, 6));
}

#[test]
fn a_removed_directory_still_yields_the_open_file_to_its_end() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("app");
    std::fs::create_dir(&dir).unwrap();
    let log = dir.join("0.log");
    append(&log, &lines(0, 3));
    let (mut r, _) = DirReader::open(&dir, Start::Beginning, OPTS).unwrap();
    assert_eq!(texts(&read_all(&mut r, false).0), numbered(0, 3));
    // The last lines, then the pod's logs are removed while the file is open.
    append(&log, &lines(3, 5));
    std::fs::remove_dir_all(&dir).unwrap();
    r.dir_changed();
    assert_eq!(texts(&read_all(&mut r, true).0), numbered(3, 5));
    assert!(r.read(10, true).unwrap().is_empty());
}
