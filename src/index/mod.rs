//! The in-memory recipient index: one compact record per live recipient,
//! grouped by message, sharded by message slot.
//!
//! Addresses and bodies stay on disk; a recipient costs [`Rcpt`] (16 bytes)
//! plus its share of [`Msg`] (28 bytes per message) plus 4 bytes in a ready
//! queue or timer slot.

use crate::types::RcptState;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

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

/// Highest local message slot accepted from disk (16 shards × 16 M messages).
pub const MAX_SLOT: u32 = 1 << 24;
/// Largest reason id a recipient can hold (20 bits); it is [`REASON_NOT_KEPT`],
/// so at most `MAX_REASONS - 1` distinct texts are interned per shard (far
/// more than [`REASON_CACHE_BYTES`] allows).
pub const MAX_REASONS: u32 = (1 << 20) - 1;
/// Reason id of a recipient whose last-error text is not kept in memory (the
/// shard's reason cache was over budget); [`MsgShard::reason`] gives
/// [`REASON_NOT_KEPT_TEXT`] for it. The exact text is in the recipient's
/// update record in the log.
pub const REASON_NOT_KEPT: u32 = MAX_REASONS;
/// Text of [`REASON_NOT_KEPT`].
pub const REASON_NOT_KEPT_TEXT: &str =
    "(reply text not kept in memory: over the reason cache budget; it is in the log)";
/// Bytes one shard's reason cache may hold: the texts (as allocated), the id
/// vector, the free-id list and the hash table. New distinct texts are kept
/// exactly while they fit in three quarters of it; beyond, a new text is kept
/// in its [`normalize_reason`] form (shared by all replies that differ only by
/// transaction ids), which may use the last quarter too; when that is new as
/// well and does not fit, the recipient gets [`REASON_NOT_KEPT`].
/// 16 shards: at most 4 MiB per queue.
pub const REASON_CACHE_BYTES: usize = 128 * 1024;
/// Attempts saturate here.
pub const MAX_ATTEMPTS: u16 = (1 << 12) - 1;

/// The bounce report of this recipient has been handed out (not persisted).
pub const F_BOUNCE_TAKEN: u8 = 1;
/// The attempt ended and the recipient was re-routed: its state, attempts, next
/// time and bucket are final in the index, but it has not yet joined the new
/// bucket's queues and counters (see `Inner::apply_moves`).
pub const F_MOVING: u8 = 2;

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

/// One interned reason text.
struct Reason {
    text: Box<str>,
    /// Recipients using it (0: free id).
    refs: u32,
    /// Low 31 bits of its hash (its home in the table), and [`NORMALISED`].
    hash: u32,
}

/// Flag in [`Reason::hash`]: the entry holds a [`normalize_reason`] form,
/// shared by recipients whose exact texts differ. An exact text and an equal
/// normalised one are different entries.
const NORMALISED: u32 = 1 << 31;

/// Heap bytes the allocator really uses for a `len`-byte allocation
/// (glibc malloc: 8 bytes of header, 16-byte granularity, 32 at least).
fn heap_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        ((len + 8).div_ceil(16) * 16).max(32)
    }
}

/// Bytes per free block in the two B-trees: 11 entries of 8 bytes per
/// 104-byte leaf, at least half full, in each of the two trees.
const FREE_BLOCK_BYTES: usize = 40;

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

/// Whether a token (punctuation trimmed) looks like a per-transaction value.
fn looks_like_id(tok: &str) -> bool {
    if tok.len() < 8 {
        return false;
    }
    let (mut digit, mut letter, mut run, mut max_run) = (false, false, 0, 0);
    for b in tok.bytes() {
        if b.is_ascii_digit() {
            digit = true;
            run += 1;
            max_run = max_run.max(run);
        } else {
            letter |= b.is_ascii_alphabetic();
            run = 0;
        }
    }
    digit && (letter || max_run >= 8)
}

