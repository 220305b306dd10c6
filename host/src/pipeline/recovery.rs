//! Reconciliation of orders a crash (or a store outage) left PENDING.
//!
//! - no payment intent: the order never reached the gateway and its client
//!   never got an answer; it is cleanly undone (stock released, rows and
//!   idempotency claim removed, a log line kept), so a retry of the same
//!   request places it, and a key never ends with two orders;
//! - a payment intent: the payment is re-driven with the order's own
//!   gateway idempotency key and the payment token kept with the intent
//!   (the gateway charges a key at most once, so a charge that already went
//!   through is found, never repeated), and the order ends CONFIRMED or
//!   PAYMENT_FAILED as the gateway answers, settled from its stored draft
//!   invoice with its events. Without a token (an intent from an older
//!   version) the gateway is only asked what it did under the key. If the
//!   gateway cannot answer, the order waits for the next pass, and a retry
//!   of its request gets `IDEMPOTENCY_IN_PROGRESS`.
//!
//! Either way the answer for the request's idempotency key is stored with
//! the settlement, so the client's retry gets the order's final answer.
//!
//! At start-up every PENDING order is from a dead process; while serving,
//! the janitor only touches orders older than any order can take.

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Pipeline, payment};
use crate::domain::invoice::Invoice;
use crate::payment::{ChargeRequest, GatewayError, PaymentGateway, RetryPolicy, charge_with_retries};
use crate::store::orders::OpenIntent;
use crate::store::{Store, StoreError};

/// What a reconciliation pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Orders interrupted before payment, cleanly undone (rows removed, stock released, key freed).
    pub cancelled: usize,
    /// Orders whose re-driven payment the gateway confirmed, settled CONFIRMED.
    pub confirmed: usize,
    /// Orders the gateway declined or never charged, settled PAYMENT_FAILED.
    pub failed: usize,
    /// Orders the gateway could not answer for: left for the next pass.
    pub undecided: usize,
}

/// Reconciles PENDING orders last touched before `min_age` ago.
pub async fn reconcile(pipeline: &Pipeline, min_age: Duration) -> Result<RecoveryReport, StoreError> {
    let cutoff = time::OffsetDateTime::now_utc() - min_age;
    let cutoff = cutoff.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let (unpaid, intents) = pipeline.store.pending_orders(&cutoff).await?;
    let mut report = RecoveryReport::default();
    for order_id in unpaid {
        if pipeline.store.discard(&order_id).await? {
            tracing::warn!(%order_id, "undid an order interrupted before payment (stock released, nothing charged)");
            report.cancelled += 1;
        }
    }
    for intent in intents {
        match redrive(pipeline.gateway.as_ref(), &pipeline.config.retry, &intent).await {
            Some(charged) => {
                let confirmed = charged.is_ok();
                settle_from_draft(&pipeline.store, &intent, charged).await?;
                if confirmed { report.confirmed += 1 } else { report.failed += 1 }
            }
            None => report.undecided += 1,
        }
    }
    if report != RecoveryReport::default() {
        tracing::info!(?report, "reconciled interrupted orders");
        pipeline.settled.notify_one();
        pipeline.events_ready.notify_one();
    }
    Ok(report)
}

/// What the gateway says of the order's payment once re-driven: the
/// transaction id, the reason it failed, or `None` if it cannot tell now.
async fn redrive(
    gateway: &dyn PaymentGateway,
    retry: &RetryPolicy,
    intent: &OpenIntent,
) -> Option<Result<String, String>> {
    if let Some(token) = &intent.token {
        let request = ChargeRequest {
            idempotency_key: intent.idempotency_key.clone(),
            order_id: intent.order_id.clone(),
            amount_cents: intent.amount_cents,
            currency: intent.currency.clone(),
            token: token.clone(),
        };
        let outcome = charge_with_retries(gateway, &request, retry).await;
        match outcome.result {
            Ok(charge) => return Some(Ok(charge.transaction_id)),
            Err(GatewayError::Declined { reason }) => return Some(Err(format!("payment declined: {reason}"))),
            // Still failing: ask what happened under the key, as below.
            Err(GatewayError::Transient { .. }) => {}
        }
    }
    match gateway.lookup(&intent.idempotency_key).await {
        Ok(Some(charge)) => Some(Ok(charge.transaction_id)),
        Ok(None) => Some(Err("the payment did not complete; the gateway holds no charge".to_string())),
        Err(e) => {
            tracing::warn!(order_id = %intent.order_id, error = %e, "gateway cannot say whether the order was charged; will retry");
            None
        }
    }
}

async fn settle_from_draft(
    store: &Store,
    intent: &OpenIntent,
    charged: Result<String, String>,
) -> Result<(), StoreError> {
    let stored = store.order(&intent.order_id).await?;
    let Some(invoice) = stored.and_then(|o| o.invoice).and_then(|draft| serde_json::from_str::<Invoice>(&draft).ok())
    else {
        return Err(StoreError::Corrupt(format!("order {} has no readable draft invoice", intent.order_id)));
    };
    let attempts = invoice.payment.attempts.max(1);
    let (settlement, _) = payment::finish(invoice, charged, attempts);
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
