//! An internal invariant checker for tests and simulations
//! (`Queue::debug_check`): the scheduler, the index and the poll descriptor
//! agree with each other. Not part of the supported API.
//! Depends on `index`, `sched`, `types`, the rest of `engine`.

use super::Engine;
use crate::index::*;
use crate::sched::{Bucket, Keys, SchedShard};
use crate::types::{MessageId, RcptState};
use parking_lot::{MutexGuard, RwLockReadGuard};
use std::collections::{HashMap, HashSet};

/// Number of in-memory recipient states (the length of `Bucket::counts`).
const STATES: usize = 11;

fn state_name(i: usize) -> &'static str {
    RcptState::from_u8(i as u8).map_or("?", |s| s.name())
}

impl Engine {
    /// Checks the internal invariants of the scheduler and the index and
    /// returns a description of the first violation found:
    ///
    /// - every live recipient's bucket exists and is not free, and each
    ///   bucket's per-state counters equal a recount from the index
    ///   (re-routed recipients waiting in the move list are counted nowhere);
    /// - every ready recipient is in its bucket's ready FIFO, every deferred
    ///   one has a timer entry no later than its next attempt, every
    ///   in-flight one is in exactly one session slot of its bucket (or in
    ///   the move list), every failed or expired one whose DSN was not handed
    ///   out is in its shard's bounce queue;
    /// - in-flight decisions belong to in-flight recipients;
    /// - message live counts, per-segment live counts and shard totals match;
    /// - no bucket has more sessions than its window (a dead one at most one
    ///   probe), the ready ring and the `in_ring` flags agree, and a bucket
    ///   that could open a session now is in the ring or waits for its probe
    ///   wake-up;
    /// - free buckets (empty key) are empty;
    /// - when a ring holds a bucket, the poll descriptor is readable.
    ///
    /// Takes every lock in the documented order (keys, scheduler shards, message
    /// shards, move list); meant for tests, not for production paths.
    pub(crate) fn check(&self) -> Result<(), String> {
        let v = View::new(self);
        let mut recount = HashMap::new();
        for (s, ms) in v.msgs.iter().enumerate() {
            v.check_shard(s, ms, &mut recount)?;
        }
        let (r, b) = v
            .msgs
            .iter()
            .map(|ms| ms.held())
            .fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1));
        if (r, b) != (self.load.recipients(), self.load.bytes()) {
            return Err(format!(
                "backpressure totals say {} recipients and {} record bytes, the shards hold {r} and {b}",
                self.load.recipients(),
                self.load.bytes()
            ));
        }
        let mut any_ring = false;
        for (s, ss) in v.sched.iter().enumerate() {
            any_ring |= v.check_sched_shard(s, ss, &mut recount)?;
        }
        if let Some((b, c)) = recount.into_iter().next() {
            return Err(format!(
                "recipients {c:?} point at bucket #{b}, which does not exist"
            ));
        }
        if any_ring && !readable(self.poll_fd()) {
            let ring: Vec<String> = v
                .sched
                .iter()
                .enumerate()
                .flat_map(|(s, ss)| ss.ring.iter().map(move |&bl| global(s, bl)))
                .map(|b| v.bname(b))
                .collect();
            return Err(format!(
                "work is in the ready ring ({}) but the poll fd is not readable (lost wake-up)",
                ring.join(", ")
            ));
        }
        Ok(())
    }
}

/// True when `fd` is readable now.
fn readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own, valid for the call; timeout 0 never blocks.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r == 1 && pfd.revents & libc::POLLIN != 0
}

/// Recipients counted per bucket and state, from the index.
type Recount = HashMap<u32, [u32; STATES]>;

/// Everything locked in the documented order, and what the checks look up.
struct View<'a> {
    keys: RwLockReadGuard<'a, Keys>,
    sched: Vec<MutexGuard<'a, SchedShard>>,
    msgs: Vec<MutexGuard<'a, MsgShard>>,
    /// Recipients in the move list: (message shard, record) → destination.
    moved: HashMap<(usize, u32), u32>,
    /// Timer entries per scheduler shard: recipient → earliest time.
    wheels: Vec<HashMap<RcptRef, u32>>,
    /// Ready FIFO contents per bucket.
    ready: HashMap<u32, HashSet<RcptRef>>,
    now: u32,
    /// Enqueues waiting for their fsync (their recipients may be new).
    enqueuing: usize,
}

