//! The module's process-wide state: the token counter, statistics, and the
//! wait queues with their blocked-client and timer bookkeeping.
//!
//! Redis runs every command, timer, notification and blocked-client
//! callback on its main thread, so the state mutex is never contended; it
//! exists to make that assumption checked rather than `unsafe`. It is never
//! held across a Redis call that can call back into the module (opening a
//! key can expire it and fire a keyspace notification), and `try_lock`
//! turns an accidental re-entry into an error reply instead of a deadlock.
//! The counters are atomics because the free callback may run on a
//! background thread (`FLUSHALL ASYNC`) and `aux_save` in a fork child.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, OnceLock, TryLockError};

use redis_module::raw;

use crate::engine::grants::Ask;
use crate::engine::reservation::Ttl;
use crate::engine::tokens::{TokenIssuer, TokensExhausted, MAX_TOKEN};
use crate::engine::waitqueue::{WaitQueues, WaiterId};

// ----- fencing tokens -----

static LAST_TOKEN: AtomicU64 = AtomicU64::new(0);

/// A new fencing token at wall-clock time `now_ms` (main thread only), or
/// `TokensExhausted` once the counter is at its ceiling.
pub fn issue_token(now_ms: i64) -> Result<u64, TokensExhausted> {
    let mut issuer = TokenIssuer::default();
    issuer.observe(LAST_TOKEN.load(Ordering::Relaxed));
    let token = issuer.issue(now_ms)?;
    LAST_TOKEN.store(token, Ordering::Relaxed);
    Ok(token)
}

/// Raise the counter to a token seen in an RDB, AOF, replication stream or
/// `RESTORE` payload. Callers refuse tokens outside the valid range first;
/// the clamp keeps the counter inside it whatever happens.
pub fn observe_token(token: u64) {
    LAST_TOKEN.fetch_max(token.min(MAX_TOKEN), Ordering::Relaxed);
}

pub fn last_token() -> u64 {
    LAST_TOKEN.load(Ordering::Relaxed)
}

// ----- statistics (INFO reservation) -----

#[derive(Default)]
pub struct Stats {
    pub grants: AtomicU64,
    pub reacquires: AtomicU64,
    pub contended: AtomicU64,
    pub renewals: AtomicU64,
    pub renew_failures: AtomicU64,
    pub releases: AtomicU64,
    pub release_failures: AtomicU64,
    pub handoffs: AtomicU64,
    pub expirations: AtomicU64,
    pub wait_timeouts: AtomicU64,
    pub waits_blocked: AtomicU64,
    pub wrongtype_waiters: AtomicU64,
    pub guard_runs: AtomicU64,
    pub guard_fenced: AtomicU64,
    /// Keys that expired at the end of a lock-delay.
    pub lock_delays: AtomicU64,
    pub observes: AtomicU64,
    pub observe_wakeups: AtomicU64,
    pub observe_timeouts: AtomicU64,
}

