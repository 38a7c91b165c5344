//! The run's gates and the order of its steps.
//!
//! Gates, in order, each answering go on or skip with its typed reason: not paused, the
//! lock, the cron slot not yet run (scheduled runs only). Then the pipeline: repair ->
//! snapshot -> plan -> decide -> execute. Every gate and step that ends the run says how
//! as an [`End`]; [`Context::finish`] alone makes it the run's [`Finished`] (its outcome,
//! answer and log line); then the run record is written and the lock released; then
//! [`Context::conclude`] sets the run's metrics and status from that one value.
//!
//! Owns: that order, the skips that arise before a plan, building a run's end (`finish`)
//! and telling it (`conclude`), the run record. Does not own: the steps themselves, or
//! the records' storage (`coord`).

use std::ops::ControlFlow::{self, Break, Continue};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::outcome::fill_answer;
use super::{Context, End, Failure, Finished, Outcome, RunState, Skip, Trigger};
use crate::cluster::recorded::Recorded;
use crate::cluster::{Cluster, ClusterError, RepairOptions, RepairReport};
use crate::coord::{Acquire, Evacuation, GuardFence, LockGuard, RunRecord};
use crate::decide::{Decision, SkipReason, Thresholds, decide};
use crate::execute::{Job, Limits, RunReport, StopReason, execute};
use crate::metrics::LockResult;
use crate::model::ClusterSnapshot;
use crate::plan::Plan;
use crate::report::Answer;

/// A gate's verdict: go on (with what it produced), or skip with one reason.
type Gate<T = ()> = ControlFlow<Skip, T>;

/// A step's verdict: go on with what it produced, or end the run here, saying how.
type Step<T> = ControlFlow<End, T>;

impl Context {
    /// One run, through every gate. Never panics on cluster or etcd trouble: it skips or
    /// fails with the reason.
    pub async fn run_once(&self, trigger: Trigger, cancel: &CancellationToken) -> Finished {
        let mut finished = match self.gates_before_lock(&trigger).await {
            Break(skip) => self.finish(End::Skip(skip)),
            Continue(guard) => {
                let f = self.pipeline(&trigger, &guard, cancel).await;
                self.record(&trigger, &guard, &f).await;
                self.coordinator.release(guard).await;
                self.metrics.lock_released();
                self.metrics.lock_age_seconds.set(0.0);
                self.set_state(RunState::Idle, None);
                f
            }
        };
        self.conclude(&mut finished);
        finished
    }

    /// A run that ends at a gate outside the pipeline (`schedule.enabled = false`, said
    /// once at start-up): built and counted as every run's end is, but no run ran, so
    /// the last run's time and `/status` stay as they were.
    pub fn skip_outside(&self, skip: Skip) -> Finished {
        let mut finished = self.finish(End::Skip(skip));
        self.count(&mut finished);
        finished
    }

    /// Not paused, then the lock.
    async fn gates_before_lock(&self, trigger: &Trigger) -> Gate<LockGuard> {
        self.not_paused().await?;
        self.lock(trigger).await
    }

    async fn not_paused(&self) -> Gate {
        match self.coordinator.paused().await {
            Ok(Some(by)) => Break(Skip::new(SkipReason::Paused, format!("the cluster is paused ({by})"))),
            Ok(None) => Continue(()),
            Err(e) => Break(Skip::new(SkipReason::LockUnavailable, format!("cannot read the pause flag: {e}"))),
        }
    }

    /// Try once; never queue behind another holder.
    async fn lock(&self, trigger: &Trigger) -> Gate<LockGuard> {
        let m = &self.metrics;
        m.lock_held.set(0);
        let result = |r: LockResult| m.lock_acquisitions_total.with_label_values(&[r.as_str()]).inc();
        match self.coordinator.try_lock(trigger.operation().as_str()).await {
            Ok(Acquire::Acquired(g)) => {
                result(LockResult::Acquired);
                m.lock_taken(g.held_check());
                m.lock_age_seconds.set(0.0);
                Continue(g)
            }
            Ok(Acquire::HeldElsewhere(h)) => {
                result(LockResult::HeldElsewhere);
                m.lock_age_seconds.set((Utc::now() - h.started_at).num_milliseconds().max(0) as f64 / 1000.0);
                let since = h.started_at.to_rfc3339();
                let msg = format!("the lock is held by {} ({} since {since})", h.member, h.operation);
                Break(Skip::new(SkipReason::LockHeldElsewhere, msg))
            }
            Err(e) => {
                result(LockResult::Error);
                Break(Skip::new(SkipReason::LockUnavailable, e.to_string()))
            }
        }
    }

