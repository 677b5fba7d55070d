//! Concurrency slots as leases: opening one for the next ready destination
//! (round robin), firing due timers, probes and lease deadlines, returning a
//! slot's recipients on every path that ends it (finish, site failure, drop,
//! expiry), and the time of the next scheduled event.
//! Depends on `error`, `index`, `sched`, `types`, the rest of `engine`.

use super::change::Change;
use super::{bump, policy, Engine};
use crate::error::Result;
use crate::index::*;
use crate::sched::{SchedShard, Slot};
use crate::types::*;
use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One open concurrency slot of one destination, held by a session. Ending it
/// returns its slot and any leased recipients; dropping it ends it.
pub(crate) struct Lease {
    pub(super) q: Arc<Engine>,
    pub(super) bucket: u32,
    pub(super) token: u32,
    /// The session's fencing token (see [`crate::Session::fence`]).
    pub(super) fence: u64,
    pub(super) key: Arc<str>,
    /// The egress source it goes out from (none without sources).
    pub(super) source: Option<Arc<crate::sched::Source>>,
    /// What the fleet limiter knows it by: the routing key, or
    /// `source->key` for a session through an egress source.
    pub(super) fleet_key: Arc<str>,
    pub(super) deliveries: usize,
    pub(super) closed: bool,
    /// The fleet limiter granted this session a connection lease …
    pub(super) fleet: bool,
    /// … and a message not yet taken.
    pub(super) permit: bool,
    /// The records of its next messages, read ahead.
    pub(super) ahead: super::ahead::Ahead,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .field("source", &self.source.as_ref().map(|s| &s.name))
            .field("token", &self.token)
            .field("fence", &self.fence)
            .finish()
    }
}

