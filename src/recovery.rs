//! Opening a queue: lock, filesystem check, checkpoint load, log replay,
//! torn-tail truncation, damage reporting. The crash-safety rules are in
//! `docs/design.md` ("Recovery"); this module implements them.

use crate::bucket::SchedShard;
use crate::checkpoint::{self, Maint, CHECKPOINT};
use crate::error::{Error, Result};
use crate::index::MAX_BUCKETS;
use crate::index::*;
use crate::keys::Keys;
use crate::log::{parse_segment_name, pos, pos_off, pos_seg, segment_name, Log, LogStart};
use crate::poll::Signal;
use crate::queue::{now32, Counters, Inner, Queue};
use crate::record::{self, Kind, HEADER_LEN, MAGIC};
use crate::types::*;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A damaged span of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Segment number.
    pub segment: u32,
    /// Offset of the first bad byte.
    pub offset: u64,
    /// Bytes skipped.
    pub len: u64,
    /// What check failed.
    pub reason: String,
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// A checkpoint was loaded.
    pub checkpoint_used: bool,
    /// Why an existing checkpoint was rejected (the log was replayed in full instead).
    pub checkpoint_error: Option<String>,
    /// Segments read.
    pub segments_scanned: u32,
    /// Records replayed.
    pub records_replayed: u64,
    /// Bytes of log replayed.
    pub bytes_replayed: u64,
    /// Bytes cut from a torn tail of the last segment.
    pub torn_tail_bytes: u64,
    /// Damaged spans (never truncated; skipped and reported).
    pub damaged: Vec<Damage>,
    /// Segments that should exist but do not.
    pub missing_segments: Vec<u32>,
    /// Messages whose record is damaged or missing (also found later, at delivery).
    pub corrupt_messages: Vec<MessageId>,
    /// Why each of `corrupt_messages` was found damaged (what check failed, where).
    pub corrupt_reasons: HashMap<MessageId, String>,
    /// Messages recovered.
    pub messages: usize,
    /// Live recipients recovered.
    pub recipients: usize,
    /// Time taken by open.
    pub duration: Duration,
}

impl RecoveryReport {
    /// Number of damage findings (damaged spans, missing segments, corrupt messages).
    pub fn corrupt_count(&self) -> usize {
        self.damaged.len() + self.missing_segments.len() + self.corrupt_messages.len()
    }

    /// Records a damaged message once (O(1): recovery may find many), keeping the
    /// first reason for the operator.
    pub(crate) fn note_corrupt_message(&mut self, id: MessageId, why: &str) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.corrupt_reasons.entry(id) {
            e.insert(why.to_string());
            self.corrupt_messages.push(id);
        }
    }

    /// Why message `id` was found damaged, if it was.
    pub fn corrupt_reason(&self, id: MessageId) -> Option<&str> {
        self.corrupt_reasons.get(&id).map(String::as_str)
    }
}

struct Builder {
    policy: Concurrency,
    msgs: Vec<MsgShard>,
    sched: Vec<SchedShard>,
    keys: Keys,
    next_gen: u32,
    next_seq: u64,
    /// Sequence number of the last good record (resynchronisation accepts only
    /// records that plausibly follow it).
    last_seq: u64,
    salt: u32,
    checkpoint_used: bool,
    /// A segment header of another format version: (segment, version).
    foreign: Option<(u32, u32)>,
    report: RecoveryReport,
}

impl Builder {
    fn new(policy: Concurrency, now: u32) -> Self {
        Builder {
            policy,
            msgs: (0..SHARDS).map(|_| MsgShard::default()).collect(),
            sched: (0..SHARDS).map(|_| SchedShard::new(now)).collect(),
            keys: Keys::default(),
            next_gen: 1,
            next_seq: 1,
            last_seq: 0,
            salt: 0,
            checkpoint_used: false,
            foreign: None,
            report: RecoveryReport::default(),
        }
    }

