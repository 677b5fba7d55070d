//! Inbound SMTP (RFC 5321): one task per client connection. Commands are parsed
//! by `smtp-proto` (the parser of Stalwart's SMTP server); replies to pipelined
//! commands are sent together once the client's input is used up (RFC 2920).
//! A message is answered `250` only after the queue's `commit` returned, i.e.
//! once it is on disk.

use crate::conn::Conn;
use crate::Shared;
use mailq::{Error as QError, MessageBuilder};
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::{Error as PError, MailFrom, RcptTo, Request};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Commands in error before the client is disconnected (Postfix's
/// `smtpd_hard_error_limit`).
const MAX_ERRORS: u32 = 20;
/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4 says 512; this
/// leaves room for extension parameters, as Postfix's `line_length_limit`).
const MAX_COMMAND_LINE: usize = 2048;
/// More `Received:` headers than this is a mail loop (Postfix's `hopcount_limit`).
const MAX_HOPS: usize = 50;

/// What the command loop does after a reply.
enum Next {
    Continue,
    Data,
    StartTls,
    Close,
}

/// Bytes of the header section kept for the hop count.
const HEAD_SCAN: usize = 64 * 1024;

/// DATA being received: unstuffed bytes go to the message as they arrive.
struct Incoming {
    rx: DataReceiver,
    chunk: Vec<u8>,
    /// The first bytes, for the hop count.
    head: Vec<u8>,
    /// The last four bytes seen, oldest first (for the bare-dot check).
    last: [u8; 4],
    size: usize,
    too_big: bool,
    bare_dot: bool,
    started: Instant,
}

impl Incoming {
    fn new() -> Incoming {
        let mut rx = DataReceiver::new();
        // The receiver only recognises "\r\n." after a line end it has seen;
        // the DATA command's own CRLF is that line end.
        rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
        Incoming {
            rx,
            chunk: Vec::with_capacity(16 * 1024),
            head: Vec::new(),
            last: [0, 0, b'\r', b'\n'],
            size: 0,
            too_big: false,
            bare_dot: false,
            started: Instant::now(),
        }
    }

    /// Moves what the receiver produced into the message (or drops it once
    /// the message is too big), checking it on the way.
    fn take_chunk(&mut self, txn: Option<&mut Txn>, max_size: usize) {
        if self.chunk.is_empty() {
            return;
        }
        self.scan_dots();
        self.size += self.chunk.len();
        if self.head.len() < HEAD_SCAN {
            let n = (HEAD_SCAN - self.head.len()).min(self.chunk.len());
            self.head.extend_from_slice(&self.chunk[..n]);
        }
        self.too_big |= self.size > max_size;
        if let (false, Some(t)) = (self.too_big, txn) {
            self.too_big = t.builder.append(&self.chunk).is_err();
        }
        self.chunk.clear();
    }
}

impl Incoming {
    /// Runs the bare-dot check at every dot of the new chunk (and of the last
    /// bytes before it), not at every byte: bodies are mostly dot-free.
    fn scan_dots(&mut self) {
        let mut w: Vec<u8> = Vec::with_capacity(self.chunk.len() + 4);
        w.extend_from_slice(&self.last);
        w.extend_from_slice(&self.chunk);
        // Each new byte `c` at index i >= 4 is judged on w[i-4..i]; only the
        // bytes one or two after a dot can complete a bad pattern.
        for d in memchr::memchr_iter(b'.', &w[1..]).map(|d| d + 1) {
            for i in [d + 1, d + 2] {
                if i >= 4 && i < w.len() {
                    let last = [w[i - 4], w[i - 3], w[i - 2], w[i - 1]];
                    self.bare_dot |= lone_dot_with_bare_line_end(last, w[i]);
                }
            }
        }
        let n = w.len();
        self.last = [w[n - 4], w[n - 3], w[n - 2], w[n - 1]];
    }
}

/// True when `c`, after the bytes `last`, completes a line holding only a
/// dot where a line end on either side is a bare CR or LF: the end of DATA for
/// lenient receivers, i.e. SMTP smuggling. The proper `CRLF . CRLF` inside a
/// body (a stuffed `..` line) is fine: it is stuffed again on the way out.
fn lone_dot_with_bare_line_end(last: [u8; 4], c: u8) -> bool {
    let [p4, p3, p2, p1] = last;
    let eol = |b: u8| b == b'\r' || b == b'\n';
    let crlf_before = |a: u8, b: u8| a == b'\r' && b == b'\n';
    // ". " between line ends, the one before it bare: LF . EOL, CR . EOL.
    let bare_left = p1 == b'.' && eol(c) && (p2 == b'\r' || (p2 == b'\n' && p3 != b'\r'));
    // CRLF . LF
    let bare_lf_right = p1 == b'.' && c == b'\n' && crlf_before(p3, p2);
    // CRLF . CR, then anything but LF
    let bare_cr_right = p2 == b'.' && p1 == b'\r' && c != b'\n' && crlf_before(p4, p3);
    bare_left || bare_lf_right || bare_cr_right
}

/// A local part this relay passes on as it is: no quoting needed and no
/// characters that some MTA might route on.
fn plain_local_part(local: &str) -> bool {
    const SPECIAL: &[u8] = b"@%!\"<>\\(),;:[]";
    !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !SPECIAL.contains(&b))
}

