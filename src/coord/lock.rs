//! The cluster lock: try once, held under a lease kept alive every TTL/3, released by
//! revoking the lease; and the fence a mover asks before each move and each commit.
//!
//! Owns: `Holder`, `LockGuard`, the keep-alive task, [`Fence`] and its typed
//! [`FenceError`]. Does not own: the connection (the parent module) or the records kept
//! under the lock ([`super::state`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Backend, Coordinator, LockError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Holder {
    pub member: String,
    pub started_at: DateTime<Utc>,
    /// What it runs: "scheduled", "manual", "evacuation".
    pub operation: String,
}

pub enum Acquire {
    Acquired(LockGuard),
    HeldElsewhere(Holder),
}

/// The lock, held. Dropping it without `release` lets the lease expire.
pub struct LockGuard {
    pub(crate) id: LockId,
    pub holder: Holder,
    /// Cancelled when the keep-alive is lost: the run must stop.
    pub lost: CancellationToken,
    stop_keepalive: CancellationToken,
    /// When etcd last confirmed the lease, and how long a confirmation vouches for it:
    /// None in-process (the lock cannot be lost).
    confirmed: Option<(Arc<Mutex<Instant>>, Duration)>,
}

impl LockGuard {
    /// Whether the lock is ours now, as far as this process can tell without asking:
    /// not lost, and confirmed recently enough. A process frozen past its lease answers
    /// false the moment it runs again, before its keep-alive has found out.
    pub fn held_check(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let (lost, confirmed) = (self.lost.clone(), self.confirmed.clone());
        move || {
            !lost.is_cancelled()
                && confirmed.as_ref().is_none_or(|(at, ttl)| at.lock().unwrap().elapsed() < *ttl * 3 / 4)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockId {
    Lease(i64),
    Local(u64),
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_keepalive.cancel();
    }
}

/// Why the fence refused: the lock is no longer ours (or cannot be confirmed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    #[error("the lock's lease keep-alive was lost")]
    KeepAliveLost,
    #[error("the lock is now held under another lease ({0})")]
    HeldElsewhere(String),
    #[error("the lock key is gone (lease expired)")]
    Expired,
    #[error("the lock could not be confirmed: {0}")]
    Unconfirmed(String),
    /// A write under the lock (a move's intent) found the lock under another lease, or gone.
    #[error("the lock is no longer ours")]
    NotHolder,
}

/// Asked before each move and right before each commit: is the lock still ours?
pub trait Fence: Send + Sync {
    fn check(&self) -> impl std::future::Future<Output = Result<(), FenceError>> + Send;
}

impl Coordinator {
    pub async fn try_lock(&self, operation: &str) -> Result<Acquire, LockError> {
        let holder = Holder { member: self.member.clone(), started_at: Utc::now(), operation: operation.to_string() };
        match &self.backend {
            Backend::Local(state) => {
                let mut s = state.lock().expect("local state");
                if let Some((_, h)) = &s.holder {
                    return Ok(Acquire::HeldElsewhere(h.clone()));
                }
                s.next_id += 1;
                let id = s.next_id;
                s.holder = Some((id, holder.clone()));
                Ok(Acquire::Acquired(LockGuard {
                    id: LockId::Local(id),
                    holder,
                    lost: CancellationToken::new(),
                    stop_keepalive: CancellationToken::new(),
                    confirmed: None,
                }))
            }
            Backend::Etcd(_) => {
                let ttl = self.ttl.as_secs().max(1) as i64;
                let lease = self.etcd(|mut c| async move { c.lease_grant(ttl, None).await }).await?.id();
                let key = self.keys.lock();
                let value = serde_json::to_vec(&holder).expect("holder serializes");
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let resp = match self.etcd(|mut c| async move { c.txn(txn).await }).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = self.etcd(|mut c| async move { c.lease_revoke(lease).await }).await;
                        return Err(e);
                    }
                };
                if resp.succeeded() {
                    let lost = CancellationToken::new();
                    let stop = CancellationToken::new();
                    let client = self.client().await?;
                    let confirmed = Arc::new(Mutex::new(Instant::now()));
                    tokio::spawn(keep_alive(client, lease, self.ttl, lost.clone(), stop.clone(), confirmed.clone()));
                    return Ok(Acquire::Acquired(LockGuard {
                        id: LockId::Lease(lease),
                        holder,
                        lost,
                        stop_keepalive: stop,
                        confirmed: Some((confirmed, self.ttl)),
                    }));
                }
                let _ = self.etcd(|mut c| async move { c.lease_revoke(lease).await }).await;
                let other = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => {
                        g.kvs().first().and_then(|kv| serde_json::from_slice::<Holder>(kv.value()).ok())
                    }
                    _ => None,
                });
                Ok(Acquire::HeldElsewhere(other.unwrap_or(Holder {
                    member: "unknown".into(),
                    started_at: Utc::now(),
                    operation: "unknown".into(),
                })))
            }
        }
    }

    /// The fence: is the lock still ours? Checked before every move.
    pub async fn check(&self, guard: &LockGuard) -> Result<(), FenceError> {
        if guard.lost.is_cancelled() {
            return Err(FenceError::KeepAliveLost);
        }
        match (&self.backend, guard.id) {
            (Backend::Local(state), LockId::Local(id)) => match &state.lock().expect("local state").holder {
                Some((h, _)) if *h == id => Ok(()),
                Some((_, h)) => Err(FenceError::HeldElsewhere(format!("in-process, by {}", h.member))),
                None => Err(FenceError::Expired),
            },
            (Backend::Etcd(_), LockId::Lease(lease)) => {
                let key = self.keys.lock();
                let resp = self
                    .etcd(|mut c| async move { c.get(key, None).await })
                    .await
                    .map_err(|e| FenceError::Unconfirmed(e.to_string()))?;
                match resp.kvs().first() {
                    Some(kv) if kv.lease() == lease => Ok(()),
                    Some(kv) => Err(FenceError::HeldElsewhere(String::from_utf8_lossy(kv.value()).into_owned())),
                    None => Err(FenceError::Expired),
                }
            }
            _ => Err(FenceError::Unconfirmed("a guard of another kind of lock".into())),
        }
    }

    /// Releases the lock (revokes the lease: the key goes with it).
    pub async fn release(&self, guard: LockGuard) {
        guard.stop_keepalive.cancel();
        match (&self.backend, guard.id) {
            (Backend::Local(state), LockId::Local(id)) => {
                let mut s = state.lock().expect("local state");
                if s.holder.as_ref().is_some_and(|(h, _)| *h == id) {
                    s.holder = None;
                }
            }
            (Backend::Etcd(_), LockId::Lease(lease)) => {
                if let Err(e) = self.etcd(|mut c| async move { c.lease_revoke(lease).await }).await {
                    warn!(cause = %e, "could not revoke the lock lease; it expires by itself");
                }
            }
            _ => {}
        }
    }

    /// The current holder, if any.
    pub async fn holder(&self) -> Result<Option<Holder>, LockError> {
        match &self.backend {
            Backend::Local(s) => Ok(s.lock().expect("local state").holder.as_ref().map(|(_, h)| h.clone())),
            Backend::Etcd(_) => self.get_json(self.keys.lock()).await,
        }
    }
}

