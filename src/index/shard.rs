//! A message shard: message slots ([`Msg`]), their recipients in a slab with a
//! coalescing best-fit allocator, per-segment live counts, pending bounces and
//! in-flight operator decisions.
//! Depends on the rest of `index`.

use super::reasons::Reason;
use super::*;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// What the queue holds, summed over the shards that share it: recipients not
/// yet final and bytes of live message records. Read without locks (enqueue's
/// backpressure); each shard adds its changes under its own lock.
#[derive(Debug, Default)]
pub struct Load {
    rcpts: AtomicI64,
    bytes: AtomicI64,
}

impl Load {
    /// Recipients not yet final.
    pub fn recipients(&self) -> u64 {
        self.rcpts.load(Ordering::Relaxed).max(0) as u64
    }

    /// Bytes of live message records.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    fn add(&self, rcpts: i64, bytes: i64) {
        if rcpts != 0 {
            self.rcpts.fetch_add(rcpts, Ordering::Relaxed);
        }
        if bytes != 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// One live message. 28 bytes (a third of it per recipient at three recipients).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Msg {
    /// Generation (0 = free slot).
    pub gen: u32,
    /// Segment of the message record.
    pub seg: u32,
    /// Offset of the message record.
    pub off: u32,
    /// Length of the record on disk (with header and padding).
    pub len: u32,
    /// Accepted at (unix seconds).
    pub received: u32,
    /// First recipient (local index in the shard's recipient slab).
    pub first: u32,
    /// Number of recipients.
    pub n: u16,
    /// Recipients not yet in a final state.
    pub live: u16,
}

/// Bytes per free block in the two B-trees: 11 entries of 8 bytes per
/// 104-byte leaf, at least half full, in each of the two trees.
const FREE_BLOCK_BYTES: usize = 40;

/// A shard of messages and their recipients.
#[derive(Default)]
pub struct MsgShard {
    /// Message slots.
    pub msgs: Slab<Msg>,
    pub(super) free_msgs: Vec<u32>,
    /// Recipient slab; a message's recipients are contiguous. Records at and
    /// beyond `rcpt_end` are free (default), but stay addressable: a stale
    /// reference in a ready queue or the timer wheel, or a recipient index
    /// read again after a lock was dropped, never points outside the slab.
    pub rcpts: Slab<Rcpt>,
    /// End of the used part of `rcpts`: plain growth allocates here. A free
    /// block reaching it moves it back.
    pub(super) rcpt_end: u32,
    /// Free blocks of the recipient slab: start → length …
    pub(super) free_by_start: BTreeMap<u32, u32>,
    /// … and (length, start), for best fit.
    pub(super) free_by_size: BTreeSet<(u32, u32)>,
    /// Recipient records in free blocks.
    pub(super) free_rcpt_count: usize,
    /// Interned reasons by id; id 0 (no reason) is unused.
    pub(super) reasons: Vec<Reason>,
    /// Open-addressing hash table of reason ids (0: empty), linear probing.
    pub(super) reason_table: Vec<u32>,
    /// Ids in the table.
    pub(super) reason_live: usize,
    /// Unused ids below `reasons.len()`; capacity kept at least `reasons.capacity()`.
    pub(super) free_reasons: Vec<u32>,
    /// Heap bytes of the interned texts.
    pub(super) reason_text_bytes: usize,
    pub(super) reason_hasher: RandomState,
    pub(super) reasons_not_kept: u64,
    pub(super) reasons_normalised: u64,
    /// Live messages and live record bytes per segment.
    pub seg_live: HashMap<u32, (u32, u64)>,
    /// Failed/expired recipients whose bounce has not been handed out.
    pub bounces: std::collections::VecDeque<RcptRef>,
    /// Live messages.
    pub live_msgs: usize,
    /// Operator decisions taken while a recipient was in flight, applied when its
    /// attempt ends (keyed by local recipient index; cleared when it goes final).
    pub intents: HashMap<u32, Intent>,
    /// The queue-wide totals this shard counts in (see [`MsgShard::share_load`]).
    load: Arc<Load>,
    /// While a checkpoint is between its position and this shard's snapshot,
    /// slots freed are kept here rather than reused (see
    /// [`MsgShard::hold_slots`]).
    held_slots: Option<Vec<u32>>,
}

