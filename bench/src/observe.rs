//! Section 6: following a leader key. A follower wants to know, at every
//! moment, who holds a key and under which fencing token. Two ways:
//!
//! - `RESERVE.OBSERVE key token timeout` in a loop, re-issued with the
//!   token of the last reply: it answers at once when the key's grant token
//!   differs from the one given, else blocks until it does.
//! - Keyspace notifications (`notify-keyspace-events Kd`, set here with
//!   CONFIG SET): subscribe to `__keyspace@0__:<key>`, and on each message
//!   read the key with `RESERVE.INFO` (a subscribed RESP2 connection cannot
//!   send commands, so this follower has two connections).
//!
//! Three parts:
//!
//! 1. Notice latency: a change is sent (a RELEASE, a LOCK on the free key,
//!    or a RELEASE that hands the key to a waiting WAIT) and the follower
//!    reads until it knows the new (holder, token). Timed in one thread that
//!    plays both sides, as in section 2: t0, write the change, read the
//!    follower's socket(s), t1, then read the change's own reply.
//! 2. Changes missed across a reconnect: the follower's connections are
//!    closed, the leader changes hands several times, the follower
//!    connects again. What does each mechanism tell it?
//! 3. A crowd on one key: 1,000 to 10,000 blocked OBSERVEs, then one
//!    change, against as many keyspace subscribers (which then read the key)
//!    and as many subscribers of one PUBLISH (the reference: pub/sub's own
//!    fan-out, no read). Read by one thread through epoll.

use std::thread;
use std::time::{Duration, Instant};

use crate::common::{self, us_between, wait_for_blocked, Sizes};
use crate::pool::Pool;
use crate::resp::{encode, RawConn, Reply};
use crate::stats::{fmt_int, fmt_us, max, median, percentile};

/// What a follower knows: the holder and the grant token; `(None, 0)` when
/// the key holds no grant.
type State = (Option<Vec<u8>>, i64);

const NO_GRANT: State = (None, 0);

/// OBSERVE's timeout in part 1 and 2 (seconds): a nil reply re-issues it.
const OBSERVE_TIMEOUT: &str = "10";
/// The event classes: keyspace channel (K), the module's events (d).
const NOTIFY: &str = "Kd";
/// Every trial starts after the same idle pause (as in section 2).
const PAUSE: Duration = Duration::from_millis(2);
/// First cycles of each run not counted.
const WARMUP: usize = 10;

