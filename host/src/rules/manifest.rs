//! The plug-in directory's manifest (`manifest.toml`): which module serves
//! each slot, with its configuration, budgets and fail mode.
//!
//! ```toml
//! [[discount]]                 # ordered: discounts stack in this order
//! module = "gold_loyalty.wasm"
//! fail_mode = "closed"         # closed (default): abort with RULE_FAILED; open: skip the rule
//! config = { percent = "10" }
//! budgets = { time_ms = 50 }   # any of time_ms, fuel, memory_bytes, output_bytes
//!
//! [warehouse]                  # exactly one selector
//! module = "nearest_warehouse.wasm"
//!
//! [[fraud]]                    # run after the answer
//! module = "high_value.wasm"
//!
//! # A/B: a share of customers (sticky by a keyed hash of customer id and
//! # experiment name) gets another module or configuration.
//! [[discount]]
//! module = "gold_loyalty.wasm"
//! experiment = { name = "loyalty-15", variants = [
//!     { name = "control", weight = 90 },
//!     { name = "fifteen", weight = 10, config = { percent = "15" } },
//!     { name = "new-module", weight = 0, module = "loyalty_v2.wasm" } ] }
//! # An "off" arm (`module = "none"`): its share of customers skips this
//! # rule (the other rules of the slot still apply), so a new stacked rule is
//! # measured against its absence. Not for the warehouse slot.
//! [[discount]]
//! module = "bundle_deal.wasm"
//! experiment = { name = "bundle", variants = [
//!     { name = "off", weight = 50, module = "none" },
//!     { name = "on", weight = 50 } ] }
//!
//! # Shadow (any slot): a candidate runs beside the active module on live
//! # orders, never changes them; differences and errors are recorded.
//! shadow = { module = "loyalty_v2.wasm", config = { percent = "12" } }
//!
//! # Canary (any slot): a new version serves a share of customers (sticky,
//! # the keyed hash of the A/B assignment); a failed canary call is answered
//! # by the stable version (`module` above), and the host rolls the canary
//! # back by itself when a limit is crossed over the window (once it holds
//! # at least `min_calls` calls). Limits left out are not checked; a rule
//! # cannot have both a canary and an experiment.
//! [[discount]]
//! module = "coupons.wasm"
//! canary = { name = "coupons-v2", module = "coupons_v2.wasm", share_percent = 10,
//!            window_secs = 300, min_calls = 50, max_error_rate = 0.01,
//!            max_budget_use = 0.8, max_p99_ms = 20 }
//!
//! # The canary of a new rule: no stable version (`module = "none"`), so
//! # everyone outside the share, and every order whose canary call fails,
//! # is served without this rule (the slot's other rules apply as usual),
//! # and a rollback leaves the slot as it was before. For a discount rule or
//! # a fraud check; the warehouse slot always needs a selector. The entry
//! # takes no `config`, `experiment` or `shadow` of its own (the canary's
//! # `config` is its configuration); `fail_mode` and `budgets` are the new
//! # rule's, for when it is promoted.
//! [[discount]]
//! module = "none"
//! canary = { name = "bundle", module = "bundle_deal.wasm", share_percent = 10,
//!            min_calls = 50, max_error_rate = 0.01 }
//!
//! # Channels (discount and fraud entries): only the orders of these sales
//! # channels (web, mobile, partner) run the rule; left out, every order
//! # does. An app-only coupon: the web and partner coupons, and the app's
//! # (the same codes and APP15), each entry for its channels.
//! [[discount]]
//! module = "coupons.wasm"
//! channels = ["web", "partner"]
//! config = { "code.WELCOME10" = "percent:10" }
//! [[discount]]
//! module = "coupons.wasm"
//! channels = ["mobile"]
//! config = { "code.WELCOME10" = "percent:10", "code.APP15" = "percent:15" }
//!
//! # Scheduled (discount and fraud entries): the rule serves the orders that
//! # start inside [from, until) (RFC 3339 with an offset; either end may be
//! # left out). The set is loaded once; each order asks the window at its
//! # start.
//! [[discount]]
//! module = "black_friday.wasm"
//! from = "2026-11-27T00:00:00-05:00"
//! until = "2026-11-30T00:00:00-05:00"
//! ```
//!
//! The warehouse selector serves every order: it takes no `channels`,
//! `from` or `until`. An unknown channel, an empty `channels`, a time
//! without an offset and a window whose `until` is not after its `from` are
//! refused when the manifest is read (a reload keeps the last good set).
//!
//! ## The replay gate
//!
//! A reload swaps in a module or configuration that the serving set does not
//! already run only after it passed, with no error, trap or exhausted budget:
//! a replay of the last N stored orders of its slot (`SMARTMART_RELOAD_REPLAY_ORDERS`,
//! default 200; a warehouse selector on the candidates each order saw, see `release::replay`)
//! and the examples of the plug-in directory: every `examples/<module stem>/*.json`
//! (the input format of `smartmart rules run`: `order`, plus `candidates` for
//! a selector and `payment` for a fraud check). A refusal names the manifest
//! entry (rule, variant, shadow or canary) and the failing order or example.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::Budgets;
use super::scope::{Channels, Scope, Window};
use crate::domain::status::Channel;

