//! Message-rate limits of a destination: one GCRA (generic cell rate
//! algorithm, the token bucket as a single "theoretical arrival time") per
//! period — second, minute, hour, day. A delivery needs every one of them to
//! allow it; the time the next one is allowed is what the scheduler wakes up
//! for. The scheduler decides at whole seconds of the queue's clock, so each
//! limit allows what one second's share is (a burst of up to a second) and
//! no more: no window of a limit's period ever holds more than its count, as
//! receivers that count per minute or per day see it. A clock that steps back
//! never makes a limit wait longer than one interval.
//! Depends on `types` only.

use crate::types::RateLimit;

/// Periods of [`RateLimit`]'s fields, in milliseconds.
const PERIODS_MS: [u64; 4] = [1_000, 60_000, 3_600_000, 86_400_000];

/// The state of a destination's rate limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    limit: RateLimit,
    /// Per limited period: emission interval (time per message), burst
    /// tolerance and theoretical arrival time, in microseconds.
    cells: Vec<Cell>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell {
    period_ms: u64,
    interval_us: u64,
    tolerance_us: u64,
    tat_us: u64,
}

impl Rate {
    /// The limits of `limit`; `None` when it limits nothing.
    pub fn new(limit: RateLimit) -> Option<Rate> {
        let cells: Vec<Cell> = limit
            .counts()
            .iter()
            .zip(PERIODS_MS)
            .filter(|(&n, _)| n > 0)
            .map(|(&n, p)| {
                let interval_us = (p * 1000).div_ceil(n as u64);
                Cell {
                    period_ms: p,
                    interval_us,
                    // Sends happen at whole seconds: a burst tolerance of just
                    // under a second lets each second take its whole share
                    // (k sends need (k-1)·interval ≤ tolerance) while a window
                    // of the period, P/1s of them, still holds at most `n`.
                    tolerance_us: 999_999,
                    tat_us: 0,
                }
            })
            .collect();
        (!cells.is_empty()).then_some(Rate { limit, cells })
    }

