//! The grant engine: what a key holds when it is more than one exclusive
//! grant (shared grants, a semaphore's permits), and the one rule that
//! decides who is granted after any change.
//!
//! A key holds a set of grants, each with its own holder, fencing token,
//! mode, permits and expiry; its wait queue holds requests ([`Ask`]). After
//! anything changes (a release, an expiry, a deletion, a raised limit, a
//! downgrade) the glue asks [`admit`] how many queued requests, oldest
//! first, are granted now: FIFO, head of line, no barging. The exclusive
//! mutex is the special case of one exclusive grant and is stored inline
//! (see `reservation.rs`); only [`Occupancy`] is shared with it, so a
//! mutex pays for nothing here.
//!
//! Plain Rust, no Redis: unit tests drive it with a fake clock.

use crate::engine::tokens::is_valid_token;

/// The largest renewal count a stored grant keeps (it saturates there);
/// a loaded or replicated count above it is refused rather than altered.
pub const MAX_RENEWALS: u64 = u32::MAX as u64;

/// Exclusive grants coexist with nothing; shared grants with each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

/// What a LOCK or WAIT asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    pub mode: Mode,
    /// Permits this grant takes: 1 unless `PERMITS k` (exclusive: 1).
    pub permits: u32,
    /// `LIMIT n`: the key's limit from now on (latest wins).
    pub limit: Option<u32>,
}

impl Ask {
    /// A plain LOCK/WAIT: the mutex.
    pub const EXCLUSIVE: Ask = Ask {
        mode: Mode::Exclusive,
        permits: 1,
        limit: None,
    };

    pub fn is_exclusive(&self) -> bool {
        self.mode == Mode::Exclusive
    }
}

/// How much of a key is taken: all that deciding whether a request fits
/// needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub exclusive: bool,
    pub grants: usize,
    pub permits_used: u64,
    /// The key's limit; 0 when it has none.
    pub limit: u32,
}

impl Occupancy {
    /// A key with one exclusive grant (a mutex or an old library's lock).
    pub const EXCLUSIVE: Occupancy = Occupancy {
        exclusive: true,
        grants: 1,
        permits_used: 1,
        limit: 0,
    };

    /// Whether `ask` fits beside what is held (SPEC section 9, rule 2). A
    /// request with `LIMIT` is checked against its own limit, which
    /// becomes the key's when it is granted.
    pub fn fits(&self, ask: &Ask) -> bool {
        match ask.mode {
            Mode::Exclusive => self.grants == 0,
            Mode::Shared => {
                let limit = ask.limit.unwrap_or(self.limit);
                !self.exclusive
                    && (limit == 0
                        || self.permits_used + u64::from(ask.permits) <= u64::from(limit))
            }
        }
    }

    /// The occupancy once `ask` is granted.
    pub fn with(mut self, ask: &Ask) -> Occupancy {
        self.grants += 1;
        self.permits_used += u64::from(ask.permits);
        self.exclusive |= ask.is_exclusive();
        if let Some(limit) = ask.limit {
            self.limit = limit;
        }
        self
    }

    /// The occupancy without one grant of `mode` taking `permits`.
    pub fn without(mut self, mode: Mode, permits: u32) -> Occupancy {
        self.grants = self.grants.saturating_sub(1);
        self.permits_used = self.permits_used.saturating_sub(u64::from(permits));
        if mode == Mode::Exclusive {
            self.exclusive = false;
        }
        self
    }
}

/// The admission rule (SPEC section 9, rule 3): given what the key holds
/// and its queue oldest first, how many requests from the head are granted
/// now. The first that does not fit stops the queue, so a writer queued
/// behind readers is never passed, and readers queued behind a writer are
/// granted together when it goes. `max_grants` bounds the grants per key.
pub fn admit(
    occupancy: Occupancy,
    queue: impl IntoIterator<Item = Ask>,
    max_grants: usize,
) -> usize {
    let mut occupancy = occupancy;
    let mut granted = 0;
    for ask in queue {
        if occupancy.grants >= max_grants || !occupancy.fits(&ask) {
            break;
        }
        occupancy = occupancy.with(&ask);
        granted += 1;
    }
    granted
}

/// The grant a holder already has on the key, as far as deciding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mine {
    pub token: u64,
    pub mode: Mode,
    pub permits: u32,
}

