//! Bulk actions and "explain" for the operator, on recipients found by
//! `search`. A bulk action applies to what matched when it runs and is
//! durable on return; on a recipient in flight, hold, release and re-route take
//! effect when its attempt ends.
//! Depends on `error`, `index`, `select`, `stats`, `types`, the rest of `engine`.

use super::change::Change;
use super::operator::Action;
use super::{bump, Engine};
use crate::error::{Error, Result};
use crate::index::*;
use crate::select::{Explanation, Op, Selector};
use crate::stats::BucketStats;
use crate::types::*;

impl Engine {
    /// Applies `op` to every recipient `sel` matches now (or, with `dry_run`,
    /// counts those it would change). Durable on return.
    pub(crate) fn act(&self, sel: &Selector, op: &Op, dry_run: bool) -> Result<usize> {
        let hits = self.select(sel, usize::MAX)?;
        let action = match op {
            Op::Hold => Some(Action::Hold),
            Op::Release => Some(Action::Release),
            Op::Delete => Some(Action::Delete),
            Op::Flush => Some(Action::Flush),
            Op::Bounce(_) | Op::Reroute(_) => None,
        };
        let targets = || hits.iter().map(|h| (h.id, h.index)).collect();
        if let Some(a) = action {
            if dry_run {
                return self
                    .each_target(targets(), |id, i| self.would_change(id, i, &|r| a.plan(r)));
            }
            let n = self.each_target(targets(), |id, i| self.change_rcpt(id, i, &|r| a.plan(r)))?;
            return self.acted(a, n);
        }
        match op {
            Op::Bounce(reason) => {
                let reason = format!("bounced by the operator: {}", super::policy::clip(reason));
                let waiting =
                    |st| matches!(st, RcptState::Ready | RcptState::Deferred | RcptState::Held);
                let plan = |r: &Rcpt| {
                    waiting(r.state()).then(|| Change {
                        reason: Some(reason.clone()),
                        ..Change::persist(r, RcptState::Failed, 0)
                    })
                };
                if dry_run {
                    return self.each_target(targets(), |id, i| self.would_change(id, i, &plan));
                }
                let n = self.each_target(targets(), |id, i| self.change_rcpt(id, i, &plan))?;
                self.log.sync_all()?;
                bump(&self.counters.failed, n as u64);
                Ok(n)
            }
            Op::Reroute(to) => {
                let _g = self.gate.read_recursive();
                let key = crate::validate::normalize_key(to)?;
                if dry_run {
                    let tb = self.find_bucket(&key)?;
                    return self.each_target(targets(), |id, i| self.would_reroute(id, i, tb));
                }
                let tb = self.bucket_id(&key)?;
                let n = self.each_target(targets(), |id, i| self.reroute_rcpt(id, i, tb))?;
                self.log.sync_all()?;
                Ok(n)
            }
            _ => Ok(0),
        }
    }

    /// Why recipient `index` of `id` is not being delivered now.
    pub(crate) fn explain(&self, id: MessageId, index: u32) -> Result<Explanation> {
        self.explain_message(id, Some(index))?
            .pop()
            .ok_or(Error::NoSuchRecipient(id, index))
    }

    /// Why each recipient of `id` (or only recipient `only`) is not being
    /// delivered now, from one look at the message.
    pub(crate) fn explain_message(
        &self,
        id: MessageId,
        only: Option<u32>,
    ) -> Result<Vec<Explanation>> {
        // A damaged record leaves the address unknown, not the reason.
        let info = match self.inspect(id) {
            Err(Error::Corrupt { .. }) => self.inspect_index(id)?.0,
            r => r?,
        };
        if let Some(i) = only.filter(|&i| i as usize >= info.recipients.len()) {
            return Err(Error::NoSuchRecipient(id, i));
        }
        let now = self.now() as u64;
        let mut out = Vec::new();
        // A message's recipients mostly share destinations: one look each.
        let mut dests: std::collections::HashMap<String, Option<BucketStats>> =
            std::collections::HashMap::new();
        for (index, r) in info.recipients.into_iter().enumerate() {
            let index = index as u32;
            if only.is_some_and(|i| i != index) {
                continue;
            }
            let dest = if r.state.is_final() {
                None
            } else {
                match dests.get(&r.route) {
                    Some(d) => d.clone(),
                    None => {
                        let d = self.destination(&r.route)?;
                        dests.insert(r.route.clone(), d.clone());
                        d
                    }
                }
            };
            let why = why(
                r.state,
                r.attempts,
                r.next_attempt,
                &r.last_error,
                dest.as_ref(),
                now,
            );
            out.push(Explanation {
                id,
                index,
                address: r.address,
                state: r.state,
                attempts: r.attempts,
                next_attempt: r.next_attempt,
                last_error: r.last_error,
                destination: dest,
                why,
            });
        }
        Ok(out)
    }

