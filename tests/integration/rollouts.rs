//! Watched rollouts with real components: the replay gate refuses a module
//! that traps on a stored order or on an example of the plug-in directory;
//! a canary that fails is answered by the stable version (no order fails),
//! is rolled back by the host itself when its error rate crosses its limit,
//! and stays rolled back across reloads and a restart until the manifest
//! names a new version; the canary of a new rule (no stable version),
//! rolled back having failed no order, its failures listed and logged with
//! their orders, and where "no stable version" is refused; promotion;
//! shadows of every slot, a trapping candidate counted as an error.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use smartmart::domain::customer::Tier;
use smartmart::domain::invoice::Invoice;
use smartmart::domain::status::CanaryState;
use smartmart::store::shadows::ShadowSummary;

use crate::support::example_order;
use crate::support::plugin_dir::{
    BASE_SLOTS, PluginDir, add_customers, discount_identity, guest_bytes, guest_digest, order_on, plenty_of_stock,
    reload_status, wait_for_refusal, wait_for_served,
};
use crate::support::plugin_service::PluginService;
use crate::support::server::{TestServer, send};

/// Sum of the samples of `metric` whose labels include all of `labels`.
fn metric(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{metric}{{")))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .map(|line| line.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).expect("a sample value"))
        .sum()
}

async fn metrics_text(server: &TestServer) -> String {
    let answer = send(server.request(Method::GET, "/metrics")).await;
    assert_eq!(answer.status, 200);
    answer.text()
}

async fn rollouts(server: &TestServer) -> Value {
    let answer = send(server.admin(Method::GET, "/v1/admin/rollouts")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json
}

/// The discount lines of `invoice` as (module file, amount).
fn lines(invoice: &Invoice) -> Vec<(String, u64)> {
    invoice.discounts.iter().map(|d| (d.module.clone(), d.amount_cents)).collect()
}

// ---------------------------------------------------------------------------
// The replay gate
// ---------------------------------------------------------------------------

/// Gold loyalty, then whichever flat discount `flat.wasm` holds.
const FLAT_MANIFEST: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }

[[discount]]
module = "flat.wasm"
budgets = { time_ms = 10000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_module_dropped_in_is_refused_by_the_replay_gate_naming_the_entry_and_the_order() {
    let plugins = PluginDir::new(&[("discount_v1", "flat.wasm")], FLAT_MANIFEST);
    let server = TestServer::start_with(plugins.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    let engine = &server.engine;
    plenty_of_stock(engine.pipeline(), &["TV-55-OLED", "HDMI-2M"]).await;
    let v1 = guest_digest("discount_v1");
    let bulk = guest_bytes("hostile_bulk");

    // 1. No order stored yet: the plug-in directory's example for flat.wasm
    //    (a line of quantity 5) catches it. hostile_bulk passes the smoke test.
    let mut example = example_order("gold-basic");
    example.order.lines[1].quantity = 5;
    let folder = plugins.file("examples/flat");
    std::fs::create_dir_all(&folder).unwrap();
    let input =
        serde_json::json!({ "order": example.order, "candidates": example.candidates, "payment": example.payment });
    std::fs::write(folder.join("bulk.json"), input.to_string()).unwrap();
    let before = reload_status(engine);
    plugins.replace("flat.wasm", &bulk);
    let status = wait_for_refusal(engine, before.refused).await;
    let error = status.errors.last().expect("the refusal is recorded").clone();
    assert_eq!(error.entry.as_deref(), Some("discount[2] flat.wasm / rule"), "{error:?}");
    assert_eq!(error.order_id.as_deref(), Some("examples/flat/bulk.json"), "{error:?}");
    assert!(error.error.contains("trap") && error.error.contains("BULK-MARKER"), "{error:?}");
    assert_eq!(discount_identity(engine, 1).digest, v1, "the last good set keeps serving");

    // 2. Back to v1 (nothing new to gate); orders are stored, one with a
    //    line of quantity 5.
    plugins.replace("flat.wasm", &guest_bytes("discount_v1"));
    wait_for_served(engine, status.reloads, 1, &v1).await;
    std::fs::remove_dir_all(plugins.file("examples")).unwrap();
    for (customer, cart) in [("C-1001", ("TV-55-OLED", 1)), ("C-1002", ("HDMI-2M", 2))] {
        order_on(engine.pipeline(), customer, &[cart]).await.expect("an order on v1");
    }
    let bulk_order = order_on(engine.pipeline(), "C-1003", &[("HDMI-2M", 5)]).await.expect("a bulk order on v1");
    let bulk_order = bulk_order.invoice.order_id.clone();

    // 3. Dropped in again: the replay of the stored orders catches it, naming the order.
    let before = reload_status(engine);
    plugins.replace("flat.wasm", &bulk);
    let status = wait_for_refusal(engine, before.refused).await;
    let error = status.errors.last().expect("the refusal is recorded").clone();
    assert_eq!(error.file, "flat.wasm", "{error:?}");
    assert_eq!(error.entry.as_deref(), Some("discount[2] flat.wasm / rule"), "{error:?}");
    assert_eq!(error.order_id.as_deref(), Some(bulk_order.as_str()), "{error:?}");
    assert!(error.error.contains("replay gate") && error.error.contains("trap"), "{error:?}");

    // The service never serves it: the same bulk order is served by v1.
    assert_eq!(discount_identity(engine, 1).digest, v1);
    let placed =
        order_on(engine.pipeline(), "C-1003", &[("HDMI-2M", 5)]).await.expect("a bulk order after the refusal");
    assert!(placed.invoice.discounts.iter().all(|d| d.digest != guest_digest("hostile_bulk")));
    assert_eq!(lines(&placed.invoice), [("flat.wasm".to_string(), 100)]);
    let newest_bulk = placed.invoice.order_id.clone();

    // Shown in GET /v1/admin/plugins, the rollout events and the metrics.
    let answer = send(server.admin(Method::GET, "/v1/admin/plugins")).await;
    let shown = answer.json["errors"].as_array().and_then(|e| e.last().cloned()).expect("the refusal is listed");
    assert_eq!(shown["entry"], "discount[2] flat.wasm / rule", "{shown}");
    assert_eq!(shown["order_id"], bulk_order.as_str(), "{shown}");
    assert_eq!(shown["error"], error.error.as_str());
    let events = rollouts(&server).await["events"].as_array().cloned().expect("events");
    let refused = events.iter().find(|e| e["kind"] == "refused").expect("a refused event");
    assert_eq!(refused["entry"], "discount[2] flat.wasm / rule", "{events:?}");
    assert!(refused["reason"].as_str().unwrap().contains(&bulk_order), "{refused}");
    assert!(refused["at_ms"].as_i64().unwrap() > 0);
    assert!(events.iter().any(|e| e["kind"] == "reload"), "{events:?}");
    let metrics = metrics_text(&server).await;
    assert!(metric(&metrics, "smartmart_plugin_reloads_total", &[("outcome", "refused")]) >= 2, "{metrics}");
    assert!(metric(&metrics, "smartmart_plugin_reloads_total", &[("outcome", "ok")]) >= 1, "{metrics}");

    // 4. The same module as a shadow candidate is gated too (it would only
    //    run after the answer, but a shadow that traps is no candidate).
    plugins.replace("flat.wasm", &guest_bytes("discount_v1"));
    plugins.replace("candidate.wasm", &bulk);
    let before = reload_status(engine);
    plugins.write_manifest(&format!("{FLAT_MANIFEST}shadow = {{ module = \"candidate.wasm\" }}\n"));
    let status = wait_for_refusal(engine, before.refused).await;
    let error = status.errors.last().expect("the refusal is recorded");
    assert_eq!(error.entry.as_deref(), Some("discount[2] flat.wasm / shadow candidate.wasm"), "{error:?}");
    assert_eq!(error.order_id.as_deref(), Some(newest_bulk.as_str()), "the newest failing order: {error:?}");
    assert!(engine.rules().discount[1].shadow.is_none(), "the shadow never runs");
}

/// A warehouse selector whose plan breaks a stored order (one unit too many
/// of a line of quantity 5: a plan the host refuses) is refused by the
/// replay gate on that order, run on the candidates the order saw; the
/// selector that planned it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_breaks_a_stored_order_is_refused_by_the_replay_gate_and_the_old_one_keeps_serving() {
    let plugins = PluginDir::new(&[], LOYALTY);
    let server = TestServer::start_with(plugins.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    let engine = &server.engine;
    let serving = || engine.rules().warehouse.module.as_ref().expect("a stable selector").identity().digest.clone();
    let nearest = serving();
    order_on(engine.pipeline(), "C-1001", &[("TV-55-OLED", 1), ("HDMI-2M", 2)]).await.expect("a two-line order");
    let bulk_order = order_on(engine.pipeline(), "C-1002", &[("HDMI-2M", 5)]).await.expect("a bulk order");
    let bulk_order = bulk_order.invoice.order_id.clone();

    let before = reload_status(engine);
    plugins.replace("nearest_warehouse.wasm", &guest_bytes("hostile_selector"));
    let status = wait_for_refusal(engine, before.refused).await;
    let error = status.errors.last().expect("the refusal is recorded").clone();
    assert_eq!(error.entry.as_deref(), Some("warehouse nearest_warehouse.wasm / rule"), "{error:?}");
    assert_eq!(error.order_id.as_deref(), Some(bulk_order.as_str()), "{error:?}");
    assert!(error.error.contains("replay gate") && error.error.contains("invalid_plan"), "{error:?}");
    assert!(error.error.contains("6 of HDMI-2M allocated, 5 ordered"), "{error:?}");

    // The last good selector serves: a bulk order ships exactly what it ordered.
    assert_eq!(serving(), nearest);
    let placed = order_on(engine.pipeline(), "C-1002", &[("HDMI-2M", 5)]).await.expect("a bulk order after");
    let shipped: u32 = placed.invoice.allocations.iter().flat_map(|a| &a.lines).map(|l| l.quantity).sum();
    assert_eq!(shipped, 5);
}

/// Before any order is stored, the plug-in directory's example for the
/// selector is what gates it: its call succeeds, but its plan is one the
/// pipeline would refuse, so the example refuses the module too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_whose_example_plan_the_host_would_refuse_is_refused_by_the_replay_gate() {
    let plugins = PluginDir::new(&[], LOYALTY);
    let server = TestServer::start_with(plugins.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    let engine = &server.engine;
    let serving = || engine.rules().warehouse.module.as_ref().expect("a stable selector").identity().digest.clone();
    let nearest = serving();

    // A line of quantity 5: hostile_selector allocates 6 of it.
    let mut example = example_order("gold-basic");
    example.order.lines[1].quantity = 5;
    let folder = plugins.file("examples/nearest_warehouse");
    std::fs::create_dir_all(&folder).unwrap();
    let input = serde_json::json!({ "order": example.order, "candidates": example.candidates });
    std::fs::write(folder.join("bulk.json"), input.to_string()).unwrap();

    let before = reload_status(engine);
    plugins.replace("nearest_warehouse.wasm", &guest_bytes("hostile_selector"));
    let status = wait_for_refusal(engine, before.refused).await;
    let error = status.errors.last().expect("the refusal is recorded").clone();
    assert_eq!(error.entry.as_deref(), Some("warehouse nearest_warehouse.wasm / rule"), "{error:?}");
    assert_eq!(error.order_id.as_deref(), Some("examples/nearest_warehouse/bulk.json"), "{error:?}");
    assert!(error.error.contains("invalid_plan") && error.error.contains("6 of HDMI-2M"), "{error:?}");
    assert_eq!(serving(), nearest, "the last good selector keeps serving");
}

// ---------------------------------------------------------------------------
// Canary: automatic rollback
// ---------------------------------------------------------------------------

const LOYALTY: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }
"#;

/// hostile_bulk as a canary of gold loyalty: it answers as gold loyalty
/// does, and traps on a line of quantity 5 or more.
const LOYALTY_CANARY: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }
canary = { name = "loyalty-bulk", module = "hostile_bulk.wasm", share_percent = 50, window_secs = 3600,
           min_calls = 10, max_error_rate = 0.2 }
"#;

/// The same stable version; a new canary (gold loyalty at 15 %).
const LOYALTY_CANARY_V2: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }
canary = { name = "loyalty-bulk", module = "gold_loyalty.wasm", config = { percent = "15" }, share_percent = 50,
           window_secs = 3600, min_calls = 10, max_error_rate = 0.2 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_never_fails_an_order_and_is_rolled_back_for_good_until_a_new_version() {
    let plugins = PluginDir::new(&[("hostile_bulk", "hostile_bulk.wasm")], LOYALTY);
    let server = TestServer::start_with(plugins.path(), |s| {
        s.stage_timeout = Duration::from_secs(120);
        s.watch_plugins = false;
    })
    .await;
    let pipeline = server.engine.pipeline();
    plenty_of_stock(pipeline, &["HDMI-2M"]).await;
    let customers = add_customers(pipeline, "CAN", 40, &[Tier::Gold]).await;

    // Orders of one unit each: the stored orders the gate replays.
    for customer in &customers[..10] {
        order_on(pipeline, customer, &[("HDMI-2M", 1)]).await.expect("an order before the canary");
    }
    plugins.write_manifest(LOYALTY_CANARY);
    server.engine.reload_now().await.expect("the canary passes the replay gate");
    let rules = pipeline.rules();
    let canary = rules.discount[0].canary.as_ref().expect("a canary");
    let (inside, outside): (Vec<&String>, Vec<&String>) = customers.iter().partition(|c| canary.in_share(c));
    assert!(inside.len() >= 5 && outside.len() >= 5, "a 50 % share: {} in, {} out", inside.len(), outside.len());

    // One unit: the canary answers its share, as gold loyalty would.
    for customer in &customers {
        let placed = order_on(pipeline, customer, &[("HDMI-2M", 1)]).await.expect("an order");
        let module = if canary.in_share(customer) { "hostile_bulk.wasm" } else { "gold_loyalty.wasm" };
        assert_eq!(lines(&placed.invoice), [(module.to_string(), 150)], "{customer}");
    }

    // Five units: the canary traps; the stable version answers. Not one order fails.
    let mut failures = Vec::new();
    let mut orders = 0;
    for round in 0..5 {
        for customer in &customers {
            match order_on(pipeline, customer, &[("HDMI-2M", 5)]).await {
                Ok(placed) => {
                    assert_eq!(lines(&placed.invoice), [("gold_loyalty.wasm".to_string(), 750)], "{customer}");
                    assert_eq!(placed.invoice.status, "CONFIRMED");
                }
                Err(e) => failures.push((customer.clone(), e)),
            }
            orders += 1;
        }
        if canary.control.state() == CanaryState::RolledBack {
            eprintln!("rolled back during round {round}");
            break;
        }
    }
    assert!(failures.is_empty(), "failed orders: {failures:#?}");
    assert_eq!(canary.control.state(), CanaryState::RolledBack, "after {orders} orders");

    // The reason is recorded: the store's events, the admin endpoint, the metrics.
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let answer = rollouts(&server).await;
        if answer["events"].as_array().unwrap().iter().any(|e| e["kind"] == "rollback") {
            break answer;
        }
        assert!(Instant::now() < deadline, "the rollback was never stored: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let listed = &answer["canaries"][0];
    assert_eq!(listed["entry"], "loyalty-bulk", "{answer}");
    assert_eq!(listed["slot"], "discount");
    assert_eq!(listed["state"], "rolled_back");
    assert_eq!(listed["stable"]["module"], "gold_loyalty.wasm");
    assert_eq!(listed["canary"]["module"], "hostile_bulk.wasm");
    assert_eq!(listed["canary"]["digest"], guest_digest("hostile_bulk").as_str());
    assert_eq!(listed["share_percent"], 50);
    assert!(listed["errors"].as_u64().unwrap() >= 1, "{listed}");
    let reason = listed["reason"].as_str().expect("a reason");
    assert!(reason.contains("error rate") && reason.contains("over the limit of 20.0 %"), "{reason}");
    let event = answer["events"].as_array().unwrap().iter().find(|e| e["kind"] == "rollback").unwrap().clone();
    assert_eq!(event["entry"], "loyalty-bulk");
    assert_eq!(event["reason"], reason);
    let metrics = metrics_text(&server).await;
    assert_eq!(metric(&metrics, "smartmart_canary_rollbacks_total", &[("canary", "loyalty-bulk")]), 1);
    let canary_calls = metric(&metrics, "smartmart_canary_calls_total", &[("canary", "loyalty-bulk")]);
    assert!(metric(&metrics, "smartmart_canary_calls_total", &[("outcome", "trap")]) >= 1, "{metrics}");

    // Rolled back: the stable version serves the canary's share; no canary call.
    let stable_only =
        |placed: &smartmart::pipeline::Placed| lines(&placed.invoice) == [("gold_loyalty.wasm".to_string(), 150)];
    for customer in &inside {
        let placed = order_on(pipeline, customer, &[("HDMI-2M", 1)]).await.expect("an order after the rollback");
        assert!(stable_only(&placed), "{customer}: {:?}", lines(&placed.invoice));
    }
    let metrics = metrics_text(&server).await;
    assert_eq!(metric(&metrics, "smartmart_canary_calls_total", &[("canary", "loyalty-bulk")]), canary_calls);

    // A reload keeps it rolled back.
    server.engine.reload_now().await.expect("reloading the same manifest");
    let placed = order_on(pipeline, inside[0], &[("HDMI-2M", 1)]).await.expect("an order after a reload");
    assert!(stable_only(&placed));
    assert_eq!(rollouts(&server).await["canaries"][0]["state"], "rolled_back");

    // So does a restart: the rollback is stored.
    let server = server.restart().await;
    let pipeline = server.engine.pipeline();
    let answer = rollouts(&server).await;
    assert_eq!(answer["canaries"][0]["state"], "rolled_back", "{answer}");
    assert_eq!(answer["canaries"][0]["reason"], reason);
    for customer in &inside {
        let placed = order_on(pipeline, customer, &[("HDMI-2M", 1)]).await.expect("an order after the restart");
        assert!(stable_only(&placed), "{customer}: {:?}", lines(&placed.invoice));
    }

    // Until the manifest names a new version: it runs again, afresh.
    plugins.write_manifest(LOYALTY_CANARY_V2);
    server.engine.reload_now().await.expect("a new canary version");
    let answer = rollouts(&server).await;
    assert_eq!(answer["canaries"][0]["state"], "running", "{answer}");
    assert_eq!(answer["canaries"][0]["errors"], 0);
    let placed = order_on(pipeline, inside[0], &[("HDMI-2M", 1)]).await.expect("an order on the new canary");
    assert_eq!(lines(&placed.invoice), [("gold_loyalty.wasm".to_string(), 225)], "15 % from the new canary");
}

/// A fraud canary with a configuration the check cannot use: every canary
/// call fails (`bad-config`). The slot fails closed, so a failure that
/// reached the review would flag it `RULE_FAILED`.
const FRAUD_CANARY: &str = r#"
[warehouse]
module = "nearest_warehouse.wasm"
budgets = { time_ms = 10000 }

[[fraud]]
module = "high_value.wasm"
budgets = { time_ms = 10000 }
canary = { name = "fraud-bad-config", config = { threshold_cents = "not a number" }, share_percent = 100,
           min_calls = 3, max_error_rate = 0.5 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fraud_canary_is_answered_by_the_stable_check_and_rolled_back() {
    let plugins = PluginDir::new(&[], "");
    std::fs::write(plugins.file("manifest.toml"), FRAUD_CANARY).unwrap();
    let server = TestServer::start_with(plugins.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    let pipeline = server.engine.pipeline();
    plenty_of_stock(pipeline, &["TV-55-OLED"]).await;
    for _ in 0..5 {
        let placed = order_on(pipeline, "C-1001", &[("TV-55-OLED", 1)]).await.expect("an order");
        let review = server.order_with_review(&placed.invoice.order_id, "C-1001").await;
        let review = &review.json["fraud_review"];
        // The stable check's verdict, never a failure's.
        assert_eq!(review["action"], "ALLOW", "{review}");
        assert_eq!(review["flags"], serde_json::json!([]), "{review}");
        assert_eq!(review["module"], "high_value.wasm");
    }
    let answer = rollouts(&server).await;
    let listed = &answer["canaries"][0];
    assert_eq!((listed["slot"].as_str(), listed["state"].as_str()), (Some("fraud"), Some("rolled_back")), "{answer}");
    assert_eq!(listed["errors"], 3, "rolled back at the minimum sample: {answer}");
    assert_eq!(listed["calls"], 3);
    assert_eq!(listed["canary"]["digest"], listed["stable"]["digest"], "a configuration-only canary");
    assert_ne!(listed["canary"]["config_hash"], listed["stable"]["config_hash"]);
    assert!(listed["reason"].as_str().unwrap().contains("3 of 3 calls failed"), "{answer}");
    let metrics = metrics_text(&server).await;
    assert_eq!(metric(&metrics, "smartmart_canary_calls_total", &[("canary", "fraud-bad-config")]), 3);
    assert_eq!(
        metric(&metrics, "smartmart_canary_calls_total", &[("canary", "fraud-bad-config"), ("outcome", "guest_error")]),
        3
    );
}

// ---------------------------------------------------------------------------
// Canary: a new rule (no stable version)
// ---------------------------------------------------------------------------

/// Two new stacked rules after gold loyalty, each with no stable version:
/// a flat 1.00 off that answers, and error_rule, which fails every call.
const NEW_RULE_CANARIES: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }

[[discount]]
module = "none"
budgets = { time_ms = 10000 }
canary = { name = "flat-new", module = "flat.wasm", share_percent = 100, min_calls = 3, max_error_rate = 0.5 }

[[discount]]
module = "none"
budgets = { time_ms = 10000 }
canary = { name = "failing-new", module = "error_rule.wasm", share_percent = 100, min_calls = 3,
           max_error_rate = 0.5 }
"#;

/// The JSON lines of the service's log (the last may still be being written).
fn json_log_lines(log: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    complete
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rules_failing_canary_rolls_back_failing_no_order_and_lists_each_failure_with_its_order() {
    let plugins = PluginDir::new(&[("discount_v1", "flat.wasm"), ("error_rule", "error_rule.wasm")], NEW_RULE_CANARIES);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let service = PluginService::start_logging(&dir.path().join("data"), plugins.path(), Some(&log)).await;
    service.product("NEW-RULE-SKU", 10_000).await;
    service.customer("C-NEW-1", "GOLD").await;

    // Every order is confirmed: 10 % from gold loyalty, then 1.00 from the
    // new flat rule, its line saying which canary granted it; the failing
    // rule's calls leave no line and fail nothing.
    let mut order_ids = Vec::new();
    for _ in 0..5 {
        let (status, invoice) = service.order("C-NEW-1", &[("NEW-RULE-SKU", 1)], "tok_ok").await;
        assert_eq!((status, invoice["status"].as_str()), (201, Some("CONFIRMED")), "{invoice}");
        let discounts = invoice["discounts"].as_array().expect("discount lines");
        let summary: Vec<(&str, u64, &Value, &Value)> = discounts
            .iter()
            .map(|d| (d["module"].as_str().unwrap(), d["amount_cents"].as_u64().unwrap(), &d["canary"], &d["variant"]))
            .collect();
        assert_eq!(
            summary,
            [
                ("gold_loyalty.wasm", 1000, &Value::Null, &Value::Null),
                ("flat.wasm", 100, &Value::String("flat-new".into()), &Value::Null),
            ],
            "{invoice}"
        );
        order_ids.push(invoice["order_id"].as_str().unwrap().to_string());
    }

    // Rolled back at its minimum sample, with nothing in its place; the
    // answering one runs on.
    let (status, answer) = service.admin_get("/v1/admin/rollouts").await;
    assert_eq!(status, 200, "{answer}");
    let canary = |name: &str| -> Value {
        let listed = answer["canaries"].as_array().unwrap().iter().find(|c| c["entry"] == name).cloned();
        listed.unwrap_or_else(|| panic!("no canary {name}: {answer}"))
    };
    let failing = canary("failing-new");
    assert_eq!((failing["state"].as_str(), failing["calls"].as_u64()), (Some("rolled_back"), Some(3)), "{failing}");
    assert_eq!(failing["errors"], 3, "{failing}");
    assert_eq!(failing["stable"], Value::Null, "a new rule has no stable version: {failing}");
    assert_eq!(failing["canary"]["module"], "error_rule.wasm");
    assert!(failing["reason"].as_str().unwrap().contains("3 of 3 calls failed"), "{failing}");
    let flat = canary("flat-new");
    assert_eq!((flat["state"].as_str(), flat["calls"].as_u64()), (Some("running"), Some(5)), "{flat}");
    assert_eq!(flat["stable"], Value::Null);

    // Each failed canary call is listed with its order: the first three.
    let (status, errors) = service.admin_get("/v1/admin/rule-errors").await;
    assert_eq!(status, 200, "{errors}");
    let listed: Vec<&Value> = errors.as_array().unwrap().iter().filter(|e| e["canary"] == "failing-new").collect();
    let mut listed_orders: Vec<&str> = listed.iter().map(|e| e["order_id"].as_str().expect("an order id")).collect();
    listed_orders.sort();
    let mut first_three: Vec<&str> = order_ids[..3].iter().map(String::as_str).collect();
    first_three.sort();
    assert_eq!(listed_orders, first_three, "{errors}");
    for entry in &listed {
        assert_eq!(entry["handling"], "canary_fallback", "{entry}");
        assert_eq!((entry["slot"].as_str(), entry["module"].as_str()), (Some("discount"), Some("error_rule.wasm")));
        assert_eq!(entry["cause_kind"], "guest_error", "{entry}");
        assert!(entry["cause"].as_str().unwrap().contains("deliberate failure"), "{entry}");
    }

    // And logged with its order id, canary and what the rule said.
    let mut logged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while logged.len() < 3 {
        logged = json_log_lines(&log)
            .into_iter()
            .filter(|line| line["canary"] == "failing-new" && line["cause"].is_string())
            .collect();
        assert!(Instant::now() < deadline, "no log line for each failed canary call: {logged:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut logged_orders: Vec<&str> = logged.iter().map(|l| l["order_id"].as_str().expect("an order id")).collect();
    logged_orders.sort();
    assert_eq!(logged_orders, first_three, "{logged:#?}");
    for line in &logged {
        assert_eq!(line["level"], "WARN", "{line}");
        assert!(line["cause"].as_str().unwrap().contains("deliberate failure"), "{line}");
        let error_id = line["error_id"].as_str().expect("the error id");
        assert!(listed.iter().any(|e| e["error_id"] == error_id && e["order_id"] == line["order_id"]), "{line}");
    }
    service.stop();
}

#[test]
fn no_stable_rule_is_refused_at_load_where_it_cannot_work_naming_why() {
    use smartmart::rules::{HostDefaults, RuleSet};
    let runtime = crate::support::rule_runtime();
    let defaults = HostDefaults { experiment_key: b"key".to_vec(), ..HostDefaults::default() };
    let plugins = PluginDir::new(&[("discount_v1", "flat.wasm")], "");
    let refusal = |manifest: &str| -> String {
        std::fs::write(plugins.file("manifest.toml"), manifest).unwrap();
        format!("{:#}", RuleSet::load(&runtime, plugins.path(), &defaults).err().expect("refused"))
    };
    let canary = r#"canary = { name = "n", module = "flat.wasm", share_percent = 10 }"#;

    let error = refusal(&format!("[warehouse]\nmodule = \"none\"\n{canary}\n"));
    assert!(
        error.contains("warehouse entry with module = \"none\"") && error.contains("always needs a selector"),
        "{error}"
    );
    for (entry, why) in [
        ("", "rolled out by its canary"),
        (r#"canary = { share_percent = 10 }"#, "rolled out by its canary"),
        (&format!("config = {{ amount = \"5\" }}\n{canary}"), "takes no config"),
        (&format!("shadow = {{ module = \"flat.wasm\" }}\n{canary}"), "a shadow runs beside the stable version"),
        (
            &format!("experiment = {{ name = \"e\", variants = [ {{ name = \"a\", weight = 1 }} ] }}\n{canary}"),
            "not an experiment",
        ),
    ] {
        let error = refusal(&format!("[[discount]]\nmodule = \"none\"\n{entry}\n{BASE_SLOTS}"));
        assert!(error.contains(why) && error.contains("module = \"none\""), "{entry}: {error}");
    }
    let error = refusal(&format!(
        "[[discount]]\nmodule = \"flat.wasm\"\ncanary = {{ module = \"none\", share_percent = 10 }}\n{BASE_SLOTS}"
    ));
    assert!(error.contains("a canary runs a module"), "{error}");

    // A module that is not there: the OS error is said once.
    let error = refusal(&format!("[[discount]]\nmodule = \"missing.wasm\"\n{BASE_SLOTS}"));
    assert!(error.contains("missing.wasm: cannot read the module"), "{error}");
    assert_eq!(error.matches("os error 2").count(), 1, "{error}");

    // Well-formed: no stable module; the canary's share gets the canary, nobody the stable version.
    std::fs::write(plugins.file("manifest.toml"), format!("[[discount]]\nmodule = \"none\"\n{canary}\n{BASE_SLOTS}"))
        .unwrap();
    let set = RuleSet::load(&runtime, plugins.path(), &defaults).expect("a new rule's canary loads");
    let rule = &set.discount[0];
    assert!(rule.module.is_none());
    let customers: Vec<String> = (0..40).map(|i| format!("C-{i}")).collect();
    let (inside, outside): (Vec<&String>, Vec<&String>) =
        customers.iter().partition(|c| rule.canary.as_ref().unwrap().in_share(c));
    assert!(!inside.is_empty() && !outside.is_empty());
    for customer in &customers {
        let picked = rule.pick(customer);
        assert!(picked.rule.is_none(), "{customer}: no stable version");
        assert_eq!(picked.canary.is_some(), inside.contains(&customer), "{customer}");
    }

    // So does a new fraud check.
    let fraud = "[warehouse]\nmodule = \"nearest_warehouse.wasm\"\n[[fraud]]\nmodule = \"none\"\n\
                 canary = { name = \"f\", module = \"high_value.wasm\", share_percent = 100 }\n";
    std::fs::write(plugins.file("manifest.toml"), fraud).unwrap();
    let set = RuleSet::load(&runtime, plugins.path(), &defaults).expect("a new fraud check's canary loads");
    assert!(set.fraud[0].module.is_none() && set.fraud[0].pick("C-1").canary.is_some());
}

// ---------------------------------------------------------------------------
// Canary: promotion
// ---------------------------------------------------------------------------

const FLAT_CANARY: &str = r#"
[[discount]]
module = "discount_v1.wasm"
budgets = { time_ms = 10000 }
canary = { name = "flat-v2", module = "discount_v2.wasm", share_percent = 50 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_canary_serves_everyone_and_stays_promoted_across_a_restart() {
    let plugins =
        PluginDir::new(&[("discount_v1", "discount_v1.wasm"), ("discount_v2", "discount_v2.wasm")], FLAT_CANARY);
    let server = TestServer::start_with(plugins.path(), |s| {
        s.stage_timeout = Duration::from_secs(120);
        s.watch_plugins = false;
    })
    .await;
    plenty_of_stock(server.engine.pipeline(), &["TV-55-OLED"]).await;
    let customers = add_customers(server.engine.pipeline(), "PRO", 20, &[Tier::Standard]).await;
    let rules = server.engine.rules();
    let canary = rules.discount[0].canary.as_ref().expect("a canary");
    let outside: Vec<&String> = customers.iter().filter(|c| !canary.in_share(c)).collect();
    let inside = customers.len() - outside.len();
    assert!(inside > 0 && !outside.is_empty());
    for customer in &customers {
        let placed = order_on(server.engine.pipeline(), customer, &[("TV-55-OLED", 1)]).await.expect("an order");
        let expected = if canary.in_share(customer) { ("discount_v2.wasm", 250) } else { ("discount_v1.wasm", 100) };
        assert_eq!(lines(&placed.invoice), [(expected.0.to_string(), expected.1)], "{customer}");
    }

    // The shape the dashboard reads.
    let answer = rollouts(&server).await;
    let listed = &answer["canaries"][0];
    assert_eq!(listed["entry"], "flat-v2", "{answer}");
    assert_eq!(listed["stable"]["module"], "discount_v1.wasm");
    assert_eq!(listed["stable"]["version"], "1.0.0");
    assert_eq!(listed["stable"]["digest"], guest_digest("discount_v1").as_str());
    assert_eq!(listed["stable"]["config_hash"], smartmart::rules::config_hash(&Default::default()).as_str());
    assert_eq!(listed["canary"]["version"], "2.0.0");
    assert_eq!(listed["state"], "running");
    assert_eq!(listed["calls"], inside as u64);
    assert_eq!(listed["errors"], 0);
    assert_eq!(listed["window"]["window_calls"], inside as u64);
    assert_eq!(listed["limits"]["window_secs"], 300);
    assert_eq!(listed["limits"]["min_calls"], 50);
    let plugins_answer = send(server.admin(Method::GET, "/v1/admin/plugins")).await;
    assert!(
        plugins_answer.json["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["variant"] == "canary" && p["file"] == "discount_v2.wasm"),
        "{}",
        plugins_answer.text()
    );

    // Bad calls first.
    send(server.request(Method::POST, "/v1/admin/rollouts/flat-v2/promote")).await.assert_error(401, "UNAUTHENTICATED");
    send(server.admin(Method::POST, "/v1/admin/rollouts/nope/promote")).await.assert_error(404, "NOT_FOUND");
    send(server.admin(Method::POST, "/v1/admin/rollouts/bad%20name/promote"))
        .await
        .assert_error(400, "INVALID_REQUEST");

    let promoted = send(server.admin(Method::POST, "/v1/admin/rollouts/flat-v2/promote")).await;
    assert_eq!(promoted.status, 200, "{}", promoted.text());
    assert_eq!(promoted.json["state"], "promoted");
    assert!(promoted.json["reason"].as_str().unwrap().contains("promoted"));
    send(server.admin(Method::POST, "/v1/admin/rollouts/flat-v2/promote")).await.assert_error(409, "CONFLICT");
    let events = rollouts(&server).await["events"].clone();
    assert_eq!(events[0]["kind"], "promote", "{events}");
    assert_eq!(events[0]["entry"], "flat-v2");

    // Everyone gets v2, also after a restart.
    for customer in &outside {
        let placed = order_on(server.engine.pipeline(), customer, &[("TV-55-OLED", 1)]).await.expect("an order");
        assert_eq!(lines(&placed.invoice), [("discount_v2.wasm".to_string(), 250)], "{customer}");
    }
    let server = server.restart().await;
    assert_eq!(rollouts(&server).await["canaries"][0]["state"], "promoted");
    for customer in &outside {
        let placed = order_on(server.engine.pipeline(), customer, &[("TV-55-OLED", 1)]).await.expect("an order");
        assert_eq!(lines(&placed.invoice), [("discount_v2.wasm".to_string(), 250)], "after the restart: {customer}");
    }
}

// ---------------------------------------------------------------------------
// Shadows of every slot
// ---------------------------------------------------------------------------

/// A shadow in each slot: hostile_bulk beside gold loyalty, the selector
/// beside itself (another configuration), the fraud check with a threshold
/// of 10.00.
const SHADOWS: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }
shadow = { module = "hostile_bulk.wasm" }

[warehouse]
module = "nearest_warehouse.wasm"
budgets = { time_ms = 10000 }
shadow = { module = "nearest_warehouse.wasm", config = { note = "same selector" } }

[[fraud]]
module = "high_value.wasm"
fail_mode = "open"
budgets = { time_ms = 10000 }
shadow = { module = "high_value.wasm", config = { threshold_cents = "1000" } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_run_in_every_slot_named_by_version_and_config_and_a_trap_is_an_error() {
    let plugins = PluginDir::new(&[("hostile_bulk", "hostile_bulk.wasm")], "");
    std::fs::write(plugins.file("manifest.toml"), SHADOWS).unwrap();
    let server = TestServer::start_with(plugins.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    let pipeline = server.engine.pipeline();
    plenty_of_stock(pipeline, &["HDMI-2M", "TV-55-OLED"]).await;
    for (customer, cart) in [("C-1001", ("HDMI-2M", 1)), ("C-1001", ("HDMI-2M", 5)), ("C-1002", ("TV-55-OLED", 1))] {
        let order = order_on(pipeline, customer, &[cart]).await.expect("an order with shadows");
        // The shadows change nothing: gold loyalty's line only.
        assert!(order.invoice.discounts.iter().all(|d| d.module == "gold_loyalty.wasm"), "{:?}", lines(&order.invoice));
    }
    server.engine.drain().await.expect("the fraud reviews");

    let store = pipeline.store().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let summaries: Vec<ShadowSummary> = loop {
        let summaries = store.shadow_summaries().await.expect("the shadow summaries");
        if summaries.len() == 3 && summaries.iter().all(|s| s.orders == 3) {
            break summaries;
        }
        assert!(Instant::now() < deadline, "the shadow runs never all landed: {summaries:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let of = |slot: &str| summaries.iter().find(|s| s.slot == slot).unwrap_or_else(|| panic!("no {slot} shadow"));
    let rules = pipeline.rules();

    // Discount: the trap on the 5-unit order is an error, not a difference.
    let discount = of("discount");
    assert_eq!(discount.candidate_module, "hostile_bulk.wasm");
    assert_eq!(discount.candidate_name, "hostile-bulk");
    assert_eq!((discount.orders, discount.errors, discount.differing_orders), (3, 1, 0), "{discount:#?}");
    assert!((discount.error_rate - 1.0 / 3.0).abs() < 1e-9);
    let failed: String = server
        .db()
        .query_row("SELECT candidate FROM shadow_runs WHERE slot = 'discount' AND failed = 1", [], |r| r.get(0))
        .expect("the failed run");
    assert!(failed.contains("\"kind\":\"trap\""), "{failed}");

    // Warehouse: the selector beside itself agrees; its config is shown.
    let warehouse = of("warehouse");
    assert_eq!((warehouse.orders, warehouse.errors, warehouse.differing_orders), (3, 0, 0), "{warehouse:#?}");
    assert_eq!(warehouse.candidate_config, serde_json::json!({ "note": "same selector" }));
    let shadow = rules.warehouse.shadow.as_ref().unwrap();
    assert_eq!(warehouse.candidate_config_hash, shadow.config_hash());
    assert_eq!(warehouse.candidate_version, shadow.identity().version);

    // Fraud: a 10.00 threshold escalates every order the active check allows.
    let fraud = of("fraud");
    assert_eq!((fraud.orders, fraud.errors, fraud.differing_orders), (3, 0, 3), "{fraud:#?}");
    assert_eq!(fraud.candidate_config["threshold_cents"], "1000");
    assert_eq!(fraud.candidate_name, rules.fraud[0].shadow.as_ref().unwrap().identity().name);

    // GET /v1/admin/experiments names each by version and configuration.
    let answer = send(server.admin(Method::GET, "/v1/admin/experiments")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let listed: Vec<&Value> = answer.json.as_array().unwrap().iter().filter(|e| e["kind"] == "shadow").collect();
    assert_eq!(listed.len(), 3, "{}", answer.text());
    for entry in listed {
        let summary: &ShadowSummary = of(entry["slot"].as_str().unwrap());
        let name = entry["name"].as_str().unwrap();
        assert!(name.contains(&format!("{}@{}", summary.candidate_name, summary.candidate_version)), "{name}");
        assert!(name.contains(&summary.candidate_config_hash[..19]), "{name}");
        assert_eq!(entry["shadow"], serde_json::to_value(summary).unwrap());
    }
}
