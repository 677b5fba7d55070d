#![allow(dead_code)]
use mailq::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "mailq-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const T0: u64 = 1_700_000_000;

pub fn opts(clock: &Arc<ManualClock>) -> Options {
    Options {
        clock: clock.clone(),
        ..Options::default()
    }
}

pub fn msg<'a>(sender: &'a str, rcpts: &[&str], body: &'a [u8]) -> NewMessage<'a> {
    NewMessage {
        sender,
        recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
        meta: b"",
        body,
    }
}

/// Delivers everything ready with `f` choosing outcomes; returns deliveries made.
pub fn drain(q: &Queue, mut f: impl FnMut(&str, &str) -> Outcome) -> usize {
    let mut n = 0;
    while let Some(mut s) = q.next_session().unwrap() {
        while let Some(d) = s.next_delivery().unwrap() {
            let outs: Vec<Outcome> = d
                .recipients()
                .iter()
                .map(|r| f(d.routing_key(), r))
                .collect();
            n += outs.len();
            d.complete(&outs).unwrap();
        }
    }
    n
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}
