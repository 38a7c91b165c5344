//! Coordination between sidecars, in etcd or in-process when the config has no `[etcd]`
//! (standalone: a warning says so).
//!
//! Keys under `<prefix>/<cluster_id>/`:
//! - `lock`: created in one transaction with our lease iff absent (try once, never queue);
//!   released by revoking the lease; the value names the holder and its start.
//! - `runs/last`: the last run's report, written only while the lock is ours (a
//!   transaction compares the lock's lease).
//! - `sidecars/<member>`: registration under a lease of its own.
//! - `sizes/<member>`: the bucket sizes a sidecar measured on its member, under the same
//!   lease (`cluster.sizing-refresh`).
//! - `traffic/<member>`: the per-slot traffic rates a sidecar keeps for its master
//!   ([`crate::traffic`]), under the same lease (`traffic.sample-every`).
//! - `paused`, `evacuations/<member>`: persistent, written by operators.
//! - `moves/<bucket>`: a move's intent, written before it starts, without a lease.
//! - `runs/scheduled`: the cron slot of the last scheduled run.
//! - `roles`: each node's role over time ([`roles`]), written by the lock holder.
//!
//! Layout: this file owns the connection (client, timeouts, the in-process stand-in) and
//! the key names; [`lock`] the lock, its keep-alive and the fence; [`state`] the records
//! and operator state; [`intents`] the move intents and the scheduled slot; [`roles`]
//! each node's role over time; [`local`] the standalone state file. Does not own: when to lock (the sidecar) or what runs under the
//! lock (the run).

mod intents;
mod local;
pub mod lock;
pub mod roles;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions};
use serde::Serialize;
use std::sync::Mutex;

use crate::config::{Config, EtcdConfig};
use local::LocalState;

pub use lock::{Acquire, Fence, FenceError, GuardFence, Holder, LockGuard};
pub use state::{Evacuation, MeasuredBucket, RunRecord, SizeTable};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// etcd cannot be reached or answered with an error.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Config(String),
    /// A write that needs the lock found it held by another lease (or gone).
    #[error("the lock is no longer ours")]
    NotHolder,
}

impl From<etcd_client::Error> for LockError {
    fn from(e: etcd_client::Error) -> Self {
        LockError::Unavailable(e.to_string())
    }
}

pub(crate) struct Keys {
    base: String,
}

impl Keys {
    pub(crate) fn lock(&self) -> String {
        format!("{}/lock", self.base)
    }
    pub(crate) fn roles(&self) -> String {
        format!("{}/roles", self.base)
    }
    pub(crate) fn last_run(&self) -> String {
        format!("{}/runs/last", self.base)
    }
    pub(crate) fn sidecars(&self) -> String {
        format!("{}/sidecars/", self.base)
    }
    pub(crate) fn paused(&self) -> String {
        format!("{}/paused", self.base)
    }
    pub(crate) fn evacuations(&self) -> String {
        format!("{}/evacuations/", self.base)
    }
    pub(crate) fn moves(&self) -> String {
        format!("{}/moves/", self.base)
    }
    pub(crate) fn move_intent(&self, bucket: u64) -> String {
        format!("{}/moves/{bucket}", self.base)
    }
    pub(crate) fn sizes(&self) -> String {
        format!("{}/sizes/", self.base)
    }
    pub(crate) fn traffic(&self) -> String {
        format!("{}/traffic/", self.base)
    }
    pub(crate) fn scheduled(&self) -> String {
        format!("{}/runs/scheduled", self.base)
    }
}

pub(crate) struct EtcdBackend {
    options: ConnectOptions,
    endpoints: Vec<String>,
    client: Mutex<Option<Client>>,
}

pub(crate) enum Backend {
    Etcd(Box<EtcdBackend>),
    Local(Arc<Mutex<LocalState>>),
}

pub struct Coordinator {
    pub(crate) backend: Backend,
    pub(crate) keys: Keys,
    pub(crate) member: String,
    pub(crate) ttl: Duration,
    /// Registration lease (etcd), re-granted when lost.
    /// Held across the lease's renewal (its own task only).
    pub(crate) registration: tokio::sync::Mutex<Option<i64>>,
}

