//! The newcomer's rule `rules replay` exists for: it passes the reload's
//! smoke test (one example order, small quantities) and traps on a live
//! order with a line of quantity 5 or more. Otherwise 10 % off for GOLD
//! customers, as the bundled gold-loyalty rule with its default config.

use smartmart::rules::types::Tier;

const RULE_NAME: &str = "hostile-bulk";
include!("../../discount_guest.rs");

impl Guest for Rule {
    fn apply(order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        for line in &order.lines {
            if line.quantity >= 5 {
                // The newline checks that the host escapes what a rule says.
                panic!("quantity {} of {} is over 4\nbulk pricing (marker BULK-MARKER-3d7a)", line.quantity, line.sku);
            }
        }
        let amount_cents = order.payable_cents / 10;
        if order.customer.tier != Tier::Gold || amount_cents == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![DiscountLine {
            rule: RULE_NAME.to_owned(),
            description: "GOLD tier 10%".to_owned(),
            amount_cents,
            reasons: vec!["tier=GOLD".to_owned()],
        }])
    }
}
