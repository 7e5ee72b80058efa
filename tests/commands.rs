//! SPEC section 3 against a real server: every command row (WAIT has its
//! own tests) and every error, exact replies and exact error texts; the
//! legacy plain-string reservations (section 7), fencing tokens (section
//! 5), configs, `INFO reservation`, command metadata, and a seeded sweep of
//! hostile argument vectors that must never crash the server.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::cmd::{as_int, call, call_str, err, int, pexpiretime, pttl, server_time_ms, text};
use testkit::info::{field, info, int_field, parse, FIELDS, GRANT_FIELDS};
use testkit::redis::{self, Connection, Value};
use testkit::{error_text, reservation_info, wait_until, Config, Server, DEADLINE};

// ----- helpers -----

/// `RESERVE.LOCK`, granted or not: the token, or 0 when it is held by
/// another (unlike `testkit::cmd::lock`, which must be granted).
fn lock(c: &mut Connection, key: &str, holder: &str, ttl: &str) -> u64 {
    let t = int(c, &["RESERVE.LOCK", key, holder, ttl]);
    u64::try_from(t).expect("token is not negative")
}

/// RESERVE.INFO without `ttl_ms` (which moves with the clock).
fn info_static(c: &mut Connection, key: &str) -> Vec<(String, Value)> {
    info(c, key.as_bytes())
        .expect("reservation exists")
        .into_iter()
        .filter(|(k, _)| k != "ttl_ms" && k != "holders")
        .collect()
}

/// Runs `action` and checks that it set the key's absolute expiry to
/// `ttl_ms` after some moment during the action (server clock), so no
/// assumption is made about how long anything takes.
fn assert_expiry_set_by(
    c: &mut Connection,
    key: &str,
    ttl_ms: i64,
    action: impl FnOnce(&mut Connection),
) {
    let t0 = server_time_ms(c);
    action(c);
    let t1 = server_time_ms(c);
    let at = pexpiretime(c, key);
    assert!(
        at >= t0 + ttl_ms && at <= t1 + ttl_ms,
        "{key}: expiry {at} is not {ttl_ms} ms after a moment in [{t0}, {t1}]"
    );
}

/// LOCK, RESERVE.INFO and PEXPIRETIME in one MULTI (nothing can expire in
/// between): the granted TTL is exactly expiry - acquired_at_ms.
fn granted_ttl_ms(c: &mut Connection, key: &str, ttl: &str) -> i64 {
    let (token, fields, expire): (i64, Value, i64) = redis::pipe()
        .atomic()
        .cmd("RESERVE.LOCK")
        .arg(key)
        .arg("w")
        .arg(ttl)
        .cmd("RESERVE.INFO")
        .arg(key)
        .cmd("PEXPIRETIME")
        .arg(key)
        .query(c)
        .unwrap_or_else(|e| panic!("LOCK {key} w {ttl}: {}", error_text(&e)));
    assert!(token >= 1, "LOCK {key} w {ttl} not granted");
    let fields = parse(&fields).expect("RESERVE.INFO after a granted LOCK");
    expire - int_field(&fields, "acquired_at_ms")
}

fn exists(c: &mut Connection, key: &str) -> i64 {
    int(c, &["EXISTS", key])
}

fn config_get(c: &mut Connection, name: &str) -> String {
    let pairs: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(c)
        .expect("CONFIG GET");
    assert_eq!(pairs.len(), 2, "CONFIG GET {name}: {pairs:?}");
    assert_eq!(pairs[0], name);
    pairs[1].clone()
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

fn arity_error(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

// ----- RESERVE.LOCK -----

#[test]
fn lock_grants_contends_and_reacquires() {
    let server = Server::start();
    let mut c = server.conn();
    let before_ms = server_time_ms(&mut c);
    let token = lock(&mut c, "job", "w1", "30");
    assert!(token >= 1);
    // token = max(last + 1, unix_seconds << 20): its high bits are the clock.
    let token_secs = (token >> 20) as i64;
    assert!(
        token_secs >= before_ms / 1000 && token_secs <= server_time_ms(&mut c) / 1000,
        "token {token} does not carry the server's unix seconds"
    );
    assert_eq!(
        text(&call_str(&mut c, &["TYPE", "job"]).unwrap()),
        "rsrv-lock"
    );

    assert_eq!(lock(&mut c, "job", "w2", "30"), 0, "held by w1");
    assert_eq!(lock(&mut c, "job", "w2", "1"), 0, "still held by w1");

    // Shorten the expiry, then re-acquire: same token, TTL back to 30 s.
    assert_eq!(int(&mut c, &["PEXPIRE", "job", "5000"]), 1);
    assert!(pttl(&mut c, "job") <= 5000);
    assert_expiry_set_by(&mut c, "job", 30_000, |c| {
        assert_eq!(lock(c, "job", "w1", "30"), token, "same token");
    });
    let fields = info(&mut c, b"job").unwrap();
    assert_eq!(text(field(&fields, "holder")), "w1");
    assert_eq!(as_int(field(&fields, "token")) as u64, token);
    assert_eq!(
        as_int(field(&fields, "renewals")),
        0,
        "re-acquire is no renewal"
    );

    // A second key gets a larger token.
    let other = lock(&mut c, "job2", "w1", "30");
    assert!(other > token);
}

#[test]
fn lock_ttl_in_decimal_seconds() {
    let server = Server::start();
    let mut c = server.conn();
    for (ttl, ms) in [
        ("0.25", 250),
        (".5", 500),
        ("12.5", 12_500),
        ("20.", 20_000),
        ("0.001", 1),
        ("0.0001", 1),
        ("1.0015", 1002),
        ("30", 30_000),
    ] {
        assert_eq!(
            granted_ttl_ms(&mut c, &format!("k{ttl}"), ttl),
            ms,
            "ttl {ttl}"
        );
    }
    assert!(lock(&mut c, "quarter", "w", "0.25") >= 1);
    let p = pttl(&mut c, "quarter");
    assert!(p <= 250, "0.25 s is 250 ms, PTTL {p}");
}

// ----- RESERVE.RENEW -----

#[test]
fn renew_by_holder_extends_and_counts() {
    let server = Server::start();
    let mut c = server.conn();
    let token = lock(&mut c, "job", "w1", "5");
    let stats = reservation_info(&mut c);
    assert_expiry_set_by(&mut c, "job", 60_000, |c| {
        assert_eq!(int(c, &["RESERVE.RENEW", "job", "w1", "60"]), 1);
    });
    let fields = info(&mut c, b"job").unwrap();
    assert_eq!(as_int(field(&fields, "renewals")), 1);
    assert_eq!(
        as_int(field(&fields, "token")) as u64,
        token,
        "renew keeps the token"
    );
    assert_eq!(text(field(&fields, "holder")), "w1");
    let after = reservation_info(&mut c);
    assert_eq!(after["renewals"], stats["renewals"] + 1);
    assert_eq!(after["renew_failures"], stats["renew_failures"]);

    // Renew may also shorten: expiry := now + ttl.
    assert_expiry_set_by(&mut c, "job", 2000, |c| {
        assert_eq!(int(c, &["RESERVE.RENEW", "job", "w1", "2"]), 1);
    });
    let fields = info(&mut c, b"job").unwrap();
    assert_eq!(as_int(field(&fields, "renewals")), 2);
}

#[test]
fn renew_by_non_holder_changes_nothing() {
    let server = Server::start();
    let mut c = server.conn();
    lock(&mut c, "job", "w1", "5");
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "job", "w1", "3"]), 1);
    let before = info_static(&mut c, "job");
    let expire_before = pexpiretime(&mut c, "job");
    let stats = reservation_info(&mut c);

    assert_eq!(int(&mut c, &["RESERVE.RENEW", "job", "w2", "60"]), 0);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "job", "w1x", "60"]), 0);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "job", "W1", "60"]), 0);

    assert_eq!(info_static(&mut c, "job"), before);
    assert_eq!(pexpiretime(&mut c, "job"), expire_before, "not extended");
    assert!(pttl(&mut c, "job") <= 3000);
    let after = reservation_info(&mut c);
    assert_eq!(after["renew_failures"], stats["renew_failures"] + 3);
    assert_eq!(after["renewals"], stats["renewals"]);
}

