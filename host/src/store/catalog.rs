//! Customers, products, warehouses, stock and carts: the records both
//! back-ends read and write (`store::sqlite::catalog`,
//! `store::postgres::catalog`), and the parsing of the stored tier and
//! account status.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::customer::{AccountStatus, Tier};
use crate::domain::geo::GeoPoint;

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub category: String,
    pub unit_price_cents: u64,
}

/// A warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Warehouse {
    pub id: String,
    pub name: String,
    pub location: GeoPoint,
}

/// Stock of one sku in one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StockLevel {
    pub warehouse_id: String,
    pub warehouse_name: String,
    pub sku: String,
    pub on_hand: u64,
    pub available: u64,
}

/// One requested cart item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartItem {
    pub sku: String,
    pub quantity: u32,
}

/// A warehouse holding some of the requested skus, with their availability.
#[derive(Debug, Clone, PartialEq)]
pub struct StockedWarehouse {
    pub warehouse: Warehouse,
    pub available: Vec<(String, u32)>,
}

/// What an order reads before it writes anything, in one read: its
/// customer, its cart priced now (and the skus no longer in the catalog),
/// the warehouses holding the cart's skus with their availability, and
/// whether its idempotency key was used already.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderSnapshot {
    pub customer: Option<crate::domain::customer::Customer>,
    pub cart: Vec<crate::domain::order::CartLine>,
    pub unknown_skus: Vec<String>,
    pub stocked: Vec<StockedWarehouse>,
    /// Whether the request's idempotency key (if it has one) was used by
    /// an earlier request: the order then stops before it writes anything.
    pub key_used: bool,
}

impl OrderSnapshot {
    /// The distinct skus of the cart, in cart order (what `stocked` covers).
    pub fn skus(&self) -> Vec<&str> {
        let mut skus: Vec<&str> = Vec::with_capacity(self.cart.len());
        for line in &self.cart {
            if !skus.contains(&line.sku.as_str()) {
                skus.push(&line.sku);
            }
        }
        skus
    }
}

pub(super) fn parse_tier(s: &str) -> Result<Tier, StoreError> {
    match s {
        "GOLD" => Ok(Tier::Gold),
        "SILVER" => Ok(Tier::Silver),
        "STANDARD" => Ok(Tier::Standard),
        other => Err(StoreError::Corrupt(format!("unknown tier {other}"))),
    }
}

pub(super) fn parse_status(s: &str) -> Result<AccountStatus, StoreError> {
    match s {
        "ACTIVE" => Ok(AccountStatus::Active),
        "BLOCKED" => Ok(AccountStatus::Blocked),
        other => Err(StoreError::Corrupt(format!("unknown status {other}"))),
    }
}
