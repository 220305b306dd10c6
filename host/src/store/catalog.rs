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