#[test]
fn renew_with_token() {
    let server = Server::start();
    let mut c = server.conn();
    let token = lock(&mut c, "job", "w1", "5");
    let t = token.to_string();
    let wrong = (token + 1).to_string();
    let expire = pexpiretime(&mut c, "job");

    assert_eq!(
        int(
            &mut c,
            &["RESERVE.RENEW", "job", "w1", "60", "TOKEN", &wrong]
        ),
        0
    );
    assert_eq!(
        int(&mut c, &["RESERVE.RENEW", "job", "w1", "60", "TOKEN", "1"]),
        0
    );
    assert_eq!(pexpiretime(&mut c, "job"), expire, "wrong token: unchanged");
    // The right holder with the right token; another holder with it: 0.
    assert_eq!(
        int(&mut c, &["RESERVE.RENEW", "job", "w2", "60", "TOKEN", &t]),
        0
    );
    assert_expiry_set_by(&mut c, "job", 60_000, |c| {
        assert_eq!(
            int(c, &["RESERVE.RENEW", "job", "w1", "60", "TOKEN", &t]),
            1
        );
    });
    // The option name is case-insensitive, like Redis's own options.
    assert_eq!(
        int(&mut c, &["RESERVE.RENEW", "job", "w1", "60", "token", &t]),
        1
    );
    let fields = info(&mut c, b"job").unwrap();
    assert_eq!(as_int(field(&fields, "renewals")), 2);
}

#[test]
fn renew_missing_key_is_zero_and_creates_nothing() {
    let server = Server::start();
    let mut c = server.conn();
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "nokey", "w1", "30"]), 0);
    assert_eq!(
        int(
            &mut c,
            &["RESERVE.RENEW", "nokey", "w1", "30", "TOKEN", "5"]
        ),
        0
    );
    assert_eq!(exists(&mut c, "nokey"), 0);
    assert_eq!(info(&mut c, b"nokey"), None);
    assert_eq!(int(&mut c, &["DBSIZE"]), 0);
    // Released: RENEW does not bring it back either.
    lock(&mut c, "gone", "w1", "30");
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "gone", "w1"]), 1);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "gone", "w1", "30"]), 0);
    assert_eq!(exists(&mut c, "gone"), 0);
}

// ----- RESERVE.RELEASE -----

#[test]
fn release_only_by_holder_and_token() {
    let server = Server::start();
    let mut c = server.conn();
    let token = lock(&mut c, "job", "w1", "30");
    let before = info_static(&mut c, "job");
    let expire = pexpiretime(&mut c, "job");

    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "job", "w2"]), 0);
    assert_eq!(
        int(
            &mut c,
            &["RESERVE.RELEASE", "job", "w2", "TOKEN", &token.to_string()]
        ),
        0
    );
    assert_eq!(
        int(
            &mut c,
            &[
                "RESERVE.RELEASE",
                "job",
                "w1",
                "TOKEN",
                &(token + 1).to_string()
            ]
        ),
        0
    );
    assert_eq!(info_static(&mut c, "job"), before, "unchanged");
    assert_eq!(pexpiretime(&mut c, "job"), expire);

    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "job", "w1"]), 1);
    assert_eq!(exists(&mut c, "job"), 0);
    assert_eq!(info(&mut c, b"job"), None);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "job", "w1"]), 0, "retried");

    // A stale release (token of the previous grant) cannot free a newer
    // grant to the same holder.
    let newer = lock(&mut c, "job", "w1", "30");
    assert!(newer > token);
    assert_eq!(
        int(
            &mut c,
            &["RESERVE.RELEASE", "job", "w1", "TOKEN", &token.to_string()]
        ),
        0
    );
    assert_eq!(exists(&mut c, "job"), 1);
    assert_eq!(
        int(
            &mut c,
            &["RESERVE.RELEASE", "job", "w1", "token", &newer.to_string()]
        ),
        1
    );
    assert_eq!(exists(&mut c, "job"), 0);
    assert_eq!(
        int(
            &mut c,
            &["RESERVE.RELEASE", "job", "w1", "TOKEN", &newer.to_string()]
        ),
        0,
        "retried with its token"
    );
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "never", "w1"]), 0);
    assert_eq!(exists(&mut c, "never"), 0);
}

// ----- RESERVE.INFO -----

