//! SPEC section 6 (RDB, AOF, AOF rewrite) and the data type's place among
//! Redis's own key commands: every reservation comes back from disk with
//! its holder, token, acquired-at, renewals and absolute expiry; tokens
//! never repeat across a restart; DUMP/RESTORE, COPY, RENAME, MEMORY USAGE,
//! SCAN TYPE and DEBUG DIGEST-VALUE work the usual way.

use std::collections::BTreeSet;

use testkit::cmd::{call, int, lock, lock_bytes, ok};
use testkit::dump::{dump, forge_token, payload_value, with_footer};
use testkit::info::{snapshot, Snapshot};
use testkit::redis::{self, Connection, Value};
use testkit::{reservation_info, rewrite_aof, wait_until, Config, Server, DEADLINE};

// ----- helpers -----

fn snapshots(c: &mut Connection, keys: &[Vec<u8>]) -> Vec<(String, Option<Snapshot>)> {
    keys.iter()
        .map(|k| (String::from_utf8_lossy(k).into_owned(), snapshot(c, k)))
        .collect()
}

fn max_token(snaps: &[(String, Option<Snapshot>)]) -> u64 {
    snaps
        .iter()
        .filter_map(|(_, s)| s.as_ref().map(|s| s.token as u64))
        .max()
        .unwrap_or(0)
}

fn dbsize(c: &mut Connection) -> i64 {
    int(c, &["DBSIZE"])
}

// ----- RDB -----

#[test]
fn rdb_round_trip_keeps_every_field_and_the_absolute_expiry() {
    let mut server = Server::start();
    let mut c = server.conn();
    let binary_holder: &[u8] = "работник-ü-\u{1F512}".as_bytes();
    let mut holder2 = binary_holder.to_vec();
    holder2.extend_from_slice(b"\xff\x00\xfe");

    lock(&mut c, "plain", "w1", "60");
    lock(&mut c, "renewed", "w2", "60");
    for _ in 0..3 {
        assert_eq!(int(&mut c, &["RESERVE.RENEW", "renewed", "w2", "120"]), 1);
    }
    lock_bytes(&mut c, "ключ-ü".as_bytes(), &holder2, "90");
    lock(&mut c, "persisted", "w4", "60");
    assert_eq!(int(&mut c, &["PERSIST", "persisted"]), 1);
    ok(
        &mut c,
        &["SET", "reservation-legacy", "host-w-1", "EX", "100"],
    );
    int(&mut c, &["HSET", "hash", "f", "v"]);

    let keys: Vec<Vec<u8>> = ["plain", "renewed", "ключ-ü", "persisted"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    let before = snapshots(&mut c, &keys);
    assert_eq!(before[1].1.as_ref().unwrap().renewals, 3);
    assert_eq!(before[2].1.as_ref().unwrap().holder, holder2);
    assert_eq!(before[3].1.as_ref().unwrap().expire_at_ms, -1);
    let legacy_expiry = int(&mut c, &["PEXPIRETIME", "reservation-legacy"]);
    let highest = max_token(&before);

    ok(&mut c, &["SAVE"]);
    server.restart();
    let mut c = server.conn();

    assert_eq!(snapshots(&mut c, &keys), before, "after SAVE + restart");
    assert_eq!(dbsize(&mut c), 6);
    assert_eq!(
        int(&mut c, &["PEXPIRETIME", "reservation-legacy"]),
        legacy_expiry
    );
    let stats = reservation_info(&mut c);
    assert_eq!(stats["held"], 4, "{stats:?}");
    assert!(stats["last_token"] >= highest, "{stats:?}");
    // The loaded reservations behave: holders keep them, others do not.
    assert_eq!(
        lock(&mut c, "renewed", "w2", "60") as i64,
        before[1].1.as_ref().unwrap().token
    );
    assert_eq!(int(&mut c, &["RESERVE.LOCK", "plain", "w9", "60"]), 0);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "plain", "w1"]), 1);
    let next = lock(&mut c, "fresh", "w5", "60");
    assert!(next > highest, "token {next} after restart <= {highest}");
}

