//! Section 2: handoff latency, from the moment the holder sends its release
//! to the moment the waiter holds the lock (the waiter's reply that says so
//! has been read).
//!
//! The event-driven recipes (RESERVE.WAIT, BLPOP signal list, pub/sub) are
//! timed in one thread that plays both sides on separate connections: it
//! takes t0, writes the release on the holder's connection, then reads the
//! waiter's connection (and, for the client-side recipes, sends the
//! waiter's `SET NX` and reads its reply), takes t1, and only then reads
//! the release's own reply. No thread wake-up sits in the measured path of
//! any recipe, so they are compared on equal terms. The pollers are real
//! threads sleeping between attempts, and the release lands at a random
//! phase of their period.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::common::{
    self, us_between, wait_for_blocked, wait_for_waiters, Sizes, LUA_RELEASE, LUA_RELEASE_PUBLISH,
    LUA_RELEASE_SIGNAL,
};
use crate::resp::{RawConn, Reply};

/// One recipe's latencies, in microseconds.
pub struct Series {
    /// ping, pingq (references), wait1, waitchain, waitq, blpop1, blpopq, pubsub, poll10, poll1s
    pub id: &'static str,
    pub name: String,
    pub short: String,
    pub samples: Vec<f64>,
    pub note: String,
    /// Server time per RELEASE (INFO commandstats), for the WAIT recipes:
    /// the release and the handoff it makes, without network or scheduling.
    pub server_release_us: Option<f64>,
}

/// `usec_per_call` of RESERVE.RELEASE since the last CONFIG RESETSTAT.
fn release_stats(ctl: &mut redis::Connection) -> Option<(f64, f64)> {
    let text: String = redis::cmd("INFO").arg("commandstats").query(ctl).ok()?;
    let line = text.lines().find(|l| {
        l.to_ascii_lowercase()
            .starts_with("cmdstat_reserve.release:")
    })?;
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((field("calls=")?, field("usec=")?))
}

fn reset_stats(ctl: &mut redis::Connection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(ctl)
        .expect("CONFIG RESETSTAT");
}

const WARMUP: usize = 20;
/// Every event-driven trial starts after the same idle pause, with the
/// waiter blocked and the server asleep in its event loop: a release comes
/// at some moment while the waiter sleeps, not back-to-back with its
/// request (which would find caches and CPUs warmer for some recipes than
/// for others).
const PAUSE: Duration = Duration::from_millis(2);

fn settle() {
    thread::sleep(PAUSE);
}
/// How many measured waiters queue ahead of the idle ones per batch.
const CHAIN: usize = 100;

fn token(r: &Reply, what: &str) -> i64 {
    let t = r.int(what);
    assert!(t > 0, "{what}: expected a token, got {t}");
    t
}

/// RESERVE.WAIT with exactly one waiter queued: two connections take turns
/// holding and waiting.
fn wait_one(port: u16, ctl: &mut redis::Connection, trials: usize) -> Vec<f64> {
    let key = "handoff:wait1";
    let mut conns = [RawConn::connect(port), RawConn::connect(port)];
    let holders = [common::holder("waiter", 1), common::holder("waiter", 2)];
    token(
        &conns[0].call(&["RESERVE.LOCK", key, &holders[0], "30"]),
        "first LOCK",
    );
    let mut samples = Vec::with_capacity(trials);
    let mut h = 0;
    for trial in 0..WARMUP + trials {
        let w = 1 - h;
        conns[w].send(&["RESERVE.WAIT", key, &holders[w], "30", "10"]);
        wait_for_waiters(ctl, 1);
        settle();
        let (hc, wc) = if h == 0 {
            let (a, b) = conns.split_at_mut(1);
            (&mut a[0], &mut b[0])
        } else {
            let (a, b) = conns.split_at_mut(1);
            (&mut b[0], &mut a[0])
        };
        let t0 = Instant::now();
        hc.send(&["RESERVE.RELEASE", key, &holders[h]]);
        let granted = wc.recv();
        let t1 = Instant::now();
        token(&granted, "WAIT after RELEASE");
        assert_eq!(hc.recv().int("RELEASE"), 1, "RELEASE");
        if trial >= WARMUP {
            samples.push(us_between(t0, t1));
        }
        h = w;
    }
    conns[h].call(&["RESERVE.RELEASE", key, &holders[h]]);
    samples
}

