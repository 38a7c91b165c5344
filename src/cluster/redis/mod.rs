//! The Redis Cluster and Valkey backend: masters are members, the 16384 hash slots are
//! buckets.
//!
//! Parts, each a type: [`nodes::Nodes`] the seeds, a connection per node ([`conn`]: AUTH,
//! TLS), and the topology read from them as a value ([`topology`]: CLUSTER NODES parsed,
//! ownership, health; a snapshot carries the one it was taken from to its moves; repair
//! and role changes read their own), with the node-level work every part uses: replicas that
//! follow an assignment ([`follow`]), a key set aside ([`aside`]), Valkey's migration jobs
//! ([`migrations`]) and per-slot traffic counters ([`traffic`]); [`sizing::Sizer`] slot
//! sizes in bytes, cached and within a key budget ([`slot_sizes`]; [`slot_stats`]: Valkey's
//! key counts in one call); [`legacy::Legacy`] the SETSLOT and MIGRATE mover of one slot
//! and of a group committed together ([`grouped`], [`commit`]); [`atomic::Atomic`] Valkey 9's
//! MIGRATESLOTS mover and its legacy fallback ([`fallback`]); [`repair::Repair`] closing
//! slots a crash or a failed move left open ([`reanchor`]: importing nodes pointed at
//! their slots' owners first; [`inflight`]: jobs a crash left running; [`stray`]: keys
//! returned to their slot's owner), over the legacy mover. The movers and repair keep no
//! state of their own: they borrow the parts above (repair also when it first saw a slot
//! nobody recorded) and copy what the engines can do, made by [`RedisCluster`] for each
//! call.
//!
//! On the backend itself, over those parts: [`observe`] the snapshot (memory, health, stray
//! and big keys), [`capabilities`] what the engines support and which mover runs,
//! [`handoff`] a master's role to its in-sync replica before a restart, [`roles`] and
//! [`stands`] where masters and replicas stand (placement). This file wires them into
//! the backend-neutral [`Cluster`] trait and chooses the mover per group. What a repair
//! that changed nothing read is handed to the snapshot after it as a value ([`Reading`]).
//! Does not own: which slots move.

mod aside;
mod atomic;
mod capabilities;
mod commit;
mod conn;
mod fallback;
mod follow;
mod grouped;
mod handoff;
mod inflight;
mod legacy;
mod migrations;
mod nodes;
mod observe;
mod reanchor;
mod repair;
mod roles;
mod sizing;
mod slot_sizes;
mod slot_stats;
mod stands;
mod stray;
mod topology;
mod traffic;

use std::time::{Duration, Instant};

use std::sync::Mutex;
use tracing::debug;

pub use aside::copy_of as aside_copy_of;
pub use capabilities::{Capabilities, MigrationMode, Mover};
pub use migrations::SlotMigration;
pub use sizing::{Mode as SizingMode, SizingOptions};
pub use topology::{NodeInfo, NodeLine, parse_nodes};

use super::{Cluster, ClusterError, Fence, MoveStats, Pace, RepairOptions, RepairReport, Room};
use crate::model::ClusterSnapshot;
use crate::plan::Move;
use atomic::Atomic;
use conn::{Auth, Conns, Tls};
use legacy::{Legacy, MigrateOptions, SlotMove};
use nodes::Nodes;
use sizing::Sizer;
use topology::Topology;

pub const SLOTS: usize = 16384;
/// Commands per pipeline round trip.
const PIPELINE: usize = 2048;

/// What a repair that changed nothing read of the cluster, handed back in its report
/// ([`super::Reading`]). The run's snapshot, which follows at once under the same lock,
/// starts from it instead of reading the same again (on Redis 7 that is 16384
/// COUNTKEYSINSLOT per snapshot).
pub struct Reading {
    topo: Topology,
    masters: std::collections::HashMap<String, MasterReading>,
}

/// One master, as a repair read it: INFO, and the key counts of the slots it owns or
/// imports.
struct MasterReading {
    info: NodeInfo,
    counts: std::collections::HashMap<u16, u64>,
}

impl MasterReading {
    /// INFO and the key counts of `slots`, if this reading has every one of them.
    fn of(&self, slots: &[u16]) -> Option<(NodeInfo, Vec<u64>)> {
        let counts = slots.iter().map(|s| self.counts.get(s).copied()).collect::<Option<Vec<u64>>>()?;
        Some((self.info.clone(), counts))
    }
}

