//! # mailq — an embeddable, durable mail queue
//!
//! mailq is the spool and queue manager an MTA links instead of writing its own:
//! accepted mail is kept in an append-only, checksummed log (durable before
//! [`Queue::enqueue`] returns, with group commit across producers), each
//! recipient costs a compact in-memory record, and deliveries are scheduled
//! through per-destination buckets with Postfix-style adaptive concurrency whose
//! slots are leases that cannot leak.
//!
//! See `docs/design.md` for the file format, commit protocol and recovery rules.
#![deny(missing_docs)]

mod bucket;
mod check;
mod checkpoint;
mod dir;
pub mod error;
#[doc(hidden)]
pub mod ffi;
mod index;
mod keys;
mod log;
mod message;
mod poll;
mod queue;
pub mod record;
mod recovery;
mod session;
pub mod simfs;
mod stats;
mod types;
mod validate;
pub mod vfs;

pub use error::{Error, Result};
pub use message::MessageBuilder;
pub use queue::Queue;
pub use recovery::{Damage, RecoveryReport};
pub use session::{Delivery, Session};
pub use stats::{BucketStats, MessageInfo, RecipientInfo, Stats, AGE_BUCKETS_MINUTES};
pub use types::*;
