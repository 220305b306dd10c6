//! A/B figures on SQLite (the twin of `store::postgres::experiments`; the
//! records are in `store::experiments`): rows only ever grow (`x = x +
//! excluded.x`), never read, changed in memory and written back.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::super::StoreError;
use super::super::experiments::{ArmFigures, ArmKey, ArmRow, LATENCY_BOUNDS_US};
use crate::clock::now_ms;

/// Adds each delta to its row (creating it), in one command.
pub fn add_arm_figures(conn: &Connection, deltas: &[(ArmKey, ArmFigures)]) -> Result<(), StoreError> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO experiment_arms (experiment, variant, module_digest, config_hash, slot, module, version,
             orders, fired_orders, discount_cents, confirmed_orders, revenue_cents, revenue_squares,
             payment_failures, rule_errors, calls, latency_us_sum, stock_outs, shipped_orders, split_orders,
                 distance_km_sum, distance_km_squares, escalations, reviews, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
                 ?22, ?23, ?24, ?25)
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
    )?;
    let mut bucket = conn.prepare_cached(
        "INSERT INTO experiment_latency (experiment, variant, module_digest, config_hash, le_us, calls)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (experiment, variant, module_digest, config_hash, le_us) DO UPDATE SET
             calls = experiment_latency.calls + excluded.calls",
    )?;
    let now = now_ms();
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (key, f) in deltas {
        upsert.execute(params![
            key.experiment,
            key.variant,
            key.module_digest,
            key.config_hash,
            f.slot,
            f.module,
            f.version,
            int(f.orders),
            int(f.fired_orders),
            int(f.discount_cents),
            int(f.confirmed_orders),
            int(f.revenue_cents),
            f.revenue_squares,
            int(f.payment_failures),
            int(f.rule_errors),
            int(f.calls),
            f.latency_us_sum,
            int(f.stock_outs),
            int(f.shipped_orders),
            int(f.split_orders),
            f.distance_km_sum,
            f.distance_km_squares,
            int(f.escalations),
            int(f.reviews),
            now
        ])?;
        for (le, &calls) in LATENCY_BOUNDS_US.iter().zip(&f.latency_buckets) {
            if calls > 0 {
                bucket.execute(params![
                    key.experiment,
                    key.variant,
                    key.module_digest,
                    key.config_hash,
                    le,
                    int(calls)
                ])?;
            }
        }
    }
    Ok(())
}

/// Every stored row, in key order, with its latency buckets.
pub fn arm_rows(conn: &Connection) -> Result<Vec<ArmRow>, StoreError> {
    let mut rows: BTreeMap<ArmKey, ArmFigures> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT experiment, variant, module_digest, config_hash, slot, module, version,
                orders, fired_orders, discount_cents, confirmed_orders, revenue_cents, revenue_squares,
                payment_failures, rule_errors, calls, latency_us_sum, stock_outs, shipped_orders, split_orders,
                distance_km_sum, distance_km_squares, escalations, reviews
         FROM experiment_arms",
    )?;
    let count = |r: &rusqlite::Row<'_>, i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
    let read = stmt.query_map([], |r| {
        let key =
            ArmKey { experiment: r.get(0)?, variant: r.get(1)?, module_digest: r.get(2)?, config_hash: r.get(3)? };
        let figures = ArmFigures {
            slot: r.get(4)?,
            module: r.get(5)?,
            version: r.get(6)?,
            orders: count(r, 7)?,
            fired_orders: count(r, 8)?,
            discount_cents: count(r, 9)?,
            confirmed_orders: count(r, 10)?,
            revenue_cents: count(r, 11)?,
            revenue_squares: r.get(12)?,
            payment_failures: count(r, 13)?,
            rule_errors: count(r, 14)?,
            calls: count(r, 15)?,
            latency_us_sum: r.get(16)?,
            latency_buckets: Default::default(),
            stock_outs: count(r, 17)?,
            shipped_orders: count(r, 18)?,
            split_orders: count(r, 19)?,
            distance_km_sum: r.get(20)?,
            distance_km_squares: r.get(21)?,
            escalations: count(r, 22)?,
            reviews: count(r, 23)?,
        };
        Ok((key, figures))
    })?;
    for row in read {
        let (key, figures) = row?;
        rows.insert(key, figures);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT experiment, variant, module_digest, config_hash, le_us, calls FROM experiment_latency",
    )?;
    let read = stmt.query_map([], |r| {
        let key =
            ArmKey { experiment: r.get(0)?, variant: r.get(1)?, module_digest: r.get(2)?, config_hash: r.get(3)? };
        Ok((key, r.get::<_, i64>(4)?, count(r, 5)?))
    })?;
    for bucket in read {
        let (key, le, calls) = bucket?;
        // A bound this binary does not know (never written by it) is left out.
        if let (Some(figures), Some(index)) = (rows.get_mut(&key), LATENCY_BOUNDS_US.iter().position(|&b| b == le)) {
            figures.latency_buckets[index] += calls;
        }
    }
    Ok(rows.into_iter().map(|(key, figures)| ArmRow { key, figures }).collect())
}
