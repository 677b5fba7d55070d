//! mailqctl as a subprocess against a live queue owned by this test process
//! (served on the admin socket from a thread), against a queue no process
//! owns (mailqctl opens it), and `top` in a real terminal under tmux.

use mailq::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("mailqctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailqctl"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env("COLUMNS", "160")
        .output()
        .unwrap()
}

/// Runs, expects success, returns stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let o = ctl(dir, args);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "mailqctl {args:?}: {:?}\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &a)).unwrap()
}

/// Runs, expects failure with `code`, returns stderr.
fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let o = ctl(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(code), "mailqctl {args:?}: {err}");
    err
}

fn enqueue(q: &Queue, sender: &str, rcpts: &[&str]) -> MessageId {
    q.enqueue(&NewMessage {
        sender,
        recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
        meta: b"",
        body: b"Subject: t\r\n\r\nbody\r\n",
    })
    .unwrap()
}

/// The count an action reports ("hold: 2 recipient(s)").
fn count(out: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Dry run, then the real action: the counts agree.
fn act(dir: &Path, args: &[&str]) -> u64 {
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let d = ok(dir, &dry);
    assert!(d.contains("dry run"), "{d}");
    let r = ok(dir, args);
    assert_eq!(count(&d), count(&r), "{d} / {r}");
    count(&r)
}

#[test]
fn every_subcommand_against_a_live_queue() {
    let dir = Dir::new("live");
    let q = Queue::open(&dir.0, Options::default()).unwrap();
    let a = enqueue(&q, "news@shop.example", &["ann@gmail.com", "bob@yahoo.com"]);
    let b = enqueue(&q, "billing@shop.example", &["cat@gmail.com"]);
    let c = enqueue(&q, "", &["postmaster@corp.example"]);
    let _admin = Admin::open(&q, AdminOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    let d = &dir.0;

    let st = ok(d, &["stats"]);
    assert!(st.contains("messages      3"), "{st}");
    assert_eq!(json(d, &["stats"])["states"]["ready"], 4);
    let shape = ok(d, &["qshape"]);
    let lines: Vec<&str> = shape.lines().collect();
    assert!(lines[0].trim_start().starts_with("T "), "{shape}");
    assert!(
        lines[1].starts_with("TOTAL") && lines[2].starts_with("gmail.com"),
        "{shape}"
    );
    let dests = ok(d, &["destinations"]);
    assert!(
        dests.contains("gmail.com") && dests.contains("(3 destinations)"),
        "{dests}"
    );

    let ls = ok(d, &["ls", "--domain", "gmail.com"]);
    assert!(
        ls.contains("ann@gmail.com") && ls.contains("cat@gmail.com"),
        "{ls}"
    );
    assert!(!ls.contains("bob@yahoo.com"), "{ls}");
    assert!(ls.contains("(2 recipients)"), "{ls}");
    let nulls = json(d, &["list", "--sender", "<>"]);
    assert_eq!(nulls["items"].as_array().unwrap().len(), 1);
    assert_eq!(nulls["items"][0]["id"], c.to_string());
    for (filter, value, n) in [
        ("--sender", "news@*", 2),
        ("--rcpt", "*@yahoo.com", 1),
        ("--route", "corp.example", 1),
        ("--state", "ready", 4),
        ("--older-than", "1h", 0),
        ("--younger-than", "1h", 4),
        ("--attempts", "1", 0),
        ("--error", "x", 0),
        ("--id", &b.to_string(), 1),
    ] {
        let v = json(d, &["list", filter, value]);
        assert_eq!(v["items"].as_array().unwrap().len(), n, "{filter} {value}");
    }
    let page = ok(d, &["list", "--limit", "3"]);
    assert!(page.contains("more: --offset 3"), "{page}");

    let show = ok(d, &["show", &a.to_string()]);
    assert!(
        show.contains("news@shop.example") && show.contains("bob@yahoo.com"),
        "{show}"
    );
    let why = ok(d, &["explain", &format!("{a}:1")]);
    assert!(
        why.contains("bob@yahoo.com") && why.contains("ready"),
        "{why}"
    );

    assert_eq!(act(d, &["hold", "--domain", "gmail.com"]), 2);
    assert_eq!(q.stats().count("held"), 2);
    let why = ok(d, &["explain", &a.to_string()]);
    assert!(why.contains("held by the operator"), "{why}");
    assert_eq!(act(d, &["release", "--state", "held"]), 2);
    assert_eq!(act(d, &["flush", "--all"]), 0);
    assert_eq!(
        act(
            d,
            &["reroute", "--to", "smtp:relay", "--route", "yahoo.com"]
        ),
        1
    );
    assert_eq!(q.inspect(a).unwrap().recipients[1].route, "smtp:relay");
    assert_eq!(
        act(
            d,
            &["bounce", "--reason", "retired", "--id", &c.to_string()]
        ),
        1
    );
    assert_eq!(q.take_bounces(5).unwrap().len(), 1);
    assert_eq!(act(d, &["delete", "--sender", "billing@*"]), 1);
    assert_eq!(act(d, &["suspend", "gmail.com", "--for", "2h"]), 1);
    let dests = ok(d, &["destinations"]);
    assert!(
        dests.contains("suspended 1h59m") || dests.contains("suspended 2h00m"),
        "{dests}"
    );
    assert_eq!(act(d, &["resume", "gmail.com"]), 1);
    assert_eq!(act(d, &["limit", "gmail.com", "4"]), 1);
    // Message-rate limits: set, shown, removed.
    let gmail_rate = || {
        let v = json(d, &["destinations"]);
        v["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["key"] == "gmail.com")
            .map(|x| x["rate_limit"].clone())
            .unwrap()
    };
    assert_eq!(act(d, &["rate", "gmail.com", "--per-minute", "6"]), 1);
    assert_eq!(gmail_rate()["per_minute"], 6);
    assert_eq!(act(d, &["rate", "gmail.com"]), 1);
    assert_eq!(gmail_rate(), Value::Null);
    // By filters: the destinations of the matching recipients.
    let out = ok(d, &["suspend", "--rcpt", "ann@*", "--for", "1h", "-n"]);
    assert!(
        out.contains("1 recipient(s) queued in 1 destination(s) [gmail.com]"),
        "{out}"
    );
    assert!(q.session_for("gmail.com").unwrap().is_some(), "dry run");
    assert_eq!(act(d, &["suspend", "--rcpt", "ann@*"]), 1);
    assert!(q.session_for("gmail.com").unwrap().is_none(), "suspended");
    assert!(ok(d, &["resume", "--all"]).contains("gmail.com"));
    assert!(q.session_for("gmail.com").unwrap().is_some(), "resumed");
    assert_eq!(act(d, &["limit", "--domain", "gmail.com", "2"]), 1);
    fails(d, &["resume"], 2);
    fails(d, &["limit", "gmail.com", "--route", "gmail.com", "2"], 2);
    assert!(fails(d, &["limit", "gmail.com"], 2).contains("limit [DESTINATION] N"));
    fails(d, &["limit", "--all", "0"], 2);
    let none = ok(d, &["suspend", "--domain", "nowhere.example"]);
    assert!(
        none.contains("no destination matched; nothing changed"),
        "{none}"
    );
    assert!(ok(d, &["metrics"]).contains("# TYPE mailq_delivered_total counter"));

    // Errors an operator can act on, with exit codes.
    let e = fails(d, &["delete"], 2);
    assert!(e.contains("\"all\": true"), "{e}");
    assert!(fails(d, &["list", "--state", "lost"], 2).contains("unknown state"));
    fails(d, &["show", "00000000DEADBEEF"], 3);
    fails(d, &["explain", "nothex"], 2);
    assert!(fails(d, &["list", "--error-regex", "("], 2).contains("error_regex"));
    fails(d, &["limit", "gmail.com", "0"], 2);
}

#[test]
fn opens_the_queue_itself_when_no_process_owns_it() {
    let dir = Dir::new("offline");
    {
        let q = Queue::open(&dir.0, Options::default()).unwrap();
        enqueue(&q, "a@x.org", &["b@y.org", "c@y.org"]);
        q.close().unwrap();
    }
    assert_eq!(act(&dir.0, &["hold", "--domain", "y.org"]), 2);
    let q = Queue::open(&dir.0, Options::default()).unwrap();
    assert_eq!(q.stats().count("held"), 2, "the hold was durable");
    // Locked by a process that serves no admin API: a clear error.
    let e = fails(&dir.0, &["stats"], 69);
    assert!(e.contains("does not serve the admin API"), "{e}");
    drop(q);
    let e = fails(Path::new("/nonexistent/queue"), &["stats"], 69);
    assert!(e.contains("not a queue directory"), "{e}");
    // A mistyped directory that exists does not become a new, empty queue.
    let typo = Dir::new("typo");
    std::fs::create_dir_all(&typo.0).unwrap();
    let e = fails(&typo.0, &["stats"], 69);
    assert!(e.contains("not a queue directory"), "{e}");
    assert_eq!(
        std::fs::read_dir(&typo.0).unwrap().count(),
        0,
        "nothing created"
    );
}

fn tmux(args: &[&str]) -> Output {
    Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is installed (.ci/run installs it)")
}

fn wait_for(session: &str, what: &str) -> String {
    let start = Instant::now();
    loop {
        let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", session]).stdout)
            .to_string();
        if screen.contains(what) {
            return screen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {what:?} on screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn top_is_a_live_full_screen_view() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("MAILQ_REQUIRE_TOOLS").is_none(),
            "tmux is missing: apt-get install tmux"
        );
        eprintln!("skipped: tmux not installed");
        return;
    }
    let dir = Dir::new("top");
    let q = Queue::open(&dir.0, Options::default()).unwrap();
    for i in 0..30 {
        enqueue(&q, "a@x.org", &[&format!("u{i}@gmail.com")]);
    }
    enqueue(&q, "a@x.org", &["v@yahoo.com"]);
    let _admin = Admin::open(&q, AdminOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    let session = format!("mailqctl-top-{}", std::process::id());
    let cmd = format!(
        "{} --dir {} top --interval 0.2",
        env!("CARGO_BIN_EXE_mailqctl"),
        dir.0.display()
    );
    let o = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let screen = wait_for(&session, "gmail.com");
    assert!(
        screen.contains("DESTINATION") && screen.contains("yahoo.com"),
        "{screen}"
    );
    let gmail = screen
        .lines()
        .find(|l| l.starts_with("gmail.com"))
        .unwrap_or("");
    assert!(
        gmail.split_whitespace().nth(1) == Some("30"),
        "depth 30: {gmail}"
    );
    // It refreshes: a new destination appears without a key press.
    enqueue(&q, "a@x.org", &["w@outlook.com"]);
    wait_for(&session, "outlook.com");
    q.suspend("yahoo.com").unwrap();
    wait_for(&session, "suspended");
    tmux(&["send-keys", "-t", &session, "q"]);
    let start = Instant::now();
    while tmux(&["has-session", "-t", &session]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(10), "q quits top");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rules_shows_what_the_mta_configured() {
    let dir = Dir::new("rules");
    let q = Queue::open(&dir.0, Options::default()).unwrap();
    q.set_reply_rules(&[ReplyRule {
        pattern: r"\[TSS04\]".into(),
        action: RuleAction::Suspend(std::time::Duration::from_secs(600)),
    }])
    .unwrap();
    let _admin = Admin::open(&q, AdminOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    let out = ok(&dir.0, &["rules"]);
    assert!(
        out.contains(r"\[TSS04\]") && out.contains("suspend"),
        "{out}"
    );
    assert!(out.contains("(1 rules"), "{out}");
    assert_eq!(json(&dir.0, &["rules"])["rules"][0]["seconds"], 600);
}

#[test]
fn sources_shows_the_warm_up_and_source_limit_sets_per_source_limits() {
    let dir = Dir::new("sources");
    let q = Queue::open(&dir.0, Options::default()).unwrap();
    q.set_sources(Some("gmail.com"), &["ip-1", "ip-2"]).unwrap();
    q.set_warmup(
        "ip-2",
        &[WarmupStep {
            day: 1,
            per_day: 50,
        }],
    )
    .unwrap();
    let _admin = Admin::open(&q, AdminOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    let out = ok(&dir.0, &["sources"]);
    assert!(
        out.contains("ip-2") && out.contains("50") && out.contains("gmail.com"),
        "{out}"
    );
    assert!(out.contains("(2 sources"), "{out}");
    assert_eq!(json(&dir.0, &["sources"])["sources"][1]["per_day"], 50);
    ok(
        &dir.0,
        &[
            "source-limit",
            "gmail.com",
            "--sessions",
            "2",
            "--per-minute",
            "60",
        ],
    );
    let d = q.destination("gmail.com").unwrap().unwrap();
    assert_eq!(
        (d.source_limit, d.source_rate_limit.map(|r| r.per_minute)),
        (2, Some(60))
    );
}
