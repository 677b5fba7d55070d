//! mailq against the spools MTAs use today, same workload, same run, same disk.
//!
//! Peers:
//! - `raw`: the physical limit — append + fdatasync of the same bytes, in the
//!   same batch sizes, in the same order, as mailq's group commits in that
//!   run at that producer count (recorded through the `Vfs` seam: the bytes
//!   each segment fdatasync made durable);
//! - `mailq`, run as an MTA runs it: producers enqueue while the MTA's event
//!   loop calls `tick` (which makes the next segment's file ahead);
//! - `mailq-noprealloc`: the same with `preallocate_segments` off (every
//!   commit grows the file, as `raw`'s do);
//! - `spool`: a Postfix-style spool — one file per message written to a temporary
//!   name, fsynced, renamed into place, directory fsynced; a recipient is marked
//!   done by rewriting its record in place; the file is removed when all are done;
//! - `sqlite`: SQLite (bundled) in WAL mode with synchronous=FULL, a messages
//!   table and an indexed recipients table, one transaction per message;
//! - `rocksdb` (feature `compare-rocksdb`): RocksDB with sync writes, one write
//!   batch per message.
//!
//! Every peer enqueues N messages (4 KiB body, 3 recipients) from P producer
//! threads, marks every recipient delivered, then is reopened and lists what is
//! pending. Each (peer, P) runs in its own child process so that resident memory
//! is measured per peer. With `strace` installed, a separate short run per peer
//! counts fsync/fdatasync calls.
//!
//! ```sh
//! cargo run --release --features compare --example compare            # the comparison
//! cargo run --release --features compare --example compare -- --memory # RSS per recipient, restart
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BODY: usize = 4096;
const RCPTS: usize = 3;

fn rcpts(i: u64) -> Vec<String> {
    (0..RCPTS)
        .map(|k| format!("user{i}.{k}@d{}.example", (i * 7 + k as u64) % 1000))
        .collect()
}

// ---------------------------------------------------------------------------
// Peers.

trait Peer: Send + Sync {
    /// Durable enqueue of message `i`.
    fn enqueue(&self, i: u64, rcpts: &[String], body: &[u8]);
    /// Marks every recipient of the messages `ids` (thread `t` of `n`) delivered.
    fn deliver(&self, ids: &[u64]);
    /// fdatasync count the peer can report itself (None: count externally).
    fn syncs(&self) -> Option<u64> {
        None
    }
    /// What the peer's event loop calls, if it has one.
    fn ticker(&self) -> Option<Box<dyn Fn() + Send>> {
        None
    }
}

struct MailqPeer(mailq::Queue);

/// The bytes each fdatasync of a segment file committed, while `on`.
#[derive(Default)]
struct Commits {
    on: std::sync::atomic::AtomicBool,
    pending: parking_lot::Mutex<std::collections::HashMap<usize, u64>>,
    sizes: parking_lot::Mutex<Vec<u64>>,
}

/// The real filesystem, with segment writes and syncs counted into `Commits`.
struct RecFs(Arc<Commits>);
struct RecFile {
    f: Arc<dyn mailq::VFile>,
    seg: bool,
    c: Arc<Commits>,
}

