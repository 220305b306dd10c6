//! Orders and their saga state on PostgreSQL (the twin of
//! `store::sqlite::orders`; the records and the state diagram are in
//! `store::orders`). Each write function runs inside the transaction of
//! one store operation.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::super::orders::{
    Answer, AwaitingReview, KeyRecord, NewEvent, NewOrder, OpenIntent, PaymentIntent, PendingPayment,
    PendingPaymentRow, ReserveOutcome, Settlement, StoredOrder, Verdict,
};
use super::super::{RESOLVE_LEASE_MS, StoreError};
use super::{Step, bigint};
use crate::clock::{now_ms, now_rfc3339};
use crate::domain::status::{HoldState, OrderStatus, PaymentStatus};

/// How long a replica owns the fraud checks of an order it picked up; after
/// that (it died) another replica runs them.
const VERDICT_LEASE_MS: i64 = 30_000;

/// Creates the order PENDING, claims its key, holds its stock; on a
/// shortfall or a taken key nothing is kept. Holds are taken in (warehouse,
/// sku) order, the order every operation locks stock rows in.
pub async fn reserve(db: &impl GenericClient, order: &NewOrder) -> Result<Step<ReserveOutcome>, StoreError> {
    let now = now_rfc3339();
    if let Some(claim) = &order.claim {
        // Waits for a racing transaction holding the same key, then sees its row.
        let stmt = db
            .prepare_cached(
                "INSERT INTO idempotency (channel, key, request_hash, order_id, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (channel, key) DO NOTHING",
            )
            .await?;
        if db.execute(&stmt, &[&claim.channel, &claim.key, &claim.request_hash, &order.order_id, &now]).await? == 0 {
            return Ok(Step::Undo(ReserveOutcome::KeyTaken));
        }
    }
    let stmt = db
        .prepare_cached(
            "INSERT INTO orders (id, customer_id, channel, status, total_cents, currency, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 0, $5, $6, $6)",
        )
        .await?;
    db.execute(
        &stmt,
        &[&order.order_id, &order.customer_id, &order.channel, &OrderStatus::Pending.as_str(), &order.currency, &now],
    )
    .await?;
    let hold_stock = db
        .prepare_cached(
            "UPDATE stock SET reserved = reserved + $3
             WHERE warehouse_id = $1 AND sku = $2 AND on_hand - reserved >= $3",
        )
        .await?;
    let record = db
        .prepare_cached(
            "INSERT INTO reservations (order_id, warehouse_id, sku, quantity, state) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (order_id, warehouse_id, sku) DO UPDATE SET quantity = reservations.quantity + $4",
        )
        .await?;
    let mut holds: Vec<_> = order.holds.iter().collect();
    holds.sort_by(|a, b| (&a.warehouse_id, &a.sku).cmp(&(&b.warehouse_id, &b.sku)));
    for hold in holds {
        let quantity = i64::from(hold.quantity);
        if db.execute(&hold_stock, &[&hold.warehouse_id, &hold.sku, &quantity]).await? == 0 {
            return Ok(Step::Undo(ReserveOutcome::Shortfall {
                warehouse_id: hold.warehouse_id.clone(),
                sku: hold.sku.clone(),
            }));
        }
        db.execute(&record, &[&order.order_id, &hold.warehouse_id, &hold.sku, &quantity, &HoldState::Held.as_str()])
            .await?;
    }
    if let Some(intent) = &order.intent {
        record_intent(db, intent).await?;
    }
    Ok(Step::Commit(ReserveOutcome::Reserved))
}

