//! `apply` returns one discount line whose 2,000 reasons all alias one 1 MiB
//! buffer: 2 GiB if the host copied every alias, from about 1 MiB of guest
//! memory. Only an output budget charged *before* copying stops it cheaply.

const RULE_NAME: &str = "hostile-alias";
include!("../../discount_guest.rs");

const ALIASES: usize = 2_000;
const BUFFER_BYTES: usize = 1 << 20;

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        let buffer = std::mem::ManuallyDrop::new("r".repeat(BUFFER_BYTES));
        let reasons = (0..ALIASES)
            // SAFETY: the aliases are only read (by the lifting of the
            // answer); the post-return cleanup that would free them never runs
            // when the host refuses the answer, and the instance is discarded.
            .map(|_| unsafe { String::from_raw_parts(buffer.as_ptr().cast_mut(), buffer.len(), buffer.len()) })
            .collect();
        Ok(vec![DiscountLine {
            rule: RULE_NAME.to_owned(),
            description: "aliased".to_owned(),
            amount_cents: 1,
            reasons,
        }])
    }
}
