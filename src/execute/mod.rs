//! The executor: carries out a plan's moves within the limits, fenced by the lock.
//!
//! Owns: concurrency (`max-concurrent-moves`, `max-moves-per-member`), pacing
//! (`max-bytes-per-second`), the per-run byte budget, the deadline, stopping at a safe
//! point, and the run's report (its per-member figures: `MemberReport::of_run`). Does
//! not own: how a bucket moves (the backend), whether the lock is held (the fence
//! answers), or how long a shutdown may wait for the moves in flight (the daemon bounds
//! that).
//!
//! Layout: [`limits`] the limits, pacing and progress; [`room`] the target's memory read
//! before each move; [`stop`] why a run ends early.
//!
//! Moves start in plan order (most valuable first), each when its two members have a free
//! slot. Before each start the fence is asked whether the lock is still ours. A stop
//! (cancel, deadline, lost lock) lets moves in flight finish and starts no more.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, ClusterError, MoveStats};
pub use crate::coord::{Fence, FenceError};
pub use limits::{Limits, Progress, RatePacer};

mod limits;
mod room;
use room::RoomFor;
mod stop;
use crate::metrics::{Metrics, MoveOutcome};
use crate::model::ClusterSnapshot;
use crate::plan::{Move, Plan};
use crate::report::MemberReport;
pub use stop::StopReason;

/// How often a running rebalance logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub moves_planned: u64,
    pub moves_done: u64,
    pub moves_failed: u64,
    /// Moves not started (stop, budget, room).
    pub moves_not_started: u64,
    /// Of those, moves held back because their target had no room.
    pub moves_no_room: u64,
    pub moved_bytes: u64,
    /// Moves the legacy mover made after an atomic job failed twice.
    pub moves_by_fallback: u64,
    pub duration_seconds: f64,
    pub stopped: Option<StopReason>,
    /// One line per failed move.
    pub failures: Vec<String>,
    /// Buckets left mid-migration by a failure (to repair before the next plan).
    pub open_buckets: Vec<u64>,
    pub members: Vec<MemberReport>,
}

/// What one execution works on: the backend, the plan and its snapshot, the limits, the
/// fence, and where progress and metrics go.
pub struct Job<'a, C, F> {
    pub cluster: &'a C,
    pub snapshot: &'a ClusterSnapshot,
    pub plan: &'a Plan,
    pub limits: &'a Limits,
    pub fence: &'a F,
    pub progress: &'a Progress,
    pub metrics: &'a Metrics,
    /// Cancelled when the lock's keep-alive is lost: the run stops as on a stop request,
    /// saying `lock_lost`.
    pub lost: Option<&'a CancellationToken>,
}

/// Runs the plan's moves. Returns when every move is done, or at the first safe point
/// after a stop.
pub async fn execute<C: Cluster, F: Fence>(job: Job<'_, C, F>, cancel: &CancellationToken) -> RunReport {
    let mut ex = Executor::new(job);
    loop {
        ex.check_stop(cancel);
        ex.start_ready().await;
        if ex.inflight.is_empty() {
            break;
        }
        ex.next_event(cancel).await;
    }
    ex.report()
}

/// A finished move: its index in the plan, what the backend said, how long it took.
type Finished = (usize, Result<MoveStats, ClusterError>, Duration);

/// Slots in one group at most, for a backend that moves groups as one unit. Bytes bound
/// a group's time; this bounds its size on the servers. A Valkey job costs about 0.2 s
/// whatever its size, so fewer, larger groups move a plan faster.
const GROUP_SLOTS: usize = 4096;
/// Bytes in one group when no rate limits the run: stops and deadlines are checked
/// between groups, so a group stays short.
const GROUP_BYTES: u64 = 256 << 20;
/// With a rate, a group carries this many seconds' worth of bytes: a stop waits for the
/// group in flight, and servers slower than the rate take longer than this over it, so
/// it stays well inside the default 20 s `shutdown-timeout`.
const GROUP_SECONDS: u64 = 5;

/// One run's moves in progress: what waits, who is busy, what came of each move.
struct Executor<'a, C, F> {
    job: Job<'a, C, F>,
    pacer: Arc<RatePacer>,
    started: Instant,
    deadline: Instant,
    /// Plan indexes not started yet, in plan order.
    pending: VecDeque<usize>,
    inflight: FuturesUnordered<BoxFuture<'a, Vec<Finished>>>,
    /// Moves in flight per member.
    busy: Vec<u32>,
    /// Bytes of moves started (the budget counts these).
    committed: u64,
    /// Moves left for the next run because they would pass max-bytes-per-run.
    deferred: u64,
    /// Moves held back because their target had no room, and the targets found full.
    no_room: u64,
    full: Vec<bool>,
    /// Bytes of the moves in flight to each member: its memory, read before a move, may
    /// not show them yet.
    incoming: Vec<u64>,
    stopped: Option<StopReason>,
    done: Vec<&'a Move>,
    failed: u64,
    failures: Vec<String>,
    open_buckets: Vec<u64>,
    moved_bytes: u64,
    by_fallback: u64,
    last_progress: Instant,
}