impl mailq::Vfs for RecFs {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        mailq::OsFs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        mailq::OsFs.list(dir)
    }
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn mailq::VFile>> {
        let f = mailq::OsFs.open(path, create)?;
        let seg = path.extension().is_some_and(|e| e == "seg" || e == "pre");
        Ok(Arc::new(RecFile {
            f,
            seg,
            c: self.0.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        mailq::OsFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        mailq::OsFs.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        mailq::OsFs.sync_dir(dir)
    }
    fn lock_dir(
        &self,
        dir: &Path,
    ) -> std::io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        mailq::OsFs.lock_dir(dir)
    }
    fn network_fs(&self, dir: &Path) -> std::io::Result<Option<String>> {
        mailq::OsFs.network_fs(dir)
    }
    fn dir_exists(&self, dir: &Path) -> std::io::Result<bool> {
        mailq::OsFs.dir_exists(dir)
    }
}

impl RecFile {
    fn key(&self) -> usize {
        Arc::as_ptr(&self.f) as *const u8 as usize
    }
}

impl mailq::VFile for RecFile {
    fn len(&self) -> std::io::Result<u64> {
        self.f.len()
    }
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.f.read_exact_at(off, buf)
    }
    fn write_all_at(&self, off: u64, buf: &[u8]) -> std::io::Result<()> {
        // Zero-filling a file ahead is not a commit.
        if self.seg && self.c.on.load(Ordering::Relaxed) && buf.iter().any(|&b| b != 0) {
            *self.c.pending.lock().entry(self.key()).or_default() += buf.len() as u64;
        }
        self.f.write_all_at(off, buf)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let r = self.f.sync_data();
        if let Some(n) = self.c.pending.lock().remove(&self.key()) {
            self.c.sizes.lock().push(n);
        }
        r
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.f.set_len(len)
    }
}

impl Peer for MailqPeer {
    fn enqueue(&self, _i: u64, rcpts: &[String], body: &[u8]) {
        self.0
            .enqueue(&mailq::NewMessage {
                sender: "list@sender.example",
                recipients: rcpts
                    .iter()
                    .map(|r| mailq::Recipient::new(r.as_str()))
                    .collect(),
                meta: b"",
                body,
            })
            .expect("enqueue");
    }
    fn deliver(&self, _ids: &[u64]) {
        while let Some(mut s) = self.0.next_session().expect("session") {
            while let Some(d) = s.next_delivery().expect("delivery") {
                let n = d.recipients().len();
                d.complete(&vec![mailq::Outcome::Delivered; n])
                    .expect("complete");
            }
        }
        self.0.sync().expect("sync");
    }
    fn syncs(&self) -> Option<u64> {
        Some(self.0.stats().fsyncs)
    }
    fn ticker(&self) -> Option<Box<dyn Fn() + Send>> {
        let q = self.0.clone();
        Some(Box::new(move || {
            q.tick();
        }))
    }
}

/// Postfix-style: one file per message, tmp → fsync → rename → fsync(dir).
struct SpoolPeer {
    dir: PathBuf,
    syncs: AtomicU64,
}

fn fsync_dir(d: &Path) {
    std::fs::File::open(d)
        .and_then(|f| f.sync_all())
        .expect("fsync dir");
}

impl Peer for SpoolPeer {
    fn enqueue(&self, i: u64, rcpts: &[String], body: &[u8]) {
        let tmp = self.dir.join("incoming").join(format!("{i:016x}"));
        let dst = self.dir.join("active").join(format!("{i:016x}"));
        let mut f = std::fs::File::create(&tmp).expect("create");
        let mut rec = Vec::with_capacity(body.len() + 256);
        rec.extend_from_slice(b"Slist@sender.example\n");
        for r in rcpts {
            rec.push(b'R'); // 'R' pending, 'D' done: rewritten in place
            rec.extend_from_slice(r.as_bytes());
            rec.push(b'\n');
        }
        rec.extend_from_slice(b"B\n");
        rec.extend_from_slice(body);
        f.write_all(&rec).expect("write");
        f.sync_data().expect("fsync");
        std::fs::rename(&tmp, &dst).expect("rename");
        fsync_dir(&self.dir.join("active"));
        self.syncs.fetch_add(2, Ordering::Relaxed);
    }
    fn deliver(&self, ids: &[u64]) {
        use std::os::unix::fs::FileExt;
        for &i in ids {
            let p = self.dir.join("active").join(format!("{i:016x}"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .expect("open");
            let mut head = vec![0u8; 512];
            let n = f.read_at(&mut head, 0).expect("read");
            let mut off = 0;
            for line in head[..n].split(|&b| b == b'\n') {
                if line.first() == Some(&b'R') {
                    f.write_at(b"D", off as u64).expect("mark done");
                }
                off += line.len() + 1;
                if line.first() == Some(&b'B') {
                    break;
                }
            }
            drop(f);
            std::fs::remove_file(&p).expect("remove");
        }
    }
    fn syncs(&self) -> Option<u64> {
        Some(self.syncs.load(Ordering::Relaxed))
    }
}

fn spool_pending(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("active"))
        .expect("readdir")
        .flatten()
    {
        let data = std::fs::read(e.path()).expect("read");
        n += data
            .split(|&b| b == b'\n')
            .take_while(|l| l.first() != Some(&b'B'))
            .filter(|l| l.first() == Some(&b'R'))
            .count();
    }
    n
}

#[cfg(feature = "compare")]
mod sqlite_peer {
    use super::*;
    use rusqlite::{params, Connection};

