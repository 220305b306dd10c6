//! Stage 3a: the discount rules of the order's channel (inside their window
//! at its start), in the configured order, each on what is left to pay
//! after the earlier ones. Pure: it changes nothing, so when the
//! inventory leg fails there is nothing here to undo.

use super::OrderError;
use super::canary::{Answered, Canaries};
use super::experiments::{Arm, ArmCall, ExperimentFigures};
use super::rule_errors::{Handling, RuleErrors};
use super::rule_io::capped_lines;
use super::shadow::ShadowJob;
use crate::domain::invoice::{InvoiceDiscount, SkippedRule};
use crate::domain::status::Slot;
use crate::rules::types::{OrderContext, Refusal};
use crate::rules::{FailMode, FailureCause, OrderScope, RuleError, RuleSet};

pub struct Discounts {
    pub lines: Vec<InvoiceDiscount>,
    pub total_cents: u64,
    pub skipped: Vec<SkippedRule>,
    /// Shadow candidates to run after the answer, on the input their active
    /// rule saw.
    pub shadows: Vec<ShadowJob>,
    /// The experiment arms that served the order, for the figures of how
    /// it ends (revenue, payment failures).
    pub arms: Vec<Arm>,
}

/// Where the pipeline's per-call bookkeeping goes.
pub struct Books<'a> {
    pub experiments: &'a ExperimentFigures,
    /// Canary calls (and their fallback to the stable version).
    pub canaries: &'a Canaries,
    /// Where a fail-open rule's failure is recorded for operators.
    pub rule_errors: &'a RuleErrors,
}

/// Runs the discount slot on `order` (whose `payable_cents` is the
/// subtotal), each rule's call on the calling task (the order's).
pub async fn apply_discounts(
    rules: &RuleSet,
    order: &OrderContext,
    books: &Books<'_>,
) -> Result<Discounts, OrderError> {
    let mut order = order.clone();
    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    let mut shadows = Vec::new();
    let mut arms = Vec::new();
    // The rules of the order's channel, inside their window at its start.
    let scope = OrderScope::of(&order.channel, order.ordered_at_ms);
    for slot_rule in rules.discounts_for(scope) {
        let picked = slot_rule.pick(&order.customer.id);
        let arm = Arm::picked(Slot::Discount, &picked);
        let started = std::time::Instant::now();
        let answered = books
            .canaries
            .call_async(Slot::Discount, slot_rule, &picked, &order.order_id, |rule| rule.apply_discount_async(&order))
            .await;
        let seconds = started.elapsed().as_secs_f64();
        let Some(Answered { answer, served, canary }) = answered else {
            // An "off" arm, or a new rule's canary that did not serve the
            // order: this rule is skipped for it; the slot's other rules
            // apply as usual.
            if let Some(arm) = arm {
                books.experiments.rule_call(&arm, ArmCall::default());
                arms.push(arm);
            }
            continue;
        };
        let before = order.payable_cents;
        // The input the active rule saw, for a shadow candidate only.
        let seen = slot_rule.shadow.as_ref().map(|_| order.clone());
        let granted = match answer {
            Ok(called) => called.value,
            Err(RuleError::Refused { module, refusal: Refusal::InvalidCoupon { message } }) => {
                return Err(OrderError::InvalidCoupon { message, module: Box::new((*module).clone()) });
            }
            // A discount rule has no other refusal; the bindings cannot produce one.
            Err(RuleError::Refused { module, refusal }) => {
                let cause = FailureCause::Guest(format!("unexpected refusal {refusal:?}"));
                return Err(OrderError::RuleFailed {
                    slot: Slot::Discount,
                    module: Box::new((*module).clone()),
                    cause,
                    error_id: None,
                });
            }
            Err(RuleError::Failed { module, cause }) => {
                if let Some(arm) = arm {
                    let call = ArmCall { failed: true, latency_us: Some(seconds * 1e6), ..ArmCall::default() };
                    books.experiments.rule_call(&arm, call);
                    // Skipped (fail open), the order goes on: how it ends counts for the arm.
                    arms.push(arm);
                }
                match slot_rule.fail_mode {
                    FailMode::Closed => {
                        return Err(OrderError::RuleFailed {
                            slot: Slot::Discount,
                            module: Box::new((*module).clone()),
                            cause,
                            error_id: None,
                        });
                    }
                    FailMode::Open => {
                        skipped.push(skipped_rule(books.rule_errors, &module, &cause, &order.order_id));
                        continue;
                    }
                }
            }
        };
        let granted = capped_lines(granted, served, picked.variant, canary, &mut order.payable_cents);
        let taken = before - order.payable_cents;
        if let Some(arm) = arm {
            let call =
                ArmCall { fired: taken > 0, discount_cents: taken, failed: false, latency_us: Some(seconds * 1e6) };
            books.experiments.rule_call(&arm, call);
            arms.push(arm);
        }
        if let (Some(candidate), Some(seen)) = (&slot_rule.shadow, seen) {
            shadows.push(ShadowJob::Discount {
                active: served.clone(),
                candidate: candidate.clone(),
                order: seen,
                active_cents: taken,
            });
        }
        lines.extend(granted);
    }
    let total_cents = lines.iter().map(|l| l.amount_cents).sum();
    Ok(Discounts { lines, total_cents, skipped, shadows, arms })
}

/// A fail-open rule's failure on the order `order_id` as the invoice lists
/// it: the cause's kind and the error id under which operators find what
/// the rule said (logged and kept in the engine's [`RuleErrors`]).
pub(super) fn skipped_rule(
    rule_errors: &RuleErrors,
    module: &crate::rules::ModuleIdentity,
    cause: &FailureCause,
    order_id: &str,
) -> SkippedRule {
    let slot = module.world.slot();
    let error_id = rule_errors.record(slot, module, cause, Handling::Skipped, Some(order_id), None);
    SkippedRule {
        slot,
        module: module.file.clone(),
        version: module.version.clone(),
        digest: module.digest.clone(),
        cause: cause.kind().into(),
        error_id: Some(error_id),
    }
}
