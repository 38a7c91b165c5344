//! Replicas that still show a settled slot open.
//!
//! Valkey replicates `CLUSTER SETSLOT` to the replicas that are online when it runs, and a
//! master demoted by failover rejoins its shard as a replica keeping the flags it had. A
//! STABLE its new master ran before it caught up never reaches it, and once promoted it
//! would serve the slot as still moving (and every later run would see a move nobody
//! recorded). Redis closes every slot of a node that turns replica, so there this finds
//! nothing.
//!
//! Owns: finding such replicas and sending the STABLE again through their master until
//! they follow or the wait ends. Does not own: settling the masters ([`super::repair`]).

use std::time::{Duration, Instant};

use tracing::info;

use super::RedisCluster;
use super::topology::Topology;

/// How long a repair waits for a replica to take its master's STABLE: a demoted master
/// resynchronises within about a second on loopback, a busy one in a few.
const FOLLOW_WAIT: Duration = Duration::from_secs(15);

impl RedisCluster {
    /// For each slot of `slots` (open slots this repair settled, or intents of ours),
    /// the replicas that still show it migrating or importing get the STABLE again through
    /// their master, which replicates it once they are online. Returns (slot, why) for
    /// each slot some replica still shows open when the wait ends.
    pub(super) async fn replicas_follow(&self, topo: &Topology, slots: &[u16]) -> Vec<(u16, String)> {
        if slots.is_empty() {
            return Vec::new();
        }
        let deadline = Instant::now() + FOLLOW_WAIT;
        loop {
            let stale = self.stale_replicas(topo, slots).await;
            if stale.is_empty() {
                return Vec::new();
            }
            if Instant::now() >= deadline {
                return stale
                    .into_iter()
                    .map(|(slot, replica, master)| {
                        (slot, format!("replica {replica} still shows slot {slot} open after {FOLLOW_WAIT:?} of STABLE sent through its master {master}: it takes it once it is back in sync (`autobalancer repair --slot {slot}` sends it again)"))
                    })
                    .collect();
            }
            for (slot, replica, master) in &stale {
                info!(slot, replica = %replica, "a replica still shows the slot open; sending STABLE through its master {master}");
                // A master whose replica is not online yet skips the replication: the
                // next round sends it again.
                let _ = self.setslot(master, *slot, &["STABLE"]).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// (slot, replica, its master) for each replica whose own view shows a slot of
    /// `slots` open while the master it follows has it stable. A replica that does not
    /// answer is skipped: it reads its state again when it rejoins.
    async fn stale_replicas(&self, topo: &Topology, slots: &[u16]) -> Vec<(u16, String, String)> {
        let mut out = Vec::new();
        for r in &topo.replicas {
            let Ok(view) = self.cluster_nodes(&r.addr).await else { continue };
            let Some(me) = view.iter().find(|n| n.is_myself()) else { continue };
            if me.is_master() {
                continue;
            }
            let Some(master) = me.master_id.as_deref().and_then(|id| topo.master_by_id(id)) else { continue };
            let open = |s: u16| me.migrating.iter().chain(&me.importing).any(|(o, _)| *o == s);
            let master_open = |s: u16| {
                topo.myself
                    .get(&master.addr)
                    .is_some_and(|m| m.migrating.iter().chain(&m.importing).any(|(o, _)| *o == s))
            };
            for &s in slots.iter().filter(|&&s| open(s) && !master_open(s)) {
                out.push((s, r.addr.clone(), master.addr.clone()));
            }
        }
        out
    }
}
