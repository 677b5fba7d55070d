//! Expiry wherever a recipient waits (held, suspended, starved behind a full
//! window, rate-limited — not only when an attempt fails: KumoMTA #539 kept
//! mail days past its max_age), delay warnings handed out like bounces, and
//! destination settings (suspensions, limits, rates) that survive a restart.

mod common;
use common::*;
use mailq::*;
use std::time::Duration;

const LIFE: u64 = 2 * 3600;

fn opts2(clock: &std::sync::Arc<ManualClock>, warn: u64) -> Options {
    Options {
        lifetime: Duration::from_secs(LIFE),
        delay_warning: Duration::from_secs(warn),
        ..opts(clock)
    }
}

/// No warnings, and a session lease longer than the lifetime: a session
/// that hangs keeps its slot (a starved destination) or its recipient in
/// flight across the expiry.
fn long_lease(clock: &std::sync::Arc<ManualClock>) -> Options {
    Options {
        lease_ttl: Duration::from_secs(3 * LIFE),
        ..opts2(clock, 0)
    }
}

fn state(q: &Queue, id: MessageId, i: usize) -> RcptState {
    q.inspect(id).unwrap().recipients[i].state
}

#[test]
fn recipients_that_are_never_attempted_expire_at_their_lifetime() {
    let dir = TempDir::new("expiry-everywhere");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), long_lease(&clock)).unwrap();
    // Held by the operator; for a suspended destination; starved behind a
    // window of one whose only session never ends; and out of rate.
    let held = q
        .enqueue(&msg("s@x.example", &["a@held.example"], b"1"))
        .unwrap();
    q.act(
        &Selector {
            ids: vec![held],
            ..Selector::default()
        },
        &Op::Hold,
        false,
    )
    .unwrap();
    q.suspend("suspended.example").unwrap();
    let susp = q
        .enqueue(&msg("s@x.example", &["b@suspended.example"], b"2"))
        .unwrap();
    q.set_concurrency_limit("starved.example", 1).unwrap();
    let starved: Vec<MessageId> = (0..2)
        .map(|i| {
            q.enqueue(&msg(
                "s@x.example",
                &[&format!("c{i}@starved.example")],
                b"3",
            ))
            .unwrap()
        })
        .collect();
    q.set_rate_limit(
        "slow.example",
        RateLimit {
            per_day: 1,
            ..RateLimit::default()
        },
    )
    .unwrap();
    let slow: Vec<MessageId> = (0..2)
        .map(|i| {
            q.enqueue(&msg("s@x.example", &[&format!("d{i}@slow.example")], b"4"))
                .unwrap()
        })
        .collect();
    // The one slow message its rate allows goes; a session on the starved
    // destination takes one message and then hangs (its lease is renewed).
    deliver_key(&q, "slow.example", Outcome::Delivered);
    let mut hung = q.session_for("starved.example").unwrap().unwrap();
    let d = hung.next_delivery().unwrap().unwrap();
    let in_flight = d.id();
    drop(d); // back to ready, the session (and the slot) stays open
    q.sync().unwrap();
    // The idle queue sleeps until the first expiry, not before.
    assert_eq!(q.next_wakeup(), Some(T0 + LIFE));
    clock.advance(LIFE - 1);
    q.tick();
    assert_eq!(state(&q, held, 0), RcptState::Held);
    clock.advance(1);
    q.tick();
    for (id, why) in [
        (held, "held by the operator"),
        (susp, "waiting for its destination"),
    ] {
        let info = q.inspect(id).unwrap();
        assert_eq!(info.recipients[0].state, RcptState::Expired, "{why}");
        assert!(info.recipients[0].last_error.contains(why), "{:?}", info);
    }
    for id in starved.iter().chain(&slow[1..]) {
        assert_eq!(state(&q, *id, 0), RcptState::Expired, "{id}");
    }
    assert!(starved.contains(&in_flight));
    hung.finish().unwrap();
    let bounces = q.take_bounces(100).unwrap();
    assert_eq!(bounces.len(), 5);
    assert!(bounces.iter().all(|b| b.expired && !b.delayed));
    for b in &bounces {
        assert!(q.ack_bounce(b.id, b.index).unwrap());
    }
    assert_eq!(q.stats().expired, 5);
    assert_eq!(q.debug_check(), Ok(()));
    // Nothing is left to expire: nothing to wake up for.
    q.sync().unwrap();
    assert_eq!(q.next_wakeup(), None);
}

