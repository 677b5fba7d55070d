//! Delivery sessions and deliveries.
//!
//! A [`Session`] is one concurrency slot of one destination (one SMTP
//! connection). It is released on every path: [`Session::finish`], a site
//! failure, `Drop` (including unwinding from a panic), or — for a worker that
//! vanished — the lease deadline, after which the slot and its recipients are
//! reclaimed by the next scheduler call. A [`Delivery`] is one message with up
//! to N recipients of that destination; dropping it without an outcome returns
//! its recipients to the ready queue.

use crate::bucket::{SchedShard, Slot};
use crate::error::{Error, Result};
use crate::index::*;
use crate::log::Batch;
use crate::queue::{apply_change, push_update, resolve_intent, Change, Inner, Move, Queue};
use crate::record::{self, Kind};
use crate::types::*;
use bytes::Bytes;
use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Longest last-error text kept per recipient.
pub const MAX_REASON: usize = 512;

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].replace('\0', " ")
}

/// One open connection slot of a destination.
pub struct Session {
    q: Arc<Inner>,
    bucket: u32,
    token: u32,
    key: Arc<str>,
    deliveries: usize,
    closed: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish()
    }
}

/// One message and up to N of its recipients for the session's destination.
pub struct Delivery<'s> {
    s: &'s mut Session,
    c: DeliveryCore,
}

/// A delivery without the borrow of its session (used by the C ABI, which owns
/// sessions and deliveries through handles). Dropping it without an outcome
/// returns its recipients to the ready queue.
pub(crate) struct DeliveryCore {
    q: Arc<Inner>,
    bucket: u32,
    token: u32,
    key: Arc<str>,
    id: MessageId,
    mshard: usize,
    rids: Vec<u32>,
    indices: Vec<u32>,
    addrs: Vec<String>,
    attempts: Vec<u16>,
    sender: String,
    meta: Bytes,
    body: Bytes,
    received: u64,
    /// Absolute file offset of the body in its segment.
    body_at: u64,
    /// The segment file, held open for the delivery's lifetime (compaction may
    /// unlink it meanwhile; the open file stays valid).
    file: Option<Arc<dyn crate::vfs::VFile>>,
    done: bool,
}

impl std::fmt::Debug for Delivery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.c.id)
            .field("recipients", &self.c.addrs)
            .finish()
    }
}

fn outcome_change(o: &Outcome, r: &Rcpt, received: u32, now: u32, opts: &Options) -> Change {
    let attempts = r.attempts().saturating_add(1);
    match o {
        Outcome::Delivered => Change {
            state: RcptState::Delivered,
            attempts,
            next: 0,
            reason: None,
            persist: true,
            inflight_hold: None,
        },
        Outcome::PermFail { reason } => Change {
            state: RcptState::Failed,
            attempts,
            next: 0,
            reason: Some(clip(reason)),
            persist: true,
            inflight_hold: None,
        },
        Outcome::TempFail {
            reason,
            retry_after,
        } => {
            let age = now.saturating_sub(received) as u64;
            if age >= opts.lifetime.as_secs() {
                return Change {
                    state: RcptState::Expired,
                    attempts,
                    next: 0,
                    reason: Some(clip(reason)),
                    persist: true,
                    inflight_hold: None,
                };
            }
            let min = opts.min_backoff.as_secs();
            let max = opts.max_backoff.as_secs().max(min);
            let mut delay = age.clamp(min, max);
            if let Some(ra) = retry_after {
                delay = delay.max(ra.as_secs());
            }
            Change {
                state: RcptState::Deferred,
                attempts,
                next: (now as u64 + delay).min(u32::MAX as u64) as u32,
                reason: Some(clip(reason)),
                persist: true,
                inflight_hold: None,
            }
        }
    }
}

impl Inner {
    /// Fires due timers, probe wake-ups and expired leases of one shard.
    /// Returns true when a bucket entered the ready ring.
    pub(crate) fn promote(&self, ss: &mut SchedShard, shard: usize, now: u32) -> bool {
        let mut rang = false;
        let mut due = Vec::new();
        rang |= ss.observe_clock(now);
        ss.wheel.advance(now, &mut due);
        for rr in due {
            let (msh, rid) = (rref_shard(rr), rref_local(rr));
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
            let ch = Change::to(&r, RcptState::Ready, r.next, false);
            rang |= apply_change(ss, &mut ms, msh, rid, &ch, now);
        }
        while let Some(&Reverse((t, bl))) = ss.wakeups.peek() {
            if t > now {
                break;
            }
            ss.wakeups.pop();
            rang |= ss.maybe_ring(bl, now);
        }
        while let Some(&Reverse((t, bl, tok))) = ss.leases.peek() {
            if t > now {
                break;
            }
            ss.leases.pop();
            let slots = &ss.buckets[bl as usize].slots;
            let Some(i) = slots.iter().position(|s| s.token == tok) else {
                continue;
            };
            if slots[i].deadline > now {
                let d = slots[i].deadline;
                ss.leases.push(Reverse((d, bl, tok)));
                continue;
            }
            let slot = ss.buckets[bl as usize].slots.swap_remove(i);
            self.counters.lease_reclaims.fetch_add(1, Ordering::Relaxed);
            rang |= self.return_leased(ss, &slot, now);
            rang |= ss.maybe_ring(bl, now);
        }
        rang
    }

