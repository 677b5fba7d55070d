//! The C ABI (`include/mailq.h`, generated from this file by cbindgen).
//!
//! Rules every function here follows:
//! - Handles (`mailq`, `mailq_session`, `mailq_delivery`, `mailq_message`) are
//!   opaque tokens looked up in a registry, never dereferenced: a handle that
//!   was freed, or of the wrong type, returns `MAILQ_ERR_INVALID_HANDLE`
//!   instead of undefined behaviour.
//! - Every call that can fail returns a `mailq_status`; the detail is in
//!   `mailq_last_error_message()` (thread-local).
//! - No panic crosses the boundary: each body runs under `catch_unwind` and a
//!   panic becomes `MAILQ_ERR_PANIC`.
//! - Null pointers and invalid UTF-8 are reported, never dereferenced blindly.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

use crate::error::Error;
use crate::session::{DeliveryCore, Session};
use crate::types::*;
use crate::{MessageBuilder, Queue};
use parking_lot::Mutex;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

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
}

use mailq_status::*;

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

/// An open queue. Thread-safe: may be used from several threads at once.
pub struct mailq {
    _opaque: [u8; 0],
}

/// A delivery session (one connection slot of one destination). Use from one thread at a time.
pub struct mailq_session {
    _opaque: [u8; 0],
}

/// A delivery: one message and some of its recipients. Use from one thread at a time.
pub struct mailq_delivery {
    _opaque: [u8; 0],
}

/// A message being received (streaming enqueue). Use from one thread at a time.
pub struct mailq_message {
    _opaque: [u8; 0],
}

/// Options for `mailq_open`. Initialise with `mailq_options_init`, which sets `size`
/// (so that newer libraries can grow the struct) and every default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mailq_options {
    /// `sizeof(mailq_options)` as the caller was compiled with.
    pub size: u32,
    /// Non-zero: allow NFS/CIFS/FUSE directories (not recommended).
    pub allow_network_fs: u32,
    /// Segment size in bytes (default 64 MiB).
    pub segment_size: u64,
    /// Largest body in bytes (default 64 MiB).
    pub max_body: u64,
    /// Most recipients per message (default 10000, at most 65535).
    pub max_recipients: u32,
    /// Recipients per delivery (default 50).
    pub batch_recipients: u32,
    /// Deliveries per session (default 100).
    pub deliveries_per_session: u32,
    /// Minimal backoff in seconds (default 300).
    pub min_backoff_secs: u32,
    /// Maximal backoff in seconds (default 4000).
    pub max_backoff_secs: u32,
    /// Queue lifetime in seconds (default 432000, 5 days).
    pub lifetime_secs: u32,
    /// Session lease in seconds (default 600).
    pub lease_ttl_secs: u32,
    /// Initial concurrency window per destination (default 5).
    pub initial_concurrency: u16,
    /// Concurrency limit per destination (default 20).
    pub concurrency_limit: u16,
    /// Consecutive site failures that mark a destination dead (default 5).
    pub dead_after: u32,
    /// Outcomes are durable at least this often, in milliseconds (default 100).
    pub outcome_sync_ms: u32,
    /// Write a checkpoint after this many bytes of log (default 64 MiB).
    pub checkpoint_bytes: u64,
}

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

/// A failed or expired recipient, passed to `mailq_bounce_fn`. Pointers are valid during the callback.
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
/// Callback for `mailq_take_bounces`, once per bounce.
pub type mailq_bounce_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, bounce: *const mailq_bounce)>;

// ---------------------------------------------------------------------------
// Registry of handles.

struct SessionObj {
    session: Option<Session>,
    key: CString,
    delivery: Option<usize>,
}

struct DeliveryObj {
    core: Option<DeliveryCore>,
    session: usize,
    sender: CString,
    rcpts: Vec<CString>,
    outcomes: Vec<Option<Outcome>>,
}

/// A streamed message: a [`MessageBuilder`] (taken out on commit).
struct MessageObj(Option<MessageBuilder>);

#[derive(Clone)]
enum Obj {
    Queue(Queue),
    Session(Arc<Mutex<SessionObj>>),
    Delivery(Arc<Mutex<DeliveryObj>>),
    Message(Arc<Mutex<MessageObj>>),
}

// Handle tokens pack a generation and an index into one pointer-sized value.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("the mailq C ABI needs a 64-bit target (handle tokens are 64-bit)");

/// The handle table. A handle is a slot index and the slot's generation at the
/// time of insertion; it is valid while the slot holds an object of that
/// generation.
///
/// Generations never wrap: every insertion into a slot increments its
/// generation, and a slot whose generation reached `u32::MAX` is retired when
/// its object is removed (never put back on the free list). So within a slot
/// every handle ever issued has a distinct generation, and a stale handle can
/// never match a later object. A retired slot costs one `(u32, None)` entry per
/// 2^32 - 1 handles issued from it.
struct Registry {
    slots: Vec<(u32, Option<Obj>)>,
    free: Vec<usize>,
}

static REGISTRY: Mutex<Registry> = parking_lot::const_mutex(Registry::new());

impl Registry {
    const fn new() -> Self {
        Registry {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, o: Obj) -> usize {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[i];
        // Free slots are below u32::MAX (see `remove`): no wrap-around.
        slot.0 += 1;
        slot.1 = Some(o);
        // The token: generation in the high half, index + 1 in the low half.
        ((slot.0 as usize) << 32) | (i + 1)
    }

    fn lookup(&self, h: usize) -> Option<Obj> {
        let (i, gen) = decode(h)?;
        match self.slots.get(i) {
            Some((g, Some(o))) if *g == gen => Some(o.clone()),
            _ => None,
        }
    }

    fn remove(&mut self, h: usize) -> Option<Obj> {
        let (i, gen) = decode(h)?;
        let out = match self.slots.get_mut(i) {
            Some((g, o @ Some(_))) if *g == gen => o.take(),
            _ => None,
        };
        // A slot at the last generation is retired: reusing it would wrap.
        if out.is_some() && gen != u32::MAX {
            self.free.push(i);
        }
        out
    }
}

fn insert(o: Obj) -> usize {
    REGISTRY.lock().insert(o)
}

fn decode(h: usize) -> Option<(usize, u32)> {
    let i = (h & 0xffff_ffff).checked_sub(1)?;
    Some((i, (h >> 32) as u32))
}

fn lookup(h: usize) -> Option<Obj> {
    REGISTRY.lock().lookup(h)
}

fn remove(h: usize) -> Option<Obj> {
    REGISTRY.lock().remove(h)
}

// ---------------------------------------------------------------------------
// Errors.

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // try_with: during thread or process teardown (atexit handlers, TLS destructors)
    // the slot may be gone; the status code still reports the error.
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut b) = e.try_borrow_mut() {
            *b = c;
        }
    });
}

