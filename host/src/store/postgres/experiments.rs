//! A/B figures on PostgreSQL (the twin of `store::sqlite::experiments`; the
//! records are in `store::experiments`): rows only ever grow (`x = x +
//! excluded.x`), so the figures of every replica add up in the database.

use std::collections::BTreeMap;

use super::super::StoreError;
use super::super::experiments::{ArmFigures, ArmKey, ArmRow, LATENCY_BOUNDS_US};
use super::Db;
use crate::clock::now_ms;

/// Adds each delta to its row (creating it), rows in key order (the lock
/// order of every replica).
pub async fn add_arm_figures(db: &impl Db, deltas: &[(ArmKey, ArmFigures)]) -> Result<(), StoreError> {
    let upsert = db
        .prepare_cached(
            "INSERT INTO experiment_arms (experiment, variant, module_digest, config_hash, slot, module, version,
                 orders, fired_orders, discount_cents, confirmed_orders, revenue_cents, revenue_squares,
                 payment_failures, rule_errors, calls, latency_us_sum, stock_outs, shipped_orders, split_orders,
                 distance_km_sum, distance_km_squares, escalations, reviews, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                     $22, $23, $24, $25)
             ON CONFLICT (experiment, variant, module_digest, config_hash) DO UPDATE SET
                 slot = excluded.slot, module = excluded.module, version = excluded.version,
                 orders = experiment_arms.orders + excluded.orders,
                 fired_orders = experiment_arms.fired_orders + excluded.fired_orders,
                 discount_cents = experiment_arms.discount_cents + excluded.discount_cents,
                 confirmed_orders = experiment_arms.confirmed_orders + excluded.confirmed_orders,
                 revenue_cents = experiment_arms.revenue_cents + excluded.revenue_cents,
                 revenue_squares = experiment_arms.revenue_squares + excluded.revenue_squares,
                 payment_failures = experiment_arms.payment_failures + excluded.payment_failures,
                 rule_errors = experiment_arms.rule_errors + excluded.rule_errors,
                 calls = experiment_arms.calls + excluded.calls,
                 latency_us_sum = experiment_arms.latency_us_sum + excluded.latency_us_sum,
                 stock_outs = experiment_arms.stock_outs + excluded.stock_outs,
                 shipped_orders = experiment_arms.shipped_orders + excluded.shipped_orders,
                 split_orders = experiment_arms.split_orders + excluded.split_orders,
                 distance_km_sum = experiment_arms.distance_km_sum + excluded.distance_km_sum,
                 distance_km_squares = experiment_arms.distance_km_squares + excluded.distance_km_squares,
                 escalations = experiment_arms.escalations + excluded.escalations,
                 reviews = experiment_arms.reviews + excluded.reviews,
                 updated_at_ms = excluded.updated_at_ms",
        )
        .await?;
    let bucket = db
        .prepare_cached(
            "INSERT INTO experiment_latency (experiment, variant, module_digest, config_hash, le_us, calls)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (experiment, variant, module_digest, config_hash, le_us) DO UPDATE SET
                 calls = experiment_latency.calls + excluded.calls",
        )
        .await?;
    let now = now_ms();
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut sorted: Vec<&(ArmKey, ArmFigures)> = deltas.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, f) in sorted {
        db.execute(
            &upsert,
            &[
                &key.experiment,
                &key.variant,
                &key.module_digest,
                &key.config_hash,
                &f.slot,
                &f.module,
                &f.version,
                &int(f.orders),
                &int(f.fired_orders),
                &int(f.discount_cents),
                &int(f.confirmed_orders),
                &int(f.revenue_cents),
                &f.revenue_squares,
                &int(f.payment_failures),
                &int(f.rule_errors),
                &int(f.calls),
                &f.latency_us_sum,
                &int(f.stock_outs),
                &int(f.shipped_orders),
                &int(f.split_orders),
                &f.distance_km_sum,
                &f.distance_km_squares,
                &int(f.escalations),
                &int(f.reviews),
                &now,
            ],
        )
        .await?;
        for (le, &calls) in LATENCY_BOUNDS_US.iter().zip(&f.latency_buckets) {
            if calls > 0 {
                db.execute(
                    &bucket,
                    &[&key.experiment, &key.variant, &key.module_digest, &key.config_hash, le, &int(calls)],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Every stored row, in key order, with its latency buckets.
pub async fn arm_rows(db: &impl Db) -> Result<Vec<ArmRow>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT experiment, variant, module_digest, config_hash, slot, module, version,
                    orders, fired_orders, discount_cents, confirmed_orders, revenue_cents, revenue_squares,
                    payment_failures, rule_errors, calls, latency_us_sum, stock_outs, shipped_orders, split_orders,
                distance_km_sum, distance_km_squares, escalations, reviews
             FROM experiment_arms",
        )
        .await?;
    let count = |r: &tokio_postgres::Row, i: usize| r.get::<_, i64>(i).max(0) as u64;
    let key = |r: &tokio_postgres::Row| ArmKey {
        experiment: r.get(0),
        variant: r.get(1),
        module_digest: r.get(2),
        config_hash: r.get(3),
    };
    let mut rows: BTreeMap<ArmKey, ArmFigures> = BTreeMap::new();
    for r in db.query(&stmt, &[]).await? {
        let figures = ArmFigures {
            slot: r.get(4),
            module: r.get(5),
            version: r.get(6),
            orders: count(&r, 7),
            fired_orders: count(&r, 8),
            discount_cents: count(&r, 9),
            confirmed_orders: count(&r, 10),
            revenue_cents: count(&r, 11),
            revenue_squares: r.get(12),
            payment_failures: count(&r, 13),
            rule_errors: count(&r, 14),
            calls: count(&r, 15),
            latency_us_sum: r.get(16),
            latency_buckets: Default::default(),
            stock_outs: count(&r, 17),
            shipped_orders: count(&r, 18),
            split_orders: count(&r, 19),
            distance_km_sum: r.get(20),
            distance_km_squares: r.get(21),
            escalations: count(&r, 22),
            reviews: count(&r, 23),
        };
        rows.insert(key(&r), figures);
    }
    let stmt = db
        .prepare_cached("SELECT experiment, variant, module_digest, config_hash, le_us, calls FROM experiment_latency")
        .await?;
    for r in db.query(&stmt, &[]).await? {
        let le: i64 = r.get(4);
        // A bound this binary does not know (never written by it) is left out.
        if let (Some(figures), Some(index)) = (rows.get_mut(&key(&r)), LATENCY_BOUNDS_US.iter().position(|&b| b == le))
        {
            figures.latency_buckets[index] += count(&r, 5);
        }
    }
    Ok(rows.into_iter().map(|(key, figures)| ArmRow { key, figures }).collect())
}
