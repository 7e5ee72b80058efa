//! Values the module did not write, refused wherever they enter: a DUMP
//! payload reworked with a recomputed CRC (RESTORE, also by an ACL user
//! limited to a few keys), an RDB file reworked the same way, and a
//! "master" that streams out-of-range state to a replica. A token outside
//! 1..2^53-1 is never adopted (tokens must never repeat, nor leave the
//! range a JavaScript client reads exactly), a holder is one its holder can
//! renew and release, and a replica grants nothing on its own.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

use testkit::cmd::{call, call_str, err, int, lock};
use testkit::dump::{dump, forge_rdb_token, forge_token, payload_with, Fields};
use testkit::redis::{Connection, Value};
use testkit::{reservation_info, wait_until, Config, Server, DEADLINE};

const MAX_TOKEN: u64 = (1 << 53) - 1;

fn restore(c: &mut Connection, key: &str, payload: &[u8]) -> Result<Value, String> {
    call(c, &[b"RESTORE", key.as_bytes(), b"0", payload])
}

/// INFO's `token` field of a key (RESP2 flat pairs).
fn info_token(c: &mut Connection, key: &str) -> Option<i64> {
    let Value::Array(fields) = call_str(c, &["RESERVE.INFO", key]).unwrap() else {
        return None;
    };
    let at = fields
        .iter()
        .position(|f| *f == Value::BulkString(b"token".to_vec()))?;
    match fields.get(at + 1) {
        Some(Value::Int(t)) => Some(*t),
        other => panic!("token field: {other:?}"),
    }
}

fn is_bad_format(reply: &Result<Value, String>) -> bool {
    matches!(reply, Err(e) if e.contains("Bad data format"))
}

#[test]
fn restore_refuses_tokens_outside_the_safe_range() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, "job", "w", "60");
    let payload = dump(&mut c, "job");

    // Control: a forged token inside the range is adopted, so the forging
    // itself is right and the refusals below are about the range.
    let inside = t + (1 << 30);
    assert_eq!(
        restore(&mut c, "copy", &forge_token(&payload, t, inside)),
        Ok(Value::Okay)
    );
    assert_eq!(info_token(&mut c, "copy"), Some(inside as i64));
    assert_eq!(reservation_info(&mut c)["last_token"], inside);

    for forged in [u64::MAX - 1, u64::MAX, 1 << 63, 1 << 62, 1 << 53] {
        let reply = restore(&mut c, "evil", &forge_token(&payload, t, forged));
        assert!(is_bad_format(&reply), "token {forged}: {reply:?}");
        assert_eq!(int(&mut c, &["EXISTS", "evil"]), 0, "token {forged}");
        assert_eq!(
            reservation_info(&mut c)["last_token"],
            inside,
            "token {forged} must not move the counter"
        );
    }
    // Tokens go on increasing, never repeating, never negative.
    let a = lock(&mut c, "next1", "w", "60");
    let b = lock(&mut c, "next2", "w", "60");
    assert!(a > inside && b > a && b <= MAX_TOKEN, "{a} {b}");
    assert!(server
        .log()
        .contains("reservation: refused a stored value: token"));
}

#[test]
fn an_acl_user_limited_to_some_keys_cannot_freeze_the_counter() {
    let server = Server::start();
    let mut admin = server.conn();
    let t = lock(&mut admin, "job:a", "w", "60");
    let payload = dump(&mut admin, "job:a");
    call_str(
        &mut admin,
        &["ACL", "SETUSER", "jobs", "on", ">pw", "~job:*", "+@all"],
    )
    .unwrap();
    let mut user = server.conn_as("jobs", "pw");
    let reply = restore(&mut user, "job:evil", &forge_token(&payload, t, 1 << 63));
    assert!(is_bad_format(&reply), "{reply:?}");
    let other = lock(&mut admin, "elsewhere", "w", "60");
    assert!(other > t && other <= MAX_TOKEN);
}

