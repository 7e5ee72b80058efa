//! SPEC section 6 (replication), the write/read-only command flags on a
//! replica, tokens after failover, ACL key permissions, and the internal
//! RESERVE.SETSTATE command refused from ordinary clients.

use std::collections::BTreeSet;
use std::thread;

use testkit::cmd::{call, call_str, err, int, lock, ok};
use testkit::dump::{dump, forge_token};
use testkit::info::{info, int_field, snapshot, Snapshot};
use testkit::redis::{self, Connection, Value};
use testkit::{error_text, reservation_info, sync_replica, wait_until, Config, Server, DEADLINE};

// ----- helpers -----

/// Every key of a db with its snapshot (reservations) or its type.
fn db_state(c: &mut Connection, db: u32) -> Vec<(Vec<u8>, Option<Snapshot>, String)> {
    ok(c, &["SELECT", &db.to_string()]);
    let keys: BTreeSet<Vec<u8>> = redis::cmd("KEYS").arg("*").query(c).unwrap();
    let state = keys
        .into_iter()
        .map(|k| {
            let kind = match call(c, &[b"TYPE", &k]).unwrap() {
                Value::SimpleString(s) => s,
                other => panic!("TYPE: {other:?}"),
            };
            let snap = if kind == "hash" {
                None
            } else {
                snapshot(c, &k)
            };
            (k, snap, kind)
        })
        .collect();
    ok(c, &["SELECT", "0"]);
    state
}

fn assert_same_data(master: &mut Connection, replica: &mut Connection, dbs: &[u32]) {
    let digest =
        |c: &mut Connection| -> String { redis::cmd("DEBUG").arg("DIGEST").query(c).unwrap() };
    for db in dbs {
        let m = db_state(master, *db);
        let r = db_state(replica, *db);
        assert_eq!(m, r, "db {db}: master vs replica");
    }
    assert_eq!(digest(master), digest(replica), "DEBUG DIGEST differs");
}

/// Starts `RESERVE.WAIT` on its own connection and waits until the server
/// has queued it (`waiters` of `key` reaches `queued`).
fn spawn_waiter(
    server: &Server,
    control: &mut Connection,
    key: &str,
    holder: &str,
    queued: i64,
) -> thread::JoinHandle<Result<Value, String>> {
    let client = server.client();
    let (key_owned, holder_owned) = (key.to_string(), holder.to_string());
    let handle = thread::spawn(move || {
        let mut c = client.get_connection().expect("connect");
        call_str(
            &mut c,
            &["RESERVE.WAIT", &key_owned, &holder_owned, "30", "15"],
        )
    });
    wait_until(DEADLINE, "the waiter to be queued", || {
        info(control, key.as_bytes()).is_some_and(|f| int_field(&f, "waiters") == queued)
    });
    handle
}

fn granted(handle: thread::JoinHandle<Result<Value, String>>) -> u64 {
    match handle.join().expect("waiter thread") {
        Ok(Value::Int(t)) if t > 0 => t as u64,
        other => panic!("the waiter was not granted: {other:?}"),
    }
}

// ----- replication -----

