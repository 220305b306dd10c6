//! Canaries on the order's path: a call goes to a running canary first for
//! the customers in its share, and a failed canary call is answered by the
//! stable version (a new rule's canary has none: the order goes without the
//! rule), so a canary never fails an order. Each failed canary call is
//! listed with its order in the engine's [`RuleErrors`], and logged with
//! it. A canary that crosses
//! a limit is rolled back at once in this process, and the rollback is
//! stored off the order's path ([`run_recorder`]), so that it survives
//! restarts and reloads until the manifest names a new version. Promotion,
//! and the hooks every reload runs through, are the release tooling's
//! (`release::rollouts`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rule_errors::{Handling, RuleErrors};
use super::rule_io::outcome_of;
use crate::clock::now_ms;
use crate::domain::status::{RolloutEventKind, Slot};
use crate::metrics::Metrics;
use crate::rules::canary::{Canary, CanarySample, CanaryState, stable_version};
use crate::rules::{Called, FailureCause, Picked, Rule, RuleError, SlotRule};
use crate::store::Store;
use crate::store::rollouts::{RolloutEvent, RolloutRecord};

/// A canary state to store, with the event that moved it.
struct Notice {
    record: RolloutRecord,
    event: RolloutEvent,
}

/// The canary calls of one engine.
pub struct Canaries {
    metrics: Arc<Metrics>,
    notices: mpsc::UnboundedSender<Notice>,
    /// The engine's list of recent rule failures, where each failed canary
    /// call goes with its order.
    rule_errors: Arc<RuleErrors>,
}

/// What answered one order's call of a slot rule.
pub struct Answered<'a, T> {
    pub answer: Result<Called<T>, RuleError>,
    /// The rule that gave the answer: the canary, or the stable version.
    pub served: &'a Rule,
    /// The canary's name when the canary gave the answer.
    pub canary: Option<&'a str>,
}

/// The receiving end of the rollbacks to store ([`run_recorder`]).
pub struct Recorder(mpsc::UnboundedReceiver<Notice>);

/// The canary's stored form in `state`.
pub(crate) fn canary_record(
    slot: Slot,
    rule: &SlotRule,
    canary: &Canary,
    state: CanaryState,
    reason: &str,
    at_ms: i64,
) -> RolloutRecord {
    let (calls, errors, _, _) = canary.control.totals();
    let (stable_digest, stable_config_hash) = stable_version(rule.module.as_ref());
    RolloutRecord {
        entry: canary.name.clone(),
        slot,
        stable_digest: stable_digest.to_string(),
        stable_config_hash: stable_config_hash.to_string(),
        canary_digest: canary.rule.identity().digest.clone(),
        canary_config_hash: canary.rule.config_hash().to_string(),
        state,
        reason: Some(reason.to_string()),
        calls,
        errors,
        at_ms,
    }
}

impl Canaries {
    /// The canaries of an engine whose rule failures go to `rule_errors`.
    pub fn new(metrics: Arc<Metrics>, rule_errors: Arc<RuleErrors>) -> (Arc<Canaries>, Recorder) {
        let (notices, rx) = mpsc::unbounded_channel();
        (Arc::new(Canaries { metrics, notices, rule_errors }), Recorder(rx))
    }

    /// The engine's list of recent rule failures.
    pub fn rule_errors(&self) -> &Arc<RuleErrors> {
        &self.rule_errors
    }

    /// A canary crossed a limit on this call: count it, log it, and have
    /// the rollback stored (off the order's path).
    fn rolled_back(&self, slot: Slot, rule: &SlotRule, canary: &Canary, reason: String) {
        let at_ms = now_ms();
        self.metrics.canary_rollback(&canary.name);
        tracing::warn!(canary = %canary.name, %slot, module = %canary.rule.identity(), %reason,
            "canary rolled back; the stable version serves everyone (none: a new rule is left out)");
        let record = canary_record(slot, rule, canary, CanaryState::RolledBack, &reason, at_ms);
        let event = RolloutEvent { at_ms, kind: RolloutEventKind::Rollback, entry: canary.name.clone(), reason };
        let _ = self.notices.send(Notice { record, event });
    }