    pub struct SqlitePeer {
        path: PathBuf,
        conns: parking_lot::Mutex<Vec<Connection>>,
    }

    pub fn connect(path: &Path) -> Connection {
        let c = Connection::open(path).expect("sqlite open");
        c.busy_timeout(Duration::from_secs(60)).expect("busy");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.pragma_update(None, "synchronous", "FULL").expect("sync");
        c
    }

    impl SqlitePeer {
        pub fn open(dir: &Path) -> Self {
            let path = dir.join("queue.sqlite");
            let c = connect(&path);
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, sender TEXT, received INTEGER, body BLOB);
                 CREATE TABLE IF NOT EXISTS recipients (msg INTEGER, idx INTEGER, addr TEXT, domain TEXT,
                   state INTEGER, attempts INTEGER, next INTEGER, PRIMARY KEY (msg, idx));
                 CREATE INDEX IF NOT EXISTS rcpt_domain ON recipients (domain, state);",
            )
            .expect("schema");
            SqlitePeer {
                path,
                conns: parking_lot::Mutex::new(vec![c]),
            }
        }
        fn with<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
            let c = self.conns.lock().pop();
            let mut c = c.unwrap_or_else(|| connect(&self.path));
            let r = f(&mut c);
            self.conns.lock().push(c);
            r
        }
    }

    impl Peer for SqlitePeer {
        fn enqueue(&self, i: u64, rcpts: &[String], body: &[u8]) {
            self.with(|c| {
                let tx = c.transaction().expect("tx");
                tx.execute(
                    "INSERT INTO messages (id, sender, received, body) VALUES (?1, ?2, ?3, ?4)",
                    params![i as i64, "list@sender.example", 0i64, body],
                )
                .expect("insert");
                for (k, r) in rcpts.iter().enumerate() {
                    let dom = r.rsplit('@').next().unwrap_or("");
                    tx.execute(
                        "INSERT INTO recipients VALUES (?1, ?2, ?3, ?4, 0, 0, 0)",
                        params![i as i64, k as i64, r, dom],
                    )
                    .expect("insert rcpt");
                }
                tx.commit().expect("commit");
            })
        }
        fn deliver(&self, ids: &[u64]) {
            self.with(|c| {
                for &i in ids {
                    let tx = c.transaction().expect("tx");
                    tx.execute(
                        "UPDATE recipients SET state = 1 WHERE msg = ?1",
                        params![i as i64],
                    )
                    .expect("update");
                    tx.execute("DELETE FROM recipients WHERE msg = ?1", params![i as i64])
                        .expect("delete");
                    tx.execute("DELETE FROM messages WHERE id = ?1", params![i as i64])
                        .expect("delete");
                    tx.commit().expect("commit");
                }
            })
        }
    }

    pub fn pending(dir: &Path) -> usize {
        let c = connect(&dir.join("queue.sqlite"));
        c.query_row("SELECT count(*) FROM recipients WHERE state = 0", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("count") as usize
    }
}

