//! Deliveries: reading one (sender, recipients, body, metadata), setting each
//! recipient's outcome, and ending it (complete, site failure, free).
//! Depends on `boundary`, `status`, `handle` and `ptr`.

use super::boundary::boundary;
use super::handle::{delivery_obj, lookup, mailq_delivery, take_delivery, DeliveryObj, Obj};
use super::ptr::{out_init, out_ptr, reason_text};
use super::status::{fail, mailq_status, mailq_status::*, Fail};
use crate::session::DeliveryCore;
use crate::types::Outcome;
use parking_lot::Mutex;
use std::ffi::{c_char, c_int, CString};
use std::sync::Arc;
use std::time::Duration;

/// Per-recipient outcome kinds for `mailq_delivery_set_outcome`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mailq_outcome {
    /// Accepted by the next hop.
    MAILQ_DELIVERED = 0,
    /// Temporary failure (4xx): retried after a backoff.
    MAILQ_TEMPFAIL = 1,
    /// Permanent failure (5xx): reported for a DSN.
    MAILQ_PERMFAIL = 2,
}

/// Runs `f` on the live core of delivery `d`.
fn with_core<R>(
    d: *const mailq_delivery,
    f: impl FnOnce(&DeliveryCore) -> Result<R, Fail>,
) -> Result<R, Fail> {
    let o = delivery_obj(d)?;
    let g = o.lock();
    match g.core.as_ref() {
        Some(c) => f(c),
        None => fail(MAILQ_ERR_INVALID_HANDLE, "delivery already ended"),
    }
}

/// The message id of a delivery (0 for an invalid handle).
#[no_mangle]
pub extern "C" fn mailq_delivery_id(d: *const mailq_delivery) -> u64 {
    boundary(|| with_core(d, |c| Ok(c.id().0)))
}

/// Envelope sender of a delivery ("" for the null sender). Valid until the
/// delivery ends; NULL for an invalid handle.
#[no_mangle]
pub extern "C" fn mailq_delivery_sender(d: *const mailq_delivery) -> *const c_char {
    boundary(|| Ok(delivery_obj(d)?.lock().sender.as_ptr()))
}

/// Number of recipients in the delivery (0 for an invalid handle).
#[no_mangle]
pub extern "C" fn mailq_delivery_recipient_count(d: *const mailq_delivery) -> usize {
    boundary(|| Ok(delivery_obj(d)?.lock().rcpts.len()))
}

/// Recipient `i` of the delivery. Valid until the delivery ends; NULL when out of range.
#[no_mangle]
pub extern "C" fn mailq_delivery_recipient(d: *const mailq_delivery, i: usize) -> *const c_char {
    boundary(|| {
        let o = delivery_obj(d)?;
        let g = o.lock();
        Ok(g.rcpts.get(i).map_or(std::ptr::null(), |c| c.as_ptr()))
    })
}

/// Index within its message of recipient `i` of the delivery, and its previous attempts.
#[no_mangle]
pub unsafe extern "C" fn mailq_delivery_recipient_info(
    d: *const mailq_delivery,
    i: usize,
    index_out: *mut u32,
    attempts_out: *mut u32,
) -> mailq_status {
    boundary(|| {
        // SAFETY: `index_out` and `attempts_out` are writable (header contract).
        let (index_out, attempts_out) = unsafe {
            (
                out_ptr(index_out, "index_out")?,
                out_ptr(attempts_out, "attempts_out")?,
            )
        };
        with_core(d, |c| {
            if i >= c.indices().len() {
                return fail(
                    MAILQ_ERR_INVALID_ARGUMENT,
                    format!("recipient {i} out of range"),
                );
            }
            *index_out = c.indices()[i];
            *attempts_out = c.attempts()[i] as u32;
            Ok(())
        })
    })
}

