//! Regression tests for the defects found in review (issue 8). Each test names
//! its defect number and reproduces the scenario that failed before the fix.
mod common;
use common::hookfs::{HookFs, On};
use common::*;
use mailq::sim::record::{self, Kind};
use mailq::sim::{CrashMode, SimFs};
use mailq::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn small(clock: &Arc<ManualClock>) -> Options {
    Options {
        clock: clock.clone(),
        segment_size: 4096,
        checkpoint_bytes: u64::MAX,
        auto_maintenance: false,
        ..Options::default()
    }
}

/// Offsets and kinds of the records of a segment file.
fn records(data: &[u8]) -> Vec<(usize, Kind, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + record::HEADER_LEN <= data.len() {
        let Ok(h) = record::header(&data[off..]) else {
            break;
        };
        let total = record::padded(record::HEADER_LEN + h.len);
        out.push((off, h.kind, total));
        off += total;
    }
    out
}

/// Defect 1: message A finished in slot X, B reused X; A's final update record is
/// damaged. Replay must keep B (newer generation) and not resurrect A.
#[test]
fn d01_reused_slot_newer_generation_wins_over_damaged_history() {
    let t = TempDir::new("d01");
    let clock = ManualClock::new(T0);
    let o = Options {
        clock: clock.clone(),
        checkpoint_bytes: u64::MAX,
        auto_maintenance: false,
        ..Options::default()
    };
    let q = Queue::open(t.path(), o.clone()).unwrap();
    // Sixteen messages, one per message shard, so that the next one reuses A's slot.
    let a = q
        .enqueue(&msg("s@x.example", &["a@a.example"], b"A"))
        .unwrap();
    for i in 1..16 {
        q.enqueue(&msg("s@x.example", &[&format!("r{i}@o.example")], b"o"))
            .unwrap();
    }
    deliver_key(&q, "a.example", Outcome::Delivered);
    deliver_key(&q, "o.example", Outcome::Delivered);
    let b = q
        .enqueue(&msg("s@x.example", &["b@b.example"], b"B body"))
        .unwrap();
    assert_eq!(a.0 as u32, b.0 as u32, "B reuses A's slot");
    drop(q);
    // Damage A's delivered record (the first update record in the log).
    let seg = segment_files(t.path()).remove(0);
    let mut data = std::fs::read(&seg).unwrap();
    let (off, _, _) = records(&data)
        .into_iter()
        .find(|r| r.1 == Kind::RcptUpdate)
        .unwrap();
    data[off + record::HEADER_LEN + 2] ^= 0xff;
    std::fs::write(&seg, &data).unwrap();
    let _ = std::fs::remove_file(t.path().join("checkpoint"));

    let q = Queue::open(t.path(), o).unwrap();
    assert!(q.recovery_report().corrupt_count() >= 1);
    assert!(
        matches!(q.inspect(a), Err(Error::NoSuchMessage(_))),
        "A not resurrected"
    );
    let info = q
        .inspect(b)
        .expect("B, acknowledged and intact, is recovered");
    assert_eq!(info.recipients[0].address, "b@b.example");
    let mut s = q.session_for("b.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(&d.body()[..], b"B body");
    d.complete(&[Outcome::Delivered]).unwrap();
}

/// Defect 2: a delivery completes while the checkpoint is being installed; the
/// completion is not durable yet, so compaction must not delete the segment.
#[test]
fn d02_compaction_never_trusts_a_completion_that_is_not_durable() {
    let sim = SimFs::new();
    let hfs = HookFs::new(sim.clone());
    let clock = ManualClock::new(T0);
    let o = Options {
        vfs: hfs.vfs(),
        outcome_sync_interval: Duration::from_secs(3600),
        outcome_sync_bytes: 1 << 30,
        ..small(&clock)
    };
    let q = Queue::open("/q", o.clone()).unwrap();
    // Big enough that segment 1 is not sparse (no copy, hence no sync, by compaction).
    let body = vec![b'x'; 3000];
    let m1 = q
        .enqueue(&msg("s@x.example", &["a@one.example"], &body))
        .unwrap();
    // Roll to segment 2.
    q.enqueue(&msg("s@x.example", &["b@two.example"], &body))
        .unwrap();
    q.enqueue(&msg("s@x.example", &["c@two.example"], &body))
        .unwrap();
    deliver_key(&q, "two.example", Outcome::Delivered);
    q.sync().unwrap();
    // While the checkpoint is being installed, m1 is delivered (not yet durable).
    let q2 = q.clone();
    hfs.arm(On::Rename, "checkpoint", move || {
        assert_eq!(deliver_key(&q2, "one.example", Outcome::Delivered).len(), 1);
    });
    q.checkpoint().unwrap();
    assert!(!hfs.armed(), "the hook ran");
    // Crash before the completion is synced.
    sim.crash_after(1);
    drop(q);
    sim.restart(CrashMode::LoseUnsynced, 7);
    let q = Queue::open(
        "/q",
        Options {
            vfs: hfs.vfs(),
            ..small(&clock)
        },
    )
    .unwrap();
    assert_eq!(
        q.recovery_report().corrupt_count(),
        0,
        "{:?}",
        q.recovery_report()
    );
    // The completion was never durable: m1 must still be there, intact.
    let mut s = q.session_for("one.example").unwrap().expect("m1 survived");
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(d.id(), m1);
    assert_eq!(&d.body()[..], &body[..]);
}

/// Two messages in two segments; the queue is closed, the first segment file
/// deleted, and the queue reopened. Returns it and the lost message's id.
fn reopen_without_first_segment(t: &TempDir) -> (Queue, MessageId) {
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    let body = vec![b'y'; 3000];
    let m1 = q
        .enqueue(&msg("s@x.example", &["a@one.example"], &body))
        .unwrap();
    q.enqueue(&msg("s@x.example", &["b@two.example"], &body))
        .unwrap();
    q.close().unwrap();
    std::fs::remove_file(&segment_files(t.path())[0]).unwrap();
    (Queue::open(t.path(), small(&clock)).unwrap(), m1)
}

/// Defect 3: a segment file that is gone is damage (parked, reported), not an
/// I/O error that sends the recipient back to ready for ever.
#[test]
fn d03_missing_segment_is_damage_and_the_worker_does_not_spin() {
    let t = TempDir::new("d03");
    let (q, m1) = reopen_without_first_segment(&t);
    let mut s = q.session_for("one.example").unwrap().unwrap();
    for _ in 0..3 {
        assert!(s.next_delivery().unwrap().is_none(), "nothing deliverable");
    }
    drop(s);
    let st = q.stats();
    assert!(st.corrupt_ids.contains(&m1), "{:?}", st.corrupt_ids);
    assert_eq!(st.count("corrupt"), 1);
    assert_eq!(st.count("ready"), 1, "the other message is still ready");
    assert!(
        q.session_for("one.example").unwrap().is_none(),
        "no spinning"
    );
}

/// A Vfs whose writes panic when armed.
struct PanicFs {
    fs: SimFs,
    armed: Arc<std::sync::atomic::AtomicBool>,
}
struct PanicFile {
    f: Arc<dyn VFile>,
    armed: Arc<std::sync::atomic::AtomicBool>,
}
impl VFile for PanicFile {
    fn len(&self) -> std::io::Result<u64> {
        self.f.len()
    }
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.f.read_exact_at(off, buf)
    }
    fn write_all_at(&self, off: u64, buf: &[u8]) -> std::io::Result<()> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("custom Vfs panicked");
        }
        self.f.write_all_at(off, buf)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.f.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.f.set_len(len)
    }
}
impl Vfs for PanicFs {
    fn create_dir_all(&self, d: &Path) -> std::io::Result<()> {
        self.fs.create_dir_all(d)
    }
    fn list(&self, d: &Path) -> std::io::Result<Vec<String>> {
        self.fs.list(d)
    }
    fn open(&self, p: &Path, c: bool) -> std::io::Result<Arc<dyn VFile>> {
        Ok(Arc::new(PanicFile {
            f: self.fs.open(p, c)?,
            armed: self.armed.clone(),
        }))
    }
    fn rename(&self, a: &Path, b: &Path) -> std::io::Result<()> {
        self.fs.rename(a, b)
    }
    fn remove(&self, p: &Path) -> std::io::Result<()> {
        self.fs.remove(p)
    }
    fn sync_dir(&self, d: &Path) -> std::io::Result<()> {
        self.fs.sync_dir(d)
    }
    fn lock_dir(&self, d: &Path) -> std::io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        self.fs.lock_dir(d)
    }
    fn network_fs(&self, d: &Path) -> std::io::Result<Option<String>> {
        self.fs.network_fs(d)
    }
}

