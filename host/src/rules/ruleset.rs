//! A rule set: every slot's modules, loaded from a plug-in directory. It is
//! an immutable snapshot; an order takes the current one when it starts and
//! finishes on it, whatever is reloaded meanwhile. Every entry is loaded,
//! whatever its channels and window: an order picks its rules from the set
//! with its channel and start ([`RuleSet::discounts_for`], [`super::scope`]).

use crate::domain::status::Slot;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::canary::{Canary, CanaryControl, CanaryLimits, CanaryState};
use super::manifest::{FailMode, Manifest, OFF_MODULE, RuleEntry};
use super::native::Rule;
use super::scope::{OrderScope, Scope};
use super::{ModuleConfig, RuleRuntime, World};

/// Where `customer_id` falls in `0..total` for the assignment `name`: a keyed
/// hash (HMAC-SHA256) of the name and the customer id, so it sticks across
/// reloads and restarts as long as the key and the name stay. A/B variants
/// and canary shares both use it.
pub fn bucket(key: &[u8], name: &str, customer_id: &str, total: u64) -> u64 {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(customer_id.as_bytes());
    let digest = mac.finalize().into_bytes();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % total.max(1)
}

/// One arm of an experiment.
#[derive(Clone)]
pub struct Variant {
    pub name: String,
    pub weight: u32,
    /// `None` for an "off" arm (`module = "none"`): its customers skip the
    /// rule, and the slot's other rules apply as usual.
    pub rule: Option<Rule>,
}

/// An A/B experiment on one rule of a slot.
#[derive(Clone)]
pub struct Experiment {
    pub name: String,
    pub variants: Vec<Variant>,
    key: Arc<[u8]>,
}

impl Experiment {
    /// The variant of `customer_id`: a keyed hash of the experiment's name
    /// and the customer id, so the choice sticks across reloads and
    /// restarts (as long as the key, the name and the weights stay).
    pub fn assign(&self, customer_id: &str) -> &Variant {
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        let point = bucket(&self.key, &self.name, customer_id, total);
        let mut upper = 0;
        for variant in &self.variants {
            upper += u64::from(variant.weight);
            if point < upper {
                return variant;
            }
        }
        &self.variants[0]
    }
}

/// A module bound to its place in a slot.
#[derive(Clone)]
pub struct SlotRule {
    /// The module (or, for benchmarks, a native closure); with an experiment,
    /// the rule as the manifest names it outside its variants. `None` for a
    /// new rule rolled out by its canary (`module = "none"`): no stable
    /// version, so whoever the canary does not serve goes without this rule.
    pub module: Option<Rule>,
    pub fail_mode: FailMode,
    pub experiment: Option<Experiment>,
    /// A candidate run beside `module` on live orders, never changing them.
    pub shadow: Option<Rule>,
    /// A new version serving a share of customers; `module` is its stable
    /// version (none for a new rule).
    pub canary: Option<Canary>,
    /// The orders that run it: its channels, inside its window.
    pub scope: Scope,
}

/// The rule a customer gets, and the experiment arm it came from.
pub struct Picked<'a> {
    /// `None` when the customer's arm is "off", or when the slot rule is a
    /// new rule's canary (no stable version): the rule is skipped, unless
    /// `canary` answers.
    pub rule: Option<&'a Rule>,
    pub experiment: Option<&'a str>,
    pub variant: Option<&'a str>,
    /// A running canary to try first (`rule` is then the stable version
    /// that answers when the canary fails, if there is one).
    pub canary: Option<&'a Canary>,
}

impl SlotRule {
    /// A plain rule: no experiment, no shadow, no canary.
    pub fn single(module: Rule, fail_mode: FailMode) -> SlotRule {
        SlotRule {
            module: Some(module),
            fail_mode,
            experiment: None,
            shadow: None,
            canary: None,
            scope: Scope::default(),
        }
    }

    /// The module file of the stable version as the manifest names it
    /// (`none` for a new rule's canary).
    pub fn module_file(&self) -> &str {
        self.module.as_ref().map_or(OFF_MODULE, |m| m.identity().file.as_str())
    }

    /// The stable version as logs and summaries name it: the module's
    /// identity, or `none` for a new rule's canary.
    pub fn module_label(&self) -> String {
        self.module.as_ref().map_or_else(|| OFF_MODULE.to_string(), |m| m.identity().to_string())
    }

