//! The blocking client against real servers with the module loaded.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{command_calls, exists, holder_of, info_field, token_of, Logs};
use redis_reservation_client::{
    Access, Error, Level, LostReason, LostReservation, ReservationManager,
    ReservationManagerBuilder,
};
use testkit::{redis, wait_until, Config, Server, DEADLINE};

/// A builder pointed at `server`, with TTL and heartbeat long enough that
/// the heartbeat stays out of the way unless a test wants it.
fn builder(server: &Server, by: &str) -> ReservationManagerBuilder {
    ReservationManager::builder(by)
        .url(server.url())
        .lock_ttl(Duration::from_secs(60))
        .heartbeat_interval(Duration::from_secs(20))
}

fn manager(server: &Server, by: &str) -> ReservationManager {
    builder(server, by).build().unwrap()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap()
}

#[test]
fn lock_release_and_lock_again() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "worker-a");
    let b = manager(&server, "worker-b");

    let first = a.lock("job").unwrap().expect("the resource is free");
    assert_eq!(first.key(), "reservation-job");
    assert_eq!(first.resource(), "job");
    assert!(first.token() >= 1);
    let prefix = format!("worker-a-{}-{}-", hostname(), std::process::id());
    assert!(first.holder().starts_with(&prefix), "{}", first.holder());
    let random = &first.holder()[prefix.len()..];
    assert_eq!(random.len(), 8, "{}", first.holder());
    assert!(random.chars().all(|c| c.is_ascii_hexdigit()));

    let kind: String = redis::cmd("TYPE")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    assert_eq!(kind, "rsrv-lock");
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(first.holder())
    );
    assert_eq!(token_of(&mut c, "reservation-job"), Some(first.token()));
    let pttl: i64 = redis::cmd("PTTL")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "PTTL {pttl}");

    // Someone else holds it: None, and nothing changes.
    assert!(b.lock("job").unwrap().is_none());
    // Even the same worker name gets a new holder identity per lock.
    assert!(a.lock("job").unwrap().is_none());
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(first.holder())
    );

    let info = a.info("job").unwrap().expect("held");
    assert_eq!(info.holder, first.holder());
    assert_eq!(info.token, first.token());
    assert_eq!(info.waiters, 0);

    let first_token = first.token();
    first.release().unwrap();
    assert!(!exists(&mut c, "reservation-job"));
    assert_eq!(a.info("job").unwrap(), None);

    let second = b.lock("job").unwrap().expect("free again after release");
    assert!(second.token() > first_token);
    assert!(second.holder().starts_with("worker-b-"));
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(second.holder())
    );
    second.release().unwrap();
    assert_eq!(info_field(&mut c, "releases"), 2);
}

#[test]
fn key_prefix_and_host_port_password_settings() {
    let server = Server::start();
    let mut c = server.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query(&mut c)
        .unwrap();
    let m = ReservationManager::builder("w")
        .host_port("127.0.0.1", server.port())
        .password("s3cret")
        .key_prefix("jobs:")
        .build()
        .unwrap();
    let r = m.lock("nightly").unwrap().expect("free");
    assert_eq!(r.key(), "jobs:nightly");
    assert!(exists(&mut c, "jobs:nightly"));
    r.release().unwrap();
    assert!(!exists(&mut c, "jobs:nightly"));

    let wrong = ReservationManager::builder("w")
        .host_port("127.0.0.1", server.port())
        .password("wrong")
        .build()
        .unwrap();
    let err = wrong.lock("nightly").unwrap_err();
    assert!(
        !matches!(err, Error::ModuleNotLoaded | Error::Lost),
        "{err:?}"
    );
}

