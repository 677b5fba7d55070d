//! Test support, reachable from outside only as the hidden `mailq::sim`: a
//! simulated filesystem with crash and fault injection ([`simfs`]), behind the
//! same [`crate::storage::vfs::Vfs`] seam as the real one.
//! Depends on `storage::vfs` (the seam).

pub mod simfs;
