//! A/B figures a business can read, through the real `smartmart serve`:
//! an "off" arm (`module = "none"`) skips the new stacked rule and keeps the
//! slot's base rules; every arm's figures — orders, fired, discount,
//! revenue, payment failures, rule errors, latency percentiles — are split
//! by (module digest, config hash), kept in the store, survive a restart
//! and grow from where they were; the confidence interval of the difference
//! in mean order value is the one Welch's formula gives on the orders'
//! totals. Through the store API: figures from two stores (two writers) on
//! one database add up, and figures the store refused are kept and added
//! later.

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