#[cfg(feature = "compare-rocksdb")]
mod rocks_peer {
    use super::*;
    use rocksdb::{WriteBatch, WriteOptions, DB};

    pub struct RocksPeer(DB);

    pub fn open(dir: &Path) -> RocksPeer {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        RocksPeer(DB::open(&o, dir.join("rocks")).expect("rocksdb open"))
    }

    fn sync() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }

    impl Peer for RocksPeer {
        fn enqueue(&self, i: u64, rcpts: &[String], body: &[u8]) {
            let mut b = WriteBatch::default();
            b.put(format!("m/{i:016x}"), body);
            for (k, r) in rcpts.iter().enumerate() {
                b.put(format!("r/{i:016x}/{k}"), r.as_bytes());
            }
            self.0.write_opt(b, &sync()).expect("write");
        }
        fn deliver(&self, ids: &[u64]) {
            for &i in ids {
                let mut b = WriteBatch::default();
                for k in 0..RCPTS {
                    b.delete(format!("r/{i:016x}/{k}"));
                }
                b.delete(format!("m/{i:016x}"));
                self.0.write_opt(b, &sync()).expect("write");
            }
        }
    }

    pub fn pending(dir: &Path) -> usize {
        let db = DB::open_default(dir.join("rocks")).expect("reopen");
        db.prefix_iterator(b"r/")
            .take_while(|r| r.as_ref().is_ok_and(|(k, _)| k.starts_with(b"r/")))
            .count()
    }
}

fn open_peer(name: &str, dir: &Path, commits: &Arc<Commits>) -> Box<dyn Peer> {
    match name {
        "mailq" | "mailq-noprealloc" => Box::new(MailqPeer(
            mailq::Queue::open(
                dir,
                mailq::Options {
                    preallocate_segments: name == "mailq",
                    vfs: Arc::new(RecFs(commits.clone())),
                    ..mailq::Options::default()
                },
            )
            .expect("open mailq"),
        )),
        "spool" => {
            std::fs::create_dir_all(dir.join("incoming")).expect("mkdir");
            std::fs::create_dir_all(dir.join("active")).expect("mkdir");
            Box::new(SpoolPeer {
                dir: dir.to_path_buf(),
                syncs: AtomicU64::new(0),
            })
        }
        #[cfg(feature = "compare")]
        "sqlite" => Box::new(sqlite_peer::SqlitePeer::open(dir)),
        #[cfg(feature = "compare-rocksdb")]
        "rocksdb" => Box::new(rocks_peer::open(dir)),
        other => panic!("unknown peer {other} (is its cargo feature enabled?)"),
    }
}

