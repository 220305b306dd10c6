//! Reconciliation of orders a crash (or a store outage) left PENDING, and
//! of payments whose outcome was unknown when their order was answered.
//!
//! - no payment intent: the order never reached the gateway and its client
//!   never got an answer; it is cleanly undone (stock released, rows and
//!   idempotency claim removed, a log line kept), so a retry of the same
//!   request places it, and a key never ends with two orders;
//! - a payment intent interrupted by a crash: the payment is re-driven with
//!   the order's own gateway idempotency key and the payment token kept
//!   with the intent (the gateway charges a key at most once, so a charge
//!   that already went through is found, never repeated), within the retry
//!   budget; what that comes to is decided as on the order's path (an
//!   unknown outcome is resolved with a lookup and a cancel). Without a
//!   token (an intent from an older version) the key is only resolved;
//! - a payment answered `PAYMENT_PENDING` (its outcome unknown at the
//!   answer deadline): the key is resolved, never charged again — a lookup,
//!   then a cancel, which either returns the charge or guarantees none will
//!   ever be made.
//!
//! A decided payment settles the order CONFIRMED or PAYMENT_FAILED from its
//! stored draft invoice, with its events and the answer for the request's
//! idempotency key (the client's retry then gets the final answer). One the
//! gateway cannot decide now stays pending (answered `PAYMENT_PENDING` from
//! then on) and is asked about again at its next resolution time.
//!
//! At start-up every PENDING order is from a dead process; while serving,
//! the janitor only touches orders older than any order can take, and
//! pending payments when they are due.

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Pipeline, payment};
use crate::clock::now_ms;
use crate::domain::invoice::Invoice;
use crate::payment::{
    ChargeRequest, Decision, PaymentGateway, RequestTrace, RetryPolicy, charge_with_retries, decide, resolve,
};
use crate::store::orders::OpenIntent;
use crate::store::{Store, StoreError};

/// How long after an undecided resolution the gateway is asked again.
const RESOLVE_AGAIN_AFTER_MS: i64 = 2_000;

/// The longest a resolution (or a re-driven payment) may take.
const RESOLUTION_TIME: Duration = Duration::from_secs(10);

/// What a reconciliation pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Orders interrupted before payment, cleanly undone (rows removed, stock released, key freed).
    pub cancelled: usize,
    /// Orders whose payment the gateway confirmed, settled CONFIRMED.
    pub confirmed: usize,
    /// Orders the gateway declined or certainly never charged, settled PAYMENT_FAILED.
    pub failed: usize,
    /// Orders the gateway could not answer for: pending until the next pass.
    pub undecided: usize,
}

/// Reconciles PENDING orders last touched before `min_age` ago, and every
/// pending payment whose resolution is due.
pub async fn reconcile(pipeline: &Pipeline, min_age: Duration) -> Result<RecoveryReport, StoreError> {
    let cutoff = time::OffsetDateTime::now_utc() - min_age;
    let cutoff = cutoff.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let (unpaid, intents) = pipeline.store.pending_orders(&cutoff, now_ms()).await?;
    let mut report = RecoveryReport::default();
    for order_id in unpaid {
        if pipeline.store.discard(&order_id).await? {
            tracing::warn!(%order_id, "undid an order interrupted before payment (stock released, nothing charged)");
            report.cancelled += 1;
        }
    }
    for intent in intents {
        // One order's trouble (another replica settled it first, a store
        // hiccup) must not hold back the others: it is logged and retried
        // at the next pass.
        match reconcile_intent(pipeline, &intent).await {
            Ok(outcome) => {
                match outcome {
                    Reconciled::Confirmed => report.confirmed += 1,
                    Reconciled::Failed => report.failed += 1,
                    Reconciled::Undecided => report.undecided += 1,
                }
                pipeline.metrics.payment_reconciliation(outcome.as_str());
            }
            Err(e) => {
                tracing::warn!(order_id = %intent.order_id, error = %e, "could not reconcile the order; next pass")
            }
        }
    }
    if let Ok(pending) = pipeline.store.payments_pending_count().await {
        pipeline.metrics.payments_pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
    if report != RecoveryReport::default() {
        tracing::info!(?report, "reconciled interrupted orders and pending payments");
        pipeline.settled.notify_one();
        pipeline.events_ready.notify_one();
    }
    Ok(report)
}

/// What became of one open payment in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reconciled {
    Confirmed,
    Failed,
    Undecided,
}