fn int_of(r: &Reply) -> Option<i64> {
    match r {
        Reply::Int(n) => Some(*n),
        Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// OBSERVE's reply: `Some(state)`, or `None` for nil (the timeout).
fn observe_state(r: &Reply) -> Option<State> {
    match r {
        Reply::Array(Some(items)) if items.len() == 2 => {
            let holder = match &items[0] {
                Reply::Bulk(b) => b.clone(),
                other => panic!("OBSERVE reply: holder {other:?}"),
            };
            let token = int_of(&items[1]).unwrap_or_else(|| panic!("OBSERVE reply: {r:?}"));
            Some((holder, token))
        }
        r if r.is_nil() => None,
        other => panic!("OBSERVE: unexpected reply {other:?}"),
    }
}

/// RESERVE.INFO's reply (flat field-value pairs, or nil) as a state.
fn info_state(r: &Reply) -> State {
    match r {
        Reply::Array(Some(items)) => {
            let field = |name: &[u8]| {
                items
                    .chunks(2)
                    .find(|kv| {
                        matches!(&kv[0], Reply::Bulk(Some(k)) if k == name)
                            || matches!(&kv[0], Reply::Simple(k) if k.as_bytes() == name)
                    })
                    .and_then(|kv| kv.get(1))
            };
            let holder = match field(b"holder") {
                Some(Reply::Bulk(b)) => b.clone(),
                _ => None,
            };
            let token = field(b"token").and_then(int_of).unwrap_or(0);
            (holder, token)
        }
        r if r.is_nil() => NO_GRANT,
        other => panic!("RESERVE.INFO: unexpected reply {other:?}"),
    }
}

fn is_message(r: &Reply) -> bool {
    matches!(r.strings().first().map(Vec::as_slice), Some(b"message"))
}

/// Whether the server knows RESERVE.OBSERVE (a module built before it
/// does not; the section then reports only the pub/sub side).
pub fn has_observe(c: &mut RawConn) -> bool {
    match c.call(&["COMMAND", "INFO", "RESERVE.OBSERVE"]) {
        Reply::Array(Some(items)) => items.first().is_some_and(|i| !i.is_nil()),
        _ => false,
    }
}

fn notify_events(c: &mut RawConn, classes: &str) {
    let r = c.call(&["CONFIG", "SET", "notify-keyspace-events", classes]);
    assert!(r.is_ok(), "CONFIG SET notify-keyspace-events: {r:?}");
}

fn lock(c: &mut RawConn, key: &str, holder: &str) -> i64 {
    let t = c.call(&["RESERVE.LOCK", key, holder, "600"]).int("LOCK");
    assert!(t > 0, "LOCK {key} {holder}: refused");
    t
}

fn release(c: &mut RawConn, key: &str, holder: &str) {
    assert_eq!(
        c.call(&["RESERVE.RELEASE", key, holder]).int("RELEASE"),
        1,
        "RELEASE {key} {holder}"
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mech {
    Observe,
    Keyspace,
}

impl Mech {
    pub fn label(self) -> &'static str {
        match self {
            Mech::Observe => "RESERVE.OBSERVE loop",
            Mech::Keyspace => "keyspace notification + RESERVE.INFO",
        }
    }
}

/// A follower of one key, by either mechanism.
enum Follower {
    Observe {
        conn: RawConn,
        key: String,
        last: i64,
    },
    Keyspace {
        sub: RawConn,
        rd: RawConn,
        key: String,
        /// Messages read in all.
        messages: usize,
    },
}

impl Follower {
    /// Connects and learns the current state (then, for OBSERVE, blocks).
    fn connect(mech: Mech, port: u16, key: &str) -> (Follower, State) {
        match mech {
            Mech::Observe => {
                let mut conn = RawConn::connect(port);
                let first = conn.call(&["RESERVE.OBSERVE", key, "0", OBSERVE_TIMEOUT]);
                let state = observe_state(&first).unwrap_or(NO_GRANT);
                let mut f = Follower::Observe {
                    conn,
                    key: key.to_string(),
                    last: state.1,
                };
                f.arm();
                (f, state)
            }
            Mech::Keyspace => {
                let mut sub = RawConn::connect(port);
                let channel = format!("__keyspace@0__:{key}");
                let confirm = sub.call(&["SUBSCRIBE", &channel]);
                assert_eq!(
                    confirm.strings().first().map(Vec::as_slice),
                    Some(&b"subscribe"[..]),
                    "SUBSCRIBE {channel}: {confirm:?}"
                );
                // Subscribe first, then read: a change after the read comes
                // as a message.
                let mut rd = RawConn::connect(port);
                let state = info_state(&rd.call(&["RESERVE.INFO", key]));
                let f = Follower::Keyspace {
                    sub,
                    rd,
                    key: key.to_string(),
                    messages: 0,
                };
                (f, state)
            }
        }
    }

    /// Clients this follower has blocked on the server.
    fn blocked(&self) -> u64 {
        match self {
            Follower::Observe { .. } => 1,
            Follower::Keyspace { .. } => 0,
        }
    }

    /// OBSERVE: block again with the last token seen.
    fn arm(&mut self) {
        if let Follower::Observe { conn, key, last } = self {
            conn.send(&["RESERVE.OBSERVE", key, &last.to_string(), OBSERVE_TIMEOUT]);
        }
    }

    /// Reads until the follower knows a state that `want` accepts; returns
    /// it and when it was known. The OBSERVE follower is left unarmed.
    fn learn(&mut self, want: &dyn Fn(&State) -> bool, within: Duration) -> (State, Instant) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "follower did not learn the change");
            match self {
                Follower::Observe { conn, last, .. } => {
                    let r = conn
                        .recv_timeout(left)
                        .expect("follower did not learn the change");
                    let now = Instant::now();
                    if let Some(s) = observe_state(&r) {
                        *last = s.1;
                        if want(&s) {
                            return (s, now);
                        }
                    }
                    self.arm();
                }
                Follower::Keyspace {
                    sub,
                    rd,
                    key,
                    messages,
                } => {
                    let m = sub
                        .recv_timeout(left)
                        .expect("follower got no notification");
                    assert!(is_message(&m), "subscriber got {m:?}");
                    *messages += 1;
                    let s = info_state(&rd.call(&["RESERVE.INFO", key.as_str()]));
                    let now = Instant::now();
                    if want(&s) {
                        return (s, now);
                    }
                }
            }
        }
    }

    /// Reads notifications still in flight for the last change (one change
    /// can publish several events); a real follower would read the key for
    /// each, which changes nothing here.
    fn drain(&mut self) {
        if let Follower::Keyspace { sub, messages, .. } = self {
            while let Some(m) = sub.recv_timeout(Duration::from_millis(1)) {
                assert!(is_message(&m), "subscriber got {m:?}");
                *messages += 1;
            }
        }
    }

    fn messages(&self) -> usize {
        match self {
            Follower::Observe { .. } => 0,
            Follower::Keyspace { messages, .. } => *messages,
        }
    }
}

// ---------------------------------------------------------------- part 1

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Release,
    Lock,
    Handoff,
}

pub const CHANGES: [Change; 3] = [Change::Release, Change::Lock, Change::Handoff];

impl Change {
    fn label(self) -> &'static str {
        match self {
            Change::Release => "leader releases (-> no leader)",
            Change::Lock => "new leader LOCKs the free key",
            Change::Handoff => "leader releases, a WAITing successor is granted",
        }
    }
}

/// Part 1's samples: per mechanism, per change, per round.
pub struct NoticeRow {
    pub mech: Mech,
    pub change: Change,
    pub rounds: Vec<Vec<f64>>,
    /// Notifications read per change (keyspace follower), all rounds.
    pub messages_per_change: f64,
}

