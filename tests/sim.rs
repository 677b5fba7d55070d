//! A seeded, deterministic simulation of the whole queue, in the spirit of
//! TigerBeetle's VOPR and FoundationDB's simulation tests.
//!
//! One thread drives the queue over the simulated filesystem with a manual
//! clock: enqueues, deliveries with random outcomes (and, while a delivery is
//! open, nested random steps: that is how in-flight interleavings arise),
//! operator actions, clock jumps both ways, idle periods run like the README's
//! event loop, checkpoints, reopens, crashes at a random I/O operation with
//! every crash mode of the simulated filesystem, bit flips in durable
//! segments, and hooks that run a queue call *inside* a file operation of
//! another call (a checkpoint's rename, a segment unlink, a segment open).
//! After every step the queue is checked against a model and its own
//! invariants ([`Queue::debug_check`]).
//!
//! A failing seed prints itself and replays exactly:
//! `MAILQ_SIM_SEED=<n> cargo test --release --test sim -- --nocapture`.
//! `MAILQ_SIM_SEEDS=<n>` runs n seeds (default 200) from `MAILQ_SIM_FIRST`
//! (default 1), `MAILQ_SIM_STEPS`
//! the steps per seed (default 300), `MAILQ_SIM_KEEP_GOING=1` goes on after a
//! failure and lists every failing seed, `MAILQ_SIM_TRACE=1` prints every step
//! of a single seed, `MAILQ_SIM_DISABLE=op,op` disables step kinds (for
//! triage): enqueue deliver hold release delete flush reroute bucketop
//! select bounces limits tick clock back idle checkpoint sync reopen hook crash
//! bitflip forget.
mod common;

use common::hookfs::{HookFs, On};
use mailq::sim::record::{self, Kind};
use mailq::sim::{CrashMode, SimFs};
use mailq::{
    Concurrency, Error, ManualClock, MessageId, NewMessage, Op, Options, Outcome, Queue, RateLimit,
    RcptState, Recipient, ReplyRule, RuleAction, Selector,
};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The only part that differs for a build of the code before the fixes (which
/// lacks the invariant checker and the millisecond clock).
mod compat {
    use mailq::{Clock, ManualClock, Queue};
    /// Internal invariants.
    pub fn debug_check(q: &Queue) -> Result<(), String> {
        q.debug_check()
    }
    /// Deadline of buffered outcome records (clock ms).
    pub fn pending_sync_ms(q: &Queue) -> Option<u64> {
        q.debug_pending_sync_ms()
    }
    /// Whether the event loop's timer has fired (something is due now).
    pub fn timer_due(q: &Queue, _now_secs: u64) -> bool {
        q.next_timeout().is_some_and(|d| d.is_zero())
    }
    /// Envelope searches in passes of a few messages, so the simulator's
    /// queues take several.
    pub fn small_search_passes(q: &Queue) {
        q.debug_set_search_batch(3)
    }
    /// Moves the clock forward by milliseconds.
    pub fn advance_ms(c: &ManualClock, ms: u64) {
        c.advance_millis(ms)
    }
    /// The clock in milliseconds.
    pub fn now_ms(c: &ManualClock) -> u64 {
        c.now_millis()
    }
}

const DIR: &str = "/q";
const T0: u64 = 1_700_000_000;
const DOMAINS: [&str; 6] = [
    "gmail.com",
    "yahoo.com",
    "a.example",
    "b.example",
    "c.example",
    "d.example",
];
/// Routing keys that are no domain of any address (explicit routes, re-route targets).
const MX: [&str; 2] = ["mx-a.example", "mx-b.example"];
const LIFETIME: u64 = 2 * 3600;
/// Delay warnings after 40 minutes.
const WARN: u64 = 40 * 60;
const LEASE_TTL: u64 = 120;
const SYNC_MS: u64 = 100;
const LIMIT: u16 = 3;
const PER_SESSION: usize = 4;

fn all_keys() -> Vec<&'static str> {
    DOMAINS.iter().chain(MX.iter()).copied().collect()
}

// ---------------------------------------------------------------- hooks

/// A queue call to run inside a file operation, and where.
struct HookAction {
    hfs: HookFs,
    on: On,
    needle: String,
    f: Box<dyn FnOnce()>,
}

thread_local! {
    static HOOK: RefCell<Option<HookAction>> = const { RefCell::new(None) };
    /// Hooks run only inside calls the simulator marked as hookable (whose
    /// effects the model can follow while another call runs inside them).
    static HOOK_OK: Cell<bool> = const { Cell::new(false) };
    static PANIC_AT: RefCell<String> = const { RefCell::new(String::new()) };
    /// Per [`KNOWN`] entry: (violations excused, seeds where it happened, first seed).
    static KNOWN_SEEN: RefCell<Vec<(u64, u64, u64)>> = const { RefCell::new(Vec::new()) };
}

fn trampoline() {
    if !HOOK_OK.with(|c| c.get()) {
        // Not inside a hookable call: wait for the next matching operation.
        HOOK.with(|h| {
            if let Some(a) = &*h.borrow() {
                a.hfs.arm(a.on, &a.needle, trampoline);
            }
        });
        return;
    }
    let a = HOOK.with(|h| h.borrow_mut().take());
    if let Some(a) = a {
        HOOK_OK.with(|c| c.set(false));
        (a.f)();
        HOOK_OK.with(|c| c.set(true));
    }
}

fn arm_hook(hfs: &HookFs, on: On, needle: &str, f: Box<dyn FnOnce()>) {
    HOOK.with(|h| {
        *h.borrow_mut() = Some(HookAction {
            hfs: hfs.clone(),
            on,
            needle: needle.to_string(),
            f,
        })
    });
    hfs.arm(on, needle, trampoline);
}

fn disarm_hook(hfs: &HookFs) -> bool {
    hfs.disarm();
    HOOK.with(|h| h.borrow_mut().take()).is_some()
}

/// Runs a queue call during which an armed hook may fire.
fn hookable<R>(f: impl FnOnce() -> R) -> R {
    HOOK_OK.with(|c| c.set(true));
    let r = f();
    HOOK_OK.with(|c| c.set(false));
    r
}

// ---------------------------------------------------------------- model

/// What a recipient's persisted records say (route ignored for final ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cls {
    Queued,
    Held,
    Bounce,
    Final,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum St {
    /// Ready or deferred.
    Queued,
    Held,
    /// In flight in session `s`, delivery `d` (0: being leased right now).
    InFlight {
        s: u64,
        d: u64,
    },
    /// Failed or expired, DSN pending.
    Bounce {
        expired: bool,
        taken: bool,
    },
    Final,
    Corrupt,
}

impl St {
    fn cls(&self) -> Cls {
        match self {
            St::Queued | St::InFlight { .. } | St::Corrupt => Cls::Queued,
            St::Held => Cls::Held,
            St::Bounce { .. } => Cls::Bounce,
            St::Final => Cls::Final,
        }
    }
}

#[derive(Debug, Clone)]
struct Rm {
    addr: String,
    route: String,
    st: St,
    hold_i: bool,
    route_i: Option<String>,
    reason: Option<String>,
    /// What a crash now must give back at least …
    durable: (Cls, String),
    /// … or what one of these records, appended since the last sync, says.
    pending: Vec<(u64, Cls, String)>,
    /// An operator decision taken while in flight may have been caught by a
    /// checkpoint (see [`KNOWN`]).
    ckpt_risk: bool,
    /// Its delay warning was acknowledged (durably): never handed out again.
    warned: bool,
}

impl Rm {
    fn persisted_route(&self) -> String {
        self.route_i.clone().unwrap_or_else(|| self.route.clone())
    }
    fn rec(&mut self, seq: &mut u64, cls: Cls) {
        let route = self.persisted_route();
        self.pending.push((*seq, cls, route));
        *seq += 1;
    }
    /// The attempt ends without an outcome: back to its queue (or where the
    /// operator decided meanwhile). Writes nothing.
    fn ret(&mut self) {
        self.st = if self.hold_i { St::Held } else { St::Queued };
        if let Some(to) = self.route_i.take() {
            self.route = to;
        }
        self.hold_i = false;
    }
    /// The attempt ends with outcome class `cls`.
    fn end(&mut self, seq: &mut u64, mut cls: Cls, expired: bool, reason: Option<String>) {
        if self.hold_i && cls == Cls::Queued {
            cls = Cls::Held;
        }
        match self.route_i.take() {
            Some(to) if cls != Cls::Final => self.route = to,
            _ => {}
        }
        self.hold_i = false;
        self.st = match cls {
            Cls::Queued => St::Queued,
            Cls::Held => St::Held,
            Cls::Bounce => St::Bounce {
                expired,
                taken: false,
            },
            Cls::Final => St::Final,
        };
        if cls == Cls::Final {
            self.reason = None;
        } else if reason.is_some() {
            self.reason = reason;
        }
        self.rec(seq, cls);
    }
    fn allowed(&self) -> Vec<(Cls, String)> {
        let mut v = vec![self.durable.clone()];
        v.extend(self.pending.iter().map(|p| (p.1, p.2.clone())));
        v
    }
}

#[derive(Debug, Clone)]
struct Mm {
    sender: String,
    body: Vec<u8>,
    received: u64,
    rcpts: Vec<Rm>,
}

impl Mm {
    fn live(&self) -> bool {
        self.rcpts.iter().any(|r| r.st != St::Final)
    }
}

#[derive(Debug, Clone)]
struct Sm {
    key: String,
    deadline: u64,
    max_now: u64,
    reclaimed: bool,
    closed: bool,
    deliveries: usize,
}

impl Sm {
    fn maybe_expired(&self) -> bool {
        !self.reclaimed && self.max_now >= self.deadline
    }
}

/// A failed enqueue: it may still appear after a crash.
#[derive(Debug, Clone)]
struct Cand {
    sender: String,
    body: Vec<u8>,
    addrs: Vec<String>,
    routes: Vec<String>,
    received: u64,
}

#[derive(Default)]
struct Model {
    msgs: BTreeMap<MessageId, Mm>,
    archive: BTreeMap<MessageId, Mm>,
    sessions: BTreeMap<u64, Sm>,
    next_sid: u64,
    next_did: u64,
    seq: u64,
    limits: BTreeMap<String, u16>,
    cands: Vec<Cand>,
    /// Messages whose records a bit flip damaged.
    damaged: BTreeSet<MessageId>,
    damaged_ever: BTreeSet<MessageId>,
    next_sender: u64,
}

impl Model {
    fn mark_durable(&mut self, upto: u64) {
        for m in self.msgs.values_mut() {
            for r in &mut m.rcpts {
                let n = r.pending.iter().take_while(|p| p.0 < upto).count();
                if n > 0 {
                    let last = r.pending[n - 1].clone();
                    r.durable = (last.1, last.2);
                    r.pending.drain(..n);
                }
            }
        }
        // Messages wholly and durably final are gone for good.
        let gone: Vec<MessageId> = self
            .msgs
            .iter()
            .filter(|(_, m)| {
                m.rcpts
                    .iter()
                    .all(|r| r.st == St::Final && r.durable.0 == Cls::Final && r.pending.is_empty())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let m = self.msgs.remove(&id).unwrap();
            self.archive.insert(id, m);
        }
    }

    fn return_session(&mut self, sid: u64) {
        for m in self.msgs.values_mut() {
            for r in &mut m.rcpts {
                if matches!(r.st, St::InFlight { s, .. } if s == sid) {
                    r.ret();
                }
            }
        }
    }

    fn inflight_of(&self, sid: u64) -> Vec<(MessageId, usize)> {
        let mut v = Vec::new();
        for (id, m) in &self.msgs {
            for (i, r) in m.rcpts.iter().enumerate() {
                if matches!(r.st, St::InFlight { s, .. } if s == sid) {
                    v.push((*id, i));
                }
            }
        }
        v
    }

    fn live_ids(&self) -> Vec<MessageId> {
        self.msgs
            .iter()
            .filter(|(id, m)| m.live() && !self.damaged.contains(id))
            .map(|(id, _)| *id)
            .collect()
    }

    fn alive_sessions_on(&self, key: &str) -> usize {
        self.sessions
            .values()
            .filter(|s| s.key == key && !s.closed && !s.reclaimed && !s.maybe_expired())
            .count()
    }

    fn open_sessions_on(&self, key: &str) -> usize {
        self.sessions
            .values()
            .filter(|s| s.key == key && !s.closed && !s.reclaimed)
            .count()
    }
}

// ---------------------------------------------------------------- context

#[derive(Default, Clone, Copy, Debug)]
struct Totals {
    seeds: u64,
    steps: u64,
    crashes: u64,
    reopens: u64,
    bitflips: u64,
    hooks_armed: u64,
    hooks_fired: u64,
    deliveries: u64,
    reclaims: u64,
    forgets: u64,
    nested: u64,
    checks: u64,
    /// Recipients expired by a sweep (not by a failed attempt).
    swept: u64,
    /// Delay warnings acknowledged.
    warned: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.seeds += o.seeds;
        self.steps += o.steps;
        self.crashes += o.crashes;
        self.reopens += o.reopens;
        self.bitflips += o.bitflips;
        self.hooks_armed += o.hooks_armed;
        self.hooks_fired += o.hooks_fired;
        self.deliveries += o.deliveries;
        self.reclaims += o.reclaims;
        self.forgets += o.forgets;
        self.nested += o.nested;
        self.checks += o.checks;
        self.swept += o.swept;
        self.warned += o.warned;
    }
}

