//! Moves recorded before they start, and the cron slot last claimed by a scheduled run.
//!
//! - `moves/<bucket>`: a [`MoveIntent`], stored without a lease so it outlives a crashed
//!   holder; written only while the lock is ours (a transaction compares the lock's
//!   lease), removed when the move commits or rolls back, or when repair settles it.
//! - `runs/scheduled`: the cron slot (Unix seconds) of the last scheduled run. It only
//!   ever increases, and is claimed under the lock before a scheduled run does anything,
//!   so skewed clocks and manual runs in between never let a slot run twice.
//!
//! Owns: these keys. Does not own: deciding what to repair (the backend's repair reads
//! the intents) or when to run (the sidecar).

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::lock::{LockGuard, LockId};
use super::{Backend, Coordinator, LockError};
use crate::model::MoveIntent;

/// Operations in one etcd transaction at most: half of etcd's default `--max-txn-ops`
/// (128), so a server configured lower than the default still takes them.
const TXN_OPS: usize = 64;
/// Transactions of one call in flight at once. etcd commits concurrent proposals with one
/// disk sync, so the largest group an atomic job moves (4,096 slots) costs about one sync
/// instead of 64 in a row.
const TXNS_IN_FLIGHT: usize = 64;

impl Coordinator {
    /// Records the intents of moves before they start (one move, or the group of slots
    /// one atomic job moves): a transaction per [`TXN_OPS`] intents, up to
    /// [`TXNS_IN_FLIGHT`] at once, each on the condition that the lock is still ours,
    /// instead of one round trip and one disk sync per slot. Fails when the lock is no
    /// longer ours; the intents of the other transactions may stay recorded, and the
    /// caller clears them.
    pub async fn record_moves(&self, guard: &LockGuard, intents: &[MoveIntent]) -> Result<(), LockError> {
        match (&self.backend, guard.id) {
            (Backend::Local(_), _) => {
                self.update_kept(|k| k.moves.extend(intents.iter().map(|i| (i.bucket, i.clone())))).await?;
                Ok(())
            }
            (Backend::Etcd(_), LockId::Lease(lease)) => {
                let txns = intents.chunks(TXN_OPS).map(|chunk| {
                    let puts = chunk.iter().map(|i| {
                        let value = serde_json::to_vec(i).expect("intent serializes");
                        TxnOp::put(self.keys.move_intent(i.bucket), value, None)
                    });
                    Txn::new()
                        .when([Compare::lease(self.keys.lock(), CompareOp::Equal, lease)])
                        .and_then(puts.collect::<Vec<_>>())
                });
                let responses = self.txns(txns.collect()).await?;
                responses.iter().all(|r| r.succeeded()).then_some(()).ok_or(LockError::NotHolder)
            }
            _ => Err(LockError::NotHolder),
        }
    }

