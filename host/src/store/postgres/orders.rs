//! Orders and their saga state on PostgreSQL (the twin of
//! `store::sqlite::orders`; the records and the state diagram are in
//! `store::orders`). Each write function runs inside the transaction of
//! one store operation; the order's answer path (`reserve`, `settle`) is a
//! call of a server-side function each (schema version 8): one round trip,
//! the call its own transaction.

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::super::orders::{
    Answer, AwaitingReview, KeyRecord, NewOrder, OpenIntent, PaymentIntent, PendingPayment, PendingPaymentRow,
    ReserveOutcome, Settlement, StoredOrder, Verdict, WaitingEvent,
};
use super::super::{RESOLVE_LEASE_MS, StoreError};
use super::{Db, OrderCall, Step, bigint};
use crate::clock::{now_ms, now_rfc3339};
use crate::domain::status::{Channel, OrderStatus, PaymentStatus};

/// How long a replica owns the fraud checks of an order it picked up; after
/// that (it died) another replica runs them.
const VERDICT_LEASE_MS: i64 = 30_000;

/// SQLSTATE of a hold that does not fit, raised by `smartmart_reserve`
/// (schema version 8) with the hold's position in the call's arrays (from
/// 1) as its detail.
const SHORTFALL: &str = "SM001";

/// `smartmart_reserve`'s call (see [`reserve`]).
pub(super) const RESERVE: OrderCall = OrderCall {
    sql: "SELECT smartmart_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::INT8_ARRAY,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ],
};

/// `smartmart_settle`'s call (see [`settle`]).
pub(super) const SETTLE: OrderCall = OrderCall {
    sql: "SELECT smartmart_settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::BOOL,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
    ],
};

/// Creates the order PENDING, claims its key, holds its stock and records
/// its payment intent (when it has one), all or nothing, in one call of
/// `smartmart_reserve`: one round trip, its own transaction. On a shortfall
/// or a taken key nothing is kept. Holds are taken in (warehouse, sku)
/// order, the order every operation locks stock rows in.
pub async fn reserve(db: &impl Db, order: &NewOrder) -> Result<Step<ReserveOutcome>, StoreError> {
    let now = now_rfc3339();
    let claim = order.claim.as_ref();
    let intent = order.intent.as_ref();
    if let Some(intent) = intent
        && intent.order_id != order.order_id
    {
        return Err(StoreError::Conflict(format!("the intent of {} is for {}", order.order_id, intent.order_id)));
    }
    let total = intent.map(|i| bigint(i.amount_cents, "the amount")).transpose()?;
    let warehouses: Vec<&str> = order.holds.iter().map(|h| h.warehouse_id.as_str()).collect();
    let skus: Vec<&str> = order.holds.iter().map(|h| h.sku.as_str()).collect();
    let quantities: Vec<i64> = order.holds.iter().map(|h| i64::from(h.quantity)).collect();
    let called = db
        .call_prepared(
            &RESERVE,
            &[
                &order.order_id,
                &order.customer_id,
                &order.channel,
                &order.currency,
                &now,
                &claim.map(|c| c.channel.as_str()),
                &claim.map(|c| c.key.as_str()),
                &claim.map(|c| c.request_hash.as_str()),
                &warehouses,
                &skus,
                &quantities,
                &order.holds_text(),
                &order.selector_input,
                &intent.map(|i| i.draft_invoice.as_str()),
                &total,
                &intent.map(|i| i.idempotency_key.as_str()),
                &intent.map(|i| i.gateway.as_str()),
                &intent.map(|i| i.token.as_str()),
            ],
        )
        .await;
    let rows = match called {
        Ok(rows) => rows,
        Err(e) if e.code().is_some_and(|c| c.code() == SHORTFALL) => return shortfall(order, &e).map(Step::Undo),
        Err(e) => return Err(e.into()),
    };
    // Both outcomes wrote what they say (a taken key: nothing); the call
    // was its own transaction, so there is nothing left to commit.
    match rows.first().map(|r| r.get::<_, &str>(0)) {
        Some("reserved") => Ok(Step::Commit(ReserveOutcome::Reserved)),
        Some("key_taken") => Ok(Step::Undo(ReserveOutcome::KeyTaken)),
        other => Err(StoreError::Corrupt(format!("smartmart_reserve answered {other:?}"))),
    }
}

