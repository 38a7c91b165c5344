//! Records kept in the coordinator: the last run, pause, evacuations, registrations, the
//! size tables sidecars publish.
//!
//! Owns: their types and keys' contents. Does not own: the lock ([`super::lock`]).

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::lock::{LockGuard, LockId};
use super::{Backend, Coordinator, LockError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// The cron slot (Unix seconds) the run belonged to; None for on-demand runs.
    pub slot: Option<i64>,
    pub member: String,
    pub finished_at: DateTime<Utc>,
    pub outcome: String,
    pub reason: Option<String>,
    pub moved_bytes: u64,
}

/// An evacuation request, persisted until stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Evacuation {
    pub member: String,
    pub started_at: DateTime<Utc>,
    /// Bytes per second; 0 = the configured rate.
    pub rate: u64,
    /// Members to move to; empty = the planner's choice.
    pub migrate_to: Vec<String>,
}

/// The bucket sizes a sidecar measured on its own member, published in etcd
/// (`cluster.sizing-refresh`) for whichever sidecar takes the lock: it uses an entry for
/// a bucket the member still owns, holding the same key count, measured within
/// `cluster.sizing-max-age`, and measures the rest itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SizeTable {
    pub member: String,
    pub taken_at: DateTime<Utc>,
    /// Buckets holding keys (an empty bucket needs no measuring).
    pub buckets: Vec<MeasuredBucket>,
}

/// One bucket's measurement. Written as an array, `[bucket, keys, bytes, largest_key,
/// big_keys, variance, age_ms]`, to keep a member of 16384 buckets well inside etcd's
/// request limit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "MeasuredRow", into = "MeasuredRow")]
pub struct MeasuredBucket {
    pub bucket: u64,
    pub keys: u64,
    pub bytes: u64,
    pub largest_key: u64,
    /// Keys above `execution.max-key-bytes`.
    pub big_keys: u32,
    /// Variance of `bytes` as an estimate (0: every key was measured).
    pub variance: f64,
    /// How long before the table's `taken_at` it was measured.
    pub age_ms: u64,
}

type MeasuredRow = (u64, u64, u64, u64, u32, f64, u64);

impl From<MeasuredRow> for MeasuredBucket {
    fn from((bucket, keys, bytes, largest_key, big_keys, variance, age_ms): MeasuredRow) -> Self {
        MeasuredBucket { bucket, keys, bytes, largest_key, big_keys, variance, age_ms }
    }
}

impl From<MeasuredBucket> for MeasuredRow {
    fn from(m: MeasuredBucket) -> Self {
        (m.bucket, m.keys, m.bytes, m.largest_key, m.big_keys, m.variance, m.age_ms)
    }
}

impl Coordinator {
    pub async fn last_run(&self) -> Result<Option<RunRecord>, LockError> {
        match &self.backend {
            Backend::Local(_) => Ok(self.kept().await.last_run),
            Backend::Etcd(_) => self.get_json(self.keys.last_run()).await,
        }
    }

    /// Records a finished run, only while `guard` still holds the lock.
    pub async fn record_run(&self, guard: &LockGuard, record: &RunRecord) -> Result<bool, LockError> {
        match (&self.backend, guard.id) {
            (Backend::Local(_), _) => {
                self.update_kept(|k| k.last_run = Some(record.clone())).await?;
                Ok(true)
            }
            (Backend::Etcd(_), LockId::Lease(lease)) => {
                let txn = Txn::new()
                    .when([Compare::lease(self.keys.lock(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::put(self.keys.last_run(), serde_json::to_vec(record).unwrap(), None)]);
                Ok(self.etcd(|mut c| async move { c.txn(txn).await }).await?.succeeded())
            }
            _ => Ok(false),
        }
    }

    pub async fn paused(&self) -> Result<Option<String>, LockError> {
        match &self.backend {
            Backend::Local(_) => Ok(self.kept().await.paused),
            Backend::Etcd(_) => self.get_json(self.keys.paused()).await,
        }
    }

    pub async fn set_paused(&self, by: Option<String>) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(_) => self.update_kept(|k| k.paused = by).await,
            Backend::Etcd(_) => match by {
                Some(b) => self.put_json(self.keys.paused(), &b, None).await,
                None => self.delete(self.keys.paused()).await,
            },
        }
    }

    pub async fn evacuations(&self) -> Result<Vec<Evacuation>, LockError> {
        match &self.backend {
            Backend::Local(_) => Ok(self.kept().await.evacuations.into_values().collect()),
            Backend::Etcd(_) => self.list_json(self.keys.evacuations()).await,
        }
    }