struct Ctx {
    rng: Cell<u64>,
    sim: SimFs,
    hfs: HookFs,
    clock: Arc<ManualClock>,
    auto_maint: bool,
    /// Backpressure limit on queued recipients (0: none; some seeds).
    rcpt_limit: u64,
    /// Reply rules (every second seed): TSS04 suspends the destination (or,
    /// with sources, the session's path only), "Server busy" throttles.
    rules: bool,
    /// Egress sources (every fourth seed): two in the default pool, one
    /// warming up (a few messages a day), per-source limits as a step.
    sources: bool,
    q: RefCell<Option<Queue>>,
    m: RefCell<Model>,
    trace: RefCell<VecDeque<String>>,
    verbose: bool,
    step: Cell<usize>,
    totals: Cell<Totals>,
    /// A crash is armed: calls may fail; their effects are "maybe".
    crashing: Cell<bool>,
    /// A delivery was leaked with `mem::forget`: the queue can only be reopened
    /// through a restart (the leaked handle keeps the directory locked).
    leaked: Cell<bool>,
    forget_budget: Cell<u32>,
    /// Sessions whose `next_delivery` is running (innermost last).
    in_nd: RefCell<Vec<u64>>,
    /// A `take_bounces` is running.
    in_tb: Cell<u32>,
    /// Clock (ms) at the last tick/idle step, cleared by reopen.
    ticked_at: Cell<Option<u64>>,
    /// The latest the clock has been (a sweep may have expired what was past
    /// its lifetime then).
    max_now: Cell<u64>,
    /// Damage findings expected at most (set at open), and whether damage may exist.
    corrupt_base: Cell<u64>,
    damage_ever: Cell<bool>,
    disabled: BTreeSet<String>,
    strict: bool,
    /// Operator results are not compared with the model (`MAILQ_SIM_NO_COUNTS=1`,
    /// for triage: the state checks then show what became of the decision).
    no_counts: bool,
    /// Violations excused by [`KNOWN`], per entry.
    known: RefCell<Vec<u64>>,
}

macro_rules! fail {
    ($($t:tt)*) => { panic!("VIOLATION: {}", format!($($t)*)) };
}

impl Ctx {
    fn rnd(&self, n: u64) -> u64 {
        // splitmix64
        let mut z = self.rng.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.rng.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if n == 0 {
            0
        } else {
            z % n
        }
    }
    fn chance(&self, pct: u64) -> bool {
        self.rnd(100) < pct
    }
    fn pick<'a, T>(&self, v: &'a [T]) -> &'a T {
        &v[self.rnd(v.len() as u64) as usize]
    }
    fn on(&self, op: &str) -> bool {
        !self.disabled.contains(op)
    }
    fn q(&self) -> Queue {
        self.q.borrow().clone().expect("queue open")
    }
    fn now_ms(&self) -> u64 {
        compat::now_ms(&self.clock)
    }
    fn now_s(&self) -> u64 {
        self.now_ms() / 1000
    }
    fn tot(&self, f: impl FnOnce(&mut Totals)) {
        let mut t = self.totals.get();
        f(&mut t);
        self.totals.set(t);
    }
    fn log(&self, depth: u32, s: String) {
        let line = format!(
            "[{:>3}] t={}.{:03} {}{}",
            self.step.get(),
            self.now_s().saturating_sub(T0),
            self.now_ms() % 1000,
            "  ".repeat(depth as usize),
            s
        );
        if self.verbose {
            println!("{line}");
        }
        let mut t = self.trace.borrow_mut();
        if t.len() >= 80 {
            t.pop_front();
        }
        t.push_back(line);
    }
    fn opts(&self) -> Options {
        Options {
            vfs: self.hfs.vfs(),
            clock: self.clock.clone(),
            segment_size: 4096,
            checkpoint_bytes: 8 * 1024,
            auto_maintenance: self.auto_maint,
            outcome_sync_interval: Duration::from_millis(SYNC_MS),
            min_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(600),
            lifetime: Duration::from_secs(LIFETIME),
            delay_warning: Duration::from_secs(WARN),
            lease_ttl: Duration::from_secs(LEASE_TTL),
            concurrency: Concurrency {
                initial: 2,
                limit: LIMIT,
                dead_after: 3,
            },
            batch_recipients: 2,
            deliveries_per_session: PER_SESSION,
            max_queued_recipients: self.rcpt_limit,
            reply_rules: if self.rules {
                vec![
                    ReplyRule {
                        pattern: r"\[TSS04\]".into(),
                        action: if self.sources {
                            RuleAction::SuspendSource(Duration::from_secs(90))
                        } else {
                            RuleAction::Suspend(Duration::from_secs(90))
                        },
                    },
                    ReplyRule {
                        pattern: r"^451 4\.7\.500 Server busy".into(),
                        action: RuleAction::Throttle {
                            window: 1,
                            rate: RateLimit {
                                per_minute: 3,
                                ..RateLimit::default()
                            },
                            duration: Duration::from_secs(300),
                        },
                    },
                ]
            } else {
                Vec::new()
            },
            ..Options::default()
        }
    }
    /// An error is expected only while a crash is armed.
    /// The model's records up to `mark` are durable — unless the simulated
    /// crash has happened: after it nothing becomes durable, whatever a call
    /// that did no I/O of its own returned (an operator action that failed at
    /// the crash left the model believing in an in-flight intent the queue
    /// never took; a later call's success must not make its consequences
    /// durable).
    fn mark_durable(&self, mark: u64) {
        if !self.sim.crashed() {
            self.m.borrow_mut().mark_durable(mark);
        }
    }
    fn expect_err(&self, e: &Error, what: &str) {
        if !self.crashing.get() {
            fail!("{what} failed: {e}");
        }
    }
    fn clock_moved(&self) {
        let now = self.now_s();
        self.max_now.set(self.max_now.get().max(now));
        let mut m = self.m.borrow_mut();
        for s in m.sessions.values_mut() {
            s.max_now = s.max_now.max(now);
        }
        self.ticked_at.set(None);
    }
    fn inspect(&self, id: MessageId) -> mailq::Result<mailq::MessageInfo> {
        self.q().inspect(id)
    }
}

// ---------------------------------------------------------------- reconciling

/// A recipient past its lifetime that waits (queued or held) may have been
/// expired by a sweep (`tick`): adopt what the queue did. Its reason is the
/// last reply, or the sweep's text when it never had one.
fn reconcile_expiry(ctx: &Ctx) {
    let past: Vec<(MessageId, usize)> = {
        let m = ctx.m.borrow();
        m.msgs
            .iter()
            .filter(|(id, mm)| {
                !m.damaged.contains(id) && mm.received + LIFETIME <= ctx.max_now.get()
            })
            .flat_map(|(id, mm)| {
                mm.rcpts
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| matches!(r.st, St::Queued | St::Held))
                    .map(move |(i, _)| (*id, i))
            })
            .collect()
    };
    for (id, i) in past {
        let ri = match ctx.inspect(id) {
            Ok(info) => info.recipients[i].clone(),
            Err(e) if ctx.crashing.get() => {
                let _ = e;
                return;
            }
            Err(e) => fail!("message {id} past its lifetime cannot be inspected: {e}"),
        };
        if ri.state != RcptState::Expired {
            continue;
        }
        let mut m = ctx.m.borrow_mut();
        let mut seq = m.seq;
        let rm = &mut m.msgs.get_mut(&id).unwrap().rcpts[i];
        if rm.reason.is_none() {
            if !ri
                .last_error
                .starts_with("queue lifetime reached without a reply")
            {
                fail!(
                    "{id}#{i} expired by a sweep with reason {:?}",
                    ri.last_error
                );
            }
            rm.reason = Some(ri.last_error.clone());
        }
        rm.st = St::Bounce {
            expired: true,
            taken: false,
        };
        rm.rec(&mut seq, Cls::Bounce);
        m.seq = seq;
        drop(m);
        ctx.tot(|t| t.swept += 1);
        ctx.log(0, format!("({id}#{i} expired by a sweep)"));
    }
}

/// Sessions whose lease may have expired: find out (from the recipients they
/// held) whether the scheduler reclaimed them, and return those recipients.
fn reconcile(ctx: &Ctx) {
    reconcile_expiry(ctx);
    let todo: Vec<(u64, Vec<(MessageId, usize)>)> = {
        let m = ctx.m.borrow();
        m.sessions
            .iter()
            .filter(|(_, s)| s.maybe_expired() && !s.closed)
            .map(|(&sid, _)| (sid, m.inflight_of(sid)))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    };
    for (sid, rs) in todo {
        let (id, idx) = rs[0];
        let state = match ctx.inspect(id) {
            Ok(info) => info.recipients[idx].state,
            Err(e) => {
                if ctx.crashing.get() {
                    continue;
                }
                fail!("in-flight message {id} cannot be inspected: {e}")
            }
        };
        if state != RcptState::Leased {
            let mut m = ctx.m.borrow_mut();
            m.return_session(sid);
            let s = m.sessions.get_mut(&sid).unwrap();
            s.reclaimed = true;
            drop(m);
            ctx.tot(|t| t.reclaims += 1);
            ctx.log(0, format!("(lease of session {sid} was reclaimed)"));
        }
    }
}

// ---------------------------------------------------------------- checks

/// Defects of the code under test that are known and reported but not fixed
/// yet: tolerated (and counted) unless `MAILQ_SIM_STRICT=1`. Each entry is a
/// tag and a substring of the violation it excuses. Remove an entry once the
/// defect is fixed.
/// Defects the simulator found and that are not fixed yet, tolerated unless
/// MAILQ_SIM_STRICT=1: (name, text of the violation). Empty: the three it found
/// in the new code (a lost wake-up after promote, a checkpoint dropping an
/// in-flight decision, a stranded dead destination) are fixed, and their
/// minimal reproductions below are ordinary regression tests.
const KNOWN: &[(&str, &str)] = &[];

fn known(ctx: &Ctx, msg: &str) -> bool {
    if ctx.strict {
        return false;
    }
    match KNOWN.iter().position(|k| msg.contains(k.1)) {
        Some(i) => {
            let mut k = ctx.known.borrow_mut();
            k[i] += 1;
            true
        }
        None => false,
    }
}

fn check_invariants(ctx: &Ctx, what: &str) {
    if ctx.crashing.get() {
        return;
    }
    if let Err(e) = compat::debug_check(&ctx.q()) {
        if !known(ctx, &e) {
            fail!("invariant after {what}: {e}");
        }
    }
}

fn state_ok(rm: &Rm, s: RcptState) -> bool {
    match (&rm.st, s) {
        (St::Queued, RcptState::Ready | RcptState::Deferred) => true,
        (St::Held, RcptState::Held) => true,
        (St::InFlight { .. }, RcptState::Leased) => true,
        (St::Bounce { expired: false, .. }, RcptState::Failed) => true,
        (St::Bounce { expired: true, .. }, RcptState::Expired) => true,
        (St::Final, s) => s.is_final(),
        (St::Corrupt, RcptState::Corrupt) => true,
        _ => false,
    }
}

