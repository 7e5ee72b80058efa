//! Sending commands in tests: exact replies or exact error texts.

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
