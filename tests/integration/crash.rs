//! Crash safety with a real child process: `smartmart soak` places orders
//! from several tasks and is killed with SIGKILL at a random moment, five
//! times in a row on the same data dir (so every start reconciles what the
//! previous one left). Then an engine started in this process reconciles
//! and drains once more, and the store, the gateway's ledger and the event
//! files must agree: nothing pending or held, stock exact, one charge per
//! confirmed order and none for any other, every event delivered, no
//! confirmed order lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use smartmart::app::{Dataset, Engine};
use smartmart::test_support::soak::{self, SoakOptions};

use crate::support::{bundled_plugins, demo_dataset};

const RUNS: usize = 5;

/// What the child printed before it died.
#[derive(Debug, Default)]
struct Printed {
    confirmed: Vec<String>,
    failed: Vec<String>,
    other: usize,
}

fn record(line: String, printed: &mut Printed) {
    match line.split_once(' ') {
        Some(("CONFIRMED", id)) => printed.confirmed.push(id.to_string()),
        Some(("FAILED", id)) => printed.failed.push(id.to_string()),
        _ => printed.other += 1,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Runs the soak child on `data_dir` until it is serving, lets it place
/// orders for `kill_after`, then SIGKILLs it. `Err` with its stderr if it
/// exited before it was serving.
fn soak_then_kill(data_dir: &Path, kill_after: Duration) -> Result<Printed, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smartmart"))
        .args(["soak", "--data-dir", path_str(data_dir)])
        .args(["--plugins-dir", path_str(&bundled_plugins())])
        .args(["--dataset", path_str(&demo_dataset())])
        .args(["--orders", "10000000", "--tasks", "4"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting smartmart soak");
    // Read both pipes on threads so that the child never blocks on a full pipe.
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout_reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut printed = Printed::default();
    // Start-up (reconciliation included) is not timed: wait for READY.
    let ready = loop {
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line == "READY" => break true,
            Ok(line) => record(line, &mut printed),
            Err(_) => break false,
        }
    };
    if !ready {
        let _ = child.kill();
        let status = child.wait();
        return Err(format!("soak never got READY ({status:?}): {}", stderr_reader.join().unwrap_or_default()));
    }
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reaping the child");
    stdout_reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap_or_default();
    for line in lines.try_iter() {
        record(line, &mut printed);
    }
    assert!(!status.success(), "the child was to be killed, not finish: {stderr}");
    Ok(printed)
}

/// The event ids in `<data_dir>/events/<kind>.jsonl`, one per line: every
/// line must parse (no torn line) and no id may appear twice.
pub(crate) fn event_ids_in_file(data_dir: &Path, kind: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(data_dir.join("events").join(format!("{kind}.jsonl"))).unwrap_or_default();
    let mut ids = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{kind}.jsonl line {}: torn or not JSON ({e}): {line}", n + 1));
        let id = event["id"].as_str().unwrap_or_else(|| panic!("{kind}.jsonl line {}: no id", n + 1)).to_string();
        assert!(ids.insert(id.clone()), "{kind}.jsonl holds event {id} twice");
    }
    assert!(text.is_empty() || text.ends_with('\n'), "{kind}.jsonl ends in a torn line");
    ids
}

fn query<T, P: rusqlite::Params>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: P,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    conn.prepare(sql).unwrap().query_map(params, row).unwrap().collect::<Result<_, _>>().unwrap()
}

