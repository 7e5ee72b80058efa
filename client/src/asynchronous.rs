//! The async (tokio) API: [`AsyncReservationManager`] and
//! [`AsyncReservation`], the same operations as the blocking ones, and
//! `ReservationManagerBuilder::build_async`. This file owns the async I/O
//! (the multiplexed connection, the wait's own connection, the heartbeat
//! task, timeouts and sleeps); what to send and what answers mean come
//! from `core`, as for the blocking API.
//!
//! The heartbeat and the lost watcher are tokio tasks. Dropping an
//! [`AsyncReservation`] aborts them and spawns a best-effort release onto
//! the current runtime (nothing blocks inside `Drop`); outside a runtime
//! the reservation is left to expire after its TTL, with a log line.
//! Prefer [`AsyncReservation::release`]. Leader election on top of it
//! lives in `asynchronous/election.rs`.
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

use crate::builder::ReservationManagerBuilder;
use crate::conn::Target;
use crate::core::grant::{replica_verdict, Claim, Grant};
use crate::core::heartbeat::Schedule;
use crate::core::lost::LostReservation;
use crate::core::observe::{LostWatch, Watching};
use crate::core::protocol::{self, Access, ReservationInfo, WAIT_SLACK};
use crate::core::settings::Settings;
use crate::core::wait::Wait;
use crate::error::{is_connection_error, Error};

pub(crate) mod election;

pub use election::{AsyncLeaderChanges, AsyncLeadership};

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
        let wait = protocol::replicas(replicas, timeout);
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
        self.inner
            .settings
            .fmt_manager("AsyncReservationManager", f)
    }
}

impl ReservationManagerBuilder {
    /// Checks the settings (no connection is made yet) and builds the async
    /// manager.
    pub fn build_async(self) -> Result<AsyncReservationManager, Error> {
        let (settings, target) = self.into_parts()?;
        AsyncReservationManager::from_parts(settings, target)
    }
}

impl AsyncReservationManager {
    /// Starts configuring a manager for the worker named `by`; finish with
    /// [`ReservationManagerBuilder::build_async`].
    pub fn builder(by: impl Into<String>) -> ReservationManagerBuilder {
        ReservationManagerBuilder::new(by)
    }

    fn from_parts(settings: Settings, target: Target) -> Result<AsyncReservationManager, Error> {
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
        self.lock_impl(resource, Access::Exclusive).await
    }

    /// Tries to take `resource` with `access` without waiting: exclusive
    /// (what [`lock`](Self::lock) does), a shared (read) grant, or permits
    /// of a counting semaphore. `Ok(None)` when it does not fit now or
    /// others wait before it (no barging).
    pub async fn lock_with(
        &self,
        resource: &str,
        access: Access,
    ) -> Result<Option<AsyncReservation>, Error> {
        self.lock_impl(resource, access).await
    }

    /// A shared (read) reservation of `resource` without waiting: shared
    /// reservations coexist; an exclusive one waits for all of them.
    pub async fn lock_shared(&self, resource: &str) -> Result<Option<AsyncReservation>, Error> {
        self.lock_with(resource, Access::Shared).await
    }

    /// `permits` of the `limit`-permit semaphore `resource`, without
    /// waiting.
    pub async fn lock_permits(
        &self,
        resource: &str,
        limit: u32,
        permits: u32,
    ) -> Result<Option<AsyncReservation>, Error> {
        self.lock_with(resource, Access::Permits { limit, permits })
            .await
    }

    /// Waits for `resource` with `access`, in FIFO order with every other
    /// request on it (`timeout` `None`: as long as it takes; `Ok(None)`
    /// once a timeout passes).
    pub async fn wait_with(
        &self,
        resource: &str,
        access: Access,
        timeout: Option<Duration>,
    ) -> Result<Option<AsyncReservation>, Error> {
        match timeout {
            Some(t) if t.is_zero() => self.lock_with(resource, access).await,
            Some(t) => self.wait_impl(resource, access, Some(t)).await,
            None => loop {
                if let Some(r) = self.wait_impl(resource, access, None).await? {
                    return Ok(Some(r));
                }
            },
        }
    }

    /// Waits as long as it takes for a shared (read) reservation.
    pub async fn wait_until_lock_shared(&self, resource: &str) -> Result<AsyncReservation, Error> {
        self.wait_with(resource, Access::Shared, None)
            .await
            .map(|r| r.expect("a wait without a timeout returns only a grant"))
    }