    /// A scheduled run claims its cron slot; a slot already run is skipped.
    async fn slot_not_yet_run(&self, trigger: &Trigger, guard: &LockGuard) -> Gate {
        let Trigger::Scheduled { slot } = trigger else { return Continue(()) };
        match self.coordinator.claim_scheduled_slot(guard, slot.timestamp()).await {
            Ok(true) => Continue(()),
            Ok(false) => Break(Skip::new(
                SkipReason::AlreadyRanThisSlot,
                format!("cron slot {} already ran in this fleet", slot.to_rfc3339()),
            )),
            Err(e) => Break(Skip::new(SkipReason::LockUnavailable, format!("cannot claim the cron slot: {e}"))),
        }
    }

    /// Under the lock: repair -> snapshot -> plan -> decide -> execute, then placement's
    /// role changes once the slots' part has ended.
    async fn pipeline(&self, trigger: &Trigger, guard: &LockGuard, cancel: &CancellationToken) -> Finished {
        let (mut snap, evacuations) = match self.before_the_plan(trigger, guard).await {
            Continue(x) => x,
            Break(end) => return self.finish(end),
        };
        let placement = self.placement(Some(trigger), &snap).await;
        let (Continue(end) | Break(end)) = self.slots(trigger, guard, cancel, &mut snap, &evacuations).await;
        let mut f = self.finish(end);
        self.place_after(guard, cancel, placement, &mut f).await;
        f
    }

    /// The cron slot, repair, then the snapshot (from what repair read) and evacuations.
    async fn before_the_plan(&self, trigger: &Trigger, guard: &LockGuard) -> Step<(ClusterSnapshot, Vec<Evacuation>)> {
        self.slot_not_yet_run(trigger, guard).await.map_break(End::Skip)?;
        self.set_state(RunState::Planning, Some(trigger.operation()));
        let reading = self.repair(guard).await?;
        self.snapshot_and_evacuations(reading).await.map_or_else(|e| Break(End::Fail(Failure::Snapshot(e))), Continue)
    }

    /// The slot part of a run: plan -> decide -> execute.
    async fn slots(
        &self,
        trigger: &Trigger,
        guard: &LockGuard,
        cancel: &CancellationToken,
        snap: &mut ClusterSnapshot,
        evacuations: &[Evacuation],
    ) -> Step<End> {
        let mover = self.choose_mover().await?;
        if matches!(trigger, Trigger::Manual { allow_big_keys: true, .. }) && !snap.observed.pinned.is_empty() {
            warn!(buckets = snap.observed.pinned.len(), "--allow-big-keys: buckets holding big keys may move");
            snap.observed.pinned.clear();
        }
        let mut plan = self.plan_run(trigger, snap, evacuations)?;
        plan.explanation.extend(mover.clone());
        let mut answer = self.decide_run(trigger, snap, &plan)?;
        answer.mover = mover;
        Continue(self.execute_run(trigger, guard, cancel, (snap, &plan, evacuations), answer).await)
    }