impl<'a, C: Cluster, F: Fence> Executor<'a, C, F> {
    fn new(job: Job<'a, C, F>) -> Self {
        let plan = job.plan;
        let planned_bytes: u64 = plan.moves.iter().map(|m| m.bytes).sum();
        job.progress.reset(plan.moves.len() as u64, planned_bytes);
        job.metrics.rebalance_moves_planned.set(plan.moves.len() as i64);
        job.metrics.rebalance_moves_done.set(0);
        job.metrics.rebalance_in_progress.set(1);
        let started = Instant::now();
        Executor {
            pacer: Arc::new(RatePacer::new(job.limits.max_bytes_per_second)),
            started,
            deadline: started + job.limits.max_run_time,
            pending: (0..plan.moves.len()).collect(),
            inflight: FuturesUnordered::new(),
            busy: vec![0; job.snapshot.members.len()],
            committed: 0,
            deferred: 0,
            no_room: 0,
            full: vec![false; job.snapshot.members.len()],
            incoming: vec![0; job.snapshot.members.len()],
            stopped: None,
            done: Vec::new(),
            failed: 0,
            failures: Vec::new(),
            open_buckets: Vec::new(),
            moved_bytes: 0,
            by_fallback: 0,
            last_progress: started,
            job,
        }
    }

    /// Starts what the limits allow, in plan order: a move whose members are both below
    /// their limit, within the byte budget, once the fence says the lock is still ours.
    async fn start_ready(&mut self) {
        let limits = self.job.limits;
        let moves = &self.job.plan.moves;
        let mut i = 0;
        while self.stopped.is_none()
            && (limits.max_concurrent_moves == 0 || self.inflight.len() < limits.max_concurrent_moves as usize)
            && i < self.pending.len()
        {
            let mv = &moves[self.pending[i]];
            let (f, t) = (mv.from as usize, mv.to as usize);
            if self.busy[f] >= limits.max_moves_per_member || self.busy[t] >= limits.max_moves_per_member {
                i += 1;
                continue;
            }
            if limits.max_bytes_per_run > 0 && self.committed + mv.bytes > limits.max_bytes_per_run {
                // Waits for the next run; smaller moves further down may still fit.
                self.pending.remove(i);
                self.deferred += 1;
                let budget = limits.max_bytes_per_run;
                if self.pending.iter().all(|&j| self.committed + moves[j].bytes > budget) {
                    self.stopped = Some(StopReason::Budget);
                }
                continue;
            }
            if self.full[t] {
                // Found full earlier this run: no round trip to learn it again.
                self.hold_back(i, t, 0);
                continue;
            }
            let fence = self.job.fence;
            if let Err(e) = self.polling(fence.check()).await {
                warn!(cause = %e, "lock check failed before a move: stopping");
                self.stopped = Some(StopReason::LockLost);
                break;
            }
            if self.stopped.is_some() {
                // A move that finished during the check failed: start nothing more.
                break;
            }
            let room = match self.room_for(i, t, mv.bytes).await {
                RoomFor::Stop => break,
                RoomFor::Full => continue,
                RoomFor::Wait => {
                    i += 1;
                    continue;
                }
                RoomFor::Fits(room) => room,
            };
            let idx = self.pending.remove(i).expect("index in range");
            let group = self.group_with(idx, room);
            self.start(group);
        }
    }

    /// A check before a move (the fence, a target's room), while the moves in flight go
    /// on being polled. A move waiting for a lock the check also takes (an async mutex
    /// hands it to waiters in turn) must be polled to take and release it; awaiting the
    /// check alone would wait for a move that is never polled again. Moves that finish
    /// meanwhile are booked.
    async fn polling<T>(&mut self, check: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(check);
        loop {
            tokio::select! {
                r = &mut check => return r,
                Some(finished) = self.inflight.next() => self.book(finished),
            }
        }
    }

    /// Frees the members of a finished move (or group) and books each result.
    fn book(&mut self, finished: Vec<Finished>) {
        let first = &self.job.plan.moves[finished[0].0];
        self.busy[first.from as usize] -= 1;
        self.busy[first.to as usize] -= 1;
        let bytes: u64 = finished.iter().map(|f| self.job.plan.moves[f.0].bytes).sum();
        let landed = self.in_flight(bytes);
        self.incoming[first.to as usize] = self.incoming[first.to as usize].saturating_sub(landed);
        finished.into_iter().for_each(|f| self.take_finished(f));
    }

