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

/// `npm` in `project`, with the binary under test first on PATH (a
/// JavaScript project's build and `npm test` call `smartmart`) and its
/// module cache in the tests' data dir.
fn npm(project: &Path) -> Command {
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_smartmart")).parent().expect("the binary's folder");
    let path = std::env::join_paths(
        std::iter::once(binary_dir.to_owned())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut cmd = Command::new("npm");
    cmd.current_dir(project)
        .args(["--no-audit", "--no-fund", "--loglevel=error"])
        .env("PATH", path)
        .env("SMARTMART_DATA_DIR", crate::cli::cli_data_dir());
    cmd
}

/// Installs a JavaScript project's pinned toolchain; later projects of the
/// same test share the first one's install (a symlink).
fn npm_install(project: &Path, installed: &mut Option<PathBuf>) {
    match installed {
        None => {
            run(npm(project).args(["ci", "--prefer-offline"]));
            *installed = Some(project.join("node_modules"));
        }
        Some(modules) => std::os::unix::fs::symlink(modules, project.join("node_modules")).unwrap(),
    }
}

/// The `sha256:` digest `rules check` reports: the module's identity in the service.
fn digest(component: &Path) -> String {
    let out = smartmart(&["rules", "check", "--json", path_str(component)]);
    assert!(out.status.success(), "rules check {}: {}", component.display(), text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    report["digest"].as_str().expect("a digest").to_owned()
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
        npm_install(&project, &mut installed);
        // Builds, type-checks rule.js against the generated types, runs the
        // unit tests and every example through the component.
        let out = run(npm(&project).arg("test"));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("# fail 0") && stdout.contains("examples/order through"), "{stdout}");
        let component = project.join(format!("js_{world}.wasm"));
        assert_checks(&component, world_name, &name);
        // The default budgets suffice: no --budget.
        let stdout = assert_passes_its_example(&project, &component, &[]);
        assert!(stdout.contains(log), "{stdout}");
    }
}

/// The same JavaScript source builds to the same component, byte for byte:
/// twice in one folder, and once more in another folder; a change of the
/// source changes it.
#[test]
fn a_js_rule_builds_to_the_same_digest_every_time() {
    require_node();
    let parent = tempfile::tempdir().unwrap();
    let mut installed: Option<PathBuf> = None;
    let first = new_rule(parent.path(), "same-rule", "discount", "js");
    let second = new_rule(&parent.path().join("elsewhere"), "same-rule", "discount", "js");
    npm_install(&first, &mut installed);
    npm_install(&second, &mut installed);
    let component = |project: &Path| project.join("same_rule.wasm");
    let build = |project: &Path| {
        let _ = std::fs::remove_file(component(project));
        run(npm(project).args(["run", "build"]));
        digest(&component(project))
    };
    let built = build(&first);
    assert_eq!(build(&first), built, "a rebuild in the same folder");
    assert_eq!(build(&second), built, "a build of the same source in another folder");
    let rule = first.join("rule.js");
    let source = std::fs::read_to_string(&rule).unwrap();
    std::fs::write(&rule, source.replace("version: '1.0.0'", "version: '1.0.1'")).unwrap();
    assert_ne!(build(&first), built, "a changed rule.js");
}

/// The JavaScript coupon rule (`examples/rules/coupons-js`), built here by
/// its own `npm run build`.
fn js_coupons_component() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            require_node();
            let project = repo_root().join("examples/rules/coupons-js");
            if !project.join("node_modules/.package-lock.json").is_file() {
                run(npm(&project).args(["ci", "--prefer-offline"]));
            }
            run(npm(&project).args(["run", "build"]));
            project.join("coupons_js.wasm")
        })
        .clone()
}

fn rules_runtime() -> RuleRuntime {
    RuleRuntime::new(RuntimeOptions {
        cache_dir: Some(crate::cli::cli_data_dir().join("cache/modules")),
        max_instances: 8,
    })
    .unwrap()
}

