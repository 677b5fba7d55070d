//! `mailqctl`: operate a live mailq queue — stats, qshape, search, show,
//! explain, bulk actions by predicate with a dry run, destinations, and a live
//! `top` view. It talks to the process that owns the queue through its admin
//! socket, or opens the queue itself when no process does.

mod client;
mod table;
mod top;

use clap::{Args, Parser, Subcommand};
use client::{exit, Failure, Target};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use table::{age, Align, Table};

#[derive(Parser)]
#[command(name = "mailqctl", version, about = "Operate a live mailq queue")]
struct Cli {
    /// Queue directory: talks to the owning process through DIR/admin.sock,
    /// or opens the queue itself when no process owns it.
    #[arg(long, short = 'd', env = "MAILQ_DIR", global = true)]
    dir: Option<PathBuf>,
    /// Admin socket of the owning process (instead of --dir).
    #[arg(long, global = true, conflicts_with = "dir")]
    socket: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which recipients (every given filter must hold).
#[derive(Args, Clone, Default)]
struct Filters {
    /// Message id(s), comma-separated.
    #[arg(long)]
    id: Option<String>,
    /// Envelope sender, a glob (`*`, `?`); `<>` for the null sender.
    #[arg(long)]
    sender: Option<String>,
    /// Recipient address, a glob.
    #[arg(long)]
    rcpt: Option<String>,
    /// Recipient domain.
    #[arg(long)]
    domain: Option<String>,
    /// Routing key (destination).
    #[arg(long)]
    route: Option<String>,
    /// State(s): ready, deferred, held, inflight, failed, expired, corrupt (comma-separated).
    #[arg(long)]
    state: Option<String>,
    /// Accepted longer ago than this (90s, 30m, 2h, 3d).
    #[arg(long)]
    older_than: Option<String>,
    /// Accepted more recently than this.
    #[arg(long)]
    younger_than: Option<String>,
    /// At least this many delivery attempts.
    #[arg(long)]
    attempts: Option<u16>,
    /// The last error contains this text (case-insensitive).
    #[arg(long)]
    error: Option<String>,
    /// The last error matches this regular expression (case-insensitive).
    #[arg(long)]
    error_regex: Option<String>,
}

impl Filters {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let f = self.clone();
        [
            ("id", f.id),
            ("sender", f.sender),
            ("rcpt", f.rcpt),
            ("domain", f.domain),
            ("route", f.route),
            ("state", f.state),
            ("older_than", f.older_than),
            ("younger_than", f.younger_than),
            ("attempts", f.attempts.map(|a| a.to_string())),
            ("error", f.error),
            ("error_regex", f.error_regex),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// A bulk action's selection.
#[derive(Args)]
struct Selection {
    #[command(flatten)]
    filters: Filters,
    /// Act on every queued recipient (needed when no filter is given).
    #[arg(long)]
    all: bool,
    /// Only count what would be touched.
    #[arg(long, short = 'n')]
    dry_run: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Queue figures: messages, recipients by state, throughput, durability.
    Stats,
    /// Recipients per destination by age, like Postfix qshape.
    Qshape {
        /// Destinations shown.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Destinations by depth, with sessions, window and state.
    Destinations {
        /// Destinations shown.
        #[arg(long, default_value_t = 50)]
        top: usize,
    },
    /// The reply-driven rules the MTA configured (regex over replies → action).
    Rules,
    /// The egress sources, their warm-up day, today's cap and use, and pools.
    Sources,
    /// List queued recipients matching the filters.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        filters: Filters,
        /// Rows shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Rows skipped (paging).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// One message: envelope and every recipient.
    Show {
        /// Message id.
        id: String,
    },
    /// Why a recipient is not being delivered now (ID or ID:N).
    Explain {
        /// Message id, or ID:N for recipient N only.
        target: String,
    },
    /// Hold matching recipients (in flight: when the attempt ends).
    Hold(Selection),
    /// Release held recipients.
    Release(Selection),
    /// Delete matching recipients without a DSN.
    Delete(Selection),
    /// Retry matching deferred recipients now.
    Flush(Selection),
    /// Fail matching recipients for good with a reason; a DSN is sent.
    Bounce {
        /// The text the sender reads in the DSN.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        sel: Selection,
    },
    /// Move matching recipients to another routing key.
    Reroute {
        /// The new routing key.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        sel: Selection,
    },
    /// Stop opening sessions to a destination (for a while, or until resumed);
    /// with filters instead, to every destination a matching recipient waits for.
    Suspend {
        /// Routing key.
        destination: Option<String>,
        /// Resume by itself after this long (90s, 30m, 2h, 3d).
        #[arg(long = "for")]
        duration: Option<String>,
        #[command(flatten)]
        sel: Selection,
    },
    /// Resume a suspended destination (or those of the matching recipients).
    Resume {
        /// Routing key.
        destination: Option<String>,
        #[command(flatten)]
        sel: Selection,
    },
    /// Set the concurrency limit of a destination (or of those of the
    /// matching recipients): `limit [DESTINATION] N`.
    Limit {
        /// The routing key (leave it out to use filters), then the most
        /// sessions at once.
        #[arg(num_args = 1..=2, required = true, value_name = "[DESTINATION] N")]
        args: Vec<String>,
        #[command(flatten)]
        sel: Selection,
    },
    /// Set the message-rate limits of a destination (or of those of the
    /// matching recipients); no --per-* option removes them.
    Rate {
        /// Routing key.
        destination: Option<String>,
        /// Messages per second.
        #[arg(long, default_value_t = 0)]
        per_second: u32,
        /// Messages per minute.
        #[arg(long, default_value_t = 0)]
        per_minute: u32,
        /// Messages per hour.
        #[arg(long, default_value_t = 0)]
        per_hour: u32,
        /// Messages per day.
        #[arg(long, default_value_t = 0)]
        per_day: u32,
        #[command(flatten)]
        sel: Selection,
    },
    /// Set a destination's limits per egress source (or those of the
    /// destinations of the matching recipients): sessions and messages per
    /// period through each of its sources; 0 or no option: no limit.
    SourceLimit {
        /// Routing key.
        destination: Option<String>,
        /// Sessions per source at most.
        #[arg(long, default_value_t = 0)]
        sessions: u16,
        /// Messages per second per source.
        #[arg(long, default_value_t = 0)]
        per_second: u32,
        /// Messages per minute per source.
        #[arg(long, default_value_t = 0)]
        per_minute: u32,
        /// Messages per hour per source.
        #[arg(long, default_value_t = 0)]
        per_hour: u32,
        /// Messages per day per source.
        #[arg(long, default_value_t = 0)]
        per_day: u32,
        #[command(flatten)]
        sel: Selection,
    },
    /// Live view of destinations by depth (q to quit).
    Top {
        /// Refresh interval, seconds.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// The Prometheus exposition (as /metrics serves it).
    Metrics,
}

fn main() {
    let cli = Cli::parse();
    if let Err(f) = run(cli) {
        eprintln!("mailqctl: {}", f.message);
        std::process::exit(f.code);
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let target = match (&cli.socket, &cli.dir) {
        (Some(s), _) => Target::socket(s),
        (None, Some(d)) => Target::dir(d)?,
        (None, None) => {
            return Err(Failure::new(
                exit::BAD_REQUEST,
                "give the queue: --dir QUEUE_DIR (or MAILQ_DIR) or --socket PATH",
            ))
        }
    };
    let api = Api {
        target,
        json: cli.json,
    };
    match cli.cmd {
        Cmd::Stats => api.view("/v1/stats", stats),
        Cmd::Qshape { top } => api.view(&format!("/v1/qshape?top={top}"), qshape),
        Cmd::Destinations { top } => api.view(&format!("/v1/destinations?top={top}"), destinations),
        Cmd::Rules => api.view("/v1/rules", rules),
        Cmd::Sources => api.view("/v1/sources", sources),
        Cmd::List {
            filters,
            limit,
            offset,
        } => {
            let mut q = format!("/v1/recipients?limit={limit}&offset={offset}");
            for (k, v) in filters.pairs() {
                q.push_str(&format!("&{k}={}", mailq::encode_component(&v)));
            }
            api.view(&q, list)
        }
        Cmd::Show { id } => api.view(
            &format!("/v1/messages/{}", mailq::encode_component(&id)),
            show,
        ),
        Cmd::Explain { target } => {
            let path = match target.split_once(':') {
                Some((id, n)) => format!(
                    "{}/{}",
                    mailq::encode_component(id),
                    mailq::encode_component(n)
                ),
                None => mailq::encode_component(&target),
            };
            api.view(&format!("/v1/explain/{path}"), explain)
        }
        Cmd::Hold(s) => api.act("hold", &s, &[]),
        Cmd::Release(s) => api.act("release", &s, &[]),
        Cmd::Delete(s) => api.act("delete", &s, &[]),
        Cmd::Flush(s) => api.act("flush", &s, &[]),
        Cmd::Bounce { reason, sel } => api.act("bounce", &sel, &[("reason", json!(reason))]),
        Cmd::Reroute { to, sel } => api.act("reroute", &sel, &[("to", json!(to))]),
        Cmd::Suspend {
            destination,
            duration,
            sel,
        } => {
            let d: Vec<(&str, Value)> = duration
                .map(|d| ("duration", json!(d)))
                .into_iter()
                .collect();
            api.on_destinations("suspend", destination, sel, &d)
        }
        Cmd::Resume { destination, sel } => api.on_destinations("resume", destination, sel, &[]),
        Cmd::Limit { mut args, sel } => {
            let n = args.pop().unwrap_or_default();
            let n: u16 = match n.parse() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(Failure {
                        code: 2,
                        message: format!(
                        "limit [DESTINATION] N: N is the most sessions at once, 1-65535, not {n:?}"
                    ),
                    })
                }
            };
            api.on_destinations("limit", args.pop(), sel, &[("limit", json!(n))])
        }
        Cmd::Rate {
            destination,
            per_second,
            per_minute,
            per_hour,
            per_day,
            sel,
        } => api.on_destinations(
            "rate",
            destination,
            sel,
            &rate_fields([per_second, per_minute, per_hour, per_day]),
        ),
        Cmd::SourceLimit {
            destination,
            sessions,
            per_second,
            per_minute,
            per_hour,
            per_day,
            sel,
        } => {
            let mut fields = vec![("sessions", json!(sessions))];
            fields.extend(rate_fields([per_second, per_minute, per_hour, per_day]));
            api.on_destinations("source-limit", destination, sel, &fields)
        }
        Cmd::Top { interval } => top::run(&api, interval),
        Cmd::Metrics => {
            let body = api.get_raw("/metrics")?;
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
    }
}

/// The queue's API with the output mode.
pub struct Api {
    target: Target,
    json: bool,
}

impl Api {
    /// Calls and checks the status: errors become failures with exit codes.
    fn call(&self, method: &str, target: &str, body: &str) -> Result<Vec<u8>, Failure> {
        let (status, bytes) = self.target.call(method, target, body)?;
        if status == 200 {
            return Ok(bytes);
        }
        let msg = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).to_string());
        let code = match status {
            404 => exit::NOT_FOUND,
            401 | 403 => exit::DENIED,
            400 | 405 | 411 | 413 => exit::BAD_REQUEST,
            503 => exit::TEMPFAIL,
            _ => exit::INTERNAL,
        };
        Err(Failure::new(code, msg))
    }

    fn get_raw(&self, target: &str) -> Result<Vec<u8>, Failure> {
        self.call("GET", target, "")
    }

    /// GET as JSON.
    pub fn get(&self, target: &str) -> Result<Value, Failure> {
        let b = self.get_raw(target)?;
        serde_json::from_slice(&b)
            .map_err(|e| Failure::new(exit::INTERNAL, format!("the answer is not JSON: {e}")))
    }

    /// GET and print as JSON or with `render`.
    fn view(&self, target: &str, render: fn(&Value) -> String) -> Result<(), Failure> {
        let v = self.get(target)?;
        self.print(&v, render);
        Ok(())
    }

    fn print(&self, v: &Value, render: fn(&Value) -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print!("{}", render(v));
        }
    }

    fn post(&self, action: &str, body: Value) -> Result<(), Failure> {
        let b = self.call("POST", &format!("/v1/{action}"), &body.to_string())?;
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        self.print(&v, |v| {
            let n = v["count"].as_u64().unwrap_or(0);
            let what = v["action"].as_str().unwrap_or("?");
            let dests = match v["destinations"].as_array() {
                Some(d) if d.is_empty() => {
                    return format!("{what}: no destination matched; nothing changed\n")
                }
                Some(d) => {
                    let keys: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
                    format!(
                        " queued in {} destination(s) [{}]",
                        keys.len(),
                        keys.join(", ")
                    )
                }
                None => String::new(),
            };
            if v["dry_run"].as_bool() == Some(true) {
                format!("{what}: would touch {n} recipient(s){dests} (dry run; nothing changed)\n")
            } else {
                format!("{what}: {n} recipient(s){dests}\n")
            }
        });
        Ok(())
    }

    /// Suspend, resume or limit: one destination, or those the filters reach.
    fn on_destinations(
        &self,
        action: &str,
        destination: Option<String>,
        mut sel: Selection,
        extra: &[(&str, Value)],
    ) -> Result<(), Failure> {
        if let Some(d) = destination {
            if sel.filters.route.is_some() {
                return Err(Failure {
                    code: 2,
                    message: "give the destination once: as an argument or as --route".into(),
                });
            }
            sel.filters.route = Some(d);
        }
        self.act(action, &sel, extra)
    }

    fn act(&self, action: &str, s: &Selection, extra: &[(&str, Value)]) -> Result<(), Failure> {
        let mut body = Map::new();
        for (k, v) in s.filters.pairs() {
            body.insert(k.to_string(), json!(v));
        }
        if s.all {
            body.insert("all".into(), json!(true));
        }
        body.insert("dry_run".into(), json!(s.dry_run));
        for (k, v) in extra {
            body.insert(k.to_string(), v.clone());
        }
        self.post(action, Value::Object(body))
    }
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), |n| n.to_string())
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn stats(v: &Value) -> String {
    let mut out = String::new();
    let states = v["states"].as_object().cloned().unwrap_or_default();
    let by_state: Vec<String> = states.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let lines = [
        ("messages", num(&v["messages"])),
        ("recipients", format!("{} ({})", num(&v["recipients"]), by_state.join(", "))),
        ("oldest", age(v["oldest_age"].as_u64().unwrap_or(0))),
        ("destinations", num(&v["destinations"])),
        (
            "since open",
            format!(
                "accepted {} msgs / {} rcpts, delivered {}, deferred {}, failed {}, expired {}, bounced {}",
                num(&v["accepted"]),
                num(&v["accepted_recipients"]),
                num(&v["delivered"]),
                num(&v["deferred"]),
                num(&v["failed"]),
                num(&v["expired"]),
                num(&v["bounced"])
            ),
        ),
        (
            "log",
            format!(
                "{} fsyncs, {} group commits, {} bytes, {} checkpoints, {} segments compacted, {} reused",
                num(&v["fsyncs"]),
                num(&v["commits"]),
                num(&v["bytes_written"]),
                num(&v["checkpoints"]),
                num(&v["segments_deleted"]),
                num(&v["segments_reused"])
            ),
        ),
        ("memory", format!("{} bytes of index", num(&v["index_bytes"]))),
        ("corrupt", num(&v["corrupt"])),
    ];
    for (k, val) in lines {
        out.push_str(&format!("{k:<13} {val}\n"));
    }
    if let Some(p) = v["poisoned"].as_str() {
        out.push_str(&format!("POISONED      {p}\n"));
    }
    if let Some(m) = v["maintenance_error"].as_str() {
        out.push_str(&format!("maintenance   FAILING: {m}\n"));
    }
    out
}

fn qshape(v: &Value) -> String {
    let mut cols: Vec<(&'static str, Align)> = vec![("", Align::Left), ("T", Align::Right)];
    let labels = [
        "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+",
    ];
    cols.extend(labels.iter().map(|l| (*l, Align::Right)));
    let mut t = Table::new(&cols);
    let row = |r: &Value| {
        let mut cells = vec![text(&r["key"]), num(&r["total"])];
        if let Some(a) = r["ages"].as_array() {
            cells.extend(a.iter().map(num));
        }
        cells
    };
    t.row(row(&v["total"]));
    for r in v["rows"].as_array().into_iter().flatten() {
        t.row(row(r));
    }
    t.render(table::width())
}

fn rules(v: &Value) -> String {
    let mut t = Table::new(&[
        ("PATTERN", Align::Left),
        ("ACTION", Align::Left),
        ("FOR", Align::Right),
        ("LIMITS", Align::Left),
    ]);
    let rules = v["rules"].as_array().cloned().unwrap_or_default();
    for r in &rules {
        let secs = r["seconds"].as_u64();
        let mut limits = Vec::new();
        if let Some(w) = r["window"].as_u64().filter(|&w| w > 0) {
            limits.push(format!("window {w}"));
        }
        for (k, unit) in [
            ("per_second", "s"),
            ("per_minute", "min"),
            ("per_hour", "h"),
            ("per_day", "day"),
        ] {
            if let Some(n) = r[k].as_u64().filter(|&n| n > 0) {
                limits.push(format!("{n}/{unit}"));
            }
        }
        t.row(vec![
            text(&r["pattern"]),
            text(&r["action"]),
            secs.map_or(String::new(), age),
            limits.join(", "),
        ]);
    }
    let mut s = t.render(table::width());
    s.push_str(&format!("({} rules, the first match acts)\n", rules.len()));
    s
}

fn sources(v: &Value) -> String {
    let mut t = Table::new(&[
        ("SOURCE", Align::Left),
        ("DAY", Align::Right),
        ("CAP/DAY", Align::Right),
        ("USED", Align::Right),
        ("DAY ENDS IN", Align::Right),
        ("POOLS", Align::Left),
    ]);
    let now = table::now();
    let list = v["sources"].as_array().cloned().unwrap_or_default();
    for s in &list {
        let pools: Vec<String> = s["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        t.row(vec![
            text(&s["name"]),
            s["day"].to_string(),
            s["per_day"].as_u64().map_or("-".into(), |n| n.to_string()),
            s["used"].to_string(),
            s["day_ends"]
                .as_u64()
                .map_or(String::new(), |e| age(e.saturating_sub(now))),
            pools.join(" "),
        ]);
    }
    let mut s = t.render(table::width());
    s.push_str(&format!(
        "({} sources; pool * is the default)\n",
        list.len()
    ));
    s
}

fn destinations(v: &Value) -> String {
    let now = v["now"].as_u64().unwrap_or_else(table::now);
    let mut t = Table::new(&[
        ("DESTINATION", Align::Left),
        ("DEPTH", Align::Right),
        ("READY", Align::Right),
        ("DEFER", Align::Right),
        ("HELD", Align::Right),
        ("INFL", Align::Right),
        ("SESS/WIN", Align::Right),
        ("LIMIT", Align::Right),
        ("STATE", Align::Left),
    ]);
    for d in v["destinations"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&d["key"]),
            num(&d["depth"]),
            num(&d["ready"]),
            num(&d["deferred"]),
            num(&d["held"]),
            num(&d["inflight"]),
            format!("{}/{}", num(&d["sessions"]), num(&d["window"])),
            num(&d["limit"]),
            dest_state(d, now),
        ]);
    }
    let mut s = t.render(table::width());
    s.push_str(&format!("({} destinations)\n", num(&v["total"])));
    s
}