    fn apply_message(&mut self, copy: bool, payload: &[u8], seg: u32, off: u64, total: usize) {
        let Some(m) = record::decode_message(payload) else {
            self.report.damaged.push(Damage {
                segment: seg,
                offset: off,
                len: total as u64,
                reason: "message record does not decode".into(),
            });
            return;
        };
        let id = MessageId(m.id);
        let (s, local) = (shard_of(id.slot()), local_of(id.slot()));
        if id.gen() == 0 || local > crate::checkpoint::MAX_SLOT {
            self.report.note_corrupt_message(id, "bad id");
            return;
        }
        self.next_gen = self.next_gen.max(id.gen().wrapping_add(1)).max(1);
        let loc = (seg, off as u32, total as u32);
        let ms = &mut self.msgs[s];
        ms.ensure_slot(local);
        let cur = ms.msgs[local as usize];
        if cur.gen == id.gen() {
            ms.relocate(local, loc); // a copy made by compaction
            return;
        }
        if cur.gen != 0 {
            // Generations only grow, and a slot is reused only after its message
            // finished: a newer generation proves the old message is done even when
            // its final update record was damaged. The newer message wins.
            if (id.gen().wrapping_sub(cur.gen) as i32) < 0 {
                self.report.note_corrupt_message(
                    id,
                    "record of an older message found after its slot was reused",
                );
                return;
            }
            evict(ms, local);
        }
        if copy && self.checkpoint_used {
            // A compaction copy of a message the checkpoint does not hold: the message
            // finished before the copy could matter. Never resurrect it.
            return;
        }
        let mut buckets = Vec::with_capacity(m.rcpts.len());
        for (_, key) in &m.rcpts {
            let k = crate::validate::normalize_key(key).unwrap_or_else(|_| "invalid".into());
            if self.keys.get(&k).is_none() && self.keys.len() >= MAX_BUCKETS as usize {
                self.report
                    .note_corrupt_message(id, "routing key table full");
                return;
            }
            buckets.push(self.keys.intern_into(&k, self.policy, &mut self.sched));
        }
        self.msgs[s].insert(
            local,
            id.gen(),
            loc,
            m.received.min(u32::MAX as u64) as u32,
            &buckets,
        );
    }

    fn apply_update(&mut self, payload: &[u8], seg: u32, off: u64, total: usize) {
        let Some(u) = record::decode_update(payload) else {
            self.report.damaged.push(Damage {
                segment: seg,
                offset: off,
                len: total as u64,
                reason: "update record does not decode".into(),
            });
            return;
        };
        let id = MessageId(u.id);
        let (s, local) = (shard_of(id.slot()), local_of(id.slot()));
        let Some(st) = RcptState::from_u8(u.state) else {
            return;
        };
        if self.msgs[s].get(local, id.gen()).is_none() {
            self.report
                .note_corrupt_message(id, "update for unknown message");
            return;
        }
        let Some(rid) = self.msgs[s].rcpt_index(local, u.idx) else {
            self.report
                .note_corrupt_message(id, "update for unknown recipient");
            return;
        };
        if self.msgs[s].rcpts[rid as usize].state().is_final() {
            return;
        }
        if !u.route.is_empty() {
            if let Ok(k) = crate::validate::normalize_key(u.route) {
                if self.keys.get(&k).is_none() && self.keys.len() >= MAX_BUCKETS as usize {
                    self.report
                        .note_corrupt_message(id, "routing key table full");
                    return;
                }
                let b = self.keys.intern_into(&k, self.policy, &mut self.sched);
                self.msgs[s].rcpts[rid as usize].set_bucket(b);
            }
        }
        let ms = &mut self.msgs[s];
        {
            let r = &mut ms.rcpts[rid as usize];
            r.set_state(st);
            r.set_attempts(u.attempts);
            r.next = u.next;
        }
        if st.is_final() {
            ms.finish_rcpt(rid);
        } else if !u.reason.is_empty() {
            // An empty reason means "unchanged" (operator actions, requeues).
            ms.set_reason_text(rid, u.reason);
        }
    }

