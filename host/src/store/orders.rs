//! Orders and their saga state: the records of holds, payments,
//! idempotency keys and the order's events, shared by both back-ends
//! (`store::sqlite::orders` and `store::postgres::orders` hold the SQL).
//! Each write operation is one store command (a savepoint of the SQLite
//! writer's batch, or one PostgreSQL transaction), so an order is always in
//! exactly one durable state:
//!
//! The order's own path is two atomic phases around the gateway (the shape
//! of Stripe's idempotency keys: a transaction only where a foreign call
//! forces one): phase 1 (`reserve` with its intent: key claim, order, holds,
//! payment intent and draft invoice), the gateway's charge, phase 2
//! (`settle`: outcome, stock, events and the key's answer). `record_intent`
//! on its own serves tools and orders reserved without an intent.
//!
//! ```text
//! reserve ──► PENDING (stock held, key claimed) ──record_intent──► PENDING + payment INTENT + draft invoice
//!    │  └──────────── reserve with its intent (phase 1, the order path) ────────────┘│          │
//!    │                 │                                              │   mark_payment_pending (outcome unknown)
//!    │         cancel / discard                                       │          ▼
//!    │                 │                                              │   PENDING + INTENT with resolve_after_ms:
//!    │                 │                                              │   stock held, the key answers 202 with the
//!    │                 │                                              │   PAYMENT_PENDING invoice; the reconciler's
//!    │                 │                                              │          │
//!    │                 │                                              ├──────────┘
//!    │                 │                                     settle (phase 2: CONFIRMED | PAYMENT_FAILED)
//!    ▼                 ▼                                              ▼
//!  nothing    CANCELLED (or nothing), key free      CONFIRMED (stock taken) | PAYMENT_FAILED (stock released);
//!                                                   the key's answer stored; events in the outbox
//! ```
//!
//! An order answered PAYMENT_PENDING stays `PENDING` in `orders.status`:
//! what tells it apart is its payment's `resolve_after_ms`, and its stored
//! invoice says PAYMENT_PENDING to whoever reads it.

use serde_json::Value;

use crate::domain::status::{EventKind, OrderStatus, OutboxState};

/// Units of one sku held from one warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub warehouse_id: String,
    pub sku: String,
    pub quantity: u32,
}

/// A channel's `Idempotency-Key` and the hash of the request body it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    pub channel: String,
    pub key: String,
    pub request_hash: String,
}

/// An order about to be created PENDING with its stock held.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_id: String,
    pub customer_id: String,
    pub channel: String,
    pub currency: String,
    pub holds: Vec<Hold>,
    /// Recorded with the order, so that every retry with the key finds it.
    pub claim: Option<KeyClaim>,
    /// The payment intent with the draft invoice, recorded in the same
    /// command (phase 1); the order path always has one.
    pub intent: Option<PaymentIntent>,
    /// What the warehouse selector saw (`pipeline::selector_input`), kept on
    /// the order's row for replay (`orders.selector_input`, schema version 15).
    pub selector_input: Option<String>,
}

impl NewOrder {
    /// The order's holds as its row keeps them (`orders.holds`, schema
    /// version 12, both back-ends): a JSON array of `[warehouse_id, sku,
    /// quantity]`, one per (warehouse, sku) (several holds of one pair are
    /// added up), sorted by warehouse then sku byte-wise: the order every
    /// operation locks stock rows in on PostgreSQL. Their state follows the
    /// order's status: PENDING holds them, CONFIRMED took them out of
    /// stock, PAYMENT_FAILED and CANCELLED gave them back.
    pub(super) fn holds_text(&self) -> String {
        let mut merged = std::collections::BTreeMap::<(&str, &str), u64>::new();
        for hold in &self.holds {
            *merged.entry((hold.warehouse_id.as_str(), hold.sku.as_str())).or_default() += u64::from(hold.quantity);
        }
        let rows: Vec<(&str, &str, u64)> = merged.into_iter().map(|((w, s), q)| (w, s, q)).collect();
        serde_json::to_string(&rows).expect("a list of strings and numbers serialises")
    }
}

/// The gateway is about to be asked for `amount_cents`: with it, the draft
/// invoice reconciliation settles from and the payment token it re-drives
/// the payment with after a crash (erased at settlement).
#[derive(Clone)]
pub struct PaymentIntent {
    pub order_id: String,
    pub draft_invoice: String,
    pub idempotency_key: String,
    pub gateway: String,
    pub amount_cents: u64,
    pub token: String,
}

// Manual: the payment token never reaches a log line.
impl std::fmt::Debug for PaymentIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentIntent")
            .field("order_id", &self.order_id)
            .field("idempotency_key", &self.idempotency_key)
            .field("gateway", &self.gateway)
            .field("amount_cents", &self.amount_cents)
            .finish_non_exhaustive()
    }
}

/// The outcome of trying to create an order and hold its stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// The stock moved since the plan was made: nothing was held.
    Shortfall {
        warehouse_id: String,
        sku: String,
    },
    /// Another request (another replica, or one before a crash) holds the
    /// idempotency key: nothing was written.
    KeyTaken,
}

/// An event to write to the outbox with the order's final state.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub kind: EventKind,
    pub body: EventBody,
}

