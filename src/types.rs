//! Public value types: ids, states, outcomes, options.
//! Depends on `storage::vfs` (the seam `Options` carries).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Identifies a queued message. Stable across restarts; never reused while the
/// message is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl MessageId {
    pub(crate) fn new(gen: u32, slot: u32) -> Self {
        MessageId(((gen as u64) << 32) | slot as u64)
    }
    pub(crate) fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub(crate) fn slot(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// State of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RcptState {
    /// Accepted, not yet visible to the scheduler (only during enqueue).
    New = 0,
    /// Waiting in its bucket's ready queue.
    Ready = 1,
    /// Waiting for its next attempt time.
    Deferred = 2,
    /// Held by the operator; not delivered until released.
    Held = 3,
    /// Delivered (final).
    Delivered = 4,
    /// Permanently failed; a DSN is pending.
    Failed = 5,
    /// Lifetime exceeded; a DSN is pending.
    Expired = 6,
    /// Failed or expired and its DSN was acknowledged (final).
    Bounced = 7,
    /// Deleted by the operator (final).
    Deleted = 8,
    /// Handed to a delivery session.
    Leased = 9,
    /// The message record is damaged; kept for the operator.
    Corrupt = 10,
}

impl RcptState {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        use RcptState::*;
        Some(match v {
            0 => New,
            1 => Ready,
            2 => Deferred,
            3 => Held,
            4 => Delivered,
            5 => Failed,
            6 => Expired,
            7 => Bounced,
            8 => Deleted,
            9 => Leased,
            10 => Corrupt,
            _ => return None,
        })
    }

    /// Final states: the recipient no longer occupies the queue.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RcptState::Delivered | RcptState::Bounced | RcptState::Deleted
        )
    }

    /// What is written to disk for this in-memory state.
    pub(crate) fn persisted(self) -> RcptState {
        match self {
            RcptState::New | RcptState::Leased | RcptState::Corrupt => RcptState::Ready,
            s => s,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        use RcptState::*;
        match self {
            New => "new",
            Ready => "ready",
            Deferred => "deferred",
            Held => "held",
            Delivered => "delivered",
            Failed => "failed",
            Expired => "expired",
            Bounced => "bounced",
            Deleted => "deleted",
            Leased => "inflight",
            Corrupt => "corrupt",
        }
    }
}

/// The states of a recipient still in the queue and not damaged, in the
/// order stats report them (then `corrupt`).
pub(crate) const WAITING_STATES: [RcptState; 6] = [
    RcptState::Ready,
    RcptState::Deferred,
    RcptState::Held,
    RcptState::Leased,
    RcptState::Failed,
    RcptState::Expired,
];

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop.
    Delivered,
    /// Temporary failure (4xx): retry later.
    TempFail {
        /// The server's reply or a local reason.
        reason: String,
        /// Retry no earlier than this (overrides the backoff when longer).
        retry_after: Option<Duration>,
    },
    /// Permanent failure (5xx): a DSN is due.
    PermFail {
        /// The server's reply or a local reason.
        reason: String,
    },
}

impl Outcome {
    /// Shorthand for a temporary failure without retry-after.
    pub fn temp(reason: impl Into<String>) -> Self {
        Outcome::TempFail {
            reason: reason.into(),
            retry_after: None,
        }
    }
    /// Shorthand for a permanent failure.
    pub fn perm(reason: impl Into<String>) -> Self {
        Outcome::PermFail {
            reason: reason.into(),
        }
    }
}

/// A recipient of a new message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address (`local@domain`).
    pub address: String,
    /// Routing key; `None` means the address's domain, lower-cased.
    pub route: Option<String>,
}

impl Recipient {
    /// A recipient routed by its domain.
    pub fn new(address: impl Into<String>) -> Self {
        Recipient {
            address: address.into(),
            route: None,
        }
    }
    /// A recipient with an explicit routing key (e.g. an MX set).
    pub fn with_route(address: impl Into<String>, route: impl Into<String>) -> Self {
        Recipient {
            address: address.into(),
            route: Some(route.into()),
        }
    }
}

impl<S: Into<String>> From<S> for Recipient {
    fn from(s: S) -> Self {
        Recipient::new(s)
    }
}

/// A message to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewMessage<'a> {
    /// Envelope sender; empty for the null sender (bounces).
    pub sender: &'a str,
    /// Recipients (at least one).
    pub recipients: Vec<Recipient>,
    /// Opaque bytes the MTA wants back at delivery time (headers, ids, …).
    pub meta: &'a [u8],
    /// The message content.
    pub body: &'a [u8],
}

