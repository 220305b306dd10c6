//! The store's operations, one suite run on both back-ends: `sqlite::*`
//! on a temp file, `postgres::*` on the local PostgreSQL server, each test
//! in a schema of its own (dropped at the end). `SMARTMART_TEST_DATABASE_URL`
//! overrides the server (default `postgres://root@127.0.0.1:5432/test`); a
//! server that does not answer fails the PostgreSQL tests, saying how to
//! start it.

use std::collections::BTreeSet;
use std::sync::Arc;

use smartmart::domain::customer::{AccountStatus, Customer, Tier};
use smartmart::domain::geo::GeoPoint;
use smartmart::domain::status::{Channel, EventKind, OrderStatus, Slot};
use smartmart::store::catalog::{CartItem, Product, Warehouse};
use smartmart::store::experiments::{ArmFigures, ArmKey, LATENCY_BOUNDS_US};
use smartmart::store::ledger::{Captured, LedgerCancel};
use smartmart::store::orders::{
    Answer, EventBody, Hold, KeyClaim, KeyRecord, NewEvent, NewOrder, PaymentIntent, PendingPayment, PendingPaymentRow,
    ReserveOutcome, SettledAnswer, Settlement, Verdict,
};
use smartmart::store::outbox::{DueBody, SinkPosition};
use smartmart::store::retention::Retained;
use smartmart::store::rollouts::{RolloutEvent, RolloutRecord};
use smartmart::store::shadows::{ShadowModule, ShadowRun};
use smartmart::store::stats::WireTotals;
use smartmart::store::{PostgresOptions, RESOLVE_LEASE_MS, Store, StoreError, StoreOptions};
use tempfile::TempDir;

pub const START_POSTGRES: &str = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// The PostgreSQL server the tests use.
pub fn postgres_url() -> String {
    std::env::var("SMARTMART_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// A schema of its own on the test server, dropped with this value: the
/// URL that makes it the store's (`search_path`).
pub struct TestSchema {
    pub name: String,
    pub url: String,
}

impl TestSchema {
    pub async fn create() -> TestSchema {
        let base = postgres_url();
        let name = format!("t_{}", hex::encode(rand::random::<[u8; 6]>()));
        let client = admin(&base).await;
        client.batch_execute(&format!("CREATE SCHEMA {name}")).await.expect("creating the test schema");
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
        TestSchema { name, url }
    }
}

/// A connection of the test's own to the server; panics with how to start it.
pub async fn admin(url: &str) -> tokio_postgres::Client {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => panic!("the PostgreSQL server at {url} does not answer ({e}); start it with:\n  {START_POSTGRES}"),
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, name) = (postgres_url(), self.name.clone());
        // Drop runs outside any runtime's reach: a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await.ok()
            })
        })
        .join();
    }
}

/// A store on one back-end, with what it needs kept alive and a raw view
/// of its tables for the checks.
pub struct TestStore {
    pub store: Store,
    raw: Raw,
}

enum Raw {
    Sqlite(TempDir),
    Postgres(TestSchema, tokio_postgres::Client),
}

impl TestStore {
    pub async fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), &StoreOptions::default()).unwrap();
        TestStore { store, raw: Raw::Sqlite(dir) }
    }

    pub async fn postgres() -> TestStore {
        let schema = TestSchema::create().await;
        let store = Store::open_postgres(&schema.url, &PostgresOptions::default()).await.expect("opening the store");
        let client = admin(&schema.url).await;
        TestStore { store, raw: Raw::Postgres(schema, client) }
    }

    /// One integer from `sql` (the same text on both back-ends), read
    /// around the store.
    pub async fn number(&self, sql: &str) -> i64 {
        match &self.raw {
            Raw::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("s.sqlite")).unwrap();
                conn.query_row(sql, [], |r| r.get(0)).unwrap()
            }
            Raw::Postgres(_, client) => client.query_one(&format!("SELECT ({sql})::bigint"), &[]).await.unwrap().get(0),
        }
    }

    /// How many holds the orders of `status` carry (`orders.holds`: one
    /// per warehouse and sku), read around the store.
    pub async fn holds_of(&self, status: &str) -> i64 {
        let holds = match &self.raw {
            Raw::Sqlite(_) => "json_array_length(holds)",
            Raw::Postgres(..) => "json_array_length(holds::json)",
        };
        self.number(&format!("SELECT coalesce(sum({holds}), 0) FROM orders WHERE status = '{status}'")).await
    }

    /// Runs `sql` around the store (to set up what the store would never write).
    pub async fn execute(&self, sql: &str) {
        match &self.raw {
            Raw::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("s.sqlite")).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Raw::Postgres(_, client) => client.batch_execute(sql).await.unwrap(),
        }
    }

    /// Opens the same database again (as a restart, or a second replica would).
    pub async fn reopen(&self) -> Result<Store, StoreError> {
        match &self.raw {
            Raw::Sqlite(dir) => Store::open(&dir.path().join("s.sqlite"), &StoreOptions::default()),
            Raw::Postgres(schema, _) => Store::open_postgres(&schema.url, &PostgresOptions::default()).await,
        }
    }

    /// Opens the same database for reading only.
    pub async fn open_read_only(&self) -> Result<Store, StoreError> {
        match &self.raw {
            Raw::Sqlite(dir) => Store::open_read_only(&dir.path().join("s.sqlite"), &StoreOptions::default()),
            Raw::Postgres(schema, _) => {
                let options = PostgresOptions { read_only: true, ..PostgresOptions::default() };
                Store::open_postgres(&schema.url, &options).await
            }
        }
    }
}

/// Each test below, once per back-end.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestStore::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestStore::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrations_are_versioned_and_rerun_safely,
    a_newer_schema_is_refused,
    catalog_round_trips,
    stock_cannot_go_below_what_is_held,
    carts_refuse_unknown_skus_and_bad_quantities,
    a_paid_order_takes_its_stock_and_stores_its_answer,
    a_failed_payment_releases_the_stock,
    a_shortfall_writes_nothing,
    a_claimed_key_gives_no_second_order,
    a_reserve_can_carry_the_payment_intent,
    cancel_and_discard_undo_exactly,
    a_settled_order_cannot_settle_again,
    interrupted_orders_are_found_for_recovery,
    events_are_delivered_once_with_positions,
    fraud_verdicts_ready_the_fraud_events,
    the_sandbox_ledger_charges_a_key_once,
    shadow_runs_are_summed,
    settled_orders_and_escalations_newest_first,
    an_order_keeps_what_its_selector_saw,
    two_hundred_buyers_never_oversell_ten_units,
    twenty_racers_on_one_key_make_one_order,
    a_read_only_store_never_writes,
    canary_states_and_rollout_events_are_kept,
    arm_figures_only_ever_add_up,
    a_payment_pending_order_answers_202_until_it_is_paid,
    a_payment_pending_order_that_fails_releases_exactly,
    only_a_pending_order_with_an_intent_becomes_payment_pending,
    pending_payments_are_resolved_at_their_time,
    pending_payments_are_listed_until_settled,
    the_sandbox_ledger_cancels_a_key_for_good,
    capture_and_cancel_of_one_key_never_both_happen,
    the_order_snapshot_reads_customer_cart_and_stock,
    retention_prunes_settled_keys_and_never_an_unsettled_one,
    retention_prunes_delivered_events_and_never_an_undelivered_one,
    retention_bounds_shadow_runs_and_rollout_events_by_age_and_count,
    two_pruners_at_once_delete_each_row_once,
);

fn customer(id: &str, tier: Tier) -> Customer {
    Customer {
        id: id.into(),
        name: format!("Name {id}"),
        email: format!("{id}@example.com"),
        phone: "+1 555 0100".into(),
        tier,
        status: AccountStatus::Active,
        location: GeoPoint { lat: 40.7, lon: -74.0 },
    }
}

fn product(sku: &str, price: u64) -> Product {
    Product { sku: sku.into(), name: format!("Product {sku}"), category: "electronics".into(), unit_price_cents: price }
}

fn warehouse(id: &str) -> Warehouse {
    Warehouse { id: id.into(), name: format!("Warehouse {id}"), location: GeoPoint { lat: 41.0, lon: -73.0 } }
}

/// Customers c1..c3, skus A (1000 cents) and B (2500), warehouses W1 and W2:
/// A 10 in W1 and 5 in W2, B 3 in W1.
async fn seed(store: &Store) {
    store
        .load_catalog(
            vec![customer("c1", Tier::Gold), customer("c2", Tier::Silver), customer("c3", Tier::Standard)],
            vec![product("A", 1000), product("B", 2500)],
            vec![warehouse("W1"), warehouse("W2")],
            vec![("W1".into(), "A".into(), 10), ("W2".into(), "A".into(), 5), ("W1".into(), "B".into(), 3)],
        )
        .await
        .unwrap();
}

fn hold(warehouse_id: &str, sku: &str, quantity: u32) -> Hold {
    Hold { warehouse_id: warehouse_id.into(), sku: sku.into(), quantity }
}

fn new_order(order_id: &str, customer_id: &str, holds: Vec<Hold>, key: Option<&str>) -> NewOrder {
    NewOrder {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        channel: "web".into(),
        currency: "USD".into(),
        holds,
        claim: key.map(|k| KeyClaim { channel: "web".into(), key: k.into(), request_hash: format!("hash-{k}") }),
        intent: None,
        selector_input: None,
    }
}

fn intent(order_id: &str, draft_invoice: String, key: &str, amount_cents: u64, token: &str) -> PaymentIntent {
    PaymentIntent {
        order_id: order_id.into(),
        draft_invoice,
        idempotency_key: key.into(),
        gateway: "sandbox".into(),
        amount_cents,
        token: token.into(),
    }
}

