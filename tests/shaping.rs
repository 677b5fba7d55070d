//! Traffic shaping on one node: message-rate limits per destination combined
//! with the concurrency window; a destination out of rate is skipped, waits
//! for a wake-up that `next_wakeup` reports (no busy loop, no scan), and no
//! window of a limit's period ever holds more than its count — also when the
//! clock steps back.

mod common;
use common::*;
use mailq::*;

/// Delivers whatever the queue hands out now; returns (routing key) per delivery.
fn deliver_now(q: &Queue) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(mut s) = q.next_session().unwrap() {
        while let Some(d) = s.next_delivery().unwrap() {
            out.push(d.routing_key().to_string());
            let n = d.recipients().len();
            d.complete(&vec![Outcome::Delivered; n]).unwrap();
        }
        s.finish().unwrap();
    }
    out
}

fn fill(q: &Queue, dom: &str, n: usize) {
    for i in 0..n {
        q.enqueue(&msg("s@x.example", &[&format!("r{i}@{dom}")], b"x"))
            .unwrap();
    }
}

#[test]
fn a_rate_limited_destination_waits_for_its_wakeup_and_never_exceeds_its_limit() {
    let dir = TempDir::new("shape-rate");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    let six_a_minute = RateLimit {
        per_minute: 6,
        ..RateLimit::default()
    };
    q.set_rate_limit("slow.example", six_a_minute).unwrap();
    fill(&q, "slow.example", 100);
    fill(&q, "fast.example", 5);
    // One slow message now (its share of the minute), every fast one: the
    // slow destination is skipped, not waited on.
    let got = deliver_now(&q);
    assert_eq!(got.iter().filter(|k| *k == "slow.example").count(), 1);
    assert_eq!(got.iter().filter(|k| *k == "fast.example").count(), 5);
    // Out of rate: no session, no busy loop; the wake-up is in next_wakeup.
    assert!(q.next_session().unwrap().is_none());
    q.sync().unwrap(); // (buffered outcomes would be the next event otherwise)
    assert_eq!(q.next_wakeup(), Some(T0 + 10));
    assert!(q.next_timeout().is_some_and(|t| !t.is_zero()));
    assert!(!q.tick(), "nothing became ready");
    assert_eq!(q.debug_check(), Ok(()));
    let waiting = q
        .select(
            &Selector {
                route: Some("slow.example".into()),
                ..Selector::default()
            },
            1,
        )
        .unwrap();
    let why = q.explain(waiting[0].id, 0).unwrap().why;
    assert!(
        why.contains("message rate of slow.example used up (6/min)") && why.contains("in 10 s"),
        "{why}"
    );

    // Ten minutes in steps of a second, with the clock stepping back an hour
    // halfway: every 60-second window holds at most 6, and mail keeps going.
    let mut per_sec = Vec::new();
    for s in 1..=600u64 {
        if s == 300 {
            clock.set(T0 + 300 - 3600);
        } else {
            clock.advance(1);
        }
        q.tick();
        per_sec.push(deliver_now(&q).len());
        if s == 300 {
            // Stepped back: the wait is at most one interval, not an hour.
            assert!(
                q.next_wakeup().is_some_and(|t| t <= T0 + 300 - 3600 + 10),
                "{:?}",
                q.next_wakeup()
            );
        }
    }
    for start in 0..per_sec.len() {
        let w: usize = per_sec[start..].iter().take(60).sum();
        assert!(w <= 6, "{w} deliveries in the minute from second {start}");
    }
    let total: usize = per_sec.iter().sum();
    assert!((55..=60).contains(&total), "{total} in ten minutes");
    assert_eq!(q.debug_check(), Ok(()));
    // Removing the limit lets the rest go at once.
    q.set_rate_limit("slow.example", RateLimit::default())
        .unwrap();
    let rest = deliver_now(&q).len();
    assert_eq!(1 + total + rest, 100);
}

#[test]
fn rate_and_window_must_both_allow() {
    let dir = TempDir::new("shape-window");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.set_rate_limit(
        "d.example",
        RateLimit {
            per_second: 5,
            ..RateLimit::default()
        },
    )
    .unwrap();
    q.set_concurrency_limit("d.example", 1).unwrap();
    fill(&q, "d.example", 20);
    // One session (the window), and in it five messages (the rate).
    let mut s = q.next_session().unwrap().unwrap();
    assert!(q.next_session().unwrap().is_none(), "window of 1");
    let mut n = 0;
    while let Some(d) = s.next_delivery().unwrap() {
        d.complete(&[Outcome::Delivered]).unwrap();
        n += 1;
    }
    assert_eq!(n, 5, "rate of 5 a second");
    s.finish().unwrap();
    assert!(q.next_session().unwrap().is_none(), "out of rate");
    clock.advance(1);
    q.tick();
    assert_eq!(deliver_now(&q).len(), 5);
    // An invalid key is refused and changes nothing.
    assert!(q
        .set_rate_limit("bad key\u{1}", RateLimit::default())
        .is_err());
}

/// Fenced leases: every session carries a token larger than every one before
/// it, also after reopening; the session reclaimed by its lease deadline is
/// refused when it reports late, and its successor holds a larger token.
#[test]
fn sessions_carry_increasing_fencing_tokens_and_a_reclaimed_one_is_refused() {
    let dir = TempDir::new("shape-fence");
    let clock = ManualClock::new(T0);
    let o = || Options {
        lease_ttl: std::time::Duration::from_secs(60),
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o()).unwrap();
    fill(&q, "a.example", 1);
    fill(&q, "b.example", 1);
    let mut lost = q.next_session().unwrap().unwrap();
    let other = q.next_session().unwrap().unwrap();
    assert!(other.fence() > lost.fence());
    drop(other);
    // The worker holding `lost` goes quiet past its lease.
    clock.advance(61);
    q.tick();
    let next = q.session_for(lost.routing_key()).unwrap().unwrap();
    assert!(
        next.fence() > lost.fence(),
        "the successor's token is larger"
    );
    assert!(matches!(lost.next_delivery(), Err(Error::LeaseExpired)));
    let last = next.fence();
    drop((lost, next));
    q.close().unwrap();
    // Reopened a millisecond later: tokens keep growing.
    clock.advance_millis(1);
    let q = Queue::open(dir.path(), o()).unwrap();
    let s = q.next_session().unwrap().unwrap();
    assert!(s.fence() > last, "{} after {last}", s.fence());
}