/// One run of `trials` cycles (release, lock, handoff) for one mechanism;
/// returns the samples per change and the notifications read.
fn notice_run(
    mech: Mech,
    port: u16,
    ctl: &mut redis::Connection,
    key: &str,
    trials: usize,
) -> ([Vec<f64>; 3], usize) {
    let mut admin = RawConn::connect(port);
    notify_events(&mut admin, if mech == Mech::Keyspace { NOTIFY } else { "" });
    let (ha, hb) = (common::holder("leader-a", 1), common::holder("leader-b", 2));
    let mut ac = RawConn::connect(port);
    let mut bc = RawConn::connect(port);
    let ta = lock(&mut ac, key, &ha);
    let (mut f, state) = Follower::connect(mech, port, key);
    assert_eq!(state, (Some(ha.clone().into_bytes()), ta));
    let base = f.blocked();
    let within = Duration::from_secs(10);
    let mut out: [Vec<f64>; 3] = Default::default();
    for trial in 0..WARMUP + trials {
        // A holds. 1: A releases.
        wait_for_blocked(ctl, base);
        thread::sleep(PAUSE);
        let t0 = Instant::now();
        ac.send(&["RESERVE.RELEASE", key, &ha]);
        let (_, t1) = f.learn(&|s| *s == NO_GRANT, within);
        assert_eq!(ac.recv().int("RELEASE"), 1);
        f.arm();
        f.drain();
        let release_us = us_between(t0, t1);
        // 2: B locks the free key.
        wait_for_blocked(ctl, base);
        thread::sleep(PAUSE);
        let t0 = Instant::now();
        bc.send(&["RESERVE.LOCK", key, &hb, "600"]);
        let (s, t1) = f.learn(&|s| s.0.as_deref() == Some(hb.as_bytes()), within);
        let tb = bc.recv().int("LOCK");
        assert_eq!(s.1, tb, "follower's token vs LOCK's");
        f.arm();
        f.drain();
        let lock_us = us_between(t0, t1);
        // 3: A waits; B releases and the key goes to A in the same command.
        ac.send(&["RESERVE.WAIT", key, &ha, "600", "30"]);
        wait_for_blocked(ctl, base + 1);
        thread::sleep(PAUSE);
        let t0 = Instant::now();
        bc.send(&["RESERVE.RELEASE", key, &hb]);
        let (s, t1) = f.learn(&|s| s.0.as_deref() == Some(ha.as_bytes()), within);
        assert_eq!(bc.recv().int("RELEASE"), 1);
        assert_eq!(s.1, ac.recv().int("WAIT"), "follower's token vs WAIT's");
        f.arm();
        f.drain();
        let handoff_us = us_between(t0, t1);
        if trial >= WARMUP {
            out[0].push(release_us);
            out[1].push(lock_us);
            out[2].push(handoff_us);
        }
    }
    let messages = f.messages();
    drop(f);
    release(&mut ac, key, &ha);
    notify_events(&mut admin, "");
    (out, messages)
}

/// The floor of part 1: a PING round trip after the same pause.
fn ping_run(port: u16, trials: usize) -> Vec<f64> {
    let mut c = RawConn::connect(port);
    let mut out = Vec::with_capacity(trials);
    for trial in 0..WARMUP + trials {
        thread::sleep(PAUSE);
        let t0 = Instant::now();
        c.send(&["PING"]);
        let r = c.recv();
        let t1 = Instant::now();
        assert_eq!(r, Reply::Simple("PONG".into()));
        if trial >= WARMUP {
            out.push(us_between(t0, t1));
        }
    }
    out
}

