//! Egress sources as the queue knows them: the sources the MTA declared,
//! the pool of each destination (and the default pool), warm-up schedules,
//! and their warm-up state persisted as `Source` records and in the
//! checkpoint. The sources and pools are the MTA's configuration (set after
//! open, like reply rules; not persisted); the per-source limits of a
//! destination are operator settings (persisted with its other settings).
//! Depends on `error`, `sched`, `storage`, `types`, the rest of `engine`.

use super::Engine;
use crate::error::{Error, Result};
use crate::index::*;
use crate::sched::{SchedShard, Source};
use crate::stats::SourceStats;
use crate::storage::log::Batch;
use crate::storage::record::{self, SourceSaved};
use crate::types::{RateLimit, WarmupStep};
use std::collections::HashMap;
use std::sync::Arc;

/// Longest source name, bytes.
const MAX_NAME: usize = 255;
/// Most steps in a warm-up schedule.
const MAX_STEPS: usize = 1000;

/// The egress configuration (replaced whole on a change: readers clone the
/// `Arc` and never hold the lock while they take a shard lock).
#[derive(Debug, Default, Clone)]
pub(super) struct Egress {
    /// Bumped on every change; a bucket whose paths were built from an older
    /// one rebuilds them before it opens a session.
    gen: u32,
    /// Every declared source, by name.
    sources: HashMap<Arc<str>, Arc<Source>>,
    /// Pools by destination key.
    pools: HashMap<String, Vec<Arc<Source>>>,
    /// The pool of destinations without their own.
    default: Vec<Arc<Source>>,
    /// Warm-up states read from disk, for sources not declared (yet).
    saved: HashMap<String, SourceSaved>,
}

impl Egress {
    /// The configuration at open: no sources, the states recovery found.
    pub(super) fn recovered(saved: HashMap<String, SourceSaved>) -> Egress {
        Egress {
            saved,
            ..Egress::default()
        }
    }

    fn pool(&self, key: &str) -> &[Arc<Source>] {
        self.pools.get(key).unwrap_or(&self.default)
    }

    /// The source named `name`, declared now if new (with its state from
    /// disk, if any).
    fn source(&mut self, name: &str, now: u32) -> Arc<Source> {
        if let Some(s) = self.sources.get(name) {
            return s.clone();
        }
        let s = Arc::new(Source::new(name, self.saved.remove(name), now));
        self.sources.insert(s.name.clone(), s.clone());
        s
    }
}

/// Checks a source name: 1 to 255 bytes, no spaces or control characters.
fn check_name(name: &str) -> Result<()> {
    let ok =
        !name.is_empty() && name.len() <= MAX_NAME && !name.bytes().any(|b| b <= b' ' || b == 0x7f);
    if ok {
        return Ok(());
    }
    Err(Error::InvalidOption(format!(
        "egress source name {:?} must be 1 to {MAX_NAME} bytes without spaces or control characters",
        name.chars().take(64).collect::<String>()
    )))
}

/// Checks a warm-up schedule: days from 1, strictly increasing, caps ≥ 1.
fn check_steps(steps: &[WarmupStep]) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidOption(format!("warm-up schedule: {why}")));
    if steps.len() > MAX_STEPS {
        return bad("at most 1000 steps");
    }
    if steps.iter().any(|s| s.day == 0 || s.per_day == 0) {
        return bad("days start at 1 and every cap is at least 1 message a day");
    }
    if steps.windows(2).any(|w| w[0].day >= w[1].day) {
        return bad("days must increase from step to step");
    }
    Ok(())
}

impl Engine {
    /// Sets the pool of destination `key` (`None`: the default pool) to the
    /// sources `names` (declared if new); an empty list for a key gives it
    /// back to the default pool. Destinations rebuild their paths at once.
    pub(crate) fn set_sources(&self, key: Option<&str>, names: &[&str]) -> Result<()> {
        for n in names {
            check_name(n)?;
        }
        let key = key.map(crate::validate::normalize_key).transpose()?;
        let now = self.now();
        {
            let mut e = self.egress.write();
            let mut cfg = (**e).clone();
            let mut pool: Vec<Arc<Source>> = Vec::new();
            for n in names {
                let s = cfg.source(n, now);
                if !pool.iter().any(|p| Arc::ptr_eq(p, &s)) {
                    pool.push(s);
                }
            }
            match key {
                None => cfg.default = pool,
                Some(k) if pool.is_empty() => drop(cfg.pools.remove(&k)),
                Some(k) => drop(cfg.pools.insert(k, pool)),
            }
            cfg.gen = cfg.gen.wrapping_add(1);
            let gen = cfg.gen;
            *e = Arc::new(cfg);
            self.egress_gen
                .store(gen, std::sync::atomic::Ordering::Release);
        }
        self.repath_all();
        Ok(())
    }