#[test]
fn info_resp2_is_a_flat_array_in_order() {
    let server = Server::start();
    let mut c = server.conn();
    assert_eq!(
        call_str(&mut c, &["RESERVE.INFO", "missing"]),
        Ok(Value::Nil)
    );

    let before_ms = server_time_ms(&mut c);
    let token = lock(&mut c, "job", "w1", "30");
    let after_ms = server_time_ms(&mut c);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "job", "w1", "40"]), 1);
    let t0 = server_time_ms(&mut c);
    let fields = info(&mut c, b"job").unwrap();
    let t1 = server_time_ms(&mut c);
    let expire = pexpiretime(&mut c, "job");
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, FIELDS);
    assert_eq!(fields[0].1, Value::BulkString(b"w1".to_vec()));
    assert_eq!(fields[1].1, Value::Int(token as i64));
    // ttl_ms is the time left until the key's expiry when INFO ran.
    let ttl = as_int(&fields[2].1);
    assert!(
        ttl >= expire - t1 && ttl <= expire - t0 && ttl <= 40_000,
        "ttl_ms {ttl}, expiry {expire}, INFO between {t0} and {t1}"
    );
    let acquired = as_int(&fields[3].1);
    assert!(
        acquired >= before_ms && acquired <= after_ms,
        "acquired_at_ms {acquired} not in [{before_ms}, {after_ms}]"
    );
    assert_eq!(fields[4].1, Value::Int(1));
    assert_eq!(fields[5].1, Value::BulkString(b"exclusive".to_vec()));
    assert_eq!(fields[6].1, Value::Int(0), "no lock-delay running");
    assert_eq!(fields[7].1, Value::Int(0), "no limit");
    assert_eq!(fields[8].1, Value::Int(1), "permits used");
    assert_eq!(fields[9].1, Value::Int(0));
    assert_eq!(fields[10].1, Value::Array(vec![]));
    // One grant, the oldest's fields again plus its mode and permits.
    let Value::Array(holders) = &fields[11].1 else {
        panic!("holders: {:?}", fields[11].1)
    };
    let [Value::Array(grant)] = holders.as_slice() else {
        panic!("one grant: {holders:?}")
    };
    let grant_names: Vec<String> = grant.iter().step_by(2).map(text).collect();
    assert_eq!(grant_names, GRANT_FIELDS);
    assert_eq!(grant[1], fields[0].1);
    assert_eq!(grant[3], fields[1].1);
    assert_eq!(grant[9], Value::Int(1), "renewals");
    assert_eq!(grant[13], Value::Int(1), "permits");
}

#[test]
fn info_resp3_is_a_map() {
    let server = Server::start();
    let mut c3 = server.conn_resp3();
    let nil: Value = redis::cmd("RESERVE.INFO")
        .arg("missing")
        .query(&mut c3)
        .unwrap();
    assert_eq!(nil, Value::Nil);
    let token = lock(&mut c3, "job", "w1", "30");
    let reply: Value = redis::cmd("RESERVE.INFO")
        .arg("job")
        .query(&mut c3)
        .unwrap();
    let Value::Map(pairs) = reply else {
        panic!("RESP3 RESERVE.INFO must be a map, got {reply:?}");
    };
    let map: HashMap<String, Value> = pairs.iter().map(|(k, v)| (text(k), v.clone())).collect();
    assert_eq!(map.len(), 12, "{map:?}");
    let keys: Vec<String> = pairs.iter().map(|(k, _)| text(k)).collect();
    assert_eq!(keys, FIELDS);
    assert_eq!(map["holder"], Value::BulkString(b"w1".to_vec()));
    assert_eq!(map["mode"], Value::BulkString(b"exclusive".to_vec()));
    let Value::Array(holders) = &map["holders"] else {
        panic!("holders: {:?}", map["holders"])
    };
    assert!(
        matches!(holders.as_slice(), [Value::Map(g)] if g.len() == 7),
        "one grant as a map: {holders:?}"
    );
    assert_eq!(map["token"], Value::Int(token as i64));
    let ttl = as_int(&map["ttl_ms"]);
    assert!(ttl > 0 && ttl <= 30_000);
    assert_eq!(map["renewals"], Value::Int(0));
    assert_eq!(map["waiters"], Value::Int(0));
    assert_eq!(map["queue"], Value::Array(vec![]));
}

#[test]
fn binary_holder_round_trips() {
    let server = Server::start();
    let mut c = server.conn();
    let holder: &[u8] = b"\xff\x00w\xfe\r\n\x80 h\xc3\x28";
    let key: &[u8] = b"bin\x00key\xff";
    let token = match call(&mut c, &[b"RESERVE.LOCK", key, holder, b"30"]).unwrap() {
        Value::Int(t) => t,
        other => panic!("{other:?}"),
    };
    assert!(token >= 1);
    // A holder that differs only after the NUL byte is someone else.
    assert_eq!(
        call(&mut c, &[b"RESERVE.LOCK", key, b"\xff\x00x", b"30"]).unwrap(),
        Value::Int(0)
    );
    let fields = info(&mut c, key).unwrap();
    assert_eq!(
        *field(&fields, "holder"),
        Value::BulkString(holder.to_vec())
    );
    assert_eq!(*field(&fields, "token"), Value::Int(token));
    assert_eq!(
        call(&mut c, &[b"RESERVE.LOCK", key, holder, b"30"]).unwrap(),
        Value::Int(token),
        "re-acquire with the same bytes"
    );
    assert_eq!(
        call(&mut c, &[b"RESERVE.RENEW", key, holder, b"30"]).unwrap(),
        Value::Int(1)
    );
    assert_eq!(
        call(&mut c, &[b"RESERVE.RELEASE", key, holder]).unwrap(),
        Value::Int(1)
    );
    assert_eq!(call(&mut c, &[b"EXISTS", key]).unwrap(), Value::Int(0));
}

// ----- errors -----

#[test]
fn wrong_arity_is_redis_own_error() {
    let server = Server::start();
    let mut c = server.conn();
    let cases: &[&[&str]] = &[
        &["RESERVE.LOCK"],
        &["RESERVE.LOCK", "k"],
        &["RESERVE.LOCK", "k", "w"],
        &["RESERVE.RENEW"],
        &["RESERVE.RENEW", "k", "w"],
        &["RESERVE.RELEASE"],
        &["RESERVE.RELEASE", "k"],
        &["RESERVE.WAIT", "k", "w", "1"],
        &["RESERVE.INFO"],
        &["RESERVE.INFO", "k", "x"],
        &["RESERVE.SETSTATE", "k"],
    ];
    for argv in cases {
        assert_eq!(err(&mut c, argv), arity_error(argv[0]), "{argv:?}");
    }
    // A malformed option tail is a syntax error, as for Redis's own
    // options (SET k v EX): missing value, extra word, repeated option.
    let tails: &[&[&str]] = &[
        &["RESERVE.RENEW", "k", "w", "1", "TOKEN"],
        &["RESERVE.RENEW", "k", "w", "1", "TOKEN", "1", "x"],
        &["RESERVE.RENEW", "k", "w", "1", "TOKEN", "1", "TOKEN", "1"],
        &[
            "RESERVE.RENEW",
            "k",
            "w",
            "1",
            "TOKEN",
            "1",
            "TOKEN",
            "1",
            "TOKEN",
            "1",
        ],
        &["RESERVE.RELEASE", "k", "w", "TOKEN"],
        &["RESERVE.RELEASE", "k", "w", "TOKEN", "1", "x"],
        &["RESERVE.RELEASE", "k", "w", "TOKEN", "1", "TOKEN", "1"],
        // LOCK and WAIT take options (SHARED, LIMIT, PERMITS) there.
        &["RESERVE.LOCK", "k", "w", "1", "x"],
        &["RESERVE.WAIT", "k", "w", "1", "1", "x"],
    ];
    for argv in tails {
        assert_eq!(err(&mut c, argv), "ERR syntax error", "{argv:?}");
    }
    assert_eq!(int(&mut c, &["DBSIZE"]), 0, "nothing created");
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "k", "w", "1"]), 0);
}

