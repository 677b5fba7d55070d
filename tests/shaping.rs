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

const TSS04: &str =
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume 5b1f0bcb4fasm2218311a12 - gsmtp";

fn tss04_rule(secs: u64) -> ReplyRule {
    ReplyRule {
        pattern: r"\[TSS04\]".into(),
        action: RuleAction::Suspend(std::time::Duration::from_secs(secs)),
    }
}

fn dest(q: &Queue, key: &str) -> BucketStats {
    q.stats()
        .buckets
        .into_iter()
        .find(|b| b.key == key)
        .unwrap()
}

#[test]
fn a_reply_rule_suspends_its_destination_for_a_while_and_it_is_persisted() {
    let dir = TempDir::new("shape-rule-suspend");
    let clock = ManualClock::new(T0);
    let o = Options {
        reply_rules: vec![tss04_rule(600)],
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o).unwrap();
    fill(&q, "gmail.com", 3);
    fill(&q, "yahoo.com", 1);
    // The first reply with the unique id still matches; the other
    // destination is not touched.
    let mut s = q.session_for("gmail.com").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    let id = d.id();
    d.complete(&[Outcome::temp(TSS04)]).unwrap();
    // The session that got the reply sends nothing more either.
    assert!(s.next_delivery().unwrap().is_none(), "suspended: no more");
    s.finish().unwrap();
    let g = dest(&q, "gmail.com");
    assert!(g.suspended);
    assert_eq!(g.suspended_until, T0 + 600);
    assert_eq!(g.suspended_by.as_deref(), Some(r"\[TSS04\]"));
    assert!(!dest(&q, "yahoo.com").suspended);
    assert!(q.session_for("gmail.com").unwrap().is_none());
    // Changing another setting keeps the rule's mark.
    q.set_concurrency_limit("gmail.com", 4).unwrap();
    assert_eq!(
        dest(&q, "gmail.com").suspended_by.as_deref(),
        Some(r"\[TSS04\]")
    );
    let other = q
        .select(
            &Selector {
                route: Some("gmail.com".into()),
                ..Selector::default()
            },
            10,
        )
        .unwrap()
        .into_iter()
        .find(|m| m.id != id)
        .unwrap();
    let why = q.explain(other.id, 0).unwrap().why;
    assert!(
        why.contains(r"suspended by reply rule /\[TSS04\]/ until"),
        "{why}"
    );
    assert_eq!(deliver_now(&q), vec!["yahoo.com".to_string()]);
    q.sync().unwrap();
    assert_eq!(
        q.next_wakeup(),
        Some(T0 + 300),
        "the retry of the deferred one"
    );
    drop(q);
    // Reopened without the rule: the suspension it caused is still there.
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    assert!(dest(&q, "gmail.com").suspended);
    clock.advance(600);
    q.tick();
    assert!(!dest(&q, "gmail.com").suspended, "ended by itself");
    assert_eq!(deliver_now(&q).len(), 3);
}

#[test]
fn a_rule_never_shortens_a_longer_suspension_and_matches_site_failures() {
    let dir = TempDir::new("shape-rule-keep");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.set_reply_rules(&[tss04_rule(600)]).unwrap();
    fill(&q, "gmail.com", 2);
    // The operator suspends while a delivery is in flight; its TSS04 reply
    // must not turn "until resumed" into ten minutes.
    let mut s = q.session_for("gmail.com").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    q.suspend("gmail.com").unwrap();
    d.complete(&[Outcome::temp(TSS04)]).unwrap();
    s.finish().unwrap();
    let g = dest(&q, "gmail.com");
    assert!(g.suspended && g.suspended_until == 0 && g.suspended_by.is_none());
    q.resume("gmail.com").unwrap();
    // A TSS04 greeting is a site failure of the whole session.
    let s = q.session_for("gmail.com").unwrap().unwrap();
    s.site_failure(TSS04).unwrap();
    let g = dest(&q, "gmail.com");
    assert_eq!((g.suspended, g.suspended_until), (true, T0 + 600));
    assert_eq!(q.debug_check(), Ok(()));
}

