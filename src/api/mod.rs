//! The HTTP API (loopback by default): metrics, health, status, dry runs, and the
//! operator's calls. Mutating calls, and `/plan`, need `Authorization: Bearer <token>`
//! when a token is configured. Every error is JSON `{"error": {"code", "message"}}`, the
//! framework's own rejections included, with a 4xx code for anything the caller can fix;
//! nothing a caller sends can panic a handler.
//!
//! Layout: this file owns the routes, authentication and query parsing; [`control`] the
//! handle the API calls, which the daemon implements (the API never sees the daemon);
//! [`error`] the error shape and the one mapping from run errors to statuses. Does not
//! own: what the calls do.

pub mod control;
pub mod error;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;

pub use control::{Availability, Control};
pub use error::ApiError;
use error::{BODY_LIMIT, JsonObject};

/// The router's state: the control handle and the bearer token, if any.
pub struct Api<C> {
    control: Arc<C>,
    token: Option<Arc<str>>,
}

impl<C> Clone for Api<C> {
    fn clone(&self) -> Self {
        Api { control: self.control.clone(), token: self.token.clone() }
    }
}

type S<C> = State<Api<C>>;
type ApiResult = Result<Response, ApiError>;

pub fn router<C: Control>(control: Arc<C>, token: Option<String>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<C>))
        .route("/healthz", get(healthz::<C>))
        .route("/readyz", get(readyz::<C>))
        .route("/status", get(status::<C>))
        .route("/status/cluster", get(status_cluster::<C>))
        .route("/plan", get(plan::<C>))
        .route("/availability", get(availability::<C>))
        .route("/rebalance", put(rebalance::<C>))
        .route("/rebalance/stop", post(rebalance_stop::<C>))
        .route("/evacuation/start", post(evacuation_start::<C>))
        .route("/evacuation/stop", post(evacuation_stop::<C>))
        .route("/pause", put(pause::<C>).delete(resume::<C>))
        .route("/handoff", post(handoff::<C>))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(Api { control, token: token.map(Arc::from) })
}

/// Extracted first: the request carried the configured bearer token, or none is set.
struct Authorized;

impl<C: Send + Sync> FromRequestParts<Api<C>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api<C>) -> Result<Self, ApiError> {
        api.authorize(&parts.headers).map(|()| Authorized)
    }
}

impl<C> Api<C> {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else { return Ok(()) };
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
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?} (accepted: {})",
                allowed.join(", ")
            )));
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
        Some(v) => Err(ApiError::bad_request(format!("{name} must be true or false, got {v:?}"))),
    }
}

/// `?force=true` or nothing.
fn force(raw: Option<String>) -> Result<bool, ApiError> {
    flag(&query(raw, &["force"])?, "force")
}

async fn metrics<C: Control>(State(api): S<C>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], api.control.metrics()).into_response()
}

/// 503 once a supervised task has failed: the process is on its way out.
async fn healthz<C: Control>(State(api): S<C>) -> ApiResult {
    api.control.health().map_err(|m| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", m))?;
    Ok(axum::Json(json!({"status": "ok"})).into_response())
}

async fn readyz<C: Control>(State(api): S<C>) -> Response {
    match api.control.readiness() {
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

async fn status<C: Control>(State(api): S<C>) -> Response {
    axum::Json(api.control.status().await).into_response()
}

async fn status_cluster<C: Control>(State(api): S<C>) -> ApiResult {
    Ok(axum::Json(api.control.cluster_status().await?).into_response())
}

/// A dry run. Behind the token when one is configured: it sizes the whole cluster.
async fn plan<C: Control>(State(api): S<C>, _: Authorized, RawQuery(raw): RawQuery) -> ApiResult {
    let force = force(raw)?;
    Ok(axum::Json(api.control.plan(force).await?).into_response())
}

async fn availability<C: Control>(State(api): S<C>) -> Response {
    let a = api.control.availability();
    let status = if a.available { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = if a.available {
        json!({"available": true, "member": a.member})
    } else {
        json!({"available": false, "state": a.state, "member": a.member})
    };
    (status, axum::Json(body)).into_response()
}

/// `PUT /rebalance[?force=true]`: one run now through the lock and the gates, answered
/// per member (previous_buckets, requested_unload, accepted_unload, current_buckets).
async fn rebalance<C: Control>(State(api): S<C>, _: Authorized, RawQuery(raw): RawQuery) -> ApiResult {
    let force = force(raw)?;
    let answer = api.control.rebalance(force).await?;
    if answer.decision.reason.is_none() {
        return Ok(axum::Json(answer).into_response());
    }
    // Balanced already: not an error; the answer says why, with the per-member figures.
    let mut v = serde_json::to_value(&answer).expect("answer serializes");
    v["message"] = json!("No buckets found for rebalance.");
    Ok(axum::Json(v).into_response())
}

async fn rebalance_stop<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    match api.control.stop() {
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

async fn evacuation_start<C: Control>(
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
    check_targets(api.control.as_ref(), &req.migrate_to).await?;
    let e = api.control.start_evacuation(rate, req.migrate_to).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"evacuation": e}))).into_response())
}

/// Checks the member and the targets against the live cluster before anything persists.
async fn check_targets<C: Control>(control: &C, migrate_to: &[String]) -> Result<(), ApiError> {
    let snap = control.snapshot().await?;
    let me = control.member();
    if snap.member_index(me).is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_member",
            format!("member {me} is not in the cluster"),
        ));
    }
    for t in migrate_to {
        let Some(i) = snap.member_index(t) else {
            return Err(ApiError::bad_request(format!("migrate_to: unknown member {t:?}")));
        };
        if t == me {
            return Err(ApiError::bad_request(format!("migrate_to: {t} is the member being evacuated")));
        }
        let m = &snap.members[i as usize];
        if m.health != crate::model::Health::Healthy || m.draining {
            return Err(ApiError::bad_request(format!("migrate_to: {t} cannot receive (down, critical or draining)")));
        }
    }
    Ok(())
}

async fn evacuation_stop<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    api.control.stop_evacuation().await?;
    Ok(axum::Json(json!({"evacuation": null})).into_response())
}

async fn pause<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    let by = format!("paused by {} at {}", api.control.member(), chrono::Utc::now().to_rfc3339());
    api.control.set_paused(Some(by.clone())).await?;
    Ok(axum::Json(json!({"paused": by})).into_response())
}

async fn resume<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    api.control.set_paused(None).await?;
    Ok(axum::Json(json!({"paused": null})).into_response())
}

/// `POST /handoff`: before the local node stops, a master hands its role to its in-sync
/// replica; beside a replica, 200 with `"action": "none"`.
async fn handoff<C: Control>(State(api): S<C>, _: Authorized) -> ApiResult {
    Ok(axum::Json(api.control.handoff().await?).into_response())
}
