//! Egress sources: a destination's sessions spread over the sources of its
//! pool, per-source (path) concurrency and rate limits hold with the
//! destination's own, warm-up schedules cap a source's messages a day
//! (persisted across a restart, never refreshed by a clock step back), and
//! overflow stays queued or goes out through another source of the pool.

mod common;
use common::*;
use mailq::*;
use std::collections::HashMap;

const DAY: u64 = 86_400;

fn fill(q: &Queue, dom: &str, n: usize) {
    for i in 0..n {
        q.enqueue(&msg("s@x.example", &[&format!("r{i}@{dom}")], b"x"))
            .unwrap();
    }
}

/// Delivers whatever the queue hands out now; counts deliveries per source.
fn deliver_now(q: &Queue) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut sessions = 0;
    while let Some(mut s) = q.next_session().unwrap() {
        sessions += 1;
        assert!(sessions < 1000, "sessions that send nothing: a busy loop");
        let src = s.source().unwrap_or("-").to_string();
        while let Some(d) = s.next_delivery().unwrap() {
            *out.entry(src.clone()).or_default() += 1;
            let n = d.recipients().len();
            d.complete(&vec![Outcome::Delivered; n]).unwrap();
        }
        s.finish().unwrap();
    }
    out
}

/// Gives `dom` the pool "warming" (capped at `per_day` on day 1) and
/// "seasoned".
fn warming_pool(q: &Queue, dom: &str, per_day: u32) {
    q.set_sources(Some(dom), &["warming", "seasoned"]).unwrap();
    q.set_warmup("warming", &[WarmupStep { day: 1, per_day }])
        .unwrap();
}

fn per_minute(n: u32) -> RateLimit {
    RateLimit {
        per_minute: n,
        ..RateLimit::default()
    }
}

#[test]
fn sessions_spread_over_the_pool_and_each_source_holds_its_limit() {
    let dir = TempDir::new("src-spread");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    fill(&q, "big.example", 50);
    q.set_sources(Some("big.example"), &["ip-a", "ip-b", "ip-c"])
        .unwrap();
    q.set_source_limits("big.example", 1, RateLimit::default())
        .unwrap();
    // The window (5) would allow five sessions; one per source allows three,
    // one through each.
    let mut open = Vec::new();
    while let Some(s) = q.next_session().unwrap() {
        open.push(s);
    }
    let mut used: Vec<&str> = open.iter().map(|s| s.source().unwrap()).collect();
    used.sort();
    assert_eq!(used, ["ip-a", "ip-b", "ip-c"]);
    let d = q.destination("big.example").unwrap().unwrap();
    assert_eq!(d.sources.len(), 3);
    assert!(d.sources.iter().all(|p| p.sessions == 1), "{:?}", d.sources);
    assert_eq!(q.debug_check(), Ok(()));
    // A session that ends frees its source for the next one.
    let freed = open.remove(1);
    let name = freed.source().unwrap().to_string();
    freed.finish().unwrap();
    let again = q.next_session().unwrap().expect("a source is free");
    assert_eq!(again.source(), Some(name.as_str()));
    assert!(q.next_session().unwrap().is_none());
    // A destination without a pool of its own takes the default pool; one
    // with none at all has no source.
    fill(&q, "other.example", 1);
    let s = q.session_for("other.example").unwrap().unwrap();
    assert_eq!(s.source(), None);
    drop(s);
    q.set_sources(None, &["ip-d"]).unwrap();
    let s = q.session_for("other.example").unwrap().unwrap();
    assert_eq!(s.source(), Some("ip-d"));
}

