//! Stage 1: who is ordering. The identity token (HS256 JWT, `sub` = the
//! customer id, `exp` required) must verify and name the customer the
//! order is for; the customer must exist and be ACTIVE.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

use super::OrderError;
use crate::domain::customer::{AccountStatus, Customer};
use crate::store::StoreError;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Verifies `token` and returns the customer id it names. A token whose
/// `exp` lies more than `max_lifetime` ahead is refused: a leaked
/// long-lived token would otherwise be good for years.
pub fn verify_token(secret: &[u8], token: &str, max_lifetime: std::time::Duration) -> Result<String, OrderError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = 5;
    let claims = decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
        // The library's message says what is wrong (expired, bad signature,
        // malformed) and never echoes the token.
        .map_err(|e| OrderError::InvalidCustomerToken(e.to_string()))?
        .claims;
    let now = crate::clock::now_ms().max(0) as u64 / 1000;
    if claims.exp.saturating_sub(now) > max_lifetime.as_secs() {
        return Err(OrderError::InvalidCustomerToken(format!(
            "token lifetime too long: it expires more than the allowed {} s from now",
            max_lifetime.as_secs()
        )));
    }
    Ok(claims.sub)
}

/// Checks the token against `customer_id`: the first half of the stage,
/// before anything is read.
pub fn check_token(
    secret: &[u8],
    max_token_lifetime: std::time::Duration,
    customer_id: &str,
    token: &str,
) -> Result<(), OrderError> {
    let subject = verify_token(secret, token, max_token_lifetime)?;
    if subject != customer_id {
        return Err(OrderError::CustomerMismatch);
    }
    Ok(())
}

/// The second half: the customer the order's snapshot read must exist and be ACTIVE.
pub fn check_customer(customer_id: &str, found: Option<Customer>) -> Result<Customer, OrderError> {
    let customer = found.ok_or_else(|| OrderError::CustomerNotFound(customer_id.to_string()))?;
    if customer.status == AccountStatus::Blocked {
        return Err(OrderError::CustomerBlocked(customer.id));
    }
    Ok(customer)
}

pub(super) fn unavailable(stage: super::Stage, e: StoreError) -> OrderError {
    OrderError::DependencyUnavailable { stage, message: e.to_string() }
}

/// Signs an identity token for `customer_id` valid for `ttl` (for the demo,
/// operations tooling and tests; production tokens come from the identity
/// provider that shares the secret).
pub fn mint_token(secret: &[u8], customer_id: &str, ttl: std::time::Duration) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        iat: u64,
    }
    let now = crate::clock::now_ms() as u64 / 1000;
    let claims = Claims { sub: customer_id, exp: now + ttl.as_secs(), iat: now };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}