#[test]
fn a_reply_stays_the_reason_and_expiry_survives_the_clock_stepping_back() {
    let dir = TempDir::new("expiry-reason");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts2(&clock, 0)).unwrap();
    let id = q
        .enqueue(&msg("s@x.example", &["a@gmail.com"], b"1"))
        .unwrap();
    let reply = "421 4.7.0 [TSS04] Messages temporarily deferred 5b1f0bcb4fasm2218311a12 - gsmtp";
    deliver_key(&q, "gmail.com", Outcome::temp(reply));
    // The operator suspends it for longer than the lifetime: no attempt again.
    q.suspend("gmail.com").unwrap();
    clock.advance(LIFE / 2);
    q.tick(); // a sweep: nothing due yet
    clock.set(T0 + LIFE / 2 - 3000); // the clock steps back ...
    q.tick();
    clock.set(T0 + LIFE); // ... and on to the lifetime: no minute to wait for
    q.tick();
    let info = q.inspect(id).unwrap();
    assert_eq!(info.recipients[0].state, RcptState::Expired);
    assert_eq!(info.recipients[0].last_error, reply);
    let b = q.take_bounces(10).unwrap();
    assert_eq!((b.len(), b[0].reason.as_str()), (1, reply));
}

#[test]
fn expiry_is_found_after_a_restart_and_is_durable() {
    let dir = TempDir::new("expiry-restart");
    let clock = ManualClock::new(T0);
    let id = {
        let q = Queue::open(dir.path(), opts2(&clock, 0)).unwrap();
        q.suspend("a.example").unwrap();
        q.enqueue(&msg("s@x.example", &["a@a.example"], b"1"))
            .unwrap()
    };
    clock.advance(LIFE + 5);
    {
        let q = Queue::open(dir.path(), opts2(&clock, 0)).unwrap();
        // Reopened with mail queued: a sweep is due at once.
        assert!(q.next_wakeup().is_some_and(|t| t <= T0 + LIFE + 5));
        q.tick();
        assert_eq!(state(&q, id, 0), RcptState::Expired);
    } // dropped without close: no checkpoint, the update record must hold it
    let q = Queue::open(dir.path(), opts2(&clock, 0)).unwrap();
    assert_eq!(state(&q, id, 0), RcptState::Expired);
}

#[test]
fn a_delay_warning_is_handed_out_once_and_survives_a_restart() {
    let dir = TempDir::new("delay-warning");
    let clock = ManualClock::new(T0);
    let warn = 1800;
    let q = Queue::open(dir.path(), opts2(&clock, warn)).unwrap();
    let id = q
        .enqueue(&msg(
            "s@x.example",
            &["a@slow.example", "b@fast.example"],
            b"1",
        ))
        .unwrap();
    deliver_key(&q, "fast.example", Outcome::Delivered);
    deliver_key(&q, "slow.example", Outcome::temp("451 4.3.0 later"));
    q.sync().unwrap();
    assert_eq!(q.next_wakeup(), Some(T0 + 300), "the retry comes first");
    clock.advance(warn);
    q.tick();
    let b = q.take_bounces(10).unwrap();
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].delayed && !b[0].expired);
    assert_eq!((b[0].id, b[0].index), (id, 0));
    assert_eq!(b[0].recipient, "a@slow.example");
    assert_eq!(b[0].reason, "451 4.3.0 later");
    // Not acknowledged: not offered again while the queue runs ...
    clock.advance(120);
    q.tick();
    assert!(q.take_bounces(10).unwrap().is_empty());
    drop(q);
    // ... but after a restart (the DSN may not have been queued).
    let q = Queue::open(dir.path(), opts2(&clock, warn)).unwrap();
    q.tick();
    let b = q.take_bounces(10).unwrap();
    assert_eq!(b.len(), 1);
    assert!(!q.ack_bounce(b[0].id, b[0].index).unwrap(), "not a bounce");
    assert!(q.ack_delay_warning(b[0].id, b[0].index).unwrap());
    assert!(
        !q.ack_delay_warning(b[0].id, b[0].index).unwrap(),
        "acknowledged once"
    );
    assert!(
        matches!(state(&q, id, 0), RcptState::Ready | RcptState::Deferred),
        "still queued"
    );
    assert_eq!(q.stats().delay_warnings, 1);
    assert_eq!(q.debug_check(), Ok(()));
    drop(q); // no checkpoint: the update record carries the flag
    for close in [false, true] {
        let q = Queue::open(dir.path(), opts2(&clock, warn)).unwrap();
        clock.advance(120);
        q.tick();
        assert!(q.take_bounces(10).unwrap().is_empty(), "warned once only");
        if close {
            q.close().unwrap(); // and in the checkpoint
        }
    }
    // From the checkpoint alone (the close above wrote one): warned already.
    let q = Queue::open(dir.path(), opts2(&clock, warn)).unwrap();
    assert!(q.recovery_report().checkpoint_used);
    clock.advance(120);
    q.tick();
    assert!(
        q.take_bounces(10).unwrap().is_empty(),
        "the checkpoint keeps it"
    );
    drop(q);
    // At the lifetime it expires, and that is a bounce.
    let q = Queue::open(dir.path(), opts2(&clock, warn)).unwrap();
    clock.set(T0 + LIFE + 60);
    q.tick();
    let b = q.take_bounces(10).unwrap();
    assert_eq!(b.len(), 1);
    assert!(b[0].expired && !b[0].delayed);
}

