//! Deliveries: leasing one message and up to N of its recipients for a
//! session's destination, reading and checking its record, and applying the
//! per-recipient outcomes (one update record each, group-committed). A
//! delivery dropped without an outcome returns its recipients.
//! Depends on `error`, `index`, `sched`, `storage`, `types`, the rest of `engine`.

use super::change::{push_update, resolve_intent, Change};
use super::leases::Lease;
use super::rules::Verdict;
use super::{bump, policy, Engine};
use crate::error::{Error, Result};
use crate::index::*;
use crate::sched::SchedShard;
use crate::storage::log::{segment_name, Batch};
use crate::storage::record::{self, Kind};
use crate::storage::vfs::VFile;
use crate::types::*;
use std::sync::Arc;

/// A delivery in progress, owned by whoever holds it (a [`crate::Delivery`], or a
/// C handle). Dropping it without an outcome returns its recipients.
pub(crate) struct DeliveryCore {
    q: Arc<Engine>,
    bucket: u32,
    token: u32,
    mshard: usize,
    rids: Vec<u32>,
    data: DeliveryData,
    /// Absolute file offset of the body in its segment…
    body_at: u64,
    /// … and that segment.
    seg: u32,
    /// The segment file, held open for the delivery's lifetime (compaction may
    /// unlink it meanwhile; the open file stays valid).
    file: Option<Arc<dyn VFile>>,
    done: bool,
}

impl std::ops::Deref for DeliveryCore {
    type Target = DeliveryData;
    fn deref(&self) -> &DeliveryData {
        &self.data
    }
}

/// Recipients leased from the ready queue, before the record is read.
struct Taken {
    mshard: usize,
    local: u32,
    gen: u32,
    rids: Vec<u32>,
    /// Previous attempts of each of `rids`.
    attempts: Vec<u16>,
    first: u32,
    /// (segment, offset, record length) of the message record.
    loc: (u32, u32, u32),
}

impl Taken {
    fn id(&self) -> MessageId {
        MessageId::new(self.gen, global(self.mshard, self.local))
    }
}

/// A message record as a delivery needs it.
struct Read {
    sender: String,
    meta: bytes::Bytes,
    body: bytes::Bytes,
    received: u64,
    addrs: Vec<String>,
    /// Offset of the body from the start of the record.
    body_off: usize,
}

impl Lease {
    /// Takes the next delivery (see [`crate::Session::next_delivery`]).
    pub(crate) fn next_delivery(&mut self) -> Result<Option<DeliveryCore>> {
        let q = self.q.clone();
        if self.closed || self.deliveries >= q.opts.deliveries_per_session {
            return Ok(None);
        }
        q.check_poison()?;
        loop {
            let Some(t) = self.take()? else {
                return Ok(None);
            };
            let indices: Vec<u32> = t.rids.iter().map(|r| r - t.first).collect();
            let rec = self.ahead.read(&q.log, t.loc);
            match rec.and_then(|rec| read_delivery(&q, t.id(), t.loc, &indices, rec)) {
                Ok(rd) => {
                    if let Some(d) = self.deliver(t, indices, rd) {
                        self.deliveries += 1;
                        return Ok(Some(d));
                    }
                }
                Err(e) => self.unreadable(&t, e)?,
            }
        }
    }