/// What a LOCK or WAIT does (SPEC section 9, rules 3 and 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// A new grant with a new token.
    Grant,
    /// The holder's grant has this mode and permits: TTL refreshed, same
    /// token.
    Reacquire { token: u64 },
    /// The holder's grant changes mode or permits now, with a new token.
    Change,
    /// The holder's change needs more than fits now: LOCK answers 0 (its
    /// grant unchanged), WAIT an error (a change is never queued).
    ChangeRefused,
    /// Waiters are queued and the head would fit (the key was freed
    /// earlier in the same MULTI or script): admit them, then decide again.
    AdmitFirst,
    /// Does not fit, or waiters are queued: LOCK answers 0, WAIT queues.
    Held,
    /// The key already has `max-holders` grants.
    TooManyHolders,
}

/// Decides a LOCK or WAIT on a key that holds `occupancy` (including
/// `mine`, the caller's own grant) with a queue that is empty or not and
/// whose head fits or not.
pub fn decide_acquire(
    occupancy: Occupancy,
    mine: Option<Mine>,
    ask: Ask,
    queued: bool,
    head_fits: bool,
    max_grants: usize,
) -> Acquire {
    if let Some(mine) = mine {
        if mine.mode == ask.mode && mine.permits == ask.permits {
            return Acquire::Reacquire { token: mine.token };
        }
        let needs_more = match (mine.mode, ask.mode) {
            (Mode::Exclusive, _) => false,
            (Mode::Shared, Mode::Exclusive) => true,
            (Mode::Shared, Mode::Shared) => ask.permits > mine.permits,
        };
        let others = occupancy.without(mine.mode, mine.permits);
        return if !needs_more || (!queued && others.fits(&ask)) {
            Acquire::Change
        } else {
            Acquire::ChangeRefused
        };
    }
    if queued {
        return if head_fits {
            Acquire::AdmitFirst
        } else {
            Acquire::Held
        };
    }
    if !occupancy.fits(&ask) {
        Acquire::Held
    } else if occupancy.grants >= max_grants {
        Acquire::TooManyHolders
    } else {
        Acquire::Grant
    }
}

/// One grant of a key held in shared or counted mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub holder: Box<[u8]>,
    pub token: u64,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
    pub renewals: u32,
    pub mode: Mode,
    pub permits: u32,
    /// The lock-delay that follows this grant's expiry if that leaves the
    /// key with no grant (SPEC section 12); 0 for none.
    pub delay_ms: u32,
}

impl Grant {
    /// When the lock-delay after this grant's expiry ends (its expiry when
    /// it has none).
    pub fn delay_end(&self) -> i64 {
        self.expires_at_ms.saturating_add(i64::from(self.delay_ms))
    }
}

/// The grants of a key that is more than one exclusive grant, oldest
/// (lowest token) first, with the key's limit. Counts are kept alongside
/// so deciding never walks the grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantSet {
    limit: u32,
    grants: Vec<Grant>,
    permits_used: u64,
    exclusive: usize,
}

impl GrantSet {
    pub fn new(limit: u32) -> GrantSet {
        GrantSet {
            limit,
            ..GrantSet::default()
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            exclusive: self.exclusive > 0,
            grants: self.grants.len(),
            permits_used: self.permits_used,
            limit: self.limit,
        }
    }

    /// The holder's grant, if any (one per holder).
    pub fn find(&self, holder: &[u8]) -> Option<&Grant> {
        self.grants.iter().find(|g| &*g.holder == holder)
    }

    pub fn find_mut(&mut self, holder: &[u8]) -> Option<&mut Grant> {
        self.grants.iter_mut().find(|g| &*g.holder == holder)
    }

    /// Adds a grant (its token is the newest, so it goes last), replacing
    /// the holder's previous one.
    pub fn insert(&mut self, grant: Grant) {
        self.remove(&grant.holder);
        self.count(&grant, true);
        let at = self.grants.partition_point(|g| g.token < grant.token);
        self.grants.insert(at, grant);
    }

    /// Removes the holder's grant.
    pub fn remove(&mut self, holder: &[u8]) -> Option<Grant> {
        let at = self.grants.iter().position(|g| &*g.holder == holder)?;
        let grant = self.grants.remove(at);
        self.count(&grant, false);
        Some(grant)
    }

