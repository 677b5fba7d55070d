//! The checkpoint file format: a streamed, checksummed snapshot of plain
//! entries (routing keys, then per message shard its reason texts, messages and
//! recipients). What goes in and what is built from it are decided by
//! `engine::maint` (writing) and `recovery` (loading); this module only frames
//! and checks bytes. Depends on `storage::vfs` and `storage::record` only.
//!
//! Layout (little-endian): magic `MQCKPT01`, version u32, 0u32, log position
//! u64, sequence u64, next generation u32, salt u32, key count u32 and keys
//! (short strings); since version 2 a destination count u32 and per
//! destination its key index u32 and [`DestSettings`] (since version 4
//! followed by its path suspensions: count u8, then source, end, length);
//! since version 3 a source count u32 and per egress source its name (short
//! string) and [`SourceSaved`]; per shard: reason count
//! u32 and reasons, message count u32 and per message [`MsgEntry`] then its
//! [`RcptEntry`]s (since version 2 the state byte's top bit says the delay
//! warning was acknowledged); then CRC32 of all of the above u32, total length
//! u64, end magic `MQCKEND1`.
//!
//! Version 5 (a checkpoint taken while the log grows) puts the shards first,
//! right after the header — each as pieces (u32 1, then the reasons and
//! messages as above) closed by u32 0 — and the *tables* after them: key count u32 and
//! keys by bucket id (an empty string for a free id; recipient entries name
//! the bucket id, `u32::MAX` for a final recipient whose bucket was freed),
//! destination count and settings by bucket id, source count and sources,
//! then the [`Window`]; the tables' file offset u64 closes the body, before
//! the CRC. The tables are written last because keys may be added while the
//! shards are written.

use super::record::{
    decode_path_suspensions, encode_path_suspensions, DestSettings, PathSuspension, Put, Reader,
    SourceSaved,
};
use super::vfs::{writeback, VFile, Writeback};

/// File name of the checkpoint.
pub const CHECKPOINT: &str = "checkpoint";
/// File name the checkpoint is written under before its rename.
pub const CHECKPOINT_TMP: &str = "checkpoint.tmp";
pub(super) const MAGIC: &[u8; 8] = b"MQCKPT01";
const END_MAGIC: &[u8; 8] = b"MQCKEND1";
/// Checkpoint format version written (2 added destination settings and the
/// delay-warning bit, 3 egress sources' warm-up state, 4 path suspensions,
/// 5 the tables after the shards and the [`Window`]); versions 1 to 4 are
/// still read.
pub const VERSION: u32 = 5;
/// Bytes of the fixed header: magic, version, 0, position, sequence, next
/// generation, salt.
pub(super) const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 4 + 4;
/// Bucket id of a final recipient whose bucket was freed (version 5).
pub const NO_BUCKET: u32 = u32::MAX;
/// The state byte's bit for [`RcptEntry::warned`].
const WARNED_BIT: u8 = 0x80;
/// Bytes of the trailer: CRC32, total length, end magic.
pub(super) const TRAILER: usize = 4 + 8 + 8;
/// Bytes buffered before a checkpoint piece is written.
const SINK_CHUNK: usize = 256 << 10;
/// Bytes of the checkpoint file in flight to disk at most (or, without a
/// descriptor to pace it by, written between two syncs).
const WRITEBACK: u64 = 1 << 20;

/// The snapshot's position in the log and the counters to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Log position the snapshot is taken at; replay resumes here.
    pub pos: u64,
    /// Sequence number of the first record at or after `pos`.
    pub seq: u64,
    /// Next message generation.
    pub next_gen: u32,
    /// CRC salt of the queue's records.
    pub salt: u32,
}

/// What a checkpoint taken while the log grows may hold beyond its position
/// (version 5): records from the header's position up to `end` may already
/// be reflected in it (replaying them again is harmless, and an update for a
/// message it no longer holds is expected there, not damage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Log position when the snapshot ended (durable before it was installed).
    pub end: u64,
    /// Sequence number of the first record at or after `end`.
    pub seq: u64,
    /// Next message generation when the snapshot ended.
    pub next_gen: u32,
}

/// One live message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgEntry {
    /// Message id.
    pub id: u64,
    /// Segment, offset and length of its record.
    pub loc: (u32, u32, u32),
    /// When it was accepted (unix seconds).
    pub received: u32,
    /// Recipient entries that follow.
    pub rcpts: u16,
}

