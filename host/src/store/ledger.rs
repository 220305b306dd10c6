//! The sandbox payment gateway's ledger: what the stand-in provider
//! captured, one row per gateway idempotency key. It lives in the store's
//! database so that its writes share the writer's group commit and any
//! process on the same database can reconcile an order another started.

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::{StoreError, now_rfc3339};

/// A capture as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCharge {
    pub idempotency_key: String,
    pub transaction_id: String,
    pub order_id: String,
    pub amount_cents: u64,
    pub currency: String,
}

/// What recording a capture did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A new charge.
    New(LedgerCharge),
    /// The key was captured before (a retry): the same charge.
    Existing(LedgerCharge),
    /// The key was captured before for another amount or currency.
    Mismatch(&'static str),
}

/// Records a capture for `key`, or finds the one already recorded.
pub fn capture(
    conn: &Connection,
    key: &str,
    order_id: &str,
    amount_cents: u64,
    currency: &str,
) -> Result<Captured, StoreError> {
    let amount = i64::try_from(amount_cents).map_err(|_| StoreError::Conflict("amount too large".into()))?;
    if let Some(existing) = lookup(conn, key)? {
        return Ok(if existing.amount_cents != amount_cents {
            Captured::Mismatch("idempotency key reused with another amount")
        } else if existing.currency != currency {
            Captured::Mismatch("idempotency key reused with another currency")
        } else {
            Captured::Existing(existing)
        });
    }
    let transaction_id = format!("txn_{}", Uuid::now_v7().simple());
    conn.prepare_cached(
        "INSERT INTO sandbox_charges (idempotency_key, transaction_id, order_id, amount_cents, currency, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![key, transaction_id, order_id, amount, currency, now_rfc3339()])?;
    Ok(Captured::New(LedgerCharge {
        idempotency_key: key.to_string(),
        transaction_id,
        order_id: order_id.to_string(),
        amount_cents,
        currency: currency.to_string(),
    }))
}

fn charge(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerCharge> {
    Ok(LedgerCharge {
        idempotency_key: r.get(0)?,
        transaction_id: r.get(1)?,
        order_id: r.get(2)?,
        amount_cents: r.get::<_, i64>(3)? as u64,
        currency: r.get(4)?,
    })
}

/// The capture recorded for `key`, if any.
pub fn lookup(conn: &Connection, key: &str) -> Result<Option<LedgerCharge>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT idempotency_key, transaction_id, order_id, amount_cents, currency
             FROM sandbox_charges WHERE idempotency_key = ?1",
        )?
        .query_row([key], charge)
        .optional()?)
}

/// Every capture, oldest first.
pub fn all(conn: &Connection) -> Result<Vec<LedgerCharge>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT idempotency_key, transaction_id, order_id, amount_cents, currency FROM sandbox_charges ORDER BY rowid",
    )?;
    Ok(stmt.query_map([], charge)?.collect::<Result<_, _>>()?)
}
