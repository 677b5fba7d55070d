//! The queue from async code on tokio (feature `tokio`): enqueue without
//! blocking the runtime's worker threads, and wait for deliverable work without
//! polling — the poll fd through the runtime's reactor (`AsyncFd`) plus a timer
//! for the next scheduled event. Depends on `Queue`, `MessageBuilder`,
//! `Session` and `error`.
//!
//! mailq starts no thread of its own here either: what may block on the disk —
//! an enqueue's append and group-committed fdatasync, outcome syncs, automatic
//! maintenance — runs on tokio's blocking pool, which belongs to the
//! application; worker threads only wait. Concurrent enqueues share
//! fsyncs exactly as threads do, because that is what they are.

use crate::error::{Error, Result};
use crate::{MessageBuilder, MessageId, Queue, Session};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;

/// The queue's pollable descriptor, as the reactor sees it (the queue owns it;
/// the registration is removed before the queue can close it).
struct PollFd(RawFd);

impl AsRawFd for PollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A [`Queue`] for async code. Cheap to clone; clones share one registration
/// of the poll fd with the runtime, so any number of tasks may wait at once.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mailq::Result<()> {
/// use mailq::{AsyncQueue, Options, Outcome, Queue};
/// let dir = std::env::temp_dir().join(format!("mailq-doc-aio-{}", std::process::id()));
/// let q = AsyncQueue::new(Queue::open(&dir, Options::default())?)?;
///
/// // SMTP side: build the message as it arrives, answer 250 after this returns.
/// let mut m = q.queue().message("alice@example.org")?;
/// m.add_recipient("bob@example.com", None)?;
/// m.append(b"Subject: hi\r\n\r\nhello\r\n")?;
/// let id = m.commit_async().await?;
///
/// // Delivery side: wait until a destination has work and a free slot.
/// let mut session = q.next_session().await?;
/// let delivery = session.next_delivery()?.expect("the message is ready");
/// assert_eq!(delivery.id(), id);
/// delivery.complete(&[Outcome::Delivered])?;
/// session.finish()?;
/// # q.queue().clone().close()?;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AsyncQueue {
    // Declared first: the registration goes before the queue (and its fd).
    fd: Arc<AsyncFd<PollFd>>,
    q: Queue,
}

impl std::fmt::Debug for AsyncQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQueue")
            .field("queue", &self.q)
            .finish()
    }
}

impl AsyncQueue {
    /// Registers the queue's poll fd with the current tokio runtime, which must
    /// have its I/O driver enabled (`enable_io` or `enable_all`, as
    /// `#[tokio::main]` does). Outside any runtime it fails.
    pub fn new(q: Queue) -> Result<AsyncQueue> {
        let io = |e| Error::Io {
            op: "register the poll fd with the tokio reactor",
            path: q.dir().to_path_buf(),
            source: e,
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io(std::io::Error::other("not inside a tokio runtime")));
        }
        // SAFETY: the fd is the queue's own epoll fd, open (and the same) for as
        // long as any handle of the queue lives; this AsyncFd is dropped before
        // the `Queue` stored next to it (field order, and every clone of the Arc
        // sits beside its own `Queue`), so it never outlives the descriptor.
        let fd =
            unsafe { AsyncFd::register(PollFd(q.poll_fd())) }.map_err(|e| io(e.into_parts().1))?;
        Ok(AsyncQueue {
            fd: Arc::new(fd),
            q,
        })
    }

    /// The queue, for everything that does not wait (operator actions, stats,
    /// building messages).
    pub fn queue(&self) -> &Queue {
        &self.q
    }

    /// Waits until a destination has ready work and a free concurrency slot and
    /// opens a session for it (round robin, as [`Queue::next_session`]).
    ///
    /// Cancel-safe: dropping the future opens nothing, or — if it completed —
    /// hands out a session whose drop releases its slot. Meanwhile it fires the
    /// queue's timers (retries, probes, lease reclaims) and syncs buffered
    /// outcomes when they are due, as an event loop calling
    /// [`Queue::ack_poll`] and [`Queue::tick`] would — on the blocking pool,
    /// since both may fsync (and `tick` may write a checkpoint).
    pub async fn next_session(&self) -> Result<Session> {
        loop {
            if let Some(s) = self.q.next_session()? {
                return Ok(s);
            }
            self.wait().await?;
            // Draining the fd syncs due outcomes and `tick` may run maintenance:
            // both can fsync, so neither runs on a worker thread.
            let q = self.q.clone();
            blocking(self.q.dir(), move || {
                q.ack_poll();
                q.tick();
                Ok(())
            })
            .await?;
        }
    }

    /// Waits for the poll fd or the next scheduled event and clears the
    /// reactor's readiness (the caller then drains the fd with `ack_poll`).
    async fn wait(&self) -> Result<()> {
        let io = |e| Error::Io {
            op: "wait for the poll fd",
            path: self.q.dir().to_path_buf(),
            source: e,
        };
        let ready = match self.q.next_timeout() {
            Some(d) => tokio::time::timeout(d, self.fd.readable()).await.ok(),
            None => Some(self.fd.readable().await),
        };
        if let Some(r) = ready {
            // Clear the reactor's flag before the fd is drained: a raise after the
            // drain is a new edge the reactor reports, and one between the two
            // finds its work at the next `next_session` call.
            r.map_err(io)?.clear_ready();
        }
        Ok(())
    }
}

impl MessageBuilder {
    /// [`MessageBuilder::commit`] from async code: the append and its
    /// group-committed fdatasync run on tokio's blocking pool, so the runtime's
    /// worker threads never block. Concurrent commits share fsyncs.
    ///
    /// If the future is dropped, the commit still completes (the message may
    /// be durable without its id having been seen: the SMTP client, which got
    /// no `250`, sends it again — a duplicate, never a loss).
    pub async fn commit_async(self) -> Result<MessageId> {
        let dir = self.queue_dir();
        blocking(&dir, move || self.commit()).await
    }
}

/// Runs `f` on tokio's blocking pool. A panic in `f` resumes in the caller; a
/// runtime shutting down is an error naming the queue directory.
async fn blocking<T: Send + 'static>(
    dir: &std::path::Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Io {
            op: "run on the blocking pool (the runtime is shutting down)",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        }),
    }
}
