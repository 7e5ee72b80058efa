//! Reading `RESERVE.INFO` replies in tests: the fields in the order the
//! server sends them ([`FIELDS`], and [`GRANT_FIELDS`] for each entry of
//! `holders`), looked up by name, and a reservation's [`Snapshot`]: what
//! must survive a restart, a replica's sync or a slot migration exactly.

use redis::{Connection, Value};

use crate::cmd::{as_int, bytes, call, text};
use crate::error_text;

/// The fields of a `RESERVE.INFO` reply, in the order the server sends them.
pub const FIELDS: [&str; 12] = [
    "holder",
    "token",
    "ttl_ms",
    "acquired_at_ms",
    "renewals",
    "mode",
    "delay_ms",
    "limit",
    "permits_used",
    "waiters",
    "queue",
    "holders",
];

/// The fields of one grant in `holders`, in order.
pub const GRANT_FIELDS: [&str; 7] = [
    "holder",
    "token",
    "ttl_ms",
    "acquired_at_ms",
    "renewals",
    "mode",
    "permits",
];

/// A `RESERVE.INFO` reply as field/value pairs in the order the server sent
/// them: a RESP2 flat array (of even length) or a RESP3 map; `None` for nil.
pub fn parse(v: &Value) -> Option<Vec<(String, Value)>> {
    match v {
        Value::Nil => None,
        Value::Array(items) => {
            assert_eq!(items.len() % 2, 0, "flat field/value pairs: {items:?}");
            Some(
                items
                    .chunks(2)
                    .map(|p| (text(&p[0]), p[1].clone()))
                    .collect(),
            )
        }
        Value::Map(pairs) => Some(pairs.iter().map(|(k, v)| (text(k), v.clone())).collect()),
        other => panic!("RESERVE.INFO: unexpected reply {other:?}"),
    }
}

/// `RESERVE.INFO key`, parsed with [`parse`].
pub fn info(c: &mut Connection, key: &[u8]) -> Option<Vec<(String, Value)>> {
    parse(&call(c, &[b"RESERVE.INFO", key]).expect("RESERVE.INFO"))
}

/// The value of field `name` (panics when there is none).
pub fn field<'a>(fields: &'a [(String, Value)], name: &str) -> &'a Value {
    &fields
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
        .1
}

/// The value of integer field `name`.
pub fn int_field(fields: &[(String, Value)], name: &str) -> i64 {
    as_int(field(fields, name))
}

/// The holders queued on `key`, oldest first (none when it is not held).
pub fn queue_of(c: &mut Connection, key: &str) -> Vec<String> {
    match info(c, key.as_bytes()).map(|f| field(&f, "queue").clone()) {
        Some(Value::Array(q)) => q.iter().map(text).collect(),
        _ => Vec::new(),
    }
}

/// Everything a reservation is, with its absolute expiry and its type:
/// what must come back from disk, reach a replica or move with its slot
/// exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub holder: Vec<u8>,
    pub token: i64,
    pub acquired_at_ms: i64,
    pub renewals: i64,
    pub expire_at_ms: i64,
    /// `TYPE key`: `reservation`, or `string` for a legacy one.
    pub kind: String,
}

/// `RESERVE.INFO`, `PEXPIRETIME` and `TYPE` of `key` in one MULTI (nothing
/// can expire or move in between); `None` when nothing holds it.
pub fn snapshot(c: &mut Connection, key: &[u8]) -> Option<Snapshot> {
    let replies: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("RESERVE.INFO")
        .arg(key)
        .cmd("PEXPIRETIME")
        .arg(key)
        .cmd("TYPE")
        .arg(key)
        .query(c)
        .unwrap_or_else(|e| {
            panic!(
                "snapshot of {}: {}",
                String::from_utf8_lossy(key),
                error_text(&e)
            )
        });
    let fields = parse(&replies[0])?;
    let expire_at_ms = match replies[1] {
        Value::Int(n) => n,
        ref other => panic!("PEXPIRETIME: {other:?}"),
    };
    let kind = match &replies[2] {
        Value::SimpleString(s) => s.clone(),
        other => panic!("TYPE: {other:?}"),
    };
    Some(Snapshot {
        holder: bytes(field(&fields, "holder")),
        token: int_field(&fields, "token"),
        acquired_at_ms: int_field(&fields, "acquired_at_ms"),
        renewals: int_field(&fields, "renewals"),
        expire_at_ms,
        kind,
    })
}