    /// Calls what `picked` names for the order `order_id` through `call`:
    /// the canary first when the customer is in a running canary's share,
    /// the stable version (`picked.rule`) otherwise and when the canary
    /// fails (trap, budget, error; listed in the rule errors with the order).
    /// Counts each call in the metrics. `None` when no rule answers: the
    /// customer's arm is off, or a new rule's canary did not serve the order.
    pub fn call<'a, T>(
        &self,
        slot: Slot,
        slot_rule: &'a SlotRule,
        picked: &Picked<'a>,
        order_id: &str,
        call: impl Fn(&Rule) -> Result<Called<T>, RuleError>,
    ) -> Option<Answered<'a, T>> {
        if let Some(canary) = picked.canary {
            let started = Instant::now();
            let answer = call(&canary.rule);
            if let Some(answered) = self.canary_answered(slot, slot_rule, canary, order_id, answer, started) {
                return Some(answered);
            }
        }
        let rule = picked.rule?;
        let started = Instant::now();
        let answer = call(rule);
        Some(self.stable_answered(slot, rule, picked, answer, started))
    }

    /// [`Canaries::call`] with an async `call`: the order path's, which
    /// runs its rule calls on its own task. (`call` takes rules of the one
    /// lifetime `'a`, not any: a future of a closure over any lifetime is
    /// not provably `Send`, and the order's task must be.)
    pub async fn call_async<'a, T, F>(
        &self,
        slot: Slot,
        slot_rule: &'a SlotRule,
        picked: &Picked<'a>,
        order_id: &str,
        call: impl Fn(&'a Rule) -> F,
    ) -> Option<Answered<'a, T>>
    where
        F: Future<Output = Result<Called<T>, RuleError>>,
    {
        if let Some(canary) = picked.canary {
            let started = Instant::now();
            let answer = call(&canary.rule).await;
            if let Some(answered) = self.canary_answered(slot, slot_rule, canary, order_id, answer, started) {
                return Some(answered);
            }
        }
        let rule = picked.rule?;
        let started = Instant::now();
        let answer = call(rule).await;
        Some(self.stable_answered(slot, rule, picked, answer, started))
    }

    /// Counts the canary's call (started at `started`) and rolls the canary
    /// back if it crossed a limit; its answer, unless it failed (then the
    /// stable version answers).
    fn canary_answered<'a, T>(
        &self,
        slot: Slot,
        slot_rule: &'a SlotRule,
        canary: &'a Canary,
        order_id: &str,
        answer: Result<Called<T>, RuleError>,
        started: Instant,
    ) -> Option<Answered<'a, T>> {
        let seconds = started.elapsed().as_secs_f64();
        let outcome = outcome_of(&answer);
        self.metrics.rule_call(slot, canary.rule.identity(), Some("canary"), outcome, seconds);
        self.metrics.canary_call(&canary.name, outcome);
        let (failed, budget_use) = match &answer {
            Ok(called) => (false, canary.rule.budget_use(&called.usage)),
            Err(RuleError::Refused { .. }) => (false, 0.0),
            Err(RuleError::Failed { cause, .. }) => (true, if budget_cause(cause) { 1.0 } else { 0.0 }),
        };
        let sample = CanarySample { at_ms: now_ms(), failed, budget_use, latency_ms: seconds * 1e3 };
        if let Some(reason) = canary.control.record(&canary.limits, sample) {
            self.rolled_back(slot, slot_rule, canary, reason);
        }
        match &answer {
            Err(RuleError::Failed { module, cause }) => {
                let (handling, canary_name) = (Handling::CanaryFallback, Some(canary.name.as_str()));
                self.rule_errors.record(slot, module, cause, handling, Some(order_id), canary_name);
                None
            }
            _ => Some(Answered { answer, served: &canary.rule, canary: Some(&canary.name) }),
        }
    }

    /// Counts the stable version's call (started at `started`).
    fn stable_answered<'a, T>(
        &self,
        slot: Slot,
        rule: &'a Rule,
        picked: &Picked<'a>,
        answer: Result<Called<T>, RuleError>,
        started: Instant,
    ) -> Answered<'a, T> {
        let outcome = outcome_of(&answer);
        self.metrics.rule_call(slot, rule.identity(), picked.variant, outcome, started.elapsed().as_secs_f64());
        Answered { answer, served: rule, canary: None }
    }
}

fn budget_cause(cause: &FailureCause) -> bool {
    matches!(cause.kind(), "fuel_budget" | "memory_budget" | "time_budget" | "output_budget")
}

/// Stores each rollback as it happens, until `shutdown` (then what is queued).
pub async fn run_recorder(store: Store, recorder: Recorder, shutdown: CancellationToken) {
    let Recorder(mut rx) = recorder;
    loop {
        let notice = tokio::select! {
            notice = rx.recv() => notice,
            _ = shutdown.cancelled() => None,
        };
        match notice {
            Some(notice) => store_notice(&store, notice).await,
            None => break,
        }
    }
    rx.close();
    while let Ok(notice) = rx.try_recv() {
        store_notice(&store, notice).await;
    }
}

/// The rollback is in force in this process already; storing it is what
/// makes it last. A store briefly unavailable is retried a few times.
async fn store_notice(store: &Store, Notice { record, event }: Notice) {
    let mut attempts: u64 = 0;
    while let Err(e) = store.record_rollout_state(record.clone(), event.clone()).await {
        attempts += 1;
        tracing::error!(canary = %record.entry, error = %e, attempts, "could not store a canary rollback");
        if attempts >= 5 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * attempts)).await;
    }
}
