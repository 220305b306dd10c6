//! Shadow runs: a candidate rule module run beside the active one, after
//! the answer, with how its result differs.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{StoreError, now_rfc3339};
use crate::domain::Slot;

/// A module as a shadow run names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowModule {
    pub file: String,
    pub version: String,
    pub digest: String,
}

/// One shadow run to record.
#[derive(Debug, Clone)]
pub struct ShadowRun {
    pub order_id: String,
    pub slot: Slot,
    pub active: ShadowModule,
    pub candidate: ShadowModule,
    /// The results as JSON text.
    pub active_result: String,
    pub candidate_result: String,
    /// Candidate minus active, in the customer's money (discounts: cents
    /// more off with the candidate).
    pub money_difference_cents: i64,
    pub differs: bool,
}

pub fn record_shadow_runs(conn: &Connection, runs: &[ShadowRun]) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO shadow_runs (order_id, slot, active_module, active_digest, candidate_module,
             candidate_version, candidate_digest, active, candidate, money_difference_cents, differs, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let now = now_rfc3339();
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
            run.differs,
            now
        ])?;
    }
    Ok(())
}

/// Sums per (slot, active module, candidate) of the shadow runs so far.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ShadowSummary {
    pub slot: String,
    pub active_module: String,
    pub candidate_module: String,
    pub candidate_version: String,
    pub candidate_digest: String,
    pub orders: u64,
    pub differing_orders: u64,
    pub share_differing: f64,
    pub money_difference_cents: i64,
}

pub fn shadow_summaries(conn: &Connection) -> Result<Vec<ShadowSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT slot, active_module, candidate_module, candidate_version, candidate_digest,
                count(*), sum(differs), sum(money_difference_cents)
         FROM shadow_runs GROUP BY slot, active_module, candidate_module, candidate_version, candidate_digest
         ORDER BY slot, candidate_module",
    )?;
    let rows = stmt.query_map([], |r| {
        let orders = r.get::<_, i64>(5)? as u64;
        let differing = r.get::<_, i64>(6)? as u64;
        Ok(ShadowSummary {
            slot: r.get(0)?,
            active_module: r.get(1)?,
            candidate_module: r.get(2)?,
            candidate_version: r.get(3)?,
            candidate_digest: r.get(4)?,
            orders,
            differing_orders: differing,
            share_differing: if orders == 0 { 0.0 } else { differing as f64 / orders as f64 },
            money_difference_cents: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
