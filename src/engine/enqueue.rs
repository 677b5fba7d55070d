//! Accepting a message: check it, reserve a slot, append and fsync its record
//! (group commit), then index its recipients and make them visible to the
//! scheduler. Durable before it returns; invalid input writes nothing.
//! Depends on `error`, `index`, `storage`, `types`, `validate`, the rest of `engine`.

use super::change::{apply_change, Change};
use super::{bump, Engine};
use crate::error::{Error, Result};
use crate::index::*;
use crate::storage::log::Batch;
use crate::storage::record::{self, Kind};
use crate::types::*;
use crate::validate;
use std::sync::atomic::Ordering;

/// Recipient records per message shard (a recipient reference packs the index in 28 bits).
const MAX_RCPT_SLOTS: usize = 1 << 28;

/// Checks a message and returns the routing key of each recipient.
fn check(opts: &Options, m: &NewMessage<'_>) -> Result<Vec<String>> {
    validate::recipient_count(opts, m.recipients.len())?;
    validate::body_len(opts, m.body.len())?;
    validate::meta_len(m.meta.len())?;
    validate::sender(m.sender)?;
    m.recipients.iter().map(validate::route).collect()
}

impl Engine {
    /// Accepts a message (see [`crate::Queue::enqueue`]); `admit`: subject to
    /// backpressure (DSNs are not).
    pub(crate) fn enqueue(&self, m: &NewMessage<'_>, admit: bool) -> Result<MessageId> {
        let routes = check(&self.opts, m)?;
        self.check_poison()?;
        if admit {
            self.admit(routes.len(), super::admit::record_size(m, &routes))?;
        }
        // Shared gate from the key lookup until the message is in the index
        // and counted (as new) in its buckets: idle buckets are freed only
        // under the exclusive gate, and a checkpoint's position (taken under
        // it) then covers the record and the index entry together. The fsync
        // comes after: a checkpoint never waits for it.
        let gate = self.gate.read();
        let buckets = routes
            .iter()
            .map(|k| self.bucket_id(k))
            .collect::<Result<Vec<u32>>>()?;
        let now = self.now();
        let mshard = self.enq_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let local = self.alloc_slot(mshard, buckets.len())?;
        let id = MessageId::new(self.new_gen(), global(mshard, local));
        let (loc, end) = match self.write_message(id, now, m, &routes) {
            Ok(x) => x,
            Err(e) => {
                self.msgs[mshard].lock().release_slot(local);
                return Err(e);
            }
        };
        self.enqueuing.fetch_add(1, Ordering::Relaxed);
        self.msgs[mshard]
            .lock()
            .insert(local, id.gen(), loc, now, &buckets);
        self.count_new(&buckets, 1);
        drop(gate);
        let synced = self.log.sync_to(end);
        let rang = match synced {
            Ok(()) => self.publish(mshard, local, &buckets, now),
            Err(_) => {
                self.unpublish(mshard, local, &buckets);
                false
            }
        };
        self.enqueuing.fetch_sub(1, Ordering::Relaxed);
        synced?;
        let earlier = self.sweep_note(now);
        bump(&self.counters.accepted_msgs, 1);
        bump(&self.counters.accepted_rcpts, buckets.len() as u64);
        self.wake_if(rang || earlier);
        // Maintenance that is due is left to workers and `tick` (the poll
        // fd says so): a producer does not wait for a checkpoint. Only when
        // nobody took it for a whole further interval does a producer run it
        // (an embedder that never completes or ticks). The message is durable
        // and queued: a maintenance failure never turns this into an error.
        match self.maintenance_overdue() {
            0 => {}
            n if n > self.maint_every.load(Ordering::Relaxed) => self.maybe_maintain(),
            _ => {
                if !self.maint_woken.swap(true, Ordering::Relaxed) {
                    self.wake();
                }
            }
        }
        // So is making the next segment's file ahead (never on a producer).
        if self.log.wants_prepare() && !self.prep_woken.swap(true, Ordering::Relaxed) {
            self.wake();
        }
        Ok(id)
    }

