//! Leader election on the async manager: the twins of the blocking
//! [`campaign`](crate::ReservationManager::campaign),
//! [`Leadership`](crate::Leadership), [`leader`](crate::ReservationManager::leader)
//! and [`LeaderChanges`](crate::LeaderChanges), the last one a
//! `futures_core::Stream`. The decisions are the core's, as for the
//! blocking API.

use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::Instant;

use crate::core::lost::LostReservation;
use crate::core::observe::{self, Feed};
use crate::core::protocol::{Leader, MAX_TOKEN};
use crate::error::Error;

use super::{within, AsyncConn, AsyncReservation, AsyncReservationManager, Inner};

impl AsyncReservationManager {
    /// Campaigns for the leadership of `name` for as long as it takes; see
    /// [`ReservationManager::campaign`](crate::ReservationManager::campaign).
    pub async fn campaign(&self, name: &str) -> Result<AsyncLeadership, Error> {
        self.wait_until_lock(name).await.map(AsyncLeadership)
    }

    /// Like [`campaign`](Self::campaign), but gives up after `timeout`
    /// (`Ok(None)`).
    pub async fn campaign_timeout(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<AsyncLeadership>, Error> {
        Ok(self
            .wait_until_lock_timeout(name, timeout)
            .await?
            .map(AsyncLeadership))
    }

    /// The current leader of `name` (`None`: none, or its lock-delay
    /// runs); one `RESERVE.OBSERVE`.
    pub async fn leader(&self, name: &str) -> Result<Option<Leader>, Error> {
        let key = self.key_for(name);
        let cmd = observe::current_cmd(&key, MAX_TOKEN);
        let value: redis::Value = self.inner.run(&cmd).await?;
        if let Some(now) = observe::current_reply(value, MAX_TOKEN)? {
            return Ok(now);
        }
        // The key's token is MAX_TOKEN itself: token 0 always differs.
        let cmd = observe::current_cmd(&key, 0);
        let value: redis::Value = self.inner.run(&cmd).await?;
        Ok(observe::current_reply(value, 0)?.flatten())
    }

    /// Every change of `name`'s leader as a `Stream`: first the current
    /// state, then each new leader or `None` (no leader); see
    /// [`LeaderChanges`](crate::LeaderChanges) for what it promises.
    pub fn leader_changes(&self, name: &str) -> AsyncLeaderChanges {
        AsyncLeaderChanges {
            idle: Some(FeedState {
                inner: self.inner.clone(),
                feed: Feed::new(self.key_for(name)),
                conn: None,
            }),
            step: None,
        }
    }
}

/// Leadership of an election (async); see
/// [`Leadership`](crate::Leadership). Dropping it resigns (best effort,
/// spawned on the current runtime).
pub struct AsyncLeadership(AsyncReservation);

impl std::fmt::Debug for AsyncLeadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.state.grant.fmt_reservation("AsyncLeadership", f)
    }
}

impl AsyncLeadership {
    /// The election's name.
    pub fn name(&self) -> &str {
        self.0.resource()
    }

    /// The fencing token of this term.
    pub fn token(&self) -> u64 {
        self.0.token()
    }

    /// This leader's holder identity.
    pub fn holder(&self) -> &str {
        self.0.holder()
    }

    /// The election's Redis key.
    pub fn key(&self) -> &str {
        self.0.key()
    }

    /// Has the leadership been lost?
    pub fn is_lost(&self) -> bool {
        self.0.is_lost()
    }

    /// Resolves when the leadership is lost (never, if it is not).
    pub async fn lost(&self) {
        self.0.lost().await
    }

    /// A channel that receives one [`LostReservation`] when the leadership
    /// is lost.
    pub fn lost_receiver(&self) -> mpsc::Receiver<LostReservation> {
        self.0.lost_receiver()
    }

    /// The reservation behind it.
    pub fn reservation(&self) -> &AsyncReservation {
        &self.0
    }

    /// The reservation behind it, owned.
    pub fn into_reservation(self) -> AsyncReservation {
        self.0
    }

    /// Steps down: releases the election's key (the oldest other
    /// candidate gets it at once).
    pub async fn resign(self) -> Result<(), Error> {
        self.0.release().await
    }
}

/// The changes of an election's leader as a
/// [`Stream`](futures_core::Stream) of `Ok(Some(leader))` and `Ok(None)`
/// (no leader), from
/// [`AsyncReservationManager::leader_changes`]; the same items, order and
/// reconnects as the blocking [`LeaderChanges`](crate::LeaderChanges).
///
/// It works only while polled (no task of its own): dropping it cancels the
/// OBSERVE in flight and closes its connection.
pub struct AsyncLeaderChanges {
    /// The feed between two items.
    idle: Option<FeedState>,
    /// The step under way (it owns the feed until it yields).
    step: Option<Step>,
}

type Item = Result<Option<Leader>, Error>;

/// One run of the feed until it has an item, owning the feed meanwhile.
type Step = Pin<Box<dyn Future<Output = (FeedState, Option<Item>)> + Send>>;

impl std::fmt::Debug for AsyncLeaderChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncLeaderChanges")
            .field("key", &self.idle.as_ref().map(|st| st.feed.key()))
            .field("waiting", &self.step.is_some())
            .finish_non_exhaustive()
    }
}

impl AsyncLeaderChanges {
    /// The next item (what `StreamExt::next` gives, without needing
    /// `futures`).
    pub async fn next_change(&mut self) -> Option<Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for AsyncLeaderChanges {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        if this.step.is_none() {
            let Some(state) = this.idle.take() else {
                return Poll::Ready(None);
            };
            this.step = Some(Box::pin(state.step()));
        }
        let Some(step) = this.step.as_mut() else {
            return Poll::Ready(None);
        };
        match step.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((state, item)) => {
                this.step = None;
                if item.is_some() {
                    this.idle = Some(state);
                }
                Poll::Ready(item)
            }
        }
    }
}

/// The feed, its manager and its own connection.
struct FeedState {
    inner: Arc<Inner>,
    feed: Feed,
    conn: Option<AsyncConn>,
}

impl FeedState {
    /// Runs OBSERVE until there is something to yield (`None`: the feed
    /// has ended).
    async fn step(mut self) -> (FeedState, Option<Item>) {
        let inner = self.inner.clone();
        let s = &inner.settings;
        while !self.feed.ended() {
            let attempt = self.feed.attempt(s);
            let c = match self.conn.as_mut() {
                Some(c) => c,
                None => {
                    let connected = within(
                        Some(attempt.connect_timeout),
                        AsyncConn::connect(&inner.target, attempt.connect_timeout),
                    )
                    .await;
                    match connected {
                        Ok(c) => self.conn.insert(c),
                        Err(e) => match self.feed.retry(s, e, None) {
                            Ok(pause) => {
                                tokio::time::sleep(pause).await;
                                continue;
                            }
                            Err(e) => return (self, Some(Err(e))),
                        },
                    }
                }
            };
            let sent = Instant::now();
            let reply = within(attempt.read_timeout, c.query::<redis::Value>(&attempt.cmd)).await;
            match reply {
                Ok(value) => match self.feed.reply(value) {
                    Ok(Some(change)) => return (self, Some(Ok(change))),
                    Ok(None) => {}
                    Err(e) => return (self, Some(Err(e))),
                },
                Err(e) => {
                    self.conn = None;
                    match self.feed.retry(s, e, Some(sent.elapsed())) {
                        Ok(pause) => tokio::time::sleep(pause).await,
                        Err(e) => return (self, Some(Err(e))),
                    }
                }
            }
        }
        (self, None)
    }
}
