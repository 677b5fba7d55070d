//! Read-only views of the engine: stats (counts, per-destination shape,
//! counters), memory use, the message list, one message inspected, and the
//! verification of every live record. Formatting is `crate::stats`.
//! Depends on `error`, `index`, `sched`, `stats`, `storage`, `types`, the rest of `engine`.

use super::Engine;
use crate::error::{Error, Result};
use crate::index::*;
use crate::sched::Bucket;
use crate::stats::{age_column, BucketStats, MessageInfo, MessageSummary, RecipientInfo, Stats};
use crate::storage::log::segment_name;
use crate::storage::record;
use crate::types::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

impl Engine {
    /// A snapshot of counts, per-destination shape and counters.
    pub(crate) fn stats(&self) -> Stats {
        let now = self.now();
        let mut st = Stats::default();
        let ages = self.index_stats(&mut st, now);
        st.index_bytes += self.keys.read().memory() as u64;
        self.bucket_stats(&mut st, &ages);
        self.counter_stats(&mut st);
        st
    }

    /// Counts by state, messages, oldest age and index memory; returns the age
    /// columns per bucket.
    fn index_stats(&self, st: &mut Stats, now: u32) -> HashMap<u32, [u64; 10]> {
        let mut by_state = [0u64; 11];
        let mut ages: HashMap<u32, [u64; 10]> = HashMap::new();
        let mut oldest = now;
        for ms in &self.msgs {
            let ms = ms.lock();
            st.index_bytes += ms.memory() as u64;
            st.messages += ms.live_msgs as u64;
            st.reasons_normalised += ms.reasons_normalised();
            st.reasons_not_kept += ms.reasons_not_kept();
            for m in ms.msgs.iter().filter(|m| m.gen != 0) {
                oldest = oldest.min(m.received);
                let col = age_column(now.saturating_sub(m.received));
                for rid in m.first..m.first + m.n as u32 {
                    let r = ms.rcpts[rid as usize];
                    let s = r.state();
                    if s.is_final() {
                        continue;
                    }
                    by_state[s as usize] += 1;
                    ages.entry(r.bucket()).or_default()[col] += 1;
                }
            }
        }
        for s in WAITING_STATES.into_iter().chain([RcptState::Corrupt]) {
            st.by_state.push((s.name(), by_state[s as usize]));
        }
        st.oldest_age = if st.messages > 0 {
            now.saturating_sub(oldest) as u64
        } else {
            0
        };
        ages
    }

    /// Per-destination shape of every bucket with mail, sessions or state.
    fn bucket_stats(&self, st: &mut Stats, ages: &HashMap<u32, [u64; 10]>) {
        let now = self.now();
        for (s, ss) in self.sched.iter().enumerate() {
            let mut ss = ss.lock();
            // Paths as a session would see them (a destination created since
            // the sources last changed builds them when it opens one).
            for bl in 0..ss.buckets.len() as u32 {
                self.sync_paths(&mut ss, bl);
            }
            st.index_bytes += ss.memory() as u64;
            for (l, b) in ss.buckets.iter().enumerate() {
                let bs = bucket_stat(
                    b,
                    ages.get(&global(s, l as u32)).copied().unwrap_or_default(),
                    now,
                );
                if bs.depth() > 0 || bs.sessions > 0 || bs.suspended || bs.dead_until != 0 {
                    st.buckets.push(bs);
                }
            }
        }
        st.buckets
            .sort_by(|a, b| b.depth().cmp(&a.depth()).then(a.key.cmp(&b.key)));
    }

