//! The admin API (`mailqctl`, Prometheus) from C: open the server on a queue,
//! serve it from the caller's event loop (`mailq_admin_fd` readable →
//! `mailq_admin_serve_ready`) or move it to a thread of its own, and free it.
//! Without the `admin` feature every call fails with
//! `MAILQ_ERR_INVALID_ARGUMENT`. Depends on `boundary`, `status`, `handle`
//! and `ptr`.

#[cfg(feature = "admin")]
use super::boundary::{boundary, with_queue_out};
use super::handle::{mailq, mailq_admin};
use super::status::mailq_status;
use std::ffi::c_char;

#[cfg(feature = "admin")]
mod imp {
    use super::super::handle::{admin_obj, new_admin, take_admin, AdminObj};
    use super::super::ptr::opt_text;
    use super::super::status::{fail, mailq_status::*, Fail};
    use crate::{Admin, AdminOptions, Queue};
    use parking_lot::Mutex;
    use std::ffi::c_char;
    use std::sync::Arc;

    /// # Safety
    /// Each pointer is NULL or a NUL-terminated string.
    pub(super) unsafe fn open(
        qq: &Queue,
        socket: *const c_char,
        tcp: *const c_char,
        token: *const c_char,
    ) -> Result<*mut super::mailq_admin, Fail> {
        // SAFETY: forwarded from this function's contract.
        let (socket, tcp, token) = unsafe {
            (
                opt_text(socket, "socket")?,
                opt_text(tcp, "tcp")?,
                opt_text(token, "token")?,
            )
        };
        let tcp = match tcp {
            Some(t) => match t.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    return fail(
                        MAILQ_ERR_INVALID_ARGUMENT,
                        format!("tcp {t:?} is not an address like 127.0.0.1:9465"),
                    )
                }
            },
            None => None,
        };
        let admin = Admin::open(
            qq,
            AdminOptions {
                socket: socket.map(Into::into),
                tcp,
                token: token.map(str::to_string),
                ..Default::default()
            },
        )?;
        Ok(new_admin(Arc::new(Mutex::new(AdminObj::Loop(Box::new(
            admin,
        ))))))
    }

    pub(super) fn fd(a: *const super::mailq_admin) -> Result<i32, Fail> {
        match &*admin_obj(a)?.lock() {
            AdminObj::Loop(s) => Ok(s.fd()),
            AdminObj::Thread(_) | AdminObj::Stopped => fail(
                MAILQ_ERR_INVALID_ARGUMENT,
                "the admin API is served by its own thread (or stopped): it has no fd for your loop",
            ),
        }
    }

    pub(super) fn serve_ready(a: *mut super::mailq_admin) -> Result<usize, Fail> {
        match &mut *admin_obj(a)?.lock() {
            AdminObj::Loop(s) => Ok(s.serve_ready()?),
            AdminObj::Thread(_) | AdminObj::Stopped => Ok(0),
        }
    }

    pub(super) fn spawn(a: *mut super::mailq_admin) -> Result<(), Fail> {
        let obj = admin_obj(a)?;
        let mut g = obj.lock();
        match std::mem::replace(&mut *g, AdminObj::Stopped) {
            AdminObj::Loop(server) => *g = AdminObj::Thread((*server).spawn()?),
            other => *g = other, // already on its thread (or stopped)
        }
        Ok(())
    }

    pub(super) fn free(a: *mut super::mailq_admin) -> Result<(), Fail> {
        let obj = take_admin(a)?;
        // Stops the thread (if any) and removes the socket file once the last
        // reference is gone (a concurrent call may still hold one briefly).
        drop(obj);
        Ok(())
    }
}

/// Serves the admin API of queue `q` (HTTP/1.1 + JSON, used by `mailqctl`) on
/// the Unix socket `socket` (NULL: `<queue dir>/admin.sock`), mode 0600, the
/// peer checked by its credentials (the queue owner or root). `tcp` (NULL: none)
/// adds a loopback TCP listener such as "127.0.0.1:9465" where `/metrics` is
/// open and the rest needs `Authorization: Bearer <token>` (`token` NULL: metrics
/// only). No thread is started: add `mailq_admin_fd` to your event loop and
/// call `mailq_admin_serve_ready` when it is readable, or call
/// `mailq_admin_spawn_thread`. Free with `mailq_admin_free`.
#[no_mangle]
pub unsafe extern "C" fn mailq_admin_open(
    q: *mut mailq,
    socket: *const c_char,
    tcp: *const c_char,
    token: *const c_char,
    out: *mut *mut mailq_admin,
) -> mailq_status {
    #[cfg(feature = "admin")]
    {
        // SAFETY: the strings are NULL or NUL-terminated and `out` writable
        // (header contract).
        unsafe { with_queue_out(q, out, |qq| imp::open(qq, socket, tcp, token)) }
    }
    #[cfg(not(feature = "admin"))]
    {
        let _ = (q, socket, tcp, token, out);
        unavailable()
    }
}

/// The descriptor to watch for readability (an epoll set of the listeners and
/// connections); -1 for an invalid handle or a server moved to its thread.
#[no_mangle]
pub extern "C" fn mailq_admin_fd(a: *const mailq_admin) -> i32 {
    #[cfg(feature = "admin")]
    {
        boundary::<i32>(|| imp::fd(a))
    }
    #[cfg(not(feature = "admin"))]
    {
        let _ = a;
        -1
    }
}

/// Accepts, reads, answers and writes whatever is ready, without blocking;
/// `*answered` (may be NULL) is the number of requests answered. Each request
/// runs on the calling thread (a search of a million messages takes about a
/// second; use `mailq_admin_spawn_thread` if your loop cannot wait that long).
#[no_mangle]
pub unsafe extern "C" fn mailq_admin_serve_ready(
    a: *mut mailq_admin,
    answered: *mut usize,
) -> mailq_status {
    #[cfg(feature = "admin")]
    {
        boundary(|| {
            let n = imp::serve_ready(a)?;
            // SAFETY: `answered` is NULL or writable (header contract).
            unsafe { super::ptr::write_opt(answered, n) }
        })
    }
    #[cfg(not(feature = "admin"))]
    {
        let _ = (a, answered);
        unavailable()
    }
}

/// Moves serving to a thread of its own (for programs without an event loop);
/// `mailq_admin_free` stops it. Calling it twice is harmless.
#[no_mangle]
pub extern "C" fn mailq_admin_spawn_thread(a: *mut mailq_admin) -> mailq_status {
    #[cfg(feature = "admin")]
    {
        boundary(|| imp::spawn(a))
    }
    #[cfg(not(feature = "admin"))]
    {
        let _ = a;
        unavailable()
    }
}

/// Stops serving (joining the thread, if any), closes the connections and
/// removes the socket file. The handle is invalid afterwards.
#[no_mangle]
pub extern "C" fn mailq_admin_free(a: *mut mailq_admin) -> mailq_status {
    #[cfg(feature = "admin")]
    {
        boundary(|| imp::free(a))
    }
    #[cfg(not(feature = "admin"))]
    {
        let _ = a;
        unavailable()
    }
}

#[cfg(not(feature = "admin"))]
fn unavailable() -> mailq_status {
    super::boundary::boundary(|| {
        super::status::fail(
            super::status::mailq_status::MAILQ_ERR_INVALID_ARGUMENT,
            "libmailq was built without the admin feature",
        )
    })
}
