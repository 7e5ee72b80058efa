//! Lock-delay (SPEC section 12) against real servers: a grant that ran out
//! of TTL keeps its key from everyone for its delay, a release or a
//! deletion does not, and replicas, the RDB and the AOF carry the delay
//! exactly.

use testkit::cmd::{call_str, err, int, pexpiretime, pttl, server_time_ms};
use testkit::info::{field, info, int_field};
use testkit::redis::{Connection, Value};
use testkit::{rewrite_aof, wait_until, Config, Server, DEADLINE};

fn lock(c: &mut Connection, args: &[&str]) -> i64 {
    let mut argv = vec!["RESERVE.LOCK"];
    argv.extend_from_slice(args);
    int(c, &argv)
}

fn int_of(c: &mut Connection, key: &str, name: &str) -> i64 {
    int_field(&info(c, key.as_bytes()).expect("held"), name)
}

/// Waits until `key`'s grant ran out and only its delay is left.
fn wait_for_delay(c: &mut Connection, key: &str) {
    wait_until(DEADLINE, "the grant expired into its delay", || {
        info(c, key.as_bytes())
            .is_some_and(|i| int_field(&i, "ttl_ms") == 0 && int_field(&i, "delay_ms") > 0)
    });
}

#[test]
fn an_expired_grant_keeps_its_key_from_everyone_for_the_delay() {
    let server = Server::start();
    let mut c = server.conn();
    let token = lock(&mut c, &["job", "w1", "1", "DELAY", "5000"]);
    assert!(token > 0);
    // While held, INFO shows the grant's own TTL, not the key's.
    let ttl = int_of(&mut c, "job", "ttl_ms");
    assert!((1..=1000).contains(&ttl), "ttl_ms {ttl}");
    assert_eq!(int_of(&mut c, "job", "delay_ms"), 0);
    let delay_end = pexpiretime(&mut c, "job");
    wait_for_delay(&mut c, "job");
    // The key exists, PTTL is the delay left, nobody gets it.
    assert_eq!(int(&mut c, &["EXISTS", "job"]), 1);
    let left = pttl(&mut c, "job");
    assert!((1..=5000).contains(&left), "pttl {left}");
    assert_eq!(lock(&mut c, &["job", "w2", "10"]), 0);
    assert_eq!(
        lock(&mut c, &["job", "w1", "10"]),
        0,
        "not even the old holder"
    );
    assert_eq!(
        lock(&mut c, &["job", "w1", "10", "SHARED"]),
        0,
        "nor shared"
    );
    assert_eq!(lock(&mut c, &["job", "w2", "10", "LIMIT", "3"]), 0);
    assert_eq!(
        call_str(&mut c, &["RESERVE.LOCKALL", "w1", "10", "job"]).unwrap(),
        Value::Nil
    );
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "job", "w1", "10"]), 0);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "job", "w1"]), 0);
    let i = info(&mut c, b"job").unwrap();
    assert_eq!(field(&i, "holder"), &Value::BulkString(b"w1".to_vec()));
    assert_eq!(int_field(&i, "token"), token);
    assert_eq!(int_field(&i, "ttl_ms"), 0);
    assert_eq!(int_field(&i, "permits_used"), 0);
    let d = int_field(&i, "delay_ms");
    assert!((1..=5000).contains(&d), "delay_ms {d}");
    // A waiter queues and is granted when the delay ends, by timer.
    let next = int(&mut c, &["RESERVE.WAIT", "job", "w3", "10", "10"]);
    assert!(next > token);
    let acquired = int_of(&mut c, "job", "acquired_at_ms");
    assert!(
        acquired >= delay_end,
        "granted at {acquired}, delay ends {delay_end}"
    );
    let stats = testkit::reservation_info(&mut c);
    assert_eq!(stats["lock_delays"], 1);
}

