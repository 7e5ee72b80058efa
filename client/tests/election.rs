//! Leader election, lock-delay and the lost watcher (blocking API) against
//! a real server with the module: `campaign`, `leader`, `leader_changes`
//! (`RESERVE.WAIT`, `RESERVE.OBSERVE`), `DELAY`, and a lost signal that
//! fires when the key changes rather than at the next heartbeat.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{info_field, Logs};
use redis_reservation_client::{
    Error, Leader, LeaderChanges, Leadership, Level, LostReason, ReservationManager,
    ReservationManagerBuilder,
};
use testkit::{redis, wait_until, Server, DEADLINE};

/// A heartbeat this slow cannot be what reports a loss within
/// [`SOON`]: only the lost watcher can.
const SLOW_HEARTBEAT: Duration = Duration::from_secs(30);

/// A generous upper bound for "at once" (the watcher needs a round trip).
const SOON: Duration = Duration::from_secs(10);

fn builder(server: &Server, by: &str) -> ReservationManagerBuilder {
    ReservationManager::builder(by)
        .url(server.url())
        .lock_ttl(Duration::from_secs(90))
        .heartbeat_interval(SLOW_HEARTBEAT)
}

fn manager(server: &Server, by: &str) -> ReservationManager {
    builder(server, by).build().unwrap()
}

fn leader_of(l: &Leadership) -> Leader {
    Leader {
        holder: l.holder().to_string(),
        token: l.token(),
    }
}

fn cmd_int(c: &mut redis::Connection, args: &[&str]) -> i64 {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c).unwrap()
}

#[test]
fn campaign_leader_and_resign() {
    let server = Server::start();
    let mut c = server.conn();
    let a = manager(&server, "cand-a");
    let b = manager(&server, "cand-b");
    assert_eq!(a.leader("e").unwrap(), None, "nobody campaigned yet");

    let la = a.campaign("e").unwrap();
    assert_eq!(la.name(), "e");
    assert_eq!(la.key(), "reservation-e");
    assert!(la.holder().starts_with("cand-a-"), "{}", la.holder());
    assert_eq!(b.leader("e").unwrap(), Some(leader_of(&la)));
    assert_eq!(b.info("e").unwrap().expect("held").holder, la.holder());

    // A rival gives up after its timeout, leaving nothing queued.
    assert!(b
        .campaign_timeout("e", Duration::from_millis(200))
        .unwrap()
        .is_none());
    assert_eq!(info_field(&mut c, "waiters"), 0);

    // A rival in line is elected the moment the leader resigns.
    let (tx, rx) = mpsc::channel();
    let rival = b.clone();
    let campaigner = std::thread::spawn(move || tx.send(rival.campaign("e")).unwrap());
    wait_until(DEADLINE, "the rival is queued", || {
        info_field(&mut c, "waiters") == 1
    });
    assert_eq!(a.leader("e").unwrap(), Some(leader_of(&la)));
    let first_term = la.token();
    la.resign().unwrap();
    let lb = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    campaigner.join().unwrap();
    assert!(lb.token() > first_term, "terms come in token order");
    assert_eq!(a.leader("e").unwrap(), Some(leader_of(&lb)));
    assert!(!lb.is_lost());
    assert_eq!(lb.reservation().token(), lb.token());

    lb.resign().unwrap();
    assert_eq!(a.leader("e").unwrap(), None);
    // Resigning twice is impossible (resign takes the leadership); a
    // leadership dropped without resigning is released too.
    let lc = a.campaign("e").unwrap();
    drop(lc);
    assert_eq!(a.leader("e").unwrap(), None);
}

/// The next item of a feed running on another thread.
fn next(rx: &mpsc::Receiver<Result<Option<Leader>, Error>>) -> Option<Leader> {
    rx.recv_timeout(DEADLINE)
        .expect("a change reported in time")
        .expect("no error")
}

/// The next leader a feed reports, past a "no leader" in between (a
/// handoff may or may not show the instant between two grants).
fn next_leader(rx: &mpsc::Receiver<Result<Option<Leader>, Error>>) -> Leader {
    match next(rx) {
        Some(l) => l,
        None => next(rx).expect("a leader after the vacancy"),
    }
}

