//! Streaming enqueue: a `mailq_message` is a [`MessageBuilder`] behind a
//! handle, and each export a thin wrapper over one of its methods.
//! Depends on `boundary`, `status`, `handle` and `ptr`.

use super::boundary::{boundary, with_queue_out};
use super::handle::{mailq, mailq_message, message_obj, new_message, take_message, MessageObj};
use super::ptr::{bytes, opt_text, text, write_opt};
use super::status::{mailq_status, mailq_status::*, Fail};
use crate::MessageBuilder;
use parking_lot::Mutex;
use std::ffi::c_char;
use std::sync::Arc;

impl MessageObj {
    /// The builder, until the message is committed.
    fn builder(&mut self) -> Result<&mut MessageBuilder, Fail> {
        self.0.as_mut().ok_or_else(committed)
    }
}

fn committed() -> Fail {
    Fail(MAILQ_ERR_INVALID_HANDLE, "message already committed".into())
}

/// Starts a streamed message (SMTP: after MAIL FROM). Free it with
/// `mailq_message_commit` or `mailq_message_abort`.
#[no_mangle]
pub unsafe extern "C" fn mailq_message_begin(
    q: *mut mailq,
    sender: *const c_char,
    out: *mut *mut mailq_message,
) -> mailq_status {
    // SAFETY: `out` is writable and `sender` a NUL-terminated string (header contract).
    unsafe {
        with_queue_out(q, out, |qq| {
            let m = MessageObj(Some(qq.message(text(sender, "sender")?)?));
            Ok(new_message(Arc::new(Mutex::new(m))))
        })
    }
}

/// Starts a delivery status notification (null sender) for a bounce. Unlike
/// `mailq_message_begin`, its commit is never refused by backpressure
/// (`MAILQ_ERR_TRY_LATER`): acknowledging the bounce ends a recipient, so
/// refusing the DSN would keep a full queue full.
#[no_mangle]
pub unsafe extern "C" fn mailq_message_begin_dsn(
    q: *mut mailq,
    out: *mut *mut mailq_message,
) -> mailq_status {
    // SAFETY: `out` is writable (header contract).
    unsafe {
        with_queue_out(q, out, |qq| {
            let m = MessageObj(Some(qq.dsn_message()?));
            Ok(new_message(Arc::new(Mutex::new(m))))
        })
    }
}

/// Adds a recipient (SMTP: RCPT TO). `route` may be NULL (route by domain). The
/// address is checked now, so the MTA can answer RCPT with the right code.
#[no_mangle]
pub unsafe extern "C" fn mailq_message_add_recipient(
    m: *mut mailq_message,
    address: *const c_char,
    route: *const c_char,
) -> mailq_status {
    boundary(|| {
        let mo = message_obj(m)?;
        // SAFETY: `address` is a NUL-terminated string, `route` one or NULL
        // (header contract).
        let (address, route) = unsafe { (text(address, "address")?, opt_text(route, "route")?) };
        let mut g = mo.lock();
        Ok(g.builder()?.add_recipient(address, route)?)
    })
}

/// Passes `len` bytes at `p` (named `name` in errors) to a builder method.
///
/// # Safety
/// `p` is NULL with `len` 0, or valid for reads of `len` bytes.
unsafe fn with_bytes(
    m: *mut mailq_message,
    p: *const u8,
    len: usize,
    name: &str,
    method: fn(&mut MessageBuilder, &[u8]) -> crate::Result<()>,
) -> Result<(), Fail> {
    let mo = message_obj(m)?;
    // SAFETY: forwarded from this function's contract.
    let data = unsafe { bytes(p, len, name) }?;
    let mut g = mo.lock();
    Ok(method(g.builder()?, data)?)
}

/// Sets the opaque metadata returned at delivery time (copied).
#[no_mangle]
pub unsafe extern "C" fn mailq_message_set_meta(
    m: *mut mailq_message,
    meta: *const u8,
    len: usize,
) -> mailq_status {
    // SAFETY: `meta` has `len` readable bytes or `len` is 0 (header contract).
    boundary(|| unsafe { with_bytes(m, meta, len, "meta", MessageBuilder::set_meta) })
}

/// Appends a chunk of the body as DATA arrives (copied).
#[no_mangle]
pub unsafe extern "C" fn mailq_message_append(
    m: *mut mailq_message,
    chunk: *const u8,
    len: usize,
) -> mailq_status {
    // SAFETY: `chunk` has `len` readable bytes or `len` is 0 (header contract).
    boundary(|| unsafe { with_bytes(m, chunk, len, "chunk", MessageBuilder::append) })
}

/// Makes the message durable and stores its id in `*id_out` (may be NULL)
/// (SMTP: end of DATA, then 250). The handle is freed whether or not this succeeds.
#[no_mangle]
pub unsafe extern "C" fn mailq_message_commit(
    m: *mut mailq_message,
    id_out: *mut u64,
) -> mailq_status {
    boundary(|| {
        let builder = take_message(m)?.lock().0.take().ok_or_else(committed)?;
        let id = builder.commit()?;
        // SAFETY: `id_out` is NULL or writable (header contract).
        unsafe { write_opt(id_out, id.0) }
    })
}

/// Discards a streamed message and frees the handle.
#[no_mangle]
pub extern "C" fn mailq_message_abort(m: *mut mailq_message) {
    boundary(|| take_message(m).map(drop))
}