/// The JavaScript coupon rule answers exactly as the bundled Rust one on
/// every example, and both answer what the example expects.
#[test]
fn js_coupons_answer_as_the_rust_coupons_on_every_example() {
    let runtime = rules_runtime();
    let js_component = js_coupons_component();
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
        let load = |path: &Path| {
            runtime
                .load(path, World::DiscountRule, config.clone(), Budgets::default())
                .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
        };
        let rust = runner::run(&load(&wasm("coupons")), &input).unwrap();
        let js = runner::run(&load(&js_component), &input).unwrap();
        let case = input_path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!((js.outcome, &js.result), (rust.outcome, &rust.result), "{case}");
        assert_eq!(runner::differences(&rust, &expected), Vec::<String>::new(), "{case}: Rust");
        assert_eq!(runner::differences(&js, &expected), Vec::<String>::new(), "{case}: JavaScript");
        assert_eq!(js.module.name, "coupons", "{case}");
    }
}

/// Money stays exact in JavaScript: up to 2^53 - 1 cents the JavaScript rule
/// computes what the Rust rule does; beyond, it fails the call naming the
/// amount instead of answering on a rounded one.
#[test]
fn js_rules_see_amounts_exactly_or_fail() {
    let runtime = rules_runtime();
    let input_at = |payable: u64| -> RunInput {
        let mut input: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join("examples/rules/coupons-js/examples/welcome10.input.json"))
                .unwrap(),
        )
        .unwrap();
        input["order"]["payable_cents"] = payable.into();
        input["order"]["subtotal_cents"] = payable.into();
        serde_json::from_value(input).unwrap()
    };
    let config: ModuleConfig = input_at(1).config.clone();
    let load = |path: &Path| runtime.load(path, World::DiscountRule, config.clone(), Budgets::default()).unwrap();
    let (js, rust) = (load(&js_coupons_component()), load(&wasm("coupons")));
    let largest_exact = (1u64 << 53) - 1;
    let input = input_at(largest_exact);
    let (js_answer, rust_answer) = (runner::run(&js, &input).unwrap(), runner::run(&rust, &input).unwrap());
    assert_eq!(js_answer.result, rust_answer.result);
    assert_eq!(js_answer.result[0]["amount_cents"], largest_exact / 10);
    for beyond in [largest_exact + 1, largest_exact + 2, 1 << 63, u64::MAX - 1, u64::MAX] {
        let report = runner::run(&js, &input_at(beyond)).unwrap();
        assert_eq!(report.outcome, "failed", "{beyond}: {}", report.result);
        let message = report.result.to_string();
        assert!(message.contains("beyond JavaScript's exact integers"), "{beyond}: {message}");
    }
}

/// `rules test` builds a project, loads it and runs its examples once;
/// `rules watch` does it again after a save: a broken expectation is
/// reported with its difference, and mending it passes again.
#[test]
fn rules_test_and_watch_run_a_js_projects_examples_on_every_save() {
    use std::io::BufRead as _;
    require_node();
    let parent = tempfile::tempdir().unwrap();
    let project = new_rule(parent.path(), "watched", "discount", "js");
    npm_install(&project, &mut None);
    let out = npm_like_smartmart(&project, &["rules", "test", "."]).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("example:  order ok") && stdout.contains("examples: 1 passed, 0 failed"), "{stdout}");

    let mut watch = KillOnDrop(
        npm_like_smartmart(&project, &["rules", "watch", "."])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Lines up to the end of the next round; a hung watcher fails the test
    // after a generous deadline instead of hanging the suite.
    let round = || -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(300)) {
            let done = line.starts_with("examples: ") || line.starts_with("build:    failed");
            lines.push(line);
            if done {
                return lines;
            }
        }
        panic!("rules watch printed no round's end: {lines:?}");
    };
    let first = round();
    assert_eq!(first.last().unwrap(), "examples: 1 passed, 0 failed", "{first:?}");
    let expected_path = project.join("examples/order.expected.json");
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    std::fs::write(&expected_path, expected.replace("4645", "4646")).unwrap();
    let second = round();
    assert_eq!(second.last().unwrap(), "examples: 0 passed, 1 failed", "{second:?}");
    assert!(second.iter().any(|l| l.contains("amount_cents: expected 4646, got 4645")), "{second:?}");
    std::fs::write(&expected_path, expected).unwrap();
    let third = round();
    assert_eq!(third.last().unwrap(), "examples: 1 passed, 0 failed", "{third:?}");
}

/// A child process that a failing test does not leave running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `smartmart ARGS` in `project`, as its npm scripts run it.
fn npm_like_smartmart(project: &Path, args: &[&str]) -> Command {
    let npm = npm(project);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smartmart"));
    cmd.args(args).current_dir(project).env("RUST_LOG", "warn");
    for (key, value) in npm.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    cmd
}
