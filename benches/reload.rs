//! Hot reload benchmark (issue: hot swap of rule modules without a restart).
//!
//! 1. Swap latency: the time from a module file landing in the watched
//!    plug-in directory (the `rename` into place returns) to the new module
//!    serving (the engine's current rule set names its digest), over 20
//!    swaps, for two kinds of swap: alternating two modules whose compiled
//!    artifacts are already cached, and a module never seen before (a
//!    custom section makes each one new, so each swap compiles).
//! 2. Orders/s of a concurrent order loop in windows without swaps and in
//!    windows with a swap every 500 ms (both kinds), alternating in the
//!    same run; medians over the rounds.
//!
//! Run: `cargo bench -p smartmart --bench reload` (after `cargo xtask
//! guests`). Figures go to BENCHMARKS.md ("Hot reload").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use smartmart::app::{Dataset, Engine, EngineSettings};
use smartmart::domain::customer::{AccountStatus, Customer, Tier};
use smartmart::domain::geo::GeoPoint;
use smartmart::pipeline::OrderRequest;
use smartmart::store::catalog::CartItem;
use smartmart::test_support::mint_token;

const SECRET: &[u8] = b"bench-secret";
/// Swaps per latency measurement.
const SWAPS: usize = 20;
/// Concurrent order loops.
const WORKERS: usize = 4;
/// Length of one throughput window.
const WINDOW: Duration = Duration::from_secs(3);
/// Rounds of (no swaps, cached swaps, new-module swaps) windows.
const ROUNDS: usize = 5;
/// Time between swaps in a swapping window.
const SWAP_EVERY: Duration = Duration::from_millis(500);

/// Index of `flat.wasm` in the discount slot.
const FLAT: usize = 1;

const MANIFEST: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 1000 }

[[discount]]
module = "flat.wasm"
budgets = { time_ms = 1000 }

[warehouse]
module = "nearest_warehouse.wasm"
budgets = { time_ms = 1000 }