    /// Returns a slot's leased recipients to the ready queue (memory only), or
    /// where the operator decided while they were in flight.
    pub(crate) fn return_leased(&self, ss: &mut SchedShard, slot: &Slot, now: u32) -> bool {
        let mut rang = false;
        let id = slot.leased_msg;
        for &rr in &slot.leased {
            let (msh, rid) = (rref_shard(rr), rref_local(rr));
            let mut ms = self.msgs[msh].lock();
            let local = local_of(id.slot());
            if ms.get(local, id.gen()).is_none() {
                continue;
            }
            let r = ms.rcpts[rid as usize];
            if r.state() != RcptState::Leased || r.msg != local {
                continue;
            }
            let ch = Change::to(&r, RcptState::Ready, r.next, false);
            rang |= self.end_attempt(ss, &mut ms, msh, rid, id, ch, now);
        }
        rang
    }

    /// Ends the attempt of in-flight recipient `rid` with `ch`, after applying the
    /// operator's in-flight decisions (hold, re-route). A re-routed recipient is
    /// detached here and queued as a [`Move`] (see [`Inner::apply_moves`]).
    /// Returns true when its bucket entered the ready ring.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn end_attempt(
        &self,
        ss: &mut SchedShard,
        ms: &mut MsgShard,
        msh: usize,
        rid: u32,
        id: MessageId,
        mut ch: Change,
        now: u32,
    ) -> bool {
        let r = ms.rcpts[rid as usize];
        let it = ms.intents.get(&rid).copied().unwrap_or_default();
        let to = resolve_intent(&mut ch, &it, r.bucket());
        ms.intents.remove(&rid);
        let Some(to) = to else {
            return apply_change(ss, ms, msh, rid, &ch, now);
        };
        // Leave the old bucket now and write the outcome and the new bucket into
        // the index at once (that is what the log says and what a checkpoint must
        // write); only joining the new bucket's queues waits for `apply_moves`.
        ss.buckets[local_of(r.bucket()) as usize].shift(RcptState::Leased, RcptState::Delivered);
        {
            let rc = &mut ms.rcpts[rid as usize];
            rc.set_state(ch.state);
            rc.set_attempts(ch.attempts);
            rc.next = ch.next;
            rc.set_bucket(to);
            rc.set_flags(rc.flags() | F_MOVING);
        }
        if let Some(t) = &ch.reason {
            ms.set_reason_text(rid, t);
        }
        let mut m = self.moves.lock();
        m.push(Move {
            mshard: msh,
            rid,
            local: r.msg,
            gen: id.gen(),
            to,
        });
        self.has_moves.store(true, Ordering::Release);
        false
    }

    /// Moves re-routed recipients whose attempt ended into their new bucket. Called
    /// by every path that may end an attempt, once it holds no scheduler lock.
    pub(crate) fn apply_moves(&self) {
        if !self.has_moves.load(Ordering::Acquire) {
            return;
        }
        let moves = {
            let mut m = self.moves.lock();
            self.has_moves.store(false, Ordering::Release);
            std::mem::take(&mut *m)
        };
        let mut rang = false;
        for mv in moves {
            let mut ss = self.sched[shard_of(mv.to)].lock();
            let mut ms = self.msgs[mv.mshard].lock();
            if ms.get(mv.local, mv.gen).is_none() {
                continue;
            }
            let r = ms.rcpts[mv.rid as usize];
            // Anyone who changes a moving recipient completes its move first, so
            // its bucket is still `to`; without the flag it joined already.
            if r.flags() & F_MOVING == 0 || r.bucket() != mv.to {
                continue;
            }
            ms.rcpts[mv.rid as usize].set_flags(r.flags() & !F_MOVING);
            let st = r.state();
            ss.buckets[local_of(mv.to) as usize].shift(RcptState::Delivered, st);
            let now = self.now();
            let join = Change::to(&r, st, r.next, false);
            rang |= apply_change(&mut ss, &mut ms, mv.mshard, mv.rid, &join, now);
        }
        if rang {
            self.wake();
        }
    }

    fn open_slot(
        self: &Arc<Self>,
        ss: &mut SchedShard,
        shard: usize,
        bl: u32,
        now: u32,
    ) -> Session {
        let ttl = self.opts.lease_ttl.as_secs().min(u32::MAX as u64 / 2) as u32;
        let b = &mut ss.buckets[bl as usize];
        let token = b.next_token;
        b.next_token = b.next_token.wrapping_add(1).max(1);
        let deadline = now.saturating_add(ttl.max(1));
        let probe = b.dead_until != 0;
        b.slots.push(Slot {
            token,
            deadline,
            leased: Vec::new(),
            leased_msg: MessageId(0),
            probe,
        });
        let key = b.key.clone();
        b.handles += 1;
        ss.leases.push(Reverse((deadline, bl, token)));
        Session {
            q: self.clone(),
            bucket: global(shard, bl),
            token,
            key,
            deliveries: 0,
            closed: false,
        }
    }
}

