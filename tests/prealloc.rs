//! Segments made ahead (`preallocate_segments`): maintenance zero-fills the
//! next segment's file (or reuses a deleted segment's file), the log renames
//! it into place when it rolls, commits overwrite its zeros (or older
//! records), and recovery reads a tail of zeros (or of older records) as the
//! end of what was written, not as damage, while still noticing records lost
//! before it.
mod common;
use common::*;
use mailq::*;
use std::path::Path;

const SEG: u64 = 64 * 1024;

fn options(clock: &std::sync::Arc<ManualClock>, prealloc: bool) -> Options {
    Options {
        segment_size: SEG,
        checkpoint_bytes: u64::MAX,
        preallocate_segments: prealloc,
        ..opts(clock)
    }
}

fn prepared_files(dir: &Path) -> Vec<String> {
    files_ending(dir, ".seg.pre")
}

/// Enqueues `n` messages of about 1 KiB, ticking after each (an MTA's event
/// loop), and returns their ids; records whether a file made ahead was seen.
fn fill(q: &Queue, dir: &Path, from: usize, n: usize, seen: &mut bool) -> Vec<MessageId> {
    fill_sized(q, dir, from, n, 1000, seen)
}

/// [`fill`] with bodies of `len` bytes.
fn fill_sized(
    q: &Queue,
    dir: &Path,
    from: usize,
    n: usize,
    len: usize,
    seen: &mut bool,
) -> Vec<MessageId> {
    let body = vec![b'x'; len];
    (from..from + n)
        .map(|i| {
            let r = format!("u{i}@d{}.example", i % 7);
            let id = q
                .enqueue(&msg("s@src.example", &[r.as_str()], &body))
                .unwrap();
            q.tick();
            *seen |= !prepared_files(dir).is_empty();
            id
        })
        .collect()
}

/// A queue in a new directory (made ahead or not) filled with `n` messages
/// by [`fill`]: its directory, clock, the queue, the ids, and whether a
/// file made ahead was seen.
struct Filled {
    dir: TempDir,
    clock: std::sync::Arc<ManualClock>,
    q: Queue,
    ids: Vec<MessageId>,
    seen: bool,
}

fn filled(tag: &str, prealloc: bool, n: usize) -> Filled {
    let dir = TempDir::new(tag);
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), options(&clock, prealloc)).unwrap();
    let mut seen = false;
    let ids = fill(&q, dir.path(), 0, n, &mut seen);
    Filled {
        dir,
        clock,
        q,
        ids,
        seen,
    }
}

/// Closes `q` (a checkpoint) and opens its directory again, which must
/// read clean.
fn reopen_clean(q: Queue, dir: &Path, clock: &std::sync::Arc<ManualClock>) -> Queue {
    q.close().unwrap();
    let q = Queue::open(dir, options(clock, true)).unwrap();
    assert_clean(&q);
    q
}

fn assert_clean(q: &Queue) {
    let r = q.recovery_report();
    assert!(r.damaged.is_empty(), "no damage: {:?}", r.damaged);
    assert_eq!(r.torn_tail_bytes, 0, "a tail of zeros is not a torn tail");
    assert!(r.corrupt_messages.is_empty());
}

#[test]
fn segments_are_made_ahead_and_survive_reopen_with_their_zero_tails() {
    let Filled {
        dir,
        clock,
        q,
        mut ids,
        mut seen,
    } = filled("prealloc", true, 300);
    assert!(seen, "tick made the next segment's file ahead");
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 4, "the log rolled several times: {segs:?}");
    for s in &segs[1..] {
        // Every segment after the first was a file made ahead: full size, zeros after its records.
        assert_eq!(std::fs::metadata(s).unwrap().len(), SEG, "{s:?}");
    }
    q.close().unwrap();

    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    assert_clean(&q);
    assert!(
        prepared_files(dir.path()).is_empty(),
        "leftovers removed at open"
    );
    let active = segment_files(dir.path()).pop().unwrap();
    assert_eq!(
        std::fs::metadata(&active).unwrap().len(),
        SEG,
        "the active segment keeps its zeros to write into"
    );
    for id in &ids {
        assert_eq!(q.inspect(*id).unwrap().recipients.len(), 1);
    }
    // Appends continue into the zeros, then across more rolls.
    ids.extend(fill(&q, dir.path(), 300, 200, &mut seen));
    drop(q); // no clean close: recovery finds the tails as the log left them
    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    assert_clean(&q);
    assert_eq!(q.stats().recipients(), 500);
    for id in &ids {
        assert_eq!(q.inspect(*id).unwrap().recipients.len(), 1);
    }
    // Everything delivered: the same queue reads back empty.
    let n = drain(&q, |_, _| Outcome::Delivered);
    assert_eq!(n, 500);
    let q = reopen_clean(q, dir.path(), &clock);
    assert_eq!(q.stats().recipients(), 0);
}

