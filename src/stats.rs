//! Observability: stats snapshot, qshape-style age histogram, Prometheus text,
//! message listing and inspection, memory accounting, and a scrub of live records.

use crate::error::{Error, Result};
use crate::index::*;
use crate::queue::Queue;
use crate::record;
use crate::types::*;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Upper bounds (minutes) of the age columns, as in Postfix `qshape`:
/// 5, 10, 20, 40, 80, 160, 320, 640, 1280 and older.
pub const AGE_BUCKETS_MINUTES: [u32; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

fn age_column(age_secs: u32) -> usize {
    let mins = age_secs / 60;
    AGE_BUCKETS_MINUTES
        .iter()
        .position(|&m| mins < m)
        .unwrap_or(AGE_BUCKETS_MINUTES.len())
}

/// One destination.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketStats {
    /// Routing key.
    pub key: String,
    /// Ready recipients.
    pub ready: u64,
    /// Deferred recipients.
    pub deferred: u64,
    /// Held recipients.
    pub held: u64,
    /// Recipients in flight.
    pub inflight: u64,
    /// Failed/expired recipients whose DSN is pending.
    pub bounce_pending: u64,
    /// Open sessions (concurrency slots in use).
    pub sessions: u64,
    /// Concurrency window.
    pub window: u64,
    /// Concurrency limit.
    pub limit: u64,
    /// Suspended by the operator.
    pub suspended: bool,
    /// Marked dead until this unix time (0: alive).
    pub dead_until: u64,
    /// Recipients delivered through this bucket since open.
    pub delivered: u64,
    /// Temporary failures since open.
    pub deferrals: u64,
    /// Permanent failures and expiries since open.
    pub failures: u64,
    /// Site failures since open.
    pub site_failures: u64,
    /// Queued recipients by age (columns of [`AGE_BUCKETS_MINUTES`] plus one older).
    pub ages: [u64; 10],
    /// Reason given with the last site failure (connection refused, TLS failure…).
    pub last_site_failure: Option<String>,
}

impl BucketStats {
    /// Recipients still queued (all non-final states).
    pub fn depth(&self) -> u64 {
        self.ready + self.deferred + self.held + self.inflight + self.bounce_pending
    }
}

/// A snapshot of the queue.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Live messages.
    pub messages: u64,
    /// Recipients by state name (ready, deferred, held, inflight, failed, expired, corrupt).
    pub by_state: Vec<(&'static str, u64)>,
    /// Age of the oldest queued message (seconds).
    pub oldest_age: u64,
    /// Per destination, deepest first.
    pub buckets: Vec<BucketStats>,
    /// Messages accepted since open.
    pub accepted: u64,
    /// Recipients accepted since open.
    pub accepted_recipients: u64,
    /// Recipients delivered since open.
    pub delivered: u64,
    /// Temporary failures since open.
    pub deferred: u64,
    /// Permanent failures since open.
    pub failed: u64,
    /// Expiries since open.
    pub expired: u64,
    /// DSNs acknowledged since open.
    pub bounced: u64,
    /// Site failures since open.
    pub site_failures: u64,
    /// Sessions reclaimed by lease expiry since open.
    pub lease_reclaims: u64,
    /// Damage findings (recovery plus those found at read time).
    pub corrupt: u64,
    /// Ids of messages found damaged.
    pub corrupt_ids: Vec<MessageId>,
    /// fdatasync calls since open.
    pub fsyncs: u64,
    /// Group commits since open.
    pub commits: u64,
    /// Bytes appended since open.
    pub bytes_written: u64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
    /// Segments deleted by compaction since open.
    pub segments_deleted: u64,
    /// Bytes of RAM held by the index (recipients, messages, buckets, timers).
    pub index_bytes: u64,
    /// The queue refuses writes after this storage failure.
    pub poisoned: Option<String>,
    /// The last automatic checkpoint/compaction failure, if the last attempt failed.
    pub maintenance_error: Option<String>,
    /// Last-error texts stored in memory in normalised form (transaction ids
    /// replaced) because the per-shard reason cache was full; the exact text is
    /// in the log record. Cumulative.
    pub reasons_normalised: u64,
    /// Last-error texts not kept in memory at all (cache full even for the
    /// normalised form). Cumulative.
    pub reasons_not_kept: u64,
    /// Idle destinations (buckets) freed since open.
    pub buckets_freed: u64,
    /// Why messages were found damaged (message id, what check failed).
    pub corrupt_reasons: Vec<(MessageId, String)>,
}

