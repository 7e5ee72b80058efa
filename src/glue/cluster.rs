//! Redis Cluster awareness for handoffs that happen outside a command.
//!
//! A command on a key only reaches this node when the node serves the key's
//! slot. A deferred handoff (after a DEL, an expiry, a FLUSHALL) has no such
//! guarantee: the DEL may have been `MIGRATE` moving the key to another
//! node. Granting here would then create a second reservation in a slot
//! this node no longer owns, so before such a grant the node checks the
//! slot's owner, and waiters of a moved key are redirected (`MOVED` /
//! `ASK`, as Redis answers any command on that key) so cluster clients
//! re-issue their WAIT where the key now lives.
//!
//! The slot hashing and the `CLUSTER NODES` parsing are plain Rust.

use redis_module::{Context, RedisValue};

use crate::glue::ffi::Ctx;

/// CRC16-CCITT (XMODEM), the hash Redis Cluster uses for key slots.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of `key`, honouring `{hash tags}`.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % 16384
}

/// Where a slot lives, from this node's point of view.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Served here and not being migrated away.
    Mine,
    /// Served here but migrating to `addr`: keys already moved are asked
    /// for there.
    Ask { slot: u16, addr: String },
    /// Served by another node.
    Moved { slot: u16, addr: String },
    /// Nobody serves it (cluster down or being reconfigured).
    Unknown,
}

/// `ip:port` of a `CLUSTER NODES` address field (`ip:port@cport,host`).
fn addr_of(field: &str) -> String {
    field.split(['@', ',']).next().unwrap_or(field).to_string()
}

fn range_contains(spec: &str, slot: u16) -> bool {
    match spec.split_once('-') {
        Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
            (Ok(a), Ok(b)) => (a..=b).contains(&slot),
            _ => false,
        },
        None => spec.parse::<u16>().is_ok_and(|s| s == slot),
    }
}

/// Decides the route of `slot` from the text of `CLUSTER NODES`.
pub fn route_from_nodes(nodes: &str, slot: u16) -> Route {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 8)
        .collect();
    let addr_of_id = |id: &str| lines.iter().find(|f| f[0] == id).map(|f| addr_of(f[1]));
    for fields in &lines {
        let myself = fields[2].split(',').any(|f| f == "myself");
        let slots = &fields[8..];
        if myself {
            let migrating = format!("[{slot}->-");
            if let Some(marker) = slots.iter().find(|s| s.starts_with(&migrating)) {
                let target = marker[migrating.len()..].trim_end_matches(']');
                return match addr_of_id(target) {
                    Some(addr) => Route::Ask { slot, addr },
                    None => Route::Unknown,
                };
            }
        }
        if slots
            .iter()
            .any(|s| !s.starts_with('[') && range_contains(s, slot))
        {
            return if myself {
                Route::Mine
            } else {
                Route::Moved {
                    slot,
                    addr: addr_of(fields[1]),
                }
            };
        }
    }
    Route::Unknown
}

/// The route of `key` on this node; `Mine` outside cluster mode.
pub fn route(ctx: Ctx, key: &[u8]) -> Route {
    let flags = crate::glue::ffi::context_flags(ctx);
    if flags & redis_module::raw::REDISMODULE_CTX_FLAGS_CLUSTER == 0 {
        return Route::Mine;
    }
    let text = match Context::new(ctx).call("CLUSTER", &["NODES"]) {
        Ok(RedisValue::BulkString(s)) | Ok(RedisValue::SimpleString(s)) => s,
        Ok(RedisValue::BulkRedisString(s)) => s.to_string_lossy(),
        Ok(RedisValue::StringBuffer(b)) | Ok(RedisValue::VerbatimString((_, b))) => {
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => return Route::Unknown,
    };
    route_from_nodes(&text, key_slot(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"{}foo"), crc16(b"{}foo") % 16384);
        assert_eq!(key_slot(b""), 0);
    }

    const NODES: &str = "\
aaa 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [100->-bbb]
bbb 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
ccc 127.0.0.1:7003@17003,host master - 0 1 3 connected 10923-16383 [11000-<-aaa]
";

    #[test]
    fn routes() {
        assert_eq!(route_from_nodes(NODES, 0), Route::Mine);
        assert_eq!(
            route_from_nodes(NODES, 100),
            Route::Ask {
                slot: 100,
                addr: "127.0.0.1:7002".into()
            }
        );
        assert_eq!(
            route_from_nodes(NODES, 6000),
            Route::Moved {
                slot: 6000,
                addr: "127.0.0.1:7002".into()
            }
        );
        assert_eq!(
            route_from_nodes(NODES, 11000),
            Route::Moved {
                slot: 11000,
                addr: "127.0.0.1:7003".into()
            }
        );
        assert_eq!(route_from_nodes("", 5), Route::Unknown);
        assert_eq!(route_from_nodes("garbage line", 5), Route::Unknown);
    }
}
