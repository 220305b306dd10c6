//! Orders and their saga state: reservations, payments, the outbox and
//! idempotency records. Each function is one transaction, so an order is
//! always in exactly one durable state:
//!
//! ```text
//! reserve ──► PENDING (stock held) ──record_intent──► PENDING + payment INTENT
//!    │                 │                                   │
//!    │              release                   confirm / fail_payment
//!    ▼                 ▼                                   ▼
//!  nothing         CANCELLED            CONFIRMED (stock taken) | PAYMENT_FAILED (stock released)
//! ```

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::{StoreError, now_ms, now_rfc3339};

/// Units of one sku held from one warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub warehouse_id: String,
    pub sku: String,
    pub quantity: u32,
}

/// The outcome of trying to hold stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// The stock moved since the plan was made: nothing was held.
    Shortfall {
        warehouse_id: String,
        sku: String,
    },
}

/// An event to write to the outbox with the order's final state.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub kind: &'static str,
    /// The full envelope, or `None` while it awaits the fraud verdict.
    pub envelope: Option<Value>,
}

/// An idempotency record to store with the order's answer.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub channel: String,
    pub key: String,
    pub request_hash: String,
    pub status_code: u16,
    pub body: String,
}

/// The final state of a paid or failed order.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub order_id: String,
    pub customer_id: String,
    pub invoice: Value,
    pub transaction_id: Option<String>,
    pub attempts: u32,
    pub failure: Option<String>,
    pub events: Vec<NewEvent>,
    pub idempotency: Option<IdempotencyRecord>,
}

/// An order as stored.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    pub id: String,
    pub customer_id: String,
    pub status: String,
    pub total_cents: u64,
    pub currency: String,
    pub created_at: String,
    pub invoice: Option<Value>,
    pub fraud_review: Option<Value>,
}

/// A payment intent left by an order that never settled.
#[derive(Debug, Clone)]
pub struct OpenIntent {
    pub order_id: String,
    pub idempotency_key: String,
    pub amount_cents: u64,
}

/// Creates the order as PENDING and holds its stock, all or nothing. Each
/// hold is a conditional update, so availability can never go negative
/// whatever runs concurrently.
pub fn reserve(
    conn: &mut Connection,
    order_id: &str,
    customer_id: &str,
    channel: &str,
    currency: &str,
    holds: &[Hold],
) -> Result<ReserveOutcome, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_rfc3339();
    tx.prepare_cached(
        "INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'PENDING', 0, ?4, ?5, ?5)",
    )?
    .execute(params![order_id, customer_id, channel, currency, now])?;
    {
        let mut hold_stock = tx.prepare_cached(
            "UPDATE stock SET reserved = reserved + ?3
             WHERE warehouse_id = ?1 AND sku = ?2 AND on_hand - reserved >= ?3",
        )?;
        let mut record = tx.prepare_cached(
            "INSERT INTO reservations (order_id, warehouse_id, sku, quantity, state) VALUES (?1, ?2, ?3, ?4, 'HELD')
             ON CONFLICT (order_id, warehouse_id, sku) DO UPDATE SET quantity = quantity + ?4",
        )?;
        for hold in holds {
            if hold_stock.execute(params![hold.warehouse_id, hold.sku, hold.quantity])? == 0 {
                // Dropping `tx` rolls back the order row and earlier holds.
                return Ok(ReserveOutcome::Shortfall {
                    warehouse_id: hold.warehouse_id.clone(),
                    sku: hold.sku.clone(),
                });
            }
            record.execute(params![order_id, hold.warehouse_id, hold.sku, hold.quantity])?;
        }
    }
    tx.commit()?;
    Ok(ReserveOutcome::Reserved)
}

/// Gives back every unit an order still holds.
fn release_holds(conn: &Connection, order_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE stock SET reserved = reserved - (
             SELECT r.quantity FROM reservations r
             WHERE r.order_id = ?1 AND r.state = 'HELD' AND r.warehouse_id = stock.warehouse_id AND r.sku = stock.sku)
         WHERE (warehouse_id, sku) IN
               (SELECT warehouse_id, sku FROM reservations WHERE order_id = ?1 AND state = 'HELD')",
    )?
    .execute([order_id])?;
    conn.prepare_cached("UPDATE reservations SET state = 'RELEASED' WHERE order_id = ?1 AND state = 'HELD'")?
        .execute([order_id])?;
    Ok(())
}

