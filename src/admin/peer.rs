//! Who may use the admin API: the peer's credentials on the Unix socket
//! (`SO_PEERCRED`) or the bearer token on TCP, decided into an [`Access`].
//! Depends on nothing else in the crate.

use std::os::fd::AsRawFd;

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything (the queue owner or root; a TCP client with the token).
    Full,
    /// Read-only endpoints (a member of the configured read group).
    Read,
    /// `GET /metrics` and `GET /v1/stats` only (TCP without the token).
    Metrics,
    /// Nothing: the reason is sent in a 403.
    Denied(String),
}

/// The credentials of a Unix-socket peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups (`SO_PEERGROUPS`; empty where unsupported).
    pub groups: Vec<u32>,
}

/// `SO_PEERGROUPS` (Linux 4.13) on the architectures that use the generic
/// socket option numbers (x86, arm, riscv…); libc does not export it there.
const SO_PEERGROUPS: libc::c_int = 59;

/// Reads `SO_PEERCRED` of a connected Unix socket.
pub fn peer_cred(s: &impl AsRawFd) -> std::io::Result<PeerCred> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` is a writable ucred and `len` its size, as SO_PEERCRED expects.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut groups = vec![0u32; 256];
    let mut glen = (groups.len() * 4) as libc::socklen_t;
    // SAFETY: `groups` has `glen` writable bytes, as SO_PEERGROUPS expects.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut glen,
        )
    };
    groups.truncate(if rc == 0 { glen as usize / 4 } else { 0 });
    Ok(PeerCred {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
        groups,
    })
}

/// The access of a Unix-socket peer: the owners (the serving process's
/// effective uid and the queue directory's owner) and root get everything, a
/// member of `read_gid` (effective or supplementary group) may read; anyone
/// else is refused.
pub fn unix_access(peer: &PeerCred, owners: &[u32], read_gid: Option<u32>) -> Access {
    if peer.uid == 0 || owners.contains(&peer.uid) {
        Access::Full
    } else if read_gid.is_some_and(|g| peer.gid == g || peer.groups.contains(&g)) {
        Access::Read
    } else {
        Access::Denied(format!(
            "uid {} (pid {}) is neither the queue owner (uid {}), root, nor in the admin read group; run mailqctl as the queue owner",
            peer.uid,
            peer.pid,
            owners.first().copied().unwrap_or(0)
        ))
    }
}

/// The access of a TCP request: the configured token gives everything (compared
/// in constant time), anything else gives metrics only.
pub fn tcp_access(sent: Option<&str>, token: Option<&str>) -> Access {
    match (sent, token) {
        (Some(s), Some(t)) if constant_time_eq(s.as_bytes(), t.as_bytes()) => Access::Full,
        _ => Access::Metrics,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_root_group_and_strangers() {
        let p = |uid, gid, groups: &[u32]| PeerCred {
            pid: 7,
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let owners = [1000, 8];
        assert_eq!(
            unix_access(&p(1000, 1000, &[]), &owners, None),
            Access::Full
        );
        assert_eq!(
            unix_access(&p(8, 8, &[]), &owners, None),
            Access::Full,
            "the directory's owner"
        );
        assert_eq!(unix_access(&p(0, 0, &[]), &owners, None), Access::Full);
        assert_eq!(
            unix_access(&p(1001, 50, &[]), &owners, Some(50)),
            Access::Read
        );
        assert_eq!(
            unix_access(&p(1001, 100, &[100, 50]), &owners, Some(50)),
            Access::Read,
            "a supplementary group counts"
        );
        assert!(
            matches!(unix_access(&p(1001, 51, &[]), &owners, Some(50)), Access::Denied(m) if m.contains("uid 1001"))
        );
        assert!(matches!(
            unix_access(&p(1001, 50, &[50]), &owners, None),
            Access::Denied(_)
        ));
    }

    #[test]
    fn tokens() {
        assert_eq!(tcp_access(Some("abc"), Some("abc")), Access::Full);
        assert_eq!(tcp_access(Some("abd"), Some("abc")), Access::Metrics);
        assert_eq!(tcp_access(Some("ab"), Some("abc")), Access::Metrics);
        assert_eq!(tcp_access(None, Some("abc")), Access::Metrics);
        assert_eq!(tcp_access(Some("abc"), None), Access::Metrics);
    }
}
