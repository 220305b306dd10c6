//! Fraud checks, off the order's path: after an order settles, a worker
//! runs the fraud slot on it, stores the verdict on the order
//! (`fraud_review`) and readies its fraud event. After a crash, orders still
//! waiting are picked up again (the outbox row marks them).

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use super::events::fraud_envelope;
use super::rollouts::Rollouts;
use super::rule_errors::Handling;
use super::shadow::{self, ShadowJob};
use crate::domain::customer::{AccountStatus, Tier};
use crate::domain::invoice::Invoice;
use crate::rules::types::{FraudAction, OrderContext, PaymentSummary, RuleCustomer};
use crate::rules::{FailMode, RuleError, RuleSet};
use crate::store::StoreError;
use crate::store::orders::{AwaitingReview, Verdict};
use crate::store::shadows::ShadowRun;

/// Orders reviewed per batch.
const BATCH: usize = 256;
/// How long the worker lets settled orders gather before a pass.
const GATHER: Duration = Duration::from_millis(20);

/// Reviews every settled order still waiting for a verdict; returns how many.
pub async fn review_pending(pipeline: &Pipeline) -> Result<usize, StoreError> {
    let mut reviewed = 0;
    loop {
        let waiting = pipeline.store.awaiting_verdict(BATCH).await?;
        if waiting.is_empty() {
            return Ok(reviewed);
        }
        let rules = pipeline.rules.load_full();
        let rollouts = pipeline.rollouts.clone();
        // One hop to a rule thread for the whole batch, one store command
        // for its verdicts (and one for its shadow runs).
        let (verdicts, shadows) = crate::rules::run_blocking(move || {
            let mut shadows = Vec::new();
            let verdicts = waiting
                .into_iter()
                .map(|waiting| verdict(&rules, &rollouts, waiting, &mut shadows))
                .collect::<Vec<_>>();
            (verdicts, shadows)
        })
        .await;
        reviewed += verdicts.len();
        pipeline.store.record_verdicts(verdicts).await?;
        pipeline.events_ready.notify_one();
        if !shadows.is_empty()
            && let Err(e) = pipeline.store.record_shadow_runs(shadows).await
        {
            tracing::warn!(error = %e, "could not record fraud shadow runs");
        }
    }
}

/// The verdict on one waiting order, with its completed fraud events.
fn verdict(rules: &RuleSet, rollouts: &Rollouts, waiting: AwaitingReview, shadows: &mut Vec<ShadowRun>) -> Verdict {
    let order = &waiting.order;
    let review = match order.invoice.as_deref().map(serde_json::from_str::<Invoice>) {
        Some(Ok(invoice)) => review(rules, &invoice, rollouts, shadows),
        _ => json!({ "action": "REVIEW", "score": 50, "flags": ["UNREADABLE_ORDER"], "module": null, "version": null }),
    };
    let action = review["action"].as_str().unwrap_or("REVIEW").to_string();
    let envelopes = waiting
        .event_ids
        .iter()
        .map(|id| {
            let envelope =
                fraud_envelope(id, &order.id, &order.channel, &order.customer_id, order.total_cents, &review);
            (id.clone(), envelope)
        })
        .collect();
    Verdict { order_id: order.id.clone(), review: review.to_string(), action, envelopes }
}

