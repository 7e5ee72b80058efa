//! Argument parsing for every `RESERVE.*` command, as plain Rust.
//!
//! Each parser turns raw client bytes into a typed value or an
//! [`ArgError`]; the glue maps that error to the exact reply text. Nothing
//! here can panic on any input (a property test at the bottom checks it),
//! because a panic inside a module takes the whole server down.

use crate::engine::grants::{Ask, Mode};

/// Largest wait timeout accepted: 100 years. Anything larger is almost
/// certainly a unit mistake, and keeping it far below `i64::MAX` keeps
/// `now + timeout` from overflowing.
pub const MAX_TIMEOUT_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Largest lock-delay accepted (`DELAY ms`, `reservation.lock-delay`): an
/// hour. Chubby and Consul use seconds to a minute; more than an hour of a
/// key granted to no one is a unit mistake, not a drain time.
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// The hard bound on a holder's length (the most `max-holder-len` can be
/// set to). Commands that only name an existing holder (RENEW, RELEASE) and
/// loaded values check this, not the current setting: lowering the setting
/// must not strand a holder that was accepted before.
pub const HOLDER_LEN_CAP: usize = 1 << 20;

/// What a client got wrong. The reply text lives in `errors.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgError {
    Ttl,
    Timeout,
    Holder,
    Token,
    Limit,
    Permits,
    Delay,
    TooManyKeys,
    DuplicateKey,
    Syntax,
    WrongArity,
}

/// Parses seconds written in plain decimal notation (`30`, `0.25`, `.5`,
/// `1.`) into milliseconds, rounding a sub-millisecond remainder up the way
/// `BLPOP` does. Signs, exponents, `inf`, `nan`, spaces and any trailing
/// byte are rejected: `None`.
pub fn parse_seconds_as_ms(input: &[u8]) -> Option<u64> {
    // 20 integer digits already overflow u64 milliseconds; a cap on the
    // length keeps the loop bounded whatever the client sends.
    if input.is_empty() || input.len() > 64 {
        return None;
    }
    let (int_part, frac_part) = match input.iter().position(|&b| b == b'.') {
        Some(dot) => (&input[..dot], Some(&input[dot + 1..])),
        None => (input, None),
    };
    let frac_part = frac_part.unwrap_or(&[]);
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.iter().chain(frac_part).all(u8::is_ascii_digit) {
        return None;
    }
    let mut ms: u64 = 0;
    for &digit in int_part {
        ms = ms.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
    }
    ms = ms.checked_mul(1000)?;
    let mut scale = 100;
    let mut round_up = false;
    for &digit in frac_part {
        let d = u64::from(digit - b'0');
        if scale > 0 {
            ms = ms.checked_add(d * scale)?;
            scale /= 10;
        } else if d != 0 {
            round_up = true;
        }
    }
    if round_up {
        ms = ms.checked_add(1)?;
    }
    Some(ms)
}

/// A reservation TTL: more than zero, at most `max_ttl_ms`.
pub fn parse_ttl(input: &[u8], max_ttl_ms: u64) -> Result<u64, ArgError> {
    match parse_seconds_as_ms(input) {
        Some(ms) if ms > 0 && ms <= max_ttl_ms => Ok(ms),
        _ => Err(ArgError::Ttl),
    }
}

/// A wait timeout: `0` means forever (`None`), otherwise milliseconds.
pub fn parse_timeout(input: &[u8]) -> Result<Option<u64>, ArgError> {
    match parse_seconds_as_ms(input) {
        Some(0) => Ok(None),
        Some(ms) if ms <= MAX_TIMEOUT_MS => Ok(Some(ms)),
        _ => Err(ArgError::Timeout),
    }
}

/// A holder identity: non-empty, at most `max_len` bytes, any bytes.
pub fn parse_holder(input: &[u8], max_len: usize) -> Result<&[u8], ArgError> {
    if input.is_empty() || input.len() > max_len {
        Err(ArgError::Holder)
    } else {
        Ok(input)
    }
}

/// A fencing token as a client writes it: a decimal u64 of at least 1.
pub fn parse_token(input: &[u8]) -> Result<u64, ArgError> {
    if input.is_empty() || input.len() > 20 || !input.iter().all(u8::is_ascii_digit) {
        return Err(ArgError::Token);
    }
    let mut value: u64 = 0;
    for &digit in input {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit - b'0')))
            .ok_or(ArgError::Token)?;
    }
    if value == 0 {
        return Err(ArgError::Token);
    }
    Ok(value)
}

/// The optional `TOKEN t` tail of RENEW and RELEASE. `rest` is whatever
/// follows the fixed arguments; anything but nothing or one `TOKEN t` (a
/// missing value, a repeat, an unknown word) is a syntax error, as for
/// Redis's own options.
pub fn parse_token_option(rest: &[&[u8]]) -> Result<Option<u64>, ArgError> {
    match rest {
        [] => Ok(None),
        [name, value] if name.eq_ignore_ascii_case(b"TOKEN") => parse_token(value).map(Some),
        _ => Err(ArgError::Syntax),
    }
}

