//! Event-loop integration: the pollable descriptor, the next scheduled event
//! (as a unix time or a timeout) and the tick that fires due events.
//! Depends on `boundary`, `status`, `handle` and `ptr`.

use super::boundary::with_queue;
use super::handle::mailq;
use super::ptr::{out_ptr, write_opt};
use super::status::mailq_status;
use crate::Queue;
use std::ffi::c_int;

/// The pollable descriptor: readable when a destination has ready work. Do not
/// close it. Returns -1 for an invalid handle.
#[no_mangle]
pub extern "C" fn mailq_poll_fd(q: *mut mailq) -> c_int {
    with_queue(q, |qq| Ok(qq.poll_fd()))
}

/// Clears the pollable descriptor; then take sessions until none is returned.
#[no_mangle]
pub extern "C" fn mailq_ack_poll(q: *mut mailq) -> mailq_status {
    with_queue(q, |qq| {
        qq.ack_poll();
        Ok(())
    })
}

/// Stores what `f` computes from queue `q` in the out-parameter `out`.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn answer<T>(
    q: *mut mailq,
    out: *mut T,
    name: &str,
    f: impl FnOnce(&Queue) -> T,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: forwarded from this function's contract.
        *unsafe { out_ptr(out, name) }? = f(qq);
        Ok(())
    })
}

/// Unix time of the next scheduled event (retry, probe, lease deadline, the
/// end of a deleted segment's file kept for reuse), or 0 when nothing is
/// scheduled. Arm a timer for it and call `mailq_tick`.
#[no_mangle]
pub unsafe extern "C" fn mailq_next_wakeup(q: *mut mailq, when: *mut u64) -> mailq_status {
    // SAFETY: `when` is writable (header contract).
    unsafe { answer(q, when, "when", |qq| qq.next_wakeup().unwrap_or(0)) }
}

/// Milliseconds until the next scheduled event, including the deadline for
/// syncing buffered outcome records (which `mailq_next_wakeup` rounds up to a
/// second); 0 when something is due now, -1 when nothing is scheduled. Use it
/// as the timeout of poll/epoll_wait, then call `mailq_tick`.
#[no_mangle]
pub unsafe extern "C" fn mailq_next_timeout(q: *mut mailq, ms: *mut i64) -> mailq_status {
    // SAFETY: `ms` is writable (header contract).
    unsafe {
        answer(q, ms, "ms", |qq| match qq.next_timeout() {
            Some(d) => d.as_millis().min(i64::MAX as u128) as i64,
            None => -1,
        })
    }
}

/// Fires due retries, probes and lease reclaims; `*ready` (may be NULL) is set to
/// 1 when work is ready (the poll fd is raised too).
#[no_mangle]
pub unsafe extern "C" fn mailq_tick(q: *mut mailq, ready: *mut c_int) -> mailq_status {
    // SAFETY: `ready` is NULL or writable (header contract).
    with_queue(q, |qq| unsafe { write_opt(ready, qq.tick() as c_int) })
}
