//! Who is calling: a sales channel, an operator, and for customer calls the
//! customer's identity token. Keys are compared in constant time and never
//! echoed or logged.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::pipeline::OrderError;
use crate::pipeline::validate::verify_token;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A request authenticated by a channel key.
#[derive(Debug, Clone)]
pub struct Channel(pub String);

impl FromRequestParts<AppState> for Channel {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(ApiError::unauthenticated)?;
        // Check every key, so timing does not tell which channel nearly matched.
        let mut found = None;
        for (channel, key) in &state.credentials.channel_keys {
            if same(token, key) {
                found = Some(channel.clone());
            }
        }
        found.map(Channel).ok_or_else(ApiError::unauthenticated)
    }
}

/// A request authenticated by the admin key (channel keys are refused).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(ApiError::unauthenticated)?;
        if same(token, &state.credentials.admin_key) { Ok(Admin) } else { Err(ApiError::unauthenticated()) }
    }
}

/// The raw `X-Customer-Token` header (verified against a customer by `customer_token`).
pub fn raw_customer_token(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get("x-customer-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| ApiError::from(OrderError::InvalidCustomerToken("missing X-Customer-Token header".into())))
}

/// Verifies the customer token and that it names `customer_id`.
pub fn customer_token(state: &AppState, headers: &HeaderMap, customer_id: &str) -> Result<String, ApiError> {
    let token = raw_customer_token(headers)?;
    let subject =
        verify_token(state.credentials.identity_secret.as_bytes(), &token, state.engine.settings().max_token_lifetime)?;
    if subject != customer_id {
        return Err(OrderError::CustomerMismatch.into());
    }
    Ok(token)
}
