//! A queue directory built from arbitrary bytes (segments and checkpoint), or a
//! valid queue with arbitrary byte edits, then opened and used end to end.
//! Nothing may panic; every outcome is a typed error or a working queue.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailq::sim::{CrashMode, SimFs};
use mailq::{ManualClock, NewMessage, Options, Outcome, Queue};
use std::path::{Path, PathBuf};

const DIR: &str = "/q";

fn name(sel: u8) -> PathBuf {
    Path::new(DIR).join(match sel % 5 {
        0 => "checkpoint".to_string(),
        n => format!("{:08x}.seg", n),
    })
}

fn opts(fs: &SimFs) -> Options {
    Options {
        vfs: fs.vfs(),
        clock: ManualClock::new(1_700_000_000),
        segment_size: 4096,
        ..Options::default()
    }
}

/// A small valid queue: a few messages, some outcomes, a checkpoint, more mail after it.
fn valid(fs: &SimFs) {
    let q = Queue::open(DIR, opts(fs)).expect("open");
    for i in 0..12u32 {
        let rc = vec![format!("r{i}@d{}.example", i % 3).into(), format!("s{i}@e.example").into()];
        let body = vec![b'a' + (i % 26) as u8; 200 + i as usize * 40];
        q.enqueue(&NewMessage { sender: "s@x.example", recipients: rc, meta: b"m", body: &body }).expect("enqueue");
        if i == 6 {
            if let Ok(Some(mut s)) = q.next_session() {
                if let Ok(Some(d)) = s.next_delivery() {
                    let n = d.recipients().len();
                    let _ = d.complete(&vec![Outcome::temp("451"); n]);
                }
            }
            q.checkpoint().expect("checkpoint");
        }
    }
    q.sync().expect("sync");
    drop(q);
    fs.restart(CrashMode::KeepUnsynced, 1);
}

fn exercise(fs: &SimFs) {
    let Ok(q) = Queue::open(DIR, opts(fs)) else { return };
    let _ = q.recovery_report();
    let _ = q.stats().prometheus();
    for m in q.list(10_000) {
        let _ = q.inspect(m.id);
    }
    let _ = q.verify();
    let _ = q.take_bounces(100);
    let _ = q.flush();
    for _ in 0..200 {
        let Ok(Some(mut s)) = q.next_session() else { break };
        while let Ok(Some(d)) = s.next_delivery() {
            let n = d.recipients().len();
            let _ = d.body();
            let _ = d.complete(&vec![Outcome::Delivered; n]);
        }
    }
    let _ = q.enqueue(&NewMessage { sender: "", recipients: vec!["z@z.example".into()], meta: b"", body: b"z" });
    let _ = q.close();
}

fuzz_target!(|data: &[u8]| {
    let fs = SimFs::new();
    if data.first() == Some(&0xFF) {
        // Mutate a valid queue: (file selector, offset u16, xor byte) triples.
        valid(&fs);
        for c in data[1..].chunks_exact(4) {
            let p = name(c[0]);
            if let Some(mut d) = fs.read(&p) {
                if !d.is_empty() {
                    let off = u16::from_le_bytes([c[1], c[2]]) as usize % d.len();
                    d[off] ^= c[3].max(1);
                    fs.write_durable(&p, d);
                }
            }
        }
    } else {
        // Files from scratch: (selector, len u16, bytes) records.
        let mut rest = data;
        while rest.len() >= 3 {
            let sel = rest[0];
            let len = (u16::from_le_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
            fs.put(&name(sel), rest[3..3 + len].to_vec());
            rest = &rest[3 + len..];
        }
    }
    exercise(&fs);
});