#[test]
fn restore_refuses_holders_nobody_could_renew_or_release() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, "job", "w", "60");
    let payload = dump(&mut c, "job");
    let now = 1_800_000_000_000;
    let build = |holder: &[u8], renewals: u64| {
        payload_with(
            &payload,
            &Fields {
                holder,
                token: t,
                acquired_at_ms: now,
                renewals,
            },
        )
    };
    // Control: the encoder rebuilds what the server wrote.
    assert_eq!(
        restore(&mut c, "copy", &build(b"w", 0)),
        Ok(Value::Okay),
        "a rebuilt payload is accepted"
    );
    assert_eq!(int(&mut c, &["RESERVE.RELEASE", "copy", "w"]), 1);

    let huge = vec![b'h'; (1 << 20) + 1];
    for (what, bad) in [("empty", build(b"", 0)), ("over 1 MiB", build(&huge, 0))] {
        let reply = restore(&mut c, "evil", &bad);
        assert!(is_bad_format(&reply), "{what} holder: {reply:?}");
        assert_eq!(int(&mut c, &["EXISTS", "evil"]), 0, "{what}");
    }
    // A holder longer than the current setting but within the hard cap is
    // accepted, and its holder can still renew and release it.
    let long = vec![b'h'; 600];
    assert_eq!(restore(&mut c, "long", &build(&long, 0)), Ok(Value::Okay));
    assert_eq!(
        call(&mut c, &[b"RESERVE.RENEW", b"long", &long, b"30"]),
        Ok(Value::Int(1))
    );
    assert_eq!(
        call(&mut c, &[b"RESERVE.RELEASE", b"long", &long]),
        Ok(Value::Int(1))
    );
}

#[test]
fn renewal_counts_survive_dump_and_restore_or_are_refused() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, "job", "w", "60");
    let payload = dump(&mut c, "job");
    let build = |renewals: u64| {
        payload_with(
            &payload,
            &Fields {
                holder: b"w",
                token: t,
                acquired_at_ms: 1_800_000_000_000,
                renewals,
            },
        )
    };
    let most = u64::from(u32::MAX);
    assert_eq!(restore(&mut c, "most", &build(most)), Ok(Value::Okay));
    // Round trip: what DUMP says is exactly what RESTORE made.
    let again = dump(&mut c, "most");
    assert_eq!(restore(&mut c, "again", &again), Ok(Value::Okay));
    for key in ["most", "again"] {
        let info = call_str(&mut c, &["RESERVE.INFO", key]).unwrap();
        let Value::Array(fields) = info else {
            panic!("{info:?}")
        };
        let at = fields
            .iter()
            .position(|f| *f == Value::BulkString(b"renewals".to_vec()))
            .unwrap();
        assert_eq!(fields[at + 1], Value::Int(most as i64), "{key}");
    }
    // A count the value cannot keep is refused, not silently cut.
    for renewals in [most + 1, u64::MAX] {
        let reply = restore(&mut c, "evil", &build(renewals));
        assert!(is_bad_format(&reply), "{renewals}: {reply:?}");
    }
}

#[test]
fn a_counter_at_its_ceiling_fails_grants_loudly() {
    let server = Server::start();
    let mut c = server.conn();
    let t = lock(&mut c, "job", "w", "60");
    let payload = dump(&mut c, "job");
    // 2^53-1 is a valid token: adopted, and no later grant can be both new
    // and exact.
    assert_eq!(
        restore(&mut c, "top", &forge_token(&payload, t, MAX_TOKEN)),
        Ok(Value::Okay)
    );
    assert_eq!(info_token(&mut c, "top"), Some(MAX_TOKEN as i64));
    for argv in [
        &["RESERVE.LOCK", "fresh", "w", "60"][..],
        &["RESERVE.WAIT", "fresh", "w", "60", "0.1"],
    ] {
        let e = err(&mut c, argv);
        assert!(
            e.starts_with("ERR fencing token counter exhausted"),
            "{argv:?}: {e}"
        );
    }
    assert_eq!(int(&mut c, &["EXISTS", "fresh"]), 0);
    // A re-acquire issues no token, so it still works.
    assert_eq!(lock(&mut c, "job", "w", "60"), t);
    assert!(server
        .log()
        .contains("fencing token counter is at its ceiling"));
    assert_eq!(reservation_info(&mut c)["last_token"], MAX_TOKEN);
}

