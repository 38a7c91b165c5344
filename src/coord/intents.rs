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

impl Coordinator {
    /// Records `intent` before its move starts; fails when the lock is no longer ours.
    pub async fn record_move(&self, guard: &LockGuard, intent: &MoveIntent) -> Result<(), LockError> {
        match (&self.backend, guard.id) {
            (Backend::Local(_), _) => {
                self.update_kept(|k| k.moves.insert(intent.bucket, intent.clone())).await?;
                Ok(())
            }
            (Backend::Etcd(_), LockId::Lease(lease)) => {
                let value = serde_json::to_vec(intent).expect("intent serializes");
                let txn = Txn::new()
                    .when([Compare::lease(self.keys.lock(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::put(self.keys.move_intent(intent.bucket), value, None)]);
                match self.etcd(|mut c| async move { c.txn(txn).await }).await?.succeeded() {
                    true => Ok(()),
                    false => Err(LockError::NotHolder),
                }
            }
            _ => Err(LockError::NotHolder),
        }
    }

    /// Removes the intent of a move that committed, rolled back or was settled.
    pub async fn clear_move(&self, bucket: u64) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(_) => {
                self.update_kept(|k| k.moves.remove(&bucket)).await?;
                Ok(())
            }
            Backend::Etcd(_) => self.delete(self.keys.move_intent(bucket)).await,
        }
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
        c.record_move(&g, &intent).await.unwrap();
        assert_eq!(c.moves().await.unwrap(), vec![intent]);
        c.clear_move(9).await.unwrap();
        assert!(c.moves().await.unwrap().is_empty());
        assert!(c.claim_scheduled_slot(&g, 100).await.unwrap());
        assert!(!c.claim_scheduled_slot(&g, 100).await.unwrap(), "a slot runs once");
        assert!(!c.claim_scheduled_slot(&g, 90).await.unwrap(), "never backwards");
        assert!(c.claim_scheduled_slot(&g, 160).await.unwrap());
        assert_eq!(c.scheduled_slot().await.unwrap(), Some(160));
    }
}
