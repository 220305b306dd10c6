//! The sandbox gateway's ledger on PostgreSQL (the twin of
//! `store::sqlite::ledger`; the records are in `store::ledger`): shared by
//! every replica, so any of them can recover an order another one started.
//!
//! A key is captured or cancelled, never both, whichever replicas race on
//! it: a capture and a cancel each first take the key's transaction-scoped
//! advisory lock ([`lock_key`]), so one of them runs to its commit before
//! the other looks at the key.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::super::StoreError;
use super::super::ledger::{Captured, LedgerCancel, LedgerCharge};
use crate::clock::now_rfc3339;

/// The first key of the ledger's advisory locks (`pg_advisory_xact_lock(int,
/// int)`, the second being the hash of the idempotency key): a space of its
/// own, apart from the migration's single-`bigint` lock. "LDGR".
const LEDGER_LOCKS: i32 = 0x4c44_4752;

/// Holds `key` until the transaction ends: a capture and a cancel of one
/// key never interleave. Keys whose hashes collide merely wait for each other.
async fn lock_key(db: &impl GenericClient, key: &str) -> Result<(), StoreError> {
    let stmt = db.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))").await?;
    db.execute(&stmt, &[&LEDGER_LOCKS, &key]).await?;
    Ok(())
}

/// Records a capture for `key`, or finds the one already recorded (a racing
/// capture of the same key waits for the first and then finds it); a
/// cancelled key captures nothing.
pub async fn capture(
    db: &impl GenericClient,
    key: &str,
    order_id: &str,
    amount_cents: u64,
    currency: &str,
) -> Result<Captured, StoreError> {
    let amount = super::bigint(amount_cents, "the amount")?;
    lock_key(db, key).await?;
    if is_cancelled(db, key).await? {
        return Ok(Captured::Cancelled);
    }
    let transaction_id = format!("txn_{}", Uuid::now_v7().simple());
    let stmt = db
        .prepare_cached(
            "INSERT INTO sandbox_charges (idempotency_key, transaction_id, order_id, amount_cents, currency, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .await?;
    if db.execute(&stmt, &[&key, &transaction_id, &order_id, &amount, &currency, &now_rfc3339()]).await? == 1 {
        return Ok(Captured::New(LedgerCharge {
            idempotency_key: key.to_string(),
            transaction_id,
            order_id: order_id.to_string(),
            amount_cents,
            currency: currency.to_string(),
        }));
    }
    let Some(existing) = lookup(db, key).await? else {
        return Err(StoreError::Conflict(format!("the ledger row of {key} vanished")));
    };
    Ok(if existing.amount_cents != amount_cents {
        Captured::Mismatch("idempotency key reused with another amount")
    } else if existing.currency != currency {
        Captured::Mismatch("idempotency key reused with another currency")
    } else {
        Captured::Existing(existing)
    })
}

/// Cancels `key` (see `store::ledger::cancel`): its charge if it was
/// captured, otherwise the key is recorded as cancelled, idempotently.
pub async fn cancel(db: &impl GenericClient, key: &str) -> Result<LedgerCancel, StoreError> {
    lock_key(db, key).await?;
    if let Some(charge) = lookup(db, key).await? {
        return Ok(LedgerCancel::Captured(charge));
    }
    let stmt = db
        .prepare_cached(
            "INSERT INTO sandbox_cancelled (idempotency_key, cancelled_at) VALUES ($1, $2)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .await?;
    db.execute(&stmt, &[&key, &now_rfc3339()]).await?;
    Ok(LedgerCancel::Cancelled)
}

async fn is_cancelled(db: &impl GenericClient, key: &str) -> Result<bool, StoreError> {
    let stmt = db.prepare_cached("SELECT 1 FROM sandbox_cancelled WHERE idempotency_key = $1").await?;
    Ok(db.query_opt(&stmt, &[&key]).await?.is_some())
}

fn charge(r: &Row) -> LedgerCharge {
    LedgerCharge {
        idempotency_key: r.get(0),
        transaction_id: r.get(1),
        order_id: r.get(2),
        amount_cents: r.get::<_, i64>(3) as u64,
        currency: r.get(4),
    }
}

pub async fn lookup(db: &impl GenericClient, key: &str) -> Result<Option<LedgerCharge>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT idempotency_key, transaction_id, order_id, amount_cents, currency
             FROM sandbox_charges WHERE idempotency_key = $1",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&key]).await?.as_ref().map(charge))
}

pub async fn all(db: &impl GenericClient) -> Result<Vec<LedgerCharge>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT idempotency_key, transaction_id, order_id, amount_cents, currency FROM sandbox_charges ORDER BY seq",
        )
        .await?;
    Ok(db.query(&stmt, &[]).await?.iter().map(charge).collect())
}