#[test]
fn without_preallocation_no_file_is_made_ahead() {
    let Filled {
        dir, q: _q, seen, ..
    } = filled("prealloc-off", false, 300);
    assert!(!seen);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 4);
    assert!(
        segs.iter()
            .all(|s| std::fs::metadata(s).unwrap().len() < SEG),
        "segments grow with their records"
    );
}

/// Offsets of the records in a segment file, up to its zeros.
fn record_offsets(data: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut off = 0;
    while off + sim::record::HEADER_LEN <= data.len() {
        let Ok(h) = sim::record::header(&data[off..]) else {
            break;
        };
        v.push(off);
        off += sim::record::padded(sim::record::HEADER_LEN + h.len);
    }
    v
}

/// Zeroes a segment file from its second-to-last record on (as a filesystem
/// that lost those blocks would read them back); returns where that is.
fn zero_last_two_records(path: &Path) -> usize {
    let mut data = std::fs::read(path).unwrap();
    let offs = record_offsets(&data);
    assert!(offs.len() > 3);
    let cut = offs[offs.len() - 2];
    data[cut..].fill(0);
    std::fs::write(path, &data).unwrap();
    cut
}

#[test]
fn records_lost_before_a_sealed_segments_zeros_are_reported() {
    let Filled {
        dir, clock, q, ids, ..
    } = filled("prealloc-lost", true, 300);
    drop(q); // no checkpoint: recovery replays every segment
             // The filesystem loses the last two records of a sealed segment: they
             // read as zeros, like the rest of the file made ahead.
    let segs = segment_files(dir.path());
    let cut = zero_last_two_records(&segs[1]);

    // The gap in sequence numbers is reported where the zeros begin.
    let q = opened_with_damage(dir.path(), &clock, cut, "records were lost");
    // The messages of the other segments are all there.
    let present = ids.iter().filter(|id| q.inspect(**id).is_ok()).count();
    assert_eq!(present, ids.len() - 2);
}

#[test]
fn a_file_left_made_ahead_is_removed_at_open_and_the_queue_goes_on() {
    let dir = TempDir::new("prealloc-leftover");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    let id = q
        .enqueue(&msg("s@src.example", &["a@b.example"], b"1"))
        .unwrap();
    q.close().unwrap();
    // A crash while a file was being zero-filled leaves it half made.
    std::fs::write(dir.path().join("00000002.seg.pre"), vec![0u8; 1000]).unwrap();
    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    assert!(prepared_files(dir.path()).is_empty());
    assert_clean(&q);
    assert!(q.inspect(id).is_ok());
    let mut seen = false;
    fill(&q, dir.path(), 0, 150, &mut seen);
    assert!(seen);
}

/// Opens `dir`, whose recovery must report damage at offset `at` for a
/// reason that says `why`.
fn opened_with_damage(
    dir: &Path,
    clock: &std::sync::Arc<ManualClock>,
    at: usize,
    why: &str,
) -> Queue {
    let q = Queue::open(dir, options(clock, true)).unwrap();
    let damaged = &q.recovery_report().damaged;
    assert!(
        damaged
            .iter()
            .any(|d| d.offset == at as u64 && d.reason.contains(why)),
        "reported at {at} ({why}): {damaged:?}"
    );
    q
}

/// Opens `dir` from its checkpoint; what was lost from `cut` on, before the
/// checkpoint position, must be reported there.
fn assert_lost_before_checkpoint(dir: &Path, clock: &std::sync::Arc<ManualClock>, cut: usize) {
    let q = opened_with_damage(dir, clock, cut, "before the checkpoint position");
    assert!(q.recovery_report().checkpoint_used);
}

#[test]
fn zeros_before_the_checkpoint_position_are_reported() {
    let Filled { dir, clock, q, .. } = filled("prealloc-ckpt", true, 150);
    q.checkpoint().unwrap(); // its position is in the active segment, made ahead
    drop(q);
    // The filesystem loses the last two records before that position: they
    // read as zeros, and the file is as long as ever.
    let last = segment_files(dir.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&last).unwrap().len(), SEG);
    let cut = zero_last_two_records(&last);

    assert_lost_before_checkpoint(dir.path(), &clock, cut);
}

