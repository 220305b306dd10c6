//! Stage 3a: discount rules, in the configured order, each on what is left
//! to pay after the earlier ones. Pure: it changes nothing, so when the
//! inventory leg fails there is nothing here to undo.

use super::OrderError;
use super::experiments::ExperimentStats;
use super::invoice::{InvoiceDiscount, SkippedRule};
use crate::domain::Slot;
use crate::metrics::Metrics;
use crate::rules::types::{OrderContext, Refusal};
use crate::rules::{Called, FailMode, FailureCause, Rule, RuleError, RuleSet};
use crate::store::shadows::{ShadowModule, ShadowRun};

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
    /// Shadow candidates to run after the answer, on the input their active
    /// rule saw.
    pub shadows: Vec<ShadowJob>,
}

/// A shadow candidate's pending run.
pub struct ShadowJob {
    pub active: Rule,
    pub candidate: Rule,
    pub order: OrderContext,
    /// What the active rule took off (after capping).
    pub active_cents: u64,
}

/// Where the pipeline's per-call bookkeeping goes.
pub struct Books<'a> {
    pub metrics: &'a Metrics,
    pub experiments: &'a ExperimentStats,
}

/// Discount lines of a rule's answer, capped so the total never goes below
/// zero, with the provenance of the module that granted them. Pure: also
/// how `rules replay` caps a candidate's answer.
pub fn capped_lines(
    granted: Vec<crate::rules::types::DiscountLine>,
    rule: &Rule,
    variant: Option<&str>,
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
            description: line.description,
            amount_cents: amount,
            reasons: line.reasons,
        });
    }
    lines
}

/// Runs the discount slot on `order` (whose `payable_cents` is the subtotal).
pub fn apply_discounts(rules: &RuleSet, order: &OrderContext, books: &Books<'_>) -> Result<Discounts, OrderError> {
    let mut order = order.clone();
    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    let mut shadows = Vec::new();
    for slot_rule in &rules.discount {
        let picked = slot_rule.pick(&order.customer.id);
        let started = std::time::Instant::now();
        let answer = picked.rule.apply_discount(&order);
        let seconds = started.elapsed().as_secs_f64();
        books.metrics.rule_call("discount", picked.rule.identity(), picked.variant, outcome_of(&answer), seconds);
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
                return Err(OrderError::RuleFailed { slot: "discount", module: Box::new((*module).clone()), cause });
            }
            Err(RuleError::Failed { module, cause }) => {
                if let (Some(experiment), Some(variant)) = (picked.experiment, picked.variant) {
                    books.experiments.record(experiment, variant, 0, true, seconds * 1e6);
                }
                match slot_rule.fail_mode {
                    FailMode::Closed => {
                        return Err(OrderError::RuleFailed {
                            slot: "discount",
                            module: Box::new((*module).clone()),
                            cause,
                        });
                    }
                    FailMode::Open => {
                        skipped.push(skipped_rule(&module, &cause));
                        continue;
                    }
                }
            }
        };
        let granted = capped_lines(granted, picked.rule, picked.variant, &mut order.payable_cents);
        let taken = before - order.payable_cents;
        if let (Some(experiment), Some(variant)) = (picked.experiment, picked.variant) {
            books.experiments.record(experiment, variant, taken, false, seconds * 1e6);
        }
        if let (Some(candidate), Some(seen)) = (&slot_rule.shadow, seen) {
            shadows.push(ShadowJob {
                active: picked.rule.clone(),
                candidate: candidate.clone(),
                order: seen,
                active_cents: taken,
            });
        }
        lines.extend(granted);
    }
    let total_cents = lines.iter().map(|l| l.amount_cents).sum();
    Ok(Discounts { lines, total_cents, skipped, shadows })
}

/// Runs a shadow candidate on the input its active rule saw; the result
/// never reaches the order.
pub fn run_shadow(job: &ShadowJob, order_id: &str) -> ShadowRun {
    let mut payable = job.order.payable_cents;
    let (candidate_cents, candidate_result) = match job.candidate.apply_discount(&job.order) {
        Ok(called) => {
            let lines = capped_lines(called.value, &job.candidate, None, &mut payable);
            (
                job.order.payable_cents - payable,
                serde_json::json!({ "discount_cents": job.order.payable_cents - payable, "lines": lines }),
            )
        }
        Err(e) => (0, serde_json::json!({ "error": e.to_string() })),
    };
    let module = |identity: &crate::rules::ModuleIdentity| ShadowModule {
        file: identity.file.clone(),
        version: identity.version.clone(),
        digest: identity.digest.clone(),
    };
    ShadowRun {
        order_id: order_id.to_string(),
        slot: Slot::Discount,
        active: module(job.active.identity()),
        candidate: module(job.candidate.identity()),
        active_result: serde_json::json!({ "discount_cents": job.active_cents }).to_string(),
        candidate_result: candidate_result.to_string(),
        money_difference_cents: candidate_cents as i64 - job.active_cents as i64,
        differs: candidate_cents != job.active_cents,
    }
}

/// A fail-open rule's failure as the invoice lists it: the cause's kind and
/// the error id under which operators find what the rule said (logged and
/// kept in [`super::rule_errors`]).
pub(super) fn skipped_rule(module: &crate::rules::ModuleIdentity, cause: &FailureCause) -> SkippedRule {
    let slot = module.world.slot();
    let error_id = super::rule_errors::record(slot, module, cause, super::rule_errors::Handling::Skipped);
    SkippedRule {
        slot: slot.into(),
        module: module.file.clone(),
        version: module.version.clone(),
        digest: module.digest.clone(),
        cause: cause.kind().into(),
        error_id: Some(error_id),
    }
}