/// `suspended 42m`, `dead 5m (reason)`, `rate 8s`, or `ok`.
pub fn dest_state(d: &Value, now: u64) -> String {
    let until = |k: &str| d[k].as_u64().unwrap_or(0);
    if d["suspended"].as_bool() == Some(true) {
        let state = match until("suspended_until") {
            0 => "suspended".into(),
            t => format!("suspended {}", age(t.saturating_sub(now))),
        };
        return match d["suspended_by"].as_str() {
            Some(rule) => format!("{state} by rule /{rule}/"),
            None => state,
        };
    }
    if until("dead_until") > now {
        let why = text(&d["last_site_failure"]);
        return format!("dead {} {why}", age(until("dead_until") - now));
    }
    if until("rate_next") > now {
        return format!("rate {}", age(until("rate_next") - now));
    }
    if until("throttled_until") > now {
        return format!("throttled {}", age(until("throttled_until") - now));
    }
    "ok".into()
}

fn list(v: &Value) -> String {
    let now = table::now();
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("#", Align::Right),
        ("STATE", Align::Left),
        ("TRIES", Align::Right),
        ("AGE", Align::Right),
        ("ROUTE", Align::Left),
        ("RECIPIENT", Align::Left),
        ("SENDER", Align::Left),
        ("LAST ERROR", Align::Left),
    ]);
    let items = v["items"].as_array().cloned().unwrap_or_default();
    for i in &items {
        let sender = match text(&i["sender"]) {
            s if s.is_empty() => "<>".to_string(),
            s => s,
        };
        t.row(vec![
            text(&i["id"]),
            num(&i["index"]),
            text(&i["state"]),
            num(&i["attempts"]),
            age(now.saturating_sub(i["received"].as_u64().unwrap_or(now))),
            text(&i["route"]),
            text(&i["recipient"]),
            sender,
            text(&i["last_error"]),
        ]);
    }
    let mut s = t.render(table::width());
    let more = if v["more"].as_bool() == Some(true) {
        format!(
            "; more: --offset {}",
            v["offset"].as_u64().unwrap_or(0) + items.len() as u64
        )
    } else {
        String::new()
    };
    s.push_str(&format!("({} recipients{more})\n", items.len()));
    s
}

