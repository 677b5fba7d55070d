//! The operator plane in the library: selection by predicate, bulk actions
//! with dry runs (including on recipients in flight), and "explain".

mod common;
use common::*;
use mailq::*;
use std::time::Duration;

fn by(f: impl FnOnce(&mut Selector)) -> Selector {
    let mut s = Selector::default();
    f(&mut s);
    s
}

fn queue(dir: &TempDir, clock: &std::sync::Arc<ManualClock>) -> (Queue, [MessageId; 3]) {
    three_messages(dir, clock)
}

/// The messages of a selection's matches, in its order.
fn ids(q: &Queue, sel: &Selector) -> Vec<MessageId> {
    q.select(sel, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect()
}

fn pairs(v: &[Selected]) -> Vec<(MessageId, u32)> {
    let mut p: Vec<_> = v.iter().map(|s| (s.id, s.index)).collect();
    p.sort();
    p
}

#[test]
fn selectors_combine_index_and_envelope_criteria() {
    let dir = TempDir::new("op-select");
    let clock = ManualClock::new(T0);
    let (q, [a, b, c]) = queue(&dir, &clock);
    let sel = |s: Selector| pairs(&q.select(&s, usize::MAX).unwrap());

    assert_eq!(sel(Selector::default()).len(), 4, "everything not final");
    assert_eq!(
        sel(by(|s| s.sender = Some("news@*".into()))),
        [(a, 0), (a, 1)]
    );
    assert_eq!(sel(by(|s| s.sender = Some("<>".into()))), [(c, 0)]);
    assert_eq!(
        sel(by(|s| s.recipient = Some("*@gmail.com".into()))),
        [(a, 0), (b, 0)],
        "globs ignore case"
    );
    assert_eq!(
        sel(by(|s| s.domain = Some("gmail.com".into()))),
        [(a, 0), (b, 0)]
    );
    assert_eq!(sel(by(|s| s.route = Some("yahoo.com".into()))), [(a, 1)]);
    assert_eq!(sel(by(|s| s.route = Some("nowhere.example".into()))), []);
    assert_eq!(
        sel(by(|s| s.older_than = Some(Duration::from_secs(5400)))),
        [(a, 0), (a, 1)]
    );
    assert_eq!(
        sel(by(|s| s.younger_than = Some(Duration::from_secs(1800)))),
        [(c, 0)]
    );
    assert_eq!(sel(by(|s| s.ids = vec![b, c])), [(b, 0), (c, 0)]);
    // Criteria combine: gmail recipients of the newsletter only.
    assert_eq!(
        sel(by(|s| {
            s.domain = Some("gmail.com".into());
            s.sender = Some("news@*".into());
        })),
        [(a, 0)]
    );
    // The envelope comes back when it was needed.
    let hit = q
        .select(&by(|s| s.sender = Some("billing@*".into())), 10)
        .unwrap();
    assert_eq!(
        (
            hit[0].address.as_str(),
            hit[0].sender.as_str(),
            hit[0].route.as_str()
        ),
        ("cat@GMAIL.com", "billing@shop.example", "gmail.com")
    );
    assert_eq!(q.select(&Selector::default(), 2).unwrap().len(), 2, "limit");

    // State, attempts and the last error come from memory.
    drain(&q, |rcpt, _| {
        if rcpt.ends_with("gmail.com") {
            Outcome::temp("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred - 1a2b3c")
        } else {
            Outcome::Delivered
        }
    });
    assert_eq!(
        sel(by(|s| s.states = vec![RcptState::Deferred])),
        [(a, 0), (b, 0)]
    );
    assert_eq!(sel(by(|s| s.min_attempts = Some(1))), [(a, 0), (b, 0)]);
    assert_eq!(
        sel(by(|s| s.error = Some("tss04".into()))),
        [(a, 0), (b, 0)]
    );
    assert_eq!(sel(by(|s| s.error = Some("5.1.1".into()))), []);
    // Final states when asked, of messages still queued (c is gone: all done).
    assert_eq!(sel(by(|s| s.states = vec![RcptState::Delivered])), [(a, 1)]);
}

#[test]
fn bulk_actions_count_in_a_dry_run_exactly_what_they_change() {
    let dir = TempDir::new("op-act");
    let clock = ManualClock::new(T0);
    let (q, [a, b, _c]) = queue(&dir, &clock);
    let gmail = by(|s| s.domain = Some("gmail.com".into()));

    assert_eq!(q.act(&gmail, &Op::Hold, true).unwrap(), 2);
    assert_eq!(
        q.select(&by(|s| s.states = vec![RcptState::Held]), 10)
            .unwrap()
            .len(),
        0,
        "a dry run changes nothing"
    );
    assert_eq!(q.act(&gmail, &Op::Hold, false).unwrap(), 2);
    assert_eq!(q.act(&gmail, &Op::Hold, true).unwrap(), 0, "already held");
    assert_eq!(q.act(&gmail, &Op::Release, true).unwrap(), 2);
    assert_eq!(
        q.act(&gmail, &Op::Flush, true).unwrap(),
        0,
        "nothing deferred"
    );

    // Bounce (a DSN is due, with the operator's reason) versus delete (none).
    let news = by(|s| s.sender = Some("news@*".into()));
    assert_eq!(
        q.act(&news, &Op::Bounce("spam run, stopped by ops".into()), true)
            .unwrap(),
        2
    );
    assert_eq!(
        q.act(&news, &Op::Bounce("spam run, stopped by ops".into()), false)
            .unwrap(),
        2
    );
    let bounces = q.take_bounces(10).unwrap();
    assert_eq!(bounces.len(), 2);
    assert!(
        bounces
            .iter()
            .all(|x| x.id == a && !x.expired && x.reason.contains("spam run, stopped by ops")),
        "{bounces:?}"
    );
    assert_eq!(
        q.act(&by(|s| s.ids = vec![b]), &Op::Delete, false).unwrap(),
        1
    );
    assert!(
        q.take_bounces(10).unwrap().is_empty(),
        "delete sends no DSN"
    );

    // Re-route by predicate; durable: it survives a reopen.
    let corp = by(|s| s.domain = Some("corp.example".into()));
    assert_eq!(
        q.act(&corp, &Op::Reroute("smarthost:backup".into()), true)
            .unwrap(),
        1
    );
    assert_eq!(
        q.act(&corp, &Op::Reroute("smarthost:backup".into()), false)
            .unwrap(),
        1
    );
    assert_eq!(
        q.act(&corp, &Op::Reroute("smarthost:backup".into()), true)
            .unwrap(),
        0,
        "already there"
    );
    drop(q);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    let hit = q.select(&corp, 10).unwrap();
    assert_eq!(hit[0].route, "smarthost:backup");
    assert!(
        matches!(
            q.act(&corp, &Op::Reroute("".into()), false),
            Err(Error::InvalidRoutingKey { .. })
        ),
        "an empty key is refused"
    );
}

#[test]
fn an_action_on_a_recipient_in_flight_takes_effect_when_its_attempt_ends() {
    let dir = TempDir::new("op-inflight");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    let id = q
        .enqueue(&msg("a@example.org", &["x@slow.example"], b"x"))
        .unwrap();
    let mut s = q.next_session().unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    let all = Selector::default();
    assert_eq!(q.select(&all, 10).unwrap()[0].state, RcptState::Leased);
    assert_eq!(q.act(&all, &Op::Hold, false).unwrap(), 1);
    assert_eq!(
        q.act(&all, &Op::Bounce("no".into()), true).unwrap(),
        0,
        "bounce leaves a recipient in flight alone"
    );
    d.complete(&[Outcome::temp("451 try later")]).unwrap();
    drop(s);
    let e = q.explain(id, 0).unwrap();
    assert_eq!(
        e.state,
        RcptState::Held,
        "the hold applied when the attempt ended"
    );
    assert!(e.why.starts_with("held by the operator"), "{}", e.why);
}

#[test]
fn explain_says_why_a_recipient_waits() {
    let dir = TempDir::new("op-explain");
    let clock = ManualClock::new(T0);
    let mut o = opts(&clock);
    o.concurrency.initial = 1;
    o.concurrency.dead_after = 1;
    let q = Queue::open(dir.path(), o).unwrap();
    let id = q
        .enqueue(&msg(
            "a@example.org",
            &["x@busy.example", "y@busy.example"],
            b"x",
        ))
        .unwrap();
    let e = q.explain(id, 0).unwrap();
    assert!(
        e.why
            .starts_with("ready: the next session for busy.example takes it"),
        "{}",
        e.why
    );
    assert_eq!(e.destination.as_ref().unwrap().ready, 2);

    // A session is open (window 1): the other recipient waits for the slot.
    let mut s = q.next_session().unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(d.recipients().len(), 2);
    let e = q.explain(id, 1).unwrap();
    assert!(
        e.why
            .starts_with("in flight: a delivery session for busy.example holds it"),
        "{}",
        e.why
    );
    d.complete(&[
        Outcome::temp("452 4.2.2 mailbox full (uid 8c1f)"),
        Outcome::Delivered,
    ])
    .unwrap();
    drop(s);
    let e = q.explain(id, 0).unwrap();
    assert!(
        e.why
            .starts_with("deferred after attempt 1: next attempt at "),
        "{}",
        e.why
    );
    assert!(
        e.why.contains("452 4.2.2 mailbox full (uid 8c1f)"),
        "{}",
        e.why
    );
    assert_eq!(e.next_attempt, T0 + 300);
    assert!(q
        .explain(id, 1)
        .unwrap()
        .why
        .starts_with("final: delivered"));
    assert!(matches!(q.explain(id, 7), Err(Error::NoSuchRecipient(..))));

    // Due, but the destination is suspended; then marked dead.
    clock.advance(301);
    q.tick();
    q.suspend("busy.example").unwrap();
    assert!(q
        .explain(id, 0)
        .unwrap()
        .why
        .starts_with("destination busy.example is suspended"));
    q.resume("busy.example").unwrap();
    let s = q.next_session().unwrap().unwrap();
    s.site_failure("connect refused").unwrap();
    let e = q.explain(id, 0).unwrap();
    assert!(
        e.why
            .starts_with("destination busy.example is marked dead after 1 site failures until "),
        "{}",
        e.why
    );
}

/// Found by the simulator: a dry run judged an in-flight recipient by its
/// state alone, so "release" counted one that had no hold to release.
#[test]
fn dry_runs_judge_in_flight_recipients_by_their_intent() {
    let dir = TempDir::new("op-dry-inflight");
    let clock = ManualClock::new(T0);
    let (q, [a, _, _]) = queue(&dir, &clock);
    let mut s = q.session_for("gmail.com").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    let gmail = by(|s| s.route = Some("gmail.com".into()));
    for (op, n) in [
        (Op::Release, 0),
        (Op::Hold, 2),
        (Op::Hold, 0),
        (Op::Release, 2),
    ] {
        assert_eq!(q.act(&gmail, &op, true).unwrap(), n, "dry {op:?}");
        assert_eq!(q.act(&gmail, &op, false).unwrap(), n, "{op:?}");
    }
    // Re-routing an in-flight recipient to where it is: nothing, unless a
    // re-route elsewhere is pending (then it cancels that).
    let one = by(|s| s.ids = vec![a]);
    let to_self = Op::Reroute("gmail.com".into());
    let ann = by(|s| {
        s.ids = vec![a];
        s.route = Some("gmail.com".into())
    });
    assert_eq!(q.act(&ann, &to_self, true).unwrap(), 0);
    assert_eq!(q.act(&ann, &Op::Reroute("relay".into()), true).unwrap(), 1);
    assert_eq!(q.act(&ann, &Op::Reroute("relay".into()), false).unwrap(), 1);
    assert_eq!(
        q.act(&ann, &to_self, true).unwrap(),
        1,
        "cancels the pending one"
    );
    assert_eq!(q.act(&ann, &to_self, false).unwrap(), 1);
    assert_eq!(
        q.act(&one, &Op::Bounce("x".into()), true).unwrap(),
        1,
        "bob only"
    );
    drop(d);
    drop(s);
}

#[test]
fn a_timed_suspension_ends_by_itself_and_keeps_its_length_when_the_clock_steps_back() {
    let dir = TempDir::new("op-suspend-for");
    let clock = ManualClock::new(T0);
    let (q, _) = queue(&dir, &clock);
    let now = T0 + 7200;
    q.suspend_for("gmail.com", Duration::from_secs(600))
        .unwrap();
    assert!(q.session_for("gmail.com").unwrap().is_none());
    let gmail = q
        .stats()
        .buckets
        .into_iter()
        .find(|b| b.key == "gmail.com")
        .unwrap();
    assert_eq!((gmail.suspended, gmail.suspended_until), (true, now + 600));
    assert!(q.next_wakeup().is_some_and(|t| t <= now + 600));
    let e = q.explain(q.list(10)[1].id, 0).unwrap();
    assert!(
        e.why.contains("suspended by the operator until"),
        "{}",
        e.why
    );
    clock.advance(599);
    q.tick();
    assert!(q.session_for("gmail.com").unwrap().is_none(), "not yet");
    clock.advance(1);
    q.tick();
    assert!(
        q.session_for("gmail.com").unwrap().is_some(),
        "ended by itself"
    );
    // The clock steps back a day during a suspension: it lasts what was
    // asked from then on, neither a day longer nor cut short.
    q.suspend_for("yahoo.com", Duration::from_secs(600))
        .unwrap();
    clock.set(now + 600 - 86_400);
    q.tick();
    assert!(
        q.session_for("yahoo.com").unwrap().is_none(),
        "still suspended"
    );
    clock.advance(599);
    q.tick();
    assert!(q.session_for("yahoo.com").unwrap().is_none(), "not yet");
    clock.advance(1);
    q.tick();
    assert!(
        q.session_for("yahoo.com").unwrap().is_some(),
        "ended 600 s later"
    );
    // A suspension until resumed does not end by itself (four days: within
    // the message's lifetime, past which it would expire where it waits).
    q.suspend("corp.example").unwrap();
    clock.advance(4 * 86_400);
    q.tick();
    assert!(q.session_for("corp.example").unwrap().is_none());
    q.resume("corp.example").unwrap();
    assert!(q.session_for("corp.example").unwrap().is_some());
    assert!(matches!(
        q.suspend_for("x.org", Duration::ZERO),
        Err(Error::InvalidOption(_))
    ));
}

/// A search that reads envelopes goes through the log in passes over ranges
/// of segments, reading each pass's records in log order; compaction meanwhile
/// copies records forward and deletes the segments they were in. Every message
/// that stays queued is found by every search, exactly once.
#[test]
fn envelope_searches_find_each_message_once_while_compaction_moves_records() {
    let dir = TempDir::new("op-search-moves");
    let clock = ManualClock::new(T0);
    let q = Queue::open(
        dir.path(),
        Options {
            clock: clock.clone(),
            segment_size: 8192,
            checkpoint_bytes: u64::MAX,
            auto_maintenance: false,
            ..Options::default()
        },
    )
    .unwrap();
    // Passes of four messages: many passes, and records moving between them.
    q.debug_set_search_batch(4);
    let body = [b'x'; 300];
    let churn = || {
        q.enqueue(&msg("churn@b.example", &["c@churn.example"], &body))
            .unwrap()
    };
    let mut keep = Vec::new();
    for i in 0..200 {
        if i % 5 == 0 {
            keep.push(
                q.enqueue(&msg("keep@a.example", &["k@kept.example"], &body))
                    .unwrap(),
            );
        } else {
            churn();
        }
    }
    keep.sort();
    let first = segment_files(dir.path())[0].clone();
    let sel = by(|s| s.sender = Some("keep@*".into()));
    let searches = std::thread::scope(|s| {
        let mover = s.spawn(|| {
            for _ in 0..40 {
                // The churn goes, the segments turn sparse, the checkpoint
                // copies the kept messages forward; new churn fills the
                // segment they moved to, so they move again next time.
                deliver_key(&q, "churn.example", Outcome::Delivered);
                q.checkpoint().unwrap();
                for _ in 0..30 {
                    churn();
                }
            }
        });
        let mut n = 0;
        // Until the mover ends (a panic there fails the test at the scope's end).
        while !mover.is_finished() || n < 3 {
            let mut got = ids(&q, &sel);
            got.sort();
            assert_eq!(got, keep, "search {n}: each kept message once");
            n += 1;
        }
        n
    });
    assert!(
        !first.exists(),
        "the kept messages moved out of the first segment ({} searches ran meanwhile)",
        searches
    );
    // A limit keeps the oldest (acceptance time, then id), whatever moved.
    let two: Vec<MessageId> = q.select(&sel, 2).unwrap().iter().map(|s| s.id).collect();
    assert_eq!(two, keep[..2]);
}

/// The segments a search is about to read are compacted away between its
/// look at the index and its reads (a checkpoint runs when the search opens
/// the first segment): the moved messages are read where they went, and the
/// search neither fails nor misses one.
#[test]
fn a_search_finds_messages_whose_segments_were_compacted_away_meanwhile() {
    use common::hookfs::{HookFs, On};
    let sim = mailq::sim::SimFs::new();
    let hfs = HookFs::new(sim.clone());
    let clock = ManualClock::new(T0);
    let o = || Options {
        vfs: hfs.vfs(),
        clock: clock.clone(),
        segment_size: 4096,
        checkpoint_bytes: u64::MAX,
        auto_maintenance: false,
        ..Options::default()
    };
    let q = Queue::open("/q", o()).unwrap();
    let mut keep = Vec::new();
    for i in 0..20 {
        let (sender, rcpt) = if i % 5 == 0 {
            ("keep@a.example", "k@kept.example")
        } else {
            ("churn@b.example", "c@churn.example")
        };
        let id = q.enqueue(&msg(sender, &[rcpt], &[b'x'; 500])).unwrap();
        if i % 5 == 0 {
            keep.push(id);
        }
    }
    deliver_key(&q, "churn.example", Outcome::Delivered);
    q.sync().unwrap();
    drop(q);
    // Reopened, so the first segment is opened again by the search.
    let q = Queue::open("/q", o()).unwrap();
    let q2 = q.clone();
    hfs.arm(On::Open, "00000001.seg", move || q2.checkpoint().unwrap());
    let got = ids(&q, &by(|s| s.sender = Some("keep@*".into())));
    assert!(!hfs.armed(), "the checkpoint ran during the search");
    let segs: Vec<String> = sim
        .files(std::path::Path::new("/q"))
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !segs
            .iter()
            .any(|p| p.ends_with("00000001.seg") || p.ends_with("00000002.seg")),
        "the first segments were compacted away: {segs:?}"
    );
    assert_eq!(got, keep);
}

