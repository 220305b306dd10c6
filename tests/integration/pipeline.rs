//! The order pipeline end to end through the library: the real bundled
//! WebAssembly rules, a real SQLite data dir with the demo data set, the
//! sandbox gateway and the JSON Lines event sink.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use smartmart::app::GatewayChoice;
use smartmart::domain::customer::{AccountStatus, Customer, Tier};
use smartmart::domain::geo::{GeoPoint, distance_km};
use smartmart::domain::invoice::Invoice;
use smartmart::payment::HttpGatewayOptions;
use smartmart::pipeline::{OrderError, OrderRequest, Placed};
use smartmart::store::catalog::{CartItem, Product, StockLevel};
use smartmart::store::orders;
use smartmart::test_support::mint_token;
use smartmart::test_support::rule_errors;
use tempfile::TempDir;

use crate::support::{SECRET, TestEngine, bundled_plugins, order_request, wasm};

fn confirmed(result: Result<Placed, OrderError>) -> Invoice {
    match result {
        Ok(placed) => placed.invoice,
        Err(e) => panic!("expected CONFIRMED, got {}: {e} {:?}", e.code(), e.details()),
    }
}

fn refused(result: Result<Placed, OrderError>) -> OrderError {
    match result {
        Ok(invoice) => panic!("expected a refusal, got {} {}", invoice.status, invoice.order_id),
        Err(e) => e,
    }
}

/// The failed order a `PAYMENT_FAILED` carries.
fn payment_failed(result: Result<Placed, OrderError>) -> Invoice {
    match refused(result) {
        OrderError::PaymentFailed { order, .. } => *order,
        e => panic!("expected PAYMENT_FAILED, got {}: {e}", e.code()),
    }
}

/// (warehouse, on_hand, available) of each warehouse listing a sku.
fn figures(levels: &[StockLevel]) -> Vec<(String, u64, u64)> {
    levels.iter().map(|l| (l.warehouse_id.clone(), l.on_hand, l.available)).collect()
}

/// The invoice's event id of `kind`.
fn event_id(invoice: &Invoice, kind: &str) -> String {
    invoice.events.iter().find(|e| e.kind == kind).unwrap_or_else(|| panic!("no {kind} event")).id.clone()
}

/// The lines of `events/<kind>.jsonl` with this event id.
fn lines_with_id(t: &TestEngine, kind: &str, id: &str) -> Vec<Value> {
    t.event_lines(kind).into_iter().filter(|line| line["id"] == id).collect()
}

/// Each of the order's three events is in its file exactly once, typed and
/// naming the order; returns them (audit, analytics, fraud).
fn delivered_once(t: &TestEngine, invoice: &Invoice) -> [Value; 3] {
    assert_eq!(invoice.events.len(), 3, "{:?}", invoice.events);
    ["audit", "analytics", "fraud"].map(|kind| {
        let id = event_id(invoice, kind);
        let lines = lines_with_id(t, kind, &id);
        assert_eq!(lines.len(), 1, "{kind} event {id} of {}: {lines:?}", invoice.order_id);
        assert_eq!(lines[0]["type"], kind);
        assert_eq!(lines[0]["order_id"], invoice.order_id.as_str());
        lines.into_iter().next().unwrap()
    })
}

fn assert_digest(digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("digest {digest}"));
    assert_eq!(hex.len(), 64, "{digest}");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{digest}");
}

async fn customer(t: &TestEngine, id: &str) -> Customer {
    let id = id.to_string();
    t.engine.store().customer(&id).await.unwrap().expect("customer exists")
}

async fn stored_order(t: &TestEngine, order_id: &str) -> orders::StoredOrder {
    let id = order_id.to_string();
    t.engine.store().order(&id).await.unwrap().expect("order stored")
}

// ---------------------------------------------------------------------------
// UC1–UC5
// ---------------------------------------------------------------------------

