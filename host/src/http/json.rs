//! Request bodies and path parameters: extraction whose every rejection is
//! an API error (400 naming the field, 413, 415) instead of axum's
//! plain-text answers.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `axum::Json`, with the API's error bodies.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match &rejection {
                JsonRejection::MissingJsonContentType(_) => {
                    ApiError::new("UNSUPPORTED_MEDIA_TYPE", "expected `Content-Type: application/json`")
                }
                JsonRejection::BytesRejection(_) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::new("PAYLOAD_TOO_LARGE", "the request body is larger than the configured limit")
                }
                // serde's message names the field path (e.g. `items[0].quantity`).
                _ => ApiError::invalid(rejection.body_text()),
            }),
        }
    }
}

/// A JSON body together with its raw bytes (for idempotency hashing).
pub struct RawJson<T> {
    pub value: T,
    pub bytes: axum::body::Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for RawJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type =
            req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json_type {
            return Err(ApiError::new("UNSUPPORTED_MEDIA_TYPE", "expected `Content-Type: application/json`"));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new("PAYLOAD_TOO_LARGE", "the request body is larger than the configured limit")
            } else {
                ApiError::invalid(rejection.body_text())
            }
        })?;
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| ApiError::invalid(format!("{}: {}", e.path(), e.inner())))?;
        Ok(RawJson { value, bytes })
    }
}

/// `axum::extract::Path`, with the API's error body: a parameter that is not
/// UTF-8 once percent-decoded (`/v1/carts/%FF`) is 400 `INVALID_REQUEST`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::invalid(format!("path: {}", rejection.body_text())))
    }
}