pub static STATS: LazyLock<Stats> = LazyLock::new(Stats::default);

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Waiters queued, readable without the lock (keyspace notifications check
/// it first so a server with no waiters pays nothing for them).
pub static WAITERS_QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Grants stored in grant sets, all keys (a mutex value counts as one grant
/// through the data type's live count). May change on a background thread
/// (lazy free), hence atomic.
pub static SET_GRANTS: AtomicU64 = AtomicU64::new(0);

/// Adjusts `SET_GRANTS` after a grant set went from `before` to `after`
/// grants.
pub fn count_set_grants(before: usize, after: usize) {
    if after >= before {
        SET_GRANTS.fetch_add((after - before) as u64, Ordering::Relaxed);
    } else {
        SET_GRANTS.fetch_sub((before - after) as u64, Ordering::Relaxed);
    }
}

// ----- wait queues -----

/// A queue is per key per database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub db: i32,
    pub key: Box<[u8]>,
}

/// A blocked client handle. Only touched on the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockedClient(pub *mut raw::RedisModuleBlockedClient);

// SAFETY: handles are created, used and released on Redis's main thread
// only; the mutex around them is never contended.
unsafe impl Send for BlockedClient {}

/// One client blocked in RESERVE.WAIT.
#[derive(Debug)]
pub struct Waiter {
    pub holder: Box<[u8]>,
    /// The grant's TTL and lock-delay.
    pub ttl: Ttl,
    /// Exclusive, shared, or permits of a semaphore.
    pub ask: Ask,
    pub client: BlockedClient,
    /// The module timer that times this waiter out, if it has a timeout.
    pub timeout_timer: Option<u64>,
    /// Set for one key's entry of a RESERVE.WAITALL: the client waits on
    /// all of the group's keys at once.
    pub group: Option<u64>,
}

/// One client blocked in RESERVE.WAITALL: an entry in each key's queue,
/// granted all at once when it is the oldest on every key and every key is
/// free for it (one arrival order serves every key, so no deadlock).
#[derive(Debug)]
pub struct Group {
    pub client: BlockedClient,
    pub holder: Box<[u8]>,
    pub ttl: Ttl,
    pub members: Vec<(QueueKey, WaiterId)>,
    pub timeout_timer: Option<u64>,
}

/// Per-queue glue data: the timer armed at the key's expiry, so a waiter
/// is granted at the exact instant the holder's TTL runs out.
#[derive(Debug, Default)]
pub struct QueueMeta {
    pub expiry_timer: Option<(u64, i64)>,
    /// The latest `LIMIT` a LOCK or WAIT gave on this key while anyone
    /// waits: the limit its waiters are granted against once the key
    /// holds no grant set to carry one.
    pub limit: Option<u32>,
}

/// A grant whose client vanished before its reply went out: the
/// reservation is released so it does not sit idle until its TTL.
#[derive(Debug)]
pub struct Orphan {
    pub key: QueueKey,
    pub holder: Box<[u8]>,
    pub token: u64,
}

#[derive(Default)]
pub struct ModuleState {
    pub waiters: WaitQueues<QueueKey, Waiter, QueueMeta>,
    pub by_client: HashMap<BlockedClient, WaiterId>,
    /// Granted waiters whose reply Redis has not sent yet (it does so in
    /// `beforeSleep`): a `CLIENT UNBLOCK` in between must still answer them.
    pub undelivered: HashSet<BlockedClient>,
    /// Keys to re-examine once the current command or event is over.
    pub pending: HashSet<QueueKey>,
    pub orphans: Vec<Orphan>,
    pub pending_timer_armed: bool,
    /// Keys holding grant sets, with the timer armed at their earliest
    /// grant's expiry (id, fire-at ms): one timer per key, not per grant.
    pub set_timers: HashMap<QueueKey, (u64, i64)>,
    /// RESERVE.WAITALL clients by group id, and the group of each client.
    pub groups: HashMap<u64, Group>,
    pub group_of_client: HashMap<BlockedClient, u64>,
    pub next_group: u64,
}

impl ModuleState {
    pub fn publish_waiter_count(&self) {
        WAITERS_QUEUED.store(self.waiters.total(), Ordering::Relaxed);
    }
}

static STATE: LazyLock<Mutex<ModuleState>> = LazyLock::new(|| Mutex::new(ModuleState::default()));

/// The state, or None on re-entry (a bug: the caller answers an error).
pub fn state() -> Option<MutexGuard<'static, ModuleState>> {
    match STATE.try_lock() {
        Ok(guard) => Some(guard),
        // A panic was caught while the lock was held; the data is plain
        // bookkeeping that each operation leaves consistent, so go on.
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

// ----- hooks and notes between callbacks -----

/// This server is a replica: set at load and on every role change, so the
/// write commands can refuse at the cost of one load (asking Redis for the
/// context flags costs more than the rest of a LOCK's own code).
static IS_REPLICA: AtomicBool = AtomicBool::new(false);

pub fn set_replica(replica: bool) {
    IS_REPLICA.store(replica, Ordering::Relaxed);
}

pub fn is_replica() -> bool {
    IS_REPLICA.load(Ordering::Relaxed)
}

/// The client Redis is freeing right now: it fires the client-change event
/// just before unblocking the client, so the disconnect callback can tell a
/// dying connection (which must not be inspected) from a `CLIENT UNBLOCK`.
static DISCONNECTING: AtomicU64 = AtomicU64::new(0);

pub fn note_disconnecting(id: u64) {
    DISCONNECTING.store(id, Ordering::Relaxed);
}

/// Whether client `id` is being freed (ids are never reused).
pub fn is_disconnecting(id: u64) -> bool {
    DISCONNECTING.load(Ordering::Relaxed) == id
}

/// What to do when Redis removes one of our keys without any keyspace
/// notification: set once at load by the layer that checks waited keys
/// (`blocking`), so the data type's callback need not know it.
static SILENT_UNLINK: OnceLock<fn(&QueueKey)> = OnceLock::new();

pub fn on_silent_unlink(hook: fn(&QueueKey)) {
    let _ = SILENT_UNLINK.set(hook);
}

pub fn silent_unlink(key: &QueueKey) {
    if let Some(hook) = SILENT_UNLINK.get() {
        hook(key);
    }
}
