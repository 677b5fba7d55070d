//! How ids pack: a message slot or bucket id is a shard (low 4 bits) and a
//! local index; a recipient reference packs a message shard and a recipient
//! index into 32 bits.

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
