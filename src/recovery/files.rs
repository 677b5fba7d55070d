//! Reading the queue directory's files for recovery: whole files by bounded
//! `pread`s, the queue's CRC salt, and a fresh salt for a new queue.
//! Depends on `error`, `storage`.

use crate::error::{Error, Result};
use crate::storage::log::segment_name;
use crate::storage::record::{self, Kind};
use crate::storage::vfs::Vfs;
use std::collections::BTreeSet;
use std::path::Path;

/// The salt named by the first readable segment header.
pub(super) fn find_salt(vfs: &dyn Vfs, dir: &Path, segs: &BTreeSet<u32>) -> Result<Option<u32>> {
    for &seg in segs {
        let data = read_file(vfs, &dir.join(segment_name(seg)))?;
        if let Ok(f) = record::parse(&data, 0) {
            if f.kind == Kind::SegmentHeader {
                if let Some((_, _, salt)) = record::parse_segment_header(f.payload) {
                    return Ok(Some(salt));
                }
            }
        }
    }
    Ok(None)
}

/// A random, non-zero salt for a new queue.
pub(super) fn new_salt() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into our 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let mut v = u32::from_le_bytes(b);
    if n != 4 {
        // No entropy source: fall back to time and pid (still unknown to senders).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        v = (t ^ (t >> 32) ^ (std::process::id() as u64).wrapping_mul(0x9E37_79B9)) as u32;
    }
    v.max(1)
}

/// Reads a whole file with bounded `pread`s (never a mapping: a bad sector is an
/// `Error::Io` for the operator, not a SIGBUS that kills the MTA).
pub(super) fn read_file(vfs: &dyn Vfs, path: &Path) -> Result<Vec<u8>> {
    const CHUNK: usize = 4 << 20;
    let f = vfs
        .open(path, false)
        .map_err(|e| Error::io("open", path, e))?;
    let len = f.len().map_err(|e| Error::io("stat", path, e))?;
    let len = usize::try_from(len).map_err(|_| Error::TooLarge {
        what: "file",
        len: usize::MAX,
        limit: isize::MAX as usize,
    })?;
    let mut buf = vec![0u8; len];
    for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
        f.read_exact_at((i * CHUNK) as u64, chunk)
            .map_err(|e| Error::io("read", path, e))?;
    }
    Ok(buf)
}
