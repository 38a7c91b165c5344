//! Backends: where snapshots come from and how one bucket moves.
//!
//! Owns: the `Cluster` trait (the only I/O edge the executor sees) and `AnyCluster`, the
//! backend chosen by `cluster.backend`; [`handoff`] the answer of a handoff (a master's
//! role to its replica, outside any run). Backends: [`redis`] (Redis Cluster and Valkey)
//! and [`file`] (a snapshot file). [`recorded`] a backend as the lock holder drives it
//! (intents, the commit fence); `reading` what a repair read, for the snapshot after
//! it; `sidecar_calls` what a sidecar asks of its backend outside runs. Does not own:
//! planning or limits.

pub mod file;
pub mod handoff;
mod reading;
pub mod recorded;
pub mod redis;
mod sidecar_calls;

use std::future::Future;

use chrono::{DateTime, Utc};

pub use crate::coord::{Fence, FenceError, MeasuredBucket, SizeTable};
use crate::model::{ClusterSnapshot, MoveIntent};
use crate::plan::Move;
pub use handoff::{HANDOFF_WITHIN, Handoff, HandoffError};
pub use reading::Reading;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Snapshot(String),
    #[error("{0}")]
    Connect(String),
    /// A move that failed; `open` says whether the bucket was left mid-migration.
    #[error("moving bucket {bucket}: {message}")]
    Move { bucket: u64, message: String, open: bool },
    /// A move of a group never begun, its slot as it was: an earlier move stopped the group.
    #[error("bucket {bucket} not moved: {why}")]
    NotStarted { bucket: u64, why: String },
    #[error("repair of bucket {bucket}: {message}")]
    Repair { bucket: u64, message: String },
    /// The commit fence said no: the bucket is left open, its intent recorded, for the
    /// next holder's repair.
    #[error("bucket {bucket} left open before its commit for the next holder: {cause}")]
    Fenced { bucket: u64, cause: FenceError },
    /// The fence said no before the move began: its bucket was never opened.
    #[error("bucket {bucket} not started: {cause}")]
    FencedBeforeStart { bucket: u64, cause: FenceError },
    #[error("{0}")]
    Config(String),
    /// A role change refused or not finished in time, in the server's words.
    #[error("{0}")]
    Role(String),
    /// The fence said no right before a role change: it was not sent.
    #[error("role change not made: {0}")]
    RoleFenced(FenceError),
}

/// A role change made: how long it took, and what it did in a sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleDone {
    pub seconds: f64,
    pub message: String,
}

/// What a finished move did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveStats {
    pub keys: u64,
    pub bytes: u64,
    /// Moved by the legacy mover after the atomic one could not (a failed job, retried).
    pub fallback: bool,
    /// Moved, but a replica of the target did not acknowledge the data within the wait:
    /// a failover there now would lose it. Why, in a sentence; the run moves nothing more.
    pub unreplicated: Option<String>,
    /// Keys the target held with another value, set aside there before the owner's moved.
    pub set_aside: Vec<SetAside>,
}

/// How fast a mover may go: the executor hands the backend one per run, shared by every
/// move. Whether it may commit is the [`Fence`]'s, a separate argument of every path that
/// commits ownership.
pub trait Pace: Send + Sync {
    /// Waits until `bytes` more may travel.
    fn take(&self, bytes: u64) -> impl Future<Output = ()> + Send;
}

/// No pacing: repair and the settling of a failed move go fast (an open slot is worse).
pub struct Unpaced;

impl Pace for Unpaced {
    async fn take(&self, _bytes: u64) {}
}

/// What repair is told and may do.
#[derive(Clone, Debug, Default)]
pub struct RepairOptions {
    /// Moves this fleet recorded before starting them; an open bucket with one is ours.
    pub intents: Vec<MoveIntent>,
    /// Settle open buckets nobody recorded too (the operator's `repair`).
    pub take_foreign: bool,
    /// Only this bucket.
    pub only: Option<u64>,
    /// Say what would be done, do nothing.
    pub dry_run: bool,
    /// Hand the keys of an open slot of ours back to its owner instead of finishing the
    /// move: a live run settling its own failed move (the move was tried and failed, so
    /// it is not tried again; a target out of memory is never pushed further).
    pub hand_back: bool,
}

