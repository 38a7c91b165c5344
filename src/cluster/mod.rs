//! Backends: where snapshots come from and how one bucket moves.
//!
//! Owns: the `Cluster` trait (the only I/O edge the executor sees) and `AnyCluster`, the
//! backend chosen by `cluster.backend`. Does not own: planning or limits.

pub mod file;
pub mod redis;

use std::future::Future;

use crate::model::ClusterSnapshot;
use crate::plan::Move;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Snapshot(String),
    #[error("{0}")]
    Connect(String),
    /// A move that failed; `open` says whether the bucket was left mid-migration.
    #[error("moving bucket {bucket}: {message}")]
    Move { bucket: u64, message: String, open: bool },
    #[error("repair of bucket {bucket}: {message}")]
    Repair { bucket: u64, message: String },
    #[error("{0}")]
    Config(String),
}

/// What a finished move did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveStats {
    pub keys: u64,
    pub bytes: u64,
}

/// Paces data movement; the executor hands the backend one shared pacer per run.
pub trait Pace: Send + Sync {
    /// Waits until `bytes` more may travel.
    fn take(&self, bytes: u64) -> impl Future<Output = ()> + Send;
}

pub trait Cluster: Send + Sync {
    /// A consistent-enough view of members, buckets and half-done moves.
    fn snapshot(&self) -> impl Future<Output = Result<ClusterSnapshot, ClusterError>> + Send;
    /// Closes buckets left mid-migration (finish or roll back, never dropping data).
    /// Returns one line per bucket repaired.
    fn repair(&self) -> impl Future<Output = Result<Vec<String>, ClusterError>> + Send;
    /// Moves one bucket copy. Runs to a safe end once started.
    fn move_bucket<P: Pace>(
        &self,
        snapshot: &ClusterSnapshot,
        mv: &Move,
        pace: &P,
    ) -> impl Future<Output = Result<MoveStats, ClusterError>> + Send;
    /// Moves buckets that share a source and a target as one unit where the backend can
    /// (Valkey 9: one atomic migration job); the caller checks its fence, deadline and
    /// budgets between groups, not inside one. One result per move, in the order given.
    /// By default the moves run one by one with `move_bucket`.
    fn move_group<P: Pace>(
        &self,
        snapshot: &ClusterSnapshot,
        moves: &[Move],
        pace: &P,
    ) -> impl Future<Output = Vec<Result<MoveStats, ClusterError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(moves.len());
            for mv in moves {
                out.push(self.move_bucket(snapshot, mv, pace).await);
            }
            out
        }
    }
}

/// The backend named by the configuration.
pub enum AnyCluster {
    Redis(Box<redis::RedisCluster>),
    File(file::FileCluster),
}

impl AnyCluster {
    /// What the servers support, as the last snapshot saw it (Redis backend only).
    pub fn capabilities(&self) -> Option<redis::Capabilities> {
        match self {
            AnyCluster::Redis(c) => c.capabilities(),
            AnyCluster::File(_) => None,
        }
    }

    pub fn from_config(config: &crate::config::Config) -> Result<AnyCluster, ClusterError> {
        match config.cluster.backend {
            crate::config::Backend::Redis => Ok(AnyCluster::Redis(Box::new(redis::RedisCluster::from_config(config)?))),
            crate::config::Backend::File => {
                let path = config.cluster.snapshot_file.clone().expect("validated");
                Ok(AnyCluster::File(file::FileCluster::new(path, config.cluster.id.clone())))
            }
        }
    }
}

impl Cluster for AnyCluster {
    async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.snapshot().await,
            AnyCluster::File(c) => c.snapshot().await,
        }
    }

    async fn repair(&self) -> Result<Vec<String>, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.repair().await,
            AnyCluster::File(c) => c.repair().await,
        }
    }

    async fn move_bucket<P: Pace>(&self, s: &ClusterSnapshot, mv: &Move, pace: &P) -> Result<MoveStats, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.move_bucket(s, mv, pace).await,
            AnyCluster::File(c) => c.move_bucket(s, mv, pace).await,
        }
    }

    async fn move_group<P: Pace>(
        &self,
        s: &ClusterSnapshot,
        moves: &[Move],
        pace: &P,
    ) -> Vec<Result<MoveStats, ClusterError>> {
        match self {
            AnyCluster::Redis(c) => c.move_group(s, moves, pace).await,
            AnyCluster::File(c) => c.move_group(s, moves, pace).await,
        }
    }
}
