//! Crash safety as a client sees it: the real `smartmart serve` binary is
//! SIGKILLed under load, several times, while clients keep retrying their
//! orders with the same `Idempotency-Key` (as a real client would after a
//! lost answer). Afterwards every key has exactly one order, every answer a
//! client got matches that order's final stored state (byte for byte for a
//! 201), no charge exists without a CONFIRMED order, and every confirmed
//! order has exactly one audit, analytics and fraud line in the event files,
//! every line whole.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::crash::event_ids_in_file;
use crate::support::clients::{self, Final, Seen};
use crate::support::server::{ADMIN_KEY, WEB_KEY, token};
use crate::support::service::{Service, free_port};

/// Customers, each ordering once under its own key.
const CUSTOMERS: usize = 400;
/// Clients sending at once.
const CLIENTS: usize = 16;
/// SIGKILLs while the clients run.
const KILLS: usize = 3;
const SKU: &str = "CRASH-CABLE";

fn customer(n: usize) -> String {
    format!("C-CRASH-{n:04}")
}

fn payment_token(n: usize) -> &'static str {
    match n % 10 {
        3 => "tok_decline",
        6 => "tok_transient_1",
        _ => "tok_ok",
    }
}

async fn admin_put(client: &reqwest::Client, service: &Service, path: &str, body: Value) {
    let answer = client.put(service.url(path)).bearer_auth(ADMIN_KEY).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), 200, "PUT {path}: {}", answer.text().await.unwrap_or_default());
}

