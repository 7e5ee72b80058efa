//! Soak with an external checker (SPEC sections 4 and 5): many clients,
//! each on its own connection, queue with `RESERVE.WAIT` on a few keys
//! with short TTLs; most renew while they "work" and then release, some
//! stop renewing and let their reservation expire. Every grant and every
//! wait is logged with server-side times, and once the clients stop a
//! checker verifies the log.
//!
//! What each client logs for a grant (key, holder, token):
//! - `start`: the grant's `acquired_at_ms`, read with `RESERVE.INFO` right
//!   after the grant (in one MULTI with `PEXPIRETIME` and `TIME`), valid
//!   only when INFO still shows this token (else the grant is logged with
//!   an unknown start: it had already ended);
//! - "held at" instants: the server `TIME` read in the same MULTI as that
//!   INFO, as each successful `RENEW ... TOKEN t` (TIME first in the
//!   MULTI), and as the successful `RELEASE ... TOKEN t` (same);
//! - its end: released at that TIME, or expired at the last expiry it is
//!   known to have had (`PEXPIRETIME` read with the grant or its last
//!   successful renewal), for holders that stopped renewing on purpose and
//!   for those whose RENEW or RELEASE answered 0 (lost it by being late).
//!   Nobody deletes keys here, so a reservation ends only by RELEASE or at
//!   exactly that expiry.
//!
//! A sampler thread reads, in one MULTI every ~20 ms, `TIME` and
//! `RESERVE.INFO` of every key: who holds it (another "held at" instant for
//! that grant) and the queue of waiters, oldest first.
//!
//! The checker verifies, using server times and tokens only (never client
//! clocks):
//! (a) tokens are unique, and per key they increase in grant order: sorted
//!     by token, the known `acquired_at_ms` never go back;
//! (b) no overlap: every grant with a known start began no earlier than
//!     the latest instant any lower-token grant of the key is known to have
//!     been held (renewal, release, sampled holder, or its expiry);
//! (c) FIFO among waiters: (1) queue order is stable: two waiters never
//!     appear in opposite orders in two samples; (2) no barging: if waiter A
//!     was queued on a key in a sample taken at server time T and was later
//!     granted, every grant of that key with a lower token than A's that
//!     started after T went to a waiter queued ahead of A in that sample;
//!     (3) A's own grant started no earlier than T. (A waiter that timed out
//!     is not checked against grants made after it left: when exactly it
//!     left is not known in server time.)
//! (d) no starvation beyond the timeout: every WAIT returns within
//!     `timeout + margin`, and a 0 (timeout) only after at least `timeout`;
//! plus: a RENEW or RELEASE never succeeds (server TIME in the same MULTI)
//!     more than 1 s after the reservation's known expiry (one working
//!     holder in ten pauses past its TTL once to exercise this); every
//!     token the sampler saw holding a key belongs to a logged grant with
//!     the same holder (no grant nobody received); and at the end
//!     `INFO reservation` agrees with the log: grants = logged grants,
//!     releases = acknowledged releases, expirations = grants - releases,
//!     renew_failures + release_failures = RENEW/RELEASE answered 0,
//!     wait_timeouts = WAITs answered 0, waiters = 0, held = 0.
//!
//! Environment: `RESERVATION_SOAK_SECS` (default 15), `RESERVATION_SOAK_CLIENTS`
//! (50), `RESERVATION_SOAK_KEYS` (10), `RESERVATION_SOAK_MARGIN_SECS` (5),
//! `RESERVATION_SOAK_SEED` (default from the clock; printed).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::cmd::text;
use testkit::redis::{self, Connection, Value};
use testkit::{error_text, reservation_info, wait_until, Server, DEADLINE};

/// RESERVE.WAIT timeout.
const WAIT_TIMEOUT_MS: u64 = 2_000;
/// One grant in this many is abandoned: never renewed nor released.
const ABANDON_ONE_IN: u32 = 5;
/// One working holder in this many pauses past its TTL once.
const STALL_ONE_IN: u32 = 10;
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn key_name(k: usize) -> String {
    format!("soak:{k}")
}

// ----- logs -----

#[derive(Clone, Debug, PartialEq)]
enum End {
    /// RELEASE ... TOKEN t answered 1; the server time read just before
    /// it in the same MULTI.
    Released { at: i64 },
    /// Ended at this expiry (the last one it is known to have had).
    Expired { at: i64 },
    /// Lost before it could even be read back: nothing is known.
    Unknown,
}

