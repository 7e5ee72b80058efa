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
    let mut user = server.conn_as("jobs", "pw");
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

// ----- RESERVE.WAITALL -----

/// A RESERVE.WAITALL on its own connection; its reply on a channel.
struct WaitAll {
    rx: std::sync::mpsc::Receiver<Result<Value, String>>,
    id: i64,
}

impl WaitAll {
    fn spawn(server: &Server, holder: &str, timeout: &str, keys: &[&str]) -> WaitAll {
        let mut conn = server.conn();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let id = int(&mut conn, &["CLIENT", "ID"]);
        let mut argv: Vec<String> = ["RESERVE.WAITALL", holder, "30", timeout]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(keys.iter().map(|k| k.to_string()));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let _ = tx.send(call_str(&mut conn, &argv));
        });
        WaitAll { rx, id }
    }

    fn reply(&self) -> Result<Value, String> {
        self.rx.recv_timeout(DEADLINE).expect("WAITALL answered")
    }

    fn waiting(&self) -> bool {
        self.rx.try_recv().is_err()
    }
}

fn blocked(c: &mut Connection) -> u64 {
    reservation_info(c)["waiters"]
}

#[test]
fn waitall_is_granted_every_key_at_once_in_arrival_order() {
    let server = Server::start();
    let mut c = server.conn();
    // Free keys with nobody waiting: granted at once, like LOCKALL.
    let now = tokens(call_str(&mut c, &["RESERVE.WAITALL", "w0", "30", "0", "x", "y"]).unwrap());
    assert_eq!(now.len(), 2);
    assert!(int(&mut c, &["RESERVE.LOCK", "b", "holder", "30"]) > 0);
    // Two WAITALLs on the same keys in opposite orders: no deadlock, the
    // first to arrive is granted first.
    let first = WaitAll::spawn(&server, "first", "0", &["a", "b"]);
    wait_until(DEADLINE, "first queued", || blocked(&mut c) == 2);
    let second = WaitAll::spawn(&server, "second", "0", &["b", "a"]);
    wait_until(DEADLINE, "second queued", || blocked(&mut c) == 4);
    // `a` is free, but waited for: nobody else gets it meanwhile.
    assert_eq!(int(&mut c, &["RESERVE.LOCK", "a", "other", "30"]), 0);
    assert_eq!(lock_all(&mut c, "other", "30", &["a"]), Ok(Value::Nil));
    assert_eq!(int(&mut c, &["EXISTS", "a"]), 0);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "b", "holder"]), 1);
    let t1 = tokens(first.reply().unwrap());
    assert!(second.waiting());
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "a", "first"]), 1);
    assert!(second.waiting(), "b is still first's");
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "b", "first"]), 1);
    let t2 = tokens(second.reply().unwrap());
    assert!(
        t2.iter().all(|t| t1.iter().all(|u| t > u)),
        "{t1:?} then {t2:?}"
    );
    assert_eq!(blocked(&mut c), 0);
    let info = call_str(&mut c, &["RESERVE.INFO", "a"]).unwrap();
    let Value::Array(fields) = info else {
        panic!("{info:?}")
    };
    assert_eq!(fields[1], Value::BulkString(b"second".to_vec()));
}

