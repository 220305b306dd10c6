//! `high-value`: a fraud check that escalates orders whose final total
//! reaches a threshold. The decision is plain Rust ([`check`]) so that it is
//! tested natively; the `wasm` module only converts between the WIT types
//! and these.

/// Config key of the threshold, in cents.
pub const THRESHOLD_KEY: &str = "threshold_cents";
/// Threshold used when `threshold_cents` is not configured.
pub const DEFAULT_THRESHOLD_CENTS: u64 = 500_000;
/// The flag raised on a high-value order.
pub const FLAG: &str = "HIGH_VALUE";
/// Score of an escalated order.
pub const ESCALATE_SCORE: u8 = 90;
/// Highest score of an allowed order (reached just below the threshold).
pub const MAX_ALLOW_SCORE: u64 = 50;

/// The verdict's action (the WIT `action` enum, minus `review`, which this
/// check never gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Escalate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub score: u8,
    pub flags: Vec<String>,
    pub reasons: Vec<String>,
}

/// The configuration could not be used; the message says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadConfig(pub String);

/// Parses the `threshold_cents` config value: a whole number ≥ 1, blanks
/// around allowed; absent means [`DEFAULT_THRESHOLD_CENTS`].
pub fn parse_threshold(value: Option<&str>) -> Result<u64, BadConfig> {
    let Some(raw) = value else {
        return Ok(DEFAULT_THRESHOLD_CENTS);
    };
    match raw.trim().parse::<u64>() {
        Ok(t) if t >= 1 => Ok(t),
        _ => Err(BadConfig(format!(
            "{THRESHOLD_KEY} must be a whole number of cents of at least 1, got {raw:?}"
        ))),
    }
}

/// Judges an order whose final total is `total_cents`.
///
/// At or above the threshold: escalate, flag `HIGH_VALUE`, score 90.
/// Below: allow, no flag, score `min(50, total × 50 / threshold)` (rounded
/// down), so the score grows towards 50 as the total nears the threshold.
pub fn check(total_cents: u64, threshold_config: Option<&str>) -> Result<Verdict, BadConfig> {
    let threshold = parse_threshold(threshold_config)?;
    Ok(if total_cents >= threshold {
        Verdict {
            action: Action::Escalate,
            score: ESCALATE_SCORE,
            flags: vec![FLAG.to_owned()],
            reasons: vec![format!(
                "total {total_cents} cents reaches the high-value threshold of {threshold} cents"
            )],
        }
    } else {
        let score = (u128::from(total_cents) * u128::from(MAX_ALLOW_SCORE) / u128::from(threshold))
            .min(u128::from(MAX_ALLOW_SCORE)) as u8;
        Verdict {
            action: Action::Allow,
            score,
            flags: Vec::new(),
            reasons: vec![format!(
                "total {total_cents} cents is below the high-value threshold of {threshold} cents"
            )],
        }
    })
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the generated bindings
mod wasm {
    // The bump allocator: instances live for one call (see guest-alloc).
    use guest_alloc as _;

    wit_bindgen::generate!({
        world: "fraud-check",
        path: "../../wit",
    });

    use exports::smartmart::rules::fraud::{Action, CheckError, Guest, PaymentSummary, Verdict};
    use exports::smartmart::rules::meta::{self, RuleInfo};
    use smartmart::rules::types::OrderContext;
    use smartmart::rules::{config, log};

    struct HighValue;

    impl meta::Guest for HighValue {
        fn info() -> RuleInfo {
            RuleInfo {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                description: env!("CARGO_PKG_DESCRIPTION").to_owned(),
            }
        }
    }

    impl Guest for HighValue {
        fn check(order: OrderContext, _payment: PaymentSummary) -> Result<Verdict, CheckError> {
            let threshold = config::get(super::THRESHOLD_KEY);
            let v = super::check(order.payable_cents, threshold.as_deref())
                .map_err(|super::BadConfig(msg)| CheckError::BadConfig(msg))?;
            log::emit(
                log::Level::Debug,
                "high-value checked",
                &[
                    ("order_id".to_owned(), order.order_id),
                    ("total_cents".to_owned(), order.payable_cents.to_string()),
                    ("action".to_owned(), format!("{:?}", v.action)),
                ],
            );
            Ok(Verdict {
                action: match v.action {
                    super::Action::Allow => Action::Allow,
                    super::Action::Escalate => Action::Escalate,
                },
                score: v.score,
                flags: v.flags,
                reasons: v.reasons,
            })
        }
    }

    export!(HighValue);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_or_above_the_default_threshold_escalates() {
        for total in [500_000, 500_001, u64::MAX] {
            let v = check(total, None).unwrap();
            assert_eq!(v.action, Action::Escalate, "{total}");
            assert_eq!(v.score, 90);
            assert_eq!(v.flags, [FLAG]);
            assert_eq!(v.reasons.len(), 1);
        }
    }

    #[test]
    fn below_the_threshold_allows_with_a_proportional_score() {
        let v = check(499_999, None).unwrap();
        assert_eq!(v.action, Action::Allow);
        assert!(v.flags.is_empty());
        assert_eq!(v.score, 49);
        assert_eq!(check(250_000, None).unwrap().score, 25);
        assert_eq!(check(9_999, None).unwrap().score, 0);
        assert_eq!(check(0, None).unwrap().score, 0);
    }

    #[test]
    fn configured_threshold() {
        assert_eq!(check(1_000, Some("1000")).unwrap().action, Action::Escalate);
        assert_eq!(check(999, Some(" 1000 ")).unwrap().action, Action::Allow);
        assert_eq!(check(999, Some("1000")).unwrap().score, 49);
        // The smallest threshold: everything but a free order escalates.
        assert_eq!(check(0, Some("1")).unwrap().action, Action::Allow);
        assert_eq!(check(1, Some("1")).unwrap().action, Action::Escalate);
        // A huge threshold does not overflow the score.
        assert_eq!(
            check(u64::MAX - 1, Some(&u64::MAX.to_string()))
                .unwrap()
                .score,
            49
        );
    }

    #[test]
    fn reasons_name_total_and_threshold() {
        let v = check(600_000, None).unwrap();
        assert!(v.reasons[0].contains("600000") && v.reasons[0].contains("500000"));
    }

    #[test]
    fn malformed_threshold_is_bad_config() {
        for bad in ["", "abc", "0", "-1", "5000.00", "1e6"] {
            assert!(check(1, Some(bad)).is_err(), "{bad:?}");
        }
    }
}
