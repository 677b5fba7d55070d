//! Finding recipients by a [`Selector`] (the operator's search, and what bulk
//! actions act on). The index criteria are checked under one shard's lock at
//! a time, a few thousand slots per hold. Envelopes (sender, recipient
//! address) are read from the log with no lock held, in log order with large
//! reads, in passes of a bounded number of messages, and paced while the
//! queue is busy, so a search takes at most half a core from producers and
//! workers. Results come oldest first (acceptance time, then id, then
//! recipient index), an order compaction and slot reuse do not change, so
//! paging by offset is stable while the matches are.
//! Depends on `error`, `index`, `select`, `storage`, `types`, the rest of `engine`.

use super::rules::{self, Pattern};
use super::Engine;
use crate::error::{Error, Result};
use crate::index::*;
use crate::select::{Selected, Selector};
use crate::storage::log::{Log, Pos};
use crate::storage::record;
use crate::types::*;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::time::{Duration, Instant};

/// Messages one envelope pass locates at most (24 bytes each, about 6 MiB),
/// unless one segment holds more.
pub(super) const ENVELOPE_BATCH: usize = 256 * 1024;
/// Bytes one read of a segment covers at most during a search.
const SEARCH_CHUNK: usize = 1 << 20;
/// Records further apart than this are not read with one `pread`.
const SEARCH_GAP: u64 = 64 << 10;
/// Message slots looked at per hold of a shard's lock.
const SLOTS_PER_LOCK: usize = 4096;
/// Work a search does between looks at whether the queue is busy.
const SEARCH_SLICE: Duration = Duration::from_millis(10);
/// Longest pause of a paced search (a slice stretched by a stall must not
/// stall the thread serving the admin API as long again).
const SEARCH_PAUSE_MAX: Duration = Duration::from_millis(50);

/// Paces a search that reads envelopes: after each slice of work, if the log
/// grew meanwhile (producers or workers are busy), it sleeps as long as the
/// slice took (at most [`SEARCH_PAUSE_MAX`]). A search so takes at most half
/// of one core while the queue works, and all of it when the queue is idle.
struct Pacer<'a> {
    log: &'a Log,
    since: Instant,
    end: Pos,
    steps: u32,
}

impl<'a> Pacer<'a> {
    fn new(log: &'a Log) -> Self {
        Pacer {
            log,
            since: Instant::now(),
            end: log.end(),
            steps: 0,
        }
    }

    /// One record read: every 64, a look at the time.
    fn step(&mut self) {
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(64) {
            self.check();
        }
    }

    /// Ends the slice if it is long enough, pausing if the queue is busy.
    fn check(&mut self) {
        let took = self.since.elapsed();
        if took < SEARCH_SLICE {
            return;
        }
        if self.log.end() != self.end {
            std::thread::sleep(took.min(SEARCH_PAUSE_MAX));
            self.end = self.log.end();
        }
        self.since = Instant::now();
    }
}

/// The order of results: acceptance time, message id, recipient index.
type Key = (u64, MessageId, u32);

/// One match, ordered by its [`Key`].
struct Entry(Selected);

impl Entry {
    fn key(&self) -> Key {
        (self.0.received, self.0.id, self.0.index)
    }
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        self.key().cmp(&o.key())
    }
}

/// The `limit` first matches by [`Key`], kept in a heap of at most `limit`.
struct Collector {
    limit: usize,
    heap: BinaryHeap<Entry>,
}

impl Collector {
    fn new(limit: usize) -> Self {
        Collector {
            limit,
            heap: BinaryHeap::new(),
        }
    }

    /// Whether a match with this key would be kept now (the bar only rises).
    fn admits(&self, key: Key) -> bool {
        self.heap.len() < self.limit || self.heap.peek().is_some_and(|top| key < top.key())
    }

    fn push(&mut self, s: Selected) {
        self.heap.push(Entry(s));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    fn into_sorted(self) -> Vec<Selected> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|e| e.0)
            .collect()
    }
}

/// A recipient that passed the index criteria, copied out of its shard.
struct Candidate {
    id: MessageId,
    index: u32,
    rcpt: Rcpt,
    received: u32,
    last_error: String,
}

/// A message with a recipient that passed the index criteria, and where its
/// record is.
#[derive(Clone, Copy)]
struct Located {
    seg: u32,
    off: u32,
    len: u32,
    shard: u32,
    slot: u32,
    gen: u32,
}

/// Compiles `sel.error_regex` (case-insensitive, bounded in size).
fn error_regex(sel: &Selector) -> Result<Option<Pattern>> {
    sel.error_regex
        .as_deref()
        .map(|p| rules::compile(p, "error_regex"))
        .transpose()
}

/// The index criteria of a selection, resolved once.
struct IndexFilter<'a> {
    sel: &'a Selector,
    now: u32,
    route: Option<u32>,
    ids: HashSet<MessageId>,
    error_regex: Option<Pattern>,
}