impl Stats {
    /// Count of recipients in a state (by name).
    pub fn count(&self, state: &str) -> u64 {
        self.by_state
            .iter()
            .find(|(n, _)| *n == state)
            .map(|x| x.1)
            .unwrap_or(0)
    }

    /// Queued recipients (all non-final states).
    pub fn recipients(&self) -> u64 {
        self.by_state.iter().map(|x| x.1).sum()
    }

    /// Renders the Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP mailq_recipients Queued recipients by state.");
        let _ = writeln!(s, "# TYPE mailq_recipients gauge");
        for (n, c) in &self.by_state {
            let _ = writeln!(s, "mailq_recipients{{state=\"{n}\"}} {c}");
        }
        let gauges = [
            ("messages", "Live messages.", self.messages),
            (
                "oldest_age_seconds",
                "Age of the oldest queued message.",
                self.oldest_age,
            ),
            (
                "corrupt",
                "Damage findings (damaged records, missing segments, corrupt messages).",
                self.corrupt,
            ),
            (
                "index_bytes",
                "Bytes of RAM held by the in-memory index.",
                self.index_bytes,
            ),
            (
                "poisoned",
                "1 when the queue refuses writes after a storage failure.",
                self.poisoned.is_some() as u64,
            ),
        ];
        for (n, h, v) in gauges {
            let _ = writeln!(
                s,
                "# HELP mailq_{n} {h}\n# TYPE mailq_{n} gauge\nmailq_{n} {v}"
            );
        }
        let counters = [
            (
                "accepted_messages_total",
                "Messages accepted.",
                self.accepted,
            ),
            (
                "accepted_recipients_total",
                "Recipients accepted.",
                self.accepted_recipients,
            ),
            ("delivered_total", "Recipients delivered.", self.delivered),
            ("deferred_total", "Temporary failures.", self.deferred),
            ("failed_total", "Permanent failures.", self.failed),
            ("expired_total", "Recipients expired.", self.expired),
            ("bounced_total", "DSNs acknowledged.", self.bounced),
            (
                "site_failures_total",
                "Destination (site) failures.",
                self.site_failures,
            ),
            (
                "lease_reclaims_total",
                "Sessions reclaimed after their lease expired.",
                self.lease_reclaims,
            ),
            ("fsyncs_total", "fdatasync calls on the log.", self.fsyncs),
            ("group_commits_total", "Group commits.", self.commits),
            (
                "written_bytes_total",
                "Bytes appended to the log.",
                self.bytes_written,
            ),
            (
                "checkpoints_total",
                "Checkpoints written.",
                self.checkpoints,
            ),
        ];
        for (n, h, v) in counters {
            let _ = writeln!(
                s,
                "# HELP mailq_{n} {h}\n# TYPE mailq_{n} counter\nmailq_{n} {v}"
            );
        }
        type Col = (&'static str, &'static str, fn(&BucketStats) -> u64);
        let per_bucket: [Col; 6] = [
            ("bucket_depth", "Queued recipients per destination.", |b| {
                b.depth()
            }),
            ("bucket_ready", "Ready recipients per destination.", |b| {
                b.ready
            }),
            (
                "bucket_deferred",
                "Deferred recipients per destination.",
                |b| b.deferred,
            ),
            (
                "bucket_inflight",
                "Recipients in flight per destination.",
                |b| b.inflight,
            ),
            ("bucket_sessions", "Open sessions per destination.", |b| {
                b.sessions
            }),
            (
                "bucket_window",
                "Concurrency window per destination.",
                |b| b.window,
            ),
        ];
        for (n, h, f) in per_bucket {
            let _ = writeln!(s, "# HELP mailq_{n} {h}\n# TYPE mailq_{n} gauge");
            for b in &self.buckets {
                let _ = writeln!(s, "mailq_{n}{{key=\"{}\"}} {}", escape(&b.key), f(b));
            }
        }
        s
    }

    /// Renders a `qshape`-style table of the `top` deepest destinations.
    pub fn qshape(&self, top: usize) -> String {
        let mut s = String::new();
        let _ = write!(s, "{:<28} {:>8}", "", "T");
        for m in AGE_BUCKETS_MINUTES {
            let _ = write!(s, " {m:>7}");
        }
        let _ = writeln!(s, " {:>7}", "1280+");
        let mut total = [0u64; 10];
        for b in &self.buckets {
            for (t, a) in total.iter_mut().zip(b.ages) {
                *t += a;
            }
        }
        let row = |s: &mut String, name: &str, ages: &[u64; 10]| {
            let t: u64 = ages.iter().sum();
            let _ = write!(s, "{:<28} {:>8}", truncate(name, 28), t);
            for a in ages {
                let _ = write!(s, " {a:>7}");
            }
            let _ = writeln!(s);
        };
        row(&mut s, "TOTAL", &total);
        for b in self.buckets.iter().take(top) {
            row(&mut s, &b.key, &b.ages);
        }
        s
    }
}

fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut e = n;
    while !s.is_char_boundary(e) {
        e -= 1;
    }
    &s[..e]
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One recipient of an inspected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientInfo {
    /// Address.
    pub address: String,
    /// Current routing key.
    pub route: String,
    /// State.
    pub state: RcptState,
    /// Attempts so far.
    pub attempts: u16,
    /// Next attempt (unix seconds) when deferred.
    pub next_attempt: u64,
    /// Last error.
    pub last_error: String,
}

/// An inspected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Id.
    pub id: MessageId,
    /// Envelope sender.
    pub sender: String,
    /// Accepted at (unix seconds).
    pub received: u64,
    /// Body size in bytes.
    pub size: u64,
    /// Every recipient (final ones included while the message is queued).
    pub recipients: Vec<RecipientInfo>,
}

/// A line of [`Queue::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    /// Id.
    pub id: MessageId,
    /// Accepted at (unix seconds).
    pub received: u64,
    /// Recipients.
    pub recipients: u32,
    /// Recipients not yet final.
    pub pending: u32,
}

impl Queue {
    /// A snapshot of counts, per-destination shape and counters.
    /// Costs one pass over the in-memory index (not the disk).
    pub fn stats(&self) -> Stats {
        let q = &self.inner;
        let now = q.now();
        let mut st = Stats::default();
        let mut by_state = [0u64; 11];
        let mut ages: HashMap<u32, [u64; 10]> = HashMap::new();
        let mut oldest = now;
        let mut index_bytes = 0usize;
        for ms in &q.msgs {
            let ms = ms.lock();
            index_bytes += ms.memory();
            st.messages += ms.live_msgs as u64;
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
        for s in [
            RcptState::Ready,
            RcptState::Deferred,
            RcptState::Held,
            RcptState::Leased,
            RcptState::Failed,
            RcptState::Expired,
            RcptState::Corrupt,
        ] {
            st.by_state.push((s.name(), by_state[s as usize]));
        }
        st.oldest_age = if st.messages > 0 {
            (now - oldest) as u64
        } else {
            0
        };
        index_bytes += q.keys.read().memory();
        for (s, ss) in q.sched.iter().enumerate() {
            let ss = ss.lock();
            index_bytes += ss.memory();
            for (l, b) in ss.buckets.iter().enumerate() {
                let id = global(s, l as u32);
                let a = ages.get(&id).copied().unwrap_or_default();
                let bs = BucketStats {
                    key: b.key.to_string(),
                    ready: b.count(RcptState::Ready) as u64,
                    deferred: b.count(RcptState::Deferred) as u64,
                    held: b.count(RcptState::Held) as u64,
                    inflight: b.count(RcptState::Leased) as u64,
                    bounce_pending: (b.count(RcptState::Failed) + b.count(RcptState::Expired))
                        as u64,
                    sessions: b.slots.len() as u64,
                    window: b.window as u64,
                    limit: b.policy.limit as u64,
                    suspended: b.suspended,
                    dead_until: b.dead_until as u64,
                    delivered: b.delivered,
                    deferrals: b.deferrals,
                    failures: b.failures,
                    site_failures: b.site_failure_total,
                    last_site_failure: b.last_site_failure.as_deref().map(str::to_string),
                    ages: a,
                };
                if bs.depth() > 0 || bs.sessions > 0 || bs.suspended || bs.dead_until != 0 {
                    st.buckets.push(bs);
                }
            }
        }
        st.buckets
            .sort_by(|a, b| b.depth().cmp(&a.depth()).then(a.key.cmp(&b.key)));
        let c = &q.counters;
        st.accepted = c.accepted_msgs.load(Ordering::Relaxed);
        st.accepted_recipients = c.accepted_rcpts.load(Ordering::Relaxed);
        st.delivered = c.delivered.load(Ordering::Relaxed);
        st.deferred = c.deferred.load(Ordering::Relaxed);
        st.failed = c.failed.load(Ordering::Relaxed);
        st.expired = c.expired.load(Ordering::Relaxed);
        st.bounced = c.bounced.load(Ordering::Relaxed);
        st.site_failures = c.site_failures.load(Ordering::Relaxed);
        st.lease_reclaims = c.lease_reclaims.load(Ordering::Relaxed);
        let rep = q.report.lock();
        st.corrupt = rep.corrupt_count() as u64;
        st.corrupt_ids = rep.corrupt_messages.clone();
        st.corrupt_reasons = rep
            .corrupt_messages
            .iter()
            .map(|id| (*id, rep.corrupt_reason(*id).unwrap_or("").to_string()))
            .collect();
        drop(rep);
        let lc = q.log.counters();
        st.fsyncs = lc.syncs;
        st.commits = lc.commits;
        st.bytes_written = lc.bytes;
        let m = q.maint.lock();
        st.checkpoints = m.checkpoints;
        st.segments_deleted = m.segments_deleted;
        st.maintenance_error = m.last_error.clone();
        st.buckets_freed = m.buckets_freed;
        drop(m);
        for ms in &q.msgs {
            let ms = ms.lock();
            st.reasons_normalised += ms.reasons_normalised();
            st.reasons_not_kept += ms.reasons_not_kept();
        }
        st.index_bytes = index_bytes as u64;
        st.poisoned = q.log.poisoned();
        st
    }

    /// Bytes of RAM held by the in-memory index (recipients, messages, buckets,
    /// ready queues, timers), counted from allocated capacities.
    pub fn memory_usage(&self) -> usize {
        let q = &self.inner;
        q.msgs.iter().map(|m| m.lock().memory()).sum::<usize>()
            + q.sched.iter().map(|s| s.lock().memory()).sum::<usize>()
            + q.keys.read().memory()
    }

    /// Lists up to `limit` live messages (in slot order, not by age).
    pub fn list(&self, limit: usize) -> Vec<MessageSummary> {
        let mut out = Vec::new();
        self.walk(|m| {
            out.push(m);
            out.len() < limit
        });
        out
    }

    /// Calls `f` for every live message until it returns false.
    /// Each shard is copied out under its lock; `f` runs without locks held.
    pub fn walk(&self, mut f: impl FnMut(MessageSummary) -> bool) {
        for (s, shard) in self.inner.msgs.iter().enumerate() {
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
    pub fn inspect(&self, id: MessageId) -> Result<MessageInfo> {
        let q = &self.inner;
        let (s, l) = q.locate(id)?;
        let (m, rcpts, reasons) = {
            let ms = q.msgs[s].lock();
            let m = *ms.get(l, id.gen()).ok_or(Error::NoSuchMessage(id))?;
            let rc: Vec<Rcpt> = (m.first..m.first + m.n as u32)
                .map(|r| ms.rcpts[r as usize])
                .collect();
            let reasons: Vec<String> = rc
                .iter()
                .map(|r| ms.reason(r.reason()).to_string())
                .collect();
            (m, rc, reasons)
        };
        let payload = q.read_message_record(id, (m.seg, m.off, m.len))?;
        let rec = record::decode_message(&payload).ok_or_else(|| Error::Corrupt {
            path: q.dir.join(crate::log::segment_name(m.seg)),
            offset: m.off as u64,
            reason: "message does not decode".into(),
        })?;
        let keys = q.keys.read();
        let recipients = rcpts
            .iter()
            .zip(reasons)
            .enumerate()
            .map(|(i, (r, reason))| RecipientInfo {
                address: rec
                    .rcpts
                    .get(i)
                    .map(|x| x.0.to_string())
                    .unwrap_or_default(),
                // A final recipient no longer counts in its bucket, which may have
                // been freed and its id reused: show the route it was queued with.
                route: if r.state().is_final() {
                    rec.rcpts
                        .get(i)
                        .map(|x| x.1.to_string())
                        .unwrap_or_default()
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
        Ok(MessageInfo {
            id,
            sender: rec.sender.to_string(),
            received: rec.received,
            size: rec.body_len as u64,
            recipients,
        })
    }

    /// Reads and checks every live message record (checksum and decoding).
    /// Damaged messages are reported in stats and their ids returned. Not a hot-path
    /// operation: it reads every live body once.
    pub fn verify(&self) -> Result<Vec<MessageId>> {
        let q = &self.inner;
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