/// A source of time (unix seconds). Tests use [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// Now, in unix seconds.
    fn now(&self) -> u64;
    /// Now, in unix milliseconds (used for the outcome sync interval).
    fn now_millis(&self) -> u64 {
        self.now().saturating_mul(1000)
    }
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        self.now_millis() / 1000
    }
    /// The coarse realtime clock (a few ms of resolution, no hardware counter
    /// read): mail is scheduled in seconds and outcomes synced per 100 ms, and
    /// the scheduler reads the clock several times per delivery.
    fn now_millis(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into our valid local.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
        if r != 0 {
            return std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
                .unwrap_or(0);
        }
        (ts.tv_sec.max(0) as u64)
            .saturating_mul(1000)
            .saturating_add(ts.tv_nsec.max(0) as u64 / 1_000_000)
    }
}

/// A clock that only moves when told to (millisecond resolution).
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at `t` unix seconds.
    pub fn new(t: u64) -> Arc<Self> {
        Arc::new(ManualClock(std::sync::atomic::AtomicU64::new(
            t.saturating_mul(1000),
        )))
    }
    /// Moves the clock forward.
    pub fn advance(&self, secs: u64) {
        self.advance_millis(secs.saturating_mul(1000));
    }
    /// Moves the clock forward by milliseconds.
    pub fn advance_millis(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
    /// Sets the clock (unix seconds; may move it backwards).
    pub fn set(&self, t: u64) {
        self.0
            .store(t.saturating_mul(1000), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now_millis() / 1000
    }
    fn now_millis(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Per-destination concurrency policy (Postfix-like defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// Initial window (Postfix `initial_destination_concurrency`, 5).
    pub initial: u16,
    /// Upper limit (Postfix `default_destination_concurrency_limit`, 20).
    pub limit: u16,
    /// Consecutive site failures that mark the destination dead (one cohort).
    pub dead_after: u16,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            initial: 5,
            limit: 20,
            dead_after: 5,
        }
    }
}

/// Message-rate limits of a destination (0: no limit for that period), as
/// receivers count them: a delivery needs every limit and the concurrency
/// window to allow it. Each limit lets one second take its whole share at
/// once (the scheduler decides at whole seconds), never a burst of its count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages per second.
    pub per_second: u32,
    /// Messages per minute.
    pub per_minute: u32,
    /// Messages per hour.
    pub per_hour: u32,
    /// Messages per day.
    pub per_day: u32,
}

impl RateLimit {
    /// The counts, per second, minute, hour, day.
    pub fn counts(&self) -> [u32; 4] {
        [
            self.per_second,
            self.per_minute,
            self.per_hour,
            self.per_day,
        ]
    }

    /// True when nothing is limited.
    pub fn is_none(&self) -> bool {
        self.counts() == [0; 4]
    }
}

/// One step of an egress source's warm-up schedule: from day `day` of the
/// source's life (day 1 is the day it was first given a schedule) on, at
/// most `per_day` messages a day leave from it, to all destinations
/// together, until the next step's day. Days before the first step use the
/// first step's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmupStep {
    /// The first day (1-based) this cap applies.
    pub day: u32,
    /// Messages a day from that day on (at least 1).
    pub per_day: u32,
}

impl WarmupStep {
    /// A geometric ramp from `first` messages a day on day 1 to `last` on
    /// day `days` (one step a day), e.g. `ramp(50, 100_000, 30)`.
    pub fn ramp(first: u32, last: u32, days: u32) -> Vec<WarmupStep> {
        let (first, last, days) = (first.max(1), last.max(first.max(1)), days.max(1));
        let k = (last as f64 / first as f64).powf(1.0 / (days.max(2) - 1) as f64);
        (1..=days)
            .map(|d| WarmupStep {
                day: d,
                per_day: if d == days {
                    last
                } else {
                    ((first as f64) * k.powi(d as i32 - 1))
                        .round()
                        .min(last as f64) as u32
                },
            })
            .collect()
    }
}

/// What a [`ReplyRule`] does when a reply matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleAction {
    /// Suspend the destination for this long (1 s to 68 years): a timed
    /// suspension that is persisted, ends by itself, and shows in `explain`
    /// and the destination's stats with the rule. A longer suspension in
    /// force is not shortened.
    Suspend(Duration),
    /// Lower the destination's limits for this long: its concurrency limit to
    /// at most `window` (0: unchanged) and its message rate to at most `rate`
    /// per period (periods left at 0 unchanged); the destination's own limits
    /// come back when it ends. Persisted, ends by itself, shown with the rule.
    Throttle {
        /// Concurrency limit while it lasts (0: unchanged).
        window: u16,
        /// Message-rate limits while it lasts (0 for a period: unchanged).
        rate: RateLimit,
        /// How long (1 s to 68 years).
        duration: Duration,
    },
    /// Take a temporary failure as permanent: the recipient fails now and
    /// its bounce is handed out (a 4xx the receiver means as final).
    Permanent,
    /// Suspend the egress path the reply came through — the session's source
    /// to this destination — for this long (1 s to 68 years), as KumoMTA's
    /// automation does: the destination's other sources go on. Persisted,
    /// ends by itself, shown with the rule. A session without a source
    /// suspends the destination (as [`RuleAction::Suspend`]).
    SuspendSource(Duration),
}

