//! Destinations drawn with a Zipf skew: one (gmail.com) takes 2/3 of the
//! recipients, the rest spread over `n` domains by 1/k; and a queue filled
//! with them. Shared by the criterion suite and `examples/schedule.rs`.

use mailq::{NewMessage, Queue, Recipient};
use std::sync::atomic::{AtomicU64, Ordering};

/// A deterministic Zipf sampler of recipient domains.
pub struct Zipf(Vec<f64>, u64);

impl Zipf {
    /// Over `n` domains besides gmail.com.
    pub fn new(n: usize) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..n {
            acc += 1.0 / k as f64;
            cdf.push(acc);
        }
        cdf.iter_mut().for_each(|c| *c /= acc);
        Zipf(cdf, 0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        self.1 ^= self.1 << 13;
        self.1 ^= self.1 >> 7;
        self.1 ^= self.1 << 17;
        (self.1 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next recipient's domain.
    pub fn domain(&mut self) -> String {
        if self.unit() < 2.0 / 3.0 {
            return "gmail.com".into();
        }
        let u = self.unit();
        format!("d{}.example", 1 + self.0.partition_point(|&c| c < u))
    }
}

/// Enqueues `msgs` messages of 10 Zipf recipients and a 1-byte body from 16
/// threads.
pub fn enqueue_zipf(q: &Queue, msgs: u64, zipf: &parking_lot::Mutex<Zipf>) {
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= msgs {
                    break;
                }
                let rc: Vec<Recipient> = {
                    let mut z = zipf.lock();
                    (0..10)
                        .map(|k| Recipient::new(format!("u{i}.{k}@{}", z.domain())))
                        .collect()
                };
                q.enqueue(&NewMessage {
                    sender: "s@x.example",
                    recipients: rc,
                    meta: b"",
                    body: b"b",
                })
                .expect("enqueue");
            });
        }
    });
}
