//! The one error type of the HTTP edge: every non-2xx answer has the body
//! `{"error": {"code", "message", "stage"?, "details"?, "request_id"}}`, its
//! status taken from the pipeline's error table. `request_id` is the id of
//! the request being answered (see `super::request_id`), written here, where
//! the body is serialised; a body that already names a request (a `402`
//! whose order recorded its own request's id, which its idempotent replays
//! repeat byte for byte) keeps it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::status::ErrorCode;
use crate::pipeline::OrderError;
use crate::pipeline::error::status_of;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The whole body, when the error brings its own (an order's error,
    /// with its stage and details).
    pub body: Option<Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), body: None }
    }

    /// An error whose body carries `details`.
    pub fn with_details(code: ErrorCode, message: impl Into<String>, details: Value) -> ApiError {
        let message = message.into();
        let body = json!({ "error": { "code": code, "message": message, "details": details } });
        ApiError { code, message, body: Some(body) }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unauthenticated() -> ApiError {
        ApiError::new(ErrorCode::Unauthenticated, "a valid `Authorization: Bearer <key>` is required for this endpoint")
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(status_of(self.code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The body, without the request id.
    pub fn to_body(&self) -> Value {
        if let Some(body) = &self.body {
            return body.clone();
        }
        json!({ "error": { "code": self.code, "message": self.message } })
    }

    /// The body as answered: with `error.request_id` when a request is
    /// being answered and the body names none yet.
    pub fn to_answer_body(&self) -> Value {
        let mut body = self.to_body();
        if let Some(request) = super::request_id::current() {
            with_request_id(&mut body, &request.id);
        }
        body
    }
}

/// Adds `error.request_id` to an error body that has none.
pub(crate) fn with_request_id(body: &mut Value, request_id: &str) {
    if let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) {
        error.entry("request_id").or_insert_with(|| Value::from(request_id));
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "request failed");
        }
        (self.status(), axum::Json(self.to_answer_body())).into_response()
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        // A failed rule's cause is the guest's text: the saga put it in the
        // log and the operators' list under an error id, which the body carries.
        let body = e.body();
        ApiError { code: e.code(), message: e.public_message(), body: Some(body) }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::new(ErrorCode::NotFound, format!("{what} not found")),
            StoreError::Conflict(why) => ApiError::new(ErrorCode::Conflict, why),
            other => ApiError::new(ErrorCode::DependencyUnavailable, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::request_id::{RequestContext, scope};
    use super::*;

    #[tokio::test]
    async fn an_error_answered_for_a_request_names_it() {
        let error = || ApiError::new(ErrorCode::NotFound, "no such endpoint");
        assert_eq!(error().to_answer_body(), json!({"error": {"code": "NOT_FOUND", "message": "no such endpoint"}}));
        let context = Arc::new(RequestContext { id: "req-7".into(), trace: None });
        let body = scope(context, async { error().to_answer_body() }).await;
        assert_eq!(body, json!({"error": {"code": "NOT_FOUND", "message": "no such endpoint", "request_id": "req-7"}}));
    }

    #[tokio::test]
    async fn a_body_naming_its_request_keeps_it() {
        let mut stored = json!({"error": {"code": "PAYMENT_FAILED", "message": "m", "request_id": "req-first"}});
        with_request_id(&mut stored, "req-second");
        assert_eq!(stored["error"]["request_id"], "req-first");
    }
}
