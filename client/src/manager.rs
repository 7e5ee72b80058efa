//! The blocking API: [`ReservationManager`] and [`Reservation`].

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::Level;
use redis::RedisResult;

use crate::config::{
    secs_arg, LostFlag, LostReason, LostReservation, ReservationInfo, ReservationManagerBuilder,
    Settings, Target,
};
use crate::conn::{Conn, WAIT_SLACK};
use crate::error::{is_connection_error, is_transient};
use crate::Error;

/// Takes reservations (locks that expire) for one worker.
///
/// Cheap to clone (the clones share one connection for the non-blocking
/// commands); `Send + Sync`. Each `wait_until_lock*` call uses its own
/// connection. Connections are opened lazily and re-opened after errors.
///
/// ```no_run
/// use redis_reservation_client::ReservationManager;
///
/// let manager = ReservationManager::builder("worker-name")
///     .url("redis://127.0.0.1:6379/")
///     .build()?;
/// match manager.lock("job-42")? {
///     Some(reservation) => {
///         // ... do the job; the heartbeat keeps the reservation alive ...
///         reservation.release()?;
///     }
///     None => println!("Reservation already held"),
/// }
/// # Ok::<(), redis_reservation_client::Error>(())
/// ```
#[derive(Clone)]
pub struct ReservationManager {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    settings: Settings,
    target: Target,
    /// The connection for LOCK/RENEW/RELEASE, shared by the manager's
    /// clones and the heartbeats of its reservations.
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for ReservationManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("ReservationManager")
            .field("by", &s.by)
            .field("key_prefix", &s.key_prefix)
            .field("lock_ttl", &s.lock_ttl)
            .field("heartbeat_interval", &s.heartbeat_interval)
            .finish_non_exhaustive()
    }
}

impl ReservationManager {
    /// Starts configuring a manager for the worker named `by` (the
    /// original constructor's first argument; it starts every holder
    /// identity).
    pub fn builder(by: impl Into<String>) -> ReservationManagerBuilder {
        ReservationManagerBuilder::new(by)
    }

