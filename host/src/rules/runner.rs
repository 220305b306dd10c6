//! A local runner for rule authors (`smartmart rules check | run`): load one
//! module file the way the service would, call it on an example input, and
//! report the answer, what the rule logged and what the call used against
//! its budgets; optionally compare the answer with an expected one, so that
//! a rule's examples are its tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::types::{Candidate, OrderContext, PaymentSummary};
use super::{
    Budgets, LoadError, LogLine, ModuleConfig, ModuleIdentity, RuleError, RuleModule, RuleRuntime, Traced, World,
};

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
/// needs besides (warehouse candidates, or the payment summary), and the
/// module configuration the example runs with (`--config` adds to it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    pub order: OrderContext,
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub payment: Option<PaymentSummary>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// What `rules run` reports: the answer (or the refusal/failure), what the
/// rule logged, and what the call used against its budgets.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub module: ModuleIdentity,
    /// `ok`, `refused` (the order's fault: a typed refusal) or `failed`.
    pub outcome: &'static str,
    pub result: serde_json::Value,
    pub log: Vec<LogLine>,
    pub usage: UsageReport,
}

/// One call's consumption beside its limit, each in the unit its name says.
/// Present whatever the outcome: a failed call shows how far it got.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageReport {
    pub fuel: Measure<u64>,
    pub peak_memory_bytes: Measure<u64>,
    pub wall_time_ms: Measure<f64>,
    /// What the output budget charged for the answer (or typed error): its
    /// strings' bytes plus each list's length × its element's in-host size
    /// (`budgets::OutputCharge`, the very count the budget enforces). Absent
    /// when the call produced no answer (a trap, an exhausted budget).
    pub output_bytes: Option<Measure<u64>>,
}

/// What was used, and the budget it counts against.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Measure<T> {
    pub used: T,
    pub limit: T,
}

/// The expected-result file of `rules run --expect`: the outcome and,
/// unless left out, the exact result (what `rules run --json` prints under
/// `result`). Log and usage vary from build to build and are not compared.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub outcome: String,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

/// Loads `file`, as `world` if given, otherwise as whichever world it
/// implements; compiled once (or taken from the runtime's artifact cache).
pub fn load(
    runtime: &RuleRuntime,
    file: &Path,
    world: Option<World>,
    config: ModuleConfig,
    budgets: Budgets,
) -> anyhow::Result<RuleModule> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if let Some(world) = world {
        return Ok(runtime.load_bytes(file, &bytes, world, config, budgets)?);
    }
    runtime.load_any_world(file, &bytes, config, budgets).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(LoadError::to_string).collect();
        anyhow::anyhow!("not a SmartMart rule:\n  {}", lines.join("\n  "))
    })
}

pub fn check(runtime: &RuleRuntime, file: &Path, world: Option<World>) -> anyhow::Result<CheckReport> {
    let module = load(runtime, file, world, ModuleConfig::new(), Budgets::default())?;
    let size_bytes = std::fs::metadata(file)?.len() as usize;
    Ok(CheckReport {
        world_name: module.identity().world.to_string(),
        identity: (**module.identity()).clone(),
        size_bytes,
        imports: module.imports().to_vec(),
    })
}

/// Calls `module` once on `input` (its `config` is the module's, see [`load`]).
pub fn run(module: &RuleModule, input: &RunInput) -> anyhow::Result<RunReport> {
    let identity = (**module.identity()).clone();
    let traced = match identity.world {
        World::DiscountRule => to_json(module.apply_discount_traced(&input.order)),
        World::WarehouseSelector => {
            if input.candidates.is_empty() {
                bail!("a warehouse selector needs `candidates` in the input file");
            }
            to_json(module.select_warehouses_traced(&input.order, &input.candidates))
        }
        World::FraudCheck => {
            let Some(payment) = &input.payment else {
                bail!("a fraud check needs `payment` in the input file");
            };
            to_json(module.check_fraud_traced(&input.order, payment))
        }
    };
    let budgets = module.budgets();
    let usage = UsageReport {
        fuel: Measure { used: traced.usage.fuel, limit: budgets.fuel },
        peak_memory_bytes: Measure { used: traced.usage.peak_memory_bytes as u64, limit: budgets.memory_bytes as u64 },
        wall_time_ms: Measure { used: traced.usage.elapsed.as_secs_f64() * 1e3, limit: budgets.time_ms as f64 },
        output_bytes: traced
            .usage
            .output_bytes
            .map(|used| Measure { used: used as u64, limit: budgets.output_bytes as u64 }),
    };
    let (outcome, result) = match traced.result {
        Ok(value) => ("ok", value?),
        Err(RuleError::Refused { refusal, .. }) => ("refused", serde_json::to_value(refusal)?),
        Err(RuleError::Failed { cause, .. }) => {
            ("failed", serde_json::json!({"kind": cause.kind(), "message": cause.to_string()}))
        }
    };
    Ok(RunReport { module: identity, outcome, result, log: traced.log, usage })
}

/// The answer as JSON (its usage, output included, is the call's own).
fn to_json<T: Serialize>(traced: Traced<T>) -> Traced<serde_json::Result<serde_json::Value>> {
    Traced { result: traced.result.map(|value| serde_json::to_value(value)), usage: traced.usage, log: traced.log }
}

