//! One bucket per routing key: its counters, ready FIFO, adaptive concurrency
//! window (Postfix-style feedback, dead-destination detection) and open
//! slots. Depends on `index` ids and `types` only.

use super::egress::{Path, PathSusp, Source};
use super::rate::Rate;
use crate::index::RcptRef;
use crate::types::{Concurrency, MessageId, RateLimit, RcptState};
use std::collections::VecDeque;
use std::sync::Arc;

/// One open session: a concurrency slot with a lease deadline.
#[derive(Debug)]
pub struct Slot {
    /// Identifies the session within the bucket.
    pub token: u32,
    /// Lease deadline (unix seconds); renewed on every session call.
    pub deadline: u32,
    /// Recipients of the delivery in progress …
    pub leased: Vec<RcptRef>,
    /// … all of this message.
    pub leased_msg: MessageId,
    /// This session is the probe of a dead destination.
    pub probe: bool,
    /// The egress source it goes out from (none without sources).
    pub source: Option<Arc<Source>>,
}

/// Destination state, per routing key.
#[derive(Debug)]
pub struct Bucket {
    /// Routing key.
    pub key: Arc<str>,
    /// Ready FIFO; may hold stale references, validated when popped.
    pub ready: VecDeque<RcptRef>,
    /// Recipients per in-memory state.
    pub counts: [u32; 11],
    /// In the shard's ready ring.
    pub in_ring: bool,
    /// Suspended by the operator.
    pub suspended: bool,
    /// When a suspension for a duration ends (0: until resumed).
    pub resume_at: u32,
    /// Length of that suspension, seconds (bounds it if the clock steps back).
    pub suspend_secs: u32,
    /// The reply rule (its pattern) that suspended it, if a rule did (not
    /// persisted: after a restart the suspension shows as the operator's).
    pub suspended_by: Option<Box<str>>,
    /// Current concurrency window.
    pub window: u16,
    /// Policy.
    pub policy: Concurrency,
    /// Consecutive site failures.
    pub site_failures: u16,
    /// Dead until this time (0: alive).
    pub dead_until: u32,
    /// Current dead backoff (seconds).
    pub dead_backoff: u32,
    /// Open sessions.
    pub slots: Vec<Slot>,
    /// Next session token.
    pub next_token: u32,
    /// Recipients delivered.
    pub delivered: u64,
    /// Temporary failures.
    pub deferrals: u64,
    /// Permanent failures and expiries.
    pub failures: u64,
    /// Site failures.
    pub site_failure_total: u64,
    /// The reason given with the last site failure (for the operator).
    pub last_site_failure: Option<Box<str>>,
    /// The probe time a wake-up is scheduled for.
    pub wake_at: u32,
    /// Live `Session` values opened on this bucket (it is not freed while any is).
    pub handles: u32,
    /// Message-rate limits, if any (boxed: most destinations have none).
    pub rate: Option<Box<Rate>>,
    /// A reply rule's lowering of the limits, while it lasts.
    pub throttle: Option<Box<Throttle>>,
    /// The fleet limiter said to wait until this time (unix seconds; 0: no
    /// wait). In memory only: the fleet is asked again after a restart.
    pub fleet_until: u32,
    /// One path per egress source of the destination's pool (none: no
    /// sources, sessions go out as the MTA likes).
    pub paths: Vec<Path>,
    /// The sources configuration the paths were built from.
    pub egress_gen: u32,
    /// Sessions per source at most (0: no limit) …
    pub path_limit: u16,
    /// … and messages per period per source (the operator's settings).
    pub path_rate: RateLimit,
    /// Where the next tie between paths starts.
    pub next_path: u16,
    /// Reply rules' suspensions of single paths (by source name).
    pub path_susp: Vec<PathSusp>,
}

/// A reply rule's temporary lowering of a destination's limits: `policy.limit`
/// and `rate` hold the lowered values while it lasts; the destination's own
/// are kept here and come back when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    /// When it ends (unix seconds).
    pub until: u32,
    /// Its length, seconds (bounds it if the clock steps back).
    pub secs: u32,
    /// The rule's pattern ("" when restored from disk: it is not kept).
    pub pattern: Box<str>,
    /// The rule's concurrency limit (0: none) and rates.
    pub window: u16,
    /// The rule's message-rate limits.
    pub rate: RateLimit,
    /// The destination's own concurrency limit …
    pub own_limit: u16,
    /// … and its own message-rate limits.
    pub own_rate: RateLimit,
}