/// What an outbox row holds until the event is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// The full envelope, ready to deliver.
    Envelope(String),
    /// Ready, built at delivery from the order's stored invoice (audit and
    /// analytics are derived from it): the writer stores the invoice once
    /// instead of once more per event.
    FromInvoice,
    /// Waits for the fraud verdict, which brings its envelope.
    AwaitingVerdict,
}

impl EventBody {
    /// The row's `envelope` and `state`.
    pub(super) fn stored(&self) -> (Option<&str>, OutboxState) {
        match self {
            EventBody::Envelope(envelope) => (Some(envelope), OutboxState::Ready),
            EventBody::FromInvoice => (None, OutboxState::Ready),
            EventBody::AwaitingVerdict => (None, OutboxState::AwaitingVerdict),
        }
    }
}

/// What a channel was (or will be) answered for an order: stored with the
/// order's idempotency key and replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status_code: u16,
    pub body: String,
}

/// What a settlement records as the answer for the order's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettledAnswer {
    /// `201` with the stored invoice as the body: the invoice is kept once
    /// (in `orders.invoice`) and the key's replay reads it from there.
    Invoice,
    /// Any other answer (a `402` with the failed order), stored as given.
    Other(Answer),
}

impl SettledAnswer {
    /// The status code and the body to store with the key: no body for
    /// [`SettledAnswer::Invoice`] (the invoice is the body).
    pub fn stored(&self) -> (u16, Option<&str>) {
        match self {
            SettledAnswer::Invoice => (201, None),
            SettledAnswer::Other(answer) => (answer.status_code, Some(answer.body.as_str())),
        }
    }
}

/// The final state of a paid or failed order.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub order_id: String,
    pub customer_id: String,
    /// `Confirmed` or `PaymentFailed`.
    pub status: OrderStatus,
    /// The invoice as stored and served (`GET /v1/orders/{id}`).
    pub invoice: String,
    pub transaction_id: Option<String>,
    pub attempts: u32,
    pub failure: Option<String>,
    pub events: Vec<NewEvent>,
    /// The answer for the order's idempotency key, when it has one.
    pub answer: SettledAnswer,
}

/// An order as stored.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    pub id: String,
    pub customer_id: String,
    pub channel: String,
    pub status: OrderStatus,
    pub total_cents: u64,
    pub currency: String,
    pub created_at: String,
    /// The invoice text (the draft while PENDING).
    pub invoice: Option<String>,
    pub fraud_review: Option<Value>,
    /// The row's holds (see [`NewOrder::holds_text`]): what the warehouse
    /// selector's plan allocated.
    pub holds: Option<String>,
    /// What its warehouse selector saw (`pipeline::selector_input`; absent
    /// for orders placed before schema version 15).
    pub selector_input: Option<String>,
}

/// A payment intent left by an order that never settled.
#[derive(Clone)]
pub struct OpenIntent {
    pub order_id: String,
    pub idempotency_key: String,
    pub amount_cents: u64,
    pub currency: String,
    /// The payment token, to re-drive the payment (absent for intents
    /// recorded before tokens were kept).
    pub token: Option<String>,
    /// The order was answered PAYMENT_PENDING (its payment's outcome was
    /// unknown when the answer was due): the reconciler resolves it, it
    /// is never charged again blindly.
    pub outcome_unknown: bool,
}

// Manual: the payment token never reaches a log line.
impl std::fmt::Debug for OpenIntent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenIntent")
            .field("order_id", &self.order_id)
            .field("idempotency_key", &self.idempotency_key)
            .field("amount_cents", &self.amount_cents)
            .field("outcome_unknown", &self.outcome_unknown)
            .finish_non_exhaustive()
    }
}

/// An order whose payment outcome is unknown when its answer is due: it is
/// answered PAYMENT_PENDING with `invoice` and handed to the reconciler,
/// which looks at it again at `resolve_after_ms` (ms since the epoch).
#[derive(Debug, Clone)]
pub struct PendingPayment {
    pub order_id: String,
    /// The invoice as answered (status PAYMENT_PENDING).
    pub invoice: String,
    pub attempts: u32,
    pub resolve_after_ms: i64,
}

/// An order answered PAYMENT_PENDING and not settled yet (operators' list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPaymentRow {
    pub order_id: String,
    pub customer_id: String,
    pub channel: String,
    pub amount_cents: u64,
    pub currency: String,
    pub created_at: String,
    pub attempts: u32,
    /// When the reconciler looks at it next (ms since the epoch).
    pub resolve_after_ms: i64,
}

/// What an idempotency key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRecord {
    /// The order finished: its answer.
    Answered { request_hash: String, answer: Answer },
    /// An order was created with the key and has not finished.
    InFlight { request_hash: String, order_id: String },
}

/// An order whose fraud checks have not run, with its waiting fraud events.
#[derive(Debug, Clone)]
pub struct AwaitingReview {
    pub order: StoredOrder,
    pub events: Vec<WaitingEvent>,
}

/// A fraud event waiting for its order's verdict: its place in the outbox,
/// by which the verdict readies it (the outbox's primary key: the event id
/// has no index of its own since schema version 16), and its id, which
/// its envelope carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WaitingEvent {
    pub seq: i64,
    pub id: String,
}

/// A fraud verdict to store.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub order_id: String,
    pub review: String,
    pub action: String,
    /// The fraud events, now complete: (the event's `seq`, its envelope).
    pub envelopes: Vec<(i64, String)>,
}
