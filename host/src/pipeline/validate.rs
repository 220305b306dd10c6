//! Stage 1: who is ordering. The identity token (HS256 JWT, `sub` = the
//! customer id, `exp` required) must verify and name the customer the
//! order is for; the customer must exist and be ACTIVE.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

use super::OrderError;
use crate::rules::types::AccountStatus;
use crate::store::catalog::Customer;
use crate::store::{Store, StoreError};

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies `token` and returns the customer id it names.
pub fn verify_token(secret: &[u8], token: &str) -> Result<String, OrderError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = 5;
    decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
        .map(|data| data.claims.sub)
        // The library's message says what is wrong (expired, bad signature,
        // malformed) and never echoes the token.
        .map_err(|e| OrderError::InvalidCustomerToken(e.to_string()))
}

/// Checks the token against `customer_id`, then loads the customer.
pub async fn validate(store: &Store, secret: &[u8], customer_id: &str, token: &str) -> Result<Customer, OrderError> {
    let subject = verify_token(secret, token)?;
    if subject != customer_id {
        return Err(OrderError::CustomerMismatch);
    }
    let customer = store
        .customer(customer_id)
        .await
        .map_err(|e| unavailable(super::Stage::Validate, e))?
        .ok_or_else(|| OrderError::CustomerNotFound(customer_id.to_string()))?;
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
    let now = crate::store::now_ms() as u64 / 1000;
    let claims = Claims { sub: customer_id, exp: now + ttl.as_secs(), iat: now };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}