/// Per period, the stricter of two rate limits (0: no limit for that period).
fn stricter(a: RateLimit, b: RateLimit) -> RateLimit {
    let m = |x: u32, y: u32| match (x, y) {
        (0, y) => y,
        (x, 0) => x,
        (x, y) => x.min(y),
    };
    RateLimit {
        per_second: m(a.per_second, b.per_second),
        per_minute: m(a.per_minute, b.per_minute),
        per_hour: m(a.per_hour, b.per_hour),
        per_day: m(a.per_day, b.per_day),
    }
}

impl Bucket {
    /// A new, empty bucket.
    pub fn new(key: Arc<str>, policy: Concurrency) -> Self {
        Bucket {
            key,
            ready: VecDeque::new(),
            counts: [0; 11],
            in_ring: false,
            suspended: false,
            resume_at: 0,
            suspend_secs: 0,
            suspended_by: None,
            window: policy.initial.clamp(1, policy.limit.max(1)),
            policy,
            site_failures: 0,
            dead_until: 0,
            dead_backoff: 0,
            slots: Vec::new(),
            next_token: 1,
            delivered: 0,
            deferrals: 0,
            failures: 0,
            site_failure_total: 0,
            last_site_failure: None,
            wake_at: 0,
            handles: 0,
            rate: None,
            throttle: None,
            fleet_until: 0,
            paths: Vec::new(),
            egress_gen: 0,
            path_limit: 0,
            path_rate: RateLimit::default(),
            next_path: 0,
            path_susp: Vec::new(),
        }
    }

    /// The rate limits in force (none: all zero).
    pub fn rate_limit(&self) -> RateLimit {
        self.rate.as_ref().map(|r| r.limit()).unwrap_or_default()
    }

    /// Puts `limit` in force; what was already sent still counts in the
    /// periods both limit (no fresh burst).
    fn put_rate(&mut self, limit: RateLimit) {
        match (&mut self.rate, Rate::new(limit)) {
            (Some(old), Some(_)) if old.limit() == limit => {}
            (Some(old), Some(mut new)) => {
                new.carry(old);
                **old = new;
            }
            (r, new) => *r = new.map(Box::new),
        }
    }

    /// Puts concurrency limit `limit` in force (the window is clamped to it).
    fn put_limit(&mut self, limit: u16) {
        self.policy.limit = limit.max(1);
        self.window = self.window.min(self.policy.limit);
    }

    /// The destination's own concurrency limit (the operator's); a throttle
    /// in force keeps lowering it until it ends.
    pub fn set_own_limit(&mut self, limit: u16) {
        match self.throttle.as_mut() {
            Some(t) => {
                t.own_limit = limit;
                self.apply_throttle();
            }
            None => self.put_limit(limit),
        }
    }

    /// The destination's own message-rate limits (the operator's); a throttle
    /// in force keeps lowering them until it ends.
    pub fn set_own_rate(&mut self, limit: RateLimit) {
        match self.throttle.as_mut() {
            Some(t) => {
                t.own_rate = limit;
                self.apply_throttle();
            }
            None => self.put_rate(limit),
        }
    }

    /// A reply rule lowers the limits to `window` (0: unchanged) and `rate`
    /// until `now + secs` (a later end in force is kept). Returns the end.
    pub fn throttle_by(
        &mut self,
        window: u16,
        rate: RateLimit,
        secs: u32,
        pattern: &str,
        now: u32,
    ) -> u32 {
        let until = now.saturating_add(secs).max(1);
        // A throttle in force is merged, never weakened: the stricter window
        // and rates, the later end.
        let t = match self.throttle.take() {
            Some(t) => Throttle {
                until: t.until.max(until),
                secs: t.secs.max(secs).max(t.until.max(until).saturating_sub(now)),
                pattern: pattern.into(),
                window: match (t.window, window) {
                    (0, w) | (w, 0) => w,
                    (a, b) => a.min(b),
                },
                rate: stricter(t.rate, rate),
                own_limit: t.own_limit,
                own_rate: t.own_rate,
            },
            None => Throttle {
                until,
                secs,
                pattern: pattern.into(),
                window,
                rate,
                own_limit: self.policy.limit,
                own_rate: self.rate_limit(),
            },
        };
        let until = t.until;
        self.throttle = Some(Box::new(t));
        self.apply_throttle();
        until
    }

