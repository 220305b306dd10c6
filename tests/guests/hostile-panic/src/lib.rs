//! `apply` panics; with `panic = "abort"` that is a trap.

const RULE_NAME: &str = "hostile-panic";
include!("../../discount_guest.rs");

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        panic!("coupon engine crashed (marker PANIC-MARKER-5f1c9e)");
    }
}
