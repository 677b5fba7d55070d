//! The admin API's endpoints: one function from a parsed request (and what
//! the caller may do) to a response, on the caller's thread. The same function
//! serves the socket and in-process callers (`mailqctl --dir` on a queue no
//! process owns). Depends on `queue`, `select`, `error` and the rest of `admin`.

use super::http::{Request, Response};
use super::json;
use super::peer::Access;
use crate::error::Error;
use crate::queue::Queue;
use crate::select::{Op, Selector};
use serde_json::{json, Map, Value};

/// Default and largest page of `/v1/recipients`.
const PAGE: usize = 100;
const MAX_PAGE: usize = 100_000;
/// Deepest page start (each page selects everything before it).
const MAX_OFFSET: usize = 1_000_000;

/// The endpoints: (path, methods, read-only). Paths with an id are matched by
/// prefix in [`route`].
const ACTIONS: [&str; 11] = [
    "hold",
    "release",
    "delete",
    "flush",
    "bounce",
    "reroute",
    "suspend",
    "resume",
    "limit",
    "rate",
    "source-limit",
];

/// Serves one request.
pub fn handle(q: &Queue, access: &Access, req: &Request) -> Response {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let get = req.method == "GET" || req.method == "HEAD";
    let post = req.method == "POST";
    let read_only = |f: &dyn Fn() -> Response| {
        if get {
            f()
        } else {
            method_not_allowed("GET")
        }
    };
    if let Access::Denied(why) = access {
        return Response::error(403, why.clone());
    }
    let metrics_ok = matches!(segs.as_slice(), ["metrics"] | ["v1", "stats"]);
    if *access == Access::Metrics && !metrics_ok {
        return Response::error(
            401,
            "this endpoint needs the admin token (Authorization: Bearer …) on TCP; /metrics and /v1/stats are open",
        );
    }
    match segs.as_slice() {
        ["metrics"] => read_only(&|| {
            // Bounded for everyone: the endpoint is open on TCP.
            let top = top(req, crate::stats::METRIC_DESTINATIONS).min(super::MAX_PUBLIC_TOP);
            let st = q.stats();
            let text = st.prometheus_top(top);
            Response::text(200, "text/plain; version=0.0.4", text)
        }),
        ["v1", "stats"] => read_only(&|| Response::json(200, &json::stats(&q.stats()))),
        ["v1", "qshape"] => read_only(&|| {
            let top = top(req, 100);
            Response::json(200, &json::qshape(&q.stats(), top))
        }),
        ["v1", "destinations"] => read_only(&|| destinations(q, req)),
        ["v1", "rules"] => read_only(&|| Response::json(200, &json::rules(&q.reply_rules()))),
        ["v1", "sources"] => read_only(&|| Response::json(200, &json::sources(&q.sources()))),
        ["v1", "recipients"] => read_only(&|| recipients(q, req)),
        ["v1", "messages", id] => read_only(&|| match json::message_id(id) {
            Ok(id) => result(q.inspect(id).map(|m| json::message(&m))),
            Err(e) => Response::error(400, e),
        }),
        ["v1", "explain", id] => read_only(&|| explain(q, id, None)),
        ["v1", "explain", id, n] => read_only(&|| explain(q, id, Some(n))),
        ["v1", action] if ACTIONS.contains(action) => {
            if !post {
                method_not_allowed("POST")
            } else if *access != Access::Full {
                Response::error(
                    403,
                    "read-only access: actions need the queue owner or root",
                )
            } else if !req.query.is_empty() {
                Response::error(
                    400,
                    "actions take their filters and dry_run in the JSON body, not the query string",
                )
            } else {
                act(q, action, &req.body)
            }
        }
        _ => Response::error(
            404,
            format!(
                "no endpoint {}; the endpoints are /metrics, /v1/stats, /v1/qshape, /v1/destinations, /v1/rules, /v1/sources, /v1/recipients, /v1/messages/ID, /v1/explain/ID[/N] and POST /v1/ACTION (docs/design.md, \"Admin API\")",
                req.path
            ),
        ),
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = Response::error(405, format!("method not allowed; use {allow}"));
    r.allow = Some(allow);
    r
}

fn param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn top(req: &Request, default: usize) -> usize {
    param(req, "top")
        .and_then(|t| t.parse().ok())
        .unwrap_or(default)
}

/// A queue result as a response: typed errors map to status codes.
fn result(r: crate::Result<Value>) -> Response {
    match r {
        Ok(v) => Response::json(200, &v),
        Err(e @ (Error::NoSuchMessage(_) | Error::NoSuchRecipient(..))) => {
            Response::error(404, e.to_string())
        }
        Err(
            e @ (Error::InvalidRoutingKey { .. }
            | Error::InvalidOption(_)
            | Error::InvalidAddress { .. }),
        ) => Response::error(400, e.to_string()),
        Err(e @ (Error::Poisoned(_) | Error::DiskFull(_))) => Response::error(503, e.to_string()),
        Err(e) => Response::error(500, e.to_string()),
    }
}

fn destinations(q: &Queue, req: &Request) -> Response {
    let st = q.stats();
    let key = param(req, "key").map(|k| k.to_ascii_lowercase());
    let list: Vec<Value> = st
        .buckets
        .iter()
        .filter(|b| key.as_ref().is_none_or(|k| &b.key == k))
        .take(top(req, 100))
        .map(json::bucket)
        .collect();
    Response::json(
        200,
        &json!({"destinations": list, "total": st.buckets.len(), "now": q.options().clock.now()}),
    )
}

/// `GET /v1/recipients?FILTERS&limit=N&offset=M`.
fn recipients(q: &Queue, req: &Request) -> Response {
    let obj: Map<String, Value> = req
        .query
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let sel = match json::selector(&obj, &["limit", "offset"]) {
        Ok(s) => s,
        Err(e) => return Response::error(400, e),
    };
    let num = |name: &str, default: usize| match param(req, name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| format!("{name} must be a number, not {v:?}")),
    };
    let (limit, offset) = match (num("limit", PAGE), num("offset", 0)) {
        (Ok(_), Ok(o)) if o > MAX_OFFSET => {
            return Response::error(
                400,
                format!("offset {o} is past {MAX_OFFSET}; narrow the filters instead"),
            )
        }
        (Ok(l), Ok(o)) => (l.clamp(1, MAX_PAGE), o),
        (Err(e), _) | (_, Err(e)) => return Response::error(400, e),
    };
    result(q.select(&sel, offset + limit + 1).map(|all| {
        let more = all.len() > offset + limit;
        let mut page: Vec<crate::select::Selected> =
            all.into_iter().skip(offset).take(limit).collect();
        with_envelopes(q, &mut page);
        let items: Vec<Value> = page.iter().map(json::selected).collect();
        json!({"items": items, "offset": offset, "more": more})
    }))
}