    /// Renews the lease and leases recipients of the next ready message.
    /// `None` when the destination has nothing ready.
    fn take(&mut self) -> Result<Option<Taken>> {
        let q = self.q.clone();
        let (s, bl) = (shard_of(self.bucket), local_of(self.bucket));
        loop {
            let now = q.now();
            let mut ss = q.sched[s].lock();
            let Some(si) = ss.buckets[bl as usize].slot(self.token) else {
                self.closed = true;
                return Err(Error::LeaseExpired);
            };
            ss.buckets[bl as usize].slots[si].deadline =
                now.saturating_add(policy::lease_ttl(&q.opts));
            if !ss.buckets[bl as usize].slots[si].leased.is_empty() {
                // The previous delivery never ended (leaked with `mem::forget`): its
                // recipients go back now instead of staying in flight for ever.
                let rang = q.return_slot_leased(&mut ss, bl, si, None, now);
                q.wake_if(rang);
                drop(ss);
                q.apply_moves();
                continue;
            }
            // Suspended (by the operator or a reply rule) or out of rate: no
            // delivery now; the session ends, and the bucket wakes up when the
            // suspension ends or the limits allow the next message.
            // Over a window a reply rule lowered: this session ends.
            let b = &ss.buckets[bl as usize];
            let over = b.throttle.is_some() && b.slots.len() > b.window as usize;
            // (A fleet wait only keeps new sessions from opening: an open one
            // asks the fleet for each message itself, just below.)
            // (An open session looks at its own path only: that the others
            // are full or used up keeps new sessions out, not this one.)
            if b.suspended || over || b.own_rate_wait(now).is_some() {
                return Ok(None);
            }
            // Through an egress source: its path must still be in the pool,
            // able to send now (its rate, its source's warm-up day) and not
            // over a lowered per-source limit; else this session ends (a
            // new one takes another source).
            let path = match &self.source {
                None => None,
                Some(_) => match b.slot_path(si) {
                    Some(i) if b.path_time(i, now).is_none() && !b.slot_over_path_limit(si) => {
                        Some(i)
                    }
                    _ => return Ok(None),
                },
            };
            // The fleet's permit for one more message, asked with no lock held
            // (only when there is something to send).
            if let Some(f) = q.opts.fleet.as_ref().filter(|_| !self.permit) {
                if b.count(RcptState::Ready) == 0 {
                    return Ok(None);
                }
                drop(ss);
                match f.message(&self.fleet_key, self.fleet_session()) {
                    crate::fleet::Permit::Granted => self.permit = true,
                    crate::fleet::Permit::WaitUntil(ms) => {
                        q.fleet_wait(self.bucket, ms);
                        return Ok(None);
                    }
                    crate::fleet::Permit::LeaseLost => return Ok(None),
                }
                continue;
            }
            // The source's day share, taken before the message (its check
            // and count are one step: other shards share the source) and
            // given back if there is none.
            let source = path.map(|i| ss.buckets[bl as usize].paths[i].source.clone());
            if source.as_ref().is_some_and(|src| !src.try_take(now)) {
                return Ok(None);
            }
            let Some(t) = self.pop_ready(&mut ss, bl) else {
                if let Some(src) = &source {
                    src.untake();
                }
                // A fleet permit not used now is not kept for later (it would
                // be spent in another second than the one it was granted in).
                self.permit = false;
                // Drained: give back what a burst made the FIFO grow to.
                let ready = &mut ss.buckets[bl as usize].ready;
                if ready.capacity() > 64 {
                    ready.shrink_to_fit();
                }
                return Ok(None);
            };
            if let Some(r) = ss.buckets[bl as usize].rate.as_mut() {
                r.take(now as u64 * 1000);
            }
            if let Some(i) = path {
                ss.buckets[bl as usize].take_path(i, now);
            }
            // A warming source's count goes to the log with this attempt's
            // records (a failure leaves it to the session's end, which
            // reports it).
            if let Some(src) = source.filter(|s| s.warming()) {
                let _ = q.persist_source(&src);
            }
            self.permit = false;
            let slot = &mut ss.buckets[bl as usize].slots[si];
            slot.leased.clear();
            slot.leased
                .extend(t.rids.iter().map(|&r| RcptRef::new(t.mshard, r)));
            slot.leased_msg = t.id();
            // Alone on its destination, a session reads ahead on its own;
            // sessions sharing one pop the FIFO in turns, so each would read
            // ahead records the others deliver: they share the log's
            // read-ahead blocks instead (`Ahead::read`).
            if !self.ahead.has(t.loc) && ss.buckets[bl as usize].slots.len() == 1 {
                let left = q
                    .opts
                    .deliveries_per_session
                    .saturating_sub(self.deliveries + 1);
                self.ahead.peek(&q, &ss, bl, self.bucket, left);
            }
            return Ok(Some(t));
        }
    }

