//! A delivery session reads the records of the next messages in its
//! destination's ready queue ahead, in few reads: those records must be the
//! right ones whatever happens between the read and the delivery (the
//! operator deletes a message, compaction moves them and removes their
//! segment), and the reads must stay few.

mod common;
use common::*;
use mailq::sim::SimFs;
use mailq::*;

/// A body of about 400 bytes naming its message.
fn body(tag: &str) -> Vec<u8> {
    format!("{tag}:{}", "x".repeat(400)).into_bytes()
}

/// Takes every delivery of the session ([`deliver`]) and returns the tags.
fn take_all(s: &mut Session) -> Vec<String> {
    let mut tags = Vec::new();
    while let Some(d) = s.next_delivery().unwrap() {
        tags.push(deliver(d));
    }
    tags
}

/// Checks that a delivery is the message its recipient names (address and
/// body), completes it and returns its tag.
fn deliver(d: Delivery<'_>) -> String {
    let tag = d.recipients()[0].split('@').next().unwrap().to_string();
    assert_eq!(d.body(), &body(&tag)[..], "the record of another message");
    d.complete(&[Outcome::Delivered]).unwrap();
    tag
}

/// `n` messages to a.example and `n` to b.example, interleaved in the log.
fn interleaved(q: &Queue, n: usize) -> Vec<MessageId> {
    let mut a = Vec::new();
    for i in 0..n {
        for d in ["a", "b"] {
            let tag = format!("{d}{i}");
            let id = q
                .enqueue(&msg(
                    "s@src.example",
                    &[&format!("{tag}@{d}.example")],
                    &body(&tag),
                ))
                .unwrap();
            if d == "a" {
                a.push(id);
            }
        }
    }
    a
}

/// A queue on a simulated filesystem that counts file operations, with a
/// clock that does not move (completions stay buffered) and no automatic
/// maintenance.
fn counted() -> (SimFs, Queue) {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let o = Options {
        vfs: fs.vfs(),
        auto_maintenance: false,
        ..opts(&clock)
    };
    let q = Queue::open("/q", o).unwrap();
    (fs, q)
}

#[test]
fn a_session_reads_the_records_of_its_destination_in_few_reads() {
    let (fs, q) = counted();
    interleaved(&q, 64);
    let mut s = q.session_for("a.example").unwrap().unwrap();
    let before = fs.ops();
    let tags = take_all(&mut s);
    let ops = fs.ops() - before;
    let want: Vec<String> = (0..64).map(|i| format!("a{i}")).collect();
    assert_eq!(tags, want);
    // 64 records about 900 bytes apart (b.example's between them), 32 read
    // ahead at a time: a few reads, where one per record would be 64 (and
    // the completions stay buffered: the clock does not move).
    assert!(ops <= 6, "{ops} file operations for 64 deliveries");
}

#[test]
fn a_message_delivered_in_several_batches_is_read_once() {
    let (fs, q) = counted();
    // 120 recipients at one destination: three deliveries of 50, 50, 20.
    let rcpts: Vec<String> = (0..120).map(|i| format!("u{i}@a.example")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let big = q.enqueue(&msg("s@src.example", &refs, b"big")).unwrap();
    interleaved(&q, 8);
    let mut s = q.session_for("a.example").unwrap().unwrap();
    let before = fs.ops();
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let d = s.next_delivery().unwrap().unwrap();
        assert_eq!(d.id(), big);
        sizes.push(d.recipients().len());
        let n = d.recipients().len();
        d.complete(&vec![Outcome::Delivered; n]).unwrap();
    }
    assert_eq!(sizes, [50, 50, 20]);
    assert_eq!(fs.ops() - before, 1, "one read for the three deliveries");
    assert_eq!(take_all(&mut s).len(), 8);
}

#[test]
fn sessions_sharing_a_destination_share_its_reads() {
    let (fs, q) = counted();
    interleaved(&q, 64);
    let mut ss: Vec<Session> = (0..4)
        .map(|_| q.session_for("a.example").unwrap().unwrap())
        .collect();
    let before = fs.ops();
    let mut tags = Vec::new();
    for i in 0..64 {
        tags.push(deliver(ss[i % 4].next_delivery().unwrap().unwrap()));
    }
    let ops = fs.ops() - before;
    let want: Vec<String> = (0..64).map(|i| format!("a{i}")).collect();
    assert_eq!(tags, want);
    // Four sessions taking turns: each reading ahead on its own would read
    // every record four times over (the others deliver most of what it
    // read); the shared blocks read the stretch about once.
    assert!(ops <= 4, "{ops} file operations for 64 deliveries");
}

#[test]
fn a_message_deleted_after_its_record_was_read_ahead_is_not_delivered() {
    let dir = TempDir::new("ahead-delete");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    let a = interleaved(&q, 10);
    let mut s = q.session_for("a.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(d.id(), a[0]);
    d.complete(&[Outcome::Delivered]).unwrap();
    // The next records are in the session's read-ahead now.
    assert_eq!(q.delete(a[4]).unwrap(), 1);
    let tags = take_all(&mut s);
    let want: Vec<String> = [1, 2, 3, 5, 6, 7, 8, 9]
        .iter()
        .map(|i| format!("a{i}"))
        .collect();
    assert_eq!(tags, want);
}

#[test]
fn records_read_ahead_and_then_moved_by_compaction_are_read_where_they_went() {
    let dir = TempDir::new("ahead-compact");
    let clock = ManualClock::new(T0);
    let o = Options {
        segment_size: 16 << 10,
        auto_maintenance: false,
        ..opts(&clock)
    };
    let q = Queue::open(dir.path(), o).unwrap();
    interleaved(&q, 40);
    let mut s = q.session_for("a.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    d.complete(&[Outcome::Delivered]).unwrap();
    // b.example's half of every segment is delivered: each is sparse, and
    // compaction copies a.example's messages forward, then removes them.
    assert_eq!(deliver_key(&q, "b.example", Outcome::Delivered).len(), 40);
    let old = segment_files(dir.path());
    q.sync().unwrap();
    q.checkpoint().unwrap();
    q.checkpoint().unwrap();
    let now = segment_files(dir.path());
    assert!(
        old.iter().take(3).all(|f| !now.contains(f)),
        "the first segments were removed: {old:?} → {now:?}"
    );
    let tags = take_all(&mut s);
    let want: Vec<String> = (1..40).map(|i| format!("a{i}")).collect();
    assert_eq!(tags, want);
}