    /// Throughput counters, damage, log and maintenance figures.
    fn counter_stats(&self, st: &mut Stats) {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        st.accepted = get(&c.accepted_msgs);
        st.accepted_recipients = get(&c.accepted_rcpts);
        st.delivered = get(&c.delivered);
        st.deferred = get(&c.deferred);
        st.failed = get(&c.failed);
        st.expired = get(&c.expired);
        st.bounced = get(&c.bounced);
        st.site_failures = get(&c.site_failures);
        st.lease_reclaims = get(&c.lease_reclaims);
        st.refused = get(&c.refused);
        st.delay_warnings = get(&c.delay_warnings);
        st.queued_bytes = self.load.bytes();
        st.disk_free = self.disk_free();
        st.backpressure = self.pressure();
        let rep = self.report.lock();
        st.corrupt = rep.corrupt_count() as u64;
        st.corrupt_ids = rep.corrupt_messages.clone();
        st.corrupt_reasons = rep
            .corrupt_messages
            .iter()
            .map(|id| (*id, rep.corrupt_reason(*id).unwrap_or("").to_string()))
            .collect();
        drop(rep);
        let lc = self.log.counters();
        st.fsyncs = lc.syncs;
        st.commits = lc.commits;
        st.bytes_written = lc.bytes;
        st.segments_reused = lc.reused;
        let m = self.maint.lock();
        st.checkpoints = m.checkpoints;
        st.segments_deleted = m.segments_deleted;
        st.messages_copied = m.messages_copied;
        st.maintenance_error = m.last_error.clone();
        st.buckets_freed = m.buckets_freed;
        drop(m);
        st.poisoned = self.log.poisoned();
    }

    /// Bytes of RAM held by the in-memory index (recipients, messages, buckets,
    /// ready queues, timers), counted from allocated capacities.
    pub(crate) fn memory_usage(&self) -> usize {
        let q = self;
        q.msgs.iter().map(|m| m.lock().memory()).sum::<usize>()
            + q.sched.iter().map(|s| s.lock().memory()).sum::<usize>()
            + q.keys.read().memory()
    }

    /// Lists up to `limit` live messages (in slot order, not by age).
    pub(crate) fn list(&self, limit: usize) -> Vec<MessageSummary> {
        let mut out = Vec::new();
        self.walk(|m| {
            out.push(m);
            out.len() < limit
        });
        out
    }

    /// Calls `f` for every live message until it returns false.
    /// Each shard is copied out under its lock; `f` runs without locks held.
    pub(crate) fn walk(&self, mut f: impl FnMut(MessageSummary) -> bool) {
        for (s, shard) in self.msgs.iter().enumerate() {
            let batch: Vec<MessageSummary> = {
                let ms = shard.lock();
                ms.msgs
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.gen != 0)
                    .map(|(l, m)| MessageSummary {
                        id: MessageId::new(m.gen, global(s, l as u32)),
                        received: m.received as u64,
                        recipients: m.n as u32,
                        pending: m.live as u32,
                    })
                    .collect()
            };
            for m in batch {
                if !f(m) {
                    return;
                }
            }
        }
    }

    /// Everything about one message: envelope, and per recipient its state,
    /// attempts, next attempt, current route and last error.
    pub(crate) fn inspect(&self, id: MessageId) -> Result<MessageInfo> {
        let (mut info, m) = self.inspect_index(id)?;
        let payload = self.read_message_record(id, (m.seg, m.off, m.len))?;
        let rec = record::decode_message(&payload).ok_or_else(|| Error::Corrupt {
            path: self.dir.join(segment_name(m.seg)),
            offset: m.off as u64,
            reason: "message does not decode".into(),
        })?;
        info.sender = rec.sender.to_string();
        info.received = rec.received;
        info.size = rec.body_len as u64;
        for (r, x) in info.recipients.iter_mut().zip(&rec.rcpts) {
            r.address = x.0.to_string();
            // A final recipient no longer counts in its bucket, which may have
            // been freed and its id reused: show the route it was queued with.
            if r.state.is_final() {
                r.route = x.1.to_string();
            }
        }
        Ok(info)
    }

    /// What the index alone knows of a message (no sender, size or addresses;
    /// no route for final recipients), and its index entry. Serves `explain`
    /// when the message record is damaged.
    pub(crate) fn inspect_index(&self, id: MessageId) -> Result<(MessageInfo, Msg)> {
        let (s, l) = self.locate(id)?;
        let (m, rcpts) = {
            let ms = self.msgs[s].lock();
            let m = *ms.get(l, id.gen()).ok_or(Error::NoSuchMessage(id))?;
            let rc: Vec<(Rcpt, String)> = (m.first..m.first + m.n as u32)
                .map(|r| ms.rcpts[r as usize])
                .map(|r| (r, ms.reason(r.reason()).to_string()))
                .collect();
            (m, rc)
        };
        let keys = self.keys.read();
        let recipients = rcpts
            .into_iter()
            .map(|(r, reason)| RecipientInfo {
                address: String::new(),
                route: if r.state().is_final() {
                    String::new()
                } else {
                    keys.key(r.bucket())
                        .map(|k| k.to_string())
                        .unwrap_or_default()
                },
                state: r.state(),
                attempts: r.attempts(),
                next_attempt: r.next as u64,
                last_error: reason,
            })
            .collect();
        let info = MessageInfo {
            id,
            sender: String::new(),
            received: m.received as u64,
            size: 0,
            recipients,
        };
        Ok((info, m))
    }

    /// Reads and checks every live message record (checksum and decoding).
    /// Damaged messages are reported in stats and their ids returned. Not a hot-path
    /// operation: it reads every live body once.
    pub(crate) fn verify(&self) -> Result<Vec<MessageId>> {
        let q = self;
        let mut bad = Vec::new();
        let mut all = Vec::new();
        self.walk(|m| {
            all.push(m.id);
            true
        });
        for id in all {
            let Some(loc) = q.location(id) else { continue };
            let ok = match q.read_message_record(id, loc) {
                Ok(p) => record::decode_message(&p).is_some_and(|r| r.id == id.0),
                Err(Error::NoSuchMessage(_)) => continue,
                Err(Error::Corrupt { .. }) => false,
                Err(e) => return Err(e),
            };
            if !ok {
                q.report.lock().note_corrupt_message(id, "verify");
                bad.push(id);
            }
        }
        Ok(bad)
    }
}

