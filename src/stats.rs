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
    /// When that suspension ends by itself (unix seconds; 0: until resumed).
    pub suspended_until: u64,
    /// The reply rule (its pattern) that suspended it, if a rule did.
    pub suspended_by: Option<String>,
    /// A reply rule lowers its limits (`limit`, `rate_limit` are the lowered
    /// ones) until this time (0: not throttled) …
    pub throttled_until: u64,
    /// … the rule's pattern ("" when the throttle was restored from disk).
    pub throttled_by: Option<String>,
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
    /// Message-rate limits, if set.
    pub rate_limit: Option<crate::types::RateLimit>,
    /// When the rate limits allow the next message (unix seconds; at or
    /// before now: now; 0 without limits).
    pub rate_next: u64,
    /// Its egress paths, one per source of its pool (empty without sources).
    pub sources: Vec<PathStats>,
    /// Sessions per source at most (0: no limit).
    pub source_limit: u64,
    /// Message-rate limits per source, if set.
    pub source_rate_limit: Option<crate::types::RateLimit>,
}

/// A destination's egress path through one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathStats {
    /// The source's name.
    pub source: String,
    /// Sessions open through it.
    pub sessions: u64,
    /// When it may send the next message, if it waits (its per-source rate,
    /// the source's warm-up day or a rule's suspension; unix seconds; 0: now).
    pub next: u64,
    /// The pattern of the reply rule that suspended this path, while it is
    /// suspended (`Some("")` when the suspension was read back from disk).
    pub suspended_by: Option<String>,
    /// When that suspension ends (unix seconds; 0: not suspended).
    pub suspended_until: u64,
}

