//! The HTTP API (loopback by default): metrics, health, status, dry runs, and the
//! operator's calls. Mutating calls need `Authorization: Bearer <token>` when a token is
//! configured. Every error is JSON `{"error": {"code", "message"}}` with a 4xx code for
//! anything the caller can fix; nothing a caller sends can panic a handler.
//!
//! Owns: routes, authentication, the mapping of errors to status codes (one place,
//! `ApiError`). Does not own: what the calls do (`sidecar`, `run`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;

use crate::decide::SkipReason;
use crate::run::Trigger;
use crate::sidecar::{Busy, Sidecar};

/// An error answer: HTTP status, a stable code, a sentence.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

impl From<Busy> for ApiError {
    fn from(b: Busy) -> ApiError {
        match &b {
            Busy::Running(_) => ApiError::new(StatusCode::CONFLICT, "already_running", b.to_string()),
        }
    }
}

type S = State<Arc<Sidecar>>;
type ApiResult = Result<Response, ApiError>;

pub fn router(sc: Arc<Sidecar>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/status/cluster", get(status_cluster))
        .route("/plan", get(plan))
        .route("/availability", get(availability))
        .route("/rebalance", put(rebalance))
        .route("/rebalance/stop", post(rebalance_stop))
        .route("/evacuation/start", post(evacuation_start))
        .route("/evacuation/stop", post(evacuation_stop))
        .route("/pause", put(pause).delete(resume))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        })
        .with_state(sc)
}

fn authorize(sc: &Sidecar, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &sc.token else { return Ok(()) };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the bearer token does not match")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this call needs Authorization: Bearer <token>",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses `a=1&b=x`, rejecting keys not in `allowed`.
fn query(raw: Option<String>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("unknown query parameter {k:?} (accepted: {})", allowed.join(", ")),
            ));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn flag(q: &[(String, String)], name: &str) -> Result<bool, ApiError> {
    match q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()) {
        None => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(v) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{name} must be true or false, got {v:?}"),
        )),
    }
}

async fn metrics(State(sc): S) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], sc.ctx.metrics.render()).into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(sc): S) -> Response {
    match sc.etcd.lock().unwrap().clone() {
        Ok(()) => axum::Json(json!({"ready": true})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({"ready": false, "reason": "lock_unavailable", "message": format!("etcd unavailable: {e}")}),
            ),
        )
            .into_response(),
    }
}

async fn status(State(sc): S) -> ApiResult {
    let mut reg = sc.registration().await;
    let holder = sc.ctx.coordinator.holder().await;
    let paused = sc.ctx.coordinator.paused().await;
    let obj = reg.as_object_mut().expect("object");
    obj.insert("cluster".into(), json!(sc.ctx.config.cluster.id));
    obj.insert(
        "schedule".into(),
        json!({"cron": sc.schedule.expression(), "timezone": sc.ctx.config.schedule.timezone, "enabled": sc.ctx.config.schedule.enabled}),
    );
    obj.insert("standalone".into(), json!(sc.ctx.coordinator.is_standalone()));
    obj.insert(
        "lock".into(),
        match holder {
            Ok(Some(h)) => json!({"holder": h.member, "operation": h.operation, "since": h.started_at,
                                  "age_seconds": (chrono::Utc::now() - h.started_at).num_milliseconds() as f64 / 1000.0,
                                  "held_here": h.member == sc.member() && sc.current_operation().await.is_some()}),
            Ok(None) => json!({"holder": null}),
            Err(e) => json!({"error": e.to_string()}),
        },
    );
    obj.insert("paused".into(), json!(paused.ok().flatten()));
    obj.insert("etcd".into(), json!(sc.etcd.lock().unwrap().clone().err()));
    Ok(axum::Json(reg).into_response())
}

async fn status_cluster(State(sc): S) -> ApiResult {
    let unavailable =
        |e: crate::coord::LockError| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "lock_unavailable", e.to_string());
    let sidecars = sc.ctx.coordinator.sidecars().await.map_err(unavailable)?;
    let holder = sc.ctx.coordinator.holder().await.map_err(unavailable)?;
    let paused = sc.ctx.coordinator.paused().await.map_err(unavailable)?;
    let evacuations = sc.ctx.coordinator.evacuations().await.map_err(unavailable)?;
    let last_run = sc.ctx.coordinator.last_run().await.map_err(unavailable)?;
    Ok(axum::Json(json!({
        "cluster": sc.ctx.config.cluster.id,
        "lock_holder": holder,
        "paused": paused,
        "evacuations": evacuations,
        "last_run": last_run,
        "sidecars": sidecars,
    }))
    .into_response())
}

async fn plan(State(sc): S, RawQuery(raw): RawQuery) -> ApiResult {
    let q = query(raw, &["force"])?;
    let force = flag(&q, "force")?;
    let out = sc
        .ctx
        .simulate(force)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "snapshot_failed", e))?;
    Ok(axum::Json(out).into_response())
}

async fn availability(State(sc): S) -> Response {
    let e = sc.evacuation.lock().unwrap().clone();
    if e.active {
        let state = if e.buckets_left == Some(0) { "evacuated" } else { "evacuating" };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"available": false, "state": state, "member": sc.member()})),
        )
            .into_response()
    } else {
        axum::Json(json!({"available": true, "member": sc.member()})).into_response()
    }
}

