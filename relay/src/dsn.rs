//! Delivery status notifications (RFC 3464): recipients that failed for good or
//! expired are reported to their sender in a `multipart/report`, sent with the
//! null sender so that it is never bounced in turn, and so are delay warnings
//! (`Action: delayed`, in their own report). A failed DSN (its sender was
//! empty) is dropped without another DSN.
//!
//! A bounce is acknowledged to the queue only after its DSN is durably
//! enqueued: a crash in between sends the DSN twice, never zero times.

use crate::headers::rfc5322_now;
use crate::Shared;
use mailq::{Bounce, MessageId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Expiries are found by the queue's timers, not by a delivery: look for
/// bounces at least this often even when no delivery reported one.
const SWEEP: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true.
pub(crate) async fn bounce_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.bounce_ready.notified() => {}
            _ = tokio::time::sleep(SWEEP) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        loop {
            let q = shared.q.queue().clone();
            let batch = match tokio::task::spawn_blocking(move || q.take_bounces(256)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::error!("taking bounces: {e}");
                    break;
                }
                Err(_) => return,
            };
            if batch.is_empty() {
                break;
            }
            // One report per message and kind: a delay warning is not a failure.
            let mut by_msg: BTreeMap<(MessageId, bool), Vec<Bounce>> = BTreeMap::new();
            for b in batch {
                by_msg.entry((b.id, b.delayed)).or_default().push(b);
            }
            for ((id, _), group) in by_msg {
                notify(&shared, id, &group).await;
            }
        }
    }
}

/// Sends one DSN for the failed (or delayed) recipients of one message, then
/// acknowledges them.
async fn notify(shared: &Shared, id: MessageId, group: &[Bounce]) {
    let sender = &group[0].sender;
    if sender.is_empty() {
        for b in group {
            tracing::info!(queue_id = %id, to = %b.recipient, delayed = b.delayed, "no DSN for the null sender: {}", b.reason);
        }
    } else {
        let text = report(&shared.cfg.hostname, id, group);
        let q = shared.q.queue();
        let queued = async {
            let mut m = q.dsn_message()?;
            m.add_recipient(sender, None)?;
            m.append(text.as_bytes())?;
            m.commit_async().await
        };
        match queued.await {
            Ok(dsn) => {
                tracing::info!(queue_id = %id, dsn_id = %dsn, to = %sender, recipients = group.len(), "sender non-delivery notification")
            }
            Err(e) => {
                // Not acknowledged: the queue offers the bounce again after a restart.
                tracing::error!(queue_id = %id, "cannot queue the DSN to {sender}: {e}");
                return;
            }
        }
    }
    let q = shared.q.queue().clone();
    let acks: Vec<(MessageId, u32, bool)> =
        group.iter().map(|b| (b.id, b.index, b.delayed)).collect();
    let acked = tokio::task::spawn_blocking(move || {
        acks.iter().try_for_each(|&(id, i, delayed)| {
            if delayed {
                q.ack_delay_warning(id, i).map(drop)
            } else {
                q.ack_bounce(id, i).map(drop)
            }
        })
    });
    if let Ok(Err(e)) = acked.await {
        tracing::error!(queue_id = %id, "acknowledging bounces: {e}");
    }
}