#[tokio::test]
async fn uc1_gold_customer_gets_ten_percent_ships_from_nearest_warehouse_and_emits_three_events() {
    let t = TestEngine::start().await;
    let tv_before = t.stock_in("WH-BLR", "TV-55-OLED").await;
    let hdmi_before = t.stock_in("WH-BLR", "HDMI-2M").await;

    let invoice = confirmed(t.order("C-1001", &[("TV-55-OLED", 1), ("HDMI-2M", 2)], "tok_ok", None).await);

    assert_eq!(invoice.status, "CONFIRMED");
    assert!(invoice.order_id.starts_with("ord_"), "{}", invoice.order_id);
    assert_eq!((invoice.customer.id.as_str(), invoice.customer.tier.as_str()), ("C-1001", "GOLD"));
    assert_eq!(invoice.currency, "USD");
    let items: Vec<(&str, u32, u64)> =
        invoice.items.iter().map(|i| (i.sku.as_str(), i.quantity, i.line_total_cents)).collect();
    assert_eq!(items, [("TV-55-OLED", 1, 89_900), ("HDMI-2M", 2, 3_000)]);
    assert_eq!(invoice.subtotal_cents, 92_900);

    // One discount line: gold-loyalty, 10 % of the subtotal, naming its module.
    assert_eq!(invoice.discounts.len(), 1, "{:?}", invoice.discounts);
    let discount = &invoice.discounts[0];
    assert_eq!(discount.rule, "gold-loyalty");
    assert_eq!(discount.amount_cents, invoice.subtotal_cents / 10);
    assert_eq!(discount.amount_cents, 9_290);
    assert_eq!(discount.module, "gold_loyalty.wasm");
    assert_eq!(discount.version, "1.0.0");
    assert_digest(&discount.digest);
    assert_eq!(invoice.discount_cents, 9_290);
    assert_eq!(invoice.total_cents, invoice.subtotal_cents - invoice.discount_cents);
    assert_eq!(invoice.total_cents, 83_610);

    // The nearest warehouse that covers the cart: WH-BLR for Bengaluru.
    let home = customer(&t, "C-1001").await.location;
    assert_eq!(invoice.ship_to, home);
    assert_eq!(invoice.allocations.len(), 1, "{:?}", invoice.allocations);
    let allocation = &invoice.allocations[0];
    assert_eq!(allocation.warehouse_id, "WH-BLR");
    let blr = GeoPoint { lat: 12.9698, lon: 77.75 };
    assert_eq!(allocation.distance_km, distance_km(home, blr));
    assert!(allocation.distance_km > 0.0, "{}", allocation.distance_km);
    for (id, location) in [
        ("WH-BOM", GeoPoint { lat: 19.2813, lon: 73.0483 }),
        ("WH-DEL", GeoPoint { lat: 28.4595, lon: 77.0266 }),
        ("WH-MAA", GeoPoint { lat: 12.9675, lon: 79.9419 }),
    ] {
        assert!(distance_km(home, location) > allocation.distance_km, "{id} is nearer");
    }
    let mut lines: Vec<(&str, u32)> = allocation.lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
    lines.sort();
    assert_eq!(lines, [("HDMI-2M", 2), ("TV-55-OLED", 1)]);

    // Captured at once, exactly one charge of the total under the order's key.
    assert_eq!(invoice.payment.status, "CAPTURED");
    assert_eq!(invoice.payment.attempts, 1);
    assert_eq!(invoice.payment.gateway, "sandbox");
    assert!(invoice.payment.transaction_id.as_deref().is_some_and(|t| t.starts_with("txn_")));
    assert_eq!(t.charges(), [(format!("pay_{}", invoice.order_id), 83_610)]);

    // Stock taken for good, nothing left held; the cart is emptied.
    let tv_after = t.stock_in("WH-BLR", "TV-55-OLED").await;
    assert_eq!(tv_after.on_hand, tv_before.on_hand - 1);
    assert_eq!(tv_after.available, tv_after.on_hand);
    let hdmi_after = t.stock_in("WH-BLR", "HDMI-2M").await;
    assert_eq!((hdmi_after.on_hand, hdmi_after.available), (hdmi_before.on_hand - 2, hdmi_before.on_hand - 2));
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(t.cart("C-1001").await, []);
    assert_eq!(stored_order(&t, &invoice.order_id).await.status, "CONFIRMED");

    // The three events, each delivered exactly once.
    t.drain().await;
    let [audit, analytics, fraud] = delivered_once(&t, &invoice);
    assert_eq!(audit["payload"]["status"], "CONFIRMED");
    assert_eq!(audit["payload"]["total_cents"], 83_610);
    assert_eq!(analytics["payload"]["total_cents"], 83_610);
    assert_eq!(fraud["payload"]["fraud_review"]["action"], "ALLOW");

    // Analytics carries no personal data, and the customer only as a pseudonym.
    let text = analytics.to_string();
    let person = customer(&t, "C-1001").await;
    for secret in
        [person.name.as_str(), person.email.as_str(), person.phone.as_str(), "\"lat\"", "\"lon\"", "tok_ok", "C-1001"]
    {
        assert!(!text.contains(secret), "analytics event contains {secret}: {text}");
    }
    let pseudonym = analytics["payload"]["customer"].as_str().expect("a pseudonym");
    assert!(pseudonym.starts_with("cus_"), "{pseudonym}");
    t.engine.shutdown().await;
}

