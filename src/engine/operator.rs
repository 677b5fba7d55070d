//! Operator actions on waiting and in-flight recipients: hold, release, delete,
//! flush, re-route, suspend, concurrency limits, bounce hand-out and
//! acknowledgement, and freeing idle buckets. Every action is persisted before
//! it returns; one on a recipient in flight is recorded at once and takes
//! effect when its attempt ends.
//! Depends on `error`, `index`, `sched`, `storage`, `types`, `validate`, the rest of `engine`.

use super::change::{apply_change, push_update, Change};
use super::{bump, Engine};
use crate::error::{Error, Result};
use crate::index::*;
use crate::sched::{Bucket, SchedShard};
use crate::storage::log::Batch;
use crate::storage::record;
use crate::types::*;
use parking_lot::MutexGuard;

/// An action the operator applies to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Keep it from delivery until released (in flight: when its attempt ends).
    Hold,
    /// Make a held recipient ready now (in flight: cancel a pending hold).
    Release,
    /// Drop it without a DSN.
    Delete,
    /// Retry a deferred recipient now.
    Flush,
}

impl Action {
    /// The change this action makes to `r`, or `None` to leave it alone.
    pub(crate) fn plan(self, r: &Rcpt) -> Option<Change> {
        let st = r.state();
        match (self, st) {
            (Action::Hold, RcptState::Ready | RcptState::Deferred) => {
                Some(Change::persist(r, RcptState::Held, r.next))
            }
            (Action::Hold, RcptState::Leased) => Some(Change::inflight(r, RcptState::Held, true)),
            (Action::Release, RcptState::Held) => Some(Change::persist(r, RcptState::Ready, 0)),
            (Action::Release, RcptState::Leased) => {
                Some(Change::inflight(r, RcptState::Ready, false))
            }
            (Action::Delete, _) if !st.is_final() && st != RcptState::New => {
                Some(Change::persist(r, RcptState::Deleted, 0))
            }
            (Action::Flush, RcptState::Deferred) => Some(Change::persist(r, RcptState::Ready, 0)),
            _ => None,
        }
    }
}

/// The pending in-flight decision of recipient `rid` (none: the default).
fn intent_of(ms: &MsgShard, rid: u32) -> Intent {
    ms.intents.get(&rid).copied().unwrap_or_default()
}

/// Locks the scheduler shards of two buckets in index order; the second guard
/// is `None` when both live in one shard.
fn lock_pair(
    q: &Engine,
    a: u32,
    b: u32,
) -> (
    MutexGuard<'_, SchedShard>,
    Option<MutexGuard<'_, SchedShard>>,
) {
    let (sa, sb) = (shard_of(a), shard_of(b));
    if sa == sb {
        (q.sched[sa].lock(), None)
    } else if sa < sb {
        let first = q.sched[sa].lock();
        (first, Some(q.sched[sb].lock()))
    } else {
        let second = q.sched[sb].lock();
        (q.sched[sa].lock(), Some(second))
    }
}

impl Engine {
    /// Applies `a` to every recipient of message `id`; durable on return.
    pub(crate) fn act_on_message(&self, id: MessageId, a: Action) -> Result<usize> {
        let (s, l) = self.locate(id)?;
        let n = self.msgs[s].lock().msgs[l as usize].n as u32;
        let mut changed = 0;
        for i in 0..n {
            match self.change_rcpt(id, i, &|r| a.plan(r)) {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(Error::NoSuchMessage(_)) => break,
                Err(e) => return Err(e),
            }
        }
        self.acted(a, changed)
    }

    /// Applies `a` to every live recipient routed to `key`; durable on return.
    pub(crate) fn act_on_bucket(&self, key: &str, a: Action) -> Result<usize> {
        let targets = {
            let _g = self.gate.read_recursive();
            match self.find_bucket(key)? {
                Some(b) => self.collect(&|r| r.bucket() == b),
                // Nothing to change, but durable on return all the same.
                None => Vec::new(),
            }
        };
        let n = self.each_target(targets, |id, i| self.change_rcpt(id, i, &|r| a.plan(r)))?;
        self.acted(a, n)
    }

