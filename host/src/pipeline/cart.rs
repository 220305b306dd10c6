//! Stage 2: the customer's cart, priced at order time from the catalog.

use super::validate::unavailable;
use super::{OrderError, Stage};
use crate::domain::order::CartLine;
use crate::store::Store;

/// The priced cart lines and their subtotal.
pub struct PricedCart {
    pub lines: Vec<CartLine>,
    pub subtotal_cents: u64,
}

pub async fn fetch_cart(store: &Store, customer_id: &str) -> Result<PricedCart, OrderError> {
    let (lines, unknown) = store.cart(customer_id).await.map_err(|e| unavailable(Stage::Cart, e))?;
    if let Some(sku) = unknown.into_iter().next() {
        return Err(OrderError::UnknownSku(sku));
    }
    if lines.is_empty() {
        return Err(OrderError::EmptyCart);
    }
    let subtotal_cents = lines
        .iter()
        .try_fold(0u64, |sum, line| {
            u64::from(line.quantity).checked_mul(line.unit_price_cents).and_then(|t| sum.checked_add(t))
        })
        .filter(|total| *total <= i64::MAX as u64)
        .ok_or_else(|| OrderError::InvalidRequest("the cart's total does not fit in 63 bits of cents".into()))?;
    Ok(PricedCart { lines, subtotal_cents })
}
