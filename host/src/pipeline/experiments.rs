//! What A/B experiments did: figures per arm row — (experiment, variant,
//! module digest, config hash) — recorded off the order's answer path and
//! kept in the store (`store::experiments`). Shadow runs are recorded in
//! the store too (`store::shadows`).
//!
//! Each slot counts what its rule decides: a discount arm the discounts it
//! gave ([`ExperimentFigures::rule_call`]); a warehouse arm its calls
//! ([`ExperimentFigures::rule_timed`]) and where each order it planned
//! shipped from ([`ExperimentFigures::shipment`]); a fraud arm its verdicts
//! ([`ExperimentFigures::fraud_check`], in the fraud worker, after the
//! answer). How the orders ended ([`ExperimentFigures::settled`]) counts
//! for every arm that served them.
//!
//! The order path only adds to an in-memory batch of deltas (a mutex and a
//! map: it never waits for the store and never fails). A worker
//! ([`ExperimentFigures::run_flusher`]) hands the batch to the store's
//! writer every [`FLUSH_EVERY`], where each delta is *added* to its row;
//! `GET /v1/admin/experiments` flushes before it reads, so it shows every
//! order answered before it. A batch the store refuses is kept and added
//! again on the next flush. What a crash of the process (not a clean stop,
//! which flushes) loses is the last unflushed batch: at most
//! [`FLUSH_EVERY`] of figures.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::invoice::InvoiceAllocation;
use crate::domain::status::Slot;
use crate::rules::types::FraudAction;
use crate::rules::{Picked, Rule};
use crate::store::experiments::{ArmFigures, ArmKey, OFF_ARM};
use crate::store::{Store, StoreError};

/// How often the pending figures go to the store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// The arm an order was served by, as its figures row names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub key: ArmKey,
    pub slot: Slot,
    pub module: String,
    pub version: String,
}

impl Arm {
    /// The arm of `rule` (`None`: an "off" arm) in `experiment`'s `variant`.
    pub fn of(slot: Slot, experiment: &str, variant: &str, rule: Option<&Rule>) -> Arm {
        let (module_digest, config_hash, module, version) = match rule {
            Some(rule) => {
                let id = rule.identity();
                (id.digest.clone(), rule.config_hash().to_string(), id.file.clone(), id.version.clone())
            }
            None => (OFF_ARM.to_string(), OFF_ARM.to_string(), OFF_ARM.to_string(), String::new()),
        };
        Arm {
            key: ArmKey { experiment: experiment.into(), variant: variant.into(), module_digest, config_hash },
            slot,
            module,
            version,
        }
    }

    /// The arm `picked` came from, if the customer was assigned one.
    pub fn picked(slot: Slot, picked: &Picked<'_>) -> Option<Arm> {
        match (picked.experiment, picked.variant) {
            (Some(experiment), Some(variant)) => Some(Arm::of(slot, experiment, variant, picked.rule)),
            _ => None,
        }
    }

    fn delta(&self) -> ArmFigures {
        ArmFigures {
            slot: self.slot.to_string(),
            module: self.module.clone(),
            version: self.version.clone(),
            ..ArmFigures::default()
        }
    }
}

/// What one rule call of an arm did for one order.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArmCall {
    /// The rule fired (a discount rule took a non-zero amount off).
    pub fired: bool,
    pub discount_cents: u64,
    pub failed: bool,
    /// The call's time; `None` for an "off" arm (nothing ran).
    pub latency_us: Option<f64>,
}

/// How an order an arm served ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Confirmed { total_cents: u64 },
    PaymentFailed,
}

/// Where a warehouse arm's order shipped from, once its plan was held or
/// refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shipment {
    /// The plan was held (the order exists): from how many warehouses, and
    /// how far (km from the ship-to point, weighted by the units each ships).
    Shipped { warehouses: usize, distance_km: f64 },
    /// Refused OUT_OF_STOCK: the selector found no plan, or the stock was
    /// gone whenever the order tried to hold it.
    StockOut,
    /// The selector failed, or its plan was invalid (the order ends RULE_FAILED).
    RuleFailed,
    /// The order ended before its plan was held for another reason (the
    /// discount leg refused it, a timeout, the store): only an order served.
    NotShipped,
}

impl Shipment {
    /// The shipment of an order allocated as `allocations`.
    pub fn of(allocations: &[InvoiceAllocation]) -> Shipment {
        let units = |a: &InvoiceAllocation| a.lines.iter().map(|l| f64::from(l.quantity)).sum::<f64>();
        let total: f64 = allocations.iter().map(units).sum();
        let weighted: f64 = allocations.iter().map(|a| a.distance_km * units(a)).sum();
        let distance_km = if total > 0.0 { weighted / total } else { 0.0 };
        Shipment::Shipped { warehouses: allocations.len(), distance_km }
    }
}

