//! Read/write locks and semaphores (SPEC section 9) against a real server:
//! several grants per key on the one FIFO queue, each with its own token
//! and expiry, and everything a mutex has (persistence, replication,
//! DUMP/RESTORE, events) kept exactly.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use testkit::cmd::{call_str, command, err, int, to_reply, Reply};
use testkit::redis::{Connection, Value};
use testkit::{reservation_info, wait_until, Config, Server, DEADLINE};

fn lock(c: &mut Connection, args: &[&str]) -> i64 {
    let mut argv = vec!["RESERVE.LOCK"];
    argv.extend_from_slice(args);
    int(c, &argv)
}

/// RESERVE.INFO as field -> value (RESP2 flat pairs), `holders` as one
/// map per grant.
#[derive(Debug)]
struct Info {
    fields: HashMap<String, Value>,
    holders: Vec<HashMap<String, Value>>,
}

fn pairs(v: &[Value]) -> HashMap<String, Value> {
    v.chunks(2)
        .map(|p| match &p[0] {
            Value::BulkString(k) => (String::from_utf8_lossy(k).into_owned(), p[1].clone()),
            other => panic!("field name {other:?}"),
        })
        .collect()
}

fn info(c: &mut Connection, key: &str) -> Option<Info> {
    match call_str(c, &["RESERVE.INFO", key]).unwrap() {
        Value::Nil => None,
        Value::Array(v) => {
            let fields = pairs(&v);
            let holders = match fields.get("holders") {
                Some(Value::Array(hs)) => hs
                    .iter()
                    .map(|h| match h {
                        Value::Array(p) => pairs(p),
                        other => panic!("holder entry {other:?}"),
                    })
                    .collect(),
                other => panic!("holders {other:?}"),
            };
            Some(Info { fields, holders })
        }
        other => panic!("INFO {other:?}"),
    }
}

impl Info {
    fn int(&self, name: &str) -> i64 {
        match self.fields.get(name) {
            Some(Value::Int(n)) => *n,
            other => panic!("{name}: {other:?}"),
        }
    }
    fn text(&self, name: &str) -> String {
        match self.fields.get(name) {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{name}: {other:?}"),
        }
    }
    fn holder_names(&self) -> Vec<String> {
        self.holders
            .iter()
            .map(|h| match &h["holder"] {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("{other:?}"),
            })
            .collect()
    }
    fn queue(&self) -> Vec<String> {
        match self.fields.get("queue") {
            Some(Value::Array(q)) => q
                .iter()
                .map(|v| match v {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("queue {other:?}"),
        }
    }
}

/// A RESERVE.WAIT on its own connection and thread.
struct Waiter {
    rx: Receiver<Reply>,
}

impl Waiter {
    /// Sends `RESERVE.WAIT key holder ttl timeout [options]` and waits
    /// until `holder` is queued on `key`.
    fn queue(
        server: &Server,
        ctl: &mut Connection,
        key: &str,
        holder: &str,
        options: &[&str],
    ) -> Waiter {
        let mut conn = server.conn();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut argv = vec!["RESERVE.WAIT", key, holder, "30", "20"];
        argv.extend_from_slice(options);
        let cmd = command(&argv);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(to_reply(cmd.query::<Value>(&mut conn)));
        });
        wait_until(DEADLINE, &format!("{holder} queued on {key}"), || {
            info(ctl, key).is_some_and(|i| i.queue().iter().any(|h| h == holder))
        });
        Waiter { rx }
    }

