//! Reconciliation of orders a crash (or a store outage) left PENDING.
//!
//! - no payment intent: the order never reached the gateway; its stock is
//!   released and it ends CANCELLED (cleanly undone);
//! - a payment intent: the gateway's ledger decides. Charged → the order is
//!   settled CONFIRMED from its stored draft invoice, with its events; not
//!   charged → it is settled PAYMENT_FAILED and its stock released. The
//!   gateway is only asked (`lookup`), never charged, so nothing is charged
//!   twice; if it cannot answer, the order waits for the next pass.
//!
//! At start-up every PENDING order is from a dead process; while serving,
//! the janitor only touches orders older than any order can take.

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::invoice::Invoice;
use super::{Pipeline, events};
use crate::store::StoreError;
use crate::store::orders::{self, OpenIntent, Settlement};

/// What a reconciliation pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RecoveryReport {
    pub cancelled: usize,
    pub confirmed: usize,
    pub failed: usize,
    pub undecided: usize,
}

/// Reconciles PENDING orders last touched before `min_age` ago.
pub async fn reconcile(pipeline: &Pipeline, min_age: Duration) -> Result<RecoveryReport, StoreError> {
    let cutoff = time::OffsetDateTime::now_utc() - min_age;
    let cutoff = cutoff.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let (unpaid, intents) = pipeline.store.run(move |c| orders::pending_orders(c, &cutoff)).await?;
    let mut report = RecoveryReport::default();
    for order_id in unpaid {
        let id = order_id.clone();
        if pipeline.store.run(move |c| orders::cancel(c, &id, "interrupted before payment")).await? {
            tracing::info!(%order_id, "released the stock of an order interrupted before payment");
            report.cancelled += 1;
        }
    }
    for intent in intents {
        match pipeline.gateway.lookup(&intent.idempotency_key).await {
            Ok(charge) => {
                let confirmed = charge.is_some();
                settle_from_ledger(pipeline, &intent, charge.map(|c| c.transaction_id)).await?;
                if confirmed { report.confirmed += 1 } else { report.failed += 1 }
            }
            Err(e) => {
                tracing::warn!(order_id = %intent.order_id, error = %e, "gateway cannot say whether the order was charged; will retry");
                report.undecided += 1;
            }
        }
    }
    if report != RecoveryReport::default() {
        tracing::info!(?report, "reconciled interrupted orders");
        pipeline.settled.notify_one();
        pipeline.events_ready.notify_one();
    }
    Ok(report)
}

async fn settle_from_ledger(
    pipeline: &Pipeline,
    intent: &OpenIntent,
    transaction_id: Option<String>,
) -> Result<(), StoreError> {
    let order_id = intent.order_id.clone();
    let stored = pipeline.store.run(move |c| orders::get_order(c, &order_id)).await?;
    let Some(mut invoice) =
        stored.and_then(|o| o.invoice).and_then(|draft| serde_json::from_value::<Invoice>(draft).ok())
    else {
        return Err(StoreError::Corrupt(format!("order {} has no readable draft invoice", intent.order_id)));
    };
    let failure = match &transaction_id {
        Some(_) => {
            invoice.status = "CONFIRMED".into();
            invoice.payment.status = "CAPTURED".into();
            None
        }
        None => {
            let reason = "interrupted before the payment completed; the gateway holds no charge".to_string();
            invoice.status = "PAYMENT_FAILED".into();
            invoice.payment.status = "FAILED".into();
            invoice.payment.failure = Some(reason.clone());
            Some(reason)
        }
    };
    invoice.payment.transaction_id = transaction_id.clone();
    let settlement = Settlement {
        order_id: intent.order_id.clone(),
        customer_id: invoice.customer.id.clone(),
        invoice: serde_json::to_value(&invoice)?,
        transaction_id,
        attempts: invoice.payment.attempts.max(1),
        failure,
        events: events::outbox_events(&invoice, &pipeline.config.pseudonym_key),
        idempotency: None,
    };
    pipeline.store.run(move |c| orders::settle(c, &settlement)).await
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
