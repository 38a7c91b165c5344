//! Replicas following their master: that they hold the data moved into it, and that
//! they do not still show a settled slot open.
//!
//! A move's data reaches the target's replicas through the target's replication stream,
//! asynchronously. Until they hold it, a failover of the target (a crash, a TAKEOVER)
//! loses it, although its source already dropped it. So each mover waits, once a slot's
//! data is on the target, until the target's replicas acknowledge it: WAIT counts the
//! writes of the calling connection, and MIGRATE and an atomic job write through
//! connections of the server's own, so the waiting connection writes (and deletes) a
//! marker key in a slot the target imports or owns, then waits: the stream is ordered,
//! so the marker's acknowledgement covers the data before it. A replica that does not
//! acknowledge within the wait leaves the move done and reported with why
//! ([`crate::cluster::MoveStats::unreplicated`]), and the run moves nothing more.
//!
//! Valkey replicates `CLUSTER SETSLOT` to the replicas that are online when it runs, and a
//! master demoted by failover rejoins its shard as a replica keeping the flags it had. A
//! STABLE its new master ran before it caught up never reaches it, and once promoted it
//! would serve the slot as still moving (and every later run would see a move nobody
//! recorded). Redis closes every slot of a node that turns replica, so there this finds
//! nothing.
//!
//! Owns: the wait for the target's replicas and its marker key; finding replicas that
//! show a settled slot open and sending the STABLE again through their master until
//! they follow or the wait ends. Does not own: settling the masters ([`super::repair`]).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::nodes::Nodes;
use super::topology::Topology;
use crate::cluster::ClusterError;

/// How long a repair waits for a replica to take its master's STABLE: a demoted master
/// resynchronises within about a second on loopback, a busy one in a few.
const FOLLOW_WAIT: Duration = Duration::from_secs(15);
/// How long the legacy mover waits for the target's replicas after each batch; a batch
/// not acknowledged in time is confirmed with [`HOLD_WAIT`] once the slot is drained.
pub(super) const BATCH_WAIT: Duration = Duration::from_secs(2);
/// How long a mover waits for the target's replicas to hold a moved slot's data before
/// it reports them behind: a replica that is following takes a slot's data in well
/// under a second on loopback; a few seconds cover a busy one.
pub(super) const HOLD_WAIT: Duration = Duration::from_secs(10);
/// A replica the primary lists online with no acknowledgement for this many seconds is
/// stuck: a following one acknowledges every second.
const STUCK_LAG_SECONDS: u64 = 3;
/// How long a commit waits for its target to see the epoch of its source's failover.
const EPOCH_WAIT: Duration = Duration::from_secs(5);
/// How long a stuck replica may take to answer the reset of its link.
const RESET_WAIT: Duration = Duration::from_secs(2);

impl Nodes {
    /// Whether the `replicas` replicas of `dst` hold everything `dst` held when this was
    /// called, waiting up to `wait`. `slot` is one `dst` imports or owns, for the marker.
    /// None when they do (or there are none); else why not, in a sentence.
    pub(super) async fn replicas_hold(&self, slot: u16, dst: &str, replicas: usize, wait: Duration) -> Option<String> {
        if replicas == 0 {
            return None;
        }
        // None: acknowledged, nothing more to do.
        let why = self.replicas_ack(slot, dst, replicas, wait).await?;
        // A replica may sit on a link that delivers nothing it applies (Valkey 9 after
        // a protocol error from its primary: flagged to close, never closed, its acks
        // dropped) until its primary times it out after `repl-timeout`. Its link is
        // reset now, which it would be then anyway, and the wait tried once more.
        let stuck = self.stuck_replicas(dst).await;
        if stuck.is_empty() {
            return Some(why);
        }
        warn!(primary = %dst, slot, replicas = %stuck.join(", "), "a replica of the target has acknowledged nothing for {STUCK_LAG_SECONDS}+ s: resetting its link (CLIENT KILL TYPE master) so that it resyncs");
        self.reset_links(&stuck).await;
        self.replicas_ack(slot, dst, replicas, wait).await.map(|why| {
            format!("{why}; {} replica link(s) reset and waited for again: {}", stuck.len(), stuck.join(", "))
        })
    }

    /// Resets the link of each replica of `replicas` to its primary: it resyncs.
    async fn reset_links(&self, replicas: &[String]) {
        for r in replicas {
            // Bounded: a replica frozen outright answers nothing.
            let reset = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("master").to_owned();
            match tokio::time::timeout(RESET_WAIT, self.conns.query::<u64>(r, &reset)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(replica = %r, cause = %e, "could not reset the replica's link"),
                Err(_) => warn!(replica = %r, "the replica did not answer CLIENT KILL within {RESET_WAIT:?}"),
            }
        }
    }