#[test]
fn heartbeat_keeps_a_one_second_reservation_alive() {
    let server = Server::start();
    let mut c = server.conn();
    let m = ReservationManager::builder("hb")
        .url(server.url())
        .lock_ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(m.heartbeat_interval(), Duration::from_secs(1) / 3);
    let r = m.lock("job").unwrap().expect("free");
    // Nine renewals at a third of a second each: about three seconds, three
    // TTLs, and the key never lapses in between.
    wait_until(DEADLINE, "9 renewals with the key alive", || {
        let pttl: i64 = redis::cmd("PTTL")
            .arg("reservation-job")
            .query(&mut c)
            .unwrap();
        assert!(pttl > 0, "the reservation lapsed (PTTL {pttl})");
        info_field(&mut c, "renewals") >= 9
    });
    assert_eq!(info_field(&mut c, "renew_failures"), 0);
    assert_eq!(info_field(&mut c, "expirations"), 0);
    assert!(!r.is_lost());
    assert_eq!(token_of(&mut c, "reservation-job"), Some(r.token()));
    let lost = r.lost_receiver();
    r.release().unwrap();
    assert!(!exists(&mut c, "reservation-job"));

    // The heartbeat does not outlive release(): a renewal with the old
    // token would now be refused and counted. Let another reservation on
    // the same key renew a few times meanwhile.
    let other = m.lock("job").unwrap().expect("free");
    let renewals = info_field(&mut c, "renewals");
    wait_until(DEADLINE, "3 renewals of the new reservation", || {
        info_field(&mut c, "renewals") >= renewals + 3
    });
    assert_eq!(info_field(&mut c, "renew_failures"), 0);
    assert!(
        matches!(lost.try_recv(), Err(mpsc::TryRecvError::Disconnected)),
        "a released reservation is not reported lost"
    );
    other.release().unwrap();
}

#[test]
fn deleting_the_key_makes_the_heartbeat_report_it_lost() {
    let server = Server::start();
    let mut c = server.conn();
    let logs = Logs::default();
    let events = Arc::new(Mutex::new(Vec::<LostReservation>::new()));
    let seen = events.clone();
    let m = ReservationManager::builder("lose")
        .url(server.url())
        .lock_ttl(Duration::from_secs(30))
        .heartbeat_interval(Duration::from_millis(100))
        .logger(logs.logger())
        .on_lost(move |e| seen.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let r = m.lock("job").unwrap().expect("free");
    let rx = r.lost_receiver();
    assert!(!r.is_lost());
    assert!(logs.has(Level::Info, &["reserved reservation-job", r.holder()]));

    let deleted: i64 = redis::cmd("DEL")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    assert_eq!(deleted, 1);
    wait_until(DEADLINE, "the heartbeat notices", || r.is_lost());

    let expected = LostReservation {
        resource: "job".into(),
        key: "reservation-job".into(),
        holder: r.holder().to_string(),
        token: r.token(),
        reason: LostReason::NotHeld,
    };
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), expected);
    assert_eq!(*events.lock().unwrap(), vec![expected.clone()]);
    // A receiver made after the fact hears about it right away.
    assert_eq!(r.lost_receiver().try_recv().unwrap(), expected);
    assert!(logs.has(Level::Warn, &["reservation-job", "lost", r.holder()]));
    // The lost watcher (RESERVE.OBSERVE) or the heartbeat's RENEW found
    // it, whichever came first.
    assert!(matches!(r.renew(), Err(Error::Lost)));

    // The heartbeat stopped: no renewal keeps being refused.
    let failures = info_field(&mut c, "renew_failures");
    assert!(matches!(r.release(), Err(Error::Lost)));
    assert_eq!(info_field(&mut c, "renew_failures"), failures);
    assert_eq!(events.lock().unwrap().len(), 1, "reported once");
}

#[test]
fn wait_until_lock_is_granted_on_release_without_polling() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "first");
    let b = manager(&server, "second");
    let held = a.lock("job").unwrap().expect("free");
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();

    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(b.wait_until_lock("job")).unwrap();
    });
    wait_until(DEADLINE, "the waiter is queued", || {
        info_field(&mut c, "waiters") == 1
    });
    let queue = a.info("job").unwrap().expect("held").queue;
    assert_eq!(queue.len(), 1);
    assert!(queue[0].starts_with("second-"), "{queue:?}");
    assert!(rx.try_recv().is_err(), "granted while still held");

    let held_token = held.token();
    held.release().unwrap();
    let got = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    waiter.join().unwrap();
    assert_eq!(got.key(), "reservation-job");
    assert!(got.token() > held_token);
    assert_eq!(queue[0], got.holder());
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(got.holder())
    );
    assert_eq!(info_field(&mut c, "handoffs"), 1);
    // One WAIT, no polling LOCKs.
    assert_eq!(command_calls(&mut c, "reserve.wait"), 1);
    assert_eq!(command_calls(&mut c, "reserve.lock"), 0);
    got.release().unwrap();
}