#[tokio::test]
async fn uc2_silver_customer_gets_no_discount_line() {
    let t = TestEngine::start().await;
    let invoice = confirmed(t.order("C-1002", &[("WASHER-8KG", 1)], "tok_ok", None).await);
    assert_eq!(invoice.customer.tier.as_str(), "SILVER");
    assert_eq!(invoice.subtotal_cents, 54_900);
    assert_eq!(invoice.discounts, []);
    assert_eq!(invoice.discount_cents, 0);
    assert_eq!(invoice.total_cents, 54_900);
    // Mumbai ships from Bhiwandi.
    assert_eq!(invoice.allocations.len(), 1);
    assert_eq!(invoice.allocations[0].warehouse_id, "WH-BOM");
    assert_eq!(t.charges(), [(format!("pay_{}", invoice.order_id), 54_900)]);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn uc2_coupons_stack_after_loyalty_in_any_case_and_unknown_codes_reserve_nothing() {
    let t = TestEngine::start().await;

    // GOLD + WELCOME10: 10 % off 3000, then 10 % off the remaining 2700.
    let invoice = confirmed(t.order("C-1001", &[("HDMI-2M", 2)], "tok_ok", Some("welcome10")).await);
    let lines: Vec<(&str, &str, u64)> =
        invoice.discounts.iter().map(|d| (d.rule.as_str(), d.module.as_str(), d.amount_cents)).collect();
    assert_eq!(lines, [("gold-loyalty", "gold_loyalty.wasm", 300), ("coupons", "coupons.wasm", 270)]);
    assert_digest(&invoice.discounts[1].digest);
    assert_eq!((invoice.subtotal_cents, invoice.discount_cents, invoice.total_cents), (3_000, 570, 2_430));
    assert_eq!(invoice.coupon_code.as_deref(), Some("welcome10"));

    // SILVER + WeLcOmE10: only the coupon.
    let invoice = confirmed(t.order("C-1002", &[("MOUSE-WIRELESS", 1)], "tok_ok", Some("WeLcOmE10")).await);
    let lines: Vec<(&str, u64)> = invoice.discounts.iter().map(|d| (d.rule.as_str(), d.amount_cents)).collect();
    assert_eq!(lines, [("coupons", 250)]);
    assert_eq!(invoice.total_cents, 2_250);

    // FLAT500 for SILVER: 500 cents off.
    let invoice = confirmed(t.order("C-1002", &[("MOUSE-WIRELESS", 1)], "tok_ok", Some("FLAT500")).await);
    let lines: Vec<(&str, u64)> = invoice.discounts.iter().map(|d| (d.rule.as_str(), d.amount_cents)).collect();
    assert_eq!(lines, [("coupons", 500)]);
    assert_eq!(invoice.total_cents, 2_000);

    // FLAT500 for GOLD: after 10 % loyalty, 500 off what is left.
    let invoice = confirmed(t.order("C-1005", &[("HDMI-2M", 1)], "tok_ok", Some("flat500")).await);
    let lines: Vec<(&str, u64)> = invoice.discounts.iter().map(|d| (d.rule.as_str(), d.amount_cents)).collect();
    assert_eq!(lines, [("gold-loyalty", 150), ("coupons", 500)]);
    assert_eq!(invoice.total_cents, 850);

    // An unknown code: refused, nothing held, nothing charged.
    let stock_before = figures(&t.stock("MOUSE-WIRELESS").await);
    let charges_before = t.charges();
    let e = refused(t.order("C-1002", &[("MOUSE-WIRELESS", 1)], "tok_ok", Some("BOGUS-CODE")).await);
    assert_eq!(e.code(), "INVALID_COUPON");
    assert_eq!(e.status(), 422);
    assert_eq!(e.details().unwrap()["module"], "coupons.wasm");
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(t.reserved_units().await, 0);
    assert_eq!(figures(&t.stock("MOUSE-WIRELESS").await), stock_before);
    assert_eq!(t.charges(), charges_before);
    assert_eq!(t.charges().len(), 4);
    // The cart is kept for another try.
    assert_eq!(t.cart("C-1002").await, [("MOUSE-WIRELESS".to_string(), 1)]);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn uc3_out_of_stock_names_the_sku_and_reserves_and_charges_nothing() {
    let t = TestEngine::start().await;
    let before = figures(&t.stock("LIMITED-CONSOLE").await);
    assert_eq!(before, [("WH-BLR".to_string(), 1, 1), ("WH-DEL".to_string(), 1, 1)]);

    let e = refused(t.order("C-1003", &[("LIMITED-CONSOLE", 2)], "tok_ok", None).await);
    assert_eq!(e.code(), "OUT_OF_STOCK");
    assert_eq!(e.status(), 409);
    assert_eq!(e.details(), Some(json!({"sku": "LIMITED-CONSOLE", "requested": 2, "available": 1})));
    assert_eq!(e.stage().map(|s| s.as_str()), Some("inventory"));

    assert_eq!(figures(&t.stock("LIMITED-CONSOLE").await), before);
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(t.order_rows().await, 0);
    assert_eq!(t.charges(), []);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn uc4_declines_and_outages_release_stock_exactly_and_transients_are_retried_to_one_charge() {
    let t = TestEngine::start().await;
    let before = figures(&t.stock("PHONE-X12").await);

    // Declined: one attempt, recorded PAYMENT_FAILED, stock back exactly.
    let declined = payment_failed(t.order("C-1005", &[("PHONE-X12", 1)], "tok_decline", None).await);
    assert_eq!(declined.status, "PAYMENT_FAILED");
    assert_eq!(declined.payment.status, "FAILED");
    assert_eq!(declined.payment.attempts, 1);
    assert_eq!(declined.payment.transaction_id, None);
    assert_eq!(figures(&t.stock("PHONE-X12").await), before);
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(stored_order(&t, &declined.order_id).await.status, "PAYMENT_FAILED");
    // A failed order keeps the cart.
    assert_eq!(t.cart("C-1005").await, [("PHONE-X12".to_string(), 1)]);

    // Down through the whole retry budget (never reached: nothing to
    // resolve), then released.
    let down = payment_failed(t.place("C-1005", "tok_down", None).await);
    assert_eq!(down.status, "PAYMENT_FAILED");
    assert!(down.payment.attempts > 3, "retried for the budget, not three times: {}", down.payment.attempts);
    assert_eq!(figures(&t.stock("PHONE-X12").await), before);
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(t.reserved_units().await, 0);
    assert_eq!(t.charges(), []);

    // Two transient failures, captured on the third attempt, charged once.
    let paid = confirmed(t.place("C-1005", "tok_transient_2", None).await);
    assert_eq!(paid.payment.status, "CAPTURED");
    assert_eq!(paid.payment.attempts, 3);
    assert_eq!(t.charges(), [(format!("pay_{}", paid.order_id), paid.total_cents)]);
    let after: Vec<(String, u64, u64)> = figures(&t.stock("PHONE-X12").await);
    let taken: u64 = before.iter().zip(&after).map(|(b, a)| b.1 - a.1).sum();
    assert_eq!(taken, 1);

    // Failed orders emit their three events too.
    t.drain().await;
    for invoice in [&declined, &down, &paid] {
        let [audit, analytics, _fraud] = delivered_once(&t, invoice);
        assert_eq!(audit["payload"]["status"], invoice.status.as_str());
        assert_eq!(analytics["payload"]["payment_attempts"], invoice.payment.attempts);
    }
    assert_eq!(t.event_lines("audit").len(), 3);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn uc5_high_value_order_is_confirmed_then_escalated_by_the_fraud_check() {
    let t = TestEngine::start().await;
    let big = confirmed(t.order("C-1003", &[("LAPTOP-PRO-16", 3)], "tok_ok", None).await);
    assert_eq!(big.subtotal_cents, 749_700);
    assert_eq!(big.total_cents, 749_700);
    assert_eq!(big.fraud_review, None, "the fraud checks run after the answer");
    let small = confirmed(t.order("C-1002", &[("HDMI-2M", 1)], "tok_ok", None).await);

    t.drain().await;

    let review = stored_order(&t, &big.order_id).await.fraud_review.expect("reviewed");
    assert_eq!(review["action"], "ESCALATE");
    assert_eq!(review["flags"], json!(["HIGH_VALUE"]));
    assert_eq!(review["module"], "high_value.wasm");
    assert_eq!(review["version"], "1.0.0");
    let score = review["score"].as_u64().expect("a score");
    assert!(score <= 100, "{score}");

    let review = stored_order(&t, &small.order_id).await.fraud_review.expect("reviewed");
    assert_eq!(review["action"], "ALLOW");
    assert_eq!(review["flags"], json!([]));

    let escalated = t.engine.store().escalations(100).await.unwrap();
    let ids: Vec<&str> = escalated.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, [big.order_id.as_str()]);
    assert_eq!(escalated[0].total_cents, 749_700);
    assert_eq!(escalated[0].status, "CONFIRMED");

    let [_, _, fraud] = delivered_once(&t, &big);
    assert_eq!(fraud["payload"]["fraud_review"]["action"], "ESCALATE");
    assert_eq!(fraud["payload"]["fraud_review"]["flags"], json!(["HIGH_VALUE"]));
    assert_eq!(fraud["payload"]["total_cents"], 749_700);
    let [_, _, fraud] = delivered_once(&t, &small);
    assert_eq!(fraud["payload"]["fraud_review"]["action"], "ALLOW");
    t.engine.shutdown().await;
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn expired_token(customer: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": customer, "exp": now - 3600, "iat": now - 7200}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

#[tokio::test]
async fn validation_refusals_create_no_order() {
    let t = TestEngine::start().await;
    t.fill_cart("C-1001", &[("HDMI-2M", 1)]).await;
    t.fill_cart("C-1004", &[("HDMI-2M", 1)]).await;
    let with_token = |customer: &str, token: String| OrderRequest {
        customer_token: token,
        ..order_request(customer, "tok_ok", None)
    };
    let cases: Vec<(&str, OrderRequest, &str, &str)> = vec![
        ("blocked", order_request("C-1004", "tok_ok", None), "CUSTOMER_BLOCKED", "validate"),
        (
            "another customer's token",
            with_token("C-1001", mint_token(SECRET, "C-1002", Duration::from_secs(600))),
            "CUSTOMER_MISMATCH",
            "validate",
        ),
        ("expired token", with_token("C-1001", expired_token("C-1001")), "INVALID_CUSTOMER_TOKEN", "validate"),
        ("garbage token", with_token("C-1001", "not-a-jwt".into()), "INVALID_CUSTOMER_TOKEN", "validate"),
        (
            "wrong secret",
            with_token("C-1001", mint_token(b"some-other-secret", "C-1001", Duration::from_secs(600))),
            "INVALID_CUSTOMER_TOKEN",
            "validate",
        ),
        ("unknown customer", order_request("C-9999", "tok_ok", None), "CUSTOMER_NOT_FOUND", "validate"),
        ("empty cart", order_request("C-1002", "tok_ok", None), "EMPTY_CART", "cart"),
    ];
    for (what, request, code, stage) in cases {
        let e = refused(t.engine.pipeline().place_order(request).await);
        assert_eq!(e.code(), code, "{what}: {e}");
        assert_eq!(e.stage().map(|s| s.as_str()), Some(stage), "{what}");
    }
    assert_eq!(t.order_rows().await, 0);
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(t.charges(), []);
    // The valid token still works.
    confirmed(t.place("C-1001", "tok_ok", None).await);
    assert_eq!(t.order_rows().await, 1);
    t.engine.shutdown().await;
}

// ---------------------------------------------------------------------------
// Failure paths
// ---------------------------------------------------------------------------

/// A plug-in dir with the bundled rules plus `hostile_panic.wasm` as a
/// second discount rule failing `fail_mode`.
fn plugins_with_crashing_coupon_engine(fail_mode: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["gold_loyalty.wasm", "nearest_warehouse.wasm", "high_value.wasm"] {
        std::fs::copy(bundled_plugins().join(file), dir.path().join(file)).unwrap();
    }
    std::fs::copy(wasm("hostile_panic"), dir.path().join("hostile_panic.wasm")).unwrap();
    let manifest = format!(
        r#"
[[discount]]
module = "gold_loyalty.wasm"
config = {{ percent = "10" }}

[[discount]]
module = "hostile_panic.wasm"
fail_mode = "{fail_mode}"

[warehouse]
module = "nearest_warehouse.wasm"

[[fraud]]
module = "high_value.wasm"
fail_mode = "open"
"#
    );
    std::fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
    dir
}

#[tokio::test]
async fn a_crashing_fail_closed_discount_rule_fails_the_order_and_holds_no_stock() {
    let plugins = plugins_with_crashing_coupon_engine("closed");
    let t = TestEngine::start_with(plugins.path(), |_| {}).await;
    let before = figures(&t.stock("TV-55-OLED").await);

    let e = refused(t.order("C-1001", &[("TV-55-OLED", 1)], "tok_ok", None).await);
    assert_eq!(e.code(), "RULE_FAILED");
    assert_eq!(e.status(), 503);
    assert_eq!(e.stage().map(|s| s.as_str()), Some("discount"));
    let details = e.details().expect("details");
    assert_eq!(details["slot"], "discount");
    assert_eq!(details["module"], "hostile_panic.wasm");
    assert_eq!(details["rule"], "hostile-panic");
    assert_eq!(details["version"], "0.1.0");
    assert_eq!(details["cause"], "trap");

    // The inventory leg ran beside the failing discount leg and planned the
    // TV, but nothing is written before both legs succeed: no order, no
    // hold, nothing to undo.
    assert_eq!(t.order_rows().await, 0);
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(t.reserved_units().await, 0);
    assert_eq!(figures(&t.stock("TV-55-OLED").await), before);
    assert_eq!(t.charges(), []);
    // Nothing reached payment: no events.
    let events: i64 = t.query(|c| c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))).await;
    assert_eq!(events, 0);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn a_crashing_fail_open_discount_rule_is_skipped_and_named() {
    let plugins = plugins_with_crashing_coupon_engine("open");
    let t = TestEngine::start_with(plugins.path(), |_| {}).await;
    let invoice = confirmed(t.order("C-1001", &[("TV-55-OLED", 1)], "tok_ok", None).await);
    assert_eq!(invoice.status, "CONFIRMED");
    let discounts: Vec<(&str, u64)> = invoice.discounts.iter().map(|d| (d.rule.as_str(), d.amount_cents)).collect();
    assert_eq!(discounts, [("gold-loyalty", 8_990)]);
    assert_eq!(invoice.skipped_rules.len(), 1, "{:?}", invoice.skipped_rules);
    assert_eq!(invoice.skipped_rules[0].slot, "discount");
    assert_eq!(invoice.skipped_rules[0].module, "hostile_panic.wasm");
    // The cause's kind and an error id; what the guest said goes to the operators only.
    assert_eq!(invoice.skipped_rules[0].cause, "trap");
    let error_id = invoice.skipped_rules[0].error_id.clone().expect("an error_id");
    let answered = serde_json::to_string(&invoice).unwrap();
    assert!(!answered.contains("coupon engine crashed"), "the guest's words reached the invoice: {answered}");
    let stored = stored_order(&t, &invoice.order_id).await.invoice.expect("the stored invoice");
    assert!(!stored.contains("coupon engine crashed"), "the guest's words were stored: {stored}");
    let listed = t.engine.pipeline().rule_errors().recent().into_iter().find(|e| e.error_id == error_id);
    let listed = listed.unwrap_or_else(|| panic!("{error_id} is not in the operators' list"));
    assert_eq!(listed.handling, rule_errors::Handling::Skipped);
    assert_eq!(listed.order_id.as_deref(), Some(invoice.order_id.as_str()));
    assert_eq!((listed.slot.as_str(), listed.module.as_str()), ("discount", "hostile_panic.wasm"));
    assert_eq!(listed.cause_kind, "trap");
    assert!(listed.cause.contains("coupon engine crashed"), "the guest's panic message: {}", listed.cause);
    assert_eq!(t.charges(), [(format!("pay_{}", invoice.order_id), 80_910)]);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn a_failing_fail_open_fraud_check_is_skipped_with_its_kind_and_error_id() {
    let plugins = tempfile::tempdir().unwrap();
    for file in ["gold_loyalty.wasm", "nearest_warehouse.wasm", "high_value.wasm"] {
        std::fs::copy(bundled_plugins().join(file), plugins.path().join(file)).unwrap();
    }
    // A threshold the rule cannot parse: it answers an error on every order.
    let manifest = r#"
[[discount]]
module = "gold_loyalty.wasm"

[warehouse]
module = "nearest_warehouse.wasm"

[[fraud]]
module = "high_value.wasm"
fail_mode = "open"
config = { threshold_cents = "SECRET-WORDS-7d2a" }
"#;
    std::fs::write(plugins.path().join("manifest.toml"), manifest).unwrap();
    let t = TestEngine::start_with(plugins.path(), |_| {}).await;
    let invoice = confirmed(t.order("C-1002", &[("HDMI-2M", 1)], "tok_ok", None).await);
    t.drain().await;

    let review = stored_order(&t, &invoice.order_id).await.fraud_review.expect("reviewed");
    assert_eq!(review["action"], "ALLOW", "nothing checked it: {review}");
    let skipped = review["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{review}");
    assert_eq!(skipped[0]["module"], "high_value.wasm");
    assert_eq!(skipped[0]["cause"], "guest_error");
    assert!(!review.to_string().contains("SECRET-WORDS-7d2a"), "the rule's words reached the review: {review}");
    let error_id = skipped[0]["error_id"].as_str().expect("an error_id");
    let listed = t.engine.pipeline().rule_errors().recent().into_iter().find(|e| e.error_id == error_id);
    let listed = listed.unwrap_or_else(|| panic!("{error_id} is not in the operators' list"));
    assert_eq!((listed.slot.as_str(), listed.handling), ("fraud", rule_errors::Handling::Skipped));
    assert_eq!(listed.order_id.as_deref(), Some(invoice.order_id.as_str()));
    assert!(listed.cause.contains("SECRET-WORDS-7d2a"), "{}", listed.cause);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn a_locked_store_is_dependency_unavailable_and_leaves_nothing_behind() {
    let t = TestEngine::start_with(&bundled_plugins(), |settings| {
        settings.store.busy_timeout = Duration::from_millis(100);
    })
    .await;
    t.fill_cart("C-1001", &[("TV-55-OLED", 1)]).await;
    let before = figures(&t.stock("TV-55-OLED").await);

    // Another process holds the write lock.
    let blocker = rusqlite::Connection::open(t.data_dir().join("smartmart.sqlite")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let e = refused(t.place("C-1001", "tok_ok", None).await);
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    assert_eq!(e.code(), "DEPENDENCY_UNAVAILABLE", "{e}");
    assert_eq!(e.status(), 503);
    // In WAL mode the reads of validate and cart still succeed; the hold is
    // the first write, so the inventory stage is the one that fails.
    assert_eq!(e.stage().map(|s| s.as_str()), Some("inventory"), "{e}");
    assert_eq!(t.order_rows().await, 0);
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(figures(&t.stock("TV-55-OLED").await), before);
    assert_eq!(t.charges(), []);

    // The store is back: the same cart goes through.
    confirmed(t.place("C-1001", "tok_ok", None).await);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_payment_gateway_fails_after_its_retry_budget_and_releases_the_stock() {
    // A port nobody listens on: no request ever reaches a gateway, so
    // nothing can have been charged and the order may fail at once.
    let port = crate::support::ports::free_port();
    let t = TestEngine::start_with(&bundled_plugins(), |settings| {
        settings.gateway = GatewayChoice::Http {
            url: format!("http://127.0.0.1:{port}"),
            options: HttpGatewayOptions { timeout: Duration::from_secs(2), ca_file: None },
        };
    })
    .await;
    assert!(t.engine.sandbox_charges().is_none());
    let before = figures(&t.stock("TV-55-OLED").await);

    let failed = payment_failed(t.order("C-1001", &[("TV-55-OLED", 1)], "tok_ok", None).await);
    assert_eq!(failed.status, "PAYMENT_FAILED");
    assert!(failed.payment.attempts > 1, "{}", failed.payment.attempts);
    assert!(failed.payment.failure.as_deref().unwrap_or("").contains("cannot connect"), "{:?}", failed.payment.failure);
    assert_eq!(failed.payment.transaction_id, None);
    assert_eq!(stored_order(&t, &failed.order_id).await.status, "PAYMENT_FAILED");
    assert_eq!(figures(&t.stock("TV-55-OLED").await), before);
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(t.reserved_units().await, 0);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn a_cart_fetch_slower_than_the_stage_timeout_is_stage_timeout_cart() {
    let t = TestEngine::start_with(&bundled_plugins(), |settings| {
        settings.stage_timeout = Duration::from_secs(1);
        settings.faults.cart_delay = Duration::from_secs(60);
    })
    .await;
    let e = refused(t.order("C-1001", &[("TV-55-OLED", 1)], "tok_ok", None).await);
    assert_eq!(e.code(), "STAGE_TIMEOUT");
    assert_eq!(e.status(), 504);
    assert_eq!(e.stage().map(|s| s.as_str()), Some("cart"));
    assert_eq!(t.order_rows().await, 0);
    assert_eq!(t.held_reservations().await, 0);
    assert_eq!(t.charges(), []);
    t.engine.shutdown().await;
}

// ---------------------------------------------------------------------------
// Contention
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_orders_for_ten_units_confirm_exactly_ten() {
    const SKU: &str = "CONTENDED-GADGET";
    const CUSTOMERS: usize = 200;
    let t = TestEngine::start_with(&bundled_plugins(), |settings| {
        // Only the outcome matters here, not how long 200 orders queue on 2 cores.
        settings.stage_timeout = Duration::from_secs(120);
    })
    .await;
    // Ten units over three warehouses, and 200 customers with one unit each in the cart.
    let cities = [
        GeoPoint { lat: 12.9716, lon: 77.5946 },
        GeoPoint { lat: 19.076, lon: 72.8777 },
        GeoPoint { lat: 28.7041, lon: 77.1025 },
    ];
    let product = Product {
        sku: SKU.into(),
        name: "Contended gadget".into(),
        category: "electronics".into(),
        unit_price_cents: 10_000,
    };
    let stock = [("WH-BLR", 4), ("WH-BOM", 3), ("WH-DEL", 3)].map(|(w, units)| (w.to_string(), SKU.to_string(), units));
    let customers = (0..CUSTOMERS)
        .map(|n| Customer {
            id: format!("C-LOAD-{n:03}"),
            name: format!("Load {n}"),
            email: format!("load{n}@example.com"),
            phone: format!("+91-00-0000-{n:04}"),
            tier: Tier::Standard,
            status: AccountStatus::Active,
            location: cities[n % cities.len()],
        })
        .collect();
    let store = t.engine.store();
    store.load_catalog(customers, vec![product], vec![], stock.to_vec()).await.unwrap();
    for n in 0..CUSTOMERS {
        store.replace_cart(&format!("C-LOAD-{n:03}"), vec![CartItem { sku: SKU.into(), quantity: 1 }]).await.unwrap();
    }

    let mut tasks = Vec::new();
    for n in 0..CUSTOMERS {
        let pipeline = t.engine.pipeline().clone();
        tasks.push(tokio::spawn(async move {
            pipeline.place_order(order_request(&format!("C-LOAD-{n:03}"), "tok_ok", None)).await
        }));
    }
    let mut confirmed_from: BTreeMap<String, u32> = BTreeMap::new();
    let mut codes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(invoice) => {
                assert_eq!(invoice.allocations.len(), 1);
                let allocation = &invoice.allocations[0];
                assert_eq!(allocation.lines.len(), 1);
                assert_eq!(allocation.lines[0].quantity, 1);
                *confirmed_from.entry(allocation.warehouse_id.clone()).or_default() += 1;
                *codes.entry("CONFIRMED").or_default() += 1;
            }
            Err(e) => {
                if let OrderError::OutOfStock { sku, requested, .. } = &e {
                    assert_eq!((sku.as_str(), *requested), (SKU, 1));
                }
                *codes.entry(e.code().as_str()).or_default() += 1;
            }
        }
    }
    assert_eq!(codes, BTreeMap::from([("CONFIRMED", 10), ("OUT_OF_STOCK", CUSTOMERS - 10)]));
    assert_eq!(
        confirmed_from,
        BTreeMap::from([("WH-BLR".to_string(), 4), ("WH-BOM".to_string(), 3), ("WH-DEL".to_string(), 3)])
    );
    let after = figures(&t.stock(SKU).await);
    assert_eq!(after, [("WH-BLR".to_string(), 0, 0), ("WH-BOM".to_string(), 0, 0), ("WH-DEL".to_string(), 0, 0)]);
    let (on_hand, reserved): (i64, i64) = t
        .query(|c| {
            c.query_row("SELECT sum(on_hand), sum(reserved) FROM stock WHERE sku = ?1", [SKU], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })
        .await;
    assert_eq!((on_hand, reserved), (0, 0));
    assert_eq!(t.held_reservations().await, 0);
    let statuses: Vec<(String, i64)> = t
        .query(|c| {
            c.prepare("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await;
    assert_eq!(statuses, [("CONFIRMED".to_string(), 10)]);
    assert_eq!(t.charges().len(), 10);
    t.engine.shutdown().await;
}
