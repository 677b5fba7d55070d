//! How ids pack: a message slot or bucket id is a shard (low 4 bits) and a
//! local index; a recipient reference packs a message shard and a recipient
//! index into 32 bits.
//! Depends on nothing else in the crate.

/// Number of shards for messages and for buckets.
pub const SHARDS: usize = 16;
const SHARD_BITS: u32 = 4;

/// A reference to one recipient record: its message shard and its index in
/// that shard's recipient slab, packed in 32 bits (what ready FIFOs, timers and
/// slots hold, 4 bytes each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RcptRef(u32);

const _: () = assert!(std::mem::size_of::<RcptRef>() == 4);
const _: () = assert!(SHARDS == 1 << SHARD_BITS);

impl RcptRef {
    /// Recipient record `local` of message shard `shard`.
    pub fn new(shard: usize, local: u32) -> RcptRef {
        RcptRef((local << SHARD_BITS) | shard as u32)
    }

    /// The message shard.
    pub fn shard(self) -> usize {
        (self.0 & (SHARDS as u32 - 1)) as usize
    }

    /// The record index within the shard.
    pub fn local(self) -> u32 {
        self.0 >> SHARD_BITS
    }
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
