//! Fleet limits in a real Redis (feature `redis`): the harness starts
//! Debian's `redis-server` on a free loopback port in a temporary directory
//! and stops it (by its PID) at the end. Three nodes, each with its own queue
//! and its own connection to Redis, share one destination's limits; a node
//! that dies loses its leases by their TTL; Redis down or flushed is handled
//! by the failure policy. Real time (Redis's clock), a few seconds each.
#![cfg(feature = "redis")]

mod common;
use common::*;
use mailq::*;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A redis-server this test started; killed (its PID only) when dropped.
struct Server {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Server {
    /// Starts a redis-server of this test's own. The free port is picked
    /// before the server binds it, so a test running alongside may pick the
    /// same one: the server that answers must be ours (by its PID), else
    /// another port is tried.
    fn start() -> Server {
        for _ in 0..20 {
            if let Some(s) = Server::try_start() {
                return s;
            }
        }
        panic!("no redis-server of this test's own answered on 20 ports");
    }

    fn try_start() -> Option<Server> {
        let dir = TempDir::new("redis");
        std::fs::create_dir_all(dir.path()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server (Debian package redis-server) must be installed; .ci/run installs it",
            );
        let mut s = Server {
            child,
            port,
            _dir: dir,
        };
        let t0 = Instant::now();
        loop {
            if let Some(pid) = server_pid(port) {
                // Another test's server on the same port: ours could not bind.
                return (pid == s.child.id()).then_some(s);
            }
            if s.child.try_wait().unwrap().is_some() {
                return None; // ours exited (the port was taken)
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cli(&self, args: &[&str]) {
        let ok = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "redis-cli {args:?}");
    }
}

/// The PID of the redis-server answering on `port` (`INFO server`), if one
/// answers.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(11).any(|w| w == b"process_id:") || !got.ends_with(b"\r\n") {
        let n = c.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let line = text.lines().find(|l| l.starts_with("process_id:"))?;
    line["process_id:".len()..].trim().parse().ok()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn limiter(url: &str, ttl: Duration, on_failure: FleetFailure) -> Arc<RedisFleet> {
    RedisFleet::new(
        RedisFleetOptions {
            url: url.into(),
            lease_ttl: ttl,
            on_failure,
            ..RedisFleetOptions::default()
        },
        Arc::new(SystemClock),
    )
    .unwrap()
}

const CLOSED: FleetFailure = FleetFailure::FailClosed {
    retry: Duration::from_secs(1),
};

fn node(dir: &TempDir, fleet: &Arc<RedisFleet>) -> Queue {
    let o = Options {
        fleet: Some(fleet.clone() as Arc<dyn FleetLimiter>),
        ..Options::default()
    };
    Queue::open(dir.path(), o).unwrap()
}

fn fill(q: &Queue, dom: &str, n: usize) {
    for i in 0..n {
        q.enqueue(&msg("s@x.example", &[&format!("r{i}@{dom}")], b"x"))
            .unwrap();
    }
}

#[test]
fn three_nodes_share_connections_and_rate_in_redis() {
    let server = Server::start();
    let limit = FleetLimit {
        connections: 2,
        rate: RateLimit {
            per_second: 4,
            ..RateLimit::default()
        },
    };
    let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("rf-{i}"))).collect();
    let fleets: Vec<Arc<RedisFleet>> = (0..3)
        .map(|_| limiter(&server.url(), Duration::from_secs(30), CLOSED))
        .collect();
    for f in &fleets {
        f.set_limit("gmail.com", limit);
    }
    let nodes: Vec<Queue> = dirs.iter().zip(&fleets).map(|(d, f)| node(d, f)).collect();
    for q in &nodes {
        fill(q, "gmail.com", 40);
    }
    // Held at once across the fleet: two.
    let mut held = Vec::new();
    for q in &nodes {
        while let Some(s) = q.session_for("gmail.com").unwrap() {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 2);
    assert_eq!(fleets[0].leases("gmail.com").unwrap(), 2);
    drop(held);
    assert_eq!(
        fleets[0].leases("gmail.com").unwrap(),
        0,
        "released in Redis"
    );
    // Three seconds of deliveries: never more than 4 in a second. Redis
    // decides in its whole seconds (the same machine's clock): a delivery
    // whose decision surely fell in one second counts there.
    let t0 = Instant::now();
    let mut per_second: std::collections::BTreeMap<u64, usize> = Default::default();
    let mut total = 0;
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while t0.elapsed() < Duration::from_secs(3) {
        for q in &nodes {
            q.tick();
            while let Some(mut s) = q.next_session().unwrap() {
                loop {
                    let before = unix();
                    let Some(d) = s.next_delivery().unwrap() else {
                        break;
                    };
                    if unix() == before {
                        *per_second.entry(before).or_default() += 1;
                    }
                    total += 1;
                    d.complete(&[Outcome::Delivered]).unwrap();
                }
                s.finish().unwrap();
            }
        }
        assert!(fleets[0].leases("gmail.com").unwrap() <= 2);
        std::thread::sleep(Duration::from_millis(20));
    }
    for (sec, n) in &per_second {
        assert!(*n <= 4, "{n} messages decided in second {sec}");
    }
    // The whole rate is used, not one message a second.
    assert!(total >= 8, "the fleet delivers its rate: {total} in 3 s");
    assert!(fleets.iter().all(|f| f.errors() == 0));
}

#[test]
fn a_dead_node_loses_its_leases_within_the_ttl() {
    let server = Server::start();
    let ttl = Duration::from_millis(1500);
    let (da, db) = (TempDir::new("rf-dead-a"), TempDir::new("rf-dead-b"));
    let (fa, fb) = (
        limiter(&server.url(), ttl, CLOSED),
        limiter(&server.url(), ttl, CLOSED),
    );
    let limit = FleetLimit {
        connections: 1,
        rate: RateLimit::default(),
    };
    fa.set_limit("x.example", limit);
    fb.set_limit("x.example", limit);
    let (a, b) = (node(&da, &fa), node(&db, &fb));
    fill(&a, "x.example", 2);
    fill(&b, "x.example", 2);
    // Node a takes the fleet's only connection, then dies without a word.
    let s = a.session_for("x.example").unwrap().unwrap();
    std::mem::forget(s);
    assert!(b.session_for("x.example").unwrap().is_none(), "held by a");
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        b.tick();
        if let Some(s) = b.session_for("x.example").unwrap() {
            drop(s);
            break;
        }
        assert!(
            t0.elapsed() < ttl + Duration::from_secs(2),
            "not back after the TTL"
        );
    }
    assert!(
        t0.elapsed() + Duration::from_millis(200) >= ttl,
        "not before the TTL"
    );
    std::mem::forget(a);
}

#[test]
fn a_flushed_redis_ends_sessions_and_a_down_one_follows_the_policy() {
    let server = Server::start();
    let limit = FleetLimit {
        connections: 2,
        rate: RateLimit {
            per_minute: 600,
            ..RateLimit::default()
        },
    };
    let d = TempDir::new("rf-flush");
    let f = limiter(&server.url(), Duration::from_secs(30), CLOSED);
    f.set_limit("x.example", limit);
    let q = node(&d, &f);
    fill(&q, "x.example", 5);
    let mut s = q.session_for("x.example").unwrap().unwrap();
    let dl = s.next_delivery().unwrap().unwrap();
    dl.complete(&[Outcome::Delivered]).unwrap();
    // Keys flushed (a restart without persistence): the session's lease is
    // gone, so it sends nothing more; a new session asks for a new one.
    server.cli(&["FLUSHALL"]);
    assert!(
        s.next_delivery().unwrap().is_none(),
        "lease lost: the session ends"
    );
    drop(s);
    std::thread::sleep(Duration::from_millis(1100));
    q.tick();
    let mut s = q.session_for("x.example").unwrap().unwrap();
    assert!(s.next_delivery().unwrap().is_some());
    drop(s);
    drop(server);
    // Redis down, fail closed: nothing limited goes, errors are counted.
    std::thread::sleep(Duration::from_millis(1100));
    q.tick();
    assert!(q.session_for("x.example").unwrap().is_none());
    assert!(f.errors() > 0);
    // Down, with a local share of 2 nodes: this node may use half the limit.
    let shared = limiter(
        "redis://127.0.0.1:1/",
        Duration::from_secs(30),
        FleetFailure::LocalShare { nodes: 2 },
    );
    shared.set_limit("x.example", limit);
    let d2 = TempDir::new("rf-share");
    let q2 = node(&d2, &shared);
    fill(&q2, "x.example", 3);
    let s1 = q2.session_for("x.example").unwrap();
    assert!(s1.is_some(), "its share of the connections: 1");
    assert!(q2.session_for("x.example").unwrap().is_none(), "not 2");
    assert!(shared.errors() > 0);
}

/// The proof: three nodes (threads, each with its own queue and its
/// own connection to Redis) deliver to a loopback sink under a fleet limit
/// of 10 connections and 600 messages a minute. A sampler reads the leases
/// held in Redis every 50 ms; the sink counts messages per second. Then one
/// node dies holding every connection: the others get them back within the
/// lease TTL.
#[test]
fn proof_three_nodes_ten_connections_600_a_minute_and_a_node_dies() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let server = Server::start();
    let limit = FleetLimit {
        connections: 10,
        rate: RateLimit {
            per_minute: 600,
            ..RateLimit::default()
        },
    };
    let ttl = Duration::from_secs(2);
    // The sink: one connection per session, one line per message.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let received = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let received = received.clone();
        std::thread::spawn(move || {
            for conn in sink.incoming() {
                let Ok(mut c) = conn else { break };
                let received = received.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs();
                        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                        received.lock().extend(std::iter::repeat_n(now, lines));
                    }
                });
            }
        });
    }
    let sampler_fleet = limiter(&server.url(), ttl, CLOSED);
    let max_leases = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, max_leases) = (stop.clone(), max_leases.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = sampler_fleet.leases("gmail.com").unwrap() as usize;
                max_leases.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let run = |i: usize, secs: u64| {
        let url = server.url();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let f = limiter(&url, ttl, CLOSED);
            f.set_limit("gmail.com", limit);
            let dir = TempDir::new(&format!("rf-proof-{i}"));
            let q = node(&dir, &f);
            fill(&q, "gmail.com", 200);
            let t0 = Instant::now();
            let mut sent = 0;
            while t0.elapsed() < Duration::from_secs(secs) && !stop.load(Ordering::Relaxed) {
                q.tick();
                // Every session the node may open (its window is 5: 15 in
                // the fleet without the limit), each its own connection,
                // served in turn.
                let mut open = Vec::new();
                while let Some(s) = q.next_session().unwrap() {
                    open.push((s, std::net::TcpStream::connect(sink_addr).unwrap()));
                }
                loop {
                    let mut any = false;
                    for (s, c) in open.iter_mut() {
                        if let Some(d) = s.next_delivery().unwrap() {
                            c.write_all(b"message\n").unwrap();
                            d.complete(&[Outcome::Delivered]).unwrap();
                            sent += 1;
                            any = true;
                        }
                    }
                    if !any {
                        break;
                    }
                }
                // Connections outlive their messages (QUIT, a slow peer).
                std::thread::sleep(Duration::from_millis(200));
                drop(open);
            }
            sent
        })
    };
    let nodes: Vec<_> = (0..3).map(|i| run(i, 4)).collect();
    let sent: usize = nodes.into_iter().map(|h| h.join().unwrap()).sum();
    std::thread::sleep(Duration::from_millis(200)); // the sink reads the last lines
    let per_second = {
        let r = received.lock();
        let mut m = std::collections::BTreeMap::<u64, usize>::new();
        for &t in r.iter() {
            *m.entry(t).or_default() += 1;
        }
        m
    };
    let max = max_leases.load(Ordering::Relaxed);
    assert!(max <= 10, "{max} leases held at once");
    assert!(
        max > 5,
        "the nodes together want more than one node's window: {max}"
    );
    // Decided per second of Redis's clock and written just after: a
    // message decided at the end of one second may arrive in the next.
    let mut prev = 0;
    for (sec, &n) in &per_second {
        assert!(
            n <= 10 + prev.min(1),
            "{n} messages arrived in second {sec}"
        );
        prev = n;
    }
    assert_eq!(per_second.values().sum::<usize>(), sent);
    assert!(sent >= 25, "the fleet uses its rate: {sent} in 4 s");
    // A node takes every connection and dies without releasing them.
    let url = server.url();
    let dead = std::thread::spawn(move || {
        let f = limiter(&url, ttl, CLOSED);
        f.set_limit("gmail.com", limit);
        let dir = TempDir::new("rf-proof-dead");
        let o = Options {
            fleet: Some(f.clone() as Arc<dyn FleetLimiter>),
            concurrency: Concurrency {
                initial: 20,
                ..Concurrency::default()
            },
            ..Options::default()
        };
        let q = Queue::open(dir.path(), o).unwrap();
        fill(&q, "gmail.com", 20);
        let mut n = 0;
        while let Some(s) = q.session_for("gmail.com").unwrap() {
            std::mem::forget(s);
            n += 1;
        }
        std::mem::forget(q);
        std::mem::forget(dir);
        n
    });
    assert_eq!(dead.join().unwrap(), 10);
    let died = Instant::now();
    let f = limiter(&server.url(), ttl, CLOSED);
    f.set_limit("gmail.com", limit);
    let dir = TempDir::new("rf-proof-after");
    let q = node(&dir, &f);
    fill(&q, "gmail.com", 5);
    assert!(
        q.session_for("gmail.com").unwrap().is_none(),
        "all held by the dead node"
    );
    // In Redis, its leases are gone within the TTL …
    let gone = loop {
        if f.leases("gmail.com").unwrap() == 0 {
            break died.elapsed();
        }
        assert!(
            died.elapsed() < ttl + Duration::from_secs(1),
            "leases not expired"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        gone <= ttl + Duration::from_millis(100),
        "expired after {gone:?}"
    );
    // … and a waiting node gets them at its next ask (at most a second, in
    // whole seconds of its wake-ups).
    let back = loop {
        q.tick();
        if let Some(s) = q.session_for("gmail.com").unwrap() {
            drop(s);
            break died.elapsed();
        }
        assert!(
            died.elapsed() < ttl + Duration::from_secs(4),
            "leases not back"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        back <= gone + Duration::from_millis(2100),
        "back after {back:?}"
    );
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
}
