//! Event-loop integration: an eventfd that becomes readable when work is ready.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// A level-triggered "work may be ready" signal backed by eventfd(2).
pub struct Signal {
    fd: OwnedFd,
    raised: AtomicBool,
}

impl Signal {
    /// Creates the eventfd (non-blocking, close-on-exec).
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we exclusively own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signal {
            fd,
            raised: AtomicBool::new(false),
        })
    }

    /// Makes the fd readable (once until [`Signal::clear`]).
    pub fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. A failure
            // (counter overflow, impossible with one pending write) is ignored.
            unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }

    /// Drains the fd so it is no longer readable.
    pub fn clear(&self) {
        self.raised.store(false, Ordering::Release);
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64; EAGAIN when empty is fine.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    /// Makes the fd readable after `after` (placeholder until the timerfd lands).
    pub fn arm(&self, _after: std::time::Duration) {}

    /// The raw descriptor, for epoll/poll/select.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
