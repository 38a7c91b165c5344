//! One run of the pipeline: lock -> repair -> snapshot -> plan -> decide -> execute ->
//! record. Shared by the daemon's schedule, `PUT /rebalance`, evacuations and the
//! `rebalance --once` command, so every path passes the same gates.
//!
//! Owns: the order of the steps, the run's skip reasons that arise before a plan, the
//! run record, the metrics and status of a run. Does not own: the steps themselves.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cluster::{AnyCluster, Cluster};
use crate::config::Config;
use crate::coord::{Acquire, Coordinator, Evacuation, GuardFence, RunRecord};
use crate::decide::{Decision, SkipReason, Thresholds, decide};
use crate::execute::{Job, Limits, Progress, StopReason, execute};
use crate::metrics::Metrics;
use crate::model::ClusterSnapshot;
use crate::plan::{Plan, PlanOptions, plan};
use crate::report::Outcome;

/// What started a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// The cron slot this run belongs to.
    Scheduled { slot: DateTime<Utc> },
    /// By hand (`PUT /rebalance`, `rebalance --once`); `force` ignores the thresholds.
    Manual { force: bool },
    /// Draining evacuated members.
    Evacuation,
}

impl Trigger {
    pub fn operation(&self) -> &'static str {
        match self {
            Trigger::Scheduled { .. } => "scheduled",
            Trigger::Manual { .. } => "manual",
            Trigger::Evacuation => "evacuation",
        }
    }
}

/// Everything a run needs, built once per process.
pub struct Context {
    pub config: Config,
    pub cluster: AnyCluster,
    pub coordinator: Coordinator,
    pub metrics: Arc<Metrics>,
    pub progress: Arc<Progress>,
    pub status: Arc<std::sync::Mutex<RunStatus>>,
}

/// What `/status` shows of runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunStatus {
    /// idle, waiting, planning, moving, evacuating.
    pub state: String,
    pub operation: Option<String>,
    pub last_decision: Option<Decision>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<String>,
    pub last_moved_bytes: u64,
    pub last_error: Option<String>,
    /// Per member, of the last run that moved buckets.
    pub last_report: Option<Vec<crate::report::MemberReport>>,
}

impl Context {
    pub fn new(config: Config) -> Result<Context, String> {
        let cluster = AnyCluster::from_config(&config).map_err(|e| e.to_string())?;
        let coordinator = Coordinator::new(config.etcd.as_ref(), &config.cluster.id, &config.member_id())
            .map_err(|e| e.to_string())?;
        let metrics = Arc::new(Metrics::new());
        metrics.size_threshold_ratio.set(config.balance.size_threshold_percent as f64 / 100.0);
        metrics.etcd_up.set(coordinator.is_standalone() as i64);
        Ok(Context {
            config,
            cluster,
            coordinator,
            metrics,
            progress: Arc::new(Progress::default()),
            status: Arc::new(std::sync::Mutex::new(RunStatus { state: "idle".into(), ..Default::default() })),
        })
    }

    /// Says so when the lock is in-process only (for the commands that take it).
    pub fn warn_if_standalone(&self) {
        if self.coordinator.is_standalone() {
            warn!(
                "no [etcd] section: running standalone with an in-process lock; run only one sidecar per cluster like this"
            );
        }
    }

    fn set_state(&self, state: &str, operation: Option<&str>) {
        let mut s = self.status.lock().unwrap();
        s.state = state.to_string();
        s.operation = operation.map(str::to_string);
    }

    /// Snapshot with the operator's persistent state applied (evacuated members drain).
    pub async fn snapshot(&self) -> Result<ClusterSnapshot, String> {
        self.snapshot_and_evacuations().await.map(|(s, _)| s)
    }

    /// As `snapshot`, also returning the evacuations it applied (one read of etcd).
    async fn snapshot_and_evacuations(&self) -> Result<(ClusterSnapshot, Vec<Evacuation>), String> {
        let t0 = Instant::now();
        let mut snap = self.cluster.snapshot().await.map_err(|e| e.to_string())?;
        self.metrics.snapshot_duration_seconds.observe(t0.elapsed().as_secs_f64());
        let evacuations = match self.coordinator.evacuations().await {
            Ok(ev) => ev,
            Err(e) => {
                warn!(cause = %e, "cannot read evacuations; planning without them");
                Vec::new()
            }
        };
        for e in &evacuations {
            if let Some(m) = snap.members.iter_mut().find(|m| m.id == e.member) {
                m.draining = true;
            }
        }
        Ok((snap, evacuations))
    }

    pub fn plan(&self, snap: &ClusterSnapshot) -> Result<Plan, String> {
        self.plan_with(snap, None)
    }

    /// Plans with an optional receiver list (an evacuation's `--migrate-to`).
    pub fn plan_with(&self, snap: &ClusterSnapshot, receivers: Option<Vec<String>>) -> Result<Plan, String> {
        let t0 = Instant::now();
        let mut opts = PlanOptions::from_config(&self.config.balance);
        opts.receivers = receivers;
        let p = plan(snap, &opts).map_err(|e| e.to_string())?;
        self.metrics.plan_duration_seconds.observe(t0.elapsed().as_secs_f64());
        self.metrics.observe_plan(&p);
        Ok(p)
    }