fn settlement(order_id: &str, customer_id: &str, status: OrderStatus) -> Settlement {
    let paid = status == OrderStatus::Confirmed;
    Settlement {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        status,
        invoice: format!(r#"{{"order_id":"{order_id}","final":true}}"#),
        transaction_id: paid.then(|| format!("txn-{order_id}")),
        attempts: 1,
        failure: (!paid).then(|| "declined".to_string()),
        events: vec![
            NewEvent {
                id: format!("{order_id}-audit"),
                kind: EventKind::Audit,
                body: EventBody::Envelope("{\"a\":1}".into()),
            },
            NewEvent { id: format!("{order_id}-analytics"), kind: EventKind::Analytics, body: EventBody::FromInvoice },
            NewEvent { id: format!("{order_id}-fraud"), kind: EventKind::Fraud, body: EventBody::AwaitingVerdict },
        ],
        answer: if paid {
            SettledAnswer::Invoice
        } else {
            SettledAnswer::Other(Answer { status_code: 402, body: format!("answer of {order_id}") })
        },
    }
}

async fn available(store: &Store, warehouse_id: &str, sku: &str) -> (u64, u64) {
    let level = store.stock_of_sku(sku).await.unwrap().into_iter().find(|s| s.warehouse_id == warehouse_id).unwrap();
    (level.on_hand, level.available)
}

/// Reserve, record the intent, settle: one whole order.
async fn place(store: &Store, order_id: &str, customer_id: &str, holds: Vec<Hold>, status: OrderStatus) {
    let outcome = store.reserve(new_order(order_id, customer_id, holds, Some(order_id))).await.unwrap();
    assert_eq!(outcome, ReserveOutcome::Reserved);
    store
        .record_intent(intent(order_id, "{\"draft\":true}".into(), &format!("pay_{order_id}"), 1000, "tok"))
        .await
        .unwrap();
    store.settle(settlement(order_id, customer_id, status)).await.unwrap();
}

/// The schema version this binary writes, on either back-end.
const SCHEMA_VERSION: i64 = 17;

async fn migrations_are_versioned_and_rerun_safely(t: TestStore) {
    // Every table of the schema exists once migrated…
    for table in
        ["customers", "orders", "outbox", "shadow_runs", "sandbox_charges", "sink_positions", "sandbox_cancelled"]
    {
        t.number(&format!("SELECT count(*) FROM {table}")).await;
    }
    t.number("SELECT count(resolve_after_ms) FROM payments").await;
    // One version number per schema, the same on both back-ends.
    let version = match &t.raw {
        Raw::Sqlite(_) => t.number("SELECT user_version FROM pragma_user_version").await,
        Raw::Postgres(..) => t.number("SELECT max(version) FROM smartmart_schema").await,
    };
    assert_eq!(version, SCHEMA_VERSION);
    // …and opening the same database again (a restart, a second replica) migrates nothing twice.
    seed(&t.store).await;
    let again = t.reopen().await.expect("reopening a migrated database");
    assert_eq!(again.customer("c1").await.unwrap().unwrap().tier, Tier::Gold);
}

async fn a_newer_schema_is_refused(t: TestStore) {
    match &t.raw {
        Raw::Sqlite(_) => t.execute("PRAGMA user_version = 99").await,
        Raw::Postgres(..) => t.execute("INSERT INTO smartmart_schema (version, applied_at) VALUES (99, 'now')").await,
    }
    let err = t.reopen().await.expect_err("a schema from a newer binary");
    assert!(matches!(err, StoreError::Corrupt(ref m) if m.contains("newer")), "{err}");
    let err = t.open_read_only().await.expect_err("a schema from a newer binary, read-only");
    assert!(matches!(err, StoreError::Corrupt(ref m) if m.contains("newer")), "{err}");
}

async fn catalog_round_trips(t: TestStore) {
    let store = &t.store;
    assert!(!store.has_customers().await.unwrap());
    seed(store).await;
    assert!(store.has_customers().await.unwrap());
    assert_eq!(store.customer("c2").await.unwrap(), Some(customer("c2", Tier::Silver)));
    assert_eq!(store.customer("nobody").await.unwrap(), None);
    let mut blocked = customer("c3", Tier::Gold);
    blocked.status = AccountStatus::Blocked;
    store.upsert_customer(blocked.clone()).await.unwrap();
    assert_eq!(store.customer("c3").await.unwrap(), Some(blocked));
    store.upsert_product(product("A", 1200)).await.unwrap();
    assert_eq!(store.product("A").await.unwrap().unwrap().unit_price_cents, 1200);
    let levels = store.stock_of_sku("A").await.unwrap();
    assert_eq!(
        levels.iter().map(|l| (l.warehouse_id.as_str(), l.on_hand)).collect::<Vec<_>>(),
        [("W1", 10), ("W2", 5)]
    );
    let stocked = store.stocked_warehouses(&["B", "A"]).await.unwrap();
    assert_eq!(stocked.len(), 2);
    assert_eq!(stocked[0].warehouse.id, "W1");
    assert_eq!(stocked[0].available, [("B".to_string(), 3), ("A".to_string(), 10)]);
    assert_eq!(stocked[1].available, [("A".to_string(), 5)]);
    let err = store.set_stock("W9", "A", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(ref w) if w.contains("W9")), "{err}");
    let err = store.set_stock("W1", "ZZ", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(ref w) if w.contains("ZZ")), "{err}");
    let level = store.set_stock("W2", "B", 7).await.unwrap();
    assert_eq!((level.on_hand, level.available, level.warehouse_name.as_str()), (7, 7, "Warehouse W2"));
}

async fn stock_cannot_go_below_what_is_held(t: TestStore) {
    seed(&t.store).await;
    let outcome = t.store.reserve(new_order("o1", "c1", vec![hold("W1", "A", 4)], None)).await.unwrap();
    assert_eq!(outcome, ReserveOutcome::Reserved);
    assert_eq!(available(&t.store, "W1", "A").await, (10, 6));
    let err = t.store.set_stock("W1", "A", 3).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let level = t.store.set_stock("W1", "A", 4).await.unwrap();
    assert_eq!((level.on_hand, level.available), (4, 0));
}

async fn carts_refuse_unknown_skus_and_bad_quantities(t: TestStore) {
    seed(&t.store).await;
    let item = |sku: &str, quantity| CartItem { sku: sku.into(), quantity };
    let lines = t.store.replace_cart("c1", vec![item("B", 1), item("A", 2)]).await.unwrap();
    assert_eq!(lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect::<Vec<_>>(), [("B", 1), ("A", 2)]);
    let err = t.store.replace_cart("c1", vec![item("A", 1), item("ZZ", 1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(ref s) if s.contains("ZZ")), "{err}");
    // The same sku twice adds up, past the schema's limit: refused, the cart as it was.
    let err = t.store.replace_cart("c1", vec![item("A", 600_000), item("A", 600_000)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Constraint(_)), "{err}");
    let (lines, unknown) = t.store.cart("c1").await.unwrap();
    assert_eq!(lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect::<Vec<_>>(), [("B", 1), ("A", 2)]);
    assert!(unknown.is_empty());
}

async fn a_paid_order_takes_its_stock_and_stores_its_answer(t: TestStore) {
    let store = &t.store;
    seed(store).await;
    store.replace_cart("c1", vec![CartItem { sku: "A".into(), quantity: 3 }]).await.unwrap();
    let outcome =
        store.reserve(new_order("o1", "c1", vec![hold("W1", "A", 3), hold("W1", "B", 1)], Some("k1"))).await.unwrap();
    assert_eq!(outcome, ReserveOutcome::Reserved);
    assert_eq!(available(store, "W1", "A").await, (10, 7));
    let order = store.order("o1").await.unwrap().unwrap();
    assert_eq!((order.status, order.invoice), (OrderStatus::Pending, None));
    assert_eq!(
        store.key_record("web", "k1").await.unwrap(),
        Some(KeyRecord::InFlight { request_hash: "hash-k1".into(), order_id: "o1".into() })
    );
    store.record_intent(intent("o1", "{\"draft\":true}".into(), "pay_o1", 5500, "tok_1")).await.unwrap();
    assert_eq!(store.order("o1").await.unwrap().unwrap().invoice.as_deref(), Some("{\"draft\":true}"));
    store.settle(settlement("o1", "c1", OrderStatus::Confirmed)).await.unwrap();
    let order = store.order("o1").await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Confirmed);
    assert_eq!(order.total_cents, 5500);
    assert_eq!(order.invoice.as_deref(), Some(r#"{"order_id":"o1","final":true}"#));
    assert_eq!(available(store, "W1", "A").await, (7, 7));
    assert_eq!(available(store, "W1", "B").await, (2, 2));
    assert!(store.cart("c1").await.unwrap().0.is_empty(), "a paid order empties the cart");
    assert_eq!(
        store.key_record("web", "k1").await.unwrap(),
        Some(KeyRecord::Answered {
            request_hash: "hash-k1".into(),
            // The 201's body is the stored invoice, kept once.
            answer: Answer { status_code: 201, body: r#"{"order_id":"o1","final":true}"#.into() }
        })
    );
    assert_eq!(t.number("SELECT count(*) FROM payments WHERE token IS NOT NULL").await, 0, "the token is erased");
    assert_eq!(t.holds_of("CONFIRMED").await, 2);
}

async fn a_failed_payment_releases_the_stock(t: TestStore) {
    seed(&t.store).await;
    place(&t.store, "o1", "c1", vec![hold("W2", "A", 5)], OrderStatus::PaymentFailed).await;
    assert_eq!(t.store.order("o1").await.unwrap().unwrap().status, OrderStatus::PaymentFailed);
    // A 402 keeps its own body (the error with the order), not the invoice.
    assert_eq!(
        t.store.key_record("web", "o1").await.unwrap(),
        Some(KeyRecord::Answered {
            request_hash: "hash-o1".into(),
            answer: Answer { status_code: 402, body: "answer of o1".into() }
        })
    );
    assert_eq!(available(&t.store, "W2", "A").await, (5, 5));
    assert_eq!(t.holds_of("PAYMENT_FAILED").await, 1);
    assert_eq!(t.number("SELECT count(*) FROM payments WHERE status = 'FAILED'").await, 1);
}

async fn a_shortfall_writes_nothing(t: TestStore) {
    seed(&t.store).await;
    let outcome =
        t.store.reserve(new_order("o1", "c1", vec![hold("W1", "A", 2), hold("W1", "B", 4)], Some("k1"))).await.unwrap();
    assert_eq!(outcome, ReserveOutcome::Shortfall { warehouse_id: "W1".into(), sku: "B".into() });
    assert_eq!(available(&t.store, "W1", "A").await, (10, 10), "the hold taken before the shortfall is undone");
    assert_eq!(t.number("SELECT count(*) FROM orders").await, 0);
    assert_eq!(t.store.key_record("web", "k1").await.unwrap(), None, "the key stays free");
}

/// The discount leg finished first: the reserve records the intent in the
/// same command, all or nothing.
async fn a_reserve_can_carry_the_payment_intent(t: TestStore) {
    seed(&t.store).await;
    let mut order = new_order("o1", "c1", vec![hold("W1", "A", 2)], Some("k1"));
    order.intent = Some(intent("o1", "{\"draft\":1}".into(), "pay_o1", 4200, "tok_ok"));
    assert_eq!(t.store.reserve(order).await.unwrap(), ReserveOutcome::Reserved);
    let stored = t.store.order("o1").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.total_cents), (OrderStatus::Pending, 4200));
    assert_eq!(stored.invoice.as_deref(), Some("{\"draft\":1}"));
    assert_eq!(t.number("SELECT count(*) FROM payments WHERE status = 'INTENT' AND token = 'tok_ok'").await, 1);

    // A shortfall keeps nothing of it: no order, no hold, no intent.
    let mut short = new_order("o2", "c1", vec![hold("W1", "B", 4)], Some("k2"));
    short.intent = Some(intent("o2", "{}".into(), "pay_o2", 100, "tok_ok"));
    assert!(matches!(t.store.reserve(short).await.unwrap(), ReserveOutcome::Shortfall { .. }));
    assert_eq!(t.number("SELECT count(*) FROM payments").await, 1);
    assert_eq!(t.number("SELECT count(*) FROM orders").await, 1);
    // So does a taken key.
    let mut again = new_order("o3", "c1", vec![hold("W1", "A", 1)], Some("k1"));
    again.intent = Some(intent("o3", "{}".into(), "pay_o3", 100, "tok_ok"));
    assert_eq!(t.store.reserve(again).await.unwrap(), ReserveOutcome::KeyTaken);
    assert_eq!(t.number("SELECT count(*) FROM payments").await, 1);
    assert_eq!(available(&t.store, "W1", "A").await, (10, 8));
}

async fn a_claimed_key_gives_no_second_order(t: TestStore) {
    seed(&t.store).await;
    let first = t.store.reserve(new_order("o1", "c1", vec![hold("W1", "A", 1)], Some("k1"))).await.unwrap();
    let second = t.store.reserve(new_order("o2", "c1", vec![hold("W1", "A", 1)], Some("k1"))).await.unwrap();
    assert_eq!((first, second), (ReserveOutcome::Reserved, ReserveOutcome::KeyTaken));
    assert_eq!(t.number("SELECT count(*) FROM orders").await, 1);
    assert_eq!(available(&t.store, "W1", "A").await, (10, 9));
    // Another channel's key of the same text is another key.
    let mut other = new_order("o3", "c1", vec![hold("W1", "A", 1)], Some("k1"));
    other.claim.as_mut().unwrap().channel = "mobile".into();
    assert_eq!(t.store.reserve(other).await.unwrap(), ReserveOutcome::Reserved);
}

async fn cancel_and_discard_undo_exactly(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    store.reserve(new_order("o1", "c1", vec![hold("W1", "A", 2)], Some("k1"))).await.unwrap();
    store.record_intent(intent("o1", "{}".into(), "pay_o1", 2000, "tok")).await.unwrap();
    assert!(store.cancel("o1", "gateway unreachable").await.unwrap());
    assert!(!store.cancel("o1", "again").await.unwrap(), "cancel is idempotent");
    let order = store.order("o1").await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Cancelled);
    let reason: serde_json::Value = serde_json::from_str(order.invoice.as_deref().unwrap()).unwrap();
    assert_eq!(reason["reason"], "gateway unreachable");
    assert_eq!(store.key_record("web", "k1").await.unwrap(), None, "the key is free again");
    assert_eq!(t.number("SELECT count(*) FROM payments WHERE status = 'FAILED' AND token IS NULL").await, 1);

    store.reserve(new_order("o2", "c1", vec![hold("W1", "A", 3), hold("W2", "A", 1)], Some("k2"))).await.unwrap();
    assert!(store.discard("o2").await.unwrap());
    assert!(store.order("o2").await.unwrap().is_none(), "a discarded order leaves no row");
    assert_eq!(store.key_record("web", "k2").await.unwrap(), None);
    assert_eq!(available(store, "W1", "A").await, (10, 10));
    assert_eq!(available(store, "W2", "A").await, (5, 5));
    // An order that reached payment is never discarded.
    store.reserve(new_order("o3", "c1", vec![hold("W1", "A", 1)], None)).await.unwrap();
    store.record_intent(intent("o3", "{}".into(), "pay_o3", 1000, "tok")).await.unwrap();
    assert!(!store.discard("o3").await.unwrap());
    assert_eq!(store.order("o3").await.unwrap().unwrap().status, OrderStatus::Pending);
}

