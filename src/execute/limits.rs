//! What bounds a run's moves: the configured limits, the byte rate shared by every move,
//! and the live progress `/status` reads.
//!
//! Owns: `Limits`, `RatePacer`, `Progress`. Does not own: the order of moves (the
//! executor).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::cluster::Pace;

#[derive(Clone, Debug)]
pub struct Limits {
    /// 0 = no total: the per-member limit bounds it.
    pub max_concurrent_moves: u32,
    pub max_moves_per_member: u32,
    /// 0 = unlimited.
    pub max_bytes_per_second: u64,
    /// 0 = unlimited.
    pub max_bytes_per_run: u64,
    pub max_run_time: Duration,
    /// A target with `maxmemory` receives no move that would take it past this percent
    /// of it (read before each move); 0: not checked.
    pub critical_memory_percent: u32,
    /// Room kept on a target beside each move in flight to it, for what the transfer
    /// holds in the target's memory before it lands (a MIGRATE batch of up to
    /// `migrate-batch-bytes`, parsed in the target's query buffer).
    pub transfer_buffer_bytes: u64,
}

impl Limits {
    pub fn from_config(x: &crate::config::ExecutionConfig) -> Limits {
        Limits {
            max_concurrent_moves: x.max_concurrent_moves,
            max_moves_per_member: x.max_moves_per_member,
            max_bytes_per_second: x.max_bytes_per_second.0,
            max_bytes_per_run: x.max_bytes_per_run.0,
            max_run_time: x.max_run_time.0,
            critical_memory_percent: 0,
            transfer_buffer_bytes: x.migrate_batch_bytes.0,
        }
    }
}

/// Live progress, read by `/status` while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    pub planned: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_planned: AtomicU64,
    pub bytes_done: AtomicU64,
}

impl Progress {
    pub fn reset(&self, moves: u64, bytes: u64) {
        self.planned.store(moves, Ordering::Relaxed);
        self.bytes_planned.store(bytes, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        self.bytes_done.store(0, Ordering::Relaxed);
    }
}

/// The unused time a pacer carries: a take within the rate over the last BURST does not
/// wait.
const BURST: Duration = Duration::from_millis(10);

/// Paces bytes across all moves of a run: each take reserves the next free interval.
pub struct RatePacer {
    bytes_per_second: u64,
    next: Mutex<Instant>,
}

impl RatePacer {
    pub fn new(bytes_per_second: u64) -> RatePacer {
        RatePacer { bytes_per_second, next: Mutex::new(Instant::now()) }
    }
}

impl Pace for RatePacer {
    async fn take(&self, bytes: u64) {
        if self.bytes_per_second == 0 || bytes == 0 {
            return;
        }
        let (start, now) = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            // Up to BURST of unused time counts: moves in parallel reserving small
            // intervals in turn do not each wait for the one before them.
            let start = (*next).max(now.checked_sub(BURST).unwrap_or(now));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
            (start, now)
        };
        // Within the rate, no sleep at all: a timer, even one already due, costs a tick of
        // the runtime's clock (1 ms), and a move takes one per batch of keys.
        if start > now {
            tokio::time::sleep_until(start.into()).await;
        }
    }
}
