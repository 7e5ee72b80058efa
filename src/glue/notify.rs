//! Module keyspace events, class `d` (`notify-keyspace-events Kd`, `Ed`
//! or `KEd`): `reserve.lock`, `reserve.renew`, `reserve.release`,
//! `reserve.grant` (handoff to a waiter) and `reserve.expire`.

use std::ffi::{c_int, CStr};

use redis_module::raw;

use crate::glue::ffi::{rm, Ctx, OwnedString, RString};
use crate::glue::observers;

#[derive(Debug, Clone, Copy)]
pub enum Event {
    Lock,
    Renew,
    Release,
    Grant,
    Expire,
}

impl Event {
    fn name(self) -> &'static CStr {
        match self {
            Event::Lock => c"reserve.lock",
            Event::Renew => c"reserve.renew",
            Event::Release => c"reserve.release",
            Event::Grant => c"reserve.grant",
            Event::Expire => c"reserve.expire",
        }
    }
}

const CLASS: c_int = raw::REDISMODULE_NOTIFY_MODULE;

/// Whether anyone asked for module events (skip the work otherwise).
fn enabled() -> bool {
    // SAFETY: reads a server setting.
    (unsafe { rm!(RedisModule_GetNotifyKeyspaceEvents)() } & CLASS) != 0
}

/// Fires `event` for `key` in the context's selected db. Every event but
/// a renewal may change the key's current grant: its observers look.
pub fn notify(ctx: Ctx, event: Event, key: RString) {
    if !matches!(event, Event::Renew) {
        observers::note_change_of(ctx, key);
    }
    if enabled() {
        // SAFETY: ctx has a client (command, timer or callback context);
        // Redis copies what it publishes.
        unsafe { rm!(RedisModule_NotifyKeyspaceEvent)(ctx, CLASS, event.name().as_ptr(), key) };
    }
}

/// As `notify`, for a key we only have as bytes.
pub fn notify_bytes(ctx: Ctx, event: Event, key: &[u8]) {
    if !matches!(event, Event::Renew) {
        observers::note_change(ctx, key);
    }
    if enabled() {
        let key = OwnedString::new(ctx, key);
        notify(ctx, event, key.as_ptr());
    }
}
