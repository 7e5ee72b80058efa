//! The blocking API: [`ReservationManager`] and [`Reservation`], and
//! `ReservationManagerBuilder::build`. This file owns the blocking I/O
//! (the shared connection, the wait's own connection, the heartbeat
//! thread, the lost watcher thread and their sleeps); what to send and
//! what answers mean come from `core`. Leader election on top of it lives
//! in `manager/election.rs`.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::Level;
use redis::RedisResult;

use crate::builder::ReservationManagerBuilder;
use crate::conn::{Conn, Target};
use crate::core::grant::{replica_verdict, Claim, Grant};
use crate::core::heartbeat::Schedule;
use crate::core::lost::LostReservation;
use crate::core::observe::{LostWatch, Watching};
use crate::core::protocol::{self, Access, ReservationInfo};
use crate::core::settings::Settings;
use crate::core::wait::Wait;
use crate::error::{is_connection_error, Error};

pub(crate) mod election;

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
        self.inner.settings.fmt_manager("ReservationManager", f)
    }
}

impl ReservationManagerBuilder {
    /// Checks the settings (no connection is made yet) and builds the
    /// blocking manager.
    pub fn build(self) -> Result<ReservationManager, Error> {
        let (settings, target) = self.into_parts()?;
        Ok(ReservationManager::from_parts(settings, target))
    }
}

impl ReservationManager {
    /// Starts configuring a manager for the worker named `by` (the
    /// original constructor's first argument; it starts every holder
    /// identity).
    pub fn builder(by: impl Into<String>) -> ReservationManagerBuilder {
        ReservationManagerBuilder::new(by)
    }

    fn from_parts(settings: Settings, target: Target) -> ReservationManager {
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
        self.lock_impl(resource, Access::Exclusive)
    }

    /// Tries to take `resource` with `access` without waiting: exclusive
    /// (what [`lock`](Self::lock) does), a shared (read) grant, or permits
    /// of a counting semaphore. `Ok(None)` when it does not fit now or
    /// others wait before it (no barging).
    pub fn lock_with(&self, resource: &str, access: Access) -> Result<Option<Reservation>, Error> {
        self.lock_impl(resource, access)
    }

    /// A shared (read) reservation of `resource` without waiting: shared
    /// reservations coexist; an exclusive one waits for all of them.
    pub fn lock_shared(&self, resource: &str) -> Result<Option<Reservation>, Error> {
        self.lock_with(resource, Access::Shared)
    }

    /// `permits` of the `limit`-permit semaphore `resource`, without
    /// waiting.
    pub fn lock_permits(
        &self,
        resource: &str,
        limit: u32,
        permits: u32,
    ) -> Result<Option<Reservation>, Error> {
        self.lock_with(resource, Access::Permits { limit, permits })
    }

    /// Waits for `resource` with `access`, in FIFO order with every other
    /// request on it (`timeout` `None`: as long as it takes; `Ok(None)`
    /// once a timeout passes).
    pub fn wait_with(
        &self,
        resource: &str,
        access: Access,
        timeout: Option<Duration>,
    ) -> Result<Option<Reservation>, Error> {
        match timeout {
            Some(t) if t.is_zero() => self.lock_with(resource, access),
            Some(t) => self.wait_impl(resource, access, Some(t)),
            None => loop {
                if let Some(r) = self.wait_impl(resource, access, None)? {
                    return Ok(Some(r));
                }
            },
        }
    }

    /// Waits as long as it takes for a shared (read) reservation.
    pub fn wait_until_lock_shared(&self, resource: &str) -> Result<Reservation, Error> {
        self.wait_with(resource, Access::Shared, None)
            .map(|r| r.expect("a wait without a timeout returns only a grant"))
    }

    /// Waits as long as it takes for `permits` of the `limit`-permit
    /// semaphore `resource`.
    pub fn wait_until_permits(
        &self,
        resource: &str,
        limit: u32,
        permits: u32,
    ) -> Result<Reservation, Error> {
        self.wait_with(resource, Access::Permits { limit, permits }, None)
            .map(|r| r.expect("a wait without a timeout returns only a grant"))
    }

