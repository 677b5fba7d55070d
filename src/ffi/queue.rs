//! The queue handle: open, close, free, sync, checkpoint, and enqueue in one
//! call. Depends on `boundary`, `status`, `handle`, `ptr` and `options`.

use super::boundary::{boundary, with_queue};
use super::handle::{mailq, new_queue, take_queue};
use super::options::{mailq_options, read_options};
use super::ptr::{bytes, fill, opt_text, out_ptr, text};
use super::status::{fail, mailq_status, mailq_status::*, Fail};
use crate::types::{NewMessage, Recipient};
use crate::Queue;
use std::ffi::c_char;

/// Opens (or creates) the queue in directory `dir`. `opts` may be NULL for the
/// defaults. On success `*out` is a handle to free with `mailq_close` or `mailq_free`.
/// No thread is started. A handle belongs to the process that opened it: after
/// fork(2), the child must not use it (open the queue again after exec instead).
#[no_mangle]
pub unsafe extern "C" fn mailq_open(
    dir: *const c_char,
    opts: *const mailq_options,
    out: *mut *mut mailq,
) -> mailq_status {
    boundary(|| {
        // SAFETY: `out` is writable, `dir` a NUL-terminated string, and `opts`
        // NULL or set by mailq_options_init (header contract).
        unsafe {
            fill(out, "out", std::ptr::null_mut(), || {
                let (dir, opts) = (text(dir, "dir")?, read_options(opts)?);
                Ok(new_queue(Queue::open(dir, opts)?))
            })
        }
    })
}

/// Makes buffered outcomes durable, writes a checkpoint, and frees the handle
/// (also on error). Sessions and deliveries still open keep working until freed.
#[no_mangle]
pub extern "C" fn mailq_close(q: *mut mailq) -> mailq_status {
    boundary(|| Ok(take_queue(q)?.close()?))
}

/// Frees the handle without a checkpoint (outcomes are synced best-effort).
#[no_mangle]
pub extern "C" fn mailq_free(q: *mut mailq) {
    boundary(|| take_queue(q).map(drop))
}

/// Makes every buffered outcome durable now.
#[no_mangle]
pub extern "C" fn mailq_sync(q: *mut mailq) -> mailq_status {
    with_queue(q, |qq| Ok(qq.sync()?))
}

/// Writes a checkpoint now (and compacts).
#[no_mangle]
pub extern "C" fn mailq_checkpoint(q: *mut mailq) -> mailq_status {
    with_queue(q, |qq| Ok(qq.checkpoint()?))
}

/// The recipients of `mailq_enqueue`.
///
/// # Safety
/// `rcpts` is NULL or holds `n` pointers, each NULL or a NUL-terminated
/// string; `routes` is NULL or the same.
unsafe fn recipients(
    rcpts: *const *const c_char,
    routes: *const *const c_char,
    n: usize,
) -> Result<Vec<Recipient>, Fail> {
    if n == 0 {
        return fail(
            MAILQ_ERR_NO_RECIPIENTS,
            "message has no recipients; nothing was queued",
        );
    }
    if rcpts.is_null() {
        return fail(MAILQ_ERR_NULL, "recipients is NULL");
    }
    if n > u16::MAX as usize {
        return fail(
            MAILQ_ERR_TOO_LARGE,
            format!("{n} recipients; at most 65535"),
        );
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: `n` readable pointers in `rcpts`, each a string or NULL
        // (this function's contract).
        let a = unsafe { text(*rcpts.add(i), &format!("recipients[{i}]")) }?;
        let r = if routes.is_null() {
            None
        } else {
            // SAFETY: as above; an individual NULL route means "by domain".
            unsafe { opt_text(*routes.add(i), &format!("routes[{i}]")) }?
        };
        out.push(Recipient {
            address: a.to_string(),
            route: r.map(str::to_string),
        });
    }
    Ok(out)
}

/// Accepts a message in one call and returns only when it is durable; then the
/// MTA may answer 250. `sender` may be "" (null sender). `routes` may be NULL
/// (route every recipient by its domain) or hold `n_rcpts` entries, each NULL or
/// a routing key. `meta` and `body` may be NULL when their length is 0. The
/// library copies what it needs; no pointer is kept.
#[no_mangle]
pub unsafe extern "C" fn mailq_enqueue(
    q: *mut mailq,
    sender: *const c_char,
    rcpts: *const *const c_char,
    routes: *const *const c_char,
    n_rcpts: usize,
    meta: *const u8,
    meta_len: usize,
    body: *const u8,
    body_len: usize,
    id_out: *mut u64,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: `id_out` is writable (header contract).
        let id_out = unsafe { out_ptr(id_out, "id_out") }?;
        // SAFETY: `sender` is a NUL-terminated string (header contract).
        let sender = unsafe { text(sender, "sender") }?;
        // SAFETY: `rcpts` and `routes` hold `n_rcpts` entries as documented.
        let recipients = unsafe { recipients(rcpts, routes, n_rcpts) }?;
        // SAFETY: `meta` and `body` have the lengths given, or are empty.
        let (meta, body) = unsafe {
            (
                bytes(meta, meta_len, "meta")?,
                bytes(body, body_len, "body")?,
            )
        };
        let id = qq.enqueue(&NewMessage {
            sender,
            recipients,
            meta,
            body,
        })?;
        *id_out = id.0;
        Ok(())
    })
}
