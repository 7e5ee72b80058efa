//! Everything `RedisModule_OnLoad` sets up: configs, commands with their
//! flags, arity, key specs and docs (`COMMAND INFO`/`DOCS`), keyspace and
//! server events, the INFO section.
//!
//! Commands are registered through the raw API rather than the crate's
//! macros: the `#[command]` macro and ACL categories do not load on Redis
//! 7.0, and the raw entry points let every handler read argv without
//! copying it.

use std::ffi::{c_char, c_int, CStr};
use std::ptr;

use redis_module::raw;
use redis_module::RedisString;

use crate::glue::commands;
use crate::glue::config;
use crate::glue::events;
use crate::glue::ffi::{rm, Ctx};
use crate::glue::info;

type CommandFn = extern "C" fn(Ctx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

/// One argument as `COMMAND DOCS` shows it.
struct ArgDoc {
    name: &'static CStr,
    kind: raw::RedisModuleCommandArgType,
    token: Option<&'static CStr>,
    optional: bool,
    multiple: bool,
}

const fn key_arg(name: &'static CStr) -> ArgDoc {
    ArgDoc {
        name,
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY,
        token: None,
        optional: false,
        multiple: false,
    }
}
const fn string_arg(name: &'static CStr) -> ArgDoc {
    ArgDoc {
        name,
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING,
        token: None,
        optional: false,
        multiple: false,
    }
}
const fn double_arg(name: &'static CStr) -> ArgDoc {
    ArgDoc {
        name,
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_DOUBLE,
        token: None,
        optional: false,
        multiple: false,
    }
}
const fn integer_arg(name: &'static CStr) -> ArgDoc {
    ArgDoc {
        name,
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
        token: None,
        optional: false,
        multiple: false,
    }
}
const fn token_option() -> ArgDoc {
    ArgDoc {
        name: c"token",
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
        token: Some(c"TOKEN"),
        optional: true,
        multiple: false,
    }
}

/// `SHARED`: a word alone.
const fn shared_option() -> ArgDoc {
    ArgDoc {
        name: c"shared",
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PURE_TOKEN,
        token: Some(c"SHARED"),
        optional: true,
        multiple: false,
    }
}
const fn count_option(name: &'static CStr, token: &'static CStr) -> ArgDoc {
    ArgDoc {
        name,
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
        token: Some(token),
        optional: true,
        multiple: false,
    }
}

/// `[DELAY ms]`.
const fn delay_option() -> ArgDoc {
    count_option(c"delay", c"DELAY")
}

const fn optional_integer_arg(name: &'static CStr) -> ArgDoc {
    ArgDoc {
        name,
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
        token: None,
        optional: true,
        multiple: false,
    }
}

/// Further keys: `[key ...]`.
const fn rest_key_arg(name: &'static CStr) -> ArgDoc {
    ArgDoc {
        name,
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY,
        token: None,
        optional: true,
        multiple: true,
    }
}

/// `arg [arg ...]`: any number of strings, none included.
const fn rest_arg(name: &'static CStr) -> ArgDoc {
    ArgDoc {
        name,
        kind: raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING,
        token: None,
        optional: true,
        multiple: true,
    }
}

/// A command's keys: the first and last argument that is a key (-1: the
/// last argument), every one between; (0, 0) for none.
type KeyRange = (c_int, c_int);
const ONE_KEY: KeyRange = (1, 1);
const NO_KEYS: KeyRange = (0, 0);

struct CommandSpec {
    name: &'static CStr,
    handler: CommandFn,
    flags: &'static CStr,
    arity: c_int,
    keys: KeyRange,
    /// Flags of the key at argument 1; 0 for a command without keys.
    key_flags: u32,
    summary: &'static CStr,
    complexity: &'static CStr,
    args: &'static [ArgDoc],
}

// Like SET's key spec: INSERT/UPDATE/DELETE are mutually exclusive.
const RW_KEY: u32 =
    raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_UPDATE;

static COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: c"RESERVE.LOCK",
        handler: commands::lock_command,
        flags: c"write deny-oom fast",
        arity: -4,
        keys: ONE_KEY,
        key_flags: RW_KEY,
        summary: c"Acquires a reservation if it is free (exclusive, or a SHARED grant, or PERMITS of a LIMIT-permit semaphore); re-acquiring by the same holder refreshes its TTL. Replies with the fencing token, or 0 when it does not fit now.",
        complexity: c"O(1) for an exclusive reservation, O(N) where N is the number of grants otherwise",
        args: &[
            key_arg(c"key"),
            string_arg(c"holder"),
            double_arg(c"ttl"),
            shared_option(),
            count_option(c"limit", c"LIMIT"),
            count_option(c"permits", c"PERMITS"),
            delay_option(),
        ],
    },
    CommandSpec {
        name: c"RESERVE.RENEW",
        handler: commands::renew_command,
        flags: c"write deny-oom fast",
        arity: -4,
        keys: ONE_KEY,
        key_flags: RW_KEY,
        summary: c"Extends a reservation to now + ttl, only for its holder (and token). Replies 1 when renewed, 0 when not held by the holder.",
        complexity: c"O(1)",
        args: &[key_arg(c"key"), string_arg(c"holder"), double_arg(c"ttl"), token_option()],
    },
    CommandSpec {
        name: c"RESERVE.RELEASE",
        handler: commands::release_command,
        flags: c"write deny-oom fast",
        arity: -3,
        keys: ONE_KEY,
        key_flags: raw::REDISMODULE_CMD_KEY_RW
            | raw::REDISMODULE_CMD_KEY_ACCESS
            | raw::REDISMODULE_CMD_KEY_DELETE,
        summary: c"Releases a reservation held by the holder (and token) and hands it to the oldest waiter. Replies 1 when released, 0 when not held by the holder.",
        complexity: c"O(1)",
        args: &[key_arg(c"key"), string_arg(c"holder"), token_option()],
    },
    CommandSpec {
        name: c"RESERVE.WAIT",
        handler: commands::wait_command,
        flags: c"write deny-oom blocking",
        arity: -5,
        keys: ONE_KEY,
        key_flags: RW_KEY,
        summary: c"Acquires a reservation (exclusive, SHARED, or PERMITS of a LIMIT-permit semaphore), blocking in FIFO order until it is granted or the timeout (seconds, 0 = forever) passes. Replies with the fencing token, or 0 on timeout.",
        complexity: c"O(1) for an exclusive reservation, O(N) where N is the number of grants otherwise",
        args: &[
            key_arg(c"key"),
            string_arg(c"holder"),
            double_arg(c"ttl"),
            double_arg(c"timeout"),
            shared_option(),
            count_option(c"limit", c"LIMIT"),
            count_option(c"permits", c"PERMITS"),
            delay_option(),
        ],
    },
    CommandSpec {
        name: c"RESERVE.OBSERVE",
        handler: commands::observe_command,
        flags: c"readonly blocking",
        arity: 4,
        keys: ONE_KEY,
        key_flags: raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS,
        summary: c"Watches a reservation without taking it: replies [holder, token] of its oldest current grant ([nil, 0] for none) as soon as that token differs from the one given (at once, or blocking until it changes), or nil when the timeout (seconds, 0 = forever) passes.",
        complexity: c"O(1) to block; O(N) to wake the N observers of a key",
        args: &[key_arg(c"key"), integer_arg(c"token"), double_arg(c"timeout")],
    },
    CommandSpec {
        name: c"RESERVE.INFO",
        handler: commands::info_command,
        flags: c"readonly fast",
        arity: 2,
        keys: ONE_KEY,
        key_flags: raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS,
        summary: c"Shows a reservation: the oldest grant's holder, token, ttl_ms, acquired_at_ms and renewals, then mode, limit, permits_used, waiters, queue and every grant in holders; nil when there is none.",
        complexity: c"O(N + M) where N is the number of grants and M the number of waiters",
        args: &[key_arg(c"key")],
    },
    CommandSpec {
        name: c"RESERVE.LOCKALL",
        handler: commands::lock_all_command,
        flags: c"write deny-oom",
        arity: -4,
        keys: (3, -1),
        key_flags: RW_KEY,
        summary: c"Acquires every key for the holder (exclusive, each its own token and TTL) or none. Replies with the tokens in key order, or nil when any key is held by another holder or has waiters.",
        complexity: c"O(N) where N is the number of keys",
        args: &[string_arg(c"holder"), double_arg(c"ttl"), key_arg(c"key"), rest_key_arg(c"key")],
    },
    CommandSpec {
        name: c"RESERVE.WAITALL",
        handler: commands::wait_all_command,
        flags: c"write deny-oom blocking",
        arity: -5,
        keys: (4, -1),
        key_flags: RW_KEY,
        summary: c"Acquires every key for the holder (exclusive, each its own token and TTL), blocking on all of them at once until all are granted together or the timeout (seconds, 0 = forever). Replies with the tokens in key order, or nil on timeout.",
        complexity: c"O(N) where N is the number of keys",
        args: &[
            string_arg(c"holder"),
            double_arg(c"ttl"),
            double_arg(c"timeout"),
            key_arg(c"key"),
            rest_key_arg(c"key"),
        ],
    },
    CommandSpec {
        name: c"RESERVE.GUARD",
        handler: crate::glue::guard::guard_command,
        flags: c"write deny-oom getkeys-api",
        arity: -5,
        keys: ONE_KEY,
        // The inner command's keys come from the getkeys API (variable
        // flags make Redis ask for them instead of trusting this spec).
        key_flags: RW_KEY | raw::REDISMODULE_CMD_KEY_VARIABLE_FLAGS,
        summary: c"Runs a command only if the holder holds the key with a live grant of that fencing token, in the same atomic step; replies exactly the command's reply, or a FENCED error without running it.",
        complexity: c"O(1) for the check, plus the command's own complexity",
        args: &[
            key_arg(c"key"),
            string_arg(c"holder"),
            integer_arg(c"token"),
            string_arg(c"command"),
            rest_arg(c"arg"),
        ],
    },
    CommandSpec {
        name: c"RESERVE.SETSTATE",
        handler: commands::set_state_command,
        flags: c"write",
        arity: -7,
        keys: ONE_KEY,
        key_flags: raw::REDISMODULE_CMD_KEY_OW | raw::REDISMODULE_CMD_KEY_UPDATE,
        summary: c"Internal: restores a reservation exactly (replication and AOF only; refused from clients).",
        complexity: c"O(1)",
        args: &[
            key_arg(c"key"),
            string_arg(c"holder"),
            integer_arg(c"token"),
            integer_arg(c"acquired-at-ms"),
            integer_arg(c"renewals"),
            integer_arg(c"expire-at-ms"),
            optional_integer_arg(c"delay-ms"),
        ],
    },
    CommandSpec {
        name: c"RESERVE.SETGRANTS",
        handler: commands::set_grants_command,
        flags: c"write",
        arity: 3,
        keys: ONE_KEY,
        key_flags: raw::REDISMODULE_CMD_KEY_OW | raw::REDISMODULE_CMD_KEY_UPDATE,
        summary: c"Internal: restores a reservation with shared grants exactly, from one encoded argument (replication and AOF only; refused from clients).",
        complexity: c"O(N) where N is the number of grants",
        args: &[key_arg(c"key"), string_arg(c"state")],
    },
    CommandSpec {
        name: c"RESERVE.TOKENFLOOR",
        handler: commands::token_floor_command,
        flags: c"write",
        arity: 2,
        keys: NO_KEYS,
        key_flags: 0,
        summary: c"Internal: raises the fencing-token counter (replication and AOF only; refused from clients).",
        complexity: c"O(1)",
        args: &[integer_arg(c"token")],
    },
];

