//! The envelopes of an order's three events, from its invoice: what stage 5
//! of the saga writes to the outbox in the order's own transaction
//! ([`outbox_events`]), and what the dispatcher builds at delivery for
//! audit and analytics ([`envelope_from_invoice`]): those are derived from
//! the invoice, which the order stores anyway, so their rows hold no
//! envelope. Delivery happens later ([`super::dispatcher`]), never on the
//! order's path.

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::clock::{now_rfc3339, rfc3339_of_ms};
use crate::domain::customer::{AccountStatus, Tier};
use crate::domain::invoice::{
    EventRef, Invoice, InvoiceAllocation, InvoiceDiscount, InvoiceItem, InvoicePayment, SkippedRule, Timings,
};
use crate::domain::status::{EventKind, OrderStatus};
use crate::store::orders::{EventBody, NewEvent};

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
#[derive(Serialize)]
struct Envelope<'a, P> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: EventKind,
    order_id: &'a str,
    channel: &'a str,
    occurred_at: &'a str,
    payload: P,
}

fn envelope(
    id: &str,
    kind: EventKind,
    order_id: &str,
    channel: &str,
    occurred_at: &str,
    payload: impl Serialize,
) -> String {
    let envelope = Envelope { id, kind, order_id, channel, occurred_at, payload };
    serde_json::to_string(&envelope).expect("an envelope always serialises (no maps with non-string keys)")
}

/// Everything that happened to the order (no payment token, no contact data).
#[derive(Serialize)]
struct AuditPayload<'a> {
    order_id: &'a str,
    status: OrderStatus,
    channel: &'a str,
    customer: AuditCustomer<'a>,
    items: &'a [InvoiceItem],
    currency: &'a str,
    subtotal_cents: u64,
    discounts: &'a [InvoiceDiscount],
    discount_cents: u64,
    total_cents: u64,
    allocations: &'a [InvoiceAllocation],
    payment: &'a InvoicePayment,
    skipped_rules: &'a [SkippedRule],
    timings_ms: &'a Timings,
    created_at: &'a str,
}

#[derive(Serialize)]
struct AuditCustomer<'a> {
    id: &'a str,
    tier: Tier,
    status: AccountStatus,
}

impl<'a> AuditPayload<'a> {
    fn of(invoice: &'a Invoice) -> Self {
        AuditPayload {
            order_id: &invoice.order_id,
            status: invoice.status,
            channel: &invoice.channel,
            customer: AuditCustomer {
                id: &invoice.customer.id,
                tier: invoice.customer.tier,
                status: invoice.customer.status,
            },
            items: &invoice.items,
            currency: &invoice.currency,
            subtotal_cents: invoice.subtotal_cents,
            discounts: &invoice.discounts,
            discount_cents: invoice.discount_cents,
            total_cents: invoice.total_cents,
            allocations: &invoice.allocations,
            payment: &invoice.payment,
            skipped_rules: &invoice.skipped_rules,
            timings_ms: &invoice.timings_ms,
            created_at: &invoice.created_at,
        }
    }
}

/// No personal data: no name, email, phone, location or payment token; the
/// customer only as a pseudonym.
#[derive(Serialize)]
struct AnalyticsPayload<'a> {
    status: OrderStatus,
    channel: &'a str,
    customer: String,
    tier: Tier,
    items: Vec<AnalyticsItem<'a>>,
    currency: &'a str,
    subtotal_cents: u64,
    discount_cents: u64,
    total_cents: u64,
    discounts: Vec<AnalyticsDiscount<'a>>,
    warehouses: Vec<&'a str>,
    payment_attempts: u32,
    created_at: &'a str,
}

#[derive(Serialize)]
struct AnalyticsItem<'a> {
    sku: &'a str,
    category: &'a str,
    quantity: u32,
    unit_price_cents: u64,
}

#[derive(Serialize)]
struct AnalyticsDiscount<'a> {
    rule: &'a str,
    module: &'a str,
    version: &'a str,
    variant: Option<&'a str>,
    /// The canary that granted the line, when a canary call did.
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<&'a str>,
    amount_cents: u64,
}

impl<'a> AnalyticsPayload<'a> {
    fn of(invoice: &'a Invoice, pseudonym_key: &[u8]) -> Self {
        AnalyticsPayload {
            status: invoice.status,
            channel: &invoice.channel,
            customer: pseudonym(pseudonym_key, &invoice.customer.id),
            tier: invoice.customer.tier,
            items: invoice
                .items
                .iter()
                .map(|i| AnalyticsItem {
                    sku: &i.sku,
                    category: &i.category,
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                })
                .collect(),
            currency: &invoice.currency,
            subtotal_cents: invoice.subtotal_cents,
            discount_cents: invoice.discount_cents,
            total_cents: invoice.total_cents,
            discounts: invoice
                .discounts
                .iter()
                .map(|d| AnalyticsDiscount {
                    rule: &d.rule,
                    module: &d.module,
                    version: &d.version,
                    variant: d.variant.as_deref(),
                    canary: d.canary.as_deref(),
                    amount_cents: d.amount_cents,
                })
                .collect(),
            warehouses: invoice.allocations.iter().map(|a| a.warehouse_id.as_str()).collect(),
            payment_attempts: invoice.payment.attempts,
            created_at: &invoice.created_at,
        }
    }
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
        &now_rfc3339(),
        json!({ "order_id": order_id, "customer_id": customer_id, "total_cents": total_cents, "fraud_review": review }),
    )
}

