//! The snapshot: what each master says of itself (INFO), the slots it owns, their key
//! counts and sizes, the keys it holds outside its slots, big keys, moves in flight and
//! replicas, assembled into the backend-neutral `ClusterSnapshot`, which carries the
//! topology it was read from to its moves (its `view`).
//!
//! Owns: turning observations into members, buckets and `Observed`. Does not own: how a
//! slot is measured ([`super::sizing`]) or read ([`super::topology`]).

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use tracing::warn;

use super::capabilities::Capabilities;
use super::sizing::MasterSizes;
use super::topology::{NodeInfo, NodeLine, Topology};
use super::{MasterReading, Reading, RedisCluster, SLOTS};
use crate::cluster::{ClusterError, MeasuredBucket, SizeTable};
use crate::model::{
    BackendView, Bucket, ClusterSnapshot, Health, Member, MemberFacts, Observed, OpenMigration, Pinned, SizingSummary,
};

/// What one master showed.
struct MasterView {
    info: NodeInfo,
    sizes: MasterSizes,
    /// Keys in the slots it owns.
    owned_keys: u64,
}

impl RedisCluster {
    /// Reads the topology (or takes what the repair just before read), observes every
    /// master in parallel and assembles the snapshot.
    pub(super) async fn observe(&self, reading: Option<Reading>) -> Result<ClusterSnapshot, ClusterError> {
        let started = Instant::now();
        let (topo, read) = match reading {
            Some(r) => (r.topo, r.masters),
            None => (self.nodes.topology().await?, HashMap::new()),
        };
        let views = futures::future::join_all(
            topo.masters.iter().enumerate().map(|(i, m)| self.observe_master(&topo, i, m, read.get(&m.addr))),
        )
        .await;
        let mut snap = ClusterSnapshot {
            cluster_id: self.cluster_id.clone(),
            taken_at: Utc::now(),
            members: Vec::with_capacity(topo.masters.len()),
            buckets: Vec::new(),
            open_migrations: open_migrations(&topo),
            replicas: Vec::new(),
            observed: Observed::default(),
            view: BackendView::default(),
        };
        let mut sizes = vec![0u64; SLOTS];
        for (m, view) in topo.masters.iter().zip(&views) {
            let (member, facts) = self.member(m, view);
            snap.members.push(member);
            snap.observed.members.push(facts);
            if let Ok(v) = view {
                for (slot, s) in &v.sizes.slots {
                    sizes[*slot as usize] = s.bytes;
                }
            }
        }
        snap.buckets = (0..SLOTS)
            .filter_map(|s| {
                topo.owner[s].map(|o| Bucket { id: s as u64, group: None, bytes: sizes[s], copies: vec![o as u32] })
            })
            .collect();
        if let Some(m) = topo.masters.iter().find(|m| !m.is_failed()) {
            self.warn_on_migrate_timeout(&m.addr).await;
        }
        let infos = topo.masters.iter().zip(&views).filter_map(|(m, v)| Some((m.id.as_str(), &v.as_ref().ok()?.info)));
        snap.replicas = self.replicas(&topo, &infos.collect()).await;
        let seen: Vec<&MasterView> = views.iter().filter_map(|v| v.as_ref().ok()).collect();
        snap.observed.pinned = self.pinned(&seen);
        snap.observed.sizing = Some(self.summary(&seen, started));
        snap.observed.engine = engine(&seen);
        snap.observed.largest_key_bytes =
            seen.iter().flat_map(|v| v.sizes.slots.iter().map(|(_, s)| s.largest_key)).max().unwrap_or(0);
        self.note_capabilities(Capabilities::of(seen.iter().map(|v| &v.info)));
        // The moves of this snapshot take their node ids and replicas from what it saw.
        snap.view = BackendView::new(topo);
        Ok(snap)
    }

    /// The sizes of the slots `member` owns, measured where the cache cannot vouch for
    /// them, as a table its sidecar publishes; with the keys measured now. None when the
    /// member is no master.
    pub async fn measure_member(&self, member: &str) -> Result<Option<(SizeTable, u64)>, ClusterError> {
        let topo = self.nodes.topology().await?;
        let Some(i) = topo.masters.iter().position(|m| m.id == member) else { return Ok(None) };
        let m = &topo.masters[i];
        let view = self
            .observe_master(&topo, i, m, None)
            .await
            .map_err(|e| ClusterError::Snapshot(format!("member {member} ({}): {e}", m.addr)))?;
        let buckets = view
            .sizes
            .slots
            .iter()
            .filter(|(_, s)| s.keys > 0)
            .map(|(slot, s)| MeasuredBucket {
                bucket: *slot as u64,
                keys: s.keys,
                bytes: s.bytes,
                largest_key: s.largest_key,
                big_keys: s.big_keys,
                variance: s.variance,
                age_ms: s.measured_at.elapsed().as_millis() as u64,
            })
            .collect();
        let table = SizeTable { member: member.to_string(), taken_at: Utc::now(), buckets };
        Ok(Some((table, view.sizes.keys_measured_now)))
    }

    /// A MIGRATE that blocks longer than `cluster-node-timeout` gets its node failed over:
    /// says so once, when `execution.migrate-timeout` is above it.
    async fn warn_on_migrate_timeout(&self, addr: &str) {
        if self.node_timeout_checked.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let cmd = redis::cmd("CONFIG").arg("GET").arg("cluster-node-timeout").to_owned();
        match self.nodes.conns.query::<Vec<String>>(addr, &cmd).await {
            Ok(v) => {
                let node_ms: u64 = v.get(1).and_then(|x| x.parse().ok()).unwrap_or(0);
                if node_ms > 0 && self.migrate.timeout.as_millis() as u64 > node_ms {
                    warn!(
                        migrate_timeout_ms = self.migrate.timeout.as_millis() as u64,
                        cluster_node_timeout_ms = node_ms,
                        "execution.migrate-timeout is above the cluster's cluster-node-timeout: a MIGRATE blocking that long gets its node failed over"
                    );
                }
            }
            Err(e) => tracing::debug!(cause = %e, "cannot read cluster-node-timeout (CONFIG GET not allowed?)"),
        }
    }

