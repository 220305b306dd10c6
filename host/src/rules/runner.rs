//! A local runner for rule authors (`smartmart rules check | run`): load one
//! module file the way the service would, and call it on an example input.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::types::{Candidate, OrderContext, PaymentSummary};
use super::{Budgets, LoadError, ModuleConfig, ModuleIdentity, RuleError, RuleModule, RuleRuntime, Usage, World};

/// What `rules check` reports about a module.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    #[serde(flatten)]
    pub identity: ModuleIdentity,
    pub world_name: String,
    pub size_bytes: usize,
    pub imports: Vec<String>,
}

/// The input file of `rules run`: the order, plus what the module's world
/// needs besides (warehouse candidates, or the payment summary).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    pub order: OrderContext,
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub payment: Option<PaymentSummary>,
}

/// What `rules run` reports: the answer (or the refusal/failure) and the cost.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub module: ModuleIdentity,
    pub outcome: &'static str,
    pub result: serde_json::Value,
    pub usage: Option<Usage>,
}

/// Loads `file`, as `world` if given, otherwise as whichever world it implements.
pub fn load(
    runtime: &RuleRuntime,
    file: &Path,
    world: Option<World>,
    config: ModuleConfig,
) -> anyhow::Result<RuleModule> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if let Some(world) = world {
        return Ok(runtime.load_bytes(file, &bytes, world, config, Budgets::default())?);
    }
    let detected = runtime.detect_world(file, &bytes).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(LoadError::to_string).collect();
        anyhow::anyhow!("not a SmartMart rule:\n  {}", lines.join("\n  "))
    })?;
    if config.is_empty() {
        return Ok(detected);
    }
    let world = detected.identity().world;
    Ok(runtime.load_bytes(file, &bytes, world, config, Budgets::default())?)
}

pub fn check(runtime: &RuleRuntime, file: &Path, world: Option<World>) -> anyhow::Result<CheckReport> {
    let module = load(runtime, file, world, ModuleConfig::new())?;
    let size_bytes = std::fs::metadata(file)?.len() as usize;
    Ok(CheckReport {
        world_name: module.identity().world.to_string(),
        identity: (**module.identity()).clone(),
        size_bytes,
        imports: module.imports().to_vec(),
    })
}

pub fn run(module: &RuleModule, input: &RunInput) -> anyhow::Result<RunReport> {
    let identity = (**module.identity()).clone();
    let answer = match identity.world {
        World::DiscountRule => module.apply_discount(&input.order).map(|c| (serde_json::to_value(c.value), c.usage)),
        World::WarehouseSelector => {
            if input.candidates.is_empty() {
                bail!("a warehouse selector needs `candidates` in the input file");
            }
            module.select_warehouses(&input.order, &input.candidates).map(|c| (serde_json::to_value(c.value), c.usage))
        }
        World::FraudCheck => {
            let Some(payment) = &input.payment else {
                bail!("a fraud check needs `payment` in the input file");
            };
            module.check_fraud(&input.order, payment).map(|c| (serde_json::to_value(c.value), c.usage))
        }
    };
    Ok(match answer {
        Ok((value, usage)) => RunReport { module: identity, outcome: "ok", result: value?, usage: Some(usage) },
        Err(RuleError::Refused { refusal, .. }) => {
            RunReport { module: identity, outcome: "refused", result: serde_json::to_value(refusal)?, usage: None }
        }
        Err(RuleError::Failed { cause, .. }) => RunReport {
            module: identity,
            outcome: "failed",
            result: serde_json::json!({"kind": cause.kind(), "message": cause.to_string()}),
            usage: None,
        },
    })
}
