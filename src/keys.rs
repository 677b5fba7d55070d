//! Interned routing keys: O(1) hashed lookup from key to bucket id.

use crate::bucket::{Bucket, SchedShard};
use crate::index::shard_of;
use crate::types::Concurrency;
use std::collections::HashMap;
use std::sync::Arc;

/// The key table. Bucket `id` lives in sched shard `id % SHARDS` at local index `id / SHARDS`.
#[derive(Default)]
pub struct Keys {
    map: HashMap<Arc<str>, u32>,
    by_id: Vec<Arc<str>>,
}

impl Keys {
    /// Looks a normalised key up.
    pub fn get(&self, key: &str) -> Option<u32> {
        self.map.get(key).copied()
    }

    /// Key of a bucket id.
    pub fn key(&self, id: u32) -> Option<&Arc<str>> {
        self.by_id.get(id as usize)
    }

    /// Number of keys.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Interns `key`, creating its bucket through `push` (called with the shard and the new bucket).
    pub fn intern(
        &mut self,
        key: &str,
        policy: Concurrency,
        mut push: impl FnMut(usize, Bucket),
    ) -> u32 {
        if let Some(&id) = self.map.get(key) {
            return id;
        }
        let id = self.by_id.len() as u32;
        let k: Arc<str> = key.into();
        self.by_id.push(k.clone());
        self.map.insert(k.clone(), id);
        push(shard_of(id), Bucket::new(k, policy));
        id
    }

    /// Interns directly into unlocked shards (recovery).
    pub fn intern_into(&mut self, key: &str, policy: Concurrency, sched: &mut [SchedShard]) -> u32 {
        self.intern(key, policy, |s, b| sched[s].buckets.push(b))
    }

    /// Bytes held.
    pub fn memory(&self) -> usize {
        self.by_id.capacity() * 16 + self.map.capacity() * 24
    }
}