#[test]
fn waitall_that_ends_leaves_every_queue() {
    let server = Server::start();
    let mut c = server.conn();
    assert!(int(&mut c, &["RESERVE.LOCK", "b", "holder", "30"]) > 0);
    // Timeout: nil, and neither queue keeps it.
    let timed = WaitAll::spawn(&server, "t", "0.2", &["a", "b"]);
    assert_eq!(timed.reply(), Ok(Value::Nil));
    assert_eq!(blocked(&mut c), 0);
    // CLIENT UNBLOCK: nil too.
    let unblocked = WaitAll::spawn(&server, "u", "0", &["a", "b"]);
    wait_until(DEADLINE, "queued", || blocked(&mut c) == 2);
    assert_eq!(
        int(&mut c, &["CLIENT", "UNBLOCK", &unblocked.id.to_string()]),
        1
    );
    assert_eq!(unblocked.reply(), Ok(Value::Nil));
    assert_eq!(blocked(&mut c), 0);
    // Killed: gone from both queues, and never granted.
    let killed = WaitAll::spawn(&server, "k", "0", &["a", "b"]);
    wait_until(DEADLINE, "queued", || blocked(&mut c) == 2);
    assert_eq!(
        int(&mut c, &["CLIENT", "KILL", "ID", &killed.id.to_string()]),
        1
    );
    wait_until(DEADLINE, "left", || blocked(&mut c) == 0);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "b", "holder"]), 1);
    assert_eq!(int(&mut c, &["EXISTS", "a", "b"]), 0, "no phantom grant");
    // One key turned into a hash: the whole WAITALL gets WRONGTYPE and
    // leaves the other queue too.
    assert!(int(&mut c, &["RESERVE.LOCK", "b", "holder", "30"]) > 0);
    let failed = WaitAll::spawn(&server, "f", "0", &["a", "b"]);
    wait_until(DEADLINE, "queued", || blocked(&mut c) == 2);
    call_str(&mut c, &["MULTI"]).unwrap();
    call_str(&mut c, &["DEL", "b"]).unwrap();
    call_str(&mut c, &["HSET", "b", "f", "v"]).unwrap();
    call_str(&mut c, &["EXEC"]).unwrap();
    assert_eq!(
        failed.reply(),
        Err("WRONGTYPE Operation against a key holding the wrong kind of value".to_string())
    );
    assert_eq!(int(&mut c, &["EXISTS", "a"]), 0);
    assert_eq!(blocked(&mut c), 0);
}

#[test]
fn waitall_in_multi_behaves_as_lockall() {
    let server = Server::start();
    let mut c = server.conn();
    assert!(int(&mut c, &["RESERVE.LOCK", "b", "holder", "30"]) > 0);
    call_str(&mut c, &["MULTI"]).unwrap();
    call_str(&mut c, &["RESERVE.WAITALL", "w", "30", "0", "a", "b"]).unwrap();
    call_str(&mut c, &["RESERVE.WAITALL", "w", "30", "0", "c", "d"]).unwrap();
    let replies = call_str(&mut c, &["EXEC"]).unwrap();
    let Value::Array(replies) = replies else {
        panic!("{replies:?}")
    };
    assert_eq!(replies[0], Value::Nil);
    assert_eq!(tokens(replies[1].clone()).len(), 2);
    assert_eq!(blocked(&mut c), 0);
}

#[test]
fn waitall_grants_replicate() {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    let mut m = master.conn();
    assert!(int(&mut m, &["RESERVE.LOCK", "b", "holder", "60"]) > 0);
    let w = WaitAll::spawn(&master, "w", "0", &["a", "b"]);
    wait_until(DEADLINE, "queued", || blocked(&mut m) == 2);
    assert_eq!(int(&mut m, &["RESERVE.RELEASE", "b", "holder"]), 1);
    let t = tokens(w.reply().unwrap());
    call_str(&mut m, &["WAIT", "1", "5000"]).unwrap();
    let mut r = replica.conn();
    for (key, token) in ["a", "b"].iter().zip(&t) {
        let info = call_str(&mut r, &["RESERVE.INFO", key]).unwrap();
        let Value::Array(fields) = info else {
            panic!("{key}: {info:?}")
        };
        assert_eq!(fields[3], Value::Int(*token), "{key}");
        assert_eq!(
            int(&mut r, &["PEXPIRETIME", key]),
            int(&mut m, &["PEXPIRETIME", key])
        );
    }
}

#[test]
fn grants_survive_a_crash_with_the_aof() {
    let mut server = Server::with(testkit::Config::default().aof());
    let mut c = server.conn();
    let t = tokens(lock_all(&mut c, "w", "600", &["a", "b"]).unwrap());
    let expiry = int(&mut c, &["PEXPIRETIME", "b"]);
    drop(c);
    server.kill9();
    server.restart();
    let mut c = server.conn();
    assert_eq!(
        int(&mut c, &["PEXPIRETIME", "b"]),
        expiry,
        "the same absolute expiry"
    );
    assert_eq!(
        tokens(lock_all(&mut c, "w", "600", &["a", "b"]).unwrap()),
        t,
        "same grants"
    );
    assert_eq!(lock_all(&mut c, "other", "600", &["a"]), Ok(Value::Nil));
}
