//! Reply-driven rules (KumoMTA's traffic-shaping automation): the MTA
//! configures regular expressions over replies (`421 4.7.0 [TSS04] …`) and
//! what a match does — suspend the destination for a while, or take a
//! temporary failure as permanent. Matched when an attempt ends (outcome or
//! site failure) under the bucket's lock; a suspension is the ordinary timed
//! suspension (persisted, ends by itself, in `next_wakeup`), marked with the
//! rule for `explain` and stats. Also the one place patterns are compiled
//! (the operator's `error_regex` too). The regex engine comes with feature
//! `rules` (in `admin`, the default).
//! Depends on `error`, `types`.

use crate::error::{Error, Result};
use crate::types::{prefix, Outcome, ReplyRule, RuleAction};

/// The longest reply text rules are matched against (what is kept of it).
const MAX_MATCHED: usize = super::policy::MAX_REASON;

/// A compiled pattern: case-insensitive, linear-time, bounded in size.
#[cfg(feature = "rules")]
pub(crate) type Pattern = regex::Regex;
/// Without the regex engine no pattern can be compiled.
#[cfg(not(feature = "rules"))]
pub(crate) type Pattern = std::convert::Infallible;

/// Compiles `p` (`what` names it in the error).
#[cfg(feature = "rules")]
pub(crate) fn compile(p: &str, what: &str) -> Result<Pattern> {
    regex::RegexBuilder::new(p)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let e = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            Error::InvalidOption(format!("{what} {p:?}: {e}"))
        })
}

/// Without the regex engine: a clear error.
#[cfg(not(feature = "rules"))]
pub(crate) fn compile(_p: &str, what: &str) -> Result<Pattern> {
    Err(Error::InvalidOption(format!(
        "{what} needs mailq built with the `rules` feature (the regex engine)"
    )))
}

/// Whether `p` matches anywhere in `text`.
#[cfg(feature = "rules")]
pub(crate) fn matches(p: &Pattern, text: &str) -> bool {
    p.is_match(text)
}

/// Without the regex engine there is no pattern to match.
#[cfg(not(feature = "rules"))]
pub(crate) fn matches(p: &Pattern, _text: &str) -> bool {
    match *p {}
}

/// The rules in force, compiled, in order (the first match wins).
#[derive(Default)]
pub(crate) struct Rules {
    list: Vec<(Pattern, RuleAction, Box<str>)>,
    specs: Vec<ReplyRule>,
}

impl Rules {
    /// Compiles and checks rules: a bad pattern or a suspension outside 1 s
    /// to 68 years is an error and changes nothing.
    pub(crate) fn compile(rules: &[ReplyRule]) -> Result<Rules> {
        let mut list = Vec::with_capacity(rules.len());
        for r in rules {
            let d = match &r.action {
                RuleAction::Suspend(d) | RuleAction::SuspendSource(d) => Some(*d),
                RuleAction::Throttle {
                    window,
                    rate,
                    duration,
                } => {
                    if *window == 0 && rate.is_none() {
                        return Err(Error::InvalidOption(format!(
                            "reply rule {:?}: a throttle lowers a window or a rate; give one",
                            r.pattern
                        )));
                    }
                    Some(*duration)
                }
                RuleAction::Permanent => None,
            };
            if d.is_some_and(|d| d.as_secs() == 0 || d.as_secs() > u32::MAX as u64 / 2) {
                return Err(Error::InvalidOption(format!(
                    "reply rule {:?}: a duration of 1 s to 68 years",
                    r.pattern
                )));
            }
            list.push((
                compile(&r.pattern, "reply rule")?,
                r.action.clone(),
                r.pattern.as_str().into(),
            ));
        }
        Ok(Rules {
            list,
            specs: rules.to_vec(),
        })
    }

    /// The rules as configured.
    pub(crate) fn specs(&self) -> &[ReplyRule] {
        &self.specs
    }

    /// No rule configured (the hot path checks this first).
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The first rule matching `reply` (as much of it as is kept): (action,
    /// pattern).
    pub(crate) fn first_match(&self, reply: &str) -> Option<(&RuleAction, &str)> {
        let reply = prefix(reply, MAX_MATCHED);
        self.list
            .iter()
            .find(|(p, _, _)| matches(p, reply))
            .map(|(_, a, s)| (a, &**s))
    }

    /// What a matching rule asks its destination to do (suspend, throttle).
    pub(crate) fn destination_act(&self, reply: &str) -> Option<Act> {
        let (a, p) = self.first_match(reply)?;
        Act::of(a, p)
    }

    /// What the rules make of one delivery's outcomes, decided before any
    /// lock is taken; each distinct reply is matched once. A site failure
    /// (`site`) never makes a recipient permanent, and its suspension is the
    /// session's to apply when it ends.
    pub(crate) fn judge(&self, outcomes: &[Outcome], site: bool) -> Verdict {
        let mut v = Verdict::none();
        v.permanent = vec![false; outcomes.len()];
        if self.is_empty() {
            return v;
        }
        let mut last: Option<(&str, Option<(&RuleAction, &str)>)> = None;
        for (k, o) in outcomes.iter().enumerate() {
            let (reason, temp) = match o {
                Outcome::Delivered => continue,
                Outcome::TempFail { reason, .. } => (reason.as_str(), true),
                Outcome::PermFail { reason } => (reason.as_str(), false),
            };
            let m = match last {
                Some((r, m)) if r == reason => m,
                _ => self.first_match(reason),
            };
            last = Some((reason, m));
            match m {
                Some((RuleAction::Permanent, _)) => v.permanent[k] = temp && !site,
                Some((a, p)) if !site && v.act.is_none() => v.act = Act::of(a, p),
                _ => {}
            }
        }
        v
    }
}

/// What a rule asks a destination to do, for how long.
pub(crate) struct Act {
    /// Suspend (no limits) or lower the limits.
    pub throttle: Option<(u16, crate::types::RateLimit)>,
    /// How long, seconds.
    pub secs: u32,
    /// The rule's pattern.
    pub pattern: Box<str>,
    /// Suspend only the session's egress path (source → destination).
    pub path: bool,
}

impl Act {
    fn of(a: &RuleAction, pattern: &str) -> Option<Act> {
        let (throttle, d, path) = match a {
            RuleAction::Suspend(d) => (None, d, false),
            RuleAction::SuspendSource(d) => (None, d, true),
            RuleAction::Throttle {
                window,
                rate,
                duration,
            } => (Some((*window, *rate)), duration, false),
            RuleAction::Permanent => return None,
        };
        Some(Act {
            throttle,
            secs: d.as_secs() as u32,
            pattern: pattern.into(),
            path,
        })
    }
}

/// What the rules decided for one delivery.
pub(crate) struct Verdict {
    /// Per outcome: a temporary failure to take as permanent (empty: none).
    permanent: Vec<bool>,
    /// The first suspension or throttle asked for.
    pub act: Option<Act>,
}

impl Verdict {
    /// Nothing decided (every outcome delivered).
    pub(crate) fn none() -> Verdict {
        Verdict {
            permanent: Vec::new(),
            act: None,
        }
    }

    /// Whether outcome `k`, a temporary failure, is to be taken as permanent.
    pub(crate) fn permanent(&self, k: usize) -> bool {
        self.permanent.get(k).copied().unwrap_or(false)
    }
}
