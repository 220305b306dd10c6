//! The one error type of the HTTP edge: every non-2xx answer has the body
//! `{"error": {"code", "message", "stage"?, "details"?}}`, its status taken
//! from the pipeline's error table.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::status::ErrorCode;
use crate::pipeline::OrderError;
use crate::pipeline::error::status_of;
use crate::pipeline::rule_errors;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub body: Option<Value>,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), body: None, details: None }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
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

    pub fn to_body(&self) -> Value {
        if let Some(body) = &self.body {
            return body.clone();
        }
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = &self.details {
            error["details"] = details.clone();
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "request failed");
        }
        (self.status(), axum::Json(self.to_body())).into_response()
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        let mut body = e.body();
        // A failed rule's cause is the guest's text: it goes to the log and
        // the operators' list under an error id, and the client gets the id.
        if let OrderError::RuleFailed { slot, module, cause } = &e {
            let error_id = rule_errors::record(slot, module, cause, rule_errors::Handling::RuleFailed);
            body["error"]["details"]["error_id"] = json!(error_id);
        }
        ApiError { code: e.code(), message: e.public_message(), body: Some(body), details: None }
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