#[test]
fn replica_matches_master_after_mixed_workload() {
    let (master, replica) = Server::master_and_replica(Config::default());
    let mut m = master.conn();
    let mut r = replica.conn();

    // Grants, re-grants, renewals with and without TOKEN, releases.
    let ta = lock(&mut m, "a", "w1", "30");
    assert_eq!(lock(&mut m, "a", "w1", "45"), ta, "re-acquire");
    let tb = lock(&mut m, "b", "w2", "60");
    assert_eq!(int(&mut m, &["RESERVE.RENEW", "b", "w2", "90"]), 1);
    assert_eq!(
        int(
            &mut m,
            &["RESERVE.RENEW", "b", "w2", "80", "TOKEN", &tb.to_string()]
        ),
        1
    );
    assert_eq!(int(&mut m, &["RESERVE.RENEW", "b", "intruder", "500"]), 0);
    let tc = lock(&mut m, "c", "w3", "60");
    assert_eq!(
        int(
            &mut m,
            &["RESERVE.RELEASE", "c", "w3", "TOKEN", &tc.to_string()]
        ),
        1
    );
    lock(&mut m, "c", "w3b", "65");
    lock(&mut m, "d", "w4", "60");
    assert_eq!(int(&mut m, &["RESERVE.RELEASE", "d", "w4"]), 1);
    lock(&mut m, "e", "w5", "60");
    assert_eq!(int(&mut m, &["DEL", "e"]), 1);
    let tf = lock(&mut m, "f", "w6", "60");
    assert_eq!(
        int(
            &mut m,
            &["RESERVE.RELEASE", "f", "w6", "TOKEN", &(tf + 1).to_string()]
        ),
        0
    );
    assert_eq!(int(&mut m, &["PEXPIRE", "f", "123456"]), 1);
    ok(
        &mut m,
        &["SET", "reservation-legacy", "host-w-1", "EX", "30"],
    );
    assert_eq!(
        int(
            &mut m,
            &["RESERVE.RENEW", "reservation-legacy", "host-w-1", "100"]
        ),
        1
    );
    ok(
        &mut m,
        &["SET", "reservation-legacy2", "host-w-2", "EX", "30"],
    );
    assert_eq!(
        int(
            &mut m,
            &["RESERVE.RELEASE", "reservation-legacy2", "host-w-2"]
        ),
        1
    );
    int(&mut m, &["HSET", "hash", "f", "v"]);
    {
        let mut bin = vec![b'\xff', 0, b'x'];
        bin.extend_from_slice("ü".as_bytes());
        assert!(matches!(
            call(&mut m, &[b"RESERVE.LOCK", b"bin\x00key", &bin, b"60"]),
            Ok(Value::Int(t)) if t > 0
        ));
    }

    // Inside a script and inside MULTI.
    let script = "local t = redis.call('RESERVE.LOCK', KEYS[1], ARGV[1], '60') \
                  redis.call('RESERVE.RENEW', KEYS[1], ARGV[1], '75') \
                  return t";
    let scripted = int(&mut m, &["EVAL", script, "1", "scripted", "w-lua"]);
    assert!(scripted > 0);
    let (t_multi, renewed, released): (u64, i64, i64) = redis::pipe()
        .atomic()
        .cmd("RESERVE.LOCK")
        .arg("multi")
        .arg("w-multi")
        .arg("60")
        .cmd("RESERVE.RENEW")
        .arg("multi")
        .arg("w-multi")
        .arg("80")
        .cmd("RESERVE.RELEASE")
        .arg("scripted")
        .arg("w-lua")
        .query(&mut m)
        .unwrap();
    assert!(t_multi > scripted as u64);
    assert_eq!((renewed, released), (1, 1));
    lock(&mut m, "scripted", "w-after", "60");

    // Other dbs: a lock in db 2 that stays, a db 3 that is flushed.
    ok(&mut m, &["SELECT", "2"]);
    lock(&mut m, "a", "db2-holder", "60");
    assert_eq!(int(&mut m, &["RESERVE.RENEW", "a", "db2-holder", "70"]), 1);
    ok(&mut m, &["SELECT", "3"]);
    lock(&mut m, "a", "db3-holder", "60");
    lock(&mut m, "z", "db3-holder", "60");
    ok(&mut m, &["FLUSHDB"]);
    lock(&mut m, "after-flush", "db3-holder", "60");
    ok(&mut m, &["SELECT", "0"]);

    // A reservation that runs out on the master.
    lock(&mut m, "short", "w7", "0.2");
    wait_until(DEADLINE, "the 0.2 s reservation to expire", || {
        int(&mut m, &["EXISTS", "short"]) == 0
    });
    lock(&mut m, "short2", "w8", "0.2");
    wait_until(DEADLINE, "the second short reservation to expire", || {
        int(&mut m, &["EXISTS", "short2"]) == 0
    });
    lock(&mut m, "short2", "w9", "60");

    sync_replica(&mut m);
    assert_same_data(&mut m, &mut r, &[0, 2, 3]);

    // Spot checks, so an empty replica and an empty master cannot agree.
    let a = snapshot(&mut r, b"a").expect("a on the replica");
    assert_eq!((a.holder.as_slice(), a.token as u64), (&b"w1"[..], ta));
    let b = snapshot(&mut r, b"b").expect("b on the replica");
    assert_eq!((b.token as u64, b.renewals), (tb, 2));
    assert_eq!(snapshot(&mut r, b"d"), None);
    let multi = snapshot(&mut r, b"multi").expect("multi on the replica");
    assert_eq!((multi.token as u64, multi.renewals), (t_multi, 1));
    assert_eq!(snapshot(&mut r, b"e"), None);
    assert_eq!(snapshot(&mut r, b"short"), None);
    assert_eq!(int(&mut r, &["EXISTS", "reservation-legacy2"]), 0);
    ok(&mut r, &["SELECT", "3"]);
    assert_eq!(int(&mut r, &["DBSIZE"]), 1);
    ok(&mut r, &["SELECT", "0"]);
}