/// A message whose record is gone (a segment lost) does not fail every
/// search: it matches no envelope criterion, the search goes on, and once a
/// delivery has met the damage the operator finds it by state and deletes it.
#[test]
fn a_damaged_message_does_not_fail_searches_and_is_found_by_state() {
    let dir = TempDir::new("op-damaged");
    let clock = ManualClock::new(T0);
    let o = || Options {
        clock: clock.clone(),
        segment_size: 4096,
        ..Options::default()
    };
    let q = Queue::open(dir.path(), o()).unwrap();
    let body = [b'y'; 3000];
    let lost = q
        .enqueue(&msg("s@x.example", &["a@one.example"], &body))
        .unwrap();
    let kept = q
        .enqueue(&msg("s@x.example", &["b@two.example"], &body))
        .unwrap();
    q.close().unwrap();
    std::fs::remove_file(&segment_files(dir.path())[0]).unwrap();
    let q = Queue::open(dir.path(), o()).unwrap();
    let by_sender = by(|s| s.sender = Some("s@*".into()));
    let found = ids(&q, &by_sender);
    assert_eq!(found, [kept], "the search goes on past the damage");
    assert!(
        q.stats().corrupt_ids.contains(&lost),
        "and reports it: {:?}",
        q.stats().corrupt_ids
    );
    assert_eq!(q.act(&by_sender, &Op::Hold, true).unwrap(), 1);
    // A delivery meets the damage and parks the recipient.
    let mut s = q.session_for("one.example").unwrap().unwrap();
    assert!(s.next_delivery().unwrap().is_none());
    drop(s);
    let corrupt = by(|s| s.states = vec![RcptState::Corrupt]);
    let found = ids(&q, &corrupt);
    assert_eq!(found, [lost]);
    assert!(q.explain(lost, 0).unwrap().why.contains("damaged"));
    assert!(q.explain_all(lost).unwrap()[0].why.contains("damaged"));
    #[cfg(feature = "admin")]
    {
        let all = q.admin_request("GET", &format!("/v1/explain/{lost}"), b"");
        let body = String::from_utf8_lossy(&all.body);
        assert_eq!(all.status, 200, "{body}");
        assert!(body.contains("damaged"), "{body}");
    }
    assert_eq!(q.act(&corrupt, &Op::Delete, false).unwrap(), 1);
    assert_eq!(q.stats().count("corrupt"), 0);
}
