//! The panic boundary: every export runs its body in [`boundary`], the only
//! `catch_unwind` of the C ABI, and [`CReturn`] gives each C return type its
//! value for a success, an error and a caught panic. Most exports are calls
//! on a queue handle and enter through [`with_queue`] (or its two variants),
//! which checks the handle inside the boundary. Depends on `status`, and for
//! those entries on `handle` and `ptr`.

use super::handle::{mailq, queue};
use super::ptr::{callback, fill};
use super::status::{mailq_status, set_last_error, Fail};
use crate::Queue;
use std::any::Any;
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A type an export returns to C.
pub(super) trait CReturn {
    /// What the export's body computes when it succeeds.
    type Ok;
    /// Whether the call reports its outcome as the thread's last error. Only
    /// status calls do. The others (accessors, frees) leave it as it was,
    /// unless they panic: reading a delivery between a failed call and
    /// `mailq_last_error_message()` must not erase the detail.
    const REPORTS: bool;
    /// The value of a success.
    fn ok(value: Self::Ok) -> Self;
    /// The value of a failure; `status` says why (`MAILQ_ERR_PANIC` for a panic).
    fn failed(status: mailq_status) -> Self;
}

impl CReturn for mailq_status {
    type Ok = ();
    const REPORTS: bool = true;
    fn ok((): ()) -> Self {
        mailq_status::MAILQ_OK
    }
    fn failed(status: mailq_status) -> Self {
        status
    }
}

/// Frees: a failure (an invalid handle) has nowhere to go and is dropped.
impl CReturn for () {
    type Ok = ();
    const REPORTS: bool = false;
    fn ok((): ()) {}
    fn failed(_: mailq_status) {}
}

/// Accessors returning a pointer: NULL on failure.
impl<T> CReturn for *const T {
    type Ok = Self;
    const REPORTS: bool = false;
    fn ok(value: Self) -> Self {
        value
    }
    fn failed(_: mailq_status) -> Self {
        std::ptr::null()
    }
}

/// Accessors returning a number: a value that cannot be a real answer on failure.
macro_rules! number_or {
    ($($t:ty => $failed:expr),*) => {$(
        impl CReturn for $t {
            type Ok = Self;
            const REPORTS: bool = false;
            fn ok(value: Self) -> Self {
                value
            }
            fn failed(_: mailq_status) -> Self {
                $failed
            }
        }
    )*};
}

// Counts and message ids: 0 (no message id is 0). Descriptors: -1.
number_or!(usize => 0, u64 => 0, c_int => -1);

/// Runs the body of an export. A success, a `Fail` or a panic becomes the C
/// return value `R` (see [`CReturn`]); a status call records its detail as the
/// thread's last error ("" for a success), and every call records a panic.
pub(super) fn boundary<R: CReturn>(body: impl FnOnce() -> Result<R::Ok, Fail>) -> R {
    // AssertUnwindSafe: after a panic this call uses nothing the body touched,
    // and MAILQ_ERR_PANIC tells the caller to close the queue handle (the
    // locks are parking_lot's, which do not poison).
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => {
            if R::REPORTS {
                set_last_error("");
            }
            R::ok(value)
        }
        Ok(Err(Fail(status, detail))) => {
            if R::REPORTS {
                set_last_error(&detail);
            }
            R::failed(status)
        }
        Err(panic) => {
            set_last_error(&format!(
                "internal error (panic caught at the C boundary): {}",
                panic_text(&*panic)
            ));
            R::failed(mailq_status::MAILQ_ERR_PANIC)
        }
    }
}

/// [`boundary`] for a call on queue `q`: `body` runs once the handle is checked.
pub(super) fn with_queue<R: CReturn>(
    q: *const mailq,
    body: impl FnOnce(&Queue) -> Result<R::Ok, Fail>,
) -> R {
    boundary(|| body(&queue(q)?))
}

/// [`with_queue`] for a call that takes a callback, which must not be NULL.
pub(super) fn with_callback<F>(
    q: *const mailq,
    cb: Option<F>,
    body: impl FnOnce(&Queue, F) -> Result<(), Fail>,
) -> mailq_status {
    with_queue(q, |qq| body(qq, callback(cb)?))
}

/// [`with_queue`] for a call that gives a new pointer (a handle, a string) in
/// `*out`: what `make` gives, NULL when it fails or gives none.
///
/// # Safety
/// `out` is NULL or writable.
pub(super) unsafe fn with_queue_out<T>(
    q: *const mailq,
    out: *mut *mut T,
    make: impl FnOnce(&Queue) -> Result<*mut T, Fail>,
) -> mailq_status {
    with_queue(q, |qq| {
        // SAFETY: forwarded from this function's contract.
        unsafe { fill(out, "out", std::ptr::null_mut(), || make(qq)) }
    })
}

/// The message of a panic payload (`panic!` with a literal or a format).
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

#[cfg(test)]
mod tests {
    use super::super::status::{fail, mailq_last_error_message};
    use super::*;
    use std::ffi::{c_char, CStr};

    fn last_error() -> String {
        // SAFETY: mailq_last_error_message returns a valid NUL-terminated string
        // that lives until the next mailq call on this thread.
        unsafe { CStr::from_ptr(mailq_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    fn panics<T>() -> Result<T, Fail> {
        panic!("boom {}", 42)
    }

    #[test]
    fn a_panic_gives_each_return_type_its_failure_value_and_the_detail() {
        let st: mailq_status = boundary(panics);
        assert_eq!(st, mailq_status::MAILQ_ERR_PANIC);
        assert!(last_error().contains("boom 42"), "{}", last_error());
        set_last_error("");
        assert!(boundary::<*const c_char>(panics).is_null());
        assert!(last_error().contains("boom 42"));
        set_last_error("");
        assert_eq!(boundary::<usize>(panics), 0);
        assert!(last_error().contains("boom 42"));
        assert_eq!(boundary::<u64>(panics), 0);
        assert_eq!(boundary::<c_int>(panics), -1);
        boundary::<()>(|| panic!("static text"));
        assert!(last_error().contains("static text"));
    }

    #[test]
    fn only_status_calls_report_their_outcome() {
        let st: mailq_status = boundary(|| fail(mailq_status::MAILQ_ERR_NULL, "x is NULL"));
        assert_eq!(st, mailq_status::MAILQ_ERR_NULL);
        assert_eq!(last_error(), "x is NULL");
        // An accessor's failure and success leave the detail alone.
        assert_eq!(
            boundary::<c_int>(|| fail(mailq_status::MAILQ_ERR_INVALID_HANDLE, "no")),
            -1
        );
        assert_eq!(boundary::<u64>(|| Ok(7)), 7);
        assert_eq!(last_error(), "x is NULL");
        let st: mailq_status = boundary(|| Ok(()));
        assert_eq!(st, mailq_status::MAILQ_OK);
        assert_eq!(last_error(), "");
    }
}
