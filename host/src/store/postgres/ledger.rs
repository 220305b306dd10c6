//! The sandbox gateway's ledger on PostgreSQL (the twin of `store::ledger`):
//! shared by every replica, so any of them can recover an order another one
//! started.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::super::ledger::{Captured, LedgerCharge};
use super::super::{StoreError, now_rfc3339};

/// Records a capture for `key`, or finds the one already recorded (a racing
/// capture of the same key waits for the first and then finds it).
pub async fn capture(
    db: &impl GenericClient,
    key: &str,
    order_id: &str,
    amount_cents: u64,
    currency: &str,
) -> Result<Captured, StoreError> {
    let amount = super::bigint(amount_cents, "the amount")?;
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
