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
}

impl Manifest {
    /// Reads and parses `dir/manifest.toml`.
    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read plug-in manifest {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid plug-in manifest {}: {e}", path.display()))
    }
}
