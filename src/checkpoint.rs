//! Checkpoints (a compact snapshot of every live recipient) and compaction.
//!
//! A checkpoint at log position P holds exactly the state produced by every
//! record before P. It is written to `checkpoint.tmp`, fdatasynced, and only
//! after the log is durable up to P renamed over `checkpoint` (then the
//! directory is fsynced). Reopening loads it and replays only records from P:
//! restart costs O(live data), not O(history).
//!
//! Compaction then deletes sealed segments that lie wholly before P and hold no
//! live message, and copies the live messages of sparsely used segments forward
//! so that the next checkpoint can delete those too.

use crate::bucket::SchedShard;
use crate::error::{Error, Result};
use crate::index::*;

/// Highest local message slot accepted from disk (16 shards × 16 M messages).
pub const MAX_SLOT: u32 = 1 << 24;
use crate::keys::Keys;
use crate::log::{parse_segment_name, pos_seg, Batch, Pos};
use crate::queue::Inner;
use crate::record::{Kind, Put, Reader};
use crate::types::{Concurrency, MessageId, RcptState};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// File name of the checkpoint.
pub const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const MAGIC: &[u8; 8] = b"MQCKPT01";
const END_MAGIC: &[u8; 8] = b"MQCKEND1";
/// Checkpoint format version.
pub const VERSION: u32 = 1;

/// Maintenance bookkeeping.
#[derive(Debug, Default, Clone)]
pub struct Maint {
    /// Position of the last checkpoint.
    pub last_pos: Pos,
    /// Log bytes written when it was taken.
    pub bytes_at: u64,
    /// Checkpoints written by this handle.
    pub checkpoints: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Messages copied forward.
    pub messages_copied: u64,
    /// Idle buckets (routing keys) freed.
    pub buckets_freed: u64,
    /// Size of the last checkpoint file.
    pub checkpoint_bytes: u64,
    /// The last automatic maintenance failure (reported in stats).
    pub last_error: Option<String>,
}

/// Runs a checkpoint and compaction when enough log has been written since the last one.
/// Another thread already doing maintenance makes this a no-op. A failure is kept
/// for the stats and retried after another `checkpoint_bytes` of log, never returned
/// to the caller whose (already durable) operation triggered it.
pub fn maybe_maintain(q: &Inner) {
    let bytes = q.log.counters().bytes;
    let Some(mut m) = q.maint.try_lock() else {
        return;
    };
    if bytes.saturating_sub(m.bytes_at) < q.opts.checkpoint_bytes {
        return;
    }
    match run(q, &mut m) {
        Ok(()) => m.last_error = None,
        Err(e) => {
            m.bytes_at = bytes;
            m.last_error = Some(e.to_string());
        }
    }
}

/// Writes a checkpoint now and compacts.
pub fn checkpoint(q: &Inner) -> Result<()> {
    let mut m = q.maint.lock();
    run(q, &mut m)
}

fn run(q: &Inner, m: &mut Maint) -> Result<()> {
    let mut live = write(q, m)?;
    // Copies made by compaction are captured by another checkpoint, which lets the
    // emptied segments go; every round that copied ends with a checkpoint.
    let mut rounds = 0;
    while rounds < 2 && compact(q, m, &live)? > 0 {
        live = write(q, m)?;
        rounds += 1;
    }
    Ok(())
}

/// Live messages and bytes per segment, as of one checkpoint position.
type SegLive = HashMap<u32, (u32, u64)>;