/// Points `*ptr`/`*len` at a part of the delivery's message (its body or
/// metadata), which lives in the registry object until the delivery ends.
///
/// # Safety
/// `ptr` and `len` are valid for writes.
unsafe fn point_at(
    d: *const mailq_delivery,
    ptr: *mut *const u8,
    len: *mut usize,
    part: fn(&DeliveryCore) -> &[u8],
) -> Result<(), Fail> {
    // SAFETY: forwarded from this function's contract.
    let (ptr, len) = unsafe { (out_ptr(ptr, "ptr")?, out_ptr(len, "len")?) };
    with_core(d, |c| {
        // The bytes live in the core until the delivery ends.
        let b = part(c);
        *ptr = b.as_ptr();
        *len = b.len();
        Ok(())
    })
}

/// The body, in a buffer the delivery holds (read from the log once). `*ptr`
/// stays valid until the delivery is completed or freed.
#[no_mangle]
pub unsafe extern "C" fn mailq_delivery_body(
    d: *const mailq_delivery,
    ptr: *mut *const u8,
    len: *mut usize,
) -> mailq_status {
    // SAFETY: `ptr` and `len` are writable (header contract).
    boundary(|| unsafe { point_at(d, ptr, len, |c| &c.body[..]) })
}

/// A new descriptor for reading the file open as `raw`, owned by the caller.
///
/// Reopens `/proc/self/fd/<raw>`: a read-only open file description of its own
/// (this works for a segment that compaction already unlinked). Without /proc,
/// falls back to `fcntl(F_DUPFD_CLOEXEC)`, which shares the log's open file
/// description; the log only uses positional I/O, so the caller moving that
/// description's offset cannot affect it. Either way, closing the new
/// descriptor leaves the queue's own descriptor open.
fn caller_owned_read_fd(raw: c_int) -> std::io::Result<c_int> {
    let path = CString::new(format!("/proc/self/fd/{raw}")).map_err(std::io::Error::other)?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        return Ok(fd);
    }
    let reopen = std::io::Error::last_os_error();
    // SAFETY: fcntl on a descriptor the delivery's segment file keeps open while
    // we run (the caller holds the delivery lock); no pointers are passed.
    let fd = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
    if fd >= 0 {
        return Ok(fd);
    }
    let dup = std::io::Error::last_os_error();
    Err(std::io::Error::new(
        dup.kind(),
        format!("reopen via /proc/self/fd: {reopen}; F_DUPFD_CLOEXEC: {dup}"),
    ))
}

/// The body as a file region, for sendfile(2): read `len` bytes of `*fd` at
/// `*offset` (use pread(2) or sendfile(2) with an offset pointer).
///
/// `*fd` is a NEW close-on-exec descriptor that the caller owns: close(2) it
/// when done, on every path. Each call returns another one. It is a read-only
/// reopen of the segment file (a duplicate where /proc is not mounted: only
/// read from it), stays valid after the delivery ends, and closing it never
/// affects the queue's own descriptors. On error `*fd` is -1 and nothing needs
/// closing.
#[no_mangle]
pub unsafe extern "C" fn mailq_delivery_body_fd(
    d: *const mailq_delivery,
    fd: *mut c_int,
    offset: *mut u64,
    len: *mut usize,
) -> mailq_status {
    boundary(|| {
        // SAFETY: `fd`, `offset` and `len` are writable (header contract).
        let (fd, offset, len) = unsafe {
            (
                out_init(fd, "fd", -1)?,
                out_ptr(offset, "offset")?,
                out_ptr(len, "len")?,
            )
        };
        with_core(d, |c| {
            let (file, off) = c.exported_body_file()?;
            let body_len = c.body().len();
            let Some(raw) = file.raw_fd() else {
                return fail(
                    MAILQ_ERR_INVALID_ARGUMENT,
                    "this filesystem has no file descriptors",
                );
            };
            let own = caller_owned_read_fd(raw).map_err(|e| {
                Fail(
                    MAILQ_ERR_IO,
                    format!("cannot open a descriptor for the body: {e}"),
                )
            })?;
            *fd = own;
            *offset = off;
            *len = body_len;
            Ok(())
        })
    })
}

