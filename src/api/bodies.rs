//! The bodies the API answers with and accepts, as types: the handlers build them and the
//! OpenAPI document describes them, so the two cannot drift apart.
//!
//! Owns: request and answer bodies, and the schemas of the two status documents the
//! daemon builds itself (`/status`, `/status/cluster`). Does not own: the error shape
//! (`error`), the run's answer ([`Answer`], from `report`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::coord::{Evacuation, Holder, RunRecord};
use crate::decide::Decision;
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
    /// `manual`, `scheduled` or `evacuation`.
    pub stopping: String,
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

/// `GET /status`: this sidecar. Built by the daemon as a JSON document; this type
/// describes it and is never built.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct Status {
    pub member: String,
    /// The API's listen address.
    pub api: String,
    pub version: String,
    /// `idle`, `waiting`, `planning`, `moving`, `evacuating`, `evacuated`.
    pub state: String,
    /// The operation running here, if any: `manual`, `scheduled`, `evacuation`.
    pub operation: Option<String>,
    pub progress: Progress,
    pub last_decision: Option<Decision>,
    pub last_run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `rebalanced`, `skipped`, `failed` or `stopped`.
    pub last_outcome: Option<String>,
    pub last_report: Option<Vec<MemberReport>>,
    pub next_run: Option<chrono::DateTime<chrono::Utc>>,
    /// The local member's evacuation.
    pub evacuation: serde_json::Value,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub cluster: String,
    pub schedule: ScheduleStatus,
    /// No etcd configured: the lock is this process's own.
    pub standalone: bool,
    /// The lock's holder (`holder` null when free), or `error` when it cannot be read.
    pub lock: serde_json::Value,
    pub paused: Option<String>,
    /// Why etcd is not usable now, if it is not.
    pub etcd: Option<String>,
    /// How the last snapshot sized the buckets, in a line.
    pub sizes: Option<String>,
    /// What the last snapshot observed: engine, sizing, per-member facts.
    pub observed: serde_json::Value,
}

/// Moves of the running (or last) operation.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct Progress {
    pub moves_planned: u64,
    pub moves_done: u64,
    pub moves_failed: u64,
    pub bytes_planned: u64,
    pub bytes_done: u64,
}

#[allow(dead_code)]
#[derive(ToSchema)]
pub struct ScheduleStatus {
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
}

/// `GET /status/cluster`: the fleet's shared state, read from etcd. Built by the daemon
/// as a JSON document; this type describes it and is never built.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct ClusterStatus {
    pub cluster: String,
    pub lock_holder: Option<Holder>,
    pub paused: Option<String>,
    pub evacuations: Vec<Evacuation>,
    pub last_run: Option<RunRecord>,
    /// Every sidecar's registration: the fields of `/status` it last published.
    pub sidecars: Vec<serde_json::Value>,
}
