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

use crate::engine::args::{self, ArgError, LockArgs};
use crate::engine::errors;
use crate::engine::grants::{decide_acquire, Acquire, Ask, Grant, GrantSet, Mode};
use crate::engine::reservation::{
    decide_lock, decide_owner, renewed, Current, LockDecision, OwnerDecision, Reservation,
    ReservationRef, Ttl,
};
use crate::glue::blocking::{self, block_waiter, queue_key, WaitRequest};
use crate::glue::config;
use crate::glue::ffi::{
    self, context_flags, log_warning, now_ms, reply_bulk, reply_error, reply_integer, reply_map,
    reply_null, reply_wrong_arity, rm, Ctx, RString,
};
use crate::glue::granting::{self, grant, replicate_state};
use crate::glue::notify::{notify, Event};
use crate::glue::observers;
use crate::glue::state::{
    bump, is_replica, observe_token, state, ModuleState, QueueKey, STATS, WAITERS_QUEUED,
};
use crate::glue::store::{KeyKind, OpenKey};

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

/// What the key holds at `now`, or WRONGTYPE for any other kind of value.
pub fn current(key: &OpenKey, now: i64) -> Result<Current<'_>, Failure> {
    key.current(now).ok_or(Failure::Message(errors::WRONGTYPE))
}

