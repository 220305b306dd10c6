//! Stage 4 and the settlement: record the intent, charge through the
//! gateway with retries (one idempotency key per order), then settle the
//! order in one transaction with its events. A final payment failure
//! releases the stock and is recorded as a `PAYMENT_FAILED` order.

use std::time::Instant;

use super::invoice::Invoice;
use super::validate::unavailable;
use super::{OrderError, OrderRequest, Pipeline, Stage, events, ms};
use crate::payment::{ChargeRequest, charge_with_retries};
use crate::store::orders::{self, IdempotencyRecord, Settlement};

/// The gateway idempotency key of an order: one per order, the same on
/// every attempt and at reconciliation.
pub fn payment_key(order_id: &str) -> String {
    format!("pay_{order_id}")
}

pub(super) async fn pay_and_settle(
    pipeline: &Pipeline,
    invoice: &mut Invoice,
    request: &OrderRequest,
    stage_started: Instant,
    order_started: Instant,
) -> Result<Invoice, OrderError> {
    let key = payment_key(&invoice.order_id);
    let draft = serde_json::to_value(&*invoice).map_err(|e| OrderError::InvalidRequest(e.to_string()))?;
    {
        let (order_id, key, gateway, amount) =
            (invoice.order_id.clone(), key.clone(), pipeline.gateway.name().to_string(), invoice.total_cents);
        let stored = pipeline
            .store
            .run(move |c| {
                // The draft invoice lets reconciliation finish the order
                // after a crash between charge and settlement. It is written
                // before the intent: a crash between the two leaves an order
                // without intent, which reconciliation simply cancels, never
                // an intent without a draft to settle it from.
                c.execute(
                    "UPDATE orders SET invoice = ?2 WHERE id = ?1",
                    rusqlite::params![order_id, draft.to_string()],
                )?;
                orders::record_intent(c, &order_id, &key, &gateway, amount)?;
                Ok(())
            })
            .await;
        if let Err(e) = stored {
            pipeline.cancel(&invoice.order_id, "payment intent could not be recorded").await;
            return Err(unavailable(Stage::Payment, e));
        }
    }

    let charge = ChargeRequest {
        idempotency_key: key,
        order_id: invoice.order_id.clone(),
        amount_cents: invoice.total_cents,
        currency: invoice.currency.clone(),
        token: request.payment_token.clone(),
    };
    let outcome = charge_with_retries(pipeline.gateway.as_ref(), &charge, &pipeline.config.retry).await;
    invoice.payment.attempts = outcome.attempts;
    invoice.timings_ms.payment = ms(stage_started);
    invoice.timings_ms.total = ms(order_started);
    let failure = match &outcome.result {
        Ok(charge) => {
            invoice.status = "CONFIRMED".into();
            invoice.payment.status = "CAPTURED".into();
            invoice.payment.transaction_id = Some(charge.transaction_id.clone());
            None
        }
        Err(error) => {
            invoice.status = "PAYMENT_FAILED".into();
            invoice.payment.status = "FAILED".into();
            invoice.payment.failure = Some(error.to_string());
            Some(error.to_string())
        }
    };
    let answer = match &failure {
        None => Ok(invoice.clone()),
        Some(reason) => Err(OrderError::PaymentFailed { reason: reason.clone(), order: Box::new(invoice.clone()) }),
    };
    let idempotency = request.idempotency.as_ref().map(|(key, hash)| {
        let (status_code, body) = match &answer {
            Ok(invoice) => (201, serde_json::to_string(invoice).unwrap_or_default()),
            Err(e) => (e.status(), e.body().to_string()),
        };
        IdempotencyRecord {
            channel: request.channel.clone(),
            key: key.clone(),
            request_hash: hash.clone(),
            status_code,
            body,
        }
    });
    let settlement = Settlement {
        order_id: invoice.order_id.clone(),
        customer_id: invoice.customer.id.clone(),
        invoice: serde_json::to_value(&*invoice).map_err(|e| OrderError::InvalidRequest(e.to_string()))?,
        transaction_id: invoice.payment.transaction_id.clone(),
        attempts: outcome.attempts,
        failure,
        events: events::outbox_events(invoice, &pipeline.config.pseudonym_key),
        idempotency,
    };
    if let Err(e) = pipeline.store.run(move |c| orders::settle(c, &settlement)).await {
        // Charged (maybe) but not recorded: the order stays PENDING with its
        // intent, and reconciliation settles it from the gateway's ledger.
        tracing::error!(order_id = %invoice.order_id, error = %e, "settlement failed; reconciliation will finish it");
        return Err(unavailable(Stage::Payment, e));
    }
    answer
}
