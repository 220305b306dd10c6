//! Watched rollouts, the release side: promotion of a canary by an
//! operator, and the hooks every reload runs through (stored canary states
//! restored, the replay gate of [`super::gate`], the history of reloads and
//! refusals). The canary calls themselves, and their automatic rollback,
//! are on the order's path (`pipeline::canary`). States and events are
//! stored (`store::rollouts`).

use std::sync::Arc;

use crate::clock::now_ms;
use crate::domain::status::{CanaryState, RolloutEventKind};
use crate::metrics::Metrics;
use crate::pipeline::canary::canary_record;
use crate::rules::RuleSet;
use crate::rules::canary::{NO_STABLE_RULE, stable_version};
use crate::rules::reload::{HookFuture, ReloadError, ReloadHooks};
use crate::store::rollouts::RolloutEvent;
use crate::store::{Store, StoreError};

/// Events `GET /v1/admin/rollouts` lists.
pub const RECENT_EVENTS: usize = 100;

/// The rollouts of one engine.
pub struct Rollouts {
    store: Store,
    metrics: Arc<Metrics>,
    /// Stored orders a reload's replay gate replays.
    replay_orders: usize,
}

impl Rollouts {
    pub fn new(store: Store, metrics: Arc<Metrics>, replay_orders: usize) -> Arc<Rollouts> {
        Arc::new(Rollouts { store, metrics, replay_orders })
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
        tracing::info!(canary = %canary.name, %slot, module = %canary.rule.identity(), "canary promoted");
        let record = canary_record(slot, rule, canary, CanaryState::Promoted, &reason, at_ms);
        let event = RolloutEvent { at_ms, kind: RolloutEventKind::Promote, entry: canary.name.clone(), reason };
        self.store.record_rollout_state(record, event).await?;
        Ok(Some(Ok(())))
    }

    /// The recent events, newest first.
    pub async fn events(&self) -> Result<Vec<RolloutEvent>, StoreError> {
        self.store.rollout_events(RECENT_EVENTS).await
    }
}

/// What changed from `previous` to `next`, for the reload event: the
/// entries whose module, configuration or budgets differ.
fn changes(previous: &RuleSet, next: &RuleSet) -> String {
    let describe = |set: &RuleSet| -> Vec<String> {
        set.all()
            .map(|(slot, r)| {
                let mut text = match &r.module {
                    Some(module) => {
                        let id = module.identity();
                        format!("{slot} {}@{} ({})", id.name, id.version, id.file)
                    }
                    None => format!("{slot} {NO_STABLE_RULE} (a new rule)"),
                };
                if let Some(c) = &r.canary {
                    let cid = c.rule.identity();
                    text.push_str(&format!(" canary {} {}@{} {} %", c.name, cid.name, cid.version, c.share_percent));
                }
                if let Some(s) = &r.shadow {
                    text.push_str(&format!(" shadow {}@{}", s.identity().name, s.identity().version));
                }
                let (_, hash) = stable_version(r.module.as_ref());
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
                    && stable_version(r.module.as_ref()) == (c.rule.identity().digest.as_str(), c.rule.config_hash())
            })
        })
        .map(|(_, _, c)| RolloutEvent {
            at_ms: now_ms(),
            kind: RolloutEventKind::Promote,
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
                && (stored.stable_digest.as_str(), stored.stable_config_hash.as_str())
                    == stable_version(rule.module.as_ref());
            let state = stored.state;
            if same && state != CanaryState::Running {
                tracing::info!(canary = %canary.name, %slot, state = state.as_str(), "canary state restored from the store");
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
                        kind: RolloutEventKind::Reload,
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
                        kind: RolloutEventKind::Refused,
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
