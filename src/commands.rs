//! The `RESERVE.*` command handlers: parse, look at the key, carry out the
//! state machine's decision, replicate, reply.
//!
//! Every handler runs inside [`run`], which turns raw argv into byte slices,
//! catches any panic (a panic in a module would abort redis-server) and
//! maps failures to error replies. Handlers reply themselves on success
//! because replies differ in shape (integer, map, or none while blocked).

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::raw;

use crate::args::{self, ArgError};
use crate::blocking::{self, block_waiter, grant, hand_off, queue_key, replicate_state};
use crate::config;
use crate::errors;
use crate::ffi::{
    self, context_flags, log_warning, now_ms, reply_bulk, reply_error, reply_integer, reply_map,
    reply_null, reply_wrong_arity, rm, Ctx, KeyKind, OpenKey, RString,
};
use crate::notify::{notify, Event};
use crate::reservation::{
    decide_lock, decide_owner, Current, LockDecision, OwnerDecision, Reservation, ReservationRef,
};
use crate::state::{bump, observe_token, state, ModuleState, QueueKey, STATS, WAITERS_QUEUED};

/// Why a command failed.
pub enum Failure {
    /// Redis's own "wrong number of arguments for '...' command".
    Arity,
    Message(&'static str),
}

impl From<ArgError> for Failure {
    fn from(e: ArgError) -> Self {
        match e {
            ArgError::WrongArity => Failure::Arity,
            other => Failure::Message(errors::arg_error_message(other)),
        }
    }
}

impl From<&'static str> for Failure {
    fn from(msg: &'static str) -> Self {
        Failure::Message(msg)
    }
}

type Handler = fn(Ctx, &[&[u8]], &[RString]) -> Result<(), Failure>;

/// Arguments converted on the stack; a longer command (a repeated option,
/// say) takes one allocation and gets the handler's own error, not an
/// arity error.
const INLINE_ARGS: usize = 8;

/// Runs one handler: argv to byte slices, panics caught, errors replied.
pub fn run(ctx: Ctx, argv: *mut RString, argc: c_int, handler: Handler) -> c_int {
    let argc = usize::try_from(argc).unwrap_or(0);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if argv.is_null() {
            return Err(Failure::Arity);
        }
        // SAFETY: Redis passes `argc` valid string pointers in `argv`.
        let raw_args = unsafe { std::slice::from_raw_parts(argv, argc) };
        if argc > INLINE_ARGS {
            let bytes: Vec<&[u8]> = raw_args.iter().map(|s| ffi::string_bytes(*s)).collect();
            return handler(ctx, &bytes, raw_args);
        }
        let mut bytes: [&[u8]; INLINE_ARGS] = [&[]; INLINE_ARGS];
        for (slot, s) in bytes.iter_mut().zip(raw_args) {
            *slot = ffi::string_bytes(*s);
        }
        handler(ctx, &bytes[..argc], raw_args)
    }));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(Failure::Arity)) => reply_wrong_arity(ctx),
        Ok(Err(Failure::Message(msg))) => reply_error(ctx, msg),
        Err(_) => {
            log_warning(
                ctx,
                "reservation: a command panicked; replied with an error",
            );
            reply_error(ctx, errors::INTERNAL_PANIC);
        }
    }
    raw::REDISMODULE_OK as c_int
}

/// What the key holds, or WRONGTYPE for any other kind of value.
fn current(key: &OpenKey) -> Result<Current<'_>, Failure> {
    Ok(match key.kind() {
        KeyKind::Empty => Current::Free,
        // SAFETY: the value lives as long as the key stays open and is
        // not replaced; callers drop this view before changing the key.
        KeyKind::Reservation(r) => Current::Held(unsafe { ReservationRef::from_raw(r) }),
        KeyKind::LegacyString => Current::Legacy(key.string_value()),
        KeyKind::Other => return Err(errors::WRONGTYPE.into()),
    })
}