/// A reply-driven rule (KumoMTA's traffic-shaping automation): a regular
/// expression (case-insensitive, `regex` crate syntax, matched anywhere in
/// the reply, e.g. `\[TSS04\]` or `^421 4\.7\.0`) over the reply of a
/// failed attempt or a site failure, and what a match does. Rules are tried
/// in order; the first match acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRule {
    /// The regular expression.
    pub pattern: String,
    /// What a match does.
    pub action: RuleAction,
}

/// Options for [`crate::Queue::open`].
#[derive(Clone)]
pub struct Options {
    /// Allow NFS/CIFS/FUSE directories (default false: locks and fsync are unreliable there).
    pub allow_network_fs: bool,
    /// Segment size at which a new segment is started (default 64 MiB).
    pub segment_size: u64,
    /// Largest body accepted (default 64 MiB).
    pub max_body: usize,
    /// Largest number of recipients per message (default 10 000).
    pub max_recipients: usize,
    /// Recipients per delivery (Postfix `default_destination_recipient_limit`, 50).
    pub batch_recipients: usize,
    /// Deliveries per session before it ends (default 100).
    pub deliveries_per_session: usize,
    /// Backoff lower bound (Postfix `minimal_backoff_time`, 300 s).
    pub min_backoff: Duration,
    /// Backoff upper bound (Postfix `maximal_backoff_time`, 4000 s).
    pub max_backoff: Duration,
    /// Lifetime after which undeliverable mail expires (Postfix `maximal_queue_lifetime`, 5 days),
    /// wherever a recipient waits: ready, deferred, held, or for a suspended,
    /// dead or rate-limited destination (checked by [`crate::Queue::tick`] at
    /// most once a minute; one in flight expires when its attempt fails).
    pub lifetime: Duration,
    /// Time after acceptance at which a recipient not yet delivered is reported
    /// once through [`crate::Queue::take_bounces`] with `delayed` set, for a DSN
    /// with `Action: delayed` (Postfix `delay_warning_time`); zero (the
    /// default) sends none. Must be shorter than `lifetime`.
    pub delay_warning: Duration,
    /// Reply-driven rules, tried in order on every failed attempt's reply
    /// (see [`ReplyRule`]; [`crate::Queue::set_reply_rules`] replaces them
    /// while the queue runs). Needs feature `rules` (in the default `admin`).
    pub reply_rules: Vec<ReplyRule>,
    /// Session lease; a session silent for longer has its slot reclaimed (default 10 min).
    pub lease_ttl: Duration,
    /// Default concurrency policy for every bucket.
    pub concurrency: Concurrency,
    /// Outcome records are made durable at least this often (default 100 ms);
    /// enqueue is always durable before it returns.
    pub outcome_sync_interval: Duration,
    /// … or when this many bytes of outcome records are pending (default 1 MiB).
    pub outcome_sync_bytes: usize,
    /// Write a checkpoint after this many log bytes (default 64 MiB).
    pub checkpoint_bytes: u64,
    /// Run checkpoints and compaction on the caller's thread when due (default true).
    pub auto_maintenance: bool,
    /// Make the file of the next segment ahead, on the thread that runs
    /// maintenance (workers' calls and [`crate::Queue::tick`]): a deleted
    /// segment's file kept for reuse, else a zero-filled one, so that commits
    /// overwrite written blocks instead of growing the file: each fdatasync
    /// then commits no file size or extent change (default true; costs one
    /// segment of disk, plus up to four deleted segments' files kept for at
    /// most ten minutes, and writing the zeros of each segment no deleted
    /// file serves). Turn it off
    /// on copy-on-write filesystems (btrfs, ZFS), where it cannot pay.
    pub preallocate_segments: bool,
    /// Keep sealed segments at least this fraction live on average (default
    /// 2/3, which bounds them to 1.5× their live data): while they are not,
    /// the emptiest one (itself under the fraction) is compacted, its live
    /// messages copied forward and the segment deleted.
    pub compact_below: f64,
    /// Backpressure: `enqueue` refuses ([`crate::Error::TryLater`]) a message that
    /// would take the recipients not yet final above this (0, the default: no
    /// limit). Each costs about 48 bytes of memory.
    pub max_queued_recipients: u64,
    /// … or the bytes of live message records above this (0, the default: no limit).
    pub max_queued_bytes: u64,
    /// … or the free space of the queue's filesystem under this watermark, so
    /// the queue never fills the disk it needs for outcomes and checkpoints
    /// (default 128 MiB; 0: no check). Looked up at most every 100 ms and
    /// estimated in between.
    pub min_free_disk: u64,
    /// Limits shared with other queues (a fleet of MTA nodes), asked before
    /// each session and each message (default none; see
    /// [`crate::FleetLimiter`]).
    pub fleet: Option<Arc<dyn crate::fleet::FleetLimiter>>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Filesystem (the storage seam).
    pub vfs: Arc<dyn crate::storage::vfs::Vfs>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            allow_network_fs: false,
            segment_size: 64 << 20,
            preallocate_segments: true,
            max_body: 64 << 20,
            max_recipients: 10_000,
            batch_recipients: 50,
            deliveries_per_session: 100,
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 86400),
            delay_warning: Duration::ZERO,
            reply_rules: Vec::new(),
            lease_ttl: Duration::from_secs(600),
            concurrency: Concurrency::default(),
            outcome_sync_interval: Duration::from_millis(100),
            outcome_sync_bytes: 1 << 20,
            checkpoint_bytes: 64 << 20,
            auto_maintenance: true,
            compact_below: 2.0 / 3.0,
            max_queued_recipients: 0,
            max_queued_bytes: 0,
            min_free_disk: 128 << 20,
            fleet: None,
            clock: Arc::new(SystemClock),
            vfs: Arc::new(crate::storage::vfs::OsFs),
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("allow_network_fs", &self.allow_network_fs)
            .field("segment_size", &self.segment_size)
            .field("preallocate_segments", &self.preallocate_segments)
            .field("batch_recipients", &self.batch_recipients)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("lifetime", &self.lifetime)
            .field("delay_warning", &self.delay_warning)
            .field("max_queued_recipients", &self.max_queued_recipients)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("min_free_disk", &self.min_free_disk)
            .finish_non_exhaustive()
    }
}

