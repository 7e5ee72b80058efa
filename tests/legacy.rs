//! A fleet half-migrated from the old client-side libraries (SPEC section
//! 7): old workers speak the old protocol (`SET key holder NX EX ttl` to
//! lock, `GET` then `EXPIRE` to renew, `DEL` to release) on the same keys
//! as new workers using the module, and the two kinds exclude each other in
//! both directions.

use testkit::{redis, wait_until, Server, DEADLINE};

/// An old library's worker, exactly as node/go `redis-reservation` do it.
struct OldWorker {
    conn: redis::Connection,
    holder: String,
}

impl OldWorker {
    fn new(server: &Server, holder: &str) -> OldWorker {
        OldWorker {
            conn: server.conn(),
            holder: holder.to_string(),
        }
    }

    /// `SET key holder NX EX ttl`: true when acquired.
    fn lock(&mut self, key: &str, ttl: u64) -> bool {
        let reply: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&self.holder)
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query(&mut self.conn)
            .expect("SET NX EX");
        reply.is_some()
    }

    /// `GET` then `EXPIRE` when the value is ours; a key of another type
    /// is an error for `GET`, which the old library reports as a failure.
    fn renew(&mut self, key: &str, ttl: u64) -> bool {
        let value: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg(key).query(&mut self.conn);
        match value {
            Ok(Some(v)) if v == self.holder => {
                let set: i64 = redis::cmd("EXPIRE")
                    .arg(key)
                    .arg(ttl)
                    .query(&mut self.conn)
                    .expect("EXPIRE");
                set == 1
            }
            _ => false,
        }
    }

    /// The old release: a plain `DEL`.
    fn release(&mut self, key: &str) -> i64 {
        redis::cmd("DEL")
            .arg(key)
            .query(&mut self.conn)
            .expect("DEL")
    }
}

/// `RESERVE.WAIT key holder 30 0` from its own connection and thread; the
/// handle yields the token.
fn spawn_wait(
    server: &Server,
    key: &'static str,
    holder: &'static str,
) -> std::thread::JoinHandle<u64> {
    let mut c = server.conn();
    std::thread::spawn(move || {
        redis::cmd("RESERVE.WAIT")
            .arg(key)
            .arg(holder)
            .arg(30)
            .arg(0)
            .query::<u64>(&mut c)
            .expect("WAIT")
    })
}

fn lock(c: &mut redis::Connection, key: &str, holder: &str, ttl: &str) -> u64 {
    redis::cmd("RESERVE.LOCK")
        .arg(key)
        .arg(holder)
        .arg(ttl)
        .query(c)
        .expect("RESERVE.LOCK")
}

fn holder(c: &mut redis::Connection, key: &str) -> Option<Vec<u8>> {
    let info: Option<Vec<redis::Value>> =
        redis::cmd("RESERVE.INFO").arg(key).query(c).expect("INFO");
    info.map(|fields| match &fields[1] {
        redis::Value::BulkString(b) => b.clone(),
        other => panic!("holder field: {other:?}"),
    })
}

#[test]
fn an_old_workers_lock_keeps_module_workers_out_until_it_releases() {
    let server = Server::start();
    let mut new = server.conn();
    let mut old = OldWorker::new(&server, "host1-worker-4242");
    let key = "reservation-nightly";

    assert!(old.lock(key, 30));
    assert_eq!(
        lock(&mut new, key, "new-worker", "30"),
        0,
        "LOCK answers held"
    );
    assert_eq!(
        holder(&mut new, key).as_deref(),
        Some(&b"host1-worker-4242"[..])
    );
    assert!(
        old.renew(key, 60),
        "the old renew still works on its own lock"
    );

    // A module worker waits; the old worker's DEL hands the key over.
    let waiter = spawn_wait(&server, key, "new-worker");
    wait_until(DEADLINE, "the module worker queued", || {
        let info: Vec<redis::Value> = redis::cmd("RESERVE.INFO").arg(key).query(&mut new).unwrap();
        info.chunks(2).any(|p| {
            p[0] == redis::Value::BulkString(b"waiters".to_vec()) && p[1] == redis::Value::Int(1)
        })
    });
    assert_eq!(old.release(key), 1);
    let token = waiter.join().expect("waiter thread");
    assert!(token > 0);
    assert_eq!(holder(&mut new, key).as_deref(), Some(&b"new-worker"[..]));
}

#[test]
fn a_module_reservation_keeps_old_workers_out() {
    let server = Server::start();
    let mut new = server.conn();
    let mut old = OldWorker::new(&server, "host2-worker-7");
    let key = "reservation-billing";

    let token = lock(&mut new, key, "new-worker", "30");
    assert!(token > 0);
    assert!(!old.lock(key, 30), "SET NX fails on a module reservation");
    assert!(
        !old.renew(key, 30),
        "GET on the module key is WRONGTYPE: no renew"
    );
    assert_eq!(holder(&mut new, key).as_deref(), Some(&b"new-worker"[..]));
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut new).unwrap();
    assert!(pttl <= 30_000, "the old renew did not extend it: {pttl}");

    // Released by the module worker, the key is free for an old worker.
    let released: i64 = redis::cmd("RESERVE.RELEASE")
        .arg(key)
        .arg("new-worker")
        .query(&mut new)
        .unwrap();
    assert_eq!(released, 1);
    assert!(old.lock(key, 30));
    assert_eq!(lock(&mut new, key, "new-worker", "30"), 0);
}

#[test]
fn an_expired_old_lock_goes_to_the_module_waiter() {
    let server = Server::start();
    let mut new = server.conn();
    let mut old = OldWorker::new(&server, "host3-worker-1");
    let key = "reservation-expiring";
    assert!(old.lock(key, 1));
    let waiter = spawn_wait(&server, key, "new-worker");
    // Nobody touches the key: the old lock's expiry alone grants it.
    let token = waiter.join().expect("waiter thread");
    assert!(token > 0);
    assert_eq!(holder(&mut new, key).as_deref(), Some(&b"new-worker"[..]));
    assert!(!old.lock(key, 30));
}

#[test]
fn mixed_workers_take_turns_without_overlap() {
    // Old and new workers alternate on one key for a number of rounds;
    // whoever holds it, the other kind is refused, and each release frees
    // it for the next.
    let server = Server::start();
    let mut new = server.conn();
    let mut old = OldWorker::new(&server, "host4-worker-9");
    let key = "reservation-shared";
    for round in 0..50 {
        if round % 2 == 0 {
            assert!(old.lock(key, 30), "round {round}");
            assert_eq!(lock(&mut new, key, "new-worker", "30"), 0, "round {round}");
            assert_eq!(old.release(key), 1);
        } else {
            assert!(lock(&mut new, key, "new-worker", "30") > 0, "round {round}");
            assert!(!old.lock(key, 30), "round {round}");
            let released: i64 = redis::cmd("RESERVE.RELEASE")
                .arg(key)
                .arg("new-worker")
                .query(&mut new)
                .unwrap();
            assert_eq!(released, 1, "round {round}");
        }
    }
}