    /// Removes every grant whose expiry is at or before `now` (a grant
    /// ends at its expiry instant); returns them.
    pub fn remove_expired(&mut self, now_ms: i64) -> Vec<Grant> {
        if self.grants.iter().all(|g| g.expires_at_ms > now_ms) {
            return Vec::new();
        }
        let (expired, live): (Vec<Grant>, Vec<Grant>) = std::mem::take(&mut self.grants)
            .into_iter()
            .partition(|g| g.expires_at_ms <= now_ms);
        self.grants = live;
        for g in &expired {
            self.count(g, false);
        }
        expired
    }

    /// The earliest and the latest grant expiry.
    pub fn deadlines(&self) -> Option<(i64, i64)> {
        let first = self.grants.iter().map(|g| g.expires_at_ms).min()?;
        let last = self.grants.iter().map(|g| g.expires_at_ms).max()?;
        Some((first, last))
    }

    /// The key's Redis expiry: no grant outlives it, nor the delay that
    /// follows the last grants' expiry (see `delay_after`).
    pub fn key_expiry(&self) -> Option<i64> {
        let last = self.grants.iter().map(|g| g.expires_at_ms).max()?;
        self.grants
            .iter()
            .filter(|g| g.expires_at_ms == last)
            .map(Grant::delay_end)
            .max()
    }

    /// The single exclusive grant with no limit, which is stored as a
    /// plain mutex instead.
    pub fn as_plain_mutex(&self) -> Option<&Grant> {
        match self.grants.as_slice() {
            [only] if only.mode == Mode::Exclusive && self.limit == 0 => Some(only),
            _ => None,
        }
    }

    fn count(&mut self, grant: &Grant, add: bool) {
        let permits = u64::from(grant.permits);
        let exclusive = usize::from(grant.mode == Mode::Exclusive);
        if add {
            self.permits_used += permits;
            self.exclusive += exclusive;
        } else {
            self.permits_used = self.permits_used.saturating_sub(permits);
            self.exclusive = self.exclusive.saturating_sub(exclusive);
        }
    }

    /// Heap bytes beyond the set itself, for `MEMORY USAGE`.
    pub fn heap_size(&self) -> usize {
        self.grants.capacity() * std::mem::size_of::<Grant>()
            + self.grants.iter().map(|g| g.holder.len()).sum::<usize>()
    }

    // ----- the encoding shared by RDB, DUMP/RESTORE and propagation -----

    /// The grant whose expiry leaves the key with no grant, and so decides
    /// its lock-delay, once every grant has expired: of the grants that
    /// expired last (at the same instant), the one whose delay ends last
    /// (the newest on a tie), with the instant its delay ends; None when
    /// that instant is not after `now`. A grant that expired while another
    /// was still held left the key held, so its delay never applies, however
    /// late the expiries are processed.
    pub fn delay_after(expired: &[Grant], now_ms: i64) -> Option<(&Grant, i64)> {
        let last = expired.iter().map(|g| g.expires_at_ms).max()?;
        expired
            .iter()
            .filter(|g| g.expires_at_ms == last && g.delay_ms > 0)
            .map(|g| (g, g.delay_end()))
            .filter(|&(_, until)| until > now_ms)
            .max_by_key(|&(g, until)| (until, g.token))
    }

