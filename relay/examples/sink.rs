//! A minimal SMTP sink for trying `mailq-relay` without a real next hop: it
//! accepts every message on the address given (default 127.0.0.1:2526) and
//! prints one line per message (envelope and size) to stdout.
//!
//! `cargo run --release -p mailq-relay --example sink -- 127.0.0.1:2526`

use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::{Error as PError, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2526".to_string());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("sink listening on {}", listener.local_addr()?);
    loop {
        let (tcp, peer) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve(tcp).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

async fn serve(mut tcp: TcpStream) -> std::io::Result<()> {
    tcp.write_all(b"220 sink ESMTP\r\n").await?;
    let (mut buf, mut out) = (vec![0u8; 16384], Vec::new());
    let mut rx = RequestReceiver::default();
    let mut data: Option<(DataReceiver, Vec<u8>)> = None;
    let (mut from, mut to) = (String::new(), Vec::<String>::new());
    loop {
        tcp.write_all(&out).await?;
        out.clear();
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut it = buf[..n].iter();
        while it.len() > 0 {
            if let Some((d, body)) = &mut data {
                if d.ingest(&mut it, body) {
                    println!("from=<{from}> to=<{}> size={}", to.join(">,<"), body.len());
                    data = None;
                    out.extend_from_slice(b"250 2.0.0 Ok\r\n");
                }
                continue;
            }
            let reply: &[u8] = match rx.ingest(&mut it) {
                Ok(Request::Ehlo { .. }) => {
                    b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
                }
                Ok(Request::Mail { from: f }) => {
                    (from, to) = (f.address.to_string(), Vec::new());
                    b"250 2.1.0 Ok\r\n"
                }
                Ok(Request::Rcpt { to: t }) => {
                    to.push(t.address.to_string());
                    b"250 2.1.5 Ok\r\n"
                }
                Ok(Request::Data) => {
                    let mut d = DataReceiver::new();
                    d.ingest(&mut b"\r\n".iter(), &mut Vec::new());
                    data = Some((d, Vec::new()));
                    b"354 go ahead\r\n"
                }
                Ok(Request::Quit) => {
                    out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                    tcp.write_all(&out).await?;
                    return Ok(());
                }
                Ok(_) => b"250 2.0.0 Ok\r\n",
                Err(PError::NeedsMoreData { .. }) => break,
                Err(_) => b"500 5.5.2 Error\r\n",
            };
            out.extend_from_slice(reply);
        }
    }
}