/// One recipient of a live message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcptEntry {
    /// Persisted state (`RcptState` as u8).
    pub state: u8,
    /// Its delay warning was acknowledged.
    pub warned: bool,
    /// Attempts so far.
    pub attempts: u16,
    /// Next attempt (unix seconds).
    pub next: u32,
    /// Index into the checkpoint's key list.
    pub bucket: u32,
    /// 1-based index into its shard's reason list; 0 for none.
    pub reason: u32,
}

/// Streams a checkpoint to a file in bounded pieces, checksumming as it goes.
/// The first write error is kept and reported by [`Writer::finish`].
pub struct Writer<'a> {
    f: &'a dyn VFile,
    buf: Vec<u8>,
    off: u64,
    crc: crc32fast::Hasher,
    err: Option<std::io::Error>,
    /// Entries are buffered, not written (the caller holds a lock).
    deferred: bool,
    /// File offset of the tables (version 5), once begun.
    tables_at: Option<u64>,
    /// Bytes known on disk: waited for, or synced.
    synced: u64,
}

impl<'a> Writer<'a> {
    /// Starts a checkpoint with its header.
    pub fn new(f: &'a dyn VFile, h: &Header) -> Self {
        let mut w = Writer {
            f,
            buf: Vec::with_capacity(SINK_CHUNK + 4096),
            off: 0,
            crc: crc32fast::Hasher::new(),
            err: None,
            deferred: false,
            tables_at: None,
            synced: 0,
        };
        w.buf.extend_from_slice(MAGIC);
        w.u32(VERSION);
        w.u32(0);
        w.u64(h.pos);
        w.u64(h.seq);
        w.u32(h.next_gen);
        w.u32(h.salt);
        w
    }

    /// While `on`, entries are only buffered (no I/O under the caller's
    /// lock; memory grows with what is written meanwhile); turning it off
    /// writes what was buffered.
    pub fn defer(&mut self, on: bool) {
        self.deferred = on;
        if !on && !self.buf.is_empty() {
            self.spill();
        }
    }

    /// Starts the tables (version 5): everything written from here on is
    /// found through the offset [`Writer::finish`] appends.
    pub fn begin_tables(&mut self) {
        self.tables_at = Some(self.off + self.buf.len() as u64);
    }

    /// Writes the window (the last entry of the tables).
    pub fn window(&mut self, w: &Window) {
        self.u64(w.end);
        self.u64(w.seq);
        self.u32(w.next_gen);
    }

    /// Writes one destination's settings (after the count of them).
    pub fn destination(&mut self, key_index: u32, d: &DestSettings, paths: &[PathSuspension]) {
        self.u32(key_index);
        d.encode(&mut self.buf);
        encode_path_suspensions(&mut self.buf, paths);
        self.maybe_spill();
    }

    /// Writes one egress source's state (after the count of them).
    pub fn source(&mut self, name: &str, st: &SourceSaved) {
        self.buf.put_short(name.as_bytes());
        st.encode(&mut self.buf);
        self.maybe_spill();
    }

    /// Writes a count (of keys, destinations, reasons or messages).
    pub fn count(&mut self, n: u32) {
        self.u32(n);
    }

    /// Writes a routing key or a reason text.
    pub fn text(&mut self, s: &str) {
        self.buf.put_short(s.as_bytes());
        self.maybe_spill();
    }

    /// Writes a message entry; its recipient entries follow.
    pub fn message(&mut self, m: &MsgEntry) {
        self.u64(m.id);
        self.u32(m.loc.0);
        self.u32(m.loc.1);
        self.u32(m.loc.2);
        self.u32(m.received);
        self.buf.extend_from_slice(&m.rcpts.to_le_bytes());
    }

    /// Writes a recipient entry.
    pub fn rcpt(&mut self, r: &RcptEntry) {
        self.buf
            .push(r.state | if r.warned { WARNED_BIT } else { 0 });
        self.buf.extend_from_slice(&r.attempts.to_le_bytes());
        self.u32(r.next);
        self.u32(r.bucket);
        self.u32(r.reason);
        self.maybe_spill();
    }