/// Fills in sender and address where the selection did not read the
/// envelope (no envelope criterion): one read per message of the page.
fn with_envelopes(q: &Queue, page: &mut [crate::select::Selected]) {
    let mut last: Option<crate::stats::MessageInfo> = None;
    for s in page.iter_mut().filter(|s| s.address.is_empty()) {
        if last.as_ref().is_none_or(|m| m.id != s.id) {
            last = q.inspect(s.id).ok();
        }
        if let Some(m) = &last {
            s.sender.clone_from(&m.sender);
            if let Some(r) = m.recipients.get(s.index as usize) {
                s.address.clone_from(&r.address);
            }
        }
    }
}

/// `GET /v1/explain/ID[/N]`: one recipient, or every recipient of the message.
fn explain(q: &Queue, id: &str, n: Option<&str>) -> Response {
    let id = match json::message_id(id) {
        Ok(id) => id,
        Err(e) => return Response::error(400, e),
    };
    let all = match n {
        Some(n) => match n.parse() {
            Ok(n) => q.explain(id, n).map(|e| vec![e]),
            Err(_) => return Response::error(400, format!("invalid recipient index {n:?}")),
        },
        None => q.explain_all(id),
    };
    result(all.map(|v| json!({"recipients": v.iter().map(json::explanation).collect::<Vec<_>>()})))
}