/// The opaque metadata given at enqueue. `*ptr` stays valid until the delivery ends.
#[no_mangle]
pub unsafe extern "C" fn mailq_delivery_meta(
    d: *const mailq_delivery,
    ptr: *mut *const u8,
    len: *mut usize,
) -> mailq_status {
    // SAFETY: `ptr` and `len` are writable (header contract).
    boundary(|| unsafe { point_at(d, ptr, len, |c| &c.meta[..]) })
}

/// Sets the outcome of recipient `i`. `reason` may be NULL for `MAILQ_DELIVERED`;
/// `retry_after_secs` (0: none) applies to `MAILQ_TEMPFAIL`.
#[no_mangle]
pub unsafe extern "C" fn mailq_delivery_set_outcome(
    d: *mut mailq_delivery,
    i: usize,
    outcome: c_int,
    reason: *const c_char,
    retry_after_secs: u32,
) -> mailq_status {
    boundary(|| {
        let o = delivery_obj(d)?;
        // SAFETY: `reason` is NULL or a NUL-terminated string (header contract).
        let reason = unsafe { reason_text(reason) }.unwrap_or_default();
        let out = match outcome {
            x if x == mailq_outcome::MAILQ_DELIVERED as c_int => Outcome::Delivered,
            x if x == mailq_outcome::MAILQ_TEMPFAIL as c_int => Outcome::TempFail {
                reason,
                retry_after: (retry_after_secs > 0)
                    .then(|| Duration::from_secs(retry_after_secs as u64)),
            },
            x if x == mailq_outcome::MAILQ_PERMFAIL as c_int => Outcome::PermFail { reason },
            other => {
                return fail(
                    MAILQ_ERR_INVALID_ARGUMENT,
                    format!("unknown outcome {other}"),
                )
            }
        };
        let mut g = o.lock();
        let n = g.outcomes.len();
        match g.outcomes.get_mut(i) {
            Some(slot) => *slot = Some(out),
            None => {
                return fail(
                    MAILQ_ERR_INVALID_ARGUMENT,
                    format!("recipient {i} out of range (delivery has {n})"),
                )
            }
        }
        Ok(())
    })
}

/// Removes delivery handle `d` and unlinks it from its session; gives its
/// object and the session's token.
fn end_delivery(d: *mut mailq_delivery) -> Result<(Arc<Mutex<DeliveryObj>>, usize), Fail> {
    let o = take_delivery(d)?;
    let session = o.lock().session;
    if let Some(Obj::Session(so)) = lookup(session) {
        let mut g = so.lock();
        if g.delivery == Some(d as usize) {
            g.delivery = None;
        }
    }
    Ok((o, session))
}

/// Applies the outcomes set with `mailq_delivery_set_outcome` and frees the
/// delivery. Every recipient needs an outcome (`MAILQ_ERR_INVALID_ARGUMENT`
/// otherwise, and the delivery stays open). On any other error (`DISK_FULL`,
/// `IO`, `POISONED`, `LEASE_EXPIRED`) the delivery is freed too and its
/// recipients go back to the queue (they will be delivered again). Outcomes
/// become durable with the next group commit (`mailq_sync` forces it).
#[no_mangle]
pub extern "C" fn mailq_delivery_complete(d: *mut mailq_delivery) -> mailq_status {
    boundary(|| {
        let missing = delivery_obj(d)?
            .lock()
            .outcomes
            .iter()
            .position(|x| x.is_none());
        if let Some(i) = missing {
            return fail(
                MAILQ_ERR_INVALID_ARGUMENT,
                format!("no outcome set for recipient {i}"),
            );
        }
        let (o, _) = end_delivery(d)?;
        let mut g = o.lock();
        let outs: Vec<Outcome> = g.outcomes.iter().flatten().cloned().collect();
        let Some(mut core) = g.core.take() else {
            return fail(MAILQ_ERR_INVALID_HANDLE, "delivery already ended");
        };
        Ok(core.complete(&outs)?)
    })
}

