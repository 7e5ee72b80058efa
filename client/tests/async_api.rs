//! The async (tokio) client against real servers.
#![cfg(feature = "tokio")]

mod common;

use std::time::Duration;

use common::{command_calls, exists, holder_of, info_field, Logs};
use redis_reservation_client::{
    Access, AsyncReservationManager, Error, Level, LostReason, ReservationManager,
};
use testkit::{redis, wait_until, Config, Server, DEADLINE};

fn manager(server: &Server, by: &str) -> AsyncReservationManager {
    ReservationManager::builder(by)
        .url(server.url())
        .lock_ttl(Duration::from_secs(60))
        .heartbeat_interval(Duration::from_secs(20))
        .build_async()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_release_and_contention() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "async-a");
    let b = AsyncReservationManager::builder("async-b")
        .url(server.url())
        .build_async()
        .unwrap();

    let r = a.lock("job").await.unwrap().expect("free");
    assert_eq!(r.key(), "reservation-job");
    assert!(r.holder().starts_with("async-a-"));
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(r.holder())
    );
    assert!(b.lock("job").await.unwrap().is_none());
    assert_eq!(a.info("job").await.unwrap().unwrap().token, r.token());

    let first = r.token();
    r.release().await.unwrap();
    assert!(!exists(&mut c, "reservation-job"));
    let r = b.lock("job").await.unwrap().expect("free again");
    assert!(r.token() > first);
    r.release().await.unwrap();
    assert!(!exists(&mut c, "reservation-job"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_lock_is_granted_on_release() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "holder");
    let b = manager(&server, "waiter");
    let held = a.lock("job").await.unwrap().expect("free");
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();

    let waiter = tokio::spawn(async move { b.wait_until_lock("job").await });
    wait_until(DEADLINE, "queued", || info_field(&mut c, "waiters") == 1);
    assert!(!waiter.is_finished());
    let held_token = held.token();
    held.release().await.unwrap();
    let got = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("granted in time")
        .unwrap()
        .unwrap();
    assert!(got.token() > held_token);
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(got.holder())
    );
    assert_eq!(command_calls(&mut c, "reserve.wait"), 1);
    assert_eq!(command_calls(&mut c, "reserve.lock"), 0);
    got.release().await.unwrap();

    // The timeout variant gives up with nothing held.
    let held = a.lock("job").await.unwrap().expect("free");
    let b = manager(&server, "waiter");
    assert!(b
        .wait_until_lock_timeout("job", Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    assert_eq!(info_field(&mut c, "waiters"), 0);
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(held.holder())
    );
    held.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_reconnects_when_its_connection_is_killed() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "holder");
    let b = manager(&server, "waiter");
    let held = a.lock("job").await.unwrap().expect("free");
    let waiter = tokio::spawn(async move { b.wait_until_lock("job").await });
    wait_until(DEADLINE, "queued", || info_field(&mut c, "waiters") == 1);
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut c)
        .unwrap();
    wait_until(DEADLINE, "queued again", || {
        info_field(&mut c, "waits_blocked") == 2 && info_field(&mut c, "waiters") == 1
    });
    held.release().await.unwrap();
    let got = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("granted in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        holder_of(&mut c, "reservation-job").as_deref(),
        Some(got.holder())
    );
    got.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_renews_and_reports_loss() {
    let server = Server::start();
    let mut c = server.conn();
    let logs = Logs::default();
    let m = ReservationManager::builder("beat")
        .url(server.url())
        .lock_ttl(Duration::from_secs(1))
        .logger(logs.logger())
        .build_async()
        .unwrap();
    let r = m.lock("job").await.unwrap().expect("free");
    wait_until(DEADLINE, "6 renewals with the key alive", || {
        let pttl: i64 = redis::cmd("PTTL")
            .arg("reservation-job")
            .query(&mut c)
            .unwrap();
        assert!(pttl > 0, "the reservation lapsed (PTTL {pttl})");
        info_field(&mut c, "renewals") >= 6
    });
    let rx = r.lost_receiver();
    let _: i64 = redis::cmd("DEL")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    tokio::time::timeout(DEADLINE, r.lost())
        .await
        .expect("reported lost");
    assert!(r.is_lost());
    assert_eq!(
        rx.recv_timeout(DEADLINE).unwrap().reason,
        LostReason::NotHeld
    );
    assert!(logs.has(Level::Warn, &["reservation-job", "lost"]));
    assert!(matches!(r.release().await, Err(Error::Lost)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_task_does_not_outlive_release() {
    let server = Server::start();
    let mut c = server.conn();
    let m = ReservationManager::builder("beat")
        .url(server.url())
        .lock_ttl(Duration::from_secs(1))
        .build_async()
        .unwrap();
    let r = m.lock("job").await.unwrap().expect("free");
    wait_until(DEADLINE, "a renewal", || {
        info_field(&mut c, "renewals") >= 1
    });
    r.release().await.unwrap();
    // A renewal with the old token would be refused and counted.
    let other = m.lock("job").await.unwrap().expect("free");
    let renewals = info_field(&mut c, "renewals");
    wait_until(DEADLINE, "3 renewals of the new reservation", || {
        info_field(&mut c, "renewals") >= renewals + 3
    });
    assert_eq!(info_field(&mut c, "renew_failures"), 0);
    other.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_releases_on_the_runtime() {
    let server = Server::start();
    let mut c = server.conn();
    let m = manager(&server, "dropper");
    let r = m.lock("job").await.unwrap().expect("free");
    drop(r);
    wait_until(DEADLINE, "released by the spawned task", || {
        !exists(&mut c, "reservation-job")
    });
    assert_eq!(info_field(&mut c, "releases"), 1);
}

#[test]
fn dropping_outside_a_runtime_neither_blocks_nor_panics() {
    let server = Server::start();
    let mut c = server.conn();
    let logs = Logs::default();
    let m = ReservationManager::builder("orphan")
        .url(server.url())
        .logger(logs.logger())
        .build_async()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(m.lock("job")).unwrap().expect("free");
    drop(rt);
    drop(r);
    assert!(logs.has(Level::Warn, &["reservation-job", "outside a tokio runtime"]));
    // Left to expire after its TTL.
    assert!(exists(&mut c, "reservation-job"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_module_says_so() {
    let server = Server::with(Config {
        without_module: true,
        ..Config::default()
    });
    let m = manager(&server, "w");
    let err = m.lock("job").await.unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded), "{err:?}");
    let err = m
        .wait_until_lock_timeout("job", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ModuleNotLoaded), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acknowledgement() {
    let master = Server::start();
    let replica = Server::start();
    replica.replicate_from(&master);
    let mut c = master.conn();
    let m = ReservationManager::builder("greedy")
        .url(master.url())
        .replica_ack(2, Duration::from_millis(200))
        .build_async()
        .unwrap();
    let err = m.lock("job").await.unwrap_err();
    assert!(
        matches!(err, Error::ReplicaAck { wanted: 2, got: 1 }),
        "{err:?}"
    );
    assert!(!exists(&mut c, "reservation-job"));
    let m = ReservationManager::builder("acked")
        .url(master.url())
        .replica_ack(1, Duration::from_secs(10))
        .build_async()
        .unwrap();
    let r = m.lock("job").await.unwrap().expect("acknowledged");
    assert_eq!(
        holder_of(&mut replica.conn(), "reservation-job").as_deref(),
        Some(r.holder())
    );
    r.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_reservations_and_permits() {
    let server = Server::start();
    let readers = manager(&server, "reader");
    let writer = manager(&server, "writer");
    let r1 = readers.lock_shared("doc").await.unwrap().expect("free");
    let r2 = readers.lock_shared("doc").await.unwrap().expect("shared");
    assert_eq!(r2.access(), Access::Shared);
    assert!(writer.lock("doc").await.unwrap().is_none());
    let w = tokio::spawn(async move { writer.wait_until_lock("doc").await });
    let mut c = server.conn();
    wait_until(DEADLINE, "the writer is queued", || {
        info_field(&mut c, "waiters") == 1
    });
    let last_reader = r2.token();
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    let got = w.await.unwrap().unwrap();
    assert!(got.token() > last_reader);
    got.release().await.unwrap();

    let pool = manager(&server, "pool");
    let a = pool
        .lock_permits("gpu", 2, 2)
        .await
        .unwrap()
        .expect("2 of 2");
    assert!(pool.lock_permits("gpu", 2, 1).await.unwrap().is_none());
    let waiting = {
        let pool = manager(&server, "pool2");
        tokio::spawn(async move { pool.wait_until_permits("gpu", 2, 1).await })
    };
    wait_until(DEADLINE, "the permit request is queued", || {
        info_field(&mut c, "waiters") == 1
    });
    a.release().await.unwrap();
    let b = waiting.await.unwrap().unwrap();
    assert_eq!(
        b.access(),
        Access::Permits {
            limit: 2,
            permits: 1
        }
    );
    b.release().await.unwrap();
    assert!(!exists(&mut c, "reservation-gpu"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_all_wait_all_and_guard() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "first");
    let b = manager(&server, "second");
    let set = a.lock_all(&["x", "y"]).await.unwrap().expect("both free");
    assert_eq!(set.keys().len(), 2);
    assert!(b.lock_all(&["y"]).await.unwrap().is_none());
    let mut incr = redis::cmd("INCR");
    incr.arg("n");
    assert_eq!(set.guard::<i64>(&incr).await.unwrap(), 1);
    let waiting = tokio::spawn(async move { b.wait_all(&["y", "x"], None).await });
    wait_until(DEADLINE, "queued on both keys", || {
        info_field(&mut c, "waiters") == 2
    });
    set.release().await.unwrap();
    let got = waiting.await.unwrap().unwrap().expect("granted");
    assert_eq!(got.keys()[0].0, "reservation-y");
    got.release().await.unwrap();
    assert!(!exists(&mut c, "reservation-x"));
}
