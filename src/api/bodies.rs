//! The bodies the API answers with and accepts, as types: the handlers build them and the
//! OpenAPI document describes them, so the two cannot drift apart.
//!
//! Owns: request and answer bodies, the status documents (`/status`, and the
//! registration each sidecar publishes), and the schema of `/status/cluster`, which the
//! daemon assembles from etcd. Does not own: the error shape
//! (`error`), the run's answer ([`Answer`], from `report`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::coord::{Evacuation, Holder, RunRecord};
use crate::decide::Decision;
use crate::model::Observed;
use crate::report::{Answer, MemberReport};

/// `GET /healthz`: every supervised task runs.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`: whether this sidecar can coordinate now; when not, why.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// `lock_unavailable` when etcd cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `PUT /rebalance`: the run's answer; `message` says so when the cluster was balanced
/// already.
#[derive(Serialize, ToSchema)]
pub struct RebalanceAnswer {
    #[serde(flatten)]
    pub answer: Answer,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /rebalance/stop`: what was asked to stop at its next safe point.
#[derive(Serialize, ToSchema)]
pub struct Stopping {
    pub stopping: crate::run::Operation,
}

/// `POST /evacuation/start`: the body, every field optional.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvacuationRequest {
    /// Bytes per second; absent: the configured `execution.max-bytes-per-second`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub rate: Option<i64>,
    /// Members to move to (ids, hostnames or `ip:port`); empty: the planner's choice.
    #[serde(default)]
    pub migrate_to: Vec<String>,
}

/// `POST /evacuation/start|stop`: the evacuation now recorded, or none.
#[derive(Serialize, ToSchema)]
pub struct EvacuationState {
    pub evacuation: Option<Evacuation>,
}

/// `PUT|DELETE /pause`: who paused the fleet, or none.
#[derive(Serialize, ToSchema)]
pub struct PauseState {
    pub paused: Option<String>,
}

/// What a sidecar publishes of itself in etcd every lease-ttl/3 (the `sidecars` of
/// `/status/cluster`), and the first fields of its `GET /status`. Read back as written;
/// a record this version cannot read (another version's) is left out of the list.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Registration {
    pub member: String,
    /// Where the local member was at the last snapshot (its id stays; this may change).
    pub address: Option<String>,
    /// The API's listen address.
    pub api: String,
    /// `cluster.host` and `cluster.zone`: where the node beside it stands, for placement.
    pub host: Option<String>,
    pub zone: Option<String>,
    pub version: String,
    pub state: crate::run::RunState,
    /// The operation running here, if any: `manual`, `scheduled`, `evacuation`.
    pub operation: Option<String>,
    pub progress: Progress,
    pub last_decision: Option<Decision>,
    pub last_run_at: Option<DateTime<Utc>>,
    /// `rebalanced`, `skipped`, `failed` or `stopped`.
    pub last_outcome: Option<String>,
    pub last_report: Option<Vec<MemberReport>>,
    pub next_run: Option<DateTime<Utc>>,
    /// The local member's evacuation.
    pub evacuation: EvacuationStatus,
    pub updated_at: DateTime<Utc>,
}

/// `GET /status`: this sidecar, its registration first.
#[derive(Serialize, ToSchema)]
pub struct Status {
    #[serde(flatten)]
    pub registration: Registration,
    pub cluster: String,
    pub schedule: ScheduleStatus,
    /// No etcd configured: the lock is this process's own.
    pub standalone: bool,
    pub lock: LockStatus,
    pub paused: Option<String>,
    /// Why etcd is not usable now, if it is not.
    pub etcd: Option<String>,
    /// How the last snapshot sized the buckets, in a line.
    pub sizes: Option<String>,
    /// Where traffic stands, in a line ("traffic: off: 127.0.0.1:7003 has
    /// cluster-slot-stats-enabled no").
    pub traffic: String,
    /// What the last snapshot observed: engine, sizing, per-member facts.
    pub observed: Option<Observed>,
}

/// Moves of the running (or last) operation.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub moves_planned: u64,
    pub moves_done: u64,
    pub moves_failed: u64,
    pub bytes_planned: u64,
    pub bytes_done: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleStatus {
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
}

/// The lock as this sidecar reads it: its holder (null when free), or `error` when it
/// cannot be read.
#[derive(Default, Serialize, ToSchema)]
pub struct LockStatus {
    pub holder: Option<String>,
    /// What the holder runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<f64>,
    /// This sidecar holds it and runs an operation now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_here: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Evacuation progress of the local member.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct EvacuationStatus {
    pub active: bool,
    /// Buckets and bytes still on the member at the last look; None before the first.
    pub buckets_left: Option<u64>,
    pub bytes_left: Option<u64>,
    pub request: Option<Evacuation>,
}

/// `GET /status/cluster`: the fleet's shared state, read from etcd.
#[derive(Serialize, ToSchema)]
pub struct ClusterStatus {
    pub cluster: String,
    pub lock_holder: Option<Holder>,
    pub paused: Option<String>,
    pub evacuations: Vec<Evacuation>,
    pub last_run: Option<RunRecord>,
    /// Every sidecar's registration, as it last published it.
    pub sidecars: Vec<Registration>,
    /// Where masters and replicas stand, as this sidecar last placed them (a run or a
    /// plan); None before the first.
    pub placement: Option<crate::plan::placement::Placement>,
}
