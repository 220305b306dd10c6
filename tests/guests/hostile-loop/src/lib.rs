//! `apply` spins forever. `black_box` keeps the optimiser from proving the
//! loop useless.

const RULE_NAME: &str = "hostile-loop";
include!("../../discount_guest.rs");

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        let mut n: u64 = 0;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}
