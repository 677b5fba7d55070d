//! Memory figures for BENCHMARKS.md, each scenario in a fresh child process so
//! that one scenario's allocator state never colours another's:
//!
//! - `unique`: every deferred recipient carries a unique reply text (Gmail-style
//!   transaction ids): index bytes and RSS growth per queued recipient;
//! - `running`: RSS growth per recipient *while the queue runs* (enqueue with
//!   32 producers, no reopen), with default options (automatic checkpoints and
//!   compaction) and, for comparison, with maintenance off;
//! - `oneoff`: 1 M messages to one-off domains over time, all delivered:
//!   index size and checkpoint size at the start, at the peak and at the end.
//!
//! ```sh
//! cargo run --release --example memory              # all three
//! cargo run --release --example memory -- --scale 0.2
//! ```

use mailq::{NewMessage, Options, Outcome, Queue, Recipient};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|x| x.parse().ok()))
        })
        .unwrap_or(0)
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mailq-memory-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Enqueues messages `first..first + n` from 32 producers, `make(i)` giving the
/// recipients and body of message `i`.
fn produce(
    q: &Queue,
    first: u64,
    n: u64,
    make: impl Fn(u64) -> (Vec<Recipient>, &'static [u8]) + Sync,
) {
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..32 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (recipients, body) = make(first + i);
                q.enqueue(&NewMessage {
                    sender: "s@src.example",
                    recipients,
                    meta: b"",
                    body,
                })
                .expect("enqueue");
            });
        }
    });
}

/// Enqueues `msgs` messages of 3 recipients over `domains` domains, 32 producers.
fn fill(q: &Queue, msgs: u64, domains: u64, offset: u64) {
    produce(q, offset, msgs, |n| {
        let rcpts = (0..3)
            .map(|k| Recipient::new(format!("u{n}.{k}@d{}.example", (n * 7 + k) % domains)))
            .collect();
        (rcpts, b"Subject: t\r\n\r\nbody\r\n")
    });
}

/// Delivers everything ready with `outcome(i)`.
fn drain(q: &Queue, mut outcome: impl FnMut(u64) -> Outcome) -> u64 {
    let mut n = 0;
    while let Some(mut s) = q.next_session().expect("session") {
        while let Some(d) = s.next_delivery().expect("delivery") {
            let outs: Vec<Outcome> = d
                .recipients()
                .iter()
                .map(|_| {
                    n += 1;
                    outcome(n)
                })
                .collect();
            d.complete(&outs).expect("complete");
        }
        s.finish().expect("finish");
    }
    n
}

fn gmail_reply(i: u64) -> String {
    format!(
        "451-4.7.28 [192.0.2.{}] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. {:x}{:08x}-{:x}si{}abc.{} - gsmtp",
        i % 8,
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20,
        i,
        i * 31,
        i % 1000,
        i % 997
    )
}

fn unique(scale: f64) {
    let msgs = (100_000.0 * scale) as u64;
    let d = dir("unique");
    let before = status_kb("VmRSS:");
    let q = Queue::open(&d, Options::default()).expect("open");
    fill(&q, msgs, 1000, 0);
    let deferred = drain(&q, |i| Outcome::temp(gmail_reply(i)));
    q.sync().expect("sync");
    let st = q.stats();
    let rss = status_kb("VmRSS:").saturating_sub(before) * 1024;
    println!(
        "RESULT unique reply texts: {} deferred recipients; index {:.1} B/recipient; RSS growth {:.1} B/recipient; {} texts kept normalised, {} not kept",
        deferred,
        q.memory_usage() as f64 / st.recipients() as f64,
        rss as f64 / st.recipients() as f64,
        st.reasons_normalised,
        st.reasons_not_kept
    );
    drop(q);
    let _ = std::fs::remove_dir_all(&d);
}

fn running(scale: f64, maintenance: bool) {
    let msgs = (333_334.0 * scale) as u64;
    let d = dir("running");
    let before = status_kb("VmRSS:");
    let q = Queue::open(
        &d,
        Options {
            auto_maintenance: maintenance,
            ..Options::default()
        },
    )
    .expect("open");
    let t0 = Instant::now();
    fill(&q, msgs, 3000, 0);
    let st = q.stats();
    let rss = status_kb("VmRSS:").saturating_sub(before) * 1024;
    println!(
        "RESULT running, automatic maintenance {}: {} recipients in {:.1} s; {} checkpoints; RSS growth {:.1} B/recipient; index {:.1} B/recipient",
        if maintenance { "on (default)" } else { "off" },
        st.recipients(),
        t0.elapsed().as_secs_f64(),
        st.checkpoints,
        rss as f64 / st.recipients() as f64,
        q.memory_usage() as f64 / st.recipients() as f64
    );
    drop(q);
    let _ = std::fs::remove_dir_all(&d);
}

fn checkpoint_len(d: &Path) -> u64 {
    std::fs::metadata(d.join("checkpoint"))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn oneoff(scale: f64) {
    let total = (1_000_000.0 * scale) as u64;
    let round = 20_000u64.min(total);
    let d = dir("oneoff");
    let q = Queue::open(&d, Options::default()).expect("open");
    let (mut base, mut peak) = ((0, 0), (0, 0));
    let mut done = 0u64;
    let t0 = Instant::now();
    while done < total {
        produce(&q, done, round, |n| {
            (vec![Recipient::new(format!("u@one-off-{n}.example"))], b"x")
        });
        let mem_full = q.memory_usage();
        drain(&q, |_| Outcome::Delivered);
        q.checkpoint().expect("checkpoint");
        let now = (q.memory_usage(), checkpoint_len(&d));
        if done == 0 {
            base = now;
        }
        peak = (peak.0.max(mem_full), peak.1.max(now.1));
        done += round;
    }
    let end = (q.memory_usage(), checkpoint_len(&d));
    println!(
        "RESULT one-off domains: {} messages to {} distinct domains in {:.0} s; index after the first round {} KB, at the fullest {} KB, at the end {} KB; checkpoint after the first round {} B, at the end {} B; {} buckets freed",
        done,
        done,
        t0.elapsed().as_secs_f64(),
        base.0 / 1024,
        peak.0 / 1024,
        end.0 / 1024,
        base.1,
        end.1,
        q.stats().buckets_freed
    );
    drop(q);
    let _ = std::fs::remove_dir_all(&d);
}

fn child(args: &[String]) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).args(args).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .map(|l| l.trim_start_matches("RESULT ").to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale: f64 = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    match args.first().map(String::as_str) {
        Some("--unique") => return unique(scale),
        Some("--running") => return running(scale, true),
        Some("--running-off") => return running(scale, false),
        Some("--oneoff") => return oneoff(scale),
        _ => {}
    }
    let s = scale.to_string();
    for mode in ["--unique", "--running", "--running-off", "--oneoff"] {
        match child(&[mode.to_string(), "--scale".into(), s.clone()]) {
            Some(r) => println!("{r}"),
            None => println!("{mode}: failed"),
        }
    }
}
