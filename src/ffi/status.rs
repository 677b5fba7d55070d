//! Status codes and error detail: `mailq_status` with its one table of texts,
//! the mapping from the library's `Error`, the thread's last error, and the
//! exports that read them. Depends on `crate::error::Error`, `ptr::cstring`
//! (the last error's text) and, for its exports, `boundary`.

use super::boundary::boundary;
use super::ptr::cstring;
use crate::error::Error;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};

// Values are ABI: a new status takes the next value after the last one, and a
// row in MESSAGES (whose length follows the last status).
/// Status of a mailq call. `MAILQ_OK` is zero; everything else is an error whose
/// detail is available from `mailq_last_error_message()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mailq_status {
    /// Success.
    MAILQ_OK = 0,
    /// A required pointer argument was NULL.
    MAILQ_ERR_NULL = 1,
    /// The handle was already freed, or is of another type.
    MAILQ_ERR_INVALID_HANDLE = 2,
    /// An argument is out of range (index, option value, missing outcome).
    MAILQ_ERR_INVALID_ARGUMENT = 3,
    /// Text that must be UTF-8 is not.
    MAILQ_ERR_UTF8 = 4,
    /// An address was rejected; nothing was queued.
    MAILQ_ERR_INVALID_ADDRESS = 5,
    /// A message needs at least one recipient.
    MAILQ_ERR_NO_RECIPIENTS = 6,
    /// A body, metadata or recipient list is over its limit.
    MAILQ_ERR_TOO_LARGE = 7,
    /// A routing key was rejected.
    MAILQ_ERR_INVALID_ROUTE = 8,
    /// Another handle holds the queue directory.
    MAILQ_ERR_LOCKED = 9,
    /// The directory is on a network filesystem (see `allow_network_fs`).
    MAILQ_ERR_NETWORK_FS = 10,
    /// An earlier storage failure: writes are refused until the queue is reopened.
    MAILQ_ERR_POISONED = 11,
    /// An I/O error.
    MAILQ_ERR_IO = 12,
    /// The disk is full.
    MAILQ_ERR_DISK_FULL = 13,
    /// Damaged data was found (and reported in the stats).
    MAILQ_ERR_CORRUPT = 14,
    /// No such message or recipient.
    MAILQ_ERR_NOT_FOUND = 15,
    /// The session's lease expired; its recipients were requeued.
    MAILQ_ERR_LEASE_EXPIRED = 16,
    /// The session still has an open delivery: complete or free it first.
    MAILQ_ERR_BUSY = 17,
    /// Files written by an incompatible mailq version.
    MAILQ_ERR_VERSION = 18,
    /// An internal error (a caught panic). The queue handle should be closed.
    MAILQ_ERR_PANIC = 19,
    /// The queue is over a configured limit (queued recipients or bytes, free
    /// disk): nothing was written. Answer `452 4.3.1` and let the client retry.
    MAILQ_ERR_TRY_LATER = 20,
}

use mailq_status::*;

/// Every status with its `mailq_strerror` text, each at the index of its value
/// (checked at compile time below), so that the text of an int is one lookup.
const MESSAGES: [(mailq_status, &CStr); MAILQ_ERR_TRY_LATER as usize + 1] = [
    (MAILQ_OK, c"success"),
    (MAILQ_ERR_NULL, c"a required pointer argument was NULL"),
    (
        MAILQ_ERR_INVALID_HANDLE,
        c"invalid handle (NULL, already freed, or of another type)",
    ),
    (MAILQ_ERR_INVALID_ARGUMENT, c"invalid argument"),
    (MAILQ_ERR_UTF8, c"text is not valid UTF-8"),
    (
        MAILQ_ERR_INVALID_ADDRESS,
        c"invalid address; nothing was queued",
    ),
    (
        MAILQ_ERR_NO_RECIPIENTS,
        c"message has no recipients; nothing was queued",
    ),
    (MAILQ_ERR_TOO_LARGE, c"too large"),
    (MAILQ_ERR_INVALID_ROUTE, c"invalid routing key"),
    (
        MAILQ_ERR_LOCKED,
        c"queue directory is locked by another handle",
    ),
    (
        MAILQ_ERR_NETWORK_FS,
        c"queue directory is on a network filesystem",
    ),
    (
        MAILQ_ERR_POISONED,
        c"queue refuses writes after a storage failure; reopen it",
    ),
    (MAILQ_ERR_IO, c"I/O error"),
    (MAILQ_ERR_DISK_FULL, c"disk full"),
    (MAILQ_ERR_CORRUPT, c"corrupt data detected"),
    (MAILQ_ERR_NOT_FOUND, c"no such message or recipient"),
    (
        MAILQ_ERR_LEASE_EXPIRED,
        c"session lease expired; recipients were requeued",
    ),
    (MAILQ_ERR_BUSY, c"session has an open delivery"),
    (MAILQ_ERR_VERSION, c"incompatible on-disk format version"),
    (MAILQ_ERR_PANIC, c"internal error"),
    (
        MAILQ_ERR_TRY_LATER,
        c"queue is over a configured limit; nothing was queued, try later",
    ),
];