    /// One byte string: version, limit, count, then each grant. Little
    /// endian, fixed-width fields, the holder last in each grant. Version
    /// 2 added each grant's delay; version 1 (no delay) still decodes.
    pub fn encode(&self) -> Vec<u8> {
        let size = 9 + self
            .grants
            .iter()
            .map(|g| GRANT_FIXED + g.holder.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.push(ENCODING);
        out.extend_from_slice(&self.limit.to_le_bytes());
        out.extend_from_slice(&(self.grants.len() as u32).to_le_bytes());
        for g in &self.grants {
            out.extend_from_slice(&g.token.to_le_bytes());
            out.extend_from_slice(&g.acquired_at_ms.to_le_bytes());
            out.extend_from_slice(&g.expires_at_ms.to_le_bytes());
            out.extend_from_slice(&g.renewals.to_le_bytes());
            out.push(match g.mode {
                Mode::Exclusive => 0,
                Mode::Shared => 1,
            });
            out.extend_from_slice(&g.permits.to_le_bytes());
            out.extend_from_slice(&g.delay_ms.to_le_bytes());
            out.extend_from_slice(&(g.holder.len() as u32).to_le_bytes());
            out.extend_from_slice(&g.holder);
        }
        out
    }

    /// Parses [`GrantSet::encode`]'s output, refusing anything this module
    /// would never have written: tokens outside 1..2^53-1, empty or
    /// over-long holders, two grants of one holder, an exclusive grant
    /// beside another, permits over the limit, trailing bytes.
    pub fn decode(bytes: &[u8], max_holder_len: usize) -> Result<GrantSet, DecodeError> {
        let mut r = Reader { bytes };
        let version = r.u8()?;
        let fixed = match version {
            ENCODING_V1 => GRANT_FIXED - 4,
            ENCODING => GRANT_FIXED,
            _ => return Err(DecodeError),
        };
        let limit = r.u32()?;
        let count = r.u32()? as usize;
        // Each grant takes at least `fixed` bytes and a holder byte: a
        // count beyond what the input can hold is a lie, not an allocation
        // to make.
        if count == 0 || count > bytes.len() / (fixed + 1) {
            return Err(DecodeError);
        }
        let mut set = GrantSet::new(limit);
        set.grants.reserve_exact(count);
        for _ in 0..count {
            let token = r.u64()?;
            let acquired_at_ms = r.u64()? as i64;
            let expires_at_ms = r.u64()? as i64;
            let renewals = r.u32()?;
            let mode = match r.u8()? {
                0 => Mode::Exclusive,
                1 => Mode::Shared,
                _ => return Err(DecodeError),
            };
            let permits = r.u32()?;
            let delay_ms = if version == ENCODING { r.u32()? } else { 0 };
            let holder_len = r.u32()? as usize;
            if holder_len == 0 || holder_len > max_holder_len {
                return Err(DecodeError);
            }
            let holder: Box<[u8]> = r.take(holder_len)?.into();
            if !is_valid_token(token)
                || u64::from(renewals) > MAX_RENEWALS
                || permits == 0
                || u64::from(delay_ms) > crate::engine::args::MAX_DELAY_MS
                || (mode == Mode::Exclusive && permits != 1)
                || set.find(&holder).is_some()
                || set.grants.last().is_some_and(|g| g.token >= token)
            {
                return Err(DecodeError);
            }
            let grant = Grant {
                holder,
                token,
                acquired_at_ms,
                expires_at_ms,
                renewals,
                mode,
                permits,
                delay_ms,
            };
            set.count(&grant, true);
            set.grants.push(grant);
        }
        let occupancy = set.occupancy();
        let exclusive_alone = set.exclusive == 0 || (set.exclusive == 1 && set.len() == 1);
        if !r.bytes.is_empty()
            || !exclusive_alone
            || (occupancy.limit > 0 && occupancy.permits_used > u64::from(occupancy.limit))
        {
            return Err(DecodeError);
        }
        Ok(set)
    }
}

const ENCODING_V1: u8 = 1;
const ENCODING: u8 = 2;
/// A grant's encoded bytes besides its holder.
const GRANT_FIXED: usize = 41;

/// An encoded grant set this module would not have written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError;

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn shared(permits: u32) -> Ask {
        Ask {
            mode: Mode::Shared,
            permits,
            limit: None,
        }
    }

    fn limited(permits: u32, limit: u32) -> Ask {
        Ask {
            mode: Mode::Shared,
            permits,
            limit: Some(limit),
        }
    }

    fn grant(holder: &str, token: u64, mode: Mode, permits: u32, expires: i64) -> Grant {
        Grant {
            holder: holder.as_bytes().into(),
            token,
            acquired_at_ms: NOW,
            expires_at_ms: expires,
            renewals: 0,
            mode,
            permits,
            delay_ms: 0,
        }
    }

