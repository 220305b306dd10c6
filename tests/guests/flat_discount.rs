// The `flat-discount` rule shared by flat-discount-v1 and -v2 (hot swap and
// A/B tests) through `include!("../../flat_discount.rs")`; each crate defines
// `DEFAULT_AMOUNT_CENTS` and `DESCRIPTION`, and sets its own version.
//
// Config: `amount` (cents, a whole number; default DEFAULT_AMOUNT_CENTS).
// Gives that amount off every order, never more than what is left to pay.

const RULE_NAME: &str = "flat-discount";
include!("discount_guest.rs");

impl Guest for Rule {
    fn apply(order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        let amount = match smartmart::rules::config::get("amount") {
            None => DEFAULT_AMOUNT_CENTS,
            Some(raw) => raw.trim().parse::<u64>().map_err(|_| {
                DiscountError::BadConfig(format!(
                    "amount must be a whole number of cents, got {raw:?}"
                ))
            })?,
        };
        let amount_cents = amount.min(order.payable_cents);
        if amount_cents == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![DiscountLine {
            rule: RULE_NAME.to_owned(),
            description: DESCRIPTION.to_owned(),
            amount_cents,
            reasons: vec![
                format!("amount_cents={amount}"),
                format!("version={}", env!("CARGO_PKG_VERSION")),
            ],
        }])
    }
}
