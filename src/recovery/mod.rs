//! Opening a queue directory after a clean stop or a crash: lock and
//! filesystem checks, checkpoint load, log replay with torn-tail truncation,
//! damage reporting. Returns a plain [`Recovered`] value (the index, the bucket
//! tables, where the log continues) that the engine is built from; never a
//! queue. The crash-safety rules are in `docs/design.md` ("Recovery").
//! Depends on `index`, `sched` and `storage`.

mod files;
mod replay;
mod report;

pub use report::{Damage, RecoveryReport};

use crate::error::{Error, Result};
use crate::index::{global, MsgShard};
use crate::sched::{Keys, SchedShard};
use crate::storage::checkpoint::{DecodeError, CHECKPOINT, VERSION};
use crate::storage::log::{
    is_prepared_name, is_spare_name, parse_segment_name, segment_name, LogStart, Pos,
};
use crate::storage::record;
use crate::storage::vfs::Vfs;
use crate::types::{MessageId, Options};
use files::{find_salt, new_salt, read_into};
use replay::Builder;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

/// The state recovered from a queue directory.
pub struct Recovered {
    /// Message shards, recipients scheduled.
    pub msgs: Vec<MsgShard>,
    /// Bucket tables, ready rings filled.
    pub sched: Vec<SchedShard>,
    /// Routing keys.
    pub keys: Keys,
    /// Next message generation.
    pub next_gen: u32,
    /// Where the log continues.
    pub log: LogStart,
    /// Position of the checkpoint loaded (the start of the log if none).
    pub checkpoint_pos: Pos,
    /// What was found.
    pub report: RecoveryReport,
    /// Egress sources' warm-up states, by name.
    pub sources: std::collections::HashMap<String, crate::storage::record::SourceSaved>,
    /// The directory lock, held for the queue's lifetime.
    pub lock: Box<dyn std::any::Any + Send + Sync>,
}

/// Recovers the queue in `dir` (see [`crate::Queue::open`]); `now` is the
/// clock's current time in seconds.
pub fn open(dir: &Path, opts: &Options, now: u32) -> Result<Recovered> {
    let t0 = Instant::now();
    let vfs = &*opts.vfs;
    let lock = crate::storage::dir::prepare(vfs, dir, opts.allow_network_fs)?;
    let names = vfs
        .list(dir)
        .map_err(|e| Error::io("list queue directory", dir, e))?;
    let segs: BTreeSet<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    // Files made ahead for segments never reached hold nothing, and files of
    // deleted segments kept for reuse hold nothing live: the log makes new
    // ones when it wants them.
    // Best effort: one that cannot be removed is harmless (never read).
    for n in names
        .iter()
        .filter(|n| is_prepared_name(n) || is_spare_name(n))
    {
        let _ = vfs.remove(&dir.join(n));
    }
    let mut b = Builder::new(opts.concurrency, now);
    let from = if names.iter().any(|n| n == CHECKPOINT) {
        load_checkpoint(&mut b, vfs, dir, opts, now)?
    } else {
        None
    };
    if !b.checkpoint_used {
        b.salt = match find_salt(vfs, dir, &segs)? {
            Some(salt) => salt,
            None => new_salt(),
        };
    }
    let log = replay_log(&mut b, vfs, dir, &segs, from)?;
    report_lost_messages(&mut b, &segs);
    b.schedule(now);
    let mut report = b.report;
    report.duration = t0.elapsed(); // the engine adds opening the log
    Ok(Recovered {
        msgs: b.msgs,
        sched: b.sched,
        keys: b.keys,
        next_gen: b.next_gen,
        log: LogStart {
            next_seq: b.next_seq,
            salt: b.salt,
            ..log
        },
        checkpoint_pos: from.unwrap_or(Pos::new(0, 0)),
        report,
        sources: b.sources,
        lock,
    })
}

/// Loads the checkpoint; returns the position to replay from. A damaged
/// checkpoint leaves `b` empty (the whole log is replayed); one of another
/// version is refused.
fn load_checkpoint(
    b: &mut Builder,
    vfs: &dyn Vfs,
    dir: &Path,
    opts: &Options,
    now: u32,
) -> Result<Option<Pos>> {
    let path = dir.join(CHECKPOINT);
    let f = vfs
        .open(&path, false)
        .map_err(|e| Error::io("open", &path, e))?;
    match b.load_checkpoint(&*f) {
        Ok(h) => Ok(Some(Pos::from_raw(h.pos))),
        Err(DecodeError::Io(e)) => Err(Error::io("read", &path, e)),
        Err(DecodeError::Version(found)) => Err(Error::Version {
            path: dir.join(CHECKPOINT),
            found,
            supported: VERSION,
        }),
        Err(DecodeError::Damaged(why)) => {
            *b = Builder::new(opts.concurrency, now);
            b.report.checkpoint_error = Some(why);
            Ok(None)
        }
    }
}

/// Segments to replay from `from` on; gaps (and a missing checkpoint segment)
/// are reported.
fn segments_to_replay(b: &mut Builder, segs: &BTreeSet<u32>, from: Option<Pos>) -> Vec<u32> {
    let first_seg = from.map(Pos::seg).unwrap_or(0);
    let replay: Vec<u32> = segs.iter().copied().filter(|&s| s >= first_seg).collect();
    if let Some(p) = from {
        // The checkpoint's segment must still exist (it holds the records from the
        // checkpoint position on), also when every later segment is gone too.
        if p.off() > 0 && replay.first() != Some(&p.seg()) {
            b.report.missing_segments.push(p.seg());
        }
    }
    for w in replay.windows(2) {
        for missing in w[0] + 1..w[1] {
            b.report.missing_segments.push(missing);
        }
    }
    replay
}

