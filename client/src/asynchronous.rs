//! The async (tokio) API: [`AsyncReservationManager`] and
//! [`AsyncReservation`], the same operations as the blocking ones.
//!
//! The heartbeat is a tokio task. Dropping an [`AsyncReservation`] aborts
//! it and spawns a best-effort release onto the current runtime (nothing
//! blocks inside `Drop`); outside a runtime the reservation is left to
//! expire after its TTL, with a log line. Prefer
//! [`AsyncReservation::release`].
//!
//! ```no_run
//! # async fn job() -> Result<(), redis_reservation_client::Error> {
//! use redis_reservation_client::ReservationManager;
//!
//! let manager = ReservationManager::builder("worker-name")
//!     .url("redis://127.0.0.1:6379/")
//!     .build_async()?;
//! let reservation = manager.wait_until_lock("job-42").await?;
//! // ... do the job ...
//! reservation.release().await?;
//! # Ok(())
//! # }
//! ```

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use log::Level;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, RedisResult};
use tokio::time::Instant;

use crate::config::{
    secs_arg, LostFlag, LostReason, LostReservation, ReservationInfo, ReservationManagerBuilder,
    Settings, Target,
};
use crate::conn::{wait_ms, WAIT_SLACK};
use crate::error::{is_connection_error, is_transient};
use crate::Error;

/// An async connection to the server (or cluster).
#[derive(Clone)]
enum AsyncConn {
    Single(redis::aio::MultiplexedConnection),
    #[cfg(feature = "cluster-async")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl AsyncConn {
    async fn connect(target: &Target, connect_timeout: Duration) -> RedisResult<AsyncConn> {
        match target {
            Target::Single(client) => {
                // No response timeout: a RESERVE.WAIT may block for as long
                // as it was asked to (the caller bounds the others).
                let config = AsyncConnectionConfig::new().set_connection_timeout(connect_timeout);
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(AsyncConn::Single(conn))
            }
            #[cfg(feature = "cluster-async")]
            Target::Cluster(client) => Ok(AsyncConn::Cluster(client.get_async_connection().await?)),
            #[cfg(all(feature = "cluster", not(feature = "cluster-async")))]
            Target::Cluster(_) => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the async API needs the cluster-async feature for Redis Cluster",
            ))),
        }
    }

    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            AsyncConn::Single(c) => cmd.query_async(c).await,
            #[cfg(feature = "cluster-async")]
            AsyncConn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// `WAIT replicas timeout_ms` on the connection that wrote `key`.
    #[cfg_attr(not(feature = "cluster-async"), allow(unused_variables))]
    async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: usize,
        timeout: Duration,
    ) -> RedisResult<usize> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(wait_ms(timeout));
        match self {
            AsyncConn::Single(c) => wait.query_async(c).await,
            #[cfg(feature = "cluster-async")]
            AsyncConn::Cluster(c) => {
                let value = c.route_command(&wait, crate::conn::key_route(key)).await?;
                redis::from_redis_value(&value)
            }
        }
    }
}

/// Runs `fut`, failing with a timeout error (a connection error) after
/// `limit`.
async fn within<T>(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match limit {
        None => fut.await,
        Some(limit) => match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no reply from Redis in time",
            ))),
        },
    }
}

/// The async twin of [`ReservationManager`](crate::ReservationManager).
///
/// Built with
/// [`ReservationManagerBuilder::build_async`]; cheap to clone; the clones
/// share one multiplexed connection for the non-blocking commands, and
/// every wait gets its own connection.
#[derive(Clone)]
pub struct AsyncReservationManager {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    target: Target,
    conn: tokio::sync::Mutex<Option<AsyncConn>>,
}

impl std::fmt::Debug for AsyncReservationManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("AsyncReservationManager")
            .field("by", &s.by)
            .field("key_prefix", &s.key_prefix)
            .field("lock_ttl", &s.lock_ttl)
            .field("heartbeat_interval", &s.heartbeat_interval)
            .finish_non_exhaustive()
    }
}

