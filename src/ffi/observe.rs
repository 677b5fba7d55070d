//! Looking at the queue: walking messages, inspecting one, verifying records,
//! the stats (as a struct, per destination, and as Prometheus text).
//! Depends on `boundary`, `status`, `handle` and `ptr`.

use super::boundary::{boundary, with_callback, with_queue, with_queue_out};
use super::handle::mailq;
use super::ptr::{cstring, known_len, size_field, write_known, write_opt};
use super::status::{fail, mailq_status, mailq_status::*, Fail};
use crate::types::MessageId;
use crate::Stats;
use std::ffi::{c_char, c_int, c_void};

/// A snapshot of queue counters for `mailq_stats_get`. Set `size` to
/// `sizeof(mailq_stats)` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct mailq_stats {
    /// `sizeof(mailq_stats)` as the caller was compiled with.
    pub size: u32,
    /// Non-zero when the queue refuses writes after a storage failure.
    pub poisoned: u32,
    /// Live messages.
    pub messages: u64,
    /// Ready recipients.
    pub ready: u64,
    /// Deferred recipients.
    pub deferred: u64,
    /// Held recipients.
    pub held: u64,
    /// Recipients in flight.
    pub inflight: u64,
    /// Permanently failed recipients awaiting `mailq_ack_bounce`.
    pub failed: u64,
    /// Expired recipients awaiting `mailq_ack_bounce`.
    pub expired: u64,
    /// Recipients whose message record is damaged.
    pub corrupt_recipients: u64,
    /// Age of the oldest message, seconds.
    pub oldest_age_secs: u64,
    /// Destinations with queued mail.
    pub buckets: u64,
    /// Messages accepted since open.
    pub accepted: u64,
    /// Recipients accepted since open.
    pub accepted_recipients: u64,
    /// Recipients delivered since open.
    pub delivered: u64,
    /// Temporary failures since open.
    pub deferred_total: u64,
    /// Permanent failures since open.
    pub failed_total: u64,
    /// Expiries since open.
    pub expired_total: u64,
    /// Bounces acknowledged since open.
    pub bounced_total: u64,
    /// Site failures since open.
    pub site_failures: u64,
    /// Sessions reclaimed by lease expiry since open.
    pub lease_reclaims: u64,
    /// Damage findings (recovery and reads).
    pub corrupt: u64,
    /// fdatasync calls since open.
    pub fsyncs: u64,
    /// Group commits since open.
    pub commits: u64,
    /// Bytes appended to the log since open.
    pub bytes_written: u64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
    /// Bytes of RAM held by the index.
    pub index_bytes: u64,
}

/// One destination, passed to a `mailq_bucket_fn`. Pointers are valid during the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mailq_bucket_stats {
    /// Routing key (NUL-terminated).
    pub key: *const c_char,
    /// Ready recipients.
    pub ready: u64,
    /// Deferred recipients.
    pub deferred: u64,
    /// Held recipients.
    pub held: u64,
    /// Recipients in flight.
    pub inflight: u64,
    /// Failed/expired recipients awaiting their DSN.
    pub bounce_pending: u64,
    /// Open sessions.
    pub sessions: u64,
    /// Concurrency window.
    pub window: u64,
    /// Concurrency limit.
    pub limit: u64,
    /// Non-zero when suspended.
    pub suspended: u32,
    /// Padding.
    pub _reserved: u32,
    /// Dead until this unix time (0: alive).
    pub dead_until: u64,
    /// Recipients by age: < 5, 10, 20, 40, 80, 160, 320, 640, 1280 minutes, and older.
    pub ages: [u64; 10],
}

/// A message, passed to `mailq_walk_fn` and `mailq_inspect_fn`. Pointers are valid during the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mailq_message_info {
    /// Message id.
    pub id: u64,
    /// Accepted at (unix seconds).
    pub received: u64,
    /// Recipients.
    pub recipients: u32,
    /// Recipients not yet final.
    pub pending: u32,
    /// Envelope sender (NULL in `mailq_walk`, where it is not read from disk).
    pub sender: *const c_char,
    /// Body size (0 in `mailq_walk`).
    pub size: u64,
}

