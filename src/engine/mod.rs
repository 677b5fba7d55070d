//! The engine: the queue's shared state ([`Engine`]) and every operation that
//! changes it — enqueue, leasing and outcomes, operator actions, maintenance —
//! plus the read-only views the public API formats. The public types
//! (`Queue`, `Session`, `Delivery`) are thin handles over it. Depends on
//! `recovery`, `index`, `sched` and `storage`; nothing below imports it.
//!
//! Lock order (never taken in another order): `gate` (shared) → `keys` →
//! sched shard(s) in index order → message shard → log. Leaf locks: `moves`,
//! `report`, `maint` (maintenance takes `gate` exclusively inside `maint`).
//! Operations that write records hold `gate` shared from the moment they turn a
//! routing key into a bucket id or append until their change is applied in
//! memory, so a checkpoint (which takes it exclusively) sees memory and log
//! agree at one position, and idle buckets are freed only under it.

mod admit;
mod ahead;
mod change;
mod check;
mod delivery;
mod egress;
mod enqueue;
mod expiry;
mod leases;
mod maint;
mod observe;
mod operator;
mod policy;
mod rules;
mod search;
mod select;
mod signal;

pub(crate) use delivery::DeliveryCore;
pub(crate) use leases::Lease;
pub(crate) use maint::Maint;
pub(crate) use operator::Action;

use crate::error::{Error, Result};
use crate::index::*;
use crate::recovery::{self, RecoveryReport};
use crate::sched::{Keys, SchedShard};
use crate::storage::log::{Log, SyncState};
use crate::types::*;
use change::Move;
use parking_lot::{Mutex, RwLock};
use signal::Signal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Throughput counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted_msgs: AtomicU64,
    accepted_rcpts: AtomicU64,
    delivered: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    expired: AtomicU64,
    bounced: AtomicU64,
    deleted: AtomicU64,
    site_failures: AtomicU64,
    lease_reclaims: AtomicU64,
    /// Messages refused by backpressure.
    refused: AtomicU64,
    /// Delay warnings acknowledged (sent by the MTA).
    delay_warnings: AtomicU64,
}

/// Adds `n` to a counter.
fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The shared state of one open queue.
pub(crate) struct Engine {
    dir: PathBuf,
    opts: Options,
    log: Log,
    gate: RwLock<()>,
    msgs: Vec<Mutex<MsgShard>>,
    sched: Vec<Mutex<SchedShard>>,
    keys: RwLock<Keys>,
    next_gen: AtomicU32,
    enq_cursor: AtomicUsize,
    /// Enqueues between their index entry and its publication (waiting for
    /// their fsync): their recipients are `New` meanwhile.
    enqueuing: AtomicUsize,
    ring_cursor: AtomicUsize,
    signal: Signal,
    counters: Counters,
    report: Mutex<RecoveryReport>,
    maint: Mutex<Maint>,
    /// Log bytes written (since open) when maintenance last ran: the next is
    /// due `checkpoint_bytes` later (a copy of `Maint::bytes_at` read
    /// without its lock).
    maint_from: AtomicU64,
    /// The poll fd was raised for the maintenance now due.
    maint_woken: AtomicBool,
    /// The poll fd was raised for the next segment's file to be made ahead.
    prep_woken: AtomicBool,
    /// Recovery rebuilt the state from the log (or past a damaged
    /// checkpoint): a checkpoint is due at the first maintenance from this
    /// clock second on, whatever the log bytes written since open (0: none
    /// due; after a failure, retried [`REBUILT_RETRY_SECS`] later).
    rebuilt: AtomicU32,
    /// Log bytes between two maintenance runs: `checkpoint_bytes`, or
    /// `CHECKPOINT_RATIO` times the last checkpoint's size when larger.
    maint_every: AtomicU64,
    /// Re-routed recipients whose attempt ended, waiting to join their new bucket
    /// (a leaf lock; drained by [`Engine::apply_moves`] after other locks are released).
    moves: Mutex<Vec<Move>>,
    /// `moves` is not empty (checked without its lock on the hot path).
    has_moves: AtomicBool,
    /// The outcome-sync deadline (clock ms) the poll fd's timer was armed for.
    sync_armed: AtomicU64,
    /// Highest local message slot enqueue may use (recovery's limit).
    slot_limit: AtomicU32,
    /// Messages one pass of an envelope search locates at most.
    search_batch: AtomicUsize,
    /// The next session's fencing token.
    next_fence: AtomicU64,
    /// This open's random id (a fleet limiter tells queues' sessions apart
    /// by it: fencing tokens are unique per queue only).
    instance: u64,
    /// Recipients not yet final and live record bytes, over all shards.
    load: Arc<Load>,
    /// The queue filesystem's free space (backpressure).
    disk: admit::DiskWatch,
    /// When expiry and delay warnings are next due.
    sweeps: expiry::Sweeps,
    /// Reply-driven rules (replaced whole; read once per attempt that failed).
    rules: RwLock<Arc<rules::Rules>>,
    /// Egress sources and pools (replaced whole on a change).
    egress: RwLock<Arc<egress::Egress>>,
    /// Its generation (read without the lock before a session opens).
    egress_gen: AtomicU32,
    /// CRC salt of this queue's records.
    salt: u32,
    _lock: Box<dyn std::any::Any + Send + Sync>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Best effort: outcomes still buffered become durable when the last handle goes.
        let _ = self.log.sync_all();
        // A handle that never ran maintenance (a short-lived tool) still
        // spares the next open the replay it paid for.
        if self.rebuilt.load(Ordering::Relaxed) != 0 && self.check_poison().is_ok() {
            let _ = self.checkpoint();
        }
    }
}

