mod common;
use common::*;
use mailq::*;
use std::time::Duration;

#[test]
fn enqueue_deliver_roundtrip_batches_by_domain() {
    let d = TempDir::new("roundtrip");
    let clock = ManualClock::new(T0);
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    let id = q
        .enqueue(&NewMessage {
            sender: "a@src.org",
            recipients: vec![
                "x@Example.com".into(),
                "y@example.COM.".into(),
                "z@other.net".into(),
            ],
            meta: b"meta!",
            body: b"hello body",
        })
        .unwrap();
    let st = q.stats();
    assert_eq!(st.count("ready"), 3);
    assert_eq!(st.messages, 1);
    let mut seen = Vec::new();
    while let Some(mut s) = q.next_session().unwrap() {
        while let Some(dl) = s.next_delivery().unwrap() {
            assert_eq!(dl.id(), id);
            assert_eq!(&dl.body()[..], b"hello body");
            assert_eq!(&dl.meta()[..], b"meta!");
            assert_eq!(dl.sender(), "a@src.org");
            seen.push((dl.routing_key().to_string(), dl.recipients().to_vec()));
            let outs = vec![Outcome::Delivered; dl.recipients().len()];
            dl.complete(&outs).unwrap();
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "example.com".to_string(),
                vec!["x@Example.com".to_string(), "y@example.COM.".to_string()]
            ),
            ("other.net".to_string(), vec!["z@other.net".to_string()]),
        ]
    );
    let st = q.stats();
    assert_eq!(st.recipients(), 0);
    assert_eq!(st.messages, 0);
    assert_eq!(st.delivered, 3);
    assert!(matches!(q.inspect(id), Err(Error::NoSuchMessage(_))));
}