    /// Sets the warm-up schedule of source `name` (declared if new; empty:
    /// none). A source's first schedule starts its day 1 now, persisted.
    pub(crate) fn set_warmup(&self, name: &str, steps: &[WarmupStep]) -> Result<()> {
        check_name(name)?;
        check_steps(steps)?;
        let now = self.now();
        let src = {
            let mut e = self.egress.write();
            let mut cfg = (**e).clone();
            let s = cfg.source(name, now);
            *e = Arc::new(cfg);
            s
        };
        src.set_schedule(steps, now);
        self.persist_source(&src)?;
        self.repath_all();
        self.log.sync_all()
    }

    /// Sets the per-source limits of destination `key`: at most `limit`
    /// sessions (0: none) and `rate` messages per period through each of its
    /// sources. Persisted.
    pub(crate) fn set_source_limits(&self, key: &str, limit: u16, rate: RateLimit) -> Result<()> {
        self.with_bucket(key, |ss, bl, now| {
            let b = &mut ss.buckets[bl as usize];
            b.set_path_limits(limit, rate);
            b.wake_at = 0;
            ss.maybe_ring(bl, now)
        })
    }

    /// Rebuilds local bucket `bl`'s paths if the configuration changed since
    /// they were built. The caller holds its shard lock.
    pub(super) fn sync_paths(&self, ss: &mut SchedShard, bl: u32) {
        use std::sync::atomic::Ordering;
        if ss.buckets[bl as usize].egress_gen == self.egress_gen.load(Ordering::Acquire) {
            return;
        }
        let e = self.egress.read().clone();
        let b = &mut ss.buckets[bl as usize];
        if b.egress_gen != e.gen && !b.key.is_empty() {
            let pool = e.pool(&b.key).to_vec();
            b.set_pool(&pool, e.gen);
        }
    }

    /// Every destination rebuilds its paths, and one that may now open a
    /// session (or wait for another time) is put back in the round-robin.
    fn repath_all(&self) {
        let now = self.now();
        let mut rang = false;
        for s in 0..SHARDS {
            let mut ss = self.sched[s].lock();
            for bl in 0..ss.buckets.len() as u32 {
                self.sync_paths(&mut ss, bl);
                ss.buckets[bl as usize].wake_at = 0;
                rang |= ss.maybe_ring(bl, now);
            }
        }
        self.wake_if(rang);
    }

    /// Appends (without waiting for durability) a `Source` record with the
    /// warm-up state of `src`, if it changed since it was last written.
    pub(super) fn persist_source(&self, src: &Source) -> Result<()> {
        src.persist(|st| {
            let mut batch = Batch::new();
            batch.push(record::Kind::Source, |p| {
                record::encode_source(p, &src.name, st)
            });
            self.log.append(batch).map(drop)
        })
    }

    /// The warm-up states a checkpoint keeps: declared sources' and those
    /// read from disk and not declared since.
    pub(super) fn sources_to_save(&self) -> Vec<(String, SourceSaved)> {
        let e = self.egress.read().clone();
        let mut out: Vec<(String, SourceSaved)> =
            e.saved.iter().map(|(n, s)| (n.clone(), *s)).collect();
        for s in e.sources.values() {
            if let Some(st) = s.saved() {
                out.push((s.name.to_string(), st));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The declared sources with their warm-up state and pools.
    pub(crate) fn source_stats(&self) -> Vec<SourceStats> {
        let e = self.egress.read().clone();
        let now = self.now();
        let mut out: Vec<SourceStats> = e
            .sources
            .values()
            .map(|s| {
                let (day, per_day, used, ends) = s.status(now);
                let mut pools: Vec<String> = e
                    .pools
                    .iter()
                    .filter(|(_, p)| p.iter().any(|x| Arc::ptr_eq(x, s)))
                    .map(|(k, _)| k.clone())
                    .collect();
                pools.sort();
                if e.default.iter().any(|x| Arc::ptr_eq(x, s)) {
                    pools.insert(0, "*".into());
                }
                SourceStats {
                    name: s.name.to_string(),
                    day,
                    per_day,
                    used,
                    day_ends: ends as u64,
                    pools,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
