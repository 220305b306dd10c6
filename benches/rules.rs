//! Benchmarks of the rule runtime (results and the command in BENCHMARKS.md).
//!
//! Everything here calls the host's own per-call code (`RuleModule`), never
//! a copy of it:
//!
//! - `fresh instance + call`: each bundled rule through the public call API,
//!   which builds a fresh store and instance for every call (what the order
//!   path does);
//! - `instantiate only`: each bundled rule's fresh store and instance,
//!   dropped without a call (`RuleModule::instantiate`, the same code up to
//!   the guest's export): the call's own share is the difference;
//! - `gold-loyalty call vs instantiate`: the host's per-call store alone
//!   (`RuleModule::fresh_store_only`), `RuleModule::info` (instantiate and
//!   the cheapest export) beside `apply_discount`, and the same gold-loyalty
//!   logic as a native Rust closure (with and without cloning the order, as
//!   the host clones it into the WIT types), and `apply_discount` called from
//!   inside a tokio runtime directly and through `rules::run_blocking` (the
//!   pipeline's way);
//! - `load`: a module compiled from its bytes vs taken from the artifact cache.
//!
//! Needs the guests: `cargo xtask guests` (or `cargo xtask bench`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use smartmart::domain::customer::Tier;
use smartmart::domain::order::DiscountLine;
use smartmart::rules::types::OrderContext;
use smartmart::rules::{Budgets, ModuleConfig, RuleModule, RuleRuntime, RuntimeOptions, World};
use smartmart::test_support::runner::RunInput;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn wasm(name: &str) -> PathBuf {
    let path = repo().join("target/wasm").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run `cargo xtask guests` first", path.display());
    path
}

fn example(name: &str) -> RunInput {
    let path = repo().join("examples/orders").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reading an example order"))
        .expect("parsing an example order")
}