    /// Removes the intents of moves that committed, rolled back or were settled, a
    /// transaction per [`TXN_OPS`], up to [`TXNS_IN_FLIGHT`] at once.
    pub async fn clear_moves(&self, buckets: &[u64]) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(_) => {
                self.update_kept(|k| buckets.iter().for_each(|b| _ = k.moves.remove(b))).await?;
                Ok(())
            }
            Backend::Etcd(_) => {
                let txns = buckets.chunks(TXN_OPS).map(|chunk| {
                    Txn::new().and_then(
                        chunk.iter().map(|b| TxnOp::delete(self.keys.move_intent(*b), None)).collect::<Vec<_>>(),
                    )
                });
                self.txns(txns.collect()).await.map(drop)
            }
        }
    }

    /// Sends `txns`, up to [`TXNS_IN_FLIGHT`] at once; the responses in any order.
    async fn txns(&self, txns: Vec<Txn>) -> Result<Vec<etcd_client::TxnResponse>, LockError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        stream::iter(txns.into_iter().map(|txn| self.txn(txn))).buffer_unordered(TXNS_IN_FLIGHT).try_collect().await
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, LockError> {
        self.etcd(|mut c| async move { c.txn(txn).await }).await
    }

    /// Every recorded move, oldest bucket first.
    pub async fn moves(&self) -> Result<Vec<MoveIntent>, LockError> {
        let mut out: Vec<MoveIntent> = match &self.backend {
            Backend::Local(_) => self.kept().await.moves.into_values().collect(),
            Backend::Etcd(_) => self.list_json(self.keys.moves()).await?,
        };
        out.sort_by_key(|m| m.bucket);
        Ok(out)
    }

    /// The cron slot of the last scheduled run, if any.
    pub async fn scheduled_slot(&self) -> Result<Option<i64>, LockError> {
        match &self.backend {
            Backend::Local(_) => Ok(self.kept().await.scheduled),
            Backend::Etcd(_) => self.get_json(self.keys.scheduled()).await,
        }
    }

    /// Claims cron `slot` for a scheduled run: true when no run claimed it or a later
    /// one, and the lock is ours. Compare-and-swap on the record's revision, so two
    /// claims never both succeed.
    pub async fn claim_scheduled_slot(&self, guard: &LockGuard, slot: i64) -> Result<bool, LockError> {
        match (&self.backend, guard.id) {
            (Backend::Local(_), _) => {
                self.update_kept(|k| {
                    if k.scheduled.is_some_and(|done| done >= slot) {
                        return false;
                    }
                    k.scheduled = Some(slot);
                    true
                })
                .await
            }
            (Backend::Etcd(_), LockId::Lease(lease)) => {
                let key = self.keys.scheduled();
                let k = key.clone();
                let current = self.etcd(|mut c| async move { c.get(k, None).await }).await?;
                let (done, revision) = match current.kvs().first() {
                    Some(kv) => (serde_json::from_slice::<i64>(kv.value()).ok(), kv.mod_revision()),
                    None => (None, 0),
                };
                if done.is_some_and(|d| d >= slot) {
                    return Ok(false);
                }
                let txn = Txn::new()
                    .when([
                        Compare::lease(self.keys.lock(), CompareOp::Equal, lease),
                        Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                    ])
                    .and_then([TxnOp::put(key, slot.to_string(), None)]);
                Ok(self.etcd(|mut c| async move { c.txn(txn).await }).await?.succeeded())
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::coord::Acquire;

    #[tokio::test]
    async fn intents_and_scheduled_slots_in_process() {
        let c = Coordinator::new(None, "x", "m1").unwrap();
        let Acquire::Acquired(g) = c.try_lock("scheduled").await.unwrap() else { panic!("not acquired") };
        let intent =
            MoveIntent { bucket: 9, from: "a".into(), to: "b".into(), holder: "m1".into(), started_at: Utc::now() };
        c.record_moves(&g, std::slice::from_ref(&intent)).await.unwrap();
        assert_eq!(c.moves().await.unwrap(), vec![intent]);
        c.clear_moves(&[9]).await.unwrap();
        assert!(c.moves().await.unwrap().is_empty());
        assert!(c.claim_scheduled_slot(&g, 100).await.unwrap());
        assert!(!c.claim_scheduled_slot(&g, 100).await.unwrap(), "a slot runs once");
        assert!(!c.claim_scheduled_slot(&g, 90).await.unwrap(), "never backwards");
        assert!(c.claim_scheduled_slot(&g, 160).await.unwrap());
        assert_eq!(c.scheduled_slot().await.unwrap(), Some(160));
    }

    fn intent(bucket: u64) -> MoveIntent {
        MoveIntent { bucket, from: "a".into(), to: "b".into(), holder: "m1".into(), started_at: Utc::now() }
    }

    /// A group's intents go to etcd in transactions of at most `TXN_OPS`, each only while
    /// the lock is ours; clearing them takes as few.
    #[tokio::test]
    async fn a_groups_intents_are_recorded_in_etcd_together_and_only_under_the_lock() {
        let etcd = autobalancer_testkit::LocalEtcd::start().unwrap();
        let cfg = crate::config::EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: "/ab-intents".into(),
            ..Default::default()
        };
        let c = Coordinator::new(Some(&cfg), "x", "m1").unwrap();
        let Acquire::Acquired(g) = c.try_lock("manual").await.unwrap() else { panic!("not acquired") };
        let intents: Vec<MoveIntent> = (0..150).map(intent).collect();
        assert!(intents.len() > 2 * TXN_OPS, "more than two transactions' worth");
        c.record_moves(&g, &intents).await.unwrap();
        assert_eq!(c.moves().await.unwrap(), intents);
        c.clear_moves(&(0..100).collect::<Vec<u64>>()).await.unwrap();
        assert_eq!(c.moves().await.unwrap(), intents[100..].to_vec());
        // The lease is gone (expired, or revoked as here): nothing more is recorded.
        let LockId::Lease(lease) = g.id else { panic!("an etcd lock has a lease") };
        c.etcd(|mut e| async move { e.lease_revoke(lease).await }).await.unwrap();
        let more: Vec<MoveIntent> = (200..210).map(intent).collect();
        assert!(matches!(c.record_moves(&g, &more).await, Err(LockError::NotHolder)));
        assert_eq!(c.moves().await.unwrap().len(), 50, "no intent of the refused group");
    }
}