    /// The configured limits.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// The earliest time (ms of the queue's clock) a delivery is allowed; at
    /// or before now means now.
    pub fn allowed_at(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.tat_us.saturating_sub(c.tolerance_us))
            .max()
            .unwrap_or(0)
            .div_ceil(1000)
    }

    /// After the clock stepped back to `now_ms`: a limit waits at most one
    /// interval from now, not for the time the clock went back.
    pub fn rebase(&mut self, now_ms: u64) {
        let now = now_ms * 1000;
        for c in &mut self.cells {
            c.tat_us = c.tat_us.min(now + c.tolerance_us + c.interval_us);
        }
    }

    /// Keeps what was already sent in the periods `old` limits too, so that
    /// changing a limit does not hand out a fresh burst.
    pub fn carry(&mut self, old: &Rate) {
        for c in &mut self.cells {
            if let Some(o) = old.cells.iter().find(|o| o.period_ms == c.period_ms) {
                c.tat_us = o.tat_us;
            }
        }
    }

    /// Counts one delivery at `now_ms` (allowed or not: the caller checked).
    pub fn take(&mut self, now_ms: u64) {
        let now = now_ms * 1000;
        for c in &mut self.cells {
            c.tat_us = c.tat_us.max(now) + c.interval_us;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(s: u32, m: u32, h: u32, d: u32) -> RateLimit {
        RateLimit {
            per_second: s,
            per_minute: m,
            per_hour: h,
            per_day: d,
        }
    }

    /// Deliveries taken at time `t` (ms) until the limit says no.
    fn burst(r: &mut Rate, t: u64) -> usize {
        let mut n = 0;
        while r.allowed_at() <= t {
            r.take(t);
            n += 1;
            assert!(n < 1_000_000, "unbounded");
        }
        n
    }

    #[test]
    fn nothing_limited_is_no_rate() {
        assert_eq!(Rate::new(RateLimit::default()), None);
    }

    #[test]
    fn a_per_second_limit_allows_its_count_each_second() {
        let mut r = Rate::new(limit(10, 0, 0, 0)).unwrap();
        assert_eq!(burst(&mut r, 5_000), 10);
        assert!(r.allowed_at() > 5_000);
        assert!(r.allowed_at() <= 6_000);
        assert_eq!(burst(&mut r, 6_000), 10);
    }

    /// Sends decided at whole seconds for `secs` seconds; returns the count per second.
    fn run(r: &mut Rate, secs: u64) -> Vec<usize> {
        (0..secs).map(|s| burst(r, s * 1000)).collect()
    }

    /// No window of `period` seconds holds more than `n`.
    fn windows_hold(per_sec: &[usize], period: usize, n: usize) {
        for start in 0..per_sec.len() {
            let w: usize = per_sec[start..].iter().take(period).sum();
            assert!(w <= n, "{w} in the {period} s from second {start}");
        }
    }

    #[test]
    fn every_period_must_allow_and_no_window_exceeds_a_limit() {
        // 20/s and 600/min: 10 a second (the minute's share), never 20.
        let mut r = Rate::new(limit(20, 600, 0, 0)).unwrap();
        let per_sec = run(&mut r, 300);
        windows_hold(&per_sec, 1, 20);
        windows_hold(&per_sec, 60, 600);
        let total: usize = per_sec.iter().sum();
        assert!((2990..=3000).contains(&total), "{total} in 5 minutes");
        // 50 a day: one every 28.8 minutes.
        let mut r = Rate::new(limit(0, 0, 0, 50)).unwrap();
        assert_eq!(burst(&mut r, 0), 1);
        let next = r.allowed_at();
        assert!(
            (86_400_000 / 50 - 1_000..=86_400_000 / 50).contains(&next),
            "{next}"
        );
    }

    #[test]
    fn sustained_rates_use_the_whole_limit_and_never_more() {
        for (l, period, n) in [
            (limit(0, 60, 0, 0), 60, 60),
            (limit(0, 7, 0, 0), 60, 7),
            (limit(0, 0, 3600, 0), 3600, 3600),
            (limit(3, 0, 0, 0), 1, 3),
            (limit(6, 0, 0, 0), 1, 6),
            (limit(0, 90, 0, 0), 60, 90),
            (limit(0, 599, 0, 0), 60, 599),
            (limit(0, 0, 5000, 0), 3600, 5000),
        ] {
            let mut r = Rate::new(l).unwrap();
            let per_sec = run(&mut r, 3 * period as u64);
            windows_hold(&per_sec, period, n);
            let total: usize = per_sec.iter().sum();
            // The whole rate: three periods' worth, less at most one.
            assert!(total >= 2 * n, "{l:?}: {total} in three periods");
            assert!(
                total >= 3 * n - n.max(1) && total <= 3 * n,
                "{l:?}: {total}"
            );
        }
    }

    #[test]
    fn changing_a_limit_keeps_what_was_sent() {
        let mut r = Rate::new(limit(0, 6, 0, 0)).unwrap();
        assert_eq!(burst(&mut r, 0), 1);
        let mut wider = Rate::new(limit(0, 12, 0, 100)).unwrap();
        wider.carry(&r);
        // The minute's state carries over: no fresh second's share at once.
        assert!(wider.allowed_at() > 0, "{}", wider.allowed_at());
    }

    #[test]
    fn a_clock_stepping_back_waits_at_most_one_interval_past_the_burst() {
        let mut r = Rate::new(limit(0, 60, 0, 0)).unwrap();
        let day = 86_400_000;
        let per_sec = run(&mut r, 120);
        windows_hold(&per_sec, 60, 60);
        assert_eq!(burst(&mut r, 2 * day), 1);
        // The clock goes back a day: not a day of waiting.
        let back = day;
        r.rebase(back);
        assert!(r.allowed_at() <= back + 1_000, "{}", r.allowed_at());
        assert_eq!(burst(&mut r, back + 1_000), 1);
    }
}