#[test]
fn wait_with_timeout_gives_up_with_nothing_held_or_queued() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "holder");
    let b = manager(&server, "waiter");
    let held = a.lock("job").unwrap().expect("free");

    let got = b
        .wait_until_lock_timeout("job", Duration::from_millis(300))
        .unwrap();
    assert!(got.is_none());
    assert_eq!(info_field(&mut c, "wait_timeouts"), 1);
    assert_eq!(info_field(&mut c, "waiters"), 0);
    let info = a.info("job").unwrap().expect("still held");
    assert_eq!(info.holder, held.holder());
    assert_eq!(info.waiters, 0);
    assert!(info.queue.is_empty());
    assert_eq!(command_calls(&mut c, "reserve.wait"), 1);

    // A zero timeout is a plain LOCK.
    assert!(b
        .wait_until_lock_timeout("job", Duration::ZERO)
        .unwrap()
        .is_none());
    assert_eq!(command_calls(&mut c, "reserve.wait"), 1);

    // Free: granted at once.
    held.release().unwrap();
    let got = b
        .wait_until_lock_timeout("job", Duration::from_secs(5))
        .unwrap()
        .expect("free now");
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(got.holder())
    );
}

/// A worker waits on a reservation that survives a restart (AOF): it
/// reconnects, waits again, and is granted when the holder releases.
#[test]
fn waiter_reconnects_after_a_restart_and_waits_again() {
    let mut server = Server::with(Config::default().aof());
    let mut c = server.conn();
    let old: u64 = redis::cmd("RESERVE.LOCK")
        .arg("reservation-job")
        .arg("other-worker")
        .arg(60)
        .query(&mut c)
        .unwrap();
    assert!(old >= 1);

    let logs = Logs::default();
    let m = builder(&server, "patient")
        .logger(logs.logger())
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(m.wait_until_lock("job")).unwrap();
    });
    wait_until(DEADLINE, "queued before the restart", || {
        info_field(&mut c, "waiters") == 1
    });

    server.restart();
    let mut c = server.conn();
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some("other-worker"),
        "the AOF restores the reservation"
    );
    wait_until(DEADLINE, "queued again after the restart", || {
        info_field(&mut c, "waiters") == 1
    });
    assert!(rx.try_recv().is_err(), "granted while still held");
    assert!(logs.has(Level::Warn, &["reservation-job", "reconnecting"]));

    let released: i64 = redis::cmd("RESERVE.RELEASE")
        .arg("reservation-job")
        .arg("other-worker")
        .query(&mut c)
        .unwrap();
    assert_eq!(released, 1);
    let got = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    waiter.join().unwrap();
    assert!(got.token() > old);
    assert!(got.holder().starts_with("patient-"));
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(got.holder())
    );
    got.release().unwrap();
}

/// Without persistence the holder's reservation is gone after the restart:
/// the reconnected waiter gets it straight away.
#[test]
fn waiter_is_granted_after_a_restart_that_lost_the_holder() {
    let mut server = Server::start();
    let mut c = server.conn();
    let _: u64 = redis::cmd("RESERVE.LOCK")
        .arg("reservation-job")
        .arg("other-worker")
        .arg(60)
        .query(&mut c)
        .unwrap();
    let m = manager(&server, "patient");
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(m.wait_until_lock_timeout("job", Duration::from_secs(60)))
            .unwrap();
    });
    wait_until(DEADLINE, "queued", || info_field(&mut c, "waiters") == 1);
    server.restart();
    let got = rx
        .recv_timeout(DEADLINE)
        .unwrap()
        .unwrap()
        .expect("granted after the restart");
    waiter.join().unwrap();
    let mut c = server.conn();
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(got.holder())
    );
    got.release().unwrap();
}