    fn lock_impl(&self, resource: &str, access: Access) -> Result<Option<Reservation>, Error> {
        let s = &self.inner.settings;
        self.lock_claim(Claim::with_access(s, resource, access))
    }

    fn lock_claim(&self, claim: Claim) -> Result<Option<Reservation>, Error> {
        let s = &self.inner.settings;
        let lock = claim.lock_cmd(s);
        let result = self.inner.with_conn(true, |conn| {
            let reply: redis::Value = conn.query(&lock)?;
            let tokens = protocol::grant_reply(reply)?;
            let acked = match s.replica_ack {
                Some((replicas, timeout)) if tokens.is_some() => {
                    Some(conn.wait_replicas(&claim.key, replicas, timeout, s.command_timeout)?)
                }
                _ => None,
            };
            Ok((tokens, acked, Instant::now()))
        });
        let (tokens, acked, granted_at) = match result {
            Ok(r) => r,
            Err(e) => {
                if e.is_connection_error()
                    || (s.replica_ack.is_some() && !matches!(e, Error::ModuleNotLoaded))
                {
                    // The grant may have happened before the error: the
                    // holder is unique to this attempt, so releasing by
                    // holder alone frees nothing of anyone else's.
                    self.inner.release_all(&claim.release_cmds(None));
                }
                return Err(e);
            }
        };
        let Some(tokens) = claim.lock_reply(s, tokens) else {
            return Ok(None);
        };
        self.inner.check_ack(&claim, &tokens, acked)?;
        Ok(Some(Reservation::start(
            self.inner.clone(),
            claim,
            &tokens,
            granted_at,
        )))
    }

    /// Takes every resource at once, each an exclusive reservation with its
    /// own token, or none (`RESERVE.LOCKALL`): `Ok(None)` when any is held
    /// by someone else or has others waiting. One handle for the set: one
    /// heartbeat renews every key, one lost signal, and dropping it
    /// releases them all. At most 1000 resources, none twice.
    pub fn lock_all(&self, resources: &[&str]) -> Result<Option<Reservation>, Error> {
        if resources.is_empty() {
            return Err(Error::InvalidConfig(
                "lock_all needs at least one resource".into(),
            ));
        }
        self.lock_claim(Claim::all(&self.inner.settings, resources))
    }

