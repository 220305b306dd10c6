//! What A/B experiments did: figures per arm row — (experiment, variant,
//! module digest, config hash) — recorded off the order's answer path and
//! kept in the store (`store::experiments`). Shadow runs are recorded in
//! the store too (`store::shadows`).
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

use crate::domain::status::Slot;
use crate::rules::Rule;
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

    /// Records how an order the `arms` served ended.
    pub fn settled(&self, arms: &[Arm], outcome: Settled) {
        for arm in arms {
            self.add(arm, |f| match outcome {
                Settled::Confirmed { total_cents } => {
                    f.confirmed_orders = 1;
                    f.revenue_cents = total_cents;
                    f.revenue_squares = total_cents as f64 * total_cents as f64;
                }
                Settled::PaymentFailed => f.payment_failures = 1,
            });
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
