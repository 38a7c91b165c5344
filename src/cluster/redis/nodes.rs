//! The nodes of one cluster as the backend reaches them: the seeds and a connection per
//! node; the node commands every part uses (CLUSTER NODES, INFO, SETSLOT, COUNTKEYSINSLOT),
//! and the topology read from them as a value. Nothing here remembers a topology: a
//! snapshot carries the one it was taken from to its moves ([`Nodes::topology_of`]), and
//! repair and role changes read their own, so no path that changes the cluster has
//! anything to forget.
//!
//! Owns: [`Nodes`], the part of the backend the sizer, the movers and repair borrow.
//! Does not own: what a topology means ([`super::topology`]), sizes or moves.

use std::borrow::Cow;
use std::collections::HashMap;

use tracing::debug;

use super::SLOTS;
use super::conn::Conns;
use super::topology::{NodeInfo, NodeLine, Topology, parse_nodes};
use crate::cluster::ClusterError;
use crate::model::ClusterSnapshot;

pub(super) struct Nodes {
    seeds: Vec<String>,
    pub(super) conns: Conns,
}

impl Nodes {
    pub(super) fn new(seeds: Vec<String>, conns: Conns) -> Nodes {
        Nodes { seeds, conns }
    }

    pub(super) async fn cluster_nodes(&self, addr: &str) -> Result<Vec<NodeLine>, String> {
        let text: String = self.conns.query(addr, redis::cmd("CLUSTER").arg("NODES")).await?;
        parse_nodes(&text)
    }

    /// The node `name` names (its id, ip:port or hostname:port) and the view it was found
    /// in: the node itself when `name` is an address that answers (its `myself` line: a
    /// reused address names the node there now), otherwise a seed's view. None: no node.
    pub(super) async fn node_named(&self, name: &str) -> Result<Option<(NodeLine, Vec<NodeLine>)>, String> {
        if let Ok(view) = self.cluster_nodes(name).await
            && let Some(me) = view.iter().find(|n| n.is_myself()).cloned()
        {
            return Ok(Some((me, view)));
        }
        let seen = self.seed_nodes().await?;
        let Some(node) = seen.iter().find(|n| n.is_named(name)).cloned() else { return Ok(None) };
        // Its own view: the seed's may lag behind a failover.
        let view = self.cluster_nodes(&node.addr).await?;
        match view.iter().find(|n| n.is_myself()).cloned() {
            Some(me) => Ok(Some((me, view))),
            None => Err(format!("{}: CLUSTER NODES has no myself line", node.addr)),
        }
    }

    /// CLUSTER NODES from the first seed that answers.
    pub(super) async fn seed_nodes(&self) -> Result<Vec<NodeLine>, String> {
        let mut last = String::from("no seeds configured");
        for seed in &self.seeds {
            match self.cluster_nodes(seed).await {
                Ok(n) => return Ok(n),
                Err(e) => last = e,
            }
        }
        Err(format!("no seed answered CLUSTER NODES: {last}"))
    }