fn show(v: &Value) -> String {
    let now = table::now();
    let sender = match text(&v["sender"]) {
        s if s.is_empty() => "<>".to_string(),
        s => s,
    };
    let mut s = format!(
        "message   {}\nsender    {sender}\nreceived  {} ago\nsize      {} bytes\n\n",
        text(&v["id"]),
        age(now.saturating_sub(v["received"].as_u64().unwrap_or(now))),
        num(&v["size"])
    );
    let mut t = Table::new(&[
        ("#", Align::Right),
        ("RECIPIENT", Align::Left),
        ("STATE", Align::Left),
        ("TRIES", Align::Right),
        ("NEXT", Align::Right),
        ("ROUTE", Align::Left),
        ("LAST ERROR", Align::Left),
    ]);
    for r in v["recipients"].as_array().into_iter().flatten() {
        let next = match r["next_attempt"].as_u64().unwrap_or(0) {
            0 => "-".into(),
            n => format!("in {}", age(n.saturating_sub(now))),
        };
        t.row(vec![
            num(&r["index"]),
            text(&r["recipient"]),
            text(&r["state"]),
            num(&r["attempts"]),
            next,
            text(&r["route"]),
            text(&r["last_error"]),
        ]);
    }
    s.push_str(&t.render(table::width()));
    s
}

fn explain(v: &Value) -> String {
    let mut s = String::new();
    for r in v["recipients"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{}:{} {} ({}, {} attempts)\n  {}\n",
            text(&r["id"]),
            num(&r["index"]),
            text(&r["recipient"]),
            text(&r["state"]),
            num(&r["attempts"]),
            text(&r["why"])
        ));
    }
    s
}

/// The four message-rate fields of a request, per second/minute/hour/day.
fn rate_fields<T: Into<Value>>(per: [T; 4]) -> Vec<(&'static str, Value)> {
    ["per_second", "per_minute", "per_hour", "per_day"]
        .into_iter()
        .zip(per)
        .map(|(k, v)| (k, v.into()))
        .collect()
}