    /// Pops the ready FIFO until a recipient that is really ready here, and
    /// leases it with up to `batch_recipients` of its message's recipients for
    /// this destination.
    fn pop_ready(&self, ss: &mut SchedShard, bl: u32) -> Option<Taken> {
        let q = &self.q;
        let max = q.opts.batch_recipients.max(1);
        while let Some(rr) = ss.buckets[bl as usize].ready.pop_front() {
            let (msh, rid) = (rr.shard(), rr.local());
            let mut ms = q.msgs[msh].lock();
            let Some(r) = ms.rcpts.get(rid as usize).copied() else {
                continue;
            };
            if !r.ready_in(self.bucket) {
                continue;
            }
            let m = ms.msgs[r.msg as usize];
            let mut rids = Vec::with_capacity(max.min(m.n as usize));
            rids.push(rid);
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
            let mut attempts = Vec::with_capacity(rids.len());
            for &j in &rids {
                let rc = &mut ms.rcpts[j as usize];
                rc.set_state(RcptState::Leased);
                attempts.push(rc.attempts());
                ss.buckets[bl as usize].shift(RcptState::Ready, RcptState::Leased);
            }
            // The FIFO entries of the recipients leased with this one (pushed
            // together when the message was published) are stale now: dropped
            // here, under the lock held, rather than one lock each later.
            let ready = &mut ss.buckets[bl as usize].ready;
            while let Some(&next) = ready.front() {
                if next.shard() != msh || rids.binary_search(&next.local()).is_err() {
                    break;
                }
                ready.pop_front();
            }
            return Some(Taken {
                mshard: msh,
                local: r.msg,
                gen: m.gen,
                rids,
                attempts,
                first: m.first,
                loc: (m.seg, m.off, m.len),
            });
        }
        None
    }

    /// Builds the delivery from its record; `None` if the operator deleted the
    /// message meanwhile (nothing left to deliver).
    fn deliver(&mut self, t: Taken, indices: Vec<u32>, rd: Read) -> Option<DeliveryCore> {
        let q = self.q.clone();
        let id = t.id();
        let gone = q.msgs[t.mshard].lock().get(t.local, t.gen).is_none();
        if gone {
            let mut ss = q.sched[shard_of(self.bucket)].lock();
            let b = &mut ss.buckets[local_of(self.bucket) as usize];
            if let Some(i) = b.slot(self.token) {
                b.slots[i].leased.clear();
            }
            return None;
        }
        Some(DeliveryCore {
            bucket: self.bucket,
            token: self.token,
            mshard: t.mshard,
            rids: t.rids,
            data: DeliveryData {
                id,
                key: self.key.clone(),
                sender: rd.sender,
                addrs: rd.addrs,
                indices,
                attempts: t.attempts,
                meta: rd.meta,
                body: rd.body,
                received: rd.received,
            },
            body_at: t.loc.1 as u64 + rd.body_off as u64,
            seg: t.loc.0,
            file: q.log.segment_file(t.loc.0).ok(),
            q,
            done: false,
        })
    }

    /// The record of leased recipients could not be read. Damage where the
    /// message still lives marks them corrupt (and the loop goes on); a message
    /// relocated by compaction is leased again from its new place; otherwise
    /// they go back and the error is returned.
    fn unreadable(&mut self, t: &Taken, e: Error) -> Result<()> {
        let q = self.q.clone();
        let id = t.id();
        let now = q.now();
        let bl = local_of(self.bucket);
        let mut ss = q.sched[shard_of(self.bucket)].lock();
        let Some(si) = ss.buckets[bl as usize]
            .slot(self.token)
            .filter(|&i| ss.buckets[bl as usize].slots[i].leased_msg == id)
        else {
            // The lease was reclaimed meanwhile; those recipients are not ours.
            self.closed = true;
            return Err(Error::LeaseExpired);
        };
        ss.buckets[bl as usize].slots[si].leased.clear();
        let mut ms = q.msgs[t.mshard].lock();
        let loc = ms.get(t.local, t.gen).map(|m| (m.seg, m.off));
        // Damage only when the record is really bad where it still lives; a
        // message moved by compaction, or an I/O error, is not corruption.
        let corrupt = matches!(e, Error::Corrupt { .. }) && loc == Some((t.loc.0, t.loc.1));
        let mut rang = false;
        for &r in &t.rids {
            let rc = ms.rcpts[r as usize];
            if rc.state() != RcptState::Leased || rc.msg != t.local || loc.is_none() {
                continue;
            }
            if corrupt {
                ms.intents.remove(&r);
                ms.rcpts[r as usize].set_state(RcptState::Corrupt);
                ss.buckets[bl as usize].shift(RcptState::Leased, RcptState::Corrupt);
            } else {
                rang |= q.end_attempt(&mut ss, &mut ms, t.mshard, r, id, Change::requeue(&rc), now);
            }
        }
        drop(ms);
        drop(ss);
        q.apply_moves();
        q.wake_if(rang);
        if corrupt {
            q.report.lock().note_corrupt_message(id, &e.to_string());
            return Ok(());
        }
        if loc.is_some_and(|l| l != (t.loc.0, t.loc.1)) {
            return Ok(()); // relocated: lease it again from its new place
        }
        Err(e)
    }
}

