//! The Redis Cluster and Valkey backend: masters are members, the 16384 hash slots are
//! buckets.
//!
//! Layout: [`conn`] connections and AUTH; [`topology`] CLUSTER NODES, ownership, health;
//! [`sizing`] slot sizes in bytes; [`legacy`] the SETSLOT + MIGRATE mover; [`repair`]
//! closing slots a crash left open. This file wires them into the backend-neutral
//! [`Cluster`] trait and builds the snapshot. Does not own: which slots move.

mod conn;
mod legacy;
mod repair;
mod sizing;
mod topology;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;
use tracing::{debug, warn};

pub use topology::{NodeLine, parse_nodes};

use super::{Cluster, ClusterError, MoveStats, Pace};
use crate::model::{Bucket, ClusterSnapshot, Health, Member, OpenMigration, Replica};
use crate::plan::Move;
use conn::{Auth, Conns};
use topology::Topology;

pub const SLOTS: usize = 16384;
/// Commands per pipeline round trip.
const PIPELINE: usize = 2048;

pub struct RedisCluster {
    cluster_id: String,
    seeds: Vec<String>,
    conns: Conns,
    sample_keys: u32,
    critical_percent: u32,
    batch_keys: u32,
    batch_bytes: u64,
    migrate_timeout: Duration,
    /// The topology read by the last snapshot or repair; moves use its node ids.
    topo: Mutex<Option<Arc<Topology>>>,
}

impl RedisCluster {
    pub fn from_config(config: &crate::config::Config) -> Result<RedisCluster, ClusterError> {
        let c = &config.cluster;
        let password = match &c.password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| ClusterError::Config(format!("cluster.password-file {}: {e}", p.display())))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => None,
        };
        let migrate_timeout = config.execution.migrate_timeout.0;
        let auth = Auth { username: c.username.clone(), password };
        Ok(RedisCluster {
            cluster_id: c.id.clone(),
            seeds: c.seeds.clone(),
            conns: Conns::new(auth, migrate_timeout + Duration::from_secs(10)),
            sample_keys: c.slot_sample_keys,
            critical_percent: config.balance.critical_memory_percent,
            batch_keys: config.execution.migrate_batch_keys,
            batch_bytes: config.execution.migrate_batch_bytes.0,
            migrate_timeout,
            topo: Mutex::new(None),
        })
    }
}

impl Cluster for RedisCluster {
    async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        let topo = self.topology().await?;
        let mut members = Vec::with_capacity(topo.masters.len());
        let mut slot_sizes: Vec<u64> = vec![0; SLOTS];
        let jobs = futures::future::join_all(topo.masters.iter().enumerate().map(|(i, m)| {
            let owned: Vec<u16> = (0..SLOTS as u16).filter(|&s| topo.owner[s as usize] == Some(i)).collect();
            let addr = m.addr.clone();
            let failed = m.is_failed();
            async move {
                if failed {
                    return (Err("flagged fail".to_string()), Err(String::new()));
                }
                let h = self.health_figures(&addr).await;
                let b = self.slot_bytes(&addr, &owned).await;
                (h, b)
            }
        }))
        .await;
        let mut open = Vec::new();
        for (m, (health, bytes)) in topo.masters.iter().zip(jobs) {
            let mut member = Member::new(&m.addr);
            match (&health, &bytes) {
                (Ok((used, max, ok)), Ok(sizes)) => {
                    member.capacity_bytes = (*max > 0).then_some(*max);
                    let critical =
                        *max > 0 && used.saturating_mul(100) > max.saturating_mul(self.critical_percent as u64);
                    if critical || !ok {
                        member.health = Health::Critical;
                        if !ok {
                            warn!(member = %m.addr, "node reports cluster_state other than ok");
                        }
                    }
                    for &(s, b) in sizes {
                        slot_sizes[s as usize] = b;
                    }
                }
                _ => {
                    let cause = health.as_ref().err().or(bytes.as_ref().err()).cloned().unwrap_or_default();
                    warn!(member = %m.addr, cause = %cause, "master is down or unreachable");
                    member.health = Health::Down;
                }
            }
            if let Some(me) = topo.myself.get(&m.addr) {
                for (slot, to) in &me.migrating {
                    open.push(OpenMigration {
                        bucket: *slot as u64,
                        from: Some(m.addr.clone()),
                        to: topo.master_by_id(to).map(|t| t.addr.clone()),
                    });
                }
                for (slot, from) in &me.importing {
                    open.push(OpenMigration {
                        bucket: *slot as u64,
                        from: topo.master_by_id(from).map(|t| t.addr.clone()),
                        to: Some(m.addr.clone()),
                    });
                }
            }
            members.push(member);
        }
        open.sort_by_key(|o| o.bucket);
        open.dedup_by(|a, b| a.bucket == b.bucket);
        let buckets = (0..SLOTS)
            .filter_map(|s| {
                topo.owner[s].map(|o| Bucket {
                    id: s as u64,
                    group: None,
                    bytes: slot_sizes[s],
                    copies: vec![o as u32],
                })
            })
            .collect();
        let replicas = topo
            .replicas
            .iter()
            .map(|r| Replica {
                id: r.addr.clone(),
                master: r.master_id.as_ref().and_then(|id| topo.master_by_id(id)).map(|m| m.addr.clone()),
                healthy: !r.is_failed(),
            })
            .collect();
        Ok(ClusterSnapshot {
            cluster_id: self.cluster_id.clone(),
            taken_at: Utc::now(),
            members,
            buckets,
            open_migrations: open,
            replicas,
        })
    }

    async fn repair(&self) -> Result<Vec<String>, ClusterError> {
        self.repair_open().await
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
        let stats = self.finish(&topo, slot, &src, &dst, pace, false, mv.bytes).await?;
        debug!(slot, from = %src, to = %dst, keys = stats.keys, bytes = stats.bytes, ms = started.elapsed().as_millis() as u64, "slot moved");
        Ok(stats)
    }
}

/// No pacing (repairs finish as fast as they can: an open slot is the worse state).
pub struct NoPace;

impl Pace for NoPace {
    async fn take(&self, _bytes: u64) {}
}
