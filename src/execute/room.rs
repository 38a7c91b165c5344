//! Room on a move's target: its memory read before each move, and the moves held back
//! when it has none below `balance.critical-memory-percent` of its `maxmemory`.
//!
//! Owns: that check, for the executor. Does not own: what the planner counted (`plan`)
//! or how a server reports its memory (the backend's `room`).

use tracing::warn;

use super::Executor;
use crate::cluster::Cluster;
use crate::coord::Fence;

impl<C: Cluster, F: Fence> Executor<'_, C, F> {
    /// Bytes member `t` may still receive before `critical-memory-percent` of its
    /// `maxmemory`, read from its server now (it changes under writes); None where it
    /// has no limit, the check is off, or its server did not say.
    pub(super) async fn room_of(&mut self, t: usize) -> Option<u64> {
        let critical = self.job.limits.critical_memory_percent;
        if critical == 0 {
            return None;
        }
        let (cluster, member) = (self.job.cluster, &self.job.snapshot.members[t]);
        match self.polling(cluster.room(member)).await {
            Ok(room) => room.map(|r| r.free(critical)),
            Err(e) => {
                warn!(member = %member.label(), cause = %e, "could not read the target's memory; its moves fail if it is full");
                None
            }
        }
    }

    /// Holds back the pending move at `i`, whose target `t` has `free` bytes of room
    /// left, and marks `t` full: no move to it starts this run.
    pub(super) fn hold_back(&mut self, i: usize, t: usize, free: u64) {
        if !self.full[t] {
            let member = &self.job.snapshot.members[t];
            warn!(member = %member.label(), free_bytes = free, "target has no room below critical memory: no more moves to it this run");
            self.full[t] = true;
        }
        self.pending.remove(i);
        self.no_room += 1;
        self.job.metrics.moves_no_room_total.inc();
    }
}