    /// Puts the lowered limits of the throttle in force.
    fn apply_throttle(&mut self) {
        let Some(t) = self.throttle.as_ref() else {
            return;
        };
        let limit = match t.window {
            0 => t.own_limit,
            w => t.own_limit.min(w),
        };
        let rate = stricter(t.own_rate, t.rate);
        self.put_limit(limit);
        self.put_rate(rate);
    }

    /// Ends a throttle whose time came: the destination's own limits are
    /// back. Returns true when it ended.
    pub fn end_throttle_if_due(&mut self, now: u32) -> bool {
        let Some(t) = self.throttle.take_if(|t| now >= t.until) else {
            return false;
        };
        self.put_limit(t.own_limit);
        self.put_rate(t.own_rate);
        // Sessions that stayed open through it count in the window again.
        self.window = self
            .window
            .max(self.slots.len().min(self.policy.limit as usize) as u16);
        true
    }

    /// A throttle whose end is further away than its own length (the clock
    /// stepped back) is re-based to last that length from now. Returns the
    /// new end, to wake up for.
    pub fn rebase_throttle(&mut self, now: u32) -> Option<u32> {
        let t = self.throttle.as_mut()?;
        if t.until > now && t.until - now > t.secs {
            t.until = now.saturating_add(t.secs).max(1);
            return Some(t.until);
        }
        None
    }

    /// Appends to the ready FIFO, growing it by an eighth (not by doubling) when
    /// full: a 10-million-entry queue wastes at most 12.5 %, not up to 100 %.
    pub fn push_ready(&mut self, r: RcptRef) {
        if self.ready.len() == self.ready.capacity() {
            let n = self.ready.len();
            self.ready.reserve_exact((n / 8).max(16));
        }
        self.ready.push_back(r);
    }

    /// Count of recipients in a state.
    pub fn count(&self, s: RcptState) -> u32 {
        self.counts[s as usize]
    }

    /// Moves one recipient between state counters.
    pub fn shift(&mut self, from: RcptState, to: RcptState) {
        if !from.is_final() {
            let c = &mut self.counts[from as usize];
            *c = c.saturating_sub(1);
        }
        if !to.is_final() {
            self.counts[to as usize] += 1;
        }
    }

    /// Whether a new session may be opened now.
    pub fn can_open(&self, now: u32) -> bool {
        if self.suspended
            || self.count(RcptState::Ready) == 0
            || self.rate_wait(now).is_some()
            || now < self.fleet_until
            || !self.path_free(now)
        {
            return false;
        }
        if self.dead_until != 0 {
            return self.probe_due(now) && self.slots.is_empty();
        }
        self.slots.len() < self.window as usize
    }

    /// When the rate limits allow the next message, if not now (unix seconds):
    /// the destination's own, or (with egress sources) when the first path
    /// that is not full may send. The scheduler decides in whole seconds of
    /// the clock.
    pub fn rate_wait(&self, now: u32) -> Option<u32> {
        self.own_rate_wait(now).max(self.path_wait(now))
    }

    /// When the destination's own rate limits allow the next message, if not
    /// now (what an open session checks, with its own path's).
    pub fn own_rate_wait(&self, now: u32) -> Option<u32> {
        self.rate.as_ref().and_then(|r| {
            let at = r.allowed_at();
            (at > now as u64 * 1000).then(|| at.div_ceil(1000).min(u32::MAX as u64) as u32)
        })
    }

    /// Limited by time (its own rates or its egress paths'): waits for a
    /// wake-up when out of them.
    pub fn limited(&self) -> bool {
        self.rate.is_some() || !self.paths.is_empty()
    }