struct Fail(mailq_status, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let st = match &e {
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
        };
        Fail(st, e.to_string())
    }
}

fn fail<T>(st: mailq_status, msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(st, msg.into()))
}

/// Runs `f`, catching panics and recording the error message.
fn guard(f: impl FnOnce() -> Result<(), Fail>) -> mailq_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            MAILQ_OK
        }
        Ok(Err(Fail(st, msg))) => {
            set_last_error(&msg);
            st
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error (panic caught at the C boundary): {what}"
            ));
            MAILQ_ERR_PANIC
        }
    }
}

/// Like `guard` for functions with no error path; panics are swallowed.
fn guard_void(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

unsafe fn out_ptr<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T, Fail> {
    // SAFETY: the caller promises `p` is NULL or valid for writes of T.
    match unsafe { p.as_mut() } {
        Some(r) => Ok(r),
        None => fail(MAILQ_ERR_NULL, format!("{name} is NULL")),
    }
}

unsafe fn text<'a>(p: *const c_char, name: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return fail(MAILQ_ERR_NULL, format!("{name} is NULL"));
    }
    // SAFETY: non-null and, per the documented contract, NUL-terminated.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|_| Fail(MAILQ_ERR_UTF8, format!("{name} is not valid UTF-8")))
}

unsafe fn opt_text<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Fail> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { text(p, name) }.map(Some)
    }
}

/// A server reply or reason: any bytes (SMTP replies are not always UTF-8),
/// converted lossily. NULL gives None.
unsafe fn reason_text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per the documented contract.
    Some(String::from_utf8_lossy(unsafe { CStr::from_ptr(p) }.to_bytes()).into_owned())
}

unsafe fn bytes<'a>(p: *const u8, len: usize, name: &str) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return fail(
            MAILQ_ERR_NULL,
            format!("{name} is NULL but its length is {len}"),
        );
    }
    if len > isize::MAX as usize {
        return fail(
            MAILQ_ERR_TOO_LARGE,
            format!("{name} length {len} is impossible"),
        );
    }
    // SAFETY: non-null, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

fn queue(h: *mut mailq) -> Result<Queue, Fail> {
    match lookup(h as usize) {
        Some(Obj::Queue(q)) => Ok(q),
        _ => fail(
            MAILQ_ERR_INVALID_HANDLE,
            "not an open mailq handle (NULL, freed, or another type)",
        ),
    }
}

fn session_obj(h: *mut mailq_session) -> Result<Arc<Mutex<SessionObj>>, Fail> {
    match lookup(h as usize) {
        Some(Obj::Session(s)) => Ok(s),
        _ => fail(
            MAILQ_ERR_INVALID_HANDLE,
            "not an open mailq_session handle (NULL, freed, or another type)",
        ),
    }
}