#[test]
fn replica_matches_master_after_handoffs() {
    let (master, replica) = Server::master_and_replica(Config::default());
    let mut m = master.conn();
    let mut r = replica.conn();

    // Handoff by RELEASE.
    let t1 = lock(&mut m, "h", "w1", "30");
    let waiter = spawn_waiter(&master, &mut m, "h", "w2", 1);
    assert_eq!(int(&mut m, &["RESERVE.RELEASE", "h", "w1"]), 1);
    let t2 = granted(waiter);
    assert!(t2 > t1);

    // Handoff by DEL.
    lock(&mut m, "d", "w1", "30");
    let waiter = spawn_waiter(&master, &mut m, "d", "w3", 1);
    assert_eq!(int(&mut m, &["DEL", "d"]), 1);
    let t3 = granted(waiter);
    assert!(t3 > t2);

    // Handoff at the holder's expiry (a grant made by a timer, outside any
    // client command, must be propagated too).
    // The waiter queues first; then the holder's TTL is cut to 0.2 s.
    lock(&mut m, "x", "w1", "30");
    let waiter = spawn_waiter(&master, &mut m, "x", "w4", 1);
    assert_eq!(int(&mut m, &["RESERVE.RENEW", "x", "w1", "0.2"]), 1);
    let t4 = granted(waiter);
    assert!(t4 > t3);

    sync_replica(&mut m);
    assert_same_data(&mut m, &mut r, &[0]);
    for (key, holder, token) in [("h", "w2", t2), ("d", "w3", t3), ("x", "w4", t4)] {
        let s = snapshot(&mut r, key.as_bytes()).unwrap_or_else(|| panic!("{key} on the replica"));
        assert_eq!(s.holder, holder.as_bytes(), "{key}");
        assert_eq!(s.token as u64, token, "{key}");
    }
}

#[test]
fn replica_refuses_writes_and_answers_info() {
    let (master, replica) = Server::master_and_replica(Config::default());
    let mut m = master.conn();
    let mut r = replica.conn();
    let token = lock(&mut m, "job", "w1", "60");
    sync_replica(&mut m);

    for argv in [
        &["RESERVE.LOCK", "new", "w1", "30"][..],
        &["RESERVE.LOCK", "job", "w1", "30"],
        &["RESERVE.RENEW", "job", "w1", "30"],
        &[
            "RESERVE.RENEW",
            "job",
            "w1",
            "30",
            "TOKEN",
            &token.to_string(),
        ],
        &["RESERVE.RELEASE", "job", "w1"],
        &["RESERVE.WAIT", "new", "w1", "30", "1"],
        &["RESERVE.WAIT", "job", "w2", "30", "0"],
    ] {
        let e = err(&mut r, argv);
        assert!(e.starts_with("READONLY "), "{argv:?} on a replica: {e}");
    }
    assert_eq!(int(&mut r, &["EXISTS", "new"]), 0);
    let s = snapshot(&mut r, b"job").expect("RESERVE.INFO works on a replica");
    assert_eq!(s.holder, b"w1");
    assert_eq!(s.token as u64, token);
    assert_eq!(s.renewals, 0);
    assert_eq!(snapshot(&mut r, b"missing"), None);
    assert_eq!(snapshot(&mut m, b"job"), Some(s), "the master is unchanged");
}

#[test]
fn promoted_replica_issues_larger_tokens() {
    let master = Server::with(Config::default().quick_sync());
    let mut m = master.conn();
    // Push the master's counter far ahead of the clock (~12 days) by
    // restoring a reservation with a forged token, before the replica
    // exists, then drop the key: the replica only learns the counter from
    // the sync and from the tokens the master propagates.
    let t = lock(&mut m, "seed", "w", "60");
    let payload = dump(&mut m, "seed");
    let ahead = t + (1 << 40);
    assert_eq!(
        call(
            &mut m,
            &[
                b"RESTORE",
                b"forged",
                b"0",
                &forge_token(&payload, t, ahead)
            ]
        ),
        Ok(Value::Okay)
    );
    assert_eq!(int(&mut m, &["DEL", "forged", "seed"]), 2);

    let replica = Server::start();
    replica.replicate_from(&master);
    let mut r = replica.conn();
    // Grants on the master after the sync reach the replica only as
    // RESERVE.SETSTATE with their exact token.
    let mut last = 0;
    for i in 0..5 {
        last = lock(&mut m, &format!("k{i}"), "w", "60");
    }
    assert!(last > ahead, "the master's tokens follow its counter");
    assert_eq!(int(&mut m, &["RESERVE.RENEW", "k0", "w", "60"]), 1);
    sync_replica(&mut m);
    assert_eq!(snapshot(&mut r, b"k4").unwrap().token as u64, last);
    assert!(
        reservation_info(&mut r)["last_token"] >= last,
        "the replica raises last_token to what it receives"
    );

    ok(&mut r, &["REPLICAOF", "NO", "ONE"]);
    wait_until(DEADLINE, "the replica to become a master", || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut r).unwrap();
        info.contains("role:master")
    });
    let promoted = lock(&mut r, "after-failover", "w", "60");
    assert!(
        promoted > last,
        "a promoted replica issued token {promoted} <= {last} it had received"
    );
    // The replicated reservations keep working on the new master.
    assert_eq!(int(&mut r, &["RESERVE.LOCK", "k1", "other", "60"]), 0);
    assert_eq!(int(&mut r, &["RESERVE.RELEASE", "k1", "w"]), 1);
    let again = lock(&mut r, "k1", "other", "60");
    assert!(again > promoted);
}