/// Defect 7: a panic inside the leader's write must not leave every later sync
/// (close, drop) parked for ever.
#[test]
fn d07_panic_in_the_leaders_write_poisons_instead_of_hanging() {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fs = PanicFs {
        fs: SimFs::new(),
        armed: armed.clone(),
    };
    let clock = ManualClock::new(T0);
    let q = Queue::open(
        "/q",
        Options {
            vfs: Arc::new(fs),
            ..small(&clock)
        },
    )
    .unwrap();
    q.enqueue(&msg("s@x.example", &["a@b.example"], b"before"))
        .unwrap();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let q2 = q.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        q2.enqueue(&msg("s@x.example", &["a@b.example"], b"panics"))
    }));
    assert!(r.is_err(), "the Vfs panic propagates to its caller");
    armed.store(false, std::sync::atomic::Ordering::SeqCst);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let e = q.enqueue(&msg("s@x.example", &["a@b.example"], b"after"));
        let c = q.close();
        let _ = tx.send((e.is_err(), c.is_err()));
    });
    let (e, c) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("enqueue and close return instead of parking for ever");
    assert!(e && c, "the queue is poisoned after a panicking commit");
}

/// Defect 11: a fault under a read (here the file shrinks under a mapping, the
/// same SIGBUS a bad sector gives) is an error and damage, never a crash.
#[test]
fn d11_read_fault_is_an_error_not_sigbus() {
    let t = TempDir::new("d11");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    let body = vec![b'z'; 1500];
    q.enqueue(&msg("s@x.example", &["a@one.example"], &body))
        .unwrap();
    let m2 = q
        .enqueue(&msg("s@x.example", &["b@two.example"], &body))
        .unwrap();
    // Read segment 1 once (maps it in the old design) …
    assert_eq!(deliver_key(&q, "one.example", Outcome::Delivered).len(), 1);
    // … then the disk loses it.
    let seg = &segment_files(t.path())[0];
    std::fs::OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut s = q.session_for("two.example").unwrap().unwrap();
    assert!(s.next_delivery().unwrap().is_none());
    drop(s);
    assert!(q.stats().corrupt_ids.contains(&m2));
}