#[test]
fn an_rdb_file_with_a_forged_token_is_refused() {
    // A value's token and the saved counter (aux data) each on their own:
    // the first file holds a key, the second only the counter.
    for keep_key in [true, false] {
        let mut server = Server::start();
        let mut c = server.conn();
        let t = lock(&mut c, "job", "w", "600");
        if !keep_key {
            assert_eq!(int(&mut c, &["RESERVE.RELEASE", "job", "w"]), 1);
        }
        call_str(&mut c, &["SAVE"]).unwrap();
        drop(c);
        server.kill9();
        let path = server.dir().join("dump.rdb");
        let file = std::fs::read(&path).unwrap();
        // Control: a forged file inside the range loads.
        let inside = t + (1 << 30);
        std::fs::write(&path, forge_rdb_token(&file, t, inside)).unwrap();
        server.restart();
        let mut c = server.conn();
        assert_eq!(reservation_info(&mut c)["last_token"], inside);
        drop(c);
        server.kill9();

        std::fs::write(&path, forge_rdb_token(&file, t, 1 << 63)).unwrap();
        let refused = server.try_restart();
        assert!(
            refused.is_err(),
            "keep_key {keep_key}: the server loaded it"
        );
        assert!(
            server.log().contains("reservation: refused"),
            "keep_key {keep_key}: {}",
            server.log()
        );
    }
}

// ----- a replica fed by a forged master -----

/// A bare TCP "master": answers a replica's handshake, sends it a full
/// resync with an RDB from a real server, then whatever commands the test
/// writes. The socket stays open until dropped, so the replica does not
/// reconnect meanwhile.
struct FakeMaster {
    listener: TcpListener,
    link: Option<TcpStream>,
}

impl FakeMaster {
    fn bind() -> FakeMaster {
        FakeMaster {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
            link: None,
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Accepts the replica, answers its handshake and sends `rdb`.
    fn sync(&mut self, rdb: &[u8]) {
        let (stream, _) = self.listener.accept().unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        loop {
            let argv = read_command(&mut reader);
            let name = argv[0].to_ascii_uppercase();
            match name.as_slice() {
                b"PING" => out.write_all(b"+PONG\r\n").unwrap(),
                b"PSYNC" | b"SYNC" => {
                    let replid = "0123456789abcdef0123456789abcdef01234567";
                    write!(out, "+FULLRESYNC {replid} 0\r\n$").unwrap();
                    write!(out, "{}\r\n", rdb.len()).unwrap();
                    out.write_all(rdb).unwrap();
                    break;
                }
                // REPLCONF, AUTH and anything newer a server asks.
                _ => out.write_all(b"+OK\r\n").unwrap(),
            }
        }
        self.link = Some(out);
    }

    fn send(&mut self, argv: &[&[u8]]) {
        let link = self.link.as_mut().expect("synced");
        let mut buf = format!("*{}\r\n", argv.len()).into_bytes();
        for a in argv {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        link.write_all(&buf).unwrap();
    }
}

/// One RESP command (an array of bulk strings) from the replica.
fn read_command(reader: &mut impl BufRead) -> Vec<Vec<u8>> {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let n: usize = line.trim().trim_start_matches('*').parse().unwrap();
    let mut argv = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let len: usize = line.trim().trim_start_matches('$').parse().unwrap();
        let mut arg = vec![0; len + 2];
        reader.read_exact(&mut arg).unwrap();
        arg.truncate(len);
        argv.push(arg);
    }
    argv
}

/// `RESERVE.SETGRANTS`'s state argument for shared grants of one permit
/// (the module's encoding: version, limit, count, then per grant token,
/// acquired-at, expiry, renewals, mode, permits, holder; little endian).
fn grant_set(grants: &[(u64, &[u8])], expire_ms: i64) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&(grants.len() as u32).to_le_bytes());
    for (token, holder) in grants {
        v.extend_from_slice(&token.to_le_bytes());
        v.extend_from_slice(&1_800_000_000_000i64.to_le_bytes());
        v.extend_from_slice(&expire_ms.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.push(1);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(holder.len() as u32).to_le_bytes());
        v.extend_from_slice(holder);
    }
    v
}

