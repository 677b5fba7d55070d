//! The queue directory itself: its lock cannot be bypassed by deleting a file.
mod common;
use common::*;
use mailq::*;
use std::io;
use std::path::Path;

#[test]
fn deleting_the_lock_file_does_not_let_a_second_owner_in() {
    let d = TempDir::new("lock-unlinked");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    let _ = std::fs::remove_file(d.path().join("LOCK"));
    match Queue::open(d.path(), Options::default()) {
        Err(Error::Locked(p)) => assert_eq!(p, d.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(q);
    Queue::open(d.path(), Options::default()).unwrap();
}

#[test]
fn another_process_cannot_lock_an_open_queue_directory() {
    let d = TempDir::new("lock-process");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    let flock = |dir: &Path| {
        std::process::Command::new("flock")
            .arg("-n")
            .arg(dir)
            .arg("true")
            .status()
    };
    let held = match flock(d.path()) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("flock(1) not installed; only the in-process lock is checked");
            drop(q);
            return;
        }
        Err(e) => panic!("running flock(1): {e}"),
    };
    assert!(!held.success(), "flock(1) got the queue directory: {held}");
    drop(q);
    assert!(flock(d.path()).unwrap().success());
}
