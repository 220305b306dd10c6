//! The HTTP service over real HTTP (docs/api.md): the real router and
//! server on a loopback port, the bundled rules, the demo data set, the
//! sandbox gateway; and the real binary for start-up and shutdown.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::server::{
    ADMIN_KEY, Answer, BODY_LIMIT, MOBILE_KEY, PARTNER_KEY, TestServer, WEB_KEY, now_secs, send, signed_token, token,
};
use crate::support::{SECRET, bundled_plugins, demo_dataset, order_body};

/// UC1's body: C-1001 with WELCOME10, shipping to Bengaluru.
fn uc1_body() -> Value {
    json!({
        "customer_id": "C-1001",
        "coupon_code": "WELCOME10",
        "payment": {"token": "tok_ok"},
        "ship_to": {"lat": 12.97, "lon": 77.59}
    })
}

fn is_rfc3339(text: &str) -> bool {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).is_ok()
}

/// `(on_hand, available)` of `sku` in `warehouse` as the admin API shows it.
async fn stock_in(server: &TestServer, warehouse: &str, sku: &str) -> (u64, u64) {
    let stock = server.stock(sku).await;
    let level = stock["warehouses"]
        .as_array()
        .expect("warehouses")
        .iter()
        .find(|w| w["warehouse_id"] == warehouse)
        .unwrap_or_else(|| panic!("{warehouse} does not list {sku}: {stock}"));
    (level["on_hand"].as_u64().unwrap(), level["available"].as_u64().unwrap())
}

#[track_caller]
fn assert_item(item: &Value, sku: &str, name: &str, category: &str, quantity: u64, unit_price_cents: u64) {
    assert_eq!(item["sku"], sku, "{item}");
    assert_eq!(item["name"], name, "{item}");
    assert_eq!(item["category"], category, "{item}");
    assert_eq!(item["quantity"], quantity, "{item}");
    assert_eq!(item["unit_price_cents"], unit_price_cents, "{item}");
    assert_eq!(item["line_total_cents"], quantity * unit_price_cents, "{item}");
}

// ---------------------------------------------------------------------------
// The happy paths.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn carts_are_replaced_and_read_back_resolved() {
    let server = TestServer::start().await;
    let put = server.put_cart("C-1001", &[("TV-55-OLED", 1), ("HDMI-2M", 2)]).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert!(put.is_json(), "{put:?}");
    assert_eq!(put.json["customer_id"], "C-1001");
    assert_eq!(put.json["currency"], "USD");
    assert_eq!(put.json["subtotal_cents"], 89_900 + 2 * 1_500);
    let items = put.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{}", put.text());
    assert_item(&items[0], "TV-55-OLED", "55\" OLED TV", "electronics", 1, 89_900);
    assert_item(&items[1], "HDMI-2M", "HDMI 2.1 cable, 2 m", "accessories", 2, 1_500);

    let get = send(server.web_as(Method::GET, "/v1/carts/C-1001", "C-1001")).await;
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(get.json, put.json);

    // Replacing, not adding; another channel's key works as well.
    let replaced = send(
        server
            .keyed(Method::PUT, "/v1/carts/C-1001", MOBILE_KEY)
            .header("x-customer-token", token("C-1001"))
            .json(&json!({"items": [{"sku": "MOUSE-WIRELESS", "quantity": 3}]})),
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    assert_eq!(replaced.json["items"].as_array().unwrap().len(), 1);
    assert_eq!(replaced.json["subtotal_cents"], 3 * 2_500);
    let get = send(server.web_as(Method::GET, "/v1/carts/C-1001", "C-1001")).await;
    assert_eq!(get.json, replaced.json);

    // An empty cart is a cart.
    let emptied = server.put_cart("C-1001", &[]).await;
    assert_eq!(emptied.status, 200, "{}", emptied.text());
    assert_eq!(emptied.json, json!({"customer_id": "C-1001", "items": [], "subtotal_cents": 0, "currency": "USD"}));
    server.stop().await;
}

