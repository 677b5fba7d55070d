//! Where bytes meet the disk: the filesystem seam ([`vfs`]), record framing
//! ([`record`]), the append-only log with group commit ([`log`]), the checkpoint
//! file format ([`checkpoint`], read in bounded pieces by
//! [`checkpoint_stream`]) and the queue directory's setup and lock
//! ([`dir`]). Depends on `error` and `types` only; knows nothing of recipients,
//! buckets or queues.

pub mod checkpoint;
pub mod checkpoint_stream;
pub mod dir;
pub mod log;
pub mod record;
pub mod vfs;
