//! A bounded random-command test against a live server, checked against a
//! pure model of the commands (SPEC sections 3-5).
//!
//! One test, `random_commands_agree_with_the_model`, sends seeded random
//! operations from four control connections (three RESP2, one RESP3),
//! strictly one after another so the model knows the order, plus blocked
//! `RESERVE.WAIT` clients that each have their own connection and thread
//! (their replies come back over a channel). Every reply is compared with
//! the model's prediction exactly:
//!
//! - LOCK / WAIT that can answer at once (free key, or the holder itself),
//!   RENEW and RELEASE with no TOKEN, the right TOKEN or a wrong one, INFO,
//!   DEL / UNLINK, a plain string written over a key (an old library's
//!   reservation, SPEC section 7);
//! - WAITs that block, queued FIFO behind a holder: the model tracks every
//!   queue and predicts exactly which waiter is granted on RELEASE, DEL,
//!   FLUSHALL or the holder's expiry; waiters that time out, are killed
//!   (`CLIENT KILL`) or unblocked (`CLIENT UNBLOCK [ERROR]`), also inside
//!   the same EXEC that granted them the key (the grant then goes to the
//!   next waiter); a key turned into a hash fails its waiters with
//!   WRONGTYPE;
//! - MULTI/EXEC blocks and EVAL scripts mixing these (WAIT inside them is
//!   LOCK; a LOCK after a DEL in the same block hands the key to the oldest
//!   waiter first and answers 0);
//! - RESERVE.OBSERVE that answers at once (a stale token gets the current
//!   `[holder, token]`, `[nil, 0]` for none; an unchanged one nil inside
//!   MULTI and scripts or at a short timeout);
//! - hostile arguments, one bad argument at a time (bad ttl, timeout,
//!   holder, token, delay, option name, wrong arity, the internal
//!   commands, WRONGTYPE on a hash): exact error texts, nothing changes.
//!
//! Tokens cannot be predicted, only their relations: every grant takes a
//! token above every token seen before (grants made by one command or
//! EXEC, in order, strictly increasing; the handoffs Redis runs right after
//! a command, in any order among keys, above those); a re-acquire answers
//! the same token as the grant; INFO shows the token the grant answered.
//! After every operation each waiter that should have been answered is
//! answered as predicted (and its connection still answers PING with PONG,
//! so no stray reply was written to it), and no other waiter has a reply.
//! Every few operations the full state is compared: `RESERVE.INFO` and
//! `TYPE` of every key (holder, token, acquired_at_ms, renewals, waiters,
//! queue order, ttl_ms within the granted TTL) and every `INFO reservation`
//! counter (held, waiters, grants, reacquires, contended, renewals,
//! renew_failures, releases, release_failures, handoffs, expirations,
//! wait_timeouts, waits_blocked, wrongtype_waiters, last_token).
//!
//! TTLs are 100 s or more, so nothing expires behind the model's back;
//! expiry is exercised by a separate step that shortens one holder's TTL
//! to 0.1 s and waits (bounded) for its predicted outcome.
//!
//! Environment: `RESERVATION_MODEL_OPS` (operations, default 3000),
//! `RESERVATION_MODEL_SEED` (default: from the clock; printed at the start
//! so a failure can be replayed).

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use testkit::cmd::server_time_ms;
use testkit::redis::{self, Connection, ConnectionLike, Value};
use testkit::{client_id, error_text, reservation_info, wait_until, Server, DEADLINE};

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const UNBLOCKED: &str = "UNBLOCKED client unblocked via CLIENT UNBLOCK";
const SETSTATE_INTERNAL: &str =
    "ERR RESERVE.SETSTATE is internal: only replication and AOF loading may send it";
const TOKENFLOOR_INTERNAL: &str =
    "ERR RESERVE.TOKENFLOOR is internal: only replication and AOF loading may send it";

/// Reservation keys k0..k3, then a key that is always a hash.
const RES_KEYS: usize = 4;
const SPARE: usize = RES_KEYS;
const KEY_NAMES: [&str; RES_KEYS + 1] = ["k0", "k1", "k2", "k3", "spare:hash"];
/// Blocked waiters alive at once (one thread and connection each).
const MAX_WAITERS: usize = 8;
/// Full-state comparison every this many operations.
const CHECK_EVERY: u64 = 20;

/// Holders the control connections use (one binary-unsafe on purpose).
const POOL: &[&[u8]] = &[b"h0", b"h1", b"h2", b"h3", b"h\xff\x00bin"];

/// Valid TTLs as written and as the module must read them (all long, so
/// nothing expires unless the expiry step asks for it).
const TTLS: &[(&str, u64)] = &[
    ("100", 100_000),
    ("100.0", 100_000),
    ("99.5", 99_500),
    ("120.25", 120_250),
    ("0150", 150_000),
    ("200.", 200_000),
    ("100.0001", 100_001),
];

const BAD_TTLS: &[&str] = &[
    "abc",
    "0",
    "0.0",
    "0.0000",
    "-1",
    "-0.5",
    "+1",
    "1e3",
    "nan",
    "inf",
    " 1",
    "1 ",
    "1x",
    "0x10",
    "1..2",
    ".",
    "",
    "99999999999999999999",
    "2592001",
    "2592000.001",
    "\u{661}",
];
const BAD_TIMEOUTS: &[&str] = &[
    "abc",
    "-1",
    "-0.001",
    "1e3",
    "nan",
    "inf",
    " 1",
    "1x",
    "",
    "99999999999999999999",
];
const BAD_TOKENS: &[&str] = &[
    "abc",
    "0",
    "-1",
    "",
    " 1",
    "1x",
    "1.5",
    "18446744073709551616",
];
const BAD_OPTIONS: &[&str] = &["TOKENS", "TOK", "FOO", "1", "NX"];
const BAD_DELAYS: &[&str] = &["-1", "3600001", "x", "", "1.5", " 1", "1e3", "99999999999"];

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

// ----- replies -----

/// `RESERVE.INFO` parsed (RESP2 flat array or RESP3 map).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Info {
    holder: Vec<u8>,
    token: i64,
    ttl_ms: i64,
    acquired_at_ms: i64,
    renewals: i64,
    waiters: i64,
    queue: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    Int(i64),
    Status(String),
    Nil,
    Bulk(Vec<u8>),
    Error(String),
    /// The connection went away before a reply.
    Closed(String),
    Info(Box<Info>),
    Array(Vec<Reply>),
    Other(String),
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

fn parse_info(pairs: Vec<(Value, Value)>) -> Result<Info, String> {
    let shown = format!("{pairs:?}");
    if pairs.len() != 12 {
        return Err(format!("RESERVE.INFO with {} fields: {shown}", pairs.len()));
    }
    let mut info = Info {
        holder: Vec::new(),
        token: -1,
        ttl_ms: -1,
        acquired_at_ms: -1,
        renewals: -1,
        waiters: -1,
        queue: Vec::new(),
    };
    let mut seen = Vec::new();
    let mut holders_entry = None;
    for (name, value) in pairs {
        let name = bytes_of(&name).ok_or_else(|| format!("field name {name:?}"))?;
        let int = |v: &Value| match v {
            Value::Int(n) => Ok(*n),
            other => Err(format!("not an integer: {other:?} in {shown}")),
        };
        match name.as_slice() {
            b"holder" => info.holder = bytes_of(&value).ok_or(format!("holder in {shown}"))?,
            b"token" => info.token = int(&value)?,
            b"ttl_ms" => info.ttl_ms = int(&value)?,
            b"acquired_at_ms" => info.acquired_at_ms = int(&value)?,
            b"renewals" => info.renewals = int(&value)?,
            b"waiters" => info.waiters = int(&value)?,
            b"queue" => {
                let Value::Array(items) = &value else {
                    return Err(format!("queue in {shown}"));
                };
                info.queue = items
                    .iter()
                    .map(bytes_of)
                    .collect::<Option<_>>()
                    .ok_or(format!("queue in {shown}"))?;
            }
            // This model holds mutexes only (and old libraries' strings):
            // one exclusive grant, no limit, and `holders` repeating it.
            b"mode" if bytes_of(&value).as_deref() == Some(b"exclusive") => {}
            b"limit" if value == Value::Int(0) => {}
            // No lock-delay is asked for here, so none ever runs.
            b"delay_ms" if value == Value::Int(0) => {}
            b"permits_used" if value == Value::Int(1) => {}
            b"holders" => {
                let grant = match &value {
                    Value::Array(items) if items.len() == 1 => match &items[0] {
                        Value::Array(flat) => flat
                            .chunks(2)
                            .map(|p| (p[0].clone(), p[1].clone()))
                            .collect::<Vec<_>>(),
                        Value::Map(pairs) => pairs.clone(),
                        other => return Err(format!("grant {other:?} in {shown}")),
                    },
                    other => return Err(format!("holders {other:?} in {shown}")),
                };
                let field = |n: &[u8]| {
                    grant
                        .iter()
                        .find(|(k, _)| bytes_of(k).as_deref() == Some(n))
                        .map(|(_, v)| v.clone())
                };
                let fields_ok = grant.len() == 7
                    && field(b"mode").and_then(|v| bytes_of(&v)).as_deref() == Some(b"exclusive")
                    && field(b"permits") == Some(Value::Int(1));
                if !fields_ok {
                    return Err(format!("grant entry in {shown}"));
                }
                let int_of = |n: &[u8]| match field(n) {
                    Some(Value::Int(v)) => v,
                    _ => -1,
                };
                let one = (
                    field(b"holder")
                        .and_then(|v| bytes_of(&v))
                        .unwrap_or_default(),
                    int_of(b"token"),
                    int_of(b"ttl_ms"),
                    int_of(b"acquired_at_ms"),
                    int_of(b"renewals"),
                );
                holders_entry = Some(one);
            }
            _ => return Err(format!("unknown field in {shown}")),
        }
        if seen.contains(&name) {
            return Err(format!("duplicate field in {shown}"));
        }
        seen.push(name);
    }
    // The one grant repeats the top fields (it has no waiters or queue).
    if let Some(one) = holders_entry {
        let top = (
            info.holder.clone(),
            info.token,
            info.ttl_ms,
            info.acquired_at_ms,
            info.renewals,
        );
        if one != top {
            return Err(format!("holders disagrees with the top fields in {shown}"));
        }
    }
    Ok(info)
}

