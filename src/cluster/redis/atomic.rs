//! The atomic mover (Valkey 9): one `CLUSTER MIGRATESLOTS` job per group of slots that
//! share a source and a target, followed with `CLUSTER GETSLOTMIGRATIONS` on the source
//! and stopped with `CLUSTER CANCELSLOTMIGRATIONS`. The server streams a snapshot of the
//! slots and the writes made meanwhile, then ownership flips in one step: a job moves all
//! its slots or none, and no key costs the mover a round trip.
//!
//! A job that fails is tried once more in halves; what still fails moves with the legacy
//! mover (Valkey issue 4545: jobs fail under sustained heavy writes), and a warning says
//! so. A job that runs past its time is cancelled and its slots stay with the source.
//! Whatever a job reports, the result per slot is read from the nodes' own views.
//!
//! Does not own: which slots travel together (the executor forms the groups), which mover
//! runs ([`super::capabilities`]), or the legacy protocol ([`super::legacy`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::SLOTS;
use super::fallback::Fallbacks;
use super::follow::HOLD_WAIT;
use super::legacy::{Legacy, MigrateOptions};
use super::migrations::{SlotMigration, merge};
use super::nodes::Nodes;
use super::sizing::Sizer;
use super::topology::{NodeLine, Topology};
use crate::cluster::{ClusterError, Fence, FenceError, MoveStats, Pace};
use crate::model::ClusterSnapshot;
use crate::plan::Move;

/// A job gets `migrate-timeout` plus a second per this many bytes before it is taken as
/// stuck and cancelled.
const JOB_MIN_BYTES_PER_SECOND: u64 = 4 << 20;
/// A job is polled every tenth of its age within these bounds: a short job is seen to end
/// soon after it does, a long one costs the source few replies (GETSLOTMIGRATIONS lists
/// up to `cluster-slot-migration-log-max-len` jobs, 1000 by default, in every reply).
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(200);
/// How long the nodes' views may take to show a finished job's new owner.
const SETTLE: Duration = Duration::from_secs(5);

/// How one try at moving a set of slots ended, read from the nodes.
struct Attempt {
    /// Slots the target owns now.
    moved: Vec<u16>,
    /// Slots the source still owns.
    left: Vec<u16>,
    /// Slots neither claims (Valkey issue 2724: an epoch bump during a job).
    lost: Vec<u16>,
    /// Why not everything moved (the server's message).
    why: String,
    next: Next,
}

/// What to do with the slots an attempt left with the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The job failed: smaller jobs may pass.
    Retry,
    /// The server refused the job: the legacy mover may still work.
    Legacy,
    /// Cancelled, timed out, or possibly moved with lost writes: report, do not retry.
    Stop,
}

/// How one slot of a group ended.
pub(super) enum SlotEnd {
    Moved,
    MovedByLegacy(MoveStats),
    Failed(ClusterError),
}

/// The atomic mover: a part holding no state of its own, borrowing the nodes, the sizer
/// and the gates that keep legacy fallbacks off nodes where jobs run ([`super::fallback`]).
pub(super) struct Atomic<'a> {
    pub(super) nodes: &'a Nodes,
    pub(super) sizer: &'a Sizer,
    pub(super) opts: MigrateOptions,
    pub(super) fallbacks: &'a Fallbacks,
    /// The masters answer CLUSTER SLOT-STATS (key counts in one call).
    pub(super) slot_stats: bool,
}

