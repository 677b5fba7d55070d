//! Format compatibility: a queue directory written by mailq 0.1 (format 1,
//! checkpoint version 1) is checked in under `tests/fixtures/format-v1` and
//! must open with every message, state, route and last error intact.
//! Foreign versions are refused with `Error::Version`.
mod common;
use common::*;
use mailq::*;
use std::path::Path;
use std::time::Duration;

const FIXTURE: &str = "tests/fixtures/format-v1";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Writes the fixture: three messages before a checkpoint, two after it, with
/// every persisted state. Run by hand only when the format changes on purpose:
/// `MAILQ_FIXTURE_OUT=tests/fixtures/format-vN cargo test --test format -- --ignored`.
#[test]
#[ignore]
fn write_fixture() {
    let out = std::env::var("MAILQ_FIXTURE_OUT").expect("set MAILQ_FIXTURE_OUT");
    let _ = std::fs::remove_dir_all(&out);
    let clock = ManualClock::new(T0);
    let o = Options {
        clock: clock.clone(),
        ..Options::default()
    };
    let q = Queue::open(&out, o).unwrap();
    let a = q
        .enqueue(&msg(
            "a@src.example",
            &["x@gmail.com", "y@yahoo.com"],
            b"body A",
        ))
        .unwrap();
    let b = q
        .enqueue(&msg("b@src.example", &["z@gmail.com"], b"body B"))
        .unwrap();
    let c = q.enqueue(&msg("", &["w@outlook.com"], b"body C")).unwrap();
    drain(&q, |key, _| match key {
        "gmail.com" => Outcome::temp("451 4.7.28 try later abc123 - gsmtp"),
        "yahoo.com" => Outcome::Delivered,
        _ => Outcome::perm("550 5.1.1 no such user"),
    });
    q.hold(b).unwrap();
    q.checkpoint().unwrap();
    let d = q
        .enqueue(&msg("d@src.example", &["v@example.net"], b"body D"))
        .unwrap();
    q.reroute_recipient(d, 0, "relay.example").unwrap();
    q.sync().unwrap();
    println!("{a} {b} {c} {d}");
    drop(q);
    let _ = std::fs::remove_file(Path::new(&out).join("LOCK"));
    // The fixture must open (with this build) before it is committed.
    let q = Queue::open(&out, Options::default()).unwrap();
    assert_eq!(q.stats().messages, 4);
    drop(q);
    let _ = std::fs::remove_file(Path::new(&out).join("LOCK"));
}

#[test]
fn format_v1_fixture_opens_with_everything_intact() {
    let t = TempDir::new("fixture");
    copy_dir(Path::new(FIXTURE), t.path());
    let clock = ManualClock::new(T0 + 60);
    let q = Queue::open(t.path(), opts(&clock)).unwrap();
    let rep = q.recovery_report();
    assert!(rep.checkpoint_used, "{rep:?}");
    assert_eq!(rep.corrupt_count(), 0, "{rep:?}");
    let mut msgs: Vec<MessageInfo> = q
        .list(10)
        .iter()
        .map(|m| q.inspect(m.id).unwrap())
        .collect();
    msgs.sort_by(|x, y| x.sender.cmp(&y.sender));
    let senders: Vec<&str> = msgs.iter().map(|m| m.sender.as_str()).collect();
    assert_eq!(
        senders,
        ["", "a@src.example", "b@src.example", "d@src.example"]
    );
    // Null-sender message C: permanent failure, DSN pending.
    assert_eq!(msgs[0].recipients[0].state, RcptState::Failed);
    assert_eq!(msgs[0].recipients[0].last_error, "550 5.1.1 no such user");
    // A: gmail deferred with its reply, yahoo delivered.
    let a = &msgs[1];
    assert_eq!(a.recipients[0].state, RcptState::Deferred);
    assert_eq!(
        a.recipients[0].last_error,
        "451 4.7.28 try later abc123 - gsmtp"
    );
    assert_eq!(a.recipients[0].attempts, 1);
    assert_eq!(a.recipients[1].state, RcptState::Delivered);
    // B: held.
    assert_eq!(msgs[2].recipients[0].state, RcptState::Held);
    // D: written after the checkpoint, re-routed.
    assert_eq!(msgs[3].recipients[0].route, "relay.example");
    assert_eq!(msgs[3].recipients[0].state, RcptState::Ready);
    assert_eq!(msgs[3].size, 6);
    // Bodies are intact.
    let mut s = q.session_for("relay.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(&d.body()[..], b"body D");
    d.complete(&[Outcome::Delivered]).unwrap();
    drop(s);
    let bounces = q.take_bounces(10).unwrap();
    assert_eq!(bounces.len(), 1);
    assert_eq!(bounces[0].recipient, "w@outlook.com");
    // Records of the current format go to a new segment whose header says
    // so, never into the version-1 segment (an older build must refuse, not
    // misread, them).
    let v1 = std::fs::read(Path::new(FIXTURE).join("00000001.seg")).unwrap();
    let now1 = std::fs::read(t.path().join("00000001.seg")).unwrap();
    assert_eq!(now1, v1, "the version-1 segment is not appended to");
    let seg2 = std::fs::read(t.path().join("00000002.seg")).unwrap();
    let (h, payload) = (
        mailq::sim::record::header(&seg2).unwrap(),
        &seg2[mailq::sim::record::HEADER_LEN..],
    );
    assert_eq!(h.kind, mailq::sim::record::Kind::SegmentHeader);
    assert_eq!(
        &payload[8..12],
        &mailq::sim::record::FORMAT_VERSION.to_le_bytes(),
        "a header of the current format"
    );
    let rate = RateLimit {
        per_minute: 6,
        ..RateLimit::default()
    };
    q.set_rate_limit("gmail.com", rate).unwrap();
    drop(q); // no checkpoint: the Destination record is replayed
    let q = Queue::open(t.path(), opts(&clock)).unwrap();
    let g = q.stats().buckets.into_iter().find(|b| b.key == "gmail.com");
    assert_eq!(g.and_then(|b| b.rate_limit), Some(rate));
    let _ = Duration::ZERO;
}
