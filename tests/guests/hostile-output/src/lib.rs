//! `apply` returns 5,000 discount lines of 1 cent, each with a
//! 1,000-character description: about 5 MB of output (and about 5 MB of the
//! guest's memory, well under a 16 MiB limit).

const RULE_NAME: &str = "hostile-output";
include!("../../discount_guest.rs");

const LINES: usize = 5_000;
const DESCRIPTION_CHARS: usize = 1_000;

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        let description = "x".repeat(DESCRIPTION_CHARS);
        Ok((0..LINES)
            .map(|_| DiscountLine {
                rule: RULE_NAME.to_owned(),
                description: description.clone(),
                amount_cents: 1,
                reasons: Vec::new(),
            })
            .collect())
    }
}
