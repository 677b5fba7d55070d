//! Fleet limits in Redis, measured (feature `redis`): round trips per second
//! of a connection lease (open + close) and of a message permit against a
//! local redis-server this example starts on a free loopback port (and
//! stops), and scheduling throughput (lease + complete, one recipient per
//! message, 1-byte bodies) with the Redis limiter on (a limit high enough
//! never to bind) and off, alternating, median of rounds.
//!
//! `cargo run --release --features redis --example fleet -- --messages 20000 --rounds 5`

#[path = "common/mod.rs"]
mod common;

use mailq::*;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let messages = common::arg("--messages", 20_000);
    let rounds = common::arg("--rounds", 5);
    let trips = common::arg("--trips", 20_000);
    let tmp = std::env::temp_dir().join(format!("mailq-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&tmp)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (Debian package redis-server)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let fleet = RedisFleet::new(
        RedisFleetOptions {
            url: format!("redis://127.0.0.1:{port}/"),
            ..RedisFleetOptions::default()
        },
        Arc::new(SystemClock),
    )
    .expect("limiter");
    let roomy = FleetLimit {
        connections: 1_000_000,
        rate: RateLimit {
            per_second: 1_000_000,
            ..RateLimit::default()
        },
    };
    fleet.set_limit("bench.example", roomy);
    // Round trips: a lease opened and closed; a message permit.
    let t = Instant::now();
    let session = |fence| FleetSession { queue: 1, fence };
    for f in 0..trips as u64 {
        assert_eq!(fleet.open("bench.example", session(f)), Permit::Granted);
        fleet.close("bench.example", session(f));
    }
    let lease_rate = trips as f64 / t.elapsed().as_secs_f64();
    assert_eq!(
        fleet.open("bench.example", session(u64::MAX)),
        Permit::Granted
    );
    let t = Instant::now();
    for _ in 0..trips {
        let _ = fleet.message("bench.example", session(u64::MAX));
    }
    let msg_rate = trips as f64 / t.elapsed().as_secs_f64();
    println!(
        "redis-server on loopback: lease open+close {lease_rate:.0}/s ({:.1} µs each), message permit {msg_rate:.0}/s ({:.1} µs each)",
        1e6 / lease_rate,
        1e6 / msg_rate
    );
    // Scheduling throughput, limiter on vs off, alternating.
    let mut on = Vec::new();
    let mut off = Vec::new();
    for r in 0..rounds {
        for with in [true, false] {
            let dir = tmp.join(format!("q-{r}-{with}"));
            let o = Options {
                fleet: with.then(|| fleet.clone() as Arc<dyn FleetLimiter>),
                auto_maintenance: false,
                ..Options::default()
            };
            let q = Queue::open(&dir, o).expect("open");
            for i in 0..messages {
                let to = format!("r{i}@bench.example");
                q.enqueue(&NewMessage {
                    sender: "s@x.example",
                    recipients: vec![Recipient::new(to.as_str())],
                    meta: b"",
                    body: b"x",
                })
                .expect("enqueue");
            }
            let t = Instant::now();
            let mut n = 0;
            while let Some(mut s) = q.next_session().expect("session") {
                while let Some(d) = s.next_delivery().expect("delivery") {
                    d.complete(&[Outcome::Delivered]).expect("complete");
                    n += 1;
                }
                s.finish().expect("finish");
            }
            assert_eq!(n, messages, "all delivered");
            let rate = n as f64 / t.elapsed().as_secs_f64();
            if with {
                on.push(rate)
            } else {
                off.push(rate)
            }
            drop(q);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (m_on, m_off) = (median(&mut on), median(&mut off));
    println!(
        "scheduling (lease + complete), {messages} messages, median of {rounds}: limiter off {m_off:.0}/s, on {m_on:.0}/s ({:.2}x)",
        m_on / m_off
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&tmp);
}