/// The order as rules see it, rebuilt from its stored invoice: what the
/// fraud checks run on (`payable_cents` is what the customer was charged),
/// and what `rules replay` starts from. `ordered_at_ms` is the invoice's
/// `created_at`.
pub fn order_context(invoice: &Invoice) -> OrderContext {
    OrderContext {
        order_id: invoice.order_id.clone(),
        channel: invoice.channel.clone(),
        currency: invoice.currency.clone(),
        customer: RuleCustomer {
            id: invoice.customer.id.clone(),
            tier: serde_json::from_value(json!(invoice.customer.tier)).unwrap_or(Tier::Standard),
            status: serde_json::from_value(json!(invoice.customer.status)).unwrap_or(AccountStatus::Active),
        },
        lines: invoice.items.iter().map(|i| i.to_cart_line()).collect(),
        subtotal_cents: invoice.subtotal_cents,
        payable_cents: invoice.total_cents,
        coupon_code: invoice.coupon_code.clone(),
        ship_to: invoice.ship_to,
        ordered_at_ms: time::OffsetDateTime::parse(&invoice.created_at, &time::format_description::well_known::Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or(0),
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

/// Runs the fraud slot on one order and combines the verdicts: the most
/// severe action wins (then the highest score); flags are merged. A failed
/// check of a fail-closed slot asks for a human (REVIEW, flag RULE_FAILED);
/// a fail-open one is skipped and listed. A check's shadow candidate runs
/// on the same order; its run is added to `shadows`.
pub fn review(rules: &RuleSet, invoice: &Invoice, rollouts: &Rollouts, shadows: &mut Vec<ShadowRun>) -> Value {
    let context = order_context(invoice);
    let payment = payment_summary(invoice);
    let mut best: Option<(FraudAction, u8, std::sync::Arc<crate::rules::ModuleIdentity>)> = None;
    let mut flags: Vec<String> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut skipped: Vec<Value> = Vec::new();
    for rule in &rules.fraud {
        let picked = rule.pick(&context.customer.id);
        // An "off" arm of an experiment: this check is skipped for the customer.
        let Some(picked_rule) = picked.rule else { continue };
        let (answer, served) =
            rollouts.call("fraud", rule, &picked, picked_rule, |r| r.check_fraud(&context, &payment));
        if let Some(candidate) = &rule.shadow {
            let job = ShadowJob::Fraud {
                active: served.clone(),
                candidate: candidate.clone(),
                order: context.clone(),
                payment: payment.clone(),
                active_verdict: answer.as_ref().ok().map(|c| c.value.clone()),
            };
            shadows.push(shadow::run(&job, &invoice.order_id));
        }
        let (action, score) = match answer {
            Ok(called) => {
                let verdict = called.value;
                flags.extend(verdict.flags.iter().cloned());
                reasons.extend(verdict.reasons.iter().cloned());
                (verdict.action, verdict.score)
            }
            Err(RuleError::Refused { .. }) => continue,
            Err(RuleError::Failed { module, cause }) => {
                if rule.fail_mode == FailMode::Open {
                    // The cause's kind and an error id, never the guest's words
                    // (see `rule_errors`): the review is shown to customers.
                    let error_id = super::rule_errors::record("fraud", &module, &cause, Handling::Skipped);
                    skipped.push(json!({
                        "module": module.file, "version": module.version, "cause": cause.kind(), "error_id": error_id,
                    }));
                    continue;
                }
                tracing::warn!(order_id = %invoice.order_id, module = %module, %cause, "fraud check failed");
                flags.push("RULE_FAILED".into());
                (FraudAction::Review, 50)
            }
        };
        let rank = |a: FraudAction| match a {
            FraudAction::Allow => 0,
            FraudAction::Review => 1,
            FraudAction::Escalate => 2,
        };
        if best.as_ref().is_none_or(|(a, s, _)| (rank(action), score) > (rank(*a), *s)) {
            best = Some((action, score, served.identity().clone()));
        }
    }
    flags.sort();
    flags.dedup();
    let (action, score, module, version, digest) = match best {
        Some((action, score, id)) => (action, score, json!(id.file), json!(id.version), json!(id.digest)),
        None => (FraudAction::Allow, 0, Value::Null, Value::Null, Value::Null),
    };
    json!({
        "action": action.as_str(), "score": score, "flags": flags, "module": module, "version": version,
        "digest": digest, "reasons": reasons, "skipped": skipped, "checked_at": crate::store::now_rfc3339(),
    })
}

/// Reviews orders as they settle, until `shutdown`.
pub async fn run_worker(pipeline: Pipeline, shutdown: CancellationToken) {
    loop {
        if let Err(e) = review_pending(&pipeline).await {
            tracing::warn!(error = %e, "fraud review pass failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pipeline.settled.notified() => {
                // Let the orders settling now join this pass: one hop to a
                // rule thread and one store command for all of them, not
                // one per order. A verdict is never on an answer's path.
                tokio::time::sleep(GATHER).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