/// The DSN's text: a human part and a `message/delivery-status` part. A group
/// is all failures or all delay warnings.
pub fn report(host: &str, id: MessageId, group: &[Bounce]) -> String {
    let delayed = group[0].delayed;
    let now = rfc5322_now();
    let boundary = format!("{id}.{}/{host}", std::process::id());
    let sender = ascii(&group[0].sender);
    let mut human = String::new();
    let mut status = String::new();
    for b in group {
        let rcpt = ascii(&b.recipient);
        let reason = ascii(&b.reason);
        let (code, action_note, action) = if delayed {
            (
                delay_code(&b.reason),
                "not delivered yet, still trying",
                "delayed",
            )
        } else if b.expired {
            ("4.4.7".to_string(), "delivery time expired", "failed")
        } else {
            (status_code(&b.reason), "permanent failure", "failed")
        };
        human.push_str(&format!("<{rcpt}>: {action_note}: {reason}\r\n\r\n"));
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {code}\r\n"
        ));
        match reason.split_once(" said: ") {
            Some((hop, reply)) => {
                let hop = hop.rsplit_once(':').map_or(hop, |(h, _)| h);
                status.push_str(&format!(
                    "Remote-MTA: dns; {hop}\r\nDiagnostic-Code: smtp; {reply}\r\n"
                ));
            }
            None => status.push_str(&format!("Diagnostic-Code: X-mailq; {reason}\r\n")),
        }
    }
    let (subject, summary) = if delayed {
        (
            "Delayed Mail (still being retried)",
            "Your message (queue id {id}) has not been delivered yet to one or more\r\n\
             recipients. It is still being retried; you do not need to resend it.",
        )
    } else {
        (
            "Undelivered Mail Returned to Sender",
            "Your message (queue id {id}) could not be delivered to one or more\r\n\
             recipients. The reasons are below.",
        )
    };
    let summary = summary.replace("{id}", &id.to_string());
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {now}\r\n\
         Message-ID: <{id}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n\
         {summary}\r\n\
         \r\n\
         {human}\
         --{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Mailq-Queue-ID: {id}\r\n\
         {status}\
         \r\n\
         --{boundary}--\r\n"
    )
}

/// The enhanced status code in a reply (`5.1.1`), else `5.0.0`.
fn status_code(reason: &str) -> String {
    let found = reason.split_ascii_whitespace().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    // A permanent failure is reported as one even if the server said 4.x.x.
    match found {
        Some(c) => format!("5{}", &c[1..]),
        None => "5.0.0".to_string(),
    }
}

/// The enhanced status code of a delay: the reply's, as a temporary one
/// (`4.x.x`), else `4.0.0`.
fn delay_code(reason: &str) -> String {
    format!("4{}", &status_code(reason)[1..])
}

/// Printable ASCII only (header fields and the us-ascii text part).
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounce(reason: &str, expired: bool) -> Bounce {
        Bounce {
            id: MessageId(7),
            index: 0,
            sender: "alice@example.org".into(),
            recipient: "bob@example.com".into(),
            reason: reason.into(),
            expired,
            delayed: false,
        }
    }

    #[test]
    fn report_is_a_multipart_report_with_one_status_per_recipient() {
        let b1 = bounce(
            "127.0.0.1:25 said: 550 5.1.1 no such user\r\nx (in reply to RCPT TO)",
            false,
        );
        let mut b2 = bounce("connect to 127.0.0.1:25: refused", true);
        b2.recipient = "carol@example.com".into();
        let r = report("mx.example", MessageId(7), &[b1, b2]);
        assert!(r.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(r.contains("Content-Type: message/delivery-status"));
        assert!(r.contains(
            "Final-Recipient: rfc822; bob@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(r.contains(
            "Remote-MTA: dns; 127.0.0.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user??x"
        ));
        assert!(r.contains(
            "Final-Recipient: rfc822; carol@example.com\r\nAction: failed\r\nStatus: 4.4.7\r\n"
        ));
        assert!(r.ends_with("--\r\n"));
        assert!(!r.replace("\r\n", "").contains('\n'), "bare LF in a DSN");
    }

    #[test]
    fn a_delay_warning_is_its_own_report_with_action_delayed() {
        let mut b = bounce("127.0.0.1:25 said: 451 4.7.0 [TSS04] try later", false);
        b.delayed = true;
        let r = report("mx.example", MessageId(7), &[b]);
        assert!(r.contains("Subject: Delayed Mail (still being retried)\r\n"));
        assert!(
            r.contains(&format!(
                "queue id {}) has not been delivered yet",
                MessageId(7)
            )),
            "{r}"
        );
        assert!(r.contains(
            "Final-Recipient: rfc822; bob@example.com\r\nAction: delayed\r\nStatus: 4.7.0\r\n"
        ));
        assert!(!r.contains("Action: failed"));
        assert!(!r.replace("\r\n", "").contains('\n'), "bare LF in a DSN");
    }

    #[test]
    fn status_codes_are_permanent() {
        assert_eq!(status_code("x said: 550 5.7.1 denied"), "5.7.1");
        assert_eq!(status_code("x said: 450 4.2.0 full"), "5.2.0");
        assert_eq!(status_code("no code 1.2"), "5.0.0");
    }
}
