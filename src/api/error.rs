//! Every error the API answers, in one shape: `{"error": {"code", "message"}}`.
//!
//! Owns: `ApiError`, the one mapping from run errors to HTTP statuses and codes, the
//! rewrite of the framework's own plain-text rejections (413, 415, 405, ...) into that
//! shape, and the JSON-object body extractor. Does not own: the routes (the parent).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::cluster::HandoffError;
use crate::decide::SkipReason;
use crate::run::RunError;

/// The largest request body accepted: requests carry a few fields at most.
pub const BODY_LIMIT: usize = 64 * 1024;

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

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// Every error answer's body: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `payload_too_large`, `unsupported_media_type`,
    /// `already_running`, `not_running`, `paused`, `unknown_member`, `snapshot_failed`,
    /// `lock_unavailable`, `shutting_down`, a skip reason, ...
    #[schema(example = "unauthorized")]
    pub code: String,
    /// One sentence for people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The one mapping from run errors to HTTP.
impl From<RunError> for ApiError {
    fn from(e: RunError) -> ApiError {
        use StatusCode as S;
        let (status, code) = match &e {
            RunError::Busy(_) => (S::CONFLICT, "already_running"),
            RunError::ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting_down"),
            RunError::Skipped(s) => skip_status(s.reason),
            RunError::Snapshot(_) => (S::SERVICE_UNAVAILABLE, "snapshot_failed"),
            RunError::Plan(_) => (S::INTERNAL_SERVER_ERROR, "plan_failed"),
            RunError::Repair(_) => (S::SERVICE_UNAVAILABLE, "repair_failed"),
            RunError::Mover(_) => (S::CONFLICT, "mover_unsupported"),
            RunError::Coordinator(_) => (S::SERVICE_UNAVAILABLE, "lock_unavailable"),
            RunError::Lost(_) => (S::INTERNAL_SERVER_ERROR, "run_lost"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A handoff that did not happen: 409 when the cluster says no (no usable replica, a slot
/// in flight), 503 when a node did not answer or the failover did not finish in time.
impl From<HandoffError> for ApiError {
    fn from(e: HandoffError) -> ApiError {
        let status = match &e {
            HandoffError::UnknownMember(_) => StatusCode::BAD_REQUEST,
            HandoffError::NoReplica { .. } | HandoffError::OpenSlots { .. } | HandoffError::Unsupported => {
                StatusCode::CONFLICT
            }
            HandoffError::TimedOut { .. } | HandoffError::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// A skip an on-demand caller gets as an error: 503 when it may pass by itself (etcd,
/// the backend), 409 when the cluster or the fleet says no.
fn skip_status(r: SkipReason) -> (StatusCode, &'static str) {
    match r {
        SkipReason::LockHeldElsewhere => (StatusCode::CONFLICT, "already_running"),
        SkipReason::TooFewHealthy | SkipReason::MemberDown | SkipReason::CriticalMember => {
            (StatusCode::CONFLICT, "too_few_healthy")
        }
        SkipReason::LockUnavailable => (StatusCode::SERVICE_UNAVAILABLE, r.as_str()),
        _ => (StatusCode::CONFLICT, r.as_str()),
    }
}

/// The stable code of a status the framework answered by itself.
fn status_code(s: StatusCode) -> &'static str {
    match s {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

fn is_json(v: Option<&HeaderValue>) -> bool {
    v.and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"))
}

/// Middleware: an error answer that is not JSON yet (the framework's own rejections)
/// becomes `{"error": {"code", "message"}}`, its text kept as the message.
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(res.headers().get(header::CONTENT_TYPE)) {
        return res;
    }
    let text = axum::body::to_bytes(res.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    ApiError::new(status, status_code(status), message).into_response()
}

/// A JSON object body with no unknown fields; an empty body is `T::default()`. A body
/// that is not declared JSON (415), not an object (400) or too large (413) is refused
/// before anything happens.
pub struct JsonObject<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for JsonObject<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
            // Refused before reading: a client that sent `Expect: 100-continue` sends nothing.
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body may be at most {BODY_LIMIT} bytes"),
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), status_code(r.status()), r.body_text()))?;
        let empty = body.iter().all(u8::is_ascii_whitespace);
        if (content_type.is_some() || !empty) && !is_json(content_type.as_ref()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        if empty {
            return Ok(JsonObject(T::default()));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request(format!("the body must be a JSON object, got {}", kind(&value))));
        }
        serde_json::from_value(value).map(JsonObject).map_err(|e| ApiError::bad_request(format!("body: {e}")))
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Skip;
    use serde_json::json;

    #[test]
    fn run_errors_map_to_statuses_in_one_place() {
        let e = |r: RunError| {
            let a = ApiError::from(r);
            (a.status.as_u16(), a.code)
        };
        assert_eq!(e(RunError::Busy(crate::run::Operation::Manual)), (409, "already_running"));
        assert_eq!(e(RunError::Skipped(Skip::new(SkipReason::Paused, "p"))), (409, "paused"));
        assert_eq!(e(RunError::Skipped(Skip::new(SkipReason::MemberDown, "d"))), (409, "too_few_healthy"));
        assert_eq!(e(RunError::Skipped(Skip::new(SkipReason::LockUnavailable, "s"))), (503, "lock_unavailable"));
        let unreadable = crate::cluster::ClusterError::Snapshot("refused".into());
        assert_eq!(e(RunError::Snapshot(unreadable)), (503, "snapshot_failed"));
        assert_eq!(e(RunError::ShuttingDown), (503, "shutting_down"));
        let h = ApiError::from(HandoffError::NoReplica { master: "m:1".into(), detail: "no replicas".into() });
        assert_eq!((h.status.as_u16(), h.code), (409, "no_replica"));
        assert_eq!(ApiError::from(HandoffError::Backend("x".into())).status, 503);
        let busy = ApiError::from(RunError::Busy(crate::run::Operation::Manual));
        assert_eq!(busy.message, "a manual is already running on this sidecar");
    }

    #[tokio::test]
    async fn framework_rejections_are_rewritten_to_the_json_shape() {
        let plain = (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response();
        let res = json_errors(plain).await;
        assert_eq!(res.status(), 413);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"error": {"code": "payload_too_large", "message": "length limit exceeded"}}));
        let ok = json_errors((StatusCode::OK, "fine").into_response()).await;
        assert_eq!(axum::body::to_bytes(ok.into_body(), 64).await.unwrap(), "fine");
    }

    #[test]
    fn json_content_types() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(is_json(Some(&h("application/json"))));
        assert!(is_json(Some(&h("Application/JSON; charset=utf-8"))));
        assert!(is_json(Some(&h("application/merge-patch+json"))));
        assert!(!is_json(Some(&h("text/plain"))));
        assert!(!is_json(None));
    }
}
