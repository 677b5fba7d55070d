//! Limits shared by a fleet of queues (`Options::fleet`): three nodes, each
//! with its own queue, share one limiter for a destination of 2 connections
//! and 6 messages a minute. Sessions held at once and messages per minute
//! across the fleet never exceed them; a node told to wait sleeps until the
//! time it was given (part of `next_wakeup`), and everything is delivered.

mod common;
use common::*;
use mailq::*;
use std::sync::Arc;

fn node(dir: &TempDir, clock: &Arc<ManualClock>, fleet: &Arc<LocalFleet>) -> Queue {
    let o = Options {
        fleet: Some(fleet.clone() as Arc<dyn FleetLimiter>),
        ..opts(clock)
    };
    Queue::open(dir.path(), o).unwrap()
}

#[test]
fn three_nodes_never_exceed_the_fleet_limits() {
    let clock = ManualClock::new(T0);
    let fleet = LocalFleet::new(clock.clone());
    fleet.set_limit(
        "gmail.com",
        FleetLimit {
            connections: 2,
            rate: RateLimit {
                per_minute: 6,
                ..RateLimit::default()
            },
        },
    );
    let dirs: Vec<TempDir> = (0..3)
        .map(|i| TempDir::new(&format!("fleet-{i}")))
        .collect();
    let nodes: Vec<Queue> = dirs.iter().map(|d| node(d, &clock, &fleet)).collect();
    for q in &nodes {
        for i in 0..25 {
            q.enqueue(&msg("s@x.example", &[&format!("r{i}@gmail.com")], b"x"))
                .unwrap();
        }
        q.enqueue(&msg("s@x.example", &["free@yahoo.com"], b"y"))
            .unwrap();
    }
    // Every node opens what it may, all held at once: two in the fleet.
    let mut held = Vec::new();
    for q in &nodes {
        while let Some(s) = q.session_for("gmail.com").unwrap() {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 2, "fleet-wide connections");
    assert_eq!(fleet.leases("gmail.com"), 2);
    // A node that was refused waits (a wake-up), while other destinations go.
    let refused = nodes
        .iter()
        .position(|q| q.session_for("gmail.com").unwrap().is_none())
        .unwrap();
    let s = nodes[refused].next_session().unwrap().unwrap();
    assert_eq!(s.routing_key(), "yahoo.com");
    drop(s);
    drop(held);
    assert_eq!(fleet.leases("gmail.com"), 0, "closed sessions release");
    // Ten simulated minutes; each second every node delivers what it may.
    let mut sent: Vec<u64> = Vec::new(); // unix second of each gmail delivery
    for _ in 0..600 {
        for q in &nodes {
            q.tick();
            while let Some(mut s) = q.next_session().unwrap() {
                while let Some(d) = s.next_delivery().unwrap() {
                    if d.routing_key() == "gmail.com" {
                        sent.push(clock.now_millis() / 1000);
                    }
                    let n = d.recipients().len();
                    d.complete(&vec![Outcome::Delivered; n]).unwrap();
                }
                s.finish().unwrap();
            }
            assert!(fleet.leases("gmail.com") <= 2);
        }
        clock.advance(1);
    }
    for (i, &t) in sent.iter().enumerate() {
        let in_window = sent[i..].iter().take_while(|&&u| u < t + 60).count();
        assert!(
            in_window <= 6,
            "{in_window} messages in the minute from {t}"
        );
    }
    // 75 queued: the fleet's rate, not the mail, is what binds.
    assert!(
        sent.len() >= 54,
        "the fleet's whole rate is used: {}",
        sent.len()
    );
    assert!(sent.len() <= 60);
    for q in &nodes {
        assert_eq!(q.debug_check(), Ok(()));
    }
}

#[test]
fn a_node_told_to_wait_sleeps_until_then() {
    let clock = ManualClock::new(T0);
    let fleet = LocalFleet::new(clock.clone());
    fleet.set_limit(
        "slow.example",
        FleetLimit {
            connections: 0,
            rate: RateLimit {
                per_minute: 1,
                ..RateLimit::default()
            },
        },
    );
    let (da, db) = (TempDir::new("fleet-wait-a"), TempDir::new("fleet-wait-b"));
    let (a, b) = (node(&da, &clock, &fleet), node(&db, &clock, &fleet));
    for q in [&a, &b] {
        q.enqueue(&msg("s@x.example", &["r@slow.example"], b"x"))
            .unwrap();
    }
    assert_eq!(deliver_key(&a, "slow.example", Outcome::Delivered).len(), 1);
    // Node b's message may not go this minute: its session takes nothing,
    // and its queue sleeps until the fleet's time, not in a busy loop.
    assert!(deliver_key(&b, "slow.example", Outcome::Delivered).is_empty());
    b.sync().unwrap();
    let w = b.next_wakeup().unwrap();
    assert!(w > T0 && w <= T0 + 60, "wake-up at {}", w - T0);
    assert!(b.next_session().unwrap().is_none());
    clock.set(w);
    b.tick();
    assert_eq!(deliver_key(&b, "slow.example", Outcome::Delivered).len(), 1);
}

#[test]
fn a_session_reclaimed_by_its_deadline_still_releases_its_fleet_lease() {
    let clock = ManualClock::new(T0);
    let fleet = LocalFleet::new(clock.clone());
    fleet.set_limit(
        "x.example",
        FleetLimit {
            connections: 1,
            rate: RateLimit::default(),
        },
    );
    let d = TempDir::new("fleet-reclaim");
    let q = node(&d, &clock, &fleet);
    q.enqueue(&msg("s@x.example", &["a@x.example", "b@x.example"], b"x"))
        .unwrap();
    let mut s = q.session_for("x.example").unwrap().unwrap();
    assert_eq!(fleet.leases("x.example"), 1);
    // The worker goes silent past its lease: the queue reclaims the slot.
    clock.advance(3600);
    q.tick();
    assert!(matches!(s.next_delivery(), Err(Error::LeaseExpired)));
    drop(s);
    assert_eq!(fleet.leases("x.example"), 0, "released on every path");
    assert!(q.session_for("x.example").unwrap().is_some());
}

#[test]
fn a_refused_open_never_ends_the_nodes_open_sessions_and_queues_never_share_leases() {
    let clock = ManualClock::new(T0);
    let fleet = LocalFleet::new(clock.clone());
    fleet.set_limit(
        "x.example",
        FleetLimit {
            connections: 2,
            rate: RateLimit::default(),
        },
    );
    // Two queues on one clock: their fencing tokens are the same numbers.
    let (da, db) = (TempDir::new("fleet-own-a"), TempDir::new("fleet-own-b"));
    let (a, b) = (node(&da, &clock, &fleet), node(&db, &clock, &fleet));
    for q in [&a, &b] {
        for i in 0..6 {
            q.enqueue(&msg("s@x.example", &[&format!("r{i}@x.example")], b"x"))
                .unwrap();
        }
    }
    let mut sa = a.session_for("x.example").unwrap().unwrap();
    let mut sb = b.session_for("x.example").unwrap().unwrap();
    assert_eq!(sa.fence(), sb.fence(), "same tokens, different queues");
    assert_eq!(fleet.leases("x.example"), 2, "two leases, not one");
    assert!(
        b.session_for("x.example").unwrap().is_none(),
        "the fleet is full"
    );
    assert!(a.session_for("x.example").unwrap().is_none());
    // The refusals keep new sessions out; the open ones go on.
    for s in [&mut sa, &mut sb] {
        let d = s
            .next_delivery()
            .unwrap()
            .expect("an open session keeps sending");
        d.complete(&[Outcome::Delivered]).unwrap();
    }
    drop(sa);
    assert_eq!(fleet.leases("x.example"), 1, "b's lease is still b's");
    let d = sb
        .next_delivery()
        .unwrap()
        .expect("b's lease was not released by a");
    d.complete(&[Outcome::Delivered]).unwrap();
}
