//! Leader election on the blocking manager: [`ReservationManager::campaign`]
//! (a `RESERVE.WAIT` on the election's key, then the usual heartbeat and
//! lost watcher), [`Leadership::resign`] (a release),
//! [`ReservationManager::leader`] and the [`LeaderChanges`] iterator (both
//! `RESERVE.OBSERVE`). An election is a reservation like any other: its key
//! is `prefix + name`, and `info(name)` describes it too.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::core::lost::LostReservation;
use crate::core::observe::{self, Feed};
use crate::core::protocol::{Leader, MAX_TOKEN};
use crate::error::Error;

use super::{Inner, Reservation, ReservationManager};

impl ReservationManager {
    /// Campaigns for the leadership of `name`, for as long as it takes:
    /// `RESERVE.WAIT` on its key, so candidates are elected in the order
    /// they started campaigning, the moment the leader resigns, dies (its
    /// TTL runs out, plus the
    /// [`lock_delay`](crate::ReservationManagerBuilder::lock_delay)) or
    /// its key is deleted. Then the heartbeat keeps the leadership, and
    /// its lost signal fires as soon as the key changes hands.
    ///
    /// A leader that finds its leadership lost must stop acting as the
    /// leader at once; it may campaign again.
    pub fn campaign(&self, name: &str) -> Result<Leadership, Error> {
        self.wait_until_lock(name).map(Leadership)
    }

    /// Like [`campaign`](Self::campaign), but gives up after `timeout`:
    /// `Ok(None)` then, with nothing held and nothing left queued.
    pub fn campaign_timeout(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<Leadership>, Error> {
        Ok(self.wait_until_lock_timeout(name, timeout)?.map(Leadership))
    }

    /// The current leader of `name`: `None` when there is none (nobody
    /// campaigned, the leader resigned, or its lock-delay runs). One
    /// `RESERVE.OBSERVE` on the shared connection.
    pub fn leader(&self, name: &str) -> Result<Option<Leader>, Error> {
        let key = self.key_for(name);
        let cmd = observe::current_cmd(&key, MAX_TOKEN);
        let value: redis::Value = self.inner.with_conn(true, |c| c.query(&cmd))?;
        if let Some(now) = observe::current_reply(value, MAX_TOKEN)? {
            return Ok(now);
        }
        // The key's token is MAX_TOKEN itself: token 0 always differs.
        let cmd = observe::current_cmd(&key, 0);
        let value: redis::Value = self.inner.with_conn(true, |c| c.query(&cmd))?;
        Ok(observe::current_reply(value, 0)?.flatten())
    }

    /// Every change of `name`'s leader, as it happens: first the current
    /// state, then each new leader, or `None` when the leadership falls
    /// vacant. See [`LeaderChanges`].
    pub fn leader_changes(&self, name: &str) -> LeaderChanges {
        LeaderChanges {
            inner: self.inner.clone(),
            feed: Feed::new(self.key_for(name)),
            conn: None,
        }
    }
}

/// Leadership of an election, won by
/// [`ReservationManager::campaign`]: the election's reservation, kept
/// alive by its heartbeat and watched by its lost watcher.
///
/// Dropping it resigns (best effort), as dropping a reservation releases
/// it.
pub struct Leadership(Reservation);

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.state.grant.fmt_reservation("Leadership", f)
    }
}

impl Leadership {
    /// The election's name (the resource campaigned for).
    pub fn name(&self) -> &str {
        self.0.resource()
    }

    /// The fencing token of this term: larger than every earlier leader's.
    /// Pass it to whatever the leader writes to, so a deposed leader's
    /// late writes can be refused.
    pub fn token(&self) -> u64 {
        self.0.token()
    }

    /// This leader's holder identity, as [`Leader::holder`] shows it to
    /// everyone else.
    pub fn holder(&self) -> &str {
        self.0.holder()
    }

    /// The election's Redis key.
    pub fn key(&self) -> &str {
        self.0.key()
    }

    /// Has the leadership been lost (the key deleted, expired or taken
    /// over)?
    pub fn is_lost(&self) -> bool {
        self.0.is_lost()
    }

    /// A channel that receives one [`LostReservation`] when the leadership
    /// is lost (immediately if it already is); see
    /// [`Reservation::lost_receiver`].
    pub fn lost_receiver(&self) -> mpsc::Receiver<LostReservation> {
        self.0.lost_receiver()
    }

    /// The reservation behind it (for [`guard`](Reservation::guard),
    /// say).
    pub fn reservation(&self) -> &Reservation {
        &self.0
    }

    /// The reservation behind it, owned.
    pub fn into_reservation(self) -> Reservation {
        self.0
    }

    /// Steps down: stops the heartbeat and releases the election's key,
    /// which the oldest other candidate gets at once (no lock-delay after
    /// a release). [`Error::Lost`] when it was no longer ours.
    pub fn resign(self) -> Result<(), Error> {
        self.0.release()
    }
}

/// The changes of an election's leader, from
/// [`ReservationManager::leader_changes`]: an iterator of
/// `Ok(Some(leader))` (a new leader) and `Ok(None)` (no leader).
///
/// The first item is the state when it starts; each `next()` then blocks
/// until the leader differs from the last one reported. It runs
/// `RESERVE.OBSERVE key last_token` on a connection of its own, so it
/// never misses the latest state: several changes between two `next()`
/// calls are reported as one (the newest), and a change made while the
/// connection was down is reported as soon as it is back. Tokens only
/// grow, so leaders come in term order.
///
/// When the connection drops it reconnects with backoff (as a waiter
/// does, [`reconnect`](crate::ReservationManagerBuilder::reconnect)).
/// After that many failed attempts in a row it yields
/// `Err(Error::Connection(_))` and, if `next()` is called again, starts
/// over (still from the last token). A permanent error (the key is not a
/// reservation, the module is missing) is yielded once and ends the
/// iterator. Nothing runs in the background: dropping it closes its
/// connection.
pub struct LeaderChanges {
    inner: Arc<Inner>,
    feed: Feed,
    conn: Option<Conn>,
}

impl std::fmt::Debug for LeaderChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderChanges")
            .field("key", &self.feed.key())
            .field("ended", &self.feed.ended())
            .finish_non_exhaustive()
    }
}

impl Iterator for LeaderChanges {
    type Item = Result<Option<Leader>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = &self.inner.settings;
        while !self.feed.ended() {
            let attempt = self.feed.attempt(s);
            let c = match self.conn.as_mut() {
                Some(c) => c,
                None => {
                    let connected = self.inner.target.connect(
                        attempt.connect_timeout,
                        attempt.read_timeout,
                        true,
                    );
                    match connected {
                        Ok(c) => self.conn.insert(c),
                        Err(e) => match self.feed.retry(s, e, None) {
                            Ok(pause) => {
                                std::thread::sleep(pause);
                                continue;
                            }
                            Err(e) => return Some(Err(e)),
                        },
                    }
                }
            };
            let sent = Instant::now();
            match c.query::<redis::Value>(&attempt.cmd) {
                Ok(value) => match self.feed.reply(value) {
                    Ok(Some(change)) => return Some(Ok(change)),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => {
                    self.conn = None;
                    match self.feed.retry(s, e, Some(sent.elapsed())) {
                        Ok(pause) => std::thread::sleep(pause),
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
        None
    }
}

impl std::iter::FusedIterator for LeaderChanges {}
