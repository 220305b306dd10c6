//! A/B figures a business can read, through the real `smartmart serve`:
//! an "off" arm (`module = "none"`) skips the new stacked rule and keeps the
//! slot's base rules; every arm's figures — orders, fired, discount,
//! revenue, payment failures, rule errors, latency percentiles — are split
//! by (module digest, config hash), kept in the store, survive a restart
//! and grow from where they were; the confidence interval of the difference
//! in mean order value is the one Welch's formula gives on the orders'
//! totals. Experiments on the warehouse and fraud slots show the figures of
//! their slot, as the invoices and the escalations list say: stock-outs,
//! split shipments and distance per selector, escalations per fraud check,
//! with their intervals. Through the store API: figures from two stores
//! (two writers) on one database add up, and figures the store refused are
//! kept and added later.

use std::collections::BTreeMap;

use serde_json::Value;
use smartmart::rules::ModuleConfig;
use smartmart::rules::config_hash;
use smartmart::store::experiments::{ArmFigures, ArmKey};
use smartmart::store::{Store, StoreOptions};
use smartmart::test_support::{Arm, ArmCall, ExperimentFigures, Settled};
use smartmart::test_support::{Moments, welch_interval};

use crate::support::plugin_dir::{PluginDir, guest_digest};
use crate::support::plugin_service::PluginService as Service;

/// Gold loyalty (10 %) as the base rule; a flat "bundle deal" stacked after
/// it, measured against its absence.
fn manifest(on_arm: &str) -> String {
    format!(
        r#"
[[discount]]
module = "gold_loyalty.wasm"
config = {{ percent = "10" }}
budgets = {{ time_ms = 10000 }}

[[discount]]
module = "bundle_deal.wasm"
budgets = {{ time_ms = 10000 }}
experiment = {{ name = "bundle", variants = [
    {{ name = "off", weight = 50, module = "none" }},
    {{ name = "on", weight = 50{on_arm} }} ] }}
"#
    )
}

const SKU: &str = "AB-WIDGET";
const PRICE: u64 = 10_000;
const CUSTOMERS: usize = 24;

fn customer(n: usize) -> String {
    format!("C-ABF-{n:02}")
}

/// What the invoices say one arm should show.
#[derive(Debug, Default, Clone)]
struct Expected {
    orders: u64,
    fired: u64,
    discount_cents: u64,
    confirmed: Vec<u64>,
    payment_failures: u64,
}

impl Expected {
    fn moments(&self) -> Moments {
        Moments {
            n: self.confirmed.len() as u64,
            sum: self.confirmed.iter().sum::<u64>() as f64,
            sum_squares: self.confirmed.iter().map(|&v| v as f64 * v as f64).sum(),
        }
    }
}

/// Places one order per customer; checks each invoice's discount lines
/// (the base rule always, the bundle deal only on the "on" arm) and returns
/// the arm of each customer and the expected figures per arm.
async fn place_orders(service: &Service, bundle_cents: u64) -> (BTreeMap<String, String>, BTreeMap<String, Expected>) {
    let mut arms = BTreeMap::new();
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    for n in 0..CUSTOMERS {
        let id = customer(n);
        let quantity = 1 + (n % 3) as u32;
        let payment = if n % 6 == 5 { "tok_decline" } else { "tok_ok" };
        let (status, invoice) = service.order(&id, &[(SKU, quantity)], payment).await;
        let subtotal = PRICE * u64::from(quantity);
        let lines = invoice["discounts"].as_array().expect("discount lines").clone();
        // The base rule applies on both arms.
        assert_eq!(lines[0]["module"], "gold_loyalty.wasm", "{id}: {lines:?}");
        assert_eq!(lines[0]["amount_cents"], subtotal / 10, "{id}: {lines:?}");
        let arm = match lines.len() {
            1 => "off",
            2 => {
                assert_eq!(lines[1]["module"], "bundle_deal.wasm", "{id}: {lines:?}");
                assert_eq!(lines[1]["variant"], "on", "{id}: {lines:?}");
                assert_eq!(lines[1]["amount_cents"], bundle_cents, "{id}: {lines:?}");
                "on"
            }
            _ => panic!("{id}: unexpected discount lines {lines:?}"),
        };
        let total = invoice["total_cents"].as_u64().expect("a total");
        assert_eq!(total, subtotal - subtotal / 10 - if arm == "on" { bundle_cents } else { 0 }, "{id}");
        let e = expected.entry(arm.to_string()).or_default();
        e.orders += 1;
        if arm == "on" {
            e.fired += 1;
            e.discount_cents += bundle_cents;
        }
        match status {
            201 => e.confirmed.push(total),
            402 => e.payment_failures += 1,
            other => panic!("{id}: {other}"),
        }
        arms.insert(id, arm.to_string());
    }
    (arms, expected)
}

