//! Welch's confidence interval of a difference of two means, from stored
//! sums only (count, sum, sum of squares): what A/B arms report for the
//! difference in mean order value.
//!
//! The Student t quantile comes from the regularized incomplete beta
//! function (continued fraction, as in Numerical Recipes' `betacf`) and a
//! bisection on the t distribution's CDF: no statistics crate for a dozen
//! lines of numerics.

use serde::Serialize;

/// A sample as sums: enough for its mean and variance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_squares: f64,
}

impl Moments {
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The unbiased sample variance; `None` below two observations.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        // Never negative: rounding of the sums can make it a hair below zero.
        Some(((self.sum_squares - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }
}

/// `mean(b) - mean(a)` with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    /// Mean of this arm minus mean of the control arm.
    pub difference: f64,
    pub low: f64,
    pub high: f64,
    /// The confidence level, e.g. 0.95.
    pub level: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub degrees_of_freedom: f64,
}

/// Welch's interval for `mean(b) - mean(a)` at `level` (e.g. 0.95); `None`
/// unless both samples have two observations or more.
pub fn welch_interval(a: &Moments, b: &Moments, level: f64) -> Option<Difference> {
    let (mean_a, mean_b) = (a.mean()?, b.mean()?);
    let (var_a, var_b) = (a.variance()?, b.variance()?);
    let (se_a, se_b) = (var_a / a.n as f64, var_b / b.n as f64);
    let se2 = se_a + se_b;
    let difference = mean_b - mean_a;
    if se2 == 0.0 {
        // Both samples constant: the difference is known exactly.
        let df = (a.n + b.n - 2) as f64;
        return Some(Difference { difference, low: difference, high: difference, level, degrees_of_freedom: df });
    }
    let df = se2 * se2 / (se_a * se_a / (a.n - 1) as f64 + se_b * se_b / (b.n - 1) as f64);
    let t = t_quantile(0.5 + level / 2.0, df);
    let half = t * se2.sqrt();
    Some(Difference { difference, low: difference - half, high: difference + half, level, degrees_of_freedom: df })
}

/// Degrees of freedom above this are taken as this: the continued fraction
/// needs about √df steps, and the quantile at 10⁵ differs from the normal
/// one's by about 10⁻⁵ of itself.
const MAX_DF: f64 = 1e5;

/// The `p` quantile (0.5 < p < 1) of Student's t with `df` degrees of freedom.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let df = df.min(MAX_DF);
    // Upper tail wanted: P(T > t) = 1 - p = I_{df/(df+t²)}(df/2, 1/2) / 2.
    let tail = 1.0 - p;
    let upper_tail = |t: f64| 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5);
    let (mut low, mut high) = (0.0_f64, 1.0_f64);
    while upper_tail(high) > tail && high < 1e12 {
        high *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (low + high);
        if upper_tail(mid) > tail {
            low = mid;
        } else {
            high = mid;
        }
        if high - low <= 1e-12 * high {
            break;
        }
    }
    0.5 * (low + high)
}

/// `I_x(a, b)`, the regularized incomplete beta function.
fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges fast for x < (a+1)/(a+b+2); use the
    // symmetry I_x(a,b) = 1 - I_{1-x}(b,a) otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=10_000 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// `ln Γ(x)` for x > 0 (Lanczos, g = 7, 9 terms: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1-x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEFFICIENTS[0];
    for (i, c) in COEFFICIENTS.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(values: &[f64]) -> Moments {
        Moments { n: values.len() as u64, sum: values.iter().sum(), sum_squares: values.iter().map(|v| v * v).sum() }
    }

    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!((actual - expected).abs() <= tolerance, "{actual} is not {expected} (± {tolerance})");
    }

    /// Reference values from an independent implementation (mpmath's
    /// `betainc` and `findroot`, 30 digits).
    #[test]
    fn t_quantiles_match_the_tables() {
        for (df, expected) in [
            (1.0, 12.706_204_736_174_693),
            (2.0, 4.302_652_729_749_462),
            (5.0, 2.570_581_835_636_315),
            (10.0, 2.228_138_851_986_274),
            (30.0, 2.042_272_456_301_238),
            (120.0, 1.979_930_405_082_440_5),
            (3.2892, 3.029_859_485_694_421),
        ] {
            close(t_quantile(0.975, df), expected, 1e-9);
        }
        // Large df: the normal quantile.
        close(t_quantile(0.975, 1e9), 1.959_963_984_540_054, 1e-4);
    }

    /// Welch's interval from sums only, against the reference: A = 10, 20,
    /// 30, 40; B = 12, 14, 16, 18, 20 (mpmath: df 3.28922821, t 3.02984640,
    /// interval -29.0214549 … 11.0214549).
    #[test]
    fn welch_interval_from_sums_matches_the_reference() {
        let a = moments(&[10.0, 20.0, 30.0, 40.0]);
        let b = moments(&[12.0, 14.0, 16.0, 18.0, 20.0]);
        let d = welch_interval(&a, &b, 0.95).expect("two samples of two or more");
        close(d.difference, -9.0, 1e-12);
        close(d.degrees_of_freedom, 3.289_228_213_646_818_5, 1e-9);
        close(d.low, -29.021_454_903_363_13, 1e-7);
        close(d.high, 11.021_454_903_363_13, 1e-7);

        // Equal sizes and variances: df = 2 (n - 1) = 10, t = 2.2281389.
        let a = moments(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = moments(&[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let d = welch_interval(&a, &b, 0.95).unwrap();
        close(d.degrees_of_freedom, 10.0, 1e-9);
        let half = 2.228_138_851_986_274 * (3.5_f64 / 6.0 * 2.0).sqrt();
        close(d.low, 2.0 - half, 1e-9);
        close(d.high, 2.0 + half, 1e-9);
    }

    #[test]
    fn too_little_data_gives_no_interval_and_constant_samples_a_point() {
        assert_eq!(welch_interval(&moments(&[5.0]), &moments(&[1.0, 2.0]), 0.95), None);
        assert_eq!(welch_interval(&Moments::default(), &moments(&[1.0, 2.0]), 0.95), None);
        let d = welch_interval(&moments(&[3.0, 3.0]), &moments(&[5.0, 5.0, 5.0]), 0.95).unwrap();
        assert_eq!((d.difference, d.low, d.high), (2.0, 2.0, 2.0));
    }
}