    /// Ends a suspension for a duration once its end time came. Returns true
    /// when the bucket was resumed.
    pub fn end_suspension_if_due(&mut self, now: u32) -> bool {
        let due = self.suspended && self.resume_at != 0 && now >= self.resume_at;
        if due {
            (self.suspended, self.resume_at, self.suspend_secs) = (false, 0, 0);
            self.suspended_by = None;
        }
        due
    }

    /// A suspension whose end is further away than its own length (the clock
    /// stepped back) is re-based to last that length from now: neither cut
    /// short nor stretched. Returns the new end time, to wake up for.
    pub fn rebase_suspension(&mut self, now: u32) -> Option<u32> {
        if self.suspended && self.resume_at > now && self.resume_at - now > self.suspend_secs {
            self.resume_at = now.saturating_add(self.suspend_secs).max(1);
            return Some(self.resume_at);
        }
        None
    }

    /// A dead destination may be probed: its wait is over, or it is further away
    /// than the wait itself can be (the clock stepped back), then it is over now.
    pub fn probe_due(&self, now: u32) -> bool {
        now >= self.dead_until || self.dead_until - now > self.dead_backoff.max(1)
    }

    /// Positive feedback after a delivery without site failure.
    pub fn success(&mut self) {
        self.site_failures = 0;
        if self.dead_until != 0 {
            self.dead_until = 0;
            self.dead_backoff = 0;
            self.window = self.policy.initial.clamp(1, self.policy.limit.max(1));
        } else if self.window < self.policy.limit {
            self.window += 1;
        }
    }

    /// Negative feedback after a site failure. Returns true when the
    /// destination was (re)declared dead.
    pub fn site_failure(&mut self, now: u32, min_backoff: u32, max_backoff: u32) -> bool {
        self.site_failure_total += 1;
        self.site_failures = self.site_failures.saturating_add(1);
        self.window = self.window.saturating_sub(1).max(1);
        let probing = self.dead_until != 0;
        if probing || self.site_failures >= self.policy.dead_after.max(1) {
            self.dead_backoff = if self.dead_backoff == 0 {
                min_backoff
            } else {
                (self.dead_backoff.saturating_mul(2)).min(max_backoff)
            };
            self.dead_until = now.saturating_add(self.dead_backoff).max(1);
            return true;
        }
        false
    }

    /// True when the bucket holds nothing worth keeping: no recipients, sessions,
    /// operator state (suspension, custom limit) or dead-destination state.
    pub fn idle(&self, default: Concurrency) -> bool {
        self.counts.iter().all(|&c| c == 0)
            && self.slots.is_empty()
            && self.handles == 0
            && !self.in_ring
            && !self.suspended
            && self.dead_until == 0
            && self.policy == default
            && self.rate.is_none()
            && self.throttle.is_none()
            && self.path_limit == 0
            && self.path_rate.is_none()
            && self.path_susp.is_empty()
    }

    /// The index of the open slot `token`, if it is still open.
    pub fn slot(&self, token: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.token == token)
    }

    /// Gives back what a burst made the ready FIFO grow to, once it is mostly empty.
    pub fn shrink_ready(&mut self) {
        if self.ready.capacity() > 64 && self.ready.len() < self.ready.capacity() / 4 {
            let n = self.ready.len();
            self.ready.shrink_to((n * 2).max(16));
        }
    }

    /// Approximate bytes of memory held (excluding recipients).
    pub fn memory(&self) -> usize {
        std::mem::size_of::<Bucket>() + self.key.len() + 16 + self.ready.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_and_dead_detection() {
        let mut b = Bucket::new("x".into(), Concurrency::default());
        assert_eq!(b.window, 5);
        for _ in 0..30 {
            b.success();
        }
        assert_eq!(b.window, 20);
        for i in 0..5 {
            let dead = b.site_failure(100, 300, 4000);
            assert_eq!(dead, i == 4);
        }
        assert_eq!(b.dead_until, 400);
        assert!(b.site_failure(400, 300, 4000));
        assert_eq!(b.dead_backoff, 600);
        b.success();
        assert_eq!((b.dead_until, b.window), (0, 5));
    }
}