/// The outbox rows of a settled order: audit and analytics ready to go,
/// built at delivery from the stored invoice ([`envelope_from_invoice`]);
/// fraud waiting for the verdict of the checks that run after the answer.
pub fn outbox_events(invoice: &Invoice) -> Vec<NewEvent> {
    invoice
        .events
        .iter()
        .map(|event| NewEvent {
            id: event.id.clone(),
            kind: event.kind,
            body: match event.kind {
                EventKind::Audit | EventKind::Analytics => EventBody::FromInvoice,
                EventKind::Fraud => EventBody::AwaitingVerdict,
            },
        })
        .collect()
}

/// An order's stored invoice, read back for its envelopes (once for all of
/// them: [`envelope_from_invoice`] takes what this returns).
pub fn read_invoice(invoice: &str) -> Result<Invoice, EnvelopeError> {
    serde_json::from_str(invoice).map_err(|e| EnvelopeError::Invoice(e.to_string()))
}

/// The audit or analytics envelope of event `id`, from its order's stored
/// invoice (read back by [`read_invoice`]) and the time the event was
/// written (`created_ms`): the same bytes however often it is built, so a
/// delivery repeated after a crash repeats the first one.
pub fn envelope_from_invoice(
    id: &str,
    kind: EventKind,
    invoice: &Invoice,
    created_ms: i64,
    pseudonym_key: &[u8],
) -> Result<String, EnvelopeError> {
    let occurred_at = rfc3339_of_ms(created_ms);
    let (order_id, channel) = (&invoice.order_id, &invoice.channel);
    Ok(match kind {
        EventKind::Audit => envelope(id, kind, order_id, channel, &occurred_at, AuditPayload::of(invoice)),
        EventKind::Analytics => {
            envelope(id, kind, order_id, channel, &occurred_at, AnalyticsPayload::of(invoice, pseudonym_key))
        }
        EventKind::Fraud => return Err(EnvelopeError::NotFromInvoice(kind)),
    })
}

/// Why an envelope could not be built at delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the order's stored invoice does not read back: {0}")]
    Invoice(String),
    #[error("the order's stored invoice is missing")]
    NoInvoice,
    #[error("a {0} event is not built from the invoice")]
    NotFromInvoice(EventKind),
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

    /// A stored invoice as the settlement writes it (with the customer's
    /// name and where it ships: personal data analytics must not carry).
    const STORED: &str = r#"{"order_id":"ord_1","status":"CONFIRMED","channel":"web",
        "customer":{"id":"C-1001","name":"Lena Ortiz","tier":"GOLD","status":"ACTIVE"},
        "items":[{"sku":"TV-1","name":"TV","category":"electronics","quantity":2,"unit_price_cents":5000,"line_total_cents":10000}],
        "currency":"USD","subtotal_cents":10000,
        "discounts":[{"rule":"gold","module":"gold.wasm","version":"1.0.0","digest":"sha256:00","variant":null,"description":"Gold","amount_cents":1000}],
        "discount_cents":1000,"total_cents":9000,
        "allocations":[{"warehouse_id":"WH-1","warehouse_name":"One","distance_km":1.5,"lines":[{"sku":"TV-1","quantity":2}]}],
        "payment":{"status":"CAPTURED","transaction_id":"txn_1","attempts":1,"gateway":"sandbox"},
        "events":[],"timings_ms":{"validate":0.1,"cart":0.1,"discount":0.2,"inventory":0.3,"payment":0.4,"total":1.2},
        "created_at":"2026-11-29T10:00:00.123Z","ship_to":{"lat":12.97,"lon":77.59}}"#;

    #[test]
    fn envelopes_built_at_delivery_are_the_same_bytes_every_time() {
        let at = 1_764_410_400_123;
        let stored = read_invoice(STORED).unwrap();
        let audit = envelope_from_invoice("evt_a", EventKind::Audit, &stored, at, b"k").unwrap();
        let read_again = read_invoice(STORED).unwrap();
        assert_eq!(audit, envelope_from_invoice("evt_a", EventKind::Audit, &read_again, at, b"k").unwrap());
        let audit: Value = serde_json::from_str(&audit).unwrap();
        assert_eq!(audit["id"], "evt_a");
        assert_eq!(audit["type"], "audit");
        assert_eq!(audit["order_id"], "ord_1");
        assert_eq!(audit["channel"], "web");
        assert_eq!(audit["occurred_at"], "2025-11-29T10:00:00.123Z");
        assert_eq!(audit["payload"]["total_cents"], 9000);
        assert_eq!(audit["payload"]["customer"], json!({"id": "C-1001", "tier": "GOLD", "status": "ACTIVE"}));
        assert_eq!(audit["payload"]["payment"]["transaction_id"], "txn_1");
        assert!(audit["payload"].get("ship_to").is_none());

        let analytics = envelope_from_invoice("evt_b", EventKind::Analytics, &stored, at, b"k").unwrap();
        for personal in ["C-1001", "Lena", "12.97", "77.59"] {
            assert!(!analytics.contains(personal), "{personal} in {analytics}");
        }
        let analytics: Value = serde_json::from_str(&analytics).unwrap();
        assert_eq!(analytics["payload"]["customer"], pseudonym(b"k", "C-1001"));
        assert_eq!(analytics["payload"]["warehouses"], json!(["WH-1"]));
        assert_eq!(
            analytics["payload"]["items"],
            json!([{"sku": "TV-1", "category": "electronics", "quantity": 2, "unit_price_cents": 5000}])
        );
    }

    #[test]
    fn an_unreadable_invoice_or_a_fraud_event_is_refused() {
        let bad = read_invoice("{").unwrap_err();
        assert!(matches!(bad, EnvelopeError::Invoice(_)), "{bad}");
        let fraud =
            envelope_from_invoice("evt_c", EventKind::Fraud, &read_invoice(STORED).unwrap(), 0, b"k").unwrap_err();
        assert_eq!(fraud, EnvelopeError::NotFromInvoice(EventKind::Fraud));
    }
}
