//! RESERVE.OBSERVE's blocked clients: a watch on a key's current grant
//! that loses no change (SPEC section 12).
//!
//! An observer names the token it last saw and stays blocked while the
//! key's current grant still has it. Anything that can change that grant
//! (the module's own events, DEL and expiry notifications, a value
//! replaced, a flush, a replicated state) marks the key; a 0 ms timer then
//! looks at the key once the command is over and wakes every observer
//! whose token differs, with the new `[holder, token]`. Changes by time
//! alone (a grant's expiry, a lock-delay's end) have one timer per observed
//! key, so an observer learns of them at that instant, not at the next
//! cron tick. Observers take nothing: granting never looks at them.
//!
//! They have their own state and lock, apart from the waiters': the hooks
//! run from inside commands and notifications that may hold that one.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, TryLockError};

use redis_module::raw;

use crate::engine::errors;
use crate::engine::reservation::{current_grant, next_change};
use crate::engine::waitqueue::{Removed, WaitQueues, WaiterId};
use crate::glue::config;
use crate::glue::ffi::{
    self, create_timer, now_ms, reply_error, reply_integer, rm, select_db, selected_db, stop_timer,
    string_bytes, Ctx, OwnedString, RString,
};
use crate::glue::state::{bump, BlockedClient, QueueKey, STATS};
use crate::glue::store::OpenKey;

/// What a key's current grant is, as OBSERVE reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// None: granted to no one. Shared by every observer woken with it.
    pub holder: Option<Arc<[u8]>>,
    pub token: u64,
    /// When it may next change by time alone.
    pub next_change_at: Option<i64>,
}

/// What the key holds now, or None for a value of another type.
pub fn seen(key: &OpenKey, now: i64) -> Option<Seen> {
    let current = key.current(now)?;
    let grant = current_grant(current, now);
    Some(Seen {
        holder: grant.map(|(holder, _)| Arc::from(holder)),
        token: grant.map_or(0, |(_, token)| token),
        next_change_at: next_change(current, key.abs_expire(), now),
    })
}

/// One blocked OBSERVE.
struct Observer {
    client: BlockedClient,
    seen: u64,
    timeout_timer: Option<u64>,
}

/// Per observed key: the timer armed for its next change by time.
#[derive(Default)]
struct KeyMeta {
    change_timer: Option<(u64, i64)>,
}

#[derive(Default)]
struct Observers {
    queues: WaitQueues<QueueKey, Observer, KeyMeta>,
    by_client: HashMap<BlockedClient, WaiterId>,
    /// Keys to look at once the current command or event is over.
    pending: HashSet<QueueKey>,
    pending_timer_armed: bool,
}

static OBSERVERS: LazyLock<Mutex<Observers>> = LazyLock::new(Mutex::default);

/// Observers blocked, readable without the lock: the hooks cost one load
/// while nobody observes.
static OBSERVING: AtomicUsize = AtomicUsize::new(0);

pub fn observing() -> usize {
    OBSERVING.load(Ordering::Relaxed)
}

fn observers() -> Option<MutexGuard<'static, Observers>> {
    match OBSERVERS.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl Observers {
    fn publish_count(&self) {
        OBSERVING.store(self.queues.total(), Ordering::Relaxed);
    }
}

/// What an observer is told when Redis runs its reply callback.
enum Reply {
    Changed {
        holder: Option<Arc<[u8]>>,
        token: u64,
    },
    TimedOut,
    WrongType,
}

// ----- marking keys that may have changed -----

/// `name` in the context's db may have a new current grant.
pub fn note_change(ctx: Ctx, name: &[u8]) {
    if observing() == 0 {
        return;
    }
    note_key(
        ctx,
        QueueKey {
            db: selected_db(ctx),
            key: name.into(),
        },
    );
}

/// As `note_change`, for a key Redis hands us as a string.
pub fn note_change_of(ctx: Ctx, name: RString) {
    if observing() > 0 {
        note_change(ctx, string_bytes(name));
    }
}

