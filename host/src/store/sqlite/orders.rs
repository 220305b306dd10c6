//! Orders and their saga state on SQLite (the twin of `store::postgres::orders`;
//! the records and the state diagram are in `store::orders`). Each write
//! function is one store command: the writer runs it in a savepoint of its
//! batch, so an order is always in exactly one durable state.
//!
//! The functions here run SQL on a connection the store hands them: the
//! writer's (inside its transaction) or a reader's.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::super::StoreError;
use super::super::orders::{
    Answer, AwaitingReview, KeyRecord, NewEvent, NewOrder, OpenIntent, PaymentIntent, PendingPayment,
    PendingPaymentRow, ReserveOutcome, Settlement, StoredOrder, Verdict, WaitingEvent,
};
use crate::clock::now_rfc3339;
use crate::domain::status::{Channel, OrderStatus, PaymentStatus};

fn i64_of(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Conflict(format!("{what} does not fit in 63 bits")))
}

/// Creates the order as PENDING, claims its idempotency key and holds its
/// stock, all or nothing. The writer is the database's only writer and runs
/// one command at a time, so the checks below cannot go stale before the
/// writes; the conditional update and the CHECK constraints still make a
/// negative figure impossible whatever runs.
pub fn reserve(conn: &Connection, order: &NewOrder) -> Result<ReserveOutcome, StoreError> {
    if let Some(claim) = &order.claim {
        let taken = conn
            .prepare_cached("SELECT 1 FROM idempotency WHERE channel = ?1 AND key = ?2")?
            .exists(params![claim.channel, claim.key])?;
        if taken {
            return Ok(ReserveOutcome::KeyTaken);
        }
    }
    {
        let mut available =
            conn.prepare_cached("SELECT on_hand - reserved FROM stock WHERE warehouse_id = ?1 AND sku = ?2")?;
        for hold in &order.holds {
            let free: Option<i64> =
                available.query_row(params![hold.warehouse_id, hold.sku], |r| r.get(0)).optional()?;
            if free.unwrap_or(0) < i64::from(hold.quantity) {
                return Ok(ReserveOutcome::Shortfall {
                    warehouse_id: hold.warehouse_id.clone(),
                    sku: hold.sku.clone(),
                });
            }
        }
    }
    let now = now_rfc3339();
    // With its intent, the order row is written once, draft invoice and total included.
    let (draft_invoice, total_cents) = match &order.intent {
        Some(intent) => (Some(intent.draft_invoice.as_str()), i64_of(intent.amount_cents, "the amount")?),
        None => (None, 0),
    };
    conn.prepare_cached(
        "INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, created_at, updated_at, invoice,
                             holds, selector_input)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        order.order_id,
        order.customer_id,
        order.channel,
        OrderStatus::Pending.as_str(),
        total_cents,
        order.currency,
        now,
        draft_invoice,
        order.holds_text(),
        order.selector_input
    ])?;
    if let Some(claim) = &order.claim {
        conn.prepare_cached(
            "INSERT INTO idempotency (channel, key, request_hash, order_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![claim.channel, claim.key, claim.request_hash, order.order_id, now])?;
    }
    let mut hold_stock = conn.prepare_cached(
        "UPDATE stock SET reserved = reserved + ?3
         WHERE warehouse_id = ?1 AND sku = ?2 AND on_hand - reserved >= ?3",
    )?;
    for hold in &order.holds {
        if hold_stock.execute(params![hold.warehouse_id, hold.sku, hold.quantity])? == 0 {
            // Checked above; an error rolls the whole command back.
            return Err(StoreError::Conflict(format!("stock of {} in {} moved", hold.sku, hold.warehouse_id)));
        }
    }
    if let Some(intent) = &order.intent {
        insert_payment(conn, intent, &now)?;
    }
    Ok(ReserveOutcome::Reserved)
}

/// The stock an order's holds name, joined with the units held there: what
/// `release_holds` and `commit_holds` update. A PENDING order's holds are
/// its held units; the caller moves the order out of PENDING in the same
/// command, so they are counted once.
const HELD_UNITS: &str = "SELECT j.value ->> 0 AS warehouse_id, j.value ->> 1 AS sku, j.value ->> 2 AS quantity
     FROM orders o, json_each(o.holds) j WHERE o.id = ?1";

