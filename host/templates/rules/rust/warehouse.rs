//! `{{name}}`: {{description}}
//!
//! The decision is plain Rust ([`decide`]), tested natively with
//! `cargo test`; the `wasm` module (compiled only for the wasm target) turns
//! the host's WIT types into these and back.

/// Units of one sku, wanted or in stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Units {
    pub sku: String,
    pub quantity: u32,
}

/// A candidate warehouse, as far as this rule cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warehouse {
    pub id: String,
    pub stock: Vec<Units>,
}

/// The rule's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Everything ships from this warehouse.
    Ship { warehouse_id: String, lines: Vec<Units>, reasons: Vec<String> },
    /// No single warehouse covers the order; the first sku that is short.
    Short { sku: String, requested: u32, available: u32, reason: String },
}

/// Units wanted per sku, summed, in the order the skus first appear.
pub fn wanted(lines: &[Units]) -> Vec<Units> {
    let mut out: Vec<Units> = Vec::new();
    for line in lines {
        match out.iter_mut().find(|u| u.sku == line.sku) {
            Some(u) => u.quantity = u.quantity.saturating_add(line.quantity),
            None => out.push(line.clone()),
        }
    }
    out
}

fn available(warehouse: &Warehouse, sku: &str) -> u32 {
    warehouse.stock.iter().filter(|s| s.sku == sku).map(|s| s.quantity).sum()
}

/// The first candidate (in the host's order) that has every line.
pub fn decide(lines: &[Units], candidates: &[Warehouse]) -> Decision {
    let units = wanted(lines);
    let covers = |w: &Warehouse| units.iter().all(|u| available(w, &u.sku) >= u.quantity);
    if let Some(chosen) = candidates.iter().find(|w| covers(w)) {
        return Decision::Ship {
            warehouse_id: chosen.id.clone(),
            lines: units,
            reasons: vec![format!("first_covering={}", chosen.id)],
        };
    }
    let best = |sku: &str| candidates.iter().map(|w| available(w, sku)).max().unwrap_or(0);
    let short = units.iter().find(|u| best(&u.sku) < u.quantity).or(units.first());
    let (sku, requested) = short.map_or((String::new(), 0), |u| (u.sku.clone(), u.quantity));
    Decision::Short {
        available: best(&sku),
        sku,
        requested,
        reason: "no single warehouse has every line".to_owned(),
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the generated bindings use it
mod wasm {
    // Types and traits generated from the contract vendored in `wit/`
    // ({{contract}}), relative to Cargo.toml.
    wit_bindgen::generate!({
        world: "{{world}}",
        path: "wit",
    });

    use exports::smartmart::rules::meta::{self, RuleInfo};
    use exports::smartmart::rules::warehouse::{
        Allocation, AllocationLine, Candidate, Guest, Plan, SelectError, Shortfall,
    };
    use smartmart::rules::log;
    use smartmart::rules::types::OrderContext;

    use super::{Decision, Units, Warehouse};

    struct Rule;

    // What the host shows about this module: taken from Cargo.toml.
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
            let lines: Vec<Units> = order
                .lines
                .iter()
                .map(|l| Units { sku: l.sku.clone(), quantity: l.quantity })
                .collect();
            let warehouses: Vec<Warehouse> = candidates
                .into_iter()
                .map(|c| Warehouse {
                    id: c.id,
                    stock: c.stock.into_iter().map(|s| Units { sku: s.sku, quantity: s.available }).collect(),
                })
                .collect();
            match super::decide(&lines, &warehouses) {
                Decision::Ship { warehouse_id, lines, reasons } => {
                    log::emit(
                        log::Level::Info,
                        "{{name}} chose a warehouse",
                        &[
                            ("order_id".to_owned(), order.order_id.clone()),
                            ("warehouse_id".to_owned(), warehouse_id.clone()),
                        ],
                    );
                    Ok(Plan {
                        allocations: vec![Allocation {
                            warehouse_id,
                            lines: lines
                                .into_iter()
                                .map(|u| AllocationLine { sku: u.sku, quantity: u.quantity })
                                .collect(),
                        }],
                        reasons,
                    })
                }
                Decision::Short { sku, requested, available, reason } => {
                    Err(SelectError::CannotFulfil(Shortfall { sku, requested, available, reason }))
                }
            }
        }
    }

    export!(Rule);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(sku: &str, quantity: u32) -> Units {
        Units { sku: sku.to_owned(), quantity }
    }

    fn warehouse(id: &str, stock: &[(&str, u32)]) -> Warehouse {
        Warehouse { id: id.to_owned(), stock: stock.iter().map(|(s, q)| units(s, *q)).collect() }
    }

    #[test]
    fn the_first_warehouse_with_every_line_ships_it_all() {
        let lines = [units("A", 1), units("B", 2), units("A", 1)];
        let candidates = [warehouse("W1", &[("A", 5)]), warehouse("W2", &[("A", 2), ("B", 2)])];
        assert_eq!(
            decide(&lines, &candidates),
            Decision::Ship {
                warehouse_id: "W2".into(),
                lines: vec![units("A", 2), units("B", 2)],
                reasons: vec!["first_covering=W2".into()],
            }
        );
    }

    #[test]
    fn no_covering_warehouse_names_the_short_sku() {
        let decision = decide(&[units("A", 3)], &[warehouse("W1", &[("A", 2)])]);
        assert!(
            matches!(decision, Decision::Short { ref sku, requested: 3, available: 2, .. } if sku == "A"),
            "{decision:?}"
        );
    }
}
