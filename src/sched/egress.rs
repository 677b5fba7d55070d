//! Egress sources: the IPs or pools a destination's sessions go out from
//! (KumoMTA's egress paths). Each destination has a path per source of its
//! pool; a path has its own concurrency and message-rate limits (the
//! destination's per-source limits), and a source may have a warm-up
//! schedule that caps its messages per day, whatever the destination. A new
//! session takes the eligible path with the fewest open sessions, so a
//! destination's sessions spread over its sources; a path out of rate or a
//! source out of its day's share is skipped, and when none is left the
//! destination waits (a wake-up at the earliest time one frees up, or the
//! next session end). Depends on `sched::rate`, `storage::record` (the plain
//! [`SourceSaved`] value) and `types`.

use super::{Bucket, Rate};
use crate::storage::record::SourceSaved;
use crate::types::{RateLimit, WarmupStep};
use parking_lot::Mutex;
use std::sync::Arc;

/// Seconds in a warm-up day.
const DAY: u32 = 86_400;

/// One egress source: its name and warm-up state (shared by every
/// destination that sends from it).
#[derive(Debug)]
pub struct Source {
    /// The name the MTA gave it (an IP or a pool member's name).
    pub name: Arc<str>,
    warm: Mutex<Warm>,
}

/// A source's warm-up: its schedule, which day of it this is and what that
/// day has used.
#[derive(Debug, Clone, Default)]
struct Warm {
    steps: Vec<WarmupStep>,
    saved: SourceSaved,
    /// It has a warm-up (now, or from disk): its state is kept.
    known: bool,
    /// Changed since it was last persisted.
    dirty: bool,
}

impl Warm {
    /// Moves to the day `now` is in: whole days since the current one began
    /// start a new day with nothing used. A clock that stepped back before
    /// the day's start makes the day start now (its count kept: never a
    /// fresh day's share, never a wait longer than a day).
    fn roll(&mut self, now: u32) {
        let s = &mut self.saved;
        if now < s.window_start {
            s.window_start = now;
            self.dirty = self.known;
        } else if now - s.window_start >= DAY {
            let days = (now - s.window_start) / DAY;
            s.day = s.day.saturating_add(days);
            s.window_start += days * DAY;
            s.used = 0;
            self.dirty = self.known;
        }
    }

    /// Today's cap (`None`: no schedule).
    fn cap(&self) -> Option<u32> {
        let first = self.steps.first()?;
        let step = self.steps.iter().rev().find(|s| s.day <= self.saved.day);
        Some(step.unwrap_or(first).per_day)
    }
}

impl Source {
    /// A source named `name` with no warm-up schedule; `saved` is its state
    /// from disk, if any (else day 1 starts at `now`).
    pub fn new(name: &str, saved: Option<SourceSaved>, now: u32) -> Source {
        let known = saved.is_some();
        let saved = saved.unwrap_or(SourceSaved {
            day: 1,
            window_start: now,
            used: 0,
        });
        Source {
            name: name.into(),
            warm: Mutex::new(Warm {
                steps: Vec::new(),
                saved,
                known,
                dirty: false,
            }),
        }
    }

    /// Sets the warm-up schedule (empty: none) at `now`. A source's very
    /// first schedule (none before, none on disk) makes `now` the start of
    /// its day 1, persisted next; a later one keeps the day count.
    pub fn set_schedule(&self, steps: &[WarmupStep], now: u32) {
        let mut w = self.warm.lock();
        if !w.known && !steps.is_empty() {
            w.saved = SourceSaved {
                day: 1,
                window_start: now,
                used: 0,
            };
            (w.known, w.dirty) = (true, true);
        }
        w.steps = steps.to_vec();
    }

    /// When the source may send again if its day's share is used up (the
    /// start of the next day), `None` when it may send now.
    pub fn wait(&self, now: u32) -> Option<u32> {
        let mut w = self.warm.lock();
        w.roll(now);
        let cap = w.cap()?;
        (w.saved.used >= cap).then(|| w.saved.window_start.saturating_add(DAY))
    }

    /// Counts one message from this source at `now` if its day's share
    /// allows it (checked and counted under one lock: destinations of other
    /// shards share the source). Returns false when it is used up.
    pub fn try_take(&self, now: u32) -> bool {
        let mut w = self.warm.lock();
        w.roll(now);
        let Some(cap) = w.cap() else {
            return true;
        };
        if w.saved.used >= cap {
            return false;
        }
        w.saved.used += 1;
        w.dirty = true;
        true
    }

    /// Gives back a message counted by [`Source::try_take`] and not sent.
    pub fn untake(&self) {
        let mut w = self.warm.lock();
        if w.known && w.saved.used > 0 {
            w.saved.used -= 1;
            w.dirty = true;
        }
    }

    /// True when it has a warm-up schedule (its use is counted).
    pub fn warming(&self) -> bool {
        !self.warm.lock().steps.is_empty()
    }