    #[test]
    fn the_last_grants_to_expire_leave_the_latest_delay() {
        let mut a = grant("a", 10, Mode::Shared, 1, NOW + 100);
        a.delay_ms = 1_000;
        let mut b = grant("b", 11, Mode::Shared, 1, NOW + 200);
        b.delay_ms = 500;
        let c = grant("c", 12, Mode::Shared, 1, NOW + 300);
        // c expired last, with no delay: a and b expired while c was held.
        let expired = [a.clone(), b.clone(), c.clone()];
        assert!(GrantSet::delay_after(&expired, NOW + 300).is_none());
        // Without c, b expired last: its delay holds the key, whatever a's.
        let expired = [a.clone(), b.clone()];
        let (g, until) = GrantSet::delay_after(&expired, NOW + 300).unwrap();
        assert_eq!((g.token, until), (11, NOW + 700));
        assert!(GrantSet::delay_after(&expired, NOW + 700).is_none(), "over");
        // Expiring together, the delay that ends last wins.
        let mut a2 = a.clone();
        a2.expires_at_ms = NOW + 200;
        let together = [a2, b.clone()];
        let (g, until) = GrantSet::delay_after(&together, NOW + 300).unwrap();
        assert_eq!((g.token, until), (10, NOW + 1_200));
        assert!(GrantSet::delay_after(&[c], NOW + 300).is_none(), "no delay");
        let mut set = GrantSet::new(0);
        set.insert(a);
        set.insert(b);
        assert_eq!(set.key_expiry(), Some(NOW + 700), "a's delay never applies");
    }

    #[test]
    fn version_1_encodings_still_decode_with_no_delay() {
        let mut set = GrantSet::new(3);
        let mut g = grant("reader", 77, Mode::Shared, 2, NOW + 50);
        g.delay_ms = 250;
        set.insert(g);
        let v2 = set.encode();
        assert_eq!(GrantSet::decode(&v2, 100), Ok(set.clone()));
        // Version 1 is version 2 without the four delay bytes.
        let mut v1 = v2.clone();
        v1[0] = ENCODING_V1;
        let holder_at = v1.len() - b"reader".len() - 4;
        v1.drain(holder_at - 4..holder_at);
        let old = GrantSet::decode(&v1, 100).unwrap();
        assert_eq!(old.grants()[0].delay_ms, 0);
        assert_eq!(old.grants()[0].token, 77);
        // A delay beyond the maximum is refused.
        let mut bad = v2.clone();
        bad[holder_at..holder_at + 4].copy_from_slice(&3_600_001u32.to_le_bytes());
        assert_eq!(GrantSet::decode(&bad, 100), Err(DecodeError));
    }

    #[test]
    fn what_fits() {
        let free = Occupancy::default();
        assert!(free.fits(&Ask::EXCLUSIVE));
        assert!(free.fits(&shared(1)));
        assert!(!Occupancy::EXCLUSIVE.fits(&shared(1)));
        assert!(!Occupancy::EXCLUSIVE.fits(&Ask::EXCLUSIVE));
        let readers = free.with(&shared(1)).with(&shared(1));
        assert!(readers.fits(&shared(1)));
        assert!(!readers.fits(&Ask::EXCLUSIVE));
        let sem = free.with(&limited(2, 3));
        assert_eq!(sem.limit, 3);
        assert!(
            sem.fits(&shared(1)),
            "SHARED without LIMIT counts one permit"
        );
        assert!(!sem.fits(&limited(2, 3)));
        assert!(sem.fits(&limited(2, 4)), "checked against its own limit");
    }

    #[test]
    fn admission_is_fifo_head_of_line() {
        let free = Occupancy::default();
        // Readers queued behind a writer wait for it, then go together.
        let queue = [Ask::EXCLUSIVE, shared(1), shared(1)];
        assert_eq!(admit(free, queue, 100), 1);
        let readers = [shared(1), shared(1), Ask::EXCLUSIVE, shared(1)];
        assert_eq!(admit(free, readers, 100), 2, "the writer stops the queue");
        // A reader behind the writer is not granted beside the readers.
        let held = free.with(&shared(1));
        assert_eq!(admit(held, [Ask::EXCLUSIVE, shared(1)], 100), 0);
        // A semaphore grants while permits last, in order: a big request
        // at the head is not passed by a small one behind it.
        let sem = free.with(&limited(3, 4));
        assert_eq!(admit(sem, [limited(2, 4), shared(1)], 100), 0);
        assert_eq!(admit(sem, [shared(1), limited(2, 4)], 100), 1);
        // The grant count bound stops admission too.
        assert_eq!(admit(free, [shared(1), shared(1), shared(1)], 2), 2);
    }