/// Every raw API function the module calls, checked once at load so a
/// server that lacks one refuses the module instead of crashing later.
fn check_api() -> Result<(), String> {
    macro_rules! require {
        ($($name:ident),* $(,)?) => {{
            // SAFETY: reading the API table filled by RedisModule_Init.
            $( if unsafe { raw::$name }.is_none() {
                return Err(format!("this server lacks {}", stringify!($name)));
            } )*
        }};
    }
    require!(
        RedisModule_ACLCheckCommandPermissions,
        RedisModule_BlockClient,
        RedisModule_Call,
        RedisModule_CallReplyArrayElement,
        RedisModule_CallReplyLength,
        RedisModule_CallReplyStringPtr,
        RedisModule_CallReplyType,
        RedisModule_Free,
        RedisModule_FreeCallReply,
        RedisModule_FreeModuleUser,
        RedisModule_GetCurrentUserName,
        RedisModule_GetModuleUserFromUserName,
        RedisModule_GetCommandKeys,
        RedisModule_IsKeysPositionRequest,
        RedisModule_KeyAtPos,
        RedisModule_ReplyWithCallReply,
        RedisModule_CloseKey,
        RedisModule_CreateCommand,
        RedisModule_CreateString,
        RedisModule_CreateTimer,
        RedisModule_DeleteKey,
        RedisModule_DigestAddLongLong,
        RedisModule_DigestAddStringBuffer,
        RedisModule_DigestEndSequence,
        RedisModule_EmitAOF,
        RedisModule_EventLoopAddOneShot,
        RedisModule_FreeString,
        RedisModule_GetAbsExpire,
        RedisModule_GetBlockedClientHandle,
        RedisModule_GetBlockedClientPrivateData,
        RedisModule_GetClientId,
        RedisModule_GetCommand,
        RedisModule_GetContextFlags,
        RedisModule_GetDbIdFromOptCtx,
        RedisModule_GetDetachedThreadSafeContext,
        RedisModule_GetKeyNameFromOptCtx,
        RedisModule_GetNotifyKeyspaceEvents,
        RedisModule_NotifyKeyspaceEvent,
        RedisModule_GetSelectedDb,
        RedisModule_InfoAddFieldULongLong,
        RedisModule_InfoAddSection,
        RedisModule_KeyType,
        RedisModule_LoadConfigs,
        RedisModule_Log,
        RedisModule_LogIOError,
        RedisModule_Milliseconds,
        RedisModule_ModuleTypeGetType,
        RedisModule_ModuleTypeGetValue,
        RedisModule_ModuleTypeSetValue,
        RedisModule_OpenKey,
        RedisModule_RegisterInfoFunc,
        RedisModule_RegisterNumericConfig,
        RedisModule_Replicate,
        RedisModule_ReplicateVerbatim,
        RedisModule_ReplyWithArray,
        RedisModule_ReplyWithError,
        RedisModule_ReplyWithLongLong,
        RedisModule_ReplyWithMap,
        RedisModule_ReplyWithNull,
        RedisModule_ReplyWithSimpleString,
        RedisModule_ReplyWithStringBuffer,
        RedisModule_SelectDb,
        RedisModule_SetAbsExpire,
        RedisModule_SetCommandInfo,
        RedisModule_SetDisconnectCallback,
        RedisModule_SetModuleOptions,
        RedisModule_StopTimer,
        RedisModule_StringDMA,
        RedisModule_StringPtrLen,
        RedisModule_SubscribeToKeyspaceEvents,
        RedisModule_SubscribeToServerEvent,
        RedisModule_UnblockClient,
        RedisModule_WrongArity,
    );
    Ok(())
}

