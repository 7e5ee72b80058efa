//! Where a manager connects to (`Target`), and the blocking connection to
//! it: one server or a cluster, behind one type. The async connection
//! lives with the async manager.

use std::time::Duration;

use redis::{Cmd, ConnectionLike, FromRedisValue, RedisResult};

use crate::core::protocol::{self, WAIT_SLACK};

/// Where the manager connects to.
#[derive(Clone)]
pub(crate) enum Target {
    Single(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient),
}

/// A blocking connection to the server (or cluster) of a manager.
pub(crate) enum Conn {
    Single(redis::Connection),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterConnection),
}

impl Target {
    /// Opens a connection. `read_timeout` `None` means reads block for as
    /// long as the server takes (what a `RESERVE.WAIT` needs). A connection
    /// meant for a `RESERVE.WAIT` (`for_wait`) does not reconnect and retry
    /// on its own: the waiter does that itself, with the remaining timeout.
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    pub(crate) fn connect(
        &self,
        connect_timeout: Duration,
        read_timeout: Option<Duration>,
        for_wait: bool,
    ) -> RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let conn = client.get_connection_with_timeout(connect_timeout)?;
                conn.set_read_timeout(read_timeout)?;
                Ok(Conn::Single(conn))
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(client) => {
                let conn = client.get_connection()?;
                conn.set_read_timeout(read_timeout)?;
                if for_wait {
                    conn.set_auto_reconnect(false);
                }
                Ok(Conn::Cluster(conn))
            }
        }
    }
}

impl Conn {
    pub(crate) fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c,
        }
    }

    pub(crate) fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        cmd.query(self.like())
    }

    pub(crate) fn is_open(&self) -> bool {
        match self {
            Conn::Single(c) => c.is_open(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.is_open(),
        }
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.set_read_timeout(timeout),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.set_read_timeout(timeout),
        }
    }

    /// `WAIT replicas timeout_ms` on the connection that wrote `key` (in a
    /// cluster: the connection to the master of `key`'s slot). Returns how
    /// many replicas acknowledged.
    ///
    /// WAIT blocks up to its own timeout, so the read timeout is lifted to
    /// cover it and set back to `read_timeout` afterwards.
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    pub(crate) fn wait_replicas(
        &mut self,
        key: &str,
        replicas: usize,
        timeout: Duration,
        read_timeout: Option<Duration>,
    ) -> RedisResult<usize> {
        let wait = protocol::replicas(replicas, timeout);
        if read_timeout.is_some() {
            self.set_read_timeout(read_timeout.map(|t| t.max(timeout + WAIT_SLACK)))?;
        }
        let got = match self {
            Conn::Single(c) => wait.query(c),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c
                .route_command(&wait, key_route(key))
                .and_then(|v| redis::from_redis_value(&v)),
        }?;
        if read_timeout.is_some() {
            self.set_read_timeout(read_timeout)?;
        }
        Ok(got)
    }
}

/// Routes to the master serving `key`'s slot.
#[cfg(feature = "cluster")]
pub(crate) fn key_route(key: &str) -> redis::cluster_routing::RoutingInfo {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let slot = redis::cluster_routing::get_slot(key.as_bytes());
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
        slot,
        SlotAddr::Master,
    )))
}
