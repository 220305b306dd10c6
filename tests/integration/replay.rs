//! `smartmart rules replay`: the real binary on a data dir whose orders were
//! placed through the engine with the bundled rules, while that engine still
//! runs: discount rules, a fraud check and warehouse selectors.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cli::{path_str, smartmart_in, text};
use crate::support::{TestEngine, bundled_plugins, wasm};

/// Runs `smartmart rules replay ARGS` on `data_dir` with the bundled manifest,
/// off the async threads (the engine keeps running meanwhile).
async fn replay(data_dir: &Path, args: &[&str]) -> Output {
    let plugins = bundled_plugins();
    let mut all: Vec<String> = vec!["rules".into(), "replay".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--plugins-dir".into(), path_str(&plugins).to_string()]);
    all.extend(["--data-dir".into(), path_str(data_dir).to_string()]);
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        smartmart_in(&data_dir, &args)
    })
    .await
    .expect("the replay task")
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("replay --json printed no JSON ({e}): {}{}", text(&output.stdout), text(&output.stderr))
    })
}

/// sha256 of the database file and of its WAL (absent = empty).
fn database_hash(data_dir: &Path) -> String {
    let mut hasher = Sha256::new();
    let database = std::fs::read(data_dir.join("smartmart.sqlite")).expect("reading the database");
    assert!(!database.is_empty());
    hasher.update(&database);
    hasher.update([0]);
    hasher.update(std::fs::read(data_dir.join("smartmart.sqlite-wal")).unwrap_or_default());
    hex::encode(hasher.finalize())
}

/// Row counts of every table the engine writes.
async fn row_counts(engine: &TestEngine) -> Vec<(String, i64)> {
    engine
        .query(|c| {
            let tables: Vec<String> = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tables
                .into_iter()
                .map(|t| {
                    let n: i64 = c.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))?;
                    Ok((t, n))
                })
                .collect()
        })
        .await
}

