//! Redis Cluster (issue 6; SPEC section 6, "Cluster", and section 4): a
//! 3-master cluster on loopback ports with the module on every node
//! (`testkit::Cluster`).
//!
//! - every one of the 16384 slots takes a reservation, through `redis-cli
//!   -c` (the binary, following redirects) and through the `redis` crate's
//!   cluster client (pipelines split by node);
//! - a slot holding reservations moves from node A to node B
//!   (`CLUSTER SETSLOT ... IMPORTING/MIGRATING`, `MIGRATE ... KEYS`,
//!   `SETSLOT ... NODE`): holder, token, acquired-at, renewals and expiry
//!   arrive on B, and B's next token for the key is larger, even when A's
//!   tokens ran far ahead of B's clock;
//! - a waiter blocked on A for a key whose slot leaves A gets a `MOVED` /
//!   `ASK` error naming B instead of a grant on A, and the key is gone
//!   from A.
//!
//! `redis-cli` is the cli binary unless `$RESERVATION_CLI` names another
//! (e.g. `valkey-cli`).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::cluster::{cluster_pipe, ClusterClient, ClusterConnection};
use testkit::cmd::{int, lock, ok, q, text, Reply};
use testkit::dump::{dump, forge_token};
use testkit::info::{field, int_field, parse, queue_of, snapshot, Snapshot};
use testkit::redis::{self, Connection, Value};
use testkit::{reservation_info, wait_until, Cluster, Server, DEADLINE};

const SLOTS: usize = 16384;

// ----- helpers -----

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// CRC16/XMODEM, Redis Cluster's key hash.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key without `{` (no hash tag).
fn plain_slot(key: &str) -> usize {
    assert!(!key.contains('{'), "no hash tags here: {key}");
    usize::from(crc16(key.as_bytes())) % SLOTS
}

/// One key name per slot (`keys[slot]`), `prefix` + a number.
fn key_for_every_slot(prefix: &str) -> Vec<String> {
    let mut keys: Vec<Option<String>> = vec![None; SLOTS];
    let mut missing = SLOTS;
    for n in 0..10_000_000u64 {
        let key = format!("{prefix}{n}");
        let slot = plain_slot(&key);
        if keys[slot].is_none() {
            keys[slot] = Some(key);
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    keys.into_iter()
        .map(|k| k.expect("ten million names cover every slot"))
        .collect()
}

fn cluster_conn(cluster: &Cluster) -> ClusterConnection {
    ClusterClient::builder(cluster.urls())
        .connection_timeout(Duration::from_secs(10))
        .response_timeout(Duration::from_secs(30))
        .build()
        .expect("cluster client")
        .get_connection()
        .expect("cluster connection")
}

fn node_id(node: &Server) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut node.conn())
        .expect("CLUSTER MYID")
}

fn addr(node: &Server) -> String {
    format!("127.0.0.1:{}", node.port())
}

