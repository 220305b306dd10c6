//! Shadow candidates of every slot: a candidate runs after the answer on
//! the input its active rule saw, and never changes the order; each run is
//! stored (`store::shadows`) with the candidate named by rule name, version,
//! digest and configuration hash. A candidate that fails (trap, budget,
//! error) is counted as an error, never as a differing order.
//!
//! - discount: the discount it would have taken off, beside the active rule's;
//! - warehouse: the plan it would have chosen among the same warehouses and
//!   stock levels, beside the active plan;
//! - fraud: its verdict (action and score) beside the active check's.

use std::sync::Arc;

use serde_json::{Value, json};

use super::rule_io::capped_lines;
use crate::domain::status::Slot;
use crate::rules::types::{Candidate, OrderContext, PaymentSummary, Plan, Verdict};
use crate::rules::{Rule, RuleError};
use crate::store::shadows::{ShadowModule, ShadowRun};

/// A shadow candidate's pending run, with what the active rule answered.
pub enum ShadowJob {
    Discount {
        active: Rule,
        candidate: Rule,
        order: OrderContext,
        /// What the active rule took off (after capping).
        active_cents: u64,
    },
    Warehouse {
        active: Rule,
        candidate: Rule,
        order: Arc<OrderContext>,
        candidates: Arc<Vec<Candidate>>,
        active_plan: Plan,
    },
    Fraud {
        active: Rule,
        candidate: Rule,
        order: OrderContext,
        payment: PaymentSummary,
        /// `None` when the active check failed.
        active_verdict: Option<Verdict>,
    },
}

/// How a module is named in a shadow run.
pub fn shadow_module(rule: &Rule) -> ShadowModule {
    let id = rule.identity();
    let config = rule.config();
    ShadowModule {
        file: id.file.clone(),
        name: id.name.clone(),
        version: id.version.clone(),
        digest: id.digest.clone(),
        config_hash: crate::rules::config_hash(&config),
        config: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
    }
}

/// What a failed candidate call is stored as (its cause kind and message).
fn failure(error: &RuleError) -> Option<Value> {
    match error {
        RuleError::Failed { cause, .. } => Some(
            json!({ "error": { "kind": cause.kind(), "message": crate::rules::text::escape(&cause.to_string()) } }),
        ),
        RuleError::Refused { .. } => None,
    }
}

/// Runs the candidate of `job`; blocking (a rule thread).
pub fn run(job: &ShadowJob, order_id: &str) -> ShadowRun {
    let (slot, active, candidate, active_result, candidate_result, difference, differs, failed) = match job {
        ShadowJob::Discount { active, candidate, order, active_cents } => {
            let active_result = json!({ "discount_cents": active_cents });
            match candidate.apply_discount(order) {
                Ok(called) => {
                    let mut payable = order.payable_cents;
                    let lines = capped_lines(called.value, candidate, None, None, &mut payable);
                    let cents = order.payable_cents - payable;
                    let result = json!({ "discount_cents": cents, "lines": lines });
                    let difference = cents as i64 - *active_cents as i64;
                    (Slot::Discount, active, candidate, active_result, result, difference, difference != 0, false)
                }
                Err(e) => match failure(&e) {
                    Some(result) => (Slot::Discount, active, candidate, active_result, result, 0, false, true),
                    // A refused coupon: the order would have been refused.
                    None => {
                        let result = json!({ "refused": crate::rules::text::escape(&e.to_string()) });
                        (Slot::Discount, active, candidate, active_result, result, 0, true, false)
                    }
                },
            }
        }
        ShadowJob::Warehouse { active, candidate, order, candidates, active_plan } => {
            let active_result = json!({ "plan": active_plan });
            match candidate.select_warehouses(order, candidates) {
                Ok(called) => {
                    let differs = called.value != *active_plan;
                    let result = json!({ "plan": called.value });
                    (Slot::Warehouse, active, candidate, active_result, result, 0, differs, false)
                }
                Err(e) => match failure(&e) {
                    Some(result) => (Slot::Warehouse, active, candidate, active_result, result, 0, false, true),
                    None => {
                        let result = json!({ "refused": crate::rules::text::escape(&e.to_string()) });
                        (Slot::Warehouse, active, candidate, active_result, result, 0, true, false)
                    }
                },
            }
        }
        ShadowJob::Fraud { active, candidate, order, payment, active_verdict } => {
            let verdict_json = |v: &Verdict| json!({ "action": v.action.as_str(), "score": v.score, "flags": v.flags });
            let active_result = active_verdict.as_ref().map_or(json!({ "failed": true }), verdict_json);
            match candidate.check_fraud(order, payment) {
                Ok(called) => {
                    let v = &called.value;
                    let differs = active_verdict.as_ref().is_none_or(|a| (a.action, a.score) != (v.action, v.score));
                    (Slot::Fraud, active, candidate, active_result, verdict_json(v), 0, differs, false)
                }
                Err(e) => {
                    let result = failure(&e).unwrap_or_else(|| json!({ "refused": true }));
                    (Slot::Fraud, active, candidate, active_result, result, 0, false, failure(&e).is_some())
                }
            }
        }
    };
    ShadowRun {
        order_id: order_id.to_string(),
        slot,
        active: shadow_module(active),
        candidate: shadow_module(candidate),
        active_result: active_result.to_string(),
        candidate_result: candidate_result.to_string(),
        money_difference_cents: difference,
        differs,
        failed,
    }
}