    /// Settles what earlier moves left (ours, recorded as intents) before planning. A
    /// migration nobody recorded, or stray keys that could not be returned, skip the run
    /// with the reason named; a failed repair fails it (the next run tries again). What it
    /// read is handed on to the snapshot.
    async fn repair(&self, guard: &LockGuard) -> Step<Option<crate::cluster::Reading>> {
        let started = std::time::Instant::now();
        let mut r = match self.settle(guard, false).await {
            Ok(r) => r,
            Err(Unsettled::Skip(skip)) => return Break(End::Skip(skip)),
            Err(Unsettled::Unreadable(e)) => return Break(End::Fail(Failure::Snapshot(e))),
        };
        r.settled.iter().for_each(|l| info!("repair: {l}"));
        tracing::debug!(settled = r.settled.len(), ms = started.elapsed().as_millis() as u64, "repair done");
        let and_more = |n: usize| if n > 1 { format!(" (and {} more)", n - 1) } else { String::new() };
        self.metrics.cluster_down.set(!r.down.is_empty() as i64);
        if let Some(d) = r.down.first() {
            return Break(End::Skip(Skip::new(SkipReason::ClusterDown, format!("{d}{}", and_more(r.down.len())))));
        }
        if let Some(f) = r.foreign.first() {
            let msg = format!("{f}{}", and_more(r.foreign.len()));
            return Break(End::Skip(Skip::new(SkipReason::MigrationInProgress, msg)));
        }
        if let Some((bucket, e)) = r.failed.first() {
            let message = format!("repair failed: bucket {bucket}: {e}{}", and_more(r.failed.len()));
            return Break(End::Fail(Failure::Repair(message)));
        }
        Continue(r.reading.take())
    }

    /// Repair of what this fleet recorded, past the lock's fence; the intents it settled
    /// are cleared. `hand_back`: a live run settling its own failed moves.
    async fn settle(&self, guard: &LockGuard, hand_back: bool) -> Result<RepairReport, Unsettled> {
        let intents =
            self.coordinator.moves().await.map_err(|e| {
                Unsettled::Skip(Skip::new(SkipReason::LockUnavailable, format!("cannot read moves/: {e}")))
            })?;
        let fence = GuardFence { coordinator: &self.coordinator, guard };
        let opts = RepairOptions { intents, hand_back, ..Default::default() };
        // The cluster cannot be read at all (down, refused, bad credentials).
        let r = self.cluster.repair(&opts, &fence).await.map_err(Unsettled::Unreadable)?;
        // Each was logged where it was set aside; counted here for both callers.
        self.metrics.keys_set_aside_total.inc_by(r.set_aside.len() as u64);
        if !r.intents_done.is_empty()
            && let Err(e) = self.coordinator.clear_moves(&r.intents_done).await
        {
            warn!(buckets = r.intents_done.len(), cause = %e, "could not clear settled move intents; the next run clears them");
        }
        Ok(r)
    }

    /// The mover of this run, chosen once before anything moves, and why, in a line.
    async fn choose_mover(&self) -> Step<Option<String>> {
        match self.cluster.choose_mover().await {
            Ok(line) => {
                self.status.lock().unwrap().mover = line.clone();
                Continue(line)
            }
            Err(e) => Break(End::Fail(Failure::Mover(e.to_string()))),
        }
    }

    /// Plans; an evacuation naming targets moves only onto them.
    fn plan_run(&self, trigger: &Trigger, snap: &ClusterSnapshot, evacuations: &[Evacuation]) -> Step<Plan> {
        let receivers = (*trigger == Trigger::Evacuation)
            .then(|| evacuations.iter().flat_map(|e| e.migrate_to.clone()).collect::<Vec<_>>())
            .filter(|to| !to.is_empty());
        self.plan_with(snap, receivers).map_or_else(|e| Break(End::Fail(Failure::Plan(e))), Continue)
    }

    /// Decides; a skip ends the run with the plan's figures in the answer.
    fn decide_run(&self, trigger: &Trigger, snap: &ClusterSnapshot, p: &Plan) -> Step<Answer> {
        let force = matches!(trigger, Trigger::Manual { force: true, .. } | Trigger::Evacuation);
        let t = self.thresholds(force);
        let d = decide(snap, p, &t);
        // What the sizes cost this run: keys measured now (the rest came from the cache or
        // from the sizes other sidecars published) and how long that took.
        let sizing = snap.observed.sizing.as_ref();
        info!(
            action = ?d.action, reason = d.reason.map(|r| r.as_str()).unwrap_or("-"),
            transfer_bytes = p.transfer_bytes, total_bytes = p.total_bytes, lower_bound_bytes = p.lower_bound_bytes,
            moves = p.moves.len(), keys = sizing.map_or(0, |s| s.keys),
            keys_measured_now = sizing.map_or(0, |s| s.keys_measured_now),
            sizing_seconds = sizing.map_or(0.0, |s| s.duration_seconds), "decision: {}", d.message
        );
        // Shown in /status while the moves go on, not only once they end.
        self.status.lock().unwrap().last_decision = Some(d.clone());
        let reason = d.reason;
        let answer = Answer::new(snap, p, d, &t);
        match reason {
            Some(r) => Break(End::Decided(r, answer)),
            None => Continue(answer),
        }
    }

