mod common;
use common::*;
use mailq::*;
use std::io::{Seek, SeekFrom, Write};

fn small(clock: &std::sync::Arc<ManualClock>) -> Options {
    Options {
        segment_size: 64 * 1024,
        checkpoint_bytes: u64::MAX,
        auto_maintenance: false,
        ..opts(clock)
    }
}

fn body(i: usize) -> Vec<u8> {
    format!("message {i} ").repeat(40).into_bytes()
}

fn enqueue_n(q: &Queue, n: usize) -> Vec<MessageId> {
    (0..n)
        .map(|i| {
            q.enqueue(&msg(
                "s@src.org",
                &[&format!("u{i}@d{}.com", i % 7)],
                &body(i),
            ))
            .unwrap()
        })
        .collect()
}

/// Delivers everything, checking each body matches its message; returns ids seen.
fn deliver_all_checked(q: &Queue, ids: &[MessageId]) -> Vec<MessageId> {
    let mut seen = vec![];
    while let Some(mut s) = q.next_session().unwrap() {
        while let Some(d) = s.next_delivery().unwrap() {
            let i = ids.iter().position(|x| *x == d.id()).expect("known id");
            assert_eq!(&d.body()[..], &body(i)[..], "never a wrong body");
            assert_eq!(d.recipients()[0], format!("u{i}@d{}.com", i % 7));
            seen.push(d.id());
            d.complete(&[Outcome::Delivered]).unwrap();
        }
    }
    seen.sort();
    seen
}

#[test]
fn reopen_after_clean_close_uses_checkpoint() {
    let d = TempDir::new("clean");
    let clock = ManualClock::new(T0);
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    let ids = enqueue_n(&q, 300);
    drain(&q, |_, r| {
        if r.starts_with("u1") {
            Outcome::temp("451 x")
        } else {
            Outcome::Delivered
        }
    });
    let before = q.stats();
    q.close().unwrap();
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    let rep = q.recovery_report();
    assert!(rep.checkpoint_used);
    assert_eq!(rep.records_replayed, 0, "nothing after the checkpoint");
    assert_eq!(rep.corrupt_count(), 0);
    let after = q.stats();
    assert_eq!(after.by_state, before.by_state);
    assert_eq!(after.messages, before.messages);
    clock.advance(4000);
    let mut expect: Vec<MessageId> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| format!("u{i}").starts_with("u1"))
        .map(|(_, id)| *id)
        .collect();
    expect.sort();
    assert_eq!(deliver_all_checked(&q, &ids), expect);
    // Compaction removed the segments that only held finished mail.
    q.close().unwrap();
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    assert_eq!(q.stats().messages, 0);
    assert!(
        segment_files(d.path()).len() <= 2,
        "{:?}",
        segment_files(d.path())
    );
}

#[test]
fn reopen_after_abandoning_handle_replays_log() {
    let d = TempDir::new("abandon");
    let clock = ManualClock::new(T0);
    let ids;
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        ids = enqueue_n(&q, 200);
        // Deliver the first 50 and make the outcomes durable, then vanish.
        let mut n = 0;
        while let Some(mut s) = q.next_session().unwrap() {
            while let Some(dl) = s.next_delivery().unwrap() {
                dl.complete(&[Outcome::Delivered]).unwrap();
                n += 1;
                if n == 50 {
                    break;
                }
            }
            if n == 50 {
                break;
            }
        }
        q.sync().unwrap();
    }
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    let rep = q.recovery_report();
    assert!(!rep.checkpoint_used);
    assert!(rep.records_replayed >= 250);
    assert_eq!(rep.corrupt_count(), 0);
    assert_eq!(
        q.stats().count("ready"),
        150,
        "completions durable, the rest recovered"
    );
    assert_eq!(deliver_all_checked(&q, &ids).len(), 150);
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let d = TempDir::new("torn");
    let clock = ManualClock::new(T0);
    let ids;
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        ids = enqueue_n(&q, 20);
    }
    let last = segment_files(d.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    // A torn write: half a record header plus garbage, then a zeroed region.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    f.write_all(&[0x43, 0x52, 0x51, 0x4d, 1, 2, 3, 4, 5, 6, 7])
        .unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    let rep = q.recovery_report();
    assert_eq!(rep.torn_tail_bytes, 11 + 4096);
    assert!(rep.damaged.is_empty());
    assert_eq!(std::fs::metadata(&last).unwrap().len(), len);
    assert_eq!(deliver_all_checked(&q, &ids).len(), 20);
    // and the queue keeps working after the truncation
    q.enqueue(&msg("", &["z@z.com"], b"after")).unwrap();
    drop(q);
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    assert_eq!(q.recovery_report().torn_tail_bytes, 0);
}