fn notices(
    sizes: &Sizes,
    port: u16,
    ctl: &mut redis::Connection,
    mechs: &[Mech],
    log: &mut dyn FnMut(&str),
) -> (Vec<NoticeRow>, Vec<Vec<f64>>) {
    let mut rows: Vec<NoticeRow> = mechs
        .iter()
        .flat_map(|&mech| {
            CHANGES.iter().map(move |&change| NoticeRow {
                mech,
                change,
                rounds: Vec::new(),
                messages_per_change: f64::NAN,
            })
        })
        .collect();
    let mut messages = vec![0usize; mechs.len()];
    let mut pings = Vec::new();
    for round in 0..sizes.observe_rounds {
        pings.push(ping_run(port, sizes.notice_trials));
        // Alternate which mechanism goes first.
        let mut order: Vec<usize> = (0..mechs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for &m in &order {
            let mech = mechs[m];
            log(&format!(
                "  notice latency, round {} of {}: {}",
                round + 1,
                sizes.observe_rounds,
                mech.label()
            ));
            let key = format!("observe:leader:{round}:{m}");
            let (samples, msgs) = notice_run(mech, port, ctl, &key, sizes.notice_trials);
            messages[m] += msgs;
            for (c, s) in samples.into_iter().enumerate() {
                rows[m * CHANGES.len() + c].rounds.push(s);
            }
            common::wait_for_clients_below(ctl, 20);
        }
    }
    let cycles = (sizes.observe_rounds * (WARMUP + sizes.notice_trials)) as f64;
    for (m, &n) in messages.iter().enumerate() {
        for c in 0..CHANGES.len() {
            rows[m * CHANGES.len() + c].messages_per_change = n as f64 / (3.0 * cycles);
        }
    }
    (rows, pings)
}

// ---------------------------------------------------------------- part 2

/// Part 2, one round, one mechanism.
#[derive(Clone, Debug, Default)]
pub struct Reconnect {
    /// Leader changes while the follower was away.
    pub changes: usize,
    /// Replies (OBSERVE) or notifications (pub/sub) read in the window after
    /// reconnecting, before any further change.
    pub received: usize,
    /// The follower's state after that window is the key's real one.
    pub knows_final: bool,
    /// Reconnect started -> the follower knew the current state (OBSERVE:
    /// its first reply; pub/sub: SUBSCRIBE then RESERVE.INFO, the careful
    /// recipe). NaN when it did not.
    pub know_us: f64,
    /// The next change after the reconnect reached the follower.
    pub next_seen: bool,
}

/// How long a reconnected follower listens before we count what it heard.
const LISTEN: Duration = Duration::from_millis(200);

fn reconnect_round(
    mech: Mech,
    port: u16,
    ctl: &mut redis::Connection,
    key: &str,
    changes: usize,
) -> Reconnect {
    let mut admin = RawConn::connect(port);
    notify_events(&mut admin, if mech == Mech::Keyspace { NOTIFY } else { "" });
    let holders: Vec<String> = (0..3).map(|i| common::holder("leader", i)).collect();
    let mut hc = RawConn::connect(port);
    let t0 = lock(&mut hc, key, &holders[0]);
    let clients_before = common::info_u64(ctl, "clients", "connected_clients");
    let (f, state) = Follower::connect(mech, port, key);
    assert_eq!(state, (Some(holders[0].clone().into_bytes()), t0));
    wait_for_blocked(ctl, f.blocked());
    // The follower's connection drops.
    drop(f);
    testkit::wait_until(
        Duration::from_secs(10),
        "the follower's connections closed",
        || common::info_u64(ctl, "clients", "connected_clients") == clients_before,
    );
    wait_for_blocked(ctl, 0);
    // The leader changes hands `changes` times meanwhile.
    let mut cur = 0;
    let mut token = t0;
    for i in 1..=changes {
        release(&mut hc, key, &holders[cur]);
        cur = i % holders.len();
        token = lock(&mut hc, key, &holders[cur]);
    }
    let real: State = (Some(holders[cur].clone().into_bytes()), token);
    let mut out = Reconnect {
        changes,
        know_us: f64::NAN,
        ..Reconnect::default()
    };
    // Reconnect with what the follower knew: (holder 0, t0).
    let start = Instant::now();
    let mut believed: State = (Some(holders[0].clone().into_bytes()), t0);
    match mech {
        Mech::Observe => {
            let mut conn = RawConn::connect(port);
            conn.send(&["RESERVE.OBSERVE", key, &t0.to_string(), OBSERVE_TIMEOUT]);
            let listen_end = Instant::now() + LISTEN;
            while let Some(r) =
                conn.recv_timeout(listen_end.saturating_duration_since(Instant::now()))
            {
                let now = Instant::now();
                match observe_state(&r) {
                    Some(s) => {
                        out.received += 1;
                        if s == real && out.know_us.is_nan() {
                            out.know_us = us_between(start, now);
                        }
                        believed = s;
                    }
                    None => panic!("OBSERVE timed out within {LISTEN:?}"),
                }
                conn.send(&[
                    "RESERVE.OBSERVE",
                    key,
                    &believed.1.to_string(),
                    OBSERVE_TIMEOUT,
                ]);
            }
            out.knows_final = believed == real;
            // One more change: does the follower see it?
            release(&mut hc, key, &holders[cur]);
            let next = lock(&mut hc, key, &holders[(cur + 1) % holders.len()]);
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Some(r) =
                conn.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if let Some(s) = observe_state(&r) {
                    if s.1 == next {
                        out.next_seen = true;
                        break;
                    }
                    conn.send(&["RESERVE.OBSERVE", key, &s.1.to_string(), OBSERVE_TIMEOUT]);
                }
            }
            release(&mut hc, key, &holders[(cur + 1) % holders.len()]);
        }
        Mech::Keyspace => {
            let mut sub = RawConn::connect(port);
            let channel = format!("__keyspace@0__:{key}");
            let confirm = sub.call(&["SUBSCRIBE", &channel]);
            assert!(!is_message(&confirm));
            // The careful recipe reads the key once subscribed.
            let mut rd = RawConn::connect(port);
            let read = info_state(&rd.call(&["RESERVE.INFO", key]));
            if read == real {
                out.know_us = us_between(start, Instant::now());
            }
            // The plain one only listens: what arrives?
            let listen_end = Instant::now() + LISTEN;
            while let Some(m) =
                sub.recv_timeout(listen_end.saturating_duration_since(Instant::now()))
            {
                assert!(is_message(&m));
                out.received += 1;
                believed = info_state(&rd.call(&["RESERVE.INFO", key]));
            }
            out.knows_final = believed == real;
            release(&mut hc, key, &holders[cur]);
            let next = lock(&mut hc, key, &holders[(cur + 1) % holders.len()]);
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Some(m) = sub.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                assert!(is_message(&m));
                if info_state(&rd.call(&["RESERVE.INFO", key])).1 == next {
                    out.next_seen = true;
                    break;
                }
            }
            release(&mut hc, key, &holders[(cur + 1) % holders.len()]);
        }
    }
    notify_events(&mut admin, "");
    out
}