    /// `idx` and, for a backend that moves groups as one unit, the pending moves that
    /// share its source and target, in plan order, within the group's size and the run's
    /// byte budget. They leave `pending`.
    /// `room`: what the target may still receive, when it has a limit.
    fn group_with(&mut self, idx: usize, room: Option<u64>) -> Vec<usize> {
        let moves = &self.job.plan.moves;
        let mut group = vec![idx];
        if !self.job.cluster.groups_moves() {
            return group;
        }
        let limits = self.job.limits;
        let cap = match limits.max_bytes_per_second {
            0 => GROUP_BYTES,
            rate => rate.saturating_mul(GROUP_SECONDS),
        };
        let cap = room.map_or(cap, |r| cap.min(r));
        let (from, to) = (moves[idx].from, moves[idx].to);
        let mut bytes = moves[idx].bytes;
        let mut k = 0;
        while k < self.pending.len() && group.len() < GROUP_SLOTS {
            let m = &moves[self.pending[k]];
            let fits_budget =
                limits.max_bytes_per_run == 0 || self.committed + bytes + m.bytes <= limits.max_bytes_per_run;
            if m.from == from && m.to == to && bytes + m.bytes <= cap && fits_budget {
                bytes += m.bytes;
                group.push(self.pending.remove(k).expect("index in range"));
            } else {
                k += 1;
            }
        }
        group
    }

    /// Starts the moves at plan indexes `group` (one move, or a group moved as one).
    fn start(&mut self, group: Vec<usize>) {
        let moves = &self.job.plan.moves;
        // A group is one move for the members' limits: one job on the servers.
        let first = &moves[group[0]];
        self.busy[first.from as usize] += 1;
        self.busy[first.to as usize] += 1;
        let bytes: u64 = group.iter().map(|&idx| moves[idx].bytes).sum();
        self.committed += bytes;
        self.incoming[first.to as usize] += self.in_flight(bytes);
        let (cluster, snapshot, pacer, fence) =
            (self.job.cluster, self.job.snapshot, self.pacer.clone(), self.job.fence);
        self.inflight.push(Box::pin(async move {
            let t0 = Instant::now();
            // A backend that moves groups gets a group of one as a group: its chosen
            // mover moves it (a lone slot moved the legacy way beside atomic jobs makes
            // Valkey refuse every job on its nodes while it is open).
            if let [idx] = group[..]
                && !cluster.groups_moves()
            {
                let r = cluster.move_bucket(snapshot, &moves[idx], pacer.as_ref(), fence).await;
                return vec![(idx, r, t0.elapsed())];
            }
            let batch: Vec<Move> = group.iter().map(|&i| moves[i].clone()).collect();
            let results = cluster.move_group(snapshot, &batch, pacer.as_ref(), fence).await;
            let took = t0.elapsed();
            group.into_iter().zip(results).map(|(idx, r)| (idx, r, took)).collect()
        }));
    }

    /// Waits for a move to finish, a cancel, or the deadline; whichever comes first.
    async fn next_event(&mut self, cancel: &CancellationToken) {
        let deadline = tokio::time::sleep_until(self.deadline.into());
        let running = self.stopped.is_none();
        let never = CancellationToken::new();
        let lost = self.job.lost.unwrap_or(&never);
        tokio::select! {
            Some(finished) = self.inflight.next() => self.book(finished),
            _ = lost.cancelled(), if running => {
                warn!(in_flight = self.inflight.len(), "the lock's keep-alive was lost: finishing moves in flight");
                self.stopped = Some(StopReason::LockLost);
            }
            _ = cancel.cancelled(), if running => {
                info!(in_flight = self.inflight.len(), "stop requested: finishing moves in flight");
                self.stopped = Some(StopReason::Cancelled);
            }
            _ = deadline, if running => {
                info!(in_flight = self.inflight.len(), "max-run-time reached: finishing moves in flight");
                self.stopped = Some(StopReason::Deadline);
            }
        }
    }

