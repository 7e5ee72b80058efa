//! How soon a held reservation learns that it is lost: it holds a key with
//! a 2 s TTL (so the heartbeat renews every 667 ms), someone runs `DEL` on
//! the key, and the time from sending the `DEL` to the lost signal is
//! measured, over rounds spread across the heartbeat's period.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --release -p redis-reservation-client --example lost_signal -- [ROUNDS]
//! ```
//!
//! With the heartbeat alone the loss waits for the next renewal: half the
//! period on average, 337 ms measured here before the lost watcher. The
//! lost watcher (`RESERVE.OBSERVE` with the reservation's own token) hears
//! of it within a round trip.

use std::time::{Duration, Instant};

use redis_reservation_client::ReservationManager;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
        .max(1);
    let manager = ReservationManager::builder("lost-signal")
        .url(url.as_str())
        .lock_ttl(Duration::from_secs(2))
        .build()?;
    let mut admin = redis::Client::open(url.as_str())?.get_connection()?;
    let period = manager.heartbeat_interval();
    let mut took = Vec::new();
    for round in 0..rounds {
        let Some(held) = manager.wait_until_lock_timeout("lost-signal", Duration::from_secs(5))?
        else {
            return Err("someone else holds reservation-lost-signal".into());
        };
        let lost = held.lost_receiver();
        // Each round deletes at another point of the heartbeat's period.
        std::thread::sleep(period * round / rounds + Duration::from_millis(20));
        let deleted = Instant::now();
        let _: i64 = redis::cmd("DEL").arg(held.key()).query(&mut admin)?;
        if lost.recv_timeout(Duration::from_secs(5)).is_err() {
            return Err("no lost signal within 5 s".into());
        }
        took.push(deleted.elapsed());
    }
    took.sort();
    let mean = took.iter().sum::<Duration>() / rounds;
    println!(
        "lost signal after DEL of a held key (TTL 2 s, heartbeat every {period:?}), {rounds} rounds: \
         min {:?}, median {:?}, mean {mean:?}, max {:?}",
        took[0],
        took[took.len() / 2],
        took[took.len() - 1]
    );
    Ok(())
}