/// Gives back every unit an order holds.
fn release_holds(conn: &Connection, order_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "UPDATE stock SET reserved = reserved - h.quantity FROM ({HELD_UNITS}) h
         WHERE stock.warehouse_id = h.warehouse_id AND stock.sku = h.sku"
    ))?
    .execute([order_id])?;
    Ok(())
}

/// Takes every unit an order holds out of stock for good.
fn commit_holds(conn: &Connection, order_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "UPDATE stock SET reserved = reserved - h.quantity, on_hand = on_hand - h.quantity FROM ({HELD_UNITS}) h
         WHERE stock.warehouse_id = h.warehouse_id AND stock.sku = h.sku"
    ))?
    .execute([order_id])?;
    Ok(())
}

/// Frees an unfinished order's idempotency key: the request recorded no
/// answer, so the key may be used again.
fn free_key(conn: &Connection, order_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM idempotency WHERE order_id = ?1 AND status_code IS NULL")?.execute([order_id])?;
    Ok(())
}

/// Undoes a PENDING order that will not be paid: its stock is released, its
/// key freed, and it ends CANCELLED. Idempotent; a settled order is left alone.
pub fn cancel(conn: &Connection, order_id: &str, reason: &str) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE orders SET status = 'CANCELLED', invoice = json_object('reason', ?2), updated_at = ?3
             WHERE id = ?1 AND status = 'PENDING'",
        )?
        .execute(params![order_id, reason, now_rfc3339()])?;
    if changed > 0 {
        release_holds(conn, order_id)?;
        free_key(conn, order_id)?;
        conn.prepare_cached(
            "UPDATE payments SET status = 'FAILED', failure = ?2, token = NULL WHERE order_id = ?1 AND status = 'INTENT'",
        )?
            .execute(params![order_id, reason])?;
    }
    Ok(changed > 0)
}

/// Undoes a PENDING order refused before payment because of the request
/// itself (an invalid coupon): its stock is released and its rows removed,
/// so that the rejected request leaves nothing behind (docs/api.md: "a rejected
/// request writes nothing"). An order with a payment record, or no longer PENDING,
/// is left alone.
pub fn discard(conn: &Connection, order_id: &str) -> Result<bool, StoreError> {
    let pending = conn
        .prepare_cached(
            "SELECT 1 FROM orders o WHERE o.id = ?1 AND o.status = 'PENDING'
             AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id)",
        )?
        .exists([order_id])?;
    if pending {
        release_holds(conn, order_id)?;
        free_key(conn, order_id)?;
        conn.prepare_cached("DELETE FROM orders WHERE id = ?1")?.execute([order_id])?;
    }
    Ok(pending)
}

/// Records that the gateway is about to be asked for the intent's amount,
/// with the draft invoice reconciliation settles from: after this, a crash
/// is reconciled with the gateway. Refused unless the order is PENDING.
pub fn record_intent(conn: &Connection, intent: &PaymentIntent) -> Result<(), StoreError> {
    let PaymentIntent { order_id, draft_invoice, amount_cents, .. } = intent;
    let now = now_rfc3339();
    let amount = i64_of(*amount_cents, "the amount")?;
    let updated = conn
        .prepare_cached(
            "UPDATE orders SET invoice = ?2, total_cents = ?3, updated_at = ?4 WHERE id = ?1 AND status = 'PENDING'",
        )?
        .execute(params![order_id, draft_invoice, amount, now])?;
    if updated == 0 {
        return Err(StoreError::Conflict(format!("order {order_id} is not pending")));
    }
    insert_payment(conn, intent, &now)
}

/// The payment's INTENT row (its order's row carries the draft invoice).
fn insert_payment(conn: &Connection, intent: &PaymentIntent, now: &str) -> Result<(), StoreError> {
    let PaymentIntent { order_id, idempotency_key, gateway, amount_cents, token, .. } = intent;
    conn.prepare_cached(
        "INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at, token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        order_id,
        idempotency_key,
        gateway,
        i64_of(*amount_cents, "the amount")?,
        PaymentStatus::Intent.as_str(),
        now,
        token
    ])?;
    Ok(())
}