/// Idle connections that queue behind the measured waiters and are sent
/// away (CLIENT UNBLOCK) after each batch, so the next batch can queue ahead
/// of them again.
struct Fillers {
    conns: Vec<RawConn>,
    unblock: Vec<u8>,
    ctl: RawConn,
}

impl Fillers {
    fn connect(port: u16, n: usize) -> Fillers {
        let mut conns = Vec::with_capacity(n);
        let mut unblock = Vec::new();
        for _ in 0..n {
            let mut c = RawConn::connect(port);
            let id = c.call(&["CLIENT", "ID"]).int("CLIENT ID");
            crate::resp::encode(&["CLIENT", "UNBLOCK", &id.to_string()], &mut unblock);
            conns.push(c);
        }
        Fillers {
            conns,
            unblock,
            ctl: RawConn::connect(port),
        }
    }

    /// Unblocks every filler and reads the reply each one gets.
    fn release_all(&mut self, check: impl Fn(&Reply) -> bool) {
        self.ctl.send_raw(&self.unblock);
        for _ in 0..self.conns.len() {
            assert_eq!(self.ctl.recv().int("CLIENT UNBLOCK"), 1, "CLIENT UNBLOCK");
        }
        for c in self.conns.iter_mut() {
            let r = c.recv();
            assert!(check(&r), "unblocked filler replied {r:?}");
        }
    }
}

/// Runs batches of CHAIN handoffs down a ring of CHAIN+1 measured
/// connections, with the fillers queued behind the ring each time. The
/// recipe supplies: `queue(conn, i)` (ring member i starts waiting),
/// `queue_filler(conn, i)`, `queued(n)` (waits until n are queued),
/// `hand(cur, next)` (cur releases, returns t0 and t1 once next holds it),
/// and what an unblocked filler answers.
type Hand<'a> = dyn Fn(&mut [RawConn], usize, usize) -> (Instant, Instant) + 'a;

struct Chain<'a> {
    ring: Vec<RawConn>,
    fillers: Fillers,
    queue: &'a dyn Fn(&mut RawConn, usize),
    queue_filler: &'a dyn Fn(&mut RawConn, usize),
    queued: &'a mut dyn FnMut(u64),
    hand: &'a Hand<'a>,
    filler_reply: &'a dyn Fn(&Reply) -> bool,
}

impl Chain<'_> {
    /// Ring member 0 must hold the lock already.
    fn run(&mut self, trials: usize) -> (Vec<f64>, usize) {
        let ring_len = self.ring.len();
        let chain = ring_len - 1;
        let idle = self.fillers.conns.len();
        let mut h = 0;
        let mut samples = Vec::with_capacity(trials);
        let mut warm = WARMUP;
        while samples.len() < trials {
            for j in 1..ring_len {
                let i = (h + j) % ring_len;
                (self.queue)(&mut self.ring[i], i);
            }
            (self.queued)(chain as u64);
            for (i, c) in self.fillers.conns.iter_mut().enumerate() {
                (self.queue_filler)(c, i);
            }
            (self.queued)((chain + idle) as u64);
            for j in 0..chain {
                let cur = (h + j) % ring_len;
                let next = (h + j + 1) % ring_len;
                settle();
                let (t0, t1) = (self.hand)(&mut self.ring, cur, next);
                if warm > 0 {
                    warm -= 1;
                } else if samples.len() < trials {
                    samples.push(us_between(t0, t1));
                }
            }
            h = (h + chain) % ring_len;
            self.fillers.release_all(self.filler_reply);
            (self.queued)(0);
        }
        (samples, h)
    }
}

