//! Repair from the truth: what the nodes hold and claim, read against the moves this fleet
//! recorded.
//!
//! An open slot (MIGRATING or IMPORTING on some master) that has a recorded intent is
//! ours: it is finished when keys of the slot sit on a master other than its owner
//! (so none is stranded), otherwise rolled back. A finish that fails (the target out of
//! memory, say), or a live run settling its own failed move (`hand_back`), hands the keys
//! that reached the target back to the owner instead. A key both hold with the same value
//! (a source failed over before its deletes reached the replica now serving) is replaced;
//! one with different values keeps the owner's, the other set aside under another name
//! ([`super::aside`]), so no conflict leaves a slot open.
//!
//! The source and target are taken from
//! what the masters claim now, not from the flags alone: after a failover mid-move the
//! flags name a node that is no longer a master, and the promoted replica holds the
//! slot (source side) or the keys already moved (target side). An open slot nobody
//! recorded is someone else's and is left untouched. Keys sitting on a master that does
//! not own their slot are returned to the owner ([`super::stray`]).
//!
//! Owns: choosing finish, roll back or leave alone per slot. Does not own: the protocol
//! steps ([`super::legacy`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::legacy::{KeyPair, Legacy, SlotMove};
use super::nodes::Nodes;
use super::sizing::Sizer;
use super::topology::Topology;
use super::{Reading, RedisCluster};
use crate::cluster::{ClusterError, Fence, ForeignMove, RepairOptions, RepairReport, SetAside, Unpaced};
use crate::model::MoveIntent;

/// The flags set on one slot, by master address.
#[derive(Clone, Debug, Default)]
pub(super) struct OpenSlot {
    /// (master, node id it migrates to)
    pub(super) migrating: Vec<(String, String)>,
    /// (master, node id it imports from)
    pub(super) importing: Vec<(String, String)>,
}

impl OpenSlot {
    fn flagged(&self) -> impl Iterator<Item = &String> {
        self.migrating.iter().chain(&self.importing).map(|(a, _)| a)
    }
}

fn open_slots(topo: &Topology) -> BTreeMap<u16, OpenSlot> {
    let mut open: BTreeMap<u16, OpenSlot> = BTreeMap::new();
    for m in &topo.masters {
        let Some(me) = topo.myself.get(&m.addr) else { continue };
        for (slot, to) in &me.migrating {
            open.entry(*slot).or_default().migrating.push((m.addr.clone(), to.clone()));
        }
        for (slot, from) in &me.importing {
            open.entry(*slot).or_default().importing.push((m.addr.clone(), from.clone()));
        }
    }
    open
}

/// Repair: a part borrowing the nodes, the sizer, the legacy mover (to finish or hand back
/// what a crash or a failed move left open) and when this process first saw each open
/// slot nobody recorded; it holds only what the engines can do, read when it is made.
pub(super) struct Repair<'a> {
    pub(super) nodes: &'a Nodes,
    pub(super) sizer: &'a Sizer,
    pub(super) legacy: Legacy<'a>,
    /// When this process first saw each open slot nobody recorded.
    pub(super) first_seen: &'a Mutex<HashMap<u16, DateTime<Utc>>>,
    /// The masters run atomic migrations: jobs a crash left running are looked for.
    pub(super) atomic_jobs: bool,
}

impl RedisCluster {
    /// Repair over this backend's parts, with whether to look for atomic jobs (of the
    /// masters of `topo`, the topology repair reads first). A master that does not answer
    /// stops the run at the snapshot, naming it.
    pub(super) async fn repairer(&self, topo: &Topology) -> Repair<'_> {
        let atomic_jobs = match self.current_capabilities(Some(topo)).await {
            Ok(caps) => caps.atomic_migration,
            Err(e) => {
                warn!(cause = %e, "engines not known: atomic jobs left running are not looked for");
                false
            }
        };
        Repair {
            nodes: &self.nodes,
            sizer: &self.sizer,
            legacy: self.legacy(),
            first_seen: &self.first_seen,
            atomic_jobs,
        }
    }
}