    /// The rule serving everyone outside a running canary's share: the
    /// canary once promoted, else `module` (none for a new rule's canary).
    pub fn stable(&self) -> Option<&Rule> {
        match &self.canary {
            Some(canary) if canary.control.state() == CanaryState::Promoted => Some(&canary.rule),
            _ => self.module.as_ref(),
        }
    }

    /// The rule that serves `customer_id`.
    pub fn pick(&self, customer_id: &str) -> Picked<'_> {
        if let Some(canary) = &self.canary {
            let running = canary.control.state() == CanaryState::Running && canary.in_share(customer_id);
            return Picked { rule: self.stable(), experiment: None, variant: None, canary: running.then_some(canary) };
        }
        match &self.experiment {
            None => Picked { rule: self.module.as_ref(), experiment: None, variant: None, canary: None },
            Some(experiment) => {
                let variant = experiment.assign(customer_id);
                Picked {
                    rule: variant.rule.as_ref(),
                    experiment: Some(&experiment.name),
                    variant: Some(&variant.name),
                    canary: None,
                }
            }
        }
    }
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
    /// The manifest it was loaded from (`None` for a set built in code).
    pub manifest: Option<Arc<Manifest>>,
}

/// What the host adds to every load: configuration injected unless the
/// manifest sets it (the fraud threshold from `SMARTMART_FRAUD_THRESHOLD_CENTS`),
/// the experiment key, and the keys trusted to sign modules.
#[derive(Debug, Clone, Default)]
pub struct HostDefaults {
    pub fraud: ModuleConfig,
    /// Key of the variant assignment hash (stable across restarts).
    pub experiment_key: Vec<u8>,
    /// When non-empty, every module needs `<file>.sig`: an ed25519
    /// signature, by one of these keys, over its `sha256:…` digest.
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
}

/// A module refused for its signature; `file` is the module (or its
/// `.sig`) so that a refused reload names it like any other load error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SignatureError {
    pub file: PathBuf,
    message: String,
}

/// Reads `<file>.sig` (hex of the 64-byte ed25519 signature over the
/// module's digest string) and checks it against the trusted keys.
fn check_signature(file: &Path, digest: &str, trusted: &[ed25519_dalek::VerifyingKey]) -> Result<(), SignatureError> {
    if trusted.is_empty() {
        return Ok(());
    }
    let sig_path = PathBuf::from(format!("{}.sig", file.display()));
    let text = std::fs::read_to_string(&sig_path).map_err(|e| SignatureError {
        file: file.to_owned(),
        message: format!(
            "{}: unsigned module (no {}), and signatures are required: {e}",
            file.display(),
            sig_path.display()
        ),
    })?;
    let bytes = hex::decode(text.trim()).ok().and_then(|b| <[u8; 64]>::try_from(b).ok());
    let Some(bytes) = bytes else {
        return Err(SignatureError {
            message: format!("{}: malformed signature (expected 128 hex digits)", sig_path.display()),
            file: sig_path,
        });
    };
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    if trusted.iter().any(|key| key.verify_strict(digest.as_bytes(), &signature).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError {
            file: file.to_owned(),
            message: format!("{}: signature does not match {digest} under any trusted key", file.display()),
        })
    }
}

impl RuleSet {
    /// Loads every module the manifest in `dir` names; any failure refuses
    /// the whole set, naming the file.
    pub fn load(runtime: &RuleRuntime, dir: &Path, defaults: &HostDefaults) -> anyhow::Result<Arc<RuleSet>> {
        Self::load_unshared(runtime, dir, defaults).map(Arc::new)
    }

