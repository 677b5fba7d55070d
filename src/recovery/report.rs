//! What recovery found, for the operator: damaged spans, missing segments,
//! corrupt messages and their reasons, counts and timings. Plain data.
//! Depends on `types`.

use crate::types::MessageId;
use std::collections::HashMap;
use std::time::Duration;

/// A damaged span of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Segment number.
    pub segment: u32,
    /// Offset of the first bad byte.
    pub offset: u64,
    /// Bytes skipped.
    pub len: u64,
    /// What check failed.
    pub reason: String,
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// A checkpoint was loaded.
    pub checkpoint_used: bool,
    /// Why an existing checkpoint was rejected (the log was replayed in full instead).
    pub checkpoint_error: Option<String>,
    /// Segments read.
    pub segments_scanned: u32,
    /// Records replayed.
    pub records_replayed: u64,
    /// Bytes of log replayed.
    pub bytes_replayed: u64,
    /// Bytes cut from a torn tail of the last segment.
    pub torn_tail_bytes: u64,
    /// Damaged spans (never truncated; skipped and reported).
    pub damaged: Vec<Damage>,
    /// Segments that should exist but do not.
    pub missing_segments: Vec<u32>,
    /// Messages whose record is damaged or missing (also found later, at delivery).
    pub corrupt_messages: Vec<MessageId>,
    /// Why each of `corrupt_messages` was found damaged (what check failed, where).
    pub corrupt_reasons: HashMap<MessageId, String>,
    /// Messages recovered.
    pub messages: usize,
    /// Live recipients recovered.
    pub recipients: usize,
    /// Time taken by open.
    pub duration: Duration,
    /// Updates replayed inside the checkpoint's window for messages that
    /// finished while it was taken (expected; not damage).
    pub window_updates: u64,
}

impl RecoveryReport {
    /// Number of damage findings (damaged spans, missing segments, corrupt messages).
    pub fn corrupt_count(&self) -> usize {
        self.damaged.len() + self.missing_segments.len() + self.corrupt_messages.len()
    }

    /// Records a damaged message once (O(1): recovery may find many), keeping the
    /// first reason for the operator.
    pub(crate) fn note_corrupt_message(&mut self, id: MessageId, why: &str) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.corrupt_reasons.entry(id) {
            e.insert(why.to_string());
            self.corrupt_messages.push(id);
        }
    }

    /// Why message `id` was found damaged, if it was.
    pub fn corrupt_reason(&self, id: MessageId) -> Option<&str> {
        self.corrupt_reasons.get(&id).map(String::as_str)
    }
}