/// Writes the checkpoint and returns the per-segment live counts *as of its
/// position*: after the rename those are durable facts, whereas the in-memory
/// counts may already include completions that are not yet synced.
fn write(q: &Inner, m: &mut Maint) -> Result<SegLive> {
    let vfs = &q.opts.vfs;
    let tmp = q.dir.join(CHECKPOINT_TMP);
    let dst = q.dir.join(CHECKPOINT);
    let f = vfs
        .open(&tmp, true)
        .map_err(|e| Error::io("create checkpoint", &tmp, e))?;
    f.set_len(0)
        .map_err(|e| Error::io("truncate checkpoint", &tmp, e))?;
    let mut sink = Sink::new(&*f);
    let mut live = SegLive::new();
    let p = {
        // The encode streams to the file in bounded pieces (page cache only; the
        // fsync comes after the gate is released): no checkpoint-sized buffer.
        let _w = q.gate.write();
        m.buckets_freed += q.gc_buckets() as u64;
        let (p, seq) = q.log.end_and_seq();
        let keys = q.keys.read();
        let ok = encode(
            &mut sink,
            p,
            seq,
            q.next_gen.load(Ordering::Relaxed),
            q.salt,
            &keys,
            |s, f| {
                let ms = q.msgs[s].lock();
                for (&seg, &(n, b)) in &ms.seg_live {
                    let e = live.entry(seg).or_default();
                    e.0 += n;
                    e.1 += b;
                }
                f(&ms)
            },
        );
        if !ok {
            return Err(Error::Corrupt {
                path: tmp.clone(),
                offset: 0,
                reason: "a live recipient refers to a freed destination (a mailq bug); the checkpoint was not installed and the log still holds everything".into(),
            });
        }
        p
    };
    let len = sink
        .finish()
        .map_err(|e| Error::io("write checkpoint", &tmp, e))?;
    f.sync_data()
        .map_err(|e| Error::io("fdatasync checkpoint", &tmp, e))?;
    q.log.sync_to(p)?;
    vfs.rename(&tmp, &dst)
        .map_err(|e| Error::io("rename checkpoint", &dst, e))?;
    vfs.sync_dir(&q.dir)
        .map_err(|e| Error::io("fsync directory", &q.dir, e))?;
    m.last_pos = p;
    m.bytes_at = q.log.counters().bytes;
    m.checkpoints += 1;
    m.checkpoint_bytes = len;
    Ok(live)
}

/// Streams checkpoint bytes to a file in bounded pieces, checksumming as it goes.
/// The first write error is kept and reported by [`Sink::finish`].
pub struct Sink<'a> {
    f: &'a dyn crate::vfs::VFile,
    buf: Vec<u8>,
    off: u64,
    crc: crc32fast::Hasher,
    err: Option<std::io::Error>,
}

/// Bytes buffered before a checkpoint piece is written.
const SINK_CHUNK: usize = 256 << 10;

impl<'a> Sink<'a> {
    fn new(f: &'a dyn crate::vfs::VFile) -> Self {
        Sink {
            f,
            buf: Vec::with_capacity(SINK_CHUNK + 4096),
            off: 0,
            crc: crc32fast::Hasher::new(),
            err: None,
        }
    }

    fn spill(&mut self) {
        self.crc.update(&self.buf);
        if self.err.is_none() {
            if let Err(e) = self.f.write_all_at(self.off, &self.buf) {
                self.err = Some(e);
            }
        }
        self.off += self.buf.len() as u64;
        self.buf.clear();
    }

    fn maybe_spill(&mut self) {
        if self.buf.len() >= SINK_CHUNK {
            self.spill();
        }
    }

    /// Appends the checksum, length and end marker; returns the file length.
    fn finish(mut self) -> std::io::Result<u64> {
        self.spill();
        let crc = self.crc.clone().finalize();
        let total = self.off + 4 + 8 + 8;
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf.extend_from_slice(&total.to_le_bytes());
        self.buf.extend_from_slice(END_MAGIC);
        self.spill();
        match self.err {
            Some(e) => Err(e),
            None => Ok(self.off),
        }
    }
}