/// Replays the log and returns where appends continue (active segment and its
/// valid length; sequence and salt are filled in by the caller). A torn tail of
/// the last segment is cut; an empty last segment is removed to be recreated.
fn replay_log(
    b: &mut Builder,
    vfs: &dyn Vfs,
    dir: &Path,
    segs: &BTreeSet<u32>,
    from: Option<Pos>,
) -> Result<LogStart> {
    let replay = segments_to_replay(b, segs, from);
    let mut active = replay.last().copied().unwrap_or_else(|| {
        from.map(Pos::seg)
            .unwrap_or(0)
            .max(segs.last().copied().unwrap_or(0))
            .saturating_add(1)
    });
    let mut active_len = 0u64;
    let mut buf = Vec::new();
    for (i, &seg) in replay.iter().enumerate() {
        let path = dir.join(segment_name(seg));
        let data = read_into(vfs, &path, &mut buf, usize::MAX)?;
        let is_last = i + 1 == replay.len();
        let start = match from {
            Some(p) if p.seg() == seg => p.off() as usize,
            _ => 0,
        };
        b.report.segments_scanned += 1;
        check_zero_end(b, seg, data, start);
        let written = match replay::before(data, start) {
            replay::Before::Whole => data.len(),
            replay::Before::Lost(at) => at,
            replay::Before::Broken(at) => {
                b.report.damaged.push(Damage {
                    segment: seg,
                    offset: at as u64,
                    len: (start - at) as u64,
                    reason: "the records before the checkpoint position do not read back as written (damaged, or lost by the filesystem)".into(),
                });
                data.len()
            }
        };
        if start > written {
            report_short_segment(b, seg, written, data.len(), start);
            if is_last {
                // Never append below the checkpoint position (a later replay would skip it).
                active = seg.saturating_add(1);
                active_len = 0;
            }
            continue;
        }
        let end = b.replay(seg, data, start, is_last);
        if let Some((seg, found)) = b.foreign {
            return Err(Error::Version {
                path: dir.join(segment_name(seg)),
                found,
                supported: record::FORMAT_VERSION,
            });
        }
        if is_last {
            let old_format = segment_version(data).is_some_and(|v| v < record::FORMAT_VERSION);
            // A tail of zeros, or of a reused file's older records, is the
            // rest of a file made ahead: kept, the log writes over it. A torn
            // tail is cut.
            let clean = b.zero_end.is_some_and(|z| (z.0, z.1) == (seg, end as u64));
            if !clean && !replay::all_zero(&data[end..]) {
                truncate(vfs, &path, end as u64)?;
            }
            active = seg;
            active_len = end as u64;
            if old_format && end > 0 {
                // Records of this format go to a segment whose header says so,
                // so that an older build refuses the directory (Error::Version)
                // instead of taking them for damage.
                active = seg.saturating_add(1);
                active_len = 0;
            }
        }
    }
    if active_len == 0 && replay.last() == Some(&active) {
        // The last segment has no valid record at all: it is recreated empty.
        let path = dir.join(segment_name(active));
        vfs.remove(&path)
            .map_err(|e| Error::io("remove empty segment", &path, e))?;
    }
    Ok(LogStart {
        active,
        len: active_len,
        next_seq: 0,
        salt: 0,
    })
}

/// After a segment that ended in zeros (or in a reused file's older
/// records), its successor's header must carry
/// the next sequence number: a sealed segment was synced whole before its
/// successor was created, so a gap means the filesystem lost records that
/// were acknowledged (reported as damage, where the zeros begin).
fn check_zero_end(b: &mut Builder, seg: u32, data: &[u8], start: usize) {
    let Some((prev, at, last)) = b.zero_end.take() else {
        return;
    };
    if prev.checked_add(1) != Some(seg) || start != 0 {
        return;
    }
    if let Ok(f) = record::parse(data, b.salt) {
        // (A header naming an older segment is a reused file's: its own
        // header never became durable, and nothing was written to it.)
        let own = record::parse_segment_header(f.payload).is_some_and(|h| h.1 == seg);
        if f.kind == record::Kind::SegmentHeader && own && f.seq != last.saturating_add(1) {
            b.report.damaged.push(Damage {
                segment: prev,
                offset: at,
                len: 0,
                reason: format!(
                    "segment ends in zeros or older records, but its successor starts at sequence {} instead of {}: records were lost",
                    f.seq,
                    last.saturating_add(1)
                ),
            });
        }
    }
}

/// The format version in a segment's header record, if it has a valid one.
fn segment_version(data: &[u8]) -> Option<u32> {
    let f = record::parse(data, 0).ok()?;
    if f.kind != record::Kind::SegmentHeader {
        return None;
    }
    record::parse_segment_header(f.payload).map(|h| h.0)
}

/// The filesystem lost data the checkpoint says was durable.
fn report_short_segment(b: &mut Builder, seg: u32, len: usize, data_len: usize, start: usize) {
    b.report.damaged.push(Damage {
        segment: seg,
        offset: len as u64,
        len: (start - len) as u64,
        reason: if len < data_len {
            "segment reads zeros or older records before the checkpoint position".into()
        } else {
            "segment is shorter than the checkpoint position".into()
        },
    });
}

/// Cuts a torn tail: the last batch never became durable.
fn truncate(vfs: &dyn Vfs, path: &Path, end: u64) -> Result<()> {
    let f = vfs
        .open(path, false)
        .map_err(|e| Error::io("open", path, e))?;
    f.set_len(end)
        .and_then(|_| f.sync_data())
        .map_err(|e| Error::io("truncate torn tail", path, e))
}

/// Reports messages whose record lives in a segment that is gone.
fn report_lost_messages(b: &mut Builder, segs: &BTreeSet<u32>) {
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
