//! The public delivery handles. A [`Session`] is one concurrency slot of one
//! destination (one SMTP connection); it is released on every path:
//! [`Session::finish`], a site failure, `Drop` (including unwinding from a
//! panic), or — for a worker that vanished — the lease deadline, after which
//! the slot and its recipients are reclaimed by the next scheduler call. A
//! [`Delivery`] is one message with up to N recipients of that destination;
//! dropping it without an outcome returns its recipients to the ready queue.
//! Both are thin wrappers over the engine's lease and delivery.
//! Depends on `engine`, `error`, `types`.

pub(crate) use crate::engine::DeliveryCore;
use crate::engine::Lease;
use crate::error::{Error, Result};
use crate::types::*;

/// One open connection slot of a destination.
#[derive(Debug)]
pub struct Session {
    lease: Lease,
}

/// One message and up to N of its recipients for the session's destination.
/// Its envelope, body and metadata are read through [`DeliveryData`].
pub struct Delivery<'s> {
    s: &'s mut Session,
    c: DeliveryCore,
}

impl std::fmt::Debug for Delivery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id())
            .field("recipients", &self.recipients())
            .finish()
    }
}

impl std::ops::Deref for Delivery<'_> {
    type Target = DeliveryData;
    fn deref(&self) -> &DeliveryData {
        &self.c
    }
}

impl Session {
    pub(crate) fn new(lease: Lease) -> Session {
        Session { lease }
    }

    /// The destination's routing key.
    pub fn routing_key(&self) -> &str {
        self.lease.key()
    }

    /// The egress source this session goes out from (an IP or pool member
    /// the MTA named with [`crate::Queue::set_sources`]): bind the
    /// connection to it. `None` when the destination has no sources.
    pub fn source(&self) -> Option<&str> {
        self.lease.source().map(|s| &*s.name)
    }

    /// The session's fencing token: unique within the queue and larger than
    /// every token handed out before, also across reopening (as long as the
    /// clock does not step back across the restart). A session whose lease
    /// was reclaimed is refused ([`crate::Error::LeaseExpired`]) by this
    /// queue; give the token to whatever else the delivery writes to (a
    /// remote worker, a shared store, a fleet-wide lease) so that it can
    /// refuse a late writer holding an older token as well.
    pub fn fence(&self) -> u64 {
        self.lease.fence()
    }

    /// True when this session is the probe of a destination marked dead.
    pub fn is_probe(&self) -> bool {
        self.lease.is_probe()
    }

    /// Takes the next delivery: one message and up to `batch_recipients` of its
    /// recipients for this destination. `Ok(None)` when the destination has no
    /// more ready work or the session reached its delivery cap; then end the session.
    pub fn next_delivery(&mut self) -> Result<Option<Delivery<'_>>> {
        Ok(self.next_core()?.map(|c| Delivery { s: self, c }))
    }

    /// The next delivery without the borrow of the session (the C API owns
    /// sessions and deliveries through handles).
    pub(crate) fn next_core(&mut self) -> Result<Option<DeliveryCore>> {
        self.lease.next_delivery()
    }

    /// True once the session ended (site failure, lease expiry, finish).
    pub fn is_closed(&self) -> bool {
        self.lease.is_closed()
    }

    /// Reports that the destination failed as a whole (connection refused, bad
    /// greeting, TLS failure): the window shrinks, and a run of these marks the
    /// destination dead until a probe succeeds. Ends the session.
    pub fn site_failure(mut self, reason: &str) -> Result<()> {
        self.lease.close(Some(reason))
    }

    /// Ends the session, releasing its slot.
    pub fn finish(mut self) -> Result<()> {
        self.lease.close(None)
    }

    /// Ends the session (the C API's explicit close).
    pub(crate) fn close(&mut self, site: Option<&str>) -> Result<()> {
        self.lease.close(site)
    }
}

impl Delivery<'_> {
    /// Records one outcome per recipient (same order as [`DeliveryData::recipients`]).
    /// Outcomes are applied at once and made durable with the next group commit
    /// (at most `outcome_sync_interval` later, or call [`crate::Queue::sync`]).
    pub fn complete(mut self, outcomes: &[Outcome]) -> Result<()> {
        let r = self.c.complete(outcomes);
        if matches!(r, Err(Error::LeaseExpired)) {
            self.s.lease.mark_closed();
        }
        r
    }

    /// The connection failed during this delivery: its recipients are deferred with
    /// `reason`, the destination gets negative feedback, and the session ends.
    pub fn site_failure(mut self, reason: &str) -> Result<()> {
        let r = self.c.site_failure_outcomes(reason);
        let c = self.s.lease.close(Some(reason));
        r.and(c)
    }
}