impl Atomic<'_> {
    /// The legacy mover over the same nodes, for a job's fallback.
    pub(super) fn legacy(&self) -> Legacy<'_> {
        Legacy { nodes: self.nodes, sizer: self.sizer, opts: self.opts }
    }

    /// Moves `group` (one source, one target) as one job; one result per move.
    pub(super) async fn group<P: Pace, F: Fence>(
        &self,
        s: &ClusterSnapshot,
        group: &[&Move],
        pace: &P,
        fence: &F,
    ) -> Vec<Result<MoveStats, ClusterError>> {
        let fail = |mv: &Move, message: String| ClusterError::Move { bucket: mv.bucket, message, open: false };
        let src = s.members[group[0].from as usize].address.clone();
        let dst = s.members[group[0].to as usize].address.clone();
        let mut slots = Vec::with_capacity(group.len());
        for mv in group {
            match u16::try_from(mv.bucket).ok().filter(|&x| (x as usize) < SLOTS) {
                Some(slot) => slots.push(slot),
                None => return group.iter().map(|mv| Err(fail(mv, "not a hash slot".into()))).collect(),
            }
        }
        let topo = match self.nodes.topology_of(s).await {
            Ok(t) => t,
            Err(e) => return group.iter().map(|mv| Err(fail(mv, e.to_string()))).collect(),
        };
        let dst_id = match self.nodes.node_id_of(&topo, &dst) {
            Ok(id) => id,
            Err(e) => return group.iter().map(|mv| Err(fail(mv, e.to_string()))).collect(),
        };
        let bytes: u64 = group.iter().map(|mv| mv.bytes).sum();
        let estimates: HashMap<u16, u64> = slots.iter().copied().zip(group.iter().map(|mv| mv.bytes)).collect();
        pace.take(bytes).await;
        let started = Instant::now();
        // Keys are reported in the snapshot's units, as bytes are: the counts its sizes
        // were taken at. A slot the cache does not hold has its keys counted on the
        // source, asked for first on its connection, which the server answers in order:
        // read before the job starts, without waiting for them.
        let cached: Option<Vec<u64>> = slots.iter().map(|s| self.sizer.cached_keys(*s)).collect();
        let counting = async {
            match cached {
                Some(keys) => Ok(keys),
                None => self.sizer.key_counts(&self.nodes.conns, &src, &slots, self.slot_stats).await,
            }
        };
        let (keys, mut ends) =
            tokio::join!(counting, self.transfer(&topo, (&src, &dst, &dst_id), &slots, &estimates, fence));
        let keys = keys.unwrap_or_else(|_| vec![0; slots.len()]);
        // The job's data reached the target; its replicas must hold it before the run
        // goes on (the legacy mover waits for its own slots).
        let behind = match slots.iter().copied().find(|s| matches!(ends.get(s), Some(SlotEnd::Moved))) {
            Some(slot) => self.nodes.replicas_hold(slot, &dst, topo.replica_count(&dst_id), HOLD_WAIT).await,
            None => None,
        };
        let measured = self.measured_moved(&dst, &slots, &keys, &ends).await;
        let mut out = Vec::with_capacity(group.len());
        for ((mv, slot), keys) in group.iter().zip(&slots).zip(keys) {
            self.sizer.forget(*slot);
            out.push(match ends.remove(slot) {
                Some(SlotEnd::Moved) => {
                    let bytes = measured.get(slot).copied().unwrap_or(mv.bytes);
                    Ok(MoveStats { keys, bytes, fallback: false, unreplicated: behind.clone(), ..Default::default() })
                }
                // An exact size is reported in the snapshot's units, as move_bucket does; a
                // sampled one is not a measurement, and the legacy mover measured the keys.
                Some(SlotEnd::MovedByLegacy(stats)) if self.sizer.exact() && mv.bytes > 0 => {
                    Ok(MoveStats { bytes: mv.bytes, fallback: true, ..stats })
                }
                Some(SlotEnd::MovedByLegacy(stats)) => Ok(MoveStats { fallback: true, ..stats }),
                Some(SlotEnd::Failed(e)) => Err(e),
                None => Err(fail(mv, "no outcome recorded".into())),
            });
        }
        let moved = out.iter().filter(|r| r.is_ok()).count();
        info!(from = %src, to = %dst, slots = slots.len(), moved, bytes, ms = started.elapsed().as_millis() as u64, "atomic group done");
        out
    }

    /// The bytes of the slots a job moved, measured on the target where the snapshot's
    /// sizes were sampled (an exact size is the measurement, taken at the snapshot). A
    /// slot that cannot be measured keeps the snapshot's figure, with a warning.
    async fn measured_moved(
        &self,
        dst: &str,
        slots: &[u16],
        keys: &[u64],
        ends: &HashMap<u16, SlotEnd>,
    ) -> HashMap<u16, u64> {
        if self.sizer.exact() {
            return HashMap::new();
        }
        let moved: Vec<(u16, u64)> = slots
            .iter()
            .zip(keys)
            .filter(|(s, _)| matches!(ends.get(s), Some(SlotEnd::Moved)))
            .map(|(s, k)| (*s, *k))
            .collect();
        match self.sizer.measure_whole(&self.nodes.conns, dst, &moved).await {
            Ok(bytes) => moved.iter().map(|(s, _)| *s).zip(bytes).collect(),
            Err(e) => {
                warn!(target = %dst, slots = moved.len(), cause = %e, "could not measure the bytes moved; reporting the snapshot's");
                HashMap::new()
            }
        }
    }

    /// Moves `slots` from `src` to `dst`: a job, then halves of what it left, then the
    /// legacy mover for what still did not move.
    /// The legacy mover commits only past `fence`.
    async fn transfer<F: Fence>(
        &self,
        topo: &Topology,
        (src, dst, dst_id): (&str, &str, &str),
        slots: &[u16],
        estimates: &HashMap<u16, u64>,
        fence: &F,
    ) -> HashMap<u16, SlotEnd> {
        let bytes_of = |s: &[u16]| s.iter().map(|x| estimates.get(x).copied().unwrap_or(0)).sum::<u64>();
        let mut ends = HashMap::new();
        let jobs = self.fallbacks.share(src, dst).await;
        let first = self.attempt(src, dst, dst_id, slots, bytes_of(slots)).await;
        let mut legacy: Vec<u16> = Vec::new();
        let mut why = first.why.clone();
        match first.next {
            Next::Retry if !first.left.is_empty() => {
                warn!(from = %src, to = %dst, slots = first.left.len(), cause = %first.why, "atomic migration job failed; trying again in halves");
                let mid = first.left.len().div_ceil(2);
                for half in [&first.left[..mid], &first.left[mid..]].into_iter().filter(|h| !h.is_empty()) {
                    // A job started is a move started: only while the lock is ours.
                    if let Err(cause) = fence.check().await {
                        fenced(&mut ends, half, &cause);
                        continue;
                    }
                    let again = self.attempt(src, dst, dst_id, half, bytes_of(half)).await;
                    if again.next == Next::Stop {
                        record(&mut ends, &again.left, src, &again.why, false);
                    } else {
                        legacy.extend(&again.left);
                        why = again.why.clone();
                    }
                    record_settled(&mut ends, &again, src);
                }
            }
            Next::Legacy => legacy = first.left.clone(),
            _ => record(&mut ends, &first.left, src, &first.why, false),
        }
        record_settled(&mut ends, &first, src);
        drop(jobs);
        ends.extend(self.fall_back(topo, (src, dst), &legacy, estimates, &why, fence).await);
        ends
    }

    /// One job for `slots`, then who owns them.
    async fn attempt(&self, src: &str, dst: &str, dst_id: &str, slots: &[u16], bytes: u64) -> Attempt {
        let (why, next, name) = self.run_job(src, dst_id, slots, bytes).await;
        if let Some(name) = name.as_deref().filter(|_| next != Next::Stop) {
            self.wait_import_end(dst, name).await;
        }
        let mut a = self.ownership(src, dst, slots, why.is_empty()).await;
        if !a.left.is_empty() || !a.lost.is_empty() {
            a.why =
                if why.is_empty() { format!("job reported success but {dst} does not own every slot") } else { why };
            a.next = next;
        }
        a
    }

    /// Starts a job and follows it to its end. Returns why it did not succeed (empty when
    /// it did), what to do next, and the job's name when it was seen.
    async fn run_job(&self, src: &str, dst_id: &str, slots: &[u16], bytes: u64) -> (String, Next, Option<String>) {
        let ranges = merge(slots);
        let before: Vec<String> = match self.nodes.slot_migrations(src).await {
            Ok(jobs) => jobs.into_iter().map(|j| j.name).collect(),
            Err(e) => return (format!("CLUSTER GETSLOTMIGRATIONS on {src}: {e}"), Next::Legacy, None),
        };
        let mut c = redis::cmd("CLUSTER");
        c.arg("MIGRATESLOTS").arg("SLOTSRANGE");
        for (a, b) in &ranges {
            c.arg(*a).arg(*b);
        }
        c.arg("NODE").arg(dst_id);
        if let Err(e) = self.nodes.conns.query::<()>(src, &c).await {
            let next = if demoted(&e) { Next::Stop } else { Next::Legacy };
            return (format!("CLUSTER MIGRATESLOTS refused by {e}"), next, None);
        }
        debug!(node = %src, target = %dst_id, slots = slots.len(), "atomic job started");
        let limit = self.opts.timeout + Duration::from_secs(bytes / JOB_MIN_BYTES_PER_SECOND);
        let started = Instant::now();
        let mut name = None;
        loop {
            tokio::time::sleep((started.elapsed() / 10).clamp(POLL_FIRST, POLL_MAX)).await;
            match self.nodes.slot_migrations(src).await {
                Ok(jobs) => {
                    let ours = jobs.into_iter().find(|j| match &name {
                        Some(n) => &j.name == n,
                        None => !before.contains(&j.name) && j.target_node == dst_id && j.slot_ranges == ranges,
                    });
                    let Some(job) = ours else {
                        // Dropped from the log already: the views will tell.
                        return ("the job left the source's list before it was seen to end".into(), Next::Stop, name);
                    };
                    if job.has_ended() {
                        debug!(job = %job.name, state = %job.state, ms = started.elapsed().as_millis() as u64, "atomic job ended");
                        return job_end(job);
                    }
                    name = Some(job.name);
                }
                Err(e) => debug!(node = %src, cause = %e, "CLUSTER GETSLOTMIGRATIONS failed; polling again"),
            }
            if started.elapsed() > limit {
                self.cancel(src).await;
                let why = format!("atomic migration job did not finish within {limit:?}; cancelled on {src}");
                return (why, Next::Stop, name);
            }
        }
    }

    /// `CLUSTER CANCELSLOTMIGRATIONS` on the source: every job it exports stops.
    async fn cancel(&self, src: &str) {
        match self.nodes.conns.query::<()>(src, redis::cmd("CLUSTER").arg("CANCELSLOTMIGRATIONS")).await {
            Ok(()) => warn!(node = %src, "cancelled the atomic migration jobs of the source"),
            Err(e) if e.contains("No migrations ongoing") => {}
            Err(e) => warn!(node = %src, cause = %e, "CLUSTER CANCELSLOTMIGRATIONS failed"),
        }
    }

    /// Waits (bounded) until the target has ended its side of job `name`, so the slots
    /// can be tried again: a live import refuses new jobs and SETSLOT for them.
    async fn wait_import_end(&self, dst: &str, name: &str) {
        let deadline = Instant::now() + self.opts.timeout.min(SETTLE);
        loop {
            let live = match self.nodes.slot_migrations(dst).await {
                Ok(jobs) => jobs.iter().any(|j| j.name == name && !j.has_ended()),
                Err(_) => false,
            };
            if !live {
                return;
            }
            if Instant::now() > deadline {
                warn!(node = %dst, job = %name, "the target's side of the job has not ended");
                return;
            }
            tokio::time::sleep(POLL_FIRST).await;
        }
    }

    /// A node's own line of CLUSTER NODES, if it answers.
    async fn myself(&self, addr: &str) -> Option<NodeLine> {
        self.nodes.cluster_nodes(addr).await.ok()?.into_iter().find(|n| n.is_myself())
    }

    /// Who owns `slots` now: the source's own claim first (a job flips ownership only
    /// after the source agrees, so a slot it still claims has not moved), then the
    /// target's. Waits a little for the views to agree: for every slot to show on the
    /// target after a job that `succeeded`, for no slot to be without owner otherwise.
    async fn ownership(&self, src: &str, dst: &str, slots: &[u16], succeeded: bool) -> Attempt {
        let deadline = Instant::now() + SETTLE;
        loop {
            let at_src = self.myself(src).await;
            let (mut moved, mut left, mut lost) = (Vec::new(), Vec::new(), Vec::new());
            let gone: Vec<u16> =
                slots.iter().copied().filter(|&s| !at_src.as_ref().is_some_and(|n| n.owns(s))).collect();
            let at_dst = if gone.is_empty() { None } else { self.myself(dst).await };
            for &s in slots {
                if at_src.as_ref().is_some_and(|n| n.owns(s)) {
                    left.push(s);
                } else if at_dst.as_ref().is_some_and(|n| n.owns(s)) {
                    moved.push(s);
                } else {
                    lost.push(s);
                }
            }
            let settled = lost.is_empty() && (!succeeded || left.is_empty());
            if settled || Instant::now() > deadline {
                return Attempt { moved, left, lost, why: String::new(), next: Next::Stop };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a job's end means for its slots.
fn job_end(job: SlotMigration) -> (String, Next, Option<String>) {
    let why = format!("atomic migration job {} {}: {}", job.name, job.state, job.message);
    let next = match job.state.as_str() {
        "success" => return (String::new(), Next::Stop, Some(job.name)),
        // The target may hold the slots with writes lost: a person should look.
        "failed" if job.message.contains("may have succeeded") => Next::Stop,
        // A side is no longer a primary (failed over since the plan): neither a smaller
        // job nor the legacy mover would pass; the next run plans on the new roles.
        "failed" if demoted(&job.message) => Next::Stop,
        "failed" => Next::Retry,
        _ => Next::Stop,
    };
    (why, next, Some(job.name))
}

/// Whether the server's `message` says a side of the job is not a primary.
fn demoted(message: &str) -> bool {
    message.contains("only be used on primary")
}

/// Records the moved and lost slots of an attempt.
fn record_settled(ends: &mut HashMap<u16, SlotEnd>, a: &Attempt, src: &str) {
    for &s in &a.moved {
        ends.entry(s).or_insert(SlotEnd::Moved);
    }
    let why = format!("no master claims the slot after the job ({})", a.why);
    record(ends, &a.lost, src, &why, true);
}

/// Slots not started because the fence said no.
fn fenced(ends: &mut HashMap<u16, SlotEnd>, slots: &[u16], cause: &FenceError) {
    for &s in slots {
        let e = ClusterError::FencedBeforeStart { bucket: s as u64, cause: cause.clone() };
        ends.entry(s).or_insert(SlotEnd::Failed(e));
    }
}

fn record(ends: &mut HashMap<u16, SlotEnd>, slots: &[u16], src: &str, why: &str, open: bool) {
    for &s in slots {
        let message = if open { why.to_string() } else { format!("{why}; the slot stays with {src}") };
        ends.entry(s).or_insert(SlotEnd::Failed(ClusterError::Move { bucket: s as u64, message, open }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(message: &str) -> SlotMigration {
        SlotMigration {
            name: "j".into(),
            operation: "EXPORT".into(),
            slot_ranges: vec![(1, 2)],
            source_node: "s".into(),
            target_node: "t".into(),
            state: "failed".into(),
            message: message.into(),
        }
    }

    /// A job that failed under writes is tried again in halves; one whose target is no
    /// longer a primary stops, its slots left with the source, instead of handing every
    /// slot to a legacy mover the replica would refuse too (nemesis, Valkey seed 62:
    /// 1,142 fallbacks after a target was failed over).
    #[test]
    fn a_job_whose_target_was_demoted_stops() {
        assert_eq!(job_end(failed("Connection lost")).1, Next::Retry);
        let demoted =
            "Received error during handshake to target: -ERR Slot migration can only be used on primary nodes.";
        assert_eq!(job_end(failed(demoted)).1, Next::Stop);
        assert_eq!(job_end(failed("Slot migration may have succeeded")).1, Next::Stop);
    }
}
