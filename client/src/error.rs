//! The crate's error type.

use std::fmt;

/// Everything that can go wrong when taking, renewing or releasing a
/// reservation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached, or the connection dropped (after
    /// the retries the call makes on its own).
    Connection(redis::RedisError),
    /// The server answered with an error, or with a reply of an unexpected
    /// shape (for example `ERR invalid holder` when the worker name is
    /// longer than `reservation.max-holder-len` allows).
    Redis(redis::RedisError),
    /// The server does not know the `RESERVE.*` commands: the reservation
    /// module is not loaded on it.
    ModuleNotLoaded,
    /// The reservation is no longer ours: it expired, was deleted, or is
    /// held by someone else now. Nothing was changed on the server.
    Lost,
    /// Fewer replicas than asked for acknowledged the grant within the
    /// timeout set with
    /// [`ReservationManagerBuilder::replica_ack`](crate::ReservationManagerBuilder::replica_ack);
    /// the grant was released again.
    ReplicaAck {
        /// How many replicas were asked for.
        wanted: usize,
        /// How many acknowledged in time.
        got: usize,
    },
    /// The manager's configuration is unusable (the message says why).
    InvalidConfig(String),
}

impl Error {
    /// Classifies an error from the `redis` crate.
    pub(crate) fn from_redis(err: redis::RedisError) -> Error {
        if is_unknown_command(&err) {
            Error::ModuleNotLoaded
        } else if is_connection_error(&err) {
            Error::Connection(err)
        } else {
            Error::Redis(err)
        }
    }

    /// Is this a connection problem (worth reconnecting and retrying)?
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Error::Connection(_))
    }
}

/// "ERR unknown command 'RESERVE.LOCK', with args beginning with: ...".
fn is_unknown_command(err: &redis::RedisError) -> bool {
    let detail = err.detail().unwrap_or("");
    let text = if detail.is_empty() {
        err.to_string()
    } else {
        detail.to_string()
    };
    let text = text.to_ascii_lowercase();
    err.kind() != redis::ErrorKind::IoError
        && text.contains("unknown command")
        && text.contains("reserve.")
}

/// Errors after which the connection cannot be trusted any more.
pub(crate) fn is_connection_error(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// Errors that may go away by themselves: connection problems, a server
/// still loading its data set after a restart, a cluster in transition.
pub(crate) fn is_transient(err: &redis::RedisError) -> bool {
    is_connection_error(err)
        || matches!(
            err.kind(),
            redis::ErrorKind::BusyLoadingError
                | redis::ErrorKind::TryAgain
                | redis::ErrorKind::ClusterDown
                | redis::ErrorKind::MasterDown
        )
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connection(e) => write!(f, "connection to Redis failed: {e}"),
            Error::Redis(e) => write!(f, "Redis error: {e}"),
            Error::ModuleNotLoaded => f.write_str(
                "the reservation module is not loaded on this server \
                 (RESERVE.* is an unknown command; load libreservation.so with --loadmodule)",
            ),
            Error::Lost => f.write_str(
                "the reservation was lost (it expired, was deleted, or another holder has it now)",
            ),
            Error::ReplicaAck { wanted, got } => write!(
                f,
                "only {got} of {wanted} replicas acknowledged the grant in time; it was released"
            ),
            Error::InvalidConfig(msg) => {
                write!(f, "invalid reservation manager configuration: {msg}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connection(e) | Error::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Error {
        Error::from_redis(err)
    }
}