#[test]
fn flipped_byte_in_sealed_segment_is_reported_and_rest_recovered() {
    let d = TempDir::new("flip");
    let clock = ManualClock::new(T0);
    let ids;
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        ids = enqueue_n(&q, 400);
    }
    let segs = segment_files(d.path());
    assert!(segs.len() >= 3, "need sealed segments, got {}", segs.len());
    let victim = &segs[0];
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(victim)
        .unwrap();
    let off = 30_000u64;
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&[0xFF]).unwrap();
    drop(f);
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    let rep = q.recovery_report();
    assert_eq!(rep.damaged.len(), 1, "{:?}", rep.damaged);
    assert_eq!(rep.damaged[0].segment, 1);
    assert!(rep.damaged[0].offset <= off && off < rep.damaged[0].offset + rep.damaged[0].len);
    assert_eq!(
        rep.corrupt_messages.len(),
        1,
        "the damaged message is named"
    );
    let bad = rep.corrupt_messages[0];
    assert!(ids.contains(&bad));
    assert!(q.stats().corrupt >= 1);
    let seen = deliver_all_checked(&q, &ids);
    assert_eq!(seen.len(), 399, "every intact message is recovered");
    assert!(!seen.contains(&bad));
}

#[test]
fn flipped_byte_behind_checkpoint_is_found_at_read_and_by_verify() {
    let d = TempDir::new("flip-ckpt");
    let clock = ManualClock::new(T0);
    let ids;
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        ids = enqueue_n(&q, 400);
        q.close().unwrap();
    }
    let victim = &segment_files(d.path())[0];
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(victim)
        .unwrap();
    f.seek(SeekFrom::Start(30_000)).unwrap();
    f.write_all(&[0xFF]).unwrap();
    drop(f);
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    assert!(q.recovery_report().checkpoint_used);
    let bad = q.verify().unwrap();
    assert_eq!(bad.len(), 1);
    let seen = deliver_all_checked(&q, &ids);
    assert_eq!(seen.len(), 399);
    let st = q.stats();
    assert_eq!(
        st.count("corrupt"),
        1,
        "kept for the operator, like Postfix's corrupt queue"
    );
    assert_eq!(st.corrupt_ids, bad);
    assert!(q.delete(bad[0]).is_ok());
}

#[test]
fn corrupt_checkpoint_falls_back_to_full_replay() {
    let d = TempDir::new("bad-ckpt");
    let clock = ManualClock::new(T0);
    let ids;
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        ids = enqueue_n(&q, 50);
        q.close().unwrap();
    }
    let ck = d.path().join("checkpoint");
    let mut data = std::fs::read(&ck).unwrap();
    let n = data.len();
    data[n / 2] ^= 1;
    std::fs::write(&ck, data).unwrap();
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    let rep = q.recovery_report();
    assert!(!rep.checkpoint_used);
    assert!(rep
        .checkpoint_error
        .as_deref()
        .unwrap()
        .contains("checksum"));
    assert_eq!(deliver_all_checked(&q, &ids).len(), 50);
}