#[test]
fn a_rule_takes_a_4xx_as_permanent_and_bad_rules_change_nothing() {
    let dir = TempDir::new("shape-rule-perm");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    let quota = ReplyRule {
        pattern: r"^452 4\.2\.2 .*over quota".into(),
        action: RuleAction::Permanent,
    };
    q.set_reply_rules(std::slice::from_ref(&quota)).unwrap();
    fill(&q, "full.example", 2);
    let mut s = q.session_for("full.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    d.complete(&[Outcome::temp(
        "452 4.2.2 The email account that you tried to reach is over quota",
    )])
    .unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    d.complete(&[Outcome::temp("451 4.3.0 try again")]).unwrap();
    s.finish().unwrap();
    let b = q.take_bounces(10).unwrap();
    assert_eq!(b.len(), 1, "only the over-quota reply is final");
    assert!(!b[0].expired && b[0].reason.contains("over quota"));
    assert_eq!(q.stats().count("deferred"), 1);
    // A site failure is the destination's, never a recipient's: the same
    // reply as a greeting defers, it does not bounce.
    fill(&q, "full.example", 1);
    let mut s = q.session_for("full.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    let sid = d.id();
    d.site_failure("452 4.2.2 over quota (greeting)").unwrap();
    drop(s);
    assert_eq!(
        q.inspect(sid).unwrap().recipients[0].state,
        RcptState::Deferred
    );
    assert!(q.take_bounces(10).unwrap().is_empty());
    // Past the lifetime a rule's "permanent" is still an expiry.
    clock.advance(5 * 86400);
    q.flush().unwrap();
    let mut s = q.session_for("full.example").unwrap().unwrap();
    while let Some(d) = s.next_delivery().unwrap() {
        d.complete(&[Outcome::temp("452 4.2.2 mailbox over quota")])
            .unwrap();
    }
    s.finish().unwrap();
    let b = q.take_bounces(10).unwrap();
    assert!(!b.is_empty() && b.iter().all(|b| b.expired), "{b:?}");
    for b in &b {
        q.ack_bounce(b.id, b.index).unwrap();
    }
    // A bad pattern, or a suspension of zero, is refused and changes nothing.
    for bad in [
        ReplyRule {
            pattern: "([unclosed".into(),
            action: RuleAction::Permanent,
        },
        tss04_rule(0),
    ] {
        let e = q.set_reply_rules(std::slice::from_ref(&bad)).unwrap_err();
        assert!(matches!(e, Error::InvalidOption(_)), "{e}");
        let o = Options {
            reply_rules: vec![bad],
            ..opts(&clock)
        };
        assert!(Queue::open(TempDir::new("shape-rule-bad").path(), o).is_err());
    }
    fill(&q, "full.example", 1);
    let mut s = q.session_for("full.example").unwrap().unwrap();
    while let Some(d) = s.next_delivery().unwrap() {
        d.complete(&[Outcome::temp("452 4.2.2 mailbox over quota")])
            .unwrap();
    }
    s.finish().unwrap();
    assert_eq!(
        q.take_bounces(10).unwrap().len(),
        1,
        "the rule is still in force"
    );
}