    /// Appends the tables' offset (when begun), the checksum, length and end
    /// marker; returns the file length.
    pub fn finish(mut self) -> std::io::Result<u64> {
        if let Some(at) = self.tables_at {
            self.u64(at);
        }
        self.spill();
        let crc = self.crc.clone().finalize();
        let total = self.off + TRAILER as u64;
        self.u32(crc);
        self.u64(total);
        self.buf.extend_from_slice(END_MAGIC);
        self.spill();
        match self.err {
            Some(e) => Err(e),
            None => Ok(self.off),
        }
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn spill(&mut self) {
        self.crc.update(&self.buf);
        let (at, len) = (self.off, self.buf.len() as u64);
        if self.err.is_none() {
            if let Err(e) = self.write_back(at, len) {
                self.err = Some(e);
            }
        }
        self.off += len;
        self.buf.clear();
    }

    /// Writes the buffer at `at` and lets it go to disk as it goes: one big
    /// fsync at the end would hold the disk (and every producer's commit)
    /// for its length. Where the file has a descriptor, each piece's
    /// writeback is started at once and the writer waits for what it
    /// started more than [`WRITEBACK`] ago: at most that is in flight, and
    /// the file is synced once, by the caller, at the end. (An fdatasync of
    /// a file that grows commits the filesystem's journal, which every
    /// commit of the log would wait behind: one per MiB was 30 of them for
    /// a 30 MB checkpoint.) Otherwise it is synced every [`WRITEBACK`].
    fn write_back(&mut self, at: u64, len: u64) -> std::io::Result<()> {
        self.f.write_all_at(at, &self.buf)?;
        let end = at + len;
        let paced = writeback(self.f, at, len, Writeback::Start)?;
        if end - self.synced < WRITEBACK {
            return Ok(());
        }
        if paced {
            let upto = end - WRITEBACK;
            writeback(self.f, self.synced, upto - self.synced, Writeback::Wait)?;
            self.synced = upto;
        } else {
            self.f.sync_data()?;
            self.synced = end;
        }
        Ok(())
    }

    fn maybe_spill(&mut self) {
        if self.buf.len() >= SINK_CHUNK && !self.deferred {
            self.spill();
        }
    }
}

/// Why a checkpoint was not loaded.
#[derive(Debug)]
pub enum DecodeError {
    /// An intact checkpoint of another format version: refused, never replaced
    /// by a silent full replay.
    Version(u32),
    /// Damaged or malformed: the log is replayed in full instead.
    Damaged(String),
    /// The file could not be read (an I/O error for the operator, not damage).
    Io(std::io::Error),
}

impl From<&str> for DecodeError {
    fn from(s: &str) -> Self {
        DecodeError::Damaged(s.to_string())
    }
}

/// Reads a checkpoint whose frame (magic, length, checksum, version) checked out.
pub struct Decoder<'a> {
    r: Reader<'a>,
    version: u32,
    /// The tables (version 5), read apart from the shards.
    tables: Option<Reader<'a>>,
}

pub(super) fn malformed() -> DecodeError {
    DecodeError::from("malformed contents")
}

/// The shortest file whose frame can be checked (contents may still prove
/// malformed): magic, version and header words, end marker.
pub(super) const MIN_LEN: usize = MAGIC.len() + 16 + 8 + 8;
/// Bytes of a message entry.
pub(super) const MSG_ENTRY: usize = 8 + 4 * 4 + 2;
/// Bytes of a recipient entry.
pub(super) const RCPT_ENTRY: usize = 1 + 2 + 4 * 3;

/// Checks the magic of a file of `n` bytes whose first bytes are `head`.
pub(super) fn check_magic(head: &[u8], n: usize) -> Result<(), DecodeError> {
    if n < MIN_LEN || head.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(DecodeError::from(
            "not a checkpoint (bad magic or too short)",
        ));
    }
    Ok(())
}

/// Checks the trailer (the last [`TRAILER`] bytes of a file of `n`):
/// end marker and length; returns the CRC the body must have.
pub(super) fn check_trailer(tail: &[u8], n: usize) -> Result<u32, DecodeError> {
    if tail.len() != TRAILER || &tail[TRAILER - 8..] != END_MAGIC {
        return Err(DecodeError::from("truncated (end marker missing)"));
    }
    let mut t = Reader::new(&tail[..TRAILER - 8]);
    let (crc, total) = (
        t.u32().ok_or_else(malformed)?,
        t.u64().ok_or_else(malformed)?,
    );
    if total != n as u64 {
        return Err(DecodeError::Damaged(format!(
            "length field {total} does not match file size {n}"
        )));
    }
    Ok(crc)
}

