//! Operator selection, bulk actions and "explain": recipients chosen by a
//! [`Selector`], in bounded per-shard batches. The index criteria are checked
//! under one shard's lock at a time; envelopes (sender, recipient address) are
//! read from the log with no lock held, so producers and workers are never
//! waiting on a search. A bulk action applies to what matched when it runs and
//! is durable on return; on a recipient in flight, hold, release and re-route
//! take effect when its attempt ends.
//! Depends on `error`, `index`, `select`, `stats`, `storage`, `types`, the rest of `engine`.

use super::change::Change;
use super::operator::Action;
use super::{bump, Engine};
use crate::error::{Error, Result};
use crate::index::*;
use crate::select::{Explanation, Op, Selected, Selector};
use crate::stats::BucketStats;
use crate::storage::record;
use crate::types::*;
use std::collections::HashSet;

/// A recipient that passed the index criteria, copied out of its shard.
struct Candidate {
    id: MessageId,
    index: u32,
    rcpt: Rcpt,
    received: u32,
    loc: (u32, u32, u32),
    last_error: String,
}

impl Engine {
    /// Up to `limit` recipients matching `sel`, in shard order.
    pub(crate) fn select(&self, sel: &Selector, limit: usize) -> Result<Vec<Selected>> {
        let now = self.now();
        let route = match &sel.route {
            Some(k) => match self.find_bucket(k)? {
                Some(b) => Some(b),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let ids: HashSet<MessageId> = sel.ids.iter().copied().collect();
        let states: Vec<RcptState> = sel.states.clone();
        let age = |received: u32| now.saturating_sub(received) as u64;
        let mut out = Vec::new();
        for (s, shard) in self.msgs.iter().enumerate() {
            if out.len() >= limit {
                break;
            }
            // Index criteria, under this shard's lock only.
            let cands: Vec<Candidate> = {
                let ms = shard.lock();
                let mut v = Vec::new();
                for (l, m) in ms.msgs.iter().enumerate().filter(|(_, m)| m.gen != 0) {
                    let id = MessageId::new(m.gen, global(s, l as u32));
                    if (!ids.is_empty() && !ids.contains(&id))
                        || sel
                            .older_than
                            .is_some_and(|d| age(m.received) <= d.as_secs())
                        || sel
                            .younger_than
                            .is_some_and(|d| age(m.received) >= d.as_secs())
                    {
                        continue;
                    }
                    for i in 0..m.n as u32 {
                        let r = ms.rcpts[(m.first + i) as usize];
                        let st = r.state();
                        let state_ok = if states.is_empty() {
                            !st.is_final() && st != RcptState::New
                        } else {
                            states.contains(&st)
                        };
                        if !state_ok
                            || route.is_some_and(|b| r.bucket() != b || st.is_final())
                            || sel.min_attempts.is_some_and(|n| r.attempts() < n)
                        {
                            continue;
                        }
                        let last_error = ms.reason(r.reason()).to_string();
                        if !sel.error_matches(&last_error) {
                            continue;
                        }
                        v.push(Candidate {
                            id,
                            index: i,
                            rcpt: r,
                            received: m.received,
                            loc: (m.seg, m.off, m.len),
                            last_error,
                        });
                    }
                }
                v
            };
            self.finish_batch(sel, cands, limit, &mut out)?;
        }
        Ok(out)
    }

    /// Envelope criteria (read without locks, one read per message, nothing
    /// allocated for a message that does not match) and the routing keys of
    /// one shard's candidates.
    fn finish_batch(
        &self,
        sel: &Selector,
        cands: Vec<Candidate>,
        limit: usize,
        out: &mut Vec<Selected>,
    ) -> Result<()> {
        // Candidates of one message are adjacent.
        let mut rest = &cands[..];
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|c| c.id == first.id).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            if !sel.needs_envelope() {
                for c in group {
                    self.push_selected(sel, c, String::new(), String::new(), limit, out);
                }
                continue;
            }
            let payload = match self.read_message_record(first.id, first.loc) {
                Ok(p) => p,
                // Gone meanwhile (delivered, deleted): not a match.
                Err(Error::NoSuchMessage(_)) => continue,
                Err(e) => return Err(e),
            };
            let rec = record::decode_message(&payload).ok_or_else(|| Error::Corrupt {
                path: self
                    .dir
                    .join(crate::storage::log::segment_name(first.loc.0)),
                offset: first.loc.1 as u64,
                reason: "message does not decode".into(),
            })?;
            for c in group {
                let addr = rec.rcpts.get(c.index as usize).map_or("", |r| r.0);
                if sel.envelope_matches(rec.sender, addr) {
                    self.push_selected(
                        sel,
                        c,
                        rec.sender.to_string(),
                        addr.to_string(),
                        limit,
                        out,
                    );
                }
            }
        }
        Ok(())
    }

    /// Adds one match (unless the limit is reached or its bucket id was reused).
    fn push_selected(
        &self,
        sel: &Selector,
        c: &Candidate,
        sender: String,
        address: String,
        limit: usize,
        out: &mut Vec<Selected>,
    ) {
        if out.len() >= limit {
            return;
        }
        let route = if c.rcpt.state().is_final() {
            String::new()
        } else {
            self.keys
                .read()
                .key(c.rcpt.bucket())
                .map(|k| k.to_string())
                .unwrap_or_default()
        };
        // The routing key was matched by bucket id; a bucket freed and its id
        // reused since (a checkpoint's clean-up) must not match another key.
        if sel
            .route
            .as_deref()
            .is_some_and(|k| !route.eq_ignore_ascii_case(k.trim_end_matches('.')))
        {
            return;
        }
        out.push(Selected {
            id: c.id,
            index: c.index,
            sender,
            address,
            route,
            state: c.rcpt.state(),
            attempts: c.rcpt.attempts(),
            received: c.received as u64,
            last_error: c.last_error.clone(),
        });
    }

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
        let info = self.inspect(id)?;
        let r = info
            .recipients
            .get(index as usize)
            .ok_or(Error::NoSuchRecipient(id, index))?;
        let now = self.now() as u64;
        let dest = if r.state.is_final() {
            None
        } else {
            self.destination(&r.route)?
        };
        let why = why(
            r.state,
            r.attempts,
            r.next_attempt,
            &r.last_error,
            dest.as_ref(),
            now,
        );
        Ok(Explanation {
            id,
            index,
            address: r.address.clone(),
            state: r.state,
            attempts: r.attempts,
            next_attempt: r.next_attempt,
            last_error: r.last_error.clone(),
            destination: dest,
            why,
        })
    }

    /// The shape of one destination now.
    pub(crate) fn destination(&self, key: &str) -> Result<Option<BucketStats>> {
        let _g = self.gate.read_recursive();
        let Some(b) = self.find_bucket(key)? else {
            return Ok(None);
        };
        let ss = self.sched[shard_of(b)].lock();
        Ok(ss
            .buckets
            .get(local_of(b) as usize)
            .map(|bk| super::observe::bucket_stat(bk, [0; 10])))
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
                "destination {key} is suspended by the operator until {} (in {} s){last}",
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
            Some(d) if d.sessions >= d.window => format!(
                "concurrency window of {key} is full ({} of {} sessions open, limit {}); it goes with the next free slot",
                d.sessions, d.window, d.limit
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
