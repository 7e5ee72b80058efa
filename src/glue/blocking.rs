//! RESERVE.WAIT's machinery: blocked clients, FIFO handoff, and the timers
//! that grant at the holder's exact expiry and time waiters out.
//!
//! Ownership moves inside the command or event that frees a key (the
//! reply callback, which Redis runs later in `beforeSleep`, only replies).
//! Waiter timeouts are module timers rather than Redis's own blocking
//! timeout, so a grant and a timeout can never both happen to one waiter:
//! both are decided here, on the main thread, in one place.

use std::ffi::{c_int, c_void};
use std::ptr;

use redis_module::raw;

use crate::engine::errors;
use crate::engine::grants::{admit, Ask, Grant, Occupancy};
use crate::engine::reservation::Ttl;
use crate::engine::value::ValueRef;
use crate::engine::waitqueue::{Removed, WaiterId};
use crate::glue::cluster::{self, Route};
use crate::glue::ffi::{
    self, create_timer, is_master, now_ms, reply_error, reply_integer, rm, select_db, stop_timer,
    Ctx, OwnedString, RString,
};
use crate::glue::granting::{self, Settled};
use crate::glue::notify::{notify_bytes, Event};
use crate::glue::state::{
    bump, state, BlockedClient, Group, ModuleState, Orphan, QueueKey, QueueMeta, Waiter, STATS,
    WAITERS_QUEUED,
};
use crate::glue::store::{KeyKind, OpenKey};

/// What a blocked client is told when Redis runs its reply callback.
enum WaitReply {
    /// Each key granted with its token: one for RESERVE.WAIT (replied as an
    /// integer), every key of a RESERVE.WAITALL (replied as an array).
    Granted {
        grants: Vec<(QueueKey, u64)>,
        all: bool,
        holder: Box<[u8]>,
        client: BlockedClient,
        delivered: bool,
    },
    TimedOut,
    /// A WAITALL's timeout (or CLIENT UNBLOCK): nil.
    TimedOutAll,
    WrongType,
    /// The key moved to another cluster node: `MOVED ...` / `ASK ...`.
    Redirect(String),
}

// ----- admission: the one path that grants queued waiters -----

/// Grants the queued waiters of `qk` that fit now, oldest first, by the
/// one admission rule (`grants::admit`): a free key goes to an exclusive
/// head alone (a plain mutex, as before any other primitive existed) or to
/// the shared requests at the head together; a set key takes the requests
/// that fit beside its grants. Every grant is propagated and each waiter
/// unblocked with its token. Returns how many were granted.
pub fn admit_waiters(
    ctx: Ctx,
    st: &mut ModuleState,
    key: &OpenKey,
    qk: &QueueKey,
    now: i64,
) -> usize {
    // A RESERVE.WAITALL at the head is granted all its keys or nothing.
    if let Some(gid) = st.waiters.front(qk).and_then(|(_, w)| w.group) {
        return grant_group(ctx, st, gid, now);
    }
    let Some((occupancy, _)) = granting::occupancy(key, b"", now) else {
        return 0;
    };
    let occupancy = with_queue_limit(st, qk, occupancy);
    let max = crate::glue::config::max_holders();
    let asks = st.waiters.iter(qk).map(|(_, w)| queued_ask(w));
    let n = admit(occupancy, asks, max);
    if n == 0 {
        return 0;
    }
    let head_exclusive = st
        .waiters
        .front(qk)
        .is_some_and(|(_, w)| w.ask.is_exclusive());
    if occupancy.grants == 0 && head_exclusive {
        return usize::from(hand_off(ctx, st, key, qk, now).is_some());
    }
    let mut granted = Vec::with_capacity(n);
    for _ in 0..n {
        // Waiters stay queued when no token can be had.
        let Ok(token) = granting::new_token(ctx, now) else {
            break;
        };
        let Some(waiter) = take_head(ctx, st, qk) else {
            break;
        };
        let grant = Grant {
            holder: waiter.holder.clone(),
            token,
            acquired_at_ms: now,
            expires_at_ms: waiter.ttl.grant_end(now),
            renewals: 0,
            mode: waiter.ask.mode,
            permits: waiter.ask.permits,
            delay_ms: waiter.ttl.delay_ms,
        };
        granting::put_grant(key, grant, Some(occupancy.limit));
        granted.push((waiter, token));
    }
    let settled = granting::settle(ctx, key, &qk.key);
    sync_set_timer(ctx, st, qk, &settled, now);
    sync_expiry_timer(ctx, st, qk, key.abs_expire(), now);
    for (waiter, token) in &granted {
        bump(&STATS.grants);
        bump(&STATS.handoffs);
        notify_bytes(ctx, Event::Grant, &qk.key);
        deliver(st, qk, waiter, *token);
    }
    st.publish_waiter_count();
    granted.len()
}

/// A LIMIT counts from when it arrives (latest wins): it is already the
/// set's, or the queue's while the key holds no grant. So a queued request
/// is judged without its own.
fn queued_ask(w: &Waiter) -> Ask {
    Ask {
        limit: None,
        ..w.ask
    }
}