#[test]
fn per_source_rates_add_up_and_wait_for_a_wakeup() {
    let dir = TempDir::new("src-rate");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    fill(&q, "r.example", 40);
    q.set_sources(Some("r.example"), &["a", "b"]).unwrap();
    q.set_source_limits("r.example", 0, per_minute(2)).unwrap();
    // Each source takes its second's share of 2/min (one message), and the
    // destination waits for the first path to allow the next: no session,
    // a wake-up in next_wakeup, no busy loop.
    let mut total: HashMap<String, usize> = HashMap::new();
    let mut per_window: Vec<HashMap<String, usize>> = Vec::new();
    for sec in 0..180u64 {
        if sec > 0 {
            clock.advance(1);
            q.tick();
        }
        let got = deliver_now(&q);
        for (k, v) in &got {
            *total.entry(k.clone()).or_default() += v;
        }
        per_window.push(got);
        if sec == 0 {
            assert_eq!(total.values().sum::<usize>(), 2, "{total:?}");
            assert!(q.next_session().unwrap().is_none());
            q.sync().unwrap();
            assert_eq!(q.next_wakeup(), Some(T0 + 30));
            let id = q.select(&Selector::default(), 1).unwrap()[0].id;
            let why = q.explain(id, 0).unwrap().why;
            assert!(
                why.contains("every egress source of r.example is busy or used up")
                    && why.contains("a waits until"),
                "{why}"
            );
            assert_eq!(q.debug_check(), Ok(()));
        }
    }
    // Per source, every 60-second window holds at most 2; together 2 × 2/min
    // over three minutes.
    for src in ["a", "b"] {
        for w in per_window.windows(60) {
            let n: usize = w.iter().map(|m| m.get(src).copied().unwrap_or(0)).sum();
            assert!(n <= 2, "{src}: {n} in a minute");
        }
    }
    assert_eq!(total.get("a"), Some(&6));
    assert_eq!(total.get("b"), Some(&6));
    assert_eq!(q.debug_check(), Ok(()));
}

#[test]
fn a_warm_up_caps_each_day_keeps_its_count_across_a_restart_and_a_clock_step_back() {
    let dir = TempDir::new("src-warm");
    let clock = ManualClock::new(T0);
    let steps = [
        WarmupStep { day: 1, per_day: 3 },
        WarmupStep { day: 2, per_day: 5 },
    ];
    {
        let q = Queue::open(dir.path(), opts(&clock)).unwrap();
        fill(&q, "w.example", 20);
        q.set_sources(None, &["new-ip"]).unwrap();
        q.set_warmup("new-ip", &steps).unwrap();
        assert_eq!(deliver_now(&q).get("new-ip"), Some(&3));
        // Overflow stays queued: a pool of one waits for the next day.
        assert!(q.next_session().unwrap().is_none());
        q.sync().unwrap();
        assert_eq!(q.next_wakeup(), Some(T0 + DAY));
        let src = &q.sources()[0];
        assert_eq!(
            (src.day, src.per_day, src.used, src.day_ends),
            (1, Some(3), 3, T0 + DAY)
        );
        assert_eq!(src.pools, ["*"]);
        assert_eq!(q.destination("w.example").unwrap().unwrap().ready, 17);
        assert_eq!(q.debug_check(), Ok(()));
        drop(q); // no checkpoint: the Source records are replayed
    }
    // A restart keeps the day and its count (sources are configuration:
    // declared again).
    clock.advance(3600);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.set_sources(None, &["new-ip"]).unwrap();
    q.set_warmup("new-ip", &steps).unwrap();
    assert!(q.next_session().unwrap().is_none(), "day 1 is used up");
    assert_eq!(q.sources()[0].used, 3);
    // The clock steps back two days: still day 1, still used up, and the
    // wait is at most a day from now.
    clock.set(T0 - 2 * DAY);
    q.tick();
    assert!(q.next_session().unwrap().is_none());
    q.sync().unwrap();
    assert_eq!(q.next_wakeup(), Some(T0 - DAY));
    assert_eq!(q.debug_check(), Ok(()));
    // A day later: day 2, cap 5.
    clock.set(T0 - DAY);
    q.tick();
    assert_eq!(deliver_now(&q).get("new-ip"), Some(&5));
    assert_eq!(q.sources()[0].day, 2);
    // From a checkpoint (taken by close) the same state comes back.
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.set_warmup("new-ip", &steps).unwrap();
    let s = &q.sources()[0];
    assert_eq!((s.day, s.used), (2, 5));
}

#[test]
fn overflow_goes_out_through_another_source_of_the_pool() {
    let dir = TempDir::new("src-overflow");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    fill(&q, "o.example", 30);
    warming_pool(&q, "o.example", 4);
    let got = deliver_now(&q);
    assert_eq!(got.get("warming"), Some(&4), "{got:?}");
    assert_eq!(got.get("seasoned"), Some(&26), "{got:?}");
    assert_eq!(q.destination("o.example").unwrap().unwrap().ready, 0);
}

