//! The handlers, each with its part of the OpenAPI contract beside it: its path, its
//! parameters, and every status it can answer with, errors in the JSON error shape.
//!
//! Owns: turning calls into control-handle calls and their results into answers. Does
//! not own: routing and authentication (the parent), the error shape (`error`), what
//! the calls do (the daemon).

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::bodies::{
    ClusterStatus, EvacuationRequest, EvacuationState, Health, PauseState, Readiness, RebalanceAnswer, Status, Stopping,
};
use super::error::{ApiError, ErrorBody, JsonObject};
use super::{Api, Authorized, Availability, Control, force};
use crate::cluster::Handoff;
use crate::report::Answer;

type S<C> = State<Api<C>>;
type ApiResult = Result<Response, ApiError>;

/// The Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Every metric", body = String, content_type = "text/plain")))]
pub async fn metrics<C: Control>(State(api): S<C>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], api.control.metrics()).into_response()
}

/// Liveness: 503 once a supervised task has failed and the process is on its way out.
#[utoipa::path(get, path = "/healthz", tag = "health", responses(
    (status = 200, description = "Every task runs", body = Health),
    (status = 503, description = "A supervised task failed (`unhealthy`)", body = ErrorBody)))]
pub async fn healthz<C: Control>(State(api): S<C>) -> ApiResult {
    api.control.health().map_err(|m| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", m))?;
    Ok(axum::Json(Health { status: "ok".into() }).into_response())
}

/// Readiness: whether this sidecar can coordinate (etcd) now.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready: etcd cannot be reached", body = Readiness)))]
pub async fn readyz<C: Control>(State(api): S<C>) -> Response {
    match api.control.readiness() {
        Ok(()) => axum::Json(Readiness { ready: true, reason: None, message: None }).into_response(),
        Err(e) => {
            let body = Readiness {
                ready: false,
                reason: Some("lock_unavailable".into()),
                message: Some(format!("etcd unavailable: {e}")),
            };
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

/// This sidecar: state, schedule, lock holder, last run, last snapshot's findings.
#[utoipa::path(get, path = "/status", tag = "status",
    responses((status = 200, description = "This sidecar's status", body = Status)))]
pub async fn status<C: Control>(State(api): S<C>) -> Response {
    axum::Json(api.control.status().await).into_response()
}

/// Every sidecar's registration and the fleet's shared state, from etcd.
#[utoipa::path(get, path = "/status/cluster", tag = "status", responses(
    (status = 200, description = "The fleet's state", body = ClusterStatus),
    (status = 503, description = "etcd cannot be read (`lock_unavailable`)", body = ErrorBody)))]
pub async fn status_cluster<C: Control>(State(api): S<C>) -> ApiResult {
    Ok(axum::Json(api.control.cluster_status().await?).into_response())
}

/// A dry run: snapshot, plan, decide; moves nothing. Needs the token when one is
/// configured: it sizes the whole cluster.
#[utoipa::path(get, path = "/plan", tag = "runs", security(("bearer" = [])),
    params(("force" = Option<bool>, Query, description = "Ignore the size thresholds")),
    responses(
        (status = 200, description = "What a run would do now", body = Answer),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "A wrong bearer token", body = ErrorBody),
        (status = 500, description = "The planner refused its own output (`plan_failed`)", body = ErrorBody),
        (status = 503, description = "The cluster cannot be read now (`snapshot_failed`)", body = ErrorBody)))]
pub async fn plan<C: Control>(State(api): S<C>, _: Authorized, RawQuery(raw): RawQuery) -> ApiResult {
    let force = force(raw)?;
    Ok(axum::Json(api.control.plan(force).await?).into_response())
}

/// Whether the local member should take traffic: 503 while it is evacuated, for load
/// balancers and readiness probes.
#[utoipa::path(get, path = "/availability", tag = "health", responses(
    (status = 200, description = "Available", body = Availability),
    (status = 503, description = "Evacuating or evacuated: send no traffic", body = Availability)))]