/// Two distinct ring members, mutably.
fn pair(ring: &mut [RawConn], a: usize, b: usize) -> (&mut RawConn, &mut RawConn) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = ring.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = ring.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// RESERVE.WAIT with `idle` waiters queued behind the measured one: each
/// release happens with at least `idle` waiters behind the one granted.
fn wait_queued(port: u16, ctl: &mut redis::Connection, trials: usize, idle: usize) -> Vec<f64> {
    let key = "handoff:waitq";
    let holders: Vec<String> = (0..=CHAIN)
        .map(|i| common::holder("chain", i as u64))
        .collect();
    let filler_holders: Vec<String> = (0..idle)
        .map(|i| common::holder("idle", i as u64))
        .collect();
    let mut ring: Vec<RawConn> = (0..=CHAIN).map(|_| RawConn::connect(port)).collect();
    token(
        &ring[0].call(&["RESERVE.LOCK", key, &holders[0], "30"]),
        "first LOCK",
    );
    let mut chain = Chain {
        ring,
        fillers: Fillers::connect(port, idle),
        queue: &|c, i| c.send(&["RESERVE.WAIT", key, &holders[i], "30", "60"]),
        queue_filler: &|c, i| c.send(&["RESERVE.WAIT", key, &filler_holders[i], "30", "0"]),
        queued: &mut |n| wait_for_waiters(ctl, n),
        hand: &|ring, cur, next| {
            let (cc, nc) = pair(ring, cur, next);
            let t0 = Instant::now();
            cc.send(&["RESERVE.RELEASE", key, &holders[cur]]);
            let granted = nc.recv();
            let t1 = Instant::now();
            token(&granted, "WAIT after RELEASE (queued)");
            assert_eq!(cc.recv().int("RELEASE"), 1, "RELEASE");
            (t0, t1)
        },
        filler_reply: &|r| *r == Reply::Int(0),
    };
    let (samples, h) = chain.run(trials);
    chain.ring[h].call(&["RESERVE.RELEASE", key, &holders[h]]);
    samples
}

/// The BLPOP recipe with `idle` BLPOP waiters queued on the signal list
/// behind the measured one (Redis serves BLPOP clients in FIFO order too):
/// the same chain, so both recipes see the same 5,000 connections.
fn blpop_queued(port: u16, ctl: &mut redis::Connection, trials: usize, idle: usize) -> Vec<f64> {
    let key = "handoff:blpopq";
    let signal = "handoff:blpopq:signal";
    let sha_signal = common::script_load(ctl, LUA_RELEASE_SIGNAL);
    let holders: Vec<String> = (0..=CHAIN)
        .map(|i| common::holder("chain", i as u64))
        .collect();
    let mut ring: Vec<RawConn> = (0..=CHAIN).map(|_| RawConn::connect(port)).collect();
    assert!(ring[0]
        .call(&["SET", key, &holders[0], "NX", "PX", "30000"])
        .is_ok());
    let mut chain = Chain {
        ring,
        fillers: Fillers::connect(port, idle),
        queue: &|c, i| {
            assert!(c
                .call(&["SET", key, &holders[i], "NX", "PX", "30000"])
                .is_nil());
            c.send(&["BLPOP", signal, "60"]);
        },
        queue_filler: &|c, _| c.send(&["BLPOP", signal, "0"]),
        queued: &mut |n| wait_for_blocked(ctl, n),
        hand: &|ring, cur, next| {
            let (cc, nc) = pair(ring, cur, next);
            let t0 = Instant::now();
            cc.send(&["EVALSHA", &sha_signal, "2", key, signal, &holders[cur]]);
            let popped = nc.recv();
            assert_eq!(popped.strings().len(), 2, "BLPOP reply: {popped:?}");
            nc.send(&["SET", key, &holders[next], "NX", "PX", "30000"]);
            let got = nc.recv();
            let t1 = Instant::now();
            assert!(got.is_ok(), "SET NX after the signal: {got:?}");
            assert_eq!(cc.recv().int("release+signal"), 1);
            (t0, t1)
        },
        filler_reply: &|r| r.is_nil(),
    };
    let (samples, _) = chain.run(trials);
    samples
}

/// The floor: one PING round trip after the same idle pause.
fn ping(port: u16, trials: usize) -> Vec<f64> {
    let mut c = RawConn::connect(port);
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..WARMUP + trials {
        settle();
        let t0 = Instant::now();
        c.send(&["PING"]);
        let r = c.recv();
        let t1 = Instant::now();
        assert_eq!(r, Reply::Simple("PONG".into()));
        if trial >= WARMUP {
            samples.push(us_between(t0, t1));
        }
    }
    samples
}