fn delivery_obj(h: *const mailq_delivery) -> Result<Arc<Mutex<DeliveryObj>>, Fail> {
    match lookup(h as usize) {
        Some(Obj::Delivery(d)) => Ok(d),
        _ => fail(
            MAILQ_ERR_INVALID_HANDLE,
            "not an open mailq_delivery handle (NULL, freed, completed, or another type)",
        ),
    }
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

fn message_obj(h: *mut mailq_message) -> Result<Arc<Mutex<MessageObj>>, Fail> {
    match lookup(h as usize) {
        Some(Obj::Message(m)) => Ok(m),
        _ => fail(
            MAILQ_ERR_INVALID_HANDLE,
            "not an open mailq_message handle (NULL, freed, committed, or another type)",
        ),
    }
}

fn builder(m: &mut MessageObj) -> Result<&mut MessageBuilder, Fail> {
    match m.0.as_mut() {
        Some(b) => Ok(b),
        None => fail(MAILQ_ERR_INVALID_HANDLE, "message already committed"),
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Library.

/// The library version, e.g. "0.1.0". Static storage.
#[no_mangle]
pub extern "C" fn mailq_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A static, human-readable description of a status (any int is accepted:
/// unknown values, e.g. from a newer library, give "unknown status").
#[no_mangle]
pub extern "C" fn mailq_strerror(status: c_int) -> *const c_char {
    const ALL: [mailq_status; 20] = [
        MAILQ_OK,
        MAILQ_ERR_NULL,
        MAILQ_ERR_INVALID_HANDLE,
        MAILQ_ERR_INVALID_ARGUMENT,
        MAILQ_ERR_UTF8,
        MAILQ_ERR_INVALID_ADDRESS,
        MAILQ_ERR_NO_RECIPIENTS,
        MAILQ_ERR_TOO_LARGE,
        MAILQ_ERR_INVALID_ROUTE,
        MAILQ_ERR_LOCKED,
        MAILQ_ERR_NETWORK_FS,
        MAILQ_ERR_POISONED,
        MAILQ_ERR_IO,
        MAILQ_ERR_DISK_FULL,
        MAILQ_ERR_CORRUPT,
        MAILQ_ERR_NOT_FOUND,
        MAILQ_ERR_LEASE_EXPIRED,
        MAILQ_ERR_BUSY,
        MAILQ_ERR_VERSION,
        MAILQ_ERR_PANIC,
    ];
    let Some(&status) = ALL.iter().find(|s| **s as c_int == status) else {
        return c"unknown status".as_ptr();
    };
    let s: &'static CStr = match status {
        MAILQ_OK => c"success",
        MAILQ_ERR_NULL => c"a required pointer argument was NULL",
        MAILQ_ERR_INVALID_HANDLE => c"invalid handle (NULL, already freed, or of another type)",
        MAILQ_ERR_INVALID_ARGUMENT => c"invalid argument",
        MAILQ_ERR_UTF8 => c"text is not valid UTF-8",
        MAILQ_ERR_INVALID_ADDRESS => c"invalid address; nothing was queued",
        MAILQ_ERR_NO_RECIPIENTS => c"message has no recipients; nothing was queued",
        MAILQ_ERR_TOO_LARGE => c"too large",
        MAILQ_ERR_INVALID_ROUTE => c"invalid routing key",
        MAILQ_ERR_LOCKED => c"queue directory is locked by another handle",
        MAILQ_ERR_NETWORK_FS => c"queue directory is on a network filesystem",
        MAILQ_ERR_POISONED => c"queue refuses writes after a storage failure; reopen it",
        MAILQ_ERR_IO => c"I/O error",
        MAILQ_ERR_DISK_FULL => c"disk full",
        MAILQ_ERR_CORRUPT => c"corrupt data detected",
        MAILQ_ERR_NOT_FOUND => c"no such message or recipient",
        MAILQ_ERR_LEASE_EXPIRED => c"session lease expired; recipients were requeued",
        MAILQ_ERR_BUSY => c"session has an open delivery",
        MAILQ_ERR_VERSION => c"incompatible on-disk format version",
        MAILQ_ERR_PANIC => c"internal error",
    };
    s.as_ptr()
}

/// Detail of the last error on this thread ("" after a success). Valid until the
/// next mailq call on this thread.
#[no_mangle]
pub extern "C" fn mailq_last_error_message() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.try_borrow().map(|b| b.as_ptr()).unwrap_or(c"".as_ptr()))
        .unwrap_or(c"".as_ptr())
}

/// Fills `opts` with the defaults and sets `opts->size`. Pass
/// `sizeof(mailq_options)` as `size`: a library newer than your header writes
/// only the fields you know.
#[no_mangle]
pub unsafe extern "C" fn mailq_options_init(opts: *mut mailq_options, size: usize) -> mailq_status {
    guard(|| {
        if opts.is_null() {
            return fail(MAILQ_ERR_NULL, "opts is NULL");
        }
        if size < 8 {
            return fail(
                MAILQ_ERR_INVALID_ARGUMENT,
                "size must be sizeof(mailq_options)",
            );
        }
        let mut d = default_options();
        let n = size.min(std::mem::size_of::<mailq_options>());
        d.size = n as u32;
        // SAFETY: the caller promised `size` writable bytes at `opts`; we write at most that.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&d as *const mailq_options).cast::<u8>(),
                opts.cast::<u8>(),
                n,
            )
        };
        Ok(())
    })
}

fn default_options() -> mailq_options {
    let d = Options::default();
    mailq_options {
        size: std::mem::size_of::<mailq_options>() as u32,
        allow_network_fs: 0,
        segment_size: d.segment_size,
        max_body: d.max_body as u64,
        max_recipients: d.max_recipients as u32,
        batch_recipients: d.batch_recipients as u32,
        deliveries_per_session: d.deliveries_per_session as u32,
        min_backoff_secs: d.min_backoff.as_secs() as u32,
        max_backoff_secs: d.max_backoff.as_secs() as u32,
        lifetime_secs: d.lifetime.as_secs() as u32,
        lease_ttl_secs: d.lease_ttl.as_secs() as u32,
        initial_concurrency: d.concurrency.initial,
        concurrency_limit: d.concurrency.limit,
        dead_after: d.concurrency.dead_after as u32,
        outcome_sync_ms: d.outcome_sync_interval.as_millis() as u32,
        checkpoint_bytes: d.checkpoint_bytes,
    }
}

unsafe fn read_options(p: *const mailq_options) -> Result<Options, Fail> {
    let mut o = default_options();
    if !p.is_null() {
        // SAFETY: non-null; we first read only the leading `size` field, then at most
        // `size` bytes, so an older (smaller) caller struct is never over-read.
        let size = unsafe { std::ptr::read_unaligned(p.cast::<u32>()) } as usize;
        if size < 8 {
            return fail(
                MAILQ_ERR_INVALID_ARGUMENT,
                "opts->size is not set: call mailq_options_init first",
            );
        }
        let n = size.min(std::mem::size_of::<mailq_options>());
        // SAFETY: `n` bytes are readable per the size contract; `o` is a valid target.
        unsafe {
            std::ptr::copy_nonoverlapping(
                p.cast::<u8>(),
                (&mut o as *mut mailq_options).cast::<u8>(),
                n,
            )
        };
    }
    let mut opts = Options {
        allow_network_fs: o.allow_network_fs != 0,
        segment_size: o.segment_size,
        max_body: usize::try_from(o.max_body).unwrap_or(usize::MAX),
        max_recipients: o.max_recipients as usize,
        batch_recipients: o.batch_recipients as usize,
        deliveries_per_session: o.deliveries_per_session as usize,
        min_backoff: Duration::from_secs(o.min_backoff_secs as u64),
        max_backoff: Duration::from_secs(o.max_backoff_secs as u64),
        lifetime: Duration::from_secs(o.lifetime_secs as u64),
        lease_ttl: Duration::from_secs(o.lease_ttl_secs as u64),
        outcome_sync_interval: Duration::from_millis(o.outcome_sync_ms as u64),
        checkpoint_bytes: o.checkpoint_bytes,
        ..Options::default()
    };
    opts.concurrency = Concurrency {
        initial: o.initial_concurrency,
        limit: o.concurrency_limit,
        dead_after: o.dead_after.min(u16::MAX as u32) as u16,
    };
    Ok(opts)
}

