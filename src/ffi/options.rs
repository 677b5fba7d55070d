//! Queue options: `mailq_options`, its defaults (`mailq_options_init`) and
//! reading a caller's struct (of any size it was compiled with) into
//! `crate::types::Options`. Depends on `boundary`, `status` and `ptr`.

use super::boundary::boundary;
use super::ptr::{known_len, read_known, size_field, write_known};
use super::status::{fail, mailq_status, mailq_status::*, Fail};
use crate::types::{Concurrency, Options};
use std::time::Duration;

/// Options for `mailq_open`. Initialise with `mailq_options_init`, which sets `size`
/// (so that newer libraries can grow the struct) and every default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mailq_options {
    /// `sizeof(mailq_options)` as the caller was compiled with.
    pub size: u32,
    /// Non-zero: allow NFS/CIFS/FUSE directories (not recommended).
    pub allow_network_fs: u32,
    /// Segment size in bytes (default 64 MiB).
    pub segment_size: u64,
    /// Largest body in bytes (default 64 MiB).
    pub max_body: u64,
    /// Most recipients per message (default 10000, at most 65535).
    pub max_recipients: u32,
    /// Recipients per delivery (default 50).
    pub batch_recipients: u32,
    /// Deliveries per session (default 100).
    pub deliveries_per_session: u32,
    /// Minimal backoff in seconds (default 300).
    pub min_backoff_secs: u32,
    /// Maximal backoff in seconds (default 4000).
    pub max_backoff_secs: u32,
    /// Queue lifetime in seconds (default 432000, 5 days).
    pub lifetime_secs: u32,
    /// Session lease in seconds (default 600).
    pub lease_ttl_secs: u32,
    /// Initial concurrency window per destination (default 5).
    pub initial_concurrency: u16,
    /// Concurrency limit per destination (default 20).
    pub concurrency_limit: u16,
    /// Consecutive site failures that mark a destination dead (default 5).
    pub dead_after: u32,
    /// Outcomes are durable at least this often, in milliseconds (default 100).
    pub outcome_sync_ms: u32,
    /// Write a checkpoint after this many bytes of log (default 64 MiB).
    pub checkpoint_bytes: u64,
    /// Backpressure: refuse (`MAILQ_ERR_TRY_LATER`) above this many recipients
    /// not yet final (default 0: no limit).
    pub max_queued_recipients: u64,
    /// … or above this many bytes of live message records (default 0: no limit).
    pub max_queued_bytes: u64,
    /// … or when the filesystem's free space would fall under this (default
    /// 128 MiB; 0: no check).
    pub min_free_disk: u64,
    /// Seconds after acceptance at which a recipient not yet delivered is
    /// handed out once by `mailq_take_bounces` with `delayed` set, for a DSN
    /// with `Action: delayed` (default 0: no warnings; less than the lifetime).
    pub delay_warning_secs: u32,
    /// Non-zero (the default): make the next segment's file ahead (a deleted
    /// segment's file kept for reuse, else a zero-filled one), on the thread
    /// that runs maintenance, so that commits do not grow the file. Set 0 on
    /// copy-on-write filesystems (btrfs, ZFS).
    pub preallocate_segments: u32,
}

/// Fills `opts` with the defaults and sets `opts->size`. Pass
/// `sizeof(mailq_options)` as `size`: a library newer than your header writes
/// only the fields you know.
#[no_mangle]
pub unsafe extern "C" fn mailq_options_init(opts: *mut mailq_options, size: usize) -> mailq_status {
    boundary(|| {
        if opts.is_null() {
            return fail(MAILQ_ERR_NULL, "opts is NULL");
        }
        let n = known_len::<mailq_options>(size, "size must be sizeof(mailq_options)")?;
        let defaults = mailq_options {
            size: n as u32,
            ..default_options()
        };
        // SAFETY: the caller provides `size` writable bytes at `opts` (header
        // contract), and n <= size.
        unsafe { write_known(opts, n, &defaults) };
        Ok(())
    })
}

fn default_options() -> mailq_options {
    let d = Options::default();
    mailq_options {
        size: std::mem::size_of::<mailq_options>() as u32,
        allow_network_fs: 0,
        segment_size: d.segment_size,
        max_body: d.max_body as u64,
        max_recipients: d.max_recipients as u32,
        batch_recipients: d.batch_recipients as u32,
        deliveries_per_session: d.deliveries_per_session as u32,
        min_backoff_secs: d.min_backoff.as_secs() as u32,
        max_backoff_secs: d.max_backoff.as_secs() as u32,
        lifetime_secs: d.lifetime.as_secs() as u32,
        lease_ttl_secs: d.lease_ttl.as_secs() as u32,
        initial_concurrency: d.concurrency.initial,
        concurrency_limit: d.concurrency.limit,
        dead_after: d.concurrency.dead_after as u32,
        outcome_sync_ms: d.outcome_sync_interval.as_millis() as u32,
        checkpoint_bytes: d.checkpoint_bytes,
        max_queued_recipients: d.max_queued_recipients,
        max_queued_bytes: d.max_queued_bytes,
        min_free_disk: d.min_free_disk,
        delay_warning_secs: d.delay_warning.as_secs().min(u32::MAX as u64) as u32,
        preallocate_segments: d.preallocate_segments as u32,
    }
}

/// The options passed to `mailq_open`: the defaults when `p` is NULL, and for
/// the fields a caller's older (shorter) struct does not have.
///
/// # Safety
/// `p` is NULL or points to a `mailq_options` whose `size` field is set and
/// that has at least `size` readable bytes.
pub(super) unsafe fn read_options(p: *const mailq_options) -> Result<Options, Fail> {
    let mut o = default_options();
    if !p.is_null() {
        // SAFETY: non-NULL, so its leading size field is readable (this
        // function's contract); an older caller struct is never over-read.
        let size = unsafe { size_field(p) };
        let n = known_len::<mailq_options>(
            size,
            "opts->size is not set: call mailq_options_init first",
        )?;
        // SAFETY: `size` >= n readable bytes at `p` (this function's contract).
        unsafe { read_known(p, n, &mut o) };
    }
    let mut opts = Options {
        allow_network_fs: o.allow_network_fs != 0,
        segment_size: o.segment_size,
        max_body: usize::try_from(o.max_body).unwrap_or(usize::MAX),
        max_recipients: o.max_recipients as usize,
        batch_recipients: o.batch_recipients as usize,
        deliveries_per_session: o.deliveries_per_session as usize,
        min_backoff: Duration::from_secs(o.min_backoff_secs as u64),
        max_backoff: Duration::from_secs(o.max_backoff_secs as u64),
        lifetime: Duration::from_secs(o.lifetime_secs as u64),
        lease_ttl: Duration::from_secs(o.lease_ttl_secs as u64),
        outcome_sync_interval: Duration::from_millis(o.outcome_sync_ms as u64),
        checkpoint_bytes: o.checkpoint_bytes,
        max_queued_recipients: o.max_queued_recipients,
        max_queued_bytes: o.max_queued_bytes,
        min_free_disk: o.min_free_disk,
        delay_warning: Duration::from_secs(o.delay_warning_secs as u64),
        preallocate_segments: o.preallocate_segments != 0,
        ..Options::default()
    };
    opts.concurrency = Concurrency {
        initial: o.initial_concurrency,
        limit: o.concurrency_limit,
        dead_after: o.dead_after.min(u16::MAX as u32) as u16,
    };
    Ok(opts)
}
