//! Stage 3b: where the order ships from. The leg itself only plans: it
//! offers the selector rule the warehouses that stock the cart (as the
//! order's snapshot read them), and checks the plan (a rule can never
//! allocate stock that is not there). Nothing is written until both legs of
//! stage 3 have succeeded: then [`hold`] holds the stock, creates the order
//! PENDING, claims its key and records its payment intent in one store
//! command (one round trip on PostgreSQL), re-planning on fresh stock when
//! stock moved meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::canary::{Answered, Canaries};
use super::experiments::{Arm, ExperimentFigures};
use super::shadow::ShadowJob;
use super::validate::unavailable;
use super::{OrderError, Stage};
use crate::domain::geo::distance_km;
use crate::domain::invoice::{Invoice, InvoiceAllocation};
use crate::domain::status::Slot;
use crate::rules::types::{Candidate, OrderContext, Plan, Refusal, StockLevel};
use crate::rules::{Called, FailureCause, Picked, Rule, RuleError, RuleSet, SlotRule};
use crate::store::Store;
use crate::store::catalog::StockedWarehouse;
use crate::store::orders::{Hold, KeyClaim, NewOrder, PaymentIntent, ReserveOutcome};

/// How often an order is planned when stock moves between reading and holding.
const MAX_PLAN_ATTEMPTS: usize = 3;

/// Identifies the order being reserved.
pub struct OrderKeys<'a> {
    pub order_id: &'a str,
    pub customer_id: &'a str,
    pub channel: &'a str,
    pub currency: &'a str,
    /// The request's idempotency key, claimed with the order.
    pub claim: Option<&'a KeyClaim>,
}

/// The payment intent to record with the hold, and the draft invoice it
/// carries, for the allocations of a plan.
pub type IntentFor<'a> = dyn Fn(&[InvoiceAllocation]) -> (PaymentIntent, Invoice) + Sync + 'a;

/// A checked plan, not yet held.
pub struct Planned {
    plan: Plan,
    /// The selector that made it (the stable one, or a canary).
    served: Rule,
    holds: Vec<Hold>,
    candidates: Arc<Vec<Candidate>>,
    pub allocations: Vec<InvoiceAllocation>,
}

/// The stock held: the order exists PENDING with its payment intent.
pub struct Held {
    /// The run of the selector's shadow candidate, to make after the answer.
    pub shadow: Option<ShadowJob>,
    /// The draft invoice whose payment intent was recorded with the hold.
    pub invoice: Invoice,
}

/// Where the warehouse leg's per-call bookkeeping goes, and the selector
/// the order's customer was given (its A/B arm or canary share: picked
/// once per order, so that every plan of the order asks the same rule and
/// counts in the same arm).
pub struct Books<'a> {
    /// Canary calls (and their fallback to the stable version).
    pub canaries: Arc<Canaries>,
    /// The timed calls of the selector's A/B arm.
    pub experiments: Arc<ExperimentFigures>,
    /// `rules.warehouse.pick(customer)`, made once for the order.
    pub picked: Picked<'a>,
}

/// Plans the order's shipment from `stocked` (warehouses holding its skus,
/// with what each has available), the selector's call on the calling task
/// (the order's). Writes nothing.
pub async fn plan(
    rules: &Arc<RuleSet>,
    books: &Books<'_>,
    order: &Arc<OrderContext>,
    stocked: &[StockedWarehouse],
) -> Result<Planned, OrderError> {
    let requested = requested_quantities(order);
    let candidates: Arc<Vec<Candidate>> = Arc::new(stocked.iter().map(candidate).collect());
    let (plan, served, canary) = select(&rules.warehouse, order, &candidates, &requested, books).await?;
    let holds = validate_plan(&plan, &requested, &candidates).map_err(|why| OrderError::RuleFailed {
        slot: Slot::Warehouse,
        module: Box::new((**served.identity()).clone()),
        cause: FailureCause::Guest(format!("invalid plan: {why}")),
        error_id: None,
    })?;
    let variant = books.picked.variant.map(str::to_string);
    let allocations = describe(&plan, stocked, order, variant, canary);
    Ok(Planned { plan, served, holds, candidates, allocations })
}

