//! A/B experiments and shadow candidates with real components: the
//! assignment follows the weights and sticks across reloads and restarts;
//! the variant shows on the invoice, in the events, in the admin figures and
//! in the metrics; a shadow candidate never changes an order and its
//! recorded differences are exact.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use smartmart::app::Engine;
use smartmart::domain::customer::Tier;
use smartmart::domain::invoice::Invoice;
use smartmart::rules::RuleSet;
use smartmart::store::shadows::ShadowSummary;

use crate::support::TestEngine;
use crate::support::plugin_dir::{PluginDir, add_customers, add_products, guest_digest, order_on, plenty_of_stock};
use crate::support::server::{TestServer, send};

/// The flat discount in an experiment: 70 % keep v1 ("control"), 30 % get v2.
const AB_MANIFEST: &str = r#"
[[discount]]
module = "discount_v1.wasm"
budgets = { time_ms = 10000 }
experiment = { name = "flat-ab", variants = [
    { name = "control", weight = 70 },
    { name = "v2", weight = 30, module = "discount_v2.wasm" } ] }
"#;

const FLAT_GUESTS: [(&str, &str); 2] = [("discount_v1", "discount_v1.wasm"), ("discount_v2", "discount_v2.wasm")];

/// (module file, version, amount) of each variant of [`AB_MANIFEST`].
fn variant_module(variant: &str) -> (&'static str, &'static str, u64) {
    match variant {
        "control" => ("discount_v1.wasm", "1.0.0", 100),
        "v2" => ("discount_v2.wasm", "2.0.0", 250),
        other => panic!("no variant {other}"),
    }
}