    /// Moves, stopping when the lock's keep-alive is lost (`lock_lost`) as when cancelled.
    async fn execute_run(
        &self,
        trigger: &Trigger,
        guard: &LockGuard,
        cancel: &CancellationToken,
        (snap, plan, evacuations): (&ClusterSnapshot, &Plan, &[Evacuation]),
        mut answer: Answer,
    ) -> End {
        let evacuating = *trigger == Trigger::Evacuation;
        self.set_state(if evacuating { RunState::Evacuating } else { RunState::Moving }, Some(trigger.operation()));
        let mut limits = Limits::from_config(&self.config.execution);
        limits.critical_memory_percent = self.config.balance.critical_memory_percent;
        if evacuating && let Some(rate) = evacuations.iter().map(|e| e.rate).filter(|&r| r > 0).min() {
            limits.max_bytes_per_second = rate;
        }
        let fence = GuardFence { coordinator: &self.coordinator, guard };
        // Each move's intent is recorded before it starts; the lock is checked again
        // right before each commit.
        let recorded = Recorded { inner: &self.cluster, coordinator: &self.coordinator, guard };
        let job = Job {
            cluster: &recorded,
            snapshot: snap,
            plan,
            limits: &limits,
            fence: &fence,
            progress: &self.progress,
            metrics: &self.metrics,
            lost: Some(&guard.lost),
        };
        let report = execute(job, cancel).await;
        answer.settled = self.settle_failed(guard, &report).await;
        End::Executed(answer, report)
    }

    /// A live run never leaves its own open slot behind: what its failed moves left open
    /// is settled now, past the fence, by repair's logic (keys handed back to the owner).
    /// A run that lost the lock leaves them recorded for the next holder.
    async fn settle_failed(&self, guard: &LockGuard, report: &RunReport) -> Vec<String> {
        if report.open_buckets.is_empty() || report.stopped == Some(StopReason::LockLost) {
            return Vec::new();
        }
        match self.settle(guard, true).await {
            Ok(r) => {
                r.settled.iter().for_each(|l| info!("settled a failed move: {l}"));
                let failed = r.failed.iter().map(|(b, e)| format!("slot {b} is still open: {e}"));
                failed.inspect(|l| warn!("{l}")).chain(r.settled).collect()
            }
            Err(e) => {
                let cause = match e {
                    Unsettled::Skip(skip) => skip.message,
                    Unsettled::Unreadable(e) => e.to_string(),
                };
                warn!(cause = %cause, "could not settle the failed moves; the next run repairs them");
                vec![format!("not settled: {cause}")]
            }
        }
    }

    /// After a run that moved buckets (`Finished::moved`), outside its lock and after its
    /// answer: the moved slots are measured where they now live, and the gauges and the
    /// log show the cluster as it is, not as it was planned.
    pub async fn check_after_run(&self) {
        if let Ok(after) = self.snapshot().await
            && let Ok(p) = self.plan(&after)
        {
            info!(
                transfer_bytes = p.transfer_bytes,
                total_bytes = p.total_bytes,
                "after the run: transfer {:.2}% (threshold {}%)",
                p.transfer_percent(),
                self.config.balance.size_threshold_percent
            );
        }
    }

    /// Writes the run record while the lock is still ours. A run that found its slot
    /// already done records nothing.
    async fn record(&self, trigger: &Trigger, guard: &LockGuard, f: &Finished) {
        if f.outcome.skip_reason() == Some(SkipReason::AlreadyRanThisSlot) {
            return;
        }
        let record = RunRecord {
            slot: match trigger {
                Trigger::Scheduled { slot } => Some(slot.timestamp()),
                _ => None,
            },
            member: self.coordinator.member().to_string(),
            finished_at: Utc::now(),
            outcome: f.outcome.label().to_string(),
            reason: f.outcome.reason().map(str::to_string),
            moved_bytes: f.answer.moved_bytes.unwrap_or(0),
        };
        match self.coordinator.record_run(guard, &record).await {
            Ok(true) => {}
            Ok(false) => warn!("run record not written: the lock was no longer ours"),
            Err(e) => warn!(cause = %e, "run record not written"),
        }
    }