fn value_reply(v: Value) -> Reply {
    match v {
        Value::Int(n) => Reply::Int(n),
        Value::Okay => Reply::Status("OK".into()),
        Value::SimpleString(s) => Reply::Status(s),
        Value::Nil => Reply::Nil,
        Value::BulkString(b) => Reply::Bulk(b),
        Value::ServerError(e) => Reply::Error(match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_string(),
        }),
        Value::Map(pairs) => match parse_info(pairs) {
            Ok(i) => Reply::Info(Box::new(i)),
            Err(e) => Reply::Other(e),
        },
        Value::Array(items) => {
            if items.len() == 24 && matches!(&items[0], Value::BulkString(b) if b == b"holder") {
                let pairs = items
                    .chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect();
                match parse_info(pairs) {
                    Ok(i) => Reply::Info(Box::new(i)),
                    Err(e) => Reply::Other(e),
                }
            } else {
                Reply::Array(items.into_iter().map(value_reply).collect())
            }
        }
        other => Reply::Other(format!("{other:?}")),
    }
}

fn to_reply(r: redis::RedisResult<Value>) -> Reply {
    match r {
        Ok(v) => value_reply(v),
        Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => {
            Reply::Closed(e.to_string())
        }
        Err(e) => Reply::Error(error_text(&e)),
    }
}

fn command(argv: &[Vec<u8>]) -> redis::Cmd {
    let mut cmd = redis::Cmd::new();
    for a in argv {
        cmd.arg(a.as_slice());
    }
    cmd
}

/// Sends one command and returns its reply as sent: unlike `query`, a raw
/// request keeps the errors nested in an EXEC or script reply in place.
fn q(c: &mut Connection, argv: &[Vec<u8>]) -> Reply {
    to_reply(c.req_command(&command(argv)))
}

