//! `POST /v1/orders` and `GET /v1/orders/{order_id}`.
//!
//! Idempotency: with an `Idempotency-Key`, the key (per channel) is claimed
//! when the order is created, and the answer of an order that recorded
//! something (201, 402) is stored with it when the order settles; the same
//! key and body replay it byte for byte, another body is 409. Concurrent
//! requests with one key wait for each other (a lock per key), so they
//! create one order; a key whose order a crash interrupted answers 409
//! `IDEMPOTENCY_IN_PROGRESS` (with `Retry-After`) until reconciliation has
//! finished the order, then its final answer. The claim is unique in the
//! database, so two processes racing on one key still create one order.
//!
//! A `402`'s body names the request that placed the order
//! (`error.request_id`) and is stored as is: a replay repeats it byte for
//! byte, the first request's id included, while its `X-Request-Id` header
//! is the replay's own. Only fresh error answers name the current request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Channel, raw_customer_token};
use super::error::ApiError;
use super::json::{ApiPath, RawJson};
use super::validate::{MAX_IDEMPOTENCY_KEY, check_id, check_location};
use crate::domain::geo::GeoPoint;
use crate::domain::invoice::Invoice;
use crate::domain::status::{ErrorCode, OrderStatus};
use crate::pipeline::{OrderError, OrderRequest};
use crate::store::orders::KeyRecord;

/// The body of `POST /v1/orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    /// 1 to 64 letters, digits, `-`, `_` or `.`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub customer_id: String,
    /// Case-insensitive; at most 64 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub coupon_code: Option<String>,
    #[serde(deserialize_with = "super::json::object")]
    pub payment: PaymentBody,
    #[serde(default, deserialize_with = "super::json::optional_object")]
    pub ship_to: Option<GeoPoint>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    /// Payment token for the gateway (never logged; kept only while its payment is in flight),
    /// 1 to 255 characters.
    #[schema(min_length = 1, max_length = 255)]
    pub token: String,
}

/// One lock per (channel, key) in use, so that concurrent requests with one
/// key run one after the other.
#[derive(Default)]
pub struct KeyLocks(Mutex<HashMap<ChannelKey, KeyLock>>);

/// (channel, Idempotency-Key).
type ChannelKey = (String, String);
type KeyLock = Arc<tokio::sync::Mutex<()>>;

impl KeyLocks {
    fn lock_for(&self, channel: &str, key: &str) -> KeyLock {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Drop locks nobody holds any more, so the map stays small.
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry((channel.to_string(), key.to_string())).or_default().clone()
    }
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| ApiError::invalid("Idempotency-Key: must be visible ASCII"))?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(format!("Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")));
    }
    Ok(Some(key.to_string()))
}

/// Place an order from the customer's cart.
#[utoipa::path(post, path = "/v1/orders", tag = "orders",
    params(("X-Customer-Token" = String, Header, description = "the customer's identity token (HS256 JWT)"),
           ("Idempotency-Key" = Option<String>, Header, pattern = "^[\\x21-\\x7e]{1,255}$",
            description = "1 to 255 visible ASCII characters; scoped to the channel; remembered 24 hours (by \
                default) from the later of the first request and the order's final answer, then forgotten")),
    request_body = OrderBody,
    responses((status = 201, description = "the invoice", body = Invoice),
              (status = 202, description = "the order as an invoice with `status: PAYMENT_PENDING`: the gateway has not \
                said whether it captured; stock stays held and the service finds the outcome itself. \
                `GET /v1/orders/{order_id}`, or the same request with the same `Idempotency-Key`, gives the final answer",
               body = Invoice),
              (status = 402, description = "`PAYMENT_FAILED`: the error and the order (`status: PAYMENT_FAILED`)",
               body = super::openapi::PaymentFailedBody),
              (status = 400), (status = 401), (status = 403), (status = 404),
              (status = 409, description = "`OUT_OF_STOCK`, `IDEMPOTENCY_KEY_REUSED`, or `IDEMPOTENCY_IN_PROGRESS`: \
                the same key and body while the first request's order is being recovered after a crash; \
                ask again after `Retry-After`",
               body = super::openapi::ErrorBody,
               headers(("Retry-After" = Option<u32>, description = "with `IDEMPOTENCY_IN_PROGRESS`: seconds to wait before asking again"))),
              (status = 413),
              (status = 422), (status = 503), (status = 504)),
    security(("channel_key" = [])))]
