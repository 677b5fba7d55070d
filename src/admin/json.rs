//! The admin API's JSON: the queue's observations rendered as JSON values, and
//! predicates ([`Selector`]) read from query parameters or a JSON body with a
//! clear error for anything unknown — a mistyped filter on `delete` must never
//! widen to "everything". Depends on `select`, `stats`, `types`.

use crate::select::{Explanation, Selected, Selector};
use crate::stats::{BucketStats, MessageInfo, Stats, AGE_BUCKETS_MINUTES};
use crate::types::{MessageId, RcptState};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The filter names a predicate accepts.
pub const FILTERS: [&str; 11] = [
    "id",
    "sender",
    "rcpt",
    "domain",
    "route",
    "state",
    "older_than",
    "younger_than",
    "attempts",
    "error",
    "error_regex",
];

/// Every state a filter may name.
use crate::types::WAITING_STATES;

/// The states a filter may name: those of queued mail, and damage (`corrupt`).
const STATES: [RcptState; 7] = {
    let w = WAITING_STATES;
    [w[0], w[1], w[2], w[3], w[4], w[5], RcptState::Corrupt]
};

/// Parses a message id: up to 16 hex digits, as the queue prints them.
pub fn message_id(s: &str) -> Result<MessageId, String> {
    let t = s.trim();
    if t.is_empty() || t.len() > 16 {
        return Err(format!(
            "invalid message id {t:?}: expected up to 16 hex digits"
        ));
    }
    u64::from_str_radix(t, 16)
        .map(MessageId)
        .map_err(|_| format!("invalid message id {t:?}: expected up to 16 hex digits"))
}

/// Parses a duration: a number of seconds or a number with `s`, `m`, `h`, `d`
/// or `w`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("invalid duration {t:?}: use e.g. 90s, 30m, 2h, 3d")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("invalid duration {t:?}: use e.g. 90s, 30m, 2h, 3d"))
}

/// A state by the name the queue reports (`inflight` for leased).
pub fn state(s: &str) -> Result<RcptState, String> {
    STATES
        .iter()
        .copied()
        .find(|st| st.name().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            let names: Vec<&str> = STATES.iter().map(|s| s.name()).collect();
            format!("unknown state {s:?}: use one of {}", names.join(", "))
        })
}

/// A value as text (strings as they are, numbers printed).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A list filter: an array, or one string with comma-separated items.
fn items(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(a) => a.iter().map(text).collect(),
        v => text(v).map(|s| s.split(',').map(|x| x.trim().to_string()).collect()),
    }
}

/// Reads a predicate from an object of filters; `extra` names the other keys
/// the caller reads from the same object. Unknown keys are an error.
pub fn selector(obj: &Map<String, Value>, extra: &[&str]) -> Result<Selector, String> {
    let mut sel = Selector::default();
    for (k, v) in obj {
        if extra.contains(&k.as_str()) {
            continue;
        }
        let bad = || format!("filter {k:?} has an invalid value {v}");
        // An empty value is refused: `--error "$UNSET"` must not match everything.
        let one = || match text(v) {
            Some(t) if !t.trim().is_empty() => Ok(t),
            Some(_) => Err(format!(
                "filter {k:?} is empty; leave it out or give a value"
            )),
            None => Err(bad()),
        };
        match k.as_str() {
            "id" => {
                for i in items(v)
                    .ok_or_else(bad)?
                    .iter()
                    .filter(|i| !i.trim().is_empty())
                {
                    sel.ids.push(message_id(i)?);
                }
            }
            "sender" => sel.sender = Some(one()?),
            "rcpt" | "recipient" => sel.recipient = Some(one()?),
            "domain" => sel.domain = Some(one()?),
            "route" => sel.route = Some(one()?),
            "state" => {
                for s in items(v)
                    .ok_or_else(bad)?
                    .iter()
                    .filter(|i| !i.trim().is_empty())
                {
                    sel.states.push(state(s)?);
                }
            }
            "older_than" => sel.older_than = Some(duration(&one()?)?),
            "younger_than" => sel.younger_than = Some(duration(&one()?)?),
            "attempts" => {
                sel.min_attempts = Some(one()?.trim().parse().map_err(|_| {
                    format!("filter \"attempts\" is a minimum count 0-65535, not {v}")
                })?)
            }
            "error" => sel.error = Some(one()?),
            "error_regex" => sel.error_regex = Some(one()?),
            _ => {
                return Err(format!(
                    "unknown filter {k:?}: filters are {}",
                    FILTERS.join(", ")
                ))
            }
        }
    }
    if (obj.contains_key("id") && sel.ids.is_empty())
        || (obj.contains_key("state") && sel.states.is_empty())
    {
        return Err("filters \"id\" and \"state\" need at least one value".into());
    }
    Ok(sel)
}