/// The hold `smartmart_reserve` found short, named by the error's detail.
fn shortfall(order: &NewOrder, e: &tokio_postgres::Error) -> Result<ReserveOutcome, StoreError> {
    let position = e.as_db_error().and_then(|db| db.detail()).and_then(|d| d.parse::<usize>().ok());
    match position.and_then(|p| order.holds.get(p.checked_sub(1)?)) {
        Some(hold) => Ok(ReserveOutcome::Shortfall { warehouse_id: hold.warehouse_id.clone(), sku: hold.sku.clone() }),
        None => Err(StoreError::Corrupt(format!("a shortfall naming no hold of the order: {e}"))),
    }
}

/// Gives back (`take = false`) or takes out of stock for good (`take = true`)
/// every unit of an order's holds (its row's `holds`, read by the caller in
/// the same transaction as it moved the order out of PENDING), in lock order.
async fn finish_holds(db: &impl Db, holds: Option<&str>, take: bool) -> Result<(), StoreError> {
    let update = if take {
        "UPDATE stock SET reserved = reserved - $3, on_hand = on_hand - $3 WHERE warehouse_id = $1 AND sku = $2"
    } else {
        "UPDATE stock SET reserved = reserved - $3 WHERE warehouse_id = $1 AND sku = $2"
    };
    let update = db.prepare_cached(update).await?;
    for (warehouse_id, sku, quantity) in parse_holds(holds)? {
        db.execute(&update, &[&warehouse_id, &sku, &quantity]).await?;
    }
    Ok(())
}

/// An order row's `holds` (see `holds_text`), sorted as written.
fn parse_holds(holds: Option<&str>) -> Result<Vec<(String, String, i64)>, StoreError> {
    match holds {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("an order's holds: {e}"))),
    }
}

async fn free_key(db: &impl Db, order_id: &str) -> Result<(), StoreError> {
    let stmt = db.prepare_cached("DELETE FROM idempotency WHERE order_id = $1 AND status_code IS NULL").await?;
    db.execute(&stmt, &[&order_id]).await?;
    Ok(())
}

pub async fn cancel(db: &impl Db, order_id: &str, reason: &str) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE orders SET status = 'CANCELLED', invoice = json_build_object('reason', $2::text)::text, updated_at = $3
             WHERE id = $1 AND status = 'PENDING'
             RETURNING holds",
        )
        .await?;
    let cancelled = db.query_opt(&stmt, &[&order_id, &reason, &now_rfc3339()]).await?;
    let changed = cancelled.is_some();
    if let Some(row) = cancelled {
        finish_holds(db, row.get(0), false).await?;
        free_key(db, order_id).await?;
        let stmt = db
            .prepare_cached(
                "UPDATE payments SET status = 'FAILED', failure = $2, token = NULL WHERE order_id = $1 AND status = 'INTENT'",
            )
            .await?;
        db.execute(&stmt, &[&order_id, &reason]).await?;
    }
    Ok(changed)
}

pub async fn discard(db: &impl Db, order_id: &str) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT o.holds FROM orders o WHERE o.id = $1 AND o.status = 'PENDING'
             AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id) FOR UPDATE",
        )
        .await?;
    let pending = db.query_opt(&stmt, &[&order_id]).await?;
    let discarded = pending.is_some();
    if let Some(row) = pending {
        finish_holds(db, row.get(0), false).await?;
        free_key(db, order_id).await?;
        let stmt = db.prepare_cached("DELETE FROM orders WHERE id = $1").await?;
        db.execute(&stmt, &[&order_id]).await?;
    }
    Ok(discarded)
}