    /// One master: INFO, its slots' key counts (from `read`, what repair read just
    /// before, when it has them all) and their sizes.
    async fn observe_master(
        &self,
        topo: &Topology,
        i: usize,
        m: &NodeLine,
        read: Option<&MasterReading>,
    ) -> Result<MasterView, String> {
        if m.is_failed() {
            return Err("flagged fail".into());
        }
        let owned: Vec<u16> = (0..SLOTS as u16).filter(|&s| topo.owner[s as usize] == Some(i)).collect();
        self.sizer.use_published(&m.id, |slot| topo.owner[slot] == Some(i));
        let (info, counts) = match read.and_then(|r| r.of(&owned)) {
            Some(r) => r,
            None => {
                let info = self.nodes.node_info(&m.addr).await?;
                let counts = self
                    .sizer
                    .key_counts(&self.nodes.conns, &m.addr, &owned, Capabilities::of([&info]).slot_stats)
                    .await?;
                (info, counts)
            }
        };
        let sizes = self.sizer.size_master(&self.nodes.conns, &m.addr, &owned, &counts).await?;
        Ok(MasterView { info, sizes, owned_keys: counts.iter().sum() })
    }

    /// The member a master is, with its health, and the facts beside it.
    fn member(&self, m: &NodeLine, view: &Result<MasterView, String>) -> (Member, MemberFacts) {
        // Named by its node id: it stays with the node's data when its address changes.
        let mut member = Member::new(&m.id);
        member.address = m.addr.clone();
        member.hostname = m.hostname.clone();
        let v = match view {
            Ok(v) => v,
            Err(cause) => {
                warn!(member = %m.id, node = %m.addr, cause = %cause, "master is down or unreachable");
                member.health = Health::Down;
                return (member, MemberFacts::default());
            }
        };
        member.zone = v.info.zone.clone();
        let (used, max) = (v.info.used_memory, v.info.maxmemory);
        member.capacity_bytes = (max > 0).then_some(max);
        let critical = max > 0 && used.saturating_mul(100) > max.saturating_mul(self.critical_percent as u64);
        if !v.info.cluster_ok {
            warn!(member = %m.id, node = %m.addr, "node reports cluster_state other than ok");
        }
        if critical || !v.info.cluster_ok {
            member.health = Health::Critical;
        }
        let facts = MemberFacts {
            used_memory_bytes: used,
            stray_keys: v.info.keys.saturating_sub(v.owned_keys),
            big_keys: v.sizes.slots.iter().map(|(_, s)| s.big_keys as u64).sum(),
        };
        (member, facts)
    }

    /// Slots holding a key above `execution.max-key-bytes`.
    fn pinned(&self, views: &[&MasterView]) -> Vec<Pinned> {
        let limit = self.sizer.opts.max_key_bytes;
        let mut pinned: Vec<Pinned> = views
            .iter()
            .flat_map(|v| v.sizes.slots.iter())
            .filter(|(_, s)| s.big_keys > 0)
            .map(|(slot, s)| Pinned {
                bucket: *slot as u64,
                largest_key_bytes: s.largest_key,
                reason: format!("{} key(s) above execution.max-key-bytes ({limit} bytes)", s.big_keys),
            })
            .collect();
        pinned.sort_by_key(|p| p.bucket);
        pinned
    }

    fn summary(&self, views: &[&MasterView], started: Instant) -> SizingSummary {
        let slots = || views.iter().flat_map(|v| v.sizes.slots.iter().map(|(_, s)| s));
        let variance: f64 = slots().map(|s| s.variance).sum();
        SizingSummary {
            mode: self.sizer.opts.mode.name().to_string(),
            keys: slots().map(|s| s.keys).sum(),
            keys_measured_now: views.iter().map(|v| v.sizes.keys_measured_now).sum(),
            oldest_seconds: slots()
                .filter(|s| s.keys > 0)
                .map(|s| s.measured_at.elapsed().as_secs_f64())
                .fold(0.0, f64::max),
            duration_seconds: started.elapsed().as_secs_f64(),
            error_bytes: (1.96 * variance.sqrt()).round() as u64,
        }
    }
}

/// The engine every master runs, at the lowest version seen (what all of them support).
fn engine(views: &[&MasterView]) -> Option<String> {
    let lowest = views.iter().map(|v| &v.info).min_by_key(|i| (i.engine != "redis", i.version))?;
    let mixed = views.iter().any(|v| v.info.engine != lowest.engine);
    Some(if mixed { format!("{} (mixed engines)", lowest.engine_version()) } else { lowest.engine_version() })
}

/// Slots MIGRATING or IMPORTING, from either side's own view.
fn open_migrations(topo: &Topology) -> Vec<OpenMigration> {
    // Named as members are: by node id (an id no master has any more stays as it is).
    let mut open = Vec::new();
    for m in &topo.masters {
        let Some(me) = topo.myself.get(&m.addr) else { continue };
        for (slot, to) in &me.migrating {
            open.push(OpenMigration { bucket: *slot as u64, from: Some(m.id.clone()), to: Some(to.clone()) });
        }
        for (slot, from) in &me.importing {
            open.push(OpenMigration { bucket: *slot as u64, from: Some(from.clone()), to: Some(m.id.clone()) });
        }
    }
    open.sort_by_key(|o| o.bucket);
    open.dedup_by(|a, b| a.bucket == b.bucket);
    open
}