async fn a_settled_order_cannot_settle_again(t: TestStore) {
    seed(&t.store).await;
    place(&t.store, "o1", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    let err = t.store.settle(settlement("o1", "c1", OrderStatus::PaymentFailed)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(t.store.order("o1").await.unwrap().unwrap().status, OrderStatus::Confirmed);
    assert_eq!(available(&t.store, "W1", "A").await, (9, 9), "nothing of the refused settlement applied");
    assert_eq!(t.number("SELECT count(*) FROM outbox").await, 3);
    let err = t.store.record_intent(intent("o1", "{}".into(), "pay_x", 1, "tok")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

async fn interrupted_orders_are_found_for_recovery(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    store.reserve(new_order("unpaid", "c1", vec![hold("W1", "A", 1)], None)).await.unwrap();
    store.reserve(new_order("paying", "c2", vec![hold("W1", "A", 1)], None)).await.unwrap();
    store.record_intent(intent("paying", "{}".into(), "pay_paying", 1000, "tok_9")).await.unwrap();
    place(store, "done", "c3", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    // As if the process that ran them died long ago.
    t.execute("UPDATE orders SET updated_at = '2001-01-01T00:00:00.25Z' WHERE status = 'PENDING'").await;
    let now = smartmart::test_support::now_ms();
    let (unpaid, intents) = store.pending_orders("2000-06-01T00:00:00Z", now).await.unwrap();
    assert!(unpaid.is_empty() && intents.is_empty(), "orders newer than the cutoff are left alone");
    let cutoff = "2001-01-01T00:00:00.5Z";
    let (unpaid, intents) = store.pending_orders(cutoff, now).await.unwrap();
    assert_eq!(unpaid, ["unpaid"]);
    assert_eq!(intents.len(), 1);
    assert_eq!(
        (intents[0].order_id.as_str(), intents[0].idempotency_key.as_str(), intents[0].amount_cents),
        ("paying", "pay_paying", 1000)
    );
    assert_eq!(intents[0].token.as_deref(), Some("tok_9"));
    assert_eq!(intents[0].currency, "USD");
    assert!(!intents[0].outcome_unknown, "interrupted, never answered PAYMENT_PENDING");
    let (unpaid_again, intents_again) = store.pending_orders(cutoff, now).await.unwrap();
    if store.is_shared() {
        // Claimed: no other replica's janitor takes them until they are as old again.
        assert!(unpaid_again.is_empty() && intents_again.is_empty());
    } else {
        assert_eq!((unpaid_again.len(), intents_again.len()), (1, 1), "one process: found again until settled");
    }
}

async fn events_are_delivered_once_with_positions(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    place(store, "o1", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    let now = smartmart::test_support::now_ms();
    let due = store.due_events(now, 10).await.unwrap();
    // The fraud event waits for its verdict.
    assert_eq!(due.iter().map(|e| e.kind).collect::<Vec<_>>(), [EventKind::Audit, EventKind::Analytics]);
    assert_eq!(due[0].body, DueBody::Envelope("{\"a\":1}".into()), "an envelope is delivered as written");
    // An event without one comes with its order's stored invoice, to build it from.
    let DueBody::FromInvoice { order_id, invoice, created_ms } = &due[1].body else {
        panic!("analytics is built from the invoice: {:?}", due[1].body)
    };
    assert_eq!((order_id.as_str(), invoice.as_deref()), ("o1", Some(r#"{"order_id":"o1","final":true}"#)));
    assert!((now - 60_000..=now).contains(created_ms), "{created_ms} vs {now}");
    assert_eq!(store.outbox_backlog().await.unwrap().0, 3);
    store.mark_retry(vec![due[1].seq], "sink down".into(), now + 60_000).await.unwrap();
    let position = SinkPosition { stream: "jsonl:audit".into(), offset: 120 };
    store.mark_delivered(vec![due[0].seq], Some(position.clone())).await.unwrap();
    assert!(store.due_events(now, 10).await.unwrap().is_empty(), "delivered or not due yet");
    let retried = store.due_events(now + 60_000, 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].kind, retried[0].attempts), (EventKind::Analytics, 1));
    store.mark_delivered(vec![retried[0].seq], None).await.unwrap();
    assert_eq!(store.sink_positions().await.unwrap(), [position]);
    let moved = SinkPosition { stream: "jsonl:audit".into(), offset: 240 };
    store.mark_delivered(vec![], Some(moved.clone())).await.unwrap();
    assert_eq!(store.sink_positions().await.unwrap(), [moved]);
    assert_eq!(store.outbox_backlog().await.unwrap().0, 1);
    assert_eq!(t.number("SELECT count(*) FROM outbox WHERE state = 'DELIVERED'").await, 2);
}

async fn fraud_verdicts_ready_the_fraud_events(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    place(store, "o1", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    place(store, "o2", "c2", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    let waiting = store.awaiting_verdict(10).await.unwrap();
    assert_eq!(waiting.iter().map(|w| w.order.id.as_str()).collect::<Vec<_>>(), ["o1", "o2"]);
    let events: Vec<&str> = waiting[0].events.iter().map(|event| event.id.as_str()).collect();
    assert_eq!(events, ["o1-fraud"]);
    let fraud_seq = waiting[0].events[0].seq;
    let fraud_row = format!("SELECT count(*) FROM outbox WHERE seq = {fraud_seq} AND id = 'o1-fraud'");
    assert_eq!(t.number(&fraud_row).await, 1, "the waiting event's seq is its row's");
    store
        .record_verdicts(vec![Verdict {
            order_id: "o1".into(),
            review: r#"{"action":"ESCALATE"}"#.into(),
            action: "ESCALATE".into(),
            envelopes: vec![(fraud_seq, "{\"fraud\":true}".into())],
        }])
        .await
        .unwrap();
    let order = store.order("o1").await.unwrap().unwrap();
    assert_eq!(order.fraud_review, Some(serde_json::json!({"action": "ESCALATE"})));
    assert_eq!(store.escalations(10).await.unwrap().iter().map(|o| o.id.clone()).collect::<Vec<_>>(), ["o1"]);
    let due = store.due_events(smartmart::test_support::now_ms(), 10).await.unwrap();
    let fraud: Vec<_> = due.iter().filter(|e| e.kind == EventKind::Fraud).collect();
    assert_eq!(fraud.len(), 1);
    assert_eq!(fraud[0].body, DueBody::Envelope("{\"fraud\":true}".into()));
    if !store.is_shared() {
        // One process: still offered until reviewed.
        assert_eq!(store.awaiting_verdict(10).await.unwrap().len(), 1);
    } else {
        // Claimed by the first call for a while: not offered to another replica.
        assert!(store.awaiting_verdict(10).await.unwrap().is_empty());
    }
}

async fn the_sandbox_ledger_charges_a_key_once(t: TestStore) {
    let store = &t.store;
    let Captured::New(first) = store.ledger_capture("pay_1", "o1", 1000, "USD").await.unwrap() else {
        panic!("a new key is a new charge");
    };
    assert_eq!(store.ledger_capture("pay_1", "o1", 1000, "USD").await.unwrap(), Captured::Existing(first.clone()));
    assert!(matches!(store.ledger_capture("pay_1", "o1", 999, "USD").await.unwrap(), Captured::Mismatch(_)));
    assert!(matches!(store.ledger_capture("pay_1", "o1", 1000, "EUR").await.unwrap(), Captured::Mismatch(_)));
    store.ledger_capture("pay_2", "o2", 50, "USD").await.unwrap();
    assert_eq!(store.ledger_lookup("pay_1").await.unwrap(), Some(first.clone()));
    assert_eq!(store.ledger_lookup("pay_none").await.unwrap(), None);
    let all = store.ledger_charges().unwrap();
    assert_eq!(all.iter().map(|c| c.idempotency_key.as_str()).collect::<Vec<_>>(), ["pay_1", "pay_2"]);
    // Concurrent captures of one key: one charge.
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.ledger_capture("pay_race", "o9", 10, "USD").await.unwrap() })
        })
        .collect();
    let mut transactions = BTreeSet::new();
    for racer in racers {
        match racer.await.unwrap() {
            Captured::New(c) | Captured::Existing(c) => transactions.insert(c.transaction_id),
            other => panic!("{other:?}"),
        };
    }
    assert_eq!(transactions.len(), 1);
}

/// A candidate module of the gold-loyalty rule, as a shadow run names it.
fn shadow_module(file: &str, digest: &str, config: &str) -> ShadowModule {
    ShadowModule {
        file: file.into(),
        name: "gold-loyalty".into(),
        version: "1.0.0".into(),
        digest: digest.into(),
        config_hash: "sha256:c0ffee".into(),
        config: config.into(),
    }
}

async fn shadow_runs_are_summed(t: TestStore) {
    let module = |file: &str, digest: &str| shadow_module(file, digest, r#"{"percent":"12"}"#);
    let run = |order: &str, differs: bool, cents: i64| ShadowRun {
        order_id: order.into(),
        slot: Slot::Discount,
        active: module("gold.wasm", "d1"),
        candidate: module("gold_v2.wasm", "d2"),
        active_result: "{}".into(),
        candidate_result: "{}".into(),
        money_difference_cents: cents,
        differs,
        failed: false,
    };
    t.store.record_shadow_runs(vec![run("o1", true, 150), run("o2", false, 0)]).await.unwrap();
    // The same order's run again (a retried pass) counts once.
    t.store.record_shadow_runs(vec![run("o1", true, 150), run("o3", true, -50)]).await.unwrap();
    // A candidate that failed is an error, never a difference.
    let trapped = ShadowRun { failed: true, differs: true, ..run("o4", true, 0) };
    t.store.record_shadow_runs(vec![trapped]).await.unwrap();
    let summaries = t.store.shadow_summaries().await.unwrap();
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];
    assert_eq!((s.orders, s.differing_orders, s.errors, s.money_difference_cents), (4, 2, 1, 100));
    assert!((s.share_differing - 0.5).abs() < 1e-9);
    assert!((s.error_rate - 0.25).abs() < 1e-9);
    assert_eq!((s.slot.as_str(), s.candidate_module.as_str()), ("discount", "gold_v2.wasm"));
    assert_eq!((s.candidate_name.as_str(), s.candidate_config_hash.as_str()), ("gold-loyalty", "sha256:c0ffee"));
    assert_eq!(s.candidate_config, serde_json::json!({"percent": "12"}));
}

async fn settled_orders_and_escalations_newest_first(t: TestStore) {
    seed(&t.store).await;
    for (i, status) in
        [OrderStatus::Confirmed, OrderStatus::PaymentFailed, OrderStatus::Confirmed].into_iter().enumerate()
    {
        place(&t.store, &format!("o{i}"), "c1", vec![hold("W1", "A", 1)], status).await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    t.store.reserve(new_order("pending", "c1", vec![hold("W1", "A", 1)], None)).await.unwrap();
    let recent = t.store.recent_settled_orders(2).unwrap();
    assert_eq!(recent.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["o2", "o1"]);
    assert_eq!(t.store.recent_settled_orders(10).unwrap().len(), 3);
    // By sales channel (the orders here are web orders).
    let of_web = t.store.recent_settled_orders_of(2, &[Channel::Mobile, Channel::Web]).unwrap();
    assert_eq!(of_web.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["o2", "o1"]);
    assert!(t.store.recent_settled_orders_of(10, &[Channel::Mobile, Channel::Partner]).unwrap().is_empty());
    assert!(t.store.escalations(10).await.unwrap().is_empty());
}

/// Phase 1 keeps the selector's input on the order's row, beside its holds
/// (schema version 15), and replay reads both back.
async fn an_order_keeps_what_its_selector_saw(t: TestStore) {
    seed(&t.store).await;
    let input = r#"[["W1","Warehouse W1",41.0,-73.0,[["A",10],["B",3]]],["W2","Warehouse W2",41.0,-73.0,[["A",5]]]]"#;
    let order = NewOrder {
        intent: Some(intent("o1", "{\"draft\":true}".into(), "pay_o1", 4500, "tok")),
        selector_input: Some(input.into()),
        ..new_order("o1", "c1", vec![hold("W1", "A", 2), hold("W1", "B", 1)], Some("o1"))
    };
    assert_eq!(t.store.reserve(order).await.unwrap(), ReserveOutcome::Reserved);
    assert_eq!(t.number("SELECT length(selector_input) FROM orders WHERE id = 'o1'").await, input.len() as i64);
    t.store.settle(settlement("o1", "c1", OrderStatus::Confirmed)).await.unwrap();
    place(&t.store, "o2", "c1", vec![hold("W2", "A", 1)], OrderStatus::Confirmed).await;
    let recent = t.store.recent_settled_orders(2).unwrap();
    let kept: Vec<_> =
        recent.iter().map(|o| (o.id.as_str(), o.holds.as_deref(), o.selector_input.as_deref())).collect();
    assert_eq!(
        kept,
        [("o2", Some(r#"[["W2","A",1]]"#), None), ("o1", Some(r#"[["W1","A",2],["W1","B",1]]"#), Some(input))],
        "an order placed without one keeps none"
    );
}

async fn two_hundred_buyers_never_oversell_ten_units(t: TestStore) {
    seed(&t.store).await;
    t.store.set_stock("W1", "B", 10).await.unwrap();
    let store = Arc::new(t.store.clone());
    let buyers: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                // Two lines in opposite orders for half the buyers: locks are taken in one order anyway.
                let holds = if i % 2 == 0 {
                    vec![hold("W1", "B", 1), hold("W1", "A", 1)]
                } else {
                    vec![hold("W1", "A", 1), hold("W1", "B", 1)]
                };
                store.reserve(new_order(&format!("o{i}"), "c1", holds, Some(&format!("k{i}")))).await.unwrap()
            })
        })
        .collect();
    let mut reserved = 0;
    for buyer in buyers {
        match buyer.await.unwrap() {
            ReserveOutcome::Reserved => reserved += 1,
            ReserveOutcome::Shortfall { .. } => {}
            ReserveOutcome::KeyTaken => panic!("every buyer has a key of its own"),
        }
    }
    assert_eq!(reserved, 10);
    assert_eq!(available(&t.store, "W1", "B").await, (10, 0));
    assert_eq!(available(&t.store, "W1", "A").await, (10, 0));
    assert_eq!(t.number("SELECT count(*) FROM orders").await, 10);
    assert_eq!(t.number("SELECT count(*) FROM idempotency").await, 10, "refused buyers keep their keys free");
}

async fn twenty_racers_on_one_key_make_one_order(t: TestStore) {
    seed(&t.store).await;
    let racers: Vec<_> = (0..20)
        .map(|i| {
            let store = t.store.clone();
            tokio::spawn(async move {
                store
                    .reserve(new_order(&format!("o{i}"), "c1", vec![hold("W1", "A", 1)], Some("one-key")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for racer in racers {
        outcomes.push(racer.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| **o == ReserveOutcome::Reserved).count(), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == ReserveOutcome::KeyTaken).count(), 19);
    assert_eq!(t.number("SELECT count(*) FROM orders").await, 1);
    assert_eq!(available(&t.store, "W1", "A").await, (10, 9));
}

async fn a_read_only_store_never_writes(t: TestStore) {
    seed(&t.store).await;
    place(&t.store, "o1", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    let reader = t.open_read_only().await.expect("opening read-only");
    assert_eq!(reader.recent_settled_orders(5).unwrap().len(), 1);
    assert_eq!(reader.customer("c1").await.unwrap().unwrap().id, "c1");
    let err = reader.upsert_product(product("C", 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(t.store.product("C").await.unwrap().is_none());
}

async fn canary_states_and_rollout_events_are_kept(t: TestStore) {
    let event = |at_ms: i64, kind: &str, reason: &str| RolloutEvent {
        at_ms,
        kind: kind.parse().unwrap(),
        entry: "loyalty-v2".into(),
        reason: reason.into(),
    };
    let record = |state: &str, calls: u64, errors: u64| RolloutRecord {
        entry: "loyalty-v2".into(),
        slot: Slot::Discount,
        stable_digest: "d1".into(),
        stable_config_hash: "sha256:a".into(),
        canary_digest: "d2".into(),
        canary_config_hash: "sha256:b".into(),
        state: state.parse().unwrap(),
        reason: (state != "running").then(|| "error rate 40 % over 50 calls".into()),
        calls,
        errors,
        at_ms: 2_000,
    };
    assert_eq!(t.store.rollout_state("loyalty-v2").unwrap(), None);
    t.store.record_rollout_event(event(1_000, "reload", "discount[0] loyalty canary")).await.unwrap();
    t.store.record_rollout_state(record("running", 10, 0), event(1_500, "reload", "canary started")).await.unwrap();
    t.store
        .record_rollout_state(record("rolled_back", 50, 20), event(2_000, "rollback", "error rate 40 %"))
        .await
        .unwrap();
    assert_eq!(t.store.rollout_state("loyalty-v2").unwrap(), Some(record("rolled_back", 50, 20)));
    let kinds: Vec<_> = t.store.rollout_events(10).await.unwrap().into_iter().map(|e| (e.at_ms, e.kind)).collect();
    use smartmart::domain::status::RolloutEventKind::{Reload, Rollback};
    assert_eq!(kinds, [(2_000, Rollback), (1_500, Reload), (1_000, Reload)]);
    assert_eq!(t.store.rollout_events(1).await.unwrap().len(), 1);
    // A state the service does not know cannot even be written now: the
    // record's state is a `CanaryState` (the schema's CHECK stays behind it).
    assert!("paused".parse::<smartmart::domain::status::CanaryState>().is_err());
    assert_eq!(t.store.rollout_events(10).await.unwrap().len(), 3);
}

async fn arm_figures_only_ever_add_up(t: TestStore) {
    let key = |variant: &str, config: &str| ArmKey {
        experiment: "loyalty".into(),
        variant: variant.into(),
        module_digest: "sha256:d1".into(),
        config_hash: config.into(),
    };
    let delta = |orders: u64, revenue: u64, latency_bucket: usize| {
        let mut f = ArmFigures {
            slot: "discount".into(),
            module: "gold_loyalty.wasm".into(),
            version: "1.0.0".into(),
            orders,
            fired_orders: orders,
            discount_cents: 10 * orders,
            confirmed_orders: orders,
            revenue_cents: revenue,
            revenue_squares: (revenue as f64).powi(2),
            calls: orders,
            latency_us_sum: 20.0 * orders as f64,
            // The warehouse and fraud figures (migration 14) add up as well.
            stock_outs: orders + 1,
            shipped_orders: orders,
            split_orders: orders / 2,
            distance_km_sum: 2.5 * orders as f64,
            distance_km_squares: 6.25 * orders as f64,
            escalations: orders + 2,
            reviews: orders + 3,
            ..ArmFigures::default()
        };
        f.latency_buckets[latency_bucket] = orders;
        f
    };
    t.store.add_arm_figures(vec![(key("control", "sha256:a"), delta(2, 5_000, 1))]).await.unwrap();
    // A second process on the same database adds to the same rows.
    let other = t.reopen().await.unwrap();
    other
        .add_arm_figures(vec![
            (key("control", "sha256:a"), delta(3, 7_000, 3)),
            (key("fifteen", "sha256:b"), delta(1, 900, LATENCY_BOUNDS_US.len() - 1)),
        ])
        .await
        .unwrap();
    let rows = t.store.arm_rows().await.unwrap();
    assert_eq!(rows.len(), 2);
    let control = &rows[0].figures;
    assert_eq!(rows[0].key, key("control", "sha256:a"));
    assert_eq!((control.orders, control.discount_cents, control.revenue_cents), (5, 50, 12_000));
    assert_eq!(control.revenue_squares, 5_000f64.powi(2) + 7_000f64.powi(2));
    assert_eq!((control.latency_buckets[1], control.latency_buckets[3]), (2, 3));
    assert_eq!((control.stock_outs, control.shipped_orders, control.split_orders), (7, 5, 2));
    assert_eq!((control.distance_km_sum, control.distance_km_squares), (12.5, 31.25));
    assert_eq!((control.escalations, control.reviews), (9, 11));
    assert_eq!(rows[1].figures.latency_buckets[LATENCY_BOUNDS_US.len() - 1], 1, "the +Inf bucket");
}

/// The invoice an order is answered with while its payment outcome is unknown.
fn pending_invoice(order_id: &str) -> String {
    format!(r#"{{"order_id":"{order_id}","status":"PAYMENT_PENDING"}}"#)
}

fn pending(order_id: &str, resolve_after_ms: i64) -> PendingPayment {
    PendingPayment { order_id: order_id.into(), invoice: pending_invoice(order_id), attempts: 3, resolve_after_ms }
}

/// Reserve and record the intent (key `order_id`, gateway key `pay_{order_id}`,
/// 1000 cents, token `tok`): an order whose payment is in flight.
async fn paying(store: &Store, order_id: &str, customer_id: &str, holds: Vec<Hold>) {
    let outcome = store.reserve(new_order(order_id, customer_id, holds, Some(order_id))).await.unwrap();
    assert_eq!(outcome, ReserveOutcome::Reserved);
    store
        .record_intent(intent(order_id, "{\"draft\":true}".into(), &format!("pay_{order_id}"), 1000, "tok"))
        .await
        .unwrap();
}

async fn a_payment_pending_order_answers_202_until_it_is_paid(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    store.replace_cart("c1", vec![CartItem { sku: "A".into(), quantity: 3 }]).await.unwrap();
    paying(store, "o1", "c1", vec![hold("W1", "A", 3), hold("W1", "B", 1)]).await;
    store.mark_payment_pending(pending("o1", 1_000)).await.unwrap();
    // Answered 202 with the pending invoice, kept once (on the order).
    assert_eq!(
        store.key_record("web", "o1").await.unwrap(),
        Some(KeyRecord::Answered {
            request_hash: "hash-o1".into(),
            answer: Answer { status_code: 202, body: pending_invoice("o1") }
        })
    );
    assert_eq!(t.number("SELECT count(*) FROM idempotency WHERE body IS NOT NULL").await, 0);
    let order = store.order("o1").await.unwrap().unwrap();
    assert_eq!((order.status, order.invoice), (OrderStatus::Pending, Some(pending_invoice("o1"))));
    // The stock stays held, nothing is announced, the token is kept for the reconciler.
    assert_eq!(available(store, "W1", "A").await, (10, 7));
    assert_eq!(available(store, "W1", "B").await, (3, 2));
    assert_eq!(t.number("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(
        t.number(
            "SELECT count(*) FROM payments WHERE status = 'INTENT' AND token = 'tok' AND attempts = 3
             AND resolve_after_ms = 1000"
        )
        .await,
        1
    );
    assert!(!store.cart("c1").await.unwrap().0.is_empty(), "the cart waits for the payment");

    store.settle(settlement("o1", "c1", OrderStatus::Confirmed)).await.unwrap();
    // The final answer replaces the 202.
    assert_eq!(
        store.key_record("web", "o1").await.unwrap(),
        Some(KeyRecord::Answered {
            request_hash: "hash-o1".into(),
            answer: Answer { status_code: 201, body: r#"{"order_id":"o1","final":true}"#.into() }
        })
    );
    assert_eq!(store.order("o1").await.unwrap().unwrap().status, OrderStatus::Confirmed);
    assert_eq!(available(store, "W1", "A").await, (7, 7), "taken exactly once");
    assert_eq!(available(store, "W1", "B").await, (2, 2));
    assert_eq!(t.holds_of("CONFIRMED").await, 2);
    assert_eq!(t.number("SELECT count(*) FROM outbox").await, 3);
    assert_eq!(t.number("SELECT count(*) FROM payments WHERE status = 'CAPTURED' AND token IS NULL").await, 1);
    assert!(store.cart("c1").await.unwrap().0.is_empty());
}

async fn a_payment_pending_order_that_fails_releases_exactly(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    paying(store, "o1", "c1", vec![hold("W2", "A", 5)]).await;
    paying(store, "o2", "c2", vec![hold("W1", "A", 2)]).await;
    store.mark_payment_pending(pending("o1", 1_000)).await.unwrap();
    assert_eq!(available(store, "W2", "A").await, (5, 0));
    store.settle(settlement("o1", "c1", OrderStatus::PaymentFailed)).await.unwrap();
    assert_eq!(
        store.key_record("web", "o1").await.unwrap(),
        Some(KeyRecord::Answered {
            request_hash: "hash-o1".into(),
            answer: Answer { status_code: 402, body: "answer of o1".into() }
        })
    );
    assert_eq!(store.order("o1").await.unwrap().unwrap().status, OrderStatus::PaymentFailed);
    assert_eq!(available(store, "W2", "A").await, (5, 5), "released exactly");
    assert_eq!(available(store, "W1", "A").await, (10, 8), "another order's hold untouched");
    assert_eq!(t.holds_of("PAYMENT_FAILED").await, 1);
    assert_eq!(t.number("SELECT count(*) FROM payments WHERE status = 'FAILED' AND token IS NULL").await, 1);
    assert_eq!(t.number("SELECT count(*) FROM outbox WHERE order_id = 'o1'").await, 3);
    // A settled order settles once, whatever it was answered before.
    let err = store.settle(settlement("o1", "c1", OrderStatus::Confirmed)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(
        store.key_record("web", "o2").await.unwrap(),
        Some(KeyRecord::InFlight { request_hash: "hash-o2".into(), order_id: "o2".into() }),
        "another order's key untouched"
    );
}

async fn only_a_pending_order_with_an_intent_becomes_payment_pending(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    place(store, "done", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    let err = store.mark_payment_pending(pending("done", 1_000)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(
        store.key_record("web", "done").await.unwrap(),
        Some(KeyRecord::Answered {
            request_hash: "hash-done".into(),
            answer: Answer { status_code: 201, body: r#"{"order_id":"done","final":true}"#.into() }
        })
    );
    // Reserved, never reached payment: refused, and the order's update undone with it.
    store.reserve(new_order("unpaid", "c1", vec![hold("W1", "A", 1)], Some("unpaid"))).await.unwrap();
    t.execute("UPDATE orders SET updated_at = '2001-01-01T00:00:00Z' WHERE id = 'unpaid'").await;
    let err = store.mark_payment_pending(pending("unpaid", 1_000)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.order("unpaid").await.unwrap().unwrap().invoice, None);
    assert_eq!(t.number("SELECT count(*) FROM orders WHERE updated_at = '2001-01-01T00:00:00Z'").await, 1);
    assert_eq!(
        store.key_record("web", "unpaid").await.unwrap(),
        Some(KeyRecord::InFlight { request_hash: "hash-unpaid".into(), order_id: "unpaid".into() })
    );
    let err = store.mark_payment_pending(pending("nobody", 1_000)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(t.number("SELECT count(resolve_after_ms) FROM payments").await, 0);
    assert_eq!(store.payments_pending_count().await.unwrap(), 0);
}

/// The order ids of the intents `pending_orders` returns, and whether each
/// is an unknown outcome.
async fn due(store: &Store, updated_before: &str, now_ms: i64) -> Vec<(String, bool)> {
    let (unpaid, intents) = store.pending_orders(updated_before, now_ms).await.unwrap();
    assert!(unpaid.is_empty(), "{unpaid:?}");
    let mut due: Vec<_> = intents.into_iter().map(|i| (i.order_id, i.outcome_unknown)).collect();
    due.sort();
    due
}

async fn pending_payments_are_resolved_at_their_time(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    let shared = store.is_shared();
    paying(store, "paying", "c1", vec![hold("W1", "A", 1)]).await;
    paying(store, "pp", "c2", vec![hold("W1", "A", 2)]).await;
    let now = smartmart::test_support::now_ms();
    store.mark_payment_pending(pending("pp", now + 60_000)).await.unwrap();
    // Both as if their process died long ago.
    t.execute("UPDATE orders SET updated_at = '2001-01-01T00:00:00.25Z' WHERE status = 'PENDING'").await;
    let (long_ago, cutoff) = ("2000-06-01T00:00:00Z", "2001-01-01T00:00:00.5Z");
    assert_eq!(due(store, long_ago, now).await, []);
    // The interrupted intent is found by its age; the pending payment, however
    // old, waits for the time the reconciler asked for.
    assert_eq!(due(store, cutoff, now).await, [("paying".to_string(), false)]);
    assert_eq!(due(store, long_ago, now + 59_999).await, []);

    // Its time has come: found whatever its updated_at, with what resolving it needs.
    let (unpaid, intents) = store.pending_orders(long_ago, now + 60_000).await.unwrap();
    assert!(unpaid.is_empty());
    assert_eq!(intents.len(), 1);
    let intent = &intents[0];
    assert_eq!((intent.order_id.as_str(), intent.idempotency_key.as_str()), ("pp", "pay_pp"));
    assert_eq!((intent.amount_cents, intent.currency.as_str(), intent.token.as_deref()), (1000, "USD", Some("tok")));
    assert!(intent.outcome_unknown);
    if shared {
        // Claimed: another replica does not ask the gateway about it meanwhile…
        assert_eq!(due(store, long_ago, now + 60_000).await, []);
        assert_eq!(
            t.number("SELECT resolve_after_ms FROM payments WHERE order_id = 'pp'").await,
            now + 60_000 + RESOLVE_LEASE_MS
        );
        // …unless this one died with it: the lease runs out.
        assert_eq!(due(store, long_ago, now + 60_000 + RESOLVE_LEASE_MS).await, [("pp".to_string(), true)]);
    } else {
        assert_eq!(due(store, long_ago, now + 60_000).await, [("pp".to_string(), true)], "found until settled");
    }

    // An undecided pass asks again later.
    store.defer_resolution("pp", now + 600_000).await.unwrap();
    assert_eq!(due(store, long_ago, now + 599_999).await, []);
    assert_eq!(due(store, long_ago, now + 600_000).await, [("pp".to_string(), true)]);
    // Settled: never found again, and deferring it does nothing.
    store.settle(settlement("pp", "c2", OrderStatus::Confirmed)).await.unwrap();
    store.defer_resolution("pp", now).await.unwrap();
    store.defer_resolution("nobody", now).await.unwrap();
    assert_eq!(due(store, long_ago, i64::MAX).await, []);
    assert_eq!(t.number("SELECT count(*) FROM payments WHERE status = 'INTENT'").await, 1);

    // An interrupted order whose outcome stays unknown is handed over the
    // same way: from then on its time counts, not its age.
    store.defer_resolution("paying", now + 700_000).await.unwrap();
    let later = smartmart::test_support::rfc3339_of_ms(now + 700_000);
    assert_eq!(due(store, &later, now + 699_999).await, []);
    assert_eq!(due(store, long_ago, now + 700_000).await, [("paying".to_string(), true)]);
    assert_eq!(store.payments_pending_count().await.unwrap(), 1);
    store.settle(settlement("paying", "c1", OrderStatus::PaymentFailed)).await.unwrap();
    assert_eq!(due(store, &later, i64::MAX).await, []);
    assert_eq!(t.number("SELECT count(*) FROM payments WHERE status = 'INTENT'").await, 0);
    assert_eq!(available(store, "W1", "A").await, (8, 8));
}

async fn pending_payments_are_listed_until_settled(t: TestStore) {
    seed(&t.store).await;
    let store = &t.store;
    assert_eq!((store.payments_pending(10).await.unwrap(), store.payments_pending_count().await.unwrap()), (vec![], 0));
    paying(store, "o1", "c1", vec![hold("W1", "A", 1)]).await;
    paying(store, "o2", "c2", vec![hold("W1", "A", 1)]).await;
    paying(store, "o3", "c3", vec![hold("W1", "A", 1)]).await;
    store.mark_payment_pending(pending("o2", 5_000)).await.unwrap();
    store.mark_payment_pending(pending("o1", 7_000)).await.unwrap();
    let created_1 = store.order("o1").await.unwrap().unwrap().created_at;
    let created_2 = store.order("o2").await.unwrap().unwrap().created_at;
    let row = |id: &str, customer: &str, created_at: String, resolve_after_ms| PendingPaymentRow {
        order_id: id.into(),
        customer_id: customer.into(),
        channel: "web".into(),
        amount_cents: 1000,
        currency: "USD".into(),
        created_at,
        attempts: 3,
        resolve_after_ms,
    };
    // Oldest first; the order whose payment is merely in flight is not listed.
    assert_eq!(
        store.payments_pending(10).await.unwrap(),
        [row("o1", "c1", created_1.clone(), 7_000), row("o2", "c2", created_2.clone(), 5_000)]
    );
    assert_eq!(store.payments_pending(1).await.unwrap().len(), 1);
    assert_eq!(store.payments_pending_count().await.unwrap(), 2);
    store.settle(settlement("o1", "c1", OrderStatus::Confirmed)).await.unwrap();
    assert_eq!(store.payments_pending(10).await.unwrap(), [row("o2", "c2", created_2.clone(), 5_000)]);
    assert_eq!(store.payments_pending_count().await.unwrap(), 1);
    store.settle(settlement("o2", "c2", OrderStatus::PaymentFailed)).await.unwrap();
    assert!(store.payments_pending(10).await.unwrap().is_empty());
    assert_eq!(store.payments_pending_count().await.unwrap(), 0);
}

async fn the_sandbox_ledger_cancels_a_key_for_good(t: TestStore) {
    let store = &t.store;
    let Captured::New(charge) = store.ledger_capture("pay_1", "o1", 1000, "USD").await.unwrap() else {
        panic!("a new key is a new charge");
    };
    // A captured key stays captured: the cancel says so.
    assert_eq!(store.ledger_cancel("pay_1").await.unwrap(), LedgerCancel::Captured(charge.clone()));
    assert_eq!(store.ledger_lookup("pay_1").await.unwrap(), Some(charge.clone()));
    // A key cancelled first is never captured.
    assert_eq!(store.ledger_cancel("pay_2").await.unwrap(), LedgerCancel::Cancelled);
    assert_eq!(store.ledger_cancel("pay_2").await.unwrap(), LedgerCancel::Cancelled, "cancel is idempotent");
    assert_eq!(store.ledger_capture("pay_2", "o2", 50, "USD").await.unwrap(), Captured::Cancelled);
    assert_eq!(store.ledger_capture("pay_2", "o2", 50, "USD").await.unwrap(), Captured::Cancelled);
    assert_eq!(store.ledger_lookup("pay_2").await.unwrap(), None);
    assert_eq!(store.ledger_cancel("pay_2").await.unwrap(), LedgerCancel::Cancelled);
    assert_eq!(store.ledger_charges().unwrap(), [charge]);
    assert_eq!(t.number("SELECT count(*) FROM sandbox_cancelled").await, 1);
}

async fn capture_and_cancel_of_one_key_never_both_happen(t: TestStore) {
    let (mut captured, mut cancelled) = (0, 0);
    for round in 0..12 {
        let key = format!("pay_race_{round}");
        let mut captures = Vec::new();
        let mut cancels = Vec::new();
        // 16 captures and 16 cancels, interleaved; half the rounds start with a cancel.
        for racer in 0..32 {
            let store = t.store.clone();
            let key = key.clone();
            if (racer + round) % 2 == 0 {
                captures.push(tokio::spawn(async move { store.ledger_capture(&key, "o9", 10, "USD").await.unwrap() }));
            } else {
                cancels.push(tokio::spawn(async move { store.ledger_cancel(&key).await.unwrap() }));
            }
        }
        let mut capture_outcomes = Vec::new();
        for capture in captures {
            capture_outcomes.push(capture.await.unwrap());
        }
        let mut cancel_outcomes = Vec::new();
        for cancel in cancels {
            cancel_outcomes.push(cancel.await.unwrap());
        }
        match t.store.ledger_lookup(&key).await.unwrap() {
            // One charge: every capture got it, and every cancel saw it.
            Some(charge) => {
                captured += 1;
                assert_eq!(capture_outcomes.iter().filter(|c| matches!(c, Captured::New(_))).count(), 1, "{key}");
                for outcome in &capture_outcomes {
                    match outcome {
                        Captured::New(c) | Captured::Existing(c) => assert_eq!(c, &charge),
                        other => panic!("{key} was charged, yet a capture got {other:?}"),
                    }
                }
                assert!(cancel_outcomes.iter().all(|c| *c == LedgerCancel::Captured(charge.clone())), "{key}");
            }
            // No charge: every capture and every cancel found the key cancelled.
            None => {
                cancelled += 1;
                assert!(capture_outcomes.iter().all(|c| *c == Captured::Cancelled), "{key}: {capture_outcomes:?}");
                assert!(cancel_outcomes.iter().all(|c| *c == LedgerCancel::Cancelled), "{key}: {cancel_outcomes:?}");
            }
        }
    }
    assert_eq!(captured + cancelled, 12);
    assert_eq!(t.number("SELECT count(*) FROM sandbox_charges").await, captured);
    assert_eq!(t.number("SELECT count(*) FROM sandbox_cancelled").await, cancelled);
}

/// The order's one read: its customer, its cart priced now with the skus no
/// longer in the catalog apart, and the warehouses stocking the cart's skus
/// (by id, each with its skus in the cart's order and what is available
/// there now), the same on both back-ends.
async fn the_order_snapshot_reads_customer_cart_and_stock(t: TestStore) {
    let store = &t.store;
    seed(store).await;
    let item = |sku: &str, quantity| CartItem { sku: sku.into(), quantity };
    store.replace_cart("c1", vec![item("B", 1), item("A", 2)]).await.unwrap();
    // A sku the catalog no longer has (the store itself never writes one).
    t.execute("INSERT INTO carts (customer_id, position, sku, quantity) VALUES ('c1', 7, 'GONE', 1)").await;
    store.reserve(new_order("o1", "c2", vec![hold("W1", "A", 4)], Some("used-key"))).await.unwrap();

    let snapshot = store.order_snapshot("c1", None).await.unwrap();
    assert!(!snapshot.key_used);
    // The key an earlier order claimed, in its channel only.
    assert!(store.order_snapshot("c1", Some(("web", "used-key"))).await.unwrap().key_used);
    assert!(!store.order_snapshot("c1", Some(("mobile", "used-key"))).await.unwrap().key_used);
    assert!(!store.order_snapshot("c1", Some(("web", "fresh-key"))).await.unwrap().key_used);
    assert_eq!(snapshot.customer, Some(customer("c1", Tier::Gold)));
    let lines: Vec<_> = snapshot.cart.iter().map(|l| (l.sku.as_str(), l.quantity, l.unit_price_cents)).collect();
    assert_eq!(lines, [("B", 1, 2500), ("A", 2, 1000)]);
    assert_eq!(snapshot.cart[0].name, "Product B");
    assert_eq!(snapshot.unknown_skus, ["GONE"]);
    let stocked: Vec<_> = snapshot.stocked.iter().map(|w| (w.warehouse.clone(), w.available.clone())).collect();
    assert_eq!(
        stocked,
        [
            (warehouse("W1"), vec![("B".to_string(), 3), ("A".to_string(), 6)]),
            (warehouse("W2"), vec![("A".to_string(), 5)]),
        ]
    );

    let nobody = store.order_snapshot("nobody", None).await.unwrap();
    assert_eq!((nobody.customer, nobody.cart.len(), nobody.unknown_skus.len(), nobody.stocked.len()), (None, 0, 0, 0));
}

/// What `op` cost on the wire: (round trips, transactions).
async fn cost<T>(store: &Store, op: impl Future<Output = T>) -> (T, (u64, u64)) {
    let before = store.wire_totals().expect("a PostgreSQL store counts its wire");
    let value = op.await;
    // An error answers the caller before the ReadyForQuery that follows it
    // (the end of its transaction) is read: give the connection a moment.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let after = store.wire_totals().expect("a PostgreSQL store counts its wire");
    let WireTotals { round_trips, transactions } = after;
    (value, (round_trips - before.round_trips, transactions - before.transactions))
}

/// On PostgreSQL each operation of an order's answer path is one round trip
/// and one transaction, whatever its outcome: the read, the reserve
/// (reserved, short of stock, or its key taken: then nothing written), the
/// sandbox gateway's capture (new, repeated, cancelled) and the settlement
/// (or its refusal). A multi-statement operation still costs its BEGIN and
/// COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answer_path_operations_are_one_round_trip_each() {
    let t = TestStore::postgres().await;
    let store = &t.store;
    seed(store).await;
    let item = |sku: &str, quantity| CartItem { sku: sku.into(), quantity };
    store.replace_cart("c1", vec![item("A", 2), item("B", 1)]).await.unwrap();
    const ONE: (u64, u64) = (1, 1);

    let (snapshot, spent) = cost(store, store.order_snapshot("c1", None)).await;
    assert_eq!((snapshot.unwrap().cart.len(), spent), (2, ONE), "the order's read");

    let mut order = new_order("o1", "c1", vec![hold("W1", "A", 2), hold("W1", "B", 1)], Some("k1"));
    order.intent = Some(intent("o1", "{}".into(), "pay_o1", 4500, "tok"));
    let (outcome, spent) = cost(store, store.reserve(order)).await;
    assert_eq!((outcome.unwrap(), spent), (ReserveOutcome::Reserved, ONE), "a reserve");

    let mut taken = new_order("o2", "c1", vec![hold("W1", "A", 1)], Some("k1"));
    taken.intent = Some(intent("o2", "{}".into(), "pay_o2", 1000, "tok"));
    let (outcome, spent) = cost(store, store.reserve(taken)).await;
    assert_eq!((outcome.unwrap(), spent), (ReserveOutcome::KeyTaken, ONE), "a reserve whose key is taken");

    // W2 has no B: the A held from W2 before it is undone.
    let mut short = new_order("o3", "c1", vec![hold("W2", "A", 1), hold("W2", "B", 1)], Some("k3"));
    short.intent = Some(intent("o3", "{}".into(), "pay_o3", 1000, "tok"));
    let (outcome, spent) = cost(store, store.reserve(short)).await;
    let short_of = ReserveOutcome::Shortfall { warehouse_id: "W2".into(), sku: "B".into() };
    assert_eq!((outcome.unwrap(), spent), (short_of, ONE), "a reserve short of stock");
    // Nothing of the last two was written: no order, no hold, no intent, no key.
    assert_eq!(available(store, "W2", "A").await, (5, 5));
    assert_eq!(t.number("SELECT count(*) FROM orders").await, 1);
    assert_eq!(t.number("SELECT count(*) FROM payments").await, 1);
    assert_eq!(store.key_record("web", "k3").await.unwrap(), None);

    let (captured, spent) = cost(store, store.ledger_capture("pay_o1", "o1", 4500, "USD")).await;
    assert!(matches!(captured.unwrap(), Captured::New(_)));
    assert_eq!(spent, ONE, "a capture");
    let (captured, spent) = cost(store, store.ledger_capture("pay_o1", "o1", 4500, "USD")).await;
    assert!(matches!(captured.unwrap(), Captured::Existing(_)));
    assert_eq!(spent, ONE, "a repeated capture");
    store.ledger_cancel("pay_x").await.unwrap();
    let (captured, spent) = cost(store, store.ledger_capture("pay_x", "o9", 1, "USD")).await;
    assert_eq!((captured.unwrap(), spent), (Captured::Cancelled, ONE), "a capture of a cancelled key");

    let (settled, spent) = cost(store, store.settle(settlement("o1", "c1", OrderStatus::Confirmed))).await;
    settled.unwrap();
    assert_eq!(spent, ONE, "a settlement");
    let (refused, spent) = cost(store, store.settle(settlement("o1", "c1", OrderStatus::PaymentFailed))).await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    assert_eq!(spent, ONE, "a refused settlement");
    assert_eq!(available(store, "W1", "A").await, (8, 8), "the refused settlement changed nothing");
    assert_eq!(t.number("SELECT count(*) FROM outbox").await, 3);

    // Not on the answer path: a cancel is BEGIN, its statements, COMMIT; one transaction.
    store.reserve(new_order("o4", "c2", vec![hold("W1", "A", 1)], None)).await.unwrap();
    let (cancelled, (round_trips, transactions)) = cost(store, store.cancel("o4", "test")).await;
    assert!(cancelled.unwrap());
    assert!(round_trips > 2, "{round_trips}");
    assert_eq!(transactions, 1);
}

/// The store makes its PostgreSQL connections itself (to count their
/// bytes), as the driver would: a host that refuses is passed over for the
/// next, a Unix socket directory serves, `target_session_attrs` is
/// honoured, and a server that cannot be reached is `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_are_made_as_the_driver_makes_them() {
    let schema = TestSchema::create().await;
    let local = "@127.0.0.1:5432/";
    assert!(schema.url.contains(local), "this test knows the default test server only: {}", schema.url);
    let at = |hosts: &str| schema.url.replace(local, &format!("@{hosts}/"));
    let options = PostgresOptions { connect_timeout: std::time::Duration::from_secs(2), ..PostgresOptions::default() };
    let open = async |url: String| Store::open_postgres(&url, &options).await;

    let store = open(at("127.0.0.1:1,127.0.0.1:5432")).await.expect("the second host, after the first refused");
    assert!(store.ping().await);
    let store = open(format!("{}&target_session_attrs=read-write", schema.url)).await.expect("a read-write server");
    assert!(store.ping().await);
    let err = open(format!("{}&target_session_attrs=read-only", schema.url)).await.expect_err("not a standby");
    assert!(matches!(err, StoreError::Unavailable(ref m) if m.contains("target_session_attrs")), "{err}");
    let err = open(at("127.0.0.1:1")).await.expect_err("nothing listens on port 1");
    assert!(matches!(err, StoreError::Unavailable(ref m) if m.to_lowercase().contains("refused")), "{err}");

    let socket_dir = "/var/run/postgresql";
    if std::path::Path::new(socket_dir).join(".s.PGSQL.5432").exists() {
        let store = open(at("%2Fvar%2Frun%2Fpostgresql")).await.expect("the server's Unix socket");
        assert!(store.ping().await);
    }
}

// ---------------------------------------------------------------------------
// Retention (store::retention): each pruned table past its cutoff, and what
// is never pruned whatever the cutoff.
// ---------------------------------------------------------------------------

/// Far enough ahead that every row written by the test is older.
fn far_ahead() -> i64 {
    smartmart::test_support::now_ms() + 3_600_000
}

/// An hour ago: no row written by the test is older.
fn an_hour_ago() -> i64 {
    smartmart::test_support::now_ms() - 3_600_000
}

async fn retention_prunes_settled_keys_and_never_an_unsettled_one(t: TestStore) {
    let store = &t.store;
    seed(store).await;
    place(store, "o1", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    place(store, "o2", "c2", vec![hold("W1", "A", 1)], OrderStatus::PaymentFailed).await;
    place(store, "o3", "c3", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    // Not settled: running (no answer yet), and answered 202 (its payment pending).
    assert_eq!(
        store.reserve(new_order("running", "c1", vec![hold("W2", "A", 1)], Some("running"))).await.unwrap(),
        ReserveOutcome::Reserved
    );
    paying(store, "pending", "c2", vec![hold("W2", "A", 1)]).await;
    store.mark_payment_pending(pending("pending", 1_000)).await.unwrap();
    assert_eq!(t.number("SELECT count(*) FROM idempotency").await, 5);

    // Nothing is older than an hour ago.
    assert_eq!(store.prune(Retained::Idempotency, an_hour_ago(), 500).await.unwrap(), 0);
    // Batches of at most `limit`; then everything settled goes, the rest stays.
    assert_eq!(store.prune(Retained::Idempotency, far_ahead(), 2).await.unwrap(), 2);
    assert_eq!(store.prune(Retained::Idempotency, far_ahead(), 500).await.unwrap(), 1);
    assert_eq!(store.prune(Retained::Idempotency, far_ahead(), 500).await.unwrap(), 0);
    for key in ["o1", "o2", "o3"] {
        assert_eq!(store.key_record("web", key).await.unwrap(), None, "{key} was settled and is past its window");
    }
    assert_eq!(
        store.key_record("web", "running").await.unwrap(),
        Some(KeyRecord::InFlight { request_hash: "hash-running".into(), order_id: "running".into() })
    );
    assert!(
        matches!(
            store.key_record("web", "pending").await.unwrap(),
            Some(KeyRecord::Answered { answer: Answer { status_code: 202, .. }, .. })
        ),
        "the 202's key waits for its final answer"
    );
    // Orders are never pruned: what the replay gate reads is all there.
    assert_eq!(t.number("SELECT count(*) FROM orders").await, 5);
    assert_eq!(store.recent_settled_orders(10).unwrap().len(), 3);

    // Once it settles, the pending order's key goes too.
    store.settle(settlement("pending", "c2", OrderStatus::Confirmed)).await.unwrap();
    assert_eq!(store.prune(Retained::Idempotency, far_ahead(), 500).await.unwrap(), 1);
    assert_eq!(store.key_record("web", "pending").await.unwrap(), None);

    // The window runs from the later of the key's claim and its order's
    // final answer: a key claimed long ago whose order settled just now
    // (a payment pending for days) is kept.
    place(store, "late", "c3", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    t.execute("UPDATE idempotency SET created_at = '2020-01-01T00:00:00Z' WHERE key = 'late'").await;
    let a_minute_ago = smartmart::test_support::now_ms() - 60_000;
    assert_eq!(store.prune(Retained::Idempotency, a_minute_ago, 500).await.unwrap(), 0);
    t.execute("UPDATE orders SET updated_at = '2020-01-01T00:00:01.5Z' WHERE id = 'late'").await;
    assert_eq!(store.prune(Retained::Idempotency, a_minute_ago, 500).await.unwrap(), 1);
    assert_eq!(t.number("SELECT count(*) FROM idempotency").await, 1, "only the running order's key");
    assert_eq!(store.time_beyond_newest(Retained::Idempotency, 0).await.unwrap(), None, "keys have no row cap");
}

/// The outbox rows (DELIVERED, READY, AWAITING_VERDICT).
async fn outbox_states(t: &TestStore) -> (i64, i64, i64) {
    let count = |state: &str| format!("SELECT count(*) FROM outbox WHERE state = '{state}'");
    (t.number(&count("DELIVERED")).await, t.number(&count("READY")).await, t.number(&count("AWAITING_VERDICT")).await)
}

async fn retention_prunes_delivered_events_and_never_an_undelivered_one(t: TestStore) {
    let store = &t.store;
    seed(store).await;
    place(store, "o1", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    place(store, "o2", "c2", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
    // o1's audit and analytics events delivered; o2's are READY; both fraud
    // events wait for their verdicts.
    let due = store.due_events(smartmart::test_support::now_ms(), 100).await.unwrap();
    assert_eq!(due.len(), 4);
    let delivered: Vec<i64> = due.iter().filter(|e| e.id.starts_with("o1-")).map(|e| e.seq).collect();
    assert_eq!(delivered.len(), 2);
    store.mark_delivered(delivered, None).await.unwrap();
    assert_eq!(outbox_states(&t).await, (2, 2, 2));

    assert_eq!(store.prune(Retained::DeliveredEvents, an_hour_ago(), 500).await.unwrap(), 0);
    assert_eq!(store.prune(Retained::DeliveredEvents, far_ahead(), 1).await.unwrap(), 1);
    assert_eq!(store.prune(Retained::DeliveredEvents, far_ahead(), 500).await.unwrap(), 1);
    assert_eq!(store.prune(Retained::DeliveredEvents, far_ahead(), 500).await.unwrap(), 0);
    assert_eq!(outbox_states(&t).await, (0, 2, 2));
    // What is left is still delivered and reviewed as before (on PostgreSQL
    // the claim above leased o2's events: their next attempt moved ahead).
    let due = store.due_events(far_ahead(), 100).await.unwrap();
    assert_eq!(
        due.iter().map(|e| e.id.as_str()).collect::<BTreeSet<_>>(),
        BTreeSet::from(["o2-audit", "o2-analytics"])
    );
    let waiting = store.awaiting_verdict(10).await.unwrap();
    assert_eq!(waiting.iter().map(|w| w.order.id.as_str()).collect::<BTreeSet<_>>(), BTreeSet::from(["o1", "o2"]));
    assert_eq!(store.outbox_backlog().await.unwrap().0, 4);
    assert_eq!(store.time_beyond_newest(Retained::DeliveredEvents, 0).await.unwrap(), None, "no row cap");
}

async fn retention_bounds_shadow_runs_and_rollout_events_by_age_and_count(t: TestStore) {
    let store = &t.store;
    let module = |file: &str, digest: &str| shadow_module(file, digest, "{}");
    let run = |order: String| ShadowRun {
        order_id: order,
        slot: Slot::Discount,
        active: module("gold.wasm", "d1"),
        candidate: module("gold_v2.wasm", "d2"),
        active_result: "{}".into(),
        candidate_result: "{}".into(),
        money_difference_cents: 10,
        differs: true,
        failed: false,
    };
    store.record_shadow_runs((1..=5).map(|i| run(format!("s{i}"))).collect()).await.unwrap();
    for i in 1..=5 {
        t.execute(&format!("UPDATE shadow_runs SET created_ms = {i}000 WHERE order_id = 's{i}'")).await;
        let event = RolloutEvent {
            at_ms: i * 1000,
            kind: "reload".parse().unwrap(),
            entry: format!("e{i}"),
            reason: "r".into(),
        };
        store.record_rollout_event(event).await.unwrap();
    }
    for table in [Retained::ShadowRuns, Retained::RolloutEvents] {
        // By age: the rows before 3 s (at 1 s and 2 s).
        assert_eq!(store.prune(table, 3_000, 500).await.unwrap(), 2, "{table}");
        // By count: three rows left; the cap of 3 holds them all, the cap
        // of 1 has the row at 4 s as the newest beyond it.
        assert_eq!(store.time_beyond_newest(table, 3).await.unwrap(), None, "{table}");
        assert_eq!(store.time_beyond_newest(table, 1).await.unwrap(), Some(4_000), "{table}");
        assert_eq!(store.prune(table, 4_001, 500).await.unwrap(), 2, "{table}");
        assert_eq!(store.time_beyond_newest(table, 1).await.unwrap(), None, "{table}");
    }
    assert_eq!(t.number("SELECT count(*) FROM shadow_runs WHERE order_id = 's5'").await, 1);
    let summaries = store.shadow_summaries().await.unwrap();
    assert_eq!((summaries.len(), summaries[0].orders), (1, 1), "the figures sum the runs kept");
    let events = store.rollout_events(10).await.unwrap();
    assert_eq!(events.iter().map(|e| e.entry.as_str()).collect::<Vec<_>>(), ["e5"]);
}

/// Replicas prune side by side: each row goes once, and a row locked by
/// another transaction (an order holding its key, another pruner's batch)
/// is passed over, never waited for.
async fn two_pruners_at_once_delete_each_row_once(t: TestStore) {
    let values: Vec<String> = (1..=1_000).map(|i| format!("({i}, 'reload', 'e{i}', 'r')")).collect();
    t.execute(&format!("INSERT INTO rollout_events (at_ms, kind, entry, reason) VALUES {}", values.join(", "))).await;
    // On PostgreSQL a second store is a second replica's pool; SQLite has
    // one writer per database, so its "replica" is the same store again.
    let other = match &t.raw {
        Raw::Postgres(..) => t.reopen().await.unwrap(),
        Raw::Sqlite(_) => t.store.clone(),
    };
    let prune_all = |store: Store| async move {
        let mut total = 0;
        loop {
            match store.prune(Retained::RolloutEvents, 2_000, 50).await.unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(prune_all(t.store.clone())), tokio::spawn(prune_all(other)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 1_000, "each row deleted once ({a} + {b})");
    assert_eq!(t.number("SELECT count(*) FROM rollout_events").await, 0);

    if let Raw::Postgres(_, client) = &t.raw {
        seed(&t.store).await;
        place(&t.store, "o1", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
        place(&t.store, "o2", "c1", vec![hold("W1", "A", 1)], OrderStatus::Confirmed).await;
        // Another transaction holds o1's key (as an order's statement would).
        client.batch_execute("BEGIN; SELECT 1 FROM idempotency WHERE key = 'o1' FOR UPDATE").await.unwrap();
        let pruned = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            t.store.prune(Retained::Idempotency, far_ahead(), 500),
        )
        .await
        .expect("a prune never waits for a locked row");
        assert_eq!(pruned.unwrap(), 1, "o2's key, not the locked one");
        client.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(t.store.prune(Retained::Idempotency, far_ahead(), 500).await.unwrap(), 1);
    }
}
