//! RESERVE.LOCKALL (SPEC section 10, the non-blocking half) against real
//! servers: every key or none, tokens in key order, re-acquire of keys the
//! holder holds, no barging past waiters, every key a key of the command
//! (ACL per key, CROSSSLOT in a cluster), and grants that replicate.

use std::time::Duration;

use testkit::cmd::{call_str, command, err, int};
use testkit::redis::{Connection, Value};
use testkit::{reservation_info, wait_until, Cluster, Server, DEADLINE};

fn lock_all(c: &mut Connection, holder: &str, ttl: &str, keys: &[&str]) -> Result<Value, String> {
    let mut argv = vec!["RESERVE.LOCKALL", holder, ttl];
    argv.extend_from_slice(keys);
    call_str(c, &argv)
}

fn tokens(v: Value) -> Vec<i64> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|t| match t {
                Value::Int(n) => n,
                other => panic!("token {other:?}"),
            })
            .collect(),
        other => panic!("LOCKALL answered {other:?}"),
    }
}

#[test]
fn every_key_or_none() {
    let server = Server::start();
    let mut c = server.conn();
    let t = tokens(lock_all(&mut c, "w", "30", &["a", "b", "c"]).unwrap());
    assert_eq!(t.len(), 3);
    assert!(
        t.windows(2).all(|p| p[1] > p[0]),
        "one token each, in key order"
    );
    // Re-acquire: the same tokens, TTLs refreshed.
    assert_eq!(int(&mut c, &["PEXPIRE", "b", "100"]), 1);
    assert_eq!(
        tokens(lock_all(&mut c, "w", "30", &["c", "a", "b"]).unwrap()),
        vec![t[2], t[0], t[1]]
    );
    assert!(int(&mut c, &["PTTL", "b"]) > 20_000);
    // One key held by someone else: nil, and nothing else taken.
    assert_eq!(
        lock_all(&mut c, "x", "30", &["d", "e", "a"]),
        Ok(Value::Nil)
    );
    assert_eq!(int(&mut c, &["EXISTS", "d", "e"]), 0);
    // A key the holder holds beside free keys: the free ones are granted.
    let mixed = tokens(lock_all(&mut c, "w", "30", &["a", "d"]).unwrap());
    assert_eq!(mixed[0], t[0]);
    assert!(mixed[1] > t[2]);
    // Another type: WRONGTYPE, nothing changed.
    call_str(&mut c, &["HSET", "h", "f", "v"]).unwrap();
    assert_eq!(
        err(&mut c, &["RESERVE.LOCKALL", "y", "30", "f1", "h"]),
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    );
    assert_eq!(int(&mut c, &["EXISTS", "f1"]), 0);
    // An old library's string counts as held.
    call_str(&mut c, &["SET", "old", "someone", "EX", "30"]).unwrap();
    assert_eq!(lock_all(&mut c, "y", "30", &["f1", "old"]), Ok(Value::Nil));
    // Each key is an ordinary reservation afterwards.
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "a", "w"]), 1);
    assert!(reservation_info(&mut c)["grants"] >= 4);
}

#[test]
fn waiters_queued_on_a_key_are_not_passed() {
    let server = Server::start();
    let mut c = server.conn();
    assert!(int(&mut c, &["RESERVE.LOCK", "k", "holder", "30"]) > 0);
    let mut waiter = server.conn();
    waiter
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let wait = std::thread::spawn(move || {
        command(&["RESERVE.WAIT", "k", "w", "30", "20"]).query::<i64>(&mut waiter)
    });
    wait_until(DEADLINE, "the waiter queued", || {
        reservation_info(&mut c)["waiters"] == 1
    });
    // Freed in a MULTI: the waiter comes first, LOCKALL answers nil.
    call_str(&mut c, &["MULTI"]).unwrap();
    call_str(&mut c, &["DEL", "k"]).unwrap();
    call_str(&mut c, &["RESERVE.LOCKALL", "other", "30", "free", "k"]).unwrap();
    let replies = call_str(&mut c, &["EXEC"]).unwrap();
    assert_eq!(replies, Value::Array(vec![Value::Int(1), Value::Nil]));
    assert!(wait.join().unwrap().unwrap() > 0);
    assert_eq!(int(&mut c, &["EXISTS", "free"]), 0);
}

#[test]
fn bad_arguments_are_errors() {
    let server = Server::start();
    let mut c = server.conn();
    assert_eq!(
        err(&mut c, &["RESERVE.LOCKALL", "w", "30"]),
        "ERR wrong number of arguments for 'RESERVE.LOCKALL' command"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.LOCKALL", "w", "30", "a", "b", "a"]),
        "ERR duplicate key"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.LOCKALL", "w", "0", "a"]),
        "ERR invalid ttl"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.LOCKALL", "", "30", "a"]),
        "ERR invalid holder"
    );
    let names: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    let mut argv = vec!["RESERVE.LOCKALL", "w", "30"];
    argv.extend(names.iter().map(String::as_str));
    assert_eq!(err(&mut c, &argv), "ERR too many keys (at most 1000)");
    argv.pop();
    assert_eq!(tokens(call_str(&mut c, &argv).unwrap()).len(), 1000);
    assert_eq!(int(&mut c, &["DBSIZE"]), 1000);
}

#[test]
fn keys_are_the_commands_keys() {
    let server = Server::start();
    let mut admin = server.conn();
    let keys: Vec<String> = testkit::redis::cmd("COMMAND")
        .arg(&["GETKEYS", "RESERVE.LOCKALL", "w", "30", "job:a", "job:b"])
        .query(&mut admin)
        .unwrap();
    assert_eq!(keys, ["job:a", "job:b"]);
    call_str(
        &mut admin,
        &["ACL", "SETUSER", "jobs", "on", ">pw", "~job:*", "+@all"],
    )
    .unwrap();
    let mut user = server.conn();
    call_str(&mut user, &["AUTH", "jobs", "pw"]).unwrap();
    let e = lock_all(&mut user, "w", "30", &["job:a", "other"]).unwrap_err();
    assert!(e.starts_with("NOPERM"), "{e}");
    assert_eq!(
        tokens(lock_all(&mut user, "w", "30", &["job:a", "job:b"]).unwrap()).len(),
        2
    );
}

#[test]
fn grants_replicate_and_cross_slot_is_refused() {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    let mut m = master.conn();
    let t = tokens(lock_all(&mut m, "w", "60", &["a", "b"]).unwrap());
    call_str(&mut m, &["WAIT", "1", "5000"]).unwrap();
    let mut r = replica.conn();
    for (key, token) in ["a", "b"].iter().zip(&t) {
        let info = call_str(&mut r, &["RESERVE.INFO", key]).unwrap();
        let Value::Array(fields) = info else {
            panic!("{info:?}")
        };
        assert_eq!(fields[3], Value::Int(*token), "{key}");
        assert_eq!(
            int(&mut r, &["PEXPIRETIME", key]),
            int(&mut m, &["PEXPIRETIME", key]),
            "{key}: the same absolute expiry"
        );
    }
    let cluster = Cluster::start(3);
    let node = cluster.node_for("{t}:a");
    let mut c = node.conn();
    assert_eq!(
        tokens(lock_all(&mut c, "w", "30", &["{t}:a", "{t}:b"]).unwrap()).len(),
        2
    );
    let other = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.slot_of(k) != cluster.slot_of("{t}:a"))
        .unwrap();
    let e = lock_all(&mut c, "w", "30", &["{t}:c", &other]).unwrap_err();
    assert!(e.starts_with("CROSSSLOT"), "{e}");
}
