//! Segments made ahead (`preallocate_segments`): maintenance zero-fills the
//! next segment's file, the log renames it into place when it rolls, commits
//! overwrite its zeros, and recovery reads a tail of zeros as the end of what
//! was written, not as damage, while still noticing records lost before it.
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
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg.pre"))
        .collect()
}

/// Enqueues `n` messages of about 1 KiB, ticking after each (an MTA's event
/// loop), and returns their ids; records whether a file made ahead was seen.
fn fill(q: &Queue, dir: &Path, from: usize, n: usize, seen: &mut bool) -> Vec<MessageId> {
    let body = vec![b'x'; 1000];
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
    q.close().unwrap();
    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    assert_clean(&q);
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

    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    let r = q.recovery_report();
    assert!(
        r.damaged
            .iter()
            .any(|d| d.offset == cut as u64 && d.reason.contains("records were lost")),
        "the gap in sequence numbers is reported where the zeros begin: {:?}",
        r.damaged
    );
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

    let q = Queue::open(dir.path(), options(&clock, true)).unwrap();
    let r = q.recovery_report();
    assert!(r.checkpoint_used);
    assert!(
        r.damaged
            .iter()
            .any(|d| d.offset == cut as u64 && d.reason.contains("before the checkpoint position")),
        "the lost span is reported: {:?}",
        r.damaged
    );
}