/// What a slot does when its rule fails (trap, budget, error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Abort the order with `RULE_FAILED`.
    #[default]
    Closed,
    /// Skip the rule and say so in the invoice, the audit event and metrics.
    Open,
}

/// The manifest file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub discount: Vec<RuleEntry>,
    pub warehouse: RuleEntry,
    #[serde(default)]
    pub fraud: Vec<RuleEntry>,
}

/// One rule of a slot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// Module file, relative to the plug-in directory.
    pub module: String,
    #[serde(default)]
    pub fail_mode: FailMode,
    /// Key/value configuration handed to the module (read-only).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub budgets: Budgets,
    /// An A/B experiment on this rule.
    #[serde(default)]
    pub experiment: Option<ExperimentEntry>,
    /// A candidate that runs in the shadow of this rule.
    #[serde(default)]
    pub shadow: Option<ShadowEntry>,
    /// A new version rolled out to a share of customers, with limits.
    #[serde(default)]
    pub canary: Option<CanaryEntry>,
    /// The sales channels whose orders run this rule; left out: every order.
    #[serde(default, deserialize_with = "channel_list")]
    pub channels: Option<Vec<Channel>>,
    /// Start of the activation window (RFC 3339, inclusive); left out: open.
    #[serde(default, deserialize_with = "instant")]
    pub from: Option<Moment>,
    /// End of the activation window (RFC 3339, exclusive); left out: open.
    #[serde(default, deserialize_with = "instant")]
    pub until: Option<Moment>,
}

impl RuleEntry {
    /// Where and when the rule serves (checked by [`Manifest::check`]).
    pub fn scope(&self) -> Scope {
        Scope {
            channels: self.channels.as_deref().map_or(Channels::ALL, Channels::of),
            window: Window { from_ms: self.from.as_ref().map(|i| i.ms), until_ms: self.until.as_ref().map(|i| i.ms) },
        }
    }
}

/// An instant of the manifest: RFC 3339 text, quoted or a TOML offset
/// date-time, with its offset (`2026-11-27T00:00:00Z`, `…+01:00`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    /// Milliseconds since the Unix epoch.
    pub ms: i64,
    /// As the manifest writes it.
    pub text: String,
}

