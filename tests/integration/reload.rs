//! Hot reload of the plug-in directory with real components and a real
//! watcher: a module swapped 50 times under a steady flow of orders, broken
//! modules dropped in (refused, the old set keeps serving, the error is
//! shown), a module written slowly in place, and module signatures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use smartmart::app::Engine;
use smartmart::domain::invoice::{Invoice, InvoiceDiscount};
use smartmart::pipeline::{OrderError, Pipeline};
use smartmart::test_support::signing;

use crate::support::plugin_dir::{
    PluginDir, discount_identity, guest_bytes, guest_digest, order_on, plenty_of_stock, reload_status,
    wait_for_refusal, wait_for_served, wait_until, write_slowly,
};
use crate::support::server::{TestServer, send};
use crate::support::{TestEngine, engine_settings};

/// Gold loyalty, then the flat discount of whichever version `flat.wasm` holds.
const FLAT_MANIFEST: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }

[[discount]]
module = "flat.wasm"
budgets = { time_ms = 10000 }
"#;

/// Index of `flat.wasm` in the discount slot of [`FLAT_MANIFEST`].
const FLAT: usize = 1;

/// A customer placing orders in a loop: (id, tier, cart as (sku, quantity)).
type Shopper = (&'static str, &'static str, &'static [(&'static str, u32)]);

/// GOLD customers get gold loyalty and the flat discount, the others the
/// flat discount only.
const SHOPPERS: [Shopper; 4] = [
    ("C-1001", "GOLD", &[("TV-55-OLED", 1)]),
    ("C-1002", "SILVER", &[("HDMI-2M", 2)]),
    ("C-1005", "GOLD", &[("HDMI-2M", 1), ("MOUSE-WIRELESS", 1)]),
    ("C-1003", "STANDARD", &[("MOUSE-WIRELESS", 3)]),
];

/// A flat-discount version as an invoice must show it, whole.
#[derive(Debug, Clone)]
struct Flat {
    guest: &'static str,
    version: &'static str,
    amount_cents: u64,
    description: &'static str,
    digest: String,
}

fn flat(guest: &'static str) -> Flat {
    let (version, amount_cents, description) = match guest {
        "discount_v1" => ("1.0.0", 100, "Flat v1"),
        "discount_v2" => ("2.0.0", 250, "Flat v2"),
        other => panic!("not a flat discount: {other}"),
    };
    Flat { guest, version, amount_cents, description, digest: guest_digest(guest) }
}

/// The plug-in dir of [`FLAT_MANIFEST`] with `flat.wasm` = `initial`.
fn flat_plugins(initial: &Flat) -> PluginDir {
    PluginDir::new(&[(initial.guest, "flat.wasm")], FLAT_MANIFEST)
}

/// Checks that `invoice` was served by exactly one complete flat-discount
/// version (every field of its line from the same module) and returns it.
#[track_caller]
fn served_version(invoice: &Invoice, tier: &str, versions: &[Flat]) -> String {
    let flat_lines: Vec<&InvoiceDiscount> = invoice.discounts.iter().filter(|d| d.rule == "flat-discount").collect();
    assert_eq!(flat_lines.len(), 1, "one flat-discount line: {:#?}", invoice.discounts);
    let line = flat_lines[0];
    let version = versions
        .iter()
        .find(|v| v.version == line.version)
        .unwrap_or_else(|| panic!("an unknown version served {}: {line:#?}", invoice.order_id));
    assert_eq!(
        (line.module.as_str(), line.amount_cents, line.description.as_str(), line.digest.as_str()),
        ("flat.wasm", version.amount_cents, version.description, version.digest.as_str()),
        "{}: a line mixing versions: {line:#?}",
        invoice.order_id
    );
    assert_eq!(line.variant, None);
    assert!(line.reasons.contains(&format!("version={}", version.version)), "{line:#?}");
    let gold_lines = invoice.discounts.iter().filter(|d| d.rule == "gold-loyalty").count();
    assert_eq!(gold_lines, usize::from(tier == "GOLD"), "{tier}: {:#?}", invoice.discounts);
    assert_eq!(invoice.discount_cents, invoice.discounts.iter().map(|d| d.amount_cents).sum::<u64>());
    assert_eq!(invoice.total_cents, invoice.subtotal_cents - invoice.discount_cents);
    assert_eq!(invoice.status, "CONFIRMED");
    line.version.clone()
}

