//! `apply` tries to read /etc/passwd, so the component imports
//! `wasi:filesystem/*`. What it read comes back as a discount line's
//! description (the test must never see it); the refusal as `internal` with
//! the error text.

const RULE_NAME: &str = "hostile-files";
include!("../../discount_guest.rs");

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => Ok(vec![DiscountLine {
                rule: RULE_NAME.to_owned(),
                description: text,
                amount_cents: 1,
                reasons: vec!["filesystem=granted".to_owned()],
            }]),
            Err(e) => Err(DiscountError::Internal(format!("read /etc/passwd: {e}"))),
        }
    }
}