impl Coordinator {
    /// What `config` asks for: etcd when it has an `[etcd]` section, otherwise standalone
    /// with its state file ([`Config::state_file`]), held by this process alone.
    pub fn for_config(config: &Config) -> Result<Coordinator, LockError> {
        match &config.etcd {
            Some(_) => Coordinator::new(config.etcd.as_ref(), &config.cluster.id, &config.member_id()),
            None => Coordinator::standalone(&config.cluster.id, &config.member_id(), config.state_file().as_deref()),
        }
    }

    /// As `for_config`, for a process that only reads (dry runs, snapshots): standalone,
    /// the state file is read as it is, neither locked nor written, so a sidecar running
    /// beside it keeps it.
    pub fn reader_for_config(config: &Config) -> Result<Coordinator, LockError> {
        let Some(path) = config.state_file() else { return Coordinator::for_config(config) };
        let mut c = Coordinator::new(None, &config.cluster.id, &config.member_id())?;
        c.backend = Backend::Local(Arc::new(Mutex::new(LocalState::read(&path)?)));
        Ok(c)
    }

    /// The standalone state file this coordinator holds, if any.
    pub fn state_file(&self) -> Option<std::path::PathBuf> {
        match &self.backend {
            Backend::Local(s) => s.lock().expect("local state").path().map(|p| p.to_path_buf()),
            Backend::Etcd(_) => None,
        }
    }

    /// In process, its lasting state kept in `state_file` when given, which this process
    /// then holds alone (a second process on it is refused: never two runs at once).
    pub fn standalone(
        cluster_id: &str,
        member: &str,
        state_file: Option<&std::path::Path>,
    ) -> Result<Coordinator, LockError> {
        let state = match state_file {
            Some(p) => LocalState::open(p)?,
            None => LocalState::default(),
        };
        let mut c = Coordinator::new(None, cluster_id, member)?;
        c.backend = Backend::Local(Arc::new(Mutex::new(state)));
        Ok(c)
    }

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
                    options = options.with_user(
                        u.clone(),
                        crate::config::read_secret(p, "etcd.password-file")
                            .map_err(|e| LockError::Config(e.to_string()))?,
                    );
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
                    Backend::Etcd(Box::new(EtcdBackend { options, endpoints, client: Mutex::new(None) })),
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
            registration: tokio::sync::Mutex::new(None),
        })
    }

    pub fn is_standalone(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    /// The cached client, or a new one. The cache's lock is never held across an await:
    /// a caller waiting for it could otherwise wait for a task that is not polled (two
    /// callers that both connect keep the last client).
    pub(crate) async fn client(&self) -> Result<Client, LockError> {
        let Backend::Etcd(etcd) = &self.backend else { unreachable!("etcd client asked for in standalone mode") };
        if let Some(c) = etcd.client.lock().expect("etcd client cache").as_ref() {
            return Ok(c.clone());
        }
        let fresh = tokio::time::timeout(
            Duration::from_secs(5),
            Client::connect(etcd.endpoints.clone(), Some(etcd.options.clone())),
        )
        .await
        .map_err(|_| LockError::Unavailable(format!("connect to {:?} timed out", etcd.endpoints)))??;
        *etcd.client.lock().expect("etcd client cache") = Some(fresh.clone());
        Ok(fresh)
    }

    /// Drops the cached client after an error, so the next call reconnects.
    pub(crate) async fn reset(&self) {
        if let Backend::Etcd(etcd) = &self.backend {
            *etcd.client.lock().expect("etcd client cache") = None;
        }
    }

    pub(crate) async fn etcd<T, F, Fut>(&self, f: F) -> Result<T, LockError>
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

    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(&self, key: String) -> Result<Option<T>, LockError> {
        let r = self.etcd(|mut c| async move { c.get(key, None).await }).await?;
        Ok(r.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    pub(crate) async fn put_json<T: Serialize>(
        &self,
        key: String,
        value: &T,
        lease: Option<i64>,
    ) -> Result<(), LockError> {
        let v = serde_json::to_vec(value).expect("serializes");
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.etcd(|mut c| async move { c.put(key, v, opts).await }).await?;
        Ok(())
    }

    pub(crate) async fn delete(&self, key: String) -> Result<(), LockError> {
        self.etcd(|mut c| async move { c.delete(key, None).await }).await?;
        Ok(())
    }

    pub(crate) async fn list_json<T: serde::de::DeserializeOwned>(&self, prefix: String) -> Result<Vec<T>, LockError> {
        let r = self.etcd(|mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }).await?;
        Ok(r.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }
}