    /// Books a finished move: frees its members, counts it done or failed.
    fn take_finished(&mut self, (idx, res, took): Finished) {
        let mv = &self.job.plan.moves[idx];
        let (metrics, progress) = (self.job.metrics, self.job.progress);
        metrics.move_duration_seconds.observe(took.as_secs_f64());
        match res {
            Ok(stats) => {
                // What the backend measured moving, not the plan's figure.
                self.done.push(mv);
                self.moved_bytes += stats.bytes;
                self.by_fallback += stats.fallback as u64;
                metrics.keys_set_aside_total.inc_by(stats.set_aside.len() as u64);
                if let Some(why) = &stats.unreplicated {
                    // Moved, but one failover from lost: move nothing more into any shard
                    // this run; the next run finds the replica caught up or says so again.
                    // Said once per cause: a job's slots share theirs.
                    metrics.moves_unreplicated_total.inc();
                    if !self.failures.contains(why) {
                        warn!(bucket = mv.bucket, cause = %why, "a target's replica is behind: starting no more moves");
                        self.failures.push(why.clone());
                    }
                    self.stopped.get_or_insert(StopReason::ReplicasBehind);
                }
                progress.done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(stats.bytes, Ordering::Relaxed);
                metrics.count_move(MoveOutcome::Done, 1);
                metrics.moved_bytes_total.inc_by(stats.bytes);
                metrics.rebalance_moves_done.inc();
                let members = &self.job.snapshot.members;
                debug!(bucket = mv.bucket, from = %members[mv.from as usize].id, to = %members[mv.to as usize].id,
                       bytes = mv.bytes, keys = stats.keys, seconds = took.as_secs_f64(), "moved bucket");
                self.log_progress();
            }
            // An earlier move of its group stopped it, and said why.
            Err(ClusterError::NotStarted { .. }) => self.deferred += 1,
            Err(e @ (ClusterError::Fenced { .. } | ClusterError::FencedBeforeStart { .. })) => {
                warn!(bucket = mv.bucket, cause = %e, "the lock was lost: starting no more moves");
                metrics.count_move(MoveOutcome::LockLost, 1);
                // Refused before the commit, the bucket is left open; refused before the
                // start, it never opened.
                if matches!(e, ClusterError::Fenced { .. }) {
                    self.open_buckets.push(mv.bucket);
                }
                self.stopped.get_or_insert(StopReason::LockLost);
            }
            Err(e) => {
                self.failed += 1;
                progress.failed.fetch_add(1, Ordering::Relaxed);
                metrics.count_move(MoveOutcome::Failed, 1);
                warn!(bucket = mv.bucket, cause = %e, "move failed: starting no more moves");
                if let ClusterError::Move { open: true, .. } = e {
                    self.open_buckets.push(mv.bucket);
                }
                self.failures.push(e.to_string());
                // A failure may mean the cluster changed under us: finish what runs,
                // start nothing new, let the next run re-plan.
                self.stopped.get_or_insert(StopReason::MoveFailed);
            }
        }
    }

    fn log_progress(&mut self) {
        if self.last_progress.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_progress = Instant::now();
        let plan = self.job.plan;
        info!(
            moves_done = self.done.len(),
            moves_planned = plan.moves.len(),
            moved_bytes = self.moved_bytes,
            bytes_planned = self.job.progress.bytes_planned.load(Ordering::Relaxed),
            "progress"
        );
    }

