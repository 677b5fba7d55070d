//! Maintenance: writing checkpoints (a compact snapshot of every live
//! recipient) and compacting the log. The file format is `storage::checkpoint`;
//! this module decides what goes in, when, and what may then be deleted.
//! Depends on `error`, `index`, `sched`, `storage`, `types`, the rest of `engine`.
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

use super::Engine;
use crate::error::{Error, Result};
use crate::index::*;
use crate::sched::Keys;
use crate::storage::checkpoint::{
    Header, MsgEntry, RcptEntry, Window, Writer, CHECKPOINT, CHECKPOINT_TMP, NO_BUCKET,
};
use crate::storage::log::{parse_segment_name, Batch, Pos};
use crate::storage::record::Kind;
use crate::types::{MessageId, RcptState};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// Maintenance bookkeeping.
#[derive(Debug, Default, Clone)]
pub(crate) struct Maint {
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

impl Maint {
    /// Bookkeeping of a queue whose last checkpoint is at `pos`.
    pub(crate) fn at(pos: Pos) -> Maint {
        Maint {
            last_pos: pos,
            ..Default::default()
        }
    }
}

impl Engine {
    /// Log bytes written past the point where maintenance is due (0: not
    /// due). A checkpoint due since recovery counts as 1 byte overdue: it
    /// raises the poll fd, and never makes a producer run it.
    pub(super) fn maintenance_overdue(&self) -> u64 {
        if !self.opts.auto_maintenance {
            return 0;
        }
        let since = self
            .log
            .counters()
            .bytes
            .saturating_sub(self.maint_from.load(Ordering::Relaxed));
        let over = (since + 1).saturating_sub(self.maint_every.load(Ordering::Relaxed));
        over.max(self.rebuilt_due() as u64)
    }

    /// A checkpoint recovery called for is due now.
    fn rebuilt_due(&self) -> bool {
        let at = self.rebuilt.load(Ordering::Relaxed);
        at != 0 && self.now() >= at
    }

    /// When a checkpoint recovery called for is due (clock seconds), if
    /// one is.
    pub(super) fn rebuilt_at(&self) -> Option<u32> {
        Some(self.rebuilt.load(Ordering::Relaxed)).filter(|&at| at != 0)
    }

    /// Runs a checkpoint and compaction when enough log has been written since the
    /// last one. Another thread already doing maintenance makes this a no-op. A
    /// failure is kept for the stats and retried after another `checkpoint_bytes`
    /// of log, never returned to the caller whose (already durable) operation
    /// triggered it. Workers (completions), `tick` and — only as a backstop,
    /// once it is a whole interval overdue — producers run it.
    pub(super) fn maybe_maintain(&self) {
        let bytes = self.log.counters().bytes;
        let Some(mut m) = self.maint.try_lock() else {
            return;
        };
        if bytes.saturating_sub(m.bytes_at) < self.maint_every.load(Ordering::Relaxed)
            && !self.rebuilt_due()
        {
            return;
        }
        match run(self, &mut m) {
            Ok(()) => m.last_error = None,
            Err(e) => {
                m.bytes_at = bytes;
                m.last_error = Some(e.to_string());
                // Not retried at every tick: a minute later (or after an
                // interval of log, like any other).
                if self.rebuilt_at().is_some() {
                    let at = self.now().saturating_add(super::REBUILT_RETRY_SECS);
                    self.rebuilt.store(at, Ordering::Relaxed);
                }
            }
        }
        self.maintained_at(m.bytes_at);
    }

    /// Maintenance ran (or failed) with the log at `bytes`: the next is due
    /// one interval later, and its producer raises the poll fd again.
    fn maintained_at(&self, bytes: u64) {
        self.maint_from.store(bytes, Ordering::Relaxed);
        self.maint_woken.store(false, Ordering::Relaxed);
    }

    /// Makes the next segment's file ahead when the log wants one (see
    /// [`crate::storage::log::Log::prepare_next`]). A failure (a full disk)
    /// is kept for the stats like a maintenance failure; the segment is then
    /// created empty when the log reaches it.
    pub(super) fn prepare_if_wanted(&self) {
        if !self.log.wants_prepare() {
            return;
        }
        let res = self.log.prepare_next();
        self.prep_woken.store(false, Ordering::Relaxed);
        if let (Err(e), Some(mut m)) = (res, self.maint.try_lock()) {
            m.last_error = Some(e.to_string());
        }
    }

