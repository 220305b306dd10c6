//! The host's own view of what rules receive and return.
//!
//! The rest of the host speaks these types; `bindings` converts them to and
//! from the WIT-generated ones at the sandbox's edge. They are also the JSON
//! format of `smartmart rules run --input` (see `examples/orders/`).

use serde::{Deserialize, Serialize};

/// Loyalty tier of a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Tier {
    Gold,
    Silver,
    Standard,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gold => "GOLD",
            Tier::Silver => "SILVER",
            Tier::Standard => "STANDARD",
        }
    }
}

/// Account status of a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountStatus {
    Active,
    Blocked,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "ACTIVE",
            AccountStatus::Blocked => "BLOCKED",
        }
    }
}

/// The customer as rules see it: no name, email, phone or address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCustomer {
    pub id: String,
    pub tier: Tier,
    pub status: AccountStatus,
}

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

/// A point on Earth in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoPoint {
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
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

/// One discount a rule grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscountLine {
    pub rule: String,
    pub description: String,
    pub amount_cents: u64,
    pub reasons: Vec<String>,
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

/// Units of one sku taken from one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