/// Replicas never grant, renew or release on their own (only what their
/// master propagates), even with `replica-read-only no`.
fn refuse_on_replica(ctx: Ctx) -> Result<(), Failure> {
    let flags = context_flags(ctx);
    let from_master = raw::REDISMODULE_CTX_FLAGS_REPLICATED | raw::REDISMODULE_CTX_FLAGS_LOADING;
    if flags & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0 && flags & from_master == 0 {
        return Err(errors::READONLY.into());
    }
    Ok(())
}

fn module_state() -> Result<std::sync::MutexGuard<'static, ModuleState>, Failure> {
    state().ok_or(Failure::Message(errors::STATE_BUSY))
}

/// Whether anyone waits on `name` in the selected db (cheap when nobody
/// waits anywhere).
fn waiters_on(ctx: Ctx, st: &ModuleState, name: &[u8]) -> Option<QueueKey> {
    if WAITERS_QUEUED.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return None;
    }
    let qk = queue_key(ctx, name);
    (st.waiters.len(&qk) > 0).then_some(qk)
}

/// How an acquire answers when the key is held by someone else.
enum OnHeld {
    Answer0,
    Block { timeout_ms: Option<u64> },
}

/// `RESERVE.LOCK key holder ttl`: token, the same token on re-acquire, or
/// 0 when held. O(1).
pub fn lock(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let a = args::parse_lock(argv, config::limits())?;
    refuse_on_replica(ctx)?;
    acquire(ctx, raw_args[1], a.key, a.holder, a.ttl_ms, OnHeld::Answer0)
}

/// `RESERVE.WAIT key holder ttl timeout`: like LOCK when it can acquire
/// now; otherwise blocks in the key's FIFO queue. Inside MULTI, scripts and
/// functions it behaves exactly like LOCK.
pub fn wait(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let a = args::parse_wait(argv, config::limits())?;
    refuse_on_replica(ctx)?;
    let may_block = context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING == 0;
    let on_held = if may_block {
        OnHeld::Block {
            timeout_ms: a.timeout_ms,
        }
    } else {
        OnHeld::Answer0
    };
    acquire(ctx, raw_args[1], a.key, a.holder, a.ttl_ms, on_held)
}

fn acquire(
    ctx: Ctx,
    name: RString,
    key_name: &[u8],
    holder: &[u8],
    ttl_ms: u64,
    on_held: OnHeld,
) -> Result<(), Failure> {
    let key = OpenKey::write(ctx, name);
    let now = now_ms();
    let cur = current(&key)?;
    let mut st = module_state()?;
    let queued = waiters_on(ctx, &st, key_name);
    let decision = decide_lock(cur, holder, queued.is_some());
    // The setting bounds new holders only: one accepted before it was
    // lowered still re-acquires.
    if !matches!(decision, LockDecision::Reacquire { .. })
        && holder.len() > config::limits().max_holder_len
    {
        return Err(errors::INVALID_HOLDER.into());
    }
    match decision {
        LockDecision::Grant => {
            let token = blocking::new_token(ctx, now)?;
            grant(ctx, &key, key_name, holder, ttl_ms, token, now);
            notify(ctx, Event::Lock, name);
            reply_integer(ctx, token as i64);
            return Ok(());
        }
        LockDecision::Reacquire { token } => {
            let Current::Held(r) = cur else {
                return Err(errors::INTERNAL_PANIC.into());
            };
            let expire_at = now.saturating_add(ttl_ms as i64);
            replicate_state(ctx, key_name, r, expire_at);
            key.set_abs_expire(expire_at);
            bump(&STATS.reacquires);
            notify(ctx, Event::Lock, name);
            if let Some(qk) = &queued {
                blocking::sync_expiry_timer(ctx, &mut st, qk, Some(expire_at), now);
            }
            reply_integer(ctx, token as i64);
            return Ok(());
        }
        LockDecision::HandOffFirst => {
            if let Some(qk) = &queued {
                hand_off(ctx, &mut st, &key, qk, now);
            }
        }
        LockDecision::Held => {}
    }
    match on_held {
        OnHeld::Answer0 => {
            bump(&STATS.contended);
            reply_integer(ctx, 0);
            Ok(())
        }
        OnHeld::Block { timeout_ms } => {
            let qk = queued.unwrap_or_else(|| queue_key(ctx, key_name));
            block_waiter(
                ctx,
                &mut st,
                qk,
                holder,
                ttl_ms,
                timeout_ms,
                key.abs_expire(),
                now,
            )
            .map_err(Failure::from)
        }
    }
}

