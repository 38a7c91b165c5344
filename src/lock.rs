//! Coordination between sidecars: the cluster lock, the run record, registration and the
//! persistent operator state (pause, evacuations). In etcd, or in-process when the config
//! has no `[etcd]` (standalone: a warning says so).
//!
//! Keys under `<prefix>/<cluster_id>/`:
//! - `lock`: created in one transaction with our lease iff absent (try once, never queue);
//!   released by revoking the lease; the value names the holder and its start.
//! - `runs/last`: the last completed cron slot and its outcome, written only while the
//!   lock is ours (a transaction compares the lock's lease).
//! - `sidecars/<member>`: registration under a lease of its own.
//! - `paused`, `evacuations/<member>`: persistent, written by operators.
//!
//! Owns: these keys, leases and keep-alive, and the fence check. Does not own: when to
//! lock (the sidecar) or what runs under the lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp,
    TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::EtcdConfig;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// etcd cannot be reached or answered with an error.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Config(String),
}

impl From<etcd_client::Error> for LockError {
    fn from(e: etcd_client::Error) -> Self {
        LockError::Unavailable(e.to_string())
    }
}

/// Who holds the lock, and since when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub member: String,
    pub started_at: DateTime<Utc>,
    /// What it runs: "scheduled", "manual", "evacuation".
    pub operation: String,
}

/// The last completed run, shared by the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evacuation {
    pub member: String,
    pub started_at: DateTime<Utc>,
    /// Bytes per second; 0 = the configured rate.
    pub rate: u64,
    /// Members to move to; empty = the planner's choice.
    pub migrate_to: Vec<String>,
}

pub enum Acquire {
    Acquired(LockGuard),
    HeldElsewhere(Holder),
}

struct Keys {
    base: String,
}

impl Keys {
    fn lock(&self) -> String {
        format!("{}/lock", self.base)
    }
    fn last_run(&self) -> String {
        format!("{}/runs/last", self.base)
    }
    fn sidecars(&self) -> String {
        format!("{}/sidecars/", self.base)
    }
    fn paused(&self) -> String {
        format!("{}/paused", self.base)
    }
    fn evacuations(&self) -> String {
        format!("{}/evacuations/", self.base)
    }
}

#[derive(Default)]
struct LocalState {
    holder: Option<(u64, Holder)>,
    next_id: u64,
    last_run: Option<RunRecord>,
    paused: Option<String>,
    evacuations: BTreeMap<String, Evacuation>,
    sidecars: BTreeMap<String, serde_json::Value>,
}

enum Backend {
    Etcd { options: ConnectOptions, endpoints: Vec<String>, client: Mutex<Option<Client>> },
    Local(Arc<Mutex<LocalState>>),
}

pub struct Coordinator {
    backend: Backend,
    keys: Keys,
    member: String,
    ttl: Duration,
    /// Registration lease (etcd), re-granted when lost.
    registration: Mutex<Option<i64>>,
}

/// The lock, held. Dropping it without `release` lets the lease expire.
pub struct LockGuard {
    id: LockId,
    pub holder: Holder,
    /// Cancelled when the keep-alive is lost: the run must stop.
    pub lost: CancellationToken,
    stop_keepalive: CancellationToken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockId {
    Lease(i64),
    Local(u64),
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_keepalive.cancel();
    }
}

fn read_secret(path: &std::path::Path, key: &str) -> Result<String, LockError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| LockError::Config(format!("{key} {}: {e}", path.display())))
}

impl Coordinator {
    /// etcd when configured, otherwise in-process. Does not connect yet: etcd may be down
    /// at start and come back later.
    pub fn new(etcd: Option<&EtcdConfig>, cluster_id: &str, member: &str) -> Result<Coordinator, LockError> {
        let (backend, base, ttl) = match etcd {
            None => (Backend::Local(Arc::default()), format!("/local/{cluster_id}"), Duration::from_secs(15)),
            Some(e) => {
                let mut options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(5))
                    .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
                if let (Some(u), Some(p)) = (&e.username, &e.password_file) {
                    options = options.with_user(u.clone(), read_secret(p, "etcd.password-file")?);
                }
                let tls_wanted = e.ca_file.is_some()
                    || e.cert_file.is_some()
                    || e.endpoints.iter().any(|x| x.starts_with("https://"));
                if tls_wanted {
                    let mut tls = TlsOptions::new();
                    if let Some(ca) = &e.ca_file {
                        let pem = std::fs::read(ca)
                            .map_err(|x| LockError::Config(format!("etcd.ca-file {}: {x}", ca.display())))?;
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    if let (Some(c), Some(k)) = (&e.cert_file, &e.key_file) {
                        let cert = std::fs::read(c)
                            .map_err(|x| LockError::Config(format!("etcd.cert-file {}: {x}", c.display())))?;
                        let key = std::fs::read(k)
                            .map_err(|x| LockError::Config(format!("etcd.key-file {}: {x}", k.display())))?;
                        tls = tls.identity(Identity::from_pem(cert, key));
                    }
                    options = options.with_tls(tls);
                }
                let endpoints = e
                    .endpoints
                    .iter()
                    .map(|x| {
                        if x.starts_with("http://") || x.starts_with("https://") {
                            x.clone()
                        } else if tls_wanted {
                            format!("https://{x}")
                        } else {
                            format!("http://{x}")
                        }
                    })
                    .collect();
                (
                    Backend::Etcd { options, endpoints, client: Mutex::new(None) },
                    format!("{}/{cluster_id}", e.prefix.trim_end_matches('/')),
                    e.lease_ttl.0,
                )
            }
        };
        Ok(Coordinator {
            backend,
            keys: Keys { base },
            member: member.to_string(),
            ttl,
            registration: Mutex::new(None),
        })
    }

