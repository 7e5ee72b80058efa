//! The value of a key of the module's type, as one thin pointer Redis keeps:
//! either a mutex (one exclusive grant, stored inline in one allocation as
//! before any other primitive existed) or a grant set (shared grants, a
//! semaphore). The low bit of the pointer tells them apart: both kinds are
//! at least 8-byte aligned, and Redis never looks inside a module value.
//! So a mutex pays neither an allocation nor a field for the other kinds.

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::engine::grants::GrantSet;
use crate::engine::reservation::{Reservation, ReservationRef};

const SET_TAG: usize = 1;

/// An owned value.
pub enum Value {
    Mutex(Reservation),
    Set(Box<GrantSet>),
}

/// A borrowed value.
#[derive(Clone, Copy)]
pub enum ValueRef<'a> {
    Mutex(ReservationRef<'a>),
    Set(&'a GrantSet),
}

impl Value {
    /// Hands ownership to Redis as a module value pointer.
    pub fn into_raw(self) -> *mut c_void {
        match self {
            Value::Mutex(r) => r.into_raw(),
            Value::Set(set) => {
                let ptr = Box::into_raw(set);
                // Box<GrantSet> is aligned to 8, so the low bit is free.
                ptr.cast::<u8>().wrapping_add(SET_TAG).cast()
            }
        }
    }

    /// Takes back ownership of a pointer made by `into_raw`.
    ///
    /// # Safety
    /// `raw` must come from `Value::into_raw` and not be used afterwards.
    pub unsafe fn from_raw(raw: NonNull<c_void>) -> Value {
        if is_set(raw) {
            // SAFETY: made by Box::into_raw in into_raw, untagged here.
            Value::Set(unsafe { Box::from_raw(untag(raw).cast::<GrantSet>()) })
        } else {
            // SAFETY: per this function's contract.
            Value::Mutex(unsafe { Reservation::from_raw(raw) })
        }
    }

    pub fn view(&self) -> ValueRef<'_> {
        match self {
            Value::Mutex(r) => ValueRef::Mutex(r.view()),
            Value::Set(set) => ValueRef::Set(set),
        }
    }
}

impl<'a> ValueRef<'a> {
    /// A view of a module value pointer.
    ///
    /// # Safety
    /// `raw` must come from `Value::into_raw` and stay alive (not freed or
    /// replaced) for `'a`.
    pub unsafe fn from_raw(raw: NonNull<c_void>) -> ValueRef<'a> {
        if is_set(raw) {
            // SAFETY: a live GrantSet per the contract.
            ValueRef::Set(unsafe { &*untag(raw).cast::<GrantSet>() })
        } else {
            // SAFETY: per the contract.
            ValueRef::Mutex(unsafe { ReservationRef::from_raw(raw) })
        }
    }

    pub fn to_owned(self) -> Value {
        match self {
            ValueRef::Mutex(r) => Value::Mutex(r.to_owned()),
            ValueRef::Set(set) => Value::Set(Box::new(set.clone())),
        }
    }
}

/// A mutable view of a grant set stored in a key.
///
/// # Safety
/// `raw` must be a live set value (`is_set`) with no other reference into
/// it for `'a`.
pub unsafe fn set_mut<'a>(raw: NonNull<c_void>) -> Option<&'a mut GrantSet> {
    if !is_set(raw) {
        return None;
    }
    // SAFETY: per the contract.
    Some(unsafe { &mut *untag(raw).cast::<GrantSet>() })
}

fn is_set(raw: NonNull<c_void>) -> bool {
    raw.as_ptr() as usize & SET_TAG != 0
}

fn untag(raw: NonNull<c_void>) -> *mut u8 {
    raw.as_ptr().cast::<u8>().wrapping_sub(SET_TAG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::grants::{Grant, Mode};

    #[test]
    fn both_kinds_round_trip_through_one_pointer() {
        let mutex = Value::Mutex(Reservation::new(b"w", 5, 1));
        let raw = NonNull::new(mutex.into_raw()).unwrap();
        // SAFETY: raw is live until from_raw below.
        assert!(matches!(unsafe { ValueRef::from_raw(raw) }, ValueRef::Mutex(r) if r.token() == 5));
        // SAFETY: taking it back once.
        drop(unsafe { Value::from_raw(raw) });

        let mut set = GrantSet::new(3);
        set.insert(Grant {
            holder: b"r"[..].into(),
            token: 9,
            acquired_at_ms: 1,
            expires_at_ms: 2,
            renewals: 0,
            mode: Mode::Shared,
            permits: 2,
            delay_ms: 0,
        });
        let raw = NonNull::new(Value::Set(Box::new(set.clone())).into_raw()).unwrap();
        // SAFETY: live until from_raw below; no other reference.
        let view = unsafe { ValueRef::from_raw(raw) };
        assert!(matches!(view, ValueRef::Set(s) if *s == set));
        // SAFETY: no other reference is live.
        unsafe { set_mut(raw) }.unwrap().set_limit(5);
        // SAFETY: taking it back once.
        match unsafe { Value::from_raw(raw) } {
            Value::Set(s) => assert_eq!(s.limit(), 5),
            Value::Mutex(_) => panic!("lost the tag"),
        }
    }
}
