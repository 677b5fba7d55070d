//! A realistic workload through a mailq queue in a temporary directory.
//!
//! Producers accept mail for thousands of domains with a Zipf skew (gmail.com
//! gets about two thirds, as in the groups.io outage) while delivery workers
//! drain it with simulated SMTP outcomes: rate limiting, greylisting, unknown
//! users, and dead destinations. Simulated time then advances two hours so
//! retries, backoff and dead-destination probes happen. Finally it prints
//! throughput, RAM per queued recipient, the qshape table, and reopen time.
//!
//! Run: `cargo run --release --example simulated_mta [-- --messages N]`

mod common;
use common::arg;
use mailq::{ManualClock, NewMessage, Options, Outcome, Queue, Recipient};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const DOMAINS: usize = 3000;

/// Domain index: 0 = gmail.com with p = 2/3, the rest Zipf(1) over the others.
struct Zipf {
    cdf: Vec<f64>,
}
impl Zipf {
    fn new() -> Self {
        let mut cdf = Vec::with_capacity(DOMAINS);
        let mut acc = 0.0;
        for k in 1..DOMAINS {
            acc += 1.0 / k as f64;
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        if rng.unit() < 2.0 / 3.0 {
            return 0;
        }
        let u = rng.unit();
        1 + self.cdf.partition_point(|&c| c < u).min(DOMAINS - 2)
    }
}

fn domain(i: usize) -> String {
    match i {
        0 => "gmail.com".into(),
        i => format!("d{i}.example"),
    }
}

fn dead(key: &str) -> bool {
    // One destination in 97 refuses connections for the whole run.
    key.strip_prefix('d')
        .and_then(|s| s.strip_suffix(".example"))
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n % 97 == 0)
}

/// Nothing in flight and nothing deliverable now (dead or suspended destinations wait).
fn settled(q: &Queue) -> bool {
    let st = q.stats();
    st.count("inflight") == 0
        && st
            .buckets
            .iter()
            .all(|b| b.ready == 0 || b.dead_until != 0 || b.suspended)
}

#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    temp: AtomicU64,
    perm: AtomicU64,
    site: AtomicU64,
    dsn: AtomicU64,
}