pub async fn record_intent(db: &impl Db, intent: &PaymentIntent) -> Result<(), StoreError> {
    let PaymentIntent { order_id, draft_invoice, idempotency_key, gateway, amount_cents, token } = intent;
    let now = now_rfc3339();
    let amount = bigint(*amount_cents, "the amount")?;
    let stmt = db
        .prepare_cached(
            "UPDATE orders SET invoice = $2, total_cents = $3, updated_at = $4 WHERE id = $1 AND status = 'PENDING'",
        )
        .await?;
    if db.execute(&stmt, &[&order_id, &draft_invoice, &amount, &now]).await? == 0 {
        return Err(StoreError::Conflict(format!("order {order_id} is not pending")));
    }
    let stmt = db
        .prepare_cached(
            "INSERT INTO payments (order_id, idempotency_key, gateway, amount_cents, status, updated_at, token)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    db.execute(&stmt, &[&order_id, &idempotency_key, &gateway, &amount, &PaymentStatus::Intent.as_str(), &now, &token])
        .await?;
    Ok(())
}

/// The order's final state (see `store::sqlite::orders::settle`) in one
/// call of `smartmart_settle`: one round trip, its own transaction.
/// `Conflict`, with nothing written, if the order is no longer PENDING.
pub async fn settle(db: &impl Db, settlement: &Settlement) -> Result<(), StoreError> {
    let paid = settlement.status == OrderStatus::Confirmed;
    let payment = if paid { PaymentStatus::Captured } else { PaymentStatus::Failed };
    let events = &settlement.events;
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let (envelopes, states): (Vec<Option<&str>>, Vec<&str>) = events
        .iter()
        .map(|e| {
            let (envelope, state) = e.body.stored();
            (envelope, state.as_str())
        })
        .unzip();
    let (status_code, body) = settlement.answer.stored();
    let rows = db
        .call_prepared(
            &SETTLE,
            &[
                &settlement.order_id,
                &settlement.customer_id,
                &settlement.status.as_str(),
                &settlement.invoice,
                &now_rfc3339(),
                &paid,
                &payment.as_str(),
                &settlement.transaction_id,
                &i64::from(settlement.attempts),
                &settlement.failure,
                &ids,
                &kinds,
                &envelopes,
                &states,
                &now_ms(),
                &i64::from(status_code),
                &body,
            ],
        )
        .await?;
    match rows.first().map(|r| r.get::<_, bool>(0)) {
        Some(true) => Ok(()),
        Some(false) => Err(StoreError::Conflict(format!("order {} is no longer pending", settlement.order_id))),
        None => Err(StoreError::Corrupt("smartmart_settle answered no row".into())),
    }
}

/// See `store::orders::mark_payment_pending`. Rows are locked in the order
/// `settle` locks them (order, payment, key).
pub async fn mark_payment_pending(db: &impl Db, pending: &PendingPayment) -> Result<(), StoreError> {
    let PendingPayment { order_id, invoice, attempts, resolve_after_ms } = pending;
    let now = now_rfc3339();
    let stmt = db
        .prepare_cached("UPDATE orders SET invoice = $2, updated_at = $3 WHERE id = $1 AND status = 'PENDING'")
        .await?;
    if db.execute(&stmt, &[&order_id, &invoice, &now]).await? == 0 {
        return Err(StoreError::Conflict(format!("order {order_id} is not pending")));
    }
    let stmt = db
        .prepare_cached(
            "UPDATE payments SET resolve_after_ms = $2, attempts = $3, updated_at = $4
             WHERE order_id = $1 AND status = 'INTENT'",
        )
        .await?;
    if db.execute(&stmt, &[&order_id, &resolve_after_ms, &i64::from(*attempts), &now]).await? == 0 {
        // The error rolls the whole transaction back, the order's update with it.
        return Err(StoreError::Conflict(format!("order {order_id} has no payment intent")));
    }
    let stmt = db
        .prepare_cached(
            "UPDATE idempotency SET status_code = 202, body = NULL WHERE order_id = $1 AND status_code IS NULL",
        )
        .await?;
    db.execute(&stmt, &[&order_id]).await?;
    Ok(())
}

/// See `store::orders::defer_resolution`.
pub async fn defer_resolution(db: &impl Db, order_id: &str, resolve_after_ms: i64) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE payments SET resolve_after_ms = $2, updated_at = $3 WHERE order_id = $1 AND status = 'INTENT'",
        )
        .await?;
    db.execute(&stmt, &[&order_id, &resolve_after_ms, &now_rfc3339()]).await?;
    Ok(())
}