#[test]
fn killing_the_process_mid_order_loses_nothing_and_charges_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let options = SoakOptions {
        data_dir: data_dir.clone(),
        plugins_dir: bundled_plugins(),
        dataset: demo_dataset(),
        orders: 0,
        tasks: 4,
    };

    let mut printed = Printed::default();
    for _ in 0..RUNS {
        let kill_after = Duration::from_millis(rand::random_range(200..=1500));
        // A start that fails outright is retried (twice): what is under
        // test is what a kill leaves behind, not start-up on a busy machine
        // (loading a rule calls it under a wall-clock budget).
        let run = (0..3)
            .map(|_| soak_then_kill(&data_dir, kill_after))
            .inspect(|attempt| {
                if let Err(e) = attempt {
                    eprintln!("retrying the soak start: {e}");
                }
            })
            .find_map(Result::ok)
            .expect("the soak child never started (see the retries above)");
        printed.confirmed.extend(run.confirmed);
        printed.failed.extend(run.failed);
        printed.other += run.other;
    }
    assert!(!printed.confirmed.is_empty(), "no order was confirmed in {RUNS} runs");

    // One more start, in this process: reconcile, review, deliver.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let charges = runtime.block_on(async {
        let engine = Engine::start(soak::settings(&options)).await.expect("restarting on the crashed data dir");
        engine.drain().await.expect("draining");
        let charges = engine.sandbox_charges().expect("sandbox gateway");
        engine.shutdown().await;
        charges
    });

    let conn = rusqlite::Connection::open(data_dir.join("smartmart.sqlite")).unwrap();

    // Every order ended: none PENDING.
    let orders: BTreeMap<String, (String, i64)> =
        query(&conn, "SELECT id, status, total_cents FROM orders", [], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
            .into_iter()
            .collect();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for (status, _) in orders.values() {
        *by_status.entry(status.as_str()).or_default() += 1;
    }
    eprintln!(
        "{RUNS} runs: {} orders in the store {by_status:?}; printed {} confirmed, {} failed, {} other",
        orders.len(),
        printed.confirmed.len(),
        printed.failed.len(),
        printed.other
    );
    for (id, (status, _)) in &orders {
        assert!(matches!(status.as_str(), "CONFIRMED" | "PAYMENT_FAILED" | "CANCELLED"), "{id} is {status}");
    }

    // No hold left; a confirmed order's units are all taken, any other's all given back.
    let held: i64 = conn.query_row(crate::support::HELD_HOLDS, [], |r| r.get(0)).unwrap();
    assert_eq!(held, 0);
    let with_holds =
        query(&conn, "SELECT id FROM orders WHERE json_array_length(holds) > 0", [], |r| r.get::<_, String>(0));
    let with_holds: BTreeSet<&str> = with_holds.iter().map(String::as_str).collect();
    for (id, (status, _)) in &orders {
        if status == "CONFIRMED" {
            assert!(with_holds.contains(id.as_str()), "confirmed order {id} took no stock");
        }
    }

    // Stock: on_hand = initial − committed units, nothing reserved.
    let dataset = Dataset::read(&demo_dataset()).unwrap();
    let initial: BTreeMap<(String, String), i64> = dataset
        .stock
        .iter()
        .map(|s| {
            let on_hand = if soak::SKUS.contains(&s.sku.as_str()) { soak::SKU_ON_HAND } else { s.on_hand };
            ((s.warehouse_id.clone(), s.sku.clone()), on_hand as i64)
        })
        .collect();
    let committed: HashMap<(String, String), i64> = query(
        &conn,
        "SELECT h.value ->> 0, h.value ->> 1, sum(h.value ->> 2) FROM orders o, json_each(o.holds) h
         WHERE o.status = 'CONFIRMED' GROUP BY 1, 2",
        [],
        |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)),
    )
    .into_iter()
    .collect();
    let stock: BTreeMap<(String, String), (i64, i64)> =
        query(&conn, "SELECT warehouse_id, sku, on_hand, reserved FROM stock", [], |r| {
            Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))
        })
        .into_iter()
        .collect();
    assert_eq!(stock.keys().collect::<Vec<_>>(), initial.keys().collect::<Vec<_>>());
    let mut units_taken = 0;
    for (key, (on_hand, reserved)) in &stock {
        let taken = committed.get(key).copied().unwrap_or(0);
        units_taken += taken;
        assert_eq!((*on_hand, *reserved), (initial[key] - taken, 0), "stock of {key:?}");
    }
    assert!(units_taken > 0);

    // The gateway's ledger: one charge per confirmed order, of its total,
    // with the transaction id the order recorded; none for any other order.
    let confirmed: BTreeSet<&str> =
        orders.iter().filter(|(_, (status, _))| status == "CONFIRMED").map(|(id, _)| id.as_str()).collect();
    let keys: Vec<&str> = charges.iter().map(|(key, _)| key.as_str()).collect();
    let charged: BTreeSet<&str> = keys.iter().map(|k| k.strip_prefix("pay_").expect("pay_<order id>")).collect();
    assert_eq!(charged.len(), keys.len(), "a key charged twice");
    assert_eq!(charged, confirmed, "charges and confirmed orders differ");
    let recorded: HashMap<String, Option<String>> =
        query(&conn, "SELECT order_id, transaction_id FROM payments WHERE status = 'CAPTURED'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .into_iter()
        .collect();
    for (key, charge) in &charges {
        let order_id = &key["pay_".len()..];
        assert_eq!(charge.amount_cents as i64, orders[order_id].1, "amount charged for {order_id}");
        assert_eq!(recorded.get(order_id), Some(&Some(charge.transaction_id.clone())), "{order_id}");
    }

    // Events: three per settled order, none for a cancelled one, all
    // delivered, each exactly once in the files.
    let outbox = query(&conn, "SELECT id, order_id, type, state FROM outbox", [], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
    });
    let mut kinds_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, order_id, kind, state) in &outbox {
        assert_eq!(state, "DELIVERED", "event {id} ({kind}) of {order_id}");
        kinds_of.entry(order_id.as_str()).or_default().push(kind.as_str());
    }
    for (id, (status, _)) in &orders {
        let mut kinds = kinds_of.remove(id.as_str()).unwrap_or_default();
        kinds.sort();
        let expected: &[&str] = if status == "CANCELLED" { &[] } else { &["analytics", "audit", "fraud"] };
        assert_eq!(kinds, expected, "events of {status} order {id}");
    }
    assert!(kinds_of.is_empty(), "events of unknown orders: {kinds_of:?}");
    for kind in ["audit", "analytics", "fraud"] {
        let in_file = event_ids_in_file(&data_dir, kind);
        let expected: BTreeSet<String> =
            outbox.iter().filter(|(_, _, k, _)| k == kind).map(|(id, ..)| id.clone()).collect();
        assert_eq!(in_file, expected, "{kind}.jsonl must hold each delivered {kind} event once");
    }

    // Nothing the child answered was lost.
    for id in &printed.confirmed {
        assert_eq!(orders.get(id).map(|(s, _)| s.as_str()), Some("CONFIRMED"), "printed CONFIRMED {id}");
    }
    for id in &printed.failed {
        assert_eq!(orders.get(id).map(|(s, _)| s.as_str()), Some("PAYMENT_FAILED"), "printed FAILED {id}");
    }
}