// ----- ACL -----

#[test]
fn acl_key_patterns_apply() {
    let server = Server::start();
    let mut admin = server.conn();
    ok(
        &mut admin,
        &[
            "ACL", "SETUSER", "jobsonly", "on", ">pw", "~jobs:*", "+@all",
        ],
    );
    ok(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">pw",
            "%R~jobs:*",
            "+@all",
        ],
    );
    let mut c = server.conn_as("jobsonly", "pw");
    let token = lock(&mut c, "jobs:1", "w", "60");
    assert!(token >= 1);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "jobs:1", "w", "60"]), 1);
    assert!(snapshot(&mut c, b"jobs:1").is_some());

    lock(&mut admin, "other:1", "w", "60");
    for argv in [
        &["RESERVE.LOCK", "other:1", "w", "60"][..],
        &["RESERVE.LOCK", "other:2", "w", "60"],
        &["RESERVE.RENEW", "other:1", "w", "60"],
        &["RESERVE.RELEASE", "other:1", "w"],
        &["RESERVE.WAIT", "other:2", "w", "60", "1"],
        &["RESERVE.INFO", "other:1"],
    ] {
        let e = err(&mut c, argv);
        assert!(e.starts_with("NOPERM"), "{argv:?}: {e}");
    }
    assert_eq!(int(&mut admin, &["EXISTS", "other:2"]), 0);
    let s = snapshot(&mut admin, b"other:1").unwrap();
    assert_eq!(s.renewals, 0, "the refused RENEW did nothing");

    // Read-only key permission: INFO yes, anything that writes no.
    let mut ro = server.conn_as("reader", "pw");
    assert_eq!(snapshot(&mut ro, b"jobs:1").unwrap().token as u64, token);
    for argv in [
        &["RESERVE.LOCK", "jobs:2", "w", "60"][..],
        &["RESERVE.RENEW", "jobs:1", "w", "60"],
        &["RESERVE.RELEASE", "jobs:1", "w"],
    ] {
        let e = err(&mut ro, argv);
        assert!(e.starts_with("NOPERM"), "read-only user, {argv:?}: {e}");
    }
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "jobs:1", "w"]), 1);
}

// ----- the internal command -----

const INTERNAL_ONLY: &str =
    "ERR RESERVE.SETSTATE is internal: only replication and AOF loading may send it";

#[test]
fn setstate_is_refused_from_clients() {
    let server = Server::start();
    let mut c = server.conn();
    let far = "99999999999999";
    assert_eq!(
        err(
            &mut c,
            &["RESERVE.SETSTATE", "forged", "me", "5", "1", "0", far]
        ),
        INTERNAL_ONLY
    );
    assert_eq!(int(&mut c, &["EXISTS", "forged"]), 0);
    assert_eq!(int(&mut c, &["DBSIZE"]), 0);

    // Nor can it overwrite someone's lock.
    let token = lock(&mut c, "job", "w1", "60");
    let before = snapshot(&mut c, b"job").unwrap();
    assert_eq!(
        err(
            &mut c,
            &[
                "RESERVE.SETSTATE",
                "job",
                "me",
                &(token + 1).to_string(),
                "1",
                "0",
                far
            ]
        ),
        INTERNAL_ONLY
    );
    assert_eq!(snapshot(&mut c, b"job").unwrap(), before);

    // Not from a script either.
    let script = "return redis.call('RESERVE.SETSTATE', KEYS[1], 'me', '5', '1', '0', ARGV[1])";
    let e = err(&mut c, &["EVAL", script, "1", "forged", far]);
    assert!(e.contains("RESERVE.SETSTATE is internal"), "EVAL: {e}");
    assert_eq!(int(&mut c, &["EXISTS", "forged"]), 0);

    // Nor inside MULTI.
    let e = redis::pipe()
        .atomic()
        .cmd("RESERVE.SETSTATE")
        .arg("forged")
        .arg("me")
        .arg("5")
        .arg("1")
        .arg("0")
        .arg(far)
        .query::<Value>(&mut c)
        .map_err(|e| error_text(&e))
        .expect_err("SETSTATE inside MULTI");
    assert_eq!(e, INTERNAL_ONLY);
    assert_eq!(int(&mut c, &["EXISTS", "forged"]), 0);
    // The token counter was not raised by any of the refused commands.
    assert_eq!(reservation_info(&mut c)["last_token"], token);
}
