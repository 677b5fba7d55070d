//! The append-only log: segment files, group commit, bounded `pread` reads
//! with read-ahead. Depends on `storage::vfs`, `storage::record` and `types`.
//!
//! Appenders frame their records into a private buffer without any lock, then
//! take the log mutex only to reserve a position, stamp sequence numbers and
//! checksums, and queue the buffer. Whoever then needs durability becomes the
//! *leader*: it takes every queued buffer, writes and fdatasyncs them outside
//! the lock, and wakes the *followers* whose positions it covered. A failed
//! write or sync poisons the log for good (see `docs/design.md`, "commit").

use crate::error::{Error, Result};
use crate::storage::record::{self, Kind, HEADER_LEN};
use crate::storage::vfs::{writeback, VFile, Vfs, Writeback};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A log position: a segment number and a byte offset in it, ordered as the
/// log is (packed in a u64: segment in the high 32 bits, offset in the low 32).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos(u64);

impl Pos {
    /// Offset `off` of segment `seg`.
    pub fn new(seg: u32, off: u64) -> Pos {
        Pos(((seg as u64) << 32) | (off & 0xffff_ffff))
    }

    /// The segment.
    pub fn seg(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The offset in the segment.
    pub fn off(self) -> u64 {
        self.0 & 0xffff_ffff
    }

    /// The packed form, as a checkpoint stores it.
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// A position from its packed form.
    pub fn from_raw(raw: u64) -> Pos {
        Pos(raw)
    }
}

/// File name of a segment.
pub fn segment_name(seg: u32) -> String {
    format!("{seg:08x}.seg")
}

/// File name of the zero-filled file made ahead for segment `seg` (see
/// [`Log::prepare_next`]); recovery removes any it finds.
pub fn prepared_name(seg: u32) -> String {
    format!("{seg:08x}.seg.pre")
}

/// File name of a deleted segment's file kept to be reused as a later
/// segment's file made ahead, or being given back a piece at a time (see
/// [`Log::remove_segments`]); recovery removes any it finds.
pub fn spare_name(seg: u32) -> String {
    format!("{seg:08x}.seg.spare")
}

/// Whether `name` is a deleted segment's file kept for reuse.
pub fn is_spare_name(name: &str) -> bool {
    name.strip_suffix(".seg.spare")
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Most deleted segments' files kept for reuse at once (each is a segment's
/// worth of disk until it is reused)…
const MAX_SPARES: usize = 4;
/// … and how long one is kept unused (milliseconds): an idle queue gives
/// the disk back ([`Log::trim_spares`]).
pub const SPARE_KEEP_MS: u64 = 10 * 60 * 1000;

/// A deleted segment's file that is not kept is given back in eighths of a
/// segment, one at least this many milliseconds after the previous
/// ([`Log::give_back`]): with online discard (ext4 `-o discard`) a file
/// freed whole is a discard of a segment at the next journal commit, which
/// every concurrent commit waits behind (an 8 KiB append+fdatasync: 14–15 ms
/// at worst while 64 MiB files were unlinked, 3–4.5 ms while they were cut
/// by 8 MiB every 20 ms).
const GIVE_BACK_MS: u64 = 20;
/// Most deleted segments' files being given back at once; older ones are
/// deleted whole (as before pieces) when more die than are given back.
const MAX_DYING: usize = 4;

/// Whether `name` is a file made ahead for a segment.
pub fn is_prepared_name(name: &str) -> bool {
    name.strip_suffix(".seg.pre")
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Records framed by one caller, not yet placed in the log.
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    /// (start offset in buf, payload len, payload crc, kind)
    recs: Vec<(usize, usize, u32, Kind)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` small records (recipient updates)
    /// before it grows.
    pub fn with_capacity(n: usize) -> Self {
        Batch {
            buf: Vec::with_capacity(n * 64),
            recs: Vec::with_capacity(n),
        }
    }

    /// Appends a record whose payload is written by `fill`; returns its offset in the batch.
    pub fn push(&mut self, kind: Kind, fill: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = record::begin_frame(&mut self.buf, kind);
        fill(&mut self.buf);
        let (len, crc) = record::end_frame(&mut self.buf, start);
        self.recs.push((start, len, crc, kind));
        start
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Bytes in the batch.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Payload length of the record starting at `start`.
    pub fn record_len(&self, start: usize) -> usize {
        self.recs
            .iter()
            .find(|r| r.0 == start)
            .map(|r| record::padded(HEADER_LEN + r.1))
            .unwrap_or(0)
    }

    fn stamp(&mut self, first_seq: u64, salt: u32) {
        for (i, &(start, len, pcrc, kind)) in self.recs.iter().enumerate() {
            let seq = first_seq + i as u64;
            record::stamp(&mut self.buf[start..], kind, seq, salt, len, pcrc);
        }
    }
}

struct Chunk {
    seg: u32,
    off: u64,
    buf: Vec<u8>,
    /// The segment file must be created before writing this chunk.
    create: bool,
}

/// A follower parked until the durable position reaches `target`.
struct Waiter {
    target: Pos,
    id: u64,
    thread: std::thread::Thread,
}

struct Inner {
    waiters: Vec<Waiter>,
    next_waiter: u64,
    active: u32,
    reserved: u64,
    next_seq: u64,
    chunks: Vec<Chunk>,
    pending_bytes: usize,
    /// When (clock milliseconds) the oldest unsynced, unwaited record was queued.
    oldest_pending: Option<u64>,
    flushing: bool,
    durable: Pos,
    poisoned: Option<String>,
}

/// Most segment files kept open at once (sealed ones are reopened on demand), so
/// that a queue with thousands of segments never runs out of descriptors.
pub const MAX_OPEN_SEGMENTS: usize = 64;

/// See [`Log::sync_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Nothing buffered (or a commit is running).
    Idle,
    /// Buffered records are due for a sync now.
    Due,
    /// Buffered records must be synced by this clock time (ms).
    Pending(u64),
}

/// Size of one read-ahead block.
pub const READ_AHEAD_BLOCK: usize = 64 << 10;
/// Read-ahead blocks kept (per queue): at most 512 KiB.
const READ_AHEAD_BLOCKS: usize = 8;

/// A few recently read blocks of segments, for readers that walk a segment
/// forward. Blocks are immutable copies (`Bytes`), so a hit is a zero-copy
/// slice; only durably written bytes are ever read into them, and those never
/// change, so a block can never be stale. A removed segment's blocks are dropped.
#[derive(Default)]
struct ReadAhead {
    /// (segment, file offset, bytes, last use).
    blocks: Vec<(u32, u64, Bytes, u64)>,
    /// Where the last read of each recently read segment ended.
    last_end: Vec<(u32, u64)>,
    clock: u64,
}

impl ReadAhead {
    fn lookup(&mut self, seg: u32, off: u64, len: u64) -> Option<Bytes> {
        self.clock += 1;
        let now = self.clock;
        let b = self
            .blocks
            .iter_mut()
            .find(|b| b.0 == seg && b.1 <= off && off + len <= b.1 + b.2.len() as u64)?;
        b.3 = now;
        let start = (off - b.1) as usize;
        let hit = b.2.slice(start..start + len as usize);
        self.note(seg, off + len);
        Some(hit)
    }

    /// True when a read at `off` continues forward from the last one in `seg`.
    fn sequential(&self, seg: u32, off: u64) -> bool {
        self.last_end
            .iter()
            .any(|&(s, e)| s == seg && off >= e && off - e < READ_AHEAD_BLOCK as u64)
    }

    fn note(&mut self, seg: u32, end: u64) {
        match self.last_end.iter_mut().find(|e| e.0 == seg) {
            Some(e) => e.1 = end,
            None => {
                if self.last_end.len() >= 2 * READ_AHEAD_BLOCKS {
                    self.last_end.remove(0);
                }
                self.last_end.push((seg, end));
            }
        }
    }

    fn insert(&mut self, seg: u32, off: u64, block: Bytes) {
        self.clock += 1;
        let entry = (seg, off, block, self.clock);
        if self.blocks.len() < READ_AHEAD_BLOCKS {
            self.blocks.push(entry);
        } else if let Some(old) = self.blocks.iter_mut().min_by_key(|b| b.3) {
            *old = entry;
        }
    }

    fn forget(&mut self, seg: u32) {
        self.blocks.retain(|b| b.0 != seg);
        self.last_end.retain(|e| e.0 != seg);
    }
}

/// Length of a segment's header record: a segment holding only this holds no data.
fn segment_header_len() -> u64 {
    record::padded(HEADER_LEN + record::segment_header(0, 0).len()) as u64
}

/// The cache of open segment files.
#[derive(Default)]
struct Files {
    open: HashMap<u32, (Arc<dyn VFile>, u64)>,
    clock: u64,
    /// Segments deleted by compaction: never reopened (a reader holding a stale
    /// location gets an error and re-checks where the message lives now).
    removed: HashSet<u32>,
    /// Handles evicted from `open` that someone may still hold (a delivery
    /// keeps its segment's file for its lifetime): a segment's file is
    /// reused only when no handle to it is held anywhere.
    evicted: Vec<(u32, std::sync::Weak<dyn VFile>)>,
    /// Segments whose file was handed out as a descriptor of the caller's
    /// own (it stays valid after its delivery ends): never reused.
    exported: HashSet<u32>,
}

impl Files {
    /// Forgets segment `seg` (deleted): no handle is given out any more;
    /// returns whether none is held either (its file may then be reused:
    /// nobody reads it through an old handle).
    fn forget(&mut self, seg: u32) -> bool {
        self.removed.insert(seg);
        let cached = self.open.remove(&seg);
        self.evicted.retain(|(_, w)| w.strong_count() > 0);
        let exported = self.exported.remove(&seg);
        !exported
            && cached.is_none_or(|(f, _)| Arc::strong_count(&f) == 1)
            && !self.evicted.iter().any(|(s, _)| *s == seg)
    }
}

/// Clears `flushing` and poisons the log if the leader's write unwinds (a panic
/// in a custom `Vfs`), so that no follower, `close()` or drop parks forever.
struct FlushGuard<'a> {
    log: &'a Log,
    armed: bool,
}

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut g = self.log.inner.lock();
        g.flushing = false;
        if g.poisoned.is_none() {
            g.poisoned = Some("a storage call panicked during a commit".into());
        }
        for w in g.waiters.drain(..) {
            w.thread.unpark();
        }
    }
}