#[test]
fn invalid_ttls_and_timeouts() {
    let server = Server::start();
    let mut c = server.conn();
    lock(&mut c, "held", "w1", "30");
    let bad = [
        "abc",
        "0",
        "0.0",
        "0.000",
        "-1",
        "-0.5",
        "+1",
        "1e3",
        "1E3",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "infinity",
        " 1",
        "1 ",
        "1x",
        "1.5s",
        "0x10",
        "1..2",
        "1.2.3",
        ".",
        "",
        "99999999999999999999",
        "18446744073709551616",
        "2592001",
        "2592000.001",
    ];
    for ttl in bad {
        assert_eq!(
            err(&mut c, &["RESERVE.LOCK", "k", "w", ttl]),
            "ERR invalid ttl",
            "LOCK ttl {ttl:?}"
        );
        assert_eq!(
            err(&mut c, &["RESERVE.RENEW", "held", "w1", ttl]),
            "ERR invalid ttl",
            "RENEW ttl {ttl:?}"
        );
        assert_eq!(
            err(&mut c, &["RESERVE.WAIT", "k", "w", ttl, "1"]),
            "ERR invalid ttl",
            "WAIT ttl {ttl:?}"
        );
    }
    assert_eq!(
        call(&mut c, &[b"RESERVE.LOCK", b"k", b"w", b"1\x00"]),
        Err("ERR invalid ttl".to_string())
    );
    for timeout in [
        "abc",
        "-1",
        "-0.001",
        "1e3",
        "nan",
        "inf",
        " 1",
        "1x",
        "99999999999999999999",
    ] {
        assert_eq!(
            err(&mut c, &["RESERVE.WAIT", "k", "w", "1", timeout]),
            "ERR invalid timeout",
            "WAIT timeout {timeout:?}"
        );
    }
    assert_eq!(
        exists(&mut c, "k"),
        0,
        "nothing created by a failed command"
    );
    // The held reservation was not touched by the failed RENEWs.
    let fields = info(&mut c, b"held").unwrap();
    assert_eq!(as_int(field(&fields, "renewals")), 0);
    // The boundary itself is accepted.
    assert!(lock(&mut c, "max", "w", "2592000") >= 1);
    assert!(lock(&mut c, "ms", "w", "0.001") >= 1);
}

#[test]
fn invalid_holders() {
    let server = Server::start();
    let mut c = server.conn();
    for argv in [
        &["RESERVE.LOCK", "k", "", "1"][..],
        &["RESERVE.RENEW", "k", "", "1"],
        &["RESERVE.RELEASE", "k", ""],
        &["RESERVE.WAIT", "k", "", "1", "1"],
    ] {
        assert_eq!(err(&mut c, argv), "ERR invalid holder", "{argv:?}");
    }
    // The default limit is 512 bytes.
    let h512 = "h".repeat(512);
    let h513 = "h".repeat(513);
    assert!(lock(&mut c, "k512", &h512, "30") >= 1);
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "k513", &h513, "30"]),
        "ERR invalid holder"
    );

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("reservation.max-holder-len")
        .arg("8")
        .query(&mut c)
        .unwrap();
    assert!(lock(&mut c, "k8", "12345678", "30") >= 1);
    // The setting bounds new holders: LOCK and WAIT that would create one.
    for argv in [
        &["RESERVE.LOCK", "k9", "123456789", "1"][..],
        &["RESERVE.WAIT", "k9", "123456789", "1", "1"],
    ] {
        assert_eq!(err(&mut c, argv), "ERR invalid holder", "{argv:?}");
    }
    // RENEW and RELEASE only name a holder: a longer one is simply not
    // the holder here.
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "k8", "123456789", "1"]), 0);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k8", "123456789"]), 0);
    assert_eq!(exists(&mut c, "k9"), 0);
    assert_eq!(exists(&mut c, "k513"), 0);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k8", "12345678"]), 1);
    // Past the hard cap (1 MiB, the most the setting allows) every
    // command refuses the holder.
    let huge = "h".repeat((1 << 20) + 1);
    for argv in [
        &["RESERVE.LOCK", "k", &huge, "1"][..],
        &["RESERVE.RENEW", "k", &huge, "1"],
        &["RESERVE.RELEASE", "k", &huge],
        &["RESERVE.WAIT", "k", &huge, "1", "1"],
    ] {
        assert_eq!(err(&mut c, argv), "ERR invalid holder", "{:?}", argv[0]);
    }
}

#[test]
fn lowering_max_holder_len_strands_no_current_holder() {
    let server = Server::start();
    let mut c = server.conn();
    let holder = "host-1-worker-12345";
    let token = lock(&mut c, "job", holder, "30");
    assert_eq!(
        config_set(&mut c, "reservation.max-holder-len", "4"),
        Ok(Value::Okay)
    );
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "job", holder, "30"]), 1);
    assert_eq!(
        lock(&mut c, "job", holder, "30"),
        token,
        "a re-acquire creates no new holder"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "other", holder, "30"]),
        "ERR invalid holder",
        "a new holder is checked"
    );
    let t = token.to_string();
    assert_eq!(
        int(&mut c, &["RESERVE.RELEASE", "job", holder, "TOKEN", &t]),
        1
    );
}

