//! Arbitrary operation sequences with a crash at an arbitrary I/O operation,
//! checked against a model of what was acknowledged: after the crash and reopen,
//! every acknowledged recipient that was not durably completed is still queued,
//! and none that was durably delivered comes back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailq::sim::{CrashMode, SimFs};
use mailq::{ManualClock, MessageId, NewMessage, Options, Outcome, Queue};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const DIR: &str = "/q";

fn opts(fs: &SimFs, clock: &Arc<ManualClock>) -> Options {
    Options {
        vfs: fs.vfs(),
        clock: clock.clone(),
        segment_size: 4096,
        checkpoint_bytes: 8192,
        ..Options::default()
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let fs = SimFs::new();
    let clock = ManualClock::new(1_700_000_000);
    let crash_at = u16::from_le_bytes([data[0], data[1]]) as u64 % 400 + 1;
    let mode = [CrashMode::LoseUnsynced, CrashMode::KeepUnsynced, CrashMode::TornTail, CrashMode::Reorder][data[2] as usize % 4];
    fs.crash_after(crash_at);
    let mut acked: BTreeMap<MessageId, usize> = BTreeMap::new();
    let mut done: BTreeSet<(MessageId, u32)> = BTreeSet::new();
    let mut unsure: BTreeSet<(MessageId, u32)> = BTreeSet::new();
    let mut unsynced: Vec<(MessageId, u32)> = Vec::new();
    if let Ok(q) = Queue::open(DIR, opts(&fs, &clock)) {
        for (i, &op) in data[3..].iter().enumerate() {
            let r = (|| -> mailq::Result<()> {
                match op % 8 {
                    0 | 1 => {
                        let n = 1 + (op as usize / 8) % 3;
                        let rc = (0..n).map(|k| format!("u{i}.{k}@d{}.example", (op as usize + k) % 4).into()).collect();
                        let body = vec![op; 50 + (op as usize) * 3];
                        let id = q.enqueue(&NewMessage { sender: "", recipients: rc, meta: b"", body: &body })?;
                        acked.insert(id, n);
                    }
                    2 | 3 => {
                        if let Some(mut s) = q.next_session()? {
                            if let Some(d) = s.next_delivery()? {
                                let (id, idx) = (d.id(), d.indices().to_vec());
                                let o = if op % 8 == 2 { Outcome::Delivered } else { Outcome::temp("451") };
                                let delivered = o == Outcome::Delivered;
                                for k in &idx {
                                    unsure.insert((id, *k));
                                }
                                d.complete(&vec![o; idx.len()])?;
                                if delivered {
                                    unsynced.extend(idx.iter().map(|k| (id, *k)));
                                }
                            }
                        }
                    }
                    4 => {
                        q.sync()?;
                        for k in unsynced.drain(..) {
                            unsure.remove(&k);
                            done.insert(k);
                        }
                    }
                    5 => q.checkpoint()?,
                    6 => {
                        q.flush()?;
                    }
                    _ => {
                        q.reroute("d1.example", "d2.example")?;
                    }
                }
                Ok(())
            })();
            if r.is_err() {
                break;
            }
        }
    }
    fs.restart(mode, data.len() as u64);
    let q = Queue::open(DIR, opts(&fs, &clock)).expect("reopen after crash must succeed");
    for (id, n) in &acked {
        let info = q.inspect(*id).ok();
        for k in 0..*n as u32 {
            let st = info.as_ref().map(|m| m.recipients[k as usize].state);
            if unsure.contains(&(*id, k)) {
                continue;
            }
            if done.contains(&(*id, k)) {
                assert!(st.is_none_or(|s| s.is_final()), "durably delivered {id}#{k} came back");
            } else {
                assert!(st.is_some_and(|s| !s.is_final()), "acknowledged {id}#{k} lost");
            }
        }
    }
    q.enqueue(&NewMessage { sender: "", recipients: vec!["x@y.example".into()], meta: b"", body: b"x" })
        .expect("new mail after crash");
});
