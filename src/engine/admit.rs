//! Backpressure: what `enqueue` refuses before it writes anything — a message
//! that would take the queue over its limit of recipients not yet final or of
//! live record bytes, or its filesystem under the free-disk watermark. The
//! counts are shared atomics the message shards keep; the free space is looked
//! up at most every [`DISK_RECHECK`] and estimated in between. Concurrent
//! producers may overshoot a limit by the messages they accept at once.
//! Depends on `error`, `types`, the rest of `engine`.

use super::{bump, Engine};
use crate::error::{Error, Result};
use crate::types::NewMessage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest a free-space figure is trusted before it is looked up again.
const DISK_RECHECK: Duration = Duration::from_millis(100);
/// `DiskWatch::checked_ns` before the first look-up.
const NEVER: u64 = u64::MAX;

/// The free space of the queue's filesystem as last looked up, less what was
/// accepted since.
pub(crate) struct DiskWatch {
    epoch: Instant,
    checked_ns: AtomicU64,
    free: AtomicU64,
}

impl DiskWatch {
    pub(crate) fn new() -> Self {
        DiskWatch {
            epoch: Instant::now(),
            checked_ns: AtomicU64::new(NEVER),
            free: AtomicU64::new(u64::MAX),
        }
    }
}

/// About the bytes `m`'s record takes on disk (the limits are not exact).
pub(super) fn record_size(m: &NewMessage<'_>, routes: &[String]) -> u64 {
    let rcpts: usize = m
        .recipients
        .iter()
        .zip(routes)
        .map(|(r, k)| r.address.len() + k.len() + 8)
        .sum();
    (64 + m.sender.len() + m.meta.len() + m.body.len() + rcpts) as u64
}

impl Engine {
    /// Refuses ([`Error::TryLater`]) a message of `rcpts` recipients and about
    /// `bytes` record bytes that would take the queue over a limit.
    pub(super) fn admit(&self, rcpts: usize, bytes: u64) -> Result<()> {
        let o = &self.opts;
        let queued = self.load.recipients() + rcpts as u64;
        if o.max_queued_recipients > 0 && queued > o.max_queued_recipients {
            return self.refuse("queued recipients", queued, o.max_queued_recipients);
        }
        let held = self.load.bytes() + bytes;
        if o.max_queued_bytes > 0 && held > o.max_queued_bytes {
            return self.refuse("queued bytes", held, o.max_queued_bytes);
        }
        if o.min_free_disk > 0 {
            if let Some(left) = self.free_after(bytes) {
                if left < o.min_free_disk {
                    return self.refuse("free disk bytes", left, o.min_free_disk);
                }
                // Accepted: the estimate counts what this message takes.
                let _ = self
                    .disk
                    .free
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                        Some(f.saturating_sub(bytes))
                    });
            }
        }
        Ok(())
    }

    fn refuse(&self, what: &'static str, current: u64, limit: u64) -> Result<()> {
        bump(&self.counters.refused, 1);
        Err(Error::TryLater {
            what,
            current,
            limit,
        })
    }

    /// The free space left once `bytes` more are written: the estimate, or a
    /// fresh look-up when it is old or says no. `None` when the filesystem
    /// cannot tell (the watermark is then not checked).
    fn free_after(&self, bytes: u64) -> Option<u64> {
        let w = &self.disk;
        let now = w.epoch.elapsed().as_nanos() as u64;
        let at = w.checked_ns.load(Ordering::Relaxed);
        let fresh = at != NEVER && now.saturating_sub(at) < DISK_RECHECK.as_nanos() as u64;
        let est = w.free.load(Ordering::Relaxed);
        if fresh && est.saturating_sub(bytes) >= self.opts.min_free_disk {
            return Some(est.saturating_sub(bytes));
        }
        // Unknown or an error: accept (a full disk still fails safely, as
        // `DiskFull`, and poisons nothing that was acknowledged).
        let free = self.opts.vfs.free_space(&self.dir).ok().flatten()?;
        w.checked_ns.store(now, Ordering::Relaxed);
        w.free.store(free, Ordering::Relaxed);
        Some(free.saturating_sub(bytes))
    }

    /// Why `enqueue` refuses mail now, if it does (for stats): a limit the
    /// queue is at or over.
    pub(crate) fn pressure(&self) -> Option<String> {
        let o = &self.opts;
        let (r, b) = (self.load.recipients(), self.load.bytes());
        if o.max_queued_recipients > 0 && r >= o.max_queued_recipients {
            return Some(format!(
                "queued recipients {r} at the limit of {}",
                o.max_queued_recipients
            ));
        }
        if o.max_queued_bytes > 0 && b >= o.max_queued_bytes {
            return Some(format!(
                "queued bytes {b} at the limit of {}",
                o.max_queued_bytes
            ));
        }
        if o.min_free_disk == 0 {
            return None;
        }
        // Looked up again when old or under the watermark: freeing disk
        // lifts the refusal without waiting for an enqueue.
        let free = self.free_after(0)?;
        (free < o.min_free_disk).then(|| {
            format!(
                "free disk {free} bytes under the watermark of {}",
                o.min_free_disk
            )
        })
    }

    /// The filesystem's free space as last looked up (less what was accepted
    /// since), if it was.
    pub(crate) fn disk_free(&self) -> Option<u64> {
        (self.disk.checked_ns.load(Ordering::Relaxed) != NEVER)
            .then(|| self.disk.free.load(Ordering::Relaxed))
    }
}