    pub async fn set_evacuation(&self, member: &str, e: Option<&Evacuation>) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(_) => {
                self.update_kept(|k| match e {
                    Some(e) => k.evacuations.insert(member.to_string(), e.clone()),
                    None => k.evacuations.remove(member),
                })
                .await?;
                Ok(())
            }
            Backend::Etcd(_) => {
                let key = format!("{}{member}", self.keys.evacuations());
                match e {
                    Some(e) => self.put_json(key, e, None).await,
                    None => self.delete(key).await,
                }
            }
        }
    }

    /// Writes this sidecar's registration under a lease of its own, kept alive by
    /// calling this again at least every TTL/3 (the sidecar's heartbeat does).
    pub async fn register<T: serde::Serialize>(&self, state: &T) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(s) => {
                let value = serde_json::to_value(state).expect("a registration is plain data");
                s.lock().expect("local state").sidecars.insert(self.member.clone(), value);
                Ok(())
            }
            Backend::Etcd(_) => {
                let lease = self.registration_lease().await?;
                let key = format!("{}{}", self.keys.sidecars(), self.member);
                self.put_json(key, state, Some(lease)).await
            }
        }
    }

    /// The lease this sidecar's records live under: kept alive, or granted again when
    /// lost. They vanish with it when the sidecar does.
    async fn registration_lease(&self) -> Result<i64, LockError> {
        let mut reg = self.registration.lock().await;
        let ttl = self.ttl.as_secs().max(1) as i64;
        let lease = match *reg {
            Some(l) => {
                let alive = self
                    .etcd(|mut c| async move {
                        let (mut k, mut s) = c.lease_keep_alive(l).await?;
                        k.keep_alive().await?;
                        Ok(s.message().await?.map(|r| r.ttl()).unwrap_or(0))
                    })
                    .await;
                match alive {
                    Ok(t) if t > 0 => l,
                    _ => self.etcd(|mut c| async move { c.lease_grant(ttl, None).await }).await?.id(),
                }
            }
            None => self.etcd(|mut c| async move { c.lease_grant(ttl, None).await }).await?.id(),
        };
        *reg = Some(lease);
        Ok(lease)
    }

    /// Publishes the sizes this sidecar measured on its member (None: it owns no buckets
    /// now, and a table it published before is withdrawn). Under the registration's
    /// lease: a table goes with its sidecar. Standalone: nothing to publish to (the only
    /// sidecar keeps its sizes in its own cache).
    pub async fn publish_sizes(&self, table: Option<&SizeTable>) -> Result<(), LockError> {
        if self.is_standalone() {
            return Ok(());
        }
        let key = format!("{}{}", self.keys.sizes(), self.member);
        match table {
            Some(t) => {
                let lease = self.registration_lease().await?;
                self.put_json(key, t, Some(lease)).await
            }
            None => self.delete(key).await,
        }
    }

    /// The size tables the sidecars published (none standalone). A table that cannot be
    /// read is left out: its buckets are measured.
    pub async fn size_tables(&self) -> Result<Vec<SizeTable>, LockError> {
        match &self.backend {
            Backend::Local(_) => Ok(Vec::new()),
            Backend::Etcd(_) => self.list_json(self.keys.sizes()).await,
        }
    }

    /// Publishes the traffic rates this sidecar keeps for its master, under the
    /// registration's lease (they go with their sidecar). Standalone: nothing to publish
    /// to.
    pub async fn publish_traffic<T: Serialize>(&self, table: &T) -> Result<(), LockError> {
        if self.is_standalone() {
            return Ok(());
        }
        let lease = self.registration_lease().await?;
        self.put_json(format!("{}{}", self.keys.traffic(), self.member), table, Some(lease)).await
    }

    /// The traffic tables the sidecars published (none standalone); one that cannot be
    /// read is left out.
    pub async fn traffic_tables<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, LockError> {
        match &self.backend {
            Backend::Local(_) => Ok(Vec::new()),
            Backend::Etcd(_) => self.list_json(self.keys.traffic()).await,
        }
    }

    /// Removes the registration (clean shutdown).
    pub async fn deregister(&self) {
        match &self.backend {
            Backend::Local(s) => {
                s.lock().expect("local state").sidecars.remove(&self.member);
            }
            Backend::Etcd(_) => {
                if let Some(l) = self.registration.lock().await.take() {
                    let _ = self.etcd(|mut c| async move { c.lease_revoke(l).await }).await;
                }
            }
        }
    }

    /// Every sidecar's registration that reads as a `T`; one that does not (another
    /// version's, or a torn write) is left out.
    pub async fn sidecars<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, LockError> {
        match &self.backend {
            Backend::Local(s) => {
                let s = s.lock().expect("local state");
                Ok(s.sidecars.values().filter_map(|v| T::deserialize(v).ok()).collect())
            }
            Backend::Etcd(_) => self.list_json(self.keys.sidecars()).await,
        }
    }
}