fn killed_normal_clients(c: &mut redis::Connection) -> i64 {
    cmd_int(c, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
}

#[test]
fn leader_changes_reports_every_change_in_order_across_reconnects() {
    let server = Server::start();
    let mut c = server.conn();
    let logs = Logs::default();
    let watcher = builder(&server, "watcher")
        .logger(logs.logger())
        .build()
        .unwrap();
    let a = manager(&server, "cand-a");
    let b = manager(&server, "cand-b");

    let (tx, rx) = mpsc::channel();
    let feed = watcher.leader_changes("e");
    let follower = std::thread::spawn(move || {
        for change in feed {
            if tx.send(change).is_err() {
                return;
            }
        }
    });
    assert_eq!(next(&rx), None, "first the current state: no leader");

    let la = a.campaign("e").unwrap();
    assert_eq!(next(&rx), Some(leader_of(&la)));

    // A candidate waiting in line changes nothing.
    let rival = b.clone();
    let queued = std::thread::spawn(move || rival.campaign("e"));
    wait_until(DEADLINE, "the rival is queued", || {
        info_field(&mut c, "waiters") == 1
    });
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

    // Handoff on resignation.
    la.resign().unwrap();
    let lb = queued.join().unwrap().unwrap();
    let seen = next_leader(&rx);
    assert_eq!(seen, leader_of(&lb));

    // DEL: no leader (and the deposed leader hears of it).
    let lost = lb.lost_receiver();
    assert_eq!(cmd_int(&mut c, &["DEL", "reservation-e"]), 1);
    assert_eq!(next(&rx), None);
    assert_eq!(lost.recv_timeout(SOON).unwrap().reason, LostReason::NotHeld);
    drop(lb);

    // The feed's connection is killed while it blocks: it reconnects,
    // observes again with the last token, and the next change arrives.
    assert!(killed_normal_clients(&mut c) >= 1);
    wait_until(DEADLINE, "the feed reconnects", || {
        logs.has(Level::Warn, &["watching reservation-e", "reconnecting"])
    });
    let la = a.campaign("e").unwrap();
    assert_eq!(next_leader(&rx), leader_of(&la));

    // A feed whose connection dies while nobody asks it for the next item
    // (so it is down when the change happens) reports that change as soon
    // as it is asked, from the last token it had seen.
    let mut lazy: LeaderChanges = watcher.leader_changes("e");
    assert_eq!(lazy.next().unwrap().unwrap(), Some(leader_of(&la)));
    let third_term = la.token();
    let before = logs.lines().len();
    assert!(killed_normal_clients(&mut c) >= 1);
    la.resign().unwrap();
    let lb = b.campaign("e").unwrap();
    let started = Instant::now();
    assert_eq!(lazy.next().unwrap().unwrap(), Some(leader_of(&lb)));
    assert!(started.elapsed() < SOON);
    assert!(logs.lines()[before..]
        .iter()
        .any(|(l, m)| *l == Level::Warn && m.contains("reconnecting")));

    // The blocked feed saw the same, in term order.
    let mut last = third_term;
    loop {
        let seen = next_leader(&rx);
        assert!(seen.token > last, "tokens only grow");
        last = seen.token;
        if seen == leader_of(&lb) {
            break;
        }
    }

    // The follower thread ends once its receiver is gone and the next
    // change wakes it.
    drop(rx);
    lb.resign().unwrap();
    follower.join().unwrap();
}

#[test]
fn a_feed_on_a_key_of_another_type_ends_with_the_error() {
    let server = Server::start();
    let mut c = server.conn();
    let m = manager(&server, "w");
    let _: () = redis::cmd("HSET")
        .arg("reservation-h")
        .arg("f")
        .arg("v")
        .query(&mut c)
        .unwrap();
    let mut feed = m.leader_changes("h");
    let err = feed.next().unwrap().unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err:?}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(feed.next().is_none(), "a permanent error ends it");
    assert!(m.leader("h").is_err());
}