/// The figures of one bucket.
pub(super) fn bucket_stat(b: &Bucket, ages: [u64; 10], now: u32) -> BucketStats {
    BucketStats {
        key: b.key.to_string(),
        ready: b.count(RcptState::Ready) as u64,
        deferred: b.count(RcptState::Deferred) as u64,
        held: b.count(RcptState::Held) as u64,
        inflight: b.count(RcptState::Leased) as u64,
        bounce_pending: (b.count(RcptState::Failed) + b.count(RcptState::Expired)) as u64,
        sessions: b.slots.len() as u64,
        window: b.window as u64,
        limit: b.policy.limit as u64,
        suspended: b.suspended,
        suspended_until: b.resume_at as u64,
        suspended_by: b.suspended_by.as_deref().map(str::to_string),
        throttled_until: b.throttle.as_ref().map_or(0, |t| t.until as u64),
        throttled_by: b.throttle.as_ref().map(|t| t.pattern.to_string()),
        dead_until: b.dead_until as u64,
        delivered: b.delivered,
        deferrals: b.deferrals,
        failures: b.failures,
        site_failures: b.site_failure_total,
        last_site_failure: b.last_site_failure.as_deref().map(str::to_string),
        ages,
        rate_limit: b.rate.as_ref().map(|r| r.limit()),
        rate_next: b.rate.as_ref().map_or(0, |r| r.allowed_at().div_ceil(1000)),
        sources: (0..b.paths.len())
            .map(|i| {
                let susp = b.path_suspension(&b.paths[i].source.name, now);
                crate::stats::PathStats {
                    source: b.paths[i].source.name.to_string(),
                    sessions: b.path_open(i) as u64,
                    next: b.path_time(i, now).unwrap_or(0) as u64,
                    suspended_by: susp.map(|s| s.by.to_string()),
                    suspended_until: susp.map_or(0, |s| s.until as u64),
                }
            })
            .collect(),
        source_limit: b.path_limit as u64,
        source_rate_limit: (!b.path_rate.is_none()).then_some(b.path_rate),
    }
}
