//! Checks on request values that serde's types cannot express.

use super::error::ApiError;
use crate::domain::geo::GeoPoint;

/// Largest quantity of one cart line (docs/api.md).
pub const MAX_QUANTITY: u32 = 1_000_000;
/// Most lines one cart may have.
pub const MAX_CART_LINES: usize = 200;
/// Longest idempotency key (docs/api.md).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Largest amount the store takes, in cents (fits SQLite's signed 64 bits with room for sums).
pub const MAX_PRICE_CENTS: u64 = 1_000_000_000_000;

/// Ids and skus: 1..=64 characters of letters, digits, `-`, `_`, `.`.
pub fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&value.len())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(ApiError::invalid(format!("{field}: 1 to 64 letters, digits, '-', '_' or '.'"))) }
}

/// Free text such as names: 1..=200 characters, no control characters.
pub fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.trim().is_empty() && value.chars().count() <= 200 && !value.chars().any(char::is_control);
    if ok { Ok(()) } else { Err(ApiError::invalid(format!("{field}: 1 to 200 characters, no control characters"))) }
}

pub fn check_location(field: &str, p: &GeoPoint) -> Result<(), ApiError> {
    if !(-90.0..=90.0).contains(&p.lat) {
        return Err(ApiError::invalid(format!("{field}.lat: must be -90..=90")));
    }
    if !(-180.0..=180.0).contains(&p.lon) {
        return Err(ApiError::invalid(format!("{field}.lon: must be -180..=180")));
    }
    Ok(())
}