/// Names of the files in `dir` that end in `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect()
}

/// Bytes of the deleted segments' files still on disk.
fn spare_bytes(dir: &Path) -> u64 {
    files_ending(dir, ".seg.spare")
        .iter()
        .map(|n| std::fs::metadata(dir.join(n)).unwrap().len())
        .sum()
}

fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

/// Where the records written into a segment file end: at zeros, at a
/// header that is not one, or at an older record than its own header.
fn written_end(data: &[u8]) -> usize {
    let first = sim::record::header(data).unwrap().seq;
    record_offsets(data)
        .into_iter()
        .find(|&o| sim::record::header(&data[o..]).is_ok_and(|h| h.seq < first))
        .unwrap_or_else(|| {
            let offs = record_offsets(data);
            let last = *offs.last().unwrap();
            last + sim::record::padded(
                sim::record::HEADER_LEN + sim::record::header(&data[last..]).unwrap().len,
            )
        })
}

/// The name of the segment after the last one in `dir`.
fn next_segment_name(dir: &Path) -> String {
    let last = segment_files(dir).pop().unwrap();
    let stem = last.file_stem().unwrap().to_str().unwrap();
    format!("{:08x}.seg", u32::from_str_radix(stem, 16).unwrap() + 1)
}

/// A queue filled with `n` messages of `len`-byte bodies, drained, synced
/// and checkpointed: its dead segments are deleted, some of their files
/// kept for reuse (with `prealloc`), the others to be given back.
fn drained(
    tag: &str,
    n: usize,
    len: usize,
    prealloc: bool,
) -> (TempDir, std::sync::Arc<ManualClock>, Queue) {
    let dir = TempDir::new(tag);
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), options(&clock, prealloc)).unwrap();
    fill_sized(&q, dir.path(), 0, n, len, &mut false);
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), n);
    q.sync().unwrap();
    q.checkpoint().unwrap();
    (dir, clock, q)
}

#[test]
fn deleted_segments_files_are_reused_and_their_older_records_read_as_the_end() {
    // Small records: the files kept are full almost to their end.
    let (dir, clock, q) = drained("reuse", 1500, 100, true);
    let spares = files_ending(dir.path(), ".seg.spare");
    assert!(!spares.is_empty(), "dead segments' files kept for reuse");
    let spare_inodes: Vec<u64> = spares.iter().map(|n| inode(&dir.path().join(n))).collect();
    let mut seen = false;
    // Larger records than the files held: they end before older ones do,
    // in the last segment (a kept file) at least.
    let ids = fill_sized(&q, dir.path(), 2000, 70, 2500, &mut seen);
    let segs = segment_files(dir.path());
    let reused: Vec<_> = segs
        .iter()
        .filter(|s| spare_inodes.contains(&inode(s)))
        .collect();
    assert!(!reused.is_empty(), "a kept file became a segment: {segs:?}");
    // (The next segment's file, made ahead, may be one too.)
    let ahead = prepared_files(dir.path())
        .iter()
        .filter(|n| spare_inodes.contains(&inode(&dir.path().join(n))))
        .count();
    assert_eq!(q.stats().segments_reused, (reused.len() + ahead) as u64);
    let mut behind = 0;
    for s in &reused {
        // Not zero-filled first: what the file held before is still there,
        // behind the new records.
        let data = std::fs::read(s).unwrap();
        assert!(data.len() as u64 >= SEG);
        let end = written_end(&data);
        // Each commit wrote whole pages (none was read from disk first):
        // the last one's page is padded with zeros.
        let page_end = end.next_multiple_of(4096);
        assert!(
            data[end..page_end].iter().all(|&b| b == 0),
            "zeros from the end of the records to the end of their page"
        );
        behind += usize::from(data[page_end..].iter().any(|&b| b != 0));
    }
    assert!(behind > 0, "older records follow what was written");
    drop(q); // no clean close: recovery replays the reused files as left
    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    assert_clean(&q);
    assert!(
        files_ending(dir.path(), ".seg.spare").is_empty(),
        "removed at open"
    );
    assert_eq!(q.stats().recipients(), 70);
    for id in &ids {
        assert_eq!(q.inspect(*id).unwrap().recipients.len(), 1);
    }
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 70);
    let q = reopen_clean(q, dir.path(), &clock);
    assert_eq!(q.stats().recipients(), 0);
}