[[fraud]]
module = "high_value.wasm"
fail_mode = "open"
budgets = { time_ms = 1000 }
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn guest(name: &str) -> Vec<u8> {
    let path = repo().join("target/wasm").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask guests`)", path.display()))
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `bytes` with a custom section appended: the same component, a new digest.
fn made_new(bytes: &[u8], tag: u64) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"smartmart-bench";
    let payload = tag.to_le_bytes();
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(&payload);
    let mut out = bytes.to_vec();
    out.push(0);
    leb128(body.len(), &mut out);
    out.extend(body);
    out
}

/// Writes under a temp name, then renames into place; returns when the
/// rename has returned (the moment the file "lands").
fn land(dir: &Path, bytes: &[u8]) -> Instant {
    let temp = dir.join(".flat.wasm.incoming");
    std::fs::write(&temp, bytes).expect("writing the incoming module");
    std::fs::rename(&temp, dir.join("flat.wasm")).expect("renaming it into place");
    Instant::now()
}

fn serving(engine: &Engine) -> String {
    let rules = engine.rules();
    rules.discount[FLAT].module.as_ref().map_or_else(String::new, |m| m.identity().digest.clone())
}

/// Lands `bytes` and waits until they serve; the time from landing to serving.
async fn swap(engine: &Engine, dir: &Path, bytes: &[u8]) -> Duration {
    let want = digest(bytes);
    let landed = land(dir, bytes);
    loop {
        if serving(engine) == want {
            return landed.elapsed();
        }
        assert!(landed.elapsed() < Duration::from_secs(60), "the swap never served");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

async fn start(plugins: &Path, data: &Path) -> Engine {
    let mut settings = EngineSettings::new(data, plugins, SECRET);
    settings.watch_plugins = true;
    let engine = Engine::start(settings).await.expect("the engine starts");
    Dataset::read(&repo().join("examples/demo/dataset.json")).unwrap().load_into(engine.store()).await.unwrap();
    let customers = (0..WORKERS)
        .map(|i| Customer {
            id: format!("R-{i:02}"),
            name: "Bench".into(),
            email: "bench@example.com".into(),
            phone: "+1".into(),
            tier: if i % 2 == 0 { Tier::Gold } else { Tier::Silver },
            status: AccountStatus::Active,
            location: GeoPoint { lat: 12.97, lon: 77.59 },
        })
        .collect();
    let stock = ["WH-BLR", "WH-BOM", "WH-DEL", "WH-MAA"]
        .iter()
        .flat_map(|w| ["HDMI-2M", "TV-55-OLED"].map(|sku| (w.to_string(), sku.to_string(), 100_000_000)))
        .collect();
    engine.store().load_catalog(customers, vec![], vec![], stock).await.unwrap();
    engine
}

/// Order loops running until `stop`, counting confirmed and failed orders.
fn order_loops(
    engine: &Engine,
    stop: &Arc<AtomicBool>,
    confirmed: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WORKERS)
        .map(|w| {
            let pipeline = engine.pipeline().clone();
            let (stop, confirmed, failed) = (stop.clone(), confirmed.clone(), failed.clone());
            tokio::spawn(async move {
                let customer = format!("R-{w:02}");
                let cart = vec![CartItem { sku: "HDMI-2M".into(), quantity: 1 }];
                while !stop.load(Ordering::Relaxed) {
                    pipeline.store().replace_cart(&customer, cart.clone()).await.unwrap();
                    let request = OrderRequest {
                        channel: "web".into(),
                        customer_id: customer.clone(),
                        customer_token: mint_token(SECRET, &customer, Duration::from_secs(600)),
                        coupon_code: None,
                        payment_token: "tok_ok".into(),
                        ship_to: None,
                        idempotency: None,
                        request_id: None,
                        traceparent: None,
                    };
                    match pipeline.place_order(request).await {
                        Ok(_) => confirmed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Swaps {
    None,
    Cached,
    New,
}

#[tokio::main]
async fn main() {
    let plugins = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    for file in ["gold_loyalty.wasm", "nearest_warehouse.wasm", "high_value.wasm"] {
        std::fs::copy(repo().join("plugins/bundled").join(file), plugins.path().join(file)).unwrap();
    }
    let v1 = guest("discount_v1");
    let v2 = guest("discount_v2");
    std::fs::write(plugins.path().join("flat.wasm"), &v1).unwrap();
    std::fs::write(plugins.path().join("manifest.toml"), MANIFEST).unwrap();
    let engine = start(plugins.path(), data.path()).await;
    let dir = plugins.path();

    // Warm up: both versions compiled and in the artifact cache.
    let cold = swap(&engine, dir, &v2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    swap(&engine, dir, &v1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut tag = 0u64;
    let mut latencies = Vec::new();
    for kind in [Swaps::Cached, Swaps::New] {
        let mut times = Vec::new();
        for _ in 0..SWAPS {
            let base = if serving(&engine) == digest(&v1) { &v2 } else { &v1 };
            let bytes = match kind {
                Swaps::New => {
                    tag += 1;
                    made_new(base, tag)
                }
                _ => base.clone(),
            };
            times.push(ms(swap(&engine, dir, &bytes).await));
            // Let the watcher settle before the next swap.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        times.sort_by(f64::total_cmp);
        latencies.push(times);
    }

    // Throughput: windows without swaps and with swaps, alternating.
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let loops = order_loops(&engine, &stop, &confirmed, &failed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut swaps_done = [0usize; 3];
    let reloads_before = engine.reload_status().reloads;
    for _ in 0..ROUNDS {
        for (k, kind) in [Swaps::None, Swaps::Cached, Swaps::New].into_iter().enumerate() {
            let started = Instant::now();
            let before = confirmed.load(Ordering::Relaxed);
            while started.elapsed() < WINDOW {
                if kind != Swaps::None {
                    let base = if serving(&engine) == digest(&v1) { &v2 } else { &v1 };
                    let bytes = if kind == Swaps::New {
                        tag += 1;
                        made_new(base, tag)
                    } else {
                        base.clone()
                    };
                    land(dir, &bytes);
                    swaps_done[k] += 1;
                }
                tokio::time::sleep(SWAP_EVERY.min(WINDOW.saturating_sub(started.elapsed()))).await;
            }
            let orders = confirmed.load(Ordering::Relaxed) - before;
            rates[k].push(orders as f64 / started.elapsed().as_secs_f64());
            // Let the last swap's reload finish outside the measured windows.
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.await.unwrap();
    }
    let status = engine.reload_status();

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap().trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!("## Hot reload");
    println!(
        "machine: {} logical CPUs, {cpu}; watcher debounce {} ms + stability re-read {} ms",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        smartmart::test_support::QUIET.as_millis(),
        (smartmart::test_support::QUIET / 2).as_millis()
    );
    println!();
    println!("first swap to a never-compiled module (cold, no cached artifact): {:.0} ms", ms(cold));
    println!();
    println!("| swap ({SWAPS} each) | median ms | p90 ms | min ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, times) in ["cached artifact (v1 <-> v2)", "new module (compiled on reload)"].iter().zip(&latencies) {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            percentile(times, 50.0),
            percentile(times, 90.0),
            times[0],
            times[times.len() - 1]
        );
    }
    println!();
    println!(
        "| window ({} s, {WORKERS} order loops, {ROUNDS} rounds) | orders/s median | min | max | swaps landed |",
        WINDOW.as_secs()
    );
    println!("|---|---|---|---|---|");
    for (k, name) in
        ["no swaps", "swap every 500 ms, cached artifact", "swap every 500 ms, new module"].iter().enumerate()
    {
        let r = &rates[k];
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {} |",
            median(r.clone()),
            r.iter().copied().fold(f64::INFINITY, f64::min),
            r.iter().copied().fold(0.0, f64::max),
            swaps_done[k]
        );
    }
    println!();
    println!(
        "orders: {} confirmed, {} failed; reloads during the windows: {} (refused since start: {})",
        confirmed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        status.reloads - reloads_before,
        status.refused
    );
    engine.shutdown().await;
}