    /// Waits as long as it takes for `permits` of the `limit`-permit
    /// semaphore `resource`.
    pub async fn wait_until_permits(
        &self,
        resource: &str,
        limit: u32,
        permits: u32,
    ) -> Result<AsyncReservation, Error> {
        self.wait_with(resource, Access::Permits { limit, permits }, None)
            .await
            .map(|r| r.expect("a wait without a timeout returns only a grant"))
    }

    async fn lock_impl(
        &self,
        resource: &str,
        access: Access,
    ) -> Result<Option<AsyncReservation>, Error> {
        let s = &self.inner.settings;
        self.lock_claim(Claim::with_access(s, resource, access))
            .await
    }

    /// Takes every resource at once or none (`RESERVE.LOCKALL`); see
    /// [`ReservationManager::lock_all`](crate::ReservationManager::lock_all).
    pub async fn lock_all(&self, resources: &[&str]) -> Result<Option<AsyncReservation>, Error> {
        if resources.is_empty() {
            return Err(Error::InvalidConfig(
                "lock_all needs at least one resource".into(),
            ));
        }
        self.lock_claim(Claim::all(&self.inner.settings, resources))
            .await
    }

    /// Waits for every resource at once (`RESERVE.WAITALL`); see
    /// [`ReservationManager::wait_all`](crate::ReservationManager::wait_all).
    pub async fn wait_all(
        &self,
        resources: &[&str],
        timeout: Option<Duration>,
    ) -> Result<Option<AsyncReservation>, Error> {
        if resources.is_empty() {
            return Err(Error::InvalidConfig(
                "wait_all needs at least one resource".into(),
            ));
        }
        let s = &self.inner.settings;
        match timeout {
            Some(t) if t.is_zero() => self.lock_all(resources).await,
            Some(t) => self.wait_claim(Claim::all(s, resources), Some(t)).await,
            None => loop {
                if let Some(r) = self.wait_claim(Claim::all(s, resources), None).await? {
                    return Ok(Some(r));
                }
            },
        }
    }

    async fn lock_claim(&self, claim: Claim) -> Result<Option<AsyncReservation>, Error> {
        let s = &self.inner.settings;
        let lock = claim.lock_cmd(s);
        let mut attempt = 0;
        let tokens = loop {
            attempt += 1;
            let mut conn = self.inner.conn().await?;
            let reply = within(s.command_timeout, conn.query::<redis::Value>(&lock))
                .await
                .and_then(protocol::grant_reply);
            match reply {
                Ok(tokens) => break tokens,
                Err(e) if is_connection_error(&e) => {
                    self.inner.invalidate().await;
                    if attempt < 2 {
                        continue;
                    }
                    // The grant may have happened; the holder is unique.
                    self.inner.release_all(&claim.release_cmds(None)).await;
                    return Err(Error::from_redis(e));
                }
                Err(e) => return Err(Error::from_redis(e)),
            }
        };
        let granted_at = Instant::now();
        let Some(tokens) = claim.lock_reply(s, tokens) else {
            return Ok(None);
        };
        // From here on the reservation exists: if this future is dropped
        // while the replicas are asked, its Drop releases it.
        let reservation = AsyncReservation::start(self.inner.clone(), claim, &tokens, granted_at);
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
            if let Some(r) = self.wait_impl(resource, Access::Exclusive, None).await? {
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
        self.wait_impl(resource, Access::Exclusive, Some(timeout))
            .await
    }

    /// What the server knows about `resource` (`RESERVE.INFO`).
    pub async fn info(&self, resource: &str) -> Result<Option<ReservationInfo>, Error> {
        let info = protocol::info(&self.key_for(resource));
        let value: redis::Value = self.inner.run(&info).await?;
        ReservationInfo::from_value(value).map_err(Error::from_redis)
    }

    async fn wait_impl(
        &self,
        resource: &str,
        access: Access,
        timeout: Option<Duration>,
    ) -> Result<Option<AsyncReservation>, Error> {
        let claim = Claim::with_access(&self.inner.settings, resource, access);
        self.wait_claim(claim, timeout).await
    }

    async fn wait_claim(
        &self,
        claim: Claim,
        timeout: Option<Duration>,
    ) -> Result<Option<AsyncReservation>, Error> {
        let s = &self.inner.settings;
        let mut wait = Wait::for_claim(s, claim, timeout, Instant::now());
        let mut conn: Option<AsyncConn> = None;
        loop {
            let attempt = wait.attempt(s, Instant::now());
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match AsyncConn::connect(&self.inner.target, attempt.connect_timeout).await
                {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tokio::time::sleep(wait.retry(s, e, None, Instant::now())?).await;
                        continue;
                    }
                },
            };
            let sent = Instant::now();
            let reply = within(attempt.read_timeout, c.query::<redis::Value>(&attempt.cmd))
                .await
                .and_then(protocol::grant_reply);
            match reply {
                Ok(tokens) => {
                    let Some(tokens) = wait.reply(s, tokens) else {
                        return Ok(None);
                    };
                    let granted_at = Instant::now();
                    let reservation = AsyncReservation::start(
                        self.inner.clone(),
                        wait.into_claim(),
                        &tokens,
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
                Err(e) => {
                    conn = None;
                    let delay = wait.retry(s, e, Some(sent.elapsed()), Instant::now())?;
                    tokio::time::sleep(delay).await;
                }
            }
        }
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

    /// A `RESERVE.RELEASE`: did it release?
    async fn release(&self, cmd: &Cmd) -> Result<bool, Error> {
        let released: i64 = self.run(cmd).await?;
        Ok(protocol::done(released))
    }

    /// Several RELEASEs, best effort: did every one release?
    async fn release_all(&self, cmds: &[Cmd]) -> bool {
        let mut all = true;
        for cmd in cmds {
            all &= matches!(self.release(cmd).await, Ok(true));
        }
        all
    }
}

/// A held reservation (async). See
/// [`Reservation`](crate::Reservation) for the behaviour; the heartbeat is
/// a tokio task.
pub struct AsyncReservation {
    state: Arc<State>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// The lost watcher task (exclusive reservations of one key).
    watcher: Option<tokio::task::JoinHandle<()>>,
    finished: bool,
}

struct State {
    inner: Arc<Inner>,
    grant: Grant,
}

impl State {
    /// Renews every key; held only if all still are.
    async fn renew(&self) -> Result<bool, Error> {
        let mut held = true;
        for renew in self.grant.renew_cmds(&self.inner.settings) {
            let renewed: i64 = self.inner.run(&renew).await?;
            held &= protocol::done(renewed);
        }
        Ok(held)
    }

    /// Releases every key; released only if all were still held.
    async fn release(&self) -> Result<bool, Error> {
        let mut released = true;
        for release in self.grant.release_cmds() {
            released &= self.inner.release(&release).await?;
        }
        Ok(released)
    }
}

impl std::fmt::Debug for AsyncReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.state.grant.fmt_reservation("AsyncReservation", f)
    }
}

