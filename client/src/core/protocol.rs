//! The wire protocol, without a connection: the commands the client sends
//! (as `redis::Cmd`) and what their replies mean.

use std::time::Duration;

use redis::{from_redis_value, Cmd, Value};

/// How much longer than a blocking command's own timeout a read may take
/// before the connection is considered dead.
pub(crate) const WAIT_SLACK: Duration = Duration::from_secs(5);

/// Seconds with millisecond resolution, rounded up, as the module parses
/// them (`1.500`, `0.001`).
pub(crate) fn secs_arg(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// How a reservation is held (SPEC section 9): the mutex, a shared (read)
/// grant that coexists with other shared grants, or `permits` of a
/// counting semaphore of `limit` permits. All of them queue on the one
/// FIFO queue of their key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// One holder at a time (no option: `RESERVE.LOCK key holder ttl`).
    #[default]
    Exclusive,
    /// A read lock: shared grants coexist, an exclusive one waits for
    /// them all (`SHARED`).
    Shared,
    /// `permits` of a semaphore of `limit` permits (`LIMIT n PERMITS k`;
    /// the latest limit given on a key is its limit).
    Permits {
        /// The semaphore's size.
        limit: u32,
        /// How many of them this grant takes.
        permits: u32,
    },
}

impl Access {
    /// The options LOCK and WAIT take for it.
    pub(crate) fn args(&self) -> Vec<String> {
        match *self {
            Access::Exclusive => Vec::new(),
            Access::Shared => vec!["SHARED".into()],
            Access::Permits { limit, permits } => vec![
                "LIMIT".into(),
                limit.to_string(),
                "PERMITS".into(),
                permits.to_string(),
            ],
        }
    }
}

/// WAIT's timeout in whole milliseconds, at least 1 (0 would block forever).
fn wait_ms(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64).max(1)
}

/// The longest lock-delay the module takes (`DELAY ms`, 0..=3600000).
pub(crate) const MAX_LOCK_DELAY: Duration = Duration::from_secs(3600);

/// `DELAY ms` (milliseconds, rounded up) when a lock-delay is set; nothing
/// otherwise, so the server's `reservation.lock-delay` applies.
fn delay_args(delay: Option<Duration>) -> Vec<String> {
    match delay {
        Some(d) => vec!["DELAY".into(), d.as_micros().div_ceil(1000).to_string()],
        None => Vec::new(),
    }
}

/// `RESERVE.LOCK key holder ttl [options] [DELAY ms]`: answers the token,
/// 0 when it does not fit now.
pub(crate) fn lock(
    key: &str,
    holder: &str,
    ttl: Duration,
    access: Access,
    delay: Option<Duration>,
) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.LOCK");
    cmd.arg(key)
        .arg(holder)
        .arg(secs_arg(ttl))
        .arg(access.args())
        .arg(delay_args(delay));
    cmd
}

/// `RESERVE.WAIT key holder ttl timeout [options] [DELAY ms]` (`0`: no
/// timeout): answers the token, 0 when it timed out or was unblocked.
pub(crate) fn wait(
    key: &str,
    holder: &str,
    ttl: Duration,
    timeout: Option<Duration>,
    access: Access,
    delay: Option<Duration>,
) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.WAIT");
    cmd.arg(key)
        .arg(holder)
        .arg(secs_arg(ttl))
        .arg(timeout.map_or_else(|| "0".to_string(), secs_arg))
        .arg(access.args())
        .arg(delay_args(delay));
    cmd
}

/// The largest token OBSERVE takes (2^53 - 1). Tokens come from the clock
/// (`unix_seconds << 20`) and reach it around the year 2240, so an OBSERVE
/// with it answers a key's state at once; the callers still handle the
/// key that has it.
pub(crate) const MAX_TOKEN: u64 = (1 << 53) - 1;

/// `RESERVE.OBSERVE key token timeout` (`0`: no timeout): answers the
/// key's current `[holder, token]` once its token differs from `token`,
/// nil when the timeout passes first. Decode with [`observe_reply`].
pub(crate) fn observe(key: &str, token: u64, timeout: Option<Duration>) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.OBSERVE");
    cmd.arg(key)
        .arg(token)
        .arg(timeout.map_or_else(|| "0".to_string(), secs_arg));
    cmd
}

