//! The HTTP API (loopback by default): metrics, health, status, dry runs, and the
//! operator's calls. Mutating calls, and `/plan`, need `Authorization: Bearer <token>`
//! when a token is configured. Every error is JSON `{"error": {"code", "message"}}`, the
//! framework's own rejections included, with a 4xx code for anything the caller can fix;
//! nothing a caller sends can panic a handler.
//!
//! Layout: this file owns the route table, authentication and query parsing; `handlers`
//! the handlers, each annotated with its part of the OpenAPI contract; [`bodies`] the
//! request and answer types; [`openapi`] the generated document (`GET /openapi.json`,
//! public); [`control`] the handle the API calls, which the daemon implements (the API
//! never sees the daemon); [`error`] the error shape and the one mapping from run errors
//! to statuses. Does not own: what the calls do.

pub mod bodies;
pub mod control;
pub mod error;
mod handlers;
pub mod openapi;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::routing::{MethodFilter, MethodRouter, on};

pub use control::{Availability, Control};
pub use error::ApiError;
use error::BODY_LIMIT;
use handlers::*;

#[cfg(test)]
mod tests;

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

/// One route: method, path, handler.
pub struct Route<C> {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<Api<C>>,
}

fn route<C, H, T>(method: Method, path: &'static str, handler: H) -> Route<C>
where
    C: Control,
    H: Handler<T, Api<C>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
    Route { method, path, handler: on(filter, handler) }
}

/// Every route the API serves. The router is built from this list only, and a test
/// holds the OpenAPI document to it: a route without its documentation fails.
pub fn routes<C: Control>() -> Vec<Route<C>> {
    vec![
        route(Method::GET, "/openapi.json", openapi::openapi_json),
        route(Method::GET, "/metrics", metrics::<C>),
        route(Method::GET, "/healthz", healthz::<C>),
        route(Method::GET, "/readyz", readyz::<C>),
        route(Method::GET, "/status", status::<C>),
        route(Method::GET, "/status/cluster", status_cluster::<C>),
        route(Method::GET, "/plan", plan::<C>),
        route(Method::GET, "/availability", availability::<C>),
        route(Method::PUT, "/rebalance", rebalance::<C>),
        route(Method::POST, "/rebalance/stop", rebalance_stop::<C>),
        route(Method::POST, "/evacuation/start", evacuation_start::<C>),
        route(Method::POST, "/evacuation/stop", evacuation_stop::<C>),
        route(Method::PUT, "/pause", pause::<C>),
        route(Method::DELETE, "/pause", resume::<C>),
        route(Method::POST, "/handoff", handoff::<C>),
    ]
}

pub fn router<C: Control>(control: Arc<C>, token: Option<String>) -> Router {
    routes::<C>()
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler))
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