/// True when the predicate restricts nothing: no criterion, or only ones that
/// match every recipient (a sender or recipient glob of stars, zero attempts,
/// an age of zero). An action then needs `"all": true`.
pub fn is_empty(sel: &Selector) -> bool {
    let stars = |g: &Option<String>| g.as_deref().is_some_and(|g| g.chars().all(|c| c == '*'));
    let mut s = sel.clone();
    if stars(&s.sender) {
        s.sender = None;
    }
    if stars(&s.recipient) {
        s.recipient = None;
    }
    if s.min_attempts == Some(0) {
        s.min_attempts = None;
    }
    if s.older_than.is_some_and(|d| d.is_zero()) {
        s.older_than = None;
    }
    // A pattern that matches both the empty text and an unrelated character
    // (`.*`, `^`, `x?`) matches every last error.
    let matches_all = |p: &str| {
        regex::RegexBuilder::new(p)
            .size_limit(1 << 20)
            .build()
            .is_ok_and(|re| re.is_match("") && re.is_match("\u{1}"))
    };
    if s.error_regex.as_deref().is_some_and(matches_all) {
        s.error_regex = None;
    }
    s == Selector::default()
}

/// A destination.
pub fn bucket(b: &BucketStats) -> Value {
    json!({
        "key": b.key,
        "depth": b.depth(),
        "ready": b.ready,
        "deferred": b.deferred,
        "held": b.held,
        "inflight": b.inflight,
        "bounce_pending": b.bounce_pending,
        "sessions": b.sessions,
        "window": b.window,
        "limit": b.limit,
        "suspended": b.suspended,
        "suspended_until": b.suspended_until,
        "suspended_by": b.suspended_by,
        "throttled_until": b.throttled_until,
        "throttled_by": b.throttled_by,
        "dead_until": b.dead_until,
        "delivered": b.delivered,
        "deferrals": b.deferrals,
        "failures": b.failures,
        "site_failures": b.site_failures,
        "last_site_failure": b.last_site_failure,
        "ages": b.ages,
        "rate_limit": b.rate_limit.map(|r| json!({
            "per_second": r.per_second,
            "per_minute": r.per_minute,
            "per_hour": r.per_hour,
            "per_day": r.per_day,
        })),
        "rate_next": b.rate_next,
        "sources": b.sources.iter().map(|p| json!({
            "source": p.source, "sessions": p.sessions, "next": p.next,
            "suspended_until": p.suspended_until, "suspended_by": p.suspended_by,
        })).collect::<Vec<_>>(),
        "source_limit": b.source_limit,
        "source_rate_limit": b.source_rate_limit.map(|r| json!({
            "per_second": r.per_second,
            "per_minute": r.per_minute,
            "per_hour": r.per_hour,
            "per_day": r.per_day,
        })),
    })
}

/// The egress sources with their warm-up state and pools.
pub fn sources(list: &[crate::stats::SourceStats]) -> Value {
    let list: Vec<Value> = list
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "day": s.day, "per_day": s.per_day, "used": s.used,
                "day_ends": s.day_ends, "pools": s.pools,
            })
        })
        .collect();
    json!({ "sources": list })
}

/// The reply-driven rules in force, in order.
pub fn rules(rules: &[crate::types::ReplyRule]) -> Value {
    use crate::types::RuleAction;
    let list: Vec<Value> = rules
        .iter()
        .map(|r| match &r.action {
            RuleAction::Suspend(d) => json!({
                "pattern": r.pattern, "action": "suspend", "seconds": d.as_secs(),
            }),
            RuleAction::SuspendSource(d) => json!({
                "pattern": r.pattern, "action": "suspend-source", "seconds": d.as_secs(),
            }),
            RuleAction::Throttle {
                window,
                rate,
                duration,
            } => json!({
                "pattern": r.pattern, "action": "throttle", "seconds": duration.as_secs(),
                "window": window,
                "per_second": rate.per_second, "per_minute": rate.per_minute,
                "per_hour": rate.per_hour, "per_day": rate.per_day,
            }),
            RuleAction::Permanent => json!({ "pattern": r.pattern, "action": "permanent" }),
        })
        .collect();
    json!({ "rules": list })
}

/// The queue's figures (destinations are served by `/v1/destinations`).
pub fn stats(s: &Stats) -> Value {
    let states: Map<String, Value> = s
        .by_state
        .iter()
        .map(|(n, c)| (n.to_string(), json!(c)))
        .collect();
    let corrupt: Vec<Value> = s
        .corrupt_reasons
        .iter()
        .map(|(id, why)| json!({"id": id.to_string(), "reason": why}))
        .collect();
    json!({
        "messages": s.messages,
        "recipients": s.recipients(),
        "states": states,
        "oldest_age": s.oldest_age,
        "destinations": s.buckets.len(),
        "accepted": s.accepted,
        "accepted_recipients": s.accepted_recipients,
        "delivered": s.delivered,
        "deferred": s.deferred,
        "failed": s.failed,
        "expired": s.expired,
        "bounced": s.bounced,
        "site_failures": s.site_failures,
        "lease_reclaims": s.lease_reclaims,
        "queued_bytes": s.queued_bytes,
        "disk_free": s.disk_free,
        "backpressure": s.backpressure,
        "refused": s.refused,
        "delay_warnings": s.delay_warnings,
        "corrupt": s.corrupt,
        "corrupt_messages": corrupt,
        "fsyncs": s.fsyncs,
        "commits": s.commits,
        "bytes_written": s.bytes_written,
        "checkpoints": s.checkpoints,
        "segments_deleted": s.segments_deleted,
        "segments_reused": s.segments_reused,
        "messages_copied": s.messages_copied,
        "index_bytes": s.index_bytes,
        "poisoned": s.poisoned,
        "maintenance_error": s.maintenance_error,
    })
}

