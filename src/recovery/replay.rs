//! Rebuilding the index from plain state: log records replayed in order
//! (with resynchronisation past damage and torn-tail detection) and checkpoint
//! entries, into message shards, bucket tables and routing keys. Depends on
//! `index`, `sched` and `storage` only.

use super::report::{Damage, RecoveryReport};
use crate::index::*;
use crate::sched::{Keys, SchedShard};
use crate::storage::checkpoint::{DecodeError, Decoder, Entries, Header, NO_BUCKET};
use crate::storage::checkpoint_stream::{self, Opened};
use crate::storage::record::{self, Kind, HEADER_LEN, MAGIC};
use crate::storage::vfs::VFile;
use crate::types::*;

/// The state being rebuilt, and what was found on the way.
pub(super) struct Builder {
    pub(super) policy: Concurrency,
    pub(super) msgs: Vec<MsgShard>,
    pub(super) sched: Vec<SchedShard>,
    pub(super) keys: Keys,
    pub(super) next_gen: u32,
    pub(super) next_seq: u64,
    /// Sequence number of the last good record (resynchronisation accepts only
    /// records that plausibly follow it).
    pub(super) last_seq: u64,
    pub(super) salt: u32,
    pub(super) checkpoint_used: bool,
    /// A segment header of another format version: (segment, version).
    pub(super) foreign: Option<(u32, u32)>,
    pub(super) report: RecoveryReport,
    /// Egress sources' warm-up states (the last one read wins).
    pub(super) sources: std::collections::HashMap<String, record::SourceSaved>,
    /// The clock at open (settings re-base timed suspensions against it).
    now: u32,
    /// Records with a lower sequence number may already be in the
    /// checkpoint (its window): an update for a message it does not hold is
    /// one that finished while the snapshot was taken, not damage.
    window_seq: u64,
    /// The last segment replayed ended in zeros (made ahead, never filled):
    /// (segment, offset, last sequence number). Its successor's header must
    /// continue the sequence, else records were lost there.
    pub(super) zero_end: Option<(u32, u64, u64)>,
}

