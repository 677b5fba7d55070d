//! Operator search on a big queue (issue 11's benchmark): a sender search
//! over N queued messages (default 1 M), timed, and durable enqueue
//! throughput measured with and without searches running, in the same run.
//!
//! `cargo run --release --example search -- [--messages N] [--producers P] [--rounds R] [--window SECONDS]`

mod common;
use common::arg;
use mailq::{NewMessage, Options, Queue, Recipient, Selector};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sender(i: usize) -> String {
    format!("user{}@sender{}.example", i % 1000, i % 97)
}

/// Message number `i`: a 512-byte body to one recipient of 500 destinations.
fn enqueue(q: &Queue, i: usize) {
    let snd = sender(i);
    q.enqueue(&NewMessage {
        sender: &snd,
        recipients: vec![Recipient::new(format!("r{i}@dest{}.example", i % 500))],
        meta: b"",
        body: &[b'x'; 512],
    })
    .expect("enqueue");
}

/// Enqueues with `producers` threads until `stop`; returns messages per second.
fn load(q: &Queue, producers: usize, stop: &AtomicBool, base: usize) -> f64 {
    let n = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for p in 0..producers {
            let (q, n) = (q.clone(), &n);
            s.spawn(move || {
                let mut i = base + p * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    enqueue(&q, i);
                    n.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    });
    n.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

fn main() -> mailq::Result<()> {
    let messages = arg("--messages", 1_000_000);
    let producers = arg("--producers", 32);
    let dir = std::env::temp_dir().join(format!("mailq-search-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let q = Queue::open(&dir, Options::default())?;

    let t0 = Instant::now();
    let per = messages.div_ceil(producers);
    std::thread::scope(|s| {
        for p in 0..producers {
            let q = q.clone();
            s.spawn(move || {
                for i in p * per..((p + 1) * per).min(messages) {
                    enqueue(&q, i);
                }
            });
        }
    });
    println!(
        "queued {messages} messages (512-byte bodies, 1 recipient) in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let by_sender = Selector {
        sender: Some("user7@sender7.example".into()),
        ..Selector::default()
    };
    let mut times = Vec::new();
    let mut hits = 0;
    for _ in 0..3 {
        let t = Instant::now();
        hits = q.select(&by_sender, usize::MAX)?.len();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "sender search over {messages} messages: {hits} matches, {:.2} s median of 3 (min {:.2}, max {:.2})",
        times[1], times[0], times[2]
    );
    let by_route = Selector {
        route: Some("dest7.example".into()),
        ..Selector::default()
    };
    let t = Instant::now();
    let n = q.select(&by_route, usize::MAX)?.len();
    println!(
        "routing-key search (memory only): {n} matches, {:.3} s",
        t.elapsed().as_secs_f64()
    );

    // Enqueue throughput alone and with searches running back to back, in
    // alternating windows (A B A B …), so drift in the machine and the growing
    // queue fall on both sides; the median of the rounds' ratios is reported
    // (a noisy neighbour moves both windows of a round alike).
    let rounds = arg("--rounds", 7);
    let window = Duration::from_secs(arg("--window", 2) as u64);
    let (mut alone, mut during) = (Vec::new(), Vec::new());
    let mut took = Vec::new();
    for round in 0..rounds {
        let stop = AtomicBool::new(false);
        alone.push(std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(window);
                stop.store(true, Ordering::Relaxed);
            });
            load(&q, producers, &stop, 10_000_000 + round * 100_000_000)
        }));
        let stop = Arc::new(AtomicBool::new(false));
        during.push(std::thread::scope(|s| {
            let searcher = s.spawn(|| {
                let (t, mut v) = (Instant::now(), Vec::new());
                while t.elapsed() < window {
                    let (one, queued) = (Instant::now(), q.stats().messages as f64);
                    q.select(&by_sender, usize::MAX).expect("search");
                    v.push(one.elapsed().as_secs_f64() * 1e6 / queued);
                }
                stop.store(true, Ordering::Relaxed);
                v
            });
            let rate = load(&q, producers, &stop, 50_000_000 + round * 100_000_000);
            took.extend(searcher.join().expect("searcher"));
            rate
        }));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut ratios: Vec<f64> = alone.iter().zip(&during).map(|(a, d)| d / a).collect();
    let r = median(&mut ratios);
    let (lo, hi) = (ratios[0], ratios[ratios.len() - 1]);
    let (a, d) = (median(&mut alone), median(&mut during));
    let searches = took.len();
    let t = median(&mut took);
    println!(
        "sender searches while producers run (paced; the queue grew to {} messages): median {t:.2} s per 1 M messages, max {:.2} s",
        q.stats().messages,
        took[searches - 1]
    );
    println!(
        "durable enqueue, {producers} producers, {} s windows alternated {rounds} times: {a:.0} msg/s alone, {d:.0} msg/s during {searches} back-to-back sender searches (medians); change during searches {:+.1} % (median of the rounds' ratios; range {:+.1} to {:+.1} %)",
        window.as_secs(),
        100.0 * (r - 1.0),
        100.0 * (lo - 1.0),
        100.0 * (hi - 1.0)
    );
    drop(q);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