#[test]
fn last_token_is_saved_even_without_keys() {
    let mut server = Server::start();
    let mut c = server.conn();
    // Plain case: take tokens, drop every key, save, restart.
    let mut last = 0;
    for i in 0..3 {
        last = lock(&mut c, &format!("k{i}"), "w", "60");
    }
    ok(&mut c, &["FLUSHALL"]);
    ok(&mut c, &["SAVE"]);
    server.restart();
    let mut c = server.conn();
    assert_eq!(dbsize(&mut c), 0);
    assert!(reservation_info(&mut c)["last_token"] >= last);
    let next = lock(&mut c, "k", "w", "60");
    assert!(next > last, "token {next} after restart <= {last}");

    // A counter far ahead of the clock (as after a failover from a server
    // whose tokens ran ahead) only survives through the aux field: raise it
    // by restoring a reservation whose token is ~12 days of clock ahead.
    let payload = dump(&mut c, "k");
    let ahead = next + (1 << 40);
    let forged = forge_token(&payload, next, ahead);
    assert_eq!(
        call(&mut c, &[b"RESTORE", b"forged", b"0", &forged]),
        Ok(Value::Okay)
    );
    assert_eq!(snapshot(&mut c, b"forged").unwrap().token as u64, ahead);
    let after_restore = lock(&mut c, "k2", "w", "60");
    assert!(
        after_restore > ahead,
        "a RESTOREd token must raise last_token: got {after_restore}, restored {ahead}"
    );
    ok(&mut c, &["FLUSHALL"]);
    ok(&mut c, &["SAVE"]);
    server.restart();
    let mut c = server.conn();
    assert_eq!(dbsize(&mut c), 0);
    assert!(
        reservation_info(&mut c)["last_token"] >= after_restore,
        "last_token lost by SAVE + restart"
    );
    let next = lock(&mut c, "k", "w", "60");
    assert!(
        next > after_restore,
        "token {next} after restart <= {after_restore}: last_token not saved as aux data"
    );
}

// ----- AOF -----

/// A workload of grants, re-grants, renewals and releases. Returns the keys
/// it touched (whatever their end state) and the highest token issued.
fn aof_workload(c: &mut Connection, prefix: &str) -> (Vec<Vec<u8>>, u64) {
    let k = |name: &str| format!("{prefix}{name}");
    let mut top = 0u64;
    let mut take = |t: u64| {
        top = top.max(t);
        t
    };
    take(lock(c, &k("a"), "w1", "60"));

    let tb = take(lock(c, &k("b"), "w2", "60"));
    assert_eq!(int(c, &["RESERVE.RENEW", &k("b"), "w2", "120"]), 1);
    assert_eq!(
        int(
            c,
            &[
                "RESERVE.RENEW",
                &k("b"),
                "w2",
                "90",
                "TOKEN",
                &tb.to_string()
            ]
        ),
        1
    );
    assert_eq!(int(c, &["RESERVE.RENEW", &k("b"), "other", "500"]), 0);

    take(lock(c, &k("c"), "w3", "60"));
    assert_eq!(int(c, &["RESERVE.RELEASE", &k("c"), "w3"]), 1);

    let td = take(lock(c, &k("d"), "w4", "60"));
    assert_eq!(lock(c, &k("d"), "w4", "100"), td, "re-acquire");

    let te = take(lock(c, &k("e"), "w5", "60"));
    assert_eq!(
        int(
            c,
            &["RESERVE.RELEASE", &k("e"), "w5", "TOKEN", &te.to_string()]
        ),
        1
    );
    take(lock(c, &k("e"), "w6", "70"));

    take(lock(c, &k("f"), "w7", "60"));
    assert_eq!(int(c, &["DEL", &k("f")]), 1);

    take(lock_bytes(c, k("g").as_bytes(), b"\xff\x00bin\xfe", "80"));

    take(lock(c, &k("p"), "w9", "60"));
    assert_eq!(int(c, &["PERSIST", &k("p")]), 1);

    take(lock(c, &k("x"), "w10", "60"));
    assert_eq!(int(c, &["PEXPIRE", &k("x"), "200000"]), 1);

    take(lock(c, &k("z"), "w11", "0.1"));
    wait_until(DEADLINE, "the 0.1 s reservation to expire", || {
        int(c, &["EXISTS", &k("z")]) == 0
    });
    take(lock(c, &k("after-z"), "w12", "60"));

    // Old libraries' plain-string reservations renewed and released.
    ok(c, &["SET", &k("legacy"), "host-w-1", "EX", "30"]);
    assert_eq!(
        int(c, &["RESERVE.RENEW", &k("legacy"), "host-w-1", "100"]),
        1
    );
    ok(c, &["SET", &k("legacy2"), "host-w-2", "EX", "30"]);
    assert_eq!(int(c, &["RESERVE.RELEASE", &k("legacy2"), "host-w-2"]), 1);

    let keys = [
        "a", "b", "c", "d", "e", "f", "g", "p", "x", "z", "after-z", "legacy", "legacy2",
    ]
    .iter()
    .map(|n| k(n).into_bytes())
    .collect();
    (keys, top)
}