/// The order's final state: stock taken (paid) or released (failed), the
/// payment's outcome, the stored invoice, its events and the answer for its
/// idempotency key; a paid order also empties the cart.
pub fn settle(conn: &Connection, settlement: &Settlement) -> Result<(), StoreError> {
    let paid = settlement.status == OrderStatus::Confirmed;
    let now = now_rfc3339();
    let updated = conn
        .prepare_cached(
            "UPDATE orders SET status = ?2, invoice = ?3, updated_at = ?4 WHERE id = ?1 AND status = 'PENDING'",
        )?
        .execute(params![settlement.order_id, settlement.status.as_str(), settlement.invoice, now])?;
    if updated == 0 {
        return Err(StoreError::Conflict(format!("order {} is no longer pending", settlement.order_id)));
    }
    if paid {
        commit_holds(conn, &settlement.order_id)?;
        conn.prepare_cached("DELETE FROM carts WHERE customer_id = ?1")?.execute([&settlement.customer_id])?;
    } else {
        release_holds(conn, &settlement.order_id)?;
    }
    conn.prepare_cached(
        "UPDATE payments SET status = ?2, transaction_id = ?3, attempts = ?4, failure = ?5, updated_at = ?6,
             token = NULL
         WHERE order_id = ?1",
    )?
    .execute(params![
        settlement.order_id,
        if paid { PaymentStatus::Captured } else { PaymentStatus::Failed }.as_str(),
        settlement.transaction_id,
        settlement.attempts,
        settlement.failure,
        now
    ])?;
    insert_events(conn, &settlement.order_id, &settlement.events)?;
    // A PAYMENT_PENDING order's key answers 202 until now: the final
    // answer replaces it.
    let (status_code, body) = settlement.answer.stored();
    conn.prepare_cached(
        "UPDATE idempotency SET status_code = ?2, body = ?3
         WHERE order_id = ?1 AND (status_code IS NULL OR status_code = 202)",
    )?
    .execute(params![settlement.order_id, status_code, body])?;
    Ok(())
}

/// Hands a PENDING order whose payment outcome is unknown to the reconciler,
/// all or nothing: the order keeps its stock held and its payment token,
/// stores the PAYMENT_PENDING invoice it was answered with, its INTENT gets
/// `resolve_after_ms`, and its key answers `202` with that invoice (no body
/// of its own: the invoice is read from the order, as for a `201`). No
/// event is written: the order's events go out when it settles. `Conflict`
/// if the order is not PENDING or has no payment intent.
pub fn mark_payment_pending(conn: &Connection, pending: &PendingPayment) -> Result<(), StoreError> {
    let PendingPayment { order_id, invoice, attempts, resolve_after_ms } = pending;
    let now = now_rfc3339();
    let updated = conn
        .prepare_cached("UPDATE orders SET invoice = ?2, updated_at = ?3 WHERE id = ?1 AND status = 'PENDING'")?
        .execute(params![order_id, invoice, now])?;
    if updated == 0 {
        return Err(StoreError::Conflict(format!("order {order_id} is not pending")));
    }
    let updated = conn
        .prepare_cached(
            "UPDATE payments SET resolve_after_ms = ?2, attempts = ?3, updated_at = ?4
             WHERE order_id = ?1 AND status = 'INTENT'",
        )?
        .execute(params![order_id, resolve_after_ms, attempts, now])?;
    if updated == 0 {
        // The error rolls the order's update back with the whole command.
        return Err(StoreError::Conflict(format!("order {order_id} has no payment intent")));
    }
    conn.prepare_cached(
        "UPDATE idempotency SET status_code = 202, body = NULL WHERE order_id = ?1 AND status_code IS NULL",
    )?
    .execute([order_id])?;
    Ok(())
}

/// When the reconciler looks at the order's open payment again (after a
/// pass that could not decide it, or to hand it an interrupted order whose
/// outcome stays unknown). Nothing to do once the payment is no longer INTENT.
pub fn defer_resolution(conn: &Connection, order_id: &str, resolve_after_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE payments SET resolve_after_ms = ?2, updated_at = ?3 WHERE order_id = ?1 AND status = 'INTENT'",
    )?
    .execute(params![order_id, resolve_after_ms, now_rfc3339()])?;
    Ok(())
}

