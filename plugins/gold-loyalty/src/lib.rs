//! `gold-loyalty`: customers of the GOLD tier get a percentage off what is
//! left to pay. The decision is plain Rust ([`decide`]) so that it is tested
//! natively; the `wasm` module only converts between the WIT types and these.

/// Config key of the percentage.
pub const PERCENT_KEY: &str = "percent";
/// Percentage used when `percent` is not configured.
pub const DEFAULT_PERCENT: u64 = 10;
/// The rule's machine name, as it appears on the invoice.
pub const RULE: &str = "gold-loyalty";

/// Loyalty tier of the customer (the WIT `tier` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Gold,
    Silver,
    Standard,
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

/// Parses the `percent` config value: a whole number 0..=100, surrounding
/// blanks allowed; absent means [`DEFAULT_PERCENT`].
pub fn parse_percent(value: Option<&str>) -> Result<u64, BadConfig> {
    let Some(raw) = value else {
        return Ok(DEFAULT_PERCENT);
    };
    match raw.trim().parse::<u64>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(BadConfig(format!(
            "{PERCENT_KEY} must be a whole number from 0 to 100, got {raw:?}"
        ))),
    }
}

/// `percent` % of `payable_cents`, rounded down (exact for every `u64`).
pub fn percent_of(payable_cents: u64, percent: u64) -> u64 {
    (u128::from(payable_cents) * u128::from(percent) / 100) as u64
}

/// The discount for a customer of `tier` with `payable_cents` left to pay.
///
/// Other tiers than GOLD, and a discount that rounds to zero, give `None`
/// (no discount line: the neutral outcome). The config is checked first, so a
/// bad `percent` is reported whatever the tier.
pub fn decide(
    tier: Tier,
    payable_cents: u64,
    percent_config: Option<&str>,
) -> Result<Option<Discount>, BadConfig> {
    let percent = parse_percent(percent_config)?;
    if tier != Tier::Gold {
        return Ok(None);
    }
    let amount_cents = percent_of(payable_cents, percent);
    if amount_cents == 0 {
        return Ok(None);
    }
    Ok(Some(Discount {
        description: format!("GOLD tier {percent}%"),
        amount_cents,
        reasons: vec!["tier=GOLD".to_owned(), format!("percent={percent}")],
    }))
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the generated bindings
mod wasm {
    // The bump allocator: instances live for one call (see guest-alloc).
    use guest_alloc as _;

    wit_bindgen::generate!({
        world: "discount-rule",
        path: "../../wit",
    });

    use exports::smartmart::rules::discount::{DiscountError, DiscountLine, Guest};
    use exports::smartmart::rules::meta::{self, RuleInfo};
    use smartmart::rules::types::{OrderContext, Tier};
    use smartmart::rules::{config, log};

    struct GoldLoyalty;

    impl meta::Guest for GoldLoyalty {
        fn info() -> RuleInfo {
            RuleInfo {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                description: env!("CARGO_PKG_DESCRIPTION").to_owned(),
            }
        }
    }

    impl Guest for GoldLoyalty {
        fn apply(order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
            let tier = match order.customer.tier {
                Tier::Gold => super::Tier::Gold,
                Tier::Silver => super::Tier::Silver,
                Tier::Standard => super::Tier::Standard,
            };
            let percent = config::get(super::PERCENT_KEY);
            let discount = super::decide(tier, order.payable_cents, percent.as_deref())
                .map_err(|super::BadConfig(msg)| DiscountError::BadConfig(msg))?;
            let amount = discount.as_ref().map_or(0, |d| d.amount_cents);
            log::emit(
                log::Level::Debug,
                "gold-loyalty applied",
                &[
                    ("order_id".to_owned(), order.order_id),
                    ("tier".to_owned(), format!("{tier:?}")),
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

    export!(GoldLoyalty);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_gets_ten_percent_by_default() {
        let d = decide(Tier::Gold, 100_000, None).unwrap().unwrap();
        assert_eq!(d.amount_cents, 10_000);
        assert_eq!(d.description, "GOLD tier 10%");
        assert_eq!(d.reasons, ["tier=GOLD", "percent=10"]);
    }

    #[test]
    fn other_tiers_get_nothing() {
        assert_eq!(decide(Tier::Silver, 100_000, None), Ok(None));
        assert_eq!(decide(Tier::Standard, 100_000, Some("50")), Ok(None));
    }

    #[test]
    fn rounds_down() {
        assert_eq!(
            decide(Tier::Gold, 999, None).unwrap().unwrap().amount_cents,
            99
        );
        assert_eq!(
            decide(Tier::Gold, 19, Some("15"))
                .unwrap()
                .unwrap()
                .amount_cents,
            2
        );
    }

    #[test]
    fn zero_amount_is_no_line() {
        assert_eq!(decide(Tier::Gold, 0, None), Ok(None));
        assert_eq!(decide(Tier::Gold, 9, None), Ok(None));
        assert_eq!(decide(Tier::Gold, 100_000, Some("0")), Ok(None));
    }

    #[test]
    fn configured_percent_shows_in_description_and_reasons() {
        let d = decide(Tier::Gold, 20_000, Some(" 25 ")).unwrap().unwrap();
        assert_eq!(d.amount_cents, 5_000);
        assert_eq!(d.description, "GOLD tier 25%");
        assert_eq!(d.reasons, ["tier=GOLD", "percent=25"]);
    }

    #[test]
    fn hundred_percent_and_huge_amounts_do_not_overflow() {
        assert_eq!(percent_of(u64::MAX, 100), u64::MAX);
        assert_eq!(percent_of(u64::MAX, 10), u64::MAX / 10);
    }

    #[test]
    fn bad_config_is_reported_for_every_tier() {
        for bad in ["abc", "", "101", "-5", "10.5", "10%"] {
            assert!(decide(Tier::Gold, 1_000, Some(bad)).is_err(), "{bad:?}");
            assert!(decide(Tier::Silver, 1_000, Some(bad)).is_err(), "{bad:?}");
        }
        let BadConfig(msg) = decide(Tier::Gold, 1_000, Some("abc")).unwrap_err();
        assert!(msg.contains("percent") && msg.contains("abc"), "{msg}");
    }
}