/// What the order loops saw.
#[derive(Default)]
struct Outcomes {
    invoices: Vec<(&'static str, Invoice)>,
    failures: Vec<(&'static str, OrderError)>,
}

/// One task per shopper placing orders back to back until `stop`.
fn order_loops(
    pipeline: &Pipeline,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Outcomes>> {
    SHOPPERS
        .iter()
        .map(|&(customer, tier, cart)| {
            let (pipeline, stop, done) = (pipeline.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut outcomes = Outcomes::default();
                while !stop.load(Ordering::Relaxed) {
                    match order_on(&pipeline, customer, cart).await {
                        Ok(placed) => outcomes.invoices.push((tier, placed.invoice)),
                        Err(e) => outcomes.failures.push((customer, e)),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                outcomes
            })
        })
        .collect()
}

async fn stop_loops(stop: &AtomicBool, loops: Vec<tokio::task::JoinHandle<Outcomes>>) -> Outcomes {
    stop.store(true, Ordering::Relaxed);
    let mut all = Outcomes::default();
    for task in loops {
        let outcomes = task.await.expect("an order loop");
        all.invoices.extend(outcomes.invoices);
        all.failures.extend(outcomes.failures);
    }
    all
}

/// An engine on `plugins` with the shoppers' skus plentiful and a stage
/// timeout no slow shared machine reaches.
async fn flat_engine(plugins: &PluginDir) -> TestEngine {
    let t = TestEngine::start_with(plugins.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    plenty_of_stock(t.engine.pipeline(), &["TV-55-OLED", "HDMI-2M", "MOUSE-WIRELESS"]).await;
    t
}

// ---------------------------------------------------------------------------
// Swaps under load
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_fail_no_order_and_every_invoice_is_one_whole_version() {
    const SWAPS: usize = 50;
    let versions = [flat("discount_v1"), flat("discount_v2")];
    let bytes = [guest_bytes("discount_v1"), guest_bytes("discount_v2")];
    let plugins = flat_plugins(&versions[0]);
    let t = flat_engine(&plugins).await;
    let engine = &t.engine;
    assert_eq!(discount_identity(engine, FLAT).digest, versions[0].digest);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let loops = order_loops(engine.pipeline(), &stop, &done);
    for swap in 1..=SWAPS {
        let next = swap % 2;
        let reloads_before = reload_status(engine).reloads;
        let orders_before = done.load(Ordering::Relaxed);
        plugins.replace("flat.wasm", &bytes[next]);
        wait_for_served(engine, reloads_before, FLAT, &versions[next].digest).await;
        // Let some orders through on this version before the next swap.
        wait_until("orders flow between swaps", || done.load(Ordering::Relaxed) >= orders_before + 2).await;
    }
    let outcomes = stop_loops(&stop, loops).await;

    assert!(outcomes.failures.is_empty(), "failed orders during the swaps: {:#?}", outcomes.failures);
    let mut served = [0usize; 2];
    for (tier, invoice) in &outcomes.invoices {
        let version = served_version(invoice, tier, &versions);
        served[usize::from(version == "2.0.0")] += 1;
    }
    assert!(served[0] > 0 && served[1] > 0, "both versions served: {served:?}");
    let status = reload_status(engine);
    assert!(status.reloads >= SWAPS as u64, "{status:?}");
    assert!(status.errors.is_empty(), "{status:?}");
    eprintln!(
        "{} orders across {SWAPS} swaps: {} on v1, {} on v2; {} reloads, {} refused",
        outcomes.invoices.len(),
        served[0],
        served[1],
        status.reloads,
        status.refused
    );
}

/// On a current-thread runtime the watcher task cannot run before the test
/// yields: a module landing the moment `Engine::start` returns must still
/// be noticed (the watch is installed before the first load).
#[tokio::test(flavor = "current_thread")]
async fn a_module_landing_right_after_start_is_not_missed() {
    let versions = [flat("discount_v1"), flat("discount_v2")];
    let plugins = flat_plugins(&versions[0]);
    let data = tempfile::tempdir().unwrap();
    let engine = Engine::start(engine_settings(data.path(), plugins.path())).await.expect("starting");
    plugins.replace("flat.wasm", &guest_bytes("discount_v2"));
    wait_for_served(&engine, 0, FLAT, &versions[1].digest).await;
    engine.shutdown().await;
}

// ---------------------------------------------------------------------------
// Broken modules
// ---------------------------------------------------------------------------

/// The `errors` of `GET /v1/admin/plugins` and the flat rule it lists.
async fn admin_plugins(server: &TestServer) -> (Vec<Value>, Value) {
    let answer = send(server.admin(Method::GET, "/v1/admin/plugins")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let errors = answer.json["errors"].as_array().expect("an errors array").clone();
    let plugins = answer.json["plugins"].as_array().expect("a plugins array");
    let flat = plugins.iter().find(|p| p["file"] == "flat.wasm").expect("flat.wasm is listed").clone();
    (errors, flat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_modules_are_refused_the_old_set_keeps_serving_and_the_error_is_shown() {
    let versions = [flat("discount_v1"), flat("discount_v2")];
    let good = [guest_bytes("discount_v1"), guest_bytes("discount_v2")];
    let plugins = flat_plugins(&versions[0]);
    let server = TestServer::start_with(plugins.path(), |s| s.stage_timeout = Duration::from_secs(120)).await;
    let engine = &server.engine;
    plenty_of_stock(engine.pipeline(), &["TV-55-OLED"]).await;

    let mut garbage = b"\0asm\x0d\0\x01\0".to_vec();
    garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    // (what is dropped in, its bytes, what the refusal must say)
    let broken: [(&str, Vec<u8>, &[&str]); 4] = [
        ("garbage bytes", garbage, &["not usable as a `smartmart:rules/discount-rule@0.1.0` rule"]),
        ("a command component", guest_bytes("command"), &["does not implement world"]),
        ("a rule that always errs", guest_bytes("error_rule"), &["smoke test", "deliberate failure"]),
        ("a rule that panics", guest_bytes("hostile_panic"), &["smoke test", "trapped"]),
    ];
    let mut current = 0;
    for (what, bytes, says) in broken {
        let before = reload_status(engine);
        plugins.replace("flat.wasm", &bytes);
        let status = wait_for_refusal(engine, before.refused).await;

        // Refused, named, and kept for the operators.
        let error = status.errors.last().expect("the refusal is recorded");
        assert_eq!(error.file, "flat.wasm", "{what}: {error:?}");
        for fragment in says {
            assert!(error.error.contains(fragment), "{what}: {fragment:?} not in {:?}", error.error);
        }
        assert_eq!(status.reloads, before.reloads, "{what}");

        // The old set keeps serving.
        assert_eq!(discount_identity(engine, FLAT).digest, versions[current].digest, "{what}");
        let invoice = order_on(engine.pipeline(), "C-1001", &[("TV-55-OLED", 1)])
            .await
            .unwrap_or_else(|e| panic!("an order after {what} was dropped in: {e:?}"));
        assert_eq!(served_version(&invoice, "GOLD", &versions), versions[current].version, "{what}");

        // GET /v1/admin/plugins shows the error and the set still serving.
        let (errors, listed) = admin_plugins(&server).await;
        let shown = errors.last().expect("the refusal is listed");
        assert_eq!(shown["file"], "flat.wasm", "{what}: {errors:?}");
        assert_eq!(shown["error"], error.error.as_str(), "{what}");
        assert!(shown["at"].as_str().is_some_and(|at| !at.is_empty()), "{shown}");
        assert_eq!(listed["version"], versions[current].version, "{what}: {listed}");
        assert_eq!(listed["digest"], versions[current].digest.as_str(), "{what}: {listed}");

        // A good file back: reloaded, errors cleared, the new one serves.
        current = 1 - current;
        plugins.replace("flat.wasm", &good[current]);
        wait_for_served(engine, status.reloads, FLAT, &versions[current].digest).await;
        assert!(reload_status(engine).errors.is_empty(), "{what}: {:?}", reload_status(engine));
        let (errors, listed) = admin_plugins(&server).await;
        assert!(errors.is_empty(), "{what}: {errors:?}");
        assert_eq!(listed["version"], versions[current].version, "{what}: {listed}");
        let invoice =
            order_on(engine.pipeline(), "C-1001", &[("TV-55-OLED", 1)]).await.expect("an order after the fix");
        assert_eq!(served_version(&invoice, "GOLD", &versions), versions[current].version, "after {what}");
    }
    assert!(reload_status(engine).refused >= 4, "{:?}", reload_status(engine));
}

// ---------------------------------------------------------------------------
// A slow writer
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_written_slowly_in_place_never_serves_half_a_file() {
    let versions = [flat("discount_v1"), flat("discount_v2")];
    let plugins = flat_plugins(&versions[0]);
    let t = flat_engine(&plugins).await;
    let engine = &t.engine;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let loops = order_loops(engine.pipeline(), &stop, &done);
    wait_until("orders flow", || done.load(Ordering::Relaxed) >= 4).await;

    // discount_v2.wasm (~58 KiB) in 4 KiB chunks, 70 ms apart: about one second.
    let reloads_before = reload_status(engine).reloads;
    let orders_before = done.load(Ordering::Relaxed);
    let target = plugins.file("flat.wasm");
    let bytes = guest_bytes("discount_v2");
    tokio::task::spawn_blocking(move || write_slowly(&target, &bytes, 4096, Duration::from_millis(70)))
        .await
        .expect("the slow writer");
    let during = done.load(Ordering::Relaxed) - orders_before;
    wait_for_served(engine, reloads_before, FLAT, &versions[1].digest).await;
    let after_swap = done.load(Ordering::Relaxed);
    wait_until("orders on the new version", || done.load(Ordering::Relaxed) >= after_swap + 4).await;
    let outcomes = stop_loops(&stop, loops).await;

    assert!(outcomes.failures.is_empty(), "failed orders: {:#?}", outcomes.failures);
    assert!(during > 0, "orders were placed while the file was half written");
    let served: Vec<String> = outcomes.invoices.iter().map(|(tier, i)| served_version(i, tier, &versions)).collect();
    assert!(served.iter().any(|v| v == "1.0.0"), "the old version served meanwhile");
    assert!(served.iter().any(|v| v == "2.0.0"), "the new version served once written");
    let invoice = order_on(engine.pipeline(), "C-1001", &[("TV-55-OLED", 1)]).await.expect("an order afterwards");
    assert_eq!(served_version(&invoice, "GOLD", &versions), "2.0.0");
    let status = reload_status(engine);
    eprintln!("slow writer: {during} orders during the write; {} reloads, {} refused", status.reloads, status.refused);
}

// ---------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------

/// A fresh ed25519 key in `dir/name`: (secret key file, public key).
fn keypair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, ed25519_dalek::VerifyingKey) {
    let file = dir.join(name);
    let public = signing::keygen(&file).expect("generating a key");
    let bytes: [u8; 32] = hex::decode(public).expect("hex").try_into().expect("32 bytes");
    (file, ed25519_dalek::VerifyingKey::from_bytes(&bytes).expect("a valid public key"))
}

const MODULES: [&str; 4] = ["gold_loyalty.wasm", "flat.wasm", "nearest_warehouse.wasm", "high_value.wasm"];

fn sign(plugins: &PluginDir, file: &str, key: &std::path::Path) {
    signing::sign_file(&plugins.file(file), key).unwrap_or_else(|e| panic!("signing {file}: {e}"));
}

/// Flips the last hex digit of `<file>.sig`.
fn tamper(plugins: &PluginDir, file: &str) {
    let path = plugins.file(&format!("{file}.sig"));
    let mut text = std::fs::read_to_string(&path).expect("reading the signature");
    let last = text.pop().expect("a signature");
    text.push(if last == '0' { '1' } else { '0' });
    std::fs::write(&path, text).expect("writing the tampered signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trusted_keys_only_modules_signed_by_them_load_at_start() {
    let keys = tempfile::tempdir().unwrap();
    let (trusted_key, trusted) = keypair(keys.path(), "trusted.key");
    let (other_key, _) = keypair(keys.path(), "other.key");
    let v1 = flat("discount_v1");
    let plugins = flat_plugins(&v1);
    for file in MODULES {
        sign(&plugins, file, &trusted_key);
    }

    let t = TestEngine::start_with(plugins.path(), |s| {
        s.trusted_keys = vec![trusted];
        s.watch_plugins = false;
    })
    .await;
    let invoice = order_on(t.engine.pipeline(), "C-1001", &[("TV-55-OLED", 1)]).await.expect("an order");
    assert_eq!(served_version(&invoice, "GOLD", std::slice::from_ref(&v1)), "1.0.0");
    t.engine.shutdown().await;

    // One data dir for the refused starts (its compiled-artifact cache is shared).
    let data = tempfile::tempdir().unwrap();
    let start_error = |what: &'static str| {
        let mut settings = engine_settings(data.path(), plugins.path());
        settings.trusted_keys = vec![trusted];
        settings.watch_plugins = false;
        async move {
            match Engine::start(settings).await {
                Ok(_) => panic!("the engine started with {what}"),
                Err(e) => format!("{e:#}"),
            }
        }
    };

    std::fs::remove_file(plugins.file("flat.wasm.sig")).unwrap();
    let error = start_error("an unsigned module").await;
    assert!(error.contains("flat.wasm") && error.contains("unsigned module"), "{error}");

    sign(&plugins, "flat.wasm", &other_key);
    let error = start_error("a module signed by an untrusted key").await;
    assert!(error.contains("flat.wasm") && error.contains("signature does not match"), "{error}");

    sign(&plugins, "flat.wasm", &trusted_key);
    tamper(&plugins, "flat.wasm");
    let error = start_error("a tampered signature").await;
    assert!(error.contains("flat.wasm") && error.contains("signature does not match"), "{error}");

    // A trusted signature of other bytes: the module was swapped after signing.
    sign(&plugins, "flat.wasm", &trusted_key);
    plugins.copy_in(&crate::support::wasm("discount_v2"), "flat.wasm");
    let error = start_error("a module swapped after signing").await;
    assert!(error.contains("flat.wasm") && error.contains("signature does not match"), "{error}");

    std::fs::write(plugins.file("flat.wasm.sig"), "not hex").unwrap();
    let error = start_error("a malformed signature").await;
    assert!(error.contains("flat.wasm.sig") && error.contains("malformed signature"), "{error}");

    // Signed again by the trusted key: it starts.
    sign(&plugins, "flat.wasm", &trusted_key);
    let mut settings = engine_settings(data.path(), plugins.path());
    settings.trusted_keys = vec![trusted];
    settings.watch_plugins = false;
    let engine = Engine::start(settings).await.expect("a signed set starts");
    assert_eq!(discount_identity(&engine, FLAT).version, "2.0.0");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trusted_keys_a_reload_refuses_unsigned_foreign_or_tampered_modules_naming_the_file() {
    let keys = tempfile::tempdir().unwrap();
    let (trusted_key, trusted) = keypair(keys.path(), "trusted.key");
    let (other_key, _) = keypair(keys.path(), "other.key");
    let versions = [flat("discount_v1"), flat("discount_v2")];
    let plugins = flat_plugins(&versions[0]);
    for file in MODULES {
        sign(&plugins, file, &trusted_key);
    }
    let t = TestEngine::start_with(plugins.path(), |s| {
        s.trusted_keys = vec![trusted];
        s.watch_plugins = false;
    })
    .await;
    let engine = &t.engine;
    let v2 = guest_bytes("discount_v2");

    let old_digest: &str = &versions[0].digest;
    let refused = |what: &'static str, says: &'static str| async move {
        let error = engine.reload_now().await.expect_err(what);
        assert_eq!(error.file, "flat.wasm", "{what}: {error:?}");
        assert!(error.error.contains("flat.wasm") && error.error.contains(says), "{what}: {error:?}");
        assert_eq!(reload_status(engine).errors.last(), Some(&error), "{what}");
        assert_eq!(discount_identity(engine, FLAT).digest, old_digest, "{what}: the old set serves");
    };

    // v2 under v1's signature.
    plugins.replace("flat.wasm", &v2);
    refused("a module swapped after signing", "signature does not match").await;
    sign(&plugins, "flat.wasm", &other_key);
    refused("a module signed by an untrusted key", "signature does not match").await;
    sign(&plugins, "flat.wasm", &trusted_key);
    tamper(&plugins, "flat.wasm");
    refused("a tampered signature", "signature does not match").await;
    std::fs::remove_file(plugins.file("flat.wasm.sig")).unwrap();
    refused("an unsigned module", "unsigned module").await;
    std::fs::write(plugins.file("flat.wasm.sig"), "not hex").unwrap();
    let error = engine.reload_now().await.expect_err("a malformed signature");
    assert_eq!(error.file, "flat.wasm.sig", "{error:?}");
    assert!(error.error.contains("malformed signature"), "{error:?}");
    let invoice = order_on(engine.pipeline(), "C-1001", &[("TV-55-OLED", 1)]).await.expect("an order meanwhile");
    assert_eq!(served_version(&invoice, "GOLD", &versions), "1.0.0");

    sign(&plugins, "flat.wasm", &trusted_key);
    engine.reload_now().await.expect("a module signed by the trusted key reloads");
    assert_eq!(discount_identity(engine, FLAT).digest, versions[1].digest);
    assert!(reload_status(engine).errors.is_empty());
    let invoice = order_on(engine.pipeline(), "C-1001", &[("TV-55-OLED", 1)]).await.expect("an order afterwards");
    assert_eq!(served_version(&invoice, "GOLD", &versions), "2.0.0");
}