// ---------------------------------------------------------------------------
// Queue lifecycle.

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
    guard(|| {
        // SAFETY: pointer contracts are documented in the header.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        let dir = unsafe { text(dir, "dir") }?;
        let opts = unsafe { read_options(opts) }?;
        let q = Queue::open(dir, opts)?;
        *out = insert(Obj::Queue(q)) as *mut mailq;
        Ok(())
    })
}

/// Makes buffered outcomes durable, writes a checkpoint, and frees the handle
/// (also on error). Sessions and deliveries still open keep working until freed.
#[no_mangle]
pub extern "C" fn mailq_close(q: *mut mailq) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        remove(q as usize);
        qq.close()?;
        Ok(())
    })
}

/// Frees the handle without a checkpoint (outcomes are synced best-effort).
#[no_mangle]
pub extern "C" fn mailq_free(q: *mut mailq) {
    guard_void(|| {
        if let Some(Obj::Queue(_)) = lookup(q as usize) {
            remove(q as usize);
        }
    })
}

/// Makes every buffered outcome durable now.
#[no_mangle]
pub extern "C" fn mailq_sync(q: *mut mailq) -> mailq_status {
    guard(|| Ok(queue(q)?.sync()?))
}

/// Writes a checkpoint now (and compacts).
#[no_mangle]
pub extern "C" fn mailq_checkpoint(q: *mut mailq) -> mailq_status {
    guard(|| Ok(queue(q)?.checkpoint()?))
}

// ---------------------------------------------------------------------------
// Enqueue.

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
        // SAFETY: the caller promises `n` readable pointers in each array.
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
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: pointer contracts are documented above.
        let id_out = unsafe { out_ptr(id_out, "id_out") }?;
        let sender = unsafe { text(sender, "sender") }?;
        let recipients = unsafe { recipients(rcpts, routes, n_rcpts) }?;
        let meta = unsafe { bytes(meta, meta_len, "meta") }?;
        let body = unsafe { bytes(body, body_len, "body") }?;
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

/// Starts a streamed message (SMTP: after MAIL FROM). Free it with
/// `mailq_message_commit` or `mailq_message_abort`.
#[no_mangle]
pub unsafe extern "C" fn mailq_message_begin(
    q: *mut mailq,
    sender: *const c_char,
    out: *mut *mut mailq_message,
) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        let sender = unsafe { text(sender, "sender") }?;
        let m = MessageObj(Some(qq.message(sender)?));
        *out = insert(Obj::Message(Arc::new(Mutex::new(m)))) as *mut mailq_message;
        Ok(())
    })
}

/// Adds a recipient (SMTP: RCPT TO). `route` may be NULL (route by domain). The
/// address is checked now, so the MTA can answer RCPT with the right code.
#[no_mangle]
pub unsafe extern "C" fn mailq_message_add_recipient(
    m: *mut mailq_message,
    address: *const c_char,
    route: *const c_char,
) -> mailq_status {
    guard(|| {
        let mo = message_obj(m)?;
        // SAFETY: documented pointer contracts.
        let address = unsafe { text(address, "address") }?;
        let route = unsafe { opt_text(route, "route") }?;
        builder(&mut mo.lock())?.add_recipient(address, route)?;
        Ok(())
    })
}

/// Sets the opaque metadata returned at delivery time (copied).
#[no_mangle]
pub unsafe extern "C" fn mailq_message_set_meta(
    m: *mut mailq_message,
    meta: *const u8,
    len: usize,
) -> mailq_status {
    guard(|| {
        let mo = message_obj(m)?;
        // SAFETY: documented pointer contract.
        let meta = unsafe { bytes(meta, len, "meta") }?;
        builder(&mut mo.lock())?.set_meta(meta)?;
        Ok(())
    })
}

/// Appends a chunk of the body as DATA arrives (copied).
#[no_mangle]
pub unsafe extern "C" fn mailq_message_append(
    m: *mut mailq_message,
    chunk: *const u8,
    len: usize,
) -> mailq_status {
    guard(|| {
        let mo = message_obj(m)?;
        // SAFETY: documented pointer contract.
        let chunk = unsafe { bytes(chunk, len, "chunk") }?;
        builder(&mut mo.lock())?.append(chunk)?;
        Ok(())
    })
}

/// Makes the message durable and stores its id in `*id_out` (may be NULL)
/// (SMTP: end of DATA, then 250). The handle is freed whether or not this succeeds.
#[no_mangle]
pub unsafe extern "C" fn mailq_message_commit(
    m: *mut mailq_message,
    id_out: *mut u64,
) -> mailq_status {
    guard(|| {
        let mo = message_obj(m)?;
        remove(m as usize);
        let m = mo.lock().0.take();
        let Some(m) = m else {
            return fail(MAILQ_ERR_INVALID_HANDLE, "message already committed");
        };
        let id = m.commit()?;
        // SAFETY: NULL allowed; otherwise a valid u64 per the contract.
        if let Some(out) = unsafe { id_out.as_mut() } {
            *out = id.0;
        }
        Ok(())
    })
}

/// Discards a streamed message and frees the handle.
#[no_mangle]
pub extern "C" fn mailq_message_abort(m: *mut mailq_message) {
    guard_void(|| {
        if let Some(Obj::Message(_)) = lookup(m as usize) {
            remove(m as usize);
        }
    })
}

// ---------------------------------------------------------------------------
// Sessions and deliveries.

fn wrap_session(s: Session) -> *mut mailq_session {
    let key = cstring(s.routing_key());
    insert(Obj::Session(Arc::new(Mutex::new(SessionObj {
        session: Some(s),
        key,
        delivery: None,
    })))) as *mut mailq_session
}

/// Opens a session for the next destination with ready work and a free slot
/// (round-robin). `*out` is NULL when nothing can be delivered now.
#[no_mangle]
pub unsafe extern "C" fn mailq_next_session(
    q: *mut mailq,
    out: *mut *mut mailq_session,
) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        if let Some(s) = qq.next_session()? {
            *out = wrap_session(s);
        }
        Ok(())
    })
}

