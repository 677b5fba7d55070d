//! A simulated filesystem for fault injection (tests, fuzzing, and MTAs that
//! want to test their own crash handling against mailq).
//! Depends on `storage::vfs` (the seam).
//!
//! It keeps what the process has written apart from what is durable:
//! file contents become durable at `sync_data`, directory entries (creations,
//! renames, removals, and new subdirectories) at `sync_dir` of the directory
//! holding them. A directory whose own entry was never made durable is lost in
//! a crash together with everything in it, as on a real filesystem. It can
//! - crash after any operation (`crash_after`): that operation and every later
//!   one fail, as if the process died there;
//! - compute the state a machine would find after such a crash
//!   ([`SimFs::restart`]): unsynced writes lost, kept, torn at a 512-byte
//!   boundary, or applied in a shuffled subset (reordering);
//! - fail one chosen operation with ENOSPC or EIO (`fail_at`) without crashing.
//!
//! ```
//! use mailq::sim::{SimFs, CrashMode};
//! use mailq::{Options, Queue, NewMessage};
//! let fs = SimFs::new();
//! let opts = || Options { vfs: fs.vfs(), ..Options::default() };
//! let q = Queue::open("/q", opts()).unwrap();
//! let id = q.enqueue(&NewMessage { recipients: vec!["a@b.example".into()], body: b"x", ..Default::default() }).unwrap();
//! drop(q);
//! fs.restart(CrashMode::LoseUnsynced, 1);
//! let q = Queue::open("/q", opts()).unwrap();
//! assert_eq!(q.inspect(id).unwrap().recipients.len(), 1);
//! ```

use crate::storage::vfs::{VFile, Vfs};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What happens to writes that were not yet synced when the machine crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    LoseUnsynced,
    /// Every unsynced write survived.
    KeepUnsynced,
    /// A prefix of the unsynced writes survived, the last of them torn at a
    /// 512-byte boundary.
    TornTail,
    /// A random subset of the unsynced writes survived (writes reordered).
    Reorder,
}

/// The kind of injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No space left on device (a write keeps half its bytes).
    NoSpace,
    /// I/O error.
    Eio,
}

#[derive(Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync: (offset, bytes).
    pending: Vec<(u64, Vec<u8>)>,
}

#[derive(Default, Clone)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// Directories as the process sees them (the root and `.` always exist).
    dirs: HashSet<PathBuf>,
    /// Directories whose entry in their parent is durable.
    durable_dirs: HashSet<PathBuf>,
    locks: HashSet<PathBuf>,
    ops: u64,
    crash_after: Option<u64>,
    crashed: bool,
    fail_at: Option<(u64, Fault)>,
    generation: u64,
    /// Real time every data sync takes (zero unless a test asks).
    sync_delay: std::time::Duration,
    /// What `free_space` reports (unknown unless a test sets it).
    free_space: Option<u64>,
}

/// The simulated filesystem. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct SimFs {
    st: Arc<Mutex<State>>,
}

struct SimFile {
    fs: SimFs,
    ino: u64,
    generation: u64,
}

struct LockGuard {
    fs: SimFs,
    dir: PathBuf,
    generation: u64,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut st = self.fs.st.lock();
        if st.generation == self.generation {
            st.locks.remove(&self.dir);
        }
    }
}

/// The root (`/`) or the current directory (`.`, or the empty parent of a
/// relative name): always there, never lost.
fn is_root(p: &Path) -> bool {
    p.parent().is_none() || p == Path::new(".")
}

/// Whether `p` is an entry of directory `dir` (the empty parent of a relative
/// name counts as `.`).
fn parent_is(p: &Path, dir: &Path) -> bool {
    match p.parent() {
        Some(parent) if parent == dir => true,
        Some(parent) => parent.as_os_str().is_empty() && dir == Path::new("."),
        None => false,
    }
}

/// `p`'s parent directory (`.` for a relative name).
fn parent_dir(p: &Path) -> Option<&Path> {
    match p.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Some(Path::new(".")),
        other => other,
    }
}

impl State {
    fn is_dir(&self, p: &Path) -> bool {
        is_root(p) || self.dirs.contains(p)
    }

    /// Fails unless the directory that would hold `p` exists.
    fn check_parent(&self, p: &Path) -> io::Result<()> {
        match parent_dir(p) {
            Some(dir) if !self.is_dir(dir) => Err(io::Error::from(io::ErrorKind::NotFound)),
            _ => Ok(()),
        }
    }

