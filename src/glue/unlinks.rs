//! Telling an expiry apart from other deletions, and the module's own
//! deletions from Redis's.
//!
//! Redis calls the type's `unlink2` just before it removes one of our keys
//! from the keyspace, and fires the `expired` / `evicted` notification
//! right after. Remembering the last unlinked key lets the notification
//! count the expirations of reservations (the key is already gone by then,
//! so its type cannot be asked). Some deletions fire no notification at all
//! (a cluster node losing a slot to a newer epoch drops its keys silently):
//! those are reported through `state::silent_unlink`, so a key with waiters
//! still gets its check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::glue::ffi::now_ms;
use crate::glue::state::{silent_unlink, QueueKey};

/// Set while the module itself deletes a key (RELEASE, an emptied set).
static OWN_DELETE: AtomicBool = AtomicBool::new(false);

/// The last reservation unlinked, when (unix ms), and whether it was a
/// mutex with a lock-delay.
static LAST_UNLINKED: Mutex<Option<(QueueKey, i64, bool)>> = Mutex::new(None);
/// Set while LAST_UNLINKED holds a key: lets every other notification
/// skip the mutex.
static UNLINK_PENDING: AtomicBool = AtomicBool::new(false);

/// Runs `delete` as one of the module's own deletions: no deferred check
/// (the module hands the key over in the same step) and never an expiry.
pub fn own_delete(delete: impl FnOnce()) {
    OWN_DELETE.store(true, Ordering::Relaxed);
    delete();
    OWN_DELETE.store(false, Ordering::Relaxed);
    forget_unlinked();
}

/// From the type's `unlink2`: `key` is about to leave the keyspace.
pub fn record(key: QueueKey, delayed: bool) {
    if !OWN_DELETE.load(Ordering::Relaxed) {
        silent_unlink(&key);
    }
    if let Ok(mut last) = LAST_UNLINKED.try_lock() {
        *last = Some((key, now_ms(), delayed));
        UNLINK_PENDING.store(true, Ordering::Relaxed);
    }
}

/// Whether `key` is the reservation Redis unlinked just before the
/// notification being handled (Some), and whether it had a lock-delay.
/// Redis fires `expired` right after the unlink, within the same millisecond or the next. Every notification we
/// receive consumes the record, and one we do not receive (a `SET` over
/// the reservation) cannot leave a stale record that matches later: a
/// value written after the unlink expires two milliseconds later at the
/// earliest.
pub fn take_unlinked(key: &QueueKey) -> Option<bool> {
    if !UNLINK_PENDING.swap(false, Ordering::Relaxed) {
        return None;
    }
    match LAST_UNLINKED.try_lock() {
        Ok(mut last) => match last.take() {
            Some((unlinked, at, delayed)) if &unlinked == key && now_ms() - at <= 1 => {
                Some(delayed)
            }
            _ => None,
        },
        Err(_) => None,
    }
}

pub fn unlink_pending() -> bool {
    UNLINK_PENDING.load(Ordering::Relaxed)
}

/// Our own deletions (RELEASE) are not expiries: drop the record.
fn forget_unlinked() {
    if UNLINK_PENDING.swap(false, Ordering::Relaxed) {
        if let Ok(mut last) = LAST_UNLINKED.try_lock() {
            *last = None;
        }
    }
}