/// Who holds a key, as `RESERVE.OBSERVE` reports it: the holder and token
/// of its oldest current grant. For an election, the leader.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leader {
    /// The holder identity (`<by>-<hostname>-<pid>-<random>` for holders
    /// of this crate).
    pub holder: String,
    /// The grant's fencing token (>= 1; 0 for an old library's
    /// plain-string reservation, which has none).
    pub token: u64,
}

/// OBSERVE's answer: `None` when it timed out (nothing changed),
/// `Some(None)` when the key holds no grant (`[nil, 0]`), `Some(Some(_))`
/// for the key's current grant (`[holder, 0]` for an old library's
/// plain-string lock). Anything else is a `TypeError`, never a panic.
pub(crate) fn observe_reply(value: Value) -> redis::RedisResult<Option<Option<Leader>>> {
    let unexpected = |v: &Value| {
        Err(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "unexpected RESERVE.OBSERVE reply",
            format!("{v:?}"),
        )))
    };
    let items = match value {
        Value::Nil => return Ok(None),
        Value::Array(items) if items.len() == 2 => items,
        other => return unexpected(&other),
    };
    let token = match &items[1] {
        Value::Int(t) if *t >= 0 => *t as u64,
        _ => return unexpected(&Value::Array(items)),
    };
    let holder = match &items[0] {
        Value::Nil => None,
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => return unexpected(&Value::Array(items)),
    };
    match (holder, token) {
        (None, 0) => Ok(Some(None)),
        (Some(holder), token) => Ok(Some(Some(Leader { holder, token }))),
        (None, _) => unexpected(&Value::Array(items)),
    }
}

/// `RESERVE.LOCKALL holder ttl key [key ...]`: answers every token in key
/// order, or nil when not all are free.
pub(crate) fn lock_all(keys: &[&str], holder: &str, ttl: Duration) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.LOCKALL");
    cmd.arg(holder).arg(secs_arg(ttl)).arg(keys);
    cmd
}

/// `RESERVE.WAITALL holder ttl timeout key [key ...]` (`0`: no timeout):
/// answers every token in key order, nil when it timed out.
pub(crate) fn wait_all(
    keys: &[&str],
    holder: &str,
    ttl: Duration,
    timeout: Option<Duration>,
) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.WAITALL");
    cmd.arg(holder)
        .arg(secs_arg(ttl))
        .arg(timeout.map_or_else(|| "0".to_string(), secs_arg))
        .arg(keys);
    cmd
}

/// What LOCK, WAIT, LOCKALL and WAITALL answer: the tokens of a grant (one
/// per key), or None (0 or nil: not granted).
pub(crate) fn grant_reply(value: Value) -> redis::RedisResult<Option<Vec<u64>>> {
    match value {
        Value::Nil | Value::Int(0) => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(from_redis_value::<u64>)
            .collect::<redis::RedisResult<Vec<u64>>>()
            .map(Some),
        other => from_redis_value::<u64>(&other).map(|t| Some(vec![t])),
    }
}

/// `RESERVE.GUARD key holder token <command>`: runs `command` only while
/// this grant holds; answers the command's reply or a FENCED error.
pub(crate) fn guard(key: &str, holder: &str, token: u64, command: &Cmd) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.GUARD");
    cmd.arg(key).arg(holder).arg(token);
    for arg in command.args_iter() {
        if let redis::Arg::Simple(bytes) = arg {
            cmd.arg(bytes);
        }
    }
    cmd
}

/// `RESERVE.RENEW key holder ttl TOKEN t`: answers 1 when renewed.
pub(crate) fn renew(key: &str, holder: &str, ttl: Duration, token: u64) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.RENEW");
    cmd.arg(key)
        .arg(holder)
        .arg(secs_arg(ttl))
        .arg("TOKEN")
        .arg(token);
    cmd
}

/// `RESERVE.RELEASE key holder [TOKEN t]`: answers 1 when released.
pub(crate) fn release(key: &str, holder: &str, token: Option<u64>) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.RELEASE");
    cmd.arg(key).arg(holder);
    if let Some(t) = token {
        cmd.arg("TOKEN").arg(t);
    }
    cmd
}

/// `RESERVE.INFO key`; decode the reply with [`ReservationInfo::from_value`].
pub(crate) fn info(key: &str) -> Cmd {
    let mut cmd = redis::cmd("RESERVE.INFO");
    cmd.arg(key);
    cmd
}

/// `WAIT replicas timeout_ms`: answers how many replicas acknowledged.
pub(crate) fn replicas(replicas: usize, timeout: Duration) -> Cmd {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas).arg(wait_ms(timeout));
    cmd
}

