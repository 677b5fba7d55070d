//! Storage failures through the `Vfs` seam: a failed fsync or a full disk poisons
//! the queue (typed error, nothing acknowledged, writes refused until reopen),
//! and a network filesystem is refused unless allowed.
mod common;
use common::*;
use mailq::*;
use mailq::{OsFs, VFile, Vfs};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Faults {
    fail_sync: AtomicBool,
    enospc: AtomicBool,
    syncs: AtomicUsize,
    nfs: AtomicBool,
    checkpoint_enospc: AtomicBool,
}

struct FaultyFs(Arc<Faults>);
struct FaultyFile(Arc<dyn VFile>, Arc<Faults>, bool);

impl Vfs for FaultyFs {
    fn create_dir_all(&self, d: &Path) -> io::Result<()> {
        OsFs.create_dir_all(d)
    }
    fn list(&self, d: &Path) -> io::Result<Vec<String>> {
        OsFs.list(d)
    }
    fn open(&self, p: &Path, c: bool) -> io::Result<Arc<dyn VFile>> {
        let ckpt = p.ends_with("checkpoint.tmp");
        Ok(Arc::new(FaultyFile(OsFs.open(p, c)?, self.0.clone(), ckpt)))
    }
    fn rename(&self, a: &Path, b: &Path) -> io::Result<()> {
        OsFs.rename(a, b)
    }
    fn remove(&self, p: &Path) -> io::Result<()> {
        OsFs.remove(p)
    }
    fn sync_dir(&self, d: &Path) -> io::Result<()> {
        OsFs.sync_dir(d)
    }
    fn lock_dir(&self, d: &Path) -> io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        OsFs.lock_dir(d)
    }
    fn network_fs(&self, d: &Path) -> io::Result<Option<String>> {
        if self.0.nfs.load(Ordering::SeqCst) {
            return Ok(Some("NFS".into()));
        }
        OsFs.network_fs(d)
    }
}

impl VFile for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read_exact_at(&self, o: u64, b: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(o, b)
    }
    fn write_all_at(&self, o: u64, b: &[u8]) -> io::Result<()> {
        if self.2 && self.1.checkpoint_enospc.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28));
        }
        if self.1.enospc.load(Ordering::SeqCst) {
            // A partial write, then ENOSPC.
            self.0.write_all_at(o, &b[..b.len() / 2])?;
            return Err(io::Error::from_raw_os_error(28));
        }
        self.0.write_all_at(o, b)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.1.syncs.fetch_add(1, Ordering::SeqCst);
        if self.1.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.0.sync_data()
    }
    fn set_len(&self, l: u64) -> io::Result<()> {
        self.0.set_len(l)
    }
}

fn faulty(f: &Arc<Faults>, clock: &Arc<ManualClock>) -> Options {
    Options {
        vfs: Arc::new(FaultyFs(f.clone())),
        ..opts(clock)
    }
}

#[test]
fn failed_fsync_poisons_until_reopen_and_loses_nothing_acknowledged() {
    let d = TempDir::new("eio");
    let clock = ManualClock::new(T0);
    let f = Arc::new(Faults::default());
    let q = Queue::open(d.path(), faulty(&f, &clock)).unwrap();
    let ok: Vec<MessageId> = (0..10)
        .map(|i| {
            q.enqueue(&msg("", &[&format!("u{i}@x.com")], b"acked"))
                .unwrap()
        })
        .collect();
    f.fail_sync.store(true, Ordering::SeqCst);
    let e = q
        .enqueue(&msg("", &["lost@x.com"], b"not acked"))
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    f.fail_sync.store(false, Ordering::SeqCst);
    let syncs = f.syncs.load(Ordering::SeqCst);
    // Refused from now on, and fsync is never retried.
    assert!(matches!(
        q.enqueue(&msg("", &["b@x.com"], b"m")),
        Err(Error::Poisoned(_))
    ));
    assert!(matches!(q.next_session(), Err(Error::Poisoned(_))));
    assert!(matches!(q.sync(), Err(Error::Poisoned(_))));
    assert_eq!(f.syncs.load(Ordering::SeqCst), syncs, "no fsync retry");
    assert!(q.stats().poisoned.is_some());
    assert!(q.stats().prometheus().contains("mailq_poisoned 1"));
    drop(q);
    let q = Queue::open(d.path(), faulty(&f, &clock)).unwrap();
    let listed: Vec<MessageId> = q.list(100).iter().map(|m| m.id).collect();
    for id in &ok {
        assert!(listed.contains(id), "acknowledged message {id} lost");
    }
    assert!(
        listed.len() <= 11,
        "at most the unacknowledged one reappears"
    );
    q.enqueue(&msg("", &["after@x.com"], b"works again"))
        .unwrap();
}

