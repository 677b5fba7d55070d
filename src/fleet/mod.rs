//! Limits shared beyond one queue: several MTA nodes, each with its own
//! queue, that must together stay under a receiver's limits (connections and
//! messages per time, counted per destination across the fleet). The queue
//! asks a [`FleetLimiter`] before it opens a session and before each message,
//! with no lock held; a "wait" keeps the destination out of the round-robin
//! until then (a wake-up, part of `next_wakeup`, never a busy loop). The
//! limiter decides what to do when its store is unreachable (its fault
//! policy), so the queue only ever sees a grant or a wait.
//!
//! [`LocalFleet`] is the in-process implementation: queues of one process (or
//! tests) that share limits. [`RedisFleet`] (feature `redis`) shares them
//! between processes and machines.
//! Depends on `sched` (the rate limiter), `types`.

use crate::sched::Rate;
use crate::types::{Clock, RateLimit};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[cfg(feature = "redis")]
mod redis_fleet;
#[cfg(feature = "redis")]
pub use redis_fleet::{FleetFailure, RedisFleet, RedisFleetOptions};

/// A [`FleetLimiter`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Permit {
    /// Go ahead.
    Granted,
    /// Not now; ask again at this time (unix milliseconds of the queue's
    /// clock).
    WaitUntil(u64),
    /// (From `message`.) This session's connection lease is gone (it expired
    /// in a shared store, or the store lost its keys): the session ends; the
    /// destination does not wait.
    LeaseLost,
}

/// Limits shared by a fleet of queues, per routing key (see the module
/// documentation). Calls come from the queue's callers' threads with no lock
/// of the queue held; they should be quick (a round trip to a local store).
pub trait FleetLimiter: Send + Sync {
    /// Before a session opens on `key`: a connection lease for session `s`.
    fn open(&self, key: &str, s: FleetSession) -> Permit;
    /// Before each message of session `s` on `key`. A lease the limiter
    /// no longer holds (it expired in a shared store) answers
    /// [`Permit::LeaseLost`]: the session then ends.
    fn message(&self, key: &str, s: FleetSession) -> Permit;
    /// The session ended: its connection lease is released (only called
    /// after `open` granted it).
    fn close(&self, key: &str, s: FleetSession);
}

/// A session as a fleet limiter knows it: the queue's instance id (random,
/// new at every open, so queues of a fleet never share one) and the
/// session's fencing token (unique and increasing within that queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FleetSession {
    /// The queue's instance id.
    pub queue: u64,
    /// The session's fencing token.
    pub fence: u64,
}

/// Fleet limits of one routing key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetLimit {
    /// Sessions open at once across the fleet (0: no limit).
    pub connections: u32,
    /// Messages per period across the fleet.
    pub rate: RateLimit,
}

#[derive(Default)]
struct KeyState {
    limit: FleetLimit,
    leases: HashSet<FleetSession>,
    rate: Option<Rate>,
}

/// The in-process [`FleetLimiter`]: queues of one process share it through
/// an `Arc` (set in `Options::fleet` of each). Keys without a limit are not
/// limited.
pub struct LocalFleet {
    clock: Arc<dyn Clock>,
    keys: Mutex<HashMap<String, KeyState>>,
}

impl LocalFleet {
    /// A limiter on `clock` (the queues' clock).
    pub fn new(clock: Arc<dyn Clock>) -> Arc<LocalFleet> {
        Arc::new(LocalFleet {
            clock,
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// Sets the fleet-wide limits of a routing key (normalised like the
    /// queue's: lower case, no trailing dot).
    pub fn set_limit(&self, key: &str, limit: FleetLimit) {
        let mut keys = self.keys.lock();
        let k = keys.entry(normal(key)).or_default();
        k.limit = limit;
        k.rate = Rate::new(limit.rate);
    }

    /// Sessions holding a connection lease on `key` now.
    pub fn leases(&self, key: &str) -> usize {
        self.keys
            .lock()
            .get(&normal(key))
            .map_or(0, |k| k.leases.len())
    }
}

fn normal(key: &str) -> String {
    key.trim_end_matches('.').to_ascii_lowercase()
}

impl FleetLimiter for LocalFleet {
    fn open(&self, key: &str, s: FleetSession) -> Permit {
        let mut keys = self.keys.lock();
        let Some(k) = keys.get_mut(key) else {
            return Permit::Granted;
        };
        let max = k.limit.connections as usize;
        if max != 0 && k.leases.len() >= max {
            // A session ends at the latest after its next message: look
            // again in a second.
            return Permit::WaitUntil(self.clock.now_millis() + 1000);
        }
        k.leases.insert(s);
        Permit::Granted
    }

    fn message(&self, key: &str, s: FleetSession) -> Permit {
        let mut keys = self.keys.lock();
        let Some(k) = keys.get_mut(key) else {
            return Permit::Granted;
        };
        if k.limit.connections != 0 && !k.leases.contains(&s) {
            return Permit::LeaseLost;
        }
        let now = self.clock.now_millis();
        match k.rate.as_mut() {
            None => Permit::Granted,
            Some(r) => {
                // Decided at whole seconds, like the queue's own limits.
                let now_s = now / 1000 * 1000;
                let at = r.allowed_at();
                if at > now_s {
                    return Permit::WaitUntil(at.div_ceil(1000) * 1000);
                }
                r.take(now_s);
                Permit::Granted
            }
        }
    }

    fn close(&self, key: &str, s: FleetSession) {
        if let Some(k) = self.keys.lock().get_mut(key) {
            k.leases.remove(&s);
        }
    }
}
