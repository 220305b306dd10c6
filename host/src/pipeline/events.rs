//! Stage 5: the order's three events, built from its invoice and written to
//! the outbox in the order's own transaction. Delivery happens later, in
//! `crate::events`, never on the order's path.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::domain::invoice::{EventRef, Invoice};
use crate::domain::status::EventKind;
use crate::store::now_rfc3339;
use crate::store::orders::NewEvent;

/// A fresh event id.
pub fn event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// The ids of an order's three events, chosen before the invoice is final
/// so that the invoice can list them.
pub fn event_refs() -> Vec<EventRef> {
    EventKind::ALL.iter().map(|&kind| EventRef { kind, id: event_id(), status: "QUEUED".into() }).collect()
}

/// The customer as analytics sees them: a keyed pseudonym, stable for one
/// key, that cannot be turned back into the id without the key.
pub fn pseudonym(key: &[u8], customer_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(customer_id.as_bytes());
    format!("cus_{}", hex::encode(&mac.finalize().into_bytes()[..16]))
}

/// The envelope every event has: `{id, type, order_id, channel, occurred_at, payload}`.
fn envelope(id: &str, kind: EventKind, order_id: &str, channel: &str, payload: Value) -> String {
    json!({
        "id": id, "type": kind, "order_id": order_id, "channel": channel,
        "occurred_at": now_rfc3339(), "payload": payload,
    })
    .to_string()
}

/// Everything that happened to the order (no payment token, no contact data).
fn audit_payload(invoice: &Invoice) -> Value {
    json!({
        "order_id": invoice.order_id,
        "status": invoice.status,
        "channel": invoice.channel,
        "customer": { "id": invoice.customer.id, "tier": invoice.customer.tier, "status": invoice.customer.status },
        "items": invoice.items,
        "currency": invoice.currency,
        "subtotal_cents": invoice.subtotal_cents,
        "discounts": invoice.discounts,
        "discount_cents": invoice.discount_cents,
        "total_cents": invoice.total_cents,
        "allocations": invoice.allocations,
        "payment": invoice.payment,
        "skipped_rules": invoice.skipped_rules,
        "timings_ms": invoice.timings_ms,
        "created_at": invoice.created_at,
    })
}

/// No personal data: no name, email, phone, location or payment token; the
/// customer only as a pseudonym.
fn analytics_payload(invoice: &Invoice, pseudonym_key: &[u8]) -> Value {
    json!({
        "status": invoice.status,
        "channel": invoice.channel,
        "customer": pseudonym(pseudonym_key, &invoice.customer.id),
        "tier": invoice.customer.tier,
        "items": invoice.items.iter().map(|i| json!({
            "sku": i.sku, "category": i.category, "quantity": i.quantity, "unit_price_cents": i.unit_price_cents,
        })).collect::<Vec<_>>(),
        "currency": invoice.currency,
        "subtotal_cents": invoice.subtotal_cents,
        "discount_cents": invoice.discount_cents,
        "total_cents": invoice.total_cents,
        "discounts": invoice.discounts.iter().map(|d| json!({
            "rule": d.rule, "module": d.module, "version": d.version, "variant": d.variant, "amount_cents": d.amount_cents,
        })).collect::<Vec<_>>(),
        "warehouses": invoice.allocations.iter().map(|a| a.warehouse_id.as_str()).collect::<Vec<_>>(),
        "payment_attempts": invoice.payment.attempts,
        "created_at": invoice.created_at,
    })
}

/// The fraud event, once the verdict is known.
pub fn fraud_envelope(
    id: &str,
    order_id: &str,
    channel: &str,
    customer_id: &str,
    total_cents: u64,
    review: &Value,
) -> String {
    envelope(
        id,
        EventKind::Fraud,
        order_id,
        channel,
        json!({ "order_id": order_id, "customer_id": customer_id, "total_cents": total_cents, "fraud_review": review }),
    )
}

/// The outbox rows of a settled order: audit and analytics ready to go,
/// fraud waiting for the verdict of the checks that run after the answer.
pub fn outbox_events(invoice: &Invoice, pseudonym_key: &[u8]) -> Vec<NewEvent> {
    let (order_id, channel) = (&invoice.order_id, &invoice.channel);
    invoice
        .events
        .iter()
        .map(|event| NewEvent {
            id: event.id.clone(),
            kind: event.kind,
            envelope: match event.kind {
                EventKind::Audit => Some(envelope(&event.id, event.kind, order_id, channel, audit_payload(invoice))),
                EventKind::Analytics => {
                    Some(envelope(&event.id, event.kind, order_id, channel, analytics_payload(invoice, pseudonym_key)))
                }
                EventKind::Fraud => None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_hide_the_id() {
        let a = pseudonym(b"k1", "C-1001");
        assert_eq!(a, pseudonym(b"k1", "C-1001"));
        assert_ne!(a, pseudonym(b"k2", "C-1001"));
        assert_ne!(a, pseudonym(b"k1", "C-1002"));
        assert!(!a.contains("1001"));
    }
}