    /// Persists the state with `write` if it changed since it was last
    /// persisted (under the source's lock, so that states reach the log in
    /// the order they had). A failed write leaves it to persist again.
    pub fn persist<E>(&self, write: impl FnOnce(&SourceSaved) -> Result<(), E>) -> Result<(), E> {
        let mut w = self.warm.lock();
        if !w.dirty {
            return Ok(());
        }
        write(&w.saved)?;
        w.dirty = false;
        Ok(())
    }

    /// The state a checkpoint keeps: that of a source that has had a
    /// warm-up (now or before the restart).
    pub fn saved(&self) -> Option<SourceSaved> {
        let w = self.warm.lock();
        w.known.then_some(w.saved)
    }

    /// (day, today's cap, used today, when the day ends), as of `now`.
    pub fn status(&self, now: u32) -> (u32, Option<u32>, u32, u32) {
        let mut w = self.warm.lock();
        w.roll(now);
        let s = w.saved;
        (s.day, w.cap(), s.used, s.window_start.saturating_add(DAY))
    }
}

/// A reply rule's suspension of a destination's path through one source
/// (kept by the source's name: paths are rebuilt when the pools change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSusp {
    /// The source's name.
    pub source: Box<str>,
    /// When it ends (unix seconds).
    pub until: u32,
    /// Its length, seconds (bounds it if the clock steps back).
    pub secs: u32,
    /// The rule's pattern ("" when restored from disk).
    pub by: Box<str>,
}

/// A destination's path through one source: the source and the path's own
/// message-rate state.
#[derive(Debug)]
pub struct Path {
    /// The source.
    pub source: Arc<Source>,
    /// The per-source message-rate limits of the destination, for this path.
    pub rate: Option<Box<Rate>>,
}

impl Bucket {
    /// Replaces the destination's paths with those through `pool` (the
    /// rate state of a path that stays is kept) and notes configuration
    /// generation `gen`.
    pub fn set_pool(&mut self, pool: &[Arc<Source>], gen: u32) {
        let mut old = std::mem::take(&mut self.paths);
        self.paths = pool
            .iter()
            .map(|s| {
                let kept = old
                    .iter()
                    .position(|p| Arc::ptr_eq(&p.source, s))
                    .map(|i| old.swap_remove(i));
                Path {
                    source: s.clone(),
                    rate: kept
                        .and_then(|p| p.rate)
                        .or_else(|| Rate::new(self.path_rate).map(Box::new)),
                }
            })
            .collect();
        self.egress_gen = gen;
    }

    /// Sets the per-source limits: at most `limit` sessions (0: none) and
    /// `rate` messages per period through each source.
    pub fn set_path_limits(&mut self, limit: u16, rate: RateLimit) {
        self.path_limit = limit;
        self.path_rate = rate;
        for p in &mut self.paths {
            match (&mut p.rate, Rate::new(rate)) {
                (Some(old), Some(_)) if old.limit() == rate => {}
                (Some(old), Some(mut new)) => {
                    new.carry(old);
                    **old = new;
                }
                (r, new) => *r = new.map(Box::new),
            }
        }
    }

    /// Open sessions through path `i`.
    pub fn path_open(&self, i: usize) -> usize {
        let s = &self.paths[i].source;
        self.slots
            .iter()
            .filter(|x| x.source.as_ref().is_some_and(|y| Arc::ptr_eq(y, s)))
            .count()
    }

    /// When path `i` may send the next message, if not now: its rate, its
    /// source's day share, or a rule's suspension of it.
    pub fn path_time(&self, i: usize, now: u32) -> Option<u32> {
        let p = &self.paths[i];
        let rate = p.rate.as_ref().and_then(|r| {
            let at = r.allowed_at();
            (at > now as u64 * 1000).then(|| at.div_ceil(1000).min(u32::MAX as u64) as u32)
        });
        rate.max(p.source.wait(now))
            .max(self.path_suspension(&p.source.name, now).map(|s| s.until))
    }

    /// The suspension in force of the path through source `name`, if any.
    pub fn path_suspension(&self, name: &str, now: u32) -> Option<&PathSusp> {
        self.path_susp
            .iter()
            .find(|s| &*s.source == name && s.until > now)
    }

    /// A reply rule suspends the path through source `name` until `now +
    /// secs` (a later end in force is kept). Returns the new end, `None`
    /// when nothing changed, `Err` when the list is full (then the caller
    /// suspends the destination).
    pub fn suspend_path(
        &mut self,
        name: &str,
        secs: u32,
        pattern: &str,
        now: u32,
    ) -> Result<Option<u32>, ()> {
        let until = now.saturating_add(secs).max(1);
        self.end_path_suspensions(now);
        let full = self.path_susp.len() >= crate::storage::record::MAX_PATH_SUSPENSIONS;
        match self.path_susp.iter_mut().find(|s| &*s.source == name) {
            Some(s) if s.until >= until => Ok(None),
            Some(s) => {
                (s.until, s.secs, s.by) = (until, secs, pattern.into());
                Ok(Some(until))
            }
            None if full => Err(()),
            None => {
                self.path_susp.push(PathSusp {
                    source: name.into(),
                    until,
                    secs,
                    by: pattern.into(),
                });
                Ok(Some(until))
            }
        }
    }

