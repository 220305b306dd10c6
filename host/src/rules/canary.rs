//! A canary: a new version of a rule serving a share of customers beside
//! the stable version, watched over a sliding window and rolled back by the
//! host itself when a limit is crossed.
//!
//! The share is sticky: a customer is in it when the keyed hash of the A/B
//! assignment ([`super::ruleset::bucket`]) of `canary:<name>` and the customer
//! id falls under `share_percent` of 100. What the window saw, and whether the
//! canary runs, is a [`CanaryControl`] shared by every rule set that holds the
//! same rollout (same name, same stable and canary digests and configs), so a
//! reload neither forgets a window nor resurrects a rolled-back canary. The
//! state is also stored (`store::rollouts`) by the pipeline, so that it
//! survives restarts; [`CanaryControl::restore`] applies it at load.
//!
//! The canary of a new rule has no stable version (`module = "none"`): a
//! customer outside the share, or whose canary call failed, goes without
//! the rule, and so does everyone once it is rolled back. Where a rollout
//! names its stable version (stored states, comparisons) that is
//! [`NO_STABLE_RULE`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::Rule;
use super::manifest::CanaryEntry;

/// The digest and configuration hash that stand for "no stable version"
/// (the canary of a new rule) wherever a rollout names its stable side.
pub const NO_STABLE_RULE: &str = "none";

/// The digest and configuration hash of a canary's stable side: its
/// module's, or [`NO_STABLE_RULE`] for both when there is none.
pub fn stable_version(stable: Option<&Rule>) -> (&str, &str) {
    match stable {
        Some(rule) => (&rule.identity().digest, rule.config_hash()),
        None => (NO_STABLE_RULE, NO_STABLE_RULE),
    }
}

/// Samples a window keeps at most, whatever its length: the oldest go first.
const MAX_SAMPLES: usize = 100_000;

pub use crate::domain::status::CanaryState;

/// A state as the lock-free control keeps it.
fn code(state: CanaryState) -> u8 {
    match state {
        CanaryState::Running => 0,
        CanaryState::RolledBack => 1,
        CanaryState::Promoted => 2,
    }
}

/// The state a [`code`] stands for (the control stores nothing else).
fn from_code(code: u8) -> CanaryState {
    match code {
        1 => CanaryState::RolledBack,
        2 => CanaryState::Promoted,
        _ => CanaryState::Running,
    }
}

/// The limits of a canary, from its manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CanaryLimits {
    pub window_secs: u64,
    pub min_calls: u64,
    pub max_error_rate: Option<f64>,
    pub max_budget_use: Option<f64>,
    pub max_p99_ms: Option<f64>,
}

impl CanaryLimits {
    /// The limits of `entry`, or why they are unusable.
    pub fn of(entry: &CanaryEntry) -> Result<CanaryLimits, String> {
        if !(1..=100).contains(&entry.share_percent) {
            return Err(format!("share_percent must be 1..=100, got {}", entry.share_percent));
        }
        if entry.window_secs == 0 || entry.window_secs > 86_400 {
            return Err(format!("window_secs must be 1..=86400, got {}", entry.window_secs));
        }
        if entry.min_calls == 0 {
            return Err("min_calls must be positive".into());
        }
        for (name, value) in [("max_error_rate", entry.max_error_rate), ("max_budget_use", entry.max_budget_use)] {
            if value.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(format!("{name} must be 0..=1"));
            }
        }
        if entry.max_p99_ms.is_some_and(|v| !v.is_finite() || v <= 0.0) {
            return Err("max_p99_ms must be positive".into());
        }
        Ok(CanaryLimits {
            window_secs: entry.window_secs,
            min_calls: entry.min_calls,
            max_error_rate: entry.max_error_rate,
            max_budget_use: entry.max_budget_use,
            max_p99_ms: entry.max_p99_ms,
        })
    }
}

/// One canary call as the window keeps it.
#[derive(Debug, Clone, Copy)]
pub struct CanarySample {
    pub at_ms: i64,
    /// Trapped, ran out of a budget or returned an error (a refusal of the
    /// order, such as an invalid coupon, is an answer).
    pub failed: bool,
    /// The largest of fuel, memory, time and output used over their budget
    /// (each as its budget charges it).
    pub budget_use: f64,
    pub latency_ms: f64,
}

/// Figures of the window now, and totals since the control was made.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct WindowFigures {
    pub window_calls: u64,
    pub window_errors: u64,
    pub error_rate: f64,
    pub p99_ms: f64,
    pub p99_budget_use: f64,
}

#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<CanarySample>,
    calls: u64,
    errors: u64,
    reason: Option<String>,
    since_ms: i64,
}