pub struct ReconnectRow {
    pub mech: Mech,
    pub rounds: Vec<Reconnect>,
}

fn reconnects(
    sizes: &Sizes,
    port: u16,
    ctl: &mut redis::Connection,
    mechs: &[Mech],
    log: &mut dyn FnMut(&str),
) -> Vec<ReconnectRow> {
    let mut rows: Vec<ReconnectRow> = Vec::new();
    for changes in [sizes.reconnect_changes, 0] {
        let first = rows.len();
        for &mech in mechs {
            rows.push(ReconnectRow {
                mech,
                rounds: Vec::new(),
            });
        }
        // The control (nothing changes while away) needs fewer rounds.
        let rounds = if changes == 0 {
            sizes.reconnect_rounds.min(2)
        } else {
            sizes.reconnect_rounds
        };
        log(&format!(
            "  reconnect: {changes} changes while away, {rounds} rounds"
        ));
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..mechs.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for &m in &order {
                let key = format!("observe:reconnect:{changes}:{round}:{m}");
                let r = reconnect_round(mechs[m], port, ctl, &key, changes);
                rows[first + m].rounds.push(r);
                common::wait_for_clients_below(ctl, 20);
            }
        }
    }
    rows
}

// ---------------------------------------------------------------- part 3

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crowd {
    Observe,
    Keyspace,
    Publish,
}

impl Crowd {
    pub fn label(self) -> &'static str {
        match self {
            Crowd::Observe => "blocked RESERVE.OBSERVE; change: RELEASE",
            Crowd::Keyspace => {
                "keyspace subscribers, each then RESERVE.INFO; change: RELEASE (`Kd` events)"
            }
            Crowd::Publish => "reference: channel subscribers; change: one PUBLISH",
        }
    }
}

/// One wake-up of a crowd, in microseconds from the change written.
#[derive(Clone, Debug)]
pub struct Wake {
    /// The change command's own reply.
    pub change_us: f64,
    /// The last watcher's (for the keyspace crowd: its RESERVE.INFO reply).
    pub last_us: f64,
    /// The median watcher.
    pub mid_us: f64,
    /// PINGs of an unrelated client, one after another from the change on
    /// until every watcher is done: the longest round trip, and how many.
    pub ping_max_us: f64,
    pub pings: usize,
    /// `INFO commandstats` usec of the change command.
    pub server_change_us: f64,
    /// CPU time of the server's main thread from just before the change
    /// until every watcher was done (`/proc/<pid>/task/<pid>/schedstat`):
    /// the whole fan-out, reply writes included, plus the PINGs.
    pub server_cpu_us: f64,
}

pub struct CrowdRow {
    pub watchers: usize,
    pub crowd: Crowd,
    pub rounds: Vec<Wake>,
}

/// Indices in the pool: the change's connection, the pinger's, then the
/// watchers.
const CHANGER: usize = 0;
const PINGER: usize = 1;
const FIRST: usize = 2;