/// The connection failed during this delivery: its recipients are deferred with
/// `reason`, the destination gets negative feedback, and both the delivery and
/// its session end (free the session handle with `mailq_session_free`).
#[no_mangle]
pub unsafe extern "C" fn mailq_delivery_site_failure(
    d: *mut mailq_delivery,
    reason: *const c_char,
) -> mailq_status {
    boundary(|| {
        let (o, session) = end_delivery(d)?;
        // SAFETY: `reason` is NULL or a NUL-terminated string (header contract).
        let reason = unsafe { reason_text(reason) }.unwrap_or_else(|| "site failure".into());
        let core = o.lock().core.take();
        let r = match core {
            Some(mut c) => c.site_failure_outcomes(reason.as_str()),
            None => Ok(()),
        };
        if let Some(Obj::Session(so)) = lookup(session) {
            if let Some(s) = so.lock().session.as_mut() {
                s.close(Some(reason.as_str()))?;
            }
        }
        Ok(r?)
    })
}

/// Frees a delivery without outcomes: its recipients return to the ready queue.
#[no_mangle]
pub extern "C" fn mailq_delivery_free(d: *mut mailq_delivery) {
    boundary(|| {
        let (o, _) = end_delivery(d)?;
        o.lock().core.take();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::super::events::mailq_tick;
    use super::super::handle::{mailq, mailq_session};
    use super::super::observe::{mailq_stats, mailq_stats_get};
    use super::super::options::{mailq_options, mailq_options_init};
    use super::super::queue::{
        mailq_checkpoint, mailq_close, mailq_enqueue, mailq_open, mailq_sync,
    };
    use super::super::session::{
        mailq_next_session, mailq_session_free, mailq_session_next_delivery,
    };
    use super::super::status::mailq_last_error_message;
    use super::*;
    use std::ffi::CStr;

    fn last_error() -> String {
        // SAFETY: mailq_last_error_message returns a valid NUL-terminated string
        // that lives until the next mailq call on this thread.
        unsafe { CStr::from_ptr(mailq_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    fn enqueue(q: *mut mailq, rcpt: &CStr, body: &[u8]) -> u64 {
        let rcpts = [rcpt.as_ptr()];
        let mut id = 0;
        // SAFETY: every pointer is valid for the call and `n`/lengths match.
        let st = unsafe {
            mailq_enqueue(
                q,
                c"s@example.org".as_ptr(),
                rcpts.as_ptr(),
                std::ptr::null(),
                1,
                std::ptr::null(),
                0,
                body.as_ptr(),
                body.len(),
                &mut id,
            )
        };
        assert_eq!(st, MAILQ_OK, "enqueue: {}", last_error());
        id
    }

    /// Opens the next session and takes its first delivery.
    fn take(q: *mut mailq) -> (*mut mailq_session, *mut mailq_delivery) {
        let mut s = std::ptr::null_mut();
        let mut d = std::ptr::null_mut();
        // SAFETY: valid handles and out-pointers.
        unsafe {
            assert_eq!(mailq_next_session(q, &mut s), MAILQ_OK, "{}", last_error());
            assert!(!s.is_null(), "no session");
            assert_eq!(
                mailq_session_next_delivery(s, &mut d),
                MAILQ_OK,
                "{}",
                last_error()
            );
        }
        assert!(!d.is_null(), "no delivery");
        (s, d)
    }

    /// Marks every recipient delivered, completes the delivery, ends the session.
    fn deliver(s: *mut mailq_session, d: *mut mailq_delivery) {
        complete_delivered(d);
        mailq_session_free(s);
    }

    /// Marks every recipient delivered and completes the delivery.
    fn complete_delivered(d: *mut mailq_delivery) {
        for i in 0..mailq_delivery_recipient_count(d) {
            // SAFETY: valid handle; NULL reason is allowed for MAILQ_DELIVERED.
            let st = unsafe {
                mailq_delivery_set_outcome(
                    d,
                    i,
                    mailq_outcome::MAILQ_DELIVERED as c_int,
                    std::ptr::null(),
                    0,
                )
            };
            assert_eq!(st, MAILQ_OK, "{}", last_error());
        }
        assert_eq!(mailq_delivery_complete(d), MAILQ_OK, "{}", last_error());
    }

    /// The delivery's body as a descriptor of the caller's own, its offset
    /// and length.
    fn body_fd(d: *mut mailq_delivery) -> (c_int, u64, usize) {
        let (mut fd, mut off, mut len) = (-1, 0u64, 0usize);
        // SAFETY: valid handle and out-pointers.
        let st = unsafe { mailq_delivery_body_fd(d, &mut fd, &mut off, &mut len) };
        assert_eq!(st, MAILQ_OK, "{}", last_error());
        (fd, off, len)
    }

    fn pread_exact(fd: c_int, off: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` has `len` writable bytes.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off as libc::off_t) };
        assert_eq!(
            n,
            len as isize,
            "pread: {}",
            std::io::Error::last_os_error()
        );
        buf
    }

    /// The body fd is a new descriptor the caller owns: closing it (as the
    /// header says to) must not close the log's own descriptor. With the old
    /// code it was the log's write descriptor, so the enqueues after the close
    /// failed (EBADF, then a poisoned queue).
    #[test]
    fn body_fd_is_the_callers_to_close_and_the_queue_keeps_working() {
        let dir = std::env::temp_dir().join(format!("mailq-ffi-bodyfd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cdir = CString::new(dir.to_str().expect("temp dir is UTF-8")).expect("no NUL");
        let mut q = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; NULL options mean the defaults.
        let st = unsafe { mailq_open(cdir.as_ptr(), std::ptr::null(), &mut q) };
        assert_eq!(st, MAILQ_OK, "{}", last_error());

        let body = b"Subject: fd\r\n\r\nbody through a descriptor\r\n";
        enqueue(q, c"a@fd.example", body);
        let (s, d) = take(q);
        let (fd, off, len) = body_fd(d);
        assert!(fd >= 0);
        let log_fd = match with_core(d, |c| Ok(c.body_file()?.0.raw_fd())) {
            Ok(raw) => raw,
            Err(Fail(st, msg)) => panic!("{st:?}: {msg}"),
        };
        // SAFETY: fcntl on a descriptor we own; no pointers.
        let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        // SAFETY: as above.
        let fl_flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert_eq!(len, body.len());
        assert_eq!(pread_exact(fd, off, len), body);
        deliver(s, d);
        // Still the caller's after the delivery ended.
        assert_eq!(pread_exact(fd, off, len), body);
        // SAFETY: closing the descriptor this call handed to us, once.
        assert_eq!(unsafe { libc::close(fd) }, 0);

        // The queue still writes and syncs its log.
        for i in 0..5 {
            let rcpt = CString::new(format!("r{i}@fd.example")).expect("no NUL");
            enqueue(q, &rcpt, format!("after close {i}").as_bytes());
            let (s, d) = take(q);
            deliver(s, d);
        }
        assert_eq!(mailq_sync(q), MAILQ_OK, "{}", last_error());
        let mut st = mailq_stats {
            size: std::mem::size_of::<mailq_stats>() as u32,
            ..Default::default()
        };
        // SAFETY: valid handle; `st.size` is the full struct size.
        assert_eq!(unsafe { mailq_stats_get(q, &mut st) }, MAILQ_OK);
        assert_eq!(st.poisoned, 0);
        assert_eq!((st.messages, st.delivered), (0, 6));
        assert_ne!(Some(fd), log_fd, "handed out the log's own descriptor");
        assert!(
            fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0,
            "not close-on-exec"
        );
        if std::path::Path::new("/proc/self/fd").is_dir() {
            // Reopened through /proc: an open file description of its own, read-only.
            assert_eq!(fl_flags & libc::O_ACCMODE, libc::O_RDONLY, "not read-only");
        }
        assert_eq!(mailq_close(q), MAILQ_OK, "{}", last_error());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A body descriptor stays valid after its delivery ends (the header
    /// says so), so its segment's file, once deleted, is never reused for a
    /// later segment: the descriptor still reads the body after the segment
    /// died and deleted segments' files became new segments.
    #[test]
    fn a_body_fd_still_reads_its_body_after_segment_files_are_reused() {
        let dir =
            std::env::temp_dir().join(format!("mailq-ffi-bodyfd-reuse-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cdir = CString::new(dir.to_str().expect("temp dir is UTF-8")).expect("no NUL");
        let mut o = std::mem::MaybeUninit::<mailq_options>::zeroed();
        // SAFETY: `o` is writable and of that size; init fills every field.
        let st =
            unsafe { mailq_options_init(o.as_mut_ptr(), std::mem::size_of::<mailq_options>()) };
        assert_eq!(st, MAILQ_OK);
        // SAFETY: initialised just above (all fields are plain integers).
        let mut o = unsafe { o.assume_init() };
        o.segment_size = 64 * 1024;
        let mut q = std::ptr::null_mut();
        // SAFETY: valid C string, options and out-pointer.
        let st = unsafe { mailq_open(cdir.as_ptr(), &o, &mut q) };
        assert_eq!(st, MAILQ_OK, "{}", last_error());

        let body = b"Subject: kept\r\n\r\nthe body a descriptor reads\r\n";
        enqueue(q, c"a@fd.example", body);
        let (s, d) = take(q);
        let (fd, off, len) = body_fd(d);
        deliver(s, d);
        let files = |suffix: &str| {
            std::fs::read_dir(&dir)
                .expect("queue dir")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(suffix))
                })
                .count()
        };
        let mut kept = 0;
        for round in 0..4 {
            for i in 0..100 {
                let rcpt = CString::new(format!("r{round}.{i}@d.example")).expect("no NUL");
                enqueue(q, &rcpt, &[b'x'; 1000]);
                let mut ready = 0;
                // SAFETY: valid handle and out-pointer.
                assert_eq!(unsafe { mailq_tick(q, &mut ready) }, MAILQ_OK);
            }
            loop {
                let mut s = std::ptr::null_mut();
                // SAFETY: valid handle and out-pointer.
                let st = unsafe { mailq_next_session(q, &mut s) };
                assert_eq!(st, MAILQ_OK, "{}", last_error());
                if s.is_null() {
                    break;
                }
                loop {
                    let mut d = std::ptr::null_mut();
                    // SAFETY: valid handles and out-pointer.
                    let st = unsafe { mailq_session_next_delivery(s, &mut d) };
                    assert_eq!(st, MAILQ_OK, "{}", last_error());
                    if d.is_null() {
                        break;
                    }
                    complete_delivered(d);
                }
                mailq_session_free(s);
            }
            assert_eq!(mailq_sync(q), MAILQ_OK, "{}", last_error());
            assert_eq!(mailq_checkpoint(q), MAILQ_OK, "{}", last_error());
            kept += files(".seg.spare");
        }
        assert!(kept > 0, "deleted segments' files were kept for reuse");
        assert_eq!(pread_exact(fd, off, len), body);
        // SAFETY: closing the descriptor this call handed to us, once.
        assert_eq!(unsafe { libc::close(fd) }, 0);
        assert_eq!(mailq_close(q), MAILQ_OK, "{}", last_error());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