    pub(crate) fn from_parts(settings: Settings, target: Target) -> ReservationManager {
        ReservationManager {
            inner: Arc::new(Inner {
                settings,
                target,
                conn: Mutex::new(None),
            }),
        }
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

    /// Tries to take `resource` without waiting (`RESERVE.LOCK`).
    ///
    /// `Ok(Some(_))`: it is ours, kept alive by a heartbeat until released
    /// or dropped. `Ok(None)`: someone else holds it.
    pub fn lock(&self, resource: &str) -> Result<Option<Reservation>, Error> {
        let s = &self.inner.settings;
        let key = s.key_for(resource);
        let holder = s.new_holder();
        let ttl = s.ttl_arg();
        let replica_ack = s.replica_ack;
        let read_timeout = s.command_timeout;
        let result = self.inner.with_conn(true, |conn| {
            let token: u64 =
                conn.query(redis::cmd("RESERVE.LOCK").arg(&key).arg(&holder).arg(&ttl))?;
            let acked = match replica_ack {
                Some((replicas, timeout)) if token != 0 => {
                    Some(conn.wait_replicas(&key, replicas, timeout, read_timeout)?)
                }
                _ => None,
            };
            Ok((token, acked, Instant::now()))
        });
        let (token, acked, granted_at) = match result {
            Ok(r) => r,
            Err(e) => {
                if e.is_connection_error()
                    || (replica_ack.is_some() && !matches!(e, Error::ModuleNotLoaded))
                {
                    // The grant may have happened before the error: the
                    // holder is unique to this attempt, so releasing by
                    // holder alone frees nothing of anyone else's.
                    let _ = self.inner.release_by(&key, &holder, None);
                }
                return Err(e);
            }
        };
        if token == 0 {
            s.log(Level::Debug, &format!("{key} is held by someone else"));
            return Ok(None);
        }
        self.inner.check_ack(&key, &holder, token, acked)?;
        Ok(Some(Reservation::start(
            self.inner.clone(),
            resource,
            key,
            holder,
            token,
            granted_at,
        )))
    }

    /// Waits as long as it takes to take `resource` (`RESERVE.WAIT` with no
    /// timeout: the server grants it the moment it is free, first come
    /// first served; no polling).
    ///
    /// The wait runs on a connection of its own. If that connection drops,
    /// the manager reconnects (see
    /// [`ReservationManagerBuilder::reconnect`]) and waits again with the
    /// same holder identity, so a grant whose reply was lost is picked up.
    pub fn wait_until_lock(&self, resource: &str) -> Result<Reservation, Error> {
        loop {
            if let Some(r) = self.wait_impl(resource, None)? {
                return Ok(r);
            }
        }
    }

    /// Like [`wait_until_lock`](Self::wait_until_lock), but gives up after
    /// `timeout` (millisecond resolution): `Ok(None)` then, with nothing
    /// held and nothing left queued. A zero timeout is a plain
    /// [`lock`](Self::lock).
    pub fn wait_until_lock_timeout(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<Option<Reservation>, Error> {
        if timeout.is_zero() {
            return self.lock(resource);
        }
        self.wait_impl(resource, Some(timeout))
    }

    /// What the server knows about `resource` (`RESERVE.INFO`): `None`
    /// when nobody holds it.
    pub fn info(&self, resource: &str) -> Result<Option<ReservationInfo>, Error> {
        let key = self.key_for(resource);
        let value: redis::Value = self
            .inner
            .with_conn(true, |c| c.query(redis::cmd("RESERVE.INFO").arg(&key)))?;
        ReservationInfo::from_value(value).map_err(Error::from_redis)
    }

    /// `deadline` `None`: wait forever (returns `Ok(None)` only when the
    /// server unblocked the wait without a grant, e.g. `CLIENT UNBLOCK`).
    fn wait_impl(
        &self,
        resource: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<Reservation>, Error> {
        let s = &self.inner.settings;
        let key = s.key_for(resource);
        let holder = s.new_holder();
        let ttl = s.ttl_arg();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut failures = 0u32;
        let mut conn: Option<Conn> = None;
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
                    // No read timeout shorter than the wait itself.
                    let read_timeout = remaining.map(|r| r + WAIT_SLACK);
                    match self
                        .inner
                        .target
                        .connect(connect_timeout, read_timeout, true)
                    {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            self.wait_failed(&key, e, &mut failures, deadline)?;
                            continue;
                        }
                    }
                }
            };
            let timeout_arg = remaining.map_or_else(|| "0".to_string(), secs_arg);
            let sent = Instant::now();
            let reply: RedisResult<u64> = c.query(
                redis::cmd("RESERVE.WAIT")
                    .arg(&key)
                    .arg(&holder)
                    .arg(&ttl)
                    .arg(&timeout_arg),
            );
            match reply {
                Ok(0) if deadline.is_some() => {
                    s.log(Level::Debug, &format!("gave up waiting for {key}"));
                    return Ok(None);
                }
                Ok(0) => {
                    s.log(
                        Level::Warn,
                        &format!("RESERVE.WAIT on {key} was unblocked without a grant"),
                    );
                    return Ok(None);
                }
                Ok(token) => {
                    let granted_at = Instant::now();
                    let acked = match s.replica_ack {
                        Some((replicas, timeout)) => {
                            match c.wait_replicas(&key, replicas, timeout, None) {
                                Ok(got) => Some(got),
                                Err(e) => {
                                    let _ = self.inner.release_by(&key, &holder, Some(token));
                                    return Err(Error::from_redis(e));
                                }
                            }
                        }
                        None => None,
                    };
                    drop(conn);
                    self.inner.check_ack(&key, &holder, token, acked)?;
                    return Ok(Some(Reservation::start(
                        self.inner.clone(),
                        resource,
                        key,
                        holder,
                        token,
                        granted_at,
                    )));
                }
                Err(e) if is_transient(&e) => {
                    conn = None;
                    if sent.elapsed() >= Duration::from_secs(1) {
                        // That connection worked for a while: a new run of
                        // failures starts.
                        failures = 0;
                    }
                    self.wait_failed(&key, e, &mut failures, deadline)?;
                }
                Err(e) => return Err(Error::from_redis(e)),
            }
        }
    }

    /// Counts a failed connect or a dropped WAIT; sleeps the backoff, or
    /// gives up (attempts used up, deadline passed, or a permanent error).
    fn wait_failed(
        &self,
        key: &str,
        err: redis::RedisError,
        failures: &mut u32,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let delay = self
            .inner
            .settings
            .wait_retry_delay(key, err, failures, deadline)?;
        std::thread::sleep(delay);
        Ok(())
    }
}

