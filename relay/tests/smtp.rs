//! Inbound SMTP on real loopback sockets: the protocol, its limits and error
//! replies, relay control, STARTTLS, and the queue's failures as replies.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction_relays_the_body_byte_for_byte() {
    let dir = TempDir::new("pipe");
    let sink = Sink::start(Script::default()).await;
    let relay = start(config(&dir, sink.addr)).await;
    let (mut c, greeting) = Client::connect(relay.local_addr()).await;
    assert!(greeting.starts_with("220 relay.test ESMTP"), "{greeting}");
    let ehlo = c.cmd("EHLO client.test").await;
    for ext in [
        "PIPELINING",
        "SIZE 10240000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS"),
        "STARTTLS offered without a certificate"
    );

    // Lines starting with dots, a lone dot, bare CR and LF, 8-bit bytes, a
    // 990-byte line, and no final blank line.
    let mut body = b"Subject: edge cases\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nbare\nLF\n.after bare LF\r\nbare\rCR\r.after CR\r\n".to_vec();
    body.extend_from_slice(b"8-bit: \xc3\xa9\xff\xfe\r\n");
    body.extend_from_slice(&[b'x'; 990]);
    body.extend_from_slice(b"\r\n. \r\nend\r\n");
    // The whole transaction in one write (RFC 2920), body included.
    let mut wire = b"MAIL FROM:<alice@example.org> BODY=8BITMIME SIZE=2000\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n".to_vec();
    c.send(&wire).await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354"));
    wire = mailq_relay::client::stuff(&body);
    c.send(&wire).await;
    let done = c.reply().await;
    assert!(done.starts_with("250 2.0.0 Ok: queued as "), "{done}");
    assert!(c.cmd("QUIT").await.starts_with("221"));

    // Two destinations, two deliveries; each carries the body unchanged.
    let got = sink.wait_for(2, 20).await;
    for g in &got {
        assert_eq!(g.sender, "alice@example.org");
        assert_eq!(
            strip_received(&g.body),
            &body[..],
            "body changed in transit"
        );
        let head = String::from_utf8_lossy(&g.body[..120]).into_owned();
        assert!(
            head.contains("from client.test ([127.0.0.1])")
                && head.contains("by relay.test (mailq-relay) with ESMTP;"),
            "{head}"
        );
    }
    let mut rcpts: Vec<_> = got.iter().flat_map(|g| g.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["bob@example.com", "carol@example.net"]);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_and_sequence_error_has_its_standard_reply() {
    let dir = TempDir::new("limits");
    let sink = Sink::start(Script::default()).await;
    let mut cfg = config(&dir, sink.addr);
    cfg.max_size = 1000;
    cfg.max_recipients = 2;
    let relay = start(cfg).await;
    let (mut c, _) = Client::connect(relay.local_addr()).await;

    // Order of commands.
    assert!(
        c.cmd("MAIL FROM:<a@example.org>")
            .await
            .starts_with("503 5.5.1"),
        "MAIL before EHLO"
    );
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<b@example.com>")
            .await
            .starts_with("503 5.5.1"),
        "RCPT before MAIL"
    );
    assert!(
        c.cmd("DATA").await.starts_with("503 5.5.1"),
        "DATA before MAIL"
    );
    assert!(c.cmd("MAIL FROM:<a@example.org>").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<a@example.org>")
            .await
            .starts_with("503 5.5.1"),
        "nested MAIL"
    );
    assert!(
        c.cmd("DATA").await.starts_with("554 5.5.1"),
        "DATA without recipients"
    );

    // Syntax.
    assert!(c.cmd("FROB").await.starts_with("500 5.5.2"));
    assert!(
        c.cmd("RCPT TO:bob").await.starts_with("501"),
        "recipient without brackets"
    );
    assert!(
        c.cmd("RCPT TO:<bob>").await.starts_with("501 5.1.3"),
        "recipient without domain"
    );
    let long = format!("NOOP {}", "x".repeat(5000));
    assert!(
        c.cmd(&long).await.starts_with("500 5.5.2"),
        "command line too long"
    );
    assert!(
        c.cmd("NOOP").await.starts_with("250"),
        "the session survives a long line"
    );
    assert!(c.cmd("VRFY bob").await.starts_with("252"));
    assert!(c
        .cmd("AUTH PLAIN AGFiYwBkZWY=")
        .await
        .starts_with("502 5.5.1"));
    // One reply per line, even when the parser gives up half-way through one.
    c.send(b"AUTH \tRSET\r\nNOOP\r\n").await;
    let (bad, noop) = (c.reply().await, c.reply().await);
    assert!(
        bad.starts_with('5') && noop.starts_with("250 2.0.0"),
        "{bad} / {noop}"
    );
    assert!(
        c.cmd("HELP").await.starts_with("214"),
        "an extra reply is pending"
    );

    // Recipients per message.
    assert!(c.cmd("RCPT TO:<b1@example.com>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b2@example.com>").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<b3@example.com>")
        .await
        .starts_with("452 4.5.3"));
    assert!(c.cmd("RSET").await.starts_with("250"));

    // Size: declared, then actual.
    assert!(c
        .cmd("MAIL FROM:<a@example.org> SIZE=5000")
        .await
        .starts_with("552 5.3.4"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&mailq_relay::client::stuff(&vec![b'y'; 3000])).await;
    assert!(c.reply().await.starts_with("552 5.3.4"), "oversized body");
    // The transaction is over; the session goes on.
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));
    assert!(c
        .cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME")
        .await
        .starts_with("555"));
    let ok = c
        .mail(
            "a@example.org",
            &["b@example.com"],
            b"Subject: small\r\n\r\nhi\r\n",
        )
        .await;
    assert!(ok.starts_with("250 2.0.0"), "{ok}");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert_eq!(relay.accepted(), 1, "only the small message was accepted");
    sink.wait_for(1, 20).await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_timed_out_in_commands_and_in_data() {
    let dir = TempDir::new("timeout");
    let sink = Sink::start(Script::default()).await;
    let mut cfg = config(&dir, sink.addr);
    // Long enough for a loaded machine to answer four commands in a row,
    // short enough for a test.
    cfg.command_timeout = Duration::from_secs(2);
    cfg.data_timeout = Duration::from_secs(1);
    let relay = start(cfg).await;

    let (mut c, _) = Client::connect(relay.local_addr()).await;
    assert!(c.reply().await.starts_with("421 4.4.2"), "command timeout");
    assert_eq!(c.reply().await, "", "closed after the timeout");

    let (mut c, _) = Client::connect(relay.local_addr()).await;
    assert!(c.cmd("HELO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: half a message\r\n").await;
    assert!(c.reply().await.starts_with("421 4.4.2"), "data timeout");
    assert_eq!(relay.accepted(), 0);
    assert_eq!(
        relay.queue().stats().messages,
        0,
        "nothing of the half message was queued"
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_an_open_relay() {
    let dir = TempDir::new("relaycontrol");
    let sink = Sink::start(Script::default()).await;
    // Only a recipient domain is allowed: this loopback client is not in any
    // allowed network, so it may send to example.com and nowhere else.
    let mut cfg = config(&dir, sink.addr);
    cfg.policy.networks.clear();
    cfg.policy.domains = vec!["example.com".into()];
    let relay = start(cfg).await;
    let mut c = Client::hello(relay.local_addr()).await;
    assert!(c
        .cmd("MAIL FROM:<spammer@example.org>")
        .await
        .starts_with("250"));
    for far in [
        "victim@example.net",
        "x@sub.example.com",
        "x@example.com.evil.test",
        "\"x@example.com\"@evil.test",
        // Routing hidden in the local part of an allowed domain: a next hop
        // that honours it would relay onwards.
        "\"victim@evil.test\"@example.com",
        "victim%evil.test@example.com",
        "evil.test!victim@example.com",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{far}>")).await;
        assert!(
            r.starts_with("554 5.7.1") || r.starts_with("501"),
            "{far} relayed: {r}"
        );
    }
    assert!(
        c.cmd("DATA").await.starts_with("554 5.5.1"),
        "no recipient was accepted"
    );
    let r = c.cmd("RCPT TO:<bob@EXAMPLE.com.>").await;
    assert!(r.starts_with("250"), "case and a trailing dot: {r}");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert_eq!(relay.queue().stats().messages, 0);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_upgrades_and_discards_plaintext_pipelined_after_it() {
    use tokio_rustls::rustls;
    let dir = TempDir::new("tls");
    let key = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()]).unwrap();
    let (cert_pem, key_pem) = (key.cert.pem(), key.signing_key.serialize_pem());
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    let sink = Sink::start(Script::default()).await;
    let mut cfg = config(&dir, sink.addr);
    cfg.tls = Some((dir.path().join("cert.pem"), dir.path().join("key.pem")));
    let relay = start(cfg).await;

    let (mut c, _) = Client::connect(relay.local_addr()).await;
    assert!(c.cmd("EHLO client.test").await.contains("STARTTLS"));
    // A command injected after STARTTLS in the same packet must not run under TLS.
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        .await;
    assert!(c.reply().await.starts_with("220 2.0.0"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone()).unwrap();
    let tls_cfg = rustls::ClientConfig::builder_with_provider(mailq_relay::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_cfg));
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let tls = connector.connect(name, c.s).await.expect("TLS handshake");
    let mut c = Client::wrap(tls);
    // State was reset: a MAIL without a new EHLO is out of sequence, which also
    // shows the injected MAIL did not run.
    assert!(c
        .cmd("MAIL FROM:<a@example.org>")
        .await
        .starts_with("503 5.5.1"));
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("STARTTLS"), "STARTTLS offered twice: {ehlo}");
    let r = c
        .mail(
            "a@example.org",
            &["b@example.com"],
            b"Subject: secret\r\n\r\nover TLS\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(c.cmd("STARTTLS").await.starts_with("503 5.5.1"));
    let got = sink.wait_for(1, 20).await;
    assert_eq!(got[0].sender, "a@example.org");
    assert!(String::from_utf8_lossy(&got[0].body).contains("with ESMTPS;"));
    relay.shutdown().await.unwrap();
}

/// A relay on SimFs whose first write at the end of DATA fails with `fault`:
/// the relay, the client (transaction over) and the reply to the final dot.
async fn commit_fails_with(
    dir: &TempDir,
    sink: &Sink,
    fault: mailq::sim::Fault,
) -> (mailq_relay::Relay, Client<tokio::net::TcpStream>, String) {
    let fs = mailq::sim::SimFs::new();
    let mut cfg = config(dir, sink.addr);
    cfg.vfs = Some(fs.vfs());
    cfg.admin = None; // the simulated filesystem has no directory for a real socket
                      // Nothing to deliver, nothing written between now and the next append.
    let relay = start(cfg).await;
    let mut c = Client::hello(relay.local_addr()).await;
    assert!(c.cmd("MAIL FROM:<a@example.org>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    fs.fail_at(1, fault);
    c.send(&mailq_relay::client::stuff(b"Subject: fails\r\n\r\nx\r\n"))
        .await;
    let r = c.reply().await;
    (relay, c, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_452_then_the_relay_refuses_with_421() {
    let dir = TempDir::new("diskfull");
    let sink = Sink::start(Script::default()).await;
    let (relay, mut c, r) = commit_fails_with(&dir, &sink, mailq::sim::Fault::NoSpace).await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    // The queue is read-only now: the next transaction and new clients get 421.
    let r = c.cmd("MAIL FROM:<a@example.org>").await;
    assert!(r.starts_with("421 4.3.0"), "{r}");
    let (_, greeting) = Client::connect(relay.local_addr()).await;
    assert!(greeting.starts_with("421 4.3.0"), "{greeting}");
    assert_eq!(relay.accepted(), 0);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_dot_after_a_bare_line_end_is_refused_as_smuggling() {
    let dir = TempDir::new("smuggle");
    let sink = Sink::start(Script::default()).await;
    let relay = start(config(&dir, sink.addr)).await;
    let mut c = Client::hello(relay.local_addr()).await;
    for trick in [
        &b"\n.\r\n"[..],
        b"\r\n.\n",
        b"\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
    ] {
        let mut body = b"Subject: hi\r\n\r\nhello".to_vec();
        body.extend_from_slice(trick);
        body.extend_from_slice(
            b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<x@example.net>\r\nDATA\r\nforged\r\n",
        );
        let r = c.mail("a@example.org", &["b@example.com"], &body).await;
        assert!(r.starts_with("554 5.5.2"), "{trick:?} accepted: {r}");
    }
    assert_eq!(relay.accepted(), 0);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_answers_451_and_the_poisoned_queue_then_421() {
    let dir = TempDir::new("eio");
    let sink = Sink::start(Script::default()).await;
    let (relay, mut c, r) = commit_fails_with(&dir, &sink, mailq::sim::Fault::Eio).await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    // The queue never retries a failed write: it is read-only now, and the
    // relay says so at the next message.
    let r = c
        .mail(
            "a@example.org",
            &["b@example.com"],
            b"Subject: again\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("421 4.3.0"), "{r}");
    assert_eq!(c.reply().await, "", "closed after 421");
    let (_, greeting) = Client::connect(relay.local_addr()).await;
    assert!(greeting.starts_with("421 4.3.0"), "{greeting}");
    assert_eq!(relay.accepted(), 0);
    drop(relay);
}

/// Backpressure: over the queue's recipients limit the relay answers
/// 452 4.3.1 — at MAIL FROM when the queue is already at the limit, after DATA
/// when this message would take it over — and keeps the connection (no 421:
/// the queue is fine, it is only full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_452_and_keeps_serving() {
    let dir = TempDir::new("backpressure");
    // A next hop that refuses connections: the mail stays queued.
    let mut cfg = config(&dir, "127.0.0.1:1".parse().unwrap());
    cfg.max_queued_recipients = 3;
    let relay = start(cfg).await;
    send(
        &relay,
        "a@example.org",
        &["b@example.com", "c@example.com"],
        b"x",
    )
    .await;
    let mut c = Client::hello(relay.local_addr()).await;
    // 2 queued + 2 would be 4 > 3: refused after DATA, nothing queued.
    let r = c
        .mail("a@example.org", &["d@example.com", "e@example.com"], b"y")
        .await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    // One more recipient fits (3 of 3); then the queue is at its limit and
    // MAIL FROM itself is answered 452, on the same connection.
    let r = c.mail("a@example.org", &["f@example.com"], b"z").await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("MAIL FROM:<a@example.org>").await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    assert_eq!(relay.accepted(), 2);
    relay.shutdown().await.unwrap();
}
