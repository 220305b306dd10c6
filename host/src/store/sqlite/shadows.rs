//! Shadow runs on SQLite (the twin of `store::postgres::shadows`; the
//! records are in `store::shadows`).

use rusqlite::{Connection, params};
use serde_json::Value;

use super::super::StoreError;
use super::super::shadows::{ShadowRun, ShadowSummary};
use crate::clock::{now_ms, now_rfc3339};

pub fn record_shadow_runs(conn: &Connection, runs: &[ShadowRun]) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO shadow_runs (order_id, slot, active_module, active_digest, candidate_module,
             candidate_version, candidate_digest, active, candidate, money_difference_cents, differs, created_at,
             candidate_name, candidate_config_hash, candidate_config, failed, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT DO NOTHING",
    )?;
    let (now, ms) = (now_rfc3339(), now_ms());
    for run in runs {
        insert.execute(params![
            run.order_id,
            run.slot.as_str(),
            run.active.file,
            run.active.digest,
            run.candidate.file,
            run.candidate.version,
            run.candidate.digest,
            run.active_result,
            run.candidate_result,
            run.money_difference_cents,
            run.differs && !run.failed,
            now,
            run.candidate.name,
            run.candidate.config_hash,
            run.candidate.config,
            run.failed,
            ms
        ])?;
    }
    Ok(())
}

pub fn shadow_summaries(conn: &Connection) -> Result<Vec<ShadowSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT slot, active_module, candidate_module, candidate_version, candidate_digest,
                count(*), sum(differs), sum(money_difference_cents), max(candidate_name),
                candidate_config_hash, max(candidate_config), sum(failed)
         FROM shadow_runs
         GROUP BY slot, active_module, candidate_module, candidate_version, candidate_digest, candidate_config_hash
         ORDER BY slot, candidate_module, candidate_version, candidate_config_hash",
    )?;
    let rows = stmt.query_map([], |r| {
        let orders = r.get::<_, i64>(5)? as u64;
        let differing = r.get::<_, i64>(6)? as u64;
        let errors = r.get::<_, i64>(11)? as u64;
        let ratio = |n: u64| if orders == 0 { 0.0 } else { n as f64 / orders as f64 };
        let config: String = r.get(10)?;
        Ok(ShadowSummary {
            slot: r.get(0)?,
            active_module: r.get(1)?,
            candidate_module: r.get(2)?,
            candidate_version: r.get(3)?,
            candidate_digest: r.get(4)?,
            orders,
            differing_orders: differing,
            share_differing: ratio(differing),
            money_difference_cents: r.get(7)?,
            candidate_name: r.get(8)?,
            candidate_config_hash: r.get(9)?,
            candidate_config: serde_json::from_str(&config).unwrap_or(Value::Null),
            errors,
            error_rate: ratio(errors),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