fn fds_into(dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(&dir))
        .count()
}

/// Defect 12: open segment files are bounded, however many segments hold mail.
#[test]
fn d12_open_segment_files_are_bounded() {
    let t = TempDir::new("d12");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    let body = vec![b'w'; 3000];
    for i in 0..200 {
        q.enqueue(&msg("s@x.example", &[&format!("r{i}@d{i}.example")], &body))
            .unwrap();
    }
    q.close().unwrap();
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    for i in 0..200 {
        let mut s = q.session_for(&format!("d{i}.example")).unwrap().unwrap();
        let d = s.next_delivery().unwrap().unwrap();
        assert_eq!(d.body().len(), 3000);
        d.complete(&[Outcome::temp("451 later")]).unwrap();
    }
    assert!(segment_files(t.path()).len() >= 200);
    let n = fds_into(t.path());
    assert!(n <= 64 + 4, "{n} descriptors open into the queue directory");
}

/// Defect 23: an oversized batch in a fresh segment does not leave a
/// header-only segment behind.
#[test]
fn d23_oversized_batch_leaves_no_empty_segment() {
    let t = TempDir::new("d23");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    q.enqueue(&msg("s@x.example", &["a@b.example"], &vec![b'q'; 10_000]))
        .unwrap();
    let segs = segment_files(t.path());
    assert_eq!(segs.len(), 1, "{segs:?}");
}

