//! `smartmart rules new`: projects written into empty folders outside the
//! repository, built with their own one command, then loaded by the real
//! binary (`rules check`) and run on their own examples (`rules run
//! --expect`); and the JavaScript port of the coupon rule against the Rust
//! one, through the host's `RuleModule` API.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smartmart::rules::{Budgets, ModuleConfig, RuleRuntime, RuntimeOptions, World};
use smartmart::test_support::runner::{self, Expected, RunInput};

use crate::cli::{path_str, smartmart, text};
use crate::support::{repo_root, wasm};

/// Budgets of a JavaScript rule (the README of a JS project declares the same).
const JS_FUEL: &str = "fuel=200000000";
const JS_MEMORY: &str = "memory_bytes=33554432";

/// Where every Rust project of these tests builds, so that wit-bindgen is
/// compiled for wasm once, not once per project.
fn scaffold_target_dir() -> PathBuf {
    repo_root().join("target/scaffold")
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("could not start {shown}: {e}"));
    assert!(out.status.success(), "{shown} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    out
}

/// `smartmart rules new NAME --world WORLD --lang LANG --dir <parent>/NAME`.
fn new_rule(parent: &Path, name: &str, world: &str, lang: &str) -> PathBuf {
    let dir = parent.join(name);
    let out = smartmart(&["rules", "new", name, "--world", world, "--lang", lang, "--dir", path_str(&dir)]);
    assert!(out.status.success(), "rules new {name}: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("README.md"), "{}", text(&out.stdout));
    dir
}

/// `rules check` on the component: the world and name it reports.
fn assert_checks(component: &Path, world: &str, name: &str) {
    let out = smartmart(&["rules", "check", "--json", path_str(component)]);
    assert!(out.status.success(), "rules check {}: {}", component.display(), text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["world"], world, "{report}");
    assert_eq!(report["name"], name, "{report}");
}

/// `rules run --expect` on the project's own example passes.
fn assert_passes_its_example(project: &Path, component: &Path, budgets: &[&str]) -> String {
    let (input, expected) = (project.join("examples/order.input.json"), project.join("examples/order.expected.json"));
    let mut args =
        vec!["rules", "run", path_str(component), "--input", path_str(&input), "--expect", path_str(&expected)];
    for budget in budgets {
        args.extend(["--budget", budget]);
    }
    let out = smartmart(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}: {stdout}{}", project.display(), text(&out.stderr));
    assert!(stdout.contains("expect:   matches "), "{stdout}");
    stdout
}

fn cargo(project: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project).arg("--quiet");
    cmd
}

#[test]
fn rules_new_rust_projects_build_check_and_pass_their_example_in_every_world() {
    let parent = tempfile::tempdir().unwrap();
    let target_dir = scaffold_target_dir();
    for (world, world_name, log) in [
        ("discount", "discount-rule", "info  new-discount applied order_id=ord_example_gold amount_cents=4645"),
        ("warehouse", "warehouse-selector", "info  new-warehouse chose a warehouse order_id=ord_example_gold"),
        ("fraud", "fraud-check", "info  new-fraud checked order_id=ord_example_gold total_cents=92900"),
    ] {
        let name = format!("new-{world}");
        let project = new_rule(parent.path(), &name, world, "rust");
        // The project's own unit tests, natively, then its one build command.
        run(cargo(&project).args(["test", "--target-dir"]).arg(&target_dir));
        run(cargo(&project).args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(&target_dir));
        let component = target_dir.join("wasm32-wasip2/release").join(format!("new_{world}.wasm"));
        assert_checks(&component, world_name, &name);
        let stdout = assert_passes_its_example(&project, &component, &[]);
        assert!(stdout.contains(log), "{stdout}");
    }
}