#[test]
fn hostile_inputs_are_typed_errors_and_write_nothing() {
    let d = TempDir::new("hostile");
    let clock = ManualClock::new(T0);
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    let size = |d: &TempDir| -> u64 {
        segment_files(d.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let before = size(&d);
    let long_domain = format!("u@{}", "a".repeat(4096));
    type Case<'a> = (NewMessage<'a>, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (msg("a@b.c", &[], b"x"), |e| {
            matches!(e, Error::NoRecipients)
        }),
        (msg("a@b.c", &["nobody"], b"x"), |e| {
            matches!(e, Error::InvalidAddress { .. })
        }),
        (msg("a@b.c", &[&long_domain], b"x"), |e| {
            matches!(e, Error::InvalidAddress { .. })
        }),
        (msg("a@b.c", &["nul\0@x.com"], b"x"), |e| {
            matches!(e, Error::InvalidAddress { .. })
        }),
        (msg("bad sender", &["ok@x.com"], b"x"), |e| {
            matches!(e, Error::InvalidAddress { .. })
        }),
        (msg("a@b.c", &["@x.com"], b"x"), |e| {
            matches!(e, Error::InvalidAddress { .. })
        }),
        (msg("a@b.c", &["a@"], b"x"), |e| {
            matches!(e, Error::InvalidAddress { .. })
        }),
    ];
    for (m, check) in cases {
        let e = q.enqueue(&m).unwrap_err();
        assert!(check(&e), "unexpected {e}");
        assert!(e.is_input_error());
        assert!(!e.to_string().is_empty());
    }
    let bad_route = NewMessage {
        sender: "",
        recipients: vec![Recipient::with_route("a@b.com", "x".repeat(300))],
        meta: b"",
        body: b"",
    };
    assert!(matches!(
        q.enqueue(&bad_route),
        Err(Error::InvalidRoutingKey { .. })
    ));
    let big = vec![0u8; 70 << 20];
    assert!(matches!(
        q.enqueue(&msg("", &["a@b.com"], &big)),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(size(&d), before, "nothing written");
    assert_eq!(q.stats().messages, 0);
}

#[test]
fn second_open_is_locked() {
    let d = TempDir::new("locked");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    match Queue::open(d.path(), Options::default()) {
        Err(Error::Locked(p)) => assert_eq!(p, d.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(q);
    Queue::open(d.path(), Options::default()).unwrap();
}

#[test]
fn temp_failure_backoff_then_expiry_then_bounce() {
    let d = TempDir::new("backoff");
    let clock = ManualClock::new(T0);
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    let id = q.enqueue(&msg("s@src.org", &["r@slow.com"], b"b")).unwrap();
    assert_eq!(drain(&q, |_, _| Outcome::temp("451 greylisted")), 1);
    let info = q.inspect(id).unwrap();
    assert_eq!(info.recipients[0].state, RcptState::Deferred);
    assert_eq!(info.recipients[0].attempts, 1);
    assert_eq!(info.recipients[0].last_error, "451 greylisted");
    // age 0 → clamped to the 300 s minimum.
    assert_eq!(info.recipients[0].next_attempt, T0 + 300);
    // The buffered outcome record is due for its sync first (100 ms, rounded up).
    assert_eq!(q.next_wakeup(), Some(T0 + 1));
    assert_eq!(q.next_timeout(), Some(Duration::from_millis(100)));
    q.sync().unwrap();
    assert_eq!(q.next_wakeup(), Some(T0 + 300));
    clock.advance(299);
    assert!(q.next_session().unwrap().is_none());
    clock.advance(1);
    assert_eq!(
        drain(&q, |_, _| Outcome::TempFail {
            reason: "452 full".into(),
            retry_after: Some(Duration::from_secs(7200)),
        }),
        1
    );
    let info = q.inspect(id).unwrap();
    assert_eq!(
        info.recipients[0].next_attempt,
        T0 + 300 + 7200,
        "retry-after wins over backoff"
    );
    // After the lifetime, the next temporary failure expires the recipient.
    clock.set(T0 + 5 * 86400 + 1);
    assert_eq!(drain(&q, |_, _| Outcome::temp("451 still")), 1);
    let b = q.take_bounces(10).unwrap();
    assert_eq!(b.len(), 1);
    assert!(b[0].expired);
    assert_eq!(
        (b[0].sender.as_str(), b[0].recipient.as_str()),
        ("s@src.org", "r@slow.com")
    );
    assert_eq!(b[0].reason, "451 still");
    assert!(q.take_bounces(10).unwrap().is_empty(), "handed out once");
    assert_eq!(q.stats().count("expired"), 1);
    assert!(q.ack_bounce(id, 0).unwrap());
    assert_eq!(q.stats().messages, 0);
}

#[test]
fn backoff_grows_with_age_up_to_max() {
    let d = TempDir::new("backoffage");
    let clock = ManualClock::new(T0);
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    let id = q.enqueue(&msg("s@src.org", &["r@slow.com"], b"b")).unwrap();
    clock.advance(1000);
    drain(&q, |_, _| Outcome::temp("451"));
    assert_eq!(q.inspect(id).unwrap().recipients[0].next_attempt, T0 + 2000);
    clock.advance(20_000);
    drain(&q, |_, _| Outcome::temp("451"));
    assert_eq!(
        q.inspect(id).unwrap().recipients[0].next_attempt,
        T0 + 21_000 + 4000
    );
}

#[test]
fn permanent_failure_reported_until_acknowledged_even_across_restart() {
    let d = TempDir::new("perm");
    let clock = ManualClock::new(T0);
    let id;
    {
        let q = Queue::open(d.path(), opts(&clock)).unwrap();
        id = q
            .enqueue(&msg("s@src.org", &["a@x.com", "b@x.com"], b"b"))
            .unwrap();
        drain(&q, |_, r| {
            if r.starts_with('a') {
                Outcome::perm("550 no such user")
            } else {
                Outcome::Delivered
            }
        });
        let b = q.take_bounces(10).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].reason, "550 no such user");
        assert!(!b[0].expired);
        q.sync().unwrap();
        // not acknowledged: dropped without close
    }
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    let b = q.take_bounces(10).unwrap();
    assert_eq!(b.len(), 1, "unacknowledged bounce is offered again");
    assert_eq!((b[0].id, b[0].index), (id, 0));
    q.ack_bounce(id, 0).unwrap();
    q.close().unwrap();
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    assert!(q.take_bounces(10).unwrap().is_empty());
    assert_eq!(q.stats().messages, 0);
}

#[test]
fn operator_hold_release_delete_flush_inspect() {
    let d = TempDir::new("ops");
    let clock = ManualClock::new(T0);
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    let a = q
        .enqueue(&msg("s@o.org", &["1@a.com", "2@b.com"], b"A"))
        .unwrap();
    let b = q.enqueue(&msg("s@o.org", &["3@a.com"], b"B")).unwrap();
    assert_eq!(q.hold(a).unwrap(), 2);
    assert_eq!(q.stats().count("held"), 2);
    // Only b is delivered while a is held.
    let mut got = vec![];
    drain(&q, |_, r| {
        got.push(r.to_string());
        Outcome::temp("451 later")
    });
    assert_eq!(got, vec!["3@a.com"]);
    assert_eq!(q.release(a).unwrap(), 2);
    assert_eq!(q.stats().count("ready"), 2);
    assert_eq!(q.delete(a).unwrap(), 2);
    assert!(q.inspect(a).is_err());
    // b is deferred; flush makes it ready now.
    assert!(q.next_session().unwrap().is_none());
    assert_eq!(q.flush().unwrap(), 1);
    let info = q.inspect(b).unwrap();
    assert_eq!(info.recipients[0].state, RcptState::Ready);
    assert_eq!(info.recipients[0].last_error, "451 later");
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 1);
    assert_eq!(q.stats().messages, 0);
    assert!(matches!(q.hold(b), Err(Error::NoSuchMessage(_))));
}

#[test]
fn hold_survives_restart_and_bucket_hold_release() {
    let d = TempDir::new("hold-restart");
    let clock = ManualClock::new(T0);
    {
        let q = Queue::open(d.path(), opts(&clock)).unwrap();
        for i in 0..5 {
            q.enqueue(&msg("", &[&format!("{i}@held.com"), "x@free.com"], b"m"))
                .unwrap();
        }
        assert_eq!(q.hold_bucket("HELD.com").unwrap(), 5);
    }
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    let st = q.stats();
    assert_eq!((st.count("held"), st.count("ready")), (5, 5));
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 5);
    assert_eq!(q.release_bucket("held.com").unwrap(), 5);
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 5);
    assert_eq!(q.stats().messages, 0);
}