    /// The sidecar's watch over its own node, outside any run: when it is a master, the
    /// replicas it lists online that have acknowledged nothing for [`STUCK_LAG_SECONDS`]
    /// have their link reset, and are returned. A mover resets them after its own moves,
    /// but a holder that dies (or is frozen) right after an atomic job leaves the broken
    /// replica to be promoted without the job's data (nemesis, Valkey seed 62: the
    /// holder killed 1 s after a job into a master whose replica's stream broke 1 ms
    /// after the job; that replica was elected 10 s later and the imported keys lost).
    /// `known`: the node's address as last found, which the watch keeps; found in one
    /// seed's view when None (an address does not change with a role).
    pub async fn reset_stuck_replicas(
        &self,
        member: &str,
        known: &mut Option<String>,
    ) -> Result<Vec<String>, ClusterError> {
        let addr = match known {
            Some(a) => a.clone(),
            None => {
                let seen = self.seed_nodes().await.map_err(ClusterError::Snapshot)?;
                let Some(a) = seen.into_iter().find(|n| n.id == member).map(|n| n.addr) else { return Ok(Vec::new()) };
                known.insert(a).clone()
            }
        };
        let stuck = self.stuck_replicas(&addr).await;
        if !stuck.is_empty() {
            warn!(primary = %addr, replicas = %stuck.join(", "), "a replica has acknowledged nothing for {STUCK_LAG_SECONDS}+ s: resetting its link (CLIENT KILL TYPE master) so that it resyncs");
            self.reset_links(&stuck).await;
        }
        Ok(stuck)
    }

    /// The replicas `dst` lists as online whose last acknowledgement is
    /// [`STUCK_LAG_SECONDS`] old or older (a following replica acks every second).
    async fn stuck_replicas(&self, dst: &str) -> Vec<String> {
        let Ok(info) = self.conns.query::<String>(dst, redis::cmd("INFO").arg("replication")).await else {
            return Vec::new();
        };
        stuck_in(&info)
    }

    /// WAIT for `replicas` replicas of `dst` behind a marker in `slot`: None when they
    /// acknowledged it within `wait`, else why not.
    async fn replicas_ack(&self, slot: u16, dst: &str, replicas: usize, wait: Duration) -> Option<String> {
        let marker = marker_key(slot);
        let mut p = redis::pipe();
        p.cmd("ASKING").ignore().cmd("SET").arg(&marker).arg("").arg("PX").arg(60_000).ignore();
        p.cmd("ASKING").ignore().cmd("DEL").arg(&marker).ignore();
        p.cmd("WAIT").arg(replicas).arg(wait.as_millis() as u64);
        match self.conns.pipeline::<u64>(dst, &p).await {
            Ok(acked) if acked.first().copied().unwrap_or(0) as usize >= replicas => None,
            Ok(acked) => Some(format!(
                "{} of the {replicas} replica(s) of {dst} acknowledged the data moved into slot {slot} within {wait:?}: a failover of {dst} now would lose it",
                acked.first().copied().unwrap_or(0)
            )),
            Err(e) => Some(format!("could not wait for the replicas of {dst} (slot {slot}): {e}")),
        }
    }

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

