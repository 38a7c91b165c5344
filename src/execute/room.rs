//! Room on a move's target: its memory read before each move, and the moves held back
//! when it has none below `balance.critical-memory-percent` of its `maxmemory`.
//!
//! Owns: that check, for the executor. Does not own: what the planner counted (`plan`)
//! or how a server reports its memory (the backend's `room`).

use tracing::warn;

use super::Executor;
use crate::cluster::Cluster;
use crate::coord::Fence;

/// Whether a pending move may start, as its target's room says.
pub(super) enum RoomFor {
    /// It fits: what a group to this target may still carry, where it has a limit.
    Fits(Option<u64>),
    /// It fits the target's memory as read, but not beside the moves in flight to it:
    /// it waits for them to land and the memory to be read again.
    Wait,
    /// It does not fit: held back, and the target marked full for the run.
    Full,
    /// The run stopped during the read.
    Stop,
}

impl<C: Cluster, F: Fence> Executor<'_, C, F> {
    /// Reads the room of target `t` for the pending move at `i` of `bytes`. Beside the
    /// move, room is kept for what its transfer holds before it lands ([`Self::in_flight`])
    /// and for every move in flight to `t`, which its memory as read may not show yet, so
    /// moves running at once into one member never fill it past `critical-memory-percent`.
    pub(super) async fn room_for(&mut self, i: usize, t: usize, bytes: u64) -> RoomFor {
        let room = self.room_of(t).await;
        if self.stopped.is_some() {
            return RoomFor::Stop;
        }
        let Some(free) = room else { return RoomFor::Fits(None) };
        let need = self.in_flight(bytes);
        if need > free {
            self.hold_back(i, t, free);
            return RoomFor::Full;
        }
        let incoming = self.incoming[t];
        if need.saturating_add(incoming) > free {
            return RoomFor::Wait;
        }
        RoomFor::Fits(Some(self.fits_in(free - incoming).max(bytes)))
    }

    /// What a move (or group) of `bytes` may take of a target's memory while in flight:
    /// its bytes, and beside them what the transfer holds before they land (a batch, or
    /// the largest key, which MIGRATE holds serialised).
    pub(super) fn in_flight(&self, bytes: u64) -> u64 {
        let buffer = bytes.min(self.job.limits.transfer_buffer_bytes).max(self.job.snapshot.observed.largest_key_bytes);
        bytes.saturating_add(buffer)
    }

    /// The most bytes a group may carry into `avail` bytes of room: the largest `b` whose
    /// [`Self::in_flight`] fits.
    fn fits_in(&self, avail: u64) -> u64 {
        let (batch, largest) = (self.job.limits.transfer_buffer_bytes, self.job.snapshot.observed.largest_key_bytes);
        let beside_a_batch = avail.saturating_sub(batch.max(largest));
        let below_a_batch = (avail / 2).min(batch).min(avail.saturating_sub(largest));
        beside_a_batch.max(below_a_batch)
    }

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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::cluster::{Cluster, ClusterError, MoveStats, Pace, RepairOptions, RepairReport, Room};
    use crate::coord::{Fence, FenceError};
    use crate::execute::{Job, Limits, Progress, RunReport, execute};
    use crate::metrics::Metrics;
    use crate::model::{ClusterSnapshot, Member, fixtures::*};
    use crate::plan::{Move, MoveKind, Plan, PlanOptions, plan};

    struct Ours;

    impl Fence for Ours {
        async fn check(&self) -> Result<(), FenceError> {
            Ok(())
        }
    }

    /// Members whose used memory grows by a move's bytes only when the move lands, some
    /// time after it starts, as a target's memory does under MIGRATE or an atomic job.
    struct Filling {
        used: Mutex<Vec<u64>>,
        max_bytes: u64,
        /// Moves running now, and the most that ran at once.
        running: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl Filling {
        fn new(members: usize, max_bytes: u64) -> Filling {
            Filling {
                used: Mutex::new(vec![0; members]),
                max_bytes,
                running: Default::default(),
                peak: Default::default(),
            }
        }
    }

    fn index(m: &Member) -> usize {
        m.id.trim_start_matches('m').parse::<usize>().unwrap() - 1
    }

    impl Cluster for Filling {
        async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
            unreachable!()
        }
        async fn repair<F: Fence>(&self, _: &RepairOptions, _: &F) -> Result<RepairReport, ClusterError> {
            Ok(Default::default())
        }
        async fn room(&self, member: &Member) -> Result<Option<Room>, ClusterError> {
            let used = self.used.lock().unwrap()[index(member)];
            Ok(Some(Room { used_bytes: used, max_bytes: self.max_bytes }))
        }
        async fn move_bucket<P: Pace, F: Fence>(
            &self,
            _: &ClusterSnapshot,
            mv: &Move,
            _: &P,
            _: &F,
        ) -> Result<MoveStats, ClusterError> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.used.lock().unwrap()[mv.to as usize] += mv.bytes;
            self.running.fetch_sub(1, SeqCst);
            Ok(MoveStats { keys: 1, bytes: mv.bytes, ..Default::default() })
        }
    }

    /// Room checked at 100% of maxmemory, `per_member` moves per member, `buffer` bytes
    /// kept beside each transfer.
    fn limits(per_member: u32, buffer: u64) -> Limits {
        Limits {
            max_concurrent_moves: 0,
            max_moves_per_member: per_member,
            max_bytes_per_second: 0,
            max_bytes_per_run: 0,
            max_run_time: Duration::from_secs(60),
            critical_memory_percent: 100,
            transfer_buffer_bytes: buffer,
        }
    }

    async fn run(cluster: &Filling, s: &ClusterSnapshot, p: &Plan, l: &Limits) -> (RunReport, Metrics) {
        let (progress, metrics) = (Progress::default(), Metrics::new());
        let job = Job {
            cluster,
            snapshot: s,
            plan: p,
            limits: l,
            fence: &Ours,
            progress: &progress,
            metrics: &metrics,
            lost: None,
        };
        let report = execute(job, &CancellationToken::new()).await;
        (report, metrics)
    }

    #[tokio::test]
    async fn moves_at_once_into_one_member_leave_room_for_each_other() {
        // Three sources send 400 bytes each to m4, which has 1000 bytes of room: with
        // three moves per member they could all start at once, each finding 1000 free.
        let layout: Vec<(u64, Vec<u32>)> = (0..3).map(|i| (400, vec![i])).collect();
        let s = make_snapshot(make_members(4), &layout);
        let moves = (0..3)
            .map(|i| Move { kind: MoveKind::Copy, bucket: i as u64, bucket_index: i, from: i, to: 3, bytes: 400 })
            .collect();
        let mut p = plan(&s, &PlanOptions::default()).unwrap();
        p.moves = moves;
        let cluster = Filling::new(4, 1000);
        let l = limits(3, 0);
        let (r, m) = run(&cluster, &s, &p, &l).await;
        assert_eq!(r.moves_done, 2, "{r:?}");
        assert_eq!(r.moves_no_room, 1, "{r:?}");
        assert_eq!(m.moves_no_room_total.get(), 1);
        assert!(cluster.used.lock().unwrap()[3] <= 1000, "{:?}", cluster.used.lock().unwrap());
    }

    /// Beside each move in flight, room is kept for what its transfer holds on the target
    /// before it lands (a MIGRATE batch): two 300-byte moves into 1000 bytes of room, with
    /// a 300-byte batch each, run one after the other, not together (each needs 600).
    #[tokio::test]
    async fn room_is_kept_for_each_transfer_buffer() {
        let layout: Vec<(u64, Vec<u32>)> = (0..2).map(|i| (300, vec![i])).collect();
        let s = make_snapshot(make_members(3), &layout);
        let mut p = plan(&s, &PlanOptions::default()).unwrap();
        p.moves = (0..2)
            .map(|i| Move { kind: MoveKind::Copy, bucket: i as u64, bucket_index: i, from: i, to: 2, bytes: 300 })
            .collect();
        for (buffer, together) in [(0, 2), (300, 1)] {
            let cluster = Filling::new(3, 1000);
            let l = limits(2, buffer);
            let (r, _) = run(&cluster, &s, &p, &l).await;
            assert_eq!(r.moves_done, 2, "buffer {buffer}: {r:?}");
            let peak = cluster.peak.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(peak, together, "buffer {buffer}: moves at once into the target");
        }
    }
}