fn argv(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

fn show(argv: &[Vec<u8>]) -> String {
    argv.iter()
        .map(|a| {
            let s = String::from_utf8_lossy(&a[..a.len().min(24)]).into_owned();
            if a.len() > 24 {
                format!("{s}...({} bytes)", a.len())
            } else {
                format!("{s:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ----- waiters -----

/// A RESERVE.WAIT sent from its own connection in its own thread. The
/// thread sends back the reply and, when the connection is still open,
/// the reply to a PING sent after it (PONG, unless a stray reply was
/// written to the connection).
fn spawn_waiter(server: &Server, cmd: &[Vec<u8>]) -> (i64, Receiver<(Reply, Option<Reply>)>) {
    let mut conn = server.conn();
    let id = client_id(&mut conn);
    let cmd = command(cmd);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reply = to_reply(cmd.query::<Value>(&mut conn));
        let ping = match reply {
            Reply::Closed(_) => None,
            _ => {
                let _ = conn.set_read_timeout(Some(DEADLINE));
                Some(to_reply(redis::cmd("PING").query::<Value>(&mut conn)))
            }
        };
        let _ = tx.send((reply, ping));
    });
    (id, rx)
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Granted(Gid),
    Zero,
    Closed,
    Error(String),
}

struct WaiterSlot {
    holder: Vec<u8>,
    id: i64,
    key: usize,
    ttl_ms: u64,
    rx: Receiver<(Reply, Option<Reply>)>,
    queued: bool,
    /// Granted by the current operation: its reply has not gone out yet.
    granted_this_op: bool,
    /// What the current operation made of it, checked when it ends.
    expect: Option<Outcome>,
    done: bool,
}

// ----- the model -----

type Gid = usize;

#[derive(Clone, Debug)]
struct GrantRec {
    key: usize,
    token: Option<u64>,
    acquired: Option<i64>,
    deferred: bool,
    /// Granted to a waiter that vanished before its reply: released by
    /// the module, its token possibly never seen.
    orphaned: bool,
}

#[derive(Clone, Debug)]
enum KState {
    Free,
    Held {
        holder: Vec<u8>,
        gid: Gid,
        renewals: u64,
        ttl_ms: u64,
    },
    Legacy {
        holder: Vec<u8>,
        ttl_ms: u64,
    },
    Hash,
}

struct KeyModel {
    name: &'static str,
    state: KState,
    /// Waiter slots, oldest first.
    queue: VecDeque<usize>,
}

#[derive(Default, Debug, Clone, PartialEq, Eq)]
struct Counters {
    grants: u64,
    reacquires: u64,
    contended: u64,
    renewals: u64,
    renew_failures: u64,
    releases: u64,
    release_failures: u64,
    handoffs: u64,
    expirations: u64,
    wait_timeouts: u64,
    waits_blocked: u64,
    wrongtype_waiters: u64,
}

/// A predicted reply.
#[derive(Clone, Debug)]
enum Exp {
    Int(i64),
    AnyInt,
    /// The token of this grant (bound the first time it is seen).
    Tok(Gid),
    Status(&'static str),
    Nil,
    Bulk(Vec<u8>),
    Err(String),
    Info(Box<ExpInfo>),
    Array(Vec<Exp>),
}

#[derive(Clone, Debug)]
struct ExpInfo {
    holder: Vec<u8>,
    /// None for an old library's plain string (token 0, acquired 0).
    grant: Option<Gid>,
    ttl_ms: u64,
    renewals: u64,
    queue: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctx {
    Top,
    Multi,
    Script,
}

struct Model {
    seed: u64,
    keys: Vec<KeyModel>,
    grants: Vec<GrantRec>,
    c: Counters,
    max_token: u64,
    /// INFO last_token equals max_token (false while an orphaned grant's
    /// token, never seen, may be the last one issued).
    last_token_exact: bool,
    min_token: u64,
    start_ms: i64,
    op_grants: Vec<Gid>,
    waiters: Vec<WaiterSlot>,
    next_name: u64,
    op_no: u64,
    log: VecDeque<String>,
    /// What happened, for the final report.
    tally: Vec<(&'static str, u64)>,
}

impl Model {
    fn fail(&self, msg: String) -> ! {
        let recent: Vec<String> = self.log.iter().cloned().collect();
        panic!(
            "model mismatch at op #{} (RESERVATION_MODEL_SEED={} to replay): {msg}\n\
             recent operations (oldest first):\n  {}",
            self.op_no,
            self.seed,
            recent.join("\n  ")
        );
    }

    fn note(&mut self, entry: String) {
        if self.log.len() == 40 {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {entry}", self.op_no));
    }

    fn count(&mut self, what: &'static str) {
        match self.tally.iter_mut().find(|(n, _)| *n == what) {
            Some((_, c)) => *c += 1,
            None => self.tally.push((what, 1)),
        }
    }

    fn held_count(&self) -> u64 {
        self.keys
            .iter()
            .filter(|k| matches!(k.state, KState::Held { .. }))
            .count() as u64
    }

    fn queued_total(&self) -> u64 {
        self.keys.iter().map(|k| k.queue.len() as u64).sum()
    }

    fn queue_names(&self, k: usize) -> Vec<Vec<u8>> {
        self.keys[k]
            .queue
            .iter()
            .map(|&w| self.waiters[w].holder.clone())
            .collect()
    }

    fn current_holder(&self, k: usize) -> Option<Vec<u8>> {
        match &self.keys[k].state {
            KState::Held { holder, .. } | KState::Legacy { holder, .. } => Some(holder.clone()),
            _ => None,
        }
    }

    /// Whether a WAIT by `holder` on `k` would block (top level).
    fn would_block(&self, k: usize, holder: &[u8]) -> bool {
        match &self.keys[k].state {
            KState::Held { holder: h, .. } => h != holder,
            KState::Legacy { .. } => true,
            KState::Free => !self.keys[k].queue.is_empty(),
            KState::Hash => false,
        }
    }

    fn live_waiters(&self) -> Vec<usize> {
        (0..self.waiters.len())
            .filter(|&w| {
                let s = &self.waiters[w];
                !s.done
                    && (s.queued
                        || (s.granted_this_op && matches!(s.expect, Some(Outcome::Granted(_)))))
            })
            .collect()
    }

    fn queued_waiters(&self) -> Vec<usize> {
        (0..self.waiters.len())
            .filter(|&w| self.waiters[w].queued)
            .collect()
    }

    // ----- state transitions (the SPEC, as a pure model) -----

    fn new_grant(&mut self, key: usize, deferred: bool) -> Gid {
        self.grants.push(GrantRec {
            key,
            token: None,
            acquired: None,
            deferred,
            orphaned: false,
        });
        let gid = self.grants.len() - 1;
        self.op_grants.push(gid);
        self.c.grants += 1;
        gid
    }

    /// The oldest waiter of `k` (free now) is granted it.
    fn hand_off(&mut self, k: usize, deferred: bool) {
        let w = self.keys[k].queue.pop_front().expect("a waiter to hand to");
        let gid = self.new_grant(k, deferred);
        self.c.handoffs += 1;
        let slot = &mut self.waiters[w];
        slot.queued = false;
        slot.granted_this_op = true;
        slot.expect = Some(Outcome::Granted(gid));
        self.keys[k].state = KState::Held {
            holder: slot.holder.clone(),
            gid,
            renewals: 0,
            ttl_ms: slot.ttl_ms,
        };
        self.count("handoffs");
    }

    fn token_matches(&self, gid: Gid, token: Option<u64>) -> bool {
        match token {
            None => true,
            Some(t) => match self.grants[gid].token {
                Some(actual) => actual == t,
                // Only certainly-wrong values are sent for a token not
                // seen yet (see `pick_token`).
                None => false,
            },
        }
    }

    /// LOCK, and WAIT when it cannot block.
    fn lock(&mut self, k: usize, holder: &[u8], ttl_ms: u64) -> Exp {
        match self.keys[k].state.clone() {
            KState::Hash => Exp::Err(WRONGTYPE.into()),
            KState::Free if self.keys[k].queue.is_empty() => {
                let gid = self.new_grant(k, false);
                self.keys[k].state = KState::Held {
                    holder: holder.to_vec(),
                    gid,
                    renewals: 0,
                    ttl_ms,
                };
                Exp::Tok(gid)
            }
            KState::Free => {
                // Freed earlier in this MULTI/script: no barging.
                self.hand_off(k, false);
                self.c.contended += 1;
                self.count("no-barging answers");
                Exp::Int(0)
            }
            KState::Held {
                holder: h,
                gid,
                renewals,
                ..
            } if h == holder => {
                self.c.reacquires += 1;
                self.keys[k].state = KState::Held {
                    holder: h,
                    gid,
                    renewals,
                    ttl_ms,
                };
                Exp::Tok(gid)
            }
            KState::Held { .. } | KState::Legacy { .. } => {
                self.c.contended += 1;
                Exp::Int(0)
            }
        }
    }

    fn renew(&mut self, k: usize, holder: &[u8], ttl_ms: u64, token: Option<u64>) -> Exp {
        match self.keys[k].state.clone() {
            KState::Hash => Exp::Err(WRONGTYPE.into()),
            KState::Held {
                holder: h,
                gid,
                renewals,
                ..
            } if h == holder && self.token_matches(gid, token) => {
                self.keys[k].state = KState::Held {
                    holder: h,
                    gid,
                    renewals: renewals + 1,
                    ttl_ms,
                };
                self.c.renewals += 1;
                Exp::Int(1)
            }
            KState::Legacy { holder: h, .. } if h == holder && token.is_none() => {
                self.keys[k].state = KState::Legacy { holder: h, ttl_ms };
                self.c.renewals += 1;
                Exp::Int(1)
            }
            _ => {
                self.c.renew_failures += 1;
                Exp::Int(0)
            }
        }
    }

    fn release(&mut self, k: usize, holder: &[u8], token: Option<u64>) -> Exp {
        let owner = match &self.keys[k].state {
            KState::Hash => return Exp::Err(WRONGTYPE.into()),
            KState::Held { holder: h, gid, .. } => h == holder && self.token_matches(*gid, token),
            KState::Legacy { holder: h, .. } => h == holder && token.is_none(),
            KState::Free => false,
        };
        if !owner {
            self.c.release_failures += 1;
            return Exp::Int(0);
        }
        self.keys[k].state = KState::Free;
        self.c.releases += 1;
        if !self.keys[k].queue.is_empty() {
            self.hand_off(k, false);
        }
        Exp::Int(1)
    }

    fn del(&mut self, k: usize) -> Exp {
        match self.keys[k].state {
            KState::Free => Exp::Int(0),
            _ => {
                self.keys[k].state = KState::Free;
                Exp::Int(1)
            }
        }
    }

    fn info(&self, k: usize) -> Exp {
        let queue = self.queue_names(k);
        match &self.keys[k].state {
            KState::Hash => Exp::Err(WRONGTYPE.into()),
            KState::Free => Exp::Nil,
            KState::Held {
                holder,
                gid,
                renewals,
                ttl_ms,
            } => Exp::Info(Box::new(ExpInfo {
                holder: holder.clone(),
                grant: Some(*gid),
                ttl_ms: *ttl_ms,
                renewals: *renewals,
                queue,
            })),
            KState::Legacy { holder, ttl_ms } => Exp::Info(Box::new(ExpInfo {
                holder: holder.clone(),
                grant: None,
                ttl_ms: *ttl_ms,
                renewals: 0,
                queue,
            })),
        }
    }

    /// What the module does right after a command, EXEC or script (its
    /// 0 ms timer): every queued key that is free goes to its oldest
    /// waiter, and the waiters of a key that became a hash get WRONGTYPE.
    fn settle(&mut self) {
        for k in 0..self.keys.len() {
            if self.keys[k].queue.is_empty() {
                continue;
            }
            match self.keys[k].state {
                KState::Free => self.hand_off(k, true),
                KState::Hash => {
                    let queue = std::mem::take(&mut self.keys[k].queue);
                    for w in queue {
                        self.waiters[w].queued = false;
                        self.waiters[w].expect = Some(Outcome::Error(WRONGTYPE.into()));
                        self.c.wrongtype_waiters += 1;
                        self.count("waiters failed with WRONGTYPE");
                    }
                }
                _ => {}
            }
        }
    }

    /// A waiter leaves through CLIENT KILL / UNBLOCK / UNBLOCK ERROR.
    fn kill(&mut self, w: usize, how: &str) {
        let slot = &mut self.waiters[w];
        if slot.queued {
            slot.queued = false;
            let k = slot.key;
            self.keys[k].queue.retain(|&x| x != w);
            let outcome = match how {
                "KILL" => Outcome::Closed,
                "UNBLOCK" => {
                    self.c.wait_timeouts += 1;
                    Outcome::Zero
                }
                _ => Outcome::Error(UNBLOCKED.into()),
            };
            self.waiters[w].expect = Some(outcome);
            self.count("waiters killed or unblocked while queued");
        } else {
            // Granted earlier in this EXEC, reply not sent yet: it never
            // sees the grant, which the module releases right there, in
            // the CLIENT KILL / UNBLOCK itself (the next waiter gets it).
            let Some(Outcome::Granted(gid)) = slot.expect.clone() else {
                self.fail(format!("kill of waiter {w} in no killable state"));
            };
            slot.granted_this_op = false;
            slot.expect = Some(match how {
                "KILL" => Outcome::Closed,
                "UNBLOCK" => Outcome::Zero,
                _ => Outcome::Error(UNBLOCKED.into()),
            });
            self.grants[gid].orphaned = true;
            self.count("waiters killed or unblocked in the EXEC that granted them");
            let k = self.grants[gid].key;
            if matches!(self.keys[k].state, KState::Held { gid: g, .. } if g == gid) {
                self.keys[k].state = KState::Free;
                self.c.releases += 1;
                self.count("orphaned grants released");
                if !self.keys[k].queue.is_empty() {
                    self.hand_off(k, false);
                }
            }
        }
    }

    // ----- comparing replies -----

    fn bind(&mut self, gid: Gid, t: i64, what: &str) {
        if t < 1 {
            self.fail(format!("{what}: expected a token, got {t}"));
        }
        let t = t as u64;
        match self.grants[gid].token {
            Some(known) if known != t => self.fail(format!(
                "{what}: expected token {known} (the same grant), got {t}"
            )),
            Some(_) => {}
            None => {
                if t < self.min_token {
                    self.fail(format!(
                        "{what}: token {t} below unix_seconds<<20 = {} at the start",
                        self.min_token
                    ));
                }
                self.grants[gid].token = Some(t);
            }
        }
    }

    fn check(&mut self, exp: &Exp, got: &Reply, what: &str) {
        match (exp, got) {
            (Exp::Int(a), Reply::Int(b)) if a == b => {}
            (Exp::AnyInt, Reply::Int(_)) => {}
            (Exp::Tok(g), Reply::Int(t)) => self.bind(*g, *t, what),
            (Exp::Status(s), Reply::Status(r)) if s == r => {}
            (Exp::Nil, Reply::Nil) => {}
            (Exp::Bulk(a), Reply::Bulk(b)) if a == b => {}
            (Exp::Err(e), Reply::Error(r)) if e == r => {}
            (Exp::Info(e), Reply::Info(i)) => self.check_info(e, i, what),
            (Exp::Array(es), Reply::Array(rs)) if es.len() == rs.len() => {
                for (i, (e, r)) in es.iter().zip(rs).enumerate() {
                    self.check(e, r, &format!("{what} [reply {i}]"));
                }
            }
            _ => self.fail(format!("{what}: expected {exp:?}, got {got:?}")),
        }
    }

    fn check_info(&mut self, e: &ExpInfo, i: &Info, what: &str) {
        let bad = |field: &str, expected: String, got: String| -> String {
            format!(
                "{what}: RESERVE.INFO {field}: expected {expected}, got {got} (full reply {i:?})"
            )
        };
        if i.holder != e.holder {
            self.fail(bad("holder", lossy(&e.holder), lossy(&i.holder)));
        }
        if i.renewals != e.renewals as i64 {
            self.fail(bad(
                "renewals",
                e.renewals.to_string(),
                i.renewals.to_string(),
            ));
        }
        if i.queue != e.queue || i.waiters != e.queue.len() as i64 {
            let show = |q: &[Vec<u8>]| q.iter().map(|h| lossy(h)).collect::<Vec<_>>();
            self.fail(bad(
                "queue/waiters",
                format!("{:?}", show(&e.queue)),
                format!("{:?} (waiters {})", show(&i.queue), i.waiters),
            ));
        }
        if i.ttl_ms <= 0 || i.ttl_ms > e.ttl_ms as i64 {
            self.fail(bad(
                "ttl_ms",
                format!("in (0, {}]", e.ttl_ms),
                i.ttl_ms.to_string(),
            ));
        }
        match e.grant {
            None => {
                if i.token != 0 || i.acquired_at_ms != 0 {
                    self.fail(bad("token/acquired_at_ms", "0/0".into(), format!("{i:?}")));
                }
            }
            Some(gid) => {
                self.bind(gid, i.token, what);
                match self.grants[gid].acquired {
                    Some(a) if a != i.acquired_at_ms => self.fail(bad(
                        "acquired_at_ms",
                        a.to_string(),
                        i.acquired_at_ms.to_string(),
                    )),
                    Some(_) => {}
                    None => {
                        if i.acquired_at_ms < self.start_ms {
                            self.fail(bad(
                                "acquired_at_ms",
                                format!(">= {} (server time at the start)", self.start_ms),
                                i.acquired_at_ms.to_string(),
                            ));
                        }
                        // Grants of one key are made in order: acquired
                        // times never go back.
                        let k = self.grants[gid].key;
                        if let Some(prev) = self.grants[..gid]
                            .iter()
                            .rev()
                            .filter(|g| g.key == k)
                            .find_map(|g| g.acquired)
                        {
                            if i.acquired_at_ms < prev {
                                self.fail(bad(
                                    "acquired_at_ms",
                                    format!(">= {prev} (an earlier grant of this key)"),
                                    i.acquired_at_ms.to_string(),
                                ));
                            }
                        }
                        self.grants[gid].acquired = Some(i.acquired_at_ms);
                    }
                }
            }
        }
    }

    /// Ends an operation: every waiter the operation answered is answered
    /// as predicted, token relations hold, no other waiter has a reply.
    fn finish_op(&mut self) {
        for w in 0..self.waiters.len() {
            let Some(expect) = self.waiters[w].expect.clone() else {
                continue;
            };
            let holder = lossy(&self.waiters[w].holder);
            let what = format!("waiter {holder} (slot {w}) on {}", self.waiters[w].key);
            let (reply, ping) = match self.waiters[w].rx.recv_timeout(DEADLINE) {
                Ok(r) => r,
                Err(e) => self.fail(format!(
                    "{what}: no reply within {DEADLINE:?} (expected {expect:?}): {e}"
                )),
            };
            match &expect {
                Outcome::Granted(gid) => self.check(&Exp::Tok(*gid), &reply, &what),
                Outcome::Zero => self.check(&Exp::Int(0), &reply, &what),
                Outcome::Error(e) => self.check(&Exp::Err(e.clone()), &reply, &what),
                Outcome::Closed => {
                    if !matches!(reply, Reply::Closed(_)) {
                        self.fail(format!(
                            "{what}: expected the connection closed, got {reply:?}"
                        ));
                    }
                }
            }
            if expect != Outcome::Closed && ping != Some(Reply::Status("PONG".into())) {
                self.fail(format!(
                    "{what}: after its reply {reply:?} the connection answered PING with \
                     {ping:?}: a stray reply was written to it"
                ));
            }
            let slot = &mut self.waiters[w];
            slot.expect = None;
            slot.granted_this_op = false;
            slot.done = true;
        }

        // Token relations.
        let grants = std::mem::take(&mut self.op_grants);
        if !grants.is_empty() {
            let mut floor = self.max_token;
            let mut last_bound = true;
            let mut deferred_seen = Vec::new();
            for &gid in &grants {
                let g = &self.grants[gid];
                let Some(t) = g.token else {
                    if !g.orphaned {
                        self.fail(format!("grant {gid} ({g:?}) was never answered"));
                    }
                    last_bound = false;
                    continue;
                };
                if g.deferred {
                    continue;
                }
                last_bound = true;
                if t <= floor {
                    self.fail(format!(
                        "token {t} (grant {gid}) is not above {floor}, the last token before it"
                    ));
                }
                floor = t;
            }
            let mut max = floor;
            for &gid in &grants {
                let g = &self.grants[gid];
                if !g.deferred {
                    continue;
                }
                match g.token {
                    Some(t) => {
                        if t <= floor {
                            self.fail(format!(
                                "token {t} (handoff {gid} after the command) is not above {floor}"
                            ));
                        }
                        if deferred_seen.contains(&t) {
                            self.fail(format!("token {t} issued twice"));
                        }
                        deferred_seen.push(t);
                        max = max.max(t);
                    }
                    None => {
                        if !g.orphaned {
                            self.fail(format!("grant {gid} ({g:?}) was never answered"));
                        }
                    }
                }
            }
            let any_deferred = grants.iter().any(|&g| self.grants[g].deferred);
            self.last_token_exact = if any_deferred {
                grants
                    .iter()
                    .filter(|&&g| self.grants[g].deferred)
                    .all(|&g| self.grants[g].token.is_some())
            } else {
                last_bound
            };
            self.max_token = max;
        }

        for w in 0..self.waiters.len() {
            let slot = &self.waiters[w];
            if !slot.queued {
                continue;
            }
            match slot.rx.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(r) => self.fail(format!(
                    "waiter {} (slot {w}) still queued in the model got {r:?}",
                    lossy(&slot.holder)
                )),
                Err(TryRecvError::Disconnected) => self.fail(format!(
                    "waiter {} (slot {w}) thread ended without a reply",
                    lossy(&slot.holder)
                )),
            }
        }
    }

    /// Compares every key and every counter with the server.
    fn check_all(&mut self, c: &mut Connection) {
        for k in 0..self.keys.len() {
            let name = self.keys[k].name;
            let reply = q(c, &argv(&[b"RESERVE.INFO", name.as_bytes()]));
            let exp = self.info(k);
            self.check(&exp, &reply, &format!("full check RESERVE.INFO {name}"));
            let ty = q(c, &argv(&[b"TYPE", name.as_bytes()]));
            let want = match self.keys[k].state {
                KState::Free => "none",
                KState::Held { .. } => "rsrv-lock",
                KState::Legacy { .. } => "string",
                KState::Hash => "hash",
            };
            if ty != Reply::Status(want.into()) {
                self.fail(format!(
                    "full check TYPE {name}: expected {want}, got {ty:?}"
                ));
            }
        }
        // `held` counts values in memory: after an asynchronous FLUSHALL
        // (Valkey's default, lazyfree-lazy-user-flush yes) a background
        // thread frees them, so the gauge reaches the model a moment later.
        let want_held = self.held_count();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stats = reservation_info(c);
        while stats.get("held") != Some(&want_held) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            stats = reservation_info(c);
        }
        let get = |n: &str| stats.get(n).copied().unwrap_or(u64::MAX);
        let c2 = &self.c;
        let expected = [
            ("held", self.held_count()),
            ("waiters", self.queued_total()),
            ("grants", c2.grants),
            ("reacquires", c2.reacquires),
            ("contended", c2.contended),
            ("renewals", c2.renewals),
            ("renew_failures", c2.renew_failures),
            ("releases", c2.releases),
            ("release_failures", c2.release_failures),
            ("handoffs", c2.handoffs),
            ("expirations", c2.expirations),
            ("wait_timeouts", c2.wait_timeouts),
            ("waits_blocked", c2.waits_blocked),
            ("wrongtype_waiters", c2.wrongtype_waiters),
        ];
        for (name, want) in expected {
            if get(name) != want {
                self.fail(format!(
                    "INFO reservation {name}: expected {want}, got {} (all: {stats:?}, model {:?})",
                    get(name),
                    self.c
                ));
            }
        }
        let last = get("last_token");
        let ok = if self.last_token_exact {
            last == self.max_token
        } else {
            last >= self.max_token
        };
        if !ok {
            self.fail(format!(
                "INFO reservation last_token {last}, highest token seen {} (exact: {})",
                self.max_token, self.last_token_exact
            ));
        }
        self.max_token = self.max_token.max(last);
        self.last_token_exact = true;
    }

    // ----- generating commands -----

    fn pick_key(&self, rng: &mut StdRng, allow_spare: bool) -> usize {
        if allow_spare && rng.gen_ratio(1, 10) {
            SPARE
        } else {
            rng.gen_range(0..RES_KEYS)
        }
    }

    fn pick_holder(&self, rng: &mut StdRng, k: usize) -> Vec<u8> {
        let roll = rng.gen_range(0..10);
        if roll < 3 {
            if let Some(h) = self.current_holder(k) {
                return h;
            }
        }
        if roll < 5 {
            let names = self.queue_names(k);
            if let Some(h) = names.choose(rng) {
                return h.clone();
            }
        }
        POOL.choose(rng).expect("pool").to_vec()
    }

    fn pick_ttl(rng: &mut StdRng) -> (&'static str, u64) {
        *TTLS.choose(rng).expect("ttls")
    }

    /// A TOKEN for RENEW/RELEASE: none, the holder's, or a wrong one.
    fn pick_token(&self, rng: &mut StdRng, k: usize) -> Option<u64> {
        let roll = rng.gen_range(0..100);
        if roll < 35 {
            return None;
        }
        let known = match &self.keys[k].state {
            KState::Held { gid, .. } => self.grants[*gid].token,
            _ => None,
        };
        match known {
            Some(t) if roll < 80 => Some(t),
            Some(t) => Some(match rng.gen_range(0..4) {
                0 => t + 1,
                1 => t - 1,
                2 => 1,
                _ => u64::MAX,
            }),
            None => Some(if rng.gen_bool(0.5) {
                1
            } else {
                self.max_token.max(1)
            }),
        }
        .filter(|&t| t >= 1)
    }

    fn name(rng: &mut StdRng, upper: &'static str) -> Vec<u8> {
        if rng.gen_ratio(1, 10) {
            upper.to_ascii_lowercase().into_bytes()
        } else {
            upper.as_bytes().to_vec()
        }
    }

    fn token_tail(rng: &mut StdRng, token: Option<u64>) -> Vec<Vec<u8>> {
        match token {
            None => Vec::new(),
            Some(t) => {
                let name: &[u8] = [&b"TOKEN"[..], b"token", b"Token"]
                    .choose(rng)
                    .expect("names");
                vec![name.to_vec(), t.to_string().into_bytes()]
            }
        }
    }

    /// LOCK (or WAIT that cannot block) on a random key.
    fn gen_lock(&mut self, rng: &mut StdRng, ctx: Ctx, wait: bool) -> Option<(Vec<Vec<u8>>, Exp)> {
        let k = self.pick_key(rng, ctx != Ctx::Script);
        let mut holder = self.pick_holder(rng, k);
        if matches!(self.keys[k].state, KState::Free) {
            if let Some(&head) = self.keys[k].queue.front() {
                // Whether a newcomer named like the waiter it hands the
                // key to would be answered 0 or its token is left open by
                // the SPEC: not generated.
                if self.waiters[head].holder == holder {
                    holder = if holder == POOL[0] { POOL[1] } else { POOL[0] }.to_vec();
                }
            }
        }
        if ctx == Ctx::Top && wait && self.would_block(k, &holder) {
            return None;
        }
        let (ttl, ttl_ms) = Self::pick_ttl(rng);
        let mut a = vec![
            Self::name(rng, if wait { "RESERVE.WAIT" } else { "RESERVE.LOCK" }),
            KEY_NAMES[k].as_bytes().to_vec(),
            holder.clone(),
            ttl.as_bytes().to_vec(),
        ];
        if wait {
            let timeout: &str = ["0", "5", "1.5", ".5", "1000"].choose(rng).expect("t");
            a.push(timeout.as_bytes().to_vec());
        }
        let exp = self.lock(k, &holder, ttl_ms);
        Some((a, exp))
    }

    fn gen_renew(&mut self, rng: &mut StdRng, ctx: Ctx) -> (Vec<Vec<u8>>, Exp) {
        let k = self.pick_key(rng, ctx != Ctx::Script);
        let holder = self.pick_holder(rng, k);
        let token = self.pick_token(rng, k);
        let (ttl, ttl_ms) = Self::pick_ttl(rng);
        let mut a = vec![
            Self::name(rng, "RESERVE.RENEW"),
            KEY_NAMES[k].as_bytes().to_vec(),
            holder.clone(),
            ttl.as_bytes().to_vec(),
        ];
        a.extend(Self::token_tail(rng, token));
        let exp = self.renew(k, &holder, ttl_ms, token);
        (a, exp)
    }

    fn gen_release(&mut self, rng: &mut StdRng, ctx: Ctx) -> (Vec<Vec<u8>>, Exp) {
        let k = self.pick_key(rng, ctx != Ctx::Script);
        let holder = self.pick_holder(rng, k);
        let token = self.pick_token(rng, k);
        let mut a = vec![
            Self::name(rng, "RESERVE.RELEASE"),
            KEY_NAMES[k].as_bytes().to_vec(),
            holder.clone(),
        ];
        a.extend(Self::token_tail(rng, token));
        let exp = self.release(k, &holder, token);
        (a, exp)
    }

    fn gen_info(&mut self, rng: &mut StdRng) -> (Vec<Vec<u8>>, Exp) {
        let k = self.pick_key(rng, true);
        let a = vec![
            Self::name(rng, "RESERVE.INFO"),
            KEY_NAMES[k].as_bytes().to_vec(),
        ];
        (a, self.info(k))
    }

    /// OBSERVE that answers at once: a token that is not the current
    /// grant's gets `[holder, token]` (`[nil, 0]` for none); the current
    /// one inside MULTI or a script, or with a short timeout at the top,
    /// gets nil.
    fn gen_observe(&mut self, rng: &mut StdRng, ctx: Ctx) -> (Vec<Vec<u8>>, Exp) {
        let k = self.pick_key(rng, true);
        let key = KEY_NAMES[k].as_bytes().to_vec();
        let current = match &self.keys[k].state {
            KState::Hash => None,
            KState::Free => Some((Exp::Nil, Exp::Int(0), None)),
            KState::Held { holder, gid, .. } => Some((
                Exp::Bulk(holder.clone()),
                Exp::Tok(*gid),
                self.grants[*gid].token,
            )),
            KState::Legacy { holder, .. } => {
                Some((Exp::Bulk(holder.clone()), Exp::Int(0), Some(0)))
            }
        };
        let name = Self::name(rng, "RESERVE.OBSERVE");
        let Some((holder, token, known)) = current else {
            let a = vec![name, key, b"0".to_vec(), b"0.01".to_vec()];
            return (a, Exp::Err(WRONGTYPE.into()));
        };
        // The current token, when the model knows it: unchanged.
        let same = match (&self.keys[k].state, known) {
            (KState::Free, _) => Some(0),
            (_, Some(t)) => Some(t),
            _ => None,
        };
        if let Some(t) = same.filter(|_| rng.gen_bool(0.3)) {
            let timeout: &[u8] = if ctx == Ctx::Top { b"0.01" } else { b"0" };
            let a = vec![name, key, t.to_string().into_bytes(), timeout.to_vec()];
            return (a, Exp::Nil);
        }
        // A token no grant ever had (tokens are far above 1) where the
        // current one is 0 (no grant, an old library's lock), else 0.
        let stale: &[u8] = if matches!(self.keys[k].state, KState::Held { .. }) {
            b"0"
        } else {
            b"1"
        };
        let a = vec![name, key, stale.to_vec(), b"5".to_vec()];
        (a, Exp::Array(vec![holder, token]))
    }

    fn gen_del(&mut self, rng: &mut StdRng) -> (Vec<Vec<u8>>, Exp) {
        let k = self.pick_key(rng, false);
        let name: &[u8] = if rng.gen_bool(0.5) { b"DEL" } else { b"UNLINK" };
        let a = vec![name.to_vec(), KEY_NAMES[k].as_bytes().to_vec()];
        (a, self.del(k))
    }

    fn gen_set_legacy(&mut self, rng: &mut StdRng) -> (Vec<Vec<u8>>, Exp) {
        let k = self.pick_key(rng, false);
        let holder: &[u8] = [&b"legacy-a"[..], b"legacy-b", b"h1"]
            .choose(rng)
            .expect("h");
        let a = argv(&[b"SET", KEY_NAMES[k].as_bytes(), holder, b"EX", b"100"]);
        self.keys[k].state = KState::Legacy {
            holder: holder.to_vec(),
            ttl_ms: 100_000,
        };
        (a, Exp::Status("OK"))
    }

    /// One bad argument (or a wrong arity, or an internal command); the
    /// error text is exact and nothing changes.
    fn gen_bad(&mut self, rng: &mut StdRng, allow_arity: bool) -> Option<(Vec<Vec<u8>>, Exp)> {
        let keys: Vec<usize> = (0..RES_KEYS)
            .filter(|&k| !matches!(self.keys[k].state, KState::Hash))
            .collect();
        let k = *keys.choose(rng)?;
        let key = KEY_NAMES[k].as_bytes();
        let h = self.pick_holder(rng, k);
        let h = h.as_slice();
        let bad_ttl = BAD_TTLS.choose(rng).expect("ttl").as_bytes();
        let bad_timeout = BAD_TIMEOUTS.choose(rng).expect("t").as_bytes();
        let bad_token = BAD_TOKENS.choose(rng).expect("tok").as_bytes();
        let bad_option = BAD_OPTIONS.choose(rng).expect("opt").as_bytes();
        let long_holder = vec![b'h'; 513];
        let bad_holder: &[u8] = if rng.gen_bool(0.5) { b"" } else { &long_holder };
        let err = |s: &str| Exp::Err(s.to_string());
        let arity = |name: &str| {
            Exp::Err(format!(
                "ERR wrong number of arguments for '{name}' command"
            ))
        };
        let cases = if allow_arity { 12 } else { 10 };
        let bad_delay = BAD_DELAYS.choose(rng).expect("delay").as_bytes();
        Some(match rng.gen_range(0..cases) {
            0 if rng.gen_bool(0.5) => {
                let a = if rng.gen_bool(0.5) {
                    argv(&[b"RESERVE.LOCK", key, h, b"100", b"DELAY", bad_delay])
                } else {
                    argv(&[b"RESERVE.WAIT", key, h, b"100", b"0", b"DELAY", bad_delay])
                };
                (a, err("ERR invalid delay (milliseconds, 0 to 3600000)"))
            }
            0 => (
                argv(&[b"RESERVE.LOCK", key, h, bad_ttl]),
                err("ERR invalid ttl"),
            ),
            1 => (
                argv(&[b"RESERVE.RENEW", key, h, bad_ttl, b"TOKEN", b"5"]),
                err("ERR invalid ttl"),
            ),
            2 => (
                argv(&[b"RESERVE.WAIT", key, h, bad_ttl, b"1"]),
                err("ERR invalid ttl"),
            ),
            3 if rng.gen_bool(0.3) => (
                argv(&[b"RESERVE.OBSERVE", key, b"0", bad_timeout]),
                err("ERR invalid timeout"),
            ),
            3 => (
                argv(&[b"RESERVE.WAIT", key, h, b"100", bad_timeout]),
                err("ERR invalid timeout"),
            ),
            4 => {
                // RENEW and RELEASE only name a holder: past the setting
                // is simply not the holder, so only an empty one is bad.
                let a = match rng.gen_range(0..4) {
                    0 => argv(&[b"RESERVE.LOCK", key, bad_holder, b"100"]),
                    1 => argv(&[b"RESERVE.RENEW", key, b"", b"100"]),
                    2 => argv(&[b"RESERVE.RELEASE", key, b""]),
                    _ => argv(&[b"RESERVE.WAIT", key, bad_holder, b"100", b"0"]),
                };
                (a, err("ERR invalid holder"))
            }
            5 if rng.gen_bool(0.3) && bad_token != b"0" => (
                argv(&[b"RESERVE.OBSERVE", key, bad_token, b"1"]),
                err("ERR invalid token"),
            ),
            5 => (
                argv(&[b"RESERVE.RENEW", key, h, b"100", b"TOKEN", bad_token]),
                err("ERR invalid token"),
            ),
            6 => (
                argv(&[b"RESERVE.RELEASE", key, h, b"TOKEN", bad_token]),
                err("ERR invalid token"),
            ),
            7 => {
                let a = if rng.gen_bool(0.5) {
                    argv(&[b"RESERVE.RENEW", key, h, b"100", bad_option, b"5"])
                } else {
                    argv(&[b"RESERVE.RELEASE", key, h, bad_option, b"5"])
                };
                (a, err("ERR syntax error"))
            }
            8 => (
                argv(&[
                    b"RESERVE.SETSTATE",
                    key,
                    b"forger",
                    b"99999999999999",
                    b"0",
                    b"0",
                    b"0",
                ]),
                err(SETSTATE_INTERNAL),
            ),
            9 => (
                argv(&[b"RESERVE.TOKENFLOOR", b"99999999999999"]),
                err(TOKENFLOOR_INTERNAL),
            ),
            _ => {
                // A malformed TOKEN tail (missing value, extra or
                // repeated words) is a syntax error, not an arity error.
                let tails = [
                    argv(&[b"RESERVE.RENEW", key, h, b"1", b"TOKEN"]),
                    argv(&[b"RESERVE.RENEW", key, h, b"1", b"TOKEN", b"1", b"x"]),
                    argv(&[
                        b"RESERVE.RENEW",
                        key,
                        h,
                        b"1",
                        b"TOKEN",
                        b"1",
                        b"TOKEN",
                        b"1",
                    ]),
                    argv(&[b"RESERVE.RELEASE", key, h, b"TOKEN"]),
                    argv(&[b"RESERVE.RELEASE", key, h, b"TOKEN", b"1", b"TOKEN", b"1"]),
                    // Where LOCK and WAIT take their options.
                    argv(&[b"RESERVE.LOCK", key, h, b"1", b"x"]),
                    argv(&[b"RESERVE.WAIT", key, h, b"1", b"1", b"x"]),
                ];
                if rng.gen_bool(0.3) {
                    let a = tails.choose(rng).expect("tail").clone();
                    return Some((a, err("ERR syntax error")));
                }
                let cases: [(&str, Vec<Vec<u8>>); 7] = [
                    ("RESERVE.LOCK", argv(&[b"RESERVE.LOCK", key, h])),
                    ("RESERVE.RENEW", argv(&[b"RESERVE.RENEW", key, h])),
                    ("RESERVE.RELEASE", argv(&[b"RESERVE.RELEASE", key])),
                    ("RESERVE.WAIT", argv(&[b"RESERVE.WAIT", key, h, b"1"])),
                    ("RESERVE.INFO", argv(&[b"RESERVE.INFO"])),
                    ("RESERVE.INFO", argv(&[b"RESERVE.INFO", key, b"x"])),
                    ("RESERVE.SETSTATE", argv(&[b"RESERVE.SETSTATE", key])),
                ];
                let (name, a) = cases.choose(rng).expect("case").clone();
                (a, arity(name))
            }
        })
    }
}

// ----- the test -----

struct Run<'a> {
    server: &'a Server,
    conns: Vec<Connection>,
    m: Model,
    rng: StdRng,
}

impl Run<'_> {
    fn conn_index(&mut self) -> usize {
        self.rng.gen_range(0..self.conns.len())
    }

    /// Sends one command from a random control connection and checks it.
    fn single(&mut self, a: Vec<Vec<u8>>, exp: Exp) {
        let ci = self.conn_index();
        self.m.note(format!("conn{ci}: {}", show(&a)));
        let reply = q(&mut self.conns[ci], &a);
        self.m
            .check(&exp, &reply, &format!("conn{ci}: {}", show(&a)));
        self.m.settle();
        self.m.finish_op();
    }

    fn op_command(&mut self) {
        let rng = &mut self.rng;
        let (a, exp) = match rng.gen_range(0..100) {
            0..=29 => self
                .m
                .gen_lock(rng, Ctx::Top, false)
                .expect("LOCK never blocks"),
            30..=49 => self.m.gen_renew(rng, Ctx::Top),
            50..=74 => self.m.gen_release(rng, Ctx::Top),
            75..=81 => self.m.gen_info(rng),
            82..=86 => self.m.gen_observe(rng, Ctx::Top),
            87..=95 => self.m.gen_del(rng),
            _ => self.m.gen_set_legacy(rng),
        };
        self.m.count("single commands");
        self.single(a, exp);
    }

    /// WAIT that the model says answers at once (free key, the holder
    /// itself, a hash).
    fn op_wait_now(&mut self) {
        for _ in 0..4 {
            if let Some((a, exp)) = self.m.gen_lock(&mut self.rng, Ctx::Top, true) {
                self.m.count("immediate WAITs");
                self.single(a, exp);
                return;
            }
        }
        self.op_command();
    }

    fn blockable_keys(&self) -> Vec<usize> {
        (0..RES_KEYS)
            .filter(|&k| {
                matches!(
                    self.m.keys[k].state,
                    KState::Held { .. } | KState::Legacy { .. }
                )
            })
            .collect()
    }

    /// A WAIT that blocks, in its own thread; it must show up last in the
    /// key's queue.
    fn op_block(&mut self, short_timeout: bool) {
        let keys = self.blockable_keys();
        let Some(&k) = keys.choose(&mut self.rng) else {
            return self.op_command();
        };
        if !short_timeout && self.m.queued_total() as usize >= MAX_WAITERS {
            return self.op_kill();
        }
        let holder = if !short_timeout && self.rng.gen_ratio(1, 6) {
            self.m.pick_holder(&mut self.rng, k)
        } else {
            self.m.next_name += 1;
            format!("w{}", self.m.next_name).into_bytes()
        };
        if !self.m.would_block(k, &holder) {
            return self.op_wait_now();
        }
        let (ttl, ttl_ms) = Model::pick_ttl(&mut self.rng);
        let timeout: &str = if short_timeout {
            [".05", "0.1", "0.15"].choose(&mut self.rng).expect("t")
        } else {
            ["0", "1000", "3600.5"].choose(&mut self.rng).expect("t")
        };
        let a = argv(&[
            b"RESERVE.WAIT",
            KEY_NAMES[k].as_bytes(),
            &holder,
            ttl.as_bytes(),
            timeout.as_bytes(),
        ]);
        self.m.note(format!("new waiter: {}", show(&a)));
        let (id, rx) = spawn_waiter(self.server, &a);
        self.m.c.waits_blocked += 1;
        let slot = self.m.waiters.len();
        self.m.waiters.push(WaiterSlot {
            holder: holder.clone(),
            id,
            key: k,
            ttl_ms,
            rx,
            queued: !short_timeout,
            granted_this_op: false,
            expect: None,
            done: false,
        });
        if short_timeout {
            self.m.c.wait_timeouts += 1;
            self.m.waiters[slot].expect = Some(Outcome::Zero);
            self.m.count("WAITs timed out");
            self.m.finish_op();
            return;
        }
        self.m.keys[k].queue.push_back(slot);
        self.m.count("WAITs blocked");
        let expected = self.m.queue_names(k);
        let name = KEY_NAMES[k];
        let c = &mut self.conns[0];
        let start = Instant::now();
        let last = loop {
            let last = q(c, &argv(&[b"RESERVE.INFO", name.as_bytes()]));
            if matches!(&last, Reply::Info(i) if i.queue == expected) {
                break last;
            }
            if start.elapsed() > DEADLINE {
                let shown: Vec<String> = expected.iter().map(|h| lossy(h)).collect();
                self.m.fail(format!(
                    "waiter {} never showed up queued on {name}: expected queue {shown:?}, \
                     RESERVE.INFO {last:?}",
                    lossy(&holder)
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let exp = self.m.info(k);
        self.m
            .check(&exp, &last, &format!("RESERVE.INFO {name} after queueing"));
        self.m.finish_op();
    }

    fn kill_argv(&mut self, w: usize) -> (Vec<Vec<u8>>, &'static str) {
        let id = self.m.waiters[w].id.to_string();
        // On Valkey a CLIENT UNBLOCK that races a grant in the same EXEC
        // lets the waiter keep the key (Redis 7.0 drops the grant): only
        // CLIENT KILL behaves the same on both, so Valkey runs use it.
        if on_valkey() {
            return (argv(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]), "KILL");
        }
        match self.rng.gen_range(0..3) {
            0 => (argv(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]), "KILL"),
            1 => (argv(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]), "UNBLOCK"),
            _ => (
                argv(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), b"ERROR"]),
                "ERROR",
            ),
        }
    }

    fn op_kill(&mut self) {
        let queued = self.m.queued_waiters();
        let Some(&w) = queued.choose(&mut self.rng) else {
            return self.op_block(false);
        };
        let (a, how) = self.kill_argv(w);
        self.m.kill(w, how);
        self.single(a, Exp::Int(1));
    }

    /// MULTI, 1-5 commands (WAIT = LOCK inside), EXEC.
    fn op_multi(&mut self) {
        let n = self.rng.gen_range(1..=5);
        let mut cmds = Vec::new();
        let mut exps = Vec::new();
        for _ in 0..n {
            let rng = &mut self.rng;
            let roll = rng.gen_range(0..100);
            let (a, exp) = match roll {
                0..=17 => self.m.gen_lock(rng, Ctx::Multi, false).expect("lock"),
                18..=27 => self.m.gen_lock(rng, Ctx::Multi, true).expect("wait"),
                28..=42 => self.m.gen_renew(rng, Ctx::Multi),
                43..=59 => self.m.gen_release(rng, Ctx::Multi),
                60..=67 => self.m.gen_info(rng),
                68..=71 => self.m.gen_observe(rng, Ctx::Multi),
                72..=83 => self.m.gen_del(rng),
                84..=87 => self.m.gen_set_legacy(rng),
                88..=93 => match self.m.gen_bad(rng, false) {
                    Some(x) => x,
                    None => self.m.gen_info(rng),
                },
                _ => {
                    let live = self.m.live_waiters();
                    match live.choose(rng) {
                        Some(&w) => {
                            let (a, how) = self.kill_argv(w);
                            self.m.kill(w, how);
                            (a, Exp::Int(1))
                        }
                        None => self.m.gen_info(&mut self.rng),
                    }
                }
            };
            cmds.push(a);
            exps.push(exp);
        }
        self.exec_multi(cmds, exps, "MULTI/EXEC blocks");
    }

    /// Sends MULTI, the commands, EXEC from a random control connection
    /// and checks every reply inside EXEC.
    fn exec_multi(&mut self, cmds: Vec<Vec<Vec<u8>>>, exps: Vec<Exp>, what: &'static str) {
        let ci = self.conn_index();
        let shown: Vec<String> = cmds.iter().map(|a| show(a)).collect();
        self.m
            .note(format!("conn{ci}: MULTI {} EXEC", shown.join(" ; ")));
        let c = &mut self.conns[ci];
        let r = q(c, &argv(&[b"MULTI"]));
        if r != Reply::Status("OK".into()) {
            self.m.fail(format!("MULTI answered {r:?}"));
        }
        for a in &cmds {
            let r = q(c, a);
            if r != Reply::Status("QUEUED".into()) {
                self.m.fail(format!("queueing {} answered {r:?}", show(a)));
            }
        }
        let reply = q(c, &argv(&[b"EXEC"]));
        self.m.count(what);
        self.m
            .check(&Exp::Array(exps), &reply, &format!("conn{ci}: EXEC"));
        self.m.settle();
        self.m.finish_op();
    }

    fn queued_keys(&self) -> Vec<usize> {
        (0..RES_KEYS)
            .filter(|&k| !self.m.keys[k].queue.is_empty())
            .collect()
    }

    /// In one EXEC: the holder releases (the oldest waiter is granted),
    /// then that waiter is killed or unblocked before its reply can go
    /// out. It must not keep the key: the next waiter gets it.
    fn op_grant_then_kill(&mut self) {
        let keys: Vec<usize> = self
            .queued_keys()
            .into_iter()
            .filter(|&k| matches!(self.m.keys[k].state, KState::Held { .. }))
            .collect();
        let Some(&k) = keys.choose(&mut self.rng) else {
            return self.op_block(false);
        };
        let KState::Held { holder, gid, .. } = self.m.keys[k].state.clone() else {
            unreachable!()
        };
        let t = self.m.grants[gid].token.expect("token of a held key");
        let head = self.m.keys[k].queue[0];
        let name = KEY_NAMES[k].as_bytes();
        let mut cmds = vec![argv(&[
            b"RESERVE.RELEASE",
            name,
            &holder,
            b"TOKEN",
            t.to_string().as_bytes(),
        ])];
        let mut exps = vec![self.m.release(k, &holder, Some(t))];
        if self.rng.gen_bool(0.5) {
            cmds.push(argv(&[b"RESERVE.INFO", name]));
            exps.push(self.m.info(k));
        }
        let (a, how) = self.kill_argv(head);
        self.m.kill(head, how);
        cmds.push(a);
        exps.push(Exp::Int(1));
        if self.rng.gen_bool(0.5) {
            let (a, e) = self
                .m
                .gen_lock(&mut self.rng, Ctx::Multi, false)
                .expect("lock");
            cmds.push(a);
            exps.push(e);
        }
        self.exec_multi(cmds, exps, "grant and kill in one EXEC");
    }

    /// A key with waiters is deleted and locked by a newcomer in the same
    /// MULTI or script: the oldest waiter gets it, the newcomer 0.
    fn op_no_barging(&mut self) {
        let keys = self.queued_keys();
        let Some(&k) = keys.choose(&mut self.rng) else {
            return self.op_block(false);
        };
        let head = self.m.keys[k].queue[0];
        let newcomer = if self.m.waiters[head].holder == POOL[0] {
            POOL[1]
        } else {
            POOL[0]
        };
        let name = KEY_NAMES[k].as_bytes();
        let (ttl, ttl_ms) = Model::pick_ttl(&mut self.rng);
        let e_del = self.m.del(k);
        let e_lock = self.m.lock(k, newcomer, ttl_ms);
        if self.rng.gen_bool(0.5) {
            let lock = if self.rng.gen_bool(0.5) {
                argv(&[b"RESERVE.LOCK", name, newcomer, ttl.as_bytes()])
            } else {
                argv(&[b"RESERVE.WAIT", name, newcomer, ttl.as_bytes(), b"0"])
            };
            self.exec_multi(
                vec![argv(&[b"DEL", name]), lock],
                vec![e_del, e_lock],
                "DEL then LOCK in one EXEC",
            );
        } else {
            let wait = self.rng.gen_bool(0.5);
            let script: &[u8] = if wait {
                b"redis.call('DEL', KEYS[1]); \
                  return redis.call('RESERVE.WAIT', KEYS[1], ARGV[1], ARGV[2], 0)"
            } else {
                b"redis.call('DEL', KEYS[1]); \
                  return redis.call('RESERVE.LOCK', KEYS[1], ARGV[1], ARGV[2])"
            };
            let a = argv(&[b"EVAL", script, b"1", name, newcomer, ttl.as_bytes()]);
            self.m.count("DEL then LOCK in one script");
            self.single(a, e_lock);
        }
    }

    /// EVAL of a script running 1-4 commands (never an error: a script
    /// stops at its first one) and returning their replies.
    fn op_eval(&mut self) {
        const SCRIPT: &str = "local out = {}\n\
            local i = 1\n\
            while i <= #ARGV do\n\
              local n = tonumber(ARGV[i])\n\
              local args = {}\n\
              for j = 1, n do args[j] = ARGV[i + j] end\n\
              out[#out + 1] = redis.call(unpack(args))\n\
              i = i + n + 1\n\
            end\n\
            return out";
        let usable: Vec<usize> = (0..RES_KEYS)
            .filter(|&k| !matches!(self.m.keys[k].state, KState::Hash))
            .collect();
        if usable.len() < RES_KEYS {
            // A key is a hash: a command on it would stop the script.
            return self.op_command();
        }
        let n = self.rng.gen_range(1..=4);
        let mut cmds = Vec::new();
        let mut exps = Vec::new();
        for _ in 0..n {
            let rng = &mut self.rng;
            let (a, exp) = match rng.gen_range(0..100) {
                0..=29 => self.m.gen_lock(rng, Ctx::Script, false).expect("lock"),
                30..=44 => self.m.gen_lock(rng, Ctx::Script, true).expect("wait"),
                45..=59 => self.m.gen_renew(rng, Ctx::Script),
                60..=84 => self.m.gen_release(rng, Ctx::Script),
                _ => self.m.gen_del(rng),
            };
            cmds.push(a);
            exps.push(exp);
        }
        let mut a = argv(&[b"EVAL", SCRIPT.as_bytes(), b"4", b"k0", b"k1", b"k2", b"k3"]);
        for c in &cmds {
            a.push(c.len().to_string().into_bytes());
            a.extend(c.iter().cloned());
        }
        let shown: Vec<String> = cmds.iter().map(|a| show(a)).collect();
        let ci = self.conn_index();
        self.m
            .note(format!("conn{ci}: EVAL [{}]", shown.join(" ; ")));
        let reply = q(&mut self.conns[ci], &a);
        self.m.count("EVAL scripts");
        self.m
            .check(&Exp::Array(exps), &reply, &format!("conn{ci}: EVAL"));
        self.m.settle();
        self.m.finish_op();
    }

    fn op_bad(&mut self) {
        match self.m.gen_bad(&mut self.rng, true) {
            Some((a, exp)) => {
                self.m.count("hostile commands");
                self.single(a, exp);
            }
            None => self.op_command(),
        }
    }

    /// MULTI DEL key; HSET key: its waiters get WRONGTYPE.
    fn op_to_hash(&mut self) {
        let keys = self.blockable_keys();
        let Some(&k) = keys.choose(&mut self.rng) else {
            return self.op_command();
        };
        let name = KEY_NAMES[k].as_bytes();
        let cmds = [argv(&[b"DEL", name]), argv(&[b"HSET", name, b"f", b"v"])];
        let e1 = self.m.del(k);
        self.m.keys[k].state = KState::Hash;
        let ci = self.conn_index();
        self.m
            .note(format!("conn{ci}: MULTI DEL {k}; HSET {k} EXEC"));
        let c = &mut self.conns[ci];
        assert_eq!(q(c, &argv(&[b"MULTI"])), Reply::Status("OK".into()));
        for a in &cmds {
            assert_eq!(q(c, a), Reply::Status("QUEUED".into()));
        }
        let reply = q(c, &argv(&[b"EXEC"]));
        self.m.count("keys turned into hashes");
        self.m.check(
            &Exp::Array(vec![e1, Exp::Int(1)]),
            &reply,
            &format!("conn{ci}: EXEC DEL+HSET"),
        );
        self.m.settle();
        self.m.finish_op();
    }

    /// FLUSHALL: every queued key goes to its oldest waiter.
    fn op_flushall(&mut self) {
        let ci = self.conn_index();
        self.m.note(format!("conn{ci}: FLUSHALL"));
        for k in 0..self.m.keys.len() {
            self.m.keys[k].state = KState::Free;
        }
        let reply = q(&mut self.conns[ci], &argv(&[b"FLUSHALL"]));
        self.m.count("FLUSHALLs");
        self.m.check(&Exp::Status("OK"), &reply, "FLUSHALL");
        self.m.settle();
        self.m.finish_op();
        let reply = q(
            &mut self.conns[ci],
            &argv(&[b"HSET", KEY_NAMES[SPARE].as_bytes(), b"f", b"v"]),
        );
        self.m.keys[SPARE].state = KState::Hash;
        self.m.check(&Exp::Int(1), &reply, "HSET spare:hash");
    }

    /// Shortens a holder's TTL to 0.1 s and waits for what the SPEC says
    /// happens at its expiry: the oldest waiter is granted (no earlier
    /// than the expiry), or the key is gone.
    fn op_expire(&mut self) {
        let keys = self.blockable_keys();
        let Some(&k) = keys.choose(&mut self.rng) else {
            return self.op_command();
        };
        let name = KEY_NAMES[k].as_bytes();
        let ci = self.conn_index();
        let (cmds, first) = match self.m.keys[k].state.clone() {
            KState::Held { holder, gid, .. } => {
                let t = self.m.grants[gid]
                    .token
                    .expect("a held grant's token is known");
                let e = self.m.renew(k, &holder, 100, Some(t));
                (
                    [
                        argv(&[
                            b"RESERVE.RENEW",
                            name,
                            &holder,
                            b"0.1",
                            b"TOKEN",
                            t.to_string().as_bytes(),
                        ]),
                        argv(&[b"PEXPIRETIME", name]),
                    ],
                    e,
                )
            }
            _ => (
                [
                    argv(&[b"PEXPIRE", name, b"100"]),
                    argv(&[b"PEXPIRETIME", name]),
                ],
                Exp::Int(1),
            ),
        };
        let was_reservation = matches!(self.m.keys[k].state, KState::Held { .. });
        self.m.note(format!(
            "conn{ci}: MULTI {} ; {} EXEC, then wait for the expiry",
            show(&cmds[0]),
            show(&cmds[1])
        ));
        let c = &mut self.conns[ci];
        assert_eq!(q(c, &argv(&[b"MULTI"])), Reply::Status("OK".into()));
        for a in &cmds {
            assert_eq!(q(c, a), Reply::Status("QUEUED".into()));
        }
        let reply = q(c, &argv(&[b"EXEC"]));
        self.m.check(
            &Exp::Array(vec![first, Exp::AnyInt]),
            &reply,
            &format!("conn{ci}: EXEC shorten TTL"),
        );
        let Reply::Array(items) = &reply else {
            unreachable!()
        };
        let Reply::Int(expire_at) = items[1] else {
            unreachable!()
        };
        self.m.finish_op();

        self.m.keys[k].state = KState::Free;
        if was_reservation {
            self.m.c.expirations += 1;
        }
        self.m.count("expiries");
        if self.m.keys[k].queue.is_empty() {
            let c = &mut self.conns[0];
            wait_until(DEADLINE, "the shortened reservation to expire", || {
                q(c, &argv(&[b"RESERVE.INFO", name])) == Reply::Nil
            });
            self.m.finish_op();
        } else {
            self.m.hand_off(k, true);
            self.m.finish_op();
            let exp = self.m.info(k);
            let reply = q(&mut self.conns[0], &argv(&[b"RESERVE.INFO", name]));
            self.m
                .check(&exp, &reply, "RESERVE.INFO after the expiry handoff");
            let KState::Held { gid, .. } = self.m.keys[k].state else {
                unreachable!()
            };
            let acquired = self.m.grants[gid].acquired.expect("bound by INFO");
            if acquired < expire_at {
                self.m.fail(format!(
                    "the waiter was granted {} at {acquired}, before the holder's expiry {expire_at}",
                    KEY_NAMES[k]
                ));
            }
            self.m.count("expiry handoffs");
        }
    }

    fn step(&mut self) {
        // The expiry and short-timeout steps wait ~0.1 s each: rare.
        match self.rng.gen_range(0..1000) {
            0..=309 => self.op_command(),
            310..=369 => self.op_wait_now(),
            370..=489 => self.op_block(false),
            490..=501 => self.op_block(true),
            502..=569 => self.op_kill(),
            570..=729 => self.op_multi(),
            730..=809 => self.op_eval(),
            810..=919 => self.op_bad(),
            920..=939 => self.op_to_hash(),
            940..=959 => self.op_grant_then_kill(),
            960..=979 => self.op_no_barging(),
            980..=991 => self.op_expire(),
            _ => self.op_flushall(),
        }
    }
}

#[test]
fn random_commands_agree_with_the_model() {
    let ops = env_u64("RESERVATION_MODEL_OPS", 3000);
    let seed = env_u64(
        "RESERVATION_MODEL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    eprintln!("model: {ops} operations, seed {seed} (RESERVATION_MODEL_SEED={seed} to replay)");
    let started = Instant::now();

    let mut server = Server::start();
    let mut conns: Vec<Connection> = (0..3).map(|_| server.conn()).collect();
    conns.push(server.conn_resp3());
    for c in &mut conns {
        // A command that blocks by mistake fails the test, not hangs it.
        c.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    }
    let start_ms = server_time_ms(&mut conns[0]);
    assert_eq!(
        q(&mut conns[0], &argv(&[b"HSET", b"spare:hash", b"f", b"v"])),
        Reply::Int(1)
    );
    let model = Model {
        seed,
        keys: KEY_NAMES
            .iter()
            .enumerate()
            .map(|(i, &name)| KeyModel {
                name,
                state: if i == SPARE {
                    KState::Hash
                } else {
                    KState::Free
                },
                queue: VecDeque::new(),
            })
            .collect(),
        grants: Vec::new(),
        c: Counters::default(),
        max_token: 0,
        last_token_exact: true,
        min_token: ((start_ms / 1000) as u64) << 20,
        start_ms,
        op_grants: Vec::new(),
        waiters: Vec::new(),
        next_name: 0,
        op_no: 0,
        log: VecDeque::new(),
        tally: Vec::new(),
    };
    let mut run = Run {
        server: &server,
        conns,
        m: model,
        rng: StdRng::seed_from_u64(seed),
    };
    run.m.check_all(&mut run.conns[0]);

    for i in 1..=ops {
        run.m.op_no = i;
        run.step();
        if i % CHECK_EVERY == 0 {
            run.m.check_all(&mut run.conns[0]);
        }
    }

    // Let every remaining waiter go, then one last comparison.
    run.m.op_no += 1;
    for w in run.m.queued_waiters() {
        let id = run.m.waiters[w].id.to_string();
        run.m.kill(w, "KILL");
        let reply = q(
            &mut run.conns[0],
            &argv(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]),
        );
        run.m.check(&Exp::Int(1), &reply, "final CLIENT KILL");
    }
    run.m.finish_op();
    run.m.check_all(&mut run.conns[0]);
    assert_eq!(run.m.queued_total(), 0);

    let grants_seen = run.m.grants.iter().filter(|g| g.token.is_some()).count();
    let mut tally = run.m.tally.clone();
    tally.sort();
    let summary: Vec<String> = tally.iter().map(|(n, c)| format!("{n} {c}")).collect();
    eprintln!(
        "model: {ops} operations agreed with the model in {:?}: {} grants ({grants_seen} tokens \
         checked), counters {:?}; {}",
        started.elapsed(),
        run.m.grants.len(),
        run.m.c,
        summary.join(", ")
    );

    let mut c = server.conn();
    assert_eq!(q(&mut c, &argv(&[b"PING"])), Reply::Status("PONG".into()));
    drop(run);
    assert!(server.is_alive(), "server died:\n{}", server.log());
    assert!(
        !server.log().contains("panicked"),
        "a command panicked:\n{}",
        server.log()
    );
}

/// The suite runs against Valkey when RESERVATION_SERVER names it.
fn on_valkey() -> bool {
    std::env::var("RESERVATION_SERVER").is_ok_and(|s| s.contains("valkey"))
}