    #[test]
    fn a_raised_limit_admits_the_waiters_that_now_fit() {
        let mut set = GrantSet::new(2);
        set.insert(grant("a", 10, Mode::Shared, 1, NOW + 100));
        set.insert(grant("b", 11, Mode::Shared, 1, NOW + 100));
        let queue = [shared(1), shared(1), shared(1)];
        assert_eq!(admit(set.occupancy(), queue, 100), 0);
        set.set_limit(4);
        assert_eq!(admit(set.occupancy(), queue, 100), 2);
        // Lowering revokes nothing: the grants stay, nothing new fits.
        set.set_limit(1);
        assert_eq!(set.len(), 2);
        assert_eq!(admit(set.occupancy(), queue, 100), 0);
    }

    #[test]
    fn acquire_decisions() {
        let free = Occupancy::default();
        let mine_shared = Mine {
            token: 7,
            mode: Mode::Shared,
            permits: 1,
        };
        let readers = free.with(&shared(1)).with(&shared(1));
        // New grants.
        assert_eq!(
            decide_acquire(free, None, Ask::EXCLUSIVE, false, false, 9),
            Acquire::Grant
        );
        assert_eq!(
            decide_acquire(readers, None, shared(1), false, false, 9),
            Acquire::Grant
        );
        assert_eq!(
            decide_acquire(readers, None, Ask::EXCLUSIVE, false, false, 9),
            Acquire::Held
        );
        assert_eq!(
            decide_acquire(readers, None, shared(1), false, false, 2),
            Acquire::TooManyHolders
        );
        // No barging: waiters queued keep a fitting newcomer out.
        assert_eq!(
            decide_acquire(readers, None, shared(1), true, false, 9),
            Acquire::Held
        );
        assert_eq!(
            decide_acquire(free, None, shared(1), true, true, 9),
            Acquire::AdmitFirst
        );
        // Re-acquire: same mode and permits.
        assert_eq!(
            decide_acquire(readers, Some(mine_shared), shared(1), true, false, 9),
            Acquire::Reacquire { token: 7 }
        );
        // Upgrade: only when it fits beside the others and nobody waits.
        assert_eq!(
            decide_acquire(readers, Some(mine_shared), Ask::EXCLUSIVE, false, false, 9),
            Acquire::ChangeRefused
        );
        let alone = free.with(&shared(1));
        assert_eq!(
            decide_acquire(alone, Some(mine_shared), Ask::EXCLUSIVE, false, false, 9),
            Acquire::Change
        );
        assert_eq!(
            decide_acquire(alone, Some(mine_shared), Ask::EXCLUSIVE, true, false, 9),
            Acquire::ChangeRefused
        );
        // Downgrade: at once, whoever waits.
        let mine_exclusive = Mine {
            token: 8,
            mode: Mode::Exclusive,
            permits: 1,
        };
        assert_eq!(
            decide_acquire(
                Occupancy::EXCLUSIVE,
                Some(mine_exclusive),
                shared(1),
                true,
                false,
                9
            ),
            Acquire::Change
        );
        // Fewer permits at once; more only when they fit.
        let sem = free.with(&limited(3, 4));
        let mine3 = Mine {
            token: 9,
            mode: Mode::Shared,
            permits: 3,
        };
        assert_eq!(
            decide_acquire(sem, Some(mine3), limited(1, 4), true, false, 9),
            Acquire::Change
        );
        assert_eq!(
            decide_acquire(sem, Some(mine3), limited(4, 4), false, false, 9),
            Acquire::Change
        );
        assert_eq!(
            decide_acquire(sem, Some(mine3), limited(5, 4), false, false, 9),
            Acquire::ChangeRefused
        );
    }

    #[test]
    fn grants_expire_each_at_its_own_time() {
        let mut set = GrantSet::new(0);
        set.insert(grant("a", 10, Mode::Shared, 1, NOW + 100));
        set.insert(grant("b", 11, Mode::Shared, 1, NOW + 300));
        set.insert(grant("c", 12, Mode::Shared, 1, NOW + 200));
        assert_eq!(set.deadlines(), Some((NOW + 100, NOW + 300)));
        assert!(set.remove_expired(NOW + 99).is_empty());
        let gone = set.remove_expired(NOW + 200);
        assert_eq!(
            gone.iter().map(|g| g.token).collect::<Vec<_>>(),
            vec![10, 12]
        );
        assert_eq!(set.occupancy().permits_used, 1);
        assert_eq!(set.deadlines(), Some((NOW + 300, NOW + 300)));
        assert_eq!(set.remove_expired(NOW + 300).len(), 1);
        assert!(set.is_empty());
        assert_eq!(set.occupancy(), Occupancy::default());
    }

