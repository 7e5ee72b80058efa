//! The reservation state machine, as plain Rust with no Redis in it.
//!
//! A reservation is what one key of the module's type holds: who holds it,
//! the fencing token of that grant, when it was acquired and how often it
//! was renewed. Its deadline is the key's own Redis expiry, so it is not
//! stored here. The functions below look at what a key currently holds and
//! return a decision; the glue in `commands.rs` carries it out (writes the
//! key, sets the expiry, replicates, replies). Unit tests drive them with a
//! fake clock.

use std::alloc::{self, Layout};
use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::engine::grants::{Grant, GrantSet};

// ----- how a mutex is stored -----
//
// One allocation per mutex (not a box plus a holder buffer), with a 16-byte
// header that packs what a grant usually is:
//
//   word 0: token (53 bits) | holder length (8 bits) | HAS_DELAY | WIDE
//   word 1: acquired-at ms (43 bits, up to the year 2248) | renewals (21 bits)
//
// then the lock-delay (u32 ms, only with HAS_DELAY) and the holder's bytes.
// A value outside those ranges (a holder of 256 bytes or more, a renewal
// count past two million, a time or token no grant has) sets WIDE: the
// fields then live in a 24-byte extension after the header instead. The
// 16 bytes are what keep a held lock near the size of the plain `SET key
// value EX` it replaces: with a holder of up to 32 bytes the allocation
// stays in jemalloc's 48-byte class.

const HEADER_SIZE: usize = 16;
const TOKEN_MASK: u64 = (1 << 53) - 1;
const LEN_SHIFT: u32 = 53;
const LEN_MASK: u64 = 0xff;
const HAS_DELAY: u64 = 1 << 61;
const WIDE: u64 = 1 << 62;
const ACQUIRED_MASK: u64 = (1 << 43) - 1;
const RENEWALS_SHIFT: u32 = 43;
const RENEWALS_MAX_PACKED: u64 = (1 << 21) - 1;
/// token u64, acquired-at i64, renewals u32, holder length u32.
const WIDE_SIZE: usize = 24;
const DELAY_SIZE: usize = 4;
const ALIGN: usize = 8;

/// The fields of a stored mutex, unpacked.
#[derive(Clone, Copy)]
struct Fields {
    token: u64,
    acquired_at_ms: i64,
    /// Saturates at u32::MAX: four billion renewals of one grant.
    renewals: u32,
    holder_len: usize,
    delay_ms: u32,
}

impl Fields {
    fn packs(&self) -> bool {
        self.token <= TOKEN_MASK
            && u64::try_from(self.acquired_at_ms).is_ok_and(|t| t <= ACQUIRED_MASK)
            && u64::from(self.renewals) <= RENEWALS_MAX_PACKED
            && self.holder_len as u64 <= LEN_MASK
    }

    fn size(&self, wide: bool) -> usize {
        HEADER_SIZE
            + if wide { WIDE_SIZE } else { 0 }
            + if self.delay_ms > 0 { DELAY_SIZE } else { 0 }
            + self.holder_len
    }
}

fn layout(size: usize) -> Layout {
    // Holders are bounded by `max-holder-len` (at most 1 MiB), far below
    // isize::MAX, so this layout always exists.
    Layout::from_size_align(size, ALIGN).unwrap_or_else(|_| Layout::new::<u64>())
}

/// One held reservation, owned: the value of a key of the module's type.
/// It is a single thin pointer so Redis can store it as the key's value.
pub struct Reservation {
    ptr: NonNull<u8>,
}

// SAFETY: a Reservation owns its allocation exclusively; nothing in it is
// tied to a thread (Redis may free values on a background thread).
unsafe impl Send for Reservation {}

/// A borrowed view of a stored reservation (in a key, or owned above).
#[derive(Clone, Copy)]
pub struct ReservationRef<'a> {
    ptr: NonNull<u8>,
    _borrow: PhantomData<&'a u8>,
}

impl Reservation {
    pub fn new(holder: &[u8], token: u64, acquired_at_ms: i64) -> Self {
        Self::with_renewals(holder, token, acquired_at_ms, 0)
    }

    pub fn with_renewals(holder: &[u8], token: u64, acquired_at_ms: i64, renewals: u64) -> Self {
        Self::with_delay(holder, token, acquired_at_ms, renewals, 0)
    }

