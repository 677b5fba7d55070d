//! The admin API through a real Unix socket: every endpoint, every filter,
//! dry-run counts equal to real counts, malformed requests, peer credentials,
//! and the three ways of serving (fd in the caller's loop, own thread, tokio).
#![cfg(feature = "admin")]

mod common;
use common::*;
use mailq::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

/// Sends raw bytes, returns (status, body as JSON or as a string).
fn raw(sock: &Path, bytes: &[u8]) -> (u16, Value) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, v)
}

fn get(sock: &Path, target: &str) -> (u16, Value) {
    raw(
        sock,
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

fn post(sock: &Path, action: &str, body: Value) -> (u16, Value) {
    let b = body.to_string();
    raw(
        sock,
        format!(
            "POST /v1/{action} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )
        .as_bytes(),
    )
}

/// Runs `f` to see what `action` with `body` would do, then does it: the
/// dry-run count must equal the real count.
fn act(sock: &Path, action: &str, body: Value) -> u64 {
    let mut dry = body.clone();
    dry["dry_run"] = json!(true);
    let (s1, d) = post(sock, action, dry);
    let (s2, r) = post(sock, action, body);
    assert_eq!((s1, s2), (200, 200), "{d} {r}");
    assert_eq!(d["dry_run"], json!(true));
    assert_eq!(
        d["count"], r["count"],
        "dry run of {action} counted what it does"
    );
    r["count"].as_u64().unwrap()
}

/// Three messages an hour apart (as in tests/operate.rs), served on a thread.
fn served(
    tag: &str,
) -> (
    TempDir,
    Arc<ManualClock>,
    Queue,
    AdminThread,
    [MessageId; 3],
) {
    let dir = TempDir::new(tag);
    let clock = ManualClock::new(T0);
    let (q, ids) = three_messages(&dir, &clock);
    let t = Admin::open(&q, AdminOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    (dir, clock, q, t, ids)
}

fn ids(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{}:{}", i["id"].as_str().unwrap(), i["index"]))
        .collect();
    out.sort();
    out
}

#[test]
fn read_endpoints_and_every_filter() {
    let (dir, _clock, q, _t, [a, b, c]) = served("admin-read");
    let sock = dir.path().join("admin.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let (s, st) = get(&sock, "/v1/stats");
    assert_eq!((s, st["messages"].as_u64()), (200, Some(3)));
    assert_eq!(st["states"]["ready"], json!(4));
    let (s, m) = get(&sock, "/metrics");
    assert_eq!(s, 200);
    let m = m.as_str().unwrap().to_string();
    assert!(m.contains("mailq_recipients{state=\"ready\"} 4"), "{m}");
    assert!(m.contains("mailq_bucket_depth{key=\"gmail.com\"} 2"), "{m}");
    let (_, m1) = get(&sock, "/metrics?top=1");
    let m1 = m1.as_str().unwrap().to_string();
    assert!(
        m1.contains("mailq_bucket_depth{key=\"other\",aggregate=\"true\"} 2"),
        "{m1}"
    );
    let (s, shape) = get(&sock, "/v1/qshape?top=2");
    assert_eq!(s, 200);
    assert_eq!(shape["total"]["total"], json!(4));
    assert_eq!(shape["rows"].as_array().unwrap().len(), 2);
    assert_eq!(shape["rows"][0]["key"], json!("gmail.com"));
    let (_, d) = get(&sock, "/v1/destinations?key=yahoo.com");
    assert_eq!(d["destinations"][0]["depth"], json!(1));
    assert_eq!(d["total"], json!(3));

    let sel = |q: &str| ids(&get(&sock, &format!("/v1/recipients?{q}")).1);
    let one = |id: MessageId, i: u32| format!("{id}:{i}");
    assert_eq!(sel("").len(), 4);
    assert_eq!(sel("sender=news%40*"), [one(a, 0), one(a, 1)]);
    assert_eq!(sel("sender=%3C%3E"), [one(c, 0)]);
    assert_eq!(sel("rcpt=*%40gmail.com"), [one(a, 0), one(b, 0)]);
    assert_eq!(sel("domain=YAHOO.com"), [one(a, 1)]);
    assert_eq!(sel("route=corp.example"), [one(c, 0)]);
    assert_eq!(sel("older_than=90m"), [one(a, 0), one(a, 1)]);
    assert_eq!(sel("younger_than=30m"), [one(c, 0)]);
    assert_eq!(sel(&format!("id={a},{c}")).len(), 3);
    assert_eq!(sel("state=deferred"), Vec::<String>::new());
    assert_eq!(
        sel("state=corrupt"),
        Vec::<String>::new(),
        "damage is a state to filter by"
    );
    assert_eq!(sel("attempts=1"), Vec::<String>::new());

    // One deferral with a Gmail-style reply, then the state/attempts/error filters.
    let mut s = q.session_for("gmail.com").unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    let outs: Vec<Outcome> = d
        .recipients()
        .iter()
        .map(|_| Outcome::temp("421 4.7.0 [TSS04] Try again later 5si123.45 - gsmtp"))
        .collect();
    d.complete(&outs).unwrap();
    drop(s);
    let deferred = sel("state=deferred&attempts=1&error=tss04");
    assert!(!deferred.is_empty());
    assert_eq!(deferred, sel("state=deferred"));
    // A regular expression over a reply that ends in a unique id.
    assert_eq!(
        sel("error_regex=%5E421%204%5C.7%5C.0%20%5C%5Btss04%5C%5D.*gsmtp%24"),
        deferred
    );
    assert_eq!(sel("error_regex=%5E5"), Vec::<String>::new());
    let (s, e) = get(&sock, "/v1/recipients?error_regex=%28");
    assert_eq!(s, 400, "{e}");
    assert!(sel("error=nothing-like-this").is_empty());

    // Paging: two pages of two, then nothing more.
    let (_, p1) = get(&sock, "/v1/recipients?limit=2");
    let (_, p2) = get(&sock, "/v1/recipients?limit=2&offset=2");
    assert_eq!(
        (p1["more"].clone(), p2["more"].clone()),
        (json!(true), json!(false))
    );
    let mut all = ids(&p1);
    all.extend(ids(&p2));
    all.sort();
    assert_eq!(all, sel(""));

    let (s, m) = get(&sock, &format!("/v1/messages/{a}"));
    assert_eq!((s, m["sender"].as_str()), (200, Some("news@shop.example")));
    assert_eq!(m["recipients"][1]["recipient"], json!("bob@yahoo.com"));
    let (s, e) = get(&sock, &format!("/v1/explain/{c}/0"));
    assert_eq!(s, 200);
    assert!(
        e["recipients"][0]["why"]
            .as_str()
            .unwrap()
            .contains("ready"),
        "{e}"
    );
    let (s, e) = get(&sock, &format!("/v1/explain/{a}"));
    assert_eq!((s, e["recipients"].as_array().unwrap().len()), (200, 2));
    assert_eq!(get(&sock, "/v1/messages/00000000DEADBEEF").0, 404);
    assert_eq!(get(&sock, &format!("/v1/explain/{a}/9")).0, 404);
}

#[test]
fn actions_with_dry_runs_equal_to_real_counts() {
    let (dir, clock, q, _t, [a, _b, c]) = served("admin-act");
    let sock = dir.path().join("admin.sock");
    assert_eq!(act(&sock, "hold", json!({"domain": "gmail.com"})), 2);
    assert_eq!(q.stats().count("held"), 2);
    assert_eq!(
        act(
            &sock,
            "release",
            json!({"state": "held", "sender": "billing@*"})
        ),
        1
    );
    assert_eq!(act(&sock, "release", json!({"all": true})), 1);
    assert_eq!(
        act(
            &sock,
            "reroute",
            json!({"route": "yahoo.com", "to": "smtp:relay"})
        ),
        1
    );
    let info = q.inspect(a).unwrap();
    assert_eq!(info.recipients[1].route, "smtp:relay");
    assert_eq!(
        act(
            &sock,
            "bounce",
            json!({"id": c.to_string(), "reason": "mailbox retired"})
        ),
        1
    );
    let bounces = q.take_bounces(10).unwrap();
    assert_eq!(bounces.len(), 1);
    assert!(
        bounces[0].reason.contains("mailbox retired"),
        "{:?}",
        bounces[0]
    );
    assert_eq!(
        act(&sock, "flush", json!({"all": true})),
        0,
        "nothing deferred"
    );
    assert_eq!(act(&sock, "delete", json!({"older_than": "90m"})), 2);
    assert_eq!(q.stats().recipients(), 2);

    // Destinations: suspend for a duration, resume, limit.
    assert_eq!(
        act(
            &sock,
            "suspend",
            json!({"route": "gmail.com", "duration": "1h"})
        ),
        1
    );
    let (_, d) = get(&sock, "/v1/destinations?key=gmail.com");
    assert_eq!(d["destinations"][0]["suspended"], json!(true));
    assert_eq!(
        d["destinations"][0]["suspended_until"],
        json!(T0 + 7200 + 3600)
    );
    assert!(q.session_for("gmail.com").unwrap().is_none(), "suspended");
    clock.advance(3600);
    q.tick();
    assert!(
        q.session_for("gmail.com").unwrap().is_some(),
        "resumed by itself"
    );
    assert_eq!(act(&sock, "suspend", json!({"route": "gmail.com"})), 1);
    assert_eq!(act(&sock, "resume", json!({"route": "gmail.com"})), 1);
    assert_eq!(
        act(&sock, "limit", json!({"route": "gmail.com", "limit": 3})),
        1
    );
    let (_, d) = get(&sock, "/v1/destinations?key=gmail.com");
    assert_eq!(d["destinations"][0]["limit"], json!(3));

    // By predicate: the destinations the matching recipients wait for.
    let (s, v) = post(
        &sock,
        "suspend",
        json!({"rcpt": "cat@*", "duration": "1h", "dry_run": true}),
    );
    assert_eq!(s, 200);
    assert_eq!(
        (&v["destinations"], &v["count"]),
        (&json!(["gmail.com"]), &json!(1))
    );
    assert!(q.session_for("gmail.com").unwrap().is_some(), "a dry run");
    let (_, v) = post(&sock, "suspend", json!({"rcpt": "cat@*", "duration": "1h"}));
    assert_eq!(v["destinations"], json!(["gmail.com"]));
    assert!(q.session_for("gmail.com").unwrap().is_none(), "suspended");
    let (_, v) = post(&sock, "resume", json!({"all": true}));
    let dests = v["destinations"].as_array().unwrap();
    assert!(dests.contains(&json!("gmail.com")), "{v}");
    assert!(q.session_for("gmail.com").unwrap().is_some(), "resumed");
    let (_, v) = post(
        &sock,
        "limit",
        json!({"domain": "nowhere.example", "limit": 2}),
    );
    assert_eq!((&v["destinations"], &v["count"]), (&json!([]), &json!(0)));
}

#[test]
fn malformed_requests_get_clear_errors_and_change_nothing() {
    let (dir, _clock, q, _t, _) = served("admin-bad");
    let sock = dir.path().join("admin.sock");
    let before = q.stats().recipients();
    let err = |r: (u16, Value)| (r.0, r.1["error"].as_str().unwrap_or("").to_string());
    let (s, e) = err(post(&sock, "delete", json!({})));
    assert_eq!(s, 400);
    assert!(e.contains("\"all\": true"), "{e}");
    let (s, e) = err(post(&sock, "delete", json!({"sendr": "x"})));
    assert_eq!(s, 400);
    assert!(e.contains("unknown filter"), "{e}");
    assert_eq!(err(post(&sock, "bounce", json!({"all": true}))).0, 400);
    assert_eq!(err(post(&sock, "reroute", json!({"all": true}))).0, 400);
    assert_eq!(
        err(post(&sock, "limit", json!({"route": "x", "limit": 0}))).0,
        400
    );
    assert_eq!(
        err(post(
            &sock,
            "suspend",
            json!({"route": "x", "duration": "soon"})
        ))
        .0,
        400
    );
    let (s, e) = err(post(&sock, "suspend", json!({})));
    assert_eq!(s, 400);
    assert!(e.contains("\"all\": true"), "{e}");
    assert_eq!(
        err(post(&sock, "suspend", json!({"sender": "*", "seconds": 5}))).0,
        400,
        "a match-all filter needs all too"
    );
    assert_eq!(
        err(post(&sock, "delete", json!({"error_regex": "x?"}))).0,
        400,
        "a regex that matches every reply needs all too"
    );
    assert_eq!(
        err(post(
            &sock,
            "suspend",
            json!({"route": "x", "seconds": 99_999_999_999u64, "dry_run": true})
        ))
        .0,
        400,
        "a dry run refuses the length the action would refuse"
    );
    assert_eq!(
        err(post(
            &sock,
            "limit",
            json!({"domain": "x", "limit": "many"})
        ))
        .0,
        400
    );
    let bad_json = b"POST /v1/hold HTTP/1.1\r\nContent-Length: 5\r\n\r\n{nope";
    assert_eq!(err(raw(&sock, bad_json)).0, 400);
    assert_eq!(
        err(raw(
            &sock,
            b"POST /v1/hold HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]"
        ))
        .0,
        400
    );
    // Nothing malformed may act: a dry_run that is not a boolean, filters in
    // the query string, empty or match-everything filters without "all".
    let (s, e) = err(post(
        &sock,
        "delete",
        json!({"all": true, "dry_run": "true"}),
    ));
    assert_eq!(s, 400, "{e}");
    let q_post =
        b"POST /v1/delete?dry_run=true HTTP/1.1\r\nContent-Length: 16\r\n\r\n{\"domain\":\"x.y\"}";
    assert_eq!(err(raw(&sock, q_post)).0, 400);
    assert_eq!(err(post(&sock, "delete", json!({"error": ""}))).0, 400);
    let (s, e) = err(post(&sock, "delete", json!({"sender": "*"})));
    assert!(s == 400 && e.contains("\"all\": true"), "{e}");
    assert_eq!(
        err(post(
            &sock,
            "suspend",
            json!({"route": "x", "duration": 3600})
        ))
        .0,
        400
    );
    let both = json!({"route": "x", "duration": "1h", "seconds": 5});
    assert_eq!(err(post(&sock, "suspend", both)).0, 400);
    assert_eq!(
        err(post(
            &sock,
            "suspend",
            json!({"route": "x", "seconds": 0, "dry_run": true})
        ))
        .0,
        400
    );
    assert_eq!(
        err(get(&sock, "/v1/recipients?offset=99999999999999999999")).0,
        400
    );
    assert_eq!(err(get(&sock, "/v1/hold")).0, 405);
    assert_eq!(err(post(&sock, "stats", json!({}))).0, 405);
    assert_eq!(err(get(&sock, "/v2/everything")).0, 404);
    assert_eq!(err(get(&sock, "/v1/recipients?state=lost")).0, 400);
    assert_eq!(err(get(&sock, "/v1/recipients?limit=ten")).0, 400);
    assert_eq!(err(get(&sock, "/v1/messages/not-hex")).0, 400);
    let big = b"POST /v1/hold HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n";
    assert_eq!(err(raw(&sock, big)).0, 413);
    let (s, _) = raw(
        &sock,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert_eq!(s, 400);
    // A client that hangs up half way does not disturb the next one.
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"GET /v1/st").unwrap();
    drop(half);
    assert_eq!(get(&sock, "/v1/stats").0, 200);
    assert_eq!(q.stats().recipients(), before);
    assert_eq!(q.stats().count("held"), 0);
}

#[test]
fn served_from_the_callers_own_loop() {
    let dir = TempDir::new("admin-loop");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.enqueue(&msg("a@x.org", &["b@y.org"], b"z")).unwrap();
    let mut admin = Admin::open(&q, AdminOptions::default()).unwrap();
    let sock = admin.socket_path().to_path_buf();
    let client = std::thread::spawn(move || get(&sock, "/v1/stats"));
    let mut answered = 0;
    while answered == 0 {
        let mut p = libc::pollfd {
            fd: admin.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert!(
            unsafe { libc::poll(&mut p, 1, 5000) } > 0,
            "the fd became readable"
        );
        answered += admin.serve_ready().unwrap();
    }
    let (s, st) = client.join().unwrap();
    assert_eq!((s, st["messages"].as_u64()), (200, Some(1)));
    let path = admin.socket_path().to_path_buf();
    drop(admin);
    assert!(!path.exists(), "the socket file is removed with the server");
}

#[test]
fn tcp_serves_metrics_openly_and_the_rest_with_the_token() {
    let dir = TempDir::new("admin-tcp");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.enqueue(&msg("a@x.org", &["b@y.org"], b"z")).unwrap();
    let refused = Admin::open(
        &q,
        AdminOptions {
            tcp: Some("0.0.0.0:0".parse().unwrap()),
            ..Default::default()
        },
    );
    assert!(matches!(refused, Err(Error::InvalidOption(m)) if m.contains("loopback")));
    let admin = Admin::open(
        &q,
        AdminOptions {
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            token: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let addr = admin.tcp_addr().unwrap();
    let _t = admin.spawn().unwrap();
    let req = |text: String| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(text.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(req("GET /metrics HTTP/1.1\r\n\r\n".into()).starts_with("HTTP/1.1 200"));
    assert!(req("GET /v1/recipients HTTP/1.1\r\n\r\n".into()).starts_with("HTTP/1.1 401"));
    let hold = |tok: &str| {
        req(format!(
            "POST /v1/hold HTTP/1.1\r\nAuthorization: Bearer {tok}\r\nContent-Length: 12\r\n\r\n{{\"all\":true}}"
        ))
    };
    assert!(hold("wrong").starts_with("HTTP/1.1 401"));
    assert_eq!(q.stats().count("held"), 0);
    assert!(hold("s3cret").starts_with("HTTP/1.1 200"));
    assert_eq!(q.stats().count("held"), 1);
}

/// Another uid is refused by its peer credentials even when the socket file
/// lets it connect; a member of the read group may read but not act. Needs
/// root to run `curl` as other users.
#[test]
fn peer_credentials_decide() {
    let curl = std::process::Command::new("curl").arg("--version").output();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || curl.is_err() {
        assert!(
            std::env::var_os("MAILQ_REQUIRE_TOOLS").is_none(),
            "needs root and curl (CI runs as root and installs curl)"
        );
        eprintln!("skipped: needs root (to connect as another uid) and curl");
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("admin-peer");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.enqueue(&msg("a@x.org", &["b@y.org"], b"z")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let admin = Admin::open(
        &q,
        AdminOptions {
            read_group: Some(65534),
            ..Default::default()
        },
    )
    .unwrap();
    let sock = admin.socket_path().to_path_buf();
    let _t = admin.spawn().unwrap();
    let curl = |uid: u32, gid: u32, args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&sock)
            .args(args)
            .uid(uid)
            .gid(gid)
            .output()
            .expect("curl is installed (.ci/run installs it)");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // The read group reads and may not act.
    assert_eq!(curl(65534, 65534, &["http://x/v1/stats"]), "200");
    let post = ["-X", "POST", "-d", "{\"all\":true}", "http://x/v1/hold"];
    assert_eq!(curl(65534, 65534, &post), "403");
    // The mode bits keep other groups out: connect fails.
    assert_eq!(curl(65534, 65533, &["http://x/v1/stats"]), "000");
    // A socket opened up by mistake: the peer check still refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(curl(65534, 65533, &["http://x/v1/stats"]), "403");
    assert_eq!(curl(0, 0, &post), "200");
    assert_eq!(q.stats().count("held"), 1);
}

#[cfg(feature = "tokio")]
#[test]
fn served_as_a_tokio_task_on_a_current_thread_runtime() {
    let dir = TempDir::new("admin-tokio");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    q.enqueue(&msg("a@x.org", &["b@y.org"], b"z")).unwrap();
    let admin = Admin::open(&q, AdminOptions::default()).unwrap();
    let sock = admin.socket_path().to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let task = tokio::spawn(admin.serve_tokio());
        for _ in 0..3 {
            let sock = sock.clone();
            let (s, st) = tokio::task::spawn_blocking(move || get(&sock, "/v1/stats"))
                .await
                .unwrap();
            assert_eq!((s, st["messages"].as_u64()), (200, Some(1)));
        }
        task.abort();
    });
}

#[test]
fn the_rules_in_force_are_served() {
    let (dir, _clock, q, _t, _) = served("admin-rules");
    let sock = dir.path().join("admin.sock");
    assert_eq!(get(&sock, "/v1/rules"), (200, json!({ "rules": [] })));
    q.set_reply_rules(&[
        ReplyRule {
            pattern: r"\[TSS04\]".into(),
            action: RuleAction::Suspend(std::time::Duration::from_secs(600)),
        },
        ReplyRule {
            pattern: "Server busy".into(),
            action: RuleAction::Throttle {
                window: 2,
                rate: RateLimit {
                    per_minute: 30,
                    ..RateLimit::default()
                },
                duration: std::time::Duration::from_secs(300),
            },
        },
        ReplyRule {
            pattern: "4.7.28".into(),
            action: RuleAction::SuspendSource(std::time::Duration::from_secs(900)),
        },
    ])
    .unwrap();
    let (status, v) = get(&sock, "/v1/rules");
    assert_eq!(status, 200);
    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(
        (&rules[2]["action"], &rules[2]["seconds"]),
        (&json!("suspend-source"), &json!(900))
    );
    assert_eq!(rules[0]["pattern"], r"\[TSS04\]");
    assert_eq!(
        (&rules[0]["action"], &rules[0]["seconds"]),
        (&json!("suspend"), &json!(600))
    );
    assert_eq!(rules[1]["action"], "throttle");
    assert_eq!(
        (&rules[1]["window"], &rules[1]["per_minute"]),
        (&json!(2), &json!(30))
    );
    let (status, _) = post(&sock, "rules", json!({}));
    assert_eq!(status, 405, "read-only");
}

#[test]
fn sources_are_served_and_per_source_limits_set_through_the_api() {
    let (dir, _clock, q, _t, _) = served("admin-sources");
    let sock = dir.path().join("admin.sock");
    assert_eq!(get(&sock, "/v1/sources"), (200, json!({ "sources": [] })));
    q.set_sources(None, &["ip-1"]).unwrap();
    q.set_sources(Some("gmail.com"), &["ip-1", "ip-2"]).unwrap();
    q.set_warmup("ip-2", &WarmupStep::ramp(50, 1000, 10))
        .unwrap();
    let (status, v) = get(&sock, "/v1/sources");
    assert_eq!(status, 200);
    let list = v["sources"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (&list[0]["name"], &list[0]["pools"]),
        (&json!("ip-1"), &json!(["*", "gmail.com"]))
    );
    assert_eq!(
        (
            &list[1]["name"],
            &list[1]["day"],
            &list[1]["per_day"],
            &list[1]["used"]
        ),
        (&json!("ip-2"), &json!(1), &json!(50), &json!(0))
    );
    // Per-source limits of one destination, then shown with it.
    let body = json!({"route": "gmail.com", "sessions": 3, "per_minute": 100});
    let (status, v) = post(&sock, "source-limit", body);
    assert_eq!(
        (status, &v["destinations"]),
        (200, &json!(["gmail.com"])),
        "{v}"
    );
    q.enqueue(&msg("s@x.example", &["r@gmail.com"], b"x"))
        .unwrap();
    let (_, v) = get(&sock, "/v1/destinations?key=gmail.com");
    let d = &v["destinations"][0];
    assert_eq!(
        (&d["source_limit"], &d["source_rate_limit"]["per_minute"]),
        (&json!(3), &json!(100)),
        "{v}"
    );
    let names: Vec<&Value> = d["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["source"])
        .collect();
    assert_eq!(names, [&json!("ip-1"), &json!("ip-2")]);
    let (status, _) = post(
        &sock,
        "source-limit",
        json!({"route": "gmail.com", "sessions": 70000}),
    );
    assert_eq!(status, 400);
    let (status, _) = post(&sock, "sources", json!({}));
    assert_eq!(status, 405, "read-only");
}
