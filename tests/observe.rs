//! RESERVE.OBSERVE (SPEC section 12) against real servers: a watch on a
//! key's current grant that answers at once when the token given is stale,
//! blocks otherwise, and is woken by every change (grant, release, expiry,
//! handoff, lock-delay, DEL, type change) without taking anything.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use testkit::cmd::{call_str, err, int};
use testkit::redis::{Connection, Value};
use testkit::{client_id, reservation_info, wait_until, Server, DEADLINE};

fn lock(c: &mut Connection, args: &[&str]) -> i64 {
    let mut argv = vec!["RESERVE.LOCK"];
    argv.extend_from_slice(args);
    int(c, &argv)
}

fn observe(c: &mut Connection, key: &str, token: i64, timeout: &str) -> Value {
    call_str(c, &["RESERVE.OBSERVE", key, &token.to_string(), timeout]).unwrap()
}

fn seen(holder: Option<&str>, token: i64) -> Value {
    Value::Array(vec![
        holder.map_or(Value::Nil, |h| Value::BulkString(h.as_bytes().to_vec())),
        Value::Int(token),
    ])
}

type Observing = std::thread::JoinHandle<Result<Value, String>>;

/// Runs a blocking OBSERVE on its own connection, in a thread.
fn observe_in_background(server: &Server, key: &str, token: i64) -> Observing {
    let mut c = server.conn();
    let key = key.to_string();
    let before = reservation_info(&mut server.conn())["observers"];
    let handle = std::thread::spawn(move || {
        call_str(&mut c, &["RESERVE.OBSERVE", &key, &token.to_string(), "20"])
    });
    let mut admin = server.conn();
    wait_until(DEADLINE, "the observer blocked", || {
        reservation_info(&mut admin)["observers"] > before
    });
    handle
}

#[test]
fn answers_at_once_when_the_token_given_is_not_current() {
    let server = Server::start();
    let mut c = server.conn();
    assert_eq!(observe(&mut c, "job", 5, "1"), seen(None, 0));
    let t = lock(&mut c, &["job", "w1", "60"]);
    assert_eq!(observe(&mut c, "job", 0, "1"), seen(Some("w1"), t));
    assert_eq!(observe(&mut c, "job", t - 1, "0"), seen(Some("w1"), t));
    // Unchanged: nil at the timeout.
    assert_eq!(observe(&mut c, "job", t, "0.05"), Value::Nil);
    assert_eq!(observe(&mut c, "free", 0, "0.05"), Value::Nil);
    // The oldest current grant of a shared key; an old library's lock.
    let r1 = lock(&mut c, &["doc", "r1", "60", "SHARED"]);
    lock(&mut c, &["doc", "r2", "60", "SHARED"]);
    assert_eq!(observe(&mut c, "doc", 0, "1"), seen(Some("r1"), r1));
    call_str(&mut c, &["SET", "old", "legacy-holder", "EX", "60"]).unwrap();
    assert_eq!(
        observe(&mut c, "old", 7, "1"),
        seen(Some("legacy-holder"), 0)
    );
    call_str(&mut c, &["HSET", "h", "f", "v"]).unwrap();
    assert!(err(&mut c, &["RESERVE.OBSERVE", "h", "0", "1"]).starts_with("WRONGTYPE"));
    let stats = reservation_info(&mut c);
    assert_eq!(stats["observe_timeouts"], 2);
}