    /// The run's report, once nothing is in flight.
    fn report(self) -> RunReport {
        let not_started = self.pending.len() as u64 + self.deferred + self.no_room;
        let mut stopped = self.stopped;
        let metrics = self.job.metrics;
        if not_started > 0 {
            metrics.count_move(MoveOutcome::NotStarted, not_started);
            stopped.get_or_insert(if self.no_room > 0 { StopReason::NoRoom } else { StopReason::Budget });
        }
        metrics.rebalance_in_progress.set(0);
        let plan = self.job.plan;
        RunReport {
            moves_planned: plan.moves.len() as u64,
            moves_done: self.done.len() as u64,
            moves_failed: self.failed,
            moves_not_started: not_started,
            moves_no_room: self.no_room,
            moved_bytes: self.moved_bytes,
            moves_by_fallback: self.by_fallback,
            duration_seconds: self.started.elapsed().as_secs_f64(),
            stopped,
            failures: self.failures,
            open_buckets: self.open_buckets,
            members: MemberReport::of_run(plan, &self.done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{MoveStats, Pace};
    use crate::model::fixtures::*;
    use crate::plan::{PlanOptions, plan};
    use std::sync::atomic::AtomicUsize;

    /// The lock always ours: the executor's own logic under test, not the coordinator's.
    struct NoFence;

    impl Fence for NoFence {
        async fn check(&self) -> Result<(), FenceError> {
            Ok(())
        }
    }

    /// A backend that records moves and takes `delay` per move.
    struct Recorder {
        delay: Duration,
        running: AtomicUsize,
        max_running: AtomicUsize,
        moves: std::sync::Mutex<Vec<u64>>,
        fail_bucket: Option<u64>,
        /// Moved, but its target's replicas said to be behind.
        behind_bucket: Option<u64>,
        /// A move of this bucket found a key with two values and set one aside.
        aside_bucket: Option<u64>,
        /// Moves groups as one unit, recording each group's (from, to, bytes) moves.
        grouping: bool,
        groups: std::sync::Mutex<Vec<Vec<(u32, u32, u64)>>>,
        running_groups: AtomicUsize,
        max_groups: AtomicUsize,
    }

    /// The backend methods no executor test reaches: a run's snapshot and repair happen
    /// before the executor.
    macro_rules! no_snapshot_or_repair {
        () => {
            async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
                unreachable!()
            }
            async fn repair<F: Fence>(
                &self,
                _: &crate::cluster::RepairOptions,
                _: &F,
            ) -> Result<crate::cluster::RepairReport, ClusterError> {
                Ok(Default::default())
            }
        };
    }

    impl Recorder {
        fn new(delay_ms: u64) -> Recorder {
            Recorder {
                delay: Duration::from_millis(delay_ms),
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
                moves: Default::default(),
                fail_bucket: None,
                behind_bucket: None,
                aside_bucket: None,
                grouping: false,
                groups: Default::default(),
                running_groups: AtomicUsize::new(0),
                max_groups: AtomicUsize::new(0),
            }
        }
    }

    impl Cluster for Recorder {
        no_snapshot_or_repair!();
        async fn move_bucket<P: Pace, F: Fence>(
            &self,
            _s: &ClusterSnapshot,
            mv: &Move,
            pace: &P,
            _fence: &F,
        ) -> Result<MoveStats, ClusterError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            pace.take(mv.bytes).await;
            tokio::time::sleep(self.delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if Some(mv.bucket) == self.fail_bucket {
                return Err(ClusterError::Move { bucket: mv.bucket, message: "boom".into(), open: true });
            }
            self.moves.lock().unwrap().push(mv.bucket);
            let unreplicated =
                (Some(mv.bucket) == self.behind_bucket).then(|| "0 of the 1 replica(s) of b".to_string());
            let set_aside = (Some(mv.bucket) == self.aside_bucket)
                .then(|| crate::cluster::SetAside {
                    bucket: mv.bucket,
                    key: "k".into(),
                    aside: "k:aside".into(),
                    node: "n".into(),
                })
                .into_iter()
                .collect();
            Ok(MoveStats { keys: 1, bytes: mv.bytes, fallback: false, unreplicated, set_aside })
        }
        fn groups_moves(&self) -> bool {
            self.grouping
        }
        async fn move_group<P: Pace, F: Fence>(
            &self,
            _s: &ClusterSnapshot,
            moves: &[Move],
            _pace: &P,
            _fence: &F,
        ) -> Vec<Result<MoveStats, ClusterError>> {
            self.groups.lock().unwrap().push(moves.iter().map(|m| (m.from, m.to, m.bytes)).collect());
            let now = self.running_groups.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_groups.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.running_groups.fetch_sub(1, Ordering::SeqCst);
            moves
                .iter()
                .map(|m| Ok(MoveStats { keys: 1, bytes: m.bytes, fallback: false, ..Default::default() }))
                .collect()
        }
    }

    async fn exec<F: Fence>(
        rec: &Recorder,
        s: &ClusterSnapshot,
        p: &Plan,
        l: &Limits,
        fence: &F,
        cancel: &CancellationToken,
        m: &Metrics,
    ) -> RunReport {
        let progress = Progress::default();
        let job =
            Job { cluster: rec, snapshot: s, plan: p, limits: l, fence, progress: &progress, metrics: m, lost: None };
        execute(job, cancel).await
    }

    /// 4 loaded members and 4 empty ones: many disjoint pairs can move at once.
    fn scenario() -> (ClusterSnapshot, Plan) {
        let layout: Vec<(u64, Vec<u32>)> = (0..80).map(|i| (1000, vec![(i % 4) as u32])).collect();
        let s = make_snapshot(make_members(8), &layout);
        let p = plan(&s, &PlanOptions { tolerance_percent: 0, ..Default::default() }).unwrap();
        (s, p)
    }

    fn limits() -> Limits {
        Limits {
            max_concurrent_moves: 3,
            max_moves_per_member: 1,
            max_bytes_per_second: 0,
            max_bytes_per_run: 0,
            max_run_time: Duration::from_secs(60),
            critical_memory_percent: 0,
            transfer_buffer_bytes: 0,
        }
    }

    #[tokio::test]
    async fn runs_every_move_within_the_concurrency_limits() {
        let (s, p) = scenario();
        assert_eq!(p.moves.len(), 40);
        let rec = Recorder::new(5);
        let m = Metrics::new();
        let r = exec(&rec, &s, &p, &limits(), &NoFence, &CancellationToken::new(), &m).await;
        assert_eq!(r.moves_done, 40);
        assert!(r.stopped.is_none());
        assert_eq!(rec.max_running.load(Ordering::SeqCst), 3);
        assert_eq!(r.moved_bytes, 40_000);
        let total_unload: u64 = r.members.iter().map(|x| x.accepted_unload).sum();
        assert_eq!(total_unload, 40);
        assert!(r.members.iter().all(|x| x.current_buckets == 10), "{:?}", r.members);
        assert_eq!(m.moves_total.with_label_values(&["done"]).get(), 40);
    }

    #[tokio::test]
    async fn per_member_limit_serialises_moves_of_one_member() {
        let (s, p) = scenario();
        let rec = Recorder::new(2);
        let l = Limits { max_concurrent_moves: 100, max_moves_per_member: 1, ..limits() };
        exec(&rec, &s, &p, &l, &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        // 4 sources, each in at most one move at a time.
        assert!(rec.max_running.load(Ordering::SeqCst) <= 4);
    }

    #[tokio::test]
    async fn byte_budget_stops_between_moves() {
        let (s, p) = scenario();
        let rec = Recorder::new(0);
        let l = Limits { max_bytes_per_run: 5500, ..limits() };
        let r = exec(&rec, &s, &p, &l, &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.moves_done, 5);
        assert_eq!(r.stopped, Some(StopReason::Budget));
        assert_eq!(r.moves_not_started, 35);
    }

    #[tokio::test]
    async fn deadline_stops_between_moves() {
        let (s, p) = scenario();
        let rec = Recorder::new(40);
        let l = Limits { max_run_time: Duration::from_millis(100), ..limits() };
        let r = exec(&rec, &s, &p, &l, &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.stopped, Some(StopReason::Deadline));
        assert!(r.moves_done >= 3 && r.moves_done < 40, "{}", r.moves_done);
        // Every started move finished: nothing failed or was left half-done.
        assert_eq!(r.moves_failed, 0);
        assert_eq!(r.moves_done + r.moves_not_started, 40);
    }

    #[tokio::test]
    async fn cancel_finishes_moves_in_flight() {
        let (s, p) = scenario();
        let rec = Recorder::new(30);
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(45)).await;
            c2.cancel();
        });
        let r = exec(&rec, &s, &p, &limits(), &NoFence, &cancel, &Metrics::new()).await;
        assert_eq!(r.stopped, Some(StopReason::Cancelled));
        assert_eq!(r.moves_done, 6, "two rounds of three");
        assert_eq!(rec.running.load(Ordering::SeqCst), 0);
    }