/// BLPOP signal list: release = compare-and-delete + LPUSH a token; the
/// waiter BLPOPs the list, then `SET NX`.
fn blpop(port: u16, ctl: &mut redis::Connection, trials: usize) -> Vec<f64> {
    let key = "handoff:blpop";
    let signal = "handoff:blpop:signal";
    let sha_signal = common::script_load(ctl, LUA_RELEASE_SIGNAL);
    let sha_release = common::script_load(ctl, LUA_RELEASE);
    let mut hc = RawConn::connect(port);
    let mut wc = RawConn::connect(port);
    let hh = common::holder("holder", 1);
    let wh = common::holder("waiter", 1);
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..WARMUP + trials {
        assert!(hc.call(&["SET", key, &hh, "NX", "PX", "30000"]).is_ok());
        // The waiter tries first, then blocks on the signal list.
        assert!(wc.call(&["SET", key, &wh, "NX", "PX", "30000"]).is_nil());
        wc.send(&["BLPOP", signal, "10"]);
        wait_for_blocked(ctl, 1);
        settle();
        let t0 = Instant::now();
        hc.send(&["EVALSHA", &sha_signal, "2", key, signal, &hh]);
        let popped = wc.recv();
        assert_eq!(popped.strings().len(), 2, "BLPOP reply: {popped:?}");
        wc.send(&["SET", key, &wh, "NX", "PX", "30000"]);
        let got = wc.recv();
        let t1 = Instant::now();
        assert!(got.is_ok(), "waiter's SET NX after the signal: {got:?}");
        assert_eq!(hc.recv().int("release+signal"), 1);
        if trial >= WARMUP {
            samples.push(us_between(t0, t1));
        }
        assert_eq!(
            wc.call(&["EVALSHA", &sha_release, "1", key, &wh])
                .int("release"),
            1
        );
    }
    samples
}

/// Pub/sub: release = compare-and-delete + PUBLISH; the waiter subscribes,
/// tries `SET NX`, waits for the message, then `SET NX` again.
fn pubsub(port: u16, ctl: &mut redis::Connection, trials: usize) -> Vec<f64> {
    let key = "handoff:pubsub";
    let channel = "handoff:pubsub:released";
    let sha_publish = common::script_load(ctl, LUA_RELEASE_PUBLISH);
    let sha_release = common::script_load(ctl, LUA_RELEASE);
    let mut hc = RawConn::connect(port);
    let mut wc = RawConn::connect(port);
    let mut sub = RawConn::connect(port);
    let confirm = sub.call(&["SUBSCRIBE", channel]);
    assert_eq!(
        confirm.strings().first().map(Vec::as_slice),
        Some(&b"subscribe"[..])
    );
    let hh = common::holder("holder", 1);
    let wh = common::holder("waiter", 1);
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..WARMUP + trials {
        assert!(hc.call(&["SET", key, &hh, "NX", "PX", "30000"]).is_ok());
        assert!(wc.call(&["SET", key, &wh, "NX", "PX", "30000"]).is_nil());
        settle();
        let t0 = Instant::now();
        hc.send(&["EVALSHA", &sha_publish, "1", key, &hh, channel]);
        let msg = sub.recv();
        let parts = msg.strings();
        assert_eq!(
            parts.first().map(Vec::as_slice),
            Some(&b"message"[..]),
            "{msg:?}"
        );
        wc.send(&["SET", key, &wh, "NX", "PX", "30000"]);
        let got = wc.recv();
        let t1 = Instant::now();
        assert!(got.is_ok(), "waiter's SET NX after the message: {got:?}");
        assert_eq!(hc.recv().int("release+publish"), 1);
        if trial >= WARMUP {
            samples.push(us_between(t0, t1));
        }
        assert_eq!(
            wc.call(&["EVALSHA", &sha_release, "1", key, &wh])
                .int("release"),
            1
        );
    }
    samples
}