impl Inner {
    /// Runs `f` on the shared connection, connecting first if needed. After
    /// a connection error the connection is dropped; with `retry` the call
    /// is made once more on a fresh one (LOCK, RENEW and RELEASE by a
    /// unique holder are safe to repeat).
    fn with_conn<T>(
        &self,
        retry: bool,
        mut f: impl FnMut(&mut Conn) -> RedisResult<T>,
    ) -> Result<T, Error> {
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if !guard.as_ref().is_some_and(Conn::is_open) {
                *guard = None;
                let conn = self
                    .target
                    .connect(
                        self.settings.connect_timeout,
                        self.settings.command_timeout,
                        false,
                    )
                    .map_err(Error::from_redis)?;
                *guard = Some(conn);
            }
            let Some(conn) = guard.as_mut() else {
                unreachable!("connected just above")
            };
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if is_connection_error(&e) {
                        *guard = None;
                        if retry && attempt < 2 {
                            continue;
                        }
                    }
                    return Err(Error::from_redis(e));
                }
            }
        }
    }

    /// `RESERVE.RELEASE key holder [TOKEN t]`: did it release?
    fn release_by(&self, key: &str, holder: &str, token: Option<u64>) -> Result<bool, Error> {
        let mut cmd = redis::cmd("RESERVE.RELEASE");
        cmd.arg(key).arg(holder);
        if let Some(t) = token {
            cmd.arg("TOKEN").arg(t);
        }
        let released: i64 = self.with_conn(true, |c| c.query(&cmd))?;
        Ok(released == 1)
    }

    /// Releases the grant and fails when too few replicas acknowledged it.
    fn check_ack(
        &self,
        key: &str,
        holder: &str,
        token: u64,
        acked: Option<usize>,
    ) -> Result<(), Error> {
        let (Some((wanted, _)), Some(got)) = (self.settings.replica_ack, acked) else {
            return Ok(());
        };
        if got >= wanted {
            return Ok(());
        }
        self.settings.log(
            Level::Warn,
            &format!("{key}: only {got} of {wanted} replicas acknowledged the grant; releasing it"),
        );
        if let Err(e) = self.release_by(key, holder, Some(token)) {
            self.settings.log(
                Level::Warn,
                &format!("{key}: releasing the unacknowledged grant failed: {e}"),
            );
        }
        Err(Error::ReplicaAck { wanted, got })
    }
}

/// A held reservation.
///
/// A heartbeat thread renews it every `heartbeat_interval` with
/// `RESERVE.RENEW ... TOKEN t` until it is released or dropped. If the
/// server says it is no longer ours, the reservation is marked lost
/// ([`is_lost`](Self::is_lost)), the manager's `on_lost` callback and every
/// [`lost_receiver`](Self::lost_receiver) are told, a warning is logged and
/// the heartbeat stops.
///
/// Dropping it stops the heartbeat and releases it (best effort; errors
/// are logged, never panicked on). Use [`release`](Self::release) to see
/// the outcome.
pub struct Reservation {
    state: Arc<State>,
    heartbeat: Option<Heartbeat>,
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

    fn renew(&self) -> Result<bool, Error> {
        let s = &self.inner.settings;
        let renewed: i64 = self.inner.with_conn(true, |c| {
            c.query(
                redis::cmd("RESERVE.RENEW")
                    .arg(&self.key)
                    .arg(&self.holder)
                    .arg(s.ttl_arg())
                    .arg("TOKEN")
                    .arg(self.token),
            )
        })?;
        Ok(renewed == 1)
    }
}

struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.state.key)
            .field("holder", &self.state.holder)
            .field("token", &self.state.token)
            .field("lost", &self.state.lost.is_lost())
            .finish()
    }
}