/// Runs `redis-cli -c` (or `$RESERVATION_CLI`) against `node` with one
/// command per line on stdin; returns the reply lines (the cli's
/// `-> Redirected ...` notes left out).
fn redis_cli(node: &Server, lines: &[String]) -> Vec<String> {
    let cli = std::env::var("RESERVATION_CLI").unwrap_or_else(|_| "redis-cli".into());
    let mut child = Command::new(&cli)
        .args(["-c", "-h", "127.0.0.1", "-p", &node.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cli}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = lines.join("\n") + "\n";
    let writer = thread::spawn(move || {
        stdin
            .write_all(input.as_bytes())
            .expect("write to redis-cli");
    });
    let out = child.wait_with_output().expect("redis-cli output");
    writer.join().expect("writer");
    assert!(
        out.status.success(),
        "{cli} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .filter(|l| !l.starts_with("-> Redirected"))
        .map(str::to_string)
        .collect()
}

/// Index of the node that serves `slot` now, asking node 0.
fn owner_of(cluster: &Cluster, slot: usize) -> usize {
    let slots: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut cluster.nodes[0].conn())
        .expect("CLUSTER SLOTS");
    for range in slots {
        let Value::Array(parts) = range else { continue };
        let (Value::Int(start), Value::Int(end)) = (&parts[0], &parts[1]) else {
            continue;
        };
        if (*start as usize..=*end as usize).contains(&slot) {
            let Value::Array(master) = &parts[2] else {
                panic!("{parts:?}")
            };
            let Value::Int(port) = master[1] else {
                panic!("{master:?}")
            };
            return cluster
                .nodes
                .iter()
                .position(|n| i64::from(n.port()) == port)
                .expect("a known node");
        }
    }
    panic!("slot {slot} has no owner");
}

/// A hash tag whose slot node `node` serves.
fn tag_on(cluster: &Cluster, node: usize, name: &str) -> (String, usize) {
    let (start, end) = cluster.slot_ranges()[node];
    (0..100_000)
        .map(|n| format!("{name}{n}"))
        .map(|t| {
            let slot = plain_slot(&t);
            (t, slot)
        })
        .find(|(_, slot)| (usize::from(start)..=usize::from(end)).contains(slot))
        .expect("a tag on the node")
}

/// Moves `slot` from node `a` to node `b` with its keys, the way
/// `redis-cli --cluster reshard` does; returns how long the MIGRATE took.
fn migrate_slot(cluster: &Cluster, slot: usize, a: usize, b: usize) -> i64 {
    let (src, dst) = (&cluster.nodes[a], &cluster.nodes[b]);
    let (a_id, b_id) = (node_id(src), node_id(dst));
    let slot_s = slot.to_string();
    let mut sc = src.conn();
    ok(
        &mut dst.conn(),
        &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &a_id],
    );
    ok(
        &mut sc,
        &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &b_id],
    );
    let keys: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1000)
        .query(&mut sc)
        .expect("GETKEYSINSLOT");
    let mut took = 0;
    if !keys.is_empty() {
        let port = dst.port().to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let start = now_ms();
        ok(&mut sc, &args);
        took = now_ms() - start;
    }
    for node in &cluster.nodes {
        ok(
            &mut node.conn(),
            &["CLUSTER", "SETSLOT", &slot_s, "NODE", &b_id],
        );
    }
    wait_until(DEADLINE, "every node to agree on the slot's owner", || {
        cluster.nodes.iter().all(|n| {
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut n.conn())
                .unwrap_or_default();
            text.lines().any(|l| {
                l.starts_with(&b_id)
                    && l.split_whitespace()
                        .skip(8)
                        .any(|r| match r.split_once('-') {
                            Some((x, y)) => {
                                x.parse().is_ok_and(|x: usize| x <= slot)
                                    && y.parse().is_ok_and(|y: usize| slot <= y)
                            }
                            None => r == slot_s,
                        })
            })
        })
    });
    took
}

/// RESERVE.WAIT on its own connection in its own thread; the reply comes
/// back through the channel.
fn spawn_waiter(node: &Server, args: &[&str]) -> mpsc::Receiver<Reply> {
    let mut c = node.conn();
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = tx.send(q(&mut c, &argv));
    });
    rx
}

// ----- every slot -----