/// Takes every unit an order holds out of stock for good.
fn commit_holds(conn: &Connection, order_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE stock SET
             reserved = reserved - (SELECT r.quantity FROM reservations r WHERE r.order_id = ?1 AND r.state = 'HELD'
                                    AND r.warehouse_id = stock.warehouse_id AND r.sku = stock.sku),
             on_hand = on_hand - (SELECT r.quantity FROM reservations r WHERE r.order_id = ?1 AND r.state = 'HELD'
                                  AND r.warehouse_id = stock.warehouse_id AND r.sku = stock.sku)
         WHERE (warehouse_id, sku) IN
               (SELECT warehouse_id, sku FROM reservations WHERE order_id = ?1 AND state = 'HELD')",
    )?
    .execute([order_id])?;
    conn.prepare_cached("UPDATE reservations SET state = 'COMMITTED' WHERE order_id = ?1 AND state = 'HELD'")?
        .execute([order_id])?;
    Ok(())
}

/// Undoes a PENDING order that will not be paid: its stock is released and
/// it ends CANCELLED. Idempotent; a settled order is left alone.
pub fn cancel(conn: &mut Connection, order_id: &str, reason: &str) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let changed = tx
        .prepare_cached(
            "UPDATE orders SET status = 'CANCELLED', invoice = json_object('reason', ?2), updated_at = ?3
             WHERE id = ?1 AND status = 'PENDING'",
        )?
        .execute(params![order_id, reason, now_rfc3339()])?;
    if changed > 0 {
        release_holds(&tx, order_id)?;
        tx.prepare_cached(
            "UPDATE payments SET status = 'FAILED', failure = ?2 WHERE order_id = ?1 AND status = 'INTENT'",
        )?
        .execute(params![order_id, reason])?;
    }
    tx.commit()?;
    Ok(changed > 0)
}

/// Undoes a PENDING order refused before payment because of the request
/// itself (an invalid coupon): its stock is released and its row and
/// reservations are removed, so that the rejected request leaves nothing
/// behind (docs/api.md: "a rejected request writes nothing"). An order
/// that has a payment record, or is no longer PENDING, is left alone.
pub fn discard(conn: &mut Connection, order_id: &str) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let pending: bool = tx
        .prepare_cached(
            "SELECT count(*) FROM orders o WHERE o.id = ?1 AND o.status = 'PENDING'
             AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id)",
        )?
        .query_row([order_id], |r| r.get::<_, i64>(0))?
        > 0;
    if pending {
        release_holds(&tx, order_id)?;
        tx.prepare_cached("DELETE FROM reservations WHERE order_id = ?1")?.execute([order_id])?;
        tx.prepare_cached("DELETE FROM orders WHERE id = ?1")?.execute([order_id])?;
    }
    tx.commit()?;
    Ok(pending)
}

/// Records that the gateway is about to be asked for `amount_cents`, before
/// it is: a crash after this point is reconciled with the gateway.
pub fn record_intent(
    conn: &mut Connection,
    order_id: &str,
    idempotency_key: &str,
    gateway: &str,
    amount_cents: u64,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_rfc3339();
    tx.prepare_cached(
        "INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'INTENT', ?5)",
    )?
    .execute(params![order_id, idempotency_key, gateway, amount_cents as i64, now])?;
    tx.prepare_cached("UPDATE orders SET total_cents = ?2, updated_at = ?3 WHERE id = ?1")?.execute(params![
        order_id,
        amount_cents as i64,
        now
    ])?;
    tx.commit()?;
    Ok(())
}

