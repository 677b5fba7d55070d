#![allow(dead_code)]
use mailq::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "mailq-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const T0: u64 = 1_700_000_000;

pub fn opts(clock: &Arc<ManualClock>) -> Options {
    Options {
        clock: clock.clone(),
        ..Options::default()
    }
}

pub fn msg<'a>(sender: &'a str, rcpts: &[&str], body: &'a [u8]) -> NewMessage<'a> {
    NewMessage {
        sender,
        recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
        meta: b"",
        body,
    }
}

/// Three messages an hour apart: a newsletter to gmail and yahoo, a receipt
/// to gmail, and a DSN (null sender) to a corporate domain.
pub fn three_messages(
    dir: &TempDir,
    clock: &std::sync::Arc<ManualClock>,
) -> (Queue, [MessageId; 3]) {
    let q = Queue::open(dir.path(), opts(clock)).unwrap();
    let a = q
        .enqueue(&msg(
            "news@shop.example",
            &["ann@gmail.com", "bob@yahoo.com"],
            b"x",
        ))
        .unwrap();
    clock.advance(3600);
    let b = q
        .enqueue(&msg("billing@shop.example", &["cat@GMAIL.com"], b"y"))
        .unwrap();
    clock.advance(3600);
    let c = q
        .enqueue(&msg("", &["postmaster@corp.example"], b"z"))
        .unwrap();
    (q, [a, b, c])
}

/// Delivers everything ready with `f` choosing outcomes; returns deliveries made.
pub fn drain(q: &Queue, mut f: impl FnMut(&str, &str) -> Outcome) -> usize {
    let mut n = 0;
    while let Some(mut s) = q.next_session().unwrap() {
        while let Some(d) = s.next_delivery().unwrap() {
            let outs: Vec<Outcome> = d
                .recipients()
                .iter()
                .map(|r| f(d.routing_key(), r))
                .collect();
            n += outs.len();
            d.complete(&outs).unwrap();
        }
    }
    n
}

/// Completes everything queued for `key` with `o`; returns the messages.
pub fn deliver_key(q: &Queue, key: &str, o: Outcome) -> Vec<MessageId> {
    let mut ids = Vec::new();
    while let Some(mut s) = q.session_for(key).unwrap() {
        let mut any = false;
        while let Some(d) = s.next_delivery().unwrap() {
            any = true;
            ids.push(d.id());
            let n = d.recipients().len();
            d.complete(&vec![o.clone(); n]).unwrap();
        }
        s.finish().unwrap();
        if !any {
            break;
        }
    }
    ids
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// A filesystem that runs a hook inside one chosen operation of the simulated
/// filesystem: a queue call made *during* another call's I/O (a checkpoint's
/// rename, a segment unlink, a segment open), so interleavings that need two
/// threads are reachable from one. The hook runs once, before the operation.
pub mod hookfs {
    use mailq::sim::SimFs;
    use mailq::{VFile, Vfs};
    use parking_lot::Mutex;
    use std::io;
    use std::path::Path;
    use std::sync::Arc;

    /// Which operation fires the hook.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum On {
        Open,
        Rename,
        Remove,
        /// A write to an open file (e.g. a checkpoint's piece after each
        /// shard: between its position and its last shard).
        Write,
    }

    type Hook = Box<dyn FnOnce() + Send>;

    #[derive(Clone)]
    pub struct HookFs {
        pub fs: SimFs,
        hook: Arc<Mutex<Option<(On, String, Hook)>>>,
    }

    impl HookFs {
        pub fn new(fs: SimFs) -> Self {
            HookFs {
                fs,
                hook: Arc::new(Mutex::new(None)),
            }
        }
        pub fn vfs(&self) -> Arc<dyn Vfs> {
            Arc::new(self.clone())
        }
        /// Runs `f` at the next `on` operation whose path contains `needle`.
        pub fn arm(&self, on: On, needle: &str, f: impl FnOnce() + Send + 'static) {
            *self.hook.lock() = Some((on, needle.to_string(), Box::new(f)));
        }
        pub fn armed(&self) -> bool {
            self.hook.lock().is_some()
        }
        pub fn disarm(&self) {
            *self.hook.lock() = None;
        }
        fn fire(&self, on: On, path: &Path) {
            let f = {
                let mut g = self.hook.lock();
                match &*g {
                    Some((o, n, _)) if *o == on && path.to_string_lossy().contains(n.as_str()) => {
                        g.take().map(|h| h.2)
                    }
                    _ => None,
                }
            };
            if let Some(f) = f {
                f();
            }
        }
    }

    /// A file of a [`HookFs`]: its writes may fire the hook.
    struct HookFile {
        inner: Arc<dyn VFile>,
        hfs: HookFs,
        path: std::path::PathBuf,
    }

    impl VFile for HookFile {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
            self.inner.read_exact_at(off, buf)
        }
        fn write_all_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
            self.hfs.fire(On::Write, &self.path);
            self.inner.write_all_at(off, buf)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.inner.sync_data()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
            self.inner.raw_fd()
        }
    }

    impl Vfs for HookFs {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.fs.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.fs.list(dir)
        }
        fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VFile>> {
            self.fire(On::Open, path);
            let inner = self.fs.open(path, create)?;
            Ok(Arc::new(HookFile {
                inner,
                hfs: self.clone(),
                path: path.to_path_buf(),
            }))
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.fire(On::Rename, to);
            self.fs.rename(from, to)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            self.fire(On::Remove, path);
            self.fs.remove(path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.fs.sync_dir(dir)
        }
        fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
            self.fs.lock_dir(dir)
        }
        fn network_fs(&self, dir: &Path) -> io::Result<Option<String>> {
            self.fs.network_fs(dir)
        }
    }
}
