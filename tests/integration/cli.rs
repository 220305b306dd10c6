//! `smartmart rules check | run`, the real binary on the real components.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{repo_root, wasm};

/// Bundled rules (and the example rule): file name, world name, rule name.
const RULES: [(&str, &str, &str); 5] = [
    ("gold_loyalty", "discount-rule", "gold-loyalty"),
    ("coupons", "discount-rule", "coupons"),
    ("nearest_warehouse", "warehouse-selector", "nearest-warehouse"),
    ("high_value", "fraud-check", "high-value"),
    ("clearance", "discount-rule", "clearance"),
];

/// The data dir the CLI tests share: its `cache/modules/` keeps compiled
/// modules across runs (a JavaScript rule takes seconds to compile).
pub fn cli_data_dir() -> PathBuf {
    repo_root().join("target/test-cli-data")
}

/// Runs the real `smartmart` binary with `args`, its module cache in [`cli_data_dir`].
pub fn smartmart(args: &[&str]) -> Output {
    smartmart_in(&cli_data_dir(), args)
}

/// Runs the real `smartmart` binary with `args` on the data dir `data_dir`.
pub fn smartmart_in(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smartmart"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("SMARTMART_DATA_DIR", data_dir)
        .output()
        .expect("running the smartmart binary")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[test]
fn rules_check_prints_world_name_version_digest_and_imports() {
    for (name, world, rule) in RULES {
        let file = wasm(name);
        let out = smartmart(&["rules", "check", path_str(&file)]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{name}: {}{stdout}", text(&out.stderr));
        assert!(stdout.contains(&format!("world:    smartmart:rules/{world}@0.1.0")), "{name}:\n{stdout}");
        assert!(stdout.contains(&format!("name:     {rule}\n")), "{name}:\n{stdout}");
        assert!(stdout.contains("version:  1.0.0\n"), "{name}:\n{stdout}");
        let digest = stdout.lines().find_map(|l| l.strip_prefix("digest:   sha256:")).expect("a digest line");
        assert_eq!(digest.len(), 64, "{digest}");
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{digest}");
        let imports = stdout.split_once("imports:\n").expect("an imports section").1;
        assert!(imports.contains("  smartmart:rules/log@0.1.0"), "{name}:\n{stdout}");
    }
}

#[test]
fn rules_check_json_parses() {
    for (name, world, rule) in RULES {
        let file = wasm(name);
        let out = smartmart(&["rules", "check", "--json", path_str(&file)]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(report["world"], world, "{report}");
        assert_eq!(report["world_name"], format!("smartmart:rules/{world}@0.1.0"), "{report}");
        assert_eq!(report["name"], rule, "{report}");
        assert_eq!(report["version"], "1.0.0", "{report}");
        assert_eq!(report["file"], format!("{name}.wasm"), "{report}");
        assert!(report["digest"].as_str().unwrap().starts_with("sha256:"), "{report}");
        assert_eq!(report["size_bytes"].as_u64(), Some(std::fs::metadata(&file).unwrap().len()));
        let imports = report["imports"].as_array().expect("imports is a list");
        assert!(imports.iter().any(|i| i == "smartmart:rules/types@0.1.0"), "{report}");
    }
}

#[test]
fn rules_run_prints_the_outcome_and_the_fuel_used() {
    let input = repo_root().join("examples/orders/gold-basic.json");
    for (name, _, rule) in RULES {
        let file = wasm(name);
        let mut args = vec!["rules", "run", "--json", path_str(&file), "--input", path_str(&input)];
        if name == "coupons" {
            args.extend(["--config", "code.WELCOME10=percent:10", "--config", "code.FLAT500=amount:500"]);
        }
        let out = smartmart(&args);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(report["outcome"], "ok", "{name}: {report}");
        assert_eq!(report["module"]["name"], rule, "{report}");
        assert!(report["usage"]["fuel"]["used"].as_u64().is_some_and(|f| f > 0), "{name}: {report}");
        assert!(report["usage"]["wall_time_ms"]["used"].as_f64().is_some_and(|ms| ms > 0.0), "{name}: {report}");
    }
}

#[test]
fn rules_run_reports_each_budget_with_its_unit_and_what_the_rule_logged() {
    let (file, input) = (wasm("coupons"), repo_root().join("examples/orders/gold-basic.json"));
    let args = ["rules", "run", path_str(&file), "--input", path_str(&input), "--config", "code.WELCOME10=percent:10"];
    let out = smartmart(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("outcome:  ok\n"), "{stdout}");
    assert!(stdout.contains("\"amount_cents\": 9290"), "{stdout}");
    assert!(stdout.contains("coupons applied order_id=ord_example_gold outcome=9290"), "{stdout}");
    assert!(stdout.contains(" of 50,000,000 instructions ("), "{stdout}");
    assert!(stdout.contains(" of 16.0 MiB peak ("), "{stdout}");
    assert!(stdout.contains(" of 1000.0 ms ("), "{stdout}");
    assert!(stdout.contains(" of 64.0 KiB ("), "{stdout}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    json_args.extend(["--budget", "fuel=20000000", "--budget", "memory_bytes=8388608"]);
    let out = smartmart(&json_args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let usage = &report["usage"];
    assert_eq!(usage["fuel"]["limit"], 20_000_000, "{report}");
    assert!(usage["fuel"]["used"].as_u64().is_some_and(|f| f > 0 && f < 20_000_000), "{report}");
    assert_eq!(usage["peak_memory_bytes"]["limit"], 8 << 20, "{report}");
    assert!(usage["peak_memory_bytes"]["used"].as_u64().is_some_and(|m| m > 0), "{report}");
    assert_eq!(usage["wall_time_ms"]["limit"], 1000.0, "{report}");
    assert_eq!(usage["output_bytes"]["limit"], 64 << 10, "{report}");
    assert!(usage["output_bytes"]["used"].as_u64().is_some_and(|o| o > 0), "{report}");
    assert_eq!(report["log"][0]["level"], "debug", "{report}");
    assert_eq!(report["log"][0]["message"], "coupons applied", "{report}");
    assert_eq!(report["log"][0]["fields"][1], serde_json::json!(["outcome", "9290"]), "{report}");
}

#[test]
fn rules_run_refuses_an_unknown_budget() {
    let (file, input) = (wasm("coupons"), repo_root().join("examples/orders/gold-basic.json"));
    let out = smartmart(&["rules", "run", path_str(&file), "--input", path_str(&input), "--budget", "cpu=1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown budget"), "{}", text(&out.stderr));
}

#[test]
fn rules_run_expect_passes_on_the_expected_answer_and_lists_each_difference_otherwise() {
    let (file, input) = (wasm("gold_loyalty"), repo_root().join("examples/orders/gold-basic.json"));
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.json");
    let line = serde_json::json!({"rule": "gold-loyalty", "description": "GOLD tier 10%", "amount_cents": 9290,
        "reasons": ["tier=GOLD", "percent=10"]});
    std::fs::write(&expected, serde_json::json!({"outcome": "ok", "result": [line]}).to_string()).unwrap();
    let run =
        || smartmart(&["rules", "run", path_str(&file), "--input", path_str(&input), "--expect", path_str(&expected)]);
    let out = run();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("expect:   matches "), "{stdout}");

    let mut wrong = line.clone();
    wrong["amount_cents"] = 9300.into();
    wrong["reasons"] = serde_json::json!(["tier=GOLD"]);
    std::fs::write(&expected, serde_json::json!({"outcome": "ok", "result": [wrong]}).to_string()).unwrap();
    let out = run();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("expect:   2 difference(s) from "), "{stdout}");
    assert!(stdout.contains("  result[0].amount_cents: expected 9300, got 9290\n"), "{stdout}");
    assert!(stdout.contains("  result[0].reasons[1]: not expected, got \"percent=10\"\n"), "{stdout}");

    std::fs::write(&expected, r#"{"outcome": "refused"}"#).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("outcome: expected \"refused\", got \"ok\""), "{}", text(&out.stdout));
}

#[test]
fn rules_run_compiles_into_the_data_dirs_module_cache_says_so_and_reuses_it() {
    let data_dir = tempfile::tempdir().unwrap();
    let (file, input) = (wasm("coupons"), repo_root().join("examples/orders/gold-basic.json"));
    // No --world and a --config: the world is detected on the one compiled artifact.
    let args = ["rules", "run", path_str(&file), "--input", path_str(&input), "--config", "code.X=percent:5"];
    let artifacts = || -> Vec<(PathBuf, std::time::SystemTime)> {
        let dir = data_dir.path().join("cache/modules");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::metadata(&p).unwrap().modified().unwrap()))
            .collect()
    };
    let out = smartmart_in(data_dir.path(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The compile is announced on stderr (stdout stays the report).
    let stderr = text(&out.stderr);
    assert!(stderr.contains("compiling the module (") && stderr.contains("compiled in "), "{stderr}");
    let first = artifacts();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].0.extension().is_some_and(|e| e == "cwasm"), "{first:?}");
    let out = smartmart_in(data_dir.path(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(artifacts(), first, "the second run compiled again");
    assert!(!text(&out.stderr).contains("compiling"), "{}", text(&out.stderr));
}

#[test]
fn rules_run_answers_each_world_on_the_example_orders() {
    let input = |name: &str| repo_root().join(format!("examples/orders/{name}.json"));
    let run = |rule: &str, order: &str| -> serde_json::Value {
        let (file, input) = (wasm(rule), input(order));
        let out = smartmart(&["rules", "run", "--json", path_str(&file), "--input", path_str(&input)]);
        assert!(out.status.success(), "{rule} on {order}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    };
    assert_eq!(run("gold_loyalty", "gold-basic")["result"][0]["amount_cents"], 9_290);
    let plan = run("nearest_warehouse", "gold-basic");
    assert_eq!(plan["result"]["allocations"][0]["warehouse_id"], "WH-BLR", "{plan}");
    let refused = run("nearest_warehouse", "silver-out-of-stock");
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert_eq!(refused["result"]["kind"], "cannot_fulfil", "{refused}");
    assert_eq!(refused["result"]["sku"], "FRIDGE-500L", "{refused}");
    let verdict = run("high_value", "high-value");
    assert_eq!(verdict["result"]["action"], "ESCALATE", "{verdict}");
    assert_eq!(verdict["result"]["flags"][0], "HIGH_VALUE", "{verdict}");
}

#[test]
fn rules_check_refuses_garbage_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not_a_rule.wasm");
    std::fs::write(&file, b"garbage, not WebAssembly").unwrap();
    let out = smartmart(&["rules", "check", path_str(&file)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not_a_rule.wasm") && stderr.contains("not WebAssembly"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn rules_check_refuses_a_socket_importing_rule_naming_the_file() {
    let file = wasm("hostile_sockets");
    let out = smartmart(&["rules", "check", path_str(&file)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("hostile_sockets.wasm") && stderr.contains("wasi:sockets/"), "{stderr}");
}

#[test]
fn rules_check_refuses_a_missing_file() {
    let out = smartmart(&["rules", "check", "/nonexistent/rule.wasm"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/rule.wasm"), "{}", text(&out.stderr));
}

#[test]
fn rules_run_on_a_runaway_rule_exits_2_with_outcome_failed_and_its_usage() {
    let (file, input) = (wasm("hostile_loop"), repo_root().join("examples/orders/gold-basic.json"));
    let out = smartmart(&["rules", "run", "--json", path_str(&file), "--input", path_str(&input)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["outcome"], "failed", "{report}");
    let kind = report["result"]["kind"].as_str().unwrap();
    assert!(kind == "fuel_budget" || kind == "time_budget", "{report}");
    // What it used up to the failure is there, not null.
    let usage = &report["usage"];
    assert!(usage["fuel"]["used"].as_u64().is_some_and(|f| f > 0), "{report}");
    if kind == "fuel_budget" {
        assert_eq!(usage["fuel"]["used"], usage["fuel"]["limit"], "{report}");
    }
    assert!(usage["peak_memory_bytes"]["used"].as_u64().is_some_and(|m| m > 0), "{report}");
    assert!(usage["output_bytes"].is_null(), "no answer, no output size: {report}");

    let out = smartmart(&["rules", "run", path_str(&file), "--input", path_str(&input)]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("outcome:  failed\n"), "{stdout}");
    assert!(stdout.contains(" of 50,000,000 instructions ("), "{stdout}");
    assert!(stdout.contains("output       none (the call produced no answer)"), "{stdout}");
}

/// `rules run` of hostile_output configured to answer `lines` one-cent
/// lines with empty descriptions, under an output budget of `budget` bytes
/// (the default 64 KiB when `None`): the JSON report, or the text one.
fn run_output_lines(lines: usize, budget: Option<usize>, json: bool) -> Output {
    let (file, input) = (wasm("hostile_output"), repo_root().join("examples/orders/gold-basic.json"));
    let config = [format!("lines={lines}"), "description_chars=0".to_string()];
    let mut args = vec!["rules", "run", path_str(&file), "--input", path_str(&input)];
    args.extend(["--config", config[0].as_str(), "--config", config[1].as_str()]);
    let budget = budget.map(|b| format!("output_bytes={b}"));
    if let Some(budget) = &budget {
        args.extend(["--budget", budget.as_str()]);
    }
    if json {
        args.push("--json");
    }
    smartmart(&args)
}

fn output_report(lines: usize, budget: Option<usize>) -> serde_json::Value {
    let out = run_output_lines(lines, budget, true);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)))
}

/// The output `rules run` reports for an answer (`None` for a failure).
fn reported_output(report: &serde_json::Value) -> Option<u64> {
    report["usage"]["output_bytes"]["used"].as_u64()
}

fn failed_on_output(report: &serde_json::Value) -> bool {
    report["outcome"] == "failed" && report["result"]["kind"] == "output_budget"
}

#[test]
fn rules_run_reports_the_output_the_budget_charges_just_under_it_and_fails_just_over() {
    // What one line costs the budget, as reported: every line the same.
    let one = reported_output(&output_report(1, None)).expect("one line answers");
    assert_eq!(reported_output(&output_report(2, None)), Some(2 * one));

    // The most lines the default budget holds: reported at most 100 %, the
    // figure the budget's limit is compared with.
    let limit = 64 << 10;
    let most = limit / one as usize;
    let under = output_report(most, None);
    assert_eq!(under["outcome"], "ok", "{under}");
    assert_eq!(under["usage"]["output_bytes"]["limit"], limit, "{under}");
    let used = reported_output(&under).expect("an answer's output");
    assert_eq!(used, most as u64 * one, "{under}");
    assert!(used <= limit as u64, "{under}");
    let out = run_output_lines(most, None, false);
    let stdout = text(&out.stdout);
    let line = stdout.lines().find(|l| l.trim_start().starts_with("output ")).expect("an output line");
    let share: f64 =
        line.rsplit_once('(').and_then(|(_, s)| s.strip_suffix(" %)")).and_then(|s| s.parse().ok()).unwrap();
    assert!(share <= 100.0 && share > 99.0, "{line}");

    // One line more goes over: the call fails on its output budget.
    let over = output_report(most + 1, None);
    assert!(failed_on_output(&over), "{over}");

    // The reported figure is the charge itself: a budget of exactly that
    // much holds the answer, one byte less refuses it.
    let exact = output_report(most, Some(used as usize));
    assert_eq!((exact["outcome"].as_str(), reported_output(&exact)), (Some("ok"), Some(used)), "{exact}");
    assert!(failed_on_output(&output_report(most, Some(used as usize - 1))));
}
