//! The sandbox gateway's ledger on PostgreSQL (the twin of
//! `store::sqlite::ledger`; the records are in `store::ledger`): shared by
//! every replica, so any of them can recover an order another one started.
//!
//! A key is captured or cancelled, never both, whichever replicas race on
//! it: a capture and a cancel each first take the key's transaction-scoped
//! advisory lock ([`lock_key`]), so one of them runs to its commit before
//! the other looks at the key.

use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::super::StoreError;
use super::super::ledger::{Captured, LedgerCancel, LedgerCharge};
use super::{Db, OrderCall};
use crate::clock::now_rfc3339;

/// The first key of the ledger's advisory locks (`pg_advisory_xact_lock(int,
/// int)`, the second being the hash of the idempotency key): a space of its
/// own, apart from the migration's single-`bigint` lock. "LDGR".
const LEDGER_LOCKS: i32 = 0x4c44_4752;

/// Holds `key` until the transaction ends: a capture and a cancel of one
/// key never interleave. Keys whose hashes collide merely wait for each other.
async fn lock_key(db: &impl Db, key: &str) -> Result<(), StoreError> {
    let stmt = db.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))").await?;
    db.execute(&stmt, &[&LEDGER_LOCKS, &key]).await?;
    Ok(())
}

/// `smartmart_ledger_capture`'s call (see [`capture`]).
pub(super) const CAPTURE: OrderCall = OrderCall {
    sql: "SELECT outcome, charge_transaction_id, charge_order_id, charge_amount_cents, charge_currency
          FROM smartmart_ledger_capture($1, $2, $3, $4, $5, $6, $7)",
    types: &[Type::INT4, Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT],
};

/// Records a capture for `key`, or finds the one already recorded (a racing
/// capture of the same key waits for the first and then finds it); a
/// cancelled key captures nothing. One call of `smartmart_ledger_capture`
/// (schema version 8), which takes the key's lock ([`lock_key`]'s): one
/// round trip, its own transaction, as a gateway's capture is one request.
pub async fn capture(
    db: &impl Db,
    key: &str,
    order_id: &str,
    amount_cents: u64,
    currency: &str,
) -> Result<Captured, StoreError> {
    let amount = super::bigint(amount_cents, "the amount")?;
    let transaction_id = format!("txn_{}", Uuid::now_v7().simple());
    let rows = db
        .call_prepared(&CAPTURE, &[&LEDGER_LOCKS, &key, &transaction_id, &order_id, &amount, &currency, &now_rfc3339()])
        .await?;
    let Some(row) = rows.first() else {
        return Err(StoreError::Conflict(format!("the ledger row of {key} vanished")));
    };
    let charge = || LedgerCharge {
        idempotency_key: key.to_string(),
        transaction_id: row.get(1),
        order_id: row.get(2),
        amount_cents: row.get::<_, i64>(3) as u64,
        currency: row.get(4),
    };
    match row.get::<_, &str>(0) {
        "cancelled" => Ok(Captured::Cancelled),
        "new" => Ok(Captured::New(charge())),
        "existing" => {
            let existing = charge();
            Ok(if existing.amount_cents != amount_cents {
                Captured::Mismatch("idempotency key reused with another amount")
            } else if existing.currency != currency {
                Captured::Mismatch("idempotency key reused with another currency")
            } else {
                Captured::Existing(existing)
            })
        }
        other => Err(StoreError::Corrupt(format!("smartmart_ledger_capture answered {other:?}"))),
    }
}

/// Cancels `key` (see `store::ledger::cancel`): its charge if it was
/// captured, otherwise the key is recorded as cancelled, idempotently.
pub async fn cancel(db: &impl Db, key: &str) -> Result<LedgerCancel, StoreError> {
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

fn charge(r: &Row) -> LedgerCharge {
    LedgerCharge {
        idempotency_key: r.get(0),
        transaction_id: r.get(1),
        order_id: r.get(2),
        amount_cents: r.get::<_, i64>(3) as u64,
        currency: r.get(4),
    }
}

pub async fn lookup(db: &impl Db, key: &str) -> Result<Option<LedgerCharge>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT idempotency_key, transaction_id, order_id, amount_cents, currency
             FROM sandbox_charges WHERE idempotency_key = $1",
        )
        .await?;
    Ok(db.query_opt(&stmt, &[&key]).await?.as_ref().map(charge))
}

pub async fn all(db: &impl Db) -> Result<Vec<LedgerCharge>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT idempotency_key, transaction_id, order_id, amount_cents, currency FROM sandbox_charges ORDER BY seq",
        )
        .await?;
    Ok(db.query(&stmt, &[]).await?.iter().map(charge).collect())
}