fn reopen_pending(name: &str, dir: &Path) -> usize {
    match name {
        "mailq" | "mailq-noprealloc" => {
            let q = mailq::Queue::open(dir, mailq::Options::default()).expect("reopen");
            let n = q.stats().recipients() as usize;
            drop(q);
            n
        }
        "spool" => spool_pending(dir),
        #[cfg(feature = "compare")]
        "sqlite" => sqlite_peer::pending(dir),
        #[cfg(feature = "compare-rocksdb")]
        "rocksdb" => rocks_peer::pending(dir),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// One measured run (in a child process).

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

fn dir_bytes(d: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let m = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            n += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    n
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mailq-compare-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Raw append + fdatasync of `n` records of `rec` bytes: in batches of
/// `batch` records, or of exactly the byte sizes in `sizes` (mailq's
/// commits, in order) when given.
fn raw_run(n: u64, rec: usize, batch: u64, sizes: &[u64]) -> (f64, u64, Duration, Duration) {
    let d = tmpdir("raw");
    let mut f = std::fs::File::create(d.join("raw.log")).expect("create");
    let plan: Vec<u64> = if sizes.is_empty() {
        let mut v = vec![batch * rec as u64; (n / batch) as usize];
        if !n.is_multiple_of(batch) {
            v.push((n % batch) * rec as u64);
        }
        v
    } else {
        sizes.to_vec()
    };
    let buf = vec![b'r'; plan.iter().copied().max().unwrap_or(0) as usize];
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for &k in &plan {
        let t = Instant::now();
        f.write_all(&buf[..k as usize]).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(f);
    let bytes = dir_bytes(&d);
    let _ = std::fs::remove_dir_all(&d);
    lat.sort();
    (
        n as f64 / secs,
        bytes,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
    )
}

fn child(peer: &str, producers: usize, n: u64, batch: u64, commits: Option<&Path>) {
    let body = vec![b'b'; BODY];
    if peer == "raw" {
        let sizes: Vec<u64> = commits
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.lines().filter_map(|l| l.parse().ok()).collect())
            .unwrap_or_default();
        let mut p = Vec::new();
        let r = rcpts(0);
        let pairs: Vec<(&str, &str)> = r.iter().map(|a| (a.as_str(), "d.example")).collect();
        mailq::sim::record::encode_message(&mut p, 1, 0, "list@sender.example", b"", &pairs, &body);
        let rec = mailq::sim::record::padded(mailq::sim::record::HEADER_LEN + p.len());
        let (tput, bytes, p50, p99) = raw_run(n, rec, batch.max(1), &sizes);
        let commits = if sizes.is_empty() {
            n.div_ceil(batch.max(1))
        } else {
            sizes.len() as u64
        };
        println!(
            "RESULT peer=raw producers={producers} n={n} tput={tput:.0} p50_us={} p99_us={} disk_per_msg={} deliver_tput=0 reopen_ms=0 pending=0 rss_kb={} syncs={}",
            p50.as_micros(),
            p99.as_micros(),
            bytes / n,
            status_kb("VmHWM:"),
            commits,
        );
        return;
    }
    let d = tmpdir(peer);
    let rec = Arc::new(Commits::default());
    let p: Arc<dyn Peer> = Arc::from(open_peer(peer, &d, &rec));
    rec.on.store(true, Ordering::Relaxed);
    // An MTA's event loop: `tick` on the queue's wake-ups (here every 5 ms).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = p.ticker().map(|tick| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tick();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    });
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..producers)
        .map(|_| {
            let (p, next, body) = (p.clone(), next.clone(), body.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = rcpts(i);
                    let t = Instant::now();
                    p.enqueue(i, &r, &body);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("producer"))
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    rec.on.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        t.join().expect("ticker");
    }
    if let Some(path) = commits {
        let sizes = rec.sizes.lock();
        let text: String = sizes.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(path, text).expect("write commit sizes");
    }
    let syncs = p.syncs().unwrap_or(0);
    lat.sort();
    let disk = dir_bytes(&d);
    let rss = status_kb("VmHWM:");
    // Mark everything delivered, with the same number of threads.
    let ids: Vec<u64> = (0..n).collect();
    let t1 = Instant::now();
    let per = ids.len().div_ceil(producers);
    std::thread::scope(|s| {
        for chunk in ids.chunks(per.max(1)) {
            let p = p.clone();
            s.spawn(move || p.deliver(chunk));
        }
    });
    let deliver_secs = t1.elapsed().as_secs_f64();
    drop(p);
    let t2 = Instant::now();
    let pending = reopen_pending(peer, &d);
    let reopen = t2.elapsed();
    let _ = std::fs::remove_dir_all(&d);
    println!(
        "RESULT peer={peer} producers={producers} n={n} tput={:.0} p50_us={} p99_us={} disk_per_msg={} deliver_tput={:.0} reopen_ms={:.1} pending={pending} rss_kb={rss} syncs={syncs}",
        n as f64 / secs,
        lat[lat.len() / 2].as_micros(),
        lat[lat.len() * 99 / 100].as_micros(),
        disk / n,
        n as f64 / deliver_secs,
        reopen.as_secs_f64() * 1000.0,
    );
}

// ---------------------------------------------------------------------------
// The driver.

#[derive(Debug, Clone, Default)]
struct R {
    peer: String,
    producers: usize,
    tput: f64,
    p50: f64,
    p99: f64,
    disk: f64,
    deliver: f64,
    reopen: f64,
    pending: f64,
    rss: f64,
    syncs: f64,
    n: f64,
}

fn parse(line: &str) -> Option<R> {
    let rest = line.strip_prefix("RESULT ")?;
    let mut r = R::default();
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let f = v.parse::<f64>().unwrap_or(0.0);
        match k {
            "peer" => r.peer = v.to_string(),
            "producers" => r.producers = f as usize,
            "n" => r.n = f,
            "tput" => r.tput = f,
            "p50_us" => r.p50 = f,
            "p99_us" => r.p99 = f,
            "disk_per_msg" => r.disk = f,
            "deliver_tput" => r.deliver = f,
            "reopen_ms" => r.reopen = f,
            "pending" => r.pending = f,
            "rss_kb" => r.rss = f,
            "syncs" => r.syncs = f,
            _ => {}
        }
    }
    Some(r)
}

fn run_child(args: &[String], strace: Option<&Path>) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let out = match strace {
        Some(log) => Command::new("strace")
            .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(log)
            .arg(&exe)
            .args(args)
            .output()
            .ok()?,
        None => Command::new(&exe).args(args).output().ok()?,
    };
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
        .map(str::to_string)
}

fn strace_syncs(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut n = 0.0;
    for l in text.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols
            .last()
            .is_some_and(|c| *c == "fsync" || *c == "fdatasync")
            && cols.len() >= 5
        {
            n += cols[3].parse::<f64>().unwrap_or(0.0);
        }
    }
    Some(n)
}