/// The envelope being received.
struct Txn {
    builder: MessageBuilder,
    sender: String,
    rcpts: usize,
}

/// One client connection.
struct Smtpd {
    shared: Arc<Shared>,
    peer: SocketAddr,
    conn: Conn,
    out: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    txn: Option<Txn>,
    errors: u32,
}

/// Serves one client until it quits, times out or misbehaves.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut s = Smtpd {
        shared,
        peer,
        conn: Conn::Plain(tcp),
        out: Vec::with_capacity(512),
        helo: None,
        esmtp: false,
        txn: None,
        errors: 0,
    };
    tracing::debug!(client = %peer, "connect");
    if let Err(why) = s.run().await {
        tracing::info!(client = %peer, "disconnect: {why}");
    } else {
        tracing::debug!(client = %peer, "disconnect");
    }
    // Bounded: a TLS peer that stops reading would keep close_notify (and this
    // connection's slot) pending for ever.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.conn.shutdown()).await;
}

impl Smtpd {
    async fn run(&mut self) -> Result<(), String> {
        let host = self.shared.cfg.hostname.clone();
        if self.shared.refusing.load(Ordering::Acquire) {
            self.reply(&format!("421 4.3.0 {host} Service not available: the queue refuses mail until the relay is restarted"));
            return self.flush().await;
        }
        self.reply(&format!("220 {host} ESMTP mailq-relay"));
        let mut buf = vec![0u8; 16 * 1024];
        let mut requests = RequestReceiver::default();
        let mut data: Option<Incoming> = None;
        // Bytes of the current command line seen so far, and whether it is
        // already too long (then it is skipped to its end and refused once).
        let (mut line_len, mut skipping) = (0usize, false);
        loop {
            self.flush().await?;
            let timeout = if data.is_some() {
                self.shared.cfg.data_timeout
            } else {
                self.shared.cfg.command_timeout
            };
            let n = match tokio::time::timeout(timeout, self.conn.read(&mut buf)).await {
                Err(_) => {
                    self.reply(&format!("421 4.4.2 {host} Error: timeout exceeded"));
                    self.flush().await?;
                    return Err("timeout".into());
                }
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) => return Err("lost connection".into()),
                Ok(Ok(n)) => n,
            };
            let mut it = buf[..n].iter();
            while it.len() > 0 {
                if let Some(inc) = &mut data {
                    let done = inc.rx.ingest(&mut it, &mut inc.chunk);
                    inc.take_chunk(self.txn.as_mut(), self.shared.cfg.max_size);
                    if !done {
                        continue;
                    }
                    if let Some(inc) = data.take() {
                        if let Next::Close = self.end_data(inc).await {
                            self.flush().await?;
                            return Ok(());
                        }
                    }
                    continue;
                }
                let rest = it.as_slice();
                let line_end = rest.iter().position(|&b| b == b'\n');
                match line_end {
                    Some(p) if skipping || line_len + p + 1 > MAX_COMMAND_LINE => {
                        it = rest[p + 1..].iter();
                        (line_len, skipping) = (0, false);
                        requests = RequestReceiver::default();
                        if let Next::Close = self.error("500 5.5.2 Error: line too long") {
                            self.flush().await?;
                            return Ok(());
                        }
                        continue;
                    }
                    Some(_) => line_len = 0,
                    None if skipping || line_len + rest.len() > MAX_COMMAND_LINE => {
                        skipping = true;
                        break;
                    }
                    None => line_len += rest.len(),
                }
                let next = match requests.ingest(&mut it) {
                    Ok(req) => self.command(req).await,
                    Err(PError::NeedsMoreData { .. }) => break,
                    Err(e) => {
                        // One reply per line: whatever the parser left of a bad
                        // line is not another command.
                        if let Some(p) = line_end {
                            if it.len() > rest.len() - (p + 1) {
                                it = rest[p + 1..].iter();
                            }
                        }
                        requests = RequestReceiver::default();
                        self.parse_error(e)
                    }
                };
                match next {
                    Next::Continue => {}
                    Next::Data => data = Some(Incoming::new()),
                    Next::StartTls => {
                        // RFC 3207 §4.2: anything pipelined after STARTTLS arrived in
                        // plain text and is discarded, not executed under TLS.
                        self.flush().await?;
                        self.start_tls().await?;
                        requests = RequestReceiver::default();
                        break;
                    }
                    Next::Close => {
                        self.flush().await?;
                        return Ok(());
                    }
                }
            }
        }
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let w = async {
            self.conn.write_all(&self.out).await?;
            self.conn.flush().await
        };
        match tokio::time::timeout(self.shared.cfg.command_timeout, w).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("write timeout".into()),
        }
    }

    /// A command in error: its reply, and the connection closed after too many.
    fn error(&mut self, line: &str) -> Next {
        self.reply(line);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            let host = &self.shared.cfg.hostname;
            let bye = format!("421 4.7.0 {host} Error: too many errors");
            self.reply(&bye);
            return Next::Close;
        }
        Next::Continue
    }

    fn parse_error(&mut self, e: PError) -> Next {
        let line = match e {
            PError::UnknownCommand => "500 5.5.2 Error: command not recognized".to_string(),
            PError::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax".to_string(),
            PError::InvalidRecipientAddress => "501 5.1.3 Bad recipient address syntax".to_string(),
            PError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
            PError::InvalidParameter { param } => format!("501 5.5.4 Invalid parameter {param}"),
            PError::UnsupportedParameter { param } => {
                format!("555 5.5.4 Unsupported option: {}", clip(&param, 64))
            }
            PError::ResponseTooLong => "500 5.5.2 Error: line too long".to_string(),
            PError::InvalidResponse { .. } | PError::NeedsMoreData { .. } => {
                "500 5.5.2 Error: bad syntax".to_string()
            }
        };
        self.error(&line)
    }

    async fn command(&mut self, req: Request<Cow<'_, str>>) -> Next {
        match req {
            Request::Ehlo { host } => self.hello(&host, true),
            Request::Helo { host } => self.hello(&host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Rset => {
                self.txn = None;
                self.reply("250 2.0.0 Ok");
                Next::Continue
            }
            Request::Noop { .. } => {
                self.reply("250 2.0.0 Ok");
                Next::Continue
            }
            Request::Quit => {
                self.reply("221 2.0.0 Bye");
                Next::Close
            }
            Request::Vrfy { .. } => {
                self.reply(
                    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
                );
                Next::Continue
            }
            Request::Help { .. } => {
                self.reply(
                    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS",
                );
                Next::Continue
            }
            Request::StartTls => self.starttls(),
            Request::Lhlo { .. } => self.error("500 5.5.2 Error: LHLO is for LMTP, this is SMTP"),
            Request::Expn { .. }
            | Request::Auth { .. }
            | Request::Bdat { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error("502 5.5.1 Error: command not implemented"),
        }
    }

    fn hello(&mut self, host: &str, esmtp: bool) -> Next {
        if host.is_empty() {
            return self.error("501 5.5.4 Syntax: EHLO hostname");
        }
        self.txn = None;
        self.helo = Some(clip(host, 255).to_string());
        self.esmtp = esmtp;
        let me = self.shared.cfg.hostname.clone();
        if !esmtp {
            self.reply(&format!("250 {me}"));
            return Next::Continue;
        }
        let mut lines = vec![
            me,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.shared.cfg.max_size),
            "VRFY".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "8BITMIME".to_string(),
        ];
        if self.shared.tls.is_some() && !self.conn.is_tls() {
            lines.push("STARTTLS".to_string());
        }
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
        Next::Continue
    }

    fn starttls(&mut self) -> Next {
        if self.conn.is_tls() {
            return self.error("503 5.5.1 Error: TLS already active");
        }
        if self.shared.tls.is_none() {
            return self.error("502 5.5.1 Error: command not implemented");
        }
        self.reply("220 2.0.0 Ready to start TLS");
        Next::StartTls
    }

    async fn start_tls(&mut self) -> Result<(), String> {
        let Some(acceptor) = self.shared.tls.clone() else {
            return Err("STARTTLS without a certificate".into());
        };
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Err("STARTTLS twice".into());
        };
        let shake = tokio::time::timeout(self.shared.cfg.command_timeout, acceptor.accept(tcp));
        match shake.await {
            Ok(Ok(tls)) => {
                self.conn = Conn::Tls(Box::new(tls));
                // RFC 3207 §4.2: the client starts over with EHLO.
                self.helo = None;
                self.txn = None;
                Ok(())
            }
            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
            Err(_) => Err("TLS handshake timed out".into()),
        }
    }

    fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Next {
        if self.helo.is_none() {
            return self.error("503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.txn.is_some() {
            return self.error("503 5.5.1 Error: nested MAIL command");
        }
        if self.shared.refusing.load(Ordering::Acquire) {
            let host = &self.shared.cfg.hostname;
            let line = format!(
                "421 4.3.0 {host} Error: the queue refuses mail until the relay is restarted"
            );
            self.reply(&line);
            return Next::Close;
        }
        if let Some(why) = self.shared.q.queue().backpressure() {
            tracing::warn!(client = %self.peer, "refused at MAIL: {why}");
            return self.error("452 4.3.1 Insufficient system storage, try again later");
        }
        if from.flags
            & (smtp_proto::MAIL_BODY_BINARYMIME
                | smtp_proto::MAIL_SMTPUTF8
                | smtp_proto::MAIL_REQUIRETLS)
            != 0
        {
            return self.error("555 5.5.4 Unsupported option: BODY=BINARYMIME, SMTPUTF8 and REQUIRETLS are not offered");
        }
        if from.size > self.shared.cfg.max_size {
            return self.error("552 5.3.4 Message size exceeds fixed limit");
        }
        let plain = match from.address.rsplit_once('@') {
            Some((local, _)) => plain_local_part(local),
            None => from.address.is_empty(),
        };
        if !plain {
            return self.error("501 5.1.7 Bad sender address: quoted local parts, routing characters and addresses without a domain are not accepted");
        }
        let builder = match self.shared.q.queue().message(&from.address) {
            Ok(b) => b,
            Err(e) => {
                return self.error(&format!(
                    "501 5.1.7 Bad sender address: {}",
                    clip(&e.to_string(), 200)
                ))
            }
        };
        self.txn = Some(Txn {
            builder,
            sender: from.address.into_owned(),
            rcpts: 0,
        });
        self.reply("250 2.1.0 Ok");
        Next::Continue
    }

    fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Next {
        let cfg = &self.shared.cfg;
        let Some(txn) = &mut self.txn else {
            return self.error("503 5.5.1 Error: need MAIL command");
        };
        if txn.rcpts >= cfg.max_recipients {
            // Not counted as an error: the client sends the rest in another
            // transaction (RFC 5321 §4.5.3.1.10).
            self.reply("452 4.5.3 Error: too many recipients");
            return Next::Continue;
        }
        let addr = to.address.as_ref();
        let Some((local, domain)) = addr.rsplit_once('@') else {
            return self.error(&format!(
                "501 5.1.3 <{}>: Recipient address must contain a domain",
                clip(addr, 256)
            ));
        };
        if !plain_local_part(local) {
            // "user@elsewhere"@allowed, user%elsewhere@allowed, elsewhere!user@allowed:
            // a next hop that routes on them would relay to elsewhere
            // (Postfix's allow_untrusted_routing=no), and quoting is not kept.
            let line = format!(
                "554 5.7.1 <{}>: sender-specified routing and quoted local parts are not accepted",
                clip(addr, 256)
            );
            return self.error(&line);
        }
        let domain = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        let domain = domain.as_str();
        if !cfg.policy.allows(self.peer.ip(), domain) {
            let line = format!("554 5.7.1 <{}>: Relay access denied", clip(addr, 256));
            return self.error(&line);
        }
        if cfg.routes.lookup(domain).is_none() {
            let line = format!(
                "550 5.4.4 <{}>: no route to this domain (add it to --routes or set --relay-to)",
                clip(addr, 256)
            );
            return self.error(&line);
        }
        match txn.builder.add_recipient(addr, None) {
            Ok(()) => {
                txn.rcpts += 1;
                self.reply("250 2.1.5 Ok");
                Next::Continue
            }
            Err(QError::TooLarge { .. }) => {
                self.reply("452 4.5.3 Error: too many recipients");
                Next::Continue
            }
            Err(e) => self.error(&format!(
                "501 5.1.3 Bad recipient address: {}",
                clip(&e.to_string(), 200)
            )),
        }
    }

    fn data(&mut self) -> Next {
        match &self.txn {
            None => self.error("503 5.5.1 Error: need MAIL command"),
            Some(t) if t.rcpts == 0 => self.error("554 5.5.1 Error: no valid recipients"),
            Some(_) => {
                let received = crate::headers::received(
                    self.helo.as_deref().unwrap_or(""),
                    self.peer.ip(),
                    &self.shared.cfg.hostname,
                    self.esmtp,
                    self.conn.is_tls(),
                );
                if let Some(t) = &mut self.txn {
                    if let Err(e) = t.builder.append(received.as_bytes()) {
                        tracing::error!(client = %self.peer, "cannot start the message: {e}");
                        self.txn = None;
                        return self
                            .error("451 4.3.0 Error: queue file write error, try again later");
                    }
                }
                self.reply("354 End data with <CR><LF>.<CR><LF>");
                Next::Data
            }
        }
    }

    /// The end of DATA: checks, then the durable commit, then the reply.
    async fn end_data(&mut self, inc: Incoming) -> Next {
        let Some(txn) = self.txn.take() else {
            return self.error("503 5.5.1 Error: need MAIL command");
        };
        if inc.too_big {
            return self.error("552 5.3.4 Error: message file too big");
        }
        if inc.bare_dot {
            return self.error("554 5.5.2 Error: a lone dot after a bare CR or LF in the message (SMTP smuggling); send CRLF line ends");
        }
        if crate::headers::count_received(&inc.head) > MAX_HOPS {
            return self.error("554 5.4.6 Error: too many hops (mail loop?)");
        }
        let (size, started) = (inc.size, inc.started);
        let result = txn.builder.commit_async().await;
        let host = self.shared.cfg.hostname.clone();
        match result {
            Ok(id) => {
                tracing::info!(
                    queue_id = %id,
                    from = %txn.sender,
                    nrcpt = txn.rcpts,
                    size,
                    client = %self.peer,
                    delay = started.elapsed().as_secs_f64(),
                    "accepted"
                );
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                self.reply(&format!("250 2.0.0 Ok: queued as {id}"));
                self.errors = 0;
                Next::Continue
            }
            Err(e @ QError::TooLarge { .. }) => {
                tracing::info!(client = %self.peer, "rejected: {e}");
                self.error("552 5.3.4 Error: message file too big")
            }
            Err(e @ QError::TryLater { .. }) => {
                // Backpressure: nothing was written and the queue is fine.
                tracing::warn!(client = %self.peer, "refused: {e}");
                self.error("452 4.3.1 Insufficient system storage, try again later")
            }
            Err(e @ QError::DiskFull(_)) => {
                // The queue is read-only from now on: this client hears 452 for the
                // message and 421 at its next MAIL; new clients hear 421 at once.
                self.shared.refusing.store(true, Ordering::Release);
                tracing::error!(client = %self.peer, "disk full, the queue refuses mail until restarted: {e}");
                self.error("452 4.3.1 Error: insufficient system storage")
            }
            Err(e @ QError::Poisoned(_)) => {
                self.shared.refusing.store(true, Ordering::Release);
                tracing::error!(client = %self.peer, "queue refuses mail until restarted: {e}");
                self.reply(&format!(
                    "421 4.3.0 {host} Error: the queue refuses mail until the relay is restarted"
                ));
                Next::Close
            }
            Err(e) => {
                tracing::error!(client = %self.peer, "enqueue failed: {e}");
                self.error("451 4.3.0 Error: queue file write error, try again later")
            }
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes, on a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare_dot(body: &[u8], piece: usize) -> bool {
        let mut inc = Incoming::new();
        for part in body.chunks(piece) {
            inc.chunk.extend_from_slice(part);
            inc.scan_dots();
            inc.chunk.clear();
        }
        inc.bare_dot
    }

    #[test]
    fn bare_dot_check_is_the_same_whatever_the_read_sizes() {
        let bad: [&[u8]; 6] = [
            b"a\n.\r\nb",
            b"a\r\n.\nb",
            b"a\n.\nb",
            b"a\r.\r\nb",
            b"a\r\n.\rb",
            b".\nb",
        ];
        let good: [&[u8]; 5] = [
            b"a\r\n.\r\nb",
            b"a\r\n..\r\nb",
            b"a\n.b\r\n",
            b"x.y\r\n.z\r\n",
            b"\r\n. \r\n",
        ];
        for piece in [1, 2, 3, 5, 64] {
            for b in bad {
                assert!(bare_dot(b, piece), "{b:?} in pieces of {piece}");
            }
            for g in good {
                assert!(!bare_dot(g, piece), "{g:?} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn local_parts_that_route_or_need_quotes_are_not_plain() {
        for ok in ["bob", "bob.smith+tag", "o'brien", "a_b-c=d"] {
            assert!(plain_local_part(ok), "{ok}");
        }
        for bad in [
            "", "v@evil", "v%evil", "evil!v", "john doe", "\"q\"", "a<b", "a\tb",
        ] {
            assert!(!plain_local_part(bad), "{bad}");
        }
    }
}