/// What the operator decided about an in-flight recipient (already persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Intent {
    /// Hold it when the attempt ends without delivering it.
    pub hold: bool,
    /// Move it to this bucket when the attempt ends.
    pub route: Option<u32>,
}

impl MsgShard {
    /// Allocates a message slot (generation still 0).
    pub fn alloc_msg(&mut self) -> u32 {
        if let Some(s) = self.free_msgs.pop() {
            return s;
        }
        self.msgs.grow(1);
        (self.msgs.len() - 1) as u32
    }

    /// Ensures a specific slot exists (recovery) and returns it.
    pub fn ensure_slot(&mut self, local: u32) {
        if self.msgs.len() <= local as usize {
            self.msgs.grow(local as usize + 1 - self.msgs.len());
        }
    }

    /// Rebuilds the free-slot list after recovery placed messages at fixed slots.
    pub fn rebuild_free(&mut self) {
        self.free_msgs = (0..self.msgs.len() as u32)
            .rev()
            .filter(|&s| self.msgs[s as usize].gen == 0)
            .collect();
    }

    /// Returns an unused slot (e.g. when enqueue failed before insertion).
    pub fn release_slot(&mut self, local: u32) {
        self.msgs[local as usize] = Msg::default();
        self.free_slot(local);
    }

    fn free_slot(&mut self, local: u32) {
        match &mut self.held_slots {
            Some(held) => held.push(local),
            None => self.free_msgs.push(local),
        }
    }

    /// From now until [`MsgShard::release_slots`], a freed slot is not
    /// reused. A checkpoint taken while the log grows holds them between its
    /// position and its snapshot of this shard: so no message that began and
    /// ended in between can share a slot with one the snapshot holds, and
    /// replaying from the position never meets a slot taken by a newer
    /// message.
    pub fn hold_slots(&mut self) {
        self.held_slots.get_or_insert_with(Vec::new);
    }

    /// Ends [`MsgShard::hold_slots`]: the slots freed meanwhile are reused again.
    pub fn release_slots(&mut self) {
        if let Some(held) = self.held_slots.take() {
            self.free_msgs.extend(held);
        }
    }

    /// Allocates `n` contiguous recipient records: the smallest free block that
    /// fits (split, the rest stays free), else at the end of the slab.
    pub fn alloc_rcpts(&mut self, n: u16) -> u32 {
        let n = n as u32;
        if n == 0 {
            return self.rcpt_end;
        }
        if let Some(&(len, start)) = self.free_by_size.range((n, 0)..).next() {
            self.free_by_size.remove(&(len, start));
            self.free_by_start.remove(&start);
            if len > n {
                // The rest's neighbours are this allocation and a used block.
                self.free_by_start.insert(start + n, len - n);
                self.free_by_size.insert((len - n, start + n));
            }
            self.free_rcpt_count -= n as usize;
            return start;
        }
        let s = self.rcpt_end;
        self.rcpt_end += n;
        if self.rcpt_end as usize > self.rcpts.len() {
            self.rcpts.grow(self.rcpt_end as usize - self.rcpts.len());
        }
        s
    }

    /// Frees the (reset) block `start..start + n`: merged with free neighbours,
    /// and given back to plain growth when it ends the used part of the slab.
    fn free_rcpt_block(&mut self, start: u32, n: u32) {
        if n == 0 {
            return;
        }
        let (mut start, mut len) = (start, n);
        self.free_rcpt_count += n as usize;
        if let Some((&ls, &ll)) = self.free_by_start.range(..start).next_back() {
            if ls + ll == start {
                self.free_by_start.remove(&ls);
                self.free_by_size.remove(&(ll, ls));
                start = ls;
                len += ll;
            }
        }
        if let Some(rl) = self.free_by_start.remove(&(start + len)) {
            self.free_by_size.remove(&(rl, start + len));
            len += rl;
        }
        if start + len == self.rcpt_end {
            self.free_rcpt_count -= len as usize;
            self.rcpt_end = start;
        } else {
            self.free_by_start.insert(start, len);
            self.free_by_size.insert((len, start));
        }
    }