/// A reservation in each of the 16384 slots through the cluster client,
/// then through `redis-cli -c`: each lands on the node serving its slot,
/// is held there with the token the client got, is contended from the
/// cluster client, and releases.
#[test]
fn every_slot_takes_a_reservation_through_a_cluster_client_and_redis_cli() {
    let started = Instant::now();
    let cluster = Cluster::start(3);
    for key in ["foo", "bar", "user1000", "cc:0", "x"] {
        assert_eq!(
            plain_slot(key),
            usize::from(cluster.slot_of(key)),
            "crc16 of {key}"
        );
    }
    let per_node: Vec<u64> = cluster
        .slot_ranges()
        .iter()
        .map(|&(s, e)| u64::from(e - s) + 1)
        .collect();
    let held_per_node = |cluster: &Cluster| -> Vec<u64> {
        cluster
            .nodes
            .iter()
            .map(|n| reservation_info(&mut n.conn())["held"])
            .collect()
    };

    // ---- the cluster client ----
    let keys = key_for_every_slot("cc:");
    let mut cc = cluster_conn(&cluster);
    let mut tokens: Vec<i64> = Vec::with_capacity(SLOTS);
    for chunk in keys.chunks(2048) {
        let mut pipe = cluster_pipe();
        for key in chunk {
            pipe.cmd("RESERVE.LOCK").arg(key).arg("cc").arg(60);
        }
        let replies: Vec<i64> = pipe.query(&mut cc).expect("cluster pipeline of LOCKs");
        tokens.extend(replies);
    }
    assert!(tokens.iter().all(|&t| t >= 1), "every slot granted");
    assert_eq!(held_per_node(&cluster), per_node);
    // Spot checks on the owner itself, and redirects from the others.
    for slot in (0..SLOTS).step_by(331) {
        let key = &keys[slot];
        let owner = cluster.node_index_for(key);
        let snap =
            snapshot(&mut cluster.nodes[owner].conn(), key.as_bytes()).expect("held on its owner");
        assert_eq!(
            (snap.holder.as_slice(), snap.token),
            (&b"cc"[..], tokens[slot])
        );
        for (i, node) in cluster.nodes.iter().enumerate() {
            if i != owner {
                assert_eq!(
                    q(&mut node.conn(), &["RESERVE.INFO", key]),
                    Reply::Error(format!("MOVED {slot} {}", addr(&cluster.nodes[owner]))),
                    "{key} asked on node {i}"
                );
            }
        }
        // Contention through the cluster client.
        let other: i64 = redis::cmd("RESERVE.LOCK")
            .arg(key)
            .arg("other")
            .arg(60)
            .query(&mut cc)
            .expect("LOCK");
        assert_eq!(other, 0, "{key} is held by cc");
    }
    for slot in [0, 5460, 5461, 10922, 10923, 16383] {
        let waited: i64 = redis::cmd("RESERVE.WAIT")
            .arg(&keys[slot])
            .arg("other")
            .arg(60)
            .arg("0.05")
            .query(&mut cc)
            .expect("WAIT");
        assert_eq!(waited, 0, "WAIT on held {} times out", keys[slot]);
    }
    for (chunk, toks) in keys.chunks(2048).zip(tokens.chunks(2048)) {
        let mut pipe = cluster_pipe();
        for (key, t) in chunk.iter().zip(toks) {
            pipe.cmd("RESERVE.RELEASE")
                .arg(key)
                .arg("cc")
                .arg("TOKEN")
                .arg(*t);
        }
        let replies: Vec<i64> = pipe.query(&mut cc).expect("cluster pipeline of RELEASEs");
        assert!(replies.iter().all(|&r| r == 1), "every release answers 1");
    }
    assert_eq!(held_per_node(&cluster), vec![0, 0, 0]);

    // ---- redis-cli -c ----
    let keys = key_for_every_slot("cli:");
    let lines: Vec<String> = keys
        .iter()
        .map(|k| format!("RESERVE.LOCK {k} cli 60"))
        .collect();
    let out = redis_cli(&cluster.nodes[0], &lines);
    assert_eq!(out.len(), SLOTS, "one reply per command: {:?}", &out[..5]);
    let tokens: Vec<u64> = out
        .iter()
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a token: {l:?}"))
        })
        .collect();
    assert!(tokens.iter().all(|&t| t >= 1));
    assert_eq!(held_per_node(&cluster), per_node);
    // Every one is held by "cli" with that token (read through the
    // cluster client).
    for (chunk, toks) in keys.chunks(2048).zip(tokens.chunks(2048)) {
        let mut pipe = cluster_pipe();
        for key in chunk {
            pipe.cmd("RESERVE.INFO").arg(key);
        }
        let replies: Vec<Value> = pipe.query(&mut cc).expect("cluster pipeline of INFOs");
        for ((key, t), v) in chunk.iter().zip(toks).zip(replies) {
            let f = parse(&v).unwrap_or_else(|| panic!("{key} not held"));
            assert_eq!(
                (text(field(&f, "holder")), int_field(&f, "token") as u64),
                ("cli".to_string(), *t),
                "{key}"
            );
        }
    }
    let lines: Vec<String> = keys
        .iter()
        .zip(&tokens)
        .map(|(k, t)| format!("RESERVE.RELEASE {k} cli TOKEN {t}"))
        .collect();
    let out = redis_cli(&cluster.nodes[2], &lines);
    assert_eq!(out.len(), SLOTS);
    assert!(
        out.iter().all(|l| l.trim() == "1"),
        "every release answers 1"
    );
    assert_eq!(held_per_node(&cluster), vec![0, 0, 0]);
    eprintln!(
        "cluster: 2 x {SLOTS} slots locked and released in {:?}",
        started.elapsed()
    );
}