    /// [`RuleSet::load`], not yet shared (the reloader completes it first).
    pub fn load_unshared(runtime: &RuleRuntime, dir: &Path, defaults: &HostDefaults) -> anyhow::Result<RuleSet> {
        let manifest = Manifest::read(dir)?;
        if manifest.warehouse.fail_mode == FailMode::Open {
            bail!(
                "{}: the warehouse slot cannot fail open (an order cannot ship without a plan)",
                dir.join("manifest.toml").display()
            );
        }
        let loader = Loader { runtime, dir, defaults };
        let discount =
            manifest.discount.iter().map(|e| loader.slot(e, World::DiscountRule)).collect::<anyhow::Result<_>>()?;
        let warehouse = loader.slot(&manifest.warehouse, World::WarehouseSelector)?;
        let fraud = manifest.fraud.iter().map(|e| loader.slot(e, World::FraudCheck)).collect::<anyhow::Result<_>>()?;
        let set = RuleSet {
            discount,
            warehouse,
            fraud,
            dir: dir.to_owned(),
            loaded_at: crate::clock::now_rfc3339(),
            manifest: Some(Arc::new(manifest)),
        };
        let mut names: Vec<&str> = set.canaries().map(|(_, _, c)| c.name.as_str()).collect();
        names.sort();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!("{}: two canaries are named {} (set `name`)", dir.join("manifest.toml").display(), pair[0]);
        }
        Ok(set)
    }

    /// Every canary of the set: its slot, its rule and the canary.
    pub fn canaries(&self) -> impl Iterator<Item = (Slot, &SlotRule, &Canary)> {
        self.all().filter_map(|(slot, rule)| rule.canary.as_ref().map(|c| (slot, rule, c)))
    }

    /// Gives each canary of `self` the live control (state and window) of
    /// the same rollout in `previous`, if it holds it: a reload neither
    /// forgets the window nor resurrects a rolled-back canary.
    pub fn carry_over(&mut self, previous: &RuleSet) {
        let old: Vec<(&SlotRule, &Canary)> = previous.canaries().map(|(_, r, c)| (r, c)).collect();
        let slots = self.discount.iter_mut().chain(std::iter::once(&mut self.warehouse)).chain(self.fraud.iter_mut());
        for slot in slots {
            let stable = slot.module.clone();
            let Some(canary) = &mut slot.canary else { continue };
            if let Some((_, kept)) =
                old.iter().find(|(r, c)| canary.same_rollout(stable.as_ref(), c, r.module.as_ref()))
            {
                canary.control = kept.control.clone();
            }
        }
    }

    /// The discount rules `order` runs, in stack order: those of its
    /// channel, inside their window at its start. A filter over the loaded
    /// rules (no allocation, nothing rebuilt).
    pub fn discounts_for(&self, order: OrderScope) -> impl Iterator<Item = &SlotRule> {
        self.discount.iter().filter(move |rule| rule.scope.serves(order))
    }

    /// The fraud checks `order` runs (as [`RuleSet::discounts_for`]).
    pub fn fraud_checks_for(&self, order: OrderScope) -> impl Iterator<Item = &SlotRule> {
        self.fraud.iter().filter(move |rule| rule.scope.serves(order))
    }

    /// Every rule of the set with its slot name, in slot order.
    pub fn all(&self) -> impl Iterator<Item = (Slot, &SlotRule)> {
        self.discount
            .iter()
            .map(|r| (Slot::Discount, r))
            .chain(std::iter::once((Slot::Warehouse, &self.warehouse)))
            .chain(self.fraud.iter().map(|r| (Slot::Fraud, r)))
    }
}

struct Loader<'a> {
    runtime: &'a RuleRuntime,
    dir: &'a Path,
    defaults: &'a HostDefaults,
}

