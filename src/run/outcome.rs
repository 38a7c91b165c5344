//! How a run ends, typed: the outcome (`runs_total`'s label, with its reason), the answer
//! for its caller, and the errors of runs and of the calls around them.
//!
//! Owns: `End` (how a gate or step ended the run, before the run's one `finish` makes it
//! a `Finished`), `Outcome` (its labels and exit code), `Failure`, `FailReason`, `Skip`,
//! `Finished`, `RunError`, `SetupError`, and which
//! skips an on-demand caller reads as an answer rather than an error. Does not own: how
//! errors become HTTP statuses (`api`, in one `From` impl) or the answer's JSON shape
//! (`report`).

use crate::cluster::ClusterError;
use crate::coord::LockError;
use crate::decide::{FailReason, SkipReason};
use crate::execute::{RunReport, StopReason};
use crate::metrics::RunOutcome;
use crate::plan::PlanError;
use crate::report::Answer;

/// Why a run went no further than a gate: one reason from the closed set, one sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub reason: SkipReason,
    pub message: String,
}

impl Skip {
    pub fn new(reason: SkipReason, message: impl Into<String>) -> Skip {
        Skip { reason, message: message.into() }
    }
}

/// What made a run fail, in the sentence its answer and log give.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The cluster could not be read (down, refused, bad credentials); nothing moved.
    #[error("{0}")]
    Snapshot(ClusterError),
    /// The planner refused its own output (a bug); nothing moved.
    #[error("planning failed: {0}")]
    Plan(PlanError),
    /// Moves failed; the run started no more after the first.
    #[error("{failed} move(s) failed")]
    Moves { failed: u64 },
    /// Repair of a bucket an earlier move left failed; nothing moved (the next run tries
    /// again).
    #[error("{0}")]
    Repair(String),
    /// `execution.migration` asks for a mover a master cannot run; nothing moved.
    #[error("{0}")]
    Mover(String),
}

/// How a gate or a step ended the run, as it says so; `Context::finish` alone makes it
/// the run's [`Finished`].
#[derive(Debug)]
pub enum End {
    /// A gate said no, before any plan.
    Skip(Skip),
    /// Nothing moved, for this cause.
    Fail(Failure),
    /// The decision said no; the answer carries the plan's figures.
    Decided(SkipReason, Answer),
    /// The plan was executed: its answer (the decision) and what was done.
    Executed(Answer, RunReport),
}

impl Failure {
    pub fn reason(&self) -> FailReason {
        match self {
            Failure::Snapshot(_) => FailReason::SnapshotFailed,
            Failure::Plan(_) => FailReason::PlanFailed,
            Failure::Moves { .. } => FailReason::MoveFailed,
            Failure::Repair(_) => FailReason::RepairFailed,
            Failure::Mover(_) => FailReason::MoverUnsupported,
        }
    }
}

/// How a run ended: the `autobalancer_runs_total` outcome, with its reason.
#[derive(Debug)]
pub enum Outcome {
    /// Every move done, or the rest left for the next run by `max-bytes-per-run`.
    Rebalanced,
    /// A gate or the decision said no.
    Skipped(SkipReason),
    Failed(Failure),
    /// Stopped before its last move: on request, at the deadline, or the lock was lost.
    Stopped(StopReason),
}

impl Outcome {
    /// The outcome of an executed plan.
    pub fn of_report(r: &RunReport) -> Outcome {
        match r.stopped {
            _ if r.moves_failed > 0 => Outcome::Failed(Failure::Moves { failed: r.moves_failed }),
            None | Some(StopReason::Budget) => Outcome::Rebalanced,
            Some(s) => Outcome::Stopped(s),
        }
    }

    /// Its kind: `runs_total`'s outcome label.
    pub fn kind(&self) -> RunOutcome {
        match self {
            Outcome::Rebalanced => RunOutcome::Rebalanced,
            Outcome::Skipped(_) => RunOutcome::Skipped,
            Outcome::Failed(_) => RunOutcome::Failed,
            Outcome::Stopped(_) => RunOutcome::Stopped,
        }
    }

    /// The kind as its label, for logs, the run record and answers.
    pub fn label(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The reason as a stable label, for logs and the run record.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Rebalanced => None,
            Outcome::Skipped(r) => Some(r.as_str()),
            Outcome::Failed(f) => Some(f.reason().as_str()),
            Outcome::Stopped(s) => Some(s.as_str()),
        }
    }

    /// The exit code of `rebalance --once`: 0 rebalanced or skipped for a reason (a run
    /// that moved what fit and held the rest back for room too), 1 failed, 3 the lock was
    /// lost, 4 stopped before its last move at `execution.max-run-time` or on request (a
    /// signal, `POST /rebalance/stop`). 2 is bad usage or config, before any run.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Rebalanced | Outcome::Skipped(_) | Outcome::Stopped(StopReason::NoRoom | StopReason::Budget) => 0,
            Outcome::Failed(_) | Outcome::Stopped(StopReason::MoveFailed | StopReason::ReplicasBehind) => 1,
            Outcome::Stopped(StopReason::LockLost) => 3,
            Outcome::Stopped(StopReason::Deadline | StopReason::Cancelled) => 4,
        }
    }

    /// The failure's cause in a sentence, for `/status`'s `last_error`.
    pub fn error(&self, answer: &Answer) -> Option<String> {
        match self {
            Outcome::Failed(Failure::Moves { .. }) => answer.failures.first().cloned(),
            Outcome::Failed(failure) => Some(failure.to_string()),
            _ => None,
        }
    }

    pub fn skip_reason(&self) -> Option<SkipReason> {
        match self {
            Outcome::Skipped(r) => Some(*r),
            _ => None,
        }
    }
}