/// Reads the header (after the magic) of a checksummed body; refuses
/// another version.
pub(super) fn read_header(r: &mut Reader<'_>) -> Result<(u32, Header), DecodeError> {
    let version = r.u32().ok_or_else(malformed)?;
    if !(1..=VERSION).contains(&version) {
        return Err(DecodeError::Version(version));
    }
    r.u32().ok_or_else(malformed)?;
    let mut word = || r.u64().ok_or_else(malformed);
    let (pos, seq) = (word()?, word()?);
    let h = Header {
        pos,
        seq,
        next_gen: r.u32().ok_or_else(malformed)?,
        salt: r.u32().ok_or_else(malformed)?,
    };
    Ok((version, h))
}

/// Where the tables of a version-5 body of `len` bytes begin, given its
/// last 8 bytes: the shards lie between the header and them.
pub(super) fn tables_at(len: usize, last: &[u8]) -> Result<usize, DecodeError> {
    if len < HEADER + 8 {
        return Err(malformed());
    }
    let at = Reader::new(last).u64().ok_or_else(malformed)?;
    if at < HEADER as u64 || at > (len - 8) as u64 {
        return Err(DecodeError::from("tables offset out of range"));
    }
    Ok(at as usize)
}

/// Decodes a message entry.
pub(super) fn msg_entry(r: &mut Reader<'_>) -> Option<MsgEntry> {
    Some(MsgEntry {
        id: r.u64()?,
        loc: (r.u32()?, r.u32()?, r.u32()?),
        received: r.u32()?,
        rcpts: r.u16()?,
    })
}

/// Decodes a recipient entry of a checkpoint of `version`.
pub(super) fn rcpt_entry(r: &mut Reader<'_>, version: u32) -> Option<RcptEntry> {
    let b = r.u8()?;
    let v2 = version >= 2;
    Some(RcptEntry {
        state: if v2 { b & !WARNED_BIT } else { b },
        warned: v2 && b & WARNED_BIT != 0,
        attempts: r.u16()?,
        next: r.u32()?,
        bucket: r.u32()?,
        reason: r.u32()?,
    })
}

/// The shard entries of a checkpoint, read one by one: from a whole buffer
/// ([`Decoder`]) or streamed from the file
/// ([`super::checkpoint_stream::Stream`]).
pub trait Entries {
    /// The format version.
    fn version(&self) -> u32;
    /// Reads a count (of reasons, messages or pieces).
    fn count(&mut self) -> Result<u32, DecodeError>;
    /// Reads a reason text.
    fn text(&mut self) -> Result<&str, DecodeError>;
    /// Reads a message entry.
    fn message(&mut self) -> Result<MsgEntry, DecodeError>;
    /// Reads a recipient entry.
    fn rcpt(&mut self) -> Result<RcptEntry, DecodeError>;
}

impl Entries for Decoder<'_> {
    fn version(&self) -> u32 {
        self.version
    }
    fn count(&mut self) -> Result<u32, DecodeError> {
        Decoder::count(self)
    }
    fn text(&mut self) -> Result<&str, DecodeError> {
        Decoder::text(self)
    }
    fn message(&mut self) -> Result<MsgEntry, DecodeError> {
        Decoder::message(self)
    }
    fn rcpt(&mut self) -> Result<RcptEntry, DecodeError> {
        Decoder::rcpt(self)
    }
}

impl<'a> Decoder<'a> {
    /// Checks the frame of a whole checkpoint file and reads its header.
    pub fn open(buf: &'a [u8]) -> Result<(Header, Decoder<'a>), DecodeError> {
        let n = buf.len();
        check_magic(buf, n)?;
        let crc = check_trailer(&buf[n - TRAILER..], n)?;
        let body = &buf[..n - TRAILER];
        if crc32fast::hash(body) != crc {
            return Err(DecodeError::from("checksum mismatch"));
        }
        let mut r = Reader::new(&body[MAGIC.len()..]);
        let (version, h) = read_header(&mut r)?;
        let mut d = Decoder {
            r,
            version,
            tables: None,
        };
        if version >= 5 {
            let n = body.len();
            let at = tables_at(n, &body[n.saturating_sub(8)..])?;
            d.r = Reader::new(&body[HEADER..at]);
            d.tables = Some(Reader::new(&body[at..n - 8]));
        }
        Ok((h, d))
    }