/// The order's HELD reservations, in lock order.
async fn held(db: &impl GenericClient, order_id: &str) -> Result<Vec<(String, String, i64)>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT warehouse_id, sku, quantity FROM reservations WHERE order_id = $1 AND state = 'HELD'
             ORDER BY warehouse_id, sku",
        )
        .await?;
    Ok(db.query(&stmt, &[&order_id]).await?.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// Gives back (`take = false`) or takes out of stock for good (`take = true`)
/// every unit the order holds.
async fn finish_holds(db: &impl GenericClient, order_id: &str, take: bool) -> Result<(), StoreError> {
    let (update, state) = if take {
        (
            "UPDATE stock SET reserved = reserved - $3, on_hand = on_hand - $3 WHERE warehouse_id = $1 AND sku = $2",
            HoldState::Committed,
        )
    } else {
        ("UPDATE stock SET reserved = reserved - $3 WHERE warehouse_id = $1 AND sku = $2", HoldState::Released)
    };
    let update = db.prepare_cached(update).await?;
    for (warehouse_id, sku, quantity) in held(db, order_id).await? {
        db.execute(&update, &[&warehouse_id, &sku, &quantity]).await?;
    }
    let stmt = db.prepare_cached("UPDATE reservations SET state = $2 WHERE order_id = $1 AND state = 'HELD'").await?;
    db.execute(&stmt, &[&order_id, &state.as_str()]).await?;
    Ok(())
}

async fn free_key(db: &impl GenericClient, order_id: &str) -> Result<(), StoreError> {
    let stmt = db.prepare_cached("DELETE FROM idempotency WHERE order_id = $1 AND status_code IS NULL").await?;
    db.execute(&stmt, &[&order_id]).await?;
    Ok(())
}

pub async fn cancel(db: &impl GenericClient, order_id: &str, reason: &str) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE orders SET status = 'CANCELLED', invoice = json_build_object('reason', $2::text)::text, updated_at = $3
             WHERE id = $1 AND status = 'PENDING'",
        )
        .await?;
    let changed = db.execute(&stmt, &[&order_id, &reason, &now_rfc3339()]).await?;
    if changed > 0 {
        finish_holds(db, order_id, false).await?;
        free_key(db, order_id).await?;
        let stmt = db
            .prepare_cached(
                "UPDATE payments SET status = 'FAILED', failure = $2, token = NULL WHERE order_id = $1 AND status = 'INTENT'",
            )
            .await?;
        db.execute(&stmt, &[&order_id, &reason]).await?;
    }
    Ok(changed > 0)
}

pub async fn discard(db: &impl GenericClient, order_id: &str) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT 1 FROM orders o WHERE o.id = $1 AND o.status = 'PENDING'
             AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id) FOR UPDATE",
        )
        .await?;
    let pending = db.query_opt(&stmt, &[&order_id]).await?.is_some();
    if pending {
        finish_holds(db, order_id, false).await?;
        free_key(db, order_id).await?;
        let stmt = db.prepare_cached("DELETE FROM reservations WHERE order_id = $1").await?;
        db.execute(&stmt, &[&order_id]).await?;
        let stmt = db.prepare_cached("DELETE FROM orders WHERE id = $1").await?;
        db.execute(&stmt, &[&order_id]).await?;
    }
    Ok(pending)
}