#[test]
fn release_delete_and_flush_end_a_grant_with_no_delay() {
    let server = Server::start();
    let mut c = server.conn();
    assert!(lock(&mut c, &["a", "w", "60", "DELAY", "60000"]) > 0);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "a", "w"]), 1);
    assert!(lock(&mut c, &["a", "other", "60", "DELAY", "60000"]) > 0);
    assert_eq!(int(&mut c, &["DEL", "a"]), 1);
    assert!(lock(&mut c, &["a", "third", "60", "DELAY", "60000"]) > 0);
    call_str(&mut c, &["FLUSHALL"]).unwrap();
    assert!(lock(&mut c, &["a", "fourth", "60"]) > 0);
    // An admin's DEL during the delay ends it too.
    assert!(lock(&mut c, &["b", "w", "0.1", "DELAY", "60000"]) > 0);
    wait_for_delay(&mut c, "b");
    assert_eq!(int(&mut c, &["DEL", "b"]), 1);
    assert!(lock(&mut c, &["b", "w2", "60"]) > 0);
}

/// PERSIST leaves a key with a delay no instant for its grant's end: the
/// grant counts as ended, and its holder never renews its way back.
#[test]
fn persist_never_gives_an_expired_grant_back() {
    let server = Server::start();
    let mut c = server.conn();
    assert!(lock(&mut c, &["p", "w", "0.2", "DELAY", "60000"]) > 0);
    wait_for_delay(&mut c, "p");
    assert_eq!(int(&mut c, &["PERSIST", "p"]), 1);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "p", "w", "10"]), 0);
    assert_eq!(lock(&mut c, &["p", "w", "10"]), 0);
    assert_eq!(int_of(&mut c, "p", "delay_ms"), -1, "no end");
    assert_eq!(int_of(&mut c, "p", "ttl_ms"), 0);
    // Held, then persisted: ended too.
    assert!(lock(&mut c, &["q", "w", "60", "DELAY", "1000"]) > 0);
    assert_eq!(int(&mut c, &["PERSIST", "q"]), 1);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "q", "w", "10"]), 0);
    // DEL ends it.
    assert_eq!(int(&mut c, &["DEL", "p", "q"]), 2);
    assert!(lock(&mut c, &["p", "w2", "10"]) > 0);
}

#[test]
fn renew_and_reacquire_keep_the_delay_behind_the_new_expiry() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, &["k", "w", "10", "DELAY", "5000"]);
    let now = server_time_ms(&mut c);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "k", "w", "20"]), 1);
    let expire = pexpiretime(&mut c, "k");
    assert!(
        expire >= now + 25_000 && expire <= now + 26_000,
        "{expire} vs {now}"
    );
    assert_eq!(
        lock(&mut c, &["k", "w", "30"]),
        t,
        "re-acquire keeps the token"
    );
    let expire = pexpiretime(&mut c, "k");
    assert!(
        expire >= now + 35_000 && expire <= now + 36_000,
        "{expire} vs {now}"
    );
    let ttl = int_of(&mut c, "k", "ttl_ms");
    assert!((29_000..=30_000).contains(&ttl), "ttl_ms {ttl}");
}

#[test]
fn the_setting_applies_without_the_option() {
    let server = Server::start();
    let mut c = server.conn();
    call_str(
        &mut c,
        &["CONFIG", "SET", "reservation.lock-delay", "60000"],
    )
    .unwrap();
    assert!(lock(&mut c, &["k", "w", "0.1"]).is_positive());
    wait_for_delay(&mut c, "k");
    assert_eq!(lock(&mut c, &["k", "w2", "10"]), 0);
    // DELAY 0 opts out.
    assert!(lock(&mut c, &["z", "w", "0.1", "DELAY", "0"]).is_positive());
    wait_until(DEADLINE, "expired with no delay", || {
        int(&mut c, &["EXISTS", "z"]) == 0
    });
    assert!(lock(&mut c, &["z", "w2", "10"]).is_positive());
    // Out of range settings are refused by Redis.
    assert!(call_str(
        &mut c,
        &["CONFIG", "SET", "reservation.lock-delay", "3600001"]
    )
    .is_err());
    assert!(call_str(&mut c, &["CONFIG", "SET", "reservation.lock-delay", "-1"]).is_err());
}