/// As `note_change`, from a callback that has no context (the data type's
/// unlink: a value replaced by another type, a key dropped silently).
pub fn note_unlinked(key: &QueueKey) {
    if observing() == 0 {
        return;
    }
    let ctx = ffi::detached_ctx();
    if !ctx.is_null() {
        note_key(ctx, key.clone());
    }
}

/// Every observed key of `db` (None: all): a flush, a swap, a load.
pub fn note_all(ctx: Ctx, db: Option<i32>) {
    if observing() == 0 {
        return;
    }
    let Some(mut obs) = observers() else { return };
    let keys: Vec<QueueKey> = obs
        .queues
        .keys()
        .filter(|k| db.is_none_or(|d| d == k.db))
        .cloned()
        .collect();
    obs.pending.extend(keys);
    arm_pending(ctx, &mut obs);
}

fn note_key(ctx: Ctx, qk: QueueKey) {
    let Some(mut obs) = observers() else { return };
    if obs.queues.len(&qk) == 0 {
        return;
    }
    obs.pending.insert(qk);
    arm_pending(ctx, &mut obs);
}

fn arm_pending(ctx: Ctx, obs: &mut Observers) {
    if !obs.pending_timer_armed {
        obs.pending_timer_armed = true;
        create_timer(ctx, 0, process_pending, ptr::null_mut());
    }
}

extern "C" fn process_pending(ctx: Ctx, _data: *mut c_void) {
    let keys = match observers() {
        Some(mut obs) => {
            obs.pending_timer_armed = false;
            std::mem::take(&mut obs.pending)
        }
        None => return,
    };
    for qk in keys {
        check(ctx, &qk);
    }
}

/// Observers woken per key per pass of the module's 0 ms timer, the rest
/// at the next pass. Redis replies to a woken client in its `beforeSleep`,
/// about 14 µs each: ten thousand at once would hold every other client
/// (and the command that changed the key, whose reply goes out last) for
/// over 100 ms. In batches, the server serves other clients between them.
const WAKE_BATCH: usize = 256;

/// Looks at an observed key and wakes the observers whose token is no
/// longer the current grant's (a batch of them, the rest at the next pass);
/// re-arms the key's timer for those left.
fn check(ctx: Ctx, qk: &QueueKey) {
    select_db(ctx, qk.db);
    let name = OwnedString::new(ctx, &qk.key);
    // Opened (which may expire the key and notify) before the lock.
    let now = now_ms();
    let state = {
        let key = OpenKey::read(ctx, name.as_ptr());
        seen(&key, now)
    };
    let Some(mut obs) = observers() else { return };
    let mut stale: Vec<WaiterId> = obs
        .queues
        .iter(qk)
        .filter(|(_, o)| state.as_ref().is_none_or(|s| s.token != o.seen))
        .map(|(id, _)| id)
        .take(WAKE_BATCH + 1)
        .collect();
    if stale.len() > WAKE_BATCH {
        // The rest at the next pass of the timer.
        stale.truncate(WAKE_BATCH);
        obs.pending.insert(qk.clone());
        arm_pending(ctx, &mut obs);
    }
    for id in stale {
        let Some(observer) = take(ctx, &mut obs, id) else {
            continue;
        };
        let reply = match &state {
            Some(s) => Reply::Changed {
                holder: s.holder.clone(),
                token: s.token,
            },
            None => Reply::WrongType,
        };
        bump(&STATS.observe_wakeups);
        unblock(observer.client, reply);
    }
    let next = state.and_then(|s| s.next_change_at);
    sync_change_timer(ctx, &mut obs, qk, next, now);
    obs.publish_count();
}

// ----- blocking an observer -----