#[test]
fn rules_new_refuses_a_bad_name_and_a_folder_in_use() {
    let parent = tempfile::tempdir().unwrap();
    let out = smartmart(&["rules", "new", "Bad_Name", "--world", "discount", "--dir", path_str(parent.path())]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid rule name \"Bad_Name\""), "{}", text(&out.stderr));
    std::fs::write(parent.path().join("keep.txt"), "mine").unwrap();
    let out = smartmart(&["rules", "new", "ok", "--world", "fraud", "--dir", path_str(parent.path())]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not empty"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(parent.path().join("keep.txt")).unwrap(), "mine");
    let out = smartmart(&["rules", "new", "ok", "--world", "payment", "--dir", path_str(parent.path())]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown world `payment`"), "{}", text(&out.stderr));
}

/// Node.js and npm, or a failure that says what is missing (never a skip).
fn require_node() {
    for tool in ["node", "npm"] {
        let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` is not on PATH: the JavaScript rule tests need Node.js 20+ and npm \
             (Debian: `apt-get install nodejs npm`)"
        );
    }
}

fn npm(project: &Path) -> Command {
    let mut cmd = Command::new("npm");
    cmd.current_dir(project).args(["--no-audit", "--no-fund", "--loglevel=error"]);
    cmd
}

#[test]
fn rules_new_js_projects_build_check_and_pass_their_example() {
    require_node();
    let parent = tempfile::tempdir().unwrap();
    let mut installed: Option<PathBuf> = None;
    for (world, world_name, log) in [
        ("discount", "discount-rule", "info  js-discount applied order_id=ord_example_gold amount_cents=4645"),
        ("warehouse", "warehouse-selector", "info  js-warehouse chose a warehouse order_id=ord_example_gold"),
        ("fraud", "fraud-check", "info  js-fraud checked order_id=ord_example_gold total_cents=92900"),
    ] {
        let name = format!("js-{world}");
        let project = new_rule(parent.path(), &name, world, "js");
        match &installed {
            // The first project installs its pinned componentizer from its lock file...
            None => {
                run(npm(&project).args(["ci", "--prefer-offline"]));
                installed = Some(project.join("node_modules"));
            }
            // ...the others use the same install (one 150 MB copy is enough).
            Some(modules) => std::os::unix::fs::symlink(modules, project.join("node_modules")).unwrap(),
        }
        run(npm(&project).arg("test"));
        run(npm(&project).args(["run", "build"]));
        let component = project.join(format!("js_{world}.wasm"));
        assert_checks(&component, world_name, &name);
        let stdout = assert_passes_its_example(&project, &component, &[JS_FUEL, JS_MEMORY]);
        assert!(stdout.contains(log), "{stdout}");
    }
}

/// The JavaScript coupon rule (`examples/rules/coupons-js`, built by
/// `cargo xtask guests`) answers exactly as the bundled Rust one on every
/// example, and both answer what the example expects.
#[test]
fn js_coupons_answer_as_the_rust_coupons_on_every_example() {
    let runtime = RuleRuntime::new(RuntimeOptions {
        cache_dir: Some(crate::cli::cli_data_dir().join("cache/modules")),
        max_instances: 8,
    })
    .unwrap();
    let js_budgets =
        Budgets { fuel: parse_budget(JS_FUEL) as u64, memory_bytes: parse_budget(JS_MEMORY), ..Budgets::default() };
    let examples = repo_root().join("examples/rules/coupons-js/examples");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 5, "{inputs:?}");
    for input_path in inputs {
        let input: RunInput = serde_json::from_str(&std::fs::read_to_string(&input_path).unwrap()).unwrap();
        let expected_path = input_path.to_string_lossy().replace(".input.json", ".expected.json");
        let expected: Expected = serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
        let config: ModuleConfig = input.config.clone();
        let load = |name: &str, budgets: Budgets| {
            runtime
                .load(&wasm(name), World::DiscountRule, config.clone(), budgets)
                .unwrap_or_else(|e| panic!("loading {name}: {e}"))
        };
        let rust = runner::run(&load("coupons", Budgets::default()), &input).unwrap();
        let js = runner::run(&load("coupons_js", js_budgets), &input).unwrap();
        let case = input_path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!((js.outcome, &js.result), (rust.outcome, &rust.result), "{case}");
        assert_eq!(runner::differences(&rust, &expected), Vec::<String>::new(), "{case}: Rust");
        assert_eq!(runner::differences(&js, &expected), Vec::<String>::new(), "{case}: JavaScript");
        assert_eq!(js.module.name, "coupons", "{case}");
    }
}

fn parse_budget(pair: &str) -> usize {
    pair.split_once('=').unwrap().1.parse().unwrap()
}
