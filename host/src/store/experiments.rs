//! A/B figures: one row per (experiment, variant, module digest, config
//! hash) with running sums, and its rule-latency histogram; the records
//! both back-ends store (`store::sqlite::experiments`,
//! `store::postgres::experiments`) and what is read from them.
//!
//! Figures are only ever *added to* in the database (`x = x + delta` in an
//! upsert), never read, changed in memory and written back: several
//! processes writing to one database (replicas on a shared store, or one
//! service after another) add up instead of overwriting each other. What
//! the CI of a difference in mean order value needs is kept as sums (count,
//! sum and sum of squares of the confirmed orders' totals; the same for the
//! warehouse arms' shipping distance), and latency as
//! counts per fixed bucket ([`LATENCY_BOUNDS_US`]), so that rows merge by
//! addition and percentiles are read from merged buckets.

use serde::Serialize;

use crate::domain::status::Slot;

/// Upper bounds (inclusive, µs) of the rule-latency buckets; the last one
/// is +Inf, stored as `i64::MAX`. Fixed: changing them needs a migration.
pub const LATENCY_BOUNDS_US: [i64; 17] = [
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    i64::MAX,
];

/// The `module_digest` and `config_hash` of an "off" arm (no module runs).
pub const OFF_ARM: &str = "none";

/// Which row figures count in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArmKey {
    pub experiment: String,
    pub variant: String,
    /// `sha256:…` of the module, or `none` for an "off" arm.
    pub module_digest: String,
    /// `sha256:…` of the module's configuration, or `none` for an "off" arm.
    pub config_hash: String,
}

/// One row's figures, or a delta to add to a row. The labels (`slot`,
/// `module`, `version`) describe the row; the last written wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmFigures {
    pub slot: String,
    /// The module file (`none` for an "off" arm).
    pub module: String,
    pub version: String,
    /// Orders this arm served (its rule ran, failed, or was off).
    pub orders: u64,
    /// Orders where the rule fired: a discount rule took a non-zero amount off.
    pub fired_orders: u64,
    pub discount_cents: u64,
    /// Orders that ended CONFIRMED, and the sums of their totals and of the
    /// totals' squares (for the variance).
    pub confirmed_orders: u64,
    pub revenue_cents: u64,
    pub revenue_squares: f64,
    /// Orders that ended PAYMENT_FAILED.
    pub payment_failures: u64,
    /// Rule calls that failed (trap, budget, guest error).
    pub rule_errors: u64,
    /// Rule calls timed, and the sum of their times.
    pub calls: u64,
    pub latency_us_sum: f64,
    /// Calls per bucket of [`LATENCY_BOUNDS_US`] (not cumulative).
    pub latency_buckets: [u64; LATENCY_BOUNDS_US.len()],
    /// Warehouse arms: orders refused OUT_OF_STOCK on this arm's plan.
    pub stock_outs: u64,
    /// Warehouse arms: orders whose plan was held (the order exists), the
    /// sample of the distance sums below.
    pub shipped_orders: u64,
    /// Warehouse arms: shipped orders allocated from more than one warehouse.
    pub split_orders: u64,
    /// Warehouse arms: sum, and sum of squares, of each shipped order's
    /// distance (km from its ship-to point to the warehouses it ships
    /// from, weighted by the units each ships).
    pub distance_km_sum: f64,
    pub distance_km_squares: f64,
    /// Fraud arms: checks whose verdict was ESCALATE, and REVIEW (`orders`
    /// counts the checks run).
    pub escalations: u64,
    pub reviews: u64,
}

impl ArmFigures {
    /// Adds `other` (a delta or another row) to these figures.
    pub fn add(&mut self, other: &ArmFigures) {
        if !other.module.is_empty() {
            self.slot.clone_from(&other.slot);
            self.module.clone_from(&other.module);
            self.version.clone_from(&other.version);
        }
        self.orders += other.orders;
        self.fired_orders += other.fired_orders;
        self.discount_cents += other.discount_cents;
        self.confirmed_orders += other.confirmed_orders;
        self.revenue_cents += other.revenue_cents;
        self.revenue_squares += other.revenue_squares;
        self.payment_failures += other.payment_failures;
        self.rule_errors += other.rule_errors;
        self.calls += other.calls;
        self.latency_us_sum += other.latency_us_sum;
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(other.latency_buckets) {
            *mine += theirs;
        }
        self.stock_outs += other.stock_outs;
        self.shipped_orders += other.shipped_orders;
        self.split_orders += other.split_orders;
        self.distance_km_sum += other.distance_km_sum;
        self.distance_km_squares += other.distance_km_squares;
        self.escalations += other.escalations;
        self.reviews += other.reviews;
    }

    /// Counts one rule call of `latency_us` in its bucket and the sums.
    pub fn time_call(&mut self, latency_us: f64) {
        self.calls += 1;
        self.latency_us_sum += latency_us;
        let bucket =
            LATENCY_BOUNDS_US.iter().position(|&le| latency_us <= le as f64).unwrap_or(LATENCY_BOUNDS_US.len() - 1);
        self.latency_buckets[bucket] += 1;
    }

