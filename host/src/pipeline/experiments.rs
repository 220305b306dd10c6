//! What experiments did: figures per variant (in memory, since start; also
//! in `/metrics`). Shadow runs are recorded in the store (`store::shadows`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

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
