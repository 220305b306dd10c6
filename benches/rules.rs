//! Benchmarks of the rule runtime (results and the command in BENCHMARKS.md).
//!
//! - `fresh instance + call`: each bundled rule through the public call API,
//!   which builds a fresh store and instance for every call;
//! - `gold-loyalty call vs instantiate`: `RuleModule::info` (instantiate and
//!   the cheapest export) beside `apply_discount`, and the same gold-loyalty
//!   logic as a native Rust closure (with and without cloning the order, as
//!   the host clones it into the WIT types), and `apply_discount` called from
//!   inside a tokio runtime directly and through `rules::run_blocking` (the
//!   pipeline's way);
//! - `per-call host setup`: the parts of a call the host pays before the
//!   guest runs (its WASI context, a store on an engine configured like the
//!   host's, the copy of the order), rebuilt here from public APIs because
//!   the host's own are private: what the fresh instance costs beside them;
//! - `load`: a module compiled from its bytes vs taken from the artifact cache.
//!
//! Needs the guests: `cargo xtask guests` (or `cargo xtask bench`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use smartmart::rules::runner::RunInput;
use smartmart::rules::types::{DiscountLine, OrderContext, Tier};
use smartmart::rules::{Budgets, ModuleConfig, RuleModule, RuleRuntime, RuntimeOptions, World};
use wasmtime::component::ResourceTable;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

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
}

fn gold_loyalty_breakdown(c: &mut Criterion) {
    let runtime = RuleRuntime::new(RuntimeOptions::default()).unwrap();
    let order = example("gold-basic").order;
    let gold = load(&runtime, "gold_loyalty", World::DiscountRule, &[]);
    let no_config = ModuleConfig::new();
    let expected = gold.apply_discount(&order).unwrap().value;
    assert_eq!(native_gold_loyalty(&no_config, &order).unwrap(), expected);

    let mut group = c.benchmark_group("gold-loyalty call vs instantiate");
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

/// As the host's `FrozenClock` (host/src/rules/state.rs).
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// What `RuleState::new` builds for every call (host/src/rules/state.rs).
fn rule_state_like() -> (WasiCtx, ResourceTable, MemoryOutputPipe) {
    let stderr = MemoryOutputPipe::new(4096);
    let wasi = WasiCtx::builder()
        .stdout(stderr.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .insecure_random_seed(0)
        .build();
    (wasi, ResourceTable::new(), stderr)
}

/// An engine configured as `engine_config` does (host/src/rules/engine.rs).
fn host_like_engine() -> Engine {
    let max_instances = 256;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 4)
        .total_memories(max_instances * 2)
        .total_tables(max_instances * 2)
        .max_memory_size(64 << 20)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).unwrap()
}

fn per_call_setup(c: &mut Criterion) {
    let engine = host_like_engine();
    let order = example("gold-basic").order;
    let mut group = c.benchmark_group("per-call host setup");
    group.bench_function("WASI context as RuleState::new builds it", |b| b.iter(rule_state_like));
    group.bench_function("store with that context, fuel and deadline set, dropped", |b| {
        b.iter(|| {
            let mut store = Store::new(&engine, rule_state_like());
            store.set_fuel(50_000_000).unwrap();
            store.set_epoch_deadline(50);
            store
        })
    });
    group.bench_function("store with an empty state, dropped", |b| b.iter(|| Store::new(&engine, ())));
    group.bench_function("clone of the order (the WIT conversion copies as much)", |b| {
        b.iter(|| black_box(&order).clone())
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

criterion_group!(benches, fresh_instance_call, gold_loyalty_breakdown, per_call_setup, load_module);
criterion_main!(benches);