    /// A dry run: snapshot, plan, decide; moves nothing, takes no lock.
    pub async fn simulate(&self, force: bool) -> Result<Outcome, String> {
        let snap = self.snapshot().await?;
        let p = self.plan(&snap)?;
        let t = Thresholds::from_config(&self.config.balance, force);
        let d = decide(&snap, &p, &t);
        Ok(Outcome::new(&snap, &p, d, &t))
    }

    fn skip(&self, reason: SkipReason, message: String) -> Outcome {
        info!(reason = %reason, "skip: {message}");
        self.metrics.record_skip(reason);
        self.metrics.last_run_timestamp_seconds.set(Utc::now().timestamp() as f64);
        let d = Decision::skip(reason, message);
        let mut s = self.status.lock().unwrap();
        s.last_decision = Some(d.clone());
        s.last_run_at = Some(Utc::now());
        s.last_outcome = Some("skipped".into());
        drop(s);
        Outcome::skipped(d, &Thresholds::from_config(&self.config.balance, false))
    }

    /// One run, through every gate. Never panics on cluster or etcd trouble: it skips or
    /// fails with the reason.
    pub async fn run_once(&self, trigger: Trigger, cancel: &CancellationToken) -> Outcome {
        match self.coordinator.paused().await {
            Ok(Some(by)) => {
                return self.skip(SkipReason::Paused, format!("the cluster is paused ({by})"));
            }
            Ok(_) => {}
            Err(e) => {
                return self.skip(SkipReason::LockUnavailable, format!("cannot read the pause flag: {e}"));
            }
        }
        self.metrics.lock_held.set(0);
        let guard = match self.coordinator.try_lock(trigger.operation()).await {
            Ok(Acquire::Acquired(g)) => {
                self.metrics.lock_acquisitions_total.with_label_values(&["acquired"]).inc();
                self.metrics.lock_held.set(1);
                g
            }
            Ok(Acquire::HeldElsewhere(h)) => {
                self.metrics.lock_acquisitions_total.with_label_values(&["held_elsewhere"]).inc();
                return self.skip(
                    SkipReason::LockHeldElsewhere,
                    format!("the lock is held by {} ({} since {})", h.member, h.operation, h.started_at.to_rfc3339()),
                );
            }
            Err(e) => {
                self.metrics.lock_acquisitions_total.with_label_values(&["error"]).inc();
                return self.skip(SkipReason::LockUnavailable, e.to_string());
            }
        };
        let outcome = self.run_locked(&trigger, &guard, cancel).await;
        let record = RunRecord {
            slot: match &trigger {
                Trigger::Scheduled { slot } => Some(slot.timestamp()),
                _ => None,
            },
            member: self.coordinator.member().to_string(),
            finished_at: Utc::now(),
            outcome: outcome_label(&outcome).to_string(),
            reason: outcome.decision.reason.map(|r| r.to_string()),
            moved_bytes: outcome.moved_bytes.unwrap_or(0),
        };
        // A run that found the slot already done records nothing.
        if outcome.decision.reason != Some(SkipReason::AlreadyRanThisSlot) {
            match self.coordinator.record_run(&guard, &record).await {
                Ok(true) => {}
                Ok(false) => warn!("run record not written: the lock was no longer ours"),
                Err(e) => warn!(cause = %e, "run record not written"),
            }
        }
        self.coordinator.release(guard).await;
        self.metrics.lock_held.set(0);
        self.set_state("idle", None);
        outcome
    }