/// Bytes of the next segment's file zeroed per [`Log::prepare_next`] call.
pub const PREPARE_SLICE: u64 = 4 << 20;

/// Writes zeros over `[from, to)` of `f`, a MiB at a time, each MiB's
/// writeback started at once (`sync_file_range`, where the file has a
/// descriptor) so the disk's queue never holds much ahead of concurrent
/// commits. Not synced: an fdatasync of a file that grows commits a journal
/// transaction every commit of the log would wait behind, so the caller syncs
/// once, when the file is complete.
fn zero_fill(f: &dyn VFile, from: u64, to: u64) -> std::io::Result<()> {
    const PIECE: u64 = 1 << 20;
    let zeros = vec![0u8; PIECE as usize];
    let mut off = from;
    while off < to {
        let n = (to - off).min(PIECE);
        f.write_all_at(off, &zeros[..n as usize])?;
        writeback(f, off, n, Writeback::Start)?;
        off += n;
    }
    Ok(())
}

/// The page size the kernel's cache works in (4 KiB, or a multiple of it).
const PAGE: u64 = 4096;

/// Pads `buf`, to be written at `off` into a file made ahead (at least
/// `len` long), with zeros to the end of its last page. A write that covers
/// part of a page the kernel does not hold reads the page from disk first;
/// a deleted segment's file reused is not in the cache (nor is a zero-filled
/// one whose pages were dropped), so each commit would wait for one read.
/// Covering whole pages, it never does, but for a commit's first page,
/// which is the previous commit's last, written whole (read again only if
/// the kernel dropped it in between). The zeros lie past the log's end,
/// where recovery reads zeros as the end of a segment, and the next commit
/// overwrites them; they cost no I/O (pages are written back whole). Never
/// past `len`: a file is not grown by it.
fn pad_to_page(off: u64, buf: &mut Vec<u8>, len: u64) {
    let end = off + buf.len() as u64;
    let to = end.next_multiple_of(PAGE).min(len);
    if to > end {
        buf.resize(buf.len() + (to - end) as usize, 0);
    }
}

/// Statistics of the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogCounters {
    /// fdatasync calls on segments.
    pub syncs: u64,
    /// Group commits (leader flushes).
    pub commits: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Segments whose file made ahead was a deleted segment's (not zero-filled).
    pub reused: u64,
}

/// A deleted segment's file being given back: its segment, bytes left (or
/// `u64::MAX` before the first piece), whether a piece is being cut now.
type Dying = (u32, u64, bool);

/// A file being made ahead: its segment, the file, bytes zeroed so far.
type Filling = (u32, Arc<dyn VFile>, u64);