#[test]
fn token_option_errors() {
    let server = Server::start();
    let mut c = server.conn();
    let token = lock(&mut c, "job", "w1", "30");
    for bad in [
        "abc",
        "0",
        "-1",
        "",
        " 1",
        "1x",
        "1.5",
        "18446744073709551616",
    ] {
        assert_eq!(
            err(&mut c, &["RESERVE.RENEW", "job", "w1", "30", "TOKEN", bad]),
            "ERR invalid token",
            "RENEW TOKEN {bad:?}"
        );
        assert_eq!(
            err(&mut c, &["RESERVE.RELEASE", "job", "w1", "TOKEN", bad]),
            "ERR invalid token",
            "RELEASE TOKEN {bad:?}"
        );
    }
    for name in ["TOKENS", "TOK", "FOO", "1", "NX"] {
        let t = token.to_string();
        assert_eq!(
            err(&mut c, &["RESERVE.RENEW", "job", "w1", "30", name, &t]),
            "ERR syntax error",
            "RENEW option {name:?}"
        );
        assert_eq!(
            err(&mut c, &["RESERVE.RELEASE", "job", "w1", name, &t]),
            "ERR syntax error",
            "RELEASE option {name:?}"
        );
    }
    // u64::MAX is a well-formed token that simply does not match.
    assert_eq!(
        int(
            &mut c,
            &[
                "RESERVE.RELEASE",
                "job",
                "w1",
                "TOKEN",
                "18446744073709551615"
            ]
        ),
        0
    );
    let fields = info(&mut c, b"job").unwrap();
    assert_eq!(as_int(field(&fields, "token")) as u64, token, "still held");
    assert_eq!(as_int(field(&fields, "renewals")), 0);
}

#[test]
fn wrongtype_on_other_kinds_of_keys() {
    let server = Server::start();
    let mut c = server.conn();
    int(&mut c, &["HSET", "hash", "f", "v"]);
    int(&mut c, &["RPUSH", "list", "a"]);
    int(&mut c, &["SADD", "set", "a"]);
    int(&mut c, &["ZADD", "zset", "1", "a"]);
    for key in ["hash", "list", "set", "zset"] {
        for argv in [
            &["RESERVE.LOCK", key, "w", "30"][..],
            &["RESERVE.RENEW", key, "w", "30"],
            &["RESERVE.RENEW", key, "w", "30", "TOKEN", "1"],
            &["RESERVE.RELEASE", key, "w"],
            &["RESERVE.RELEASE", key, "w", "TOKEN", "1"],
            &["RESERVE.INFO", key],
            // Never blocks: WRONGTYPE is answered at once.
            &["RESERVE.WAIT", key, "w", "30", "0"],
        ] {
            assert_eq!(err(&mut c, argv), WRONGTYPE, "{argv:?}");
        }
    }
    assert_eq!(
        call_str(&mut c, &["HGET", "hash", "f"]).unwrap(),
        Value::BulkString(b"v".to_vec()),
        "the hash is untouched"
    );
    assert_eq!(int(&mut c, &["LLEN", "list"]), 1);
    assert_eq!(int(&mut c, &["PTTL", "hash"]), -1, "no expiry was set");
}

// ----- TTL and tokens -----

#[test]
fn ttl_is_enforced() {
    let server = Server::start();
    let mut c = server.conn();
    // Both in one MULTI, so the contended LOCK surely runs before expiry.
    let (first, contended): (u64, u64) = redis::pipe()
        .atomic()
        .cmd("RESERVE.LOCK")
        .arg("short")
        .arg("w1")
        .arg("0.2")
        .cmd("RESERVE.LOCK")
        .arg("short")
        .arg("w2")
        .arg("5")
        .query(&mut c)
        .unwrap();
    assert!(first >= 1);
    assert_eq!(contended, 0, "held until it expires");
    wait_until(DEADLINE, "the 0.2 s reservation to expire", || {
        exists(&mut c, "short") == 0
    });
    assert_eq!(info(&mut c, b"short"), None);
    assert_eq!(
        int(&mut c, &["RESERVE.RENEW", "short", "w1", "5"]),
        0,
        "an expired reservation is not renewed"
    );
    assert_eq!(exists(&mut c, "short"), 0, "nor re-created");
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "short", "w1"]), 0);
    let stats = reservation_info(&mut c);
    assert_eq!(stats["expirations"], 1, "{stats:?}");
    assert_eq!(stats["held"], 0, "{stats:?}");
    let second = lock(&mut c, "short", "w2", "5");
    assert!(second > first, "a new grant takes a new token");
    let fields = info(&mut c, b"short").unwrap();
    assert_eq!(text(field(&fields, "holder")), "w2");
}

#[test]
fn tokens_strictly_increase_across_release_del_and_flushall() {
    let server = Server::start();
    let mut c = server.conn();
    let mut tokens = Vec::new();
    for round in 0..4 {
        let key = format!("k{round}");
        tokens.push(lock(&mut c, &key, "w", "30"));
        assert_eq!(int(&mut c, &["RESERVE.RELEASE", &key, "w"]), 1);
        tokens.push(lock(&mut c, &key, "w", "30"));
        assert_eq!(int(&mut c, &["DEL", &key]), 1);
        tokens.push(lock(&mut c, &key, "w", "30"));
        tokens.push(lock(&mut c, "other", "w", "30"));
        assert_eq!(lock(&mut c, "other", "w", "30"), *tokens.last().unwrap());
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        tokens.push(lock(&mut c, &key, "w", "30"));
        assert_eq!(int(&mut c, &["UNLINK", &key]), 1);
        let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
        tokens.push(lock(&mut c, &key, "w2", "30"));
    }
    for pair in tokens.windows(2) {
        assert!(pair[1] > pair[0], "tokens not increasing: {tokens:?}");
    }
    let stats = reservation_info(&mut c);
    assert_eq!(stats["last_token"], *tokens.last().unwrap());
}

// ----- legacy plain-string reservations (SPEC section 7) -----