    /// Between a commit's two steps, the source's and the target's ([`super::commit`]):
    /// when `src` is no longer a master (failed over since its slots were opened), waits (at most [`EPOCH_WAIT`]) until `dst` has seen
    /// the epoch of that failover, as `src` has. The promoted replica claims the slots its
    /// master held under that epoch, and `dst`'s commit bumps its own past the highest
    /// it knows: below the failover's, the claim would win and `dst` would drop the
    /// keys it holds for those slots, as Redis and Valkey do with slots lost to a newer
    /// epoch (`tests/safety.rs::a_source_demoted_at_the_commit_leaves_no_slot_open`
    /// lost 4 keys on Valkey 1 time in 14 without this wait).
    pub(super) async fn epoch_past_demotion(&self, src: &str, dst: &str) {
        if !self.demoted(src).await {
            return;
        }
        let Some(wanted) = self.current_epoch(src).await else { return };
        let deadline = Instant::now() + EPOCH_WAIT;
        loop {
            if self.current_epoch(dst).await.is_some_and(|e| e >= wanted) {
                return;
            }
            if Instant::now() >= deadline {
                warn!(source = %src, target = %dst, epoch = wanted, "the target has not seen the epoch of its source's failover; committing anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `addr` answers ROLE as anything but a master (a node that does not answer
    /// is taken to be one still).
    pub(super) async fn demoted(&self, addr: &str) -> bool {
        let role = self.conns.query::<Vec<redis::Value>>(addr, &redis::cmd("ROLE")).await;
        match role.as_deref() {
            Ok([redis::Value::BulkString(r), ..]) => r.as_slice() != b"master",
            _ => false,
        }
    }

    /// `cluster_current_epoch` of CLUSTER INFO on `addr`.
    async fn current_epoch(&self, addr: &str) -> Option<u64> {
        let info = self.conns.query::<String>(addr, redis::cmd("CLUSTER").arg("INFO")).await.ok()?;
        info.lines().find_map(|l| l.strip_prefix("cluster_current_epoch:")).and_then(|v| v.trim().parse().ok())
    }

    /// After a commit whose source refused its SETSLOT NODE, or took it and was a replica
    /// by the group's end (`slots`, now `dst`'s): the source was demoted mid-move. A
    /// commit it took while it still believed itself master reached no replica that was
    /// not online. Its replica, promoted since and so not among the masters the commit
    /// told, may show the slots migrating (Valkey replicates SETSLOT), and the demoted
    /// source keeps its flags as a replica; either would serve the slots as still moving.
    /// Every master but `dst`, read afresh, is told the new owner (a node that loses a
    /// slot drops its MIGRATING flag), and replicas still showing them get their
    /// master's STABLE ([`Self::replicas_follow`]); what stays is logged, for
    /// `repair --slot`. Redis closes a demoted node's slots: there this finds nothing.
    pub(super) async fn follow_demoted(&self, dst: &str, dst_id: &str, slots: &[u16]) {
        if slots.is_empty() {
            return;
        }
        let topo = match self.topology().await {
            Ok(t) => t,
            Err(e) => {
                warn!(cause = %e, "could not read the topology after a demoted source's commit");
                return;
            }
        };
        let others = topo.masters.iter().filter(|m| m.addr != dst && !m.is_failed());
        futures::future::join_all(others.map(|m| async move {
            for (slot, r) in slots.iter().zip(self.setslots(&m.addr, slots, &["NODE", dst_id]).await) {
                if let Err(e) = r {
                    warn!(slot, node = %m.addr, cause = %e, "a master did not take the new owner after its source was demoted");
                }
            }
        }))
        .await;
        for (slot, why) in self.replicas_follow(&topo, slots).await {
            warn!(slot, "{why}");
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

/// The `ip:port` of each replica an INFO replication lists online with an
/// acknowledgement [`STUCK_LAG_SECONDS`] old or older.
fn stuck_in(info: &str) -> Vec<String> {
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains(":ip="))
        .filter_map(|l| {
            let field = |k: &str| l.trim().split([':', ',']).find_map(|f| f.strip_prefix(k)?.strip_prefix('='));
            let lag: u64 = field("lag")?.parse().ok()?;
            let stuck = field("state")? == "online" && lag >= STUCK_LAG_SECONDS;
            stuck.then_some(format!("{}:{}", field("ip")?, field("port")?))
        })
        .collect()
}

/// A key name in `slot`, for the replica wait's marker.
fn marker_key(slot: u16) -> String {
    format!("autobalancer:wait:{{{}}}", super::topology::tag_in(slot))
}

#[cfg(test)]
mod tests {
    #[test]
    fn marker_keys_land_in_their_slot() {
        for slot in [0u16, 1, 866, 12182, 16383] {
            let k = super::marker_key(slot);
            let tag = &k[k.find('{').unwrap() + 1..k.len() - 1];
            assert_eq!(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384, slot, "{k}");
        }
        // The hash is the cluster's own (CLUSTER KEYSLOT's documented answers).
        assert_eq!(crc16::State::<crc16::XMODEM>::calculate(b"foo") % 16384, 12182);
        assert_eq!(crc16::State::<crc16::XMODEM>::calculate(b"somekey") % 16384, 11058);
    }

    #[test]
    fn a_replica_online_without_acks_for_seconds_is_stuck() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:3\r\n\
            slave0:ip=127.0.0.1,port=7001,state=online,offset=900,lag=41,type=replica\r\n\
            slave1:ip=127.0.0.1,port=7002,state=online,offset=5000,lag=0\r\n\
            slave2:ip=127.0.0.1,port=7003,state=wait_bgsave,offset=0,lag=9\r\n\
            master_repl_offset:5000\r\n";
        assert_eq!(
            super::stuck_in(info),
            vec!["127.0.0.1:7001".to_string()],
            "lagging but online; a resync is not stuck"
        );
    }
}
