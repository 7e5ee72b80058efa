//! Section 3: expiry-to-grant latency. The holder takes the lock with a
//! 200 ms TTL and never releases (it "died"); latency runs from the key's
//! expiry instant (`PEXPIRETIME`, Unix ms, the clock this process reads too)
//! to the waiter's reply that it holds the lock.
//!
//! Recipes: RESERVE.WAIT (the module arms a timer at the expiry instant),
//! `SET NX` every 10 ms (lazy expiry on access), and a keyspace-notification
//! waiter (`notify-keyspace-events Ex`, subscribed to
//! `__keyevent@0__:expired`, `SET NX` on the event). Redis only emits the
//! expired event when its own active expiry cycle (hz 10, a sample of keys
//! per cycle) or an access deletes the key, so the notification waiter also
//! retries `SET NX` after 1 s without an event, as any real implementation
//! must; the report counts how many grants came from the fallback.
//!
//! Each recipe runs with no other keys and with 10,000 other reservations
//! carrying one-hour TTLs.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::common::{self, unix_us, Sizes};
use crate::resp::RawConn;

pub const TTL: &str = "0.2";
const TTL_MS: &str = "200";
const NOTIFY_FALLBACK: Duration = Duration::from_secs(1);

pub struct ExpirySeries {
    pub recipe: &'static str,
    pub other_keys: usize,
    pub samples: Vec<f64>,
    /// Grants that came from the notification waiter's fallback retry.
    pub fallbacks: usize,
}

/// Sleeps a random part of Redis's 100 ms cron period before a trial, so
/// the expiry instants fall at random phases of the server's cron (without
/// it, a trial that starts right after the previous one's grant would put
/// every expiry at the same phase, and the cron-driven recipe would show one
/// fixed delay).
fn random_phase(rng: &mut impl Rng) {
    std::thread::sleep(Duration::from_micros(rng.gen_range(0..100_000)));
}

fn pexpiretime(c: &mut RawConn, key: &str) -> f64 {
    let ms = c.call(&["PEXPIRETIME", key]).int("PEXPIRETIME");
    assert!(ms > 0, "{key} has no expiry");
    ms as f64 * 1000.0
}

fn wait_recipe(port: u16, trials: usize) -> Vec<f64> {
    let mut hc = RawConn::connect(port);
    let mut wc = RawConn::connect(port);
    let hh = common::holder("holder", 1);
    let wh = common::holder("waiter", 1);
    let mut rng = rand::thread_rng();
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        random_phase(&mut rng);
        let key = format!("expiry:wait:{trial}");
        assert!(hc.call(&["RESERVE.LOCK", &key, &hh, TTL]).int("LOCK") > 0);
        let expires_us = pexpiretime(&mut hc, &key);
        wc.send(&["RESERVE.WAIT", &key, &wh, "30", "5"]);
        let granted = wc.recv();
        let t1 = unix_us();
        assert!(
            granted.int("WAIT") > 0,
            "WAIT timed out: no grant on expiry"
        );
        samples.push(t1 - expires_us);
        assert_eq!(wc.call(&["RESERVE.RELEASE", &key, &wh]).int("RELEASE"), 1);
    }
    samples
}

fn poll_recipe(port: u16, trials: usize) -> Vec<f64> {
    let mut hc = RawConn::connect(port);
    let mut wc = RawConn::connect(port);
    let hh = common::holder("holder", 1);
    let wh = common::holder("waiter", 1);
    let mut rng = rand::thread_rng();
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        random_phase(&mut rng);
        let key = format!("expiry:poll:{trial}");
        assert!(hc.call(&["SET", &key, &hh, "NX", "PX", TTL_MS]).is_ok());
        let expires_us = pexpiretime(&mut hc, &key);
        // A random phase, so the polls do not line up with the expiry.
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..10_000)));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = wc.call(&["SET", &key, &wh, "NX", "PX", "30000"]);
            if got.is_ok() {
                samples.push(unix_us() - expires_us);
                break;
            }
            assert!(Instant::now() < deadline, "poller never acquired");
            std::thread::sleep(Duration::from_millis(10));
        }
        wc.call(&["DEL", &key]);
    }
    samples
}

