//! What one order costs, pinned as counts (never times). On PostgreSQL its
//! answer path is four round trips to the server, each its own transaction
//! — the order's read, phase 1 (key, order, holds and payment intent), the
//! sandbox gateway's capture and phase 2 (the settlement) — counted on the
//! wire (`Store::wire_totals`) and exported on `/metrics`
//! (`smartmart_store_round_trips_total`, `smartmart_store_transactions_total`),
//! the same inside TLS (`sslmode=require`) as in the clear.
//! On SQLite the same path is three commands of the store's writer (the
//! read is the reader connection's); and an order with the bundled rules
//! makes four fresh rule instances in all (`smartmart_rule_calls_total`:
//! every call is a fresh instance).

use reqwest::Method;
use smartmart::app::{Dataset, Engine};
use smartmart::domain::status::OrderStatus;
use smartmart::store::catalog::CartItem;
use smartmart::store::{Database, Store};

use crate::store::TestSchema;
use crate::support::server::{TestServer, send};
use crate::support::{TestEngine, bundled_plugins, demo_dataset, engine_settings, order_body, order_request};

/// A silver customer (no discount rule fires) and a cart of two lines.
const CUSTOMER: &str = "C-1002";
const CART: [(&str, u32); 2] = [("HDMI-2M", 1), ("MOUSE-WIRELESS", 2)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_four_round_trips_and_four_transactions_on_postgres() {
    let schema = TestSchema::create().await;
    let (_store, spent) = one_order_on_postgres(&schema.url).await;
    assert_eq!(spent, (4, 4), "(round trips, transactions) of one order's answer path: read, reserve, capture, settle");
}

/// An `Idempotency-Key` costs no round trip of its own: whether it was used
/// is read with the order's snapshot, and it is claimed in phase 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_an_idempotency_key_is_four_round_trips_too() {
    let schema = TestSchema::create().await;
    let (store, spent) = one_order_on_postgres_with(&schema.url, Some(("key-1", "hash-1"))).await;
    assert_eq!(spent, (4, 4), "(round trips, transactions) of one keyed order's answer path");
    assert!(store.key_record("web", "key-1").await.expect("the key's record").is_some(), "the key was claimed");
}

/// The wire is counted inside TLS (on its plaintext side): an order costs
/// the same encrypted as in the clear, and the sessions are what their
/// `sslmode` says, as the server sees them (`pg_stat_ssl`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_costs_the_same_round_trips_and_transactions_over_tls() {
    for (sslmode, encrypted) in [("disable", false), ("require", true)] {
        let schema = TestSchema::create().await;
        let application = format!("{}_{sslmode}", schema.name);
        let url = format!("{}&sslmode={sslmode}&application_name={application}", schema.url);
        let (store, spent) = one_order_on_postgres(&url).await;
        assert_eq!(spent, (4, 4), "(round trips, transactions) of one order with sslmode={sslmode}");
        // The store kept alive: its pool's sessions are still the server's.
        let sessions = crate::postgres_tls::sessions_encrypted(&application).await;
        assert!(!sessions.is_empty(), "sslmode={sslmode}: no session of the store's left to look at");
        assert!(sessions.iter().all(|s| *s == encrypted), "sslmode={sslmode}: sessions encrypted {sessions:?}");
        drop(store);
    }
}

/// What one order's answer path costs on the wire, (round trips,
/// transactions), on the PostgreSQL database at `url` (an empty schema);
/// with the store, whose connections are still open.
async fn one_order_on_postgres(url: &str) -> (Store, (u64, u64)) {
    one_order_on_postgres_with(url, None).await
}