fn config(pairs: &[(&str, &str)]) -> ModuleConfig {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load(runtime: &RuleRuntime, name: &str, world: World, pairs: &[(&str, &str)]) -> RuleModule {
    runtime.load(&wasm(name), world, config(pairs), Budgets::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// gold-loyalty's logic in plain Rust: the sandbox's cost is the difference.
fn native_gold_loyalty(config: &ModuleConfig, order: &OrderContext) -> Result<Vec<DiscountLine>, String> {
    let percent = match config.get("percent") {
        None => 10,
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(p) if p <= 100 => p,
            _ => return Err(format!("percent must be a whole number from 0 to 100, got {raw:?}")),
        },
    };
    if order.customer.tier != Tier::Gold {
        return Ok(Vec::new());
    }
    let amount_cents = (u128::from(order.payable_cents) * u128::from(percent) / 100) as u64;
    if amount_cents == 0 {
        return Ok(Vec::new());
    }
    Ok(vec![DiscountLine {
        rule: "gold-loyalty".to_owned(),
        description: format!("GOLD tier {percent}%"),
        amount_cents,
        reasons: vec!["tier=GOLD".to_owned(), format!("percent={percent}")],
    }])
}

fn fresh_instance_call(c: &mut Criterion) {
    let runtime = RuleRuntime::new(RuntimeOptions::default()).unwrap();
    let gold_basic = example("gold-basic");
    let high_value = example("high-value");
    let payment = high_value.payment.clone().unwrap();
    let coupons_config = [("code.WELCOME10", "percent:10"), ("code.FLAT500", "amount:500")];

    let mut group = c.benchmark_group("fresh instance + call");
    let gold = load(&runtime, "gold_loyalty", World::DiscountRule, &[]);
    assert_eq!(gold.apply_discount(&gold_basic.order).unwrap().value.len(), 1);
    group.bench_function("gold_loyalty", |b| b.iter(|| gold.apply_discount(black_box(&gold_basic.order)).unwrap()));

    let coupons = load(&runtime, "coupons", World::DiscountRule, &coupons_config);
    assert_eq!(coupons.apply_discount(&gold_basic.order).unwrap().value.len(), 1);
    group.bench_function("coupons", |b| b.iter(|| coupons.apply_discount(black_box(&gold_basic.order)).unwrap()));

    // The JavaScript coupon rule (QuickJS, built by `cargo xtask guests`)
    // on the same order with a coupon it applies: a warm process, as the
    // service calls it, beside the Rust rules above.
    let js_path = repo().join("examples/rules/coupons-js/coupons_js.wasm");
    let coupons_js = runtime
        .load(&js_path, World::DiscountRule, config(&coupons_config), Budgets::default())
        .unwrap_or_else(|e| panic!("{e} (run `cargo xtask guests` first)"));
    let mut with_coupon = gold_basic.order.clone();
    with_coupon.coupon_code = Some("WELCOME10".into());
    assert_eq!(coupons_js.apply_discount(&with_coupon).unwrap().value.len(), 1);
    group.bench_function("coupons_js (JavaScript)", |b| {
        b.iter(|| coupons_js.apply_discount(black_box(&with_coupon)).unwrap())
    });
    // The same calls as the order path makes them since the async change:
    // on the calling task, yielding at every epoch tick.
    let tasks = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    group.bench_function("gold_loyalty, async on the calling task", |b| {
        b.iter(|| tasks.block_on(gold.apply_discount_async(black_box(&gold_basic.order))).unwrap())
    });
    group.bench_function("coupons_js (JavaScript), async on the calling task", |b| {
        b.iter(|| tasks.block_on(coupons_js.apply_discount_async(black_box(&with_coupon))).unwrap())
    });

    let nearest = load(&runtime, "nearest_warehouse", World::WarehouseSelector, &[]);
    nearest.select_warehouses(&gold_basic.order, &gold_basic.candidates).unwrap();
    group.bench_function("nearest_warehouse", |b| {
        b.iter(|| nearest.select_warehouses(black_box(&gold_basic.order), black_box(&gold_basic.candidates)).unwrap())
    });

    let fraud = load(&runtime, "high_value", World::FraudCheck, &[]);
    fraud.check_fraud(&high_value.order, &payment).unwrap();
    group.bench_function("high_value", |b| {
        b.iter(|| fraud.check_fraud(black_box(&high_value.order), black_box(&payment)).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("instantiate only");
    for module in [&gold, &coupons, &nearest, &fraud] {
        module.instantiate().unwrap();
        group.bench_function(module.identity().file.trim_end_matches(".wasm"), |b| {
            b.iter(|| module.instantiate().unwrap())
        });
    }
    group.finish();
}

fn gold_loyalty_breakdown(c: &mut Criterion) {
    let runtime = RuleRuntime::new(RuntimeOptions::default()).unwrap();
    let order = example("gold-basic").order;
    let gold = load(&runtime, "gold_loyalty", World::DiscountRule, &[]);
    let no_config = ModuleConfig::new();
    let expected = gold.apply_discount(&order).unwrap().value;
    assert_eq!(native_gold_loyalty(&no_config, &order).unwrap(), expected);

    let mut group = c.benchmark_group("gold-loyalty call vs instantiate");
    group.bench_function("fresh store only (the call's state, limiter, fuel, deadline; no instance)", |b| {
        b.iter(|| gold.fresh_store_only().unwrap())
    });
    group.bench_function("instantiate only (fresh store + instance, no call)", |b| {
        b.iter(|| gold.instantiate().unwrap())
    });
    group.bench_function("info (fresh instance + cheapest call)", |b| b.iter(|| gold.info().unwrap()));
    group.bench_function("apply_discount (fresh instance + call)", |b| {
        b.iter(|| gold.apply_discount(black_box(&order)).unwrap())
    });
    // As the pipeline calls rules: from a task of a multi-threaded runtime.
    let tokio_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    group.bench_function("apply_discount from inside a tokio runtime", |b| {
        tokio_runtime.block_on(async { b.iter(|| gold.apply_discount(black_box(&order)).unwrap()) })
    });
    group.bench_function("apply_discount through rules::run_blocking (tokio's blocking pool)", |b| {
        b.iter(|| {
            let (gold, order) = (gold.clone(), order.clone());
            tokio_runtime.block_on(smartmart::rules::run_blocking(move || gold.apply_discount(&order).unwrap()))
        })
    });
    group.bench_function("native closure, cloning the order", |b| {
        let rule = |o: &OrderContext| {
            let owned = o.clone();
            native_gold_loyalty(&no_config, &owned)
        };
        b.iter(|| rule(black_box(&order)).unwrap())
    });
    group.bench_function("native closure, borrowing the order", |b| {
        b.iter(|| native_gold_loyalty(&no_config, black_box(&order)).unwrap())
    });
    group.finish();
}

fn load_module(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let compiling = RuleRuntime::new(RuntimeOptions { cache_dir: None, max_instances: 8 }).unwrap();
    let cached =
        RuleRuntime::new(RuntimeOptions { cache_dir: Some(cache.path().to_owned()), max_instances: 8 }).unwrap();
    load(&cached, "gold_loyalty", World::DiscountRule, &[]); // warms the cache
    assert_eq!(cwasm_count(cache.path()), 1);

    let mut group = c.benchmark_group("load gold_loyalty (read, digest, compile or cache, link, info)");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.bench_with_input(BenchmarkId::new("compile", "no cache"), &compiling, |b, runtime| {
        b.iter(|| load(runtime, "gold_loyalty", World::DiscountRule, &[]))
    });
    group.bench_with_input(BenchmarkId::new("artifact cache", "warm"), &cached, |b, runtime| {
        b.iter(|| load(runtime, "gold_loyalty", World::DiscountRule, &[]))
    });
    group.finish();
    assert_eq!(cwasm_count(cache.path()), 1, "the cache was rewritten");
}

fn cwasm_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "cwasm"))
        .count()
}

criterion_group!(benches, fresh_instance_call, gold_loyalty_breakdown, load_module);
criterion_main!(benches);
