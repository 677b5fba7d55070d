//! The deferred-retry timer: a wheel of one-second slots plus an overflow heap,
//! robust to the clock jumping either way. Depends on `index` ids only.

use crate::index::RcptRef;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A timer wheel of one-second slots for deferred recipients, with an
/// overflow heap for times beyond its horizon. Entries are recipient
/// references, validated when they fire.
///
/// Every entry keeps its own time: an entry scheduled at `t` is handed out by
/// the first [`Wheel::advance`] with `now >= t`, never earlier, whether the
/// clock moved forwards (past the horizon) or backwards (the wheel is then
/// rebased on the new time, see [`Wheel::observe`]).
pub struct Wheel {
    slots: Vec<Vec<RcptRef>>,
    bits: Vec<u64>,
    /// All times before `base` have been drained; slot `i` holds the entries
    /// of the one time `t` in `base..base + WHEEL_SLOTS` with `t % WHEEL_SLOTS == i`.
    base: u32,
    far: BinaryHeap<Reverse<(u32, RcptRef)>>,
    /// Entries inserted with a time before `base` (the wheel has passed it),
    /// with that time.
    overdue: Vec<(u32, RcptRef)>,
    len: usize,
}

/// Wheel horizon in seconds (above the default maximal backoff of 4000 s).
pub const WHEEL_SLOTS: u32 = 4096;

impl Wheel {
    /// An empty wheel starting at `now`.
    pub fn new(now: u32) -> Self {
        Wheel {
            slots: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
            bits: vec![0; (WHEEL_SLOTS / 64) as usize],
            base: now,
            far: BinaryHeap::new(),
            overdue: Vec::new(),
            len: 0,
        }
    }

    /// True when empty.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `r` at time `t`.
    pub fn insert(&mut self, t: u32, r: RcptRef) {
        self.len += 1;
        if t < self.base {
            // The wheel has passed `t` (a re-routed recipient whose retry time has
            // passed, or a clock that stepped back): a wheel slot would only be
            // visited after the next full turn.
            self.overdue.push((t, r));
            return;
        }
        if t - self.base < WHEEL_SLOTS {
            let i = (t % WHEEL_SLOTS) as usize;
            let v = &mut self.slots[i];
            if v.len() == v.capacity() {
                // Grow by an eighth, not by doubling: deferred recipients are the
                // bulk of a big queue, and a doubled slot wastes up to 4 B each.
                let n = v.len();
                v.reserve_exact((n / 8).max(4));
            }
            v.push(r);
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.far.push(Reverse((t, r)));
        }
    }

