//! The replay gate of a reload: every module or configuration a new rule
//! set runs that the serving set does not (a rule, an experiment's variant,
//! a shadow candidate or a canary) must first answer, with no error, trap or
//! exhausted budget:
//!
//! - the last N stored orders of its slot and of its entry's sales channels
//!   (a `mobile` rule on `mobile` orders; its window does not matter: a rule
//!   scheduled for next week has no orders of its own yet), replayed the
//!   way `smartmart rules replay` does ([`super::replay`]: inputs rebuilt
//!   from the stored invoices, at the rule's place in the stack the orders
//!   ran on; a warehouse selector on the candidates each order saw, kept with
//!   the order, its plan checked as the pipeline checks it: a plan the host
//!   would refuse fails, a different valid plan does not);
//! - every example the plug-in directory supplies for its module:
//!   `examples/<module stem>/*.json` next to the manifest, each in the input
//!   format of `smartmart rules run` ([`RunInput`]: the `order`, plus
//!   `candidates` for a selector and `payment` for a fraud check; its
//!   `config` is ignored: the manifest's applies); a selector's plan is
//!   checked there as the pipeline checks it, as in the replay.
//!
//! A refusal names the manifest entry, the module and the first order (or
//! example file) it failed on. A refusal of the order (an invalid coupon) is
//! an answer, not a failure.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::replay::{self, Outcome};
use crate::domain::status::Slot;
use crate::pipeline::inventory::{requested_quantities, validate_plan};
use crate::rules::manifest::Manifest;
use crate::rules::reload::ReloadError;
use crate::rules::runner::RunInput;
use crate::rules::{Channels, Rule, RuleError, RuleModule, RuleSet, World};
use crate::store::Store;
use crate::store::orders::StoredOrder;

/// One module of a rule set with its place, as the gate names it.
struct Placed<'a> {
    world: World,
    /// Index of the entry in its slot (0 for the warehouse).
    index: usize,
    /// `discount[2] flat.wasm / shadow`.
    entry: String,
    rule: &'a Rule,
    /// The sales channels of its entry: only their orders are replayed.
    channels: Channels,
}

/// What tells two modules of a slot apart for the gate: the same bytes with
/// the same configuration and budgets answer the same, on the orders of the
/// same channels (a rule given a new channel meets orders it never saw).
fn key(p: &Placed<'_>) -> (Slot, String, String, String, Channels) {
    let rule = p.rule;
    (
        p.world.slot(),
        rule.identity().digest.clone(),
        rule.config_hash().to_string(),
        format!("{:?}", rule.budgets()),
        p.channels,
    )
}

/// Every module of `set` with its entry's name.
fn placed(set: &RuleSet) -> Vec<Placed<'_>> {
    let mut out = Vec::new();
    let mut index_in = std::collections::BTreeMap::<Slot, usize>::new();
    for (slot, rule) in set.all() {
        let index = *index_in.entry(slot).and_modify(|i| *i += 1).or_insert(0);
        let world = World::of(slot);
        let base = if slot == Slot::Warehouse {
            format!("warehouse {}", rule.module_file())
        } else {
            format!("{slot}[{}] {}", index + 1, rule.module_file())
        };
        let channels = rule.scope.channels;
        let at = |entry: String, rule| Placed { world, index, entry, rule, channels };
        // A new rule's canary has no stable version: only the canary to gate.
        if let Some(module) = &rule.module {
            out.push(at(format!("{base} / rule"), module));
        }
        if let Some(experiment) = &rule.experiment {
            // An "off" arm runs no module: nothing to gate.
            for (v, rule) in experiment.variants.iter().filter_map(|v| v.rule.as_ref().map(|r| (v, r))) {
                out.push(at(format!("{base} / variant {}", v.name), rule));
            }
        }
        if let Some(shadow) = &rule.shadow {
            out.push(at(format!("{base} / shadow {}", shadow.identity().file), shadow));
        }
        if let Some(canary) = &rule.canary {
            out.push(at(format!("{base} / canary {}", canary.name), &canary.rule));
        }
    }
    out
}

