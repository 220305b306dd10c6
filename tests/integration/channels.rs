//! Rules per sales channel and scheduled rules, with the real bundled
//! components: an app-only coupon, a partner-only fraud check, a rule that
//! serves inside its window only (the engine on a manual clock), what
//! `GET /v1/admin/plugins` says of both, the manifests refused at load (and
//! on a reload, the last good set kept), and `rules replay` of a rule of one
//! channel on that channel's orders only.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};
use smartmart::app::ManualClock;
use smartmart::pipeline::{OrderError, OrderRequest};
use smartmart::rules::{HostDefaults, RuleSet};

use crate::cli::{path_str, smartmart_in, text};
use crate::support::plugin_dir::PluginDir;
use crate::support::server::{MOBILE_KEY, PARTNER_KEY, TestServer, WEB_KEY, send, token};
use crate::support::{TestEngine, bundled_plugins, order_body, order_request, rule_runtime};

/// The coupon rule once for web and partner orders and once, with one code
/// more (APP15), for the app; a fraud check that escalates every partner
/// order (threshold 1 cent) beside the bundled one.
const BY_CHANNEL: &str = r#"
[[discount]]
module = "coupons.wasm"
channels = ["web", "partner"]
config = { "code.WELCOME10" = "percent:10" }
budgets = { time_ms = 10000 }

[[discount]]
module = "coupons.wasm"
channels = ["mobile"]
config = { "code.WELCOME10" = "percent:10", "code.APP15" = "percent:15" }
budgets = { time_ms = 10000 }

[[fraud]]
module = "high_value.wasm"
channels = ["partner"]
config = { threshold_cents = "1" }
budgets = { time_ms = 10000 }
"#;

/// The plug-in dir of [`BY_CHANNEL`] (+ the base warehouse and fraud slots).
fn by_channel_plugins() -> PluginDir {
    let plugins = PluginDir::new(&[], BY_CHANNEL);
    plugins.copy_in(&bundled_plugins().join("coupons.wasm"), "coupons.wasm");
    plugins
}

/// `POST /v1/orders` with `key`'s channel, from `customer`'s cart of `items`.
async fn order_on(
    server: &TestServer,
    key: &str,
    customer: &str,
    coupon: Option<&str>,
) -> crate::support::server::Answer {
    let cart = server.put_cart(customer, &[("HDMI-2M", 2)]).await;
    assert_eq!(cart.status, 200, "{}", cart.text());
    let mut body = order_body(customer, "tok_ok");
    if let Some(coupon) = coupon {
        body["coupon_code"] = json!(coupon);
    }
    send(server.keyed(Method::POST, "/v1/orders", key).header("x-customer-token", token(customer)).json(&body)).await
}

