//! `apply` keeps 1 MiB blocks, each filled with data so that its pages are
//! really touched, until the allocator fails (which aborts: a trap) or the
//! host's memory limit stops it.

const RULE_NAME: &str = "hostile-memory";
include!("../../discount_guest.rs");

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let block = vec![hoard.len() as u8 | 1; 1 << 20];
            hoard.push(core::hint::black_box(block));
        }
    }
}
