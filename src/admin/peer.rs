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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

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
    Ok(PeerCred {
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
    })
}

/// The access of a Unix-socket peer: the owner (this process's effective uid)
/// and root get everything, a member of `read_gid` (by its effective gid) may
/// read; anyone else is refused.
pub fn unix_access(peer: PeerCred, owner: u32, read_gid: Option<u32>) -> Access {
    if peer.uid == owner || peer.uid == 0 {
        Access::Full
    } else if read_gid == Some(peer.gid) {
        Access::Read
    } else {
        Access::Denied(format!(
            "uid {} (pid {}) is neither the queue owner (uid {owner}), root, nor in the admin read group; run mailqctl as the queue owner",
            peer.uid, peer.pid
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
        let p = |uid, gid| PeerCred { pid: 7, uid, gid };
        assert_eq!(unix_access(p(1000, 1000), 1000, None), Access::Full);
        assert_eq!(unix_access(p(0, 0), 1000, None), Access::Full);
        assert_eq!(unix_access(p(1001, 50), 1000, Some(50)), Access::Read);
        assert!(
            matches!(unix_access(p(1001, 51), 1000, Some(50)), Access::Denied(m) if m.contains("uid 1001"))
        );
        assert!(matches!(
            unix_access(p(1001, 50), 1000, None),
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