fn check_aof_replay(preamble: &str) {
    let mut server = Server::with(
        Config::default()
            .aof()
            .arg("aof-use-rdb-preamble", preamble),
    );
    let mut c = server.conn();
    let (mut keys, top1) = aof_workload(&mut c, "one:");
    let before = snapshots(&mut c, &keys);
    let present: Vec<&str> = before
        .iter()
        .filter(|(_, s)| s.is_some())
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        present,
        [
            "one:a",
            "one:b",
            "one:d",
            "one:e",
            "one:g",
            "one:p",
            "one:x",
            "one:after-z",
            "one:legacy"
        ]
    );
    let size = dbsize(&mut c);

    // A crash: every acknowledged change is in the AOF (appendfsync always).
    server.kill9();
    server.restart();
    let mut c = server.conn();
    assert_eq!(
        snapshots(&mut c, &keys),
        before,
        "AOF replay must restore the original state and expiry"
    );
    assert_eq!(dbsize(&mut c), size);
    let next = lock(&mut c, "probe1", "w", "60");
    assert!(next > top1, "token {next} after AOF replay <= {top1}");
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "probe1", "w"]), 1);

    // Rewrite the AOF, add more on top of the rewritten base, crash again.
    rewrite_aof(&mut c);
    let (more, top2) = aof_workload(&mut c, "two:");
    keys.extend(more);
    let before = snapshots(&mut c, &keys);
    let size = dbsize(&mut c);
    server.kill9();
    server.restart();
    let mut c = server.conn();
    assert_eq!(
        snapshots(&mut c, &keys),
        before,
        "after BGREWRITEAOF + more writes + replay (aof-use-rdb-preamble {preamble})"
    );
    assert_eq!(dbsize(&mut c), size);

    // Rewrite with nothing after it: the rewritten base alone rebuilds all.
    rewrite_aof(&mut c);
    server.kill9();
    server.restart();
    let mut c = server.conn();
    assert_eq!(
        snapshots(&mut c, &keys),
        before,
        "after a rewrite alone (aof-use-rdb-preamble {preamble})"
    );
    let next = lock(&mut c, "probe2", "w", "60");
    assert!(next > top2.max(top1), "token {next} after rewrite + replay");
}

#[test]
fn aof_replay_and_rewrite_with_command_base() {
    // The rewrite callback (RESERVE.SETSTATE + PEXPIREAT) builds the base.
    check_aof_replay("no");
}

#[test]
fn aof_replay_and_rewrite_with_rdb_preamble() {
    check_aof_replay("yes");
}

// ----- the type among Redis's key commands -----

