//! The async API (feature `tokio`): wait for a job's reservation, do the job,
//! release it.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p redis-reservation-client --features tokio --example async_worker
//! ```

use redis_reservation_client::{Error, ReservationManager};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let manager = ReservationManager::builder("worker-name")
        .url(url)
        .build_async()?;
    let reservation = manager.wait_until_lock("nightly-report").await?;
    // ... do the job; `reservation.lost().await` resolves if it is lost ...
    println!("{}: token {}", reservation.key(), reservation.token());
    reservation.release().await?;
    Ok(())
}
