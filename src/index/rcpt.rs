//! The packed per-recipient record ([`Rcpt`], 16 bytes) and the limits of its
//! fields: bucket id, attempts, reason id and flags.
//! Depends on `types`.

use crate::types::RcptState;

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
/// shard's reason cache was over budget); [`MsgShard::reason`](super::MsgShard::reason) gives
/// [`REASON_NOT_KEPT_TEXT`] for it. The exact text is in the recipient's
/// update record in the log.
pub const REASON_NOT_KEPT: u32 = MAX_REASONS;
/// Text of [`REASON_NOT_KEPT`].
pub const REASON_NOT_KEPT_TEXT: &str =
    "(reply text not kept in memory: over the reason cache budget; it is in the log)";
/// Bytes one shard's reason cache may hold: the texts (as allocated), the id
/// vector, the free-id list and the hash table. New distinct texts are kept
/// exactly while they fit in three quarters of it; beyond, a new text is kept
/// in its [`normalize_reason`](super::reasons::normalize_reason) form (shared by all replies that differ only by
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
/// bucket's queues and counters (see `Engine::apply_moves`).
pub const F_MOVING: u8 = 2;
/// Its delay warning was acknowledged (persisted: the update record's
/// `UPDATE_WARNED` flag, the checkpoint's warned bit).
pub const F_WARNED: u8 = 4;
/// A delay warning is queued for hand-out, or handed out and not yet
/// acknowledged (not persisted: offered again after a restart).
pub const F_WARN_QUEUED: u8 = 8;

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
    /// Ready to be leased by a session of `bucket`: ready, in that bucket,
    /// and not between buckets (a re-route not applied yet).
    pub fn ready_in(&self, bucket: u32) -> bool {
        self.state() == RcptState::Ready && self.bucket() == bucket && self.flags() & F_MOVING == 0
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
    pub(super) fn set_reason_id(&mut self, id: u32) {
        self.ra = (self.ra & 0xfff) | (id.min(MAX_REASONS) << 12);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Msg;

    #[test]
    fn record_sizes() {
        assert_eq!(std::mem::size_of::<Rcpt>(), 16);
        assert_eq!(std::mem::size_of::<Msg>(), 28);
    }
}
