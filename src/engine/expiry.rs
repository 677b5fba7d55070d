//! Expiry wherever a recipient waits, and delay warnings. An attempt that
//! fails after the lifetime expires its recipient (`policy`); this sweep
//! expires the ones that are never attempted — held, deferred far ahead, or
//! ready for a destination that is suspended, dead, rate-limited or starved —
//! and queues delay warnings (Postfix `delay_warning_time`) for the bounce
//! hand-out. It runs in `tick` on the caller's thread, at most once a minute
//! and only when a message is due: the earliest expiry or warning time is kept
//! (lowered by every enqueue, recomputed by every sweep), so an idle queue is
//! not woken for it.
//! Depends on `index`, `types`, the rest of `engine`.

use super::change::Change;
use super::{bump, Engine};
use crate::error::{Error, Result};
use crate::index::*;
use crate::types::*;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds between two sweeps at least: a recipient expires (or is warned
/// about) within a minute of its time, and a queue with a steady stream of
/// messages coming due scans its index at most once a minute.
pub(crate) const SWEEP_EVERY: u64 = 60;
/// Message slots examined per hold of a shard lock.
const SLOTS_PER_HOLD: usize = 4096;

/// When the next sweep is due.
pub(crate) struct Sweeps {
    /// The earliest expiry or warning time of a message not yet handled (unix
    /// seconds; `u64::MAX`: none). Enqueue lowers it; a sweep recomputes it.
    due: AtomicU64,
    /// When the last sweep started (unix seconds).
    last: AtomicU64,
    /// One sweep at a time.
    running: Mutex<()>,
}

impl Sweeps {
    /// At open: a first sweep at the first tick when anything is queued
    /// (recovery does not compute the due times).
    pub(crate) fn new(anything_queued: bool) -> Self {
        Sweeps {
            due: AtomicU64::new(if anything_queued { 0 } else { u64::MAX }),
            last: AtomicU64::new(0),
            running: Mutex::new(()),
        }
    }
}

/// What a sweep found.
#[derive(Default)]
struct Found {
    /// Recipients to expire.
    expire: Vec<(MessageId, u32)>,
    /// The earliest due time of what is left.
    next: u64,
}

/// The reason given to a recipient that expires without any reply.
fn never_attempted(st: RcptState) -> String {
    let why = match st {
        RcptState::Held => "held by the operator",
        RcptState::Deferred => "deferred",
        _ => "waiting for its destination (suspended, dead, rate-limited or busy)",
    };
    format!("queue lifetime reached without a reply ({why})")
}

/// The change that expires a waiting recipient (one in flight, or final, is
/// left alone). The last reply, if any, stays its reason.
fn plan_expiry(r: &Rcpt) -> Option<Change> {
    let st = r.state();
    matches!(st, RcptState::Ready | RcptState::Deferred | RcptState::Held).then(|| Change {
        reason: (r.reason() == 0).then(|| never_attempted(st)),
        ..Change::persist(r, RcptState::Expired, 0)
    })
}

impl Engine {
    /// Notes a message accepted at `received`, once it is in the index (a
    /// sweep that started earlier does not see it, and does not raise this).
    /// Returns true when this made the next sweep earlier: the event loop's
    /// timeout must be recomputed (its destination may be suspended, so no
    /// ready work wakes it).
    pub(super) fn sweep_note(&self, received: u32) -> bool {
        let warn = self.opts.delay_warning.as_secs();
        let first = if warn != 0 {
            warn
        } else {
            self.opts.lifetime.as_secs()
        };
        let t = received as u64 + first;
        self.sweeps.due.fetch_min(t, Ordering::AcqRel) > t
    }

    /// When the next sweep is due (unix seconds), if anything is to expire or
    /// to warn about. After a clock step back the minute between sweeps is
    /// not waited for.
    pub(super) fn next_sweep(&self, now: u32) -> Option<u32> {
        let due = self.sweeps.due.load(Ordering::Acquire);
        // Everything delivered (the due time of mail that is gone may remain):
        // nothing to wake an idle queue for.
        if due == u64::MAX || self.load.recipients() == 0 {
            return None;
        }
        let last = self.sweeps.last.load(Ordering::Acquire);
        let earliest = if last > now as u64 {
            0
        } else {
            last + SWEEP_EVERY
        };
        Some(due.max(earliest).min(u32::MAX as u64) as u32)
    }

    /// Expires and warns what is due (see the module); durable on return.
    pub(super) fn sweep_if_due(&self) -> Result<()> {
        let now = self.now();
        if self.next_sweep(now).is_none_or(|t| t > now) {
            return Ok(());
        }
        let Some(_running) = self.sweeps.running.try_lock() else {
            return Ok(());
        };
        self.sweeps.due.store(u64::MAX, Ordering::SeqCst);
        self.sweeps.last.store(now as u64, Ordering::Release);
        let found = self.scan_due(now);
        let mut expired = 0;
        let mut result = Ok(());
        let mut missed = false;
        for &(id, i) in &found.expire {
            match self.change_rcpt(id, i, &plan_expiry) {
                Ok(true) => expired += 1,
                // Leased since the scan: a later sweep looks again (its attempt
                // may end without an outcome).
                Ok(false) => missed = true,
                Err(Error::NoSuchMessage(_)) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        bump(&self.counters.expired, expired);
        if result.is_ok() && expired > 0 {
            result = self.log.sync_all();
        }
        // What failed is tried again at the next sweep.
        let next = if result.is_ok() && !missed {
            found.next
        } else {
            now as u64
        };
        self.sweeps.due.fetch_min(next, Ordering::AcqRel);
        result
    }

    /// Walks the index: waiting recipients past the lifetime are returned,
    /// delay warnings due are queued for the bounce hand-out, and the earliest
    /// due time of the rest is computed.
    fn scan_due(&self, now: u32) -> Found {
        let now = now as u64;
        let life = self.opts.lifetime.as_secs();
        let warn = self.opts.delay_warning.as_secs();
        let mut f = Found {
            next: u64::MAX,
            ..Found::default()
        };
        for (s, shard) in self.msgs.iter().enumerate() {
            let mut from = 0;
            loop {
                let mut ms = shard.lock();
                let end = (from + SLOTS_PER_HOLD).min(ms.msgs.len());
                for l in from..end {
                    let m = ms.msgs[l];
                    if m.gen == 0 {
                        continue;
                    }
                    let id = MessageId::new(m.gen, global(s, l as u32));
                    let (expire_at, warn_at) = (m.received as u64 + life, m.received as u64 + warn);
                    for i in 0..m.n as u32 {
                        let rid = m.first + i;
                        let r = ms.rcpts[rid as usize];
                        let st = r.state();
                        let waiting =
                            matches!(st, RcptState::Ready | RcptState::Deferred | RcptState::Held)
                                && r.flags() & F_MOVING == 0;
                        let to_warn = warn != 0 && r.flags() & (F_WARNED | F_WARN_QUEUED) == 0;
                        if !waiting {
                            // In flight (or joining a bucket): a later sweep looks again.
                            if matches!(
                                st,
                                RcptState::Leased
                                    | RcptState::Ready
                                    | RcptState::Deferred
                                    | RcptState::Held
                            ) {
                                let due = if to_warn {
                                    warn_at.min(expire_at)
                                } else {
                                    expire_at
                                };
                                f.next = f.next.min(due);
                            }
                            continue;
                        }
                        if now >= expire_at {
                            f.expire.push((id, i));
                            continue;
                        }
                        f.next = f.next.min(expire_at);
                        if !to_warn {
                            continue;
                        }
                        if now < warn_at {
                            f.next = f.next.min(warn_at);
                            continue;
                        }
                        ms.rcpts[rid as usize].set_flags(r.flags() | F_WARN_QUEUED);
                        ms.bounces.push_back(RcptRef::new(s, rid));
                    }
                }
                from = end;
                if end >= ms.msgs.len() {
                    break;
                }
            }
        }
        f
    }
}
