//! The queue: enqueue, state changes, operator actions, and the shared core
//! that sessions, checkpoints and recovery build on.
//!
//! Lock order (never taken in another order): `gate` (read) → `keys` →
//! sched shard(s) in index order → message shard → log. Operations that write
//! records hold `gate` for reading from the moment they append until their
//! change is applied in memory, so a checkpoint (which takes it for writing)
//! always sees memory and log agree at one position.

use crate::bucket::SchedShard;
use crate::error::{Error, Result};
use crate::index::*;
use crate::keys::Keys;
use crate::log::{pos_off, pos_seg, Batch, Log};
use crate::poll::Signal;
use crate::record::{self, Kind, UpdateRecord};
use crate::recovery::RecoveryReport;
use crate::types::*;
use crate::validate;
use parking_lot::{Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Recipient records per message shard (a recipient reference packs the index in 28 bits).
pub const MAX_RCPT_SLOTS: usize = 1 << 28;

/// Throughput counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) accepted_msgs: AtomicU64,
    pub(crate) accepted_rcpts: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) bounced: AtomicU64,
    pub(crate) deleted: AtomicU64,
    pub(crate) site_failures: AtomicU64,
    pub(crate) lease_reclaims: AtomicU64,
}

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

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub opts: Options,
    pub log: Log,
    pub gate: RwLock<()>,
    pub msgs: Vec<Mutex<MsgShard>>,
    pub sched: Vec<Mutex<SchedShard>>,
    pub keys: RwLock<Keys>,
    pub next_gen: AtomicU32,
    pub enq_cursor: AtomicUsize,
    pub ring_cursor: AtomicUsize,
    pub signal: Signal,
    pub counters: Counters,
    pub report: Mutex<RecoveryReport>,
    pub maint: Mutex<crate::checkpoint::Maint>,
    /// Re-routed recipients whose attempt ended, waiting to join their new bucket
    /// (a leaf lock; drained by [`Inner::apply_moves`] after other locks are released).
    pub moves: Mutex<Vec<Move>>,
    /// `moves` is not empty (checked without its lock on the hot path).
    pub has_moves: std::sync::atomic::AtomicBool,
    /// The outcome-sync deadline (clock ms) the poll fd's timer was armed for.
    pub sync_armed: AtomicU64,
    /// Highest local message slot enqueue may use (recovery's limit).
    pub slot_limit: AtomicU32,
    /// CRC salt of this queue's records.
    pub salt: u32,
    pub _lock: Box<dyn std::any::Any + Send + Sync>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: outcomes still buffered become durable when the last handle goes.
        let _ = self.log.sync_all();
    }
}

/// A durable mail queue. Cheap to clone; all clones share one queue.
///
/// ```
/// use mailq::{Queue, Options, NewMessage, Outcome};
/// let dir = std::env::temp_dir().join(format!("mailq-doc-{}", std::process::id()));
/// let q = Queue::open(&dir, Options::default()).unwrap();
/// let id = q.enqueue(&NewMessage {
///     sender: "alice@example.org",
///     recipients: vec!["bob@example.com".into()],
///     body: b"Subject: hi\r\n\r\nhello\r\n",
///     ..Default::default()
/// }).unwrap();
/// let mut session = q.next_session().unwrap().expect("work is ready");
/// assert_eq!(session.routing_key(), "example.com");
/// let delivery = session.next_delivery().unwrap().unwrap();
/// assert_eq!(delivery.id(), id);
/// assert_eq!(&delivery.body()[..], b"Subject: hi\r\n\r\nhello\r\n");
/// delivery.complete(&[Outcome::Delivered]).unwrap();
/// drop(session);
/// q.close().unwrap();
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone)]
pub struct Queue {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

pub(crate) fn now32(opts: &Options) -> u32 {
    opts.clock.now().min(u32::MAX as u64) as u32
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
    let old = r.state();
    let bl = local_of(r.bucket());
    ss.buckets[bl as usize].shift(old, ch.state);
    {
        let r = &mut ms.rcpts[rid as usize];
        r.set_state(ch.state);
        r.set_attempts(ch.attempts);
        r.next = ch.next;
    }
    if let Some(t) = &ch.reason {
        ms.set_reason_text(rid, t);
    }
    let rr = rref(mshard, rid);
    match ch.state {
        RcptState::Ready => {
            ss.buckets[bl as usize].push_ready(rr);
            // Also signal when the bucket already sits in the ring: it may have
            // been put there while it had nothing ready (and its wake-up acked).
            return ss.maybe_ring(bl, now) || ss.buckets[bl as usize].in_ring;
        }
        RcptState::Deferred => ss.wheel.insert(ch.next, rr),
        RcptState::Failed | RcptState::Expired => {
            {
                let r = &mut ms.rcpts[rid as usize];
                r.set_flags(r.flags() & !F_BOUNCE_TAKEN);
            }
            ms.bounces.push_back(rr);
        }
        s if s.is_final() => {
            ms.intents.remove(&rid);
            ms.finish_rcpt(rid);
        }
        _ => {}
    }
    false
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
        attempts: ch.attempts,
        next: ch.next,
        reason,
        route,
    };
    batch.push(Kind::RcptUpdate, |p| record::encode_update(p, &u));
}

