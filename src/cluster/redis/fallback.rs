//! The legacy mover after an atomic job could not move some slots, and which of our
//! own moves may run on a node at once under the atomic mover. Valkey
//! refuses a `CLUSTER MIGRATESLOTS` job on a node with a slot open the legacy way
//! ("Slots are being manually migrated", or "imported" on the target), and a legacy
//! `SETSLOT IMPORTING` where a job imports ("Slot import in progress"). So one slot
//! handed to the legacy mover beside jobs in flight made every job on its two nodes
//! fall back too, a slot at a time (nemesis, Valkey seed 62: 9,490 fallbacks in 25
//! minutes). Jobs share a node; a legacy fallback has its two nodes to itself, waiting
//! for the jobs on them to end, and jobs wait for it.
//!
//!
//! Each slot handed over passes the fence before it opens: the group's intents were
//! recorded when it began, which may be long ago, and a holder that lost the lock since
//! (frozen past its lease, say) must not open a slot the next holder's repair already
//! found closed and forgot (nemesis, Valkey seed 62: nine slots opened 2 s after the
//! lease was lost stayed open, recorded nowhere, for every later run).
//!
//! Owns: that rule, the fence before each slot, and the count of fallbacks. Does not own:
//! the movers ([`super::atomic`], [`super::legacy`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tracing::warn;

use super::atomic::{Atomic, SlotEnd};
use super::legacy::SlotMove;
use super::topology::Topology;
use crate::cluster::{ClusterError, Fence, Unpaced};

impl Atomic<'_> {
    /// Moves `slots` from `src` to `dst` with the legacy mover, one at a time, once no
    /// atomic job runs on either node; `why` the atomic mover could not.
    pub(super) async fn fall_back<F: Fence>(
        &self,
        topo: &Topology,
        (src, dst): (&str, &str),
        slots: &[u16],
        estimates: &HashMap<u16, u64>,
        why: &str,
        fence: &F,
    ) -> Vec<(u16, SlotEnd)> {
        let mut ends = Vec::with_capacity(slots.len());
        if slots.is_empty() {
            return ends;
        }
        let _alone = self.fallbacks.alone(src, dst).await;
        for &slot in slots {
            if let Err(cause) = fence.check().await {
                ends.push((slot, SlotEnd::Failed(ClusterError::FencedBeforeStart { bucket: slot as u64, cause })));
                continue;
            }
            warn!(slot, from = %src, to = %dst, cause = %why, "atomic migration did not move the slot; moving it with the legacy mover");
            // A sampled size is no measurement: the legacy mover then measures what it moves.
            let estimate = if self.sizer.exact() { estimates[&slot] } else { 0 };
            let m = SlotMove { slot, src, dst, resume: false, estimate };
            // The group's bytes were paced before its first job.
            let end = match self.legacy().finish(topo, m, &Unpaced, fence).await {
                Ok(stats) => {
                    self.fallbacks.counted();
                    SlotEnd::MovedByLegacy(stats)
                }
                Err(e) => SlotEnd::Failed(e),
            };
            ends.push((slot, end));
        }
        ends
    }
}

#[derive(Default)]
pub(super) struct Fallbacks {
    /// Slots the legacy mover moved after an atomic job could not.
    count: AtomicU64,
    nodes: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

impl Fallbacks {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn counted(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Both nodes' gates, in one order for every caller, so two moves never each hold
    /// one and wait for the other's.
    fn gates(&self, a: &str, b: &str) -> Vec<Arc<RwLock<()>>> {
        let mut names = [a, b];
        names.sort_unstable();
        let mut nodes = self.nodes.lock().expect("gates");
        let mut gates: Vec<Arc<RwLock<()>>> =
            names.iter().map(|n| nodes.entry((*n).to_string()).or_default().clone()).collect();
        gates.dedup_by(|x, y| Arc::ptr_eq(x, y));
        gates
    }

    /// Held while an atomic job runs between `a` and `b`.
    pub async fn share(&self, a: &str, b: &str) -> Vec<OwnedRwLockReadGuard<()>> {
        let mut held = Vec::new();
        for g in self.gates(a, b) {
            held.push(g.read_owned().await);
        }
        held
    }

    /// Held while the legacy mover moves slots between `a` and `b`.
    pub async fn alone(&self, a: &str, b: &str) -> Vec<OwnedRwLockWriteGuard<()>> {
        let mut held = Vec::new();
        for g in self.gates(a, b) {
            held.push(g.write_owned().await);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Jobs on one node run together; a fallback on it waits for them, and a job after
    /// the fallback waits for it; moves on other nodes are not held up.
    #[tokio::test]
    async fn jobs_share_a_node_and_a_fallback_has_it_alone() {
        let f = Arc::new(Fallbacks::default());
        let a = f.share("x", "y").await;
        let b = f.share("y", "x").await;
        let fallback = tokio::spawn({
            let f = f.clone();
            async move {
                let _g = f.alone("x", "z").await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fallback.is_finished(), "a fallback waits for the jobs on its nodes");
        let elsewhere = tokio::time::timeout(Duration::from_secs(5), f.share("z", "w"));
        drop(a);
        assert!(!fallback.is_finished(), "and for every one of them");
        drop(b);
        fallback.await.unwrap();
        elsewhere.await.unwrap();
        let _again = tokio::time::timeout(Duration::from_secs(5), f.share("x", "y")).await.unwrap();
        f.counted();
        assert_eq!(f.count(), 1);
    }
}