/// Key at argument 1, one key, like `SET`'s spec.
fn set_key_spec(spec: &mut raw::RedisModuleCommandKeySpec, flags: u32, (first, last): KeyRange) {
    spec.flags = u64::from(flags);
    spec.begin_search_type = raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
    spec.bs.index.pos = first;
    spec.find_keys_type = raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
    // Relative to the first key: 0 is that key alone, -1 the last argument.
    spec.fk.range.lastkey = if last < 0 { last } else { last - first };
    spec.fk.range.keystep = 1;
    spec.fk.range.limit = 0;
}

fn register_command(ctx: Ctx, spec: &CommandSpec) -> Result<(), String> {
    let name = spec.name.to_string_lossy();
    let has_key = spec.key_flags != 0;
    let (first_key, last_key) = spec.keys;
    // SAFETY: ctx is the OnLoad context; strings are 'static C strings.
    let status = unsafe {
        rm!(RedisModule_CreateCommand)(
            ctx,
            spec.name.as_ptr(),
            Some(spec.handler),
            spec.flags.as_ptr(),
            first_key,
            last_key,
            c_int::from(has_key),
        )
    };
    if status != raw::REDISMODULE_OK as c_int {
        return Err(format!("could not create command {name}"));
    }
    // SAFETY: the command was just created under this name.
    let command = unsafe { rm!(RedisModule_GetCommand)(ctx, spec.name.as_ptr()) };
    if command.is_null() {
        return Err(format!("could not look up command {name}"));
    }

    // Zeroed structs end each array, as the API requires.
    // SAFETY: all-zero is a valid "end of list" value for these C structs.
    let mut key_specs: [raw::RedisModuleCommandKeySpec; 2] = unsafe { std::mem::zeroed() };
    if has_key {
        set_key_spec(&mut key_specs[0], spec.key_flags, spec.keys);
    }

    let mut args: Vec<raw::RedisModuleCommandArg> = spec
        .args
        .iter()
        .map(|a| {
            // SAFETY: zero is valid for every field (null pointers, 0 flags).
            let mut arg: raw::RedisModuleCommandArg = unsafe { std::mem::zeroed() };
            arg.name = a.name.as_ptr();
            arg.type_ = a.kind;
            arg.key_spec_index =
                if a.kind == raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY {
                    0
                } else {
                    -1
                };
            arg.token = a.token.map_or(ptr::null(), CStr::as_ptr);
            arg.flags = if a.optional {
                raw::REDISMODULE_CMD_ARG_OPTIONAL as c_int
            } else {
                0
            } | if a.multiple {
                raw::REDISMODULE_CMD_ARG_MULTIPLE as c_int
            } else {
                0
            };
            arg
        })
        .collect();
    // SAFETY: the terminating all-zero entry.
    args.push(unsafe { std::mem::zeroed() });

    // Redis strides through these arrays by the sizes given here, so the
    // newer header's larger structs are read correctly by 7.0.
    let version = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    };
    let mut info = raw::RedisModuleCommandInfo {
        version: &version,
        summary: spec.summary.as_ptr(),
        complexity: spec.complexity.as_ptr(),
        since: c"1.0.0".as_ptr(),
        history: ptr::null_mut(),
        tips: ptr::null::<c_char>(),
        arity: spec.arity,
        key_specs: key_specs.as_mut_ptr(),
        args: args.as_mut_ptr(),
    };
    // SAFETY: every pointer in `info` is valid for this call; Redis copies
    // what it keeps.
    let status = unsafe { rm!(RedisModule_SetCommandInfo)(command, &mut info) };
    if status != raw::REDISMODULE_OK as c_int {
        return Err(format!("could not set the command info of {name}"));
    }
    Ok(())
}

