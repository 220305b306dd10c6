//! What experiments and shadow candidates did: figures per variant (in
//! memory, since start; also in `/metrics`), and shadow runs recorded in the
//! store with their difference from the active module.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::Value;

use crate::rules::ModuleIdentity;
use crate::store::{StoreError, now_rfc3339};

/// Figures of one variant.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct VariantFigures {
    pub orders: u64,
    pub discount_cents: u64,
    pub errors: u64,
    /// Mean time of this variant's rule calls, in µs.
    pub mean_latency_us: f64,
    #[serde(skip)]
    latency_us_total: f64,
}

/// Per (experiment, variant) figures since start.
#[derive(Debug, Default)]
pub struct ExperimentStats(Mutex<BTreeMap<(String, String), VariantFigures>>);

impl ExperimentStats {
    /// Records one call of a variant's rule for one order.
    pub fn record(&self, experiment: &str, variant: &str, discount_cents: u64, failed: bool, latency_us: f64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let figures = map.entry((experiment.to_string(), variant.to_string())).or_default();
        figures.orders += 1;
        figures.discount_cents += discount_cents;
        figures.errors += u64::from(failed);
        figures.latency_us_total += latency_us;
        figures.mean_latency_us = figures.latency_us_total / figures.orders as f64;
    }

    pub fn figures(&self, experiment: &str, variant: &str) -> VariantFigures {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(experiment.to_string(), variant.to_string())).cloned().unwrap_or_default()
    }
}

/// One shadow run to record.
#[derive(Debug, Clone)]
pub struct ShadowRun {
    pub order_id: String,
    pub slot: &'static str,
    pub active: ModuleIdentity,
    pub candidate: ModuleIdentity,
    pub active_result: Value,
    pub candidate_result: Value,
    /// Candidate minus active, in the customer's money (discounts: cents
    /// more off with the candidate).
    pub money_difference_cents: i64,
    pub differs: bool,
}

pub fn record_shadow_runs(conn: &mut Connection, runs: &[ShadowRun]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO shadow_runs (order_id, slot, active_module, active_digest, candidate_module,
                 candidate_version, candidate_digest, active, candidate, money_difference_cents, differs, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let now = now_rfc3339();
        for run in runs {
            insert.execute(params![
                run.order_id,
                run.slot,
                run.active.file,
                run.active.digest,
                run.candidate.file,
                run.candidate.version,
                run.candidate.digest,
                run.active_result.to_string(),
                run.candidate_result.to_string(),
                run.money_difference_cents,
                run.differs,
                now
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Sums per (slot, active module, candidate) of the shadow runs so far.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