/// The form in which replies that differ only by per-transaction values share
/// one cache entry: every token — a run of ASCII letters, digits and `._-:`,
/// leading and trailing `._-:` aside — of at least 8 characters that contains
/// a digit and either a letter or a run of 8 digits is replaced by `…`.
/// Queue ids, server names with digits, hex and base-36 ids, timestamps and
/// IPv6 addresses go; reply codes (`4.7.28`, `[TSS04]`, `(S77714)`), IPv4
/// addresses, words and URLs without digits stay. So Gmail's
/// `451-4.7.28 … d2e1a72f3ef5c-6b1f0bcb4fasm2218311a12 - gsmtp` replies of
/// different transactions normalise to the same text.
pub fn normalize_reason(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let s = i;
        if is_token_byte(b[i]) {
            while i < b.len() && is_token_byte(b[i]) {
                i += 1;
            }
            // Token bytes are ASCII, so `s` and `i` are char boundaries.
            let tok = &text[s..i];
            let punct = |c: char| matches!(c, '.' | '_' | '-' | ':');
            let start = tok.trim_start_matches(punct);
            let core = start.trim_end_matches(punct);
            if looks_like_id(core) {
                out.push_str(&tok[..tok.len() - start.len()]);
                out.push('…');
                out.push_str(&start[core.len()..]);
            } else {
                out.push_str(tok);
            }
        } else {
            while i < b.len() && !is_token_byte(b[i]) {
                i += 1;
            }
            out.push_str(&text[s..i]);
        }
    }
    out
}

