//! The commit of drained slots: SETSLOT NODE on the source first, then on the target.
//!
//! A node importing a slot takes no claim to it from another master; a node owning one
//! loses it to a claim under a newer config epoch, and drops the keys it holds there.
//! Committed on the target first, a drained slot is owned by the target while the source
//! still serves it: a failover of the source in between promotes a replica that claims
//! the slot (its view, or Valkey's replicated MIGRATING, still gives it to its old master)
//! under the failover's new epoch, and the target gives up the slot with every key moved
//! (`tests/safety.rs::a_source_failed_over_mid_move_is_settled_by_the_run_standalone`
//! lost 24 keys on Valkey about 1 run in 10 that way). So the source first, and:
//! - a slot the source refuses (no longer a primary: failed over meanwhile) is committed
//!   on the target only if the master now serving the source's shard does not claim it
//!   (Valkey runs SETSLOT on the replicas before their primary: the successor may have
//!   taken the new owner); otherwise it stays open, its keys safe on the importing
//!   target, for the run to hand them back to the claimant;
//! - a slot the target refuses is given back to the source and opened again (MIGRATING),
//!   so the run hands its keys back as for any failed move.
//!
//! The price: between the two commits a client the source sends to the target is sent
//! back (the target serves the slot only once committed), for one round trip.
//!
//! Owns: the order of the two commits, what each refusal leaves, and committing a slot a
//! stop between them left claimed by nobody (for repair). Does not own: telling the other
//! masters at a group's end, or draining.

use tracing::warn;

use super::legacy::Legacy;
use super::topology::Topology;

/// What a commit did, slot by slot.
pub(super) struct Commit {
    /// One per slot, in order: Ok when the target owns it; else why not, the slot left open.
    pub(super) results: Vec<Result<(), String>>,
    /// Slots committed on the target after their source refused (it was demoted): the
    /// demoted source and its shard may still show them open ([`super::nodes::Nodes::follow_demoted`]).
    pub(super) demoted: Vec<u16>,
}

/// The two sides of a commit: (address, node id) of the source, then of the target.
pub(super) type Sides<'a> = ((&'a str, &'a str), (&'a str, &'a str));

