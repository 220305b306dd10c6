//! The outbox on SQLite (the twin of `store::postgres::outbox`; the records
//! are in `store::outbox`): one process delivers, so due events are read,
//! not claimed.

use rusqlite::{Connection, params};

use super::super::StoreError;
use super::super::outbox::{DueBody, DueEvent, SinkPosition};
use crate::clock::now_ms;

/// `state = 'READY'` is the partial index `outbox_ready`, in `seq` order:
/// a pass reads only the events still to deliver. An event without an envelope reads its order's invoice (a primary-key
/// lookup per such event).
pub(super) const DUE_EVENTS: &str = "SELECT e.seq, e.id, e.type, e.envelope, e.attempts, e.order_id, e.created_ms,
            CASE WHEN e.envelope IS NULL THEN (SELECT o.invoice FROM orders o WHERE o.id = e.order_id) END
     FROM outbox e
     WHERE e.state = 'READY' AND e.next_attempt_ms <= ?1 ORDER BY e.seq LIMIT ?2";

/// Up to `limit` READY events whose next attempt is due, oldest first.
pub fn due_events(conn: &Connection, now_ms: i64, limit: usize) -> Result<Vec<DueEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(DUE_EVENTS)?;
    let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
        let body = DueBody::of(r.get(3)?, r.get(5)?, r.get(6)?, r.get(7)?);
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, body, r.get(4)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, id, kind, body, attempts) = row?;
        let kind = kind.parse().map_err(|e| StoreError::Corrupt(format!("outbox row {seq}: {e}")))?;
        out.push(DueEvent { seq, id, kind, body, attempts });
    }
    Ok(out)
}

/// Marks events delivered and records where the sink's stream now ends.
pub fn mark_delivered(conn: &Connection, seqs: &[i64], position: Option<&SinkPosition>) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE outbox SET state = 'DELIVERED', delivered_ms = ?2 WHERE seq = ?1 AND state = 'READY'",
    )?;
    let now = now_ms();
    for seq in seqs {
        stmt.execute(params![seq, now])?;
    }
    if let Some(position) = position {
        conn.prepare_cached(
            "INSERT INTO sink_positions (stream, offset) VALUES (?1, ?2)
             ON CONFLICT (stream) DO UPDATE SET offset = ?2",
        )?
        .execute(params![position.stream, position.offset as i64])?;
    }
    Ok(())
}

pub fn mark_retry(conn: &Connection, seqs: &[i64], error: &str, next_attempt_ms: i64) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_ms = ?3 WHERE seq = ?1",
    )?;
    for seq in seqs {
        stmt.execute(params![seq, error, next_attempt_ms])?;
    }
    Ok(())
}

/// Every recorded sink position.
pub fn sink_positions(conn: &Connection) -> Result<Vec<SinkPosition>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT stream, offset FROM sink_positions ORDER BY stream")?;
    let rows = stmt.query_map([], |r| Ok(SinkPosition { stream: r.get(0)?, offset: r.get::<_, i64>(1)? as u64 }))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Events not yet delivered, and the age in ms of the oldest of them.
pub fn outbox_backlog(conn: &Connection) -> Result<(u64, i64), StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*), coalesce(min(created_ms), 0) FROM outbox WHERE state IN ('READY', 'AWAITING_VERDICT')",
        )?
        .query_row([], |r| {
            let oldest: i64 = r.get(1)?;
            Ok((r.get::<_, i64>(0)? as u64, if oldest == 0 { 0 } else { now_ms() - oldest }))
        })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatcher and the fraud worker poll the outbox all the time:
    /// their queries must read the partial index of pending events, never
    /// the whole table (which grows with every order).
    #[test]
    fn the_polling_queries_use_the_pending_indexes() {
        let conn = super::super::migrated_database();
        for (sql, index) in
            [(DUE_EVENTS, "outbox_ready"), (super::super::orders::AWAITING_VERDICT, "outbox_awaiting_verdict")]
        {
            let plan = super::super::query_plan(&conn, sql);
            assert!(plan.contains(&format!("USING INDEX {index}")), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts instead of reading in order: {plan}");
        }
    }
}