    /// Flushes deferred recipients (of one routing key, or all) and revives dead
    /// destinations; durable on return.
    pub(crate) fn flush(&self, key: Option<&str>) -> Result<usize> {
        let _g = key.map(|_| self.gate.read_recursive());
        let bucket = match key {
            Some(k) => match self.find_bucket(k)? {
                Some(b) => Some(b),
                None => return Ok(0),
            },
            None => None,
        };
        let targets = self.collect(&|r| {
            r.state() == RcptState::Deferred && bucket.is_none_or(|b| b == r.bucket())
        });
        let n = self.each_target(targets, |id, i| {
            self.change_rcpt(id, i, &|r| Action::Flush.plan(r))
        })?;
        self.log.sync_all()?;
        self.revive(bucket);
        Ok(n)
    }

    /// A flush also revives a dead destination (one, or all).
    fn revive(&self, bucket: Option<u32>) {
        for s in 0..SHARDS {
            let mut ss = self.sched[s].lock();
            let now = self.now();
            for l in 0..ss.buckets.len() as u32 {
                let b = &mut ss.buckets[l as usize];
                if bucket.is_some_and(|x| x != global(s, l)) || b.dead_until == 0 {
                    continue;
                }
                b.dead_until = now;
                let rang = ss.maybe_ring(l, now);
                self.wake_if(rang);
            }
        }
    }