/// Defect 24: take_bounces reads a message that compaction moves (and whose
/// old segment it deletes) between the lookup and the read: the DSN is still
/// offered, not reported corrupt.
#[test]
fn d24_bounce_of_a_message_moved_by_compaction_is_still_offered() {
    let sim = SimFs::new();
    let hfs = HookFs::new(sim.clone());
    let clock = ManualClock::new(T0);
    let o = Options {
        vfs: hfs.vfs(),
        ..small(&clock)
    };
    let q = Queue::open("/q", o.clone()).unwrap();
    let m = q
        .enqueue(&msg("s@x.example", &["a@one.example"], &[b'b'; 500]))
        .unwrap();
    q.enqueue(&msg("s@x.example", &["b@two.example"], &[b'c'; 3000]))
        .unwrap();
    q.enqueue(&msg("s@x.example", &["c@two.example"], &[b'c'; 100]))
        .unwrap();
    deliver_key(&q, "two.example", Outcome::Delivered);
    deliver_key(&q, "one.example", Outcome::perm("550 no"));
    q.sync().unwrap();
    drop(q);
    let q = Queue::open(
        "/q",
        Options {
            vfs: hfs.vfs(),
            ..small(&clock)
        },
    )
    .unwrap();
    // When take_bounces opens segment 1, compaction moves m out and deletes it.
    let q2 = q.clone();
    hfs.arm(On::Open, "00000001.seg", move || q2.checkpoint().unwrap());
    let b = q.take_bounces(10).unwrap();
    assert!(!hfs.armed());
    assert!(!sim
        .files(Path::new("/q"))
        .iter()
        .any(|p| p.ends_with("00000001.seg")));
    assert_eq!(b.len(), 1, "{:?}", q.stats().corrupt_ids);
    assert_eq!((b[0].id, b[0].recipient.as_str()), (m, "a@one.example"));
    assert_eq!(q.stats().corrupt, 0);
    assert!(q.verify().unwrap().is_empty());
}

/// Defect 25: the checkpoint's segment and every later one are gone: reported.
#[test]
fn d25_missing_checkpoint_segment_is_reported_even_when_all_later_are_gone() {
    let t = TempDir::new("d25");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    q.enqueue(&msg("s@x.example", &["a@b.example"], b"x"))
        .unwrap();
    deliver_key(&q, "b.example", Outcome::Delivered);
    q.close().unwrap();
    for s in segment_files(t.path()) {
        std::fs::remove_file(s).unwrap();
    }
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    let rep = q.recovery_report();
    assert_eq!(rep.missing_segments, vec![1], "{rep:?}");
    // The queue still works.
    q.enqueue(&msg("s@x.example", &["a@b.example"], b"y"))
        .unwrap();
}

