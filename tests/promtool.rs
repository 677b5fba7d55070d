//! The Prometheus side checked by Prometheus's own tool: the exposition
//! passes `promtool check metrics` (with more destinations than get their own
//! series), and docs/alerts.yml passes `promtool check rules` and its unit
//! tests (`promtool test rules docs/alerts.test.yml`, one or more per alert,
//! firing on recorded series and staying silent on near misses).
//!
//! promtool comes from Debian's `prometheus` package (.ci/run installs it,
//! and sets MAILQ_REQUIRE_TOOLS=1 so that a missing tool fails there).

mod common;
use common::*;
use mailq::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn promtool() -> bool {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("MAILQ_REQUIRE_TOOLS").is_none(),
            "promtool is missing: apt-get install prometheus"
        );
        eprintln!("skipped: promtool not installed (apt-get install prometheus)");
    }
    found
}

fn run(args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut c = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = c.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn the_exposition_passes_promtool_check_metrics() {
    if !promtool() {
        return;
    }
    let dir = TempDir::new("promtool");
    let clock = ManualClock::new(T0);
    let q = Queue::open(dir.path(), opts(&clock)).unwrap();
    for i in 0..60 {
        let rcpt = format!("u@d{i}.example");
        q.enqueue(&msg("a@x.org", &[&rcpt, "v@gmail.com"], b"x"))
            .unwrap();
    }
    q.suspend("d7.example").unwrap();
    let text = q.stats().prometheus_top(10);
    assert!(
        text.contains("mailq_bucket_depth{key=\"gmail.com\"} 60"),
        "{text}"
    );
    assert!(
        text.contains("mailq_bucket_depth{key=\"other\",aggregate=\"true\"} 51"),
        "the 51 destinations past the top 10 are summed: {text}"
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with("mailq_bucket_depth"))
        .count();
    assert_eq!(series, 11, "cardinality is bounded by top N + 1");
    let (ok, out) = run(&["check", "metrics"], text.as_bytes());
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    if !promtool() {
        return;
    }
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs");
    let (ok, out) = run(&["check", "rules", &format!("{docs}/alerts.yml")], b"");
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let (ok, out) = run(&["test", "rules", &format!("{docs}/alerts.test.yml")], b"");
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
}