#[derive(Clone, Debug)]
struct Grant {
    key: usize,
    holder: String,
    token: u64,
    start: Option<i64>,
    /// The latest server time at which it is known to have been held.
    held_at: Option<i64>,
    end: End,
    abandoned: bool,
    renewals: u32,
    /// RENEW or RELEASE answered 0: the holder was late.
    lost: bool,
}

impl Grant {
    /// Latest instant it certainly still held the key.
    fn held_until(&self) -> Option<i64> {
        let end = match self.end {
            End::Released { at } | End::Expired { at } => Some(at),
            End::Unknown => None,
        };
        end.max(self.held_at)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum WaitOutcome {
    Granted(u64),
    TimedOut,
    Failed(String),
}

#[derive(Clone, Debug)]
struct WaitRec {
    key: usize,
    holder: String,
    elapsed: Duration,
    outcome: WaitOutcome,
}

#[derive(Clone, Debug)]
struct Snapshot {
    at: i64,
    holders: Vec<Option<(String, u64)>>,
    queues: Vec<Vec<String>>,
}

// ----- talking to the server -----

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn time_ms(v: &Value) -> i64 {
    match v {
        Value::Array(parts) if parts.len() == 2 => {
            let secs: i64 = text(&parts[0]).parse().expect("TIME seconds");
            let micros: i64 = text(&parts[1]).parse().expect("TIME micros");
            secs * 1000 + micros / 1000
        }
        other => panic!("TIME answered {other:?}"),
    }
}

/// RESERVE.INFO (RESP2): holder, token, acquired_at_ms and queue.
struct KeyInfo {
    holder: String,
    token: u64,
    acquired_at_ms: i64,
    queue: Vec<String>,
}

fn key_info(v: &Value) -> Option<KeyInfo> {
    let items = match v {
        Value::Nil => return None,
        Value::Array(items) if items.len() == 24 => items,
        other => panic!("RESERVE.INFO answered {other:?}"),
    };
    let field = |name: &str| -> &Value {
        items
            .chunks(2)
            .find(|p| text(&p[0]) == name)
            .map(|p| &p[1])
            .unwrap_or_else(|| panic!("RESERVE.INFO lacks {name}: {items:?}"))
    };
    let queue = match field("queue") {
        Value::Array(q) => q.iter().map(text).collect(),
        other => panic!("queue is {other:?}"),
    };
    Some(KeyInfo {
        holder: text(field("holder")),
        token: int(field("token")) as u64,
        acquired_at_ms: int(field("acquired_at_ms")),
        queue,
    })
}

/// MULTI, the commands, EXEC (one round trip): the replies inside EXEC.
fn atomic(c: &mut Connection, cmds: &[&[&str]]) -> Vec<Value> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for argv in cmds {
        let cmd = pipe.cmd(argv[0]);
        for a in &argv[1..] {
            cmd.arg(*a);
        }
    }
    pipe.query::<Vec<Value>>(c)
        .unwrap_or_else(|e| panic!("MULTI {cmds:?}: {}", error_text(&e)))
}

// ----- one client -----

struct ClientLog {
    grants: Vec<Grant>,
    waits: Vec<WaitRec>,
}

fn run_client(
    id: usize,
    server_url: String,
    keys: usize,
    stop_at: Instant,
    seed: u64,
) -> ClientLog {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut conn = redis::Client::open(server_url)
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("client {id}: connect: {e}"));
    // A WAIT that is never answered fails the test instead of hanging it.
    conn.set_read_timeout(Some(
        Duration::from_millis(WAIT_TIMEOUT_MS) + Duration::from_secs(60),
    ))
    .expect("read timeout");
    let timeout = format!("{}.{:03}", WAIT_TIMEOUT_MS / 1000, WAIT_TIMEOUT_MS % 1000);
    let mut log = ClientLog {
        grants: Vec::new(),
        waits: Vec::new(),
    };
    let mut n = 0u64;
    while Instant::now() < stop_at {
        n += 1;
        let k = rng.gen_range(0..keys);
        let key = key_name(k);
        let holder = format!("c{id}-{n}");
        let ttl_ms: u64 = rng.gen_range(200..=500);
        let ttl = format!("0.{ttl_ms:03}");
        let sent = Instant::now();
        let reply = redis::cmd("RESERVE.WAIT")
            .arg(&key)
            .arg(&holder)
            .arg(&ttl)
            .arg(&timeout)
            .query::<i64>(&mut conn);
        let elapsed = sent.elapsed();
        let outcome = match reply {
            Ok(0) => WaitOutcome::TimedOut,
            Ok(t) if t > 0 => WaitOutcome::Granted(t as u64),
            Ok(t) => WaitOutcome::Failed(format!("answered {t}")),
            Err(e) => WaitOutcome::Failed(error_text(&e)),
        };
        log.waits.push(WaitRec {
            key: k,
            holder: holder.clone(),
            elapsed,
            outcome: outcome.clone(),
        });
        let token = match outcome {
            WaitOutcome::Granted(t) => t,
            WaitOutcome::TimedOut => continue,
            // The checker reports it; this connection may be unusable.
            WaitOutcome::Failed(_) => break,
        };
        let token_s = token.to_string();
        let mut grant = Grant {
            key: k,
            holder: holder.clone(),
            token,
            start: None,
            held_at: None,
            end: End::Unknown,
            abandoned: false,
            renewals: 0,
            lost: false,
        };
        let read = atomic(
            &mut conn,
            &[&["RESERVE.INFO", &key], &["PEXPIRETIME", &key], &["TIME"]],
        );
        let mut expire = None;
        if let Some(info) = key_info(&read[0]) {
            if info.token == token {
                assert_eq!(
                    info.holder, holder,
                    "token {token} on {key} shows another holder"
                );
                grant.start = Some(info.acquired_at_ms);
                grant.held_at = Some(time_ms(&read[2]));
                expire = Some(int(&read[1]));
            }
        }
        let Some(mut expire) = expire else {
            // Already gone (this thread was late): nothing more to learn.
            grant.lost = true;
            log.grants.push(grant);
            continue;
        };
        if rng.gen_ratio(1, ABANDON_ONE_IN) {
            grant.abandoned = true;
            grant.end = End::Expired { at: expire };
            log.grants.push(grant);
            continue;
        }
        // "Work", renewing every third of the TTL, then release. One in
        // STALL_ONE_IN stalls past its TTL before its first renewal (a
        // holder paused too long): its RENEW must find it gone.
        let stall = rng.gen_ratio(1, STALL_ONE_IN);
        let mut work_ms = rng.gen_range(20..=800);
        if stall {
            work_ms += ttl_ms + 500;
        }
        let work_until = Instant::now() + Duration::from_millis(work_ms);
        let period = Duration::from_millis(ttl_ms / 3);
        let mut first = true;
        loop {
            let left = work_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if stall && first {
                std::thread::sleep(Duration::from_millis(ttl_ms + 300));
            } else {
                std::thread::sleep(left.min(period));
            }
            first = false;
            if Instant::now() >= work_until {
                break;
            }
            let r = atomic(
                &mut conn,
                &[
                    &["TIME"],
                    &["RESERVE.RENEW", &key, &holder, &ttl, "TOKEN", &token_s],
                    &["PEXPIRETIME", &key],
                ],
            );
            if int(&r[1]) == 1 {
                let at = time_ms(&r[0]);
                // Redis judges expiry by the time EXEC started, a little
                // before TIME ran: a whole second of slack.
                assert!(
                    at <= expire + 1000,
                    "{key}: {holder} (token {token}) renewed at {at}, long after its expiry {expire}"
                );
                grant.held_at = Some(at);
                expire = int(&r[2]);
                grant.renewals += 1;
            } else {
                grant.lost = true;
                break;
            }
        }
        if !grant.lost {
            let r = atomic(
                &mut conn,
                &[
                    &["TIME"],
                    &["RESERVE.RELEASE", &key, &holder, "TOKEN", &token_s],
                ],
            );
            if int(&r[1]) == 1 {
                let at = time_ms(&r[0]);
                assert!(
                    at <= expire + 1000,
                    "{key}: {holder} (token {token}) released at {at}, long after its expiry {expire}"
                );
                grant.held_at = Some(at);
                grant.end = End::Released { at };
            } else {
                grant.lost = true;
            }
        }
        if grant.lost {
            grant.end = End::Expired { at: expire };
        }
        log.grants.push(grant);
    }
    log
}