    /// The token it was granted (fails on anything else).
    fn granted(&self) -> i64 {
        match self.rx.recv_timeout(DEADLINE) {
            Ok(Reply::Int(t)) if t > 0 => t,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn still_waiting(&self) -> bool {
        self.rx.try_recv().is_err()
    }
}

#[test]
fn readers_share_writers_exclude_and_nobody_barges() {
    let server = Server::start();
    let mut c = server.conn();
    let r1 = lock(&mut c, &["doc", "r1", "30", "SHARED"]);
    let r2 = lock(&mut c, &["doc", "r2", "30", "shared"]);
    assert!(r1 >= 1 && r2 > r1, "each grant its own token");
    assert_eq!(
        lock(&mut c, &["doc", "w1", "30"]),
        0,
        "a writer waits for readers"
    );
    // A writer queued behind the readers holds off later readers.
    let w1 = Waiter::queue(&server, &mut c, "doc", "w1", &[]);
    assert_eq!(
        lock(&mut c, &["doc", "r3", "30", "SHARED"]),
        0,
        "no barging"
    );
    let r3 = Waiter::queue(&server, &mut c, "doc", "r3", &["SHARED"]);
    let r4 = Waiter::queue(&server, &mut c, "doc", "r4", &["SHARED"]);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "doc", "r1"]), 1);
    assert!(w1.still_waiting());
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "doc", "r2"]), 1);
    let tw = w1.granted();
    assert!(tw > r2);
    let i = info(&mut c, "doc").unwrap();
    assert_eq!(i.text("mode"), "exclusive");
    assert_eq!(i.holder_names(), vec!["w1"]);
    assert_eq!(i.queue(), vec!["r3", "r4"]);
    // The readers queued behind the writer are granted together.
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "doc", "w1"]), 1);
    let (t3, t4) = (r3.granted(), r4.granted());
    assert!(t3 > tw && t4 > t3, "FIFO and increasing");
    let i = info(&mut c, "doc").unwrap();
    assert_eq!(i.holder_names(), vec!["r3", "r4"]);
    assert_eq!(i.text("mode"), "shared");
    assert_eq!(i.int("permits_used"), 2);
    assert_eq!(i.int("waiters"), 0);
}

#[test]
fn semaphore_permits_and_limits() {
    let server = Server::start();
    let mut c = server.conn();
    let a = lock(&mut c, &["pool", "a", "30", "LIMIT", "3", "PERMITS", "2"]);
    assert!(a >= 1);
    assert_eq!(
        lock(&mut c, &["pool", "b", "30", "LIMIT", "3", "PERMITS", "2"]),
        0
    );
    assert!(lock(&mut c, &["pool", "c", "30", "LIMIT", "3"]) > a);
    assert_eq!(
        lock(&mut c, &["pool", "d", "30", "LIMIT", "3"]),
        0,
        "3 of 3 used"
    );
    // SHARED without LIMIT counts one permit against the key's limit.
    assert_eq!(lock(&mut c, &["pool", "e", "30", "SHARED"]), 0);
    let i = info(&mut c, "pool").unwrap();
    assert_eq!((i.int("limit"), i.int("permits_used")), (3, 3));
    // A waiter needing 2 at the head is not passed by one needing 1.
    let b = Waiter::queue(
        &server,
        &mut c,
        "pool",
        "b",
        &["LIMIT", "3", "PERMITS", "2"],
    );
    let d = Waiter::queue(&server, &mut c, "pool", "d", &["LIMIT", "3"]);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "pool", "c"]), 1);
    assert!(b.still_waiting() && d.still_waiting(), "head of line");
    // Raising the limit (latest wins, from when it arrives) grants the
    // waiters that now fit first, then the request itself if it still fits.
    let tf = lock(&mut c, &["pool", "f", "30", "LIMIT", "6"]);
    let (tb, td) = (b.granted(), d.granted());
    assert!(
        td > tb && tf > td,
        "waiters first, in order: {tb} {td} {tf}"
    );
    let i = info(&mut c, "pool").unwrap();
    assert_eq!(i.int("limit"), 6);
    assert_eq!(i.int("permits_used"), 6);
    assert_eq!(i.holder_names(), vec!["a", "b", "d", "f"]);
    // Lowering it revokes nothing.
    assert_eq!(lock(&mut c, &["pool", "g", "30", "LIMIT", "1"]), 0);
    let i = info(&mut c, "pool").unwrap();
    assert_eq!((i.int("limit"), i.holders.len()), (1, 4));
    // The queue keeps the latest LIMIT while the key holds no grant: a
    // waiter queued behind a writer is judged by it.
    lock(&mut c, &["q", "writer", "30"]);
    let r = Waiter::queue(&server, &mut c, "q", "r", &["LIMIT", "1", "PERMITS", "1"]);
    let s = Waiter::queue(&server, &mut c, "q", "s", &["SHARED"]);
    assert_eq!(
        lock(&mut c, &["q", "t", "30", "LIMIT", "2"]),
        0,
        "the writer holds it"
    );
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "q", "writer"]), 1);
    let (tr, ts) = (r.granted(), s.granted());
    assert!(ts > tr, "both fit in the latest limit, 2");
    assert_eq!(info(&mut c, "q").unwrap().int("limit"), 2);
}

