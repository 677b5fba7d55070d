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
use crate::storage::checkpoint::{Header, MsgEntry, RcptEntry, Writer, CHECKPOINT, CHECKPOINT_TMP};
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
    /// Runs a checkpoint and compaction when enough log has been written since the
    /// last one. Another thread already doing maintenance makes this a no-op. A
    /// failure is kept for the stats and retried after another `checkpoint_bytes`
    /// of log, never returned to the caller whose (already durable) operation
    /// triggered it.
    pub(super) fn maybe_maintain(&self) {
        let bytes = self.log.counters().bytes;
        let Some(mut m) = self.maint.try_lock() else {
            return;
        };
        if bytes.saturating_sub(m.bytes_at) < self.opts.checkpoint_bytes {
            return;
        }
        match run(self, &mut m) {
            Ok(()) => m.last_error = None,
            Err(e) => {
                m.bytes_at = bytes;
                m.last_error = Some(e.to_string());
            }
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

/// Writes the checkpoint and returns the per-segment live counts *as of its
/// position*: after the rename those are durable facts, whereas the in-memory
/// counts may already include completions that are not yet synced.
fn write(q: &Engine, m: &mut Maint) -> Result<SegLive> {
    let vfs = &q.opts.vfs;
    let tmp = q.dir.join(CHECKPOINT_TMP);
    let dst = q.dir.join(CHECKPOINT);
    let f = vfs
        .open(&tmp, true)
        .map_err(|e| Error::io("create checkpoint", &tmp, e))?;
    f.set_len(0)
        .map_err(|e| Error::io("truncate checkpoint", &tmp, e))?;
    let (p, sink, live) = {
        // The encode streams to the file in bounded pieces (page cache only; the
        // fsync comes after the gate is released): no checkpoint-sized buffer.
        let _w = q.gate.write();
        m.buckets_freed += q.gc_buckets() as u64;
        let (pos, seq) = q.log.end_and_seq();
        let h = Header {
            pos: pos.to_raw(),
            seq,
            next_gen: q.next_gen.load(Ordering::Relaxed),
            salt: q.salt,
        };
        let mut w = Writer::new(&*f, &h);
        match snapshot(q, &mut w) {
            Ok(live) => (pos, w, live),
            Err(()) => {
                return Err(Error::Corrupt {
                    path: tmp.clone(),
                    offset: 0,
                    reason: "a live recipient refers to a freed destination (a mailq bug); the checkpoint was not installed and the log still holds everything".into(),
                })
            }
        }
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
    let copies = copy_forward(q, &live_messages_in(q, &sparse))?;
    q.log.sync_all()?;
    // The location moves in memory only once the copy is durable.
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

/// Deletes the sealed segments before the checkpoint position that hold no
/// live message (per `live`); returns the sparse ones, worth copying out of.
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
    Ok(sparse)
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

/// Writes the live state (under the exclusive gate) and returns the per-segment
/// live counts it describes. `Err` if a live recipient names a freed key.
fn snapshot(q: &Engine, w: &mut Writer<'_>) -> std::result::Result<SegLive, ()> {
    let keys = q.keys.read();
    let remap = write_keys(w, &keys);
    write_settings(q, w, &remap);
    let sources = q.sources_to_save();
    w.count(sources.len() as u32);
    for (name, st) in &sources {
        w.source(name, st);
    }
    let mut live = SegLive::new();
    for s in 0..SHARDS {
        let ms = q.msgs[s].lock();
        for (&seg, &(n, b)) in &ms.seg_live {
            let e = live.entry(seg).or_default();
            e.0 += n;
            e.1 += b;
        }
        write_shard(w, s, &ms, &remap)?;
    }
    Ok(live)
}

/// Writes only live keys, renumbered densely (freed ids are holes in memory);
/// returns the map from bucket id to checkpoint index (`u32::MAX`: freed).
fn write_keys(w: &mut Writer<'_>, keys: &Keys) -> Vec<u32> {
    let mut remap = vec![u32::MAX; keys.len()];
    let mut n = 0u32;
    for (i, r) in remap.iter_mut().enumerate() {
        if keys.key(i as u32).is_some_and(|k| !k.is_empty()) {
            *r = n;
            n += 1;
        }
    }
    w.count(n);
    for (i, &r) in remap.iter().enumerate() {
        if r != u32::MAX {
            w.text(keys.key(i as u32).map(|k| &**k).unwrap_or(""));
        }
    }
    remap
}

/// Writes the operator settings of every destination that has some, by
/// checkpoint key index.
fn write_settings(q: &Engine, w: &mut Writer<'_>, remap: &[u32]) {
    let mut list = Vec::new();
    for s in 0..SHARDS {
        let ss = q.sched[s].lock();
        for bl in 0..ss.buckets.len() as u32 {
            let d = ss.settings(bl, q.opts.concurrency);
            let paths = ss.path_suspensions(bl);
            match remap.get(global(s, bl) as usize) {
                Some(&k) if k != u32::MAX && (!d.is_default() || !paths.is_empty()) => {
                    list.push((k, d, paths))
                }
                _ => {}
            }
        }
    }
    w.count(list.len() as u32);
    for (k, d, paths) in &list {
        w.destination(*k, d, paths);
    }
}

/// Writes one message shard: the reasons its live recipients use (renumbered
/// densely), then every live message with its recipients.
fn write_shard(
    w: &mut Writer<'_>,
    s: usize,
    ms: &MsgShard,
    remap: &[u32],
) -> std::result::Result<(), ()> {
    let mut rmap: HashMap<u32, u32> = HashMap::new();
    let mut rlist: Vec<&str> = Vec::new();
    for m in ms.msgs.iter().filter(|m| m.gen != 0) {
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
    w.count(ms.live_msgs as u32);
    for (l, m) in ms.msgs.iter().enumerate() {
        if m.gen == 0 {
            continue;
        }
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
            let bucket = match remap.get(bucket as usize) {
                Some(&b) if b != u32::MAX => b,
                _ if state.is_final() => 0,
                _ => return Err(()),
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
