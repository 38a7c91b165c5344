//! The control handle: everything the HTTP API asks of the daemon, as a trait the daemon
//! implements. The API depends on this, never on the daemon itself.
//!
//! Owns: the calls the API may make. Does not own: their errors ([`RunError`], from
//! `run`), how the daemon carries them out (`sidecar`), or HTTP (the parent module).

use std::future::Future;

use serde::Serialize;

use super::bodies::Status;
use crate::cluster::{Handoff, HandoffError};
use crate::coord::Evacuation;
use crate::model::ClusterSnapshot;
use crate::report::Answer;
use crate::run::RunError;

/// Whether the local member should take traffic: not while it is evacuated.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Availability {
    pub available: bool,
    /// `available`, `evacuating` or `evacuated`.
    #[schema(value_type = String)]
    pub state: &'static str,
    pub member: String,
}

pub trait Control: Send + Sync + 'static {
    /// The member this sidecar sits beside.
    fn member(&self) -> &str;

    /// The Prometheus text exposition.
    fn metrics(&self) -> String;

    /// Ok while every supervised task runs; otherwise which one failed, and how.
    fn health(&self) -> Result<(), String>;

    /// Ok, or why this sidecar cannot coordinate now (etcd).
    fn readiness(&self) -> Result<(), String>;

    fn availability(&self) -> Availability;

    /// This sidecar's state, schedule, lock holder and last run.
    fn status(&self) -> impl Future<Output = Status> + Send;

    /// Every sidecar's registration and the fleet's shared state.
    fn cluster_status(&self) -> impl Future<Output = Result<super::bodies::ClusterStatus, RunError>> + Send;

    /// A dry run: snapshot, plan, decide; moves nothing.
    fn plan(&self, force: bool) -> impl Future<Output = Result<Answer, RunError>> + Send;

    /// Starts a run in a task of its own and waits for its answer. Dropping the wait
    /// leaves the run going: a caller that goes away neither stops nor wedges it.
    fn rebalance(&self, force: bool) -> impl Future<Output = Result<Answer, RunError>> + Send;

    /// Stops the running operation at its next safe point; names what was stopped.
    fn stop(&self) -> Option<crate::run::Operation>;

    /// The live snapshot, with the operator's state applied.
    fn snapshot(&self) -> impl Future<Output = Result<ClusterSnapshot, RunError>> + Send;

    /// Starts (or updates) the persistent evacuation of the local member.
    fn start_evacuation(
        &self,
        rate: u64,
        migrate_to: Vec<String>,
    ) -> impl Future<Output = Result<Evacuation, RunError>> + Send;

    /// Ends it; an evacuation run in progress stops at its next safe point.
    fn stop_evacuation(&self) -> impl Future<Output = Result<(), RunError>> + Send;

    /// Pauses every run of the fleet (`Some(by whom)`), or lifts the pause.
    fn set_paused(&self, by: Option<String>) -> impl Future<Output = Result<(), RunError>> + Send;

    /// Hands the local master's role to its in-sync replica (nothing beside a replica),
    /// waiting a bounded time for the roles to swap.
    fn handoff(&self) -> impl Future<Output = Result<Handoff, HandoffError>> + Send;
}