impl Repair<'_> {
    /// Settles open slots and stray keys as `opts` allows.
    /// `topo` is the topology as read just before.
    pub(super) async fn repair_from_truth<F: Fence>(
        &self,
        topo: Topology,
        opts: &RepairOptions,
        fence: &F,
    ) -> Result<RepairReport, ClusterError> {
        let mut report = RepairReport::default();
        let busy = self.settle_jobs(&topo, opts, &mut report).await;
        // A job that ended moved slots: what follows reads the owners as they are now.
        let topo = if report.intents_done.is_empty() { topo } else { self.nodes.topology().await? };
        let intents: HashMap<u64, &MoveIntent> = opts.intents.iter().map(|i| (i.bucket, i)).collect();
        let open = open_slots(&topo);
        let wanted = |s: u16| opts.only.is_none_or(|o| o == s as u64) && !busy.contains(&s);
        if !opts.dry_run {
            let ours =
                open.iter().filter(|(s, _)| wanted(**s) && (intents.contains_key(&(**s as u64)) || opts.take_foreign));
            self.reanchor_importers(&topo, ours).await;
        }
        for (&slot, flags) in open.iter().filter(|(s, _)| wanted(**s)) {
            if !intents.contains_key(&(slot as u64)) && !opts.take_foreign {
                report.foreign.push(self.foreign(&topo, slot, flags).await);
                continue;
            }
            match self.settle_open(&topo, slot, flags, opts, fence, &mut report.set_aside).await {
                Ok(line) => {
                    info!(slot, dry_run = opts.dry_run, "{line}");
                    report.settled.push(line);
                    report.intents_done.push(slot as u64);
                }
                Err(e) => {
                    warn!(slot, cause = %e, "repair of an open slot failed; the other slots go on");
                    report.failed.push((slot as u64, e));
                }
            }
        }
        let mut skip: Vec<u16> = report.foreign.iter().map(|f| f.bucket as u16).collect();
        skip.extend(&busy);
        // Settling open slots changed owners: strays go to the owner as it is now.
        let topo = if report.settled.is_empty() || opts.dry_run { topo } else { self.nodes.topology().await? };
        if !opts.dry_run {
            let ours =
                opts.intents.iter().map(|i| i.bucket as u16).chain(report.intents_done.iter().map(|&b| b as u16));
            self.follow_ours(&topo, ours.filter(|s| wanted(*s) && !skip.contains(s)).collect(), &mut report).await;
        }
        let readings = self.return_strays(&topo, opts, &skip, &mut report).await;
        report.down = self.unserved(&topo, &open, &report.foreign, &readings).await;
        // Intents whose slot is closed and clean were settled by whoever got there first.
        for i in &opts.intents {
            let slot = i.bucket as u16;
            let untouched = !open.contains_key(&slot)
                && !busy.contains(&slot)
                && !report.failed.iter().any(|(b, _)| *b == i.bucket);
            if untouched && opts.only.is_none_or(|o| o == i.bucket) && !report.intents_done.contains(&i.bucket) {
                report.intents_done.push(i.bucket);
            }
        }
        report.intents_done.sort_unstable();
        report.intents_done.dedup();
        // A repair that changed nothing read what the snapshot after it would read again.
        let unchanged = report.settled.is_empty()
            && report.set_aside.is_empty()
            && report.failed.is_empty()
            && report.down.is_empty();
        report.reading = unchanged.then(|| crate::cluster::Reading::redis(Reading { topo, masters: readings }));
        Ok(report)
    }

    /// What leaves slots unserved that this repair did not settle: open slots nobody
    /// recorded whose flags name a node that is no longer a live master, and nodes that
    /// report `cluster_state:fail` because their view has no live owner for a slot the
    /// cluster serves (Redis keeps a slot it imports out of gossip: when its source fails
    /// over, the importing node goes on naming the demoted node).
    async fn unserved(
        &self,
        topo: &Topology,
        open: &BTreeMap<u16, OpenSlot>,
        foreign: &[ForeignMove],
        readings: &HashMap<String, super::MasterReading>,
    ) -> Vec<String> {
        let fix = |slot: u16| format!("settle it with `autobalancer repair --slot {slot}`");
        let live = |id: &str| topo.master_by_id(id).is_some_and(|m| !m.is_failed());
        let mut down = Vec::new();
        for f in foreign {
            let slot = f.bucket as u16;
            let Some(flags) = open.get(&slot) else { continue };
            let dead = |flagged: &[(String, String)], how: &str| {
                flagged.iter().find(|(_, id)| !live(id)).map(|(node, other)| {
                    format!("slot {slot}: {node} {how} {other}, which is no longer a master: {}", fix(slot))
                })
            };
            down.extend(dead(&flags.importing, "imports it from").or_else(|| dead(&flags.migrating, "migrates it to")));
        }
        for addr in readings.iter().filter(|(_, r)| !r.info.cluster_ok).map(|(a, _)| a) {
            let Ok(view) = self.nodes.cluster_nodes(addr).await else { continue };
            let served = |s: u16| view.iter().any(|n| n.is_master() && !n.is_failed() && n.owns(s));
            let owned_live = |s: u16| topo.owner[s as usize].is_some_and(|i| !topo.masters[i].is_failed());
            if let Some(slot) = (0..super::SLOTS as u16).find(|&s| owned_live(s) && !served(s)) {
                let owner = &topo.masters[topo.owner[slot as usize].expect("owned")];
                down.push(format!(
                    "{addr} reports cluster_state:fail: its view leaves slot {slot} unserved, which {} serves: {} (or, with nothing open, CLUSTER SETSLOT {slot} NODE {} on {addr})",
                    owner.addr,
                    fix(slot),
                    owner.id
                ));
            }
        }
        down.sort();
        down
    }

    /// Names a migration nobody recorded, with when this process first saw it.
    async fn foreign(&self, topo: &Topology, slot: u16, flags: &OpenSlot) -> ForeignMove {
        let since = *self.first_seen.lock().expect("first seen").entry(slot).or_insert_with(Utc::now);
        let by_id = |id: &String| topo.master_by_id(id).map(|m| m.addr.clone()).or_else(|| Some(id.clone()));
        let from = flags
            .migrating
            .first()
            .map(|(a, _)| a.clone())
            .or_else(|| flags.importing.first().and_then(|(_, f)| by_id(f)));
        let to = flags
            .importing
            .first()
            .map(|(a, _)| a.clone())
            .or_else(|| flags.migrating.first().and_then(|(_, t)| by_id(t)));
        ForeignMove { bucket: slot as u64, from, to, since }
    }

    /// Finishes, rolls back or hands back one open slot of ours. Returns what was (or
    /// would be) done; keys that differed on both sides are recorded in `aside`.
    async fn settle_open<F: Fence>(
        &self,
        topo: &Topology,
        slot: u16,
        flags: &OpenSlot,
        opts: &RepairOptions,
        fence: &F,
        aside: &mut Vec<SetAside>,
    ) -> Result<String, String> {
        if let Some(line) = self.legacy.commit_unclaimed(topo, slot, &flags.importing, opts.dry_run).await? {
            return Ok(line);
        }
        let src = topo.owner[slot as usize]
            .map(|i| topo.masters[i].addr.clone())
            .filter(|a| topo.master_by_addr(a).is_some_and(|m| !m.is_failed()))
            .ok_or_else(|| format!("slot {slot} has no live owner"))?;
        let dst = self.target_of(topo, slot, &src, flags).await?;
        let keys_at = |a: String| async move { self.nodes.count_keys(&a, slot).await.map(|n| (a, n)) };
        let (dst, dst_keys) = match dst {
            Some(d) => keys_at(d).await?,
            None => (String::new(), 0),
        };
        if dst_keys == 0 {
            let line = format!("slot {slot}: rolled back to {src} (no key had reached the target)");
            if !opts.dry_run {
                for a in flags.flagged() {
                    self.nodes.setslot(a, slot, &["STABLE"]).await.map_err(|e| format!("STABLE on {a}: {e}"))?;
                }
            }
            return Ok(line);
        }
        let src_keys = self.nodes.count_keys(&src, slot).await?;
        if opts.dry_run {
            let what = if opts.hand_back { "hand back the keys of" } else { "finish" };
            return Ok(format!(
                "slot {slot}: would {what} the move {src} -> {dst} ({src_keys} keys left on {src}, {dst_keys} on {dst})"
            ));
        }
        let why = if opts.hand_back {
            "the move failed".to_string()
        } else {
            self.point_at_owners(topo, &dst, &[slot]).await?;
            let m = SlotMove { slot, src: &src, dst: &dst, resume: true, estimate: 0 };
            match self.legacy.finish(topo, m, &Unpaced, fence).await {
                Ok(stats) => {
                    aside.extend(stats.set_aside);
                    for a in flags.flagged().filter(|a| **a != src && **a != dst) {
                        let _ = self.nodes.setslot(a, slot, &["STABLE"]).await;
                    }
                    return Ok(format!(
                        "slot {slot}: finished the move {src} -> {dst} ({src_keys} keys were left on the source, {} moved now)",
                        stats.keys
                    ));
                }
                Err(e @ ClusterError::Fenced { .. }) => return Err(e.to_string()),
                Err(e) => {
                    warn!(slot, cause = %e, "could not finish the move; handing its keys back to the owner");
                    format!("finishing it failed: {e}")
                }
            }
        };
        fence.check().await.map_err(|e| format!("slot {slot} left open for the next holder: {e}"))?;
        let back = self.hand_back(topo, slot, &src, &dst, aside).await?;
        for a in flags.flagged().chain([&src, &dst]) {
            self.nodes.setslot(a, slot, &["STABLE"]).await.map_err(|e| format!("STABLE on {a}: {e}"))?;
        }
        Ok(format!("slot {slot}: handed {back} key(s) back from {dst} to its owner {src} ({why})"))
    }

    /// Moves every key of `slot` on `dst` back to its owner `owner`, made stable first so
    /// that it takes them, then tells `dst` the owner. Returns the keys moved; a key the
    /// owner holds with another value goes under its aside name (recorded in `aside`).
    async fn hand_back(
        &self,
        topo: &Topology,
        slot: u16,
        owner: &str,
        dst: &str,
        aside: &mut Vec<SetAside>,
    ) -> Result<u64, String> {
        // A target promoted by failover lost its IMPORTING flag: without it, its MIGRATE
        // of a slot it does not own is redirected. Set, it reaches the keys (as for strays).
        let owner_id = self.nodes.node_id_of(topo, owner).map_err(|e| e.to_string())?;
        self.nodes
            .setslot(dst, slot, &["IMPORTING", &owner_id])
            .await
            .map_err(|e| format!("IMPORTING on {dst}: {e}"))?;
        self.nodes.setslot(owner, slot, &["STABLE"]).await.map_err(|e| format!("STABLE on {owner}: {e}"))?;
        let mut moved = 0u64;
        loop {
            let list = redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(self.legacy.opts.batch_keys).clone();
            let keys: Vec<Vec<u8>> = self.nodes.conns.query(dst, &list).await?;
            if keys.is_empty() {
                // The target took no gossip for the slot while it imported: after a
                // failover of the source it may still name the demoted node. Holding none
                // of the slot's keys now, told the owner, it redirects at once instead of
                // answering CLUSTERDOWN.
                if let Err(e) = self.nodes.setslot(dst, slot, &["NODE", &owner_id]).await {
                    warn!(slot, node = %dst, cause = %e, "the target did not take the owner; gossip will carry it");
                }
                return Ok(moved);
            }
            let mut p = redis::pipe();
            p.cmd("ASKING").ignore().add_command(self.legacy.migrate_cmd(owner, &keys, false)).ignore();
            match self.nodes.conns.pipeline_as::<()>(dst, &p).await {
                Ok(()) => moved += keys.len() as u64,
                Err(e) if e.contains("BUSYKEY") => {
                    for k in &keys {
                        match self.legacy.compare_key(dst, owner, k, true).await? {
                            KeyPair::Gone => {}
                            KeyPair::OnlyHere => {
                                self.legacy.migrate_one(dst, owner, k, false, true).await?;
                                moved += 1;
                            }
                            // A source failed over before its deletes reached the
                            // replica now serving: the owner still holds the same value.
                            KeyPair::Same => {
                                self.legacy.migrate_one(dst, owner, k, true, true).await?;
                                moved += 1;
                            }
                            // Clients read the owner's; the other goes back under its
                            // aside name, listed again next round.
                            KeyPair::Different => aside.extend(self.nodes.set_aside(slot, dst, k).await?),
                        }
                    }
                }
                Err(e) => return Err(format!("MIGRATE from {dst} back to {owner}: {e}")),
            }
        }
    }

    /// Where an open slot of ours was going: the master importing it, else the master
    /// holding its keys without owning it (a target promoted by failover lost the flag
    /// but kept the keys), else the live master the source's flag names.
    async fn target_of(
        &self,
        topo: &Topology,
        slot: u16,
        src: &str,
        flags: &OpenSlot,
    ) -> Result<Option<String>, String> {
        let live = |a: &str| topo.master_by_addr(a).is_some_and(|m| !m.is_failed()) && a != src;
        if let Some((a, _)) = flags.importing.iter().find(|(a, _)| live(a)) {
            return Ok(Some(a.clone()));
        }
        let mut holders = Vec::new();
        for m in topo.masters.iter().filter(|m| live(&m.addr)) {
            if self.nodes.count_keys(&m.addr, slot).await? > 0 {
                holders.push(m.addr.clone());
            }
        }
        if holders.len() > 1 {
            return Err(format!(
                "keys of slot {slot} sit on several masters that do not own it: {}",
                holders.join(", ")
            ));
        }
        if let Some(h) = holders.pop() {
            return Ok(Some(h));
        }
        Ok(flags
            .migrating
            .iter()
            .find_map(|(_, id)| topo.master_by_id(id).filter(|m| live(&m.addr)).map(|m| m.addr.clone())))
    }

    /// Slots of ours (recorded, or settled now) that a replica may still show open (see
    /// [`super::follow`]): one that stays so is a failed repair, its intent kept.
    async fn follow_ours(&self, topo: &Topology, mut ours: Vec<u16>, report: &mut RepairReport) {
        ours.sort_unstable();
        ours.dedup();
        for (slot, why) in self.nodes.replicas_follow(topo, &ours).await {
            warn!(slot, cause = %why, "a replica did not follow the settled slot");
            report.intents_done.retain(|&b| b != slot as u64);
            report.failed.push((slot as u64, why));
        }
    }
}
