//! Do checkpoints and compaction stall producers? The same run twice, with
//! automatic maintenance on and off: P producers enqueue durably (4 KiB
//! body, 3 recipients) for S seconds on top of a queue holding L live
//! recipients, while one thread delivers at the same pace (churn: the live
//! count stays near L, and delivered mail leaves sparse segments for
//! compaction). Prints enqueue latency percentiles of each run and their
//! ratio, and writes a latency-over-time plot (`--plot FILE.svg`, the worst
//! latency of every 100 ms window of both runs).
//!
//! ```sh
//! cargo run --release --example stall -- --live 1000000 --secs 20 --producers 32 --plot benches/results/stall.svg
//! ```
//!
//! `--preallocate 0` turns off segments made ahead in both runs;
//! `--checkpoint-mib N` and `--compact-below-pct N` set the maintenance
//! interval and the compaction threshold.

mod common;
use common::arg;
use mailq::{NewMessage, Options, Outcome, Queue, Recipient};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latencies of one run: (start offset ms, latency µs) per enqueue.
struct Run {
    name: &'static str,
    lat: Vec<(u32, u32)>,
    enqueued: u64,
    delivered: u64,
    secs: f64,
    checkpoints: u64,
    copied: u64,
    deleted: u64,
    reused: u64,
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mailq-stall-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create the benchmark directory");
    d
}

fn message(rcpts: Vec<Recipient>, body: &[u8]) -> NewMessage<'_> {
    NewMessage {
        sender: "bench@example.org",
        recipients: rcpts,
        body,
        meta: b"",
    }
}

fn rcpts(i: u64) -> Vec<Recipient> {
    (0..3)
        .map(|k| Recipient::new(format!("u{i}.{k}@d{}.example", (i * 3 + k) % 997)))
        .collect()
}

/// Enqueues `live / 3` small messages with `producers` threads.
fn preload(q: &Queue, live: u64, producers: usize) {
    let next = AtomicU64::new(0);
    let body = vec![b'p'; 512];
    std::thread::scope(|s| {
        for _ in 0..producers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= live / 3 {
                    break;
                }
                q.enqueue(&message(rcpts(i), &body))
                    .expect("preload enqueue");
            });
        }
    });
}