/// Nanoseconds the server's main thread (the event loop) has run, from
/// the scheduler's accounting; NaN where /proc does not have it.
fn server_cpu_ns(pid: u64) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// `usec` of a command in `INFO commandstats` (0 when it did not run).
fn command_usec(ctl: &mut redis::Connection, command: &str) -> f64 {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(ctl)
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:");
    text.lines()
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .and_then(|l| {
            l.split([':', ','])
                .find_map(|f| f.strip_prefix("usec="))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

fn wake(
    crowd: Crowd,
    pool: &mut Pool,
    admin: &mut RawConn,
    ctl: &mut redis::Connection,
    server_pid: u64,
    n: usize,
) -> Wake {
    let key = "observe:crowd";
    let channel_plain = "observe:crowd:channel";
    let channel_ks = format!("__keyspace@0__:{key}");
    let holder = common::holder("crowd-leader", 1);
    let watchers = FIRST..FIRST + n;
    notify_events(admin, if crowd == Crowd::Keyspace { NOTIFY } else { "" });
    let token = match crowd {
        Crowd::Publish => 0,
        _ => lock(admin, key, &holder),
    };
    let mut cmd = Vec::new();
    let mut unsubscribe = Vec::new();
    match crowd {
        Crowd::Observe => {
            encode(
                &["RESERVE.OBSERVE", key, &token.to_string(), "120"],
                &mut cmd,
            );
            for i in watchers.clone() {
                pool.write(i, &cmd);
            }
            wait_for_blocked(ctl, n as u64);
        }
        Crowd::Keyspace | Crowd::Publish => {
            let channel = if crowd == Crowd::Keyspace {
                channel_ks.as_str()
            } else {
                channel_plain
            };
            encode(&["SUBSCRIBE", channel], &mut cmd);
            pool.call_each(watchers.clone(), &cmd, &|r| {
                r.strings().first().map(Vec::as_slice) == Some(b"subscribe")
            });
            encode(&["UNSUBSCRIBE", channel], &mut unsubscribe);
            let subs = admin.call(&["PUBSUB", "NUMSUB", channel]).strings();
            assert_eq!(subs.get(1), Some(&n.to_string().into_bytes()), "NUMSUB");
        }
    }
    // Let the server go idle, and count only the wake-up.
    thread::sleep(Duration::from_millis(20));
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(ctl)
        .expect("CONFIG RESETSTAT");
    let mut change = Vec::new();
    match crowd {
        Crowd::Publish => encode(&["PUBLISH", channel_plain, "changed"], &mut change),
        _ => encode(&["RESERVE.RELEASE", key, &holder], &mut change),
    }
    let mut info = Vec::new();
    encode(&["RESERVE.INFO", key], &mut info);
    let mut ping = Vec::new();
    encode(&["PING"], &mut ping);
    // stage per watcher: 0 waiting for its wake-up, 1 (keyspace) for its
    // INFO reply, 2 done.
    let mut stage = vec![0u8; n];
    let mut left = n;
    let mut done_at: Vec<Instant> = Vec::with_capacity(n);
    let mut change_at = None;
    let mut pings: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);

    let cpu0 = server_cpu_ns(server_pid);
    let t0 = Instant::now();
    pool.write(CHANGER, &change);
    pool.write(PINGER, &ping);
    let mut ping_sent = Instant::now();
    let mut ping_out = true;
    while left > 0 || change_at.is_none() || ping_out {
        let (i, r, at) = pool
            .next(deadline)
            .unwrap_or_else(|| panic!("{} wake-up: {left} of {n} watchers silent", crowd.label()));
        match i {
            CHANGER => {
                match crowd {
                    Crowd::Publish => assert_eq!(r.int("PUBLISH"), n as i64),
                    _ => assert_eq!(r.int("RELEASE"), 1),
                }
                change_at = Some(at);
            }
            PINGER => {
                assert_eq!(r, Reply::Simple("PONG".into()));
                pings.push(us_between(ping_sent, at));
                if left > 0 || change_at.is_none() {
                    pool.write(PINGER, &ping);
                    ping_sent = Instant::now();
                } else {
                    ping_out = false;
                }
            }
            _ => {
                let w = i - FIRST;
                assert!(w < n, "reply on idle connection {i}");
                match (crowd, stage[w]) {
                    (Crowd::Observe, 0) => {
                        assert_eq!(observe_state(&r), Some(NO_GRANT), "OBSERVE wake-up");
                        stage[w] = 2;
                    }
                    (Crowd::Publish, 0) => {
                        assert!(is_message(&r), "subscriber got {r:?}");
                        stage[w] = 2;
                    }
                    (Crowd::Keyspace, 0) => {
                        assert!(is_message(&r), "subscriber got {r:?}");
                        pool.write(i, &info);
                        stage[w] = 1;
                    }
                    (Crowd::Keyspace, 1) => {
                        if is_message(&r) {
                            continue;
                        }
                        assert_eq!(info_state(&r), NO_GRANT, "INFO after the release");
                        stage[w] = 2;
                    }
                    (_, s) => panic!("watcher {w} in stage {s} got {r:?}"),
                }
                if stage[w] == 2 {
                    left -= 1;
                    done_at.push(at);
                }
            }
        }
    }
    let server_cpu_us = (server_cpu_ns(server_pid) - cpu0) / 1000.0;
    let change_at = change_at.expect("the change's reply");
    let mid = done_at[done_at.len() / 2];
    let last = *done_at.last().expect("watchers");
    let server_change_us = match crowd {
        Crowd::Publish => command_usec(ctl, "publish"),
        _ => command_usec(ctl, "reserve.release"),
    };
    if !unsubscribe.is_empty() {
        pool.call_each(watchers, &unsubscribe, &|r| {
            r.strings().first().map(Vec::as_slice) == Some(b"unsubscribe")
        });
    }
    notify_events(admin, "");
    Wake {
        change_us: us_between(t0, change_at),
        last_us: us_between(t0, last),
        mid_us: us_between(t0, mid),
        ping_max_us: max(&pings),
        pings: pings.len(),
        server_change_us,
        server_cpu_us,
    }
}

fn crowds(
    sizes: &Sizes,
    port: u16,
    ctl: &mut redis::Connection,
    kinds: &[Crowd],
    log: &mut dyn FnMut(&str),
    skipped: &mut Vec<(usize, usize)>,
) -> Vec<CrowdRow> {
    let mut rows = Vec::new();
    let server_pid = common::info_u64(ctl, "server", "process_id");
    let mut admin = RawConn::connect(port);
    let mut pool = Pool::new();
    let mut hello = Vec::new();
    encode(&["HELLO", "3"], &mut hello);
    // The current limit (asking for 0 changes nothing); 0 means unknown.
    let fd_limit = match crate::machine::raise_fd_limit(0) {
        0 => usize::MAX,
        n => n as usize,
    };
    for &n in &sizes.observers {
        // Every watcher is a descriptor here and one in the server (which
        // inherited this limit); keep 200 for everything else.
        if FIRST + n + 200 > fd_limit {
            log(&format!(
                "  {} watchers: skipped, the open-files limit is {fd_limit}",
                fmt_int(n as u64)
            ));
            skipped.push((n, fd_limit));
            continue;
        }
        let had = pool.len();
        pool.grow(port, FIRST + n);
        // Every connection speaks RESP3, so a subscribed keyspace watcher
        // can send its RESERVE.INFO on the same connection.
        pool.call_each(had.max(FIRST)..FIRST + n, &hello, &|r| {
            matches!(r, Reply::Array(Some(_)))
        });
        if had == 0 {
            pool.call_each(CHANGER..FIRST, &hello, &|r| {
                matches!(r, Reply::Array(Some(_)))
            });
        }
        let first = rows.len();
        for &crowd in kinds {
            rows.push(CrowdRow {
                watchers: n,
                crowd,
                rounds: Vec::new(),
            });
        }
        for round in 0..sizes.crowd_rounds {
            log(&format!(
                "  {} watchers, round {} of {}",
                fmt_int(n as u64),
                round + 1,
                sizes.crowd_rounds
            ));
            let mut order: Vec<usize> = (0..kinds.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for &k in &order {
                let w = wake(kinds[k], &mut pool, &mut admin, ctl, server_pid, n);
                rows[first + k].rounds.push(w);
            }
        }
    }
    rows
}

// ---------------------------------------------------------------- section

pub struct Results {
    pub has_observe: bool,
    pub notices: Vec<NoticeRow>,
    /// A PING round trip per round, after the same pause: the floor.
    pub pings: Vec<Vec<f64>>,
    pub reconnects: Vec<ReconnectRow>,
    pub crowds: Vec<CrowdRow>,
    /// Crowd sizes left out: (watchers, the open-files limit).
    pub skipped: Vec<(usize, usize)>,
}

pub fn run(sizes: &Sizes, log: &mut dyn FnMut(&str)) -> Results {
    let server = common::start_server();
    let mut ctl = server.conn();
    let port = server.port();
    let has_observe = has_observe(&mut RawConn::connect(port));
    if !has_observe {
        log("  this server has no RESERVE.OBSERVE: measuring the pub/sub side only");
    }
    let mechs: Vec<Mech> = if has_observe {
        vec![Mech::Observe, Mech::Keyspace]
    } else {
        vec![Mech::Keyspace]
    };
    let kinds: Vec<Crowd> = if has_observe {
        vec![Crowd::Observe, Crowd::Keyspace, Crowd::Publish]
    } else {
        vec![Crowd::Keyspace, Crowd::Publish]
    };
    let (notices, pings) = notices(sizes, port, &mut ctl, &mechs, log);
    let reconnects = reconnects(sizes, port, &mut ctl, &mechs, log);
    let mut skipped = Vec::new();
    let crowds = crowds(sizes, port, &mut ctl, &kinds, log, &mut skipped);
    Results {
        has_observe,
        notices,
        pings,
        reconnects,
        crowds,
        skipped,
    }
}

/// `median (min–max)` of per-round values, formatted by `f`.
fn spread(values: &[f64], f: &dyn Fn(f64) -> String) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = max(values);
    format!("{} ({}–{})", f(median(values)), f(lo), f(hi))
}

/// A count over rounds: `0 in 5 of 5` when all agree, else median and range.
fn counts(values: &[usize]) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    if values.iter().all(|&v| v == values[0]) {
        return format!("{} (every round)", values[0]);
    }
    let f: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    spread(&f, &|v| format!("{v:.0}"))
}

fn yes_no(values: &[bool]) -> String {
    let yes = values.iter().filter(|&&b| b).count();
    match yes {
        0 => format!("no (0 of {})", values.len()),
        y if y == values.len() => format!("yes ({y} of {y})"),
        y => format!("{y} of {}", values.len()),
    }
}

pub fn report(r: &Results, sizes: &Sizes) -> String {
    let mut md = String::new();
    if !r.has_observe {
        md.push_str(
            "**The module under test has no RESERVE.OBSERVE**: only the pub/sub rows ran.\n\n",
        );
    }
    let rounds = sizes.observe_rounds;
    md.push_str(&format!(
        "### 6a. Leader change -> the follower knows the new (holder, token)\n\n\
         From the change command leaving the client to the moment the follower has read \
         the new holder and token: the OBSERVE follower's reply; the keyspace follower's \
         notification, then its RESERVE.INFO reply on a second connection \
         (`notify-keyspace-events {NOTIFY}`, channel `__keyspace@0__:<key>`). One thread plays \
         both sides, each change after a {} ms pause with the follower idle. {rounds} rounds of \
         {} cycles (release, lock, handoff) per mechanism, the mechanisms' order alternating \
         between rounds; the first {WARMUP} cycles of each run are not counted. Medians over \
         the rounds of each round's p50 and p99, with their range (min–max).\n\n\
         | change | follower | samples | p50: median of rounds (min–max) | p99: median of rounds (min–max) | notifications read per change |\n\
         |---|---|---:|---:|---:|---:|\n",
        PAUSE.as_millis(),
        sizes.notice_trials
    ));
    {
        let p50: Vec<f64> = r.pings.iter().map(|s| percentile(s, 50.0)).collect();
        let p99: Vec<f64> = r.pings.iter().map(|s| percentile(s, 99.0)).collect();
        md.push_str(&format!(
            "| reference: one PING round trip, same pause (each round, before the followers) | \
             | {} | {} | {} | |\n",
            r.pings.iter().map(Vec::len).sum::<usize>(),
            spread(&p50, &|v| fmt_us(v)),
            spread(&p99, &|v| fmt_us(v)),
        ));
    }
    for change in CHANGES {
        for row in r.notices.iter().filter(|n| n.change == change) {
            let p50: Vec<f64> = row.rounds.iter().map(|s| percentile(s, 50.0)).collect();
            let p99: Vec<f64> = row.rounds.iter().map(|s| percentile(s, 99.0)).collect();
            let n: usize = row.rounds.iter().map(Vec::len).sum();
            let msgs = if row.mech == Mech::Keyspace {
                format!("{:.2}", row.messages_per_change)
            } else {
                "n/a (one reply)".into()
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                change.label(),
                row.mech.label(),
                n,
                spread(&p50, &|v| fmt_us(v)),
                spread(&p99, &|v| fmt_us(v)),
                msgs
            ));
        }
    }

    md.push_str(&format!(
        "\n### 6b. Changes while the follower was disconnected\n\n\
         The follower knows (holder 0, token t0), its connections close, the leader changes \
         hands N times (RELEASE, then LOCK by the next of 3 holders), the follower connects \
         again with what it knew: OBSERVE with t0; SUBSCRIBE to the key's keyspace channel. \
         It listens {} ms and we count what it read; then one more change. *Knows the current \
         leader* is the follower's belief after that window (the pub/sub follower reads \
         the key on each notification). *Time to know it*: from the start of the reconnect \
         to OBSERVE's first reply, or, for pub/sub, to the RESERVE.INFO a careful follower \
         sends right after its SUBSCRIBE (the plain one does not).\n\n\
         | changes while away | follower | rounds | replies / notifications read after reconnecting | knows the current leader | time to know it: median (min–max) | sees the next change |\n\
         |---:|---|---:|---|---|---:|---|\n",
        LISTEN.as_millis()
    ));
    for row in &r.reconnects {
        let Some(first) = row.rounds.first() else {
            continue;
        };
        let received: Vec<usize> = row.rounds.iter().map(|x| x.received).collect();
        let knows: Vec<bool> = row.rounds.iter().map(|x| x.knows_final).collect();
        let next: Vec<bool> = row.rounds.iter().map(|x| x.next_seen).collect();
        let know_us: Vec<f64> = row
            .rounds
            .iter()
            .map(|x| x.know_us)
            .filter(|v| !v.is_nan())
            .collect();
        let label = match row.mech {
            Mech::Observe => "RESERVE.OBSERVE with the last token",
            Mech::Keyspace => "keyspace notifications (SUBSCRIBE again)",
        };
        let knows_s = match row.mech {
            Mech::Keyspace if first.changes > 0 => format!(
                "plain: {}; careful (reads after SUBSCRIBE): yes",
                yes_no(&knows)
            ),
            _ => yes_no(&knows),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            first.changes,
            label,
            row.rounds.len(),
            counts(&received),
            knows_s,
            spread(&know_us, &|v| fmt_us(v)),
            yes_no(&next)
        ));
    }

    md.push_str(&format!(
        "\n### 6c. One change, many watchers on one key\n\n\
         N connections watch one key (one client thread reads them all through epoll; every \
         connection speaks RESP3, so a subscribed keyspace watcher sends its RESERVE.INFO on \
         the same connection). Times from the change written: its own reply; the median and \
         the last watcher done (woken; for keyspace watchers, their INFO answered); an \
         unrelated client's PINGs sent one after another from the change until every \
         watcher is done (the longest round trip: how long the event loop was away). Server \
         side: `INFO commandstats` usec of the change command (OBSERVE's observers are woken \
         by a 0 ms timer after it, so that work is not in it), and the CPU time of the \
         server's main thread from the change to the last watcher \
         (`/proc/<pid>/task/<pid>/schedstat`: the whole fan-out, reply writes and the \
         keyspace watchers' INFOs included). {} rounds per N, the order of the three \
         alternating; each cell is the median over rounds (min–max).\n\n\
         | watchers | what | change's reply | median watcher | last watcher | longest PING (PINGs done) | server: change command | server: main thread CPU |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|\n",
        sizes.crowd_rounds
    ));
    for &(n, limit) in &r.skipped {
        md.push_str(&format!(
            "| {} | skipped: the open-files limit is {limit} | | | | | | |\n",
            fmt_int(n as u64)
        ));
    }
    for row in &r.crowds {
        let col = |f: &dyn Fn(&Wake) -> f64| -> Vec<f64> { row.rounds.iter().map(f).collect() };
        let pings = median(&col(&|w| w.pings as f64));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} ({:.0}) | {} | {} |\n",
            fmt_int(row.watchers as u64),
            row.crowd.label(),
            spread(&col(&|w| w.change_us), &|v| fmt_us(v)),
            spread(&col(&|w| w.mid_us), &|v| fmt_us(v)),
            spread(&col(&|w| w.last_us), &|v| fmt_us(v)),
            spread(&col(&|w| w.ping_max_us), &|v| fmt_us(v)),
            pings,
            spread(&col(&|w| w.server_change_us), &|v| fmt_us(v)),
            spread(&col(&|w| w.server_cpu_us), &|v| fmt_us(v)),
        ));
    }
    md
}
