//! The CRI log-file follower against files a real containerd writes: pods and containers
//! created through containerd's CRI API (tests/support/containerd.rs), rotation done the
//! kubelet's way (rename, then ReopenContainerLog).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use logroute::agent::source::cri::{
    CriRecord, DirWatcher, FilePosition, FollowOptions, Follower, Missing, PodLogDir, ROTATE_GRACE,
    ReadOptions, Start,
};
use logroute::api::StreamName;
use support::containerd::Containerd;
use tokio_util::sync::CancellationToken;

const MAX_LINE: usize = 1024 * 1024;

fn options() -> FollowOptions {
    FollowOptions {
        read: ReadOptions {
            max_line_bytes: MAX_LINE,
            since: None,
            rotate_grace: ROTATE_GRACE,
        },
        batch_records: 500,
        poll: Duration::from_millis(500),
    }
}

fn follow(
    dir: &Path,
    start: Start,
    watcher: &std::sync::Arc<DirWatcher>,
) -> (Follower, Option<Missing>) {
    Follower::open(dir, start, options(), Some(watcher))
        .expect("open the container's log directory")
}

/// Reads until `done` says the records are complete, failing after `timeout`.
async fn read_until(
    f: &mut Follower,
    got: &mut Vec<CriRecord>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[CriRecord]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, f.next_batch()).await {
            Ok(batch) => {
                let batch = batch.expect("read the log");
                assert_eq!(batch.malformed, 0, "containerd wrote no malformed line");
                got.extend(batch.records);
            }
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {what}; have {} records, last {:?}",
                got.len(),
                got.last().map(|r| &r.message)
            ),
        }
    }
}

/// Reads an exited container's files to their end.
async fn read_to_end(f: &mut Follower, got: &mut Vec<CriRecord>) {
    loop {
        let batch = f.read_to_end().await.expect("read the log");
        if batch.is_empty() {
            break;
        }
        got.extend(batch.records);
    }
    got.extend(f.flush());
}

/// The directory's files with their inode and size, for failure messages.
fn listing(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let m = e.metadata().ok();
                    format!(
                        "{} (inode {}, {} bytes)",
                        e.file_name().to_string_lossy(),
                        m.as_ref().map(|m| m.ino()).unwrap_or_default(),
                        m.map(|m| m.len()).unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.join(", ")
}

fn texts(records: &[CriRecord], stream: StreamName) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.message.clone())
        .collect()
}

