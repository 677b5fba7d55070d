//! The public [`Queue`] handle: open, enqueue, durability, operator actions,
//! bounces, and the event-loop contract (poll fd, wake-ups, tick). Each method
//! is a thin call into the engine; read-only views are in `inspect.rs`,
//! sessions in `session.rs`, streaming enqueue in `message.rs`.
//! Depends on `engine`, `error`, `recovery`, `session`, `types`.

use crate::engine::{Action, Engine};
use crate::error::Result;
use crate::recovery::RecoveryReport;
use crate::session::Session;
use crate::types::*;
use std::path::Path;
use std::sync::Arc;

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
    pub(crate) engine: Arc<Engine>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.engine.dir())
            .finish()
    }
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, recovering from its log and checkpoint.
    ///
    /// Fails with [`crate::Error::Locked`] when another handle holds the directory and with
    /// [`crate::Error::NetworkFilesystem`] on NFS/CIFS/FUSE unless allowed in `opts`.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Queue> {
        Ok(Queue {
            engine: Engine::open(dir.as_ref(), opts)?,
        })
    }

    /// Accepts a message. Returns only when the message and its recipients are on
    /// stable storage: the MTA may answer `250` then. Concurrent callers share fsyncs.
    ///
    /// Invalid input returns a typed error and writes nothing.
    pub fn enqueue(&self, m: &NewMessage<'_>) -> Result<MessageId> {
        self.engine.enqueue(m, true)
    }

    /// [`Queue::enqueue`], checked against backpressure or not (DSNs).
    pub(crate) fn enqueue_admitted(&self, m: &NewMessage<'_>, admit: bool) -> Result<MessageId> {
        self.engine.enqueue(m, admit)
    }

    /// Lowers the per-shard message-slot limit (tests of the limit; recovery keeps
    /// its own, larger one).
    #[doc(hidden)]
    pub fn debug_set_slot_limit(&self, limit: u32) {
        self.engine.set_slot_limit(limit);
    }

    /// Lowers the messages one pass of an envelope search locates (tests of
    /// searches in several passes).
    #[doc(hidden)]
    pub fn debug_set_search_batch(&self, messages: usize) {
        self.engine.set_search_batch(messages);
    }

    /// Why [`Queue::enqueue`] refuses mail now ([`crate::Error::TryLater`]: a
    /// queued-recipients, queued-bytes or free-disk limit reached), if it
    /// does. Cheap: an SMTP server asks it at `MAIL FROM` and answers
    /// `452 4.3.1` before the client sends the body.
    pub fn backpressure(&self) -> Option<String> {
        self.engine.pressure()
    }

    /// Makes every buffered outcome record durable now.
    pub fn sync(&self) -> Result<()> {
        self.engine.sync()
    }

    /// Writes a checkpoint now (and compacts), so that the next open replays nothing.
    /// Also happens automatically every `checkpoint_bytes` of log.
    pub fn checkpoint(&self) -> Result<()> {
        self.engine.checkpoint()
    }

    /// Syncs and writes a checkpoint. The directory lock is released when the last
    /// clone of this queue is dropped.
    pub fn close(self) -> Result<()> {
        self.engine.sync()?;
        self.engine.checkpoint()
    }

    /// The options the queue was opened with.
    pub fn options(&self) -> &Options {
        self.engine.opts()
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        self.engine.dir()
    }

    /// What recovery found when the queue was opened (damage, torn tail, timings).
    pub fn recovery_report(&self) -> RecoveryReport {
        self.engine.recovery_report()
    }

    /// Holds every waiting recipient of a message (they are not delivered until released).
    /// Returns how many recipients changed.
    pub fn hold(&self, id: MessageId) -> Result<usize> {
        self.engine.act_on_message(id, Action::Hold)
    }

    /// Releases a held message: its recipients become ready now.
    pub fn release(&self, id: MessageId) -> Result<usize> {
        self.engine.act_on_message(id, Action::Release)
    }

    /// Deletes a message: every recipient not yet final is dropped without a DSN.
    pub fn delete(&self, id: MessageId) -> Result<usize> {
        self.engine.act_on_message(id, Action::Delete)
    }

    /// Holds every waiting recipient routed to `key`.
    pub fn hold_bucket(&self, key: &str) -> Result<usize> {
        self.engine.act_on_bucket(key, Action::Hold)
    }

    /// Releases every held recipient routed to `key`.
    pub fn release_bucket(&self, key: &str) -> Result<usize> {
        self.engine.act_on_bucket(key, Action::Release)
    }

    /// Flushes: every deferred recipient becomes ready now (like `postqueue -f`).
    pub fn flush(&self) -> Result<usize> {
        self.engine.flush(None)
    }

    /// Flushes the deferred recipients of one routing key (like `postqueue -s`).
    pub fn flush_bucket(&self, key: &str) -> Result<usize> {
        self.engine.flush(Some(key))
    }

    /// Suspends a routing key: no new sessions until [`Queue::resume`].
    pub fn suspend(&self, key: &str) -> Result<()> {
        self.engine.set_suspended(key, true, None)
    }

    /// Suspends a routing key for `duration`; it resumes by itself then (the
    /// end time is part of [`Queue::next_wakeup`]), or earlier on
    /// [`Queue::resume`]. Persisted with its end time: a restart keeps it.
    pub fn suspend_for(&self, key: &str, duration: std::time::Duration) -> Result<()> {
        self.engine.set_suspended(key, true, Some(duration))
    }

    /// Resumes a suspended routing key (also the reply rules' suspensions of
    /// its single egress sources).
    pub fn resume(&self, key: &str) -> Result<()> {
        self.engine.set_suspended(key, false, None)
    }

    /// Sets the concurrency limit of one routing key (the window is clamped to it).
    pub fn set_concurrency_limit(&self, key: &str, limit: u16) -> Result<()> {
        self.engine.set_concurrency_limit(key, limit)
    }

    /// Sets the message-rate limits of one routing key (per second, minute, hour
    /// and day; 0: none for that period; all 0 removes them). A delivery
    /// needs both the limits and the concurrency window to allow it; a
    /// destination out of rate waits for a wake-up (part of
    /// [`Queue::next_wakeup`]), never a busy loop. Persisted.
    pub fn set_rate_limit(&self, key: &str, limit: RateLimit) -> Result<()> {
        self.engine.set_rate_limit(key, limit)
    }

    /// Sets the egress sources (IPs or pool members, named by the MTA)
    /// sessions of destination `key` go out from; `None` sets the default
    /// pool of every destination without its own, and an empty list gives
    /// `key` back to the default pool. A new session takes the source of the
    /// pool with the fewest open sessions that may send now (its per-source
    /// limits, its warm-up day); [`Session::source`](crate::Session::source)
    /// says which, and the MTA binds the connection to it. A source that is
    /// used up is skipped, so a pool of several lets mail use another source;
    /// a pool of one keeps its overflow queued. Configuration, like reply
    /// rules: set it again after opening (the warm-up state is persisted).
    pub fn set_sources(&self, key: Option<&str>, sources: &[&str]) -> Result<()> {
        self.engine.set_sources(key, sources)
    }

    /// Sets the warm-up schedule of egress source `source` (see
    /// [`WarmupStep`], e.g. `WarmupStep::ramp(50, 100_000, 30)`; empty: no
    /// cap). The source's first schedule makes today its day 1; the day
    /// count and the day's messages are persisted, so a restart goes on where
    /// it was. When a source's day is used up its destinations wait for
    /// another source of their pool, or for the next day.
    pub fn set_warmup(&self, source: &str, steps: &[WarmupStep]) -> Result<()> {
        self.engine.set_warmup(source, steps)
    }

    /// Sets destination `key`'s limits per egress source (KumoMTA's egress
    /// paths): at most `concurrency` sessions (0: no limit) and `rate`
    /// messages per period through each of its sources, on top of its own
    /// concurrency window and rate limits. Persisted.
    pub fn set_source_limits(&self, key: &str, concurrency: u16, rate: RateLimit) -> Result<()> {
        self.engine.set_source_limits(key, concurrency, rate)
    }

    /// The egress sources declared, with their warm-up day, today's cap and
    /// use, and the pools they are in.
    pub fn sources(&self) -> Vec<crate::SourceStats> {
        self.engine.source_stats()
    }

    /// Replaces the reply-driven rules (see [`ReplyRule`]); a bad pattern is an
    /// error and changes nothing. Rules are configuration: set them again
    /// after opening (or pass them in [`Options::reply_rules`]); the
    /// suspensions they caused are persisted.
    pub fn set_reply_rules(&self, rules: &[ReplyRule]) -> Result<()> {
        self.engine.set_reply_rules(rules)
    }

    /// Appends one reply-driven rule after those in force (atomically: two
    /// callers adding at once both get theirs in).
    pub fn add_reply_rule(&self, rule: ReplyRule) -> Result<()> {
        self.engine.add_reply_rule(rule)
    }

    /// The reply-driven rules in force, in order.
    pub fn reply_rules(&self) -> Vec<ReplyRule> {
        self.engine.reply_rules()
    }

    /// Re-routes every waiting recipient of routing key `from` to `to` (persisted).
    /// Recipients in flight keep their session. Returns how many moved.
    pub fn reroute(&self, from: &str, to: &str) -> Result<usize> {
        self.engine.reroute(from, to)
    }

    /// Applies `op` to every recipient `sel` matches at this moment, durably,
    /// and returns how many changed; with `dry_run`, changes nothing and
    /// returns how many it would change. On a recipient in flight, hold,
    /// release and re-route take effect when its attempt ends; `Bounce` leaves
    /// it alone.
    pub fn act(&self, sel: &crate::Selector, op: &crate::Op, dry_run: bool) -> Result<usize> {
        self.engine.act(sel, op, dry_run)
    }

    /// Re-routes one recipient to routing key `to` (persisted).
    pub fn reroute_recipient(&self, id: MessageId, index: u32, to: &str) -> Result<bool> {
        self.engine.reroute_recipient(id, index, to)
    }

    /// Hands out up to `max` failed or expired recipients for DSN generation,
    /// and delay warnings (`delayed`, see [`Options::delay_warning`]).
    /// Each must be acknowledged with [`Queue::ack_bounce`] once the DSN is queued;
    /// unacknowledged ones are offered again after a restart. Expiry and
    /// warnings of recipients that are not attempted come from
    /// [`Queue::tick`].
    pub fn take_bounces(&self, max: usize) -> Result<Vec<Bounce>> {
        self.engine.take_bounces(max)
    }

    /// Acknowledges a bounce (not a delay warning): the recipient is final and
    /// its message may be removed.
    pub fn ack_bounce(&self, id: MessageId, index: u32) -> Result<bool> {
        self.engine.ack_bounce(id, index)
    }

    /// Acknowledges a delay warning (a [`Bounce`] with `delayed` set) once its
    /// DSN is queued: recorded as sent, durably on return, so a restart does
    /// not warn again; the recipient stays queued. Returns false when there
    /// is no such warning — also when the recipient failed or expired
    /// meanwhile: its bounce comes next and must not be lost to this ack.
    pub fn ack_delay_warning(&self, id: MessageId, index: u32) -> Result<bool> {
        self.engine.ack_delay_warning(id, index)
    }

    /// Opens a session for the next destination with ready work and a free
    /// concurrency slot, in round-robin order across destinations.
    /// `Ok(None)` when nothing can be delivered now (see [`Queue::next_wakeup`]).
    pub fn next_session(&self) -> Result<Option<Session>> {
        Ok(self.engine.next_lease()?.map(Session::new))
    }

    /// Opens a session for one routing key if it has ready work and a free slot.
    pub fn session_for(&self, key: &str) -> Result<Option<Session>> {
        Ok(self.engine.lease_for(key)?.map(Session::new))
    }

    /// The pollable descriptor: readable when a destination has work ready.
    /// Call [`Queue::ack_poll`], then take sessions until [`Queue::next_session`] returns `None`.
    pub fn poll_fd(&self) -> std::os::fd::RawFd {
        self.engine.poll_fd()
    }

    /// Clears the pollable descriptor's readiness and syncs outcome records whose
    /// interval has passed (the descriptor also wakes for that deadline). A sync
    /// failure poisons the queue; later calls report it.
    pub fn ack_poll(&self) {
        self.engine.ack_poll()
    }

    /// Fires due timers, probes and lease reclaims in every shard. Event loops call it
    /// at [`Queue::next_wakeup`]; returns true when work became ready (the fd is raised too).
    pub fn tick(&self) -> bool {
        self.engine.tick()
    }

    /// Unix time of the next scheduled event (deferred retry, probe, lease deadline,
    /// the deadline for syncing buffered outcome records, the end of the ten
    /// minutes a deleted segment's file is kept for reuse, or the next piece of
    /// one being given back), or `None` when nothing
    /// is scheduled. A time in the past means "now". Call [`Queue::tick`] then.
    /// Its resolution is a second: an event loop that wants the outcome-sync
    /// deadline to the millisecond uses [`Queue::next_timeout`] (or the poll fd,
    /// which also wakes for it).
    pub fn next_wakeup(&self) -> Option<u64> {
        // Round up: waking before a deadline would only find nothing to do.
        self.engine.next_event_ms().map(|ms| ms.div_ceil(1000))
    }

    /// Time until the next scheduled event (see [`Queue::next_wakeup`]), to the
    /// millisecond; `Some(Duration::ZERO)` when something is due now.
    pub fn next_timeout(&self) -> Option<std::time::Duration> {
        let now_ms = self.engine.opts().clock.now_millis();
        self.engine
            .next_event_ms()
            .map(|ms| std::time::Duration::from_millis(ms.saturating_sub(now_ms)))
    }
}