/// Polling `SET NX` every `interval` in a real thread; the holder releases
/// at a random phase of the waiter's period.
pub fn poll(port: u16, ctl: &mut redis::Connection, trials: usize, interval: Duration) -> Vec<f64> {
    let key = format!("handoff:poll:{}", interval.as_millis());
    let sha_release = common::script_load(ctl, LUA_RELEASE);
    let mut hc = RawConn::connect(port);
    let hh = common::holder("holder", 1);
    let (to_waiter, starts) = mpsc::channel::<()>();
    let (to_main, events) = mpsc::channel::<Option<Instant>>();
    let waiter = {
        let key = key.clone();
        let sha = sha_release.clone();
        thread::spawn(move || {
            let mut wc = RawConn::connect(port);
            let wh = common::holder("waiter", 1);
            while starts.recv().is_ok() {
                let deadline = Instant::now() + interval * 3 + Duration::from_secs(10);
                let mut first = true;
                let won = loop {
                    let got = wc.call(&["SET", &key, &wh, "NX", "PX", "30000"]);
                    if got.is_ok() {
                        break Some(Instant::now());
                    }
                    if first {
                        // Tell the holder the waiter is in its polling loop.
                        first = false;
                        to_main.send(None).expect("main is listening");
                    }
                    if Instant::now() > deadline {
                        break None;
                    }
                    thread::sleep(interval);
                };
                if won.is_some() {
                    assert_eq!(
                        wc.call(&["EVALSHA", &sha, "1", &key, &wh]).int("release"),
                        1
                    );
                }
                to_main.send(won).expect("main is listening");
            }
        })
    };
    let mut rng = rand::thread_rng();
    let mut samples = Vec::with_capacity(trials);
    for _ in 0..trials {
        assert!(hc.call(&["SET", &key, &hh, "NX", "PX", "30000"]).is_ok());
        to_waiter.send(()).expect("waiter is running");
        assert_eq!(events.recv().expect("waiter polling"), None);
        let phase = rng.gen_range(0.0..1.0);
        thread::sleep(interval.mul_f64(phase));
        let t0 = Instant::now();
        hc.send(&["EVALSHA", &sha_release, "1", &key, &hh]);
        assert_eq!(hc.recv().int("release"), 1);
        let t1 = events
            .recv()
            .expect("waiter result")
            .expect("the poller acquired within its deadline");
        samples.push(us_between(t0, t1));
    }
    drop(to_waiter);
    waiter.join().expect("poller thread");
    samples
}

/// The recipes, in the order they run within each segment.
const EVENT_DRIVEN: [&str; 8] = [
    "ping",
    "pingq",
    "wait1",
    "waitchain",
    "waitq",
    "blpop1",
    "blpopq",
    "pubsub",
];

