//! Runs `examples/python/worker.py` (redis-py) against a real server: it
//! locks, renews past its TTL, and releases. `make deps` installs redis-py.

use std::process::Command;

use testkit::{redis, reservation_info, Server};

fn python_with_redis_py() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some("python3")
}

fn worker(server: &Server, extra: &[&str]) -> std::process::Output {
    let script = testkit::workspace_root().join("examples/python/worker.py");
    Command::new("python3")
        .arg(script)
        .args(["--url", &server.url(), "--job", "report"])
        .args(extra)
        .output()
        .expect("run the python worker")
}

#[test]
fn python_worker_locks_renews_and_releases() {
    let Some(_) = python_with_redis_py() else {
        eprintln!("SKIPPED: python3 with redis-py is not installed (run `make deps`)");
        return;
    };
    let server = Server::start();
    // TTL 0.6 s, work 2 s: only the heartbeat keeps the reservation alive.
    let out = worker(&server, &["--ttl", "0.6", "--work", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("locked reservation-report"), "{stdout}");
    assert!(stdout.contains("released=1"), "{stdout}");
    let mut c = server.conn();
    let info = reservation_info(&mut c);
    assert!(info["renewals"] >= 3, "heartbeat renewed: {info:?}");
    assert_eq!(info["releases"], 1);
    let exists: i64 = redis::cmd("EXISTS")
        .arg("reservation-report")
        .query(&mut c)
        .unwrap();
    assert_eq!(exists, 0);
}

#[test]
fn python_worker_respects_a_held_job() {
    let Some(_) = python_with_redis_py() else {
        eprintln!("SKIPPED: python3 with redis-py is not installed (run `make deps`)");
        return;
    };
    let server = Server::start();
    let mut c = server.conn();
    let _: u64 = redis::cmd("RESERVE.LOCK")
        .arg("reservation-report")
        .arg("someone-else")
        .arg(30)
        .query(&mut c)
        .unwrap();
    let out = worker(&server, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("held by another worker"));
}