fn variant<'a>(experiments: &'a Value, name: &str) -> &'a Value {
    let experiment = experiments
        .as_array()
        .expect("an array")
        .iter()
        .find(|e| e["name"] == "bundle")
        .unwrap_or_else(|| panic!("the experiment is listed: {experiments}"));
    assert_eq!(experiment["slot"], "discount");
    experiment["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("variant {name} listed: {experiment}"))
}

fn close(actual: &Value, expected: f64, what: &str) {
    let actual = actual.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {actual}"));
    assert!((actual - expected).abs() <= 1e-6 * expected.abs().max(1.0), "{what}: {actual} is not {expected}");
}

/// Checks an arm's figures (its variant totals) against the invoices'.
fn check_arm(experiments: &Value, name: &str, e: &Expected) {
    let v = variant(experiments, name);
    assert_eq!(v["orders"], e.orders, "{name}: {v}");
    assert_eq!(v["fired_orders"], e.fired, "{name}: {v}");
    assert_eq!(v["discount_cents"], e.discount_cents, "{name}: {v}");
    assert_eq!(v["confirmed_orders"], e.confirmed.len() as u64, "{name}: {v}");
    assert_eq!(v["revenue_cents"], e.confirmed.iter().sum::<u64>(), "{name}: {v}");
    assert_eq!(v["payment_failures"], e.payment_failures, "{name}: {v}");
    assert_eq!(v["errors"], 0, "{name}: {v}");
    close(&v["mean_order_value_cents"], e.moments().mean().expect("confirmed orders"), name);
    if name == "off" {
        assert_eq!(v["off"], true);
        assert_eq!((v["module"].as_str(), v["digest"].as_str()), (Some("none"), Some("none")), "{v}");
        // Nothing ran: no calls, no latency, no interval against itself.
        assert_eq!(v["mean_latency_us"], 0.0, "{v}");
        assert!(v["latency_p50_us"].is_null() && v["vs_control"].is_null(), "{v}");
    } else {
        assert_eq!(v["off"], false);
        assert!(v["latency_p50_us"].as_f64().is_some_and(|p| p > 0.0), "{v}");
        assert!(v["latency_p99_us"].as_f64() >= v["latency_p50_us"].as_f64(), "{v}");
        assert!(v["mean_latency_us"].as_f64().is_some_and(|m| m > 0.0), "{v}");
    }
}

/// The "on" arm's interval against the control ("off", listed first) is
/// Welch's on the confirmed orders' totals.
fn check_interval(experiments: &Value, off: &Expected, on: &Expected) {
    let expected = welch_interval(&off.moments(), &on.moments(), 0.95).expect("two confirmed orders per arm");
    let d = &variant(experiments, "on")["vs_control"];
    close(&d["difference"], expected.difference, "difference");
    close(&d["low"], expected.low, "low");
    close(&d["high"], expected.high, "high");
    close(&d["degrees_of_freedom"], expected.degrees_of_freedom, "degrees of freedom");
    assert_eq!(d["level"], 0.95);
}

