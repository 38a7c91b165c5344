//! Why a run ended before its last move: one closed set, its labels and its sentences.

use serde::Serialize;

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