    /// Inserts a message at `local` with recipients in state `New`.
    pub fn insert(
        &mut self,
        local: u32,
        gen: u32,
        loc: (u32, u32, u32),
        received: u32,
        buckets: &[u32],
    ) {
        let n = buckets.len() as u16;
        let first = self.alloc_rcpts(n);
        for (i, &b) in buckets.iter().enumerate() {
            self.rcpts[first as usize + i] = Rcpt::new(local, b);
        }
        self.msgs[local as usize] = Msg {
            gen,
            seg: loc.0,
            off: loc.1,
            len: loc.2,
            received,
            first,
            n,
            live: n,
        };
        let e = self.seg_live.entry(loc.0).or_default();
        e.0 += 1;
        e.1 += loc.2 as u64;
        self.live_msgs += 1;
        self.load.add(n as i64, loc.2 as i64);
    }

    /// Makes this shard count in `load` from now on, adding what it holds.
    pub fn share_load(&mut self, load: &Arc<Load>) {
        let (rcpts, bytes) = self.held();
        load.add(rcpts as i64, bytes as i64);
        self.load = load.clone();
    }

    /// Recipients not yet final and bytes of live records, counted afresh
    /// (the invariant checker compares the shared totals with them).
    pub fn held(&self) -> (u64, u64) {
        let rcpts = self
            .msgs
            .iter()
            .filter(|m| m.gen != 0)
            .map(|m| m.live as u64)
            .sum();
        (rcpts, self.seg_live.values().map(|e| e.1).sum())
    }

    /// Moves a message's location (compaction).
    pub fn relocate(&mut self, local: u32, loc: (u32, u32, u32)) {
        let m = self.msgs[local as usize];
        self.seg_dec(m.seg, m.len);
        let e = self.seg_live.entry(loc.0).or_default();
        e.0 += 1;
        e.1 += loc.2 as u64;
        self.load.add(0, loc.2 as i64);
        let m = &mut self.msgs[local as usize];
        m.seg = loc.0;
        m.off = loc.1;
        m.len = loc.2;
    }

    fn seg_dec(&mut self, seg: u32, len: u32) {
        if let Some(e) = self.seg_live.get_mut(&seg) {
            self.load.add(0, -(e.1.min(len as u64) as i64));
            e.0 = e.0.saturating_sub(1);
            e.1 = e.1.saturating_sub(len as u64);
            if e.0 == 0 {
                self.seg_live.remove(&seg);
            }
        }
    }

    /// Looks up a live message by local slot and generation.
    pub fn get(&self, local: u32, gen: u32) -> Option<&Msg> {
        self.msgs
            .get(local as usize)
            .filter(|m| m.gen == gen && gen != 0)
    }

    /// Index of recipient `idx` of message at `local`.
    pub fn rcpt_index(&self, local: u32, idx: u32) -> Option<u32> {
        let m = self.msgs.get(local as usize)?;
        if m.gen == 0 || idx >= m.n as u32 {
            return None;
        }
        Some(m.first + idx)
    }

    /// Called when a recipient reached a final state; frees the message when it was the last.
    /// Returns true when the message was freed.
    pub fn finish_rcpt(&mut self, rid: u32) -> bool {
        let r = self.rcpts[rid as usize];
        self.set_reason(rid, 0);
        let local = r.msg;
        let m = &mut self.msgs[local as usize];
        if m.live > 0 {
            self.load.add(-1, 0);
        }
        m.live = m.live.saturating_sub(1);
        if m.live > 0 {
            return false;
        }
        let m = *m;
        for i in 0..m.n as u32 {
            let id = (m.first + i) as usize;
            let reason = self.rcpts[id].reason();
            if reason != 0 {
                self.release_reason(reason);
            }
            self.rcpts[id] = Rcpt::default();
        }
        self.free_rcpt_block(m.first, m.n as u32);
        self.seg_dec(m.seg, m.len);
        self.msgs[local as usize] = Msg::default();
        self.free_slot(local);
        self.live_msgs -= 1;
        true
    }

