//! The builder: every setting a manager takes, checked once, turned into
//! `Settings` and a connection `Target`. The managers add `build` and
//! `build_async` beside themselves, so this file knows neither of them.

use std::sync::Arc;
use std::time::Duration;

use log::Level;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::conn::Target;
use crate::core::logger::Logger;
use crate::core::lost::{LostFn, LostReservation};
use crate::core::protocol::MAX_LOCK_DELAY;
use crate::core::settings::{Settings, DEFAULT_KEY_PREFIX, DEFAULT_LOCK_TTL, DEFAULT_URL};
use crate::error::Error;

/// Builds a [`ReservationManager`](crate::ReservationManager) (or, with the
/// `tokio` feature, an `AsyncReservationManager`).
///
/// Made by [`ReservationManager::builder`](crate::ReservationManager::builder).
/// Every setting has a default except the worker name:
///
/// ```no_run
/// use std::time::Duration;
/// use redis_reservation_client::ReservationManager;
///
/// let manager = ReservationManager::builder("worker-name")
///     .url("redis://127.0.0.1:6379/")
///     .lock_ttl(Duration::from_secs(30 * 60))
///     .heartbeat_interval(Duration::from_secs(10 * 60))
///     .build()?;
/// # Ok::<(), redis_reservation_client::Error>(())
/// ```
#[must_use = "a builder does nothing until .build() is called"]
pub struct ReservationManagerBuilder {
    by: String,
    url: Option<String>,
    host_port: Option<(String, u16)>,
    password: Option<String>,
    username: Option<String>,
    #[cfg(feature = "cluster")]
    cluster_nodes: Option<Vec<String>>,
    lock_ttl: Duration,
    lock_delay: Option<Duration>,
    heartbeat_interval: Option<Duration>,
    key_prefix: String,
    logger: Logger,
    replica_ack: Option<(usize, Duration)>,
    on_lost: Option<Arc<LostFn>>,
    reconnect_attempts: u32,
    max_backoff: Duration,
    connect_timeout: Duration,
    command_timeout: Option<Duration>,
}

impl std::fmt::Debug for ReservationManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReservationManagerBuilder")
            .field("by", &self.by)
            .field("url", &self.url)
            .field("host_port", &self.host_port)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_delay", &self.lock_delay)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("key_prefix", &self.key_prefix)
            .field("replica_ack", &self.replica_ack)
            .finish_non_exhaustive()
    }
}