/// Defect 27: a segment or checkpoint of another format version is refused.
#[test]
fn d27_foreign_versions_are_refused() {
    let t = TempDir::new("d27");
    std::fs::create_dir_all(t.path()).unwrap();
    let copy = |to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir("tests/fixtures/format-v1").unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    // Segment header claiming the next format (re-framed with a valid checksum).
    let next = record::FORMAT_VERSION + 1;
    let a = t.path().join("seg");
    copy(&a);
    let seg = a.join("00000001.seg");
    let mut data = std::fs::read(&seg).unwrap();
    let h = record::header(&data).unwrap();
    let total = record::padded(record::HEADER_LEN + h.len);
    let mut payload = data[record::HEADER_LEN..record::HEADER_LEN + h.len].to_vec();
    payload[8..12].copy_from_slice(&next.to_le_bytes());
    let mut framed = Vec::new();
    record::frame(&mut framed, Kind::SegmentHeader, h.seq, &payload, 0);
    assert_eq!(framed.len(), total);
    data[..total].copy_from_slice(&framed);
    std::fs::write(&seg, &data).unwrap();
    std::fs::remove_file(a.join("checkpoint")).unwrap();
    match Queue::open(&a, Options::default()) {
        Err(Error::Version {
            found, supported, ..
        }) if found == next && supported == record::FORMAT_VERSION => {}
        other => panic!("expected a version error, got {other:?}"),
    }
    // Checkpoint claiming version 9 (checksum recomputed): refused, not replayed.
    let b = t.path().join("ckpt");
    copy(&b);
    let ck = b.join("checkpoint");
    let mut data = std::fs::read(&ck).unwrap();
    data[8..12].copy_from_slice(&9u32.to_le_bytes());
    let n = data.len();
    let crc = crc32fast::hash(&data[..n - 20]);
    data[n - 20..n - 16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&ck, &data).unwrap();
    match Queue::open(&b, Options::default()) {
        Err(Error::Version {
            found: 9,
            supported: 5,
            ..
        }) => {}
        other => panic!("expected a version error, got {other:?}"),
    }
}

/// Defect 28: the reason a message was found damaged is kept for the operator.
#[test]
fn d28_damage_reasons_are_kept() {
    let t = TempDir::new("d28");
    let (q, m1) = reopen_without_first_segment(&t);
    let rep = q.recovery_report();
    assert_eq!(rep.corrupt_reason(m1), Some("segment missing"));
}