/// `POST /v1/ACTION` with a JSON object: filters, `dry_run`, `all` (needed
/// when no filter is given), and the action's own argument.
fn act(q: &Queue, action: &str, body: &[u8]) -> Response {
    let obj: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Response::error(400, "the body must be a JSON object"),
            Err(e) => return Response::error(400, format!("invalid JSON body: {e}")),
        }
    };
    // `dry_run` and `all` are booleans or absent: "dry_run": "true" must not
    // run the action for real.
    let mut flags = [false; 2];
    for (f, k) in flags.iter_mut().zip(["dry_run", "all"]) {
        match obj.get(k) {
            None => {}
            Some(Value::Bool(b)) => *f = *b,
            Some(v) => return Response::error(400, format!("{k} must be true or false, not {v}")),
        }
    }
    let [dry_run, all] = flags;
    let arg = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let reply = |count: usize| {
        Response::json(
            200,
            &json!({"action": action, "count": count, "dry_run": dry_run}),
        )
    };
    match action {
        "suspend" | "resume" | "limit" | "rate" | "source-limit" => {
            let extra: &[&str] = match action {
                "suspend" => &["dry_run", "all", "seconds", "duration"],
                "limit" => &["dry_run", "all", "limit"],
                "rate" => &[
                    "dry_run",
                    "all",
                    "per_second",
                    "per_minute",
                    "per_hour",
                    "per_day",
                ],
                "source-limit" => &[
                    "dry_run",
                    "all",
                    "sessions",
                    "per_second",
                    "per_minute",
                    "per_hour",
                    "per_day",
                ],
                _ => &["dry_run", "all"],
            };
            let sel = match json::selector(&obj, extra) {
                Ok(s) => s,
                Err(e) => return Response::error(400, e),
            };
            // The arguments first: a typo costs no search.
            let arg = match DestinationArg::parse(action, &obj) {
                Ok(a) => a,
                Err(r) => return r,
            };
            let keys = match targeted_destinations(q, action, &sel, all) {
                Ok(k) => k,
                Err(r) => return r,
            };
            match destination_action(q, arg, &keys, dry_run) {
                Ok(n) => Response::json(
                    200,
                    &json!({"action": action, "count": n, "destinations": keys, "dry_run": dry_run}),
                ),
                Err(r) => r,
            }
        }
        _ => {
            let sel = match json::selector(&obj, &["dry_run", "all", "reason", "to"]) {
                Ok(s) => s,
                Err(e) => return Response::error(400, e),
            };
            if json::is_empty(&sel) && !all {
                return Response::error(
                    400,
                    format!("{action} without a filter would touch every queued recipient; give a filter, or \"all\": true"),
                );
            }
            let op = match action {
                "hold" => Op::Hold,
                "release" => Op::Release,
                "delete" => Op::Delete,
                "flush" => Op::Flush,
                "bounce" => match arg("reason") {
                    Some(r) if !r.trim().is_empty() => Op::Bounce(r),
                    _ => {
                        return Response::error(
                            400,
                            "bounce needs a \"reason\": the text the sender reads in the DSN",
                        )
                    }
                },
                _ => match arg("to") {
                    Some(to) => Op::Reroute(to),
                    None => {
                        return Response::error(400, "reroute needs \"to\": the new routing key")
                    }
                },
            };
            match q.act(&sel, &op, dry_run) {
                Ok(n) => reply(n),
                Err(e) => result(Err(e)),
            }
        }
    }
}

/// The destinations a suspend, resume or limit applies to: the one named when
/// `route` is the only filter (queued mail or not), else those of every
/// recipient the filters match (all of them only with `all`).
fn targeted_destinations(
    q: &Queue,
    action: &str,
    sel: &Selector,
    all: bool,
) -> Result<Vec<String>, Response> {
    if let Some(route) = sel.route.as_deref().filter(|_| {
        *sel == Selector {
            route: sel.route.clone(),
            ..Selector::default()
        }
    }) {
        return crate::validate::normalize_key(route)
            .map(|k| vec![k])
            .map_err(|e| result(Err(e)));
    }
    if json::is_empty(sel) && !all {
        return Err(Response::error(
            400,
            format!("{action} without a filter would touch every destination; give a destination (\"route\"), a filter, or \"all\": true"),
        ));
    }
    if json::is_empty(sel) {
        // Every destination with queued mail, without listing each recipient.
        return Ok(q
            .stats()
            .buckets
            .into_iter()
            .filter(|b| b.depth() > 0)
            .map(|b| b.key)
            .collect());
    }
    let hits = q.select(sel, usize::MAX).map_err(|e| result(Err(e)))?;
    let keys: std::collections::BTreeSet<String> = hits
        .into_iter()
        .map(|h| h.route)
        .filter(|r| !r.is_empty())
        .collect();
    Ok(keys.into_iter().collect())
}

/// What a suspend, resume or limit does to each destination.
#[derive(Clone, Copy)]
enum DestinationArg {
    /// Suspend, for a while or until resumed.
    Suspend(Option<std::time::Duration>),
    Resume,
    Limit(u16),
    /// Message-rate limits (all zero: none).
    Rate(crate::types::RateLimit),
    /// Per egress source: sessions (0: no limit) and message rates.
    SourceLimit(u16, crate::types::RateLimit),
}