impl ReservationManagerBuilder {
    pub(crate) fn new(by: impl Into<String>) -> Self {
        ReservationManagerBuilder {
            by: by.into(),
            url: None,
            host_port: None,
            password: None,
            username: None,
            #[cfg(feature = "cluster")]
            cluster_nodes: None,
            lock_ttl: DEFAULT_LOCK_TTL,
            lock_delay: None,
            heartbeat_interval: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            logger: Logger::Log,
            replica_ack: None,
            on_lost: None,
            reconnect_attempts: 20,
            max_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Connect to this Redis URL (`redis://[user:password@]host:port/db`,
    /// `redis+unix:///path`). Default: `redis://127.0.0.1:6379/`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Connect to `host:port` (the original constructor's arguments).
    pub fn host_port(mut self, host: impl Into<String>, port: u16) -> Self {
        self.host_port = Some((host.into(), port));
        self
    }

    /// Authenticate with this password (the original constructor's
    /// `password`; an empty string means none). Overrides a password in the
    /// URL.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        let password = password.into();
        self.password = (!password.is_empty()).then_some(password);
        self
    }

    /// Authenticate as this ACL user (with [`password`](Self::password)).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Use a Redis Cluster reached through these seed nodes (URLs);
    /// commands are routed by key. Replaces [`url`](Self::url) and
    /// [`host_port`](Self::host_port).
    #[cfg(feature = "cluster")]
    pub fn cluster<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_nodes = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// How long a reservation lives without renewal (the server-side TTL
    /// every grant and heartbeat sets). Default 30 minutes. Millisecond
    /// resolution; at least 1 ms.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Lock-delay (`DELAY ms` on every `RESERVE.LOCK` and `RESERVE.WAIT`
    /// this manager sends: `lock*`, `wait*`, `campaign*`): when one of its
    /// grants ends because its TTL ran out (its holder presumed dead, or
    /// only paused), the server grants the key to no one for `delay`, so
    /// work still in flight from the old holder can drain before the next
    /// one starts. A release or `DEL` ends a grant with no delay.
    /// Millisecond resolution, at most one hour. Unset (the default): the
    /// server's `reservation.lock-delay` applies (0 unless configured).
    /// `lock_all`/`wait_all` do not take it.
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }

    /// How often the heartbeat renews a held reservation. Default: a third
    /// of the TTL. Must be shorter than the TTL.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// Prefix of the Redis key: the key of resource `r` is `prefix + r`.
    /// Default `reservation-`, as the old libraries. May be empty.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Send log lines to this callback instead of the `log` crate (whose
    /// target is [`LOG_TARGET`](crate::LOG_TARGET)).
    pub fn logger<F>(mut self, logger: F) -> Self
    where
        F: Fn(Level, &str) + Send + Sync + 'static,
    {
        self.logger = Logger::Callback(Arc::new(logger));
        self
    }

    /// Called (on the heartbeat's thread or task) when a reservation of
    /// this manager is found to be lost.
    pub fn on_lost<F>(mut self, callback: F) -> Self
    where
        F: Fn(&LostReservation) + Send + Sync + 'static,
    {
        self.on_lost = Some(Arc::new(callback));
        self
    }

    /// After every grant, run `WAIT replicas timeout` on the connection
    /// that got it; when fewer than `replicas` acknowledge within
    /// `timeout`, release the grant and fail with
    /// [`Error::ReplicaAck`]. Off by default.
    pub fn replica_ack(mut self, replicas: usize, timeout: Duration) -> Self {
        self.replica_ack = Some((replicas, timeout));
        self
    }

    /// How a waiter whose connection dropped reconnects: at most
    /// `max_attempts` consecutive failed attempts (default 20), with
    /// exponential backoff from 50 ms up to `max_backoff` (default 1 s),
    /// always within the wait's deadline.
    pub fn reconnect(mut self, max_attempts: u32, max_backoff: Duration) -> Self {
        self.reconnect_attempts = max_attempts;
        self.max_backoff = max_backoff;
        self
    }

    /// Timeout for establishing a connection. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Read timeout for the non-blocking commands (LOCK, RENEW, RELEASE),
    /// `None` for none. Default 30 s. `RESERVE.WAIT` never uses it: it runs
    /// on its own connection without a read timeout.
    pub fn command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Checks the settings (no connection is made yet).
    pub(crate) fn into_parts(self) -> Result<(Settings, Target), Error> {
        let invalid = |msg: &str| Err(Error::InvalidConfig(msg.to_string()));
        if self.by.is_empty() {
            return invalid("the worker name (by) must not be empty");
        }
        if self.lock_ttl < Duration::from_millis(1) {
            return invalid("lock_ttl must be at least 1 ms");
        }
        let heartbeat_interval = match self.heartbeat_interval {
            Some(i) => i,
            None => (self.lock_ttl / 3).max(Duration::from_millis(1)),
        };
        if heartbeat_interval.is_zero() || heartbeat_interval >= self.lock_ttl {
            return invalid("heartbeat_interval must be greater than 0 and shorter than lock_ttl");
        }
        if let Some((replicas, timeout)) = self.replica_ack {
            if replicas == 0 {
                return invalid("replica_ack needs at least 1 replica");
            }
            if timeout < Duration::from_millis(1) {
                // WAIT n 0 would block forever.
                return invalid("replica_ack timeout must be at least 1 ms");
            }
        }
        if self.lock_delay.is_some_and(|d| d > MAX_LOCK_DELAY) {
            return invalid("lock_delay must be at most one hour");
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be greater than 0");
        }
        if self.command_timeout.is_some_and(|t| t.is_zero()) {
            return invalid("command_timeout must be greater than 0 (or None)");
        }
        if self.url.is_some() && self.host_port.is_some() {
            return invalid("give either url or host_port, not both");
        }
        let target = self.target()?;
        let settings = Settings {
            by: self.by,
            lock_ttl: self.lock_ttl,
            lock_delay: self.lock_delay,
            heartbeat_interval,
            key_prefix: self.key_prefix,
            logger: self.logger,
            replica_ack: self.replica_ack,
            on_lost: self.on_lost,
            reconnect_attempts: self.reconnect_attempts,
            max_backoff: self.max_backoff.max(Duration::from_millis(1)),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
        };
        Ok((settings, target))
    }

    fn target(&self) -> Result<Target, Error> {
        #[cfg(feature = "cluster")]
        if let Some(nodes) = &self.cluster_nodes {
            if self.url.is_some() || self.host_port.is_some() {
                return Err(Error::InvalidConfig(
                    "give either cluster nodes or url/host_port, not both".into(),
                ));
            }
            if nodes.is_empty() {
                return Err(Error::InvalidConfig(
                    "cluster needs at least one node".into(),
                ));
            }
            let mut infos = Vec::with_capacity(nodes.len());
            for node in nodes {
                infos.push(self.connection_info(node.as_str().into_connection_info())?);
            }
            let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                .connection_timeout(self.connect_timeout);
            if let Some(password) = &self.password {
                builder = builder.password(password.clone());
            }
            if let Some(username) = &self.username {
                builder = builder.username(username.clone());
            }
            let client = builder
                .build()
                .map_err(|e| Error::InvalidConfig(format!("cluster nodes: {e}")))?;
            return Ok(Target::Cluster(client));
        }
        let info = match (&self.url, &self.host_port) {
            (Some(url), _) => url.as_str().into_connection_info(),
            (None, Some((host, port))) => Ok(ConnectionInfo {
                addr: ConnectionAddr::Tcp(host.clone(), *port),
                redis: RedisConnectionInfo::default(),
            }),
            (None, None) => DEFAULT_URL.into_connection_info(),
        };
        let info = self.connection_info(info)?;
        let client = redis::Client::open(info)
            .map_err(|e| Error::InvalidConfig(format!("redis client: {e}")))?;
        Ok(Target::Single(client))
    }

    fn connection_info(
        &self,
        info: redis::RedisResult<ConnectionInfo>,
    ) -> Result<ConnectionInfo, Error> {
        let mut info = info.map_err(|e| Error::InvalidConfig(format!("redis url: {e}")))?;
        if let Some(password) = &self.password {
            info.redis.password = Some(password.clone());
        }
        if let Some(username) = &self.username {
            info.redis.username = Some(username.clone());
        }
        Ok(info)
    }
}