/// The open payments handed to the reconciler: `status = 'INTENT' AND
/// resolve_after_ms IS NOT NULL` is the partial index `payments_to_resolve`,
/// so only they are read, and their orders by primary key. The unary `+`
/// keeps SQLite from driving the join from the orders' status index instead
/// (every PENDING order, those in flight included).
const PAYMENTS_TO_RESOLVE: &str = "payments p JOIN orders o ON o.id = p.order_id
    WHERE p.status = 'INTENT' AND p.resolve_after_ms IS NOT NULL AND +o.status = 'PENDING'";

/// [`PAYMENTS_TO_RESOLVE`], oldest first (`?1` the limit): order ids are
/// UUIDv7, their order is the creation order.
fn payments_pending_sql() -> String {
    format!(
        "SELECT o.id, o.customer_id, o.channel, p.amount_cents, o.currency, o.created_at, p.attempts, p.resolve_after_ms
         FROM {PAYMENTS_TO_RESOLVE} ORDER BY o.id LIMIT ?1"
    )
}

fn payments_pending_count_sql() -> String {
    format!("SELECT count(*) FROM {PAYMENTS_TO_RESOLVE}")
}

/// Orders answered PAYMENT_PENDING and not settled yet, oldest first.
pub fn payments_pending(conn: &Connection, limit: usize) -> Result<Vec<PendingPaymentRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&payments_pending_sql())?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(PendingPaymentRow {
            order_id: r.get(0)?,
            customer_id: r.get(1)?,
            channel: r.get(2)?,
            amount_cents: r.get::<_, i64>(3)? as u64,
            currency: r.get(4)?,
            created_at: r.get(5)?,
            attempts: u32::try_from(r.get::<_, i64>(6)?).unwrap_or(u32::MAX),
            resolve_after_ms: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many orders [`payments_pending`] lists (a gauge).
pub fn payments_pending_count(conn: &Connection) -> Result<u64, StoreError> {
    let count: i64 = conn.prepare_cached(&payments_pending_count_sql())?.query_row([], |r| r.get(0))?;
    Ok(count as u64)
}

fn insert_events(conn: &Connection, order_id: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (id, order_id, type, envelope, state, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let now = crate::clock::now_ms();
    for event in events {
        let (envelope, state) = event.body.stored();
        insert.execute(params![event.id, order_id, event.kind.as_str(), envelope, state.as_str(), now])?;
    }
    Ok(())
}

const ORDER_COLUMNS: &str =
    "id, customer_id, channel, status, total_cents, currency, created_at, invoice, fraud_review";

/// [`ORDER_COLUMNS`] and what a replay needs beside them (the holds and the
/// selector's input): read only where orders are replayed, so that the
/// order path's reads (the fraud worker's, `GET /v1/orders/{id}`) carry no
/// more bytes than before.
const REPLAY_COLUMNS: &str =
    "id, customer_id, channel, status, total_cents, currency, created_at, invoice, fraud_review, holds, selector_input";

pub fn get_order(conn: &Connection, order_id: &str) -> Result<Option<StoredOrder>, StoreError> {
    let row = conn
        .prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"))?
        .query_row([order_id], stored_order)
        .optional()?;
    row.transpose()
}

type RowResult = rusqlite::Result<Result<StoredOrder, StoreError>>;

fn stored_order(r: &rusqlite::Row<'_>) -> RowResult {
    let status: String = r.get(3)?;
    let review: Option<String> = r.get(8)?;
    let replayable = r.as_ref().column_count() > 9;
    Ok((|| {
        Ok(StoredOrder {
            id: r.get(0)?,
            customer_id: r.get(1)?,
            channel: r.get(2)?,
            status: status.parse().map_err(|e| StoreError::Corrupt(format!("{e}")))?,
            total_cents: r.get::<_, i64>(4)? as u64,
            currency: r.get(5)?,
            created_at: r.get(6)?,
            invoice: r.get(7)?,
            fraud_review: review.map(|s| serde_json::from_str::<Value>(&s)).transpose()?,
            holds: if replayable { r.get(9)? } else { None },
            selector_input: if replayable { r.get(10)? } else { None },
        })
    })())
}

/// The PENDING orders to look at (`?1` the cutoff, `?2` now in ms), in two
/// branches each found through an index: the orders not handed to the
/// reconciler and last updated before the cutoff (the status index), and the
/// payments handed to it whose time has come, whatever their order's
/// `updated_at` (the partial index `payments_to_resolve`, see
/// [`PAYMENTS_TO_RESOLVE`] for the `+`). An order handed to the reconciler is
/// not looked at before its `resolve_after_ms`, however old: that time is
/// what the reconciler asked for. The branches never share an order.
const PENDING_ORDERS: &str = "
    SELECT o.id, p.idempotency_key, p.amount_cents, o.currency, p.token, p.resolve_after_ms FROM orders o
    LEFT JOIN payments p ON p.order_id = o.id AND p.status = 'INTENT'
    WHERE o.status = 'PENDING' AND julianday(o.updated_at) <= julianday(?1) AND p.resolve_after_ms IS NULL
    UNION ALL
    SELECT o.id, p.idempotency_key, p.amount_cents, o.currency, p.token, p.resolve_after_ms FROM payments p
    JOIN orders o ON o.id = p.order_id
    WHERE p.status = 'INTENT' AND p.resolve_after_ms <= ?2 AND +o.status = 'PENDING'";

/// Orders still PENDING: those with a payment intent must be reconciled
/// with the gateway; the others never reached payment.
/// Only orders last updated before `updated_before` (RFC 3339) count, and
/// the orders answered PAYMENT_PENDING whose `resolve_after_ms` is at or
/// before `now_ms` (see [`PENDING_ORDERS`]). The times are compared as times,
/// not text: RFC 3339 text drops trailing zeros of the fraction (`…:05Z`,
/// `…:05.3Z`, `…:05.312Z`), so it does not sort.
pub fn pending_orders(
    conn: &Connection,
    updated_before: &str,
    now_ms: i64,
) -> Result<(Vec<String>, Vec<OpenIntent>), StoreError> {
    let mut stmt = conn.prepare_cached(PENDING_ORDERS.trim_start())?;
    let mut unpaid = Vec::new();
    let mut intents = Vec::new();
    let rows = stmt.query_map(params![updated_before, now_ms], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<i64>>(5)?,
        ))
    })?;
    for row in rows {
        match row? {
            (order_id, Some(idempotency_key), Some(amount), currency, token, resolve_after_ms) => {
                intents.push(OpenIntent {
                    order_id,
                    idempotency_key,
                    amount_cents: amount as u64,
                    currency,
                    token,
                    outcome_unknown: resolve_after_ms.is_some(),
                })
            }
            (order_id, ..) => unpaid.push(order_id),
        }
    }
    Ok((unpaid, intents))
}