    /// Reads a section of a checksummed file of `version` (the tables of a
    /// streamed version-5 checkpoint).
    pub fn section(buf: &'a [u8], version: u32) -> Decoder<'a> {
        Decoder {
            r: Reader::new(buf),
            version,
            tables: None,
        }
    }

    /// The format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The tables of a version-5 checkpoint (keys, settings, sources,
    /// window), read with the same methods; `None` before version 5.
    /// (Recovery streams version 5 with [`super::checkpoint_stream`].)
    #[cfg(test)]
    pub fn tables(&mut self) -> Option<Decoder<'a>> {
        self.tables.take().map(|r| Decoder {
            r,
            version: self.version,
            tables: None,
        })
    }

    /// Reads the window (the last entry of the tables).
    pub fn window(&mut self) -> Result<Window, DecodeError> {
        Ok(Window {
            end: self.r.u64().ok_or_else(malformed)?,
            seq: self.r.u64().ok_or_else(malformed)?,
            next_gen: self.u32()?,
        })
    }

    /// Reads a count (of keys, reasons or messages).
    #[inline]
    pub fn count(&mut self) -> Result<u32, DecodeError> {
        self.u32()
    }

    /// Reads a routing key or a reason text.
    #[inline]
    pub fn text(&mut self) -> Result<&'a str, DecodeError> {
        self.r.short_str().ok_or_else(malformed)
    }

    /// Reads a message entry.
    #[inline]
    pub fn message(&mut self) -> Result<MsgEntry, DecodeError> {
        msg_entry(&mut self.r).ok_or_else(malformed)
    }

    /// Reads the count of destination settings (none before version 2).
    pub fn destinations(&mut self) -> Result<u32, DecodeError> {
        if self.version < 2 {
            return Ok(0);
        }
        self.u32()
    }

    /// Reads one destination's settings: (key index, settings, path
    /// suspensions — none before version 4).
    pub fn destination(&mut self) -> Result<(u32, DestSettings, Vec<PathSuspension>), DecodeError> {
        let k = self.u32()?;
        let d = DestSettings::decode(&mut self.r).ok_or_else(malformed)?;
        let paths = if self.version >= 4 {
            decode_path_suspensions(&mut self.r).ok_or_else(malformed)?
        } else {
            Vec::new()
        };
        Ok((k, d, paths))
    }

    /// Reads the count of egress sources (none before version 3).
    pub fn sources(&mut self) -> Result<u32, DecodeError> {
        if self.version < 3 {
            return Ok(0);
        }
        self.u32()
    }

    /// Reads one egress source's state: (name, state).
    pub fn source(&mut self) -> Result<(&'a str, SourceSaved), DecodeError> {
        let name = self.text()?;
        Ok((
            name,
            SourceSaved::decode(&mut self.r).ok_or_else(malformed)?,
        ))
    }

    /// Reads a recipient entry.
    #[inline]
    pub fn rcpt(&mut self) -> Result<RcptEntry, DecodeError> {
        rcpt_entry(&mut self.r, self.version).ok_or_else(malformed)
    }

    /// Checks that nothing follows the last entry.
    pub fn end(&self) -> Result<(), DecodeError> {
        if self.r.remaining() != 0 {
            return Err(DecodeError::from("trailing bytes"));
        }
        Ok(())
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.r.u32().ok_or_else(malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::checkpoint_stream::{self, Opened};
    use crate::storage::vfs::Vfs;
    use crate::testing::simfs::SimFs;
    use std::path::Path;

    #[test]
    fn entries_roundtrip_and_damage_is_detected() {
        let fs = SimFs::new();
        let f = fs.open(Path::new("/c"), true).unwrap();
        let h = Header {
            pos: 7,
            seq: 9,
            next_gen: 3,
            salt: 5,
        };
        let m = MsgEntry {
            id: 42,
            loc: (1, 2, 3),
            received: 4,
            rcpts: 1,
        };
        let r = RcptEntry {
            state: 2,
            warned: true,
            attempts: 3,
            next: 4,
            bucket: 0,
            reason: 1,
        };
        let mut w = Writer::new(&*f, &h);
        let ds = DestSettings {
            suspended: true,
            resume_at: 9,
            suspend_secs: 8,
            limit: 3,
            rate: [0, 6, 0, 1000],
            throttle_until: 77,
            throttle_secs: 60,
            throttle_window: 1,
            throttle_rate: [0, 6, 0, 0],
            own_limit: 0,
            own_rate: [0, 0, 0, 1000],
            path_limit: 2,
            path_rate: [0, 0, 50, 0],
        };
        let src = SourceSaved {
            day: 4,
            window_start: 86_400,
            used: 17,
        };
        let ps = vec![PathSuspension {
            source: "ip-2".into(),
            until: 99,
            secs: 60,
        }];
        let win = Window {
            end: 1 << 33,
            seq: 12,
            next_gen: 5,
        };
        // Version 5: the shard first (buffered while "under a lock"), the
        // tables after it.
        w.defer(true);
        w.count(1);
        w.text("451 try later");
        w.count(1);
        w.message(&m);
        w.rcpt(&r);
        w.defer(false);
        w.begin_tables();
        w.count(2);
        w.text("");
        w.text("example.com");
        w.count(1);
        w.destination(1, &ds, &ps);
        w.count(1);
        w.source("ip-1", &src);
        w.window(&win);
        let len = w.finish().unwrap();
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(0, &mut buf).unwrap();
        let (h2, mut d) = Decoder::open(&buf).unwrap();
        assert_eq!(h2, h);
        assert_eq!(d.version(), VERSION);
        let mut t = d.tables().expect("version 5 has tables");
        assert_eq!(t.count().unwrap(), 2);
        assert_eq!(t.text().unwrap(), "");
        assert_eq!(t.text().unwrap(), "example.com");
        assert_eq!(t.destinations().unwrap(), 1);
        assert_eq!(t.destination().unwrap(), (1, ds, ps));
        assert_eq!(t.sources().unwrap(), 1);
        assert_eq!(t.source().unwrap(), ("ip-1", src));
        assert_eq!(t.window().unwrap(), win);
        t.end().unwrap();
        assert_eq!(d.count().unwrap(), 1);
        assert_eq!(d.text().unwrap(), "451 try later");
        assert_eq!(d.count().unwrap(), 1);
        assert_eq!(d.message().unwrap(), m);
        assert_eq!(d.rcpt().unwrap(), r);
        d.end().unwrap();
        // Streamed: the same entries.
        let Ok(Opened::Streamed {
            header,
            tables,
            shards: mut d,
        }) = checkpoint_stream::open(&*f)
        else {
            panic!("version 5 is streamed");
        };
        assert_eq!(header, h);
        let mut t = Decoder::section(&tables, VERSION);
        assert_eq!(t.count().unwrap(), 2);
        assert_eq!(t.text().unwrap(), "");
        assert_eq!(t.text().unwrap(), "example.com");
        assert_eq!(Entries::count(&mut d).unwrap(), 1);
        assert_eq!(Entries::text(&mut d).unwrap(), "451 try later");
        assert_eq!(Entries::count(&mut d).unwrap(), 1);
        assert_eq!(Entries::message(&mut d).unwrap(), m);
        assert!(d.end().is_err(), "a recipient entry is left");
        assert_eq!(Entries::rcpt(&mut d).unwrap(), r);
        d.end().unwrap();
        assert!(Entries::count(&mut d).is_err(), "nothing past the shards");
        // Bytes that read differently after the checksum pass (here: the
        // message's `received`, which still decodes) are found by `end`.
        let Ok(Opened::Streamed { shards: mut d, .. }) = checkpoint_stream::open(&*f) else {
            panic!("version 5 is streamed");
        };
        let received_at = HEADER + 4 + (2 + "451 try later".len()) + 4 + 8 + 12;
        let mut b = [0u8; 1];
        f.read_exact_at(received_at as u64, &mut b).unwrap();
        f.write_all_at(received_at as u64, &[b[0] ^ 1]).unwrap();
        Entries::count(&mut d).unwrap();
        Entries::text(&mut d).unwrap();
        Entries::count(&mut d).unwrap();
        assert_eq!(Entries::message(&mut d).unwrap().received, m.received ^ 1);
        Entries::rcpt(&mut d).unwrap();
        match d.end() {
            Err(DecodeError::Damaged(why)) => assert!(why.contains("checksum"), "{why}"),
            other => panic!("{other:?}"),
        }
        f.write_all_at(received_at as u64, &b).unwrap();
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(Decoder::open(&bad).is_err(), "flip at {i} detected");
            let g = fs.open(Path::new("/bad"), true).unwrap();
            g.write_all_at(0, &bad).unwrap();
            assert!(
                checkpoint_stream::open(&*g).is_err(),
                "flip at {i} detected"
            );
        }
        // Truncated anywhere: refused by the frame.
        for n in 0..buf.len() {
            let g = fs.open(Path::new(&format!("/short{n}")), true).unwrap();
            g.write_all_at(0, &buf[..n]).unwrap();
            assert!(checkpoint_stream::open(&*g).is_err(), "{n} bytes refused");
        }
    }
}