/// Checks a message record read at (seg, off); returns the addresses of
/// recipients `want` only.
fn read_delivery(
    q: &Engine,
    id: MessageId,
    (seg, off, _): (u32, u32, u32),
    want: &[u32],
    (kind, payload): (Kind, bytes::Bytes),
) -> Result<Read> {
    let bad = |why: &str| Error::Corrupt {
        path: q.dir.join(segment_name(seg)),
        offset: off as u64,
        reason: why.to_string(),
    };
    if !matches!(kind, Kind::Message | Kind::MessageCopy) {
        return Err(bad("not a message record"));
    }
    let mut addrs = Vec::new();
    let rec = record::decode_envelope(&payload, want, &mut addrs)
        .ok_or_else(|| bad("message does not decode"))?;
    if rec.id != id.0 {
        return Err(bad("record belongs to another message"));
    }
    let body = payload.slice(rec.body_off..rec.body_off + rec.body_len);
    let meta_start = rec.meta.as_ptr() as usize - payload.as_ptr() as usize;
    let meta = payload.slice(meta_start..meta_start + rec.meta.len());
    Ok(Read {
        sender: rec.sender.to_string(),
        meta,
        body,
        received: rec.received,
        addrs,
        body_off: record::HEADER_LEN + rec.body_off,
    })
}

/// Index of the slot `token` in bucket `bl`, if that bucket is still the one the
/// session was opened on (a delivery handle that outlived its session, through
/// the C API, may refer to a bucket freed and reused since).
fn slot_index(ss: &SchedShard, bl: u32, key: &Arc<str>, token: u32) -> Option<usize> {
    let b = ss.buckets.get(bl as usize)?;
    if !Arc::ptr_eq(&b.key, key) {
        return None;
    }
    b.slot(token)
}