/// The key's row, its answer's body read from the order when the key
/// stores none (`?1` channel, `?2` key).
const KEY_RECORD: &str = "
    SELECT i.request_hash, i.order_id, i.status_code,
           CASE WHEN i.status_code IS NULL THEN NULL ELSE coalesce(i.body, o.invoice) END
    FROM idempotency i LEFT JOIN orders o ON o.id = i.order_id
    WHERE i.channel = ?1 AND i.key = ?2";

/// Fraud events waiting for a verdict, oldest first (the partial index
/// `outbox_awaiting_verdict`, in `seq` order).
pub(super) const AWAITING_VERDICT: &str = "SELECT order_id, seq, id FROM outbox
     WHERE state = 'AWAITING_VERDICT' ORDER BY seq LIMIT ?1";

/// Settled orders whose fraud checks have not run yet, with their waiting events.
pub fn awaiting_verdict(conn: &Connection, limit: usize) -> Result<Vec<AwaitingReview>, StoreError> {
    let mut waiting: Vec<(String, WaitingEvent)> = conn
        .prepare_cached(AWAITING_VERDICT)?
        .query_map([limit as i64], |r| Ok((r.get(0)?, WaitingEvent { seq: r.get(1)?, id: r.get(2)? })))?
        .collect::<Result<_, _>>()?;
    waiting.sort();
    let mut out: Vec<AwaitingReview> = Vec::new();
    for (order_id, event) in waiting {
        match out.last_mut() {
            Some(last) if last.order.id == order_id => last.events.push(event),
            _ => {
                if let Some(order) = get_order(conn, &order_id)? {
                    out.push(AwaitingReview { order, events: vec![event] });
                }
            }
        }
    }
    Ok(out)
}

