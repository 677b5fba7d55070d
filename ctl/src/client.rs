//! How mailqctl reaches a queue: the admin socket of the process that owns
//! it, or — when no process does — the queue itself, opened in this process
//! (taking its lock) and served by the same API code in-process.

use mailq::{Options, Queue};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit codes an operator (or a script) can act on.
pub mod exit {
    /// Bad request: a filter, id or argument the queue refused.
    pub const BAD_REQUEST: i32 = 2;
    /// No such message or recipient.
    pub const NOT_FOUND: i32 = 3;
    /// Not allowed: run as the queue owner or root.
    pub const DENIED: i32 = 4;
    /// The queue cannot be reached (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// Internal error in the queue (EX_SOFTWARE).
    pub const INTERNAL: i32 = 70;
    /// The queue refuses writes (poisoned) or is busy: try later (EX_TEMPFAIL).
    pub const TEMPFAIL: i32 = 75;
}

/// A failure with the exit code to leave with.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: i32,
    /// What happened and what to do.
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Where requests go.
pub enum Target {
    /// The owning process's admin socket.
    Socket(PathBuf),
    /// No process owns the queue: it is open in this process.
    Local(Queue),
}

impl Target {
    /// `--socket PATH`: that socket only.
    pub fn socket(path: &Path) -> Target {
        Target::Socket(path.to_path_buf())
    }

    /// `--dir DIR`: the owner's socket when someone answers on it, else the
    /// queue itself.
    pub fn dir(dir: &Path) -> Result<Target, Failure> {
        let sock = dir.join("admin.sock");
        match UnixStream::connect(&sock) {
            Ok(_) => return Ok(Target::Socket(sock)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Failure::new(
                    exit::DENIED,
                    format!(
                        "{}: permission denied; run mailqctl as the queue owner or root",
                        sock.display()
                    ),
                ))
            }
            Err(_) => {}
        }
        check_queue_dir(dir)?;
        match Queue::open(dir, Options::default()) {
            Ok(q) => Ok(Target::Local(q)),
            Err(mailq::Error::Locked(_)) => Err(Failure::new(
                exit::UNAVAILABLE,
                format!(
                    "{} is locked by another process, but nobody answers on {}: that MTA does not serve the admin API (mailq-relay does by default; an embedding MTA calls Admin::open)",
                    dir.display(),
                    sock.display()
                ),
            )),
            Err(e) => Err(Failure::new(
                exit::UNAVAILABLE,
                format!("cannot open the queue in {}: {e}", dir.display()),
            )),
        }
    }

    /// Sends one request; returns the status and body.
    pub fn call(&self, method: &str, target: &str, body: &str) -> Result<(u16, Vec<u8>), Failure> {
        match self {
            Target::Local(q) => {
                let r = q.admin_request(method, target, body.as_bytes());
                Ok((r.status, r.body))
            }
            Target::Socket(path) => over_socket(path, method, target, body),
        }
    }
}

/// Opening a queue in process is only for a real queue (a mistyped path must
/// not become a new, empty one) and only as its owner (files root creates in
/// a queue the MTA runs as `mail` would stop the MTA from starting).
fn check_queue_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    let not_queue = || {
        Failure::new(
            exit::UNAVAILABLE,
            format!(
                "{} is not a queue directory (no log segments or checkpoint)",
                dir.display()
            ),
        )
    };
    let meta = std::fs::metadata(dir).map_err(|_| not_queue())?;
    let is_queue = std::fs::read_dir(dir)
        .map_err(|_| not_queue())?
        .filter_map(|e| e.ok())
        .any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".seg") || n == "checkpoint"
        });
    if !meta.is_dir() || !is_queue {
        return Err(not_queue());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if me != meta.uid() {
        return Err(Failure::new(
            exit::DENIED,
            format!(
                "no process serves {}/admin.sock, and opening the queue directly must be done as its owner (uid {}), so that files it writes stay the MTA's",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

fn over_socket(
    path: &Path,
    method: &str,
    target: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), Failure> {
    let unreachable = |e: std::io::Error| {
        let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
            exit::DENIED
        } else {
            exit::UNAVAILABLE
        };
        Failure::new(code, format!("{}: {e}", path.display()))
    };
    let mut s = UnixStream::connect(path).map_err(unreachable)?;
    // A search over a million messages takes about a second; a minute is
    // beyond anything healthy. An action is waited for however long it takes
    // (giving up would not stop it).
    if method == "GET" {
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    }
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: mailq\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(unreachable)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(unreachable)?;
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => Ok((resp.code.unwrap_or(0), out[n..].to_vec())),
        _ => Err(Failure::new(
            exit::UNAVAILABLE,
            format!("{}: the server's answer is not HTTP", path.display()),
        )),
    }
}
