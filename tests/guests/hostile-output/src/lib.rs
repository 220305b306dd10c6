//! `apply` returns `lines` discount lines of 1 cent (config, default 5,000),
//! each with a description of `description_chars` characters (config,
//! default 1,000): by default about 5 MB of output (and about 5 MB of the
//! guest's memory, well under a 16 MiB limit). Configured small, it answers
//! just under or just over an output budget, for the budget reports.

const RULE_NAME: &str = "hostile-output";
include!("../../discount_guest.rs");

const LINES: usize = 5_000;
const DESCRIPTION_CHARS: usize = 1_000;

/// The whole number `key` configures, or `default`.
fn configured(key: &str, default: usize) -> Result<usize, DiscountError> {
    match smartmart::rules::config::get(key) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| DiscountError::BadConfig(format!("{key} must be a whole number, got {raw:?}"))),
    }
}

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        let description = "x".repeat(configured("description_chars", DESCRIPTION_CHARS)?);
        Ok((0..configured("lines", LINES)?)
            .map(|_| DiscountLine {
                rule: RULE_NAME.to_owned(),
                description: description.clone(),
                amount_cents: 1,
                reasons: Vec::new(),
            })
            .collect())
    }
}
