//! What a sidecar asks of its backend outside runs: a handoff before a restart, its
//! member's sizes and traffic counters, the watch over its replicas, and the size cache.
//!
//! Owns: those calls on [`AnyCluster`]. Does not own: their work (each backend's).

use super::Cluster;
use super::{AnyCluster, ClusterError, Handoff, HandoffError, SizeTable};

impl AnyCluster {
    /// Hands the master role of `member`'s node to its in-sync replica (rolling restarts);
    /// nothing to do beside a replica. Waits at most `within` for the roles to swap.
    pub async fn handoff(&self, member: &str, within: std::time::Duration) -> Result<Handoff, HandoffError> {
        match self {
            AnyCluster::Redis(c) => c.handoff(member, within).await,
            AnyCluster::File(_) => Err(HandoffError::Unsupported),
        }
    }

    /// Measures the buckets `member` owns (what the size cache cannot vouch for), for its
    /// sidecar to publish. None: the member owns no buckets now (a replica), or the
    /// backend measures nothing (a snapshot file).
    pub async fn measure_member(&self, member: &str) -> Result<Option<(SizeTable, u64)>, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.measure_member(member).await,
            AnyCluster::File(_) => Ok(None),
        }
    }

    /// One reading of traffic counters: every master's, or only `member`'s. A snapshot
    /// file measures none.
    pub async fn read_traffic(&self, member: Option<&str>) -> Result<Vec<crate::traffic::Sample>, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.read_traffic(member).await,
            AnyCluster::File(_) => Ok(Vec::new()),
        }
    }

    /// Resets the links of the replicas of `member`'s node that its master lists online
    /// and that acknowledge nothing (the sidecar's watch): the replicas reset. `known`:
    /// the node's address as the watch last found it (found now when None).
    pub async fn reset_stuck_replicas(
        &self,
        member: &str,
        known: &mut Option<String>,
    ) -> Result<Vec<String>, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.reset_stuck_replicas(member, known).await,
            AnyCluster::File(_) => Ok(Vec::new()),
        }
    }

    /// Keeps the size cache warm for every member (a standalone sidecar, the only one of
    /// its cluster, measures them all). The keys measured now.
    pub async fn warm_sizes(&self) -> Result<u64, ClusterError> {
        match self {
            AnyCluster::Redis(c) => {
                let snap = c.snapshot().await?;
                Ok(snap.observed.sizing.map_or(0, |s| s.keys_measured_now))
            }
            AnyCluster::File(_) => Ok(0),
        }
    }

    /// Size tables other sidecars published, for the next snapshots to use.
    pub fn adopt_sizes(&self, tables: Vec<SizeTable>) {
        if let AnyCluster::Redis(c) = self {
            c.adopt_sizes(tables);
        }
    }
}