    /// A lock the moves and the fence both take (the coordinator's client cache is one):
    /// an async mutex hands it to its waiters in turn.
    struct Contended {
        lock: Arc<tokio::sync::Mutex<()>>,
        /// The plan's second move only sleeps; every other move takes the lock.
        sleeper: u64,
        done: AtomicUsize,
    }

    impl Cluster for Contended {
        no_snapshot_or_repair!();
        async fn move_bucket<P: Pace, F: Fence>(
            &self,
            _: &ClusterSnapshot,
            mv: &Move,
            _: &P,
            _: &F,
        ) -> Result<MoveStats, ClusterError> {
            if mv.bucket == self.sleeper {
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                drop(self.lock.lock().await);
            }
            self.done.fetch_add(1, Ordering::SeqCst);
            Ok(MoveStats { keys: 1, bytes: mv.bytes, fallback: false, ..Default::default() })
        }
    }

    /// Checks 1 and 2 pass at once; check 3 lets go of the lock the test held (the first
    /// move, queued for it since its first poll, is handed it) and takes it in turn.
    struct ContendedFence {
        lock: Arc<tokio::sync::Mutex<()>>,
        held: std::sync::Mutex<Option<tokio::sync::OwnedMutexGuard<()>>>,
        checks: AtomicUsize,
    }

