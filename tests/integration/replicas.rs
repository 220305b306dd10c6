//! Two replicas of the real `smartmart serve` on one PostgreSQL database
//! (a schema of its own per test, see `store.rs`) and one NATS JetStream
//! stream, with no other coordination: nothing is oversold, a key sent to
//! both gives one order and one charge, and a replica SIGKILLed under load
//! loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::nats::TestStream;
use crate::store::{TestSchema, admin};
use crate::support::HELD_HOLDS_PG;
use crate::support::server::{ADMIN_KEY, WEB_KEY, token};
use crate::support::service::{Service, free_port};

/// Two replicas on `schema`, each with a data dir of its own (module cache,
/// replica id), events to `stream`.
struct Replicas {
    services: [Service; 2],
    client: reqwest::Client,
    _dirs: tempfile::TempDir,
}

impl Replicas {
    async fn start(schema: &TestSchema, stream: &TestStream) -> Replicas {
        let dirs = tempfile::tempdir().unwrap();
        let env = [
            ("SMARTMART_DATABASE_URL", schema.url.clone()),
            ("SMARTMART_EVENT_SINK", "nats".to_string()),
            ("SMARTMART_NATS_URL", stream.settings.url.clone()),
            ("SMARTMART_NATS_STREAM", stream.settings.stream.clone()),
            ("SMARTMART_NATS_SUBJECT_PREFIX", stream.settings.subject_prefix.clone()),
            // A killed replica's orders are finished by the other within seconds.
            ("SMARTMART_RECOVERY_AFTER_MS", "2000".to_string()),
        ];
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(20)).pool_max_idle_per_host(0).build().unwrap();
        let mut services = [0, 1].map(|i| Service::spawn(&dirs.path().join(format!("replica-{i}")), free_port(), &env));
        for service in &mut services {
            service.wait_ready(&client).await;
        }
        Replicas { services, client, _dirs: dirs }
    }

    fn replica(&self, n: usize) -> &Service {
        &self.services[n % 2]
    }

    async fn admin_put(&self, path: &str, body: Value) {
        let answer =
            self.client.put(self.replica(0).url(path)).bearer_auth(ADMIN_KEY).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), 200, "PUT {path}: {}", answer.text().await.unwrap_or_default());
    }

    /// A product stocked `units` in WH-BLR only, and `customers` customers
    /// with one of it in their carts (put through alternate replicas).
    async fn seed(&self, sku: &str, units: u64, customers: &[String]) {
        self.admin_put(
            &format!("/v1/admin/products/{sku}"),
            json!({"name": "Replica drone", "category": "electronics", "unit_price_cents": 49_900}),
        )
        .await;
        self.admin_put(&format!("/v1/admin/stock/WH-BLR/{sku}"), json!({"on_hand": units})).await;
        for (n, id) in customers.iter().enumerate() {
            let tier = ["GOLD", "SILVER", "STANDARD"][n % 3];
            self.admin_put(
                &format!("/v1/admin/customers/{id}"),
                json!({"name": format!("Replica {n}"), "email": format!("r{n}@example.com"), "phone": "+1-555-0100",
                       "tier": tier, "status": "ACTIVE",
                       "location": {"lat": 12.97, "lon": 77.59}}),
            )
            .await;
            let answer = self
                .client
                .put(self.replica(n).url(&format!("/v1/carts/{id}")))
                .bearer_auth(WEB_KEY)
                .header("X-Customer-Token", token(id))
                .json(&json!({"items": [{"sku": sku, "quantity": 1}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
        }
    }
}

/// `customer`'s order sent to `service` with `key`: (status, body) or a connection error.
async fn post_order(
    client: &reqwest::Client,
    service_url: &str,
    customer: &str,
    key: &str,
) -> Result<(u16, String), reqwest::Error> {
    let answer = client
        .post(format!("{service_url}/v1/orders"))
        .bearer_auth(WEB_KEY)
        .header("X-Customer-Token", token(customer))
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(json!({"customer_id": customer, "payment": {"token": "tok_ok"}}).to_string())
        .send()
        .await?;
    let status = answer.status().as_u16();
    Ok((status, answer.text().await?))
}

fn customers(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("C-{prefix}-{n:04}")).collect()
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(&format!("SELECT ({sql})::bigint"), &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_customers_on_two_replicas_buy_exactly_the_ten_units() {
    let (schema, stream) = (TestSchema::create().await, TestStream::new().await);
    let replicas = Replicas::start(&schema, &stream).await;
    let buyers = customers("RACE", 300);
    replicas.seed("REPLICA-DRONE", 10, &buyers).await;

    let orders: Vec<_> = buyers
        .iter()
        .enumerate()
        .map(|(n, customer)| {
            let (client, url, customer) = (replicas.client.clone(), replicas.replica(n).url(""), customer.clone());
            tokio::spawn(async move {
                post_order(&client, &url, &customer, &format!("race-{customer}")).await.expect("an answer")
            })
        })
        .collect();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for order in orders {
        let (status, body) = order.await.unwrap();
        if status != 201 {
            assert_eq!(status, 409, "{body}");
            assert!(body.contains("OUT_OF_STOCK"), "{body}");
        }
        *by_status.entry(status).or_default() += 1;
    }
    assert_eq!(by_status, BTreeMap::from([(201, 10), (409, 290)]));

    let db = admin(&schema.url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM orders WHERE status = 'CONFIRMED'").await, 10);
    assert_eq!(
        count(&db, "SELECT count(*) FROM orders WHERE status <> 'CONFIRMED'").await,
        0,
        "refused orders leave no row"
    );
    let stock = db
        .query_one("SELECT on_hand, reserved FROM stock WHERE warehouse_id = 'WH-BLR' AND sku = 'REPLICA-DRONE'", &[])
        .await
        .unwrap();
    assert_eq!((stock.get::<_, i64>(0), stock.get::<_, i64>(1)), (0, 0), "on hand and held, after ten sales of ten");
    assert_eq!(count(&db, HELD_HOLDS_PG).await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM sandbox_charges").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_sent_to_both_replicas_at_once_gives_one_order_one_charge_and_one_answer() {
    let (schema, stream) = (TestSchema::create().await, TestStream::new().await);
    let replicas = Replicas::start(&schema, &stream).await;
    let buyers = customers("TWICE", 30);
    replicas.seed("REPLICA-LENS", 1_000, &buyers).await;

    let pairs: Vec<_> = buyers
        .iter()
        .map(|customer| {
            let sends: Vec<_> = [0, 1]
                .map(|r| {
                    let (client, url, customer) =
                        (replicas.client.clone(), replicas.replica(r).url(""), customer.clone());
                    tokio::spawn(async move {
                        post_order(&client, &url, &customer, &format!("twice-{customer}")).await.expect("an answer")
                    })
                })
                .into();
            sends
        })
        .collect();
    let mut order_ids = BTreeSet::new();
    for (customer, sends) in buyers.iter().zip(pairs) {
        let mut answers = Vec::new();
        for send in sends {
            answers.push(send.await.unwrap());
        }
        assert_eq!(answers[0].0, 201, "{customer}: {}", answers[0].1);
        assert_eq!(answers[0], answers[1], "{customer}: both replicas answer the same bytes");
        let invoice: Value = serde_json::from_str(&answers[0].1).unwrap();
        order_ids.insert(invoice["order_id"].as_str().unwrap().to_string());
    }
    assert_eq!(order_ids.len(), buyers.len());
    let db = admin(&schema.url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, buyers.len() as i64, "one order per key");
    assert_eq!(count(&db, "SELECT count(*) FROM sandbox_charges").await, buyers.len() as i64, "one charge per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_order_hold_or_event() {
    let (schema, stream) = (TestSchema::create().await, TestStream::new().await);
    let mut replicas = Replicas::start(&schema, &stream).await;
    let buyers = customers("KILL", 200);
    replicas.seed("REPLICA-HUB", 100_000, &buyers).await;

    // Each client alternates replicas; on a lost connection it asks the
    // other one with the same key, as a load balancer would.
    let urls = [replicas.replica(0).url(""), replicas.replica(1).url("")];
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let finals: Arc<Mutex<BTreeMap<String, (u16, String)>>> = Arc::default();
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (client, urls, next, finals, buyers) =
                (replicas.client.clone(), urls.clone(), next.clone(), finals.clone(), buyers.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(customer) = buyers.get(n) else { return };
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut attempt = n;
                    let answer = loop {
                        assert!(Instant::now() < deadline, "no final answer for {customer}");
                        match post_order(&client, &urls[attempt % 2], customer, &format!("kill-{customer}")).await {
                            Ok((status, body)) if status == 201 || status == 402 => break (status, body),
                            Ok((409, body)) if body.contains("IDEMPOTENCY_IN_PROGRESS") => {
                                tokio::time::sleep(Duration::from_millis(200)).await
                            }
                            Ok((503, _)) | Err(_) => {}
                            Ok((status, body)) => panic!("{customer}: unexpected {status} {body}"),
                        }
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    finals.lock().await.insert(customer.clone(), answer);
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(rand::random_range(300..=900))).await;
    let before = finals.lock().await.len();
    replicas.services[0].kill();
    eprintln!("killed replica 0 after {before} of {} answers", buyers.len());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    replicas.services[0].restart();
    replicas.services[0].wait_ready(&replicas.client).await;
    for client in clients {
        client.await.expect("a client");
    }
    let finals = finals.lock().await.clone();
    assert_eq!(finals.len(), buyers.len());

    // Whatever the killed replica left PENDING is finished by a janitor
    // (the other replica's or its own after restart) once 2 s old.
    let db = admin(&schema.url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM orders WHERE status = 'PENDING'").await > 0 {
        assert!(Instant::now() < deadline, "orders left PENDING");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (customer, (status, body)) in &finals {
        assert_eq!(*status, 201, "{customer}: {body}");
        let order_id = serde_json::from_str::<Value>(body).unwrap()["order_id"].as_str().unwrap().to_string();
        let row = db.query_one("SELECT status, invoice FROM orders WHERE id = $1", &[&order_id]).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "CONFIRMED", "{customer}");
        assert_eq!(row.get::<_, &str>(1), body, "{customer}: the answer is the stored invoice");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await, buyers.len() as i64, "one order per key");
    assert_eq!(count(&db, HELD_HOLDS_PG).await, 0, "no hold leaks");
    assert_eq!(count(&db, "SELECT coalesce(sum(reserved), 0) FROM stock").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM sandbox_charges c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = c.order_id AND o.status = 'CONFIRMED')").await,
        0,
        "no charge without a confirmed order"
    );

    // Every confirmed order's three events reach the stream, each once.
    let confirmed: BTreeSet<String> = db
        .query("SELECT id FROM orders WHERE status = 'CONFIRMED'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let delivered = count(&db, "SELECT count(*) FROM outbox WHERE state = 'DELIVERED'").await;
        if delivered == 3 * confirmed.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{delivered} of {} events delivered", 3 * confirmed.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut per_order: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for (_, id, body) in stream.messages().await {
        assert!(ids.insert(id.clone()), "event {id} stored twice in the stream");
        let order_id = body["order_id"].as_str().expect("every event names its order").to_string();
        per_order.entry(order_id).or_default().insert(body["type"].as_str().unwrap().to_string());
    }
    for order_id in &confirmed {
        let kinds = per_order.get(order_id).cloned().unwrap_or_default();
        assert_eq!(kinds, BTreeSet::from(["analytics".into(), "audit".into(), "fraud".into()]), "{order_id}");
    }
    assert_eq!(ids.len(), 3 * confirmed.len());
}
