//! Watched rollouts, the pipeline's side: calls that go to a canary first
//! (a failed canary call is answered by the stable version, so a canary
//! never fails an order), the automatic rollback when a canary crosses a
//! limit, promotion, and the hooks every reload runs through (stored canary
//! states, the replay gate of [`super::gate`], the history of reloads and
//! refusals). States and events are stored (`store::rollouts`): a rollback
//! survives restarts and reloads until the manifest names a new version.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::rules::canary::{Canary, CanarySample, CanaryState};
use crate::rules::reload::{HookFuture, ReloadError, ReloadHooks};
use crate::rules::{Called, FailureCause, Picked, Rule, RuleError, RuleSet, SlotRule};
use crate::store::rollouts::{RolloutEvent, RolloutRecord};
use crate::store::{Store, StoreError, now_ms};

/// Events `GET /v1/admin/rollouts` lists.
pub const RECENT_EVENTS: usize = 100;

/// A canary state to store, with the event that moved it.
struct Notice {
    record: RolloutRecord,
    event: RolloutEvent,
}

/// The rollouts of one engine.
pub struct Rollouts {
    store: Store,
    metrics: Arc<Metrics>,
    /// Stored orders a reload's replay gate replays.
    replay_orders: usize,
    notices: mpsc::UnboundedSender<Notice>,
}

/// The receiving end of the rollbacks to store ([`run_recorder`]).
pub struct Recorder(mpsc::UnboundedReceiver<Notice>);

impl Rollouts {
    pub fn new(store: Store, metrics: Arc<Metrics>, replay_orders: usize) -> (Arc<Rollouts>, Recorder) {
        let (notices, rx) = mpsc::unbounded_channel();
        (Arc::new(Rollouts { store, metrics, replay_orders, notices }), Recorder(rx))
    }

    /// The canary's stored form in `state`.
    fn record(
        slot: &str,
        rule: &SlotRule,
        canary: &Canary,
        state: CanaryState,
        reason: &str,
        at_ms: i64,
    ) -> RolloutRecord {
        let (calls, errors, _, _) = canary.control.totals();
        RolloutRecord {
            entry: canary.name.clone(),
            slot: slot.to_string(),
            stable_digest: rule.module.identity().digest.clone(),
            stable_config_hash: rule.module.config_hash().to_string(),
            canary_digest: canary.rule.identity().digest.clone(),
            canary_config_hash: canary.rule.config_hash().to_string(),
            state: state.as_str().to_string(),
            reason: Some(reason.to_string()),
            calls,
            errors,
            at_ms,
        }
    }

    /// A canary crossed a limit on this call: count it, log it, and have
    /// the rollback stored (off the order's path).
    fn rolled_back(&self, slot: &str, rule: &SlotRule, canary: &Canary, reason: String) {
        let at_ms = now_ms();
        self.metrics.canary_rollback(&canary.name);
        tracing::warn!(canary = %canary.name, slot, module = %canary.rule.identity(), %reason,
            "canary rolled back; the stable version serves everyone");
        let record = Self::record(slot, rule, canary, CanaryState::RolledBack, &reason, at_ms);
        let event = RolloutEvent { at_ms, kind: "rollback".into(), entry: canary.name.clone(), reason };
        let _ = self.notices.send(Notice { record, event });
    }

    /// Calls `rule` (what `picked` names for one order, unless its arm is
    /// off) through `call`: the canary first when the customer is in a
    /// running canary's share, `rule` when the canary fails (trap, budget,
    /// error). Counts each call in the metrics; returns the answer and the
    /// rule that gave it.
    pub fn call<'a, T>(
        &self,
        slot: &'static str,
        slot_rule: &'a SlotRule,
        picked: &Picked<'a>,
        rule: &'a Rule,
        call: impl Fn(&Rule) -> Result<Called<T>, RuleError>,
    ) -> (Result<Called<T>, RuleError>, &'a Rule) {
        if let Some(canary) = picked.canary {
            let started = Instant::now();
            let answer = call(&canary.rule);
            let seconds = started.elapsed().as_secs_f64();
            let outcome = super::discount::outcome_of(&answer);
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
            if !failed {
                return (answer, &canary.rule);
            }
            if let Err(RuleError::Failed { module, cause }) = &answer {
                tracing::warn!(canary = %canary.name, module = %module, %cause,
                    "canary call failed; the stable version answers this order");
            }
        }
        let started = Instant::now();
        let answer = call(rule);
        let outcome = super::discount::outcome_of(&answer);
        self.metrics.rule_call(slot, rule.identity(), picked.variant, outcome, started.elapsed().as_secs_f64());
        (answer, rule)
    }

    /// Makes the canary `name` of the serving set its stable version, and
    /// stores it. `Ok(false)`: no canary of that name; an error when it is
    /// not running.
    pub async fn promote(&self, rules: &RuleSet, name: &str) -> Result<Option<Result<(), CanaryState>>, StoreError> {
        let Some((slot, rule, canary)) = rules.canaries().find(|(_, _, c)| c.name == name) else {
            return Ok(None);
        };
        let at_ms = now_ms();
        let reason = format!("promoted by an operator: {} serves everyone", canary.rule.identity());
        if !canary.control.leave_running(CanaryState::Promoted, &reason, at_ms) {
            return Ok(Some(Err(canary.control.state())));
        }
        tracing::info!(canary = %canary.name, slot, module = %canary.rule.identity(), "canary promoted");
        let record = Self::record(slot, rule, canary, CanaryState::Promoted, &reason, at_ms);
        let event = RolloutEvent { at_ms, kind: "promote".into(), entry: canary.name.clone(), reason };
        self.store.record_rollout_state(record, event).await?;
        Ok(Some(Ok(())))
    }

    /// The recent events, newest first.
    pub async fn events(&self) -> Result<Vec<RolloutEvent>, StoreError> {
        self.store.rollout_events(RECENT_EVENTS).await
    }
}