/// Opens a session for one routing key; `*out` is NULL when it has no ready work
/// or no free slot.
#[no_mangle]
pub unsafe extern "C" fn mailq_session_for(
    q: *mut mailq,
    key: *const c_char,
    out: *mut *mut mailq_session,
) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        let key = unsafe { text(key, "key") }?;
        if let Some(s) = qq.session_for(key)? {
            *out = wrap_session(s);
        }
        Ok(())
    })
}

/// The session's routing key. Valid until the session is freed; NULL for an invalid handle.
#[no_mangle]
pub extern "C" fn mailq_session_routing_key(s: *mut mailq_session) -> *const c_char {
    catch_unwind(|| match session_obj(s) {
        // The CString lives in the registry object, which outlives this call
        // until mailq_session_free removes it.
        Ok(o) => o.lock().key.as_ptr(),
        Err(_) => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// Takes the next delivery of this session; `*out` is NULL when the destination
/// has no more ready work (then free the session). Only one delivery may be open
/// per session (`MAILQ_ERR_BUSY` otherwise).
#[no_mangle]
pub unsafe extern "C" fn mailq_session_next_delivery(
    s: *mut mailq_session,
    out: *mut *mut mailq_delivery,
) -> mailq_status {
    guard(|| {
        let so = session_obj(s)?;
        // SAFETY: documented pointer contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        let mut g = so.lock();
        if let Some(d) = g.delivery {
            if lookup(d).is_some() {
                return fail(
                    MAILQ_ERR_BUSY,
                    "the session's previous delivery is still open: complete or free it first",
                );
            }
        }
        let Some(sess) = g.session.as_mut() else {
            return fail(MAILQ_ERR_INVALID_HANDLE, "session already ended");
        };
        let Some(core) = sess.next_core()? else {
            return Ok(());
        };
        let n = core.recipients().len();
        let obj = DeliveryObj {
            sender: cstring(core.sender()),
            rcpts: core.recipients().iter().map(|r| cstring(r)).collect(),
            outcomes: vec![None; n],
            core: Some(core),
            session: s as usize,
        };
        let h = insert(Obj::Delivery(Arc::new(Mutex::new(obj))));
        g.delivery = Some(h);
        *out = h as *mut mailq_delivery;
        Ok(())
    })
}

/// Reports a failure of the destination as a whole (connection refused, bad
/// greeting) and frees the session. Any open delivery of the session is returned
/// to the queue.
#[no_mangle]
pub unsafe extern "C" fn mailq_session_site_failure(
    s: *mut mailq_session,
    reason: *const c_char,
) -> mailq_status {
    guard(|| {
        let so = session_obj(s)?;
        remove(s as usize);
        // SAFETY: documented pointer contract.
        let reason = unsafe { reason_text(reason) }.unwrap_or_else(|| "site failure".into());
        let reason = reason.as_str();
        let mut g = so.lock();
        if let Some(d) = g.delivery.take() {
            remove(d);
        }
        match g.session.take() {
            Some(sess) => Ok(sess.site_failure(reason)?),
            None => Ok(()),
        }
    })
}

/// Ends a session and releases its slot. An open delivery of the session is
/// returned to the queue (its handle becomes invalid).
#[no_mangle]
pub extern "C" fn mailq_session_free(s: *mut mailq_session) {
    guard_void(|| {
        if let Some(Obj::Session(so)) = lookup(s as usize) {
            remove(s as usize);
            let mut g = so.lock();
            if let Some(d) = g.delivery.take() {
                remove(d);
            }
            g.session.take();
        }
    })
}

/// The message id of a delivery (0 for an invalid handle).
#[no_mangle]
pub extern "C" fn mailq_delivery_id(d: *const mailq_delivery) -> u64 {
    catch_unwind(|| {
        delivery_obj(d)
            .ok()
            .and_then(|o| o.lock().core.as_ref().map(|c| c.id().0))
            .unwrap_or(0)
    })
    .unwrap_or(0)
}

/// Envelope sender of a delivery ("" for the null sender). Valid until the
/// delivery ends; NULL for an invalid handle.
#[no_mangle]
pub extern "C" fn mailq_delivery_sender(d: *const mailq_delivery) -> *const c_char {
    catch_unwind(|| match delivery_obj(d) {
        Ok(o) => o.lock().sender.as_ptr(),
        Err(_) => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// Number of recipients in the delivery (0 for an invalid handle).
#[no_mangle]
pub extern "C" fn mailq_delivery_recipient_count(d: *const mailq_delivery) -> usize {
    catch_unwind(|| delivery_obj(d).map(|o| o.lock().rcpts.len()).unwrap_or(0)).unwrap_or(0)
}

/// Recipient `i` of the delivery. Valid until the delivery ends; NULL when out of range.
#[no_mangle]
pub extern "C" fn mailq_delivery_recipient(d: *const mailq_delivery, i: usize) -> *const c_char {
    catch_unwind(|| match delivery_obj(d) {
        Ok(o) => o
            .lock()
            .rcpts
            .get(i)
            .map(|c| c.as_ptr())
            .unwrap_or(std::ptr::null()),
        Err(_) => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// Index within its message of recipient `i` of the delivery, and its previous attempts.
#[no_mangle]
pub unsafe extern "C" fn mailq_delivery_recipient_info(
    d: *const mailq_delivery,
    i: usize,
    index_out: *mut u32,
    attempts_out: *mut u32,
) -> mailq_status {
    guard(|| {
        // SAFETY: documented pointer contracts.
        let index_out = unsafe { out_ptr(index_out, "index_out") }?;
        let attempts_out = unsafe { out_ptr(attempts_out, "attempts_out") }?;
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

/// The body, zero-copy from the memory-mapped log. `*ptr` stays valid until the
/// delivery is completed or freed.
#[no_mangle]
pub unsafe extern "C" fn mailq_delivery_body(
    d: *const mailq_delivery,
    ptr: *mut *const u8,
    len: *mut usize,
) -> mailq_status {
    guard(|| {
        // SAFETY: documented pointer contracts.
        let ptr = unsafe { out_ptr(ptr, "ptr") }?;
        let len = unsafe { out_ptr(len, "len") }?;
        with_core(d, |c| {
            // The Bytes (and its mapping) live in the registry object until the delivery ends.
            *ptr = c.body().as_ptr();
            *len = c.body().len();
            Ok(())
        })
    })
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
    guard(|| {
        // SAFETY: documented pointer contracts.
        let fd = unsafe { out_ptr(fd, "fd") }?;
        *fd = -1;
        let offset = unsafe { out_ptr(offset, "offset") }?;
        let len = unsafe { out_ptr(len, "len") }?;
        with_core(d, |c| {
            let (file, off) = c.body_file()?;
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
    guard(|| {
        // SAFETY: documented pointer contracts.
        let ptr = unsafe { out_ptr(ptr, "ptr") }?;
        let len = unsafe { out_ptr(len, "len") }?;
        with_core(d, |c| {
            *ptr = c.meta().as_ptr();
            *len = c.meta().len();
            Ok(())
        })
    })
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
    guard(|| {
        let o = delivery_obj(d)?;
        // SAFETY: documented pointer contract.
        let reason = unsafe { reason_text(reason) }.unwrap_or_default();
        let out = match outcome {
            x if x == mailq_outcome::MAILQ_DELIVERED as c_int => Outcome::Delivered,
            x if x == mailq_outcome::MAILQ_TEMPFAIL as c_int => Outcome::TempFail {
                reason: reason.to_string(),
                retry_after: (retry_after_secs > 0)
                    .then(|| Duration::from_secs(retry_after_secs as u64)),
            },
            x if x == mailq_outcome::MAILQ_PERMFAIL as c_int => Outcome::PermFail {
                reason: reason.to_string(),
            },
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

fn end_delivery(d: *mut mailq_delivery) -> Result<(Arc<Mutex<DeliveryObj>>, usize), Fail> {
    let o = delivery_obj(d)?;
    remove(d as usize);
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
    guard(|| {
        {
            let o = delivery_obj(d)?;
            let g = o.lock();
            if let Some(i) = g.outcomes.iter().position(|x| x.is_none()) {
                return fail(
                    MAILQ_ERR_INVALID_ARGUMENT,
                    format!("no outcome set for recipient {i}"),
                );
            }
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
    guard(|| {
        let (o, session) = end_delivery(d)?;
        // SAFETY: documented pointer contract.
        let reason = unsafe { reason_text(reason) }.unwrap_or_else(|| "site failure".into());
        let reason = reason.as_str();
        let core = o.lock().core.take();
        let r = match core {
            Some(mut c) => c.site_failure_outcomes(reason),
            None => Ok(()),
        };
        if let Some(Obj::Session(so)) = lookup(session) {
            if let Some(s) = so.lock().session.as_mut() {
                s.close(Some(reason))?;
            }
        }
        Ok(r?)
    })
}

/// Frees a delivery without outcomes: its recipients return to the ready queue.
#[no_mangle]
pub extern "C" fn mailq_delivery_free(d: *mut mailq_delivery) {
    guard_void(|| {
        if let Ok((o, _)) = end_delivery(d) {
            o.lock().core.take();
        }
    })
}

// ---------------------------------------------------------------------------
// Bounces.

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
    guard(|| {
        let qq = queue(q)?;
        let Some(cb) = cb else {
            return fail(MAILQ_ERR_NULL, "cb is NULL");
        };
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
            };
            // SAFETY: calling the caller's callback with pointers valid for the call.
            unsafe { cb(userdata, &cb_b) };
        }
        // SAFETY: NULL allowed.
        if let Some(c) = unsafe { count.as_mut() } {
            *c = list.len();
        }
        Ok(())
    })
}

/// Acknowledges a bounce: the recipient is final.
#[no_mangle]
pub extern "C" fn mailq_ack_bounce(q: *mut mailq, id: u64, index: u32) -> mailq_status {
    guard(|| {
        if !queue(q)?.ack_bounce(MessageId(id), index)? {
            return fail(MAILQ_ERR_NOT_FOUND, "no failed or expired recipient there");
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Operator actions.

fn counted(changed: *mut usize, n: usize) {
    // SAFETY: NULL allowed; otherwise a valid size_t per the contract.
    if let Some(c) = unsafe { changed.as_mut() } {
        *c = n;
    }
}

fn by_id(
    q: *mut mailq,
    id: u64,
    changed: *mut usize,
    f: fn(&Queue, MessageId) -> crate::Result<usize>,
) -> mailq_status {
    guard(|| {
        let n = f(&queue(q)?, MessageId(id))?;
        counted(changed, n);
        Ok(())
    })
}

unsafe fn by_key(
    q: *mut mailq,
    key: *const c_char,
    changed: *mut usize,
    f: fn(&Queue, &str) -> crate::Result<usize>,
) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contract.
        let key = unsafe { text(key, "key") }?;
        let n = f(&qq, key)?;
        counted(changed, n);
        Ok(())
    })
}

/// Holds every waiting recipient of a message; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_hold(q: *mut mailq, id: u64, changed: *mut usize) -> mailq_status {
    by_id(q, id, changed, Queue::hold)
}

/// Releases a held message: its recipients become ready; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_release(
    q: *mut mailq,
    id: u64,
    changed: *mut usize,
) -> mailq_status {
    by_id(q, id, changed, Queue::release)
}

/// Deletes a message (no DSN); `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_delete(q: *mut mailq, id: u64, changed: *mut usize) -> mailq_status {
    by_id(q, id, changed, Queue::delete)
}

/// Holds every waiting recipient routed to `key`; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_hold_bucket(
    q: *mut mailq,
    key: *const c_char,
    changed: *mut usize,
) -> mailq_status {
    // SAFETY: forwarded pointer contract.
    unsafe { by_key(q, key, changed, Queue::hold_bucket) }
}

/// Releases every held recipient routed to `key`; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_release_bucket(
    q: *mut mailq,
    key: *const c_char,
    changed: *mut usize,
) -> mailq_status {
    // SAFETY: forwarded pointer contract.
    unsafe { by_key(q, key, changed, Queue::release_bucket) }
}

/// Makes the deferred recipients of `key` ready now; `*changed` (may be NULL) gets the count.
#[no_mangle]
pub unsafe extern "C" fn mailq_flush_bucket(
    q: *mut mailq,
    key: *const c_char,
    changed: *mut usize,
) -> mailq_status {
    // SAFETY: forwarded pointer contract.
    unsafe { by_key(q, key, changed, Queue::flush_bucket) }
}

/// Makes every deferred recipient ready now (and revives dead destinations).
#[no_mangle]
pub unsafe extern "C" fn mailq_flush(q: *mut mailq, changed: *mut usize) -> mailq_status {
    guard(|| {
        let n = queue(q)?.flush()?;
        counted(changed, n);
        Ok(())
    })
}

/// Suspends a destination (no new sessions) until `mailq_resume`.
#[no_mangle]
pub unsafe extern "C" fn mailq_suspend(q: *mut mailq, key: *const c_char) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contract.
        Ok(qq.suspend(unsafe { text(key, "key") }?)?)
    })
}

/// Resumes a suspended destination.
#[no_mangle]
pub unsafe extern "C" fn mailq_resume(q: *mut mailq, key: *const c_char) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contract.
        Ok(qq.resume(unsafe { text(key, "key") }?)?)
    })
}

/// Sets the concurrency limit of one destination.
#[no_mangle]
pub unsafe extern "C" fn mailq_set_concurrency_limit(
    q: *mut mailq,
    key: *const c_char,
    limit: u16,
) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contract.
        Ok(qq.set_concurrency_limit(unsafe { text(key, "key") }?, limit)?)
    })
}

/// Re-routes every waiting recipient of routing key `from` to `to` (persisted).
#[no_mangle]
pub unsafe extern "C" fn mailq_reroute(
    q: *mut mailq,
    from: *const c_char,
    to: *const c_char,
    changed: *mut usize,
) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contracts.
        let (from, to) = unsafe { (text(from, "from")?, text(to, "to")?) };
        let n = qq.reroute(from, to)?;
        counted(changed, n);
        Ok(())
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
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contract.
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

/// Calls `cb` for every live message until it returns 0.
#[no_mangle]
pub unsafe extern "C" fn mailq_walk(
    q: *mut mailq,
    cb: mailq_walk_fn,
    userdata: *mut c_void,
) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        let Some(cb) = cb else {
            return fail(MAILQ_ERR_NULL, "cb is NULL");
        };
        qq.walk(|m| {
            let info = mailq_message_info {
                id: m.id.0,
                received: m.received,
                recipients: m.recipients,
                pending: m.pending,
                sender: std::ptr::null(),
                size: 0,
            };
            // SAFETY: calling the caller's callback with a pointer valid for the call.
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
    guard(|| {
        let qq = queue(q)?;
        let Some(cb) = cb else {
            return fail(MAILQ_ERR_NULL, "cb is NULL");
        };
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
            // SAFETY: calling the caller's callback with pointers valid for the call.
            unsafe { cb(userdata, &m, &ri) };
        }
        Ok(())
    })
}

/// Reads and checks every live record; `*bad` (may be NULL) gets the number of damaged messages.
#[no_mangle]
pub unsafe extern "C" fn mailq_verify(q: *mut mailq, bad: *mut usize) -> mailq_status {
    guard(|| {
        let n = queue(q)?.verify()?.len();
        counted(bad, n);
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Observability and event loops.

/// Fills `*out` (set `out->size = sizeof(mailq_stats)` first).
#[no_mangle]
pub unsafe extern "C" fn mailq_stats_get(q: *mut mailq, out: *mut mailq_stats) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        if out.is_null() {
            return fail(MAILQ_ERR_NULL, "out is NULL");
        }
        // SAFETY: non-null; read the leading size field only.
        let size = unsafe { std::ptr::read_unaligned(out.cast::<u32>()) } as usize;
        if size < 8 {
            return fail(
                MAILQ_ERR_INVALID_ARGUMENT,
                "out->size is not set to sizeof(mailq_stats)",
            );
        }
        let st = qq.stats();
        let full = mailq_stats {
            size: size.min(std::mem::size_of::<mailq_stats>()) as u32,
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
        };
        let n = size.min(std::mem::size_of::<mailq_stats>());
        // SAFETY: the caller promised `size` writable bytes; we write at most that.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&full as *const mailq_stats).cast::<u8>(),
                out.cast::<u8>(),
                n,
            )
        };
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
    guard(|| {
        let qq = queue(q)?;
        let Some(cb) = cb else {
            return fail(MAILQ_ERR_NULL, "cb is NULL");
        };
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
            // SAFETY: calling the caller's callback with pointers valid for the call.
            if unsafe { cb(userdata, &bs) } == 0 {
                break;
            }
        }
        Ok(())
    })
}

/// The stats in Prometheus text format. Free `*out` with `mailq_string_free`.
#[no_mangle]
pub unsafe extern "C" fn mailq_prometheus(
    q: *mut mailq,
    out: *mut *mut c_char,
    len: *mut usize,
) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        let text = qq.stats().prometheus();
        let bytes = text.as_bytes();
        // malloc'd so that the caller may modify it (strtok) and we free with free().
        // SAFETY: allocating len + 1 bytes; checked for NULL below.
        let p = unsafe { libc::malloc(bytes.len() + 1) }.cast::<u8>();
        if p.is_null() {
            return fail(MAILQ_ERR_TOO_LARGE, "out of memory for the Prometheus text");
        }
        // SAFETY: `p` has len + 1 writable bytes; the source has len bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
        }
        if let Some(l) = unsafe { len.as_mut() } {
            *l = bytes.len();
        }
        *out = p.cast();
        Ok(())
    })
}

/// Frees the string returned by `mailq_prometheus` (NULL is ignored). Never pass
/// other pointers the library returns: those belong to the library.
#[no_mangle]
pub unsafe extern "C" fn mailq_string_free(s: *mut c_char) {
    // SAFETY: `s` came from malloc in mailq_prometheus (documented contract).
    unsafe { libc::free(s.cast()) };
}

/// The pollable descriptor: readable when a destination has ready work. Do not
/// close it. Returns -1 for an invalid handle.
#[no_mangle]
pub extern "C" fn mailq_poll_fd(q: *mut mailq) -> c_int {
    catch_unwind(|| queue(q).map(|q| q.poll_fd()).unwrap_or(-1)).unwrap_or(-1)
}

/// Clears the pollable descriptor; then take sessions until none is returned.
#[no_mangle]
pub extern "C" fn mailq_ack_poll(q: *mut mailq) -> mailq_status {
    guard(|| {
        queue(q)?.ack_poll();
        Ok(())
    })
}

/// Unix time of the next scheduled event (retry, probe, lease deadline), or 0
/// when nothing is scheduled. Arm a timer for it and call `mailq_tick`.
#[no_mangle]
pub unsafe extern "C" fn mailq_next_wakeup(q: *mut mailq, when: *mut u64) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contract.
        let when = unsafe { out_ptr(when, "when") }?;
        *when = qq.next_wakeup().unwrap_or(0);
        Ok(())
    })
}

