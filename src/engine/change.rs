//! State changes of one recipient: a [`Change`] is planned under the locks,
//! its update record appended ([`push_update`]), then applied to the index and
//! the bucket ([`apply_change`]). Ending an attempt applies the operator's
//! in-flight decisions too ([`Engine::end_attempt`]); a re-routed recipient
//! joins its new bucket later ([`Engine::apply_moves`], lock order).
//! Depends on `index`, `sched`, `storage`, `types`, the rest of `engine`.

use super::Engine;
use crate::index::*;
use crate::sched::SchedShard;
use crate::storage::log::Batch;
use crate::storage::record::{self, Kind, UpdateRecord};
use crate::types::*;
use std::sync::atomic::Ordering;

/// A state change of one recipient, planned before its record is appended.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub state: RcptState,
    pub attempts: u16,
    pub next: u32,
    pub reason: Option<String>,
    /// Write a record (false for memory-only transitions such as leasing).
    pub persist: bool,
    /// For an in-flight recipient: leave it in flight, persist `state`, and set
    /// (true) or clear (false) the hold that applies when its attempt ends.
    pub inflight_hold: Option<bool>,
}

impl Change {
    /// A change to `state` keeping attempts and next-attempt time.
    pub(crate) fn to(r: &Rcpt, state: RcptState, next: u32, persist: bool) -> Change {
        Change {
            state,
            attempts: r.attempts(),
            next,
            reason: None,
            persist,
            inflight_hold: None,
        }
    }

    /// A persisted operator change to `state` at `next`.
    pub(crate) fn persist(r: &Rcpt, state: RcptState, next: u32) -> Change {
        Change::to(r, state, next, true)
    }

    /// Back to the ready queue in memory only (an attempt that ended without an
    /// outcome, a due timer): nothing on disk changes.
    pub(crate) fn requeue(r: &Rcpt) -> Change {
        Change::to(r, RcptState::Ready, r.next, false)
    }

    /// The outcome of an attempt: `state` after one more attempt.
    pub(crate) fn outcome(r: &Rcpt, state: RcptState, next: u32, reason: Option<String>) -> Change {
        Change {
            attempts: r.attempts().saturating_add(1),
            reason,
            ..Change::persist(r, state, next)
        }
    }

    /// For an in-flight recipient: persist `state` now and set or clear the
    /// hold that applies when the attempt ends.
    pub(crate) fn inflight(r: &Rcpt, state: RcptState, hold: bool) -> Change {
        Change {
            inflight_hold: Some(hold),
            ..Change::persist(r, state, r.next)
        }
    }
}

/// A recipient whose attempt ended while the operator had re-routed it: its new
/// state and bucket are already in the index (flag `F_MOVING`), and it joins the
/// new bucket's queues and counters once the caller has released its scheduler
/// lock (lock order).
#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub mshard: usize,
    pub rid: u32,
    pub local: u32,
    pub gen: u32,
    pub to: u32,
}

/// Applies the operator's in-flight decisions to the change that ends an
/// attempt. Returns the bucket to move to, if re-routed.
pub(crate) fn resolve_intent(ch: &mut Change, it: &Intent, bucket: u32) -> Option<u32> {
    if it.hold && matches!(ch.state, RcptState::Ready | RcptState::Deferred) {
        ch.state = RcptState::Held;
    }
    match it.route {
        Some(to) if to != bucket && !ch.state.is_final() => Some(to),
        _ => None,
    }
}

/// Applies a planned change to memory (the record, if any, is already appended).
/// Returns true when the bucket entered the ready ring.
pub(crate) fn apply_change(
    ss: &mut SchedShard,
    ms: &mut MsgShard,
    mshard: usize,
    rid: u32,
    ch: &Change,
    now: u32,
) -> bool {
    let r = ms.rcpts[rid as usize];
    let bl = local_of(r.bucket());
    ss.buckets[bl as usize].shift(r.state(), ch.state);
    set_fields(ms, rid, ch);
    let rr = RcptRef::new(mshard, rid);
    match ch.state {
        RcptState::Ready => {
            ss.buckets[bl as usize].push_ready(rr);
            // Also signal when the bucket already sits in the ring: it may have
            // been put there while it had nothing ready (and its wake-up acked).
            return ss.maybe_ring(bl, now) || ss.buckets[bl as usize].in_ring;
        }
        RcptState::Deferred => ss.wheel.insert(ch.next, rr),
        RcptState::Failed | RcptState::Expired => {
            let r = &mut ms.rcpts[rid as usize];
            r.set_flags(r.flags() & !F_BOUNCE_TAKEN);
            ms.bounces.push_back(rr);
        }
        s if s.is_final() => {
            // (Hashing the key costs more than the check: most have none.)
            if !ms.intents.is_empty() {
                ms.intents.remove(&rid);
            }
            ms.finish_rcpt(rid);
        }
        _ => {}
    }
    false
}

