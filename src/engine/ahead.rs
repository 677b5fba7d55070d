//! A delivery session's read-ahead. When the record of the message a
//! session leases is not at hand, the session looks at the next messages in
//! its destination's ready FIFO (under the scheduler lock it already holds)
//! and reads their records too, with one `pread` per run of nearby records
//! ([`Log::read_records`]), keeping them until it leases those messages.
//! A session so reads the records it will deliver, in few system calls,
//! and not the 64 KiB blocks of the shared read-ahead (most of which another
//! destination's messages fill).
//!
//! A record kept here is never stale: the bytes at a log position never
//! change once durable (segment numbers are not reused), each record was
//! checked (CRC) when read and is checked against the leased message's id
//! when used, and a message moved by compaction is looked up at its new
//! position. A record another session delivers first is just not used.
//! Nothing here holds a segment file open (sessions are many; the log keeps
//! at most 64 open): the delivery opens its message's segment right after
//! the lease, as without the read-ahead.
//!
//! Only a session alone on its destination peeks; sessions sharing one
//! take the FIFO in turns and read through the log's shared read-ahead.
//! Depends on `index`, `sched`, `storage`, the rest of `engine`.

use super::Engine;
use crate::error::Result;
use crate::index::*;
use crate::sched::SchedShard;
use crate::storage::log::Log;
use crate::storage::record::Kind;
use bytes::Bytes;

/// Most messages read ahead at once…
const AHEAD: usize = 32;
/// … and most bytes of their records (a record larger than a read, below,
/// is read only when its message is leased).
const AHEAD_BYTES: u64 = 256 << 10;
/// Most ready FIFO entries looked at for them (entries of recipients leased
/// with an earlier one, or gone, are skipped), all under the scheduler
/// shard's lock.
const LOOK: usize = 8 * AHEAD;
/// Records less than this apart share one read…
const GAP: u64 = 4 << 10;
/// … of at most this many bytes.
const CHUNK: usize = 64 << 10;

/// (segment, offset, record length) of a message record, as the index keeps it.
pub(crate) type Loc = (u32, u32, u32);

/// The records a session read ahead, and where the next ones are.
#[derive(Default)]
pub(crate) struct Ahead {
    recs: Vec<(u32, u32, Kind, Bytes)>,
    /// Locations of the messages next in the FIFO, found by [`Ahead::peek`].
    next: Vec<Loc>,
}

impl Ahead {
    /// Whether the record at `loc` was read ahead.
    pub(crate) fn has(&self, loc: Loc) -> bool {
        self.recs.iter().any(|r| (r.0, r.1) == (loc.0, loc.1))
    }

    /// Notes where the records of up to `n` messages next in bucket `bl`'s
    /// ready FIFO (recipients ready for `bucket`) are, for the next
    /// [`Ahead::read`]. Lock order: the caller holds the sched shard; each
    /// message shard is taken after it, as leasing does.
    pub(crate) fn peek(&mut self, q: &Engine, ss: &SchedShard, bl: u32, bucket: u32, n: usize) {
        self.next.clear();
        let n = n.min(AHEAD);
        let mut bytes = 0u64;
        let mut held: Option<(usize, parking_lot::MutexGuard<'_, MsgShard>)> = None;
        for rr in ss.buckets[bl as usize].ready.iter().take(LOOK) {
            if self.next.len() >= n {
                break;
            }
            let msh = rr.shard();
            if held.as_ref().is_none_or(|(s, _)| *s != msh) {
                drop(held.take()); // one message shard at a time
                held = Some((msh, q.msgs[msh].lock()));
            }
            let Some((_, ms)) = held.as_ref() else {
                continue;
            };
            let Some(r) = ms.rcpts.get(rr.local() as usize) else {
                continue;
            };
            if !r.ready_in(bucket) {
                continue;
            }
            let m = ms.msgs[r.msg as usize];
            let loc = (m.seg, m.off, m.len);
            if self.next.last() == Some(&loc) || m.len as usize > CHUNK {
                continue;
            }
            bytes += m.len as u64;
            if bytes > AHEAD_BYTES {
                break;
            }
            self.next.push(loc);
        }
    }

    /// The record at `loc`: the one read ahead, else read now together with
    /// those [`Ahead::peek`] found (which replace what was kept). The record
    /// read stays kept too: a message with more recipients at the
    /// destination than one delivery takes is leased again at once.
    pub(crate) fn read(&mut self, log: &Log, loc: Loc) -> Result<(Kind, Bytes)> {
        if let Some(r) = self.recs.iter().find(|r| (r.0, r.1) == (loc.0, loc.1)) {
            return Ok((r.2, r.3.clone()));
        }
        self.recs.clear();
        if self.next.is_empty() {
            // Nothing peeked (a session sharing its destination): through the
            // log's shared read-ahead, which serves sessions walking one FIFO.
            let (kind, rec) = log.read_record(loc.0, loc.1 as u64, loc.2 as usize)?;
            self.keep(loc.0, loc.1, kind, &rec);
            return Ok((kind, rec));
        }
        let mut want = std::mem::take(&mut self.next);
        want.push(loc);
        want.sort_unstable();
        want.dedup_by_key(|l| (l.0, l.1));
        let mut mine = None;
        let mut spans = Vec::with_capacity(want.len());
        for seg in want.chunk_by(|a, b| a.0 == b.0) {
            spans.clear();
            spans.extend(seg.iter().map(|l| (l.1 as u64, l.2 as usize)));
            log.read_records(seg[0].0, &spans, CHUNK, GAP, |k, res| {
                let at = (seg[k].0, seg[k].1);
                if let Ok((kind, rec)) = &res {
                    self.keep(at.0, at.1, *kind, rec);
                }
                if at == (loc.0, loc.1) {
                    mine = Some(res);
                }
                Ok(true)
            })?;
        }
        want.clear();
        self.next = want;
        match mine {
            Some(res) => res,
            None => log.read_record(loc.0, loc.1 as u64, loc.2 as usize),
        }
    }

    /// Keeps a record read (not one larger than a read-ahead run: a big
    /// message is not held between deliveries).
    fn keep(&mut self, seg: u32, off: u32, kind: Kind, rec: &Bytes) {
        if rec.len() <= CHUNK {
            self.recs.push((seg, off, kind, rec.clone()));
        }
    }
}
