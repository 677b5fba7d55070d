//! Real-process soak: a child process enqueues and delivers, logging each
//! acknowledged message (after `enqueue` returned) and each durable completion
//! (after `sync` returned); the parent kills it with SIGKILL at random moments,
//! reopens the queue and checks it against the log.
//!
//! `cargo test --release --test soak` runs 100 cycles; set MAILQ_SOAK_CYCLES=10000
//! for the long mode. The child is the ignored test `soak_child`, which the
//! parent runs as `<this test binary> --ignored --exact soak_child` with
//! MAILQ_SOAK_CHILD naming the directory; it is never run (or passed) on its own.
use mailq::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "MAILQ_SOAK_CHILD";

/// The child process of `sigkill_soak`: enqueues and delivers until killed.
/// Ignored, so an ordinary run never counts it as a passing test; run by hand
/// without MAILQ_SOAK_CHILD it fails instead of passing vacuously.
#[test]
#[ignore = "the child process of sigkill_soak, which starts it; runs until killed"]
fn soak_child() {
    let dir = std::env::var(CHILD_ENV).unwrap_or_else(|_| {
        panic!("{CHILD_ENV} is not set: soak_child is started by sigkill_soak, not run alone")
    });
    let dir = PathBuf::from(dir);
    let seed: u64 = std::env::var("MAILQ_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let q = Queue::open(dir.join("q"), Options::default()).expect("child open");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("acks.log"))
        .expect("log");
    let mut x = seed | 1;
    for i in 0u64.. {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let body = format!("soak {seed} {i}");
        let id = q
            .enqueue(&NewMessage {
                sender: "s@soak.example",
                recipients: vec![
                    format!("a{i}@d{}.example", x % 5).into(),
                    format!("b{i}@d{}.example", (x >> 8) % 5).into(),
                ],
                meta: b"",
                body: body.as_bytes(),
            })
            .expect("enqueue");
        log.write_all(format!("E {} {}\n", id.0, body).as_bytes())
            .expect("log");
        if i % 3 == 0 {
            if let Some(mut s) = q.next_session().expect("session") {
                if let Some(d) = s.next_delivery().expect("delivery") {
                    let (id, idx) = (d.id(), d.indices().to_vec());
                    let n = idx.len();
                    // Intent first: from here the completion may become durable at any moment.
                    for k in &idx {
                        log.write_all(format!("C {} {k}\n", id.0).as_bytes())
                            .expect("log");
                    }
                    d.complete(&vec![Outcome::Delivered; n]).expect("complete");
                    q.sync().expect("sync");
                    for k in idx {
                        log.write_all(format!("D {} {k}\n", id.0).as_bytes())
                            .expect("log");
                    }
                }
            }
        }
    }
}

fn check(dir: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(dir.join("acks.log")).unwrap_or_default();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut done: BTreeSet<(u64, u32)> = BTreeSet::new();
    let mut maybe: BTreeSet<(u64, u32)> = BTreeSet::new();
    for line in text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.len() > 1)
    {
        let f: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
        match f.as_slice() {
            ["E", id, body] => {
                acked.insert(id.parse().unwrap(), body.to_string());
            }
            ["C", id, k] => {
                maybe.insert((id.parse().unwrap(), k.parse().unwrap()));
            }
            ["D", id, k] => {
                done.insert((id.parse().unwrap(), k.parse().unwrap()));
            }
            _ => panic!("bad log line {line:?}"),
        }
    }
    let q = Queue::open(dir.join("q"), Options::default()).expect("parent open");
    assert_eq!(
        q.recovery_report().corrupt_count(),
        0,
        "{:?}",
        q.recovery_report()
    );
    for id in acked.keys() {
        let info = q.inspect(MessageId(*id));
        for k in 0..2u32 {
            let st = info.as_ref().ok().map(|m| m.recipients[k as usize].state);
            if maybe.contains(&(*id, k)) && !done.contains(&(*id, k)) {
                continue; // completed when the child died: either state is right
            }
            if done.contains(&(*id, k)) {
                assert!(
                    st.is_none_or(|s| s.is_final()),
                    "{id}#{k} was delivered durably but is back: {st:?}"
                );
            } else {
                assert!(
                    st.is_some_and(|s| !s.is_final()),
                    "acknowledged {id}#{k} lost: {st:?}"
                );
            }
        }
    }
    (acked.len(), done.len())
}

#[test]
fn sigkill_soak() {
    let cycles: usize = std::env::var("MAILQ_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("mailq-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let (mut acked, mut done) = (0, 0);
    for cycle in 0..cycles {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A line cut by the kill would run into the next child's first line.
        let logp = dir.join("acks.log");
        if std::fs::read(&logp).is_ok_and(|d| d.last().is_some_and(|&b| b != b'\n')) {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&logp)
                .unwrap()
                .write_all(b"\n")
                .unwrap();
        }
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "soak_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env("MAILQ_SOAK_SEED", cycle.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + x % 60));
        // SAFETY: sending SIGKILL to our own child's pid.
        unsafe { libc_kill(child.id() as i32, 9) };
        let _ = child.wait();
        (acked, done) = check(&dir);
    }
    eprintln!("soak cycles run: {cycles}, acknowledged messages checked: {acked}, durable completions checked: {done}, failures: 0");
    assert!(acked > 0, "the child never got to enqueue anything");
    let _ = std::fs::remove_dir_all(&dir);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
