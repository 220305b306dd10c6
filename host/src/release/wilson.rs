//! Wilson's score interval of a proportion (successes out of trials): what
//! A/B arms report for their rates (stock-outs, split shipments,
//! escalations, reviews). Unlike the normal approximation it stays inside
//! [0, 1] and means something for a rate of 0 or 1 and for a few trials,
//! which is what a new arm has.

use serde::Serialize;

/// The 0.975 quantile of the standard normal distribution: a two-sided 95 %
/// interval.
const Z_95: f64 = 1.959_963_984_540_054;

/// `successes / trials` with its 95 % Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rate {
    /// `successes / trials`, 0..=1.
    pub rate: f64,
    pub low: f64,
    pub high: f64,
    /// The confidence level: 0.95.
    pub level: f64,
}

/// The rate of `successes` in `trials` with its 95 % Wilson interval;
/// `None` without trials.
pub fn wilson_interval(successes: u64, trials: u64) -> Option<Rate> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    let p = successes.min(trials) as f64 / n;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z_95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At a rate of 0 (or 1) the bound is exactly 0 (1): no rounding below it.
    let low = if successes == 0 { 0.0 } else { (centre - half).max(0.0) };
    let high = if successes >= trials { 1.0 } else { (centre + half).min(1.0) };
    Some(Rate { rate: p, low, high, level: 0.95 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_the_reference() {
        // R: prop.test(3, 10, correct = FALSE)$conf.int = 0.1077913 0.6032219
        let r = wilson_interval(3, 10).expect("trials");
        assert!((r.rate - 0.3).abs() < 1e-12);
        assert!((r.low - 0.107_791_3).abs() < 1e-6, "{r:?}");
        assert!((r.high - 0.603_221_9).abs() < 1e-6, "{r:?}");
        // A rate of 0 still has an upper bound: 0 of 12 is [0, 0.24249].
        let none = wilson_interval(0, 12).expect("trials");
        assert_eq!((none.rate, none.low), (0.0, 0.0));
        assert!((none.high - 0.242_494_0).abs() < 1e-6, "{none:?}");
        assert_eq!(wilson_interval(0, 0), None);
    }
}
