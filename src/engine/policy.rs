//! Retry policy, as pure functions of the options: what an outcome makes of a
//! recipient (backoff, expiry), how long a lease lasts, the backoff bounds a
//! failing destination is held to, and how much of a reply text is kept.
//! Depends on `index`, `types`, the rest of `engine`.

use super::change::Change;
use crate::index::Rcpt;
use crate::types::{Options, Outcome, RcptState};

/// Longest last-error text kept per recipient.
pub const MAX_REASON: usize = 512;

/// A reply text as kept: at most [`MAX_REASON`] bytes, no NUL.
pub(crate) fn clip(s: &str) -> String {
    crate::types::prefix(s, MAX_REASON).replace('\0', " ")
}

/// Lease length in seconds (at least 1; far from wrapping the u32 clock).
pub(crate) fn lease_ttl(opts: &Options) -> u32 {
    (opts.lease_ttl.as_secs().min(u32::MAX as u64 / 2) as u32).max(1)
}

/// (minimum, maximum) backoff in seconds.
pub(crate) fn backoff_bounds(opts: &Options) -> (u32, u32) {
    let min = opts.min_backoff.as_secs().min(u32::MAX as u64) as u32;
    let max = opts.max_backoff.as_secs().min(u32::MAX as u64) as u32;
    (min, max.max(min))
}

/// The change an attempt's outcome makes: delivered, failed, expired (a
/// temporary failure past the lifetime), or deferred for a backoff that grows
/// with the message's age, bounded by the options and raised to the server's
/// `retry_after`.
pub(crate) fn outcome_change(
    o: &Outcome,
    r: &Rcpt,
    received: u32,
    now: u32,
    opts: &Options,
) -> Change {
    match o {
        Outcome::Delivered => Change::outcome(r, RcptState::Delivered, 0, None),
        Outcome::PermFail { reason } => {
            Change::outcome(r, RcptState::Failed, 0, Some(clip(reason)))
        }
        Outcome::TempFail {
            reason,
            retry_after,
        } => {
            let age = now.saturating_sub(received) as u64;
            if age >= opts.lifetime.as_secs() {
                return Change::outcome(r, RcptState::Expired, 0, Some(clip(reason)));
            }
            let (min, max) = backoff_bounds(opts);
            let mut delay = age.clamp(min as u64, max as u64);
            if let Some(ra) = retry_after {
                delay = delay.max(ra.as_secs());
            }
            let next = (now as u64 + delay).min(u32::MAX as u64) as u32;
            Change::outcome(r, RcptState::Deferred, next, Some(clip(reason)))
        }
    }
}
