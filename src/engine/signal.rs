//! Event-loop integration: one pollable descriptor that becomes readable when
//! work is ready or when a timer the queue armed expires.
//! Depends on nothing else in the crate.
//!
//! The descriptor handed out is an epoll instance holding an eventfd (raised
//! when work becomes ready) and a timerfd (armed for deadlines such as the
//! outcome sync interval). It is readable, level-triggered, while either member
//! is; [`Signal::clear`] drains both.

use parking_lot::Mutex;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A level-triggered "work may be ready" signal: an epoll fd over an eventfd
/// and a one-shot CLOCK_MONOTONIC timerfd.
pub struct Signal {
    /// The descriptor callers poll; holds `event` and `timer`.
    epoll: OwnedFd,
    /// Raised by [`Signal::raise`].
    event: OwnedFd,
    /// Armed by [`Signal::arm`].
    timer: OwnedFd,
    /// True from a raise that wrote to `event` until the next [`Signal::clear`].
    raised: AtomicBool,
    /// Absolute CLOCK_MONOTONIC expiry (ns) the timer is armed for, 0 when none is
    /// known to be pending. Only lowered (or set from 0), under `arming` and after
    /// the timerfd was programmed, so the timer never expires later than this
    /// says; [`Signal::clear`] resets it to 0 once it has passed.
    deadline: AtomicU64,
    /// Serialises `timerfd_settime` with the store of `deadline`.
    arming: Mutex<()>,
}

/// Takes ownership of a descriptor just returned by a syscall (negative: error).
///
/// # Safety
/// `fd`, when non-negative, must be a fresh descriptor that nothing else owns.
unsafe fn owned(fd: libc::c_int) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: per this function's contract, `fd` is fresh and exclusively ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads (and discards) the 8-byte counter of an eventfd or timerfd. Both are
/// non-blocking: EAGAIN when there is nothing to read is the expected case.
fn drain(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a valid u64 from a descriptor we own.
    // Errors (EAGAIN when empty) are fine: the point is only to reset the counter.
    unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut v as *mut u64).cast(),
            std::mem::size_of::<u64>(),
        );
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock the timerfd runs on).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own. CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail (and a failure would leave `ts` at zero: "now" is
    // then early, which only makes a deadline earlier, never missed).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(ts.tv_nsec as u64)
}

