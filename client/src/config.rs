//! The builder, the settings it produces, and the pieces the blocking and
//! the async managers share (logger, holder identity, lost notification).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use log::Level;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::Error;

/// Default TTL of a reservation: 30 minutes, as in the original library's
/// example.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// Default prefix of the Redis key: the old libraries' `reservation-`.
pub const DEFAULT_KEY_PREFIX: &str = "reservation-";

/// Default Redis URL when neither [`ReservationManagerBuilder::url`] nor
/// [`ReservationManagerBuilder::host_port`] is given.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379/";

/// The `log` crate target the default logger writes to.
pub const LOG_TARGET: &str = "redis_reservation";

type LogFn = dyn Fn(Level, &str) + Send + Sync;
type LostFn = dyn Fn(&LostReservation) + Send + Sync;

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

/// Why a reservation was reported lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The server answered that this holder no longer holds it (`RESERVE.RENEW`
    /// or `RESERVE.RELEASE` answered 0): it expired, was deleted, or someone
    /// else has it now.
    NotHeld,
    /// No renewal succeeded for a whole TTL (the server was unreachable), so
    /// it has certainly expired on the server.
    NotRenewedInTime,
}

/// The notification sent when a reservation is lost (to the
/// [`on_lost`](ReservationManagerBuilder::on_lost) callback and to every
/// `lost_receiver()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostReservation {
    /// The resource name given to `lock`/`wait_until_lock`.
    pub resource: String,
    /// The Redis key (prefix + resource).
    pub key: String,
    /// The holder identity this reservation was taken with.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// Why it is considered lost.
    pub reason: LostReason,
}

/// Settings of a manager, fixed at build time.
pub(crate) struct Settings {
    pub(crate) by: String,
    pub(crate) lock_ttl: Duration,
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

    pub(crate) fn ttl_arg(&self) -> String {
        secs_arg(self.lock_ttl)
    }

    pub(crate) fn new_holder(&self) -> String {
        new_holder(&self.by)
    }

    pub(crate) fn log(&self, level: Level, msg: &str) {
        self.logger.log(level, msg)
    }

    /// Delay before reconnect attempt `n` (1-based): 50 ms doubling up to
    /// `max_backoff`, with up to 25 % jitter so a crowd of waiters does not
    /// reconnect in lock step.
    /// After a failed connect or a dropped WAIT: counts the failure and
    /// returns how long to back off before waiting again, or the error to
    /// give up with (permanent error, attempts used up, deadline passed).
    /// Shared by the blocking and the async managers.
    pub(crate) fn wait_retry_delay(
        &self,
        key: &str,
        err: redis::RedisError,
        failures: &mut u32,
        deadline: Option<std::time::Instant>,
    ) -> Result<Duration, Error> {
        let s = self;
        if !crate::error::is_transient(&err) {
            return Err(Error::from_redis(err));
        }
        *failures += 1;
        let remaining = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        if *failures > s.reconnect_attempts || remaining.is_some_and(|r| r.is_zero()) {
            s.log(
                Level::Error,
                &format!("giving up waiting for {key} after {failures} failed attempts: {err}"),
            );
            return Err(Error::from_redis(err));
        }
        let delay = s.backoff(*failures);
        let delay = remaining.map_or(delay, |r| delay.min(r));
        s.log(
            Level::Warn,
            &format!(
                "waiting for {key}: {err}; reconnecting in {delay:?} (attempt {failures} of {})",
                s.reconnect_attempts
            ),
        );
        Ok(delay)
    }

    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let base = Duration::from_millis(50)
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let jitter_ms = (base.as_millis() as u64 / 4).max(1);
        base + Duration::from_millis(rand::random::<u64>() % jitter_ms)
    }
}

/// Where the manager connects to.
#[derive(Clone)]
pub(crate) enum Target {
    Single(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
}

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
    /// target is [`LOG_TARGET`]).
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

    /// Checks the settings (no connection is made yet) and builds the
    /// blocking manager.
    pub fn build(self) -> Result<crate::ReservationManager, Error> {
        let (settings, target) = self.into_parts()?;
        Ok(crate::ReservationManager::from_parts(settings, target))
    }

    /// Checks the settings (no connection is made yet) and builds the async
    /// manager.
    #[cfg(feature = "tokio")]
    pub fn build_async(self) -> Result<crate::asynchronous::AsyncReservationManager, Error> {
        let (settings, target) = self.into_parts()?;
        crate::asynchronous::AsyncReservationManager::from_parts(settings, target)
    }

