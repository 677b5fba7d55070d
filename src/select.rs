//! What an operator selects and does: a [`Selector`] of recipients (by
//! message, sender, recipient, domain, routing key, state, age, attempts,
//! last error), what it matched ([`Selected`]), the bulk [`Op`]s, and the
//! answer to "why is this recipient not being delivered now"
//! ([`Explanation`]). Plain data and the glob rule; the engine applies them.
//! Depends on `types`, `stats`.

use crate::stats::BucketStats;
use crate::types::{MessageId, RcptState};
use std::time::Duration;

/// Which recipients an operator means: every given criterion must hold (an
/// empty selector selects every recipient that is not final).
///
/// Routing key, state, age, attempts and last error are answered from memory
/// (the last error as memory keeps it: past the reason cache, normalised);
/// `sender`, `recipient` and `domain` need each candidate message's envelope,
/// read from the log without holding the queue's locks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Only these messages (empty: any).
    pub ids: Vec<MessageId>,
    /// Envelope sender, a glob (`*`, `?`; ASCII case-insensitive). `<>`
    /// selects the null sender.
    pub sender: Option<String>,
    /// Recipient address, a glob.
    pub recipient: Option<String>,
    /// The recipient's domain, exactly (case-insensitive).
    pub domain: Option<String>,
    /// The recipient's current routing key, exactly (case-insensitive).
    pub route: Option<String>,
    /// Only these states (empty: every state that is not final).
    pub states: Vec<RcptState>,
    /// Accepted longer ago than this.
    pub older_than: Option<Duration>,
    /// Accepted more recently than this.
    pub younger_than: Option<Duration>,
    /// At least this many delivery attempts.
    pub min_attempts: Option<u16>,
    /// The last error contains this text (ASCII case-insensitive).
    pub error: Option<String>,
    /// The last error matches this regular expression (`regex` crate syntax,
    /// case-insensitive, at most 1 MiB compiled). Needs the `admin` feature;
    /// without it a selector using it is refused.
    pub error_regex: Option<String>,
}

impl Selector {
    /// True when the envelope must be read to decide.
    pub(crate) fn needs_envelope(&self) -> bool {
        self.sender.is_some() || self.recipient.is_some() || self.domain.is_some()
    }

    /// The sender criterion (`<>` is the null sender).
    pub(crate) fn sender_matches(&self, sender: &str) -> bool {
        self.sender.as_deref().is_none_or(|g| {
            if g == "<>" {
                sender.is_empty()
            } else {
                glob(g, sender)
            }
        })
    }

    /// The envelope criteria.
    pub(crate) fn envelope_matches(&self, sender: &str, address: &str) -> bool {
        let sender_ok = self.sender_matches(sender);
        let rcpt_ok = self.recipient.as_deref().is_none_or(|g| glob(g, address));
        let domain_ok = self.domain.as_deref().is_none_or(|d| {
            let dom = address.rsplit_once('@').map_or("", |(_, d)| d);
            dom.trim_end_matches('.')
                .eq_ignore_ascii_case(d.trim_end_matches('.'))
        });
        sender_ok && rcpt_ok && domain_ok
    }

    /// The last-error criterion.
    pub(crate) fn error_matches(&self, last_error: &str) -> bool {
        self.error.as_deref().is_none_or(|e| {
            last_error
                .to_ascii_lowercase()
                .contains(&e.to_ascii_lowercase())
        })
    }
}

/// One selected recipient, as it was when the selection ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Message.
    pub id: MessageId,
    /// Recipient index within the message.
    pub index: u32,
    /// Envelope sender (empty for the null sender); empty when the selector
    /// did not need the envelope.
    pub sender: String,
    /// Recipient address; empty when the selector did not need the envelope.
    pub address: String,
    /// Current routing key.
    pub route: String,
    /// State.
    pub state: RcptState,
    /// Delivery attempts so far.
    pub attempts: u16,
    /// Accepted at (unix seconds).
    pub received: u64,
    /// Last error (possibly in normalised form, see the design notes).
    pub last_error: String,
}

/// A bulk action on selected recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Keep from delivery until released (in flight: when the attempt ends).
    Hold,
    /// Make held recipients ready now.
    Release,
    /// Drop without a DSN.
    Delete,
    /// Retry deferred recipients now.
    Flush,
    /// Fail for good with this reason: a DSN is due (unlike `Delete`).
    /// Recipients in flight are left alone (bounce them after their attempt).
    Bounce(String),
    /// Move to this routing key (in flight: when the attempt ends).
    Reroute(String),
}

/// Why a recipient is not being delivered now, and the facts behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Message.
    pub id: MessageId,
    /// Recipient index.
    pub index: u32,
    /// Address.
    pub address: String,
    /// State.
    pub state: RcptState,
    /// Attempts so far.
    pub attempts: u16,
    /// Next attempt (unix seconds; 0 when not scheduled).
    pub next_attempt: u64,
    /// Last error.
    pub last_error: String,
    /// The destination it waits for, when it has one.
    pub destination: Option<BucketStats>,
    /// One sentence: the reason it is not being delivered at this moment.
    pub why: String,
}

/// `*` any run, `?` one character; ASCII case-insensitive.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matcher with one backtrack point (the last `*`).
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*@example.com", "Bob@EXAMPLE.com"));
        assert!(glob("b?b@*", "bob@x"));
        assert!(!glob("b?b@*", "bb@x"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "acbd"));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(glob(
            "newsletter-*@*.example.org",
            "newsletter-42@mail.example.org"
        ));
    }

    #[test]
    fn envelope_criteria() {
        let s = Selector {
            sender: Some("<>".into()),
            domain: Some("Gmail.com".into()),
            ..Selector::default()
        };
        assert!(s.envelope_matches("", "x@gmail.com."));
        assert!(!s.envelope_matches("a@b", "x@gmail.com"));
        assert!(!s.envelope_matches("", "x@googlemail.com"));
        let e = Selector {
            error: Some("tss04".into()),
            ..Selector::default()
        };
        assert!(e.error_matches("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"));
        assert!(!e.error_matches("550 5.1.1 no such user"));
    }
}
