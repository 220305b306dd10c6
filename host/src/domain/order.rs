//! What an order is made of: the priced cart lines, the discounts granted on
//! them, and the warehouses that ship them.

use serde::{Deserialize, Serialize};

/// One cart line priced at order time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartLine {
    pub sku: String,
    pub name: String,
    pub category: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

impl CartLine {
    /// Quantity × unit price; saturating, the cart stage bounds both factors.
    pub fn total_cents(&self) -> u64 {
        u64::from(self.quantity).saturating_mul(self.unit_price_cents)
    }
}

/// One discount a rule grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscountLine {
    pub rule: String,
    pub description: String,
    pub amount_cents: u64,
    pub reasons: Vec<String>,
}

// Units of one sku taken from one warehouse: in a rule's plan and on the
// invoice alike. A plain comment, not a doc comment: utoipa would make it
// the OpenAPI schema's description, which the invoice's copy never had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AllocationLine {
    pub sku: String,
    pub quantity: u32,
}

/// What one warehouse ships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub warehouse_id: String,
    pub lines: Vec<AllocationLine>,
}
