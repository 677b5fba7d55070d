//! A destination's operator settings as plain values (what the log's
//! `Destination` records and the checkpoint keep): read from a bucket, and
//! applied to one at recovery. Depends on `storage::record` (the plain
//! [`DestSettings`] value only) and `types`.

use super::{Rate, SchedShard};
use crate::storage::record::DestSettings;
use crate::types::{Concurrency, RateLimit};
use std::cmp::Reverse;

impl SchedShard {
    /// The operator settings of local bucket `bl` (`default`: the queue's
    /// concurrency policy, so that a limit equal to it is not a setting).
    pub fn settings(&self, bl: u32, default: Concurrency) -> DestSettings {
        let b = &self.buckets[bl as usize];
        DestSettings {
            suspended: b.suspended,
            resume_at: if b.suspended { b.resume_at } else { 0 },
            suspend_secs: if b.suspended { b.suspend_secs } else { 0 },
            limit: if b.policy.limit != default.limit {
                b.policy.limit
            } else {
                0
            },
            rate: b.rate.as_ref().map_or([0; 4], |r| r.limit().counts()),
        }
    }

    /// Applies settings read from disk to local bucket `bl` (absolute: what
    /// is not set goes back to the default). A timed suspension gets its
    /// wake-up; one already over ends at the first tick, and one ending further
    /// from `now` than its own length (the clock stepped back while the queue
    /// was closed) is re-based to last that length from now.
    pub fn apply_settings(&mut self, bl: u32, d: &DestSettings, default: Concurrency, now: u32) {
        let b = &mut self.buckets[bl as usize];
        b.suspended = d.suspended;
        (b.resume_at, b.suspend_secs) = if d.suspended && d.resume_at != 0 {
            (d.resume_at, d.suspend_secs)
        } else {
            (0, 0)
        };
        b.policy.limit = if d.limit != 0 { d.limit } else { default.limit };
        b.window = b.window.min(b.policy.limit.max(1));
        let limit = RateLimit {
            per_second: d.rate[0],
            per_minute: d.rate[1],
            per_hour: d.rate[2],
            per_day: d.rate[3],
        };
        if b.rate.as_ref().map(|r| r.limit()) != Some(limit) {
            b.rate = Rate::new(limit).map(Box::new);
        }
        b.rebase_suspension(now);
        if b.resume_at != 0 {
            let t = b.resume_at;
            self.wakeups.push(Reverse((t, bl)));
        }
    }
}