/// Holds `planned` with the order's payment intent (phase 1: one store
/// command); when the stock moved since it was read, plans again on fresh
/// stock, up to [`MAX_PLAN_ATTEMPTS`] plans in all.
pub async fn hold(
    store: &Store,
    rules: &Arc<RuleSet>,
    books: &Books<'_>,
    order: &Arc<OrderContext>,
    keys: &OrderKeys<'_>,
    mut planned: Planned,
    intent_for: &IntentFor<'_>,
) -> Result<Held, OrderError> {
    let requested = requested_quantities(order);
    let skus: Vec<&str> = requested.keys().map(String::as_str).collect();
    for attempt in 1..=MAX_PLAN_ATTEMPTS {
        let (intent, invoice) = intent_for(&planned.allocations);
        let new_order = NewOrder {
            order_id: keys.order_id.to_string(),
            customer_id: keys.customer_id.to_string(),
            channel: keys.channel.to_string(),
            currency: keys.currency.to_string(),
            holds: std::mem::take(&mut planned.holds),
            claim: keys.claim.cloned(),
            intent: Some(intent),
            // What this plan's selector saw: the order's replay input.
            selector_input: Some(super::selector_input::encode(&planned.candidates)),
        };
        match store.reserve(new_order).await.map_err(|e| unavailable(Stage::Inventory, e))? {
            ReserveOutcome::Reserved => {
                let Planned { plan, served, candidates, .. } = planned;
                let shadow = rules.warehouse.shadow.as_ref().map(|candidate| ShadowJob::Warehouse {
                    active: served,
                    candidate: candidate.clone(),
                    order: order.clone(),
                    candidates,
                    active_plan: plan,
                });
                return Ok(Held { shadow, invoice });
            }
            ReserveOutcome::Shortfall { warehouse_id, sku } if attempt < MAX_PLAN_ATTEMPTS => {
                tracing::debug!(%warehouse_id, %sku, "stock moved while planning; planning again");
                let stocked = store.stocked_warehouses(&skus).await.map_err(|e| unavailable(Stage::Inventory, e))?;
                planned = plan(rules, books, order, &stocked).await?;
            }
            ReserveOutcome::Shortfall { .. } => break,
            ReserveOutcome::KeyTaken => return Err(OrderError::IdempotencyInProgress),
        }
    }
    // Still racing after several plans: report the current shortfall.
    let sku = skus.first().map(|s| s.to_string()).unwrap_or_default();
    let available =
        store.stock_of_sku(&sku).await.map(|levels| levels.iter().map(|l| l.available).max().unwrap_or(0)).unwrap_or(0);
    Err(OrderError::OutOfStock { requested: requested.get(&sku).copied().unwrap_or(0), sku, available })
}

/// Units ordered per sku (lines of one sku added up).
pub(crate) fn requested_quantities(order: &OrderContext) -> BTreeMap<String, u64> {
    let mut requested = BTreeMap::new();
    for line in &order.lines {
        *requested.entry(line.sku.clone()).or_insert(0) += u64::from(line.quantity);
    }
    requested
}

fn candidate(w: &StockedWarehouse) -> Candidate {
    Candidate {
        id: w.warehouse.id.clone(),
        name: w.warehouse.name.clone(),
        location: w.warehouse.location,
        stock: w
            .available
            .iter()
            .map(|(sku, available)| StockLevel { sku: sku.clone(), available: *available })
            .collect(),
    }
}

/// Asks the selector (a running canary first, for its share) for a plan;
/// returns it with the rule that made it (and the canary's name, if it was
/// the canary). A canary's plan that would not hold is the canary's
/// failure: the stable selector plans instead. The call of an A/B arm is
/// timed in its figures (every call: an order planned again is timed again).
async fn select(
    slot: &SlotRule,
    order: &OrderContext,
    candidates: &[Candidate],
    requested: &BTreeMap<String, u64>,
    books: &Books<'_>,
) -> Result<(Plan, Rule, Option<String>), OrderError> {
    let picked = &books.picked;
    let canary = picked.canary.map(|c| &c.rule);
    let started = std::time::Instant::now();
    let answered = books
        .canaries
        .call_async(Slot::Warehouse, slot, picked, &order.order_id, |rule| async move {
            let called = rule.select_warehouses_async(order, candidates).await?;
            if canary.is_some_and(|c| std::ptr::eq(c, rule))
                && let Err(why) = validate_plan(&called.value, requested, candidates)
            {
                let cause = FailureCause::Guest(format!("invalid plan: {why}"));
                return Err(RuleError::Failed { module: rule.identity().clone(), cause });
            }
            Ok::<Called<Plan>, RuleError>(called)
        })
        .await;
    if let Some(arm) = Arm::picked(Slot::Warehouse, picked) {
        books.experiments.rule_timed(&arm, started.elapsed().as_secs_f64() * 1e6);
    }
    // The warehouse slot always has a stable selector and no "off" arm
    // (both refused at load), so some rule always answers.
    let Some(Answered { answer, served, canary }) = answered else {
        return Err(OrderError::DependencyUnavailable {
            stage: Stage::Inventory,
            message: "the rule set has no warehouse selector".into(),
        });
    };
    let (served, canary) = (served.clone(), canary.map(str::to_string));
    match answer {
        Ok(called) => Ok((called.value, served, canary)),
        Err(RuleError::Refused { refusal: Refusal::CannotFulfil(shortfall), .. }) => Err(OrderError::OutOfStock {
            sku: shortfall.sku,
            requested: u64::from(shortfall.requested),
            available: u64::from(shortfall.available),
        }),
        Err(RuleError::Refused { module, refusal }) => Err(OrderError::RuleFailed {
            slot: Slot::Warehouse,
            module: Box::new((*module).clone()),
            cause: FailureCause::Guest(format!("unexpected refusal {refusal:?}")),
            error_id: None,
        }),
        // The order cannot ship without a plan: the warehouse slot always fails closed.
        Err(RuleError::Failed { module, cause }) => Err(OrderError::RuleFailed {
            slot: Slot::Warehouse,
            module: Box::new((*module).clone()),
            cause,
            error_id: None,
        }),
    }
}