async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
    confirmed: Arc<Mutex<Instant>>,
) {
    let mut last_ok = Instant::now();
    let mut stream = None;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if stream.is_none() {
            match tokio::time::timeout(ttl / 3, client.lease_keep_alive(lease)).await {
                Ok(Ok(s)) => stream = Some(s),
                Ok(Err(e)) => debug!(cause = %e, "lease keep-alive stream not open"),
                Err(_) => debug!("lease keep-alive stream open timed out"),
            }
        }
        if let Some((keeper, s)) = stream.as_mut() {
            let round = async {
                keeper.keep_alive().await?;
                s.message().await
            };
            match tokio::time::timeout(ttl / 3, round).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    last_ok = Instant::now();
                    *confirmed.lock().unwrap() = last_ok;
                }
                Ok(Ok(Some(_))) => {
                    warn!(lease, "lock lease expired");
                    lost.cancel();
                    return;
                }
                _ => stream = None,
            }
        }
        if last_ok.elapsed() >= ttl * 3 / 4 {
            warn!(lease, since_ms = last_ok.elapsed().as_millis() as u64, "lock lease keep-alive lost");
            lost.cancel();
            return;
        }
    }
}

/// The fence the executor asks before each move.
pub struct GuardFence<'a> {
    pub coordinator: &'a Coordinator,
    pub guard: &'a LockGuard,
}

impl Fence for GuardFence<'_> {
    async fn check(&self) -> Result<(), FenceError> {
        self.coordinator.check(self.guard).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::RunRecord;

    #[tokio::test]
    async fn local_lock_is_exclusive_and_fenced() {
        let c = Coordinator::new(None, "x", "m1").unwrap();
        assert!(c.is_standalone());
        let Acquire::Acquired(g) = c.try_lock("manual").await.unwrap() else { panic!("not acquired") };
        match c.try_lock("scheduled").await.unwrap() {
            Acquire::HeldElsewhere(h) => assert_eq!(h.operation, "manual"),
            Acquire::Acquired(_) => panic!("acquired twice"),
        }
        assert!(c.check(&g).await.is_ok());
        assert_eq!(c.holder().await.unwrap().unwrap().member, "m1");
        let rec = RunRecord {
            slot: Some(5),
            member: "m1".into(),
            finished_at: Utc::now(),
            outcome: "skipped".into(),
            reason: None,
            moved_bytes: 0,
        };
        assert!(c.record_run(&g, &rec).await.unwrap());
        c.release(g).await;
        assert!(c.holder().await.unwrap().is_none());
        assert_eq!(c.last_run().await.unwrap().unwrap().slot, Some(5));
        let Acquire::Acquired(_g) = c.try_lock("manual").await.unwrap() else { panic!("not re-acquired") };
    }
}