/// Milliseconds until the next scheduled event, including the deadline for
/// syncing buffered outcome records (which `mailq_next_wakeup` rounds up to a
/// second); 0 when something is due now, -1 when nothing is scheduled. Use it
/// as the timeout of poll/epoll_wait, then call `mailq_tick`.
#[no_mangle]
pub unsafe extern "C" fn mailq_next_timeout(q: *mut mailq, ms: *mut i64) -> mailq_status {
    guard(|| {
        let qq = queue(q)?;
        // SAFETY: documented pointer contract.
        let ms = unsafe { out_ptr(ms, "ms") }?;
        *ms = match qq.next_timeout() {
            Some(d) => d.as_millis().min(i64::MAX as u128) as i64,
            None => -1,
        };
        Ok(())
    })
}

/// Fires due retries, probes and lease reclaims; `*ready` (may be NULL) is set to
/// 1 when work is ready (the poll fd is raised too).
#[no_mangle]
pub unsafe extern "C" fn mailq_tick(q: *mut mailq, ready: *mut c_int) -> mailq_status {
    guard(|| {
        let r = queue(q)?.tick();
        // SAFETY: NULL allowed.
        if let Some(p) = unsafe { ready.as_mut() } {
            *p = r as c_int;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_handles_are_rejected_not_dereferenced() {
        let d = std::env::temp_dir().join(format!("mailq-ffi-unit-{}", std::process::id()));
        let q = Queue::open(&d, Options::default()).unwrap();
        let m = MessageObj(Some(q.message("").unwrap()));
        let h = insert(Obj::Message(Arc::new(Mutex::new(m))));
        assert!(lookup(h).is_some());
        assert!(remove(h).is_some());
        assert!(lookup(h).is_none());
        assert!(remove(h).is_none());
        assert_eq!(mailq_ack_poll(h as *mut mailq), MAILQ_ERR_INVALID_HANDLE);
        assert_eq!(
            mailq_ack_poll(std::ptr::null_mut()),
            MAILQ_ERR_INVALID_HANDLE
        );
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("mailq-ffi-unit-{}", std::process::id())),
        );
    }

    fn session_obj_for_test(key: &str) -> Obj {
        Obj::Session(Arc::new(Mutex::new(SessionObj {
            session: None,
            key: cstring(key),
            delivery: None,
        })))
    }

    fn key_of(o: Option<Obj>) -> Option<String> {
        match o {
            Some(Obj::Session(s)) => Some(s.lock().key.to_string_lossy().into_owned()),
            _ => None,
        }
    }

    /// A slot whose generation reaches u32::MAX is retired, so its generation
    /// never wraps and no stale handle can validate against a newer object.
    /// With the old code the slot went back on the free list and the next
    /// insertion wrapped to generation 1: the handle issued at generation 1
    /// long before resolved to the new object.
    #[test]
    fn handle_generations_never_wrap() {
        let mut r = Registry::new();
        let first = r.insert(session_obj_for_test("first"));
        let (slot, gen) = decode(first).expect("valid token");
        assert_eq!(gen, 1);
        assert!(r.remove(first).is_some());
        // As if the slot had been used 2^32 - 2 times.
        r.slots[slot].0 = u32::MAX - 1;
        let last = r.insert(session_obj_for_test("last"));
        assert_eq!(decode(last), Some((slot, u32::MAX)));
        assert_eq!(key_of(r.lookup(last)).as_deref(), Some("last"));
        assert!(r.remove(last).is_some());

        let next = r.insert(session_obj_for_test("next"));
        for stale in [first, last] {
            assert!(
                r.lookup(stale).is_none(),
                "stale handle {stale:#x} resolved"
            );
            assert!(r.remove(stale).is_none(), "stale handle {stale:#x} removed");
        }
        assert_eq!(key_of(r.lookup(next)).as_deref(), Some("next"));
        let (next_slot, _) = decode(next).expect("valid token");
        assert_ne!(next_slot, slot, "the retired slot was reused");
        assert!(
            !r.free.contains(&slot),
            "the retired slot is on the free list"
        );
        // Every generation the retired slot ever had is rejected.
        for g in [0, 1, 2, u32::MAX - 1, u32::MAX] {
            let token = ((g as usize) << 32) | (slot + 1);
            assert!(r.lookup(token).is_none(), "generation {g} resolved");
        }
        assert_eq!(key_of(r.lookup(next)).as_deref(), Some("next"));
    }

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
        mailq_session_free(s);
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
        let (mut fd, mut off, mut len) = (-1, 0u64, 0usize);
        // SAFETY: valid handle and out-pointers.
        let st = unsafe { mailq_delivery_body_fd(d, &mut fd, &mut off, &mut len) };
        assert_eq!(st, MAILQ_OK, "{}", last_error());
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
}