fn add(a: &Expected, b: &Expected) -> Expected {
    Expected {
        orders: a.orders + b.orders,
        fired: a.fired + b.fired,
        discount_cents: a.discount_cents + b.discount_cents,
        confirmed: a.confirmed.iter().chain(&b.confirmed).copied().collect(),
        payment_failures: a.payment_failures + b.payment_failures,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_arm_keeps_the_base_rules_and_figures_survive_a_restart_split_by_config() {
    let plugins = PluginDir::new(&[("discount_v2", "bundle_deal.wasm")], &manifest(""));
    let data = tempfile::tempdir().expect("a data dir");
    let service = Service::start(data.path(), plugins.path()).await;
    service.product(SKU, PRICE).await;
    for n in 0..CUSTOMERS {
        service.customer(&customer(n), "GOLD").await;
    }

    let (arms, first) = place_orders(&service, 250).await;
    assert!(first.contains_key("off") && first.contains_key("on"), "both arms among the customers: {arms:?}");
    let (status, experiments) = service.admin_get("/v1/admin/experiments").await;
    assert_eq!(status, 200, "{experiments}");
    check_arm(&experiments, "off", &first["off"]);
    check_arm(&experiments, "on", &first["on"]);
    check_interval(&experiments, &first["off"], &first["on"]);
    // One row per (digest, config hash): the module with its (empty) config.
    let digest = guest_digest("discount_v2");
    let default_config = config_hash(&ModuleConfig::new());
    let on = variant(&experiments, "on");
    assert_eq!((on["digest"].as_str(), on["config_hash"].as_str()), (Some(&*digest), Some(&*default_config)));
    let rows = on["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{on}");
    assert_eq!(
        (rows[0]["module_digest"].as_str(), rows[0]["config_hash"].as_str()),
        (Some(&*digest), Some(&*default_config))
    );
    assert_eq!(rows[0]["orders"], first["on"].orders);
    let off_rows = variant(&experiments, "off")["rows"].as_array().expect("rows").clone();
    assert_eq!(off_rows.len(), 1);
    assert_eq!(
        (off_rows[0]["module_digest"].as_str(), off_rows[0]["config_hash"].as_str()),
        (Some("none"), Some("none"))
    );
    // The loaded rules show the arm's config hash; the off arm loads nothing.
    let (_, plugins_answer) = service.admin_get("/v1/admin/plugins").await;
    let listed: Vec<&Value> =
        plugins_answer["plugins"].as_array().expect("plugins").iter().filter(|p| p["experiment"] == "bundle").collect();
    assert_eq!(listed.len(), 1, "{plugins_answer}");
    assert_eq!(
        (listed[0]["variant"].as_str(), listed[0]["config_hash"].as_str()),
        (Some("on"), Some(&*default_config))
    );

    // A clean stop, a new config for the "on" arm, a start: the stored
    // figures are all there, under the old config's row.
    service.stop();
    plugins.write_manifest(&manifest(r#", config = { amount = "400" }"#));
    let service = Service::start(data.path(), plugins.path()).await;
    let (_, after_restart) = service.admin_get("/v1/admin/experiments").await;
    check_arm(&after_restart, "off", &first["off"]);
    check_arm(&after_restart, "on", &first["on"]);
    assert_eq!(variant(&after_restart, "on")["rows"], variant(&experiments, "on")["rows"], "rows survive a restart");
    assert_eq!(variant(&after_restart, "off")["rows"], variant(&experiments, "off")["rows"]);
    let new_config = config_hash(&ModuleConfig::from([("amount".to_string(), "400".to_string())]));
    assert_eq!(variant(&after_restart, "on")["config_hash"], new_config.as_str(), "the arm now runs the new config");

    // The same customers again (same arms): the figures grow from where they
    // were, and the new config's orders get a row of their own.
    let (arms_again, second) = place_orders(&service, 400).await;
    assert_eq!(arms_again, arms, "assignment sticks across a restart");
    // Stopped before anything read them: the clean stop writes the pending figures.
    service.stop();
    let service = Service::start(data.path(), plugins.path()).await;
    let (_, grown) = service.admin_get("/v1/admin/experiments").await;
    let total_off = add(&first["off"], &second["off"]);
    let total_on = add(&first["on"], &second["on"]);
    check_arm(&grown, "off", &total_off);
    check_arm(&grown, "on", &total_on);
    check_interval(&grown, &total_off, &total_on);
    let rows = variant(&grown, "on")["rows"].as_array().expect("rows").clone();
    assert_eq!(rows.len(), 2, "one row per config: {rows:?}");
    let row =
        |hash: &str| rows.iter().find(|r| r["config_hash"] == hash).unwrap_or_else(|| panic!("row {hash}")).clone();
    assert_eq!(row(&default_config), variant(&experiments, "on")["rows"][0], "the old config's row is untouched");
    let new_row = row(&new_config);
    assert_eq!(new_row["module_digest"], digest.as_str());
    assert_eq!(new_row["orders"], second["on"].orders);
    assert_eq!(new_row["discount_cents"], second["on"].orders * 400);
    assert_eq!(new_row["confirmed_orders"], second["on"].confirmed.len() as u64);
    assert_eq!(new_row["revenue_cents"], second["on"].confirmed.iter().sum::<u64>());
    service.stop();
}

fn arm(variant: &str) -> Arm {
    Arm {
        key: ArmKey {
            experiment: "replicas".into(),
            variant: variant.into(),
            module_digest: "sha256:abc".into(),
            config_hash: "sha256:def".into(),
        },
        slot: smartmart::domain::status::Slot::Discount,
        module: "deal.wasm".into(),
        version: "1.0.0".into(),
    }
}

/// Order `i`'s rule call and outcome, recorded into `figures` and `expected`.
fn record(i: u64, figures: &ExperimentFigures, expected: &mut ArmFigures) {
    let call = ArmCall {
        fired: i.is_multiple_of(3),
        discount_cents: if i.is_multiple_of(3) { 250 } else { 0 },
        failed: i.is_multiple_of(17),
        latency_us: Some((i % 40) as f64 * 37.0),
    };
    let arm = arm("on");
    figures.rule_call(&arm, call);
    let mut delta = ArmFigures {
        slot: "discount".into(),
        module: "deal.wasm".into(),
        version: "1.0.0".into(),
        orders: 1,
        fired_orders: u64::from(call.fired),
        discount_cents: call.discount_cents,
        rule_errors: u64::from(call.failed),
        ..ArmFigures::default()
    };
    delta.time_call(call.latency_us.expect("timed"));
    if i.is_multiple_of(7) {
        figures.settled(std::slice::from_ref(&arm), Settled::PaymentFailed);
        delta.payment_failures = 1;
    } else {
        let total = 5_000 + i * 13;
        figures.settled(std::slice::from_ref(&arm), Settled::Confirmed { total_cents: total });
        delta.confirmed_orders = 1;
        delta.revenue_cents = total;
        delta.revenue_squares = (total * total) as f64;
    }
    expected.add(&delta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_from_two_stores_on_one_database_add_up() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("smartmart.sqlite");
    // Two stores — two writer connections — on one database, as two
    // replicas would be, each with its own recorder, flushing concurrently.
    let replica_a = Store::open(&path, &StoreOptions::default()).expect("store A");
    let replica_b = Store::open(&path, &StoreOptions::default()).expect("store B");
    let (figures_a, figures_b) = (ExperimentFigures::default(), ExperimentFigures::default());
    let mut expected = ArmFigures::default();
    for round in 0..10u64 {
        for i in 0..60u64 {
            let n = round * 60 + i;
            record(n, if n % 2 == 0 { &figures_a } else { &figures_b }, &mut expected);
        }
        let (a, b) = tokio::join!(figures_a.flush(&replica_a), figures_b.flush(&replica_b));
        a.expect("flushing A");
        b.expect("flushing B");
    }
    // Read by a third opener after both are gone: the sums of both.
    drop((replica_a, replica_b));
    let reader = Store::open(&path, &StoreOptions::default()).expect("reopening");
    let rows = reader.arm_rows().await.expect("reading the rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].key, arm("on").key);
    assert_eq!(rows[0].figures, expected, "stored figures are the sum of both replicas'");
    assert_eq!(expected.orders, 600);
    assert_eq!(rows[0].figures.latency_quantile_us(0.5), expected.latency_quantile_us(0.5));

    // Figures the store refuses (a read-only store) stay pending, and the
    // next flush to a writable one adds them, exactly once.
    let read_only = Store::open_read_only(&path, &StoreOptions::default()).expect("read-only");
    let pending = ExperimentFigures::default();
    let mut more = ArmFigures::default();
    for n in 600..650 {
        record(n, &pending, &mut more);
    }
    assert!(pending.flush(&read_only).await.is_err(), "a read-only store refuses figures");
    pending.flush(&reader).await.expect("flushing to the writable store");
    pending.flush(&reader).await.expect("a flush with nothing pending");
    expected.add(&more);
    let rows = reader.arm_rows().await.expect("reading the rows");
    assert_eq!(rows[0].figures, expected, "the refused batch was added once");
}

#[test]
fn an_off_arm_is_refused_for_the_warehouse_slot_and_with_a_config() {
    use smartmart::rules::{HostDefaults, RuleSet};
    let runtime = crate::support::rule_runtime();
    let defaults = HostDefaults { experiment_key: b"key".to_vec(), ..HostDefaults::default() };

    let plugins = PluginDir::new(&[], "");
    std::fs::write(
        plugins.file("manifest.toml"),
        r#"
[warehouse]
module = "nearest_warehouse.wasm"
experiment = { name = "wh", variants = [ { name = "a", weight = 1 }, { name = "off", weight = 1, module = "none" } ] }
"#,
    )
    .unwrap();
    let error = RuleSet::load(&runtime, plugins.path(), &defaults).err().expect("refused");
    assert!(format!("{error:#}").contains("the warehouse slot cannot be off"), "{error:#}");

    plugins.write_manifest(
        r#"
[[discount]]
module = "gold_loyalty.wasm"
experiment = { name = "gl", variants = [ { name = "a", weight = 1 }, { name = "off", weight = 1, module = "none", config = { percent = "5" } } ] }
"#,
    );
    let error = RuleSet::load(&runtime, plugins.path(), &defaults).err().expect("refused");
    assert!(format!("{error:#}").contains("an off arm"), "{error:#}");

    // Well-formed: the off arm has no module, and picks say so.
    plugins.write_manifest(
        r#"
[[discount]]
module = "gold_loyalty.wasm"
experiment = { name = "gl", variants = [ { name = "off", weight = 1, module = "none" } ] }
"#,
    );
    let set = RuleSet::load(&runtime, plugins.path(), &defaults).expect("loads");
    let picked = set.discount[0].pick("C-1");
    assert_eq!((picked.experiment, picked.variant, picked.rule.is_none()), (Some("gl"), Some("off"), true));
}

/// Two warehouse selectors (the bundled nearest warehouse, which ships the
/// whole cart from one warehouse or refuses it, and a test guest that
/// splits the cart across the nearest warehouses that have it) and two
/// fraud thresholds (the same check, configured), in one rule set.
const SLOTS_MANIFEST: &str = r#"
[warehouse]
module = "nearest_warehouse.wasm"
budgets = { time_ms = 10000 }
experiment = { name = "ship-split", variants = [
    { name = "nearest", weight = 50 },
    { name = "split", weight = 50, module = "split_warehouse.wasm" } ] }

[[fraud]]
module = "high_value.wasm"
budgets = { time_ms = 10000 }
experiment = { name = "fraud-threshold", variants = [
    { name = "control", weight = 50 },
    { name = "strict", weight = 50, config = { threshold_cents = "15000" } } ] }
"#;

/// Stocked only in WH-BLR (near the test customers), and only in WH-DEL.
const NEAR: &str = "ABW-NEAR";
const FAR: &str = "ABW-FAR";
const STRICT_THRESHOLD: u64 = 15_000;

/// What the invoices say one warehouse or fraud arm should show.
#[derive(Debug, Default, Clone)]
struct SlotExpected {
    orders: u64,
    stock_outs: u64,
    split: u64,
    /// Each shipped order's distance, weighted by units.
    distances: Vec<f64>,
    /// Created orders (those the fraud worker checks) and how many of them
    /// reach the strict threshold.
    created: u64,
    escalations: u64,
    confirmed: Vec<u64>,
    payment_failures: u64,
}

impl SlotExpected {
    fn distances(&self) -> Moments {
        Moments {
            n: self.distances.len() as u64,
            sum: self.distances.iter().sum(),
            sum_squares: self.distances.iter().map(|d| d * d).sum(),
        }
    }
}

/// The distance of a shipped order: its allocations' distances, weighted
/// by the units each ships.
fn unit_weighted_km(invoice: &Value) -> f64 {
    let (mut units, mut weighted) = (0.0, 0.0);
    for a in invoice["allocations"].as_array().expect("allocations") {
        let n: f64 = a["lines"].as_array().expect("lines").iter().map(|l| l["quantity"].as_f64().expect("qty")).sum();
        units += n;
        weighted += n * a["distance_km"].as_f64().expect("a distance");
    }
    weighted / units
}

fn arm_of<'a>(experiments: &'a Value, experiment: &str, name: &str) -> &'a Value {
    let e = experiments
        .as_array()
        .expect("an array")
        .iter()
        .find(|e| e["name"] == experiment)
        .unwrap_or_else(|| panic!("{experiment} is listed: {experiments}"));
    e["variants"].as_array().expect("variants").iter().find(|v| v["name"] == name).expect("the variant")
}

/// A rate and its interval as `wilson_interval` gives them.
fn check_rate(actual: &Value, successes: u64, trials: u64, what: &str) {
    let expected = smartmart::test_support::wilson_interval(successes, trials).expect("trials");
    close(&actual["rate"], expected.rate, what);
    close(&actual["low"], expected.low, what);
    close(&actual["high"], expected.high, what);
    assert_eq!(actual["level"], 0.95, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_and_fraud_arms_show_the_figures_of_their_slot() {
    let plugins = PluginDir::new(&[("split_warehouse", "split_warehouse.wasm")], "");
    std::fs::write(plugins.file("manifest.toml"), SLOTS_MANIFEST).expect("writing the manifest");
    let data = tempfile::tempdir().expect("a data dir");
    let service = Service::start(data.path(), plugins.path()).await;
    for (sku, price, warehouse) in [(NEAR, 10_000, "WH-BLR"), (FAR, 20_000, "WH-DEL")] {
        service
            .admin_put(
                &format!("/v1/admin/products/{sku}"),
                serde_json::json!({"name": sku, "category": "accessories", "unit_price_cents": price}),
            )
            .await;
        service
            .admin_put(&format!("/v1/admin/stock/{warehouse}/{sku}"), serde_json::json!({"on_hand": 1_000_000}))
            .await;
    }
    let customers: Vec<String> = (0..16).map(|n| format!("C-SLOT-{n:02}")).collect();
    for id in &customers {
        service.customer(id, "STANDARD").await;
    }

    // Per customer: two units from WH-BLR (every selector ships them from
    // there: the invoice names the warehouse arm), then either a cart no
    // single warehouse holds (the nearest selector refuses it, the split one
    // ships it from WH-BLR and WH-DEL) or one unit from WH-BLR again.
    let mut warehouse_arm: BTreeMap<String, String> = BTreeMap::new();
    let mut warehouse: BTreeMap<String, SlotExpected> = BTreeMap::new();
    // (customer, order id, total, confirmed) of every order created.
    let mut created: Vec<(String, String, u64, bool)> = Vec::new();
    for (n, id) in customers.iter().enumerate() {
        let second: Vec<(&str, u32)> = if n % 2 == 0 { vec![(NEAR, 1), (FAR, 1)] } else { vec![(NEAR, 1)] };
        let payment = if n % 4 == 2 { "tok_decline" } else { "tok_ok" };
        for (cart, payment) in [(vec![(NEAR, 2)], "tok_ok"), (second, payment)] {
            let (status, body) = service.order_answer(id, &cart, payment).await;
            if status == 409 {
                assert_eq!(body["error"]["code"], "OUT_OF_STOCK", "{id}: {body}");
                let arm = warehouse_arm.get(id).expect("the first order named the arm").clone();
                let e = warehouse.entry(arm).or_default();
                e.orders += 1;
                e.stock_outs += 1;
                continue;
            }
            let invoice = if status == 402 { body["order"].clone() } else { body };
            assert!(status == 201 || status == 402, "{id}: {status} {invoice}");
            let allocations = invoice["allocations"].as_array().expect("allocations").clone();
            let arm = allocations[0]["variant"].as_str().expect("the arm on the invoice").to_string();
            assert!(allocations.iter().all(|a| a["variant"] == arm.as_str()), "{invoice}");
            assert_eq!(warehouse_arm.entry(id.clone()).or_insert_with(|| arm.clone()), &arm, "the arm sticks");
            let total = invoice["total_cents"].as_u64().expect("a total");
            let e = warehouse.entry(arm).or_default();
            e.orders += 1;
            e.split += u64::from(allocations.len() > 1);
            e.distances.push(unit_weighted_km(&invoice));
            if status == 201 {
                e.confirmed.push(total);
            } else {
                e.payment_failures += 1;
            }
            created.push((id.clone(), invoice["order_id"].as_str().expect("an id").to_string(), total, status == 201));
        }
    }
    assert!(warehouse.contains_key("nearest") && warehouse.contains_key("split"), "both arms: {warehouse_arm:?}");
    assert!(warehouse["split"].split > 0 && warehouse["nearest"].stock_outs > 0, "{warehouse:?}");

    // The fraud checks run after the answers: wait until every created
    // order was checked (each GET records what is pending first).
    // (A generous deadline: the tests share two cores.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let experiments = loop {
        let (status, body) = service.admin_get("/v1/admin/experiments").await;
        assert_eq!(status, 200, "{body}");
        let checks: u64 = ["control", "strict"]
            .iter()
            .map(|v| arm_of(&body, "fraud-threshold", v)["fraud"]["checks"].as_u64().unwrap_or(0))
            .sum();
        if checks == created.len() as u64 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{checks} of {} orders checked: {body}", created.len());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    // The warehouse arms: orders, stock-outs, split shipments, distances and
    // revenue as the invoices say; rates and intervals from those counts.
    let mut control_distances = None;
    for name in ["nearest", "split"] {
        let (v, e) = (arm_of(&experiments, "ship-split", name), &warehouse[name]);
        assert!(v.get("discount_cents").is_none() && v.get("fired_orders").is_none(), "discount figures only: {v}");
        assert!(v.get("fraud").is_none(), "{v}");
        let w = &v["warehouse"];
        assert_eq!(v["orders"], e.orders, "{name}: {v}");
        assert_eq!(v["errors"], 0, "{name}: {v}");
        assert_eq!(w["stock_outs"], e.stock_outs, "{name}: {v}");
        assert_eq!(w["shipped_orders"], e.distances.len() as u64, "{name}: {v}");
        assert_eq!(w["split_orders"], e.split, "{name}: {v}");
        close(&w["mean_distance_km"], e.distances().mean().expect("shipped orders"), name);
        check_rate(&w["stock_out_rate"], e.stock_outs, e.orders, name);
        check_rate(&w["split_rate"], e.split, e.distances.len() as u64, name);
        assert_eq!(v["confirmed_orders"], e.confirmed.len() as u64, "{name}: {v}");
        assert_eq!(v["revenue_cents"], e.confirmed.iter().sum::<u64>(), "{name}: {v}");
        assert_eq!(v["payment_failures"], e.payment_failures, "{name}: {v}");
        // Every order planned at least once, each call timed.
        assert!(v["rows"][0]["calls"].as_u64() >= Some(e.orders), "{v}");
        assert!(v["latency_p50_us"].as_f64().is_some_and(|p| p > 0.0), "{v}");
        assert_eq!(v["rows"][0]["warehouse"]["split_orders"], e.split, "{v}");
        match control_distances {
            None => {
                assert!(w["distance_vs_control"].is_null(), "the control has no interval: {v}");
                control_distances = Some(e.distances());
            }
            Some(control) => {
                let expected = welch_interval(&control, &e.distances(), 0.95).expect("two shipped orders per arm");
                close(&w["distance_vs_control"]["difference"], expected.difference, "distance difference");
                close(&w["distance_vs_control"]["low"], expected.low, "distance low");
                close(&w["distance_vs_control"]["high"], expected.high, "distance high");
            }
        }
    }
    // Only the nearest selector refuses a cart no single warehouse holds; only the split one splits.
    assert_eq!(warehouse["nearest"].split, 0);
    assert_eq!(warehouse["split"].stock_outs, 0);

    // The fraud arms: each check's own verdict. The escalated orders are
    // those of the strict arm's customers at or over its threshold; the
    // arm of a customer is the one whose check escalated their first order
    // (20,000 cents: over the strict threshold, under the default).
    let (status, escalated) = service.admin_get("/v1/admin/fraud/escalations?limit=1000").await;
    assert_eq!(status, 200, "{escalated}");
    let escalated: Vec<&str> =
        escalated.as_array().expect("an array").iter().map(|o| o["order_id"].as_str().expect("an id")).collect();
    let mut fraud: BTreeMap<String, SlotExpected> = BTreeMap::new();
    let mut fraud_arm: BTreeMap<&str, &str> = BTreeMap::new();
    for (customer, order_id, total, confirmed) in &created {
        let arm = *fraud_arm
            .entry(customer.as_str())
            .or_insert_with(|| if escalated.contains(&order_id.as_str()) { "strict" } else { "control" });
        let e = fraud.entry(arm.to_string()).or_default();
        e.created += 1;
        let over = arm == "strict" && *total >= STRICT_THRESHOLD;
        e.escalations += u64::from(over);
        assert_eq!(escalated.contains(&order_id.as_str()), over, "{order_id} of {customer} ({arm}, {total} cents)");
        if *confirmed {
            e.confirmed.push(*total);
        } else {
            e.payment_failures += 1;
        }
    }
    assert!(fraud.contains_key("control") && fraud.contains_key("strict"), "both arms: {fraud_arm:?}");
    for name in ["control", "strict"] {
        let (v, e) = (arm_of(&experiments, "fraud-threshold", name), &fraud[name]);
        assert!(v.get("discount_cents").is_none() && v.get("warehouse").is_none(), "{v}");
        let f = &v["fraud"];
        assert_eq!((f["checks"].as_u64(), v["orders"].as_u64()), (Some(e.created), Some(e.created)), "{name}: {v}");
        assert_eq!(f["escalations"], e.escalations, "{name}: {v}");
        assert_eq!(f["reviews"], 0, "the check never answers REVIEW: {v}");
        check_rate(&f["escalation_rate"], e.escalations, e.created, name);
        check_rate(&f["review_rate"], 0, e.created, name);
        assert_eq!(v["confirmed_orders"], e.confirmed.len() as u64, "{name}: {v}");
        assert_eq!(v["payment_failures"], e.payment_failures, "{name}: {v}");
        assert!(v["latency_p50_us"].as_f64().is_some_and(|p| p > 0.0), "{v}");
        assert_eq!(v["rows"][0]["fraud"]["escalations"], e.escalations, "{v}");
    }
    assert_eq!(fraud["control"].escalations, 0, "the default threshold is far above every total");

    for experiment in ["ship-split", "fraud-threshold"] {
        let listed = experiments.as_array().expect("an array").iter().find(|e| e["name"] == experiment);
        eprintln!("GET /v1/admin/experiments, {experiment}:\n{:#}", listed.expect("listed"));
    }
    service.stop();
}
