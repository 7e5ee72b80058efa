//! The `rsrv-lock` data type: RDB save/load, AOF rewrite, digest, memory
//! usage, copy, free, and the aux field that carries the token counter.
//!
//! RDB encoding version 1: holder (string), token (unsigned), acquired-at
//! ms (signed), renewals (unsigned). The key's expiry is saved by Redis.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::args::HOLDER_LEN_CAP;
use crate::ffi::{log_io_warning, rm, string_bytes, RString};
use crate::reservation::{is_valid_token, Reservation, ReservationRef, MAX_RENEWALS};
use crate::state::{last_token, observe_token, QueueKey};

pub const TYPE_NAME: &str = "rsrv-lock";
pub const ENCODING_VERSION: i32 = 1;

/// Reservations currently stored (created minus freed).
static LIVE: AtomicU64 = AtomicU64::new(0);

pub fn count_created() {
    LIVE.fetch_add(1, Ordering::Relaxed);
}
pub fn count_freed() {
    LIVE.fetch_sub(1, Ordering::Relaxed);
}
pub fn live_reservations() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

pub static RESERVATION_TYPE: RedisType = RedisType::new(
    TYPE_NAME,
    ENCODING_VERSION,
    raw::RedisModuleTypeMethods {
        // Version 4 is what Redis 7.0 knows: it reads no field past
        // `copy2`, so the newer tail stays unset.
        version: 4,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        free: Some(free),
        aux_load: Some(aux_load),
        aux_save: Some(aux_save),
        aux_save_triggers: raw::REDISMODULE_AUX_BEFORE_RDB as c_int,
        free_effort: None,
        unlink: None,
        copy: Some(copy),
        defrag: None,
        mem_usage2: None,
        free_effort2: None,
        unlink2: Some(unlink2),
        copy2: None,
        aux_save2: None,
    },
);

/// Loads one value from an RDB file, a `RESTORE` payload or a `MIGRATE`.
/// A null answer makes Redis refuse it ("Bad data format" for a payload,
/// a failed load for a file): out-of-range values are refused, never
/// adopted, because one forged token would exhaust the counter for every
/// key and a holder outside the limits could never renew or release.
extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    if encver != ENCODING_VERSION {
        return std::ptr::null_mut();
    }
    match load_v1(rdb) {
        Ok(r) => {
            observe_token(r.token());
            count_created();
            r.into_raw()
        }
        Err(Refused::Truncated) => std::ptr::null_mut(),
        Err(Refused::OutOfRange(what)) => {
            log_io_warning(rdb, &format!("reservation: refused a stored value: {what}"));
            std::ptr::null_mut()
        }
    }
}

enum Refused {
    /// Redis's own I/O error (truncated or corrupt): Redis reports it.
    Truncated,
    OutOfRange(&'static str),
}

fn load_v1(rdb: *mut raw::RedisModuleIO) -> Result<Reservation, Refused> {
    let holder = raw::load_string_buffer(rdb).map_err(|_| Refused::Truncated)?;
    let token = raw::load_unsigned(rdb).map_err(|_| Refused::Truncated)?;
    let acquired_at_ms = raw::load_signed(rdb).map_err(|_| Refused::Truncated)?;
    let renewals = raw::load_unsigned(rdb).map_err(|_| Refused::Truncated)?;
    let holder = holder.as_ref();
    if holder.is_empty() || holder.len() > HOLDER_LEN_CAP {
        return Err(Refused::OutOfRange("holder empty or longer than 1 MiB"));
    }
    if !is_valid_token(token) {
        return Err(Refused::OutOfRange("token outside 1..2^53-1"));
    }
    if renewals > MAX_RENEWALS {
        return Err(Refused::OutOfRange("renewal count above 2^32-1"));
    }
    Ok(Reservation::with_renewals(
        holder,
        token,
        acquired_at_ms,
        renewals,
    ))
}

/// The reservation behind a value pointer Redis hands back to us.
fn value<'a>(value: *const c_void) -> ReservationRef<'a> {
    // SAFETY: Redis only calls our type callbacks with non-null values we
    // made with Reservation::into_raw, alive until `free`.
    unsafe { ReservationRef::from_raw(NonNull::new_unchecked(value.cast_mut())) }
}

extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, v: *mut c_void) {
    let r = value(v);
    raw::save_slice(rdb, r.holder());
    raw::save_unsigned(rdb, r.token());
    raw::save_signed(rdb, r.acquired_at_ms());
    raw::save_unsigned(rdb, r.renewals());
}

/// Emits the internal command that rebuilds the reservation exactly; Redis
/// appends the key's PEXPIREAT after it.
extern "C" fn aof_rewrite(aof: *mut raw::RedisModuleIO, key: RString, v: *mut c_void) {
    let r = value(v);
    let token = r.token().to_string();
    let acquired = r.acquired_at_ms().to_string();
    let renewals = r.renewals().to_string();
    // SAFETY: "sbbbbc": key string, four buffers with lengths, one C string.
    unsafe {
        rm!(RedisModule_EmitAOF)(
            aof,
            c"RESERVE.SETSTATE".as_ptr(),
            c"sbbbbc".as_ptr(),
            key,
            r.holder().as_ptr(),
            r.holder().len(),
            token.as_ptr(),
            token.len(),
            acquired.as_ptr(),
            acquired.len(),
            renewals.as_ptr(),
            renewals.len(),
            c"0".as_ptr(),
        )
    };
}

