//! The C ABI: every symbol of `include/mailq.h`, which cbindgen generates from
//! these modules. The Rust API is the crate root; this module is `pub` only so
//! that its symbols and types are exported (and reachable from the fuzz target).
//!
//! The rules every export follows:
//! - No panic crosses the boundary. Every export runs its body in
//!   `boundary::boundary` (directly, or through `with_queue` and its variants,
//!   which check the queue handle inside it), the only `catch_unwind` of the C
//!   ABI: a panic becomes `MAILQ_ERR_PANIC` (NULL, 0 or -1 for the exports
//!   that return no status) and its message the thread's last error.
//! - Every call that can fail returns a `mailq_status`; its detail is the
//!   thread-local `mailq_last_error_message()`, one table (`status`) gives
//!   every status its text.
//! - Handles (`mailq`, `mailq_session`, `mailq_delivery`, `mailq_message`) are
//!   tokens checked against a generation-stamped table (`handle`), never
//!   dereferenced: a freed, made-up or wrong-type handle is
//!   `MAILQ_ERR_INVALID_HANDLE`, not undefined behaviour. An export that takes
//!   nothing but handles and values is therefore a safe `extern "C" fn`.
//! - Raw pointers are dereferenced only through the `unsafe fn`s of `ptr` (and
//!   the few `unsafe fn` helpers next to the exports that use them), each with
//!   a `# Safety` section; every `unsafe` block says why it holds. NULL is
//!   reported (`MAILQ_ERR_NULL`) where the header does not allow it, text must
//!   be UTF-8 (`MAILQ_ERR_UTF8`) except server replies, which are converted
//!   lossily.
//! - Ownership: what the caller passes is copied before the call returns.
//!   Pointers handed back point into the registry object of a handle (valid
//!   until that handle ends), into static storage, into the thread's last
//!   error, or are the caller's to free (`mailq_prometheus` with
//!   `mailq_string_free`, the descriptor of `mailq_delivery_body_fd` with
//!   close(2)).
//!
//! # Safety
//! An `unsafe extern "C"` export requires of each pointer argument what its
//! documentation (the header) says: NULL only where that allows it, otherwise
//! aligned and valid for the reads or writes of the type named (strings
//! NUL-terminated, buffers of the length given, versioned structs of the
//! `size` they state), and callbacks callable with the `userdata` given.
//! These docs carry no `# Safety` heading of their own because cbindgen copies
//! every doc line into the header; that is the only reason
//! `clippy::missing_safety_doc` is allowed below.
//!
//! Layout: `status` (codes, texts, last error) at the bottom; `handle` (the
//! table of handles) and `ptr` (pointer conversion) on it; `boundary` (the
//! panic boundary and the entries of calls on a queue) on those three; then
//! one module per C concept, which use those four and not each other, except
//! `queue` (which reads `options`). `status` uses `boundary` and
//! `ptr::cstring` for its three exports. From the rest of the crate the
//! modules use only `crate::error::Error`, `crate::Result`, `crate::types::*`,
//! `crate::session::{DeliveryCore, Session}`, `crate::{MessageBuilder, Queue}`
//! and the crate root's re-exports.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

// The foundations (no functions).
mod boundary;
mod handle;
mod ptr;

// One module per C concept, in the order of the header: cbindgen writes the
// functions in the order it reads them. Blank lines keep rustfmt from sorting.
mod status;

mod options;

mod queue;

mod message;

mod session;

mod delivery;

mod bounce;

mod operator;

mod egress;

mod observe;

mod events;

mod admin;

pub use self::admin::*;
pub use self::bounce::*;
pub use self::delivery::*;
pub use self::egress::*;
pub use self::events::*;
pub use self::handle::{mailq, mailq_admin, mailq_delivery, mailq_message, mailq_session};
pub use self::message::*;
pub use self::observe::*;
pub use self::operator::*;
pub use self::options::*;
pub use self::queue::*;
pub use self::session::*;
pub use self::status::{mailq_last_error_message, mailq_status, mailq_strerror, mailq_version};
