//! `PUT|GET /v1/carts/{customer_id}`: a customer's cart, resolved against
//! the catalog.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Channel, customer_token};
use super::error::ApiError;
use super::json::{ApiJson, ApiPath};
use super::validate::{MAX_CART_LINES, MAX_QUANTITY, check_id};
use crate::domain::invoice::InvoiceItem;
use crate::domain::order::CartLine;
use crate::domain::status::ErrorCode;
use crate::pipeline::OrderError;
use crate::store::StoreError;
use crate::store::catalog::CartItem;

/// The body of `PUT /v1/carts/{customer_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartBody {
    /// At most 200 lines; a sku's total quantity over its lines must be at
    /// most 1000000 (422 `QUANTITY_TOO_LARGE` otherwise).
    #[serde(deserialize_with = "super::json::objects")]
    #[schema(max_items = 200)]
    pub items: Vec<CartItemBody>,
}

/// One requested line.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartItemBody {
    /// 1 to 64 letters, digits, `-`, `_` or `.`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    #[serde(deserialize_with = "super::json::integer")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub quantity: u32,
}

/// A resolved cart.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartView {
    pub customer_id: String,
    pub items: Vec<InvoiceItem>,
    pub subtotal_cents: u64,
    pub currency: String,
}

fn view(state: &AppState, customer_id: String, lines: &[CartLine]) -> CartView {
    let items: Vec<InvoiceItem> = lines.iter().map(InvoiceItem::from).collect();
    let subtotal_cents = items.iter().map(|i| i.line_total_cents).fold(0u64, u64::saturating_add);
    CartView { customer_id, items, subtotal_cents, currency: state.engine.settings().currency.clone() }
}

async fn require_customer(state: &AppState, customer_id: &str) -> Result<(), ApiError> {
    let found = state.engine.store().customer(customer_id).await?;
    found.map(|_| ()).ok_or_else(|| OrderError::CustomerNotFound(customer_id.to_string()).into())
}

/// Replace the customer's cart.
#[utoipa::path(put, path = "/v1/carts/{customer_id}", tag = "carts",
    params(("customer_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"),
           ("X-Customer-Token" = String, Header, description = "the customer's identity token (HS256 JWT)")),
    request_body = CartBody,
    responses((status = 200, description = "the cart, priced now", body = CartView), (status = 400), (status = 401),
              (status = 403), (status = 404), (status = 422)),
    security(("channel_key" = [])))]
pub async fn put_cart(
    State(state): State<AppState>,
    _channel: Channel,
    ApiPath(customer_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CartBody>,
) -> Result<Json<CartView>, ApiError> {
    check_id("customer_id", &customer_id)?;
    customer_token(&state, &headers, &customer_id)?;
    if body.items.len() > MAX_CART_LINES {
        return Err(ApiError::invalid(format!("items: at most {MAX_CART_LINES} lines")));
    }
    for (i, item) in body.items.iter().enumerate() {
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(ApiError::invalid(format!("items[{i}].quantity: must be 1..={MAX_QUANTITY}")));
        }
        check_id(&format!("items[{i}].sku"), &item.sku)?;
    }
    check_sku_totals(&body.items)?;
    require_customer(&state, &customer_id).await?;
    let items: Vec<CartItem> =
        body.items.into_iter().map(|item| CartItem { sku: item.sku, quantity: item.quantity }).collect();
    let lines = state.engine.store().replace_cart(&customer_id, items).await.map_err(|e| match e {
        StoreError::NotFound(what) => {
            ApiError::from(OrderError::UnknownSku(what.trim_start_matches("sku ").to_string()))
        }
        StoreError::Constraint(_) => {
            ApiError::invalid(format!("items: a sku's total quantity must be 1..={MAX_QUANTITY}"))
        }
        other => other.into(),
    })?;
    Ok(Json(view(&state, customer_id, &lines)))
}

/// A sku may be on several lines; its total is what an order takes, so it
/// is held to the same limit as one line's quantity. Each line can be
/// valid by the schema while the sum is not, which no JSON Schema can say:
/// a 422 (the request is well formed, its content cannot be taken), never
/// a 400.
fn check_sku_totals(items: &[CartItemBody]) -> Result<(), ApiError> {
    let mut totals: HashMap<&str, u64> = HashMap::with_capacity(items.len());
    for item in items {
        let total = totals.entry(item.sku.as_str()).or_default();
        *total += u64::from(item.quantity);
        if *total > u64::from(MAX_QUANTITY) {
            return Err(ApiError::with_details(
                ErrorCode::QuantityTooLarge,
                format!("items: sku {} totals more than {MAX_QUANTITY} over its lines", item.sku),
                json!({ "sku": item.sku, "max_quantity": MAX_QUANTITY }),
            ));
        }
    }
    Ok(())
}

/// Read the customer's cart, priced now.
#[utoipa::path(get, path = "/v1/carts/{customer_id}", tag = "carts",
    params(("customer_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"),
           ("X-Customer-Token" = String, Header, description = "the customer's identity token (HS256 JWT)")),
    responses((status = 200, description = "the cart, priced now", body = CartView), (status = 400), (status = 401),
              (status = 403), (status = 404), (status = 422)),
    security(("channel_key" = [])))]
pub async fn get_cart(
    State(state): State<AppState>,
    _channel: Channel,
    ApiPath(customer_id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<CartView>, ApiError> {
    check_id("customer_id", &customer_id)?;
    customer_token(&state, &headers, &customer_id)?;
    require_customer(&state, &customer_id).await?;
    let (lines, unknown) = state.engine.store().cart(&customer_id).await?;
    if let Some(sku) = unknown.into_iter().next() {
        return Err(OrderError::UnknownSku(sku).into());
    }
    Ok(Json(view(&state, customer_id, &lines)))
}
