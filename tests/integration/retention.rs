//! Retention through the running service (the store's prunes are tested on
//! both back-ends in `store.rs`): an idempotency key past its window places
//! a new order while one still waiting for its final answer is kept; and a
//! soak under steady order load with one-second windows, whose pruned
//! tables each stay under a bound derived from what was written within
//! their window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smartmart::app::RetentionSettings;
use smartmart::store::rollouts::RolloutEvent;

use crate::support::plugin_dir::{PluginDir, plenty_of_stock};
use crate::support::server::{TestServer, send};
use crate::support::{TestEngine, bundled_plugins, order_body, order_request};

/// Every table kept for `window`, pruned in batches of `batch`.
fn short_windows(window: Duration, batch: usize) -> RetentionSettings {
    RetentionSettings {
        idempotency: window,
        delivered_events: window,
        shadow_runs: window,
        rollout_events: window,
        batch,
        pause: Duration::from_millis(5),
        ..RetentionSettings::default()
    }
}

/// Whether the service's database still holds the web channel's `key`.
fn holds_key(server: &TestServer, key: &str) -> bool {
    let rows: i64 = server
        .db()
        .query_row("SELECT count(*) FROM idempotency WHERE channel = 'web' AND key = ?1", [key], |r| r.get(0))
        .expect("counting keys");
    rows > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_window_places_a_new_order_and_a_pending_one_is_kept() {
    let window = Duration::from_secs(2);
    let server = TestServer::start_with(&bundled_plugins(), |s| s.retention = short_windows(window, 500)).await;

    // An order whose payment outcome stays unknown for 20 s: answered 202
    // at the stage deadline, its key without a final answer meanwhile.
    assert_eq!(server.put_cart("C-1003", &[("HDMI-2M", 1)]).await.status, 200);
    let pending_body = order_body("C-1003", "tok_pending_20");
    let pending = server.post_order(&pending_body, Some("pending-key")).await;
    assert_eq!(pending.status, 202, "{}", pending.text());

    // A confirmed order, replayed within its window.
    assert_eq!(server.put_cart("C-1001", &[("HDMI-2M", 1)]).await.status, 200);
    let body = order_body("C-1001", "tok_ok");
    let sent = Instant::now();
    let first = server.post_order(&body, Some("window-key")).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let again = server.post_order(&body, Some("window-key")).await;
    if sent.elapsed() < window {
        assert_eq!((again.status, &again.bytes), (201, &first.bytes), "a retry within the window is a replay");
    }

    // The retention worker forgets the key once it is past its window…
    let deadline = Instant::now() + Duration::from_secs(20);
    while holds_key(&server, "window-key") {
        assert!(Instant::now() < deadline, "the key was never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …so the same key and body make a new order (the cart was emptied by the first).
    assert_eq!(server.put_cart("C-1001", &[("HDMI-2M", 1)]).await.status, 200);
    let later = server.post_order(&body, Some("window-key")).await;
    assert_eq!(later.status, 201, "{}", later.text());
    assert_ne!(later.json["order_id"], first.json["order_id"], "a key past its window places a new order");
    // The first order itself is kept: only its key was forgotten.
    let first_id = first.json["order_id"].as_str().unwrap();
    let stored = server.get_order(first_id, "C-1001").await;
    assert_eq!((stored.status, &stored.json["order_id"]), (200, &first.json["order_id"]));

    // The 202's key is as old, and kept: its retry is the same order.
    assert!(holds_key(&server, "pending-key"), "a key without its final answer was pruned");
    let retried = server.post_order(&pending_body, Some("pending-key")).await;
    assert_eq!((retried.status, &retried.bytes), (202, &pending.bytes), "the pending order's answer again");

    let metrics = send(server.request(reqwest::Method::GET, "/metrics")).await.text();
    let pruned_keys = metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"smartmart_retention_pruned_total{table="idempotency"} "#))
        .unwrap_or_else(|| panic!("no idempotency series in {metrics}"));
    assert!(pruned_keys.parse::<u64>().unwrap() >= 1, "{pruned_keys}");
    for table in ["outbox", "shadow_runs", "rollout_events"] {
        let series = format!("smartmart_retention_pruned_total{{table=\"{table}\"}} ");
        assert!(metrics.contains(&series), "every table's series from the start: {metrics}");
    }
    server.stop().await;
}

/// Gold loyalty with a shadow of itself at 12 %: one shadow run per order.
const SHADOWED: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }
shadow = { module = "gold_loyalty.wasm", config = { percent = "12" } }
"#;

/// One sample of the soak: when, what the load had written by then, and
/// the rows each pruned table held.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    orders: u64,
    rollout_events_written: u64,
    keys: i64,
    delivered: i64,
    undelivered: i64,
    /// Events delivered so far, pruned or not: every event ever written
    /// (the outbox's `AUTOINCREMENT` sequence) less those still undelivered.
    delivered_ever: i64,
    shadow_runs: i64,
    rollout_events: i64,
    order_rows: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_under_steady_load_keeps_every_pruned_table_bounded() {
    const WINDOW: Duration = Duration::from_secs(1);
    const BATCH: usize = 50;
    const RUN: Duration = Duration::from_secs(9);
    const EVERY: Duration = Duration::from_millis(500);
    let plugins = PluginDir::new(&[], SHADOWED);
    let engine = Arc::new(
        TestEngine::start_with(plugins.path(), |s| {
            s.retention = short_windows(WINDOW, BATCH);
            s.stage_timeout = Duration::from_secs(120);
        })
        .await,
    );
    plenty_of_stock(engine.engine.pipeline(), &["HDMI-2M"]).await;

    // Steady load: one client placing orders one after another (each with
    // its own key), and a reload's worth of rollout events every 10 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let orders = Arc::new(AtomicU64::new(0));
    let rollouts = Arc::new(AtomicU64::new(0));
    let client = {
        let (engine, stop, orders) = (engine.clone(), stop.clone(), orders.clone());
        tokio::spawn(async move {
            // The demo data set's active customers (C-1004 is BLOCKED).
            let customers = ["C-1001", "C-1002", "C-1003", "C-1005"];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let customer = customers[(n % 4) as usize];
                engine.fill_cart(customer, &[("HDMI-2M", 1)]).await;
                let mut request = order_request(customer, "tok_ok", None);
                request.idempotency = Some((format!("soak-{n}"), format!("hash-{n}")));
                let placed = engine.engine.pipeline().place_order(request).await;
                assert!(placed.is_ok(), "order {n}: {:?}", placed.err());
                n += 1;
                orders.store(n, Ordering::Relaxed);
            }
        })
    };
    let reloads = {
        let (engine, stop, rollouts) = (engine.clone(), stop.clone(), rollouts.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let event = RolloutEvent {
                    at_ms: smartmart::test_support::now_ms(),
                    kind: "reload".parse().unwrap(),
                    entry: format!("soak[{n}]"),
                    reason: "soak".into(),
                };
                engine.engine.store().record_rollout_event(event).await.expect("recording a rollout event");
                n += 1;
                rollouts.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    println!(
        "   t  orders  keys  delivered  undelivered  shadow_runs  rollout_events  (orders kept, rollout events written)"
    );
    while started.elapsed() < RUN {
        tokio::time::sleep(EVERY).await;
        let (orders, rollout_events_written) = (orders.load(Ordering::Relaxed), rollouts.load(Ordering::Relaxed));
        let sample = engine
            .query(move |c| {
                // One read transaction: every count from one snapshot.
                let tx = c.transaction()?;
                let count = |sql: &str| tx.query_row(sql, [], |r| r.get::<_, i64>(0));
                let undelivered = count("SELECT count(*) FROM outbox WHERE state <> 'DELIVERED'")?;
                let written = count("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'")?;
                Ok(Sample {
                    at: started.elapsed(),
                    orders,
                    rollout_events_written,
                    keys: count("SELECT count(*) FROM idempotency")?,
                    delivered: count("SELECT count(*) FROM outbox WHERE state = 'DELIVERED'")?,
                    undelivered,
                    delivered_ever: written - undelivered,
                    shadow_runs: count("SELECT count(*) FROM shadow_runs")?,
                    rollout_events: count("SELECT count(*) FROM rollout_events")?,
                    order_rows: count("SELECT count(*) FROM orders")?,
                })
            })
            .await;
        println!(
            "{:>4.1}s {:>7} {:>5} {:>10} {:>12} {:>12} {:>15}  ({}, {})",
            sample.at.as_secs_f64(),
            sample.orders,
            sample.keys,
            sample.delivered,
            sample.undelivered,
            sample.shadow_runs,
            sample.rollout_events,
            sample.order_rows,
            sample.rollout_events_written,
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    client.await.expect("the order client");
    reloads.await.expect("the rollout writer");

    // A table holds what was written within its window, plus what aged
    // past it since the last pass, plus a batch a pass is in the middle of.
    // Slack over the window: a pass every 100 ms (later on two busy
    // cores), a key's whole-second cutoff (up to 2 s late, see
    // store::retention::text_cutoff), an event's delivery after its order.
    // Each sample is checked against what the load wrote since the last
    // sample at least window + slack earlier (so at least all of that
    // span); the margin of a batch also covers the order or two placed
    // between a sample's count of orders and its read of the tables.
    let slack = Duration::from_secs(3);
    let mut checked = 0;
    for (i, sample) in samples.iter().enumerate() {
        let Some(earlier) = samples[..i].iter().rev().find(|e| e.at + WINDOW + slack <= sample.at) else {
            continue;
        };
        let orders = (sample.orders - earlier.orders) as i64;
        let events = (sample.rollout_events_written - earlier.rollout_events_written) as i64;
        let batch = BATCH as i64;
        let at = sample.at.as_secs_f64();
        assert!(sample.keys <= orders + batch, "{at:.1}s: {} keys, bound {orders} + {batch}", sample.keys);
        // Events: what was delivered within the span (a fraud event goes
        // out after its verdict, later than its order's answer).
        let delivered = sample.delivered_ever - earlier.delivered_ever;
        assert!(
            sample.delivered <= delivered + batch,
            "{at:.1}s: {} delivered events, bound {delivered} + {batch}",
            sample.delivered
        );
        assert!(
            sample.shadow_runs <= orders + batch,
            "{at:.1}s: {} shadow runs, bound {orders} + {batch}",
            sample.shadow_runs
        );
        assert!(
            sample.rollout_events <= events + batch,
            "{at:.1}s: {} rollout events, bound {events} + {batch}",
            sample.rollout_events
        );
        checked += 1;
    }
    assert!(checked >= 4, "too few samples past the warm-up: {checked} of {}", samples.len());
    let last = samples.last().copied().expect("samples");
    // Pruning is what kept them there: more was written than is held…
    assert!(last.orders as i64 > last.keys && last.rollout_events_written as i64 > last.rollout_events, "{last:?}");
    // …and every order is kept.
    let placed = orders.load(Ordering::Relaxed) as i64;
    let order_rows = engine.query(|c| c.query_row("SELECT count(*) FROM orders", [], |r| r.get::<_, i64>(0))).await;
    assert_eq!(order_rows, placed, "orders are never pruned");
    let metrics = engine.engine.metrics().render();
    for table in ["idempotency", "outbox", "shadow_runs", "rollout_events"] {
        let pruned = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("smartmart_retention_pruned_total{{table=\"{table}\"}} ")))
            .unwrap_or_else(|| panic!("no {table} series"));
        println!("pruned from {table}: {pruned}");
        assert!(pruned.parse::<u64>().unwrap() > 0, "nothing pruned from {table}");
    }
}
