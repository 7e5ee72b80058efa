//! The blocking API's threads end with their reservations: one lost
//! watcher (and one heartbeat) per reservation, none left once it is
//! released, dropped or lost. Alone in its test binary, so the thread
//! count is this test's own.

mod common;

use std::time::Duration;

use common::clients;
use redis_reservation_client::ReservationManager;
use testkit::{redis, wait_until, Server, DEADLINE};

/// Threads of this process whose name is `name` (as the kernel keeps it:
/// at most 15 bytes).
fn threads_named(name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

fn watchers() -> usize {
    threads_named("rsrv-watch")
}

fn heartbeats() -> usize {
    threads_named("reservation-hea")
}

#[test]
fn watcher_threads_end_with_their_reservations() {
    let server = Server::start();
    let mut c = server.conn();
    let m = ReservationManager::builder("w")
        .url(server.url())
        .lock_ttl(Duration::from_secs(90))
        .heartbeat_interval(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(watchers(), 0);

    for _ in 0..3 {
        let mut held: Vec<_> = (0..4)
            .map(|i| m.lock(&format!("job{i}")).unwrap().expect("free"))
            .collect();
        // (A thread names itself once it runs.)
        wait_until(DEADLINE, "one watcher and one heartbeat each", || {
            watchers() == 4 && heartbeats() == 4
        });
        wait_until(DEADLINE, "four watchers block in OBSERVE", || {
            clients(&mut c).1 == 4
        });

        // Released, dropped, lost (then dropped), and released after a
        // while: every way a reservation ends.
        let last = held.pop().unwrap();
        let lost = held.pop().unwrap();
        let dropped = held.pop().unwrap();
        let released = held.pop().unwrap();
        released.release().unwrap();
        drop(dropped);
        let _: i64 = redis::cmd("DEL").arg(lost.key()).query(&mut c).unwrap();
        wait_until(DEADLINE, "the loss is seen", || lost.is_lost());
        drop(lost);
        last.release().unwrap();
        // (A joined thread leaves /proc a moment after join returns.)
        wait_until(
            DEADLINE,
            "every watcher and heartbeat thread has ended",
            || watchers() == 0 && heartbeats() == 0,
        );
        wait_until(DEADLINE, "no observer left on the server", || {
            clients(&mut c).1 == 0
        });
    }

    // Shared grants and permits have no watcher (OBSERVE reports a key's
    // oldest grant, which need not be theirs); lock_all's sets neither.
    let shared = m.lock_shared("s").unwrap().expect("free");
    let permits = m.lock_permits("p", 3, 1).unwrap().expect("free");
    let set = m.lock_all(&["x", "y"]).unwrap().expect("free");
    assert_eq!(watchers(), 0);
    drop((shared, permits, set));

    // A leader-change iterator runs on the caller's thread only.
    let mut feed = m.leader_changes("e");
    assert_eq!(feed.next().unwrap().unwrap(), None);
    assert_eq!(watchers(), 0);
}