    /// Writes a checkpoint now and compacts.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let mut m = self.maint.lock();
        run(self, &mut m)
    }
}

fn run(q: &Engine, m: &mut Maint) -> Result<()> {
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

/// Writes the checkpoint and returns the per-segment live counts it
/// describes: after the rename those are durable facts, whereas the
/// in-memory counts may already include completions that are not yet synced.
///
/// Producers are stopped only for a moment (the *barrier*): the exclusive
/// gate is taken to free idle buckets, read the log position P — every
/// record before it is then reflected in memory, since each writer appends
/// and applies under the shared gate — and to make every message shard hold
/// its freed slots. Then each shard is encoded under its own lock while the
/// others go on, and the keys, settings and sources last. Records appended
/// meanwhile (between P and the *window*'s end) may or may not be reflected:
/// replaying them again is harmless (records are absolute; a message record
/// finds its message in place), an update for a message that finished
/// meanwhile is expected in the window, and a held slot is never taken by a
/// newer message before its shard is written. The log is synced to the
/// window's end before the rename, so the checkpoint never holds what the
/// log could lose.
fn write(q: &Engine, m: &mut Maint) -> Result<SegLive> {
    let vfs = &q.opts.vfs;
    let tmp = q.dir.join(CHECKPOINT_TMP);
    let dst = q.dir.join(CHECKPOINT);
    let f = vfs
        .open(&tmp, true)
        .map_err(|e| Error::io("create checkpoint", &tmp, e))?;
    f.set_len(0)
        .map_err(|e| Error::io("truncate checkpoint", &tmp, e))?;
    let h = {
        let _w = q.gate.write();
        m.buckets_freed += q.gc_buckets() as u64;
        for ms in &q.msgs {
            ms.lock().hold_slots();
        }
        let (pos, seq) = q.log.end_and_seq();
        Header {
            pos: pos.to_raw(),
            seq,
            next_gen: q.next_gen.load(Ordering::Relaxed),
            salt: q.salt,
        }
    };
    let mut w = Writer::new(&*f, &h);
    let (live, bad) = write_shards(q, &mut w);
    write_tables(q, &mut w);
    let (end, end_seq) = q.log.end_and_seq();
    w.window(&Window {
        end: end.to_raw(),
        seq: end_seq,
        next_gen: q.next_gen.load(Ordering::Relaxed),
    });
    if bad {
        return Err(Error::Corrupt {
            path: tmp.clone(),
            offset: 0,
            reason: "a live recipient refers to a freed destination (a mailq bug); the checkpoint was not installed and the log still holds everything".into(),
        });
    }
    let len = w
        .finish()
        .map_err(|e| Error::io("write checkpoint", &tmp, e))?;
    f.sync_data()
        .map_err(|e| Error::io("fdatasync checkpoint", &tmp, e))?;
    q.log.sync_to(end)?;
    vfs.rename(&tmp, &dst)
        .map_err(|e| Error::io("rename checkpoint", &dst, e))?;
    vfs.sync_dir(&q.dir)
        .map_err(|e| Error::io("fsync directory", &q.dir, e))?;
    m.last_pos = Pos::from_raw(h.pos);
    m.bytes_at = q.log.counters().bytes;
    // Also an explicit checkpoint: the next automatic one counts from here.
    q.maintained_at(m.bytes_at);
    // Whatever recovery rebuilt is persisted now.
    q.rebuilt.store(0, Ordering::Relaxed);
    m.checkpoints += 1;
    m.checkpoint_bytes = len;
    // Writing a checkpoint costs its size: the next waits until the log grew
    // CHECKPOINT_RATIO times that (restart still replays O(live) bytes).
    q.maint_every.store(
        q.opts
            .checkpoint_bytes
            .max(len.saturating_mul(CHECKPOINT_RATIO)),
        Ordering::Relaxed,
    );
    Ok(live)
}

/// Deletes dead segments and copies live messages out of sparse ones.
/// Returns how many messages were copied.
///
/// A segment is deleted only when the checkpoint just installed (durable) holds
/// no live message in it: `live` are the counts at the checkpoint's position,
/// never the in-memory ones, which may include completions not yet synced.
fn compact(q: &Engine, m: &mut Maint, live: &SegLive) -> Result<usize> {
    let sparse = remove_dead_segments(q, m, live)?;
    if sparse.is_empty() {
        return Ok(0);
    }
    // In bounded chunks, each made durable before the next is read: what
    // waits in memory for a group commit (and what an enqueuer leading that
    // commit writes) stays under COPY_CHUNK whatever the live bytes.
    // In log order: the reads walk each segment forward (read-ahead blocks
    // serve them; in slot order each record cost a 64 KiB block), and the
    // copies keep the order the ready queues walk.
    let mut todo = live_messages_in(q, &sparse);
    todo.sort_unstable_by_key(|&(_, loc)| loc);
    let mut n = 0;
    let mut rest = &todo[..];
    while !rest.is_empty() {
        let mut bytes = 0u64;
        let k = rest
            .iter()
            .position(|&(_, (_, _, len))| {
                bytes += len as u64;
                bytes > COPY_CHUNK
            })
            .map_or(rest.len(), |i| i.max(1));
        let (chunk, tail) = rest.split_at(k);
        rest = tail;
        let copies = copy_forward(q, chunk)?;
        q.log.sync_all()?;
        // The location moves in memory only once the copy is durable.
        for ((s, l, gen), loc) in copies {
            let mut ms = q.msgs[s].lock();
            if ms.get(l, gen).is_some() {
                ms.relocate(l, loc);
                n += 1;
            }
        }
    }
    m.messages_copied += n as u64;
    Ok(n)
}

/// Log written between two automatic checkpoints, in multiples of the last
/// checkpoint's size (when that is more than `checkpoint_bytes`): bounds
/// the checkpoints' share of the disk's writes to an eighth.
const CHECKPOINT_RATIO: u64 = 8;

/// Bytes of copies compaction makes durable at a time.
const COPY_CHUNK: u64 = 1 << 20;

/// Deletes the sealed segments before the checkpoint position that hold no
/// live message (per `live`); returns the ones to copy out of.
///
/// Copying a segment costs its live bytes and frees the rest, so the
/// emptiest are taken first, and only as many as it takes for the sealed
/// segments left to be at least `compact_below` live on average (2/3: they
/// hold at most 1.5× their live data). A segment at least that live is
/// never copied. Under churn, mail mostly dies on its own: copying every
/// segment that fell below the line wrote about two bytes of copies per byte
/// freed, this writes a fraction of that for the same bound.
fn remove_dead_segments(q: &Engine, m: &mut Maint, live: &SegLive) -> Result<Vec<u32>> {
    let limit = m.last_pos.seg().min(q.log.active_segment());
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
    let mut held = Vec::new();
    let mut dead = Vec::new();
    for seg in segs {
        match live.get(&seg) {
            None => dead.push(seg),
            Some(&(_, bytes)) => held.push((bytes, seg)),
        }
    }
    q.log.remove_segments(&dead)?;
    m.segments_deleted += dead.len() as u64;
    Ok(worth_copying(
        held,
        q.opts.segment_size as f64,
        q.opts.compact_below,
    ))
}

/// Of the sealed segments `held` (live bytes, segment), the emptiest ones
/// whose copying brings the rest to at least `below` live on average, each
/// under `below` itself.
fn worth_copying(mut held: Vec<(u64, u32)>, size: f64, below: f64) -> Vec<u32> {
    // (A record longer than a segment makes its segment as long: counted
    // full, it neither hides sparse segments nor is copied.)
    for h in &mut held {
        h.0 = h.0.min(size as u64);
    }
    let mut disk = held.len() as f64 * size;
    let mut bytes: f64 = held.iter().map(|&(b, _)| b as f64).sum();
    held.sort_unstable();
    let mut out = Vec::new();
    for (b, seg) in held {
        if b as f64 >= below * size || bytes >= below * disk {
            break;
        }
        out.push(seg);
        disk -= size;
        bytes -= b as f64;
    }
    out
}

/// A live message to copy: (shard, slot, generation) and (segment, offset, length).
type Located = ((usize, u32, u32), (u32, u32, u32));

/// The live messages whose record lies in one of `segs`.
fn live_messages_in(q: &Engine, segs: &[u32]) -> Vec<Located> {
    let mut out = Vec::new();
    for (s, shard) in q.msgs.iter().enumerate() {
        let ms = shard.lock();
        for (l, msg) in ms.msgs.iter().enumerate() {
            if msg.gen != 0 && segs.contains(&msg.seg) {
                out.push(((s, l as u32, msg.gen), (msg.seg, msg.off, msg.len)));
            }
        }
    }
    out
}

/// Appends a copy of each message's record (not yet durable); returns where
/// each copy went. Each copy is appended while its message is known live (gate
/// shared + shard lock, generation re-checked), so a copy can never follow the
/// message's last completion in the log. A damaged record is left where it is.
fn copy_forward(q: &Engine, msgs: &[Located]) -> Result<Vec<Located>> {
    let mut copies = Vec::with_capacity(msgs.len());
    for &((s, l, gen), (seg, off, len)) in msgs {
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
        copies.push(((s, l, gen), (at.seg(), at.off() as u32, len)));
    }
    Ok(copies)
}

/// Writes every message shard, each under its own lock (encoded into
/// memory, written after the lock is released), and ends each shard's slot
/// hold; returns the per-segment live counts they describe and whether a
/// live recipient named a free bucket id (no id is freed until the next
/// barrier; one freed at this one may be taken by a new key meanwhile).
fn write_shards(q: &Engine, w: &mut Writer<'_>) -> (SegLive, bool) {
    let mut live = SegLive::new();
    let mut bad = false;
    for s in 0..SHARDS {
        // In pieces of PIECE_SLOTS slots, one lock hold each: a producer or
        // worker on this shard waits for one piece at most. Each message is
        // written whole under one hold, which is all replay needs.
        let mut from = 0usize;
        loop {
            w.defer(true);
            let more = {
                let keys = q.keys.read();
                let mut ms = q.msgs[s].lock();
                let to = (from + PIECE_SLOTS).min(ms.msgs.len());
                w.count(1);
                bad |= write_piece(w, s, &ms, from..to, &keys, &mut live).is_err();
                from = to;
                let more = from < ms.msgs.len();
                if !more {
                    ms.release_slots();
                }
                more
            };
            w.defer(false);
            if !more {
                break;
            }
        }
        w.count(0);
    }
    (live, bad)
}

/// Message slots encoded per hold of a shard's lock.
const PIECE_SLOTS: usize = 4096;

/// Writes the tables: every key by bucket id (free ids empty), the
/// settings of each destination that has some, and the egress sources.
fn write_tables(q: &Engine, w: &mut Writer<'_>) {
    w.begin_tables();
    {
        // Held through the settings (keys → scheduler shards, the lock
        // order): a key created meanwhile (an operator setting a limit on a
        // new destination) would leave a setting whose key is not in the
        // table.
        let keys = q.keys.read();
        w.count(keys.len() as u32);
        for i in 0..keys.len() as u32 {
            w.text(keys.key(i).map(|k| &**k).unwrap_or(""));
        }
        write_settings(q, w);
    }
    let sources = q.sources_to_save();
    w.count(sources.len() as u32);
    for (name, st) in &sources {
        w.source(name, st);
    }
}

/// Writes the operator settings of every destination that has some, by
/// bucket id.
fn write_settings(q: &Engine, w: &mut Writer<'_>) {
    let mut list = Vec::new();
    for s in 0..SHARDS {
        let ss = q.sched[s].lock();
        for bl in 0..ss.buckets.len() as u32 {
            if ss.buckets[bl as usize].key.is_empty() {
                continue;
            }
            let d = ss.settings(bl, q.opts.concurrency);
            let paths = ss.path_suspensions(bl);
            if !d.is_default() || !paths.is_empty() {
                list.push((global(s, bl), d, paths));
            }
        }
    }
    w.count(list.len() as u32);
    for (k, d, paths) in &list {
        w.destination(*k, d, paths);
    }
}

/// Writes one piece of a message shard — the live messages in `slots`
/// with their recipients, after the distinct reasons they use (renumbered
/// densely) — and counts what it wrote in `live`. `Err` if a live
/// recipient names a free bucket id.
fn write_piece(
    w: &mut Writer<'_>,
    s: usize,
    ms: &MsgShard,
    slots: std::ops::Range<usize>,
    keys: &Keys,
    live: &mut SegLive,
) -> std::result::Result<(), ()> {
    let msgs = &ms.msgs;
    let in_piece = || slots.clone().filter(|&l| msgs[l].gen != 0);
    let mut rmap: HashMap<u32, u32> = HashMap::new();
    let mut rlist: Vec<&str> = Vec::new();
    for l in in_piece() {
        let m = &msgs[l];
        for rid in m.first..m.first + m.n as u32 {
            let r = ms.rcpts[rid as usize].reason();
            if r != 0 && !rmap.contains_key(&r) {
                rlist.push(ms.reason(r));
                rmap.insert(r, rlist.len() as u32);
            }
        }
    }
    w.count(rlist.len() as u32);
    for r in &rlist {
        w.text(r);
    }
    w.count(in_piece().count() as u32);
    for l in in_piece() {
        let m = &msgs[l];
        let e = live.entry(m.seg).or_default();
        e.0 += 1;
        e.1 += m.len as u64;
        w.message(&MsgEntry {
            id: MessageId::new(m.gen, global(s, l as u32)).0,
            loc: (m.seg, m.off, m.len),
            received: m.received,
            rcpts: m.n,
        });
        for rid in m.first..m.first + m.n as u32 {
            let r = ms.rcpts[rid as usize];
            let (state, bucket) = persisted(ms, rid, &r);
            // A final recipient of a live message may name a bucket freed since
            // (it no longer counts there); its bucket is never used. A live one
            // in a freed bucket would be a bug: never write it under another key.
            let free = keys.key(bucket).is_none_or(|k| k.is_empty());
            let bucket = match (free, state.is_final()) {
                (true, true) => NO_BUCKET,
                (true, false) => return Err(()),
                (false, _) => bucket,
            };
            w.rcpt(&RcptEntry {
                state: state as u8,
                warned: r.flags() & F_WARNED != 0,
                attempts: r.attempts(),
                next: r.next,
                bucket,
                reason: rmap.get(&r.reason()).copied().unwrap_or(0),
            });
        }
    }
    Ok(())
}

/// The state and bucket a recipient has on disk. An in-flight recipient is
/// written as the operator decided while it was in flight (its own record lies
/// before the checkpoint position).
pub(super) fn persisted(ms: &MsgShard, rid: u32, r: &Rcpt) -> (RcptState, u32) {
    match ms.intents.get(&rid) {
        Some(it) if r.state() == RcptState::Leased => (
            if it.hold {
                RcptState::Held
            } else {
                RcptState::Ready
            },
            it.route.unwrap_or(r.bucket()),
        ),
        _ => (r.state().persisted(), r.bucket()),
    }
}

#[cfg(test)]
mod tests {
    use super::worth_copying;

    /// Segments of 100 bytes, 2/3 to be live on average.
    fn pick(held: &[(u64, u32)]) -> Vec<u32> {
        worth_copying(held.to_vec(), 100.0, 2.0 / 3.0)
    }

    #[test]
    fn a_sparse_segment_among_full_ones_is_left_while_the_average_holds() {
        // 210 of 300 live: the bound (1.5× live) holds; copying segment 0
        // would write 10 bytes to free 90 that are not needed.
        assert_eq!(pick(&[(10, 0), (100, 1), (100, 2)]), Vec::<u32>::new());
    }

    #[test]
    fn the_emptiest_are_copied_until_the_rest_is_two_thirds_live() {
        // 220 of 400: copying segment 0 leaves 210 of 300.
        assert_eq!(pick(&[(60, 2), (10, 0), (100, 3), (50, 1)]), vec![0]);
        // 95 of 300: all three, emptiest first.
        assert_eq!(pick(&[(60, 5), (5, 7), (30, 6)]), vec![7, 6, 5]);
    }

    #[test]
    fn a_segment_longer_than_one_counts_as_one_full_segment() {
        // A 1,000-byte record in a 100-byte segment: 1,002 of 300 live as
        // counted raw would hide the two empty segments.
        assert_eq!(pick(&[(1000, 0), (1, 1), (1, 2)]), vec![1, 2]);
    }

    #[test]
    fn copying_stops_once_the_rest_is_at_the_line() {
        // 66 + 67 of 200 is under 2/3, but once 66 is copied the 67 left is
        // at the line.
        assert_eq!(pick(&[(67, 2), (66, 1)]), vec![1]);
        assert_eq!(pick(&[(67, 2), (67, 1)]), Vec::<u32>::new());
        assert_eq!(pick(&[]), Vec::<u32>::new());
    }
}
