//! The layout placement reasons on: shards (a master and its replicas), each node's host
//! and zone, and the changes applied to it as the rules choose them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RoleChange;
use crate::model::{ClusterSnapshot, Health};

/// A node of the layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    pub address: String,
    pub host: String,
    pub zone: Option<String>,
    pub healthy: bool,
    /// A replica in sync with its master (a master: true).
    pub in_sync: bool,
}

/// A master and the replicas that follow it.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub master: Node,
    pub replicas: Vec<Node>,
    /// Bytes on the master (its buckets' sum).
    pub bytes: u64,
    /// A bucket of the master is open (mid-move): no role change touches it.
    pub open: bool,
    /// The master is down: its shard is failover's, not placement's.
    pub down: bool,
}

impl Shard {
    pub fn healthy_replicas(&self) -> usize {
        self.replicas.iter().filter(|r| r.healthy).count()
    }

    /// Every node of the shard, the master first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(&self.replicas)
    }
}

/// One host or zone: what stands on it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stand {
    pub name: String,
    /// Master addresses.
    pub masters: Vec<String>,
    pub replicas: u32,
    pub master_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub shards: Vec<Shard>,
    /// Healthy replicas that follow no master of the snapshot: roles are settling (a
    /// failover the views have not all caught up with).
    pub unsettled: Vec<String>,
}

impl Layout {
    pub fn of(snap: &ClusterSnapshot) -> Layout {
        let mut bytes = vec![0u64; snap.members.len()];
        for b in &snap.buckets {
            if let Some(&p) = b.copies.first() {
                bytes[p as usize] += b.bytes;
            }
        }
        let shards = snap
            .members
            .iter()
            .zip(bytes)
            .map(|(m, bytes)| Shard {
                master: Node {
                    id: m.id.clone(),
                    address: m.address.clone(),
                    host: m.host().to_string(),
                    zone: m.zone.clone(),
                    healthy: m.health != Health::Down,
                    in_sync: true,
                },
                replicas: snap
                    .replicas
                    .iter()
                    .filter(|r| r.master.as_deref() == Some(m.id.as_str()))
                    .map(|r| Node {
                        id: r.id.clone(),
                        address: r.address.clone(),
                        host: r.host().to_string(),
                        zone: r.zone.clone(),
                        healthy: r.healthy,
                        in_sync: r.healthy && r.in_sync,
                    })
                    .collect(),
                bytes,
                open: snap
                    .open_migrations
                    .iter()
                    .any(|o| [&o.from, &o.to].into_iter().flatten().any(|x| *x == m.id || *x == m.address)),
                down: m.health == Health::Down,
            })
            .collect();
        let known = |id: &Option<String>| id.as_ref().is_some_and(|id| snap.members.iter().any(|m| m.id == *id));
        let unsettled =
            snap.replicas.iter().filter(|r| r.healthy && !known(&r.master)).map(|r| r.address.clone()).collect();
        Layout { shards, unsettled }
    }

    /// The replica count most masters have (ties: the larger, so a cluster built with
    /// replicas keeps them when one master has lost its own).
    pub fn most_common_replica_count(&self) -> u32 {
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for s in self.shards.iter().filter(|s| !s.down) {
            *counts.entry(s.healthy_replicas()).or_default() += 1;
        }
        counts.into_iter().max_by_key(|&(n, c)| (c, n)).map_or(0, |(n, _)| n as u32)
    }

    /// Every node has a zone, and there are at least two.
    pub fn zones_known(&self) -> bool {
        let mut zones = Vec::new();
        for n in self.shards.iter().flat_map(Shard::nodes).filter(|n| n.healthy) {
            match &n.zone {
                Some(z) if !zones.contains(z) => zones.push(z.clone()),
                Some(_) => {}
                None => return false,
            }
        }
        zones.len() >= 2
    }

    /// Hosts (or zones) with what stands on each, by name.
    pub fn stands(&self, key: impl Fn(&Node) -> Option<String>) -> Vec<Stand> {
        let mut out: BTreeMap<String, Stand> = BTreeMap::new();
        for s in &self.shards {
            let Some(k) = key(&s.master) else { continue };
            let st = out.entry(k.clone()).or_insert_with(|| Stand { name: k, ..Stand::default() });
            st.masters.push(s.master.address.clone());
            st.master_bytes += s.bytes;
        }
        for n in self.shards.iter().flat_map(|s| &s.replicas).filter(|n| n.healthy) {
            let Some(k) = key(n) else { continue };
            out.entry(k.clone()).or_insert_with(|| Stand { name: k, ..Stand::default() }).replicas += 1;
        }
        out.into_values().collect()
    }

    /// The layout after `change`.
    pub fn apply(&mut self, change: &RoleChange) {
        match change {
            RoleChange::Replicate { node, from_master, to_master, .. } => {
                let Some(from) = self.shards.iter().position(|s| s.master.id == *from_master) else { return };
                let Some(i) = self.shards[from].replicas.iter().position(|r| r.id == *node) else { return };
                let mut moved = self.shards[from].replicas.remove(i);
                // A full sync: in sync once it has caught up, which the next run sees.
                moved.in_sync = false;
                if let Some(to) = self.shards.iter_mut().find(|s| s.master.id == *to_master) {
                    to.replicas.push(moved);
                }
            }
            RoleChange::Failover { node, master, .. } => {
                let Some(s) = self.shards.iter_mut().find(|s| s.master.id == *master) else { return };
                let Some(i) = s.replicas.iter().position(|r| r.id == *node) else { return };
                let promoted = s.replicas.remove(i);
                let demoted = std::mem::replace(&mut s.master, promoted);
                s.master.in_sync = true;
                s.replicas.push(Node { in_sync: true, ..demoted });
            }
        }
    }
}