fn worker(q: Queue, stop: Arc<AtomicBool>, tally: Arc<Tally>, seed: u64) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(mut s)) = q.next_session() else {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let key = s.routing_key().to_string();
        if dead(&key) || rng.unit() < 0.002 {
            tally.site.fetch_add(1, Ordering::Relaxed);
            let _ = s.site_failure("connect to mx: Connection refused");
            continue;
        }
        while let Ok(Some(d)) = s.next_delivery() {
            let outs: Vec<Outcome> = d
                .attempts()
                .iter()
                .map(|&attempts| {
                    let u = rng.unit();
                    if key == "gmail.com" && u < 0.03 {
                        Outcome::temp("421 4.7.28 Our system has detected an unusual rate of mail")
                    } else if key != "gmail.com" && attempts == 0 && u < 0.05 {
                        Outcome::temp("451 4.7.1 Greylisted, try again later")
                    } else if u > 0.99 {
                        Outcome::perm("550 5.1.1 The email account does not exist")
                    } else {
                        Outcome::Delivered
                    }
                })
                .collect();
            for o in &outs {
                match o {
                    Outcome::Delivered => &tally.delivered,
                    Outcome::TempFail { .. } => &tally.temp,
                    Outcome::PermFail { .. } => &tally.perm,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
            if d.complete(&outs).is_err() {
                break;
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let messages = arg("--messages", 40_000);
    let producers = arg("--producers", 16);
    let workers = arg("--workers", 4);
    let backlog = arg("--backlog", 100_000);
    let dir = std::env::temp_dir().join(format!("mailq-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let clock = ManualClock::new(start_time);
    let opts = || Options {
        clock: clock.clone(),
        ..Options::default()
    };
    println!("mailq demo: queue in {}", dir.display());
    println!(
        "workload: {messages} messages, 1-3 recipients each, 1-8 KiB bodies, {DOMAINS} domains (gmail.com ≈ 2/3), {producers} producers, {workers} delivery workers"
    );
    let q = Queue::open(&dir, opts())?;

    // Phase 1: accept and deliver at the same time.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let ws: Vec<_> = (0..workers)
        .map(|i| {
            let (q, stop, tally) = (q.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || worker(q, stop, tally, 0xA5A5 + i as u64))
        })
        .collect();
    let accepted = Arc::new(AtomicU64::new(0));
    let body_bytes = Arc::new(AtomicU64::new(0));
    let zipf = Arc::new(Zipf::new());
    let t0 = Instant::now();
    let ps: Vec<_> = (0..producers)
        .map(|p| {
            let (q, accepted, body_bytes, zipf, clock) = (
                q.clone(),
                accepted.clone(),
                body_bytes.clone(),
                zipf.clone(),
                clock.clone(),
            );
            let n = messages / producers + usize::from(p < messages % producers);
            std::thread::spawn(move || -> Result<(), mailq::Error> {
                let mut rng = Rng(0x1234_5678 + p as u64);
                let body = vec![b'x'; 8192];
                for i in 0..n {
                    let rc: Vec<Recipient> = (0..1 + rng.next() % 3)
                        .map(|k| {
                            Recipient::new(format!(
                                "user{p}.{i}.{k}@{}",
                                domain(zipf.sample(&mut rng))
                            ))
                        })
                        .collect();
                    let len = 1024 + (rng.next() % 7168) as usize;
                    q.enqueue(&NewMessage {
                        sender: "list@groups.example",
                        recipients: rc,
                        meta: b"",
                        body: &body[..len],
                    })?;
                    accepted.fetch_add(1, Ordering::Relaxed);
                    body_bytes.fetch_add(len as u64, Ordering::Relaxed);
                    if i % 50 == 0 {
                        clock.advance(1);
                    }
                }
                Ok(())
            })
        })
        .collect();
    // A live progress line on a terminal; in logs, one line per phase.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = |label: &str, q: &Queue, tally: &Tally, accepted: u64| {
        if !tty && !label.ends_with("ed") && label != "t+120m" {
            return;
        }
        let st = q.stats();
        eprint!(
            "{}{label:<10} accepted {accepted:>7}  delivered {:>7}  deferred {:>6}  bounced {:>5}  site-fail {:>5}  queued {:>7}   {}",
            if tty { "\r" } else { "" },
            tally.delivered.load(Ordering::Relaxed),
            tally.temp.load(Ordering::Relaxed),
            tally.perm.load(Ordering::Relaxed),
            tally.site.load(Ordering::Relaxed),
            st.recipients(),
            if tty { "" } else { "\n" },
        );
        let _ = std::io::stderr().flush();
    };
    while ps.iter().any(|p| !p.is_finished()) {
        std::thread::sleep(Duration::from_millis(250));
        progress("accepting", &q, &tally, accepted.load(Ordering::Relaxed));
    }
    let enqueue_secs = t0.elapsed().as_secs_f64();
    for p in ps {
        p.join().map_err(|_| "producer panicked")??;
    }
    let st_after_accept = q.stats();
    // Let the workers catch up with what is ready now.
    while !settled(&q) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let phase1_secs = t0.elapsed().as_secs_f64();
    let delivered_phase1 = tally.delivered.load(Ordering::Relaxed);
    progress("accepted", &q, &tally, accepted.load(Ordering::Relaxed));
    eprintln!();

    // Phase 2: two simulated hours of retries and probes, 5 minutes at a time.
    let mut dsns = 0u64;
    for step in 0..24 {
        clock.advance(300);
        q.tick();
        while !settled(&q) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for b in q.take_bounces(usize::MAX)? {
            // A real MTA would enqueue a DSN to b.sender here, then acknowledge.
            q.ack_bounce(b.id, b.index)?;
            dsns += 1;
        }
        progress(
            &format!("t+{}m", (step + 1) * 5),
            &q,
            &tally,
            accepted.load(Ordering::Relaxed),
        );
    }
    eprintln!();
    tally.dsn.store(dsns, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for w in ws {
        w.join().map_err(|_| "worker panicked")?;
    }
    q.sync()?;

    let st = q.stats();
    let msgs = accepted.load(Ordering::Relaxed) as f64;
    println!();
    println!("== throughput ==");
    println!(
        "durable enqueue: {:.0} msg/s, {:.1} MB/s of bodies ({} producers, group commit: {:.3} fsyncs per message, {} commits)",
        msgs / enqueue_secs,
        body_bytes.load(Ordering::Relaxed) as f64 / enqueue_secs / 1e6,
        producers,
        st_after_accept.fsyncs as f64 / msgs,
        st_after_accept.commits,
    );
    println!(
        "deliveries while accepting: {:.0} recipients/s ({} delivered in {:.2} s, {} workers)",
        delivered_phase1 as f64 / phase1_secs,
        delivered_phase1,
        phase1_secs,
        workers
    );
    println!(
        "outcomes: {} delivered, {} temporary failures, {} permanent failures, {} site failures, {} DSNs acknowledged",
        tally.delivered.load(Ordering::Relaxed),
        tally.temp.load(Ordering::Relaxed),
        tally.perm.load(Ordering::Relaxed),
        tally.site.load(Ordering::Relaxed),
        dsns
    );
    let dead_buckets = st.buckets.iter().filter(|b| b.dead_until != 0).count();
    println!(
        "still queued after 2 simulated hours: {} recipients in {} messages ({} destinations marked dead), oldest {} min",
        st.recipients(),
        st.messages,
        dead_buckets,
        st.oldest_age / 60
    );
    println!();
    println!("== qshape (recipients by age in minutes, top 10 destinations) ==");
    print!("{}", st.qshape(10));

    // Phase 3: a large backlog to measure memory per queued recipient.
    println!();
    println!("== memory ==");
    let before_idx = q.memory_usage();
    let before_rcpts = q.stats().recipients();
    for k in ["gmail.com", "yahoo.example", "outlook.example"] {
        q.suspend(k)?;
    }
    let t1 = Instant::now();
    let per = backlog / producers;
    let ps: Vec<_> = (0..producers)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || -> Result<(), mailq::Error> {
                for i in 0..per {
                    q.enqueue(&NewMessage {
                        sender: "list@groups.example",
                        recipients: vec![
                            Recipient::new(format!("a{p}.{i}@gmail.com")),
                            Recipient::new(format!("b{p}.{i}@yahoo.example")),
                            Recipient::new(format!("c{p}.{i}@outlook.example")),
                        ],
                        meta: b"",
                        body: &[b'y'; 1024],
                    })?;
                }
                Ok(())
            })
        })
        .collect();
    for p in ps {
        p.join().map_err(|_| "producer panicked")??;
    }
    let backlog_secs = t1.elapsed().as_secs_f64();
    let after = q.stats();
    let added = after.recipients() - before_rcpts;
    let idx = q.memory_usage() - before_idx;
    println!(
        "backlog: {} messages / {} recipients queued in {:.2} s ({:.0} msg/s)",
        per * producers,
        added,
        backlog_secs,
        (per * producers) as f64 / backlog_secs
    );
    println!(
        "RAM per queued recipient: {:.1} bytes (index growth for the backlog, counted from allocations; target ≤ 32)",
        idx as f64 / added as f64,
    );

    // Phase 4: restart.
    println!();
    println!("== restart ==");
    let total_rcpts = after.recipients();
    let total_msgs = after.messages;
    let t2 = Instant::now();
    q.close()?;
    let close_secs = t2.elapsed().as_secs_f64();
    let t3 = Instant::now();
    let q = Queue::open(&dir, opts())?;
    let open_secs = t3.elapsed().as_secs_f64();
    let re = q.stats();
    println!(
        "close (checkpoint) {:.3} s; reopen {:.3} s for {} messages / {} recipients (checkpoint used: {}, corrupt: {})",
        close_secs,
        open_secs,
        total_msgs,
        total_rcpts,
        q.recovery_report().checkpoint_used,
        re.corrupt
    );
    assert_eq!(
        re.recipients(),
        total_rcpts,
        "every queued recipient survives the restart"
    );
    let disk: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("disk: {:.1} MB for the queue directory", disk as f64 / 1e6);
    drop(q);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
