//! Test support compiled only for tests and with the `sim` feature: a simulated
//! filesystem with crash and fault injection ([`simfs`]), behind the same
//! [`crate::storage::vfs::Vfs`] seam as the real one.

pub mod simfs;