// ----- the sampler -----

fn run_sampler(mut conn: Connection, keys: usize, stop: Arc<AtomicBool>) -> Vec<Snapshot> {
    let names: Vec<String> = (0..keys).map(key_name).collect();
    let mut snaps = Vec::new();
    // Bounded: the clients stop by themselves and then set `stop`.
    let give_up = Instant::now() + Duration::from_secs(24 * 3600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        let mut cmds: Vec<Vec<&str>> = vec![vec!["TIME"]];
        for n in &names {
            cmds.push(vec!["RESERVE.INFO", n]);
        }
        let cmds: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
        let r = atomic(&mut conn, &cmds);
        let at = time_ms(&r[0]);
        let mut holders = Vec::with_capacity(keys);
        let mut queues = Vec::with_capacity(keys);
        for v in &r[1..] {
            match key_info(v) {
                Some(i) => {
                    holders.push(Some((i.holder, i.token)));
                    queues.push(i.queue);
                }
                None => {
                    holders.push(None);
                    queues.push(Vec::new());
                }
            }
        }
        snaps.push(Snapshot {
            at,
            holders,
            queues,
        });
        std::thread::sleep(SAMPLE_EVERY);
    }
    snaps
}

// ----- the checker -----

#[derive(Default, Debug)]
struct Figures {
    grants: u64,
    grants_with_start: u64,
    released: u64,
    abandoned: u64,
    lost_late: u64,
    /// RENEW or RELEASE answered 0.
    refused: u64,
    unknown: u64,
    renewals: u64,
    waits: u64,
    wait_timeouts: u64,
    overlap_checks: u64,
    fifo_order_checks: u64,
    fifo_barging_checks: u64,
    snapshots: u64,
    longest_queue: usize,
    longest_wait: Duration,
}