    /// A reservation whose grant, once its TTL runs out, keeps the key
    /// from everyone for `delay_ms` (SPEC section 12). The key's Redis
    /// expiry is then the grant's end plus the delay.
    pub fn with_delay(
        holder: &[u8],
        token: u64,
        acquired_at_ms: i64,
        renewals: u64,
        delay_ms: u32,
    ) -> Self {
        let holder = &holder[..holder.len().min(u32::MAX as usize)];
        let f = Fields {
            token,
            acquired_at_ms,
            renewals: u32::try_from(renewals).unwrap_or(u32::MAX),
            holder_len: holder.len(),
            delay_ms,
        };
        let wide = !f.packs();
        let layout = layout(f.size(wide));
        // SAFETY: the layout is non-zero-sized (it holds the header).
        let raw = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        let delay_flag = if delay_ms > 0 { HAS_DELAY } else { 0 };
        // SAFETY: `ptr` is a fresh allocation of `f.size(wide)` bytes,
        // aligned to 8; every write below stays within it, in the layout
        // the readers in ReservationRef expect.
        unsafe {
            let p = ptr.as_ptr();
            let mut at = HEADER_SIZE;
            if wide {
                p.cast::<u64>().write(WIDE | delay_flag);
                p.add(8).cast::<u64>().write(0);
                p.add(16).cast::<u64>().write(token);
                p.add(24).cast::<i64>().write(acquired_at_ms);
                p.add(32).cast::<u32>().write(f.renewals);
                p.add(36).cast::<u32>().write(holder.len() as u32);
                at += WIDE_SIZE;
            } else {
                let len = (holder.len() as u64) << LEN_SHIFT;
                p.cast::<u64>().write(token | len | delay_flag);
                let renewals = u64::from(f.renewals) << RENEWALS_SHIFT;
                p.add(8)
                    .cast::<u64>()
                    .write(acquired_at_ms as u64 | renewals);
            }
            if delay_ms > 0 {
                p.add(at).cast::<u32>().write_unaligned(delay_ms);
                at += DELAY_SIZE;
            }
            std::ptr::copy_nonoverlapping(holder.as_ptr(), p.add(at), holder.len());
        }
        Reservation { ptr }
    }

    /// The mutex that stores `g` when it is a key's only grant (or the one
    /// whose lock-delay the key waits out).
    pub fn of_grant(g: &Grant) -> Self {
        Self::with_delay(
            &g.holder,
            g.token,
            g.acquired_at_ms,
            u64::from(g.renewals),
            g.delay_ms,
        )
    }

    pub fn view(&self) -> ReservationRef<'_> {
        ReservationRef {
            ptr: self.ptr,
            _borrow: PhantomData,
        }
    }

    /// Hands ownership to Redis as a module value pointer.
    pub fn into_raw(self) -> *mut c_void {
        let ptr = self.ptr.as_ptr().cast();
        std::mem::forget(self);
        ptr
    }

    /// Takes back ownership of a pointer made by `into_raw`.
    ///
    /// # Safety
    /// `raw` must come from `into_raw` and not be used afterwards.
    pub unsafe fn from_raw(raw: NonNull<c_void>) -> Self {
        Reservation { ptr: raw.cast() }
    }

    pub fn holder(&self) -> &[u8] {
        self.view().holder()
    }
    pub fn token(&self) -> u64 {
        self.view().token()
    }
    pub fn acquired_at_ms(&self) -> i64 {
        self.view().acquired_at_ms()
    }
    pub fn renewals(&self) -> u64 {
        self.view().renewals()
    }
    pub fn delay_ms(&self) -> u32 {
        self.view().delay_ms()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let view = self.view();
        let layout = layout(view.heap_size());
        // SAFETY: allocated in `with_delay` with this very layout (the
        // size is recomputed from the same fields and flags).
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl Clone for Reservation {
    fn clone(&self) -> Self {
        self.view().to_owned()
    }
}

impl PartialEq for Reservation {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.view().fmt(f)
    }
}

impl<'a> ReservationRef<'a> {
    /// A view of a module value pointer.
    ///
    /// # Safety
    /// `raw` must come from `Reservation::into_raw` and stay alive (not
    /// freed or replaced) for `'a`.
    pub unsafe fn from_raw(raw: NonNull<c_void>) -> Self {
        ReservationRef {
            ptr: raw.cast(),
            _borrow: PhantomData,
        }
    }

    /// The u64 at byte `at` of the header or the wide extension.
    fn word(self, at: usize) -> u64 {
        // SAFETY: the pointer is live for 'a (type invariant), 8-aligned,
        // and `at` is 0, 8 or 16 of an allocation at least that long (16
        // only when WIDE, which allocates the extension).
        unsafe { self.ptr.as_ptr().add(at).cast::<u64>().read() }
    }

    fn word0(self) -> u64 {
        self.word(0)
    }

    fn wide(self) -> bool {
        self.word0() & WIDE != 0
    }

    fn has_delay(self) -> bool {
        self.word0() & HAS_DELAY != 0
    }

