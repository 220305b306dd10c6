//! Stage 3a: discount rules, in the configured order, each on what is left
//! to pay after the earlier ones. Pure: it changes nothing, so when the
//! inventory leg fails there is nothing here to undo.

use super::OrderError;
use super::invoice::{InvoiceDiscount, SkippedRule};
use crate::metrics::Metrics;
use crate::rules::types::{OrderContext, Refusal};
use crate::rules::{Called, FailMode, FailureCause, RuleError, RuleSet};

/// A rule call's outcome as a metric label.
pub(super) fn outcome_of<T>(answer: &Result<Called<T>, RuleError>) -> &'static str {
    match answer {
        Ok(_) => "ok",
        Err(RuleError::Refused { .. }) => "refused",
        Err(RuleError::Failed { cause, .. }) => cause.kind(),
    }
}

pub struct Discounts {
    pub lines: Vec<InvoiceDiscount>,
    pub total_cents: u64,
    pub skipped: Vec<SkippedRule>,
}

/// Runs the discount slot on `order` (whose `payable_cents` is the subtotal).
pub fn apply_discounts(rules: &RuleSet, order: &OrderContext, metrics: &Metrics) -> Result<Discounts, OrderError> {
    let mut order = order.clone();
    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    for rule in &rules.discount {
        let started = std::time::Instant::now();
        let answer = rule.module.apply_discount(&order);
        metrics.rule_call(
            "discount",
            rule.module.identity(),
            None,
            outcome_of(&answer),
            started.elapsed().as_secs_f64(),
        );
        let granted = match answer {
            Ok(called) => called.value,
            Err(RuleError::Refused { module, refusal: Refusal::InvalidCoupon { message } }) => {
                return Err(OrderError::InvalidCoupon { message, module: Box::new((*module).clone()) });
            }
            // A discount rule has no other refusal; the bindings cannot produce one.
            Err(RuleError::Refused { module, refusal }) => {
                let cause = FailureCause::Guest(format!("unexpected refusal {refusal:?}"));
                return Err(OrderError::RuleFailed { slot: "discount", module: Box::new((*module).clone()), cause });
            }
            Err(RuleError::Failed { module, cause }) => match rule.fail_mode {
                FailMode::Closed => {
                    return Err(OrderError::RuleFailed {
                        slot: "discount",
                        module: Box::new((*module).clone()),
                        cause,
                    });
                }
                FailMode::Open => {
                    tracing::warn!(module = %module, %cause, "fail-open discount rule skipped");
                    skipped.push(skipped_rule(&module, cause.to_string()));
                    continue;
                }
            },
        };
        let identity = rule.module.identity();
        for line in granted {
            // Never below zero, whatever a rule claims.
            let amount = line.amount_cents.min(order.payable_cents);
            if amount == 0 {
                continue;
            }
            order.payable_cents -= amount;
            lines.push(InvoiceDiscount {
                rule: line.rule,
                module: identity.file.clone(),
                version: identity.version.clone(),
                digest: identity.digest.clone(),
                variant: None,
                description: line.description,
                amount_cents: amount,
                reasons: line.reasons,
            });
        }
    }
    let total_cents = lines.iter().map(|l| l.amount_cents).sum();
    Ok(Discounts { lines, total_cents, skipped })
}

pub(super) fn skipped_rule(module: &crate::rules::ModuleIdentity, cause: String) -> SkippedRule {
    SkippedRule {
        slot: match module.world {
            crate::rules::World::DiscountRule => "discount",
            crate::rules::World::WarehouseSelector => "warehouse",
            crate::rules::World::FraudCheck => "fraud",
        }
        .into(),
        module: module.file.clone(),
        version: module.version.clone(),
        digest: module.digest.clone(),
        cause,
    }
}