/// Deletes dead segments and copies live messages out of sparse ones.
/// Returns how many messages were copied.
///
/// A segment is deleted only when the checkpoint just installed (durable) holds
/// no live message in it: `live` are the counts at the checkpoint's position,
/// never the in-memory ones, which may include completions not yet synced.
fn compact(q: &Inner, m: &mut Maint, live: &SegLive) -> Result<usize> {
    let limit = pos_seg(m.last_pos).min(q.log.active_segment());
    let mut segs: Vec<u32> = q
        .opts
        .vfs
        .list(&q.dir)
        .map_err(|e| Error::io("list queue directory", &q.dir, e))?
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .filter(|&s| s < limit)
        .collect();
    segs.sort_unstable();
    let mut sparse = Vec::new();
    for seg in segs {
        match live.get(&seg) {
            None => {
                q.log.remove_segment(seg)?;
                m.segments_deleted += 1;
            }
            Some(&(_, bytes)) => {
                if (bytes as f64) < q.opts.compact_below * q.opts.segment_size as f64 {
                    sparse.push(seg);
                }
            }
        }
    }
    if sparse.is_empty() {
        return Ok(0);
    }
    // Copy the live messages of sparse segments forward.
    let mut moved = Vec::new();
    for (s, shard) in q.msgs.iter().enumerate() {
        let ms = shard.lock();
        for (l, msg) in ms.msgs.iter().enumerate() {
            if msg.gen != 0 && sparse.contains(&msg.seg) {
                moved.push((s, l as u32, msg.gen, msg.seg, msg.off, msg.len));
            }
        }
    }
    // Each copy is appended while its message is known live (gate shared + shard
    // lock, generation re-checked), so a copy can never follow the message's last
    // completion in the log. The location moves in memory only once it is durable.
    let mut copies = Vec::with_capacity(moved.len());
    for &(s, l, gen, seg, off, len) in &moved {
        let payload = match q.log.read_record(seg, off as u64, len as usize) {
            Ok((_, p)) => p,
            Err(Error::Corrupt { .. }) => continue,
            Err(e) => return Err(e),
        };
        let mut batch = Batch::new();
        let st = batch.push(Kind::MessageCopy, |p| p.extend_from_slice(&payload));
        let len = batch.record_len(st) as u32;
        let _g = q.gate.read();
        let ms = q.msgs[s].lock();
        if ms.get(l, gen).is_none() {
            continue;
        }
        let (at, _) = q.log.append(batch)?;
        drop(ms);
        copies.push((
            (s, l, gen),
            (pos_seg(at), crate::log::pos_off(at) as u32, len),
        ));
    }
    q.log.sync_all()?;
    let mut n = 0;
    for ((s, l, gen), loc) in copies {
        let mut ms = q.msgs[s].lock();
        if ms.get(l, gen).is_some() {
            ms.relocate(l, loc);
            n += 1;
        }
    }
    m.messages_copied += n as u64;
    Ok(n)
}