/// Where the report differs from `expected`, one readable line per
/// difference (`result[0].amount_cents: expected 4645, got 4650`); empty
/// when it matches.
pub fn differences(report: &RunReport, expected: &Expected) -> Vec<String> {
    let mut out = Vec::new();
    if report.outcome != expected.outcome {
        out.push(format!("outcome: expected {:?}, got {:?}", expected.outcome, report.outcome));
    }
    if let Some(want) = &expected.result {
        diff_json("result", want, &report.result, &mut out);
    }
    out
}

fn diff_json(path: &str, want: &serde_json::Value, got: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (key, wv) in w {
                match g.get(key) {
                    Some(gv) => diff_json(&format!("{path}.{key}"), wv, gv, out),
                    None => out.push(format!("{path}.{key}: expected {wv}, missing")),
                }
            }
            for (key, gv) in g {
                if !w.contains_key(key) {
                    out.push(format!("{path}.{key}: not expected, got {gv}"));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff_json(&format!("{path}[{i}]"), wv, gv, out);
            }
            for (i, wv) in w.iter().enumerate().skip(g.len()) {
                out.push(format!("{path}[{i}]: expected {wv}, missing"));
            }
            for (i, gv) in g.iter().enumerate().skip(w.len()) {
                out.push(format!("{path}[{i}]: not expected, got {gv}"));
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: expected {want}, got {got}")),
    }
}

impl RunReport {
    /// The report as a person reads it: identity, outcome, the result as
    /// indented JSON, the log, and each budget with its unit and share used.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let m = &self.module;
        let _ = writeln!(s, "module:   {} {}@{} ({})", m.file, m.name, m.version, m.digest);
        let _ = writeln!(s, "world:    {}", m.world);
        let _ = writeln!(s, "outcome:  {}", self.outcome);
        let result = serde_json::to_string_pretty(&self.result).unwrap_or_else(|_| self.result.to_string());
        let _ = writeln!(s, "result:");
        for line in result.lines() {
            let _ = writeln!(s, "  {line}");
        }
        if self.log.is_empty() {
            let _ = writeln!(s, "log:      (nothing logged)");
        } else {
            let _ = writeln!(s, "log:");
            for line in &self.log {
                let fields: String = line.fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
                let _ = writeln!(s, "  {:<5} {}{fields}", line.level, line.message);
            }
        }
        let u = &self.usage;
        let _ = writeln!(s, "usage (used of budget):");
        let _ = writeln!(
            s,
            "  fuel         {} of {} instructions ({})",
            grouped(u.fuel.used),
            grouped(u.fuel.limit),
            share(u.fuel.used as f64, u.fuel.limit as f64)
        );
        let _ = writeln!(
            s,
            "  memory       {} of {} peak ({})",
            bytes(u.peak_memory_bytes.used),
            bytes(u.peak_memory_bytes.limit),
            share(u.peak_memory_bytes.used as f64, u.peak_memory_bytes.limit as f64)
        );
        let _ = writeln!(
            s,
            "  wall time    {} of {} ({})",
            millis(u.wall_time_ms.used),
            millis(u.wall_time_ms.limit),
            share(u.wall_time_ms.used, u.wall_time_ms.limit)
        );
        match u.output_bytes {
            Some(o) => {
                let _ = writeln!(
                    s,
                    "  output       {} of {} ({})",
                    bytes(o.used),
                    bytes(o.limit),
                    share(o.used as f64, o.limit as f64)
                );
            }
            None => {
                let _ = writeln!(s, "  output       none (the call produced no answer)");
            }
        }
        s
    }
}

/// `50000000` → `50,000,000`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in the largest binary unit that keeps the number at least 1.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Milliseconds, or microseconds below one millisecond.
fn millis(ms: f64) -> String {
    if ms < 1.0 { format!("{:.1} µs", ms * 1e3) } else { format!("{ms:.1} ms") }
}

fn share(used: f64, limit: f64) -> String {
    if limit <= 0.0 {
        return "-".into();
    }
    let pct = used / limit * 100.0;
    if pct > 100.0 {
        format!("{pct:.0} %, over budget")
    } else if pct > 0.0 && pct < 0.1 {
        "<0.1 %".into()
    } else {
        format!("{pct:.1} %")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_with_their_units() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(50_000_000), "50,000,000");
        assert_eq!(bytes(96), "96 B");
        assert_eq!(bytes(16 << 20), "16.0 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(millis(0.06137), "61.4 µs");
        assert_eq!(millis(1000.0), "1000.0 ms");
        assert_eq!(share(1.0, 50_000_000.0), "<0.1 %");
        assert_eq!(share(8.0, 16.0), "50.0 %");
        assert_eq!(share(0.0, 16.0), "0.0 %");
        assert_eq!(share(3.0, 2.0), "150 %, over budget");
    }

    #[test]
    fn differences_name_the_path_and_both_values() {
        let want = serde_json::json!([{"amount_cents": 4645, "reasons": ["a", "b"]}]);
        let got = serde_json::json!([{"amount_cents": 4650, "reasons": ["a"], "extra": true}, 1]);
        let mut out = Vec::new();
        diff_json("result", &want, &got, &mut out);
        assert_eq!(
            out,
            [
                "result[0].amount_cents: expected 4645, got 4650",
                "result[0].reasons[1]: expected \"b\", missing",
                "result[0].extra: not expected, got true",
                "result[1]: not expected, got 1",
            ]
        );
        let mut none = Vec::new();
        diff_json("result", &want, &want, &mut none);
        assert!(none.is_empty());
    }
}
