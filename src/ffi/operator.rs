//! Operator actions: hold, release, delete, flush, suspend, resume, limits and
//! re-routing, by message id or by routing key. Depends on `boundary`,
//! `status`, `handle` and `ptr`.

use super::boundary::with_queue;
use super::handle::mailq;
use super::ptr::{text, write_opt};
use super::status::{fail, mailq_status, mailq_status::*, Fail};
use crate::types::MessageId;
use crate::Queue;
use std::ffi::{c_char, c_int};

/// Runs `action` on message `id`; `*changed` (when not NULL) gets its count.
///
/// # Safety
/// `changed` is NULL or writable.
unsafe fn by_id(
    q: *mut mailq,
    id: u64,
    changed: *mut usize,
    action: fn(&Queue, MessageId) -> crate::Result<usize>,
) -> mailq_status {
    // SAFETY: forwarded from this function's contract.
    with_queue(q, |qq| unsafe {
        write_opt(changed, action(qq, MessageId(id))?)
    })
}

/// [`with_queue`] for a call on routing key `key`.
///
/// # Safety
/// `key` is NULL or a NUL-terminated string.
unsafe fn with_key(
    q: *mut mailq,
    key: *const c_char,
    body: impl FnOnce(&Queue, &str) -> Result<(), Fail>,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: forwarded from this function's contract.
        let key = unsafe { text(key, "key") }?;
        body(qq, key)
    })
}

/// Runs `action` on routing key `key`; `*changed` (when not NULL) gets its count.
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `changed` is NULL or writable.
unsafe fn by_key(
    q: *mut mailq,
    key: *const c_char,
    changed: *mut usize,
    action: fn(&Queue, &str) -> crate::Result<usize>,
) -> mailq_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { with_key(q, key, |qq, key| write_opt(changed, action(qq, key)?)) }
}

/// Holds every waiting recipient of a message; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_hold(q: *mut mailq, id: u64, changed: *mut usize) -> mailq_status {
    // SAFETY: `changed` is NULL or writable (header contract).
    unsafe { by_id(q, id, changed, Queue::hold) }
}

/// Releases a held message: its recipients become ready; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_release(
    q: *mut mailq,
    id: u64,
    changed: *mut usize,
) -> mailq_status {
    // SAFETY: `changed` is NULL or writable (header contract).
    unsafe { by_id(q, id, changed, Queue::release) }
}

/// Deletes a message (no DSN); `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_delete(q: *mut mailq, id: u64, changed: *mut usize) -> mailq_status {
    // SAFETY: `changed` is NULL or writable (header contract).
    unsafe { by_id(q, id, changed, Queue::delete) }
}

/// Holds every waiting recipient routed to `key`; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_hold_bucket(
    q: *mut mailq,
    key: *const c_char,
    changed: *mut usize,
) -> mailq_status {
    // SAFETY: `key` is a string and `changed` NULL or writable (header contract).
    unsafe { by_key(q, key, changed, Queue::hold_bucket) }
}

/// Releases every held recipient routed to `key`; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_release_bucket(
    q: *mut mailq,
    key: *const c_char,
    changed: *mut usize,
) -> mailq_status {
    // SAFETY: `key` is a string and `changed` NULL or writable (header contract).
    unsafe { by_key(q, key, changed, Queue::release_bucket) }
}

/// Makes the deferred recipients of `key` ready now; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_flush_bucket(
    q: *mut mailq,
    key: *const c_char,
    changed: *mut usize,
) -> mailq_status {
    // SAFETY: `key` is a string and `changed` NULL or writable (header contract).
    unsafe { by_key(q, key, changed, Queue::flush_bucket) }
}

/// Makes every deferred recipient ready now (and revives dead destinations).
#[no_mangle]
pub unsafe extern "C" fn mailq_flush(q: *mut mailq, changed: *mut usize) -> mailq_status {
    // SAFETY: `changed` is NULL or writable (header contract).
    with_queue(q, |qq| unsafe { write_opt(changed, qq.flush()?) })
}