#[test]
fn legacy_string_reservations() {
    let server = Server::start();
    let mut c = server.conn();
    let _: () = redis::cmd("SET")
        .arg("reservation-x")
        .arg("host-w-1")
        .arg("EX")
        .arg(30)
        .query(&mut c)
        .unwrap();
    let expire = pexpiretime(&mut c, "reservation-x");
    assert_eq!(lock(&mut c, "reservation-x", "host-w-2", "10"), 0);
    assert_eq!(
        lock(&mut c, "reservation-x", "host-w-1", "10"),
        0,
        "LOCK answers held"
    );
    assert_eq!(
        call_str(&mut c, &["GET", "reservation-x"]).unwrap(),
        Value::BulkString(b"host-w-1".to_vec()),
        "LOCK leaves the string alone"
    );
    assert_eq!(
        text(&call_str(&mut c, &["TYPE", "reservation-x"]).unwrap()),
        "string"
    );
    assert_eq!(
        pexpiretime(&mut c, "reservation-x"),
        expire,
        "expiry untouched"
    );

    let t0 = server_time_ms(&mut c);
    let fields = info(&mut c, b"reservation-x").unwrap();
    let t1 = server_time_ms(&mut c);
    assert_eq!(text(field(&fields, "holder")), "host-w-1");
    assert_eq!(as_int(field(&fields, "token")), 0);
    let ttl = as_int(field(&fields, "ttl_ms"));
    assert!(
        ttl >= expire - t1 && ttl <= expire - t0,
        "ttl_ms {ttl}, expiry {expire}"
    );

    assert_eq!(
        int(&mut c, &["RESERVE.RENEW", "reservation-x", "other", "100"]),
        0
    );
    assert_eq!(pexpiretime(&mut c, "reservation-x"), expire, "not renewed");
    assert_expiry_set_by(&mut c, "reservation-x", 100_000, |c| {
        assert_eq!(
            int(c, &["RESERVE.RENEW", "reservation-x", "host-w-1", "100"]),
            1
        );
    });
    assert_eq!(
        call_str(&mut c, &["GET", "reservation-x"]).unwrap(),
        Value::BulkString(b"host-w-1".to_vec())
    );

    assert_eq!(
        int(&mut c, &["RESERVE.RELEASE", "reservation-x", "other"]),
        0
    );
    assert_eq!(exists(&mut c, "reservation-x"), 1);
    assert_eq!(
        int(&mut c, &["RESERVE.RELEASE", "reservation-x", "host-w-1"]),
        1
    );
    assert_eq!(exists(&mut c, "reservation-x"), 0);
    assert_eq!(
        int(&mut c, &["RESERVE.RELEASE", "reservation-x", "host-w-1"]),
        0
    );
    // Once gone, the key is free for a module reservation.
    assert!(lock(&mut c, "reservation-x", "host-w-2", "10") >= 1);
    assert_eq!(
        text(&call_str(&mut c, &["TYPE", "reservation-x"]).unwrap()),
        "rsrv-lock"
    );
}

// ----- configuration -----

fn config_set(c: &mut Connection, name: &str, value: &str) -> Result<Value, String> {
    call_str(c, &["CONFIG", "SET", name, value])
}

#[test]
fn config_get_and_set() {
    let server = Server::start();
    let mut c = server.conn();
    assert_eq!(config_get(&mut c, "reservation.max-ttl"), "2592000");
    assert_eq!(config_get(&mut c, "reservation.max-holder-len"), "512");
    assert_eq!(config_get(&mut c, "reservation.max-waiters"), "100000");
    let all: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("reservation.*")
        .query(&mut c)
        .unwrap();
    for name in [
        "reservation.max-ttl",
        "reservation.max-holder-len",
        "reservation.max-waiters",
    ] {
        assert!(all.iter().any(|x| x == name), "{name} not in {all:?}");
    }

    assert_eq!(
        config_set(&mut c, "reservation.max-ttl", "10"),
        Ok(Value::Okay)
    );
    assert_eq!(config_get(&mut c, "reservation.max-ttl"), "10");
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "k", "w", "11"]),
        "ERR invalid ttl"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "k", "w", "10.001"]),
        "ERR invalid ttl"
    );
    assert!(lock(&mut c, "k", "w", "10") >= 1);
    assert_eq!(
        err(&mut c, &["RESERVE.RENEW", "k", "w", "11"]),
        "ERR invalid ttl"
    );
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "k", "w", "9.5"]), 1);

    assert_eq!(
        config_set(&mut c, "reservation.max-holder-len", "3"),
        Ok(Value::Okay)
    );
    assert_eq!(config_get(&mut c, "reservation.max-holder-len"), "3");
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "h", "abcd", "1"]),
        "ERR invalid holder"
    );
    assert!(lock(&mut c, "h", "abc", "1") >= 1);

    assert_eq!(
        config_set(&mut c, "reservation.max-waiters", "7"),
        Ok(Value::Okay)
    );
    assert_eq!(config_get(&mut c, "reservation.max-waiters"), "7");

    for (name, value) in [
        ("reservation.max-ttl", "0"),
        ("reservation.max-ttl", "-1"),
        ("reservation.max-ttl", "abc"),
        ("reservation.max-ttl", "3153600001"),
        ("reservation.max-holder-len", "0"),
        ("reservation.max-holder-len", "1048577"),
        ("reservation.max-waiters", "0"),
        ("reservation.max-waiters", "10000001"),
    ] {
        let e = config_set(&mut c, name, value).expect_err("out of range");
        assert!(
            e.starts_with("ERR ") && e.contains(name),
            "CONFIG SET {name} {value}: {e}"
        );
    }
    assert_eq!(config_get(&mut c, "reservation.max-ttl"), "10", "unchanged");
    assert_eq!(config_get(&mut c, "reservation.max-holder-len"), "3");
    assert_eq!(config_get(&mut c, "reservation.max-waiters"), "7");
    // The bounds themselves are accepted.
    assert_eq!(
        config_set(&mut c, "reservation.max-ttl", "3153600000"),
        Ok(Value::Okay)
    );
    assert_eq!(
        config_set(&mut c, "reservation.max-holder-len", "1048576"),
        Ok(Value::Okay)
    );
    assert_eq!(
        config_set(&mut c, "reservation.max-waiters", "1"),
        Ok(Value::Okay)
    );
}

#[test]
fn loadmodule_arguments_set_configs() {
    let server = Server::with(
        Config::default()
            .module_arg("max-ttl")
            .module_arg("10")
            .module_arg("reservation.max-holder-len")
            .module_arg("4"),
    );
    let mut c = server.conn();
    assert_eq!(config_get(&mut c, "reservation.max-ttl"), "10");
    assert_eq!(config_get(&mut c, "reservation.max-holder-len"), "4");
    assert_eq!(config_get(&mut c, "reservation.max-waiters"), "100000");
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "k", "w", "11"]),
        "ERR invalid ttl"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "k", "wwwww", "1"]),
        "ERR invalid holder"
    );
    assert!(lock(&mut c, "k", "wwww", "10") >= 1);
}

#[test]
fn bad_module_arguments_refuse_to_start() {
    for (args, what) in [
        (&["bogus", "1"][..], "bogus"),
        (&["max-ttl"][..], "name value pairs"),
        (&["max-ttl", "0"][..], "max-ttl"),
        (&["max-ttl", "ten"][..], "max-ttl"),
        (&["max-holder-len", "1048577"][..], "max-holder-len"),
    ] {
        let mut config = Config::default();
        for a in args {
            config = config.module_arg(a);
        }
        match Server::try_with(config) {
            Ok(_) => panic!("a server started with module args {args:?}"),
            Err(e) => assert!(e.contains(what), "module args {args:?}: {e}"),
        }
    }
}

