//! The README's ten lines: take a job's reservation (or wait for it), do the
//! job while the heartbeat renews it, release it.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p redis-reservation-client --example readme
//! ```

use redis_reservation_client::{Error, ReservationManager};

fn main() -> Result<(), Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let manager = ReservationManager::builder("reporter").url(url).build()?;

    // RESERVE.LOCK: Some when it is ours, None when someone else holds it.
    let reservation = match manager.lock("nightly-report")? {
        Some(reservation) => reservation,
        None => manager.wait_until_lock("nightly-report")?, // RESERVE.WAIT, FIFO
    };
    println!("{}: token {}", reservation.key(), reservation.token());
    // ... do the job, passing the token to what you write to ...
    reservation.release()?; // Err(Error::Lost) if it was lost meanwhile
    Ok(())
}
