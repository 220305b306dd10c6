//! The one error type of the HTTP edge: every non-2xx answer has the body
//! `{"error": {"code", "message", "stage"?, "details"?}}`, its status taken
//! from the pipeline's error table.

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
        json!({ "error": { "code": self.code, "message": self.message } })
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