/// The `qshape` table: age columns and one row per destination.
pub fn qshape(s: &Stats, top: usize) -> Value {
    let mut total = [0u64; 10];
    for b in &s.buckets {
        for (t, a) in total.iter_mut().zip(b.ages) {
            *t += a;
        }
    }
    let row = |key: &str, ages: &[u64; 10]| json!({"key": key, "total": ages.iter().sum::<u64>(), "ages": ages});
    let rows: Vec<Value> = s
        .buckets
        .iter()
        .take(top)
        .map(|b| row(&b.key, &b.ages))
        .collect();
    json!({
        "columns_minutes": AGE_BUCKETS_MINUTES,
        "total": row("TOTAL", &total),
        "rows": rows,
        "destinations": s.buckets.len(),
    })
}

/// One selected recipient.
pub fn selected(s: &Selected) -> Value {
    json!({
        "id": s.id.to_string(),
        "index": s.index,
        "sender": s.sender,
        "recipient": s.address,
        "route": s.route,
        "state": s.state.name(),
        "attempts": s.attempts,
        "received": s.received,
        "last_error": s.last_error,
    })
}

/// One message with its recipients.
pub fn message(m: &MessageInfo) -> Value {
    let rcpts: Vec<Value> = m
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "index": i,
                "recipient": r.address,
                "route": r.route,
                "state": r.state.name(),
                "attempts": r.attempts,
                "next_attempt": r.next_attempt,
                "last_error": r.last_error,
            })
        })
        .collect();
    json!({
        "id": m.id.to_string(),
        "sender": m.sender,
        "received": m.received,
        "size": m.size,
        "recipients": rcpts,
    })
}

/// Why one recipient waits.
pub fn explanation(e: &Explanation) -> Value {
    json!({
        "id": e.id.to_string(),
        "index": e.index,
        "recipient": e.address,
        "state": e.state.name(),
        "attempts": e.attempts,
        "next_attempt": e.next_attempt,
        "last_error": e.last_error,
        "why": e.why,
        "destination": e.destination.as_ref().map(bucket),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn reads_every_filter() {
        let s = selector(
            &obj(
                json!({"id": "00000001000000AB,2", "sender": "*@x.org", "rcpt": "a*",
                "domain": "gmail.com", "route": "smtp:gmail", "state": ["deferred", "held"],
                "older_than": "2h", "younger_than": 86400, "attempts": "3", "error": "TSS04",
                "dry_run": true}),
            ),
            &["dry_run"],
        )
        .unwrap();
        assert_eq!(s.ids, vec![MessageId(0x1_0000_00AB), MessageId(2)]);
        assert_eq!(s.states, vec![RcptState::Deferred, RcptState::Held]);
        assert_eq!(s.older_than, Some(Duration::from_secs(7200)));
        assert_eq!(s.younger_than, Some(Duration::from_secs(86400)));
        assert_eq!(s.min_attempts, Some(3));
        assert_eq!(s.recipient.as_deref(), Some("a*"));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for (v, what) in [
            (json!({"sendr": "x"}), "unknown filter"),
            (json!({"state": "lost"}), "unknown state"),
            (json!({"older_than": "2y"}), "invalid duration"),
            (json!({"id": "xyz"}), "invalid message id"),
            (json!({"attempts": -1}), "minimum count"),
            (json!({"sender": ["a", "b"]}), "invalid value"),
            (json!({"error": ""}), "is empty"),
            (json!({"sender": " "}), "is empty"),
            (json!({"state": ""}), "at least one value"),
            (json!({"id": ","}), "at least one value"),
        ] {
            let e = selector(&obj(v), &[]).unwrap_err();
            assert!(e.contains(what), "{e}");
        }
        assert!(is_empty(
            &selector(&obj(json!({"dry_run": true})), &["dry_run"]).unwrap()
        ));
        for widens in [
            json!({"sender": "*"}),
            json!({"rcpt": "**", "attempts": 0}),
            json!({"older_than": "0s"}),
        ] {
            assert!(
                is_empty(&selector(&obj(widens.clone()), &[]).unwrap()),
                "{widens}"
            );
        }
        assert!(!is_empty(
            &selector(&obj(json!({"sender": "*@x"})), &[]).unwrap()
        ));
    }
}