impl DestinationArg {
    /// Checks the action's own arguments (`seconds` or `duration`; `limit`),
    /// so a dry run refuses what the action would.
    fn parse(action: &str, obj: &Map<String, Value>) -> Result<Self, Response> {
        match action {
            "resume" => Ok(DestinationArg::Resume),
            "source-limit" => {
                let rate = match DestinationArg::parse("rate", obj)? {
                    DestinationArg::Rate(r) => r,
                    _ => crate::types::RateLimit::default(),
                };
                match obj.get("sessions").map(Value::as_u64) {
                    None => Ok(DestinationArg::SourceLimit(0, rate)),
                    Some(Some(n)) if n <= u16::MAX as u64 => {
                        Ok(DestinationArg::SourceLimit(n as u16, rate))
                    }
                    Some(_) => Err(Response::error(
                        400,
                        "sessions is a count of sessions per source, 0 (no limit) to 65535",
                    )),
                }
            }
            "rate" => {
                let mut n = [0u32; 4];
                for (v, k) in n
                    .iter_mut()
                    .zip(["per_second", "per_minute", "per_hour", "per_day"])
                {
                    match obj.get(k).map(Value::as_u64) {
                        None => {}
                        Some(Some(x)) if x <= u32::MAX as u64 => *v = x as u32,
                        Some(_) => {
                            return Err(Response::error(
                                400,
                                format!("{k} is a count of messages, 0 (no limit) to 4294967295"),
                            ))
                        }
                    }
                }
                Ok(DestinationArg::Rate(crate::types::RateLimit {
                    per_second: n[0],
                    per_minute: n[1],
                    per_hour: n[2],
                    per_day: n[3],
                }))
            }
            "limit" => match obj.get("limit").map(Value::as_u64) {
                Some(Some(n)) if (1..=u16::MAX as u64).contains(&n) => {
                    Ok(DestinationArg::Limit(n as u16))
                }
                _ => Err(Response::error(
                    400,
                    "limit needs \"limit\": a concurrency limit 1-65535",
                )),
            },
            _ => suspension(obj).map(DestinationArg::Suspend),
        }
    }
}

/// A suspension's length: `seconds` or a `duration` like "2h" (1 s to
/// 68 years), or none (until resumed).
fn suspension(obj: &Map<String, Value>) -> Result<Option<std::time::Duration>, Response> {
    let d = match (obj.get("seconds"), obj.get("duration")) {
        (Some(_), Some(_)) => {
            return Err(Response::error(400, "give seconds or duration, not both"))
        }
        (Some(s), None) => match s.as_u64() {
            Some(n) => std::time::Duration::from_secs(n),
            None => {
                return Err(Response::error(
                    400,
                    "seconds must be a positive whole number",
                ))
            }
        },
        (None, Some(Value::String(d))) => json::duration(d).map_err(|e| Response::error(400, e))?,
        (None, Some(v)) => {
            return Err(Response::error(
                400,
                format!("duration is text like \"2h\", not {v}; or give seconds"),
            ))
        }
        (None, None) => return Ok(None),
    };
    if d.as_secs() == 0 || d.as_secs() > u32::MAX as u64 / 2 {
        return Err(Response::error(
            400,
            format!("a suspension lasts 1 s to 68 years, not {} s", d.as_secs()),
        ));
    }
    Ok(Some(d))
}

/// Applies `arg` to each of `keys` (nothing with `dry_run`); the count is
/// their depth.
fn destination_action(
    q: &Queue,
    arg: DestinationArg,
    keys: &[String],
    dry_run: bool,
) -> Result<usize, Response> {
    let mut depth = 0;
    for key in keys {
        depth += q
            .destination(key)
            .map_err(|e| result(Err(e)))?
            .map_or(0, |b| b.depth() as usize);
        if dry_run {
            continue;
        }
        let r = match arg {
            DestinationArg::Suspend(Some(d)) => q.suspend_for(key, d),
            DestinationArg::Suspend(None) => q.suspend(key),
            DestinationArg::Resume => q.resume(key),
            DestinationArg::Limit(n) => q.set_concurrency_limit(key, n),
            DestinationArg::Rate(r) => q.set_rate_limit(key, r),
            DestinationArg::SourceLimit(n, r) => q.set_source_limits(key, n, r),
        };
        r.map_err(|e| result(Err(e)))?;
    }
    Ok(depth)
}