pub async fn post_order(
    State(state): State<AppState>,
    Channel(channel): Channel,
    headers: HeaderMap,
    body: RawJson<OrderBody>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let order = body.value;
    check_id("customer_id", &order.customer_id)?;
    if let Some(p) = &order.ship_to {
        check_location("ship_to", p)?;
    }
    // Lengths in characters, as the OpenAPI schema counts them.
    if let Some(code) = &order.coupon_code
        && (code.chars().count() > 64 || code.chars().any(char::is_control))
    {
        return Err(ApiError::invalid("coupon_code: at most 64 characters, no control characters"));
    }
    if order.payment.token.is_empty() || order.payment.token.chars().count() > 255 {
        return Err(ApiError::invalid("payment.token: 1 to 255 characters"));
    }
    let token = raw_customer_token(&headers)?;
    // Only a request with a key is ever compared with another: without
    // one, the body is not hashed.
    let hash = if key.is_some() { hex::encode(Sha256::digest(&body.bytes)) } else { String::new() };

    // Requests with one key in this process run one after the other, so a
    // retry racing the first request waits for its answer. Whether the key
    // was used is read with the order's snapshot (no round trip of its
    // own): a used key ends the order before anything is written, as
    // `IdempotencyInProgress`, and is answered below from its record.
    let _guard = match &key {
        Some(key) => Some(state.key_locks.lock_for(&channel, key).lock_owned().await),
        None => None,
    };
    let waiting_key = key.clone();

    let channel_of_key = channel.clone();
    let context = super::request_id::current();
    let request = OrderRequest {
        channel,
        customer_id: order.customer_id,
        customer_token: token,
        coupon_code: order.coupon_code,
        payment_token: order.payment.token,
        ship_to: order.ship_to,
        idempotency: key.map(|k| (k, hash.clone())),
        request_id: context.as_ref().map(|c| c.id.clone()),
        traceparent: context.as_ref().and_then(|c| c.outgoing_traceparent()),
    };
    // The order runs in its own task: a client that goes away (or the
    // request timeout) cannot cancel it half-way. It stays in the request's
    // span, so that its log lines name the request.
    let pipeline = state.engine.pipeline().clone();
    let span = tracing::Span::current();
    let outcome =
        tokio::spawn(tracing::Instrument::instrument(async move { pipeline.place_order(request).await }, span))
            .await
            .map_err(|e| ApiError::new(ErrorCode::DependencyUnavailable, format!("order task failed: {e}")))?;
    // The same bytes as the stored invoice and the stored idempotent answer.
    Ok(match outcome {
        Ok(placed) => json_response(placed.status_code(), placed.json),
        Err(e @ OrderError::PaymentFailed { .. }) => json_response(402, e.body().to_string()),
        // Another replica claimed the key between the check above and this order's first write.
        Err(OrderError::IdempotencyInProgress) => match &waiting_key {
            Some(key) => answer_for_used_key(&state, &channel_of_key, key, &hash).await?,
            None => in_progress(),
        },
        Err(e) => ApiError::from(e).into_response(),
    })
}

/// How long a request waits for another replica to finish the order of its
/// idempotency key before it is answered `IDEMPOTENCY_IN_PROGRESS`: longer
/// than an order takes, shorter than the request timeout.
const SHARED_KEY_WAIT: Duration = Duration::from_secs(8);
const SHARED_KEY_POLL: Duration = Duration::from_millis(20);

/// The answer for a key an earlier request used: that request's stored
/// answer if the body is the same, 409 `IDEMPOTENCY_KEY_REUSED` if not, and
/// for an order still unfinished see [`answer_when_done`].
async fn answer_for_used_key(state: &AppState, channel: &str, key: &str, hash: &str) -> Result<Response, ApiError> {
    match state.engine.store().key_record(channel, key).await? {
        Some(KeyRecord::Answered { request_hash, .. } | KeyRecord::InFlight { request_hash, .. })
            if request_hash != hash =>
        {
            Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request body",
            ))
        }
        Some(KeyRecord::Answered { answer, .. }) => Ok(json_response(answer.status_code, answer.body)),
        Some(KeyRecord::InFlight { .. }) => answer_when_done(state, channel, key, hash).await,
        // Freed since: the other request was undone (refused before payment).
        None => Ok(in_progress()),
    }
}

