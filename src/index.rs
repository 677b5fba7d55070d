//! The in-memory recipient index: one compact record per live recipient,
//! grouped by message, sharded by message slot.
//!
//! Addresses and bodies stay on disk; a recipient costs [`Rcpt`] (16 bytes)
//! plus its share of [`Msg`] (28 bytes per message) plus 4 bytes in a ready
//! queue or timer slot.

use crate::types::RcptState;
use std::collections::HashMap;

/// Number of shards for messages and for buckets.
pub const SHARDS: usize = 16;
const SHARD_BITS: u32 = 4;

/// A recipient reference: local recipient index and shard packed in a u32.
pub type RcptRef = u32;

/// Packs (shard, local index).
pub fn rref(shard: usize, local: u32) -> RcptRef {
    (local << SHARD_BITS) | shard as u32
}

/// Shard of a recipient reference.
pub fn rref_shard(r: RcptRef) -> usize {
    (r & (SHARDS as u32 - 1)) as usize
}

/// Local index of a recipient reference.
pub fn rref_local(r: RcptRef) -> u32 {
    r >> SHARD_BITS
}

/// Shard of a global slot / bucket id.
pub fn shard_of(id: u32) -> usize {
    (id & (SHARDS as u32 - 1)) as usize
}

/// Local index of a global slot / bucket id.
pub fn local_of(id: u32) -> u32 {
    id >> SHARD_BITS
}

/// Global id from shard and local index.
pub fn global(shard: usize, local: u32) -> u32 {
    (local << SHARD_BITS) | shard as u32
}

/// One live recipient, packed into 16 bytes:
/// `bs` = bucket (24 bits) | state (4) | flags (4); `ra` = reason id (20) | attempts (12).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Rcpt {
    /// Local message slot in the same shard.
    pub msg: u32,
    /// Next attempt (unix seconds) when deferred.
    pub next: u32,
    bs: u32,
    ra: u32,
}

/// Most buckets (routing keys) a queue can hold.
pub const MAX_BUCKETS: u32 = 1 << 24;
/// Most distinct live error texts per shard.
pub const MAX_REASONS: u32 = (1 << 20) - 1;
/// Attempts saturate here.
pub const MAX_ATTEMPTS: u16 = (1 << 12) - 1;

/// The bounce report of this recipient has been handed out (not persisted).
pub const F_BOUNCE_TAKEN: u8 = 1;

impl Rcpt {
    /// A recipient of message slot `msg` in `bucket`, state `New`.
    pub fn new(msg: u32, bucket: u32) -> Self {
        let mut r = Rcpt {
            msg,
            ..Rcpt::default()
        };
        r.set_bucket(bucket);
        r
    }
    /// State.
    pub fn state(&self) -> RcptState {
        RcptState::from_u8(((self.bs >> 4) & 0xf) as u8).unwrap_or(RcptState::Corrupt)
    }
    /// Sets the state.
    pub fn set_state(&mut self, s: RcptState) {
        self.bs = (self.bs & !0xf0) | ((s as u32 & 0xf) << 4);
    }
    /// Bucket id.
    pub fn bucket(&self) -> u32 {
        self.bs >> 8
    }
    /// Sets the bucket id (< [`MAX_BUCKETS`]).
    pub fn set_bucket(&mut self, b: u32) {
        debug_assert!(b < MAX_BUCKETS);
        self.bs = (self.bs & 0xff) | (b << 8);
    }
    /// Flags (`F_*`).
    pub fn flags(&self) -> u8 {
        (self.bs & 0xf) as u8
    }
    /// Sets flags.
    pub fn set_flags(&mut self, f: u8) {
        self.bs = (self.bs & !0xf) | (f as u32 & 0xf);
    }
    /// Attempts so far.
    pub fn attempts(&self) -> u16 {
        (self.ra & 0xfff) as u16
    }
    /// Sets attempts (saturating at [`MAX_ATTEMPTS`]).
    pub fn set_attempts(&mut self, a: u16) {
        self.ra = (self.ra & !0xfff) | a.min(MAX_ATTEMPTS) as u32;
    }
    /// Interned last-error id (0 = none).
    pub fn reason(&self) -> u32 {
        self.ra >> 12
    }
    fn set_reason_id(&mut self, id: u32) {
        self.ra = (self.ra & 0xfff) | (id.min(MAX_REASONS) << 12);
    }
}

/// A vector that grows in fixed chunks: no doubling slack, no large reallocation
/// (and no copy of millions of records under a lock) as the queue grows.
pub struct Slab<T> {
    chunks: Vec<Box<[T]>>,
    len: usize,
}

const CHUNK_BITS: usize = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

impl<T: Copy + Default> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy + Default> Slab<T> {
    /// Number of elements.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }
    /// Element `i`, if in range.
    pub fn get(&self, i: usize) -> Option<&T> {
        if i < self.len {
            Some(&self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)])
        } else {
            None
        }
    }
    /// Grows by `n` default elements.
    pub fn grow(&mut self, n: usize) {
        self.len += n;
        while self.chunks.len() * CHUNK < self.len {
            self.chunks
                .push(vec![T::default(); CHUNK].into_boxed_slice());
        }
    }
    /// Iterates over all elements.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        (0..self.len).map(move |i| &self[i])
    }
    /// Bytes allocated.
    pub fn memory(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<T>() + self.chunks.capacity() * 16
    }
}

impl<T: Copy + Default> std::ops::Index<usize> for Slab<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        assert!(i < self.len, "slab index {i} out of range {}", self.len);
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