#[test]
fn shared_grants_wait_out_the_delay_only_when_none_is_left() {
    let server = Server::start();
    let mut c = server.conn();
    // Another live grant: no delay.
    lock(&mut c, &["doc", "r1", "0.5", "SHARED", "DELAY", "60000"]);
    lock(&mut c, &["doc", "r2", "60", "SHARED"]);
    wait_until(DEADLINE, "r1 expired", || {
        info(&mut c, b"doc").is_some_and(|i| match field(&i, "holders") {
            Value::Array(h) => h.len() == 1,
            _ => false,
        })
    });
    assert!(lock(&mut c, &["doc", "r3", "60", "SHARED"]) > 0);
    // The last grants expire: the latest delay end holds the key.
    let t1 = lock(&mut c, &["rw", "r1", "1", "SHARED", "DELAY", "700"]);
    lock(&mut c, &["rw", "r2", "0.1", "SHARED"]);
    // The key lives until r1's delay ends: r1 expires last.
    let delay_end = pexpiretime(&mut c, "rw");
    let writer = int(&mut c, &["RESERVE.WAIT", "rw", "w", "10", "10"]);
    assert!(writer > t1);
    let acquired = int_of(&mut c, "rw", "acquired_at_ms");
    assert!(
        acquired >= delay_end,
        "granted at {acquired}, r1's delay ends {delay_end}"
    );
}

/// A shared grant that expired while another was still held left the key
/// held: its delay never applies, whether the expiries are processed one
/// by one as they come or together after a restart.
#[test]
fn only_the_grant_that_leaves_the_key_empty_brings_its_delay() {
    let mut server = Server::start();
    let mut c = server.conn();
    for restart in [false, true] {
        call_str(&mut c, &["DEL", "k"]).unwrap();
        lock(&mut c, &["k", "early", "0.3", "SHARED", "DELAY", "600000"]);
        lock(&mut c, &["k", "late", "0.6", "SHARED"]);
        if restart {
            // Saved and reloaded before either expires: no timer of the
            // old process sees the first expiry on its own.
            call_str(&mut c, &["SAVE"]).unwrap();
            drop(c);
            server.kill9();
            server.restart();
            c = server.conn();
        }
        wait_until(DEADLINE, "both grants expired", || {
            info(&mut c, b"k").is_none()
        });
        assert!(
            lock(&mut c, &["k", "writer", "10"]) > 0,
            "restart {restart}"
        );
    }
    // The last to expire brings its delay, and INFO shows it even before a
    // command converts the key.
    call_str(&mut c, &["DEL", "k"]).unwrap();
    let t = lock(&mut c, &["k", "first", "0.2", "SHARED"]);
    let last = lock(&mut c, &["k", "last", "0.4", "SHARED", "DELAY", "600000"]);
    assert!(last > t);
    wait_for_delay(&mut c, "k");
    let i = info(&mut c, b"k").unwrap();
    assert_eq!(field(&i, "holder"), &Value::BulkString(b"last".to_vec()));
    assert_eq!(int_field(&i, "token"), last);
    assert_eq!(lock(&mut c, &["k", "writer", "10"]), 0);
}

#[test]
fn bad_delays_are_errors() {
    let server = Server::start();
    let mut c = server.conn();
    const BAD: &str = "ERR invalid delay (milliseconds, 0 to 3600000)";
    for bad in ["-1", "x", "3600001", "1.5", "", "99999999999"] {
        assert_eq!(
            err(&mut c, &["RESERVE.LOCK", "k", "w", "1", "DELAY", bad]),
            BAD,
            "{bad:?}"
        );
        assert_eq!(
            err(&mut c, &["RESERVE.WAIT", "k", "w", "1", "1", "DELAY", bad]),
            BAD,
            "{bad:?}"
        );
    }
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "k", "w", "1", "DELAY"]),
        "ERR syntax error"
    );
    assert_eq!(
        err(
            &mut c,
            &["RESERVE.LOCK", "k", "w", "1", "DELAY", "5", "DELAY", "5"]
        ),
        "ERR syntax error"
    );
    assert!(lock(&mut c, &["k", "w", "1", "delay", "3600000"]) > 0);
    assert_eq!(int(&mut c, &["EXISTS", "x"]), 0);
}