/// The log.
pub struct Log {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    seg_max: u64,
    salt: u32,
    sync_interval: Duration,
    sync_bytes: usize,
    clock: Arc<dyn crate::types::Clock>,
    inner: Mutex<Inner>,
    /// Open segment files, least recently used evicted beyond [`MAX_OPEN_SEGMENTS`]
    /// (the highest-numbered one, being written, is never evicted).
    files: Mutex<Files>,
    readahead: Mutex<ReadAhead>,
    /// Lengths of sealed segments (they never change while open).
    sealed_len: Mutex<HashMap<u32, u64>>,
    counters: Mutex<LogCounters>,
    /// Zero-fill the next segment ahead ([`Log::prepare_next`]).
    preallocate: bool,
    /// `Inner::active` and `Inner::reserved`, readable without the log mutex.
    active_seg: AtomicU32,
    active_fill: AtomicU64,
    /// The segment a file was last made ahead for (made or failed: not tried
    /// again for it); `u64::MAX` for none.
    prepared_for: AtomicU64,
    /// A zero-filled file ready for this segment.
    prepared: Mutex<Option<(u32, Arc<dyn VFile>)>>,
    /// The segment whose file was made ahead (a segment long, at least):
    /// its commits are padded to whole pages ([`pad_to_page`]); `u64::MAX`
    /// for none.
    made_ahead: AtomicU64,
    /// The file being made ahead: its segment, the file, bytes zeroed so far
    /// (held while a slice is written).
    preparing: Mutex<Option<Filling>>,
    /// Its segment and bytes zeroed, readable without that mutex.
    prep_seg: AtomicU64,
    prep_done: AtomicU64,
    /// Deleted segments whose files are kept (as [`spare_name`]) to be
    /// reused by [`Log::prepare_next`] instead of zero-filling a new file,
    /// and when each was kept (clock milliseconds).
    spares: Mutex<Vec<(u32, u64)>>,
    /// Deleted segments' files not kept, renamed [`spare_name`], being
    /// given back a piece at a time, oldest first: (segment, bytes left, or
    /// `u64::MAX` before the first piece, being cut now), and when the next
    /// piece is due (clock ms).
    dying: Mutex<(Vec<Dying>, u64)>,
}

/// Parameters for opening the log after recovery.
pub struct LogStart {
    /// Active segment number.
    pub active: u32,
    /// Valid length of the active segment (0 when it must be created).
    pub len: u64,
    /// Next sequence number.
    pub next_seq: u64,
    /// CRC salt of this queue.
    pub salt: u32,
}

