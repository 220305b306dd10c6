//! Shared helpers of the integration tests.

use std::path::PathBuf;
use std::sync::OnceLock;

use smartmart::rules::runner::RunInput;
use smartmart::rules::{Budgets, ModuleConfig, RuleModule, RuleRuntime, RuntimeOptions, World};

/// The repository root (the host crate lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `<repo>/target/wasm/<name>.wasm`, built by `cargo xtask guests`.
pub fn wasm(name: &str) -> PathBuf {
    let path = repo_root().join("target/wasm").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run `cargo xtask guests` first", path.display());
    path
}

/// Reads `examples/orders/<name>.json` (the `rules run` input format).
pub fn example_order(name: &str) -> RunInput {
    let path = repo_root().join("examples/orders").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A rule runtime of its own (its own engine, pool and epoch thread), no
/// artifact cache, a pool small enough for many tests side by side.
pub fn new_rule_runtime() -> RuleRuntime {
    RuleRuntime::new(RuntimeOptions { cache_dir: None, max_instances: 32 }).expect("creating the rule runtime")
}

/// The rule runtime shared by the tests of this binary (cheap to clone).
pub fn rule_runtime() -> RuleRuntime {
    static RUNTIME: OnceLock<RuleRuntime> = OnceLock::new();
    RUNTIME.get_or_init(new_rule_runtime).clone()
}

/// Loads `target/wasm/<name>.wasm` as `world` in `runtime`, panicking with the
/// load error's text if it is refused.
pub fn load_rule(
    runtime: &RuleRuntime,
    name: &str,
    world: World,
    config: &[(&str, &str)],
    budgets: Budgets,
) -> RuleModule {
    let config: ModuleConfig = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    runtime.load(&wasm(name), world, config, budgets).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}