impl Inner {
    pub(crate) fn now(&self) -> u32 {
        now32(&self.opts)
    }

    /// Interns a normalised routing key and returns its bucket id.
    pub(crate) fn bucket_id(&self, key: &str) -> Result<u32> {
        if let Some(id) = self.keys.read().get(key) {
            return Ok(id);
        }
        let mut keys = self.keys.write();
        if keys.get(key).is_none() && keys.live() >= MAX_BUCKETS as usize - 1 {
            return Err(Error::TooLarge {
                what: "routing key table (destinations with mail or operator state)",
                len: keys.live(),
                limit: MAX_BUCKETS as usize - 1,
            });
        }
        let policy = self.opts.concurrency;
        Ok(keys.intern(key, policy, |s, l, b| self.sched[s].lock().place(l, b)))
    }

    /// Frees buckets that are empty, idle and carry no operator state, and trims
    /// the id space. Runs under the exclusive gate (during a checkpoint): every
    /// path that turns a key into an id and uses it later holds the gate shared.
    pub(crate) fn gc_buckets(&self) -> usize {
        let mut keys = self.keys.write();
        let mut ss: Vec<_> = self.sched.iter().map(|s| s.lock()).collect();
        // Checked with every scheduler lock held, so no move can be queued now:
        // a moving recipient is not yet counted in its (possibly idle) bucket.
        if !self.moves.lock().is_empty() {
            return 0;
        }
        let mut pinned = std::collections::HashSet::new();
        for ms in &self.msgs {
            for it in ms.lock().intents.values() {
                pinned.extend(it.route);
            }
        }
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
                    *b = crate::bucket::Bucket::new("".into(), default);
                    freed += 1;
                } else if b.ready.capacity() > 64 && b.ready.len() < b.ready.capacity() / 4 {
                    let n = b.ready.len();
                    b.ready.shrink_to((n * 2).max(16));
                }
            }
        }
        if freed == 0 {
            return 0;
        }
        let n = keys.trim();
        for (s, sh) in ss.iter_mut().enumerate() {
            let keep = if n > s { (n - s).div_ceil(SHARDS) } else { 0 };
            sh.buckets.truncate(keep);
            if sh.buckets.capacity() > 2 * keep + 16 {
                sh.buckets.shrink_to_fit();
            }
            let sh = &mut **sh;
            let buckets = &sh.buckets;
            let live = |bl: u32| buckets.get(bl as usize).is_some_and(|b| !b.key.is_empty());
            sh.wakeups.retain(|r| live(r.0 .1));
            sh.leases.retain(|r| live(r.0 .1));
        }
        freed
    }

    /// Looks a routing key up without creating it.
    pub(crate) fn find_bucket(&self, key: &str) -> Result<Option<u32>> {
        let k = validate::normalize_key(key)?;
        Ok(self.keys.read().get(&k))
    }

    pub(crate) fn key_of(&self, bucket: u32) -> Arc<str> {
        self.keys
            .read()
            .key(bucket)
            .cloned()
            .unwrap_or_else(|| "".into())
    }

    /// Makes the poll fd readable.
    pub(crate) fn wake(&self) {
        self.signal.raise();
    }

    /// Syncs buffered outcome records when they are due, else arms the poll fd's
    /// timer for their deadline so that an idle event loop wakes up to sync them.
    /// Errors poison the log.
    pub(crate) fn sync_if_due(&self) -> Result<()> {
        let now = self.opts.clock.now_millis();
        match self.log.sync_state(now) {
            crate::log::SyncState::Due => self.log.sync_all()?,
            crate::log::SyncState::Pending(d) => {
                // Armed once per pending window, not on every completion.
                if self.sync_armed.swap(d, Ordering::AcqRel) != d {
                    let after = std::time::Duration::from_millis(d.saturating_sub(now).max(1));
                    self.signal.arm(after);
                }
            }
            crate::log::SyncState::Idle => {}
        }
        Ok(())
    }

    /// Decodes a message id into (message shard, local slot) if live.
    pub(crate) fn locate(&self, id: MessageId) -> Result<(usize, u32)> {
        let slot = id.slot();
        let (s, l) = (shard_of(slot), local_of(slot));
        if self.msgs[s].lock().get(l, id.gen()).is_none() {
            return Err(Error::NoSuchMessage(id));
        }
        Ok((s, l))
    }

    /// Runs `plan` on one recipient of a live message under the right locks, appends the
    /// record and applies the change. `plan` returns None to leave the recipient alone.
    pub(crate) fn change_rcpt(
        &self,
        id: MessageId,
        idx: u32,
        plan: &dyn Fn(&Rcpt, u32) -> Option<Change>,
    ) -> Result<bool> {
        let _g = self.gate.read_recursive();
        let slot = id.slot();
        let (mshard, local) = (shard_of(slot), local_of(slot));
        loop {
            let (rid, bucket) = {
                let ms = self.msgs[mshard].lock();
                if ms.get(local, id.gen()).is_none() {
                    return Err(Error::NoSuchMessage(id));
                }
                let rid = ms
                    .rcpt_index(local, idx)
                    .ok_or(Error::NoSuchRecipient(id, idx))?;
                (rid, ms.rcpts[rid as usize].bucket())
            };
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
            let now = self.now();
            let Some(ch) = plan(&r, now) else {
                return Ok(false);
            };
            if let Some(hold) = ch.inflight_hold {
                // In flight: persist the decision now, apply it when the attempt ends.
                let cur = ms.intents.get(&rid).copied().unwrap_or_default();
                if cur.hold == hold {
                    return Ok(false);
                }
                let mut b = Batch::new();
                push_update(&mut b, &ms, mshard, rid, &ch, "");
                self.log.append(b)?;
                let it = Intent { hold, ..cur };
                if it == Intent::default() {
                    ms.intents.remove(&rid);
                } else {
                    ms.intents.insert(rid, it);
                }
                return Ok(true);
            }
            if ch.persist {
                let mut b = Batch::new();
                push_update(&mut b, &ms, mshard, rid, &ch, "");
                self.log.append(b)?;
            }
            let rang = apply_change(&mut ss, &mut ms, mshard, rid, &ch, now);
            drop(ms);
            drop(ss);
            if rang {
                self.wake();
            }
            return Ok(true);
        }
    }

    /// Moves one recipient to another bucket, persisting the new routing key.
    pub(crate) fn reroute_rcpt(&self, id: MessageId, idx: u32, to: u32) -> Result<bool> {
        let _g = self.gate.read_recursive();
        let slot = id.slot();
        let (mshard, local) = (shard_of(slot), local_of(slot));
        let to_key = self.key_of(to);
        loop {
            let (rid, from) = {
                let ms = self.msgs[mshard].lock();
                if ms.get(local, id.gen()).is_none() {
                    return Err(Error::NoSuchMessage(id));
                }
                let rid = ms
                    .rcpt_index(local, idx)
                    .ok_or(Error::NoSuchRecipient(id, idx))?;
                (rid, ms.rcpts[rid as usize].bucket())
            };
            if from == to {
                return self.clear_inflight_route(mshard, local, id, rid, to, &to_key);
            }
            let (sa, sb) = (shard_of(from), shard_of(to));
            let (mut g1, mut g2) = if sa == sb {
                (self.sched[sa].lock(), None)
            } else if sa < sb {
                let a = self.sched[sa].lock();
                (a, Some(self.sched[sb].lock()))
            } else {
                let b = self.sched[sb].lock();
                let a = self.sched[sa].lock();
                (a, Some(b))
            };
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
            let now = self.now();
            let ch = Change::to(&r, st, r.next, true);
            let mut b = Batch::new();
            push_update(&mut b, &ms, mshard, rid, &ch, &to_key);
            self.log.append(b)?;
            // Leave the old bucket …
            g1.buckets[local_of(from) as usize].shift(st, RcptState::Delivered);
            ms.rcpts[rid as usize].set_bucket(to);
            // … and join the new one.
            let dst: &mut SchedShard = match g2.as_mut() {
                Some(g) => g,
                None => &mut g1,
            };
            dst.buckets[local_of(to) as usize].shift(RcptState::Delivered, st);
            let rr = rref(mshard, rid);
            let mut rang = false;
            match st {
                RcptState::Ready => {
                    dst.buckets[local_of(to) as usize].push_ready(rr);
                    rang = dst.maybe_ring(local_of(to), now);
                }
                RcptState::Deferred => dst.wheel.insert(r.next, rr),
                _ => {}
            }
            drop(ms);
            drop(g2);
            drop(g1);
            if rang {
                self.wake();
            }
            return Ok(true);
        }
    }

    /// Where a live message's record is now.
    /// (segment, offset, record length) of a live message's record.
    pub(crate) fn location(&self, id: MessageId) -> Option<(u32, u32, u32)> {
        let slot = id.slot();
        let ms = self.msgs[shard_of(slot)].lock();
        ms.get(local_of(slot), id.gen())
            .map(|m| (m.seg, m.off, m.len))
    }

    /// Reads the message record of `id` last seen at `loc`. A failure is damage
    /// only if the message still lives there: compaction may have moved it (and
    /// deleted the old segment) between the lookup and the read, then the read is
    /// retried at the new place.
    pub(crate) fn read_message_record(
        &self,
        id: MessageId,
        mut loc: (u32, u32, u32),
    ) -> Result<bytes::Bytes> {
        loop {
            match self.log.read_record(loc.0, loc.1 as u64, loc.2 as usize) {
                Ok((_, payload)) => return Ok(payload),
                Err(e) => match self.location(id) {
                    Some(now) if now != loc => loc = now,
                    None => return Err(Error::NoSuchMessage(id)),
                    Some(_) => return Err(e),
                },
            }
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
        let it = ms.intents.get(&rid).copied().unwrap_or_default();
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
        let it = ms.intents.get(&rid).copied().unwrap_or_default();
        if it.route == route {
            return Ok(false);
        }
        let st = if it.hold {
            RcptState::Held
        } else {
            RcptState::Ready
        };
        let mut b = Batch::new();
        push_update(
            &mut b,
            ms,
            mshard,
            rid,
            &Change::to(&r, st, r.next, true),
            key,
        );
        self.log.append(b)?;
        let it = Intent { route, ..it };
        if it == Intent::default() {
            ms.intents.remove(&rid);
        } else {
            ms.intents.insert(rid, it);
        }
        Ok(true)
    }

    /// (message id, recipient index) of every live recipient matching `f`.
    pub(crate) fn collect(&self, f: &dyn Fn(&Rcpt) -> bool) -> Vec<(MessageId, u32)> {
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
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, recovering from its log and checkpoint.
    ///
    /// Fails with [`Error::Locked`] when another handle holds the directory and with
    /// [`Error::NetworkFilesystem`] on NFS/CIFS/FUSE unless allowed in `opts`.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Queue> {
        crate::recovery::open(dir.as_ref(), opts)
    }

    /// Accepts a message. Returns only when the message and its recipients are on
    /// stable storage: the MTA may answer `250` then. Concurrent callers share fsyncs.
    ///
    /// Invalid input returns a typed error and writes nothing.
    pub fn enqueue(&self, m: &NewMessage<'_>) -> Result<MessageId> {
        let q = &self.inner;
        let o = &q.opts;
        validate::recipient_count(o, m.recipients.len())?;
        validate::body_len(o, m.body.len())?;
        validate::meta_len(m.meta.len())?;
        validate::sender(m.sender)?;
        let routes = m
            .recipients
            .iter()
            .map(validate::route)
            .collect::<Result<Vec<String>>>()?;
        if let Some(p) = q.log.poisoned() {
            return Err(Error::Poisoned(p));
        }
        // Shared gate from the key lookup on: idle buckets are freed only under the
        // exclusive gate, so these ids stay ours until the recipients count in them.
        let gate = q.gate.read();
        let buckets = routes
            .iter()
            .map(|k| q.bucket_id(k))
            .collect::<Result<Vec<u32>>>()?;
        let pairs: Vec<(&str, &str)> = m
            .recipients
            .iter()
            .zip(&routes)
            .map(|(r, k)| (r.address.as_str(), k.as_str()))
            .collect();

        let now = q.now();
        let mshard = q.enq_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let local = {
            let mut ms = q.msgs[mshard].lock();
            let local = ms.alloc_msg();
            // Never accept what recovery would refuse to load.
            let limit = q.slot_limit.load(Ordering::Relaxed);
            if local > limit || ms.rcpts.len() + buckets.len() > MAX_RCPT_SLOTS {
                ms.release_slot(local);
                return Err(Error::TooLarge {
                    what: "queue (message slots in one shard)",
                    len: local as usize,
                    limit: limit as usize,
                });
            }
            local
        };
        let gen = loop {
            let g = q.next_gen.fetch_add(1, Ordering::Relaxed);
            if g != 0 {
                break g;
            }
        };
        let id = MessageId::new(gen, global(mshard, local));
        let mut batch = Batch::new();
        let start = batch.push(Kind::Message, |p| {
            record::encode_message(p, id.0, now as u64, m.sender, m.meta, &pairs, m.body)
        });
        let rec_len = batch.record_len(start) as u32;
        if batch.len() > record::MAX_RECORD {
            q.msgs[mshard].lock().release_slot(local);
            return Err(Error::TooLarge {
                what: "message record",
                len: batch.len(),
                limit: record::MAX_RECORD,
            });
        }

        let res = q
            .log
            .append(batch)
            .and_then(|(at, end)| q.log.sync_to(end).map(|_| at));
        let at = match res {
            Ok(at) => at,
            Err(e) => {
                q.msgs[mshard].lock().release_slot(local);
                return Err(e);
            }
        };
        q.msgs[mshard].lock().insert(
            local,
            gen,
            (pos_seg(at), pos_off(at) as u32, rec_len),
            now,
            &buckets,
        );
        // Make the recipients visible to the scheduler, one sched shard at a time.
        let mut rang = false;
        let mut done = vec![false; buckets.len()];
        for i in 0..buckets.len() {
            if done[i] {
                continue;
            }
            let s = shard_of(buckets[i]);
            let mut ss = q.sched[s].lock();
            let mut ms = q.msgs[mshard].lock();
            let first = ms.msgs[local as usize].first;
            for j in i..buckets.len() {
                if done[j] || shard_of(buckets[j]) != s {
                    continue;
                }
                done[j] = true;
                let rid = first + j as u32;
                if ms.rcpts[rid as usize].state() != RcptState::New {
                    continue; // an operator acted on it already
                }
                let ch = Change::to(&ms.rcpts[rid as usize], RcptState::Ready, 0, false);
                ss.buckets[local_of(buckets[j]) as usize]
                    .shift(RcptState::Delivered, RcptState::New);
                rang |= apply_change(&mut ss, &mut ms, mshard, rid, &ch, now);
            }
        }
        drop(gate);
        q.counters.accepted_msgs.fetch_add(1, Ordering::Relaxed);
        q.counters
            .accepted_rcpts
            .fetch_add(buckets.len() as u64, Ordering::Relaxed);
        if rang {
            q.wake();
        }
        if q.opts.auto_maintenance {
            // The message is durable and queued: a maintenance failure must not turn
            // this into an error (the MTA would reject mail it has accepted).
            crate::checkpoint::maybe_maintain(q);
        }
        Ok(id)
    }

    /// Lowers the per-shard message-slot limit (tests of the limit; recovery keeps
    /// its own, larger one).
    #[doc(hidden)]
    pub fn debug_set_slot_limit(&self, limit: u32) {
        self.inner
            .slot_limit
            .store(limit.min(crate::checkpoint::MAX_SLOT), Ordering::Relaxed);
    }

    /// Makes every buffered outcome record durable now.
    pub fn sync(&self) -> Result<()> {
        self.inner.log.sync_all()
    }

    /// Writes a checkpoint now (and compacts), so that the next open replays nothing.
    /// Also happens automatically every `checkpoint_bytes` of log.
    pub fn checkpoint(&self) -> Result<()> {
        crate::checkpoint::checkpoint(&self.inner)
    }

    /// Syncs and writes a checkpoint. The directory lock is released when the last
    /// clone of this queue is dropped.
    pub fn close(self) -> Result<()> {
        self.inner.log.sync_all()?;
        crate::checkpoint::checkpoint(&self.inner)?;
        Ok(())
    }

    /// The options the queue was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What recovery found when the queue was opened (damage, torn tail, timings).
    pub fn recovery_report(&self) -> RecoveryReport {
        self.inner.report.lock().clone()
    }

    fn each_rcpt(
        &self,
        id: MessageId,
        plan: &dyn Fn(&Rcpt, u32) -> Option<Change>,
    ) -> Result<usize> {
        let (s, l) = self.inner.locate(id)?;
        let n = self.inner.msgs[s].lock().msgs[l as usize].n as u32;
        let mut changed = 0;
        for i in 0..n {
            match self.inner.change_rcpt(id, i, plan) {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(Error::NoSuchMessage(_)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    /// Holds every waiting recipient of a message (they are not delivered until released).
    /// Returns how many recipients changed.
    pub fn hold(&self, id: MessageId) -> Result<usize> {
        self.durably(self.each_rcpt(id, &plan_hold))
    }

    /// Releases a held message: its recipients become ready now.
    pub fn release(&self, id: MessageId) -> Result<usize> {
        self.durably(self.each_rcpt(id, &plan_release))
    }

    /// Deletes a message: every recipient not yet final is dropped without a DSN.
    pub fn delete(&self, id: MessageId) -> Result<usize> {
        let n = self.durably(self.each_rcpt(id, &plan_delete))?;
        self.inner
            .counters
            .deleted
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn bucket_op(&self, key: &str, plan: &dyn Fn(&Rcpt, u32) -> Option<Change>) -> Result<usize> {
        let targets = {
            let _g = self.inner.gate.read_recursive();
            let Some(b) = self.inner.find_bucket(key)? else {
                return Ok(0);
            };
            self.inner.collect(&|r| r.bucket() == b)
        };
        let mut n = 0;
        for (id, i) in targets {
            match self.inner.change_rcpt(id, i, plan) {
                Ok(true) => n += 1,
                Ok(false) | Err(Error::NoSuchMessage(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Holds every waiting recipient routed to `key`.
    pub fn hold_bucket(&self, key: &str) -> Result<usize> {
        self.durably(self.bucket_op(key, &plan_hold))
    }

    /// Releases every held recipient routed to `key`.
    pub fn release_bucket(&self, key: &str) -> Result<usize> {
        self.durably(self.bucket_op(key, &plan_release))
    }

    /// Flushes: every deferred recipient becomes ready now (like `postqueue -f`).
    pub fn flush(&self) -> Result<usize> {
        self.flush_matching(None)
    }

    /// Flushes the deferred recipients of one routing key (like `postqueue -s`).
    pub fn flush_bucket(&self, key: &str) -> Result<usize> {
        let _g = self.inner.gate.read_recursive();
        match self.inner.find_bucket(key)? {
            Some(b) => self.flush_matching(Some(b)),
            None => Ok(0),
        }
    }

    fn flush_matching(&self, bucket: Option<u32>) -> Result<usize> {
        let targets = self.inner.collect(&|r| {
            r.state() == RcptState::Deferred && bucket.is_none_or(|b| b == r.bucket())
        });
        let mut n = 0;
        for (id, i) in targets {
            match self.inner.change_rcpt(id, i, &plan_flush) {
                Ok(true) => n += 1,
                Ok(false) | Err(Error::NoSuchMessage(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.log.sync_all()?;
        // A flush also revives a dead destination.
        for s in 0..SHARDS {
            let mut ss = self.inner.sched[s].lock();
            let now = self.inner.now();
            for l in 0..ss.buckets.len() as u32 {
                let b = &mut ss.buckets[l as usize];
                let id = global(s, l);
                if bucket.is_some_and(|x| x != id) || b.dead_until == 0 {
                    continue;
                }
                b.dead_until = now;
                if ss.maybe_ring(l, now) {
                    self.inner.wake();
                }
            }
        }
        Ok(n)
    }

    /// Suspends a routing key: no new sessions until [`Queue::resume`].
    pub fn suspend(&self, key: &str) -> Result<()> {
        let _g = self.inner.gate.read_recursive();
        let b = self.inner.bucket_id(&validate::normalize_key(key)?)?;
        self.inner.sched[shard_of(b)].lock().buckets[local_of(b) as usize].suspended = true;
        Ok(())
    }

    /// Resumes a suspended routing key.
    pub fn resume(&self, key: &str) -> Result<()> {
        let _g = self.inner.gate.read_recursive();
        let b = self.inner.bucket_id(&validate::normalize_key(key)?)?;
        let now = self.inner.now();
        let mut ss = self.inner.sched[shard_of(b)].lock();
        ss.buckets[local_of(b) as usize].suspended = false;
        if ss.maybe_ring(local_of(b), now) {
            self.inner.wake();
        }
        Ok(())
    }

    /// Sets the concurrency limit of one routing key (the window is clamped to it).
    pub fn set_concurrency_limit(&self, key: &str, limit: u16) -> Result<()> {
        if limit == 0 {
            return Err(Error::InvalidOption(
                "concurrency limit must be at least 1".into(),
            ));
        }
        let _g = self.inner.gate.read_recursive();
        let b = self.inner.bucket_id(&validate::normalize_key(key)?)?;
        let mut ss = self.inner.sched[shard_of(b)].lock();
        let bk = &mut ss.buckets[local_of(b) as usize];
        bk.policy.limit = limit;
        bk.window = bk.window.min(limit);
        Ok(())
    }

    /// Re-routes every waiting recipient of routing key `from` to `to` (persisted).
    /// Recipients in flight keep their session. Returns how many moved.
    pub fn reroute(&self, from: &str, to: &str) -> Result<usize> {
        let _g = self.inner.gate.read_recursive();
        let Some(fb) = self.inner.find_bucket(from)? else {
            return Ok(0);
        };
        let tb = self.inner.bucket_id(&validate::normalize_key(to)?)?;
        if tb == fb {
            return Ok(0); // a destination onto itself: nothing moves
        }
        let targets = self.inner.collect(&|r| r.bucket() == fb);
        let mut n = 0;
        for (id, i) in targets {
            match self.inner.reroute_rcpt(id, i, tb) {
                Ok(true) => n += 1,
                Ok(false) | Err(Error::NoSuchMessage(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.durably(Ok(n))
    }

    /// Re-routes one recipient to routing key `to` (persisted).
    pub fn reroute_recipient(&self, id: MessageId, index: u32, to: &str) -> Result<bool> {
        let _g = self.inner.gate.read_recursive();
        let tb = self.inner.bucket_id(&validate::normalize_key(to)?)?;
        self.durably(self.inner.reroute_rcpt(id, index, tb))
    }

    /// Operator actions are durable when they return.
    fn durably<T>(&self, r: Result<T>) -> Result<T> {
        let v = r?;
        self.inner.log.sync_all()?;
        Ok(v)
    }

    /// Hands out up to `max` failed or expired recipients for DSN generation.
    /// Each must be acknowledged with [`Queue::ack_bounce`] once the DSN is queued;
    /// unacknowledged ones are offered again after a restart.
    pub fn take_bounces(&self, max: usize) -> Result<Vec<Bounce>> {
        let q = &self.inner;
        let mut refs = Vec::new();
        for (s, shard) in q.msgs.iter().enumerate() {
            let mut ms = shard.lock();
            while refs.len() < max {
                let Some(rr) = ms.bounces.pop_front() else {
                    break;
                };
                let rid = rref_local(rr);
                let Some(r) = ms.rcpts.get(rid as usize).copied() else {
                    continue;
                };
                let st = r.state();
                if !matches!(st, RcptState::Failed | RcptState::Expired)
                    || r.flags() & F_BOUNCE_TAKEN != 0
                {
                    continue;
                }
                {
                    let r = &mut ms.rcpts[rid as usize];
                    r.set_flags(r.flags() | F_BOUNCE_TAKEN);
                }
                let m = ms.msgs[r.msg as usize];
                refs.push((
                    MessageId::new(m.gen, global(s, r.msg)),
                    rid - m.first,
                    ms.reason(r.reason()).to_string(),
                    st == RcptState::Expired,
                    (m.seg, m.off, m.len),
                ));
            }
        }
        let mut out = Vec::with_capacity(refs.len());
        for (id, index, reason, expired, loc) in refs {
            // One unreadable message must not cost the others their DSN: report it and
            // go on (it is offered again after a restart). A message moved by
            // compaction meanwhile is read again from where it lives now.
            let rec = match q.read_message_record(id, loc) {
                Ok(rec) => rec,
                Err(e) => {
                    q.report.lock().note_corrupt_message(id, &e.to_string());
                    continue;
                }
            };
            let Some(rec) = record::decode_message(&rec) else {
                q.report
                    .lock()
                    .note_corrupt_message(id, "message record does not decode");
                continue;
            };
            out.push(Bounce {
                id,
                index,
                sender: rec.sender.to_string(),
                recipient: rec
                    .rcpts
                    .get(index as usize)
                    .map(|r| r.0.to_string())
                    .unwrap_or_default(),
                reason,
                expired,
            });
        }
        Ok(out)
    }

    /// Acknowledges a bounce: the recipient is final and its message may be removed.
    pub fn ack_bounce(&self, id: MessageId, index: u32) -> Result<bool> {
        let changed = self.inner.change_rcpt(id, index, &|r, _| {
            matches!(r.state(), RcptState::Failed | RcptState::Expired)
                .then(|| Change::to(r, RcptState::Bounced, 0, true))
        })?;
        if changed {
            self.inner.counters.bounced.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.sync_if_due()?;
        Ok(changed)
    }

    /// The pollable descriptor: readable when a destination has work ready.
    /// Call [`Queue::ack_poll`], then take sessions until [`Queue::next_session`] returns `None`.
    pub fn poll_fd(&self) -> std::os::fd::RawFd {
        self.inner.signal.fd()
    }

    /// Clears the pollable descriptor's readiness and syncs outcome records whose
    /// interval has passed (the descriptor also wakes for that deadline). A sync
    /// failure poisons the queue; later calls report it.
    pub fn ack_poll(&self) {
        self.inner.signal.clear();
        self.inner.sync_armed.store(0, Ordering::Release);
        let _ = self.inner.sync_if_due();
    }
}

fn plan_hold(r: &Rcpt, _now: u32) -> Option<Change> {
    match r.state() {
        RcptState::Ready | RcptState::Deferred => {
            Some(Change::to(r, RcptState::Held, r.next, true))
        }
        RcptState::Leased => Some(Change {
            inflight_hold: Some(true),
            ..Change::to(r, RcptState::Held, r.next, true)
        }),
        _ => None,
    }
}

fn plan_release(r: &Rcpt, _now: u32) -> Option<Change> {
    match r.state() {
        RcptState::Held => Some(Change::to(r, RcptState::Ready, 0, true)),
        RcptState::Leased => Some(Change {
            inflight_hold: Some(false),
            ..Change::to(r, RcptState::Ready, r.next, true)
        }),
        _ => None,
    }
}

fn plan_delete(r: &Rcpt, _now: u32) -> Option<Change> {
    (!r.state().is_final() && r.state() != RcptState::New)
        .then(|| Change::to(r, RcptState::Deleted, 0, true))
}

fn plan_flush(r: &Rcpt, _now: u32) -> Option<Change> {
    (r.state() == RcptState::Deferred).then(|| Change::to(r, RcptState::Ready, 0, true))
}