pub struct RedisCluster {
    cluster_id: String,
    /// The nodes: seeds and connections, read for the topology as a value.
    nodes: Nodes,
    /// Slot sizes: measured, cached, within each master's key budget.
    sizer: Sizer,
    critical_percent: u32,
    migrate: MigrateOptions,
    /// When this process first saw each open slot nobody recorded.
    first_seen: Mutex<std::collections::HashMap<u16, chrono::DateTime<chrono::Utc>>>,
    /// Whether migrate-timeout was compared with the cluster's node timeout.
    node_timeout_checked: std::sync::atomic::AtomicBool,
    /// `execution.migration`: which mover `move_group` uses.
    pub migration: MigrationMode,
    /// What the masters supported at the last snapshot.
    caps: capabilities::Seen,
    /// Legacy fallbacks: counted, and kept off nodes where atomic jobs run.
    fallbacks: fallback::Fallbacks,
    /// `topology.max-lag-bytes`: how far behind a replica in sync may be.
    max_lag_bytes: u64,
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
        let tls = Tls::from_config(c).map_err(ClusterError::Config)?;
        Ok(RedisCluster {
            cluster_id: c.id.clone(),
            nodes: Nodes::new(c.seeds.clone(), Conns::new(auth, tls, migrate_timeout + Duration::from_secs(10))),
            sizer: Sizer::new(SizingOptions {
                mode: match c.sizing {
                    crate::config::Sizing::Exact => SizingMode::Exact,
                    crate::config::Sizing::Sampled => SizingMode::Sampled,
                },
                keys_per_second: c.sizing_keys_per_second as u64,
                max_age: c.sizing_max_age.0,
                sample_keys: c.slot_sample_keys,
                max_key_bytes: config.execution.max_key_bytes.0,
            }),
            critical_percent: config.balance.critical_memory_percent,
            migrate: MigrateOptions {
                batch_keys: config.execution.migrate_batch_keys,
                batch_bytes: config.execution.migrate_batch_bytes.0,
                timeout: migrate_timeout,
            },
            first_seen: Mutex::default(),
            node_timeout_checked: Default::default(),
            migration: match config.execution.migration {
                crate::config::Migration::Auto => MigrationMode::Auto,
                crate::config::Migration::Atomic => MigrationMode::Atomic,
                crate::config::Migration::Legacy => MigrationMode::Legacy,
            },
            caps: capabilities::Seen::default(),
            fallbacks: Default::default(),
            max_lag_bytes: config.topology.max_lag_bytes.0,
        })
    }
}

impl RedisCluster {
    /// The legacy mover, over this backend's nodes and sizer.
    fn legacy(&self) -> Legacy<'_> {
        Legacy { nodes: &self.nodes, sizer: &self.sizer, opts: self.migrate }
    }

    /// Replaces the size tables other sidecars published.
    pub fn adopt_sizes(&self, tables: Vec<super::SizeTable>) {
        self.sizer.adopt_sizes(tables)
    }

    /// Per-slot traffic counters of `member`, or of every master ([`traffic`]).
    pub async fn read_traffic(&self, member: Option<&str>) -> Result<Vec<crate::traffic::Sample>, ClusterError> {
        self.nodes.read_traffic(member).await
    }

    /// Resets the links of `member`'s replicas that are stuck ([`follow`]); `known` its
    /// node's address, as the watch keeps it.
    pub async fn reset_stuck_replicas(
        &self,
        member: &str,
        known: &mut Option<String>,
    ) -> Result<Vec<String>, ClusterError> {
        self.nodes.reset_stuck_replicas(member, known).await
    }
}

impl RedisCluster {
    /// Slots moved by the legacy mover after an atomic job failed, since this value was made.
    pub fn legacy_fallbacks(&self) -> u64 {
        self.fallbacks.count()
    }

    /// The atomic mover, over this backend's nodes, sizer and fallback gates.
    fn atomic(&self) -> Atomic<'_> {
        let slot_stats = self.capabilities().is_some_and(|c| c.slot_stats);
        Atomic { nodes: &self.nodes, sizer: &self.sizer, opts: self.migrate, fallbacks: &self.fallbacks, slot_stats }
    }
}