impl Log {
    /// Opens the log at the state recovery found. With `preallocate`, files
    /// for coming segments are zero-filled ahead by [`Log::prepare_next`].
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        start: LogStart,
        seg_max: u64,
        sync_interval: Duration,
        sync_bytes: usize,
        clock: Arc<dyn crate::types::Clock>,
        preallocate: bool,
    ) -> Result<Log> {
        let log = Log {
            vfs,
            dir: dir.to_path_buf(),
            seg_max,
            salt: start.salt,
            sync_interval,
            sync_bytes,
            clock,
            inner: Mutex::new(Inner {
                waiters: Vec::new(),
                next_waiter: 0,
                active: start.active,
                reserved: start.len,
                next_seq: start.next_seq,
                chunks: Vec::new(),
                pending_bytes: 0,
                oldest_pending: None,
                flushing: false,
                durable: Pos::new(start.active, start.len),
                poisoned: None,
            }),
            files: Mutex::new(Files::default()),
            readahead: Mutex::new(ReadAhead::default()),
            sealed_len: Mutex::new(HashMap::new()),
            counters: Mutex::new(LogCounters::default()),
            preallocate,
            active_seg: AtomicU32::new(start.active),
            active_fill: AtomicU64::new(start.len),
            prepared_for: AtomicU64::new(u64::MAX),
            prepared: Mutex::new(None),
            made_ahead: AtomicU64::new(u64::MAX),
            preparing: Mutex::new(None),
            prep_seg: AtomicU64::new(u64::MAX),
            prep_done: AtomicU64::new(0),
            spares: Mutex::new(Vec::new()),
            dying: Mutex::new((Vec::new(), 0)),
        };
        if start.len > 0 && preallocate {
            // Reopened in a file made ahead: its commits are padded too.
            let long = log.file(start.active, false).and_then(|f| {
                f.len()
                    .map_err(|e| Error::io("stat segment", log.path(start.active), e))
            });
            if long.is_ok_and(|l| l >= seg_max) {
                log.made_ahead.store(start.active as u64, Ordering::Relaxed);
            }
        }
        if start.len == 0 {
            // A fresh active segment: write its header durably now.
            let mut b = Batch::new();
            b.push(Kind::SegmentHeader, |p| {
                p.extend_from_slice(&record::segment_header(start.active, start.salt))
            });
            let mut g = log.inner.lock();
            g.durable = Pos::new(start.active, 0);
            let next = g.next_seq;
            b.stamp(next, start.salt);
            g.next_seq += 1;
            g.reserved = b.buf.len() as u64;
            g.chunks.push(Chunk {
                seg: start.active,
                off: 0,
                buf: b.buf,
                create: true,
            });
            drop(g);
            log.sync_all()?;
        }
        Ok(log)
    }

    fn path(&self, seg: u32) -> PathBuf {
        self.dir.join(segment_name(seg))
    }

    /// Reserves a place for `batch` and queues it. Returns the position of the batch start.
    /// Nothing is durable until [`Log::sync_to`] covers the returned end position.
    pub fn append(&self, mut batch: Batch) -> Result<(Pos, Pos)> {
        if batch.is_empty() {
            let g = self.inner.lock();
            return Ok((
                Pos::new(g.active, g.reserved),
                Pos::new(g.active, g.reserved),
            ));
        }
        let mut g = self.inner.lock();
        if let Some(p) = &g.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        let len = batch.buf.len() as u64;
        if g.reserved + len > self.seg_max && g.reserved > segment_header_len() {
            // Roll to a new segment; its header goes first.
            let seg = g.active.checked_add(1).ok_or_else(|| {
                Error::InvalidOption(
                    "segment numbers exhausted; compact and recreate the queue".into(),
                )
            })?;
            let mut h = Batch::new();
            h.push(Kind::SegmentHeader, |p| {
                p.extend_from_slice(&record::segment_header(seg, self.salt))
            });
            let s = g.next_seq;
            h.stamp(s, self.salt);
            g.next_seq += 1;
            g.active = seg;
            self.active_seg.store(seg, Ordering::Release);
            g.reserved = h.buf.len() as u64;
            g.pending_bytes += h.buf.len();
            g.chunks.push(Chunk {
                seg,
                off: 0,
                buf: h.buf,
                create: true,
            });
        }
        if g.reserved + len > u32::MAX as u64 {
            return Err(Error::TooLarge {
                what: "log segment",
                len: len as usize,
                limit: u32::MAX as usize,
            });
        }
        let first = g.next_seq;
        batch.stamp(first, self.salt);
        g.next_seq += batch.recs.len() as u64;
        let start = Pos::new(g.active, g.reserved);
        g.reserved += len;
        self.active_fill.store(g.reserved, Ordering::Relaxed);
        let end = Pos::new(g.active, g.reserved);
        g.pending_bytes += batch.buf.len();
        if g.oldest_pending.is_none() {
            g.oldest_pending = Some(self.clock.now_millis());
        }
        let (seg, off) = (g.active, start.off());
        match g.chunks.last_mut() {
            Some(c)
                if c.seg == seg && c.off + c.buf.len() as u64 == off && c.buf.len() < (1 << 20) =>
            {
                c.buf.extend_from_slice(&batch.buf)
            }
            _ => g.chunks.push(Chunk {
                seg,
                off,
                buf: batch.buf,
                create: false,
            }),
        }
        Ok((start, end))
    }

    /// In one lock round trip: whether buffered records are due for a sync at
    /// `now` (clock ms), else their deadline, if any are buffered.
    pub fn sync_state(&self, now: u64) -> SyncState {
        let g = self.inner.lock();
        let Some(t) = g.oldest_pending else {
            return SyncState::Idle;
        };
        let interval = self.sync_interval.as_millis().min(u64::MAX as u128) as u64;
        if g.flushing {
            // Records queued after the running commit took its batch are not
            // covered by it, and nobody waits for them: keep their deadline
            // armed (without blocking this caller behind the commit).
            return SyncState::Pending(t.saturating_add(interval));
        }
        if g.pending_bytes >= self.sync_bytes || now < t || now - t >= interval {
            SyncState::Due
        } else {
            SyncState::Pending(t.saturating_add(interval))
        }
    }

    /// When (clock milliseconds) buffered records must be synced, if any are buffered.
    pub fn sync_deadline(&self) -> Option<u64> {
        let g = self.inner.lock();
        g.oldest_pending
            .map(|t| t.saturating_add(self.sync_interval.as_millis().min(u64::MAX as u128) as u64))
    }

    /// Waits until everything before `target` is durable, leading a group commit if needed.
    ///
    /// Followers park individually and the leader wakes exactly those its flush
    /// made durable, plus one more to lead the next batch when work is queued and it
    /// does not continue itself: on a small machine, waking every waiter on every
    /// commit (most of them only to sleep again) costs more CPU than the commit.
    pub fn sync_to(&self, target: Pos) -> Result<()> {
        let mut g = self.inner.lock();
        let mut led = false;
        let mut extra_round = true;
        loop {
            // Durability first: a follower whose bytes were made durable before a
            // later commit failed was acknowledged truthfully (a `Poisoned` here
            // would make the client retry and queue a duplicate).
            if g.durable >= target {
                let more = !g.flushing && !g.chunks.is_empty();
                // A leader that finds the next batch already queued flushes it too
                // (once) instead of handing over: a sleeping follower would need a
                // scheduler round trip before the disk gets busy again.
                if !(led && extra_round && more) {
                    if more {
                        Self::wake_leader(&mut g);
                    }
                    return Ok(());
                }
                extra_round = false;
            }
            if let Some(p) = &g.poisoned {
                return Err(Error::Poisoned(p.clone()));
            }
            if g.flushing {
                let id = g.next_waiter;
                g.next_waiter += 1;
                g.waiters.push(Waiter {
                    target,
                    id,
                    thread: std::thread::current(),
                });
                drop(g);
                std::thread::park();
                g = self.inner.lock();
                g.waiters.retain(|w| w.id != id);
                continue;
            }
            led = true;
            g.flushing = true;
            let chunks = std::mem::take(&mut g.chunks);
            let end = Pos::new(g.active, g.reserved);
            g.pending_bytes = 0;
            g.oldest_pending = None;
            drop(g);
            let mut guard = FlushGuard {
                log: self,
                armed: true,
            };
            let res = self.write_chunks(chunks);
            guard.armed = false;
            g = self.inner.lock();
            g.flushing = false;
            match res {
                Ok(()) => {
                    g.durable = end;
                    let durable = g.durable;
                    g.waiters.retain(|w| {
                        if w.target <= durable {
                            w.thread.unpark();
                            false
                        } else {
                            true
                        }
                    });
                }
                Err(e) => {
                    if g.poisoned.is_none() {
                        g.poisoned = Some(e.to_string());
                    }
                    for w in g.waiters.drain(..) {
                        w.thread.unpark();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Wakes the waiter with the lowest target to lead the next commit.
    fn wake_leader(g: &mut Inner) {
        if let Some(i) = (0..g.waiters.len()).min_by_key(|&i| g.waiters[i].target) {
            let w = g.waiters.swap_remove(i);
            w.thread.unpark();
        }
    }

    /// Makes everything appended so far durable.
    pub fn sync_all(&self) -> Result<()> {
        let end = self.end();
        self.sync_to(end)
    }

    /// Position after the last reserved byte.
    pub fn end(&self) -> Pos {
        let g = self.inner.lock();
        Pos::new(g.active, g.reserved)
    }

    /// Position after the last reserved byte and the sequence number the next record gets.
    pub fn end_and_seq(&self) -> (Pos, u64) {
        let g = self.inner.lock();
        (Pos::new(g.active, g.reserved), g.next_seq)
    }

    /// The active segment number.
    pub fn active_segment(&self) -> u32 {
        self.inner.lock().active
    }

    /// The poison reason, if any.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.lock().poisoned.clone()
    }

    /// Counters.
    pub fn counters(&self) -> LogCounters {
        *self.counters.lock()
    }

    /// The open file of a segment (kept open while the caller holds it).
    pub fn segment_file(&self, seg: u32) -> Result<Arc<dyn VFile>> {
        self.file(seg, false)
    }

    /// Notes that a descriptor of segment `seg`'s file goes to the caller,
    /// who may read it for as long as it likes: once deleted, its file is
    /// never reused (reuse overwrites it). Called while a handle to the file
    /// is held (a delivery's), so a deletion before this sees that handle.
    pub fn export_segment(&self, seg: u32) {
        let mut files = self.files.lock();
        if !files.removed.contains(&seg) {
            files.exported.insert(seg);
        }
    }

    fn file(&self, seg: u32, create: bool) -> Result<Arc<dyn VFile>> {
        let removed = || Error::Corrupt {
            path: self.path(seg),
            offset: 0,
            reason: "segment was removed by compaction".into(),
        };
        {
            let mut files = self.files.lock();
            files.clock += 1;
            let now = files.clock;
            if let Some(e) = files.open.get_mut(&seg) {
                e.1 = now;
                return Ok(e.0.clone());
            }
            if files.removed.contains(&seg) {
                return Err(removed());
            }
        }
        // Opened without the cache lock (other readers go on meanwhile).
        let path = self.path(seg);
        let f = match self.vfs.open(&path, create) {
            Ok(f) => f,
            // A segment that should hold a live message and does not exist is damage,
            // not a transient I/O error (retrying would spin forever).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Corrupt {
                    path,
                    offset: 0,
                    reason: "segment file is missing".into(),
                })
            }
            Err(e) => return Err(Error::io("open segment", &path, e)),
        };
        self.cache_file(seg, f).ok_or_else(removed)
    }

    /// Puts an opened segment file in the cache (or returns the one another
    /// thread put there meanwhile); `None` when the segment was removed.
    fn cache_file(&self, seg: u32, f: Arc<dyn VFile>) -> Option<Arc<dyn VFile>> {
        let mut files = self.files.lock();
        if files.removed.contains(&seg) {
            // Removed while we opened it: never cache (it would pin the disk space).
            return None;
        }
        files.clock += 1;
        let now = files.clock;
        if let Some(e) = files.open.get_mut(&seg) {
            e.1 = now;
            return Some(e.0.clone());
        }
        if files.open.len() >= MAX_OPEN_SEGMENTS {
            // Evict the least recently used handle, never the segment being written
            // (the highest number). Holders of an evicted Arc keep it valid.
            let newest = files.open.keys().copied().max().unwrap_or(0).max(seg);
            if let Some(&victim) = files
                .open
                .iter()
                .filter(|(&s, _)| s != newest)
                .min_by_key(|(_, e)| e.1)
                .map(|(s, _)| s)
            {
                if let Some((f, _)) = files.open.remove(&victim) {
                    files.evicted.retain(|(_, w)| w.strong_count() > 0);
                    if Arc::strong_count(&f) > 1 {
                        files.evicted.push((victim, Arc::downgrade(&f)));
                    }
                }
            }
        }
        files.open.insert(seg, (f.clone(), now));
        Some(f)
    }

    /// Whether a slice of the next segment's file should be made now: the
    /// active segment is an eighth full and its successor's file is not
    /// complete (cheap: atomics only; see [`Log::prepare_next`]). An idle
    /// queue with room in its segment does not want one.
    pub fn wants_prepare(&self) -> bool {
        if !self.preallocate || self.preparing.is_locked() {
            return false;
        }
        let Some(next) = self.active_seg.load(Ordering::Relaxed).checked_add(1) else {
            return false;
        };
        let next = next as u64;
        let fill = self.active_fill.load(Ordering::Relaxed);
        fill >= self.seg_max / 8
            && self.prepared_for.load(Ordering::Relaxed) != next
            && (self.prep_seg.load(Ordering::Relaxed) != next
                || self.prep_done.load(Ordering::Relaxed) < self.fill_goal(fill))
    }

    /// How much of the next segment's file should be zeroed when the active
    /// segment holds `fill` bytes: in step with it, from nothing at an
    /// eighth full to all of it at three quarters (so the extra writes are
    /// spread over the segment's life instead of a burst that the commits
    /// would queue behind), in whole MiB.
    fn fill_goal(&self, fill: u64) -> u64 {
        let (from, to) = (self.seg_max / 8, self.seg_max / 4 * 3);
        let part = fill.saturating_sub(from) as u128 * self.seg_max as u128
            / to.saturating_sub(from).max(1) as u128;
        (part as u64)
            .div_ceil(1 << 20)
            .saturating_mul(1 << 20)
            .max(1 << 20)
            .min(self.seg_max)
    }

    /// Zero-fills, a slice per call, a file for the segment after the
    /// active one, so that the commits into it overwrite allocated, already
    /// written blocks: their fdatasync has no file size or extent change to
    /// commit with the data (on ext4 here a 69 KB commit takes 0.11 ms
    /// instead of 0.19 ms). At most [`PREPARE_SLICE`] per call, each MiB's
    /// writeback started at once, and no further than the active segment's
    /// progress asks (`fill_goal`): the extra writes are spread over the time
    /// the active segment fills; one fdatasync when the file is complete. It
    /// belongs to maintenance, never to a committer. A no-op while another
    /// thread is at it, once the file is complete, or with preallocation
    /// off. On failure (a full disk) it is not tried again for that segment,
    /// which is created empty when the log reaches it, as without
    /// preallocation.
    pub fn prepare_next(&self) -> Result<()> {
        if !self.preallocate {
            return Ok(());
        }
        let Some(mut busy) = self.preparing.try_lock() else {
            return Ok(());
        };
        let Some(seg) = self.active_seg.load(Ordering::Acquire).checked_add(1) else {
            return Ok(());
        };
        if self.prepared_for.load(Ordering::Relaxed) == seg as u64 {
            return Ok(());
        }
        let path = self.dir.join(prepared_name(seg));
        if busy.as_ref().is_none_or(|b| b.0 != seg) {
            // Files made for segments the log has passed without them (one
            // for the active segment is the leader's to take: it may be
            // about to create it).
            let stale = self.take_prepared_below(seg - 1);
            for old in stale.into_iter().chain(busy.take().map(|b| b.0)) {
                let _ = self.vfs.remove(&self.dir.join(prepared_name(old)));
            }
            let made = match self.reuse_spare(&path) {
                Some(reused) => Ok(reused),
                None => self.vfs.open(&path, true).map(|f| (f, 0)),
            };
            match made {
                Ok((f, done)) => {
                    *busy = Some((seg, f, done));
                    self.prep_done.store(done, Ordering::Relaxed);
                    self.prep_seg.store(seg as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.prepared_for.store(seg as u64, Ordering::Relaxed);
                    return Err(Error::io("create the next segment's file", &path, e));
                }
            }
        }
        let Some((_, f, done)) = busy.as_mut() else {
            return Ok(());
        };
        // A reused file is complete as it is, up to its length.
        if *done < self.seg_max {
            let goal = self.fill_goal(self.active_fill.load(Ordering::Relaxed));
            let upto = (*done + PREPARE_SLICE).min(goal);
            if upto <= *done {
                return Ok(());
            }
            let last = upto == self.seg_max;
            if let Err(e) = zero_fill(&**f, *done, upto).and_then(|()| {
                // Complete: its size and blocks durable before the log uses it.
                if last {
                    f.sync_data()
                } else {
                    Ok(())
                }
            }) {
                *busy = None;
                self.prepared_for.store(seg as u64, Ordering::Relaxed);
                let _ = self.vfs.remove(&path);
                return Err(Error::io("zero-fill the next segment", &path, e));
            }
            *done = upto;
            self.prep_done.store(upto, Ordering::Relaxed);
            if upto < self.seg_max {
                return Ok(());
            }
        }
        let Some((_, f, _)) = busy.take() else {
            return Ok(());
        };
        self.prepared_for.store(seg as u64, Ordering::Relaxed);
        let mut p = self.prepared.lock();
        // The log may have created the segment meanwhile (the leader takes a
        // prepared file under this lock, after the roll that set `active_seg`).
        if self.active_seg.load(Ordering::Acquire) >= seg {
            drop(p);
            let _ = self.vfs.remove(&path);
            return Ok(());
        }
        let old = p.replace((seg, f));
        // Removed with the lock released: a leader rolling to a new segment
        // takes it (`create_segment`) and must not wait for an unlink.
        drop(p);
        if let Some((old, _)) = old {
            let _ = self.vfs.remove(&self.dir.join(prepared_name(old)));
        }
        Ok(())
    }

    /// A deleted segment's file, renamed to `path`, to serve as the next
    /// segment's file made ahead, and how much of a segment it already
    /// covers (its length, at most a segment): its blocks are allocated and
    /// written, and its size durable (it was a synced segment), so the
    /// commits into it overwrite blocks as into a zero-filled file, without
    /// writing the zeros first. What it held before stays behind the records
    /// written into it; recovery reads a record older than the segment's own
    /// as the end of its data, as it reads zeros. None of it is read: commits
    /// write whole pages ([`pad_to_page`]). `None` when no file is kept or
    /// reusing one fails (it is then removed).
    fn reuse_spare(&self, path: &Path) -> Option<(Arc<dyn VFile>, u64)> {
        let (old, _) = self.spares.lock().pop()?;
        let from = self.dir.join(spare_name(old));
        let reused = self
            .vfs
            .rename(&from, path)
            .and_then(|()| self.vfs.open(path, false))
            .and_then(|f| {
                let len = f.len()?;
                // A segment made longer by a record larger than a segment:
                // cut to one (rare; the disk bound counts segments as one).
                if len > self.seg_max {
                    f.set_len(self.seg_max)?;
                }
                Ok((len.min(self.seg_max), f))
            });
        let (len, f) = match reused {
            Ok(r) => r,
            Err(_) => {
                let _ = self.vfs.remove(&from);
                let _ = self.vfs.remove(path);
                return None;
            }
        };
        self.counters.lock().reused += 1;
        Some((f, len))
    }

    /// Takes the ready file if it was made for a segment below `seg`.
    fn take_prepared_below(&self, seg: u32) -> Option<u32> {
        let mut p = self.prepared.lock();
        match p.as_ref() {
            Some((s, _)) if *s < seg => p.take().map(|x| x.0),
            _ => None,
        }
    }

    /// Opens a new segment file: the one made ahead for it, renamed into
    /// place, if there is one, else an empty one. The caller writes, syncs,
    /// then fsyncs the directory, as for any new segment.
    fn create_segment(&self, seg: u32) -> Result<Arc<dyn VFile>> {
        let taken = {
            let mut p = self.prepared.lock();
            match p.as_ref() {
                Some((s, _)) if *s == seg => p.take(),
                _ => None,
            }
        };
        if let Some((_, f)) = taken {
            let from = self.dir.join(prepared_name(seg));
            if self.vfs.rename(&from, &self.path(seg)).is_ok() {
                if let Some(f) = self.cache_file(seg, f) {
                    self.made_ahead.store(seg as u64, Ordering::Relaxed);
                    return Ok(f);
                }
            } else {
                let _ = self.vfs.remove(&from);
            }
        }
        self.file(seg, true)
    }

    fn write_chunks(&self, chunks: Vec<Chunk>) -> Result<()> {
        // Chunks are in log order. Each segment is written and synced before the
        // next one is created, so a segment that has a successor is complete.
        let mut i = 0;
        let mut syncs = 0;
        let mut bytes = 0;
        while i < chunks.len() {
            let seg = chunks[i].seg;
            let create = chunks[i].create;
            let f = if create {
                self.create_segment(seg)?
            } else {
                self.file(seg, false)?
            };
            let mut j = i;
            let mut coalesced: Vec<u8> = Vec::new();
            let mut start_off = chunks[i].off;
            while j < chunks.len() && chunks[j].seg == seg {
                let c = &chunks[j];
                if !coalesced.is_empty() && start_off + coalesced.len() as u64 != c.off {
                    f.write_all_at(start_off, &coalesced)
                        .map_err(|e| Error::io("write segment", self.path(seg), e))?;
                    bytes += coalesced.len();
                    coalesced.clear();
                    start_off = c.off;
                }
                if coalesced.is_empty() {
                    start_off = c.off;
                }
                coalesced.extend_from_slice(&c.buf);
                j += 1;
            }
            if !coalesced.is_empty() {
                bytes += coalesced.len();
                if self.made_ahead.load(Ordering::Relaxed) == seg as u64 {
                    pad_to_page(start_off, &mut coalesced, self.seg_max);
                }
                f.write_all_at(start_off, &coalesced)
                    .map_err(|e| Error::io("write segment", self.path(seg), e))?;
            }
            f.sync_data()
                .map_err(|e| Error::io("fdatasync segment", self.path(seg), e))?;
            syncs += 1;
            if create {
                self.vfs
                    .sync_dir(&self.dir)
                    .map_err(|e| Error::io("fsync directory", &self.dir, e))?;
                // The previous segment is sealed: drop its writable handle from the cache
                // only if nobody maps it (maps keep their own reference).
            }
            i = j;
        }
        let mut c = self.counters.lock();
        c.syncs += syncs;
        c.commits += 1;
        c.bytes += bytes as u64;
        Ok(())
    }

    fn past_end(&self, seg: u32, off: u64, end: u64, readable: u64) -> Error {
        Error::Corrupt {
            path: self.path(seg),
            offset: off,
            reason: format!(
                "record extends past the written end of the segment ({end} > {readable})"
            ),
        }
    }

    /// Reads bytes `[off, off+len)` of segment `seg` with `pread` into a fresh
    /// buffer. Reads never go through a memory mapping, so a bad sector comes
    /// back as an error, never as SIGBUS.
    fn pread(&self, seg: u32, off: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.file(seg, false)?;
        let mut buf = vec![0u8; len];
        match f.read_exact_at(off, &mut buf) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Corrupt {
                path: self.path(seg),
                offset: off,
                reason: format!(
                    "record extends past end of file (ends at {})",
                    off + len as u64
                ),
            }),
            Err(e) => Err(Error::io("read segment", self.path(seg), e)),
        }
    }

    /// Bytes of `seg` that may be read: up to the durable position in the segment
    /// being written, the file length for sealed ones.
    fn readable_len(&self, seg: u32) -> Result<u64> {
        {
            let g = self.inner.lock();
            let dseg = g.durable.seg();
            if seg == dseg {
                return Ok(g.durable.off());
            }
            if seg > dseg {
                return Ok(0);
            }
        }
        if let Some(&l) = self.sealed_len.lock().get(&seg) {
            return Ok(l);
        }
        let f = self.file(seg, false)?;
        let l = f
            .len()
            .map_err(|e| Error::io("stat segment", self.path(seg), e))?;
        if !self.files.lock().removed.contains(&seg) {
            self.sealed_len.lock().insert(seg, l);
        }
        Ok(l)
    }

    /// Reads and verifies the record at (seg, off) whose padded length is
    /// expected to be `hint` (the index knows it): from the read-ahead cache when
    /// the reads of this segment go forward (compaction walking a segment),
    /// else with one `pread` of exactly that, and a second one only if the
    /// record turns out longer. (A delivery session reads ahead on its own,
    /// with [`Log::read_records`].)
    pub fn read_record(&self, seg: u32, off: u64, hint: usize) -> Result<(Kind, Bytes)> {
        let readable = self.readable_len(seg)?;
        let room = readable.saturating_sub(off);
        if room < HEADER_LEN as u64 {
            return Err(self.past_end(seg, off, off + HEADER_LEN as u64, readable));
        }
        let want = (hint.max(HEADER_LEN) as u64).min(room);
        let cached = self.readahead.lock().lookup(seg, off, want);
        let buf = match cached {
            Some(hit) => hit,
            None => {
                let sequential = self.readahead.lock().sequential(seg, off);
                if sequential && want < READ_AHEAD_BLOCK as u64 / 4 {
                    let block = Bytes::from(self.pread(
                        seg,
                        off,
                        room.min(READ_AHEAD_BLOCK as u64) as usize,
                    )?);
                    let hit = block.slice(..want as usize);
                    self.readahead.lock().insert(seg, off, block);
                    hit
                } else {
                    let b = Bytes::from(self.pread(seg, off, want as usize)?);
                    self.readahead.lock().note(seg, off + want);
                    b
                }
            }
        };
        self.record_from(seg, off, buf, readable)
    }

    /// Reads and verifies the records of segment `seg` at `spans` (offset and
    /// expected length as the index knows them, sorted by offset) with few
    /// large reads into private buffers (searches, and a session reading
    /// ahead along its FIFO; the shared read-ahead blocks serve readers that
    /// walk a segment one record at a time): spans less than `gap` bytes apart, within `chunk` bytes of
    /// the first, share one `pread`. `f` gets each span's index and its record
    /// or the error reading it, in order, and returns whether to go on. A span
    /// that a shared read cannot serve (a bad sector, a segment removed
    /// meanwhile) is read on its own, as [`Log::read_record`] does, so an
    /// error reaches `f` for that span only.
    pub fn read_records(
        &self,
        seg: u32,
        spans: &[(u64, usize)],
        chunk: usize,
        gap: u64,
        mut f: impl FnMut(usize, Result<(Kind, Bytes)>) -> Result<bool>,
    ) -> Result<()> {
        // Unknown (the segment is gone): every span is read on its own.
        let readable = self.readable_len(seg).unwrap_or(0);
        let end_of = |(off, hint): (u64, usize)| off + hint.max(HEADER_LEN) as u64;
        let mut i = 0;
        while i < spans.len() {
            let start = spans[i].0;
            let mut end = end_of(spans[i]);
            let mut j = i + 1;
            while j < spans.len()
                && spans[j].0 <= end + gap
                && end_of(spans[j]).saturating_sub(start) <= chunk as u64
            {
                end = end.max(end_of(spans[j]));
                j += 1;
            }
            let end = end.min(readable);
            let block = if end > start {
                self.pread(seg, start, (end - start) as usize)
                    .map(Bytes::from)
                    .ok()
            } else {
                None
            };
            for (k, &(off, hint)) in spans.iter().enumerate().take(j).skip(i) {
                let at = off.saturating_sub(start) as usize;
                let res = match &block {
                    Some(b) if off >= start && b.len().saturating_sub(at) >= HEADER_LEN => {
                        self.record_from(seg, off, b.slice(at..), readable)
                    }
                    _ => self.read_record(seg, off, hint),
                };
                if !f(k, res)? {
                    return Ok(());
                }
            }
            i = j;
        }
        Ok(())
    }

    /// Verifies the record at (seg, off) whose first bytes (at least a header)
    /// are `buf`, reading the rest if `buf` is short.
    fn record_from(
        &self,
        seg: u32,
        off: u64,
        mut buf: Bytes,
        readable: u64,
    ) -> Result<(Kind, Bytes)> {
        let room = readable.saturating_sub(off);
        let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if len > record::MAX_RECORD {
            return Err(Error::Corrupt {
                path: self.path(seg),
                offset: off,
                reason: "record length over limit".into(),
            });
        }
        let total = record::padded(HEADER_LEN + len);
        if total as u64 > room {
            return Err(self.past_end(seg, off, off + total as u64, readable));
        }
        if total <= buf.len() {
            buf.truncate(total);
        } else {
            let have = buf.len();
            let mut v = buf.to_vec();
            v.extend_from_slice(&self.pread(seg, off + have as u64, total - have)?);
            buf = Bytes::from(v);
        }
        match record::parse(&buf, self.salt) {
            Ok(f) => Ok((f.kind, buf.slice(HEADER_LEN..HEADER_LEN + len))),
            Err(e) => Err(Error::Corrupt {
                path: self.path(seg),
                offset: off,
                reason: format!("{e:?}"),
            }),
        }
    }

    /// Deletes sealed segments, then fsyncs the directory once (one journal
    /// commit for all: each one stalls concurrent fdatasyncs).
    ///
    /// A file no handle holds is renamed to [`spare_name`]: with
    /// preallocation on, up to [`MAX_SPARES`] are kept for
    /// [`Log::prepare_next`] to reuse, the others are given back a piece at
    /// a time ([`Log::give_back`]). A held file (a delivery keeps its
    /// segment's file open for its lifetime; a file reused is overwritten,
    /// one given back is cut) is unlinked whole.
    pub fn remove_segments(&self, segs: &[u32]) -> Result<()> {
        let (mut kept, mut dying) = (Vec::new(), Vec::new());
        for &seg in segs {
            match self.unlink_segment(seg, kept.len())? {
                Fate::Kept => kept.push(seg),
                Fate::Dying => dying.push(seg),
                Fate::Removed => {}
            }
        }
        if !segs.is_empty() {
            self.vfs
                .sync_dir(&self.dir)
                .map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        }
        // Reusable, or cut, only once the renames are durable: a crash must
        // not bring back a segment's name on a file that holds another
        // segment's records, or only part of its own.
        let now = self.clock.now_millis();
        self.spares
            .lock()
            .extend(kept.into_iter().map(|s| (s, now)));
        self.to_give_back(dying);
        Ok(())
    }

    /// Gives back (a piece at a time, [`Log::give_back`]) the kept files of
    /// deleted segments that were not reused within [`SPARE_KEEP_MS`]: an
    /// idle queue gives the disk back.
    pub fn trim_spares(&self) {
        let now = self.clock.now_millis();
        let old: Vec<u32> = {
            let mut spares = self.spares.lock();
            let (old, keep) = spares
                .iter()
                .partition(|&&(_, at)| now >= at.saturating_add(SPARE_KEEP_MS));
            *spares = keep;
            old.into_iter().map(|(s, _)| s).collect()
        };
        self.to_give_back(old);
        self.give_back();
    }

    /// Queues deleted segments' files (renamed [`spare_name`], the rename
    /// durable) to be given back a piece at a time. Beyond [`MAX_DYING`]
    /// queued, the oldest are deleted whole at once: the disk a backlog
    /// holds stays bounded whoever calls [`Log::give_back`] how often.
    fn to_give_back(&self, segs: Vec<u32>) {
        if segs.is_empty() {
            return;
        }
        let whole: Vec<u32> = {
            let mut d = self.dying.lock();
            d.0.extend(segs.into_iter().map(|s| (s, u64::MAX, false)));
            let over = d.0.len().saturating_sub(MAX_DYING);
            // (Never one being cut right now.)
            let idle: Vec<usize> = (0..d.0.len()).filter(|&i| !d.0[i].2).take(over).collect();
            idle.into_iter().rev().map(|i| d.0.remove(i).0).collect()
        };
        for seg in whole {
            let _ = self.vfs.remove(&self.dir.join(spare_name(seg)));
        }
    }

    /// Cuts the first file being given back by an eighth of a segment (or
    /// deletes it once that is all it holds), if the next piece is due.
    /// Called by `tick` and after every completion (cheap when nothing is
    /// due). Best effort: a file that cannot be cut is deleted; one that
    /// cannot be deleted is removed at the next open.
    pub fn give_back(&self) {
        let (seg, left) = {
            let mut d = self.dying.lock();
            // (Checked before the clock is read: this runs after every
            // completion, and there is mostly nothing to give back.)
            let Some(&(seg, left, busy)) = d.0.first() else {
                return;
            };
            let now = self.clock.now_millis();
            // (A clock stepped back makes the next piece due at once.)
            if busy || (now < d.1 && d.1 - now <= GIVE_BACK_MS) {
                return;
            }
            d.1 = now.saturating_add(GIVE_BACK_MS);
            // Stays listed while it is cut (a wake-up is still reported).
            d.0[0].2 = true;
            (seg, left)
        };
        let path = self.dir.join(spare_name(seg));
        let piece = (self.seg_max / 8).max(PAGE);
        // (No lock is held across the filesystem calls.)
        let cut = self.vfs.open(&path, false).and_then(|f| {
            let len = if left == u64::MAX { f.len()? } else { left };
            let to = len.saturating_sub(piece);
            if to > 0 {
                f.set_len(to)?;
            }
            Ok(to)
        });
        let gone = !matches!(cut, Ok(to) if to > 0);
        if gone {
            let _ = self.vfs.remove(&path);
        }
        let mut d = self.dying.lock();
        if let Some(i) = d.0.iter().position(|e| e.0 == seg) {
            match cut {
                Ok(to) if to > 0 => d.0[i] = (seg, to, false),
                _ => {
                    d.0.remove(i);
                }
            }
        }
    }

    /// When (clock milliseconds) a kept file of a deleted segment is due to
    /// be given back, or the next piece of one being given back is.
    pub fn spare_deadline(&self) -> Option<u64> {
        let kept = self
            .spares
            .lock()
            .iter()
            .map(|&(_, at)| at.saturating_add(SPARE_KEEP_MS))
            .min();
        let d = self.dying.lock();
        let piece = (!d.0.is_empty()).then(|| {
            // (After the clock stepped back, the piece is due now.)
            let now = self.clock.now_millis();
            if d.1 > now.saturating_add(GIVE_BACK_MS) {
                now
            } else {
                d.1
            }
        });
        kept.into_iter().chain(piece).min()
    }

    /// Deletes segment `seg`. When no handle to its file is held, renames it
    /// to [`spare_name`], to be reused when it may be (`kept` others are
    /// being kept already), else to be given back a piece at a time.
    /// Otherwise (a delivery, or the C caller's descriptor, still reads
    /// it: cutting it would cut what they read), or if the rename fails,
    /// deletes it: the bytes stay readable through the handles held.
    fn unlink_segment(&self, seg: u32, kept: usize) -> Result<Fate> {
        let unheld = self.files.lock().forget(seg);
        self.readahead.lock().forget(seg);
        self.sealed_len.lock().remove(&seg);
        let path = self.path(seg);
        // (No lock is held across the rename: maintenance alone removes
        // segments, and a storage call may run anything meanwhile.)
        let room = self.spares.lock().len() + kept < MAX_SPARES;
        let spare = self.dir.join(spare_name(seg));
        if unheld && self.vfs.rename(&path, &spare).is_ok() {
            return Ok(if self.preallocate && room {
                Fate::Kept
            } else {
                Fate::Dying
            });
        }
        self.vfs
            .remove(&path)
            .map_err(|e| Error::io("remove segment", &path, e))?;
        Ok(Fate::Removed)
    }
}

