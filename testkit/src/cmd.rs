//! Sending commands in tests: exact replies or exact error texts, and the
//! small typed wrappers every test file used to define for itself (an
//! integer, `OK`, a granted `RESERVE.LOCK`, a string or integer out of a
//! reply, the key's expiry, the server's clock).

use redis::{Connection, Value};

use crate::error_text;

/// Sends `argv` (command name first, binary-safe) and returns the reply,
/// or the server's error text exactly as written (`CODE detail`).
pub fn call(c: &mut Connection, argv: &[&[u8]]) -> Result<Value, String> {
    let name = std::str::from_utf8(argv[0]).expect("command names are UTF-8");
    let mut cmd = redis::cmd(name);
    for a in &argv[1..] {
        cmd.arg(*a);
    }
    cmd.query::<Value>(c).map_err(|e| error_text(&e))
}

/// As [`call`], for arguments that are text.
pub fn call_str(c: &mut Connection, argv: &[&str]) -> Result<Value, String> {
    let bytes: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
    call(c, &bytes)
}

/// An integer reply (panics with the command on anything else).
pub fn int(c: &mut Connection, argv: &[&str]) -> i64 {
    match call_str(c, argv) {
        Ok(Value::Int(n)) => n,
        other => panic!("{argv:?}: expected an integer, got {other:?}"),
    }
}

/// As [`int`], for binary-safe arguments.
pub fn int_bytes(c: &mut Connection, argv: &[&[u8]]) -> i64 {
    match call(c, argv) {
        Ok(Value::Int(n)) => n,
        other => {
            let shown: Vec<String> = argv
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            panic!("{shown:?}: expected an integer, got {other:?}")
        }
    }
}

/// A command that must answer `OK`.
pub fn ok(c: &mut Connection, argv: &[&str]) {
    match call_str(c, argv) {
        Ok(Value::Okay) => {}
        Ok(Value::SimpleString(s)) if s == "OK" => {}
        other => panic!("{argv:?}: expected OK, got {other:?}"),
    }
}

/// `RESERVE.LOCK key holder ttl`, which must be granted: the token.
pub fn lock(c: &mut Connection, key: &str, holder: &str, ttl: &str) -> u64 {
    lock_bytes(c, key.as_bytes(), holder.as_bytes(), ttl)
}

/// As [`lock`], for a binary key and holder.
pub fn lock_bytes(c: &mut Connection, key: &[u8], holder: &[u8], ttl: &str) -> u64 {
    let t = int_bytes(c, &[b"RESERVE.LOCK", key, holder, ttl.as_bytes()]);
    assert!(
        t >= 1,
        "LOCK {} by {} was not granted: {t}",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(holder)
    );
    t as u64
}

/// `PEXPIRETIME key`: the absolute expiry in unix ms (-1 none, -2 no key).
pub fn pexpiretime(c: &mut Connection, key: &str) -> i64 {
    int(c, &["PEXPIRETIME", key])
}

/// `PTTL key`: milliseconds left (-1 no expiry, -2 no key).
pub fn pttl(c: &mut Connection, key: &str) -> i64 {
    int(c, &["PTTL", key])
}

/// The server's clock (`TIME`) in unix milliseconds.
pub fn server_time_ms(c: &mut Connection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(c).expect("TIME");
    secs * 1000 + micros / 1000
}

/// The error text of a command that must fail.
pub fn err(c: &mut Connection, argv: &[&str]) -> String {
    match call_str(c, argv) {
        Err(e) => e,
        Ok(v) => panic!("{argv:?}: expected an error, got {v:?}"),
    }
}

/// The bytes of a string reply (panics on anything else).
pub fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        other => panic!("not a string: {other:?}"),
    }
}

/// The text of a string reply (bulk or status; panics on anything else).
pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("expected a string, got {other:?}"),
    }
}

/// An integer reply's value (panics on anything else).
pub fn as_int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// One reply, normalised so tests can compare exact values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Int(i64),
    /// A status reply such as `OK`.
    Status(String),
    /// Any other value, as debug text.
    Value(String),
    /// An error reply, its full text (`ASK 5 127.0.0.1:7002`,
    /// `UNBLOCKED ...`).
    Error(String),
    /// No reply: the connection broke (the server died, closed it, or the
    /// read timed out).
    Closed(String),
}

/// Normalises a command's outcome into a [`Reply`].
pub fn to_reply(r: redis::RedisResult<Value>) -> Reply {
    match r {
        Ok(Value::Int(n)) => Reply::Int(n),
        Ok(Value::Okay) => Reply::Status("OK".into()),
        Ok(Value::SimpleString(s)) => Reply::Status(s),
        Ok(v) => Reply::Value(format!("{v:?}")),
        Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => {
            Reply::Closed(e.to_string())
        }
        Err(e) => Reply::Error(error_text(&e)),
    }
}

/// A command from text arguments (command name first).
pub fn command(args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd
}

/// Runs one command and normalises its reply.
pub fn q(c: &mut Connection, args: &[&str]) -> Reply {
    to_reply(command(args).query::<Value>(c))
}
