//! RESERVE.GUARD (SPEC section 11) against real servers: a command runs
//! only for the holder of a live grant with that token, answers exactly
//! what the command answers, runs with the caller's ACL permissions, names
//! its keys to ACL, `COMMAND GETKEYS` and cluster slot checks, and reaches
//! replicas and the AOF as the command itself.

use testkit::cmd::{call_str, err, int};
use testkit::redis::{self, Connection, Value};
use testkit::{reservation_info, wait_until, Cluster, Config, Server, DEADLINE};

fn lock(c: &mut Connection, args: &[&str]) -> String {
    let mut argv = vec!["RESERVE.LOCK"];
    argv.extend_from_slice(args);
    let t = int(c, &argv);
    assert!(t >= 1, "{argv:?}: {t}");
    t.to_string()
}

fn guard(
    c: &mut Connection,
    key: &str,
    holder: &str,
    token: &str,
    command: &[&str],
) -> Result<Value, String> {
    let mut argv = vec!["RESERVE.GUARD", key, holder, token];
    argv.extend_from_slice(command);
    call_str(c, &argv)
}

const FENCED: &str = "FENCED reservation not held by that holder and token";
const NOT_ALLOWED: &str = "ERR command not allowed in RESERVE.GUARD";

#[test]
fn runs_only_for_the_holder_of_that_live_token() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, &["job", "w1", "60"]);
    assert_eq!(
        guard(&mut c, "job", "w1", &t, &["SET", "data", "v1"]),
        Ok(Value::Okay)
    );
    let older = (t.parse::<u64>().unwrap() - 1).to_string();
    for (holder, token) in [("w1", older.as_str()), ("w2", t.as_str())] {
        assert_eq!(
            guard(&mut c, "job", holder, token, &["SET", "data", "forged"]),
            Err(FENCED.to_string()),
            "{holder} {token}"
        );
    }
    // Released, then taken by someone else: the old token fences.
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "job", "w1"]), 1);
    let t2 = lock(&mut c, &["job", "w2", "60"]);
    assert_eq!(
        guard(&mut c, "job", "w1", &t, &["SET", "data", "late"]),
        Err(FENCED.to_string())
    );
    assert_eq!(
        guard(&mut c, "job", "w2", &t2, &["SET", "data", "v2"]),
        Ok(Value::Okay)
    );
    // Expired: fenced too.
    let short = lock(&mut c, &["brief", "w", "0.05"]);
    wait_until(DEADLINE, "the grant expired", || {
        int(&mut c, &["EXISTS", "brief"]) == 0
    });
    assert_eq!(
        guard(&mut c, "brief", "w", &short, &["SET", "data", "x"]),
        Err(FENCED.to_string())
    );
    // A shared grant's token guards too; an old library's string never.
    let r = lock(&mut c, &["doc", "reader", "60", "SHARED"]);
    lock(&mut c, &["doc", "reader-2", "60", "SHARED"]);
    assert_eq!(
        guard(&mut c, "doc", "reader", &r, &["INCR", "n"]),
        Ok(Value::Int(1))
    );
    call_str(&mut c, &["SET", "old", "legacy", "EX", "60"]).unwrap();
    assert_eq!(
        guard(&mut c, "old", "legacy", "1", &["INCR", "n"]),
        Err(FENCED.to_string())
    );
    assert_eq!(
        call_str(&mut c, &["GET", "data"]),
        Ok(Value::BulkString(b"v2".to_vec()))
    );
    let stats = reservation_info(&mut c);
    assert_eq!((stats["guard_runs"], stats["guard_fenced"]), (3, 5));
}