#[test]
fn reroute_moves_waiting_recipients_and_persists() {
    let d = TempDir::new("reroute");
    let clock = ManualClock::new(T0);
    {
        let q = Queue::open(d.path(), opts(&clock)).unwrap();
        for i in 0..10 {
            q.enqueue(&msg("", &[&format!("u{i}@old.example")], b"m"))
                .unwrap();
        }
        // half deferred, half ready
        let mut n = 0;
        while let Some(mut s) = q.session_for("old.example").unwrap() {
            while let Some(dl) = s.next_delivery().unwrap() {
                n += 1;
                let o = Outcome::temp("421 down");
                dl.complete(&[o]).unwrap();
                if n == 5 {
                    break;
                }
            }
            if n == 5 {
                break;
            }
        }
        assert_eq!(q.reroute("old.example", "[192.0.2.1]").unwrap(), 10);
        assert_eq!(
            q.stats()
                .buckets
                .iter()
                .find(|b| b.key == "old.example")
                .map(|b| b.depth()),
            None
        );
        q.sync().unwrap();
    }
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    let st = q.stats();
    let b = st.buckets.iter().find(|b| b.key == "[192.0.2.1]").unwrap();
    assert_eq!((b.ready, b.deferred), (5, 5));
    assert_eq!(q.flush_bucket("[192.0.2.1]").unwrap(), 5);
    let mut keys = std::collections::HashSet::new();
    drain(&q, |k, _| {
        keys.insert(k.to_string());
        Outcome::Delivered
    });
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        vec!["[192.0.2.1]".to_string()]
    );
}

#[test]
fn suspend_and_resume_bucket() {
    let d = TempDir::new("suspend");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    q.enqueue(&msg("", &["a@s.com"], b"m")).unwrap();
    q.suspend("s.com").unwrap();
    assert!(q.next_session().unwrap().is_none());
    assert!(q.stats().buckets[0].suspended);
    q.resume("s.com").unwrap();
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 1);
}