    /// Waits for every resource at once (`RESERVE.WAITALL`): queued on all
    /// of them, granted all together when it is the oldest waiter on each,
    /// so two callers naming the same resources in any order cannot
    /// deadlock. `timeout` `None`: as long as it takes; `Ok(None)` once a
    /// timeout passes. The same one handle as [`lock_all`](Self::lock_all).
    pub fn wait_all(
        &self,
        resources: &[&str],
        timeout: Option<Duration>,
    ) -> Result<Option<Reservation>, Error> {
        if resources.is_empty() {
            return Err(Error::InvalidConfig(
                "wait_all needs at least one resource".into(),
            ));
        }
        let s = &self.inner.settings;
        match timeout {
            Some(t) if t.is_zero() => self.lock_all(resources),
            Some(t) => self.wait_claim(Claim::all(s, resources), Some(t)),
            None => loop {
                if let Some(r) = self.wait_claim(Claim::all(s, resources), None)? {
                    return Ok(Some(r));
                }
            },
        }
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
            if let Some(r) = self.wait_impl(resource, Access::Exclusive, None)? {
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
        self.wait_impl(resource, Access::Exclusive, Some(timeout))
    }

    /// What the server knows about `resource` (`RESERVE.INFO`): `None`
    /// when nobody holds it.
    pub fn info(&self, resource: &str) -> Result<Option<ReservationInfo>, Error> {
        let info = protocol::info(&self.key_for(resource));
        let value: redis::Value = self.inner.with_conn(true, |c| c.query(&info))?;
        ReservationInfo::from_value(value).map_err(Error::from_redis)
    }

    /// `timeout` `None`: wait forever (returns `Ok(None)` only when the
    /// server unblocked the wait without a grant, e.g. `CLIENT UNBLOCK`).
    fn wait_impl(
        &self,
        resource: &str,
        access: Access,
        timeout: Option<Duration>,
    ) -> Result<Option<Reservation>, Error> {
        let claim = Claim::with_access(&self.inner.settings, resource, access);
        self.wait_claim(claim, timeout)
    }

    fn wait_claim(
        &self,
        claim: Claim,
        timeout: Option<Duration>,
    ) -> Result<Option<Reservation>, Error> {
        let s = &self.inner.settings;
        let mut wait = Wait::for_claim(s, claim, timeout, Instant::now());
        let mut conn: Option<Conn> = None;
        loop {
            let attempt = wait.attempt(s, Instant::now());
            let c = match conn.as_mut() {
                Some(c) => c,
                None => {
                    let connected = self.inner.target.connect(
                        attempt.connect_timeout,
                        attempt.read_timeout,
                        true,
                    );
                    match connected {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            std::thread::sleep(wait.retry(s, e, None, Instant::now())?);
                            continue;
                        }
                    }
                }
            };
            let sent = Instant::now();
            let reply: RedisResult<Option<Vec<u64>>> = c
                .query::<redis::Value>(&attempt.cmd)
                .and_then(protocol::grant_reply);
            match reply {
                Ok(tokens) => {
                    let Some(tokens) = wait.reply(s, tokens) else {
                        return Ok(None);
                    };
                    let granted_at = Instant::now();
                    let claim = wait.into_claim();
                    let acked = match s.replica_ack {
                        Some((replicas, timeout)) => {
                            match c.wait_replicas(&claim.key, replicas, timeout, None) {
                                Ok(got) => Some(got),
                                Err(e) => {
                                    self.inner.release_all(&claim.release_cmds(Some(&tokens)));
                                    return Err(Error::from_redis(e));
                                }
                            }
                        }
                        None => None,
                    };
                    drop(conn);
                    self.inner.check_ack(&claim, &tokens, acked)?;
                    return Ok(Some(Reservation::start(
                        self.inner.clone(),
                        claim,
                        &tokens,
                        granted_at,
                    )));
                }
                Err(e) => {
                    conn = None;
                    let delay = wait.retry(s, e, Some(sent.elapsed()), Instant::now())?;
                    std::thread::sleep(delay);
                }
            }
        }
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

    /// A `RESERVE.RELEASE`: did it release?
    fn release(&self, cmd: &redis::Cmd) -> Result<bool, Error> {
        let released: i64 = self.with_conn(true, |c| c.query(cmd))?;
        Ok(protocol::done(released))
    }

    /// Several RELEASEs: did every one release? All are sent whatever
    /// the others answer.
    fn release_all(&self, cmds: &[redis::Cmd]) -> bool {
        let mut all = true;
        for cmd in cmds {
            all &= matches!(self.release(cmd), Ok(true));
        }
        all
    }

    /// Releases the grant and fails when too few replicas acknowledged it.
    fn check_ack(&self, claim: &Claim, tokens: &[u64], acked: Option<usize>) -> Result<(), Error> {
        let Some(got) = acked else {
            return Ok(());
        };
        replica_verdict(&self.settings, &claim.key, got).inspect_err(|_| {
            if !self.release_all(&claim.release_cmds(Some(tokens))) {
                self.settings.log(
                    Level::Warn,
                    &format!("{}: releasing the unacknowledged grant failed", claim.key),
                );
            }
        })
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
    /// Wakes the lost watcher thread from a backoff pause when the
    /// reservation is released or dropped (the release itself ends its
    /// OBSERVE). The thread is not joined: it ends on its own, within one
    /// OBSERVE timeout at the most.
    watcher: Option<Arc<Stop>>,
    finished: bool,
}

/// A stop flag a thread can sleep on.
type Stop = (Mutex<bool>, Condvar);

/// Sets `stop` and wakes whoever sleeps on it.
fn signal(stop: &Stop) {
    let (flag, cv) = stop;
    *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
    cv.notify_all();
}

/// Sleeps until `deadline` or until `stop` is set; true when stopped.
fn sleep_unless_stopped(stop: &Stop, deadline: Instant) -> bool {
    let (flag, cv) = stop;
    let mut stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
    while !*stopped {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        stopped = cv
            .wait_timeout(stopped, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    *stopped
}

struct State {
    inner: Arc<Inner>,
    grant: Grant,
}

impl State {
    /// Renews every key; held only if all still are.
    fn renew(&self) -> Result<bool, Error> {
        let mut held = true;
        for renew in self.grant.renew_cmds(&self.inner.settings) {
            let renewed: i64 = self.inner.with_conn(true, |c| c.query(&renew))?;
            held &= protocol::done(renewed);
        }
        Ok(held)
    }

    /// Releases every key; released only if all were still held.
    fn release(&self) -> Result<bool, Error> {
        let mut released = true;
        for release in self.grant.release_cmds() {
            released &= self.inner.release(&release)?;
        }
        Ok(released)
    }
}

struct Heartbeat {
    stop: Arc<Stop>,
    handle: JoinHandle<()>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.state.grant.fmt_reservation("Reservation", f)
    }
}

impl Reservation {
    fn start(inner: Arc<Inner>, claim: Claim, tokens: &[u64], granted_at: Instant) -> Reservation {
        let grant = claim.granted(&inner.settings, tokens);
        let state = Arc::new(State { inner, grant });
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
                    &format!(
                        "{}: could not start the heartbeat thread: {e}",
                        state.grant.key
                    ),
                );
                None
            }
        };
        let watcher = LostWatch::for_grant(&state.grant).and_then(|watch| {
            let stop = Arc::new((Mutex::new(false), Condvar::new()));
            let thread_state = state.clone();
            let thread_stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("rsrv-watch".into())
                .spawn(move || watch_lost(&thread_state, watch, &thread_stop));
            match spawned {
                Ok(_) => Some(stop),
                Err(e) => {
                    // The heartbeat still finds a loss, only later.
                    state.inner.settings.log(
                        Level::Warn,
                        &format!(
                            "{}: could not start the lost watcher thread: {e}",
                            state.grant.key
                        ),
                    );
                    None
                }
            }
        });
        Reservation {
            state,
            heartbeat,
            watcher,
            finished: false,
        }
    }

