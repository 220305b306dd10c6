//! Request bodies and path parameters: extraction whose every rejection is
//! an API error (400 naming the field, 413, 415) instead of axum's
//! plain-text answers.

use std::marker::PhantomData;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};

use super::error::ApiError;
use crate::domain::status::ErrorCode;

/// A JSON body (a JSON object), with the API's error bodies.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        RawJson::from_request(req, state).await.map(|raw| ApiJson(raw.value))
    }
}

/// A JSON body together with its raw bytes (for idempotency hashing).
pub struct RawJson<T> {
    pub value: T,
    pub bytes: axum::body::Bytes,
}

/// `application/json`, or a `+json` type of it (as `axum::Json` accepts).
fn is_json_content_type(req: &Request) -> bool {
    let Some(value) = req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for RawJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(&req) {
            return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "expected `Content-Type: application/json`"));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the request body is larger than the configured limit")
            } else {
                ApiError::invalid(rejection.body_text())
            }
        })?;
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        // The body itself must be an object too, not an array of the fields.
        let Object(value) = serde_path_to_error::deserialize(&mut *deserializer).map_err(|e| {
            // serde's message names the field path (e.g. `items[0].quantity`).
            let path = e.path().to_string();
            let path = if path == "." { "body".to_string() } else { path };
            ApiError::invalid(format!("{path}: {}", e.inner()))
        })?;
        // Nothing may follow the value but whitespace.
        deserializer.end().map_err(|e| ApiError::invalid(format!("body: {e}")))?;
        Ok(RawJson { value, bytes })
    }
}

// ---------------------------------------------------------------------------
// Exact JSON types. serde's derived `Deserialize` of a struct also accepts a
// JSON array of its fields in order (`"ship_to": [12.97, 77.59]`), and that
// of an enum also accepts `{"GOLD": null}` for `"GOLD"`. The API documents
// objects and strings, so request bodies use these instead:
// `#[serde(deserialize_with = "…")]` on their struct and enum fields.
// ---------------------------------------------------------------------------

/// A value that deserialises only from a JSON object.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        object(deserializer).map(Object)
    }
}

/// A struct field that must be a JSON object.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    struct ObjectVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// An optional field that, when present and not null, must be a JSON object.
pub fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    Option::<Object<T>>::deserialize(deserializer).map(|o| o.map(|Object(value)| value))
}

/// An array of JSON objects.
pub fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Vec::<Object<T>>::deserialize(deserializer).map(|v| v.into_iter().map(|Object(value)| value).collect())
}

/// An enum of unit variants that must be a JSON string.
pub fn string_enum<'de, D: Deserializer<'de>, T: DeserializeOwned>(deserializer: D) -> Result<T, D::Error> {
    let text = String::deserialize(deserializer)?;
    T::deserialize(serde::de::value::StringDeserializer::<D::Error>::new(text))
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

/// A non-negative integer field. JSON has one number type and JSON Schema
/// counts `5.0` as the integer 5, so an integral number written with a
/// fraction or exponent is taken; `5.5`, negative numbers and anything
/// larger than `T` holds are refused.
pub fn integer<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<T, D::Error> {
    use serde::de::{Error, Unexpected};
    struct IntegerVisitor;
    impl<'de> Visitor<'de> for IntegerVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is exactly representable; everything below it that is integral converts exactly.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }
    let value = deserializer.deserialize_any(IntegerVisitor)?;
    T::try_from(value).map_err(|_| {
        D::Error::invalid_value(Unexpected::Unsigned(value), &"an integer within the field's documented range")
    })
}