    /// A u32 of the wide extension at byte `at`.
    fn wide_u32(self, at: usize) -> u32 {
        // SAFETY: only called when WIDE: the extension (bytes 16..40) is
        // allocated and initialised; `at` is 32 or 36, 4-aligned.
        unsafe { self.ptr.as_ptr().add(at).cast::<u32>().read() }
    }

    fn holder_len(self) -> usize {
        if self.wide() {
            self.wide_u32(36) as usize
        } else {
            ((self.word0() >> LEN_SHIFT) & LEN_MASK) as usize
        }
    }

    /// Where what follows the header (and the extension) starts.
    fn tail(self) -> usize {
        HEADER_SIZE + if self.wide() { WIDE_SIZE } else { 0 }
    }

    pub fn holder(self) -> &'a [u8] {
        let at = self.tail() + if self.has_delay() { DELAY_SIZE } else { 0 };
        // SAFETY: `holder_len` bytes of holder sit at `at`, initialised in
        // `with_delay`, live for 'a.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(at), self.holder_len()) }
    }

    pub fn token(self) -> u64 {
        if self.wide() {
            self.word(16)
        } else {
            self.word0() & TOKEN_MASK
        }
    }

    pub fn acquired_at_ms(self) -> i64 {
        if self.wide() {
            self.word(24) as i64
        } else {
            (self.word(8) & ACQUIRED_MASK) as i64
        }
    }

    pub fn renewals(self) -> u64 {
        if self.wide() {
            u64::from(self.wide_u32(32))
        } else {
            self.word(8) >> RENEWALS_SHIFT
        }
    }

    /// The lock-delay that follows this grant's expiry; 0 for none.
    pub fn delay_ms(self) -> u32 {
        if !self.has_delay() {
            return 0;
        }
        // SAFETY: a flagged allocation holds the delay right after the
        // header (and the extension), written in `with_delay`.
        unsafe {
            self.ptr
                .as_ptr()
                .add(self.tail())
                .cast::<u32>()
                .read_unaligned()
        }
    }

    /// When the grant itself ends, given the key's Redis expiry (which
    /// runs on through the delay).
    pub fn grant_end(self, key_expire_ms: i64) -> i64 {
        key_expire_ms.saturating_sub(i64::from(self.delay_ms()))
    }

    /// Whether the grant has ended and the key only waits out its delay.
    /// A key is live while `now <= expire` (Redis's rule), and so is the
    /// grant while `now <= grant_end`. A key with a delay but no expiry
    /// (an admin's PERSIST) no longer says when its grant ends: it counts
    /// as ended, so an expired holder can never renew its way back.
    pub fn in_delay(self, key_expire_ms: Option<i64>, now_ms: i64) -> bool {
        self.delay_ms() > 0 && key_expire_ms.is_none_or(|e| now_ms > self.grant_end(e))
    }

    /// Bytes this value occupies on the heap (its allocation's size).
    pub fn heap_size(self) -> usize {
        self.tail() + if self.has_delay() { DELAY_SIZE } else { 0 } + self.holder_len()
    }

    /// Holder and token both match (the token only when one is given).
    pub fn is_held_by(self, holder: &[u8], token: Option<u64>) -> bool {
        self.holder() == holder && token.is_none_or(|t| t == self.token())
    }

    pub fn to_owned(self) -> Reservation {
        Reservation::with_delay(
            self.holder(),
            self.token(),
            self.acquired_at_ms(),
            self.renewals(),
            self.delay_ms(),
        )
    }

    /// Counts one renewal in place, when the count still fits where it is
    /// stored; false when the value must be rebuilt (`renewed`) instead.
    ///
    /// # Safety
    /// No other reference into this reservation may be live, and the
    /// pointer must allow writes (it came from `into_raw`).
    pub unsafe fn increment_renewals(self) -> bool {
        let p = self.ptr.as_ptr();
        if self.wide() {
            let n = self.wide_u32(32).saturating_add(1);
            // SAFETY: per the contract; the extension is allocated.
            unsafe { p.add(32).cast::<u32>().write(n) };
            return true;
        }
        let w1 = self.word(8);
        if (w1 >> RENEWALS_SHIFT) >= RENEWALS_MAX_PACKED {
            return false;
        }
        // SAFETY: per the contract; word 1 is part of every allocation.
        unsafe { p.add(8).cast::<u64>().write(w1 + (1 << RENEWALS_SHIFT)) };
        true
    }
}

impl PartialEq for ReservationRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.holder() == other.holder()
            && self.token() == other.token()
            && self.acquired_at_ms() == other.acquired_at_ms()
            && self.renewals() == other.renewals()
            && self.delay_ms() == other.delay_ms()
    }
}

