//! `apply` fails with `internal("deliberate failure")` on every call: the
//! slot's fail mode decides what happens to the order.

const RULE_NAME: &str = "error-rule";
include!("../../discount_guest.rs");

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        Err(DiscountError::Internal("deliberate failure".to_owned()))
    }
}
