//! `mailqctl top`: a live full-screen view of the queue — totals, then
//! destinations by depth with in-flight, sessions/window, delivery and
//! deferral rates, oldest age and state — refreshed every interval, like
//! `htop` for a queue. `q`, Esc or Ctrl-C quits.

use crate::client::Failure;
use crate::table::{age, cut, Align, Table};
use crate::{dest_state, Api};
use crossterm::event::{self, Event, KeyCode, KeyModifiers};
use crossterm::{cursor, execute, queue, style, terminal};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// Minutes bounding the qshape age columns.
const AGES: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Puts the terminal back however `run` ends.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        terminal::enable_raw_mode()?;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// Runs the view until the operator quits.
pub fn run(api: &Api, interval: f64) -> Result<(), Failure> {
    let interval = if interval.is_finite() {
        Duration::from_secs_f64(interval.clamp(0.1, 3600.0))
    } else {
        Duration::from_secs(1)
    };
    let term = |e: std::io::Error| Failure::new(crate::exit::INTERNAL, format!("terminal: {e}"));
    let _screen = Screen::enter().map_err(term)?;
    let mut prev: Option<Prev> = None;
    loop {
        let (w, h) = terminal::size().unwrap_or((100, 30));
        let rows = (h as usize).saturating_sub(6).max(1);
        let frame = match (
            api.get("/v1/stats"),
            api.get(&format!("/v1/destinations?top={rows}")),
        ) {
            (Ok(st), Ok(d)) => {
                let f = render(&st, &d, prev.as_ref(), w as usize, rows);
                let per: HashMap<String, (u64, u64)> = d["destinations"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| (s(&b["key"]), (n(&b["delivered"]), n(&b["deferrals"]))))
                    .collect();
                prev = Some((
                    Instant::now(),
                    n(&st["delivered"]),
                    n(&st["accepted_recipients"]),
                    per,
                ));
                f
            }
            // Not allowed will not get better by retrying: leave and say so.
            (Err(e), _) | (_, Err(e)) if e.code == crate::exit::DENIED => return Err(e),
            (Err(e), _) | (_, Err(e)) => vec![format!("mailqctl top: {} (retrying)", e.message)],
        };
        let mut out = std::io::stdout();
        queue!(
            out,
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )
        .map_err(term)?;
        for (i, line) in frame.iter().enumerate().take(h as usize) {
            queue!(
                out,
                cursor::MoveTo(0, i as u16),
                style::Print(cut(line, w as usize))
            )
            .map_err(term)?;
        }
        out.flush().map_err(term)?;
        let until = Instant::now() + interval;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if !event::poll(left).map_err(term)? {
                break;
            }
            if let Event::Key(k) = event::read().map_err(term)? {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                    return Ok(());
                }
            }
        }
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// Per-second rate of a counter since the previous frame.
fn rate(now: u64, before: Option<u64>, secs: f64) -> String {
    match before {
        Some(b) if secs > 0.0 => format!("{:.1}", now.saturating_sub(b) as f64 / secs),
        _ => "-".into(),
    }
}

/// The oldest non-empty age column as text.
fn oldest(ages: &Value) -> String {
    let a: Vec<u64> = ages.as_array().into_iter().flatten().map(n).collect();
    match a.iter().rposition(|&x| x > 0) {
        None => "-".into(),
        Some(0) => "<5m".into(),
        Some(i) => format!(">{}m", AGES[(i - 1).min(AGES.len() - 1)]),
    }
}

type Prev = (Instant, u64, u64, HashMap<String, (u64, u64)>);

fn render(st: &Value, d: &Value, prev: Option<&Prev>, width: usize, rows: usize) -> Vec<String> {
    let secs = prev.map_or(0.0, |p| p.0.elapsed().as_secs_f64());
    let states = st["states"].as_object().cloned().unwrap_or_default();
    let get = |k: &str| states.get(k).map_or(0, n);
    let mut lines = vec![
        format!(
            "mailq top  messages {}  recipients {}  oldest {}  destinations {}",
            n(&st["messages"]),
            n(&st["recipients"]),
            age(n(&st["oldest_age"])),
            n(&st["destinations"])
        ),
        format!(
            "ready {}  deferred {}  held {}  inflight {}  bounce-pending {}  accepted/s {}  delivered/s {}{}",
            get("ready"),
            get("deferred"),
            get("held"),
            get("inflight"),
            get("failed") + get("expired"),
            rate(n(&st["accepted_recipients"]), prev.map(|p| p.2), secs),
            rate(n(&st["delivered"]), prev.map(|p| p.1), secs),
            match st["poisoned"].as_str() {
                Some(p) => format!("  POISONED: {p}"),
                None => String::new(),
            }
        ),
        String::new(),
    ];
    let now = d["now"].as_u64().unwrap_or_else(crate::table::now);
    let mut t = Table::new(&[
        ("DESTINATION", Align::Left),
        ("DEPTH", Align::Right),
        ("READY", Align::Right),
        ("DEFER", Align::Right),
        ("INFL", Align::Right),
        ("SESS/WIN", Align::Right),
        ("DLV/s", Align::Right),
        ("DEF/s", Align::Right),
        ("OLDEST", Align::Right),
        ("STATE", Align::Left),
    ]);
    for b in d["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .take(rows)
    {
        let key = s(&b["key"]);
        let before = prev.and_then(|p| p.3.get(&key)).copied();
        t.row(vec![
            key.clone(),
            n(&b["depth"]).to_string(),
            n(&b["ready"]).to_string(),
            n(&b["deferred"]).to_string(),
            n(&b["inflight"]).to_string(),
            format!("{}/{}", n(&b["sessions"]), n(&b["window"])),
            rate(n(&b["delivered"]), before.map(|x| x.0), secs),
            rate(n(&b["deferrals"]), before.map(|x| x.1), secs),
            oldest(&b["ages"]),
            dest_state(b, now),
        ]);
    }
    lines.extend(t.render(width).lines().map(str::to_string));
    lines.push(String::new());
    lines.push("q: quit".into());
    lines
}