impl fmt::Debug for ReservationRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("holder", &String::from_utf8_lossy(self.holder()))
            .field("token", &self.token())
            .field("acquired_at_ms", &self.acquired_at_ms())
            .field("renewals", &self.renewals())
            .field("delay_ms", &self.delay_ms())
            .finish()
    }
}

/// How long a grant lasts and the lock-delay after it: together they give
/// the key's Redis expiry (the grant's end plus the delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    pub ttl_ms: u64,
    pub delay_ms: u32,
}

impl Ttl {
    pub fn new(ttl_ms: u64, delay_ms: u32) -> Ttl {
        Ttl { ttl_ms, delay_ms }
    }

    /// When a grant made at `now` ends.
    pub fn grant_end(self, now_ms: i64) -> i64 {
        now_ms.saturating_add(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX))
    }

    /// The Redis expiry of a key granted at `now`.
    pub fn key_expire(self, now_ms: i64) -> i64 {
        self.grant_end(now_ms)
            .saturating_add(i64::from(self.delay_ms))
    }
}

/// What a key holds, as far as reservations are concerned.
#[derive(Debug, Clone, Copy)]
pub enum Current<'a> {
    /// No key, so no reservation.
    Free,
    /// A key of the module's type.
    Held(ReservationRef<'a>),
    /// A plain string written by one of the old client-side libraries: its
    /// value is the holder (SPEC section 7).
    Legacy(&'a [u8]),
    /// Shared or counted grants (see `grants.rs`).
    Grants(&'a GrantSet),
    /// A grant whose TTL ran out, in its lock-delay: granted to no one
    /// until the key expires (SPEC section 12).
    Delayed(ReservationRef<'a>),
}

/// The grant `RESERVE.OBSERVE` reports: the oldest current one, as
/// (holder, token); an old library's lock has no token (0). None when the
/// key is granted to no one (free, or in its lock-delay).
pub fn current_grant(current: Current<'_>, now_ms: i64) -> Option<(&[u8], u64)> {
    match current {
        Current::Held(r) => Some((r.holder(), r.token())),
        Current::Legacy(value) => Some((value, 0)),
        Current::Grants(set) => set
            .grants()
            .iter()
            .find(|g| g.expires_at_ms > now_ms)
            .map(|g| (&*g.holder, g.token)),
        Current::Free | Current::Delayed(_) => None,
    }
}

/// When what `current_grant` reports may next change by time alone (a
/// grant's expiry, a delay's end), given the key's Redis expiry; None when
/// only a command can change it.
pub fn next_change(current: Current<'_>, key_expire_ms: Option<i64>, now_ms: i64) -> Option<i64> {
    // A key is live while now <= expire: it changes one ms later.
    let after = |at: i64| at.saturating_add(1);
    match current {
        Current::Free => None,
        Current::Held(r) => key_expire_ms.map(|e| after(r.grant_end(e))),
        Current::Delayed(_) | Current::Legacy(_) => key_expire_ms.map(after),
        // A grant ends at its expiry instant.
        Current::Grants(set) => set
            .grants()
            .iter()
            .map(|g| g.expires_at_ms)
            .filter(|&at| at > now_ms)
            .min(),
    }
}

/// What `RESERVE.LOCK` (and the immediate path of `RESERVE.WAIT`) does.
#[derive(Debug, PartialEq, Eq)]
pub enum LockDecision {
    /// Free and nobody queued: create a reservation with a new token.
    Grant,
    /// Free, but waiters are queued (the key was freed earlier in the same
    /// MULTI or script and the deferred handoff has not run): give it to the
    /// oldest waiter first, then answer as for a held key.
    HandOffFirst,
    /// Already held by this holder: refresh the TTL, keep the token.
    Reacquire { token: u64 },
    /// Held by someone else (or by an old library's string).
    Held,
}

pub fn decide_lock(current: Current<'_>, holder: &[u8], waiters_queued: bool) -> LockDecision {
    match current {
        Current::Free if waiters_queued => LockDecision::HandOffFirst,
        Current::Free => LockDecision::Grant,
        Current::Held(r) if r.holder() == holder => LockDecision::Reacquire { token: r.token() },
        Current::Held(_) | Current::Legacy(_) | Current::Grants(_) | Current::Delayed(_) => {
            LockDecision::Held
        }
    }
}

/// What `RESERVE.RENEW` and `RESERVE.RELEASE` do: act only for the holder.
#[derive(Debug, PartialEq, Eq)]
pub enum OwnerDecision {
    /// The caller holds the module reservation.
    Owner,
    /// The caller holds an old library's plain-string reservation.
    LegacyOwner,
    /// Expired, released, or someone else's: change nothing, answer 0.
    NotOwner,
}

pub fn decide_owner(current: Current<'_>, holder: &[u8], token: Option<u64>) -> OwnerDecision {
    match current {
        Current::Held(r) if r.is_held_by(holder, token) => OwnerDecision::Owner,
        // An old library's lock has no token: one given cannot match it.
        Current::Legacy(value) if value == holder && token.is_none() => OwnerDecision::LegacyOwner,
        _ => OwnerDecision::NotOwner,
    }
}

/// Whether `holder` holds the key with a live grant whose token is
/// `token` (RESERVE.GUARD's check). A shared grant's token guards too; an
/// old library's plain string has no token, so it never does.
pub fn holds_live(current: Current<'_>, holder: &[u8], token: u64, now_ms: i64) -> bool {
    match current {
        Current::Held(r) => r.is_held_by(holder, Some(token)),
        Current::Grants(set) => set
            .find(holder)
            .is_some_and(|g| g.token == token && g.expires_at_ms > now_ms),
        Current::Free | Current::Legacy(_) | Current::Delayed(_) => false,
    }
}

/// A renewed copy of `r` (renewal count + 1); the caller sets the expiry.
pub fn renewed(r: ReservationRef<'_>) -> Reservation {
    Reservation::with_delay(
        r.holder(),
        r.token(),
        r.acquired_at_ms(),
        r.renewals().saturating_add(1),
        r.delay_ms(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn lock_on_a_free_key_grants() {
        assert_eq!(
            decide_lock(Current::Free, b"w1", false),
            LockDecision::Grant
        );
    }

    #[test]
    fn lock_never_barges_past_waiters() {
        assert_eq!(
            decide_lock(Current::Free, b"w1", true),
            LockDecision::HandOffFirst
        );
    }

    #[test]
    fn relock_by_the_holder_keeps_the_token() {
        let r = Reservation::new(b"w1", 42, NOW);
        assert_eq!(
            decide_lock(Current::Held(r.view()), b"w1", true),
            LockDecision::Reacquire { token: 42 }
        );
        assert_eq!(
            decide_lock(Current::Held(r.view()), b"w2", false),
            LockDecision::Held
        );
    }

    #[test]
    fn legacy_strings_count_as_held() {
        assert_eq!(
            decide_lock(Current::Legacy(b"w1"), b"w1", false),
            LockDecision::Held
        );
        assert_eq!(
            decide_lock(Current::Legacy(b"w1"), b"w2", false),
            LockDecision::Held
        );
    }

    #[test]
    fn only_the_holder_with_the_right_token_owns() {
        let r = Reservation::new(b"w1", 42, NOW);
        assert_eq!(
            decide_owner(Current::Held(r.view()), b"w1", None),
            OwnerDecision::Owner
        );
        assert_eq!(
            decide_owner(Current::Held(r.view()), b"w1", Some(42)),
            OwnerDecision::Owner
        );
        assert_eq!(
            decide_owner(Current::Held(r.view()), b"w1", Some(41)),
            OwnerDecision::NotOwner
        );
        assert_eq!(
            decide_owner(Current::Held(r.view()), b"w2", None),
            OwnerDecision::NotOwner
        );
        assert_eq!(
            decide_owner(Current::Free, b"w1", None),
            OwnerDecision::NotOwner
        );
        assert_eq!(
            decide_owner(Current::Legacy(b"w1"), b"w1", None),
            OwnerDecision::LegacyOwner
        );
        assert_eq!(
            decide_owner(Current::Legacy(b"w1"), b"w1", Some(1)),
            OwnerDecision::NotOwner
        );
        assert_eq!(
            decide_owner(Current::Legacy(b"w1"), b"w2", None),
            OwnerDecision::NotOwner
        );
    }

    #[test]
    fn only_a_live_grant_with_that_token_guards() {
        use crate::engine::grants::{Grant, GrantSet, Mode};
        let r = Reservation::new(b"w1", 42, NOW);
        assert!(holds_live(Current::Held(r.view()), b"w1", 42, NOW));
        assert!(!holds_live(Current::Held(r.view()), b"w1", 41, NOW));
        assert!(!holds_live(Current::Held(r.view()), b"w2", 42, NOW));
        assert!(!holds_live(Current::Legacy(b"w1"), b"w1", 42, NOW));
        assert!(!holds_live(Current::Free, b"w1", 42, NOW));
        let mut set = GrantSet::new(0);
        set.insert(Grant {
            holder: b"r"[..].into(),
            token: 7,
            acquired_at_ms: NOW,
            expires_at_ms: NOW + 10,
            renewals: 0,
            mode: Mode::Shared,
            permits: 1,
            delay_ms: 0,
        });
        assert!(holds_live(Current::Grants(&set), b"r", 7, NOW + 9));
        assert!(
            !holds_live(Current::Grants(&set), b"r", 7, NOW + 10),
            "expired"
        );
        assert!(!holds_live(Current::Grants(&set), b"r", 8, NOW));
    }

    #[test]
    fn a_delay_rides_in_the_same_allocation_only_when_there_is_one() {
        let plain = Reservation::new(b"worker", 9, NOW);
        let delayed = Reservation::with_delay(b"worker", 9, NOW, 3, 1500);
        assert_eq!(plain.delay_ms(), 0);
        assert_eq!(delayed.delay_ms(), 1500);
        assert_eq!(delayed.holder(), b"worker");
        assert_eq!(delayed.renewals(), 3);
        assert_eq!(plain.view().heap_size() + 4, delayed.view().heap_size());
        assert_ne!(plain, Reservation::with_delay(b"worker", 9, NOW, 0, 1));
        let renewed = renewed(delayed.view());
        assert_eq!((renewed.delay_ms(), renewed.renewals()), (1500, 4));
        assert_eq!(delayed.clone(), delayed);
        // The key's expiry is the grant's end plus the delay.
        let expire = NOW + 10_000;
        assert_eq!(delayed.view().grant_end(expire), NOW + 8_500);
        assert!(!delayed.view().in_delay(Some(expire), NOW + 8_500));
        assert!(delayed.view().in_delay(Some(expire), NOW + 8_501));
        assert!(!plain.view().in_delay(Some(expire), NOW + 9_999));
        assert!(delayed.view().in_delay(None, NOW), "persisted: ended");
        let ttl = Ttl::new(2_000, 500);
        assert_eq!(
            (ttl.grant_end(NOW), ttl.key_expire(NOW)),
            (NOW + 2_000, NOW + 2_500)
        );
    }

    #[test]
    fn a_key_in_its_delay_is_granted_to_no_one() {
        let r = Reservation::with_delay(b"w1", 42, NOW, 0, 1000);
        let delayed = Current::Delayed(r.view());
        assert_eq!(decide_lock(delayed, b"w1", false), LockDecision::Held);
        assert_eq!(decide_lock(delayed, b"w2", false), LockDecision::Held);
        assert_eq!(
            decide_owner(delayed, b"w1", Some(42)),
            OwnerDecision::NotOwner
        );
        assert!(!holds_live(delayed, b"w1", 42, NOW));
        assert_eq!(current_grant(delayed, NOW), None);
        let held = Current::Held(r.view());
        assert_eq!(current_grant(held, NOW), Some((&b"w1"[..], 42)));
        assert_eq!(
            current_grant(Current::Legacy(b"old"), NOW),
            Some((&b"old"[..], 0))
        );
        assert_eq!(current_grant(Current::Free, NOW), None);
        // What may change by time alone, and when.
        let expire = NOW + 5_000;
        assert_eq!(next_change(held, Some(expire), NOW), Some(NOW + 4_001));
        assert_eq!(next_change(delayed, Some(expire), NOW), Some(expire + 1));
        assert_eq!(next_change(Current::Free, None, NOW), None);
        assert_eq!(next_change(held, None, NOW), None);
    }

    #[test]
    fn renewal_counts_and_keeps_identity() {
        let r = Reservation::new(b"w1", 42, NOW);
        let r2 = renewed(renewed(r.view()).view());
        assert_eq!(r2.renewals(), 2);
        assert_eq!(r2.token(), 42);
        assert_eq!(r2.acquired_at_ms(), NOW);
        assert_eq!(r2.holder(), b"w1");
    }

    #[test]
    fn storage_round_trips_any_holder() {
        for holder in [&b"w"[..], b"", &[0xff, 0, 0x80], &[b'x'; 1000]] {
            let r = Reservation::with_renewals(holder, u64::MAX, i64::MIN, 7);
            assert_eq!(r.holder(), holder);
            assert_eq!(
                (r.token(), r.acquired_at_ms(), r.renewals()),
                (u64::MAX, i64::MIN, 7)
            );
            let copy = r.clone();
            assert_eq!(copy, r);
            let raw = NonNull::new(r.into_raw()).unwrap();
            // SAFETY: raw came from into_raw just above.
            let view = unsafe { ReservationRef::from_raw(raw) };
            assert_eq!(view, copy.view());
            // SAFETY: no other reference into it is live.
            assert!(unsafe { view.increment_renewals() }, "wide: in place");
            assert_eq!(view.renewals(), 8);
            // SAFETY: taking ownership back exactly once.
            drop(unsafe { Reservation::from_raw(raw) });
        }
        let huge = Reservation::with_renewals(b"h", 1, 1, u64::MAX);
        assert_eq!(huge.renewals(), u64::from(u32::MAX), "saturates");
    }

    #[test]
    fn a_usual_grant_packs_into_sixteen_bytes() {
        // A 28-byte holder like `host-1-worker-12345-6f1d2c3b`: 44 bytes,
        // jemalloc's 48-byte class (a 24-byte header made it 64).
        let holder = b"host-1-worker-12345-6f1d2c3b";
        let r = Reservation::with_renewals(holder, (1 << 53) - 1, NOW, 5);
        assert_eq!(r.view().heap_size(), 16 + holder.len());
        assert_eq!(r.token(), (1 << 53) - 1);
        // Each field past its packed range goes wide, and reads back.
        let edges: [(u64, i64, u64, usize); 6] = [
            (1 << 53, NOW, 0, 5),
            (7, -1, 0, 5),
            (7, 1 << 43, 0, 5),
            (7, NOW, 1 << 21, 5),
            (7, NOW, 0, 256),
            (7, (1 << 43) - 1, (1 << 21) - 1, 255),
        ];
        for (i, (token, acquired, renewals, len)) in edges.into_iter().enumerate() {
            let holder = vec![b'h'; len];
            let r = Reservation::with_delay(&holder, token, acquired, renewals, 9);
            let packed = i == 5;
            let expected = 16 + if packed { 0 } else { 24 } + 4 + len;
            assert_eq!(r.view().heap_size(), expected, "case {i}");
            assert_eq!(
                (r.token(), r.acquired_at_ms(), r.renewals(), r.delay_ms()),
                (token, acquired, renewals, 9),
                "case {i}"
            );
            assert_eq!(r.holder(), &holder[..]);
        }
    }

    #[test]
    fn renewals_past_the_packed_range_need_a_new_value() {
        let r = Reservation::with_renewals(b"w", 3, NOW, (1 << 21) - 2);
        let raw = NonNull::new(r.into_raw()).unwrap();
        // SAFETY: raw came from into_raw; no other reference is live.
        let view = unsafe { ReservationRef::from_raw(raw) };
        // SAFETY: as above.
        assert!(unsafe { view.increment_renewals() });
        assert_eq!(view.renewals(), (1 << 21) - 1);
        // SAFETY: as above.
        assert!(!unsafe { view.increment_renewals() }, "full: rebuild");
        assert_eq!(view.renewals(), (1 << 21) - 1, "unchanged");
        let next = renewed(view);
        assert_eq!(
            (next.renewals(), next.token(), next.holder()),
            (1 << 21, 3, &b"w"[..])
        );
        assert_eq!(next.view().heap_size(), 16 + 24 + 1);
        // SAFETY: taking ownership back exactly once.
        drop(unsafe { Reservation::from_raw(raw) });
    }

    mod properties {
        use super::super::*;
        use crate::engine::tokens::TokenIssuer;
        use proptest::prelude::*;

        fn near_edges() -> impl Strategy<Value = u64> {
            prop_oneof![
                any::<u64>(),
                0u64..4,
                ((1u64 << 21) - 3)..((1u64 << 21) + 3),
                ((1u64 << 43) - 3)..((1u64 << 43) + 3),
                ((1u64 << 53) - 3)..((1u64 << 53) + 3),
                (u64::MAX - 3)..=u64::MAX,
            ]
        }

        proptest! {
            /// Whatever the fields, packed or wide, they read back exactly
            /// (renewals saturating at u32::MAX), and a renewal in place or
            /// by rebuilding counts one.
            #[test]
            fn storage_round_trips_every_field(
                token in near_edges(),
                acquired in near_edges(),
                renewals in near_edges(),
                len in prop_oneof![0usize..3, 250usize..260, 0usize..64],
                delay in prop_oneof![Just(0u32), any::<u32>()],
            ) {
                let holder: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let r = Reservation::with_delay(&holder, token, acquired as i64, renewals, delay);
                let saturated = renewals.min(u64::from(u32::MAX));
                prop_assert_eq!(r.holder(), &holder[..]);
                prop_assert_eq!(r.token(), token);
                prop_assert_eq!(r.acquired_at_ms(), acquired as i64);
                prop_assert_eq!(r.renewals(), saturated);
                prop_assert_eq!(r.delay_ms(), delay);
                let copy = r.clone();
                let raw = NonNull::new(r.into_raw()).unwrap();
                // SAFETY: raw came from into_raw; no other reference.
                let view = unsafe { ReservationRef::from_raw(raw) };
                // SAFETY: as above.
                let after = if unsafe { view.increment_renewals() } {
                    view.to_owned()
                } else {
                    renewed(view)
                };
                prop_assert_eq!(after.renewals(), (saturated + 1).min(u64::from(u32::MAX)));
                prop_assert_eq!((after.token(), after.holder()), (copy.token(), copy.holder()));
                prop_assert_eq!(after.delay_ms(), delay);
                // SAFETY: taking ownership back exactly once.
                drop(unsafe { Reservation::from_raw(raw) });
            }
        }

        #[derive(Debug, Clone)]
        enum Op {
            Lock(u8),
            Renew(u8, Option<bool>),
            Release(u8, Option<bool>),
            Delete,
            Legacy(u8),
            ClockStep(i64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..4).prop_map(Op::Lock),
                (0u8..4, proptest::option::of(any::<bool>())).prop_map(|(h, t)| Op::Renew(h, t)),
                (0u8..4, proptest::option::of(any::<bool>())).prop_map(|(h, t)| Op::Release(h, t)),
                Just(Op::Delete),
                (0u8..4).prop_map(Op::Legacy),
                (-5_000i64..5_000).prop_map(Op::ClockStep),
            ]
        }

        /// What a key holds in this simulation of the glue.
        enum Slot {
            Free,
            Held(Reservation),
            Legacy(Vec<u8>),
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

            /// Drives one key through random operations the way the glue
            /// does, and checks the contract: every grant gets a token
            /// above all earlier ones even when the clock steps back; a
            /// re-acquire keeps the token; only the holder (with the
            /// right token) renews or releases; old libraries' strings
            /// are never granted over.
            #[test]
            fn one_key_keeps_the_contract(ops in proptest::collection::vec(op(), 1..120)) {
                let mut issuer = TokenIssuer::default();
                let mut now = 1_800_000_000_000i64;
                let mut slot = Slot::Free;
                let mut highest = 0u64;
                for op in ops {
                    let holder_of = |h: u8| vec![b'w', h];
                    match op {
                        Op::Lock(h) => {
                            let holder = holder_of(h);
                            let current = match &slot {
                                Slot::Free => Current::Free,
                                Slot::Held(r) => Current::Held(r.view()),
                                Slot::Legacy(v) => Current::Legacy(v),
                            };
                            match decide_lock(current, &holder, false) {
                                LockDecision::Grant => {
                                    prop_assert!(matches!(slot, Slot::Free));
                                    let t = issuer.issue(now).unwrap();
                                    prop_assert!(t > highest);
                                    highest = t;
                                    slot = Slot::Held(Reservation::new(&holder, t, now));
                                }
                                LockDecision::Reacquire { token } => {
                                    let Slot::Held(r) = &slot else { panic!("reacquire of a free key") };
                                    prop_assert_eq!(r.holder(), &holder[..]);
                                    prop_assert_eq!(token, r.token());
                                }
                                LockDecision::Held => {
                                    let other = match &slot {
                                        Slot::Held(r) => r.holder() != &holder[..],
                                        Slot::Legacy(_) => true,
                                        Slot::Free => false,
                                    };
                                    prop_assert!(other);
                                }
                                LockDecision::HandOffFirst => prop_assert!(false, "no waiters here"),
                            }
                        }
                        Op::Renew(h, token_right) | Op::Release(h, token_right) => {
                            let holder = holder_of(h);
                            let token = match (&slot, token_right) {
                                (Slot::Held(r), Some(true)) => Some(r.token()),
                                (Slot::Held(r), Some(false)) => Some(r.token() + 1),
                                (_, Some(_)) => Some(1),
                                (_, None) => None,
                            };
                            let current = match &slot {
                                Slot::Free => Current::Free,
                                Slot::Held(r) => Current::Held(r.view()),
                                Slot::Legacy(v) => Current::Legacy(v),
                            };
                            let decision = decide_owner(current, &holder, token);
                            let expected = match &slot {
                                Slot::Held(r) if r.holder() == &holder[..] && token_right != Some(false) => OwnerDecision::Owner,
                                Slot::Legacy(v) if v == &holder && token.is_none() => OwnerDecision::LegacyOwner,
                                _ => OwnerDecision::NotOwner,
                            };
                            prop_assert_eq!(&decision, &expected);
                            if decision != OwnerDecision::NotOwner {
                                if matches!(op, Op::Release(..)) {
                                    slot = Slot::Free;
                                } else if let Slot::Held(r) = &slot {
                                    let before = r.renewals();
                                    let r2 = renewed(r.view());
                                    prop_assert_eq!(r2.renewals(), before + 1);
                                    prop_assert_eq!(r2.token(), r.token());
                                    slot = Slot::Held(r2);
                                }
                            }
                        }
                        Op::Delete => slot = Slot::Free,
                        Op::Legacy(h) => slot = Slot::Legacy(holder_of(h)),
                        Op::ClockStep(ms) => now += ms,
                    }
                }
            }
        }
    }
}