impl DeliveryCore {
    /// The open segment file holding the body and the body's absolute offset in it.
    pub(crate) fn body_file(&self) -> Result<(Arc<dyn VFile>, u64)> {
        match &self.file {
            Some(f) => Ok((f.clone(), self.body_at)),
            None => Err(Error::Io {
                op: "open segment",
                path: self.q.dir.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        }
    }

    /// [`DeliveryCore::body_file`] for a descriptor that goes to the
    /// caller and may outlive the delivery: the segment's file is then never
    /// reused once deleted.
    pub(crate) fn exported_body_file(&self) -> Result<(Arc<dyn VFile>, u64)> {
        self.q.log.export_segment(self.seg);
        self.body_file()
    }

    /// Records one outcome per recipient.
    pub(crate) fn complete(&mut self, outcomes: &[Outcome]) -> Result<()> {
        if outcomes.len() != self.rids.len() {
            return Err(Error::OutcomeCount {
                expected: self.rids.len(),
                got: outcomes.len(),
            });
        }
        self.finish(outcomes, false)
    }

    /// The connection failed during this delivery: every recipient is deferred.
    pub(crate) fn site_failure_outcomes(&mut self, reason: &str) -> Result<()> {
        let outs: Vec<Outcome> = self.rids.iter().map(|_| Outcome::temp(reason)).collect();
        self.finish(&outs, true)
    }

    /// The changes the outcomes make, for recipients still leased here (the
    /// operator may have deleted or changed others while in flight).
    fn plan(
        &self,
        ms: &MsgShard,
        outcomes: &[Outcome],
        verdict: &Verdict,
        now: u32,
    ) -> Vec<(u32, Change)> {
        let local = local_of(self.id.slot());
        let Some(m) = ms.get(local, self.id.gen()).copied() else {
            return Vec::new();
        };
        let mut plan = Vec::with_capacity(self.rids.len());
        for (k, &rid) in self.rids.iter().enumerate() {
            let r = ms.rcpts[rid as usize];
            if r.state() != RcptState::Leased || r.msg != local || r.bucket() != self.bucket {
                continue;
            }
            let mut ch = policy::outcome_change(&outcomes[k], &r, m.received, now, &self.q.opts);
            if verdict.permanent(k) && ch.state == RcptState::Deferred {
                // A reply rule takes this 4xx as final (past the lifetime it
                // expires all the same).
                ch.state = RcptState::Failed;
                ch.next = 0;
            }
            if let Some(it) = ms.intents.get(&rid) {
                // The record must say what the operator's decision makes of it.
                resolve_intent(&mut ch, it, r.bucket());
            }
            plan.push((rid, ch));
        }
        plan
    }

    fn finish(&mut self, outcomes: &[Outcome], site: bool) -> Result<()> {
        self.done = true;
        let q = self.q.clone();
        let now = q.now();
        let (s, bl) = (shard_of(self.bucket), local_of(self.bucket));
        let verdict = if outcomes.iter().all(|o| matches!(o, Outcome::Delivered)) {
            Verdict::none()
        } else {
            q.rules.read().clone().judge(outcomes, site)
        };
        let _g = q.gate.read();
        let mut ss = q.sched[s].lock();
        let Some(si) = slot_index(&ss, bl, &self.data.key, self.token) else {
            return Err(Error::LeaseExpired);
        };
        ss.buckets[bl as usize].slots[si].deadline = now.saturating_add(policy::lease_ttl(&q.opts));
        let mut ms = q.msgs[self.mshard].lock();
        let plan = self.plan(&ms, outcomes, &verdict, now);
        let mut batch = Batch::with_capacity(plan.len());
        for (rid, ch) in &plan {
            push_update(&mut batch, &ms, self.mshard, *rid, ch, "");
        }
        if let Err(e) = q.log.append(batch) {
            drop(ms);
            q.return_slot_leased(&mut ss, bl, si, Some(self.id), now);
            drop(ss);
            q.apply_moves();
            return Err(e);
        }
        let mut tally = Tally::default();
        let mut rang = false;
        for (rid, ch) in plan {
            tally.count(ch.state);
            rang |= q.end_attempt(&mut ss, &mut ms, self.mshard, rid, self.id, ch, now);
        }
        drop(ms);
        let b = &mut ss.buckets[bl as usize];
        b.slots[si].leased.clear();
        b.delivered += tally.delivered;
        b.deferrals += tally.deferred;
        b.failures += tally.failed + tally.expired;
        if !site {
            b.success();
            rang |= ss.maybe_ring(bl, now);
        }
        // The first failure reply a rule suspends the destination for.
        let ruled = match &verdict.act {
            Some(rule) => {
                let src = ss.buckets[bl as usize].slots[si].source.clone();
                q.act_by_rule(&mut ss, bl, rule, src.as_deref(), now)
            }
            None => Ok(()),
        };
        drop(ss);
        tally.add_to(&q.counters);
        drop(_g);
        q.apply_moves();
        q.wake_if(rang);
        ruled?;
        q.sync_if_due()
    }
}

/// Outcomes of one delivery, by kind.
#[derive(Default)]
struct Tally {
    delivered: u64,
    deferred: u64,
    failed: u64,
    expired: u64,
}

impl Tally {
    fn count(&mut self, st: RcptState) {
        match st {
            RcptState::Delivered => self.delivered += 1,
            RcptState::Deferred | RcptState::Held => self.deferred += 1,
            RcptState::Failed => self.failed += 1,
            RcptState::Expired => self.expired += 1,
            _ => {}
        }
    }

    fn add_to(&self, c: &super::Counters) {
        bump(&c.delivered, self.delivered);
        bump(&c.deferred, self.deferred);
        bump(&c.failed, self.failed);
        bump(&c.expired, self.expired);
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
        let Some(si) = slot_index(&ss, bl, &self.data.key, self.token) else {
            return;
        };
        let rang = q.return_slot_leased(&mut ss, bl, si, Some(self.id), now);
        drop(ss);
        q.apply_moves();
        q.wake_if(rang);
    }
}