#[test]
fn dump_restore_copy_and_rename_keep_the_reservation() {
    let server = Server::start();
    let mut c = server.conn();
    let token = lock(&mut c, "src", "w1", "60");
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "src", "w1", "90"]), 1);
    let original = snapshot(&mut c, b"src").unwrap();
    let expire = original.expire_at_ms.to_string();

    let payload = dump(&mut c, "src");
    assert_eq!(
        call(&mut c, &[b"RESTORE", b"dst", b"0", &payload]),
        Ok(Value::Okay)
    );
    let dst = snapshot(&mut c, b"dst").unwrap();
    assert_eq!(
        dst,
        Snapshot {
            expire_at_ms: -1,
            ..original.clone()
        },
        "RESTORE with ttl 0: same reservation, no expiry"
    );
    assert_eq!(
        call(
            &mut c,
            &[
                b"RESTORE",
                b"dst-abs",
                expire.as_bytes(),
                &payload,
                b"ABSTTL"
            ]
        ),
        Ok(Value::Okay)
    );
    assert_eq!(snapshot(&mut c, b"dst-abs").unwrap(), original);

    let busy = call(&mut c, &[b"RESTORE", b"src", b"0", &payload]).unwrap_err();
    assert!(busy.starts_with("BUSYKEY"), "{busy}");
    // REPLACE over a reservation of someone else.
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "dst", "w1"]), 1);
    lock(&mut c, "dst", "intruder", "60");
    assert_eq!(
        call(
            &mut c,
            &[
                b"RESTORE",
                b"dst",
                expire.as_bytes(),
                &payload,
                b"REPLACE",
                b"ABSTTL"
            ]
        ),
        Ok(Value::Okay)
    );
    assert_eq!(snapshot(&mut c, b"dst").unwrap(), original);
    assert_eq!(
        call(
            &mut c,
            &[
                b"RESTORE",
                b"src",
                expire.as_bytes(),
                &payload,
                b"REPLACE",
                b"ABSTTL"
            ]
        ),
        Ok(Value::Okay)
    );
    assert_eq!(snapshot(&mut c, b"src").unwrap(), original);

    assert_eq!(int(&mut c, &["COPY", "src", "copied"]), 1);
    assert_eq!(snapshot(&mut c, b"copied").unwrap(), original);
    assert_eq!(int(&mut c, &["COPY", "src", "copied"]), 0, "no REPLACE");
    // The copy is an independent value: renewing it leaves src alone.
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "copied", "w1", "100"]), 1);
    assert_eq!(snapshot(&mut c, b"src").unwrap(), original);
    assert_eq!(snapshot(&mut c, b"copied").unwrap().renewals, 2);

    ok(&mut c, &["RENAME", "src", "renamed"]);
    assert_eq!(int(&mut c, &["EXISTS", "src"]), 0);
    assert_eq!(snapshot(&mut c, b"renamed").unwrap(), original);
    assert_eq!(int(&mut c, &["RESERVE.LOCK", "renamed", "w2", "10"]), 0);
    assert_eq!(
        int(
            &mut c,
            &[
                "RESERVE.RELEASE",
                "renamed",
                "w1",
                "TOKEN",
                &token.to_string()
            ]
        ),
        1
    );
    assert_eq!(int(&mut c, &["EXISTS", "renamed"]), 0);

    // MEMORY USAGE counts the holder.
    lock(&mut c, "small", "w", "60");
    lock(&mut c, "big", &"h".repeat(400), "60");
    let small = int(&mut c, &["MEMORY", "USAGE", "small"]);
    let big = int(&mut c, &["MEMORY", "USAGE", "big"]);
    assert!(small > 0, "MEMORY USAGE {small}");
    assert!(big > small + 300, "MEMORY USAGE big {big} vs small {small}");
}

#[test]
fn scan_type_lists_exactly_the_reservations() {
    let server = Server::start();
    let mut c = server.conn();
    let mut expected = BTreeSet::new();
    for i in 0..60 {
        let key = format!("r:{i}");
        lock(&mut c, &key, "w", "60");
        expected.insert(key);
    }
    for i in 0..20 {
        ok(&mut c, &["SET", &format!("s:{i}"), "v"]);
    }
    ok(
        &mut c,
        &["SET", "reservation-legacy", "host-w-1", "EX", "60"],
    );
    int(&mut c, &["HSET", "h", "f", "v"]);
    int(&mut c, &["RPUSH", "l", "a"]);
    let mut found = BTreeSet::new();
    let mut cursor = "0".to_string();
    for _ in 0..1000 {
        let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("TYPE")
            .arg("rsrv-lock")
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)
            .unwrap();
        found.extend(keys);
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0", "SCAN did not finish");
    assert_eq!(found, expected);
}

