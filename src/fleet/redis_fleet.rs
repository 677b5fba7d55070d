//! [`RedisFleet`]: fleet limits kept in Redis (feature `redis`), shared by
//! every node that points at the same server and key prefix. Each decision is
//! one atomic Lua script on the server's own clock (`TIME`), so nodes with
//! skewed clocks agree:
//!
//! - connection leases: a sorted set per routing key of fencing tokens scored
//!   by their expiry; expired members are dropped first, a session is
//!   admitted while fewer than the limit remain, and each message renews its
//!   lease (a node that dies loses its leases within the TTL);
//! - message rates: one GCRA per limited period ("theoretical arrival time"
//!   in microseconds) decided at the server's whole seconds with just under
//!   a second of tolerance, so no window of a period, counted in the
//!   server's seconds, holds more than its count across the fleet.
//!
//! When Redis cannot be reached within the timeout, the configured
//! [`FleetFailure`] policy answers: wait (fail closed), or this node's share
//! of each limit (limit ÷ nodes, at least 1) through a [`LocalFleet`]; for a
//! second after a failure Redis is not asked at all (so a blackholed server
//! costs one timeout per second, not one per call). Connections are pooled:
//! no caller waits behind another's round trip. The `redis` crate (redis-rs)
//! speaks the protocol; no protocol is hand-written.
//! Depends on the rest of `fleet` and `types`.

use super::{FleetLimit, FleetLimiter, FleetSession, LocalFleet, Permit};
use crate::types::{Clock, RateLimit};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Periods of [`RateLimit`]'s fields, in milliseconds, with their key suffixes.
const PERIODS: [(u64, &str); 4] = [
    (1_000, "s"),
    (60_000, "m"),
    (3_600_000, "h"),
    (86_400_000, "d"),
];

/// Admits a session: KEYS[1] the lease set; ARGV member, limit (0: none),
/// TTL ms. Returns 1 (admitted) or 0 (full).
const OPEN: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and limit > 0
   and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
";

/// Admits one message: KEYS[1] the lease set, KEYS[2..] one GCRA state per
/// limited period; ARGV member, limit (0: no lease needed), TTL ms, then the
/// emission interval (µs) of each limited period. Returns 0 (go), -1 (the
/// lease is gone: the session must end) or the milliseconds to wait. Rate
/// state is in microseconds (exact in a Lua double until the year 2255).
/// Decided at whole seconds of the server's clock with a tolerance of just
/// under a second, like the queue's own limits: each second takes its whole
/// share at once, and no window of a period, counted in the server's
/// seconds, holds more than its count.
const MESSAGE: &str = r"
local t = redis.call('TIME')
local now_us = t[1] * 1000000 + t[2]
local now = math.floor(now_us / 1000)
local sec = now_us - now_us % 1000000
local tol = 999999
if tonumber(ARGV[2]) > 0 then
  local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not exp or tonumber(exp) <= now then
    return -1
  end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
end
local wait = 0
for i = 2, #KEYS do
  local at = tonumber(redis.call('GET', KEYS[i]) or '0') - tol
  if at > sec then
    -- Allowed from the second that holds `at` on; ask again then.
    local w = math.max(math.ceil((at - now_us) / 1000), 1)
    if w > wait then
      wait = w
    end
  end
end
if wait > 0 then
  return wait
end
for i = 2, #KEYS do
  local interval = tonumber(ARGV[i + 2])
  local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), sec) + interval
  redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now_us) / 1000) + 1000)
end
return 0
";

/// What a node does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetFailure {
    /// Send nothing limited: every limited destination waits this long and
    /// asks again.
    FailClosed {
        /// How long to wait before asking again.
        retry: Duration,
    },
    /// Go on with this node's share of each limit (limit ÷ `nodes`, at least
    /// 1), counted locally, so the fleet stays within the limit as long as
    /// at most `nodes` nodes are running.
    LocalShare {
        /// Nodes expected to run.
        nodes: u32,
    },
}

/// How a [`RedisFleet`] reaches Redis and what it does without it.
#[derive(Debug, Clone)]
pub struct RedisFleetOptions {
    /// Server address (`redis://127.0.0.1:6379/`; `rediss://` for TLS is not
    /// enabled in this build).
    pub url: String,
    /// Prefix of every key (one per fleet).
    pub prefix: String,
    /// Connection-lease time to live: a node that stops renewing (it died)
    /// loses its leases after this (default 30 s).
    pub lease_ttl: Duration,
    /// Longest wait for Redis per call, connecting included (default 200 ms).
    pub timeout: Duration,
    /// While Redis cannot be reached (default: fail closed, retry in 5 s).
    pub on_failure: FleetFailure,
}