/// Stores fraud verdicts on their orders and readies their fraud events. An
/// order reviewed already keeps its first verdict (two passes that raced on
/// it, e.g. the worker and a drain, change nothing the second time).
pub fn record_verdicts(conn: &Connection, verdicts: &[Verdict]) -> Result<(), StoreError> {
    let mut review = conn.prepare_cached(
        "UPDATE orders SET fraud_review = ?2, fraud_action = ?3 WHERE id = ?1 AND fraud_review IS NULL",
    )?;
    let mut ready = conn.prepare_cached(
        "UPDATE outbox SET envelope = ?2, state = 'READY' WHERE seq = ?1 AND state = 'AWAITING_VERDICT'",
    )?;
    for verdict in verdicts {
        review.execute(params![verdict.order_id, verdict.review, verdict.action])?;
        for (seq, envelope) in &verdict.envelopes {
            ready.execute(params![seq, envelope])?;
        }
    }
    Ok(())
}

/// The last `limit` orders that settled (CONFIRMED or PAYMENT_FAILED: the
/// ones with a final invoice), newest first. Order ids are UUIDv7, made when
/// the order is created, so their order is the creation order: the primary
/// key is read backwards and the scan stops after `limit` matches (the
/// reload's replay gate runs this on every reload, whatever the table's size).
/// With `channels`, only the orders of those sales channels.
pub fn recent_settled(
    conn: &Connection,
    limit: usize,
    channels: Option<&[Channel]>,
) -> Result<Vec<StoredOrder>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REPLAY_COLUMNS} FROM orders
         WHERE status IN ('CONFIRMED', 'PAYMENT_FAILED')
           AND (?2 IS NULL OR channel IN (SELECT value FROM json_each(?2)))
         ORDER BY id DESC LIMIT ?1"
    ))?;
    let channels = channels.map(|list| Value::from(list.iter().map(|c| c.as_str()).collect::<Vec<_>>()).to_string());
    let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX), channels], stored_order)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

/// Orders whose fraud review is ESCALATE, newest first.
pub fn escalations(conn: &Connection, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE fraud_action = 'ESCALATE' ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit as i64], stored_order)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

/// What the idempotency key `(channel, key)` holds, if it was used. A key
/// answered with its order's invoice stores no body of its own (see
/// [`SettledAnswer::Invoice`](super::super::orders::SettledAnswer::Invoice)):
/// the body is the order's stored invoice.
pub fn key_record(conn: &Connection, channel: &str, key: &str) -> Result<Option<KeyRecord>, StoreError> {
    let row = conn
        .prepare_cached(KEY_RECORD.trim_start())?
        .query_row(params![channel, key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    Ok(row.map(|(request_hash, order_id, status, body)| match (status, body) {
        (Some(status), Some(body)) => {
            KeyRecord::Answered { request_hash, answer: Answer { status_code: status as u16, body } }
        }
        _ => KeyRecord::InFlight { request_hash, order_id: order_id.unwrap_or_default() },
    }))
}

#[cfg(test)]
mod tests {
    use super::super::query_plan as plan;
    use super::*;

    /// The reconciler polls for pending payments all the time: it reads the
    /// partial index of payments handed to it, and the PENDING orders through
    /// the status index, never every order (a table that grows with every order).
    #[test]
    fn the_reconciler_queries_use_their_indexes() {
        let conn = super::super::migrated_database();
        // Since `payments` keeps its rows in its primary key (schema version
        // 16), its index holds the order id too and may cover a query.
        let reads_to_resolve = |plan: &str| {
            ["INDEX", "COVERING INDEX"]
                .iter()
                .any(|how| plan.contains(&format!("SEARCH p USING {how} payments_to_resolve ")))
        };
        let pending = plan(&conn, PENDING_ORDERS);
        assert!(pending.contains("SEARCH o USING INDEX orders_pending"), "{pending}");
        assert!(reads_to_resolve(&pending), "{pending}");
        for sql in [payments_pending_sql(), payments_pending_count_sql()] {
            let plan = plan(&conn, &sql);
            assert!(reads_to_resolve(&plan), "{sql}: {plan}");
        }
        for sql in [PENDING_ORDERS.to_string(), payments_pending_sql(), payments_pending_count_sql()] {
            let plan = plan(&conn, &sql);
            assert!(!plan.contains("SCAN"), "{sql}: {plan}");
        }
    }
}
