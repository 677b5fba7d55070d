//! Outbound SMTP: one connection to a next hop, several messages over it
//! (RSET between), pipelined MAIL/RCPT/DATA when the server offers PIPELINING.
//! Replies are parsed by `smtp-proto`. Every read and write has a deadline.
//!
//! The result of a transaction is one [`Outcome`] per recipient, from the RCPT
//! replies and the reply to the final dot. Anything that makes the connection
//! unusable — connect failure, timeout, a 4xx/5xx greeting, `421`, a closed or
//! garbled stream — is a site failure (`Err` with the reason).

use crate::server::clip;
use mailq::Outcome;
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{Error as PError, Response};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Deadlines for the client's steps.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each reply (greeting, EHLO, MAIL, RCPT, DATA, RSET).
    pub reply: Duration,
    /// The reply to the final dot (RFC 5321 §4.5.3.2.6 suggests 10 minutes).
    pub data_end: Duration,
}

/// A connection to one next hop, after EHLO.
pub struct Client {
    stream: TcpStream,
    hop: String,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    rx: ResponseReceiver,
    t: Timeouts,
    pipelining: bool,
    eightbit: bool,
    size_limit: Option<usize>,
}

/// Why a connection failed: the reason recorded for the recipients.
pub type SiteError = String;

/// " from ADDR" for an egress source's address, for reasons.
fn via(from: Option<IpAddr>) -> String {
    from.map(|a| format!(" from {a}")).unwrap_or_default()
}

/// A TCP connection to `hop`, bound to local address `from` when given:
/// the hop's first address of the same family (an IPv4 source cannot reach
/// an IPv6-only hop: that is the reason then).
async fn open(hop: &str, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(hop).await;
    };
    let to = tokio::net::lookup_host(hop)
        .await?
        .find(|a| a.is_ipv4() == from.is_ipv4())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no address of the source's family (IPv4/IPv6)",
            )
        })?;
    let socket = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

impl Client {
    /// Connects (from local address `from` when given: an egress source),
    /// reads the greeting and introduces itself (EHLO, or HELO when EHLO is
    /// refused).
    pub async fn connect(
        hop: &str,
        from: Option<IpAddr>,
        helo: &str,
        t: Timeouts,
    ) -> Result<Client, SiteError> {
        let stream = match tokio::time::timeout(t.connect, open(hop, from)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect to {hop}{}: {e}", via(from))),
            Err(_) => {
                return Err(format!(
                    "connect to {hop}{}: timed out after {:?}",
                    via(from),
                    t.connect
                ))
            }
        };
        let _ = stream.set_nodelay(true);
        let mut c = Client {
            stream,
            hop: hop.to_string(),
            buf: vec![0; 8192],
            pos: 0,
            len: 0,
            rx: ResponseReceiver::default(),
            t,
            pipelining: false,
            eightbit: false,
            size_limit: None,
        };
        let greeting = c.reply(t.reply).await?;
        if greeting.code != 220 {
            return Err(c.said(&greeting, "the greeting"));
        }
        c.send(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let ehlo = c.reply(t.reply).await?;
        if ehlo.code == 250 {
            c.capabilities(&ehlo.message);
        } else if (500..600).contains(&ehlo.code) && ehlo.code != 554 {
            c.send(format!("HELO {helo}\r\n").as_bytes()).await?;
            let helo_reply = c.reply(t.reply).await?;
            if helo_reply.code != 250 {
                return Err(c.said(&helo_reply, "HELO"));
            }
        } else {
            return Err(c.said(&ehlo, "EHLO"));
        }
        Ok(c)
    }

    /// The extensions this client uses, from the EHLO reply's lines.
    fn capabilities(&mut self, text: &str) {
        for line in text.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            if kw.eq_ignore_ascii_case("PIPELINING") {
                self.pipelining = true;
            } else if kw.eq_ignore_ascii_case("8BITMIME") {
                self.eightbit = true;
            } else if kw.eq_ignore_ascii_case("SIZE") {
                self.size_limit = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
            }
        }
    }

    /// Whether the server offered PIPELINING.
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// `host:port` of the next hop.
    pub fn hop(&self) -> &str {
        &self.hop
    }