#[test]
fn digest_value_is_stable_across_save_and_restart() {
    let mut server = Server::start();
    let mut c = server.conn();
    lock(&mut c, "a", "w1", "60");
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "a", "w1", "60"]), 1);
    lock_bytes(&mut c, b"b", b"\xff\x00holder", "60");
    let digests = |c: &mut Connection| -> (Vec<String>, String) {
        let per_key: Vec<String> = redis::cmd("DEBUG")
            .arg("DIGEST-VALUE")
            .arg("a")
            .arg("b")
            .query(c)
            .unwrap();
        let all: String = redis::cmd("DEBUG").arg("DIGEST").query(c).unwrap();
        (per_key, all)
    };
    let before = digests(&mut c);
    assert_eq!(before.0.len(), 2);
    assert_ne!(
        before.0[0], before.0[1],
        "different reservations, different digests"
    );
    assert_ne!(before.0[0], "0".repeat(40), "the value is digested");
    assert_eq!(digests(&mut c), before, "stable while unchanged");

    ok(&mut c, &["SAVE"]);
    server.restart();
    let mut c = server.conn();
    assert_eq!(digests(&mut c), before, "after SAVE + restart");

    ok(&mut c, &["DEBUG", "RELOAD"]);
    assert_eq!(digests(&mut c), before, "after DEBUG RELOAD");

    // A renewal changes the value, so the digest.
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "a", "w1", "60"]), 1);
    assert_ne!(digests(&mut c).0[0], before.0[0]);
}

#[test]
fn restore_of_a_malformed_payload_is_an_error_not_a_crash() {
    // RESTORE payloads carry only a CRC, which anyone can compute: a value
    // the type cannot read must be refused, never take the server down.
    let mut server = Server::start();
    let mut c = server.conn();
    let token = lock(&mut c, "src", "holder", "60");
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "src", "holder", "60"]), 1);
    let payload = dump(&mut c, "src");
    let value = payload_value(&payload).to_vec();
    // Module value v2: type byte, module id (0x81 + 8 bytes), then
    // the kind (UINT 0: "02 00", a mutex), opcode-tagged fields, then the
    // EOF opcode 0.
    let fields = 12;
    assert_eq!(value[0], 7, "RDB_TYPE_MODULE_2");
    assert_eq!(&value[10..12], &[2, 0], "kind: a mutex");
    assert_eq!(*value.last().unwrap(), 0, "module EOF opcode");
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // The renewals field (UINT 1: "02 01") missing: EOF where a number is due.
    assert!(value.ends_with(&[2, 1, 0]), "{value:02x?}");
    let mut v = value[..value.len() - 3].to_vec();
    v.push(0);
    cases.push(("renewals missing", v));
    // Only the module id, then EOF.
    let mut v = value[..10].to_vec();
    v.push(0);
    cases.push(("no kind", v));
    let mut v = value[..fields].to_vec();
    v.push(0);
    cases.push(("no fields", v));
    // A kind this module does not know.
    let mut v = value.clone();
    v[11] = 7;
    cases.push(("unknown kind", v));
    // A grant set (kind 1) that is not what the module writes: garbage,
    // empty, or a valid-looking one cut short.
    for (what, state) in [
        ("grant set garbage", vec![0xffu8; 20]),
        ("grant set empty", vec![]),
        ("grant set cut", vec![1, 0, 0, 0, 0, 1, 0, 0, 0, 42]),
    ] {
        let mut v = value[..10].to_vec();
        v.extend_from_slice(&[2, 1, 5, state.len() as u8]);
        v.extend_from_slice(&state);
        v.push(0);
        cases.push((what, v));
    }
    // The holder's length claims more bytes than there are.
    let mut v = value.clone();
    assert_eq!(&v[fields..fields + 2], &[5, 6], "STRING opcode, length 6");
    v[fields + 1] = 60;
    cases.push(("holder too long", v));
    // The token tagged as a string.
    let mut needle = vec![2u8, 0x81];
    needle.extend_from_slice(&token.to_be_bytes());
    let at = value
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("token in the payload");
    let mut v = value.clone();
    v[at] = 5;
    cases.push(("token as a string", v));
    // Cut in the middle of the token.
    cases.push(("truncated", value[..at + 5].to_vec()));

    for (what, v) in &cases {
        let bad = with_footer(v, &payload);
        match call(&mut c, &[b"RESTORE", b"evil", b"0", &bad]) {
            Err(e) if e.starts_with("ERR ") => {}
            other => {
                let log = server.log();
                let crash: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("Guru Meditation") || l.contains("ASSERTION"))
                    .collect();
                panic!(
                    "RESTORE of a malformed payload ({what}) must answer an error, got {other:?}\n{}",
                    crash.join("\n")
                );
            }
        }
        assert!(server.is_alive(), "{what}");
        assert_eq!(int(&mut c, &["EXISTS", "evil"]), 0, "{what}");
    }
    assert_eq!(reservation_info(&mut c)["held"], 1);
}