pub async fn record_intent(db: &impl GenericClient, intent: &PaymentIntent) -> Result<(), StoreError> {
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

pub async fn settle(db: &impl GenericClient, settlement: &Settlement) -> Result<(), StoreError> {
    let paid = settlement.status == OrderStatus::Confirmed;
    let now = now_rfc3339();
    let stmt = db
        .prepare_cached(
            "UPDATE orders SET status = $2, invoice = $3, updated_at = $4 WHERE id = $1 AND status = 'PENDING'",
        )
        .await?;
    let updated =
        db.execute(&stmt, &[&settlement.order_id, &settlement.status.as_str(), &settlement.invoice, &now]).await?;
    if updated == 0 {
        return Err(StoreError::Conflict(format!("order {} is no longer pending", settlement.order_id)));
    }
    finish_holds(db, &settlement.order_id, paid).await?;
    if paid {
        let stmt = db.prepare_cached("DELETE FROM carts WHERE customer_id = $1").await?;
        db.execute(&stmt, &[&settlement.customer_id]).await?;
    }
    let stmt = db
        .prepare_cached(
            "UPDATE payments SET status = $2, transaction_id = $3, attempts = $4, failure = $5, updated_at = $6,
                 token = NULL
             WHERE order_id = $1",
        )
        .await?;
    let status = if paid { PaymentStatus::Captured } else { PaymentStatus::Failed };
    db.execute(
        &stmt,
        &[
            &settlement.order_id,
            &status.as_str(),
            &settlement.transaction_id,
            &i64::from(settlement.attempts),
            &settlement.failure,
            &now,
        ],
    )
    .await?;
    insert_events(db, &settlement.order_id, &settlement.events).await?;
    // A PAYMENT_PENDING order's key answers 202 until now: the final
    // answer replaces it.
    let stmt = db
        .prepare_cached(
            "UPDATE idempotency SET status_code = $2, body = $3
             WHERE order_id = $1 AND (status_code IS NULL OR status_code = 202)",
        )
        .await?;
    let (status_code, body) = settlement.answer.stored();
    db.execute(&stmt, &[&settlement.order_id, &i64::from(status_code), &body]).await?;
    Ok(())
}

/// See `store::orders::mark_payment_pending`. Rows are locked in the order
/// `settle` locks them (order, payment, key).
pub async fn mark_payment_pending(db: &impl GenericClient, pending: &PendingPayment) -> Result<(), StoreError> {
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
pub async fn defer_resolution(
    db: &impl GenericClient,
    order_id: &str,
    resolve_after_ms: i64,
) -> Result<(), StoreError> {
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
pub async fn payments_pending(db: &impl GenericClient, limit: usize) -> Result<Vec<PendingPaymentRow>, StoreError> {
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
pub async fn payments_pending_count(db: &impl GenericClient) -> Result<u64, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id
             WHERE p.status = 'INTENT' AND p.resolve_after_ms IS NOT NULL AND o.status = 'PENDING'",
        )
        .await?;
    Ok(db.query_one(&stmt, &[]).await?.get::<_, i64>(0) as u64)
}

async fn insert_events(db: &impl GenericClient, order_id: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    let insert = db
        .prepare_cached(
            "INSERT INTO outbox (id, order_id, type, envelope, state, created_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    let now = now_ms();
    for event in events {
        let (envelope, state) = event.body.stored();
        db.execute(&insert, &[&event.id, &order_id, &event.kind.as_str(), &envelope, &state.as_str(), &now]).await?;
    }
    Ok(())
}

const ORDER_COLUMNS: &str =
    "id, customer_id, channel, status, total_cents, currency, created_at, invoice, fraud_review";

fn stored_order(r: &Row) -> Result<StoredOrder, StoreError> {
    let review: Option<String> = r.get(8);
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
    })
}

pub async fn get_order(db: &impl GenericClient, order_id: &str) -> Result<Option<StoredOrder>, StoreError> {
    let stmt = db.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1")).await?;
    db.query_opt(&stmt, &[&order_id]).await?.as_ref().map(stored_order).transpose()
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
    db: &impl GenericClient,
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
pub async fn claim_awaiting_verdict(db: &impl GenericClient, limit: usize) -> Result<Vec<AwaitingReview>, StoreError> {
    let now = now_ms();
    let stmt = db
        .prepare_cached(
            "UPDATE outbox o SET next_attempt_ms = $2 FROM (
                 SELECT seq FROM outbox WHERE state = 'AWAITING_VERDICT' AND next_attempt_ms <= $1
                 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) waiting
             WHERE o.seq = waiting.seq RETURNING o.order_id, o.id",
        )
        .await?;
    let mut waiting: Vec<(String, String)> = db
        .query(&stmt, &[&now, &(now + VERDICT_LEASE_MS), &(limit as i64)])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    waiting.sort();
    let mut out: Vec<AwaitingReview> = Vec::new();
    for (order_id, event_id) in waiting {
        match out.last_mut() {
            Some(last) if last.order.id == order_id => last.event_ids.push(event_id),
            _ => {
                if let Some(order) = get_order(db, &order_id).await? {
                    out.push(AwaitingReview { order, event_ids: vec![event_id] });
                }
            }
        }
    }
    Ok(out)
}

pub async fn record_verdicts(db: &impl GenericClient, verdicts: &[Verdict]) -> Result<(), StoreError> {
    let review = db
        .prepare_cached("UPDATE orders SET fraud_review = $2, fraud_action = $3 WHERE id = $1 AND fraud_review IS NULL")
        .await?;
    let ready = db
        .prepare_cached(
            "UPDATE outbox SET envelope = $2, state = 'READY', next_attempt_ms = 0
             WHERE id = $1 AND state = 'AWAITING_VERDICT'",
        )
        .await?;
    for verdict in verdicts {
        db.execute(&review, &[&verdict.order_id, &verdict.review, &verdict.action]).await?;
        for (id, envelope) in &verdict.envelopes {
            db.execute(&ready, &[id, envelope]).await?;
        }
    }
    Ok(())
}

async fn orders_where(db: &impl GenericClient, condition: &str, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
    let stmt = db
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE {condition}
             ORDER BY id DESC LIMIT $1"
        ))
        .await?;
    db.query(&stmt, &[&i64::try_from(limit).unwrap_or(i64::MAX)]).await?.iter().map(stored_order).collect()
}

pub async fn recent_settled(db: &impl GenericClient, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
    orders_where(db, "status IN ('CONFIRMED', 'PAYMENT_FAILED')", limit).await
}

pub async fn escalations(db: &impl GenericClient, limit: usize) -> Result<Vec<StoredOrder>, StoreError> {
    orders_where(db, "fraud_action = 'ESCALATE'", limit).await
}

pub async fn key_record(db: &impl GenericClient, channel: &str, key: &str) -> Result<Option<KeyRecord>, StoreError> {
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
