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
    let mut buf = Vec::new();
    for &seg in segs {
        // The header is the first record: a page holds it.
        let data = read_into(vfs, &dir.join(segment_name(seg)), &mut buf, 4096)?;
        if let Ok(f) = record::parse(data, 0) {
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

/// Reads the first `max` bytes of a file (all of a shorter one) into `buf`
/// with bounded `pread`s (never a mapping: a bad sector is an `Error::Io`
/// for the operator, not a SIGBUS that kills the MTA). `buf` only grows:
/// reused across the segments of a replay, its pages are faulted in once,
/// not once per segment.
pub(super) fn read_into<'b>(
    vfs: &dyn Vfs,
    path: &Path,
    buf: &'b mut Vec<u8>,
    max: usize,
) -> Result<&'b [u8]> {
    const CHUNK: usize = 4 << 20;
    let f = vfs
        .open(path, false)
        .map_err(|e| Error::io("open", path, e))?;
    let len = f.len().map_err(|e| Error::io("stat", path, e))?;
    let len = usize::try_from(len)
        .map_err(|_| Error::TooLarge {
            what: "file",
            len: usize::MAX,
            limit: isize::MAX as usize,
        })?
        .min(max);
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let data = &mut buf[..len];
    for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
        f.read_exact_at((i * CHUNK) as u64, chunk)
            .map_err(|e| Error::io("read", path, e))?;
    }
    Ok(data)
}
