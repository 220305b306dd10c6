//! Stage 2: the customer's cart, priced at order time from the catalog
//! (read with the customer, in the order's snapshot).

use super::OrderError;
use crate::domain::order::CartLine;

/// The priced cart lines and their subtotal.
pub struct PricedCart {
    pub lines: Vec<CartLine>,
    pub subtotal_cents: u64,
}

/// Checks the cart as read (`unknown`: its skus no longer in the catalog) and totals it.
pub fn price(lines: Vec<CartLine>, unknown: Vec<String>) -> Result<PricedCart, OrderError> {
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