/// Allocator overhead per heap block, roughly jemalloc's size classes.
fn allocation(bytes: usize) -> usize {
    bytes.next_multiple_of(16)
}

extern "C" fn mem_usage(v: *const c_void) -> usize {
    allocation(value(v).heap_size())
}

extern "C" fn digest(md: *mut raw::RedisModuleDigest, v: *mut c_void) {
    let r = value(v);
    // SAFETY: md is the digest context Redis passed; buffers are copied.
    unsafe {
        rm!(RedisModule_DigestAddStringBuffer)(md, r.holder().as_ptr().cast(), r.holder().len());
        rm!(RedisModule_DigestAddLongLong)(md, r.token() as i64);
        rm!(RedisModule_DigestAddLongLong)(md, r.acquired_at_ms());
        rm!(RedisModule_DigestAddLongLong)(md, r.renewals() as i64);
        rm!(RedisModule_DigestEndSequence)(md);
    }
}

/// May run on a background thread (lazy free): touch nothing but the value
/// and the atomic counter.
extern "C" fn free(v: *mut c_void) {
    let Some(v) = NonNull::new(v) else { return };
    // SAFETY: made by Reservation::into_raw; Redis frees each value once.
    drop(unsafe { Reservation::from_raw(v) });
    count_freed();
}

extern "C" fn copy(_from: RString, _to: RString, v: *const c_void) -> *mut c_void {
    let r = value(v).to_owned();
    count_created();
    r.into_raw()
}

extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, when: c_int) {
    if when == raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
        raw::save_unsigned(rdb, last_token());
    }
}

extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, when: c_int) -> c_int {
    if encver != ENCODING_VERSION || when != raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
        return raw::REDISMODULE_ERR as c_int;
    }
    match raw::load_unsigned(rdb) {
        // 0: no token issued yet.
        Ok(token) if token == 0 || is_valid_token(token) => {
            observe_token(token);
            raw::REDISMODULE_OK as c_int
        }
        Ok(_) => {
            log_io_warning(
                rdb,
                "reservation: refused the RDB's token counter: outside 0..2^53-1",
            );
            raw::REDISMODULE_ERR as c_int
        }
        Err(_) => raw::REDISMODULE_ERR as c_int,
    }
}

// ----- telling expiry apart from other deletions -----
//
// Redis calls `unlink2` just before it removes one of our keys from the
// keyspace, and fires the `expired` / `evicted` notification right after.
// Remembering the last unlinked key lets the notification count the
// expirations of reservations (the key is already gone by then, so its
// type cannot be asked).

/// The last reservation unlinked, and when (unix ms).
static LAST_UNLINKED: std::sync::Mutex<Option<(QueueKey, i64)>> = std::sync::Mutex::new(None);
/// Set while LAST_UNLINKED holds a key: lets every other notification
/// skip the mutex.
static UNLINK_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn unlink2(ctx: *mut raw::RedisModuleKeyOptCtx, _v: *const c_void) {
    // SAFETY: the opt ctx is valid for this callback.
    let (name, db) = unsafe {
        (
            rm!(RedisModule_GetKeyNameFromOptCtx)(ctx),
            rm!(RedisModule_GetDbIdFromOptCtx)(ctx),
        )
    };
    let key = QueueKey {
        db,
        key: string_bytes(name).into(),
    };
    // Some deletions fire no keyspace notification (a cluster node losing
    // a slot to a newer epoch drops its keys silently): a key with waiters
    // gets its deferred check from here too.
    if !crate::ffi::in_own_delete() {
        crate::blocking::check_later_if_waited(&key);
    }
    if let Ok(mut last) = LAST_UNLINKED.try_lock() {
        *last = Some((key, crate::ffi::now_ms()));
        UNLINK_PENDING.store(true, Ordering::Relaxed);
    }
}

/// Whether `key` is the reservation Redis unlinked just before the
/// notification being handled. Redis fires `expired` right after the
/// unlink, within the same millisecond or the next. Every notification we
/// receive consumes the record, and one we do not receive (a `SET` over
/// the reservation) cannot leave a stale record that matches later: a
/// value written after the unlink expires two milliseconds later at the
/// earliest.
pub fn take_unlinked(key: &QueueKey) -> bool {
    if !UNLINK_PENDING.swap(false, Ordering::Relaxed) {
        return false;
    }
    match LAST_UNLINKED.try_lock() {
        Ok(mut last) => match last.take() {
            Some((unlinked, at)) => &unlinked == key && crate::ffi::now_ms() - at <= 1,
            None => false,
        },
        Err(_) => false,
    }
}

pub fn unlink_pending() -> bool {
    UNLINK_PENDING.load(Ordering::Relaxed)
}

/// Our own deletions (RELEASE) are not expiries: drop the record.
pub fn forget_unlinked() {
    if UNLINK_PENDING.swap(false, Ordering::Relaxed) {
        if let Ok(mut last) = LAST_UNLINKED.try_lock() {
            *last = None;
        }
    }
}
