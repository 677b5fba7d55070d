//! Checkpoints taken while producers, workers and the operator go on (issue
//! 13: no stop-the-world): the machine is cut at moments in the middle of
//! that traffic — crash images forked from a simulated filesystem, with
//! every unsynced write lost or a random part of them kept — and every image
//! must reopen with every acknowledged message, without a report of damage
//! or of an unknown message, and with an index that passes its own check.

mod common;
use common::*;
use mailq::sim::{CrashMode, SimFs};
use mailq::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn open(fs: &SimFs) -> Result<Queue> {
    Queue::open(
        Path::new("/q"),
        Options {
            vfs: fs.vfs(),
            auto_maintenance: false,
            segment_size: 256 << 10,
            ..Options::default()
        },
    )
}

#[test]
fn crash_images_taken_while_checkpoints_run_lose_nothing_acknowledged() {
    let fs = SimFs::new();
    // Slow syncs widen every window: the checkpoint's own, the enqueues'.
    fs.set_sync_delay(Duration::from_micros(300));
    let q = open(&fs).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<MessageId>::new()));
    // Recipients delivered per message (an outcome was recorded).
    let done = Arc::new(Mutex::new(HashMap::<MessageId, usize>::new()));
    let mut threads = Vec::new();
    for p in 0..3 {
        let (q, stop, acked) = (q.clone(), stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = [
                    format!("a{p}.{i}@d{}.example", i % 7),
                    format!("b{p}.{i}@d{}.example", (i + 3) % 11),
                ];
                let body = vec![b'x'; 300 + (i % 5) * 200];
                let id = q
                    .enqueue(&msg("s@x.example", &[&r[0], &r[1]], &body))
                    .unwrap();
                acked.lock().push(id);
                i += 1;
            }
        }));
    }
    {
        // A worker: delivers most, defers some (updates while snapshots run).
        let (q, stop, done) = (q.clone(), stop.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Some(mut s) = q.next_session().unwrap() else {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                while let Some(d) = s.next_delivery().unwrap() {
                    n += 1;
                    let k = d.recipients().len();
                    let id = d.id();
                    let o = if n.is_multiple_of(5) {
                        Outcome::temp("451 4.3.0 try later 5b1f0bcb4fasm2218311a12 - gsmtp")
                    } else {
                        Outcome::Delivered
                    };
                    d.complete(&vec![o; k]).unwrap();
                    if !n.is_multiple_of(5) {
                        *done.lock().entry(id).or_default() += k;
                    }
                }
                s.finish().unwrap();
            }
        }));
    }
    {
        // The operator holds and releases what it finds, by message.
        let (q, stop, acked) = (q.clone(), stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = {
                    let a = acked.lock();
                    if a.is_empty() {
                        None
                    } else {
                        Some(a[k % a.len()])
                    }
                };
                if let Some(id) = id {
                    let _ = q.hold(id);
                    let _ = q.release(id);
                }
                k += 7;
                std::thread::sleep(Duration::from_micros(500));
            }
        }));
    }
    // Checkpoints back to back, with compaction.
    let maint = {
        let (q, stop) = (q.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                q.checkpoint().unwrap();
                n += 1;
            }
            n
        })
    };
    // Crash images at moments in the middle of it all.
    let mut images = Vec::new();
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(40));
        let before = acked.lock().clone();
        images.push((before, fs.fork()));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let checkpoints = maint.join().unwrap();
    assert!(checkpoints >= 3, "only {checkpoints} checkpoints ran");
    let done = done.lock().clone();
    let mut checked = 0;
    for (n, (acked, img)) in images.into_iter().enumerate() {
        let mode = if n % 2 == 0 {
            CrashMode::LoseUnsynced
        } else {
            CrashMode::Reorder
        };
        img.restart(mode, n as u64 + 1);
        let q2 = open(&img).unwrap_or_else(|e| panic!("image {n} does not open: {e}"));
        let rep = q2.recovery_report();
        assert!(
            rep.damaged.is_empty() && rep.corrupt_messages.is_empty(),
            "image {n}: damage {:?}, corrupt {:?}",
            rep.damaged,
            rep.corrupt_reasons
        );
        assert_eq!(q2.debug_check(), Ok(()), "image {n}");
        for id in &acked {
            if q2.inspect(*id).is_err() {
                assert!(
                    done.get(id) == Some(&2),
                    "image {n}: acknowledged message {id} is gone and was not delivered"
                );
            }
        }
        checked += acked.len();
        drop(q2);
    }
    assert!(
        checked > 100,
        "only {checked} acknowledged messages checked"
    );
    drop(q);
}