/// Writes a change's state, attempts, next time and reason into the index.
fn set_fields(ms: &mut MsgShard, rid: u32, ch: &Change) {
    let r = &mut ms.rcpts[rid as usize];
    r.set_state(ch.state);
    r.set_attempts(ch.attempts);
    r.next = ch.next;
    if let Some(t) = &ch.reason {
        ms.set_reason_text(rid, t);
    }
}

/// Appends the update record for a planned change of recipient `rid`.
pub(crate) fn push_update(
    batch: &mut Batch,
    ms: &MsgShard,
    mshard: usize,
    rid: u32,
    ch: &Change,
    route: &str,
) {
    let r = ms.rcpts[rid as usize];
    let m = ms.msgs[r.msg as usize];
    let id = MessageId::new(m.gen, global(mshard, r.msg));
    // No new reason: an empty text means "unchanged" on replay. The in-memory
    // text may be a normalised or not-kept form and must never overwrite the
    // exact reply already on disk.
    let reason = ch.reason.as_deref().unwrap_or("");
    let u = UpdateRecord {
        id: id.0,
        idx: rid - m.first,
        state: ch.state.persisted() as u8,
        flags: if r.flags() & F_WARNED != 0 {
            record::UPDATE_WARNED
        } else {
            0
        },
        attempts: ch.attempts,
        next: ch.next,
        reason,
        route,
    };
    batch.push(Kind::RcptUpdate, |p| record::encode_update(p, &u));
}

impl Engine {
    /// Ends the attempt of in-flight recipient `rid` with `ch`, after applying the
    /// operator's in-flight decisions (hold, re-route). A re-routed recipient is
    /// detached here and queued as a [`Move`] (see [`Engine::apply_moves`]).
    /// Returns true when its bucket entered the ready ring.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn end_attempt(
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
        let it = match ms.intents.is_empty() {
            true => Default::default(),
            false => ms.intents.remove(&rid).unwrap_or_default(),
        };
        let Some(to) = resolve_intent(&mut ch, &it, r.bucket()) else {
            return apply_change(ss, ms, msh, rid, &ch, now);
        };
        // Leave the old bucket now and write the outcome and the new bucket into
        // the index at once (that is what the log says and what a checkpoint must
        // write); only joining the new bucket's queues waits for `apply_moves`.
        ss.buckets[local_of(r.bucket()) as usize].shift(RcptState::Leased, RcptState::Delivered);
        set_fields(ms, rid, &ch);
        let rc = &mut ms.rcpts[rid as usize];
        rc.set_bucket(to);
        rc.set_flags(rc.flags() | F_MOVING);
        self.moves.lock().push(Move {
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
    pub(super) fn apply_moves(&self) {
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
            let join = Change::to(&r, st, r.next, false);
            rang |= apply_change(&mut ss, &mut ms, mv.mshard, mv.rid, &join, self.now());
        }
        self.wake_if(rang);
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::outcome_change;
    use super::*;
    use crate::testing::simfs::SimFs;
    use crate::{ManualClock, NewMessage, Options, Outcome, Queue};

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
        let old = q.engine.bucket_id("old.example").unwrap();
        let to = (0..64)
            .map(|i| format!("new{i}.example"))
            .find(|k| shard_of(q.engine.bucket_id(k).unwrap()) != shard_of(old))
            .unwrap();
        let mut s = q.session_for("old.example").unwrap().unwrap();
        let d = s.next_delivery().unwrap().unwrap();
        assert_eq!(q.reroute("old.example", &to).unwrap(), 1);
        // End the attempt the way `finish` does, but stop before `apply_moves`.
        {
            let inner = &q.engine;
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
        assert!(!q.engine.moves.lock().is_empty(), "the move is pending");
        q.checkpoint().unwrap();
        drop(d); // its slot no longer lists the recipient: nothing to return
        drop(s);
        q.engine.apply_moves();
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