#[test]
fn the_lost_signal_fires_at_once_on_del_takeover_and_overwrite() {
    let server = Server::start();
    let mut c = server.conn();
    let m = manager(&server, "w");

    // DEL: reported long before the heartbeat (30 s away) would renew.
    let r = m.lock("job").unwrap().expect("free");
    let lost = r.lost_receiver();
    let deleted = Instant::now();
    assert_eq!(cmd_int(&mut c, &["DEL", "reservation-job"]), 1);
    let event = lost.recv_timeout(SOON).expect("lost signal");
    assert!(deleted.elapsed() < SOON);
    assert_eq!(event.reason, LostReason::NotHeld);
    assert_eq!(event.token, r.token());
    assert!(r.is_lost());
    assert!(matches!(r.release(), Err(Error::Lost)));

    // Takeover: the grant is released behind its back and someone else
    // takes the key.
    let r = m.lock("job").unwrap().expect("free");
    let lost = r.lost_receiver();
    assert_eq!(
        cmd_int(&mut c, &["RESERVE.RELEASE", "reservation-job", r.holder()]),
        1
    );
    assert!(
        cmd_int(
            &mut c,
            &["RESERVE.LOCK", "reservation-job", "intruder", "60"]
        ) > 0
    );
    let event = lost.recv_timeout(SOON).expect("lost signal");
    assert_eq!(event.reason, LostReason::NotHeld);
    assert_eq!(m.leader("job").unwrap().unwrap().holder, "intruder");
    // Dropping the lost reservation frees nothing of the intruder's.
    drop(r);
    assert_eq!(m.leader("job").unwrap().unwrap().holder, "intruder");

    // Overwritten by another type of value in one step.
    assert_eq!(cmd_int(&mut c, &["DEL", "reservation-job"]), 1);
    let r = m.lock("job").unwrap().expect("free");
    let lost = r.lost_receiver();
    assert_eq!(cmd_int(&mut c, &["HSET", "a-hash", "f", "v"]), 1);
    let _: () = redis::cmd("RENAME")
        .arg("a-hash")
        .arg("reservation-job")
        .query(&mut c)
        .unwrap();
    assert_eq!(lost.recv_timeout(SOON).unwrap().reason, LostReason::NotHeld);
    drop(r);

    // A reservation released normally is never reported lost.
    assert_eq!(cmd_int(&mut c, &["DEL", "reservation-job"]), 1);
    let r = m.lock("job").unwrap().expect("free");
    let lost = r.lost_receiver();
    r.release().unwrap();
    // (The channel closes once the watcher thread has let go of it.)
    assert!(matches!(
        lost.recv_timeout(SOON),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn a_lock_delay_keeps_an_expired_leaders_key_from_everyone() {
    let server = Server::start();
    let mut c = server.conn();
    let a = builder(&server, "cand-a")
        .lock_delay(Duration::from_secs(3))
        .build()
        .unwrap();
    let b = manager(&server, "cand-b");

    let la = a.campaign("e").unwrap();
    let lost = la.lost_receiver();
    // The leader stalls: its grant runs out 200 ms from now (its
    // heartbeat is 30 s away), as if it had stopped renewing.
    assert_eq!(
        cmd_int(
            &mut c,
            &[
                "RESERVE.RENEW",
                "reservation-e",
                la.holder(),
                "0.2",
                "TOKEN",
                &la.token().to_string(),
            ]
        ),
        1
    );
    // The lost watcher hears of the expiry at once.
    assert_eq!(lost.recv_timeout(SOON).unwrap().reason, LostReason::NotHeld);

    // During the delay: the key shows the expired grant with the delay
    // left (the campaign's DELAY 3000; the server's default is 0), nobody
    // leads, and a LOCK gets nothing.
    let info = b
        .info("e")
        .unwrap()
        .expect("the key exists during the delay");
    let looked = Instant::now();
    assert_eq!(info.token, la.token());
    assert_eq!(info.holder, la.holder());
    assert_eq!(info.ttl_ms, 0);
    assert!(
        info.delay_ms > 0 && info.delay_ms <= 3000,
        "{}",
        info.delay_ms
    );
    match b.lock("e").unwrap() {
        None => {}
        Some(_) => assert!(
            looked.elapsed() >= Duration::from_millis(info.delay_ms),
            "granted during the lock-delay"
        ),
    }
    if looked.elapsed() < Duration::from_millis(info.delay_ms) {
        assert_eq!(b.leader("e").unwrap(), None, "no leader during the delay");
    }

    // A campaign waits the delay out and wins.
    let lb = b.campaign_timeout("e", DEADLINE).unwrap().expect("elected");
    assert!(lb.token() > la.token());
    assert_eq!(b.info("e").unwrap().unwrap().delay_ms, 0);
    assert!(matches!(la.resign(), Err(Error::Lost)));
    assert_eq!(b.leader("e").unwrap(), Some(leader_of(&lb)));

    // A resignation ends a term with no delay: the next candidate is
    // elected at once.
    let (tx, rx) = mpsc::channel();
    let next = a.clone();
    let campaigner = std::thread::spawn(move || tx.send(next.campaign("e")).unwrap());
    wait_until(DEADLINE, "queued", || info_field(&mut c, "waiters") == 1);
    lb.resign().unwrap();
    let la = rx.recv_timeout(SOON).unwrap().unwrap();
    campaigner.join().unwrap();
    assert_eq!(a.leader("e").unwrap(), Some(leader_of(&la)));
}
