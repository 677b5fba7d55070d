//! The storage seam: every byte mailq reads or writes goes through [`Vfs`] and
//! [`VFile`]. The real implementation uses the OS; tests can substitute a
//! fault-injecting filesystem that keeps written and durable bytes apart.
//! Depends on nothing else in the crate.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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
    /// Bytes an unprivileged writer may still use on `dir`'s filesystem, or
    /// `None` when unknown (the default; the free-disk watermark is then not
    /// checked).
    fn free_space(&self, _dir: &Path) -> io::Result<Option<u64>> {
        Ok(None)
    }
    /// Whether `dir` exists and is a directory. `Ok(false)` when it (or one of its
    /// ancestors) is missing or is not a directory.
    ///
    /// The default asks [`Vfs::list`] and reads `NotFound`/`NotADirectory` as
    /// absence; implementations should override it with something cheaper.
    fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
        absent_is_false(self.list(dir).map(|_| true))
    }
}

/// What [`writeback`] does with a range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writeback {
    /// Starts writing its dirty pages, without waiting.
    Start,
    /// Waits until the writes started on it are done.
    Wait,
}

/// Starts, or waits for, the writeback of `len` bytes of `f` at `off`
/// (`sync_file_range(2)`), so that a big write reaches the disk in pieces
/// instead of one burst that concurrent commits would queue behind. Makes
/// nothing durable (neither data nor the file's size: only an fdatasync
/// does). Returns `false`, doing nothing, when the file has no descriptor
/// (a custom [`Vfs`]).
pub fn writeback(f: &dyn VFile, off: u64, len: u64, what: Writeback) -> io::Result<bool> {
    let Some(fd) = f.raw_fd() else {
        return Ok(false);
    };
    if len == 0 {
        // (A length of 0 would mean "to the end of the file".)
        return Ok(true);
    }
    let flags = match what {
        Writeback::Start => libc::SYNC_FILE_RANGE_WRITE,
        Writeback::Wait => libc::SYNC_FILE_RANGE_WAIT_BEFORE,
    };
    // SAFETY: plain syscall on a descriptor the file keeps open for the
    // duration of the call; no memory is passed.
    let r = unsafe { libc::sync_file_range(fd, off as libc::off64_t, len as libc::off64_t, flags) };
    if r != 0 {
        let e = io::Error::last_os_error();
        // A kernel or filesystem without it: not paced, synced as before.
        return match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE) => Ok(false),
            _ => Err(e),
        };
    }
    Ok(true)
}

/// Reads "not found" and "not a directory" (a missing ancestor) as `false`.
pub fn absent_is_false(r: io::Result<bool>) -> io::Result<bool> {
    match r {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        r => r,
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

    fn free_space(&self, dir: &Path) -> io::Result<Option<u64>> {
        let c = c_path(dir)?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly
        // sized, zero-initialised out-parameter that statvfs fills in.
        let st = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            st
        };
        // Field widths differ between targets.
        #[allow(clippy::unnecessary_cast)]
        let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        Ok(Some(free))
    }

    fn network_fs(&self, dir: &Path) -> io::Result<Option<String>> {
        detect_network_fs(
            dir,
            &statfs_magic,
            &|| std::fs::read_to_string("/proc/self/mountinfo"),
            &|p| std::fs::canonicalize(p),
        )
    }

    fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
        absent_is_false(std::fs::metadata(dir).map(|m| m.is_dir()))
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

/// statfs(2) `f_type` of the filesystem holding `path`.
/// `path` as a C string for a syscall.
fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn statfs_magic(path: &Path) -> io::Result<u32> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized,
    // zero-initialised out-parameter that statfs fills in.
    let st = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    // f_type is signed on some targets; the magic is its low 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64 as u32;
    Ok(magic)
}

/// statfs `f_type` of overlayfs (`OVERLAYFS_SUPER_MAGIC`).
const OVERLAYFS_MAGIC: u32 = 0x794c_7630;

/// How deep overlays stacked on overlays are followed.
const MAX_OVERLAY_DEPTH: u32 = 4;

/// The name of a network, cluster or FUSE filesystem from its statfs(2)
/// `f_type`; `None` for local filesystems (and for overlayfs, whose layers
/// decide, see [`detect_network_fs`]).
///
/// Values are from Linux `include/uapi/linux/magic.h` where listed there,
/// otherwise from the filesystem's own sources.
pub(crate) fn network_fs_name(magic: u32) -> Option<&'static str> {
    Some(match magic {
        0x0000_6969 => "NFS",    // NFS_SUPER_MAGIC
        0x0000_517B => "SMB",    // SMB_SUPER_MAGIC
        0xFF53_4D42 => "CIFS",   // CIFS_SUPER_MAGIC
        0xFE53_4D42 => "SMB2",   // SMB2_SUPER_MAGIC
        0x6573_5546 => "FUSE",   // FUSE_SUPER_MAGIC
        0x0102_1997 => "9P",     // V9FS_MAGIC
        0x00C3_6400 => "Ceph",   // CEPH_SUPER_MAGIC (fs/ceph/super.h)
        0x0BD0_0BD0 => "Lustre", // LL_SUPER_MAGIC (lustre_user.h)
        0x0116_1970 => "GFS2",   // GFS2_MAGIC (linux/gfs2_ondisk.h)
        0x7461_636F => "OCFS2",  // OCFS2_SUPER_MAGIC
        0x4750_4653 => "GPFS",   // "GPFS", IBM Spectrum Scale
        0x1983_0326 => "BeeGFS", // BEEGFS_MAGIC (formerly FhGFS)
        0x5346_414F => "AFS",    // AFS_SUPER_MAGIC (OpenAFS)
        0x6B41_4653 => "kAFS",   // AFS_FS_MAGIC (Linux fs/afs)
        _ => return None,
    })
}

