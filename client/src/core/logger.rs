//! Where a manager's log lines go: the `log` crate or a user callback.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use log::Level;

/// The `log` crate target the default logger writes to.
pub const LOG_TARGET: &str = "redis_reservation";

pub(crate) type LogFn = dyn Fn(Level, &str) + Send + Sync;

/// Where the manager's log lines go.
#[derive(Clone)]
pub(crate) enum Logger {
    /// The `log` crate, target [`LOG_TARGET`].
    Log,
    /// A user callback.
    Callback(Arc<LogFn>),
}

impl Logger {
    pub(crate) fn log(&self, level: Level, msg: &str) {
        match self {
            Logger::Log => log::log!(target: LOG_TARGET, level, "{msg}"),
            Logger::Callback(f) => {
                // A panicking user callback must not take a heartbeat or a
                // Drop down with it.
                let _ = catch_unwind(AssertUnwindSafe(|| f(level, msg)));
            }
        }
    }
}
