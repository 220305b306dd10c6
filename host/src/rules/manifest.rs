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
//! # Shadow: a candidate runs beside the active module on live orders,
//! # never changes them; differences are recorded.
//! shadow = { module = "loyalty_v2.wasm", config = { percent = "12" } }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::Budgets;

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
}

/// An experiment: customers are split between variants by weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentEntry {
    pub name: String,
    pub variants: Vec<VariantEntry>,
}

/// The `module` of a variant that skips the rule (an "off" arm).
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

impl Manifest {
    /// Every module file the manifest names (for the reloader's checks).
    pub fn module_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        for entry in self.discount.iter().chain(std::iter::once(&self.warehouse)).chain(&self.fraud) {
            files.push(entry.module.clone());
            if let Some(experiment) = &entry.experiment {
                files.extend(experiment.variants.iter().filter_map(|v| v.module_file().map(str::to_string)));
            }
            if let Some(shadow) = &entry.shadow {
                files.push(shadow.module.clone());
            }
        }
        files.sort();
        files.dedup();
        files
    }

    /// Reads and parses `dir/manifest.toml`.
    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read plug-in manifest {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid plug-in manifest {}: {e}", path.display()))
    }
}