    fn slot_set(&self, i: usize) -> bool {
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// The time of the entries in slot `i`.
    fn slot_time(&self, i: usize) -> u32 {
        let delta = (i as u32 + WHEEL_SLOTS - self.base % WHEEL_SLOTS) % WHEEL_SLOTS;
        self.base.wrapping_add(delta)
    }

    fn drain_slot(&mut self, i: usize, out: &mut Vec<RcptRef>) {
        if self.slot_set(i) {
            let v = std::mem::take(&mut self.slots[i]);
            self.len -= v.len();
            out.extend(v);
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Tells the wheel the current time without draining anything. When the
    /// clock has stepped back (`now + 1 < base`), the wheel is rebased on `now`:
    /// every entry is re-filed by its own time, so that each fires exactly when
    /// `now` reaches it. Returns true when it rebased.
    pub fn observe(&mut self, now: u32) -> bool {
        if now.saturating_add(1) >= self.base {
            return false;
        }
        let all: Vec<(u32, RcptRef)> = self.entries().collect();
        for w in 0..self.bits.len() {
            let mut word = self.bits[w];
            while word != 0 {
                let i = w * 64 + word.trailing_zeros() as usize;
                word &= word - 1;
                self.slots[i].clear();
            }
            self.bits[w] = 0;
        }
        self.far.clear();
        self.overdue.clear();
        self.len = 0;
        self.base = now;
        for (t, r) in all {
            self.insert(t, r);
        }
        true
    }

    /// Moves every entry due at or before `now` into `out`.
    pub fn advance(&mut self, now: u32, out: &mut Vec<RcptRef>) {
        self.observe(now);
        if !self.overdue.is_empty() {
            // Without a rebase `base <= now + 1`, so every overdue entry is due;
            // after one, those re-filed as overdue are before `now`.
            let before = self.overdue.len();
            self.overdue.retain(|&(t, r)| {
                if t <= now {
                    out.push(r);
                    false
                } else {
                    true
                }
            });
            self.len -= before - self.overdue.len();
        }
        if now < self.base {
            return;
        }
        let steps = (now - self.base).saturating_add(1).min(WHEEL_SLOTS);
        for k in 0..steps {
            let i = (self.base.wrapping_add(k) % WHEEL_SLOTS) as usize;
            self.drain_slot(i, out);
        }
        self.base = now.saturating_add(1);
        let horizon = self.base as u64 + WHEEL_SLOTS as u64;
        while let Some(&Reverse((t, r))) = self.far.peek() {
            if t as u64 >= horizon {
                break;
            }
            self.far.pop();
            self.len -= 1;
            if t <= now {
                out.push(r);
            } else {
                self.insert(t, r);
            }
        }
    }

    /// The earliest time at which an entry (possibly stale) is due: the smallest
    /// time of any entry, which may be in the past.
    pub fn next_due(&self) -> Option<u32> {
        let overdue = self.overdue.iter().map(|e| e.0).min();
        let start = self.base % WHEEL_SLOTS;
        let words = self.bits.len();
        let mut best = None;
        for w in 0..=words {
            let wi = ((start as usize / 64) + w) % words;
            let mut word = self.bits[wi];
            if w == 0 {
                word &= !0u64 << (start % 64);
            } else if w == words {
                word &= !(!0u64 << (start % 64));
            }
            if word != 0 {
                let i = wi * 64 + word.trailing_zeros() as usize;
                best = Some(self.slot_time(i));
                break;
            }
        }
        let far = self.far.peek().map(|r| r.0 .0);
        [overdue, best, far].into_iter().flatten().min()
    }

    /// Every entry with its time, in no particular order (for invariant checks).
    pub fn entries(&self) -> impl Iterator<Item = (u32, RcptRef)> + '_ {
        let slots = (0..self.slots.len())
            .filter(move |&i| self.slot_set(i))
            .flat_map(move |i| {
                let t = self.slot_time(i);
                self.slots[i].iter().map(move |&r| (t, r))
            });
        let far = self.far.iter().map(|e| e.0);
        slots.chain(far).chain(self.overdue.iter().copied())
    }

    /// Bytes held.
    pub fn memory(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.capacity() * 4 + 24)
            .sum::<usize>()
            + self.bits.len() * 8
            + self.far.capacity() * 8
            + self.overdue.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipient reference for tests (shard 0, record `i`).
    fn r(i: u32) -> RcptRef {
        RcptRef::new(0, i)
    }

    /// Record numbers of references.
    fn locals(v: &[RcptRef]) -> Vec<u32> {
        v.iter().map(|r| r.local()).collect()
    }

    /// What advancing the wheel to `t` hands out (record numbers).
    fn step(w: &mut Wheel, t: u32) -> Vec<u32> {
        let mut out = vec![];
        w.advance(t, &mut out);
        out.into_iter().map(RcptRef::local).collect()
    }

    #[test]
    fn wheel_fires_in_order_and_wraps() {
        let mut w = Wheel::new(1000);
        w.insert(1005, r(1));
        w.insert(1000 + 5000, r(2));
        w.insert(999, r(3));
        assert_eq!(w.next_due(), Some(999), "already due");
        assert_eq!(step(&mut w, 1004), vec![3]);
        assert_eq!(w.next_due(), Some(1005));
        assert_eq!(step(&mut w, 1005), vec![1]);
        assert!(step(&mut w, 5999).is_empty());
        assert_eq!(step(&mut w, 6000), vec![2]);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
        w.insert(100_000, r(9));
        assert_eq!(step(&mut w, 200_000), vec![9]);
        // Inserted in the past after the wheel moved on: due at the next advance,
        // even within the same second, and reported at its own time.
        w.insert(150_000, r(10));
        assert_eq!(w.next_due(), Some(150_000));
        assert_eq!(step(&mut w, 200_000), vec![10]);
    }

    /// Drains the wheel second by second over `from..=to`, returning (time, ref) fired.
    fn run(w: &mut Wheel, from: u32, to: u32) -> Vec<(u32, u32)> {
        let mut fired = vec![];
        for now in from..=to {
            let mut out = vec![];
            w.advance(now, &mut out);
            fired.extend(out.into_iter().map(|x| (now, x.local())));
        }
        fired
    }

    fn sorted(mut v: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
        v.sort_unstable();
        v
    }

    #[test]
    fn wheel_backward_jump_fires_at_own_times() {
        let t0 = 1_000_000;
        let mut w = Wheel::new(t0);
        let mut out = vec![];
        w.advance(t0, &mut out);
        // Deferred by 10 s, 5 min, and beyond the horizon.
        w.insert(t0 + 10, r(1));
        w.insert(t0 + 300, r(2));
        w.insert(t0 + 5000, r(3));
        // The clock steps back an hour.
        let back = t0 - 3600;
        assert_eq!(w.next_due(), Some(t0 + 10), "true earliest time");
        let mut out = vec![];
        w.advance(back, &mut out);
        assert!(out.is_empty(), "nothing is due an hour early: {out:?}");
        assert_eq!(w.next_due(), Some(t0 + 10));
        // Deferred again from the stepped-back clock: 10 s later.
        w.insert(back + 10, r(4));
        assert_eq!(w.next_due(), Some(back + 10));
        let fired = run(&mut w, back + 1, t0 + 5000);
        assert_eq!(
            fired,
            vec![(back + 10, 4), (t0 + 10, 1), (t0 + 300, 2), (t0 + 5000, 3)]
        );
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn wheel_overdue_insert_after_backward_jump() {
        let t0 = 2_000_000;
        let mut w = Wheel::new(t0);
        let mut out = vec![];
        w.advance(t0 + 100, &mut out);
        // The clock is now an hour behind the wheel's base; the caller defers a
        // recipient by 60 s from the stepped-back clock without advancing first.
        let back = t0 + 100 - 3600;
        w.insert(back + 60, r(7));
        w.insert(back - 5, r(8)); // genuinely overdue
        assert_eq!(w.next_due(), Some(back - 5));
        assert_eq!(w.entries().count(), 2);
        w.advance(back, &mut out);
        assert_eq!(locals(&out), vec![8], "only the entry due by now");
        assert_eq!(w.next_due(), Some(back + 60));
        assert_eq!(
            sorted(w.entries().map(|(t, x)| (t, x.local())).collect()),
            vec![(back + 60, 7)]
        );
        out.clear();
        w.advance(back + 59, &mut out);
        assert!(out.is_empty(), "not a second early");
        assert_eq!(step(&mut w, back + 60), vec![7]);
        assert!(w.is_empty());
    }

    #[test]
    fn wheel_observe_rebases_without_draining() {
        let mut w = Wheel::new(10_000);
        let mut out = vec![];
        w.advance(10_000, &mut out);
        w.insert(10_050, r(1));
        w.insert(9_000, r(2));
        assert!(!w.observe(10_000), "same time: no rebase");
        assert!(w.observe(5_000), "an hour and more back: rebase");
        assert_eq!(w.next_due(), Some(9_000));
        assert_eq!(
            sorted(w.entries().map(|(t, x)| (t, x.local())).collect()),
            vec![(9_000, 2), (10_050, 1)]
        );
        assert!(step(&mut w, 8_999).is_empty());
        assert_eq!(step(&mut w, 9_000), vec![2]);
        out.clear();
        assert!(step(&mut w, 10_049).is_empty());
        assert_eq!(step(&mut w, 10_050), vec![1]);
    }

    #[test]
    fn wheel_forward_jump_past_horizon() {
        let t0 = 3_000_000;
        let mut w = Wheel::new(t0);
        w.insert(t0 + 5, r(1));
        w.insert(t0 + WHEEL_SLOTS - 1, r(2));
        w.insert(t0 + 3 * WHEEL_SLOTS, r(3));
        w.insert(t0 + 3 * WHEEL_SLOTS + 100, r(4));
        w.insert(t0 + 10 * WHEEL_SLOTS, r(5));
        assert_eq!(w.next_due(), Some(t0 + 5));
        let mut out = vec![];
        // Jump two and a half horizons forward.
        let now = t0 + 5 * WHEEL_SLOTS / 2;
        w.advance(now, &mut out);
        out.sort_unstable();
        assert_eq!(locals(&out), vec![1, 2]);
        assert_eq!(w.next_due(), Some(t0 + 3 * WHEEL_SLOTS));
        // Jump just past 3 and 4, not 5.
        out.clear();
        w.advance(t0 + 3 * WHEEL_SLOTS + 100, &mut out);
        out.sort_unstable();
        assert_eq!(locals(&out), vec![3, 4]);
        assert_eq!(w.next_due(), Some(t0 + 10 * WHEEL_SLOTS));
        assert_eq!(
            w.entries().map(|(t, x)| (t, x.local())).collect::<Vec<_>>(),
            vec![(t0 + 10 * WHEEL_SLOTS, 5)]
        );
        // Then back before everything, a new entry 20 s later, then forward past
        // the horizon again to exactly 5's time.
        out.clear();
        assert!(step(&mut w, t0).is_empty());
        w.insert(t0 + 20, r(6));
        assert_eq!(w.next_due(), Some(t0 + 20));
        w.advance(t0 + 19, &mut out);
        assert!(out.is_empty(), "not before its time: {out:?}");
        assert_eq!(step(&mut w, t0 + 10 * WHEEL_SLOTS - 1), vec![6]);
        assert_eq!(w.next_due(), Some(t0 + 10 * WHEEL_SLOTS));
        out.clear();
        assert_eq!(step(&mut w, t0 + 10 * WHEEL_SLOTS), vec![5]);
        assert!(w.is_empty());
    }

    #[test]
    fn wheel_random_clock_fires_exactly_when_due() {
        // A clock that mostly ticks but sometimes jumps back or far ahead: every
        // entry fires at the first advance with now >= its time, never before.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as u32
        };
        let mut now = 1_000_000u32;
        let mut w = Wheel::new(now);
        let mut pending: std::collections::HashMap<u32, u32> = Default::default();
        let mut next_ref = 0;
        for _ in 0..20_000 {
            match rnd(100) {
                0..=1 => now -= rnd(7200),
                2 => now += rnd(3 * WHEEL_SLOTS),
                _ => now += rnd(3),
            }
            for _ in 0..rnd(3) {
                let t = (now + rnd(6000)).saturating_sub(rnd(50));
                w.insert(t, r(next_ref));
                pending.insert(next_ref, t);
                next_ref += 1;
            }
            let expect = pending.values().copied().min();
            assert_eq!(w.next_due(), expect);
            let mut out = vec![];
            w.advance(now, &mut out);
            for x in out {
                let t = pending.remove(&x.local()).expect("fired once");
                assert!(t <= now, "entry for {t} fired at {now}");
            }
            assert!(pending.values().all(|&t| t > now), "due entry not fired");
            assert_eq!(w.entries().count(), pending.len());
        }
    }
}
