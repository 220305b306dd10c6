//! Rollouts on PostgreSQL (the twin of `store::sqlite::rollouts`; the
//! records are in `store::rollouts`): one canary state per entry and one
//! history, shared by every replica.

use super::super::StoreError;
use super::super::rollouts::{RolloutEvent, RolloutRecord};
use super::Db;

pub async fn record_event(db: &impl Db, event: &RolloutEvent) -> Result<(), StoreError> {
    let stmt =
        db.prepare_cached("INSERT INTO rollout_events (at_ms, kind, entry, reason) VALUES ($1, $2, $3, $4)").await?;
    db.execute(&stmt, &[&event.at_ms, &event.kind, &event.entry, &event.reason]).await?;
    Ok(())
}

pub async fn record_state(db: &impl Db, record: &RolloutRecord, event: &RolloutEvent) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO rollout_states (entry, slot, stable_digest, stable_config_hash, canary_digest,
                 canary_config_hash, state, reason, calls, errors, at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (entry) DO UPDATE SET slot = excluded.slot, stable_digest = excluded.stable_digest,
                 stable_config_hash = excluded.stable_config_hash, canary_digest = excluded.canary_digest,
                 canary_config_hash = excluded.canary_config_hash, state = excluded.state,
                 reason = excluded.reason, calls = excluded.calls, errors = excluded.errors, at_ms = excluded.at_ms",
        )
        .await?;
    db.execute(
        &stmt,
        &[
            &record.entry,
            &record.slot,
            &record.stable_digest,
            &record.stable_config_hash,
            &record.canary_digest,
            &record.canary_config_hash,
            &record.state,
            &record.reason,
            &super::bigint(record.calls, "calls")?,
            &super::bigint(record.errors, "errors")?,
            &record.at_ms,
        ],
    )
    .await?;
    record_event(db, event).await
}

pub async fn state_of(db: &impl Db, entry: &str) -> Result<Option<RolloutRecord>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT entry, slot, stable_digest, stable_config_hash, canary_digest, canary_config_hash, state, reason,
                    calls, errors, at_ms
             FROM rollout_states WHERE entry = $1",
        )
        .await?;
    let Some(r) = db.query_opt(&stmt, &[&entry]).await? else {
        return Ok(None);
    };
    Ok(Some(RolloutRecord {
        entry: r.get(0),
        slot: r.try_get(1)?,
        stable_digest: r.get(2),
        stable_config_hash: r.get(3),
        canary_digest: r.get(4),
        canary_config_hash: r.get(5),
        state: r.try_get(6)?,
        reason: r.get(7),
        calls: r.get::<_, i64>(8) as u64,
        errors: r.get::<_, i64>(9) as u64,
        at_ms: r.get(10),
    }))
}

pub async fn recent_events(db: &impl Db, limit: usize) -> Result<Vec<RolloutEvent>, StoreError> {
    let stmt = db
        .prepare_cached("SELECT at_ms, kind, entry, reason FROM rollout_events ORDER BY at_ms DESC, id DESC LIMIT $1")
        .await?;
    Ok(db
        .query(&stmt, &[&(limit as i64)])
        .await?
        .iter()
        .map(|r| Ok(RolloutEvent { at_ms: r.get(0), kind: r.try_get(1)?, entry: r.get(2), reason: r.get(3) }))
        .collect::<Result<_, tokio_postgres::Error>>()?)
}