fn check(
    grants: &mut [Grant],
    waits: &[WaitRec],
    snaps: &[Snapshot],
    keys: usize,
    margin: Duration,
) -> Figures {
    let mut f = Figures {
        grants: grants.len() as u64,
        waits: waits.len() as u64,
        snapshots: snaps.len() as u64,
        ..Figures::default()
    };

    // Every WAIT answered a token or 0.
    for w in waits {
        if let WaitOutcome::Failed(e) = &w.outcome {
            panic!("WAIT {} {} failed: {e}", key_name(w.key), w.holder);
        }
    }

    // Tokens are unique; index grants by token.
    let mut by_token: HashMap<u64, usize> = HashMap::new();
    for (i, g) in grants.iter().enumerate() {
        if let Some(j) = by_token.insert(g.token, i) {
            panic!("token {} issued twice: {:?} and {g:?}", g.token, grants[j]);
        }
    }

    // Samples: every holder seen is a logged grant; it was held then.
    for s in snaps {
        for (k, h) in s.holders.iter().enumerate() {
            let Some((holder, token)) = h else { continue };
            let Some(&i) = by_token.get(token) else {
                panic!(
                    "{} was held by {holder} with token {token} at {}, a grant no client received",
                    key_name(k),
                    s.at
                );
            };
            let g = &mut grants[i];
            assert_eq!(
                (&g.holder, g.key),
                (holder, k),
                "token {token}: the sample and the log disagree"
            );
            g.held_at = g.held_at.max(Some(s.at));
            if let Some(start) = g.start {
                assert!(
                    start <= s.at,
                    "token {token} held at {} but acquired at {start}",
                    s.at
                );
            }
        }
    }

    // (a) and (b), per key in token order.
    let mut per_key: Vec<Vec<usize>> = vec![Vec::new(); keys];
    for (i, g) in grants.iter().enumerate() {
        per_key[g.key].push(i);
    }
    for list in &mut per_key {
        list.sort_by_key(|&i| grants[i].token);
    }
    for (k, list) in per_key.iter().enumerate() {
        let mut last_start: Option<(i64, u64)> = None;
        let mut held: Option<(i64, u64)> = None;
        for &i in list {
            let g = &grants[i];
            if let Some(start) = g.start {
                if let Some((prev, token)) = last_start {
                    assert!(
                        start >= prev,
                        "{}: token {} acquired at {start}, before token {token} (acquired at {prev})",
                        key_name(k),
                        g.token
                    );
                }
                if let Some((until, token)) = held {
                    f.overlap_checks += 1;
                    assert!(
                        start >= until,
                        "{}: token {} ({}) acquired at {start} while token {token} was still \
                         held at {until}: two holders at once\n{:#?}",
                        key_name(k),
                        g.token,
                        g.holder,
                        list.iter()
                            .map(|&j| &grants[j])
                            .filter(|x| x.token == token || x.token == g.token)
                            .collect::<Vec<_>>()
                    );
                }
                last_start = Some((start, g.token));
            }
            if let Some(until) = g.held_until() {
                if held.is_none_or(|(h, _)| until > h) {
                    held = Some((until, g.token));
                }
            }
        }
    }

    // (c) FIFO.
    let outcome: HashMap<&str, &WaitOutcome> = waits
        .iter()
        .map(|w| (w.holder.as_str(), &w.outcome))
        .collect();
    for (k, list) in per_key.iter().enumerate() {
        // (1) stable order: rank = (first sample seen, position in it).
        let mut rank: HashMap<&str, (usize, usize)> = HashMap::new();
        for (si, s) in snaps.iter().enumerate() {
            let q = &s.queues[k];
            f.longest_queue = f.longest_queue.max(q.len());
            for (pos, h) in q.iter().enumerate() {
                rank.entry(h.as_str()).or_insert((si, pos));
            }
            for pair in q.windows(2) {
                f.fifo_order_checks += 1;
                assert!(
                    rank[pair[0].as_str()] < rank[pair[1].as_str()],
                    "{}: queue order changed: {} now ahead of {} (sample at {}: {q:?})",
                    key_name(k),
                    pair[0],
                    pair[1],
                    s.at
                );
            }
        }
        // (2), (3): no grant goes past a waiter queued ahead of it.
        for s in snaps {
            let q = &s.queues[k];
            for (j, a) in q.iter().enumerate() {
                let Some(WaitOutcome::Granted(ta)) = outcome.get(a.as_str()) else {
                    continue;
                };
                let pos = list
                    .binary_search_by_key(ta, |&i| grants[i].token)
                    .unwrap_or_else(|_| {
                        panic!("{a}'s token {ta} is not a grant of {}", key_name(k))
                    });
                if let Some(start) = grants[list[pos]].start {
                    assert!(
                        start >= s.at,
                        "{}: {a} granted at {start}, yet queued in the sample at {}",
                        key_name(k),
                        s.at
                    );
                }
                let ahead: HashSet<&str> = q[..j].iter().map(String::as_str).collect();
                for &i in list[..pos].iter().rev() {
                    let g = &grants[i];
                    match g.start {
                        Some(start) if start <= s.at => break,
                        Some(_) => {
                            f.fifo_barging_checks += 1;
                            assert!(
                                ahead.contains(g.holder.as_str()),
                                "{}: {} (token {}) was granted at {:?}, after the sample at {} \
                                 where {a} (granted later, token {ta}) was queued ahead of it: \
                                 queue then {q:?}",
                                key_name(k),
                                g.holder,
                                g.token,
                                g.start,
                                s.at
                            );
                        }
                        None => {}
                    }
                }
            }
        }
    }

    // (d) nobody waits beyond the timeout; a 0 comes only after it.
    let timeout = Duration::from_millis(WAIT_TIMEOUT_MS);
    for w in waits {
        f.longest_wait = f.longest_wait.max(w.elapsed);
        assert!(
            w.elapsed <= timeout + margin,
            "WAIT {} {} took {:?}, beyond its {timeout:?} timeout + {margin:?}: {:?}",
            key_name(w.key),
            w.holder,
            w.elapsed,
            w.outcome
        );
        if w.outcome == WaitOutcome::TimedOut {
            f.wait_timeouts += 1;
            assert!(
                w.elapsed + Duration::from_millis(1) >= timeout,
                "WAIT {} {} answered 0 after {:?}, before its {timeout:?} timeout",
                key_name(w.key),
                w.holder,
                w.elapsed
            );
        }
    }

    for g in grants.iter() {
        f.renewals += u64::from(g.renewals);
        if g.start.is_some() {
            f.grants_with_start += 1;
        }
        match g.end {
            End::Released { .. } => f.released += 1,
            End::Unknown => f.unknown += 1,
            End::Expired { .. } if g.abandoned => f.abandoned += 1,
            End::Expired { .. } => {}
        }
        if g.lost {
            f.lost_late += 1;
            if g.end != End::Unknown {
                f.refused += 1;
            }
        }
    }
    f
}