    fn into_parts(self) -> Result<(Settings, Target), Error> {
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

/// Seconds with millisecond resolution, rounded up, as the module parses
/// them (`1.500`, `0.001`).
pub(crate) fn secs_arg(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `<by>-<hostname>-<pid>-<8 hex digits>`: unique per reservation.
pub(crate) fn new_holder(by: &str) -> String {
    format!(
        "{by}-{}-{}-{:08x}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The machine's name, read once: `/proc/sys/kernel/hostname`, else
/// `$HOSTNAME`, else `localhost`.
pub(crate) fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        from_proc
            .or_else(|| {
                std::env::var("HOSTNAME")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "localhost".to_string())
    })
}

/// A reservation's lost flag and everyone to tell when it flips.
pub(crate) struct LostFlag {
    lost: AtomicBool,
    receivers: Mutex<Vec<mpsc::Sender<LostReservation>>>,
    event: Mutex<Option<LostReservation>>,
    #[cfg(feature = "tokio")]
    watch: tokio::sync::watch::Sender<bool>,
}

impl LostFlag {
    pub(crate) fn new() -> LostFlag {
        LostFlag {
            lost: AtomicBool::new(false),
            receivers: Mutex::new(Vec::new()),
            event: Mutex::new(None),
            #[cfg(feature = "tokio")]
            watch: tokio::sync::watch::Sender::new(false),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Flips the flag; the first time, tells the callback, every receiver
    /// and the log. Returns whether this call flipped it.
    pub(crate) fn mark(&self, settings: &Settings, event: LostReservation) -> bool {
        if self.lost.swap(true, Ordering::SeqCst) {
            return false;
        }
        let why = match event.reason {
            LostReason::NotHeld => "the server says it is no longer held by us",
            LostReason::NotRenewedInTime => "no renewal succeeded within its TTL",
        };
        settings.log(
            Level::Warn,
            &format!(
                "reservation {} lost: {why} (holder {}, token {})",
                event.key, event.holder, event.token
            ),
        );
        *self.event.lock().unwrap_or_else(PoisonError::into_inner) = Some(event.clone());
        for tx in self
            .receivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = tx.send(event.clone());
        }
        #[cfg(feature = "tokio")]
        self.watch.send_replace(true);
        if let Some(cb) = &settings.on_lost {
            let _ = catch_unwind(AssertUnwindSafe(|| cb(&event)));
        }
        true
    }

    /// A channel that gets one message when the reservation is lost
    /// (right away if it already is).
    pub(crate) fn receiver(&self) -> mpsc::Receiver<LostReservation> {
        let (tx, rx) = mpsc::channel();
        let mut receivers = self
            .receivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_lost() {
            if let Some(event) = self
                .event
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                let _ = tx.send(event);
            }
        } else {
            receivers.push(tx);
        }
        rx
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.watch.subscribe()
    }
}

/// What `RESERVE.INFO` reports about a reservation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationInfo {
    /// Who holds it.
    pub holder: String,
    /// Its fencing token (0 for an old library's plain-string reservation).
    pub token: u64,
    /// Milliseconds until it expires (-1: no expiry).
    pub ttl_ms: i64,
    /// When it was granted (unix ms).
    pub acquired_at_ms: u64,
    /// How many times it was renewed.
    pub renewals: u64,
    /// How many clients wait for it.
    pub waiters: u64,
    /// The waiting holders, oldest first.
    pub queue: Vec<String>,
}

impl ReservationInfo {
    /// Parses the RESP2 flat array or RESP3 map; `None` for nil.
    pub(crate) fn from_value(value: redis::Value) -> redis::RedisResult<Option<ReservationInfo>> {
        use redis::{from_redis_value, Value};
        let pairs: Vec<(Value, Value)> = match value {
            Value::Nil => return Ok(None),
            Value::Map(pairs) => pairs,
            Value::Array(items) => {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "unexpected RESERVE.INFO reply",
                    format!("{other:?}"),
                )))
            }
        };
        let mut info = ReservationInfo::default();
        for (k, v) in pairs {
            let name: String = from_redis_value(&k)?;
            match name.as_str() {
                "holder" => info.holder = from_redis_value(&v)?,
                "token" => info.token = from_redis_value(&v)?,
                "ttl_ms" => info.ttl_ms = from_redis_value(&v)?,
                "acquired_at_ms" => info.acquired_at_ms = from_redis_value(&v)?,
                "renewals" => info.renewals = from_redis_value(&v)?,
                "waiters" => info.waiters = from_redis_value(&v)?,
                "queue" => info.queue = from_redis_value(&v)?,
                _ => {}
            }
        }
        Ok(Some(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_have_millisecond_resolution() {
        assert_eq!(secs_arg(Duration::from_secs(30)), "30.000");
        assert_eq!(secs_arg(Duration::from_millis(1500)), "1.500");
        assert_eq!(secs_arg(Duration::from_millis(1)), "0.001");
        assert_eq!(secs_arg(Duration::from_micros(1)), "0.001");
        assert_eq!(secs_arg(Duration::from_micros(2_000_001)), "2.001");
    }

    #[test]
    fn holders_are_unique_and_shaped() {
        let a = new_holder("w");
        let b = new_holder("w");
        assert_ne!(a, b);
        let prefix = format!("w-{}-{}-", hostname(), std::process::id());
        assert!(a.starts_with(&prefix), "{a}");
        let suffix = &a[prefix.len()..];
        assert_eq!(suffix.len(), 8);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn builder_rejects_bad_settings() {
        let bad = |b: ReservationManagerBuilder| matches!(b.build(), Err(Error::InvalidConfig(_)));
        assert!(bad(crate::ReservationManager::builder("")));
        assert!(bad(
            crate::ReservationManager::builder("w").lock_ttl(Duration::ZERO)
        ));
        assert!(bad(crate::ReservationManager::builder("w")
            .lock_ttl(Duration::from_secs(1))
            .heartbeat_interval(Duration::from_secs(1))));
        assert!(bad(
            crate::ReservationManager::builder("w").replica_ack(0, Duration::from_secs(1))
        ));
        assert!(bad(crate::ReservationManager::builder("w")
            .url("redis://127.0.0.1:1/")
            .host_port("127.0.0.1", 1)));
        assert!(bad(
            crate::ReservationManager::builder("w").url("nonsense://")
        ));
        let m = crate::ReservationManager::builder("w")
            .lock_ttl(Duration::from_secs(3))
            .build()
            .unwrap();
        assert_eq!(m.heartbeat_interval(), Duration::from_secs(1));
        assert_eq!(m.key_for("job"), "reservation-job");
    }
}
