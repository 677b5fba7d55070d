//! The admin API (feature `admin`): HTTP/1.1 + JSON served by the process
//! that owns the queue, on a Unix socket (`<queue dir>/admin.sock`, mode 0600,
//! peers checked with `SO_PEERCRED`) and optionally on TCP for Prometheus
//! (`/metrics` open, everything else behind a bearer token).
//!
//! No thread is started unless asked for: [`Admin::fd`] is one descriptor
//! (an epoll set of the listeners and the open connections) that the MTA adds
//! to its event loop; when it is readable, [`Admin::serve_ready`] does the
//! work that is ready without blocking. [`Admin::spawn`] runs the same loop on
//! a thread of its own for MTAs that prefer that, and the `tokio` feature
//! serves it as a task ([`Admin::serve_tokio`]). Requests run on the serving
//! thread: a search over a million messages takes about a second there.
//!
//! Layers: `http` (framing), `peer` (who may do what), `json` (values and
//! predicates), `api` (endpoints), this module (sockets and the loop).
//! Depends on `queue`, `error` and the public value types.

mod api;
mod http;
mod json;
mod peer;

pub use peer::Access;

use crate::error::{Error, Result};
use crate::queue::Queue;
use http::{Parsed, Request, Response};
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where and to whom the admin API is served.
#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    /// Unix socket path (default `<queue dir>/admin.sock`).
    pub socket: Option<PathBuf>,
    /// A group whose members may use the read-only endpoints (the socket is
    /// then mode 0660 and owned by that group).
    pub read_group: Option<u32>,
    /// Also listen on this TCP address (for Prometheus): `/metrics` and
    /// `/v1/stats` are open there, every other endpoint needs `token`.
    pub tcp: Option<SocketAddr>,
    /// Allow `tcp` on an address that is not loopback.
    pub tcp_any_address: bool,
    /// Bearer token for the TCP endpoints beyond metrics (none: metrics only).
    pub token: Option<String>,
}

/// Open Unix-socket connections kept at most; the oldest is dropped beyond that.
const MAX_CONNECTIONS: usize = 64;
/// Open TCP connections at most: more are closed at once (anonymous loopback
/// clients never push out the owner's connections).
const MAX_TCP: usize = 16;
/// Largest `top` a metrics-only (TCP, no token) client may ask for.
pub(crate) const MAX_PUBLIC_TOP: usize = 1000;
/// Passes of `serve_ready` before it returns (the fd stays readable if more is
/// waiting), so a client that never stops sending cannot hold the caller.
const PASSES: usize = 16;
/// A connection that has not sent a whole request by then is closed.
const IDLE: Duration = Duration::from_secs(10);
/// epoll tokens of the listeners and the stop event.
const UNIX: u64 = 0;
const TCP: u64 = 1;
const STOP: u64 = 2;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 64;

