//! The legacy mover for a group of slots between one source and one target.
//!
//! A slot moved on its own costs a SETSLOT NODE on every master, and each makes that node
//! save and fsync its cluster config: the cost of a slot grows with the cluster. A group
//! is opened, drained and committed as one:
//! - IMPORTING on the target, then MIGRATING on the source, for every slot of the group,
//!   each side in one pipeline;
//! - the keys, slot by slot (in batches, paced, waiting for the target's replicas after
//!   each, as [`super::legacy`] moves one slot);
//! - past the fence, at least every [`COMMIT_EVERY`] of draining, SETSLOT NODE for the
//!   slots drained so far in one pipeline to the source, then the target
//!   ([`super::commit`] says why in that order); at the end, the
//!   group's assignments to every other master in one pipeline each, in parallel. A node
//!   saves its config once per pass of its event loop, so a pipeline of N assignments
//!   costs about one save.
//!
//! Why not the whole group at its end: a drained slot's keys are on the target, and until
//! the source is told, every read of one is answered ASK. 9 -> 12 masters with two
//! redis-rs and two redis-py readers beside the run (BENCHMARKS.md): committed at the
//! group's end, 331 ASKs and redis-py 8.2 failed 58 reads (it cannot follow ASK to a
//! master it has not seen yet, as a new empty one is); every 100 ms, 39 ASKs and 2
//! failed reads, the moves as fast (1.03 s against 1.09-1.30); every 20 ms, 8 ASKs and
//! none failed, but the moves took 1.45-1.50 s (each commit saves the config of two nodes).
//!
//! A slot that fails stops the group: the slots drained before it are committed, the slot
//! itself is left open (the run settles it as it settles any failed move), and the slots
//! after it, which no key has left, are made stable again (or left open for the run to
//! settle, if clients wrote keys of them to the target meanwhile).
//!
//! Owns: the group's order of steps. Does not own: one slot's steps ([`super::legacy`]).

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::SLOTS;
use super::legacy::Legacy;
use super::legacy::SlotMove;
use super::topology::Topology;
use crate::cluster::{ClusterError, Fence, FenceError, MoveStats, Pace};
use crate::model::ClusterSnapshot;
use crate::plan::Move;

type Outcome = Result<MoveStats, ClusterError>;

/// Drained slots are committed at least this often: a drained slot's keys live on the
/// target, and until its commit every client reading one is sent there with ASK.
const COMMIT_EVERY: Duration = Duration::from_millis(100);