// ----- INFO reservation -----

#[test]
fn info_reservation_counters() {
    let server = Server::start();
    let mut c = server.conn();
    let base = reservation_info(&mut c);
    for name in [
        "held",
        "waiters",
        "grants",
        "reacquires",
        "contended",
        "renewals",
        "renew_failures",
        "releases",
        "release_failures",
        "handoffs",
        "expirations",
        "wait_timeouts",
        "waits_blocked",
        "wrongtype_waiters",
        "last_token",
        "grants_held",
    ] {
        assert_eq!(base.get(name), Some(&0), "fresh server: {name} in {base:?}");
    }

    let mut expected = base.clone();
    expected.remove("grants_held");
    // Only mutexes here: each holds one grant.
    fn check(c: &mut Connection, expected: &HashMap<String, u64>, step: &str) {
        let mut got = reservation_info(c);
        let held = got.get("held").copied();
        assert_eq!(got.remove("grants_held"), held, "after {step}: grants held");
        assert_eq!(&got, expected, "after {step}");
    }

    let t1 = lock(&mut c, "a", "w1", "30");
    *expected.get_mut("grants").unwrap() += 1;
    *expected.get_mut("held").unwrap() = 1;
    *expected.get_mut("last_token").unwrap() = t1;
    check(&mut c, &expected, "LOCK a w1");

    assert_eq!(lock(&mut c, "a", "w1", "30"), t1);
    *expected.get_mut("reacquires").unwrap() += 1;
    check(&mut c, &expected, "re-LOCK a w1");

    assert_eq!(lock(&mut c, "a", "w2", "30"), 0);
    *expected.get_mut("contended").unwrap() += 1;
    check(&mut c, &expected, "LOCK a w2");

    assert_eq!(int(&mut c, &["RESERVE.RENEW", "a", "w1", "30"]), 1);
    *expected.get_mut("renewals").unwrap() += 1;
    check(&mut c, &expected, "RENEW a w1");

    assert_eq!(int(&mut c, &["RESERVE.RENEW", "a", "w2", "30"]), 0);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "none", "w2", "30"]), 0);
    *expected.get_mut("renew_failures").unwrap() += 2;
    check(&mut c, &expected, "RENEW a w2, RENEW none");

    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "a", "w2"]), 0);
    *expected.get_mut("release_failures").unwrap() += 1;
    check(&mut c, &expected, "RELEASE a w2");

    let t2 = lock(&mut c, "b", "w3", "30");
    *expected.get_mut("grants").unwrap() += 1;
    *expected.get_mut("held").unwrap() = 2;
    *expected.get_mut("last_token").unwrap() = t2;
    check(&mut c, &expected, "LOCK b w3");

    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "a", "w1"]), 1);
    *expected.get_mut("releases").unwrap() += 1;
    *expected.get_mut("held").unwrap() = 1;
    check(&mut c, &expected, "RELEASE a w1");

    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "a", "w1"]), 0);
    *expected.get_mut("release_failures").unwrap() += 1;
    check(&mut c, &expected, "RELEASE a w1 again");

    // Failed commands (bad arguments) count nothing.
    err(&mut c, &["RESERVE.LOCK", "c", "w", "0"]);
    err(&mut c, &["RESERVE.RENEW", "b", "w3", "x"]);
    check(&mut c, &expected, "invalid commands");
}

// ----- command metadata -----

