//! The observability data the queue reports — stats, per-destination shape,
//! message summaries and inspection results — and its text forms: Prometheus
//! exposition and a `qshape`-style age table. Plain data; depends on `types`.

use crate::types::*;
use std::fmt::Write;

/// Upper bounds (minutes) of the age columns, as in Postfix `qshape`:
/// 5, 10, 20, 40, 80, 160, 320, 640, 1280 and older.
pub const AGE_BUCKETS_MINUTES: [u32; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// The age column of a message `age_secs` old.
pub(crate) fn age_column(age_secs: u32) -> usize {
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
            let _ = write!(s, "{:<28} {:>8}", crate::types::prefix(name, 28), t);
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