/// What one fraud check of an arm said about one order.
#[derive(Debug, Clone, Copy, Default)]
pub struct FraudCall {
    /// The check's own verdict (not the order's combined review); `None`
    /// when it gave none (an "off" arm, a refusal, a failure).
    pub action: Option<FraudAction>,
    pub failed: bool,
    /// The call's time; `None` for an "off" arm (nothing ran).
    pub latency_us: Option<f64>,
}

impl Settled {
    /// Counts this outcome of one order in `figures`.
    fn count(self, figures: &mut ArmFigures) {
        match self {
            Settled::Confirmed { total_cents } => {
                figures.confirmed_orders = 1;
                figures.revenue_cents = total_cents;
                figures.revenue_squares = total_cents as f64 * total_cents as f64;
            }
            Settled::PaymentFailed => figures.payment_failures = 1,
        }
    }
}

/// Figures not yet in the store, and the lock that serialises flushes.
#[derive(Default)]
pub struct ExperimentFigures {
    pending: Mutex<BTreeMap<ArmKey, ArmFigures>>,
    /// Held while a batch is on its way to the store, so that a reader
    /// that flushes first sees every earlier batch committed.
    flushing: tokio::sync::Mutex<()>,
}

impl ExperimentFigures {
    fn add(&self, arm: &Arm, fill: impl FnOnce(&mut ArmFigures)) {
        let mut delta = arm.delta();
        fill(&mut delta);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(&arm.key) {
            Some(figures) => figures.add(&delta),
            None => {
                pending.insert(arm.key.clone(), delta);
            }
        }
    }

    /// Records one order served by `arm` and what its rule call did.
    pub fn rule_call(&self, arm: &Arm, call: ArmCall) {
        self.add(arm, |f| {
            f.orders = 1;
            f.fired_orders = u64::from(call.fired);
            f.discount_cents = call.discount_cents;
            f.rule_errors = u64::from(call.failed);
            if let Some(latency_us) = call.latency_us {
                f.time_call(latency_us);
            }
        });
    }

    /// Records one timed rule call of `arm`, apart from the order it served
    /// (a warehouse selector plans again when stock moved meanwhile, and
    /// [`ExperimentFigures::shipment`] counts the order once).
    pub fn rule_timed(&self, arm: &Arm, latency_us: f64) {
        self.add(arm, |f| f.time_call(latency_us));
    }

    /// Records one order a warehouse arm served, and where it shipped from.
    pub fn shipment(&self, arm: &Arm, shipment: Shipment) {
        self.add(arm, |f| {
            f.orders = 1;
            match shipment {
                Shipment::Shipped { warehouses, distance_km } => {
                    f.shipped_orders = 1;
                    f.split_orders = u64::from(warehouses > 1);
                    f.distance_km_sum = distance_km;
                    f.distance_km_squares = distance_km * distance_km;
                }
                Shipment::StockOut => f.stock_outs = 1,
                Shipment::RuleFailed => f.rule_errors = 1,
                Shipment::NotShipped => {}
            }
        });
    }

    /// Records one fraud check of `arm` on an order that ended as `outcome`
    /// (`None`: its payment outcome is not known yet). A check that failed
    /// in a fail-closed slot puts the order up for review: `action` says so.
    pub fn fraud_check(&self, arm: &Arm, call: FraudCall, outcome: Option<Settled>) {
        self.add(arm, |f| {
            f.orders = 1;
            f.escalations = u64::from(call.action == Some(FraudAction::Escalate));
            f.reviews = u64::from(call.action == Some(FraudAction::Review));
            f.rule_errors = u64::from(call.failed);
            if let Some(latency_us) = call.latency_us {
                f.time_call(latency_us);
            }
            if let Some(outcome) = outcome {
                outcome.count(f);
            }
        });
    }

    /// Records how an order the `arms` served ended.
    pub fn settled(&self, arms: &[Arm], outcome: Settled) {
        for arm in arms {
            self.add(arm, |f| outcome.count(f));
        }
    }

    /// Adds the pending figures to the store. On failure they stay pending
    /// (added to whatever came meanwhile) for the next flush.
    pub async fn flush(&self, store: &Store) -> Result<(), StoreError> {
        let _flushing = self.flushing.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let deltas: Vec<(ArmKey, ArmFigures)> = batch.into_iter().collect();
        match store.add_arm_figures(deltas.clone()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for (key, figures) in deltas {
                    pending.entry(key).or_default().add(&figures);
                }
                Err(e)
            }
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until `shutdown`, then once more.
    pub async fn run_flusher(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                () = tokio::time::sleep(FLUSH_EVERY) => false,
            };
            if let Err(e) = self.flush(&store).await {
                tracing::warn!(error = %e, "could not record experiment figures; they are kept for the next try");
            }
            if stopping {
                return;
            }
        }
    }
}