/// `RESERVE.RENEW key holder ttl [TOKEN t]`: 1 when `holder` holds it (and
/// its token is `t`): expiry := now + ttl, renewals += 1; else 0. O(1).
pub fn renew(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let a = args::parse_renew(argv, config::limits())?;
    refuse_on_replica(ctx)?;
    let key = OpenKey::write(ctx, raw_args[1]);
    let now = now_ms();
    let expire_at = now.saturating_add(a.ttl_ms as i64);
    let decision = decide_owner(current(&key)?, a.holder, a.token);
    match decision {
        OwnerDecision::Owner => {
            let KeyKind::Reservation(r) = key.kind() else {
                return Err(errors::INTERNAL_PANIC.into());
            };
            // SAFETY: the value is ours, alive while the key is open, and
            // no other reference into it is live here.
            let r = unsafe { ReservationRef::from_raw(r) };
            // SAFETY: as above.
            unsafe { r.increment_renewals() };
            replicate_state(ctx, a.key, r, expire_at);
        }
        OwnerDecision::LegacyOwner => {
            let at = expire_at.to_string();
            ffi::replicate(ctx, c"PEXPIREAT", &[a.key, at.as_bytes()]);
        }
        OwnerDecision::NotOwner => {
            bump(&STATS.renew_failures);
            reply_integer(ctx, 0);
            return Ok(());
        }
    }
    key.set_abs_expire(expire_at);
    bump(&STATS.renewals);
    notify(ctx, Event::Renew, raw_args[1]);
    let mut st = module_state()?;
    if let Some(qk) = waiters_on(ctx, &st, a.key) {
        blocking::sync_expiry_timer(ctx, &mut st, &qk, Some(expire_at), now);
    }
    reply_integer(ctx, 1);
    Ok(())
}

/// `RESERVE.RELEASE key holder [TOKEN t]`: 1 when `holder` holds it (and
/// its token is `t`): released and handed to the oldest waiter in the same
/// step; else 0 and nothing changes. O(1) whatever the queue length.
pub fn release(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let a = args::parse_release(argv)?;
    refuse_on_replica(ctx)?;
    let key = OpenKey::write(ctx, raw_args[1]);
    if decide_owner(current(&key)?, a.holder, a.token) == OwnerDecision::NotOwner {
        bump(&STATS.release_failures);
        reply_integer(ctx, 0);
        return Ok(());
    }
    key.delete();
    bump(&STATS.releases);
    notify(ctx, Event::Release, raw_args[1]);
    let mut st = module_state()?;
    let handed = match waiters_on(ctx, &st, a.key) {
        Some(qk) => hand_off(ctx, &mut st, &key, &qk, now_ms()),
        None => None,
    };
    if handed.is_none() {
        ffi::replicate(ctx, c"DEL", &[a.key]);
    }
    reply_integer(ctx, 1);
    Ok(())
}