/// [`one_order_on_postgres`], the order carrying `idempotency` (key, body hash).
async fn one_order_on_postgres_with(url: &str, idempotency: Option<(&str, &str)>) -> (Store, (u64, u64)) {
    let dir = tempfile::tempdir().expect("a temp data dir");
    let mut settings = engine_settings(dir.path(), &bundled_plugins());
    settings.database = Database::Postgres(url.to_string());
    let engine = Engine::start(settings).await.expect("starting the engine on PostgreSQL");
    Dataset::read(&demo_dataset())
        .expect("reading the demo data set")
        .load_into(engine.store())
        .await
        .expect("loading the demo data set");
    let cart = CART.iter().map(|(sku, quantity)| CartItem { sku: sku.to_string(), quantity: *quantity }).collect();
    engine.store().replace_cart(CUSTOMER, cart).await.expect("filling the cart");

    // The background workers (fraud checks, event dispatcher, janitor,
    // figures) share the store's counters: stopped, they add nothing to
    // the order's figures. The pipeline places orders without them.
    let (pipeline, store) = (engine.pipeline().clone(), engine.store().clone());
    engine.shutdown().await;

    let before = store.wire_totals().expect("a PostgreSQL store counts its wire");
    let mut request = order_request(CUSTOMER, "tok_ok", None);
    request.idempotency = idempotency.map(|(key, hash)| (key.to_string(), hash.to_string()));
    let placed = pipeline.place_order(request).await.expect("the order");
    let after = store.wire_totals().expect("a PostgreSQL store counts its wire");

    assert_eq!(placed.invoice.status, OrderStatus::Confirmed);
    assert_eq!(placed.invoice.items.len(), 2);
    (store, (after.round_trips - before.round_trips, after.transactions - before.transactions))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_counters_are_exported_on_postgres() {
    let schema = TestSchema::create().await;
    let url = schema.url.clone();
    let server = TestServer::start_with(&bundled_plugins(), move |settings| {
        settings.database = Database::Postgres(url);
    })
    .await;
    let order = server.order(CUSTOMER, &CART, &order_body(CUSTOMER, "tok_ok")).await;
    assert_eq!(order.status, 201, "{}", order.text());
    let metrics = send(server.request(Method::GET, "/metrics")).await;
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    let text = metrics.text();
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // At least the order's four, whatever the workers did meanwhile.
    assert!(value("smartmart_store_round_trips_total") >= 4.0, "{text}");
    assert!(value("smartmart_store_transactions_total") >= 4.0, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_three_writer_commands_on_sqlite() {
    let t = TestEngine::start().await;
    t.fill_cart(CUSTOMER, &CART).await;
    // As on PostgreSQL: with the workers stopped, only the order writes.
    let TestEngine { engine, dir: _dir } = t;
    let (pipeline, store) = (engine.pipeline().clone(), engine.store().clone());
    engine.shutdown().await;

    let before = store.writer_totals().expect("a SQLite store counts its writer's work");
    let placed = pipeline.place_order(order_request(CUSTOMER, "tok_ok", None)).await.expect("the order");
    let after = store.writer_totals().expect("a SQLite store counts its writer's work");

    assert_eq!(placed.invoice.status, OrderStatus::Confirmed);
    assert_eq!(placed.invoice.items.len(), 2);
    assert_eq!(after.commands - before.commands, 3, "phase 1, the sandbox gateway's capture, phase 2");
    assert!(store.wire_totals().is_none(), "no wire to count on SQLite");
}

/// The sum of a counter family's samples in a Prometheus text page.
fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_makes_four_rule_instances_with_the_bundled_rules() {
    let server = TestServer::start_with(&bundled_plugins(), |_| {}).await;
    let order = server.order(CUSTOMER, &CART, &order_body(CUSTOMER, "tok_ok")).await;
    assert_eq!(order.status, 201, "{}", order.text());
    // Two discount rules and the warehouse selector on the answer path, the
    // fraud check after it: wait for its review, then count.
    let order_id = order.json["order_id"].as_str().expect("an order id").to_string();
    server.order_with_review(&order_id, CUSTOMER).await;
    let metrics = send(server.request(Method::GET, "/metrics")).await;
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    assert_eq!(family_sum(&metrics.text(), "smartmart_rule_calls_total"), 4.0, "{}", metrics.text());
    server.stop().await;
}
