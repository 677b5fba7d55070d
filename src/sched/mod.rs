//! The scheduler's data: per-shard bucket tables, the round-robin ready ring,
//! the retry timer, probe wake-ups and lease deadlines. Decisions that need
//! the recipient index as well live in `engine`; this layer depends on
//! `index` ids and `types` only (and the plain settings value of
//! `storage::record`, in `settings`).

mod bucket;
mod egress;
mod keys;
mod rate;
mod settings;
mod wheel;

pub use bucket::{Bucket, Slot, Throttle};
pub use egress::{PathSusp, Source};
pub use keys::Keys;
pub use rate::Rate;
pub use wheel::Wheel;

use crate::types::RcptState;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// The scheduler state of one shard of buckets.
pub struct SchedShard {
    /// Buckets; local index = bucket id / SHARDS.
    pub buckets: Vec<Bucket>,
    /// Buckets that may open a session, in round-robin order.
    pub ring: VecDeque<u32>,
    /// Deferred recipients of this shard's buckets.
    pub wheel: Wheel,
    /// Dead-destination probe times and ends of timed suspensions: (time, local bucket).
    pub wakeups: BinaryHeap<Reverse<(u32, u32)>>,
    /// Lease deadlines: (deadline, local bucket, token).
    pub leases: BinaryHeap<Reverse<(u32, u32, u32)>>,
}

impl SchedShard {
    /// An empty shard.
    pub fn new(now: u32) -> Self {
        SchedShard {
            buckets: Vec::new(),
            ring: VecDeque::new(),
            wheel: Wheel::new(now),
            wakeups: BinaryHeap::new(),
            leases: BinaryHeap::new(),
        }
    }

    /// Stores a bucket at a local index (a new one at the end, or a reused id).
    pub fn place(&mut self, local: u32, b: Bucket) {
        let l = local as usize;
        if l == self.buckets.len() {
            self.buckets.push(b);
        } else if l < self.buckets.len() {
            self.buckets[l] = b;
        }
    }

    /// Notices a clock that stepped back: the timer wheel re-files its entries by
    /// their own times, and dead destinations get their probe re-checked (a
    /// wake-up already used up, or a probe time now far ahead, would otherwise
    /// strand their mail). Returns true when a bucket entered the ring.
    pub fn observe_clock(&mut self, now: u32) -> bool {
        if !self.wheel.observe(now) {
            return false;
        }
        let mut rang = false;
        for bl in 0..self.buckets.len() as u32 {
            if let Some(t) = self.buckets[bl as usize].rebase_suspension(now) {
                self.wakeups.push(Reverse((t, bl)));
            }
            if let Some(t) = self.buckets[bl as usize].rebase_throttle(now) {
                self.wakeups.push(Reverse((t, bl)));
            }
            for t in self.buckets[bl as usize].rebase_path_suspensions(now) {
                self.wakeups.push(Reverse((t, bl)));
            }
            let b = &mut self.buckets[bl as usize];
            for r in b
                .rate
                .iter_mut()
                .chain(b.paths.iter_mut().filter_map(|p| p.rate.as_mut()))
            {
                r.rebase(now as u64 * 1000);
            }
            // A fleet wait is asked again rather than waited out.
            let fleet = std::mem::take(&mut self.buckets[bl as usize].fleet_until) != 0;
            let b = &self.buckets[bl as usize];
            if b.dead_until != 0 || b.limited() || fleet {
                self.buckets[bl as usize].wake_at = 0;
                rang |= self.maybe_ring(bl, now);
            }
        }
        rang
    }

    /// Puts the bucket in the ring if it can open a session. Returns true when added.
    pub fn maybe_ring(&mut self, local: u32, now: u32) -> bool {
        let b = &mut self.buckets[local as usize];
        if !b.in_ring && b.can_open(now) {
            b.in_ring = true;
            self.ring.push_back(local);
            return true;
        }
        // Out of rate (here or in the fleet): a wake-up when the limits allow
        // the next message (one per such time), so neither a busy loop nor a
        // scan finds it again.
        let fleet = (b.fleet_until > now).then_some(b.fleet_until);
        if let Some(t) = b.rate_wait(now).max(fleet) {
            if !b.suspended && b.count(RcptState::Ready) > 0 && b.wake_at != t {
                b.wake_at = t;
                self.wakeups.push(Reverse((t, local)));
            }
            return false;
        }
        // A dead destination with mail waits for its probe time: make sure a
        // wake-up is scheduled for it (one per probe time), whoever got here.
        if b.dead_until != 0
            && !b.probe_due(now)
            && !b.suspended
            && b.count(RcptState::Ready) > 0
            && b.wake_at != b.dead_until
        {
            b.wake_at = b.dead_until;
            self.wakeups.push(Reverse((b.dead_until, local)));
        }
        false
    }

    /// Keeps the first `keep` buckets (the rest were freed and trimmed) and
    /// drops wake-ups and lease entries of freed buckets.
    pub fn truncate_buckets(&mut self, keep: usize) {
        self.buckets.truncate(keep);
        if self.buckets.capacity() > 2 * keep + 16 {
            self.buckets.shrink_to_fit();
        }
        let buckets = &self.buckets;
        let live = |bl: u32| buckets.get(bl as usize).is_some_and(|b| !b.key.is_empty());
        self.wakeups.retain(|r| live(r.0 .1));
        self.leases.retain(|r| live(r.0 .1));
    }

    /// Bytes held (buckets, ring, wheel, heaps).
    pub fn memory(&self) -> usize {
        self.buckets.iter().map(|b| b.memory()).sum::<usize>()
            + self.ring.capacity() * 4
            + self.wheel.memory()
            + self.wakeups.capacity() * 8
            + self.leases.capacity() * 12
    }
}