    /// Reserves a message slot in `mshard` for `n` recipients. Never accepts what
    /// recovery would refuse to load.
    fn alloc_slot(&self, mshard: usize, n: usize) -> Result<u32> {
        let mut ms = self.msgs[mshard].lock();
        let local = ms.alloc_msg();
        let limit = self.slot_limit.load(Ordering::Relaxed);
        if local > limit || ms.rcpts.len() + n > MAX_RCPT_SLOTS {
            ms.release_slot(local);
            return Err(Error::TooLarge {
                what: "queue (message slots in one shard)",
                len: local as usize,
                limit: limit as usize,
            });
        }
        Ok(local)
    }

    /// A fresh, non-zero message generation.
    fn new_gen(&self) -> u32 {
        loop {
            let g = self.next_gen.fetch_add(1, Ordering::Relaxed);
            if g != 0 {
                return g;
            }
        }
    }

    /// Appends the message record (not yet durable); returns its (segment,
    /// offset, record length) and the log position to sync to.
    fn write_message(
        &self,
        id: MessageId,
        now: u32,
        m: &NewMessage<'_>,
        routes: &[String],
    ) -> Result<((u32, u32, u32), crate::storage::log::Pos)> {
        let pairs: Vec<(&str, &str)> = m
            .recipients
            .iter()
            .zip(routes)
            .map(|(r, k)| (r.address.as_str(), k.as_str()))
            .collect();
        let mut batch = Batch::new();
        let start = batch.push(Kind::Message, |p| {
            record::encode_message(p, id.0, now as u64, m.sender, m.meta, &pairs, m.body)
        });
        let rec_len = batch.record_len(start) as u32;
        if batch.len() > record::MAX_RECORD {
            return Err(Error::TooLarge {
                what: "message record",
                len: batch.len(),
                limit: record::MAX_RECORD,
            });
        }
        let (at, end) = self.log.append(batch)?;
        Ok(((at.seg(), at.off() as u32, rec_len), end))
    }

    /// Counts (`dir` 1) or uncounts (-1) one new recipient per entry of
    /// `buckets` in its bucket: a counted bucket is not idle, so it is not
    /// freed while the message waits for its fsync without the gate.
    fn count_new(&self, buckets: &[u32], dir: i8) {
        for &b in buckets {
            let mut ss = self.sched[shard_of(b)].lock();
            let bk = &mut ss.buckets[local_of(b) as usize];
            if dir > 0 {
                bk.shift(RcptState::Delivered, RcptState::New);
            } else {
                bk.shift(RcptState::New, RcptState::Delivered);
            }
        }
    }

    /// The message's fsync failed (the queue is poisoned): it leaves the
    /// index, and its recipients their buckets, as if never accepted.
    fn unpublish(&self, mshard: usize, local: u32, buckets: &[u32]) {
        let mut uncount = Vec::with_capacity(buckets.len());
        {
            let mut ms = self.msgs[mshard].lock();
            let first = ms.msgs[local as usize].first;
            for (j, &b) in buckets.iter().enumerate() {
                let rid = first + j as u32;
                if ms.rcpts[rid as usize].state() == RcptState::New {
                    uncount.push(b);
                    ms.rcpts[rid as usize].set_state(RcptState::Deleted);
                    ms.finish_rcpt(rid);
                }
            }
        }
        self.count_new(&uncount, -1);
    }

    /// Makes a new message's recipients visible to the scheduler, one sched shard
    /// at a time. Returns true when a bucket entered the ready ring.
    fn publish(&self, mshard: usize, local: u32, buckets: &[u32], now: u32) -> bool {
        let mut rang = false;
        let mut done = vec![false; buckets.len()];
        for i in 0..buckets.len() {
            if done[i] {
                continue;
            }
            let s = shard_of(buckets[i]);
            let mut ss = self.sched[s].lock();
            let mut ms = self.msgs[mshard].lock();
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
                // Counted as new in its bucket since `count_new`.
                let ch = Change::to(&ms.rcpts[rid as usize], RcptState::Ready, 0, false);
                rang |= apply_change(&mut ss, &mut ms, mshard, rid, &ch, now);
            }
        }
        rang
    }
}