    /// Makes `p` and its ancestors directories, durably (for the test helpers).
    fn add_durable_dirs(&mut self, p: &Path) {
        for a in p
            .ancestors()
            .filter(|a| !is_root(a) && !a.as_os_str().is_empty())
        {
            self.dirs.insert(a.to_path_buf());
            self.durable_dirs.insert(a.to_path_buf());
        }
    }

    /// A directory survives a crash when its entry and its ancestors' are durable.
    fn survives(&self, dir: &Path) -> bool {
        dir.ancestors()
            .all(|a| is_root(a) || a.as_os_str().is_empty() || self.durable_dirs.contains(a))
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

/// xorshift for deterministic crash outcomes.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

impl SimFs {
    /// An empty filesystem.
    pub fn new() -> Self {
        SimFs::default()
    }

    /// Sets the free space the filesystem reports (`None`: unknown).
    pub fn set_free_space(&self, bytes: Option<u64>) {
        self.st.lock().free_space = bytes;
    }

    /// An independent copy of this filesystem (same files, same durable state).
    pub fn fork(&self) -> SimFs {
        let st = self.st.lock().clone();
        SimFs {
            st: Arc::new(Mutex::new(st)),
        }
    }

    /// This filesystem as the `Options::vfs` value.
    pub fn vfs(&self) -> Arc<dyn Vfs> {
        Arc::new(self.clone())
    }

    /// Makes every data sync take `d` of real time, as a slow disk would (for
    /// tests of what overlaps an fsync in flight).
    pub fn set_sync_delay(&self, d: std::time::Duration) {
        self.st.lock().sync_delay = d;
    }

    /// Operations performed so far (every `Vfs`/`VFile` call counts one).
    pub fn ops(&self) -> u64 {
        self.st.lock().ops
    }

    /// Crash when operation number `n` (1-based, counting from now on) is attempted.
    pub fn crash_after(&self, n: u64) {
        let mut st = self.st.lock();
        st.crash_after = Some(st.ops + n);
    }

    /// True once the simulated crash happened.
    pub fn crashed(&self) -> bool {
        self.st.lock().crashed
    }

    /// Fail operation number `n` (1-based, from now on) with `fault`.
    pub fn fail_at(&self, n: u64, fault: Fault) {
        let mut st = self.st.lock();
        st.fail_at = Some((st.ops + n, fault));
    }

    /// The machine restarts: the namespace reverts to its last durable state and
    /// each file keeps its durable bytes plus what `mode` says of its unsynced
    /// writes. Old handles stop working; locks are released.
    pub fn restart(&self, mode: CrashMode, seed: u64) {
        let mut st = self.st.lock();
        let mut seed = seed | 1;
        let dirs: HashSet<PathBuf> = st
            .durable_dirs
            .iter()
            .filter(|d| st.survives(d))
            .cloned()
            .collect();
        st.dirs = dirs.clone();
        st.durable_dirs = dirs;
        let names: BTreeMap<PathBuf, u64> = st
            .durable_names
            .iter()
            .filter(|(p, _)| parent_dir(p).is_none_or(|d| st.is_dir(d)))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        st.durable_names = names.clone();
        st.names = names;
        let live: HashSet<u64> = st.names.values().copied().collect();
        st.inodes.retain(|ino, _| live.contains(ino));
        for inode in st.inodes.values_mut() {
            let mut data = inode.durable.clone();
            let pending = std::mem::take(&mut inode.pending);
            let keep: Vec<(u64, Vec<u8>)> = match mode {
                CrashMode::LoseUnsynced => Vec::new(),
                CrashMode::KeepUnsynced => pending,
                CrashMode::TornTail => {
                    let n = if pending.is_empty() {
                        0
                    } else {
                        (rng(&mut seed) % (pending.len() as u64 + 1)) as usize
                    };
                    let mut v: Vec<(u64, Vec<u8>)> = pending.into_iter().take(n).collect();
                    if let Some(last) = v.last_mut() {
                        let sectors = last.1.len().div_ceil(512);
                        let keep = (rng(&mut seed) as usize % (sectors + 1)) * 512;
                        last.1.truncate(keep.min(last.1.len()));
                    }
                    v
                }
                CrashMode::Reorder => pending
                    .into_iter()
                    .filter(|_| rng(&mut seed).is_multiple_of(2))
                    .collect(),
            };
            for (off, bytes) in keep {
                let end = off as usize + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[off as usize..end].copy_from_slice(&bytes);
            }
            inode.data = data.clone();
            inode.durable = data;
        }
        st.locks.clear();
        st.crashed = false;
        st.crash_after = None;
        st.fail_at = None;
        st.generation += 1;
    }

    /// Contents of a file as the process sees it (for tests that corrupt files).
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.st.lock();
        st.names.get(path).map(|i| st.inodes[i].data.clone())
    }

    /// Creates (or replaces) a file with `data`, durably, name included (and
    /// its parent directories, durably, if they do not exist).
    pub fn put(&self, path: &Path, data: Vec<u8>) {
        let mut st = self.st.lock();
        if let Some(dir) = parent_dir(path) {
            st.add_durable_dirs(dir);
        }
        let ino = match st.names.get(path) {
            Some(&i) => i,
            None => {
                st.next_ino += 1;
                let i = st.next_ino;
                st.names.insert(path.to_path_buf(), i);
                st.durable_names.insert(path.to_path_buf(), i);
                i
            }
        };
        st.inodes.insert(
            ino,
            Inode {
                data: data.clone(),
                durable: data,
                pending: Vec::new(),
            },
        );
    }

    /// Replaces a file's contents, durably (for tests that corrupt files).
    pub fn write_durable(&self, path: &Path, data: Vec<u8>) {
        let mut st = self.st.lock();
        if let Some(&i) = st.names.get(path) {
            let ino = st.inodes.entry(i).or_default();
            ino.durable = data.clone();
            ino.data = data;
            ino.pending.clear();
        }
    }

    /// Names of files in a directory.
    pub fn files(&self, dir: &Path) -> Vec<PathBuf> {
        let st = self.st.lock();
        st.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// Counts an operation; fails it when a crash or fault is due.
    fn op(&self) -> io::Result<Option<Fault>> {
        let mut st = self.st.lock();
        if st.crashed {
            return Err(eio());
        }
        st.ops += 1;
        if st.crash_after == Some(st.ops) {
            st.crashed = true;
            return Err(eio());
        }
        if let Some((n, f)) = st.fail_at {
            if n == st.ops {
                st.fail_at = None;
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    fn check(&self, generation: u64) -> io::Result<()> {
        if self.st.lock().generation != generation {
            return Err(io::Error::other("stale handle from before a crash"));
        }
        Ok(())
    }
}

fn fault_err(f: Fault) -> io::Error {
    match f {
        Fault::NoSpace => io::Error::from_raw_os_error(28),
        Fault::Eio => eio(),
    }
}

impl Vfs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if let Some(f) = self.op()? {
            return Err(fault_err(f));
        }
        let mut st = self.st.lock();
        let mut new: Vec<PathBuf> = dir
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && !st.is_dir(a))
            .map(Path::to_path_buf)
            .collect();
        if new.iter().any(|a| st.names.contains_key(a)) {
            return Err(io::Error::from(io::ErrorKind::NotADirectory));
        }
        new.reverse();
        st.dirs.extend(new);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        if let Some(f) = self.op()? {
            return Err(fault_err(f));
        }
        let st = self.st.lock();
        if !st.is_dir(dir) {
            return Err(io::Error::from(if st.names.contains_key(dir) {
                io::ErrorKind::NotADirectory
            } else {
                io::ErrorKind::NotFound
            }));
        }
        Ok(st
            .names
            .keys()
            .chain(st.dirs.iter())
            .filter(|p| parent_is(p, dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VFile>> {
        if let Some(f) = self.op()? {
            return Err(fault_err(f));
        }
        let mut st = self.st.lock();
        if st.is_dir(path) {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        st.check_parent(path)?;
        let ino = match st.names.get(path) {
            Some(&i) => i,
            None if create => {
                st.next_ino += 1;
                let i = st.next_ino;
                st.inodes.insert(i, Inode::default());
                st.names.insert(path.to_path_buf(), i);
                i
            }
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            ino,
            generation: st.generation,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if let Some(f) = self.op()? {
            return Err(fault_err(f));
        }
        let mut st = self.st.lock();
        st.check_parent(to)?;
        let ino = st
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        if let Some(f) = self.op()? {
            return Err(fault_err(f));
        }
        let mut st = self.st.lock();
        st.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if let Some(f) = self.op()? {
            return Err(fault_err(f));
        }
        let mut st = self.st.lock();
        if !st.is_dir(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let cur: Vec<(PathBuf, u64)> = st
            .names
            .iter()
            .filter(|(p, _)| parent_is(p, dir))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        st.durable_names.retain(|p, _| !parent_is(p, dir));
        st.durable_names.extend(cur);
        let subdirs: Vec<PathBuf> = st
            .dirs
            .iter()
            .filter(|p| parent_is(p, dir))
            .cloned()
            .collect();
        st.durable_dirs.extend(subdirs);
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        if let Some(f) = self.op()? {
            return Err(fault_err(f));
        }
        let mut st = self.st.lock();
        if !st.is_dir(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        if !st.locks.insert(dir.to_path_buf()) {
            return Ok(None);
        }
        let generation = st.generation;
        Ok(Some(Box::new(LockGuard {
            fs: self.clone(),
            dir: dir.to_path_buf(),
            generation,
        })))
    }

    fn network_fs(&self, _dir: &Path) -> io::Result<Option<String>> {
        Ok(None)
    }

    fn free_space(&self, _dir: &Path) -> io::Result<Option<u64>> {
        Ok(self.st.lock().free_space)
    }

    fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
        if let Some(f) = self.op()? {
            return Err(fault_err(f));
        }
        Ok(self.st.lock().is_dir(dir))
    }
}

impl VFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.fs.check(self.generation)?;
        if let Some(f) = self.fs.op()? {
            return Err(fault_err(f));
        }
        Ok(self.fs.st.lock().inodes[&self.ino].data.len() as u64)
    }

    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.fs.check(self.generation)?;
        if let Some(f) = self.fs.op()? {
            return Err(fault_err(f));
        }
        let st = self.fs.st.lock();
        let d = &st.inodes[&self.ino].data;
        let end = off as usize + buf.len();
        if end > d.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&d[off as usize..end]);
        Ok(())
    }

    fn write_all_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.fs.check(self.generation)?;
        let fault = self.fs.op()?;
        let bytes = match fault {
            Some(Fault::NoSpace) => &buf[..buf.len() / 2],
            Some(Fault::Eio) => return Err(eio()),
            None => buf,
        };
        let mut st = self.fs.st.lock();
        let ino = st.inodes.entry(self.ino).or_default();
        let end = off as usize + bytes.len();
        if ino.data.len() < end {
            ino.data.resize(end, 0);
        }
        ino.data[off as usize..end].copy_from_slice(bytes);
        ino.pending.push((off, bytes.to_vec()));
        match fault {
            Some(f) => Err(fault_err(f)),
            None => Ok(()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.fs.st.lock().sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.fs.check(self.generation)?;
        if let Some(f) = self.fs.op()? {
            // A failed fsync: the kernel may have dropped the dirty pages.
            let mut st = self.fs.st.lock();
            if let Some(ino) = st.inodes.get_mut(&self.ino) {
                ino.pending.clear();
                ino.data = ino.durable.clone();
            }
            return Err(fault_err(f));
        }
        let mut st = self.fs.st.lock();
        let ino = st.inodes.entry(self.ino).or_default();
        ino.durable = ino.data.clone();
        ino.pending.clear();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.check(self.generation)?;
        if let Some(f) = self.fs.op()? {
            return Err(fault_err(f));
        }
        let mut st = self.fs.st.lock();
        let ino = st.inodes.entry(self.ino).or_default();
        // Like ftruncate(2): visible now, durable with the next sync_data; a crash
        // before that brings back the durable length.
        ino.data.resize(len as usize, 0);
        ino.pending.retain(|(off, _)| *off < len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_whose_parent_was_not_synced_is_lost_with_its_files() {
        let fs = SimFs::new();
        let (d, f) = (Path::new("/d/e"), Path::new("/d/e/f"));
        fs.create_dir_all(d).unwrap();
        let h = fs.open(f, true).unwrap();
        h.write_all_at(0, b"abc").unwrap();
        h.sync_data().unwrap();
        fs.sync_dir(d).unwrap();
        fs.restart(CrashMode::KeepUnsynced, 1);
        assert!(!fs.dir_exists(Path::new("/d")).unwrap());
        assert_eq!(fs.read(f), None);
        assert!(fs.open(f, true).is_err(), "no directory to create it in");

        // Synced top-down, the same directory and file survive.
        fs.create_dir_all(d).unwrap();
        let h = fs.open(f, true).unwrap();
        h.write_all_at(0, b"abc").unwrap();
        h.sync_data().unwrap();
        fs.sync_dir(d).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.restart(CrashMode::LoseUnsynced, 1);
        assert!(fs.dir_exists(d).unwrap());
        assert_eq!(fs.read(f).as_deref(), Some(&b"abc"[..]));
        assert_eq!(fs.list(Path::new("/d")).unwrap(), vec!["e".to_string()]);
    }

    #[test]
    fn put_makes_its_directories_durable() {
        let fs = SimFs::new();
        fs.put(Path::new("/x/y/z"), b"1".to_vec());
        fs.restart(CrashMode::LoseUnsynced, 1);
        assert_eq!(fs.read(Path::new("/x/y/z")).as_deref(), Some(&b"1"[..]));
        assert!(fs.list(Path::new("/nope")).is_err());
    }
}