#[test]
fn reacquire_downgrade_and_upgrade() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, &["k", "h", "30"]);
    assert_eq!(
        lock(&mut c, &["k", "h", "30"]),
        t,
        "re-acquire keeps the token"
    );
    // Downgrade at once, with a new token.
    let shared = lock(&mut c, &["k", "h", "30", "SHARED"]);
    assert!(shared > t);
    assert_eq!(lock(&mut c, &["k", "h", "30", "SHARED"]), shared);
    assert!(lock(&mut c, &["k", "other", "30", "SHARED"]) > shared);
    // Upgrade only when it fits beside the others: not with another reader.
    assert_eq!(lock(&mut c, &["k", "h", "30"]), 0);
    let i = info(&mut c, "k").unwrap();
    assert_eq!(
        i.holders[0]["mode"],
        Value::BulkString(b"shared".to_vec()),
        "unchanged"
    );
    // WAIT never queues a change.
    assert_eq!(
        err(&mut c, &["RESERVE.WAIT", "k", "h", "30", "1"]),
        "ERR holder already holds this reservation"
    );
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k", "other"]), 1);
    let up = lock(&mut c, &["k", "h", "30"]);
    assert!(up > shared, "alone: upgraded with a new token");
    assert_eq!(info(&mut c, "k").unwrap().text("mode"), "exclusive");
    // Fewer permits at once, more only when they fit.
    let p3 = lock(&mut c, &["s", "h", "30", "LIMIT", "4", "PERMITS", "3"]);
    let p1 = lock(&mut c, &["s", "h", "30", "LIMIT", "4", "PERMITS", "1"]);
    assert!(p1 > p3);
    assert!(lock(&mut c, &["s", "x", "30", "LIMIT", "4", "PERMITS", "2"]) > p1);
    assert_eq!(
        lock(&mut c, &["s", "h", "30", "LIMIT", "4", "PERMITS", "3"]),
        0
    );
    assert_eq!(info(&mut c, "s").unwrap().int("permits_used"), 3);
}

#[test]
fn each_grant_expires_at_its_own_time_and_waiters_follow() {
    let server = Server::start();
    let mut c = server.conn();
    lock(&mut c, &["k", "short", "0.3", "SHARED"]);
    lock(&mut c, &["k", "long", "30", "SHARED"]);
    let pttl = int(&mut c, &["PTTL", "k"]);
    assert!(
        pttl > 20_000,
        "the key lives as long as its latest grant: {pttl}"
    );
    // A writer queued: granted only when both readers are gone.
    let w = Waiter::queue(&server, &mut c, "k", "w", &[]);
    wait_until(DEADLINE, "the short grant expired by its timer", || {
        info(&mut c, "k").is_some_and(|i| i.holder_names() == vec!["long"])
    });
    assert!(w.still_waiting());
    assert_eq!(
        int(&mut c, &["RESERVE.RENEW", "k", "short", "30"]),
        0,
        "gone"
    );
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "k", "long", "0.2"]), 1);
    let tw = w.granted();
    assert!(tw > 0);
    assert_eq!(info(&mut c, "k").unwrap().text("mode"), "exclusive");
    assert!(reservation_info(&mut c)["expirations"] >= 2);
    // A semaphore's waiter is granted by the expiry of a permit, with no
    // command sent meanwhile.
    lock(&mut c, &["s", "a", "0.2", "LIMIT", "1"]);
    let b = Waiter::queue(&server, &mut c, "s", "b", &["LIMIT", "1"]);
    assert!(b.granted() > tw);
}