/// The order's final state, in one transaction: stock taken (paid) or
/// released (failed), the payment's outcome, the stored invoice, its events
/// and the idempotency record; a paid order also empties the cart.
pub fn settle(conn: &mut Connection, settlement: &Settlement) -> Result<(), StoreError> {
    let paid = settlement.transaction_id.is_some();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_rfc3339();
    if paid {
        commit_holds(&tx, &settlement.order_id)?;
        tx.prepare_cached("DELETE FROM carts WHERE customer_id = ?1")?.execute([&settlement.customer_id])?;
    } else {
        release_holds(&tx, &settlement.order_id)?;
    }
    tx.prepare_cached(
        "UPDATE payments SET status = ?2, transaction_id = ?3, attempts = ?4, failure = ?5, updated_at = ?6
         WHERE order_id = ?1",
    )?
    .execute(params![
        settlement.order_id,
        if paid { "CAPTURED" } else { "FAILED" },
        settlement.transaction_id,
        settlement.attempts,
        settlement.failure,
        now
    ])?;
    let updated = tx
        .prepare_cached(
            "UPDATE orders SET status = ?2, invoice = ?3, updated_at = ?4 WHERE id = ?1 AND status = 'PENDING'",
        )?
        .execute(params![
            settlement.order_id,
            if paid { "CONFIRMED" } else { "PAYMENT_FAILED" },
            settlement.invoice.to_string(),
            now
        ])?;
    if updated == 0 {
        return Err(StoreError::Conflict(format!("order {} is no longer pending", settlement.order_id)));
    }
    insert_events(&tx, &settlement.order_id, &settlement.events)?;
    if let Some(record) = &settlement.idempotency {
        tx.prepare_cached(
            "INSERT INTO idempotency (channel, key, request_hash, order_id, status_code, body, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (channel, key) DO UPDATE SET order_id = ?4, status_code = ?5, body = ?6",
        )?
        .execute(params![
            record.channel,
            record.key,
            record.request_hash,
            settlement.order_id,
            record.status_code,
            record.body,
            now
        ])?;
    }
    tx.commit()?;
    Ok(())
}

fn insert_events(conn: &Connection, order_id: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (id, order_id, type, envelope, state, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let now = now_ms();
    for event in events {
        let state = if event.envelope.is_some() { "READY" } else { "AWAITING_VERDICT" };
        insert.execute(params![
            event.id,
            order_id,
            event.kind,
            event.envelope.as_ref().map(Value::to_string),
            state,
            now
        ])?;
    }
    Ok(())
}

pub fn get_order(conn: &Connection, order_id: &str) -> Result<Option<StoredOrder>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT id, customer_id, status, total_cents, currency, created_at, invoice, fraud_review
             FROM orders WHERE id = ?1",
        )?
        .query_row([order_id], stored_order)
        .optional()?;
    row.transpose()
}

type RowResult = rusqlite::Result<Result<StoredOrder, StoreError>>;

fn stored_order(r: &rusqlite::Row<'_>) -> RowResult {
    let invoice: Option<String> = r.get(6)?;
    let review: Option<String> = r.get(7)?;
    let parse = |s: Option<String>| s.map(|s| serde_json::from_str::<Value>(&s)).transpose();
    Ok((|| {
        Ok(StoredOrder {
            id: r.get(0).map_err(StoreError::from)?,
            customer_id: r.get(1).map_err(StoreError::from)?,
            status: r.get(2).map_err(StoreError::from)?,
            total_cents: r.get::<_, i64>(3).map_err(StoreError::from)? as u64,
            currency: r.get(4).map_err(StoreError::from)?,
            created_at: r.get(5).map_err(StoreError::from)?,
            invoice: parse(invoice)?,
            fraud_review: parse(review)?,
        })
    })())
}

/// Orders still PENDING: those with a payment intent must be reconciled
/// with the gateway; the others never reached payment.
/// Only orders last updated before `updated_before` (RFC 3339) count. The
/// times are compared as times, not text: RFC 3339 text drops trailing zeros
/// of the fraction (`…:05Z`, `…:05.3Z`, `…:05.312Z`), so it does not sort.
pub fn pending_orders(conn: &Connection, updated_before: &str) -> Result<(Vec<String>, Vec<OpenIntent>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.id, p.idempotency_key, p.amount_cents FROM orders o
         LEFT JOIN payments p ON p.order_id = o.id AND p.status = 'INTENT'
         WHERE o.status = 'PENDING' AND julianday(o.updated_at) <= julianday(?1)",
    )?;
    let mut unpaid = Vec::new();
    let mut intents = Vec::new();
    let rows = stmt.query_map([updated_before], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<i64>>(2)?))
    })?;
    for row in rows {
        match row? {
            (order_id, Some(idempotency_key), Some(amount)) => {
                intents.push(OpenIntent { order_id, idempotency_key, amount_cents: amount as u64 })
            }
            (order_id, _, _) => unpaid.push(order_id),
        }
    }
    Ok((unpaid, intents))
}