#[test]
fn a_session_on_a_free_source_sends_while_the_others_are_full_or_used_up() {
    // Found by the simulator: with one session per source, the session on
    // the good source saw "no source free" (its own slot made it full, the
    // other was used up) and ended at once, for ever.
    let dir = TempDir::new("src-full");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    fill(&q, "f.example", 10);
    warming_pool(&q, "f.example", 1);
    q.set_source_limits("f.example", 1, RateLimit::default())
        .unwrap();
    let got = deliver_now(&q);
    assert_eq!(got.get("warming"), Some(&1), "{got:?}");
    assert_eq!(got.get("seasoned"), Some(&9), "{got:?}");
}

#[test]
fn day_one_is_the_first_schedule_and_each_message_is_counted_as_it_goes() {
    let dir = TempDir::new("src-dayone");
    let clock = ManualClock::new(T0);
    {
        let q = Queue::open(dir.path(), opts(&clock)).unwrap();
        q.set_sources(None, &["ip"]).unwrap();
        // Declared (and used) for five days before it gets a warm-up: day 1
        // is the day of its first schedule.
        fill(&q, "d.example", 1);
        assert_eq!(deliver_now(&q).get("ip"), Some(&1));
        clock.advance(5 * DAY);
        q.set_warmup(
            "ip",
            &[
                WarmupStep { day: 1, per_day: 3 },
                WarmupStep { day: 2, per_day: 9 },
            ],
        )
        .unwrap();
        let s = &q.sources()[0];
        assert_eq!((s.day, s.per_day, s.used), (1, Some(3), 0));
        // Each message is counted in the log with its attempt, not only when
        // the session ends: a crash in the middle of a session keeps it.
        fill(&q, "d.example", 5);
        let mut sess = q.next_session().unwrap().unwrap();
        for _ in 0..3 {
            let d = sess.next_delivery().unwrap().unwrap();
            d.complete(&[Outcome::Delivered]).unwrap();
        }
        q.sync().unwrap();
        assert_eq!(logged_use(dir.path(), "ip"), Some(3));
        sess.finish().unwrap();
        drop(q);
    }
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.set_sources(None, &["ip"]).unwrap();
    assert_eq!(q.sources()[0].used, 3);
    q.set_warmup("ip", &[WarmupStep { day: 1, per_day: 3 }])
        .unwrap();
    assert_eq!(
        q.sources()[0].day,
        1,
        "a schedule again keeps the day count"
    );
    assert!(q.next_session().unwrap().is_none(), "day 1 used up");
}

/// The day's use of `source` in the last `Source` record of the log.
fn logged_use(dir: &std::path::Path, source: &str) -> Option<u32> {
    use mailq::sim::record;
    let mut last = None;
    for f in segment_files(dir) {
        let data = std::fs::read(f).unwrap();
        let mut off = 0;
        while let Ok(h) = record::header(&data[off..]) {
            let p = &data[off + record::HEADER_LEN..off + record::HEADER_LEN + h.len];
            if h.kind == record::Kind::Source {
                let (name, st) = record::decode_source(p).unwrap();
                if name == source {
                    last = Some(st.used);
                }
            }
            off += record::padded(record::HEADER_LEN + h.len);
        }
    }
    last
}