/// What one pass of the loop did.
#[derive(Default)]
struct Served {
    answered: usize,
    events: usize,
    stop: bool,
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
    /// Writes without raising SIGPIPE in a host that did not ignore it (a C
    /// MTA): `send(MSG_NOSIGNAL)`, never `write`.
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // SAFETY: `b` is a readable buffer of `b.len()` bytes and the fd is open.
        let n = unsafe { libc::send(self.fd(), b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
    fn is_tcp(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }
    /// Half-closes: the peer reads the end of the response, and what it still
    /// sends is drained rather than answered with a reset.
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

struct Conn {
    stream: Stream,
    /// Unix peers are decided at accept; TCP per request (by token).
    access: Option<Access>,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    since: Instant,
    /// The response is out; what the peer still sends is read and dropped
    /// until it closes (or [`IDLE`] passes).
    draining: bool,
}

/// The admin API server of one queue. Dropping it closes the listeners and
/// removes the socket file.
pub struct Admin {
    queue: Queue,
    opts: AdminOptions,
    epoll: OwnedFd,
    unix: UnixListener,
    socket: PathBuf,
    tcp: Option<TcpListener>,
    conns: HashMap<u64, Conn>,
    next: u64,
    /// Who gets full access: this process's euid and the queue directory's owner.
    owners: [u32; 2],
    /// The socket file this server created (device, inode): only that is removed.
    socket_id: (u64, u64),
    /// Listeners taken out of the epoll set after EMFILE and the like, and when
    /// to put them back.
    paused: Option<Instant>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("socket", &self.socket)
            .field("tcp", &self.tcp_addr())
            .field("connections", &self.conns.len())
            .finish()
    }
}

fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |e| Error::io(op, path, e)
}

impl Admin {
    /// Listens for the admin API of `queue`. A stale socket file left by a
    /// process that died is replaced; one a live process still serves is an
    /// error.
    pub fn open(queue: &Queue, opts: AdminOptions) -> Result<Admin> {
        let socket = opts
            .socket
            .clone()
            .unwrap_or_else(|| queue.dir().join("admin.sock"));
        if socket.as_os_str().len() >= 108 {
            return Err(Error::InvalidOption(format!(
                "admin socket path {} is longer than a Unix socket allows (107 bytes); set AdminOptions::socket to a shorter path",
                socket.display()
            )));
        }
        remove_stale(&socket)?;
        let unix = UnixListener::bind(&socket).map_err(io("bind admin socket", &socket))?;
        let socket_id = std::fs::symlink_metadata(&socket)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
            .map_err(io("admin socket", &socket))?;
        let mode = if opts.read_group.is_some() {
            0o660
        } else {
            0o600
        };
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod admin socket", &socket))?;
        if let Some(gid) = opts.read_group {
            std::os::unix::fs::chown(&socket, None, Some(gid))
                .map_err(io("chown admin socket", &socket))?;
        }
        unix.set_nonblocking(true)
            .map_err(io("admin socket", &socket))?;
        let tcp = match opts.tcp {
            Some(a) if !a.ip().is_loopback() && !opts.tcp_any_address => {
                return Err(Error::InvalidOption(format!(
                    "admin TCP address {a} is not loopback; set tcp_any_address to expose it"
                )))
            }
            Some(a) => {
                let l = TcpListener::bind(a).map_err(io("bind admin TCP", a.to_string()))?;
                l.set_nonblocking(true)
                    .map_err(io("admin TCP", a.to_string()))?;
                Some(l)
            }
            None => None,
        };
        // SAFETY: epoll_create1 has no memory preconditions; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io("epoll_create1", &socket)(std::io::Error::last_os_error()));
        }
        // SAFETY: `ep` is a new descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let admin = Admin {
            queue: queue.clone(),
            opts,
            epoll,
            unix,
            socket,
            tcp,
            conns: HashMap::new(),
            next: STOP + 1,
            owners: [peer::euid(), dir_owner(queue.dir()).unwrap_or(u32::MAX)],
            socket_id,
            paused: None,
        };
        admin.watch(admin.unix.as_raw_fd(), UNIX, libc::EPOLLIN)?;
        if let Some(t) = &admin.tcp {
            admin.watch(t.as_raw_fd(), TCP, libc::EPOLLIN)?;
        }
        Ok(admin)
    }

    /// The descriptor to add to the event loop: readable when
    /// [`Admin::serve_ready`] has work.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The Unix socket path.
    pub fn socket_path(&self) -> &std::path::Path {
        &self.socket
    }

    /// The TCP address, when listening on TCP (the port chosen when 0 was asked).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.local_addr().ok())
    }

    fn watch(&self, fd: RawFd, token: u64, events: i32) -> Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, events: i32) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open and `ev` is a valid epoll_event.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io("epoll_ctl", &self.socket)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Accepts, reads, answers and writes whatever is ready, without
    /// blocking (each request is served on this thread). Returns the number of
    /// requests answered. Call it when [`Admin::fd`] is readable.
    ///
    /// Register the fd level-triggered (`EPOLLIN` without `EPOLLET`, or
    /// `poll`): when more is waiting than one call serves, it stays readable.
    pub fn serve_ready(&mut self) -> Result<usize> {
        self.serve_passes().map(|(n, _)| n)
    }

    /// Serves until nothing is ready, at most [`PASSES`] times; also says
    /// whether more may be waiting.
    fn serve_passes(&mut self) -> Result<(usize, bool)> {
        let mut answered = 0;
        for _ in 0..PASSES {
            let r = self.wait_and_serve(0)?;
            answered += r.answered;
            if r.events == 0 {
                return Ok((answered, false));
            }
        }
        Ok((answered, true))
    }

    /// Waits up to `timeout_ms` (-1: forever) for events and serves them.
    fn wait_and_serve(&mut self, timeout_ms: i32) -> Result<Served> {
        self.resume_listeners();
        // While listeners are paused, wake up to put them back.
        let timeout_ms = match self.paused {
            Some(_) if !(0..=100).contains(&timeout_ms) => 100,
            _ => timeout_ms,
        };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        // SAFETY: `events` is a writable array of EVENTS epoll_event.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                return Ok(Served::default());
            }
            return Err(io("epoll_wait", &self.socket)(e));
        }
        let mut served = 0;
        let mut stop = false;
        for ev in &events[..n as usize] {
            match ev.u64 {
                UNIX | TCP => self.accept(ev.u64)?,
                STOP => stop = true,
                t => served += self.service(t, ev.events) as usize,
            }
        }
        self.expire();
        Ok(Served {
            answered: served,
            events: n as usize,
            stop,
        })
    }

    fn accept(&mut self, which: u64) -> Result<()> {
        loop {
            let accepted = if which == UNIX {
                self.unix.accept().map(|(s, _)| Stream::Unix(s))
            } else {
                match self.tcp.as_ref() {
                    Some(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                    None => return Ok(()),
                }
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Out of descriptors: the pending connection stays queued
                    // and the listener readable; take it out for a moment
                    // instead of spinning.
                    self.pause_listeners();
                    return Ok(());
                }
                Err(_) => continue, // ECONNABORTED and the like: that client is gone
            };
            let access = match &stream {
                Stream::Unix(s) => Some(match peer::peer_cred(s) {
                    Ok(c) => peer::unix_access(&c, &self.owners, self.opts.read_group),
                    Err(e) => Access::Denied(format!("peer credentials unavailable: {e}")),
                }),
                Stream::Tcp(_) => None,
            };
            let nb = match &stream {
                Stream::Unix(s) => s.set_nonblocking(true),
                Stream::Tcp(s) => s.set_nonblocking(true),
            };
            if nb.is_err() {
                continue;
            }
            let tcp = stream.is_tcp();
            let same_kind = self
                .conns
                .values()
                .filter(|c| c.stream.is_tcp() == tcp)
                .count();
            if tcp && same_kind >= MAX_TCP {
                continue; // dropped: closed at once
            }
            if !tcp && same_kind >= MAX_CONNECTIONS {
                if let Some(&oldest) = self
                    .conns
                    .iter()
                    .filter(|(_, c)| !c.stream.is_tcp())
                    .min_by_key(|(_, c)| c.since)
                    .map(|(k, _)| k)
                {
                    self.close(oldest);
                }
            }
            let token = self.next;
            self.next += 1;
            if self.watch(stream.fd(), token, libc::EPOLLIN).is_err() {
                continue;
            }
            self.conns.insert(
                token,
                Conn {
                    stream,
                    access,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    since: Instant::now(),
                    draining: false,
                },
            );
        }
    }

    fn listeners(&self) -> Vec<(RawFd, u64)> {
        let mut v = vec![(self.unix.as_raw_fd(), UNIX)];
        if let Some(t) = &self.tcp {
            v.push((t.as_raw_fd(), TCP));
        }
        v
    }

    fn pause_listeners(&mut self) {
        if self.paused.is_none() {
            for (fd, token) in self.listeners() {
                let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, token, 0);
            }
        }
        self.paused = Some(Instant::now() + Duration::from_millis(100));
    }

    fn resume_listeners(&mut self) {
        if self.paused.is_some_and(|t| Instant::now() >= t) {
            self.paused = None;
            for (fd, token) in self.listeners() {
                let _ = self.watch(fd, token, libc::EPOLLIN);
            }
        }
    }

    /// Reads or writes one connection; true when a request was answered.
    fn service(&mut self, token: u64, events: u32) -> bool {
        let Some(c) = self.conns.get_mut(&token) else {
            return false;
        };
        if c.draining {
            let mut buf = [0u8; 8192];
            let done = loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            if done {
                self.close(token);
            }
            return false;
        }
        if !c.output.is_empty() {
            if events & (libc::EPOLLOUT as u32) != 0 {
                self.flush(token);
            }
            return false;
        }
        let mut buf = [0u8; 8192];
        let mut gone = false;
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    if c.input.len() > http::MAX_HEAD + http::MAX_BODY {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        let resp = match http::parse(&c.input) {
            Parsed::Partial if gone => None,
            Parsed::Partial => return false,
            Parsed::Bad(r) => Some(r),
            Parsed::Done(req) => {
                let access = c.access.clone().unwrap_or_else(|| {
                    peer::tcp_access(req.token.as_deref(), self.opts.token.as_deref())
                });
                Some(answer(&self.queue, &access, &req))
            }
        };
        let Some(resp) = resp else {
            self.close(token);
            return false;
        };
        c.output = resp.to_bytes();
        c.input = Vec::new();
        self.flush(token);
        true
    }

    /// Writes what the socket takes; when all is written, half-closes and
    /// drains; waits for writability otherwise.
    fn flush(&mut self, token: u64) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let mut failed = false;
        while c.written < c.output.len() {
            match c.stream.write(&c.output[c.written..]) {
                Ok(0) => failed = true,
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => failed = true,
            }
            if failed {
                break;
            }
        }
        let (fd, done) = (c.stream.fd(), c.written >= c.output.len());
        c.since = Instant::now();
        if done {
            c.stream.shutdown_write();
            c.draining = true;
            c.output = Vec::new();
        }
        let interest = if done { libc::EPOLLIN } else { libc::EPOLLOUT };
        if failed || self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest).is_err() {
            self.close(token);
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, c.stream.fd(), token, 0);
        }
    }

    /// Closes connections idle longer than [`IDLE`].
    fn expire(&mut self) {
        let old: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.since.elapsed() > IDLE)
            .map(|(&k, _)| k)
            .collect();
        for k in old {
            self.close(k);
        }
    }

    /// Serves on a thread of its own until the returned handle is dropped
    /// (or [`AdminThread::stop`] is called).
    pub fn spawn(self) -> Result<AdminThread> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io("eventfd", &self.socket)(std::io::Error::last_os_error()));
        }
        // SAFETY: `efd` is a new descriptor that nothing else owns.
        let stop = std::sync::Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        self.watch(efd, STOP, libc::EPOLLIN)?;
        let mut me = self;
        let handle = std::thread::Builder::new()
            .name("mailq-admin".into())
            .spawn(move || loop {
                match me.wait_and_serve(-1) {
                    Ok(r) if r.stop => return,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            })
            .map_err(io("spawn admin thread", PathBuf::new()))?;
        Ok(AdminThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Serves as a task of the current tokio runtime until dropped (any
    /// runtime flavour: requests run on the blocking pool).
    #[cfg(feature = "tokio")]
    pub async fn serve_tokio(self) -> Result<()> {
        struct Fd(RawFd);
        impl AsRawFd for Fd {
            fn as_raw_fd(&self) -> RawFd {
                self.0
            }
        }
        let err = |e| io("admin task", PathBuf::new())(e);
        // `me` is declared first so that it is dropped last: the reactor lets
        // go of the epoll fd before the fd is closed.
        let mut me = Some(self);
        let fd = me.as_ref().map_or(-1, Admin::fd);
        // SAFETY: the epoll fd stays open while `afd` lives: `me` owns it and is
        // dropped after `afd` (declared earlier), and it is never closed meanwhile.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE)
        }
        .map_err(|e| err(e.into_parts().1))?;
        let mut more = false;
        loop {
            if !more {
                // Cleared before serving: an event that arrives meanwhile sets
                // it again (the reactor watches the fd edge-triggered, so what
                // is left over is served without waiting for a new edge).
                afd.readable().await.map_err(err)?.clear_ready();
            }
            let Some(a) = me.take() else { return Ok(()) };
            let (a, r) = tokio::task::spawn_blocking(move || {
                let mut a = a;
                let r = a.serve_passes();
                (a, r)
            })
            .await
            .map_err(|e| err(std::io::Error::other(e)))?;
            me = Some(a);
            more = r?.1;
            if more {
                tokio::task::yield_now().await;
            }
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        // Only the file this server created: another instance may have put
        // its own socket at that path since.
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.socket)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.socket_id)
        {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// Clears the way for a new socket at `path`: nothing there is fine; a socket
/// nobody listens on (a process that died) is removed; a live socket, or
/// anything that is not a socket, is an error (never removed).
fn remove_stale(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("admin socket", path)(e)),
    };
    let in_use = |why: &str| {
        Err(Error::InvalidOption(format!(
            "admin socket path {} {why}; stop that process or configure another path",
            path.display()
        )))
    };
    if !meta.file_type().is_socket() {
        return in_use("exists and is not a socket");
    }
    match UnixStream::connect(path) {
        Ok(_) => in_use("is served by another live process"),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(io("remove stale admin socket", path))
        }
        Err(e) => in_use(&format!("cannot be checked ({e})")),
    }
}

