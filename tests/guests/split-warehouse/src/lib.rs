//! A second warehouse selector, for A/B tests of the warehouse slot: each
//! sku (cart order, duplicate lines summed) is taken from the nearest
//! candidates that have it, as much as each has, until the line is covered;
//! so a cart that no single warehouse holds ships split instead of being
//! refused. A line no set of candidates covers is `cannot-fulfil`.
//! Distances are squared degrees (enough to order the candidates: the test
//! reads the real distances from the invoice). Reads no configuration.

wit_bindgen::generate!({
    world: "warehouse-selector",
    path: "../../../wit",
});

use exports::smartmart::rules::meta::{self, RuleInfo};
use exports::smartmart::rules::warehouse::{
    Allocation, AllocationLine, Candidate, Guest, Plan, SelectError, Shortfall,
};
use smartmart::rules::types::OrderContext;

struct Rule;

impl meta::Guest for Rule {
    fn info() -> RuleInfo {
        RuleInfo {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: env!("CARGO_PKG_DESCRIPTION").to_owned(),
        }
    }
}

impl Guest for Rule {
    fn select(order: OrderContext, mut candidates: Vec<Candidate>) -> Result<Plan, SelectError> {
        let near = |c: &Candidate| {
            let (dlat, dlon) = (c.location.lat - order.ship_to.lat, c.location.lon - order.ship_to.lon);
            dlat * dlat + dlon * dlon
        };
        candidates.sort_by(|a, b| near(a).total_cmp(&near(b)).then_with(|| a.id.cmp(&b.id)));
        let mut wanted: Vec<(String, u64)> = Vec::new();
        for line in order.lines.iter().filter(|l| l.quantity > 0) {
            match wanted.iter_mut().find(|(sku, _)| *sku == line.sku) {
                Some((_, total)) => *total += u64::from(line.quantity),
                None => wanted.push((line.sku.clone(), u64::from(line.quantity))),
            }
        }
        let mut allocations: Vec<Allocation> = Vec::new();
        for (sku, quantity) in wanted {
            let mut left = quantity;
            for candidate in &candidates {
                let available = candidate.stock.iter().filter(|s| s.sku == sku).map(|s| u64::from(s.available)).sum::<u64>();
                let take = left.min(available);
                if take == 0 {
                    continue;
                }
                left -= take;
                let line = AllocationLine { sku: sku.clone(), quantity: take as u32 };
                match allocations.iter_mut().find(|a| a.warehouse_id == candidate.id) {
                    Some(allocation) => allocation.lines.push(line),
                    None => allocations.push(Allocation { warehouse_id: candidate.id.clone(), lines: vec![line] }),
                }
                if left == 0 {
                    break;
                }
            }
            if left > 0 {
                let sat = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                return Err(SelectError::CannotFulfil(Shortfall {
                    sku,
                    requested: sat(quantity),
                    available: sat(quantity - left),
                    reason: "not enough stock in all the warehouses together".to_owned(),
                }));
            }
        }
        let reasons = vec![format!("warehouses={}", allocations.len())];
        Ok(Plan { allocations, reasons })
    }
}

export!(Rule);