/// `PUT /rebalance[?force=true]`: one run now through the lock and the gates, answered
/// per member (previous_buckets, requested_unload, accepted_unload, current_buckets).
async fn rebalance(State(sc): S, headers: HeaderMap, RawQuery(raw): RawQuery) -> ApiResult {
    authorize(&sc, &headers)?;
    let q = query(raw, &["force"])?;
    let force = flag(&q, "force")?;
    let out = sc.run(Trigger::Manual { force }).await?;
    match out.decision.reason {
        None => Ok(axum::Json(out).into_response()),
        Some(r) => {
            let (status, code, message) = match r {
                SkipReason::NothingToMove | SkipReason::BelowThreshold | SkipReason::BelowMinimumSize => {
                    // Not an error: the answer says why, with the per-member figures.
                    let mut v = serde_json::to_value(&out).unwrap();
                    v["message"] = json!("No buckets found for rebalance.");
                    return Ok(axum::Json(v).into_response());
                }
                SkipReason::LockHeldElsewhere => {
                    (StatusCode::CONFLICT, "already_running", out.decision.message.clone())
                }
                SkipReason::Paused => (StatusCode::CONFLICT, "paused", out.decision.message.clone()),
                SkipReason::Standalone => (StatusCode::CONFLICT, "standalone", out.decision.message.clone()),
                SkipReason::TooFewHealthy | SkipReason::MemberDown | SkipReason::CriticalMember => {
                    (StatusCode::CONFLICT, "too_few_healthy", out.decision.message.clone())
                }
                SkipReason::MigrationInProgress => {
                    (StatusCode::CONFLICT, "migration_in_progress", out.decision.message.clone())
                }
                SkipReason::LockUnavailable => {
                    (StatusCode::SERVICE_UNAVAILABLE, "lock_unavailable", out.decision.message.clone())
                }
                SkipReason::SnapshotFailed => {
                    (StatusCode::SERVICE_UNAVAILABLE, "snapshot_failed", out.decision.message.clone())
                }
                SkipReason::StrayKeys => (StatusCode::CONFLICT, "stray_keys", out.decision.message.clone()),
                SkipReason::PlanFailed => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "plan_failed", out.decision.message.clone())
                }
                SkipReason::Disabled | SkipReason::AlreadyRanThisSlot => {
                    (StatusCode::CONFLICT, r.as_str(), out.decision.message.clone())
                }
            };
            Err(ApiError::new(status, code, message))
        }
    }
}

async fn rebalance_stop(State(sc): S, headers: HeaderMap) -> ApiResult {
    authorize(&sc, &headers)?;
    match sc.stop_current().await {
        Some(op) => Ok(axum::Json(json!({"stopping": op})).into_response()),
        None => Err(ApiError::new(StatusCode::CONFLICT, "not_running", "no operation is running on this sidecar")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EvacuationRequest {
    #[serde(default)]
    rate: Option<i64>,
    #[serde(default)]
    migrate_to: Vec<String>,
}

async fn evacuation_start(State(sc): S, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorize(&sc, &headers)?;
    let req: EvacuationRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        EvacuationRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}")))?
    };
    let rate = match req.rate {
        None => 0,
        Some(r) if r > 0 => r as u64,
        Some(r) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("rate must be a positive number of bytes per second, got {r}"),
            ));
        }
    };
    // Validate targets against the live cluster before persisting anything.
    let snap =
        sc.ctx.snapshot().await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "snapshot_failed", e))?;
    if snap.member_index(sc.member()).is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_member",
            format!("member {} is not in the cluster", sc.member()),
        ));
    }
    for t in &req.migrate_to {
        let Some(i) = snap.member_index(t) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("migrate_to: unknown member {t:?}"),
            ));
        };
        if t == sc.member() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("migrate_to: {t} is the member being evacuated"),
            ));
        }
        let m = &snap.members[i as usize];
        if m.health != crate::model::Health::Healthy || m.draining {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("migrate_to: {t} cannot receive (down, critical or draining)"),
            ));
        }
    }
    let e = sc
        .start_evacuation(rate, req.migrate_to)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "lock_unavailable", e))?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"evacuation": e}))).into_response())
}

async fn evacuation_stop(State(sc): S, headers: HeaderMap) -> ApiResult {
    authorize(&sc, &headers)?;
    sc.stop_evacuation().await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "lock_unavailable", e))?;
    Ok(axum::Json(json!({"evacuation": null})).into_response())
}

async fn pause(State(sc): S, headers: HeaderMap) -> ApiResult {
    authorize(&sc, &headers)?;
    let by = format!("paused by {} at {}", sc.member(), chrono::Utc::now().to_rfc3339());
    sc.ctx
        .coordinator
        .set_paused(Some(by.clone()))
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "lock_unavailable", e.to_string()))?;
    Ok(axum::Json(json!({"paused": by})).into_response())
}

async fn resume(State(sc): S, headers: HeaderMap) -> ApiResult {
    authorize(&sc, &headers)?;
    sc.ctx
        .coordinator
        .set_paused(None)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "lock_unavailable", e.to_string()))?;
    Ok(axum::Json(json!({"paused": null})).into_response())
}