#[test]
fn a_throttle_rule_lowers_window_and_rate_for_a_while_then_gives_them_back() {
    let dir = TempDir::new("shape-rule-throttle");
    let clock = ManualClock::new(T0);
    let two_a_minute = RateLimit {
        per_minute: 2,
        ..RateLimit::default()
    };
    let o = Options {
        reply_rules: vec![ReplyRule {
            pattern: r"^421 4\.7\.0 .*rate limited".into(),
            action: RuleAction::Throttle {
                window: 1,
                rate: two_a_minute,
                duration: std::time::Duration::from_secs(600),
            },
        }],
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o.clone()).unwrap();
    q.set_rate_limit(
        "outlook.com",
        RateLimit {
            per_day: 10_000,
            ..RateLimit::default()
        },
    )
    .unwrap();
    fill(&q, "outlook.com", 20);
    let mut s = q.session_for("outlook.com").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    d.complete(&[Outcome::temp("421 4.7.0 You are being rate limited")])
        .unwrap();
    s.finish().unwrap();
    let b = dest(&q, "outlook.com");
    assert_eq!(b.limit, 1);
    let both = RateLimit {
        per_minute: 2,
        per_day: 10_000,
        ..RateLimit::default()
    };
    assert_eq!(b.rate_limit, Some(both), "the stricter per period");
    assert_eq!(b.throttled_until, T0 + 600);
    // Two a minute, one session at a time: what goes now is at most 2.
    let sent = deliver_now(&q).len();
    assert!(sent <= 2, "{sent} sent under a 2/min throttle");
    let why = q
        .explain_all(
            q.select(
                &Selector {
                    route: Some("outlook.com".into()),
                    states: vec![RcptState::Ready],
                    ..Selector::default()
                },
                1,
            )
            .unwrap()[0]
                .id,
        )
        .unwrap()[0]
        .why
        .clone();
    assert!(why.contains("lowered by reply rule"), "{why}");
    // The operator raises the destination's own limit meanwhile: the
    // throttle keeps lowering it until it ends, then the new one is there.
    q.set_concurrency_limit("outlook.com", 30).unwrap();
    assert_eq!(dest(&q, "outlook.com").limit, 1);
    drop(q);
    // Persisted: a restart keeps the throttle and its end.
    let q = Queue::open(dir.path(), o).unwrap();
    let b = dest(&q, "outlook.com");
    assert_eq!((b.limit, b.throttled_until), (1, T0 + 600));
    clock.advance(600);
    q.tick();
    let b = dest(&q, "outlook.com");
    assert_eq!(b.limit, 30, "the operator's limit, not the old default");
    assert_eq!(
        b.rate_limit,
        Some(RateLimit {
            per_day: 10_000,
            ..RateLimit::default()
        })
    );
    assert_eq!(b.throttled_until, 0);
    assert_eq!(q.debug_check(), Ok(()));
}

#[test]
fn throttles_merge_stricter_and_a_session_open_through_one_is_fine_after() {
    let dir = TempDir::new("shape-throttle-merge");
    let clock = ManualClock::new(T0);
    let rule = |p: &str, window: u16, per_minute: u32, secs: u64| ReplyRule {
        pattern: p.into(),
        action: RuleAction::Throttle {
            window,
            rate: RateLimit {
                per_minute,
                ..RateLimit::default()
            },
            duration: std::time::Duration::from_secs(secs),
        },
    };
    let o = Options {
        reply_rules: vec![rule("^451 one", 1, 0, 3600), rule("^451 rate", 0, 10, 300)],
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o).unwrap();
    fill(&q, "m.example", 10);
    // A session opens and stays open (no request) through both throttles.
    let idle = q.session_for("m.example").unwrap().unwrap();
    for reply in ["451 rate", "451 one"] {
        let mut s = q.session_for("m.example").unwrap().unwrap();
        let d = s.next_delivery().unwrap().unwrap();
        d.complete(&[Outcome::temp(reply)]).unwrap();
        drop(s);
        clock.advance(6); // the 10/min rate allows the next message
        q.tick();
    }
    let b = dest(&q, "m.example");
    assert_eq!(b.limit, 1, "the second rule's window");
    assert_eq!(
        b.rate_limit.map(|r| r.per_minute),
        Some(10),
        "the first's rate is kept"
    );
    assert_eq!(b.throttled_until, T0 + 6 + 3600, "the later end");
    clock.advance(3600);
    q.tick();
    assert_eq!(dest(&q, "m.example").throttled_until, 0);
    assert_eq!(
        q.debug_check(),
        Ok(()),
        "the idle session counts in the window again"
    );
    drop(idle);
}
