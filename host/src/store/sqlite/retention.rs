//! Retention on SQLite (the twin of `store::postgres::retention`; the
//! tables and what is never pruned are in `store::retention`). One batch is
//! one writer command: the oldest `limit` rows past the cutoff, found
//! through an index in time order (migration 10), deleted by key. The
//! writer commits it with the orders of its group, so a batch holds the
//! writer only for its own few hundred deletes.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::super::StoreError;
use super::super::retention::{Retained, text_cutoff};

/// Settled keys claimed and last answered before `?1` (see
/// `retention::text_cutoff`), oldest first through `idempotency_by_time`;
/// the order's last update (its settlement) is looked up per key by its
/// primary key (a key without an order row goes by its claim alone).
/// A key whose order has no final answer (`status_code` NULL or 202) is
/// never taken, however old.
pub(super) const PRUNE_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE (channel, key) IN (
         SELECT i.channel, i.key FROM idempotency i
         WHERE i.created_at < ?1 AND i.status_code IS NOT NULL AND i.status_code <> 202
           AND coalesce((SELECT o.updated_at FROM orders o WHERE o.id = i.order_id), '') < ?1
         ORDER BY i.created_at LIMIT ?2)";

/// Delivered events, oldest delivery first, through the partial index
/// `outbox_delivered` (DELIVERED rows only): READY and AWAITING_VERDICT
/// rows are not in it and not matched.
pub(super) const PRUNE_DELIVERED: &str = "DELETE FROM outbox WHERE seq IN (
         SELECT seq FROM outbox WHERE state = 'DELIVERED' AND delivered_ms < ?1
         ORDER BY delivered_ms LIMIT ?2)";

/// Shadow runs recorded before `?1`, oldest first (`shadow_runs_by_time`).
pub(super) const PRUNE_SHADOW_RUNS: &str = "DELETE FROM shadow_runs WHERE rowid IN (
         SELECT rowid FROM shadow_runs WHERE created_ms < ?1 ORDER BY created_ms LIMIT ?2)";

/// Rollout events before `?1`, oldest first (`rollout_events_by_time`).
pub(super) const PRUNE_ROLLOUT_EVENTS: &str = "DELETE FROM rollout_events WHERE id IN (
         SELECT id FROM rollout_events WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)";

/// Deletes up to `limit` rows of `table` older than `before_ms`; how many.
pub fn prune(conn: &Connection, table: Retained, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let deleted = match table {
        Retained::Idempotency => {
            conn.prepare_cached(PRUNE_IDEMPOTENCY)?.execute(params![text_cutoff(before_ms), limit])?
        }
        Retained::DeliveredEvents => conn.prepare_cached(PRUNE_DELIVERED)?.execute(params![before_ms, limit])?,
        Retained::ShadowRuns => conn.prepare_cached(PRUNE_SHADOW_RUNS)?.execute(params![before_ms, limit])?,
        Retained::RolloutEvents => conn.prepare_cached(PRUNE_ROLLOUT_EVENTS)?.execute(params![before_ms, limit])?,
    };
    Ok(deleted as u64)
}

/// The time of the newest row of `table` beyond its `keep` newest (the
/// index read backwards, `keep` entries skipped); `None` when the table
/// holds `keep` rows or fewer, or has no row cap (keys and delivered
/// events are bounded by age only).
pub fn time_beyond_newest(conn: &Connection, table: Retained, keep: u64) -> Result<Option<i64>, StoreError> {
    let sql = match table {
        Retained::ShadowRuns => "SELECT created_ms FROM shadow_runs ORDER BY created_ms DESC LIMIT 1 OFFSET ?1",
        Retained::RolloutEvents => "SELECT at_ms FROM rollout_events ORDER BY at_ms DESC LIMIT 1 OFFSET ?1",
        Retained::Idempotency | Retained::DeliveredEvents => return Ok(None),
    };
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    Ok(conn.prepare_cached(sql)?.query_row([keep], |r| r.get(0)).optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prune runs every pass on tables that grow with every order: each
    /// batch must find its rows through an index in time order, never by
    /// scanning or sorting the table.
    #[test]
    fn the_prunes_read_their_indexes_in_order() {
        let conn = super::super::migrated_database();
        for (sql, index) in [
            (PRUNE_IDEMPOTENCY, "idempotency_by_time"),
            (PRUNE_DELIVERED, "outbox_delivered"),
            (PRUNE_SHADOW_RUNS, "shadow_runs_by_time"),
            (PRUNE_ROLLOUT_EVENTS, "rollout_events_by_time"),
        ] {
            let plan = super::super::query_plan(&conn, sql);
            assert!(plan.contains(&format!(" INDEX {index} ")), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts instead of reading in order: {plan}");
            assert!(!plan.split("; ").any(|step| step.starts_with("SCAN")), "{sql} scans a table: {plan}");
        }
    }
}
