//! The `INFO reservation` section.

use std::ffi::{c_int, CString};
use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::raw;

use crate::glue::datatype::{live_grants, live_reservations};
use crate::glue::ffi::rm;
use crate::glue::state::{last_token, Stats, STATS, WAITERS_QUEUED};

fn counters(s: &Stats) -> [(&'static str, &AtomicU64); 18] {
    [
        ("grants", &s.grants),
        ("reacquires", &s.reacquires),
        ("contended", &s.contended),
        ("renewals", &s.renewals),
        ("renew_failures", &s.renew_failures),
        ("releases", &s.releases),
        ("release_failures", &s.release_failures),
        ("handoffs", &s.handoffs),
        ("expirations", &s.expirations),
        ("wait_timeouts", &s.wait_timeouts),
        ("waits_blocked", &s.waits_blocked),
        ("wrongtype_waiters", &s.wrongtype_waiters),
        ("guard_runs", &s.guard_runs),
        ("guard_fenced", &s.guard_fenced),
        ("lock_delays", &s.lock_delays),
        ("observes", &s.observes),
        ("observe_wakeups", &s.observe_wakeups),
        ("observe_timeouts", &s.observe_timeouts),
    ]
}

fn add_field(ctx: *mut raw::RedisModuleInfoCtx, name: &str, value: u64) {
    if let Ok(name) = CString::new(name) {
        // SAFETY: ctx is the info context Redis passed; name is copied.
        unsafe { rm!(RedisModule_InfoAddFieldULongLong)(ctx, name.as_ptr(), value) };
    }
}

/// Fields print as `reservation_<name>:<value>` (Redis adds the prefix).
pub extern "C" fn info_callback(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    // SAFETY: a NULL section name makes the section the module's own name,
    // so `INFO reservation` shows it.
    unsafe { rm!(RedisModule_InfoAddSection)(ctx, std::ptr::null_mut()) };
    add_field(ctx, "held", live_reservations());
    // `grants` is already the count of grants issued.
    add_field(ctx, "grants_held", live_grants());
    add_field(
        ctx,
        "waiters",
        WAITERS_QUEUED.load(Ordering::Relaxed) as u64,
    );
    add_field(ctx, "observers", crate::glue::observers::observing() as u64);
    for (name, counter) in counters(&STATS) {
        add_field(ctx, name, counter.load(Ordering::Relaxed));
    }
    add_field(ctx, "last_token", last_token());
}
