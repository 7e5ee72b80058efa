//! `RESERVE.GUARD key holder token command [arg ...]`: a fenced write. When
//! `holder` holds `key` with a live grant whose token is `token`, the
//! command runs in the same atomic step and GUARD answers exactly its
//! reply; otherwise nothing runs and GUARD answers `FENCED ...`.
//!
//! The command runs through `RedisModule_Call` with the caller's ACL user
//! (`C`), propagated to replicas and the AOF as if the client had sent it
//! (`!`), with errors returned as replies (`E`), in the caller's protocol
//! (`0`), refusing writes under OOM (`M`) and what scripts may not run
//! (`S`). Commands that block or that scripts may not call answer
//! `ERR command not allowed in RESERVE.GUARD` first: `RM_Call` would run a
//! blocking command without blocking, which is not what its caller meant.
//!
//! GUARD's keys are its own `key` and the inner command's (the module
//! reports them when Redis asks, `getkeys-api`), so ACL key patterns,
//! `COMMAND GETKEYS` and cluster slot checks see them all.

use std::collections::HashMap;
use std::ffi::{c_int, CString};
use std::sync::Mutex;

use redis_module::raw;

use crate::engine::args;
use crate::engine::errors;
use crate::engine::reservation::holds_live;
use crate::glue::commands::{current, run, Failure};
use crate::glue::ffi::{now_ms, reply_error, rm, Ctx, RString};
use crate::glue::state::{bump, STATS};
use crate::glue::store::OpenKey;

/// Whether each command name (lowercase) may run inside GUARD, learned
/// from `COMMAND INFO` once per name: commands do not change flags while
/// the server runs.
static ALLOWED: Mutex<Option<HashMap<Vec<u8>, bool>>> = Mutex::new(None);

/// `errno` for "no such command" (ENOENT on every platform Redis runs on).
const ENOENT: i32 = 2;

/// The most names remembered; past it the cache starts again (bounded
/// whatever names clients send).
const MAX_CACHED: usize = 4096;

pub extern "C" fn guard_command(ctx: Ctx, argv: *mut RString, argc: c_int) -> c_int {
    run(ctx, argv, argc, guard)
}

fn guard(ctx: Ctx, argv: &[&[u8]], raw_args: &[RString]) -> Result<(), Failure> {
    // SAFETY: ctx is the command context.
    if unsafe { rm!(RedisModule_IsKeysPositionRequest)(ctx) } != 0 {
        report_keys(ctx, raw_args);
        return Ok(());
    }
    let a = args::parse_guard(argv)?;
    if !allowed(ctx, a.command[0]) {
        return Err(errors::NOT_IN_GUARD.into());
    }
    let held = {
        let key = OpenKey::read(ctx, raw_args[1]);
        let now = now_ms();
        holds_live(current(&key, now)?, a.holder, a.token, now)
    };
    if !held {
        bump(&STATS.guard_fenced);
        return Err(errors::FENCED.into());
    }
    if !acl_allows(ctx, &raw_args[4..]) {
        // Redis 7.0's RM_Call words this "ERR acl verification failed";
        // clients expect the NOPERM a direct call gets.
        let name = String::from_utf8_lossy(a.command[0]).to_lowercase();
        let text = format!("NOPERM this user has no permissions to run the '{name}' command");
        reply_error(ctx, &text);
        return Ok(());
    }
    bump(&STATS.guard_runs);
    call_and_reply(ctx, &raw_args[4..])
}

/// Whether the calling user may run the inner command (its keys were
/// checked by Redis already, as GUARD's own).
fn acl_allows(ctx: Ctx, inner: &[RString]) -> bool {
    let Ok(argc) = c_int::try_from(inner.len()) else {
        return false;
    };
    // SAFETY: the user name string and the user are freed below; `inner`
    // are live argv strings.
    unsafe {
        let name = rm!(RedisModule_GetCurrentUserName)(ctx);
        if name.is_null() {
            return true; // no client (cannot happen in a command): no ACL
        }
        let user = rm!(RedisModule_GetModuleUserFromUserName)(name);
        rm!(RedisModule_FreeString)(ctx, name);
        if user.is_null() {
            return false;
        }
        let status =
            rm!(RedisModule_ACLCheckCommandPermissions)(user, inner.as_ptr().cast_mut(), argc);
        // ENOENT: no such command; RM_Call answers Redis's own error.
        let unknown = std::io::Error::last_os_error().raw_os_error() == Some(ENOENT);
        rm!(RedisModule_FreeModuleUser)(user);
        status == raw::REDISMODULE_OK as c_int || unknown
    }
}