#[test]
fn every_change_wakes_the_observers() {
    let server = Server::start();
    let mut c = server.conn();
    // A grant.
    let h = observe_in_background(&server, "k", 0);
    let t1 = lock(&mut c, &["k", "w1", "60"]);
    assert_eq!(h.join().unwrap().unwrap(), seen(Some("w1"), t1));
    // A handoff to a waiter (the release and the grant in one step).
    let mut waiter = server.conn();
    let w = std::thread::spawn(move || int(&mut waiter, &["RESERVE.WAIT", "k", "w2", "60", "20"]));
    wait_until(DEADLINE, "w2 queued", || {
        reservation_info(&mut c)["waiters"] == 1
    });
    let h = observe_in_background(&server, "k", t1);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k", "w1"]), 1);
    let t2 = w.join().unwrap();
    assert_eq!(h.join().unwrap().unwrap(), seen(Some("w2"), t2));
    // A release.
    let h = observe_in_background(&server, "k", t2);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k", "w2"]), 1);
    assert_eq!(h.join().unwrap().unwrap(), seen(None, 0));
    // An expiry (by the key's timer, not the next cron tick).
    let t3 = lock(&mut c, &["k", "w3", "1"]);
    let h = observe_in_background(&server, "k", t3);
    assert_eq!(h.join().unwrap().unwrap(), seen(None, 0));
    // Expiry into a lock-delay: no grant, though the key stays.
    let t4 = lock(&mut c, &["k", "w4", "1", "DELAY", "60000"]);
    let h = observe_in_background(&server, "k", t4);
    assert_eq!(h.join().unwrap().unwrap(), seen(None, 0));
    assert_eq!(int(&mut c, &["EXISTS", "k"]), 1);
    // DEL.
    call_str(&mut c, &["DEL", "k"]).unwrap();
    let t5 = lock(&mut c, &["k", "w5", "60"]);
    let h = observe_in_background(&server, "k", t5);
    call_str(&mut c, &["DEL", "k"]).unwrap();
    assert_eq!(h.join().unwrap().unwrap(), seen(None, 0));
    // A value of another type written over it: WRONGTYPE.
    let t7 = lock(&mut c, &["k", "w7", "60"]);
    let h = observe_in_background(&server, "k", t7);
    call_str(&mut c, &["MULTI"]).unwrap();
    call_str(&mut c, &["DEL", "k"]).unwrap();
    call_str(&mut c, &["RPUSH", "k", "x"]).unwrap();
    call_str(&mut c, &["EXEC"]).unwrap();
    let err = h.join().unwrap().unwrap_err();
    assert!(err.starts_with("WRONGTYPE"), "{err}");
    // FLUSHALL.
    call_str(&mut c, &["DEL", "k"]).unwrap();
    let t8 = lock(&mut c, &["k", "w8", "60"]);
    let h = observe_in_background(&server, "k", t8);
    call_str(&mut c, &["FLUSHALL"]).unwrap();
    assert_eq!(h.join().unwrap().unwrap(), seen(None, 0));
    assert!(reservation_info(&mut c)["observe_wakeups"] >= 8);
}

#[test]
fn observers_take_nothing_and_are_bounded_and_dropped() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, &["k", "w", "60"]);
    call_str(&mut c, &["CONFIG", "SET", "reservation.max-waiters", "2"]).unwrap();
    let a = observe_in_background(&server, "k", t);
    let b = observe_in_background(&server, "k", t);
    assert_eq!(
        err(&mut c, &["RESERVE.OBSERVE", "k", &t.to_string(), "1"]),
        "ERR too many waiters"
    );
    // Not waiters: they delay no grant and show in no queue.
    let stats = reservation_info(&mut c);
    assert_eq!((stats["waiters"], stats["observers"]), (0, 2));
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k", "w"]), 1);
    let t2 = lock(&mut c, &["k", "w2", "60"]);
    assert!(t2 > 0);
    for h in [a, b] {
        let v = h.join().unwrap().unwrap();
        assert!(v == seen(None, 0) || v == seen(Some("w2"), t2), "{v:?}");
    }
    // A disconnected observer leaves; CLIENT UNBLOCK answers nil.
    let mut gone = server.conn();
    let id = client_id(&mut gone);
    let h = std::thread::spawn(move || observe(&mut gone, "k", t2, "20"));
    wait_until(DEADLINE, "blocked", || {
        reservation_info(&mut c)["observers"] == 1
    });
    call_str(&mut c, &["CLIENT", "UNBLOCK", &id.to_string()]).unwrap();
    assert_eq!(h.join().unwrap(), Value::Nil);
    let mut raw = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    raw.write_all(format!("RESERVE.OBSERVE k {t2} 0\r\n").as_bytes())
        .unwrap();
    wait_until(DEADLINE, "raw observer blocked", || {
        reservation_info(&mut c)["observers"] == 1
    });
    drop(raw);
    wait_until(DEADLINE, "the disconnected observer left", || {
        reservation_info(&mut c)["observers"] == 0
    });
}