#[test]
fn del_rename_and_legacy_strings() {
    let server = Server::start();
    let mut c = server.conn();
    lock(&mut c, &["k", "r1", "30", "SHARED"]);
    lock(&mut c, &["k", "r2", "30", "SHARED"]);
    let w = Waiter::queue(&server, &mut c, "k", "w", &[]);
    assert_eq!(int(&mut c, &["DEL", "k"]), 1, "every grant at once");
    assert!(w.granted() > 0);
    lock(&mut c, &["m", "r1", "30", "SHARED"]);
    call_str(&mut c, &["RENAME", "m", "n"]).unwrap();
    assert_eq!(info(&mut c, "n").unwrap().holder_names(), vec!["r1"]);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "n", "r1"]), 1);
    assert_eq!(
        int(&mut c, &["EXISTS", "n"]),
        0,
        "the last grant takes the key"
    );
    // An old library's plain string counts as an exclusive grant.
    call_str(&mut c, &["SET", "old", "legacy-holder", "EX", "30"]).unwrap();
    assert_eq!(lock(&mut c, &["old", "r", "30", "SHARED"]), 0);
    assert_eq!(lock(&mut c, &["old", "r", "30", "LIMIT", "5"]), 0);
}

#[test]
fn bad_options_are_errors() {
    let server = Server::start();
    let mut c = server.conn();
    for (argv, e) in [
        (
            &["RESERVE.LOCK", "k", "h", "1", "LIMIT", "0"][..],
            "ERR invalid limit",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "LIMIT", "-3"],
            "ERR invalid limit",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "LIMIT", "x"],
            "ERR invalid limit",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "LIMIT", "100001"],
            "ERR invalid limit",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "PERMITS", "1"],
            "ERR invalid permits",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "LIMIT", "2", "PERMITS", "3"],
            "ERR invalid permits",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "LIMIT", "2", "PERMITS", "0"],
            "ERR invalid permits",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "SHARED", "SHARED"],
            "ERR syntax error",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "LIMIT", "2", "LIMIT", "2"],
            "ERR syntax error",
        ),
        (
            &["RESERVE.LOCK", "k", "h", "1", "LIMIT"],
            "ERR syntax error",
        ),
        (&["RESERVE.LOCK", "k", "h", "1", "NX"], "ERR syntax error"),
        (
            &["RESERVE.WAIT", "k", "h", "1", "1", "PERMITS", "2"],
            "ERR invalid permits",
        ),
        (
            &["RESERVE.WAIT", "k", "h", "1", "1", "BOGUS"],
            "ERR syntax error",
        ),
    ] {
        assert_eq!(err(&mut c, argv), e, "{argv:?}");
    }
    assert_eq!(int(&mut c, &["EXISTS", "k"]), 0);
    // Grants per key are bounded.
    call_str(&mut c, &["CONFIG", "SET", "reservation.max-holders", "2"]).unwrap();
    lock(&mut c, &["k", "a", "30", "SHARED"]);
    lock(&mut c, &["k", "b", "30", "SHARED"]);
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "k", "c", "30", "SHARED"]),
        "ERR too many holders"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.LOCK", "k", "c", "30", "LIMIT", "3"]),
        "ERR invalid limit"
    );
}

#[test]
fn info_in_resp3_is_maps_and_counts_grants() {
    let server = Server::start();
    let mut c = server.conn();
    lock(&mut c, &["k", "a", "30", "LIMIT", "5", "PERMITS", "2"]);
    lock(&mut c, &["k", "b", "30", "LIMIT", "5"]);
    lock(&mut c, &["m", "w", "30"]);
    let mut c3 = server.conn_resp3();
    match call_str(&mut c3, &["RESERVE.INFO", "k"]).unwrap() {
        Value::Map(fields) => {
            let holders = fields
                .iter()
                .find(|(k, _)| *k == Value::BulkString(b"holders".to_vec()))
                .map(|(_, v)| v.clone());
            match holders {
                Some(Value::Array(hs)) => {
                    assert_eq!(hs.len(), 2);
                    assert!(hs
                        .iter()
                        .all(|h| matches!(h, Value::Map(m) if m.len() == 7)));
                }
                other => panic!("holders {other:?}"),
            }
        }
        other => panic!("RESP3 INFO {other:?}"),
    }
    let i = info(&mut c, "m").unwrap();
    assert_eq!(
        (
            i.text("mode").as_str(),
            i.int("limit"),
            i.int("permits_used")
        ),
        ("exclusive", 0, 1)
    );
    assert_eq!(reservation_info(&mut c)["grants_held"], 3);
    assert_eq!(reservation_info(&mut c)["held"], 2);
}