#[tokio::test]
async fn an_order_answers_the_whole_invoice_and_reads_back_with_its_fraud_review() {
    let server = TestServer::start().await;
    let stock_before = stock_in(&server, "WH-BLR", "TV-55-OLED").await;
    let answer = server.order("C-1001", &[("TV-55-OLED", 1)], &uc1_body()).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert!(answer.is_json(), "{answer:?}");
    let invoice = &answer.json;

    let order_id = invoice["order_id"].as_str().expect("order_id");
    assert!(order_id.starts_with("ord_"), "{invoice}");
    assert_eq!(invoice["status"], "CONFIRMED");
    assert_eq!(invoice["channel"], "web");
    assert_eq!(invoice["customer"], json!({"id": "C-1001", "name": "Asha Rao", "tier": "GOLD", "status": "ACTIVE"}));
    let items = invoice["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_item(&items[0], "TV-55-OLED", "55\" OLED TV", "electronics", 1, 89_900);
    assert_eq!(invoice["currency"], "USD");
    assert_eq!(invoice["subtotal_cents"], 89_900);

    // GOLD 10 %, then WELCOME10 10 % of what is left.
    let discounts = invoice["discounts"].as_array().expect("discounts");
    assert_eq!(discounts.len(), 2, "{invoice}");
    for (discount, rule, module, amount) in
        [(&discounts[0], "gold-loyalty", "gold_loyalty.wasm", 8_990), (&discounts[1], "coupons", "coupons.wasm", 8_091)]
    {
        let keys: BTreeSet<&str> = discount.as_object().unwrap().keys().map(String::as_str).collect();
        for key in ["rule", "module", "version", "digest", "variant", "description", "amount_cents"] {
            assert!(keys.contains(key), "{key} missing from {discount}");
        }
        assert_eq!(discount["rule"], rule, "{discount}");
        assert_eq!(discount["module"], module, "{discount}");
        assert_eq!(discount["version"], "1.0.0", "{discount}");
        let digest = discount["digest"].as_str().unwrap();
        assert!(digest.starts_with("sha256:") && digest.len() == 7 + 64, "{discount}");
        assert_eq!(discount["variant"], Value::Null, "{discount}");
        assert!(!discount["description"].as_str().unwrap().is_empty(), "{discount}");
        assert_eq!(discount["amount_cents"], amount, "{discount}");
    }
    assert_eq!(invoice["discount_cents"], 8_990 + 8_091);
    assert_eq!(invoice["total_cents"], 89_900 - 8_990 - 8_091);

    let allocations = invoice["allocations"].as_array().expect("allocations");
    assert_eq!(allocations.len(), 1, "{invoice}");
    assert_eq!(allocations[0]["warehouse_id"], "WH-BLR");
    assert_eq!(allocations[0]["warehouse_name"], "Bengaluru (Whitefield) fulfilment centre");
    let distance = allocations[0]["distance_km"].as_f64().expect("distance_km");
    assert!(distance > 1.0 && distance < 50.0, "{distance}");
    assert_eq!(allocations[0]["lines"], json!([{"sku": "TV-55-OLED", "quantity": 1}]));

    let payment = &invoice["payment"];
    assert_eq!(payment["status"], "CAPTURED");
    assert!(payment["transaction_id"].as_str().unwrap().starts_with("txn_"), "{payment}");
    assert_eq!(payment["attempts"], 1);
    assert_eq!(payment["gateway"], "sandbox");

    let events = invoice["events"].as_array().expect("events");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["audit", "analytics", "fraud"]);
    for event in events {
        assert!(event["id"].as_str().unwrap().starts_with("evt_"), "{event}");
        assert_eq!(event["status"], "QUEUED");
    }
    for stage in ["validate", "cart", "discount", "inventory", "payment", "total"] {
        let ms = invoice["timings_ms"][stage].as_f64().unwrap_or_else(|| panic!("timings_ms.{stage}: {invoice}"));
        assert!(ms >= 0.0, "{stage}: {ms}");
    }
    assert!(is_rfc3339(invoice["created_at"].as_str().unwrap()), "{invoice}");

    // The effects: one charge of the total, the units gone, the cart empty.
    assert_eq!(server.charges().iter().map(|(_, amount)| *amount).collect::<Vec<_>>(), [72_819]);
    assert_eq!(stock_in(&server, "WH-BLR", "TV-55-OLED").await, (stock_before.0 - 1, stock_before.1 - 1));
    let cart = send(server.web_as(Method::GET, "/v1/carts/C-1001", "C-1001")).await;
    assert_eq!(cart.json["items"], json!([]), "{}", cart.text());

    // Read back: the stored invoice, plus the fraud review once it ran.
    let stored = server.order_with_review(order_id, "C-1001").await;
    let mut without_review = stored.json.clone();
    let review = without_review.as_object_mut().unwrap().remove("fraud_review").unwrap();
    for (key, value) in invoice.as_object().unwrap() {
        assert_eq!(&without_review[key], value, "GET differs in {key}");
    }
    assert_eq!(review["action"], "ALLOW", "{review}");
    assert_eq!(review["flags"], json!([]), "{review}");
    let score = review["score"].as_u64().expect("score");
    assert!(score <= 100, "{review}");
    assert_eq!(review["module"], "high_value.wasm", "{review}");
    assert_eq!(review["version"], "1.0.0", "{review}");

    // Another channel may read it too; an unknown order is 404.
    let mobile = send(
        server
            .keyed(Method::GET, &format!("/v1/orders/{order_id}"), MOBILE_KEY)
            .header("x-customer-token", token("C-1001")),
    )
    .await;
    assert_eq!(mobile.status, 200, "{}", mobile.text());
    server.get_order("ord_00000000000000000000000000000000", "C-1001").await.assert_error(404, "ORDER_NOT_FOUND");
    server.get_order("no such order!", "C-1001").await.assert_error(404, "ORDER_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn a_declined_payment_is_402_with_the_order_and_releases_the_stock() {
    let server = TestServer::start().await;
    let before = stock_in(&server, "WH-BOM", "HDMI-2M").await;
    let orders_before = server.count("orders");
    let answer = server.order("C-1002", &[("HDMI-2M", 2)], &order_body("C-1002", "tok_decline")).await;
    answer.assert_error(402, "PAYMENT_FAILED");
    let order = &answer.json["order"];
    assert_eq!(order["status"], "PAYMENT_FAILED", "{}", answer.text());
    let order_id = order["order_id"].as_str().expect("order.order_id");
    assert_eq!(order["customer"]["id"], "C-1002");
    assert_eq!(order["subtotal_cents"], 3_000);
    assert_eq!(order["discounts"], json!([]), "SILVER gets nothing");
    assert_eq!(order["total_cents"], 3_000);
    assert_ne!(order["payment"]["status"], "CAPTURED");
    assert_eq!(order["payment"]["attempts"], 1, "a decline is never retried");
    assert_eq!(order["events"].as_array().unwrap().len(), 3);

    assert!(server.charges().is_empty());
    assert_eq!(stock_in(&server, "WH-BOM", "HDMI-2M").await, before, "stock is released exactly");
    assert_eq!(server.count("orders"), orders_before + 1, "the failed order is recorded");
    let cart = send(server.web_as(Method::GET, "/v1/carts/C-1002", "C-1002")).await;
    assert_eq!(cart.json["items"].as_array().unwrap().len(), 1, "only a confirmed order empties the cart");

    let stored = server.order_with_review(order_id, "C-1002").await;
    assert_eq!(stored.json["status"], "PAYMENT_FAILED");
    assert_eq!(stored.json["order_id"], order_id);
    server.stop().await;
}

#[tokio::test]
async fn high_value_orders_are_escalated_and_listed_newest_first() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for customer in ["C-1005", "C-1001"] {
        let answer = server.order(customer, &[("LAPTOP-PRO-16", 3)], &order_body(customer, "tok_ok")).await;
        assert_eq!(answer.status, 201, "{}", answer.text());
        assert_eq!(answer.json["total_cents"], 674_730);
        let id = answer.json["order_id"].as_str().unwrap().to_string();
        let stored = server.order_with_review(&id, customer).await;
        let review = &stored.json["fraud_review"];
        assert_eq!(review["action"], "ESCALATE", "{review}");
        assert_eq!(review["flags"], json!(["HIGH_VALUE"]), "{review}");
        ids.push((id, customer));
    }
    // An ordinary order is not listed.
    let small = server.order("C-1002", &[("HDMI-2M", 1)], &order_body("C-1002", "tok_ok")).await;
    assert_eq!(small.status, 201, "{}", small.text());
    server.order_with_review(small.json["order_id"].as_str().unwrap(), "C-1002").await;

    let list = send(server.admin(Method::GET, "/v1/admin/fraud/escalations")).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let list = list.json.as_array().expect("an array").clone();
    let listed: Vec<&str> = list.iter().map(|o| o["order_id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[1].0.as_str(), ids[0].0.as_str()], "newest first");
    for (entry, (id, customer)) in list.iter().zip(ids.iter().rev()) {
        assert_eq!(entry["order_id"], id.as_str());
        assert_eq!(entry["customer_id"], *customer);
        assert_eq!(entry["status"], "CONFIRMED");
        assert_eq!(entry["total_cents"], 674_730);
        assert_eq!(entry["currency"], "USD");
        assert!(is_rfc3339(entry["created_at"].as_str().unwrap()), "{entry}");
        assert_eq!(entry["fraud_review"]["action"], "ESCALATE");
    }
    let one = send(server.admin(Method::GET, "/v1/admin/fraud/escalations?limit=1")).await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json.as_array().unwrap().len(), 1);
    assert_eq!(one.json[0]["order_id"], ids[1].0.as_str());
    for bad in ["limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=1e3", "bogus=1"] {
        send(server.admin(Method::GET, &format!("/v1/admin/fraud/escalations?{bad}")))
            .await
            .assert_error(400, "INVALID_REQUEST");
    }
    server.stop().await;
}