#[test]
fn site_failures_mark_dead_and_probe_revives() {
    let d = TempDir::new("dead");
    let clock = ManualClock::new(T0);
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    for i in 0..20 {
        q.enqueue(&msg("", &[&format!("u{i}@down.com")], b"m"))
            .unwrap();
    }
    for _ in 0..5 {
        let s = q
            .next_session()
            .unwrap()
            .expect("alive destination gets sessions");
        s.site_failure("connect: connection refused").unwrap();
    }
    let st = q.stats();
    let b = &st.buckets[0];
    assert_eq!(b.dead_until, T0 + 300);
    assert_eq!(b.window, 1);
    assert_eq!(b.ready, 20, "recipients wait; no attempts burnt");
    assert!(q.next_session().unwrap().is_none(), "dead: no sessions");
    assert_eq!(q.next_wakeup(), Some(T0 + 300));
    clock.advance(300);
    let mut s = q.next_session().unwrap().expect("probe after backoff");
    assert!(s.is_probe());
    assert!(q.next_session().unwrap().is_none(), "one probe at a time");
    let dl = s.next_delivery().unwrap().unwrap();
    dl.site_failure("connect: timeout").unwrap();
    assert_eq!(
        q.stats().buckets[0].dead_until,
        T0 + 300 + 600,
        "backoff doubles"
    );
    clock.advance(600);
    let mut s = q.next_session().unwrap().unwrap();
    let dl = s.next_delivery().unwrap().unwrap();
    dl.complete(&[Outcome::Delivered]).unwrap();
    drop(s);
    let st = q.stats();
    assert_eq!((st.buckets[0].dead_until, st.buckets[0].window), (0, 5));
    let info = q.list(100);
    assert_eq!(info.len(), 19);
    assert_eq!(st.count("ready"), 19);
    let attempts: u32 = info
        .iter()
        .map(|m| q.inspect(m.id).unwrap().recipients[0].attempts as u32)
        .sum();
    assert_eq!(
        attempts, 1,
        "the probe's recipient was deferred once by the site failure"
    );
}

#[test]
fn dropped_delivery_and_session_return_recipients() {
    let d = TempDir::new("drop");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    q.enqueue(&msg("", &["a@d.com", "b@d.com"], b"m")).unwrap();
    {
        let mut s = q.next_session().unwrap().unwrap();
        let dl = s.next_delivery().unwrap().unwrap();
        assert_eq!(dl.recipients().len(), 2);
        assert_eq!(q.stats().count("inflight"), 2);
        drop(dl);
        assert_eq!(q.stats().count("ready"), 2);
        let _again = s.next_delivery().unwrap().unwrap();
        // session and delivery dropped together
    }
    let st = q.stats();
    assert_eq!((st.count("ready"), st.buckets[0].sessions), (2, 0));
    // Wrong outcome count is an error and the recipients go back.
    let mut s = q.next_session().unwrap().unwrap();
    let dl = s.next_delivery().unwrap().unwrap();
    assert!(matches!(
        dl.complete(&[Outcome::Delivered]),
        Err(Error::OutcomeCount {
            expected: 2,
            got: 1
        })
    ));
    drop(s);
    assert_eq!(q.stats().count("ready"), 2);
}

#[test]
fn lease_deadline_reclaims_a_lost_worker() {
    let d = TempDir::new("lease");
    let clock = ManualClock::new(T0);
    let q = Queue::open(
        d.path(),
        Options {
            lease_ttl: Duration::from_secs(60),
            ..opts(&clock)
        },
    )
    .unwrap();
    q.enqueue(&msg("", &["a@l.com"], b"m")).unwrap();
    let mut lost = q.next_session().unwrap().unwrap();
    let dl = lost.next_delivery().unwrap().unwrap();
    std::mem::forget(dl); // the worker vanished without running destructors
    assert_eq!(q.stats().count("inflight"), 1);
    clock.advance(61);
    assert!(q.tick());
    let st = q.stats();
    assert_eq!(
        (st.count("ready"), st.buckets[0].sessions, st.lease_reclaims),
        (1, 0, 1)
    );
    assert!(matches!(lost.next_delivery(), Err(Error::LeaseExpired)));
    drop(lost);
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 1);
}

