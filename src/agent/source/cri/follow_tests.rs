use std::io::Write as _;
use std::path::PathBuf;

use super::*;

fn opts(poll: Duration) -> FollowOptions {
    FollowOptions {
        read: ReadOptions {
            max_line_bytes: 1024,
            since: None,
            rotate_grace: crate::agent::source::cri::ROTATE_GRACE,
        },
        batch_records: 100,
        poll,
    }
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn entry(msg: &str) -> String {
    format!("2024-05-01T10:00:00.000000001Z stdout F {msg}\n")
}

/// Writes after a delay, while the follower waits.
fn later(f: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        f();
    });
}

/// The next lines, within `within`.
async fn next(f: &mut Follower, within: Duration) -> Vec<String> {
    let batch = tokio::time::timeout(within, f.next_batch())
        .await
        .expect("woken before the deadline")
        .expect("read");
    batch.records.into_iter().map(|r| r.message).collect()
}

/// A new file, new lines and a rotation, each noticed while the follower waits.
async fn follow_through(f: &mut Follower, dir: PathBuf, within: Duration) {
    let log = dir.join("0.log");
    let l = log.clone();
    later(move || append(&l, &entry("first")));
    assert_eq!(next(f, within).await, ["first"]);
    let l = log.clone();
    later(move || append(&l, &entry("second")));
    assert_eq!(next(f, within).await, ["second"]);
    let (l, d) = (log.clone(), dir.clone());
    later(move || {
        let rotated = d.join("0.log.20240501-100000");
        std::fs::rename(&l, &rotated).unwrap();
        append(&rotated, &entry("third, in the renamed file"));
        append(&l, &entry("fourth, in the reopened file"));
    });
    let mut got = next(f, within).await;
    if got.len() < 2 {
        got.extend(next(f, within).await);
    }
    assert_eq!(
        got,
        ["third, in the renamed file", "fourth, in the reopened file"]
    );
}

#[tokio::test]
async fn inotify_wakes_the_follower_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let watcher = DirWatcher::start(stop.clone()).expect("inotify");
    // A poll interval longer than the test: only inotify can wake it.
    let (mut f, missing) = Follower::open(
        dir.path(),
        Start::Beginning,
        opts(Duration::from_secs(3600)),
        Some(&watcher),
    )
    .unwrap();
    assert_eq!(missing, None);
    assert!(f.is_watched());
    follow_through(&mut f, dir.path().to_path_buf(), Duration::from_secs(10)).await;
    drop(f);
    assert!(
        lock(&watcher.registry).is_empty(),
        "a dropped follower's watch is removed"
    );
    stop.cancel();
}

#[tokio::test]
async fn without_inotify_the_follower_polls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut f, _) = Follower::open(
        dir.path(),
        Start::Beginning,
        opts(Duration::from_millis(20)),
        None,
    )
    .unwrap();
    assert!(!f.is_watched());
    follow_through(&mut f, dir.path().to_path_buf(), Duration::from_secs(10)).await;
}