fn with_queue_limit(st: &mut ModuleState, qk: &QueueKey, mut occupancy: Occupancy) -> Occupancy {
    if occupancy.grants == 0 {
        occupancy.limit = st.waiters.meta_mut(qk).and_then(|m| m.limit).unwrap_or(0);
    }
    occupancy
}

/// Whether the oldest waiter of `qk` would be granted beside `occupancy`.
pub fn head_fits(st: &mut ModuleState, qk: &QueueKey, occupancy: Occupancy) -> bool {
    let occupancy = with_queue_limit(st, qk, occupancy);
    st.waiters
        .front(qk)
        .is_some_and(|(_, w)| occupancy.fits(&queued_ask(w)))
}

/// After a grant set changed outside admission (a release, a renewal, an
/// expiry, a downgrade): grants the waiters that now fit, then stores and
/// propagates the key and keeps its timer at the earliest grant expiry.
pub fn settle_and_admit(ctx: Ctx, st: &mut ModuleState, key: &OpenKey, qk: &QueueKey, now: i64) {
    let settled = granting::settle(ctx, key, &qk.key);
    sync_set_timer(ctx, st, qk, &settled, now);
    if st.waiters.len(qk) > 0 && admit_waiters(ctx, st, key, qk, now) == 0 {
        sync_expiry_timer(ctx, st, qk, key.abs_expire(), now);
    }
}

/// Gives the (empty) key to the oldest waiter, an exclusive request, as a
/// mutex: new token, the waiter's TTL, propagated, and the waiter unblocked
/// with its token.
fn hand_off(ctx: Ctx, st: &mut ModuleState, key: &OpenKey, qk: &QueueKey, now: i64) -> Option<u64> {
    if st.waiters.len(qk) == 0 {
        return None;
    }
    // Waiters stay queued when no token can be had.
    let token = granting::new_token(ctx, now).ok()?;
    let waiter = take_head(ctx, st, qk)?;
    granting::grant(ctx, key, &qk.key, &waiter.holder, waiter.ttl, token, now);
    bump(&STATS.handoffs);
    notify_bytes(ctx, Event::Grant, &qk.key);
    if st.waiters.len(qk) > 0 {
        sync_expiry_timer(ctx, st, qk, key.abs_expire(), now);
    }
    deliver(st, qk, &waiter, token);
    st.publish_waiter_count();
    Some(token)
}

/// Takes the oldest waiter of `qk` out of the queue for a grant: its
/// client mapping and timeout go, and so does the queue's timer when the
/// queue empties.
fn take_head(ctx: Ctx, st: &mut ModuleState, qk: &QueueKey) -> Option<Waiter> {
    let removed = st.waiters.pop_front(qk)?;
    forget_waiter(ctx, st, &removed.value);
    if let Some(meta) = removed.emptied {
        cancel_expiry_timer(ctx, meta);
    }
    Some(removed.value)
}

/// Unblocks a granted waiter with its token. Until Redis sends the reply
/// the grant is "undelivered": a client gone meanwhile has it released.
fn deliver(st: &mut ModuleState, qk: &QueueKey, waiter: &Waiter, token: u64) {
    st.undelivered.insert(waiter.client);
    unblock(
        waiter.client,
        WaitReply::Granted {
            grants: vec![(qk.clone(), token)],
            all: false,
            holder: waiter.holder.clone(),
            client: waiter.client,
            delivered: false,
        },
    );
}

/// Drops a waiter's bookkeeping (its client mapping and timeout timer).
fn forget_waiter(ctx: Ctx, st: &mut ModuleState, waiter: &Waiter) {
    st.by_client.remove(&waiter.client);
    if let Some(timer) = waiter.timeout_timer {
        // The data is the waiter id, an integer: nothing to free.
        let _ = stop_timer(ctx, timer);
    }
}

fn unblock(client: BlockedClient, reply: WaitReply) {
    let data = Box::into_raw(Box::new(reply));
    // SAFETY: the handle came from BlockClient and is unblocked exactly
    // once (it leaves `by_client` first); Redis hands `data` to our reply
    // and free callbacks.
    unsafe { rm!(RedisModule_UnblockClient)(client.0, data.cast()) };
}

// ----- blocking a client -----

/// Blocks the calling client with the module's reply, unblock and
/// disconnect callbacks (waiters have no Redis-side timeout: module timers
/// time them out, so a grant and a timeout are decided in one place).
fn block_client(ctx: Ctx) -> Result<BlockedClient, &'static str> {
    // SAFETY: ctx is a command context that allows blocking (checked by
    // the caller); the callbacks match the signatures Redis expects.
    let bc = unsafe {
        rm!(RedisModule_BlockClient)(
            ctx,
            Some(wait_reply),
            Some(wait_unblocked),
            Some(free_reply),
            0,
        )
    };
    if bc.is_null() {
        return Err(errors::INTERNAL_PANIC);
    }
    // SAFETY: bc is the handle just created.
    unsafe { rm!(RedisModule_SetDisconnectCallback)(bc, Some(wait_disconnected)) };
    Ok(BlockedClient(bc))
}

