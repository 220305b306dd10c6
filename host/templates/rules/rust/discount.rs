//! `{{name}}`: {{description}}
//!
//! The decision is plain Rust ([`parse_config`], [`decide`]), tested
//! natively with `cargo test`; the `wasm` module (compiled only for the wasm
//! target) turns the host's WIT types into these and back.

/// The rule's machine name, as it appears on the invoice.
pub const RULE: &str = env!("CARGO_PKG_NAME");
/// Config key of the percentage, and its default.
pub const PERCENT_KEY: &str = "percent";
pub const DEFAULT_PERCENT: u64 = 5;
/// Config key of the tier that gets the discount, and its default.
pub const TIER_KEY: &str = "tier";
pub const DEFAULT_TIER: &str = "GOLD";
const TIERS: [&str; 3] = ["GOLD", "SILVER", "STANDARD"];

/// The discount granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discount {
    pub description: String,
    pub amount_cents: u64,
    pub reasons: Vec<String>,
}

/// The configuration could not be used; the message says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadConfig(pub String);

/// Reads `percent` (whole number 0..=100, default 5) and `tier` (GOLD,
/// SILVER or STANDARD, any case, default GOLD).
pub fn parse_config(percent: Option<&str>, tier: Option<&str>) -> Result<(u64, String), BadConfig> {
    let percent = match percent {
        None => DEFAULT_PERCENT,
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(p) if p <= 100 => p,
            _ => {
                return Err(BadConfig(format!(
                    "{PERCENT_KEY} must be a whole number from 0 to 100, got {raw:?}"
                )));
            }
        },
    };
    let tier = tier.map_or(DEFAULT_TIER.to_owned(), |t| t.trim().to_uppercase());
    if !TIERS.contains(&tier.as_str()) {
        return Err(BadConfig(format!(
            "{TIER_KEY} must be one of {}, got {tier:?}",
            TIERS.join(", ")
        )));
    }
    Ok((percent, tier))
}

/// `percent` % of `payable_cents` (what is left to pay after the discount
/// rules before this one), rounded down, when the customer's tier is
/// `wanted_tier`. Nothing to give is `None`.
pub fn decide(customer_tier: &str, payable_cents: u64, percent: u64, wanted_tier: &str) -> Option<Discount> {
    if customer_tier != wanted_tier {
        return None;
    }
    let amount_cents = (u128::from(payable_cents) * u128::from(percent) / 100) as u64;
    if amount_cents == 0 {
        return None;
    }
    Some(Discount {
        description: format!("{wanted_tier} tier {percent}%"),
        amount_cents,
        reasons: vec![format!("tier={wanted_tier}"), format!("percent={percent}")],
    })
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

    use exports::smartmart::rules::discount::{DiscountError, DiscountLine, Guest};
    use exports::smartmart::rules::meta::{self, RuleInfo};
    use smartmart::rules::types::{OrderContext, Tier};
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
        fn apply(order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
            let percent = config::get(super::PERCENT_KEY);
            let tier = config::get(super::TIER_KEY);
            let (percent, wanted) = super::parse_config(percent.as_deref(), tier.as_deref())
                .map_err(|super::BadConfig(why)| DiscountError::BadConfig(why))?;
            let customer_tier = match order.customer.tier {
                Tier::Gold => "GOLD",
                Tier::Silver => "SILVER",
                Tier::Standard => "STANDARD",
            };
            let discount = super::decide(customer_tier, order.payable_cents, percent, &wanted);
            let amount = discount.as_ref().map_or(0, |d| d.amount_cents);
            log::emit(
                log::Level::Info,
                "{{name}} applied",
                &[
                    ("order_id".to_owned(), order.order_id.clone()),
                    ("amount_cents".to_owned(), amount.to_string()),
                ],
            );
            Ok(discount
                .map(|d| DiscountLine {
                    rule: super::RULE.to_owned(),
                    description: d.description,
                    amount_cents: d.amount_cents,
                    reasons: d.reasons,
                })
                .into_iter()
                .collect())
        }
    }

    export!(Rule);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_tier_gets_the_percentage_rounded_down() {
        let d = decide("GOLD", 1_999, 5, "GOLD").unwrap();
        assert_eq!(d.amount_cents, 99);
        assert_eq!(d.description, "GOLD tier 5%");
        assert_eq!(d.reasons, ["tier=GOLD", "percent=5"]);
    }

    #[test]
    fn other_tiers_and_nothing_to_pay_get_no_line() {
        assert_eq!(decide("STANDARD", 1_000, 5, "GOLD"), None);
        assert_eq!(decide("GOLD", 0, 5, "GOLD"), None);
    }

    #[test]
    fn config_defaults_and_errors() {
        assert_eq!(parse_config(None, None), Ok((5, "GOLD".to_owned())));
        assert_eq!(parse_config(Some(" 10 "), Some("silver")), Ok((10, "SILVER".to_owned())));
        for bad in ["x", "101", "-1", ""] {
            assert!(parse_config(Some(bad), None).is_err(), "{bad:?}");
        }
        assert!(parse_config(None, Some("PLATINUM")).is_err());
    }
}
