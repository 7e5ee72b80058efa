//! Worker-side client for the `redis-reservation` Redis module.
//!
//! Reservations are locks that expire. The module keeps them on the
//! server (`RESERVE.LOCK`, `RENEW`, `RELEASE`, `WAIT`, `INFO`); this crate
//! gives workers the API of the original `redis-reservation` libraries on
//! top of it:
//!
//! | original (node) | this crate |
//! |---|---|
//! | `new ReserveResource(by, host, port, heartbeat_interval, lock_ttl, log, password)` | [`ReservationManager::builder`]`(by)` `.host_port(host, port)` `.heartbeat_interval(..)` `.lock_ttl(..)` `.logger(..)` `.password(..)` `.build()` |
//! | `lock(resource, cb(err, lock_status))` | [`ReservationManager::lock`] → `Ok(Some(Reservation))` / `Ok(None)` |
//! | `wait_until_lock(resource, cb(err, reserve_key))` | [`ReservationManager::wait_until_lock`] (and [`wait_until_lock_timeout`](ReservationManager::wait_until_lock_timeout)); the key is [`Reservation::key`] |
//! | `release(cb(err))` | [`Reservation::release`] |
//!
//! What it does beyond the original:
//!
//! - waiting is `RESERVE.WAIT` on a dedicated connection: the server hands
//!   a released or expired reservation straight to the oldest waiter
//!   instead of everyone polling once a second; a dropped connection is
//!   re-established and the wait re-issued with the remaining timeout;
//! - every grant carries a fencing token ([`Reservation::token`]);
//! - renewal and release are atomic and check holder and token, so a late
//!   release never frees someone else's reservation ([`Error::Lost`]);
//! - a lost reservation is reported ([`Reservation::is_lost`],
//!   [`Reservation::lost_receiver`], the
//!   [`on_lost`](ReservationManagerBuilder::on_lost) callback, a log line),
//!   an exclusive one within a round trip of its key changing hands or
//!   disappearing (a lost watcher on `RESERVE.OBSERVE`), not only at the
//!   next heartbeat;
//! - leader election: [`ReservationManager::campaign`] (a [`Leadership`]
//!   to [`resign`](Leadership::resign)), [`ReservationManager::leader`] and
//!   [`ReservationManager::leader_changes`], an iterator of every change of
//!   leader that misses none, across reconnects too; with an optional
//!   [`lock_delay`](ReservationManagerBuilder::lock_delay) that keeps a dead
//!   leader's key from everyone a while longer;
//! - each reservation has its own holder identity
//!   `<by>-<hostname>-<pid>-<random>`;
//! - dropping a reservation releases it;
//! - optional replica acknowledgement
//!   ([`replica_ack`](ReservationManagerBuilder::replica_ack));
//! - an async API (feature `tokio`, module `asynchronous`) and Redis
//!   Cluster support (feature `cluster`, plus `cluster-async` for the async
//!   API).
//!
//! Keys are named as the old libraries named them, `reservation-<resource>`
//! ([`key_prefix`](ReservationManagerBuilder::key_prefix) changes the
//! prefix), so a fleet can move over worker by worker: the module treats an
//! old library's plain-string reservation as held.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_reservation_client::ReservationManager;
//!
//! let manager = ReservationManager::builder("worker-name")
//!     .url("redis://127.0.0.1:6379/")
//!     .heartbeat_interval(Duration::from_secs(10 * 60))
//!     .lock_ttl(Duration::from_secs(30 * 60))
//!     .build()?;
//!
//! let reservation = manager.wait_until_lock("nightly-report")?;
//! println!("got {} with token {}", reservation.key(), reservation.token());
//! // ... do the job ...
//! reservation.release()?;
//! # Ok::<(), redis_reservation_client::Error>(())
//! ```
//!
//! Log lines go to the `log` crate (target [`LOG_TARGET`]) unless a
//! callback is given with [`ReservationManagerBuilder::logger`].

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod conn;
mod core;
mod error;
mod manager;

#[cfg(feature = "tokio")]
pub mod asynchronous;

pub use crate::builder::ReservationManagerBuilder;
pub use crate::core::logger::LOG_TARGET;
pub use crate::core::lost::{LostReason, LostReservation};
pub use crate::core::protocol::{Access, Leader, ReservationInfo};
pub use crate::core::settings::{DEFAULT_KEY_PREFIX, DEFAULT_LOCK_TTL, DEFAULT_URL};
pub use error::Error;
pub use log::Level;
pub use manager::election::{LeaderChanges, Leadership};
pub use manager::{Reservation, ReservationManager};

#[cfg(feature = "tokio")]
pub use asynchronous::{
    AsyncLeaderChanges, AsyncLeadership, AsyncReservation, AsyncReservationManager,
};