#[test]
fn answers_exactly_what_the_command_answers() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, &["job", "w", "60"]);
    call_str(&mut c, &["SET", "s", "text"]).unwrap();
    call_str(&mut c, &["HSET", "h", "f", "v", "g", "w"]).unwrap();
    for command in [
        &["GET", "s"][..],
        &["GET", "missing"],
        &["INCR", "s"],
        &["HGETALL", "h"],
        &["LPUSH", "s", "x"],
        &["EXISTS", "s", "h", "missing"],
    ] {
        let direct = call_str(&mut c, command);
        assert_eq!(
            guard(&mut c, "job", "w", &t, command),
            direct,
            "{command:?}"
        );
    }
    // RESP3: the same types (a map for HGETALL).
    let mut c3 = server.conn_resp3();
    let direct = call_str(&mut c3, &["HGETALL", "h"]).unwrap();
    assert!(matches!(direct, Value::Map(_)), "{direct:?}");
    assert_eq!(
        guard(&mut c3, "job", "w", &t, &["HGETALL", "h"]),
        Ok(direct)
    );
    // Redis's own unknown-command error.
    let e = guard(&mut c, "job", "w", &t, &["NOSUCHCMD", "x"]).unwrap_err();
    assert!(e.starts_with("ERR unknown command 'NOSUCHCMD'"), "{e}");
}

#[test]
fn blocking_and_script_only_commands_are_refused() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, &["job", "w", "60"]);
    for command in [
        &["MULTI"][..],
        &["EXEC"],
        &["WATCH", "job"],
        &["SUBSCRIBE", "ch"],
        &["BLPOP", "list", "0"],
        &["brpop", "list", "0"],
        &["WAIT", "0", "0"],
        &["RESERVE.WAIT", "other", "w", "10", "0"],
        &["RESERVE.GUARD", "job", "w", &t, "GET", "s"],
    ] {
        assert_eq!(
            guard(&mut c, "job", "w", &t, command),
            Err(NOT_ALLOWED.to_string()),
            "{command:?}"
        );
    }
    assert_eq!(
        err(&mut c, &["RESERVE.GUARD", "job", "w", &t]),
        "ERR wrong number of arguments for 'RESERVE.GUARD' command"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.GUARD", "job", "w", "0", "GET", "x"]),
        "ERR invalid token"
    );
    assert_eq!(
        err(&mut c, &["RESERVE.GUARD", "job", "", &t, "GET", "x"]),
        "ERR invalid holder"
    );
}

#[test]
fn acl_and_getkeys_see_every_key() {
    let server = Server::start();
    let mut admin = server.conn();
    let t = lock(&mut admin, &["job:a", "w", "60"]);
    let keys: Vec<String> = redis::cmd("COMMAND")
        .arg("GETKEYS")
        .arg(&[
            "RESERVE.GUARD",
            "job:a",
            "w",
            &t,
            "MSET",
            "job:x",
            "1",
            "other",
            "2",
        ])
        .query(&mut admin)
        .unwrap();
    assert_eq!(keys, ["job:a", "job:x", "other"]);
    call_str(
        &mut admin,
        &[
            "ACL", "SETUSER", "jobs", "on", ">pw", "~job:*", "+@all", "-set",
        ],
    )
    .unwrap();
    let mut user = server.conn_as("jobs", "pw");
    // A key outside the user's pattern, named by the inner command.
    let e = guard(&mut user, "job:a", "w", &t, &["INCR", "other"]).unwrap_err();
    assert!(e.starts_with("NOPERM"), "{e}");
    // A command the user may not run: the NOPERM a direct call gets.
    let e = guard(&mut user, "job:a", "w", &t, &["SET", "job:x", "1"]).unwrap_err();
    assert_eq!(
        e,
        "NOPERM this user has no permissions to run the 'set' command"
    );
    assert_eq!(
        guard(&mut user, "job:a", "w", &t, &["INCR", "job:x"]),
        Ok(Value::Int(1))
    );
    assert_eq!(int(&mut admin, &["EXISTS", "other"]), 0);
}

