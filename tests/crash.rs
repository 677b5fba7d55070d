//! Crash-point enumeration on the simulated filesystem.
//!
//! Each workload is first run cleanly to count its I/O operations. Then, for every
//! operation k, the workload is run again with a crash at operation k, the machine
//! "restarts" with the unsynced writes lost, kept, torn at 512 bytes, or reordered,
//! and the queue is reopened. After each crash:
//! - reopening succeeds, without panics;
//! - every acknowledged message and every recipient not durably completed is there;
//! - no recipient whose completion was durable comes back;
//! - everything left is delivered with the right body and address;
//! - the queue accepts new mail.
mod common;
use common::T0;
use mailq::sim::{CrashMode, SimFs};
use mailq::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const DIR: &str = "/queue";

#[derive(Default, Clone)]
struct Acks {
    /// Acknowledged messages: recipients and body.
    msgs: BTreeMap<MessageId, (Vec<String>, Vec<u8>)>,
    /// Every (recipient, body) ever offered to enqueue, acknowledged or not.
    attempted: HashMap<(String, Vec<u8>), ()>,
    /// Durably final recipients (delivered, deleted, bounced).
    done: BTreeSet<(MessageId, u32)>,
    /// Durably failed (DSN pending).
    failed: BTreeSet<(MessageId, u32)>,
    /// Changed, not yet known to be durable: anything goes for these.
    unsure: BTreeSet<(MessageId, u32)>,
    /// Pending until a sync succeeds: (id, idx, final?)
    unsynced: Vec<(MessageId, u32, bool)>,
}

struct Ctx {
    fs: SimFs,
    clock: Arc<ManualClock>,
    opts: OptsFn,
    q: Option<Queue>,
    acks: Acks,
    n: u64,
}

impl Ctx {
    fn q(&self) -> &Queue {
        self.q.as_ref().expect("queue open")
    }

    fn enqueue(&mut self, rcpts: &[String], body_len: usize) -> Result<MessageId> {
        self.n += 1;
        let mut body = format!("message {} ", self.n).into_bytes();
        body.resize(body_len.max(body.len()), b'.');
        for r in rcpts {
            self.acks.attempted.insert((r.clone(), body.clone()), ());
        }
        let id = self.q().enqueue(&NewMessage {
            sender: "s@src.example",
            recipients: rcpts.iter().map(|r| Recipient::new(r.as_str())).collect(),
            meta: b"",
            body: &body,
        })?;
        self.acks.msgs.insert(id, (rcpts.to_vec(), body));
        Ok(id)
    }

    fn enqueue_n(&mut self, n: usize, per: usize, body: usize) -> Result<Vec<MessageId>> {
        (0..n)
            .map(|i| {
                let r: Vec<String> = (0..per)
                    .map(|k| format!("u{}.{k}@d{}.example", self.n + 1, (i + k) % 4))
                    .collect();
                self.enqueue(&r, body)
            })
            .collect()
    }

    /// Delivers up to `max` deliveries choosing outcomes by position.
    fn deliver(&mut self, max: usize, outcome: fn(usize) -> Outcome) -> Result<usize> {
        let mut k = 0;
        while k < max {
            let Some(mut s) = self.q().next_session()? else {
                break;
            };
            while k < max {
                let Some(d) = s.next_delivery()? else { break };
                let outs: Vec<Outcome> =
                    (0..d.recipients().len()).map(|i| outcome(k + i)).collect();
                let (id, idx) = (d.id(), d.indices().to_vec());
                d.complete(&outs)?;
                for (i, o) in idx.into_iter().zip(&outs) {
                    self.acks.unsure.insert((id, i));
                    match o {
                        Outcome::Delivered => self.acks.unsynced.push((id, i, true)),
                        Outcome::PermFail { .. } => self.acks.unsynced.push((id, i, false)),
                        Outcome::TempFail { .. } => {}
                    }
                }
                k += 1;
            }
        }
        Ok(k)
    }