/// The stored invoices of settled orders, by order id: what the test
/// computes its expectations from, by its own SQL.
async fn stored_invoices(engine: &TestEngine) -> BTreeMap<String, Value> {
    let rows: Vec<(String, String)> = engine
        .query(|c| {
            c.prepare("SELECT id, invoice FROM orders WHERE status IN ('CONFIRMED', 'PAYMENT_FAILED')")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await;
    rows.into_iter().map(|(id, invoice)| (id, serde_json::from_str(&invoice).expect("a stored invoice"))).collect()
}

/// What the invoice's lines from `module` took off, in cents.
fn granted_by(invoice: &Value, module: &str) -> u64 {
    invoice["discounts"]
        .as_array()
        .expect("discounts")
        .iter()
        .filter(|l| l["module"] == module)
        .map(|l| l["amount_cents"].as_u64().expect("amount_cents"))
        .sum()
}

/// Places the test's orders: GOLD, SILVER and STANDARD customers, both
/// coupons, a failed payment, and two orders with a line of quantity ≥ 5.
/// Returns the ids of the bulk orders.
async fn place_orders(engine: &TestEngine) -> Vec<String> {
    let mut bulk = Vec::new();
    type Order<'a> = (&'a str, &'a [(&'a str, u32)], &'a str, Option<&'a str>);
    let orders: [Order<'_>; 6] = [
        ("C-1001", &[("TV-55-OLED", 1)], "tok_ok", None),
        ("C-1001", &[("HDMI-2M", 5), ("WALL-MOUNT-55", 1)], "tok_ok", Some("WELCOME10")),
        ("C-1002", &[("PHONE-X12", 1)], "tok_ok", Some("FLAT500")),
        ("C-1003", &[("MOUSE-WIRELESS", 6)], "tok_ok", None),
        ("C-1005", &[("LAPTOP-AIR-13", 1)], "tok_decline", Some("FLAT500")),
        ("C-1005", &[("TABLET-11", 2)], "tok_ok", Some("WELCOME10")),
    ];
    for (customer, items, token, coupon) in orders {
        let id = match engine.order(customer, items, token, coupon).await {
            Ok(placed) => placed.invoice.order_id.clone(),
            Err(smartmart::pipeline::OrderError::PaymentFailed { order, .. }) if token == "tok_decline" => {
                order.order_id.clone()
            }
            Err(e) => panic!("placing an order for {customer}: {e:?}"),
        };
        if items.iter().any(|(_, q)| *q >= 5) {
            bulk.push(id);
        }
    }
    // Fraud reviews stored, events delivered: nothing left for the engine to write.
    engine.drain().await;
    bulk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_compares_candidates_on_the_stored_orders_of_a_running_engine_without_writing() {
    let engine = TestEngine::start().await;
    let bulk = place_orders(&engine).await;
    let dir = engine.data_dir().to_owned();
    let invoices = stored_invoices(&engine).await;
    assert_eq!(invoices.len(), 6, "six settled orders");
    // The engine's checkpoint thread copies committed pages from the WAL into
    // the database file in the background; finish that copy now, so that the
    // files stand still unless something writes.
    // The engine's own checkpoint may hold the lock at that moment (busy):
    // then try again once it is done.
    let conn = rusqlite::Connection::open(dir.join("smartmart.sqlite")).expect("opening the database");
    let mut attempts = 0;
    loop {
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("checkpointing the WAL");
        attempts += 1;
        if busy == 0 {
            break;
        }
        assert!(attempts < 100, "a checkpoint could not run in {attempts} attempts");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(conn);
    let hash_before = database_hash(&dir);
    let rows_before = row_counts(&engine).await;

    // (a) Each bundled discount rule replayed against itself: no difference.
    for module in ["gold_loyalty.wasm", "coupons.wasm"] {
        let candidate = bundled_plugins().join(module);
        let out = replay(&dir, &[path_str(&candidate), "--replace", module, "--last", "10", "--json"]).await;
        assert_eq!(out.status.code(), Some(0), "{module}: {}", text(&out.stderr));
        let report = json_of(&out);
        assert_eq!(report["summary"]["orders"], 6, "{module}");
        assert_eq!(report["summary"]["replayed"], 6, "{module}");
        assert_eq!(report["summary"]["same"], 6, "{module}: {report:#}");
        assert_eq!(report["summary"]["difference_cents"]["USD"], 0, "{module}");
        // The input at the place of each rule: the subtotal less what the
        // rules before it took (gold-loyalty comes first in the manifest).
        for order in report["orders"].as_array().expect("orders") {
            let invoice = &invoices[order["order_id"].as_str().expect("order_id")];
            let subtotal = invoice["subtotal_cents"].as_u64().expect("subtotal");
            let before = if module == "coupons.wasm" { granted_by(invoice, "gold_loyalty.wasm") } else { 0 };
            assert_eq!(order["input_payable_cents"], subtotal - before, "{module}: {order:#}");
            assert_eq!(order["active"]["discount_cents"], granted_by(invoice, module), "{module}: {order:#}");
        }
    }
    // The coupons did grant something on these orders (the comparison above is not 0 = 0).
    assert!(invoices.values().filter(|i| granted_by(i, "coupons.wasm") > 0).count() >= 3);

    // (b) gold-loyalty at 15 % instead of 10 %: the exact difference, from the invoices.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (id, invoice) in &invoices {
        let subtotal = invoice["subtotal_cents"].as_u64().expect("subtotal");
        let fifteen = if invoice["customer"]["tier"] == "GOLD" { subtotal * 15 / 100 } else { 0 };
        expected.insert(id.clone(), fifteen as i64 - granted_by(invoice, "gold_loyalty.wasm") as i64);
    }
    let total: i64 = expected.values().sum();
    assert!(total > 0, "GOLD orders exist, so 15 % gives more: {expected:?}");
    let gold = bundled_plugins().join("gold_loyalty.wasm");
    let args = [path_str(&gold), "--replace", "gold_loyalty", "--config", "percent=15", "--last", "6"];
    let out = replay(&dir, &[&args[..], &["--json"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = json_of(&out);
    let got: BTreeMap<String, i64> = report["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| (o["order_id"].as_str().unwrap().to_string(), o["difference_cents"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(report["summary"]["difference_cents"]["USD"], total);
    // The text says the sign: positive, customers pay less.
    let out = replay(&dir, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let money = format!("+{total} = customers pay {}.{:02} USD less with the candidate", total / 100, total % 100);
    assert!(printed.contains(&money), "{money:?} missing from:\n{printed}");
    for line in ["p50", "fuel", "memory", "wall time"] {
        assert!(printed.contains(line), "{line} missing from:\n{printed}");
    }
    // --last 2 takes the two newest orders only.
    let out = replay(&dir, &[path_str(&gold), "--replace", "gold_loyalty", "--last", "2", "--json"]).await;
    assert_eq!(json_of(&out)["summary"]["orders"], 2);

    // (c) The rule that traps on a line of quantity ≥ 5: exit 2, the bulk
    // orders named with the trap and its message, escaped.
    let hostile = wasm("hostile_bulk");
    let out = replay(&dir, &[path_str(&hostile), "--replace", "gold_loyalty.wasm", "--last", "10"]).await;
    assert_eq!(out.status.code(), Some(2), "stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    let printed = text(&out.stdout);
    for id in &bulk {
        let line =
            printed.lines().find(|l| l.starts_with(id.as_str())).unwrap_or_else(|| panic!("{id} in:\n{printed}"));
        assert!(line.contains("FAILED trap:"), "{line}");
        assert!(line.contains("is over 4\\nbulk pricing (marker BULK-MARKER-3d7a)"), "escaped message: {line}");
    }
    assert!(!printed.lines().any(|l| l.starts_with("bulk pricing")), "a raw newline reached the output:\n{printed}");
    // Newest first, as the orders are listed.
    let newest_first: Vec<&str> = bulk.iter().rev().map(String::as_str).collect();
    assert!(printed.contains(&format!("failed on: {}", newest_first.join(", "))), "{printed}");
    let out = replay(&dir, &[path_str(&hostile), "--replace", "gold_loyalty.wasm", "--last", "10", "--json"]).await;
    assert_eq!(out.status.code(), Some(2));
    let report = json_of(&out);
    let mut failed: Vec<String> = report["summary"]["failed_orders"]
        .as_array()
        .expect("failed_orders")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    failed.sort();
    let mut want = bulk.clone();
    want.sort();
    assert_eq!(failed, want);
    let trapped =
        report["orders"].as_array().unwrap().iter().find(|o| o["outcome"] == "failed").expect("a failed order");
    assert_eq!(trapped["failure"]["kind"], "trap");
    // The other orders: 10 % for GOLD, as gold-loyalty granted.
    assert_eq!(report["summary"]["same"], 4, "{report:#}");

    // (c2) Warehouse selectors, on the candidates each order saw (kept with
    // it): the bundled selector plans what every order holds; the selector
    // that allocates one unit too many of a line of quantity ≥ 5 breaks the
    // bulk orders, named, its plan refused as the service refuses it.
    let nearest = bundled_plugins().join("nearest_warehouse.wasm");
    let out = replay(&dir, &[path_str(&nearest), "--last", "10", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = json_of(&out);
    assert_eq!(report["slot"], "warehouse", "{report:#}");
    assert_eq!((&report["summary"]["replayed"], &report["summary"]["same"]), (&6.into(), &6.into()), "{report:#}");
    let selector = wasm("hostile_selector");
    let out = replay(&dir, &[path_str(&selector), "--replace", "nearest_warehouse", "--last", "10"]).await;
    assert_eq!(out.status.code(), Some(2), "stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    let printed = text(&out.stdout);
    for id in &bulk {
        let line =
            printed.lines().find(|l| l.starts_with(id.as_str())).unwrap_or_else(|| panic!("{id} in:\n{printed}"));
        assert!(line.contains("FAILED invalid_plan: ") && line.contains(" allocated, "), "{line}");
    }
    assert!(printed.contains(&format!("failed on: {}", newest_first.join(", "))), "{printed}");
    assert!(printed.contains("6 orders, 6 replayed"), "{printed}");

    // A new rule at position 2 (between gold-loyalty and coupons): its input
    // is what gold-loyalty left, its active result 0. coupons.wasm without
    // its codes configured refuses every coupon: those orders are refused,
    // which is not a failure of the rule.
    let coupons = bundled_plugins().join("coupons.wasm");
    let out = replay(&dir, &[path_str(&coupons), "--slot-position", "2", "--last", "10", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = json_of(&out);
    assert_eq!(report["position"], 2);
    for order in report["orders"].as_array().expect("orders") {
        let invoice = &invoices[order["order_id"].as_str().expect("order_id")];
        let subtotal = invoice["subtotal_cents"].as_u64().expect("subtotal");
        assert_eq!(order["input_payable_cents"], subtotal - granted_by(invoice, "gold_loyalty.wasm"), "{order:#}");
        let has_coupon = invoice.get("coupon_code").is_some_and(|c| !c.is_null());
        assert_eq!(order["outcome"], if has_coupon { "refused" } else { "same" }, "{order:#}");
    }

    // A fraud check replayed against itself agrees with the stored reviews.
    let high_value = bundled_plugins().join("high_value.wasm");
    let out = replay(&dir, &[path_str(&high_value), "--replace", "high_value.wasm", "--last", "10", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["summary"]["same"], 6);

    // (d) All of that ran beside the running engine and wrote nothing.
    assert_eq!(database_hash(&dir), hash_before, "the database or its WAL changed");
    assert_eq!(row_counts(&engine).await, rows_before);
    // The engine still takes orders on the same database.
    engine.order("C-1002", &[("TABLET-11", 1)], "tok_ok", None).await.expect("an order after the replays");
}

#[test]
fn replay_refuses_bad_input_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path();
    let plugins = bundled_plugins();
    let gold = plugins.join("gold_loyalty.wasm");
    let run = |args: &[&str]| {
        let mut all = vec!["rules", "replay"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--plugins-dir", path_str(&plugins), "--data-dir", path_str(data_dir)]);
        let out = smartmart_in(data_dir, &all);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out.stdout));
        assert!(out.stdout.is_empty(), "{args:?} printed a report: {}", text(&out.stdout));
        text(&out.stderr)
    };

    let missing = data_dir.join("absent.wasm");
    let err = run(&[path_str(&missing), "--last", "5"]);
    assert!(err.contains("absent.wasm"), "{err}");

    let garbage = data_dir.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm but not really a component").expect("writing garbage");
    let err = run(&[path_str(&garbage), "--last", "5"]);
    assert!(err.contains("not a SmartMart rule") && err.contains("garbage.wasm"), "{err}");

    let err = run(&[path_str(&gold), "--last", "0"]);
    assert!(err.contains("--last 0"), "{err}");

    let warehouse = plugins.join("nearest_warehouse.wasm");
    let err = run(&[path_str(&warehouse), "--slot-position", "1", "--last", "5"]);
    assert!(err.contains("holds one selector"), "{err}");

    let err = run(&[path_str(&gold), "--replace", "no_such_rule.wasm", "--last", "5"]);
    assert!(err.contains("no_such_rule.wasm") && err.contains("gold_loyalty.wasm, coupons.wasm"), "{err}");

    // No database in the data dir: said so, and none is created.
    let err = run(&[path_str(&gold), "--last", "5"]);
    assert!(err.contains("no database at"), "{err}");
    assert!(!data_dir.join("smartmart.sqlite").exists());

    // A database of another schema version is refused, not migrated.
    let db = data_dir.join("smartmart.sqlite");
    rusqlite::Connection::open(&db).and_then(|c| c.pragma_update(None, "user_version", 99)).expect("a future database");
    let err = run(&[path_str(&gold), "--last", "5"]);
    assert!(err.contains("schema version 99 is newer"), "{err}");
    let version: i64 = rusqlite::Connection::open(&db)
        .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
        .expect("reading the version");
    assert_eq!(version, 99);
}