    pub fn is_standalone(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    async fn client(&self) -> Result<Client, LockError> {
        let Backend::Etcd { options, endpoints, client } = &self.backend else {
            unreachable!("etcd client asked for in standalone mode")
        };
        let mut c = client.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let fresh =
            tokio::time::timeout(Duration::from_secs(5), Client::connect(endpoints.clone(), Some(options.clone())))
                .await
                .map_err(|_| LockError::Unavailable(format!("connect to {endpoints:?} timed out")))??;
        *c = Some(fresh.clone());
        Ok(fresh)
    }

    /// Drops the cached client after an error, so the next call reconnects.
    async fn reset(&self) {
        if let Backend::Etcd { client, .. } = &self.backend {
            *client.lock().await = None;
        }
    }

    async fn etcd<T, F, Fut>(&self, f: F) -> Result<T, LockError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let c = self.client().await?;
        match tokio::time::timeout(Duration::from_secs(6), f(c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.reset().await;
                Err(e.into())
            }
            Err(_) => {
                self.reset().await;
                Err(LockError::Unavailable("etcd request timed out".into()))
            }
        }
    }

    /// Tries once to take the lock for `operation`.
    pub async fn try_lock(&self, operation: &str) -> Result<Acquire, LockError> {
        let holder = Holder { member: self.member.clone(), started_at: Utc::now(), operation: operation.to_string() };
        match &self.backend {
            Backend::Local(state) => {
                let mut s = state.lock().await;
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
                }))
            }
            Backend::Etcd { .. } => {
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
                    tokio::spawn(keep_alive(client, lease, self.ttl, lost.clone(), stop.clone()));
                    return Ok(Acquire::Acquired(LockGuard {
                        id: LockId::Lease(lease),
                        holder,
                        lost,
                        stop_keepalive: stop,
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
    pub async fn check(&self, guard: &LockGuard) -> Result<(), String> {
        if guard.lost.is_cancelled() {
            return Err("the lock's lease keep-alive was lost".into());
        }
        match (&self.backend, guard.id) {
            (Backend::Local(state), LockId::Local(id)) => match &state.lock().await.holder {
                Some((h, _)) if *h == id => Ok(()),
                _ => Err("the in-process lock is no longer ours".into()),
            },
            (Backend::Etcd { .. }, LockId::Lease(lease)) => {
                let key = self.keys.lock();
                let resp = self.etcd(|mut c| async move { c.get(key, None).await }).await.map_err(|e| e.to_string())?;
                match resp.kvs().first() {
                    Some(kv) if kv.lease() == lease => Ok(()),
                    Some(kv) => Err(format!(
                        "the lock is now held under another lease ({})",
                        String::from_utf8_lossy(kv.value())
                    )),
                    None => Err("the lock key is gone (lease expired)".into()),
                }
            }
            _ => Err("lock of another kind".into()),
        }
    }

    /// Releases the lock (revokes the lease: the key goes with it).
    pub async fn release(&self, guard: LockGuard) {
        guard.stop_keepalive.cancel();
        match (&self.backend, guard.id) {
            (Backend::Local(state), LockId::Local(id)) => {
                let mut s = state.lock().await;
                if s.holder.as_ref().is_some_and(|(h, _)| *h == id) {
                    s.holder = None;
                }
            }
            (Backend::Etcd { .. }, LockId::Lease(lease)) => {
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
            Backend::Local(s) => Ok(s.lock().await.holder.as_ref().map(|(_, h)| h.clone())),
            Backend::Etcd { .. } => self.get_json(self.keys.lock()).await,
        }
    }

    pub async fn last_run(&self) -> Result<Option<RunRecord>, LockError> {
        match &self.backend {
            Backend::Local(s) => Ok(s.lock().await.last_run.clone()),
            Backend::Etcd { .. } => self.get_json(self.keys.last_run()).await,
        }
    }

    /// Records a finished run, only while `guard` still holds the lock.
    pub async fn record_run(&self, guard: &LockGuard, record: &RunRecord) -> Result<bool, LockError> {
        match (&self.backend, guard.id) {
            (Backend::Local(s), _) => {
                s.lock().await.last_run = Some(record.clone());
                Ok(true)
            }
            (Backend::Etcd { .. }, LockId::Lease(lease)) => {
                let txn = Txn::new()
                    .when([Compare::lease(self.keys.lock(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::put(self.keys.last_run(), serde_json::to_vec(record).unwrap(), None)]);
                Ok(self.etcd(|mut c| async move { c.txn(txn).await }).await?.succeeded())
            }
            _ => Ok(false),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: String) -> Result<Option<T>, LockError> {
        let r = self.etcd(|mut c| async move { c.get(key, None).await }).await?;
        Ok(r.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    async fn put_json<T: Serialize>(&self, key: String, value: &T, lease: Option<i64>) -> Result<(), LockError> {
        let v = serde_json::to_vec(value).expect("serializes");
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.etcd(|mut c| async move { c.put(key, v, opts).await }).await?;
        Ok(())
    }

    async fn delete(&self, key: String) -> Result<(), LockError> {
        self.etcd(|mut c| async move { c.delete(key, None).await }).await?;
        Ok(())
    }

    async fn list_json<T: serde::de::DeserializeOwned>(&self, prefix: String) -> Result<Vec<T>, LockError> {
        let r = self.etcd(|mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }).await?;
        Ok(r.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }

    /// The pause flag: Some(who and why) while paused.
    pub async fn paused(&self) -> Result<Option<String>, LockError> {
        match &self.backend {
            Backend::Local(s) => Ok(s.lock().await.paused.clone()),
            Backend::Etcd { .. } => self.get_json(self.keys.paused()).await,
        }
    }

    pub async fn set_paused(&self, by: Option<String>) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(s) => {
                s.lock().await.paused = by;
                Ok(())
            }
            Backend::Etcd { .. } => match by {
                Some(b) => self.put_json(self.keys.paused(), &b, None).await,
                None => self.delete(self.keys.paused()).await,
            },
        }
    }

    pub async fn evacuations(&self) -> Result<Vec<Evacuation>, LockError> {
        match &self.backend {
            Backend::Local(s) => Ok(s.lock().await.evacuations.values().cloned().collect()),
            Backend::Etcd { .. } => self.list_json(self.keys.evacuations()).await,
        }
    }

    pub async fn set_evacuation(&self, member: &str, e: Option<&Evacuation>) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(s) => {
                let mut s = s.lock().await;
                match e {
                    Some(e) => s.evacuations.insert(member.to_string(), e.clone()),
                    None => s.evacuations.remove(member),
                };
                Ok(())
            }
            Backend::Etcd { .. } => {
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
    pub async fn register(&self, state: &serde_json::Value) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(s) => {
                s.lock().await.sidecars.insert(self.member.clone(), state.clone());
                Ok(())
            }
            Backend::Etcd { .. } => {
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
                let key = format!("{}{}", self.keys.sidecars(), self.member);
                self.put_json(key, state, Some(lease)).await
            }
        }
    }

    /// Removes the registration (clean shutdown).
    pub async fn deregister(&self) {
        match &self.backend {
            Backend::Local(s) => {
                s.lock().await.sidecars.remove(&self.member);
            }
            Backend::Etcd { .. } => {
                if let Some(l) = self.registration.lock().await.take() {
                    let _ = self.etcd(|mut c| async move { c.lease_revoke(l).await }).await;
                }
            }
        }
    }

    pub async fn sidecars(&self) -> Result<Vec<serde_json::Value>, LockError> {
        match &self.backend {
            Backend::Local(s) => Ok(s.lock().await.sidecars.values().cloned().collect()),
            Backend::Etcd { .. } => self.list_json(self.keys.sidecars()).await,
        }
    }
}

/// Keeps `lease` alive every TTL/3; cancels `lost` when no refresh succeeded for 3/4 of
/// the TTL (before etcd can expire it and hand the lock to another sidecar).
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, lost: CancellationToken, stop: CancellationToken) {
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
                Ok(Ok(Some(r))) if r.ttl() > 0 => last_ok = Instant::now(),
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

impl crate::execute::Fence for GuardFence<'_> {
    async fn check(&self) -> Result<(), String> {
        self.coordinator.check(self.guard).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
