//! Bounces: handing failed and expired recipients (and delay warnings) to the
//! caller for DSNs, and acknowledging them. Depends on `boundary`, `status`, `handle` and `ptr`.

use super::boundary::{with_callback, with_queue};
use super::handle::mailq;
use super::ptr::{cstring, write_opt};
use super::status::{fail, mailq_status, mailq_status::*};
use crate::types::MessageId;
use std::ffi::{c_char, c_void};

/// A failed or expired recipient, or a delay warning, passed to
/// `mailq_bounce_fn`. Pointers are valid during the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mailq_bounce {
    /// Message id.
    pub id: u64,
    /// Recipient index.
    pub index: u32,
    /// Non-zero when the lifetime expired; zero for a permanent failure.
    pub expired: u32,
    /// Envelope sender ("" for the null sender: send no DSN).
    pub sender: *const c_char,
    /// Recipient address.
    pub recipient: *const c_char,
    /// Last error.
    pub reason: *const c_char,
    /// Non-zero for a delay warning (`delay_warning_secs`): the recipient is
    /// still queued; send a DSN with `Action: delayed`, then acknowledge it
    /// with `mailq_ack_delay_warning`.
    pub delayed: u32,
}

/// Callback for `mailq_take_bounces`, once per bounce.
pub type mailq_bounce_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, bounce: *const mailq_bounce)>;

/// Hands out up to `max` failed or expired recipients, calling `cb` for each;
/// `*count` (may be NULL) receives how many. Acknowledge each with
/// `mailq_ack_bounce` once its DSN is queued; unacknowledged ones come back after
/// a restart.
#[no_mangle]
pub unsafe extern "C" fn mailq_take_bounces(
    q: *mut mailq,
    max: usize,
    cb: mailq_bounce_fn,
    userdata: *mut c_void,
    count: *mut usize,
) -> mailq_status {
    with_callback(q, cb, |qq, cb| {
        let list = qq.take_bounces(max)?;
        for b in &list {
            let (s, r, why) = (
                cstring(&b.sender),
                cstring(&b.recipient),
                cstring(&b.reason),
            );
            let cb_b = mailq_bounce {
                id: b.id.0,
                index: b.index,
                expired: b.expired as u32,
                sender: s.as_ptr(),
                recipient: r.as_ptr(),
                reason: why.as_ptr(),
                delayed: b.delayed as u32,
            };
            // SAFETY: the caller's callback (header contract), with pointers
            // valid for the call.
            unsafe { cb(userdata, &cb_b) };
        }
        // SAFETY: `count` is NULL or writable (header contract).
        unsafe { write_opt(count, list.len()) }
    })
}

/// Acknowledges a bounce (not a delay warning): the recipient is final.
#[no_mangle]
pub extern "C" fn mailq_ack_bounce(q: *mut mailq, id: u64, index: u32) -> mailq_status {
    with_queue(q, |qq| {
        if !qq.ack_bounce(MessageId(id), index)? {
            return fail(MAILQ_ERR_NOT_FOUND, "no failed or expired recipient there");
        }
        Ok(())
    })
}

/// Acknowledges a delay warning (`delayed` set) once its DSN is queued: it is
/// recorded as sent, durably on return, and not offered again; the recipient
/// stays queued. `MAILQ_ERR_NOT_FOUND` when there is no such warning (also
/// when the recipient failed or expired meanwhile: its bounce comes next).
#[no_mangle]
pub extern "C" fn mailq_ack_delay_warning(q: *mut mailq, id: u64, index: u32) -> mailq_status {
    with_queue(q, |qq| {
        if !qq.ack_delay_warning(MessageId(id), index)? {
            return fail(MAILQ_ERR_NOT_FOUND, "no delay warning handed out there");
        }
        Ok(())
    })
}
