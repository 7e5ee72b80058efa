//! Carrying out grants on a key: new tokens, storing a key's grants in the
//! right shape, and propagating the result to replicas and the AOF.
//!
//! Every state change goes out as the key's whole new state with absolute
//! times and exact tokens: `RESERVE.SETSTATE` for a mutex (the first
//! release's form, unchanged), `RESERVE.SETGRANTS key <encoded set>` for
//! a grant set (one argument, however many grants), `DEL` when nothing is
//! left. A replica or an AOF replay ends with exactly what the master has.
//!
//! Who is granted is decided in `grants.rs`; waking waiters is in
//! `blocking.rs`, which calls down into this file.

use crate::engine::errors;
use crate::engine::grants::{Grant, GrantSet, Mine, Mode, Occupancy};
use crate::engine::reservation::{Reservation, ReservationRef, Ttl};
use crate::engine::value::{self, Value, ValueRef};
use crate::glue::ffi::{self, rm, Ctx};
use crate::glue::notify::{notify_bytes, Event};
use crate::glue::state::{bump, count_set_grants, issue_token, STATS};
use crate::glue::store::{KeyKind, OpenKey};

/// Propagates one mutex's full state: holder, exact token, absolute expiry
/// (the key's: the grant's end plus its delay), and the delay when it has
/// one (a mutex without keeps the first release's six arguments).
pub fn replicate_state(ctx: Ctx, key: &[u8], r: ReservationRef<'_>, expire_at_ms: i64) {
    let delay = r.delay_ms();
    if delay > 0 {
        // SAFETY: "bblllll" = two (pointer, length) buffers and five long
        // longs; Redis copies them into the propagated command.
        unsafe {
            rm!(RedisModule_Replicate)(
                ctx,
                c"RESERVE.SETSTATE".as_ptr(),
                c"bblllll".as_ptr(),
                key.as_ptr(),
                key.len(),
                r.holder().as_ptr(),
                r.holder().len(),
                r.token() as i64,
                r.acquired_at_ms(),
                r.renewals() as i64,
                expire_at_ms,
                i64::from(delay),
            )
        };
        return;
    }
    // SAFETY: "bbllll" = two (pointer, length) buffers and four long
    // longs; Redis copies them into the propagated command.
    unsafe {
        rm!(RedisModule_Replicate)(
            ctx,
            c"RESERVE.SETSTATE".as_ptr(),
            c"bbllll".as_ptr(),
            key.as_ptr(),
            key.len(),
            r.holder().as_ptr(),
            r.holder().len(),
            r.token() as i64,
            r.acquired_at_ms(),
            r.renewals() as i64,
            expire_at_ms,
        )
    };
}

/// Propagates a grant set's full state as one encoded argument (every
/// grant carries its own absolute expiry).
fn replicate_set(ctx: Ctx, key: &[u8], set: &GrantSet) {
    let state = set.encode();
    // SAFETY: "bb" = two (pointer, length) buffers, copied by Redis.
    unsafe {
        rm!(RedisModule_Replicate)(
            ctx,
            c"RESERVE.SETGRANTS".as_ptr(),
            c"bb".as_ptr(),
            key.as_ptr(),
            key.len(),
            state.as_ptr(),
            state.len(),
        )
    };
}

/// A new fencing token, or the exhausted-counter error (logged: it needs an
/// operator, and no grant may ever reuse or saturate a token).
pub fn new_token(ctx: Ctx, now: i64) -> Result<u64, &'static str> {
    issue_token(now).map_err(|_| {
        ffi::log_warning(
            ctx,
            "reservation: the fencing token counter is at its ceiling (2^53-1): \
             no grant can get a new token. A token that high was loaded from an \
             RDB, a RESTORE payload or a master.",
        );
        errors::TOKENS_EXHAUSTED
    })
}

/// Creates a mutex for `holder` on an empty key with `token` (fresh from
/// `new_token`).
pub fn grant(ctx: Ctx, key: &OpenKey, name: &[u8], holder: &[u8], ttl: Ttl, token: u64, now: i64) {
    let r = Reservation::with_delay(holder, token, now, 0, ttl.delay_ms);
    put_mutex(ctx, key, name, r, ttl.key_expire(now));
    bump(&STATS.grants);
}

/// Refreshes the holder's own mutex `r` for `ttl_ms` from `now` (a
/// re-acquire): the same token, its lock-delay kept after the new end,
/// propagated. Returns the key's new expiry.
pub fn reacquire(
    ctx: Ctx,
    key: &OpenKey,
    name: &[u8],
    r: ReservationRef<'_>,
    ttl_ms: u64,
    now: i64,
) -> i64 {
    let expire_at = Ttl::new(ttl_ms, r.delay_ms()).key_expire(now);
    replicate_state(ctx, name, r, expire_at);
    key.set_abs_expire(expire_at);
    expire_at
}

/// Stores `r` as the key's value with its expiry, propagated.
fn put_mutex(ctx: Ctx, key: &OpenKey, name: &[u8], r: Reservation, expire_at: i64) {
    replicate_state(ctx, name, r.view(), expire_at);
    key.set_reservation(r);
    key.set_abs_expire(expire_at);
}

// ----- reading a key's grants -----

/// The key's value, if it is ours.
pub fn value_of(key: &OpenKey) -> Option<ValueRef<'_>> {
    match key.kind() {
        // SAFETY: the value lives while the key stays open and is not
        // replaced; callers drop this view before changing the key.
        KeyKind::Reservation(raw) => Some(unsafe { ValueRef::from_raw(raw) }),
        _ => None,
    }
}

