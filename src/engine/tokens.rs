//! Fencing tokens: strictly increasing per server, never repeated, ordered
//! across servers whose clocks agree, and within the range a JavaScript
//! client reads exactly (SPEC section 5).

/// The highest token this module issues or accepts: 2^53 - 1, the largest
/// integer a JavaScript client (an IEEE double) reads exactly.
pub const MAX_TOKEN: u64 = (1 << 53) - 1;

/// Whether `token` may name a grant: 1..=MAX_TOKEN. A token from outside
/// (RDB, RESTORE, replication, AOF) beyond that range is refused, never
/// adopted: one forged value must not push the counter to its ceiling.
pub fn is_valid_token(token: u64) -> bool {
    (1..=MAX_TOKEN).contains(&token)
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
    secs.checked_shl(20).unwrap_or(u64::MAX).min(MAX_TOKEN)
}

/// The counter reached [`MAX_TOKEN`]: no further grant can get a token
/// that is both new and exact for every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokensExhausted;

impl TokenIssuer {
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next token at wall-clock time `unix_ms`, or `TokensExhausted`
    /// (the counter is left as it was) rather than a repeated or
    /// out-of-range token.
    pub fn issue(&mut self, unix_ms: i64) -> Result<u64, TokensExhausted> {
        let next = self.last.saturating_add(1).max(clock_floor(unix_ms));
        if next > MAX_TOKEN {
            return Err(TokensExhausted);
        }
        self.last = next;
        Ok(next)
    }

    /// Raise `last` to a token seen elsewhere (RDB, AOF, replication,
    /// `RESTORE`), so no later grant here can repeat or undercut it. The
    /// caller has checked it with [`is_valid_token`]; anything above the
    /// range is clamped so the counter can never leave it.
    pub fn observe(&mut self, token: u64) {
        self.last = self.last.max(token.min(MAX_TOKEN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn tokens_follow_the_clock_and_never_repeat() {
        let mut issuer = TokenIssuer::default();
        let first = issuer.issue(NOW).unwrap();
        assert_eq!(first, ((NOW / 1000) as u64) << 20);
        let second = issuer.issue(NOW).unwrap();
        assert_eq!(second, first + 1);
        // A clock that steps back never lowers tokens.
        let third = issuer.issue(NOW - 3_600_000).unwrap();
        assert_eq!(third, second + 1);
        // A later second jumps ahead to the clock floor.
        let fourth = issuer.issue(NOW + 1000).unwrap();
        assert_eq!(fourth, ((NOW / 1000 + 1) as u64) << 20);
        assert!(fourth < 1 << 53);
    }

    #[test]
    fn observed_tokens_raise_the_floor() {
        let mut issuer = TokenIssuer::default();
        issuer.observe(1 << 52);
        let t = issuer.issue(NOW).unwrap();
        assert_eq!(t, (1 << 52) + 1);
        issuer.observe(5);
        assert_eq!(issuer.last(), t);
    }

    #[test]
    fn clock_floor_is_sane_at_the_edges() {
        assert_eq!(clock_floor(-5), 0);
        assert_eq!(clock_floor(0), 0);
        assert_eq!(clock_floor(i64::MAX), MAX_TOKEN);
    }

    #[test]
    fn the_counter_fails_loudly_at_its_ceiling() {
        let mut issuer = TokenIssuer::default();
        issuer.observe(MAX_TOKEN - 1);
        assert_eq!(issuer.issue(NOW), Ok(MAX_TOKEN));
        assert_eq!(issuer.issue(NOW), Err(TokensExhausted), "never repeats");
        assert_eq!(issuer.last(), MAX_TOKEN, "left as it was");
        // Nothing observed can push it past the range.
        issuer.observe(u64::MAX);
        assert_eq!(issuer.last(), MAX_TOKEN);
        // A clock past the year 2200 does not make tokens leave it either.
        let mut late = TokenIssuer::default();
        assert_eq!(late.issue(i64::MAX), Ok(MAX_TOKEN));
        assert_eq!(late.issue(i64::MAX), Err(TokensExhausted));
    }

    #[test]
    fn valid_tokens_are_1_to_2_pow_53_minus_1() {
        assert!(!is_valid_token(0));
        assert!(is_valid_token(1));
        assert!(is_valid_token(MAX_TOKEN));
        for forged in [1 << 53, 1 << 62, 1 << 63, u64::MAX - 1, u64::MAX] {
            assert!(!is_valid_token(forged), "{forged}");
        }
    }
}
