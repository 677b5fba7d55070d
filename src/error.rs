//! Typed errors. Every variant says what went wrong and what the caller can do.
//! Depends on `types`.

use std::path::PathBuf;

/// Result alias used throughout mailq.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mailq.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another handle (in this or another process) holds the queue directory.
    #[error(
        "queue directory {0} is locked by another handle; close it or open a different directory"
    )]
    Locked(PathBuf),

    /// The directory is on a network or FUSE filesystem where locks and fsync are unreliable.
    #[error("queue directory {path} is on a {fs} filesystem where locks and fsync cannot be trusted; move it to a local disk or set Options::allow_network_fs")]
    NetworkFilesystem {
        /// The queue directory.
        path: PathBuf,
        /// The filesystem type that was detected.
        fs: String,
    },

    /// An address or routing key was rejected; nothing was written.
    #[error("invalid address {address:?}: {reason}; fix the address, nothing was queued")]
    InvalidAddress {
        /// The offending address (truncated to 300 bytes).
        address: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A message with no recipients cannot be queued.
    #[error("message has no recipients; add at least one recipient, nothing was queued")]
    NoRecipients,

    /// A field is larger than the queue accepts.
    #[error("{what} is {len} bytes, limit is {limit}; shorten it, nothing was queued")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },

    /// A routing key that is not usable (empty, too long, NUL bytes).
    #[error("invalid routing key {key:?}: {reason}")]
    InvalidRoutingKey {
        /// The key (truncated to 300 bytes).
        key: String,
        /// Why.
        reason: &'static str,
    },

    /// A write or fsync failed earlier; the queue refuses writes until reopened.
    #[error("queue is read-only after an earlier storage failure ({0}); nothing new is acknowledged: fix the disk and reopen the queue")]
    Poisoned(String),

    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The queue is over a configured limit (queued recipients, queued bytes,
    /// or free disk under its watermark). Nothing was written and the queue
    /// is fine: the MTA answers `452 4.3.1` and the client retries later.
    #[error("queue over its limit: {what} would be {current} (limit {limit}); nothing was written — answer 452 4.3.1 and let the client retry, and look at why the queue is not draining")]
    TryLater {
        /// Which limit: "queued recipients", "queued bytes" or "free disk bytes".
        what: &'static str,
        /// What accepting the message would make it (free disk: what would remain).
        current: u64,
        /// The configured limit (free disk: the watermark).
        limit: u64,
    },

    /// The disk is full. The queue is poisoned; free space and reopen.
    #[error("disk full while writing {0}; free space and reopen the queue (nothing unacknowledged was kept)")]
    DiskFull(PathBuf),

    /// A record or file failed its checksum or bounds check.
    #[error("corrupt data in {path} at offset {offset}: {reason}; the damage is reported in stats and intact mail is still served")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Offset of the damaged record.
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// The message id is not (or no longer) in the queue.
    #[error("message {0} is not in the queue (already delivered, deleted, or never existed)")]
    NoSuchMessage(crate::MessageId),

    /// The recipient index is out of range for that message.
    #[error("message {0} has no recipient #{1}")]
    NoSuchRecipient(crate::MessageId, u32),

    /// The session's lease expired and its slot was reclaimed; the outcome was not applied.
    #[error("session lease expired and its recipients were requeued; outcomes reported now are ignored — take a new session")]
    LeaseExpired,

    /// A delivery was completed with the wrong number of outcomes.
    #[error("delivery has {expected} recipients but {got} outcomes were given")]
    OutcomeCount {
        /// Recipients in the delivery.
        expected: usize,
        /// Outcomes given.
        got: usize,
    },

    /// The queue was created by an incompatible version of mailq.
    #[error("{path} has format version {found}, this build reads {supported}; use a matching mailq version")]
    Version {
        /// File.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },

    /// A configuration value is out of range.
    #[error("invalid option {0}")]
    InvalidOption(String),
}

impl Error {
    /// Wraps an I/O error, mapping ENOSPC to [`Error::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return Error::DiskFull(path);
        }
        Error::Io { op, path, source }
    }

    /// True when the error means "fix the input", not "the queue is broken".
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidAddress { .. }
                | Error::NoRecipients
                | Error::TooLarge { .. }
                | Error::InvalidRoutingKey { .. }
                | Error::OutcomeCount { .. }
        )
    }
}

pub(crate) fn truncated(s: &str) -> String {
    let p = crate::types::prefix(s, 300);
    if p.len() == s.len() {
        return s.to_string();
    }
    format!("{p}…")
}