    fn good(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Replays one segment from `start`; returns the valid end.
    fn replay(&mut self, seg: u32, data: &[u8], start: usize, is_last: bool) -> usize {
        let mut off = start;
        if start > 0 {
            if let Ok(f) = record::parse(data, self.salt) {
                if let Some((v, _, _)) = record::parse_segment_header(f.payload) {
                    if v != record::FORMAT_VERSION {
                        self.foreign.get_or_insert((seg, v));
                        return 0;
                    }
                }
            }
        }
        if start == 0 {
            match record::parse(data, self.salt) {
                Ok(f) if f.kind == Kind::SegmentHeader => {
                    let h = record::parse_segment_header(f.payload);
                    if let Some((v, _, _)) = h.filter(|h| h.0 != record::FORMAT_VERSION) {
                        self.foreign.get_or_insert((seg, v));
                        return 0;
                    }
                    if h.map(|h| h.1) != Some(seg) || h.map(|h| h.2) != Some(self.salt) {
                        self.report.damaged.push(Damage {
                            segment: seg,
                            offset: 0,
                            len: f.total as u64,
                            reason: "segment header names another segment or queue".into(),
                        });
                    }
                    self.good(f.seq);
                    off = f.total;
                }
                _ => {
                    if is_last && resync(data, 0, self.salt, self.last_seq).is_none() {
                        self.report.torn_tail_bytes += data.len() as u64;
                        return 0;
                    }
                    // Damaged header: fall through to the generic scan, which reports it.
                }
            }
        }
        while off < data.len() {
            match record::parse(&data[off..], self.salt) {
                Ok(f) if f.seq > self.last_seq => {
                    self.report.records_replayed += 1;
                    self.report.bytes_replayed += f.total as u64;
                    self.good(f.seq);
                    match f.kind {
                        Kind::Message => {
                            self.apply_message(false, f.payload, seg, off as u64, f.total)
                        }
                        Kind::MessageCopy => {
                            self.apply_message(true, f.payload, seg, off as u64, f.total)
                        }
                        Kind::RcptUpdate => self.apply_update(f.payload, seg, off as u64, f.total),
                        Kind::SegmentHeader => {}
                    }
                    off += f.total;
                }
                other => {
                    let e = match other {
                        Ok(_) => "sequence number goes backwards".to_string(),
                        Err(e) => format!("{e:?}"),
                    };
                    match resync(data, off, self.salt, self.last_seq) {
                        None if is_last => {
                            // A torn or zero tail: the last batch never became durable.
                            self.report.torn_tail_bytes += (data.len() - off) as u64;
                            return off;
                        }
                        None => {
                            // A sealed segment was fully synced before its successor
                            // existed, so a bad tail here is damage, not a torn write.
                            self.report.damaged.push(Damage {
                                segment: seg,
                                offset: off as u64,
                                len: (data.len() - off) as u64,
                                reason: format!("{e} in sealed segment"),
                            });
                            self.note_suspect(data, off);
                            return data.len();
                        }
                        Some(n) => {
                            self.report.damaged.push(Damage {
                                segment: seg,
                                offset: off as u64,
                                len: (n - off) as u64,
                                reason: e,
                            });
                            self.note_suspect(data, off);
                            off = n;
                        }
                    }
                }
            }
        }
        off
    }

    /// A damaged record that still looks like a message: report the id it names.
    fn note_suspect(&mut self, data: &[u8], off: usize) {
        let h = &data[off..];
        if h.len() >= HEADER_LEN + 8 && h[..4] == MAGIC.to_le_bytes() && matches!(h[12], 2 | 4) {
            let mut idb = [0u8; 8];
            idb.copy_from_slice(&h[HEADER_LEN..HEADER_LEN + 8]);
            let id = MessageId(u64::from_le_bytes(idb));
            self.report
                .note_corrupt_message(id, "damaged message record");
        }
    }

    /// Puts every recovered recipient into its bucket's structures.
    fn schedule(&mut self, now: u32) {
        for (s, ms) in self.msgs.iter_mut().enumerate() {
            for l in 0..ms.msgs.len() {
                let m = ms.msgs[l];
                if m.gen == 0 {
                    continue;
                }
                self.report.messages += 1;
                for rid in m.first..m.first + m.n as u32 {
                    let r = &mut ms.rcpts[rid as usize];
                    let st = match r.state() {
                        RcptState::New | RcptState::Leased | RcptState::Corrupt => RcptState::Ready,
                        s => s,
                    };
                    if st.is_final() {
                        continue;
                    }
                    r.set_state(st);
                    self.report.recipients += 1;
                    let ss = &mut self.sched[shard_of(r.bucket())];
                    let bl = local_of(r.bucket());
                    ss.buckets[bl as usize].shift(RcptState::Delivered, st);
                    let rr = rref(s, rid);
                    match st {
                        RcptState::Ready => ss.buckets[bl as usize].push_ready(rr),
                        RcptState::Deferred => ss.wheel.insert(r.next, rr),
                        RcptState::Failed | RcptState::Expired => ms.bounces.push_back(rr),
                        _ => {}
                    }
                }
            }
            ms.rebuild_free();
        }
        for ss in &mut self.sched {
            for bl in 0..ss.buckets.len() as u32 {
                ss.maybe_ring(bl, now);
            }
        }
    }
}

/// Frees a message whose slot a newer message reuses (its final records were lost).
fn evict(ms: &mut MsgShard, local: u32) {
    let m = ms.msgs[local as usize];
    for rid in m.first..m.first + m.n as u32 {
        if !ms.rcpts[rid as usize].state().is_final() {
            ms.rcpts[rid as usize].set_state(RcptState::Deleted);
            if ms.finish_rcpt(rid) {
                break;
            }
        }
    }
}

/// Finds where replay can resume after damage at `from`: the next aligned offset
/// holding a record that passes every check *and* plausibly follows the last good
/// record — its sequence number is above `last_seq` and at most one more per 24
/// bytes skipped (the smallest record). The cheap header checks run first, so a
/// body full of fake headers costs one CRC only for in-window candidates; and a
/// forged record would also need the queue's secret salt.
fn resync(data: &[u8], from: usize, salt: u32, last_seq: u64) -> Option<usize> {
    let mut o = (from + 1).div_ceil(record::ALIGN) * record::ALIGN;
    let magic = MAGIC.to_le_bytes();
    while o + HEADER_LEN <= data.len() {
        if data[o..o + 4] == magic {
            if let Ok(h) = record::header(&data[o..]) {
                let window = ((o - from) / HEADER_LEN) as u64 + 2;
                if h.seq > last_seq
                    && h.seq <= last_seq.saturating_add(window)
                    && record::parse(&data[o..], salt).is_ok()
                {
                    return Some(o);
                }
            }
        }
        o += record::ALIGN;
    }
    None
}

/// The salt named by the first readable segment header.
fn find_salt(vfs: &dyn crate::vfs::Vfs, dir: &Path, segs: &BTreeSet<u32>) -> Result<Option<u32>> {
    for &seg in segs {
        let data = read_file(vfs, &dir.join(segment_name(seg)))?;
        if let Ok(f) = record::parse(&data, 0) {
            if f.kind == Kind::SegmentHeader {
                if let Some((_, _, salt)) = record::parse_segment_header(f.payload) {
                    return Ok(Some(salt));
                }
            }
        }
    }
    Ok(None)
}

/// A random, non-zero salt for a new queue.
fn new_salt() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into our 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let mut v = u32::from_le_bytes(b);
    if n != 4 {
        // No entropy source: fall back to time and pid (still unknown to senders).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        v = (t ^ (t >> 32) ^ (std::process::id() as u64).wrapping_mul(0x9E37_79B9)) as u32;
    }
    v.max(1)
}

