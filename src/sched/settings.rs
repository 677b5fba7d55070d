//! A destination's operator settings as plain values (what the log's
//! `Destination` records and the checkpoint keep): read from a bucket, and
//! applied to one at recovery. Depends on `storage::record` (the plain
//! [`DestSettings`] value only) and `types`.

use super::{PathSusp, Rate, SchedShard, Throttle};
use crate::storage::record::{DestSettings, PathSuspension};
use crate::types::{Concurrency, RateLimit};
use std::cmp::Reverse;

/// A rate limit from its counts (per second, minute, hour, day).
fn rate_of(c: [u32; 4]) -> RateLimit {
    RateLimit {
        per_second: c[0],
        per_minute: c[1],
        per_hour: c[2],
        per_day: c[3],
    }
}

impl SchedShard {
    /// The operator settings of local bucket `bl` (`default`: the queue's
    /// concurrency policy, so that a limit equal to it is not a setting).
    pub fn settings(&self, bl: u32, default: Concurrency) -> DestSettings {
        let b = &self.buckets[bl as usize];
        let custom = |l: u16| if l != default.limit { l } else { 0 };
        let t = b.throttle.as_deref();
        DestSettings {
            suspended: b.suspended,
            resume_at: if b.suspended { b.resume_at } else { 0 },
            suspend_secs: if b.suspended { b.suspend_secs } else { 0 },
            limit: custom(b.policy.limit),
            rate: b.rate_limit().counts(),
            throttle_until: t.map_or(0, |t| t.until),
            throttle_secs: t.map_or(0, |t| t.secs),
            throttle_window: t.map_or(0, |t| t.window),
            throttle_rate: t.map_or([0; 4], |t| t.rate.counts()),
            own_limit: t.map_or(0, |t| custom(t.own_limit)),
            own_rate: t.map_or([0; 4], |t| t.own_rate.counts()),
            path_limit: b.path_limit,
            path_rate: b.path_rate.counts(),
        }
    }

    /// The path suspensions of local bucket `bl`, as the log keeps them.
    pub fn path_suspensions(&self, bl: u32) -> Vec<PathSuspension> {
        self.buckets[bl as usize]
            .path_susp
            .iter()
            .map(|s| PathSuspension {
                source: s.source.to_string(),
                until: s.until,
                secs: s.secs,
            })
            .collect()
    }

    /// Applies settings read from disk to local bucket `bl` (absolute: what
    /// is not set goes back to the default). A timed suspension gets its
    /// wake-up; one already over ends at the first tick, and one ending further
    /// from `now` than its own length (the clock stepped back while the queue
    /// was closed) is re-based to last that length from now.
    pub fn apply_settings(
        &mut self,
        bl: u32,
        d: &DestSettings,
        paths: &[PathSuspension],
        default: Concurrency,
        now: u32,
    ) {
        let b = &mut self.buckets[bl as usize];
        b.path_susp = paths
            .iter()
            .filter(|p| p.until > now)
            .map(|p| PathSusp {
                source: p.source.as_str().into(),
                until: p.until,
                secs: p.secs,
                by: "".into(),
            })
            .collect();
        b.rebase_path_suspensions(now);
        for t in b.path_susp.iter().map(|p| p.until).collect::<Vec<_>>() {
            self.wakeups.push(Reverse((t, bl)));
        }
        let b = &mut self.buckets[bl as usize];
        b.suspended = d.suspended;
        (b.resume_at, b.suspend_secs) = if d.suspended && d.resume_at != 0 {
            (d.resume_at, d.suspend_secs)
        } else {
            (0, 0)
        };
        b.policy.limit = if d.limit != 0 { d.limit } else { default.limit };
        b.window = b.window.min(b.policy.limit.max(1));
        let limit = rate_of(d.rate);
        if b.rate.as_ref().map(|r| r.limit()) != Some(limit) {
            b.rate = Rate::new(limit).map(Box::new);
        }
        b.throttle = (d.throttle_until != 0).then(|| {
            Box::new(Throttle {
                until: d.throttle_until,
                secs: d.throttle_secs,
                pattern: "".into(),
                window: d.throttle_window,
                rate: rate_of(d.throttle_rate),
                own_limit: if d.own_limit != 0 {
                    d.own_limit
                } else {
                    default.limit
                },
                own_rate: rate_of(d.own_rate),
            })
        });
        b.set_path_limits(d.path_limit, rate_of(d.path_rate));
        if let Some(t) = b
            .rebase_throttle(now)
            .or(b.throttle.as_ref().map(|t| t.until))
        {
            self.wakeups.push(Reverse((t, bl)));
        }
        let b = &mut self.buckets[bl as usize];
        b.rebase_suspension(now);
        if b.resume_at != 0 {
            let t = b.resume_at;
            self.wakeups.push(Reverse((t, bl)));
        }
    }
}
