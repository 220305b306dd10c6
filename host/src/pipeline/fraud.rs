//! Fraud checks, off the order's path: after an order settles, a worker
//! runs the fraud slot on it, stores the verdict on the order
//! (`fraud_review`) and readies its fraud event. After a crash, orders still
//! waiting are picked up again (the outbox row marks them).

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use super::canary::{Answered, Canaries};
use super::experiments::{Arm, ExperimentFigures, FraudCall, Settled};
use super::rule_errors::{Handling, RuleErrors};
use super::rule_io::{order_context, payment_summary};
use super::shadow::{self, ShadowJob};
use crate::domain::invoice::Invoice;
use crate::domain::status::{OrderStatus, Slot};
use crate::events::envelope::fraud_envelope;
use crate::rules::types::FraudAction;
use crate::rules::{FailMode, OrderScope, RuleError, RuleSet};
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
        let canaries = pipeline.canaries.clone();
        let rule_errors = pipeline.rule_errors.clone();
        let figures = pipeline.experiments.clone();
        // One hop to a rule thread for the whole batch, one store command
        // for its verdicts (and one for its shadow runs).
        let (verdicts, shadows) = crate::rules::run_blocking(move || {
            let mut shadows = Vec::new();
            let verdicts = waiting
                .into_iter()
                .map(|waiting| {
                    let books = Books { canaries: &canaries, rule_errors: &rule_errors, experiments: &figures };
                    verdict(&rules, &books, waiting, &mut shadows)
                })
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

/// The verdict of an order's fraud checks, as stored on the order and shown
/// with it (`fraud_review`). The fields are in alphabetical order, the order
/// in which the review was stored before it was typed, so that the stored
/// text keeps its shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FraudReview {
    pub action: FraudAction,
    /// When the checks ran (RFC 3339).
    pub checked_at: String,
    /// The digest of the module whose verdict won (none when no check ran).
    pub digest: Option<String>,
    pub flags: Vec<String>,
    pub module: Option<String>,
    pub reasons: Vec<String>,
    /// 0 to 100.
    pub score: u8,
    /// Fail-open checks that failed and were skipped.
    pub skipped: Vec<SkippedCheck>,
    pub version: Option<String>,
}

/// A fail-open fraud check that failed: the cause's kind and the error id
/// operators look it up by, never the guest's words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedCheck {
    pub cause: String,
    pub error_id: String,
    pub module: String,
    pub version: String,
}

impl FraudReview {
    /// The review of an order whose stored invoice cannot be read: a human looks.
    fn of_unreadable_order() -> FraudReview {
        FraudReview {
            action: FraudAction::Review,
            checked_at: crate::clock::now_rfc3339(),
            digest: None,
            flags: vec!["UNREADABLE_ORDER".into()],
            module: None,
            reasons: Vec::new(),
            score: 50,
            skipped: Vec::new(),
            version: None,
        }
    }
}

/// Where the fraud checks' per-call bookkeeping goes.
pub struct Books<'a> {
    /// Canary calls (and their fallback to the stable version).
    pub canaries: &'a Canaries,
    /// Where a fail-open check's failure is recorded for operators.
    pub rule_errors: &'a RuleErrors,
    /// The verdicts of the checks' A/B arms.
    pub experiments: &'a ExperimentFigures,
}

/// The verdict on one waiting order, with its completed fraud events.
fn verdict(rules: &RuleSet, books: &Books<'_>, waiting: AwaitingReview, shadows: &mut Vec<ShadowRun>) -> Verdict {
    let order = &waiting.order;
    let review = match order.invoice.as_deref().map(serde_json::from_str::<Invoice>) {
        Some(Ok(invoice)) => review(rules, &invoice, books, shadows),
        _ => FraudReview::of_unreadable_order(),
    };
    let action = review.action.as_str().to_string();
    // A typed record always serialises (string keys, no floats).
    let review = serde_json::to_value(&review).unwrap_or_default();
    let envelopes = waiting
        .events
        .iter()
        .map(|event| {
            let envelope =
                fraud_envelope(&event.id, &order.id, &order.channel, &order.customer_id, order.total_cents, &review);
            (event.seq, envelope)
        })
        .collect();
    Verdict { order_id: order.id.clone(), review: review.to_string(), action, envelopes }
}