/// The lines of an invoice granted by `module`, as (description, amount).
fn lines_of(invoice: &Value, module: &str) -> Vec<(String, u64)> {
    invoice["discounts"]
        .as_array()
        .expect("discounts")
        .iter()
        .filter(|l| l["module"] == module)
        .map(|l| (l["description"].as_str().unwrap_or("").to_string(), l["amount_cents"].as_u64().unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_only_coupon_and_a_partner_fraud_check_follow_the_orders_channel() {
    let plugins = by_channel_plugins();
    let server = TestServer::start_with(plugins.path(), |_| {}).await;
    // C-1003 is a STANDARD customer: no loyalty discount in the way.
    let customer = "C-1003";

    let mobile = order_on(&server, MOBILE_KEY, customer, Some("APP15")).await;
    assert_eq!(mobile.status, 201, "{}", mobile.text());
    assert_eq!(mobile.json["channel"], "mobile");
    let subtotal = mobile.json["subtotal_cents"].as_u64().expect("subtotal");
    let coupon = lines_of(&mobile.json, "coupons.wasm");
    assert_eq!(coupon.len(), 1, "one coupon line: {}", mobile.text());
    assert_eq!(coupon[0].1, subtotal * 15 / 100, "APP15 on the app: {}", mobile.text());

    // The web's coupon rule does not know the app's code: the order is refused.
    let web = order_on(&server, WEB_KEY, customer, Some("APP15")).await;
    web.assert_error(422, "INVALID_COUPON");
    let web = order_on(&server, WEB_KEY, customer, Some("WELCOME10")).await;
    assert_eq!(web.status, 201, "{}", web.text());
    assert_eq!(lines_of(&web.json, "coupons.wasm")[0].1, web.json["subtotal_cents"].as_u64().unwrap() / 10);

    // The partner-only check escalates partner orders, and runs on no other.
    let partner = order_on(&server, PARTNER_KEY, customer, None).await;
    assert_eq!(partner.status, 201, "{}", partner.text());
    assert!(lines_of(&partner.json, "coupons.wasm").is_empty(), "no code, no coupon line");
    let review_of = async |answer: &crate::support::server::Answer| {
        let id = answer.json["order_id"].as_str().expect("an order id");
        server.order_with_review(id, customer).await.json["fraud_review"].clone()
    };
    let partner_review = review_of(&partner).await;
    assert_eq!(partner_review["action"], "ESCALATE", "{partner_review}");
    assert!(partner_review["flags"].as_array().unwrap().contains(&json!("HIGH_VALUE")), "{partner_review}");
    for other in [&mobile, &web] {
        let review = review_of(other).await;
        assert_eq!(review["action"], "ALLOW", "a {} order: {review}", other.json["channel"]);
    }

    // The admin view lists each entry's channels.
    let plugins = send(server.admin(Method::GET, "/v1/admin/plugins")).await;
    let channels_of = |slot: &str| -> Vec<Value> {
        plugins.json["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["slot"] == slot)
            .map(|p| p["channels"].clone())
            .collect()
    };
    assert_eq!(channels_of("discount"), [json!(["web", "partner"]), json!(["mobile"])], "{}", plugins.text());
    assert_eq!(channels_of("fraud"), [json!(["partner"]), json!(["web", "mobile", "partner"])]);
    assert_eq!(channels_of("warehouse"), [json!(["web", "mobile", "partner"])]);
}

/// 2026-11-27T00:00:00Z, the window's start; it lasts an hour.
const FROM_MS: i64 = 1_795_737_600_000;
const UNTIL_MS: i64 = FROM_MS + 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rule_serves_the_orders_that_start_inside_its_window() {
    let plugins = PluginDir::new(
        &[("discount_v1", "flat.wasm")],
        r#"
[[discount]]
module = "flat.wasm"
from = "2026-11-27T01:00:00+01:00"   # an offset: 00:00 UTC
until = 2026-11-27T01:00:00Z          # a TOML date-time works too
budgets = { time_ms = 10000 }
"#,
    );
    let clock = ManualClock::at_ms(FROM_MS - 1);
    let server = TestServer::start_with(plugins.path(), |s| s.clock = clock.clock()).await;
    let flat_entry = async || {
        let answer = send(server.admin(Method::GET, "/v1/admin/plugins")).await;
        let plugins = answer.json["plugins"].as_array().expect("plugins").clone();
        plugins.into_iter().find(|p| p["file"] == "flat.wasm").expect("flat.wasm is listed")
    };
    let order_at = async |at_ms: i64| {
        clock.set_ms(at_ms);
        let answer = order_on(&server, WEB_KEY, "C-1003", None).await;
        assert_eq!(answer.status, 201, "{}", answer.text());
        answer.json
    };

    let listed = flat_entry().await;
    assert_eq!((&listed["from"], &listed["until"]), (&json!("2026-11-27T00:00:00Z"), &json!("2026-11-27T01:00:00Z")));
    assert_eq!(listed["active"], false, "before its window: {listed}");

    let before = order_at(FROM_MS - 1).await;
    assert!(lines_of(&before, "flat.wasm").is_empty(), "a millisecond before `from`: {before}");
    let inside = order_at(FROM_MS).await;
    assert_eq!(lines_of(&inside, "flat.wasm"), [("Flat v1".to_string(), 100)], "at `from`: {inside}");
    assert_eq!(inside["created_at"], "2026-11-27T00:00:00Z", "the invoice carries the order's start");
    assert_eq!(flat_entry().await["active"], true);
    let last = order_at(UNTIL_MS - 1).await;
    assert_eq!(lines_of(&last, "flat.wasm").len(), 1, "a millisecond before `until`: {last}");
    let after = order_at(UNTIL_MS).await;
    assert!(lines_of(&after, "flat.wasm").is_empty(), "at `until`: {after}");
    assert_eq!(flat_entry().await["active"], false);
    // Nothing was reloaded at either boundary: one set served all four orders.
    assert_eq!(server.engine.reload_status().reloads, 0);
}

/// The error of loading a plug-in dir whose discount entries are `discounts`.
fn load_error(discounts: &str) -> String {
    let plugins = PluginDir::new(&[], discounts);
    match RuleSet::load(&rule_runtime(), plugins.path(), &HostDefaults::default()) {
        Ok(_) => panic!("loaded:\n{discounts}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_channels_and_bad_windows_are_refused_at_load_and_on_reload() {
    let gold = "[[discount]]\nmodule = \"gold_loyalty.wasm\"\n";
    for (extra, expected) in [
        ("channels = [\"mobile\", \"app\"]", "unknown sales channel `app` (the channels are web, mobile, partner)"),
        ("channels = []", "discount[1] gold_loyalty.wasm: `channels = []` serves no order"),
        (
            "from = \"2026-11-30T00:00:00Z\"\nuntil = \"2026-11-27T00:00:00Z\"",
            "discount[1] gold_loyalty.wasm: the window ends before it starts: `until` (2026-11-27T00:00:00Z) must \
             be after `from` (2026-11-30T00:00:00Z)",
        ),
        ("until = \"next friday\"", "`next friday` is not an RFC 3339 time with an offset"),
        ("from = 2026-11-27T00:00:00", "`2026-11-27T00:00:00` is not an RFC 3339 time with an offset"),
        ("from = 20261127", "expected an RFC 3339 time such as 2026-11-27T00:00:00Z, got the integer 20261127"),
    ] {
        let error = load_error(&format!("{gold}{extra}\n"));
        assert!(error.contains(expected), "{extra}: {error}");
        assert!(error.contains("invalid plug-in manifest"), "{error}");
    }
    let warehouse = PluginDir::new(&[], "");
    let manifest = std::fs::read_to_string(warehouse.file("manifest.toml")).unwrap();
    let scoped = manifest
        .replace("module = \"nearest_warehouse.wasm\"", "module = \"nearest_warehouse.wasm\"\nchannels = [\"web\"]");
    std::fs::write(warehouse.file("manifest.toml"), scoped).unwrap();
    let error = RuleSet::load(&rule_runtime(), warehouse.path(), &HostDefaults::default()).err().expect("refused");
    assert!(format!("{error:#}").contains("the warehouse selector serves every order"), "{error:#}");

    // On a reload: refused, the error shown, the last good set serving.
    let plugins = by_channel_plugins();
    let engine = TestEngine::start_with(plugins.path(), |s| s.watch_plugins = false).await;
    let serving = engine.engine.rules();
    plugins.write_manifest(&BY_CHANNEL.replace(r#"channels = ["mobile"]"#, r#"channels = ["mobile", "kiosk"]"#));
    let refused = engine.engine.reload_now().await.expect_err("an unknown channel is refused");
    assert_eq!(refused.file, "manifest.toml");
    assert!(refused.error.contains("unknown sales channel `kiosk`"), "{refused:?}");
    assert!(std::sync::Arc::ptr_eq(&serving, &engine.engine.rules()), "the last good set keeps serving");
    assert_eq!(engine.engine.reload_status().errors, [refused]);
    let mobile = OrderRequest { channel: "mobile".into(), ..order_request("C-1003", "tok_ok", Some("APP15")) };
    engine.fill_cart("C-1003", &[("HDMI-2M", 1)]).await;
    let placed = engine.engine.pipeline().place_order(mobile).await.expect("the app's coupon still applies");
    assert_eq!(placed.invoice.discounts.len(), 1, "{:?}", placed.invoice.discounts);
}

/// `smartmart rules replay FILE ARGS --json` on `data_dir` with `plugins`' manifest.
async fn replay(data_dir: &Path, plugins: &Path, file: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = vec!["rules".into(), "replay".into(), path_str(file).into(), "--json".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--plugins-dir".into(), path_str(plugins).into(), "--data-dir".into(), path_str(data_dir).into()]);
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || smartmart_in(&data_dir, &all.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("the replay task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_mobile_only_rule_replays_only_mobile_orders() {
    let plugins = by_channel_plugins();
    let engine = TestEngine::start_with(plugins.path(), |_| {}).await;
    let mut mobile_orders = Vec::new();
    for (channel, coupon) in
        [("web", Some("WELCOME10")), ("mobile", Some("APP15")), ("partner", None), ("mobile", None)]
    {
        engine.fill_cart("C-1003", &[("MOUSE-WIRELESS", 1)]).await;
        let request = OrderRequest { channel: channel.into(), ..order_request("C-1003", "tok_ok", coupon) };
        let placed = engine.engine.pipeline().place_order(request).await;
        let placed = placed.unwrap_or_else(|e: OrderError| panic!("a {channel} order: {e:?}"));
        if channel == "mobile" {
            mobile_orders.insert(0, placed.invoice.order_id.clone());
        }
    }
    engine.drain().await;

    // The candidate: the app's coupons with APP15 at 20 %.
    let candidate = plugins.file("coupons.wasm");
    let args = ["--replace", "coupons", "--channel", "mobile", "--config", "code.APP15=percent:20", "--last", "10"];
    let output = replay(engine.data_dir(), plugins.path(), &candidate, &args).await;
    assert!(output.status.success(), "{}{}", text(&output.stdout), text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["channels"], json!(["mobile"]));
    assert_eq!(report["position"], 2, "in place of the app's entry");
    let replayed: Vec<&str> =
        report["orders"].as_array().unwrap().iter().map(|o| o["order_id"].as_str().unwrap()).collect();
    assert_eq!(replayed, mobile_orders, "the mobile orders only, newest first: {report}");
    assert_eq!(
        (report["summary"]["differs"].as_u64(), report["summary"]["same"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );

    // The module serves two entries: which one must be said.
    let output = replay(engine.data_dir(), plugins.path(), &candidate, &["--replace", "coupons", "--last", "10"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let error = text(&output.stderr);
    assert!(
        error.contains("discount[1] for web, partner; discount[2] for mobile); say which with --channel"),
        "{error}"
    );
}
