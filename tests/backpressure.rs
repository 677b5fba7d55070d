//! Backpressure: `enqueue` refuses with `TryLater` above the queued-recipients,
//! queued-bytes and free-disk limits, writes nothing, says so in stats and
//! metrics, and accepts again once the queue drains; the totals survive a
//! reopen.

mod common;
use common::*;
use mailq::sim::SimFs;
use mailq::*;
use std::time::Duration;

fn three(q: &Queue, tag: &str) -> Result<MessageId> {
    let rcpts = [
        format!("{tag}1@one.example"),
        format!("{tag}2@one.example"),
        format!("{tag}3@two.example"),
    ];
    let r: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    q.enqueue(&msg("s@x.example", &r, b"body"))
}

#[test]
fn the_recipients_limit_refuses_without_writing_and_lifts_when_the_queue_drains() {
    let dir = TempDir::new("bp-rcpts");
    let clock = ManualClock::new(T0);
    let o = Options {
        max_queued_recipients: 5,
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o).unwrap();
    three(&q, "a").unwrap();
    let before = q.stats();
    let e = three(&q, "b").unwrap_err();
    assert!(
        matches!(
            e,
            Error::TryLater {
                what: "queued recipients",
                current: 6,
                limit: 5
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("452 4.3.1"), "{e}");
    let after = q.stats();
    assert_eq!(after.messages, 1);
    assert_eq!(after.bytes_written, before.bytes_written, "nothing written");
    assert_eq!(after.refused, 1);
    assert_eq!(q.backpressure(), None, "3 of 5 queued: mail still fits");
    q.enqueue(&msg(
        "s@x.example",
        &["c@one.example", "d@two.example"],
        b"x",
    ))
    .unwrap();
    let why = q.backpressure().expect("5 of 5");
    assert!(why.contains("queued recipients 5"), "{why}");
    let m = q.stats().prometheus_top(10);
    assert!(m.contains("mailq_backpressure 1"), "{m}");
    assert!(m.contains("mailq_enqueue_refused_total 1"), "{m}");
    assert_eq!(q.debug_check(), Ok(()));
    // A DSN is not refused: acknowledging its bounce ends a recipient, so
    // refusing it would keep a full queue full.
    let mut dsn = q.dsn_message().unwrap();
    dsn.add_recipient("s@x.example", None).unwrap();
    dsn.append(b"report").unwrap();
    dsn.commit().unwrap();
    let mut plain = q.message("").unwrap();
    plain.add_recipient("s@x.example", None).unwrap();
    assert!(matches!(plain.commit(), Err(Error::TryLater { .. })));
    // Deliveries drain the queue and lift the limit.
    drain(&q, |_, _| Outcome::Delivered);
    assert_eq!(q.backpressure(), None);
    three(&q, "c").unwrap();
    assert_eq!(q.debug_check(), Ok(()));
}

#[test]
fn the_bytes_limit_counts_live_records_and_survives_a_reopen() {
    let dir = TempDir::new("bp-bytes");
    let clock = ManualClock::new(T0);
    let o = || Options {
        max_queued_bytes: 10_000,
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o()).unwrap();
    let body = [b'z'; 4000];
    let a = q
        .enqueue(&msg("s@x.example", &["a@one.example"], &body))
        .unwrap();
    q.enqueue(&msg("s@x.example", &["b@one.example"], &body))
        .unwrap();
    let e = q
        .enqueue(&msg("s@x.example", &["c@one.example"], &body))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TryLater {
                what: "queued bytes",
                limit: 10_000,
                ..
            }
        ),
        "{e}"
    );
    let held = q.stats().queued_bytes;
    assert!((8000..10_000).contains(&held), "{held}");
    drop(q);
    // Reopened: the totals are counted again from what recovery loaded.
    let q = Queue::open(dir.path(), o()).unwrap();
    assert_eq!(q.stats().queued_bytes, held);
    assert_eq!(q.debug_check(), Ok(()));
    let sel = Selector {
        ids: vec![a],
        ..Selector::default()
    };
    assert_eq!(q.act(&sel, &Op::Delete, false).unwrap(), 1);
    assert!(q.stats().queued_bytes < held);
    q.enqueue(&msg("s@x.example", &["c@one.example"], &body))
        .unwrap();
    assert_eq!(q.debug_check(), Ok(()));
}

#[test]
fn the_free_disk_watermark_refuses_before_the_disk_fills() {
    let fs = SimFs::new();
    fs.set_free_space(Some(1 << 30));
    let clock = ManualClock::new(T0);
    let o = Options {
        vfs: fs.vfs(),
        min_free_disk: 100 << 20,
        ..opts(&clock)
    };
    let q = Queue::open("/q", o).unwrap();
    three(&q, "a").unwrap();
    assert!(q.stats().disk_free.is_some_and(|f| f > 100 << 20));
    // Something else fills the disk; the next look-up (at most 100 ms on) sees it.
    fs.set_free_space(Some(50 << 20));
    std::thread::sleep(Duration::from_millis(150));
    let e = three(&q, "b").unwrap_err();
    assert!(
        matches!(
            e,
            Error::TryLater {
                what: "free disk bytes",
                limit: 104_857_600,
                ..
            }
        ),
        "{e}"
    );
    assert!(q.backpressure().is_some_and(|w| w.contains("free disk")));
    assert_eq!(q.stats().messages, 1, "nothing queued");
    // Space comes back: the refusal lifts without waiting for an enqueue (an
    // SMTP server asks at MAIL FROM), and a low estimate is looked up again
    // before a message is refused.
    fs.set_free_space(Some(1 << 30));
    assert_eq!(q.backpressure(), None);
    three(&q, "c").unwrap();
    // A filesystem that cannot tell its free space is not refused.
    fs.set_free_space(None);
    std::thread::sleep(Duration::from_millis(150));
    three(&q, "d").unwrap();
}