#[test]
fn per_source_limits_are_persisted_and_bad_input_changes_nothing() {
    let dir = TempDir::new("src-persist");
    let clock = ManualClock::new(T0);
    {
        let q = Queue::open(dir.path(), opts(&clock)).unwrap();
        q.set_source_limits("p.example", 2, per_minute(30)).unwrap();
        assert!(matches!(
            q.set_sources(None, &["has space"]),
            Err(Error::InvalidOption(_))
        ));
        assert!(matches!(
            q.set_sources(None, &[""]),
            Err(Error::InvalidOption(_))
        ));
        let bad = [
            WarmupStep { day: 2, per_day: 5 },
            WarmupStep { day: 2, per_day: 9 },
        ];
        assert!(matches!(
            q.set_warmup("ip", &bad),
            Err(Error::InvalidOption(_))
        ));
        let zero = [WarmupStep { day: 1, per_day: 0 }];
        assert!(matches!(
            q.set_warmup("ip", &zero),
            Err(Error::InvalidOption(_))
        ));
        assert!(q.sources().is_empty(), "nothing declared by bad input");
        q.close().unwrap();
    }
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    let d = q.destination("p.example").unwrap().unwrap();
    assert_eq!(
        (d.source_limit, d.source_rate_limit),
        (2, Some(per_minute(30)))
    );
    q.checkpoint().unwrap();
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    let d = q.destination("p.example").unwrap().unwrap();
    assert_eq!(
        (d.source_limit, d.source_rate_limit),
        (2, Some(per_minute(30)))
    );
}

#[test]
fn a_ramp_goes_from_its_first_cap_to_its_last() {
    let r = WarmupStep::ramp(50, 100_000, 30);
    assert_eq!(r.len(), 30);
    assert_eq!((r[0].day, r[0].per_day), (1, 50));
    assert_eq!((r[29].day, r[29].per_day), (30, 100_000));
    assert!(r.windows(2).all(|w| w[0].per_day <= w[1].per_day));
}

const TSS04: &str =
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume 5b1f0bcb4fasm2218311a12 - gsmtp";

fn tss04_path_rule(secs: u64) -> Vec<ReplyRule> {
    vec![ReplyRule {
        pattern: r"\[TSS04\]".into(),
        action: RuleAction::SuspendSource(std::time::Duration::from_secs(secs)),
    }]
}

fn path<'a>(d: &'a BucketStats, source: &str) -> &'a PathStats {
    d.sources.iter().find(|p| p.source == source).unwrap()
}

