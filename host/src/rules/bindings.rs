//! The only place that generates bindings from `wit/`, and the conversions
//! between the WIT-generated types and the host's own (`rules::types` and
//! the `domain` types they are made of).
//!
//! The conversions out of the guest are the sandbox's edge for text: every
//! string a rule returns is escaped and bounded here ([`super::text`]), so
//! that invoices, events, fraud reviews, logs and error lists downstream
//! only ever see clean text. Rule text (descriptions, reasons, flags,
//! refusal messages, ids) is cut at [`text::MAX_RULE_TEXT_CHARS`]; a rule's
//! failure message, which only reaches logs, at [`text::MAX_FAILURE_TEXT_CHARS`].
//!
//! One `bindgen!` per world; the second and third reuse the first one's
//! imported interfaces (`with:`) so that `log`, `config` and the shared
//! `types` have exactly one Rust definition and one host implementation.

use super::budgets::OutputCharge;
use super::text;
use super::types as host;
use crate::domain::{customer, geo, order};

/// Rule text for the host: escaped, bounded.
fn clean(s: String) -> String {
    text::rule_text(&s)
}

fn clean_all(items: Vec<String>) -> Vec<String> {
    items.iter().map(|s| text::rule_text(s)).collect()
}

/// A rule's failure message, for logs: escaped, bounded.
fn failure(s: &str) -> String {
    text::failure_text(s)
}

pub(crate) mod discount_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "discount-rule",
    });
}

pub(crate) mod warehouse_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "warehouse-selector",
        with: {
            "smartmart:rules/types": super::discount_world::smartmart::rules::types,
            "smartmart:rules/log": super::discount_world::smartmart::rules::log,
            "smartmart:rules/config": super::discount_world::smartmart::rules::config,
        },
    });
}

pub(crate) mod fraud_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "fraud-check",
        with: {
            "smartmart:rules/types": super::discount_world::smartmart::rules::types,
            "smartmart:rules/log": super::discount_world::smartmart::rules::log,
            "smartmart:rules/config": super::discount_world::smartmart::rules::config,
        },
    });
}

pub(crate) use discount_world::DiscountRulePre;
pub(crate) use discount_world::smartmart::rules::{config, log, types as wit};
pub(crate) use fraud_world::FraudCheckPre;
pub(crate) use warehouse_world::WarehouseSelectorPre;

use discount_world::exports::smartmart::rules::discount as wit_discount;
use fraud_world::exports::smartmart::rules::fraud as wit_fraud;
use warehouse_world::exports::smartmart::rules::warehouse as wit_warehouse;

impl From<customer::Tier> for wit::Tier {
    fn from(tier: customer::Tier) -> Self {
        match tier {
            customer::Tier::Gold => wit::Tier::Gold,
            customer::Tier::Silver => wit::Tier::Silver,
            customer::Tier::Standard => wit::Tier::Standard,
        }
    }
}

impl From<customer::AccountStatus> for wit::AccountStatus {
    fn from(status: customer::AccountStatus) -> Self {
        match status {
            customer::AccountStatus::Active => wit::AccountStatus::Active,
            customer::AccountStatus::Blocked => wit::AccountStatus::Blocked,
        }
    }
}

impl From<geo::GeoPoint> for wit::GeoPoint {
    fn from(p: geo::GeoPoint) -> Self {
        wit::GeoPoint { lat: p.lat, lon: p.lon }
    }
}

impl From<&host::OrderContext> for wit::OrderContext {
    fn from(o: &host::OrderContext) -> Self {
        wit::OrderContext {
            order_id: o.order_id.clone(),
            channel: o.channel.clone(),
            currency: o.currency.clone(),
            customer: wit::Customer {
                id: o.customer.id.clone(),
                tier: o.customer.tier.into(),
                status: o.customer.status.into(),
            },
            lines: o
                .lines
                .iter()
                .map(|l| wit::CartLine {
                    sku: l.sku.clone(),
                    name: l.name.clone(),
                    category: l.category.clone(),
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                })
                .collect(),
            subtotal_cents: o.subtotal_cents,
            payable_cents: o.payable_cents,
            coupon_code: o.coupon_code.clone(),
            ship_to: o.ship_to.into(),
            ordered_at_ms: o.ordered_at_ms,
        }
    }
}

/// A guest's typed error: either a refusal (the order's fault) or the rule's
/// own failure, reported as text.
pub(crate) enum GuestError {
    Refused(host::Refusal),
    Failed(String),
}

impl From<wit_discount::DiscountLine> for order::DiscountLine {
    fn from(l: wit_discount::DiscountLine) -> Self {
        order::DiscountLine {
            rule: clean(l.rule),
            description: clean(l.description),
            amount_cents: l.amount_cents,
            reasons: clean_all(l.reasons),
        }
    }
}

impl From<wit_discount::DiscountError> for GuestError {
    fn from(e: wit_discount::DiscountError) -> Self {
        match e {
            wit_discount::DiscountError::InvalidCoupon(message) => {
                GuestError::Refused(host::Refusal::InvalidCoupon { message: clean(message) })
            }
            wit_discount::DiscountError::BadConfig(m) => GuestError::Failed(failure(&format!("bad config: {m}"))),
            wit_discount::DiscountError::Internal(m) => GuestError::Failed(failure(&m)),
        }
    }
}