impl AsyncReservation {
    fn start(
        inner: Arc<Inner>,
        claim: Claim,
        tokens: &[u64],
        granted_at: Instant,
    ) -> AsyncReservation {
        let grant = claim.granted(&inner.settings, tokens);
        let state = Arc::new(State { inner, grant });
        let heartbeat = tokio::spawn(heartbeat(state.clone(), granted_at));
        let watcher =
            LostWatch::for_grant(&state.grant).map(|w| tokio::spawn(watch_lost(state.clone(), w)));
        AsyncReservation {
            state,
            heartbeat: Some(heartbeat),
            watcher,
            finished: false,
        }
    }

    /// Releases and fails when too few replicas acknowledged the grant.
    async fn check_ack(
        self,
        acked: Result<usize, Error>,
    ) -> Result<Option<AsyncReservation>, Error> {
        let st = &self.state;
        let verdict = acked.and_then(|got| replica_verdict(&st.inner.settings, &st.grant.key, got));
        match verdict {
            Ok(()) => Ok(Some(self)),
            Err(e) => {
                let _ = self.release().await;
                Err(e)
            }
        }
    }

    /// The fencing token of this grant.
    pub fn token(&self) -> u64 {
        self.state.grant.token
    }

    /// The Redis key (prefix + resource).
    pub fn key(&self) -> &str {
        &self.state.grant.key
    }

    /// The resource name as given.
    pub fn resource(&self) -> &str {
        &self.state.grant.resource
    }

    /// How it is held: exclusive, shared, or permits of a semaphore.
    pub fn access(&self) -> Access {
        self.state.grant.access
    }

    /// Every key held with their tokens, the first first.
    pub fn keys(&self) -> Vec<(&str, u64)> {
        self.state.grant.keys()
    }

    /// A fenced write (`RESERVE.GUARD`); see
    /// [`Reservation::guard`](crate::Reservation::guard).
    pub async fn guard<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, Error> {
        let guard = self.state.grant.guard_cmd(command);
        let reply: RedisResult<T> = match self.state.inner.conn().await {
            Ok(mut conn) => conn.query(&guard).await,
            Err(e) => return Err(e),
        };
        reply.map_err(|e| self.state.grant.guard_failed(&self.state.inner.settings, e))
    }