impl IndexFilter<'_> {
    /// The message-level criteria: id and age.
    fn message_ok(&self, id: MessageId, m: &Msg) -> bool {
        let age = self.now.saturating_sub(m.received) as u64;
        (self.ids.is_empty() || self.ids.contains(&id))
            && self.sel.older_than.is_none_or(|d| age > d.as_secs())
            && self.sel.younger_than.is_none_or(|d| age < d.as_secs())
    }

    /// The recipient-level criteria: state, routing key, attempts, last error.
    fn rcpt_ok(&self, ms: &MsgShard, r: Rcpt) -> bool {
        let st = r.state();
        let state_ok = if self.sel.states.is_empty() {
            !st.is_final() && st != RcptState::New
        } else {
            self.sel.states.contains(&st)
        };
        state_ok
            && self.route.is_none_or(|b| r.bucket() == b && !st.is_final())
            && self.sel.min_attempts.is_none_or(|n| r.attempts() >= n)
            && self.error_ok(ms.reason(r.reason()))
    }

    /// The last-error criteria: substring and regular expression.
    fn error_ok(&self, last_error: &str) -> bool {
        let regex_ok = self
            .error_regex
            .as_ref()
            .is_none_or(|re| rules::matches(re, last_error));
        regex_ok && self.sel.error_matches(last_error)
    }

    /// The recipients of message `m` that pass the index criteria and that
    /// `col` would keep.
    fn candidates(
        &self,
        ms: &MsgShard,
        id: MessageId,
        m: &Msg,
        col: &Collector,
        out: &mut Vec<Candidate>,
    ) {
        if !self.message_ok(id, m) {
            return;
        }
        for i in 0..m.n as u32 {
            let r = ms.rcpts[(m.first + i) as usize];
            if col.admits((m.received as u64, id, i)) && self.rcpt_ok(ms, r) {
                out.push(Candidate {
                    id,
                    index: i,
                    rcpt: r,
                    received: m.received,
                    last_error: ms.reason(r.reason()).to_string(),
                });
            }
        }
    }

    /// Whether some recipient of message `m` passes the index criteria and
    /// would be kept.
    fn any(&self, ms: &MsgShard, id: MessageId, m: &Msg, col: &Collector) -> bool {
        self.message_ok(id, m)
            && (0..m.n as u32).any(|i| {
                col.admits((m.received as u64, id, i))
                    && self.rcpt_ok(ms, ms.rcpts[(m.first + i) as usize])
            })
    }
}

