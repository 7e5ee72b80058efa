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

use crate::engine::grants::GrantSet;

/// The fixed part of a stored reservation; the holder's bytes follow it in
/// the same allocation. One allocation per reservation (instead of a box
/// plus a holder buffer) is what keeps a held lock close to the size of the
/// plain `SET key value EX` it replaces.
#[repr(C)]
struct Header {
    token: u64,
    acquired_at_ms: i64,
    /// Saturates at u32::MAX: four billion renewals of one grant.
    renewals: u32,
    /// The holder's length; its top bit ([`HAS_DELAY`]) says a lock-delay
    /// (u32 ms) sits between the header and the holder. A mutex without
    /// one pays nothing for the feature.
    holder_len: u32,
}

const HEADER_SIZE: usize = std::mem::size_of::<Header>();
const HAS_DELAY: u32 = 1 << 31;
const DELAY_SIZE: usize = std::mem::size_of::<u32>();
/// Holders are far shorter (`HOLDER_LEN_CAP`); the flag bit must stay free.
const MAX_STORED_HOLDER: usize = (HAS_DELAY - 1) as usize;

fn layout_for(holder_len: usize, has_delay: bool) -> Layout {
    let extra = if has_delay { DELAY_SIZE } else { 0 };
    // Holders are bounded by `max-holder-len` (at most 1 MiB), far below
    // isize::MAX, so this layout always exists.
    Layout::from_size_align(
        HEADER_SIZE + extra + holder_len,
        std::mem::align_of::<Header>(),
    )
    .unwrap_or_else(|_| Layout::new::<Header>())
}

/// One held reservation, owned: the value of a key of the module's type.
/// It is a single thin pointer so Redis can store it as the key's value.
pub struct Reservation {
    ptr: NonNull<Header>,
}

// SAFETY: a Reservation owns its allocation exclusively; nothing in it is
// tied to a thread (Redis may free values on a background thread).
unsafe impl Send for Reservation {}

/// A borrowed view of a stored reservation (in a key, or owned above).
#[derive(Clone, Copy)]
pub struct ReservationRef<'a> {
    ptr: NonNull<Header>,
    _borrow: PhantomData<&'a Header>,
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
        let holder = &holder[..holder.len().min(MAX_STORED_HOLDER)];
        let has_delay = delay_ms > 0;
        let holder_len = holder.len() as u32 | if has_delay { HAS_DELAY } else { 0 };
        let layout = layout_for(holder.len(), has_delay);
        // SAFETY: the layout is non-zero-sized (it holds the header).
        let raw = unsafe { alloc::alloc(layout) }.cast::<Header>();
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        // SAFETY: `ptr` points to a fresh allocation of HEADER_SIZE +
        // holder.len() bytes, aligned for Header.
        unsafe {
            ptr.as_ptr().write(Header {
                token,
                acquired_at_ms,
                renewals: u32::try_from(renewals).unwrap_or(u32::MAX),
                holder_len,
            });
            let mut bytes = ptr.as_ptr().cast::<u8>().add(HEADER_SIZE);
            if has_delay {
                bytes
                    .cast::<[u8; DELAY_SIZE]>()
                    .write(delay_ms.to_ne_bytes());
                bytes = bytes.add(DELAY_SIZE);
            }
            std::ptr::copy_nonoverlapping(holder.as_ptr(), bytes, holder.len());
        }
        Reservation { ptr }
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
        let layout = layout_for(view.holder().len(), view.delay_ms() > 0);
        // SAFETY: allocated in `with_renewals` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
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

    fn header(&self) -> &'a Header {
        // SAFETY: the pointer is live for 'a (type invariant).
        unsafe { self.ptr.as_ref() }
    }

    fn has_delay(self) -> bool {
        self.header().holder_len & HAS_DELAY != 0
    }

    pub fn holder(self) -> &'a [u8] {
        let len = (self.header().holder_len & !HAS_DELAY) as usize;
        let at = HEADER_SIZE + if self.has_delay() { DELAY_SIZE } else { 0 };
        // SAFETY: `len` bytes of holder follow the header (and the delay,
        // when flagged) in the same allocation, initialised in
        // `with_delay`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>().add(at), len) }
    }

    /// The lock-delay that follows this grant's expiry; 0 for none.
    pub fn delay_ms(self) -> u32 {
        if !self.has_delay() {
            return 0;
        }
        // SAFETY: a flagged allocation holds the delay right after the
        // header, written in `with_delay` (read unaligned: the header's
        // alignment covers it, but nothing needs more than bytes).
        let bytes = unsafe {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .add(HEADER_SIZE)
                .cast::<[u8; DELAY_SIZE]>()
                .read()
        };
        u32::from_ne_bytes(bytes)
    }

    /// When the grant itself ends, given the key's Redis expiry (which
    /// runs on through the delay).
    pub fn grant_end(self, key_expire_ms: i64) -> i64 {
        key_expire_ms.saturating_sub(i64::from(self.delay_ms()))
    }

    /// Whether the grant has ended and the key only waits out its delay.
    /// A key is live while `now <= expire` (Redis's rule), and so is the
    /// grant while `now <= grant_end`.
    pub fn in_delay(self, key_expire_ms: Option<i64>, now_ms: i64) -> bool {
        self.delay_ms() > 0 && key_expire_ms.is_some_and(|e| now_ms > self.grant_end(e))
    }
    pub fn token(self) -> u64 {
        self.header().token
    }
    pub fn acquired_at_ms(self) -> i64 {
        self.header().acquired_at_ms
    }
    pub fn renewals(self) -> u64 {
        u64::from(self.header().renewals)
    }

    /// Bytes this value occupies on the heap, for `MEMORY USAGE`.
    pub fn heap_size(self) -> usize {
        HEADER_SIZE + self.holder().len() + if self.has_delay() { DELAY_SIZE } else { 0 }
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

    /// Counts one renewal in place.
    ///
    /// # Safety
    /// No other reference into this reservation may be live, and the
    /// pointer must allow writes (it came from `into_raw`).
    pub unsafe fn increment_renewals(self) {
        let header = self.ptr.as_ptr();
        // SAFETY: per the contract above.
        unsafe { (*header).renewals = (*header).renewals.saturating_add(1) };
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
        assert!(!delayed.view().in_delay(None, NOW + 9_999));
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
            unsafe { view.increment_renewals() };
            assert_eq!(view.renewals(), 8);
            // SAFETY: taking ownership back exactly once.
            drop(unsafe { Reservation::from_raw(raw) });
        }
        let huge = Reservation::with_renewals(b"h", 1, 1, u64::MAX);
        assert_eq!(huge.renewals(), u64::from(u32::MAX), "saturates");
    }

    mod properties {
        use super::super::*;
        use crate::engine::tokens::TokenIssuer;
        use proptest::prelude::*;

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