impl<'a> View<'a> {
    fn new(q: &'a Engine) -> View<'a> {
        let keys = q.keys.read();
        let sched: Vec<_> = q.sched.iter().map(|s| s.lock()).collect();
        let msgs: Vec<_> = q.msgs.iter().map(|m| m.lock()).collect();
        let moved = q
            .moves
            .lock()
            .iter()
            .map(|m| ((m.mshard, m.rid), m.to))
            .collect();
        let wheels = sched
            .iter()
            .map(|ss| {
                let mut m: HashMap<RcptRef, u32> = HashMap::new();
                for (t, r) in ss.wheel.entries() {
                    let e = m.entry(r).or_insert(t);
                    *e = (*e).min(t);
                }
                m
            })
            .collect();
        let ready = sched
            .iter()
            .enumerate()
            .flat_map(|(s, ss)| {
                ss.buckets
                    .iter()
                    .enumerate()
                    .map(move |(l, b)| (global(s, l as u32), b.ready.iter().copied().collect()))
            })
            .collect();
        View {
            keys,
            sched,
            msgs,
            moved,
            wheels,
            ready,
            now: q.now(),
            enqueuing: q.enqueuing.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn bucket_of(&self, b: u32) -> Option<&Bucket> {
        self.sched
            .get(shard_of(b))
            .and_then(|ss| ss.buckets.get(local_of(b) as usize))
    }

    fn bname(&self, b: u32) -> String {
        self.bucket_of(b)
            .map_or_else(|| format!("#{b}"), |x| format!("{:?} (#{b})", &*x.key))
    }

    /// Messages, live counts, per-segment counts and in-flight decisions of
    /// one message shard; counts its recipients per bucket into `recount`.
    fn check_shard(&self, s: usize, ms: &MsgShard, recount: &mut Recount) -> Result<(), String> {
        let bounces: HashSet<RcptRef> = ms.bounces.iter().copied().collect();
        let mut live_msgs = 0usize;
        let mut seg_live: HashMap<u32, (u32, u64)> = HashMap::new();
        for (l, m) in ms.msgs.iter().enumerate() {
            if m.gen == 0 {
                continue;
            }
            live_msgs += 1;
            let e = seg_live.entry(m.seg).or_default();
            e.0 += 1;
            e.1 += m.len as u64;
            self.check_message(s, ms, l as u32, &bounces, recount)?;
        }
        if live_msgs != ms.live_msgs {
            return Err(format!(
                "message shard {s}: live_msgs {} but {live_msgs} live messages",
                ms.live_msgs
            ));
        }
        if seg_live != ms.seg_live {
            let mut a: Vec<_> = ms.seg_live.iter().collect();
            let mut b: Vec<_> = seg_live.iter().collect();
            a.sort_unstable();
            b.sort_unstable();
            return Err(format!(
                "message shard {s}: seg_live {a:?} but the live messages give {b:?}"
            ));
        }
        check_intents(s, ms)
    }

    /// One live message: its recipients and its live count.
    fn check_message(
        &self,
        s: usize,
        ms: &MsgShard,
        l: u32,
        bounces: &HashSet<RcptRef>,
        recount: &mut Recount,
    ) -> Result<(), String> {
        let m = ms.msgs[l as usize];
        let id = MessageId::new(m.gen, global(s, l));
        if m.first as usize + m.n as usize > ms.rcpts.len() {
            return Err(format!(
                "message {id}: recipients {}..{} beyond the slab ({})",
                m.first,
                m.first as usize + m.n as usize,
                ms.rcpts.len()
            ));
        }
        let mut live = 0u16;
        for rid in m.first..m.first + m.n as u32 {
            let r = ms.rcpts[rid as usize];
            let idx = rid - m.first;
            if r.msg != l {
                return Err(format!(
                    "message {id} recipient {idx}: belongs to slot {} (expected {l})",
                    r.msg
                ));
            }
            if r.state().is_final() {
                continue;
            }
            live += 1;
            let at = (id, idx, s, rid);
            if let Some(b) = self.check_rcpt(at, &r, bounces)? {
                recount.entry(b).or_insert([0; STATES])[r.state() as usize] += 1;
            }
        }
        if m.live != live {
            return Err(format!(
                "message {id}: live count {} but {live} recipients are not final",
                m.live
            ));
        }
        Ok(())
    }

    /// One live recipient (message id, index, shard, record): its bucket, move
    /// flag and the queue it must sit in. Returns the bucket it counts in (none
    /// while it waits in the move list).
    fn check_rcpt(
        &self,
        (id, idx, s, rid): (MessageId, u32, usize, u32),
        r: &Rcpt,
        bounces: &HashSet<RcptRef>,
    ) -> Result<Option<u32>, String> {
        let st = r.state();
        let b = r.bucket();
        let Some(bk) = self.bucket_of(b) else {
            return Err(format!(
                "message {id} recipient {idx} ({}): bucket #{b} does not exist",
                st.name()
            ));
        };
        if bk.key.is_empty() {
            return Err(format!(
                "message {id} recipient {idx} ({}): points at free bucket #{b}",
                st.name()
            ));
        }
        let rr = RcptRef::new(s, rid);
        let moving = r.flags() & F_MOVING != 0;
        match self.moved.get(&(s, rid)) {
            Some(&to) if moving && to == b => return Ok(None),
            None if !moving => {}
            _ => {
                return Err(format!(
                    "message {id} recipient {idx} ({} in {}): the moving flag ({moving}) and the move list ({:?}) disagree",
                    st.name(),
                    self.bname(b),
                    self.moved.get(&(s, rid)).map(|&t| self.bname(t))
                ))
            }
        }
        match st {
            RcptState::New if self.enqueuing == 0 => Err(format!(
                "message {id} recipient {idx}: still new outside enqueue"
            )),
            RcptState::Ready if !self.ready.get(&b).is_some_and(|set| set.contains(&rr)) => {
                Err(format!(
                    "message {id} recipient {idx}: ready but not in the ready FIFO of {}",
                    self.bname(b)
                ))
            }
            RcptState::Deferred => match self.wheels[shard_of(b)].get(&rr) {
                Some(&t) if t <= r.next => Ok(Some(b)),
                Some(&t) => Err(format!(
                    "message {id} recipient {idx} of {}: deferred until {} but its timer is at {t}",
                    self.bname(b),
                    r.next
                )),
                None => Err(format!(
                    "message {id} recipient {idx} of {}: deferred until {} (now {}) without a timer entry (stranded)",
                    self.bname(b),
                    r.next,
                    self.now
                )),
            },
            RcptState::Leased => {
                let n = bk
                    .slots
                    .iter()
                    .filter(|x| x.leased_msg == id && x.leased.contains(&rr))
                    .count();
                if n != 1 {
                    return Err(format!(
                        "message {id} recipient {idx} of {}: in flight but in {n} session slots ({} open)",
                        self.bname(b),
                        bk.slots.len()
                    ));
                }
                Ok(Some(b))
            }
            RcptState::Failed | RcptState::Expired
                if r.flags() & F_BOUNCE_TAKEN == 0 && !bounces.contains(&rr) =>
            {
                Err(format!(
                    "message {id} recipient {idx}: {} with its DSN not handed out, but not in the bounce queue",
                    st.name()
                ))
            }
            _ => Ok(Some(b)),
        }
    }

    /// The ring and every bucket of one scheduler shard, against `recount`
    /// (whose entries for existing buckets it removes). Returns true when the
    /// ring holds a bucket.
    fn check_sched_shard(
        &self,
        s: usize,
        ss: &SchedShard,
        recount: &mut Recount,
    ) -> Result<bool, String> {
        let mut in_ring: HashSet<u32> = HashSet::new();
        for &bl in &ss.ring {
            if bl as usize >= ss.buckets.len() {
                return Err(format!(
                    "shard {s}: ring holds bucket {bl}, which does not exist"
                ));
            }
            if !in_ring.insert(bl) {
                return Err(format!(
                    "shard {s}: {} is in the ring twice",
                    self.bname(global(s, bl))
                ));
            }
        }
        for (l, b) in ss.buckets.iter().enumerate() {
            let id = global(s, l as u32);
            let counts = recount.remove(&id).unwrap_or([0; STATES]);
            let ringed = in_ring.contains(&(l as u32));
            if b.key.is_empty() {
                check_free_bucket(id, b, ringed, &counts)?;
                continue;
            }
            match self.keys.key(id) {
                Some(k) if **k == *b.key => {}
                other => {
                    return Err(format!(
                        "bucket {}: the key table names it {other:?}",
                        self.bname(id)
                    ))
                }
            }
            self.check_bucket(s, ss, l as u32, &counts, ringed)?;
        }
        Ok(!ss.ring.is_empty())
    }

    /// One live bucket: counters, window, sessions, ring membership.
    fn check_bucket(
        &self,
        s: usize,
        ss: &SchedShard,
        l: u32,
        counts: &[u32; STATES],
        ringed: bool,
    ) -> Result<(), String> {
        let b = &ss.buckets[l as usize];
        let name = self.bname(global(s, l));
        for (i, (&have, &want)) in b.counts.iter().zip(counts.iter()).enumerate() {
            if RcptState::from_u8(i as u8).is_some_and(|s| s.is_final()) {
                continue;
            }
            if have != want {
                return Err(format!(
                    "bucket {name}: {} count is {have} but the index has {want}",
                    state_name(i)
                ));
            }
        }
        let window = (b.window as usize).max(1);
        // A reply rule's throttle may lower the window below the sessions
        // already open: they end at their next request (never more open).
        if b.slots.len() > window && b.throttle.is_none() {
            return Err(format!(
                "bucket {name}: {} sessions open with a window of {} (limit {})",
                b.slots.len(),
                b.window,
                b.policy.limit
            ));
        }
        if b.window > b.policy.limit.max(1) {
            return Err(format!(
                "bucket {name}: window {} above the limit {}",
                b.window, b.policy.limit
            ));
        }
        if b.slots.iter().filter(|x| x.probe).count() > 1 {
            return Err(format!("bucket {name}: more than one probe session"));
        }
        let mut tokens = HashSet::new();
        for slot in &b.slots {
            if !tokens.insert(slot.token) {
                return Err(format!("bucket {name}: session token {} twice", slot.token));
            }
        }
        if b.in_ring != ringed {
            return Err(format!(
                "bucket {name}: in_ring flag {} but {} the ring",
                b.in_ring,
                if b.in_ring { "not in" } else { "in" }
            ));
        }
        let now = self.now;
        if b.can_open(now) && !b.in_ring {
            // A rate wait that just ended is picked up by its due wake-up.
            let probe_pending = (b.dead_until != 0 && ss.wakeups.iter().any(|w| w.0 .1 == l))
                || (b.limited()
                    && ss
                        .wakeups
                        .iter()
                        .any(|w| w.0 .1 == l && w.0 .0 <= now && w.0 .0 == b.wake_at));
            if !probe_pending && b.dead_until != 0 {
                return Err(format!(
                    "bucket {name}: dead until {} (now {now}) with {} ready and no probe wake-up pending, not in the ring: never offered again (stranded dead destination)",
                    b.dead_until,
                    b.count(RcptState::Ready)
                ));
            }
            if !probe_pending {
                return Err(format!(
                    "bucket {name}: can open a session now ({} ready, {} of {} slots, now {now}) but is not in the ring (stranded)",
                    b.count(RcptState::Ready),
                    b.slots.len(),
                    b.window
                ));
            }
        }
        // Out of rate with mail ready, no session and not in the ring (which
        // looks at it again): a wake-up for when the limits allow the next
        // message must be pending, or it is stranded.
        if let Some(t) = b.rate_wait(now) {
            let idle = b.slots.is_empty() && !b.in_ring && b.dead_until == 0;
            // A live entry (the one `next_wakeup` reports), no later than t.
            let woken = ss
                .wakeups
                .iter()
                .any(|w| w.0 .1 == l && w.0 .0 <= t && w.0 .0 == b.wake_at);
            if idle && !b.suspended && b.count(RcptState::Ready) > 0 && !woken {
                return Err(format!(
                    "bucket {name}: out of rate until {t} (now {now}) with {} ready and no wake-up pending (stranded)",
                    b.count(RcptState::Ready)
                ));
            }
        }
        // A path suspension ends at its wake-up: without one it would pin
        // the bucket (never idle) and never be dropped.
        for p in &b.path_susp {
            if !ss.wakeups.iter().any(|w| w.0 == (p.until, l)) {
                return Err(format!(
                    "bucket {name}: path through {} suspended until {} (now {now}) without a wake-up at its end",
                    p.source, p.until
                ));
            }
        }
        Ok(())
    }
}

/// A free bucket (empty key) holds nothing.
fn check_free_bucket(
    id: u32,
    b: &Bucket,
    ringed: bool,
    counts: &[u32; STATES],
) -> Result<(), String> {
    if b.counts.iter().any(|&c| c != 0)
        || !b.slots.is_empty()
        || b.in_ring
        || ringed
        || counts.iter().any(|&c| c != 0)
    {
        return Err(format!(
            "free bucket #{id} is not empty: counts {:?}, {} slots, in ring {}, recipients {counts:?}",
            b.counts,
            b.slots.len(),
            b.in_ring
        ));
    }
    Ok(())
}

/// In-flight decisions belong to in-flight recipients of live messages.
fn check_intents(s: usize, ms: &MsgShard) -> Result<(), String> {
    for &rid in ms.intents.keys() {
        let ok = ms.rcpts.get(rid as usize).is_some_and(|r| {
            let m = ms.msgs.get(r.msg as usize);
            r.state() == RcptState::Leased
                && m.is_some_and(|m| m.gen != 0 && rid >= m.first && rid < m.first + m.n as u32)
        });
        if !ok {
            let st = ms.rcpts.get(rid as usize).map(|r| r.state());
            return Err(format!(
                "message shard {s}: an in-flight decision for recipient record {rid}, which is {st:?} (not in flight)"
            ));
        }
    }
    Ok(())
}
