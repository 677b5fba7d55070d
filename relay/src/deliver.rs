//! The delivery side: wait for a destination with ready mail and a free slot,
//! open one connection per mailq session, and report each recipient's outcome.
//!
//! Calls into the queue that may touch the disk (taking a delivery reads its
//! body; recording outcomes may run the group commit or maintenance) run under
//! `block_in_place`, so the runtime's other tasks move to another worker
//! meanwhile. A delivery task that is cancelled (shutdown, abort) drops its
//! delivery and session: the recipients return to the ready queue and the slot
//! is released by their `Drop`.

use crate::client::Client;
use crate::Shared;
use mailq::{Outcome, Session};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{watch, Semaphore};
use tokio::task::{block_in_place, JoinSet};

/// Runs until `stop` turns true; then in-flight deliveries are cancelled
/// (their recipients are retried on the next start).
pub(crate) async fn dispatch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(shared.cfg.max_outbound));
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        let session = tokio::select! {
            s = shared.q.next_session() => s,
            _ = stop.wait_for(|s| *s) => break,
        };
        match session {
            Ok(session) => {
                let shared = shared.clone();
                tasks.spawn(async move {
                    run(&shared, session).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::error!("the queue cannot hand out work: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
}

/// Closes connections left idle too long, until `stop` turns true.
pub(crate) async fn reap_idle(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::pool::IDLE / 2) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        shared.pool.reap().await;
    }
}

/// One session: one connection to the destination's next hop.
async fn run(shared: &Shared, mut session: Session) {
    let key = session.routing_key().to_string();
    let cfg = &shared.cfg;
    let Some(hop) = cfg.routes.lookup(&key).map(str::to_string) else {
        // Mail for a destination without a route (e.g. a DSN to a sender's
        // domain) waits with the reason until a restart with the route, or
        // until its lifetime ends and the sender is told.
        let why = format!("no route for {key} (add it to --routes or set --relay-to)");
        tracing::warn!(destination = %key, "{why}");
        while let Ok(Some(d)) = block_in_place(|| session.next_delivery()) {
            let n = d.recipients().len();
            let _ = block_in_place(|| d.complete(&vec![Outcome::temp(why.clone()); n]));
        }
        let _ = block_in_place(|| session.finish());
        return;
    };
    let t = cfg.client_timeouts();
    // The session's egress source, if any: its connections come from that
    // address and are cached apart from other sources' (a source without an
    // address, e.g. one an operator added, uses the system's choice).
    let from = session.source().and_then(|s| cfg.source_addr(s));
    let pool_key = match session.source() {
        Some(src) => format!("{src}>{hop}"),
        None => hop.clone(),
    };
    // The first delivery before the connection: a session whose work another
    // session took meanwhile opens no connection, and a connection failure is
    // recorded on recipients (their reason shows in `inspect`).
    let mut client: Option<Client> = None;
    loop {
        let delivery = match block_in_place(|| session.next_delivery()) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                // The queue returned the recipients (an unreadable message is
                // parked as corrupt); a site failure makes the destination back
                // off instead of being handed out again at once.
                tracing::warn!(destination = %key, "taking the next delivery: {e}");
                if let Some(c) = client {
                    c.quit().await;
                }
                let _ = block_in_place(|| session.site_failure(&format!("local error: {e}")));
                return;
            }
        };
        let started = Instant::now();
        let id = delivery.id();
        let sent = async {
            // A connection another session left idle, if any; one the server
            // closed meanwhile (idle timeout) is replaced once, not held
            // against the destination.
            if client.is_none() {
                client = shared.pool.take(&pool_key);
            }
            if let Some(c) = &mut client {
                if c.rset().await.is_err() {
                    client = None;
                }
            }
            let c = match &mut client {
                Some(c) => c,
                None => client.insert(Client::connect(&hop, from, &cfg.hostname, t).await?),
            };
            c.deliver(delivery.sender(), delivery.recipients(), &delivery.body())
                .await
        };
        // One deadline for the whole attempt, well inside the session's lease:
        // a reply trickled a byte at a time cannot outlive the lease.
        let sent = async {
            match tokio::time::timeout(cfg.delivery_deadline(), sent).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "{hop}: delivery not finished after {:?}",
                    cfg.delivery_deadline()
                )),
            }
        };
        match sent.await {
            Ok(outcomes) => {
                let delay = started.elapsed().as_secs_f64();
                for (rcpt, o) in delivery.recipients().iter().zip(&outcomes) {
                    let (status, reply) = match o {
                        Outcome::Delivered => ("sent", "delivered"),
                        Outcome::TempFail { reason, .. } => ("deferred", reason.as_str()),
                        Outcome::PermFail { reason } => ("bounced", reason.as_str()),
                    };
                    tracing::info!(queue_id = %id, to = %rcpt, relay = %hop, delay, status, "{reply}");
                }
                let bounced = outcomes
                    .iter()
                    .any(|o| matches!(o, Outcome::PermFail { .. }));
                if let Err(e) = block_in_place(|| delivery.complete(&outcomes)) {
                    tracing::warn!(queue_id = %id, "recording outcomes: {e}");
                    break;
                }
                if bounced {
                    shared.bounce_ready.notify_one();
                }
            }
            Err(why) => {
                for rcpt in delivery.recipients() {
                    tracing::info!(queue_id = %id, to = %rcpt, relay = %hop, status = "deferred", "{why}");
                }
                if let Err(e) = block_in_place(|| delivery.site_failure(&why)) {
                    tracing::warn!(queue_id = %id, "recording the site failure: {e}");
                }
                return;
            }
        }
    }
    if let Some(c) = client {
        shared.pool.put(&pool_key, c).await;
    }
    if let Err(e) = block_in_place(|| session.finish()) {
        tracing::warn!(destination = %key, "ending the session: {e}");
    }
}
