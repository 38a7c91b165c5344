//! Stray keys: keys sitting on a master that does not own their slot. A failover of the
//! target mid-move leaves them (the promoted replica has the keys already moved but not
//! the IMPORTING flag), and clients read nil for them until they reach the owner.
//!
//! Each stray slot is returned to its owner: the holder is set IMPORTING so that ASKING
//! reaches the keys, they MIGRATE to the owner without REPLACE, and a key the owner
//! already holds is replaced only when both values are identical. A different value is
//! set aside under another name ([`super::aside`]: the owner's is the one clients read)
//! and goes to the owner under that name. The holder's flag is cleared in every case.
//!
//! Owns: finding stray slots and returning them. Does not own: open slots of a move
//! ([`super::repair`]).

use std::collections::{HashMap, HashSet};

use tracing::{info, warn};

use super::capabilities::Capabilities;
use super::legacy::KeyPair;
use super::repair::Repair;
use super::topology::Topology;
use super::{MasterReading, SLOTS};
use crate::cluster::{RepairOptions, RepairReport, SetAside};

impl Repair<'_> {
    /// Slots `addr` holds keys of without owning them (or importing them): (slot, keys);
    /// with what was read of the master on the way, for the snapshot after repair.
    ///
    /// A node whose key count (INFO keyspace) is no more than the keys in the slots it
    /// owns or imports holds no stray key: the other slots, most of the 16384, are then
    /// not counted one by one. A key written to its slots between the two readings can
    /// hide as many stray keys this time; the next run looks again.
    pub(super) async fn stray_slots(
        &self,
        topo: &Topology,
        addr: &str,
    ) -> Result<(Vec<(u16, u64)>, MasterReading), String> {
        let me = topo.masters.iter().position(|m| m.addr == addr);
        let importing: HashSet<u16> =
            topo.myself.get(addr).map(|n| n.importing.iter().map(|(s, _)| *s).collect()).unwrap_or_default();
        let (mine, others): (Vec<u16>, Vec<u16>) =
            (0..SLOTS as u16).partition(|s| topo.owner[*s as usize] == me || importing.contains(s));
        let info = self.nodes.node_info(addr).await?;
        let counts =
            self.sizer.key_counts(&self.nodes.conns, addr, &mine, Capabilities::of([&info]).slot_stats).await?;
        let held: u64 = counts.iter().sum();
        let reading = MasterReading { counts: mine.into_iter().zip(counts).collect(), info };
        if reading.info.keys <= held {
            return Ok((Vec::new(), reading));
        }
        // SLOT-STATS answers for the slots a node owns; these it does not.
        let counts = self.sizer.key_counts(&self.nodes.conns, addr, &others, false).await?;
        Ok((others.into_iter().zip(counts).filter(|(_, n)| *n > 0).collect(), reading))
    }

    /// Returns every stray slot to its owner (skipping `skip`: slots someone else moves).
    /// Returns what was read of each master that answered.
    pub(super) async fn return_strays(
        &self,
        topo: &Topology,
        opts: &RepairOptions,
        skip: &[u16],
        report: &mut RepairReport,
    ) -> HashMap<String, MasterReading> {
        let mut readings = HashMap::new();
        let live: Vec<_> = topo.masters.iter().filter(|m| !m.is_failed()).collect();
        let found = futures::future::join_all(live.iter().map(|m| self.stray_slots(topo, &m.addr))).await;
        for (m, strays) in live.into_iter().zip(found) {
            let strays = match strays {
                Ok((s, reading)) => {
                    readings.insert(m.addr.clone(), reading);
                    s
                }
                Err(e) => {
                    warn!(member = %m.addr, cause = %e, "could not look for stray keys");
                    continue;
                }
            };
            for (slot, keys) in strays {
                if skip.contains(&slot) || opts.only.is_some_and(|o| o != slot as u64) {
                    continue;
                }
                let Some(owner) = topo.owner[slot as usize].map(|i| topo.masters[i].clone()) else {
                    report.failed.push((slot as u64, format!("{keys} stray key(s) on {} and no owner", m.addr)));
                    continue;
                };
                if opts.dry_run {
                    report.settled.push(format!(
                        "slot {slot}: would return {keys} stray key(s) from {} to {}",
                        m.addr, owner.addr
                    ));
                    continue;
                }
                match self.return_stray(slot, &m.addr, &owner.addr, &owner.id, &mut report.set_aside).await {
                    Ok(()) => {
                        let line =
                            format!("slot {slot}: returned {keys} stray key(s) from {} to {}", m.addr, owner.addr);
                        info!(slot, from = %m.addr, to = %owner.addr, "{line}");
                        report.settled.push(line);
                    }
                    Err(e) => report.failed.push((slot as u64, format!("returning stray keys from {}: {e}", m.addr))),
                }
            }
        }
        readings
    }

    /// Moves the keys of `slot` from `holder` to `owner`; a key the owner holds with
    /// another value goes under its aside name (recorded in `aside`).
    async fn return_stray(
        &self,
        slot: u16,
        holder: &str,
        owner: &str,
        owner_id: &str,
        aside: &mut Vec<SetAside>,
    ) -> Result<(), String> {
        self.nodes
            .setslot(holder, slot, &["IMPORTING", owner_id])
            .await
            .map_err(|e| format!("IMPORTING on {holder}: {e}"))?;
        let result = self.migrate_strays(slot, holder, owner, aside).await;
        let stable = self.nodes.setslot(holder, slot, &["STABLE"]).await;
        result?;
        stable.map_err(|e| format!("STABLE on {holder}: {e}"))
    }

    async fn migrate_strays(
        &self,
        slot: u16,
        holder: &str,
        owner: &str,
        aside: &mut Vec<SetAside>,
    ) -> Result<(), String> {
        loop {
            let list = redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(self.legacy.opts.batch_keys).clone();
            let keys: Vec<Vec<u8>> = self.nodes.conns.query(holder, &list).await?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut p = redis::pipe();
            p.cmd("ASKING").ignore().add_command(self.legacy.migrate_cmd(owner, &keys, false)).ignore();
            let Err(e) = self.nodes.conns.pipeline_as::<()>(holder, &p).await else { continue };
            if !e.contains("BUSYKEY") {
                return Err(e);
            }
            for k in &keys {
                match self.legacy.compare_key(holder, owner, k, true).await? {
                    KeyPair::Gone => {}
                    KeyPair::OnlyHere => self.legacy.migrate_one(holder, owner, k, false, true).await?,
                    KeyPair::Same => self.legacy.migrate_one(holder, owner, k, true, true).await?,
                    // Listed again under its new name, it goes to the owner next round.
                    KeyPair::Different => aside.extend(self.nodes.set_aside(slot, holder, k).await?),
                }
            }
        }
    }
}