/// A run that ended: how, and the answer for whoever asked.
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    pub answer: Answer,
    /// Buckets moved: the caller runs `Context::check_after_run` once it has answered.
    pub moved: bool,
}

impl Finished {
    /// For an on-demand caller: the answer, or why the run did not go ahead. A cluster
    /// found balanced is an answer; every other skip, and a failed plan, is an error.
    pub fn into_answer(self) -> Result<Answer, RunError> {
        match self.outcome {
            Outcome::Skipped(SkipReason::NothingToMove | SkipReason::BelowThreshold | SkipReason::BelowMinimumSize) => {
                Ok(self.answer)
            }
            Outcome::Skipped(reason) => Err(RunError::Skipped(Skip::new(reason, self.answer.decision.message))),
            Outcome::Failed(Failure::Snapshot(e)) => Err(RunError::Snapshot(e)),
            Outcome::Failed(Failure::Plan(e)) => Err(RunError::Plan(e)),
            Outcome::Failed(Failure::Repair(e)) => Err(RunError::Repair(e)),
            Outcome::Failed(Failure::Mover(e)) => Err(RunError::Mover(e)),
            _ => Ok(self.answer),
        }
    }
}

/// Why a run, or a call of the control handle, produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another operation runs in this process.
    #[error("a {0} is already running on this sidecar")]
    Busy(crate::run::Operation),
    /// The process is shutting down: no new operation starts.
    #[error("the sidecar is shutting down")]
    ShuttingDown,
    /// A gate or the decision said no.
    #[error("{}", .0.message)]
    Skipped(Skip),
    #[error("{0}")]
    Snapshot(ClusterError),
    #[error("planning failed: {0}")]
    Plan(PlanError),
    /// What an earlier move left could not be settled (the run moved nothing); the
    /// sentence begins "repair failed".
    #[error("{0}")]
    Repair(String),
    /// `execution.migration` asks for a mover a master cannot run (the run moved nothing).
    #[error("{0}")]
    Mover(String),
    /// etcd (or the in-process stand-in) failed.
    #[error(transparent)]
    Coordinator(#[from] LockError),
    /// The run's task ended without an answer: it panicked, or a shutdown abandoned it.
    #[error("the run ended without an answer: {0}")]
    Lost(String),
}

/// Why a run context could not be built (bad configuration, unreadable files).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Coordinator(#[from] LockError),
}

/// The executed part of the answer: bytes moved, time taken, why it stopped, per member.
pub(super) fn fill_answer(answer: &mut Answer, report: RunReport) {
    answer.moved_bytes = Some(report.moved_bytes);
    answer.duration_seconds = Some((report.duration_seconds * 1000.0).round() / 1000.0);
    // The sentence the API has always answered with; the typed reason is the outcome's.
    answer.stopped = report.stopped.map(|s| s.to_string());
    answer.moved_by_legacy_fallback = (report.moves_by_fallback > 0).then_some(report.moves_by_fallback);
    answer.failures = report.failures;
    answer.report = Some(report.members);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Decision, Thresholds};

    fn report(stopped: Option<StopReason>, failed: u64) -> RunReport {
        RunReport {
            moves_planned: 3,
            moves_done: 1,
            moves_failed: failed,
            moves_not_started: 1,
            moves_no_room: 0,
            moved_bytes: 10,
            moves_by_fallback: 0,
            duration_seconds: 0.1,
            stopped,
            failures: Vec::new(),
            open_buckets: Vec::new(),
            members: Vec::new(),
        }
    }

    #[test]
    fn outcome_of_an_executed_plan() {
        assert_eq!(Outcome::of_report(&report(None, 0)).label(), "rebalanced");
        assert_eq!(Outcome::of_report(&report(Some(StopReason::Budget), 0)).label(), "rebalanced");
        assert_eq!(Outcome::of_report(&report(Some(StopReason::Cancelled), 0)).label(), "stopped");
        assert_eq!(Outcome::of_report(&report(Some(StopReason::LockLost), 0)).reason(), Some("lock_lost"));
        let failed = Outcome::of_report(&report(Some(StopReason::MoveFailed), 1));
        assert_eq!((failed.label(), failed.reason()), ("failed", Some("move_failed")));
        let behind = Outcome::of_report(&report(Some(StopReason::ReplicasBehind), 0));
        assert_eq!((behind.label(), behind.reason(), behind.exit_code()), ("stopped", Some("replicas_behind"), 1));
        let kinds = [Outcome::Rebalanced, Outcome::Skipped(SkipReason::Paused), Outcome::Stopped(StopReason::Deadline)]
            .map(|o| o.kind());
        assert_eq!(kinds, [RunOutcome::Rebalanced, RunOutcome::Skipped, RunOutcome::Stopped]);
    }

    #[test]
    fn a_balanced_cluster_is_an_answer_other_skips_are_errors() {
        let t = Thresholds { size_threshold_percent: 10, minimum_size: 0, force: false };
        let finished = |r: SkipReason| Finished {
            outcome: Outcome::Skipped(r),
            answer: Answer::skipped(Decision::skip(r, format!("because {r}")), &t),
            moved: false,
        };
        assert!(finished(SkipReason::BelowThreshold).into_answer().is_ok());
        match finished(SkipReason::Paused).into_answer() {
            Err(RunError::Skipped(s)) => assert_eq!(s, Skip::new(SkipReason::Paused, "because paused")),
            other => panic!("{other:?}"),
        }
    }
}
