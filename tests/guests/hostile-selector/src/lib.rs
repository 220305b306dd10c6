//! The warehouse selector a replay on stored orders exists for: it passes
//! the reload's smoke test (one example order, small quantities) and answers
//! a plan the host refuses (one unit more than ordered) on an order with a
//! line of quantity 5 or more. Otherwise each line ships whole from the
//! nearest warehouse (by squared degrees: enough for a test) that holds it.

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
    fn select(order: OrderContext, candidates: Vec<Candidate>) -> Result<Plan, SelectError> {
        let distance = |c: &Candidate| {
            let (dlat, dlon) = (c.location.lat - order.ship_to.lat, c.location.lon - order.ship_to.lon);
            dlat * dlat + dlon * dlon
        };
        let mut allocations: Vec<Allocation> = Vec::new();
        for line in &order.lines {
            let holds = |c: &&Candidate| c.stock.iter().any(|s| s.sku == line.sku && s.available >= line.quantity);
            let Some(from) = candidates.iter().filter(holds).min_by(|a, b| distance(a).total_cmp(&distance(b))) else {
                return Err(SelectError::CannotFulfil(Shortfall {
                    sku: line.sku.clone(),
                    requested: line.quantity,
                    available: 0,
                    reason: "no warehouse holds the line on its own".to_owned(),
                }));
            };
            // The bug: a bulk line is allocated one unit over what was ordered.
            let quantity = if line.quantity >= 5 { line.quantity + 1 } else { line.quantity };
            let allocation_line = AllocationLine { sku: line.sku.clone(), quantity };
            match allocations.iter_mut().find(|a| a.warehouse_id == from.id) {
                Some(allocation) => allocation.lines.push(allocation_line),
                None => allocations.push(Allocation { warehouse_id: from.id.clone(), lines: vec![allocation_line] }),
            }
        }
        Ok(Plan { allocations, reasons: vec!["per-line-nearest".to_owned()] })
    }
}

export!(Rule);
