//! The invoice: what a confirmed order answers (and, with status
//! `PAYMENT_FAILED`, what a failed one carries), field for field as
//! docs/api.md shows it.

use serde::{Deserialize, Serialize};

use super::customer::{AccountStatus, Tier};
use super::geo::GeoPoint;
use super::order::{AllocationLine, CartLine};
use super::status::{EventKind, OrderStatus, PaymentStatus, Slot};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invoice {
    pub order_id: String,
    pub status: OrderStatus,
    pub channel: String,
    pub customer: InvoiceCustomer,
    pub items: Vec<InvoiceItem>,
    pub currency: String,
    pub subtotal_cents: u64,
    pub discounts: Vec<InvoiceDiscount>,
    pub discount_cents: u64,
    pub total_cents: u64,
    pub allocations: Vec<InvoiceAllocation>,
    pub payment: InvoicePayment,
    pub events: Vec<EventRef>,
    pub timings_ms: Timings,
    pub created_at: String,
    /// Where the order ships (the customer's own data; never in analytics).
    pub ship_to: GeoPoint,
    /// Coupon code as given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_code: Option<String>,
    /// Rules of fail-open slots that failed and were skipped for this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_rules: Vec<SkippedRule>,
    /// Present once the fraud checks have run (GET only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub fraud_review: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvoiceCustomer {
    pub id: String,
    pub name: String,
    pub tier: Tier,
    pub status: AccountStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvoiceItem {
    pub sku: String,
    pub name: String,
    pub category: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
    pub line_total_cents: u64,
}

impl From<&CartLine> for InvoiceItem {
    fn from(l: &CartLine) -> Self {
        InvoiceItem {
            sku: l.sku.clone(),
            name: l.name.clone(),
            category: l.category.clone(),
            quantity: l.quantity,
            unit_price_cents: l.unit_price_cents,
            line_total_cents: l.total_cents(),
        }
    }
}

impl InvoiceItem {
    pub fn to_cart_line(&self) -> CartLine {
        CartLine {
            sku: self.sku.clone(),
            name: self.name.clone(),
            category: self.category.clone(),
            quantity: self.quantity,
            unit_price_cents: self.unit_price_cents,
        }
    }
}

/// One applied discount, naming the module that granted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvoiceDiscount {
    pub rule: String,
    pub module: String,
    pub version: String,
    pub digest: String,
    /// The experiment arm the rule served as, if it is in an experiment.
    pub variant: Option<String>,
    /// The canary's name when the line was granted by a canary call (a
    /// running canary, for a customer in its share); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    pub description: String,
    pub amount_cents: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvoiceAllocation {
    pub warehouse_id: String,
    pub warehouse_name: String,
    pub distance_km: f64,
    pub lines: Vec<AllocationLine>,
    /// The experiment variant of the warehouse selector, if it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The canary's name when the plan was made by a canary selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvoicePayment {
    pub status: PaymentStatus,
    pub transaction_id: Option<String>,
    pub attempts: u32,
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRef {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub id: String,
    pub status: String,
}

/// Milliseconds spent in each stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    pub validate: f64,
    pub cart: f64,
    pub discount: f64,
    pub inventory: f64,
    pub payment: f64,
    pub total: f64,
}

/// A fail-open rule that failed and was skipped. What the rule said goes to
/// the operators only (`GET /v1/admin/rule-errors`, by `error_id`): the
/// guest's words never reach an invoice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedRule {
    pub slot: Slot,
    pub module: String,
    pub version: String,
    pub digest: String,
    /// The cause's kind, as in a `RULE_FAILED` answer: `trap`,
    /// `time_budget`, `fuel_budget`, `memory_budget`, `output_budget`,
    /// `guest_error` or `instantiate`.
    pub cause: String,
    /// The failure's id in `GET /v1/admin/rule-errors`, where operators
    /// find its full cause. Absent on invoices stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}
