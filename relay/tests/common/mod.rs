//! Test harness for the relay: a temporary directory, a next-hop SMTP sink with
//! scripted replies that records what it receives, and a line-level client.
//! Everything listens on 127.0.0.1 ephemeral ports and stops with the test.
#![allow(dead_code)]

use mailq_relay::{Config, Relay};
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::{Error as PError, Request};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mailq-relay-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A relay config for tests: ephemeral port, next hop `sink`, short timers.
pub fn config(dir: &TempDir, sink: SocketAddr) -> Config {
    let mut c = Config::new(dir.path().join("queue"));
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.routes.default = Some(sink.to_string());
    c.hostname = "relay.test".into();
    c.min_backoff = Duration::from_secs(1);
    c.max_backoff = Duration::from_secs(2);
    c.reply_timeout = Duration::from_secs(5);
    c.connect_timeout = Duration::from_secs(2);
    c
}

/// One message from a new client, which must be answered 250.
pub async fn send(relay: &Relay, sender: &str, rcpts: &[&str], body: &[u8]) {
    let mut c = Client::hello(relay.local_addr()).await;
    let r = c.mail(sender, rcpts, body).await;
    assert!(r.starts_with("250"), "{r}");
}

pub async fn start(cfg: Config) -> Relay {
    Relay::start(cfg).await.expect("relay starts")
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Got {
    pub sender: String,
    pub rcpts: Vec<String>,
    pub body: Vec<u8>,
    /// Connection number (0-based) it arrived on.
    pub conn: usize,
}

/// How the sink answers.
#[derive(Debug, Clone)]
pub struct Script {
    /// The greeting line.
    pub greeting: String,
    /// Recipients whose local part starts with `temp` get this.
    pub temp: String,
    /// … with `perm`.
    pub perm: String,
    /// Never answer the final dot (to test timeouts and cancellation).
    pub stall_data: bool,
    /// Answer the first N recipients starting with `flaky` with `temp`, then accept.
    pub flaky: usize,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 sink.test ESMTP".into(),
            temp: "451 4.2.1 mailbox busy, try later (id 7fa9c3e1-unique)".into(),
            perm: "550 5.1.1 no such user here".into(),
            stall_data: false,
            flaky: 0,
        }
    }
}

#[derive(Default)]
pub struct SinkState {
    pub got: Vec<Got>,
    pub conns: usize,
    /// The client address of each connection, in order.
    pub peers: Vec<std::net::IpAddr>,
    pub rsets: usize,
    /// Bytes of DATA seen while stalled.
    pub stalled: usize,
    pub flaky_left: usize,
}