/// A shard of messages and their recipients.
#[derive(Default)]
pub struct MsgShard {
    /// Message slots.
    pub msgs: Slab<Msg>,
    free_msgs: Vec<u32>,
    /// Recipient slab; a message's recipients are contiguous. Records at and
    /// beyond `rcpt_end` are free (default), but stay addressable: a stale
    /// reference in a ready queue or the timer wheel, or a recipient index
    /// read again after a lock was dropped, never points outside the slab.
    pub rcpts: Slab<Rcpt>,
    /// End of the used part of `rcpts`: plain growth allocates here. A free
    /// block reaching it moves it back.
    rcpt_end: u32,
    /// Free blocks of the recipient slab: start → length …
    free_by_start: BTreeMap<u32, u32>,
    /// … and (length, start), for best fit.
    free_by_size: BTreeSet<(u32, u32)>,
    /// Recipient records in free blocks.
    free_rcpt_count: usize,
    /// Interned reasons by id; id 0 (no reason) is unused.
    reasons: Vec<Reason>,
    /// Open-addressing hash table of reason ids (0: empty), linear probing.
    reason_table: Vec<u32>,
    /// Ids in the table.
    reason_live: usize,
    /// Unused ids below `reasons.len()`; capacity kept at least `reasons.capacity()`.
    free_reasons: Vec<u32>,
    /// Heap bytes of the interned texts.
    reason_text_bytes: usize,
    reason_hasher: RandomState,
    reasons_not_kept: u64,
    reasons_normalised: u64,
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
        self.free_rcpt_block(m.first, m.n as u32);
        self.seg_dec(m.seg, m.len);
        self.msgs[local as usize] = Msg::default();
        self.free_msgs.push(local);
        self.live_msgs -= 1;
        true
    }

    /// Sets the last-error text of a recipient (interned, refcounted). Within
    /// [`REASON_CACHE_BYTES`] the text is kept exactly; beyond, in its
    /// [`normalize_reason`] form, or not at all ([`REASON_NOT_KEPT`]).
    pub fn set_reason_text(&mut self, rid: u32, text: &str) {
        let id = self.intern_reason(text);
        self.set_reason(rid, id);
    }

    /// Interns `text` (one more reference) and returns its id.
    fn intern_reason(&mut self, text: &str) -> u32 {
        if text.is_empty() {
            return 0;
        }
        if text != REASON_NOT_KEPT_TEXT {
            if let Some(id) = self.reason_ref(text, 0, REASON_CACHE_BYTES / 4 * 3) {
                return id;
            }
            let norm = normalize_reason(text);
            if norm != text {
                if let Some(id) = self.reason_ref(&norm, NORMALISED, REASON_CACHE_BYTES) {
                    self.reasons_normalised += 1;
                    return id;
                }
            }
        }
        self.reasons_not_kept += 1;
        REASON_NOT_KEPT
    }

    /// One more reference to the entry of `text` (exact, or with `flag`
    /// [`NORMALISED`]), created when the cache stays within `limit` bytes.
    fn reason_ref(&mut self, text: &str, flag: u32, limit: usize) -> Option<u32> {
        let hash = (self.reason_hasher.hash_one(text) as u32 & !NORMALISED) | flag;
        if let Some(id) = self.find_reason(text, hash) {
            let e = &mut self.reasons[id as usize];
            e.refs = e.refs.checked_add(1)?;
            return Some(id);
        }
        self.insert_reason(text, hash, limit)
    }

    fn find_reason(&self, text: &str, hash: u32) -> Option<u32> {
        if self.reason_table.is_empty() {
            return None;
        }
        let mask = self.reason_table.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let id = self.reason_table[i];
            if id == 0 {
                return None;
            }
            let e = &self.reasons[id as usize];
            if e.hash == hash && *e.text == *text {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    fn table_put(table: &mut [u32], hash: u32, id: u32) {
        let mask = table.len() - 1;
        let mut i = hash as usize & mask;
        while table[i] != 0 {
            i = (i + 1) & mask;
        }
        table[i] = id;
    }

    /// A new entry with one reference, unless it would take the reason cache
    /// beyond `limit` bytes.
    fn insert_reason(&mut self, text: &str, hash: u32, limit: usize) -> Option<u32> {
        let entry = std::mem::size_of::<Reason>();
        let mut cost = heap_bytes(text.len());
        let grow_ids =
            if self.free_reasons.is_empty() && self.reasons.len() == self.reasons.capacity() {
                let add = (self.reasons.capacity() / 4).max(16);
                let new_cap = self.reasons.capacity() + add;
                cost += add * entry + new_cap.saturating_sub(self.free_reasons.capacity()) * 4;
                Some(add)
            } else {
                None
            };
        let grow_table = (self.reason_live + 1) * 4 > self.reason_table.len() * 3;
        let table_len = if grow_table {
            (self.reason_table.len() * 2).max(16)
        } else {
            self.reason_table.len()
        };
        cost += (table_len - self.reason_table.len()) * 4;
        if self.reason_memory() + cost > limit {
            return None;
        }
        let id = match self.free_reasons.pop() {
            Some(id) => id,
            None => {
                if self.reasons.len() + 1 >= REASON_NOT_KEPT as usize {
                    return None;
                }
                if let Some(add) = grow_ids {
                    self.reasons.reserve_exact(add);
                    let cap = self.reasons.capacity();
                    self.free_reasons
                        .reserve_exact(cap - self.free_reasons.len());
                }
                if self.reasons.is_empty() {
                    self.reasons.push(Reason {
                        text: "".into(),
                        refs: 0,
                        hash: 0,
                    });
                }
                self.reasons.push(Reason {
                    text: "".into(),
                    refs: 0,
                    hash: 0,
                });
                (self.reasons.len() - 1) as u32
            }
        };
        self.reasons[id as usize] = Reason {
            text: text.into(),
            refs: 1,
            hash,
        };
        self.reason_text_bytes += heap_bytes(text.len());
        self.reason_live += 1;
        if grow_table {
            let mut table = vec![0u32; table_len];
            for (i, e) in self.reasons.iter().enumerate().skip(1) {
                if e.refs > 0 {
                    Self::table_put(&mut table, e.hash, i as u32);
                }
            }
            self.reason_table = table;
        } else {
            Self::table_put(&mut self.reason_table, hash, id);
        }
        Some(id)
    }

    /// Removes `id` from the hash table (backward-shift deletion).
    fn table_remove(&mut self, id: u32) {
        let mask = self.reason_table.len() - 1;
        let mut i = self.reasons[id as usize].hash as usize & mask;
        while self.reason_table[i] != id {
            i = (i + 1) & mask;
        }
        self.reason_table[i] = 0;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let other = self.reason_table[j];
            if other == 0 {
                return;
            }
            let home = self.reasons[other as usize].hash as usize & mask;
            // `other` stays when its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.reason_table[i] = other;
                self.reason_table[j] = 0;
                i = j;
            }
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
        let Some(e) = self.reasons.get_mut(id as usize) else {
            return; // REASON_NOT_KEPT
        };
        if e.refs == 0 {
            return;
        }
        e.refs -= 1;
        if e.refs == 0 {
            self.table_remove(id);
            let e = &mut self.reasons[id as usize];
            self.reason_text_bytes -= heap_bytes(e.text.len());
            e.text = "".into();
            self.reason_live -= 1;
            self.free_reasons.push(id);
        }
    }

    /// Text of an interned reason: exact, normalised ([`normalize_reason`]), or
    /// [`REASON_NOT_KEPT_TEXT`] for [`REASON_NOT_KEPT`].
    pub fn reason(&self, id: u32) -> &str {
        if id == 0 {
            return "";
        }
        if id == REASON_NOT_KEPT {
            return REASON_NOT_KEPT_TEXT;
        }
        self.reasons
            .get(id as usize)
            .map(|r| &*r.text)
            .unwrap_or("")
    }

    /// Whether reason `id` is a recipient's exact last-error text: false for
    /// [`REASON_NOT_KEPT`] and for a [`normalize_reason`] form. A caller that
    /// writes the in-memory text to disk (an update record without a new
    /// reason, a checkpoint) should not replace an exact text on disk by an
    /// inexact one.
    #[cfg(test)]
    pub fn reason_is_exact(&self, id: u32) -> bool {
        id == 0
            || self
                .reasons
                .get(id as usize)
                .is_some_and(|r| r.refs > 0 && r.hash & NORMALISED == 0)
    }

    /// Times a recipient got [`REASON_NOT_KEPT`] because the reason cache was
    /// over budget (cumulative).
    pub fn reasons_not_kept(&self) -> u64 {
        self.reasons_not_kept
    }

    /// Times a recipient got the normalised form of its text because the exact
    /// one did not fit the reason cache (cumulative).
    pub fn reasons_normalised(&self) -> u64 {
        self.reasons_normalised
    }

    /// Bytes held by the reason cache (at most [`REASON_CACHE_BYTES`]).
    pub fn reason_memory(&self) -> usize {
        self.reasons.capacity() * std::mem::size_of::<Reason>()
            + self.free_reasons.capacity() * 4
            + self.reason_table.capacity() * 4
            + self.reason_text_bytes
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
mod tests {
    use super::*;

    #[test]
    fn record_sizes() {
        assert_eq!(std::mem::size_of::<Rcpt>(), 16);
        assert_eq!(std::mem::size_of::<Msg>(), 28);
    }

    const GMAIL: &str = "451-4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. For more information, go to https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. d2e1a72f3ef5c-6b1f0bcb4fasm2218311a12 - gsmtp";
    const MICROSOFT: &str = "451 4.7.500 Server busy. Please try again later from [2a01:111:f400::1]. (S77714) [AM0PR02MB1234.eurprd02.prod.outlook.com 2024-01-01T00:00:00.000Z 08DC1234567890AB]";
    const YAHOO: &str = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes";

    /// A Gmail reply of transaction `i`, as Gmail varies it.
    fn gmail(i: u64) -> String {
        let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        GMAIL.replace(
            "d2e1a72f3ef5c-6b1f0bcb4fasm2218311a12",
            &format!("{:013x}-{:010x}fasm{}a12", x >> 12, x & 0xff_ffff_ffff, i),
        )
    }

    #[test]
    fn normalize_real_replies() {
        let g = normalize_reason(GMAIL);
        assert_eq!(
            g,
            GMAIL.replace("d2e1a72f3ef5c-6b1f0bcb4fasm2218311a12", "…"),
            "only the transaction id goes"
        );
        assert_eq!(normalize_reason(&gmail(1)), g);
        assert_eq!(normalize_reason(&gmail(123_456_789)), g);
        assert_eq!(
            normalize_reason(MICROSOFT),
            "451 4.7.500 Server busy. Please try again later from […]. (S77714) [… … …]"
        );
        let other = MICROSOFT
            .replace("AM0PR02MB1234", "DB9PR10MB5678")
            .replace("00:00.000Z", "31:07.914Z")
            .replace("08DC1234567890AB", "08DC99AA11BB22CC");
        assert_eq!(normalize_reason(&other), normalize_reason(MICROSOFT));
        assert_eq!(normalize_reason(YAHOO), YAHOO, "nothing per-transaction");
        // Sentence punctuation stays; short codes, words and IPv4 stay.
        assert_eq!(
            normalize_reason("550 5.1.1 <a@b.example>: queued as 4Bq2vX0s7Mz8k."),
            "550 5.1.1 <a@b.example>: queued as …."
        );
        assert_eq!(normalize_reason("id 1234567890"), "id …");
        assert_eq!(
            normalize_reason("see RFC5321 and RFC 5322"),
            "see RFC5321 and RFC 5322"
        );
        assert_eq!(normalize_reason("überfüllt 12345678ab ✓"), "überfüllt … ✓");
        assert_eq!(normalize_reason(""), "");
    }

    /// A shard with `n` one-recipient messages; returns their recipient indices.
    fn shard_with(n: u32) -> (MsgShard, Vec<u32>) {
        let mut s = MsgShard::default();
        let mut rids = Vec::new();
        for i in 0..n {
            let m = s.alloc_msg();
            s.insert(m, i + 1, (1, 24, 100), 0, &[1]);
            rids.push(s.rcpt_index(m, 0).expect("recipient"));
        }
        (s, rids)
    }

    #[test]
    fn unique_gmail_replies_stay_within_budget() {
        let n = 100_000;
        let (mut s, rids) = shard_with(n);
        let norm = normalize_reason(GMAIL);
        let mut exact = 0;
        for (i, &rid) in rids.iter().enumerate() {
            let text = gmail(i as u64);
            s.set_reason_text(rid, &text);
            let got = s.reason(s.rcpts[rid as usize].reason());
            let id = s.rcpts[rid as usize].reason();
            if got == text {
                assert_eq!(exact, i, "exact texts first, while under budget");
                assert!(s.reason_is_exact(id));
                exact += 1;
            } else {
                assert_eq!(got, norm, "recipient {i} beyond the budget");
                assert!(!s.reason_is_exact(id));
            }
            assert!(s.reason_memory() <= REASON_CACHE_BYTES);
        }
        // Three quarters of the budget, at the text's allocation plus 24 to 64
        // bytes of vector, free list and table per entry.
        let text = heap_bytes(gmail(0).len());
        let share = REASON_CACHE_BYTES / 4 * 3;
        assert!(
            exact >= share / (text + 64) && exact <= share / (text + 24),
            "exact texts kept: {exact}"
        );
        assert_eq!(s.reasons_normalised(), (n as usize - exact) as u64);
        assert_eq!(s.reasons_not_kept(), 0);
        // Every exact text is still found; the rest share one entry.
        for (i, &rid) in rids.iter().enumerate().take(exact) {
            assert_eq!(s.reason(s.rcpts[rid as usize].reason()), gmail(i as u64));
        }
        assert_eq!(s.reason_live, exact + 1);
        let shared = s.rcpts[rids[n as usize - 1] as usize].reason();
        assert_eq!(s.reasons[shared as usize].refs, n - exact as u32);
        // A reply whose exact text equals the normalised form is not given the
        // shared (inexact) entry.
        s.set_reason_text(rids[0], &norm);
        let id = s.rcpts[rids[0] as usize].reason();
        assert_ne!(id, shared);
        assert_eq!(id, REASON_NOT_KEPT, "no room for new exact texts");
        // Recipients finish: every reference and text is released.
        for &rid in &rids {
            assert!(s.finish_rcpt(rid));
        }
        assert_eq!(s.reason_live, 0);
        assert_eq!(s.reason_text_bytes, 0);
        assert!(s.reason_table.iter().all(|&id| id == 0));
        assert!(s.reasons.iter().all(|r| r.refs == 0));
        // The space is reusable: exact texts again.
        let m = s.alloc_msg();
        s.insert(m, 7, (1, 24, 100), 0, &[1]);
        let rid = s.rcpt_index(m, 0).expect("recipient");
        s.set_reason_text(rid, &gmail(999_999));
        assert_eq!(s.reason(s.rcpts[rid as usize].reason()), gmail(999_999));
    }

    #[test]
    fn reasons_not_kept_beyond_budget() {
        // Texts that stay distinct after normalisation.
        let word = |mut i: u32| {
            let mut w = String::new();
            loop {
                w.push((b'a' + (i % 26) as u8) as char);
                i /= 26;
                if i == 0 {
                    break w;
                }
            }
        };
        let n = 20_000;
        let (mut s, rids) = shard_with(n);
        for &rid in &rids {
            s.set_reason_text(rid, "451 try later");
        }
        let mut kept = 0;
        for (i, &rid) in rids.iter().enumerate() {
            let text = format!("450 mailbox {} busy, try again later", word(i as u32));
            s.set_reason_text(rid, &text);
            let id = s.rcpts[rid as usize].reason();
            if id == REASON_NOT_KEPT {
                assert_eq!(s.reason(id), REASON_NOT_KEPT_TEXT);
                assert!(!s.reason_is_exact(id));
            } else {
                assert!(s.reason_is_exact(id));
                assert_eq!(s.reason(id), text, "never the previous text");
                kept += 1;
            }
            assert!(s.reason_memory() <= REASON_CACHE_BYTES);
        }
        assert!(kept > 1000 && kept < n as usize, "kept {kept}");
        assert_eq!(s.reasons_not_kept(), (n as usize - kept) as u64);
        assert_eq!(s.reason_live, kept, "the old shared text was released");
        // A checkpointed not-kept text maps back to the sentinel.
        s.set_reason_text(rids[0], REASON_NOT_KEPT_TEXT);
        assert_eq!(s.rcpts[rids[0] as usize].reason(), REASON_NOT_KEPT);
        for &rid in &rids {
            s.finish_rcpt(rid);
        }
        assert_eq!((s.reason_live, s.reason_text_bytes), (0, 0));
    }

    #[test]
    fn reason_table_survives_churn() {
        // Random sets and finishes against a model of the texts.
        let (mut s, rids) = shard_with(3000);
        let mut x: u64 = 7;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut model: Vec<String> = vec![String::new(); rids.len()];
        for _ in 0..100_000 {
            let k = rnd(rids.len() as u64) as usize;
            let text = format!("451 4.3.0 t{}", rnd(500));
            s.set_reason_text(rids[k], &text);
            model[k] = text;
        }
        for (k, &rid) in rids.iter().enumerate() {
            assert_eq!(s.reason(s.rcpts[rid as usize].reason()), model[k]);
        }
        let distinct: std::collections::HashSet<&String> =
            model.iter().filter(|t| !t.is_empty()).collect();
        assert_eq!(s.reason_live, distinct.len(), "interned once each");
        let refs: u32 = s.reasons.iter().map(|r| r.refs).sum();
        assert_eq!(
            refs as usize,
            model.iter().filter(|t| !t.is_empty()).count()
        );
        for &rid in &rids {
            s.finish_rcpt(rid);
        }
        assert_eq!(s.reason_live, 0);
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
