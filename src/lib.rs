//! # mailq — an embeddable, durable mail queue
//!
//! mailq is the spool and queue manager an MTA links instead of writing its own:
//! accepted mail is kept in an append-only, checksummed log (durable before
//! [`Queue::enqueue`] returns, with group commit across producers), each
//! recipient costs a compact in-memory record, and deliveries are scheduled
//! through per-destination buckets with Postfix-style adaptive concurrency whose
//! slots are leases that cannot leak.
//!
//! This file is the front door: every module is private and the public API is
//! the list of re-exports below. Layers, top to bottom (a module imports only
//! from layers below it): `ffi` (the C ABI) → the public handles (`queue`,
//! `session`, `message`, `inspect`) → `engine` (shared state and every state
//! change) → `recovery` → `index`, `sched`, `storage`; `types`, `error`,
//! `validate` and `stats` are plain data and rules used by all. See
//! `docs/design.md` for the file format, commit protocol and recovery rules.
#![deny(missing_docs)]

#[cfg(feature = "admin")]
mod admin;
#[cfg(feature = "tokio")]
mod aio;
mod engine;
mod error;
mod fleet;
mod index;
mod inspect;
mod message;
mod queue;
mod recovery;
mod sched;
mod select;
mod session;
mod stats;
mod storage;
mod testing;
mod types;
mod validate;

/// The C ABI (`include/mailq.h`). Public only so that its symbols are
/// exported; Rust code uses the crate root.
#[doc(hidden)]
pub mod ffi;

#[cfg(feature = "admin")]
#[doc(hidden)]
pub use admin::fuzz_request;
#[cfg(feature = "admin")]
pub use admin::{encode_component, Access, Admin, AdminOptions, AdminResponse, AdminThread};
#[cfg(feature = "tokio")]
pub use aio::AsyncQueue;
pub use error::{Error, Result};
#[cfg(feature = "redis")]
pub use fleet::{FleetFailure, RedisFleet, RedisFleetOptions};
pub use fleet::{FleetLimit, FleetLimiter, FleetSession, LocalFleet, Permit};
pub use message::MessageBuilder;
pub use queue::Queue;
pub use recovery::{Damage, RecoveryReport};
pub use select::{Explanation, Op, Selected, Selector};
pub use session::{Delivery, Session};
pub use stats::{
    BucketStats, MessageInfo, MessageSummary, PathStats, RecipientInfo, SourceStats, Stats,
    AGE_BUCKETS_MINUTES,
};
pub use storage::vfs::{OsFs, VFile, Vfs};
pub use types::{
    Bounce, Clock, Concurrency, DeliveryData, ManualClock, MessageId, NewMessage, Options, Outcome,
    RateLimit, RcptState, Recipient, ReplyRule, RuleAction, SystemClock, WarmupStep,
};

/// Test support for crash and fault simulation: a simulated filesystem and the
/// record framing, so tests and fuzzers can crash a queue and damage its log
/// precisely. Hidden and not a stable API (a dev-dependency feature would link
/// the C symbols twice into the library's own test binary).
#[doc(hidden)]
pub mod sim {
    pub use crate::testing::simfs::*;

    /// Record framing of the log (for tests that forge or damage records).
    pub mod record {
        pub use crate::storage::record::{
            decode_message, decode_source, decode_update, encode_message, encode_update, frame,
            header, padded, Kind, UpdateRecord, FORMAT_VERSION, HEADER_LEN,
        };
    }
}