#[test]
fn the_command_reaches_replicas_and_the_aof_as_itself() {
    let mut master = Server::with(Config::default().aof());
    let replica = Server::start();
    replica.replicate_from(&master);
    let mut m = master.conn();
    let t = lock(&mut m, &["job", "w", "600"]);
    assert_eq!(
        guard(&mut m, "job", "w", &t, &["RPUSH", "out", "a", "b"]),
        Ok(Value::Int(2))
    );
    assert_eq!(
        guard(&mut m, "job", "w", "1", &["RPUSH", "out", "x"]),
        Err(FENCED.to_string())
    );
    call_str(&mut m, &["WAIT", "1", "5000"]).unwrap();
    let mut r = replica.conn();
    wait_until(DEADLINE, "the replica has the list", || {
        call_str(&mut r, &["LRANGE", "out", "0", "-1"])
            == Ok(Value::Array(vec![
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(b"b".to_vec()),
            ]))
    });
    // The AOF holds the command itself, not GUARD (a replay needs no grant).
    let aof_dir = master.dir().join("appendonlydir");
    let text: String = std::fs::read_dir(&aof_dir)
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    assert!(text.contains("RPUSH") && !text.to_uppercase().contains("RESERVE.GUARD"));
    drop(m);
    master.kill9();
    master.restart();
    let mut m = master.conn();
    assert_eq!(int(&mut m, &["LLEN", "out"]), 2);
}

#[test]
fn cluster_slots_cover_the_inner_keys() {
    let cluster = Cluster::start(3);
    // Two keys of one slot (a hash tag) run; a key of another slot is
    // refused by the cluster before anything runs.
    let node = cluster.node_for("{job}:lock");
    let mut c = node.conn();
    let t = lock(&mut c, &["{job}:lock", "w", "60"]);
    assert_eq!(
        guard(&mut c, "{job}:lock", "w", &t, &["SET", "{job}:data", "v"]),
        Ok(Value::Okay)
    );
    let other = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.slot_of(k) != cluster.slot_of("{job}:lock"))
        .unwrap();
    let e = guard(&mut c, "{job}:lock", "w", &t, &["SET", &other, "v"]).unwrap_err();
    assert!(e.starts_with("CROSSSLOT"), "{e}");
}

#[test]
fn guard_around_random_commands_never_crashes() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut server = Server::start();
    let mut c = server.conn();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut t = lock(&mut c, &["job", "w", "600"]);
    let commands = [
        "GET",
        "SET",
        "INCR",
        "HSET",
        "LPUSH",
        "DEL",
        "EXPIRE",
        "RENAME",
        "MSET",
        "EVAL",
        "BLPOP",
        "MULTI",
        "SUBSCRIBE",
        "CLIENT",
        "CONFIG",
        "RESERVE.LOCK",
        "RESERVE.RELEASE",
        "RESERVE.INFO",
        "RESERVE.WAITALL",
        "RESERVE.GUARD",
        "PING",
        "NOSUCH",
        "",
        "set",
    ];
    let words = [
        "job",
        "k",
        "0",
        "1",
        "-1",
        "x",
        "GET",
        "return 1",
        "",
        "99999999999999999999",
    ];
    let mut rng = StdRng::seed_from_u64(0x6A_4D);
    let (mut values, mut errors) = (0, 0);
    for i in 0..1500 {
        let mut argv = vec!["RESERVE.GUARD", "job", "w", t.as_str()];
        argv.push(commands[rng.gen_range(0..commands.len())]);
        for _ in 0..rng.gen_range(0..4) {
            argv.push(words[rng.gen_range(0..words.len())]);
        }
        match call_str(&mut c, &argv) {
            Ok(_) => values += 1,
            Err(e) => {
                errors += 1;
                assert!(!e.contains("internal error"), "#{i} {argv:?}: {e}");
            }
        }
        // Commands may take the key away; take it again for the next round.
        if int(&mut c, &["EXISTS", "job"]) == 0 {
            t = lock(&mut c, &["job", "w", "600"]);
        }
    }
    guard_tail(&mut server, values, errors);
}

/// The server is alive and answered both values and errors.
fn guard_tail(server: &mut Server, values: u32, errors: u32) {
    assert!(values > 0 && errors > 0, "{values} values, {errors} errors");
    assert!(server.is_alive(), "server died:\n{}", server.log());
    assert!(!server.log().contains("panicked"));
}