fn budget_cause(cause: &FailureCause) -> bool {
    matches!(cause.kind(), "fuel_budget" | "memory_budget" | "time_budget" | "output_budget")
}

/// What changed from `previous` to `next`, for the reload event: the
/// entries whose module, configuration or budgets differ.
fn changes(previous: &RuleSet, next: &RuleSet) -> String {
    let describe = |set: &RuleSet| -> Vec<String> {
        set.all()
            .map(|(slot, r)| {
                let id = r.module.identity();
                let mut text = format!("{slot} {}@{} ({})", id.name, id.version, id.file);
                if let Some(c) = &r.canary {
                    let cid = c.rule.identity();
                    text.push_str(&format!(" canary {} {}@{} {} %", c.name, cid.name, cid.version, c.share_percent));
                }
                if let Some(s) = &r.shadow {
                    text.push_str(&format!(" shadow {}@{}", s.identity().name, s.identity().version));
                }
                let hash = r.module.config_hash();
                format!("{text} config {}", &hash[..hash.len().min(19)])
            })
            .collect()
    };
    let before = describe(previous);
    let changed: Vec<String> = describe(next).into_iter().filter(|d| !before.contains(d)).collect();
    if changed.is_empty() { "no rule changed".into() } else { changed.join("; ") }
}

/// Canaries of `previous` that `next` serves as a stable version and no
/// longer holds as a canary: promoted by a manifest edit.
fn promoted_by_manifest(previous: &RuleSet, next: &RuleSet) -> Vec<RolloutEvent> {
    previous
        .canaries()
        .filter(|(_, _, c)| next.canaries().all(|(_, _, n)| n.name != c.name))
        .filter(|(slot, _, c)| {
            next.all().any(|(s, r)| {
                s == *slot
                    && r.module.identity().digest == c.rule.identity().digest
                    && r.module.config_hash() == c.rule.config_hash()
            })
        })
        .map(|(_, _, c)| RolloutEvent {
            at_ms: now_ms(),
            kind: "promote".into(),
            entry: c.name.clone(),
            reason: format!("the manifest names {} as the stable version", c.rule.identity()),
        })
        .collect()
}

impl ReloadHooks for Rollouts {
    fn restore(&self, set: &RuleSet) {
        for (slot, rule, canary) in set.canaries() {
            if canary.control.state() != CanaryState::Running {
                continue;
            }
            let stored = match self.store.rollout_state(&canary.name) {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(canary = %canary.name, error = %e, "cannot read the canary's stored state");
                    continue;
                }
            };
            let Some(stored) = stored else { continue };
            // A stored state applies to the same rollout only: a new
            // version (digest or configuration) starts afresh.
            let same = stored.canary_digest == canary.rule.identity().digest
                && stored.canary_config_hash == canary.rule.config_hash()
                && stored.stable_digest == rule.module.identity().digest
                && stored.stable_config_hash == rule.module.config_hash();
            let state = CanaryState::parse(&stored.state).unwrap_or(CanaryState::Running);
            if same && state != CanaryState::Running {
                tracing::info!(canary = %canary.name, slot, state = state.as_str(), "canary state restored from the store");
                canary.control.restore(state, stored.calls, stored.errors, stored.reason, stored.at_ms);
            }
        }
    }

    fn gate(&self, previous: &RuleSet, next: &RuleSet) -> Result<(), ReloadError> {
        super::gate::check(&self.store, self.replay_orders, previous, next)
    }

    fn outcome<'a>(&'a self, previous: &'a RuleSet, outcome: Result<&'a RuleSet, &'a ReloadError>) -> HookFuture<'a> {
        Box::pin(async move {
            let events = match outcome {
                Ok(next) => {
                    self.metrics.reload("ok");
                    let mut events = vec![RolloutEvent {
                        at_ms: now_ms(),
                        kind: "reload".into(),
                        entry: "manifest.toml".into(),
                        reason: changes(previous, next),
                    }];
                    events.extend(promoted_by_manifest(previous, next));
                    events
                }
                Err(error) => {
                    self.metrics.reload("refused");
                    vec![RolloutEvent {
                        at_ms: now_ms(),
                        kind: "refused".into(),
                        entry: error.entry.clone().unwrap_or_else(|| error.file.clone()),
                        reason: error.error.clone(),
                    }]
                }
            };
            for event in events {
                if let Err(e) = self.store.record_rollout_event(event).await {
                    tracing::warn!(error = %e, "could not record the reload event");
                }
            }
        })
    }
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
