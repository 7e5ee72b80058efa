//! The `rsrv-lock` data type: RDB save/load, AOF rewrite, digest, memory
//! usage, copy, free, and the aux field that carries the token counter.
//!
//! RDB encoding version 2: a kind (unsigned), then for a mutex (0): holder
//! (string), token (unsigned), acquired-at ms (signed), renewals
//! (unsigned), the key's expiry being saved by Redis; for a grant set (1):
//! one string, `GrantSet::encode` (each grant with its own expiry).
//! Version 1 (a mutex without the kind) still loads.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::engine::args::{HOLDER_LEN_CAP, MAX_DELAY_MS};
use crate::engine::grants::GrantSet;
use crate::engine::grants::MAX_RENEWALS;
use crate::engine::reservation::Reservation;
use crate::engine::tokens::is_valid_token;
use crate::engine::value::{Value, ValueRef};
use crate::glue::ffi::{log_io_warning, rm, string_bytes, RString};
use crate::glue::state::{count_set_grants, last_token, observe_token, QueueKey, SET_GRANTS};
use crate::glue::unlinks;

pub const TYPE_NAME: &str = "rsrv-lock";
pub const ENCODING_VERSION: i32 = 2;
/// The first release's encoding: a mutex, no kind field.
const ENCODING_V1: i32 = 1;

const KIND_MUTEX: u64 = 0;
const KIND_SET: u64 = 1;
/// A mutex with a lock-delay: the mutex's fields, then the delay in ms.
const KIND_DELAYED_MUTEX: u64 = 2;

/// Reservations currently stored (created minus freed), and how many of
/// them are grant sets.
static LIVE: AtomicU64 = AtomicU64::new(0);
static LIVE_SETS: AtomicU64 = AtomicU64::new(0);