/// A token in the range a grant can have, 1..=2^53-1: from a trusted
/// source (the replication stream or the AOF), so a forged or corrupt value
/// can neither be adopted nor exhaust the counter, and as the token an
/// OBSERVE last saw.
pub fn parse_stored_token(input: &[u8]) -> Result<u64, ArgError> {
    let token = parse_token(input)?;
    if crate::engine::tokens::is_valid_token(token) {
        Ok(token)
    } else {
        Err(ArgError::Token)
    }
}

/// Typed arguments of `RESERVE.LOCK key holder ttl [SHARED] [LIMIT n]
/// [PERMITS k] [DELAY ms]`.
#[derive(Debug, PartialEq, Eq)]
pub struct LockArgs<'a> {
    pub key: &'a [u8],
    pub holder: &'a [u8],
    pub ttl_ms: u64,
    pub ask: Ask,
    /// `DELAY ms`; None: the `reservation.lock-delay` setting applies.
    pub delay_ms: Option<u32>,
}

/// A lock-delay in plain decimal milliseconds, 0 to `MAX_DELAY_MS`.
pub fn parse_delay(input: &[u8]) -> Result<u32, ArgError> {
    parse_u32_in(input, 0, MAX_DELAY_MS as u32).ok_or(ArgError::Delay)
}

/// A count option's value: a plain decimal from 1 to `max`.
fn parse_count(input: &[u8], max: u32) -> Option<u32> {
    parse_u32_in(input, 1, max)
}

/// A plain decimal (digits only, at most ten) from `min` to `max`.
fn parse_u32_in(input: &[u8], min: u32, max: u32) -> Option<u32> {
    if input.is_empty() || input.len() > 10 || !input.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(input).ok()?.parse().ok()?;
    u32::try_from(n).ok().filter(|&n| n >= min && n <= max)
}

/// What LOCK and WAIT ask for, without the lock-delay.
pub fn parse_ask(rest: &[&[u8]], max_holders: u32) -> Result<Ask, ArgError> {
    parse_lock_options(rest, max_holders).map(|(ask, _)| ask)
}

/// The options of LOCK and WAIT, in any order, case-insensitive, each at
/// most once: `SHARED`, `LIMIT n` (implies SHARED), `PERMITS k` (only with
/// LIMIT, at most n), `DELAY ms`. No option at all is the exclusive mutex
/// with the configured delay.
pub fn parse_lock_options(
    rest: &[&[u8]],
    max_holders: u32,
) -> Result<(Ask, Option<u32>), ArgError> {
    if rest.is_empty() {
        return Ok((Ask::EXCLUSIVE, None));
    }
    let (mut shared, mut limit, mut permits, mut delay) = (false, None, None, None);
    let mut i = 0;
    while i < rest.len() {
        let name = rest[i];
        let value = rest.get(i + 1);
        if name.eq_ignore_ascii_case(b"SHARED") && !shared {
            shared = true;
            i += 1;
        } else if name.eq_ignore_ascii_case(b"LIMIT") && limit.is_none() {
            let value = value.ok_or(ArgError::Syntax)?;
            limit = Some(parse_count(value, max_holders).ok_or(ArgError::Limit)?);
            i += 2;
        } else if name.eq_ignore_ascii_case(b"PERMITS") && permits.is_none() {
            let value = value.ok_or(ArgError::Syntax)?;
            permits = Some(parse_count(value, u32::MAX).ok_or(ArgError::Permits)?);
            i += 2;
        } else if name.eq_ignore_ascii_case(b"DELAY") && delay.is_none() {
            let value = value.ok_or(ArgError::Syntax)?;
            delay = Some(parse_delay(value)?);
            i += 2;
        } else {
            return Err(ArgError::Syntax);
        }
    }
    let permits = match (permits, limit) {
        (None, _) => 1,
        (Some(k), Some(n)) if k <= n => k,
        (Some(_), _) => return Err(ArgError::Permits),
    };
    let ask = if shared || limit.is_some() {
        Ask {
            mode: Mode::Shared,
            permits,
            limit,
        }
    } else {
        Ask::EXCLUSIVE
    };
    Ok((ask, delay))
}

/// Typed arguments of `RESERVE.RENEW key holder ttl [TOKEN t]`.
#[derive(Debug, PartialEq, Eq)]
pub struct RenewArgs<'a> {
    pub key: &'a [u8],
    pub holder: &'a [u8],
    pub ttl_ms: u64,
    pub token: Option<u64>,
}

/// Typed arguments of `RESERVE.RELEASE key holder [TOKEN t]`.
#[derive(Debug, PartialEq, Eq)]
pub struct ReleaseArgs<'a> {
    pub key: &'a [u8],
    pub holder: &'a [u8],
    pub token: Option<u64>,
}

/// Typed arguments of `RESERVE.WAIT key holder ttl timeout [options]`.
#[derive(Debug, PartialEq, Eq)]
pub struct WaitArgs<'a> {
    pub lock: LockArgs<'a>,
    pub timeout_ms: Option<u64>,
}