    /// The fencing token of this grant: strictly greater than every token
    /// the server issued before. Pass it to the storage you protect and
    /// let it refuse writes carrying an older token.
    pub fn token(&self) -> u64 {
        self.state.grant.token
    }

    /// The Redis key (prefix + resource), the original's `reserve_key`.
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

    /// Every key held with their tokens, the first first: one for a
    /// reservation, all of them for [`lock_all`](ReservationManager::lock_all).
    pub fn keys(&self) -> Vec<(&str, u64)> {
        self.state.grant.keys()
    }

    /// A fenced write: runs `command` on the server only while this grant
    /// holds its (first) key with its token, in the same atomic step
    /// (`RESERVE.GUARD`), and returns the command's reply. When the grant
    /// is gone the command does not run: `Err(Error::Lost)`, and the
    /// reservation is marked lost.
    pub fn guard<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Error> {
        let guard = self.state.grant.guard_cmd(command);
        let reply: redis::RedisResult<T> =
            self.state.inner.with_conn(true, |c| Ok(c.query(&guard)))?;
        reply.map_err(|e| self.state.grant.guard_failed(&self.state.inner.settings, e))
    }

    /// The holder identity: `<by>-<hostname>-<pid>-<random>`.
    pub fn holder(&self) -> &str {
        &self.state.grant.holder
    }

    /// Has it been found lost (by the heartbeat, [`renew`](Self::renew) or a
    /// failed release)?
    pub fn is_lost(&self) -> bool {
        self.state.grant.is_lost()
    }

    /// A channel that receives one [`LostReservation`] when this
    /// reservation is lost (immediately if it already is). Nothing is sent
    /// when it is released normally: the sender is then dropped.
    pub fn lost_receiver(&self) -> mpsc::Receiver<LostReservation> {
        self.state.grant.lost.receiver()
    }

    /// Renews it now (the heartbeat does this on its own).
    /// [`Error::Lost`] if it is no longer ours.
    pub fn renew(&self) -> Result<(), Error> {
        let st = &self.state;
        st.grant.ensure_held()?;
        st.grant.renewed(&st.inner.settings, st.renew()?)
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
        self.stop_watcher();
        self.stop_heartbeat();
        let st = &self.state;
        st.grant.ensure_held()?;
        st.grant.released(&st.inner.settings, st.release()?)
    }