/// What repair found and did. One bad bucket never stops the repair of the others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepairReport {
    /// One line per bucket settled (or, in a dry run, that would be).
    pub settled: Vec<String>,
    /// Buckets whose recorded intents are settled and may be removed.
    pub intents_done: Vec<u64>,
    /// Moves in flight that nobody recorded: someone else's, left untouched.
    pub foreign: Vec<ForeignMove>,
    /// Keys that differed on both sides, the other value kept under another name.
    pub set_aside: Vec<SetAside>,
    /// Buckets whose repair failed, and why.
    pub failed: Vec<(u64, String)>,
    /// What leaves a slot unserved and is not ours to settle: a node whose view has no
    /// live owner for a slot the cluster serves, or an open slot naming a node that is no
    /// longer a master. Each line names the node, the slot and the command that settles it.
    pub down: Vec<String>,
    /// What a repair that changed nothing read, for the snapshot that follows it.
    pub reading: Option<Reading>,
}

/// A move in flight this fleet did not record.
#[derive(Clone, Debug, PartialEq)]
pub struct ForeignMove {
    pub bucket: u64,
    pub from: Option<String>,
    pub to: Option<String>,
    /// When this process first saw it open.
    pub since: DateTime<Utc>,
}

impl std::fmt::Display for ForeignMove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |m: &Option<String>| m.clone().unwrap_or_else(|| "an unknown node".into());
        write!(
            f,
            "bucket {} is moving from {} to {}, open since at least {} (not recorded by this fleet: left untouched)",
            self.bucket,
            name(&self.from),
            name(&self.to),
            self.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// A key found on both sides of a bucket with different values: the value clients reach
/// (the owner's) kept under the name, the other renamed in place to `aside`, in the same
/// bucket, for an operator to compare. Nothing is dropped and the move or repair goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    pub bucket: u64,
    pub key: String,
    /// The name the other value is kept under.
    pub aside: String,
    /// Where the other value was found (it moves with the bucket's keys).
    pub node: String,
}

impl std::fmt::Display for SetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bucket {}: key {:?} held another value on {}; the owner's kept, the other set aside as {:?}",
            self.bucket, self.key, self.node, self.aside
        )
    }
}

pub trait Cluster: Send + Sync {
    /// A consistent-enough view of members, buckets and half-done moves.
    fn snapshot(&self) -> impl Future<Output = Result<ClusterSnapshot, ClusterError>> + Send;
    /// As `snapshot`, right after a repair: starting from what that repair read
    /// ([`RepairReport::reading`]) where the backend can.
    fn snapshot_after(
        &self,
        reading: Option<Reading>,
    ) -> impl Future<Output = Result<ClusterSnapshot, ClusterError>> + Send {
        let _ = reading;
        self.snapshot()
    }
    /// The stable id of the member `name` names (its id, its address, or
    /// `hostname:port`): what evacuations, weights and metric labels are keyed by, so they
    /// stay with the member when its address changes. By default the name itself.
    fn member_id(&self, name: &str) -> impl Future<Output = Result<String, ClusterError>> + Send {
        let id = name.to_string();
        async move { Ok(id) }
    }
    /// Settles what moves left behind: buckets left mid-move that this fleet recorded
    /// (finish or roll back, never dropping data), and data held outside its owner.
    /// Every commit of ownership it makes passes `fence` first.
    fn repair<F: Fence>(
        &self,
        opts: &RepairOptions,
        fence: &F,
    ) -> impl Future<Output = Result<RepairReport, ClusterError>> + Send;
    /// Moves one bucket copy. Runs to a safe end once started; asks `fence` right before
    /// it commits, and leaves the bucket open (recorded) when the fence says no.
    fn move_bucket<P: Pace, F: Fence>(
        &self,
        snapshot: &ClusterSnapshot,
        mv: &Move,
        pace: &P,
        fence: &F,
    ) -> impl Future<Output = Result<MoveStats, ClusterError>> + Send;
    /// What `member` uses of its memory now and may use, for a target about to receive:
    /// `None` where the backend sets no limit (no `maxmemory`, or a snapshot file).
    fn room(&self, member: &crate::model::Member) -> impl Future<Output = Result<Option<Room>, ClusterError>> + Send {
        let _ = member;
        async { Ok(None) }
    }
    /// Carries out one placement role change, checked against the cluster as it is now,
    /// past `fence` right before it is sent. A backend without roles refuses it.
    fn change_role<F: Fence>(
        &self,
        change: &crate::plan::placement::RoleChange,
        fence: &F,
    ) -> impl Future<Output = Result<RoleDone, ClusterError>> + Send {
        let _ = (change, fence);
        async { Err(ClusterError::Config("role changes need cluster.backend = \"redis\"".into())) }
    }
    /// Whether a move can be left half-done (a crash mid-move leaves state for repair):
    /// only then is its intent recorded before it starts. A snapshot file's moves apply
    /// whole.
    fn moves_can_be_left_open(&self) -> bool {
        true
    }
    /// Whether `move_group` moves a group as one unit (the executor then hands it groups
    /// of moves sharing a source and a target; otherwise single moves).
    fn groups_moves(&self) -> bool {
        false
    }
    /// Moves buckets that share a source and a target as one unit where the backend can
    /// (Valkey 9: one atomic migration job); the caller checks its fence, deadline and
    /// budgets between groups, not inside one. One result per move, in the order given.
    /// By default the moves run one by one with `move_bucket`.
    fn move_group<P: Pace, F: Fence>(
        &self,
        snapshot: &ClusterSnapshot,
        moves: &[Move],
        pace: &P,
        fence: &F,
    ) -> impl Future<Output = Vec<Result<MoveStats, ClusterError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(moves.len());
            for mv in moves {
                out.push(self.move_bucket(snapshot, mv, pace, fence).await);
            }
            out
        }
    }
}