/// Suspends a destination (no new sessions) until `mailq_resume`.
#[no_mangle]
pub unsafe extern "C" fn mailq_suspend(q: *mut mailq, key: *const c_char) -> mailq_status {
    // SAFETY: `key` is a NUL-terminated string (header contract).
    unsafe { with_key(q, key, |qq, key| Ok(qq.suspend(key)?)) }
}

/// Suspends a destination for `seconds` (at least 1); it resumes by itself
/// then (part of `mailq_next_timeout`), or earlier on `mailq_resume`.
#[no_mangle]
pub unsafe extern "C" fn mailq_suspend_for(
    q: *mut mailq,
    key: *const c_char,
    seconds: u64,
) -> mailq_status {
    let d = std::time::Duration::from_secs(seconds);
    // SAFETY: `key` is a NUL-terminated string (header contract).
    unsafe { with_key(q, key, |qq, key| Ok(qq.suspend_for(key, d)?)) }
}

/// Resumes a suspended destination.
#[no_mangle]
pub unsafe extern "C" fn mailq_resume(q: *mut mailq, key: *const c_char) -> mailq_status {
    // SAFETY: `key` is a NUL-terminated string (header contract).
    unsafe { with_key(q, key, |qq, key| Ok(qq.resume(key)?)) }
}

/// Sets the concurrency limit of one destination.
#[no_mangle]
pub unsafe extern "C" fn mailq_set_concurrency_limit(
    q: *mut mailq,
    key: *const c_char,
    limit: u16,
) -> mailq_status {
    // SAFETY: `key` is a NUL-terminated string (header contract).
    unsafe { with_key(q, key, |qq, key| Ok(qq.set_concurrency_limit(key, limit)?)) }
}

/// Sets the message-rate limits of one destination: messages per second,
/// minute, hour and day (0: no limit for that period; all 0 removes them).
/// A delivery needs both these and the concurrency window to allow it; a
/// destination out of rate waits for a wake-up that `mailq_next_wakeup`
/// reports. In memory: set them again after reopening.
#[no_mangle]
pub unsafe extern "C" fn mailq_set_rate_limit(
    q: *mut mailq,
    key: *const c_char,
    per_second: u32,
    per_minute: u32,
    per_hour: u32,
    per_day: u32,
) -> mailq_status {
    let limit = crate::types::RateLimit {
        per_second,
        per_minute,
        per_hour,
        per_day,
    };
    // SAFETY: `key` is a NUL-terminated string (header contract).
    unsafe { with_key(q, key, |qq, key| Ok(qq.set_rate_limit(key, limit)?)) }
}

/// What a reply rule does (passed as an `int` to `mailq_add_reply_rule`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mailq_rule_action {
    /// Suspend the destination for the rule's `seconds`.
    MAILQ_RULE_SUSPEND = 1,
    /// Take a temporary failure as permanent.
    MAILQ_RULE_PERMANENT = 2,
    /// Suspend only the egress path the reply came through (the session's
    /// source to this destination) for the rule's `seconds`; the
    /// destination's other sources go on.
    MAILQ_RULE_SUSPEND_SOURCE = 3,
}

