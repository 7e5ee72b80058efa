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
    holder_len: u32,
}

const HEADER_SIZE: usize = std::mem::size_of::<Header>();

fn layout_for(holder_len: usize) -> Layout {
    // Holders are bounded by `max-holder-len` (at most 1 MiB), far below
    // isize::MAX, so this layout always exists.
    Layout::from_size_align(HEADER_SIZE + holder_len, std::mem::align_of::<Header>())
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
        let holder_len = u32::try_from(holder.len()).unwrap_or(u32::MAX);
        let holder = &holder[..holder_len as usize];
        let layout = layout_for(holder.len());
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
            let bytes = ptr.as_ptr().cast::<u8>().add(HEADER_SIZE);
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
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let layout = layout_for(self.view().holder().len());
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

    pub fn holder(self) -> &'a [u8] {
        let len = self.header().holder_len as usize;
        // SAFETY: `len` bytes of holder follow the header in the same
        // allocation, initialised in `with_renewals`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>().add(HEADER_SIZE), len) }
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
        HEADER_SIZE + self.holder().len()
    }

    /// Holder and token both match (the token only when one is given).
    pub fn is_held_by(self, holder: &[u8], token: Option<u64>) -> bool {
        self.holder() == holder && token.is_none_or(|t| t == self.token())
    }

    pub fn to_owned(self) -> Reservation {
        Reservation::with_renewals(
            self.holder(),
            self.token(),
            self.acquired_at_ms(),
            self.renewals(),
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
    }
}

impl fmt::Debug for ReservationRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("holder", &String::from_utf8_lossy(self.holder()))
            .field("token", &self.token())
            .field("acquired_at_ms", &self.acquired_at_ms())
            .field("renewals", &self.renewals())
            .finish()
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
        Current::Held(_) | Current::Legacy(_) | Current::Grants(_) => LockDecision::Held,
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
        Current::Free | Current::Legacy(_) => false,
    }
}

/// A renewed copy of `r` (renewal count + 1); the caller sets the expiry.
pub fn renewed(r: ReservationRef<'_>) -> Reservation {
    Reservation::with_renewals(
        r.holder(),
        r.token(),
        r.acquired_at_ms(),
        r.renewals().saturating_add(1),
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
        });
        assert!(holds_live(Current::Grants(&set), b"r", 7, NOW + 9));
        assert!(
            !holds_live(Current::Grants(&set), b"r", 7, NOW + 10),
            "expired"
        );
        assert!(!holds_live(Current::Grants(&set), b"r", 8, NOW));
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
