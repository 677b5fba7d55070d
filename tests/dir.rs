//! The queue directory itself: its lock cannot be bypassed by deleting a file,
//! a newly created directory is durable before anything is acknowledged in it,
//! and a network filesystem is refused before anything is created.
mod common;
use common::*;
use mailq::sim::{CrashMode, SimFs};
use mailq::*;
use mailq::{VFile, Vfs};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// The lock tests run one at a time: a child spawned by one test shares every
/// descriptor of this process between fork and exec, lock included.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn deleting_the_lock_file_does_not_let_a_second_owner_in() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = TempDir::new("lock-unlinked");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    let _ = std::fs::remove_file(d.path().join("LOCK"));
    match Queue::open(d.path(), Options::default()) {
        Err(Error::Locked(p)) => assert_eq!(p, d.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(q);
    Queue::open(d.path(), Options::default()).unwrap();
}

#[test]
fn another_process_cannot_lock_an_open_queue_directory() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = TempDir::new("lock-process");
    let q = Queue::open(d.path(), Options::default()).unwrap();
    let flock = |dir: &Path| {
        std::process::Command::new("flock")
            .arg("-n")
            .arg(dir)
            .arg("true")
            .status()
    };
    let held = match flock(d.path()) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("flock(1) not installed; only the in-process lock is checked");
            drop(q);
            return;
        }
        Err(e) => panic!("running flock(1): {e}"),
    };
    assert!(!held.success(), "flock(1) got the queue directory: {held}");
    drop(q);
    assert!(flock(d.path()).unwrap().success());
}

fn sim_opts(fs: &SimFs, clock: &Arc<ManualClock>) -> Options {
    Options {
        vfs: fs.vfs(),
        ..opts(clock)
    }
}

#[test]
fn new_queue_directory_survives_a_crash() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let dir = Path::new("/a/q");
    let q = Queue::open(dir, sim_opts(&fs, &clock)).unwrap();
    let id = q.enqueue(&msg("", &["r@x.example"], b"acked")).unwrap();
    drop(q);
    fs.restart(CrashMode::LoseUnsynced, 1);
    let q = Queue::open(dir, sim_opts(&fs, &clock)).unwrap();
    let info = q
        .inspect(id)
        .expect("acknowledged message lost with its directory");
    assert_eq!(info.recipients.len(), 1);
    assert_eq!(q.stats().messages, 1);
}

/// SimFs, but every path is on NFS.
struct NfsEverywhere(SimFs, &'static str);

impl Vfs for NfsEverywhere {
    fn create_dir_all(&self, d: &Path) -> io::Result<()> {
        self.0.create_dir_all(d)
    }
    fn list(&self, d: &Path) -> io::Result<Vec<String>> {
        self.0.list(d)
    }
    fn open(&self, p: &Path, c: bool) -> io::Result<Arc<dyn VFile>> {
        self.0.open(p, c)
    }
    fn rename(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.0.rename(a, b)
    }
    fn remove(&self, p: &Path) -> io::Result<()> {
        self.0.remove(p)
    }
    fn sync_dir(&self, d: &Path) -> io::Result<()> {
        self.0.sync_dir(d)
    }
    fn lock_dir(&self, d: &Path) -> io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        self.0.lock_dir(d)
    }
    fn network_fs(&self, d: &Path) -> io::Result<Option<String>> {
        Ok(d.starts_with(self.1).then(|| "NFS".to_string()))
    }
    // dir_exists: the trait's default (through `list`).
}

#[test]
fn network_filesystem_is_refused_before_the_directory_is_created() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let nfs = |allow| Options {
        vfs: Arc::new(NfsEverywhere(fs.clone(), "/")),
        allow_network_fs: allow,
        ..opts(&clock)
    };
    match Queue::open("/x/new", nfs(false)) {
        Err(Error::NetworkFilesystem { path, fs }) => {
            assert_eq!(path, Path::new("/x/new"));
            assert_eq!(fs, "NFS");
        }
        other => panic!("expected NetworkFilesystem, got {other:?}"),
    }
    assert!(
        !fs.dir_exists(Path::new("/x")).unwrap(),
        "created before the check"
    );
    assert!(!fs.dir_exists(Path::new("/x/new")).unwrap());
    // Allowed, it is created.
    drop(Queue::open("/x/new", nfs(true)).unwrap());
    assert!(fs.dir_exists(Path::new("/x/new")).unwrap());
}

#[test]
fn network_check_uses_the_nearest_existing_ancestor() {
    let fs = SimFs::new();
    fs.put(Path::new("/mnt/nfs/marker"), Vec::new());
    let clock = ManualClock::new(T0);
    let o = || Options {
        vfs: Arc::new(NfsEverywhere(fs.clone(), "/mnt/nfs")),
        ..opts(&clock)
    };
    assert!(matches!(
        Queue::open("/mnt/nfs/spool/q", o()),
        Err(Error::NetworkFilesystem { .. })
    ));
    assert!(!fs.dir_exists(Path::new("/mnt/nfs/spool")).unwrap());
    // Elsewhere on the same (simulated) machine, a local directory is fine.
    drop(Queue::open("/mnt/local/q", o()).unwrap());
    assert!(fs.dir_exists(Path::new("/mnt/local/q")).unwrap());
}