impl Builder {
    pub(super) fn new(policy: Concurrency, now: u32) -> Self {
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
            sources: Default::default(),
            now,
            window_seq: 0,
            zero_end: None,
        }
    }

    pub(super) fn apply_message(
        &mut self,
        copy: bool,
        payload: &[u8],
        seg: u32,
        off: u64,
        total: usize,
    ) {
        let Some(m) = record::decode_message(payload) else {
            self.damaged(seg, off, total, "message record does not decode");
            return;
        };
        let id = MessageId(m.id);
        let (s, local) = (shard_of(id.slot()), local_of(id.slot()));
        if id.gen() == 0 || local > MAX_SLOT {
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

    pub(super) fn apply_update(&mut self, payload: &[u8], seg: u32, off: u64, total: usize) {
        let Some(u) = record::decode_update(payload) else {
            self.damaged(seg, off, total, "update record does not decode");
            return;
        };
        let id = MessageId(u.id);
        let (s, local) = (shard_of(id.slot()), local_of(id.slot()));
        let Some(st) = RcptState::from_u8(u.state) else {
            return;
        };
        if self.msgs[s].get(local, id.gen()).is_none() {
            if self.last_seq >= self.window_seq {
                self.report
                    .note_corrupt_message(id, "update for unknown message");
            } else {
                self.report.window_updates += 1;
            }
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
            let warned = if u.flags & record::UPDATE_WARNED != 0 {
                F_WARNED
            } else {
                0
            };
            r.set_flags((r.flags() & !F_WARNED) | warned);
        }
        if st.is_final() {
            ms.finish_rcpt(rid);
        } else if !u.reason.is_empty() {
            // An empty reason means "unchanged" (operator actions, requeues).
            ms.set_reason_text(rid, u.reason);
        }
    }

    /// A destination's settings (absolute) from a `Destination` record.
    pub(super) fn apply_destination(&mut self, payload: &[u8], seg: u32, off: u64, total: usize) {
        let Some((key, d, paths)) = record::decode_destination(payload) else {
            self.damaged(seg, off, total, "destination record does not decode");
            return;
        };
        let Ok(k) = crate::validate::normalize_key(key) else {
            self.damaged(seg, off, total, "destination record names a bad key");
            return;
        };
        if self.keys.get(&k).is_none() && self.keys.len() >= MAX_BUCKETS as usize {
            self.damaged(seg, off, total, "routing key table full");
            return;
        }
        let b = self.keys.intern_into(&k, self.policy, &mut self.sched);
        self.sched[shard_of(b)].apply_settings(local_of(b), &d, &paths, self.policy, self.now);
    }

    /// An egress source's warm-up state (absolute) from a `Source` record.
    pub(super) fn apply_source(&mut self, payload: &[u8], seg: u32, off: u64, total: usize) {
        let Some((name, st)) = record::decode_source(payload) else {
            self.damaged(seg, off, total, "source record does not decode");
            return;
        };
        self.sources.insert(name.to_string(), st);
    }

    /// Reports a record that passed its checksum but does not decode.
    fn damaged(&mut self, seg: u32, off: u64, total: usize, why: &str) {
        self.report.damaged.push(Damage {
            segment: seg,
            offset: off,
            len: total as u64,
            reason: why.into(),
        });
    }

    pub(super) fn good(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Replays one segment from `start`; returns the valid end.
    pub(super) fn replay(&mut self, seg: u32, data: &[u8], start: usize, is_last: bool) -> usize {
        let mut off = match self.segment_start(seg, data, start, is_last) {
            Ok(off) => off,
            Err(end) => return end,
        };
        while off < data.len() {
            match record::parse(&data[off..], self.salt) {
                Ok(f) if f.seq > self.last_seq => {
                    self.report.records_replayed += 1;
                    self.report.bytes_replayed += f.total as u64;
                    self.good(f.seq);
                    let at = off as u64;
                    match f.kind {
                        Kind::Message => self.apply_message(false, f.payload, seg, at, f.total),
                        Kind::MessageCopy => self.apply_message(true, f.payload, seg, at, f.total),
                        Kind::RcptUpdate => self.apply_update(f.payload, seg, at, f.total),
                        Kind::Destination => self.apply_destination(f.payload, seg, at, f.total),
                        Kind::Source => self.apply_source(f.payload, seg, at, f.total),
                        Kind::SegmentHeader => {}
                    }
                    off += f.total;
                }
                // Zeros to the end: the file was made ahead and filled up to
                // here (a torn write would leave non-zero bytes).
                Err(record::FrameError::Zero) if all_zero(&data[off..]) => {
                    self.zero_end = Some((seg, off as u64, self.last_seq));
                    return off;
                }
                // No record of ours that is not an older one starts here
                // (a batch cut short: a torn tail, cut below) and no newer
                // header anywhere after: the end of what was written. The
                // file was a deleted segment's, reused, and what it held
                // before follows, at boundaries of its own. Like zeros.
                _ if !self.torn_at(data, off) && !newer_header_after(data, off, self.last_seq) => {
                    self.zero_end = Some((seg, off as u64, self.last_seq));
                    return off;
                }
                other => {
                    let e = match other {
                        Ok(_) => "sequence number goes backwards".to_string(),
                        Err(e) => format!("{e:?}"),
                    };
                    match self.skip_damage(seg, data, off, is_last, e) {
                        Some(next) => off = next,
                        None => return if is_last { off } else { data.len() },
                    }
                }
            }
        }
        off
    }

    /// Whether a record of ours that is not an older one starts at `off`,
    /// where replay stopped: our magic without a whole, valid, older record
    /// (a reused file's older records are whole where they start: the new
    /// data ended there), or the next sequence number where the header
    /// keeps it (a flipped magic). A batch cut short by a crash, or damage.
    fn torn_at(&self, data: &[u8], off: usize) -> bool {
        let rest = &data[off..];
        if rest.len() >= 4 && rest[..4] == MAGIC.to_le_bytes() {
            return !record::parse(rest, self.salt).is_ok_and(|f| f.seq <= self.last_seq);
        }
        rest.len() >= HEADER_LEN && rest[16..24] == self.last_seq.saturating_add(1).to_le_bytes()
    }

    /// Checks where replay of a segment starts: a foreign format version stops
    /// recovery; the segment header is checked at offset 0 (a torn first record of
    /// the last segment ends it). `Err(end)` ends the segment at once.
    fn segment_start(
        &mut self,
        seg: u32,
        data: &[u8],
        start: usize,
        is_last: bool,
    ) -> Result<usize, usize> {
        let head = record::parse(data, self.salt);
        // From offset 0 only a segment header names a version; from a checkpoint
        // position, whatever record starts the file is checked.
        let version = head
            .as_ref()
            .ok()
            .filter(|f| start > 0 || f.kind == Kind::SegmentHeader)
            .and_then(|f| record::parse_segment_header(f.payload))
            .map(|h| h.0);
        if let Some(v) = version.filter(|&v| !record::format_supported(v)) {
            self.foreign.get_or_insert((seg, v));
            return Err(0);
        }
        if start > 0 {
            return Ok(start);
        }
        if all_zero(data) {
            // A file made ahead whose first record never became durable (or
            // an empty one): nothing was written to it.
            self.zero_end = Some((seg, 0, self.last_seq));
            return Err(0);
        }
        match head {
            // A deleted segment's file reused for this one, whose own header
            // never became durable: nothing was written to it.
            Ok(f)
                if f.kind == Kind::SegmentHeader
                    && f.seq <= self.last_seq
                    && record::parse_segment_header(f.payload)
                        .is_some_and(|h| h.1 < seg && h.2 == self.salt) =>
            {
                self.zero_end = Some((seg, 0, self.last_seq));
                Err(0)
            }
            Ok(f) if f.kind == Kind::SegmentHeader => {
                let h = record::parse_segment_header(f.payload);
                if h.map(|h| h.1) != Some(seg) || h.map(|h| h.2) != Some(self.salt) {
                    self.report.damaged.push(Damage {
                        segment: seg,
                        offset: 0,
                        len: f.total as u64,
                        reason: "segment header names another segment or queue".into(),
                    });
                }
                self.good(f.seq);
                Ok(f.total)
            }
            _ if is_last && resync(data, 0, self.salt, self.last_seq).is_none() => {
                self.report.torn_tail_bytes += data.len() as u64;
                Err(0)
            }
            // Damaged header: the generic scan reports it.
            _ => Ok(0),
        }
    }

    /// A record at `off` failed (`e`): reports the damage and returns where replay
    /// resumes, or `None` when nothing valid follows (then the rest of the last
    /// segment is a torn tail, and the rest of a sealed one is damage).
    fn skip_damage(
        &mut self,
        seg: u32,
        data: &[u8],
        off: usize,
        is_last: bool,
        e: String,
    ) -> Option<usize> {
        let next = resync(data, off, self.salt, self.last_seq);
        match next {
            None if is_last => {
                // A torn tail: the last batch never became durable. All of
                // it is cut, zeros after it included (they were a file made
                // ahead: that segment then grows as without one).
                self.report.torn_tail_bytes += (data.len() - off) as u64;
                return None;
            }
            // A sealed segment was fully synced before its successor existed, so a
            // bad tail here is damage, not a torn write.
            None => self.report.damaged.push(Damage {
                segment: seg,
                offset: off as u64,
                len: (data.len() - off) as u64,
                reason: format!("{e} in sealed segment"),
            }),
            Some(n) => self.report.damaged.push(Damage {
                segment: seg,
                offset: off as u64,
                len: (n - off) as u64,
                reason: e,
            }),
        }
        self.note_suspect(data, off);
        next
    }

    /// A damaged record that still looks like a message: report the id it names.
    pub(super) fn note_suspect(&mut self, data: &[u8], off: usize) {
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
    pub(super) fn schedule(&mut self, now: u32) {
        // Each ready queue is sized once: grown by pushes, a destination
        // holding millions would be copied dozens of times.
        let mut ready: Vec<Vec<u32>> = self
            .sched
            .iter()
            .map(|ss| vec![0; ss.buckets.len()])
            .collect();
        for ms in &self.msgs {
            for m in ms.msgs.iter().filter(|m| m.gen != 0) {
                for rid in m.first..m.first + m.n as u32 {
                    let r = &ms.rcpts[rid as usize];
                    if matches!(
                        r.state(),
                        RcptState::New | RcptState::Leased | RcptState::Corrupt | RcptState::Ready
                    ) {
                        if let Some(c) =
                            ready[shard_of(r.bucket())].get_mut(local_of(r.bucket()) as usize)
                        {
                            *c += 1;
                        }
                    }
                }
            }
        }
        for (ss, counts) in self.sched.iter_mut().zip(&ready) {
            for (b, &n) in ss.buckets.iter_mut().zip(counts) {
                b.ready.reserve_exact(n as usize);
            }
        }
        drop(ready);
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
                    let rr = RcptRef::new(s, rid);
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

/// Whether every byte is zero (a file made ahead reads so past its records);
/// word-wise and without early exit per byte, so tens of MiB take
/// milliseconds.
pub(super) fn all_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(4096);
    chunks.all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// How the records before the checkpoint position read back.
pub(super) enum Before {
    /// Their headers lead from the segment's start to the position.
    Whole,
    /// Zeros, or a header older than the segment's own, from this offset:
    /// the filesystem lost bytes the checkpoint says were written (a file
    /// made ahead is as long as a full segment, so a shorter file no longer
    /// shows it).
    Lost(usize),
    /// A header that is not one (or one whose record runs past the
    /// position) at this offset: damage, or lost bytes that read back as a
    /// reused file's older ones, which keep their own boundaries.
    Broken(usize),
}

/// Walks the record headers of a segment from its start to `start` (no
/// checksums): see [`Before`].
pub(super) fn before(data: &[u8], start: usize) -> Before {
    let mut off = 0;
    let mut first = None;
    while off < start.min(data.len()) {
        match record::header(&data[off..]) {
            Ok(h) if h.seq < *first.get_or_insert(h.seq) => return Before::Lost(off),
            Ok(h) if off + record::padded(HEADER_LEN + h.len) > start => {
                return Before::Broken(off)
            }
            Ok(h) => off += record::padded(HEADER_LEN + h.len),
            Err(record::FrameError::Zero) => return Before::Lost(off),
            Err(_) => return Before::Broken(off),
        }
    }
    Before::Whole
}

/// Whether a header of ours newer than `last_seq` lies at an aligned offset
/// from `from` on (no checksums: a piece of a batch cut short counts).
fn newer_header_after(data: &[u8], from: usize, last_seq: u64) -> bool {
    find_header(data, from, |_, h| h.seq > last_seq).is_some()
}

/// The first aligned offset from `from` on holding our magic and a header
/// (no checksum checked) that `want` accepts, given its offset.
fn find_header(
    data: &[u8],
    from: usize,
    mut want: impl FnMut(usize, &record::Header) -> bool,
) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut o = from.div_ceil(record::ALIGN) * record::ALIGN;
    while o + HEADER_LEN <= data.len() {
        if data[o..o + 4] == magic && record::header(&data[o..]).is_ok_and(|h| want(o, &h)) {
            return Some(o);
        }
        o += record::ALIGN;
    }
    None
}

/// Finds where replay can resume after damage at `from`: the next aligned offset
/// holding a record that passes every check *and* plausibly follows the last good
/// record — its sequence number is above `last_seq` and at most one more per 24
/// bytes skipped (the smallest record). The cheap header checks run first, so a
/// body full of fake headers costs one CRC only for in-window candidates; and a
/// forged record would also need the queue's secret salt.
fn resync(data: &[u8], from: usize, salt: u32, last_seq: u64) -> Option<usize> {
    find_header(data, from + 1, |o, h| {
        let window = ((o - from) / HEADER_LEN) as u64 + 2;
        h.seq > last_seq
            && h.seq <= last_seq.saturating_add(window)
            && record::parse(&data[o..], salt).is_ok()
    })
}

impl Builder {
    /// Loads the checkpoint file `f` into the empty state: format 5
    /// streamed through a bounded buffer once its checksum matched, older
    /// ones whole. On error the state is partial and must be discarded.
    pub(super) fn load_checkpoint(&mut self, f: &dyn VFile) -> Result<Header, DecodeError> {
        let (h, next_gen) = match checkpoint_stream::open(f)? {
            Opened::Whole(buf) => {
                let (h, mut d) = Decoder::open(&buf)?;
                let remap = self.load_tables(&mut d)?;
                self.load_shards(&mut d, &remap)?;
                d.end()?;
                (h, h.next_gen)
            }
            Opened::Streamed {
                header: h,
                tables,
                shards: mut d,
            } => {
                // The tables, written last, come first: recipients name
                // their buckets by the key ids they hold.
                let mut t = Decoder::section(&tables, d.version());
                let remap = self.load_tables(&mut t)?;
                let w = t.window()?;
                t.end()?;
                if w.seq < h.seq {
                    return Err(DecodeError::from("window ends before the position"));
                }
                self.window_seq = w.seq;
                self.load_shards(&mut d, &remap)?;
                d.end()?;
                (h, w.next_gen)
            }
        };
        self.checkpoint_used = true;
        self.report.checkpoint_used = true;
        self.next_gen = next_gen.max(1);
        self.salt = h.salt;
        self.good(h.seq.saturating_sub(1));
        Ok(h)
    }

    /// Reads the keys, destination settings and sources; returns the bucket
    /// each key index got (`NO_BUCKET` for a free id of version 5).
    fn load_tables(&mut self, d: &mut Decoder<'_>) -> Result<Vec<u32>, DecodeError> {
        let nkeys = d.count()?;
        if nkeys > MAX_BUCKETS {
            return Err(DecodeError::from("too many routing keys"));
        }
        let mut remap = Vec::with_capacity(nkeys as usize);
        for _ in 0..nkeys {
            let k = d.text()?;
            if k.is_empty() && d.version() >= 5 {
                remap.push(NO_BUCKET);
                continue;
            }
            if self.keys.get(k).is_some() {
                return Err(DecodeError::from("duplicate routing key"));
            }
            remap.push(self.keys.intern_into(k, self.policy, &mut self.sched));
        }
        for _ in 0..d.destinations()? {
            let (k, ds, paths) = d.destination()?;
            let b = match remap.get(k as usize) {
                Some(&b) if b != NO_BUCKET => b,
                _ => return Err(DecodeError::from("destination out of range")),
            };
            self.sched[shard_of(b)].apply_settings(local_of(b), &ds, &paths, self.policy, self.now);
        }
        for _ in 0..d.sources()? {
            let (name, st) = d.source()?;
            self.sources.insert(name.to_string(), st);
        }
        Ok(remap)
    }

    /// Loads every shard: since version 5 each as pieces, each flagged 1,
    /// then 0.
    fn load_shards(&mut self, d: &mut impl Entries, remap: &[u32]) -> Result<(), DecodeError> {
        for s in 0..SHARDS {
            if d.version() < 5 {
                self.load_shard(d, s, remap)?;
                continue;
            }
            loop {
                match d.count()? {
                    0 => break,
                    1 => self.load_shard(d, s, remap)?,
                    _ => return Err(DecodeError::from("bad piece marker")),
                }
            }
        }
        Ok(())
    }

    /// Loads one shard (before version 5) or one piece of one.
    fn load_shard(
        &mut self,
        d: &mut impl Entries,
        s: usize,
        remap: &[u32],
    ) -> Result<(), DecodeError> {
        let nr = d.count()?;
        let mut reasons = Vec::with_capacity(nr.min(1 << 16) as usize);
        for _ in 0..nr {
            reasons.push(d.text()?.to_owned());
        }
        let ms = &mut self.msgs[s];
        // Scratch, reused for every message.
        let (mut rcpts, mut buckets): (Vec<(RcptState, _)>, Vec<u32>) = (Vec::new(), Vec::new());
        for _ in 0..d.count()? {
            let m = d.message()?;
            let id = MessageId(m.id);
            if shard_of(id.slot()) != s || id.gen() == 0 || m.rcpts == 0 {
                return Err(DecodeError::from("message in wrong shard"));
            }
            let local = local_of(id.slot());
            if local > MAX_SLOT {
                return Err(DecodeError::from("slot out of range"));
            }
            ms.ensure_slot(local);
            if ms.msgs[local as usize].gen != 0 {
                return Err(DecodeError::from("duplicate message"));
            }
            rcpts.clear();
            for _ in 0..m.rcpts {
                let mut r = d.rcpt()?;
                let st = RcptState::from_u8(r.state).ok_or("malformed contents")?;
                // A final recipient's bucket is never used (its own may be
                // freed); a waiting one must name a key.
                r.bucket = match remap.get(r.bucket as usize) {
                    Some(&b) if b != NO_BUCKET => b,
                    _ if st.is_final() => 0,
                    _ => return Err(DecodeError::from("reference out of range")),
                };
                if r.reason as usize > reasons.len() {
                    return Err(DecodeError::from("reference out of range"));
                }
                rcpts.push((st, r));
            }
            buckets.clear();
            buckets.extend(rcpts.iter().map(|(_, r)| r.bucket));
            ms.insert(local, id.gen(), m.loc, m.received, &buckets);
            let first = ms.msgs[local as usize].first;
            for (i, &(st, r)) in rcpts.iter().enumerate() {
                let rid = first + i as u32;
                let rc = &mut ms.rcpts[rid as usize];
                rc.set_state(st);
                rc.set_attempts(r.attempts);
                rc.next = r.next;
                if r.warned {
                    rc.set_flags(rc.flags() | F_WARNED);
                }
                if r.reason != 0 {
                    ms.set_reason_text(rid, &reasons[r.reason as usize - 1]);
                }
                if st.is_final() {
                    ms.finish_rcpt(rid);
                }
            }
        }
        Ok(())
    }
}