pub fn count_created(v: ValueRef<'_>) {
    LIVE.fetch_add(1, Ordering::Relaxed);
    if let ValueRef::Set(set) = v {
        LIVE_SETS.fetch_add(1, Ordering::Relaxed);
        count_set_grants(0, set.len());
    }
}
pub fn count_freed(v: ValueRef<'_>) {
    LIVE.fetch_sub(1, Ordering::Relaxed);
    if let ValueRef::Set(set) = v {
        LIVE_SETS.fetch_sub(1, Ordering::Relaxed);
        count_set_grants(set.len(), 0);
    }
}
pub fn live_reservations() -> u64 {
    LIVE.load(Ordering::Relaxed)
}
/// Grants held on all keys: one per mutex, each grant of each set.
pub fn live_grants() -> u64 {
    let mutexes = LIVE
        .load(Ordering::Relaxed)
        .saturating_sub(LIVE_SETS.load(Ordering::Relaxed));
    mutexes + SET_GRANTS.load(Ordering::Relaxed)
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
    let loaded = match encver {
        ENCODING_V1 => load_mutex(rdb, false).map(Value::Mutex),
        ENCODING_VERSION => load_v2(rdb),
        _ => return std::ptr::null_mut(),
    };
    match loaded {
        Ok(v) => {
            match v.view() {
                ValueRef::Mutex(r) => observe_token(r.token()),
                ValueRef::Set(set) => {
                    for g in set.grants() {
                        observe_token(g.token);
                    }
                }
            }
            count_created(v.view());
            v.into_raw()
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

fn load_v2(rdb: *mut raw::RedisModuleIO) -> Result<Value, Refused> {
    match raw::load_unsigned(rdb).map_err(|_| Refused::Truncated)? {
        KIND_MUTEX => load_mutex(rdb, false).map(Value::Mutex),
        KIND_DELAYED_MUTEX => load_mutex(rdb, true).map(Value::Mutex),
        KIND_SET => {
            let bytes = raw::load_string_buffer(rdb).map_err(|_| Refused::Truncated)?;
            GrantSet::decode(bytes.as_ref(), HOLDER_LEN_CAP)
                .map(|set| Value::Set(Box::new(set)))
                .map_err(|_| Refused::OutOfRange("grant set not as this module writes it"))
        }
        _ => Err(Refused::OutOfRange("unknown kind")),
    }
}

fn load_mutex(rdb: *mut raw::RedisModuleIO, with_delay: bool) -> Result<Reservation, Refused> {
    let holder = raw::load_string_buffer(rdb).map_err(|_| Refused::Truncated)?;
    let token = raw::load_unsigned(rdb).map_err(|_| Refused::Truncated)?;
    let acquired_at_ms = raw::load_signed(rdb).map_err(|_| Refused::Truncated)?;
    let renewals = raw::load_unsigned(rdb).map_err(|_| Refused::Truncated)?;
    let delay_ms = if with_delay {
        raw::load_unsigned(rdb).map_err(|_| Refused::Truncated)?
    } else {
        0
    };
    if delay_ms > MAX_DELAY_MS {
        return Err(Refused::OutOfRange("lock-delay above an hour"));
    }
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
    Ok(Reservation::with_delay(
        holder,
        token,
        acquired_at_ms,
        renewals,
        delay_ms as u32,
    ))
}

/// The value behind a pointer Redis hands back to us.
fn value<'a>(value: *const c_void) -> ValueRef<'a> {
    // SAFETY: Redis only calls our type callbacks with non-null values we
    // made with Value::into_raw, alive until `free`.
    unsafe { ValueRef::from_raw(NonNull::new_unchecked(value.cast_mut())) }
}

extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, v: *mut c_void) {
    match value(v) {
        ValueRef::Mutex(r) => {
            let delay = r.delay_ms();
            let kind = if delay > 0 {
                KIND_DELAYED_MUTEX
            } else {
                KIND_MUTEX
            };
            raw::save_unsigned(rdb, kind);
            raw::save_slice(rdb, r.holder());
            raw::save_unsigned(rdb, r.token());
            raw::save_signed(rdb, r.acquired_at_ms());
            raw::save_unsigned(rdb, r.renewals());
            if delay > 0 {
                raw::save_unsigned(rdb, u64::from(delay));
            }
        }
        ValueRef::Set(set) => {
            raw::save_unsigned(rdb, KIND_SET);
            raw::save_slice(rdb, &set.encode());
        }
    }
}

/// Emits the internal command that rebuilds the reservation exactly; Redis
/// appends the key's PEXPIREAT after it.
extern "C" fn aof_rewrite(aof: *mut raw::RedisModuleIO, key: RString, v: *mut c_void) {
    let r = match value(v) {
        ValueRef::Mutex(r) => r,
        ValueRef::Set(set) => {
            let state = set.encode();
            // SAFETY: "sb": the key string and one buffer with its length.
            unsafe {
                rm!(RedisModule_EmitAOF)(
                    aof,
                    c"RESERVE.SETGRANTS".as_ptr(),
                    c"sb".as_ptr(),
                    key,
                    state.as_ptr(),
                    state.len(),
                )
            };
            return;
        }
    };
    let token = r.token().to_string();
    let acquired = r.acquired_at_ms().to_string();
    let renewals = r.renewals().to_string();
    if r.delay_ms() > 0 {
        let delay = r.delay_ms().to_string();
        // SAFETY: "sbbbbcb": key string, four buffers with lengths, one C
        // string, one buffer with its length.
        unsafe {
            rm!(RedisModule_EmitAOF)(
                aof,
                c"RESERVE.SETSTATE".as_ptr(),
                c"sbbbbcb".as_ptr(),
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
                delay.as_ptr(),
                delay.len(),
            )
        };
        return;
    }
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
    match value(v) {
        ValueRef::Mutex(r) => allocation(r.heap_size()),
        ValueRef::Set(set) => {
            allocation(std::mem::size_of::<GrantSet>())
                + allocation(set.heap_size())
                + set
                    .grants()
                    .iter()
                    .map(|g| allocation(g.holder.len()))
                    .sum::<usize>()
        }
    }
}

extern "C" fn digest(md: *mut raw::RedisModuleDigest, v: *mut c_void) {
    let add = |bytes: &[u8]| {
        // SAFETY: md is the digest context Redis passed; buffers are copied.
        unsafe { rm!(RedisModule_DigestAddStringBuffer)(md, bytes.as_ptr().cast(), bytes.len()) }
    };
    let add_int = |n: i64| {
        // SAFETY: as above.
        unsafe { rm!(RedisModule_DigestAddLongLong)(md, n) }
    };
    match value(v) {
        ValueRef::Mutex(r) => {
            add(r.holder());
            add_int(r.token() as i64);
            add_int(r.acquired_at_ms());
            add_int(r.renewals() as i64);
            add_int(i64::from(r.delay_ms()));
        }
        // Every grant with its own expiry: a replica must match exactly.
        ValueRef::Set(set) => add(&set.encode()),
    }
    // SAFETY: as above.
    unsafe { rm!(RedisModule_DigestEndSequence)(md) };
}

/// May run on a background thread (lazy free): touch nothing but the value
/// and the atomic counters.
extern "C" fn free(v: *mut c_void) {
    let Some(v) = NonNull::new(v) else { return };
    // SAFETY: made by Value::into_raw; Redis frees each value once.
    let v = unsafe { Value::from_raw(v) };
    count_freed(v.view());
}

extern "C" fn copy(_from: RString, _to: RString, v: *const c_void) -> *mut c_void {
    let v = value(v).to_owned();
    count_created(v.view());
    v.into_raw()
}

extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, when: c_int) {
    if when == raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
        raw::save_unsigned(rdb, last_token());
    }
}

extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, when: c_int) -> c_int {
    // The aux field is the same in both encodings.
    if !(ENCODING_V1..=ENCODING_VERSION).contains(&encver)
        || when != raw::REDISMODULE_AUX_BEFORE_RDB as c_int
    {
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

/// Redis calls this just before it removes one of our keys from the
/// keyspace (see `unlinks.rs`).
extern "C" fn unlink2(ctx: *mut raw::RedisModuleKeyOptCtx, v: *const c_void) {
    // SAFETY: the opt ctx is valid for this callback.
    let (name, db) = unsafe {
        (
            rm!(RedisModule_GetKeyNameFromOptCtx)(ctx),
            rm!(RedisModule_GetDbIdFromOptCtx)(ctx),
        )
    };
    let delayed = !v.is_null() && matches!(value(v), ValueRef::Mutex(r) if r.delay_ms() > 0);
    unlinks::record(
        QueueKey {
            db,
            key: string_bytes(name).into(),
        },
        delayed,
    );
}