/// The whole model against the queue (public API only).
fn check_model(ctx: &Ctx) {
    if ctx.crashing.get() {
        return;
    }
    ctx.tot(|t| t.checks += 1);
    reconcile(ctx);
    let q = ctx.q();
    let now = ctx.now_s();
    let mut live_q = BTreeSet::new();
    q.walk(|s| {
        live_q.insert(s.id);
        true
    });
    let after_tick = ctx.ticked_at.get() == Some(ctx.now_ms());
    let m = ctx.m.borrow();
    let mut min_deferred: Option<u64> = None;
    let mut past_lifetime = false;
    for (id, mm) in &m.msgs {
        if m.damaged.contains(id) {
            continue;
        }
        let live = mm.live();
        if live != live_q.contains(id) {
            fail!(
                "message {id}: live in the model {live}, in the queue {}",
                live_q.contains(id)
            );
        }
        if !live {
            continue;
        }
        let info = match q.inspect(*id) {
            Ok(i) => i,
            Err(e) => fail!("message {id} cannot be inspected: {e}"),
        };
        if info.sender != mm.sender
            || info.size != mm.body.len() as u64
            || info.recipients.len() != mm.rcpts.len()
        {
            fail!(
                "message {id}: envelope differs: {:?} {} {} vs model {:?} {} {}",
                info.sender,
                info.size,
                info.recipients.len(),
                mm.sender,
                mm.body.len(),
                mm.rcpts.len()
            );
        }
        for (i, (rm, ri)) in mm.rcpts.iter().zip(&info.recipients).enumerate() {
            if matches!(rm.st, St::Queued | St::Held) && mm.received + LIFETIME <= now {
                past_lifetime = true;
            }
            if ri.address != rm.addr {
                fail!("{id}#{i}: address {:?} vs {:?}", ri.address, rm.addr);
            }
            if !state_ok(rm, ri.state) {
                fail!(
                    "{id}#{i}: model {:?} (hold intent {}, route intent {:?}) but queue {:?} (next {}, route {})",
                    rm.st,
                    rm.hold_i,
                    rm.route_i,
                    ri.state,
                    ri.next_attempt.saturating_sub(T0),
                    ri.route
                );
            }
            if rm.st == St::Final {
                continue;
            }
            if ri.route != rm.route {
                fail!(
                    "{id}#{i} ({:?}): route {:?} but the model says {:?} (route intent {:?})",
                    ri.state,
                    ri.route,
                    rm.route,
                    rm.route_i
                );
            }
            let want = rm.reason.clone().unwrap_or_default();
            if ri.last_error != want {
                fail!(
                    "{id}#{i}: last error {:?} but the model says {:?}",
                    ri.last_error,
                    want
                );
            }
            if ri.state == RcptState::Deferred {
                if ri.next_attempt == 0 {
                    fail!("{id}#{i}: deferred without a next attempt");
                }
                if after_tick && ri.next_attempt <= now {
                    fail!(
                        "{id}#{i}: deferred until {} but the clock is at {} after a tick: never offered (stranded)",
                        ri.next_attempt.saturating_sub(T0),
                        now.saturating_sub(T0)
                    );
                }
                min_deferred =
                    Some(min_deferred.map_or(ri.next_attempt, |x| x.min(ri.next_attempt)));
            }
        }
    }
    for id in &live_q {
        let known = m.msgs.get(id).is_some_and(|mm| mm.live()) || m.damaged.contains(id);
        if !known {
            fail!("message {id} is live in the queue but not in the model");
        }
    }
    drop(m);
    // Past its lifetime and still waiting: the next sweep is at most a minute away.
    if past_lifetime {
        match q.next_wakeup() {
            Some(w) if w <= now + 60 => {}
            w => fail!(
                "a recipient waits past its lifetime but next_wakeup is {:?} (now {})",
                w.map(|w| w.saturating_sub(T0)),
                now.saturating_sub(T0)
            ),
        }
    }
    if let Some(t) = min_deferred {
        // A time in the past means "now".
        match q.next_wakeup() {
            Some(w) if w <= t.max(now) => {}
            w => fail!(
                "a recipient is deferred until {} but next_wakeup is {:?}",
                t.saturating_sub(T0),
                w.map(|w| w.saturating_sub(T0))
            ),
        }
    }
    let st = q.stats();
    if st.corrupt > ctx.corrupt_base.get() {
        fail!(
            "damage reported without cause: {} findings (expected {}), ids {:?}, recovery {:?}",
            st.corrupt,
            ctx.corrupt_base.get(),
            st.corrupt_ids,
            q.recovery_report()
        );
    }
}

// ---------------------------------------------------------------- steps

fn reason_temp(ctx: &Ctx) -> String {
    let x = ctx.rnd(u64::MAX);
    match ctx.rnd(3) {
        0 => format!(
            "451-4.7.28 [192.0.2.{}] Our system has detected an unusual rate of unsolicited mail originating from your IP address. {:013x}-{:010x}fasm{}a12 - gsmtp",
            x % 250,
            x >> 12,
            x & 0xff_ffff_ffff,
            x % 100_000
        ),
        1 => format!(
            "451 4.7.500 Server busy. Please try again later from [198.51.100.{}]. (S77714) [AM0PR02MB{} 2024-01-01T00:00:00.000Z 08DC{:012X}]",
            x % 250,
            x % 10_000,
            x & 0xffff_ffff_ffff
        ),
        _ => "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred".to_string(),
    }
}

fn reason_perm(ctx: &Ctx) -> String {
    format!(
        "550-5.1.1 The email account that you tried to reach does not exist. {:x} - gsmtp",
        ctx.rnd(u64::MAX)
    )
}

fn enqueue(ctx: &Ctx, depth: u32) {
    let n = 1 + ctx.rnd(4) as usize;
    let sender = {
        let mut m = ctx.m.borrow_mut();
        m.next_sender += 1;
        format!("s{}@sender.example", m.next_sender)
    };
    let mut addrs = Vec::new();
    let mut routes = Vec::new();
    let mut rcpts = Vec::new();
    for i in 0..n {
        let dom = *ctx.pick(&DOMAINS);
        let shown = if ctx.chance(10) {
            dom.to_uppercase()
        } else {
            dom.to_string()
        };
        let addr = format!("u{i}x{}@{shown}", ctx.rnd(1000));
        if ctx.chance(10) {
            let mx = *ctx.pick(&MX);
            rcpts.push(Recipient::with_route(addr.clone(), mx));
            routes.push(mx.to_string());
        } else {
            rcpts.push(Recipient::new(addr.clone()));
            routes.push(dom.to_string());
        }
        addrs.push(addr);
    }
    // Some bodies fill most of a 4 KiB segment, so that sealed segments are
    // not all sparse (compaction copies those away at once).
    let len = match ctx.rnd(10) {
        0..=4 => 10 + ctx.rnd(190),
        5..=7 => 200 + ctx.rnd(1000),
        _ => 1500 + ctx.rnd(2000),
    } as usize;
    let body: Vec<u8> = (0..len).map(|_| ctx.rnd(256) as u8).collect();
    let q = ctx.q();
    let mark = ctx.m.borrow().seq;
    let r = q.enqueue(&NewMessage {
        sender: &sender,
        recipients: rcpts,
        meta: b"",
        body: &body,
    });
    let now = ctx.now_s();
    match r {
        Ok(id) => {
            ctx.log(
                depth,
                format!("enqueue {id} {sender} -> {addrs:?} ({len} bytes)"),
            );
            let mut m = ctx.m.borrow_mut();
            // An id whose only record a bit flip destroyed may be given again.
            if (m.msgs.contains_key(&id) || m.archive.contains_key(&id))
                && !m.damaged_ever.contains(&id)
            {
                fail!("enqueue returned id {id}, which was used before");
            }
            if !ctx.sim.crashed() {
                m.mark_durable(mark);
            }
            m.archive.remove(&id);
            let rs = addrs
                .into_iter()
                .zip(routes)
                .map(|(addr, route)| Rm {
                    addr,
                    route: route.clone(),
                    st: St::Queued,
                    hold_i: false,
                    route_i: None,
                    reason: None,
                    durable: (Cls::Queued, route),
                    pending: Vec::new(),
                    ckpt_risk: false,
                    warned: false,
                })
                .collect();
            m.msgs.insert(
                id,
                Mm {
                    sender,
                    body,
                    received: now,
                    rcpts: rs,
                },
            );
        }
        // Backpressure: refused before anything is written, so not even a
        // candidate that recovery might bring back.
        Err(e @ Error::TryLater { .. }) if ctx.rcpt_limit > 0 => {
            ctx.log(depth, format!("enqueue {sender} refused: {e}"));
        }
        Err(e) => {
            ctx.log(depth, format!("enqueue {sender} failed: {e}"));
            ctx.expect_err(&e, "enqueue");
            ctx.m.borrow_mut().cands.push(Cand {
                sender,
                body,
                addrs,
                routes,
                received: now,
            });
        }
    }
}

/// The model's view of a delivery just handed out.
fn leased(ctx: &Ctx, depth: u32, sid: u64, d: &mailq::Delivery<'_>) -> u64 {
    let id = d.id();
    let key = d.routing_key().to_string();
    let idx: Vec<usize> = d.indices().iter().map(|&i| i as usize).collect();
    let crashing = ctx.crashing.get();
    let mut m = ctx.m.borrow_mut();
    m.next_did += 1;
    let did = m.next_did;
    // Recipients this session leased while a hook ran, but not handed out in the
    // end (the message moved meanwhile): they went back.
    for (mid, mm) in m.msgs.iter_mut() {
        for (i, r) in mm.rcpts.iter_mut().enumerate() {
            if r.st == (St::InFlight { s: sid, d: 0 }) && !(*mid == id && idx.contains(&i)) {
                r.ret();
            }
        }
    }
    let damaged = m.damaged.contains(&id);
    let Some(mm) = m.msgs.get(&id) else {
        if damaged {
            return did;
        }
        fail!("delivery of message {id}, unknown to the model");
    };
    if d.body()[..] != mm.body[..] {
        fail!(
            "delivery of {id}: body differs ({} bytes vs {})",
            d.body().len(),
            mm.body.len()
        );
    }
    if d.sender() != mm.sender {
        fail!(
            "delivery of {id}: sender {:?} vs {:?}",
            d.sender(),
            mm.sender
        );
    }
    let mut reclaimed = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        let Some(rm) = mm.rcpts.get(i) else {
            fail!("delivery of {id}: recipient index {i} out of range");
        };
        if d.recipients()[k] != rm.addr {
            fail!(
                "delivery of {id}#{i}: address {:?} vs {:?}",
                d.recipients()[k],
                rm.addr
            );
        }
        if crashing || damaged {
            continue;
        }
        if rm.route != key {
            fail!(
                "delivery of {id}#{i} through {key:?}, but its route is {:?}",
                rm.route
            );
        }
        match rm.st {
            St::Queued => {}
            St::InFlight { s, d: 0 } if s == sid => {}
            St::InFlight { s, .. } if m.sessions.get(&s).is_some_and(|x| x.maybe_expired()) => {
                reclaimed.push(s)
            }
            ref st => fail!("delivery of {id}#{i}, which the model has as {st:?}"),
        }
    }
    for s in reclaimed {
        m.return_session(s);
        m.sessions.get_mut(&s).unwrap().reclaimed = true;
    }
    let mm = m.msgs.get_mut(&id).unwrap();
    for &i in &idx {
        mm.rcpts[i].st = St::InFlight { s: sid, d: did };
    }
    let now = ctx.now_s();
    let s = m.sessions.get_mut(&sid).unwrap();
    s.deadline = now + LEASE_TTL;
    s.max_now = now;
    s.deliveries += 1;
    drop(m);
    ctx.log(depth, format!("  delivery {did}: {id} {idx:?} via {key}"));
    ctx.tot(|t| t.deliveries += 1);
    did
}

/// Model outcome of one recipient.
#[derive(Clone)]
enum Out {
    Delivered,
    Temp(String),
    Perm(String),
}

fn outcome_for(o: &Out) -> Outcome {
    match o {
        Out::Delivered => Outcome::Delivered,
        Out::Temp(r) => Outcome::temp(r.clone()),
        Out::Perm(r) => Outcome::perm(r.clone()),
    }
}

/// Applies outcomes (in order of `idx`) to the recipients of delivery `did`.
fn apply_outcomes(ctx: &Ctx, id: MessageId, did: u64, idx: &[usize], outs: &[Out]) {
    let now = ctx.now_s();
    let mut m = ctx.m.borrow_mut();
    let mut seq = m.seq;
    if let Some(mm) = m.msgs.get_mut(&id) {
        let expired = now.saturating_sub(mm.received) >= LIFETIME;
        for (&i, o) in idx.iter().zip(outs) {
            let rm = &mut mm.rcpts[i];
            if !matches!(rm.st, St::InFlight { d, .. } if d == did) {
                continue; // deleted or returned meanwhile
            }
            match o {
                Out::Delivered => rm.end(&mut seq, Cls::Final, false, None),
                Out::Perm(r) => rm.end(&mut seq, Cls::Bounce, false, Some(r.clone())),
                Out::Temp(r) if expired => rm.end(&mut seq, Cls::Bounce, true, Some(r.clone())),
                Out::Temp(r) => rm.end(&mut seq, Cls::Queued, false, Some(r.clone())),
            }
        }
    }
    m.seq = seq;
}

fn return_delivery(ctx: &Ctx, did: u64) {
    let mut m = ctx.m.borrow_mut();
    for mm in m.msgs.values_mut() {
        for r in &mut mm.rcpts {
            if matches!(r.st, St::InFlight { d, .. } if d == did) {
                r.ret();
            }
        }
    }
}

fn renew(ctx: &Ctx, sid: u64) {
    let now = ctx.now_s();
    let mut m = ctx.m.borrow_mut();
    let s = m.sessions.get_mut(&sid).unwrap();
    s.deadline = now + LEASE_TTL;
    s.max_now = now;
}

fn session_reclaimed(ctx: &Ctx, sid: u64) {
    let mut m = ctx.m.borrow_mut();
    if let Some(s) = m.sessions.get(&sid) {
        if !s.maybe_expired() && !s.reclaimed && !ctx.crashing.get() {
            fail!("session {sid} lost its lease before its deadline");
        }
    }
    m.return_session(sid);
    let s = m.sessions.get_mut(&sid).unwrap();
    s.reclaimed = true;
    s.closed = true;
}

