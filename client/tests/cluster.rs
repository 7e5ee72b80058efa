//! The client against a 3-master Redis Cluster with the module on every node.
#![cfg(feature = "cluster")]

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{holder_of, info_field};
use redis_reservation_client::ReservationManager;
use testkit::{redis, wait_until, Cluster, DEADLINE};

/// One resource per node: `names[i]`'s key lives on node `i`.
fn one_resource_per_node(cluster: &Cluster, prefix: &str) -> Vec<String> {
    let mut names: Vec<Option<String>> = vec![None; cluster.nodes.len()];
    for i in 0..200 {
        let name = format!("job-{i}");
        let node = cluster.node_index_for(&format!("{prefix}{name}"));
        names[node].get_or_insert(name);
        if names.iter().all(Option::is_some) {
            break;
        }
    }
    names
        .into_iter()
        .map(|n| n.expect("200 names cover every node"))
        .collect()
}

fn manager(cluster: &Cluster, by: &str) -> ReservationManager {
    ReservationManager::builder(by)
        .cluster(cluster.urls())
        .lock_ttl(Duration::from_secs(60))
        .heartbeat_interval(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[test]
fn locks_route_to_the_node_that_owns_the_key() {
    let cluster = Cluster::start(3);
    let a = manager(&cluster, "cluster-a");
    let b = manager(&cluster, "cluster-b");
    let names = one_resource_per_node(&cluster, "reservation-");

    let held: Vec<_> = names
        .iter()
        .map(|name| a.lock(name).unwrap().expect("free"))
        .collect();
    for (i, r) in held.iter().enumerate() {
        assert_eq!(cluster.node_index_for(r.key()), i);
        let mut owner = cluster.nodes[i].conn();
        assert_eq!(holder_of(&mut owner, r.key()).as_deref(), Some(r.holder()));
        for (j, node) in cluster.nodes.iter().enumerate() {
            if j != i {
                let err = redis::cmd("EXISTS")
                    .arg(r.key())
                    .query::<i64>(&mut node.conn())
                    .unwrap_err();
                assert_eq!(err.kind(), redis::ErrorKind::Moved, "{err}");
            }
        }
        assert!(b.lock(r.resource()).unwrap().is_none());
        assert_eq!(a.info(r.resource()).unwrap().unwrap().token, r.token());
    }
    for r in held {
        let key = r.key().to_string();
        r.release().unwrap();
        let mut owner = cluster.node_for(&key).conn();
        assert_eq!(holder_of(&mut owner, &key), None);
    }
}

#[test]
fn wait_until_lock_through_the_cluster() {
    let cluster = Cluster::start(3);
    let a = manager(&cluster, "holder");
    let b = manager(&cluster, "waiter");
    for name in one_resource_per_node(&cluster, "reservation-") {
        let held = a.lock(&name).unwrap().expect("free");
        let mut owner = cluster.node_for(held.key()).conn();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let b = b.clone();
            let name = name.clone();
            std::thread::spawn(move || tx.send(b.wait_until_lock(&name)).unwrap())
        };
        wait_until(DEADLINE, "queued on the owning node", || {
            info_field(&mut owner, "waiters") == 1
        });
        held.release().unwrap();
        let got = rx.recv_timeout(DEADLINE).unwrap().unwrap();
        waiter.join().unwrap();
        assert_eq!(
            holder_of(&mut owner, got.key()).as_deref(),
            Some(got.holder())
        );
        assert!(b
            .wait_until_lock_timeout(&name, Duration::from_millis(100))
            .unwrap()
            .is_none());
        got.release().unwrap();
    }
}

/// Elections on every node: OBSERVE routes by its key like the other
/// commands, for `leader`, `leader_changes` and the lost watcher.
#[test]
fn elections_and_lost_signals_through_the_cluster() {
    let cluster = Cluster::start(3);
    let a = manager(&cluster, "cand-a");
    let b = manager(&cluster, "cand-b");
    for name in one_resource_per_node(&cluster, "reservation-") {
        let mut changes = b.leader_changes(&name);
        assert_eq!(changes.next().unwrap().unwrap(), None);
        let leading = a.campaign(&name).unwrap();
        let leader = b.leader(&name).unwrap().expect("a leads");
        assert_eq!(leader.holder, leading.holder());
        assert_eq!(leader.token, leading.token());
        assert_eq!(changes.next().unwrap().unwrap(), Some(leader));

        // DEL on the owning node: the leader hears of it from its lost
        // watcher (the heartbeat is 20 s away), the feed reports no
        // leader.
        let lost = leading.lost_receiver();
        let mut owner = cluster.node_for(leading.key()).conn();
        let deleted: i64 = redis::cmd("DEL")
            .arg(leading.key())
            .query(&mut owner)
            .unwrap();
        assert_eq!(deleted, 1);
        assert!(lost.recv_timeout(Duration::from_secs(10)).is_ok());
        assert_eq!(changes.next().unwrap().unwrap(), None);
        assert_eq!(b.leader(&name).unwrap(), None);
    }
}

#[cfg(feature = "cluster-async")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_cluster_lock_and_wait() {
    let cluster = Cluster::start(3);
    let build = |by: &str| {
        ReservationManager::builder(by)
            .cluster(cluster.urls())
            .lock_ttl(Duration::from_secs(60))
            .build_async()
            .unwrap()
    };
    let a = build("async-holder");
    let b = build("async-waiter");
    for name in one_resource_per_node(&cluster, "reservation-") {
        let held = a.lock(&name).await.unwrap().expect("free");
        let mut owner = cluster.node_for(held.key()).conn();
        assert_eq!(
            holder_of(&mut owner, held.key()).as_deref(),
            Some(held.holder())
        );
        assert!(b.lock(&name).await.unwrap().is_none());
        let waiter = {
            let b = b.clone();
            let name = name.clone();
            tokio::spawn(async move { b.wait_until_lock(&name).await })
        };
        wait_until(DEADLINE, "queued on the owning node", || {
            info_field(&mut owner, "waiters") == 1
        });
        held.release().await.unwrap();
        let got = tokio::time::timeout(DEADLINE, waiter)
            .await
            .expect("granted in time")
            .unwrap()
            .unwrap();
        assert_eq!(
            holder_of(&mut owner, got.key()).as_deref(),
            Some(got.holder())
        );
        got.release().await.unwrap();
    }
}