/// `channels = ["mobile", "partner"]`: names of [`Channel`], refused with the
/// list of the known ones otherwise.
fn channel_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<Channel>>, D::Error> {
    let names = Vec::<String>::deserialize(deserializer)?;
    names
        .iter()
        .map(|name| {
            name.parse::<Channel>().map_err(|_| {
                serde::de::Error::custom(format!(
                    "unknown sales channel `{name}` (the channels are {})",
                    Channel::names()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `from`/`until`: an RFC 3339 instant with its offset.
fn instant<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Moment>, D::Error> {
    let text = match toml::Value::deserialize(deserializer)? {
        toml::Value::String(text) => text,
        toml::Value::Datetime(datetime) => datetime.to_string(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected an RFC 3339 time such as 2026-11-27T00:00:00Z, got the {} {other}",
                other.type_str()
            )));
        }
    };
    match crate::clock::ms_of_rfc3339(&text) {
        Ok(ms) => Ok(Some(Moment { ms, text })),
        Err(e) => Err(serde::de::Error::custom(format!(
            "`{text}` is not an RFC 3339 time with an offset, such as 2026-11-27T00:00:00Z: {e}"
        ))),
    }
}

/// A canary: `module` (and/or `config`) serves `share_percent` % of the
/// customers while the limits hold over the window.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CanaryEntry {
    /// The name operators use (`/v1/admin/rollouts/{name}/promote`);
    /// default: the canary's module stem. Unique in the manifest.
    #[serde(default)]
    pub name: Option<String>,
    /// Defaults to the rule's module (a configuration-only canary).
    #[serde(default)]
    pub module: Option<String>,
    /// Defaults to the rule's.
    #[serde(default)]
    pub config: Option<BTreeMap<String, String>>,
    /// 1..=100.
    pub share_percent: u32,
    /// The window the limits are checked over [default: 300].
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Calls the window must hold before a limit is checked [default: 50].
    #[serde(default = "default_min_calls")]
    pub min_calls: u64,
    /// Share of failed calls (trap, budget, error), 0..=1.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// p99 of a call's budget use (the largest of fuel, memory, time and
    /// output used over their budget, each as its budget charges it), 0..=1.
    #[serde(default)]
    pub max_budget_use: Option<f64>,
    /// p99 of the call latency, in ms.
    #[serde(default)]
    pub max_p99_ms: Option<f64>,
}

fn default_window_secs() -> u64 {
    300
}

fn default_min_calls() -> u64 {
    50
}

/// An experiment: customers are split between variants by weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentEntry {
    pub name: String,
    pub variants: Vec<VariantEntry>,
}

/// The `module` of a variant that skips the rule (an "off" arm), and of a
/// rule entry with no stable version (a new rule, rolled out by its canary).
pub const OFF_MODULE: &str = "none";

/// One arm of an experiment; `module` and `config` default to the rule's.
/// `module = "none"` ([`OFF_MODULE`]) is an "off" arm: the rule is skipped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantEntry {
    pub name: String,
    pub weight: u32,
    #[serde(default)]
    pub module: Option<String>,
    #[serde(default)]
    pub config: Option<BTreeMap<String, String>>,
}

impl VariantEntry {
    /// Whether this arm skips the rule (`module = "none"`).
    pub fn is_off(&self) -> bool {
        self.module.as_deref() == Some(OFF_MODULE)
    }

    /// The module file this arm loads, if it names one of its own.
    pub fn module_file(&self) -> Option<&str> {
        self.module.as_deref().filter(|_| !self.is_off())
    }
}

/// A shadow candidate; `config` defaults to the rule's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowEntry {
    pub module: String,
    #[serde(default)]
    pub config: Option<BTreeMap<String, String>>,
}

impl RuleEntry {
    /// Whether the entry has no stable version (`module = "none"`): a new
    /// rule, rolled out by its canary.
    pub fn has_no_stable_rule(&self) -> bool {
        self.module == OFF_MODULE
    }
}