/// `RESERVE.INFO key`: nil, or holder, token, ttl_ms, acquired_at_ms,
/// renewals, waiters and queue (a map in RESP3, flat pairs in RESP2).
/// O(1) plus the length of the queue.
pub fn info(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let [_, name] = argv else {
        return Err(Failure::Arity);
    };
    let key = OpenKey::read(ctx, raw_args[1]);
    let now = now_ms();
    let (holder, token, acquired_at, renewals): (&[u8], u64, i64, u64) = match current(&key)? {
        Current::Free => {
            reply_null(ctx);
            return Ok(());
        }
        Current::Held(r) => (r.holder(), r.token(), r.acquired_at_ms(), r.renewals()),
        // An old library's reservation has no token or history.
        Current::Legacy(value) => (value, 0, 0, 0),
    };
    let ttl_ms = key.abs_expire().map_or(-1, |e| (e - now).max(0));
    let st = module_state()?;
    let qk = queue_key(ctx, name);
    reply_map(ctx, 7);
    reply_bulk(ctx, b"holder");
    reply_bulk(ctx, holder);
    reply_bulk(ctx, b"token");
    reply_integer(ctx, token as i64);
    reply_bulk(ctx, b"ttl_ms");
    reply_integer(ctx, ttl_ms);
    reply_bulk(ctx, b"acquired_at_ms");
    reply_integer(ctx, acquired_at);
    reply_bulk(ctx, b"renewals");
    reply_integer(ctx, renewals as i64);
    reply_bulk(ctx, b"waiters");
    reply_integer(ctx, st.waiters.len(&qk) as i64);
    reply_bulk(ctx, b"queue");
    ffi::reply_array(ctx, st.waiters.len(&qk));
    for (_, w) in st.waiters.iter(&qk) {
        reply_bulk(ctx, &w.holder);
    }
    Ok(())
}

/// `RESERVE.SETSTATE key holder token acquired_at_ms renewals
/// expire_at_ms`: the internal command the master propagates and the AOF
/// rewrite emits. Refused from ordinary clients: it would forge a lock.
pub fn set_state(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    if !from_master_or_aof(ctx) {
        return Err(errors::INTERNAL_ONLY.into());
    }
    let a = args::parse_set_state(argv)?;
    let key = OpenKey::write(ctx, raw_args[1]);
    let fresh = Reservation::with_renewals(a.holder, a.token, a.acquired_at_ms, a.renewals);
    // An existing value of ours is replaced (and freed) by Redis; any
    // other kind of value is deleted first.
    if matches!(key.kind(), KeyKind::LegacyString | KeyKind::Other) {
        key.delete();
    }
    key.set_reservation(fresh);
    if let Some(at) = a.expire_at_ms {
        key.set_abs_expire(at);
    }
    observe_token(a.token);
    // A replica passes it on to its own AOF; the arguments are absolute.
    // SAFETY: ctx is the command context.
    unsafe { rm!(RedisModule_ReplicateVerbatim)(ctx) };
    ffi::reply_ok(ctx);
    Ok(())
}

/// Sent by the master's replication link or read from the AOF.
fn from_master_or_aof(ctx: Ctx) -> bool {
    let trusted = raw::REDISMODULE_CTX_FLAGS_REPLICATED | raw::REDISMODULE_CTX_FLAGS_LOADING;
    context_flags(ctx) & trusted != 0
}

/// `RESERVE.TOKENFLOOR token`: internal; raises the token counter. The
/// module writes one into the AOF (and the replication stream) whenever a
/// child process forks, so an AOF rewritten without an RDB preamble (which
/// carries the counter as aux data) still restores it when no reservation
/// is left to carry a token.
pub fn token_floor(ctx: Ctx, argv: &[&[u8]], _raw_args: &[RString]) -> Result<(), Failure> {
    if !from_master_or_aof(ctx) {
        return Err(errors::INTERNAL_ONLY_TOKENFLOOR.into());
    }
    observe_token(args::parse_token_floor(argv)?);
    // SAFETY: ctx is the command context.
    unsafe { rm!(RedisModule_ReplicateVerbatim)(ctx) };
    ffi::reply_ok(ctx);
    Ok(())
}

// ----- the extern "C" entry points Redis calls -----

macro_rules! entry_point {
    ($name:ident, $handler:path) => {
        pub extern "C" fn $name(ctx: Ctx, argv: *mut RString, argc: c_int) -> c_int {
            run(ctx, argv, argc, $handler)
        }
    };
}

entry_point!(lock_command, lock);
entry_point!(renew_command, renew);
entry_point!(release_command, release);
entry_point!(wait_command, wait);
entry_point!(info_command, info);
entry_point!(set_state_command, set_state);
entry_point!(token_floor_command, token_floor);