#[tokio::test]
async fn operations_load_the_catalog_and_read_stock_rules_and_experiments() {
    let server = TestServer::start().await;
    let customer = json!({
        "name": "Test Person", "email": "t@example.com", "phone": "+1-555-0100",
        "tier": "SILVER", "status": "ACTIVE", "location": {"lat": 52.52, "lon": 13.405}
    });
    let put = send(server.admin(Method::PUT, "/v1/admin/customers/C-9001").json(&customer)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json["id"], "C-9001");
    assert_eq!(put.json["tier"], "SILVER");

    let product = json!({"name": "Test gadget", "category": "gadgets", "unit_price_cents": 1_234});
    let put = send(server.admin(Method::PUT, "/v1/admin/products/GADGET-1").json(&product)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json["sku"], "GADGET-1");
    assert_eq!(put.json["unit_price_cents"], 1_234);

    let warehouse = json!({"name": "Berlin depot", "location": {"lat": 52.5, "lon": 13.4}});
    let put = send(server.admin(Method::PUT, "/v1/admin/warehouses/WH-BER").json(&warehouse)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json["id"], "WH-BER");

    let put = send(server.admin(Method::PUT, "/v1/admin/stock/WH-BER/GADGET-1").json(&json!({"on_hand": 25}))).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json, json!({"warehouse_id": "WH-BER", "sku": "GADGET-1", "on_hand": 25, "available": 25}));

    let stock = server.stock("GADGET-1").await;
    assert_eq!(
        stock,
        json!({"sku": "GADGET-1", "on_hand": 25, "available": 25, "warehouses": [
            {"warehouse_id": "WH-BER", "warehouse_name": "Berlin depot", "on_hand": 25, "available": 25}
        ]})
    );
    send(server.admin(Method::GET, "/v1/admin/stock/NO-SUCH-SKU")).await.assert_error(404, "NOT_FOUND");
    send(server.admin(Method::GET, "/v1/admin/stock/bad%20sku")).await.assert_error(404, "NOT_FOUND");
    send(server.admin(Method::PUT, "/v1/admin/stock/WH-NOWHERE/GADGET-1").json(&json!({"on_hand": 1})))
        .await
        .assert_error(404, "NOT_FOUND");
    send(server.admin(Method::PUT, "/v1/admin/stock/WH-BER/NO-SUCH-SKU").json(&json!({"on_hand": 1})))
        .await
        .assert_error(404, "NOT_FOUND");

    // What operations loaded is what customers order from.
    let order = server.order("C-9001", &[("GADGET-1", 2)], &order_body("C-9001", "tok_ok")).await;
    assert_eq!(order.status, 201, "{}", order.text());
    assert_eq!(order.json["total_cents"], 2_468);
    assert_eq!(order.json["allocations"][0]["warehouse_id"], "WH-BER");
    let stock = server.stock("GADGET-1").await;
    assert_eq!((stock["on_hand"].as_u64(), stock["available"].as_u64()), (Some(23), Some(23)));
    // An update replaces: the tier now counts.
    let gold = json!({
        "name": "Test Person", "email": "t@example.com", "phone": "+1-555-0100",
        "tier": "GOLD", "status": "ACTIVE", "location": {"lat": 52.52, "lon": 13.405}
    });
    assert_eq!(send(server.admin(Method::PUT, "/v1/admin/customers/C-9001").json(&gold)).await.status, 200);
    let order = server.order("C-9001", &[("GADGET-1", 10)], &order_body("C-9001", "tok_ok")).await;
    assert_eq!(order.status, 201, "{}", order.text());
    assert_eq!(order.json["discount_cents"], 1_234);

    let plugins = send(server.admin(Method::GET, "/v1/admin/plugins")).await;
    assert_eq!(plugins.status, 200, "{}", plugins.text());
    let list = plugins.json["plugins"].as_array().expect("plugins");
    assert!(plugins.json["errors"].is_array(), "{}", plugins.text());
    let mut slots: Vec<(&str, &str)> =
        list.iter().map(|p| (p["slot"].as_str().unwrap(), p["name"].as_str().unwrap())).collect();
    slots.sort();
    assert_eq!(
        slots,
        [
            ("discount", "coupons"),
            ("discount", "gold-loyalty"),
            ("fraud", "high-value"),
            ("warehouse", "nearest-warehouse")
        ]
    );
    for plugin in list {
        assert_eq!(plugin["version"], "1.0.0", "{plugin}");
        assert!(plugin["digest"].as_str().unwrap().starts_with("sha256:"), "{plugin}");
        assert!(plugin["file"].as_str().unwrap().ends_with(".wasm"), "{plugin}");
        assert!(plugin["loaded_at"].as_str().is_some_and(is_rfc3339), "{plugin}");
        for key in ["experiment", "variant"] {
            assert!(plugin.get(key).is_some(), "{key} missing from {plugin}");
        }
    }

    let experiments = send(server.admin(Method::GET, "/v1/admin/experiments")).await;
    assert_eq!(experiments.status, 200, "{}", experiments.text());
    assert!(experiments.json.is_array(), "{}", experiments.text());
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_the_openapi_document_need_no_key() {
    let server = TestServer::start().await;
    let health = send(server.request(Method::GET, "/healthz")).await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json["status"], "ok");
    let ready = send(server.request(Method::GET, "/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json["ready"], true);

    // One order so that the order and stage metrics have samples.
    let order = server.order("C-1002", &[("HDMI-2M", 1)], &order_body("C-1002", "tok_ok")).await;
    assert_eq!(order.status, 201, "{}", order.text());
    let metrics = send(server.request(Method::GET, "/metrics")).await;
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    let text = metrics.text();
    assert!(text.contains("smartmart_"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("# TYPE smartmart_")), "{text}");
    assert!(metrics.content_type.contains("text"), "{}", metrics.content_type);
    // The store writer's own figures: each order's commands ride in group
    // commits, and the writer's time is split into running and committing.
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (commits, commands) = (value("smartmart_store_commits_total"), value("smartmart_store_commands_total"));
    assert!(commits >= 1.0 && commands >= commits, "{commits} commits of {commands} commands");
    // At least the order's hold, its capture and its settlement.
    assert!(commands >= 3.0, "{commands}");
    assert!(value("smartmart_store_committing_seconds_total") > 0.0);
    assert!(value("smartmart_store_running_seconds_total") > 0.0);
    // Whole WAL frames (a 4 KiB page and its 24-byte header), at least one
    // per commit of the order's three commands, which follow one another.
    let wal_bytes = value("smartmart_store_wal_bytes_total");
    assert!(wal_bytes >= 3.0 * 4120.0 && wal_bytes % 4120.0 == 0.0, "{wal_bytes} WAL bytes");

    let openapi = send(server.request(Method::GET, "/openapi.json")).await;
    assert_eq!(openapi.status, 200, "{}", openapi.text());
    assert!(openapi.json["openapi"].as_str().unwrap().starts_with("3."), "{}", openapi.text());
    assert!(openapi.json["paths"].as_object().is_some_and(|p| !p.is_empty()));
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The OpenAPI document and the router agree.
// ---------------------------------------------------------------------------

/// Every route of docs/api.md.
const CONTRACT_ROUTES: &[(&str, &str)] = &[
    ("PUT", "/v1/carts/{customer_id}"),
    ("GET", "/v1/carts/{customer_id}"),
    ("POST", "/v1/orders"),
    ("GET", "/v1/orders/{order_id}"),
    ("PUT", "/v1/admin/customers/{id}"),
    ("PUT", "/v1/admin/products/{sku}"),
    ("PUT", "/v1/admin/warehouses/{id}"),
    ("PUT", "/v1/admin/stock/{warehouse_id}/{sku}"),
    ("GET", "/v1/admin/stock/{sku}"),
    ("GET", "/v1/admin/plugins"),
    ("GET", "/v1/admin/experiments"),
    ("GET", "/v1/admin/fraud/escalations"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/admin"),
    ("GET", "/admin/dashboard.js"),
    ("GET", "/admin/dashboard.css"),
];

/// Whether `answer` is the router's own "no route" answer.
fn is_unrouted(answer: &Answer) -> bool {
    answer.status == 405 || (answer.status == 404 && answer.json["error"]["message"] == "no such endpoint")
}

/// `{name}` segments replaced by a plausible value.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') && segment.ends_with('}') { "X-1" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
    let server = TestServer::start().await;
    let document = send(server.request(Method::GET, "/openapi.json")).await.json;
    let paths = document["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete", "patch", "head", "options", "trace"] {
            if item.get(method).is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    // Everything documented is served: nothing answers with the fallback.
    for (method, path) in &documented {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let answer = send(server.request(method.clone(), &concrete(path))).await;
        assert!(!is_unrouted(&answer), "{method} {path} is documented but not routed: {answer:?}");
    }
    // Everything in the contract is documented.
    for (method, path) in CONTRACT_ROUTES {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is missing from the OpenAPI document: {documented:?}"
        );
    }
    // And the check can fail: unknown routes and methods get the fallbacks, as JSON.
    let unknown = send(server.request(Method::GET, "/v1/nothing-here")).await;
    assert!(is_unrouted(&unknown), "{unknown:?}");
    unknown.assert_error(404, "NOT_FOUND");
    let wrong_method = send(server.web(Method::DELETE, "/v1/orders")).await;
    assert!(is_unrouted(&wrong_method), "{wrong_method:?}");
    wrong_method.assert_error(405, "METHOD_NOT_ALLOWED");
    let wrong_method = send(server.request(Method::POST, "/healthz")).await;
    wrong_method.assert_error(405, "METHOD_NOT_ALLOWED");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Authentication: every failure of the contract.
// ---------------------------------------------------------------------------

/// The channel routes, each with a body if it takes one.
fn channel_routes(order_id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::PUT, "/v1/carts/C-1001".into(), Some(json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]}))),
        (Method::GET, "/v1/carts/C-1001".into(), None),
        (Method::POST, "/v1/orders".into(), Some(order_body("C-1001", "tok_ok"))),
        (Method::GET, format!("/v1/orders/{order_id}"), None),
    ]
}