impl Reconciled {
    /// The metric's label.
    fn as_str(self) -> &'static str {
        match self {
            Reconciled::Confirmed => "confirmed",
            Reconciled::Failed => "failed",
            Reconciled::Undecided => "undecided",
        }
    }
}

/// Decides one open payment and records it.
async fn reconcile_intent(pipeline: &Pipeline, intent: &OpenIntent) -> Result<Reconciled, StoreError> {
    let gateway = pipeline.gateway.as_ref();
    let decision = if intent.outcome_unknown {
        let deadline = tokio::time::Instant::now() + RESOLUTION_TIME;
        resolve(gateway, &intent.idempotency_key, &RequestTrace::default(), deadline).await
    } else {
        redrive(gateway, &pipeline.config.retry, intent).await
    };
    match decision {
        Decision::Charged(charge) => {
            settle_from_draft(&pipeline.store, intent, Ok(charge.transaction_id)).await?;
            Ok(Reconciled::Confirmed)
        }
        Decision::NotCharged(reason) => {
            settle_from_draft(&pipeline.store, intent, Err(reason)).await?;
            Ok(Reconciled::Failed)
        }
        Decision::Unknown(reason) => {
            tracing::warn!(order_id = %intent.order_id, %reason, "gateway cannot say whether the order was charged; will ask again");
            if intent.outcome_unknown {
                pipeline.store.defer_resolution(&intent.order_id, now_ms() + RESOLVE_AGAIN_AFTER_MS).await?;
            } else {
                // Interrupted by a crash, its client never answered: from
                // now on it is a pending payment like any other.
                let draft = draft_of(&pipeline.store, intent).await?;
                let attempts = draft.payment.attempts.max(1);
                payment::hand_to_reconciler(&pipeline.store, draft, attempts, &reason).await?;
            }
            Ok(Reconciled::Undecided)
        }
    }
}

/// What the gateway says of an interrupted order's payment once re-driven
/// within the retry budget, its outcome resolved if the attempts leave it
/// unknown.
async fn redrive(gateway: &dyn PaymentGateway, retry: &RetryPolicy, intent: &OpenIntent) -> Decision {
    let deadline = tokio::time::Instant::now() + retry.budget + RESOLUTION_TIME;
    let Some(token) = &intent.token else {
        return resolve(gateway, &intent.idempotency_key, &RequestTrace::default(), deadline).await;
    };
    let request = ChargeRequest {
        idempotency_key: intent.idempotency_key.clone(),
        order_id: intent.order_id.clone(),
        amount_cents: intent.amount_cents,
        currency: intent.currency.clone(),
        token: token.clone(),
        // After the answer (or a crash) no request is waiting: the gateway is told of none.
        request_id: None,
        traceparent: None,
    };
    let outcome = charge_with_retries(gateway, &request, retry, deadline).await;
    decide(gateway, &intent.idempotency_key, &RequestTrace::default(), outcome, deadline).await
}

/// The order's stored draft (or `PAYMENT_PENDING`) invoice.
async fn draft_of(store: &Store, intent: &OpenIntent) -> Result<Invoice, StoreError> {
    let stored = store.order(&intent.order_id).await?;
    stored
        .and_then(|o| o.invoice)
        .and_then(|draft| serde_json::from_str::<Invoice>(&draft).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("order {} has no readable draft invoice", intent.order_id)))
}

async fn settle_from_draft(
    store: &Store,
    intent: &OpenIntent,
    charged: Result<String, String>,
) -> Result<(), StoreError> {
    let invoice = draft_of(store, intent).await?;
    let attempts = invoice.payment.attempts.max(1);
    // No request is being answered: a stored 402 names none.
    let (settlement, _) = payment::finish(invoice, charged, attempts, None);
    store.settle(settlement).await
}

/// Reconciles orders stuck longer than `min_age`, every `every`, until `shutdown`.
pub async fn run_janitor(pipeline: Pipeline, every: Duration, min_age: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = reconcile(&pipeline, min_age).await {
            tracing::warn!(error = %e, "reconciliation pass failed; retrying");
        }
    }
}