/// One session: up to a few deliveries with random outcomes and nested steps.
/// In `drain` mode (the event loop's drain) outcomes are terminal and nothing nests.
fn deliver(ctx: &Rc<Ctx>, depth: u32, in_hook: bool, drain: bool) -> bool {
    let q = ctx.q();
    let key = (!drain && ctx.chance(30)).then(|| ctx.pick(&all_keys()).to_string());
    let r = match &key {
        Some(k) => q.session_for(k),
        None => q.next_session(),
    };
    reconcile(ctx);
    let mut s = match r {
        Ok(Some(s)) => s,
        Ok(None) => {
            if !drain {
                ctx.log(depth, format!("session {key:?}: none"));
            }
            return false;
        }
        Err(e) => {
            ctx.log(depth, format!("session {key:?}: {e}"));
            ctx.expect_err(&e, "next_session");
            return false;
        }
    };
    let skey = s.routing_key().to_string();
    if key.as_ref().is_some_and(|k| *k != skey) {
        fail!("session_for({key:?}) gave a session for {skey:?}");
    }
    match (ctx.sources, s.source()) {
        (true, Some("s1" | "s2")) | (false, None) => {}
        (_, src) => fail!(
            "session for {skey} has source {src:?} (sources: {})",
            ctx.sources
        ),
    }
    let sid = {
        let now = ctx.now_s();
        let mut m = ctx.m.borrow_mut();
        m.next_sid += 1;
        let sid = m.next_sid;
        m.sessions.insert(
            sid,
            Sm {
                key: skey.clone(),
                deadline: now + LEASE_TTL,
                max_now: now,
                reclaimed: false,
                closed: false,
                deliveries: 0,
            },
        );
        let alive = m.alive_sessions_on(&skey);
        let limit = m.limits.get(&skey).copied().unwrap_or(LIMIT) as usize;
        if alive > limit && !ctx.crashing.get() {
            fail!("{alive} sessions open on {skey} with a limit of {limit}");
        }
        sid
    };
    ctx.log(
        depth,
        format!(
            "session {sid} on {skey}{}",
            if drain { " (drain)" } else { "" }
        ),
    );
    let ndel = if drain { 1000 } else { 1 + ctx.rnd(3) };
    let mut ended = false;
    let mut failed = false;
    for _ in 0..ndel {
        // A leaked delivery's recipients go back when the session is next used.
        let usable = {
            let m = ctx.m.borrow();
            let sm = &m.sessions[&sid];
            !sm.closed && sm.deliveries < PER_SESSION
        };
        if usable {
            ctx.m.borrow_mut().return_session(sid);
        }
        ctx.in_nd.borrow_mut().push(sid);
        let r = if drain {
            s.next_delivery()
        } else {
            hookable(|| s.next_delivery())
        };
        ctx.in_nd.borrow_mut().pop();
        let d = match r {
            Ok(Some(d)) => d,
            Ok(None) => {
                if usable {
                    renew(ctx, sid);
                }
                break;
            }
            Err(Error::LeaseExpired) => {
                ctx.log(depth, format!("  session {sid}: lease expired"));
                session_reclaimed(ctx, sid);
                ended = true;
                break;
            }
            Err(e) => {
                ctx.log(depth, format!("  next_delivery: {e}"));
                ctx.expect_err(&e, "next_delivery");
                failed = true;
                break;
            }
        };
        let did = leased(ctx, depth, sid, &d);
        let id = d.id();
        let idx: Vec<usize> = d.indices().iter().map(|&i| i as usize).collect();
        if !drain && depth < 3 {
            for _ in 0..ctx.rnd(4) {
                ctx.tot(|t| t.nested += 1);
                step(ctx, depth + 1, in_hook);
                check_invariants(ctx, "a nested step");
            }
        }
        let choice = if drain {
            [0, 0, 0, 1, 2, 3][ctx.rnd(6) as usize]
        } else {
            match ctx.rnd(100) {
                0..=62 => 0,  // complete with random outcomes
                63..=69 => 3, // site failure
                70..=96 => 4, // drop without outcome
                _ => 5,       // forget
            }
        };
        let choice = if choice == 5 && (ctx.forget_budget.get() == 0 || !ctx.on("forget")) {
            4
        } else {
            choice
        };
        match choice {
            0..=2 => {
                let outs: Vec<Out> = idx
                    .iter()
                    .map(|_| {
                        let c = if drain { choice } else { ctx.rnd(3) as usize };
                        match c {
                            0 => Out::Delivered,
                            1 => Out::Temp(reason_temp(ctx)),
                            _ => Out::Perm(reason_perm(ctx)),
                        }
                    })
                    .collect();
                let outcomes: Vec<Outcome> = outs.iter().map(outcome_for).collect();
                let names: Vec<&str> = outs
                    .iter()
                    .map(|o| match o {
                        Out::Delivered => "delivered",
                        Out::Temp(_) => "temp",
                        Out::Perm(_) => "perm",
                    })
                    .collect();
                let r = d.complete(&outcomes);
                ctx.log(depth, format!("  complete {did} {names:?}: {r:?}"));
                match r {
                    Ok(()) => {
                        apply_outcomes(ctx, id, did, &idx, &outs);
                        renew(ctx, sid);
                    }
                    Err(Error::LeaseExpired) => {
                        session_reclaimed(ctx, sid);
                        ended = true;
                        break;
                    }
                    Err(e) => {
                        ctx.expect_err(&e, "complete");
                        apply_outcomes(ctx, id, did, &idx, &outs);
                    }
                }
            }
            3 => {
                let reason = "421 4.4.2 connection dropped".to_string();
                let outs: Vec<Out> = idx.iter().map(|_| Out::Temp(reason.clone())).collect();
                let r = d.site_failure(&reason);
                ctx.log(depth, format!("  delivery {did}: site failure: {r:?}"));
                match r {
                    Ok(()) => apply_outcomes(ctx, id, did, &idx, &outs),
                    Err(Error::LeaseExpired) => session_reclaimed(ctx, sid),
                    Err(e) => {
                        ctx.expect_err(&e, "site_failure");
                        apply_outcomes(ctx, id, did, &idx, &outs);
                    }
                }
                let mut m = ctx.m.borrow_mut();
                m.return_session(sid);
                m.sessions.get_mut(&sid).unwrap().closed = true;
                ended = true;
                break;
            }
            4 => {
                drop(d);
                ctx.log(depth, format!("  delivery {did} dropped"));
                return_delivery(ctx, did);
            }
            _ => {
                std::mem::forget(d);
                ctx.forget_budget.set(ctx.forget_budget.get() - 1);
                ctx.leaked.set(true);
                ctx.tot(|t| t.forgets += 1);
                ctx.log(depth, format!("  delivery {did} leaked (mem::forget)"));
            }
        }
    }
    if !ended {
        let c = if drain { 0 } else { ctx.rnd(10) };
        let r = match c {
            0..=6 => s.finish(),
            7 | 8 => {
                drop(s);
                Ok(())
            }
            _ => s.site_failure("connection refused"),
        };
        let how = match c {
            0..=6 => "finish",
            7 | 8 => "drop",
            _ => "site failure",
        };
        ctx.log(depth, format!("session {sid} ends ({how}): {r:?}"));
        if let Err(e) = &r {
            ctx.expect_err(e, "session end");
        }
        let mut m = ctx.m.borrow_mut();
        m.return_session(sid);
        m.sessions.get_mut(&sid).unwrap().closed = true;
    }
    // Closed sessions are forgotten.
    ctx.m.borrow_mut().sessions.retain(|_, s| !s.closed);
    // A failing drain (a crash is under way) stops.
    !(drain && failed)
}

/// Picks a message for an operator action: usually a live one, sometimes one
/// that is gone.
fn pick_msg(ctx: &Ctx) -> Option<MessageId> {
    let m = ctx.m.borrow();
    let live = m.live_ids();
    if !live.is_empty() && ctx.chance(92) {
        return Some(*ctx.pick(&live));
    }
    let gone: Vec<MessageId> = m.archive.keys().copied().collect();
    if !gone.is_empty() {
        return Some(*ctx.pick(&gone));
    }
    None
}

#[derive(Clone, Copy, Debug)]
enum Plan {
    Hold,
    Release,
    Delete,
}

fn plan(rm: &mut Rm, seq: &mut u64, p: Plan) -> bool {
    match (p, &rm.st) {
        (Plan::Hold, St::Queued) => {
            rm.st = St::Held;
            rm.rec(seq, Cls::Held);
            true
        }
        (Plan::Hold, St::InFlight { .. }) if !rm.hold_i => {
            rm.hold_i = true;
            rm.rec(seq, Cls::Held);
            true
        }
        (Plan::Release, St::Held) => {
            rm.st = St::Queued;
            rm.rec(seq, Cls::Queued);
            true
        }
        (Plan::Release, St::InFlight { .. }) if rm.hold_i => {
            rm.hold_i = false;
            rm.rec(seq, Cls::Queued);
            true
        }
        (Plan::Delete, st) if *st != St::Final => {
            rm.st = St::Final;
            rm.hold_i = false;
            rm.route_i = None;
            rm.reason = None;
            rm.rec(seq, Cls::Final);
            true
        }
        _ => false,
    }
}

fn plan_reroute(rm: &mut Rm, seq: &mut u64, to: &str) -> bool {
    if rm.route == to {
        return false;
    }
    match rm.st {
        St::Queued | St::Held => {
            rm.route = to.to_string();
            let c = rm.st.cls();
            rm.rec(seq, c);
            true
        }
        St::InFlight { .. } if rm.route_i.as_deref() != Some(to) => {
            rm.route_i = Some(to.to_string());
            let c = if rm.hold_i { Cls::Held } else { Cls::Queued };
            rm.rec(seq, c);
            true
        }
        _ => false,
    }
}

/// Applies `f` to the model recipients selected by `sel`; returns how many changed.
fn model_apply(
    ctx: &Ctx,
    sel: impl Fn(MessageId, usize, &Rm) -> bool,
    f: impl Fn(&mut Rm, &mut u64) -> bool,
) -> usize {
    let mut m = ctx.m.borrow_mut();
    let mut seq = m.seq;
    let mut n = 0;
    for (id, mm) in m.msgs.iter_mut() {
        for (i, rm) in mm.rcpts.iter_mut().enumerate() {
            if sel(*id, i, rm) && f(rm, &mut seq) {
                n += 1;
            }
        }
    }
    m.seq = seq;
    n
}

/// Checks an operator result against the model's count (unless uncertain).
fn op_result(
    ctx: &Ctx,
    depth: u32,
    what: String,
    r: mailq::Result<usize>,
    want: usize,
    mark: Option<u64>,
) {
    ctx.log(depth, format!("{what}: {r:?} (model {want})"));
    let uncertain = ctx.crashing.get() || ctx.no_counts || {
        let m = ctx.m.borrow();
        m.msgs.keys().any(|id| m.damaged.contains(id))
    };
    match r {
        Ok(n) => {
            if n != want && !uncertain {
                fail!("{what} changed {n} recipients, the model {want}");
            }
            if let Some(mark) = mark {
                ctx.mark_durable(mark);
            }
        }
        Err(Error::NoSuchMessage(_)) if want == 0 => {}
        Err(e) => ctx.expect_err(&e, &what),
    }
}

fn operator(ctx: &Rc<Ctx>, depth: u32) {
    operator_inner(ctx, depth);
    if ctx.auto_maint {
        // Any later call may checkpoint.
        mark_ckpt_risk(ctx);
    }
}

