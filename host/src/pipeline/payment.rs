//! Stage 4 and the settlement: record the intent (with the draft invoice
//! reconciliation would settle from), charge through the gateway within the
//! retry budget (one idempotency key per order), decide what that came to
//! (resolving an unknown outcome with the gateway), then settle the order
//! in one command with its events and the answer for the request's
//! idempotency key. A payment that certainly charged nothing releases the
//! stock and is recorded as a `PAYMENT_FAILED` order; one whose outcome is
//! still unknown at the answer deadline is answered `202 PAYMENT_PENDING`
//! with its stock held, and the reconciler settles it (see `recovery`).
//!
//! Spans: `payment` (the attempts and the decision), `invoice` (the final
//! invoice, its events and the stored answer, made), `settle` (the one
//! store command; or the hand-over to the reconciler).

use std::time::Instant;

use tracing::Instrument as _;

use super::validate::unavailable;
use super::{OrderError, OrderRequest, Pipeline, Placed, Stage, ms};
use crate::clock::now_ms;
use crate::domain::invoice::Invoice;
use crate::domain::status::{OrderStatus, PaymentStatus};
use crate::events::envelope;
use crate::payment::{ChargeRequest, Decision, charge_with_retries, decide};
use crate::store::orders::{Answer, PaymentIntent, PendingPayment, SettledAnswer, Settlement};
use crate::store::{Store, StoreError};

/// How long after an unknown outcome the reconciler first asks the gateway again.
pub(crate) const FIRST_RESOLUTION_AFTER_MS: i64 = 1_000;

/// The gateway idempotency key of an order: one per order, the same on
/// every attempt and at reconciliation.
pub fn payment_key(order_id: &str) -> String {
    format!("pay_{order_id}")
}

fn serialise(invoice: &Invoice) -> String {
    serde_json::to_string(invoice).expect("an invoice always serialises (no maps with non-string keys)")
}

/// Settles `invoice` as the gateway answered (`Ok(transaction id)` or
/// `Err(reason)`): the settlement to store, and what the channel is told.
/// A `402`'s body names `request_id`, the request it answers (none when
/// the reconciler settles): the stored answer is that very body, so that
/// an idempotent replay repeats the first answer byte for byte.
pub(super) fn finish(
    mut invoice: Invoice,
    charged: Result<String, String>,
    attempts: u32,
    request_id: Option<&str>,
) -> (Settlement, Result<Placed, OrderError>) {
    invoice.payment.attempts = attempts;
    let failure = match charged {
        Ok(transaction_id) => {
            invoice.status = OrderStatus::Confirmed;
            invoice.payment.status = PaymentStatus::Captured;
            invoice.payment.transaction_id = Some(transaction_id);
            None
        }
        Err(reason) => {
            invoice.status = OrderStatus::PaymentFailed;
            invoice.payment.status = PaymentStatus::Failed;
            invoice.payment.failure = Some(reason.clone());
            Some(reason)
        }
    };
    let json = serialise(&invoice);
    let events = envelope::outbox_events(&invoice);
    let settlement = |answer: SettledAnswer, invoice: &Invoice, json: String| Settlement {
        order_id: invoice.order_id.clone(),
        customer_id: invoice.customer.id.clone(),
        status: invoice.status,
        invoice: json,
        transaction_id: invoice.payment.transaction_id.clone(),
        attempts,
        failure: failure.clone(),
        events,
        answer,
    };
    match &failure {
        None => {
            let stored = settlement(SettledAnswer::Invoice, &invoice, json.clone());
            (stored, Ok(Placed { invoice, json }))
        }
        Some(reason) => {
            let error = OrderError::PaymentFailed {
                reason: reason.clone(),
                order: Box::new(invoice.clone()),
                request_id: request_id.map(str::to_owned),
            };
            let answer = Answer { status_code: error.status(), body: error.body().to_string() };
            (settlement(SettledAnswer::Other(answer), &invoice, json), Err(error))
        }
    }
}