fn svg(results: &[R], peers: &[&str], producers: &[usize]) -> String {
    let (w, h, l, b) = (760.0, 440.0, 80.0, 60.0);
    let max = results.iter().map(|r| r.tput).fold(1.0, f64::max) * 1.1;
    let x = |i: usize| l + (w - l - 160.0) * i as f64 / (producers.len() - 1).max(1) as f64;
    let y = |v: f64| h - b - (h - b - 30.0) * v / max;
    let colors = [
        "#444444", "#d62728", "#8c564b", "#1f77b4", "#2ca02c", "#9467bd",
    ];
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{}' y='18' font-size='14'>Durable enqueue, 4 KiB body, 3 recipients (messages/s)</text>\n",
        l
    );
    s += &format!(
        "<line x1='{l}' y1='{}' x2='{}' y2='{}' stroke='black'/>\n",
        h - b,
        w - 160.0,
        h - b
    );
    s += &format!(
        "<line x1='{l}' y1='30' x2='{l}' y2='{}' stroke='black'/>\n",
        h - b
    );
    for k in 0..=5 {
        let v = max * k as f64 / 5.0;
        s += &format!(
            "<text x='{}' y='{}' text-anchor='end'>{:.0}</text>\n",
            l - 6.0,
            y(v) + 4.0,
            v
        );
        s += &format!(
            "<line x1='{l}' y1='{0}' x2='{1}' y2='{0}' stroke='#eeeeee'/>\n",
            y(v),
            w - 160.0
        );
    }
    for (i, p) in producers.iter().enumerate() {
        s += &format!(
            "<text x='{}' y='{}' text-anchor='middle'>{p}</text>\n",
            x(i),
            h - b + 18.0
        );
    }
    s += &format!(
        "<text x='{}' y='{}' text-anchor='middle'>producers</text>\n",
        (l + w - 160.0) / 2.0,
        h - 16.0
    );
    for (pi, peer) in peers.iter().enumerate() {
        let c = colors[pi % colors.len()];
        let pts: Vec<String> = producers
            .iter()
            .enumerate()
            .filter_map(|(i, pr)| {
                results
                    .iter()
                    .find(|r| r.peer == *peer && r.producers == *pr)
                    .map(|r| format!("{:.1},{:.1}", x(i), y(r.tput)))
            })
            .collect();
        s += &format!(
            "<polyline fill='none' stroke='{c}' stroke-width='2' points='{}'/>\n",
            pts.join(" ")
        );
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            s += &format!("<circle cx='{px}' cy='{py}' r='3' fill='{c}'/>\n");
        }
        s += &format!(
            "<text x='{}' y='{}' fill='{c}'>{peer}</text>\n",
            w - 150.0,
            40.0 + 18.0 * pi as f64
        );
    }
    s + "</svg>\n"
}