impl AsyncReservationManager {
    /// Starts configuring a manager for the worker named `by`; finish with
    /// [`ReservationManagerBuilder::build_async`].
    pub fn builder(by: impl Into<String>) -> ReservationManagerBuilder {
        ReservationManagerBuilder::new(by)
    }

    pub(crate) fn from_parts(
        settings: Settings,
        target: Target,
    ) -> Result<AsyncReservationManager, Error> {
        #[cfg(all(feature = "cluster", not(feature = "cluster-async")))]
        if matches!(target, Target::Cluster(_)) {
            return Err(Error::InvalidConfig(
                "the async API needs the cluster-async feature for Redis Cluster".into(),
            ));
        }
        Ok(AsyncReservationManager {
            inner: Arc::new(Inner {
                settings,
                target,
                conn: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The worker name.
    pub fn by(&self) -> &str {
        &self.inner.settings.by
    }

    /// The TTL every grant and renewal sets.
    pub fn lock_ttl(&self) -> Duration {
        self.inner.settings.lock_ttl
    }

    /// How often the heartbeat renews.
    pub fn heartbeat_interval(&self) -> Duration {
        self.inner.settings.heartbeat_interval
    }

    /// The Redis key of `resource` (prefix + resource).
    pub fn key_for(&self, resource: &str) -> String {
        self.inner.settings.key_for(resource)
    }

    /// Tries to take `resource` without waiting (`RESERVE.LOCK`):
    /// `Ok(None)` when someone else holds it.
    pub async fn lock(&self, resource: &str) -> Result<Option<AsyncReservation>, Error> {
        let s = &self.inner.settings;
        let key = s.key_for(resource);
        let holder = s.new_holder();
        let mut lock = redis::cmd("RESERVE.LOCK");
        lock.arg(&key).arg(&holder).arg(s.ttl_arg());
        let mut attempt = 0;
        let token = loop {
            attempt += 1;
            let mut conn = self.inner.conn().await?;
            match within(s.command_timeout, conn.query::<u64>(&lock)).await {
                Ok(token) => break token,
                Err(e) if is_connection_error(&e) => {
                    self.inner.invalidate().await;
                    if attempt < 2 {
                        continue;
                    }
                    // The grant may have happened; the holder is unique.
                    let _ = self.inner.release_by(&key, &holder, None).await;
                    return Err(Error::from_redis(e));
                }
                Err(e) => return Err(Error::from_redis(e)),
            }
        };
        let granted_at = Instant::now();
        if token == 0 {
            s.log(Level::Debug, &format!("{key} is held by someone else"));
            return Ok(None);
        }
        // From here on the reservation exists: if this future is dropped
        // while the replicas are asked, its Drop releases it.
        let reservation =
            AsyncReservation::start(self.inner.clone(), resource, key, holder, token, granted_at);
        if let Some((replicas, timeout)) = s.replica_ack {
            let mut conn = self.inner.conn().await?;
            let limit = s.command_timeout.map(|t| t.max(timeout + WAIT_SLACK));
            let acked = within(
                limit,
                conn.wait_replicas(reservation.key(), replicas, timeout),
            )
            .await
            .map_err(Error::from_redis);
            return reservation.check_ack(acked).await;
        }
        Ok(Some(reservation))
    }

    /// Waits as long as it takes to take `resource` (`RESERVE.WAIT`, no
    /// polling), reconnecting and waiting again with the same holder if the
    /// wait's own connection drops.
    ///
    /// Cancelling the future (dropping it) while it waits leaves the queue
    /// on the server (the connection closes). A grant that arrives in the
    /// instant of cancellation stays held until its TTL runs out.
    pub async fn wait_until_lock(&self, resource: &str) -> Result<AsyncReservation, Error> {
        loop {
            if let Some(r) = self.wait_impl(resource, None).await? {
                return Ok(r);
            }
        }
    }

    /// Like [`wait_until_lock`](Self::wait_until_lock), but gives up after
    /// `timeout`: `Ok(None)` then, with nothing held and nothing queued. A
    /// zero timeout is a plain [`lock`](Self::lock).
    pub async fn wait_until_lock_timeout(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<Option<AsyncReservation>, Error> {
        if timeout.is_zero() {
            return self.lock(resource).await;
        }
        self.wait_impl(resource, Some(timeout)).await
    }

    /// What the server knows about `resource` (`RESERVE.INFO`).
    pub async fn info(&self, resource: &str) -> Result<Option<ReservationInfo>, Error> {
        let key = self.key_for(resource);
        let value: redis::Value = self.inner.run(redis::cmd("RESERVE.INFO").arg(&key)).await?;
        ReservationInfo::from_value(value).map_err(Error::from_redis)
    }

    async fn wait_impl(
        &self,
        resource: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<AsyncReservation>, Error> {
        let s = &self.inner.settings;
        let key = s.key_for(resource);
        let holder = s.new_holder();
        let ttl = s.ttl_arg();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut failures = 0u32;
        let mut conn: Option<AsyncConn> = None;
        s.log(Level::Debug, &format!("waiting for {key} as {holder}"));
        loop {
            let remaining = deadline.map(|d| {
                d.checked_duration_since(Instant::now())
                    .filter(|r| !r.is_zero())
                    .unwrap_or(Duration::from_millis(1))
            });
            let c = match conn.as_mut() {
                Some(c) => c,
                None => {
                    let connect_timeout = remaining.map_or(s.connect_timeout, |r| {
                        r.min(s.connect_timeout).max(Duration::from_millis(10))
                    });
                    match AsyncConn::connect(&self.inner.target, connect_timeout).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            self.wait_failed(&key, e, &mut failures, deadline).await?;
                            continue;
                        }
                    }
                }
            };
            let timeout_arg = remaining.map_or_else(|| "0".to_string(), secs_arg);
            let mut wait = redis::cmd("RESERVE.WAIT");
            wait.arg(&key).arg(&holder).arg(&ttl).arg(&timeout_arg);
            let sent = Instant::now();
            let reply = within(remaining.map(|r| r + WAIT_SLACK), c.query::<u64>(&wait)).await;
            match reply {
                Ok(0) => {
                    if deadline.is_some() {
                        s.log(Level::Debug, &format!("gave up waiting for {key}"));
                    } else {
                        s.log(
                            Level::Warn,
                            &format!("RESERVE.WAIT on {key} was unblocked without a grant"),
                        );
                    }
                    return Ok(None);
                }
                Ok(token) => {
                    let granted_at = Instant::now();
                    let reservation = AsyncReservation::start(
                        self.inner.clone(),
                        resource,
                        key,
                        holder,
                        token,
                        granted_at,
                    );
                    if let Some((replicas, timeout)) = s.replica_ack {
                        let acked = within(
                            Some(timeout + WAIT_SLACK),
                            c.wait_replicas(reservation.key(), replicas, timeout),
                        )
                        .await
                        .map_err(Error::from_redis);
                        return reservation.check_ack(acked).await;
                    }
                    return Ok(Some(reservation));
                }
                Err(e) if is_transient(&e) => {
                    conn = None;
                    if sent.elapsed() >= Duration::from_secs(1) {
                        failures = 0;
                    }
                    self.wait_failed(&key, e, &mut failures, deadline).await?;
                }
                Err(e) => return Err(Error::from_redis(e)),
            }
        }
    }

    async fn wait_failed(
        &self,
        key: &str,
        err: redis::RedisError,
        failures: &mut u32,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let deadline = deadline.map(Instant::into_std);
        let delay = self
            .inner
            .settings
            .wait_retry_delay(key, err, failures, deadline)?;
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

impl Inner {
    /// The shared connection, opened if needed.
    async fn conn(&self) -> Result<AsyncConn, Error> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = AsyncConn::connect(&self.target, self.settings.connect_timeout)
            .await
            .map_err(Error::from_redis)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn invalidate(&self) {
        *self.conn.lock().await = None;
    }

    /// One command on the shared connection, retried once on a fresh
    /// connection after a connection error.
    async fn run<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.conn().await?;
            match within(self.settings.command_timeout, conn.query(cmd)).await {
                Ok(v) => return Ok(v),
                Err(e) if is_connection_error(&e) => {
                    self.invalidate().await;
                    if attempt < 2 {
                        continue;
                    }
                    return Err(Error::from_redis(e));
                }
                Err(e) => return Err(Error::from_redis(e)),
            }
        }
    }

    async fn release_by(&self, key: &str, holder: &str, token: Option<u64>) -> Result<bool, Error> {
        let mut cmd = redis::cmd("RESERVE.RELEASE");
        cmd.arg(key).arg(holder);
        if let Some(t) = token {
            cmd.arg("TOKEN").arg(t);
        }
        let released: i64 = self.run(&cmd).await?;
        Ok(released == 1)
    }
}

/// A held reservation (async). See
/// [`Reservation`](crate::Reservation) for the behaviour; the heartbeat is
/// a tokio task.
pub struct AsyncReservation {
    state: Arc<State>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    finished: bool,
}

struct State {
    inner: Arc<Inner>,
    resource: String,
    key: String,
    holder: String,
    token: u64,
    lost: LostFlag,
}

impl State {
    fn mark_lost(&self, reason: LostReason) -> bool {
        self.lost.mark(
            &self.inner.settings,
            LostReservation {
                resource: self.resource.clone(),
                key: self.key.clone(),
                holder: self.holder.clone(),
                token: self.token,
                reason,
            },
        )
    }

    async fn renew(&self) -> Result<bool, Error> {
        let s = &self.inner.settings;
        let mut cmd = redis::cmd("RESERVE.RENEW");
        cmd.arg(&self.key)
            .arg(&self.holder)
            .arg(s.ttl_arg())
            .arg("TOKEN")
            .arg(self.token);
        let renewed: i64 = self.inner.run(&cmd).await?;
        Ok(renewed == 1)
    }
}

impl std::fmt::Debug for AsyncReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncReservation")
            .field("key", &self.state.key)
            .field("holder", &self.state.holder)
            .field("token", &self.state.token)
            .field("lost", &self.state.lost.is_lost())
            .finish()
    }
}

impl AsyncReservation {
    fn start(
        inner: Arc<Inner>,
        resource: &str,
        key: String,
        holder: String,
        token: u64,
        granted_at: Instant,
    ) -> AsyncReservation {
        inner.settings.log(
            Level::Info,
            &format!("reserved {key} as {holder} (token {token})"),
        );
        let state = Arc::new(State {
            inner,
            resource: resource.to_string(),
            key,
            holder,
            token,
            lost: LostFlag::new(),
        });
        let heartbeat = tokio::spawn(heartbeat(state.clone(), granted_at));
        AsyncReservation {
            state,
            heartbeat: Some(heartbeat),
            finished: false,
        }
    }

    /// Releases and fails when too few replicas acknowledged the grant.
    async fn check_ack(
        self,
        acked: Result<usize, Error>,
    ) -> Result<Option<AsyncReservation>, Error> {
        let Some((wanted, _)) = self.state.inner.settings.replica_ack else {
            return Ok(Some(self));
        };
        match acked {
            Ok(got) if got >= wanted => Ok(Some(self)),
            Ok(got) => {
                self.state.inner.settings.log(
                    Level::Warn,
                    &format!(
                        "{}: only {got} of {wanted} replicas acknowledged the grant; releasing it",
                        self.state.key
                    ),
                );
                let _ = self.release().await;
                Err(Error::ReplicaAck { wanted, got })
            }
            Err(e) => {
                let _ = self.release().await;
                Err(e)
            }
        }
    }

    /// The fencing token of this grant.
    pub fn token(&self) -> u64 {
        self.state.token
    }

    /// The Redis key (prefix + resource).
    pub fn key(&self) -> &str {
        &self.state.key
    }

    /// The resource name as given.
    pub fn resource(&self) -> &str {
        &self.state.resource
    }

    /// The holder identity: `<by>-<hostname>-<pid>-<random>`.
    pub fn holder(&self) -> &str {
        &self.state.holder
    }

    /// Has it been found lost?
    pub fn is_lost(&self) -> bool {
        self.state.lost.is_lost()
    }

    /// Resolves when the reservation is found lost (never, if it is not).
    pub async fn lost(&self) {
        let mut rx = self.state.lost.subscribe();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// A channel that receives one [`LostReservation`] when this
    /// reservation is lost (immediately if it already is).
    pub fn lost_receiver(&self) -> mpsc::Receiver<LostReservation> {
        self.state.lost.receiver()
    }

    /// Renews it now (the heartbeat does this on its own).
    pub async fn renew(&self) -> Result<(), Error> {
        if self.is_lost() {
            return Err(Error::Lost);
        }
        if self.state.renew().await? {
            Ok(())
        } else {
            self.state.mark_lost(LostReason::NotHeld);
            Err(Error::Lost)
        }
    }

    /// Stops the heartbeat (and waits until it has stopped), then releases
    /// the reservation. [`Error::Lost`] when it was no longer ours (nothing
    /// is released then).
    pub async fn release(mut self) -> Result<(), Error> {
        self.finished = true;
        if let Some(hb) = self.heartbeat.take() {
            hb.abort();
            let _ = hb.await;
        }
        let st = self.state.clone();
        if st.lost.is_lost() {
            return Err(Error::Lost);
        }
        if st
            .inner
            .release_by(&st.key, &st.holder, Some(st.token))
            .await?
        {
            st.inner.settings.log(
                Level::Info,
                &format!("released {} ({}, token {})", st.key, st.holder, st.token),
            );
            Ok(())
        } else {
            st.mark_lost(LostReason::NotHeld);
            Err(Error::Lost)
        }
    }
}

impl Drop for AsyncReservation {
    fn drop(&mut self) {
        if let Some(hb) = self.heartbeat.take() {
            hb.abort();
        }
        if self.finished || self.state.lost.is_lost() {
            return;
        }
        let st = self.state.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let s = &st.inner.settings;
                    match st
                        .inner
                        .release_by(&st.key, &st.holder, Some(st.token))
                        .await
                    {
                        Ok(true) => s.log(
                            Level::Info,
                            &format!(
                                "released {} on drop ({}, token {})",
                                st.key, st.holder, st.token
                            ),
                        ),
                        Ok(false) => {
                            st.mark_lost(LostReason::NotHeld);
                        }
                        Err(e) => s.log(
                            Level::Warn,
                            &format!("could not release {} on drop: {e}", st.key),
                        ),
                    }
                });
            }
            Err(_) => st.inner.settings.log(
                Level::Warn,
                &format!(
                    "{} dropped outside a tokio runtime: not released, it expires after its TTL",
                    st.key
                ),
            ),
        }
    }
}

async fn heartbeat(state: Arc<State>, granted_at: Instant) {
    let s = &state.inner.settings;
    let mut last_ok = granted_at;
    let mut next = granted_at + s.heartbeat_interval;
    loop {
        tokio::time::sleep_until(next).await;
        match state.renew().await {
            Ok(true) => {
                last_ok = Instant::now();
                next = last_ok + s.heartbeat_interval;
                s.log(Level::Debug, &format!("renewed {}", state.key));
            }
            Ok(false) => {
                state.mark_lost(LostReason::NotHeld);
                return;
            }
            Err(e) => {
                let now = Instant::now();
                if now.duration_since(last_ok) >= s.lock_ttl {
                    state.mark_lost(LostReason::NotRenewedInTime);
                    return;
                }
                s.log(
                    Level::Warn,
                    &format!("could not renew {}: {e}; retrying", state.key),
                );
                let retry_in = (s.heartbeat_interval / 4)
                    .max(Duration::from_millis(10))
                    .min(s.heartbeat_interval);
                next = (now + retry_in).min(last_ok + s.lock_ttl);
            }
        }
    }
}