/// One recipient, passed to `mailq_inspect_fn`. Pointers are valid during the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mailq_recipient_info {
    /// Index within the message.
    pub index: u32,
    /// Attempts so far.
    pub attempts: u32,
    /// Address.
    pub address: *const c_char,
    /// Current routing key.
    pub route: *const c_char,
    /// State: "ready", "deferred", "held", "inflight", "delivered", "failed", "expired", "bounced", "deleted", "corrupt".
    pub state: *const c_char,
    /// Next attempt (unix seconds) when deferred.
    pub next_attempt: u64,
    /// Last error ("" if none).
    pub last_error: *const c_char,
}

/// Callback for `mailq_walk_buckets`; return non-zero to continue, zero to stop.
pub type mailq_bucket_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, bucket: *const mailq_bucket_stats) -> c_int>;
/// Callback for `mailq_walk`; return non-zero to continue, zero to stop.
pub type mailq_walk_fn = Option<
    unsafe extern "C" fn(userdata: *mut c_void, message: *const mailq_message_info) -> c_int,
>;
/// Callback for `mailq_inspect`, once per recipient.
pub type mailq_inspect_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        message: *const mailq_message_info,
        recipient: *const mailq_recipient_info,
    ),
>;

/// Calls `cb` for every live message until it returns 0.
#[no_mangle]
pub unsafe extern "C" fn mailq_walk(
    q: *mut mailq,
    cb: mailq_walk_fn,
    userdata: *mut c_void,
) -> mailq_status {
    with_callback(q, cb, |qq, cb| {
        qq.walk(|m| {
            let info = mailq_message_info {
                id: m.id.0,
                received: m.received,
                recipients: m.recipients,
                pending: m.pending,
                sender: std::ptr::null(),
                size: 0,
            };
            // SAFETY: the caller's callback (header contract), with a pointer
            // valid for the call.
            unsafe { cb(userdata, &info) != 0 }
        });
        Ok(())
    })
}

/// Calls `cb` once per recipient of message `id` with its state, attempts, next
/// attempt, route and last error.
#[no_mangle]
pub unsafe extern "C" fn mailq_inspect(
    q: *mut mailq,
    id: u64,
    cb: mailq_inspect_fn,
    userdata: *mut c_void,
) -> mailq_status {
    with_callback(q, cb, |qq, cb| {
        let info = qq.inspect(MessageId(id))?;
        let sender = cstring(&info.sender);
        let pending = info
            .recipients
            .iter()
            .filter(|r| !r.state.is_final())
            .count();
        let m = mailq_message_info {
            id,
            received: info.received,
            recipients: info.recipients.len() as u32,
            pending: pending as u32,
            sender: sender.as_ptr(),
            size: info.size,
        };
        for (i, r) in info.recipients.iter().enumerate() {
            let (a, rt, st, le) = (
                cstring(&r.address),
                cstring(&r.route),
                cstring(r.state.name()),
                cstring(&r.last_error),
            );
            let ri = mailq_recipient_info {
                index: i as u32,
                attempts: r.attempts as u32,
                address: a.as_ptr(),
                route: rt.as_ptr(),
                state: st.as_ptr(),
                next_attempt: r.next_attempt,
                last_error: le.as_ptr(),
            };
            // SAFETY: the caller's callback (header contract), with pointers
            // valid for the call.
            unsafe { cb(userdata, &m, &ri) };
        }
        Ok(())
    })
}

/// Reads and checks every live record; `*bad` (may be NULL) gets the number of damaged messages.
#[no_mangle]
pub unsafe extern "C" fn mailq_verify(q: *mut mailq, bad: *mut usize) -> mailq_status {
    // SAFETY: `bad` is NULL or writable (header contract).
    with_queue(q, |qq| unsafe { write_opt(bad, qq.verify()?.len()) })
}