/// Records a request's `LIMIT` as the latest on `qk`'s queue (if anyone
/// waits there).
pub fn note_limit(st: &mut ModuleState, qk: &QueueKey, limit: Option<u32>) {
    if let (Some(limit), Some(meta)) = (limit, st.waiters.meta_mut(qk)) {
        meta.limit = Some(limit);
    }
}

/// What a blocked RESERVE.WAIT asks for.
pub struct WaitRequest<'a> {
    pub holder: &'a [u8],
    pub ttl: Ttl,
    pub ask: Ask,
    /// None: as long as it takes.
    pub timeout_ms: Option<u64>,
}

/// Queues the calling client behind `qk`'s waiters. The caller has already
/// found that the request does not fit now; the client gets its reply when
/// granted or timed out. `key_expire` is the key's expiry, for the queue's
/// timer.
pub fn block_waiter(
    ctx: Ctx,
    st: &mut ModuleState,
    qk: QueueKey,
    req: &WaitRequest<'_>,
    key_expire: Option<i64>,
    now: i64,
) -> Result<(), &'static str> {
    let &WaitRequest {
        holder,
        ttl,
        ask,
        timeout_ms,
    } = req;
    let max = crate::glue::config::max_waiters();
    if st.waiters.len(&qk) >= max {
        return Err(errors::TOO_MANY_WAITERS);
    }
    let client = block_client(ctx)?;
    let waiter = Waiter {
        holder: holder.into(),
        ttl,
        ask,
        client,
        timeout_timer: None,
        group: None,
    };
    let id = match st.waiters.push(qk.clone(), waiter, max) {
        Ok(id) => id,
        Err(_) => {
            unblock(client, WaitReply::TimedOut);
            return Ok(());
        }
    };
    st.by_client.insert(client, id);
    note_limit(st, &qk, ask.limit);
    if let Some(timeout) = timeout_ms {
        let timer = create_timer(ctx, timeout as i64, waiter_timed_out, waiter_timer_data(id));
        if let Some(w) = st.waiters.get_mut(id) {
            w.timeout_timer = Some(timer);
        }
    }
    sync_expiry_timer(ctx, st, &qk, key_expire, now);
    bump(&STATS.waits_blocked);
    st.publish_waiter_count();
    Ok(())
}

fn waiter_timer_data(id: WaiterId) -> *mut c_void {
    id.to_raw() as usize as *mut c_void
}

/// Takes a waiter out of its queue for good (timeout, disconnect, unblock).
fn remove_waiter(ctx: Ctx, st: &mut ModuleState, id: WaiterId) -> Option<Waiter> {
    let Removed {
        value,
        emptied,
        key,
        ..
    } = st.waiters.remove(id)?;
    forget_waiter(ctx, st, &value);
    after_leaving(ctx, st, key, emptied);
    st.publish_waiter_count();
    Some(value)
}

/// A waiter left `key`'s queue without a grant. If others still wait, the
/// next may fit now (a head that needed more permits than are free kept
/// them waiting): look at the key once this callback is over.
fn after_leaving(ctx: Ctx, st: &mut ModuleState, key: QueueKey, emptied: Option<QueueMeta>) {
    match emptied {
        Some(meta) => cancel_expiry_timer(ctx, meta),
        None => schedule_check(ctx, st, key),
    }
}

// ----- RESERVE.WAITALL: one client queued on several keys -----

/// Queues the calling client on every key of `keys` at once (after the
/// caller found that not all can be granted now). `expires` are the keys'
/// expiries, for their queues' timers.
pub fn block_group(
    ctx: Ctx,
    st: &mut ModuleState,
    keys: &[QueueKey],
    expires: &[Option<i64>],
    req: &WaitRequest<'_>,
    now: i64,
) -> Result<(), &'static str> {
    let max = crate::glue::config::max_waiters();
    if keys.iter().any(|qk| st.waiters.len(qk) >= max) {
        return Err(errors::TOO_MANY_WAITERS);
    }
    let client = block_client(ctx)?;
    st.next_group += 1;
    let gid = st.next_group;
    let mut members = Vec::with_capacity(keys.len());
    for qk in keys {
        let member = Waiter {
            holder: req.holder.into(),
            ttl: req.ttl,
            ask: Ask::EXCLUSIVE,
            client,
            timeout_timer: None,
            group: Some(gid),
        };
        match st.waiters.push(qk.clone(), member, max) {
            Ok(id) => members.push((qk.clone(), id)),
            Err(_) => {
                for (_, id) in members {
                    st.waiters.remove(id);
                }
                unblock(client, WaitReply::TimedOutAll);
                return Ok(());
            }
        }
    }
    let timeout_timer = req
        .timeout_ms
        .map(|t| create_timer(ctx, t as i64, group_timed_out, gid as usize as *mut c_void));
    st.groups.insert(
        gid,
        Group {
            client,
            holder: req.holder.into(),
            ttl: req.ttl,
            members,
            timeout_timer,
        },
    );
    st.group_of_client.insert(client, gid);
    for (qk, expire) in keys.iter().zip(expires) {
        sync_expiry_timer(ctx, st, qk, *expire, now);
    }
    bump(&STATS.waits_blocked);
    st.publish_waiter_count();
    Ok(())
}