impl Loader<'_> {
    fn module(&self, file: &str, world: World, config: &ModuleConfig, entry: &RuleEntry) -> anyhow::Result<Rule> {
        let mut config = config.clone();
        if world == World::FraudCheck {
            for (key, value) in &self.defaults.fraud {
                config.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        let path = self.dir.join(file);
        let module = self
            .runtime
            .load(&path, world, config, entry.budgets)
            .with_context(|| format!("loading the {} rule {file}", world.name()))?;
        check_signature(&path, &module.identity().digest, &self.defaults.trusted_keys)?;
        Ok(Rule::Wasm(module))
    }

    /// Why an entry with no stable version (`module = "none"`) cannot be
    /// loaded as it is written, if it cannot.
    fn check_new_rule(&self, entry: &RuleEntry, world: World) -> anyhow::Result<()> {
        let why = if world == World::WarehouseSelector {
            "the warehouse slot always needs a selector (an order cannot ship without a plan): \
             roll a new selector out as a canary of the current one"
        } else if entry.canary.as_ref().is_none_or(|c| c.module.is_none()) {
            "no stable version is for a new rule rolled out by its canary: \
             add canary = { module = \"<new rule>.wasm\", share_percent = … }"
        } else if entry.shadow.is_some() {
            "a shadow runs beside the stable version, and there is none"
        } else if !entry.config.is_empty() {
            "it runs nothing, so it takes no config: give the canary its config"
        } else {
            return Ok(());
        };
        bail!(
            "{}: {} entry with module = \"{OFF_MODULE}\": {why}",
            self.dir.join("manifest.toml").display(),
            world.slot()
        )
    }

    fn slot(&self, entry: &RuleEntry, world: World) -> anyhow::Result<SlotRule> {
        let module = if entry.has_no_stable_rule() {
            self.check_new_rule(entry, world)?;
            None
        } else {
            Some(self.module(&entry.module, world, &entry.config, entry)?)
        };
        let experiment = match &entry.experiment {
            None => None,
            Some(e) => {
                // A canary, which a rule with no stable version needs, is refused
                // beside an experiment below; this names the right remedy.
                let Some(stable) = &module else {
                    bail!(
                        "experiment {}: a new rule (module = \"{OFF_MODULE}\") is rolled out by its canary, not an experiment (an experiment's \"off\" arm measures an existing rule against its absence)",
                        e.name
                    );
                };
                if e.variants.is_empty() || e.variants.iter().all(|v| v.weight == 0) {
                    bail!("experiment {}: needs at least one variant with a positive weight", e.name);
                }
                let mut names: Vec<&str> = e.variants.iter().map(|v| v.name.as_str()).collect();
                names.sort();
                names.dedup();
                if names.len() != e.variants.len() {
                    bail!("experiment {}: variant names must be unique", e.name);
                }
                let variants = e
                    .variants
                    .iter()
                    .map(|v| {
                        if v.is_off() {
                            if world == World::WarehouseSelector {
                                bail!(
                                    "experiment {}: variant {}: the warehouse slot cannot be off (module = \"{OFF_MODULE}\"): an order needs a plan",
                                    e.name,
                                    v.name
                                );
                            }
                            if v.config.is_some() {
                                bail!(
                                    "experiment {}: variant {}: an off arm (module = \"{OFF_MODULE}\") runs nothing, so it takes no config",
                                    e.name,
                                    v.name
                                );
                            }
                            return Ok(Variant { name: v.name.clone(), weight: v.weight, rule: None });
                        }
                        let rule = match (&v.module, &v.config) {
                            (None, None) => stable.clone(),
                            (file, config) => self.module(
                                file.as_deref().unwrap_or(&entry.module),
                                world,
                                config.as_ref().unwrap_or(&entry.config),
                                entry,
                            )?,
                        };
                        Ok(Variant { name: v.name.clone(), weight: v.weight, rule: Some(rule) })
                    })
                    .collect::<anyhow::Result<_>>()?;
                Some(Experiment { name: e.name.clone(), variants, key: self.defaults.experiment_key.clone().into() })
            }
        };
        let shadow = match &entry.shadow {
            None => None,
            Some(s) => Some(self.module(&s.module, world, s.config.as_ref().unwrap_or(&entry.config), entry)?),
        };
        let canary = match &entry.canary {
            None => None,
            Some(c) => {
                if experiment.is_some() {
                    bail!(
                        "{}: a rule cannot have both an experiment and a canary (roll the canary out first)",
                        entry.module
                    );
                }
                let limits = CanaryLimits::of(c).map_err(|e| anyhow::anyhow!("canary of {}: {e}", entry.module))?;
                let file = c.module.as_deref().unwrap_or(&entry.module);
                if file == OFF_MODULE {
                    bail!(
                        "canary of {}: a canary runs a module (module = \"{OFF_MODULE}\" is for the stable side of a new rule; to retire a rule, remove its entry)",
                        entry.module
                    );
                }
                let name = c.name.clone().unwrap_or_else(|| file.trim_end_matches(".wasm").to_string());
                if name.is_empty()
                    || name.len() > 64
                    || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                {
                    bail!("canary name {name:?}: 1 to 64 characters of A-Z, a-z, 0-9, `-`, `_` and `.`");
                }
                let rule = self.module(file, world, c.config.as_ref().unwrap_or(&entry.config), entry)?;
                Some(Canary {
                    name,
                    rule,
                    share_percent: c.share_percent,
                    limits,
                    control: Arc::new(CanaryControl::default()),
                    key: self.defaults.experiment_key.clone().into(),
                })
            }
        };
        Ok(SlotRule { module, fail_mode: entry.fail_mode, experiment, shadow, canary, scope: entry.scope() })
    }
}