/// Defect 4: enqueue refuses (typed error) what recovery could not load.
#[test]
fn d04_enqueue_refuses_slots_recovery_would_drop() {
    let t = TempDir::new("d04");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    q.debug_set_slot_limit(1);
    let mut ok = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        match q.enqueue(&msg("s@x.example", &[&format!("r{i}@b.example")], b"m")) {
            Ok(id) => ok.push(id),
            Err(Error::TooLarge { what, .. }) => {
                assert!(what.contains("slots"), "{what}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok.len(), refused), (32, 8), "slots 0 and 1 of 16 shards");
    drop(q);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    for id in ok {
        q.inspect(id).expect("every accepted message reopens");
    }
}

fn poll_readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

/// Defect 5: an idle queue syncs buffered outcomes: `next_wakeup`/`next_timeout`
/// name the deadline and the poll fd wakes for it.
#[test]
fn d05_idle_queue_syncs_outcomes_by_the_interval() {
    let sim = SimFs::new();
    let clock = ManualClock::new(T0);
    let o = Options {
        vfs: sim.vfs(),
        ..small(&clock)
    };
    let q = Queue::open("/q", o.clone()).unwrap();
    let id = q
        .enqueue(&msg("s@x.example", &["a@b.example"], b"m"))
        .unwrap();
    q.ack_poll();
    deliver_key(&q, "b.example", Outcome::Delivered);
    assert_eq!(q.next_timeout(), Some(Duration::from_millis(100)));
    assert_eq!(
        q.next_wakeup(),
        Some(T0 + 1),
        "the sync deadline, rounded up"
    );
    // The event loop waits on the poll fd only.
    assert!(
        poll_readable(q.poll_fd(), 10_000),
        "the poll fd wakes for the sync"
    );
    clock.advance_millis(100);
    q.ack_poll();
    assert_eq!(
        q.next_timeout(),
        None,
        "the sync is done, nothing else is scheduled"
    );
    sim.crash_after(1);
    drop(q);
    sim.restart(CrashMode::LoseUnsynced, 3);
    let q = Queue::open("/q", o).unwrap();
    assert!(
        matches!(q.inspect(id), Err(Error::NoSuchMessage(_))),
        "the delivery is durable"
    );
}

/// Defect 8: after the clock steps back, a recipient deferred in the past of the
/// wheel is still retried at its time, and next_wakeup names it.
#[test]
fn d08_clock_stepping_back_strands_nothing() {
    let t = TempDir::new("d08");
    let clock = ManualClock::new(T0);
    let o = Options {
        min_backoff: Duration::from_secs(300),
        ..small(&clock)
    };
    let q = Queue::open(t.path(), o).unwrap();
    let a = q
        .enqueue(&msg("s@x.example", &["a@a.example"], b"a"))
        .unwrap();
    deliver_key(&q, "a.example", Outcome::temp("451 later"));
    assert_eq!(q.inspect(a).unwrap().recipients[0].next_attempt, T0 + 300);
    // The clock steps back an hour; a new deferral lands behind the wheel.
    clock.set(T0 - 3600);
    let b = q
        .enqueue(&msg("s@x.example", &["b@b.example"], b"b"))
        .unwrap();
    deliver_key(&q, "b.example", Outcome::temp("451 later"));
    let bn = q.inspect(b).unwrap().recipients[0].next_attempt;
    assert_eq!(bn, T0 - 3300);
    q.sync().unwrap();
    q.tick();
    assert_eq!(
        q.next_wakeup(),
        Some(bn),
        "the earliest retry, in the new time"
    );
    assert!(q.next_session().unwrap().is_none(), "not before its time");
    clock.set(bn);
    q.tick();
    assert_eq!(deliver_key(&q, "b.example", Outcome::Delivered), vec![b]);
    q.sync().unwrap();
    assert_eq!(q.next_wakeup(), Some(T0 + 300));
    // And forward again, far past the wheel's horizon.
    clock.set(T0 + 86_400);
    q.tick();
    assert_eq!(deliver_key(&q, "a.example", Outcome::Delivered), vec![a]);
    assert_eq!(q.stats().messages, 0);
}

/// Defect 10: re-route and hold taken while a recipient is in flight hold when
/// its attempt ends (SimpleLogin: "deferred mail remembers its destination").
#[test]
fn d10_operator_decisions_on_inflight_recipients_hold() {
    let t = TempDir::new("d10");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    // Re-route + flush while in flight, then a temporary failure.
    let a = q
        .enqueue(&msg("s@x.example", &["u@old.example"], b"a"))
        .unwrap();
    let mut s = q.session_for("old.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(q.reroute("old.example", "new.example").unwrap(), 1);
    q.flush().unwrap();
    d.complete(&[Outcome::temp("451 4.7.0 try later")]).unwrap();
    s.finish().unwrap();
    let r = &q.inspect(a).unwrap().recipients[0];
    assert_eq!(
        (r.route.as_str(), r.state),
        ("new.example", RcptState::Deferred)
    );
    q.flush().unwrap();
    assert!(
        q.session_for("old.example").unwrap().is_none(),
        "never the old route"
    );
    assert_eq!(deliver_key(&q, "new.example", Outcome::Delivered), vec![a]);

    // Hold while in flight, then a temporary failure: held, not deferred.
    let b = q
        .enqueue(&msg("s@x.example", &["u@h.example"], b"b"))
        .unwrap();
    let mut s = q.session_for("h.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(q.hold(b).unwrap(), 1);
    d.complete(&[Outcome::temp("451 later")]).unwrap();
    s.finish().unwrap();
    assert_eq!(q.inspect(b).unwrap().recipients[0].state, RcptState::Held);
    clock.advance(100_000);
    q.tick();
    assert!(
        q.session_for("h.example").unwrap().is_none(),
        "held stays held"
    );
    q.release(b).unwrap();
    assert_eq!(deliver_key(&q, "h.example", Outcome::Delivered), vec![b]);

    // Hold while in flight, then delivered: delivered counts.
    let c = q
        .enqueue(&msg("s@x.example", &["u@h.example"], b"c"))
        .unwrap();
    let mut s = q.session_for("h.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    q.hold(c).unwrap();
    d.complete(&[Outcome::Delivered]).unwrap();
    s.finish().unwrap();
    assert!(matches!(q.inspect(c), Err(Error::NoSuchMessage(_))));

    // Re-routed while in flight, then the worker vanishes and the queue restarts:
    // the decision was durable.
    let e = q
        .enqueue(&msg("s@x.example", &["u@old2.example"], b"e"))
        .unwrap();
    let mut s = q.session_for("old2.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    q.reroute_recipient(e, 0, "new2.example").unwrap();
    drop(d);
    drop(s);
    assert_eq!(q.inspect(e).unwrap().recipients[0].route, "new2.example");
    drop(q);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    assert_eq!(q.inspect(e).unwrap().recipients[0].route, "new2.example");
    assert_eq!(deliver_key(&q, "new2.example", Outcome::Delivered), vec![e]);
}

/// Defect 17: one-off destinations are freed once delivered: memory and
/// checkpoint size go back to their baseline.
#[test]
fn d17_one_off_domains_are_freed() {
    let t = TempDir::new("d17");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    q.enqueue(&msg("s@x.example", &["keep@held.example"], b"k"))
        .unwrap();
    q.hold_bucket("held.example").unwrap();
    let mut base = (0, 0);
    for round in 0..5 {
        if round == 1 {
            // Baseline after one round: index chunks are allocated in every shard.
            base = (
                q.memory_usage(),
                std::fs::metadata(t.path().join("checkpoint"))
                    .unwrap()
                    .len(),
            );
        }
        for i in 0..2000 {
            let rcpt = format!("u@d{round}-{i}.example");
            q.enqueue(&msg("s@x.example", &[&rcpt], b"x")).unwrap();
        }
        assert_eq!(drain(&q, |_, _| Outcome::Delivered), 2000);
        q.checkpoint().unwrap();
    }
    assert_eq!(q.stats().messages, 1);
    let ckpt = std::fs::metadata(t.path().join("checkpoint"))
        .unwrap()
        .len();
    let (base_mem, base_ckpt) = base;
    assert!(
        ckpt <= base_ckpt + 64,
        "checkpoint {ckpt} B vs {base_ckpt} B at baseline"
    );
    let mem = q.memory_usage();
    assert!(
        mem <= base_mem + base_mem / 20 + 16 * 1024,
        "index {mem} B vs {base_mem} B at baseline"
    );
    // Operator state keeps its bucket; the held mail is still there.
    assert_eq!(q.stats().count("held"), 1);
}

/// Defect 21: nonsensical options are refused with a message saying what is allowed.
#[test]
fn d21_invalid_options_are_refused() {
    let t = TempDir::new("d21");
    let bad = [
        Options {
            checkpoint_bytes: 0,
            ..Options::default()
        },
        Options {
            lease_ttl: Duration::ZERO,
            ..Options::default()
        },
        Options {
            lifetime: Duration::ZERO,
            ..Options::default()
        },
        Options {
            min_backoff: Duration::ZERO,
            ..Options::default()
        },
        Options {
            min_backoff: Duration::from_secs(600),
            max_backoff: Duration::from_secs(60),
            ..Options::default()
        },
    ];
    for o in bad {
        match Queue::open(t.path(), o.clone()) {
            Err(Error::InvalidOption(why)) => assert!(why.contains("must"), "{why}"),
            other => panic!("{o:?} accepted: {other:?}"),
        }
    }
}

/// Defect 30: a delivery leaked with mem::forget does not keep its recipients
/// in flight for ever.
#[test]
fn d30_leaked_delivery_is_reclaimed() {
    let t = TempDir::new("d30");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    let a = q
        .enqueue(&msg("s@x.example", &["a@b.example"], b"a"))
        .unwrap();
    let b = q
        .enqueue(&msg("s@x.example", &["b@b.example"], b"b"))
        .unwrap();
    let mut s = q.session_for("b.example").unwrap().unwrap();
    let d1 = s.next_delivery().unwrap().unwrap();
    let first = d1.id();
    std::mem::forget(d1);
    let mut seen = vec![first];
    while let Some(d) = s.next_delivery().unwrap() {
        seen.push(d.id());
        d.complete(&[Outcome::Delivered]).unwrap();
    }
    s.finish().unwrap();
    assert!(seen.contains(&a) && seen.contains(&b));
    assert_eq!(
        seen.iter().filter(|&&x| x == first).count(),
        2,
        "offered again: {seen:?}"
    );
    assert_eq!(q.stats().count("inflight"), 0, "nothing stays in flight");
    assert_eq!(q.stats().messages, 0);
}

/// Found by the simulator after bucket freeing landed: a session whose lease
/// was reclaimed still holds its delivery; a checkpoint meanwhile must not free
/// (and reuse) the bucket under it, and ending the delivery later is harmless.
#[test]
fn gc_never_frees_a_bucket_under_a_live_session() {
    let t = TempDir::new("gc-live");
    let clock = ManualClock::new(T0);
    let o = Options {
        lease_ttl: Duration::from_secs(60),
        ..small(&clock)
    };
    let q = Queue::open(t.path(), o).unwrap();
    let id = q
        .enqueue(&msg("s@x.example", &["a@gone.example"], b"m"))
        .unwrap();
    let mut s = q.session_for("gone.example").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    q.delete(id).unwrap();
    clock.advance(120);
    q.tick(); // the lease is reclaimed: the bucket has no slot and no mail
    assert!(
        q.next_session().unwrap().is_none(),
        "and it leaves the ring"
    );
    q.checkpoint().unwrap();
    // A new destination would take the lowest free id, and its first session
    // the same token as the stale one.
    q.enqueue(&msg("s@x.example", &["u@new.example"], b"n"))
        .unwrap();
    q.enqueue(&msg("s@x.example", &["v@new.example"], b"n"))
        .unwrap();
    let mut other = q.session_for("new.example").unwrap().unwrap();
    drop(d);
    match s.next_delivery() {
        Err(Error::LeaseExpired) | Ok(None) => {}
        Ok(Some(d)) => panic!(
            "a stale session leased {:?} of another destination",
            d.recipients()
        ),
        Err(e) => panic!("{e}"),
    }
    drop(s);
    assert_eq!(q.debug_check(), Ok(()));
    while let Some(d) = other.next_delivery().unwrap() {
        d.complete(&[Outcome::Delivered]).unwrap();
    }
    drop(other);
    q.checkpoint().unwrap();
    assert_eq!(q.stats().messages, 0);
}

/// Review finding: a delivered recipient of a live message whose destination
/// was freed (and its id reused) is not shown under another destination.
#[test]
fn inspect_shows_a_final_recipients_own_route_after_bucket_reuse() {
    let t = TempDir::new("inspect-route");
    let clock = ManualClock::new(T0);
    let q = Queue::open(t.path(), small(&clock)).unwrap();
    let id = q
        .enqueue(&msg(
            "s@x.example",
            &["a@first.example", "b@held.example"],
            b"m",
        ))
        .unwrap();
    q.hold_bucket("held.example").unwrap();
    assert_eq!(
        deliver_key(&q, "first.example", Outcome::Delivered),
        vec![id]
    );
    assert!(q.next_session().unwrap().is_none());
    q.checkpoint().unwrap(); // frees first.example
    q.enqueue(&msg("s@x.example", &["c@other.example"], b"n"))
        .unwrap();
    let info = q.inspect(id).unwrap();
    assert_eq!(info.recipients[0].state, RcptState::Delivered);
    assert_eq!(info.recipients[0].route, "first.example");
    assert_eq!(info.recipients[1].route, "held.example");
}
