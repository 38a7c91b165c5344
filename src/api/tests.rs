//! The contract against the router: the OpenAPI document is well formed, lists exactly
//! the routes the router serves, and names the error shape for every error status.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;
use crate::coord::Evacuation;
use crate::model::ClusterSnapshot;
use crate::report::Answer;
use crate::run::RunError;

/// A control handle for the route table's type only: never called.
struct Unused;

impl Control for Unused {
    fn member(&self) -> &str {
        unreachable!()
    }
    fn metrics(&self) -> String {
        unreachable!()
    }
    fn health(&self) -> Result<(), String> {
        unreachable!()
    }
    fn readiness(&self) -> Result<(), String> {
        unreachable!()
    }
    fn availability(&self) -> Availability {
        unreachable!()
    }
    async fn status(&self) -> crate::api::bodies::Status {
        unreachable!()
    }
    async fn cluster_status(&self) -> Result<crate::api::bodies::ClusterStatus, RunError> {
        unreachable!()
    }
    async fn plan(&self, _: bool) -> Result<Answer, RunError> {
        unreachable!()
    }
    async fn rebalance(&self, _: bool) -> Result<Answer, RunError> {
        unreachable!()
    }
    fn stop(&self) -> Option<crate::run::Operation> {
        unreachable!()
    }
    async fn snapshot(&self) -> Result<ClusterSnapshot, RunError> {
        unreachable!()
    }
    async fn start_evacuation(&self, _: u64, _: Vec<String>) -> Result<Evacuation, RunError> {
        unreachable!()
    }
    async fn stop_evacuation(&self) -> Result<(), RunError> {
        unreachable!()
    }
    async fn set_paused(&self, _: Option<String>) -> Result<(), RunError> {
        unreachable!()
    }
    async fn handoff(&self) -> Result<crate::cluster::Handoff, crate::cluster::HandoffError> {
        unreachable!()
    }
}

fn document() -> Value {
    serde_json::from_str(openapi::document()).expect("the document is JSON")
}

/// (METHOD, path) of every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            out.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_serves() {
    let served: BTreeSet<(String, String)> =
        routes::<Unused>().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    let documented: BTreeSet<(String, String)> = operations(&document()).into_iter().map(|(m, p, _)| (m, p)).collect();
    assert_eq!(served.len(), routes::<Unused>().len(), "a route is listed twice");
    assert_eq!(documented, served, "documented (left) and served (right) differ");
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r);
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_well_formed_openapi_3() {
    let doc = document();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(doc["components"]["schemas"][name].is_object(), "$ref {r} does not resolve");
    }
    for name in ["NotFound", "MethodNotAllowed"] {
        let schema = &doc["components"]["responses"][name]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(schema, "#/components/schemas/ErrorBody", "{name}");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    for (method, path, op) in operations(&doc) {
        let ok = op["responses"].as_object().is_some_and(|r| r.keys().any(|s| s.starts_with('2')));
        assert!(ok, "{method} {path} documents no success");
        assert!(op["operationId"].is_string(), "{method} {path}");
        for req in op["security"].as_array().into_iter().flatten() {
            for scheme in req.as_object().unwrap().keys() {
                assert!(schemes[scheme].is_object(), "{method} {path}: unknown scheme {scheme}");
            }
        }
    }
}

/// Probes answer 503 with their own bodies (a load balancer reads them); every other
/// error status of every operation is the JSON error shape.
#[test]
fn every_error_status_names_the_error_shape_and_protected_calls_name_the_token() {
    let error_ref = "#/components/schemas/ErrorBody";
    for (method, path, op) in operations(&document()) {
        let responses = op["responses"].as_object().unwrap();
        for (status, r) in responses {
            let probe = status == "503" && (path == "/readyz" || path == "/availability");
            if status.starts_with('2') || probe {
                continue;
            }
            let schema = &r["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(schema, error_ref, "{method} {path} {status}");
        }
        let protected = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(protected, responses.contains_key("401"), "{method} {path}: security and 401 disagree");
        assert_eq!(protected, responses.contains_key("403"), "{method} {path}: security and 403 disagree");
    }
    let doc = document();
    let protected: BTreeSet<String> = operations(&doc)
        .into_iter()
        .filter(|(_, _, op)| op["security"].as_array().is_some_and(|s| !s.is_empty()))
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    let expected = [
        "GET /plan",
        "PUT /rebalance",
        "POST /rebalance/stop",
        "POST /evacuation/start",
        "POST /evacuation/stop",
        "PUT /pause",
        "DELETE /pause",
        "POST /handoff",
    ];
    assert_eq!(protected, expected.iter().map(|s| s.to_string()).collect());
}

#[test]
fn the_body_limit_and_media_type_are_documented_where_a_body_is_read() {
    let doc = document();
    let op = &doc["paths"]["/evacuation/start"]["post"];
    for status in ["400", "413", "415"] {
        assert!(op["responses"][status].is_object(), "{status}");
    }
    assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object(), "{op:#}");
    assert_ne!(op["requestBody"]["required"], true, "an empty body takes every default");
}

#[test]
fn the_status_documents_are_typed_field_by_field() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let status = &schemas["Status"]["allOf"];
    assert_eq!(status[0]["$ref"], "#/components/schemas/Registration", "{status:#}");
    for (name, props) in [
        ("Status", &status[1]["properties"]),
        ("Registration", &schemas["Registration"]["properties"]),
        ("LockStatus", &schemas["LockStatus"]["properties"]),
        ("EvacuationStatus", &schemas["EvacuationStatus"]["properties"]),
    ] {
        let props = props.as_object().unwrap_or_else(|| panic!("{name} has no properties"));
        for (field, schema) in props {
            // An untyped field (serde_json::Value) is described as `{}`: anything.
            let described = ["type", "$ref", "oneOf", "allOf"].iter().any(|k| schema.get(k).is_some());
            assert!(described, "{name}.{field} is untyped: {schema}");
        }
    }
    for field in ["address", "evacuation", "progress", "last_decision"] {
        assert!(schemas["Registration"]["properties"].get(field).is_some(), "Registration lacks {field}");
    }
}
