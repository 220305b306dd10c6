//! Shadow runs on PostgreSQL (the twin of `store::shadows`).

use deadpool_postgres::GenericClient;

use super::super::shadows::{ShadowRun, ShadowSummary};
use super::super::{StoreError, now_rfc3339};

pub async fn record_shadow_runs(db: &impl GenericClient, runs: &[ShadowRun]) -> Result<(), StoreError> {
    let insert = db
        .prepare_cached(
            "INSERT INTO shadow_runs (order_id, slot, active_module, active_digest, candidate_module,
                 candidate_version, candidate_digest, active, candidate, money_difference_cents, differs, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
        )
        .await?;
    let now = now_rfc3339();
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
                &run.differs,
                &now,
            ],
        )
        .await?;
    }
    Ok(())
}

pub async fn shadow_summaries(db: &impl GenericClient) -> Result<Vec<ShadowSummary>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT slot, active_module, candidate_module, candidate_version, candidate_digest,
                    count(*), sum(differs::int)::bigint, sum(money_difference_cents)::bigint
             FROM shadow_runs GROUP BY slot, active_module, candidate_module, candidate_version, candidate_digest
             ORDER BY slot, candidate_module",
        )
        .await?;
    Ok(db
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| {
            let orders = r.get::<_, i64>(5) as u64;
            let differing = r.get::<_, i64>(6) as u64;
            ShadowSummary {
                slot: r.get(0),
                active_module: r.get(1),
                candidate_module: r.get(2),
                candidate_version: r.get(3),
                candidate_digest: r.get(4),
                orders,
                differing_orders: differing,
                share_differing: if orders == 0 { 0.0 } else { differing as f64 / orders as f64 },
                money_difference_cents: r.get(7),
            }
        })
        .collect())
}
