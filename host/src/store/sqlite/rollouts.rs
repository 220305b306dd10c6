//! Rollouts on SQLite (the twin of `store::postgres::rollouts`; the records
//! are in `store::rollouts`).

use rusqlite::{Connection, OptionalExtension as _, params};

use super::super::StoreError;
use super::super::rollouts::{RolloutEvent, RolloutRecord};

pub fn record_event(conn: &Connection, event: &RolloutEvent) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO rollout_events (at_ms, kind, entry, reason) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![event.at_ms, event.kind, event.entry, event.reason])?;
    Ok(())
}

/// Stores `record` (replacing the entry's previous state) and its event.
pub fn record_state(conn: &Connection, record: &RolloutRecord, event: &RolloutEvent) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO rollout_states (entry, slot, stable_digest, stable_config_hash, canary_digest,
             canary_config_hash, state, reason, calls, errors, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (entry) DO UPDATE SET slot = excluded.slot, stable_digest = excluded.stable_digest,
             stable_config_hash = excluded.stable_config_hash, canary_digest = excluded.canary_digest,
             canary_config_hash = excluded.canary_config_hash, state = excluded.state,
             reason = excluded.reason, calls = excluded.calls, errors = excluded.errors, at_ms = excluded.at_ms",
    )?
    .execute(params![
        record.entry,
        record.slot,
        record.stable_digest,
        record.stable_config_hash,
        record.canary_digest,
        record.canary_config_hash,
        record.state,
        record.reason,
        record.calls as i64,
        record.errors as i64,
        record.at_ms
    ])?;
    record_event(conn, event)
}

pub fn state_of(conn: &Connection, entry: &str) -> Result<Option<RolloutRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT entry, slot, stable_digest, stable_config_hash, canary_digest, canary_config_hash, state, reason,
                calls, errors, at_ms
         FROM rollout_states WHERE entry = ?1",
    )?;
    Ok(stmt
        .query_row([entry], |r| {
            Ok(RolloutRecord {
                entry: r.get(0)?,
                slot: r.get(1)?,
                stable_digest: r.get(2)?,
                stable_config_hash: r.get(3)?,
                canary_digest: r.get(4)?,
                canary_config_hash: r.get(5)?,
                state: r.get(6)?,
                reason: r.get(7)?,
                calls: r.get::<_, i64>(8)? as u64,
                errors: r.get::<_, i64>(9)? as u64,
                at_ms: r.get(10)?,
            })
        })
        .optional()?)
}

/// The `limit` most recent events, newest first.
pub fn recent_events(conn: &Connection, limit: usize) -> Result<Vec<RolloutEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, kind, entry, reason FROM rollout_events ORDER BY at_ms DESC, id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(RolloutEvent { at_ms: r.get(0)?, kind: r.get(1)?, entry: r.get(2)?, reason: r.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