fn operator_inner(ctx: &Rc<Ctx>, depth: u32) {
    reconcile(ctx);
    let q = ctx.q();
    let keys = all_keys();
    let kinds: Vec<&str> = [
        "hold", "hold", "release", "release", "delete", "flush", "flush", "reroute", "reroute",
        "reroute", "bucketop", "bucketop", "select", "select", "limits", "limits", "bounces",
        "bounces", "bounces",
    ]
    .into_iter()
    .filter(|k| ctx.on(k))
    .collect();
    if kinds.is_empty() {
        return;
    }
    let kind = *ctx.pick(&kinds);
    match kind {
        "hold" | "release" | "delete" => {
            let Some(id) = pick_msg(ctx) else { return };
            let p = match kind {
                "hold" => Plan::Hold,
                "release" => Plan::Release,
                _ => Plan::Delete,
            };
            let r = match p {
                Plan::Hold => q.hold(id),
                Plan::Release => q.release(id),
                Plan::Delete => q.delete(id),
            };
            let want = model_apply(ctx, |x, _, _| x == id, |rm, seq| plan(rm, seq, p));
            let mark = ctx.m.borrow().seq;
            op_result(ctx, depth, format!("{kind} {id}"), r, want, Some(mark));
            if matches!(p, Plan::Delete) {
                ctx.m.borrow_mut().damaged.remove(&id);
            }
        }
        "flush" => {
            let all = ctx.chance(50);
            let key = ctx.pick(&keys).to_string();
            let r = if all { q.flush() } else { q.flush_bucket(&key) };
            // Deferred recipients become ready (a record each); ready and deferred
            // look alike to the model, so only the records are noted.
            model_apply(
                ctx,
                |_, _, rm| rm.st == St::Queued && (all || rm.route == key),
                |rm, seq| {
                    rm.rec(seq, Cls::Queued);
                    false
                },
            );
            let mark = ctx.m.borrow().seq;
            let what = if all {
                "flush".to_string()
            } else {
                format!("flush_bucket {key}")
            };
            ctx.log(depth, format!("{what}: {r:?}"));
            match r {
                Ok(_) => {
                    if all {
                        ctx.mark_durable(mark);
                    }
                }
                Err(e) => ctx.expect_err(&e, &what),
            }
        }
        "reroute" => {
            let to = ctx.pick(&keys).to_string();
            if ctx.chance(50) {
                let from = ctx.pick(&keys).to_string();
                let r = q.reroute(&from, &to);
                let want = if from == to {
                    0
                } else {
                    model_apply(
                        ctx,
                        |_, _, rm| rm.route == from,
                        |rm, seq| plan_reroute(rm, seq, &to),
                    )
                };
                op_result(ctx, depth, format!("reroute {from} -> {to}"), r, want, None);
            } else {
                let Some(id) = pick_msg(ctx) else { return };
                let n = ctx.m.borrow().msgs.get(&id).map_or(1, |m| m.rcpts.len());
                let i = ctx.rnd(n as u64 + 1) as usize; // one past the end sometimes
                let r = q.reroute_recipient(id, i as u32, &to);
                let want = model_apply(
                    ctx,
                    |x, j, _| x == id && j == i,
                    |rm, seq| plan_reroute(rm, seq, &to),
                );
                let mark = ctx.m.borrow().seq;
                let what = format!("reroute_recipient {id}#{i} -> {to}");
                ctx.log(depth, format!("{what}: {r:?} (model {want})"));
                match r {
                    Ok(b) => {
                        if b != (want == 1) && !ctx.crashing.get() && !ctx.no_counts {
                            fail!("{what} returned {b}, the model changed {want}");
                        }
                        ctx.mark_durable(mark);
                    }
                    Err(Error::NoSuchMessage(_)) | Err(Error::NoSuchRecipient(..)) if want == 0 => {
                    }
                    Err(e) => ctx.expect_err(&e, &what),
                }
            }
        }
        "bucketop" => {
            let key = ctx.pick(&keys).to_string();
            let p = if ctx.chance(50) {
                Plan::Hold
            } else {
                Plan::Release
            };
            let r = match p {
                Plan::Hold => q.hold_bucket(&key),
                _ => q.release_bucket(&key),
            };
            let want = model_apply(ctx, |_, _, rm| rm.route == key, |rm, seq| plan(rm, seq, p));
            let mark = ctx.m.borrow().seq;
            op_result(
                ctx,
                depth,
                format!("{p:?}_bucket {key}"),
                r,
                want,
                Some(mark),
            );
        }
        "select" => {
            // The operator plane's bulk action by predicate: a destination, and
            // sometimes an envelope criterion that makes the selection read
            // every candidate's envelope from the log (with no lock held). The
            // dry run counts what the action then does.
            let key = ctx.pick(&keys).to_string();
            let p = if ctx.chance(50) {
                Plan::Hold
            } else {
                Plan::Release
            };
            let sel = Selector {
                route: Some(key.clone()),
                sender: ctx.chance(30).then(|| "*".to_string()),
                ..Selector::default()
            };
            let op = if matches!(p, Plan::Hold) {
                Op::Hold
            } else {
                Op::Release
            };
            let dry = q.act(&sel, &op, true);
            let r = q.act(&sel, &op, false);
            let want = model_apply(ctx, |_, _, rm| rm.route == key, |rm, seq| plan(rm, seq, p));
            let mark = ctx.m.borrow().seq;
            let what = format!("act {op:?} {sel:?}");
            if let (Ok(d), Ok(n)) = (&dry, &r) {
                let damaged = !ctx.m.borrow().damaged.is_empty();
                if d != n && !ctx.crashing.get() && !ctx.no_counts && !damaged {
                    fail!("{what}: the dry run counted {d}, the action changed {n}");
                }
            }
            op_result(ctx, depth, what, r, want, Some(mark));
        }
        "limits" => {
            let key = ctx.pick(&keys).to_string();
            match ctx.rnd(if ctx.sources { 6 } else { 5 }) {
                5 => {
                    // Per-source limits (persisted): sessions and a rate per
                    // source, or none again.
                    let (n, per_minute) = match ctx.rnd(3) {
                        0 => (0, 0),
                        1 => (1, 0),
                        _ => (1 + ctx.rnd(2) as u16, 1 + ctx.rnd(10) as u32),
                    };
                    let rate = RateLimit {
                        per_minute,
                        ..RateLimit::default()
                    };
                    let r = q.set_source_limits(&key, n, rate);
                    ctx.log(
                        depth,
                        format!("set_source_limits {key} {n} {rate:?}: {r:?}"),
                    );
                    if let Err(e) = r {
                        ctx.expect_err(&e, "set_source_limits");
                    }
                }
                4 => {
                    // Message-rate limits (persisted): some, or none again.
                    let limit = match ctx.rnd(3) {
                        0 => RateLimit::default(),
                        1 => RateLimit {
                            per_second: 1 + ctx.rnd(4) as u32,
                            ..RateLimit::default()
                        },
                        _ => RateLimit {
                            per_minute: 1 + ctx.rnd(20) as u32,
                            ..RateLimit::default()
                        },
                    };
                    let r = q.set_rate_limit(&key, limit);
                    ctx.log(depth, format!("set_rate_limit {key} {limit:?}: {r:?}"));
                    if let Err(e) = r {
                        ctx.expect_err(&e, "set_rate_limit");
                    }
                }
                3 => {
                    // A suspension that ends by itself (a wake-up), also when
                    // the clock steps back meanwhile.
                    let secs = 1 + ctx.rnd(600);
                    let r = q.suspend_for(&key, Duration::from_secs(secs));
                    ctx.log(depth, format!("suspend_for {key} {secs}s: {r:?}"));
                    if let Err(e) = r {
                        ctx.expect_err(&e, "suspend_for");
                    }
                }
                0 => {
                    let r = q.suspend(&key);
                    ctx.log(depth, format!("suspend {key}: {r:?}"));
                    if let Err(e) = r {
                        ctx.expect_err(&e, "suspend");
                    }
                }
                1 => {
                    let r = q.resume(&key);
                    ctx.log(depth, format!("resume {key}: {r:?}"));
                    if let Err(e) = r {
                        ctx.expect_err(&e, "resume");
                    }
                }
                _ => {
                    let open = ctx.m.borrow().open_sessions_on(&key) as u16;
                    let l = (1 + ctx.rnd(LIMIT as u64) as u16).max(open);
                    if l > LIMIT {
                        return;
                    }
                    let r = q.set_concurrency_limit(&key, l);
                    ctx.log(depth, format!("set_concurrency_limit {key} {l}: {r:?}"));
                    match r {
                        Ok(()) => {
                            ctx.m.borrow_mut().limits.insert(key, l);
                        }
                        Err(e) => {
                            ctx.expect_err(&e, "set_concurrency_limit");
                            // Interrupted: the record may or may not be durable.
                            let mut m = ctx.m.borrow_mut();
                            let old = m.limits.get(&key).copied().unwrap_or(LIMIT);
                            m.limits.insert(key, old.max(l));
                        }
                    }
                }
            }
        }
        _ => bounces(ctx, depth),
    }
}

fn bounces(ctx: &Rc<Ctx>, depth: u32) {
    let q = ctx.q();
    let max = 1 + ctx.rnd(6) as usize;
    let before: BTreeSet<(MessageId, usize)> = {
        let m = ctx.m.borrow();
        m.msgs
            .iter()
            .filter(|(id, _)| !m.damaged.contains(id))
            .flat_map(|(id, mm)| {
                mm.rcpts.iter().enumerate().filter_map(move |(i, r)| {
                    matches!(r.st, St::Bounce { taken: false, .. }).then_some((*id, i))
                })
            })
            .collect()
    };
    ctx.in_tb.set(ctx.in_tb.get() + 1);
    let r = hookable(|| q.take_bounces(max));
    ctx.in_tb.set(ctx.in_tb.get() - 1);
    let got = match r {
        Ok(v) => v,
        Err(e) => {
            ctx.log(depth, format!("take_bounces({max}): {e}"));
            ctx.expect_err(&e, "take_bounces");
            return;
        }
    };
    ctx.log(
        depth,
        format!(
            "take_bounces({max}): {:?}",
            got.iter().map(|b| (b.id, b.index)).collect::<Vec<_>>()
        ),
    );
    let crashing = ctx.crashing.get();
    let mut ack = Vec::new();
    let mut warn_ack = Vec::new();
    {
        let mut m = ctx.m.borrow_mut();
        for b in &got {
            let k = (b.id, b.index as usize);
            if m.damaged.contains(&b.id) {
                continue;
            }
            if b.delayed {
                // A delay warning: for a recipient still waiting, old enough,
                // and never acknowledged before (also across crashes).
                let Some(mm) = m.msgs.get(&b.id) else {
                    fail!(
                        "delay warning for {}#{}, a message the model does not have",
                        b.id,
                        b.index
                    );
                };
                let rm = &mm.rcpts[b.index as usize];
                if b.expired
                    || rm.warned
                    || b.recipient != rm.addr
                    || mm.received + WARN > ctx.max_now.get()
                    || !matches!(rm.st, St::Queued | St::Held | St::InFlight { .. })
                {
                    fail!(
                        "delay warning for {}#{} ({:?}, warned {}, age {} s, expired flag {}): not due",
                        b.id,
                        b.index,
                        rm.st,
                        rm.warned,
                        ctx.max_now.get().saturating_sub(mm.received),
                        b.expired
                    );
                }
                warn_ack.push(k);
                continue;
            }
            if !before.contains(&k) && !crashing {
                fail!(
                    "take_bounces handed out {}#{}, which had no pending DSN",
                    b.id,
                    b.index
                );
            }
            let Some(mm) = m.msgs.get_mut(&b.id) else {
                continue;
            };
            if b.sender != mm.sender {
                fail!(
                    "bounce of {}#{}: sender {:?} vs {:?}",
                    b.id,
                    b.index,
                    b.sender,
                    mm.sender
                );
            }
            let rm = &mut mm.rcpts[b.index as usize];
            if b.recipient != rm.addr {
                fail!(
                    "bounce of {}#{}: recipient {:?} vs {:?}",
                    b.id,
                    b.index,
                    b.recipient,
                    rm.addr
                );
            }
            if let St::Bounce { expired, taken } = &mut rm.st {
                if *expired != b.expired || Some(&b.reason) != rm.reason.as_ref() {
                    fail!(
                        "bounce of {}#{}: expired {} reason {:?}; model {} {:?}",
                        b.id,
                        b.index,
                        b.expired,
                        b.reason,
                        expired,
                        rm.reason
                    );
                }
                *taken = true;
                ack.push((b.id, b.index));
            }
        }
        // Fewer than asked for: every pending bounce was handed out.
        if !crashing && ctx.in_tb.get() == 0 && got.len() < max {
            let handed: BTreeSet<(MessageId, usize)> =
                got.iter().map(|b| (b.id, b.index as usize)).collect();
            for k in &before {
                let still = m
                    .msgs
                    .get(&k.0)
                    .is_some_and(|mm| matches!(mm.rcpts[k.1].st, St::Bounce { .. }));
                if still && !handed.contains(k) {
                    fail!(
                        "take_bounces({max}) did not hand out {}#{} ({} pending)",
                        k.0,
                        k.1,
                        before.len()
                    );
                }
            }
        }
    }
    for (id, i) in warn_ack {
        if !ctx.chance(75) {
            continue;
        }
        let r = q.ack_delay_warning(id, i as u32);
        ctx.log(depth, format!("ack_delay_warning {id}#{i}: {r:?}"));
        match r {
            Ok(true) => {
                if let Some(mm) = ctx.m.borrow_mut().msgs.get_mut(&id) {
                    mm.rcpts[i].warned = true;
                }
                ctx.tot(|t| t.warned += 1);
            }
            Ok(false) if !crashing => fail!("ack_delay_warning {id}#{i} found no warning"),
            Ok(false) => {}
            Err(e) => ctx.expect_err(&e, "ack_delay_warning"),
        }
    }
    for (id, i) in ack {
        if !ctx.chance(75) {
            continue;
        }
        let r = q.ack_bounce(id, i);
        ctx.log(depth, format!("ack_bounce {id}#{i}: {r:?}"));
        let still = ctx
            .m
            .borrow()
            .msgs
            .get(&id)
            .is_some_and(|mm| matches!(mm.rcpts[i as usize].st, St::Bounce { .. }));
        match r {
            Ok(b) => {
                if b != still && !crashing {
                    fail!("ack_bounce {id}#{i} returned {b}, the model expected {still}");
                }
            }
            Err(e) => ctx.expect_err(&e, "ack_bounce"),
        }
        if still {
            let mut m = ctx.m.borrow_mut();
            let mut seq = m.seq;
            let rm = &mut m.msgs.get_mut(&id).unwrap().rcpts[i as usize];
            rm.st = St::Final;
            rm.reason = None;
            rm.rec(&mut seq, Cls::Final);
            m.seq = seq;
        }
    }
}