/// GUARD's keys for Redis (ACL, cluster, `COMMAND GETKEYS`): `key`, then
/// the inner command's keys at their place in GUARD's arguments.
fn report_keys(ctx: Ctx, raw_args: &[RString]) {
    if raw_args.len() < 2 {
        return;
    }
    // SAFETY: ctx is a keys-position request context.
    unsafe { rm!(RedisModule_KeyAtPos)(ctx, 1) };
    if raw_args.len() < 5 {
        return;
    }
    let inner = &raw_args[4..];
    let Ok(argc) = c_int::try_from(inner.len()) else {
        return;
    };
    let mut count: c_int = 0;
    // SAFETY: `inner` are live argv strings; Redis returns an array of
    // `count` positions (relative to `inner`) that we free below, or NULL
    // for an unknown command or a wrong arity.
    let positions = unsafe {
        rm!(RedisModule_GetCommandKeys)(ctx, inner.as_ptr().cast_mut(), argc, &mut count)
    };
    if positions.is_null() {
        return;
    }
    let n = usize::try_from(count).unwrap_or(0);
    // SAFETY: Redis allocated `count` ints at `positions`.
    let found = unsafe { std::slice::from_raw_parts(positions, n) };
    for &pos in found {
        // SAFETY: as above; positions shifted to GUARD's own argv.
        unsafe { rm!(RedisModule_KeyAtPos)(ctx, pos + 4) };
    }
    // SAFETY: the array came from Redis's allocator.
    unsafe { rm!(RedisModule_Free)(positions.cast()) };
}

/// Runs the inner command and answers its reply as it is.
fn call_and_reply(ctx: Ctx, inner: &[RString]) -> Result<(), Failure> {
    let name_bytes = crate::glue::ffi::string_bytes(inner[0]);
    let Ok(name) = CString::new(name_bytes) else {
        return Err(errors::UNKNOWN_COMMAND.into());
    };
    let args = &inner[1..];
    // SAFETY: "v" passes `args.len()` RedisModuleString pointers, alive for
    // the call; the flags are described at the top of this file.
    let reply = unsafe {
        rm!(RedisModule_Call)(
            ctx,
            name.as_ptr(),
            c"v!CEMS0".as_ptr(),
            args.as_ptr(),
            args.len(),
        )
    };
    if reply.is_null() {
        return Err(errors::GUARD_CALL_FAILED.into());
    }
    // SAFETY: a live call reply, replied once and freed once.
    unsafe {
        rm!(RedisModule_ReplyWithCallReply)(ctx, reply);
        rm!(RedisModule_FreeCallReply)(reply);
    }
    Ok(())
}

/// Whether `name` may run inside GUARD: not GUARD itself, nothing that
/// blocks (`blocking`), nothing a script may not call (`noscript`: MULTI,
/// EXEC, WATCH, SUBSCRIBE, WAIT ...). An unknown name is let through, so
/// the caller gets Redis's own unknown-command error.
fn allowed(ctx: Ctx, name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    if lower == b"reserve.guard" {
        return false;
    }
    if let Ok(cache) = ALLOWED.lock() {
        if let Some(&known) = cache.as_ref().and_then(|c| c.get(&lower)) {
            return known;
        }
    }
    let Some(verdict) = flags_allow(ctx, &lower) else {
        return true;
    };
    if let Ok(mut cache) = ALLOWED.lock() {
        let map = cache.get_or_insert_with(HashMap::new);
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(lower, verdict);
    }
    verdict
}

/// `COMMAND INFO name`'s flags: Some(false) for `blocking` or `noscript`,
/// None for an unknown command.
fn flags_allow(ctx: Ctx, name: &[u8]) -> Option<bool> {
    // SAFETY: "cb" = a C string and a (pointer, length) buffer.
    let reply = unsafe {
        rm!(RedisModule_Call)(
            ctx,
            c"COMMAND".as_ptr(),
            c"cb".as_ptr(),
            c"INFO".as_ptr(),
            name.as_ptr(),
            name.len(),
        )
    };
    if reply.is_null() {
        return None;
    }
    let verdict = command_flags(reply).map(|flags| {
        !flags
            .iter()
            .any(|f| f.as_slice() == b"blocking" || f.as_slice() == b"noscript")
    });
    // SAFETY: the reply is ours to free, once.
    unsafe { rm!(RedisModule_FreeCallReply)(reply) };
    verdict
}

/// The flag names of the one command `COMMAND INFO` describes (its third
/// field), None when it describes none.
fn command_flags(reply: *mut raw::RedisModuleCallReply) -> Option<Vec<Vec<u8>>> {
    // SAFETY: `reply` is a live call reply; elements are borrowed from it
    // and read before it is freed.
    unsafe {
        let entry = rm!(RedisModule_CallReplyArrayElement)(reply, 0);
        if entry.is_null()
            || rm!(RedisModule_CallReplyType)(entry) != raw::REDISMODULE_REPLY_ARRAY as c_int
        {
            return None;
        }
        let flags = rm!(RedisModule_CallReplyArrayElement)(entry, 2);
        if flags.is_null() {
            return None;
        }
        let n = rm!(RedisModule_CallReplyLength)(flags);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let flag = rm!(RedisModule_CallReplyArrayElement)(flags, i);
            let mut len = 0usize;
            let ptr = rm!(RedisModule_CallReplyStringPtr)(flag, &mut len);
            if !ptr.is_null() {
                out.push(std::slice::from_raw_parts(ptr.cast::<u8>(), len).to_vec());
            }
        }
        Some(out)
    }
}