    /// Makes buffered outcomes durable; on success they are known final.
    fn sync(&mut self) -> Result<()> {
        self.q().sync()?;
        for (id, i, fin) in std::mem::take(&mut self.acks.unsynced) {
            self.acks.unsure.remove(&(id, i));
            if fin {
                self.acks.failed.remove(&(id, i));
                self.acks.done.insert((id, i));
            } else {
                self.acks.failed.insert((id, i));
            }
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<()> {
        if let Some(q) = self.q.take() {
            q.close()?;
        }
        self.acks
            .unsure
            .extend(self.acks.unsynced.drain(..).map(|(a, b, _)| (a, b)));
        self.q = Some(Queue::open(DIR, (self.opts)(&self.fs, &self.clock))?);
        Ok(())
    }
}

type Workload = fn(&mut Ctx) -> Result<()>;
type OptsFn = fn(&SimFs, &Arc<ManualClock>) -> Options;

fn base(fs: &SimFs, clock: &Arc<ManualClock>) -> Options {
    Options {
        vfs: fs.vfs(),
        clock: clock.clone(),
        segment_size: 16 * 1024,
        checkpoint_bytes: u64::MAX,
        ..Options::default()
    }
}

fn small_segments(fs: &SimFs, clock: &Arc<ManualClock>) -> Options {
    Options {
        segment_size: 4096,
        ..base(fs, clock)
    }
}

fn auto_maint(fs: &SimFs, clock: &Arc<ManualClock>) -> Options {
    Options {
        segment_size: 4096,
        checkpoint_bytes: 6 * 1024,
        ..base(fs, clock)
    }
}

fn mixed(k: usize) -> Outcome {
    match k % 3 {
        0 => Outcome::Delivered,
        1 => Outcome::temp("451 later"),
        _ => Outcome::perm("550 no"),
    }
}

fn delivered(_: usize) -> Outcome {
    Outcome::Delivered
}

fn w_enqueue_burst(c: &mut Ctx) -> Result<()> {
    c.enqueue_n(12, 2, 100).map(|_| ())
}

fn w_segment_roll(c: &mut Ctx) -> Result<()> {
    c.enqueue_n(14, 1, 700).map(|_| ())
}

/// Segments rolled into files made ahead (zero-filled by `tick`), so the
/// crash points include a half-made file, its rename into place, and
/// sealed segments that end in zeros.
fn w_segments_made_ahead(c: &mut Ctx) -> Result<()> {
    for _ in 0..7 {
        c.enqueue_n(2, 1, 700)?;
        c.q().tick();
    }
    Ok(())
}

/// Deleted segments' files reused: segments die, a checkpoint deletes them
/// and keeps their files, `tick` renames one in as the next segment's file
/// made ahead, and the log rolls into it. So the crash points include a
/// kept file, its renames, the new header over the old one, and segments
/// that end in older records.
fn w_segments_reused(c: &mut Ctx) -> Result<()> {
    for _ in 0..3 {
        c.enqueue_n(4, 1, 700)?;
        c.deliver(4, delivered)?;
        c.sync()?;
        c.q().checkpoint()?;
        c.q().tick();
    }
    c.enqueue_n(4, 1, 700)?;
    c.q().tick();
    Ok(())
}

fn w_outcomes(c: &mut Ctx) -> Result<()> {
    c.enqueue_n(8, 2, 50)?;
    c.deliver(6, mixed)?;
    c.sync()?;
    c.enqueue_n(2, 1, 50)?;
    c.deliver(3, mixed)?;
    c.sync()
}

fn w_checkpoint(c: &mut Ctx) -> Result<()> {
    c.enqueue_n(6, 2, 200)?;
    c.deliver(3, delivered)?;
    c.sync()?;
    c.q().checkpoint()?;
    c.enqueue_n(3, 1, 200)?;
    c.deliver(2, mixed)?;
    c.sync()
}

fn w_compaction(c: &mut Ctx) -> Result<()> {
    for _ in 0..4 {
        c.enqueue_n(4, 1, 900)?;
        c.deliver(3, delivered)?;
        c.sync()?;
    }
    c.q().checkpoint()
}

fn w_reroute_hold(c: &mut Ctx) -> Result<()> {
    let ids = c.enqueue_n(6, 2, 60)?;
    c.q().hold(ids[0])?;
    c.q().reroute("d1.example", "relay.example")?;
    c.q().release(ids[0])?;
    c.q().hold_bucket("d2.example")?;
    c.deliver(4, delivered)?;
    c.sync()
}

fn w_reopen(c: &mut Ctx) -> Result<()> {
    c.enqueue_n(4, 1, 80)?;
    c.reopen()?;
    c.deliver(2, delivered)?;
    c.sync()?;
    c.enqueue_n(2, 2, 80)?;
    c.reopen()
}

fn w_bounces(c: &mut Ctx) -> Result<()> {
    c.enqueue_n(4, 1, 40)?;
    c.deliver(4, |_| Outcome::perm("550 user unknown"))?;
    c.sync()?;
    for b in c.q().take_bounces(10)? {
        c.q().ack_bounce(b.id, b.index)?;
        c.acks.unsure.insert((b.id, b.index));
        c.acks.unsynced.push((b.id, b.index, true));
    }
    c.sync()
}

fn w_delete_flush(c: &mut Ctx) -> Result<()> {
    let ids = c.enqueue_n(6, 1, 40)?;
    c.deliver(3, |_| Outcome::temp("421 busy"))?;
    c.sync()?;
    c.q().flush()?;
    for id in &ids[..2] {
        c.q().delete(*id)?;
        c.acks.done.insert((*id, 0));
    }
    c.deliver(2, delivered)?;
    c.sync()
}

fn w_big_message(c: &mut Ctx) -> Result<()> {
    let r: Vec<String> = (0..30)
        .map(|k| format!("big{k}@d{}.example", k % 7))
        .collect();
    c.enqueue(&r, 20_000)?;
    c.deliver(3, mixed)?;
    c.sync()?;
    c.enqueue_n(2, 1, 10)?;
    Ok(())
}

fn w_auto_maintenance(c: &mut Ctx) -> Result<()> {
    for _ in 0..3 {
        c.enqueue_n(5, 1, 600)?;
        c.deliver(4, delivered)?;
        c.sync()?;
    }
    Ok(())
}

/// Verifies the post-crash queue against what was acknowledged. Returns an error text.
fn verify(
    fs: &SimFs,
    clock: &Arc<ManualClock>,
    opts: OptsFn,
    acks: &Acks,
) -> std::result::Result<(), String> {
    let q = Queue::open(DIR, opts(fs, clock)).map_err(|e| format!("reopen failed: {e}"))?;
    let mut must_deliver: BTreeSet<(MessageId, u32)> = BTreeSet::new();
    for (id, (rcpts, _)) in &acks.msgs {
        let info = q.inspect(*id).ok();
        for i in 0..rcpts.len() as u32 {
            let key = (*id, i);
            let st = info
                .as_ref()
                .and_then(|m| m.recipients.get(i as usize))
                .map(|r| r.state);
            if acks.unsure.contains(&key) {
                if st.is_some_and(|s| {
                    !s.is_final() && s != RcptState::Failed && s != RcptState::Expired
                }) {
                    must_deliver.insert(key);
                }
                continue;
            }
            if acks.done.contains(&key) {
                if st.is_some_and(|s| !s.is_final()) {
                    return Err(format!(
                        "{id}#{i} was durably completed but came back as {st:?}"
                    ));
                }
                continue;
            }
            if acks.failed.contains(&key) {
                if st != Some(RcptState::Failed) {
                    return Err(format!("{id}#{i} durably failed but is {st:?}"));
                }
                continue;
            }
            match st {
                Some(s) if !s.is_final() && s != RcptState::Corrupt && s != RcptState::Failed => {
                    must_deliver.insert(key);
                }
                other => return Err(format!("acknowledged {id}#{i} lost: {other:?}")),
            }
        }
    }
    // Deliver everything that is left; bodies and addresses must be right.
    for m in q.list(usize::MAX) {
        q.release(m.id).map_err(|e| e.to_string())?;
    }
    q.flush().map_err(|e| e.to_string())?;
    clock.advance(10_000);
    let mut seen = BTreeSet::new();
    loop {
        let Some(mut s) = q.next_session().map_err(|e| e.to_string())? else {
            break;
        };
        while let Some(d) = s.next_delivery().map_err(|e| e.to_string())? {
            let body = d.body().to_vec();
            for (addr, idx) in d.recipients().iter().zip(d.indices()) {
                if !acks.attempted.contains_key(&(addr.clone(), body.clone())) {
                    return Err(format!(
                        "delivered {addr} with a body that was never enqueued for it"
                    ));
                }
                if let Some((rc, b)) = acks.msgs.get(&d.id()) {
                    if rc[*idx as usize] != *addr || *b != body {
                        return Err(format!(
                            "{} delivered with the wrong address or body",
                            d.id()
                        ));
                    }
                }
                seen.insert((d.id(), *idx));
            }
            let n = d.recipients().len();
            d.complete(&vec![Outcome::Delivered; n])
                .map_err(|e| e.to_string())?;
        }
    }
    if let Some(k) = must_deliver.difference(&seen).next() {
        return Err(format!("{}#{} was pending but never delivered", k.0, k.1));
    }
    let id = q
        .enqueue(&NewMessage {
            sender: "",
            recipients: vec!["after@crash.example".into()],
            meta: b"",
            body: b"after",
        })
        .map_err(|e| format!("no new mail after crash: {e}"))?;
    q.inspect(id).map_err(|e| e.to_string())?;
    Ok(())
}

fn run_to(fs: &SimFs, clock: &Arc<ManualClock>, opts: OptsFn, w: Workload) -> Acks {
    let mut c = Ctx {
        fs: fs.clone(),
        clock: clock.clone(),
        opts,
        q: None,
        acks: Acks::default(),
        n: 0,
    };
    if let Ok(q) = Queue::open(DIR, opts(fs, clock)) {
        c.q = Some(q);
        let _ = w(&mut c);
    }
    let mut acks = c.acks.clone();
    acks.unsure
        .extend(acks.unsynced.iter().map(|(a, b, _)| (*a, *b)));
    drop(c);
    acks
}

fn enumerate(name: &str, opts: OptsFn, w: Workload) -> usize {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let _ = run_to(&fs, &clock, opts, w);
    let total = fs.ops();
    let mut points = 0;
    for k in 1..=total {
        for (mi, mode) in [
            CrashMode::LoseUnsynced,
            CrashMode::KeepUnsynced,
            CrashMode::TornTail,
            CrashMode::Reorder,
        ]
        .into_iter()
        .enumerate()
        {
            let fs = SimFs::new();
            let clock = ManualClock::new(T0);
            fs.crash_after(k);
            let acks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_to(&fs, &clock, opts, w)
            }))
            .unwrap_or_else(|_| panic!("{name}: panic while running to crash point {k}"));
            fs.restart(mode, k * 7 + mi as u64);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                verify(&fs, &clock, opts, &acks)
            }));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("{name}: crash after op {k}/{total} ({mode:?}): {e}"),
                Err(_) => panic!("{name}: panic in recovery after op {k}/{total} ({mode:?})"),
            }
            points += 1;
        }
    }
    eprintln!("{name}: {total} I/O operations, {points} crash points checked");
    points
}

