//! Helpers shared by the client's integration tests.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use redis_reservation_client::Level;
use testkit::redis;

/// Captures the manager's log lines (the callback logger).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<(Level, String)>>>);

impl Logs {
    pub fn logger(&self) -> impl Fn(Level, &str) + Send + Sync + 'static {
        let lines = self.0.clone();
        move |level, msg| lines.lock().unwrap().push((level, msg.to_string()))
    }

    pub fn lines(&self) -> Vec<(Level, String)> {
        self.0.lock().unwrap().clone()
    }

    /// Is there a line at `level` containing every one of `needles`?
    pub fn has(&self, level: Level, needles: &[&str]) -> bool {
        self.lines()
            .iter()
            .any(|(l, m)| *l == level && needles.iter().all(|n| m.contains(n)))
    }
}

/// `calls=` of `cmdstat_<name>` in `INFO commandstats` (0 when absent).
pub fn command_calls(conn: &mut redis::Connection, name: &str) -> u64 {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{}:", name.to_ascii_lowercase());
    text.lines()
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .and_then(|l| l.split_once("calls="))
        .and_then(|(_, rest)| rest.split(',').next())
        .map(|n| n.parse().expect("calls is a number"))
        .unwrap_or(0)
}

/// `RESERVE.INFO key` as field -> value (RESP2 flat array), `None` for nil.
pub fn reserve_info(
    conn: &mut redis::Connection,
    key: &str,
) -> Option<std::collections::HashMap<String, redis::Value>> {
    let value: redis::Value = redis::cmd("RESERVE.INFO")
        .arg(key)
        .query(conn)
        .expect("RESERVE.INFO");
    match value {
        redis::Value::Nil => None,
        redis::Value::Array(items) => {
            let mut map = std::collections::HashMap::new();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                map.insert(redis::from_redis_value(&k).unwrap(), v);
            }
            Some(map)
        }
        other => panic!("unexpected RESERVE.INFO reply {other:?}"),
    }
}

/// The holder of `key` per `RESERVE.INFO`.
pub fn holder_of(conn: &mut redis::Connection, key: &str) -> Option<String> {
    reserve_info(conn, key).map(|m| redis::from_redis_value(&m["holder"]).unwrap())
}

/// The token of `key` per `RESERVE.INFO`.
pub fn token_of(conn: &mut redis::Connection, key: &str) -> Option<u64> {
    reserve_info(conn, key).map(|m| redis::from_redis_value(&m["token"]).unwrap())
}

pub fn exists(conn: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(conn).unwrap() == 1
}

pub fn info_field(conn: &mut redis::Connection, field: &str) -> u64 {
    testkit::reservation_info(conn)
        .get(field)
        .copied()
        .unwrap_or_else(|| panic!("INFO reservation has no {field}"))
}

/// `connected_clients` and `blocked_clients` of `INFO clients`.
pub fn clients(conn: &mut redis::Connection) -> (u64, u64) {
    let text: String = redis::cmd("INFO")
        .arg("clients")
        .query(conn)
        .expect("INFO clients");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO clients has no {name}"))
    };
    (field("connected_clients"), field("blocked_clients"))
}