impl<T: Copy + Default> std::ops::IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        assert!(i < self.len, "slab index {i} out of range {}", self.len);
        &mut self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
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

/// A shard of messages and their recipients.
#[derive(Default)]
pub struct MsgShard {
    /// Message slots.
    pub msgs: Slab<Msg>,
    free_msgs: Vec<u32>,
    /// Recipient slab; a message's recipients are contiguous.
    pub rcpts: Slab<Rcpt>,
    /// Free recipient blocks by length.
    free_rcpts: HashMap<u16, Vec<u32>>,
    free_rcpt_count: usize,
    /// Interned reasons: id → (text, refcount); id 0 is unused.
    reasons: Vec<(Box<str>, u32)>,
    reason_ids: HashMap<Box<str>, u32>,
    free_reasons: Vec<u32>,
    /// Live messages and live record bytes per segment.
    pub seg_live: HashMap<u32, (u32, u64)>,
    /// Failed/expired recipients whose bounce has not been handed out.
    pub bounces: std::collections::VecDeque<RcptRef>,
    /// Live messages.
    pub live_msgs: usize,
    /// Operator decisions taken while a recipient was in flight, applied when its
    /// attempt ends (keyed by local recipient index; cleared when it goes final).
    pub intents: HashMap<u32, Intent>,
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
        self.free_msgs.push(local);
    }

    /// Allocates `n` contiguous recipient records.
    pub fn alloc_rcpts(&mut self, n: u16) -> u32 {
        if let Some(v) = self.free_rcpts.get_mut(&n) {
            if let Some(s) = v.pop() {
                self.free_rcpt_count -= n as usize;
                return s;
            }
        }
        let s = self.rcpts.len() as u32;
        self.rcpts.grow(n as usize);
        s
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
    }

    /// Moves a message's location (compaction).
    pub fn relocate(&mut self, local: u32, loc: (u32, u32, u32)) {
        let m = self.msgs[local as usize];
        self.seg_dec(m.seg, m.len);
        let e = self.seg_live.entry(loc.0).or_default();
        e.0 += 1;
        e.1 += loc.2 as u64;
        let m = &mut self.msgs[local as usize];
        m.seg = loc.0;
        m.off = loc.1;
        m.len = loc.2;
    }

    fn seg_dec(&mut self, seg: u32, len: u32) {
        if let Some(e) = self.seg_live.get_mut(&seg) {
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
        self.free_rcpts.entry(m.n).or_default().push(m.first);
        self.free_rcpt_count += m.n as usize;
        self.seg_dec(m.seg, m.len);
        self.msgs[local as usize] = Msg::default();
        self.free_msgs.push(local);
        self.live_msgs -= 1;
        true
    }

    /// Sets the last-error text of a recipient (interned, refcounted).
    pub fn set_reason_text(&mut self, rid: u32, text: &str) {
        let id = if text.is_empty() {
            0
        } else if let Some(&id) = self.reason_ids.get(text) {
            if self.reasons[id as usize].1 == u32::MAX {
                return;
            }
            self.reasons[id as usize].1 += 1;
            id
        } else {
            let boxed: Box<str> = text.into();
            if self.reasons.len() > MAX_REASONS as usize && self.free_reasons.is_empty() {
                return; // table full: keep the previous text rather than grow without bound
            }
            let id = if let Some(id) = self.free_reasons.pop() {
                self.reasons[id as usize] = (boxed.clone(), 1);
                id
            } else {
                if self.reasons.is_empty() {
                    self.reasons.push(("".into(), 0));
                }
                self.reasons.push((boxed.clone(), 1));
                (self.reasons.len() - 1) as u32
            };
            self.reason_ids.insert(boxed, id);
            id
        };
        let old = self.rcpts[rid as usize].reason();
        self.rcpts[rid as usize].set_reason_id(id);
        if old != 0 {
            self.release_reason(old);
        }
    }

    fn set_reason(&mut self, rid: u32, id: u32) {
        let old = self.rcpts[rid as usize].reason();
        self.rcpts[rid as usize].set_reason_id(id);
        if old != 0 {
            self.release_reason(old);
        }
    }

    fn release_reason(&mut self, id: u32) {
        let e = &mut self.reasons[id as usize];
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            let text = std::mem::take(&mut e.0);
            self.reason_ids.remove(&text);
            self.free_reasons.push(id);
        }
    }

    /// Text of an interned reason.
    pub fn reason(&self, id: u32) -> &str {
        if id == 0 {
            return "";
        }
        self.reasons.get(id as usize).map(|r| &*r.0).unwrap_or("")
    }

    /// Bytes of memory held by this shard's index structures.
    pub fn memory(&self) -> usize {
        self.msgs.memory()
            + self.free_msgs.capacity() * 4
            + self.rcpts.memory()
            + self
                .free_rcpts
                .values()
                .map(|v| v.capacity() * 4 + 32)
                .sum::<usize>()
            + self
                .reasons
                .iter()
                .map(|r| r.0.len() * 2 + 48)
                .sum::<usize>()
            + self.bounces.capacity() * 4
            + self.seg_live.capacity() * 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes() {
        assert_eq!(std::mem::size_of::<Rcpt>(), 16);
        assert_eq!(std::mem::size_of::<Msg>(), 28);
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
        assert!(s.reason_ids.is_empty());
        let b = s.alloc_msg();
        assert_eq!(a, b);
        s.insert(b, 2, (1, 200, 100), 0, &[5, 6]);
        assert_eq!(s.rcpt_index(b, 0), Some(r0), "block reused");
        assert!(s.get(b, 1).is_none());
    }
}