/// A member's memory as its server reports it now (Redis: `used_memory`, `maxmemory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    pub used_bytes: u64,
    pub max_bytes: u64,
}

impl Room {
    /// Bytes it may still receive before it passes `critical_percent` of its maximum.
    pub fn free(&self, critical_percent: u32) -> u64 {
        (self.max_bytes.saturating_mul(critical_percent as u64) / 100).saturating_sub(self.used_bytes)
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

    /// Chooses the mover of a run before anything moves (Redis backend): the choice and
    /// why, in a line; an error when `execution.migration` asks for what a master cannot.
    pub async fn choose_mover(&self) -> Result<Option<String>, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.choose_mover().await.map(Some),
            AnyCluster::File(_) => Ok(None),
        }
    }

    /// The mover a run would choose now, and why, in a line, without choosing it.
    pub async fn describe_mover(&self) -> Result<Option<String>, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.describe_mover().await.map(|(_, line)| Some(line)),
            AnyCluster::File(_) => Ok(None),
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

    async fn snapshot_after(&self, reading: Option<Reading>) -> Result<ClusterSnapshot, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.snapshot_after(reading).await,
            AnyCluster::File(c) => c.snapshot_after(reading).await,
        }
    }

    async fn member_id(&self, name: &str) -> Result<String, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.member_id(name).await,
            AnyCluster::File(c) => c.member_id(name).await,
        }
    }

    async fn repair<F: Fence>(&self, opts: &RepairOptions, fence: &F) -> Result<RepairReport, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.repair(opts, fence).await,
            AnyCluster::File(c) => c.repair(opts, fence).await,
        }
    }

    async fn move_bucket<P: Pace, F: Fence>(
        &self,
        s: &ClusterSnapshot,
        mv: &Move,
        pace: &P,
        fence: &F,
    ) -> Result<MoveStats, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.move_bucket(s, mv, pace, fence).await,
            AnyCluster::File(c) => c.move_bucket(s, mv, pace, fence).await,
        }
    }

    async fn room(&self, member: &crate::model::Member) -> Result<Option<Room>, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.room(member).await,
            AnyCluster::File(c) => c.room(member).await,
        }
    }

    async fn change_role<F: Fence>(
        &self,
        change: &crate::plan::placement::RoleChange,
        fence: &F,
    ) -> Result<RoleDone, ClusterError> {
        match self {
            AnyCluster::Redis(c) => c.change_role(change, fence).await,
            AnyCluster::File(c) => c.change_role(change, fence).await,
        }
    }

    fn groups_moves(&self) -> bool {
        match self {
            AnyCluster::Redis(c) => c.groups_moves(),
            AnyCluster::File(c) => c.groups_moves(),
        }
    }

    fn moves_can_be_left_open(&self) -> bool {
        match self {
            AnyCluster::Redis(c) => c.moves_can_be_left_open(),
            AnyCluster::File(c) => c.moves_can_be_left_open(),
        }
    }

    async fn move_group<P: Pace, F: Fence>(
        &self,
        s: &ClusterSnapshot,
        moves: &[Move],
        pace: &P,
        fence: &F,
    ) -> Vec<Result<MoveStats, ClusterError>> {
        match self {
            AnyCluster::Redis(c) => c.move_group(s, moves, pace, fence).await,
            AnyCluster::File(c) => c.move_group(s, moves, pace, fence).await,
        }
    }
}