/// One message to x.example, whose destination is suspended past the
/// 600 s warning delay: (its id, what `take_bounces` hands out then).
fn warned_while_suspended(
    q: &Queue,
    clock: &std::sync::Arc<ManualClock>,
) -> (MessageId, Vec<Bounce>) {
    let id = q
        .enqueue(&msg("s@x.example", &["a@x.example"], b"1"))
        .unwrap();
    q.suspend("x.example").unwrap();
    clock.advance(600);
    q.tick();
    (id, q.take_bounces(10).unwrap())
}

#[test]
fn a_warning_acknowledged_in_flight_is_kept() {
    let dir = TempDir::new("delay-warning-inflight");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts2(&clock, 600)).unwrap();
    let (id, b) = warned_while_suspended(&q, &clock);
    assert_eq!(b.len(), 1);
    q.resume("x.example").unwrap();
    let mut s = q.session_for("x.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    // The MTA acknowledges the warning while the recipient is in flight.
    assert!(q.ack_delay_warning(id, 0).unwrap());
    d.complete(&[Outcome::temp("451 busy")]).unwrap();
    s.finish().unwrap();
    q.sync().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), opts2(&clock, 600)).unwrap();
    clock.advance(60);
    q.tick();
    assert!(q.take_bounces(10).unwrap().is_empty());
}

#[test]
fn delay_warning_must_be_shorter_than_the_lifetime() {
    let dir = TempDir::new("delay-warning-bad");
    let clock = ManualClock::new(T0);
    for w in [LIFE, LIFE + 1] {
        let e = Queue::open(dir.path(), opts2(&clock, w)).err().unwrap();
        assert!(matches!(e, Error::InvalidOption(_)), "{e}");
    }
    let o = Options {
        delay_warning: Duration::from_millis(500),
        ..opts2(&clock, 0)
    };
    assert!(Queue::open(dir.path(), o).is_err());
}

fn bucket(q: &Queue, key: &str) -> BucketStats {
    q.stats()
        .buckets
        .into_iter()
        .find(|b| b.key == key)
        .unwrap_or_else(|| panic!("no bucket {key}"))
}