impl Default for RedisFleetOptions {
    fn default() -> Self {
        RedisFleetOptions {
            url: "redis://127.0.0.1:6379/".into(),
            prefix: "mailq".into(),
            lease_ttl: Duration::from_secs(30),
            timeout: Duration::from_millis(200),
            on_failure: FleetFailure::FailClosed {
                retry: Duration::from_secs(5),
            },
        }
    }
}

/// Fleet limits in Redis (see the module documentation).
pub struct RedisFleet {
    client: redis::Client,
    /// Idle connections; a call takes one (or connects) and puts it back.
    pool: Mutex<Vec<redis::Connection>>,
    opts: RedisFleetOptions,
    open: redis::Script,
    message: redis::Script,
    limits: Mutex<HashMap<String, FleetLimit>>,
    clock: Arc<dyn Clock>,
    /// The local share while Redis is away (`FleetFailure::LocalShare`).
    share: Arc<LocalFleet>,
    /// Sessions admitted by the local share at their start (never in Redis) …
    local_only: Mutex<HashSet<FleetSession>>,
    /// … and sessions admitted by Redis that went on under the local share
    /// (their Redis lease is removed at their end all the same).
    moved: Mutex<HashSet<FleetSession>>,
    /// Redis is not asked before this time (ms of `clock`) after a failure.
    down_until: AtomicU64,
    errors: AtomicU64,
}

impl RedisFleet {
    /// A limiter for the fleet at `opts.url`; `clock` is the queues' clock
    /// (waits are given in it). Connects lazily: a server that is down now is
    /// handled by the failure policy, not by an error here.
    pub fn new(opts: RedisFleetOptions, clock: Arc<dyn Clock>) -> crate::Result<Arc<RedisFleet>> {
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| crate::Error::InvalidOption(format!("redis url {:?}: {e}", opts.url)))?;
        Ok(Arc::new(RedisFleet {
            client,
            pool: Mutex::new(Vec::new()),
            open: redis::Script::new(OPEN),
            message: redis::Script::new(MESSAGE),
            limits: Mutex::new(HashMap::new()),
            share: LocalFleet::new(clock.clone()),
            local_only: Mutex::new(HashSet::new()),
            moved: Mutex::new(HashSet::new()),
            down_until: AtomicU64::new(0),
            clock,
            opts,
            errors: AtomicU64::new(0),
        }))
    }

    /// Sets the fleet-wide limits of a routing key (every node sets the same).
    pub fn set_limit(&self, key: &str, limit: FleetLimit) {
        let key = super::normal(key);
        if let FleetFailure::LocalShare { nodes } = self.opts.on_failure {
            self.share.set_limit(&key, share(limit, nodes.max(1)));
        }
        self.limits.lock().insert(key, limit);
    }

    /// Calls that could not reach Redis since creation (they were answered
    /// by the failure policy).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Connection leases held in Redis on `key` now (for tests and
    /// monitoring).
    pub fn leases(&self, key: &str) -> crate::Result<u64> {
        let k = self.lease_key(&super::normal(key));
        self.with_conn(|c| {
            redis::cmd("ZCOUNT")
                .arg(&k)
                .arg(format!("({}", server_ms(c)?))
                .arg("+inf")
                .query(c)
        })
        .map_err(|e| crate::Error::InvalidOption(format!("redis: {e}")))
    }

    fn lease_key(&self, key: &str) -> String {
        format!("{}:lease:{{{key}}}", self.opts.prefix)
    }

    /// A session's member in the lease set.
    fn member(s: FleetSession) -> String {
        format!("{:016x}:{}", s.queue, s.fence)
    }

    /// Runs `f` on a pooled connection (connecting if none is idle), with no
    /// lock held during the round trip; an error drops that connection.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let pooled = self.pool.lock().pop();
        let mut c = match pooled {
            Some(c) => c,
            None => {
                let c = self.client.get_connection_with_timeout(self.opts.timeout)?;
                c.set_read_timeout(Some(self.opts.timeout))?;
                c.set_write_timeout(Some(self.opts.timeout))?;
                c
            }
        };
        let r = f(&mut c);
        if r.is_ok() {
            self.pool.lock().push(c);
        }
        r
    }

    /// Runs a call unless Redis failed within the last second; a failure
    /// starts that second.
    fn ask<T>(&self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> Option<T> {
        let now = self.clock.now_millis();
        if now < self.down_until.load(Ordering::Relaxed) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self.with_conn(f) {
            Ok(v) => Some(v),
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.down_until.store(now + 1000, Ordering::Relaxed);
                None
            }
        }
    }

    /// The failure policy's answer (Redis could not be reached).
    fn fallback(&self, key: &str, s: FleetSession, open: bool) -> Permit {
        match self.opts.on_failure {
            FleetFailure::FailClosed { retry } => {
                Permit::WaitUntil(self.clock.now_millis() + retry.as_millis() as u64)
            }
            FleetFailure::LocalShare { .. } => {
                if open {
                    let p = self.share.open(key, s);
                    if p == Permit::Granted {
                        self.local_only.lock().insert(s);
                    }
                    return p;
                }
                // A session admitted by Redis goes on under the local share
                // (its connection counted there from now on).
                if self.moved.lock().insert(s) && self.share.open(key, s) != Permit::Granted {
                    self.moved.lock().remove(&s);
                    return Permit::LeaseLost;
                }
                self.share.message(key, s)
            }
        }
    }

    fn wait(&self, ms: u64) -> Permit {
        Permit::WaitUntil(self.clock.now_millis() + ms.max(1))
    }
}