/// Appends a reply-driven rule: `pattern` is a case-insensitive regular
/// expression (regex crate syntax) matched anywhere in a failed attempt's
/// reply (e.g. `\\[TSS04\\]`); `action` is `MAILQ_RULE_SUSPEND` (suspend the
/// destination for `seconds`, 1 s to 68 years), `MAILQ_RULE_SUSPEND_SOURCE`
/// (suspend the session's source to that destination only, same bounds) or
/// `MAILQ_RULE_PERMANENT` (`seconds` ignored). Rules are tried in order, the first match acts. A bad
/// pattern or action is `MAILQ_ERR_INVALID_ARGUMENT` and changes nothing.
/// Rules are configuration: add them again after opening.
#[no_mangle]
pub unsafe extern "C" fn mailq_add_reply_rule(
    q: *mut mailq,
    pattern: *const c_char,
    action: c_int,
    seconds: u64,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: `pattern` is a NUL-terminated string (header contract).
        let pattern = unsafe { text(pattern, "pattern")? };
        let action = match action {
            x if x == mailq_rule_action::MAILQ_RULE_SUSPEND as c_int => {
                crate::types::RuleAction::Suspend(std::time::Duration::from_secs(seconds))
            }
            x if x == mailq_rule_action::MAILQ_RULE_SUSPEND_SOURCE as c_int => {
                crate::types::RuleAction::SuspendSource(std::time::Duration::from_secs(seconds))
            }
            x if x == mailq_rule_action::MAILQ_RULE_PERMANENT as c_int => {
                crate::types::RuleAction::Permanent
            }
            _ => {
                return fail(
                    MAILQ_ERR_INVALID_ARGUMENT,
                    "action must be MAILQ_RULE_SUSPEND, MAILQ_RULE_SUSPEND_SOURCE or MAILQ_RULE_PERMANENT",
                )
            }
        };
        Ok(qq.add_reply_rule(crate::types::ReplyRule {
            pattern: pattern.to_string(),
            action,
        })?)
    })
}

/// Appends a reply-driven rule that throttles: for `seconds` after a reply
/// matching `pattern`, the destination's concurrency limit is at most
/// `window` (0: unchanged) and its message rate at most the given counts per
/// second, minute, hour and day (0: unchanged for that period); its own
/// limits come back when it ends. Errors as for `mailq_add_reply_rule` (also
/// when neither a window nor a rate is given).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn mailq_add_reply_throttle(
    q: *mut mailq,
    pattern: *const c_char,
    seconds: u64,
    window: u16,
    per_second: u32,
    per_minute: u32,
    per_hour: u32,
    per_day: u32,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: `pattern` is a NUL-terminated string (header contract).
        let pattern = unsafe { text(pattern, "pattern")? };
        Ok(qq.add_reply_rule(crate::types::ReplyRule {
            pattern: pattern.to_string(),
            action: crate::types::RuleAction::Throttle {
                window,
                rate: crate::types::RateLimit {
                    per_second,
                    per_minute,
                    per_hour,
                    per_day,
                },
                duration: std::time::Duration::from_secs(seconds),
            },
        })?)
    })
}

/// Removes every reply-driven rule (the suspensions they caused stay).
#[no_mangle]
pub extern "C" fn mailq_clear_reply_rules(q: *mut mailq) -> mailq_status {
    with_queue(q, |qq| Ok(qq.set_reply_rules(&[])?))
}

/// Re-routes every waiting recipient of routing key `from` to `to` (persisted).
#[no_mangle]
pub unsafe extern "C" fn mailq_reroute(
    q: *mut mailq,
    from: *const c_char,
    to: *const c_char,
    changed: *mut usize,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: `from` and `to` are NUL-terminated strings, `changed` NULL or
        // writable (header contract).
        unsafe {
            let (from, to) = (text(from, "from")?, text(to, "to")?);
            write_opt(changed, qq.reroute(from, to)?)
        }
    })
}

/// Re-routes one recipient of a message to routing key `to` (persisted).
#[no_mangle]
pub unsafe extern "C" fn mailq_reroute_recipient(
    q: *mut mailq,
    id: u64,
    index: u32,
    to: *const c_char,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: `to` is a NUL-terminated string (header contract).
        let to = unsafe { text(to, "to") }?;
        if !qq.reroute_recipient(MessageId(id), index, to)? {
            return fail(
                MAILQ_ERR_NOT_FOUND,
                "recipient is not waiting (in flight, final, or already there)",
            );
        }
        Ok(())
    })
}
