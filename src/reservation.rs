//! The reservation state machine, as plain Rust with no Redis in it.
//!
//! A reservation is what one key of the module's type holds: who holds it,
//! the fencing token of that grant, when it was acquired and how often it
//! was renewed. Its deadline is the key's own Redis expiry, so it is not
//! stored here. The functions below look at what a key currently holds and
//! return a decision; the glue in `commands.rs` carries it out (writes the
//! key, sets the expiry, replicates, replies). Unit tests drive them with a
//! fake clock.

/// One held reservation: the value of a key of the module's data type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub holder: Box<[u8]>,
    pub token: u64,
    pub acquired_at_ms: i64,
    pub renewals: u64,
}

impl Reservation {
    pub fn new(holder: &[u8], token: u64, acquired_at_ms: i64) -> Self {
        Reservation {
            holder: holder.into(),
            token,
            acquired_at_ms,
            renewals: 0,
        }
    }

    /// Bytes this value occupies on the heap, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.holder.len()
    }

    /// Holder and token both match (the token only when one is given).
    pub fn is_held_by(&self, holder: &[u8], token: Option<u64>) -> bool {
        &*self.holder == holder && token.is_none_or(|t| t == self.token)
    }
}

/// What a key holds, as far as reservations are concerned.
#[derive(Debug, Clone, Copy)]
pub enum Current<'a> {
    /// No key, so no reservation.
    Free,
    /// A key of the module's type.
    Held(&'a Reservation),
    /// A plain string written by one of the old client-side libraries: its
    /// value is the holder (SPEC section 7).
    Legacy(&'a [u8]),
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
        Current::Held(r) if &*r.holder == holder => LockDecision::Reacquire { token: r.token },
        Current::Held(_) | Current::Legacy(_) => LockDecision::Held,
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

/// A renewed copy of `r` (renewal count + 1); the caller sets the expiry.
pub fn renewed(r: &Reservation) -> Reservation {
    Reservation {
        renewals: r.renewals.saturating_add(1),
        ..r.clone()
    }
}

/// Issues fencing tokens: strictly increasing per server, never repeated,
/// and ordered across servers whose clocks agree (SPEC section 5):
/// `token = max(last + 1, unix_seconds << 20)`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenIssuer {
    last: u64,
}

/// The clock part of a token: `unix_seconds << 20` leaves room for about a
/// million grants per second before the counter part runs ahead of the
/// clock, and stays below 2^53 until past the year 2200.
pub fn clock_floor(unix_ms: i64) -> u64 {
    let secs = u64::try_from(unix_ms / 1000).unwrap_or(0);
    secs.checked_shl(20).unwrap_or(u64::MAX).min(1 << 53)
}

impl TokenIssuer {
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next token at wall-clock time `unix_ms`.
    pub fn issue(&mut self, unix_ms: i64) -> u64 {
        let next = self.last.saturating_add(1).max(clock_floor(unix_ms));
        self.last = next;
        next
    }

    /// Raise `last` to a token seen elsewhere (RDB, AOF, replication,
    /// `RESTORE`), so no later grant here can repeat or undercut it.
    pub fn observe(&mut self, token: u64) {
        self.last = self.last.max(token);
    }
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
            decide_lock(Current::Held(&r), b"w1", true),
            LockDecision::Reacquire { token: 42 }
        );
        assert_eq!(
            decide_lock(Current::Held(&r), b"w2", false),
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
            decide_owner(Current::Held(&r), b"w1", None),
            OwnerDecision::Owner
        );
        assert_eq!(
            decide_owner(Current::Held(&r), b"w1", Some(42)),
            OwnerDecision::Owner
        );
        assert_eq!(
            decide_owner(Current::Held(&r), b"w1", Some(41)),
            OwnerDecision::NotOwner
        );
        assert_eq!(
            decide_owner(Current::Held(&r), b"w2", None),
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
    fn renewal_counts_and_keeps_identity() {
        let r = Reservation::new(b"w1", 42, NOW);
        let r2 = renewed(&renewed(&r));
        assert_eq!(r2.renewals, 2);
        assert_eq!(r2.token, 42);
        assert_eq!(r2.acquired_at_ms, NOW);
    }

    #[test]
    fn tokens_follow_the_clock_and_never_repeat() {
        let mut issuer = TokenIssuer::default();
        let first = issuer.issue(NOW);
        assert_eq!(first, ((NOW / 1000) as u64) << 20);
        let second = issuer.issue(NOW);
        assert_eq!(second, first + 1);
        // A clock that steps back never lowers tokens.
        let third = issuer.issue(NOW - 3_600_000);
        assert_eq!(third, second + 1);
        // A later second jumps ahead to the clock floor.
        let fourth = issuer.issue(NOW + 1000);
        assert_eq!(fourth, ((NOW / 1000 + 1) as u64) << 20);
        assert!(fourth < 1 << 53);
    }

    #[test]
    fn observed_tokens_raise_the_floor() {
        let mut issuer = TokenIssuer::default();
        issuer.observe(u64::from(u32::MAX) << 22);
        let t = issuer.issue(NOW);
        assert_eq!(t, (u64::from(u32::MAX) << 22) + 1);
        issuer.observe(5);
        assert_eq!(issuer.last(), t);
    }

    #[test]
    fn clock_floor_is_sane_at_the_edges() {
        assert_eq!(clock_floor(-5), 0);
        assert_eq!(clock_floor(0), 0);
        assert_eq!(clock_floor(i64::MAX), 1 << 53);
        let mut issuer = TokenIssuer::default();
        issuer.observe(u64::MAX);
        assert_eq!(issuer.issue(NOW), u64::MAX, "saturates rather than wraps");
    }
}