#[test]
fn a_reused_file_whose_own_header_never_became_durable_holds_nothing() {
    let dir = TempDir::new("reuse-header");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    let mut seen = false;
    fill(&q, dir.path(), 0, 150, &mut seen);
    let old = std::fs::read(&segment_files(dir.path())[0]).unwrap();
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 150);
    let ids = fill(&q, dir.path(), 150, 3, &mut seen);
    q.close().unwrap();
    // A crash after a kept file was renamed into place as the next segment,
    // before the header written over its start became durable: it still
    // reads as the old segment it was, records and all.
    std::fs::write(dir.path().join(next_segment_name(dir.path())), &old).unwrap();

    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    assert_clean(&q);
    // The old segment's messages, all delivered, do not come back.
    assert_eq!(q.stats().recipients(), 3);
    for id in &ids {
        assert!(q.inspect(*id).is_ok());
    }
    fill(&q, dir.path(), 200, 150, &mut seen);
    let q = reopen_clean(q, dir.path(), &clock);
    assert_eq!(q.stats().recipients(), 153);
}

/// A queue of 300 messages dropped without a checkpoint (recovery replays
/// every segment), its segment files, and the first one's bytes and record
/// offsets.
struct Replayed {
    dir: TempDir,
    clock: std::sync::Arc<ManualClock>,
    ids: Vec<MessageId>,
    segs: Vec<std::path::PathBuf>,
    first: Vec<u8>,
    fo: Vec<usize>,
}

fn replayed(tag: &str) -> Replayed {
    let Filled {
        dir, clock, q, ids, ..
    } = filled(tag, true, 300);
    drop(q);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 4);
    let first = std::fs::read(&segs[0]).unwrap();
    let fo = record_offsets(&first);
    Replayed {
        dir,
        clock,
        ids,
        segs,
        first,
        fo,
    }
}

impl Replayed {
    /// The first segment's second record (an older one than any later
    /// segment's), from `skip` bytes into it, and what follows it.
    fn older(&self, skip: usize) -> &[u8] {
        &self.first[self.fo[1] + skip..]
    }

    fn open(&self) -> Queue {
        Queue::open(self.dir.path(), options(&self.clock, true)).unwrap()
    }

    /// How many of its messages the queue still has.
    fn present(&self, q: &Queue) -> usize {
        self.ids.iter().filter(|id| q.inspect(**id).is_ok()).count()
    }
}

#[test]
fn an_older_record_followed_by_newer_ones_is_damage_not_the_end() {
    let r = replayed("reuse-damage");
    let older = &r.older(0)[..r.fo[2] - r.fo[1]];
    // A misplaced write: a record of the first segment lands in the middle
    // of the third, whose records go on after it.
    let mut data = std::fs::read(&r.segs[2]).unwrap();
    let at = record_offsets(&data)[5];
    data[at..at + older.len()].copy_from_slice(older);
    std::fs::write(&r.segs[2], &data).unwrap();

    let q = r.open();
    let damaged = q.recovery_report().damaged;
    assert!(
        damaged.iter().any(|d| d.offset == at as u64),
        "reported where it lies: {damaged:?}"
    );
    // Only the records it covers are lost; the rest of that segment is read.
    let present = r.present(&q);
    assert!(present >= r.ids.len() - 2, "{present} of {}", r.ids.len());
}