impl Signal {
    /// Creates the eventfd, the timerfd and the epoll fd holding them (all
    /// non-blocking where it applies, and close-on-exec).
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; its result is a fresh descriptor or -1.
        let event = unsafe { owned(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)) }?;
        // SAFETY: timerfd_create takes no pointers; its result is fresh or -1.
        let timer = unsafe {
            owned(libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            ))
        }?;
        // SAFETY: epoll_create1 takes no pointers; its result is fresh or -1.
        let epoll = unsafe { owned(libc::epoll_create1(libc::EPOLL_CLOEXEC)) }?;
        for member in [&event, &timer] {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: member.as_raw_fd() as u64,
            };
            // SAFETY: both descriptors are open and ours; `ev` is a valid
            // epoll_event for the duration of the call (the kernel copies it).
            let r = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    member.as_raw_fd(),
                    &mut ev,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Signal {
            epoll,
            event,
            timer,
            raised: AtomicBool::new(false),
            deadline: AtomicU64::new(0),
            arming: Mutex::new(()),
        })
    }

    /// Makes the fd readable (once until [`Signal::clear`]; later raises until
    /// then are a single atomic swap).
    pub fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. A failure
            // (counter overflow, impossible with one pending write) is ignored.
            unsafe {
                libc::write(
                    self.event.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }

    /// Makes the fd readable `after` from now at the latest (one-shot).
    ///
    /// When the timer is already armed for an expiry no later than that, this
    /// is an atomic load and a clock read (vDSO), no syscall. An earlier
    /// deadline replaces a later one. The expiry stays readable until
    /// [`Signal::clear`], which consumes it: after clearing, re-arm for the
    /// deadlines still pending. Should the timer ever fail to arm, the fd is
    /// raised now instead, so the deadline is never missed.
    pub fn arm(&self, after: Duration) {
        let after = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        // 0 means "not armed"; CLOCK_MONOTONIC is never 0 after boot anyway.
        let deadline = monotonic_ns().saturating_add(after).max(1);
        let armed_in_time = || {
            let d = self.deadline.load(Ordering::Acquire);
            d != 0 && d <= deadline
        };
        if armed_in_time() {
            return;
        }
        let _g = self.arming.lock();
        if armed_in_time() {
            return;
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(deadline / NANOS_PER_SEC)
                    .unwrap_or(libc::time_t::MAX),
                // < 10^9: fits every c_long.
                tv_nsec: (deadline % NANOS_PER_SEC) as libc::c_long,
            },
        };
        // SAFETY: our own timerfd; `spec` is a valid itimerspec for the call and
        // the old value is not requested (NULL is allowed).
        let r = unsafe {
            libc::timerfd_settime(
                self.timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r == 0 {
            self.deadline.store(deadline, Ordering::Release);
        } else {
            // Only EINVAL/EBADF are possible, neither for valid arguments; waking
            // the loop early is always safe, sleeping through a deadline is not.
            self.raise();
        }
    }

    /// Drains the fd so it is no longer readable (until the next raise or timer
    /// expiry: a timer armed for a later time stays armed). Wake-ups racing
    /// with this may be consumed by it; callers look for ready work and due
    /// deadlines after clearing.
    pub fn clear(&self) {
        // Drain first, then lower the flag. A raise racing with this either
        // writes after the drain (the fd stays readable) or sees the flag still
        // up and skips its write; its work was made ready before it, so the
        // caller's "ack_poll, then take sessions until none" loop finds it.
        // The other order (flag, then drain) could drain a write made after the
        // flag went down, leaving the flag up and every later raise skipped.
        drain(&self.event);
        self.raised.store(false, Ordering::Release);
        // Drain the timer, then forget its deadline if it has passed. In this
        // order an expiry is never consumed while the deadline stays recorded
        // (which would make every later `arm` for a later time a no-op): if the
        // timer fires between the two, the deadline is forgotten but the expiry
        // stays readable — one spare wake-up, never a missed one. Callers
        // re-check their deadlines after `clear` and re-arm for those pending.
        drain(&self.timer);
        let d = self.deadline.load(Ordering::Acquire);
        if d != 0 && d <= monotonic_ns() {
            // Fails only when an arm stored a new deadline meanwhile: keep that one.
            let _ = self
                .deadline
                .compare_exchange(d, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The raw descriptor (an epoll fd), for epoll/poll/select. Readable when
    /// raised or when an armed timer expired.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
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

    /// True while a deadline is remembered.
    fn armed(s: &Signal) -> bool {
        s.deadline.load(Ordering::Acquire) != 0
    }

    /// Generous upper bound for a timer to be seen expired on a loaded machine.
    const PATIENCE_MS: i32 = 5_000;

    #[test]
    fn armed_timer_makes_the_fd_readable_after_the_delay_and_clear_resets_it() {
        let s = Signal::new().expect("signal");
        let t0 = std::time::Instant::now();
        s.arm(Duration::from_millis(20));
        assert!(!readable(s.fd(), 0), "readable before the timer expired");
        assert!(
            readable(s.fd(), PATIENCE_MS),
            "timer never made the fd readable"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(20),
            "readable after {:?}, before the 20 ms deadline",
            t0.elapsed()
        );
        // Level-triggered: stays readable until cleared.
        assert!(readable(s.fd(), 0));
        s.clear();
        assert!(!readable(s.fd(), 0), "clear left the fd readable");
        assert!(!armed(&s), "expired deadline kept");
        // The expired deadline is forgotten: a new arm programs the timer again.
        s.arm(Duration::from_millis(5));
        assert!(readable(s.fd(), PATIENCE_MS), "re-armed timer never fired");
        s.clear();
        assert!(!readable(s.fd(), 0));
    }

    #[test]
    fn arm_keeps_the_earliest_deadline() {
        let s = Signal::new().expect("signal");
        let t0 = std::time::Instant::now();
        s.arm(Duration::from_millis(20));
        let first = s.deadline.load(Ordering::Acquire);
        assert_ne!(first, 0);
        // A later deadline neither postpones the timer nor touches it.
        s.arm(Duration::from_secs(60));
        s.arm(Duration::from_millis(30));
        assert_eq!(s.deadline.load(Ordering::Acquire), first);
        assert!(readable(s.fd(), PATIENCE_MS), "the 20 ms expiry was lost");
        assert!(t0.elapsed() < Duration::from_secs(60));
        s.clear();

        // An earlier deadline replaces a later one.
        let t0 = std::time::Instant::now();
        s.arm(Duration::from_secs(60));
        let late = s.deadline.load(Ordering::Acquire);
        s.arm(Duration::from_millis(10));
        assert!(s.deadline.load(Ordering::Acquire) < late);
        assert!(
            readable(s.fd(), PATIENCE_MS),
            "the earlier deadline did not fire"
        );
        assert!(t0.elapsed() < Duration::from_secs(60));
        s.clear();
        assert!(!readable(s.fd(), 0));
    }

    #[test]
    fn clear_keeps_a_timer_that_has_not_expired() {
        let s = Signal::new().expect("signal");
        s.arm(Duration::from_millis(30));
        s.raise();
        assert!(readable(s.fd(), 0));
        s.clear();
        assert!(!readable(s.fd(), 0), "clear did not drain the raise");
        assert!(armed(&s), "pending deadline forgotten");
        assert!(readable(s.fd(), PATIENCE_MS), "pending timer lost by clear");
    }

    #[test]
    fn clear_drains_a_raise_and_an_expired_timer_together() {
        let s = Signal::new().expect("signal");
        s.arm(Duration::ZERO);
        s.raise();
        assert!(readable(s.fd(), PATIENCE_MS));
        // Let the zero timer expire for sure before clearing.
        std::thread::sleep(Duration::from_millis(5));
        s.clear();
        assert!(
            !readable(s.fd(), 0),
            "one of the two members stayed readable"
        );
        // Both work again afterwards.
        s.raise();
        assert!(readable(s.fd(), 0));
        s.clear();
        s.arm(Duration::ZERO);
        assert!(readable(s.fd(), PATIENCE_MS));
    }
}