    /// The holder identity: `<by>-<hostname>-<pid>-<random>`.
    pub fn holder(&self) -> &str {
        &self.state.grant.holder
    }

    /// Has it been found lost?
    pub fn is_lost(&self) -> bool {
        self.state.grant.is_lost()
    }

    /// Resolves when the reservation is found lost (never, if it is not).
    pub async fn lost(&self) {
        let mut rx = self.state.grant.lost.subscribe();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// A channel that receives one [`LostReservation`] when this
    /// reservation is lost (immediately if it already is).
    pub fn lost_receiver(&self) -> mpsc::Receiver<LostReservation> {
        self.state.grant.lost.receiver()
    }

    /// Renews it now (the heartbeat does this on its own).
    pub async fn renew(&self) -> Result<(), Error> {
        let st = &self.state;
        st.grant.ensure_held()?;
        st.grant.renewed(&st.inner.settings, st.renew().await?)
    }

    /// Stops the heartbeat (and waits until it has stopped), then releases
    /// the reservation. [`Error::Lost`] when it was no longer ours (nothing
    /// is released then).
    pub async fn release(mut self) -> Result<(), Error> {
        self.finished = true;
        self.state.grant.begin_release();
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
            let _ = watcher.await;
        }
        if let Some(hb) = self.heartbeat.take() {
            hb.abort();
            let _ = hb.await;
        }
        let st = self.state.clone();
        st.grant.ensure_held()?;
        st.grant.released(&st.inner.settings, st.release().await?)
    }
}

impl Drop for AsyncReservation {
    fn drop(&mut self) {
        self.state.grant.begin_release();
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if let Some(hb) = self.heartbeat.take() {
            hb.abort();
        }
        if !self.state.grant.release_on_drop(self.finished) {
            return;
        }
        let st = self.state.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let outcome = st.release().await;
                    st.grant.released_on_drop(&st.inner.settings, outcome);
                });
            }
            Err(_) => st.inner.settings.log(
                Level::Warn,
                &format!(
                    "{} dropped outside a tokio runtime: not released, it expires after its TTL",
                    st.grant.key
                ),
            ),
        }
    }
}

/// The heartbeat task: renews on the core's schedule until aborted or lost
/// (found by itself or by the lost watcher).
async fn heartbeat(state: Arc<State>, granted_at: Instant) {
    let s = &state.inner.settings;
    let mut schedule = Schedule::new(s, granted_at);
    loop {
        tokio::time::sleep_until(schedule.next()).await;
        if state.grant.is_lost() {
            return;
        }
        let outcome = state.renew().await;
        if !schedule.observe(s, &state.grant, outcome, Instant::now()) {
            return;
        }
    }
}

/// The lost watcher task: `RESERVE.OBSERVE key token` on a connection of
/// its own, again and again, until the reservation is lost (it marks it so
/// the moment the key changes) or released (the task is aborted).
async fn watch_lost(state: Arc<State>, mut watch: LostWatch) {
    let s = &state.inner.settings;
    let grant = &state.grant;
    let mut conn: Option<AsyncConn> = None;
    while !LostWatch::done(grant) {
        let attempt = watch.attempt(s, grant);
        let next = match conn.as_mut() {
            Some(c) => {
                let sent = Instant::now();
                let reply =
                    within(attempt.read_timeout, c.query::<redis::Value>(&attempt.cmd)).await;
                match reply {
                    Ok(value) => watch.reply(s, grant, value),
                    Err(e) => {
                        conn = None;
                        watch.failed(s, grant, e, Some(sent.elapsed()))
                    }
                }
            }
            None => {
                let connected = within(
                    Some(attempt.connect_timeout),
                    AsyncConn::connect(&state.inner.target, attempt.connect_timeout),
                )
                .await;
                match connected {
                    Ok(c) => {
                        conn = Some(c);
                        Watching::Again
                    }
                    Err(e) => watch.failed(s, grant, e, None),
                }
            }
        };
        match next {
            Watching::Again => {}
            Watching::Pause(pause) => tokio::time::sleep(pause).await,
            Watching::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handles_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::AsyncReservationManager>();
        send_sync::<super::AsyncReservation>();
        send_sync::<super::AsyncLeadership>();
        fn send<T: Send>() {}
        send::<super::AsyncLeaderChanges>();
    }
}