#[test]
fn a_deleted_segments_file_that_a_delivery_holds_is_not_reused() {
    let dir = TempDir::new("reuse-held");
    let clock = ManualClock::new(T0);
    // Sealed segments are to be 90 % live on average: the emptiest (the
    // first, once d1 is delivered) is then copied out of.
    let o = Options {
        compact_below: 0.9,
        ..options(&clock, true)
    };
    let q = Queue::open(dir.path(), o).unwrap();
    let body = [b'h'; 1000];
    let put = |to: &str| {
        let id = q.enqueue(&msg("s@src.example", &[to], &body)).unwrap();
        q.tick();
        id
    };
    // The first segment: the held message and 40 for d1; then 200 for d2.
    let held = put("a@held.example");
    for i in 0..40 {
        put(&format!("u{i}@d1.example"));
    }
    let first = segment_files(dir.path())[0].clone();
    for i in 0..200 {
        put(&format!("u{i}@d2.example"));
    }
    assert!(segment_files(dir.path()).len() >= 4);
    // A delivery of the held message is in flight: it holds the first
    // segment's file open (the C API streams the body from it).
    let mut s = q.session_for("held.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(d.id(), held);
    let mut s1 = q.session_for("d1.example").unwrap().unwrap();
    while let Some(d1) = s1.next_delivery().unwrap() {
        d1.complete(&[Outcome::Delivered]).unwrap();
    }
    drop(s1);
    q.sync().unwrap();
    // Compaction moves the held message (and what else lives) out of the
    // sparse first segment, which is then deleted: no other segment died,
    // so there is room to keep its file, but a delivery holds it.
    q.checkpoint().unwrap();
    assert!(!first.exists(), "the first segment was deleted");
    assert!(
        files_ending(dir.path(), ".seg.spare").is_empty(),
        "a file a delivery reads from is never kept to be overwritten"
    );
    assert_eq!(&d.body()[..], &body[..]);
    d.complete(&[Outcome::Delivered]).unwrap();
    drop(s);
    // Once nothing holds them, deleted segments' files are kept.
    assert_eq!(drain(&q, |_, _| Outcome::Delivered), 200);
    q.sync().unwrap();
    q.checkpoint().unwrap();
    assert!(!files_ending(dir.path(), ".seg.spare").is_empty());
    let q = reopen_clean(q, dir.path(), &clock);
    assert_eq!(q.stats().recipients(), 0);
}

#[test]
fn a_segment_may_end_inside_an_older_record() {
    let r = replayed("reuse-inside");
    // What a reused file holds past the records written into it: the rest
    // of an older record, and more after it. In a sealed segment (its
    // successor starts at the next sequence number: nothing was lost) and
    // in the last one.
    for s in [&r.segs[1], r.segs.last().unwrap()] {
        let mut data = std::fs::read(s).unwrap();
        let end = written_end(&data);
        let older = r.older(40);
        let n = older.len().min(data.len() - end);
        data[end..end + n].copy_from_slice(&older[..n]);
        std::fs::write(s, &data).unwrap();
    }
    let q = r.open();
    assert_clean(&q);
    assert_eq!(r.present(&q), r.ids.len());
}

/// The last segment's file as recovery will read it: its bytes, where its
/// records end, and the last record's offset and sequence number.
struct Tail {
    path: std::path::PathBuf,
    data: Vec<u8>,
    end: usize,
    last: usize,
    seq: u64,
}

fn tail(dir: &Path) -> Tail {
    let path = segment_files(dir).pop().unwrap();
    let data = std::fs::read(&path).unwrap();
    let end = written_end(&data);
    let last = *record_offsets(&data[..end]).last().unwrap();
    let seq = sim::record::header(&data[last..]).unwrap().seq;
    Tail {
        path,
        data,
        end,
        last,
        seq,
    }
}

#[test]
fn pieces_of_a_batch_cut_short_are_cut_even_after_a_lost_first_sector() {
    let Filled { dir, clock, q, .. } = filled("reuse-torn", true, 150);
    drop(q);
    let mut t = tail(dir.path());
    // A batch cut short: its first sector never reached the disk (it reads
    // as what was there), a later piece did: a newer header, bad checksum.
    let piece = t.end + 512;
    let rec = t.data[t.last..t.end].to_vec();
    t.data[piece..piece + rec.len()].copy_from_slice(&rec);
    t.data[piece + 16..piece + 24].copy_from_slice(&(t.seq + 3).to_le_bytes());
    std::fs::write(&t.path, &t.data).unwrap();

    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    let r = q.recovery_report();
    assert!(r.damaged.is_empty(), "{:?}", r.damaged);
    assert!(r.torn_tail_bytes > 0, "a torn tail, not a clean end");
    // Cut: no piece stays behind to be met again after new records.
    assert_eq!(std::fs::metadata(&t.path).unwrap().len() as usize, t.end);
}

#[test]
fn a_last_record_with_a_flipped_magic_is_a_torn_tail_not_an_end() {
    let Filled { dir, clock, q, .. } = filled("reuse-magic", true, 150);
    drop(q);
    let mut t = tail(dir.path());
    t.data[t.last] ^= 0x10;
    std::fs::write(&t.path, &t.data).unwrap();

    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    assert!(q.recovery_report().torn_tail_bytes > 0, "reported");
}

#[test]
fn bytes_before_the_checkpoint_position_that_are_not_records_are_reported() {
    let Filled { dir, clock, q, .. } = filled("reuse-lost-ckpt", true, 150);
    q.checkpoint().unwrap(); // its position is in the active segment
    drop(q);
    // The filesystem loses the last records before that position, and they
    // read back as a reused file's older bytes would: not at their
    // boundaries.
    let mut t = tail(dir.path());
    let offs = record_offsets(&t.data[..t.end]);
    let cut = offs[offs.len() - 3];
    for (i, b) in t.data[cut..t.end].iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    std::fs::write(&t.path, &t.data).unwrap();

    assert_lost_before_checkpoint(dir.path(), &clock, cut);
}

#[test]
fn kept_files_an_idle_queue_does_not_reuse_are_given_back_after_ten_minutes() {
    let (dir, clock, q) = drained("reuse-idle", 300, 1000, true);
    assert!(!files_ending(dir.path(), ".seg.spare").is_empty());
    // The queue is idle: its next wake-up is when the kept files go.
    let due = q.next_wakeup().expect("a wake-up for the kept files");
    assert!(due <= T0 + 601, "{due}");
    clock.advance(599);
    q.tick();
    assert!(
        !files_ending(dir.path(), ".seg.spare").is_empty(),
        "kept ten minutes"
    );
    clock.advance(2);
    let sizes = || spare_bytes(dir.path());
    let before = sizes();
    q.tick();
    assert!(sizes() < before, "then given back");
    // A piece at a time (an eighth of a segment, 20 ms apart: a file freed
    // whole is one big discard that commits wait behind), each piece a
    // wake-up of its own.
    let mut ticks = 1;
    while !files_ending(dir.path(), ".seg.spare").is_empty() {
        let left = sizes();
        q.tick();
        assert_eq!(sizes(), left, "not before the next piece is due");
        assert!(q.next_timeout().is_some_and(|t| !t.is_zero()));
        clock.advance_millis(20);
        assert_eq!(q.next_timeout(), Some(std::time::Duration::ZERO));
        q.tick();
        assert!(left - sizes() <= SEG / 8, "one piece");
        ticks += 1;
        assert!(ticks < 100, "given back in time");
    }
    assert!(ticks >= 8, "in pieces: {ticks} ticks");
    assert_eq!(q.next_wakeup(), None, "nothing left to wake up for");
    // Segments made ahead are zero-filled again, and the queue goes on.
    let mut seen = false;
    let ids = fill(&q, dir.path(), 5000, 150, &mut seen);
    assert!(seen);
    assert_eq!(q.stats().segments_reused, 0);
    let q = reopen_clean(q, dir.path(), &clock);
    assert_eq!(q.stats().recipients(), ids.len() as u64);
}

#[test]
fn deleted_segments_files_not_kept_are_given_back_in_pieces() {
    // Without preallocation nothing is kept for reuse: each dead segment's
    // file is renamed away at once, then cut by an eighth of a segment per
    // wake-up, 20 ms apart (with online discard, a file freed whole is one
    // big discard every concurrent commit waits behind).
    let (dir, clock, q) = drained("give-back", 600, 1000, false);
    // About ten segments died at once: four are given back in pieces, the
    // oldest deleted whole (a backlog holds at most four segments of disk).
    let files = files_ending(dir.path(), ".seg.spare");
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(q.stats().segments_deleted >= 8);
    let mut left = spare_bytes(dir.path());
    let mut ticks = 0;
    while left > 0 {
        assert_eq!(q.next_timeout(), Some(std::time::Duration::ZERO));
        q.tick();
        let now = spare_bytes(dir.path());
        assert!(left - now <= SEG / 8, "one piece: {left} -> {now}");
        assert!(now < left);
        q.tick();
        assert_eq!(spare_bytes(dir.path()), now, "20 ms apart");
        left = now;
        if ticks == 3 {
            // The clock steps back: the next piece is due at once, not
            // after the step.
            clock.set(T0 - 60);
        } else {
            clock.advance_millis(20);
        }
        ticks += 1;
        assert!(ticks < 1000);
    }
    assert!(ticks >= 8 * files.len() - 1, "{ticks} pieces");
    assert!(files_ending(dir.path(), ".seg.spare").is_empty());
    assert_eq!(q.next_wakeup(), None, "nothing left to wake up for");
    let q = reopen_clean(q, dir.path(), &clock);
    assert_eq!(q.stats().recipients(), 0);
}