impl Engine {
    /// Opens a lease on the next destination with ready work, a free slot and
    /// (with a fleet limiter) a fleet-wide connection.
    pub(crate) fn next_lease(self: &Arc<Self>) -> Result<Option<Lease>> {
        // Each refusal by the fleet takes its destination out of the ring.
        for _ in 0..4 * SHARDS {
            let Some(lease) = self.next_local_lease()? else {
                return Ok(None);
            };
            if let Some(lease) = self.fleet_admit(lease) {
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    /// Opens a lease on the next destination with ready work and a free slot.
    fn next_local_lease(self: &Arc<Self>) -> Result<Option<Lease>> {
        self.check_poison()?;
        let now = self.now();
        self.apply_moves();
        let start = self.ring_cursor.fetch_add(1, Ordering::Relaxed);
        let mut found = None;
        let mut rang = false;
        for i in 0..SHARDS {
            let s = (start + i) % SHARDS;
            let mut ss = self.sched[s].lock();
            rang |= self.promote(&mut ss, s, now);
            while let Some(bl) = ss.ring.pop_front() {
                ss.buckets[bl as usize].in_ring = false;
                self.sync_paths(&mut ss, bl);
                if ss.buckets[bl as usize].can_open(now) {
                    found = self.open_slot(&mut ss, s, bl, now);
                    ss.maybe_ring(bl, now);
                    if found.is_some() {
                        break;
                    }
                    continue;
                }
                // Out of the ring for now: a wake-up for when it can open
                // (out of rate, a dead destination's probe) brings it back.
                ss.maybe_ring(bl, now);
            }
            if found.is_some() {
                break;
            }
        }
        // Lease reclaims in `promote` may have ended re-routed attempts.
        self.apply_moves();
        // Timers fired here made other destinations ready: tell the event loop.
        self.wake_if(rang);
        Ok(found)
    }

    /// Opens a lease on one routing key if it has ready work and a free slot.
    pub(crate) fn lease_for(self: &Arc<Self>, key: &str) -> Result<Option<Lease>> {
        self.check_poison()?;
        let _g = self.gate.read_recursive();
        let Some(b) = self.find_bucket(key)? else {
            return Ok(None);
        };
        let now = self.now();
        let (s, bl) = (shard_of(b), local_of(b));
        let mut ss = self.sched[s].lock();
        let rang = self.promote(&mut ss, s, now);
        self.sync_paths(&mut ss, bl);
        let lease = if ss.buckets[bl as usize].can_open(now) {
            self.open_slot(&mut ss, s, bl, now)
        } else {
            None
        };
        drop(ss);
        self.apply_moves();
        self.wake_if(rang);
        drop(_g);
        Ok(lease.and_then(|l| self.fleet_admit(l)))
    }

    /// Opens a slot on local bucket `bl` (which can open one) through the
    /// path `pick_path` chooses, if it has egress sources; `None` when none
    /// may take a session.
    fn open_slot(
        self: &Arc<Self>,
        ss: &mut SchedShard,
        shard: usize,
        bl: u32,
        now: u32,
    ) -> Option<Lease> {
        let b = &mut ss.buckets[bl as usize];
        let source = match b.paths.len() {
            0 => None,
            n => {
                let i = b.pick_path(now)?;
                b.next_path = ((i + 1) % n) as u16;
                Some(b.paths[i].source.clone())
            }
        };
        let token = b.next_token;
        b.next_token = b.next_token.wrapping_add(1).max(1);
        let deadline = now.saturating_add(policy::lease_ttl(&self.opts));
        let probe = b.dead_until != 0;
        b.slots.push(Slot {
            token,
            deadline,
            leased: Vec::new(),
            leased_msg: MessageId(0),
            probe,
            source: source.clone(),
        });
        let key = b.key.clone();
        b.handles += 1;
        ss.leases.push(Reverse((deadline, bl, token)));
        let fleet_key = match &source {
            Some(s) if self.opts.fleet.is_some() => format!("{}->{key}", s.name).into(),
            _ => key.clone(),
        };
        Some(Lease {
            q: self.clone(),
            bucket: global(shard, bl),
            token,
            fence: self.next_fence.fetch_add(1, Ordering::Relaxed),
            key,
            source,
            fleet_key,
            deliveries: 0,
            closed: false,
            fleet: false,
            permit: false,
            ahead: Default::default(),
        })
    }

    /// Asks the fleet limiter (if any) for a new lease's connection; on a
    /// wait the destination waits too and the lease ends.
    fn fleet_admit(&self, mut lease: Lease) -> Option<Lease> {
        let Some(f) = &self.opts.fleet else {
            return Some(lease);
        };
        match f.open(&lease.fleet_key, lease.fleet_session()) {
            crate::fleet::Permit::Granted => {
                lease.fleet = true;
                Some(lease)
            }
            crate::fleet::Permit::WaitUntil(ms) => {
                self.fleet_wait(lease.bucket, ms);
                drop(lease);
                None
            }
            crate::fleet::Permit::LeaseLost => None,
        }
    }

    /// The fleet said to wait until `ms`: the destination leaves the
    /// round-robin and gets a wake-up then.
    pub(super) fn fleet_wait(&self, bucket: u32, ms: u64) {
        let now = self.now();
        let mut ss = self.sched[shard_of(bucket)].lock();
        let b = &mut ss.buckets[local_of(bucket) as usize];
        b.fleet_until = ms.div_ceil(1000).clamp(now as u64 + 1, u32::MAX as u64) as u32;
        ss.maybe_ring(local_of(bucket), now);
    }

    /// Fires due timers, probes and lease reclaims in every shard (see
    /// [`crate::Queue::tick`]). Returns true when work became ready.
    pub(crate) fn tick(&self) -> bool {
        let now = self.now();
        let mut rang = false;
        for s in 0..SHARDS {
            let mut ss = self.sched[s].lock();
            rang |= self.promote(&mut ss, s, now);
            rang |= !ss.ring.is_empty();
        }
        self.apply_moves();
        self.wake_if(rang);
        // A failed sync poisons the queue (reported by later calls); maintenance
        // still runs and records its own failure. So does a failed sweep (it is
        // tried again at the next one).
        let _ = self.sweep_if_due();
        let _ = self.sync_if_due();
        self.prepare_if_wanted();
        self.log.trim_spares();
        if self.opts.auto_maintenance {
            self.maybe_maintain();
        }
        rang
    }

    /// Fires due timers, probe wake-ups and expired leases of one shard.
    /// Returns true when a bucket entered the ready ring.
    pub(super) fn promote(&self, ss: &mut SchedShard, shard: usize, now: u32) -> bool {
        let mut rang = ss.observe_clock(now);
        rang |= self.fire_timers(ss, shard, now);
        while let Some(&Reverse((t, bl))) = ss.wakeups.peek() {
            if t > now {
                break;
            }
            ss.wakeups.pop();
            if let Some(b) = ss.buckets.get_mut(bl as usize) {
                b.end_suspension_if_due(now);
                b.end_path_suspensions(now);
                // The wake-up for `wake_at` is used up (or the own rate, back
                // from a throttle, may allow more at once): a later wait must
                // schedule its own, also one for this same time after the
                // clock stepped back.
                if b.end_throttle_if_due(now) || b.wake_at == t {
                    b.wake_at = 0;
                }
            }
            rang |= ss.maybe_ring(bl, now);
        }
        rang | self.reclaim_expired(ss, now)
    }

    /// Deferred recipients whose time came become ready.
    fn fire_timers(&self, ss: &mut SchedShard, shard: usize, now: u32) -> bool {
        let mut rang = false;
        let mut due = Vec::new();
        ss.wheel.advance(now, &mut due);
        for rr in due {
            let (msh, rid) = (rr.shard(), rr.local());
            let mut ms = self.msgs[msh].lock();
            let Some(r) = ms.rcpts.get(rid as usize).copied() else {
                continue;
            };
            if r.state() != RcptState::Deferred
                || shard_of(r.bucket()) != shard
                || r.flags() & F_MOVING != 0
            {
                continue; // stale timer entry
            }
            if r.next > now {
                // Not due (the clock moved back, or an entry for an older time): re-arm
                // rather than drop, or the recipient would never be retried.
                ss.wheel.insert(r.next, rr);
                continue;
            }
            rang |= super::change::apply_change(ss, &mut ms, msh, rid, &Change::requeue(&r), now);
        }
        rang
    }

    /// Slots whose lease deadline passed are reclaimed with their recipients.
    fn reclaim_expired(&self, ss: &mut SchedShard, now: u32) -> bool {
        let mut rang = false;
        while let Some(&Reverse((t, bl, tok))) = ss.leases.peek() {
            if t > now {
                break;
            }
            ss.leases.pop();
            let Some(i) = ss.buckets[bl as usize].slot(tok) else {
                continue;
            };
            let deadline = ss.buckets[bl as usize].slots[i].deadline;
            if deadline > now {
                ss.leases.push(Reverse((deadline, bl, tok)));
                continue;
            }
            let slot = ss.buckets[bl as usize].slots.swap_remove(i);
            bump(&self.counters.lease_reclaims, 1);
            rang |= self.return_leased(ss, &slot.leased, slot.leased_msg, now);
            rang |= ss.maybe_ring(bl, now);
        }
        rang
    }

    /// Returns leased recipients of message `id` to the ready queue (memory
    /// only), or where the operator decided while they were in flight.
    pub(super) fn return_leased(
        &self,
        ss: &mut SchedShard,
        leased: &[RcptRef],
        id: MessageId,
        now: u32,
    ) -> bool {
        let mut rang = false;
        let local = local_of(id.slot());
        for &rr in leased {
            let (msh, rid) = (rr.shard(), rr.local());
            let mut ms = self.msgs[msh].lock();
            if ms.get(local, id.gen()).is_none() {
                continue;
            }
            let r = ms.rcpts[rid as usize];
            if r.state() != RcptState::Leased || r.msg != local {
                continue;
            }
            rang |= self.end_attempt(ss, &mut ms, msh, rid, id, Change::requeue(&r), now);
        }
        rang
    }

    /// Takes the recipients leased in slot `si` of bucket `bl` and returns those
    /// of message `id` (default: the slot's own; a stale C delivery handle
    /// passes its message, so that it never returns a newer delivery's).
    pub(super) fn return_slot_leased(
        &self,
        ss: &mut SchedShard,
        bl: u32,
        si: usize,
        id: Option<MessageId>,
        now: u32,
    ) -> bool {
        let slot = &mut ss.buckets[bl as usize].slots[si];
        let leased = std::mem::take(&mut slot.leased);
        let id = id.unwrap_or(slot.leased_msg);
        self.return_leased(ss, &leased, id, now)
    }

    /// The earliest scheduled event in clock milliseconds: a deferred retry, a
    /// probe, a lease deadline, the outcome-sync deadline, or when a kept
    /// file of a deleted segment, or the next piece of one, is due to be
    /// given back.
    pub(crate) fn next_event_ms(&self) -> Option<u64> {
        let mut best = self.next_event_secs().map(|t| t.saturating_mul(1000));
        for d in [self.log.sync_deadline(), self.log.spare_deadline()]
            .into_iter()
            .flatten()
        {
            best = Some(best.map_or(d, |b| b.min(d)));
        }
        best
    }

    /// The earliest scheduler event in unix seconds.
    fn next_event_secs(&self) -> Option<u64> {
        let now = self.now();
        let mut best: Option<u32> = None;
        let mut take = |t: Option<u32>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        // Maintenance due and not running on another thread: tick now.
        if self.has_moves.load(Ordering::Acquire)
            || (self.maintenance_overdue() > 0 && !self.maint.is_locked())
            || self.log.wants_prepare()
        {
            take(Some(now));
        }
        take(self.next_sweep(now));
        // A checkpoint recovery called for, retried after a failure (when
        // due, the overdue check above says so).
        take(self.rebuilt_at().filter(|&at| at > now));
        for s in 0..SHARDS {
            let mut ss = self.sched[s].lock();
            // A clock that moved back re-files timers and re-checks probes.
            if ss.observe_clock(now) {
                self.wake();
            }
            // A ring entry is "now" only if its bucket can really open a session
            // (one emptied through `session_for` may still sit in the ring).
            if ss
                .ring
                .iter()
                .any(|&bl| ss.buckets[bl as usize].can_open(now))
            {
                take(Some(now));
            }
            take(ss.wheel.next_due());
            take(next_live_lease(&mut ss));
            take(next_live_wakeup(&mut ss));
        }
        best.map(u64::from)
    }
}

/// The next lease deadline of a slot still open; entries of ended sessions are
/// dropped here, so that an idle queue is not woken for nothing.
fn next_live_lease(ss: &mut SchedShard) -> Option<u32> {
    while let Some(&Reverse((t, bl, tok))) = ss.leases.peek() {
        if ss
            .buckets
            .get(bl as usize)
            .is_some_and(|b| b.slot(tok).is_some())
        {
            return Some(t);
        }
        ss.leases.pop();
    }
    None
}

/// The next probe wake-up of a destination still dead at that time, or the end
/// of a timed suspension still in force (stale entries are dropped).
fn next_live_wakeup(ss: &mut SchedShard) -> Option<u32> {
    while let Some(&Reverse((t, bl))) = ss.wakeups.peek() {
        if let Some(b) = ss.buckets.get_mut(bl as usize) {
            if b.dead_until == t
                || (b.suspended && b.resume_at == t)
                || b.throttle.as_ref().is_some_and(|x| x.until == t)
                || b.path_susp.iter().any(|p| p.until == t)
            {
                return Some(t);
            }
            if (b.limited() || b.fleet_until == t) && b.wake_at == t {
                // Out of rate with nothing ready (it expired, was held or
                // delivered elsewhere): no reason to wake; the next message
                // that becomes ready schedules its own wake-up.
                if b.count(RcptState::Ready) > 0 && !b.suspended {
                    return Some(t);
                }
                b.wake_at = 0;
            }
        }
        ss.wakeups.pop();
    }
    None
}

impl Lease {
    /// The destination's routing key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The egress source the session goes out from, if the destination has
    /// sources.
    pub(crate) fn source(&self) -> Option<&Arc<crate::sched::Source>> {
        self.source.as_ref()
    }

    /// The session's fencing token.
    pub(crate) fn fence(&self) -> u64 {
        self.fence
    }

    /// The session as a fleet limiter knows it.
    pub(super) fn fleet_session(&self) -> crate::fleet::FleetSession {
        crate::fleet::FleetSession {
            queue: self.q.instance,
            fence: self.fence,
        }
    }

    /// True once the lease ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Notes that the lease was reclaimed (a late report was refused).
    pub(crate) fn mark_closed(&mut self) {
        self.closed = true;
    }

    /// True when this lease is the probe of a destination marked dead.
    pub(crate) fn is_probe(&self) -> bool {
        let ss = self.q.sched[shard_of(self.bucket)].lock();
        let b = &ss.buckets[local_of(self.bucket) as usize];
        b.slot(self.token).is_some_and(|i| b.slots[i].probe)
    }

    /// Ends the lease, returning its slot and leased recipients; `site` reports
    /// that the destination failed as a whole (negative feedback, maybe dead).
    pub(crate) fn close(&mut self, site: Option<&str>) -> Result<()> {
        // The fleet's connection lease goes on every path, also when the
        // queue reclaimed the slot first (the session saw `LeaseExpired`).
        if std::mem::take(&mut self.fleet) {
            if let Some(f) = &self.q.opts.fleet {
                f.close(&self.fleet_key, self.fleet_session());
            }
        }
        // What the session sent counts in its source's warm-up day; kept
        // for a restart (synced with the session's outcomes).
        let counted = match &self.source {
            Some(src) => self.q.persist_source(src),
            None => Ok(()),
        };
        if self.closed {
            return counted;
        }
        self.closed = true;
        let q = &self.q;
        let now = q.now();
        let (s, bl) = (shard_of(self.bucket), local_of(self.bucket));
        // A greeting like "421 4.7.0 [TSS04] …" may match a rule (decided
        // before the lock is taken).
        let rule = site.and_then(|reason| q.rules.read().clone().destination_act(reason));
        let mut ss = q.sched[s].lock();
        let Some(i) = ss.buckets[bl as usize].slot(self.token) else {
            return counted; // reclaimed by the lease deadline already
        };
        // The slot goes first: the bucket may take another session at once.
        let slot = ss.buckets[bl as usize].slots.swap_remove(i);
        let mut rang = q.return_leased(&mut ss, &slot.leased, slot.leased_msg, now);
        let mut ruled = Ok(());
        if let Some(reason) = site {
            bump(&q.counters.site_failures, 1);
            let (min, max) = policy::backoff_bounds(&q.opts);
            let b = &mut ss.buckets[bl as usize];
            b.last_site_failure = Some(policy::clip(reason).into());
            // A reply about one source (a path rule, e.g. a greeting that
            // blocks this IP) does not count against the whole destination.
            let one_path = slot.source.is_some() && rule.as_ref().is_some_and(|r| r.path);
            if !one_path && b.site_failure(now, min, max) {
                let t = b.dead_until;
                ss.wakeups.push(Reverse((t, bl)));
            }
            if let Some(rule) = &rule {
                ruled = q.act_by_rule(&mut ss, bl, rule, slot.source.as_deref(), now);
            }
        }
        rang |= ss.maybe_ring(bl, now);
        drop(ss);
        q.apply_moves();
        q.wake_if(rang);
        ruled?;
        counted?;
        q.after_write()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.close(None);
        // The bucket may be freed (when idle) only once no session refers to it.
        let (s, bl) = (shard_of(self.bucket), local_of(self.bucket));
        let mut ss = self.q.sched[s].lock();
        if let Some(b) = ss.buckets.get_mut(bl as usize) {
            if Arc::ptr_eq(&b.key, &self.key) {
                b.handles = b.handles.saturating_sub(1);
            }
        }
    }
}
