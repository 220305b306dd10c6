//! `{{name}}`: {{description}}
//!
//! The decision is plain Rust ([`parse_threshold`], [`decide`]), tested
//! natively with `cargo test`; the `wasm` module (compiled only for the wasm
//! target) turns the host's WIT types into these and back.

/// Config key of the threshold (the service sets it to its own default
/// unless the manifest does), and this rule's default.
pub const THRESHOLD_KEY: &str = "threshold_cents";
pub const DEFAULT_THRESHOLD_CENTS: u64 = 100_000;

/// What the rule recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Review,
}

/// The verdict.
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

/// Reads `threshold_cents` (a whole number of cents, default 100000).
pub fn parse_threshold(raw: Option<&str>) -> Result<u64, BadConfig> {
    match raw {
        None => Ok(DEFAULT_THRESHOLD_CENTS),
        Some(raw) => raw.trim().parse().map_err(|_| {
            BadConfig(format!("{THRESHOLD_KEY} must be a whole number of cents, got {raw:?}"))
        }),
    }
}

/// Orders whose total (what is payable after discounts) reaches the
/// threshold go to review.
pub fn decide(total_cents: u64, threshold_cents: u64) -> Verdict {
    if total_cents >= threshold_cents {
        Verdict {
            action: Action::Review,
            score: 50,
            flags: vec!["LARGE_ORDER".to_owned()],
            reasons: vec![format!("total_cents={total_cents} >= threshold_cents={threshold_cents}")],
        }
    } else {
        Verdict {
            action: Action::Allow,
            score: 0,
            flags: Vec::new(),
            reasons: vec![format!("total_cents={total_cents} < threshold_cents={threshold_cents}")],
        }
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the generated bindings use it
mod wasm {
    // Types and traits generated from the contract vendored in `wit/`
    // ({{contract}}), relative to Cargo.toml.
    wit_bindgen::generate!({
        world: "{{world}}",
        path: "wit",
    });

    use exports::smartmart::rules::fraud::{self as fraud, CheckError, Guest, PaymentSummary};
    use exports::smartmart::rules::meta::{self, RuleInfo};
    use smartmart::rules::types::OrderContext;
    use smartmart::rules::{config, log};

    struct Rule;

    // What the host shows about this module: taken from Cargo.toml.
    impl meta::Guest for Rule {
        fn info() -> RuleInfo {
            RuleInfo {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                description: env!("CARGO_PKG_DESCRIPTION").to_owned(),
            }
        }
    }

    impl Guest for Rule {
        fn check(order: OrderContext, _payment: PaymentSummary) -> Result<fraud::Verdict, CheckError> {
            let threshold = super::parse_threshold(config::get(super::THRESHOLD_KEY).as_deref())
                .map_err(|super::BadConfig(why)| CheckError::BadConfig(why))?;
            let verdict = super::decide(order.payable_cents, threshold);
            log::emit(
                log::Level::Info,
                "{{name}} checked",
                &[
                    ("order_id".to_owned(), order.order_id.clone()),
                    ("total_cents".to_owned(), order.payable_cents.to_string()),
                    ("threshold_cents".to_owned(), threshold.to_string()),
                ],
            );
            Ok(fraud::Verdict {
                action: match verdict.action {
                    super::Action::Allow => fraud::Action::Allow,
                    super::Action::Review => fraud::Action::Review,
                },
                score: verdict.score,
                flags: verdict.flags,
                reasons: verdict.reasons,
            })
        }
    }

    export!(Rule);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_or_over_the_threshold_is_review() {
        assert_eq!(decide(100_000, 100_000).action, Action::Review);
        assert_eq!(decide(100_000, 100_000).flags, ["LARGE_ORDER"]);
        let allow = decide(99_999, 100_000);
        assert_eq!((allow.action, allow.score), (Action::Allow, 0));
        assert!(allow.flags.is_empty());
    }

    #[test]
    fn threshold_default_and_errors() {
        assert_eq!(parse_threshold(None), Ok(100_000));
        assert_eq!(parse_threshold(Some(" 500 ")), Ok(500));
        assert!(parse_threshold(Some("lots")).is_err());
        assert!(parse_threshold(Some("-1")).is_err());
    }
}