/// Hands an order whose payment outcome is unknown to the reconciler: its
/// invoice says `PAYMENT_PENDING` (what `GET /v1/orders/{id}` and a retry
/// with its idempotency key answer, with `202`), its stock stays held, and
/// no event goes out until it settles.
pub(super) async fn hand_to_reconciler(
    store: &Store,
    mut invoice: Invoice,
    attempts: u32,
    reason: &str,
) -> Result<Placed, StoreError> {
    invoice.status = OrderStatus::PaymentPending;
    invoice.payment.status = PaymentStatus::Pending;
    invoice.payment.attempts = attempts;
    let json = serialise(&invoice);
    store
        .mark_payment_pending(PendingPayment {
            order_id: invoice.order_id.clone(),
            invoice: json.clone(),
            attempts,
            resolve_after_ms: now_ms() + FIRST_RESOLUTION_AFTER_MS,
        })
        .await?;
    tracing::warn!(order_id = %invoice.order_id, reason, "payment outcome unknown at the answer deadline; answered PAYMENT_PENDING, the reconciler will settle it");
    Ok(Placed { invoice, json })
}

/// The payment intent of a PENDING invoice. The draft invoice and the
/// payment token let reconciliation finish the order after a crash between
/// intent and settlement (re-driving the payment with the same gateway
/// key); the token is erased at settlement.
pub(super) fn intent_of(invoice: &Invoice, gateway: &str, token: &str) -> PaymentIntent {
    PaymentIntent {
        order_id: invoice.order_id.clone(),
        draft_invoice: serialise(invoice),
        idempotency_key: payment_key(&invoice.order_id),
        gateway: gateway.to_string(),
        amount_cents: invoice.total_cents,
        token: token.to_string(),
    }
}

/// Charges the order whose intent phase 1 recorded, then settles it
/// (phase 2: one store command), or hands it to the reconciler.
pub(super) async fn pay_and_settle(
    pipeline: &Pipeline,
    mut invoice: Invoice,
    request: &OrderRequest,
    stage_started: Instant,
    order_started: Instant,
) -> Result<Placed, OrderError> {
    let key = payment_key(&invoice.order_id);
    let store = &pipeline.store;
    // The answer is due one stage timeout after the payment stage began:
    // the retries stop within their budget, and what is left of it goes to
    // resolving an unknown outcome.
    let deadline = tokio::time::Instant::from_std(stage_started) + pipeline.config.stage_timeout;
    let charge = ChargeRequest {
        idempotency_key: key,
        order_id: invoice.order_id.clone(),
        amount_cents: invoice.total_cents,
        currency: invoice.currency.clone(),
        token: request.payment_token.clone(),
        request_id: request.request_id.clone(),
        traceparent: request.traceparent.clone(),
    };
    let charged_and_decided = async {
        let outcome = charge_with_retries(pipeline.gateway.as_ref(), &charge, &pipeline.config.retry, deadline).await;
        let attempts = outcome.attempts;
        if let Err(error) = &outcome.result {
            pipeline.metrics.payment_gateway_error(error.kind());
            // Not retryable and not the customer's decline: a certificate the
            // host refuses. Operators must hear of it; no order can pay.
            if matches!(error, crate::payment::GatewayError::NotCharged { retryable: false, .. }) {
                tracing::error!(order_id = %invoice.order_id, error = %error, "the payment gateway cannot be used; nothing was sent");
            }
        }
        let decision =
            decide(pipeline.gateway.as_ref(), &charge.idempotency_key, &charge.trace(), outcome, deadline).await;
        (attempts, decision)
    };
    let (attempts, decision) = charged_and_decided.instrument(tracing::debug_span!("payment")).await;
    invoice.timings_ms.payment = ms(stage_started);
    invoice.timings_ms.total = ms(order_started);
    let order_id = invoice.order_id.clone();
    let charged = match decision {
        Decision::Charged(charge) => Ok(charge.transaction_id),
        Decision::NotCharged(reason) => Err(reason),
        Decision::Unknown(reason) => {
            let handed = hand_to_reconciler(store, invoice, attempts, &reason);
            return handed.instrument(tracing::debug_span!("settle")).await.map_err(|e| {
                // Left PENDING with its intent: the janitor re-drives it.
                tracing::error!(%order_id, error = %e, "could not record the pending payment; reconciliation will finish it");
                unavailable(Stage::Payment, e)
            });
        }
    };
    let (settlement, answer) =
        tracing::debug_span!("invoice").in_scope(|| finish(invoice, charged, attempts, request.request_id.as_deref()));
    if let Err(e) = store.settle(settlement).instrument(tracing::debug_span!("settle")).await {
        // Charged (maybe) but not recorded: the order stays PENDING with its
        // intent, and reconciliation settles it from the gateway's ledger.
        tracing::error!(%order_id, error = %e, "settlement failed; reconciliation will finish it");
        return Err(unavailable(Stage::Payment, e));
    }
    answer
}