#[test]
fn disk_use_stays_bounded_under_churn() {
    let d = TempDir::new("churn");
    let clock = ManualClock::new(T0);
    let o = Options {
        segment_size: 256 * 1024,
        checkpoint_bytes: 512 * 1024,
        ..opts(&clock)
    };
    let q = Queue::open(d.path(), o).unwrap();
    let live_body = vec![b'L'; 2000];
    // A standing population of deferred mail …
    for i in 0..200 {
        q.enqueue(&msg("", &[&format!("u{i}@slow.com")], &live_body))
            .unwrap();
    }
    drain(&q, |_, _| Outcome::temp("451"));
    // … and a lot of churn that is delivered at once.
    let churn_body = vec![b'C'; 4000];
    for round in 0..40 {
        for i in 0..100 {
            q.enqueue(&msg("", &[&format!("c{round}-{i}@fast.com")], &churn_body))
                .unwrap();
        }
        drain(&q, |k, _| {
            if k == "fast.com" {
                Outcome::Delivered
            } else {
                Outcome::temp("451")
            }
        });
    }
    let disk: u64 = segment_files(d.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let written = 40 * 100 * 4000 + 200 * 2000;
    let live = 200 * 2000u64;
    assert!(q.stats().segments_deleted > 10);
    assert!(
        disk < written as u64 / 4,
        "disk {disk} of {written} written"
    );
    assert!(disk < live * 3 + 2 * 256 * 1024, "disk {disk} live {live}");
    assert_eq!(q.stats().count("deferred"), 200);
    q.close().unwrap();
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    assert_eq!(q.stats().count("deferred"), 200);
    assert_eq!(q.recovery_report().corrupt_count(), 0);
    clock.advance(4000);
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 200);
}

#[test]
fn lowering_max_body_never_makes_stored_mail_unreadable() {
    let d = TempDir::new("maxbody");
    let clock = ManualClock::new(T0);
    let big = vec![b'B'; 200_000];
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        q.enqueue(&msg("", &["a@x.com"], &big)).unwrap();
    }
    let q = Queue::open(
        d.path(),
        Options {
            max_body: 1000,
            ..small(&clock)
        },
    )
    .unwrap();
    assert_eq!(q.recovery_report().corrupt_count(), 0);
    assert_eq!(q.recovery_report().torn_tail_bytes, 0);
    let mut got = 0;
    drain(&q, |_, _| {
        got += 1;
        Outcome::Delivered
    });
    assert_eq!(got, 1);
}

/// After damage, recovery resynchronises; a record-shaped string inside a message
/// body (which a sender controls) must never be replayed as a record — even one
/// forged with this queue's own salt, whose sequence number cannot fit.
#[test]
fn forged_records_in_a_body_are_not_replayed_after_damage() {
    let d = TempDir::new("forged");
    let clock = ManualClock::new(T0);
    let (attacker, victim);
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        victim = q.enqueue(&msg("", &["victim@x.com"], b"innocent")).unwrap();
        // The salt is secret in reality; read it here to forge the strongest attack.
        let seg = std::fs::read(&segment_files(d.path())[0]).unwrap();
        let salt = u32::from_le_bytes(seg[24 + 16..24 + 20].try_into().unwrap());
        // 62 filler bytes put the forged frames on 8-byte boundaries of the segment
        // (the record starts aligned; its header and envelope take 74 bytes).
        let mut body = vec![b' '; 62];
        // With the right salt but an impossible sequence number, or with a plausible
        // sequence number but without the salt.
        for (s, forge_salt) in [(1_000u64, salt), (1, salt), (3, 0u32), (3, 12345)] {
            let mut p = Vec::new();
            mailq::sim::record::encode_message(
                &mut p,
                0xDEAD_0000_0001,
                T0,
                "",
                b"",
                &[("evil@spam.example", "spam.example")],
                b"x",
            );
            mailq::sim::record::frame(
                &mut body,
                mailq::sim::record::Kind::Message,
                s,
                &p,
                forge_salt,
            );
            let mut u = Vec::new();
            mailq::sim::record::encode_update(
                &mut u,
                &mailq::sim::record::UpdateRecord {
                    id: victim.0,
                    idx: 0,
                    state: 8,
                    flags: 0,
                    attempts: 0,
                    next: 0,
                    reason: "",
                    route: "",
                },
            );
            mailq::sim::record::frame(
                &mut body,
                mailq::sim::record::Kind::RcptUpdate,
                s + 1,
                &u,
                forge_salt,
            );
        }
        attacker = q.enqueue(&msg("", &["a@x.com"], &body)).unwrap();
        q.enqueue(&msg("", &["after@x.com"], b"later mail"))
            .unwrap();
    }
    // Damage the attacker's record header (a bit flip), so recovery must resync.
    let path = segment_files(d.path())[0].clone();
    let mut data = std::fs::read(&path).unwrap();
    let pos = data
        .windows(8)
        .position(|w| w == attacker.0.to_le_bytes())
        .expect("attacker record")
        - 24;
    data[pos + 9] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    let rep = q.recovery_report();
    assert_eq!(rep.damaged.len(), 1, "{:?}", rep.damaged);
    assert_eq!((pos + 24 + 74 + 62) % 8, 0, "forged frames were aligned");
    let mut rcpts = vec![];
    drain(&q, |_, r| {
        rcpts.push(r.to_string());
        Outcome::Delivered
    });
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec!["after@x.com", "victim@x.com"],
        "no forged message, victim not deleted"
    );
}