    /// Reads the topology from the first seed that answers, then each master's own view.
    pub(super) async fn topology(&self) -> Result<Topology, ClusterError> {
        let nodes = self.seed_nodes().await.map_err(ClusterError::Snapshot)?;
        let mut masters: Vec<NodeLine> = nodes.iter().filter(|n| n.is_master()).cloned().collect();
        masters.sort_by(|a, b| a.addr.cmp(&b.addr));
        let replicas: Vec<NodeLine> = nodes.iter().filter(|n| !n.is_master()).cloned().collect();
        let views = futures::future::join_all(masters.iter().map(|m| {
            let addr = m.addr.clone();
            async move { (addr.clone(), self.cluster_nodes(&addr).await) }
        }))
        .await;
        let mut myself = HashMap::new();
        for (addr, view) in views {
            match view {
                Ok(v) => {
                    if let Some(me) = v.into_iter().find(|n| n.is_myself()) {
                        myself.insert(addr, me);
                    }
                }
                Err(e) => debug!(node = %addr, cause = %e, "master did not answer CLUSTER NODES"),
            }
        }
        // Right after a failover the seed may still list the demoted master as one; the
        // node's own view is the truth about its role.
        let (masters, demoted): (Vec<NodeLine>, Vec<NodeLine>) =
            masters.into_iter().partition(|m| myself.get(&m.addr).is_none_or(|me| me.is_master()));
        for d in &demoted {
            debug!(node = %d.addr, "listed as a master by the seed, a replica by its own view");
            myself.remove(&d.addr);
        }
        let replicas: Vec<NodeLine> = replicas.into_iter().chain(demoted).collect();
        // Ownership: each master's claim about itself, the higher config epoch winning a
        // conflict; slots no master claims fall back to the seed's view.
        let mut owner: Vec<Option<usize>> = vec![None; SLOTS];
        let mut epoch: Vec<u64> = vec![0; SLOTS];
        for (i, m) in masters.iter().enumerate() {
            let me = myself.get(&m.addr).unwrap_or(m);
            for &(a, b) in &me.slots {
                for s in a..=b {
                    let s = s as usize;
                    if owner[s].is_none() || me.config_epoch > epoch[s] {
                        owner[s] = Some(i);
                        epoch[s] = me.config_epoch;
                    }
                }
            }
        }
        Ok(Topology { masters, replicas, myself, owner })
    }

    /// The topology the moves of `snap` take node ids and replicas from: the one it was
    /// taken from, which it carries; read now for a snapshot that carries none (built
    /// elsewhere). It is not read again during a run (a frozen master would hold every
    /// group for the connection timeout): a failover mid-run is met by the servers'
    /// refusal (MIGRATING fails on a node that no longer owns the slot or is no master),
    /// and the run's failed moves are settled by repair.
    pub(super) async fn topology_of<'s>(&self, snap: &'s ClusterSnapshot) -> Result<Cow<'s, Topology>, ClusterError> {
        match snap.view.get::<Topology>() {
            Some(t) => Ok(Cow::Borrowed(t)),
            None => Ok(Cow::Owned(self.topology().await?)),
        }
    }

    /// What a master says of itself: INFO server, memory and keyspace, and CLUSTER INFO.
    pub(super) async fn node_info(&self, addr: &str) -> Result<NodeInfo, String> {
        let mut p = redis::pipe();
        p.cmd("INFO").arg("server").arg("memory").arg("keyspace").arg("replication").cmd("CLUSTER").arg("INFO");
        let (info, cluster): (String, String) = self.conns.pipeline_as(addr, &p).await?;
        Ok(NodeInfo::parse(&info, &cluster))
    }

    pub(super) fn node_id_of(&self, topo: &Topology, addr: &str) -> Result<String, ClusterError> {
        topo.master_by_addr(addr)
            .map(|m| m.id.clone())
            .ok_or_else(|| ClusterError::Snapshot(format!("{addr} is not a master of the cluster")))
    }

    pub(super) async fn setslot(&self, addr: &str, slot: u16, args: &[&str]) -> Result<(), String> {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot);
        for a in args {
            c.arg(*a);
        }
        self.conns.query::<()>(addr, &c).await
    }

    pub(super) async fn count_keys(&self, addr: &str, slot: u16) -> Result<u64, String> {
        self.conns.query(addr, redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot)).await
    }

    /// `CLUSTER SETSLOT <slot> <args>` for each of `slots` on `addr`, in one pipeline; one
    /// result per slot (a transport failure fails them all).
    pub(super) async fn setslots(&self, addr: &str, slots: &[u16], args: &[&str]) -> Vec<Result<(), String>> {
        if slots.is_empty() {
            return Vec::new();
        }
        let mut p = redis::pipe();
        p.ignore_errors();
        for &slot in slots {
            p.cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(args);
        }
        match self.conns.pipeline_as::<Vec<redis::RedisResult<redis::Value>>>(addr, &p).await {
            Ok(rs) if rs.len() == slots.len() => {
                rs.into_iter().map(|r| r.map(|_| ()).map_err(|e| e.to_string())).collect()
            }
            Ok(rs) => {
                slots.iter().map(|_| Err(format!("{addr}: {} answers to {} commands", rs.len(), slots.len()))).collect()
            }
            Err(e) => slots.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}