/// The waiter's connection is killed: it reconnects and queues again.
#[test]
fn waiter_survives_its_connection_being_killed() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "holder");
    let b = manager(&server, "waiter");
    let held = a.lock("job").unwrap().expect("free");
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(b.wait_until_lock("job")).unwrap();
    });
    wait_until(DEADLINE, "queued", || info_field(&mut c, "waiters") == 1);
    // Kills every other client: the waiter's and the managers' shared ones.
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut c)
        .unwrap();
    wait_until(DEADLINE, "queued again", || {
        info_field(&mut c, "waits_blocked") == 2 && info_field(&mut c, "waiters") == 1
    });
    // The holder's manager reconnects by itself too.
    held.release().unwrap();
    let got = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    waiter.join().unwrap();
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(got.holder())
    );
    // Redis counts the killed WAIT in commandstats too; Valkey counts a
    // blocked command only when it returns.
    let on_valkey = std::env::var("RESERVATION_SERVER").is_ok_and(|s| s.contains("valkey"));
    assert_eq!(
        command_calls(&mut c, "reserve.wait"),
        if on_valkey { 1 } else { 2 }
    );
}

#[test]
fn dropping_a_reservation_releases_it() {
    let server = Server::start();
    let mut c = server.conn();
    let m = manager(&server, "dropper");
    let r = m.lock("job").unwrap().expect("free");
    assert!(exists(&mut c, "reservation-job"));
    drop(r);
    assert!(!exists(&mut c, "reservation-job"));
    assert_eq!(info_field(&mut c, "releases"), 1);
    {
        let _scoped = m.lock("job").unwrap().expect("free again");
        assert!(exists(&mut c, "reservation-job"));
    }
    assert!(!exists(&mut c, "reservation-job"));
}

#[test]
fn a_lost_reservation_never_frees_the_new_holders() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "slow");
    let b = manager(&server, "fast");

    // release() after the reservation moved on: Error::Lost, B keeps it.
    let stale = a.lock("job").unwrap().expect("free");
    let lost = stale.lost_receiver();
    let _: i64 = redis::cmd("DEL")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    let fresh = b.lock("job").unwrap().expect("free after DEL");
    assert!(fresh.token() > stale.token());
    assert!(matches!(stale.release(), Err(Error::Lost)));
    assert_eq!(
        lost.recv_timeout(DEADLINE).unwrap().reason,
        LostReason::NotHeld
    );
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(fresh.holder())
    );
    assert_eq!(token_of(&mut c, "reservation-job"), Some(fresh.token()));
    // Its RELEASE was refused, or never sent: the lost watcher may have
    // found the loss first.
    assert!(info_field(&mut c, "release_failures") <= 1);
    fresh.release().unwrap();

    // Same through Drop.
    let stale = a.lock("job").unwrap().expect("free");
    let _: i64 = redis::cmd("DEL")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    let fresh = b.lock("job").unwrap().expect("free after DEL");
    drop(stale);
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(fresh.holder())
    );
    fresh.release().unwrap();
}

#[test]
fn the_shared_connection_comes_back_after_being_killed() {
    let server = Server::start();
    let mut c = server.conn();
    let m = manager(&server, "w");
    let r = m.lock("job").unwrap().expect("free");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut c)
        .unwrap();
    // The shared connection, and the lost watcher's when the server has
    // RESERVE.OBSERVE.
    assert!((1..=2).contains(&killed), "{killed}");
    r.renew().unwrap();
    r.release().unwrap();
    assert!(!exists(&mut c, "reservation-job"));
}

#[test]
fn a_server_without_the_module_says_so() {
    let server = Server::with(Config {
        without_module: true,
        ..Config::default()
    });
    let m = manager(&server, "w");
    let err = m.lock("job").unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded), "{err:?}");
    assert!(
        err.to_string()
            .contains("the reservation module is not loaded on this server"),
        "{err}"
    );
    let err = m
        .wait_until_lock_timeout("job", Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded), "{err:?}");
    let err = m.wait_until_lock("job").unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded), "{err:?}");
}