fn tick(ctx: &Ctx, depth: u32) {
    let q = ctx.q();
    let before = ctx.now_ms();
    let r = hookable(|| q.tick());
    ctx.log(depth, format!("tick: {r}"));
    reconcile(ctx);
    // "Everything due was offered" holds at the time the tick looked; a hook
    // inside its maintenance may have moved the clock on since (what came
    // due meanwhile is due at the next tick, and next_wakeup says so).
    if ctx.now_ms() == before {
        ctx.ticked_at.set(Some(before));
    }
}

fn clock_step(ctx: &Ctx, depth: u32, back: bool) {
    if back {
        let secs = match ctx.rnd(3) {
            0 => 1 + ctx.rnd(10),
            1 => 10 + ctx.rnd(300),
            _ => 300 + ctx.rnd(3300),
        };
        let now = ctx.now_s();
        ctx.clock.set(now.saturating_sub(secs).max(T0 - 4 * 3600));
        ctx.log(depth, format!("clock back {secs} s"));
    } else {
        let ms = match ctx.rnd(4) {
            0 => 1 + ctx.rnd(999),
            1 => 1000 + ctx.rnd(120_000),
            2 => 120_000 + ctx.rnd(1_200_000),
            _ => 1_200_000 + ctx.rnd(3 * 3_600_000),
        };
        compat::advance_ms(&ctx.clock, ms);
        ctx.log(depth, format!("clock forward {ms} ms"));
    }
    ctx.clock_moved();
}

/// An idle period, then what the README's event loop does.
fn idle(ctx: &Rc<Ctx>, depth: u32) {
    let ms = SYNC_MS + ctx.rnd(4) * ctx.rnd(1_800_000);
    compat::advance_ms(&ctx.clock, ms);
    ctx.clock_moved();
    ctx.log(depth, format!("idle {ms} ms"));
    let mark = ctx.m.borrow().seq;
    let q = ctx.q();
    for round in 0..4 {
        let due = compat::timer_due(&q, ctx.now_s());
        if due {
            let r = q.tick();
            ctx.log(depth, format!("  tick: {r}"));
            reconcile(ctx);
        }
        // Readable or not (its timer runs on real time), drain: a spurious wake-up is harmless.
        q.ack_poll();
        let mut n = 0;
        while deliver(ctx, depth + 1, true, true) {
            n += 1;
            if n > 300 {
                fail!("the drain after an idle period does not end");
            }
        }
        if !due || round == 3 {
            break;
        }
    }
    ctx.ticked_at.set(Some(ctx.now_ms()));
    if ctx.crashing.get() {
        return;
    }
    // Outcomes older than the sync interval are durable once the loop ran.
    ctx.mark_durable(mark);
    if let Some(d) = compat::pending_sync_ms(&q) {
        let now = ctx.now_ms();
        if d < now {
            fail!(
                "after an idle period outcome records are still buffered, {} ms past their sync deadline",
                now - d
            );
        }
    }
}

/// Recipients in flight with an operator decision are at risk from a checkpoint
/// (see [`KNOWN`]).
fn mark_ckpt_risk(ctx: &Ctx) {
    let mut m = ctx.m.borrow_mut();
    for mm in m.msgs.values_mut() {
        for r in &mut mm.rcpts {
            if matches!(r.st, St::InFlight { .. }) && (r.hold_i || r.route_i.is_some()) {
                r.ckpt_risk = true;
            }
        }
    }
}

fn checkpoint(ctx: &Ctx, depth: u32) {
    mark_ckpt_risk(ctx);
    let mark = ctx.m.borrow().seq;
    let q = ctx.q();
    let r = hookable(|| q.checkpoint());
    // Compaction may write further checkpoints after a hook ran inside it.
    mark_ckpt_risk(ctx);
    ctx.log(depth, format!("checkpoint: {r:?}"));
    match r {
        Ok(()) => ctx.mark_durable(mark),
        Err(e) => ctx.expect_err(&e, "checkpoint"),
    }
}

fn sync(ctx: &Ctx, depth: u32) {
    let mark = ctx.m.borrow().seq;
    let r = ctx.q().sync();
    ctx.log(depth, format!("sync: {r:?}"));
    match r {
        Ok(()) => ctx.mark_durable(mark),
        Err(e) => ctx.expect_err(&e, "sync"),
    }
}

// ---------------------------------------------------------------- reopen, crash, bit flip

/// Closes the queue: cleanly (a drop, which syncs), or as a machine crash.
fn shutdown(ctx: &Ctx, crash: Option<CrashMode>) {
    disarm_hook(&ctx.hfs);
    {
        let mut m = ctx.m.borrow_mut();
        for s in m.sessions.values() {
            if !s.closed {
                fail!("shutdown with session open (simulator bug)");
            }
        }
        m.sessions.clear();
    }
    let q = ctx.q.borrow_mut().take();
    drop(q);
    let mode = match crash {
        None if !ctx.leaked.get() => {
            let mut m = ctx.m.borrow_mut();
            let seq = m.seq;
            m.mark_durable(seq);
            None
        }
        // A leaked delivery keeps the old handle (and its lock) alive: the process
        // ends instead, like a kill.
        None => Some(CrashMode::KeepUnsynced),
        Some(mode) => Some(mode),
    };
    if let Some(mode) = mode {
        ctx.sim.restart(mode, ctx.rnd(u64::MAX) | 1);
        if mode == CrashMode::Reorder {
            ctx.damage_ever.set(true);
        }
    }
    ctx.leaked.set(false);
    ctx.crashing.set(false);
    ctx.ticked_at.set(None);
    ctx.in_nd.borrow_mut().clear();
}

fn open(ctx: &Ctx) {
    let q = match Queue::open(DIR, ctx.opts()) {
        Ok(q) => q,
        Err(e) => fail!("reopen failed: {e}"),
    };
    compat::small_search_passes(&q);
    let rep = q.recovery_report();
    let st = q.stats();
    ctx.log(
        0,
        format!(
            "open: checkpoint {} ({:?}), {} records replayed, torn {}, damaged {:?}, missing {:?}, corrupt {:?}, {} messages",
            rep.checkpoint_used,
            rep.checkpoint_error,
            rep.records_replayed,
            rep.torn_tail_bytes,
            rep.damaged,
            rep.missing_segments,
            rep.corrupt_messages,
            rep.messages
        ),
    );
    if st.corrupt > 0 && !ctx.damage_ever.get() {
        fail!("recovery reports damage without cause: {rep:?}");
    }
    ctx.corrupt_base.set(st.corrupt);
    if ctx.sources {
        // Configuration, declared again at every open; the warm-up state
        // (day, the day's use) comes back from disk.
        let r = q.set_sources(None, &["s1", "s2"]).and_then(|()| {
            q.set_warmup(
                "s1",
                &[
                    mailq::WarmupStep { day: 1, per_day: 4 },
                    mailq::WarmupStep {
                        day: 2,
                        per_day: 12,
                    },
                ],
            )
        });
        ctx.log(0, format!("sources s1 s2, s1 warming up: {r:?}"));
        if let Err(e) = r {
            ctx.expect_err(&e, "set_warmup");
        }
    }
    *ctx.q.borrow_mut() = Some(q);
    // Concurrency limits are persisted: they outlive the reopen (`limits`
    // keeps, for a call a crash interrupted, the larger of old and new).
}

fn cls_of(s: RcptState) -> Option<Cls> {
    match s {
        RcptState::Ready | RcptState::Deferred => Some(Cls::Queued),
        RcptState::Held => Some(Cls::Held),
        RcptState::Failed | RcptState::Expired => Some(Cls::Bounce),
        s if s.is_final() => Some(Cls::Final),
        _ => None,
    }
}

/// After an open: what came back must be what the durable records (or some of
/// the records written since) say; nothing acknowledged is lost; nothing
/// durably final comes back. Damaged messages are deleted.
fn reconcile_open(ctx: &Ctx, why: &str) {
    let q = ctx.q();
    let mut live_q = BTreeSet::new();
    q.walk(|s| {
        live_q.insert(s.id);
        true
    });
    let mut m = ctx.m.borrow_mut();
    let ids: Vec<MessageId> = m.msgs.keys().copied().collect();
    for id in ids {
        let damaged = m.damaged.contains(&id);
        let info = if live_q.contains(&id) {
            match q.inspect(id) {
                Ok(i) => Some(i),
                Err(e) if damaged => {
                    let _ = e;
                    None
                }
                Err(e) => fail!("after {why}: message {id} is listed but cannot be inspected: {e}"),
            }
        } else {
            None
        };
        let mm = m.msgs.get_mut(&id).unwrap();
        match info {
            None => {
                if !damaged {
                    for (i, r) in mm.rcpts.iter().enumerate() {
                        if !r.allowed().iter().any(|a| a.0 == Cls::Final) {
                            fail!(
                                "after {why}: message {id} is gone, but recipient {i} ({}) was {:?} durably (records since: {:?}) — acknowledged mail lost",
                                r.addr,
                                r.durable,
                                r.pending
                            );
                        }
                    }
                }
                for r in &mut mm.rcpts {
                    r.st = St::Final;
                    r.durable = (Cls::Final, r.route.clone());
                    r.pending.clear();
                }
            }
            Some(info) => {
                if !damaged
                    && (info.sender != mm.sender
                        || info.size != mm.body.len() as u64
                        || info.recipients.len() != mm.rcpts.len())
                {
                    fail!("after {why}: message {id} came back with a different envelope");
                }
                for (i, (r, ri)) in mm.rcpts.iter_mut().zip(&info.recipients).enumerate() {
                    let c = cls_of(ri.state);
                    // A sweep may have expired a waiting recipient past its
                    // lifetime (its record lost to the crash or not).
                    let swept = ri.state == RcptState::Expired
                        && mm.received + LIFETIME <= ctx.max_now.get()
                        && r.allowed()
                            .iter()
                            .any(|a| matches!(a.0, Cls::Queued | Cls::Held) && a.1 == ri.route);
                    if !damaged {
                        let ok = swept
                            || c.is_some_and(|c| {
                                r.allowed()
                                    .iter()
                                    .any(|a| a.0 == c && (c == Cls::Final || a.1 == ri.route))
                            });
                        if !ok {
                            let hint = if r.durable.0 == Cls::Final {
                                "a durably final recipient came back"
                            } else {
                                "state or route not what the durable records say"
                            };
                            // The checkpoint's state (ready, old bucket) and the
                            // old route outlive the attempt (outcome records keep
                            // the route), so any non-final state may follow.
                            let risk = r.ckpt_risk
                                && r.durable.0 != Cls::Final
                                && c.is_some_and(|c| c != Cls::Final);
                            let msg = format!(
                                "after {why}: {id}#{i} ({}) is {:?} via {:?}; durable {:?}, records since {:?}: {hint}{}",
                                r.addr,
                                ri.state,
                                ri.route,
                                r.durable,
                                r.pending,
                                if risk { " [in-flight decision, then checkpoint]" } else { "" }
                            );
                            if !known(ctx, &msg) {
                                fail!("{msg}");
                            }
                        }
                        if r.pending.is_empty()
                            && c != Some(Cls::Final)
                            && !(swept && r.reason.is_none())
                            && ri.last_error != r.reason.clone().unwrap_or_default()
                        {
                            fail!(
                                "after {why}: {id}#{i}: last error {:?}, the durable records say {:?}",
                                ri.last_error,
                                r.reason
                            );
                        }
                    }
                    r.st = match ri.state {
                        RcptState::Ready | RcptState::Deferred => St::Queued,
                        RcptState::Held => St::Held,
                        RcptState::Failed => St::Bounce {
                            expired: false,
                            taken: false,
                        },
                        RcptState::Expired => St::Bounce {
                            expired: true,
                            taken: false,
                        },
                        RcptState::Corrupt => St::Corrupt,
                        s if s.is_final() => St::Final,
                        s => fail!("after {why}: {id}#{i} is {s:?} right after open"),
                    };
                    r.route = ri.route.clone();
                    r.ckpt_risk = false;
                    r.hold_i = false;
                    r.route_i = None;
                    r.reason = (!ri.last_error.is_empty() && r.st != St::Final)
                        .then(|| ri.last_error.clone());
                    r.durable = (r.st.cls(), r.route.clone());
                    r.pending.clear();
                }
            }
        }
    }
    // Messages the model does not know: failed enqueues, or resurrected damaged ones.
    for id in live_q
        .iter()
        .filter(|id| !m.msgs.contains_key(id))
        .copied()
        .collect::<Vec<_>>()
    {
        if m.damaged_ever.contains(&id) {
            // A damaged record of it is still on disk (its final update, or a
            // newer message's record that took its slot): it may come back at any
            // open. Deleted below.
            m.damaged.insert(id);
            continue;
        }
        let info = match q.inspect(id) {
            Ok(i) => i,
            // A resurrected damaged message (its final record was hit): deleted below.
            Err(_) if m.damaged.contains(&id) => continue,
            Err(e) => {
                fail!("after {why}: unknown message {id} appeared and cannot be inspected: {e}")
            }
        };
        let (sender, body, received, routes) = if let Some(k) =
            m.cands.iter().position(|c| c.sender == info.sender)
        {
            let c = m.cands.remove(k);
            let addrs: Vec<&str> = info.recipients.iter().map(|r| r.address.as_str()).collect();
            if c.addrs.iter().map(String::as_str).collect::<Vec<_>>() != addrs
                || c.body.len() as u64 != info.size
            {
                fail!(
                    "after {why}: message {id} of failed enqueue {} came back altered",
                    c.sender
                );
            }
            (c.sender, c.body, c.received, c.routes)
        } else if m.damaged.contains(&id) {
            let a = m.archive.get(&id).cloned();
            match a {
                Some(a) => (a.sender, a.body, a.received, Vec::new()),
                None => (info.sender.clone(), Vec::new(), info.received, Vec::new()),
            }
        } else {
            fail!(
                "after {why}: message {id} from {} appeared, which was never accepted (or was durably finished)",
                info.sender
            );
        };
        let _ = routes;
        let rcpts = info
            .recipients
            .iter()
            .map(|ri| {
                let st = match ri.state {
                    RcptState::Held => St::Held,
                    RcptState::Failed | RcptState::Expired => St::Bounce {
                        expired: ri.state == RcptState::Expired,
                        taken: false,
                    },
                    RcptState::Corrupt => St::Corrupt,
                    s if s.is_final() => St::Final,
                    _ => St::Queued,
                };
                Rm {
                    addr: ri.address.clone(),
                    route: ri.route.clone(),
                    durable: (st.cls(), ri.route.clone()),
                    st,
                    hold_i: false,
                    route_i: None,
                    reason: (!ri.last_error.is_empty()).then(|| ri.last_error.clone()),
                    pending: Vec::new(),
                    ckpt_risk: false,
                    // A message the model did not know: whether it was warned
                    // about is unknown, so a second warning is not a violation.
                    warned: false,
                }
            })
            .collect();
        m.archive.remove(&id);
        m.msgs.insert(
            id,
            Mm {
                sender,
                body,
                received,
                rcpts,
            },
        );
    }
    m.cands.clear();
    let seq = m.seq;
    m.mark_durable(seq);
    let damaged: Vec<MessageId> = m.damaged.iter().copied().collect();
    drop(m);
    // Damaged messages are deleted (their model is lenient); every other one is exact.
    for id in damaged {
        let r = q.delete(id);
        ctx.log(0, format!("delete damaged {id}: {r:?}"));
        let mut m = ctx.m.borrow_mut();
        if let Some(mm) = m.msgs.get_mut(&id) {
            for r in &mut mm.rcpts {
                r.st = St::Final;
                r.durable = (Cls::Final, r.route.clone());
                r.pending.clear();
            }
        }
        m.damaged.remove(&id);
        let seq = m.seq;
        m.mark_durable(seq);
    }
    if let Ok(bad) = q.verify() {
        if !bad.is_empty() {
            fail!("after {why}: verify finds damaged messages {bad:?}");
        }
    }
}