pub fn run(sizes: &Sizes, log: &mut dyn FnMut(&str)) -> Vec<Series> {
    let server = common::start_server();
    let mut ctl = server.conn();
    let port = server.port();
    let maxclients: u64 = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxclients")
        .query::<Vec<String>>(&mut ctl)
        .ok()
        .and_then(|v| v.get(1).and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let idle = sizes
        .queued_waiters
        .min(maxclients.saturating_sub(CHAIN as u64 + 50) as usize);
    let idle_s = crate::stats::fmt_int(idle as u64);
    let describe = |id: &str| -> (String, String, String) {
        match id {
            "ping" => (
                "reference: one PING round trip".into(),
                "PING round trip".into(),
                "not a handoff: the loopback round trip every recipe pays at least once".into(),
            ),
            "pingq" => (
                format!("reference: one PING round trip, {idle_s} idle connections open"),
                format!("PING ({idle_s} idle conns)"),
                "not a handoff: what that many connected clients cost a round trip".into(),
            ),
            "wait1" => (
                "RESERVE.WAIT, 1 waiter".into(),
                "WAIT (1 waiter)".into(),
                "RELEASE hands the key to the queued WAIT inside the command; two connections \
                 take turns"
                    .into(),
            ),
            "waitchain" => (
                format!("RESERVE.WAIT, chain of {CHAIN} waiters, no idle ones"),
                "WAIT (chain, 0 idle)".into(),
                format!(
                    "{CHAIN} waiters queue, then the lock is handed down the queue: the baseline \
                     of the next row (0 to {} waiters behind the one granted)",
                    CHAIN - 1
                ),
            ),
            "waitq" => (
                format!("RESERVE.WAIT, chain, {idle_s} idle waiters queued behind"),
                format!("WAIT ({idle_s} queued)"),
                format!(
                    "the same chain with {idle_s} idle connections queued behind it: {idle_s} to \
                     {} waiters behind the one granted",
                    crate::stats::fmt_int((idle + CHAIN - 1) as u64)
                ),
            ),
            "blpop1" => (
                "BLPOP signal list + SET NX, 1 waiter".into(),
                "BLPOP (1 waiter)".into(),
                "release script deletes and LPUSHes; the waiter BLPOPs, then SET NX".into(),
            ),
            "blpopq" => (
                format!("BLPOP signal list + SET NX, chain, {idle_s} idle BLPOPs queued behind"),
                format!("BLPOP ({idle_s} queued)"),
                "the same chain as the queued WAIT row, on the list's FIFO of blocked clients"
                    .into(),
            ),
            "pubsub" => (
                "pub/sub notification + SET NX".into(),
                "pub/sub".into(),
                "release script deletes and PUBLISHes; the subscribed waiter then SET NX".into(),
            ),
            "poll10" => (
                "polling SET NX every 10 ms".into(),
                "poll 10 ms".into(),
                "a thread polls; the release comes at a random phase of its period".into(),
            ),
            _ => (
                "polling SET NX every 1 s (old libraries)".into(),
                "poll 1 s".into(),
                "a thread polls; the release comes at a random phase of its period".into(),
            ),
        }
    };
    let mut out: Vec<Series> = EVENT_DRIVEN
        .iter()
        .chain(["poll10", "poll1s"].iter())
        .map(|&id| {
            let (name, short, note) = describe(id);
            Series {
                id,
                name,
                short,
                samples: Vec::new(),
                note,
                server_release_us: None,
            }
        })
        .collect();
    // The event-driven recipes run in segments, one segment of each in
    // turn, so a burst of load from elsewhere on the machine lands on all
    // of them alike instead of on whichever recipe was running.
    let segments = sizes.handoff_segments.max(1);
    let per = sizes.handoff_trials.div_ceil(segments);
    let mut release_totals: Vec<(f64, f64)> = vec![(0.0, 0.0); out.len()];
    for seg in 0..segments {
        log(&format!("  segment {} of {segments}", seg + 1));
        for (i, &id) in EVENT_DRIVEN.iter().enumerate() {
            // Each recipe starts from an empty database (a chain ends with
            // its last member holding the lock).
            let _: () = redis::cmd("FLUSHALL").query(&mut ctl).expect("FLUSHALL");
            reset_stats(&mut ctl);
            let samples = match id {
                "ping" => ping(port, per),
                "pingq" => {
                    let _idle = Fillers::connect(port, idle);
                    ping(port, per)
                }
                "wait1" => wait_one(port, &mut ctl, per),
                "waitchain" => wait_queued(port, &mut ctl, per, 0),
                "waitq" => wait_queued(port, &mut ctl, per, idle),
                "blpop1" => blpop(port, &mut ctl, per),
                "blpopq" => blpop_queued(port, &mut ctl, per, idle),
                _ => pubsub(port, &mut ctl, per),
            };
            if id.starts_with("wait") {
                if let Some((calls, usec)) = release_stats(&mut ctl) {
                    release_totals[i].0 += calls;
                    release_totals[i].1 += usec;
                }
            }
            out[i].samples.extend(samples);
            // Closed connections go before the next recipe's connect.
            common::wait_for_clients_below(&mut ctl, 200);
        }
    }
    for (s, (calls, usec)) in out.iter_mut().zip(release_totals) {
        if calls > 0.0 {
            s.server_release_us = Some(usec / calls);
        }
    }
    log("  polling every 10 ms");
    let n = out.len();
    out[n - 2].samples = poll(
        port,
        &mut ctl,
        sizes.poll10_trials,
        Duration::from_millis(10),
    );
    log("  polling every 1 s (the old libraries)");
    out[n - 1].samples = poll(port, &mut ctl, sizes.poll1s_trials, Duration::from_secs(1));
    out
}

pub fn report(series: &[Series], segments: usize) -> String {
    use crate::stats::{fmt_us, max, percentile};
    let mut md = format!(
        "From the holder's release leaving the client to the waiter's reply that it holds the \
         lock (for the client-side recipes: the reply to its `SET NX`). Loopback, one server. \
         Each event-driven trial starts after a {} ms pause with the waiter blocked (a release \
         does not come back-to-back with the wait). The event-driven recipes run in {segments} \
         interleaved segments (each recipe's segment in turn) and the first {WARMUP} trials of \
         each segment are not counted. \
         *Server time* is RESERVE.RELEASE's `usec_per_call` from `INFO commandstats`: the \
         release and the handoff it makes, without the network and the scheduler.\n\n\
         | recipe | trials | p50 | p90 | p99 | max | server time per RELEASE | how |\n\
         |---|---:|---:|---:|---:|---:|---:|---|\n",
        PAUSE.as_millis()
    );
    for s in series {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.name,
            s.samples.len(),
            fmt_us(percentile(&s.samples, 50.0)),
            fmt_us(percentile(&s.samples, 90.0)),
            fmt_us(percentile(&s.samples, 99.0)),
            fmt_us(max(&s.samples)),
            s.server_release_us
                .map_or_else(|| "".to_string(), |u| format!("{u:.2} µs")),
            s.note
        ));
    }
    md
}
