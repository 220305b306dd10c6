// Shared by every discount-rule guest of this workspace through
// `include!("../../discount_guest.rs")` at the crate root: the bindings, the
// `meta` export and `export!`. The including crate defines `RULE_NAME` and
// `impl Guest for Rule`. (The WIT path is relative to the crate's manifest.)

wit_bindgen::generate!({
    world: "discount-rule",
    path: "../../../wit",
});

#[allow(unused_imports)]
use exports::smartmart::rules::discount::{DiscountError, DiscountLine, Guest};
use exports::smartmart::rules::meta::{self, RuleInfo};
#[allow(unused_imports)]
use smartmart::rules::types::OrderContext;

struct Rule;

impl meta::Guest for Rule {
    fn info() -> RuleInfo {
        RuleInfo {
            name: RULE_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: env!("CARGO_PKG_DESCRIPTION").to_owned(),
        }
    }
}

export!(Rule);
