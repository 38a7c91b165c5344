//! The Redis Cluster and Valkey backend: masters are members, the 16384 hash slots are
//! buckets.
//!
//! Layout: [`conn`] connections and AUTH; [`topology`] CLUSTER NODES, ownership, health;
//! [`sizing`] slot sizes in bytes; [`legacy`] the SETSLOT + MIGRATE mover; [`repair`]
//! closing slots a crash left open. This file wires them into the backend-neutral
//! [`Cluster`] trait and builds the snapshot. Does not own: which slots move.

mod conn;
mod legacy;
mod observe;
mod repair;
mod sizing;
mod stray;
mod topology;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::debug;

pub use sizing::{Mode as SizingMode, SizingOptions};
pub use topology::{NodeInfo, NodeLine, parse_nodes};

use super::{Cluster, ClusterError, MoveStats, Pace, RepairOptions, RepairReport};
use crate::model::ClusterSnapshot;
use crate::plan::Move;
use conn::{Auth, Conns};
use legacy::SlotMove;
use sizing::SizeCache;
use topology::Topology;

pub const SLOTS: usize = 16384;
/// Commands per pipeline round trip.
const PIPELINE: usize = 2048;

pub struct RedisCluster {
    cluster_id: String,
    seeds: Vec<String>,
    conns: Conns,
    sizing: SizingOptions,
    /// Slot sizes measured so far; a slot keeps its entry when it moves.
    sizes: SizeCache,
    critical_percent: u32,
    batch_keys: u32,
    batch_bytes: u64,
    migrate_timeout: Duration,
    /// The topology read by the last snapshot or repair; moves use its node ids.
    topo: Mutex<Option<Arc<Topology>>>,
    /// When this process first saw each open slot nobody recorded.
    first_seen: Mutex<std::collections::HashMap<u16, chrono::DateTime<chrono::Utc>>>,
    /// Whether migrate-timeout was compared with the cluster's node timeout.
    node_timeout_checked: std::sync::atomic::AtomicBool,
}

impl RedisCluster {
    pub fn from_config(config: &crate::config::Config) -> Result<RedisCluster, ClusterError> {
        let c = &config.cluster;
        let password = c
            .password_file
            .as_deref()
            .map(|p| crate::config::read_secret(p, "cluster.password-file"))
            .transpose()
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        let migrate_timeout = config.execution.migrate_timeout.0;
        let auth = Auth { username: c.username.clone(), password };
        Ok(RedisCluster {
            cluster_id: c.id.clone(),
            seeds: c.seeds.clone(),
            conns: Conns::new(auth, migrate_timeout + Duration::from_secs(10)),
            sizing: SizingOptions {
                mode: match c.sizing {
                    crate::config::Sizing::Exact => SizingMode::Exact,
                    crate::config::Sizing::Sampled => SizingMode::Sampled,
                },
                keys_per_second: c.sizing_keys_per_second as u64,
                max_age: c.sizing_max_age.0,
                sample_keys: c.slot_sample_keys,
                max_key_bytes: config.execution.max_key_bytes.0,
            },
            sizes: SizeCache::default(),
            critical_percent: config.balance.critical_memory_percent,
            batch_keys: config.execution.migrate_batch_keys,
            batch_bytes: config.execution.migrate_batch_bytes.0,
            migrate_timeout,
            topo: Mutex::new(None),
            first_seen: Mutex::default(),
            node_timeout_checked: Default::default(),
        })
    }
}

impl Cluster for RedisCluster {
    async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        self.observe().await
    }

    async fn repair(&self, opts: &RepairOptions) -> Result<RepairReport, ClusterError> {
        self.repair_from_truth(opts).await
    }

    async fn move_bucket<P: Pace>(&self, s: &ClusterSnapshot, mv: &Move, pace: &P) -> Result<MoveStats, ClusterError> {
        let slot = u16::try_from(mv.bucket)
            .ok()
            .filter(|&x| (x as usize) < SLOTS)
            .ok_or_else(|| ClusterError::Move { bucket: mv.bucket, message: "not a hash slot".into(), open: false })?;
        let src = s.members[mv.from as usize].address.clone();
        let dst = s.members[mv.to as usize].address.clone();
        // Node ids come from the snapshot's topology; ownership is checked by Redis
        // itself (MIGRATING fails on a node that no longer owns the slot).
        let topo = self.cached_topology().await?;
        let started = Instant::now();
        // An exact size is a measurement the mover may use for pacing and the report; a
        // sampled one is not, so the mover measures the keys it moves.
        let measured = match self.sizing.mode {
            SizingMode::Exact => mv.bytes,
            SizingMode::Sampled => 0,
        };
        let m = SlotMove { slot, src: &src, dst: &dst, resume: false, estimate: measured };
        let result = self.finish(&topo, m, pace).await;
        // The check after the run measures the slot again where it now lives.
        self.sizes.forget(slot);
        let mut stats = result?;
        if measured > 0 {
            // Report in the units the snapshot measured, not the mover's own batch sizing.
            stats.bytes = measured;
        }
        debug!(slot, from = %src, to = %dst, keys = stats.keys, bytes = stats.bytes, ms = started.elapsed().as_millis() as u64, "slot moved");
        Ok(stats)
    }
}

/// No pacing (repairs finish as fast as they can: an open slot is the worse state).
pub struct NoPace;

impl Pace for NoPace {
    async fn take(&self, _bytes: u64) {}
}