/// Runs the fraud slot on one order and combines the verdicts: the most
/// severe action wins (then the highest score); flags are merged. A failed
/// check of a fail-closed slot asks for a human (REVIEW, flag RULE_FAILED);
/// a fail-open one is skipped and listed. A check's shadow candidate runs
/// on the same order; its run is added to `shadows`. In a `fraud_review`
/// span: an exported trace of its own per order (the review comes after the
/// answer, outside the request's trace), with the checks' rule spans in it.
/// Each check of an A/B arm counts its own verdict in its arm's figures.
pub fn review(rules: &RuleSet, invoice: &Invoice, books: &Books<'_>, shadows: &mut Vec<ShadowRun>) -> FraudReview {
    let Books { canaries, rule_errors, experiments } = books;
    let _span = tracing::debug_span!("fraud_review", order_id = invoice.order_id.as_str()).entered();
    let context = order_context(invoice);
    let payment = payment_summary(invoice);
    let mut best: Option<(FraudAction, u8, std::sync::Arc<crate::rules::ModuleIdentity>)> = None;
    let mut flags: Vec<String> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut skipped: Vec<SkippedCheck> = Vec::new();
    // How the order ended, for the figures of the arms that check it.
    let outcome = match invoice.status {
        OrderStatus::Confirmed => Some(Settled::Confirmed { total_cents: invoice.total_cents }),
        OrderStatus::PaymentFailed => Some(Settled::PaymentFailed),
        _ => None,
    };
    // The checks of the order's channel, inside their window at its start
    // (the invoice's `created_at`).
    for rule in rules.fraud_checks_for(OrderScope::of(&context.channel, context.ordered_at_ms)) {
        let picked = rule.pick(&context.customer.id);
        let arm = Arm::picked(Slot::Fraud, &picked);
        let started = std::time::Instant::now();
        let answered =
            canaries.call(Slot::Fraud, rule, &picked, &context.order_id, |r| r.check_fraud(&context, &payment));
        let latency_us = started.elapsed().as_secs_f64() * 1e6;
        // An "off" arm of an experiment, or a new check's canary that did not
        // serve the order: this check is skipped for it.
        let Some(Answered { answer, served, .. }) = answered else {
            if let Some(arm) = &arm {
                experiments.fraud_check(arm, FraudCall::default(), outcome);
            }
            continue;
        };
        // The arm's figures: the check's own verdict (a failure of a
        // fail-closed check puts the order up for review, as below).
        if let Some(arm) = &arm {
            let call = match &answer {
                Ok(called) => {
                    FraudCall { action: Some(called.value.action), failed: false, latency_us: Some(latency_us) }
                }
                Err(RuleError::Refused { .. }) => FraudCall { latency_us: Some(latency_us), ..FraudCall::default() },
                Err(RuleError::Failed { .. }) => FraudCall {
                    action: (rule.fail_mode == FailMode::Closed).then_some(FraudAction::Review),
                    failed: true,
                    latency_us: Some(latency_us),
                },
            };
            experiments.fraud_check(arm, call, outcome);
        }
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
                    let order_id = Some(context.order_id.as_str());
                    let error_id = rule_errors.record(Slot::Fraud, &module, &cause, Handling::Skipped, order_id, None);
                    skipped.push(SkippedCheck {
                        cause: cause.kind().to_string(),
                        error_id,
                        module: module.file.clone(),
                        version: module.version.clone(),
                    });
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
        Some((action, score, id)) => {
            (action, score, Some(id.file.clone()), Some(id.version.clone()), Some(id.digest.clone()))
        }
        None => (FraudAction::Allow, 0, None, None, None),
    };
    FraudReview {
        action,
        checked_at: crate::clock::now_rfc3339(),
        digest,
        flags,
        module,
        reasons,
        score,
        skipped,
        version,
    }
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
