//! In-process pipeline benchmarks (issue: the six-stage order pipeline).
//!
//! 1. Orders/s and per-order p50/p99 with the bundled WASM rules vs the
//!    same pipeline with the same rules as native Rust closures: the ratio
//!    is what the sandbox costs.
//! 2. Stage 3 with 20 ms injected on each leg, legs concurrent vs one after
//!    the other.
//!
//! Run: `cargo xtask bench -- --bench pipeline` (or `cargo bench -p smartmart
//! --bench pipeline` once the guests are built). Figures go to BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smartmart::app::{Dataset, Engine, EngineSettings};
use smartmart::domain::customer::{AccountStatus, Customer, Tier};
use smartmart::domain::geo::{GeoPoint, distance_km};
use smartmart::domain::order::{Allocation, AllocationLine, DiscountLine};
use smartmart::pipeline::OrderRequest;
use smartmart::rules::types::{
    Candidate, FraudAction, OrderContext, PaymentSummary, Plan, Refusal, Shortfall, Verdict,
};
use smartmart::rules::{NativeLogic, NativeRule, Rule, RuleSet, SlotRule};
use smartmart::store::catalog::CartItem;
use smartmart::test_support::mint_token;

const SECRET: &[u8] = b"bench-secret";
const WORKERS: usize = 8;
const ORDERS_PER_WORKER: usize = 250;
const ROUNDS: usize = 3;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn engine(dir: &std::path::Path, tweak: impl FnOnce(&mut EngineSettings)) -> Engine {
    let mut settings = EngineSettings::new(dir, &repo().join("plugins/bundled"), SECRET);
    tweak(&mut settings);
    let engine = Engine::start(settings).await.expect("engine starts");
    Dataset::read(&repo().join("examples/demo/dataset.json")).unwrap().load_into(engine.store()).await.unwrap();
    let customers = (0..WORKERS * 4)
        .map(|i| Customer {
            id: format!("B-{i:04}"),
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
        .flat_map(|w| {
            ["HDMI-2M", "MOUSE-WIRELESS", "TV-55-OLED"].map(|sku| (w.to_string(), sku.to_string(), 10_000_000))
        })
        .collect();
    engine.store().load_catalog(customers, vec![], vec![], stock).await.unwrap();
    engine
}

/// The bundled rules' logic as closures (same decisions as plugins/).
fn native_rules(wasm: &RuleSet) -> Arc<RuleSet> {
    let gold = NativeLogic::Discount(Arc::new(|o: &OrderContext| {
        Ok(if o.customer.tier == Tier::Gold {
            vec![DiscountLine {
                rule: "gold-loyalty".into(),
                description: "GOLD tier 10%".into(),
                amount_cents: o.payable_cents / 10,
                reasons: vec!["tier=GOLD".into(), "percent=10".into()],
            }]
        } else {
            vec![]
        })
    }));
    let coupons = NativeLogic::Discount(Arc::new(|o: &OrderContext| match &o.coupon_code {
        None => Ok(vec![]),
        Some(code) => Err(Refusal::InvalidCoupon { message: format!("unknown coupon {code}") }),
    }));
    let nearest = NativeLogic::Warehouse(Arc::new(|o: &OrderContext, candidates: &[Candidate]| {
        let covers =
            |c: &Candidate| o.lines.iter().all(|l| c.stock.iter().any(|s| s.sku == l.sku && s.available >= l.quantity));
        let best = candidates
            .iter()
            .filter(|c| covers(c))
            .map(|c| (distance_km(o.ship_to, c.location), c))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((km, c)) => Ok(Plan {
                allocations: vec![Allocation {
                    warehouse_id: c.id.clone(),
                    lines: o
                        .lines
                        .iter()
                        .map(|l| AllocationLine { sku: l.sku.clone(), quantity: l.quantity })
                        .collect(),
                }],
                reasons: vec![format!("nearest={}", c.id), format!("distance_km={km:.1}")],
            }),
            None => Err(Refusal::CannotFulfil(Shortfall {
                sku: o.lines[0].sku.clone(),
                requested: o.lines[0].quantity,
                available: 0,
                reason: "no warehouse covers the cart".into(),
            })),
        }
    }));
    let high_value = NativeLogic::Fraud(Arc::new(|o: &OrderContext, _: &PaymentSummary| Verdict {
        action: if o.payable_cents >= 500_000 { FraudAction::Escalate } else { FraudAction::Allow },
        score: if o.payable_cents >= 500_000 { 90 } else { 0 },
        flags: vec![],
        reasons: vec![],
    }));
    let slot = |name: &str, logic| SlotRule::single(Rule::Native(NativeRule::new(name, logic)), Default::default());
    Arc::new(RuleSet {
        discount: vec![slot("gold-loyalty", gold), slot("coupons", coupons)],
        warehouse: slot("nearest-warehouse", nearest),
        fraud: vec![slot("high-value", high_value)],
        dir: wasm.dir.clone(),
        loaded_at: wasm.loaded_at.clone(),
        manifest: None,
    })
}

/// Places `per_worker` orders from each of `workers` concurrent tasks;
/// returns orders/s and the sorted per-order latencies.
async fn run_orders(engine: &Engine, workers: usize, per_worker: usize) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let pipeline = engine.pipeline().clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let customer = format!("B-{:04}", (w * 4 + i % 4) % (workers * 4));
                let cart = vec![
                    CartItem { sku: "TV-55-OLED".into(), quantity: 1 },
                    CartItem { sku: "HDMI-2M".into(), quantity: 2 },
                ];
                pipeline.store().replace_cart(&customer, cart).await.unwrap();
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
                let t = Instant::now();
                pipeline.place_order(request).await.expect("order confirmed");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    ((workers * per_worker) as f64 / elapsed.as_secs_f64(), all)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    println!("## In-process orders: bundled WASM rules vs native closures");
    println!(
        "{WORKERS} concurrent tasks × {ORDERS_PER_WORKER} orders, {ROUNDS} alternating rounds, medians over rounds"
    );
    let wasm_dir = tempfile::tempdir().unwrap();
    let native_dir = tempfile::tempdir().unwrap();
    let wasm = engine(wasm_dir.path(), |_| {}).await;
    let native = engine(native_dir.path(), |_| {}).await;
    native.serve_rules(native_rules(&native.rules()));
    // Warm-up: compile caches, SQLite pages, allocator.
    run_orders(&wasm, WORKERS, 20).await;
    run_orders(&native, WORKERS, 20).await;
    let (mut w_rate, mut w_p50, mut w_p99, mut n_rate, mut n_p50, mut n_p99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (rate, lat) = run_orders(&wasm, WORKERS, ORDERS_PER_WORKER).await;
        w_rate.push(rate);
        w_p50.push(pct(&lat, 0.5));
        w_p99.push(pct(&lat, 0.99));
        let (rate, lat) = run_orders(&native, WORKERS, ORDERS_PER_WORKER).await;
        n_rate.push(rate);
        n_p50.push(pct(&lat, 0.5));
        n_p99.push(pct(&lat, 0.99));
    }
    let (wr, nr) = (median(w_rate), median(n_rate));
    println!("| rules | orders/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!("| bundled WASM (sandboxed) | {wr:.0} | {:.2} | {:.2} |", median(w_p50.clone()), median(w_p99.clone()));
    println!("| native closures | {nr:.0} | {:.2} | {:.2} |", median(n_p50.clone()), median(n_p99.clone()));
    println!(
        "sandbox cost: throughput {:.1} % lower, p50 {:.1} % higher",
        (1.0 - wr / nr) * 100.0,
        (median(w_p50) / median(n_p50) - 1.0) * 100.0
    );
    wasm.shutdown().await;
    native.shutdown().await;

    println!();
    println!("## Stage 3 with 20 ms injected on each leg: concurrent vs sequential legs");
    let delay = Duration::from_millis(20);
    let par_dir = tempfile::tempdir().unwrap();
    let seq_dir = tempfile::tempdir().unwrap();
    let inject = |sequential: bool| {
        move |s: &mut EngineSettings| {
            s.faults.discount_delay = delay;
            s.faults.inventory_delay = delay;
            s.sequential_legs = sequential;
        }
    };
    let parallel = engine(par_dir.path(), inject(false)).await;
    let sequential = engine(seq_dir.path(), inject(true)).await;
    let (mut p, mut s) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        let (_, lat) = run_orders(&parallel, 1, 30).await;
        p.push(pct(&lat, 0.5));
        let (_, lat) = run_orders(&sequential, 1, 30).await;
        s.push(pct(&lat, 0.5));
    }
    let (p, s) = (median(p), median(s));
    println!("| legs | order p50 ms |");
    println!("|---|---|");
    println!("| concurrent | {p:.2} |");
    println!("| sequential | {s:.2} |");
    println!(
        "concurrent / slower leg (20 ms) = {:.2}×; concurrent vs sequential: {:.0} % lower",
        p / 20.0,
        (1.0 - p / s) * 100.0
    );
    parallel.shutdown().await;
    sequential.shutdown().await;
}
