//! Outbound SMTP on real loopback sockets: per-recipient outcomes from the next
//! hop's replies, site failures, retries, several messages per connection,
//! DSNs (and never a DSN for a DSN), and cancellation without a leaked slot.

mod common;
use common::*;
use mailq::RcptState;
use std::time::Duration;

fn state_of(relay: &mailq_relay::Relay, addr: &str) -> Option<(RcptState, String)> {
    let q = relay.queue();
    q.list(1000).into_iter().find_map(|m| {
        let info = q.inspect(m.id).ok()?;
        info.recipients
            .into_iter()
            .find(|r| r.address == addr)
            .map(|r| (r.state, r.last_error))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_decide_each_recipient_and_a_permanent_failure_gets_a_dsn() {
    let dir = TempDir::new("outcomes");
    let sink = Sink::start(Script::default()).await;
    let mut cfg = config(&dir, sink.addr);
    // No retry while the test looks at the deferred recipient.
    cfg.min_backoff = Duration::from_secs(60);
    cfg.max_backoff = Duration::from_secs(60);
    let relay = start(cfg).await;
    send(
        &relay,
        "alice@example.org",
        &["ok@example.com", "temp@example.com", "perm@example.com"],
        b"Subject: three fates\r\nMessage-ID: <m1@example.org>\r\n\r\nhello\r\n",
    )
    .await;

    // The good recipient arrives alone; then the DSN for the permanent one.
    let got = sink.wait_for(2, 20).await;
    assert_eq!(got[0].rcpts, ["ok@example.com"]);
    let dsn = &got[1];
    assert_eq!(dsn.sender, "", "a DSN has the null sender");
    assert_eq!(dsn.rcpts, ["alice@example.org"]);
    let text = String::from_utf8_lossy(&dsn.body).into_owned();
    assert!(
        text.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{text}"
    );
    assert!(
        text.contains(
            "Final-Recipient: rfc822; perm@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here (in reply to RCPT TO)"),
        "{text}"
    );
    assert!(
        !text.contains("temp@example.com") && !text.contains("ok@example.com"),
        "{text}"
    );

    // The temporary one waits for its retry with the server's words as the reason
    // (a Gmail-style unique id included).
    let (st, why) = state_of(&relay, "temp@example.com").expect("temp recipient queued");
    assert_eq!(st, RcptState::Deferred);
    assert!(
        why.contains("451 4.2.1 mailbox busy, try later (id 7fa9c3e1-unique)"),
        "{why}"
    );
    assert!(why.contains(&sink.addr.to_string()), "{why}");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_is_never_bounced() {
    let dir = TempDir::new("nobounce");
    let sink = Sink::start(Script::default()).await;
    let relay = start(config(&dir, sink.addr)).await;
    send(
        &relay,
        "",
        &["perm@example.com"],
        b"Subject: a DSN\r\n\r\nx\r\n",
    )
    .await;
    // The recipient fails for good and its bounce is acknowledged without a DSN.
    let q = relay.queue().clone();
    eventually(20, "the failed recipient is settled", || {
        q.stats().bounced == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.got().await.is_empty(), "a DSN was sent for a DSN");
    assert_eq!(q.stats().messages, 0);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_are_retried_until_delivered() {
    let dir = TempDir::new("retry");
    let sink = Sink::start(Script {
        flaky: 2,
        ..Script::default()
    })
    .await;
    let relay = start(config(&dir, sink.addr)).await;
    send(
        &relay,
        "a@example.org",
        &["flaky@example.com"],
        b"Subject: r\r\n\r\nx\r\n",
    )
    .await;
    // Two 451s, then accepted (min backoff 1 s, max 2 s).
    let got = sink.wait_for(1, 30).await;
    assert_eq!(got[0].rcpts, ["flaky@example.com"]);
    let s = relay.queue().stats();
    assert_eq!((s.delivered, s.deferred), (1, 2), "{s:?}");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_failures_defer_without_touching_the_recipients_state() {
    // A next hop that says 421 at once, then one that is not listening.
    let dir = TempDir::new("site");
    let sink = Sink::start(Script {
        greeting: "421 4.3.2 sink.test shutting down".into(),
        ..Script::default()
    })
    .await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = config(&dir, sink.addr);
    cfg.routes
        .insert("down.example", &closed.to_string())
        .unwrap();
    cfg.min_backoff = Duration::from_secs(60);
    cfg.max_backoff = Duration::from_secs(60);
    let relay = start(cfg).await;
    send(
        &relay,
        "a@example.org",
        &["x@greet.example", "y@down.example"],
        b"Subject: s\r\n\r\nx\r\n",
    )
    .await;
    let r = relay.queue().clone();
    eventually(20, "both site failures recorded", || {
        r.stats().site_failures >= 2
    })
    .await;
    let (st, why) = state_of(&relay, "x@greet.example").unwrap();
    assert_eq!(st, RcptState::Deferred);
    assert!(
        why.contains("421 4.3.2 sink.test shutting down (in reply to the greeting)"),
        "{why}"
    );
    let (st, why) = state_of(&relay, "y@down.example").unwrap();
    assert_eq!(st, RcptState::Deferred);
    assert!(why.contains(&format!("connect to {closed}")), "{why}");
    assert!(sink.got().await.is_empty());
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_several_messages_with_rset_between() {
    let dir = TempDir::new("reuse");
    let sink = Sink::start(Script::default()).await;
    let relay = start(config(&dir, sink.addr)).await;
    // Queue five messages while the destination is suspended, then let them go.
    relay.queue().suspend("example.com").unwrap();
    let mut c = Client::hello(relay.local_addr()).await;
    for i in 0..5 {
        let body = format!("Subject: {i}\r\n\r\nmessage {i}\r\n");
        assert!(c
            .mail("a@example.org", &["b@example.com"], body.as_bytes())
            .await
            .starts_with("250"));
    }
    relay
        .queue()
        .set_concurrency_limit("example.com", 1)
        .unwrap();
    relay.queue().resume("example.com").unwrap();
    let got = sink.wait_for(5, 20).await;
    let st = sink.state.lock().await;
    assert_eq!(st.conns, 1, "five messages, one connection");
    assert_eq!(st.rsets, 4, "RSET between messages");
    assert!(got.iter().all(|g| g.conn == 0));
    drop(st);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cancelled_mid_transfer_leaks_no_slot() {
    use mailq_relay::client::{Client as Smtp, Timeouts};
    let dir = TempDir::new("cancel");
    let sink = Sink::start(Script {
        stall_data: true,
        ..Script::default()
    })
    .await;
    let q = mailq::AsyncQueue::new(
        mailq::Queue::open(dir.path().join("q"), mailq::Options::default()).unwrap(),
    )
    .unwrap();
    let mut m = q.queue().message("a@example.org").unwrap();
    m.add_recipient("b@example.com", None).unwrap();
    m.append(&vec![b'z'; 200_000]).unwrap();
    m.commit_async().await.unwrap();

    let (q2, hop) = (q.clone(), sink.addr.to_string());
    let task = tokio::spawn(async move {
        let mut session = q2.next_session().await.unwrap();
        let d = session.next_delivery().unwrap().unwrap();
        let t = Timeouts {
            connect: Duration::from_secs(2),
            reply: Duration::from_secs(60),
            data_end: Duration::from_secs(60),
        };
        let mut c = Smtp::connect(&hop, None, "relay.test", t).await.unwrap();
        let r = c.deliver(d.sender(), d.recipients(), &d.body()).await;
        panic!("the sink never answers, yet: {r:?}");
    });
    // Cancel while the body is on the wire (or waiting for the final reply).
    let st = sink.state.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while st.lock().await.stalled == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transfer never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(q.queue().stats().buckets[0].inflight, 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let b = &q.queue().stats().buckets[0];
    assert_eq!((b.inflight, b.sessions, b.ready), (0, 0, 1), "{b:?}");
    // The slot and the recipient are back: a new session gets the message at once.
    let mut s = tokio::time::timeout(Duration::from_secs(5), q.next_session())
        .await
        .unwrap()
        .unwrap();
    assert!(s.next_delivery().unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_recipient_gets_a_dsn_saying_so() {
    let dir = TempDir::new("expiry");
    let sink = Sink::start(Script::default()).await;
    let mut cfg = config(&dir, sink.addr);
    cfg.lifetime = Duration::from_secs(2);
    let relay = start(cfg).await;
    send(
        &relay,
        "alice@example.org",
        &["temp@example.com"],
        b"Subject: late\r\n\r\nx\r\n",
    )
    .await;
    // Deferred at every try until the lifetime ends, then returned to the sender.
    let got = sink.wait_for(1, 30).await;
    let dsn = String::from_utf8_lossy(&got[0].body).into_owned();
    assert_eq!(
        (got[0].sender.as_str(), got[0].rcpts.as_slice()),
        ("", &["alice@example.org".to_string()][..])
    );
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; temp@example.com\r\nAction: failed\r\nStatus: 4.4.7\r\n"
        ),
        "{dsn}"
    );
    assert!(dsn.contains("delivery time expired"), "{dsn}");
    assert!(
        dsn.contains("451 4.2.1 mailbox busy"),
        "the last reply is in the DSN: {dsn}"
    );
    let q = relay.queue().clone();
    eventually(10, "the expired recipient is settled", || {
        q.stats().messages == 0
    })
    .await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_session_reuses_an_idle_connection_and_idle_ones_are_closed() {
    let dir = TempDir::new("pool");
    let sink = Sink::start(Script::default()).await;
    let relay = start(config(&dir, sink.addr)).await;
    let mut c = Client::hello(relay.local_addr()).await;
    for i in 0..3 {
        let body = format!("Subject: {i}\r\n\r\nx\r\n");
        assert!(c
            .mail("a@example.org", &["b@example.com"], body.as_bytes())
            .await
            .starts_with("250"));
        // Each message is delivered (and its session ended) before the next.
        sink.wait_for(i + 1, 20).await;
    }
    assert_eq!(
        sink.state.lock().await.conns,
        1,
        "three sessions, one connection"
    );
    // Idle past the cache time, the connection is closed with QUIT and the
    // next message opens a new one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(c
        .mail(
            "a@example.org",
            &["b@example.com"],
            b"Subject: late\r\n\r\nx\r\n"
        )
        .await
        .starts_with("250"));
    sink.wait_for(4, 20).await;
    assert_eq!(sink.state.lock().await.conns, 2);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_served_by_default_and_removed_at_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("admin");
    let sink = Sink::start(Script::default()).await;
    let mut cfg = config(&dir, sink.addr);
    cfg.min_backoff = Duration::from_secs(60);
    cfg.max_backoff = Duration::from_secs(60);
    let relay = start(cfg).await;
    send(
        &relay,
        "alice@example.org",
        &["temp@example.com"],
        b"Subject: x\r\n\r\nhi\r\n",
    )
    .await;
    eventually(20, "deferred", || {
        state_of(&relay, "temp@example.com").is_some_and(|s| s.0 == RcptState::Deferred)
    })
    .await;
    let sock = dir.path().join("queue").join("admin.sock");
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"GET /v1/recipients?state=deferred HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"recipient\": \"temp@example.com\""), "{out}");
    relay.shutdown().await.unwrap();
    // A request being served when the relay stopped finishes on the blocking
    // pool and removes the socket then.
    eventually(5, "the socket goes with the relay", || !sock.exists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_egress_sources_and_connect_from_their_addresses() {
    let dir = TempDir::new("sources");
    // The sink never answers the final dot: every session holds its
    // connection, so the sessions the queue opens are all visible at once.
    let sink = Sink::start(Script {
        stall_data: true,
        ..Script::default()
    })
    .await;
    let mut cfg = config(&dir, sink.addr);
    let a: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let b: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    cfg.sources = vec![("ip-a".into(), a), ("ip-b".into(), b)];
    let relay = start(cfg).await;
    // One session per source for this destination (the window would allow
    // five): one connection from each source's address, and no third.
    relay
        .queue()
        .set_source_limits("example.com", 1, mailq::RateLimit::default())
        .unwrap();
    for i in 0..6 {
        send(
            &relay,
            "alice@example.org",
            &[&format!("r{i}@example.com")],
            b"Subject: via a source\r\n\r\nhello\r\n",
        )
        .await;
    }
    let st = sink.state.clone();
    eventually(20, "a connection from each source", || {
        st.try_lock().is_ok_and(|s| s.peers.len() >= 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut peers = sink.state.lock().await.peers.clone();
    peers.sort();
    assert_eq!(peers, [a, b], "one connection from each source's address");
    let d = relay.queue().destination("example.com").unwrap().unwrap();
    let open: Vec<(&str, u64)> = d
        .sources
        .iter()
        .map(|p| (p.source.as_str(), p.sessions))
        .collect();
    assert_eq!(open, [("ip-a", 1), ("ip-b", 1)]);
    relay.shutdown().await.unwrap();
}

#[test]
fn a_source_flag_needs_a_name_and_an_address() {
    use clap::Parser;
    let parse = |s: &str| {
        mailq_relay::Config::from_args(mailq_relay::Args::parse_from([
            "mailq-relay",
            "--queue",
            "/tmp/q",
            "--source",
            s,
        ]))
    };
    let c = parse("ip-1=192.0.2.1").unwrap();
    assert_eq!(
        c.sources,
        [("ip-1".to_string(), "192.0.2.1".parse().unwrap())]
    );
    for bad in ["ip-1", "=192.0.2.1", "ip-1=not-an-ip"] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(
            e.contains("--source") && e.contains("e.g. ip-1=192.0.2.1"),
            "{e}"
        );
    }
}
