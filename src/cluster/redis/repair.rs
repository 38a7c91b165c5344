//! Closing what a crash left open: slots in MIGRATING/IMPORTING are finished when keys
//! reached the target (so none is stranded), otherwise handed back to their owner.
//!
//! Owns: deciding finish or roll back per open slot. Does not own: the protocol steps
//! ([`super::legacy`]).

use tracing::info;

use super::legacy::SlotMove;
use super::{NoPace, RedisCluster};
use crate::cluster::ClusterError;

impl RedisCluster {
    /// Closes every slot left open. Returns one line per slot.
    pub(super) async fn repair_open(&self) -> Result<Vec<String>, ClusterError> {
        let topo = self.topology().await?;
        // slot -> (source addr, target addr), from either side's flags.
        let mut open: std::collections::BTreeMap<u16, (Option<String>, Option<String>)> = Default::default();
        for m in &topo.masters {
            let Some(me) = topo.myself.get(&m.addr) else {
                continue;
            };
            for (slot, to) in &me.migrating {
                let e = open.entry(*slot).or_default();
                e.0 = Some(m.addr.clone());
                if e.1.is_none() {
                    e.1 = topo.master_by_id(to).map(|t| t.addr.clone());
                }
            }
            for (slot, from) in &me.importing {
                let e = open.entry(*slot).or_default();
                e.1 = Some(m.addr.clone());
                if e.0.is_none() {
                    e.0 = topo.master_by_id(from).map(|t| t.addr.clone());
                }
            }
        }
        let mut lines = Vec::new();
        for (slot, (src, dst)) in open {
            let rep = |message: String| ClusterError::Repair { bucket: slot as u64, message };
            let (Some(src), Some(dst)) = (src, dst) else {
                return Err(rep("open slot names a node that is not a known master".into()));
            };
            let src_keys = self.count_keys(&src, slot).await.map_err(rep)?;
            let dst_keys = self.count_keys(&dst, slot).await.map_err(rep)?;
            let dst_owns = topo.myself.get(&dst).is_some_and(|me| me.owns(slot));
            if dst_keys > 0 || dst_owns {
                // Keys already sit on the target (or it took ownership): finish, so no key
                // is stranded on a node that does not own its slot.
                let stats = self
                    .finish(&topo, SlotMove { slot, src: &src, dst: &dst, resume: true, estimate: 0 }, &NoPace)
                    .await
                    .map_err(|e| rep(e.to_string()))?;
                let line = format!(
                    "slot {slot}: finished the move {src} -> {dst} ({src_keys} keys were left on the source, {} moved now)",
                    stats.keys
                );
                info!(slot, from = %src, to = %dst, "{line}");
                lines.push(line);
            } else {
                // Nothing reached the target: return the slot to its owner.
                let _ = self.setslot(&dst, slot, &["STABLE"]).await;
                self.setslot(&src, slot, &["STABLE"]).await.map_err(rep)?;
                let line = format!("slot {slot}: rolled back to {src} ({src_keys} keys, none had moved to {dst})");
                info!(slot, owner = %src, "{line}");
                lines.push(line);
            }
        }
        Ok(lines)
    }
}
