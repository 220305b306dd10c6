//! Retention on PostgreSQL (the twin of `store::sqlite::retention`; the
//! tables and what is never pruned are in `store::retention`).
//!
//! Every replica runs the pruner, so several may prune one table at once.
//! A batch picks the oldest `limit` rows past the cutoff through an index
//! in time order (an index scan: it skips the entries of rows deleted
//! before, which a bitmap scan would read again) and locks them `FOR
//! UPDATE SKIP LOCKED` before it deletes them by `ctid`: rows another
//! replica's batch holds are passed over, not waited for, so two pruners
//! delete disjoint rows and neither ever waits on the other, nor on an
//! order's transaction holding a key. A batch is one statement in its own
//! implicit transaction: its locks last as long as its few hundred deletes.

use tokio_postgres::types::Type;

use super::super::StoreError;
use super::super::retention::{Retained, text_cutoff};
use super::Db;

/// Settled keys claimed and last answered before `$1` (see
/// `retention::text_cutoff`; text compared byte-wise, as the index
/// `idempotency_by_time` is built), oldest first. The order's last update
/// is a scalar subquery on purpose: as `NOT EXISTS` the planner makes it an
/// anti join hashing every recent order, and sorts, on every batch; this
/// way the index is read in order, each key's order is one primary-key
/// probe, and the scan stops at `$2` keys. The state is checked again on
/// the row deleted: a key without a final answer is never taken.
const PRUNE_IDEMPOTENCY: &str = r#"WITH gone AS (
     DELETE FROM idempotency WHERE ctid = ANY(ARRAY(
         SELECT i.ctid FROM idempotency i
         WHERE i.created_at COLLATE "C" < $1 AND i.status_code IS NOT NULL AND i.status_code <> 202
           AND coalesce((SELECT o.updated_at FROM orders o WHERE o.id = i.order_id), '') COLLATE "C" < $1
         ORDER BY i.created_at COLLATE "C" LIMIT $2
         FOR UPDATE OF i SKIP LOCKED))
       AND status_code IS NOT NULL AND status_code <> 202
     RETURNING 1)
 SELECT count(*) FROM gone"#;

/// Delivered events, oldest delivery first, through the partial index
/// `outbox_delivered` (an entry is written once per event, at delivery).
const PRUNE_DELIVERED: &str = "WITH gone AS (
     DELETE FROM outbox WHERE ctid = ANY(ARRAY(
         SELECT ctid FROM outbox WHERE state = 'DELIVERED' AND delivered_ms < $1
         ORDER BY delivered_ms LIMIT $2
         FOR UPDATE SKIP LOCKED))
       AND state = 'DELIVERED'
     RETURNING 1)
 SELECT count(*) FROM gone";

const PRUNE_SHADOW_RUNS: &str = "WITH gone AS (
     DELETE FROM shadow_runs WHERE ctid = ANY(ARRAY(
         SELECT ctid FROM shadow_runs WHERE created_ms < $1 ORDER BY created_ms LIMIT $2
         FOR UPDATE SKIP LOCKED))
     RETURNING 1)
 SELECT count(*) FROM gone";

const PRUNE_ROLLOUT_EVENTS: &str = "WITH gone AS (
     DELETE FROM rollout_events WHERE ctid = ANY(ARRAY(
         SELECT ctid FROM rollout_events WHERE at_ms < $1 ORDER BY at_ms LIMIT $2
         FOR UPDATE SKIP LOCKED))
     RETURNING 1)
 SELECT count(*) FROM gone";

/// Deletes up to `limit` rows of `table` older than `before_ms`; how many.
/// One round trip: the statement is its own transaction (no `BEGIN`).
pub async fn prune(db: &impl Db, table: Retained, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match table {
        Retained::Idempotency => {
            let cutoff = text_cutoff(before_ms);
            db.call(PRUNE_IDEMPOTENCY, &[(&cutoff, Type::TEXT), (&limit, Type::INT8)]).await?
        }
        Retained::DeliveredEvents => {
            db.call(PRUNE_DELIVERED, &[(&before_ms, Type::INT8), (&limit, Type::INT8)]).await?
        }
        Retained::ShadowRuns => db.call(PRUNE_SHADOW_RUNS, &[(&before_ms, Type::INT8), (&limit, Type::INT8)]).await?,
        Retained::RolloutEvents => {
            db.call(PRUNE_ROLLOUT_EVENTS, &[(&before_ms, Type::INT8), (&limit, Type::INT8)]).await?
        }
    };
    let deleted: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
    Ok(deleted.max(0) as u64)
}

/// The time of the newest row of `table` beyond its `keep` newest; `None`
/// when it holds `keep` rows or fewer, or has no row cap (see the SQLite twin).
pub async fn time_beyond_newest(db: &impl Db, table: Retained, keep: u64) -> Result<Option<i64>, StoreError> {
    let sql = match table {
        Retained::ShadowRuns => "SELECT created_ms FROM shadow_runs ORDER BY created_ms DESC LIMIT 1 OFFSET $1",
        Retained::RolloutEvents => "SELECT at_ms FROM rollout_events ORDER BY at_ms DESC LIMIT 1 OFFSET $1",
        Retained::Idempotency | Retained::DeliveredEvents => return Ok(None),
    };
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let rows = db.call(sql, &[(&keep, Type::INT8)]).await?;
    Ok(rows.first().map(|r| r.get(0)))
}
