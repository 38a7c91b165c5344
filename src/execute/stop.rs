//! Why a run ended before its last move: one closed set, its labels and its sentences;
//! and the executor's check for a cancel, a lost lock or the deadline.

use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Executor;
use crate::cluster::Cluster;
use crate::coord::Fence;

/// Why a run ended before its last move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Cancelled,
    Deadline,
    LockLost,
    Budget,
    MoveFailed,
    /// A move's target has a replica that did not take the data moved into it.
    ReplicasBehind,
    /// Moves were held back: their target had no room below critical memory.
    NoRoom,
}

impl StopReason {
    /// A stable label for logs and records.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Cancelled => "cancelled",
            StopReason::Deadline => "deadline",
            StopReason::LockLost => "lock_lost",
            StopReason::Budget => "budget",
            StopReason::MoveFailed => "move_failed",
            StopReason::ReplicasBehind => "replicas_behind",
            StopReason::NoRoom => "no_room",
        }
    }
}

/// The sentence the API's `stopped` field has always carried.
impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Cancelled => "stopped on request",
            StopReason::Deadline => "execution.max-run-time reached",
            StopReason::LockLost => "the lock was lost",
            StopReason::Budget => "execution.max-bytes-per-run reached",
            StopReason::MoveFailed => "a move failed",
            StopReason::ReplicasBehind => "a target's replica did not acknowledge the data moved into it",
            StopReason::NoRoom => "a target had no room below balance.critical-memory-percent",
        })
    }
}

impl<C: Cluster, F: Fence> Executor<'_, C, F> {
    /// Notes a cancel or the deadline that passed while nothing was in flight.
    pub(super) fn check_stop(&mut self, cancel: &CancellationToken) {
        if self.stopped.is_some() {
            return;
        }
        if self.job.lost.is_some_and(|l| l.is_cancelled()) {
            self.stopped = Some(StopReason::LockLost);
        } else if cancel.is_cancelled() {
            self.stopped = Some(StopReason::Cancelled);
        } else if Instant::now() >= self.deadline {
            self.stopped = Some(StopReason::Deadline);
        }
    }
}