    /// The shape of one destination now.
    pub(crate) fn destination(&self, key: &str) -> Result<Option<BucketStats>> {
        let _g = self.gate.read_recursive();
        let Some(b) = self.find_bucket(key)? else {
            return Ok(None);
        };
        let now = self.now();
        let mut ss = self.sched[shard_of(b)].lock();
        if (local_of(b) as usize) < ss.buckets.len() {
            self.sync_paths(&mut ss, local_of(b));
        }
        Ok(ss
            .buckets
            .get(local_of(b) as usize)
            .map(|bk| super::observe::bucket_stat(bk, [0; 10], now)))
    }
}

/// The sentence an operator reads first.
fn why(
    st: RcptState,
    attempts: u16,
    next: u64,
    err: &str,
    dest: Option<&BucketStats>,
    now: u64,
) -> String {
    let last = if err.is_empty() {
        String::new()
    } else {
        format!("; last reply: {err}")
    };
    let key = dest.map_or("?", |d| d.key.as_str());
    match st {
        RcptState::Held => "held by the operator: it waits until released".into(),
        RcptState::Leased => format!(
            "in flight: a delivery session for {key} holds it; its outcome is recorded when the attempt ends"
        ),
        RcptState::Deferred if next > now => format!(
            "deferred after attempt {attempts}: next attempt at {next} (in {} s){last}",
            next - now
        ),
        RcptState::Deferred | RcptState::Ready => match dest {
            Some(d) if d.suspended && d.suspended_until > now => format!(
                "destination {key} is suspended by {} until {} (in {} s){last}",
                d.suspended_by.as_ref().map_or("the operator".to_string(), |p| format!("reply rule /{p}/")),
                d.suspended_until,
                d.suspended_until - now
            ),
            Some(d) if d.suspended => format!("destination {key} is suspended by the operator until resumed{last}"),
            Some(d) if d.dead_until > now => format!(
                "destination {key} is marked dead after {} site failures until {} (in {} s); a probe tests it then{last}",
                d.site_failures,
                d.dead_until,
                d.dead_until - now
            ),
            Some(d) if d.rate_next > now => format!(
                "message rate of {key} used up ({}{}): the next message goes at {} (in {} s){last}",
                rate_text(d.rate_limit.unwrap_or_default()),
                throttled(d),
                d.rate_next,
                d.rate_next - now
            ),
            Some(d) if !d.sources.is_empty() && d.sessions < d.window && d.sources.iter().all(|p| p.next > now || (d.source_limit > 0 && p.sessions >= d.source_limit)) => format!(
                "every egress source of {key} is busy or used up ({}): it goes with the next free source{last}",
                d.sources.iter().map(|p| if p.suspended_until > now {
                    format!("{} is suspended{} until {} (in {} s)", p.source, match p.suspended_by.as_deref() {
                        Some(by) if !by.is_empty() => format!(" by reply rule /{by}/"),
                        _ => " by a reply rule".to_string(),
                    }, p.suspended_until, p.suspended_until - now)
                } else if p.next > now {
                    format!("{} waits until {} (in {} s)", p.source, p.next, p.next - now)
                } else {
                    format!("{} has {} of {} sessions", p.source, p.sessions, d.source_limit)
                }).collect::<Vec<_>>().join(", ")
            ),
            Some(d) if d.sessions >= d.window => format!(
                "concurrency window of {key} is full ({} of {} sessions open, limit {}{}); it goes with the next free slot",
                d.sessions, d.window, d.limit, throttled(d)
            ),
            _ => format!("ready: the next session for {key} takes it{last}"),
        },
        RcptState::Failed => format!("failed for good; a DSN to the sender is pending{last}"),
        RcptState::Expired => format!("expired (queue lifetime reached); a DSN to the sender is pending{last}"),
        RcptState::Corrupt => "its message record is damaged and cannot be delivered; delete it".into(),
        RcptState::New => "being enqueued".into(),
        s => format!("final: {}", s.name()),
    }
}

/// "6/min, 10/s": the limits set.
/// ", lowered by reply rule /P/ until T" for a throttled destination.
fn throttled(d: &BucketStats) -> String {
    match d.throttled_by.as_deref() {
        None => String::new(),
        Some("") => format!(", lowered by a reply rule until {}", d.throttled_until),
        Some(p) => format!(", lowered by reply rule /{p}/ until {}", d.throttled_until),
    }
}

fn rate_text(r: RateLimit) -> String {
    let parts: Vec<String> = r
        .counts()
        .iter()
        .zip(["s", "min", "h", "day"])
        .filter(|(&n, _)| n > 0)
        .map(|(n, p)| format!("{n}/{p}"))
        .collect();
    parts.join(", ")
}