/// Reads a whole file with bounded `pread`s (never a mapping: a bad sector is an
/// `Error::Io` for the operator, not a SIGBUS that kills the MTA).
fn read_file(vfs: &dyn crate::vfs::Vfs, path: &Path) -> Result<Vec<u8>> {
    const CHUNK: usize = 4 << 20;
    let f = vfs
        .open(path, false)
        .map_err(|e| Error::io("open", path, e))?;
    let len = f.len().map_err(|e| Error::io("stat", path, e))?;
    let len = usize::try_from(len).map_err(|_| Error::TooLarge {
        what: "file",
        len: usize::MAX,
        limit: isize::MAX as usize,
    })?;
    let mut buf = vec![0u8; len];
    for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
        f.read_exact_at((i * CHUNK) as u64, chunk)
            .map_err(|e| Error::io("read", path, e))?;
    }
    Ok(buf)
}

/// Opens a queue directory (see [`Queue::open`]).
pub fn open(dir: &Path, opts: Options) -> Result<Queue> {
    let t0 = Instant::now();
    validate_options(&opts)?;
    let vfs = opts.vfs.clone();
    let lock = crate::dir::prepare(&*vfs, dir, opts.allow_network_fs)?;

    let now = now32(&opts);
    let mut b = Builder::new(opts.concurrency, now);
    let names = vfs
        .list(dir)
        .map_err(|e| Error::io("list queue directory", dir, e))?;
    let segs: BTreeSet<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();

    let mut from: Option<crate::log::Pos> = None;
    if names.iter().any(|n| n == CHECKPOINT) {
        let data = read_file(&*vfs, &dir.join(CHECKPOINT))?;
        match checkpoint::decode(
            &data,
            opts.concurrency,
            &mut b.msgs,
            &mut b.sched,
            &mut b.keys,
        ) {
            Ok(l) => {
                b.report.checkpoint_used = true;
                b.checkpoint_used = true;
                b.next_gen = l.next_gen.max(1);
                b.salt = l.salt;
                b.good(l.seq.saturating_sub(1));
                from = Some(l.pos);
            }
            Err(checkpoint::DecodeError::Version(found)) => {
                return Err(Error::Version {
                    path: dir.join(CHECKPOINT),
                    found,
                    supported: checkpoint::VERSION,
                });
            }
            Err(checkpoint::DecodeError::Damaged(why)) => {
                let report = RecoveryReport {
                    checkpoint_error: Some(why),
                    ..Default::default()
                };
                b = Builder::new(opts.concurrency, now);
                b.report = report;
            }
        }
    }

    if !b.checkpoint_used {
        b.salt = match find_salt(&*vfs, dir, &segs)? {
            Some(salt) => salt,
            None => new_salt(),
        };
    }

    // Replay the log from the checkpoint position (or from the start).
    let first_seg = from.map(pos_seg).unwrap_or(0);
    let replay: Vec<u32> = segs.iter().copied().filter(|&s| s >= first_seg).collect();
    if let Some(p) = from {
        // The checkpoint's segment must still exist (it holds the records from the
        // checkpoint position on), also when every later segment is gone too.
        if pos_off(p) > 0 && replay.first() != Some(&pos_seg(p)) {
            b.report.missing_segments.push(pos_seg(p));
        }
    }
    for w in replay.windows(2) {
        for missing in w[0] + 1..w[1] {
            b.report.missing_segments.push(missing);
        }
    }
    let mut active = replay.last().copied().unwrap_or_else(|| {
        from.map(pos_seg)
            .unwrap_or(0)
            .max(segs.last().copied().unwrap_or(0))
            .saturating_add(1)
    });
    let mut active_len = 0u64;
    for (i, &seg) in replay.iter().enumerate() {
        let path = dir.join(segment_name(seg));
        let data = read_file(&*vfs, &path)?;
        let is_last = i + 1 == replay.len();
        let start = match from {
            Some(p) if pos_seg(p) == seg => pos_off(p) as usize,
            _ => 0,
        };
        b.report.segments_scanned += 1;
        if start > data.len() {
            // The filesystem lost data the checkpoint says was durable. Report it, and
            // never append below the checkpoint position (a later replay would skip it).
            b.report.damaged.push(Damage {
                segment: seg,
                offset: data.len() as u64,
                len: (start - data.len()) as u64,
                reason: "segment is shorter than the checkpoint position".into(),
            });
            if is_last {
                active = seg.saturating_add(1);
                active_len = 0;
            }
            continue;
        }
        let end = b.replay(seg, &data, start, is_last);
        if let Some((seg, found)) = b.foreign {
            return Err(Error::Version {
                path: dir.join(segment_name(seg)),
                found,
                supported: record::FORMAT_VERSION,
            });
        }
        if is_last {
            if (end as u64) < data.len() as u64 {
                drop(data);
                let f = vfs
                    .open(&path, false)
                    .map_err(|e| Error::io("open", &path, e))?;
                f.set_len(end as u64)
                    .and_then(|_| f.sync_data())
                    .map_err(|e| Error::io("truncate torn tail", &path, e))?;
            }
            active = seg;
            active_len = end as u64;
        }
    }
    if active_len == 0 {
        // The last segment has no valid record at all: it is recreated empty.
        if replay.last() == Some(&active) {
            let path = dir.join(segment_name(active));
            vfs.remove(&path)
                .map_err(|e| Error::io("remove empty segment", &path, e))?;
        }
    }
    // Messages whose record lives in a segment that is gone.
    for (s, ms) in b.msgs.iter().enumerate() {
        for (l, m) in ms.msgs.iter().enumerate() {
            if m.gen != 0 && !segs.contains(&m.seg) {
                b.report.note_corrupt_message(
                    MessageId::new(m.gen, global(s, l as u32)),
                    "segment missing",
                );
            }
        }
    }
    b.schedule(now);

    let log = Log::open(
        vfs.clone(),
        dir,
        LogStart {
            active,
            len: active_len,
            next_seq: b.next_seq,
            salt: b.salt,
        },
        opts.segment_size,
        opts.outcome_sync_interval,
        opts.outcome_sync_bytes,
        opts.clock.clone(),
    )?;
    let replayed = b.report.bytes_replayed;
    let mut report = b.report;
    report.duration = t0.elapsed();
    let inner = Inner {
        dir: dir.to_path_buf(),
        log,
        gate: RwLock::new(()),
        msgs: b.msgs.into_iter().map(Mutex::new).collect(),
        sched: b.sched.into_iter().map(Mutex::new).collect(),
        keys: RwLock::new(b.keys),
        next_gen: AtomicU32::new(b.next_gen),
        enq_cursor: AtomicUsize::new(0),
        ring_cursor: AtomicUsize::new(0),
        signal: Signal::new().map_err(|e| Error::io("eventfd", dir, e))?,
        counters: Counters::default(),
        report: Mutex::new(report),
        moves: Mutex::new(Vec::new()),
        has_moves: std::sync::atomic::AtomicBool::new(false),
        sync_armed: std::sync::atomic::AtomicU64::new(0),
        slot_limit: AtomicU32::new(crate::checkpoint::MAX_SLOT),
        maint: Mutex::new(Maint {
            last_pos: from.unwrap_or(pos(0, 0)),
            ..Default::default()
        }),
        opts,
        salt: b.salt,
        _lock: lock,
    };
    let q = Queue {
        inner: Arc::new(inner),
    };
    // Persist what recovery rebuilt, so the next open does not pay for it again.
    if replayed > (1 << 20) || q.inner.report.lock().checkpoint_error.is_some() {
        checkpoint::checkpoint(&q.inner)?;
    }
    if q.inner.sched.iter().any(|s| !s.lock().ring.is_empty()) {
        q.inner.wake();
    }
    Ok(q)
}