fn notify_recipe(port: u16, ctl: &mut redis::Connection, trials: usize) -> (Vec<f64>, usize) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Ex")
        .query(ctl)
        .expect("CONFIG SET notify-keyspace-events");
    let mut hc = RawConn::connect(port);
    let mut wc = RawConn::connect(port);
    let mut sub = RawConn::connect(port);
    sub.call(&["SUBSCRIBE", "__keyevent@0__:expired"]);
    let hh = common::holder("holder", 1);
    let wh = common::holder("waiter", 1);
    let mut rng = rand::thread_rng();
    let mut samples = Vec::with_capacity(trials);
    let mut fallbacks = 0;
    for trial in 0..trials {
        random_phase(&mut rng);
        let key = format!("expiry:notify:{trial}");
        assert!(hc.call(&["SET", &key, &hh, "NX", "PX", TTL_MS]).is_ok());
        let expires_us = pexpiretime(&mut hc, &key);
        assert!(wc.call(&["SET", &key, &wh, "NX", "PX", "30000"]).is_nil());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut via_fallback = false;
        loop {
            let got_event = match sub.recv_timeout(NOTIFY_FALLBACK) {
                Some(msg) => {
                    let parts = msg.strings();
                    parts.len() == 3 && parts[0] == b"message" && parts[2] == key.as_bytes()
                }
                None => {
                    via_fallback = true;
                    true
                }
            };
            if got_event {
                let got = wc.call(&["SET", &key, &wh, "NX", "PX", "30000"]);
                if got.is_ok() {
                    samples.push(unix_us() - expires_us);
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "notification waiter never acquired"
            );
        }
        if via_fallback {
            fallbacks += 1;
        }
        wc.call(&["DEL", &key]);
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("")
        .query(ctl)
        .expect("CONFIG SET notify-keyspace-events");
    (samples, fallbacks)
}

fn add_other_keys(port: u16, n: usize) {
    let mut c = RawConn::connect(port);
    let oh = common::holder("others", 0);
    let mut buf = Vec::new();
    let mut sent = 0;
    while sent < n {
        buf.clear();
        let batch = (n - sent).min(1000);
        for i in sent..sent + batch {
            crate::resp::encode(
                &["RESERVE.LOCK", &format!("other:{i:06}"), &oh, "3600"],
                &mut buf,
            );
        }
        c.send_raw(&buf);
        for _ in 0..batch {
            assert!(c.recv().int("LOCK other key") > 0);
        }
        sent += batch;
    }
}

pub fn run(sizes: &Sizes, log: &mut dyn FnMut(&str)) -> Vec<ExpirySeries> {
    let server = common::start_server();
    let mut ctl = server.conn();
    let port = server.port();
    let mut out = Vec::new();
    for others in [0, sizes.other_keys] {
        let _: () = redis::cmd("FLUSHALL").query(&mut ctl).expect("FLUSHALL");
        add_other_keys(port, others);
        log(&format!("  {others} other keys: RESERVE.WAIT"));
        out.push(ExpirySeries {
            recipe: "RESERVE.WAIT",
            other_keys: others,
            samples: wait_recipe(port, sizes.expiry_trials),
            fallbacks: 0,
        });
        log(&format!("  {others} other keys: polling every 10 ms"));
        out.push(ExpirySeries {
            recipe: "polling SET NX every 10 ms",
            other_keys: others,
            samples: poll_recipe(port, sizes.expiry_poll_trials),
            fallbacks: 0,
        });
        log(&format!("  {others} other keys: keyspace notifications"));
        let trials = if others == 0 {
            sizes.expiry_poll_trials
        } else {
            sizes.expiry_notify_busy_trials
        };
        let (samples, fallbacks) = notify_recipe(port, &mut ctl, trials);
        out.push(ExpirySeries {
            recipe: "keyspace notification (`Ex`) + SET NX, 1 s fallback retry",
            other_keys: others,
            samples,
            fallbacks,
        });
    }
    out
}

pub fn report(series: &[ExpirySeries]) -> String {
    use crate::stats::{fmt_us, max, percentile};
    let min = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::min);
    let mut md = format!(
        "The holder locks with a {} ms TTL and never releases. From the key's `PEXPIRETIME` \
         (ms resolution) to the waiter's reply that it holds the lock. Other keys: reservations \
         with one-hour TTLs. Server defaults (hz 10).\n\n\
         | recipe | other keys | trials | min | p50 | p99 | max | grants by the 1 s fallback |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        TTL_MS
    );
    for s in series {
        let fb = if s.recipe.starts_with("keyspace") {
            format!("{} of {}", s.fallbacks, s.samples.len())
        } else {
            "n/a".into()
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.recipe,
            crate::stats::fmt_int(s.other_keys as u64),
            s.samples.len(),
            fmt_us(min(&s.samples)),
            fmt_us(percentile(&s.samples, 50.0)),
            fmt_us(percentile(&s.samples, 99.0)),
            fmt_us(max(&s.samples)),
            fb
        ));
    }
    md
}
