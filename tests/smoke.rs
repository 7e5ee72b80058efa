//! The shortest end-to-end check: the module loads and answers.

use testkit::{redis, Server};

#[test]
fn module_loads_and_locks() {
    let server = Server::start();
    let mut c = server.conn();
    let token: u64 = redis::cmd("RESERVE.LOCK")
        .arg("job")
        .arg("w1")
        .arg(30)
        .query(&mut c)
        .unwrap();
    assert!(token >= 1);
    let again: u64 = redis::cmd("RESERVE.LOCK")
        .arg("job")
        .arg("w2")
        .arg(30)
        .query(&mut c)
        .unwrap();
    assert_eq!(again, 0);
}