/// Orders answered PAYMENT_PENDING and not settled yet, oldest first (see
/// `store::orders::payments_pending`: read through the partial index
/// `payments_to_resolve`).
pub async fn payments_pending(db: &impl Db, limit: usize) -> Result<Vec<PendingPaymentRow>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT o.id, o.customer_id, o.channel, p.amount_cents, o.currency, o.created_at, p.attempts,
                    p.resolve_after_ms
             FROM payments p JOIN orders o ON o.id = p.order_id
             WHERE p.status = 'INTENT' AND p.resolve_after_ms IS NOT NULL AND o.status = 'PENDING'
             ORDER BY o.id LIMIT $1",
        )
        .await?;
    let rows = db.query(&stmt, &[&i64::try_from(limit).unwrap_or(i64::MAX)]).await?;
    Ok(rows
        .iter()
        .map(|r| PendingPaymentRow {
            order_id: r.get(0),
            customer_id: r.get(1),
            channel: r.get(2),
            amount_cents: r.get::<_, i64>(3) as u64,
            currency: r.get(4),
            created_at: r.get(5),
            attempts: u32::try_from(r.get::<_, i64>(6)).unwrap_or(u32::MAX),
            resolve_after_ms: r.get(7),
        })
        .collect())
}

/// How many orders [`payments_pending`] lists (a gauge).
pub async fn payments_pending_count(db: &impl Db) -> Result<u64, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id
             WHERE p.status = 'INTENT' AND p.resolve_after_ms IS NOT NULL AND o.status = 'PENDING'",
        )
        .await?;
    Ok(db.query_one(&stmt, &[]).await?.get::<_, i64>(0) as u64)
}

const ORDER_COLUMNS: &str =
    "id, customer_id, channel, status, total_cents, currency, created_at, invoice, fraud_review";

/// [`ORDER_COLUMNS`] and what a replay needs beside them (the holds and the
/// selector's input): read only where orders are replayed, so that the
/// order path's reads (the fraud worker's, `GET /v1/orders/{id}`) carry no
/// more bytes than before.
const REPLAY_COLUMNS: &str =
    "id, customer_id, channel, status, total_cents, currency, created_at, invoice, fraud_review, holds, selector_input";

fn stored_order(r: &Row) -> Result<StoredOrder, StoreError> {
    let review: Option<String> = r.get(8);
    let replayable = r.len() > 9;
    Ok(StoredOrder {
        id: r.get(0),
        customer_id: r.get(1),
        channel: r.get(2),
        status: r.get::<_, &str>(3).parse().map_err(|e| StoreError::Corrupt(format!("{e}")))?,
        total_cents: r.get::<_, i64>(4) as u64,
        currency: r.get(5),
        created_at: r.get(6),
        invoice: r.get(7),
        fraud_review: review.map(|s| serde_json::from_str(&s)).transpose()?,
        holds: if replayable { r.get(9) } else { None },
        selector_input: if replayable { r.get(10) } else { None },
    })
}

pub async fn get_order(db: &impl Db, order_id: &str) -> Result<Option<StoredOrder>, StoreError> {
    let stmt = db.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1")).await?;
    db.query_opt(&stmt, &[&order_id]).await?.as_ref().map(stored_order).transpose()
}

/// The orders of `ids` that exist, in no particular order.
async fn get_orders(db: &impl Db, ids: &[&str]) -> Result<Vec<StoredOrder>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = db.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY($1)")).await?;
    db.query(&stmt, &[&ids]).await?.iter().map(stored_order).collect()
}

