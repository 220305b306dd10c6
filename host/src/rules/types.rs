//! The host's own view of what rules receive and return.
//!
//! The rest of the host speaks these types; `bindings` converts them to and
//! from the WIT-generated ones at the sandbox's edge. They are also the JSON
//! format of `smartmart rules run --input` (see `examples/orders/`). What is
//! not specific to rules (customers, cart lines, discounts, allocations) is
//! the domain's (`crate::domain`); these types are built from it.

use serde::{Deserialize, Serialize};

use crate::domain::customer::{AccountStatus, Tier};
use crate::domain::geo::GeoPoint;
use crate::domain::order::{Allocation, CartLine};

/// The customer as rules see it: no name, email, phone or address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCustomer {
    pub id: String,
    pub tier: Tier,
    pub status: AccountStatus,
}

/// Everything a rule may base its decision on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderContext {
    pub order_id: String,
    pub channel: String,
    pub currency: String,
    pub customer: RuleCustomer,
    pub lines: Vec<CartLine>,
    pub subtotal_cents: u64,
    pub payable_cents: u64,
    #[serde(default)]
    pub coupon_code: Option<String>,
    pub ship_to: GeoPoint,
    pub ordered_at_ms: i64,
}

/// Units of one sku a warehouse can still promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockLevel {
    pub sku: String,
    pub available: u32,
}

/// A warehouse offered to the warehouse selector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub location: GeoPoint,
    pub stock: Vec<StockLevel>,
}

/// The warehouse selector's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub allocations: Vec<Allocation>,
    pub reasons: Vec<String>,
}

/// The line no plan can cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    pub sku: String,
    pub requested: u32,
    pub available: u32,
    pub reason: String,
}

/// What happened at payment, as fraud checks see it (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSummary {
    pub status: String,
    pub amount_cents: u64,
    pub attempts: u32,
    pub gateway: String,
}

/// A fraud check's recommended action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FraudAction {
    Allow,
    Review,
    Escalate,
}

impl FraudAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FraudAction::Allow => "ALLOW",
            FraudAction::Review => "REVIEW",
            FraudAction::Escalate => "ESCALATE",
        }
    }
}

/// A fraud check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub action: FraudAction,
    pub score: u8,
    pub flags: Vec<String>,
    pub reasons: Vec<String>,
}

/// What a module says about itself (`meta.info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    pub version: String,
    pub description: String,
}

/// A rule's typed "no": the customer's or the stock's fault, not the rule's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// The coupon code is unknown or not applicable.
    InvalidCoupon { message: String },
    /// No plan can cover the order.
    CannotFulfil(Shortfall),
}