pub async fn availability<C: Control>(State(api): S<C>) -> Response {
    let a = api.control.availability();
    let status = if a.available { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(a)).into_response()
}

/// One run now, through the lock and the gates, answered per member
/// (`previous_buckets`, `requested_unload`, `accepted_unload`, `current_buckets`). A
/// caller that goes away does not stop the run.
#[utoipa::path(put, path = "/rebalance", tag = "runs", security(("bearer" = [])),
    params(("force" = Option<bool>, Query, description = "Ignore the size thresholds")),
    responses(
        (status = 200, description = "The run's answer; `message` when it found the cluster balanced",
            body = RebalanceAnswer),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "A wrong bearer token", body = ErrorBody),
        (status = 409, description = "Another operation runs, the fleet is paused, or the cluster says no \
            (`code` is the skip reason)", body = ErrorBody),
        (status = 500, description = "The planner failed, or the run was lost", body = ErrorBody),
        (status = 503, description = "etcd or the cluster cannot be reached, or the sidecar is shutting down",
            body = ErrorBody)))]
pub async fn rebalance<C: Control>(State(api): S<C>, _: Authorized, RawQuery(raw): RawQuery) -> ApiResult {
    let force = force(raw)?;
    let answer = api.control.rebalance(force).await?;
    // Balanced already: not an error; the answer says why, with the per-member figures.
    let message = answer.decision.reason.is_some().then(|| "No buckets found for rebalance.".to_string());
    Ok(axum::Json(RebalanceAnswer { answer, message }).into_response())
}

/// Stops the running operation at its next safe point.
#[utoipa::path(post, path = "/rebalance/stop", tag = "runs", security(("bearer" = [])), responses(
    (status = 200, description = "The operation asked to stop", body = Stopping),
    (status = 401, description = "No bearer token", body = ErrorBody),
    (status = 403, description = "A wrong bearer token", body = ErrorBody),
    (status = 409, description = "Nothing runs here (`not_running`)", body = ErrorBody)))]
pub async fn rebalance_stop<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    match api.control.stop() {
        Some(op) => Ok(axum::Json(Stopping { stopping: op }).into_response()),
        None => Err(ApiError::new(StatusCode::CONFLICT, "not_running", "no operation is running on this sidecar")),
    }
}

/// Starts (or updates) the persistent evacuation of the local member: its buckets move
/// away, and `/availability` answers 503, until it is stopped.
#[utoipa::path(post, path = "/evacuation/start", tag = "operator", security(("bearer" = [])),
    request_body(content = EvacuationRequest, content_type = "application/json",
        description = "Optional; an empty body takes every default"),
    responses(
        (status = 202, description = "Recorded; the evacuation runs in the background", body = EvacuationState),
        (status = 400, description = "Not a JSON object of the known fields, or a bad rate", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "A wrong bearer token", body = ErrorBody),
        (status = 409, description = "This member or a target is not in the cluster (`unknown_member`), or a \
            target cannot receive (`cannot_receive`)", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB", body = ErrorBody),
        (status = 415, description = "A body that is not declared JSON", body = ErrorBody),
        (status = 503, description = "etcd or the cluster cannot be reached", body = ErrorBody)))]
pub async fn evacuation_start<C: Control>(
    State(api): S<C>,
    _: Authorized,
    JsonObject(req): JsonObject<EvacuationRequest>,
) -> ApiResult {
    let rate = match req.rate {
        None => 0,
        Some(r) if r > 0 => r as u64,
        Some(r) => {
            return Err(ApiError::bad_request(format!("rate must be a positive number of bytes per second, got {r}")));
        }
    };
    let migrate_to = check_targets(api.control.as_ref(), &req.migrate_to).await?;
    let e = api.control.start_evacuation(rate, migrate_to).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(EvacuationState { evacuation: Some(e) })).into_response())
}