impl Manifest {
    /// Every module file the manifest names (for the reloader's checks).
    pub fn module_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        for entry in self.discount.iter().chain(std::iter::once(&self.warehouse)).chain(&self.fraud) {
            files.extend((!entry.has_no_stable_rule()).then(|| entry.module.clone()));
            if let Some(experiment) = &entry.experiment {
                files.extend(experiment.variants.iter().filter_map(|v| v.module_file().map(str::to_string)));
            }
            if let Some(shadow) = &entry.shadow {
                files.push(shadow.module.clone());
            }
            if let Some(canary) = entry.canary.as_ref().and_then(|c| c.module.clone()) {
                files.push(canary);
            }
        }
        files.sort();
        files.dedup();
        files
    }

    /// Reads, parses and checks `dir/manifest.toml`.
    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read plug-in manifest {}: {e}", path.display()))?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid plug-in manifest {}: {e}", path.display()))?;
        manifest.check().map_err(|e| anyhow::anyhow!("invalid plug-in manifest {}: {e}", path.display()))?;
        Ok(manifest)
    }

    /// What parsing alone cannot refuse: a window that ends before it
    /// starts, an entry limited to no channel, and a scope on the warehouse
    /// selector (every order needs its plan).
    pub fn check(&self) -> Result<(), String> {
        if self.warehouse.channels.is_some() || self.warehouse.from.is_some() || self.warehouse.until.is_some() {
            return Err(format!(
                "warehouse {}: the warehouse selector serves every order (an order cannot ship without a plan), \
                 so it takes no `channels`, `from` or `until`",
                self.warehouse.module
            ));
        }
        for (slot, entries) in [("discount", &self.discount), ("fraud", &self.fraud)] {
            for (index, entry) in entries.iter().enumerate() {
                let name = format!("{slot}[{}] {}", index + 1, entry.module);
                if entry.channels.as_ref().is_some_and(Vec::is_empty) {
                    return Err(format!(
                        "{name}: `channels = []` serves no order (leave `channels` out to serve every channel)"
                    ));
                }
                if let (Some(from), Some(until)) = (&entry.from, &entry.until)
                    && until.ms <= from.ms
                {
                    return Err(format!(
                        "{name}: the window ends before it starts: `until` ({}) must be after `from` ({})",
                        until.text, from.text
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_entry_takes_its_defaults_and_refuses_unknown_keys() {
        let manifest: Manifest = toml::from_str(
            r#"
            [[discount]]
            module = "gold_loyalty.wasm"
            canary = { name = "loyalty-v2", module = "gold_loyalty_v2.wasm", share_percent = 10,
                       max_error_rate = 0.01 }   # the README's shape: TOML 1.1 inline tables
            [warehouse]
            module = "nearest_warehouse.wasm"
            "#,
        )
        .expect("a manifest with a canary");
        let canary = manifest.discount[0].canary.clone().expect("a canary");
        assert_eq!((canary.window_secs, canary.min_calls, canary.share_percent), (300, 50, 10));
        assert_eq!((canary.max_error_rate, canary.max_budget_use, canary.max_p99_ms), (Some(0.01), None, None));
        assert_eq!(manifest.module_files(), ["gold_loyalty.wasm", "gold_loyalty_v2.wasm", "nearest_warehouse.wasm"]);
        let unknown = "[warehouse]\nmodule = \"w.wasm\"\ncanary = { share_percent = 5, max_errors = 1 }";
        assert!(toml::from_str::<Manifest>(unknown).unwrap_err().to_string().contains("max_errors"));
    }

    #[test]
    fn a_new_rules_canary_names_no_stable_module_file() {
        let manifest: Manifest = toml::from_str(
            r#"
            [[discount]]
            module = "none"
            canary = { name = "bundle", module = "bundle_deal.wasm", share_percent = 10 }
            [warehouse]
            module = "nearest_warehouse.wasm"
            "#,
        )
        .expect("a manifest with a new rule's canary");
        assert!(manifest.discount[0].has_no_stable_rule());
        assert!(!manifest.warehouse.has_no_stable_rule());
        assert_eq!(manifest.module_files(), ["bundle_deal.wasm", "nearest_warehouse.wasm"]);
    }
}