/// Seconds before a failed checkpoint that recovery called for is tried
/// again.
pub(crate) const REBUILT_RETRY_SECS: u32 = 60;

impl Engine {
    /// Opens (or creates) the queue in `dir`: recovery, then the log continues
    /// where it ended.
    pub(crate) fn open(dir: &Path, opts: Options) -> Result<Arc<Engine>> {
        let t0 = std::time::Instant::now();
        crate::validate::options(&opts)?;
        let rules = rules::Rules::compile(&opts.reply_rules)?;
        let mut r = recovery::open(dir, &opts, now32(&opts))?;
        let salt = r.log.salt;
        let log = Log::open(
            opts.vfs.clone(),
            dir,
            r.log,
            opts.segment_size,
            opts.outcome_sync_interval,
            opts.outcome_sync_bytes,
            opts.clock.clone(),
            opts.preallocate_segments,
        )?;
        r.report.duration = t0.elapsed();
        let load = Arc::new(Load::default());
        let queued = r.msgs.iter().any(|ms| ms.live_msgs > 0);
        let q = Arc::new(Engine {
            dir: dir.to_path_buf(),
            log,
            gate: RwLock::new(()),
            msgs: r
                .msgs
                .into_iter()
                .map(|mut ms| {
                    ms.share_load(&load);
                    Mutex::new(ms)
                })
                .collect(),
            sched: r.sched.into_iter().map(Mutex::new).collect(),
            keys: RwLock::new(r.keys),
            next_gen: AtomicU32::new(r.next_gen),
            enq_cursor: AtomicUsize::new(0),
            enqueuing: AtomicUsize::new(0),
            ring_cursor: AtomicUsize::new(0),
            signal: Signal::new().map_err(|e| Error::io("eventfd", dir, e))?,
            counters: Counters::default(),
            moves: Mutex::new(Vec::new()),
            has_moves: AtomicBool::new(false),
            sync_armed: AtomicU64::new(0),
            slot_limit: AtomicU32::new(MAX_SLOT),
            search_batch: AtomicUsize::new(search::ENVELOPE_BATCH),
            // Milliseconds of the clock at open, times 2^20: larger than any
            // token of an earlier open (unless the clock stepped back across
            // the restart), and a million sessions per millisecond apart.
            next_fence: AtomicU64::new(opts.clock.now_millis().max(1).saturating_mul(1 << 20)),
            instance: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                h.write_u64(opts.clock.now_millis());
                h.finish()
            },
            load,
            disk: admit::DiskWatch::new(),
            sweeps: expiry::Sweeps::new(queued),
            rules: RwLock::new(Arc::new(rules)),
            egress: RwLock::new(Arc::new(egress::Egress::recovered(r.sources))),
            egress_gen: AtomicU32::new(0),
            maint: Mutex::new(Maint::at(r.checkpoint_pos)),
            maint_from: AtomicU64::new(0),
            maint_woken: AtomicBool::new(false),
            prep_woken: AtomicBool::new(false),
            rebuilt: AtomicU32::new(0),
            maint_every: AtomicU64::new(opts.checkpoint_bytes),
            salt,
            report: Mutex::new(r.report),
            opts,
            _lock: r.lock,
        });
        // Persist what recovery rebuilt, so the next open does not pay for it
        // again: with automatic maintenance, at the first maintenance (the
        // poll fd is raised; `tick` or a worker writes it while producers
        // run), so that the queue serves as soon as its state is rebuilt.
        // Without, here (the embedder decides when later ones happen).
        let rebuilt = {
            let rep = q.report.lock();
            rep.bytes_replayed > (1 << 20) || rep.checkpoint_error.is_some()
        };
        if rebuilt && q.opts.auto_maintenance {
            q.rebuilt.store(q.now().max(1), Ordering::Relaxed);
            q.maint_woken.store(true, Ordering::Relaxed);
            q.wake();
        } else if rebuilt {
            q.checkpoint()?;
        }
        if q.sched.iter().any(|s| !s.lock().ring.is_empty()) {
            q.wake();
        }
        Ok(q)
    }

    /// The queue directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the queue was opened with.
    pub(crate) fn opts(&self) -> &Options {
        &self.opts
    }

    /// What recovery found (and damage found since).
    pub(crate) fn recovery_report(&self) -> RecoveryReport {
        self.report.lock().clone()
    }

    /// The current time in clock seconds.
    pub(crate) fn now(&self) -> u32 {
        now32(&self.opts)
    }

    /// Fails with [`Error::Poisoned`] once a storage failure made the log refuse writes.
    fn check_poison(&self) -> Result<()> {
        match self.log.poisoned() {
            Some(p) => Err(Error::Poisoned(p)),
            None => Ok(()),
        }
    }

    /// Interns a normalised routing key and returns its bucket id.
    fn bucket_id(&self, key: &str) -> Result<u32> {
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

    /// Looks a routing key up without creating it.
    fn find_bucket(&self, key: &str) -> Result<Option<u32>> {
        let k = crate::validate::normalize_key(key)?;
        Ok(self.keys.read().get(&k))
    }

    fn key_of(&self, bucket: u32) -> Arc<str> {
        self.keys
            .read()
            .key(bucket)
            .cloned()
            .unwrap_or_else(|| "".into())
    }

    /// Makes the poll fd readable.
    fn wake(&self) {
        self.signal.raise();
    }

    /// Wakes the event loop if `rang` (a bucket entered the ready ring).
    fn wake_if(&self, rang: bool) {
        if rang {
            self.wake();
        }
    }

    /// Makes every buffered outcome record durable now.
    pub(crate) fn sync(&self) -> Result<()> {
        self.log.sync_all()
    }

    /// Syncs buffered outcome records when they are due, else arms the poll fd's
    /// timer for their deadline so that an idle event loop wakes up to sync them.
    /// Errors poison the log.
    fn sync_if_due(&self) -> Result<()> {
        let now = self.opts.clock.now_millis();
        match self.log.sync_state(now) {
            SyncState::Due => self.log.sync_all()?,
            SyncState::Pending(d) => {
                // Armed once per pending window, not on every completion.
                if self.sync_armed.swap(d, Ordering::AcqRel) != d {
                    let after = std::time::Duration::from_millis(d.saturating_sub(now).max(1));
                    self.signal.arm(after);
                }
            }
            SyncState::Idle => {}
        }
        Ok(())
    }

    /// After an operation that may have queued outcome records: sync them when
    /// due and run maintenance when enough log was written. A maintenance failure
    /// is kept for the stats, never returned (the operation itself succeeded).
    fn after_write(&self) -> Result<()> {
        self.sync_if_due()?;
        self.prepare_if_wanted();
        self.log.give_back();
        if self.opts.auto_maintenance {
            self.maybe_maintain();
        }
        Ok(())
    }

    /// The pollable descriptor.
    pub(crate) fn poll_fd(&self) -> std::os::fd::RawFd {
        self.signal.fd()
    }

    /// Clears the poll fd and syncs outcome records whose interval has passed.
    pub(crate) fn ack_poll(&self) {
        self.signal.clear();
        self.sync_armed.store(0, Ordering::Release);
        let _ = self.sync_if_due();
    }

    /// Decodes a message id into (message shard, local slot) if live.
    fn locate(&self, id: MessageId) -> Result<(usize, u32)> {
        let slot = id.slot();
        let (s, l) = (shard_of(slot), local_of(slot));
        if self.msgs[s].lock().get(l, id.gen()).is_none() {
            return Err(Error::NoSuchMessage(id));
        }
        Ok((s, l))
    }

    /// (segment, offset, record length) of a live message's record.
    fn location(&self, id: MessageId) -> Option<(u32, u32, u32)> {
        let slot = id.slot();
        let ms = self.msgs[shard_of(slot)].lock();
        ms.get(local_of(slot), id.gen())
            .map(|m| (m.seg, m.off, m.len))
    }

    /// Reads the message record of `id` last seen at `loc`. A failure is damage
    /// only if the message still lives there: compaction may have moved it (and
    /// deleted the old segment) between the lookup and the read, then the read is
    /// retried at the new place.
    fn read_message_record(&self, id: MessageId, mut loc: (u32, u32, u32)) -> Result<bytes::Bytes> {
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

    /// Lowers the per-shard message-slot limit (tests of the limit).
    pub(crate) fn set_slot_limit(&self, limit: u32) {
        self.slot_limit
            .store(limit.min(MAX_SLOT), Ordering::Relaxed);
    }

    /// Lowers the messages one pass of an envelope search locates (tests of
    /// searches in several passes).
    pub(crate) fn set_search_batch(&self, n: usize) {
        self.search_batch.store(n.max(1), Ordering::Relaxed);
    }

    /// The outcome-sync deadline (clock ms), if outcome records are buffered.
    pub(crate) fn pending_sync_ms(&self) -> Option<u64> {
        self.log.sync_deadline()
    }
}

/// The clock's current time in seconds, as the index stores it.
fn now32(opts: &Options) -> u32 {
    opts.clock.now().min(u32::MAX as u64) as u32
}