/// Called from `RedisModule_OnLoad` after the data type is created.
pub fn load(ctx: Ctx, module_args: &[RedisString]) -> Result<(), String> {
    check_api()?;
    // Let rdb_load see a truncated or corrupt payload (RESTORE, a damaged
    // RDB) as an error instead of Redis aborting the whole server.
    // SAFETY: ctx is the OnLoad context.
    unsafe {
        rm!(RedisModule_SetModuleOptions)(ctx, raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS as c_int)
    };
    let arg_bytes: Vec<&[u8]> = module_args.iter().map(RedisString::as_slice).collect();
    let overrides = config::parse_module_args(&arg_bytes)?;
    config::register(ctx, &overrides)?;
    for spec in COMMANDS {
        register_command(ctx, spec)?;
    }
    crate::glue::state::set_replica(!crate::glue::ffi::is_master(ctx));
    events::subscribe(ctx)?;
    // Keys Redis drops without a notification still get their waiters
    // checked (the data type reports them; blocking knows what to do).
    crate::glue::state::on_silent_unlink(|key| {
        crate::glue::blocking::check_later_if_waited(key);
        crate::glue::observers::note_unlinked(key);
    });
    crate::glue::ffi::init_detached_ctx(ctx);
    // Replaces the crate's default (empty) info handler.
    // SAFETY: ctx is the OnLoad context.
    let status = unsafe { rm!(RedisModule_RegisterInfoFunc)(ctx, Some(info::info_callback)) };
    if status != raw::REDISMODULE_OK as c_int {
        return Err("could not register the INFO section".into());
    }
    Ok(())
}