#[test]
fn soak_with_an_external_checker() {
    let secs = env_u64("RESERVATION_SOAK_SECS", 15);
    let clients = env_u64("RESERVATION_SOAK_CLIENTS", 50) as usize;
    let keys = env_u64("RESERVATION_SOAK_KEYS", 10) as usize;
    let margin = Duration::from_secs(env_u64("RESERVATION_SOAK_MARGIN_SECS", 5));
    let seed = env_u64(
        "RESERVATION_SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    assert!(clients >= 1 && keys >= 1);
    eprintln!(
        "soak: {clients} clients, {keys} keys, {secs} s, seed {seed} \
         (RESERVATION_SOAK_SEED={seed} to replay the clients' choices)"
    );
    let started = Instant::now();
    let mut server = Server::start();
    let mut ctl = server.conn();

    let stop_at = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let conn = server.conn();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || run_sampler(conn, keys, stop))
    };
    let handles: Vec<_> = (0..clients)
        .map(|id| {
            let url = server.url();
            std::thread::Builder::new()
                .name(format!("soak-client-{id}"))
                .spawn(move || run_client(id, url, keys, stop_at, seed))
                .expect("spawn client")
        })
        .collect();
    let mut grants = Vec::new();
    let mut waits = Vec::new();
    let mut panicked = Vec::new();
    for (id, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(log) => {
                grants.extend(log.grants);
                waits.extend(log.waits);
            }
            Err(e) => panicked.push(format!(
                "client {id}: {}",
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let snaps = sampler.join().expect("sampler");
    assert!(panicked.is_empty(), "clients failed: {panicked:#?}");
    let ran = started.elapsed();

    // Every reservation left is one an abandoning client let go: it
    // expires (EXISTS makes Redis notice right away).
    wait_until(DEADLINE, "every reservation released or expired", || {
        for k in 0..keys {
            let _: i64 = redis::cmd("EXISTS")
                .arg(key_name(k))
                .query(&mut ctl)
                .expect("EXISTS");
        }
        reservation_info(&mut ctl)["held"] == 0
    });
    let stats = reservation_info(&mut ctl);

    let f = check(&mut grants, &waits, &snaps, keys, margin);
    eprintln!(
        "soak: ran {ran:?}, {} snapshots; {} WAITs: {} grants ({} handoffs to a blocked \
         waiter), {} timed out; {} grants with a known start; ends: {} released, {} abandoned \
         and expired, {} lost by a late holder (of which {} unknown); {} renewals; checks: \
         {} overlap pairs, {} queue-order pairs, {} FIFO/no-barging pairs; longest queue \
         {}, longest WAIT {:?}; server: {stats:?}",
        f.snapshots,
        f.waits,
        f.grants,
        stats["handoffs"],
        f.wait_timeouts,
        f.grants_with_start,
        f.released,
        f.abandoned,
        f.lost_late,
        f.unknown,
        f.renewals,
        f.overlap_checks,
        f.fifo_order_checks,
        f.fifo_barging_checks,
        f.longest_queue,
        f.longest_wait,
    );
    assert!(f.grants > 0, "no grant at all");
    assert!(f.overlap_checks > 0, "nothing was checked for overlap");

    // The server's own counters agree with the log.
    assert_eq!(stats["waiters"], 0, "{stats:?}");
    assert_eq!(stats["held"], 0, "{stats:?}");
    assert_eq!(stats["grants"], f.grants, "grants: {stats:?}");
    assert_eq!(stats["releases"], f.released, "releases: {stats:?}");
    assert_eq!(
        stats["expirations"],
        f.grants - f.released,
        "every grant not released expired: {stats:?}"
    );
    assert_eq!(stats["wait_timeouts"], f.wait_timeouts, "{stats:?}");
    assert_eq!(
        stats["renew_failures"] + stats["release_failures"],
        f.refused,
        "RENEW/RELEASE answered 0: {stats:?}"
    );
    assert_eq!(stats["renewals"], f.renewals, "{stats:?}");
    assert!(stats["handoffs"] <= f.grants, "{stats:?}");
    let max_token = grants.iter().map(|g| g.token).max().unwrap_or(0);
    assert_eq!(stats["last_token"], max_token, "{stats:?}");

    let pong: String = redis::cmd("PING").query(&mut ctl).expect("PING");
    assert_eq!(pong, "PONG");
    assert!(server.is_alive(), "server died:\n{}", server.log());
    assert!(
        !server.log().contains("panicked"),
        "a command panicked:\n{}",
        server.log()
    );
}

// ----- the checker itself can fail -----

fn grant(key: usize, holder: &str, token: u64, start: i64, end: End) -> Grant {
    Grant {
        key,
        holder: holder.into(),
        token,
        start: Some(start),
        held_at: Some(start),
        end,
        abandoned: false,
        renewals: 0,
        lost: false,
    }
}

fn waited(holder: &str, outcome: WaitOutcome, ms: u64) -> WaitRec {
    WaitRec {
        key: 0,
        holder: holder.into(),
        elapsed: Duration::from_millis(ms),
        outcome,
    }
}

fn sample(at: i64, holder: Option<(&str, u64)>, queue: &[&str]) -> Snapshot {
    Snapshot {
        at,
        holders: vec![holder.map(|(h, t)| (h.to_string(), t))],
        queues: vec![queue.iter().map(|s| s.to_string()).collect()],
    }
}

fn good_log() -> (Vec<Grant>, Vec<WaitRec>) {
    let grants = vec![
        grant(0, "a", 10, 1000, End::Released { at: 1100 }),
        grant(0, "b", 11, 1100, End::Expired { at: 1400 }),
        grant(0, "c", 12, 1401, End::Released { at: 1500 }),
    ];
    let waits = vec![
        waited("a", WaitOutcome::Granted(10), 1),
        waited("b", WaitOutcome::Granted(11), 90),
        waited("c", WaitOutcome::Granted(12), 390),
        waited("d", WaitOutcome::TimedOut, 2000),
    ];
    (grants, waits)
}

#[test]
fn checker_accepts_a_correct_log() {
    let (mut grants, waits) = good_log();
    let snaps = vec![
        sample(1050, Some(("a", 10)), &["b", "c"]),
        sample(1200, Some(("b", 11)), &["c", "d"]),
    ];
    let f = check(&mut grants, &waits, &snaps, 1, Duration::from_secs(1));
    assert_eq!(f.overlap_checks, 2);
    assert!(f.fifo_barging_checks >= 1);
}

#[test]
#[should_panic(expected = "two holders at once")]
fn checker_detects_an_overlap() {
    let (mut grants, waits) = good_log();
    // c acquired before b's reservation expired.
    grants[2].start = Some(1399);
    check(&mut grants, &waits, &[], 1, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "two holders at once")]
fn checker_detects_an_overlap_seen_by_the_sampler() {
    let (mut grants, waits) = good_log();
    grants[1].end = End::Unknown;
    let snaps = vec![sample(1450, Some(("b", 11)), &[])];
    check(&mut grants, &waits, &snaps, 1, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "before token")]
fn checker_detects_tokens_out_of_grant_order() {
    let (mut grants, waits) = good_log();
    grants[1].start = Some(900);
    grants[1].held_at = Some(900);
    check(&mut grants, &waits, &[], 1, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "issued twice")]
fn checker_detects_a_repeated_token() {
    let (mut grants, waits) = good_log();
    grants[2].token = 11;
    check(&mut grants, &waits, &[], 1, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "queued ahead of it")]
fn checker_detects_barging() {
    let (mut grants, waits) = good_log();
    // c was queued ahead of b, yet b was granted first.
    let snaps = vec![sample(1050, Some(("a", 10)), &["c", "b"])];
    check(&mut grants, &waits, &snaps, 1, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "queue order changed")]
fn checker_detects_a_reordered_queue() {
    let (mut grants, waits) = good_log();
    let snaps = vec![
        sample(1050, Some(("a", 10)), &["b", "c"]),
        sample(1060, Some(("a", 10)), &["c", "b"]),
    ];
    check(&mut grants, &waits, &snaps, 1, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "a grant no client received")]
fn checker_detects_a_phantom_grant() {
    let (mut grants, waits) = good_log();
    let snaps = vec![sample(1050, Some(("ghost", 99)), &[])];
    check(&mut grants, &waits, &snaps, 1, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "before its")]
fn checker_detects_an_early_timeout() {
    let (mut grants, mut waits) = good_log();
    waits[3].elapsed = Duration::from_millis(1500);
    check(&mut grants, &waits, &[], 1, Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "beyond its")]
fn checker_detects_a_starved_waiter() {
    let (mut grants, mut waits) = good_log();
    waits[2].elapsed = Duration::from_millis(3500);
    check(&mut grants, &waits, &[], 1, Duration::from_secs(1));
}