/// Serialises the live state. `with_shard(s, f)` runs `f` on message shard `s`.
pub fn encode(
    out: &mut Sink<'_>,
    p: Pos,
    seq: u64,
    next_gen: u32,
    salt: u32,
    keys: &Keys,
    mut with_shard: impl FnMut(usize, &mut dyn FnMut(&MsgShard)),
) -> bool {
    let mut broken_flag = false;
    let broken = &mut broken_flag;
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&p.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&next_gen.to_le_bytes());
    out.extend_from_slice(&salt.to_le_bytes());
    // Only live keys, renumbered densely (freed ids are holes in memory).
    let mut remap = vec![u32::MAX; keys.len()];
    let mut n = 0u32;
    for (i, r) in remap.iter_mut().enumerate() {
        if keys.key(i as u32).is_some_and(|k| !k.is_empty()) {
            *r = n;
            n += 1;
        }
    }
    out.extend_from_slice(&n.to_le_bytes());
    for (i, &r) in remap.iter().enumerate() {
        if r != u32::MAX {
            out.put_short(keys.key(i as u32).map(|k| k.as_bytes()).unwrap_or(b""));
            out.maybe_spill();
        }
    }
    for s in 0..SHARDS {
        with_shard(s, &mut |ms: &MsgShard| {
            // Reasons used by live recipients, renumbered densely.
            let mut rmap: HashMap<u32, u32> = HashMap::new();
            let mut rlist: Vec<&str> = Vec::new();
            for m in ms.msgs.iter().filter(|m| m.gen != 0) {
                for i in 0..m.n as u32 {
                    let r = ms.rcpts[(m.first + i) as usize].reason();
                    if r != 0 && !rmap.contains_key(&r) {
                        rlist.push(ms.reason(r));
                        rmap.insert(r, rlist.len() as u32);
                    }
                }
            }
            out.extend_from_slice(&(rlist.len() as u32).to_le_bytes());
            for r in &rlist {
                out.put_short(r.as_bytes());
                out.maybe_spill();
            }
            out.extend_from_slice(&(ms.live_msgs as u32).to_le_bytes());
            for (l, m) in ms.msgs.iter().enumerate() {
                if m.gen == 0 {
                    continue;
                }
                let id = MessageId::new(m.gen, global(s, l as u32));
                out.extend_from_slice(&id.0.to_le_bytes());
                out.extend_from_slice(&m.seg.to_le_bytes());
                out.extend_from_slice(&m.off.to_le_bytes());
                out.extend_from_slice(&m.len.to_le_bytes());
                out.extend_from_slice(&m.received.to_le_bytes());
                out.extend_from_slice(&m.n.to_le_bytes());
                for i in 0..m.n as u32 {
                    let rid = m.first + i;
                    let r = ms.rcpts[rid as usize];
                    // An in-flight recipient is written as the operator decided
                    // while it was in flight (its own record lies before P).
                    let (state, bucket) = match ms.intents.get(&rid) {
                        Some(it) if r.state() == RcptState::Leased => (
                            if it.hold {
                                RcptState::Held
                            } else {
                                RcptState::Ready
                            },
                            it.route.unwrap_or(r.bucket()),
                        ),
                        _ => (r.state().persisted(), r.bucket()),
                    };
                    out.push(state as u8);
                    out.extend_from_slice(&r.attempts().to_le_bytes());
                    out.extend_from_slice(&r.next.to_le_bytes());
                    // A final recipient of a live message may name a bucket freed
                    // since (it no longer counts there); its bucket is never used.
                    let b = match remap.get(bucket as usize) {
                        Some(&b) if b != u32::MAX => b,
                        _ if state.is_final() => 0,
                        _ => {
                            // A live recipient in a freed bucket would be a bug:
                            // never write it under someone else's key.
                            *broken = true;
                            0
                        }
                    };
                    out.extend_from_slice(&b.to_le_bytes());
                    let reason = rmap.get(&r.reason()).copied().unwrap_or(0);
                    out.extend_from_slice(&reason.to_le_bytes());
                }
                out.maybe_spill();
            }
        });
    }
    !broken_flag
}