/// An egress source and its warm-up state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// The source's name.
    pub name: String,
    /// Which day of its warm-up it is on (1-based).
    pub day: u32,
    /// Today's cap from its schedule (`None`: no warm-up schedule).
    pub per_day: Option<u32>,
    /// Messages sent from it today.
    pub used: u32,
    /// When today ends (unix seconds).
    pub day_ends: u64,
    /// Destinations whose pool it is in (`*` for the default pool).
    pub pools: Vec<String>,
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
    /// Segments made ahead from a deleted segment's file (no zeros written)
    /// since open.
    pub segments_reused: u64,
    /// Live messages compaction copied forward since open.
    pub messages_copied: u64,
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
    /// Bytes of live message records (what `Options::max_queued_bytes` limits).
    pub queued_bytes: u64,
    /// The queue filesystem's free space as last looked up (less what was
    /// accepted since), if the free-disk watermark is checked.
    pub disk_free: Option<u64>,
    /// Why `enqueue` refuses mail now (a backpressure limit reached), if it does.
    pub backpressure: Option<String>,
    /// Messages refused by backpressure since open.
    pub refused: u64,
    /// Delay warnings acknowledged (sent by the MTA) since open.
    pub delay_warnings: u64,
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

    /// Renders the Prometheus text exposition format, with per-destination
    /// series for the [`METRIC_DESTINATIONS`] deepest destinations.
    pub fn prometheus(&self) -> String {
        self.prometheus_top(METRIC_DESTINATIONS)
    }

    /// Renders the Prometheus text exposition format with per-destination
    /// series for the `top` deepest destinations only, plus one `key="other"`
    /// series summing the rest, so the number of series stays bounded however
    /// many destinations there are (the extra label `aggregate="true"` keeps
    /// it apart from a destination really named `other`).
    pub fn prometheus_top(&self, top: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP mailq_recipients Queued recipients by state.");
        let _ = writeln!(s, "# TYPE mailq_recipients gauge");
        for (n, c) in &self.by_state {
            let _ = writeln!(s, "mailq_recipients{{state=\"{n}\"}} {c}");
        }
        let gauges = [
            self.messages,
            self.oldest_age,
            self.corrupt,
            self.index_bytes,
            self.poisoned.is_some() as u64,
            self.maintenance_error.is_some() as u64,
            self.buckets.len() as u64,
            self.queued_bytes,
            self.backpressure.is_some() as u64,
        ];
        let counters = [
            self.accepted,
            self.accepted_recipients,
            self.delivered,
            self.deferred,
            self.failed,
            self.expired,
            self.bounced,
            self.site_failures,
            self.lease_reclaims,
            self.fsyncs,
            self.commits,
            self.bytes_written,
            self.checkpoints,
            self.segments_deleted,
            self.segments_reused,
            self.messages_copied,
            self.refused,
            self.delay_warnings,
        ];
        write_family(&mut s, "gauge", &GAUGES, &gauges);
        write_family(&mut s, "counter", &COUNTERS, &counters);
        let figures = |b: &BucketStats| {
            [
                b.depth(),
                b.ready,
                b.deferred,
                b.held,
                b.inflight,
                b.sessions,
                b.window,
                b.suspended as u64,
            ]
        };
        let shown = self.buckets.len().min(top);
        let mut other = [0u64; BUCKET_GAUGES.len()];
        for b in &self.buckets[shown..] {
            for (o, v) in other.iter_mut().zip(figures(b)) {
                *o += v;
            }
        }
        for (i, (n, h)) in BUCKET_GAUGES.iter().enumerate() {
            let _ = writeln!(s, "# HELP mailq_{n} {h}\n# TYPE mailq_{n} gauge");
            for b in &self.buckets[..shown] {
                let _ = writeln!(
                    s,
                    "mailq_{n}{{key=\"{}\"}} {}",
                    escape(&b.key),
                    figures(b)[i]
                );
            }
            if shown < self.buckets.len() {
                let _ = writeln!(
                    s,
                    "mailq_{n}{{key=\"other\",aggregate=\"true\"}} {}",
                    other[i]
                );
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

/// Per-destination series [`Stats::prometheus`] exports (the rest are summed
/// into one `key="other"` series).
pub const METRIC_DESTINATIONS: usize = 50;

/// Gauges: (name after `mailq_`, help), in the order `prometheus` lists values.
const GAUGES: [(&str, &str); 9] = [
    ("messages", "Live messages."),
    ("oldest_age_seconds", "Age of the oldest queued message."),
    (
        "corrupt",
        "Damage findings (damaged records, missing segments, corrupt messages).",
    ),
    ("index_bytes", "Bytes of RAM held by the in-memory index."),
    (
        "poisoned",
        "1 when the queue refuses writes after a storage failure.",
    ),
    (
        "maintenance_failing",
        "1 when the last automatic checkpoint or compaction failed.",
    ),
    (
        "destinations",
        "Destinations with mail, sessions or operator state.",
    ),
    ("queued_bytes", "Bytes of live message records."),
    (
        "backpressure",
        "1 when enqueue refuses mail (452 4.3.1): a queued-recipients, queued-bytes or free-disk limit is reached.",
    ),
];

/// Counters, likewise.
const COUNTERS: [(&str, &str); 18] = [
    ("accepted_messages_total", "Messages accepted."),
    ("accepted_recipients_total", "Recipients accepted."),
    ("delivered_total", "Recipients delivered."),
    ("deferred_total", "Temporary failures."),
    ("failed_total", "Permanent failures."),
    ("expired_total", "Recipients expired."),
    ("bounced_total", "DSNs acknowledged."),
    ("site_failures_total", "Destination (site) failures."),
    (
        "lease_reclaims_total",
        "Sessions reclaimed after their lease expired.",
    ),
    ("fsyncs_total", "fdatasync calls on the log."),
    ("group_commits_total", "Group commits."),
    ("written_bytes_total", "Bytes appended to the log."),
    ("checkpoints_total", "Checkpoints written."),
    (
        "segments_deleted_total",
        "Log segments deleted by compaction.",
    ),
    (
        "segments_reused_total",
        "Log segments made ahead from a deleted segment's file (no zeros written).",
    ),
    (
        "messages_copied_total",
        "Live messages compaction copied forward.",
    ),
    (
        "enqueue_refused_total",
        "Messages refused by backpressure (answered 452 4.3.1).",
    ),
    (
        "delay_warnings_total",
        "Delay warnings sent (acknowledged by the MTA).",
    ),
];

/// Per-destination gauges (label `key`), likewise.
const BUCKET_GAUGES: [(&str, &str); 8] = [
    ("bucket_depth", "Queued recipients per destination."),
    ("bucket_ready", "Ready recipients per destination."),
    ("bucket_deferred", "Deferred recipients per destination."),
    ("bucket_held", "Held recipients per destination."),
    ("bucket_inflight", "Recipients in flight per destination."),
    ("bucket_sessions", "Open sessions per destination."),
    ("bucket_window", "Concurrency window per destination."),
    ("bucket_suspended", "1 when the destination is suspended."),
];

/// Writes one unlabelled metric per (name, help) with its value.
fn write_family(s: &mut String, kind: &str, names: &[(&str, &str)], values: &[u64]) {
    for ((n, h), v) in names.iter().zip(values) {
        let _ = writeln!(
            s,
            "# HELP mailq_{n} {h}\n# TYPE mailq_{n} {kind}\nmailq_{n} {v}"
        );
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

/// A line of [`Queue::list`](crate::Queue::list).
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
