//! How fast does one thread lease and complete recipients? A queue holding
//! R ready recipients (10 per message, 1-byte bodies) over 100k Zipf
//! destinations (gmail.com ≈ 2/3) is filled untimed by 16 threads; then one
//! thread opens sessions, takes deliveries and completes them until every
//! recipient is delivered, and the rate is printed. Several rounds; the
//! criterion group `schedule` measures the same loop in smaller samples.
//!
//! ```sh
//! cargo run --release --example schedule -- --rcpts 2000000 --rounds 3
//! ```

mod common;
#[path = "../benches/support/zipf.rs"]
mod zipf;

use common::arg;
use mailq::{Options, Outcome, Queue};
use std::time::Instant;
use zipf::{enqueue_zipf, Zipf};

/// Leases and completes everything ready; returns the recipients,
/// deliveries and sessions done.
fn drain(q: &Queue) -> (u64, u64, u64) {
    let (mut done, mut deliveries, mut sessions) = (0u64, 0u64, 0u64);
    while let Some(mut s) = q.next_session().expect("session") {
        sessions += 1;
        while let Some(d) = s.next_delivery().expect("delivery") {
            let n = d.recipients().len();
            d.complete(&vec![Outcome::Delivered; n]).expect("complete");
            done += n as u64;
            deliveries += 1;
        }
    }
    (done, deliveries, sessions)
}

fn main() {
    let rcpts = arg("--rcpts", 2_000_000);
    let rounds = arg("--rounds", 3);
    let dir = std::env::temp_dir().join(format!("mailq-schedule-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let q = Queue::open(&dir, Options::default()).expect("open");
    let zipf = parking_lot::Mutex::new(Zipf::new(100_000));
    for round in 1..=rounds {
        enqueue_zipf(&q, rcpts.div_ceil(10) as u64, &zipf);
        let t = Instant::now();
        let (done, deliveries, sessions) = drain(&q);
        let secs = t.elapsed().as_secs_f64();
        println!(
            "round {round}: {done} recipients ({deliveries} deliveries, {sessions} sessions) leased and completed in {secs:.3} s: {:.2} M/s ({:.0} ns each)",
            done as f64 / secs / 1e6,
            secs * 1e9 / done.max(1) as f64
        );
    }
    drop(q);
    let _ = std::fs::remove_dir_all(&dir);
}
