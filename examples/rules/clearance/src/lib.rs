//! `clearance`: a percentage off the lines of one product category.
//!
//! The decision is plain Rust ([`decide`]), tested natively with
//! `cargo test`; the `wasm` module (compiled only for the wasm target) turns
//! the host's WIT types into these and back.

/// Config key of the percentage, and its default.
pub const PERCENT_KEY: &str = "percent";
pub const DEFAULT_PERCENT: u64 = 5;
/// Config key of the category on clearance, and its default.
pub const CATEGORY_KEY: &str = "category";
pub const DEFAULT_CATEGORY: &str = "accessories";
/// The rule's machine name, as it appears on the invoice.
pub const RULE: &str = "clearance";

/// One cart line, as far as this rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub category: &'a str,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

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

/// Reads `percent` (whole number 0..=100, default 5) and `category`
/// (non-blank, default "accessories").
pub fn parse_config(
    percent: Option<&str>,
    category: Option<&str>,
) -> Result<(u64, String), BadConfig> {
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
    let category = match category.map(str::trim) {
        None => DEFAULT_CATEGORY.to_owned(),
        Some("") => return Err(BadConfig(format!("{CATEGORY_KEY} must not be blank"))),
        Some(c) => c.to_owned(),
    };
    Ok((percent, category))
}

/// `percent` % of the total of the lines whose category is `category`
/// (compared case-insensitively), rounded down and never more than
/// `payable_cents`. Nothing to discount gives `None`.
pub fn decide(
    lines: &[Line],
    payable_cents: u64,
    percent: u64,
    category: &str,
) -> Option<Discount> {
    let eligible: u128 = lines
        .iter()
        .filter(|l| l.category.trim().eq_ignore_ascii_case(category))
        .map(|l| u128::from(l.quantity) * u128::from(l.unit_price_cents))
        .sum();
    let computed = eligible * u128::from(percent) / 100;
    let amount_cents = u64::try_from(computed)
        .unwrap_or(u64::MAX)
        .min(payable_cents);
    if amount_cents == 0 {
        return None;
    }
    let mut reasons = vec![
        format!("category={category}"),
        format!("percent={percent}"),
        format!("eligible_cents={eligible}"),
    ];
    if computed > u128::from(payable_cents) {
        reasons.push(format!("capped_at_payable={payable_cents}"));
    }
    Some(Discount {
        description: format!("Clearance {percent}% on {category}"),
        amount_cents,
        reasons,
    })
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the generated bindings use it
mod wasm {
    // Generates Rust types and traits from the WIT contract. `path` is
    // relative to this crate's Cargo.toml: adjust it if you move the crate.
    wit_bindgen::generate!({
        world: "discount-rule",
        path: "../../../wit",
    });

    use exports::smartmart::rules::discount::{DiscountError, DiscountLine, Guest};
    use exports::smartmart::rules::meta::{self, RuleInfo};
    use smartmart::rules::types::OrderContext;
    use smartmart::rules::{config, log};

    struct Clearance;

    // What the host shows about this module: taken from Cargo.toml.
    impl meta::Guest for Clearance {
        fn info() -> RuleInfo {
            RuleInfo {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                description: env!("CARGO_PKG_DESCRIPTION").to_owned(),
            }
        }
    }

    impl Guest for Clearance {
        fn apply(order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
            let percent = config::get(super::PERCENT_KEY);
            let category = config::get(super::CATEGORY_KEY);
            let (percent, category) = super::parse_config(percent.as_deref(), category.as_deref())
                .map_err(|super::BadConfig(msg)| DiscountError::BadConfig(msg))?;
            let lines: Vec<super::Line> = order
                .lines
                .iter()
                .map(|l| super::Line {
                    category: &l.category,
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                })
                .collect();
            let discount = super::decide(&lines, order.payable_cents, percent, &category);
            log::emit(
                log::Level::Debug,
                "clearance applied",
                &[
                    ("order_id".to_owned(), order.order_id.clone()),
                    (
                        "amount_cents".to_owned(),
                        discount.as_ref().map_or(0, |d| d.amount_cents).to_string(),
                    ),
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

    export!(Clearance);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(category: &str, quantity: u32, unit_price_cents: u64) -> Line<'_> {
        Line {
            category,
            quantity,
            unit_price_cents,
        }
    }

    #[test]
    fn discounts_only_the_category() {
        let lines = [
            line("electronics", 1, 100_000),
            line("accessories", 2, 2_500),
        ];
        let d = decide(&lines, 105_000, 5, "accessories").unwrap();
        assert_eq!(d.amount_cents, 250);
        assert_eq!(d.description, "Clearance 5% on accessories");
        assert_eq!(
            d.reasons,
            ["category=accessories", "percent=5", "eligible_cents=5000"]
        );
    }

    #[test]
    fn category_is_case_insensitive_and_rounding_is_down() {
        let lines = [line("Accessories", 1, 1_999)];
        assert_eq!(
            decide(&lines, 1_999, 5, "accessories")
                .unwrap()
                .amount_cents,
            99
        );
    }

    #[test]
    fn nothing_eligible_is_no_line() {
        let lines = [line("electronics", 1, 100_000)];
        assert_eq!(decide(&lines, 100_000, 5, "accessories"), None);
        assert_eq!(decide(&[], 0, 5, "accessories"), None);
        assert_eq!(
            decide(&[line("accessories", 1, 19)], 19, 5, "accessories"),
            None
        );
    }

    #[test]
    fn never_more_than_payable() {
        // Earlier rules left less to pay than this rule would take.
        let lines = [line("accessories", 10, 10_000)];
        let d = decide(&lines, 1_000, 50, "accessories").unwrap();
        assert_eq!(d.amount_cents, 1_000);
        assert!(d.reasons.contains(&"capped_at_payable=1000".to_owned()));
    }

    #[test]
    fn config_defaults_and_errors() {
        assert_eq!(parse_config(None, None), Ok((5, "accessories".to_owned())));
        assert_eq!(
            parse_config(Some("20"), Some(" toys ")),
            Ok((20, "toys".to_owned()))
        );
        for bad in ["x", "101", "-1", "2.5"] {
            assert!(parse_config(Some(bad), None).is_err(), "{bad:?}");
        }
        assert!(parse_config(None, Some("  ")).is_err());
    }
}