/// The answer for a key whose order is not finished and not running in this
/// process. On SQLite this process is the only writer, so that order was
/// interrupted by a crash: 409 `IDEMPOTENCY_IN_PROGRESS` until recovery
/// settles it. On a shared database it may be running on another replica:
/// wait for its answer (the same bytes that replica gave), so that a client
/// sending one key to two replicas gets one order and two identical answers.
async fn answer_when_done(state: &AppState, channel: &str, key: &str, hash: &str) -> Result<Response, ApiError> {
    let store = state.engine.store();
    if !store.is_shared() {
        return Ok(in_progress());
    }
    let deadline = tokio::time::Instant::now() + SHARED_KEY_WAIT;
    while tokio::time::Instant::now() < deadline {
        match store.key_record(channel, key).await? {
            Some(KeyRecord::Answered { request_hash, .. } | KeyRecord::InFlight { request_hash, .. })
                if request_hash != hash =>
            {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyKeyReused,
                    "this Idempotency-Key was used with a different request body",
                ));
            }
            Some(KeyRecord::Answered { answer, .. }) => return Ok(json_response(answer.status_code, answer.body)),
            // Freed: the other request was undone (refused before payment); its answer was not stored.
            None => return Ok(in_progress()),
            Some(KeyRecord::InFlight { .. }) => tokio::time::sleep(SHARED_KEY_POLL).await,
        }
    }
    Ok(in_progress())
}

/// Seconds a client should wait before asking again about an order in recovery.
const RETRY_AFTER_SECONDS: u64 = 5;

/// 409 `IDEMPOTENCY_IN_PROGRESS` with `Retry-After`.
fn in_progress() -> Response {
    let mut response = ApiError::from(OrderError::IdempotencyInProgress).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// Read a placed order (with its fraud review once the checks have run).
#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path), ("X-Customer-Token" = String, Header, description = "the customer's identity token (HS256 JWT)")),
    responses((status = 200, description = "the stored invoice, `PAYMENT_FAILED` order or `PAYMENT_PENDING` order, with `fraud_review` once the checks have run",
               body = Invoice),
              (status = 401), (status = 403), (status = 404)),
    security(("channel_key" = [])))]
pub async fn get_order(
    State(state): State<AppState>,
    _channel: Channel,
    ApiPath(order_id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let not_found = || ApiError::new(ErrorCode::OrderNotFound, format!("order {order_id} not found"));
    check_id("order_id", &order_id).map_err(|_| not_found())?;
    // Verify the token first: an unauthenticated caller learns nothing.
    let token = raw_customer_token(&headers)?;
    let subject = crate::pipeline::validate::verify_token(
        state.credentials.identity_secret.as_bytes(),
        &token,
        state.engine.settings().max_token_lifetime,
    )?;
    let stored = state.engine.store().order(&order_id).await?.ok_or_else(not_found)?;
    if !matches!(stored.status, OrderStatus::Confirmed | OrderStatus::PaymentFailed | OrderStatus::Pending) {
        return Err(not_found());
    }
    if subject != stored.customer_id {
        return Err(OrderError::CustomerMismatch.into());
    }
    let text = stored.invoice.ok_or_else(not_found)?;
    let mut invoice: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ApiError::new(ErrorCode::DependencyUnavailable, format!("stored invoice unreadable: {e}")))?;
    // A PENDING row is an order still running (its draft is not an answer)
    // unless it was answered PAYMENT_PENDING: then that answer is its state.
    if stored.status == OrderStatus::Pending && invoice["status"] != OrderStatus::PaymentPending.as_str() {
        return Err(not_found());
    }
    if let Some(review) = stored.fraud_review {
        invoice["fraud_review"] = review;
    }
    Ok(Json(invoice))
}