#[test]
fn concurrency_window_limits_sessions() {
    let d = TempDir::new("window");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    for i in 0..100 {
        q.enqueue(&msg("", &[&format!("u{i}@big.com")], b"m"))
            .unwrap();
    }
    let mut open = vec![];
    while let Some(s) = q.next_session().unwrap() {
        open.push(s);
    }
    assert_eq!(open.len(), 5, "initial window");
    // Each successful delivery widens the window by one.
    for s in open.iter_mut() {
        let dl = s.next_delivery().unwrap().unwrap();
        dl.complete(&[Outcome::Delivered]).unwrap();
    }
    let mut more = 0;
    while let Some(s) = q.next_session().unwrap() {
        open.push(s);
        more += 1;
    }
    assert_eq!(more, 5);
    assert_eq!(q.stats().buckets[0].sessions, 10);
    q.set_concurrency_limit("big.com", 3).unwrap();
    drop(open);
    let mut n = 0;
    while let Some(s) = q.next_session().unwrap() {
        std::mem::forget(s);
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn poll_fd_becomes_readable_when_work_is_ready() {
    let d = TempDir::new("poll");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    let readable = |q: &Queue| {
        let p = libc_poll(q.poll_fd());
        p.revents != 0
    };
    q.ack_poll();
    assert!(!readable(&q));
    q.enqueue(&msg("", &["a@p.com"], b"m")).unwrap();
    assert!(readable(&q));
    q.ack_poll();
    assert!(!readable(&q));
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 1);
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}
extern "C" {
    fn poll(fds: *mut PollFd, n: u64, timeout: i32) -> i32;
}
fn libc_poll(fd: i32) -> PollFd {
    let mut p = PollFd {
        fd,
        events: 1,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { poll(&mut p, 1, 0) };
    p
}

#[test]
fn stats_prometheus_and_qshape() {
    let d = TempDir::new("stats");
    let clock = ManualClock::new(T0);
    let q = Queue::open(d.path(), opts(&clock)).unwrap();
    for i in 0..6 {
        q.enqueue(&msg("", &[&format!("u{i}@gmail.com")], b"m"))
            .unwrap();
    }
    clock.advance(30 * 60);
    q.enqueue(&msg("", &["x@yahoo.com", "y@gmail.com"], b"m"))
        .unwrap();
    let st = q.stats();
    assert_eq!(st.count("ready"), 8);
    assert_eq!(st.oldest_age, 1800);
    assert_eq!(st.buckets[0].key, "gmail.com");
    assert_eq!(st.buckets[0].depth(), 7);
    assert_eq!(st.buckets[0].ages[0], 1);
    assert_eq!(st.buckets[0].ages[3], 6, "30 minutes old → 20..40 column");
    let text = st.prometheus();
    assert!(text.contains("mailq_recipients{state=\"ready\"} 8"));
    assert!(text.contains("mailq_bucket_depth{key=\"gmail.com\"} 7"));
    assert!(text.contains("# TYPE mailq_delivered_total counter"));
    let shape = st.qshape(10);
    assert!(shape.lines().nth(1).unwrap().starts_with("TOTAL"));
    assert!(shape.contains("gmail.com"));
    assert!(st.index_bytes > 0);
    assert_eq!(q.list(100).len(), 7);
}

#[test]
fn message_builder_checks_each_piece_and_commits_durably() {
    use std::io::Write;
    let d = TempDir::new("builder");
    let clock = ManualClock::new(T0);
    let o = Options {
        max_recipients: 2,
        max_body: 16,
        ..opts(&clock)
    };
    let q = Queue::open(d.path(), o.clone()).unwrap();
    assert!(matches!(
        q.message("not an address"),
        Err(Error::InvalidAddress { .. })
    ));
    let mut m = q.message("a@src.org").unwrap();
    assert!(matches!(
        m.add_recipient("nobody", None),
        Err(Error::InvalidAddress { .. })
    ));
    assert!(matches!(
        m.add_recipient("x@example.com", Some("")),
        Err(Error::InvalidRoutingKey { .. })
    ));
    m.add_recipient("x@example.com", None).unwrap();
    m.add_recipient("y@example.com", Some("MX.Example.NET."))
        .unwrap();
    assert!(matches!(
        m.add_recipient("z@example.com", None),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(m.recipients().len(), 2, "a refused recipient is not kept");
    m.set_meta(b"m").unwrap();
    m.write_all(b"0123456789").unwrap();
    assert!(matches!(
        m.append(b"0123456789"),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(m.body_len(), 10, "a refused chunk is not kept");
    m.append(b"abcdef").unwrap();
    let id = m.commit().unwrap();
    // Nothing was written for a dropped builder.
    let mut dropped = q.message("").unwrap();
    dropped.add_recipient("w@example.com", None).unwrap();
    drop(dropped);
    drop(q);
    let q = Queue::open(d.path(), o).unwrap();
    assert_eq!(q.stats().messages, 1);
    let info = q.inspect(id).unwrap();
    assert_eq!(info.recipients[1].route, "mx.example.net");
    let mut s = q.session_for("mx.example.net").unwrap().unwrap();
    let dl = s.next_delivery().unwrap().unwrap();
    assert_eq!(&dl.body()[..], b"0123456789abcdef");
    assert_eq!(&dl.meta()[..], b"m");
}
