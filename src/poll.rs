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

    /// Drains the fd so it is no longer readable. A raise racing with this may
    /// be consumed by it; callers look for ready work after clearing.
    pub fn clear(&self) {
        // Drain first, then lower the flag. A raise racing with this either
        // writes after the drain (the fd stays readable) or sees the flag still
        // up and skips its write; its work was made ready before it, so the
        // caller's "ack_poll, then take sessions until none" loop finds it.
        // The other order (flag, then drain) could drain a write made after the
        // flag went down, leaving the flag up and every later raise skipped.
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64; EAGAIN when empty is fine.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        self.raised.store(false, Ordering::Release);
    }

    /// The raw descriptor, for epoll/poll/select.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::AtomicUsize;

    /// `poll(2)` on `fd` with `timeout_ms`: true when it is readable.
    fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        n == 1 && p.revents & libc::POLLIN != 0
    }

    /// A raise racing with clear must never leave the signal stuck: once the
    /// racing threads stop, one more raise makes the fd readable. With the old
    /// order in `clear` (flag down, then drain) a raise landing between the two
    /// was drained with the flag left up, and this failed within ~100 rounds.
    #[test]
    fn raise_racing_clear_never_swallows_later_raises() {
        const ROUNDS: usize = 1000;
        const RAISERS: usize = 1;
        let s = Signal::new().expect("signal");
        for round in 0..ROUNDS {
            let stop = AtomicBool::new(false);
            let running = AtomicUsize::new(0);
            std::thread::scope(|sc| {
                for _ in 0..RAISERS {
                    sc.spawn(|| {
                        s.raise();
                        running.fetch_add(1, Ordering::AcqRel);
                        while !stop.load(Ordering::Acquire) {
                            s.raise();
                        }
                    });
                }
                while running.load(Ordering::Acquire) < RAISERS {
                    std::thread::yield_now();
                }
                // The raisers are spinning: this clear races with their raises.
                s.clear();
                stop.store(true, Ordering::Release);
            });
            s.raise();
            assert!(
                readable(s.fd(), 0),
                "round {round}: a raise after the racing threads stopped left the fd unreadable"
            );
            s.clear();
            assert!(
                !readable(s.fd(), 0),
                "round {round}: clear left the fd readable"
            );
        }
    }
}