#[test]
fn inside_multi_and_scripts_it_answers_at_once() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, &["k", "w", "60"]);
    let replies: Vec<Value> = testkit::redis::pipe()
        .atomic()
        .cmd("RESERVE.OBSERVE")
        .arg("k")
        .arg(t)
        .arg(0)
        .cmd("RESERVE.OBSERVE")
        .arg("k")
        .arg(0)
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(replies, vec![Value::Nil, seen(Some("w"), t)]);
    let script = "return redis.call('RESERVE.OBSERVE', KEYS[1], ARGV[1], 0)";
    let v = call_str(&mut c, &["EVAL", script, "1", "k", &t.to_string()]).unwrap();
    assert_eq!(v, Value::Nil);
}

#[test]
fn bad_tokens_and_timeouts_are_errors() {
    let server = Server::start();
    let mut c = server.conn();
    for bad in [
        "-1",
        "x",
        "1.5",
        "",
        "9007199254740992",
        "99999999999999999999",
    ] {
        assert_eq!(
            err(&mut c, &["RESERVE.OBSERVE", "k", bad, "1"]),
            "ERR invalid token",
            "{bad:?}"
        );
    }
    for bad in ["-1", "x", "inf", ""] {
        assert_eq!(
            err(&mut c, &["RESERVE.OBSERVE", "k", "0", bad]),
            "ERR invalid timeout",
            "{bad:?}"
        );
    }
    assert!(err(&mut c, &["RESERVE.OBSERVE", "k", "0"]).contains("wrong number of arguments"));
}

#[test]
fn thousands_of_observers_wake_on_one_change() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, &["k", "w", "60"]);
    const N: usize = 800;
    let mut socks: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port())).unwrap())
        .collect();
    let request = format!("RESERVE.OBSERVE k {t} 30\r\n");
    for s in &mut socks {
        s.write_all(request.as_bytes()).unwrap();
    }
    wait_until(DEADLINE, "all observers blocked", || {
        reservation_info(&mut c)["observers"] == N as u64
    });
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k", "w"]), 1);
    for s in socks {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut lines = BufReader::new(s).lines();
        let got: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
        assert_eq!(got, ["*2", "$-1", ":0"]);
    }
    assert_eq!(reservation_info(&mut c)["observers"], 0);
}

#[test]
fn observers_on_a_replica_follow_the_master_and_a_restart_keeps_the_state() {
    let mut master = Server::with(testkit::Config::default().aof());
    let replica = Server::start();
    replica.replicate_from(&master);
    let mut m = master.conn();
    let t = lock(&mut m, &["k", "w", "60"]);
    call_str(&mut m, &["WAIT", "1", "5000"]).unwrap();
    let mut r = replica.conn();
    wait_until(DEADLINE, "replicated", || {
        observe(&mut r, "k", 0, "0.01") == seen(Some("w"), t)
    });
    // A change on the master wakes the replica's observer.
    let h = observe_in_background(&replica, "k", t);
    assert_eq!(int(&mut m, &["RESERVE.RELEASE", "k", "w"]), 1);
    let t2 = lock(&mut m, &["k", "w2", "60", "DELAY", "5000"]);
    let v = h.join().unwrap().unwrap();
    assert!(v == seen(None, 0) || v == seen(Some("w2"), t2), "{v:?}");
    wait_until(DEADLINE, "the replica reports the new grant", || {
        observe(&mut r, "k", 0, "0.01") == seen(Some("w2"), t2)
    });
    // After a restart the same grant is reported.
    drop(m);
    master.kill9();
    master.restart();
    let mut m = master.conn();
    assert_eq!(observe(&mut m, "k", 0, "1"), seen(Some("w2"), t2));
}