/// This node's share of a fleet limit.
fn share(l: FleetLimit, nodes: u32) -> FleetLimit {
    let part = |n: u32| if n == 0 { 0 } else { (n / nodes).max(1) };
    FleetLimit {
        connections: part(l.connections),
        rate: RateLimit {
            per_second: part(l.rate.per_second),
            per_minute: part(l.rate.per_minute),
            per_hour: part(l.rate.per_hour),
            per_day: part(l.rate.per_day),
        },
    }
}

/// The server's clock, milliseconds.
fn server_ms(c: &mut redis::Connection) -> redis::RedisResult<u64> {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(c)?;
    Ok(s * 1000 + us / 1000)
}

impl FleetLimiter for RedisFleet {
    fn open(&self, key: &str, s: FleetSession) -> Permit {
        let Some(limit) = self.limits.lock().get(key).copied() else {
            return Permit::Granted;
        };
        if limit.connections == 0 {
            return Permit::Granted;
        }
        let ttl = self.opts.lease_ttl.as_millis() as u64;
        let r: Option<i64> = self.ask(|c| {
            self.open
                .key(self.lease_key(key))
                .arg(Self::member(s))
                .arg(limit.connections)
                .arg(ttl)
                .invoke(c)
        });
        match r {
            Some(1) => Permit::Granted,
            // Full: a session ends at the latest after its next message.
            Some(_) => self.wait(1000),
            None => self.fallback(key, s, true),
        }
    }

    fn message(&self, key: &str, s: FleetSession) -> Permit {
        let Some(limit) = self.limits.lock().get(key).copied() else {
            return Permit::Granted;
        };
        if self.local_only.lock().contains(&s) {
            // Admitted by the local share: it stays there for its session.
            return self.share.message(key, s);
        }
        let ttl = self.opts.lease_ttl.as_millis() as u64;
        let mut inv = self.message.prepare_invoke();
        inv.key(self.lease_key(key))
            .arg(Self::member(s))
            .arg(limit.connections)
            .arg(ttl);
        for ((period, suffix), n) in PERIODS.iter().zip(limit.rate.counts()) {
            if n > 0 {
                inv.key(format!("{}:rate:{{{key}}}:{suffix}", self.opts.prefix))
                    .arg((period * 1000).div_ceil(n as u64));
            }
        }
        let r: Option<i64> = self.ask(|c| inv.invoke(c));
        match r {
            Some(0) => {
                // Redis is back: a session that went on under the share
                // leaves it.
                if self.moved.lock().remove(&s) {
                    self.share.close(key, s);
                }
                Permit::Granted
            }
            Some(ms) if ms > 0 => self.wait(ms as u64),
            // The lease expired in Redis (or the keys were flushed): this
            // session ends; a new one asks for a lease again.
            Some(_) => Permit::LeaseLost,
            None => self.fallback(key, s, false),
        }
    }

    fn close(&self, key: &str, s: FleetSession) {
        if self.local_only.lock().remove(&s) {
            self.share.close(key, s);
            return;
        }
        if self.moved.lock().remove(&s) {
            self.share.close(key, s);
        }
        if !self.limits.lock().contains_key(key) {
            return;
        }
        // Best effort: a lease left behind expires by its TTL.
        let (k, m) = (self.lease_key(key), Self::member(s));
        let _: Option<i64> = self.ask(|c| redis::cmd("ZREM").arg(&k).arg(&m).query(c));
    }
}