    /// The `q` quantile (0..=1) of the rule latency in µs, from the buckets:
    /// linear within the bucket that holds it, as Prometheus'
    /// `histogram_quantile` does; a quantile in the +Inf bucket reads as the
    /// last finite bound. `None` without timed calls.
    pub fn latency_quantile_us(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (index, &count) in self.latency_buckets.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let lower = if index == 0 { 0.0 } else { LATENCY_BOUNDS_US[index - 1] as f64 };
                if LATENCY_BOUNDS_US[index] == i64::MAX {
                    return Some(lower);
                }
                let upper = LATENCY_BOUNDS_US[index] as f64;
                let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += count;
        }
        None
    }
}

/// A stored row with its key.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmRow {
    pub key: ArmKey,
    pub figures: ArmFigures,
}

/// What `GET /v1/admin/experiments` shows of a row: its figures with the
/// percentiles and the means read from the sums; the figures of its slot
/// only (`fired_orders` and `discount_cents` on a discount arm's rows,
/// `warehouse` on a warehouse arm's, `fraud` on a fraud arm's).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ArmRowView {
    /// `sha256:…` of the module, or `none` for an "off" arm.
    pub module_digest: String,
    /// `sha256:…` of the module's configuration, or `none` for an "off" arm.
    pub config_hash: String,
    pub module: String,
    pub version: String,
    /// Orders this arm served (a fraud arm: orders it checked).
    pub orders: u64,
    /// Discount arms only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired_orders: Option<u64>,
    /// Discount arms only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discount_cents: Option<u64>,
    pub confirmed_orders: u64,
    /// Sum of the confirmed orders' totals.
    pub revenue_cents: u64,
    /// `revenue_cents / confirmed_orders`; `null` without confirmed orders.
    pub mean_order_value_cents: Option<f64>,
    pub payment_failures: u64,
    pub rule_errors: u64,
    /// Rule calls timed (an "off" arm makes none).
    pub calls: u64,
    /// Rule latency percentiles from the stored buckets; `null` without calls.
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    /// Warehouse arms only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<WarehouseRowView>,
    /// Fraud arms only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraud: Option<FraudRowView>,
}

/// A warehouse arm row's shipments.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct WarehouseRowView {
    /// Orders refused OUT_OF_STOCK on this arm's plan.
    pub stock_outs: u64,
    /// Orders whose plan was held (the order exists).
    pub shipped_orders: u64,
    /// Shipped orders allocated from more than one warehouse.
    pub split_orders: u64,
    /// Mean over the shipped orders of each one's distance (km from the
    /// ship-to point to its warehouses, weighted by the units each ships);
    /// `null` without shipped orders.
    pub mean_distance_km: Option<f64>,
}

/// A fraud arm row's verdicts (each check's own, not the order's combined review).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FraudRowView {
    pub escalations: u64,
    pub reviews: u64,
}

impl WarehouseRowView {
    pub fn of(f: &ArmFigures) -> WarehouseRowView {
        WarehouseRowView {
            stock_outs: f.stock_outs,
            shipped_orders: f.shipped_orders,
            split_orders: f.split_orders,
            mean_distance_km: (f.shipped_orders > 0).then(|| f.distance_km_sum / f.shipped_orders as f64),
        }
    }
}

impl ArmRowView {
    /// The row `key` of an arm of the `slot` slot.
    pub fn of(slot: Slot, key: &ArmKey, f: &ArmFigures) -> ArmRowView {
        let discount = slot == Slot::Discount;
        ArmRowView {
            module_digest: key.module_digest.clone(),
            config_hash: key.config_hash.clone(),
            module: f.module.clone(),
            version: f.version.clone(),
            orders: f.orders,
            fired_orders: discount.then_some(f.fired_orders),
            discount_cents: discount.then_some(f.discount_cents),
            confirmed_orders: f.confirmed_orders,
            revenue_cents: f.revenue_cents,
            mean_order_value_cents: (f.confirmed_orders > 0)
                .then(|| f.revenue_cents as f64 / f.confirmed_orders as f64),
            payment_failures: f.payment_failures,
            rule_errors: f.rule_errors,
            calls: f.calls,
            latency_p50_us: f.latency_quantile_us(0.5),
            latency_p99_us: f.latency_quantile_us(0.99),
            warehouse: (slot == Slot::Warehouse).then(|| WarehouseRowView::of(f)),
            fraud: (slot == Slot::Fraud).then_some(FraudRowView { escalations: f.escalations, reviews: f.reviews }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_merged_buckets() {
        let mut a = ArmFigures::default();
        let mut b = ArmFigures::default();
        for _ in 0..50 {
            a.time_call(80.0); // (50, 100]
        }
        for _ in 0..49 {
            b.time_call(400.0); // (250, 500]
        }
        b.time_call(3_000_000.0); // +Inf
        // 25th of 50 calls in (50, 100]: halfway through the bucket.
        assert_eq!(a.latency_quantile_us(0.5), Some(75.0));
        let mut merged = a.clone();
        merged.add(&b);
        assert_eq!(merged.calls, 100);
        // The 50th of 100 calls is the last of the (50, 100] bucket.
        assert_eq!(merged.latency_quantile_us(0.5), Some(100.0));
        // The 99th lies in (250, 500]: 49 calls there, 49th of them.
        assert_eq!(merged.latency_quantile_us(0.99), Some(500.0));
        // The slowest call is in +Inf: the last finite bound.
        assert_eq!(merged.latency_quantile_us(1.0), Some(1_000_000.0));
        assert_eq!(ArmFigures::default().latency_quantile_us(0.5), None);
    }
}