const _: () = {
    let mut i = 0;
    while i < MESSAGES.len() {
        assert!(MESSAGES[i].0 as usize == i, "MESSAGES is out of order");
        i += 1;
    }
};

/// The status that reports a library error. Exhaustive: a new `Error`
/// variant does not compile until it is given one.
fn status_of(e: &Error) -> mailq_status {
    match e {
        Error::Locked(_) => MAILQ_ERR_LOCKED,
        Error::NetworkFilesystem { .. } => MAILQ_ERR_NETWORK_FS,
        Error::InvalidAddress { .. } => MAILQ_ERR_INVALID_ADDRESS,
        Error::NoRecipients => MAILQ_ERR_NO_RECIPIENTS,
        Error::TooLarge { .. } => MAILQ_ERR_TOO_LARGE,
        Error::InvalidRoutingKey { .. } => MAILQ_ERR_INVALID_ROUTE,
        Error::Poisoned(_) => MAILQ_ERR_POISONED,
        Error::Io { .. } => MAILQ_ERR_IO,
        Error::DiskFull(_) => MAILQ_ERR_DISK_FULL,
        Error::Corrupt { .. } => MAILQ_ERR_CORRUPT,
        Error::NoSuchMessage(_) | Error::NoSuchRecipient(..) => MAILQ_ERR_NOT_FOUND,
        Error::LeaseExpired => MAILQ_ERR_LEASE_EXPIRED,
        Error::OutcomeCount { .. } | Error::InvalidOption(_) => MAILQ_ERR_INVALID_ARGUMENT,
        Error::Version { .. } => MAILQ_ERR_VERSION,
        Error::TryLater { .. } => MAILQ_ERR_TRY_LATER,
    }
}

/// A failed call: the status it returns and the detail for
/// `mailq_last_error_message()`.
pub(super) struct Fail(pub(super) mailq_status, pub(super) String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(status_of(&e), e.to_string())
    }
}

/// `Err` of a failed call.
pub(super) fn fail<T>(status: mailq_status, detail: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(status, detail.into()))
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records the detail `mailq_last_error_message()` returns on this thread.
pub(super) fn set_last_error(detail: &str) {
    let c = cstring(detail);
    // try_with: during thread or process teardown (atexit handlers, TLS destructors)
    // the slot may be gone; the status code still reports the error.
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut b) = e.try_borrow_mut() {
            *b = c;
        }
    });
}

/// The library version, e.g. "0.1.0". Static storage.
#[no_mangle]
pub extern "C" fn mailq_version() -> *const c_char {
    boundary(|| Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()))
}

/// A static, human-readable description of a status (any int is accepted:
/// unknown values, e.g. from a newer library, give "unknown status").
#[no_mangle]
pub extern "C" fn mailq_strerror(status: c_int) -> *const c_char {
    boundary(|| {
        let row = usize::try_from(status).ok().and_then(|i| MESSAGES.get(i));
        Ok(row.map_or(c"unknown status", |&(_, text)| text).as_ptr())
    })
}

/// Detail of the last error on this thread ("" after a success). Valid until the
/// next mailq call on this thread.
#[no_mangle]
pub extern "C" fn mailq_last_error_message() -> *const c_char {
    boundary(|| {
        // The pointer outlives the borrow: the CString is replaced only when a
        // later call on this thread records its detail.
        Ok(LAST_ERROR
            .try_with(|e| e.try_borrow().map(|b| b.as_ptr()).unwrap_or(c"".as_ptr()))
            .unwrap_or(c"".as_ptr()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: *const c_char) -> String {
        // SAFETY: mailq_strerror returns static NUL-terminated strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    #[test]
    fn every_status_has_its_text_and_other_ints_are_unknown() {
        for (status, message) in MESSAGES {
            assert_eq!(
                text(mailq_strerror(status as c_int)),
                message.to_string_lossy()
            );
        }
        assert_eq!(
            text(mailq_strerror(MAILQ_ERR_PANIC as c_int)),
            "internal error"
        );
        for unknown in [-1, MESSAGES.len() as c_int, 999, c_int::MIN] {
            assert_eq!(text(mailq_strerror(unknown)), "unknown status");
        }
    }
}