fn command_info(c: &mut Connection, name: &str) -> Vec<Value> {
    let reply = call_str(c, &["COMMAND", "INFO", name]).unwrap();
    let Value::Array(mut entries) = reply else {
        panic!("COMMAND INFO {name}: {reply:?}");
    };
    assert_eq!(entries.len(), 1);
    match entries.remove(0) {
        Value::Array(fields) => fields,
        other => panic!("COMMAND INFO {name}: {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().map(text).collect(),
        other => panic!("not an array: {other:?}"),
    }
}

#[test]
fn command_info_getkeys_and_docs() {
    let server = Server::start();
    let mut c = server.conn();
    let expect = [
        (
            "RESERVE.LOCK",
            -4,
            &["write", "denyoom"][..],
            &["readonly", "blocking"][..],
        ),
        (
            "RESERVE.RENEW",
            -4,
            &["write", "denyoom"],
            &["readonly", "blocking"],
        ),
        (
            "RESERVE.RELEASE",
            -3,
            &["write", "denyoom"],
            &["readonly", "blocking"],
        ),
        (
            "RESERVE.WAIT",
            -5,
            &["write", "denyoom", "blocking"],
            &["readonly"],
        ),
        (
            "RESERVE.INFO",
            2,
            &["readonly"],
            &["write", "denyoom", "blocking"],
        ),
    ];
    for (name, arity, has, lacks) in expect {
        let fields = command_info(&mut c, name);
        assert_eq!(text(&fields[0]).to_uppercase(), name);
        assert_eq!(as_int(&fields[1]), arity, "{name} arity");
        let flags = strings(&fields[2]);
        for f in has {
            assert!(
                flags.iter().any(|x| x == f),
                "{name} lacks flag {f}: {flags:?}"
            );
        }
        for f in lacks {
            assert!(
                !flags.iter().any(|x| x == f),
                "{name} has flag {f}: {flags:?}"
            );
        }
        assert_eq!(
            (as_int(&fields[3]), as_int(&fields[4]), as_int(&fields[5])),
            (1, 1, 1),
            "{name} first/last/step key"
        );
    }

    for argv in [
        &["COMMAND", "GETKEYS", "RESERVE.LOCK", "job", "w", "1"][..],
        &[
            "COMMAND",
            "GETKEYS",
            "RESERVE.RENEW",
            "job",
            "w",
            "1",
            "TOKEN",
            "5",
        ],
        &["COMMAND", "GETKEYS", "RESERVE.RELEASE", "job", "w"],
        &["COMMAND", "GETKEYS", "RESERVE.WAIT", "job", "w", "1", "0"],
        &["COMMAND", "GETKEYS", "RESERVE.INFO", "job"],
        &[
            "COMMAND",
            "GETKEYS",
            "RESERVE.LOCK",
            "job",
            "w",
            "1",
            "LIMIT",
            "3",
        ],
        &[
            "COMMAND",
            "GETKEYS",
            "RESERVE.WAIT",
            "job",
            "w",
            "1",
            "0",
            "SHARED",
        ],
    ] {
        let keys = strings(&call_str(&mut c, argv).unwrap());
        assert_eq!(keys, ["job"], "{argv:?}");
    }

    for name in [
        "RESERVE.LOCK",
        "RESERVE.RENEW",
        "RESERVE.RELEASE",
        "RESERVE.WAIT",
        "RESERVE.INFO",
        "RESERVE.OBSERVE",
    ] {
        let reply = call_str(&mut c, &["COMMAND", "DOCS", name]).unwrap();
        let Value::Array(top) = reply else {
            panic!("COMMAND DOCS {name}: {reply:?}");
        };
        assert_eq!(top.len(), 2, "COMMAND DOCS {name}: {top:?}");
        assert_eq!(text(&top[0]).to_uppercase(), name);
        let Value::Array(doc) = &top[1] else {
            panic!("COMMAND DOCS {name}: {top:?}");
        };
        let summary = doc
            .chunks(2)
            .find(|p| text(&p[0]) == "summary")
            .map(|p| text(&p[1]))
            .unwrap_or_default();
        assert!(!summary.trim().is_empty(), "{name} has no summary: {doc:?}");
        // LOCK and WAIT document their options, so redis-cli hints them.
        if name == "RESERVE.LOCK" || name == "RESERVE.WAIT" {
            let args = format!("{doc:?}");
            for option in ["SHARED", "LIMIT", "PERMITS", "DELAY"] {
                assert!(args.contains(option), "{name} docs lack {option}: {args}");
            }
        }
    }
}

// ----- hostile input -----

const KEY_POOL: [&str; 5] = [
    "pool:res",
    "pool:str",
    "pool:hash",
    "pool:list",
    "pool:free",
];

fn random_arg(rng: &mut StdRng) -> Vec<u8> {
    const EDGES: &[&str] = &[
        "0",
        "1",
        "-1",
        "0.001",
        "0.0001",
        ".5",
        "1.",
        ".",
        "30",
        "2592000",
        "2592001",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999",
        "nan",
        "-nan",
        "inf",
        "-inf",
        "1e3",
        "1e-3",
        "0x1f",
        "TOKEN",
        "token",
        "TOKENS",
        "SHARED",
        "shared",
        "LIMIT",
        "PERMITS",
        "DELAY",
        "3600001",
        "",
        " ",
        "\0",
        "1\0",
        "\x00\x31",
    ];
    match rng.gen_range(0..100) {
        0..=24 => EDGES[rng.gen_range(0..EDGES.len())].as_bytes().to_vec(),
        25..=44 => KEY_POOL[rng.gen_range(0..KEY_POOL.len())]
            .as_bytes()
            .to_vec(),
        45..=59 => {
            let len = rng.gen_range(1..30);
            (0..len)
                .map(|_| b"0123456789.-+eE"[rng.gen_range(0..15)])
                .collect()
        }
        60..=99 if rng.gen_ratio(1, 200) => {
            // Up to 1 MB: digits (a huge "number") or random bytes.
            let len = rng.gen_range(1000..=1 << 20);
            if rng.gen_bool(0.5) {
                vec![b'9'; len]
            } else {
                (0..len).map(|_| rng.gen()).collect()
            }
        }
        _ => {
            let len = rng.gen_range(0..24);
            (0..len).map(|_| rng.gen()).collect()
        }
    }
}

#[test]
fn hostile_argument_sweep_never_crashes() {
    let mut server = Server::start();
    let mut c = server.conn();
    // A blocked reply would hang the sweep: fail instead.
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let setup = |c: &mut Connection| {
        call_str(
            c,
            &["DEL", "pool:res", "pool:str", "pool:hash", "pool:list"],
        )
        .unwrap();
        call_str(c, &["RESERVE.LOCK", "pool:res", "w", "60"]).unwrap();
        call_str(c, &["SET", "pool:str", "legacy", "EX", "60"]).unwrap();
        call_str(c, &["HSET", "pool:hash", "f", "v"]).unwrap();
        call_str(c, &["RPUSH", "pool:list", "a"]).unwrap();
    };
    setup(&mut c);
    let commands = [
        "RESERVE.LOCK",
        "RESERVE.RENEW",
        "RESERVE.RELEASE",
        "RESERVE.WAIT",
        "RESERVE.INFO",
        "RESERVE.SETSTATE",
        "RESERVE.SETGRANTS",
        "RESERVE.GUARD",
        "RESERVE.LOCKALL",
        "RESERVE.WAITALL",
        "RESERVE.OBSERVE",
    ];
    let mut rng = StdRng::seed_from_u64(0x5EED_0F2E);
    let (mut values, mut errors) = (0u32, 0u32);
    for name in commands {
        for i in 0..2000 {
            let n = rng.gen_range(0..=8);
            let mut args: Vec<Vec<u8>> = (0..n).map(|_| random_arg(&mut rng)).collect();
            if (name == "RESERVE.WAITALL" || name == "RESERVE.OBSERVE") && args.len() > 2 {
                // Never a blocking timeout: the keys may be held, the
                // observed grant may not change.
                args[2] = b"0.01".to_vec();
            }
            if name == "RESERVE.WAIT" {
                // WAIT must not block the sweep: its key is either free (so
                // a valid WAIT grants at once) or a hash (WRONGTYPE).
                if let Some(key) = args.first() {
                    call(&mut c, &[b"DEL", key]).unwrap();
                    if rng.gen_bool(0.2) {
                        call(&mut c, &[b"HSET", key, b"f", b"v"]).unwrap();
                    }
                }
            }
            let mut argv: Vec<&[u8]> = vec![name.as_bytes()];
            argv.extend(args.iter().map(Vec::as_slice));
            match call(&mut c, &argv) {
                Ok(_) => values += 1,
                Err(e) => {
                    errors += 1;
                    let shown: Vec<String> = args
                        .iter()
                        .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into_owned())
                        .collect();
                    assert!(
                        (e.starts_with("ERR ")
                            || e.starts_with("WRONGTYPE ")
                            || (name == "RESERVE.GUARD" && e.starts_with("FENCED ")))
                            && !e.contains("internal error")
                            && !e.contains("re-entrant"),
                        "{name} #{i} {shown:?}: {e}\n{}",
                        server.log()
                    );
                }
            }
            if i % 500 == 0 {
                setup(&mut c);
            }
        }
    }
    assert!(values > 0 && errors > 0, "{values} values, {errors} errors");
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    assert!(server.is_alive(), "server died:\n{}", server.log());
    let mut fresh = server.conn();
    let pong: String = redis::cmd("PING").query(&mut fresh).unwrap();
    assert_eq!(pong, "PONG");
    assert!(
        !server.log().contains("panicked"),
        "a command panicked:\n{}",
        server.log()
    );
}