/// Checks what `next` runs that `previous` does not, on the last
/// `last_orders` stored orders and the plug-in directory's examples.
pub fn check(store: &Store, last_orders: usize, previous: &RuleSet, next: &RuleSet) -> Result<(), ReloadError> {
    let known: BTreeSet<_> = placed(previous).iter().map(key).collect();
    let mut checked = BTreeSet::new();
    let fresh: Vec<Placed<'_>> = placed(next)
        .into_iter()
        .filter(|p| !known.contains(&key(p)))
        .filter(|p| checked.insert((key(p), p.index)))
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    // The last orders of each entry's channels, read once per set of channels.
    let mut orders_of: BTreeMap<Channels, Vec<StoredOrder>> = BTreeMap::new();
    // The stack the stored orders ran on: the serving set's manifest.
    let manifest = previous.manifest.as_deref().or(next.manifest.as_deref());
    for p in &fresh {
        let Rule::Wasm(module) = p.rule else { continue };
        if let Some(manifest) = manifest
            && last_orders > 0
        {
            let orders = match orders_of.entry(p.channels) {
                Entry::Occupied(read) => read.into_mut(),
                Entry::Vacant(slot) => {
                    slot.insert(replay::recent_orders(store, last_orders, p.channels).map_err(|e| {
                        ReloadError::of_file(
                            "manifest.toml",
                            format!("replay gate: cannot read the stored orders: {e}"),
                        )
                    })?)
                }
            };
            if !orders.is_empty() {
                replay_orders(module, manifest, p, orders)?;
            }
        }
        examples(module, &next.dir, p)?;
    }
    Ok(())
}

fn refusal(p: &Placed<'_>, module: &RuleModule, on: String, error: String) -> ReloadError {
    ReloadError {
        entry: Some(p.entry.clone()),
        order_id: Some(on),
        ..ReloadError::of_file(module.identity().file.clone(), error)
    }
}

fn replay_orders(
    module: &RuleModule,
    manifest: &Manifest,
    p: &Placed<'_>,
    orders: &[StoredOrder],
) -> Result<(), ReloadError> {
    let target = replay::gate_target(manifest, p.world, p.index, p.channels)
        .map_err(|e| refusal(p, module, String::new(), format!("replay gate: {e:#}")))?;
    let report = replay::replay(module, &target, orders);
    let Some(failed) = report.orders.iter().find(|o| o.outcome == Outcome::Failed) else { return Ok(()) };
    let failure = failed.failure.as_ref().map_or_else(String::new, |f| format!("{}: {}", f.kind, f.message));
    Err(refusal(
        p,
        module,
        failed.order_id.clone(),
        format!(
            "replay gate: {} ({}) failed on stored order {} ({} of the last {} orders replayed failed): {failure}",
            p.entry,
            module.identity(),
            failed.order_id,
            report.summary.failed,
            report.summary.replayed
        ),
    ))
}

/// Runs `module` on every `examples/<stem>/*.json` of the plug-in directory.
fn examples(module: &RuleModule, dir: &Path, p: &Placed<'_>) -> Result<(), ReloadError> {
    let file = &module.identity().file;
    let stem = file.strip_suffix(".wasm").unwrap_or(file);
    let folder = dir.join("examples").join(stem);
    let Ok(listing) = std::fs::read_dir(&folder) else { return Ok(()) };
    let mut files: Vec<_> = listing
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|path| path.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for path in files {
        let name = format!("examples/{stem}/{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let bad =
            |why: String| refusal(p, module, name.clone(), format!("replay gate: {} example {name}: {why}", p.entry));
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("unreadable: {e}")))?;
        let input: RunInput = serde_json::from_str(&text).map_err(|e| bad(format!("not a rule input: {e}")))?;
        let outcome = match p.world {
            World::DiscountRule => module.apply_discount(&input.order).map(|_| ()),
            World::WarehouseSelector => {
                if input.candidates.is_empty() {
                    return Err(bad("a warehouse selector's example needs `candidates`".into()));
                }
                let called = module.select_warehouses(&input.order, &input.candidates);
                // A plan the pipeline would refuse fails an order as a trap
                // does: checked here as the pipeline checks it.
                if let Ok(plan) = &called
                    && let Err(why) = validate_plan(&plan.value, &requested_quantities(&input.order), &input.candidates)
                {
                    let identity = module.identity();
                    return Err(bad(format!("{identity} answered a plan the host refuses: invalid_plan: {why}")));
                }
                called.map(|_| ())
            }
            World::FraudCheck => {
                let Some(payment) = &input.payment else {
                    return Err(bad("a fraud check's example needs `payment`".into()));
                };
                module.check_fraud(&input.order, payment).map(|_| ())
            }
        };
        if let Err(RuleError::Failed { module: identity, cause }) = outcome {
            return Err(bad(format!("{identity} failed: {}: {cause}", cause.kind())));
        }
    }
    Ok(())
}
