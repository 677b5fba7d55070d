//! Egress sources: the pools destinations send from, warm-up schedules and
//! per-source limits (see `Queue::set_sources` in the Rust API). Depends on
//! `boundary`, `status`, `handle` and `ptr`.

use super::boundary::with_queue;
use super::handle::mailq;
use super::ptr::{items, opt_text, text};
use super::status::mailq_status;
use crate::types::{RateLimit, WarmupStep};
use std::ffi::c_char;

/// Sets the egress sources (IPs or pool members, named by the MTA: 1 to 255
/// bytes, no spaces) that sessions of destination `key` go out from; `key`
/// NULL sets the default pool of every destination without its own, and
/// `n` 0 gives `key` back to the default pool. A new session takes the
/// source of the pool with the fewest open sessions that may send now;
/// `mailq_session_source` says which. Configuration: set it again after
/// opening. `MAILQ_ERR_INVALID_ARGUMENT` for a bad name (nothing changes).
#[no_mangle]
pub unsafe extern "C" fn mailq_set_sources(
    q: *mut mailq,
    key: *const c_char,
    names: *const *const c_char,
    n: usize,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: `key` is NULL or a NUL-terminated string, `names` points to
        // `n` NUL-terminated strings (header contract).
        let key = unsafe { opt_text(key, "key")? };
        // SAFETY: as above.
        let ptrs = unsafe { items(names, n, "names")? };
        let mut list = Vec::with_capacity(ptrs.len());
        for &p in ptrs {
            // SAFETY: as above.
            list.push(unsafe { text(p, "source name")? });
        }
        Ok(qq.set_sources(key, &list)?)
    })
}

/// Sets the warm-up schedule of egress source `source`: from day `days[i]`
/// (1 = the day it first got a schedule) on, at most `per_day[i]` messages a
/// day leave from it; days increase, caps are at least 1; `n` 0 removes the
/// cap. The day count and the day's use are persisted. When a source's day
/// is used up its destinations use another source of their pool, or wait
/// for the next day.
#[no_mangle]
pub unsafe extern "C" fn mailq_set_warmup(
    q: *mut mailq,
    source: *const c_char,
    days: *const u32,
    per_day: *const u32,
    n: usize,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: `source` is a NUL-terminated string; `days` and `per_day`
        // point to `n` values each (header contract).
        let (source, days, caps) = unsafe {
            (
                text(source, "source")?,
                items(days, n, "days")?,
                items(per_day, n, "per_day")?,
            )
        };
        let steps: Vec<WarmupStep> = days
            .iter()
            .zip(caps)
            .map(|(&day, &per_day)| WarmupStep { day, per_day })
            .collect();
        Ok(qq.set_warmup(source, &steps)?)
    })
}

/// Sets destination `key`'s limits per egress source: at most `concurrency`
/// sessions (0: no limit) and the given messages per second, minute, hour
/// and day (0: none for that period) through each of its sources, on top of
/// its own window and rates. Persisted.
#[no_mangle]
pub unsafe extern "C" fn mailq_set_source_limits(
    q: *mut mailq,
    key: *const c_char,
    concurrency: u16,
    per_second: u32,
    per_minute: u32,
    per_hour: u32,
    per_day: u32,
) -> mailq_status {
    let rate = RateLimit {
        per_second,
        per_minute,
        per_hour,
        per_day,
    };
    with_queue(q, |qq| {
        // SAFETY: `key` is a NUL-terminated string (header contract).
        let key = unsafe { text(key, "key")? };
        Ok(qq.set_source_limits(key, concurrency, rate)?)
    })
}