/// Holder, token, mode, permits and absolute expiry of every grant, for
/// comparing two servers.
fn grants_of(c: &mut Connection, key: &str) -> Vec<String> {
    let Some(i) = info(c, key) else {
        return Vec::new();
    };
    let expire = int(c, &["PEXPIRETIME", key]);
    let mut out = vec![format!("limit={} pexpiretime={expire}", i.int("limit"))];
    for h in &i.holders {
        out.push(format!(
            "{:?} {:?} {:?} {:?} {:?}",
            h["holder"], h["token"], h["mode"], h["permits"], h["renewals"]
        ));
    }
    out
}

fn digest(c: &mut Connection) -> Value {
    call_str(c, &["DEBUG", "DIGEST"]).unwrap()
}

fn shared_workload(c: &mut Connection) {
    lock(c, &["rw", "r1", "60", "SHARED"]);
    lock(c, &["rw", "r2", "60", "SHARED"]);
    assert_eq!(int(c, &["RESERVE.RENEW", "rw", "r1", "90"]), 1);
    lock(c, &["sem", "a", "60", "LIMIT", "4", "PERMITS", "3"]);
    lock(c, &["sem", "b", "60", "LIMIT", "4"]);
    lock(c, &["gone", "x", "60", "SHARED"]);
    assert_eq!(int(c, &["RESERVE.RELEASE", "gone", "x"]), 1);
    lock(c, &["down", "d", "60"]);
    lock(c, &["down", "d", "60", "SHARED"]);
}

#[test]
fn replica_and_restarts_keep_every_grant_exactly() {
    let master = Server::with(Config::default().aof());
    let replica = Server::start();
    replica.replicate_from(&master);
    let mut m = master.conn();
    let mut r = replica.conn();
    shared_workload(&mut m);
    // Grants ended and made by timers replicate too.
    lock(&mut m, &["t", "short", "0.2", "SHARED"]);
    lock(&mut m, &["t", "long", "60", "SHARED"]);
    wait_until(DEADLINE, "the timer ended the short grant", || {
        info(&mut m, "t").is_some_and(|i| i.holders.len() == 1)
    });
    let keys = ["rw", "sem", "gone", "down", "t"];
    let snapshot = |c: &mut Connection| keys.iter().map(|k| grants_of(c, k)).collect::<Vec<_>>();
    let expected = snapshot(&mut m);
    call_str(&mut m, &["WAIT", "1", "5000"]).unwrap();
    wait_until(DEADLINE, "replica caught up", || {
        snapshot(&mut r) == expected
    });
    assert_eq!(digest(&mut m), digest(&mut r));

    // SAVE + restart, and the AOF after kill -9, restore it exactly.
    let mut master = master;
    call_str(&mut m, &["SAVE"]).unwrap();
    drop(m);
    master.kill9();
    master.restart();
    let mut m = master.conn();
    assert_eq!(snapshot(&mut m), expected, "AOF replay");
    // The rewrite (SETGRANTS per key) restores it too, from RDB alone.
    call_str(&mut m, &["CONFIG", "SET", "aof-use-rdb-preamble", "no"]).unwrap();
    call_str(&mut m, &["BGREWRITEAOF"]).unwrap();
    wait_until(DEADLINE, "rewrite done", || {
        let info = call_str(&mut m, &["INFO", "persistence"]).unwrap();
        matches!(info, Value::BulkString(b) if String::from_utf8_lossy(&b).contains("aof_rewrite_in_progress:0")
            && String::from_utf8_lossy(&b).contains("aof_rewrite_scheduled:0"))
    });
    drop(m);
    master.kill9();
    master.restart();
    let mut m = master.conn();
    assert_eq!(snapshot(&mut m), expected, "rewritten AOF replay");
    // DUMP/RESTORE keeps it too.
    let Value::BulkString(payload) = call_str(&mut m, &["DUMP", "sem"]).unwrap() else {
        panic!("DUMP")
    };
    testkit::cmd::call(&mut m, &[b"RESTORE", b"sem2", b"0", &payload]).unwrap();
    let mut a = grants_of(&mut m, "sem");
    let mut b = grants_of(&mut m, "sem2");
    a.remove(0);
    b.remove(0);
    assert_eq!(a, b);
}