/// The variant of each id through `SlotRule::pick` of the experiment's
/// rule, checked against `Experiment::assign` and the module it serves.
fn assignments(rules: &RuleSet, ids: &[String]) -> Vec<String> {
    let slot = &rules.discount[0];
    let experiment = slot.experiment.as_ref().expect("the rule is in an experiment");
    assert_eq!(experiment.name, "flat-ab");
    ids.iter()
        .map(|id| {
            let picked = slot.pick(id);
            assert_eq!(picked.experiment, Some("flat-ab"));
            let variant = picked.variant.expect("a variant").to_string();
            assert_eq!(experiment.assign(id).name, variant);
            let (file, version, _) = variant_module(&variant);
            let identity = picked.rule.expect("no off arm in this experiment").identity();
            assert_eq!((identity.file.as_str(), identity.version.as_str()), (file, version), "{id}");
            variant
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_assignment_follows_the_weights_and_sticks_across_a_reload_and_a_restart() {
    let plugins = PluginDir::new(&FLAT_GUESTS, AB_MANIFEST);
    let t = TestEngine::start_with(plugins.path(), |s| s.watch_plugins = false).await;
    let ids: Vec<String> = (0..10_000).map(|n| format!("C-{n:05}")).collect();

    let first = assignments(&t.engine.rules(), &ids);
    let control = first.iter().filter(|v| *v == "control").count();
    let share = control as f64 / ids.len() as f64;
    assert!((0.68..=0.72).contains(&share), "control share {share} (weight 70 %)");
    assert_eq!(ids.len() - control, first.iter().filter(|v| *v == "v2").count());

    // After a reload: a new set, the same assignment.
    let before = t.engine.rules();
    t.engine.reload_now().await.expect("reloading");
    let after = t.engine.rules();
    assert!(!std::sync::Arc::ptr_eq(&before, &after), "a new rule set is in place");
    assert_eq!(assignments(&after, &ids), first, "the same variants after a reload");

    // After a restart on the same settings (and data dir).
    let TestEngine { engine, dir } = t;
    let settings = engine.settings().clone();
    engine.shutdown().await;
    let engine = Engine::start(settings.clone()).await.expect("restarting");
    assert_eq!(assignments(&engine.rules(), &ids), first, "the same variants after a restart");
    engine.shutdown().await;

    // The assignment is keyed: another experiment key splits differently.
    let mut rekeyed = settings;
    rekeyed.experiment_key = b"another-experiment-key".to_vec();
    let engine = Engine::start(rekeyed).await.expect("starting with another key");
    let other = assignments(&engine.rules(), &ids);
    assert_ne!(other, first);
    engine.shutdown().await;
    drop(dir);
}

/// Sum of the `smartmart_rule_calls_total` samples whose labels include all of `labels`.
fn rule_calls(metrics: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("smartmart_rule_calls_total{"))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .map(|line| line.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).expect("a sample value"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_variant_shows_on_invoices_events_admin_figures_and_metrics() {
    let plugins = PluginDir::new(&FLAT_GUESTS, AB_MANIFEST);
    let server = TestServer::start_with(plugins.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    let pipeline = server.engine.pipeline();
    add_products(pipeline, &[("AB-WIDGET", 10_000)]).await;
    plenty_of_stock(pipeline, &["AB-WIDGET"]).await;
    let customers = add_customers(pipeline, "C-AB", 30, &[Tier::Gold, Tier::Silver, Tier::Standard]).await;
    let expected: BTreeMap<String, String> =
        customers.iter().cloned().zip(assignments(&pipeline.rules(), &customers)).collect();
    let count = |variant: &str| expected.values().filter(|v| *v == variant).count() as u64;
    assert!(count("control") > 0 && count("v2") > 0, "both variants among the customers: {expected:?}");

    // Through the real service: the variant on each invoice's discount line.
    let mut orders: BTreeMap<String, String> = BTreeMap::new();
    for customer in &customers {
        let body = json!({ "customer_id": customer, "payment": { "token": "tok_ok" } });
        let answer = server.order(customer, &[("AB-WIDGET", 1)], &body).await;
        assert_eq!(answer.status, 201, "{}", answer.text());
        let invoice: Invoice = serde_json::from_value(answer.json.clone()).expect("an invoice");
        let variant = &expected[customer];
        let (file, version, amount) = variant_module(variant);
        assert_eq!(invoice.discounts.len(), 1, "{customer}: {:#?}", invoice.discounts);
        let line = &invoice.discounts[0];
        assert_eq!(line.variant.as_deref(), Some(variant.as_str()), "{customer}");
        assert_eq!((line.module.as_str(), line.version.as_str(), line.amount_cents), (file, version, amount));
        assert_eq!(answer.json["discounts"][0]["variant"], variant.as_str());
        orders.insert(invoice.order_id, variant.clone());
    }

    // In the audit and analytics events.
    server.engine.drain().await.expect("draining");
    for kind in ["audit", "analytics"] {
        let lines = crate::support::event_lines(server.dir.path(), kind);
        for (order_id, variant) in &orders {
            let event = lines
                .iter()
                .find(|e| e["order_id"] == order_id.as_str())
                .unwrap_or_else(|| panic!("no {kind} event for {order_id}"));
            let discounts = event["payload"]["discounts"].as_array().expect("discounts in the event");
            assert_eq!(discounts.len(), 1, "{kind} {order_id}: {discounts:?}");
            assert_eq!(discounts[0]["variant"], variant.as_str(), "{kind} {order_id}");
            assert_eq!(discounts[0]["module"], variant_module(variant).0, "{kind} {order_id}");
        }
    }

    // In GET /v1/admin/experiments: orders, discount and errors per variant.
    let answer = send(server.admin(Method::GET, "/v1/admin/experiments")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let experiment = answer
        .json
        .as_array()
        .expect("an array")
        .iter()
        .find(|e| e["name"] == "flat-ab")
        .unwrap_or_else(|| panic!("flat-ab is listed: {}", answer.text()))
        .clone();
    assert_eq!(experiment["slot"], "discount");
    let variants = experiment["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 2, "{experiment}");
    for (variant, weight) in [("control", 70), ("v2", 30)] {
        let figures = variants.iter().find(|v| v["name"] == variant).expect("the variant is listed");
        let (file, _, amount) = variant_module(variant);
        assert_eq!(figures["module"], file, "{figures}");
        assert_eq!(figures["weight"], weight, "{figures}");
        assert_eq!(figures["orders"], count(variant), "{figures}");
        assert_eq!(figures["discount_cents"], count(variant) * amount, "{figures}");
        assert_eq!(figures["errors"], 0, "{figures}");
    }

    // In /metrics: rule calls labelled with the variant.
    let answer = send(server.request(Method::GET, "/metrics")).await;
    assert_eq!(answer.status, 200);
    let metrics = answer.text();
    for variant in ["control", "v2"] {
        let (file, version, _) = variant_module(variant);
        let labels = [("slot", "discount"), ("module", file), ("version", version), ("variant", variant)];
        assert_eq!(rule_calls(&metrics, &labels), count(variant), "{variant}: {metrics}");
        assert_eq!(rule_calls(&metrics, &[("variant", variant), ("outcome", "ok")]), count(variant), "{variant}");
    }
}

// ---------------------------------------------------------------------------
// Shadow
// ---------------------------------------------------------------------------

/// Gold loyalty, then flat v1; v2 in its shadow.
const SHADOW_MANIFEST: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }

[[discount]]
module = "discount_v1.wasm"
budgets = { time_ms = 10000 }
shadow = { module = "discount_v2.wasm" }
"#;

/// The same without the shadow.
const PLAIN_MANIFEST: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }

[[discount]]
module = "discount_v1.wasm"
budgets = { time_ms = 10000 }
"#;

/// Carts whose payable amount at the flat rule is above 250, between 100
/// and 250, and below 100 cents, with and without gold loyalty before it.
const SHADOW_CARTS: [&[(&str, u32)]; 6] = [
    &[("TV-55-OLED", 1)],
    &[("SHADOW-80", 1)],
    &[("SHADOW-150", 1)],
    &[("SHADOW-260", 1)],
    &[("SHADOW-80", 2)],
    &[("SHADOW-150", 1), ("SHADOW-80", 1)],
];

/// GOLD, SILVER, STANDARD, GOLD (the demo data set).
const SHADOW_CUSTOMERS: [&str; 4] = ["C-1001", "C-1002", "C-1003", "C-1005"];

async fn shadow_catalog(pipeline: &smartmart::pipeline::Pipeline) {
    add_products(pipeline, &[("SHADOW-80", 80), ("SHADOW-150", 150), ("SHADOW-260", 260)]).await;
    plenty_of_stock(pipeline, &["TV-55-OLED", "SHADOW-80", "SHADOW-150", "SHADOW-260"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_candidate_never_changes_an_invoice_and_its_differences_are_exact() {
    const N: usize = 24;
    let shadowed = PluginDir::new(&FLAT_GUESTS, SHADOW_MANIFEST);
    let plain = PluginDir::new(&FLAT_GUESTS, PLAIN_MANIFEST);
    let server = TestServer::start_with(shadowed.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    let reference = TestEngine::start_with(plain.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    shadow_catalog(server.engine.pipeline()).await;
    shadow_catalog(reference.engine.pipeline()).await;

    // Every customer with every cart, on both engines.
    let mut expected_runs: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    for n in 0..N {
        let customer = SHADOW_CUSTOMERS[n % SHADOW_CUSTOMERS.len()];
        let cart = SHADOW_CARTS[(n / SHADOW_CUSTOMERS.len()) % SHADOW_CARTS.len()];
        let with_shadow = order_on(server.engine.pipeline(), customer, cart).await.expect("an order with the shadow");
        let without = order_on(reference.engine.pipeline(), customer, cart).await.expect("an order without it");
        assert_eq!(with_shadow.discounts, without.discounts, "{customer} {cart:?}: the shadow changed the discounts");
        assert_eq!(
            (with_shadow.subtotal_cents, with_shadow.discount_cents, with_shadow.total_cents),
            (without.subtotal_cents, without.discount_cents, without.total_cents)
        );
        assert!(with_shadow.discounts.iter().all(|d| d.module != "discount_v2.wasm" && d.variant.is_none()));

        // What v2 would have given: 250 cents, capped by what was left to
        // pay when the flat rule ran (after gold loyalty).
        let position = with_shadow.discounts.iter().position(|d| d.rule == "flat-discount");
        let earlier: u64 = with_shadow.discounts[..position.unwrap_or(with_shadow.discounts.len())]
            .iter()
            .map(|d| d.amount_cents)
            .sum();
        let payable = with_shadow.subtotal_cents - earlier;
        let active = position.map_or(0, |p| with_shadow.discounts[p].amount_cents);
        assert_eq!(active, payable.min(100), "v1 gives 100 cents, capped");
        let candidate = payable.min(250);
        expected_runs.insert(with_shadow.order_id.clone(), (candidate as i64 - active as i64, candidate != active));
    }
    let money: i64 = expected_runs.values().map(|(d, _)| d).sum();
    let differing = expected_runs.values().filter(|(_, d)| *d).count() as u64;
    assert!(differing > 0 && differing < N as u64, "the carts cover both cases: {expected_runs:?}");

    // The shadow runs land after the answers: poll.
    let store = server.engine.store().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let summaries = loop {
        let summaries = store.shadow_summaries().await.expect("reading the shadow summaries");
        if summaries.iter().map(|s| s.orders).sum::<u64>() >= N as u64 {
            break summaries;
        }
        assert!(Instant::now() < deadline, "the shadow runs never all landed: {summaries:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let summary = ShadowSummary {
        slot: smartmart::domain::status::Slot::Discount,
        active_module: "discount_v1.wasm".into(),
        candidate_module: "discount_v2.wasm".into(),
        candidate_version: "2.0.0".into(),
        candidate_digest: guest_digest("discount_v2"),
        orders: N as u64,
        differing_orders: differing,
        share_differing: differing as f64 / N as f64,
        money_difference_cents: money,
        candidate_name: "flat-discount".into(),
        candidate_config_hash: smartmart::rules::config_hash(&Default::default()),
        candidate_config: json!({}),
        errors: 0,
        error_rate: 0.0,
    };
    assert_eq!(summaries, vec![summary.clone()]);

    // Per order, too.
    let runs: BTreeMap<String, (i64, bool)> = {
        let db = server.db();
        let mut stmt = db.prepare("SELECT order_id, money_difference_cents, differs FROM shadow_runs").unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?)))).unwrap();
        rows.collect::<Result<_, _>>().expect("reading the shadow runs")
    };
    assert_eq!(runs, expected_runs);

    // And in GET /v1/admin/experiments.
    let answer = send(server.admin(Method::GET, "/v1/admin/experiments")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let listed: Vec<&Value> =
        answer.json.as_array().expect("an array").iter().filter(|e| e["kind"] == "shadow").collect();
    assert_eq!(listed.len(), 1, "{}", answer.text());
    assert_eq!(listed[0]["slot"], "discount");
    assert_eq!(listed[0]["shadow"], serde_json::to_value(&summary).unwrap());
}
