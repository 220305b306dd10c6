//! The outbox dispatcher: delivers events after the answer. A sink that is
//! down or slow only delays its events (per-event backoff); orders never
//! wait for it. With a sink that keeps a position (the JSON Lines files),
//! each event is delivered exactly once (see `sink`); with a sink that
//! deduplicates by event id (NATS JetStream), a batch delivered again after
//! a crash or a lost acknowledgement is dropped by the broker; with Kafka it
//! is stored again and consumers deduplicate by the `event-id` header.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use std::collections::HashMap;

use super::envelope::{EnvelopeError, envelope_from_invoice, read_invoice};
use super::{EventSink, SinkEvent};
use crate::clock::now_ms;
use crate::domain::status::EventKind;
use crate::store::outbox::{DueBody, DueEvent};
use crate::store::{Store, StoreError};

/// Events read per pass.
const BATCH: usize = 1024;
/// How long the dispatcher lets ready events gather before a pass.
const GATHER: Duration = Duration::from_millis(20);
/// Longest wait between two attempts at one event.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the dispatcher needs: the outbox, the key of customer pseudonyms
/// (analytics envelopes are built at delivery), and the signal that events
/// are ready.
#[derive(Clone)]
pub struct Outbox {
    pub store: Store,
    pub pseudonym_key: Arc<[u8]>,
    pub ready: Arc<Notify>,
}

/// Delivers every due event once; returns how many were delivered.
pub async fn deliver_due(outbox: &Outbox, sink: &Arc<dyn EventSink>) -> Result<usize, StoreError> {
    let store = &outbox.store;
    // One pass at a time: two passes would both read the same READY rows.
    let _pass = store.delivery_pass().await;
    let mut delivered = 0;
    loop {
        let due = store.due_events(now_ms(), BATCH).await?;
        if due.is_empty() {
            return Ok(delivered);
        }
        let mut progressed = false;
        // Each order's invoice is read back once for all its events of the pass.
        let mut invoices = Invoices::default();
        for &kind in EventKind::ALL {
            let mut batch: Vec<&DueEvent> = Vec::new();
            let mut events: Vec<SinkEvent> = Vec::new();
            for event in due.iter().filter(|e| e.kind == kind) {
                match sink_event(event, &mut invoices, &outbox.pseudonym_key) {
                    Ok(built) => {
                        batch.push(event);
                        events.push(built);
                    }
                    Err(e) => {
                        // Its order's invoice is unreadable: nothing to send.
                        // It waits (with backoff) for an operator, and the
                        // others go on.
                        let error = format!("cannot build the envelope: {e}");
                        let order_id = match &event.body {
                            DueBody::FromInvoice { order_id, .. } => order_id.as_str(),
                            DueBody::Envelope(_) => "",
                        };
                        tracing::error!(event_id = %event.id, order_id, %kind, %error, "event not delivered");
                        let next = now_ms() + backoff(event.attempts).as_millis() as i64;
                        store.mark_retry(vec![event.seq], error, next).await?;
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            let seqs: Vec<i64> = batch.iter().map(|e| e.seq).collect();
            match sink.deliver(kind, &events).await {
                Ok(position) => {
                    store.mark_delivered(seqs, position.clone()).await?;
                    if let Some(position) = &position {
                        sink.recorded(position);
                    }
                    delivered += batch.len();
                    progressed = true;
                }
                Err(e) => {
                    let attempts = batch.iter().map(|e| e.attempts).max().unwrap_or(0);
                    let backoff = backoff(attempts);
                    // The whole chain (`{:#}`): "connecting to NATS at …: connection refused".
                    let error = format!("{e:#}");
                    tracing::warn!(sink = sink.name(), %kind, %error, retry_in_ms = backoff.as_millis() as u64, "event delivery failed");
                    let next = now_ms() + backoff.as_millis() as i64;
                    store.mark_retry(seqs, error, next).await?;
                }
            }
        }
        if !progressed {
            return Ok(delivered);
        }
    }
}

/// How long to wait before attempt `attempts + 1` of an event.
fn backoff(attempts: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempts.min(16))).min(MAX_BACKOFF)
}

/// The invoices read back in one pass, by order id.
type Invoices<'a> = HashMap<&'a str, Result<crate::domain::invoice::Invoice, EnvelopeError>>;

/// The event as the sink gets it: its envelope, built now from the order's
/// invoice for audit and analytics (see [`super::envelope`]), read back
/// once per pass for both.
fn sink_event<'a>(
    event: &'a DueEvent,
    invoices: &mut Invoices<'a>,
    pseudonym_key: &[u8],
) -> Result<SinkEvent, EnvelopeError> {
    let envelope = match &event.body {
        DueBody::Envelope(envelope) => envelope.clone(),
        DueBody::FromInvoice { invoice: None, .. } => return Err(EnvelopeError::NoInvoice),
        DueBody::FromInvoice { order_id, invoice: Some(invoice), created_ms } => {
            let read = invoices.entry(order_id.as_str()).or_insert_with(|| read_invoice(invoice));
            let invoice = read.as_ref().map_err(Clone::clone)?;
            envelope_from_invoice(&event.id, event.kind, invoice, *created_ms, pseudonym_key)?
        }
    };
    Ok(SinkEvent { id: event.id.clone(), envelope })
}

/// Delivers events as they become ready, until `shutdown`; then one last pass.
pub async fn run_dispatcher(outbox: Outbox, sink: Arc<dyn EventSink>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = deliver_due(&outbox, &sink).await {
            tracing::warn!(error = %e, "event dispatch pass failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = outbox.ready.notified() => {
                // Let the events of the orders settling now join this pass:
                // each pass costs a write and an fsync per file and a store
                // command, whatever its size. Events are never on an
                // answer's path.
                tokio::time::sleep(GATHER).await;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    if let Err(e) = deliver_due(&outbox, &sink).await {
        tracing::warn!(error = %e, "final event dispatch pass failed; events go out after the next start");
    }
}
