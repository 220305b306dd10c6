//! The outbox on PostgreSQL (the twin of `store::sqlite::outbox`; the
//! records are in `store::outbox`). Several replicas deliver at once: a
//! delivery pass claims its due events with `FOR UPDATE SKIP LOCKED` and a
//! lease (their next attempt moves [`DELIVERY_LEASE_MS`] ahead), so each
//! event is offered to one replica; a replica that dies mid-delivery leaves
//! them to another once the lease runs out, and the broker's deduplication
//! by event id (JetStream) keeps them once.

use super::super::StoreError;
use super::super::outbox::{DueBody, DueEvent, SinkPosition};
use super::Db;
use crate::clock::now_ms;

/// How long a delivery pass owns the events it claimed.
pub const DELIVERY_LEASE_MS: i64 = 30_000;

pub async fn claim_due_events(db: &impl Db, now_ms: i64, limit: usize) -> Result<Vec<DueEvent>, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE outbox o SET next_attempt_ms = $2 FROM (
                 SELECT seq FROM outbox WHERE state = 'READY' AND next_attempt_ms <= $1
                 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) due
             WHERE o.seq = due.seq
             RETURNING o.seq, o.id, o.type, o.envelope, o.attempts, o.order_id, o.created_ms,
                 CASE WHEN o.envelope IS NULL THEN (SELECT invoice FROM orders WHERE id = o.order_id) END",
        )
        .await?;
    let mut out = Vec::new();
    for r in db.query(&stmt, &[&now_ms, &(now_ms + DELIVERY_LEASE_MS), &(limit as i64)]).await? {
        let seq: i64 = r.get(0);
        let kind = r.get::<_, &str>(2).parse().map_err(|e| StoreError::Corrupt(format!("outbox row {seq}: {e}")))?;
        let body = DueBody::of(r.get(3), r.get(5), r.get(6), r.get(7));
        out.push(DueEvent { seq, id: r.get(1), kind, body, attempts: r.get::<_, i64>(4) as u32 });
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

pub async fn mark_delivered(db: &impl Db, seqs: &[i64], position: Option<&SinkPosition>) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE outbox SET state = 'DELIVERED', delivered_ms = $2 WHERE seq = ANY($1) AND state = 'READY'",
        )
        .await?;
    db.execute(&stmt, &[&seqs, &now_ms()]).await?;
    if let Some(position) = position {
        let stmt = db
            .prepare_cached(
                r#"INSERT INTO sink_positions (stream, "offset") VALUES ($1, $2)
                   ON CONFLICT (stream) DO UPDATE SET "offset" = $2"#,
            )
            .await?;
        db.execute(&stmt, &[&position.stream, &super::bigint(position.offset, "the offset")?]).await?;
    }
    Ok(())
}

pub async fn mark_retry(db: &impl Db, seqs: &[i64], error: &str, next_attempt_ms: i64) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_ms = $3 WHERE seq = ANY($1)",
        )
        .await?;
    db.execute(&stmt, &[&seqs, &error, &next_attempt_ms]).await?;
    Ok(())
}

pub async fn sink_positions(db: &impl Db) -> Result<Vec<SinkPosition>, StoreError> {
    let stmt = db.prepare_cached(r#"SELECT stream, "offset" FROM sink_positions ORDER BY stream"#).await?;
    Ok(db
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| SinkPosition { stream: r.get(0), offset: r.get::<_, i64>(1) as u64 })
        .collect())
}

pub async fn outbox_backlog(db: &impl Db) -> Result<(u64, i64), StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*), coalesce(min(created_ms), 0) FROM outbox WHERE state IN ('READY', 'AWAITING_VERDICT')",
        )
        .await?;
    let row = db.query_one(&stmt, &[]).await?;
    let oldest: i64 = row.get(1);
    Ok((row.get::<_, i64>(0) as u64, if oldest == 0 { 0 } else { now_ms() - oldest }))
}