fn admin_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let location = json!({"lat": 1.0, "lon": 2.0});
    vec![
        (
            Method::PUT,
            "/v1/admin/customers/C-1001",
            Some(
                json!({"name": "X", "email": "x@example.com", "phone": "1", "tier": "GOLD", "status": "ACTIVE", "location": location}),
            ),
        ),
        (Method::PUT, "/v1/admin/products/HDMI-2M", Some(json!({"name": "X", "category": "x", "unit_price_cents": 1}))),
        (Method::PUT, "/v1/admin/warehouses/WH-BLR", Some(json!({"name": "X", "location": location}))),
        (Method::PUT, "/v1/admin/stock/WH-BLR/HDMI-2M", Some(json!({"on_hand": 1}))),
        (Method::GET, "/v1/admin/stock/HDMI-2M", None),
        (Method::GET, "/v1/admin/plugins", None),
        (Method::GET, "/v1/admin/experiments", None),
        (Method::GET, "/v1/admin/fraud/escalations", None),
        (Method::GET, "/v1/admin/payments/pending", None),
    ]
}

#[tokio::test]
async fn every_authentication_failure_of_the_contract() {
    let server = TestServer::start().await;
    let placed = server.order("C-1001", &[("HDMI-2M", 1)], &order_body("C-1001", "tok_ok")).await;
    assert_eq!(placed.status, 201, "{}", placed.text());
    let order_id = placed.json["order_id"].as_str().unwrap().to_string();
    assert_eq!(server.put_cart("C-1001", &[("MOUSE-WIRELESS", 1)]).await.status, 200);
    let before = server.snapshot();
    let orders_before = server.count("orders");

    let with = |builder: reqwest::RequestBuilder, body: &Option<Value>| match body {
        Some(body) => builder.json(body),
        None => builder,
    };
    let good_token = token("C-1001");
    // Channel routes: no key, a wrong key, the admin key, another scheme.
    for (method, path, body) in channel_routes(&order_id) {
        let bare = server.request(method.clone(), &path).header("x-customer-token", &good_token);
        send(with(bare, &body)).await.assert_error(401, "UNAUTHENTICATED");
        for authorization in [
            "Bearer wrong-key-0123456789abcdef".to_string(),
            format!("Bearer {ADMIN_KEY}"),
            format!("Basic {WEB_KEY}"),
            format!("Bearer {WEB_KEY}x"),
            format!("Bearer {}", &WEB_KEY[..WEB_KEY.len() - 1]),
            "Bearer".to_string(),
            String::new(),
        ] {
            let request = server
                .request(method.clone(), &path)
                .header("authorization", &authorization)
                .header("x-customer-token", &good_token);
            let answer = send(with(request, &body)).await;
            answer.assert_error(401, "UNAUTHENTICATED");
        }
    }
    // Admin routes: no key, every channel key, a wrong key.
    for (method, path, body) in admin_routes() {
        send(with(server.request(method.clone(), path), &body)).await.assert_error(401, "UNAUTHENTICATED");
        for key in [WEB_KEY, MOBILE_KEY, PARTNER_KEY, "wrong-admin-key-0123456789"] {
            send(with(server.keyed(method.clone(), path, key), &body)).await.assert_error(401, "UNAUTHENTICATED");
        }
    }
    // Customer tokens: missing, garbage, expired, another secret, no exp, another customer.
    let now = now_secs();
    let bad_tokens = [
        ("garbage", "not-a-token".to_string()),
        ("three garbage parts", "a.b.c".to_string()),
        ("expired", signed_token(SECRET, &json!({"sub": "C-1001", "exp": now - 3600}))),
        ("another secret", signed_token(b"some-other-identity-secret", &json!({"sub": "C-1001", "exp": now + 600}))),
        ("no exp", signed_token(SECRET, &json!({"sub": "C-1001"}))),
        ("no sub", signed_token(SECRET, &json!({"exp": now + 600}))),
        ("alg none", format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", good_token.split('.').nth(1).unwrap())),
    ];
    for (method, path, body) in channel_routes(&order_id) {
        let answer = send(with(server.web(method.clone(), &path), &body)).await;
        answer.assert_error(401, "INVALID_CUSTOMER_TOKEN");
        for (what, bad) in &bad_tokens {
            let answer = send(with(server.web(method.clone(), &path).header("x-customer-token", bad), &body)).await;
            assert_eq!(answer.status, 401, "{what} token on {method} {path}: {}", answer.text());
            answer.assert_error(401, "INVALID_CUSTOMER_TOKEN");
            assert!(!answer.text().contains(bad.as_str()), "the token is echoed: {}", answer.text());
        }
        let other = send(with(server.web_as(method.clone(), &path, "C-1002"), &body)).await;
        assert_eq!(other.status, 403, "C-1002's token on {method} {path}: {}", other.text());
        other.assert_error(403, "CUSTOMER_MISMATCH");
    }
    // A token whose subject matches the body but not the path of a cart.
    let mismatch = send(
        server
            .web_as(Method::PUT, "/v1/carts/C-1002", "C-1001")
            .json(&json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]})),
    )
    .await;
    mismatch.assert_error(403, "CUSTOMER_MISMATCH");
    // Nothing was written by any of the above.
    assert_eq!(server.snapshot(), before);
    assert_eq!(server.count("orders"), orders_before);
    assert_eq!(server.charges().len(), 1);

    // A blocked customer may keep a cart but not order.
    assert_eq!(server.put_cart("C-1004", &[("HDMI-2M", 1)]).await.status, 200);
    let blocked = server.post_order(&order_body("C-1004", "tok_ok"), None).await;
    blocked.assert_error(403, "CUSTOMER_BLOCKED");
    assert_eq!(server.count("orders"), orders_before);
    assert_eq!(server.charges().len(), 1);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Bad input: 400 naming the field, 413, 415; nothing written.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_400_naming_the_field_and_writes_nothing() {
    let server = TestServer::start().await;
    assert_eq!(server.put_cart("C-1001", &[("TV-55-OLED", 1)]).await.status, 200);
    let before = server.snapshot();
    let stock_before = server.stock("TV-55-OLED").await;

    let raw = |method: Method, path: &str, body: &str| {
        server.web_as(method, path, "C-1001").header("content-type", "application/json").body(body.to_string())
    };
    // Carts.
    let cart_cases: &[(&str, &str)] = &[
        (r#"{"items": ["#, "items"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": 1}]"#, "EOF"),
        ("", "EOF"),
        ("null", "body: invalid type: null, expected a JSON object"),
        ("[]", "body: invalid type: sequence, expected a JSON object"),
        (r#"{"items": "TV-55-OLED"}"#, "items"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": "1"}]}"#, "items[0].quantity"),
        (r#"{"items": [{"sku": 55, "quantity": 1}]}"#, "items[0].sku"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": true}]}"#, "items[0].quantity"),
        ("{}", "items"),
        (r#"{"items": [{"sku": "TV-55-OLED"}]}"#, "quantity"),
        (r#"{"items": [{"quantity": 1}]}"#, "sku"),
        (r#"{"items": [], "note": "x"}"#, "note"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": 1, "price": 1}]}"#, "price"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": 0}]}"#, "items[0].quantity"),
        (
            r#"{"items": [{"sku": "HDMI-2M", "quantity": 1}, {"sku": "TV-55-OLED", "quantity": 1000001}]}"#,
            "items[1].quantity",
        ),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": 1e30}]}"#, "items[0].quantity"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": -1}]}"#, "items[0].quantity"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": 4294967296}]}"#, "items[0].quantity"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": 1.5}]}"#, "items[0].quantity"),
        (r#"{"items": [{"sku": "TV-55-OLED", "quantity": 99999999999999999999999}]}"#, "items[0].quantity"),
        (r#"{"items": [{"sku": "", "quantity": 1}]}"#, "items[0].sku"),
        (r#"{"items": [{"sku": "TV 55 OLED", "quantity": 1}]}"#, "items[0].sku"),
    ];
    for (body, field) in cart_cases {
        let answer = send(raw(Method::PUT, "/v1/carts/C-1001", body)).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text());
        answer.assert_error(400, "INVALID_REQUEST").assert_names(field);
    }
    // Lines each in range whose sum for one sku is not: well-formed by the
    // schema, refused by content (422), as the fuzzer's ST202 check expects.
    for body in [
        r#"{"items": [{"sku": "TV-55-OLED", "quantity": 600000}, {"sku": "TV-55-OLED", "quantity": 600000}]}"#,
        r#"{"items": [{"sku": "00", "quantity": 1000000}, {"sku": "00", "quantity": 1000000}]}"#,
    ] {
        let answer = send(raw(Method::PUT, "/v1/carts/C-1001", body)).await;
        answer.assert_error(422, "QUANTITY_TOO_LARGE").assert_names("items");
        assert_eq!(answer.json["error"]["details"]["max_quantity"], 1_000_000, "{}", answer.text());
    }
    let bad_id = send(raw(Method::PUT, "/v1/carts/C%201001", r#"{"items": []}"#)).await;
    bad_id.assert_error(400, "INVALID_REQUEST").assert_names("customer_id");
    // Path parameters that are not UTF-8 once decoded: JSON errors too.
    send(raw(Method::PUT, "/v1/carts/%FF%FE", r#"{"items": []}"#)).await.assert_error(400, "INVALID_REQUEST");
    send(server.web_as(Method::GET, "/v1/carts/C-%C3", "C-1001")).await.assert_error(400, "INVALID_REQUEST");
    send(server.web_as(Method::GET, "/v1/orders/ord_%FF", "C-1001")).await.assert_error(400, "INVALID_REQUEST");
    send(server.admin(Method::GET, "/v1/admin/stock/%80")).await.assert_error(400, "INVALID_REQUEST");
    send(server.admin(Method::PUT, "/v1/admin/stock/WH-BLR/%80").json(&json!({"on_hand": 1})))
        .await
        .assert_error(400, "INVALID_REQUEST");

    // Orders.
    let order_cases: &[(&str, &str)] = &[
        (r#"{"customer_id": "C-1001", "payment": {"token": "tok_ok"}"#, "EOF"),
        (r#"{"customer_id": "C-1001"}"#, "payment"),
        (r#"{"payment": {"token": "tok_ok"}}"#, "customer_id"),
        (r#"{"customer_id": "C-1001", "payment": {}}"#, "token"),
        (r#"{"customer_id": "C-1001", "payment": {"token": 5}}"#, "payment.token"),
        (r#"{"customer_id": "C-1001", "payment": "tok_ok"}"#, "payment"),
        (r#"{"customer_id": "C-1001", "payment": {"token": "tok_ok", "cvv": "123"}}"#, "cvv"),
        (r#"{"customer_id": "C-1001", "payment": {"token": "tok_ok"}, "tip": 5}"#, "tip"),
        (r#"{"customer_id": 1001, "payment": {"token": "tok_ok"}}"#, "customer_id"),
        (r#"{"customer_id": "C-1001", "coupon_code": 10, "payment": {"token": "tok_ok"}}"#, "coupon_code"),
        (
            r#"{"customer_id": "C-1001", "payment": {"token": "tok_ok"}, "ship_to": {"lat": 1e30, "lon": 0}}"#,
            "ship_to.lat",
        ),
        (
            r#"{"customer_id": "C-1001", "payment": {"token": "tok_ok"}, "ship_to": {"lat": 0, "lon": -181}}"#,
            "ship_to.lon",
        ),
        (
            r#"{"customer_id": "C-1001", "payment": {"token": "tok_ok"}, "ship_to": {"lat": "x", "lon": 0}}"#,
            "ship_to.lat",
        ),
        (r#"{"customer_id": "C-1001", "payment": {"token": "tok_ok"}, "ship_to": {"lat": 1}}"#, "lon"),
        (r#"{"customer_id": "C-1001", "payment": {"token": ""}}"#, "payment.token"),
        (r#"{"customer_id": "", "payment": {"token": "tok_ok"}}"#, "customer_id"),
    ];
    for (body, field) in order_cases {
        let answer = send(raw(Method::POST, "/v1/orders", body)).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text());
        answer.assert_error(400, "INVALID_REQUEST").assert_names(field);
    }
    let long_key = "k".repeat(256);
    for key in [long_key.as_str(), "", "with space"] {
        let answer =
            send(raw(Method::POST, "/v1/orders", &uc1_body().to_string()).header("idempotency-key", key)).await;
        answer.assert_error(400, "INVALID_REQUEST").assert_names("Idempotency-Key");
    }

    // Operations.
    let customer_ok = json!({
        "name": "X", "email": "x@example.com", "phone": "1", "tier": "GOLD", "status": "ACTIVE",
        "location": {"lat": 1.0, "lon": 2.0}
    });
    let mut admin_cases: Vec<(&str, String, &str)> = vec![
        ("/v1/admin/stock/WH-BLR/TV-55-OLED", r#"{"on_hand": -1}"#.into(), "on_hand"),
        ("/v1/admin/stock/WH-BLR/TV-55-OLED", r#"{"on_hand": 1e30}"#.into(), "on_hand"),
        ("/v1/admin/stock/WH-BLR/TV-55-OLED", r#"{"on_hand": "5"}"#.into(), "on_hand"),
        ("/v1/admin/stock/WH-BLR/TV-55-OLED", r#"{"on_hand": 18446744073709551616}"#.into(), "on_hand"),
        ("/v1/admin/stock/WH-BLR/TV-55-OLED", r#"{"on_hand": 4294967296}"#.into(), "on_hand"),
        ("/v1/admin/stock/WH-BLR/TV-55-OLED", "{}".into(), "on_hand"),
        ("/v1/admin/stock/WH-BLR/TV-55-OLED", r#"{"on_hand": 1, "reserved": 0}"#.into(), "reserved"),
        ("/v1/admin/stock/WH-BLR/TV-55-OLED", r#"{"on_hand": 1"#.into(), "EOF"),
        (
            "/v1/admin/products/TV-55-OLED",
            r#"{"name": "X", "category": "x", "unit_price_cents": 1e30}"#.into(),
            "unit_price_cents",
        ),
        (
            "/v1/admin/products/TV-55-OLED",
            r#"{"name": "X", "category": "x", "unit_price_cents": -1}"#.into(),
            "unit_price_cents",
        ),
        (
            "/v1/admin/products/TV-55-OLED",
            r#"{"name": "X", "category": "x", "unit_price_cents": 9000000000000000}"#.into(),
            "unit_price_cents",
        ),
        ("/v1/admin/products/TV-55-OLED", r#"{"name": "", "category": "x", "unit_price_cents": 1}"#.into(), "name"),
        ("/v1/admin/warehouses/WH-BLR", r#"{"name": "X", "location": {"lat": 91, "lon": 0}}"#.into(), "location.lat"),
        ("/v1/admin/warehouses/WH-BLR", r#"{"name": "X"}"#.into(), "location"),
    ];
    for (field, value) in [
        ("tier", json!("PLATINUM")),
        ("status", json!("GONE")),
        ("location", json!({"lat": 0, "lon": 1e30})),
        ("email", json!(7)),
        ("nickname", json!("x")),
    ] {
        let mut body = customer_ok.clone();
        body[field] = value;
        admin_cases.push(("/v1/admin/customers/C-1001", body.to_string(), field));
    }
    let mut missing = customer_ok.clone();
    missing.as_object_mut().unwrap().remove("phone");
    admin_cases.push(("/v1/admin/customers/C-1001", missing.to_string(), "phone"));
    for (path, body, field) in &admin_cases {
        let answer =
            send(server.admin(Method::PUT, path).header("content-type", "application/json").body(body.clone())).await;
        assert_eq!(answer.status, 400, "{path} {body}: {}", answer.text());
        answer.assert_error(400, "INVALID_REQUEST").assert_names(field);
    }

    assert_eq!(server.snapshot(), before, "a rejected request wrote something");
    assert_eq!(server.stock("TV-55-OLED").await, stock_before);
    assert!(server.charges().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_413_and_other_media_types_415() {
    let server = TestServer::start().await;
    assert_eq!(server.put_cart("C-1001", &[("TV-55-OLED", 1)]).await.status, 200);
    let before = server.snapshot();
    let padded = |body: Value| format!("{body}{}", " ".repeat(BODY_LIMIT + 1));
    let big_cart = padded(json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]}));
    let big_order = padded(uc1_body());
    let big_stock = padded(json!({"on_hand": 1}));
    let cases = [
        (server.web_as(Method::PUT, "/v1/carts/C-1001", "C-1001"), big_cart.clone()),
        (server.web_as(Method::POST, "/v1/orders", "C-1001"), big_order.clone()),
        (server.admin(Method::PUT, "/v1/admin/stock/WH-BLR/HDMI-2M"), big_stock.clone()),
    ];
    for (request, body) in cases {
        let answer = send(request.header("content-type", "application/json").body(body)).await;
        answer.assert_error(413, "PAYLOAD_TOO_LARGE");
    }
    // Just under the limit is fine (it is only whitespace).
    let under = format!("{}{}", json!({"items": [{"sku": "TV-55-OLED", "quantity": 1}]}), " ".repeat(BODY_LIMIT - 100));
    let answer = send(
        server.web_as(Method::PUT, "/v1/carts/C-1001", "C-1001").header("content-type", "application/json").body(under),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let content_types = ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", "multipart/form-data"];
    for content_type in content_types {
        let cases = [
            (server.web_as(Method::PUT, "/v1/carts/C-1001", "C-1001"), json!({"items": []})),
            (server.web_as(Method::POST, "/v1/orders", "C-1001"), uc1_body()),
            (server.admin(Method::PUT, "/v1/admin/stock/WH-BLR/HDMI-2M"), json!({"on_hand": 1})),
        ];
        for (request, body) in cases {
            let answer = send(request.header("content-type", content_type).body(body.to_string())).await;
            answer.assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
        }
    }
    // No content type at all.
    let answer = send(server.web_as(Method::POST, "/v1/orders", "C-1001").body(uc1_body().to_string())).await;
    answer.assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    let answer = send(server.web_as(Method::PUT, "/v1/carts/C-1001", "C-1001").body("{\"items\": []}")).await;
    answer.assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    // A charset parameter is still JSON.
    let answer = send(
        server
            .web_as(Method::PUT, "/v1/carts/C-1001", "C-1001")
            .header("content-type", "application/json; charset=utf-8")
            .body(json!({"items": [{"sku": "TV-55-OLED", "quantity": 1}]}).to_string()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(server.snapshot(), before);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Business rejections: 404, 409, 422; nothing written.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn business_rejections_carry_their_codes_and_write_nothing() {
    let server = TestServer::start().await;
    assert_eq!(server.put_cart("C-1001", &[("TV-55-OLED", 1)]).await.status, 200);

    // Unknown sku: the cart stays as it was.
    let before = server.snapshot();
    let answer = server.put_cart("C-1001", &[("HDMI-2M", 1), ("NO-SUCH-SKU", 1)]).await;
    answer.assert_error(422, "UNKNOWN_SKU");
    assert_eq!(answer.json["error"]["details"]["sku"], "NO-SUCH-SKU", "{}", answer.text());
    assert_eq!(server.snapshot(), before);

    // Unknown customer.
    let answer = server.put_cart("C-0000", &[("HDMI-2M", 1)]).await;
    answer.assert_error(404, "CUSTOMER_NOT_FOUND");
    send(server.web_as(Method::GET, "/v1/carts/C-0000", "C-0000")).await.assert_error(404, "CUSTOMER_NOT_FOUND");
    server.post_order(&order_body("C-0000", "tok_ok"), None).await.assert_error(404, "CUSTOMER_NOT_FOUND");
    assert_eq!(server.snapshot(), before);

    // Unknown coupon: no order row, no stock held, no charge.
    let orders = server.count("orders");
    let stock = server.stock("TV-55-OLED").await;
    let mut body = uc1_body();
    body["coupon_code"] = json!("NOT-A-COUPON");
    let answer = server.post_order(&body, None).await;
    answer.assert_error(422, "INVALID_COUPON");
    assert_eq!(answer.json["error"]["stage"], "discount", "{}", answer.text());
    assert_eq!(server.stock("TV-55-OLED").await, stock);
    assert_eq!(server.count("orders"), orders, "INVALID_COUPON wrote an order row");
    assert_eq!(server.snapshot(), before);

    // Out of stock: 2 units exist, 3 are asked for.
    assert_eq!(server.put_cart("C-1002", &[("LIMITED-CONSOLE", 3)]).await.status, 200);
    let before = server.snapshot();
    let stock = server.stock("LIMITED-CONSOLE").await;
    let answer = server.post_order(&order_body("C-1002", "tok_ok"), Some("out-of-stock-1")).await;
    answer.assert_error(409, "OUT_OF_STOCK");
    let details = &answer.json["error"]["details"];
    assert_eq!(details["sku"], "LIMITED-CONSOLE", "{}", answer.text());
    assert_eq!(details["requested"], 3, "{}", answer.text());
    assert!(details["available"].as_u64().is_some_and(|a| a <= 2), "{}", answer.text());
    assert_eq!(answer.json["error"]["stage"], "inventory", "{}", answer.text());
    assert_eq!(server.stock("LIMITED-CONSOLE").await, stock);
    assert_eq!(server.snapshot(), before);

    // Empty cart.
    assert_eq!(server.put_cart("C-1003", &[]).await.status, 200);
    let before = server.snapshot();
    server.post_order(&order_body("C-1003", "tok_ok"), None).await.assert_error(422, "EMPTY_CART");
    // A cart never filled is empty too.
    server.post_order(&order_body("C-1005", "tok_ok"), None).await.assert_error(422, "EMPTY_CART");
    assert_eq!(server.snapshot(), before);
    assert!(server.charges().is_empty());
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Idempotency.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn idempotency_keys_replay_refuse_reuse_are_per_channel_and_forget_refusals() {
    let server = TestServer::start().await;
    assert_eq!(server.put_cart("C-1001", &[("HDMI-2M", 1)]).await.status, 200);
    let orders = server.count("orders");
    let body = uc1_body();
    let first = server.post_order(&body, Some("key-1")).await;
    assert_eq!(first.status, 201, "{}", first.text());
    // The cart is now empty: only a replay can answer 201 again.
    let again = server.post_order(&body, Some("key-1")).await;
    assert_eq!((again.status, &again.bytes), (first.status, &first.bytes), "not a byte-for-byte replay");
    assert!(again.is_json());
    assert_eq!(server.count("orders"), orders + 1);
    assert_eq!(server.charges().len(), 1);

    // The same key with another body.
    let mut other = body.clone();
    other["coupon_code"] = json!("FLAT500");
    server.post_order(&other, Some("key-1")).await.assert_error(409, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(server.count("orders"), orders + 1);

    // The key is the web channel's: on mobile it is a new order.
    assert_eq!(server.put_cart("C-1001", &[("HDMI-2M", 1)]).await.status, 200);
    let mobile = send(
        server
            .keyed(Method::POST, "/v1/orders", MOBILE_KEY)
            .header("x-customer-token", token("C-1001"))
            .header("idempotency-key", "key-1")
            .json(&body),
    )
    .await;
    assert_eq!(mobile.status, 201, "{}", mobile.text());
    assert_eq!(mobile.json["channel"], "mobile");
    assert_ne!(mobile.json["order_id"], first.json["order_id"]);
    assert_eq!(server.count("orders"), orders + 2);
    assert_eq!(server.charges().len(), 2);

    // A refusal that recorded nothing is not remembered.
    assert_eq!(server.put_cart("C-1002", &[("LIMITED-CONSOLE", 3)]).await.status, 200);
    let console = order_body("C-1002", "tok_ok");
    server.post_order(&console, Some("key-2")).await.assert_error(409, "OUT_OF_STOCK");
    server.post_order(&console, Some("key-2")).await.assert_error(409, "OUT_OF_STOCK");
    let restock =
        send(server.admin(Method::PUT, "/v1/admin/stock/WH-BOM/LIMITED-CONSOLE").json(&json!({"on_hand": 5}))).await;
    assert_eq!(restock.status, 200, "{}", restock.text());
    let placed = server.post_order(&console, Some("key-2")).await;
    assert_eq!(placed.status, 201, "{}", placed.text());
    assert_eq!(server.post_order(&console, Some("key-2")).await.bytes, placed.bytes);
    assert_eq!(server.count("orders"), orders + 3);

    // A failed payment recorded an order: it is remembered, 402 and all.
    assert_eq!(server.put_cart("C-1003", &[("MOUSE-WIRELESS", 1)]).await.status, 200);
    let declined = order_body("C-1003", "tok_decline");
    let failed = server.post_order(&declined, Some("key-3")).await;
    failed.assert_error(402, "PAYMENT_FAILED");
    let replayed = server.post_order(&declined, Some("key-3")).await;
    assert_eq!((replayed.status, &replayed.bytes), (402, &failed.bytes));
    assert_eq!(server.count("orders"), orders + 4);

    // The longest key allowed works.
    assert_eq!(server.put_cart("C-1005", &[("MOUSE-WIRELESS", 1)]).await.status, 200);
    let longest = "k".repeat(255);
    let answer = server.post_order(&order_body("C-1005", "tok_ok"), Some(&longest)).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(server.post_order(&order_body("C-1005", "tok_ok"), Some(&longest)).await.bytes, answer.bytes);
    assert_eq!(server.count("orders"), orders + 5);
    assert_eq!(server.charges().len(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_with_one_key_make_one_order_and_one_charge() {
    let server = TestServer::start().await;
    assert_eq!(server.put_cart("C-1003", &[("MOUSE-WIRELESS", 2)]).await.status, 200);
    let orders = server.count("orders");
    let body = order_body("C-1003", "tok_ok");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let request =
                server.web_as(Method::POST, "/v1/orders", "C-1003").header("idempotency-key", "race-key").json(&body);
            tokio::spawn(send(request))
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("a request task"));
    }
    let first = &answers[0];
    assert_eq!(first.status, 201, "{}", first.text());
    for answer in &answers {
        assert_eq!((answer.status, &answer.bytes), (first.status, &first.bytes), "answers differ");
    }
    assert_eq!(server.count("orders"), orders + 1);
    assert_eq!(server.charges().len(), 1);
    let (on_hand, _) = stock_in(&server, "WH-DEL", "MOUSE-WIRELESS").await;
    assert_eq!(on_hand, 58 - 2, "the units were taken once");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The real binary: start-up refusal, graceful shutdown, no secrets in logs.
// ---------------------------------------------------------------------------

/// Waits for `child` at most `limit`; kills it and panics past that.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve_command(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smartmart"));
    command.arg("serve").arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(data_dir);
    command.arg("--plugins-dir").arg(bundled_plugins());
    for (name, _) in std::env::vars() {
        if name.starts_with("SMARTMART_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn serve_refuses_to_start_without_credentials_unless_dev() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_command(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting smartmart serve");
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "started without credentials: {stderr}");
    assert!(stderr.contains("SMARTMART_CHANNEL_KEYS"), "{stderr}");
    assert!(stderr.contains("--dev"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_takes_orders_stops_cleanly_on_sigterm_and_logs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = serve_command(&data_dir)
        .arg("--dev")
        .arg("--demo-data")
        .arg(demo_dataset())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("starting smartmart serve --dev");

    // Read the printed credentials and the address, then keep draining stdout.
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut keys = std::collections::BTreeMap::new();
    let address = loop {
        let line = match lines_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                panic!("no address printed ({e}): {}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
        };
        if let Some(address) = line.strip_prefix("SmartMart listening on http://") {
            break address.trim().to_string();
        }
        if let Some((who, key)) = line.split_once("Authorization: Bearer ") {
            let who = who.split_whitespace().last().unwrap_or_default().to_string();
            keys.insert(who, key.trim().to_string());
        }
    };
    let web_key = keys.get("web").cloned().expect("the web key is printed");
    let admin_key = keys.get("admin").cloned().expect("the admin key is printed");
    let credentials: Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir.join("dev-credentials.json")).unwrap()).unwrap();
    let secret = credentials["identity_secret"].as_str().unwrap().to_string();
    let customer_token = smartmart::test_support::mint_token(secret.as_bytes(), "C-1001", Duration::from_secs(600));
    let payment_token = "tok_very_private_payment_token_4242";

    let client = reqwest::Client::new();
    let base = format!("http://{address}");
    let cart = send(
        client
            .put(format!("{base}/v1/carts/C-1001"))
            .bearer_auth(&web_key)
            .header("x-customer-token", &customer_token)
            .json(&json!({"items": [{"sku": "TV-55-OLED", "quantity": 1}]})),
    )
    .await;
    assert_eq!(cart.status, 200, "{}", cart.text());
    let order = send(
        client
            .post(format!("{base}/v1/orders"))
            .bearer_auth(&web_key)
            .header("x-customer-token", &customer_token)
            .header("idempotency-key", "binary-order-1")
            .json(&json!({"customer_id": "C-1001", "coupon_code": "WELCOME10", "payment": {"token": payment_token}})),
    )
    .await;
    assert_eq!(order.status, 201, "{}", order.text());
    let order_id = order.json["order_id"].as_str().unwrap();
    let read = send(
        client
            .get(format!("{base}/v1/orders/{order_id}"))
            .bearer_auth(&web_key)
            .header("x-customer-token", &customer_token),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text());
    let refused = send(client.get(format!("{base}/v1/admin/plugins")).bearer_auth(&web_key)).await;
    refused.assert_error(401, "UNAUTHENTICATED");
    let plugins = send(client.get(format!("{base}/v1/admin/plugins")).bearer_auth(&admin_key)).await;
    assert_eq!(plugins.status, 200, "{}", plugins.text());
    let bad_token = send(
        client.get(format!("{base}/v1/carts/C-1001")).bearer_auth(&web_key).header("x-customer-token", "garbage.jwt"),
    )
    .await;
    bad_token.assert_error(401, "INVALID_CUSTOMER_TOKEN");
    drop(client);

    let kill = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("running kill");
    assert!(kill.success());
    let status = tokio::task::block_in_place(|| wait_bounded(&mut child, Duration::from_secs(60)));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "exit status {status:?} after SIGTERM: {log}");
    assert_eq!(status.code(), Some(0));

    // Logging was on, and named the requests, but no secret.
    assert!(log.contains("DEBUG") || log.contains("INFO"), "no log lines: {log}");
    assert!(log.contains("request"), "{log}");
    let mut secrets: Vec<(String, String)> =
        keys.iter().map(|(who, key)| (format!("{who} key"), key.clone())).collect();
    secrets.push(("identity secret".into(), secret.clone()));
    secrets.push(("customer token".into(), customer_token.clone()));
    secrets.push(("customer token signature".into(), customer_token.rsplit('.').next().unwrap().to_string()));
    secrets.push(("payment token".into(), payment_token.into()));
    assert!(secrets.len() >= 7, "{secrets:?}");
    for (what, secret) in secrets {
        assert!(!log.contains(&secret), "the {what} appears in the log");
    }
}
