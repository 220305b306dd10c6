//! The OpenAPI 3.1 document served at `/openapi.json`: generated from the
//! handlers' `#[utoipa::path]` annotations and the body types, then
//! completed here with what every operation shares, so that no operation can
//! forget it:
//!
//! - every error answer's body is the one [`ErrorBody`] schema;
//! - every response has a description (the error codes it stands for);
//! - a body-taking operation answers 400, 413 and 415; an operation with
//!   path parameters 400 (a parameter that is not UTF-8); an operation
//!   with a key 401; every operation 504 (the request timeout) and every
//!   operation that reads the store 503;
//! - every operation takes the optional `X-Request-Id` and `traceparent`
//!   request headers, and every answer has the `X-Request-Id` header
//!   (`super::request_id`).

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::domain::invoice::Invoice;

/// Every non-2xx answer: `{"error": {"code", "message", "stage"?, "details"?, "request_id"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, e.g. `OUT_OF_STOCK`.
    pub code: String,
    /// For humans; never echoes a key, secret or token.
    pub message: String,
    /// The pipeline stage that failed, where one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Machine-readable specifics (e.g. the sku, requested and available quantities).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    /// The request answered, as in the `X-Request-Id` answer header. On
    /// every error answer; a replayed `402` repeats the first answer byte
    /// for byte, so it names the request that placed the order (and none
    /// when no request waited for the outcome: the reconciler settled it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// 402 of `POST /v1/orders`: the error and the order, shaped like the
/// invoice with `status: "PAYMENT_FAILED"`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentFailedBody {
    pub error: ErrorDetail,
    pub order: Invoice,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "SmartMart fulfillment engine", version = "1",
         description = "Orders, carts and operations of the SmartMart fulfillment engine. Every error answer is \
                        `{\"error\": {\"code\", \"message\", \"stage\"?, \"details\"?, \"request_id\"}}`; every \
                        answer carries `X-Request-Id` (the client's, 1 to 128 visible ASCII characters, else a \
                        generated one)."),
    components(schemas(ErrorBody, ErrorDetail, PaymentFailedBody)),
    modifiers(&SecuritySchemes)
)]
pub(super) struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["channel_key", "admin_key"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// What an error status stands for, across the API.
fn error_description(status: &str) -> Option<&'static str> {
    Some(match status {
        "400" => {
            "`INVALID_REQUEST`: malformed JSON, a wrong type, a missing or unknown field, or a value outside its \
             documented range"
        }
        "401" => "`UNAUTHENTICATED` (missing or wrong key) or `INVALID_CUSTOMER_TOKEN`",
        "402" => "`PAYMENT_FAILED`",
        "403" => "`CUSTOMER_BLOCKED` or `CUSTOMER_MISMATCH`",
        "404" => "`CUSTOMER_NOT_FOUND`, `ORDER_NOT_FOUND` or `NOT_FOUND`",
        "405" => "`METHOD_NOT_ALLOWED`",
        "409" => "a conflict with the stored state",
        "413" => "`PAYLOAD_TOO_LARGE`: the body is over the configured limit",
        "415" => "`UNSUPPORTED_MEDIA_TYPE`: the body is not `Content-Type: application/json`",
        "422" => "`EMPTY_CART`, `UNKNOWN_SKU`, `INVALID_COUPON` or `QUANTITY_TOO_LARGE`",
        "503" => "`RULE_FAILED` or `DEPENDENCY_UNAVAILABLE`",
        "504" => "`STAGE_TIMEOUT`: a stage or the whole request outlasted its timeout",
        _ => return None,
    })
}

/// Operations that never touch the store (no 503).
const STORELESS: &[&str] =
    &["/healthz", "/openapi.json", "/metrics", "/admin", "/admin/dashboard.js", "/admin/dashboard.css"];

/// Completes the generated document (see the module comment).
pub(super) fn complete(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            if !matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                continue;
            }
            complete_operation(path, operation);
        }
    }
}

/// The request headers every operation takes.
fn tracing_parameters() -> [Value; 2] {
    [
        json!({
            "name": "X-Request-Id", "in": "header", "required": false,
            "description": "names the request in the answer, its log lines and the payment gateway's calls; \
                            1 to 128 visible ASCII characters are kept; anything else is accepted and replaced \
                            by a generated id (never refused, so the schema does not constrain it)",
            "schema": { "type": "string" }
        }),
        json!({
            "name": "traceparent", "in": "header", "required": false,
            "description": "W3C Trace Context (version 00): its trace is continued in the calls to the payment \
                            gateway when it reads `00-<32 hex>-<16 hex>-<2 hex>`; a malformed one is ignored, \
                            never refused",
            "schema": { "type": "string" }
        }),
    ]
}

/// The answer header every response has.
fn request_id_header() -> Value {
    json!({
        "description": "the request's id: the client's `X-Request-Id` when valid, else a generated one \
                        (`req_` and a UUIDv7)",
        "schema": { "type": "string" }
    })
}

fn complete_operation(path: &str, operation: &mut Value) {
    if let Some(object) = operation.as_object_mut() {
        let parameters = object.entry("parameters").or_insert_with(|| json!([]));
        if let Some(parameters) = parameters.as_array_mut() {
            parameters.extend(tracing_parameters());
        }
    }
    let takes_body = operation.get("requestBody").is_some();
    let has_key = operation.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
    let has_path_params =
        operation.get("parameters").and_then(Value::as_array).is_some_and(|ps| ps.iter().any(|p| p["in"] == "path"));
    let responses = operation
        .as_object_mut()
        .expect("an operation is an object")
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    let mut shared: Vec<&str> = vec!["504"];
    if takes_body {
        shared.extend(["400", "413", "415"]);
    }
    if has_path_params {
        shared.push("400");
    }
    if has_key {
        shared.push("401");
    }
    if !STORELESS.contains(&path) {
        shared.push("503");
    }
    for status in shared {
        responses.entry(status).or_insert_with(|| json!({}));
    }
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else { continue };
        let description = response.get("description").and_then(Value::as_str).unwrap_or("");
        if description.is_empty() {
            let text = error_description(status).unwrap_or("the answer");
            response.insert("description".into(), json!(text));
        }
        let headers = response.entry("headers").or_insert_with(|| json!({}));
        if let Some(headers) = headers.as_object_mut() {
            headers.insert("X-Request-Id".into(), request_id_header());
        }
        let is_error = status.starts_with('4') || status.starts_with('5');
        if is_error && response.get("content").is_none() {
            response.insert(
                "content".into(),
                json!({ "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }),
            );
        }
    }
}
