//! Keyspace notifications and server events that can free a key with
//! waiters: DEL/UNLINK, expiry, eviction, RENAME/MOVE away, a change of
//! type, FLUSHDB/FLUSHALL, SWAPDB, loading, promotion to master.
//!
//! Redis 7.0 forbids writes inside a notification callback (and would
//! propagate them before the DEL that caused them), so callbacks only note
//! the key; a 0 ms timer does the handoff right after the current command.

use std::ffi::{c_char, c_int, c_void};

use redis_module::raw;

use crate::glue::blocking::{schedule_check, schedule_check_all};
use crate::glue::ffi::{create_timer, replicate, rm, selected_db, string_bytes, Ctx, RString};
use crate::glue::notify::{notify, Event};
use crate::glue::observers;
use crate::glue::state::{bump, last_token, state, QueueKey, STATS, WAITERS_QUEUED};
use crate::glue::state::{note_disconnecting, set_replica};
use crate::glue::unlinks::{take_unlinked, unlink_pending};

/// The classes through which a key can go away or change its expiry: DEL,
/// UNLINK, RENAME, MOVE, RESTORE, EXPIRE/PERSIST (generic), expiry,
/// eviction. A value can only become another type after one of these (or
/// a SET over it, which the data type's unlink callback reports), so the
/// per-type classes (string, hash, list, ...) are not subscribed: every
/// plain write on the server would pay for a callback otherwise.
pub const SUBSCRIBED: c_int = raw::REDISMODULE_NOTIFY_GENERIC
    | raw::REDISMODULE_NOTIFY_EXPIRED
    | raw::REDISMODULE_NOTIFY_EVICTED;

pub extern "C" fn on_keyspace_event(
    ctx: Ctx,
    event_type: c_int,
    _event: *const c_char,
    key: RString,
) -> c_int {
    let expired = event_type & raw::REDISMODULE_NOTIFY_EXPIRED != 0;
    // Deleted, expired, renamed, retyped: its observers look.
    observers::note_change_of(ctx, key);
    let unlinked = unlink_pending();
    let waited = WAITERS_QUEUED.load(std::sync::atomic::Ordering::Relaxed) > 0;
    if !unlinked && !waited {
        return raw::REDISMODULE_OK as c_int;
    }
    let qk = QueueKey {
        db: selected_db(ctx),
        key: string_bytes(key).into(),
    };
    if unlinked && expired {
        if let Some(delayed) = take_unlinked(&qk) {
            bump(&STATS.expirations);
            if delayed {
                bump(&STATS.lock_delays);
            }
            notify(ctx, Event::Expire, key);
        }
    } else if unlinked {
        take_unlinked(&qk);
    }
    if !waited {
        return raw::REDISMODULE_OK as c_int;
    }
    // Any event on a key with waiters is worth a look: it may have been
    // deleted, retyped, or given a new expiry for the timer to follow.
    if let Some(mut st) = state() {
        if st.waiters.len(&qk) > 0 {
            schedule_check(ctx, &mut st, qk);
        }
    }
    raw::REDISMODULE_OK as c_int
}

fn event(id: u64) -> raw::RedisModuleEvent {
    raw::RedisModuleEvent { id, dataver: 1 }
}

extern "C" fn on_flush(ctx: Ctx, _e: raw::RedisModuleEvent, sub: u64, data: *mut c_void) {
    if sub != raw::REDISMODULE_SUBEVENT_FLUSHDB_END {
        return;
    }
    // SAFETY: for FlushDB events the data is a RedisModuleFlushInfo.
    let info = unsafe { &*data.cast::<raw::RedisModuleFlushInfo>() };
    let db = (info.dbnum >= 0).then_some(info.dbnum);
    schedule_check_all(ctx, db);
    observers::note_all(ctx, db);
}

extern "C" fn on_swapdb(ctx: Ctx, _e: raw::RedisModuleEvent, _sub: u64, data: *mut c_void) {
    // SAFETY: for SwapDB events the data is a RedisModuleSwapDbInfo.
    let info = unsafe { &*data.cast::<raw::RedisModuleSwapDbInfo>() };
    for db in [info.dbnum_first, info.dbnum_second] {
        schedule_check_all(ctx, Some(db));
        observers::note_all(ctx, Some(db));
    }
}

extern "C" fn on_loading(ctx: Ctx, _e: raw::RedisModuleEvent, sub: u64, _data: *mut c_void) {
    if sub == raw::REDISMODULE_SUBEVENT_LOADING_ENDED {
        schedule_check_all(ctx, None);
        observers::note_all(ctx, None);
    }
}

extern "C" fn on_role_change(ctx: Ctx, _e: raw::RedisModuleEvent, sub: u64, _data: *mut c_void) {
    let now_master = sub == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_MASTER;
    set_replica(!now_master);
    if now_master {
        schedule_check_all(ctx, None);
    }
    observers::note_all(ctx, None);
}

/// A child process (AOF rewrite, RDB save) was forked. An AOF rewritten
/// without an RDB preamble keeps no aux data, so once the new incremental
/// AOF is open, record the token counter in it (and in the replication
/// stream). Deferred to a timer: the event context is no place to write.
extern "C" fn on_fork(ctx: Ctx, _e: raw::RedisModuleEvent, sub: u64, _data: *mut c_void) {
    if sub == raw::REDISMODULE_SUBEVENT_FORK_CHILD_BORN && last_token() > 0 {
        create_timer(ctx, 0, record_token_floor, std::ptr::null_mut());
    }
}

extern "C" fn record_token_floor(ctx: Ctx, _data: *mut c_void) {
    let token = last_token().to_string();
    replicate(ctx, c"RESERVE.TOKENFLOOR", &[token.as_bytes()]);
}

extern "C" fn on_client_change(_ctx: Ctx, _e: raw::RedisModuleEvent, sub: u64, data: *mut c_void) {
    if sub == raw::REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED && !data.is_null() {
        // SAFETY: for client-change events the data is a ClientInfo.
        let info = unsafe { &*data.cast::<raw::RedisModuleClientInfo>() };
        note_disconnecting(info.id);
    }
}

type ServerEventCallback = unsafe extern "C" fn(Ctx, raw::RedisModuleEvent, u64, *mut c_void);

pub fn subscribe(ctx: Ctx) -> Result<(), String> {
    // SAFETY: ctx is the OnLoad context; the callback has the right type.
    let status = unsafe {
        rm!(RedisModule_SubscribeToKeyspaceEvents)(ctx, SUBSCRIBED, Some(on_keyspace_event))
    };
    if status != raw::REDISMODULE_OK as c_int {
        return Err("could not subscribe to keyspace events".into());
    }
    let server_events: [(u64, ServerEventCallback); 6] = [
        (raw::REDISMODULE_EVENT_FLUSHDB, on_flush),
        (raw::REDISMODULE_EVENT_SWAPDB, on_swapdb),
        (raw::REDISMODULE_EVENT_LOADING, on_loading),
        (
            raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
            on_role_change,
        ),
        (raw::REDISMODULE_EVENT_FORK_CHILD, on_fork),
        (raw::REDISMODULE_EVENT_CLIENT_CHANGE, on_client_change),
    ];
    for (id, callback) in server_events {
        // SAFETY: as above; the event struct is copied by Redis.
        let status =
            unsafe { rm!(RedisModule_SubscribeToServerEvent)(ctx, event(id), Some(callback)) };
        if status != raw::REDISMODULE_OK as c_int {
            return Err(format!("could not subscribe to server event {id}"));
        }
    }
    Ok(())
}