/// Replicas never grant, renew or release on their own (only what their
/// master propagates, which is never these commands but their effects),
/// even with `replica-read-only no`.
fn refuse_on_replica() -> Result<(), Failure> {
    if is_replica() {
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

/// One LOCK or WAIT, parsed.
struct Request<'a> {
    name: RString,
    key: &'a [u8],
    holder: &'a [u8],
    ttl_ms: u64,
    ask: Ask,
    /// The grant's lock-delay (its `DELAY`, else the setting).
    delay_ms: u32,
    on_held: OnHeld,
    /// `reservation.max-holder-len` when the command was parsed.
    max_holder_len: usize,
}

impl<'a> Request<'a> {
    fn new(name: RString, a: LockArgs<'a>, on_held: OnHeld, max_holder_len: usize) -> Self {
        Request {
            name,
            key: a.key,
            holder: a.holder,
            ttl_ms: a.ttl_ms,
            ask: a.ask,
            delay_ms: config::lock_delay(a.delay_ms),
            on_held,
            max_holder_len,
        }
    }
}

/// `RESERVE.LOCK key holder ttl [SHARED] [LIMIT n] [PERMITS k]`: token,
/// the same token on re-acquire, or 0 when it does not fit. O(1) for a
/// mutex; O(grants) on a key with shared grants.
pub fn lock(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let limits = config::limits();
    let a = args::parse_lock(argv, limits)?;
    refuse_on_replica()?;
    acquire(
        ctx,
        Request::new(raw_args[1], a, OnHeld::Answer0, limits.max_holder_len),
    )
}

/// `RESERVE.WAIT key holder ttl timeout [options]`: like LOCK when it can
/// acquire now; otherwise blocks in the key's FIFO queue. Inside MULTI,
/// scripts and functions it behaves exactly like LOCK.
pub fn wait(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let limits = config::limits();
    let a = args::parse_wait(argv, limits)?;
    refuse_on_replica()?;
    let may_block = context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING == 0;
    let on_held = if may_block {
        OnHeld::Block {
            timeout_ms: a.timeout_ms,
        }
    } else {
        OnHeld::Answer0
    };
    acquire(
        ctx,
        Request::new(raw_args[1], a.lock, on_held, limits.max_holder_len),
    )
}

fn acquire(ctx: Ctx, req: Request<'_>) -> Result<(), Failure> {
    let key = OpenKey::write(ctx, req.name);
    let now = now_ms();
    let cur = current(&key, now)?;
    if req.ask != Ask::EXCLUSIVE || matches!(cur, Current::Grants(_)) {
        return acquire_shared(ctx, &key, req, now);
    }
    // The mutex: exactly the first release's path.
    let mut st = module_state()?;
    let queued = waiters_on(ctx, &st, req.key);
    let decision = decide_lock(cur, req.holder, queued.is_some());
    check_new_holder(&req, matches!(decision, LockDecision::Reacquire { .. }))?;
    match decision {
        LockDecision::Grant => {
            let token = granting::new_token(ctx, now)?;
            let ttl = Ttl::new(req.ttl_ms, req.delay_ms);
            grant(ctx, &key, req.key, req.holder, ttl, token, now);
            notify(ctx, Event::Lock, req.name);
            reply_integer(ctx, token as i64);
            return Ok(());
        }
        LockDecision::Reacquire { token } => {
            let Current::Held(r) = cur else {
                return Err(errors::INTERNAL_PANIC.into());
            };
            let expire_at = granting::reacquire(ctx, &key, req.key, r, req.ttl_ms, now);
            bump(&STATS.reacquires);
            notify(ctx, Event::Lock, req.name);
            if let Some(qk) = &queued {
                blocking::sync_expiry_timer(ctx, &mut st, qk, Some(expire_at), now);
            }
            reply_integer(ctx, token as i64);
            return Ok(());
        }
        LockDecision::HandOffFirst => {
            if let Some(qk) = &queued {
                blocking::admit_waiters(ctx, &mut st, &key, qk, now);
            }
        }
        LockDecision::Held => {}
    }
    on_held(ctx, &mut st, &key, &req, now)
}

/// The setting bounds new holders only: one accepted before it was
/// lowered still re-acquires.
fn check_new_holder(req: &Request<'_>, reacquire: bool) -> Result<(), Failure> {
    if !reacquire && req.holder.len() > req.max_holder_len {
        return Err(errors::INVALID_HOLDER.into());
    }
    Ok(())
}

/// LOCK answers 0; WAIT queues.
fn on_held(
    ctx: Ctx,
    st: &mut ModuleState,
    key: &OpenKey,
    req: &Request<'_>,
    now: i64,
) -> Result<(), Failure> {
    match req.on_held {
        OnHeld::Answer0 => {
            bump(&STATS.contended);
            reply_integer(ctx, 0);
            Ok(())
        }
        OnHeld::Block { timeout_ms } => {
            let qk = queue_key(ctx, req.key);
            let wait = WaitRequest {
                holder: req.holder,
                ttl: Ttl::new(req.ttl_ms, req.delay_ms),
                ask: req.ask,
                timeout_ms,
            };
            block_waiter(ctx, st, qk, &wait, key.abs_expire(), now).map_err(Failure::from)
        }
    }
}

/// LOCK and WAIT for shared grants and semaphores, and any request on a
/// key that holds them (SPEC section 9): expired grants end first, a
/// `LIMIT` becomes the key's, then the engine decides.
fn acquire_shared(ctx: Ctx, key: &OpenKey, req: Request<'_>, now: i64) -> Result<(), Failure> {
    let qk = queue_key(ctx, req.key);
    let ended = granting::end_expired(ctx, key, req.key, now);
    let limit_changed = req.ask.limit.is_some_and(|limit| {
        granting::with_set(key, |set| {
            let changed = set.limit() != limit;
            set.set_limit(limit);
            changed
        })
        .unwrap_or(false)
    });
    let mut st = module_state()?;
    blocking::note_limit(&mut st, &qk, req.ask.limit);
    // What changed above still has to be stored and propagated, whatever
    // the decision below.
    let mut dirty = ended > 0 || limit_changed;
    // Twice at most: waiters admitted first, then the request itself.
    for _ in 0..2 {
        let (occupancy, mine) =
            granting::occupancy(key, req.holder, now).ok_or(Failure::Message(errors::WRONGTYPE))?;
        let queued = st.waiters.len(&qk) > 0;
        let head_fits = blocking::head_fits(&mut st, &qk, occupancy);
        let decision = decide_acquire(
            occupancy,
            mine,
            req.ask,
            queued,
            head_fits,
            config::max_holders(),
        );
        let reacquire = matches!(
            decision,
            Acquire::Reacquire { .. } | Acquire::Change | Acquire::ChangeRefused
        );
        if let Err(e) = check_new_holder(&req, reacquire) {
            if dirty {
                blocking::settle_and_admit(ctx, &mut st, key, &qk, now);
            }
            return Err(e);
        }
        let expires_at_ms = now.saturating_add(req.ttl_ms as i64);
        match decision {
            Acquire::AdmitFirst => {
                if dirty {
                    blocking::settle_and_admit(ctx, &mut st, key, &qk, now);
                    dirty = false;
                } else {
                    blocking::admit_waiters(ctx, &mut st, key, &qk, now);
                }
                continue;
            }
            Acquire::Grant | Acquire::Change => {
                let token = granting::new_token(ctx, now)?;
                let new_grant = Grant {
                    holder: req.holder.into(),
                    token,
                    acquired_at_ms: now,
                    expires_at_ms,
                    renewals: 0,
                    mode: req.ask.mode,
                    permits: req.ask.permits,
                    delay_ms: req.delay_ms,
                };
                if req.ask.is_exclusive() && occupancy.grants == 0 {
                    // A free key (or an emptied set) taken exclusively is a
                    // mutex; `grant` replaces whatever value was there.
                    let ttl = Ttl::new(req.ttl_ms, req.delay_ms);
                    grant(ctx, key, req.key, req.holder, ttl, token, now);
                } else {
                    granting::put_grant(key, new_grant, req.ask.limit);
                    bump(&STATS.grants);
                }
                blocking::settle_and_admit(ctx, &mut st, key, &qk, now);
                notify(ctx, Event::Lock, req.name);
                reply_integer(ctx, token as i64);
                return Ok(());
            }
            Acquire::Reacquire { token } => {
                granting::with_set(key, |set| {
                    if let Some(g) = set.find_mut(req.holder) {
                        g.expires_at_ms = expires_at_ms;
                    }
                });
                bump(&STATS.reacquires);
                blocking::settle_and_admit(ctx, &mut st, key, &qk, now);
                notify(ctx, Event::Lock, req.name);
                reply_integer(ctx, token as i64);
                return Ok(());
            }
            Acquire::ChangeRefused => {
                if dirty {
                    blocking::settle_and_admit(ctx, &mut st, key, &qk, now);
                }
                return match req.on_held {
                    OnHeld::Answer0 => {
                        bump(&STATS.contended);
                        reply_integer(ctx, 0);
                        Ok(())
                    }
                    OnHeld::Block { .. } => Err(errors::ALREADY_HOLDS.into()),
                };
            }
            Acquire::TooManyHolders => {
                if dirty {
                    blocking::settle_and_admit(ctx, &mut st, key, &qk, now);
                }
                return Err(errors::TOO_MANY_HOLDERS.into());
            }
            Acquire::Held => {
                if dirty {
                    blocking::settle_and_admit(ctx, &mut st, key, &qk, now);
                }
                return on_held(ctx, &mut st, key, &req, now);
            }
        }
    }
    on_held(ctx, &mut st, key, &req, now)
}

/// `RESERVE.LOCKALL holder ttl key [key ...]`: every key to `holder`, each
/// an exclusive grant with its own token and expiry, or none: an array of
/// tokens in key order, or nil when any key is held by someone else (a
/// key the holder holds counts as free for it: same token, TTL refreshed)
/// or has waiters queued. O(number of keys).
pub fn lock_all(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let limits = config::limits();
    let a = args::parse_lock_all(argv, limits)?;
    refuse_on_replica()?;
    acquire_all(ctx, &a, &raw_args[3..], limits, None)
}

/// `RESERVE.WAITALL holder ttl timeout key [key ...]`: like LOCKALL when
/// every key can be granted now; otherwise blocks on every key at once
/// until all are granted together (it is then the oldest waiter on each),
/// or the timeout: nil. Inside MULTI and scripts it behaves as LOCKALL.
pub fn wait_all(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let limits = config::limits();
    let w = args::parse_wait_all(argv, limits)?;
    refuse_on_replica()?;
    let may_block = context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING == 0;
    let block = may_block.then_some(w.timeout_ms);
    acquire_all(ctx, &w.all, &raw_args[4..], limits, block)
}

/// LOCKALL and WAITALL: every key or none. `block` is None for LOCKALL
/// (nil when not all can be granted now), else WAITALL's timeout.
fn acquire_all(
    ctx: Ctx,
    a: &args::LockAllArgs<'_>,
    names: &[RString],
    limits: args::Limits,
    block: Option<Option<u64>>,
) -> Result<(), Failure> {
    let now = now_ms();
    // Every key is opened (and looked at) before anything changes; opening
    // may expire a key and fire its notification, so before the state lock.
    let keys: Vec<OpenKey> = names
        .iter()
        .map(|name| OpenKey::write(ctx, *name))
        .collect();
    let mut st = module_state()?;
    // Some(token): the holder's own, re-acquired; None: granted now.
    let mut held: Vec<Option<u64>> = Vec::with_capacity(keys.len());
    let mut all_free = true;
    for (key, name) in keys.iter().zip(a.keys) {
        match current(key, now)? {
            Current::Held(r) if r.holder() == a.holder => held.push(Some(r.token())),
            Current::Free if waiters_on(ctx, &st, name).is_none() => held.push(None),
            _ => all_free = false,
        }
    }
    if held.iter().any(Option::is_none) || !all_free {
        // A new grant now or later: the holder is a new holder.
        if a.holder.len() > limits.max_holder_len {
            return Err(errors::INVALID_HOLDER.into());
        }
    }
    if !all_free {
        return match block {
            None => {
                bump(&STATS.contended);
                reply_null(ctx);
                Ok(())
            }
            Some(timeout_ms) => {
                let queues: Vec<QueueKey> = a.keys.iter().map(|k| queue_key(ctx, k)).collect();
                let expires: Vec<Option<i64>> = keys.iter().map(OpenKey::abs_expire).collect();
                let wait = WaitRequest {
                    holder: a.holder,
                    ttl: Ttl::new(a.ttl_ms, config::lock_delay(None)),
                    ask: Ask::EXCLUSIVE,
                    timeout_ms,
                };
                blocking::block_group(ctx, &mut st, &queues, &expires, &wait, now)
                    .map_err(Failure::from)
            }
        };
    }
    // Tokens first, so a counter at its ceiling changes nothing.
    let mut tokens = Vec::with_capacity(keys.len());
    for own in &held {
        tokens.push(match own {
            Some(token) => *token,
            None => granting::new_token(ctx, now)?,
        });
    }
    let ttl = Ttl::new(a.ttl_ms, config::lock_delay(None));
    for (i, key) in keys.iter().enumerate() {
        let name = a.keys[i];
        match held[i] {
            None => grant(ctx, key, name, a.holder, ttl, tokens[i], now),
            Some(_) => {
                // Held by this holder when looked at above.
                if let Current::Held(r) = current(key, now)? {
                    let expire_at = granting::reacquire(ctx, key, name, r, a.ttl_ms, now);
                    bump(&STATS.reacquires);
                    if let Some(qk) = waiters_on(ctx, &st, name) {
                        blocking::sync_expiry_timer(ctx, &mut st, &qk, Some(expire_at), now);
                    }
                }
            }
        }
        notify(ctx, Event::Lock, names[i]);
    }
    ffi::reply_array(ctx, tokens.len());
    for token in tokens {
        reply_integer(ctx, token as i64);
    }
    Ok(())
}

/// `RESERVE.RENEW key holder ttl [TOKEN t]`: 1 when `holder` holds it (and
/// its token is `t`): expiry := now + ttl, renewals += 1; else 0. O(1).
pub fn renew(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let a = args::parse_renew(argv, config::limits())?;
    refuse_on_replica()?;
    let key = OpenKey::write(ctx, raw_args[1]);
    let now = now_ms();
    let mut expire_at = now.saturating_add(a.ttl_ms as i64);
    let cur = current(&key, now)?;
    if let Current::Grants(_) = cur {
        return renew_grant(ctx, &key, raw_args[1], &a, now);
    }
    let decision = decide_owner(cur, a.holder, a.token);
    match decision {
        OwnerDecision::Owner => {
            let KeyKind::Reservation(r) = key.kind() else {
                return Err(errors::INTERNAL_PANIC.into());
            };
            // SAFETY: the value is ours, alive while the key is open, and
            // no other reference into it is live here.
            let r = unsafe { ReservationRef::from_raw(r) };
            // The delay runs on after the renewed expiry.
            expire_at = Ttl::new(a.ttl_ms, r.delay_ms()).key_expire(now);
            // SAFETY: as above.
            if unsafe { r.increment_renewals() } {
                replicate_state(ctx, a.key, r, expire_at);
            } else {
                // The count outgrew its packed field: stored anew.
                let fresh = renewed(r);
                replicate_state(ctx, a.key, fresh.view(), expire_at);
                key.set_reservation(fresh);
            }
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

/// RENEW of one grant of a set key: only that grant's expiry moves (the
/// key's Redis expiry follows its latest grant). Expired grants end first.
fn renew_grant(
    ctx: Ctx,
    key: &OpenKey,
    name: RString,
    a: &args::RenewArgs<'_>,
    now: i64,
) -> Result<(), Failure> {
    let (key_name, holder, token) = (a.key, a.holder, a.token);
    let expire_at = now.saturating_add(a.ttl_ms as i64);
    let ended = granting::end_expired(ctx, key, key_name, now);
    let renewed = granting::with_set(key, |set| match set.find_mut(holder) {
        Some(g) if token.is_none_or(|t| t == g.token) => {
            g.expires_at_ms = expire_at;
            g.renewals = g.renewals.saturating_add(1);
            true
        }
        _ => false,
    })
    .unwrap_or(false);
    if renewed || ended > 0 {
        let mut st = module_state()?;
        let qk = queue_key(ctx, key_name);
        blocking::settle_and_admit(ctx, &mut st, key, &qk, now);
    }
    if renewed {
        bump(&STATS.renewals);
        notify(ctx, Event::Renew, name);
    } else {
        bump(&STATS.renew_failures);
    }
    reply_integer(ctx, i64::from(renewed));
    Ok(())
}

/// `RESERVE.RELEASE key holder [TOKEN t]`: 1 when `holder` holds it (and
/// its token is `t`): released and handed to the oldest waiter in the same
/// step; else 0 and nothing changes. O(1) whatever the queue length.
pub fn release(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let a = args::parse_release(argv)?;
    refuse_on_replica()?;
    let key = OpenKey::write(ctx, raw_args[1]);
    let cur = current(&key, now_ms())?;
    if let Current::Grants(_) = cur {
        let mut st = module_state()?;
        let qk = queue_key(ctx, a.key);
        let released =
            blocking::release_grant(ctx, &mut st, &key, &qk, a.holder, a.token, now_ms());
        if !released {
            bump(&STATS.release_failures);
        }
        reply_integer(ctx, i64::from(released));
        return Ok(());
    }
    // A mutex, or an old library's lock (only its holder, never with a
    // token): the first release's path.
    if decide_owner(cur, a.holder, a.token) == OwnerDecision::NotOwner {
        bump(&STATS.release_failures);
        reply_integer(ctx, 0);
        return Ok(());
    }
    key.delete();
    bump(&STATS.releases);
    notify(ctx, Event::Release, raw_args[1]);
    let mut st = module_state()?;
    let granted = match waiters_on(ctx, &st, a.key) {
        Some(qk) => blocking::admit_waiters(ctx, &mut st, &key, &qk, now_ms()),
        None => 0,
    };
    if granted == 0 {
        ffi::replicate(ctx, c"DEL", &[a.key]);
    }
    reply_integer(ctx, 1);
    Ok(())
}

/// `RESERVE.OBSERVE key token timeout`: `[holder, token]` of the key's
/// oldest current grant (`[nil, 0]` for none) as soon as its token is not
/// `token`: at once, or when it changes; nil at the timeout. Inside MULTI
/// and scripts it never blocks (nil when unchanged). Takes nothing, so it
/// runs on replicas too.
pub fn observe(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let a = args::parse_observe(argv)?;
    bump(&STATS.observes);
    let now = now_ms();
    let seen = {
        let key = OpenKey::read(ctx, raw_args[1]);
        observers::seen(&key, now).ok_or(Failure::Message(errors::WRONGTYPE))?
    };
    if seen.token != a.seen {
        observers::reply_seen(ctx, seen.holder.as_deref(), seen.token);
        return Ok(());
    }
    if context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING != 0 {
        reply_null(ctx);
        return Ok(());
    }
    let qk = queue_key(ctx, a.key);
    observers::block(ctx, qk, a.seen, a.timeout_ms, seen.next_change_at).map_err(Failure::from)
}

/// One grant as INFO shows it.
struct Shown<'a> {
    holder: &'a [u8],
    token: u64,
    ttl_ms: i64,
    acquired_at_ms: i64,
    renewals: u64,
    mode: Mode,
    permits: u32,
}

/// The fields INFO shows for a grant, at the top (the oldest grant) and in
/// each `holders` entry: holder, token, ttl_ms, acquired_at_ms, renewals,
/// mode (six pairs).
fn reply_grant(ctx: Ctx, g: &Shown<'_>) {
    reply_bulk(ctx, b"holder");
    reply_bulk(ctx, g.holder);
    reply_bulk(ctx, b"token");
    reply_integer(ctx, g.token as i64);
    reply_bulk(ctx, b"ttl_ms");
    reply_integer(ctx, g.ttl_ms);
    reply_bulk(ctx, b"acquired_at_ms");
    reply_integer(ctx, g.acquired_at_ms);
    reply_bulk(ctx, b"renewals");
    reply_integer(ctx, g.renewals as i64);
    reply_bulk(ctx, b"mode");
    reply_bulk(ctx, mode_name(g.mode));
}

fn mode_name(mode: Mode) -> &'static [u8] {
    match mode {
        Mode::Exclusive => b"exclusive",
        Mode::Shared => b"shared",
    }
}

/// `RESERVE.INFO key`: nil, or the oldest grant's holder, token, ttl_ms,
/// acquired_at_ms and renewals, then mode, limit, permits_used, waiters,
/// queue and holders (one entry per grant, oldest first): a map in RESP3,
/// flat pairs in RESP2. O(grants + waiters).
pub fn info(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    let [_, name] = argv else {
        return Err(Failure::Arity);
    };
    let key = OpenKey::read(ctx, raw_args[1]);
    let now = now_ms();
    let key_expire = key.abs_expire();
    let key_ttl = key_expire.map_or(-1, |e| (e - now).max(0));
    let exclusive = |holder, token, ttl_ms, acquired_at_ms, renewals| Shown {
        holder,
        token,
        ttl_ms,
        acquired_at_ms,
        renewals,
        mode: Mode::Exclusive,
        permits: 1,
    };
    // The delay left on a key whose grant expired into its lock-delay.
    // -1: in a delay with no end (the key's expiry was removed).
    let mut delay_ms = 0;
    let mut delayed = false;
    let (grants, limit): (Vec<Shown<'_>>, u32) = match current(&key, now)? {
        Current::Free => (Vec::new(), 0),
        Current::Held(r) => {
            // The key's expiry runs on through the delay; the grant's not.
            let ttl = match key_expire {
                Some(e) => (r.grant_end(e) - now).max(0),
                None => -1,
            };
            let shown = exclusive(r.holder(), r.token(), ttl, r.acquired_at_ms(), r.renewals());
            (vec![shown], 0)
        }
        Current::Delayed(r) => {
            delayed = true;
            delay_ms = key_ttl;
            let shown = exclusive(r.holder(), r.token(), 0, r.acquired_at_ms(), r.renewals());
            (vec![shown], 0)
        }
        // An old library's reservation has no token or history.
        Current::Legacy(value) => (vec![exclusive(value, 0, key_ttl, 0, 0)], 0),
        // Grants whose time is up count as gone, even before their timer
        // (or, on a replica, the master) removes them; once all are, the
        // last one's lock-delay may still hold the key.
        Current::Grants(set) => {
            fn shown(g: &Grant, ttl_ms: i64) -> Shown<'_> {
                Shown {
                    holder: &g.holder,
                    token: g.token,
                    ttl_ms,
                    acquired_at_ms: g.acquired_at_ms,
                    renewals: u64::from(g.renewals),
                    mode: g.mode,
                    permits: g.permits,
                }
            }
            let live: Vec<Shown<'_>> = set
                .grants()
                .iter()
                .filter(|g| g.expires_at_ms > now)
                .map(|g| shown(g, g.expires_at_ms - now))
                .collect();
            match GrantSet::delay_after(set.grants(), now) {
                Some((g, until)) if live.is_empty() => {
                    delayed = true;
                    delay_ms = until - now;
                    (vec![shown(g, 0)], set.limit())
                }
                _ => (live, set.limit()),
            }
        }
    };
    let Some(oldest) = grants.first() else {
        reply_null(ctx);
        return Ok(());
    };
    // A key in its lock-delay is granted to no one.
    let permits_used: u64 = if delayed {
        0
    } else {
        grants.iter().map(|g| u64::from(g.permits)).sum()
    };
    let st = module_state()?;
    let qk = queue_key(ctx, name);
    reply_map(ctx, 12);
    reply_grant(ctx, oldest);
    reply_bulk(ctx, b"delay_ms");
    reply_integer(ctx, delay_ms);
    reply_bulk(ctx, b"limit");
    reply_integer(ctx, i64::from(limit));
    reply_bulk(ctx, b"permits_used");
    reply_integer(ctx, permits_used as i64);
    reply_bulk(ctx, b"waiters");
    reply_integer(ctx, st.waiters.len(&qk) as i64);
    reply_bulk(ctx, b"queue");
    ffi::reply_array(ctx, st.waiters.len(&qk));
    for (_, w) in st.waiters.iter(&qk) {
        reply_bulk(ctx, &w.holder);
    }
    reply_bulk(ctx, b"holders");
    ffi::reply_array(ctx, grants.len());
    for g in &grants {
        reply_map(ctx, 7);
        reply_grant(ctx, g);
        reply_bulk(ctx, b"permits");
        reply_integer(ctx, i64::from(g.permits));
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
    let fresh =
        Reservation::with_delay(a.holder, a.token, a.acquired_at_ms, a.renewals, a.delay_ms);
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
    observers::note_change(ctx, a.key);
    // A replica passes it on to its own AOF; the arguments are absolute.
    // SAFETY: ctx is the command context.
    unsafe { rm!(RedisModule_ReplicateVerbatim)(ctx) };
    ffi::reply_ok(ctx);
    Ok(())
}

/// `RESERVE.SETGRANTS key state`: internal, like SETSTATE, for a key with
/// shared grants: the whole set, each grant with its absolute expiry, as
/// one encoded argument. Refused from clients, and refused when the state
/// is not one this module would write (a forged token, say).
pub fn set_grants(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    if !from_master_or_aof(ctx) {
        return Err(errors::INTERNAL_ONLY_SETGRANTS.into());
    }
    let [_, _, state] = argv else {
        return Err(Failure::Arity);
    };
    let set = GrantSet::decode(state, args::HOLDER_LEN_CAP)
        .map_err(|_| Failure::Message(errors::INVALID_STATE))?;
    for g in set.grants() {
        observe_token(g.token);
    }
    let key = OpenKey::write(ctx, raw_args[1]);
    granting::restore_set(&key, set);
    observers::note_change_of(ctx, raw_args[1]);
    // A replica passes it on to its own AOF; the state is absolute.
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
entry_point!(lock_all_command, lock_all);
entry_point!(wait_all_command, wait_all);
entry_point!(info_command, info);
entry_point!(observe_command, observe);
entry_point!(set_state_command, set_state);
entry_point!(set_grants_command, set_grants);
entry_point!(token_floor_command, token_floor);
