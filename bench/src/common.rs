//! Shared by every section: run sizes, servers, clocks, the Lua recipes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::{Config, Server};

/// How big a run is: `--quick` (CI-sized) or the full default.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub quick: bool,
    /// Section 1: rounds, and requests per row at pipeline 1 and 16.
    pub rounds: usize,
    pub requests_p1: u64,
    pub requests_p16: u64,
    /// Section 2: trials per event-driven recipe, for the 10 ms and the
    /// 1 s poller, and how many idle waiters queue behind the measured one.
    pub handoff_trials: usize,
    /// The event-driven recipes run interleaved in this many segments.
    pub handoff_segments: usize,
    pub poll10_trials: usize,
    pub poll1s_trials: usize,
    pub queued_waiters: usize,
    /// Section 3: trials for WAIT, for the 10 ms poller and the
    /// notification waiter, and for the notification waiter when 10,000
    /// other keys carry TTLs (each such trial can take its 1 s fallback).
    pub expiry_trials: usize,
    pub expiry_poll_trials: usize,
    pub expiry_notify_busy_trials: usize,
    pub other_keys: usize,
    /// Section 4: acquisitions per run.
    pub fair_acquisitions: u64,
    /// Section 5: reservations held.
    pub memory_keys: u64,
    /// Section 6: rounds of the notice-latency runs, and cycles (release,
    /// lock, handoff) per mechanism per round.
    pub observe_rounds: usize,
    pub notice_trials: usize,
    /// Rounds of the reconnect test, and leader changes while away.
    pub reconnect_rounds: usize,
    pub reconnect_changes: usize,
    /// Watchers on one key, and rounds per size.
    pub observers: Vec<usize>,
    pub crowd_rounds: usize,
}

impl Sizes {
    pub fn quick() -> Sizes {
        Sizes {
            quick: true,
            rounds: 3,
            requests_p1: 25_000,
            requests_p16: 100_000,
            handoff_trials: 200,
            handoff_segments: 2,
            poll10_trials: 100,
            poll1s_trials: 5,
            queued_waiters: 5_000,
            expiry_trials: 25,
            expiry_poll_trials: 15,
            expiry_notify_busy_trials: 3,
            other_keys: 10_000,
            fair_acquisitions: 200,
            memory_keys: 100_000,
            observe_rounds: 2,
            notice_trials: 40,
            reconnect_rounds: 2,
            reconnect_changes: 5,
            observers: vec![1_000, 5_000],
            crowd_rounds: 2,
        }
    }

    pub fn full() -> Sizes {
        Sizes {
            quick: false,
            rounds: 7,
            requests_p1: 100_000,
            requests_p16: 500_000,
            handoff_trials: 1000,
            handoff_segments: 5,
            poll10_trials: 300,
            poll1s_trials: 20,
            queued_waiters: 5_000,
            expiry_trials: 150,
            expiry_poll_trials: 100,
            expiry_notify_busy_trials: 20,
            other_keys: 10_000,
            fair_acquisitions: 500,
            memory_keys: 1_000_000,
            observe_rounds: 5,
            notice_trials: 200,
            reconnect_rounds: 5,
            reconnect_changes: 5,
            observers: vec![1_000, 5_000, 10_000],
            crowd_rounds: 5,
        }
    }
}

/// A server with the module on a free loopback port, room for 10,000
/// clients, defaults otherwise (hz 10, no persistence).
pub fn start_server() -> Server {
    Server::with(Config::default().arg("maxclients", "10100"))
}

/// Microseconds since the Unix epoch (the clock Redis's expiry times use).
pub fn unix_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as f64
}

pub fn us_between(t0: Instant, t1: Instant) -> f64 {
    t1.saturating_duration_since(t0).as_nanos() as f64 / 1000.0
}

/// One `name:value` field of an INFO section.
pub fn info_field(conn: &mut redis::Connection, section: &str, name: &str) -> Option<String> {
    let text: String = redis::cmd("INFO").arg(section).query(conn).ok()?;
    let prefix = format!("{name}:");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().to_string())
}

pub fn info_u64(conn: &mut redis::Connection, section: &str, name: &str) -> u64 {
    info_field(conn, section, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no numeric {name}"))
}

/// Waits until `INFO reservation` counts exactly `n` queued waiters.
pub fn wait_for_waiters(conn: &mut redis::Connection, n: u64) {
    testkit::wait_until(
        Duration::from_secs(30),
        &format!("{n} waiters queued"),
        || testkit::reservation_info(conn).get("waiters").copied() == Some(n),
    );
}

/// Waits until `n` clients are blocked (BLPOP and module WAITs alike).
pub fn wait_for_blocked(conn: &mut redis::Connection, n: u64) {
    testkit::wait_until(
        Duration::from_secs(30),
        &format!("{n} blocked clients"),
        || info_u64(conn, "clients", "blocked_clients") == n,
    );
}

/// Waits until only `n` clients are connected (the load generator's
/// connections are gone, so their buffers are not counted as data).
pub fn wait_for_clients(conn: &mut redis::Connection, n: u64) {
    testkit::wait_until(
        Duration::from_secs(30),
        &format!("{n} connected clients"),
        || info_u64(conn, "clients", "connected_clients") == n,
    );
}

/// Waits until fewer than `n` clients are connected.
pub fn wait_for_clients_below(conn: &mut redis::Connection, n: u64) {
    testkit::wait_until(
        Duration::from_secs(30),
        &format!("fewer than {n} connected clients"),
        || info_u64(conn, "clients", "connected_clients") < n,
    );
}

/// The old libraries' compare-and-delete release (the Redlock recipe).
pub const LUA_RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Compare-and-pexpire renew.
pub const LUA_RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// Release that wakes a BLPOP waiter: compare-and-delete, then push a token
/// onto the signal list KEYS[2].
pub const LUA_RELEASE_SIGNAL: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]); redis.call('lpush', KEYS[2], '1'); return 1 else return 0 end";

/// Release that wakes subscribers: compare-and-delete, then PUBLISH on the
/// channel ARGV[2].
pub const LUA_RELEASE_PUBLISH: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]); redis.call('publish', ARGV[2], KEYS[1]); return 1 else return 0 end";

pub fn script_load(conn: &mut redis::Connection, body: &str) -> String {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(body)
        .query(conn)
        .expect("SCRIPT LOAD")
}

/// A holder name of the length the client crate uses
/// (`<by>-<hostname>-<pid>-<random>`), different per `n`.
pub fn holder(prefix: &str, n: u64) -> String {
    format!(
        "{prefix}-benchhost-{n:06}-{:08x}",
        (n.wrapping_mul(0x9E37_79B9)) as u32
    )
}