/// The shared, live part of a canary: its state and its window.
#[derive(Debug)]
pub struct CanaryControl {
    state: AtomicU8,
    window: Mutex<Window>,
}

impl Default for CanaryControl {
    fn default() -> Self {
        CanaryControl {
            state: AtomicU8::new(code(CanaryState::Running)),
            window: Mutex::new(Window { since_ms: crate::clock::now_ms(), ..Window::default() }),
        }
    }
}

/// p99 by nearest rank (0 for none).
fn p99(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = (99 * values.len()).div_ceil(100).max(1);
    values[rank - 1]
}

impl CanaryControl {
    pub fn state(&self) -> CanaryState {
        from_code(self.state.load(Ordering::Acquire))
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Total calls and errors since the rollout began (this process, or
    /// as stored), why it stopped, and since when it is in its state.
    pub fn totals(&self) -> (u64, u64, Option<String>, i64) {
        let w = self.window();
        (w.calls, w.errors, w.reason.clone(), w.since_ms)
    }

    /// Applies a stored state (at load): a rolled-back or promoted rollout
    /// stays so.
    pub fn restore(&self, state: CanaryState, calls: u64, errors: u64, reason: Option<String>, at_ms: i64) {
        let mut w = self.window();
        w.calls = w.calls.max(calls);
        w.errors = w.errors.max(errors);
        w.reason = reason;
        w.since_ms = at_ms;
        self.state.store(code(state), Ordering::Release);
    }

    /// Moves from `Running` to `to`; false if it was not running (another
    /// call got there first, or it already stopped).
    pub fn leave_running(&self, to: CanaryState, reason: &str, now_ms: i64) -> bool {
        let moved = self
            .state
            .compare_exchange(code(CanaryState::Running), code(to), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            let mut w = self.window();
            w.reason = Some(reason.to_string());
            w.since_ms = now_ms;
        }
        moved
    }

    /// The window's figures at `now_ms`.
    pub fn figures(&self, limits: &CanaryLimits, now_ms: i64) -> WindowFigures {
        let mut w = self.window();
        evict(&mut w, limits, now_ms);
        figures_of(&w)
    }

    /// Records one call; `Some(reason)` when this call crossed a limit and
    /// rolled the canary back (exactly one caller gets it).
    pub fn record(&self, limits: &CanaryLimits, sample: CanarySample) -> Option<String> {
        let reason = {
            let mut w = self.window();
            w.calls += 1;
            w.errors += u64::from(sample.failed);
            if w.samples.len() >= MAX_SAMPLES {
                w.samples.pop_front();
            }
            w.samples.push_back(sample);
            evict(&mut w, limits, sample.at_ms);
            crossed(limits, &figures_of(&w))
        }?;
        self.leave_running(CanaryState::RolledBack, &reason, sample.at_ms).then_some(reason)
    }
}

fn evict(w: &mut Window, limits: &CanaryLimits, now_ms: i64) {
    let oldest = now_ms - (limits.window_secs as i64) * 1000;
    while w.samples.front().is_some_and(|s| s.at_ms < oldest) {
        w.samples.pop_front();
    }
}

fn figures_of(w: &Window) -> WindowFigures {
    let calls = w.samples.len() as u64;
    let errors = w.samples.iter().filter(|s| s.failed).count() as u64;
    WindowFigures {
        window_calls: calls,
        window_errors: errors,
        error_rate: if calls == 0 { 0.0 } else { errors as f64 / calls as f64 },
        p99_ms: p99(w.samples.iter().map(|s| s.latency_ms).collect()),
        p99_budget_use: p99(w.samples.iter().map(|s| s.budget_use).collect()),
    }
}

/// The first limit `figures` cross, said for operators; none below the
/// minimum sample.
fn crossed(limits: &CanaryLimits, f: &WindowFigures) -> Option<String> {
    if f.window_calls < limits.min_calls {
        return None;
    }
    let window = format!("over the last {} calls within {} s", f.window_calls, limits.window_secs);
    if let Some(max) = limits.max_error_rate
        && f.error_rate > max
    {
        return Some(format!(
            "error rate {:.1} % ({} of {} calls failed) is over the limit of {:.1} %, {window}",
            f.error_rate * 100.0,
            f.window_errors,
            f.window_calls,
            max * 100.0
        ));
    }
    if let Some(max) = limits.max_budget_use
        && f.p99_budget_use > max
    {
        return Some(format!(
            "p99 budget use {:.1} % is over the limit of {:.1} %, {window}",
            f.p99_budget_use * 100.0,
            max * 100.0
        ));
    }
    if let Some(max) = limits.max_p99_ms
        && f.p99_ms > max
    {
        return Some(format!("p99 latency {:.3} ms is over the limit of {max} ms, {window}", f.p99_ms));
    }
    None
}

/// A canary of one rule.
#[derive(Clone)]
pub struct Canary {
    /// Unique in the manifest: how operators and the store name it.
    pub name: String,
    pub rule: Rule,
    pub share_percent: u32,
    pub limits: CanaryLimits,
    pub control: Arc<CanaryControl>,
    pub(super) key: Arc<[u8]>,
}

impl Canary {
    /// Whether `customer_id` is in the canary's share (whatever its state).
    pub fn in_share(&self, customer_id: &str) -> bool {
        super::ruleset::bucket(&self.key, &format!("canary:{}", self.name), customer_id, 100)
            < u64::from(self.share_percent)
    }

    /// Whether both are the same rollout: same name, stable and canary
    /// (digest and configuration; a new rule's canary has no stable side).
    pub fn same_rollout(&self, stable: Option<&Rule>, other: &Canary, other_stable: Option<&Rule>) -> bool {
        self.name == other.name
            && self.rule.identity().digest == other.rule.identity().digest
            && self.rule.config_hash() == other.rule.config_hash()
            && stable_version(stable) == stable_version(other_stable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CanaryLimits {
        CanaryLimits {
            window_secs: 60,
            min_calls: 10,
            max_error_rate: Some(0.2),
            max_budget_use: None,
            max_p99_ms: None,
        }
    }

    fn sample(at_ms: i64, failed: bool) -> CanarySample {
        CanarySample { at_ms, failed, budget_use: 0.1, latency_ms: 1.0 }
    }

    #[test]
    fn no_limit_is_checked_below_the_minimum_sample() {
        let control = CanaryControl::default();
        for i in 0..9 {
            assert_eq!(control.record(&limits(), sample(i, true)), None);
        }
        assert_eq!(control.state(), CanaryState::Running);
        let reason = control.record(&limits(), sample(9, true)).expect("the tenth failure crosses the limit");
        assert!(reason.contains("error rate 100.0 %") && reason.contains("20.0 %"), "{reason}");
        assert_eq!(control.state(), CanaryState::RolledBack);
        // Only one caller is told.
        assert_eq!(control.record(&limits(), sample(10, true)), None);
    }

    #[test]
    fn unusable_limits_are_refused_naming_them() {
        let entry = |share: u32, rate: Option<f64>, window: u64| CanaryEntry {
            name: None,
            module: None,
            config: None,
            share_percent: share,
            window_secs: window,
            min_calls: 50,
            max_error_rate: rate,
            max_budget_use: None,
            max_p99_ms: None,
        };
        assert!(CanaryLimits::of(&entry(10, Some(0.05), 300)).is_ok());
        assert!(CanaryLimits::of(&entry(0, None, 300)).unwrap_err().contains("share_percent"));
        assert!(CanaryLimits::of(&entry(101, None, 300)).unwrap_err().contains("share_percent"));
        assert!(CanaryLimits::of(&entry(10, Some(1.5), 300)).unwrap_err().contains("max_error_rate"));
        assert!(CanaryLimits::of(&entry(10, None, 0)).unwrap_err().contains("window_secs"));
    }

    #[test]
    fn old_calls_leave_the_window() {
        let control = CanaryControl::default();
        for i in 0..5 {
            control.record(&limits(), sample(i, true));
        }
        // A minute later the failures are out of the window.
        for i in 0..20 {
            assert_eq!(control.record(&limits(), sample(70_000 + i, false)), None);
        }
        let figures = control.figures(&limits(), 70_020);
        assert_eq!((figures.window_calls, figures.window_errors), (20, 0));
        assert_eq!(control.totals().0, 25);
    }

    #[test]
    fn latency_and_budget_limits() {
        let l = CanaryLimits { max_error_rate: None, max_p99_ms: Some(5.0), ..limits() };
        let control = CanaryControl::default();
        let slow = |at| CanarySample { at_ms: at, failed: false, budget_use: 0.1, latency_ms: 9.0 };
        let reason = (0..10).find_map(|i| control.record(&l, slow(i))).expect("the p99 crosses 5 ms");
        assert!(reason.contains("p99 latency"), "{reason}");
        let l = CanaryLimits { max_error_rate: None, max_budget_use: Some(0.5), ..limits() };
        let control = CanaryControl::default();
        let heavy = |at| CanarySample { at_ms: at, failed: false, budget_use: 0.9, latency_ms: 1.0 };
        let reason = (0..10).find_map(|i| control.record(&l, heavy(i))).expect("the budget use crosses 50 %");
        assert!(reason.contains("budget use 90.0 %"), "{reason}");
    }
}