    #[test]
    fn one_grant_per_holder_oldest_first() {
        let mut set = GrantSet::new(5);
        set.insert(grant("a", 10, Mode::Shared, 2, NOW));
        set.insert(grant("b", 11, Mode::Shared, 1, NOW));
        // A change replaces a's grant with a newer one.
        set.insert(grant("a", 12, Mode::Shared, 1, NOW));
        assert_eq!(set.len(), 2);
        assert_eq!(set.grants()[0].holder.as_ref(), b"b");
        assert_eq!(set.occupancy().permits_used, 2);
        assert!(set.as_plain_mutex().is_none());
        set.remove(b"b");
        assert!(set.as_plain_mutex().is_none(), "shared, with a limit");
        let mut mutex = GrantSet::new(0);
        mutex.insert(grant("w", 1, Mode::Exclusive, 1, NOW));
        assert!(mutex.as_plain_mutex().is_some());
    }

    #[test]
    fn encoding_round_trips_and_refuses_what_it_never_writes() {
        let mut set = GrantSet::new(4);
        set.insert(grant("a", 10, Mode::Shared, 2, NOW + 5));
        set.insert(grant("bb", 11, Mode::Shared, 1, NOW + 9));
        let bytes = set.encode();
        assert_eq!(GrantSet::decode(&bytes, 512), Ok(set.clone()));
        // Every truncation is refused.
        for n in 0..bytes.len() {
            assert_eq!(GrantSet::decode(&bytes[..n], 512), Err(DecodeError), "{n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(GrantSet::decode(&longer, 512), Err(DecodeError));
        let bad = |f: &dyn Fn(&mut GrantSet)| {
            let mut s = set.clone();
            f(&mut s);
            GrantSet::decode(&s.encode(), 512)
        };
        assert_eq!(bad(&|s| s.grants[0].token = 1 << 53), Err(DecodeError));
        assert_eq!(bad(&|s| s.grants[1].token = 10), Err(DecodeError), "order");
        assert_eq!(
            bad(&|s| s.grants[1].holder = b"a"[..].into()),
            Err(DecodeError)
        );
        assert_eq!(
            bad(&|s| s.grants[1].holder = b""[..].into()),
            Err(DecodeError)
        );
        assert_eq!(bad(&|s| s.grants[0].permits = 0), Err(DecodeError));
        assert_eq!(bad(&|s| s.limit = 2), Err(DecodeError), "over the limit");
        assert_eq!(
            bad(&|s| s.grants[0].mode = Mode::Exclusive),
            Err(DecodeError)
        );
        assert_eq!(GrantSet::decode(&bytes, 1), Err(DecodeError), "holder cap");
        assert_eq!(
            GrantSet::decode(&GrantSet::new(3).encode(), 512),
            Err(DecodeError),
            "empty"
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn ask() -> impl Strategy<Value = Ask> {
            prop_oneof![
                Just(Ask::EXCLUSIVE),
                (1u32..4).prop_map(|p| Ask {
                    mode: Mode::Shared,
                    permits: p,
                    limit: None
                }),
                (1u32..4, 1u32..6).prop_map(|(p, l)| Ask {
                    mode: Mode::Shared,
                    permits: p.min(l),
                    limit: Some(l)
                }),
            ]
        }

        proptest! {
            /// Whatever is queued, admission never grants two exclusive
            /// grants or an exclusive beside a shared one, never more
            /// permits than the limit in force, and only a prefix.
            #[test]
            fn admission_keeps_the_invariants(queue in proptest::collection::vec(ask(), 0..30)) {
                let n = admit(Occupancy::default(), queue.iter().copied(), 1000);
                let mut occ = Occupancy::default();
                for a in &queue[..n] {
                    prop_assert!(occ.fits(a));
                    occ = occ.with(a);
                    if occ.exclusive { prop_assert_eq!(occ.grants, 1); }
                    if occ.limit > 0 {
                        prop_assert!(occ.permits_used <= u64::from(occ.limit));
                    }
                }
                if let Some(next) = queue.get(n) {
                    prop_assert!(!occ.fits(next), "stopped at one that fits");
                }
            }

            /// The decoder never panics on any bytes.
            #[test]
            fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = GrantSet::decode(&bytes, 64);
            }
        }
    }
}
