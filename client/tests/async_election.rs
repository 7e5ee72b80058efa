//! Leader election and the lost watcher on the async (tokio) API against a
//! real server: `campaign`, `leader`, the `leader_changes` stream across
//! reconnects, the lost signal on DEL, and watcher tasks that end with
//! their reservations.
#![cfg(feature = "tokio")]

mod common;

use std::pin::Pin;
use std::time::Duration;

use common::{clients, info_field, Logs};
use futures_core::Stream;
use redis_reservation_client::{
    AsyncLeadership, AsyncReservationManager, Error, Leader, Level, LostReason, ReservationManager,
    ReservationManagerBuilder,
};
use testkit::{redis, wait_until, Server, DEADLINE};

const SOON: Duration = Duration::from_secs(10);

fn builder(server: &Server, by: &str) -> ReservationManagerBuilder {
    ReservationManager::builder(by)
        .url(server.url())
        .lock_ttl(Duration::from_secs(90))
        .heartbeat_interval(Duration::from_secs(30))
}

fn manager(server: &Server, by: &str) -> AsyncReservationManager {
    builder(server, by).build_async().unwrap()
}

fn leader_of(l: &AsyncLeadership) -> Leader {
    Leader {
        holder: l.holder().to_string(),
        token: l.token(),
    }
}

/// The next item of any stream, through the `Stream` trait itself.
async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    let item = std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx));
    tokio::time::timeout(DEADLINE, item)
        .await
        .expect("an item in time")
}

fn kill_normal_clients(c: &mut redis::Connection) {
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(c)
        .unwrap();
    assert!(killed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_leader_changes_and_resign() {
    let server = Server::start();
    let mut c = server.conn();
    let logs = Logs::default();
    let watcher = builder(&server, "watcher")
        .logger(logs.logger())
        .build_async()
        .unwrap();
    let a = manager(&server, "cand-a");
    let b = manager(&server, "cand-b");

    let mut changes = watcher.leader_changes("e");
    assert_eq!(next(&mut changes).await.unwrap().unwrap(), None);
    assert_eq!(a.leader("e").await.unwrap(), None);

    let la = a.campaign("e").await.unwrap();
    assert_eq!(la.name(), "e");
    assert_eq!(la.key(), "reservation-e");
    assert_eq!(
        next(&mut changes).await.unwrap().unwrap(),
        Some(leader_of(&la))
    );
    assert_eq!(b.leader("e").await.unwrap(), Some(leader_of(&la)));
    assert!(b
        .campaign_timeout("e", Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());

    // Killed while nobody polls it, then a new term: the stream reports
    // it from the last token it had, after reconnecting.
    kill_normal_clients(&mut c);
    let first_term = la.token();
    la.resign().await.unwrap();
    let lb = b.campaign("e").await.unwrap();
    assert!(lb.token() > first_term);
    assert_eq!(
        changes.next_change().await.unwrap().unwrap(),
        Some(leader_of(&lb))
    );
    assert!(logs.has(Level::Warn, &["watching reservation-e", "reconnecting"]));

    // Killed while it blocks in OBSERVE.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        while let Some(change) = changes.next_change().await {
            if tx.send(change).is_err() {
                return;
            }
        }
    });
    wait_until(
        DEADLINE,
        "the stream and lb's watcher block in OBSERVE",
        || clients(&mut c).1 == 2,
    );
    let warnings = logs.lines().len();
    kill_normal_clients(&mut c);
    wait_until(DEADLINE, "the stream reconnects", || {
        logs.lines()[warnings..]
            .iter()
            .any(|(l, m)| *l == Level::Warn && m.contains("reconnecting"))
    });
    let lost = lb.reservation().lost_receiver();
    let _: i64 = redis::cmd("DEL")
        .arg("reservation-e")
        .query(&mut c)
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
    assert_eq!(got.unwrap().unwrap(), None, "no leader after DEL");
    assert_eq!(lost.recv_timeout(SOON).unwrap().reason, LostReason::NotHeld);
    assert!(lb.is_lost());
    assert!(matches!(lb.resign().await, Err(Error::Lost)));

    let la = a.campaign("e").await.unwrap();
    let got = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
    assert_eq!(got.unwrap().unwrap(), Some(leader_of(&la)));
    follower.abort();
    la.resign().await.unwrap();
    assert_eq!(a.leader("e").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lost_signal_fires_at_once_on_del() {
    let server = Server::start();
    let mut c = server.conn();
    let m = manager(&server, "w");
    let r = m.lock("job").await.unwrap().expect("free");
    let deleted: i64 = redis::cmd("DEL")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    assert_eq!(deleted, 1);
    // The heartbeat is 30 s away: only the watcher can be this quick.
    tokio::time::timeout(SOON, r.lost())
        .await
        .expect("lost signal");
    assert!(r.is_lost());
    assert!(matches!(r.release().await, Err(Error::Lost)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_tasks_end_with_their_reservations() {
    let server = Server::start();
    let mut c = server.conn();
    let m = manager(&server, "w");
    let (baseline, _) = clients(&mut c);

    let mut held = Vec::new();
    for i in 0..4 {
        held.push(m.lock(&format!("job{i}")).await.unwrap().expect("free"));
    }
    wait_until(DEADLINE, "four watchers block in OBSERVE", || {
        clients(&mut c).1 == 4
    });
    let mut held = held.into_iter();
    held.next().unwrap().release().await.unwrap();
    drop(held.next().unwrap());
    let lost = held.next().unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg("reservation-job2")
        .query(&mut c)
        .unwrap();
    tokio::time::timeout(SOON, lost.lost()).await.unwrap();
    drop(lost);
    let last = held.next().unwrap();
    // A shared grant has no watcher.
    let shared = m.lock_shared("s").await.unwrap().expect("free");
    last.release().await.unwrap();
    wait_until(DEADLINE, "no observer left", || clients(&mut c).1 == 0);
    shared.release().await.unwrap();
    // Only the manager's shared connection is left (and ours).
    wait_until(DEADLINE, "the watchers' connections are closed", || {
        clients(&mut c).0 <= baseline + 1
    });
    assert_eq!(info_field(&mut c, "waiters"), 0);
}