    /// Bytes of memory held by this shard's index structures.
    pub fn memory(&self) -> usize {
        self.msgs.memory()
            + self.free_msgs.capacity() * 4
            + self.rcpts.memory()
            + self.free_by_start.len() * FREE_BLOCK_BYTES
            + self.reason_memory()
            + self.bounces.capacity() * 4
            + self.seg_live.capacity() * 24
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A shard with `n` one-recipient messages; returns their recipient indices.
    pub(crate) fn shard_with(n: u32) -> (MsgShard, Vec<u32>) {
        let mut s = MsgShard::default();
        let mut rids = Vec::new();
        for i in 0..n {
            let m = s.alloc_msg();
            s.insert(m, i + 1, (1, 24, 100), 0, &[1]);
            rids.push(s.rcpt_index(m, 0).expect("recipient"));
        }
        (s, rids)
    }

    /// Checks the free-block structures against the slab and returns free records.
    fn check_free(s: &MsgShard) -> usize {
        assert_eq!(s.free_by_start.len(), s.free_by_size.len());
        let mut end = 0;
        let mut total = 0;
        for (&start, &len) in &s.free_by_start {
            assert!(len > 0);
            assert!(s.free_by_size.contains(&(len, start)));
            assert!(
                start > end || (start == 0 && end == 0),
                "uncoalesced or overlapping at {start}"
            );
            end = start + len;
            total += len as usize;
        }
        assert!(
            end < s.rcpt_end || s.free_by_start.is_empty(),
            "free tail not given back"
        );
        assert_eq!(total, s.free_rcpt_count);
        total
    }

    #[test]
    fn freed_single_blocks_serve_larger_messages() {
        let (mut s, rids) = shard_with(3000);
        let high = s.rcpts.len();
        assert_eq!((high, s.rcpt_end), (3000, 3000));
        // Keep the last message so the freed space is not simply the slab's tail.
        for &rid in &rids[..2999] {
            assert!(s.finish_rcpt(rid));
        }
        assert_eq!(check_free(&s), 2999);
        assert_eq!(s.free_by_start.len(), 1, "coalesced into one block");
        for i in 0..999 {
            let m = s.alloc_msg();
            s.insert(m, 10_000 + i, (1, 24, 100), 0, &[1, 2, 3]);
        }
        assert_eq!(
            s.rcpts.len(),
            high,
            "three-recipient messages reuse the space"
        );
        assert_eq!(s.rcpt_end, 3000, "the kept message still ends it");
        assert_eq!(check_free(&s), 2);
        // Freeing everything gives the whole slab back to plain growth.
        let live: Vec<u32> = (0..s.msgs.len() as u32)
            .filter(|&m| s.msgs[m as usize].gen != 0)
            .collect();
        for m in live {
            let msg = s.msgs[m as usize];
            for i in 0..msg.n as u32 {
                s.finish_rcpt(msg.first + i);
            }
        }
        assert_eq!(s.rcpt_end, 0);
        assert_eq!(check_free(&s), 0);
        assert!(s.rcpts.iter().all(|r| r.msg == 0 && r.reason() == 0));
        // Plain growth reuses the freed tail.
        let m = s.alloc_msg();
        s.insert(m, 20_000, (1, 24, 100), 0, &[1; 300]);
        assert_eq!((s.rcpt_index(m, 0), s.rcpt_end), (Some(0), 300));
        assert_eq!(s.rcpts.len(), high);
    }

    #[test]
    fn interleaved_frees_coalesce() {
        let mut s = MsgShard::default();
        let blocks: Vec<u32> = (0..6).map(|_| s.alloc_rcpts(2)).collect();
        assert_eq!(blocks, vec![0, 2, 4, 6, 8, 10]);
        s.free_rcpt_block(2, 2);
        s.free_rcpt_block(6, 2);
        assert_eq!(check_free(&s), 4);
        assert_eq!(s.free_by_start.len(), 2);
        s.free_rcpt_block(4, 2); // joins both neighbours
        assert_eq!(s.free_by_start.iter().collect::<Vec<_>>(), vec![(&2, &6)]);
        s.free_rcpt_block(10, 2); // the tail: the used part shrinks
        assert_eq!(s.rcpt_end, 10);
        s.free_rcpt_block(8, 2); // joins the free run and reaches the end
        assert_eq!(s.rcpt_end, 2);
        assert!(s.free_by_start.is_empty());
        assert_eq!(s.free_rcpt_count, 0);
        // Best fit: the 3-block goes to the 3-hole, not the larger one.
        let b: Vec<u32> = (0..6).map(|_| s.alloc_rcpts(3)).collect();
        s.free_rcpt_block(b[1], 3);
        s.free_rcpt_block(b[3], 3);
        s.free_rcpt_block(b[4], 3);
        assert_eq!(s.alloc_rcpts(2), b[1]);
        assert_eq!(s.alloc_rcpts(6), b[3]);
        assert_eq!(check_free(&s), 1);
    }

    #[test]
    fn rcpt_allocator_against_model() {
        for seed in 1..=8u64 {
            let mut x = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
            let mut rnd = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut s = MsgShard::default();
            // Allocated blocks (start, len); each record tagged with its owner.
            let mut live: Vec<(u32, u32)> = Vec::new();
            let mut owner: HashMap<u32, usize> = HashMap::new();
            let mut next = 0usize;
            for _ in 0..20_000 {
                if live.is_empty() || rnd(100) < 55 {
                    let n = [1, 1, 1, 2, 3, 5, 17, 300][rnd(8) as usize];
                    let start = s.alloc_rcpts(n);
                    for i in start..start + n as u32 {
                        assert!(i < s.rcpt_end && (i as usize) < s.rcpts.len());
                        assert_eq!(owner.insert(i, next), None, "overlap at {i}");
                        assert_eq!(s.rcpts[i as usize].msg, 0, "handed out a used record");
                        s.rcpts[i as usize].msg = next as u32 + 1;
                    }
                    live.push((start, n as u32));
                    next += 1;
                } else {
                    let (start, n) = live.swap_remove(rnd(live.len() as u64) as usize);
                    for i in start..start + n {
                        assert!(owner.remove(&i).is_some());
                        s.rcpts[i as usize] = Rcpt::default();
                    }
                    s.free_rcpt_block(start, n);
                }
                let used: usize = live.iter().map(|b| b.1 as usize).sum();
                assert_eq!(used, owner.len());
                assert_eq!(
                    check_free(&s) + used,
                    s.rcpt_end as usize,
                    "free + used = len"
                );
                let top = live.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
                assert!(top <= s.rcpt_end);
                assert!(
                    s.free_by_start.is_empty() || top == s.rcpt_end,
                    "the used part ends with a used block"
                );
                for (&start, &len) in &s.free_by_start {
                    assert!(!owner.contains_key(&start) && !owner.contains_key(&(start + len - 1)));
                }
            }
        }
    }

    #[test]
    fn alloc_free_reuse() {
        let mut s = MsgShard::default();
        let a = s.alloc_msg();
        s.insert(a, 1, (1, 24, 100), 0, &[3, 4]);
        let r0 = s.rcpt_index(a, 0).unwrap();
        s.set_reason_text(r0, "451 later");
        s.set_reason_text(r0 + 1, "451 later");
        assert!(!s.finish_rcpt(r0));
        assert!(s.finish_rcpt(r0 + 1));
        assert_eq!(s.live_msgs, 0);
        assert_eq!(s.reason_live, 0);
        assert_eq!(s.reason_text_bytes, 0);
        let b = s.alloc_msg();
        assert_eq!(a, b);
        s.insert(b, 2, (1, 200, 100), 0, &[5, 6]);
        assert_eq!(s.rcpt_index(b, 0), Some(r0), "block reused");
        assert!(s.get(b, 1).is_none());
    }
}
