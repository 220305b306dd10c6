//! The sandbox gateway's ledger on SQLite (the twin of
//! `store::postgres::ledger`; the records are in `store::ledger`).
//!
//! A key is captured or cancelled, never both. Here the writer runs one
//! command at a time, so the check and the write of either cannot
//! interleave with the other's.

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::super::StoreError;
use super::super::ledger::{Captured, LedgerCancel, LedgerCharge};
use crate::clock::now_rfc3339;

/// Records a capture for `key`, or finds the one already recorded; a
/// cancelled key captures nothing.
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
    if is_cancelled(conn, key)? {
        return Ok(Captured::Cancelled);
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

/// Cancels `key`: its charge if it was captured, otherwise the key is
/// recorded as cancelled (again: idempotent) and no capture will ever be
/// made under it. What a caller asks when it cannot tell whether its
/// capture happened and must know for good.
pub fn cancel(conn: &Connection, key: &str) -> Result<LedgerCancel, StoreError> {
    if let Some(charge) = lookup(conn, key)? {
        return Ok(LedgerCancel::Captured(charge));
    }
    conn.prepare_cached(
        "INSERT INTO sandbox_cancelled (idempotency_key, cancelled_at) VALUES (?1, ?2)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )?
    .execute(params![key, now_rfc3339()])?;
    Ok(LedgerCancel::Cancelled)
}

fn is_cancelled(conn: &Connection, key: &str) -> Result<bool, StoreError> {
    Ok(conn.prepare_cached("SELECT 1 FROM sandbox_cancelled WHERE idempotency_key = ?1")?.exists([key])?)
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

/// Every capture, oldest first: transaction ids are UUIDv7, made in the
/// order of the captures (the table has no rowid since schema version 16).
pub fn all(conn: &Connection) -> Result<Vec<LedgerCharge>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT idempotency_key, transaction_id, order_id, amount_cents, currency FROM sandbox_charges ORDER BY transaction_id",
    )?;
    Ok(stmt.query_map([], charge)?.collect::<Result<_, _>>()?)
}
