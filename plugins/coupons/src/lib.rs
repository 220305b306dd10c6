//! `coupons`: a coupon code typed by the customer takes a percentage or a
//! fixed amount off what is left to pay. Codes and their values come only
//! from the module config (`code.<CODE> = "percent:<N>" | "amount:<CENTS>"`).
//! The decision is plain Rust ([`decide`]) so that it is tested natively;
//! the `wasm` module only converts between the WIT types and these.

/// The rule's machine name, as it appears on the invoice.
pub const RULE: &str = "coupons";
/// Prefix of the config keys that define codes.
pub const CODE_PREFIX: &str = "code.";

/// What a coupon is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// This percentage (1..=100) of what is left to pay, rounded down.
    Percent(u64),
    /// This many cents off, never more than what is left to pay.
    Amount(u64),
}

/// The discount granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discount {
    pub description: String,
    pub amount_cents: u64,
    pub reasons: Vec<String>,
}

/// Why no discount could be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CouponError {
    /// The customer's code is not configured (the order is refused).
    InvalidCoupon(String),
    /// A `code.*` entry of the config is malformed.
    BadConfig(String),
}

/// Parses one config value, `percent:<1..=100>` or `amount:<cents ≥ 1>`
/// (the kind case-insensitive, blanks around each part allowed).
pub fn parse_offer(key: &str, value: &str) -> Result<Offer, CouponError> {
    let bad = || {
        CouponError::BadConfig(format!(
            "{key} must be \"percent:<1..=100>\" or \"amount:<cents>\", got {value:?}"
        ))
    };
    let (kind, number) = value.split_once(':').ok_or_else(bad)?;
    let number: u64 = number.trim().parse().map_err(|_| bad())?;
    match kind.trim().to_ascii_lowercase().as_str() {
        "percent" if (1..=100).contains(&number) => Ok(Offer::Percent(number)),
        "amount" if number >= 1 => Ok(Offer::Amount(number)),
        _ => Err(bad()),
    }
}

/// Looks `code` up among the `code.*` config entries, case-insensitively.
/// Every `code.*` entry is checked, so a malformed or ambiguous config is
/// reported whichever code was typed. Other keys are ignored.
///
/// Returns the code as configured, in upper case, and its offer.
pub fn find(code: &str, entries: &[(String, String)]) -> Result<(String, Offer), CouponError> {
    let wanted = code.to_uppercase();
    let mut seen: Vec<String> = Vec::new();
    let mut found = None;
    for (key, value) in entries {
        let Some(name) = key.strip_prefix(CODE_PREFIX) else {
            continue;
        };
        let name = name.trim().to_uppercase();
        if name.is_empty() {
            return Err(CouponError::BadConfig(format!("{key:?} names no code")));
        }
        if seen.contains(&name) {
            return Err(CouponError::BadConfig(format!(
                "code {name} is configured more than once (codes are case-insensitive)"
            )));
        }
        let offer = parse_offer(key, value)?;
        if name == wanted {
            found = Some((name.clone(), offer));
        }
        seen.push(name);
    }
    found.ok_or_else(|| CouponError::InvalidCoupon(format!("unknown coupon code {code:?}")))
}