impl Reservation {
    fn start(
        inner: Arc<Inner>,
        resource: &str,
        key: String,
        holder: String,
        token: u64,
        granted_at: Instant,
    ) -> Reservation {
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
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let heartbeat = {
            let state = state.clone();
            let thread_stop = stop.clone();
            std::thread::Builder::new()
                .name("reservation-heartbeat".into())
                .spawn(move || heartbeat(&state, &thread_stop, granted_at))
                .map(|handle| Heartbeat { stop, handle })
        };
        let heartbeat = match heartbeat {
            Ok(h) => Some(h),
            Err(e) => {
                state.inner.settings.log(
                    Level::Error,
                    &format!("{}: could not start the heartbeat thread: {e}", state.key),
                );
                None
            }
        };
        Reservation {
            state,
            heartbeat,
            finished: false,
        }
    }

    /// The fencing token of this grant: strictly greater than every token
    /// the server issued before. Pass it to the storage you protect and
    /// let it refuse writes carrying an older token.
    pub fn token(&self) -> u64 {
        self.state.token
    }

    /// The Redis key (prefix + resource), the original's `reserve_key`.
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

    /// Has it been found lost (by the heartbeat, [`renew`](Self::renew) or a
    /// failed release)?
    pub fn is_lost(&self) -> bool {
        self.state.lost.is_lost()
    }

    /// A channel that receives one [`LostReservation`] when this
    /// reservation is lost (immediately if it already is). Nothing is sent
    /// when it is released normally: the sender is then dropped.
    pub fn lost_receiver(&self) -> mpsc::Receiver<LostReservation> {
        self.state.lost.receiver()
    }

    /// Renews it now (the heartbeat does this on its own).
    /// [`Error::Lost`] if it is no longer ours.
    pub fn renew(&self) -> Result<(), Error> {
        if self.is_lost() {
            return Err(Error::Lost);
        }
        if self.state.renew()? {
            Ok(())
        } else {
            self.state.mark_lost(LostReason::NotHeld);
            Err(Error::Lost)
        }
    }

    /// Stops the heartbeat and releases the reservation
    /// (`RESERVE.RELEASE key holder TOKEN t`).
    ///
    /// [`Error::Lost`] when it was no longer ours (nothing is released
    /// then: a reservation someone else took in the meantime stays theirs).
    /// If the connection failed and the retry on a new connection answers
    /// "not held", the first attempt may have released it: that is
    /// reported as [`Error::Lost`] too.
    pub fn release(mut self) -> Result<(), Error> {
        self.finished = true;
        self.stop_heartbeat();
        let st = &self.state;
        if st.lost.is_lost() {
            return Err(Error::Lost);
        }
        if st.inner.release_by(&st.key, &st.holder, Some(st.token))? {
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

    /// Signals the heartbeat and waits for it to finish (at most one
    /// RENEW in flight).
    fn stop_heartbeat(&mut self) {
        let Some(hb) = self.heartbeat.take() else {
            return;
        };
        {
            let (flag, cv) = &*hb.stop;
            *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
            cv.notify_all();
        }
        if hb.handle.thread().id() != std::thread::current().id() {
            let _ = hb.handle.join();
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.stop_heartbeat();
        if self.finished || self.state.lost.is_lost() {
            return;
        }
        let st = &self.state;
        let s = &st.inner.settings;
        match st.inner.release_by(&st.key, &st.holder, Some(st.token)) {
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
    }
}

/// The heartbeat loop: renew every interval until stopped or lost.
fn heartbeat(state: &State, stop: &(Mutex<bool>, Condvar), granted_at: Instant) {
    let s = &state.inner.settings;
    // The last moment the server surely had the reservation alive for a
    // whole TTL after (a reply received then was processed before it).
    let mut last_ok = granted_at;
    let mut next = granted_at + s.heartbeat_interval;
    loop {
        {
            let (flag, cv) = stop;
            let mut stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
            while !*stopped {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                stopped = cv
                    .wait_timeout(stopped, next - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if *stopped {
                return;
            }
        }
        match state.renew() {
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
                // Retry sooner than a full interval, but not in a tight loop.
                let retry_in = (s.heartbeat_interval / 4)
                    .max(Duration::from_millis(10))
                    .min(s.heartbeat_interval);
                next = (now + retry_in).min(last_ok + s.lock_ttl);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handles_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::ReservationManager>();
        send_sync::<super::Reservation>();
        send_sync::<crate::Error>();
        #[cfg(feature = "tokio")]
        {
            send_sync::<crate::AsyncReservationManager>();
            send_sync::<crate::AsyncReservation>();
        }
    }
}
