//! Delivery sessions: opening one (for the next destination or for a routing
//! key), taking its deliveries one at a time, and ending it. Depends on
//! `boundary`, `status`, `handle` and `ptr`.

use super::boundary::{boundary, with_queue_out};
use super::handle::{
    lookup, mailq, mailq_delivery, mailq_session, new_delivery, new_session, remove, session_obj,
    take_session, DeliveryObj, SessionObj,
};
use super::ptr::{cstring, out_init, reason_text, text};
use super::status::{fail, mailq_status, mailq_status::*, Fail};
use crate::session::Session;
use crate::Queue;
use parking_lot::Mutex;
use std::ffi::c_char;
use std::sync::Arc;

/// A call on queue `q` that may open a session: `*out` is its handle, or NULL
/// when `open` gives none or fails.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn open_session(
    q: *mut mailq,
    out: *mut *mut mailq_session,
    open: impl FnOnce(&Queue) -> Result<Option<Session>, Fail>,
) -> mailq_status {
    let wrap = |qq: &Queue| {
        let Some(s) = open(qq)? else {
            return Ok(std::ptr::null_mut());
        };
        let key = cstring(s.routing_key());
        let source = s.source().map(cstring);
        Ok(new_session(Arc::new(Mutex::new(SessionObj {
            session: Some(s),
            key,
            source,
            delivery: None,
        }))))
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { with_queue_out(q, out, wrap) }
}

/// Opens a session for the next destination with ready work and a free slot
/// (round-robin). `*out` is NULL when nothing can be delivered now.
#[no_mangle]
pub unsafe extern "C" fn mailq_next_session(
    q: *mut mailq,
    out: *mut *mut mailq_session,
) -> mailq_status {
    // SAFETY: `out` is writable (header contract).
    unsafe { open_session(q, out, |qq| Ok(qq.next_session()?)) }
}

/// Opens a session for one routing key; `*out` is NULL when it has no ready work
/// or no free slot.
#[no_mangle]
pub unsafe extern "C" fn mailq_session_for(
    q: *mut mailq,
    key: *const c_char,
    out: *mut *mut mailq_session,
) -> mailq_status {
    // SAFETY: `out` is writable and `key` a NUL-terminated string (header contract).
    unsafe { open_session(q, out, |qq| Ok(qq.session_for(text(key, "key")?)?)) }
}

/// The session's routing key. Valid until the session is freed; NULL for an invalid handle.
#[no_mangle]
pub extern "C" fn mailq_session_routing_key(s: *mut mailq_session) -> *const c_char {
    // The CString lives in the registry object, which outlives this call
    // until mailq_session_free removes it.
    boundary(|| Ok(session_obj(s)?.lock().key.as_ptr()))
}

/// The egress source the session goes out from (bind the connection to it),
/// or NULL when its destination has no sources (or for an invalid handle).
/// Valid until the session is freed.
#[no_mangle]
pub extern "C" fn mailq_session_source(s: *mut mailq_session) -> *const c_char {
    boundary(|| {
        let so = session_obj(s)?;
        let g = so.lock();
        Ok(g.source.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
    })
}

/// The session's fencing token (see `Session::fence` in the Rust API): unique
/// and increasing across sessions and restarts; give it to whatever else the
/// delivery writes to so that a late writer with an older token is refused.
/// 0 for an invalid handle.
#[no_mangle]
pub extern "C" fn mailq_session_fence(s: *mut mailq_session) -> u64 {
    boundary(|| {
        let so = session_obj(s)?;
        let g = so.lock();
        g.session.as_ref().map(|s| s.fence()).map_or_else(
            || fail(MAILQ_ERR_INVALID_HANDLE, "session already ended"),
            Ok,
        )
    })
}

/// Takes the next delivery of this session; `*out` is NULL when the destination
/// has no more ready work (then free the session). Only one delivery may be open
/// per session (`MAILQ_ERR_BUSY` otherwise).
#[no_mangle]
pub unsafe extern "C" fn mailq_session_next_delivery(
    s: *mut mailq_session,
    out: *mut *mut mailq_delivery,
) -> mailq_status {
    boundary(|| {
        let so = session_obj(s)?;
        // SAFETY: `out` is writable (header contract).
        let out = unsafe { out_init(out, "out", std::ptr::null_mut()) }?;
        let mut g = so.lock();
        if g.delivery.is_some_and(|d| lookup(d).is_some()) {
            return fail(
                MAILQ_ERR_BUSY,
                "the session's previous delivery is still open: complete or free it first",
            );
        }
        let Some(sess) = g.session.as_mut() else {
            return fail(MAILQ_ERR_INVALID_HANDLE, "session already ended");
        };
        let Some(core) = sess.next_core()? else {
            return Ok(());
        };
        let obj = DeliveryObj {
            sender: cstring(core.sender()),
            rcpts: core.recipients().iter().map(|r| cstring(r)).collect(),
            outcomes: vec![None; core.recipients().len()],
            core: Some(core),
            session: s as usize,
        };
        *out = new_delivery(Arc::new(Mutex::new(obj)));
        g.delivery = Some(*out as usize);
        Ok(())
    })
}

/// Removes session handle `s` and the handle of its open delivery (whose
/// recipients go back to the queue), and gives the session, unless it ended.
fn end_session(s: *mut mailq_session) -> Result<Option<Session>, Fail> {
    let so = take_session(s)?;
    let mut g = so.lock();
    if let Some(d) = g.delivery.take() {
        remove(d);
    }
    Ok(g.session.take())
}

/// Reports a failure of the destination as a whole (connection refused, bad
/// greeting) and frees the session. Any open delivery of the session is returned
/// to the queue.
#[no_mangle]
pub unsafe extern "C" fn mailq_session_site_failure(
    s: *mut mailq_session,
    reason: *const c_char,
) -> mailq_status {
    boundary(|| {
        let session = end_session(s)?;
        // SAFETY: `reason` is NULL or a NUL-terminated string (header contract).
        let reason = unsafe { reason_text(reason) }.unwrap_or_else(|| "site failure".into());
        match session {
            Some(sess) => Ok(sess.site_failure(&reason)?),
            None => Ok(()),
        }
    })
}

/// Ends a session and releases its slot. An open delivery of the session is
/// returned to the queue (its handle becomes invalid).
#[no_mangle]
pub extern "C" fn mailq_session_free(s: *mut mailq_session) {
    boundary(|| end_session(s).map(drop))
}