/// What became of a deleted segment's file.
enum Fate {
    /// Kept for reuse.
    Kept,
    /// To be given back a piece at a time.
    Dying,
    /// Deleted.
    Removed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::simfs::{Fault, SimFs};

    fn open(fs: &SimFs) -> Log {
        let vfs = fs.vfs();
        vfs.create_dir_all(Path::new("/l")).unwrap();
        Log::open(
            vfs,
            Path::new("/l"),
            LogStart {
                active: 1,
                len: 0,
                next_seq: 1,
                salt: 7,
            },
            1 << 20,
            Duration::from_millis(100),
            1 << 20,
            Arc::new(crate::types::SystemClock),
            false,
        )
        .unwrap()
    }

    fn batch(n: usize) -> Batch {
        let mut b = Batch::new();
        b.push(Kind::RcptUpdate, |p| p.extend_from_slice(&vec![1u8; n]));
        b
    }

    /// A search's batched reads: records served from shared chunks, each
    /// verified on its own (a damaged one, or one past the written end, fails
    /// alone), in order, and the caller can stop early.
    #[test]
    fn batched_reads_verify_each_record_alone() {
        let fs = SimFs::new();
        let log = open(&fs);
        let mut spans = Vec::new();
        for i in 0..40usize {
            let (at, end) = log.append(batch(10 + i * 37)).unwrap();
            spans.push((at.off(), (end.off() - at.off()) as usize));
        }
        log.sync_all().unwrap();
        // One byte of record 10's payload flipped on disk.
        let f = log.segment_file(1).unwrap();
        f.write_all_at(spans[10].0 + HEADER_LEN as u64 + 3, &[0xff])
            .unwrap();
        let end = log.end().off();
        spans.push((end, 64));
        let mut seen = Vec::new();
        log.read_records(1, &spans, 512, 1 << 20, |k, r| {
            match r {
                Ok((kind, p)) => {
                    assert_eq!(kind, Kind::RcptUpdate);
                    assert_eq!(p.len(), 10 + k * 37, "record {k}");
                    assert!(p.iter().all(|&b| b == 1), "record {k}");
                }
                Err(e) => assert!(
                    matches!(e, Error::Corrupt { .. }) && (k == 10 || k == 40),
                    "record {k}: {e}"
                ),
            }
            seen.push(k);
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, (0..41).collect::<Vec<_>>());
        let mut n = 0;
        log.read_records(1, &spans, 1 << 20, 1 << 20, |_, _| {
            n += 1;
            Ok(n < 5)
        })
        .unwrap();
        assert_eq!(n, 5, "stops when told");
        // A hint shorter than the record (only its header): the rest is read.
        let mut len = 0;
        log.read_records(1, &[(spans[39].0, HEADER_LEN)], 1 << 20, 0, |_, r| {
            len = r?.1.len();
            Ok(true)
        })
        .unwrap();
        assert_eq!(len, 10 + 39 * 37);
    }

    /// Defect 6: bytes made durable before a later commit failed are reported
    /// durable to their waiter (a `Poisoned` would make the client queue a duplicate).
    #[test]
    fn durable_bytes_are_acknowledged_even_after_a_later_failure() {
        let fs = SimFs::new();
        let log = open(&fs);
        let (_, a) = log.append(batch(100)).unwrap();
        log.sync_to(a).unwrap();
        let (_, b) = log.append(batch(100)).unwrap();
        fs.fail_at(1, Fault::Eio);
        assert!(
            log.sync_to(b).is_err(),
            "the second commit fails and poisons"
        );
        assert!(log.poisoned().is_some());
        // A follower of the first commit that only now looks at the outcome.
        assert!(
            log.sync_to(a).is_ok(),
            "its bytes were durable: acknowledged"
        );
        assert!(matches!(log.sync_to(b), Err(Error::Poisoned(_))));
    }
}
