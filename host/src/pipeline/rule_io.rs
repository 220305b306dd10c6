//! How the saga asks rules and reads their answers, in pieces that hold
//! no state and import nothing else of the saga: the order as rules see it
//! rebuilt from a stored invoice, the payment as fraud checks see it, the
//! capping of granted discounts, a call's outcome as a metric label. The
//! release tooling (`rules replay`, the reload gate) uses the very same
//! pieces, so that a replayed order is priced exactly as the saga would.

use crate::domain::invoice::{Invoice, InvoiceDiscount};
use crate::domain::order::DiscountLine;
use crate::rules::types::{OrderContext, PaymentSummary, RuleCustomer};
use crate::rules::{Called, Rule, RuleError};

/// A rule call's outcome as a metric label.
pub fn outcome_of<T>(answer: &Result<Called<T>, RuleError>) -> &'static str {
    match answer {
        Ok(_) => "ok",
        Err(RuleError::Refused { .. }) => "refused",
        Err(RuleError::Failed { cause, .. }) => cause.kind(),
    }
}

/// Discount lines of a rule's answer, capped so the total never goes below
/// zero, with the provenance of the module that granted them (and the
/// experiment arm, or the canary, it served as). Pure: also how `rules
/// replay` caps a candidate's answer.
pub fn capped_lines(
    granted: Vec<DiscountLine>,
    rule: &Rule,
    variant: Option<&str>,
    canary: Option<&str>,
    payable: &mut u64,
) -> Vec<InvoiceDiscount> {
    let identity = rule.identity();
    let mut lines = Vec::new();
    for line in granted {
        let amount = line.amount_cents.min(*payable);
        if amount == 0 {
            continue;
        }
        *payable -= amount;
        lines.push(InvoiceDiscount {
            rule: line.rule,
            module: identity.file.clone(),
            version: identity.version.clone(),
            digest: identity.digest.clone(),
            variant: variant.map(str::to_string),
            canary: canary.map(str::to_string),
            description: line.description,
            amount_cents: amount,
            reasons: line.reasons,
        });
    }
    lines
}

/// The order as rules see it, rebuilt from its stored invoice: what the
/// fraud checks run on (`payable_cents` is what the customer was charged),
/// and what `rules replay` starts from. `ordered_at_ms` is the invoice's
/// `created_at`: the order's start, when its rules were picked.
pub fn order_context(invoice: &Invoice) -> OrderContext {
    OrderContext {
        order_id: invoice.order_id.clone(),
        channel: invoice.channel.clone(),
        currency: invoice.currency.clone(),
        customer: RuleCustomer {
            id: invoice.customer.id.clone(),
            tier: invoice.customer.tier,
            status: invoice.customer.status,
        },
        lines: invoice.items.iter().map(|i| i.to_cart_line()).collect(),
        subtotal_cents: invoice.subtotal_cents,
        payable_cents: invoice.total_cents,
        coupon_code: invoice.coupon_code.clone(),
        ship_to: invoice.ship_to,
        ordered_at_ms: crate::clock::ms_of_rfc3339(&invoice.created_at).unwrap_or(0),
    }
}

/// The payment as fraud checks see it, from the stored invoice.
pub fn payment_summary(invoice: &Invoice) -> PaymentSummary {
    PaymentSummary {
        status: invoice.payment.status.as_str().to_string(),
        amount_cents: invoice.total_cents,
        attempts: invoice.payment.attempts,
        gateway: invoice.payment.gateway.clone(),
    }
}