/// The plan must allocate every requested unit exactly once, from offered
/// warehouses, within what each offered. Returns the holds to make. Also
/// what a replayed selector's plan is checked by (`release::replay`).
pub(crate) fn validate_plan(
    plan: &Plan,
    requested: &BTreeMap<String, u64>,
    candidates: &[Candidate],
) -> Result<Vec<Hold>, String> {
    let mut allocated: BTreeMap<&str, u64> = BTreeMap::new();
    let mut holds: BTreeMap<(String, String), u64> = BTreeMap::new();
    for allocation in &plan.allocations {
        let Some(candidate) = candidates.iter().find(|c| c.id == allocation.warehouse_id) else {
            return Err(format!("warehouse {} was not offered", allocation.warehouse_id));
        };
        for line in &allocation.lines {
            if line.quantity == 0 {
                return Err(format!("zero quantity of {} from {}", line.sku, candidate.id));
            }
            if !requested.contains_key(&line.sku) {
                return Err(format!("sku {} is not in the order", line.sku));
            }
            *allocated.entry(line.sku.as_str()).or_default() += u64::from(line.quantity);
            *holds.entry((candidate.id.clone(), line.sku.clone())).or_default() += u64::from(line.quantity);
        }
    }
    for ((warehouse, sku), quantity) in &holds {
        let offered = candidates
            .iter()
            .find(|c| &c.id == warehouse)
            .and_then(|c| c.stock.iter().find(|s| &s.sku == sku))
            .map_or(0, |s| u64::from(s.available));
        if *quantity > offered {
            return Err(format!("{quantity} of {sku} from {warehouse}, which has {offered} available"));
        }
    }
    for (sku, quantity) in requested {
        let got = allocated.get(sku.as_str()).copied().unwrap_or(0);
        if got != *quantity {
            return Err(format!("{got} of {sku} allocated, {quantity} ordered"));
        }
    }
    Ok(holds
        .into_iter()
        .map(|((warehouse_id, sku), quantity)| Hold { warehouse_id, sku, quantity: quantity as u32 })
        .collect())
}

fn describe(
    plan: &Plan,
    stocked: &[StockedWarehouse],
    order: &OrderContext,
    variant: Option<String>,
    canary: Option<String>,
) -> Vec<InvoiceAllocation> {
    plan.allocations
        .iter()
        .filter_map(|a| {
            let w = stocked.iter().find(|w| w.warehouse.id == a.warehouse_id)?;
            Some(InvoiceAllocation {
                warehouse_id: w.warehouse.id.clone(),
                warehouse_name: w.warehouse.name.clone(),
                distance_km: distance_km(order.ship_to, w.warehouse.location),
                lines: a.lines.clone(),
                variant: variant.clone(),
                canary: canary.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::geo::GeoPoint;
    use crate::domain::order::{Allocation, AllocationLine};

    fn candidates() -> Vec<Candidate> {
        vec![Candidate {
            id: "WH-1".into(),
            name: "One".into(),
            location: GeoPoint { lat: 0.0, lon: 0.0 },
            stock: vec![StockLevel { sku: "A".into(), available: 5 }],
        }]
    }

    fn plan(warehouse: &str, sku: &str, quantity: u32) -> Plan {
        Plan {
            allocations: vec![Allocation {
                warehouse_id: warehouse.into(),
                lines: vec![AllocationLine { sku: sku.into(), quantity }],
            }],
            reasons: vec![],
        }
    }

    #[test]
    fn a_plan_cannot_allocate_stock_that_is_not_there() {
        let requested = BTreeMap::from([("A".to_string(), 6)]);
        assert!(validate_plan(&plan("WH-1", "A", 6), &requested, &candidates()).unwrap_err().contains("5 available"));
    }

    #[test]
    fn a_plan_must_cover_exactly_the_order() {
        let requested = BTreeMap::from([("A".to_string(), 3)]);
        assert!(validate_plan(&plan("WH-1", "A", 2), &requested, &candidates()).is_err());
        assert!(validate_plan(&plan("WH-9", "A", 3), &requested, &candidates()).unwrap_err().contains("not offered"));
        assert!(validate_plan(&plan("WH-1", "B", 3), &requested, &candidates()).is_err());
        let holds = validate_plan(&plan("WH-1", "A", 3), &requested, &candidates()).unwrap();
        assert_eq!(holds, vec![Hold { warehouse_id: "WH-1".into(), sku: "A".into(), quantity: 3 }]);
    }
}