/// Limits that come from the module configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_ttl_ms: u64,
    pub max_holder_len: usize,
    /// Grants per key, and the largest `LIMIT`.
    pub max_holders: u32,
}

// `argv` below always includes the command name at index 0, as Redis hands
// it over. Redis has already checked the declared arity; the variable-arity
// commands check the rest here.

// LOCK and WAIT may create a new holder, whose length the caller checks
// against `Limits::max_holder_len` unless it is a re-acquire; here only the
// hard cap applies.

pub fn parse_lock<'a>(argv: &[&'a [u8]], limits: Limits) -> Result<LockArgs<'a>, ArgError> {
    let [_, key, holder, ttl, rest @ ..] = argv else {
        return Err(ArgError::WrongArity);
    };
    let holder = parse_holder(holder, HOLDER_LEN_CAP)?;
    let ttl_ms = parse_ttl(ttl, limits.max_ttl_ms)?;
    let (ask, delay_ms) = parse_lock_options(rest, limits.max_holders)?;
    Ok(LockArgs {
        key,
        holder,
        ttl_ms,
        ask,
        delay_ms,
    })
}

pub fn parse_renew<'a>(argv: &[&'a [u8]], limits: Limits) -> Result<RenewArgs<'a>, ArgError> {
    let [_, key, holder, ttl, rest @ ..] = argv else {
        return Err(ArgError::WrongArity);
    };
    let token = parse_token_option(rest)?;
    Ok(RenewArgs {
        key,
        holder: parse_holder(holder, HOLDER_LEN_CAP)?,
        ttl_ms: parse_ttl(ttl, limits.max_ttl_ms)?,
        token,
    })
}

pub fn parse_release<'a>(argv: &[&'a [u8]]) -> Result<ReleaseArgs<'a>, ArgError> {
    let [_, key, holder, rest @ ..] = argv else {
        return Err(ArgError::WrongArity);
    };
    let token = parse_token_option(rest)?;
    Ok(ReleaseArgs {
        key,
        holder: parse_holder(holder, HOLDER_LEN_CAP)?,
        token,
    })
}

pub fn parse_wait<'a>(argv: &[&'a [u8]], limits: Limits) -> Result<WaitArgs<'a>, ArgError> {
    let [_, key, holder, ttl, timeout, rest @ ..] = argv else {
        return Err(ArgError::WrongArity);
    };
    // Checked in argument order, so the first bad one names the error.
    let holder = parse_holder(holder, HOLDER_LEN_CAP)?;
    let ttl_ms = parse_ttl(ttl, limits.max_ttl_ms)?;
    let timeout_ms = parse_timeout(timeout)?;
    let (ask, delay_ms) = parse_lock_options(rest, limits.max_holders)?;
    Ok(WaitArgs {
        lock: LockArgs {
            key,
            holder,
            ttl_ms,
            ask,
            delay_ms,
        },
        timeout_ms,
    })
}

/// Typed arguments of `RESERVE.OBSERVE key token timeout`.
#[derive(Debug, PartialEq, Eq)]
pub struct ObserveArgs<'a> {
    pub key: &'a [u8],
    /// The token last seen; 0 for "no grant".
    pub seen: u64,
    /// None: as long as it takes.
    pub timeout_ms: Option<u64>,
}

pub fn parse_observe<'a>(argv: &[&'a [u8]]) -> Result<ObserveArgs<'a>, ArgError> {
    let [_, key, token, timeout] = argv else {
        return Err(ArgError::WrongArity);
    };
    let seen = match token {
        [b'0'] => 0,
        _ => parse_stored_token(token)?,
    };
    Ok(ObserveArgs {
        key,
        seen,
        timeout_ms: parse_timeout(timeout)?,
    })
}

/// The most keys one RESERVE.LOCKALL takes.
pub const MAX_KEYS: usize = 1000;

/// Typed arguments of `RESERVE.LOCKALL holder ttl key [key ...]`.
#[derive(Debug, PartialEq, Eq)]
pub struct LockAllArgs<'a> {
    pub holder: &'a [u8],
    pub ttl_ms: u64,
    pub keys: &'a [&'a [u8]],
}

pub fn parse_lock_all<'a>(
    argv: &'a [&'a [u8]],
    limits: Limits,
) -> Result<LockAllArgs<'a>, ArgError> {
    let [_, holder, ttl, keys @ ..] = argv else {
        return Err(ArgError::WrongArity);
    };
    check_keys(keys)?;
    Ok(LockAllArgs {
        holder: parse_holder(holder, HOLDER_LEN_CAP)?,
        ttl_ms: parse_ttl(ttl, limits.max_ttl_ms)?,
        keys,
    })
}

/// Typed arguments of `RESERVE.WAITALL holder ttl timeout key [key ...]`.
#[derive(Debug, PartialEq, Eq)]
pub struct WaitAllArgs<'a> {
    pub all: LockAllArgs<'a>,
    pub timeout_ms: Option<u64>,
}