    /// One transaction. `Ok` has one outcome per recipient (in order); `Err`
    /// means the connection is lost or must not be used again.
    pub async fn deliver(
        &mut self,
        sender: &str,
        rcpts: &[String],
        body: &[u8],
    ) -> Result<Vec<Outcome>, SiteError> {
        if let Some(limit) = self.size_limit.filter(|&l| body.len() > l) {
            let why = format!(
                "message size {} exceeds the limit of {} ({limit} bytes)",
                body.len(),
                self.hop
            );
            return Ok(vec![Outcome::perm(why); rcpts.len()]);
        }
        let mut mail = format!("MAIL FROM:<{sender}>");
        if self.size_limit.is_some() {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if self.eightbit && body.iter().any(|b| *b >= 0x80) {
            mail.push_str(" BODY=8BITMIME");
        }
        mail.push_str("\r\n");
        let rcpt_cmds: Vec<String> = rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect();

        let mut outcomes: Vec<Option<Outcome>> = vec![None; rcpts.len()];
        let data_reply;
        if self.pipelining {
            let mut batch = mail.into_bytes();
            for c in &rcpt_cmds {
                batch.extend_from_slice(c.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.send(&batch).await?;
            let mail_reply = self.reply(self.t.reply).await?;
            for slot in outcomes.iter_mut() {
                let r = self.reply(self.t.reply).await?;
                *slot = self.rcpt_outcome(&mail_reply, &r)?;
            }
            data_reply = self.reply(self.t.reply).await?;
        } else {
            self.send(mail.as_bytes()).await?;
            let mail_reply = self.reply(self.t.reply).await?;
            self.check_421(&mail_reply)?;
            if mail_reply.code / 100 != 2 {
                let o = self.outcome(&mail_reply, "MAIL FROM");
                return Ok(vec![o; rcpts.len()]);
            }
            for (slot, c) in outcomes.iter_mut().zip(&rcpt_cmds) {
                self.send(c.as_bytes()).await?;
                let r = self.reply(self.t.reply).await?;
                *slot = self.rcpt_outcome(&mail_reply, &r)?;
            }
            if outcomes.iter().all(Option::is_some) {
                return Ok(outcomes.into_iter().flatten().collect());
            }
            self.send(b"DATA\r\n").await?;
            data_reply = self.reply(self.t.reply).await?;
        }
        self.check_421(&data_reply)?;
        let accepted = outcomes.iter().any(Option::is_none);
        if data_reply.code != 354 {
            let o = self.outcome(&data_reply, "DATA");
            return Ok(outcomes
                .into_iter()
                .map(|s| s.unwrap_or_else(|| o.clone()))
                .collect());
        }
        if !accepted {
            // A server that accepts DATA with no recipient gets an empty message
            // that it must refuse (RFC 2920 §3.1); its reply changes nothing.
            self.send(b".\r\n").await?;
            let _ = self.reply(self.t.data_end).await?;
            return Ok(outcomes.into_iter().flatten().collect());
        }
        self.send(&stuff(body)).await?;
        let end = self.reply(self.t.data_end).await?;
        self.check_421(&end)?;
        let o = if end.code / 100 == 2 {
            Outcome::Delivered
        } else {
            self.outcome(&end, "end of DATA")
        };
        Ok(outcomes
            .into_iter()
            .map(|s| s.unwrap_or_else(|| o.clone()))
            .collect())
    }

    /// `None` when the recipient was accepted (its fate is the DATA reply's).
    fn rcpt_outcome(
        &self,
        mail: &Response<String>,
        rcpt: &Response<String>,
    ) -> Result<Option<Outcome>, SiteError> {
        self.check_421(mail)?;
        if mail.code / 100 != 2 {
            return Ok(Some(self.outcome(mail, "MAIL FROM")));
        }
        self.check_421(rcpt)?;
        Ok((rcpt.code / 100 != 2).then(|| self.outcome(rcpt, "RCPT TO")))
    }

    /// `421`: the server is closing the connection; nothing of this
    /// transaction was delivered.
    fn check_421(&self, r: &Response<String>) -> Result<(), SiteError> {
        if r.code == 421 {
            Err(self.said(r, "a command"))
        } else {
            Ok(())
        }
    }

    fn outcome(&self, r: &Response<String>, cmd: &str) -> Outcome {
        let why = self.said(r, cmd);
        match r.code / 100 {
            5 => Outcome::perm(why),
            _ => Outcome::temp(why),
        }
    }

    /// `host:port said: 550 5.1.1 text (in reply to RCPT TO)`, as Postfix words it.
    fn said(&self, r: &Response<String>, cmd: &str) -> String {
        let text: String = r
            .message
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        let esc = if r.esc[0] != 0 {
            format!("{}.{}.{} ", r.esc[0], r.esc[1], r.esc[2])
        } else {
            String::new()
        };
        format!(
            "{} said: {} {esc}{} (in reply to {cmd})",
            self.hop,
            r.code,
            clip(text.trim(), 400)
        )
    }

    /// Between two messages on one connection.
    pub async fn rset(&mut self) -> Result<(), SiteError> {
        self.send(b"RSET\r\n").await?;
        let r = self.reply(self.t.reply).await?;
        if r.code / 100 == 2 {
            Ok(())
        } else {
            Err(self.said(&r, "RSET"))
        }
    }

    /// Says goodbye (best effort: the messages are already settled).
    pub async fn quit(mut self) {
        if self.send(b"QUIT\r\n").await.is_ok() {
            let _ = self.reply(Duration::from_secs(5).min(self.t.reply)).await;
        }
        let _ = self.stream.shutdown().await;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SiteError> {
        match tokio::time::timeout(self.t.reply, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{}: write: {e}", self.hop)),
            Err(_) => Err(format!("{}: write timed out", self.hop)),
        }
    }

    /// The next (possibly multi-line) reply.
    async fn reply(&mut self, timeout: Duration) -> Result<Response<String>, SiteError> {
        // One deadline per reply, however the server trickles its bytes.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.pos < self.len {
                let mut it = self.buf[self.pos..self.len].iter();
                let before = it.len();
                let r = self.rx.parse(&mut it);
                self.pos += before - it.len();
                match r {
                    Ok(resp) => {
                        self.rx.reset();
                        return Ok(resp);
                    }
                    Err(PError::NeedsMoreData { .. }) => {}
                    Err(e) => {
                        self.rx.reset();
                        return Err(format!("{}: malformed reply ({e:?})", self.hop));
                    }
                }
            }
            self.pos = 0;
            self.len = 0;
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)).await {
                Ok(Ok(0)) => return Err(format!("{}: connection closed by the server", self.hop)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("{}: read: {e}", self.hop)),
                Err(_) => {
                    return Err(format!(
                        "{}: timed out waiting for a reply after {timeout:?}",
                        self.hop
                    ))
                }
            };
            self.len = n;
        }
    }
}

/// The body as DATA sends it: a `.` doubled at the start of every line (after
/// CRLF — the only line end the receiving side unstuffs), a final CRLF if the
/// body lacks one, then the terminating `.`.
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut line_start = true;
    let mut prev = 0u8;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n' && prev == b'\r';
        prev = b;
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::request::receiver::DataReceiver;

    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let mut rx = DataReceiver::new();
        rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
        let mut out = Vec::new();
        assert!(
            rx.ingest(&mut wire.iter(), &mut out),
            "no end of data in {wire:?}"
        );
        out
    }

    #[test]
    fn stuffing_round_trips_through_the_receiver() {
        let long = vec![b'x'; 990];
        let mut odd =
            b".leading\r\n..two\r\n.\r\nbare\nlf\n.after-lf\rcr\r.after-cr\r\n\xff\xfe8bit\r\n"
                .to_vec();
        odd.extend_from_slice(&long);
        odd.extend_from_slice(b"\r\n");
        for body in [&b""[..], b"a\r\n", b".\r\n", &odd] {
            assert_eq!(
                unstuff(&stuff(body)),
                body,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // A body without a final line end gains one (the protocol has no other way).
        assert_eq!(unstuff(&stuff(b"no end")), b"no end\r\n");
    }
}
