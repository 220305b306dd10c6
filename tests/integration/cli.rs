//! `smartmart rules check | run`, the real binary on the real components.

use std::path::Path;
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

fn smartmart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smartmart"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running the smartmart binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
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
        let mut args = vec!["rules", "run", path_str(&file), "--input", path_str(&input)];
        if name == "coupons" {
            args.extend(["--config", "code.WELCOME10=percent:10", "--config", "code.FLAT500=amount:500"]);
        }
        let out = smartmart(&args);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(report["outcome"], "ok", "{name}: {report}");
        assert_eq!(report["module"]["name"], rule, "{report}");
        assert!(report["usage"]["fuel"].as_u64().is_some_and(|f| f > 0), "{name}: {report}");
        assert!(report["usage"]["elapsed"].as_f64().is_some_and(|us| us > 0.0), "{name}: {report}");
    }
}

#[test]
fn rules_run_answers_each_world_on_the_example_orders() {
    let input = |name: &str| repo_root().join(format!("examples/orders/{name}.json"));
    let run = |rule: &str, order: &str| -> serde_json::Value {
        let (file, input) = (wasm(rule), input(order));
        let out = smartmart(&["rules", "run", path_str(&file), "--input", path_str(&input)]);
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
fn rules_run_on_a_runaway_rule_exits_2_with_outcome_failed() {
    let (file, input) = (wasm("hostile_loop"), repo_root().join("examples/orders/gold-basic.json"));
    let out = smartmart(&["rules", "run", path_str(&file), "--input", path_str(&input)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["outcome"], "failed", "{report}");
    let kind = report["result"]["kind"].as_str().unwrap();
    assert!(kind == "fuel_budget" || kind == "time_budget", "{report}");
}