#[test]
fn an_old_librarys_plain_string_reservation_is_respected() {
    let server = Server::start();
    let mut c = server.conn();
    let _: () = redis::cmd("SET")
        .arg("reservation-job")
        .arg("oldhost-worker-123")
        .arg("EX")
        .arg(60)
        .query(&mut c)
        .unwrap();
    let m = manager(&server, "new");
    assert!(m.lock("job").unwrap().is_none());
    assert_eq!(
        m.info("job").unwrap().expect("held").holder,
        "oldhost-worker-123"
    );
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let m = m.clone();
        std::thread::spawn(move || {
            tx.send(m.wait_until_lock_timeout("job", Duration::from_secs(60)))
                .unwrap();
        })
    };
    wait_until(DEADLINE, "queued", || info_field(&mut c, "waiters") == 1);
    let _: i64 = redis::cmd("DEL")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    let got = rx
        .recv_timeout(DEADLINE)
        .unwrap()
        .unwrap()
        .expect("granted");
    waiter.join().unwrap();
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(got.holder())
    );
}

#[test]
fn replica_acknowledgement() {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    let mut c = master.conn();
    let mut rc = replica.conn();

    let one = builder(&master, "acked")
        .replica_ack(1, Duration::from_secs(10))
        .build()
        .unwrap();
    let r = one.lock("job").unwrap().expect("one replica acknowledges");
    // Acknowledged means the replica has it already.
    assert_eq!(
        holder_of(&mut rc, "reservation-job").as_deref(),
        Some(r.holder())
    );
    r.release().unwrap();

    let two = builder(&master, "greedy")
        .replica_ack(2, Duration::from_millis(200))
        .build()
        .unwrap();
    let err = two.lock("job").unwrap_err();
    assert!(
        matches!(err, Error::ReplicaAck { wanted: 2, got: 1 }),
        "{err:?}"
    );
    assert!(!exists(&mut c, "reservation-job"), "released again");
    let err = two
        .wait_until_lock_timeout("job", Duration::from_secs(5))
        .unwrap_err();
    assert!(
        matches!(err, Error::ReplicaAck { wanted: 2, got: 1 }),
        "{err:?}"
    );
    assert!(!exists(&mut c, "reservation-job"), "released again");
    wait_until(DEADLINE, "the replica follows", || {
        !exists(&mut rc, "reservation-job")
    });
}