impl From<&host::Candidate> for wit_warehouse::Candidate {
    fn from(c: &host::Candidate) -> Self {
        wit_warehouse::Candidate {
            id: c.id.clone(),
            name: c.name.clone(),
            location: c.location.into(),
            stock: c
                .stock
                .iter()
                .map(|s| wit_warehouse::StockLevel { sku: s.sku.clone(), available: s.available })
                .collect(),
        }
    }
}

impl From<wit_warehouse::Plan> for host::Plan {
    fn from(p: wit_warehouse::Plan) -> Self {
        host::Plan {
            allocations: p
                .allocations
                .into_iter()
                .map(|a| order::Allocation {
                    warehouse_id: clean(a.warehouse_id),
                    lines: a
                        .lines
                        .into_iter()
                        .map(|l| order::AllocationLine { sku: clean(l.sku), quantity: l.quantity })
                        .collect(),
                })
                .collect(),
            reasons: clean_all(p.reasons),
        }
    }
}

impl From<wit_warehouse::SelectError> for GuestError {
    fn from(e: wit_warehouse::SelectError) -> Self {
        match e {
            wit_warehouse::SelectError::CannotFulfil(s) => {
                GuestError::Refused(host::Refusal::CannotFulfil(host::Shortfall {
                    sku: clean(s.sku),
                    requested: s.requested,
                    available: s.available,
                    reason: clean(s.reason),
                }))
            }
            wit_warehouse::SelectError::BadConfig(m) => GuestError::Failed(failure(&format!("bad config: {m}"))),
            wit_warehouse::SelectError::Internal(m) => GuestError::Failed(failure(&m)),
        }
    }
}

impl From<&host::PaymentSummary> for wit_fraud::PaymentSummary {
    fn from(p: &host::PaymentSummary) -> Self {
        wit_fraud::PaymentSummary {
            status: p.status.clone(),
            amount_cents: p.amount_cents,
            attempts: p.attempts,
            gateway: p.gateway.clone(),
        }
    }
}

impl From<wit_fraud::Verdict> for host::Verdict {
    fn from(v: wit_fraud::Verdict) -> Self {
        host::Verdict {
            action: match v.action {
                wit_fraud::Action::Allow => host::FraudAction::Allow,
                wit_fraud::Action::Review => host::FraudAction::Review,
                wit_fraud::Action::Escalate => host::FraudAction::Escalate,
            },
            score: v.score.min(100),
            flags: clean_all(v.flags),
            reasons: clean_all(v.reasons),
        }
    }
}

impl From<wit_fraud::CheckError> for GuestError {
    fn from(e: wit_fraud::CheckError) -> Self {
        match e {
            wit_fraud::CheckError::BadConfig(m) => GuestError::Failed(failure(&format!("bad config: {m}"))),
            wit_fraud::CheckError::Internal(m) => GuestError::Failed(failure(&m)),
        }
    }
}

macro_rules! rule_info_from {
    ($($world:ident),*) => {$(
        impl From<$world::exports::smartmart::rules::meta::RuleInfo> for host::RuleInfo {
            fn from(i: $world::exports::smartmart::rules::meta::RuleInfo) -> Self {
                // Name and version are checked, not cleaned: loading refuses
                // a module whose name or version is unusable.
                host::RuleInfo { name: i.name, version: i.version, description: clean(i.description) }
            }
        }
    )*};
}
rule_info_from!(discount_world, warehouse_world, fraud_world);

/// What the output budget charges for each answer a rule can give (see
/// [`OutputCharge`]): the sum of its fields' charges; scalars and enums
/// cost nothing.
macro_rules! charged_as_fields {
    ($($record:ty { $($field:ident),* }),* $(,)?) => {$(
        impl OutputCharge for $record {
            fn output_charge(&self) -> usize {
                0 $(+ self.$field.output_charge())*
            }
        }
    )*};
}
charged_as_fields!(
    wit_discount::DiscountLine { rule, description, amount_cents, reasons },
    wit_warehouse::AllocationLine { sku, quantity },
    wit_warehouse::Allocation { warehouse_id, lines },
    wit_warehouse::Plan { allocations, reasons },
    wit_warehouse::Shortfall { sku, requested, available, reason },
    wit_fraud::Verdict { score, flags, reasons },
);

impl OutputCharge for wit_discount::DiscountError {
    fn output_charge(&self) -> usize {
        match self {
            wit_discount::DiscountError::InvalidCoupon(m)
            | wit_discount::DiscountError::BadConfig(m)
            | wit_discount::DiscountError::Internal(m) => m.output_charge(),
        }
    }
}

impl OutputCharge for wit_warehouse::SelectError {
    fn output_charge(&self) -> usize {
        match self {
            wit_warehouse::SelectError::CannotFulfil(shortfall) => shortfall.output_charge(),
            wit_warehouse::SelectError::BadConfig(m) | wit_warehouse::SelectError::Internal(m) => m.output_charge(),
        }
    }
}

impl OutputCharge for wit_fraud::CheckError {
    fn output_charge(&self) -> usize {
        match self {
            wit_fraud::CheckError::BadConfig(m) | wit_fraud::CheckError::Internal(m) => m.output_charge(),
        }
    }
}