impl Queue {
    /// Opens a session for the next destination with ready work and a free
    /// concurrency slot, in round-robin order across destinations.
    /// `Ok(None)` when nothing can be delivered now (see [`Queue::next_wakeup`]).
    pub fn next_session(&self) -> Result<Option<Session>> {
        let q = &self.inner;
        if let Some(p) = q.log.poisoned() {
            return Err(Error::Poisoned(p));
        }
        let now = q.now();
        q.apply_moves();
        let start = q.ring_cursor.fetch_add(1, Ordering::Relaxed);
        let mut found = None;
        let mut rang = false;
        'shards: for i in 0..SHARDS {
            let s = (start + i) % SHARDS;
            let mut ss = q.sched[s].lock();
            rang |= q.promote(&mut ss, s, now);
            while let Some(bl) = ss.ring.pop_front() {
                ss.buckets[bl as usize].in_ring = false;
                if ss.buckets[bl as usize].can_open(now) {
                    let sess = q.open_slot(&mut ss, s, bl, now);
                    ss.maybe_ring(bl, now);
                    found = Some(sess);
                    break 'shards;
                }
            }
        }
        // Lease reclaims in `promote` may have ended re-routed attempts.
        q.apply_moves();
        if rang {
            // Timers fired here made other destinations ready: tell the event loop.
            q.wake();
        }
        Ok(found)
    }

    /// Opens a session for one routing key if it has ready work and a free slot.
    pub fn session_for(&self, key: &str) -> Result<Option<Session>> {
        let q = &self.inner;
        if let Some(p) = q.log.poisoned() {
            return Err(Error::Poisoned(p));
        }
        let _g = q.gate.read_recursive();
        let Some(b) = q.find_bucket(key)? else {
            return Ok(None);
        };
        let now = q.now();
        let (s, bl) = (shard_of(b), local_of(b));
        let mut ss = q.sched[s].lock();
        let rang = q.promote(&mut ss, s, now);
        let sess = ss.buckets[bl as usize]
            .can_open(now)
            .then(|| q.open_slot(&mut ss, s, bl, now));
        drop(ss);
        q.apply_moves();
        if rang {
            q.wake();
        }
        Ok(sess)
    }

    /// Fires due timers, probes and lease reclaims in every shard. Event loops call it
    /// at [`Queue::next_wakeup`]; returns true when work became ready (the fd is raised too).
    pub fn tick(&self) -> bool {
        let q = &self.inner;
        let now = q.now();
        let mut rang = false;
        for s in 0..SHARDS {
            let mut ss = q.sched[s].lock();
            rang |= q.promote(&mut ss, s, now);
            rang |= !ss.ring.is_empty();
        }
        q.apply_moves();
        if rang {
            q.wake();
        }
        let _ = q.sync_if_due();
        if q.opts.auto_maintenance {
            crate::checkpoint::maybe_maintain(q);
        }
        rang
    }

    /// Unix time of the next scheduled event (deferred retry, probe, lease deadline,
    /// or the deadline for syncing buffered outcome records), or `None` when nothing
    /// is scheduled. A time in the past means "now". Call [`Queue::tick`] then.
    /// Its resolution is a second: an event loop that wants the outcome-sync
    /// deadline to the millisecond uses [`Queue::next_timeout`] (or the poll fd,
    /// which also wakes for it).
    pub fn next_wakeup(&self) -> Option<u64> {
        let q = &self.inner;
        let mut best = self.next_event_secs().map(|t| t.saturating_mul(1000));
        if let Some(d) = q.log.sync_deadline() {
            best = Some(best.map_or(d, |b| b.min(d)));
        }
        // Round up: waking before a deadline would only find nothing to do.
        best.map(|ms| ms.div_ceil(1000))
    }

    /// Time until the next scheduled event (see [`Queue::next_wakeup`]), to the
    /// millisecond; `Some(Duration::ZERO)` when something is due now.
    pub fn next_timeout(&self) -> Option<std::time::Duration> {
        let q = &self.inner;
        let now_ms = q.opts.clock.now_millis();
        let mut best = self.next_event_secs().map(|t| t.saturating_mul(1000));
        if let Some(d) = q.log.sync_deadline() {
            best = Some(best.map_or(d, |b| b.min(d)));
        }
        best.map(|ms| std::time::Duration::from_millis(ms.saturating_sub(now_ms)))
    }

    /// The earliest scheduler event in unix seconds.
    fn next_event_secs(&self) -> Option<u64> {
        let q = &self.inner;
        let now = q.now();
        let mut best: Option<u32> = None;
        let mut take = |t: Option<u32>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        if q.has_moves.load(Ordering::Acquire) {
            take(Some(now));
        }
        for s in 0..SHARDS {
            let mut ss = q.sched[s].lock();
            // A clock that moved back re-files timers and re-checks probes.
            if ss.observe_clock(now) {
                q.wake();
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
            // Entries of ended sessions and revived destinations are dropped here,
            // so that an idle queue is not woken for nothing.
            while let Some(&Reverse((t, bl, tok))) = ss.leases.peek() {
                let live = ss
                    .buckets
                    .get(bl as usize)
                    .is_some_and(|b| b.slots.iter().any(|x| x.token == tok));
                if live {
                    take(Some(t));
                    break;
                }
                ss.leases.pop();
            }
            while let Some(&Reverse((t, bl))) = ss.wakeups.peek() {
                if ss
                    .buckets
                    .get(bl as usize)
                    .is_some_and(|b| b.dead_until == t)
                {
                    take(Some(t));
                    break;
                }
                ss.wakeups.pop();
            }
        }
        best.map(u64::from)
    }
}