/// A permanently failed or expired recipient, for the MTA to send a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// Message.
    pub id: MessageId,
    /// Recipient index.
    pub index: u32,
    /// Envelope sender (empty: null sender, no DSN should be sent).
    pub sender: String,
    /// Recipient address.
    pub recipient: String,
    /// Last error (for a delay warning, the last reply or why it waits).
    pub reason: String,
    /// True when the lifetime expired, false for a permanent failure.
    pub expired: bool,
    /// True for a delay warning (see [`Options::delay_warning`]): the recipient
    /// is still queued; acknowledge it with [`crate::Queue::ack_delay_warning`].
    pub delayed: bool,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary (the one truncation rule for reasons, error texts and tables).
pub(crate) fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What one delivery carries: the message and the recipients leased for it.
/// [`crate::Delivery`] dereferences to it.
#[derive(Debug, Clone)]
pub struct DeliveryData {
    pub(crate) id: MessageId,
    pub(crate) key: Arc<str>,
    pub(crate) sender: String,
    pub(crate) addrs: Vec<String>,
    pub(crate) indices: Vec<u32>,
    pub(crate) attempts: Vec<u16>,
    pub(crate) meta: bytes::Bytes,
    pub(crate) body: bytes::Bytes,
    pub(crate) received: u64,
}

impl DeliveryData {
    /// The message.
    pub fn id(&self) -> MessageId {
        self.id
    }
    /// Envelope sender (empty for the null sender).
    pub fn sender(&self) -> &str {
        &self.sender
    }
    /// Recipient addresses of this delivery.
    pub fn recipients(&self) -> &[String] {
        &self.addrs
    }
    /// Indices of those recipients within the message.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }
    /// Previous attempts per recipient.
    pub fn attempts(&self) -> &[u16] {
        &self.attempts
    }
    /// The body (a shared buffer read from the log; cloning is cheap).
    pub fn body(&self) -> bytes::Bytes {
        self.body.clone()
    }
    /// The MTA's opaque metadata.
    pub fn meta(&self) -> bytes::Bytes {
        self.meta.clone()
    }
    /// When the message was accepted (unix seconds).
    pub fn received(&self) -> u64 {
        self.received
    }
    /// The session's routing key.
    pub fn routing_key(&self) -> &str {
        &self.key
    }
}