/// Takes a group out of every queue for good (timeout, disconnect,
/// unblock, a failed key); the caller unblocks its client.
fn remove_group(ctx: Ctx, st: &mut ModuleState, gid: u64) -> Option<Group> {
    let group = st.groups.remove(&gid)?;
    st.group_of_client.remove(&group.client);
    if let Some(timer) = group.timeout_timer {
        let _ = stop_timer(ctx, timer);
    }
    for (_, id) in &group.members {
        if let Some(Removed { emptied, key, .. }) = st.waiters.remove(*id) {
            after_leaving(ctx, st, key, emptied);
        }
    }
    st.publish_waiter_count();
    Some(group)
}

extern "C" fn group_timed_out(ctx: Ctx, data: *mut c_void) {
    let gid = data as usize as u64;
    let Some(mut st) = state() else { return };
    if let Some(g) = st.groups.get_mut(&gid) {
        g.timeout_timer = None; // fired: not to be stopped again
    }
    if let Some(group) = remove_group(ctx, &mut st, gid) {
        bump(&STATS.wait_timeouts);
        unblock(group.client, WaitReply::TimedOutAll);
    }
}

/// Grants a group every key at once if it is the oldest waiter on each
/// and each key is free for it (or already its own mutex: same token, TTL
/// refreshed). Otherwise nothing happens and it keeps its place. Returns
/// how many keys were granted.
fn grant_group(ctx: Ctx, st: &mut ModuleState, gid: u64, now: i64) -> usize {
    let Some(group) = st.groups.get(&gid) else {
        return 0;
    };
    let at_heads = group
        .members
        .iter()
        .all(|(qk, id)| st.waiters.front(qk).map(|(front, _)| front) == Some(*id));
    if !at_heads {
        return 0;
    }
    let keys: Vec<QueueKey> = group.members.iter().map(|(qk, _)| qk.clone()).collect();
    let (holder, ttl, client) = (group.holder.clone(), group.ttl, group.client);
    let names: Vec<OwnedString> = keys
        .iter()
        .map(|qk| OwnedString::new(ctx, &qk.key))
        .collect();
    let opened: Vec<OpenKey> = names
        .iter()
        .map(|n| OpenKey::write(ctx, n.as_ptr()))
        .collect();
    // Some(token): already this holder's mutex.
    let mut own = Vec::with_capacity(opened.len());
    for key in &opened {
        match key.kind() {
            KeyKind::Empty => own.push(None),
            KeyKind::Reservation(_) => match granting::value_of(key) {
                Some(ValueRef::Mutex(r)) if r.holder() == &*holder && !key.in_delay(r, now) => {
                    own.push(Some(r.token()))
                }
                _ => return 0,
            },
            _ => return 0,
        }
    }
    let mut tokens = Vec::with_capacity(own.len());
    for mine in &own {
        match mine {
            Some(token) => tokens.push(*token),
            None => match granting::new_token(ctx, now) {
                Ok(token) => tokens.push(token),
                Err(_) => return 0,
            },
        }
    }
    if remove_group(ctx, st, gid).is_none() {
        return 0;
    }
    for (i, key) in opened.iter().enumerate() {
        let qk = &keys[i];
        match own[i] {
            None => granting::grant(ctx, key, &qk.key, &holder, ttl, tokens[i], now),
            Some(_) => {
                // This holder's own mutex, as looked at above.
                if let Some(ValueRef::Mutex(r)) = granting::value_of(key) {
                    granting::reacquire(ctx, key, &qk.key, r, ttl.ttl_ms, now);
                }
            }
        }
        bump(&STATS.handoffs);
        notify_bytes(ctx, Event::Grant, &qk.key);
        if st.waiters.len(qk) > 0 {
            sync_expiry_timer(ctx, st, qk, key.abs_expire(), now);
        }
    }
    st.undelivered.insert(client);
    unblock(
        client,
        WaitReply::Granted {
            grants: keys.into_iter().zip(tokens).collect(),
            all: true,
            holder,
            client,
            delivered: false,
        },
    );
    opened.len()
}

// ----- blocked-client callbacks -----

/// Runs in `beforeSleep` for every unblocked waiter: reply only.
extern "C" fn wait_reply(ctx: Ctx, _argv: *mut RString, _argc: c_int) -> c_int {
    // SAFETY: in a reply callback the private data is what we passed to
    // UnblockClient: a Box<WaitReply> that stays alive until free_reply.
    let reply = unsafe { rm!(RedisModule_GetBlockedClientPrivateData)(ctx) }.cast::<WaitReply>();
    // SAFETY: see above; nothing else touches it meanwhile.
    match unsafe { reply.as_mut() } {
        Some(WaitReply::Granted {
            grants,
            all,
            delivered,
            client,
            ..
        }) => {
            *delivered = true;
            if let Some(mut st) = state() {
                st.undelivered.remove(client);
            }
            if *all {
                ffi::reply_array(ctx, grants.len());
            }
            for (_, token) in grants.iter() {
                reply_integer(ctx, *token as i64);
            }
        }
        Some(WaitReply::WrongType) => reply_error(ctx, errors::WRONGTYPE),
        Some(WaitReply::Redirect(to)) => reply_error(ctx, to),
        Some(WaitReply::TimedOutAll) => ffi::reply_null(ctx),
        Some(WaitReply::TimedOut) | None => reply_integer(ctx, 0),
    }
    raw::REDISMODULE_OK as c_int
}