fn validate_options(o: &Options) -> Result<()> {
    let bad = |s: &str| Err(Error::InvalidOption(s.to_string()));
    if o.segment_size < 4096 || o.segment_size > (1 << 31) {
        return bad("segment_size must be between 4 KiB and 2 GiB");
    }
    if o.max_body > (1 << 30) {
        return bad("max_body must be at most 1 GiB");
    }
    if o.max_recipients == 0 || o.max_recipients > u16::MAX as usize {
        return bad("max_recipients must be between 1 and 65535");
    }
    if o.batch_recipients == 0 || o.deliveries_per_session == 0 {
        return bad("batch_recipients and deliveries_per_session must be at least 1");
    }
    if o.concurrency.limit == 0 {
        return bad("concurrency.limit must be at least 1");
    }
    if !(0.0..=1.0).contains(&o.compact_below) {
        return bad("compact_below must be within 0..=1");
    }
    if o.checkpoint_bytes < 4096 {
        return bad(
            "checkpoint_bytes must be at least 4096 (u64::MAX disables automatic checkpoints)",
        );
    }
    if o.lease_ttl < Duration::from_secs(1) {
        return bad("lease_ttl must be at least 1 s (a session silent for longer loses its slot)");
    }
    if o.min_backoff < Duration::from_secs(1) {
        return bad("min_backoff must be at least 1 s");
    }
    if o.min_backoff > o.max_backoff {
        return bad("min_backoff must not exceed max_backoff");
    }
    if o.lifetime < Duration::from_secs(1) {
        return bad("lifetime must be at least 1 s (Postfix's default is 5 days)");
    }
    if o.lifetime.as_secs() > u32::MAX as u64 || o.max_backoff.as_secs() > u32::MAX as u64 {
        return bad("lifetime and max_backoff must fit in 32-bit seconds");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 20: many damaged messages are recorded in O(1) each (a set, not a
    /// vector scan), once each, with the first reason kept.
    #[test]
    fn corrupt_ids_are_recorded_once_with_their_reason() {
        let mut r = RecoveryReport::default();
        for i in 0..200_000u64 {
            r.note_corrupt_message(MessageId(i), "damaged message record");
            r.note_corrupt_message(MessageId(i), "segment missing");
        }
        assert_eq!(r.corrupt_messages.len(), 200_000);
        assert_eq!(r.corrupt_count(), 200_000);
        assert_eq!(
            r.corrupt_reason(MessageId(123_456)),
            Some("damaged message record")
        );
    }
}
