//! Placement's role changes on the live cluster: `CLUSTER FAILOVER` on an in-sync
//! replica (the coordinated one, never TAKEOVER) and `CLUSTER REPLICATE` of a replica
//! onto another master. Each is checked against the cluster as it is now (the plan came
//! from the run's snapshot), passes the fence right before it is sent, and is waited for
//! within a bound; a refusal or a timeout is reported in the server's words.
//!
//! Owns: those checks, the commands and the waits. Does not own: which changes are
//! wanted (the placement planner) or their order and budget (the run).

use std::time::{Duration, Instant};

use tracing::info;

use super::RedisCluster;
use super::stands::{ReplicaInfo, in_sync};
use super::topology::NodeLine;
use crate::cluster::{ClusterError, Fence, RoleDone};
use crate::plan::placement::RoleChange;

/// A failover gets as long as a handoff does.
pub const FAILOVER_WITHIN: Duration = Duration::from_secs(15);
/// A re-pointed replica gets this, plus a second per [`SYNC_BYTES_PER_SECOND`] of its new
/// master's data, to finish its full sync.
const REPLICATE_WITHIN: Duration = Duration::from_secs(30);
const SYNC_BYTES_PER_SECOND: u64 = 20 << 20;
const POLL: Duration = Duration::from_millis(100);

fn refused(message: String) -> ClusterError {
    ClusterError::Role(message)
}

impl RedisCluster {
    pub(super) async fn role_change<F: Fence>(&self, change: &RoleChange, fence: &F) -> Result<RoleDone, ClusterError> {
        let started = Instant::now();
        let message = match change {
            RoleChange::Failover { node, master, .. } => self.promote(node, master, fence).await,
            RoleChange::Replicate { node, from_master, to_master, bytes, .. } => {
                self.repoint(node, from_master, to_master, *bytes, fence).await
            }
        }?;
        Ok(RoleDone { seconds: started.elapsed().as_secs_f64(), message })
    }

    /// The node `id` as the cluster sees it now, with its own view.
    async fn node_now(&self, id: &str) -> Result<(NodeLine, Vec<NodeLine>), ClusterError> {
        match self.nodes.node_named(id).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(refused(format!("node {id} is no longer in the cluster"))),
            Err(e) => Err(ClusterError::Connect(e)),
        }
    }

    async fn replica_info(&self, addr: &str) -> Result<ReplicaInfo, ClusterError> {
        let text: String =
            self.nodes.conns.query(addr, redis::cmd("INFO").arg("replication")).await.map_err(ClusterError::Connect)?;
        Ok(ReplicaInfo::parse(&text))
    }

    async fn promote<F: Fence>(&self, node: &str, master: &str, fence: &F) -> Result<String, ClusterError> {
        let (me, _) = self.node_now(master).await?;
        let (r, _) = self.node_now(node).await?;
        if !me.is_master() || r.master_id.as_deref() != Some(me.id.as_str()) || r.is_master() {
            return Err(refused(format!("{} is no longer a replica of master {}: left as it is", r.addr, me.addr)));
        }
        self.refuse_open_slots(&me).await.map_err(|e| refused(e.to_string()))?;
        let offset = self.nodes.node_info(&me.addr).await.map_err(ClusterError::Connect)?.repl_offset;
        let seen = self.replica_info(&r.addr).await?;
        if !in_sync(&seen, Some(offset), self.max_lag_bytes) {
            return Err(refused(format!(
                "{} is not in sync with {} (link up: {}, {} bytes behind; topology.max-lag-bytes {})",
                r.addr,
                me.addr,
                seen.link_up,
                offset.saturating_sub(seen.offset),
                self.max_lag_bytes
            )));
        }
        fence.check().await.map_err(ClusterError::RoleFenced)?;
        info!(master = %me.addr, replica = %r.addr, "placement: CLUSTER FAILOVER");
        let deadline = tokio::time::Instant::now() + FAILOVER_WITHIN;
        self.fail_over(&me.addr, &r.addr, deadline, FAILOVER_WITHIN).await.map_err(|e| refused(e.to_string()))?;
        Ok(format!("{} took the master role from {} (CLUSTER FAILOVER)", r.addr, me.addr))
    }

    async fn repoint<F: Fence>(
        &self,
        node: &str,
        from: &str,
        to: &str,
        bytes: u64,
        fence: &F,
    ) -> Result<String, ClusterError> {
        let (r, _) = self.node_now(node).await?;
        let (target, _) = self.node_now(to).await?;
        if r.is_master() || r.master_id.as_deref() != Some(from) {
            return Err(refused(format!("{} is no longer a replica of {from}: left as it is", r.addr)));
        }
        if !target.is_master() || target.is_failed() {
            return Err(refused(format!("{} is no longer a live master: {} stays where it is", target.addr, r.addr)));
        }
        fence.check().await.map_err(ClusterError::RoleFenced)?;
        info!(replica = %r.addr, to = %target.addr, bytes, "placement: CLUSTER REPLICATE");
        self.nodes
            .conns
            .query::<()>(&r.addr, redis::cmd("CLUSTER").arg("REPLICATE").arg(&target.id))
            .await
            .map_err(|e| refused(format!("CLUSTER REPLICATE {} on {}: {e}", target.addr, r.addr)))?;
        let within = REPLICATE_WITHIN + Duration::from_secs(bytes / SYNC_BYTES_PER_SECOND);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.replica_info(&r.addr).await?;
            if seen.master.as_deref() == Some(target.addr.as_str()) && seen.link_up {
                return Ok(format!("{} follows {} now, in sync", r.addr, target.addr));
            }
            if tokio::time::Instant::now() + POLL >= deadline {
                return Err(refused(format!(
                    "{} was told to follow {} but its link is not up within {}s: it goes on syncing; the next run sees it",
                    r.addr,
                    target.addr,
                    within.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