#[test]
fn an_unreachable_server_is_a_connection_error() {
    let port = testkit::free_port();
    let m = ReservationManager::builder("w")
        .host_port("127.0.0.1", port)
        .reconnect(3, Duration::from_millis(20))
        .build()
        .unwrap();
    let err = m.lock("job").unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(err.is_connection_error());
    let err = m
        .wait_until_lock_timeout("job", Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    // Waiting forever still gives up after the bounded attempts.
    let err = m.wait_until_lock("job").unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
}

#[test]
fn shared_reservations_and_semaphore_permits() {
    let server = Server::start();
    let mut c = server.conn();
    let readers = manager(&server, "reader");
    let writer = manager(&server, "writer");
    // Readers share; a writer does not fit beside them.
    let r1 = readers.lock_shared("doc").unwrap().expect("free");
    let r2 = readers.lock_shared("doc").unwrap().expect("shared");
    assert_eq!(r1.access(), Access::Shared);
    assert!(r2.token() > r1.token());
    assert!(writer.lock("doc").unwrap().is_none());
    // A queued writer is granted when the last reader leaves.
    let (tx, rx) = mpsc::channel();
    let w = std::thread::spawn(move || tx.send(writer.wait_until_lock("doc")).unwrap());
    wait_until(DEADLINE, "the writer is queued", || {
        info_field(&mut c, "waiters") == 1
    });
    assert!(
        readers.lock_shared("doc").unwrap().is_none(),
        "no reader passes a queued writer"
    );
    r1.release().unwrap();
    assert!(rx.try_recv().is_err());
    drop(r2); // dropping releases
    let got = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    w.join().unwrap();
    assert_eq!(got.access(), Access::Exclusive);
    got.release().unwrap();

    // A semaphore of 3: 2 + 1 permits fit, one more waits for a release.
    let pool = manager(&server, "pool");
    let a = pool.lock_permits("gpu", 3, 2).unwrap().expect("2 of 3");
    let b = pool.lock_permits("gpu", 3, 1).unwrap().expect("3 of 3");
    assert!(pool.lock_permits("gpu", 3, 1).unwrap().is_none());
    let info = pool.info("gpu").unwrap().expect("held");
    assert_eq!(info.holder, a.holder());
    let timed_out = pool
        .wait_with(
            "gpu",
            Access::Permits {
                limit: 3,
                permits: 1,
            },
            Some(Duration::from_millis(50)),
        )
        .unwrap();
    assert!(timed_out.is_none());
    a.release().unwrap();
    let c2 = pool.wait_until_permits("gpu", 3, 2).unwrap();
    assert!(c2.token() > b.token());
    // The heartbeat renews shared grants too.
    c2.renew().unwrap();
    b.release().unwrap();
    c2.release().unwrap();
    assert!(!exists(&mut c, "reservation-gpu"));
}

#[test]
fn lock_all_and_wait_all_hold_every_key_in_one_handle() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "first");
    let b = manager(&server, "second");
    let set = a.lock_all(&["x", "y"]).unwrap().expect("both free");
    let keys: Vec<(String, u64)> = set
        .keys()
        .iter()
        .map(|(k, t)| (k.to_string(), *t))
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0].0.as_str(), keys[1].0.as_str()),
        ("reservation-x", "reservation-y")
    );
    assert_eq!(set.token(), keys[0].1);
    assert!(b.lock_all(&["y", "z"]).unwrap().is_none(), "all or none");
    assert!(!exists(&mut c, "reservation-z"));
    // One heartbeat renews every key.
    set.renew().unwrap();
    // A wait for both is granted when the set is released, in one piece.
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || tx.send(b.wait_all(&["y", "x"], None)).unwrap());
    wait_until(DEADLINE, "queued on both keys", || {
        info_field(&mut c, "waiters") == 2
    });
    let first_tokens: Vec<u64> = keys.iter().map(|(_, t)| *t).collect();
    drop(set); // releases both
    let got = rx
        .recv_timeout(DEADLINE)
        .unwrap()
        .unwrap()
        .expect("granted");
    waiter.join().unwrap();
    let second: Vec<(String, u64)> = got
        .keys()
        .iter()
        .map(|(k, t)| (k.to_string(), *t))
        .collect();
    assert_eq!(second[0].0, "reservation-y");
    assert!(second
        .iter()
        .all(|(_, t)| first_tokens.iter().all(|f| t > f)));
    // A timed-out wait leaves nothing behind.
    let other = manager(&server, "third");
    assert!(other
        .wait_all(&["x"], Some(Duration::from_millis(50)))
        .unwrap()
        .is_none());
    got.release().unwrap();
    assert!(!exists(&mut c, "reservation-x") && !exists(&mut c, "reservation-y"));
}

#[test]
fn guard_writes_only_while_the_reservation_holds() {
    let server = Server::start();
    let mut c = server.conn();
    let m = manager(&server, "writer");
    let held = m.lock("report").unwrap().expect("free");
    let mut incr = redis::cmd("INCR");
    incr.arg("report:count");
    assert_eq!(held.guard::<i64>(&incr).unwrap(), 1);
    assert_eq!(held.guard::<i64>(&incr).unwrap(), 2);
    // Taken away (deleted, then someone else's): the write is fenced and
    // the reservation reported lost.
    let _: () = redis::cmd("DEL")
        .arg("reservation-report")
        .query(&mut c)
        .unwrap();
    let other = manager(&server, "other")
        .lock("report")
        .unwrap()
        .expect("free again");
    assert!(matches!(held.guard::<i64>(&incr), Err(Error::Lost)));
    assert!(held.is_lost());
    let count: i64 = redis::cmd("GET").arg("report:count").query(&mut c).unwrap();
    assert_eq!(count, 2, "the fenced write did not run");
    assert_eq!(other.guard::<i64>(&incr).unwrap(), 3);
}