/// Holder, token, absolute expiry and digest-relevant state of `key`.
fn state_of(c: &mut Connection, key: &str) -> Option<(Vec<u8>, i64, i64, i64)> {
    let i = info(c, key.as_bytes())?;
    Some((
        testkit::cmd::bytes(field(&i, "holder")),
        int_field(&i, "token"),
        int_field(&i, "renewals"),
        pexpiretime(c, key),
    ))
}

#[test]
fn replicas_rdb_and_aof_carry_the_delay_exactly() {
    let master = Server::with(Config::default().aof());
    let replica = Server::start();
    replica.replicate_from(&master);
    let mut m = master.conn();
    let mut r = replica.conn();
    // Held with a delay, in its delay, and a set of grants with delays.
    lock(&mut m, &["held", "w", "600", "DELAY", "1234"]);
    assert_eq!(int(&mut m, &["RESERVE.RENEW", "held", "w", "900"]), 1);
    lock(&mut m, &["waiting", "w", "0.1", "DELAY", "600000"]);
    lock(&mut m, &["set", "r1", "600", "SHARED", "DELAY", "777"]);
    lock(&mut m, &["set", "r2", "600", "SHARED"]);
    lock(&mut m, &["gone", "r1", "0.1", "SHARED", "DELAY", "600000"]);
    wait_for_delay(&mut m, "waiting");
    wait_for_delay(&mut m, "gone");
    let keys = ["held", "waiting", "set", "gone"];
    let snapshot = |c: &mut Connection| keys.iter().map(|k| state_of(c, k)).collect::<Vec<_>>();
    let expected = snapshot(&mut m);
    assert!(expected.iter().all(Option::is_some), "{expected:?}");
    call_str(&mut m, &["WAIT", "1", "5000"]).unwrap();
    wait_until(DEADLINE, "replica caught up", || {
        snapshot(&mut r) == expected
    });
    let digest = |c: &mut Connection| call_str(c, &["DEBUG", "DIGEST"]).unwrap();
    assert_eq!(digest(&mut m), digest(&mut r));
    // The replica sees the delay too.
    let d = int_of(&mut r, "waiting", "delay_ms");
    assert!(d > 0, "replica delay_ms {d}");
    let before = digest(&mut m);

    // The replicated commands in the AOF after kill -9; then a rewrite
    // with an RDB preamble (the type's RDB encoding); then one without
    // (the type's AOF rewrite).
    let mut master = master;
    drop(m);
    master.kill9();
    master.restart();
    let mut m = master.conn();
    assert_eq!(snapshot(&mut m), expected, "AOF replay");
    assert_eq!(digest(&mut m), before);
    assert_eq!(
        lock(&mut m, &["waiting", "x", "10"]),
        0,
        "still in its delay"
    );
    for preamble in ["yes", "no"] {
        call_str(&mut m, &["CONFIG", "SET", "aof-use-rdb-preamble", preamble]).unwrap();
        rewrite_aof(&mut m);
        drop(m);
        master.kill9();
        master.restart();
        m = master.conn();
        assert_eq!(
            snapshot(&mut m),
            expected,
            "rewritten AOF, preamble {preamble}"
        );
        assert_eq!(digest(&mut m), before);
    }
    // DUMP/RESTORE keeps the delay.
    let Value::BulkString(payload) = call_str(&mut m, &["DUMP", "waiting"]).unwrap() else {
        panic!("DUMP")
    };
    let at = pexpiretime(&mut m, "waiting").to_string();
    testkit::cmd::call(
        &mut m,
        &[b"RESTORE", b"copy", at.as_bytes(), &payload, b"ABSTTL"],
    )
    .unwrap();
    assert_eq!(int_of(&mut m, "copy", "ttl_ms"), 0);
    assert!(int_of(&mut m, "copy", "delay_ms") > 0);
}
