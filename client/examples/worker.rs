//! The original library's README example, in Rust.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p redis-reservation-client --example worker -- [job-name] [--wait]
//! ```
//!
//! Without `--wait` it tries once (`lock`) and says so if someone else
//! holds the job; with `--wait` it waits its turn (`wait_until_lock`).
//! Either way it does the job while the heartbeat keeps the reservation
//! alive, then releases it.

use std::time::Duration;

use redis_reservation_client::{Error, Reservation, ReservationManager};

fn do_job(reservation: &Reservation) {
    println!(
        "doing {} as {} (fencing token {})",
        reservation.resource(),
        reservation.holder(),
        reservation.token()
    );
    std::thread::sleep(Duration::from_secs(2));
}

fn main() -> Result<(), Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let mut job_name = "job".to_string();
    let mut wait = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--wait" => wait = true,
            name => job_name = name.to_string(),
        }
    }

    let reservation = ReservationManager::builder("worker-name")
        .url(url)
        .heartbeat_interval(Duration::from_secs(10 * 60)) // 10 minutes
        .lock_ttl(Duration::from_secs(30 * 60)) // 30 minutes
        .logger(|level, msg| println!("[{level}] {msg}")) // like console.log
        // .password("...")
        .on_lost(|lost| eprintln!("lost {} while working on it!", lost.key))
        .build()?;

    let held = if wait {
        Some(reservation.wait_until_lock(&job_name)?)
    } else {
        reservation.lock(&job_name)?
    };
    let Some(held) = held else {
        println!("Reservation already held");
        return Ok(());
    };

    do_job(&held);

    if let Err(err) = held.release() {
        println!("Could not release lock, maybe the reservation was already lost? ({err})");
        return Err(err);
    }
    Ok(())
}
