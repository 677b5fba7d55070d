//! The in-memory recipient index: one compact record per live recipient,
//! grouped by message, sharded by message slot. Depends on `types` only.
//!
//! Addresses and bodies stay on disk; a recipient costs [`Rcpt`] (16 bytes)
//! plus its share of [`Msg`](shard::Msg) (28 bytes per message) plus 4 bytes in a ready
//! queue or timer slot.

mod ids;
mod rcpt;
mod reasons;
mod shard;
mod slab;

pub use ids::*;
pub use rcpt::*;
pub use shard::{Intent, Load, Msg, MsgShard};
pub use slab::Slab;
