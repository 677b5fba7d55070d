//! Durability through SMTP: a `mailq-relay` child process is SIGKILLed at
//! random moments while clients send; after each restart on the same queue,
//! every message that got `250` must reach the sink. Duplicates are allowed
//! (a message in flight at the kill is delivered again), losses never.

mod common;
use common::*;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The child relay; killed on drop so a failing test leaves nothing running.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(
    queue: &std::path::Path,
    port: u16,
    sink: std::net::SocketAddr,
    log: &std::path::Path,
) -> Relay {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mailq-relay"))
        .args(["--queue", queue.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--relay-to", &sink.to_string()])
        .args([
            "--min-backoff",
            "1",
            "--max-backoff",
            "2",
            "--hostname",
            "relay.test",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start mailq-relay");
    Relay(child)
}

async fn wait_listening(port: u16) {
    for _ in 0..500 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the relay did not listen on port {port} within 5 s");
}

/// Reads one reply; `None` when the connection broke.
async fn reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..pos + 2).collect();
            if line.len() >= 4 && line[3] == b'-' {
                continue;
            }
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Sends messages until `stop`, recording the ids answered `250`.
async fn sender(
    port: u16,
    next: Arc<AtomicU64>,
    acked: Arc<Mutex<HashSet<u64>>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut attempts = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let mut buf = Vec::new();
        if !reply(&mut s, &mut buf)
            .await
            .is_some_and(|g| g.starts_with("220"))
        {
            continue;
        }
        if s.write_all(b"EHLO client.test\r\n").await.is_err()
            || reply(&mut s, &mut buf).await.is_none()
        {
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            let n = next.fetch_add(1, Ordering::Relaxed);
            attempts += 1;
            let body = format!(
                "Subject: kill test\r\nX-Test-Id: {n}\r\n\r\n{}\r\n",
                "payload ".repeat(100)
            );
            let mut wire = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n".to_vec();
            if s.write_all(&wire).await.is_err() {
                break;
            }
            let mut ok = true;
            for _ in 0..4 {
                ok &= reply(&mut s, &mut buf).await.is_some();
            }
            if !ok {
                break;
            }
            wire = mailq_relay::client::stuff(body.as_bytes());
            if s.write_all(&wire).await.is_err() {
                break;
            }
            match reply(&mut s, &mut buf).await {
                Some(r) if r.starts_with("250") => {
                    acked.lock().unwrap().insert(n);
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    attempts
}

/// Client tasks sending until stopped.
struct Senders {
    acked: Arc<Mutex<HashSet<u64>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Senders {
    fn start(port: u16, n: usize) -> Senders {
        let next = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|_| tokio::spawn(sender(port, next.clone(), acked.clone(), stop.clone())))
            .collect();
        Senders { acked, stop, tasks }
    }

    /// Stops them: (messages attempted, ids answered 250).
    async fn stop(self) -> (u64, HashSet<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut attempted = 0;
        for t in self.tasks {
            attempted += t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        (attempted, acked)
    }
}

fn test_id(body: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().find(|l| l.starts_with("X-Test-Id: "))?;
    line["X-Test-Id: ".len()..].trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_sigkill() {
    let dir = TempDir::new("kill");
    let sink = Sink::start(Script::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let queue = dir.path().join("queue");
    let log = dir.path().join("relay.log");
    let mut seed = std::env::var("MAILQ_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed} (MAILQ_KILL_SEED={seed} repeats the kill times)");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };

    let mut relay = spawn(&queue, port, sink.addr, &log);
    wait_listening(port).await;
    let senders = Senders::start(port, 8);
    const KILLS: usize = 6;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(150 + rand() % 450)).await;
        relay.0.kill().unwrap(); // SIGKILL
        relay.0.wait().unwrap();
        relay = spawn(&queue, port, sink.addr, &log);
        wait_listening(port).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (attempted, acked) = senders.stop().await;
    assert!(
        acked.len() > 100,
        "too little mail went through to test anything: {}",
        acked.len()
    );

    // Each acknowledged message reaches the sink for both recipients.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (missing, delivered, dups) = loop {
        let got = sink.got().await;
        let mut per_id: HashMap<(u64, String), usize> = HashMap::new();
        for g in &got {
            if let Some(id) = test_id(&g.body) {
                for r in &g.rcpts {
                    *per_id.entry((id, r.clone())).or_default() += 1;
                }
            }
        }
        let missing: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|&id| {
                ["b@example.com", "c@example.net"]
                    .iter()
                    .any(|r| !per_id.contains_key(&(id, r.to_string())))
            })
            .collect();
        let dups = per_id.values().filter(|&&n| n > 1).count();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break (missing, per_id.len(), dups);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "{KILLS} SIGKILLs: {attempted} messages attempted, {} acknowledged with 250, {delivered} (message, recipient) pairs delivered, {dups} delivered more than once, {} lost",
        acked.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged messages lost: {missing:?} (log: {})",
        log.display()
    );
    drop(relay);
}

/// SIGKILL keeps the page cache, so it cannot catch a `250` sent after the
/// write but before the fdatasync. A simulated power cut can: the queue runs
/// on `SimFs`, the machine "loses power" at a random I/O while clients send,
/// unsynced writes are lost (or torn, or reordered), and a new relay on what
/// survived must deliver every message that got `250`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_a_power_cut() {
    use mailq::sim::{CrashMode, SimFs};
    let modes = [
        CrashMode::LoseUnsynced,
        CrashMode::TornTail,
        CrashMode::Reorder,
    ];
    for (round, mode) in modes.into_iter().enumerate() {
        let dir = TempDir::new("powercut");
        let fs = SimFs::new();
        let sink = Sink::start(Script::default()).await;
        let mut cfg = config(&dir, sink.addr);
        cfg.vfs = Some(fs.vfs());
        cfg.admin = None; // the simulated filesystem has no directory for a real socket
        let relay = start(cfg.clone()).await;
        let port = relay.local_addr().port();
        let senders = Senders::start(port, 8);
        tokio::time::sleep(Duration::from_millis(200 + 150 * round as u64)).await;
        fs.crash_after(1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, acked) = senders.stop().await;
        assert!(fs.crashed(), "the power cut did not happen");
        drop(relay);
        fs.restart(mode, 0x5eed + round as u64);

        assert!(
            acked.len() > 20,
            "too little mail went through to test anything: {}",
            acked.len()
        );
        let relay = start(cfg).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let missing = loop {
            let got: HashSet<u64> = sink
                .got()
                .await
                .iter()
                .filter_map(|g| test_id(&g.body))
                .collect();
            let missing: Vec<u64> = acked
                .iter()
                .copied()
                .filter(|id| !got.contains(id))
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() > deadline {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "power cut ({mode:?}): {} messages acknowledged, {} lost",
            acked.len(),
            missing.len()
        );
        assert!(
            missing.is_empty(),
            "acknowledged messages lost after a power cut ({mode:?}): {missing:?}"
        );
        relay.shutdown().await.unwrap();
    }
}