#[test]
fn migrate_moves_the_reservation_and_its_token() {
    let source = Server::start();
    let target = Server::start();
    let mut s = source.conn();
    let mut t = target.conn();
    let token = lock(&mut s, "job", "w1", "60");
    assert_eq!(int(&mut s, &["RESERVE.RENEW", "job", "w1", "90"]), 1);
    // Give the source a token far ahead of the target's clock-based ones.
    let ahead = token + (1 << 40);
    let forged = forge_token(&dump(&mut s, "job"), token, ahead);
    assert_eq!(
        call(&mut s, &[b"RESTORE", b"ahead", b"0", &forged]),
        Ok(Value::Okay)
    );
    let before = snapshot(&mut s, b"job").unwrap();
    let port = target.port().to_string();
    for key in ["job", "ahead"] {
        ok(&mut s, &["MIGRATE", "127.0.0.1", &port, key, "0", "5000"]);
        assert_eq!(int(&mut s, &["EXISTS", key]), 0, "{key} left the source");
    }
    let after = snapshot(&mut t, b"job").expect("job on the target");
    // MIGRATE sends a relative TTL: the expiry may move by the transfer time.
    assert_eq!(
        (
            &after.holder,
            after.token,
            after.acquired_at_ms,
            after.renewals,
            &after.kind
        ),
        (
            &before.holder,
            before.token,
            before.acquired_at_ms,
            before.renewals,
            &before.kind
        )
    );
    assert!(after.expire_at_ms >= before.expire_at_ms);
    assert_eq!(snapshot(&mut t, b"ahead").unwrap().token as u64, ahead);
    assert_eq!(int(&mut t, &["RESERVE.RENEW", "job", "w1", "60"]), 1);
    let next = lock(&mut t, "fresh", "w", "60");
    assert!(
        next > ahead,
        "the target must raise last_token to a token it receives: {next} <= {ahead}"
    );
}

fn check_last_token_survives_aof_rewrite(preamble: &str) {
    let mut server = Server::with(
        Config::default()
            .aof()
            .arg("aof-use-rdb-preamble", preamble),
    );
    let mut c = server.conn();
    // A counter ahead of the clock (as after a failover from a server whose
    // clock ran ahead, or after this one's clock stepped back).
    let t = lock(&mut c, "k", "w", "60");
    let ahead = t + (1 << 40);
    let forged = forge_token(&dump(&mut c, "k"), t, ahead);
    assert_eq!(
        call(&mut c, &[b"RESTORE", b"forged", b"0", &forged]),
        Ok(Value::Okay)
    );
    let last = lock(&mut c, "k2", "w", "60");
    assert!(last > ahead);
    // Every reservation released: the rewritten AOF holds no keys.
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k", "w"]), 1);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k2", "w"]), 1);
    assert_eq!(int(&mut c, &["DEL", "forged"]), 1);
    rewrite_aof(&mut c);
    server.kill9();
    server.restart();
    let mut c = server.conn();
    assert_eq!(dbsize(&mut c), 0);
    let next = lock(&mut c, "k", "w", "60");
    assert!(
        next > last,
        "token {next} after AOF rewrite + restart <= {last} issued before \
         (aof-use-rdb-preamble {preamble}): tokens repeat"
    );
}

#[test]
fn last_token_survives_aof_rewrite_with_rdb_preamble() {
    check_last_token_survives_aof_rewrite("yes");
}

#[test]
fn last_token_survives_aof_rewrite_with_command_base() {
    check_last_token_survives_aof_rewrite("no");
}