/// The discount for the coupon the customer typed, on `payable_cents`.
///
/// No code (absent or blank) gives `None` without reading the config;
/// `entries` (the module config, as `config.entries` returns it) is only
/// called when there is a code. A discount of zero (nothing left to pay)
/// also gives `None`.
pub fn decide(
    coupon_code: Option<&str>,
    payable_cents: u64,
    entries: impl FnOnce() -> Vec<(String, String)>,
) -> Result<Option<Discount>, CouponError> {
    let Some(code) = coupon_code.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let (code, offer) = find(code, &entries())?;
    let mut reasons = vec![format!("coupon={code}")];
    let (description, amount_cents) = match offer {
        Offer::Percent(p) => {
            reasons.push(format!("percent={p}"));
            let amount = (u128::from(payable_cents) * u128::from(p) / 100) as u64;
            (format!("Coupon {code}: {p}%"), amount)
        }
        Offer::Amount(a) => {
            reasons.push(format!("amount_cents={a}"));
            if a > payable_cents {
                reasons.push(format!("capped_at_payable={payable_cents}"));
            }
            (format!("Coupon {code}: {a} off"), a.min(payable_cents))
        }
    };
    if amount_cents == 0 {
        return Ok(None);
    }
    Ok(Some(Discount {
        description,
        amount_cents,
        reasons,
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

    use super::CouponError;
    use exports::smartmart::rules::discount::{DiscountError, DiscountLine, Guest};
    use exports::smartmart::rules::meta::{self, RuleInfo};
    use smartmart::rules::types::OrderContext;
    use smartmart::rules::{config, log};

    struct Coupons;

    impl meta::Guest for Coupons {
        fn info() -> RuleInfo {
            RuleInfo {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                description: env!("CARGO_PKG_DESCRIPTION").to_owned(),
            }
        }
    }

    impl Guest for Coupons {
        fn apply(order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
            let decision = super::decide(
                order.coupon_code.as_deref(),
                order.payable_cents,
                config::entries,
            );
            let outcome = match &decision {
                Ok(Some(d)) => d.amount_cents.to_string(),
                Ok(None) => "none".to_owned(),
                Err(e) => format!("{e:?}"),
            };
            log::emit(
                log::Level::Debug,
                "coupons applied",
                &[
                    ("order_id".to_owned(), order.order_id),
                    ("outcome".to_owned(), outcome),
                ],
            );
            match decision {
                Ok(discount) => Ok(discount
                    .map(|d| DiscountLine {
                        rule: super::RULE.to_owned(),
                        description: d.description,
                        amount_cents: d.amount_cents,
                        reasons: d.reasons,
                    })
                    .into_iter()
                    .collect()),
                Err(CouponError::InvalidCoupon(why)) => Err(DiscountError::InvalidCoupon(why)),
                Err(CouponError::BadConfig(why)) => Err(DiscountError::BadConfig(why)),
            }
        }
    }

    export!(Coupons);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> impl FnOnce() -> Vec<(String, String)> {
        let pairs: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move || pairs
    }

    fn bundled() -> impl FnOnce() -> Vec<(String, String)> {
        config(&[
            ("code.FLAT500", "amount:500"),
            ("code.WELCOME10", "percent:10"),
        ])
    }

    #[test]
    fn percent_coupon() {
        let d = decide(Some("WELCOME10"), 100_000, bundled())
            .unwrap()
            .unwrap();
        assert_eq!(d.amount_cents, 10_000);
        assert_eq!(d.description, "Coupon WELCOME10: 10%");
        assert_eq!(d.reasons, ["coupon=WELCOME10", "percent=10"]);
    }

    #[test]
    fn amount_coupon() {
        let d = decide(Some("FLAT500"), 100_000, bundled())
            .unwrap()
            .unwrap();
        assert_eq!(d.amount_cents, 500);
        assert_eq!(d.description, "Coupon FLAT500: 500 off");
        assert_eq!(d.reasons, ["coupon=FLAT500", "amount_cents=500"]);
    }

    #[test]
    fn codes_are_case_insensitive_both_ways() {
        let d = decide(Some(" welcome10 "), 1_000, bundled())
            .unwrap()
            .unwrap();
        assert_eq!(d.description, "Coupon WELCOME10: 10%");
        let d = decide(
            Some("Flat500"),
            1_000,
            config(&[("code.flat500", "AMOUNT: 500")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.description, "Coupon FLAT500: 500 off");
    }

    #[test]
    fn amount_never_exceeds_payable() {
        let d = decide(Some("FLAT500"), 120, bundled()).unwrap().unwrap();
        assert_eq!(d.amount_cents, 120);
        assert!(d.reasons.contains(&"capped_at_payable=120".to_owned()));
    }

    #[test]
    fn percent_rounds_down() {
        let d = decide(Some("WELCOME10"), 1_999, bundled())
            .unwrap()
            .unwrap();
        assert_eq!(d.amount_cents, 199);
        let d = decide(
            Some("ALL"),
            u64::MAX,
            config(&[("code.ALL", "percent:100")]),
        );
        assert_eq!(d.unwrap().unwrap().amount_cents, u64::MAX);
    }

    #[test]
    fn nothing_left_to_pay_is_no_line() {
        assert_eq!(decide(Some("WELCOME10"), 0, bundled()), Ok(None));
        assert_eq!(decide(Some("FLAT500"), 0, bundled()), Ok(None));
        assert_eq!(decide(Some("WELCOME10"), 9, bundled()), Ok(None));
    }

    #[test]
    fn no_coupon_is_no_line_and_reads_no_config() {
        let untouched = || -> Vec<(String, String)> { panic!("config read without a coupon") };
        assert_eq!(decide(None, 1_000, untouched), Ok(None));
        assert_eq!(decide(Some("  "), 1_000, untouched), Ok(None));
        assert_eq!(decide(Some(""), 1_000, untouched), Ok(None));
    }

    #[test]
    fn unknown_code_is_invalid_coupon() {
        let err = decide(Some("NOPE"), 1_000, bundled()).unwrap_err();
        assert_eq!(
            err,
            CouponError::InvalidCoupon("unknown coupon code \"NOPE\"".into())
        );
        // With no codes configured at all, every code is unknown.
        let err = decide(Some("WELCOME10"), 1_000, config(&[])).unwrap_err();
        assert!(matches!(err, CouponError::InvalidCoupon(_)));
    }

    #[test]
    fn other_keys_are_ignored() {
        let cfg = config(&[("note", "whatever"), ("code.X", "percent:5")]);
        assert!(decide(Some("x"), 100, cfg).unwrap().is_some());
    }

    #[test]
    fn malformed_values_are_bad_config() {
        for bad in [
            "10",
            "percent:",
            "percent:abc",
            "percent:0",
            "percent:101",
            "percent:-5",
            "percent:10.5",
            "amount:0",
            "amount:-1",
            "amount:5.00",
            "free:10",
            "",
        ] {
            let err = decide(Some("A"), 1_000, config(&[("code.A", bad)])).unwrap_err();
            assert!(matches!(err, CouponError::BadConfig(_)), "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn a_malformed_entry_is_reported_whichever_code_is_typed() {
        let cfg = config(&[("code.BROKEN", "percent:x"), ("code.OK", "percent:5")]);
        let err = decide(Some("OK"), 1_000, cfg).unwrap_err();
        assert!(matches!(err, CouponError::BadConfig(m) if m.contains("code.BROKEN")));
    }

    #[test]
    fn ambiguous_or_empty_codes_are_bad_config() {
        let cfg = config(&[("code.SAVE", "percent:5"), ("code.save", "percent:50")]);
        assert!(matches!(
            decide(Some("SAVE"), 1_000, cfg),
            Err(CouponError::BadConfig(_))
        ));
        let cfg = config(&[("code.", "percent:5")]);
        assert!(matches!(
            decide(Some("SAVE"), 1_000, cfg),
            Err(CouponError::BadConfig(_))
        ));
    }
}