pub fn parse_wait_all<'a>(
    argv: &'a [&'a [u8]],
    limits: Limits,
) -> Result<WaitAllArgs<'a>, ArgError> {
    let [_, holder, ttl, timeout, keys @ ..] = argv else {
        return Err(ArgError::WrongArity);
    };
    check_keys(keys)?;
    Ok(WaitAllArgs {
        all: LockAllArgs {
            holder: parse_holder(holder, HOLDER_LEN_CAP)?,
            ttl_ms: parse_ttl(ttl, limits.max_ttl_ms)?,
            keys,
        },
        timeout_ms: parse_timeout(timeout)?,
    })
}

/// At least one key, at most MAX_KEYS, none twice.
fn check_keys(keys: &[&[u8]]) -> Result<(), ArgError> {
    if keys.is_empty() {
        return Err(ArgError::WrongArity);
    }
    if keys.len() > MAX_KEYS {
        return Err(ArgError::TooManyKeys);
    }
    let mut sorted: Vec<&[u8]> = keys.to_vec();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(ArgError::DuplicateKey);
    }
    Ok(())
}

/// Typed arguments of `RESERVE.GUARD key holder token command [arg ...]`.
#[derive(Debug, PartialEq, Eq)]
pub struct GuardArgs<'a> {
    pub key: &'a [u8],
    pub holder: &'a [u8],
    pub token: u64,
    /// The command to run and its arguments (at least the name).
    pub command: &'a [&'a [u8]],
}

pub fn parse_guard<'a>(argv: &'a [&'a [u8]]) -> Result<GuardArgs<'a>, ArgError> {
    let [_, key, holder, token, command @ ..] = argv else {
        return Err(ArgError::WrongArity);
    };
    if command.is_empty() {
        return Err(ArgError::WrongArity);
    }
    Ok(GuardArgs {
        key,
        holder: parse_holder(holder, HOLDER_LEN_CAP)?,
        token: parse_token(token)?,
        command,
    })
}

/// Typed arguments of the internal `RESERVE.SETSTATE key holder token
/// acquired_at_ms renewals expire_at_ms` used for replication and AOF.
/// `expire_at_ms` 0 means "no expiry set by this command" (AOF rewrite,
/// where Redis appends the key's PEXPIREAT itself).
#[derive(Debug, PartialEq, Eq)]
pub struct SetStateArgs<'a> {
    pub key: &'a [u8],
    pub holder: &'a [u8],
    pub token: u64,
    pub acquired_at_ms: i64,
    pub renewals: u64,
    pub expire_at_ms: Option<i64>,
    /// The grant's lock-delay (an optional last argument; 0 when absent,
    /// as in an AOF written before lock-delay existed).
    pub delay_ms: u32,
}

/// The internal `RESERVE.TOKENFLOOR token`: raise the token counter.
pub fn parse_token_floor(argv: &[&[u8]]) -> Result<u64, ArgError> {
    let [_, token] = argv else {
        return Err(ArgError::WrongArity);
    };
    parse_stored_token(token)
}

fn parse_i64(input: &[u8]) -> Option<i64> {
    std::str::from_utf8(input).ok()?.parse().ok()
}