    /// The one place a run's [`Finished`] is built: its outcome, the answer for its caller
    /// and the log line of how it ended, from how its gate or step said it ended.
    fn finish(&self, end: End) -> Finished {
        let unrun = |decision: Decision| Answer::skipped(decision, &self.thresholds(false));
        let (outcome, answer, moved) = match end {
            End::Skip(skip) => {
                info!(reason = %skip.reason, "skip: {}", skip.message);
                (Outcome::Skipped(skip.reason), unrun(Decision::skip(skip.reason, skip.message)), false)
            }
            End::Fail(failure) => {
                // Nothing moved: the answer says why, in `stopped` and the decision's sentence.
                let message = failure.to_string();
                error!(reason = failure.reason().as_str(), cause = %message, "the run failed; nothing moves");
                let mut answer = unrun(Decision::failed(message.clone()));
                answer.stopped = Some(message);
                (Outcome::Failed(failure), answer, false)
            }
            End::Decided(reason, answer) => (Outcome::Skipped(reason), answer, false),
            End::Executed(mut answer, report) => {
                let outcome = Outcome::of_report(&report);
                info!(
                    outcome = outcome.label(),
                    moves_done = report.moves_done,
                    moves_failed = report.moves_failed,
                    moves_not_started = report.moves_not_started,
                    moved_bytes = report.moved_bytes,
                    moved_by_legacy_fallback = report.moves_by_fallback,
                    seconds = report.duration_seconds,
                    stopped = report.stopped.map(|s| s.to_string()).unwrap_or_default(),
                    "run finished"
                );
                let moved = report.moves_done > 0;
                if moved {
                    self.status.lock().unwrap().last_report = Some(report.members.clone());
                }
                fill_answer(&mut answer, report);
                (outcome, answer, moved)
            }
        };
        Finished { outcome, answer, moved }
    }

    /// How the run ended, said once for every outcome: the answer's `outcome` and
    /// `reason`, the metrics, `/status`, and the log line. (The run record, written under
    /// the lock before this, takes the same labels from the outcome.)
    fn conclude(&self, f: &mut Finished) {
        self.count(f);
        self.metrics.last_run_timestamp_seconds.set(Utc::now().timestamp() as f64);
        info!(
            outcome = f.outcome.label(),
            reason = f.outcome.reason().unwrap_or("-"),
            moves_planned = f.answer.moves.len(),
            moved_bytes = f.answer.moved_bytes.unwrap_or(0),
            "run ended"
        );
        let mut s = self.status.lock().unwrap();
        s.last_decision = Some(f.answer.decision.clone());
        s.last_run_at = Some(Utc::now());
        s.last_outcome = Some(f.outcome.kind());
        s.last_moved_bytes = f.answer.moved_bytes.unwrap_or(0);
        s.last_error = f.outcome.error(&f.answer);
    }

    /// The answer's `outcome` and `reason`, and the run counted by them.
    fn count(&self, f: &mut Finished) {
        let m = &self.metrics;
        f.answer.outcome = Some(f.outcome.label().to_string());
        f.answer.reason = f.outcome.reason().map(str::to_string);
        m.runs_total.with_label_values(&[f.outcome.kind().as_str()]).inc();
        match &f.outcome {
            Outcome::Skipped(reason) => m.skips_total.with_label_values(&[reason.as_str()]).inc(),
            Outcome::Failed(failure) => m.failures_total.with_label_values(&[failure.reason().as_str()]).inc(),
            _ => {}
        }
    }

    fn thresholds(&self, force: bool) -> Thresholds {
        Thresholds::from_config(&self.config.balance, force)
    }
}

/// Why repair could not run: a skip (etcd could not be read), or the cluster could not be
/// read at all (a failure).
enum Unsettled {
    Skip(Skip),
    Unreadable(ClusterError),
}
