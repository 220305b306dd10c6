//! A rule set: every slot's modules, loaded from a plug-in directory. It is
//! an immutable snapshot; an order takes the current one when it starts and
//! finishes on it, whatever is reloaded meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use super::manifest::{FailMode, Manifest, RuleEntry};
use super::native::Rule;
use super::{ModuleConfig, RuleRuntime, World};

/// A module bound to its place in a slot.
#[derive(Clone)]
pub struct SlotRule {
    /// The module (or, for benchmarks, a native closure).
    pub module: Rule,
    pub fail_mode: FailMode,
}

/// All slots, in their configured order.
#[derive(Clone)]
pub struct RuleSet {
    pub discount: Vec<SlotRule>,
    pub warehouse: SlotRule,
    pub fraud: Vec<SlotRule>,
    /// The directory the set was loaded from.
    pub dir: PathBuf,
    /// RFC 3339 time of loading.
    pub loaded_at: String,
}

/// Values the host injects into module configuration unless the manifest
/// sets them (e.g. the fraud threshold from `SMARTMART_FRAUD_THRESHOLD_CENTS`).
#[derive(Debug, Clone, Default)]
pub struct HostDefaults {
    pub fraud: ModuleConfig,
}

impl RuleSet {
    /// Loads every module the manifest in `dir` names; any failure refuses
    /// the whole set, naming the file.
    pub fn load(runtime: &RuleRuntime, dir: &Path, defaults: &HostDefaults) -> anyhow::Result<Arc<RuleSet>> {
        let manifest = Manifest::read(dir)?;
        if manifest.warehouse.fail_mode == FailMode::Open {
            anyhow::bail!(
                "{}: the warehouse slot cannot fail open (an order cannot ship without a plan)",
                dir.join("manifest.toml").display()
            );
        }
        let load = |entry: &RuleEntry, world: World, injected: Option<&ModuleConfig>| -> anyhow::Result<SlotRule> {
            let mut config = entry.config.clone();
            for (key, value) in injected.into_iter().flatten() {
                config.entry(key.clone()).or_insert_with(|| value.clone());
            }
            let module = runtime
                .load(&dir.join(&entry.module), world, config, entry.budgets)
                .with_context(|| format!("loading the {} rule {}", world.name(), entry.module))?;
            Ok(SlotRule { module: module.into(), fail_mode: entry.fail_mode })
        };
        let discount =
            manifest.discount.iter().map(|e| load(e, World::DiscountRule, None)).collect::<anyhow::Result<_>>()?;
        let warehouse = load(&manifest.warehouse, World::WarehouseSelector, None)?;
        let fraud = manifest
            .fraud
            .iter()
            .map(|e| load(e, World::FraudCheck, Some(&defaults.fraud)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Arc::new(RuleSet {
            discount,
            warehouse,
            fraud,
            dir: dir.to_owned(),
            loaded_at: crate::store::now_rfc3339(),
        }))
    }

    /// Every rule of the set with its slot name, in slot order.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &SlotRule)> {
        self.discount
            .iter()
            .map(|r| ("discount", r))
            .chain(std::iter::once(("warehouse", &self.warehouse)))
            .chain(self.fraud.iter().map(|r| ("fraud", r)))
    }
}
