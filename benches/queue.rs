//! Criterion suite: durable enqueue, scheduling, restart, and enqueue while
//! checkpoints and compaction run (no stalls).
//!
//! `cargo bench` runs everything (several minutes: the restart group builds a
//! queue of 1 M messages / 3 M recipients once). `cargo bench -- enqueue`,
//! `-- schedule`, `-- restart`, `-- stall` run one group. CI only builds it
//! (`cargo bench --no-run`). The peer comparison is `examples/compare.rs`.

#[path = "support/zipf.rs"]
mod zipf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mailq::{NewMessage, Options, Outcome, Queue, Recipient};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zipf::{enqueue_zipf, Zipf};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mailq-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn message(i: u64, rcpts: usize, body: &[u8]) -> NewMessage<'_> {
    NewMessage {
        sender: "list@sender.example",
        recipients: (0..rcpts)
            .map(|k| Recipient::new(format!("u{i}.{k}@d{}.example", (i + k as u64) % 1000)))
            .collect(),
        meta: b"",
        body,
    }
}

/// Durable enqueue: 1 and 32 producers × 1/4/64 KiB × 1/3/50 recipients.
fn enqueue(c: &mut Criterion) {
    let mut g = c.benchmark_group("enqueue");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for producers in [1usize, 32] {
        for body_kib in [1usize, 4, 64] {
            for rcpts in [1usize, 3, 50] {
                let dir = tmp("enqueue");
                let q = Queue::open(&dir, Options::default()).expect("open");
                let body = vec![b'x'; body_kib * 1024];
                let id = format!("{producers}p/{body_kib}KiB/{rcpts}r");
                g.throughput(Throughput::Elements(1));
                g.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter_custom(|iters| {
                        let next = Arc::new(AtomicU64::new(0));
                        let t = Instant::now();
                        std::thread::scope(|s| {
                            for _ in 0..producers {
                                let (q, next, body) = (q.clone(), next.clone(), &body);
                                s.spawn(move || loop {
                                    let i = next.fetch_add(1, Ordering::Relaxed);
                                    if i >= iters {
                                        break;
                                    }
                                    q.enqueue(&message(i, rcpts, body)).expect("enqueue");
                                });
                            }
                        });
                        t.elapsed()
                    })
                });
                drop(q);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    g.finish();
}

/// Lease + complete per recipient, 100k destinations, Zipf skew, one thread.
fn schedule(c: &mut Criterion) {
    let dir = tmp("schedule");
    let q = Queue::open(&dir, Options::default()).expect("open");
    let zipf = parking_lot::Mutex::new(Zipf::new(100_000));
    // Refill (untimed) so that at least `n` recipients are ready.
    let refill = |n: u64| {
        let have = q.stats().count("ready");
        enqueue_zipf(&q, n.saturating_sub(have).div_ceil(10), &zipf);
    };
    refill(1_000_000);
    let mut g = c.benchmark_group("schedule");
    g.sample_size(10).throughput(Throughput::Elements(1));
    g.bench_function("lease+complete per recipient, 100k buckets, zipf", |b| {
        b.iter_custom(|iters| {
            refill(iters);
            let mut done = 0u64;
            let t = Instant::now();
            while done < iters {
                let Some(mut s) = q.next_session().expect("session") else {
                    break;
                };
                while let Some(d) = s.next_delivery().expect("delivery") {
                    let n = d.recipients().len();
                    d.complete(&vec![Outcome::Delivered; n]).expect("complete");
                    done += n as u64;
                    if done >= iters {
                        break;
                    }
                }
            }
            let e = t.elapsed();
            // Normalise to exactly `iters` recipients.
            e.mul_f64(iters as f64 / done.max(1) as f64)
        })
    });
    g.finish();
    drop(q);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reopen a queue of 1 M messages / 3 M recipients, from its checkpoint and without.
fn restart(c: &mut Criterion) {
    let dir = tmp("restart");
    {
        let q = Queue::open(&dir, Options::default()).expect("open");
        let next = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..32 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= 1_000_000 {
                        break;
                    }
                    q.enqueue(&message(i, 3, b"tiny")).expect("enqueue");
                });
            }
        });
        q.close().expect("close");
    }
    let mut g = c.benchmark_group("restart");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    // Times `iters` reopens; `fresh` removes the checkpoint before each (full replay).
    let reopen = |iters: u64, fresh: bool| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if fresh {
                std::fs::remove_file(dir.join("checkpoint")).expect("remove checkpoint");
            }
            let t = Instant::now();
            let q = Queue::open(&dir, Options::default()).expect("open");
            total += t.elapsed();
            assert_eq!(q.stats().recipients(), 3_000_000);
            drop(q);
        }
        total
    };
    g.bench_function("reopen 1M msgs / 3M rcpts from checkpoint", |b| {
        b.iter_custom(|iters| reopen(iters, false))
    });
    g.sample_size(10).measurement_time(Duration::from_secs(60));
    g.bench_function(
        "reopen 1M msgs / 3M rcpts without checkpoint (full replay + new checkpoint)",
        |b| b.iter_custom(|iters| reopen(iters, true)),
    );
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// No stalls: 32 producers enqueue durably (4 KiB, 3 recipients) on top of
/// 300 k live recipients while a worker delivers as much as they add (churn
/// that leaves sparse segments), with automatic maintenance on — a
/// checkpoint every 16 MiB of log and compaction, several per sample — and
/// off. Criterion times the enqueues (throughput; a stall shows as a slow
/// sample); every enqueue's own latency is kept too, and the group prints
/// its p50/p99/p99.9 per run and the on/off ratios, the figures of the
/// no-stall target (`examples/stall.rs` is the long version, with a plot).
fn stall(c: &mut Criterion) {
    let mut g = c.benchmark_group("stall");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let mut tails = Vec::new();
    for maintenance in [true, false] {
        let dir = tmp(if maintenance { "stall-on" } else { "stall-off" });
        let q = Queue::open(
            &dir,
            Options {
                auto_maintenance: maintenance,
                checkpoint_bytes: 16 << 20,
                ..Options::default()
            },
        )
        .expect("open");
        let next = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..32 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= 100_000 {
                        break;
                    }
                    q.enqueue(&message(i, 3, &[b'p'; 512])).expect("preload");
                });
            }
        });
        q.checkpoint().expect("checkpoint");
        let before = q.stats();
        let added = AtomicU64::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let lat = parking_lot::Mutex::new(Vec::<u32>::new());
        let body = vec![b'b'; 4096];
        std::thread::scope(|s| {
            // The worker: delivers about as many recipients as are added.
            s.spawn(|| {
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let session = if done < added.load(Ordering::Relaxed) * 3 {
                        q.next_session().expect("session")
                    } else {
                        None
                    };
                    let Some(mut sess) = session else {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    };
                    while let Some(d) = sess.next_delivery().expect("delivery") {
                        let k = d.recipients().len();
                        d.complete(&vec![Outcome::Delivered; k]).expect("complete");
                        done += k as u64;
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    sess.finish().expect("finish");
                }
            });
            let name = if maintenance {
                "maintenance on"
            } else {
                "maintenance off"
            };
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("enqueue 32p under churn, {name}"), |b| {
                b.iter_custom(|iters| {
                    let left = AtomicU64::new(iters);
                    let t = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..32 {
                            s.spawn(|| {
                                let mut mine = Vec::new();
                                while left
                                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok()
                                {
                                    let i = next.fetch_add(1, Ordering::Relaxed);
                                    let t0 = Instant::now();
                                    q.enqueue(&message(i, 3, &body)).expect("enqueue");
                                    mine.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                                    added.fetch_add(1, Ordering::Relaxed);
                                }
                                lat.lock().extend(mine);
                            });
                        }
                    });
                    t.elapsed()
                })
            });
            stop.store(true, Ordering::Relaxed);
        });
        let after = q.stats();
        let mut l = lat.into_inner();
        l.sort_unstable();
        let at = |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)));
        let tail = [0.5, 0.99, 0.999].map(|p| at(p).copied().unwrap_or(0));
        eprintln!(
            "stall, {}: {} enqueues, latency p50 {} µs, p99 {} µs, p99.9 {} µs; {} checkpoints, {} messages copied, {} segments deleted",
            if maintenance { "maintenance on" } else { "maintenance off" },
            l.len(),
            tail[0],
            tail[1],
            tail[2],
            after.checkpoints - before.checkpoints,
            after.messages_copied - before.messages_copied,
            after.segments_deleted - before.segments_deleted,
        );
        tails.push(tail);
        drop(q);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
    if let [on, off] = tails[..] {
        let r = |i: usize| on[i] as f64 / off[i].max(1) as f64;
        eprintln!(
            "stall: maintenance on ÷ off: p99 {:.2}×, p99.9 {:.2}× (target ≤ 2×)",
            r(1),
            r(2)
        );
    }
}

criterion_group!(benches, enqueue, schedule, restart, stall);
criterion_main!(benches);
