//! The read-only side of the public [`Queue`]: stats, memory use, listing,
//! inspecting and verifying messages, and the invariant check tests run.
//! Thin calls into the engine; the data types and their text forms
//! (Prometheus, qshape) are in `stats.rs`.
//! Depends on `engine` (through `Queue`), `error`, `stats`, `types`.

use crate::error::Result;
use crate::select::{Explanation, Selected, Selector};
use crate::stats::{BucketStats, MessageInfo, MessageSummary, Stats};
use crate::types::MessageId;
use crate::Queue;

impl Queue {
    /// A snapshot of counts, per-destination shape and counters.
    /// Costs one pass over the in-memory index (not the disk).
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Bytes of RAM held by the in-memory index (recipients, messages, buckets,
    /// ready queues, timers), counted from allocated capacities.
    pub fn memory_usage(&self) -> usize {
        self.engine.memory_usage()
    }

    /// Lists up to `limit` live messages (in slot order, not by age).
    pub fn list(&self, limit: usize) -> Vec<MessageSummary> {
        self.engine.list(limit)
    }

    /// Calls `f` for every live message until it returns false.
    /// Each shard is copied out under its lock; `f` runs without locks held.
    pub fn walk(&self, f: impl FnMut(MessageSummary) -> bool) {
        self.engine.walk(f)
    }

    /// Everything about one message: envelope, and per recipient its state,
    /// attempts, next attempt, current route and last error.
    pub fn inspect(&self, id: MessageId) -> Result<MessageInfo> {
        self.engine.inspect(id)
    }

    /// The first `limit` recipients matching `sel` (see [`Selector`]), oldest
    /// first: by acceptance time, then message id, then recipient index, so
    /// paging by offset is stable while the matches are. Envelopes are read
    /// without holding locks that producers or workers need, and a search that
    /// reads them paces itself to half a core while the queue is busy.
    pub fn select(&self, sel: &Selector, limit: usize) -> Result<Vec<Selected>> {
        self.engine.select(sel, limit)
    }

    /// Why recipient `index` of message `id` is not being delivered now:
    /// its state, the next attempt, the destination's suspension, dead mark or
    /// full window, a hold, or a lease in flight, in one sentence with the facts.
    pub fn explain(&self, id: MessageId, index: u32) -> Result<Explanation> {
        self.engine.explain(id, index)
    }

    /// [`Queue::explain`] for every recipient of message `id`, from one read
    /// of the message.
    pub fn explain_all(&self, id: MessageId) -> Result<Vec<Explanation>> {
        self.engine.explain_message(id, None)
    }

    /// The figures of one destination (without its age columns, which need a
    /// pass over every recipient), or `None` when it has no bucket.
    pub fn destination(&self, key: &str) -> Result<Option<BucketStats>> {
        self.engine.destination(key)
    }

    /// Reads and checks every live message record (checksum and decoding).
    /// Damaged messages are reported in stats and their ids returned. Not a hot-path
    /// operation: it reads every live body once.
    pub fn verify(&self) -> Result<Vec<MessageId>> {
        self.engine.verify()
    }

    /// Checks the internal invariants of the scheduler and the index (ready
    /// FIFOs, timers, slots, counters, ring and poll fd agree with the index)
    /// and describes the first violation. Takes every lock; for tests only.
    #[doc(hidden)]
    pub fn debug_check(&self) -> std::result::Result<(), String> {
        self.engine.check()
    }

    /// When (clock milliseconds) the outcome records buffered now must be
    /// synced, or `None` when none are buffered. For tests.
    #[doc(hidden)]
    pub fn debug_pending_sync_ms(&self) -> Option<u64> {
        self.engine.pending_sync_ms()
    }
}