/// Start-up reconciliation takes every PENDING order, also one last touched
/// in the same second as the start: RFC 3339 text drops trailing zeros of
/// the fraction (`…:05Z` is earlier than `…:05.3Z`), so comparing the text
/// would miss it and leave its stock held.
#[tokio::test]
async fn reconciliation_sees_orders_touched_in_the_same_second() {
    use smartmart::store::orders::{Hold, NewOrder, ReserveOutcome};
    use smartmart::test_support::recovery::{self, RecoveryReport};

    let t = crate::support::TestEngine::start().await;
    let before = t.stock_in("WH-BLR", "TV-55-OLED").await;
    let order = NewOrder {
        order_id: "ord_interrupted".into(),
        customer_id: "C-1001".into(),
        channel: "web".into(),
        currency: "USD".into(),
        holds: vec![Hold { warehouse_id: "WH-BLR".into(), sku: "TV-55-OLED".into(), quantity: 1 }],
        claim: None,
        intent: None,
        selector_input: None,
    };
    let outcome = t.engine.store().reserve(order).await.unwrap();
    assert_eq!(outcome, ReserveOutcome::Reserved);
    assert_eq!(t.stock_in("WH-BLR", "TV-55-OLED").await.available, before.available - 1);
    // Last touched at the start of the current second, written as RFC 3339 writes it.
    t.query(|c| {
        c.execute(
            "UPDATE orders SET updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE id = 'ord_interrupted'",
            [],
        )
    })
    .await;

    let report = recovery::reconcile(t.engine.pipeline(), Duration::ZERO).await.unwrap();
    assert_eq!(report, RecoveryReport { cancelled: 1, ..RecoveryReport::default() });
    // Cleanly undone: never answered, nothing charged, so nothing is kept.
    let rows: i64 =
        t.query(|c| c.query_row("SELECT count(*) FROM orders WHERE id = 'ord_interrupted'", [], |r| r.get(0))).await;
    assert_eq!(rows, 0);
    assert_eq!(t.held_reservations().await, 0);
    let after = t.stock_in("WH-BLR", "TV-55-OLED").await;
    assert_eq!((after.on_hand, after.available), (before.on_hand, before.available));
    t.engine.shutdown().await;
}