fn run(name: &'static str, maintenance: bool, live: u64, secs: u64, producers: usize) -> Run {
    let d = dir(name);
    let opts = || Options {
        auto_maintenance: maintenance,
        checkpoint_bytes: (arg("--checkpoint-mib", 64) as u64) << 20,
        compact_below: arg("--compact-below-pct", 67) as f64 / 100.0,
        preallocate_segments: arg("--preallocate", 1) != 0,
        ..Options::default()
    };
    let q = Queue::open(&d, opts()).expect("open the queue");
    let t = Instant::now();
    preload(&q, live, producers);
    // Start from a checkpoint in both runs, so both reopen the same state.
    q.checkpoint().expect("checkpoint after the preload");
    eprintln!(
        "{name}: preloaded {live} recipients in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let before = q.stats();
    let stop = AtomicBool::new(false);
    let next = AtomicU64::new(live);
    let enq = AtomicU64::new(0);
    let body = vec![b'b'; 4096];
    let start = Instant::now();
    let (lat, delivered) = std::thread::scope(|s| {
        let churn = s.spawn(|| {
            // Delivers about as many recipients as the producers add.
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if n >= enq.load(Ordering::Relaxed) * 3 {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                let Ok(Some(mut sess)) = q.next_session() else {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                while let Ok(Some(dl)) = sess.next_delivery() {
                    let k = dl.recipients().len();
                    dl.complete(&vec![Outcome::Delivered; k])
                        .expect("record outcomes");
                    n += k as u64;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                sess.finish().expect("end the session");
            }
            n
        });
        let mut hs = Vec::new();
        for _ in 0..producers {
            hs.push(s.spawn(|| {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let m = message(rcpts(i), &body);
                    let t0 = Instant::now();
                    q.enqueue(&m).expect("enqueue");
                    let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    out.push(((t0 - start).as_millis() as u32, us));
                    enq.fetch_add(1, Ordering::Relaxed);
                }
                out
            }));
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        let lat: Vec<(u32, u32)> = hs
            .into_iter()
            .flat_map(|h| h.join().expect("producer"))
            .collect();
        (lat, churn.join().expect("churn"))
    });
    let elapsed = start.elapsed().as_secs_f64();
    let after = q.stats();
    drop(q);
    let _ = std::fs::remove_dir_all(&d);
    Run {
        name,
        enqueued: lat.len() as u64,
        lat,
        delivered,
        secs: elapsed,
        checkpoints: after.checkpoints - before.checkpoints,
        copied: after.messages_copied - before.messages_copied,
        deleted: after.segments_deleted - before.segments_deleted,
        reused: after.segments_reused - before.segments_reused,
    }
}

fn report(r: &Run) -> [u32; 4] {
    let mut l: Vec<u32> = r.lat.iter().map(|x| x.1).collect();
    l.sort_unstable();
    let p = [
        pct(&l, 0.5),
        pct(&l, 0.99),
        pct(&l, 0.999),
        *l.last().unwrap_or(&0),
    ];
    println!(
        "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.name,
        r.enqueued as f64 / r.secs,
        r.delivered as f64 / r.secs,
        p[0],
        p[1],
        p[2],
        p[3],
        r.checkpoints,
        r.copied,
        r.deleted,
        r.reused
    );
    p
}

/// Per 100 ms window of each run: count, p99 and worst latency (µs), CSV.
fn csv(runs: &[&Run], secs: u64) -> String {
    let mut out = String::from("run,window_ms,count,p99_us,max_us\n");
    for r in runs {
        let mut w: Vec<Vec<u32>> = vec![Vec::new(); (secs * 10) as usize];
        for &(at, us) in &r.lat {
            if let Some(x) = w.get_mut(at as usize / 100) {
                x.push(us);
            }
        }
        for (i, mut l) in w.into_iter().enumerate() {
            l.sort_unstable();
            out += &format!(
                "{},{},{},{},{}\n",
                r.name,
                i * 100,
                l.len(),
                pct(&l, 0.99),
                l.last().copied().unwrap_or(0)
            );
        }
    }
    out
}

/// The worst latency of each 100 ms window, both runs, as an SVG.
fn plot(runs: &[&Run], secs: u64) -> String {
    let windows = (secs * 10) as usize;
    let series: Vec<Vec<u32>> = runs
        .iter()
        .map(|r| {
            let mut w = vec![0u32; windows];
            for &(at, us) in &r.lat {
                if let Some(x) = w.get_mut(at as usize / 100) {
                    *x = (*x).max(us);
                }
            }
            w
        })
        .collect();
    let max = series.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 / 1000.0 * 1.1;
    let (w, h, l, b) = (900.0, 420.0, 70.0, 50.0);
    let x = |i: usize| l + (w - l - 20.0) * i as f64 / windows as f64;
    let y = |ms: f64| h - b - (h - b - 40.0) * ms / max;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{l}' y='18' font-size='14'>Worst enqueue latency per 100 ms (ms), maintenance on and off</text>\n"
    );
    s += &format!(
        "<line x1='{l}' y1='{}' x2='{}' y2='{}' stroke='black'/><line x1='{l}' y1='30' x2='{l}' y2='{}' stroke='black'/>\n",
        h - b,
        w - 20.0,
        h - b,
        h - b
    );
    for k in 0..=5 {
        let v = max * k as f64 / 5.0;
        s += &format!(
            "<text x='{}' y='{}' text-anchor='end'>{v:.1}</text>\n",
            l - 6.0,
            y(v) + 4.0
        );
    }
    for k in 0..=secs.min(60) {
        let i = (k * 10) as usize * secs.div_ceil(60).max(1) as usize;
        if i > windows {
            break;
        }
        s += &format!(
            "<text x='{}' y='{}' text-anchor='middle'>{}s</text>\n",
            x(i),
            h - b + 16.0,
            i / 10
        );
    }
    let colors = ["#d62728", "#1f77b4"];
    for (n, (r, ser)) in runs.iter().zip(&series).enumerate() {
        let pts: Vec<String> = ser
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v as f64 / 1000.0)))
            .collect();
        s += &format!(
            "<polyline fill='none' stroke='{}' stroke-width='1.2' points='{}'/>\n<text x='{}' y='{}' fill='{}'>maintenance {}</text>\n",
            colors[n % 2],
            pts.join(" "),
            w - 200.0,
            40.0 + 16.0 * n as f64,
            colors[n % 2],
            r.name
        );
    }
    s + "</svg>\n"
}

fn main() {
    let live = arg("--live", 1_000_000) as u64;
    let secs = arg("--secs", 20) as u64;
    let producers = arg("--producers", 32);
    let on = run("on", true, live, secs, producers);
    let off = run("off", false, live, secs, producers);
    println!(
        "{live} live recipients, {producers} producers, {secs} s each (4 KiB, 3 recipients; churn delivers as many)\n"
    );
    println!("| maintenance | enqueue msg/s | delivered rcpt/s | p50 µs | p99 µs | p99.9 µs | max µs | checkpoints | messages copied | segments deleted | segments reused |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let a = report(&on);
    let b = report(&off);
    println!(
        "\nratio on/off: p99 {:.2}×, p99.9 {:.2}× (target ≤ 2×)",
        a[1] as f64 / b[1].max(1) as f64,
        a[2] as f64 / b[2].max(1) as f64
    );
    let args: Vec<String> = std::env::args().collect();
    if let Some(p) = args
        .iter()
        .position(|a| a == "--plot")
        .and_then(|i| args.get(i + 1))
    {
        std::fs::write(p, plot(&[&on, &off], secs)).expect("write the plot");
        println!("plot: {p}");
    }
    if let Some(p) = args
        .iter()
        .position(|a| a == "--csv")
        .and_then(|i| args.get(i + 1))
    {
        std::fs::write(p, csv(&[&on, &off], secs)).expect("write the CSV");
        println!("csv: {p}");
    }
}