#[test]
fn crash_at_every_io_operation() {
    let workloads: [(&str, OptsFn, Workload); 13] = [
        ("enqueue burst", base, w_enqueue_burst),
        ("segment roll", small_segments, w_segment_roll),
        ("segments made ahead", small_segments, w_segments_made_ahead),
        ("segments reused", small_segments, w_segments_reused),
        ("deliveries, every outcome", base, w_outcomes),
        ("checkpoint", base, w_checkpoint),
        ("compaction", small_segments, w_compaction),
        ("re-route, hold, release", base, w_reroute_hold),
        ("reopen", base, w_reopen),
        ("bounces", base, w_bounces),
        ("delete, flush", base, w_delete_flush),
        ("big message", base, w_big_message),
        ("automatic maintenance", auto_maint, w_auto_maintenance),
    ];
    let total: usize = workloads.iter().map(|(n, o, w)| enumerate(n, *o, *w)).sum();
    eprintln!("crash points checked: {total}, failures: 0");
    assert!(total > 1000);
}

/// ENOSPC and EIO at every write and sync of a workload: a typed error, the queue
/// refuses writes until reopened, nothing acknowledged is lost, and it works again.
#[test]
fn storage_errors_at_every_operation() {
    // w_outcomes acknowledges 10 enqueues, each durable before it returns (at
    // least a write and an fdatasync), and makes outcomes durable twice with
    // `sync` (again at least a write and an fdatasync): a lower bound on the I/O
    // operations of one clean run, independent of how recovery opens files.
    const MIN_OPS: u64 = 10 * 2 + 2 * 2;
    let mut checked = 0;
    let mut expected = 0;
    for fault in [mailq::sim::Fault::NoSpace, mailq::sim::Fault::Eio] {
        let fs = SimFs::new();
        let clock = ManualClock::new(T0);
        let _ = run_to(&fs, &clock, base, w_outcomes);
        let total = fs.ops();
        assert!(
            total >= MIN_OPS,
            "{fault:?}: the clean run did {total} I/O operations, fewer than the workload needs ({MIN_OPS})"
        );
        expected += total;
        let mut surfaced = 0;
        for k in 1..=total {
            let fs = SimFs::new();
            let clock = ManualClock::new(T0);
            let mut c = Ctx {
                fs: fs.clone(),
                clock: clock.clone(),
                opts: base,
                q: None,
                acks: Acks::default(),
                n: 0,
            };
            fs.fail_at(k, fault);
            match Queue::open(DIR, base(&fs, &clock)) {
                Ok(q) => {
                    c.q = Some(q);
                    if let Err(e) = w_outcomes(&mut c) {
                        surfaced += 1;
                        assert!(
                            matches!(
                                e,
                                Error::DiskFull(_) | Error::Io { .. } | Error::Poisoned(_)
                            ),
                            "untyped failure at op {k}: {e}"
                        );
                        // Once a write or sync failed, later writes are refused.
                        if c.q().stats().poisoned.is_some() {
                            assert!(matches!(
                                c.q().enqueue(&common::msg("", &["x@y.example"], b"z")),
                                Err(Error::Poisoned(_))
                            ));
                        }
                    }
                }
                Err(_) => surfaced += 1,
            }
            // The run got as far as operation k, so the fault was injected there.
            assert!(
                fs.ops() >= k,
                "{fault:?} at op {k}: the run stopped after {} operations, before the fault",
                fs.ops()
            );
            let mut acks = c.acks.clone();
            acks.unsure
                .extend(acks.unsynced.iter().map(|(a, b, _)| (*a, *b)));
            drop(c);
            // Reopen on the same disk (no crash): everything acknowledged is there.
            fs.restart(CrashMode::KeepUnsynced, 1);
            verify(&fs, &clock, base, &acks).unwrap_or_else(|e| panic!("{fault:?} at op {k}: {e}"));
            checked += 1;
        }
        eprintln!("{fault:?}: {total} operations, {surfaced} faults surfaced as errors");
        assert!(surfaced > 0, "{fault:?}: no injected fault ever surfaced");
    }
    eprintln!("storage faults checked: {checked}");
    assert_eq!(checked, expected, "a fault point was skipped");
    assert!(checked >= 2 * MIN_OPS);
}