#[test]
fn an_rdb_of_the_first_release_still_loads() {
    // tests/fixtures/v1.rdb was written by the first release's module
    // (encoding version 1): job:v1 held by worker-v1, renewed once,
    // expiring 2100-01-01, and the token counter one above its token.
    let mut server = Server::start();
    server.kill9();
    std::fs::copy(
        testkit::workspace_root().join("tests/fixtures/v1.rdb"),
        server.dir().join("dump.rdb"),
    )
    .unwrap();
    server.restart();
    let mut c = server.conn();
    let i = info(&mut c, "job:v1").expect("loaded");
    assert_eq!(i.text("holder"), "worker-v1");
    assert_eq!(i.int("token"), 1_883_424_316_981_248);
    assert_eq!(i.int("acquired_at_ms"), 1_796_173_398_755);
    assert_eq!(i.int("renewals"), 1);
    assert_eq!(int(&mut c, &["PEXPIRETIME", "job:v1"]), 4_102_444_800_000);
    assert_eq!(
        reservation_info(&mut c)["last_token"],
        1_883_424_316_981_249
    );
    assert!(lock(&mut c, &["other", "w", "30"]) > 1_883_424_316_981_249);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "job:v1", "worker-v1"]), 1);
}

#[test]
fn keyspace_events_for_every_grant_and_end() {
    let server = Server::start();
    let mut c = server.conn();
    call_str(&mut c, &["CONFIG", "SET", "notify-keyspace-events", "Kd"]).unwrap();
    let mut sub = server.conn();
    sub.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("__keyspace@0__:k").unwrap();
    lock(&mut c, &["k", "a", "30", "SHARED"]);
    lock(&mut c, &["k", "b", "0.1", "SHARED"]);
    assert_eq!(int(&mut c, &["RESERVE.RENEW", "k", "a", "30"]), 1);
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "k", "a"]), 1);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let msg = pubsub.get_message().unwrap();
        seen.push(msg.get_payload::<String>().unwrap());
    }
    assert_eq!(
        seen,
        vec![
            "reserve.lock",
            "reserve.lock",
            "reserve.renew",
            "reserve.release",
            "reserve.expire"
        ]
    );
}

#[test]
fn when_the_head_leaves_the_next_waiter_that_fits_is_granted() {
    let server = Server::start();
    let mut c = server.conn();
    lock(&mut c, &["pool", "a", "30", "LIMIT", "3", "PERMITS", "2"]);
    // `big` needs 2 of the 1 left; `small` would fit but waits behind it.
    let mut big_conn = server.conn();
    let big = std::thread::spawn(move || {
        command(&[
            "RESERVE.WAIT",
            "pool",
            "big",
            "30",
            "0.3",
            "LIMIT",
            "3",
            "PERMITS",
            "2",
        ])
        .query::<i64>(&mut big_conn)
    });
    wait_until(DEADLINE, "big queued", || {
        info(&mut c, "pool").is_some_and(|i| i.queue() == ["big"])
    });
    let small = Waiter::queue(&server, &mut c, "pool", "small", &["LIMIT", "3"]);
    assert!(small.still_waiting(), "head of line");
    // The head times out: the one behind it now fits, with no other event.
    assert_eq!(big.join().unwrap().unwrap(), 0);
    assert!(small.granted() > 0);
    let i = info(&mut c, "pool").unwrap();
    assert_eq!(i.holder_names(), vec!["a", "small"]);
}
