//! A manager's settings, fixed at build time and read by both managers,
//! and the defaults the builder starts from.

use std::sync::Arc;
use std::time::Duration;

use log::Level;

use crate::core::identity::new_holder;
use crate::core::logger::Logger;
use crate::core::lost::LostFn;

/// Default TTL of a reservation: 30 minutes, as in the original library's
/// example.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// Default prefix of the Redis key: the old libraries' `reservation-`.
pub const DEFAULT_KEY_PREFIX: &str = "reservation-";

/// Default Redis URL when neither
/// [`ReservationManagerBuilder::url`](crate::ReservationManagerBuilder::url) nor
/// [`ReservationManagerBuilder::host_port`](crate::ReservationManagerBuilder::host_port)
/// is given.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";

/// Settings of a manager, fixed at build time.
pub(crate) struct Settings {
    pub(crate) by: String,
    pub(crate) lock_ttl: Duration,
    /// `DELAY` for every LOCK and WAIT (`None`: the server's default).
    pub(crate) lock_delay: Option<Duration>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) key_prefix: String,
    pub(crate) logger: Logger,
    pub(crate) replica_ack: Option<(usize, Duration)>,
    pub(crate) on_lost: Option<Arc<LostFn>>,
    pub(crate) reconnect_attempts: u32,
    pub(crate) max_backoff: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Option<Duration>,
}

impl Settings {
    pub(crate) fn key_for(&self, resource: &str) -> String {
        format!("{}{}", self.key_prefix, resource)
    }

    pub(crate) fn new_holder(&self) -> String {
        new_holder(&self.by)
    }

    pub(crate) fn log(&self, level: Level, msg: &str) {
        self.logger.log(level, msg)
    }

    /// The `Debug` output both managers share (their type name differs).
    pub(crate) fn fmt_manager(
        &self,
        name: &str,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        f.debug_struct(name)
            .field("by", &self.by)
            .field("key_prefix", &self.key_prefix)
            .field("lock_ttl", &self.lock_ttl)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish_non_exhaustive()
    }

    /// Settings for the core's unit tests: a 3 s TTL renewed every second,
    /// log lines kept in `logs`.
    #[cfg(test)]
    pub(crate) fn for_tests(logs: Arc<std::sync::Mutex<Vec<String>>>) -> Settings {
        Settings {
            by: "w".into(),
            lock_ttl: Duration::from_secs(3),
            lock_delay: None,
            heartbeat_interval: Duration::from_secs(1),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            logger: Logger::Callback(Arc::new(move |level, msg| {
                logs.lock().unwrap().push(format!("{level} {msg}"))
            })),
            replica_ack: None,
            on_lost: None,
            reconnect_attempts: 3,
            max_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Some(Duration::from_secs(30)),
        }
    }
}