/// An RDB file from a real server with the module and no keys.
fn empty_rdb() -> Vec<u8> {
    let server = Server::start();
    let mut c = server.conn();
    call_str(&mut c, &["SAVE"]).unwrap();
    std::fs::read(server.dir().join("dump.rdb")).unwrap()
}

#[test]
fn a_replica_refuses_out_of_range_state_from_its_master() {
    let rdb = empty_rdb();
    let mut master = FakeMaster::bind();
    // `replica-read-only no`: the role, not the setting, keeps a replica
    // from granting on its own.
    let replica = Server::with(
        Config::default()
            .arg("replicaof", &format!("127.0.0.1 {}", master.port()))
            .arg("replica-read-only", "no"),
    );
    master.sync(&rdb);
    let mut c = replica.conn();
    wait_until(DEADLINE, "replica link up", || {
        let info = call_str(&mut c, &["INFO", "replication"]).unwrap();
        matches!(info, Value::BulkString(b) if String::from_utf8_lossy(&b).contains("master_link_status:up"))
    });

    let expire = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 600_000)
        .to_string();
    let e = expire.as_bytes();
    master.send(&[b"SELECT", b"0"]);
    for (key, token) in [
        (&b"evil1"[..], (1u64 << 63).to_string()),
        (b"evil2", u64::MAX.to_string()),
        (b"evil3", (1u64 << 53).to_string()),
    ] {
        master.send(&[
            b"RESERVE.SETSTATE",
            key,
            b"h",
            token.as_bytes(),
            b"1",
            b"0",
            e,
        ]);
    }
    master.send(&[
        b"RESERVE.SETSTATE",
        b"evil4",
        b"h",
        b"1000",
        b"1",
        b"4294967296",
        e,
    ]);
    master.send(&[b"RESERVE.SETSTATE", b"evil5", b"", b"1000", b"1", b"0", e]);
    master.send(&[b"RESERVE.TOKENFLOOR", (1u64 << 62).to_string().as_bytes()]);
    // A grant set (two shared grants) with one forged token, and the same
    // set valid, as a control below.
    let expire_ms: i64 = expire.parse().unwrap();
    master.send(&[
        b"RESERVE.SETGRANTS",
        b"evil6",
        &grant_set(&[(1000, b"r1"), (1 << 63, b"r2")], expire_ms),
    ]);
    master.send(&[b"RESERVE.SETGRANTS", b"evil7", &[1, 0, 0]]);
    master.send(&[
        b"RESERVE.SETGRANTS",
        b"shared",
        &grant_set(&[(2000, b"r1"), (2001, b"r2")], expire_ms),
    ]);
    // Control: a valid SETSTATE after them is applied.
    master.send(&[b"RESERVE.SETSTATE", b"good", b"h", b"123456", b"1", b"0", e]);
    wait_until(DEADLINE, "the valid state reached the replica", || {
        int(&mut c, &["EXISTS", "good"]) == 1
    });
    assert_eq!(info_token(&mut c, "good"), Some(123_456));
    for key in [
        "evil1", "evil2", "evil3", "evil4", "evil5", "evil6", "evil7",
    ] {
        assert_eq!(int(&mut c, &["EXISTS", key]), 0, "{key}");
    }
    assert_eq!(
        info_token(&mut c, "shared"),
        Some(2000),
        "the valid set landed"
    );
    assert_eq!(reservation_info(&mut c)["last_token"], 123_456);

    // Clients of the replica: no grant, renewal or release of its own.
    let readonly = "READONLY You can't write against a read only replica.";
    for argv in [
        &["RESERVE.LOCK", "mine", "w", "60"][..],
        &["RESERVE.WAIT", "mine", "w", "60", "0.1"],
        &["RESERVE.RENEW", "good", "h", "60"],
        &["RESERVE.RELEASE", "good", "h"],
    ] {
        assert_eq!(err(&mut c, argv), readonly, "{argv:?}");
    }
    assert_eq!(info_token(&mut c, "good"), Some(123_456), "still there");
    assert_eq!(int(&mut c, &["EXISTS", "mine"]), 0);
    // Reads stay allowed.
    assert!(matches!(
        call_str(&mut c, &["RESERVE.INFO", "good"]),
        Ok(Value::Array(_))
    ));
}