/// RENEW and RELEASE answer 1 when they did it, 0 when not held by us.
pub(crate) fn done(reply: i64) -> bool {
    reply == 1
}

/// What `RESERVE.INFO` reports about a reservation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationInfo {
    /// Who holds it.
    pub holder: String,
    /// Its fencing token (0 for an old library's plain-string reservation).
    pub token: u64,
    /// Milliseconds until it expires (-1: no expiry).
    pub ttl_ms: i64,
    /// When it was granted (unix ms).
    pub acquired_at_ms: u64,
    /// How many times it was renewed.
    pub renewals: u64,
    /// How many clients wait for it.
    pub waiters: u64,
    /// The waiting holders, oldest first.
    pub queue: Vec<String>,
    /// During a lock-delay (the grant ran out, nobody may take the key
    /// yet): the milliseconds left; 0 otherwise. `holder` and `token` then
    /// name the expired grant and `ttl_ms` is 0.
    pub delay_ms: u64,
}

impl ReservationInfo {
    /// Parses the RESP2 flat array or RESP3 map; `None` for nil.
    pub(crate) fn from_value(value: Value) -> redis::RedisResult<Option<ReservationInfo>> {
        let pairs: Vec<(Value, Value)> = match value {
            Value::Nil => return Ok(None),
            Value::Map(pairs) => pairs,
            Value::Array(items) => {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "unexpected RESERVE.INFO reply",
                    format!("{other:?}"),
                )))
            }
        };
        let mut info = ReservationInfo::default();
        for (k, v) in pairs {
            let name: String = from_redis_value(&k)?;
            match name.as_str() {
                "holder" => info.holder = from_redis_value(&v)?,
                "token" => info.token = from_redis_value(&v)?,
                "ttl_ms" => info.ttl_ms = from_redis_value(&v)?,
                "acquired_at_ms" => info.acquired_at_ms = from_redis_value(&v)?,
                "renewals" => info.renewals = from_redis_value(&v)?,
                "waiters" => info.waiters = from_redis_value(&v)?,
                "queue" => info.queue = from_redis_value(&v)?,
                "delay_ms" => info.delay_ms = from_redis_value(&v)?,
                _ => {}
            }
        }
        Ok(Some(info))
    }
}