fn memory_mode() {
    for &rcpts_total in &[1_000_000u64, 10_000_000] {
        let msgs = rcpts_total / 3;
        let d = std::env::temp_dir().join(format!("mailq-compare-mem-{rcpts_total}"));
        let _ = std::fs::remove_dir_all(&d);
        let build = run_child(
            &["--build".into(), d.display().to_string(), msgs.to_string()],
            None,
        );
        let open = run_child(&["--open".into(), d.display().to_string()], None);
        let _ = std::fs::remove_file(d.join("checkpoint"));
        let replay = run_child(&["--open".into(), d.display().to_string()], None);
        println!("{rcpts_total} recipients / {msgs} messages:");
        println!("  build:  {}", build.unwrap_or_default());
        println!("  reopen from checkpoint: {}", open.unwrap_or_default());
        println!(
            "  reopen without checkpoint: {}",
            replay.unwrap_or_default()
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

fn build_child(dir: &Path, msgs: u64) {
    let before = status_kb("VmRSS:");
    let q = mailq::Queue::open(dir, mailq::Options::default()).expect("open");
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..32 {
            let (q, next) = (q.clone(), next.clone());
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= msgs {
                    break;
                }
                q.enqueue(&mailq::NewMessage {
                    sender: "s@x.example",
                    recipients: rcpts(i).into_iter().map(mailq::Recipient::new).collect(),
                    meta: b"",
                    body: b"tiny body",
                })
                .expect("enqueue");
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let st = q.stats();
    let rss = status_kb("VmRSS:").saturating_sub(before) * 1024;
    println!(
        "RESULT built {} recipients in {:.1} s ({:.0} msg/s); index {:.1} B/recipient; RSS growth {:.1} B/recipient (includes allocator caches)",
        st.recipients(),
        secs,
        msgs as f64 / secs,
        q.memory_usage() as f64 / st.recipients() as f64,
        rss as f64 / st.recipients() as f64
    );
    q.close().expect("close");
}

fn open_child(dir: &Path) {
    let before = status_kb("VmRSS:");
    let t0 = Instant::now();
    let q = mailq::Queue::open(dir, mailq::Options::default()).expect("open");
    let secs = t0.elapsed().as_secs_f64();
    let st = q.stats();
    let rss = status_kb("VmRSS:").saturating_sub(before) * 1024;
    println!(
        "RESULT opened in {:.3} s (checkpoint used: {}); RSS after open {:.1} B/recipient for {} recipients; index {:.1} B/recipient",
        secs,
        q.recovery_report().checkpoint_used,
        rss as f64 / st.recipients() as f64,
        st.recipients(),
        q.memory_usage() as f64 / st.recipients() as f64
    );
    std::mem::forget(q); // measure only; no checkpoint on the way out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child") => {
            let peer = &args[1];
            let producers: usize = args[2].parse().expect("producers");
            let n: u64 = args[3].parse().expect("n");
            let batch: u64 = args.get(4).and_then(|b| b.parse().ok()).unwrap_or(1);
            let commits = args.get(5).map(Path::new);
            return child(peer, producers, n, batch, commits);
        }
        Some("--build") => return build_child(Path::new(&args[1]), args[2].parse().expect("msgs")),
        Some("--open") => return open_child(Path::new(&args[1])),
        Some("--memory") => return memory_mode(),
        _ => {}
    }
    let scale: f64 = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let list = |flag: &str| -> Option<Vec<String>> {
        let i = args.iter().position(|a| a == flag)?;
        Some(args.get(i + 1)?.split(',').map(str::to_string).collect())
    };
    let producers: Vec<usize> = list("--producers")
        .map(|v| v.iter().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 32]);
    let mut peers = vec!["mailq", "raw", "mailq-noprealloc", "spool"];
    if cfg!(feature = "compare") {
        peers.push("sqlite");
    }
    if cfg!(feature = "compare-rocksdb") {
        peers.push("rocksdb");
    }
    if let Some(only) = list("--peers") {
        // mailq runs first: raw replays its commits.
        peers.retain(|p| *p == "mailq" || only.iter().any(|o| o == p));
    }
    let have_strace = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut results: Vec<R> = Vec::new();
    for &p in &producers {
        let n = ((2000.0 * p.max(1) as f64).min(40_000.0) * scale) as u64;
        let mut mailq_batch = 1;
        let commits =
            std::env::temp_dir().join(format!("mailq-compare-commits-{}-{p}", std::process::id()));
        for peer in &peers {
            let mut a = vec![
                "--child".to_string(),
                peer.to_string(),
                p.to_string(),
                n.to_string(),
            ];
            if *peer == "raw" || *peer == "mailq" {
                // mailq writes the sizes of its commits there; raw replays them.
                a.push(mailq_batch.to_string());
                a.push(commits.display().to_string());
            }
            eprint!("{peer:>7} × {p:>2} producers, {n} messages … ");
            let Some(line) = run_child(&a, None) else {
                continue;
            };
            let Some(mut r) = parse(&line) else { continue };
            if *peer == "mailq" {
                // Batch size mailq's group commit reached: messages per data fsync.
                mailq_batch = ((r.n / r.syncs.max(1.0)).round() as u64).max(1);
            }
            if r.syncs == 0.0 && have_strace {
                let log = std::env::temp_dir()
                    .join(format!("mailq-compare-strace-{}", std::process::id()));
                if run_child(&a, Some(&log)).is_some() {
                    r.syncs = strace_syncs(&log).unwrap_or(0.0);
                }
                let _ = std::fs::remove_file(&log);
            }
            eprintln!("{:.0} msg/s", r.tput);
            results.push(r);
        }
        let _ = std::fs::remove_file(&commits);
    }
    // Report.
    let mut out = String::new();
    out += "| peer | producers | enqueue msg/s | p50 µs | p99 µs | fsyncs/msg | disk B/msg | mark-delivered msg/s | reopen+list ms | pending after | peak RSS MB | mailq ÷ peer |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for &p in &producers {
        let m = results
            .iter()
            .find(|r| r.peer == "mailq" && r.producers == p)
            .map(|r| r.tput);
        for r in results.iter().filter(|r| r.producers == p) {
            let ratio = match m {
                Some(m) if r.peer != "mailq" => format!("{:.2}×", m / r.tput),
                _ => "—".into(),
            };
            out += &format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.0} | {} | {} | {:.0} | {:.1} | {} |\n",
                r.peer,
                r.producers,
                r.tput,
                r.p50,
                r.p99,
                r.syncs / r.n.max(1.0),
                r.disk,
                if r.peer == "raw" { "—".into() } else { format!("{:.0}", r.deliver) },
                if r.peer == "raw" { "—".into() } else { format!("{:.1}", r.reopen) },
                r.pending,
                r.rss / 1024.0,
                ratio
            );
        }
    }
    println!("{out}");
    if list("--peers").is_some() || list("--producers").is_some() {
        return; // a partial run does not replace the plot
    }
    let plot = svg(&results, &peers, &producers);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join("bench-enqueue.svg");
    match std::fs::write(&path, plot) {
        Ok(()) => println!("plot written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
