//! Module configuration: `reservation.max-ttl`, `reservation.max-holder-len`,
//! `reservation.max-waiters`, `reservation.max-holders` and
//! `reservation.lock-delay`, as Redis 7 module configs (`CONFIG
//! SET/GET`, `redis.conf`) that also accept `loadmodule` arguments.

use std::ffi::{c_char, c_int, c_longlong, c_void, CString};
use std::sync::atomic::{AtomicI64, Ordering};

use redis_module::raw;

use crate::engine::args::Limits;
use crate::glue::ffi::{rm, Ctx};

/// One numeric setting: its name, bounds and current value.
pub struct Setting {
    pub name: &'static str,
    pub default: i64,
    pub min: i64,
    pub max: i64,
    pub value: AtomicI64,
}

impl Setting {
    const fn new(name: &'static str, default: i64, min: i64, max: i64) -> Self {
        Setting {
            name,
            default,
            min,
            max,
            value: AtomicI64::new(default),
        }
    }
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Longest TTL a client may ask for, in seconds (default 30 days).
pub static MAX_TTL: Setting = Setting::new("max-ttl", 2_592_000, 1, 3_153_600_000);
/// Longest holder identity, in bytes.
pub static MAX_HOLDER_LEN: Setting = Setting::new("max-holder-len", 512, 1, 1 << 20);
/// Most clients queued in RESERVE.WAIT on one key.
pub static MAX_WAITERS: Setting = Setting::new("max-waiters", 100_000, 1, 10_000_000);

/// Most grants on one key (shared holders), and the largest `LIMIT`.
pub static MAX_HOLDERS: Setting = Setting::new("max-holders", 100_000, 1, 10_000_000);

/// The lock-delay, in ms, of grants made without `DELAY` (SPEC section 12).
pub static LOCK_DELAY: Setting =
    Setting::new("lock-delay", 0, 0, crate::engine::args::MAX_DELAY_MS as i64);

pub static SETTINGS: [&Setting; 5] = [
    &MAX_TTL,
    &MAX_HOLDER_LEN,
    &MAX_WAITERS,
    &MAX_HOLDERS,
    &LOCK_DELAY,
];

pub fn limits() -> Limits {
    Limits {
        max_ttl_ms: (MAX_TTL.get() as u64).saturating_mul(1000),
        max_holder_len: MAX_HOLDER_LEN.get() as usize,
        max_holders: MAX_HOLDERS.get() as u32,
    }
}

pub fn max_holders() -> usize {
    MAX_HOLDERS.get() as usize
}

pub fn max_waiters() -> usize {
    MAX_WAITERS.get() as usize
}

/// The lock-delay of a grant: its own `DELAY`, else the setting.
pub fn lock_delay(asked: Option<u32>) -> u32 {
    asked.unwrap_or_else(|| u32::try_from(LOCK_DELAY.get()).unwrap_or(0))
}

/// Parses `loadmodule ... max-ttl 60 max-holder-len 64` into overrides of
/// the defaults. Names may carry the `reservation.` prefix.
pub fn parse_module_args(args: &[&[u8]]) -> Result<Vec<(&'static Setting, i64)>, String> {
    if args.len() % 2 != 0 {
        return Err("module arguments must be name value pairs".into());
    }
    let mut out = Vec::new();
    for pair in args.chunks(2) {
        let name = String::from_utf8_lossy(pair[0]);
        let short = name.strip_prefix("reservation.").unwrap_or(&name);
        let setting = SETTINGS
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(short))
            .ok_or_else(|| format!("unknown module argument '{name}'"))?;
        let value = std::str::from_utf8(pair[1])
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| (setting.min..=setting.max).contains(v))
            .ok_or_else(|| {
                format!(
                    "invalid value for '{}': expected an integer from {} to {}",
                    setting.name, setting.min, setting.max
                )
            })?;
        out.push((*setting, value));
    }
    Ok(out)
}

extern "C" fn get_numeric(_name: *const c_char, privdata: *mut c_void) -> c_longlong {
    // SAFETY: privdata is one of the 'static Settings registered below.
    let setting = unsafe { &*privdata.cast::<Setting>() };
    setting.get()
}

extern "C" fn set_numeric(
    _name: *const c_char,
    value: c_longlong,
    privdata: *mut c_void,
    _err: *mut *mut raw::RedisModuleString,
) -> c_int {
    // SAFETY: as in get_numeric. Redis has already checked min/max.
    let setting = unsafe { &*privdata.cast::<Setting>() };
    setting.value.store(value, Ordering::Relaxed);
    raw::REDISMODULE_OK as c_int
}

/// Registers the configs with `defaults` overriding the built-in ones,
/// then lets Redis apply what `redis.conf` says.
pub fn register(ctx: Ctx, overrides: &[(&'static Setting, i64)]) -> Result<(), String> {
    for setting in SETTINGS {
        let default = overrides
            .iter()
            .rev()
            .find(|(s, _)| std::ptr::eq(*s, setting))
            .map_or(setting.default, |(_, v)| *v);
        setting.value.store(default, Ordering::Relaxed);
        let name = CString::new(setting.name).map_err(|e| e.to_string())?;
        // SAFETY: name is copied by Redis; privdata is a 'static Setting.
        let status = unsafe {
            rm!(RedisModule_RegisterNumericConfig)(
                ctx,
                name.as_ptr(),
                default,
                raw::REDISMODULE_CONFIG_DEFAULT,
                setting.min,
                setting.max,
                Some(get_numeric),
                Some(set_numeric),
                None,
                std::ptr::from_ref::<Setting>(setting).cast_mut().cast(),
            )
        };
        if status != raw::REDISMODULE_OK as c_int {
            return Err(format!("could not register config '{}'", setting.name));
        }
    }
    // SAFETY: ctx is the OnLoad context.
    if unsafe { rm!(RedisModule_LoadConfigs)(ctx) } != raw::REDISMODULE_OK as c_int {
        return Err("could not load the module configs".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_args() {
        let parsed =
            parse_module_args(&[b"max-ttl", b"60", b"reservation.max-waiters", b"5"]).unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(std::ptr::eq(parsed[0].0, &MAX_TTL));
        assert_eq!(parsed[1].1, 5);
        assert!(parse_module_args(&[b"max-ttl"]).is_err());
        assert!(parse_module_args(&[b"max-ttl", b"0"]).is_err());
        assert!(parse_module_args(&[b"max-ttl", b"x"]).is_err());
        assert!(parse_module_args(&[b"nope", b"1"]).is_err());
        assert!(parse_module_args(&[]).unwrap().is_empty());
    }
}