/// Delivers whatever is ready now.
fn deliver_all(q: &Queue) -> usize {
    let mut n = 0;
    while let Some(mut s) = q.next_session().unwrap() {
        while let Some(d) = s.next_delivery().unwrap() {
            let k = d.recipients().len();
            d.complete(&vec![Outcome::Delivered; k]).unwrap();
            n += k;
        }
        s.finish().unwrap();
    }
    n
}

/// The interleavings the window exists for, made to happen: while a
/// checkpoint has written its first shard only, messages of the other shards
/// finish (their updates follow its position, their messages are not in it),
/// and new messages begin and end and more take slots (without the slot hold
/// a newer message would sit in a slot whose older message the replay meets).
#[test]
fn messages_that_finish_or_begin_while_a_checkpoint_is_written_replay_cleanly() {
    use hookfs::{HookFs, On};
    let hfs = HookFs::new(SimFs::new());
    let o = || Options {
        vfs: hfs.vfs(),
        auto_maintenance: false,
        ..Options::default()
    };
    let q = Queue::open(Path::new("/q"), o()).unwrap();
    let fill = |q: &Queue, tag: &str| -> Vec<MessageId> {
        // One message per shard (enqueues go round the 16 shards).
        (0..16)
            .map(|i| {
                q.enqueue(&msg(
                    "s@x.example",
                    &[&format!("{tag}{i}@d{i}.example")],
                    b"x",
                ))
                .unwrap()
            })
            .collect()
    };
    let before = fill(&q, "a");
    let later = Arc::new(Mutex::new(Vec::new()));
    {
        let (q, later) = (q.clone(), later.clone());
        hfs.arm(On::Write, "checkpoint.tmp", move || {
            assert_eq!(deliver_all(&q), 16, "the messages from before");
            let begun = fill(&q, "b");
            assert_eq!(deliver_all(&q), 16, "the ones begun meanwhile");
            let mut l = fill(&q, "c"); // into the slots just freed, if reused
            l.extend(begun);
            *later.lock() = l;
            // A setting on a destination that did not exist at the barrier.
            q.set_concurrency_limit("new.example", 3).unwrap();
        });
    }
    q.checkpoint().unwrap();
    assert!(!hfs.armed(), "the hook ran inside the checkpoint");
    q.sync().unwrap();
    // Power cut now: the checkpoint is installed, the log is synced.
    let img = hfs.fs.fork();
    std::mem::forget(q);
    img.restart(CrashMode::LoseUnsynced, 1);
    let q2 = open(&img).unwrap();
    let rep = q2.recovery_report();
    assert!(rep.checkpoint_used);
    assert!(rep.window_updates >= 15, "{}", rep.window_updates);
    assert!(
        rep.damaged.is_empty() && rep.corrupt_messages.is_empty(),
        "damage {:?}, corrupt {:?}",
        rep.damaged,
        rep.corrupt_reasons
    );
    assert_eq!(q2.debug_check(), Ok(()));
    for id in &before {
        assert!(q2.inspect(*id).is_err(), "{id} was delivered");
    }
    let later = later.lock().clone();
    let live: Vec<_> = later.iter().filter(|id| q2.inspect(**id).is_ok()).collect();
    assert_eq!(
        live.len(),
        16,
        "the c messages are queued, the b ones delivered"
    );
    assert_eq!(q2.stats().recipients(), 16);
    let d = q2
        .destination("new.example")
        .unwrap()
        .expect("its setting kept");
    assert_eq!(d.limit, 3);
}