/// Redis calls this for `CLIENT UNBLOCK id` (waiters have no Redis-side
/// timeout): the waiter leaves the queue and is told 0, as on a timeout.
extern "C" fn wait_unblocked(ctx: Ctx, _argv: *mut RString, _argc: c_int) -> c_int {
    // SAFETY: in a timeout callback the context carries the handle.
    let bc = unsafe { rm!(RedisModule_GetBlockedClientHandle)(ctx) };
    let mut group = false;
    if let Some(mut st) = state() {
        if let Some(gid) = st.group_of_client.get(&BlockedClient(bc)).copied() {
            group = true;
            remove_group(ctx, &mut st, gid);
            bump(&STATS.wait_timeouts);
            // SAFETY: still blocked (it had a group); frees the handle.
            unsafe { rm!(RedisModule_UnblockClient)(bc, ptr::null_mut()) };
        } else if let Some(id) = st.by_client.get(&BlockedClient(bc)).copied() {
            if remove_waiter(ctx, &mut st, id).is_some() {
                bump(&STATS.wait_timeouts);
            }
            // SAFETY: still blocked (it was in `by_client`); this frees
            // the handle once Redis finishes unblocking it.
            unsafe { rm!(RedisModule_UnblockClient)(bc, ptr::null_mut()) };
        }
    }
    if group {
        ffi::reply_null(ctx);
    } else {
        reply_integer(ctx, 0);
    }
    raw::REDISMODULE_OK as c_int
}

/// The waiter's connection went away (QUIT, CLIENT KILL, CLIENT UNBLOCK
/// ERROR, master turned replica): it leaves the queue, never granted.
///
/// Redis also lands here for a waiter that was granted but whose reply has
/// not gone out yet (a `CLIENT KILL` or `CLIENT UNBLOCK` in the same
/// event-loop turn as the grant): Redis drops the grant's reply, so a
/// plain `CLIENT UNBLOCK` is answered 0 here, and the grant is released
/// right away (handed to the next waiter), inside the command that
/// orphaned it. For a real disconnect the reply is discarded with the
/// client.
extern "C" fn wait_disconnected(ctx: Ctx, bc: *mut raw::RedisModuleBlockedClient) {
    let Some(mut st) = state() else { return };
    let client = BlockedClient(bc);
    if st.undelivered.remove(&client) {
        // A connection being freed needs (and can take) no reply. Of the
        // unblocks, `CLIENT UNBLOCK id ERROR` (and a master turning
        // replica) already queued an error; the plain form queued nothing
        // and needs ours.
        // SAFETY: ctx is the blocked client's context.
        let id = unsafe { rm!(RedisModule_GetClientId)(ctx) };
        if !crate::glue::state::is_disconnecting(id) && !has_pending_output(ctx, id) {
            reply_integer(ctx, 0);
        }
        // Redis clears the handle's client right after this callback, so
        // the grant's reply will never go out: release it now, inside the
        // command (or disconnect) that orphaned it, rather than from a
        // timer that a later command can overtake.
        // SAFETY: Redis sets the blocked privdata (our Box<WaitReply>,
        // alive until free_reply) on the disconnect context.
        let reply =
            unsafe { rm!(RedisModule_GetBlockedClientPrivateData)(ctx) }.cast::<WaitReply>();
        // SAFETY: as above; nothing else touches it meanwhile.
        if let Some(WaitReply::Granted {
            grants,
            holder,
            delivered,
            ..
        }) = unsafe { reply.as_mut() }
        {
            *delivered = true; // handled here: free_reply has nothing left to do
            let orphans: Vec<Orphan> = grants
                .iter()
                .map(|(key, token)| Orphan {
                    key: key.clone(),
                    holder: holder.clone(),
                    token: *token,
                })
                .collect();
            drop(st);
            for orphan in orphans {
                release_orphan(ctx, orphan);
            }
        }
        return;
    }
    if let Some(gid) = st.group_of_client.get(&client).copied() {
        remove_group(ctx, &mut st, gid);
        // SAFETY: still blocked; frees the handle.
        unsafe { rm!(RedisModule_UnblockClient)(bc, ptr::null_mut()) };
        return;
    }
    if let Some(id) = st.by_client.get(&client).copied() {
        remove_waiter(ctx, &mut st, id);
        // SAFETY: still blocked; frees the handle.
        unsafe { rm!(RedisModule_UnblockClient)(bc, ptr::null_mut()) };
    }
}

