//! A key as the module sees it: open it, tell what it holds (one of our
//! values, an old library's plain string, anything else), store a value of
//! our type, delete it. Closed on drop, so no path forgets to close it.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

use redis_module::raw;

use crate::engine::reservation::{Current, Reservation, ReservationRef};
use crate::engine::value::{Value, ValueRef};
use crate::glue::datatype::{count_created, count_freed, RESERVATION_TYPE};
use crate::glue::ffi::{rm, Ctx, RString};
use crate::glue::unlinks;

/// What a key holds, seen from this module.
pub enum KeyKind {
    Empty,
    /// A value of our type: the pointer `Reservation::into_raw` made.
    Reservation(NonNull<c_void>),
    /// A plain string: an old library's reservation (value = holder).
    LegacyString,
    Other,
}

/// An open key, closed on drop.
pub struct OpenKey {
    ptr: *mut raw::RedisModuleKey,
}

fn reservation_type() -> *mut raw::RedisModuleType {
    *RESERVATION_TYPE.raw_type.borrow()
}

impl OpenKey {
    /// Opens `name` for reading and writing. On a master this applies lazy
    /// expiry first, which may fire keyspace notifications: never call it
    /// while holding the module state lock.
    pub fn write(ctx: Ctx, name: RString) -> Self {
        let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
        // SAFETY: ctx and name are live for this call; the key handle is
        // closed in Drop.
        let ptr = unsafe { rm!(RedisModule_OpenKey)(ctx, name, mode) }.cast();
        OpenKey { ptr }
    }

    pub fn read(ctx: Ctx, name: RString) -> Self {
        // SAFETY: as for `write`.
        let ptr =
            unsafe { rm!(RedisModule_OpenKey)(ctx, name, raw::REDISMODULE_READ as c_int) }.cast();
        OpenKey { ptr }
    }

    pub fn kind(&self) -> KeyKind {
        if self.ptr.is_null() {
            return KeyKind::Empty;
        }
        // SAFETY: self.ptr is an open key.
        let key_type = unsafe { rm!(RedisModule_KeyType)(self.ptr) } as isize;
        match key_type {
            raw::REDISMODULE_KEYTYPE_EMPTY => KeyKind::Empty,
            raw::REDISMODULE_KEYTYPE_STRING => KeyKind::LegacyString,
            raw::REDISMODULE_KEYTYPE_MODULE => {
                // SAFETY: the key holds a module value.
                let t = unsafe { rm!(RedisModule_ModuleTypeGetType)(self.ptr) };
                if t != reservation_type() {
                    return KeyKind::Other;
                }
                // SAFETY: the key holds a value of our type.
                let v = unsafe { rm!(RedisModule_ModuleTypeGetValue)(self.ptr) };
                match NonNull::new(v) {
                    Some(r) => KeyKind::Reservation(r),
                    None => KeyKind::Other,
                }
            }
            _ => KeyKind::Other,
        }
    }

    /// What the key holds at `now` (a mutex past its grant's end is in its
    /// lock-delay), or None for a value of another type.
    pub fn current(&self, now: i64) -> Option<Current<'_>> {
        Some(match self.kind() {
            KeyKind::Empty => Current::Free,
            // SAFETY: the value lives as long as the key stays open and is
            // not replaced; callers drop this view before changing the key.
            KeyKind::Reservation(r) => match unsafe { ValueRef::from_raw(r) } {
                ValueRef::Mutex(r) if self.in_delay(r, now) => Current::Delayed(r),
                ValueRef::Mutex(r) => Current::Held(r),
                ValueRef::Set(set) => Current::Grants(set),
            },
            KeyKind::LegacyString => Current::Legacy(self.string_value()),
            KeyKind::Other => return None,
        })
    }

    /// Whether `r`, this key's mutex, has ended and waits out its
    /// lock-delay. Only a mutex with a delay asks Redis for the key's
    /// expiry: the plain mutex's paths pay one header load.
    pub fn in_delay(&self, r: ReservationRef<'_>, now: i64) -> bool {
        r.delay_ms() > 0 && r.in_delay(self.abs_expire(), now)
    }

    /// The value of a plain-string key (an old library's holder).
    pub fn string_value(&self) -> &[u8] {
        let mut len = 0usize;
        // SAFETY: only called on a string key opened for reading; DMA in
        // READ mode does not modify it.
        let p = unsafe {
            rm!(RedisModule_StringDMA)(self.ptr, &mut len, raw::REDISMODULE_READ as c_int)
        };
        if p.is_null() {
            return &[];
        }
        // SAFETY: DMA returns `len` readable bytes, valid while the key
        // stays open and unmodified (we only read them right away).
        unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
    }

    /// Stores a new mutex as the key's value (replacing whatever was there;
    /// the old value is freed by Redis through our free callback).
    pub fn set_reservation(&self, r: Reservation) -> bool {
        self.set_value(Value::Mutex(r))
    }

    /// Stores a value of the module's type, replacing the key's value.
    pub fn set_value(&self, v: Value) -> bool {
        count_created(v.view());
        let value = v.into_raw();
        // SAFETY: key open for writing; ownership of `value` passes to Redis.
        let status =
            unsafe { rm!(RedisModule_ModuleTypeSetValue)(self.ptr, reservation_type(), value) };
        if status != raw::REDISMODULE_OK as c_int {
            if let Some(value) = NonNull::new(value) {
                // SAFETY: Redis did not take it, so we still own it.
                let v = unsafe { Value::from_raw(value) };
                count_freed(v.view());
            }
            return false;
        }
        true
    }

    /// Absolute expiry in unix ms, or None when the key has none.
    pub fn abs_expire(&self) -> Option<i64> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: open key.
        let t = unsafe { rm!(RedisModule_GetAbsExpire)(self.ptr) };
        (t >= 0).then_some(t)
    }

    pub fn set_abs_expire(&self, at_ms: i64) {
        // SAFETY: open key with a value.
        unsafe { rm!(RedisModule_SetAbsExpire)(self.ptr, at_ms) };
    }

    /// Deletes the key. The module's own deletions (RELEASE) hand off in
    /// the same step, so the unlink callback need not schedule a check.
    pub fn delete(&self) {
        // SAFETY: open key for writing.
        unlinks::own_delete(|| unsafe {
            rm!(RedisModule_DeleteKey)(self.ptr);
        });
    }
}

impl Drop for OpenKey {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: opened by OpenKey and closed exactly once, here.
            unsafe { rm!(RedisModule_CloseKey)(self.ptr) };
        }
    }
}