/// A next hop that records messages.
pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<SinkState>>,
    pub script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start(script: Script) -> Sink {
        Sink::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Script) -> Sink {
        let l = TcpListener::bind(addr).await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new(SinkState {
            flaky_left: script.flaky,
            ..SinkState::default()
        }));
        let script = Arc::new(Mutex::new(script));
        let (st, sc) = (state.clone(), script.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (st, sc) = (st.clone(), sc.clone());
                tokio::spawn(async move {
                    let _ = sink_conn(tcp, st, sc).await;
                });
            }
        });
        Sink {
            addr,
            state,
            script,
            task,
        }
    }

    pub async fn got(&self) -> Vec<Got> {
        self.state.lock().await.got.clone()
    }

    /// Waits until the sink holds `n` messages (fails after `secs`).
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.got().await;
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sink has {} of {n} messages after {secs} s",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn sink_conn(
    tcp: TcpStream,
    st: Arc<Mutex<SinkState>>,
    sc: Arc<Mutex<Script>>,
) -> std::io::Result<()> {
    let mut tcp = tcp;
    let peer = tcp.peer_addr()?.ip();
    let conn = {
        let mut s = st.lock().await;
        s.peers.push(peer);
        s.conns += 1;
        s.conns - 1
    };
    let script = sc.lock().await.clone();
    tcp.write_all(format!("{}\r\n", script.greeting).as_bytes())
        .await?;
    if !script.greeting.starts_with("220") {
        return Ok(());
    }
    let mut buf = vec![0u8; 8192];
    let mut rx = RequestReceiver::default();
    let mut data: Option<(DataReceiver, Vec<u8>)> = None;
    let mut out = Vec::new();
    let (mut sender, mut rcpts) = (String::new(), Vec::<String>::new());
    loop {
        if !out.is_empty() {
            tcp.write_all(&out).await?;
            out.clear();
        }
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut it = buf[..n].iter();
        while it.len() > 0 {
            if let Some((d, body)) = &mut data {
                if d.ingest(&mut it, body) {
                    let body = std::mem::take(body);
                    data = None;
                    if script.stall_data {
                        st.lock().await.stalled += body.len();
                        std::future::pending::<()>().await;
                    }
                    st.lock().await.got.push(Got {
                        sender: sender.clone(),
                        rcpts: std::mem::take(&mut rcpts),
                        body,
                        conn,
                    });
                    out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
                } else if script.stall_data {
                    st.lock().await.stalled += 1;
                }
                continue;
            }
            match rx.ingest(&mut it) {
                Ok(Request::Ehlo { .. }) => out.extend_from_slice(
                    b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 50000000\r\n250 ENHANCEDSTATUSCODES\r\n",
                ),
                Ok(Request::Mail { from }) => {
                    sender = from.address.to_string();
                    rcpts.clear();
                    out.extend_from_slice(b"250 2.1.0 Ok\r\n");
                }
                Ok(Request::Rcpt { to }) => {
                    let a = to.address.to_string();
                    let mut s = st.lock().await;
                    if a.starts_with("temp") {
                        out.extend_from_slice(format!("{}\r\n", script.temp).as_bytes());
                    } else if a.starts_with("perm") {
                        out.extend_from_slice(format!("{}\r\n", script.perm).as_bytes());
                    } else if a.starts_with("flaky") && s.flaky_left > 0 {
                        s.flaky_left -= 1;
                        out.extend_from_slice(format!("{}\r\n", script.temp).as_bytes());
                    } else {
                        rcpts.push(a);
                        out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                    }
                }
                Ok(Request::Data) => {
                    if rcpts.is_empty() {
                        out.extend_from_slice(b"554 5.5.1 Error: no valid recipients\r\n");
                    } else {
                        out.extend_from_slice(b"354 go ahead\r\n");
                        let mut d = DataReceiver::new();
                        d.ingest(&mut b"\r\n".iter(), &mut Vec::new());
                        data = Some((d, Vec::new()));
                    }
                }
                Ok(Request::Rset) => {
                    st.lock().await.rsets += 1;
                    rcpts.clear();
                    out.extend_from_slice(b"250 2.0.0 Ok\r\n");
                }
                Ok(Request::Quit) => {
                    tcp.write_all(&out).await?;
                    tcp.write_all(b"221 2.0.0 Bye\r\n").await?;
                    return Ok(());
                }
                Ok(_) => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
                Err(PError::NeedsMoreData { .. }) => break,
                Err(_) => out.extend_from_slice(b"500 5.5.2 what\r\n"),
            }
        }
    }
}

/// A line-level SMTP client over any stream.
pub struct Client<S> {
    pub s: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    /// Connects and says EHLO (both must succeed).
    pub async fn hello(addr: SocketAddr) -> Client<TcpStream> {
        let (mut c, greeting) = Client::connect(addr).await;
        assert!(greeting.starts_with("220"), "{greeting}");
        let ehlo = c.cmd("EHLO client.test").await;
        assert!(ehlo.starts_with("250"), "{ehlo}");
        c
    }

    /// Connects and returns the greeting.
    pub async fn connect(addr: SocketAddr) -> (Client<TcpStream>, String) {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut c = Client { s, buf: Vec::new() };
        let g = c.reply().await;
        (c, g)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn wrap(s: S) -> Client<S> {
        Client { s, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Sends one command line and returns its (possibly multi-line) reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Reads one complete reply; "" when the server closed the connection.
    pub async fn reply(&mut self) -> String {
        let mut text = String::new();
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                text.push_str(&line);
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    return text.trim_end().to_string();
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut chunk))
                .await
                .expect("a reply within 20 s")
                .unwrap_or(0);
            if n == 0 {
                return text.trim_end().to_string();
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A whole transaction, one command at a time; returns the final reply.
    pub async fn mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await;
            assert!(r.starts_with("250"), "RCPT {t}: {r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "DATA: {r}");
        self.send(&mailq_relay::client::stuff(body)).await;
        self.reply().await
    }
}

/// The body as the relay forwarded it, without the `Received:` header it added.
pub fn strip_received(body: &[u8]) -> &[u8] {
    assert!(
        body.starts_with(b"Received: from "),
        "no Received header first"
    );
    // The relay's header is three lines: "Received: …", "\tby …", "\t<date>".
    let mut rest = body;
    for _ in 0..3 {
        let pos = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("header line");
        rest = &rest[pos + 2..];
    }
    rest
}

/// Polls `f` until it is true (fails after `secs`).
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