#[test]
fn segment_shorter_than_checkpoint_position_is_reported_and_new_mail_survives() {
    let d = TempDir::new("short-seg");
    let clock = ManualClock::new(T0);
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        enqueue_n(&q, 5);
        q.close().unwrap();
    }
    // The filesystem loses the end of the active segment after the checkpoint.
    let last = segment_files(d.path()).pop().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(200).unwrap();
    drop(f);
    let id;
    {
        let q = Queue::open(d.path(), small(&clock)).unwrap();
        let rep = q.recovery_report();
        assert!(
            rep.damaged.iter().any(|d| d.reason.contains("shorter")),
            "{:?}",
            rep.damaged
        );
        id = q
            .enqueue(&msg("", &["new@x.com"], b"after the loss"))
            .unwrap();
    }
    let q = Queue::open(d.path(), small(&clock)).unwrap();
    assert!(
        q.list(100).iter().any(|m| m.id == id),
        "mail accepted after the loss survives"
    );
}

/// A queue rebuilt from its log serves at once: the checkpoint that spares
/// the next open the replay is written by the first maintenance (`tick`),
/// never by `open` or by a producer, unless automatic maintenance is off.
#[test]
fn a_replayed_queue_serves_at_once_and_the_first_tick_writes_its_checkpoint() {
    let d = TempDir::new("replayed-first-tick");
    let clock = ManualClock::new(T0);
    let o = Options {
        checkpoint_bytes: u64::MAX,
        ..opts(&clock)
    };
    let mut ids;
    {
        let q = Queue::open(d.path(), o.clone()).unwrap();
        // More than 1 MiB of log to replay.
        ids = enqueue_n(&q, 3000);
        assert_eq!(q.stats().checkpoints, 0);
    }
    let ck = d.path().join("checkpoint");
    assert!(!ck.exists());
    {
        let q = Queue::open(d.path(), o.clone()).unwrap();
        let rep = q.recovery_report();
        assert!(!rep.checkpoint_used);
        assert!(rep.bytes_replayed > 1 << 20, "{rep:?}");
        assert!(!ck.exists(), "open leaves the checkpoint to maintenance");
        assert_eq!(q.next_timeout(), Some(std::time::Duration::ZERO));
        // A producer raises the poll fd; it does not write the checkpoint.
        let late = q
            .enqueue(&msg("s@src.org", &["u3000@d4.com"], &body(3000)))
            .unwrap();
        ids.push(late);
        assert_eq!(q.stats().checkpoints, 0);
        q.tick();
        assert_eq!(q.stats().checkpoints, 1);
        assert!(ck.exists());
        // Done: not due again until the log grows by an interval.
        q.tick();
        assert_eq!(q.stats().checkpoints, 1);
    }
    let q = Queue::open(d.path(), o.clone()).unwrap();
    let rep = q.recovery_report();
    assert!(rep.checkpoint_used);
    assert!(rep.bytes_replayed < 1 << 20, "{rep:?}");
    assert_eq!(q.stats().count("ready"), 3001);
    drop(q);
    // Without automatic maintenance, open writes it (after a full replay).
    std::fs::remove_file(&ck).unwrap();
    let q = Queue::open(
        d.path(),
        Options {
            auto_maintenance: false,
            ..o
        },
    )
    .unwrap();
    assert!(!q.recovery_report().checkpoint_used);
    assert_eq!(q.stats().checkpoints, 1);
    assert!(ck.exists());
    assert_eq!(deliver_all_checked(&q, &ids).len(), 3001);
}