/// What the key holds at `now` and `holder`'s own grant on it, or None for
/// a value of another type (WRONGTYPE). An old library's plain string, and
/// a key waiting out a lock-delay, count as an exclusive grant of nobody.
pub fn occupancy(key: &OpenKey, holder: &[u8], now: i64) -> Option<(Occupancy, Option<Mine>)> {
    Some(match key.kind() {
        KeyKind::Empty => (Occupancy::default(), None),
        KeyKind::LegacyString => (Occupancy::EXCLUSIVE, None),
        KeyKind::Other => return None,
        KeyKind::Reservation(_) => match value_of(key)? {
            ValueRef::Mutex(r) if key.in_delay(r, now) => (Occupancy::EXCLUSIVE, None),
            ValueRef::Mutex(r) => {
                let mine = (r.holder() == holder).then_some(Mine {
                    token: r.token(),
                    mode: Mode::Exclusive,
                    permits: 1,
                });
                (Occupancy::EXCLUSIVE, mine)
            }
            ValueRef::Set(set) => {
                let mine = set.find(holder).map(|g| Mine {
                    token: g.token,
                    mode: g.mode,
                    permits: g.permits,
                });
                (set.occupancy(), mine)
            }
        },
    })
}

/// Changes the key's grant set in place, keeping the grant count right;
/// None when the key holds no set.
pub fn with_set<R>(key: &OpenKey, f: impl FnOnce(&mut GrantSet) -> R) -> Option<R> {
    let KeyKind::Reservation(raw) = key.kind() else {
        return None;
    };
    // SAFETY: the key is open for writing and nothing else borrows its
    // value during `f`.
    let set = unsafe { value::set_mut(raw) }?;
    let before = set.len();
    let out = f(set);
    count_set_grants(before, set.len());
    Some(out)
}

/// Adds `grant` to the key (a new set on an empty key, or one built from
/// the holder's own mutex on a downgrade), replacing the holder's previous
/// grant. `limit` is the request's `LIMIT`, the key's from now on.
pub fn put_grant(key: &OpenKey, grant: Grant, limit: Option<u32>) {
    let inserted = with_set(key, |set| {
        if let Some(limit) = limit {
            set.set_limit(limit);
        }
        set.insert(grant.clone());
    });
    if inserted.is_none() {
        let mut set = GrantSet::new(limit.unwrap_or(0));
        set.insert(grant);
        key.set_value(Value::Set(Box::new(set)));
    }
}

/// Ends the grants of a set key whose time is up (at or before `now`),
/// with their events; how many ended. When that leaves no grant and one of
/// them has a lock-delay still running, the key waits it out as a delayed
/// mutex of that grant (stored and propagated here), granted to no one.
pub fn end_expired(ctx: Ctx, key: &OpenKey, name: &[u8], now: i64) -> usize {
    let (ended, delayed) = with_set(key, |set| {
        let expired = set.remove_expired(now);
        let delayed = if set.is_empty() {
            GrantSet::delay_after(&expired, now).map(|(g, until)| (Reservation::of_grant(g), until))
        } else {
            None
        };
        (expired.len(), delayed)
    })
    .unwrap_or((0, None));
    if let Some((r, until)) = delayed {
        put_mutex(ctx, key, name, r, until);
    }
    for _ in 0..ended {
        bump(&STATS.expirations);
        notify_bytes(ctx, Event::Expire, name);
    }
    ended
}

/// What a grant set key looks like once settled.
pub enum Settled {
    /// Nothing left: the key is gone.
    Deleted,
    /// One exclusive grant: stored as a plain mutex.
    Mutex,
    /// Still a set: its earliest grant expiry, for the key's timer.
    Set { earliest: i64 },
}

/// After a grant set changed: stores it in its cheapest shape (deleted
/// when empty, a plain mutex when one exclusive grant is left), sets the
/// key's Redis expiry to its latest grant's, and propagates the result.
/// A key that holds no set is left alone (`Mutex`).
pub fn settle(ctx: Ctx, key: &OpenKey, name: &[u8]) -> Settled {
    let Some(ValueRef::Set(set)) = value_of(key) else {
        return Settled::Mutex;
    };
    if set.is_empty() {
        key.delete();
        ffi::replicate(ctx, c"DEL", &[name]);
        return Settled::Deleted;
    }
    if let Some(only) = set.as_plain_mutex() {
        put_mutex(
            ctx,
            key,
            name,
            Reservation::of_grant(only),
            only.delay_end(),
        );
        return Settled::Mutex;
    }
    let Some((earliest, _)) = set.deadlines() else {
        return Settled::Deleted;
    };
    replicate_set(ctx, name, set);
    if let Some(at) = set.key_expiry() {
        key.set_abs_expire(at);
    }
    Settled::Set { earliest }
}

/// Stores a grant set received from a master or the AOF exactly, with the
/// key's expiry at its latest grant.
pub fn restore_set(key: &OpenKey, set: GrantSet) {
    let latest = set.key_expiry();
    if matches!(key.kind(), KeyKind::LegacyString | KeyKind::Other) {
        key.delete();
    }
    key.set_value(Value::Set(Box::new(set)));
    if let Some(at) = latest {
        key.set_abs_expire(at);
    }
}

/// Whether the key holds a grant set (not a mutex, a string or nothing).
pub fn holds_set(key: &OpenKey) -> bool {
    matches!(value_of(key), Some(ValueRef::Set(_)))
}
