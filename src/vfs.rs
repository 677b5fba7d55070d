//! The storage seam: every byte mailq reads or writes goes through [`Vfs`] and
//! [`VFile`]. The real implementation uses the OS; tests can substitute a
//! fault-injecting filesystem that keeps written and durable bytes apart.

use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A filesystem as mailq needs it: a handful of operations, nothing more.
pub trait Vfs: Send + Sync + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing; creates it (empty) if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VFile>>;
    /// Atomically renames a file.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes directory entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the directory; `Ok(None)` when someone else holds it.
    /// The lock lasts as long as the returned guard.
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn std::any::Any + Send + Sync>>>;
    /// The name of the filesystem type when it is a network or FUSE filesystem.
    fn network_fs(&self, dir: &Path) -> io::Result<Option<String>>;
    /// Whether `dir` exists and is a directory. `Ok(false)` when it (or one of its
    /// ancestors) is missing or is not a directory.
    ///
    /// The default asks [`Vfs::list`] and reads `NotFound`/`NotADirectory` as
    /// absence; implementations should override it with something cheaper.
    fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
        match self.list(dir) {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// An open file.
#[allow(clippy::len_without_is_empty)]
pub trait VFile: Send + Sync {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `off`.
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `off`.
    fn write_all_at(&self, off: u64, buf: &[u8]) -> io::Result<()>;
    /// fdatasync(2).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// A read-only view of bytes `[0, len)`; the caller never reads past what was written.
    fn map(&self, len: u64) -> io::Result<Bytes>;
    /// The OS file descriptor, when there is one (for `sendfile(2)` by C callers).
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

struct OsFile {
    file: File,
}

impl Vfs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(OsFile { file }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Locks the directory itself with `flock(LOCK_EX | LOCK_NB)` on an
    /// `O_RDONLY | O_DIRECTORY | O_CLOEXEC` descriptor: unlike a lock file, the
    /// directory cannot be removed and recreated on its own while the queue's
    /// files are in it, so a deleted `LOCK` no longer lets a second owner in.
    /// flock locks belong to the open file description, so a second open in
    /// the same process conflicts too.
    ///
    /// For queues shared with older mailq builds (which lock only `<dir>/LOCK`),
    /// `LOCK` is locked as well once the directory lock is held; the directory
    /// lock is the one that counts.
    fn lock_dir(&self, dir: &Path) -> io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        use std::os::unix::fs::OpenOptionsExt;
        // std opens with O_CLOEXEC.
        let dir_fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)?;
        if !try_flock(&dir_fd)? {
            return Ok(None);
        }
        let legacy = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LEGACY_LOCK))?;
        if !try_flock(&legacy)? {
            return Ok(None);
        }
        Ok(Some(Box::new(DirLock {
            _dir: dir_fd,
            _legacy: legacy,
        })))
    }

    fn network_fs(&self, dir: &Path) -> io::Result<Option<String>> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized,
        // zero-initialised out-parameter that statfs fills in.
        let st = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            if libc::statfs(c.as_ptr(), &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            st
        };
        #[allow(clippy::unnecessary_cast)]
        let magic = st.f_type as i64 as u32;
        let name = match magic {
            0x6969 => "NFS",
            0x517B => "SMB",
            0xFF53_4D42 => "CIFS",
            0xFE53_4D42 => "SMB2",
            0x6573_5546 => "FUSE",
            0x7346_6378 => "9P",
            0x0102_1997 => "9P",
            0x5346_414F => "AFS",
            0x00C3_6400 => "Ceph",
            0x0BD0_0BD0 => "Lustre",
            _ => return Ok(None),
        };
        Ok(Some(name.to_string()))
    }

    fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
        match std::fs::metadata(dir) {
            Ok(m) => Ok(m.is_dir()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// The lock file older mailq builds flock (kept locked for them, see [`OsFs::lock_dir`]).
const LEGACY_LOCK: &str = "LOCK";

/// What [`OsFs::lock_dir`] returns: the locked descriptors, unlocked on drop.
struct DirLock {
    _dir: File,
    _legacy: File,
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when someone else holds the lock.
fn try_flock(f: &File) -> io::Result<bool> {
    match f.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

impl VFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, off)
    }

    fn write_all_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, off)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn map(&self, len: u64) -> io::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping too large"))?;
        // SAFETY: the queue directory is exclusively locked, segment files are
        // append-only while open and only truncated during recovery before any
        // mapping exists, so the mapped bytes that mailq reads (always below the
        // written length) are never changed or removed underneath the mapping.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&self.file)? };
        Ok(Bytes::from_owner(map))
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_fs_dir_exists_and_locks_the_directory() {
        let d = std::env::temp_dir().join(format!("mailq-vfs-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert!(!OsFs.dir_exists(&d).unwrap());
        std::fs::create_dir_all(&d).unwrap();
        assert!(OsFs.dir_exists(&d).unwrap());
        std::fs::write(d.join("f"), b"x").unwrap();
        assert!(!OsFs.dir_exists(&d.join("f")).unwrap());
        assert!(!OsFs.dir_exists(&d.join("f/g")).unwrap());
        let g = OsFs.lock_dir(&d).unwrap();
        assert!(g.is_some());
        // Another open file description of the directory is refused.
        let other = File::open(&d).unwrap();
        assert!(!try_flock(&other).unwrap());
        drop(g);
        assert!(try_flock(&other).unwrap());
        drop(other);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