pub fn parse_set_state<'a>(argv: &[&'a [u8]]) -> Result<SetStateArgs<'a>, ArgError> {
    let (key, holder, token, acquired, renewals, expire, delay) = match argv {
        [_, key, holder, token, acquired, renewals, expire] => {
            (key, holder, token, acquired, renewals, expire, None)
        }
        [_, key, holder, token, acquired, renewals, expire, delay] => {
            (key, holder, token, acquired, renewals, expire, Some(delay))
        }
        _ => return Err(ArgError::WrongArity),
    };
    let delay_ms = match delay {
        Some(d) => parse_delay(d).map_err(|_| ArgError::Syntax)?,
        None => 0,
    };
    // Replicated state is bounded like a loaded value: a holder its holder
    // can renew and release, a token in range, a count the value can keep.
    let holder = parse_holder(holder, HOLDER_LEN_CAP)?;
    let token = parse_stored_token(token)?;
    let acquired_at_ms = parse_i64(acquired).ok_or(ArgError::Syntax)?;
    let renewals = std::str::from_utf8(renewals)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&n| n <= crate::engine::grants::MAX_RENEWALS)
        .ok_or(ArgError::Syntax)?;
    let expire_at_ms = match parse_i64(expire).ok_or(ArgError::Syntax)? {
        0 => None,
        t if t > 0 => Some(t),
        _ => return Err(ArgError::Syntax),
    };
    Ok(SetStateArgs {
        key,
        holder,
        token,
        acquired_at_ms,
        renewals,
        expire_at_ms,
        delay_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_ttl_ms: 2_592_000_000,
        max_holder_len: 512,
        max_holders: 100_000,
    };

    #[test]
    fn lock_all_arguments() {
        let argv: [&[u8]; 5] = [b"RESERVE.LOCKALL", b"h", b"30", b"a", b"b"];
        let a = parse_lock_all(&argv, LIMITS).unwrap();
        assert_eq!(
            (a.holder, a.ttl_ms, a.keys),
            (&b"h"[..], 30_000, &[&b"a"[..], b"b"][..])
        );
        let dup: [&[u8]; 6] = [b"X", b"h", b"30", b"a", b"b", b"a"];
        assert_eq!(parse_lock_all(&dup, LIMITS), Err(ArgError::DuplicateKey));
        let none: [&[u8]; 3] = [b"X", b"h", b"30"];
        assert_eq!(parse_lock_all(&none, LIMITS), Err(ArgError::WrongArity));
        let names: Vec<Vec<u8>> = (0..=MAX_KEYS).map(|i| i.to_string().into_bytes()).collect();
        let mut many: Vec<&[u8]> = vec![b"X", b"h", b"30"];
        many.extend(names.iter().map(Vec::as_slice));
        assert_eq!(parse_lock_all(&many, LIMITS), Err(ArgError::TooManyKeys));
        many.pop();
        assert_eq!(parse_lock_all(&many, LIMITS).unwrap().keys.len(), MAX_KEYS);
        let bad: [&[u8]; 4] = [b"X", b"h", b"0", b"a"];
        assert_eq!(parse_lock_all(&bad, LIMITS), Err(ArgError::Ttl));
        let wait: [&[u8]; 6] = [b"X", b"h", b"30", b"1.5", b"a", b"b"];
        let w = parse_wait_all(&wait, LIMITS).unwrap();
        assert_eq!((w.timeout_ms, w.all.keys.len()), (Some(1500), 2));
        let wait: [&[u8]; 4] = [b"X", b"h", b"30", b"0"];
        assert_eq!(parse_wait_all(&wait, LIMITS), Err(ArgError::WrongArity));
        let wait: [&[u8]; 5] = [b"X", b"h", b"30", b"-1", b"a"];
        assert_eq!(parse_wait_all(&wait, LIMITS), Err(ArgError::Timeout));
    }

    #[test]
    fn guard_arguments() {
        let argv: [&[u8]; 7] = [b"RESERVE.GUARD", b"k", b"h", b"42", b"SET", b"k", b"v"];
        let g = parse_guard(&argv).unwrap();
        assert_eq!((g.key, g.holder, g.token), (&b"k"[..], &b"h"[..], 42));
        assert_eq!(g.command, &[&b"SET"[..], b"k", b"v"]);
        let short: [&[u8]; 4] = [b"RESERVE.GUARD", b"k", b"h", b"42"];
        assert_eq!(parse_guard(&short), Err(ArgError::WrongArity));
        let bad: [&[u8]; 5] = [b"RESERVE.GUARD", b"k", b"h", b"0", b"GET"];
        assert_eq!(parse_guard(&bad), Err(ArgError::Token));
        let bad: [&[u8]; 5] = [b"RESERVE.GUARD", b"k", b"", b"1", b"GET"];
        assert_eq!(parse_guard(&bad), Err(ArgError::Holder));
    }

    #[test]
    fn lock_and_wait_options() {
        let ask = |rest: &[&[u8]]| parse_ask(rest, 100);
        assert_eq!(ask(&[]), Ok(Ask::EXCLUSIVE));
        let shared = Ask {
            mode: Mode::Shared,
            permits: 1,
            limit: None,
        };
        assert_eq!(ask(&[b"shared"]), Ok(shared));
        let sem = |permits, limit| Ask {
            mode: Mode::Shared,
            permits,
            limit: Some(limit),
        };
        assert_eq!(ask(&[b"LIMIT", b"5"]), Ok(sem(1, 5)));
        assert_eq!(
            ask(&[b"PERMITS", b"2", b"limit", b"5", b"SHARED"]),
            Ok(sem(2, 5))
        );
        assert_eq!(ask(&[b"LIMIT", b"100"]), Ok(sem(1, 100)));
        for (rest, e) in [
            (&[&b"LIMIT"[..], b"0"][..], ArgError::Limit),
            (&[b"LIMIT", b"101"], ArgError::Limit),
            (&[b"LIMIT", b"-1"], ArgError::Limit),
            (&[b"LIMIT", b"x"], ArgError::Limit),
            (&[b"LIMIT", b"99999999999999999999"], ArgError::Limit),
            (&[b"PERMITS", b"1"], ArgError::Permits),
            (&[b"SHARED", b"PERMITS", b"1"], ArgError::Permits),
            (&[b"LIMIT", b"3", b"PERMITS", b"4"], ArgError::Permits),
            (&[b"LIMIT", b"3", b"PERMITS", b"0"], ArgError::Permits),
            (&[b"LIMIT", b"3", b"PERMITS", b"1.5"], ArgError::Permits),
            (&[b"SHARED", b"SHARED"], ArgError::Syntax),
            (&[b"LIMIT", b"3", b"LIMIT", b"3"], ArgError::Syntax),
            (&[b"LIMIT"], ArgError::Syntax),
            (&[b"LIMIT", b"3", b"PERMITS"], ArgError::Syntax),
            (&[b"EXCLUSIVE"], ArgError::Syntax),
            (&[b"TOKEN", b"1"], ArgError::Syntax),
        ] {
            assert_eq!(ask(rest), Err(e), "{rest:?}");
        }
    }

    #[test]
    fn seconds_in_decimal_notation() {
        assert_eq!(parse_seconds_as_ms(b"30"), Some(30_000));
        assert_eq!(parse_seconds_as_ms(b"0.25"), Some(250));
        assert_eq!(parse_seconds_as_ms(b".5"), Some(500));
        assert_eq!(parse_seconds_as_ms(b"1."), Some(1000));
        assert_eq!(parse_seconds_as_ms(b"0.001"), Some(1));
        assert_eq!(
            parse_seconds_as_ms(b"0.0001"),
            Some(1),
            "rounds up like BLPOP"
        );
        assert_eq!(parse_seconds_as_ms(b"0.0010"), Some(1));
        assert_eq!(parse_seconds_as_ms(b"0"), Some(0));
        assert_eq!(parse_seconds_as_ms(b"007"), Some(7000));
    }

    #[test]
    fn hostile_seconds_are_rejected() {
        for bad in [
            &b""[..],
            b".",
            b"-1",
            b"+1",
            b"1e3",
            b"nan",
            b"NaN",
            b"inf",
            b"-inf",
            b"infinity",
            b"1 ",
            b" 1",
            b"1.5x",
            b"0x10",
            b"1..2",
            b"1.2.3",
            b"18446744073709551616",
            b"18446744073709551615",
            b"99999999999999999999999999999999",
            "١".as_bytes(),
            b"\xff\xfe",
            b"1\x00",
        ] {
            assert_eq!(parse_seconds_as_ms(bad), None, "{:?}", bad);
        }
        let huge = vec![b'9'; 10_000];
        assert_eq!(parse_seconds_as_ms(&huge), None);
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(parse_ttl(b"0", 10_000), Err(ArgError::Ttl));
        assert_eq!(parse_ttl(b"0.0", 10_000), Err(ArgError::Ttl));
        assert_eq!(parse_ttl(b"10", 10_000), Ok(10_000));
        assert_eq!(parse_ttl(b"10.001", 10_000), Err(ArgError::Ttl));
        assert_eq!(parse_ttl(b"-5", 10_000), Err(ArgError::Ttl));
    }

    #[test]
    fn timeout_zero_is_forever() {
        assert_eq!(parse_timeout(b"0"), Ok(None));
        assert_eq!(parse_timeout(b"0.000"), Ok(None));
        assert_eq!(parse_timeout(b"1.5"), Ok(Some(1500)));
        assert_eq!(parse_timeout(b"-1"), Err(ArgError::Timeout));
        assert_eq!(parse_timeout(b"inf"), Err(ArgError::Timeout));
        assert_eq!(parse_timeout(b"99999999999999"), Err(ArgError::Timeout));
    }

    #[test]
    fn holders() {
        assert_eq!(parse_holder(b"", 4), Err(ArgError::Holder));
        assert_eq!(parse_holder(b"abcde", 4), Err(ArgError::Holder));
        assert_eq!(parse_holder(b"\xff\x00ab", 4), Ok(&b"\xff\x00ab"[..]));
    }

    #[test]
    fn tokens() {
        assert_eq!(parse_token(b"1"), Ok(1));
        assert_eq!(parse_token(b"18446744073709551615"), Ok(u64::MAX));
        for bad in [&b"0"[..], b"", b"-1", b"18446744073709551616", b"1x", b" 1"] {
            assert_eq!(parse_token(bad), Err(ArgError::Token), "{:?}", bad);
        }
    }

    #[test]
    fn token_option() {
        assert_eq!(parse_token_option(&[]), Ok(None));
        assert_eq!(parse_token_option(&[b"token", b"7"]), Ok(Some(7)));
        assert_eq!(parse_token_option(&[b"TOKEN", b"x"]), Err(ArgError::Token));
        assert_eq!(
            parse_token_option(&[b"TOKENS", b"7"]),
            Err(ArgError::Syntax)
        );
        for tail in [
            &[&b"TOKEN"[..]][..],
            &[b"TOKEN", b"1", b"x"],
            &[b"TOKEN", b"1", b"TOKEN", b"1"],
            &[b"TOKEN", b"1", b"TOKEN"],
        ] {
            assert_eq!(parse_token_option(tail), Err(ArgError::Syntax), "{tail:?}");
        }
    }

    #[test]
    fn stored_tokens_stay_in_the_safe_integer_range() {
        assert_eq!(parse_stored_token(b"9007199254740991"), Ok((1 << 53) - 1));
        for forged in [
            &b"9007199254740992"[..],
            b"4611686018427387904",
            b"9223372036854775808",
            b"18446744073709551614",
            b"0",
        ] {
            assert_eq!(parse_stored_token(forged), Err(ArgError::Token));
        }
        assert_eq!(
            parse_token_floor(&[b"X", b"9223372036854775808"]),
            Err(ArgError::Token)
        );
    }

    #[test]
    fn holders_are_capped_at_the_hard_limit_not_the_setting() {
        let long = vec![b'h'; LIMITS.max_holder_len + 1];
        let renew = parse_renew(&[b"R", b"k", &long, b"5"], LIMITS).unwrap();
        assert_eq!(renew.holder.len(), long.len());
        assert!(parse_release(&[b"R", b"k", &long]).is_ok());
        let over_cap = vec![b'h'; HOLDER_LEN_CAP + 1];
        assert_eq!(
            parse_release(&[b"R", b"k", &over_cap]).unwrap_err(),
            ArgError::Holder
        );
        assert_eq!(
            parse_lock(&[b"L", b"k", &over_cap, b"5"], LIMITS).unwrap_err(),
            ArgError::Holder
        );
    }

    #[test]
    fn commands() {
        let lock = parse_lock(&[b"RESERVE.LOCK", b"job", b"w1", b"1800"], LIMITS).unwrap();
        assert_eq!(lock.ttl_ms, 1_800_000);
        assert_eq!(
            parse_lock(&[b"RESERVE.LOCK", b"job", b"", b"1"], LIMITS),
            Err(ArgError::Holder)
        );
        assert_eq!(
            parse_lock(&[b"RESERVE.LOCK", b"job", b"w", b"2592001"], LIMITS),
            Err(ArgError::Ttl)
        );
        let renew = parse_renew(
            &[b"RESERVE.RENEW", b"job", b"w", b"5", b"TOKEN", b"9"],
            LIMITS,
        )
        .unwrap();
        assert_eq!(renew.token, Some(9));
        let release = parse_release(&[b"RESERVE.RELEASE", b"job", b"w"]).unwrap();
        assert_eq!(release.token, None);
        let wait = parse_wait(&[b"RESERVE.WAIT", b"job", b"w", b"5", b"0"], LIMITS).unwrap();
        assert_eq!(wait.timeout_ms, None);
        assert_eq!(
            parse_wait(&[b"RESERVE.WAIT", b"job", b"w", b"5"], LIMITS),
            Err(ArgError::WrongArity)
        );
        let wait = parse_wait(
            &[b"RESERVE.WAIT", b"job", b"w", b"5", b"0", b"SHARED"],
            LIMITS,
        );
        assert_eq!(wait.unwrap().lock.ask.mode, Mode::Shared);
        assert_eq!(
            parse_lock(&[b"RESERVE.LOCK", b"job", b"w", b"5", b"x"], LIMITS),
            Err(ArgError::Syntax)
        );
    }

    #[test]
    fn delays_and_observe() {
        let lock = |rest: &[&[u8]]| {
            let mut argv: Vec<&[u8]> = vec![b"RESERVE.LOCK", b"k", b"w", b"5"];
            argv.extend_from_slice(rest);
            parse_lock(&argv, LIMITS).map(|a| (a.ask, a.delay_ms))
        };
        assert_eq!(lock(&[]), Ok((Ask::EXCLUSIVE, None)));
        assert_eq!(lock(&[b"DELAY", b"0"]), Ok((Ask::EXCLUSIVE, Some(0))));
        assert_eq!(lock(&[b"delay", b"3600000"]).unwrap().1, Some(3_600_000));
        assert_eq!(
            lock(&[b"SHARED", b"DELAY", b"5"]).unwrap().0.mode,
            Mode::Shared
        );
        for bad in [
            &b"-1"[..],
            b"3600001",
            b"x",
            b"",
            b"1.5",
            b"+5",
            b"99999999999",
        ] {
            assert_eq!(lock(&[b"DELAY", bad]), Err(ArgError::Delay), "{bad:?}");
        }
        assert_eq!(lock(&[b"DELAY"]), Err(ArgError::Syntax));
        assert_eq!(
            lock(&[b"DELAY", b"1", b"DELAY", b"1"]),
            Err(ArgError::Syntax)
        );
        let wait = parse_wait(&[b"W", b"k", b"w", b"5", b"0", b"DELAY", b"7"], LIMITS);
        assert_eq!(wait.unwrap().lock.delay_ms, Some(7));

        let observe = |token: &[u8], timeout: &[u8]| {
            parse_observe(&[b"RESERVE.OBSERVE", b"k", token, timeout])
                .map(|o| (o.seen, o.timeout_ms))
        };
        assert_eq!(observe(b"0", b"0"), Ok((0, None)));
        assert_eq!(observe(b"42", b"1.5"), Ok((42, Some(1500))));
        assert_eq!(
            observe(b"9007199254740991", b"1"),
            Ok((9_007_199_254_740_991, Some(1000)))
        );
        for bad in [&b"-1"[..], b"x", b"", b"00", b"9007199254740992"] {
            assert_eq!(observe(bad, b"1"), Err(ArgError::Token), "{bad:?}");
        }
        assert_eq!(observe(b"1", b"-1"), Err(ArgError::Timeout));
        assert_eq!(
            parse_observe(&[b"RESERVE.OBSERVE", b"k", b"1"]),
            Err(ArgError::WrongArity)
        );
        let s = parse_set_state(&[b"X", b"k", b"h", b"5", b"1", b"2", b"9", b"250"]).unwrap();
        assert_eq!(s.delay_ms, 250);
        assert!(parse_set_state(&[b"X", b"k", b"h", b"5", b"1", b"2", b"9", b"-1"]).is_err());
    }

    #[test]
    fn set_state() {
        let s = parse_set_state(&[b"X", b"k", b"h", b"5", b"1000", b"2", b"99999"]).unwrap();
        assert_eq!(s.token, 5);
        assert_eq!(s.expire_at_ms, Some(99_999));
        let s = parse_set_state(&[b"X", b"k", b"h", b"5", b"1000", b"2", b"0"]).unwrap();
        assert_eq!(s.expire_at_ms, None);
        assert!(parse_set_state(&[b"X", b"k", b"h", b"5", b"1000", b"2", b"-3"]).is_err());
        assert!(parse_set_state(&[b"X", b"k", b"", b"5", b"1000", b"2", b"1"]).is_err());
        assert!(parse_set_state(&[b"X", b"k", b"h", b"0", b"1000", b"2", b"1"]).is_err());
        // Out of range: a token past 2^53-1, a renewal count the value
        // cannot keep, a holder past the hard cap.
        assert!(
            parse_set_state(&[b"X", b"k", b"h", b"9223372036854775808", b"1", b"2", b"1"]).is_err()
        );
        assert!(parse_set_state(&[b"X", b"k", b"h", b"5", b"1", b"4294967296", b"1"]).is_err());
        assert!(parse_set_state(&[b"X", b"k", b"h", b"5", b"1", b"4294967295", b"1"]).is_ok());
        let over_cap = vec![b'h'; HOLDER_LEN_CAP + 1];
        assert!(parse_set_state(&[b"X", b"k", &over_cap, b"5", b"1", b"2", b"1"]).is_err());
    }

    fn arg() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            "[0-9.eE+-]{0,30}".prop_map(String::into_bytes),
            Just(b"TOKEN".to_vec()),
            Just(b"SHARED".to_vec()),
            Just(b"LIMIT".to_vec()),
            Just(b"PERMITS".to_vec()),
            Just(b"DELAY".to_vec()),
            Just(b"3600001".to_vec()),
            Just(b"nan".to_vec()),
            Just(b"0".to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Any argument vector yields a typed value or an error, never a
        /// panic, and every accepted TTL respects the limits.
        #[test]
        fn parsers_never_panic(args in proptest::collection::vec(arg(), 0..9)) {
            let argv: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            if let Ok(a) = parse_lock(&argv, LIMITS) {
                prop_assert!(a.ttl_ms > 0 && a.ttl_ms <= LIMITS.max_ttl_ms);
                prop_assert!(!a.holder.is_empty() && a.holder.len() <= HOLDER_LEN_CAP);
                prop_assert!(a.delay_ms.is_none_or(|d| u64::from(d) <= MAX_DELAY_MS));
            }
            if let Ok(o) = parse_observe(&argv) {
                prop_assert!(o.seen == 0 || crate::engine::tokens::is_valid_token(o.seen));
                prop_assert!(o.timeout_ms.is_none_or(|t| t > 0 && t <= MAX_TIMEOUT_MS));
            }
            if let Ok(a) = parse_renew(&argv, LIMITS) {
                prop_assert!(a.ttl_ms > 0 && a.ttl_ms <= LIMITS.max_ttl_ms);
                prop_assert!(a.token != Some(0));
            }
            let _ = parse_release(&argv);
            if let Ok(a) = parse_wait(&argv, LIMITS) {
                prop_assert!(a.timeout_ms.is_none_or(|t| t > 0 && t <= MAX_TIMEOUT_MS));
            }
            if let Ok(ask) = parse_ask(&argv, LIMITS.max_holders) {
                prop_assert!(ask.permits >= 1);
                prop_assert!(ask.limit.is_none_or(|n| ask.permits <= n && n <= LIMITS.max_holders));
            }
            if let Ok(w) = parse_wait_all(&argv, LIMITS) {
                prop_assert!(!w.all.keys.is_empty() && w.all.keys.len() <= MAX_KEYS);
            }
            if let Ok(a) = parse_lock_all(&argv, LIMITS) {
                prop_assert!(!a.keys.is_empty() && a.keys.len() <= MAX_KEYS);
            }
            if let Ok(g) = parse_guard(&argv) {
                prop_assert!(!g.command.is_empty() && g.token >= 1);
            }
            if let Ok(a) = parse_set_state(&argv) {
                prop_assert!(crate::engine::tokens::is_valid_token(a.token));
                prop_assert!(u64::from(a.delay_ms) <= MAX_DELAY_MS);
            }
        }

        /// Plain decimals parse to exactly what they say (ms, rounded up).
        #[test]
        fn decimals_round_trip(secs in 0u64..10_000_000, ms in 0u64..1000) {
            let text = format!("{secs}.{ms:03}");
            prop_assert_eq!(parse_seconds_as_ms(text.as_bytes()), Some(secs * 1000 + ms));
        }
    }
}