/// The PENDING orders to look at (see `store::orders::pending_orders`),
/// claimed for this replica:
///
/// - those not handed to the reconciler and last touched before
///   `updated_before`: their `updated_at` moves to now, so no other
///   replica's janitor takes them until they are as old again (this
///   replica died meanwhile);
/// - those handed to the reconciler whose `resolve_after_ms` is at or before
///   `now_ms`: that moves to `now_ms + RESOLVE_LEASE_MS` (and `updated_at` to
///   now), so no other replica takes them while this one asks the gateway;
///   the reconciler sets the time it wants next ([`defer_resolution`]) or
///   settles them.
///
/// Rows are locked `FOR UPDATE SKIP LOCKED`: a claim never waits for
/// another, and the conditions are checked again on the rows as locked, so
/// an order claimed by a replica that committed meanwhile is skipped.
pub async fn claim_pending_orders(
    db: &impl Db,
    updated_before: &str,
    now_ms: i64,
) -> Result<(Vec<String>, Vec<OpenIntent>), StoreError> {
    let now = now_rfc3339();
    let stmt = db
        .prepare_cached(
            "UPDATE orders o SET updated_at = $2 FROM (
                 SELECT id FROM orders s
                 WHERE status = 'PENDING' AND updated_at::timestamptz <= $1::text::timestamptz
                   AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = s.id AND p.status = 'INTENT'
                                   AND p.resolve_after_ms IS NOT NULL)
                 ORDER BY id FOR UPDATE SKIP LOCKED) stale
             WHERE o.id = stale.id RETURNING o.id, o.currency",
        )
        .await?;
    let mut claimed: Vec<(String, String)> =
        db.query(&stmt, &[&updated_before, &now]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    // Both rows locked: a lease another replica took after this statement's
    // snapshot is seen on the locked payment, and the row skipped.
    let stmt = db
        .prepare_cached(
            "UPDATE payments p SET resolve_after_ms = $2 FROM (
                 SELECT p.order_id FROM payments p JOIN orders o ON o.id = p.order_id
                 WHERE p.status = 'INTENT' AND p.resolve_after_ms <= $1 AND o.status = 'PENDING'
                 ORDER BY p.order_id FOR UPDATE SKIP LOCKED) due
             WHERE p.order_id = due.order_id RETURNING p.order_id",
        )
        .await?;
    let due: Vec<String> = db
        .query(&stmt, &[&now_ms, &now_ms.saturating_add(RESOLVE_LEASE_MS)])
        .await?
        .iter()
        .map(|r| r.get(0))
        .filter(|id: &String| !claimed.iter().any(|(claimed, _)| claimed == id))
        .collect();
    if !due.is_empty() {
        let stmt =
            db.prepare_cached("UPDATE orders SET updated_at = $2 WHERE id = ANY($1) RETURNING id, currency").await?;
        claimed.extend(db.query(&stmt, &[&due, &now]).await?.iter().map(|r| (r.get(0), r.get(1))));
    }
    let ids: Vec<&str> = claimed.iter().map(|(id, _)| id.as_str()).collect();
    let stmt = db
        .prepare_cached(
            "SELECT order_id, idempotency_key, amount_cents, token, resolve_after_ms FROM payments
             WHERE order_id = ANY($1) AND status = 'INTENT'",
        )
        .await?;
    let intents = db.query(&stmt, &[&ids]).await?;
    let mut unpaid = Vec::new();
    let mut open = Vec::new();
    for (order_id, currency) in claimed {
        match intents.iter().find(|i| i.get::<_, &str>(0) == order_id) {
            Some(i) => open.push(OpenIntent {
                order_id,
                idempotency_key: i.get(1),
                amount_cents: i.get::<_, i64>(2) as u64,
                currency,
                token: i.get(3),
                outcome_unknown: i.get::<_, Option<i64>>(4).is_some(),
            }),
            None => unpaid.push(order_id),
        }
    }
    Ok((unpaid, open))
}

/// Settled orders whose fraud checks have not run, claimed for
/// [`VERDICT_LEASE_MS`] (their waiting events are not offered to another
/// replica meanwhile).
pub async fn claim_awaiting_verdict(db: &impl Db, limit: usize) -> Result<Vec<AwaitingReview>, StoreError> {
    let now = now_ms();
    let stmt = db
        .prepare_cached(
            "UPDATE outbox o SET next_attempt_ms = $2 FROM (
                 SELECT seq FROM outbox WHERE state = 'AWAITING_VERDICT' AND next_attempt_ms <= $1
                 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) waiting
             WHERE o.seq = waiting.seq RETURNING o.order_id, o.seq, o.id",
        )
        .await?;
    let mut waiting: Vec<(String, WaitingEvent)> = db
        .query(&stmt, &[&now, &(now + VERDICT_LEASE_MS), &(limit as i64)])
        .await?
        .iter()
        .map(|r| (r.get(0), WaitingEvent { seq: r.get(1), id: r.get(2) }))
        .collect();
    waiting.sort();
    // The claimed events' orders in one query, not a round trip each.
    let mut ids: Vec<&str> = waiting.iter().map(|(order_id, _)| order_id.as_str()).collect();
    ids.dedup();
    let orders = get_orders(db, &ids).await?;
    let mut out: Vec<AwaitingReview> = Vec::new();
    for (order_id, event) in waiting {
        match out.last_mut() {
            Some(last) if last.order.id == order_id => last.events.push(event),
            _ => {
                if let Some(order) = orders.iter().find(|o| o.id == order_id) {
                    out.push(AwaitingReview { order: order.clone(), events: vec![event] });
                }
            }
        }
    }
    Ok(out)
}