    /// Tells the lost watcher that what happens to the key from now on is
    /// our own doing (before any RELEASE is sent), and wakes it.
    fn stop_watcher(&mut self) {
        self.state.grant.begin_release();
        if let Some(stop) = self.watcher.take() {
            signal(&stop);
        }
    }

    /// Signals the heartbeat and waits for it to finish (at most one
    /// RENEW in flight).
    fn stop_heartbeat(&mut self) {
        let Some(hb) = self.heartbeat.take() else {
            return;
        };
        signal(&hb.stop);
        if hb.handle.thread().id() != std::thread::current().id() {
            let _ = hb.handle.join();
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.stop_watcher();
        self.stop_heartbeat();
        let st = &self.state;
        if st.grant.release_on_drop(self.finished) {
            st.grant.released_on_drop(&st.inner.settings, st.release());
        }
    }
}

/// The heartbeat thread: renews on the core's schedule until stopped or
/// lost (found by itself or by the lost watcher).
fn heartbeat(state: &State, stop: &Stop, granted_at: Instant) {
    let s = &state.inner.settings;
    let mut schedule = Schedule::new(s, granted_at);
    loop {
        if sleep_unless_stopped(stop, schedule.next()) || state.grant.is_lost() {
            return;
        }
        let outcome = state.renew();
        if !schedule.observe(s, &state.grant, outcome, Instant::now()) {
            return;
        }
    }
}

/// The lost watcher thread: `RESERVE.OBSERVE key token` on a connection
/// of its own, again and again, until the reservation is lost (it marks it
/// so the moment the key changes) or released.
fn watch_lost(state: &State, mut watch: LostWatch, stop: &Stop) {
    let s = &state.inner.settings;
    let grant = &state.grant;
    let mut conn: Option<Conn> = None;
    while !LostWatch::done(grant) {
        let attempt = watch.attempt(s, grant);
        let next = match conn.as_mut() {
            Some(c) => {
                let sent = Instant::now();
                match c.query::<redis::Value>(&attempt.cmd) {
                    Ok(value) => watch.reply(s, grant, value),
                    Err(e) => {
                        conn = None;
                        watch.failed(s, grant, e, Some(sent.elapsed()))
                    }
                }
            }
            None => {
                let connected =
                    state
                        .inner
                        .target
                        .connect(attempt.connect_timeout, attempt.read_timeout, true);
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
            Watching::Pause(pause) => {
                if sleep_unless_stopped(stop, Instant::now() + pause) {
                    return;
                }
            }
            Watching::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_rejects_bad_settings() {
        let bad = |b: ReservationManagerBuilder| matches!(b.build(), Err(Error::InvalidConfig(_)));
        assert!(bad(ReservationManager::builder("")));
        assert!(bad(
            ReservationManager::builder("w").lock_ttl(Duration::ZERO)
        ));
        assert!(bad(ReservationManager::builder("w")
            .lock_ttl(Duration::from_secs(1))
            .heartbeat_interval(Duration::from_secs(1))));
        assert!(bad(
            ReservationManager::builder("w").replica_ack(0, Duration::from_secs(1))
        ));
        assert!(bad(ReservationManager::builder("w")
            .url("redis://127.0.0.1:1/")
            .host_port("127.0.0.1", 1)));
        assert!(bad(ReservationManager::builder("w").url("nonsense://")));
        assert!(bad(
            ReservationManager::builder("w").lock_delay(Duration::from_secs(3601))
        ));
        assert!(ReservationManager::builder("w")
            .lock_delay(Duration::from_secs(3600))
            .build()
            .is_ok());
        let m = ReservationManager::builder("w")
            .lock_ttl(Duration::from_secs(3))
            .build()
            .unwrap();
        assert_eq!(m.heartbeat_interval(), Duration::from_secs(1));
        assert_eq!(m.key_for("job"), "reservation-job");
    }

    #[test]
    fn handles_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ReservationManager>();
        send_sync::<Reservation>();
        send_sync::<election::Leadership>();
        fn send<T: Send>() {}
        send::<election::LeaderChanges>();
        send_sync::<Error>();
    }
}