impl Engine {
    /// The first `limit` recipients matching `sel`, oldest first (acceptance
    /// time, then message id, then recipient index).
    pub(crate) fn select(&self, sel: &Selector, limit: usize) -> Result<Vec<Selected>> {
        let error_regex = error_regex(sel)?;
        let route = match &sel.route {
            Some(k) => match self.find_bucket(k)? {
                Some(b) => Some(b),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let filter = IndexFilter {
            sel,
            now: self.now(),
            route,
            ids: sel.ids.iter().copied().collect(),
            error_regex,
        };
        let mut col = Collector::new(limit);
        if sel.needs_envelope() {
            self.select_by_envelope(&filter, &mut col)?;
            return Ok(col.into_sorted());
        }
        for s in 0..SHARDS {
            let mut cands = Vec::new();
            self.each_message(s, |ms, l, m| {
                let id = MessageId::new(m.gen, global(s, l));
                filter.candidates(ms, id, m, &col, &mut cands)
            });
            for c in &cands {
                self.push_selected(sel, c, String::new(), String::new(), &mut col);
            }
        }
        Ok(col.into_sorted())
    }

    /// Calls `f` with every live message of shard `s` (slot and record),
    /// holding the shard's lock for at most [`SLOTS_PER_LOCK`] slots at a time.
    fn each_message(&self, s: usize, mut f: impl FnMut(&MsgShard, u32, &Msg)) {
        let mut from = 0;
        loop {
            let ms = self.msgs[s].lock();
            let to = (from + SLOTS_PER_LOCK).min(ms.msgs.len());
            if from >= to {
                return;
            }
            for l in from..to {
                let m = ms.msgs[l];
                if m.gen != 0 {
                    f(&ms, l as u32, &m);
                }
            }
            from = to;
        }
    }

    /// A selection with envelope criteria. The index criteria pick the
    /// messages, in passes over ranges of segments of at most
    /// [`ENVELOPE_BATCH`] live messages (or one segment, if it holds more;
    /// each pass walks the in-memory index). A pass reads its records in log
    /// order with large reads and no lock held, then checks the matching
    /// messages' recipients under their shard's lock again (they may have
    /// changed). Compaction only moves records forward and the last pass has
    /// no upper end (it also holds what arrived since the search began), so a
    /// moved message is found; one seen twice counts once.
    fn select_by_envelope(&self, f: &IndexFilter<'_>, col: &mut Collector) -> Result<()> {
        let mut per_seg = BTreeMap::<u32, usize>::new();
        for shard in self.msgs.iter() {
            for (&seg, &(n, _)) in &shard.lock().seg_live {
                *per_seg.entry(seg).or_default() += n as usize;
            }
        }
        let batch = self.search_batch.load(std::sync::atomic::Ordering::Relaxed);
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        let mut held = 0;
        for (seg, n) in per_seg {
            match ranges.last_mut() {
                Some(r) if held + n <= batch => {
                    r.1 = seg;
                    held += n;
                }
                _ => {
                    ranges.push((seg, seg));
                    held = n;
                }
            }
        }
        if let Some(r) = ranges.last_mut() {
            r.1 = u32::MAX;
        }
        let mut seen = HashSet::new();
        let mut pace = Pacer::new(&self.log);
        for (lo, hi) in ranges {
            let mut locs = Vec::new();
            for s in 0..SHARDS {
                self.each_message(s, |ms, l, m| {
                    if (lo..=hi).contains(&m.seg)
                        && f.any(ms, MessageId::new(m.gen, global(s, l)), m, col)
                    {
                        locs.push(Located {
                            seg: m.seg,
                            off: m.off,
                            len: m.len,
                            shard: s as u32,
                            slot: l,
                            gen: m.gen,
                        });
                    }
                });
            }
            pace.check();
            locs.sort_unstable_by_key(|x| (x.seg, x.off));
            for group in locs.chunk_by(|a, b| a.seg == b.seg) {
                let spans: Vec<(u64, usize)> = group
                    .iter()
                    .map(|x| (x.off as u64, x.len as usize))
                    .collect();
                let read = |k: usize, res: Result<(record::Kind, bytes::Bytes)>| {
                    pace.step();
                    let x = group[k];
                    let id = MessageId::new(x.gen, global(x.shard as usize, x.slot));
                    let payload = match res {
                        Ok((_, p)) => p,
                        // Moved or gone meanwhile, or damaged: as one read decides.
                        Err(_) => match self.read_message_record(id, (x.seg, x.off, x.len)) {
                            Ok(p) => p,
                            Err(Error::NoSuchMessage(_)) => return Ok(true),
                            // Damaged: its envelope is unknown, so it matches no
                            // envelope criterion and the search goes on; the
                            // damage is reported (stats, metrics) like any other.
                            Err(e @ Error::Corrupt { .. }) => {
                                self.note_damage(id, &e.to_string());
                                return Ok(true);
                            }
                            Err(e) => return Err(e),
                        },
                    };
                    if !seen.contains(&id) && self.match_envelope(f, x, id, &payload, col)? {
                        seen.insert(id);
                    }
                    Ok(true)
                };
                self.log
                    .read_records(group[0].seg, &spans, SEARCH_CHUNK, SEARCH_GAP, read)?;
            }
        }
        Ok(())
    }

    /// Checks the envelope criteria on one message's record and adds the
    /// recipients that match them and (still) the index criteria. Returns
    /// whether any did.
    fn match_envelope(
        &self,
        f: &IndexFilter<'_>,
        x: Located,
        id: MessageId,
        payload: &[u8],
        col: &mut Collector,
    ) -> Result<bool> {
        // A record that passed its checksum but does not decode is damage as
        // above: no match, reported.
        let Some(rec) = record::decode_message(payload) else {
            self.note_damage(id, "message record does not decode");
            return Ok(false);
        };
        if !f.sel.sender_matches(rec.sender) {
            return Ok(false);
        }
        let mut cands = Vec::new();
        {
            let ms = self.msgs[x.shard as usize].lock();
            match ms.get(x.slot, x.gen) {
                Some(m) => f.candidates(&ms, id, m, col, &mut cands),
                // Delivered or deleted meanwhile: not a match.
                None => return Ok(false),
            }
        }
        let mut any = false;
        for c in &cands {
            let addr = rec.rcpts.get(c.index as usize).map_or("", |r| r.0);
            if f.sel.envelope_matches(rec.sender, addr) {
                any |= self.push_selected(f.sel, c, rec.sender.to_string(), addr.to_string(), col);
            }
        }
        Ok(any)
    }

    /// Reports a message whose record a search could not read.
    fn note_damage(&self, id: MessageId, why: &str) {
        self.report
            .lock()
            .note_corrupt_message(id, &format!("search: {why}"));
    }

    /// Adds one match (unless its bucket id was reused for another key);
    /// returns whether it did.
    fn push_selected(
        &self,
        sel: &Selector,
        c: &Candidate,
        sender: String,
        address: String,
        col: &mut Collector,
    ) -> bool {
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
            return false;
        }
        col.push(Selected {
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
        true
    }
}