impl Cluster for RedisCluster {
    async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        self.observe(None).await
    }

    async fn snapshot_after(&self, reading: Option<super::Reading>) -> Result<ClusterSnapshot, ClusterError> {
        self.observe(reading.and_then(super::Reading::into_redis)).await
    }

    /// The node id of the node `name` names.
    async fn member_id(&self, name: &str) -> Result<String, ClusterError> {
        match self.nodes.node_named(name).await {
            Ok(Some((node, _))) => Ok(node.id),
            Ok(None) => Err(ClusterError::Config(format!(
                "cluster.member-id {name:?} names no node of the cluster (give its node id, ip:port or hostname:port)"
            ))),
            Err(e) => Err(ClusterError::Connect(e)),
        }
    }

    async fn repair<F: Fence>(&self, opts: &RepairOptions, fence: &F) -> Result<RepairReport, ClusterError> {
        // The topology first: the repairer reads what the engines can do from it.
        let topo = self.nodes.topology().await?;
        self.repairer(&topo).await.repair_from_truth(topo, opts, fence).await
    }

    /// INFO memory of a member with `maxmemory` set (read from the snapshot's figure:
    /// a member without one is not asked).
    async fn room(&self, member: &crate::model::Member) -> Result<Option<Room>, ClusterError> {
        if member.capacity_bytes.is_none() {
            return Ok(None);
        }
        let info: String = self
            .nodes
            .conns
            .query(&member.address, redis::cmd("INFO").arg("memory"))
            .await
            .map_err(ClusterError::Connect)?;
        let n = topology::NodeInfo::parse(&info, "");
        Ok((n.maxmemory > 0).then_some(Room { used_bytes: n.used_memory, max_bytes: n.maxmemory }))
    }

    async fn move_bucket<P: Pace, F: Fence>(
        &self,
        s: &ClusterSnapshot,
        mv: &Move,
        pace: &P,
        fence: &F,
    ) -> Result<MoveStats, ClusterError> {
        let slot = u16::try_from(mv.bucket)
            .ok()
            .filter(|&x| (x as usize) < SLOTS)
            .ok_or_else(|| ClusterError::Move { bucket: mv.bucket, message: "not a hash slot".into(), open: false })?;
        let src = s.members[mv.from as usize].address.clone();
        let dst = s.members[mv.to as usize].address.clone();
        let topo = self.nodes.topology_of(s).await?;
        let started = Instant::now();
        // An exact size is a measurement the mover may use for pacing and the report; a
        // sampled one is not, so the mover measures the keys it moves.
        let measured = if self.sizer.exact() { mv.bytes } else { 0 };
        let m = SlotMove { slot, src: &src, dst: &dst, resume: false, estimate: measured };
        let result = self.legacy().finish(&topo, m, pace, fence).await;
        // The check after the run measures the slot again where it now lives.
        self.sizer.forget(slot);
        let mut stats = result?;
        if measured > 0 {
            // Report in the units the snapshot measured, not the mover's own batch sizing.
            stats.bytes = measured;
        }
        debug!(slot, from = %src, to = %dst, keys = stats.keys, bytes = stats.bytes, ms = started.elapsed().as_millis() as u64, "slot moved");
        Ok(stats)
    }

    async fn change_role<F: Fence>(
        &self,
        change: &crate::plan::placement::RoleChange,
        fence: &F,
    ) -> Result<super::RoleDone, ClusterError> {
        self.role_change(change, fence).await
    }

    /// Either mover moves groups, once chosen: the atomic one as one job, the legacy one
    /// committing the group's slots together ([`grouped`]).
    fn groups_moves(&self) -> bool {
        self.chosen_mover().is_some()
    }

    /// Per (source, target): with the atomic mover one MIGRATESLOTS job; otherwise one
    /// legacy group ([`grouped`]), opened, drained and committed together. (`move_bucket` alone always
    /// uses the legacy mover on one slot; the executor hands a group of one here.)
    async fn move_group<P: Pace, F: Fence>(
        &self,
        s: &ClusterSnapshot,
        moves: &[Move],
        pace: &P,
        fence: &F,
    ) -> Vec<Result<MoveStats, ClusterError>> {
        let mover = match self.mover().await {
            Err(ClusterError::Config(e)) => {
                return moves.iter().map(|_| Err(ClusterError::Config(e.clone()))).collect();
            }
            Err(e) => {
                let message = format!("choosing the mover: {e}");
                let fail = |mv: &Move| ClusterError::Move { bucket: mv.bucket, message: message.clone(), open: false };
                return moves.iter().map(|mv| Err(fail(mv))).collect();
            }
            Ok(mover) => mover,
        };
        let mut out: Vec<Option<Result<MoveStats, ClusterError>>> = moves.iter().map(|_| None).collect();
        let mut pairs: Vec<((u32, u32), Vec<usize>)> = Vec::new();
        for (i, mv) in moves.iter().enumerate() {
            match pairs.iter_mut().find(|(p, _)| *p == (mv.from, mv.to)) {
                Some((_, idx)) => idx.push(i),
                None => pairs.push(((mv.from, mv.to), vec![i])),
            }
        }
        for (_, idx) in pairs {
            let group: Vec<&Move> = idx.iter().map(|&i| &moves[i]).collect();
            let results = match mover {
                Mover::Atomic => self.atomic().group(s, &group, pace, fence).await,
                Mover::Legacy => self.legacy().legacy_group(s, &group, pace, fence).await,
            };
            for (i, r) in idx.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter().map(|r| r.expect("every move answered")).collect()
    }
}
