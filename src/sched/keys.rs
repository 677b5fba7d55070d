//! Interned routing keys: O(1) hashed lookup from key to bucket id. Ids of
//! buckets freed (by the engine, at a checkpoint) are reused, lowest
//! first, so the id space (and every per-id vector) stays as small as the
//! number of destinations that are live at once.
//! Depends on `index`, `types`, the rest of `sched`.

use super::{Bucket, SchedShard};
use crate::index::{local_of, shard_of};
use crate::types::Concurrency;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// The key table. Bucket `id` lives in sched shard `id % SHARDS` at local index `id / SHARDS`.
#[derive(Default)]
pub struct Keys {
    map: HashMap<Arc<str>, u32>,
    /// Key per id; a freed id holds the empty key.
    by_id: Vec<Arc<str>>,
    free: BinaryHeap<Reverse<u32>>,
}

impl Keys {
    /// Looks a normalised key up.
    pub fn get(&self, key: &str) -> Option<u32> {
        self.map.get(key).copied()
    }

    /// Key of a bucket id (empty for a freed id).
    pub fn key(&self, id: u32) -> Option<&Arc<str>> {
        self.by_id.get(id as usize)
    }

    /// Size of the id space (live and freed ids).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Number of live keys.
    pub fn live(&self) -> usize {
        self.map.len()
    }

    /// Interns `key`, creating its bucket through `place` (called with the shard,
    /// the local index — equal to the shard's length for a new one — and the bucket).
    pub fn intern(
        &mut self,
        key: &str,
        policy: Concurrency,
        mut place: impl FnMut(usize, u32, Bucket),
    ) -> u32 {
        if let Some(&id) = self.map.get(key) {
            return id;
        }
        let k: Arc<str> = key.into();
        let id = match self.free.pop() {
            Some(Reverse(id)) => {
                self.by_id[id as usize] = k.clone();
                id
            }
            None => {
                self.by_id.push(k.clone());
                (self.by_id.len() - 1) as u32
            }
        };
        self.map.insert(k.clone(), id);
        place(shard_of(id), local_of(id), Bucket::new(k, policy));
        id
    }

    /// Interns directly into unlocked shards (recovery).
    pub fn intern_into(&mut self, key: &str, policy: Concurrency, sched: &mut [SchedShard]) -> u32 {
        self.intern(key, policy, |s, l, b| sched[s].place(l, b))
    }

    /// Frees an id (its bucket must be idle and unreferenced).
    pub fn free(&mut self, id: u32) {
        if let Some(k) = self.by_id.get_mut(id as usize) {
            if !k.is_empty() {
                self.map.remove(&**k);
                *k = Arc::from("");
                self.free.push(Reverse(id));
            }
        }
    }

    /// Drops freed ids at the end of the id space and returns its new size.
    pub fn trim(&mut self) -> usize {
        let before = self.by_id.len();
        while self.by_id.last().is_some_and(|k| k.is_empty()) {
            self.by_id.pop();
        }
        let n = self.by_id.len();
        if n != before {
            self.free.retain(|r| (r.0 as usize) < n);
        }
        if self.by_id.capacity() > 2 * n + 64 {
            self.by_id.shrink_to_fit();
            self.map.shrink_to_fit();
            self.free.shrink_to_fit();
        }
        n
    }

    /// Bytes held.
    pub fn memory(&self) -> usize {
        self.by_id.capacity() * 16
            + self.map.capacity() * 24
            + self.free.capacity() * 4
            + self.map.keys().map(|k| k.len() + 16).sum::<usize>()
    }
}