    async fn run_locked(
        &self,
        trigger: &Trigger,
        guard: &crate::coord::LockGuard,
        cancel: &CancellationToken,
    ) -> Outcome {
        if let Trigger::Scheduled { slot } = trigger {
            match self.coordinator.last_run().await {
                Ok(Some(last)) if last.slot.is_some_and(|s| s >= slot.timestamp()) => {
                    return self.skip(
                        SkipReason::AlreadyRanThisSlot,
                        format!("slot {} already ran on {} ({})", slot.to_rfc3339(), last.member, last.outcome),
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    return self.skip(SkipReason::LockUnavailable, format!("cannot read runs/last: {e}"));
                }
            }
        }
        self.set_state("planning", Some(trigger.operation()));
        match self.cluster.repair().await {
            Ok(lines) => {
                for l in lines {
                    info!("repair: {l}");
                }
            }
            Err(e) => {
                warn!(cause = %e, "repair of open buckets failed; the plan will see them open")
            }
        }
        let (snap, evacuations) = match self.snapshot_and_evacuations().await {
            Ok(x) => x,
            Err(e) => return self.skip(SkipReason::SnapshotFailed, e),
        };
        let evacuating = *trigger == Trigger::Evacuation;
        // An evacuation naming targets moves only onto them.
        let receivers = evacuating
            .then(|| evacuations.iter().flat_map(|e| e.migrate_to.clone()).collect::<Vec<_>>())
            .filter(|to| !to.is_empty());
        let p = match self.plan_with(&snap, receivers) {
            Ok(p) => p,
            Err(e) => {
                error!(cause = %e, "planning failed");
                self.metrics.runs_total.with_label_values(&["failed"]).inc();
                let mut o = self.skip_outcome_failed(&e);
                o.stopped = Some(e);
                return o;
            }
        };
        let force = matches!(trigger, Trigger::Manual { force: true });
        let t = Thresholds::from_config(&self.config.balance, force || *trigger == Trigger::Evacuation);
        let d = decide(&snap, &p, &t);
        info!(
            action = ?d.action, reason = d.reason.map(|r| r.as_str()).unwrap_or("-"),
            transfer_bytes = p.transfer_bytes, total_bytes = p.total_bytes, lower_bound_bytes = p.lower_bound_bytes,
            moves = p.moves.len(), "decision: {}", d.message
        );
        self.status.lock().unwrap().last_decision = Some(d.clone());
        let mut outcome = Outcome::new(&snap, &p, d.clone(), &t);
        if let Some(reason) = d.reason {
            self.metrics.record_skip(reason);
            self.finish_status("skipped", 0, None);
            return outcome;
        }
        let state = if *trigger == Trigger::Evacuation { "evacuating" } else { "moving" };
        self.set_state(state, Some(trigger.operation()));
        let run_cancel = cancel.child_token();
        let lost = guard.lost.clone();
        let rc = run_cancel.clone();
        let watcher = tokio::spawn(async move {
            lost.cancelled().await;
            rc.cancel();
        });
        let mut limits = Limits::from_config(&self.config.execution);
        if evacuating && let Some(rate) = evacuations.iter().map(|e| e.rate).filter(|&r| r > 0).min() {
            limits.max_bytes_per_second = rate;
        }
        let fence = GuardFence { coordinator: &self.coordinator, guard };
        let job = Job {
            cluster: &self.cluster,
            snapshot: &snap,
            plan: &p,
            limits: &limits,
            fence: &fence,
            progress: &self.progress,
            metrics: &self.metrics,
        };
        let report = execute(job, &run_cancel).await;
        watcher.abort();
        let label = match (&report.stopped, report.moves_failed) {
            (_, f) if f > 0 => "failed",
            (None, _) => "rebalanced",
            (Some(StopReason::Budget), _) => "rebalanced",
            (Some(_), _) => "stopped",
        };
        self.metrics.runs_total.with_label_values(&[label]).inc();
        self.metrics.last_run_timestamp_seconds.set(Utc::now().timestamp() as f64);
        info!(
            outcome = label,
            moves_done = report.moves_done,
            moves_failed = report.moves_failed,
            moves_not_started = report.moves_not_started,
            moved_bytes = report.moved_bytes,
            seconds = report.duration_seconds,
            stopped = report.stopped.as_ref().map(|s| s.to_string()).unwrap_or_default(),
            "run finished"
        );
        self.finish_status(label, report.moved_bytes, report.failures.first().cloned());
        if report.moves_done > 0 {
            // What is left: the gauges show the cluster after the moves, not before.
            if let Ok(after) = self.snapshot().await
                && let Ok(p2) = self.plan(&after)
            {
                info!(
                    transfer_bytes = p2.transfer_bytes,
                    total_bytes = p2.total_bytes,
                    "after the run: transfer {:.2}% (threshold {}%)",
                    p2.transfer_percent(),
                    self.config.balance.size_threshold_percent
                );
            }
            self.status.lock().unwrap().last_report = Some(report.members.clone());
        }
        outcome.moved_bytes = Some(report.moved_bytes);
        outcome.duration_seconds = Some((report.duration_seconds * 1000.0).round() / 1000.0);
        outcome.stopped = report.stopped.as_ref().map(|s| s.to_string());
        outcome.failures = report.failures.clone();
        outcome.report = Some(report.members);
        outcome
    }

    fn skip_outcome_failed(&self, e: &str) -> Outcome {
        self.finish_status("failed", 0, Some(e.to_string()));
        Outcome::skipped(
            Decision::skip(SkipReason::SnapshotFailed, format!("planning failed: {e}")),
            &Thresholds::from_config(&self.config.balance, false),
        )
    }

    fn finish_status(&self, outcome: &str, moved: u64, error: Option<String>) {
        let mut s = self.status.lock().unwrap();
        s.last_run_at = Some(Utc::now());
        s.last_outcome = Some(outcome.to_string());
        s.last_moved_bytes = moved;
        s.last_error = error;
    }
}

/// The `runs_total` outcome of an outcome.
pub fn outcome_label(o: &Outcome) -> &'static str {
    if !o.failures.is_empty() {
        "failed"
    } else if o.decision.reason.is_some() {
        "skipped"
    } else if o.stopped.as_deref().is_some_and(|s| !s.contains("max-bytes-per-run")) {
        "stopped"
    } else {
        "rebalanced"
    }
}
