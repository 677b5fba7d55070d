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

/// The envelope being received.
struct Txn {
    builder: MessageBuilder,
    sender: String,
    rcpts: usize,
    declared_size: usize,
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
    let _ = s.conn.shutdown().await;
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
        let mut data: Option<(DataReceiver, Vec<u8>, Instant)> = None;
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
                if let Some((rx, body, started)) = &mut data {
                    let done = rx.ingest(&mut it, body);
                    if body.len() > self.shared.cfg.max_size {
                        // Keep reading to the end of the data, but not the bytes.
                        body.clear();
                        body.shrink_to(64 * 1024);
                        if let Some(t) = &mut self.txn {
                            t.declared_size = usize::MAX;
                        }
                    }
                    if !done {
                        continue;
                    }
                    let (_, body, started) = (rx, std::mem::take(body), *started);
                    data = None;
                    if let Next::Close = self.end_data(body, started).await {
                        self.flush().await?;
                        return Ok(());
                    }
                    continue;
                }
                let rest = it.as_slice();
                match rest.iter().position(|&b| b == b'\n') {
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
                    Err(e) => self.parse_error(e),
                };
                match next {
                    Next::Continue => {}
                    Next::Data => {
                        let mut rx = DataReceiver::new();
                        // The receiver only recognises "\r\n." after a line end it
                        // has seen; the DATA command's own CRLF is that line end.
                        rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
                        data = Some((rx, Vec::with_capacity(8 * 1024), Instant::now()));
                    }
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
            declared_size: from.size,
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
            return self.error("452 4.5.3 Error: too many recipients");
        }
        let addr = to.address.as_ref();
        let Some((_, domain)) = addr.rsplit_once('@') else {
            return self.error(&format!(
                "501 5.1.3 <{}>: Recipient address must contain a domain",
                clip(addr, 256)
            ));
        };
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
            Err(QError::TooLarge { .. }) => self.error("452 4.5.3 Error: too many recipients"),
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
                self.reply("354 End data with <CR><LF>.<CR><LF>");
                Next::Data
            }
        }
    }

    /// The end of DATA: checks, then the durable commit, then the reply.
    async fn end_data(&mut self, body: Vec<u8>, started: Instant) -> Next {
        let Some(mut txn) = self.txn.take() else {
            return self.error("503 5.5.1 Error: need MAIL command");
        };
        if txn.declared_size == usize::MAX {
            return self.error("552 5.3.4 Error: message file too big");
        }
        if crate::headers::count_received(&body) > MAX_HOPS {
            return self.error("554 5.4.6 Error: too many hops (mail loop?)");
        }
        let received = crate::headers::received(
            self.helo.as_deref().unwrap_or(""),
            self.peer.ip(),
            &self.shared.cfg.hostname,
            self.esmtp,
            self.conn.is_tls(),
        );
        let built = txn
            .builder
            .append(received.as_bytes())
            .and_then(|()| txn.builder.append(&body));
        let size = body.len();
        drop(body);
        let result = match built {
            Ok(()) => txn.builder.commit_async().await,
            Err(e) => Err(e),
        };
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