    impl Fence for ContendedFence {
        async fn check(&self) -> Result<(), FenceError> {
            if self.checks.fetch_add(1, Ordering::SeqCst) < 2 {
                return Ok(());
            }
            drop(self.held.lock().unwrap().take());
            drop(self.lock.lock().await);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_fence_check_waiting_for_a_lock_a_move_holds_does_not_wedge_the_run() {
        let (s, p) = scenario();
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let held = lock.clone().lock_owned().await;
        let cluster = Contended { lock: lock.clone(), sleeper: p.moves[1].bucket, done: AtomicUsize::new(0) };
        let fence = ContendedFence { lock, held: std::sync::Mutex::new(Some(held)), checks: AtomicUsize::new(0) };
        let l = Limits { max_concurrent_moves: 2, max_moves_per_member: 10, ..limits() };
        let (progress, m) = (Progress::default(), Metrics::new());
        let job = Job {
            cluster: &cluster,
            snapshot: &s,
            plan: &p,
            limits: &l,
            fence: &fence,
            progress: &progress,
            metrics: &m,
            lost: None,
        };
        let cancel = CancellationToken::new();
        let r = tokio::time::timeout(Duration::from_secs(20), execute(job, &cancel))
            .await
            .expect("the run wedged: a move was handed the lock and never polled again");
        assert_eq!(r.moves_done, p.moves.len() as u64);
        assert_eq!(cluster.done.load(Ordering::SeqCst), p.moves.len());
        assert!(fence.checks.load(Ordering::SeqCst) >= 3);
    }

    struct FlakyFence(AtomicUsize);
    impl Fence for FlakyFence {
        async fn check(&self) -> Result<(), FenceError> {
            if self.0.fetch_add(1, Ordering::SeqCst) >= 4 { Err(FenceError::Expired) } else { Ok(()) }
        }
    }

    #[tokio::test]
    async fn a_lost_lock_stops_before_the_next_move() {
        let (s, p) = scenario();
        let rec = Recorder::new(1);
        let r =
            exec(&rec, &s, &p, &limits(), &FlakyFence(AtomicUsize::new(0)), &CancellationToken::new(), &Metrics::new())
                .await;
        assert_eq!(r.stopped, Some(StopReason::LockLost));
        assert_eq!(r.moves_done, 4);
    }

    #[tokio::test]
    async fn a_failed_move_is_recorded_and_stops_new_moves() {
        let (s, p) = scenario();
        let mut rec = Recorder::new(1);
        rec.fail_bucket = Some(p.moves[1].bucket);
        let r = exec(&rec, &s, &p, &limits(), &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.moves_failed, 1);
        assert_eq!(r.stopped, Some(StopReason::MoveFailed));
        assert_eq!(r.open_buckets, vec![p.moves[1].bucket]);
        assert!(r.moves_done < 39);
    }

    #[tokio::test]
    async fn a_move_its_targets_replicas_did_not_take_is_done_and_stops_new_moves() {
        let (s, p) = scenario();
        let mut rec = Recorder::new(1);
        rec.behind_bucket = Some(p.moves[1].bucket);
        let m = Metrics::new();
        let r = exec(&rec, &s, &p, &limits(), &NoFence, &CancellationToken::new(), &m).await;
        assert_eq!((r.moves_failed, r.stopped), (0, Some(StopReason::ReplicasBehind)));
        assert!(rec.moves.lock().unwrap().contains(&p.moves[1].bucket), "the move itself is done");
        assert_eq!(r.failures, vec!["0 of the 1 replica(s) of b".to_string()]);
        assert!(r.open_buckets.is_empty() && r.moves_done < 40);
        assert_eq!(m.moves_unreplicated_total.get(), 1);
    }

    #[tokio::test]
    async fn a_key_set_aside_by_a_move_is_counted_and_the_move_is_done() {
        let (s, p) = scenario();
        let mut rec = Recorder::new(0);
        rec.aside_bucket = Some(p.moves[2].bucket);
        let m = Metrics::new();
        let r = exec(&rec, &s, &p, &limits(), &NoFence, &CancellationToken::new(), &m).await;
        assert_eq!((r.moves_done, r.moves_failed), (40, 0), "{r:?}");
        assert_eq!(m.keys_set_aside_total.get(), 1);
    }

    #[tokio::test]
    async fn pacing_holds_the_byte_rate() {
        let (s, p) = scenario();
        let rec = Recorder::new(0);
        // 40 moves x 1000 bytes at 100 kB/s: at least ~0.39 s (the first take is free).
        let l = Limits { max_bytes_per_second: 100_000, ..limits() };
        let t0 = Instant::now();
        exec(&rec, &s, &p, &l, &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert!(t0.elapsed() >= Duration::from_millis(380), "{:?}", t0.elapsed());
    }

    fn grouping() -> Recorder {
        Recorder { grouping: true, ..Recorder::new(1) }
    }

    /// Every group shares one source and one target, and holds at most `bytes`.
    fn check_groups(rec: &Recorder, bytes: u64) -> Vec<usize> {
        let groups = rec.groups.lock().unwrap();
        for g in groups.iter() {
            assert!(g.iter().all(|m| (m.0, m.1) == (g[0].0, g[0].1)), "a group mixes pairs: {g:?}");
            assert!(g.iter().map(|m| m.2).sum::<u64>() <= bytes, "a group over {bytes} bytes: {g:?}");
        }
        groups.iter().map(Vec::len).collect()
    }

    #[tokio::test]
    async fn unpaced_groups_take_every_move_of_a_pair() {
        let (s, p) = scenario();
        let rec = grouping();
        let r = exec(&rec, &s, &p, &limits(), &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.moves_done, 40);
        let pairs: std::collections::BTreeSet<(u32, u32)> = p.moves.iter().map(|m| (m.from, m.to)).collect();
        let sizes = check_groups(&rec, GROUP_BYTES);
        assert_eq!(sizes.len(), pairs.len(), "one group per (source, target): {sizes:?}");
    }

    #[tokio::test]
    async fn a_rate_caps_a_group_at_its_seconds_worth_of_bytes() {
        let (s, p) = scenario();
        let rec = grouping();
        // 600 B/s: a group carries at most 3000 bytes, three moves of 1000.
        let l = Limits { max_bytes_per_second: 600, ..limits() };
        let r = exec(&rec, &s, &p, &l, &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.moves_done, 40);
        let sizes = check_groups(&rec, 600 * GROUP_SECONDS);
        assert!(sizes.iter().all(|&n| n <= 3) && sizes.contains(&3), "{sizes:?}");
    }

    #[tokio::test]
    async fn the_run_budget_and_the_slot_cap_bound_groups() {
        let (s, p) = scenario();
        let rec = grouping();
        let l = Limits { max_bytes_per_run: 5500, ..limits() };
        let r = exec(&rec, &s, &p, &l, &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.stopped, Some(StopReason::Budget));
        assert_eq!(r.moves_done, 5, "groups never take the run past its budget");
        // 10000 one-byte buckets on one member, one empty: groups of at most GROUP_SLOTS.
        let layout: Vec<(u64, Vec<u32>)> = (0..10_000).map(|_| (1, vec![0])).collect();
        let s = make_snapshot(make_members(2), &layout);
        let p = plan(&s, &PlanOptions { tolerance_percent: 0, ..Default::default() }).unwrap();
        let rec = grouping();
        let r = exec(&rec, &s, &p, &limits(), &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.moves_done, p.moves.len() as u64);
        let sizes = check_groups(&rec, GROUP_BYTES);
        assert!(sizes.iter().all(|&n| n <= GROUP_SLOTS) && sizes.len() > 1, "{sizes:?}");
    }

    /// A backend that moves groups gets a group of one as a group, never as a lone
    /// `move_bucket`: with Valkey that would be the legacy mover beside atomic jobs.
    #[tokio::test]
    async fn a_group_of_one_goes_to_the_backends_group_mover() {
        let (s, p) = scenario();
        let rec = grouping();
        // 10 B/s: a group's seconds of bytes are below one move's 1000, so every group
        // holds one move.
        let l = Limits { max_bytes_per_second: 10, ..limits() };
        let r = exec(&rec, &s, &p, &l, &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.moves_done, 40);
        let sizes = check_groups(&rec, 1000);
        assert!(sizes.len() == 40 && sizes.iter().all(|&n| n == 1), "{sizes:?}");
        assert!(rec.moves.lock().unwrap().is_empty(), "a move went around the group mover");
    }

    #[tokio::test]
    async fn a_stop_is_seen_between_groups() {
        let (s, p) = scenario();
        let mut rec = grouping();
        rec.delay = Duration::from_millis(30);
        let l = Limits { max_bytes_per_second: 100, ..limits() };
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(45)).await;
            c2.cancel();
        });
        let r = exec(&rec, &s, &p, &l, &NoFence, &cancel, &Metrics::new()).await;
        assert_eq!(r.stopped, Some(StopReason::Cancelled));
        assert!(r.moves_done < 40 && r.moves_done + r.moves_not_started == 40, "{r:?}");
        assert_eq!(r.moves_failed, 0, "a group in flight finished");
    }

    #[tokio::test]
    async fn a_group_counts_as_one_move_for_the_members_limits() {
        // One loaded member sends to three empty ones: with two moves per member, two
        // groups (jobs) leave it at once, not one group holding the member's whole limit.
        let layout: Vec<(u64, Vec<u32>)> = (0..60).map(|_| (1000, vec![0])).collect();
        let s = make_snapshot(make_members(4), &layout);
        let p = plan(&s, &PlanOptions { tolerance_percent: 0, ..Default::default() }).unwrap();
        let mut rec = grouping();
        rec.delay = Duration::from_millis(20);
        let l = Limits { max_concurrent_moves: 10, max_moves_per_member: 2, ..limits() };
        let r = exec(&rec, &s, &p, &l, &NoFence, &CancellationToken::new(), &Metrics::new()).await;
        assert_eq!(r.moves_done, p.moves.len() as u64);
        let sizes = check_groups(&rec, GROUP_BYTES);
        assert_eq!(sizes.len(), 3, "one group per target: {sizes:?}");
        assert_eq!(rec.max_groups.load(Ordering::SeqCst), 2, "two groups at once from the source");
    }
}