fn numbered(prefix: &str, from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("{prefix} {i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_once_in_order_a_long_line_whole_and_an_exited_container_to_its_end() {
    let Some(mut ctrd) = Containerd::start_or_skip().await else {
        return;
    };
    let stop = CancellationToken::new();
    let watcher = DirWatcher::start(stop.clone()).expect("inotify");
    let pod = ctrd.run_pod("shop", "web-1").await;
    let dir = pod.container_dir("app");
    std::fs::create_dir_all(&dir).unwrap();
    let (mut f, missing) = follow(&dir, Start::Beginning, &watcher);
    assert_eq!(missing, None);
    assert!(f.is_watched());

    let identity = PodLogDir::parse(&dir).expect("the kubelet's layout");
    assert_eq!(
        (
            identity.namespace.as_str(),
            identity.pod.as_str(),
            identity.container.as_str()
        ),
        ("shop", "web-1", "app")
    );
    assert_eq!(identity.uid, pod.uid);

    // 3000 lines on each stream, interleaved, then a 100 KiB line, then exit.
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done; \
                  head -c 102400 /dev/zero | tr '\\0' x; echo; echo last";
    let id = ctrd.run_container(&pod, "app", 0, script).await;
    let mut got = Vec::new();
    read_until(
        &mut f,
        &mut got,
        Duration::from_secs(60),
        "3000 lines per stream",
        |g| g.iter().filter(|r| r.stream == StreamName::Stderr).count() >= 3000,
    )
    .await;
    ctrd.wait_exit(&id, Duration::from_secs(30)).await;
    read_to_end(&mut f, &mut got).await;

    assert_eq!(texts(&got, StreamName::Stderr), numbered("err", 0, 3000));
    let out = texts(&got, StreamName::Stdout);
    assert_eq!(out.len(), 3002, "3000 lines, the long one and `last`");
    assert_eq!(out[..3000], numbered("out", 0, 3000)[..]);
    assert_eq!(out[3000], "x".repeat(102400), "the 100 KiB line whole");
    assert_eq!(out[3001], "last");
    assert!(got.iter().all(|r| !r.truncated));
    // containerd did split it: 16 KiB entries tagged P, then one F.
    let file = std::fs::read(dir.join("0.log")).unwrap();
    let partials = file
        .split(|&b| b == b'\n')
        .filter(|l| l.windows(10).any(|w| w == b" stdout P "))
        .count();
    assert_eq!(
        partials, 6,
        "102400 bytes in 16 KiB entries: 6 partial, 1 full"
    );
    // Timestamps never go back within a stream, and positions only forward.
    for pair in got.windows(2) {
        assert!(
            pair[0].position.offset <= pair[1].position.offset
                || pair[0].position.file != pair[1].position.file
        );
    }
    assert_eq!(
        f.position().offset,
        file.len() as u64,
        "read to the end of the file"
    );

    ctrd.remove_pod(&pod).await;
    stop.cancel();
    ctrd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_and_reopen_mid_stream_loses_and_repeats_nothing() {
    let Some(mut ctrd) = Containerd::start_or_skip().await else {
        return;
    };
    let stop = CancellationToken::new();
    let watcher = DirWatcher::start(stop.clone()).expect("inotify");
    let pod = ctrd.run_pod("shop", "rotating").await;
    let dir = pod.container_dir("app");
    std::fs::create_dir_all(&dir).unwrap();
    let (mut f, _) = follow(&dir, Start::Beginning, &watcher);
    // N lines on each stream; the two streams move to a reopened file one after the
    // other, so both matter.
    const N: usize = 10_000;
    let script = format!(
        "i=0; while [ $i -lt {N} ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); if [ $((i % 250)) = 0 ]; then usleep 20000; fi; done; sleep 3600"
    );
    let id = ctrd.run_container(&pod, "app", 0, &script).await;
    let mut got = Vec::new();
    let mut saved: Option<(FilePosition, usize)> = None;
    let mut rotations = 0;
    let mut next_rotation_at = 1000;
    while got.len() < 2 * N {
        let batch = tokio::time::timeout(Duration::from_secs(60), f.next_batch())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no line for 60 s; have {} of {}, at {:?}; files: {}",
                    got.len(),
                    2 * N,
                    f.position(),
                    listing(&dir)
                )
            })
            .expect("read the log");
        got.extend(batch.records);
        if got.len() >= next_rotation_at && rotations < 8 {
            ctrd.rotate(&pod, "app", 0, &id).await;
            rotations += 1;
            next_rotation_at += 2000;
            if rotations == 3 {
                saved = got.last().map(|r| (r.position, got.len()));
            }
        }
    }
    assert_eq!(texts(&got, StreamName::Stdout), numbered("line", 0, N));
    assert_eq!(texts(&got, StreamName::Stderr), numbered("err", 0, N));
    assert!(rotations >= 5, "rotated {rotations} times mid-stream");
    let written_rotated = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("0.log."))
        .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        .count();
    assert!(
        written_rotated >= 3,
        "rotations came while the container wrote: {}",
        listing(&dir)
    );
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        files,
        rotations + 1,
        "one rotated file per rotation and the current one"
    );

    // A lane that stopped before later rotations resumes across the rotated files still
    // on disk: exactly the rest.
    let (at, seen) = saved.expect("a position saved after the third rotation");
    let (mut resumed, missing) = follow(&dir, Start::At(at), &watcher);
    assert_eq!(missing, None);
    let mut rest = Vec::new();
    read_until(
        &mut resumed,
        &mut rest,
        Duration::from_secs(30),
        "the rest",
        |g| g.len() >= 2 * N - seen,
    )
    .await;
    assert_eq!(
        rest[..],
        got[seen..],
        "exactly the records after the saved one"
    );
    ctrd.stop_container(&id).await;
    read_to_end(&mut resumed, &mut rest).await;
    assert_eq!(
        rest.len(),
        2 * N - seen,
        "nothing more after the container stopped"
    );

    ctrd.remove_pod(&pod).await;
    stop.cancel();
    ctrd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_rotated_file_was_deleted_counts_it_missing() {
    let Some(mut ctrd) = Containerd::start_or_skip().await else {
        return;
    };
    let stop = CancellationToken::new();
    let watcher = DirWatcher::start(stop.clone()).expect("inotify");
    let pod = ctrd.run_pod("shop", "deleted").await;
    let dir = pod.container_dir("app");
    std::fs::create_dir_all(&dir).unwrap();
    let id = ctrd
        .run_container(
            &pod,
            "app",
            0,
            "i=0; while true; do echo \"tick $i\"; i=$((i+1)); usleep 2000; done",
        )
        .await;
    let number = |r: &CriRecord| -> usize {
        r.message
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {:?}", r.message))
    };

    let (mut f, _) = follow(&dir, Start::Beginning, &watcher);
    let mut got = Vec::new();
    read_until(
        &mut f,
        &mut got,
        Duration::from_secs(30),
        "100 ticks",
        |g| g.len() >= 100,
    )
    .await;
    let saved = got[49].position;

    // Rotate, and once the new file has lines, delete the rotated one: the ticks after
    // the saved position in it are gone.
    let rotated = ctrd.rotate(&pod, "app", 0, &id).await;
    let before = got.len();
    read_until(
        &mut f,
        &mut got,
        Duration::from_secs(30),
        "ticks in the new file",
        |g| g.len() > before && g.last().unwrap().position.file != saved.file,
    )
    .await;
    let in_rotated = got.iter().filter(|r| r.position.file == saved.file).count();
    std::fs::remove_file(&rotated).unwrap();

    let (mut resumed, missing) = follow(&dir, Start::At(saved), &watcher);
    assert_eq!(missing, Some(Missing::Deleted));
    let mut rest = Vec::new();
    read_until(
        &mut resumed,
        &mut rest,
        Duration::from_secs(30),
        "200 ticks after the gap",
        |g| g.len() >= 200,
    )
    .await;
    let numbers: Vec<usize> = rest.iter().map(number).collect();
    assert_eq!(
        numbers[0], in_rotated,
        "reading went on at the first line of the new file (the rotated file held ticks 0..{in_rotated})"
    );
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive after the gap"
    );
    assert!(rest.iter().all(|r| r.position.file != saved.file));

    ctrd.remove_pod(&pod).await;
    stop.cancel();
    ctrd.shutdown().await;
}
