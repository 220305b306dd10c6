//! Control characters and long texts everywhere a discount rule can put
//! text. `meta.info` reports the name, version and description of its
//! config keys `name`, `version`, `description` (defaults: `hostile-text`,
//! the crate's version, a 60 KB description full of escapes), so that tests
//! can load it under a forged or empty name. `apply` logs a message forging
//! a line, then answers one line whose rule, description (60 KB) and reasons
//! carry newlines and terminal escapes, or, given a coupon code, refuses it
//! with such a message.

wit_bindgen::generate!({
    world: "discount-rule",
    path: "../../../wit",
});

use exports::smartmart::rules::discount::{DiscountError, DiscountLine, Guest};
use exports::smartmart::rules::meta::{self, RuleInfo};
use smartmart::rules::types::OrderContext;
use smartmart::rules::{config, log};

/// Opens every hostile text: a forged log line, a screen clear, a red
/// colour, a right-to-left override.
const FORGERY: &str = "\nINFO forged line\r\x1b[2J\x1b[31m\u{202e}";
const LONG_BYTES: usize = 60_000;

struct Rule;

fn long_text(head: &str) -> String {
    let mut text = format!("{head}{FORGERY}");
    text.push_str(&"d".repeat(LONG_BYTES));
    text
}

impl meta::Guest for Rule {
    fn info() -> RuleInfo {
        RuleInfo {
            name: config::get("name").unwrap_or_else(|| "hostile-text".to_owned()),
            version: config::get("version").unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
            description: config::get("description").unwrap_or_else(|| long_text("description")),
        }
    }
}

impl Guest for Rule {
    fn apply(order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        log::emit(
            log::Level::Warn,
            &format!("applying{FORGERY}"),
            &[(format!("key{FORGERY}"), format!("value{FORGERY}"))],
        );
        if order.coupon_code.is_some() {
            return Err(DiscountError::InvalidCoupon(long_text("coupon")));
        }
        Ok(vec![DiscountLine {
            rule: format!("hostile-text{FORGERY}"),
            description: long_text("description"),
            amount_cents: 1,
            reasons: vec![format!("reason{FORGERY}"), long_text("reason")],
        }])
    }
}

export!(Rule);