impl Session {
    /// The destination's routing key.
    pub fn routing_key(&self) -> &str {
        &self.key
    }

    /// True when this session is the probe of a destination marked dead.
    pub fn is_probe(&self) -> bool {
        let q = &self.q;
        let ss = q.sched[shard_of(self.bucket)].lock();
        ss.buckets[local_of(self.bucket) as usize]
            .slots
            .iter()
            .any(|s| s.token == self.token && s.probe)
    }

    /// Takes the next delivery: one message and up to `batch_recipients` of its
    /// recipients for this destination. `Ok(None)` when the destination has no
    /// more ready work or the session reached its delivery cap; then end the session.
    pub fn next_delivery(&mut self) -> Result<Option<Delivery<'_>>> {
        Ok(self.next_core()?.map(|c| Delivery { s: self, c }))
    }

    /// True once the session ended (site failure, lease expiry, finish).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn next_core(&mut self) -> Result<Option<DeliveryCore>> {
        if self.closed || self.deliveries >= self.q.opts.deliveries_per_session {
            return Ok(None);
        }
        let q = self.q.clone();
        if let Some(p) = q.log.poisoned() {
            return Err(Error::Poisoned(p));
        }
        let max = q.opts.batch_recipients.max(1);
        let (s, bl) = (shard_of(self.bucket), local_of(self.bucket));
        let ttl = q.opts.lease_ttl.as_secs().min(u32::MAX as u64 / 2) as u32;
        loop {
            let now = q.now();
            let mut ss = q.sched[s].lock();
            let bucket = &mut ss.buckets[bl as usize];
            let Some(si) = bucket.slots.iter().position(|x| x.token == self.token) else {
                self.closed = true;
                return Err(Error::LeaseExpired);
            };
            bucket.slots[si].deadline = now.saturating_add(ttl.max(1));
            if !bucket.slots[si].leased.is_empty() {
                // The previous delivery never ended (leaked with `mem::forget`): its
                // recipients go back now instead of staying in flight for ever.
                let prev = Slot {
                    token: 0,
                    deadline: 0,
                    leased: std::mem::take(&mut bucket.slots[si].leased),
                    leased_msg: bucket.slots[si].leased_msg,
                    probe: false,
                };
                if q.return_leased(&mut ss, &prev, now) {
                    q.wake();
                }
                drop(ss);
                q.apply_moves();
                continue;
            }
            // Pop until a recipient that is really ready here.
            let mut leased: Option<Leased> = None;
            while let Some(rr) = ss.buckets[bl as usize].ready.pop_front() {
                let (msh, rid) = (rref_shard(rr), rref_local(rr));
                let mut ms = q.msgs[msh].lock();
                let Some(r) = ms.rcpts.get(rid as usize).copied() else {
                    continue;
                };
                if r.state() != RcptState::Ready
                    || r.bucket() != self.bucket
                    || r.flags() & F_MOVING != 0
                {
                    continue;
                }
                let m = ms.msgs[r.msg as usize];
                let mut rids = vec![rid];
                for j in m.first..m.first + m.n as u32 {
                    if rids.len() >= max {
                        break;
                    }
                    let o = ms.rcpts[j as usize];
                    if j != rid && o.bucket() == self.bucket && o.state() == RcptState::Ready {
                        rids.push(j);
                    }
                }
                rids.sort_unstable();
                for &j in &rids {
                    ms.rcpts[j as usize].set_state(RcptState::Leased);
                    ss.buckets[bl as usize].shift(RcptState::Ready, RcptState::Leased);
                }
                leased = Some((msh, r.msg, m.gen, rids, m.first, (m.seg, m.off, m.len)));
                break;
            }
            let Some((msh, local, gen, rids, first, (seg, off, len))) = leased else {
                // Drained: give back what a burst made the FIFO grow to.
                let ready = &mut ss.buckets[bl as usize].ready;
                if ready.capacity() > 64 {
                    ready.shrink_to_fit();
                }
                return Ok(None);
            };
            let id = MessageId::new(gen, global(msh, local));
            {
                let slot = &mut ss.buckets[bl as usize].slots[si];
                slot.leased = rids.iter().map(|&r| rref(msh, r)).collect();
                slot.leased_msg = id;
            }
            drop(ss);
            let indices: Vec<u32> = rids.iter().map(|r| r - first).collect();
            match read_delivery(&q, id, (seg, off, len), &indices) {
                Ok((sender, meta, body, received, addrs, body_off)) => {
                    let ms = q.msgs[msh].lock();
                    if ms.get(local, gen).is_none() {
                        // Deleted by the operator meanwhile: nothing left to deliver.
                        drop(ms);
                        let mut ss = q.sched[s].lock();
                        if let Some(slot) = ss.buckets[bl as usize]
                            .slots
                            .iter_mut()
                            .find(|x| x.token == self.token)
                        {
                            slot.leased.clear();
                        }
                        continue;
                    }
                    let attempts = rids
                        .iter()
                        .map(|&r| ms.rcpts[r as usize].attempts())
                        .collect();
                    drop(ms);
                    self.deliveries += 1;
                    return Ok(Some(DeliveryCore {
                        q: q.clone(),
                        bucket: self.bucket,
                        token: self.token,
                        key: self.key.clone(),
                        id,
                        mshard: msh,
                        rids,
                        indices,
                        addrs,
                        attempts,
                        sender,
                        meta,
                        body,
                        received,
                        body_at: off as u64 + body_off as u64,
                        file: q.log.segment_file(seg).ok(),
                        done: false,
                    }));
                }
                Err(e) => {
                    let now = q.now();
                    let mut ss = q.sched[s].lock();
                    let Some(slot) = ss.buckets[bl as usize]
                        .slots
                        .iter_mut()
                        .find(|x| x.token == self.token && x.leased_msg == id)
                    else {
                        // The lease was reclaimed meanwhile; those recipients are not ours.
                        self.closed = true;
                        return Err(Error::LeaseExpired);
                    };
                    slot.leased.clear();
                    let mut ms = q.msgs[msh].lock();
                    let loc = ms.get(local, gen).map(|m| (m.seg, m.off));
                    // Damage only when the record is really bad where it still lives; a
                    // message moved by compaction, or an I/O error, is not corruption.
                    let corrupt = matches!(e, Error::Corrupt { .. }) && loc == Some((seg, off));
                    let mut rang = false;
                    for &r in &rids {
                        let rc = ms.rcpts[r as usize];
                        if rc.state() != RcptState::Leased || rc.msg != local || loc.is_none() {
                            continue;
                        }
                        if corrupt {
                            ms.intents.remove(&r);
                            ms.rcpts[r as usize].set_state(RcptState::Corrupt);
                            ss.buckets[bl as usize].shift(RcptState::Leased, RcptState::Corrupt);
                        } else {
                            let ch = Change::to(&rc, RcptState::Ready, rc.next, false);
                            rang |= q.end_attempt(&mut ss, &mut ms, msh, r, id, ch, now);
                        }
                    }
                    drop(ms);
                    drop(ss);
                    q.apply_moves();
                    if rang {
                        q.wake();
                    }
                    if corrupt {
                        q.report.lock().note_corrupt_message(id, &e.to_string());
                        continue;
                    }
                    if loc.is_some_and(|l| l != (seg, off)) {
                        continue; // relocated: lease it again from its new place
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Reports that the destination failed as a whole (connection refused, bad
    /// greeting, TLS failure): the window shrinks, and a run of these marks the
    /// destination dead until a probe succeeds. Ends the session.
    pub fn site_failure(mut self, reason: &str) -> Result<()> {
        self.close(Some(reason))
    }

    /// Ends the session, releasing its slot.
    pub fn finish(mut self) -> Result<()> {
        self.close(None)
    }

    pub(crate) fn close(&mut self, site: Option<&str>) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let q = &self.q;
        let now = q.now();
        let (s, bl) = (shard_of(self.bucket), local_of(self.bucket));
        let mut ss = q.sched[s].lock();
        let Some(i) = ss.buckets[bl as usize]
            .slots
            .iter()
            .position(|x| x.token == self.token)
        else {
            return Ok(()); // reclaimed by the lease deadline already
        };
        let slot = ss.buckets[bl as usize].slots.swap_remove(i);
        let mut rang = q.return_leased(&mut ss, &slot, now);
        if let Some(reason) = site {
            q.counters.site_failures.fetch_add(1, Ordering::Relaxed);
            ss.buckets[bl as usize].last_site_failure = Some(clip(reason).into());
            let min = q.opts.min_backoff.as_secs().min(u32::MAX as u64) as u32;
            let max = q.opts.max_backoff.as_secs().min(u32::MAX as u64) as u32;
            let b = &mut ss.buckets[bl as usize];
            if b.site_failure(now, min, max.max(min)) {
                let t = b.dead_until;
                ss.wakeups.push(Reverse((t, bl)));
            }
        }
        rang |= ss.maybe_ring(bl, now);
        drop(ss);
        q.apply_moves();
        if rang {
            q.wake();
        }
        q.sync_if_due()?;
        if q.opts.auto_maintenance {
            crate::checkpoint::maybe_maintain(q);
        }
        Ok(())
    }
}

impl Drop for Session {
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

/// Index of the slot `token` in bucket `bl`, if that bucket is still the one the
/// session was opened on (a delivery handle that outlived its session, through
/// the C API, may refer to a bucket freed and reused since).
fn slot_index(ss: &SchedShard, bl: u32, key: &Arc<str>, token: u32) -> Option<usize> {
    let b = ss.buckets.get(bl as usize)?;
    if !Arc::ptr_eq(&b.key, key) {
        return None;
    }
    b.slots.iter().position(|x| x.token == token)
}

/// (message shard, local slot, generation, recipient ids, first recipient id, (segment, offset, record length)).
type Leased = (usize, u32, u32, Vec<u32>, u32, (u32, u32, u32));

type DeliveryData = (String, Bytes, Bytes, u64, Vec<String>, usize);

/// Reads and checks a message record; returns the addresses of recipients `want` only.
fn read_delivery(
    q: &Inner,
    id: MessageId,
    (seg, off, len): (u32, u32, u32),
    want: &[u32],
) -> Result<DeliveryData> {
    let (kind, payload) = q.log.read_record(seg, off as u64, len as usize)?;
    let bad = |why: &str| Error::Corrupt {
        path: q.dir.join(crate::log::segment_name(seg)),
        offset: off as u64,
        reason: why.to_string(),
    };
    if !matches!(kind, Kind::Message | Kind::MessageCopy) {
        return Err(bad("not a message record"));
    }
    let rec = record::decode_message(&payload).ok_or_else(|| bad("message does not decode"))?;
    if rec.id != id.0 {
        return Err(bad("record belongs to another message"));
    }
    let body = payload.slice(rec.body_off..rec.body_off + rec.body_len);
    let meta_start = rec.meta.as_ptr() as usize - payload.as_ptr() as usize;
    let meta = payload.slice(meta_start..meta_start + rec.meta.len());
    let addrs = want
        .iter()
        .map(|&i| {
            rec.rcpts
                .get(i as usize)
                .map(|r| r.0.to_string())
                .unwrap_or_default()
        })
        .collect();
    Ok((
        rec.sender.to_string(),
        meta,
        body,
        rec.received,
        addrs,
        crate::record::HEADER_LEN + rec.body_off,
    ))
}

impl Delivery<'_> {
    /// The message.
    pub fn id(&self) -> MessageId {
        self.c.id
    }
    /// Envelope sender (empty for the null sender).
    pub fn sender(&self) -> &str {
        &self.c.sender
    }
    /// Recipient addresses of this delivery.
    pub fn recipients(&self) -> &[String] {
        &self.c.addrs
    }
    /// Indices of those recipients within the message.
    pub fn indices(&self) -> &[u32] {
        &self.c.indices
    }
    /// Previous attempts per recipient.
    pub fn attempts(&self) -> &[u16] {
        &self.c.attempts
    }
    /// The body, zero-copy from the memory-mapped segment.
    pub fn body(&self) -> Bytes {
        self.c.body.clone()
    }
    /// The MTA's opaque metadata.
    pub fn meta(&self) -> Bytes {
        self.c.meta.clone()
    }
    /// When the message was accepted (unix seconds).
    pub fn received(&self) -> u64 {
        self.c.received
    }
    /// The session's routing key.
    pub fn routing_key(&self) -> &str {
        &self.c.key
    }

    /// Records one outcome per recipient (same order as [`Delivery::recipients`]).
    /// Outcomes are applied at once and made durable with the next group commit
    /// (at most `outcome_sync_interval` later, or call [`Queue::sync`]).
    pub fn complete(mut self, outcomes: &[Outcome]) -> Result<()> {
        let r = self.c.complete(outcomes);
        if matches!(r, Err(Error::LeaseExpired)) {
            self.s.closed = true;
        }
        r
    }

    /// The connection failed during this delivery: its recipients are deferred with
    /// `reason`, the destination gets negative feedback, and the session ends.
    pub fn site_failure(mut self, reason: &str) -> Result<()> {
        let r = self.c.site_failure_outcomes(reason);
        let c = self.s.close(Some(reason));
        r.and(c)
    }
}

impl DeliveryCore {
    pub(crate) fn id(&self) -> MessageId {
        self.id
    }
    pub(crate) fn sender(&self) -> &str {
        &self.sender
    }
    pub(crate) fn recipients(&self) -> &[String] {
        &self.addrs
    }
    pub(crate) fn indices(&self) -> &[u32] {
        &self.indices
    }
    pub(crate) fn attempts(&self) -> &[u16] {
        &self.attempts
    }
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }
    pub(crate) fn meta(&self) -> &Bytes {
        &self.meta
    }
    /// The open segment file holding the body and the body's absolute offset in it.
    pub(crate) fn body_file(&self) -> Result<(Arc<dyn crate::vfs::VFile>, u64)> {
        match &self.file {
            Some(f) => Ok((f.clone(), self.body_at)),
            None => Err(Error::Io {
                op: "open segment",
                path: self.q.dir.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        }
    }

    pub(crate) fn complete(&mut self, outcomes: &[Outcome]) -> Result<()> {
        if outcomes.len() != self.rids.len() {
            return Err(Error::OutcomeCount {
                expected: self.rids.len(),
                got: outcomes.len(),
            });
        }
        self.finish(outcomes, false)
    }

    pub(crate) fn site_failure_outcomes(&mut self, reason: &str) -> Result<()> {
        let outs: Vec<Outcome> = self.rids.iter().map(|_| Outcome::temp(reason)).collect();
        self.finish(&outs, true)
    }

    fn finish(&mut self, outcomes: &[Outcome], site: bool) -> Result<()> {
        self.done = true;
        let q = self.q.clone();
        let now = q.now();
        let (s, bl) = (shard_of(self.bucket), local_of(self.bucket));
        let ttl = q.opts.lease_ttl.as_secs().min(u32::MAX as u64 / 2) as u32;
        let _g = q.gate.read();
        let mut ss = q.sched[s].lock();
        let Some(si) = slot_index(&ss, bl, &self.key, self.token) else {
            return Err(Error::LeaseExpired);
        };
        ss.buckets[bl as usize].slots[si].deadline = now.saturating_add(ttl.max(1));
        let mut ms = q.msgs[self.mshard].lock();
        let local = local_of(self.id.slot());
        let mut plan = Vec::with_capacity(self.rids.len());
        if let Some(m) = ms.get(local, self.id.gen()).copied() {
            for (k, &rid) in self.rids.iter().enumerate() {
                let r = ms.rcpts[rid as usize];
                if r.state() != RcptState::Leased || r.msg != local || r.bucket() != self.bucket {
                    continue; // deleted or changed by the operator while in flight
                }
                let mut ch = outcome_change(&outcomes[k], &r, m.received, now, &q.opts);
                if let Some(it) = ms.intents.get(&rid) {
                    // The record must say what the operator's decision makes of it.
                    resolve_intent(&mut ch, it, r.bucket());
                }
                plan.push((rid, ch));
            }
        }
        let mut batch = Batch::new();
        for (rid, ch) in &plan {
            push_update(&mut batch, &ms, self.mshard, *rid, ch, "");
        }
        if let Err(e) = q.log.append(batch) {
            drop(ms);
            let slot = std::mem::take(&mut ss.buckets[bl as usize].slots[si].leased);
            let tmp = Slot {
                token: 0,
                deadline: 0,
                leased: slot,
                leased_msg: self.id,
                probe: false,
            };
            q.return_leased(&mut ss, &tmp, now);
            drop(ss);
            q.apply_moves();
            return Err(e);
        }
        let mut rang = false;
        let (mut d, mut t, mut f, mut x) = (0u64, 0u64, 0u64, 0u64);
        for (rid, ch) in plan {
            match ch.state {
                RcptState::Delivered => d += 1,
                RcptState::Deferred | RcptState::Held => t += 1,
                RcptState::Failed => f += 1,
                RcptState::Expired => x += 1,
                _ => {}
            }
            rang |= q.end_attempt(&mut ss, &mut ms, self.mshard, rid, self.id, ch, now);
        }
        drop(ms);
        let b = &mut ss.buckets[bl as usize];
        b.slots[si].leased.clear();
        b.delivered += d;
        b.deferrals += t;
        b.failures += f + x;
        if !site {
            b.success();
            rang |= ss.maybe_ring(bl, now);
        }
        drop(ss);
        let c = &q.counters;
        c.delivered.fetch_add(d, Ordering::Relaxed);
        c.deferred.fetch_add(t, Ordering::Relaxed);
        c.failed.fetch_add(f, Ordering::Relaxed);
        c.expired.fetch_add(x, Ordering::Relaxed);
        drop(_g);
        q.apply_moves();
        if rang {
            q.wake();
        }
        q.sync_if_due()
    }
}

impl Drop for DeliveryCore {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let q = self.q.clone();
        let now = q.now();
        let (s, bl) = (shard_of(self.bucket), local_of(self.bucket));
        let mut ss = q.sched[s].lock();
        let Some(si) = slot_index(&ss, bl, &self.key, self.token) else {
            return;
        };
        let leased = std::mem::take(&mut ss.buckets[bl as usize].slots[si].leased);
        let tmp = Slot {
            token: 0,
            deadline: 0,
            leased,
            leased_msg: self.id,
            probe: false,
        };
        let rang = q.return_leased(&mut ss, &tmp, now);
        drop(ss);
        q.apply_moves();
        if rang {
            q.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simfs::SimFs;

    /// Review finding: between an attempt's end and the re-routed recipient
    /// joining its new bucket, a checkpoint must already write its outcome
    /// (state, attempts, next time) and its new route — the log's records before
    /// the checkpoint position are never replayed again.
    #[test]
    fn checkpoint_during_a_pending_move_keeps_outcome_and_route() {
        let fs = SimFs::new();
        let clock = ManualClock::new(1_700_000_000);
        let opts = || Options {
            vfs: fs.vfs(),
            clock: clock.clone(),
            checkpoint_bytes: u64::MAX,
            auto_maintenance: false,
            ..Options::default()
        };
        let q = Queue::open("/q", opts()).unwrap();
        let id = q
            .enqueue(&NewMessage {
                recipients: vec!["a@old.example".into()],
                body: b"x",
                ..Default::default()
            })
            .unwrap();
        // Find a target key in another scheduler shard than the old one.
        let old = q.inner.bucket_id("old.example").unwrap();
        let to = (0..64)
            .map(|i| format!("new{i}.example"))
            .find(|k| shard_of(q.inner.bucket_id(k).unwrap()) != shard_of(old))
            .unwrap();
        let mut s = q.session_for("old.example").unwrap().unwrap();
        let d = s.next_delivery().unwrap().unwrap();
        assert_eq!(q.reroute("old.example", &to).unwrap(), 1);
        // End the attempt the way `finish` does, but stop before `apply_moves`.
        {
            let inner = &q.inner;
            let _g = inner.gate.read();
            let mut ss = inner.sched[shard_of(old)].lock();
            let mut ms = inner.msgs[shard_of(id.slot())].lock();
            let rid = ms.rcpt_index(local_of(id.slot()), 0).unwrap();
            let r = ms.rcpts[rid as usize];
            let received = ms.msgs[local_of(id.slot()) as usize].received;
            let mut ch = outcome_change(
                &Outcome::temp("451 later"),
                &r,
                received,
                inner.now(),
                &inner.opts,
            );
            let it = *ms.intents.get(&rid).unwrap();
            resolve_intent(&mut ch, &it, r.bucket());
            let mut b = Batch::new();
            push_update(&mut b, &ms, shard_of(id.slot()), rid, &ch, "");
            inner.log.append(b).unwrap();
            let now = inner.now();
            inner.end_attempt(&mut ss, &mut ms, shard_of(id.slot()), rid, id, ch, now);
            let slot = ss.buckets[local_of(old) as usize]
                .slots
                .iter_mut()
                .next()
                .unwrap();
            slot.leased.clear();
        }
        assert!(!q.inner.moves.lock().is_empty(), "the move is pending");
        q.checkpoint().unwrap();
        drop(d); // its slot no longer lists the recipient: nothing to return
        drop(s);
        q.inner.apply_moves();
        drop(q);
        let q = Queue::open("/q", opts()).unwrap();
        let r = &q.inspect(id).unwrap().recipients[0];
        assert_eq!(
            (r.route.as_str(), r.state, r.attempts),
            (to.as_str(), RcptState::Deferred, 1)
        );
        assert_eq!(r.last_error, "451 later");
        assert_eq!(q.debug_check(), Ok(()));
    }
}