fn reopen(ctx: &Ctx) {
    ctx.log(0, "reopen".to_string());
    shutdown(ctx, None);
    open(ctx);
    reconcile_open(ctx, "reopen");
    ctx.tot(|t| t.reopens += 1);
}

fn crash(ctx: &Rc<Ctx>, max_k: u64) {
    let k = 1 + ctx.rnd(max_k);
    let mode = *ctx.pick(&[
        CrashMode::LoseUnsynced,
        CrashMode::KeepUnsynced,
        CrashMode::TornTail,
        CrashMode::Reorder,
    ]);
    ctx.log(
        0,
        format!("crash armed after {k} I/O operations ({mode:?})"),
    );
    ctx.sim.crash_after(k);
    ctx.crashing.set(true);
    for _ in 0..1 + ctx.rnd(4) {
        step(ctx, 0, true);
    }
    ctx.log(0, format!("machine restarts ({mode:?})"));
    shutdown(ctx, Some(mode));
    open(ctx);
    reconcile_open(ctx, &format!("crash ({mode:?})"));
    ctx.tot(|t| t.crashes += 1);
}

fn bitflip(ctx: &Ctx) {
    shutdown(ctx, None);
    let mut segs: Vec<_> = ctx
        .sim
        .files(Path::new(DIR))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let flipped = (|| {
        if segs.is_empty() {
            return None;
        }
        let n = segs.len();
        let i = if ctx.chance(70) {
            n - 1 - ctx.rnd(n.min(2) as u64) as usize
        } else {
            ctx.rnd(n as u64) as usize
        };
        let path = segs[i].clone();
        let mut data = ctx.sim.read(&path)?;
        let mut recs = Vec::new();
        let mut off = 0;
        while off + record::HEADER_LEN <= data.len() {
            let Ok(h) = record::header(&data[off..]) else {
                break;
            };
            let total = record::padded(record::HEADER_LEN + h.len);
            if off + total > data.len() {
                break;
            }
            if matches!(h.kind, Kind::Message | Kind::MessageCopy | Kind::RcptUpdate) && h.len > 0 {
                recs.push((off, h.kind, h.len));
            }
            off += total;
        }
        if recs.is_empty() {
            return None;
        }
        if ctx.verbose {
            for &(o, k, l) in &recs {
                let p = &data[o + record::HEADER_LEN..o + record::HEADER_LEN + l];
                let h = record::header(&data[o..]).ok().map(|h| h.seq);
                let d = match k {
                    Kind::RcptUpdate => record::decode_update(p).map(|u| {
                        format!(
                            "{} #{} state {} route {:?}",
                            MessageId(u.id),
                            u.idx,
                            u.state,
                            u.route
                        )
                    }),
                    _ => record::decode_message(p).map(|m| format!("{}", MessageId(m.id))),
                };
                ctx.log(0, format!("  seg record at {o} seq {h:?} {k:?} {d:?}"));
            }
        }
        let (off, kind, len) = recs[ctx.rnd(recs.len() as u64) as usize];
        let p = &data[off + record::HEADER_LEN..off + record::HEADER_LEN + len];
        let id = match kind {
            Kind::RcptUpdate => record::decode_update(p)?.id,
            _ => record::decode_message(p)?.id,
        };
        let at = off + record::HEADER_LEN + ctx.rnd(len as u64) as usize;
        data[at] ^= 1 << ctx.rnd(8);
        ctx.sim.write_durable(&path, data);
        Some((path, at, kind, MessageId(id)))
    })();
    match flipped {
        Some((path, at, kind, id)) => {
            ctx.log(
                0,
                format!("bit flip in {} at {at} ({kind:?} of {id})", path.display()),
            );
            ctx.m.borrow_mut().damaged.insert(id);
            ctx.m.borrow_mut().damaged_ever.insert(id);
            ctx.damage_ever.set(true);
            ctx.tot(|t| t.bitflips += 1);
        }
        None => ctx.log(0, "bit flip: nothing to flip".to_string()),
    }
    open(ctx);
    reconcile_open(ctx, "bit flip");
}

/// Arms a hook, then runs a call that may reach it.
fn hook(ctx: &Rc<Ctx>) {
    let (on, needle) = match ctx.rnd(4) {
        0 => (On::Rename, "checkpoint".to_string()),
        // After a checkpoint's first shard: between its position and its
        // other shards (what it may hold of the records appended meanwhile).
        3 => (On::Write, "checkpoint.tmp".to_string()),
        1 => (On::Remove, ".seg".to_string()),
        _ => {
            let mut segs: Vec<String> = ctx
                .sim
                .files(Path::new(DIR))
                .iter()
                .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
                .filter(|n| n.ends_with(".seg"))
                .collect();
            segs.sort();
            segs.pop(); // never the active segment (the log opens it to write)
            if segs.is_empty() {
                return;
            }
            (On::Open, ctx.pick(&segs).clone())
        }
    };
    let c = ctx.clone();
    let needle2 = needle.clone();
    let fired = Rc::new(Cell::new(false));
    let f2 = fired.clone();
    arm_hook(
        &ctx.hfs,
        on,
        &needle,
        Box::new(move || {
            f2.set(true);
            c.log(1, format!(">> hook fires at {on:?} {needle2}"));
            let top = c.in_nd.borrow().last().copied();
            if let Some(sid) = top {
                note_leasing(&c, sid);
            }
            for _ in 0..1 + c.rnd(2) {
                // Mostly a whole delivery: a completion inside a checkpoint or a
                // compaction is the interleaving that matters most.
                if c.on("deliver") && c.chance(50) {
                    deliver(&c, 1, true, false);
                } else {
                    step(&c, 1, true);
                }
                check_invariants(&c, "a step inside a hook");
            }
            c.log(1, "<< hook done".to_string());
        }),
    );
    ctx.tot(|t| t.hooks_armed += 1);
    ctx.log(0, format!("hook armed at {on:?}"));
    // A call that reaches the hook's operation.
    let call = match (on, ctx.rnd(10)) {
        (On::Open, 0..=4) => 1,
        (On::Open, 5 | 6) => 2,
        (_, 0..=7) => 0,
        _ => 3,
    };
    match call {
        0 => checkpoint(ctx, 0),
        1 => {
            deliver(ctx, 0, false, false);
        }
        2 => bounces(ctx, 0),
        _ => tick(ctx, 0),
    }
    disarm_hook(&ctx.hfs);
    if fired.get() {
        ctx.tot(|t| t.hooks_fired += 1);
        // What the hook did inside the call is often not durable yet: a crash
        // right now is where that matters most.
        if ctx.on("crash") && ctx.chance(30) {
            crash(ctx, 2);
        }
    }
}

/// A hook fired inside `next_delivery` of session `sid`: the recipients it is
/// leasing right now are in flight already.
fn note_leasing(ctx: &Ctx, sid: u64) {
    let key = ctx.m.borrow().sessions[&sid].key.clone();
    let cands: Vec<MessageId> = {
        let m = ctx.m.borrow();
        m.msgs
            .iter()
            .filter(|(_, mm)| {
                mm.rcpts
                    .iter()
                    .any(|r| r.st == St::Queued && r.route == key)
            })
            .map(|(id, _)| *id)
            .collect()
    };
    for id in cands {
        let Ok(info) = ctx.inspect(id) else { continue };
        let mut m = ctx.m.borrow_mut();
        let mm = m.msgs.get_mut(&id).unwrap();
        for (r, ri) in mm.rcpts.iter_mut().zip(&info.recipients) {
            if r.st == St::Queued && r.route == key && ri.state == RcptState::Leased {
                r.st = St::InFlight { s: sid, d: 0 };
            }
        }
    }
}

// ---------------------------------------------------------------- the driver

/// One random step. Depth > 0: nested inside an open delivery or a hook;
/// `restricted`: inside a hook or while a crash is armed (no reopen, crash,
/// bit flip, hook; inside a hook no checkpoint either, which would wait for
/// the maintenance lock the interrupted call may hold).
fn step(ctx: &Rc<Ctx>, depth: u32, restricted: bool) {
    let top = depth == 0 && !restricted;
    let in_hook = restricted && !ctx.crashing.get();
    let table: &[(&str, u64)] = &[
        ("enqueue", 18),
        ("deliver", 22),
        ("operator", 16),
        ("tick", 4),
        ("clock", 5),
        ("back", 2),
        ("idle", 7),
        ("checkpoint", 3),
        ("sync", 2),
        ("reopen", 2),
        ("hook", 5),
        ("crash", 3),
        ("bitflip", 1),
    ];
    let allowed: Vec<(&str, u64)> = table
        .iter()
        .copied()
        .filter(|(k, _)| ctx.on(k))
        .filter(|(k, _)| top || !matches!(*k, "reopen" | "hook" | "crash" | "bitflip"))
        .filter(|(k, _)| !(in_hook && *k == "checkpoint"))
        .filter(|(k, _)| !(*k == "deliver" && depth >= 3))
        .collect();
    let total: u64 = allowed.iter().map(|x| x.1).sum();
    let mut x = ctx.rnd(total);
    let mut kind = allowed[0].0;
    for (k, w) in &allowed {
        if x < *w {
            kind = k;
            break;
        }
        x -= w;
    }
    match kind {
        "enqueue" => enqueue(ctx, depth),
        "deliver" => {
            deliver(ctx, depth, in_hook, false);
        }
        "operator" => operator(ctx, depth),
        "tick" => tick(ctx, depth),
        "clock" => clock_step(ctx, depth, false),
        "back" => clock_step(ctx, depth, true),
        "idle" => idle(ctx, depth),
        "checkpoint" => checkpoint(ctx, depth),
        "sync" => sync(ctx, depth),
        "reopen" => reopen(ctx),
        "hook" => hook(ctx),
        "crash" => crash(ctx, 12),
        _ => bitflip(ctx),
    }
}