impl Legacy<'_> {
    /// Assigns `slots`, drained, from the source to the target: see the module.
    pub(super) async fn commit(&self, ((src, src_id), (dst, dst_id)): Sides<'_>, slots: &[u16]) -> Commit {
        let mut results: Vec<Result<(), String>> = vec![Ok(()); slots.len()];
        let mut take = Vec::new();
        let mut refused = Vec::new();
        for (i, r) in self.nodes.setslots(src, slots, &["NODE", dst_id]).await.into_iter().enumerate() {
            match r {
                Ok(()) => take.push(i),
                Err(e) => refused.push((i, e)),
            }
        }
        let free = self.unclaimed_by_successor(src, &refused.iter().map(|(i, _)| slots[*i]).collect::<Vec<_>>()).await;
        let mut demoted = Vec::new();
        for (i, e) in refused {
            if free.contains(&slots[i]) {
                warn!(slot = slots[i], node = %src, cause = %e, "the source, demoted, refused the commit; its successor does not claim the slot: committing it on the target");
                demoted.push(slots[i]);
                take.push(i);
            } else {
                results[i] =
                    Err(format!("SETSLOT NODE on the source {src}: {e} (the slot stays open, its keys on {dst})"));
            }
        }
        take.sort_unstable();
        let picked: Vec<u16> = take.iter().map(|&i| slots[i]).collect();
        if !picked.is_empty() {
            self.nodes.epoch_past_demotion(src, dst).await;
        }
        let mut reopen = Vec::new();
        for (&i, r) in take.iter().zip(self.nodes.setslots(dst, &picked, &["NODE", dst_id]).await) {
            if let Err(e) = r {
                results[i] = Err(format!("SETSLOT NODE on {dst}: {e}"));
                demoted.retain(|&s| s != slots[i]);
                if !free.contains(&slots[i]) {
                    reopen.push(slots[i]);
                }
            }
        }
        self.reopen(src, (src_id, dst_id), &reopen).await;
        Commit { results, demoted }
    }

    /// Of `slots`, whose commit their source refused, those the source no longer serves
    /// and nobody in its shard claims: the source is a replica now, and the master it
    /// follows does not own them. Empty when either cannot be read.
    async fn unclaimed_by_successor(&self, src: &str, slots: &[u16]) -> Vec<u16> {
        if slots.is_empty() {
            return Vec::new();
        }
        let Ok(view) = self.nodes.cluster_nodes(src).await else { return Vec::new() };
        let Some(me) = view.iter().find(|n| n.is_myself()).filter(|me| !me.is_master()) else { return Vec::new() };
        let Some(successor) = me.master_id.as_deref().and_then(|id| view.iter().find(|n| n.id == id)) else {
            return Vec::new();
        };
        let Ok(theirs) = self.nodes.cluster_nodes(&successor.addr).await else { return Vec::new() };
        let Some(claims) = theirs.iter().find(|n| n.is_myself() && n.is_master()) else { return Vec::new() };
        slots.iter().copied().filter(|&s| !claims.owns(s)).collect()
    }

    /// Gives `slots`, committed on the source but refused by the target, back to the
    /// source and opens them again towards the target: the keys are on the target, and
    /// the run hands them back.
    async fn reopen(&self, src: &str, (src_id, dst_id): (&str, &str), slots: &[u16]) {
        let back = self.nodes.setslots(src, slots, &["NODE", src_id]).await;
        let mut owned = Vec::new();
        for (&slot, r) in slots.iter().zip(back) {
            match r {
                Ok(()) => owned.push(slot),
                Err(e) => {
                    warn!(slot, node = %src, cause = %e, "the source did not take the slot back; repair settles it")
                }
            }
        }
        for (&slot, r) in owned.iter().zip(self.nodes.setslots(src, &owned, &["MIGRATING", dst_id]).await) {
            if let Err(e) = r {
                warn!(slot, node = %src, cause = %e, "the slot was not opened again on the source; repair settles it");
            }
        }
    }

    /// A slot no master claims, one live master importing it: its source took the
    /// commit and the target did not yet (the source is committed first;
    /// a crash or a failover came between). The source had given up every key, so the
    /// importer holds the slot: it is committed there (its epoch bump claims it), told to
    /// the others, and the flags elsewhere cleared. None when that is not the slot's state.
    pub(super) async fn commit_unclaimed(
        &self,
        topo: &Topology,
        slot: u16,
        importing: &[(String, String)],
        dry_run: bool,
    ) -> Result<Option<String>, String> {
        if topo.myself.values().any(|me| me.is_master() && me.owns(slot)) {
            return Ok(None);
        }
        let live: Vec<&String> = importing
            .iter()
            .map(|(a, _)| a)
            .filter(|a| topo.master_by_addr(a).is_some_and(|m| !m.is_failed()))
            .collect();
        let [importer] = live[..] else { return Ok(None) };
        let line = format!("slot {slot}: committed on {importer}, which imported it while no master claimed it");
        if dry_run {
            return Ok(Some(line));
        }
        let id = self.nodes.node_id_of(topo, importer).map_err(|e| e.to_string())?;
        self.nodes
            .setslot(importer, slot, &["NODE", &id])
            .await
            .map_err(|e| format!("SETSLOT NODE on {importer}: {e}"))?;
        for m in topo.masters.iter().filter(|m| m.addr != *importer && !m.is_failed()) {
            if let Err(e) = self.nodes.setslot(&m.addr, slot, &["NODE", &id]).await {
                warn!(slot, node = %m.addr, cause = %e, "a master did not take the new owner; gossip will carry it");
            }
        }
        Ok(Some(line))
    }
}