/// Blocks the calling client until `qk`'s current grant is no longer
/// `seen_token` or `timeout_ms` passes. `next_change_at` is when the key
/// may next change by time alone.
pub fn block(
    ctx: Ctx,
    qk: QueueKey,
    seen_token: u64,
    timeout_ms: Option<u64>,
    next_change_at: Option<i64>,
) -> Result<(), &'static str> {
    let mut obs = observers().ok_or(errors::STATE_BUSY)?;
    let max = config::max_waiters();
    if obs.queues.len(&qk) >= max {
        return Err(errors::TOO_MANY_WAITERS);
    }
    // SAFETY: the caller checked that this context may block; the
    // callbacks match the signatures Redis expects.
    let bc = unsafe {
        rm!(RedisModule_BlockClient)(
            ctx,
            Some(observe_reply),
            Some(observe_unblocked),
            Some(free_reply),
            0,
        )
    };
    if bc.is_null() {
        return Err(errors::INTERNAL_PANIC);
    }
    // SAFETY: bc is the handle just created.
    unsafe { rm!(RedisModule_SetDisconnectCallback)(bc, Some(observe_disconnected)) };
    let client = BlockedClient(bc);
    let observer = Observer {
        client,
        seen: seen_token,
        timeout_timer: None,
    };
    let Ok(id) = obs.queues.push(qk.clone(), observer, max) else {
        unblock(client, Reply::TimedOut);
        return Ok(());
    };
    obs.by_client.insert(client, id);
    if let Some(timeout) = timeout_ms {
        let data = id.to_raw() as usize as *mut c_void;
        let timer = create_timer(ctx, timeout as i64, observer_timed_out, data);
        if let Some(o) = obs.queues.get_mut(id) {
            o.timeout_timer = Some(timer);
        }
    }
    sync_change_timer(ctx, &mut obs, &qk, next_change_at, now_ms());
    obs.publish_count();
    Ok(())
}

/// Takes an observer out of its queue with its bookkeeping (client
/// mapping, timeout, and the key's timer when it was the last).
fn take(ctx: Ctx, obs: &mut Observers, id: WaiterId) -> Option<Observer> {
    let Removed { value, emptied, .. } = obs.queues.remove(id)?;
    obs.by_client.remove(&value.client);
    if let Some(timer) = value.timeout_timer {
        // The data is the observer id, an integer: nothing to free.
        let _ = stop_timer(ctx, timer);
    }
    if let Some(meta) = emptied {
        cancel_change_timer(ctx, meta);
    }
    Some(value)
}

fn unblock(client: BlockedClient, reply: Reply) {
    let data = Box::into_raw(Box::new(reply));
    // SAFETY: the handle came from BlockClient and is unblocked once (it
    // left the queue first); Redis hands `data` to our callbacks.
    unsafe { rm!(RedisModule_UnblockClient)(client.0, data.cast()) };
}

extern "C" fn observe_reply(ctx: Ctx, _argv: *mut RString, _argc: c_int) -> c_int {
    // SAFETY: the private data is the Box<Reply> given to UnblockClient,
    // alive until free_reply.
    let reply = unsafe { rm!(RedisModule_GetBlockedClientPrivateData)(ctx) }.cast::<Reply>();
    // SAFETY: as above; nothing else touches it meanwhile.
    match unsafe { reply.as_ref() } {
        Some(Reply::Changed { holder, token }) => reply_seen(ctx, holder.as_deref(), *token),
        Some(Reply::WrongType) => reply_error(ctx, errors::WRONGTYPE),
        Some(Reply::TimedOut) | None => ffi::reply_null(ctx),
    }
    raw::REDISMODULE_OK as c_int
}

/// OBSERVE's answer: `[holder, token]`, `[nil, 0]` for no grant.
pub fn reply_seen(ctx: Ctx, holder: Option<&[u8]>, token: u64) {
    ffi::reply_array(ctx, 2);
    match holder {
        Some(h) => ffi::reply_bulk(ctx, h),
        None => ffi::reply_null(ctx),
    }
    reply_integer(ctx, token as i64);
}