impl Legacy<'_> {
    /// Moves `group` (one source, one target) with the legacy mover; one result per move.
    pub(super) async fn legacy_group<P: Pace, F: Fence>(
        &self,
        s: &ClusterSnapshot,
        group: &[&Move],
        pace: &P,
        fence: &F,
    ) -> Vec<Outcome> {
        let fail = |mv: &Move, message: String, open: bool| ClusterError::Move { bucket: mv.bucket, message, open };
        let Some(first) = group.first() else { return Vec::new() };
        if let Some(bad) = group.iter().find(|mv| mv.bucket >= SLOTS as u64) {
            let bad = bad.bucket;
            return group.iter().map(|mv| Err(fail(mv, format!("bucket {bad} is not a hash slot"), false))).collect();
        }
        let src = s.members[first.from as usize].address.clone();
        let dst = s.members[first.to as usize].address.clone();
        let topo = match self.nodes.topology_of(s).await {
            Ok(t) => t,
            Err(e) => return group.iter().map(|mv| Err(fail(mv, e.to_string(), false))).collect(),
        };
        let ids = self.nodes.node_id_of(&topo, &src).and_then(|a| self.nodes.node_id_of(&topo, &dst).map(|b| (a, b)));
        let (src_id, dst_id) = match ids {
            Ok(x) => x,
            Err(e) => return group.iter().map(|mv| Err(fail(mv, e.to_string(), false))).collect(),
        };
        let slots: Vec<u16> = group.iter().map(|mv| mv.bucket as u16).collect();
        let mut out: Vec<Option<Outcome>> = group.iter().map(|_| None).collect();
        // Open: IMPORTING on the target first, then MIGRATING on the source.
        let imported = self.nodes.setslots(&dst, &slots, &["IMPORTING", &src_id]).await;
        let mut opened = Vec::new();
        // A step a node refused is settled as an open slot: Valkey runs a SETSLOT on the
        // replicas before their primary, so a primary that refuses it (its source demoted
        // meanwhile: "not a master") may leave replicas, one perhaps promoted since,
        // showing the slot open. The run's repair closes it wherever it shows.
        for (i, r) in imported.into_iter().enumerate() {
            match r {
                Ok(()) => opened.push(i),
                Err(e) => out[i] = Some(Err(fail(group[i], format!("IMPORTING on {dst}: {e}"), true))),
            }
        }
        let migrating = self.nodes.setslots(&src, &pick(&slots, &opened), &["MIGRATING", &dst_id]).await;
        let mut refused = Vec::new();
        let mut open = Vec::new();
        for (&i, r) in opened.iter().zip(migrating) {
            match r {
                Ok(()) => open.push(i),
                Err(e) => {
                    refused.push(i);
                    out[i] = Some(Err(fail(group[i], format!("MIGRATING on {src}: {e}"), true)));
                }
            }
        }
        // Nothing has moved for a slot the source refused: the target's step is undone.
        for (r, &i) in self.nodes.setslots(&dst, &pick(&slots, &refused), &["STABLE"]).await.into_iter().zip(&refused) {
            if let Err(e) = r {
                warn!(slot = slots[i], cause = %e, "IMPORTING not undone on the target; repair settles it");
            }
        }
        let pair = Pair { group, slots: &slots, src: &src, src_id: &src_id, dst: &dst, dst_id: &dst_id };
        let mut follow = self.drain_and_commit(&topo, &pair, open, pace, fence, &mut out).await;
        let moved: Vec<u16> =
            out.iter().zip(&slots).filter(|(r, _)| matches!(r, Some(Ok(_)))).map(|(_, &s)| s).collect();
        // Demoted after it took commits: every slot it gave up is followed too (a group
        // that moved nothing asks nothing).
        if !moved.is_empty() && self.nodes.demoted(&src).await {
            info!(source = %src, slots = moved.len(), "the source is a replica by the group's end: the new owner of what it gave up is told to every master");
            follow.extend(moved);
            follow.sort_unstable();
            follow.dedup();
        }
        self.nodes.follow_demoted(&dst, &dst_id, &follow).await;
        for &slot in &slots {
            self.sizer.forget(slot);
        }
        out.into_iter().map(|r| r.expect("every move answered")).collect()
    }

    /// Drains the `open` slots and commits them as it goes, at least every
    /// [`COMMIT_EVERY`], then tells the other masters. Returns the committed slots the
    /// source refused.
    async fn drain_and_commit<P: Pace, F: Fence>(
        &self,
        topo: &Topology,
        g: &Pair<'_>,
        open: Vec<usize>,
        pace: &P,
        fence: &F,
        out: &mut [Option<Outcome>],
    ) -> Vec<u16> {
        let replicas = topo.replica_count(g.dst_id);
        let (mut left, mut refused, mut committed) = (open, Vec::new(), Vec::new());
        while !left.is_empty() {
            let d = self.drain_group(g, &left, replicas, pace, Instant::now() + COMMIT_EVERY, out).await;
            if let Some((first, rest)) = &d.stopped {
                self.close_untouched(g.group, g.slots, rest, (g.src, g.dst), first, out).await;
            }
            let done = d.drained.len();
            match self.commit_drained(g, d.drained, fence, out, &mut committed).await {
                Ok(r) => refused.extend(r),
                Err(cause) => {
                    // Open, not drained: left for the next holder with the rest.
                    for &i in &d.left {
                        out[i] = Some(Err(ClusterError::Fenced { bucket: g.group[i].bucket, cause: cause.clone() }));
                    }
                    break;
                }
            }
            if d.stopped.is_some() || done == 0 {
                break;
            }
            left = d.left;
        }
        self.tell_others(topo, (g.src, g.dst, g.dst_id), &committed).await;
        refused
    }

    /// Drains the `open` slots of `group` one by one, until `until` has passed (at least
    /// one slot): what is left is in `left`. Stops at a slot that failed (its result put
    /// in `out`) or whose target's replicas did not take it (drained, and the group
    /// committed without the rest): then says why, and which slots were not begun.
    async fn drain_group<P: Pace>(
        &self,
        g: &Pair<'_>,
        open: &[usize],
        dst_replicas: usize,
        pace: &P,
        until: Instant,
        out: &mut [Option<Outcome>],
    ) -> Drain {
        let (group, src, dst) = (g.group, g.src, g.dst);
        let mut drained = Vec::new();
        for (k, &i) in open.iter().enumerate() {
            let (mv, rest) = (group[i], &open[k + 1..]);
            match self.drain_slot(self.slot_move(mv, src, dst), dst_replicas, pace).await {
                // Its replicas did not take it: the slot is committed, nothing more drained.
                Ok(stats) if stats.unreplicated.is_some() && !rest.is_empty() => {
                    drained.push((i, stats));
                    let why = format!("the replicas of {dst} did not acknowledge slot {} first", mv.bucket);
                    return Drain { drained, stopped: Some((why, rest.to_vec())), left: Vec::new() };
                }
                Ok(stats) => drained.push((i, stats)),
                Err(e) => {
                    out[i] = Some(Err(e));
                    let why = format!("slot {} of its group failed first", mv.bucket);
                    return Drain { drained, stopped: Some((why, rest.to_vec())), left: Vec::new() };
                }
            }
            if Instant::now() >= until {
                return Drain { drained, stopped: None, left: rest.to_vec() };
            }
        }
        Drain { drained, stopped: None, left: Vec::new() }
    }

    fn slot_move<'a>(&self, mv: &Move, src: &'a str, dst: &'a str) -> SlotMove<'a> {
        // An exact size is a measurement the mover may use; a sampled one is not.
        let estimate = if self.sizer.exact() { mv.bytes } else { 0 };
        SlotMove { slot: mv.bucket as u16, src, dst, resume: false, estimate }
    }

    /// Slots of a group after one that failed (or whose target's replicas did not take
    /// it). Their keys are still on the source, but a client may have created keys on the
    /// target (a migrating source sends a key it does not hold there). The source is made stable first (it sends no more); a slot whose
    /// target holds no key is then made stable there too, one that holds some is left open
    /// for the run to settle (its keys handed back).
    async fn close_untouched(
        &self,
        group: &[&Move],
        slots: &[u16],
        rest: &[usize],
        (src, dst): (&str, &str),
        first: &str,
        out: &mut [Option<Outcome>],
    ) {
        let sources = self.nodes.setslots(src, &pick(slots, rest), &["STABLE"]).await;
        let mut empty = Vec::new();
        for (&i, s) in rest.iter().zip(sources) {
            let keys = self.nodes.count_keys(dst, slots[i]).await;
            let message = match (s, keys) {
                (Ok(()), Ok(0)) => {
                    empty.push(i);
                    continue;
                }
                (Err(e), _) => format!("not moved ({first}); STABLE on {src}: {e}"),
                (_, Ok(n)) => format!("not moved ({first}); {n} key(s) written to {dst} meanwhile"),
                (_, Err(e)) => format!("not moved ({first}); counting keys on {dst}: {e}"),
            };
            out[i] = Some(Err(ClusterError::Move { bucket: group[i].bucket, message, open: true }));
        }
        for (&i, t) in empty.iter().zip(self.nodes.setslots(dst, &pick(slots, &empty), &["STABLE"]).await) {
            let bucket = group[i].bucket;
            out[i] = Some(Err(match t {
                Ok(()) => ClusterError::NotStarted { bucket, why: first.to_string() },
                Err(e) => ClusterError::Move {
                    bucket,
                    message: format!("not moved ({first}); STABLE on {dst}: {e}"),
                    open: true,
                },
            }));
        }
    }

    /// Past the fence, assigns every drained slot to the target: the source first, then
    /// the target, each in one pipeline ([`super::commit`]); the slots committed join
    /// `told`, for the other masters. Returns the slots committed after their source
    /// refused (demoted meanwhile), or why the fence said no.
    async fn commit_drained<F: Fence>(
        &self,
        g: &Pair<'_>,
        drained: Vec<(usize, MoveStats)>,
        fence: &F,
        out: &mut [Option<Outcome>],
        told: &mut Vec<u16>,
    ) -> Result<Vec<u16>, FenceError> {
        let (group, src, dst, dst_id) = (g.group, g.src, g.dst, g.dst_id);
        if drained.is_empty() {
            return Ok(Vec::new());
        }
        // The commit fence: a holder that lost the lock leaves the slots open (and their
        // moves recorded) for the next holder's repair, which finishes them.
        if let Err(cause) = fence.check().await {
            for (i, _) in drained {
                out[i] = Some(Err(ClusterError::Fenced { bucket: group[i].bucket, cause: cause.clone() }));
            }
            return Err(cause);
        }
        let slots: Vec<u16> = drained.iter().map(|(i, _)| group[*i].bucket as u16).collect();
        let commit = self.commit(((src, g.src_id), (dst, dst_id)), &slots).await;
        let mut committed = Vec::new();
        for ((i, mut stats), r) in drained.into_iter().zip(commit.results) {
            match r {
                Ok(()) => {
                    if self.sizer.exact() && group[i].bytes > 0 {
                        // Reported in the units the snapshot measured, as one slot's move.
                        stats.bytes = group[i].bytes;
                    }
                    committed.push(group[i].bucket as u16);
                    out[i] = Some(Ok(stats));
                }
                Err(message) => out[i] = Some(Err(ClusterError::Move { bucket: group[i].bucket, message, open: true })),
            }
        }
        told.extend(committed);
        Ok(commit.demoted)
    }

    /// The slots committed to the target and source, to every other master, in one
    /// pipeline each, in parallel: once per group, so a node saves its config once.
    async fn tell_others(&self, topo: &Topology, (src, dst, dst_id): (&str, &str, &str), committed: &[u16]) {
        if committed.is_empty() {
            return;
        }
        let others = topo.masters.iter().filter(|m| m.addr != src && m.addr != dst && !m.is_failed());
        futures::future::join_all(others.map(|m| async move {
            for (slot, r) in committed.iter().zip(self.nodes.setslots(&m.addr, committed, &["NODE", dst_id]).await) {
                if let Err(e) = r {
                    debug!(slot, node = %m.addr, cause = %e, "SETSLOT NODE on another master failed; gossip will carry it");
                }
            }
        }))
        .await;
    }
}

/// A group's fixed facts: its moves and their slots, its source, target and target's id.
struct Pair<'a> {
    group: &'a [&'a Move],
    slots: &'a [u16],
    src: &'a str,
    src_id: &'a str,
    dst: &'a str,
    dst_id: &'a str,
}

/// How one stretch of draining a group ended.
struct Drain {
    drained: Vec<(usize, MoveStats)>,
    /// Why the group stopped, and the slots not begun.
    stopped: Option<(String, Vec<usize>)>,
    /// The slots still to drain when the stretch's time was up.
    left: Vec<usize>,
}

/// The slots at `idx`.
fn pick(slots: &[u16], idx: &[usize]) -> Vec<u16> {
    idx.iter().map(|&i| slots[i]).collect()
}