// ----- slot migration -----

/// Reservations in one slot move from node A to node B with holder,
/// token, acquired-at, renewals and expiry; B raises its token counter to
/// what it received (A's tokens run far ahead of the clock here, through a
/// RESTOREd payload), so the next token for a migrated key is larger.
#[test]
fn slot_migration_keeps_holder_token_and_expiry() {
    let cluster = Cluster::start(3);
    let (a, b) = (0, 1);
    let (tag, slot) = tag_on(&cluster, a, "mig");
    let mut ac = cluster.nodes[a].conn();
    let keys: Vec<String> = (0..8).map(|i| format!("{{{tag}}}:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let ttl = ["60", "120", "300", "3600"][i % 4];
        lock(&mut ac, key, &format!("h{i}"), ttl);
        for _ in 0..i % 3 {
            assert_eq!(
                int(&mut ac, &["RESERVE.RENEW", key, &format!("h{i}"), ttl]),
                1
            );
        }
    }
    // A token far ahead of any clock, RESTOREd on A (as a MIGRATE from
    // some other node would).
    let ahead_key = format!("{{{tag}}}:ahead");
    let t = lock(&mut ac, &ahead_key, "ahead", "600");
    let ahead = t + (1 << 40);
    let payload = dump(&mut ac, &ahead_key);
    let forged = forge_token(&payload, t, ahead);
    let restored = redis::cmd("RESTORE")
        .arg(&ahead_key)
        .arg(600_000)
        .arg(forged)
        .arg("REPLACE")
        .query::<Value>(&mut ac);
    assert!(matches!(restored, Ok(Value::Okay)), "RESTORE: {restored:?}");
    let last = format!("{{{tag}}}:last");
    let last_token = lock(&mut ac, &last, "last", "600");
    assert!(
        last_token > ahead,
        "A took the RESTOREd token {ahead} into account"
    );
    let mut all = keys.clone();
    all.push(ahead_key.clone());
    all.push(last.clone());
    let before: Vec<Snapshot> = all
        .iter()
        .map(|k| snapshot(&mut ac, k.as_bytes()).expect("held on A"))
        .collect();
    let in_slot: BTreeSet<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(100)
        .query(&mut ac)
        .expect("GETKEYSINSLOT");
    assert_eq!(in_slot, all.iter().cloned().collect());

    let took = migrate_slot(&cluster, slot, a, b);
    assert_eq!(owner_of(&cluster, slot), b);

    // On B, everything arrived. MIGRATE sends a relative TTL, so the
    // expiry may move later by at most the time the MIGRATE took.
    let mut bc = cluster.nodes[b].conn();
    for (key, was) in all.iter().zip(&before) {
        let now = snapshot(&mut bc, key.as_bytes()).unwrap_or_else(|| panic!("{key} missing on B"));
        assert_eq!(
            (&now.holder, now.token, now.acquired_at_ms, now.renewals),
            (&was.holder, was.token, was.acquired_at_ms, was.renewals),
            "{key} on B"
        );
        assert!(
            (was.expire_at_ms..=was.expire_at_ms + took + 1).contains(&now.expire_at_ms),
            "{key}: expiry {} on B, {} on A, MIGRATE took {took} ms",
            now.expire_at_ms,
            was.expire_at_ms
        );
    }
    assert_eq!(
        int(&mut ac, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
        0
    );
    assert_eq!(
        q(&mut ac, &["RESERVE.INFO", &keys[0]]),
        Reply::Error(format!("MOVED {slot} {}", addr(&cluster.nodes[b])))
    );
    let stats_b = reservation_info(&mut bc);
    assert_eq!(stats_b["held"], all.len() as u64);
    assert!(
        stats_b["last_token"] >= last_token,
        "B's last_token {} is below a token it received ({last_token})",
        stats_b["last_token"]
    );
    assert_eq!(reservation_info(&mut ac)["held"], 0);

    // Clients find them on B, and they work there.
    let mut cc = cluster_conn(&cluster);
    let renewed: i64 = redis::cmd("RESERVE.RENEW")
        .arg(&keys[1])
        .arg("h1")
        .arg(60)
        .arg("TOKEN")
        .arg(before[1].token)
        .query(&mut cc)
        .expect("RENEW through the cluster client");
    assert_eq!(renewed, 1);
    let released: i64 = redis::cmd("RESERVE.RELEASE")
        .arg(&keys[0])
        .arg("h0")
        .arg("TOKEN")
        .arg(before[0].token)
        .query(&mut cc)
        .expect("RELEASE through the cluster client");
    assert_eq!(released, 1);
    let next: u64 = redis::cmd("RESERVE.LOCK")
        .arg(&keys[0])
        .arg("next")
        .arg(60)
        .query(&mut cc)
        .expect("LOCK through the cluster client");
    let max_before = before.iter().map(|s| s.token as u64).max().expect("tokens");
    assert!(
        next > max_before,
        "B's next token for {} is {next}, not above the migrated {max_before}",
        keys[0]
    );
    assert_eq!(
        snapshot(&mut bc, keys[0].as_bytes()).map(|s| (s.holder, s.token as u64)),
        Some((b"next".to_vec(), next))
    );
}

// ----- waiters on a slot that leaves -----

/// A 3-master cluster where `h1` holds `{tag}:job` (the tag from `name`,
/// its slot on node 0, "A") and `h2` waits for it on A, queued; `before`
/// is A's `INFO reservation` at that moment.
struct WaiterOnA {
    cluster: Cluster,
    slot: usize,
    key: String,
    ac: Connection,
    token: u64,
    waiter: mpsc::Receiver<Reply>,
    before: HashMap<String, u64>,
}

fn waiter_on_a(name: &str) -> WaiterOnA {
    let cluster = Cluster::start(3);
    let (tag, slot) = tag_on(&cluster, 0, name);
    let key = format!("{{{tag}}}:job");
    let mut ac = cluster.nodes[0].conn();
    let token = lock(&mut ac, &key, "h1", "60");
    let waiter = spawn_waiter(&cluster.nodes[0], &["RESERVE.WAIT", &key, "h2", "60", "0"]);
    wait_until(DEADLINE, "h2 queued on A", || {
        queue_of(&mut ac, &key) == ["h2"]
    });
    let before = reservation_info(&mut ac);
    WaiterOnA {
        cluster,
        slot,
        key,
        ac,
        token,
        waiter,
        before,
    }
}

/// A waiter blocked on A for a key whose slot is migrated to B (the key
/// leaves with MIGRATE) is redirected to B, not granted on A; the key is
/// gone from A and held on B by its holder.
#[test]
fn a_waiter_on_a_migrated_key_is_redirected_not_granted() {
    let WaiterOnA {
        cluster,
        slot,
        key,
        mut ac,
        token,
        waiter,
        before,
    } = waiter_on_a("wm");
    let (a, b) = (0, 1);

    migrate_slot(&cluster, slot, a, b);

    let reply = waiter
        .recv_timeout(DEADLINE)
        .expect("the waiter on A got no reply after its key left");
    let target = addr(&cluster.nodes[b]);
    assert!(
        reply == Reply::Error(format!("ASK {slot} {target}"))
            || reply == Reply::Error(format!("MOVED {slot} {target}")),
        "the waiter was told {reply:?}"
    );
    let after = reservation_info(&mut ac);
    assert_eq!(after["waiters"], 0);
    assert_eq!(after["held"], 0);
    assert_eq!(after["grants"], before["grants"], "nothing granted on A");
    assert_eq!(
        after["handoffs"], before["handoffs"],
        "nothing handed off on A"
    );
    assert_eq!(
        int(&mut ac, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
        0
    );
    let mut bc = cluster.nodes[b].conn();
    let on_b = snapshot(&mut bc, key.as_bytes()).expect("the key on B");
    assert_eq!(
        (on_b.holder.as_slice(), on_b.token as u64),
        (&b"h1"[..], token)
    );
    assert_eq!(queue_of(&mut bc, &key), Vec::<String>::new());
    // Following the redirect, h2 queues behind h1 on B.
    assert_eq!(
        int(&mut bc, &["RESERVE.WAIT", &key, "h2", "60", "0.05"]),
        0,
        "h1 still holds it on B"
    );
}

/// A waiter blocked on A for a key deleted while its slot is migrating to
/// B: Redis answers `ASK` for that missing key on A, so does the waiter.
#[test]
fn a_waiter_for_a_key_deleted_while_its_slot_migrates_is_asked_to_the_target() {
    let WaiterOnA {
        cluster,
        slot,
        key,
        mut ac,
        waiter,
        before,
        ..
    } = waiter_on_a("wd");
    let (a, b) = (0, 1);
    let slot_s = slot.to_string();
    ok(
        &mut cluster.nodes[b].conn(),
        &[
            "CLUSTER",
            "SETSLOT",
            &slot_s,
            "IMPORTING",
            &node_id(&cluster.nodes[a]),
        ],
    );
    ok(
        &mut ac,
        &[
            "CLUSTER",
            "SETSLOT",
            &slot_s,
            "MIGRATING",
            &node_id(&cluster.nodes[b]),
        ],
    );
    assert_eq!(int(&mut ac, &["DEL", &key]), 1);
    let reply = waiter
        .recv_timeout(DEADLINE)
        .expect("the waiter on A got no reply after its key was deleted");
    assert_eq!(
        reply,
        Reply::Error(format!("ASK {slot} {}", addr(&cluster.nodes[b])))
    );
    let after = reservation_info(&mut ac);
    assert_eq!(after["waiters"], 0);
    assert_eq!(after["grants"], before["grants"], "nothing granted on A");
    assert_eq!(int(&mut ac, &["CLUSTER", "COUNTKEYSINSLOT", &slot_s]), 0);
    // Redis itself sends a client to B for that key now.
    assert_eq!(
        q(&mut ac, &["RESERVE.LOCK", &key, "h3", "60"]),
        Reply::Error(format!("ASK {slot} {}", addr(&cluster.nodes[b])))
    );
}

/// A waiter blocked on A for a key whose slot another master takes over
/// with a newer config epoch (`CLUSTER SETSLOT ... NODE` on B, then
/// `CLUSTER BUMPEPOCH`): A learns it from gossip and deletes its keys in
/// that slot; the waiter must be told `MOVED` to B, not left blocked.
#[test]
fn a_waiter_whose_slot_is_taken_over_is_moved_to_the_new_owner() {
    let WaiterOnA {
        cluster,
        slot,
        key,
        mut ac,
        waiter,
        before,
        ..
    } = waiter_on_a("wt");
    let b = 1;
    let slot_s = slot.to_string();
    let mut bc = cluster.nodes[b].conn();
    ok(
        &mut bc,
        &[
            "CLUSTER",
            "SETSLOT",
            &slot_s,
            "NODE",
            &node_id(&cluster.nodes[b]),
        ],
    );
    let bumped = q(&mut bc, &["CLUSTER", "BUMPEPOCH"]);
    assert!(
        matches!(&bumped, Reply::Status(s) if s.starts_with("BUMPED") || s.starts_with("STILL")),
        "BUMPEPOCH: {bumped:?}"
    );
    wait_until(DEADLINE, "A to drop its keys in the slot B took", || {
        int(&mut ac, &["CLUSTER", "COUNTKEYSINSLOT", &slot_s]) == 0
    });
    let reply = waiter.recv_timeout(DEADLINE).unwrap_or_else(|_| {
        panic!(
            "the waiter on A got no reply within {DEADLINE:?} after A lost slot {slot} and \
             deleted {key}; INFO reservation on A: waiters {}",
            reservation_info(&mut ac)["waiters"]
        )
    });
    assert_eq!(
        reply,
        Reply::Error(format!("MOVED {slot} {}", addr(&cluster.nodes[b])))
    );
    let after = reservation_info(&mut ac);
    assert_eq!(after["waiters"], 0);
    assert_eq!(after["grants"], before["grants"], "nothing granted on A");
}
