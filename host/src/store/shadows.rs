//! Shadow runs: a candidate rule module run beside the active one, after
//! the answer, with how its result differs. A candidate is named by its
//! rule name, version, digest and configuration hash; a run where the
//! candidate failed (trap, budget, error) is an error, never a difference.

use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::Value;

use super::{StoreError, now_ms, now_rfc3339};
use crate::domain::status::Slot;

/// A module as a shadow run names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowModule {
    pub file: String,
    /// The rule name the module reports (`meta.info`).
    pub name: String,
    pub version: String,
    pub digest: String,
    /// `sha256:` of the module's configuration (`rules::config_hash`).
    pub config_hash: String,
    /// The configuration as a JSON object's text.
    pub config: String,
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
    /// more off with the candidate; 0 for the other slots and for a failure).
    pub money_difference_cents: i64,
    /// The candidate answered otherwise (never set when it failed).
    pub differs: bool,
    /// The candidate trapped, ran out of a budget or returned an error.
    pub failed: bool,
}

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

/// Sums per (slot, active module, candidate version and configuration) of
/// the shadow runs so far.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ShadowSummary {
    pub slot: String,
    pub active_module: String,
    pub candidate_module: String,
    pub candidate_version: String,
    pub candidate_digest: String,
    /// Runs (orders the candidate ran on).
    pub orders: u64,
    /// Orders the candidate answered otherwise (failures are not counted here).
    pub differing_orders: u64,
    /// `differing_orders / orders`.
    pub share_differing: f64,
    pub money_difference_cents: i64,
    /// The rule name the candidate reports.
    pub candidate_name: String,
    /// `sha256:` of the candidate's configuration.
    pub candidate_config_hash: String,
    /// The candidate's configuration.
    #[schema(value_type = Object)]
    pub candidate_config: Value,
    /// Orders the candidate failed on (trap, budget, error).
    pub errors: u64,
    /// `errors / orders`.
    pub error_rate: f64,
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