async fn seed(client: &reqwest::Client, service: &Service) {
    admin_put(
        client,
        service,
        &format!("/v1/admin/products/{SKU}"),
        json!({"name": "Crash-test cable", "category": "accessories", "unit_price_cents": 1_999}),
    )
    .await;
    admin_put(client, service, &format!("/v1/admin/stock/WH-BLR/{SKU}"), json!({"on_hand": 1_000_000})).await;
    for n in 0..CUSTOMERS {
        let id = customer(n);
        let tier = ["GOLD", "SILVER", "STANDARD"][n % 3];
        admin_put(
            client,
            service,
            &format!("/v1/admin/customers/{id}"),
            json!({"name": format!("Crash {n}"), "email": format!("crash{n}@example.com"), "phone": "+1-555-0100",
                   "tier": tier, "status": "ACTIVE", "location": {"lat": 12.97, "lon": 77.59}}),
        )
        .await;
        let answer = client
            .put(service.url(&format!("/v1/carts/{id}")))
            .bearer_auth(WEB_KEY)
            .header("X-Customer-Token", token(&id))
            .json(&json!({"items": [{"sku": SKU, "quantity": 1 + n % 3}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
}

/// Sends customer `n`'s order until it gets a final answer (201 or 402),
/// retrying with the same key through kills and `IDEMPOTENCY_IN_PROGRESS`.
async fn order_until_final(client: &reqwest::Client, port: u16, n: usize, seen: &Seen) -> Final {
    let id = customer(n);
    let body = json!({"customer_id": id, "payment": {"token": payment_token(n)}}).to_string();
    clients::order_until_final(client, port, &id, &format!("crash-key-{n}"), &body, seen).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_under_load_every_key_has_one_order_and_every_answer_matches_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(0).build().unwrap();
    let mut service = Service::spawn(&data_dir, port, &[]);
    service.wait_ready(&client).await;
    seed(&client, &service).await;

    // The clients: each takes the next customer until none is left, while
    // the service is killed and started again.
    let order = {
        let client = client.clone();
        move |n, seen: Arc<Seen>| {
            let client = client.clone();
            async move { order_until_final(&client, port, n, &seen).await }
        }
    };
    let (finals, seen) = clients::run_clients(CLIENTS, CUSTOMERS, order, async |finals| {
        for kill in 0..KILLS {
            tokio::time::sleep(Duration::from_millis(rand::random_range(150..=700))).await;
            let done = finals.lock().await.len();
            service.kill();
            eprintln!("kill {}: {done} of {CUSTOMERS} orders answered before it", kill + 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
            service.restart();
            service.wait_ready(&client).await;
        }
    })
    .await;
    eprintln!("answers: {} ({seen})", finals.len());

    // A retry now, after every restart, replays the recorded answer byte for byte.
    for (n, first) in &finals {
        let again = order_until_final(&client, port, *n, &seen).await;
        assert_eq!((again.status, &again.body), (first.status, &first.body), "replay for {}", customer(*n));
    }

    // Let the fraud checks and the dispatcher finish, then stop gracefully.
    let db = data_dir.join("smartmart.sqlite");
    let read = || {
        let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: i64 =
            read().query_row("SELECT count(*) FROM outbox WHERE state != 'DELIVERED'", [], |r| r.get(0)).unwrap();
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} events never delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill").args(["-TERM", &service.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = service.child.wait().unwrap();
    assert!(exit.success(), "graceful stop: {exit}");

    let conn = read();
    let orders: BTreeMap<String, (String, String, String)> = {
        let mut stmt = conn.prepare("SELECT id, customer_id, status, coalesce(invoice, '') FROM orders").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    // Every key: exactly one order, finished, and the client's answer is its final state.
    let mut by_customer: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, (customer_id, _, _)) in &orders {
        by_customer.entry(customer_id.as_str()).or_default().push(id.as_str());
    }
    let mut confirmed = BTreeSet::new();
    for (n, answer) in &finals {
        let who = customer(*n);
        let ids = by_customer.get(who.as_str()).cloned().unwrap_or_default();
        assert_eq!(ids.len(), 1, "{who} (key crash-key-{n}) has orders {ids:?}");
        let (_, status, invoice) = &orders[ids[0]];
        match answer.status {
            201 => {
                assert_eq!(status, "CONFIRMED", "{who} was answered 201");
                assert_eq!(&answer.body, invoice, "{who}: the 201 body is the stored invoice, byte for byte");
                confirmed.insert(ids[0].to_string());
            }
            _ => {
                assert_eq!(status, "PAYMENT_FAILED", "{who} was answered {}", answer.status);
                let body: Value = serde_json::from_str(&answer.body).unwrap();
                let stored: Value = serde_json::from_str(invoice).unwrap();
                assert_eq!(body["order"], stored, "{who}: the 402 order is the stored order");
                assert_eq!(body["error"]["code"], "PAYMENT_FAILED");
            }
        }
        let declined = payment_token(*n) == "tok_decline";
        assert_eq!(answer.status == 402, declined, "{who} paid with {}", payment_token(*n));
    }
    // Only the test's customers ordered, and nothing is left PENDING.
    assert_eq!(orders.len(), CUSTOMERS, "orders beyond one per key");

    // No charge without a CONFIRMED order, one per confirmed order.
    let mut stmt = conn.prepare("SELECT idempotency_key FROM sandbox_charges").unwrap();
    let charged: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
    let charged_orders: BTreeSet<String> =
        charged.iter().map(|k| k.strip_prefix("pay_").expect("pay_<order id>").to_string()).collect();
    assert_eq!(charged.len(), charged_orders.len(), "an order charged twice");
    assert_eq!(charged_orders, confirmed, "charges and CONFIRMED orders differ");

    // Exactly one audit, analytics and fraud line per confirmed order; every line parses.
    for kind in ["audit", "analytics", "fraud"] {
        let ids = event_ids_in_file(&data_dir, kind);
        let text = std::fs::read_to_string(data_dir.join("events").join(format!("{kind}.jsonl"))).unwrap();
        let mut per_order: BTreeMap<String, usize> = BTreeMap::new();
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["channel"], "web", "{kind} event without the channel: {line}");
            *per_order.entry(event["order_id"].as_str().unwrap().to_string()).or_default() += 1;
        }
        assert_eq!(ids.len(), per_order.values().sum::<usize>());
        for order_id in &confirmed {
            assert_eq!(per_order.get(order_id), Some(&1), "{kind} lines of confirmed order {order_id}");
        }
    }
}

/// A key whose order a crash interrupted after the payment intent answers
/// 409 `IDEMPOTENCY_IN_PROGRESS` with `Retry-After` (never a second order);
/// once reconciliation has re-driven the payment with the order's own
/// gateway key, the same request gets the order's final answer, byte for
/// byte the stored invoice, and the customer is charged once.
#[tokio::test]
async fn an_interrupted_key_is_in_progress_until_recovery_then_answers_the_final_order() {
    use sha2::Digest as _;
    use smartmart::store::orders::{Hold, KeyClaim, NewOrder, PaymentIntent, ReserveOutcome};
    use smartmart::test_support::recovery::{self, RecoveryReport};

    use crate::support::server::TestServer;

    let server = TestServer::start().await;
    let store = server.engine.store().clone();
    // A real invoice to draft the interrupted order from.
    let template = server
        .order("C-1001", &[("HDMI-2M", 1)], &json!({"customer_id": "C-1001", "payment": {"token": "tok_ok"}}))
        .await;
    assert_eq!(template.status, 201, "{}", template.text());

    // What a crash between the intent and the charge leaves behind: the
    // order PENDING with its stock held, its key claimed, its intent and
    // draft invoice recorded, no answer.
    let body = json!({"customer_id": "C-1002", "payment": {"token": "tok_ok"}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let claim = KeyClaim {
        channel: "web".into(),
        key: "interrupted-key".into(),
        request_hash: hex::encode(sha2::Sha256::digest(&bytes)),
    };
    let order_id = "ord_interrupted_after_intent";
    let reserved = store
        .reserve(NewOrder {
            order_id: order_id.into(),
            customer_id: "C-1002".into(),
            channel: "web".into(),
            currency: "USD".into(),
            holds: vec![Hold { warehouse_id: "WH-BLR".into(), sku: "HDMI-2M".into(), quantity: 1 }],
            claim: Some(claim),
            intent: None,
            selector_input: None,
        })
        .await
        .unwrap();
    assert_eq!(reserved, ReserveOutcome::Reserved);
    let mut draft = template.json.clone();
    draft["order_id"] = json!(order_id);
    draft["status"] = json!("PENDING");
    draft["customer"]["id"] = json!("C-1002");
    draft["payment"]["status"] = json!("PENDING");
    draft["payment"]["transaction_id"] = Value::Null;
    for (n, event) in draft["events"].as_array_mut().unwrap().iter_mut().enumerate() {
        event["id"] = json!(format!("evt_interrupted_{n}"));
    }
    let total = draft["total_cents"].as_u64().unwrap();
    let key = format!("pay_{order_id}");
    let intent = PaymentIntent {
        order_id: order_id.into(),
        draft_invoice: draft.to_string(),
        idempotency_key: key.clone(),
        gateway: "sandbox".into(),
        amount_cents: total,
        token: "tok_ok".into(),
    };
    store.record_intent(intent).await.unwrap();

    let send = || async {
        server
            .web_as(reqwest::Method::POST, "/v1/orders", "C-1002")
            .header("idempotency-key", "interrupted-key")
            .header("content-type", "application/json")
            .body(bytes.clone())
            .send()
            .await
            .unwrap()
    };
    let busy = send().await;
    assert_eq!(busy.status(), 409);
    let retry_after = busy.headers().get("retry-after").expect("Retry-After").to_str().unwrap().to_string();
    assert!(retry_after.parse::<u64>().is_ok_and(|s| s > 0), "Retry-After: {retry_after}");
    let error: Value = busy.json().await.unwrap();
    assert_eq!(error["error"]["code"], "IDEMPOTENCY_IN_PROGRESS", "{error}");
    assert!(server.charges().iter().all(|(k, _)| *k != key), "nothing charged yet");

    // Reconciliation re-drives the payment with the order's own key.
    let report = recovery::reconcile(server.engine.pipeline(), Duration::ZERO).await.unwrap();
    assert_eq!(report, RecoveryReport { confirmed: 1, ..RecoveryReport::default() });

    let answered = send().await;
    assert_eq!(answered.status(), 201);
    let text = answered.text().await.unwrap();
    let stored = store.order(order_id).await.unwrap().expect("the order");
    assert_eq!(stored.status, "CONFIRMED");
    assert_eq!(Some(&text), stored.invoice.as_ref(), "the answer is the stored invoice, byte for byte");
    let charged: Vec<_> = server.charges().into_iter().filter(|(k, _)| *k == key).collect();
    assert_eq!(charged, [(key.clone(), total)], "one charge, of the order's total");
    // The same request again: the same bytes, no second order.
    assert_eq!(send().await.text().await.unwrap(), text);
    let orders_of_c1002: i64 =
        server.db().query_row("SELECT count(*) FROM orders WHERE customer_id = 'C-1002'", [], |r| r.get(0)).unwrap();
    assert_eq!(orders_of_c1002, 1);
}