    /// Runs `f` on each target; a message gone meanwhile is skipped.
    pub(super) fn each_target(
        &self,
        targets: Vec<(MessageId, u32)>,
        f: impl Fn(MessageId, u32) -> Result<bool>,
    ) -> Result<usize> {
        let mut n = 0;
        for (id, i) in targets {
            match f(id, i) {
                Ok(true) => n += 1,
                Ok(false) | Err(Error::NoSuchMessage(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Makes an action durable and counts deletions.
    pub(super) fn acted(&self, a: Action, n: usize) -> Result<usize> {
        self.log.sync_all()?;
        if a == Action::Delete {
            bump(&self.counters.deleted, n as u64);
        }
        Ok(n)
    }

    /// Suspends (no new sessions) a routing key, until resumed (`None`) or for
    /// a duration, after which it resumes by itself; `resume` ends either, and
    /// reply rules' suspensions of its single sources.
    pub(crate) fn set_suspended(
        &self,
        key: &str,
        suspended: bool,
        duration: Option<std::time::Duration>,
    ) -> Result<()> {
        let secs = match duration {
            Some(d) if d.as_secs() == 0 || d.as_secs() > u32::MAX as u64 / 2 => {
                return Err(Error::InvalidOption(format!(
                    "suspension of {} s: give 1 s to 68 years, or none to suspend until resumed",
                    d.as_secs()
                )))
            }
            Some(d) => d.as_secs() as u32,
            None => 0,
        };
        self.with_bucket(key, |ss, bl, now| {
            let b = &mut ss.buckets[bl as usize];
            b.suspended = suspended;
            b.suspended_by = None; // the operator's now
            if !suspended {
                // Resuming lifts reply rules' suspensions of single sources too.
                b.path_susp.clear();
            }
            (b.resume_at, b.suspend_secs) = if suspended && secs != 0 {
                (now.saturating_add(secs).max(1), secs)
            } else {
                (0, 0)
            };
            if b.resume_at != 0 {
                let t = b.resume_at;
                ss.wakeups.push(std::cmp::Reverse((t, bl)));
            }
            !suspended && ss.maybe_ring(bl, now)
        })
    }

    /// Sets the concurrency limit of one routing key (the window is clamped to it).
    pub(crate) fn set_concurrency_limit(&self, key: &str, limit: u16) -> Result<()> {
        if limit == 0 {
            return Err(Error::InvalidOption(
                "concurrency limit must be at least 1".into(),
            ));
        }
        self.with_bucket(key, |ss, bl, _| {
            ss.buckets[bl as usize].set_own_limit(limit);
            false
        })
    }

    /// Sets (or, with nothing limited, removes) the message-rate limits of one
    /// routing key. A lower limit applies from the next message; the wait it
    /// causes is a wake-up of the bucket.
    pub(crate) fn set_rate_limit(&self, key: &str, limit: RateLimit) -> Result<()> {
        self.with_bucket(key, |ss, bl, now| {
            let b = &mut ss.buckets[bl as usize];
            b.set_own_rate(limit);
            b.wake_at = 0;
            ss.maybe_ring(bl, now)
        })
    }

    /// Runs `f` on the bucket of `key` (created if new) under its shard lock,
    /// appends the bucket's settings as a `Destination` record under the same
    /// lock (so the log orders them as memory does) and makes it durable;
    /// wakes the event loop when `f` returns true.
    pub(super) fn with_bucket(
        &self,
        key: &str,
        f: impl FnOnce(&mut SchedShard, u32, u32) -> bool,
    ) -> Result<()> {
        let rang = {
            let _g = self.gate.read_recursive();
            let b = self.bucket_id(&crate::validate::normalize_key(key)?)?;
            let now = self.now();
            let mut ss = self.sched[shard_of(b)].lock();
            let bl = local_of(b);
            let before = Saved::of(&ss.buckets[bl as usize]);
            let rang = f(&mut ss, bl, now);
            if let Err(e) = self.persist_settings(&ss, bl) {
                // Not recorded: not in force either (wake-ups it added are
                // dropped as stale when they fire).
                before.restore(&mut ss.buckets[bl as usize]);
                return Err(e);
            }
            rang
        };
        self.wake_if(rang);
        self.log.sync_all()
    }

    /// Appends (without waiting for durability) a `Destination` record with
    /// the settings of local bucket `bl`; the caller holds its shard lock.
    fn persist_settings(&self, ss: &SchedShard, bl: u32) -> Result<()> {
        let d = ss.settings(bl, self.opts.concurrency);
        let paths = ss.path_suspensions(bl);
        let mut batch = Batch::new();
        batch.push(record::Kind::Destination, |p| {
            record::encode_destination(p, &ss.buckets[bl as usize].key, &d, &paths)
        });
        self.log.append(batch).map(drop)
    }

    /// A reply matched a rule that suspends or throttles its destination:
    /// a timed suspension of local bucket `bl` (a longer one in force is
    /// kept), of its path through the session's `source` only, or lowered
    /// limits until a time; marked with the rule, persisted with the
    /// attempt's records (synced with them). The caller holds the shard lock.
    pub(super) fn act_by_rule(
        &self,
        ss: &mut SchedShard,
        bl: u32,
        rule: &super::rules::Act,
        source: Option<&crate::sched::Source>,
        now: u32,
    ) -> Result<()> {
        let until = now.saturating_add(rule.secs).max(1);
        let b = &mut ss.buckets[bl as usize];
        let before = Saved::of(b);
        // A path suspension with the list full (255 sources of this
        // destination suspended) suspends the destination instead.
        let path = match source.filter(|_| rule.path && rule.throttle.is_none()) {
            Some(src) => b.suspend_path(&src.name, rule.secs, &rule.pattern, now),
            None => Err(()),
        };
        let wake = match (rule.throttle, path) {
            (None, Ok(Some(t))) => t,
            (None, Ok(None)) => return Ok(()),
            (None, Err(())) => {
                if b.suspended && (b.resume_at == 0 || b.resume_at >= until) {
                    return Ok(());
                }
                (b.suspended, b.resume_at, b.suspend_secs) = (true, until, rule.secs);
                b.suspended_by = Some(rule.pattern.clone());
                until
            }
            (Some((window, rate)), _) => {
                let same = b
                    .throttle
                    .as_ref()
                    .is_some_and(|t| t.until >= until && t.window == window && t.rate == rate);
                if same {
                    return Ok(());
                }
                b.throttle_by(window, rate, rule.secs, &rule.pattern, now)
            }
        };
        if let Err(e) = self.persist_settings(ss, bl) {
            before.restore(&mut ss.buckets[bl as usize]);
            return Err(e);
        }
        ss.wakeups.push(std::cmp::Reverse((wake, bl)));
        Ok(())
    }

    /// The reply-driven rules in force.
    pub(crate) fn reply_rules(&self) -> Vec<ReplyRule> {
        self.rules.read().specs().to_vec()
    }

    /// Replaces the reply-driven rules (checked first: a bad one changes nothing).
    pub(crate) fn set_reply_rules(&self, rules: &[ReplyRule]) -> Result<()> {
        let compiled = super::rules::Rules::compile(rules)?;
        *self.rules.write() = std::sync::Arc::new(compiled);
        Ok(())
    }

    /// Appends one rule (read, compile and replace under the write lock, so
    /// two callers adding at once both get theirs in).
    pub(crate) fn add_reply_rule(&self, rule: ReplyRule) -> Result<()> {
        let mut w = self.rules.write();
        let mut specs = w.specs().to_vec();
        specs.push(rule);
        *w = std::sync::Arc::new(super::rules::Rules::compile(&specs)?);
        Ok(())
    }

    /// Re-routes every waiting recipient of `from` to `to`; durable on return.
    pub(crate) fn reroute(&self, from: &str, to: &str) -> Result<usize> {
        let _g = self.gate.read_recursive();
        let Some(fb) = self.find_bucket(from)? else {
            return Ok(0);
        };
        let tb = self.bucket_id(&crate::validate::normalize_key(to)?)?;
        if tb == fb {
            return Ok(0); // a destination onto itself: nothing moves
        }
        let targets = self.collect(&|r| r.bucket() == fb);
        let n = self.each_target(targets, |id, i| self.reroute_rcpt(id, i, tb))?;
        self.log.sync_all()?;
        Ok(n)
    }

    /// Re-routes one recipient; durable on return.
    pub(crate) fn reroute_recipient(&self, id: MessageId, index: u32, to: &str) -> Result<bool> {
        let _g = self.gate.read_recursive();
        let tb = self.bucket_id(&crate::validate::normalize_key(to)?)?;
        let changed = self.reroute_rcpt(id, index, tb)?;
        self.log.sync_all()?;
        Ok(changed)
    }

    /// The recipient id and current bucket of recipient `idx` of live message `id`.
    fn find_rcpt(&self, id: MessageId, idx: u32) -> Result<(u32, u32)> {
        let slot = id.slot();
        let ms = self.msgs[shard_of(slot)].lock();
        if ms.get(local_of(slot), id.gen()).is_none() {
            return Err(Error::NoSuchMessage(id));
        }
        let rid = ms
            .rcpt_index(local_of(slot), idx)
            .ok_or(Error::NoSuchRecipient(id, idx))?;
        Ok((rid, ms.rcpts[rid as usize].bucket()))
    }

    /// Runs `plan` on one recipient of a live message under the right locks, appends the
    /// record and applies the change. `plan` returns None to leave the recipient alone.
    pub(super) fn change_rcpt(
        &self,
        id: MessageId,
        idx: u32,
        plan: &dyn Fn(&Rcpt) -> Option<Change>,
    ) -> Result<bool> {
        self.decide_rcpt(id, idx, plan, false)
    }

    /// [`Engine::change_rcpt`], or with `dry` only whether it would change
    /// anything (an in-flight recipient by its hold intent).
    fn decide_rcpt(
        &self,
        id: MessageId,
        idx: u32,
        plan: &dyn Fn(&Rcpt) -> Option<Change>,
        dry: bool,
    ) -> Result<bool> {
        let _g = self.gate.read_recursive();
        let (mshard, local) = (shard_of(id.slot()), local_of(id.slot()));
        loop {
            let (rid, bucket) = self.find_rcpt(id, idx)?;
            let mut ss = self.sched[shard_of(bucket)].lock();
            let mut ms = self.msgs[mshard].lock();
            if ms.get(local, id.gen()).is_none() {
                return Err(Error::NoSuchMessage(id));
            }
            let r = ms.rcpts[rid as usize];
            if r.bucket() != bucket {
                continue; // re-routed meanwhile; retry with the new bucket's lock
            }
            if r.flags() & F_MOVING != 0 {
                drop(ms);
                drop(ss);
                self.apply_moves(); // let it join its bucket first, then decide
                continue;
            }
            let Some(ch) = plan(&r) else {
                return Ok(false);
            };
            if let Some(hold) = ch.inflight_hold {
                if dry {
                    return Ok(intent_of(&ms, rid).hold != hold);
                }
                return self.set_inflight_hold(&mut ms, mshard, rid, &ch, hold);
            }
            if dry {
                return Ok(true);
            }
            if ch.persist {
                self.append_update(&ms, mshard, rid, &ch, "")?;
            }
            let rang = apply_change(&mut ss, &mut ms, mshard, rid, &ch, self.now());
            drop(ms);
            drop(ss);
            self.wake_if(rang);
            return Ok(true);
        }
    }

    /// Whether `plan` would change recipient `idx` of `id` now: the dry run of
    /// [`Engine::change_rcpt`] — the same code deciding, nothing written.
    pub(super) fn would_change(
        &self,
        id: MessageId,
        idx: u32,
        plan: &dyn Fn(&Rcpt) -> Option<Change>,
    ) -> Result<bool> {
        self.decide_rcpt(id, idx, plan, true)
    }

    /// Whether re-routing recipient `idx` of `id` to bucket `to` (`None`: a
    /// routing key without a bucket yet) would change it now: the dry run of
    /// [`Engine::reroute_rcpt`].
    pub(super) fn would_reroute(&self, id: MessageId, idx: u32, to: Option<u32>) -> Result<bool> {
        let (mshard, local) = (shard_of(id.slot()), local_of(id.slot()));
        let (rid, from) = self.find_rcpt(id, idx)?;
        let ms = self.msgs[mshard].lock();
        if ms.get(local, id.gen()).is_none() {
            return Err(Error::NoSuchMessage(id));
        }
        let st = ms.rcpts[rid as usize].state();
        let it = intent_of(&ms, rid);
        Ok(match st {
            RcptState::Leased if Some(from) == to => it.route.is_some(),
            RcptState::Leased => to.is_none() || it.route != to,
            RcptState::Ready | RcptState::Deferred | RcptState::Held => Some(from) != to,
            _ => false,
        })
    }

    /// Appends (without waiting for durability) the update record of one change.
    fn append_update(
        &self,
        ms: &MsgShard,
        mshard: usize,
        rid: u32,
        ch: &Change,
        route: &str,
    ) -> Result<()> {
        let mut b = Batch::new();
        push_update(&mut b, ms, mshard, rid, ch, route);
        self.log.append(b).map(|_| ())
    }

    /// In flight: persists the hold decision now; it applies when the attempt ends.
    fn set_inflight_hold(
        &self,
        ms: &mut MsgShard,
        mshard: usize,
        rid: u32,
        ch: &Change,
        hold: bool,
    ) -> Result<bool> {
        let cur = intent_of(ms, rid);
        if cur.hold == hold {
            return Ok(false);
        }
        self.append_update(ms, mshard, rid, ch, "")?;
        set_intent(ms, rid, Intent { hold, ..cur });
        Ok(true)
    }

    /// Moves one recipient to another bucket, persisting the new routing key.
    pub(super) fn reroute_rcpt(&self, id: MessageId, idx: u32, to: u32) -> Result<bool> {
        let _g = self.gate.read_recursive();
        let (mshard, local) = (shard_of(id.slot()), local_of(id.slot()));
        let to_key = self.key_of(to);
        loop {
            let (rid, from) = self.find_rcpt(id, idx)?;
            if from == to {
                return self.clear_inflight_route(mshard, local, id, rid, to, &to_key);
            }
            let (mut g1, mut g2) = lock_pair(self, from, to);
            let mut ms = self.msgs[mshard].lock();
            if ms.get(local, id.gen()).is_none() {
                return Err(Error::NoSuchMessage(id));
            }
            let r = ms.rcpts[rid as usize];
            if r.bucket() != from {
                continue;
            }
            if r.flags() & F_MOVING != 0 {
                drop(ms);
                drop(g2);
                drop(g1);
                self.apply_moves();
                continue;
            }
            let st = r.state();
            if st == RcptState::Leased {
                // In flight: the new route is persisted now (a crash re-queues it
                // there) and taken when the attempt ends, whatever its outcome.
                return self.set_inflight_route(&mut ms, mshard, rid, Some(to), &to_key);
            }
            if !matches!(st, RcptState::Ready | RcptState::Deferred | RcptState::Held) {
                return Ok(false); // pending DSN, corrupt or final: leave it
            }
            self.append_update(&ms, mshard, rid, &Change::persist(&r, st, r.next), &to_key)?;
            // Leave the old bucket …
            g1.buckets[local_of(from) as usize].shift(st, RcptState::Delivered);
            ms.rcpts[rid as usize].set_bucket(to);
            // … and join the new one.
            let dst: &mut SchedShard = match g2.as_mut() {
                Some(g) => g,
                None => &mut g1,
            };
            let rang = join_bucket(dst, RcptRef::new(mshard, rid), &r, to, self.now());
            drop(ms);
            drop(g2);
            drop(g1);
            self.wake_if(rang);
            return Ok(true);
        }
    }

    /// Re-route to the bucket a recipient is in: for an in-flight recipient with
    /// a pending re-route, that cancels it (durably); otherwise nothing to do.
    fn clear_inflight_route(
        &self,
        mshard: usize,
        local: u32,
        id: MessageId,
        rid: u32,
        to: u32,
        to_key: &str,
    ) -> Result<bool> {
        let mut ms = self.msgs[mshard].lock();
        if ms.get(local, id.gen()).is_none() {
            return Err(Error::NoSuchMessage(id));
        }
        let r = ms.rcpts[rid as usize];
        let it = intent_of(&ms, rid);
        if r.state() != RcptState::Leased || r.bucket() != to || it.route.is_none() {
            return Ok(false);
        }
        self.set_inflight_route(&mut ms, mshard, rid, None, to_key)
    }

    /// Persists and remembers the route an in-flight recipient takes when its
    /// attempt ends (`None`: the one it has). The record says what a crash should
    /// find: held or ready, on that route.
    fn set_inflight_route(
        &self,
        ms: &mut MsgShard,
        mshard: usize,
        rid: u32,
        route: Option<u32>,
        key: &str,
    ) -> Result<bool> {
        let r = ms.rcpts[rid as usize];
        let it = intent_of(ms, rid);
        if it.route == route {
            return Ok(false);
        }
        let st = if it.hold {
            RcptState::Held
        } else {
            RcptState::Ready
        };
        self.append_update(ms, mshard, rid, &Change::persist(&r, st, r.next), key)?;
        set_intent(ms, rid, Intent { route, ..it });
        Ok(true)
    }

    /// (message id, recipient index) of every live recipient matching `f`.
    pub(super) fn collect(&self, f: &dyn Fn(&Rcpt) -> bool) -> Vec<(MessageId, u32)> {
        let mut out = Vec::new();
        for (s, shard) in self.msgs.iter().enumerate() {
            let ms = shard.lock();
            for (l, m) in ms.msgs.iter().enumerate() {
                if m.gen == 0 {
                    continue;
                }
                for i in 0..m.n as u32 {
                    let r = &ms.rcpts[(m.first + i) as usize];
                    let st = r.state();
                    if !st.is_final() && st != RcptState::New && f(r) {
                        out.push((MessageId::new(m.gen, global(s, l as u32)), i));
                    }
                }
            }
        }
        out
    }

    /// Frees buckets that are empty, idle and carry no operator state, and trims
    /// the id space. Runs under the exclusive gate (during a checkpoint): every
    /// path that turns a key into an id and uses it later holds the gate shared.
    pub(super) fn gc_buckets(&self) -> usize {
        let mut keys = self.keys.write();
        let mut ss: Vec<_> = self.sched.iter().map(|s| s.lock()).collect();
        // Checked with every scheduler lock held, so no move can be queued now:
        // a moving recipient is not yet counted in its (possibly idle) bucket.
        if !self.moves.lock().is_empty() {
            return 0;
        }
        let pinned = self.pinned_buckets();
        let default = self.opts.concurrency;
        let mut freed = 0;
        for (s, sh) in ss.iter_mut().enumerate() {
            for l in 0..sh.buckets.len() {
                let id = global(s, l as u32);
                let b = &mut sh.buckets[l];
                if b.key.is_empty() {
                    continue;
                }
                if b.idle(default) && !pinned.contains(&id) {
                    keys.free(id);
                    *b = Bucket::new("".into(), default);
                    freed += 1;
                } else {
                    b.shrink_ready();
                }
            }
        }
        if freed == 0 {
            return 0;
        }
        let n = keys.trim();
        for (s, sh) in ss.iter_mut().enumerate() {
            let keep = if n > s { (n - s).div_ceil(SHARDS) } else { 0 };
            sh.truncate_buckets(keep);
        }
        freed
    }

    /// Buckets named by a pending in-flight re-route (never freed).
    fn pinned_buckets(&self) -> std::collections::HashSet<u32> {
        let mut pinned = std::collections::HashSet::new();
        for ms in &self.msgs {
            for it in ms.lock().intents.values() {
                pinned.extend(it.route);
            }
        }
        pinned
    }

    /// Hands out up to `max` failed or expired recipients for DSN generation.
    pub(crate) fn take_bounces(&self, max: usize) -> Result<Vec<Bounce>> {
        let mut out = Vec::new();
        for t in self.take_bounce_refs(max) {
            // One unreadable message must not cost the others their DSN: report it and
            // go on (it is offered again after a restart). A message moved by
            // compaction meanwhile is read again from where it lives now.
            match self.bounce_envelope(&t) {
                Ok((sender, recipient)) => out.push(Bounce {
                    id: t.id,
                    index: t.index,
                    sender,
                    recipient,
                    reason: t.reason,
                    expired: t.expired,
                    delayed: t.delayed,
                }),
                Err(why) => self.report.lock().note_corrupt_message(t.id, &why),
            }
        }
        Ok(out)
    }

    /// Marks up to `max` pending bounces as taken and returns them.
    fn take_bounce_refs(&self, max: usize) -> Vec<BounceRef> {
        let mut refs = Vec::new();
        for (s, shard) in self.msgs.iter().enumerate() {
            let mut ms = shard.lock();
            while refs.len() < max {
                let Some(rr) = ms.bounces.pop_front() else {
                    break;
                };
                let rid = rr.local();
                let Some(r) = ms.rcpts.get(rid as usize).copied() else {
                    continue;
                };
                let st = r.state();
                let bounce = matches!(st, RcptState::Failed | RcptState::Expired);
                if r.flags() & F_BOUNCE_TAKEN != 0 || !(bounce || warning_due(&r)) {
                    continue;
                }
                ms.rcpts[rid as usize].set_flags(r.flags() | F_BOUNCE_TAKEN);
                let m = ms.msgs[r.msg as usize];
                let reason = match ms.reason(r.reason()) {
                    "" if !bounce => "not attempted yet".to_string(),
                    t => t.to_string(),
                };
                refs.push(BounceRef {
                    id: MessageId::new(m.gen, global(s, r.msg)),
                    index: rid - m.first,
                    reason,
                    expired: st == RcptState::Expired,
                    delayed: !bounce,
                    loc: (m.seg, m.off, m.len),
                });
            }
        }
        refs
    }

    /// (sender, recipient address) of a bounce, read from its message record.
    fn bounce_envelope(&self, t: &BounceRef) -> std::result::Result<(String, String), String> {
        let rec = self
            .read_message_record(t.id, t.loc)
            .map_err(|e| e.to_string())?;
        let m = record::decode_message(&rec).ok_or("message record does not decode")?;
        let recipient = m
            .rcpts
            .get(t.index as usize)
            .map(|r| r.0.to_string())
            .unwrap_or_default();
        Ok((m.sender.to_string(), recipient))
    }

    /// Acknowledges a bounce: the recipient becomes final.
    pub(crate) fn ack_bounce(&self, id: MessageId, index: u32) -> Result<bool> {
        let changed = self.change_rcpt(id, index, &|r| {
            matches!(r.state(), RcptState::Failed | RcptState::Expired)
                .then(|| Change::persist(r, RcptState::Bounced, 0))
        })?;
        if changed {
            bump(&self.counters.bounced, 1);
        }
        self.sync_if_due()?;
        Ok(changed)
    }

    /// Acknowledges a delay warning; durable on return (a restart does not
    /// warn again). A recipient that failed or expired meanwhile is left to
    /// its bounce (false).
    pub(crate) fn ack_delay_warning(&self, id: MessageId, index: u32) -> Result<bool> {
        let acked = self.ack_warning(id, index)?;
        if acked {
            bump(&self.counters.delay_warnings, 1);
            self.log.sync_all()?;
        }
        Ok(acked)
    }

    /// Marks the delay warning of a recipient still queued as sent: an update
    /// record with the same state (in flight: the state a crash should find,
    /// as the operator decided) carries the flag.
    fn ack_warning(&self, id: MessageId, index: u32) -> Result<bool> {
        let _g = self.gate.read_recursive();
        let (rid, _) = self.find_rcpt(id, index)?;
        let mshard = shard_of(id.slot());
        let mut ms = self.msgs[mshard].lock();
        if ms.get(local_of(id.slot()), id.gen()).is_none() {
            return Err(Error::NoSuchMessage(id));
        }
        let r = ms.rcpts[rid as usize];
        if !warning_due(&r) {
            return Ok(false);
        }
        ms.rcpts[rid as usize]
            .set_flags((r.flags() | F_WARNED) & !(F_WARN_QUEUED | F_BOUNCE_TAKEN));
        let (state, _) = super::maint::persisted(&ms, rid, &r);
        let ch = Change::persist(&r, state, r.next);
        self.append_update(&ms, mshard, rid, &ch, "")?;
        Ok(true)
    }
}

/// Whether a recipient is queued and not final: ready, deferred, held or in
/// flight.
fn waits(st: RcptState) -> bool {
    matches!(
        st,
        RcptState::Ready | RcptState::Deferred | RcptState::Held | RcptState::Leased
    )
}

/// A delay warning is queued for this recipient, not handed out, and it is
/// still waiting.
fn warning_due(r: &Rcpt) -> bool {
    r.flags() & F_WARN_QUEUED != 0 && r.flags() & F_WARNED == 0 && waits(r.state())
}

/// The operator settings of a bucket, to restore when their record could not
/// be written.
struct Saved {
    suspended: bool,
    resume_at: u32,
    suspend_secs: u32,
    suspended_by: Option<Box<str>>,
    policy: Concurrency,
    window: u16,
    rate: Option<Box<crate::sched::Rate>>,
    throttle: Option<Box<crate::sched::Throttle>>,
    path_limit: u16,
    path_rate: RateLimit,
    path_susp: Vec<crate::sched::PathSusp>,
}

impl Saved {
    fn of(b: &Bucket) -> Saved {
        Saved {
            suspended: b.suspended,
            resume_at: b.resume_at,
            suspend_secs: b.suspend_secs,
            suspended_by: b.suspended_by.clone(),
            policy: b.policy,
            window: b.window,
            rate: b.rate.clone(),
            throttle: b.throttle.clone(),
            path_limit: b.path_limit,
            path_rate: b.path_rate,
            path_susp: b.path_susp.clone(),
        }
    }

    fn restore(self, b: &mut Bucket) {
        b.suspended = self.suspended;
        b.resume_at = self.resume_at;
        b.suspend_secs = self.suspend_secs;
        b.suspended_by = self.suspended_by;
        b.policy = self.policy;
        b.window = self.window;
        b.rate = self.rate;
        b.throttle = self.throttle;
        b.set_path_limits(self.path_limit, self.path_rate);
        b.path_susp = self.path_susp;
    }
}

/// A bounce taken from the index, before its envelope is read.
struct BounceRef {
    id: MessageId,
    index: u32,
    reason: String,
    expired: bool,
    delayed: bool,
    loc: (u32, u32, u32),
}

/// Records an in-flight decision (removed when it is the default).
fn set_intent(ms: &mut MsgShard, rid: u32, it: Intent) {
    if it == Intent::default() {
        ms.intents.remove(&rid);
    } else {
        ms.intents.insert(rid, it);
    }
}

/// Puts a waiting recipient into bucket `to`'s counters and queues. Returns true
/// when the bucket entered the ready ring.
fn join_bucket(dst: &mut SchedShard, rr: RcptRef, r: &Rcpt, to: u32, now: u32) -> bool {
    let st = r.state();
    dst.buckets[local_of(to) as usize].shift(RcptState::Delivered, st);
    match st {
        RcptState::Ready => {
            dst.buckets[local_of(to) as usize].push_ready(rr);
            dst.maybe_ring(local_of(to), now)
        }
        RcptState::Deferred => {
            dst.wheel.insert(r.next, rr);
            false
        }
        _ => false,
    }
}