/// Settled orders whose fraud checks have not run yet (oldest first).
pub fn awaiting_verdict(conn: &Connection, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, customer_id, status, total_cents, currency, created_at, invoice, fraud_review FROM orders
         WHERE id IN (SELECT DISTINCT order_id FROM outbox
                      WHERE state = 'AWAITING_VERDICT' AND state != 'DELIVERED') LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], stored_order)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

/// Stores the fraud verdict on the order and readies its fraud event.
pub fn record_verdict(
    conn: &mut Connection,
    order_id: &str,
    review: &Value,
    action: &str,
    build_envelope: impl Fn(&str) -> Value,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.prepare_cached("UPDATE orders SET fraud_review = ?2, fraud_action = ?3 WHERE id = ?1")?.execute(params![
        order_id,
        review.to_string(),
        action
    ])?;
    let ids: Vec<String> = tx
        .prepare_cached("SELECT id FROM outbox WHERE order_id = ?1 AND state = 'AWAITING_VERDICT'")?
        .query_map([order_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in ids {
        tx.prepare_cached("UPDATE outbox SET envelope = ?2, state = 'READY' WHERE id = ?1")?
            .execute(params![id, build_envelope(&id).to_string()])?;
    }
    tx.commit()?;
    Ok(())
}

/// Orders whose fraud review is ESCALATE, newest first.
pub fn escalations(conn: &Connection, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, customer_id, status, total_cents, currency, created_at, invoice, fraud_review FROM orders
         WHERE fraud_action = 'ESCALATE' ORDER BY julianday(created_at) DESC, id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], stored_order)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

/// An event ready to deliver.
#[derive(Debug, Clone)]
pub struct DueEvent {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    pub envelope: String,
    pub attempts: u32,
}

/// Up to `limit` READY events whose next attempt is due, oldest first.
pub fn due_events(conn: &Connection, now_ms: i64, limit: usize) -> Result<Vec<DueEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, type, envelope, attempts FROM outbox
         WHERE state = 'READY' AND state != 'DELIVERED' AND next_attempt_ms <= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
        Ok(DueEvent { seq: r.get(0)?, id: r.get(1)?, kind: r.get(2)?, envelope: r.get(3)?, attempts: r.get(4)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn mark_delivered(conn: &mut Connection, seqs: &[i64]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("UPDATE outbox SET state = 'DELIVERED', delivered_ms = ?2 WHERE seq = ?1")?;
        let now = now_ms();
        for seq in seqs {
            stmt.execute(params![seq, now])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub fn mark_retry(conn: &mut Connection, seqs: &[i64], error: &str, next_attempt_ms: i64) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_ms = ?3 WHERE seq = ?1",
        )?;
        for seq in seqs {
            stmt.execute(params![seq, error, next_attempt_ms])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Events not yet delivered, and the age in ms of the oldest of them.
pub fn outbox_backlog(conn: &Connection) -> Result<(u64, i64), StoreError> {
    Ok(conn
        .prepare_cached("SELECT count(*), coalesce(min(created_ms), 0) FROM outbox WHERE state != 'DELIVERED'")?
        .query_row([], |r| {
            let oldest: i64 = r.get(1)?;
            Ok((r.get::<_, i64>(0)? as u64, if oldest == 0 { 0 } else { now_ms() - oldest }))
        })?)
}

/// The stored answer for an idempotency key, if the key was used.
pub fn idempotent_answer(
    conn: &Connection,
    channel: &str,
    key: &str,
) -> Result<Option<(String, u16, String)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT request_hash, status_code, body FROM idempotency
             WHERE channel = ?1 AND key = ?2 AND status_code IS NOT NULL",
        )?
        .query_row(params![channel, key], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u16, r.get(2)?)))
        .optional()?)
}