/// The uid owning the queue directory.
fn dir_owner(dir: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.uid())
}

/// The admin API served on its own thread (see [`Admin::spawn`]).
pub struct AdminThread {
    stop: std::sync::Arc<OwnedFd>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for AdminThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminThread").finish_non_exhaustive()
    }
}

impl AdminThread {
    /// Stops serving and waits for the thread (the socket file is removed).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to the eventfd, as eventfd expects.
        let _ = unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for AdminThread {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Serves one request, never letting a panic out (it becomes a 500).
fn answer(q: &Queue, access: &Access, req: &Request) -> Response {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| api::handle(q, access, req)));
    let mut resp =
        r.unwrap_or_else(|_| Response::error(500, "internal error while serving the request"));
    if req.method == "HEAD" {
        resp.body.clear();
    }
    resp
}

/// The answer of an in-process call to the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    /// HTTP status.
    pub status: u16,
    /// Content type (`application/json`, or Prometheus text).
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Queue {
    /// Calls the admin API in process, with full access, exactly as a request
    /// on the socket would be served (`target` is the path and query, e.g.
    /// `/v1/recipients?domain=gmail.com`). This is what `mailqctl --dir` uses
    /// on a queue no process owns.
    pub fn admin_request(&self, method: &str, target: &str, body: &[u8]) -> AdminResponse {
        let raw = format!(
            "{method} {target} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        let resp = match http::parse(&bytes) {
            Parsed::Done(req) => answer(self, &Access::Full, &req),
            Parsed::Bad(r) => r,
            Parsed::Partial => Response::error(400, "incomplete request"),
        };
        AdminResponse {
            status: resp.status,
            content_type: resp.content_type.to_string(),
            body: resp.body,
        }
    }
}

/// Fuzzing entry: parses `bytes` as a request and, when whole, serves it
/// against `q` with full access (actions run) or read-only access. The
/// answer's status, 0 while the request is incomplete.
#[doc(hidden)]
pub fn fuzz_request(q: &Queue, bytes: &[u8], full: bool) -> u16 {
    let access = if full { Access::Full } else { Access::Read };
    match http::parse(bytes) {
        Parsed::Done(req) => {
            // Not through `answer`: a panic must reach the fuzzer.
            api::handle(q, &access, &req).status
        }
        Parsed::Bad(r) => r.status,
        Parsed::Partial => 0,
    }
}

/// Percent-encodes a query or path component (for clients building targets).
pub fn encode_component(s: &str) -> String {
    http::percent_encode(s)
}