/// `st` as the C struct, its `size` set to `size`.
fn c_stats(st: &Stats, size: usize) -> mailq_stats {
    mailq_stats {
        size: size as u32,
        poisoned: st.poisoned.is_some() as u32,
        messages: st.messages,
        ready: st.count("ready"),
        deferred: st.count("deferred"),
        held: st.count("held"),
        inflight: st.count("inflight"),
        failed: st.count("failed"),
        expired: st.count("expired"),
        corrupt_recipients: st.count("corrupt"),
        oldest_age_secs: st.oldest_age,
        buckets: st.buckets.len() as u64,
        accepted: st.accepted,
        accepted_recipients: st.accepted_recipients,
        delivered: st.delivered,
        deferred_total: st.deferred,
        failed_total: st.failed,
        expired_total: st.expired,
        bounced_total: st.bounced,
        site_failures: st.site_failures,
        lease_reclaims: st.lease_reclaims,
        corrupt: st.corrupt,
        fsyncs: st.fsyncs,
        commits: st.commits,
        bytes_written: st.bytes_written,
        checkpoints: st.checkpoints,
        index_bytes: st.index_bytes,
    }
}

/// Fills `*out` (set `out->size = sizeof(mailq_stats)` first).
#[no_mangle]
pub unsafe extern "C" fn mailq_stats_get(q: *mut mailq, out: *mut mailq_stats) -> mailq_status {
    with_queue(q, |qq| {
        if out.is_null() {
            return fail(MAILQ_ERR_NULL, "out is NULL");
        }
        // SAFETY: non-NULL, so a mailq_stats whose size field the caller set
        // (header contract); only that field is read.
        let size = unsafe { size_field(out) };
        let n = known_len::<mailq_stats>(size, "out->size is not set to sizeof(mailq_stats)")?;
        let full = c_stats(&qq.stats(), n);
        // SAFETY: `out` has `size` >= n writable bytes (header contract).
        unsafe { write_known(out, n, &full) };
        Ok(())
    })
}

/// Calls `cb` for each destination with queued mail (deepest first) until it returns 0.
#[no_mangle]
pub unsafe extern "C" fn mailq_walk_buckets(
    q: *mut mailq,
    cb: mailq_bucket_fn,
    userdata: *mut c_void,
) -> mailq_status {
    with_callback(q, cb, |qq, cb| {
        for b in qq.stats().buckets {
            let key = cstring(&b.key);
            let bs = mailq_bucket_stats {
                key: key.as_ptr(),
                ready: b.ready,
                deferred: b.deferred,
                held: b.held,
                inflight: b.inflight,
                bounce_pending: b.bounce_pending,
                sessions: b.sessions,
                window: b.window,
                limit: b.limit,
                suspended: b.suspended as u32,
                _reserved: 0,
                dead_until: b.dead_until,
                ages: b.ages,
            };
            // SAFETY: the caller's callback (header contract), with pointers
            // valid for the call.
            if unsafe { cb(userdata, &bs) } == 0 {
                break;
            }
        }
        Ok(())
    })
}

/// `text` in a malloc'd, NUL-terminated buffer: the caller may modify it
/// (strtok) and frees it with `mailq_string_free`, which calls free().
fn malloc_string(text: &str) -> Result<*mut c_char, Fail> {
    let bytes = text.as_bytes();
    // SAFETY: malloc has no preconditions; NULL is checked below.
    let p = unsafe { libc::malloc(bytes.len() + 1) }.cast::<u8>();
    if p.is_null() {
        return fail(MAILQ_ERR_TOO_LARGE, "out of memory for the Prometheus text");
    }
    // SAFETY: `p` is a fresh allocation of len + 1 bytes; the source has len bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
    }
    Ok(p.cast())
}

/// The stats in Prometheus text format. Free `*out` with `mailq_string_free`.
#[no_mangle]
pub unsafe extern "C" fn mailq_prometheus(
    q: *mut mailq,
    out: *mut *mut c_char,
    len: *mut usize,
) -> mailq_status {
    // SAFETY: `out` is writable and `len` NULL or writable (header contract).
    unsafe {
        with_queue_out(q, out, |qq| {
            let text = qq.stats().prometheus();
            let p = malloc_string(&text)?;
            write_opt(len, text.len())?;
            Ok(p)
        })
    }
}

/// Frees the string returned by `mailq_prometheus` (NULL is ignored). Never pass
/// other pointers the library returns: those belong to the library.
#[no_mangle]
pub unsafe extern "C" fn mailq_string_free(s: *mut c_char) {
    boundary(|| {
        // SAFETY: `s` is NULL or came from malloc in mailq_prometheus (header contract).
        unsafe { libc::free(s.cast()) };
        Ok(())
    })
}