/// Whether the context's client has output queued and not yet written
/// (read from `CLIENT LIST ID`: `obl`/`oll`). Only asked in the rare
/// unblock-after-grant race above.
fn has_pending_output(ctx: Ctx, id: u64) -> bool {
    let id = id.to_string();
    let listing = match redis_module::Context::new(ctx).call("CLIENT", &["LIST", "ID", &id]) {
        Ok(redis_module::RedisValue::BulkString(s))
        | Ok(redis_module::RedisValue::SimpleString(s)) => s,
        Ok(redis_module::RedisValue::StringBuffer(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(redis_module::RedisValue::VerbatimString((_, b))) => {
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => return false,
    };
    listing.split_whitespace().any(|field| {
        field
            .strip_prefix("obl=")
            .or_else(|| field.strip_prefix("oll="))
            .is_some_and(|n| n != "0")
    })
}

/// Frees a reply. A grant whose reply never went out (the client vanished
/// in the same event-loop iteration) is released rather than left to sit
/// until its TTL.
extern "C" fn free_reply(ctx: Ctx, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    // SAFETY: `data` is the Box<WaitReply> passed to UnblockClient.
    let reply = unsafe { Box::from_raw(data.cast::<WaitReply>()) };
    if let WaitReply::Granted {
        grants,
        holder,
        client,
        delivered,
        ..
    } = *reply
    {
        if let Some(mut st) = state() {
            st.undelivered.remove(&client);
            if !delivered {
                for (key, token) in grants {
                    st.orphans.push(Orphan {
                        key,
                        holder: holder.clone(),
                        token,
                    });
                }
                arm_pending_timer(ctx, &mut st);
            }
        }
    }
}

/// A waiter's own timeout ran out.
extern "C" fn waiter_timed_out(ctx: Ctx, data: *mut c_void) {
    let id = WaiterId::from_raw(data as usize as u64);
    let Some(mut st) = state() else { return };
    // The timer already fired: make sure it is not stopped again.
    if let Some(w) = st.waiters.get_mut(id) {
        w.timeout_timer = None;
    }
    if let Some(waiter) = remove_waiter(ctx, &mut st, id) {
        bump(&STATS.wait_timeouts);
        unblock(waiter.client, WaitReply::TimedOut);
    }
}

// ----- expiry timers -----

/// Keeps exactly one timer per queued key, armed at the key's expiry: the
/// module ends a reservation at that very instant and hands it over
/// (`check_key`), a millisecond before Redis would expire the key (once now
/// > expire).
pub fn sync_expiry_timer(
    ctx: Ctx,
    st: &mut ModuleState,
    qk: &QueueKey,
    expire: Option<i64>,
    now: i64,
) {
    let Some(meta) = st.waiters.meta_mut(qk) else {
        return;
    };
    let fire_at = expire;
    if meta.expiry_timer.map(|(_, at)| at) == fire_at {
        return;
    }
    if let Some((id, _)) = meta.expiry_timer.take() {
        free_expiry_timer_data(stop_timer(ctx, id));
    }
    if let Some(at) = fire_at {
        let data = Box::into_raw(Box::new(qk.clone()));
        let delay = ffi::timer_delay(at, now, ffi::now_us());
        // Due within the millisecond: a 0 ms timer armed from inside a
        // timer callback would run a millisecond later (Redis reschedules
        // its module-timer event by whole milliseconds), so it is armed
        // from the next turn of the event loop instead.
        if delay == 0 && ffi::on_next_turn(arm_due_expiry_timer, data.cast()) {
            meta.expiry_timer = Some((ARMING, at));
            return;
        }
        let id = create_timer(ctx, delay, expiry_timer_fired, data.cast());
        meta.expiry_timer = Some((id, at));
    }
}

/// The timer id of an expiry timer that `arm_due_expiry_timer` is about
/// to create (no module timer has id 0: ids are expiry times in µs).
const ARMING: u64 = 0;

/// Arms a 0 ms expiry timer for the queue key in `data`, outside any
/// timer callback, unless its queue is gone or was given another timer
/// meanwhile.
extern "C" fn arm_due_expiry_timer(data: *mut c_void) {
    let ctx = ffi::detached_ctx();
    let Some(mut st) = state() else {
        free_expiry_timer_data(Some(data));
        return;
    };
    let qk = data.cast::<QueueKey>();
    // SAFETY: `data` is the Box<QueueKey> made in sync_expiry_timer, ours
    // until handed to a timer or freed here.
    let meta = st.waiters.meta_mut(unsafe { &*qk });
    match meta {
        Some(meta) if !ctx.is_null() && matches!(meta.expiry_timer, Some((ARMING, _))) => {
            let id = create_timer(ctx, 0, expiry_timer_fired, data);
            if let Some((_, at)) = meta.expiry_timer {
                meta.expiry_timer = Some((id, at));
            }
        }
        _ => free_expiry_timer_data(Some(data)),
    }
}

fn cancel_expiry_timer(ctx: Ctx, meta: QueueMeta) {
    if let Some((id, _)) = meta.expiry_timer {
        free_expiry_timer_data(stop_timer(ctx, id));
    }
}

fn free_expiry_timer_data(data: Option<*mut c_void>) {
    if let Some(data) = data.filter(|d| !d.is_null()) {
        // SAFETY: expiry timers carry a Box<QueueKey> made in
        // sync_expiry_timer; a stopped timer hands it back exactly once.
        drop(unsafe { Box::from_raw(data.cast::<QueueKey>()) });
    }
}

extern "C" fn expiry_timer_fired(ctx: Ctx, data: *mut c_void) {
    // SAFETY: see free_expiry_timer_data; a fired timer owns its data.
    let qk = *unsafe { Box::from_raw(data.cast::<QueueKey>()) };
    if let Some(mut st) = state() {
        if let Some(meta) = st.waiters.meta_mut(&qk) {
            meta.expiry_timer = None;
        }
    }
    check_key(ctx, &qk);
}

// ----- deferred checks -----

/// Queues `qk` to be re-examined once the current command or notification
/// is over (writes are not allowed inside notification callbacks).
pub fn schedule_check(ctx: Ctx, st: &mut ModuleState, qk: QueueKey) {
    st.pending.insert(qk);
    arm_pending_timer(ctx, st);
}

fn arm_pending_timer(ctx: Ctx, st: &mut ModuleState) {
    if !st.pending_timer_armed {
        st.pending_timer_armed = true;
        create_timer(ctx, 0, process_pending, ptr::null_mut());
    }
}

extern "C" fn process_pending(ctx: Ctx, _data: *mut c_void) {
    let (keys, orphans) = match state() {
        Some(mut st) => {
            st.pending_timer_armed = false;
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.orphans),
            )
        }
        None => return,
    };
    for orphan in orphans {
        release_orphan(ctx, orphan);
    }
    for qk in keys {
        check_key(ctx, &qk);
    }
}

/// Looks at a key after something happened to it (or its timer fired):
/// ends the expired grants of a set key and grants the waiters that then
/// fit; grants the oldest waiters of a free key; re-arms the expiry timer
/// of a held one; fails every waiter with WRONGTYPE if it became another
/// kind of value.
pub fn check_key(ctx: Ctx, qk: &QueueKey) {
    if !is_master(ctx) {
        return;
    }
    select_db(ctx, qk.db);
    let name = OwnedString::new(ctx, &qk.key);
    let key = OpenKey::write(ctx, name.as_ptr());
    let now = now_ms();
    let kind = key.kind();
    // Ask the cluster before taking the lock (it is a Redis call).
    let route = match kind {
        KeyKind::Empty => cluster::route(ctx, &qk.key),
        _ => Route::Mine,
    };
    if granting::holds_set(&key) {
        granting::end_expired(ctx, &key, &qk.key, now);
        if let Some(mut st) = state() {
            settle_and_admit(ctx, &mut st, &key, qk, now);
        }
        return;
    }
    let Some(mut st) = state() else { return };
    if let Some((id, _)) = st.set_timers.remove(qk) {
        // No set here any more (deleted, replaced, moved).
        free_expiry_timer_data(stop_timer(ctx, id));
    }
    if st.waiters.len(qk) == 0 {
        return;
    }
    match kind {
        KeyKind::Empty => match route {
            Route::Mine => {
                admit_waiters(ctx, &mut st, &key, qk, now);
            }
            Route::Ask { slot, addr } => {
                redirect_all(ctx, &mut st, qk, &format!("ASK {slot} {addr}"))
            }
            Route::Moved { slot, addr } => {
                redirect_all(ctx, &mut st, qk, &format!("MOVED {slot} {addr}"))
            }
            // Cluster being reconfigured: keep waiting for the next event.
            Route::Unknown => {}
        },
        KeyKind::Reservation(_) if key.abs_expire().is_some_and(|e| now >= e) => {
            end_at_expiry(ctx, &mut st, &key, qk, now);
        }
        KeyKind::Reservation(_) | KeyKind::LegacyString => {
            sync_expiry_timer(ctx, &mut st, qk, key.abs_expire(), now);
        }
        KeyKind::Other => {
            let n = fail_all(ctx, &mut st, qk, || WaitReply::WrongType);
            STATS
                .wrongtype_waiters
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A mutex with waiters whose time is up (its grant's end, or its
/// lock-delay's): ended here, at its expiry instant, and handed to the
/// oldest waiter in the same step, rather than a millisecond later when
/// Redis would expire the key. Propagated as the new grant (or a DEL), so
/// the key outlives its grant on no replica and in no AOF.
fn end_at_expiry(ctx: Ctx, st: &mut ModuleState, key: &OpenKey, qk: &QueueKey, now: i64) {
    let delayed = matches!(granting::value_of(key), Some(ValueRef::Mutex(r)) if r.delay_ms() > 0);
    key.delete();
    bump(&STATS.expirations);
    if delayed {
        bump(&STATS.lock_delays);
    }
    notify_bytes(ctx, Event::Expire, &qk.key);
    if admit_waiters(ctx, st, key, qk, now) == 0 {
        ffi::replicate(ctx, c"DEL", &[&qk.key]);
    }
}

/// Keeps one timer per grant-set key at its earliest grant expiry (none
/// for a key that is no set any more).
pub fn sync_set_timer(ctx: Ctx, st: &mut ModuleState, qk: &QueueKey, settled: &Settled, now: i64) {
    let fire_at = match settled {
        Settled::Set { earliest } => Some(*earliest),
        Settled::Deleted | Settled::Mutex => None,
    };
    if st.set_timers.get(qk).map(|&(_, at)| at) == fire_at {
        return;
    }
    if let Some((id, _)) = st.set_timers.remove(qk) {
        free_expiry_timer_data(stop_timer(ctx, id));
    }
    if let Some(at) = fire_at {
        let data = Box::into_raw(Box::new(qk.clone()));
        let delay = ffi::timer_delay(at, now, ffi::now_us());
        let id = create_timer(ctx, delay, set_timer_fired, data.cast());
        st.set_timers.insert(qk.clone(), (id, at));
    }
}

extern "C" fn set_timer_fired(ctx: Ctx, data: *mut c_void) {
    // SAFETY: set timers carry a Box<QueueKey>; a fired timer owns it.
    let qk = *unsafe { Box::from_raw(data.cast::<QueueKey>()) };
    if let Some(mut st) = state() {
        st.set_timers.remove(&qk);
    }
    check_key(ctx, &qk);
}

/// Unblocks every waiter of `qk` with the reply `make` builds; returns how
/// many there were.
fn fail_all(ctx: Ctx, st: &mut ModuleState, qk: &QueueKey, make: impl Fn() -> WaitReply) -> u64 {
    let removed_all = st.waiters.drain(qk);
    let count = removed_all.len() as u64;
    for removed in removed_all {
        if let Some(meta) = removed.emptied {
            cancel_expiry_timer(ctx, meta);
        }
        if let Some(gid) = removed.value.group {
            // A WAITALL leaves its other queues too, with one reply.
            if let Some(group) = remove_group(ctx, st, gid) {
                unblock(group.client, make());
            }
            continue;
        }
        forget_waiter(ctx, st, &removed.value);
        unblock(removed.value.client, make());
    }
    st.publish_waiter_count();
    count
}

fn redirect_all(ctx: Ctx, st: &mut ModuleState, qk: &QueueKey, to: &str) {
    fail_all(ctx, st, qk, || WaitReply::Redirect(to.to_string()));
}

/// Releases a grant whose waiter never saw it, if it is still that grant.
fn release_orphan(ctx: Ctx, orphan: Orphan) {
    if !is_master(ctx) {
        return;
    }
    select_db(ctx, orphan.key.db);
    let name = OwnedString::new(ctx, &orphan.key.key);
    let key = OpenKey::write(ctx, name.as_ptr());
    let now = now_ms();
    if let Some(mut st) = state() {
        release_grant(
            ctx,
            &mut st,
            &key,
            &orphan.key,
            &orphan.holder,
            Some(orphan.token),
            now,
        );
    }
}

/// Ends `holder`'s grant on the key (only with that token, when given): the
/// one path for RELEASE and for grants whose client vanished. Waiters that
/// now fit are granted in the same step. False when `holder` holds none.
pub fn release_grant(
    ctx: Ctx,
    st: &mut ModuleState,
    key: &OpenKey,
    qk: &QueueKey,
    holder: &[u8],
    token: Option<u64>,
    now: i64,
) -> bool {
    if granting::holds_set(key) {
        granting::end_expired(ctx, key, &qk.key, now);
        let removed = granting::with_set(key, |set| {
            let theirs = set
                .find(holder)
                .is_some_and(|g| token.is_none_or(|t| t == g.token));
            theirs && set.remove(holder).is_some()
        })
        .unwrap_or(false);
        if removed {
            bump(&STATS.releases);
            notify_bytes(ctx, Event::Release, &qk.key);
        }
        settle_and_admit(ctx, st, key, qk, now);
        return removed;
    }
    let Some(ValueRef::Mutex(r)) = granting::value_of(key) else {
        return false;
    };
    if !r.is_held_by(holder, token) {
        return false;
    }
    key.delete();
    bump(&STATS.releases);
    notify_bytes(ctx, Event::Release, &qk.key);
    if st.waiters.len(qk) == 0 || admit_waiters(ctx, st, key, qk, now) == 0 {
        ffi::replicate(ctx, c"DEL", &[&qk.key]);
    }
    true
}

/// For keys Redis removes without a notification (installed as the
/// `state::on_silent_unlink` hook; it runs from the data type's unlink,
/// which has no context of its own): schedules a check of `qk` if anyone
/// waits on it.
pub fn check_later_if_waited(qk: &QueueKey) {
    if WAITERS_QUEUED.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return;
    }
    let ctx = ffi::detached_ctx();
    if ctx.is_null() {
        return;
    }
    if let Some(mut st) = state() {
        if st.waiters.len(qk) > 0 {
            schedule_check(ctx, &mut st, qk.clone());
        }
    }
}

/// Schedules a check of every queued key in `db` (or all, when None):
/// FLUSHDB/FLUSHALL, SWAPDB, loading and promotion change keys wholesale
/// without per-key notifications.
pub fn schedule_check_all(ctx: Ctx, db: Option<i32>) {
    let Some(mut st) = state() else { return };
    let keys: Vec<QueueKey> = st
        .waiters
        .keys()
        .filter(|k| db.is_none_or(|d| d == k.db))
        .cloned()
        .collect();
    for qk in keys {
        schedule_check(ctx, &mut st, qk);
    }
}

/// Helper for commands: the key under which `name` queues in this db.
pub fn queue_key(ctx: Ctx, name: &[u8]) -> QueueKey {
    QueueKey {
        db: ffi::selected_db(ctx),
        key: name.into(),
    }
}