pub async fn record_verdicts(db: &impl Db, verdicts: &[Verdict]) -> Result<(), StoreError> {
    let review = db
        .prepare_cached("UPDATE orders SET fraud_review = $2, fraud_action = $3 WHERE id = $1 AND fraud_review IS NULL")
        .await?;
    let ready = db
        .prepare_cached(
            "UPDATE outbox SET envelope = $2, state = 'READY', next_attempt_ms = 0
             WHERE seq = $1 AND state = 'AWAITING_VERDICT'",
        )
        .await?;
    for verdict in verdicts {
        db.execute(&review, &[&verdict.order_id, &verdict.review, &verdict.action]).await?;
        for (seq, envelope) in &verdict.envelopes {
            db.execute(&ready, &[seq, envelope]).await?;
        }
    }
    Ok(())
}

async fn orders_where(
    db: &impl Db,
    columns: &str,
    condition: &str,
    limit: usize,
) -> Result<Vec<StoredOrder>, StoreError> {
    let stmt = db
        .prepare_cached(&format!(
            "SELECT {columns} FROM orders WHERE {condition}
             ORDER BY id DESC LIMIT $1"
        ))
        .await?;
    db.query(&stmt, &[&i64::try_from(limit).unwrap_or(i64::MAX)]).await?.iter().map(stored_order).collect()
}

pub async fn recent_settled(
    db: &impl Db,
    limit: usize,
    channels: Option<&[Channel]>,
) -> Result<Vec<StoredOrder>, StoreError> {
    let Some(channels) = channels else {
        return orders_where(db, REPLAY_COLUMNS, "status IN ('CONFIRMED', 'PAYMENT_FAILED')", limit).await;
    };
    let stmt = db
        .prepare_cached(&format!(
            "SELECT {REPLAY_COLUMNS} FROM orders
             WHERE status IN ('CONFIRMED', 'PAYMENT_FAILED') AND channel = ANY($2)
             ORDER BY id DESC LIMIT $1"
        ))
        .await?;
    let channels: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    db.query(&stmt, &[&i64::try_from(limit).unwrap_or(i64::MAX), &channels]).await?.iter().map(stored_order).collect()
}

pub async fn escalations(db: &impl Db, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
    orders_where(db, ORDER_COLUMNS, "fraud_action = 'ESCALATE'", limit).await
}

pub async fn key_record(db: &impl Db, channel: &str, key: &str) -> Result<Option<KeyRecord>, StoreError> {
    // A key answered with its order's invoice stores no body of its own
    // (`SettledAnswer::Invoice`): the body is the order's stored invoice.
    let stmt = db
        .prepare_cached(
            "SELECT i.request_hash, i.order_id, i.status_code,
                    CASE WHEN i.status_code IS NULL THEN NULL ELSE coalesce(i.body, o.invoice) END
             FROM idempotency i LEFT JOIN orders o ON o.id = i.order_id
             WHERE i.channel = $1 AND i.key = $2",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&channel, &key]).await?.map(|r| {
        let request_hash: String = r.get(0);
        match (r.get::<_, Option<i64>>(2), r.get::<_, Option<String>>(3)) {
            (Some(status), Some(body)) => {
                KeyRecord::Answered { request_hash, answer: Answer { status_code: status as u16, body } }
            }
            _ => KeyRecord::InFlight { request_hash, order_id: r.get::<_, Option<String>>(1).unwrap_or_default() },
        }
    }))
}
