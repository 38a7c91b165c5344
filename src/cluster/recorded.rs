//! A backend as the lock holder drives it: every move's intent is recorded in the
//! coordinator before the move starts and removed when it commits or rolls back; the
//! fence the caller hands every move is the one its mover asks right before its commit.
//!
//! A move that fails with its bucket left open (or that found the lock lost before its
//! commit) keeps its intent: the next holder's repair reads it and settles the bucket.
//!
//! Owns: that bracket around each move. Does not own: the moves themselves (the inner
//! backend) or the lock (the coordinator).

use chrono::Utc;
use tracing::warn;

use super::{Cluster, ClusterError, Fence, FenceError, MoveStats, Pace, RepairOptions, RepairReport, Room};
use crate::coord::{Coordinator, LockError, LockGuard};
use crate::model::{ClusterSnapshot, MoveIntent};
use crate::plan::Move;

pub struct Recorded<'a, C> {
    pub inner: &'a C,
    pub coordinator: &'a Coordinator,
    pub guard: &'a LockGuard,
}

impl<C: Cluster> Cluster for Recorded<'_, C> {
    async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        self.inner.snapshot().await
    }

    async fn snapshot_after(&self, reading: Option<super::Reading>) -> Result<ClusterSnapshot, ClusterError> {
        self.inner.snapshot_after(reading).await
    }

    async fn repair<F: Fence>(&self, opts: &RepairOptions, fence: &F) -> Result<RepairReport, ClusterError> {
        self.inner.repair(opts, fence).await
    }

    async fn room(&self, member: &crate::model::Member) -> Result<Option<Room>, ClusterError> {
        self.inner.room(member).await
    }

    async fn member_id(&self, name: &str) -> Result<String, ClusterError> {
        self.inner.member_id(name).await
    }

    async fn move_bucket<P: Pace, F: Fence>(
        &self,
        s: &ClusterSnapshot,
        mv: &Move,
        pace: &P,
        fence: &F,
    ) -> Result<MoveStats, ClusterError> {
        self.record(s, std::slice::from_ref(mv)).await?;
        let result = self.inner.move_bucket(s, mv, pace, fence).await;
        self.settle(std::slice::from_ref(mv), std::slice::from_ref(&result)).await;
        result
    }

    fn groups_moves(&self) -> bool {
        self.inner.groups_moves()
    }

    fn moves_can_be_left_open(&self) -> bool {
        self.inner.moves_can_be_left_open()
    }

    async fn move_group<P: Pace, F: Fence>(
        &self,
        s: &ClusterSnapshot,
        moves: &[Move],
        pace: &P,
        fence: &F,
    ) -> Vec<Result<MoveStats, ClusterError>> {
        if let Err(e) = self.record(s, moves).await {
            // Nothing of the group started: whatever intents were recorded are cleared.
            let all: Vec<u64> = moves.iter().map(|m| m.bucket).collect();
            let _ = self.coordinator.clear_moves(&all).await;
            return moves
                .iter()
                .map(|m| match &e {
                    ClusterError::FencedBeforeStart { .. } => {
                        Err(ClusterError::FencedBeforeStart { bucket: m.bucket, cause: FenceError::NotHolder })
                    }
                    e => Err(ClusterError::Move { bucket: m.bucket, message: e.to_string(), open: false }),
                })
                .collect();
        }
        tracing::debug!(buckets = moves.len(), "intents recorded");
        let results = self.inner.move_group(s, moves, pace, fence).await;
        self.settle(moves, &results).await;
        results
    }
}

impl<C> Recorded<'_, C> {
    /// Records the intents of `moves`, which start together; none starts without its
    /// intent.
    async fn record(&self, s: &ClusterSnapshot, moves: &[Move]) -> Result<(), ClusterError>
    where
        C: Cluster,
    {
        if !self.inner.moves_can_be_left_open() || moves.is_empty() {
            return Ok(());
        }
        let intents: Vec<MoveIntent> = moves
            .iter()
            .map(|mv| MoveIntent {
                bucket: mv.bucket,
                from: s.members[mv.from as usize].id.clone(),
                to: s.members[mv.to as usize].id.clone(),
                holder: self.guard.holder.member.clone(),
                started_at: Utc::now(),
            })
            .collect();
        let bucket = moves[0].bucket;
        self.coordinator.record_moves(self.guard, &intents).await.map_err(|e| match e {
            // The lock is gone: the run stops as lock_lost, not as a failed move.
            LockError::NotHolder => ClusterError::FencedBeforeStart { bucket, cause: FenceError::NotHolder },
            e => ClusterError::Move {
                bucket,
                message: format!("could not record the move's intent, so it did not start: {e}"),
                open: false,
            },
        })
    }

    /// Removes the intents of moves that committed or rolled back; one left open keeps
    /// it for the next holder's repair.
    async fn settle(&self, moves: &[Move], results: &[Result<MoveStats, ClusterError>])
    where
        C: Cluster,
    {
        if !self.inner.moves_can_be_left_open() {
            return;
        }
        let settled: Vec<u64> = moves
            .iter()
            .zip(results)
            .filter(|(_, r)| match r {
                Ok(_) => true,
                Err(ClusterError::Move { open, .. }) => !open,
                Err(_) => false,
            })
            .map(|(mv, _)| mv.bucket)
            .collect();
        if !settled.is_empty()
            && let Err(e) = self.coordinator.clear_moves(&settled).await
        {
            warn!(buckets = settled.len(), cause = %e, "could not clear settled moves' intents; the next run's repair clears them");
        }
    }
}
