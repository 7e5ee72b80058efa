//! A Redis Cluster of real servers (masters only) with the module loaded on
//! every node, on loopback ports.
//!
//! Slots are assigned with `CLUSTER ADDSLOTSRANGE` and the nodes introduced
//! with `CLUSTER MEET` (what `redis-cli --cluster create ... --cluster-replicas
//! 0` does, without depending on the cli binary), then [`Cluster::start`]
//! waits until every node reports `cluster_state:ok`, knows every other node
//! and serves a complete slot map.

use crate::{free_port, redis, wait_until, Config, Server, DEADLINE};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Running cluster nodes; all killed on drop.
pub struct Cluster {
    /// The masters, in slot order: node `i` serves `slot_ranges()[i]`.
    pub nodes: Vec<Server>,
    ranges: Vec<(u16, u16)>,
}

impl Cluster {
    /// `masters` masters with the default configuration.
    pub fn start(masters: usize) -> Cluster {
        Cluster::with(masters, Config::default())
    }

    /// `masters` masters, each started with `config` plus the cluster
    /// settings (`cluster-enabled yes`, `cluster-config-file nodes.conf`
    /// in its own dir, a free `cluster-port`).
    pub fn with(masters: usize, config: Config) -> Cluster {
        assert!(
            (1..=SLOTS as usize).contains(&masters),
            "a cluster needs 1..=16384 masters"
        );
        let mut nodes = Vec::with_capacity(masters);
        let mut bus_ports = Vec::with_capacity(masters);
        for _ in 0..masters {
            let bus = free_port();
            let node_config = config
                .clone()
                .arg("cluster-enabled", "yes")
                .arg("cluster-config-file", "nodes.conf")
                .arg("cluster-port", &bus.to_string())
                .arg("cluster-node-timeout", "5000");
            nodes.push(Server::with(node_config));
            bus_ports.push(bus);
        }
        let n = masters as u32;
        let ranges: Vec<(u16, u16)> = (0..n)
            .map(|i| {
                let start = i * u32::from(SLOTS) / n;
                let end = (i + 1) * u32::from(SLOTS) / n - 1;
                (start as u16, end as u16)
            })
            .collect();
        for (node, (start, end)) in nodes.iter().zip(&ranges) {
            let mut c = node.conn();
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(*start)
                .arg(*end)
                .query(&mut c)
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let mut first = nodes[0].conn();
        for (node, bus) in nodes.iter().zip(&bus_ports).skip(1) {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .arg(*bus)
                .query(&mut first)
                .expect("CLUSTER MEET");
        }
        let cluster = Cluster { nodes, ranges };
        cluster.wait_ready();
        cluster
    }

    /// Waits until every node says `cluster_state:ok`, knows all nodes and
    /// its `CLUSTER SLOTS` lists every master's range.
    pub fn wait_ready(&self) {
        let n = self.nodes.len();
        for node in &self.nodes {
            let mut c = node.conn();
            wait_until(DEADLINE, "cluster_state:ok on every node", || {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(&mut c)
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}\r"))
                    && slots.len() == n
            });
        }
    }

    /// The nodes' URLs (seed nodes for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }

    /// Node `i` serves slots `slot_ranges()[i].0 ..= slot_ranges()[i].1`.
    pub fn slot_ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].conn())
            .expect("CLUSTER KEYSLOT")
    }

    /// Index of the node serving `key`.
    pub fn node_index_for(&self, key: &str) -> usize {
        let slot = self.slot_of(key);
        self.ranges
            .iter()
            .position(|&(start, end)| (start..=end).contains(&slot))
            .expect("every slot is assigned")
    }

    /// The node serving `key`.
    pub fn node_for(&self, key: &str) -> &Server {
        &self.nodes[self.node_index_for(key)]
    }
}