extern "C" fn free_reply(_ctx: Ctx, data: *mut c_void) {
    if !data.is_null() {
        // SAFETY: the Box<Reply> passed to UnblockClient, freed once.
        drop(unsafe { Box::from_raw(data.cast::<Reply>()) });
    }
}

/// `CLIENT UNBLOCK id` (observers have no Redis-side timeout): nil, as on
/// a timeout.
extern "C" fn observe_unblocked(ctx: Ctx, _argv: *mut RString, _argc: c_int) -> c_int {
    // SAFETY: in a timeout callback the context carries the handle.
    let bc = unsafe { rm!(RedisModule_GetBlockedClientHandle)(ctx) };
    if let Some(mut obs) = observers() {
        if let Some(id) = obs.by_client.get(&BlockedClient(bc)).copied() {
            if take(ctx, &mut obs, id).is_some() {
                bump(&STATS.observe_timeouts);
            }
            obs.publish_count();
            // SAFETY: still blocked (it was in `by_client`); frees the
            // handle once Redis finishes unblocking it.
            unsafe { rm!(RedisModule_UnblockClient)(bc, ptr::null_mut()) };
        }
    }
    ffi::reply_null(ctx);
    raw::REDISMODULE_OK as c_int
}

/// The observer's connection went away: it leaves the queue.
extern "C" fn observe_disconnected(ctx: Ctx, bc: *mut raw::RedisModuleBlockedClient) {
    let Some(mut obs) = observers() else { return };
    if let Some(id) = obs.by_client.get(&BlockedClient(bc)).copied() {
        take(ctx, &mut obs, id);
        obs.publish_count();
        // SAFETY: still blocked; frees the handle.
        unsafe { rm!(RedisModule_UnblockClient)(bc, ptr::null_mut()) };
    }
}

extern "C" fn observer_timed_out(ctx: Ctx, data: *mut c_void) {
    let id = WaiterId::from_raw(data as usize as u64);
    let Some(mut obs) = observers() else { return };
    // The timer already fired: make sure it is not stopped again.
    if let Some(o) = obs.queues.get_mut(id) {
        o.timeout_timer = None;
    }
    if let Some(observer) = take(ctx, &mut obs, id) {
        bump(&STATS.observe_timeouts);
        unblock(observer.client, Reply::TimedOut);
    }
    obs.publish_count();
}

// ----- one timer per observed key, at its next change by time -----

fn sync_change_timer(ctx: Ctx, obs: &mut Observers, qk: &QueueKey, at: Option<i64>, now: i64) {
    let Some(meta) = obs.queues.meta_mut(qk) else {
        return;
    };
    if meta.change_timer.map(|(_, armed)| armed) == at {
        return;
    }
    if let Some((id, _)) = meta.change_timer.take() {
        free_timer_key(stop_timer(ctx, id));
    }
    if let Some(at) = at {
        let data = Box::into_raw(Box::new(qk.clone()));
        let delay = ffi::timer_delay(at, now, ffi::now_us());
        let id = create_timer(ctx, delay, change_due, data.cast());
        meta.change_timer = Some((id, at));
    }
}

fn cancel_change_timer(ctx: Ctx, meta: KeyMeta) {
    if let Some((id, _)) = meta.change_timer {
        free_timer_key(stop_timer(ctx, id));
    }
}

fn free_timer_key(data: Option<*mut c_void>) {
    if let Some(data) = data.filter(|d| !d.is_null()) {
        // SAFETY: change timers carry a Box<QueueKey>; a stopped timer
        // hands it back once.
        drop(unsafe { Box::from_raw(data.cast::<QueueKey>()) });
    }
}

extern "C" fn change_due(ctx: Ctx, data: *mut c_void) {
    // SAFETY: a fired change timer owns its Box<QueueKey>.
    let qk = *unsafe { Box::from_raw(data.cast::<QueueKey>()) };
    if let Some(mut obs) = observers() {
        if let Some(meta) = obs.queues.meta_mut(&qk) {
            meta.change_timer = None;
        }
    }
    check(ctx, &qk);
}