#[test]
fn full_disk_is_a_typed_error_and_queue_recovers_after_reopen() {
    let d = TempDir::new("enospc");
    let clock = ManualClock::new(T0);
    let f = Arc::new(Faults::default());
    let q = Queue::open(d.path(), faulty(&f, &clock)).unwrap();
    let a = q.enqueue(&msg("", &["a@x.com"], b"before")).unwrap();
    f.enospc.store(true, Ordering::SeqCst);
    let e = q
        .enqueue(&msg("", &["b@x.com"], &[7u8; 10_000]))
        .unwrap_err();
    assert!(matches!(e, Error::DiskFull(_)), "{e}");
    assert!(e.to_string().contains("free space"));
    assert!(matches!(
        q.enqueue(&msg("", &["c@x.com"], b"m")),
        Err(Error::Poisoned(_))
    ));
    drop(q);
    f.enospc.store(false, Ordering::SeqCst);
    let q = Queue::open(d.path(), faulty(&f, &clock)).unwrap();
    let rep = q.recovery_report();
    assert!(rep.torn_tail_bytes > 0, "the half-written record was cut");
    assert_eq!(rep.corrupt_count(), 0);
    assert_eq!(q.list(10).iter().map(|m| m.id).collect::<Vec<_>>(), vec![a]);
    q.enqueue(&msg("", &["d@x.com"], b"space again")).unwrap();
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 2);
}

#[test]
fn network_filesystem_is_refused_unless_allowed() {
    let d = TempDir::new("nfs");
    let f = Arc::new(Faults::default());
    f.nfs.store(true, Ordering::SeqCst);
    let clock = ManualClock::new(T0);
    match Queue::open(d.path(), faulty(&f, &clock)) {
        Err(Error::NetworkFilesystem { fs, .. }) => assert_eq!(fs, "NFS"),
        other => panic!("expected NetworkFilesystem, got {other:?}"),
    }
    let q = Queue::open(
        d.path(),
        Options {
            allow_network_fs: true,
            ..faulty(&f, &clock)
        },
    )
    .unwrap();
    q.enqueue(&msg("", &["a@x.com"], b"m")).unwrap();
}

/// A checkpoint that cannot be written (the disk fills up with the big file while
/// small log appends still fit) must not turn accepted mail into errors.
#[test]
fn failed_automatic_checkpoint_does_not_fail_enqueue() {
    let d = TempDir::new("ckpt-enospc");
    let clock = ManualClock::new(T0);
    let f = Arc::new(Faults::default());
    let o = || Options {
        checkpoint_bytes: 8 * 1024,
        ..faulty(&f, &clock)
    };
    let q = Queue::open(d.path(), o()).unwrap();
    f.checkpoint_enospc.store(true, Ordering::SeqCst);
    for i in 0..50 {
        q.enqueue(&msg("", &[&format!("u{i}@x.com")], &[b'z'; 1000]))
            .expect("accepted mail is not an error");
    }
    let st = maintenance_failed_on_a_full_disk(&q);
    assert!(st.poisoned.is_none(), "the log itself is fine");
    f.checkpoint_enospc.store(false, Ordering::SeqCst);
    for i in 0..20 {
        q.enqueue(&msg("", &[&format!("v{i}@x.com")], &[b'z'; 1000]))
            .unwrap();
    }
    assert!(q.stats().maintenance_error.is_none());
    drop(q);
    let q = Queue::open(d.path(), o()).unwrap();
    assert_eq!(q.stats().messages, 70);
}

/// The checkpoint a replay calls for, when it fails (disk full), is not
/// tried again at every tick but a minute later; and a handle dropped
/// before any maintenance ran (a short-lived tool) still writes it.
#[test]
fn a_failed_rebuilt_checkpoint_is_retried_a_minute_later_and_a_drop_writes_it() {
    let d = TempDir::new("rebuilt-enospc");
    let clock = ManualClock::new(T0);
    let f = Arc::new(Faults::default());
    let o = || Options {
        checkpoint_bytes: u64::MAX,
        ..faulty(&f, &clock)
    };
    let ck = d.path().join("checkpoint");
    {
        // More than 1 MiB of log, and no checkpoint.
        let q = Queue::open(d.path(), o()).unwrap();
        for i in 0..1500 {
            q.enqueue(&msg("", &[&format!("u{i}@x.com")], &[b'z'; 1000]))
                .unwrap();
        }
    }
    assert!(!ck.exists());
    f.checkpoint_enospc.store(true, Ordering::SeqCst);
    let q = Queue::open(d.path(), o()).unwrap();
    assert!(!q.recovery_report().checkpoint_used);
    q.tick();
    let st = maintenance_failed_on_a_full_disk(&q);
    assert_eq!(st.checkpoints, 0);
    f.checkpoint_enospc.store(false, Ordering::SeqCst);
    q.tick();
    assert_eq!(q.stats().checkpoints, 0, "not retried at every tick");
    clock.advance(61);
    q.tick();
    assert_eq!(q.stats().checkpoints, 1, "retried a minute later");
    assert!(q.stats().maintenance_error.is_none());
    drop(q);
    let q = Queue::open(d.path(), o()).unwrap();
    assert!(q.recovery_report().checkpoint_used);
    drop(q);
    // Dropped before any maintenance ran: the drop writes it.
    std::fs::remove_file(&ck).unwrap();
    let q = Queue::open(d.path(), o()).unwrap();
    assert!(!q.recovery_report().checkpoint_used);
    assert!(!ck.exists());
    drop(q);
    assert!(ck.exists());
    let q = Queue::open(d.path(), o()).unwrap();
    assert!(q.recovery_report().checkpoint_used);
    assert_eq!(q.stats().messages, 1500);
}

/// The queue's stats, after checking that its last maintenance failed on a
/// full disk.
fn maintenance_failed_on_a_full_disk(q: &Queue) -> Stats {
    let st = q.stats();
    let err = st.maintenance_error.as_deref().unwrap_or("");
    assert!(err.contains("disk full"), "{:?}", st.maintenance_error);
    st
}
