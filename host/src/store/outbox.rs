//! The outbox: events written with their order, delivered after the answer.
//! A sink that keeps a position (the JSON Lines files: a byte offset) has
//! it recorded in the same transaction as the delivery marks, so a restart
//! resumes exactly where the last recorded delivery ended. These are the
//! records both back-ends deliver from (`store::sqlite::outbox`,
//! `store::postgres::outbox`).

use crate::domain::status::EventKind;

/// An event ready to deliver.
#[derive(Debug, Clone)]
pub struct DueEvent {
    pub seq: i64,
    pub id: String,
    pub kind: EventKind,
    pub body: DueBody,
    pub attempts: u32,
}

/// What a due event is delivered as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DueBody {
    /// The envelope as written.
    Envelope(String),
    /// To build at delivery from the order's stored invoice (see
    /// `orders::EventBody::FromInvoice`); `invoice` is `None` only if the
    /// order's row is gone, which no operation does to a settled order.
    FromInvoice { order_id: String, invoice: Option<String>, created_ms: i64 },
}

impl DueBody {
    /// From a row's `envelope`, `order_id`, `created_ms` and the order's
    /// invoice (read only for a row without an envelope).
    pub(super) fn of(envelope: Option<String>, order_id: String, created_ms: i64, invoice: Option<String>) -> DueBody {
        match envelope {
            Some(envelope) => DueBody::Envelope(envelope),
            None => DueBody::FromInvoice { order_id, invoice, created_ms },
        }
    }
}

/// Where a sink's stream of one event type ends once a delivery is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkPosition {
    /// The sink and stream, e.g. `jsonl:audit`.
    pub stream: String,
    pub offset: u64,
}