#[test]
fn suspensions_limits_and_rates_survive_a_restart() {
    let dir = TempDir::new("settings-persist");
    let clock = ManualClock::new(T0);
    let rate = RateLimit {
        per_minute: 6,
        per_day: 1000,
        ..RateLimit::default()
    };
    {
        let q = Queue::open(dir.path(), opts(&clock)).unwrap();
        q.suspend_for("timed.example", Duration::from_secs(3600))
            .unwrap();
        q.suspend("forever.example").unwrap();
        q.set_concurrency_limit("limited.example", 3).unwrap();
        q.set_rate_limit("rated.example", rate).unwrap();
        // Set and then cleared: back to the defaults after the restart too.
        q.suspend("cleared.example").unwrap();
        q.resume("cleared.example").unwrap();
        for d in ["timed", "forever", "limited", "rated", "cleared"] {
            q.enqueue(&msg("s@x.example", &[&format!("a@{d}.example")], b"1"))
                .unwrap();
        }
    }
    // From the log (dropped without a checkpoint), then from a checkpoint.
    for round in 0..2 {
        clock.advance(60);
        let q = Queue::open(dir.path(), opts(&clock)).unwrap();
        let t = bucket(&q, "timed.example");
        assert!(t.suspended, "round {round}");
        assert_eq!(t.suspended_until, T0 + 3600);
        assert!(bucket(&q, "forever.example").suspended);
        assert_eq!(bucket(&q, "forever.example").suspended_until, 0);
        assert_eq!(bucket(&q, "limited.example").limit, 3);
        assert_eq!(bucket(&q, "rated.example").rate_limit, Some(rate));
        assert!(!bucket(&q, "cleared.example").suspended);
        if round == 1 {
            // The timed suspension still ends by itself.
            clock.set(T0 + 3600);
            q.tick();
            assert!(!bucket(&q, "timed.example").suspended);
        }
        q.close().unwrap();
    }
    // A suspension that ended stays ended; one that was not timed stays.
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.suspend_for("timed.example", Duration::from_secs(600))
        .unwrap();
    drop(q);
    clock.set(T0 - 86400); // the clock stepped back a day while closed
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    let t = bucket(&q, "timed.example");
    assert!(t.suspended);
    assert!(
        t.suspended_until <= T0 - 86400 + 600,
        "re-based, not stretched: {}",
        t.suspended_until
    );
    assert!(bucket(&q, "forever.example").suspended);
}

#[test]
fn a_warning_acked_after_its_recipient_failed_does_not_swallow_the_bounce() {
    let dir = TempDir::new("delay-warning-then-fail");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts2(&clock, 600)).unwrap();
    let (id, w) = warned_while_suspended(&q, &clock);
    assert!(w.len() == 1 && w[0].delayed);
    // While the MTA queues the delay DSN, the recipient fails for good.
    q.resume("x.example").unwrap();
    deliver_key(&q, "x.example", Outcome::perm("550 5.1.1 no such user"));
    assert!(
        !q.ack_delay_warning(id, 0).unwrap(),
        "no warning to ack now"
    );
    let b = q.take_bounces(10).unwrap();
    assert!(b.len() == 1 && !b[0].delayed && !b[0].expired, "{b:?}");
    assert!(q.ack_bounce(id, 0).unwrap());
}

fn poll_readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

#[test]
fn mail_for_a_suspended_destination_wakes_the_loop_to_reschedule_its_expiry() {
    let dir = TempDir::new("expiry-wakes");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts2(&clock, 0)).unwrap();
    q.suspend("x.example").unwrap();
    q.sync().unwrap();
    q.ack_poll();
    assert!(!poll_readable(q.poll_fd()));
    assert_eq!(q.next_wakeup(), None, "an idle, empty queue sleeps");
    q.enqueue(&msg("s@x.example", &["a@x.example"], b"1"))
        .unwrap();
    // Nothing became ready, but the loop must learn its new timeout.
    assert!(poll_readable(q.poll_fd()), "the loop is woken");
    assert_eq!(q.next_wakeup(), Some(T0 + LIFE));
    q.ack_poll();
    clock.advance(60);
    q.enqueue(&msg("s@x.example", &["b@x.example"], b"2"))
        .unwrap();
    assert!(
        !poll_readable(q.poll_fd()),
        "a later expiry changes nothing"
    );
}

#[test]
fn a_recipient_back_from_flight_expires_when_the_clock_stepped_back_behind_the_last_sweep() {
    let dir = TempDir::new("expiry-clock-back");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), long_lease(&clock)).unwrap();
    let id = q
        .enqueue(&msg("s@x.example", &["a@x.example"], b"1"))
        .unwrap();
    // In flight while the sweep runs at its lifetime: left to its attempt.
    let mut s = q.session_for("x.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    clock.set(T0 + LIFE + 30);
    q.tick();
    assert_eq!(state(&q, id, 0), RcptState::Leased);
    // The attempt ends without an outcome, and the clock steps back 20 s:
    // the next tick sweeps at once, not a minute after the last sweep.
    drop(d);
    s.finish().unwrap();
    clock.set(T0 + LIFE + 10);
    assert!(q.next_wakeup().is_some_and(|t| t <= T0 + LIFE + 10));
    q.tick();
    assert_eq!(state(&q, id, 0), RcptState::Expired);
}