/// Checks the member and the targets against the live cluster before anything persists,
/// and names the targets by member id (a target may be given by id, address or
/// `hostname:port`). A well-formed request the cluster as it is now cannot take is a
/// conflict (409), not a bad request: the same body may pass once the member joins or heals.
async fn check_targets<C: Control>(control: &C, migrate_to: &[String]) -> Result<Vec<String>, ApiError> {
    let snap = control.snapshot().await?;
    let me = control.member();
    let conflict = |code, message: String| Err(ApiError::new(StatusCode::CONFLICT, code, message));
    if snap.member_index(me).is_none() {
        return conflict("unknown_member", format!("member {me} is not in the cluster"));
    }
    let mut ids = Vec::with_capacity(migrate_to.len());
    for t in migrate_to {
        let Some(i) = snap.member_named(t) else {
            return conflict("unknown_member", format!("migrate_to: unknown member {t:?}"));
        };
        let m = &snap.members[i as usize];
        if m.id == me {
            return conflict("cannot_receive", format!("migrate_to: {t} is the member being evacuated"));
        }
        if m.health != crate::model::Health::Healthy || m.draining {
            return conflict("cannot_receive", format!("migrate_to: {t} cannot receive (down, critical or draining)"));
        }
        ids.push(m.id.clone());
    }
    Ok(ids)
}

/// Ends the evacuation of the local member; an evacuation run stops at its next safe
/// point.
#[utoipa::path(post, path = "/evacuation/stop", tag = "operator", security(("bearer" = [])), responses(
    (status = 200, description = "No evacuation is recorded now", body = EvacuationState),
    (status = 401, description = "No bearer token", body = ErrorBody),
    (status = 403, description = "A wrong bearer token", body = ErrorBody),
    (status = 503, description = "etcd cannot be reached", body = ErrorBody)))]
pub async fn evacuation_stop<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    api.control.stop_evacuation().await?;
    Ok(axum::Json(EvacuationState { evacuation: None }).into_response())
}

/// Pauses every run of the fleet until resumed.
#[utoipa::path(put, path = "/pause", tag = "operator", security(("bearer" = [])), responses(
    (status = 200, description = "Paused, by whom", body = PauseState),
    (status = 401, description = "No bearer token", body = ErrorBody),
    (status = 403, description = "A wrong bearer token", body = ErrorBody),
    (status = 503, description = "etcd cannot be reached", body = ErrorBody)))]
pub async fn pause<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    let by = format!("paused by {} at {}", api.control.member(), chrono::Utc::now().to_rfc3339());
    api.control.set_paused(Some(by.clone())).await?;
    Ok(axum::Json(PauseState { paused: Some(by) }).into_response())
}

/// Lifts the fleet's pause.
#[utoipa::path(delete, path = "/pause", tag = "operator", security(("bearer" = [])), responses(
    (status = 200, description = "Not paused", body = PauseState),
    (status = 401, description = "No bearer token", body = ErrorBody),
    (status = 403, description = "A wrong bearer token", body = ErrorBody),
    (status = 503, description = "etcd cannot be reached", body = ErrorBody)))]
pub async fn resume<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    api.control.set_paused(None).await?;
    Ok(axum::Json(PauseState { paused: None }).into_response())
}

/// Before the local node stops (a rolling restart): a master hands its role to its in-sync
/// replica (CLUSTER FAILOVER on the replica, 15 s at most); beside a replica, nothing.
#[utoipa::path(post, path = "/handoff", tag = "operator", security(("bearer" = [])), responses(
    (status = 200, description = "Handed off (`promoted`), or nothing to hand off (`none`)", body = Handoff),
    (status = 400, description = "cluster.member-id names no node of the cluster", body = ErrorBody),
    (status = 401, description = "No bearer token", body = ErrorBody),
    (status = 403, description = "A wrong bearer token", body = ErrorBody),
    (status = 409, description = "No usable replica, or a slot open on the member: evacuate or repair first", body = ErrorBody),
    (status = 503, description = "The failover did not finish in time, or a node could not be reached", body = ErrorBody)))]
pub async fn handoff<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    Ok(axum::Json(api.control.handoff().await?).into_response())
}
