//! Raw pointers from C, converted in one place. Each function here that
//! dereferences a pointer is an `unsafe fn` whose `# Safety` section is what an
//! export passes on from its header contract. Depends on `status`.

use super::status::{fail, mailq_status::*, Fail};
use std::ffi::{c_char, CStr, CString};

/// `*p` to write an out-parameter to; `MAILQ_ERR_NULL` naming it when NULL.
///
/// # Safety
/// `p` is NULL or valid, aligned and writable for a `T` for `'a`, and nothing
/// else accesses it meanwhile.
pub(super) unsafe fn out_ptr<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T, Fail> {
    // SAFETY: `p` is NULL or valid for writes of a T (this function's contract).
    match unsafe { p.as_mut() } {
        Some(r) => Ok(r),
        None => fail(MAILQ_ERR_NULL, format!("{name} is NULL")),
    }
}

/// Like [`out_ptr`], and sets `*p` to `empty` first, so that a call failing
/// after this point leaves `empty` (NULL, -1) behind.
///
/// # Safety
/// As for [`out_ptr`].
pub(super) unsafe fn out_init<'a, T>(p: *mut T, name: &str, empty: T) -> Result<&'a mut T, Fail> {
    // SAFETY: forwarded from this function's contract.
    let out = unsafe { out_ptr(p, name) }?;
    *out = empty;
    Ok(out)
}

/// Stores what `make` gives in the out-parameter `p`, which holds `empty`
/// (NULL, -1) from the start: a call failing on the way leaves that behind.
///
/// # Safety
/// As for [`out_ptr`].
pub(super) unsafe fn fill<T>(
    p: *mut T,
    name: &str,
    empty: T,
    make: impl FnOnce() -> Result<T, Fail>,
) -> Result<(), Fail> {
    // SAFETY: forwarded from this function's contract.
    let out = unsafe { out_init(p, name, empty) }?;
    *out = make()?;
    Ok(())
}

/// Writes `value` to an optional out-parameter: nothing when `p` is NULL.
/// Never fails; it returns `Ok` to end a call with.
///
/// # Safety
/// `p` is NULL or valid, aligned and writable for a `T`.
pub(super) unsafe fn write_opt<T>(p: *mut T, value: T) -> Result<(), Fail> {
    // SAFETY: `p` is NULL or valid for writes of a T (this function's contract).
    if let Some(out) = unsafe { p.as_mut() } {
        *out = value;
    }
    Ok(())
}

/// A NUL-terminated UTF-8 string; `MAILQ_ERR_NULL` or `MAILQ_ERR_UTF8` naming it.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that stays valid and unchanged for `'a`.
pub(super) unsafe fn text<'a>(p: *const c_char, name: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return fail(MAILQ_ERR_NULL, format!("{name} is NULL"));
    }
    // SAFETY: non-NULL, so a NUL-terminated string (this function's contract).
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|_| Fail(MAILQ_ERR_UTF8, format!("{name} is not valid UTF-8")))
}

/// Like [`text`] where NULL is allowed (and gives `None`).
///
/// # Safety
/// As for [`text`].
pub(super) unsafe fn opt_text<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Fail> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded from this function's contract.
        unsafe { text(p, name) }.map(Some)
    }
}

/// A server reply or reason: any bytes (SMTP replies are not always UTF-8),
/// converted lossily. NULL gives None.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(super) unsafe fn reason_text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL, so a NUL-terminated string (this function's contract).
    Some(String::from_utf8_lossy(unsafe { CStr::from_ptr(p) }.to_bytes()).into_owned())
}

/// `len` bytes at `p`; `p` may be NULL when `len` is 0.
///
/// # Safety
/// When `len` is not 0, `p` is NULL or valid for reads of `len` bytes that stay
/// unchanged for `'a`.
pub(super) unsafe fn bytes<'a>(p: *const u8, len: usize, name: &str) -> Result<&'a [u8], Fail> {
    // SAFETY: bytes are values of `u8` (always aligned); same contract.
    unsafe { items(p, len, name) }
}

/// `len` values at `p` (an array the caller passes); `p` may be NULL when
/// `len` is 0.
///
/// # Safety
/// When `len` is not 0, `p` is NULL or valid and aligned for reads of `len`
/// values of `T` that stay unchanged for `'a`.
pub(super) unsafe fn items<'a, T>(p: *const T, len: usize, name: &str) -> Result<&'a [T], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return fail(
            MAILQ_ERR_NULL,
            format!("{name} is NULL but its length is {len}"),
        );
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return fail(
            MAILQ_ERR_TOO_LARGE,
            format!("{name} length {len} is impossible"),
        );
    }
    // SAFETY: non-NULL, so `len` readable, aligned values (this function's
    // contract); their size is at most isize::MAX bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A callback the caller must pass; `MAILQ_ERR_NULL` when it is NULL.
pub(super) fn callback<F>(cb: Option<F>) -> Result<F, Fail> {
    cb.ok_or_else(|| Fail(MAILQ_ERR_NULL, "cb is NULL".into()))
}

/// How many bytes of a versioned struct (`mailq_options`, `mailq_stats`) a
/// caller compiled with `size` bytes of it has: all of this library's struct,
/// or its leading `size` bytes when the caller's is older (shorter). A size
/// under 8 means the caller did not set it: `unset` is the error detail.
pub(super) fn known_len<T>(size: usize, unset: &str) -> Result<usize, Fail> {
    if size < 8 {
        return fail(MAILQ_ERR_INVALID_ARGUMENT, unset);
    }
    Ok(size.min(std::mem::size_of::<T>()))
}

/// The leading `uint32_t size` field of a versioned struct, read unaligned.
///
/// # Safety
/// `p` is non-NULL and its first 4 bytes are readable.
pub(super) unsafe fn size_field<T>(p: *const T) -> usize {
    // SAFETY: 4 readable bytes at `p` (this function's contract).
    unsafe { std::ptr::read_unaligned(p.cast::<u32>()) as usize }
}

/// Copies the first `n` bytes (at most all) of `src` to the caller's `dst`.
///
/// # Safety
/// `dst` is valid for writes of `n` bytes (or of a whole `T`, if that is less).
pub(super) unsafe fn write_known<T>(dst: *mut T, n: usize, src: &T) {
    let n = n.min(std::mem::size_of::<T>());
    // SAFETY: `src` is a whole T, so `n` readable bytes; `dst` has `n` writable
    // ones (this function's contract), and a caller's buffer is not our `src`.
    unsafe { std::ptr::copy_nonoverlapping((src as *const T).cast::<u8>(), dst.cast::<u8>(), n) };
}

/// Copies the first `n` bytes (at most all) of the caller's `src` over `dst`.
///
/// # Safety
/// `src` is valid for reads of `n` bytes (or of a whole `T`, if that is less),
/// and they are a valid prefix of a `T` (plain-data fields only).
pub(super) unsafe fn read_known<T>(src: *const T, n: usize, dst: &mut T) {
    let n = n.min(std::mem::size_of::<T>());
    // SAFETY: `src` has `n` readable bytes (this function's contract); `dst` is
    // a whole T, so `n` writable ones, and not the caller's buffer.
    unsafe { std::ptr::copy_nonoverlapping(src.cast::<u8>(), (dst as *mut T).cast::<u8>(), n) };
}

/// `s` as a C string for a pointer handed to C; a NUL inside becomes a space.
pub(super) fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}
