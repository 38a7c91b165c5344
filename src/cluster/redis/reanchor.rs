//! Repair's first step on Redis 7: an importing node whose view leaves its slots' owner
//! unseen (it takes no gossip about a slot it imports) is pointed at that owner, so it
//! serves the cluster again before any slot is settled.
//!
//! Owns: which importing nodes are set right, and never on Valkey. Does not own:
//! settling the slots ([`super::repair`]).

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::repair::{OpenSlot, Repair};
use super::topology::Topology;

impl Repair<'_> {
    /// [`Self::point_at_owners`] for every importing node of `open` at once, before any
    /// slot is settled: a group of slots opened together leaves the target importing all
    /// of them, and while its view leaves one unserved it answers CLUSTERDOWN for every
    /// slot (MIGRATE to it fails). A node that cannot be set right is logged; settling
    /// its slots says what failed.
    pub(super) async fn reanchor_importers<'a>(
        &self,
        topo: &Topology,
        open: impl Iterator<Item = (&'a u16, &'a OpenSlot)>,
    ) {
        let mut by_node: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
        for (&slot, flags) in open {
            for (a, _) in &flags.importing {
                by_node.entry(a.as_str()).or_default().push(slot);
            }
        }
        for (node, slots) in by_node {
            if let Err(e) = self.point_at_owners(topo, node, &slots).await {
                warn!(node = %node, cause = %e, "could not point the importing node at its slots' owner");
            }
        }
    }

    /// Redis 7 takes no gossip about a slot a node imports, so after a failover of the
    /// source the target may think the slot served by nobody ("CLUSTERDOWN Hash slot not
    /// served") and refuse the keys. Each of `slots` whose live owner `node` does not see
    /// is assigned to that owner there (a finish sets IMPORTING again): one view, and one
    /// pipeline per owner. Only then, and never on Valkey: Valkey drops the keys a node
    /// holds in a slot assigned elsewhere, and it needs no help here.
    pub(super) async fn point_at_owners(&self, topo: &Topology, node: &str, slots: &[u16]) -> Result<(), String> {
        let view = self.nodes.cluster_nodes(node).await?;
        let seen =
            |slot: u16| view.iter().find(|n| n.is_master() && !n.is_failed() && n.owns(slot)).map(|n| n.id.clone());
        let mut by_owner: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for &slot in slots {
            let Some(owner) = topo.owner[slot as usize].map(|i| &topo.masters[i]).filter(|m| !m.is_failed()) else {
                continue;
            };
            if owner.addr != node && seen(slot).as_deref() != Some(owner.id.as_str()) {
                by_owner.entry(owner.id.clone()).or_default().push(slot);
            }
        }
        if by_owner.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        p.cmd("INFO").arg("server").cmd("CLUSTER").arg("INFO");
        let (info, cluster): (String, String) = self.nodes.conns.pipeline_as(node, &p).await?;
        if super::topology::NodeInfo::parse(&info, &cluster).engine != "redis" {
            return Ok(());
        }
        for (owner, slots) in by_owner {
            info!(node = %node, slots = slots.len(), "the importing node does not see these slots' owner; pointing it at {owner}");
            for (slot, r) in slots.iter().zip(self.nodes.setslots(node, &slots, &["NODE", &owner]).await) {
                r.map_err(|e| format!("SETSLOT {slot} NODE on {node}: {e}"))?;
            }
        }
        Ok(())
    }
}