fn run_seed(
    seed: u64,
    steps: usize,
    verbose: bool,
    disabled: &BTreeSet<String>,
) -> Result<Totals, String> {
    let sim = SimFs::new();
    let hfs = HookFs::new(sim.clone());
    let ctx = Rc::new(Ctx {
        rng: Cell::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5151),
        sim,
        hfs,
        clock: ManualClock::new(T0),
        auto_maint: seed.is_multiple_of(2),
        rcpt_limit: if seed % 3 == 2 { 12 } else { 0 },
        rules: seed % 2 == 1,
        sources: seed % 4 == 3,
        q: RefCell::new(None),
        m: RefCell::new(Model::default()),
        trace: RefCell::new(VecDeque::new()),
        verbose,
        step: Cell::new(0),
        totals: Cell::new(Totals::default()),
        crashing: Cell::new(false),
        leaked: Cell::new(false),
        forget_budget: Cell::new(u32::from(seed % 4 == 1)),
        in_nd: RefCell::new(Vec::new()),
        in_tb: Cell::new(0),
        ticked_at: Cell::new(None),
        max_now: Cell::new(0),
        corrupt_base: Cell::new(0),
        damage_ever: Cell::new(false),
        disabled: disabled.clone(),
        strict: std::env::var("MAILQ_SIM_STRICT").is_ok_and(|v| v == "1"),
        no_counts: std::env::var("MAILQ_SIM_NO_COUNTS").is_ok_and(|v| v == "1"),
        known: RefCell::new(vec![0; KNOWN.len()]),
    });
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        open(&ctx);
        for i in 1..=steps {
            ctx.step.set(i);
            step(&ctx, 0, false);
            check_invariants(&ctx, "the step");
            check_model(&ctx);
        }
        ctx.tot(|t| {
            t.seeds += 1;
            t.steps += steps as u64;
        });
    }));
    disarm_hook(&ctx.hfs);
    match res {
        Ok(()) => {
            let t = ctx.totals.get();
            KNOWN_SEEN.with(|k| {
                let mut k = k.borrow_mut();
                k.resize(KNOWN.len(), (0, 0, 0));
                for (i, &n) in ctx.known.borrow().iter().enumerate() {
                    if n > 0 {
                        k[i].0 += n;
                        k[i].1 += 1;
                        if k[i].2 == 0 {
                            k[i].2 = seed;
                        }
                    }
                }
            });
            ctx.q.borrow_mut().take();
            Ok(t)
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(panic)".into());
            let at = PANIC_AT.with(|p| p.borrow().clone());
            let trace = ctx
                .trace
                .try_borrow()
                .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            let step = ctx.step.get();
            ctx.q.borrow_mut().take();
            Err(format!(
                "seed {seed} failed at step {step}/{steps} ({at}):\n  {msg}\nlast operations:\n{trace}\nreplay: MAILQ_SIM_SEED={seed} cargo test --release --test sim -- --nocapture"
            ))
        }
    }
}

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.trim().parse().ok())
}

/// The seed being run, and how many were started.
#[derive(Default)]
struct Running {
    seed: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

/// A seed that runs for `MAILQ_SIM_WATCHDOG_SECS` (default 60; a seed
/// takes about 50 ms) is taken for a hang: a deadlock prints nothing and
/// would end as a CI timeout, so the watchdog prints the seed to replay and
/// aborts. It stops when the returned sender is dropped.
fn watchdog(running: Arc<Running>) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc::RecvTimeoutError;
    let limit = Duration::from_secs(env_u64("MAILQ_SIM_WATCHDOG_SECS").unwrap_or(60));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        let mut last = 0;
        let mut since = std::time::Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let count = running.count.load(Relaxed);
            if count != last {
                (last, since) = (count, std::time::Instant::now());
            } else if since.elapsed() >= limit {
                let seed = running.seed.load(Relaxed);
                eprintln!(
                    "simulation: seed {seed} has run for {limit:?}, taken for a hang \
                     (a deadlock prints nothing). Replay it: MAILQ_SIM_SEED={seed} \
                     cargo test --release --test sim -- --nocapture simulation"
                );
                std::process::abort();
            }
        }
    });
    (tx, h)
}

#[test]
fn simulation() {
    let steps = env_u64("MAILQ_SIM_STEPS").unwrap_or(300) as usize;
    let single = env_u64("MAILQ_SIM_SEED");
    let seeds: Vec<u64> = match single {
        Some(s) => vec![s],
        None => {
            let first = env_u64("MAILQ_SIM_FIRST").unwrap_or(1);
            (first..first + env_u64("MAILQ_SIM_SEEDS").unwrap_or(200)).collect()
        }
    };
    let keep_going = std::env::var("MAILQ_SIM_KEEP_GOING").is_ok_and(|v| v == "1");
    let verbose = single.is_some() && std::env::var("MAILQ_SIM_TRACE").is_ok_and(|v| v == "1");
    let disabled: BTreeSet<String> = std::env::var("MAILQ_SIM_DISABLE")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        PANIC_AT.with(|p| *p.borrow_mut() = loc);
    }));
    let started = std::time::Instant::now();
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    let running = Arc::new(Running::default());
    let (done, watchdog) = watchdog(running.clone());
    for (i, &seed) in seeds.iter().enumerate() {
        running
            .seed
            .store(seed, std::sync::atomic::Ordering::Relaxed);
        running
            .count
            .store(i as u64 + 1, std::sync::atomic::Ordering::Relaxed);
        match run_seed(seed, steps, verbose, &disabled) {
            Ok(t) => totals += t,
            Err(report) => {
                if !keep_going {
                    std::panic::set_hook(prev);
                    panic!("{report}");
                }
                let first = report.lines().nth(1).unwrap_or("").trim().to_string();
                println!("seed {seed}: {first}");
                failures.push((seed, first));
            }
        }
    }
    drop(done);
    let _ = watchdog.join();
    std::panic::set_hook(prev);
    println!(
        "simulation: {} seeds x {steps} steps in {:.1?}: {} steps, {} crashes, {} reopens, {} bit flips, {} hooks fired of {} armed, {} deliveries, {} nested steps, {} lease reclaims, {} leaked deliveries, {} model checks, {} recipients expired by a sweep, {} delay warnings acknowledged",
        seeds.len(),
        started.elapsed(),
        totals.steps,
        totals.crashes,
        totals.reopens,
        totals.bitflips,
        totals.hooks_fired,
        totals.hooks_armed,
        totals.deliveries,
        totals.nested,
        totals.reclaims,
        totals.forgets,
        totals.checks,
        totals.swept,
        totals.warned,
    );
    KNOWN_SEEN.with(|k| {
        for (i, &(n, seeds, first)) in k.borrow().iter().enumerate() {
            if n > 0 {
                println!(
                    "known defect {:?} tolerated {n} times in {seeds} seeds (first: seed {first}; MAILQ_SIM_STRICT=1 fails on it)",
                    KNOWN[i].0
                );
            }
        }
    });
    assert!(
        failures.is_empty(),
        "{} failing seeds: {:?}",
        failures.len(),
        failures.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert!(totals.steps > 0 || seeds.is_empty(), "the simulation ran");
}

// ---------------------------------------------------------------- known defects, minimal

/// Options for the minimal reproductions of [`KNOWN`] defects.
fn repro_opts(fs: &SimFs, clock: &Arc<ManualClock>) -> Options {
    Options {
        vfs: fs.vfs(),
        clock: clock.clone(),
        auto_maintenance: false,
        outcome_sync_interval: Duration::from_secs(3600),
        min_backoff: Duration::from_secs(60),
        concurrency: Concurrency {
            initial: 2,
            limit: 3,
            dead_after: 1,
        },
        ..Options::default()
    }
}

fn one(q: &Queue, rcpt: &str, body: &[u8]) -> MessageId {
    q.enqueue(&NewMessage {
        sender: "s@x.example",
        recipients: vec![rcpt.into()],
        meta: b"",
        body,
    })
    .unwrap()
}

/// KNOWN "checkpoint-drops-inflight-decision": a hold (or re-route) taken
/// while the recipient is in flight
/// is persisted by its own record, but a checkpoint taken before the attempt
/// ends writes the recipient as ready in its old bucket and replay starts
/// after that record: the decision is gone after a reopen, clean or not.
#[test]
fn known_checkpoint_drops_inflight_hold() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let q = Queue::open(DIR, repro_opts(&fs, &clock)).unwrap();
    let id = one(&q, "a@b.example", b"hi");
    let mut s = q.next_session().unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(q.hold(id).unwrap(), 1, "held while in flight (persisted)");
    q.checkpoint().unwrap();
    drop(d); // the attempt ends without an outcome: the hold applies
    drop(s);
    assert_eq!(q.inspect(id).unwrap().recipients[0].state, RcptState::Held);
    drop(q);
    let q = Queue::open(DIR, repro_opts(&fs, &clock)).unwrap();
    assert_eq!(
        q.inspect(id).unwrap().recipients[0].state,
        RcptState::Held,
        "the operator's hold survives a clean reopen"
    );
}

/// The same for a re-route: the new route is lost even though the attempt
/// ended with a temporary failure (its record keeps the route).
#[test]
fn known_checkpoint_drops_inflight_reroute() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let q = Queue::open(DIR, repro_opts(&fs, &clock)).unwrap();
    let id = one(&q, "a@b.example", b"hi");
    let mut s = q.next_session().unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    assert_eq!(q.reroute("b.example", "mx.example").unwrap(), 1);
    q.checkpoint().unwrap();
    d.complete(&[Outcome::temp("451 later")]).unwrap();
    drop(s);
    assert_eq!(q.inspect(id).unwrap().recipients[0].route, "mx.example");
    drop(q);
    let q = Queue::open(DIR, repro_opts(&fs, &clock)).unwrap();
    assert_eq!(
        q.inspect(id).unwrap().recipients[0].route,
        "mx.example",
        "the operator's re-route survives a clean reopen"
    );
}

/// KNOWN "dead-destination-no-wakeup", by the flush path (the simulator also
/// finds it after a probe wake-up fired): `flush` revives a dead destination
/// with `dead_until = now` and no probe wake-up. After the clock steps back,
/// the destination is dead again with nothing to wake it: mail
/// queued for it then is never offered by `next_session` (only `session_for`
/// finds it) and `next_wakeup` knows nothing of it.
#[test]
fn known_flush_revive_then_clock_back_strands_mail() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let q = Queue::open(DIR, repro_opts(&fs, &clock)).unwrap();
    let id = one(&q, "a@dead.example", b"hi");
    let mut s = q.next_session().unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    d.site_failure("421 connection refused").unwrap(); // dead for 60 s
    q.delete(id).unwrap();
    clock.advance(120);
    q.tick(); // the probe wake-up fires: nothing to deliver
    q.flush().unwrap(); // revives: dead_until = now
    assert!(q.next_session().unwrap().is_none(), "nothing to deliver");
    clock.set(T0 - 3600); // the clock steps back an hour
    one(&q, "b@dead.example", b"later");
    clock.set(T0 + 600); // and goes on, past every deadline
    q.tick();
    assert!(
        q.next_session().unwrap().is_some(),
        "ready mail of a revived destination is offered (debug_check: {:?})",
        q.debug_check()
    );
}

/// KNOWN "dead-destination-no-wakeup", by the probe path: the wake-up fired
/// and rang the destination; the clock steps back below `dead_until`;
/// `next_session` drops it from the ring (it cannot open now) and nothing
/// rings it again once the clock has passed `dead_until`.
#[test]
fn known_probe_wakeup_then_clock_back_strands_mail() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let q = Queue::open(DIR, repro_opts(&fs, &clock)).unwrap();
    one(&q, "a@dead.example", b"hi");
    let mut s = q.next_session().unwrap().unwrap();
    let d = s.next_delivery().unwrap().unwrap();
    d.site_failure("421 connection refused").unwrap(); // dead for 60 s, retry in 60 s
    clock.advance(61);
    q.tick(); // the retry is due and the probe wake-up fires
    clock.set(T0); // the clock steps back a minute
    assert!(q.next_session().unwrap().is_none(), "dead again for now");
    clock.set(T0 + 600);
    q.tick();
    assert!(
        q.next_session().unwrap().is_some(),
        "the probe is offered once the clock is past dead_until (debug_check: {:?})",
        q.debug_check()
    );
}

/// KNOWN "promote-no-wake": `next_session`
/// (and `session_for`) fire due timers into the ready ring without raising the
/// poll fd, so work sits in the ring while the fd is not readable; only the
/// `next_wakeup` timer of an event loop finds it.
#[test]
fn known_promote_in_next_session_does_not_wake() {
    let fs = SimFs::new();
    let clock = ManualClock::new(T0);
    let q = Queue::open(DIR, repro_opts(&fs, &clock)).unwrap();
    one(&q, "a@b.example", b"1");
    one(&q, "c@b.example", b"2");
    let mut s = q.next_session().unwrap().unwrap();
    while let Some(d) = s.next_delivery().unwrap() {
        let n = d.recipients().len();
        d.complete(&vec![Outcome::temp("451 later"); n]).unwrap();
    }
    drop(s);
    q.sync().unwrap();
    q.ack_poll();
    clock.advance(61); // both retries are due
    let _s = q.next_session().unwrap().expect("a due retry");
    // One slot of two is open and a recipient is still ready: the bucket is
    // back in the ring, so the fd must be readable.
    assert_eq!(q.debug_check(), Ok(()));
}