#[cfg(test)]
pub(crate) fn args(cmd: &Cmd) -> Vec<String> {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Arg::Cursor => "<cursor>".into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_have_millisecond_resolution() {
        assert_eq!(secs_arg(Duration::from_secs(30)), "30.000");
        assert_eq!(secs_arg(Duration::from_millis(1500)), "1.500");
        assert_eq!(secs_arg(Duration::from_millis(1)), "0.001");
        assert_eq!(secs_arg(Duration::from_micros(1)), "0.001");
        assert_eq!(secs_arg(Duration::from_micros(2_000_001)), "2.001");
    }

    #[test]
    fn grant_replies_of_one_key_or_several() {
        assert_eq!(grant_reply(Value::Int(0)), Ok(None));
        assert_eq!(grant_reply(Value::Nil), Ok(None));
        assert_eq!(grant_reply(Value::Int(7)), Ok(Some(vec![7])));
        assert_eq!(
            grant_reply(Value::Array(vec![Value::Int(7), Value::Int(9)])),
            Ok(Some(vec![7, 9]))
        );
        assert!(grant_reply(Value::SimpleString("x".into())).is_err());
    }

    #[test]
    fn commands_carry_their_arguments() {
        let ttl = Duration::from_millis(1500);
        assert_eq!(
            args(&lock("k", "h", ttl, Access::Exclusive, None)),
            ["RESERVE.LOCK", "k", "h", "1.500"]
        );
        assert_eq!(
            args(&lock("k", "h", ttl, Access::Shared, None)),
            ["RESERVE.LOCK", "k", "h", "1.500", "SHARED"]
        );
        assert_eq!(
            args(&lock(
                "k",
                "h",
                ttl,
                Access::Exclusive,
                Some(Duration::ZERO)
            )),
            ["RESERVE.LOCK", "k", "h", "1.500", "DELAY", "0"]
        );
        assert_eq!(
            args(&wait("k", "h", ttl, None, Access::Exclusive, None)),
            ["RESERVE.WAIT", "k", "h", "1.500", "0"]
        );
        assert_eq!(
            args(&wait(
                "k",
                "h",
                ttl,
                None,
                Access::Shared,
                Some(Duration::from_micros(2500))
            )),
            [
                "RESERVE.WAIT",
                "k",
                "h",
                "1.500",
                "0",
                "SHARED",
                "DELAY",
                "3"
            ]
        );
        assert_eq!(
            args(&observe("k", 0, None)),
            ["RESERVE.OBSERVE", "k", "0", "0"]
        );
        assert_eq!(
            args(&observe("k", MAX_TOKEN, Some(Duration::from_millis(250)))),
            ["RESERVE.OBSERVE", "k", "9007199254740991", "0.250"]
        );
        assert_eq!(
            args(&wait(
                "k",
                "h",
                ttl,
                Some(Duration::from_millis(20)),
                Access::Permits {
                    limit: 5,
                    permits: 2
                },
                None
            )),
            [
                "RESERVE.WAIT",
                "k",
                "h",
                "1.500",
                "0.020",
                "LIMIT",
                "5",
                "PERMITS",
                "2"
            ]
        );
        assert_eq!(
            args(&renew("k", "h", ttl, 9)),
            ["RESERVE.RENEW", "k", "h", "1.500", "TOKEN", "9"]
        );
        assert_eq!(
            args(&release("k", "h", None)),
            ["RESERVE.RELEASE", "k", "h"]
        );
        assert_eq!(
            args(&release("k", "h", Some(9))),
            ["RESERVE.RELEASE", "k", "h", "TOKEN", "9"]
        );
        assert_eq!(args(&info("k")), ["RESERVE.INFO", "k"]);
        assert_eq!(args(&replicas(2, Duration::ZERO)), ["WAIT", "2", "1"]);
        assert!(done(1) && !done(0));
    }

    #[test]
    fn observe_replies_decode_without_panicking() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let pair = |h: Value, t: i64| Value::Array(vec![h, Value::Int(t)]);
        assert_eq!(observe_reply(Value::Nil), Ok(None));
        assert_eq!(observe_reply(pair(Value::Nil, 0)), Ok(Some(None)));
        assert_eq!(
            observe_reply(pair(bulk("legacy"), 0)),
            Ok(Some(Some(Leader {
                holder: "legacy".into(),
                token: 0
            }))),
            "an old library's lock"
        );
        assert_eq!(
            observe_reply(pair(bulk("h"), 7)),
            Ok(Some(Some(Leader {
                holder: "h".into(),
                token: 7
            })))
        );
        assert_eq!(
            observe_reply(pair(Value::SimpleString("h".into()), 7)),
            Ok(Some(Some(Leader {
                holder: "h".into(),
                token: 7
            })))
        );
        assert_eq!(
            observe_reply(pair(Value::BulkString(vec![0xff, b'h']), 7)),
            Ok(Some(Some(Leader {
                holder: "\u{fffd}h".into(),
                token: 7
            })))
        );
        for bad in [
            Value::Int(0),
            Value::Array(vec![]),
            Value::Array(vec![Value::Nil]),
            Value::Array(vec![Value::Nil, Value::Int(0), Value::Nil]),
            pair(Value::Nil, 7),
            pair(bulk("h"), -1),
            pair(Value::Int(3), 7),
            Value::Array(vec![bulk("h"), bulk("7")]),
            Value::Okay,
        ] {
            assert!(observe_reply(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn info_decodes_resp2_and_resp3() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let fields = vec![
            (bulk("holder"), bulk("h")),
            (bulk("token"), Value::Int(4)),
            (bulk("ttl_ms"), Value::Int(-1)),
            (bulk("waiters"), Value::Int(1)),
            (bulk("queue"), Value::Array(vec![bulk("q")])),
            (bulk("delay_ms"), Value::Int(250)),
            (bulk("future-field"), Value::Int(0)),
        ];
        let want = ReservationInfo {
            holder: "h".into(),
            token: 4,
            ttl_ms: -1,
            waiters: 1,
            queue: vec!["q".into()],
            delay_ms: 250,
            ..ReservationInfo::default()
        };
        let flat = fields.iter().flat_map(|(k, v)| [k.clone(), v.clone()]);
        assert_eq!(
            ReservationInfo::from_value(Value::Array(flat.collect())).unwrap(),
            Some(want.clone())
        );
        assert_eq!(
            ReservationInfo::from_value(Value::Map(fields)).unwrap(),
            Some(want)
        );
        assert_eq!(ReservationInfo::from_value(Value::Nil).unwrap(), None);
        assert!(ReservationInfo::from_value(Value::Int(1)).is_err());
    }
}