impl Sink<'_> {
    fn extend_from_slice(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    fn push(&mut self, b: u8) {
        self.buf.push(b);
    }
    fn put_short(&mut self, b: &[u8]) {
        self.buf.put_short(b);
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
}

impl From<String> for DecodeError {
    fn from(s: String) -> Self {
        DecodeError::Damaged(s)
    }
}

impl From<&str> for DecodeError {
    fn from(s: &str) -> Self {
        DecodeError::Damaged(s.to_string())
    }
}

/// State loaded from a checkpoint.
pub struct Loaded {
    /// Position from which to replay.
    pub pos: Pos,
    /// Sequence number of the first record at or after `pos`.
    pub seq: u64,
    /// Next message generation.
    pub next_gen: u32,
    /// CRC salt of the queue's records.
    pub salt: u32,
}

/// Why a checkpoint was rejected.
pub fn decode(
    buf: &[u8],
    policy: Concurrency,
    msgs: &mut [MsgShard],
    sched: &mut [SchedShard],
    keys: &mut Keys,
) -> std::result::Result<Loaded, DecodeError> {
    if buf.len() < 8 + 16 + 8 + 8 || &buf[..8] != MAGIC {
        return Err(DecodeError::from(
            "not a checkpoint (bad magic or too short)",
        ));
    }
    let n = buf.len();
    if &buf[n - 8..] != END_MAGIC {
        return Err(DecodeError::from("truncated (end marker missing)"));
    }
    let total = u64::from_le_bytes(buf[n - 16..n - 8].try_into().map_err(|_| "short")?);
    if total != n as u64 {
        return Err(DecodeError::from(format!(
            "length field {total} does not match file size {n}"
        )));
    }
    let crc = u32::from_le_bytes(buf[n - 20..n - 16].try_into().map_err(|_| "short")?);
    let body = &buf[..n - 20];
    if crc32fast::hash(body) != crc {
        return Err(DecodeError::from("checksum mismatch"));
    }
    let mut r = Reader::new(&body[8..]);
    let bad = || "malformed contents".to_string();
    let version = r.u32().ok_or_else(bad)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    r.u32().ok_or_else(bad)?;
    let pos = r.u64().ok_or_else(bad)?;
    let seq = r.u64().ok_or_else(bad)?;
    let next_gen = r.u32().ok_or_else(bad)?;
    let salt = r.u32().ok_or_else(bad)?;
    let nkeys = r.u32().ok_or_else(bad)?;
    if nkeys > crate::index::MAX_BUCKETS {
        return Err(DecodeError::from("too many routing keys"));
    }
    for i in 0..nkeys {
        let k = r.short_str().ok_or_else(bad)?;
        if keys.intern_into(k, policy, sched) != i {
            return Err(DecodeError::from("duplicate routing key"));
        }
    }
    for (s, ms) in msgs.iter_mut().enumerate() {
        let nr = r.u32().ok_or_else(bad)?;
        let mut reasons = Vec::with_capacity(nr.min(1 << 20) as usize);
        for _ in 0..nr {
            reasons.push(r.short_str().ok_or_else(bad)?);
        }
        let nm = r.u32().ok_or_else(bad)?;
        for _ in 0..nm {
            let id = MessageId(r.u64().ok_or_else(bad)?);
            let seg = r.u32().ok_or_else(bad)?;
            let off = r.u32().ok_or_else(bad)?;
            let len = r.u32().ok_or_else(bad)?;
            let received = r.u32().ok_or_else(bad)?;
            let nr = r.u16().ok_or_else(bad)?;
            if shard_of(id.slot()) != s || id.gen() == 0 || nr == 0 {
                return Err(DecodeError::from("message in wrong shard"));
            }
            let local = local_of(id.slot());
            if local > MAX_SLOT {
                return Err(DecodeError::from("slot out of range"));
            }
            ms.ensure_slot(local);
            if ms.msgs[local as usize].gen != 0 {
                return Err(DecodeError::from("duplicate message"));
            }
            let mut buckets = Vec::with_capacity(nr as usize);
            let mut states = Vec::with_capacity(nr as usize);
            for _ in 0..nr {
                let st = r.u8().ok_or_else(bad)?;
                let attempts = r.u16().ok_or_else(bad)?;
                let next = r.u32().ok_or_else(bad)?;
                let bucket = r.u32().ok_or_else(bad)?;
                let reason = r.u32().ok_or_else(bad)?;
                if bucket >= nkeys || reason as usize > reasons.len() {
                    return Err(DecodeError::from("reference out of range"));
                }
                let st = RcptState::from_u8(st).ok_or_else(bad)?;
                buckets.push(bucket);
                states.push((st, attempts, next, reason));
            }
            ms.insert(local, id.gen(), (seg, off, len), received, &buckets);
            let first = ms.msgs[local as usize].first;
            for (i, (st, attempts, next, reason)) in states.into_iter().enumerate() {
                let rid = first + i as u32;
                let rc = &mut ms.rcpts[rid as usize];
                rc.set_state(st);
                rc.set_attempts(attempts);
                rc.next = next;
                if reason != 0 {
                    ms.set_reason_text(rid, reasons[reason as usize - 1]);
                }
                if st.is_final() {
                    ms.finish_rcpt(rid);
                }
            }
        }
    }
    if r.remaining() != 0 {
        return Err(DecodeError::from("trailing bytes"));
    }
    Ok(Loaded {
        pos,
        seq,
        next_gen,
        salt,
    })
}
