//! Shadow runs on PostgreSQL (the twin of `store::sqlite::shadows`; the
//! records are in `store::shadows`).

use serde_json::Value;

use super::super::StoreError;
use super::super::shadows::{ShadowRun, ShadowSummary};
use super::Db;
use crate::clock::{now_ms, now_rfc3339};

pub async fn record_shadow_runs(db: &impl Db, runs: &[ShadowRun]) -> Result<(), StoreError> {
    let insert = db
        .prepare_cached(
            "INSERT INTO shadow_runs (order_id, slot, active_module, active_digest, candidate_module,
                 candidate_version, candidate_digest, active, candidate, money_difference_cents, differs, created_at,
                 candidate_name, candidate_config_hash, candidate_config, failed, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let (now, ms) = (now_rfc3339(), now_ms());
    for run in runs {
        db.execute(
            &insert,
            &[
                &run.order_id,
                &run.slot.as_str(),
                &run.active.file,
                &run.active.digest,
                &run.candidate.file,
                &run.candidate.version,
                &run.candidate.digest,
                &run.active_result,
                &run.candidate_result,
                &run.money_difference_cents,
                &(run.differs && !run.failed),
                &now,
                &run.candidate.name,
                &run.candidate.config_hash,
                &run.candidate.config,
                &run.failed,
                &ms,
            ],
        )
        .await?;
    }
    Ok(())
}

pub async fn shadow_summaries(db: &impl Db) -> Result<Vec<ShadowSummary>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT slot, active_module, candidate_module, candidate_version, candidate_digest,
                    count(*), sum(differs::int)::bigint, sum(money_difference_cents)::bigint, max(candidate_name),
                    candidate_config_hash, max(candidate_config), sum(failed::int)::bigint
             FROM shadow_runs
             GROUP BY slot, active_module, candidate_module, candidate_version, candidate_digest, candidate_config_hash
             ORDER BY slot, candidate_module, candidate_version, candidate_config_hash",
        )
        .await?;
    Ok(db
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| {
            let slot = r.try_get(0)?;
            let orders = r.get::<_, i64>(5) as u64;
            let differing = r.get::<_, i64>(6) as u64;
            let errors = r.get::<_, i64>(11) as u64;
            let ratio = |n: u64| if orders == 0 { 0.0 } else { n as f64 / orders as f64 };
            Ok(ShadowSummary {
                slot,
                active_module: r.get(1),
                candidate_module: r.get(2),
                candidate_version: r.get(3),
                candidate_digest: r.get(4),
                orders,
                differing_orders: differing,
                share_differing: ratio(differing),
                money_difference_cents: r.get(7),
                candidate_name: r.get(8),
                candidate_config_hash: r.get(9),
                candidate_config: serde_json::from_str(r.get::<_, &str>(10)).unwrap_or(Value::Null),
                errors,
                error_rate: ratio(errors),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?)
}