    /// Drops path suspensions that ended.
    pub fn end_path_suspensions(&mut self, now: u32) {
        self.path_susp.retain(|s| s.until > now);
    }

    /// Path suspensions ending further away than their own length (the clock
    /// stepped back) are re-based to last that length from now; returns the
    /// new ends, to wake up for.
    pub fn rebase_path_suspensions(&mut self, now: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for s in &mut self.path_susp {
            if s.until > now && s.until - now > s.secs {
                s.until = now.saturating_add(s.secs).max(1);
                out.push(s.until);
            }
        }
        out
    }

    /// The path a new session takes now: one with a free slot and able to
    /// send, the fewest open sessions first (ties from a rotating start).
    /// `None` without paths, or when none may take one.
    pub fn pick_path(&self, now: u32) -> Option<usize> {
        let n = self.paths.len();
        (0..n)
            .map(|k| (k + self.next_path as usize) % n)
            .filter(|&i| self.path_limit == 0 || self.path_open(i) < self.path_limit as usize)
            .filter(|&i| self.path_time(i, now).is_none())
            .min_by_key(|&i| self.path_open(i))
    }

    /// Whether a new session has a path now (always, without sources).
    pub fn path_free(&self, now: u32) -> bool {
        self.paths.is_empty() || self.pick_path(now).is_some()
    }

    /// When a path that is not full may send again, if no path may take a
    /// session now (a full one frees up when a session ends).
    pub fn path_wait(&self, now: u32) -> Option<u32> {
        if self.path_free(now) {
            return None;
        }
        (0..self.paths.len())
            .filter(|&i| self.path_limit == 0 || self.path_open(i) < self.path_limit as usize)
            .filter_map(|i| self.path_time(i, now))
            .min()
    }

    /// The path of open slot `si`, if it still has one.
    pub fn slot_path(&self, si: usize) -> Option<usize> {
        let s = self.slots[si].source.as_ref()?;
        self.paths.iter().position(|p| Arc::ptr_eq(&p.source, s))
    }

    /// Counts one message through path `i` at `now` (its source's share
    /// was taken already, with [`Source::try_take`]).
    pub fn take_path(&mut self, i: usize, now: u32) {
        if let Some(r) = self.paths[i].rate.as_mut() {
            r.take(now as u64 * 1000);
        }
    }

    /// Whether open slot `si` is one too many on its path (a per-source limit
    /// was lowered under it): the ones opened last end first.
    pub fn slot_over_path_limit(&self, si: usize) -> bool {
        let Some(src) = self.slots[si].source.as_ref() else {
            return false;
        };
        let before = self.slots[..si]
            .iter()
            .filter(|x| x.source.as_ref().is_some_and(|y| Arc::ptr_eq(y, src)))
            .count();
        self.path_limit != 0 && before >= self.path_limit as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<WarmupStep> {
        vec![
            WarmupStep { day: 1, per_day: 2 },
            WarmupStep { day: 3, per_day: 5 },
        ]
    }

    #[test]
    fn warmup_caps_each_day_and_ramps() {
        let s = Source::new("ip1", None, 1000);
        s.set_schedule(&steps(), 1000);
        for _ in 0..2 {
            assert_eq!(s.wait(1000), None);
            assert!(s.try_take(1000));
        }
        assert!(!s.try_take(1000), "used up");
        assert_eq!(s.wait(1000), Some(1000 + DAY));
        assert_eq!(s.status(1000 + DAY).0, 2, "day 2 begins a day later");
        assert_eq!(s.wait(1000 + DAY), None);
        // Day 3: the next step's cap.
        assert_eq!(s.status(1000 + 2 * DAY), (3, Some(5), 0, 1000 + 3 * DAY));
    }

    #[test]
    fn a_clock_step_back_keeps_the_count_and_waits_at_most_a_day() {
        let s = Source::new("ip1", None, 10 * DAY);
        s.set_schedule(&steps(), 10 * DAY);
        assert!(s.try_take(10 * DAY) && s.try_take(10 * DAY));
        // Back by two days: still day 1, still used up, the day restarts now.
        assert_eq!(s.wait(8 * DAY), Some(9 * DAY));
        assert_eq!(s.status(8 * DAY).0, 1);
    }

    #[test]
    fn state_survives_as_saved() {
        let s = Source::new("ip1", None, 0);
        s.set_schedule(&steps(), 0);
        assert!(s.try_take(5));
        let mut saved = None;
        s.persist(|x| {
            saved = Some(*x);
            Ok::<_, ()>(())
        })
        .unwrap();
        let saved = saved.expect("dirty after a take");
        assert_eq!(saved.used, 1);
        s.persist(|_| Err(()))
            .expect("persisted once: nothing to write");
        let back = Source::new("ip1", Some(saved), 2 * DAY + 1);
        back.set_schedule(&steps(), 2 * DAY + 1);
        assert_eq!(back.status(2 * DAY + 1).0, 3, "the day count goes on");
    }
}