#[test]
fn a_reply_rule_suspends_one_source_and_the_others_go_on() {
    let dir = TempDir::new("src-rule");
    let clock = ManualClock::new(T0);
    let o = || Options {
        reply_rules: tss04_path_rule(600),
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o()).unwrap();
    fill(&q, "gmail.com", 20);
    q.set_sources(Some("gmail.com"), &["ip-a", "ip-b"]).unwrap();
    q.set_source_limits("gmail.com", 1, RateLimit::default())
        .unwrap();
    let mut a = q.session_for("gmail.com").unwrap().unwrap();
    let mut b = q.session_for("gmail.com").unwrap().unwrap();
    if a.source() != Some("ip-a") {
        std::mem::swap(&mut a, &mut b);
    }
    assert_eq!((a.source(), b.source()), (Some("ip-a"), Some("ip-b")));
    // ip-a gets Gmail's unique-id reply while ip-b is mid-delivery.
    let db = b.next_delivery().unwrap().unwrap();
    let d = a.next_delivery().unwrap().unwrap();
    d.complete(&[Outcome::temp(TSS04)]).unwrap();
    assert!(
        a.next_delivery().unwrap().is_none(),
        "its path is suspended"
    );
    a.finish().unwrap();
    db.complete(&[Outcome::Delivered]).unwrap();
    let g = q.destination("gmail.com").unwrap().unwrap();
    assert!(!g.suspended, "the destination itself goes on");
    let pa = path(&g, "ip-a");
    assert_eq!(pa.suspended_until, T0 + 600);
    assert_eq!(pa.suspended_by.as_deref(), Some(r"\[TSS04\]"));
    assert_eq!(path(&g, "ip-b").suspended_until, 0);
    // ip-b keeps sending; no new session goes through ip-a.
    let mut sent = 1;
    while let Some(d) = b.next_delivery().unwrap() {
        d.complete(&[Outcome::Delivered]).unwrap();
        sent += 1;
    }
    b.finish().unwrap();
    assert_eq!(sent, 19, "all but the deferred one, through ip-b");
    assert!(q.session_for("gmail.com").unwrap().is_none());
    // New mail goes through ip-b; while ip-b is full, the next one waits
    // and its explanation names the suspended source and the rule.
    fill(&q, "gmail.com", 2);
    let busy = q.session_for("gmail.com").unwrap().unwrap();
    assert_eq!(busy.source(), Some("ip-b"));
    let m = q
        .select(&Selector::default(), 10)
        .unwrap()
        .into_iter()
        .find(|m| m.state == RcptState::Ready)
        .unwrap();
    let why = q.explain(m.id, m.index).unwrap().why;
    assert!(
        why.contains(r"ip-a is suspended by reply rule /\[TSS04\]/ until")
            && why.contains("ip-b has 1 of 1 sessions"),
        "{why}"
    );
    busy.finish().unwrap();
    assert_eq!(deliver_now(&q), HashMap::from([("ip-b".to_string(), 2)]));
    assert_eq!(q.debug_check(), Ok(()));
    q.sync().unwrap();
    assert_eq!(q.next_wakeup(), Some(T0 + 300), "the deferred retry first");
    drop(q); // replayed from the log
    let q = Queue::open(dir.path(), o()).unwrap();
    q.set_sources(Some("gmail.com"), &["ip-a", "ip-b"]).unwrap();
    let g = q.destination("gmail.com").unwrap().unwrap();
    assert_eq!(path(&g, "ip-a").suspended_until, T0 + 600);
    assert!(q.checkpoint().is_ok());
    drop(q);
    // From a checkpoint, with the clock stepped back a day: the suspension
    // is re-based to its own length, neither lost nor stretched.
    clock.set(T0 - DAY);
    let q = Queue::open(dir.path(), o()).unwrap();
    q.set_sources(Some("gmail.com"), &["ip-a", "ip-b"]).unwrap();
    let g = q.destination("gmail.com").unwrap().unwrap();
    assert_eq!(path(&g, "ip-a").suspended_until, T0 - DAY + 600);
    fill(&q, "gmail.com", 4);
    let s = q.session_for("gmail.com").unwrap().unwrap();
    assert_eq!(s.source(), Some("ip-b"));
    assert!(
        q.session_for("gmail.com").unwrap().is_none(),
        "ip-a still out"
    );
    s.finish().unwrap();
    // It ends by itself, with a wake-up (no polling needed).
    clock.set(T0 - DAY + 600);
    q.tick();
    let g = q.destination("gmail.com").unwrap().unwrap();
    assert_eq!(path(&g, "ip-a").suspended_until, 0);
    let mut open = Vec::new();
    while let Some(s) = q.session_for("gmail.com").unwrap() {
        open.push(s);
        assert!(open.len() <= 2, "one session per source");
    }
    let mut used: Vec<&str> = open.iter().map(|s| s.source().unwrap()).collect();
    used.sort();
    assert_eq!(used, ["ip-a", "ip-b"]);
    // A greeting that blocks one IP (a site failure matching the rule)
    // suspends that path only: the destination's window and health are not
    // charged with it.
    let window = q.destination("gmail.com").unwrap().unwrap().window;
    let a = open.remove(used.iter().position(|s| *s == "ip-a").unwrap());
    a.site_failure(TSS04).unwrap();
    let g = q.destination("gmail.com").unwrap().unwrap();
    assert_eq!(path(&g, "ip-a").suspended_until, T0 - DAY + 1200);
    assert_eq!((g.window, g.dead_until), (window, 0));
    // The operator's resume lifts it.
    q.resume("gmail.com").unwrap();
    let g = q.destination("gmail.com").unwrap().unwrap();
    assert_eq!(path(&g, "ip-a").suspended_until, 0);
    assert_eq!(q.debug_check(), Ok(()));
}

#[test]
fn a_source_rule_without_sources_suspends_the_destination() {
    let dir = TempDir::new("src-rule-none");
    let clock = ManualClock::new(T0);
    let o = Options {
        reply_rules: tss04_path_rule(60),
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o).unwrap();
    fill(&q, "gmail.com", 2);
    let mut s = q.session_for("gmail.com").unwrap().unwrap();
    assert_eq!(s.source(), None);
    let d = s.next_delivery().unwrap().unwrap();
    d.complete(&[Outcome::temp(TSS04)]).unwrap();
    s.finish().unwrap();
    let g = q.destination("gmail.com").unwrap().unwrap();
    assert!(g.suspended);
    assert_eq!(g.suspended_until, T0 + 60);
}
