mod common;
use common::*;
use mailq::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// xorshift, deterministic per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The groups.io counter bug: sessions that end by drop, error, panic or
/// vanishing must all give their slot back; in-flight never exceeds the limit.
#[test]
fn slots_never_leak_under_drops_errors_and_panics() {
    let d = TempDir::new("slots");
    let clock = ManualClock::new(T0);
    let q = Queue::open(
        d.path(),
        Options {
            lease_ttl: Duration::from_secs(30),
            concurrency: Concurrency {
                initial: 3,
                limit: 6,
                dead_after: 1000,
            },
            ..opts(&clock)
        },
    )
    .unwrap();
    for i in 0..3000 {
        let dom = if i % 3 == 0 {
            "gmail.com".to_string()
        } else {
            format!("d{}.net", i % 11)
        };
        q.enqueue(&msg("", &[&format!("u{i}@{dom}")], b"x"))
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let checker = {
        let (q, stop, max_seen) = (q.clone(), stop.clone(), max_seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for b in q.stats().buckets {
                    assert!(
                        b.sessions <= b.limit,
                        "{} has {} sessions > limit {}",
                        b.key,
                        b.sessions,
                        b.limit
                    );
                    max_seen.fetch_max(b.sessions as usize, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                for _ in 0..4000 {
                    let Some(mut s) = q.next_session().unwrap() else {
                        std::thread::yield_now();
                        continue;
                    };
                    let action = rng.next() % 10;
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let Some(dl) = s.next_delivery()? else {
                            return Ok(());
                        };
                        let n = dl.recipients().len();
                        match action {
                            0 => panic!("worker crashed mid-delivery"),
                            1 => drop(dl),
                            2 => dl.site_failure("421 too many connections")?,
                            3 => std::mem::forget(dl),
                            4 => dl.complete(&vec![Outcome::temp("451"); n])?,
                            5 => dl.complete(&vec![Outcome::perm("550"); n])?,
                            _ => dl.complete(&vec![Outcome::Delivered; n])?,
                        }
                        Ok::<(), Error>(())
                    }));
                    match (action, r) {
                        (3, _) => std::mem::forget(s), // the worker vanished entirely
                        (_, Ok(Ok(()))) | (_, Err(_)) => drop(s),
                        (_, Ok(Err(Error::LeaseExpired))) => {}
                        (_, Ok(Err(e))) => panic!("unexpected error {e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    std::panic::set_hook(prev_hook);
    stop.store(true, Ordering::Relaxed);
    checker.join().unwrap();
    // Forgotten sessions come back through their lease deadline.
    clock.advance(31);
    q.tick();
    let st = q.stats();
    for b in &st.buckets {
        assert_eq!(b.sessions, 0, "{} leaked a slot", b.key);
        assert_eq!(b.inflight, 0, "{} leaked in-flight recipients", b.key);
    }
    assert!(st.lease_reclaims > 0);
    assert!(
        max_seen.load(Ordering::Relaxed) >= 2,
        "sessions really overlapped"
    );
    // Everything still accounted for.
    let total: u64 = st.recipients() + st.delivered;
    let bounced_or_pending = st.count("failed");
    assert!(bounced_or_pending > 0);
    assert_eq!(total, 3000);
}

/// Producers and delivery workers run at the same time on different buckets;
/// nothing is lost or delivered twice.
#[test]
fn producers_and_workers_in_parallel() {
    let d = TempDir::new("parallel");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    let producers = 4;
    let per = 500;
    let done = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new()));
    let ps: Vec<_> = (0..producers)
        .map(|p| {
            let (q, done) = (q.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..per {
                    let body = format!("{p}-{i}");
                    q.enqueue(&msg(
                        "",
                        &[&format!("{p}-{i}@p{p}-{}.org", i % 50)],
                        body.as_bytes(),
                    ))
                    .unwrap();
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let ws: Vec<_> = (0..3)
        .map(|_| {
            let (q, done, delivered) = (q.clone(), done.clone(), delivered.clone());
            std::thread::spawn(move || loop {
                let finished = done.load(Ordering::SeqCst) == producers;
                match q.next_session().unwrap() {
                    Some(mut s) => {
                        while let Some(dl) = s.next_delivery().unwrap() {
                            let body = String::from_utf8(dl.body().to_vec()).unwrap();
                            assert_eq!(dl.recipients()[0], format!("{body}@{}", dl.routing_key()));
                            assert!(delivered.lock().insert(body), "delivered twice");
                            dl.complete(&[Outcome::Delivered]).unwrap();
                        }
                    }
                    None if finished => break,
                    None => std::thread::yield_now(),
                }
            })
        })
        .collect();
    for p in ps {
        p.join().unwrap();
    }
    for w in ws {
        w.join().unwrap();
    }
    assert_eq!(delivered.lock().len(), producers * per);
    let st = q.stats();
    assert_eq!(st.recipients(), 0);
    assert!(
        st.commits < (producers * per) as u64,
        "group commit shared fsyncs: {} commits",
        st.commits
    );
}
