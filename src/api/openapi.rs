//! The API's contract: an OpenAPI 3 document generated from the handlers' annotations
//! and the body types, served at `GET /openapi.json` without a token.
//!
//! Owns: the document's assembly (paths, the error shape, the bearer scheme) and its
//! route. Does not own: what each route answers (`handlers`, beside each handler).

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use super::error::{ErrorBody, ErrorDetail};
use super::handlers;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "autobalancer",
        description = "The sidecar's HTTP API. Calls marked with the bearer scheme need \
            `Authorization: Bearer <token>` when a token is configured (`api.token-file`). Every error, \
            the framework's own included (404 for an unknown path, 405 for a method a path does not \
            serve, with `Allow`), is JSON `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        openapi_json,
        handlers::metrics,
        handlers::healthz,
        handlers::readyz,
        handlers::status,
        handlers::status_cluster,
        handlers::plan,
        handlers::availability,
        handlers::rebalance,
        handlers::rebalance_stop,
        handlers::evacuation_start,
        handlers::evacuation_stop,
        handlers::pause,
        handlers::resume,
        handlers::handoff,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerToken, &OptionalBodies, &RoutingErrors),
    tags(
        (name = "health", description = "Probes and metrics; no token"),
        (name = "status", description = "What this sidecar and the fleet are doing; no token"),
        (name = "runs", description = "Dry runs and runs now"),
        (name = "operator", description = "Persistent operator state: evacuation and pause; handoff before a node stops"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme the protected operations name.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// An empty body takes every default: the body of `POST /evacuation/start` is optional,
/// though not nullable (`null` is refused like any body that is not an object).
struct OptionalBodies;

impl utoipa::Modify for OptionalBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let op = doc.paths.paths.get_mut("/evacuation/start").and_then(|p| p.post.as_mut());
        if let Some(body) = op.and_then(|op| op.request_body.as_mut()) {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

/// What the router answers by itself, for any path: 404 for a path it does not serve,
/// 405 (with `Allow`) for a method a path does not take. No operation can list them, so
/// they stand as named responses beside the schemas, in the same error shape.
struct RoutingErrors;

impl utoipa::Modify for RoutingErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, description) in [
            ("NotFound", "404: no such path (`not_found`)"),
            (
                "MethodNotAllowed",
                "405: the path does not take this method (`method_not_allowed`); `Allow` lists those it takes",
            ),
        ] {
            let content = Content::new(Some(Ref::from_schema_name("ErrorBody")));
            let response = ResponseBuilder::new().description(description).content("application/json", content).build();
            components.responses.insert(name.to_string(), response.into());
        }
    }
}

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        // Taken from the crate, which names no license: an empty name would say nothing.
        doc.info.license = None;
        doc.to_json().expect("the OpenAPI document serializes")
    })
}

/// This document: the API's contract, public (no token).
#[utoipa::path(get, path = "/openapi.json", tag = "status",
    responses((status = 200, description = "The OpenAPI 3 document", body = serde_json::Value)))]
pub async fn openapi_json() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document()).into_response()
}