/// The network filesystem `path` is on, following overlayfs to its layers.
///
/// `statfs` gives a path's `f_type`, `mountinfo` the text of
/// `/proc/self/mountinfo`, `canonical` the absolute, symlink-free form of a path
/// (all injected for tests). For an overlay, the mount containing the path is
/// found in mountinfo and each `upperdir`/`lowerdir` layer is checked in turn;
/// the first network layer is reported as `"overlay over <name>"`. Layers that
/// cannot be examined (mountinfo unreadable, or the layer paths belong to
/// another mount namespace, as in most containers) count as local.
pub(crate) fn detect_network_fs(
    path: &Path,
    statfs: &dyn Fn(&Path) -> io::Result<u32>,
    mountinfo: &dyn Fn() -> io::Result<String>,
    canonical: &dyn Fn(&Path) -> io::Result<PathBuf>,
) -> io::Result<Option<String>> {
    let magic = statfs(path)?;
    Ok(classify(path, magic, statfs, mountinfo, canonical, 0))
}

fn classify(
    path: &Path,
    magic: u32,
    statfs: &dyn Fn(&Path) -> io::Result<u32>,
    mountinfo: &dyn Fn() -> io::Result<String>,
    canonical: &dyn Fn(&Path) -> io::Result<PathBuf>,
    depth: u32,
) -> Option<String> {
    if let Some(name) = network_fs_name(magic) {
        return Some(name.to_string());
    }
    if magic != OVERLAYFS_MAGIC || depth >= MAX_OVERLAY_DEPTH {
        return None;
    }
    let abs = canonical(path).ok()?;
    let info = mountinfo().ok()?;
    for layer in overlay_layers(&info, &abs) {
        let Ok(m) = statfs(&layer) else { continue };
        if let Some(name) = classify(&layer, m, statfs, mountinfo, canonical, depth + 1) {
            return Some(format!("overlay over {name}"));
        }
    }
    None
}

/// The layer directories (`upperdir` first, then each `lowerdir`/`lowerdir+`/
/// `datadir+`) of the overlay mount that contains the absolute path `path`,
/// from the text of `/proc/<pid>/mountinfo`. Empty when the containing mount
/// (the one with the longest mount point that is a prefix of `path`; the last
/// listed among equals, as it is mounted on top) is not an overlay.
pub(crate) fn overlay_layers(mountinfo: &str, path: &Path) -> Vec<PathBuf> {
    let mut best: Option<(usize, &str, &str)> = None;
    for line in mountinfo.lines() {
        // id parent maj:min root mount-point options [optional...] - fstype source super-options
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        let Some(sep) = line.find(" - ") else {
            continue;
        };
        let mut tail = line[sep + 3..].split(' ');
        let (Some(fstype), Some(_source)) = (tail.next(), tail.next()) else {
            continue;
        };
        let super_opts = tail.next().unwrap_or("");
        let mp = bytes_path(unescape_octal(mount_point));
        if !path.starts_with(&mp) {
            continue;
        }
        let depth = mp.components().count();
        if best.is_none_or(|(d, _, _)| depth >= d) {
            best = Some((depth, fstype, super_opts));
        }
    }
    let Some((_, fstype, opts)) = best else {
        return Vec::new();
    };
    if fstype != "overlay" {
        return Vec::new();
    }
    let mut upper = Vec::new();
    let mut lower = Vec::new();
    for opt in opts.split(',') {
        let Some((key, value)) = opt.split_once('=') else {
            continue;
        };
        let value = unescape_octal(value);
        match key {
            "upperdir" => upper.push(bytes_path(value)),
            "lowerdir" => lower.extend(split_lowerdir(&value)),
            "lowerdir+" | "datadir+" => lower.push(bytes_path(value)),
            _ => {}
        }
    }
    upper.extend(lower);
    upper
}

