//! Reading a checkpoint file in bounded pieces: its frame and checksum are
//! checked in a first pass of `pread`s through one small buffer, then (format
//! 5) its tables are read whole — they are small — and its shard entries are
//! decoded as they stream through the same buffer. A 10 M-recipient queue's
//! checkpoint is ~240 MB: read whole, its pages cost more to fault in than
//! to decode. Nothing is decoded before the checksum matched, and the bytes
//! decoded are checksummed again as they are read (a disk that returns
//! other bytes the second time is damage, found by [`Stream::end`], before
//! the state is used). Older formats
//! are read whole (their tables precede the shards). The format itself is
//! [`super::checkpoint`]'s. Depends on `storage::vfs`, `storage::record` and
//! `storage::checkpoint` only.

use super::checkpoint::{
    check_magic, check_trailer, malformed, msg_entry, rcpt_entry, read_header, tables_at,
    DecodeError, Entries, Header, MsgEntry, RcptEntry, HEADER, MAGIC, MSG_ENTRY, RCPT_ENTRY,
    TRAILER,
};
use super::record::Reader;
use super::vfs::VFile;

/// Bytes read per `pread`.
const CHUNK: usize = 1 << 20;

/// A checkpoint file whose frame and checksum checked out.
pub enum Opened<'f> {
    /// Before format 5: the whole file, for [`super::checkpoint::Decoder::open`].
    Whole(Vec<u8>),
    /// Format 5: the header, the tables' bytes (for
    /// [`super::checkpoint::Decoder::section`]) and the shards as a stream.
    Streamed {
        /// The snapshot's position and counters.
        header: Header,
        /// Keys, settings, sources and window.
        tables: Vec<u8>,
        /// The shards' entries.
        shards: Stream<'f>,
    },
}

/// Checks the frame (magic, end marker, length, CRC) of the checkpoint file
/// `f` reading it in bounded pieces, and opens it for decoding.
pub fn open(f: &dyn VFile) -> Result<Opened<'_>, DecodeError> {
    let n = f.len().map_err(DecodeError::Io)?;
    let n = usize::try_from(n).map_err(|_| DecodeError::from("file too large"))?;
    let mut head = [0u8; HEADER];
    read(f, 0, &mut head[..n.min(HEADER)])?;
    check_magic(&head, n)?;
    let mut tail = [0u8; TRAILER];
    read(f, (n - TRAILER) as u64, &mut tail)?;
    let crc = check_trailer(&tail, n)?;
    let body = n - TRAILER;
    let mut buf = vec![0u8; CHUNK.min(body)];
    let mut hasher = crc32fast::Hasher::new();
    let mut off = 0;
    while off < body {
        let k = CHUNK.min(body - off);
        read(f, off as u64, &mut buf[..k])?;
        hasher.update(&buf[..k]);
        off += k;
    }
    if hasher.finalize() != crc {
        return Err(DecodeError::from("checksum mismatch"));
    }
    // From here on the bytes are the ones checksummed (the queue holds the
    // directory's lock: nothing rewrites the file meanwhile).
    let (version, header) = read_header(&mut Reader::new(&head[MAGIC.len()..]))?;
    if version < 5 {
        let mut whole = vec![0u8; n];
        read(f, 0, &mut whole)?;
        return Ok(Opened::Whole(whole));
    }
    let mut last = [0u8; 8];
    read(f, (body.saturating_sub(8)) as u64, &mut last[..body.min(8)])?;
    let at = tables_at(body, &last)?;
    let mut tables = vec![0u8; body - 8 - at];
    read(f, at as u64, &mut tables)?;
    // The second pass's checksum: the header and the shards as they are
    // read, then the tables and their offset, in file order.
    let mut again = crc32fast::Hasher::new();
    again.update(&head);
    let mut tail = crc32fast::Hasher::new();
    tail.update(&tables);
    tail.update(&last);
    Ok(Opened::Streamed {
        header,
        tables,
        shards: Stream {
            f,
            buf,
            pos: 0,
            end: 0,
            off: HEADER as u64,
            limit: at as u64,
            version,
            again,
            tail,
            crc,
        },
    })
}

fn read(f: &dyn VFile, off: u64, buf: &mut [u8]) -> Result<(), DecodeError> {
    f.read_exact_at(off, buf).map_err(DecodeError::Io)
}

/// The shard entries of a checksummed format-5 file, decoded as they are
/// read through one bounded buffer.
pub struct Stream<'f> {
    f: &'f dyn VFile,
    buf: Vec<u8>,
    /// Unread bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// File offset of `buf[end]`.
    off: u64,
    /// File offset where the shards end.
    limit: u64,
    version: u32,
    /// Checksum of the bytes read so far (header and shards), …
    again: crc32fast::Hasher,
    /// … of the tables and their offset, …
    tail: crc32fast::Hasher,
    /// … and what the whole must be.
    crc: u32,
}

impl Stream<'_> {
    /// The next `n` bytes, reading more of the file when the buffer holds
    /// fewer (an entry never spans a refill).
    #[inline]
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.end - self.pos < n {
            self.refill(n)?;
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[cold]
    fn refill(&mut self, n: usize) -> Result<(), DecodeError> {
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        if self.buf.len() < n {
            // A text longer than the buffer (at most 64 KiB).
            self.buf.resize(n, 0);
        }
        let room = (self.buf.len() - self.end) as u64;
        let k = room.min(self.limit - self.off) as usize;
        read(self.f, self.off, &mut self.buf[self.end..self.end + k])?;
        self.again.update(&self.buf[self.end..self.end + k]);
        self.off += k as u64;
        self.end += k;
        if self.end < n {
            return Err(malformed());
        }
        Ok(())
    }

    /// Checks that nothing follows the last entry, and that the bytes
    /// decoded are the ones the first pass checksummed.
    pub fn end(&self) -> Result<(), DecodeError> {
        if self.pos != self.end || self.off != self.limit {
            return Err(DecodeError::from("trailing bytes"));
        }
        let mut all = self.again.clone();
        all.combine(&self.tail);
        if all.finalize() != self.crc {
            return Err(DecodeError::from(
                "checksum mismatch (the file read differently the second time)",
            ));
        }
        Ok(())
    }
}

impl Entries for Stream<'_> {
    fn version(&self) -> u32 {
        self.version
    }

    #[inline]
    fn count(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&mut self) -> Result<&str, DecodeError> {
        let b = self.take(2)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| malformed())
    }

    #[inline]
    fn message(&mut self) -> Result<MsgEntry, DecodeError> {
        msg_entry(&mut Reader::new(self.take(MSG_ENTRY)?)).ok_or_else(malformed)
    }

    #[inline]
    fn rcpt(&mut self) -> Result<RcptEntry, DecodeError> {
        let v = self.version;
        rcpt_entry(&mut Reader::new(self.take(RCPT_ENTRY)?), v).ok_or_else(malformed)
    }
}