/// Splits an overlay `lowerdir` list at `:` (a `\:` is a colon inside a path);
/// empty entries (the `::` before data-only layers) are skipped.
fn split_lowerdir(list: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = list.iter().copied();
    while let Some(c) = bytes.next() {
        match c {
            b'\\' => cur.push(bytes.next().unwrap_or(b'\\')),
            b':' => {
                if !cur.is_empty() {
                    out.push(bytes_path(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(bytes_path(cur));
    }
    out
}

fn bytes_path(b: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(b))
}

/// Undoes mountinfo's escaping of space, tab, newline, backslash (and, in
/// option values, comma and `=`) as `\ooo` octal.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let d = &b[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
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

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_fs_table_names_cluster_and_network_filesystems() {
        let expect = [
            (0x6969, "NFS"),
            (0x517B, "SMB"),
            (0xFF53_4D42, "CIFS"),
            (0xFE53_4D42, "SMB2"),
            (0x6573_5546, "FUSE"),
            (0x0102_1997, "9P"),
            (0x00C3_6400, "Ceph"),
            (0x0BD0_0BD0, "Lustre"),
            (0x0116_1970, "GFS2"),
            (0x7461_636F, "OCFS2"),
            (0x4750_4653, "GPFS"),
            (0x1983_0326, "BeeGFS"),
            (0x5346_414F, "AFS"),
            (0x6B41_4653, "kAFS"),
        ];
        for (magic, name) in expect {
            assert_eq!(network_fs_name(magic), Some(name), "{magic:#x}");
        }
        // ext4, xfs, btrfs, tmpfs are local; overlayfs is decided by its layers.
        for local in [
            0xEF53,
            0x5846_5342,
            0x9123_683E,
            0x0102_1994,
            OVERLAYFS_MAGIC,
        ] {
            assert_eq!(network_fs_name(local), None, "{local:#x}");
        }
    }

    const MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,relatime - proc proc rw
1 0 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/l/A:/var/lib/l/B\\134:c,upperdir=/mnt/nfs/upper,workdir=/mnt/nfs/work
40 1 8:1 / /data rw,relatime - ext4 /dev/sda1 rw
41 1 0:60 / /mnt/nfs rw,relatime shared:5 - nfs4 srv:/export rw,vers=4.2
42 1 0:70 / /my\\040spool rw - overlay overlay rw,lowerdir+=/lo1,lowerdir+=/lo2,datadir+=/data1,upperdir=/up
";

    #[test]
    fn overlay_layers_come_from_the_containing_overlay_mount() {
        let layers = |at: &str| overlay_layers(MOUNTINFO, Path::new(at));
        let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            layers("/srv/queue"),
            paths(&["/mnt/nfs/upper", "/var/lib/l/A", "/var/lib/l/B:c"])
        );
        // A deeper mount wins, and it is not an overlay.
        assert!(overlay_layers(MOUNTINFO, Path::new("/data/q")).is_empty());
        // Octal-escaped mount point; lowerdir+= / datadir+= (new mount API).
        assert_eq!(
            layers("/my spool/q"),
            paths(&["/up", "/lo1", "/lo2", "/data1"])
        );
        // "/datax" is not under "/data".
        assert_eq!(overlay_layers(MOUNTINFO, Path::new("/datax")).len(), 3);
        assert!(overlay_layers("garbage\n\n", Path::new("/q")).is_empty());
    }

    fn fake_statfs(p: &Path) -> io::Result<u32> {
        if p.starts_with("/mnt/nfs") {
            Ok(0x6969)
        } else if p.starts_with("/srv") {
            Ok(OVERLAYFS_MAGIC)
        } else if p.starts_with("/gone") {
            Err(io::Error::from(io::ErrorKind::NotFound))
        } else {
            Ok(0xEF53)
        }
    }

    /// What `detect_network_fs` says of `path` with mountinfo from `mountinfo`.
    fn detect(path: &str, mountinfo: &dyn Fn() -> io::Result<String>) -> Option<String> {
        detect_network_fs(Path::new(path), &fake_statfs, mountinfo, &|p| {
            Ok(p.to_path_buf())
        })
        .unwrap()
    }

    #[test]
    fn overlay_with_a_layer_on_nfs_is_reported() {
        let found = detect("/srv/queue", &|| Ok(MOUNTINFO.to_string()));
        assert_eq!(found.as_deref(), Some("overlay over NFS"));
    }

    #[test]
    fn overlay_on_local_or_unreachable_layers_is_local() {
        let local = MOUNTINFO.replace("/mnt/nfs/upper", "/var/upper");
        assert_eq!(detect("/srv/queue", &|| Ok(local.clone())), None);
        // Layers in another mount namespace (containers): not found, not network.
        let gone = MOUNTINFO.replace("/mnt/nfs/upper", "/gone/upper");
        assert_eq!(detect("/srv/queue", &|| Ok(gone.clone())), None);
        // No mountinfo: cannot tell, so local.
        let missing = || Err(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(detect("/srv/queue", &missing), None);
        // A plain network filesystem needs no mountinfo at all.
        let found = detect("/mnt/nfs/q", &|| panic!("mountinfo read for a non-overlay"));
        assert_eq!(found.as_deref(), Some("NFS"));
    }

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
