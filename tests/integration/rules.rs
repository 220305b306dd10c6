//! The rule runtime through the library API, with the real components of
//! `target/wasm/` (built by `cargo xtask guests`): the bundled rules' answers,
//! hostile guests contained by their budgets, load-time refusals, a fresh
//! instance per call, and the compiled-artifact cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use smartmart::domain::order::DiscountLine;
use smartmart::rules::types::{FraudAction, OrderContext, Refusal};
use smartmart::rules::{
    Budgets, FailureCause, LoadError, ModuleConfig, RuleError, RuleModule, RuleRuntime, RuntimeOptions, World,
};

use crate::support::{example_order, load_rule, new_rule_runtime, rule_runtime, wasm};

const COUPON_CONFIG: &[(&str, &str)] = &[("code.WELCOME10", "percent:10"), ("code.FLAT500", "amount:500")];

/// Every bundled rule: file name, world, the name it reports.
const BUNDLED: [(&str, World, &str); 4] = [
    ("gold_loyalty", World::DiscountRule, "gold-loyalty"),
    ("coupons", World::DiscountRule, "coupons"),
    ("nearest_warehouse", World::WarehouseSelector, "nearest-warehouse"),
    ("high_value", World::FraudCheck, "high-value"),
];

/// The default budgets with a roomy wall-clock limit: these tests run in
/// parallel on a small shared machine, and a call preempted for longer than
/// the default 50 ms would turn into a time-budget failure. The tests about
/// time set their own.
fn budgets() -> Budgets {
    Budgets { time_ms: 10_000, ..Budgets::default() }
}

fn order(name: &str) -> OrderContext {
    example_order(name).order
}

fn gold_basic_discount() -> Vec<DiscountLine> {
    vec![DiscountLine {
        rule: "gold-loyalty".into(),
        description: "GOLD tier 10%".into(),
        amount_cents: 9_290,
        reasons: vec!["tier=GOLD".into(), "percent=10".into()],
    }]
}

fn discount(module: &RuleModule, order: &OrderContext) -> Vec<DiscountLine> {
    module.apply_discount(order).unwrap_or_else(|e| panic!("{e}")).value
}

/// The failure cause of a call that must fail, panicking on anything else.
fn failure<T: std::fmt::Debug>(result: Result<T, RuleError>) -> FailureCause {
    match result {
        Err(RuleError::Failed { cause, .. }) => cause,
        other => panic!("expected a failed call, got {other:?}"),
    }
}

/// The host is unharmed: gold-loyalty, loaded in `runtime` now, answers as usual.
fn assert_gold_still_answers(runtime: &RuleRuntime) {
    let gold = load_rule(runtime, "gold_loyalty", World::DiscountRule, &[], budgets());
    assert_eq!(discount(&gold, &order("gold-basic")), gold_basic_discount());
    assert_eq!(discount(&gold, &order("silver-out-of-stock")), []);
}

fn load_err(runtime: &RuleRuntime, file: &Path, world: World) -> LoadError {
    match runtime.load(file, world, ModuleConfig::new(), budgets()) {
        Ok(module) => panic!("{} loaded as {world}: {}", file.display(), module.identity()),
        Err(e) => e,
    }
}

/// A load error's text names the file and the world it was loaded as.
fn assert_names_file_and_world(error: &LoadError, file_name: &str, world: World) {
    let text = error.to_string();
    assert!(text.contains(file_name), "{text:?} does not name {file_name}");
    assert!(text.contains(&world.to_string()), "{text:?} does not name {world}");
}

// ---- the bundled rules -------------------------------------------------------------------------

#[test]
fn bundled_rules_load_for_their_world_and_describe_themselves() {
    let runtime = rule_runtime();
    for (name, world, rule_name) in BUNDLED {
        let module = load_rule(&runtime, name, world, &[], budgets());
        let identity = module.identity();
        assert_eq!(identity.world, world, "{name}");
        assert_eq!(identity.file, format!("{name}.wasm"));
        assert_eq!(identity.name, rule_name);
        assert_eq!(identity.version, "1.0.0", "{name}");
        assert!(!identity.description.is_empty(), "{name}");
        let hex = identity.digest.strip_prefix("sha256:").expect("digest starts with sha256:");
        assert_eq!(hex.len(), 64, "{}", identity.digest);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", identity.digest);
        let bytes = std::fs::read(wasm(name)).unwrap();
        assert_eq!(hex, hex::encode(Sha256::digest(&bytes)), "{name}");
        // Only the granted interfaces, and the host's own among them.
        assert!(module.imports().iter().any(|i| i.starts_with("smartmart:rules/log@")), "{name}");
        for import in module.imports() {
            assert!(smartmart::test_support::is_granted(import), "{name} imports {import}");
        }
        // `info` answers what loading recorded.
        let info = module.info().unwrap().value;
        assert_eq!((info.name.as_str(), info.version.as_str()), (rule_name, "1.0.0"));
    }
}

#[test]
fn gold_loyalty_gives_gold_ten_percent_of_what_is_left_to_pay() {
    let gold = load_rule(&rule_runtime(), "gold_loyalty", World::DiscountRule, &[], budgets());
    assert_eq!(discount(&gold, &order("gold-basic")), gold_basic_discount());
    // Of `payable_cents` (after earlier rules), not of the subtotal; rounded down.
    let mut after_coupon = order("gold-basic");
    after_coupon.payable_cents = 83_619;
    let lines = discount(&gold, &after_coupon);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].amount_cents, 8_361);
}

#[test]
fn gold_loyalty_gives_other_tiers_nothing() {
    let gold = load_rule(&rule_runtime(), "gold_loyalty", World::DiscountRule, &[], budgets());
    // SILVER, then STANDARD.
    assert_eq!(discount(&gold, &order("silver-out-of-stock")), []);
    assert_eq!(discount(&gold, &order("high-value")), []);
}

#[test]
fn gold_loyalty_reads_its_percent_from_config() {
    let gold = load_rule(&rule_runtime(), "gold_loyalty", World::DiscountRule, &[("percent", "25")], budgets());
    let lines = discount(&gold, &order("gold-basic"));
    assert_eq!(lines[0].amount_cents, 23_225);
    assert_eq!(lines[0].description, "GOLD tier 25%");
    // A broken config is the rule's failure, not the order's.
    let broken = load_rule(&rule_runtime(), "gold_loyalty", World::DiscountRule, &[("percent", "lots")], budgets());
    let cause = failure(broken.apply_discount(&order("silver-out-of-stock")));
    assert!(matches!(&cause, FailureCause::Guest(m) if m.contains("bad config") && m.contains("lots")), "{cause:?}");
}

#[test]
fn coupons_apply_configured_codes_case_insensitively() {
    let coupons = load_rule(&rule_runtime(), "coupons", World::DiscountRule, COUPON_CONFIG, budgets());
    let mut order = order("gold-basic");
    for typed in ["WELCOME10", "welcome10", " Welcome10 "] {
        order.coupon_code = Some(typed.into());
        let lines = discount(&coupons, &order);
        assert_eq!(
            lines,
            [DiscountLine {
                rule: "coupons".into(),
                description: "Coupon WELCOME10: 10%".into(),
                amount_cents: 9_290,
                reasons: vec!["coupon=WELCOME10".into(), "percent=10".into()],
            }],
            "{typed:?}"
        );
    }
    for typed in ["FLAT500", "flat500"] {
        order.coupon_code = Some(typed.into());
        let lines = discount(&coupons, &order);
        assert_eq!(lines.len(), 1, "{typed:?}");
        assert_eq!(lines[0].amount_cents, 500);
        assert_eq!(lines[0].description, "Coupon FLAT500: 500 off");
    }
    order.coupon_code = None;
    assert_eq!(discount(&coupons, &order), []);
}

#[test]
fn coupons_refuse_an_unknown_code_as_invalid_coupon() {
    let coupons = load_rule(&rule_runtime(), "coupons", World::DiscountRule, COUPON_CONFIG, budgets());
    let mut unknown = order("gold-basic");
    unknown.coupon_code = Some("NOPE".into());
    match coupons.apply_discount(&unknown) {
        Err(RuleError::Refused { module, refusal: Refusal::InvalidCoupon { message } }) => {
            assert_eq!(module.name, "coupons");
            assert!(message.contains("NOPE"), "{message}");
        }
        other => panic!("expected an invalid-coupon refusal, got {other:?}"),
    }
    // Without any configured code, even WELCOME10 is unknown.
    let bare = load_rule(&rule_runtime(), "coupons", World::DiscountRule, &[], budgets());
    let answer = bare.apply_discount(&order("gold-basic"));
    assert!(matches!(answer, Err(RuleError::Refused { refusal: Refusal::InvalidCoupon { .. }, .. })), "{answer:?}");
}

#[test]
fn nearest_warehouse_picks_the_nearest_warehouse_that_covers_the_cart() {
    let selector = load_rule(&rule_runtime(), "nearest_warehouse", World::WarehouseSelector, &[], budgets());
    let mut input = example_order("gold-basic");
    let plan = selector.select_warehouses(&input.order, &input.candidates).unwrap().value;
    assert_eq!(plan.allocations.len(), 1);
    assert_eq!(plan.allocations[0].warehouse_id, "WH-BLR");
    let lines: Vec<_> = plan.allocations[0].lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
    assert_eq!(lines, [("TV-55-OLED", 1), ("HDMI-2M", 2)]);
    assert_eq!(plan.reasons[0], "nearest=WH-BLR");
    assert!(plan.reasons[1].starts_with("distance_km="), "{:?}", plan.reasons);

    // Bengaluru out of TVs: Chennai (which has them) beats Mumbai (which has none).
    input.candidates[0].stock[0].available = 0;
    let plan = selector.select_warehouses(&input.order, &input.candidates).unwrap().value;
    assert_eq!(plan.allocations[0].warehouse_id, "WH-MAA");
    assert_eq!(plan.reasons[0], "nearest=WH-MAA");
}

#[test]
fn nearest_warehouse_refuses_an_uncoverable_cart_naming_the_sku() {
    let selector = load_rule(&rule_runtime(), "nearest_warehouse", World::WarehouseSelector, &[], budgets());
    let input = example_order("silver-out-of-stock");
    match selector.select_warehouses(&input.order, &input.candidates) {
        Err(RuleError::Refused { module, refusal: Refusal::CannotFulfil(shortfall) }) => {
            assert_eq!(module.name, "nearest-warehouse");
            assert_eq!(shortfall.sku, "FRIDGE-500L");
            assert_eq!((shortfall.requested, shortfall.available), (3, 2));
            assert!(shortfall.reason.contains("FRIDGE-500L"), "{}", shortfall.reason);
        }
        other => panic!("expected a cannot-fulfil refusal, got {other:?}"),
    }
}

#[test]
fn high_value_escalates_at_or_above_its_threshold_and_allows_below() {
    let runtime = rule_runtime();
    let input = example_order("high-value"); // payable 749_700 cents
    let payment = input.payment.clone().unwrap();
    let check = |threshold: Option<&str>, order: &OrderContext| {
        let config: Vec<(&str, &str)> = threshold.map(|t| ("threshold_cents", t)).into_iter().collect();
        let module = load_rule(&runtime, "high_value", World::FraudCheck, &config, budgets());
        module.check_fraud(order, &payment).unwrap_or_else(|e| panic!("{e}")).value
    };

    let verdict = check(None, &input.order);
    assert_eq!(verdict.action, FraudAction::Escalate);
    assert_eq!(verdict.score, 90);
    assert_eq!(verdict.flags, ["HIGH_VALUE"]);
    assert_eq!(check(Some("749700"), &input.order).action, FraudAction::Escalate, "at the threshold");

    let verdict = check(Some("749701"), &input.order);
    assert_eq!(verdict.action, FraudAction::Allow, "just below the threshold");
    assert!(verdict.flags.is_empty());
    assert_eq!(verdict.score, 49);
    let verdict = check(None, &order("gold-basic"));
    assert_eq!(verdict.action, FraudAction::Allow);
    assert_eq!(verdict.score, 9);
}

#[test]
fn the_example_clearance_rule_discounts_its_category() {
    let clearance = load_rule(&rule_runtime(), "clearance", World::DiscountRule, &[], budgets());
    assert_eq!(clearance.identity().name, "clearance");
    // 5 % of the two HDMI cables (accessories, 2 × 1500 cents).
    let lines = discount(&clearance, &order("gold-basic"));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].amount_cents, 150);
    assert_eq!(lines[0].description, "Clearance 5% on accessories");
    assert_eq!(discount(&clearance, &order("high-value")), []);
}

// ---- hostile guests ----------------------------------------------------------------------------

#[test]
fn a_runaway_guest_is_stopped_by_its_time_budget() {
    let runtime = new_rule_runtime();
    let budgets = Budgets { time_ms: 30, fuel: 1_000_000_000_000_000, ..Budgets::default() };
    let looping = load_rule(&runtime, "hostile_loop", World::DiscountRule, &[], budgets);
    for _ in 0..2 {
        let started = Instant::now();
        let cause = failure(looping.apply_discount(&order("gold-basic")));
        let took = started.elapsed();
        assert_eq!(cause, FailureCause::TimeBudget(30));
        assert!(took >= Duration::from_millis(25), "stopped after {took:?}, before its budget");
        assert!(took < Duration::from_secs(2), "stopped only after {took:?}");
    }
    assert_gold_still_answers(&runtime);
}

#[test]
fn a_runaway_guest_is_stopped_by_its_fuel_budget() {
    let runtime = new_rule_runtime();
    let budgets = Budgets { time_ms: 10_000, fuel: 1_000_000, ..Budgets::default() };
    let looping = load_rule(&runtime, "hostile_loop", World::DiscountRule, &[], budgets);
    let started = Instant::now();
    let cause = failure(looping.apply_discount(&order("gold-basic")));
    assert_eq!(cause, FailureCause::FuelBudget(1_000_000));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(cause.kind(), "fuel_budget");
    assert_gold_still_answers(&runtime);
}

#[test]
fn a_memory_hog_is_stopped_by_its_memory_budget() {
    let runtime = new_rule_runtime();
    let hog = load_rule(&runtime, "hostile_memory", World::DiscountRule, &[], budgets());
    assert_eq!(failure(hog.apply_discount(&order("gold-basic"))), FailureCause::MemoryBudget(16 << 20));
    let small = Budgets { memory_bytes: 4 << 20, ..budgets() };
    let hog = load_rule(&runtime, "hostile_memory", World::DiscountRule, &[], small);
    assert_eq!(failure(hog.apply_discount(&order("gold-basic"))), FailureCause::MemoryBudget(4 << 20));
    assert_gold_still_answers(&runtime);
}

#[test]
fn a_panicking_guest_traps_and_its_panic_message_is_kept() {
    let runtime = new_rule_runtime();
    let panicking = load_rule(&runtime, "hostile_panic", World::DiscountRule, &[], budgets());
    match failure(panicking.apply_discount(&order("gold-basic"))) {
        FailureCause::Trap(text) => {
            assert!(text.contains("coupon engine crashed"), "{text}");
            assert!(text.contains("unreachable"), "{text}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    // The next call gets a fresh instance, not the poisoned one.
    assert!(matches!(failure(panicking.apply_discount(&order("gold-basic"))), FailureCause::Trap(_)));
    assert_gold_still_answers(&runtime);
}

#[test]
fn an_oversized_answer_exceeds_the_output_budget() {
    let runtime = new_rule_runtime();
    let flooding = load_rule(&runtime, "hostile_output", World::DiscountRule, &[], budgets());
    assert_eq!(
        failure(flooding.apply_discount(&order("gold-basic"))),
        FailureCause::OutputTooLarge { limit: 64 << 10 }
    );
    // The same answer under a budget that allows it: the limit, not the guest, decided.
    let roomy = Budgets { output_bytes: 8 << 20, ..budgets() };
    let flooding = load_rule(&runtime, "hostile_output", World::DiscountRule, &[], roomy);
    assert_eq!(discount(&flooding, &order("gold-basic")).len(), 5_000);
    assert_gold_still_answers(&runtime);
}

#[test]
fn a_rule_error_is_a_guest_failure_with_its_message() {
    let runtime = new_rule_runtime();
    let failing = load_rule(&runtime, "error_rule", World::DiscountRule, &[], budgets());
    let error = failing.apply_discount(&order("gold-basic")).unwrap_err();
    assert_eq!(error.module().name, "error-rule");
    assert!(error.to_string().contains("deliberate failure"), "{error}");
    assert_eq!(failure::<()>(Err(error)), FailureCause::Guest("deliberate failure".into()));
    assert_gold_still_answers(&runtime);
}

#[test]
fn guests_writing_to_stderr_are_contained_inside_a_tokio_runtime() {
    // The pipeline calls rules from tokio tasks; a guest's panic message goes
    // through the synchronous WASI stderr, which must not take the task down
    // on either runtime flavour.
    let current_thread = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let multi_thread = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for tokio_runtime in [current_thread, multi_thread] {
        let runtime = new_rule_runtime();
        tokio_runtime.block_on(async {
            let panicking = load_rule(&runtime, "hostile_panic", World::DiscountRule, &[], budgets());
            let cause = failure(panicking.apply_discount(&order("gold-basic")));
            assert!(matches!(&cause, FailureCause::Trap(text) if text.contains("coupon engine crashed")), "{cause:?}");
            let task = tokio::spawn(async move { panicking.apply_discount(&order("gold-basic")).map(|c| c.value) });
            assert!(matches!(failure(task.await.unwrap()), FailureCause::Trap(_)));
            assert_gold_still_answers(&runtime);
        });
    }
}

/// A guest that loops until its 300 ms time budget is spent (fuel is no
/// limit), the gold-loyalty rule to call beside it, and the order both get.
fn runaway_beside_gold() -> (RuleModule, RuleModule, OrderContext) {
    let runtime = new_rule_runtime();
    let runaway_budgets = Budgets { time_ms: 300, fuel: 1_000_000_000_000_000, ..Budgets::default() };
    let looping = load_rule(&runtime, "hostile_loop", World::DiscountRule, &[], runaway_budgets);
    let gold = load_rule(&runtime, "gold_loyalty", World::DiscountRule, &[], budgets());
    (looping, gold, order("gold-basic"))
}

#[test]
fn a_runaway_guest_on_one_thread_does_not_stall_calls_on_another() {
    let (looping, gold, order) = runaway_beside_gold();
    let running = Arc::new(AtomicBool::new(true));

    let runaway = std::thread::spawn({
        let (order, running) = (order.clone(), running.clone());
        move || {
            let started = Instant::now();
            let outcome = looping.apply_discount(&order);
            running.store(false, Ordering::SeqCst);
            (outcome, started.elapsed())
        }
    });
    let mut served = 0u32;
    let mut slowest = Duration::ZERO;
    while running.load(Ordering::SeqCst) {
        let started = Instant::now();
        assert_eq!(discount(&gold, &order), gold_basic_discount());
        slowest = slowest.max(started.elapsed());
        served += 1;
    }
    let (outcome, took) = runaway.join().unwrap();
    assert_eq!(failure(outcome), FailureCause::TimeBudget(300));
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(served >= 10, "only {served} calls served beside the runaway guest in {took:?} (slowest {slowest:?})");
}

// ---- async calls: on the caller's task ---------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn a_runaway_guest_on_the_only_worker_lets_the_workers_other_tasks_run() {
    // One worker thread: if the guest held it, the neighbour task below could
    // not run at all until the guest's call ended.
    let (looping, gold, order) = runaway_beside_gold();
    let running = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicU32::new(0));
    let neighbour = tokio::spawn({
        let (order, running, served) = (order.clone(), running.clone(), served.clone());
        async move {
            while running.load(Ordering::SeqCst) {
                let called = gold.apply_discount_async(&order).await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(called.value, gold_basic_discount());
                served.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }
    });
    let outcome = looping.apply_discount_async(&order).await;
    let served_meanwhile = served.load(Ordering::SeqCst);
    running.store(false, Ordering::SeqCst);
    neighbour.await.unwrap();
    assert_eq!(failure(outcome), FailureCause::TimeBudget(300));
    assert!(served_meanwhile >= 3, "the neighbour task served {served_meanwhile} calls while the guest ran");
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_guests_called_on_the_worker_fail_as_on_a_rule_thread() {
    let runtime = new_rule_runtime();
    let order = order("gold-basic");
    let call = async |name: &str, budgets: Budgets| {
        let module = load_rule(&runtime, name, World::DiscountRule, &[], budgets);
        failure(module.apply_discount_async(&order).await)
    };
    let no_fuel_limit = Budgets { time_ms: 30, fuel: 1_000_000_000_000_000, ..Budgets::default() };
    assert_eq!(call("hostile_loop", no_fuel_limit).await, FailureCause::TimeBudget(30));
    let little_fuel = Budgets { fuel: 1_000_000, ..budgets() };
    assert_eq!(call("hostile_loop", little_fuel).await, FailureCause::FuelBudget(1_000_000));
    assert_eq!(call("hostile_memory", budgets()).await, FailureCause::MemoryBudget(16 << 20));
    assert_eq!(call("hostile_output", budgets()).await, FailureCause::OutputTooLarge { limit: 64 << 10 });
    // Its panic message goes through (asynchronous) WASI stderr: kept, and
    // the rule fails, not the task.
    match call("hostile_panic", budgets()).await {
        FailureCause::Trap(text) => assert!(text.contains("coupon engine crashed"), "{text}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(call("error_rule", budgets()).await, FailureCause::Guest("deliberate failure".into()));
    // The same answers as the synchronous calls, for every bundled rule's world.
    let gold = load_rule(&runtime, "gold_loyalty", World::DiscountRule, &[], budgets());
    assert_eq!(gold.apply_discount_async(&order).await.unwrap().value, gold_basic_discount());
    let nearest = load_rule(&runtime, "nearest_warehouse", World::WarehouseSelector, &[], budgets());
    let candidates = example_order("gold-basic").candidates;
    let planned = nearest.select_warehouses_async(&order, &candidates).await.unwrap().value;
    assert_eq!(planned, nearest.select_warehouses(&order, &candidates).unwrap().value);
    let info = gold.info_async().await.unwrap().value;
    assert_eq!((info.name.as_str(), info.version.as_str()), ("gold-loyalty", gold.identity().version.as_str()));
}

// ---- load-time refusals ------------------------------------------------------------------------

fn temp_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn garbage_bytes_are_refused_naming_the_file_and_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "garbage.wasm", b"this is not WebAssembly at all");
    let error = load_err(&rule_runtime(), &file, World::DiscountRule);
    assert!(matches!(&error, LoadError::NotAComponent { expected: World::DiscountRule, .. }), "{error:?}");
    assert_names_file_and_world(&error, "garbage.wasm", World::DiscountRule);
    assert!(error.to_string().contains("not WebAssembly"), "{error}");
    // Not even the magic number: an empty file.
    let empty = temp_file(&dir, "empty.wasm", b"");
    let error = load_err(&rule_runtime(), &empty, World::FraudCheck);
    assert_names_file_and_world(&error, "empty.wasm", World::FraudCheck);
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "core.wasm", b"\0asm\x01\0\0\0");
    let error = load_err(&rule_runtime(), &file, World::WarehouseSelector);
    assert!(matches!(&error, LoadError::NotAComponent { .. }), "{error:?}");
    assert_names_file_and_world(&error, "core.wasm", World::WarehouseSelector);
    let text = error.to_string();
    assert!(text.contains("core WebAssembly module") && text.contains("wasm32-wasip2"), "{text}");
}

#[test]
fn a_component_with_a_broken_body_is_refused() {
    // The component preamble, then nonsense: wasmtime's validation refuses it.
    let dir = tempfile::tempdir().unwrap();
    let file = temp_file(&dir, "truncated.wasm", b"\0asm\x0d\0\x01\0\xff\xff\xff");
    let error = load_err(&rule_runtime(), &file, World::DiscountRule);
    assert!(matches!(&error, LoadError::NotAComponent { .. }), "{error:?}");
    assert_names_file_and_world(&error, "truncated.wasm", World::DiscountRule);
}

fn forbidden_imports(name: &str) -> (LoadError, Vec<String>) {
    let error = load_err(&rule_runtime(), &wasm(name), World::DiscountRule);
    let LoadError::ForbiddenImport { imports, expected, .. } = &error else {
        panic!("expected a forbidden import, got {error:?}");
    };
    assert_eq!(*expected, World::DiscountRule);
    let imports = imports.clone();
    (error, imports)
}

#[test]
fn a_rule_importing_sockets_is_refused_at_load_time() {
    let (error, imports) = forbidden_imports("hostile_sockets");
    assert!(imports.iter().any(|i| i.starts_with("wasi:sockets/tcp")), "{imports:?}");
    // Only the forbidden imports are listed.
    assert!(imports.iter().all(|i| !smartmart::test_support::is_granted(i)), "{imports:?}");
    assert_names_file_and_world(&error, "hostile_sockets.wasm", World::DiscountRule);
    assert!(error.to_string().contains("`wasi:sockets/tcp@"), "{error}");
}

#[test]
fn a_rule_importing_the_file_system_is_refused_at_load_time() {
    let (error, imports) = forbidden_imports("hostile_files");
    assert!(imports.iter().any(|i| i.starts_with("wasi:filesystem/")), "{imports:?}");
    assert!(imports.iter().all(|i| !smartmart::test_support::is_granted(i)), "{imports:?}");
    assert_names_file_and_world(&error, "hostile_files.wasm", World::DiscountRule);
    assert!(error.to_string().contains("`wasi:filesystem/"), "{error}");
}

#[test]
fn a_command_component_is_refused_by_every_world() {
    for world in World::ALL {
        let error = load_err(&rule_runtime(), &wasm("command"), world);
        assert!(matches!(&error, LoadError::WrongWorld { expected, .. } if *expected == world), "{error:?}");
        assert_names_file_and_world(&error, "command.wasm", world);
        assert!(error.to_string().contains("smartmart:rules/meta"), "{error}");
    }
}

#[test]
fn a_fraud_check_is_refused_as_a_discount_rule() {
    let error = load_err(&rule_runtime(), &wasm("high_value"), World::DiscountRule);
    assert!(matches!(&error, LoadError::WrongWorld { .. }), "{error:?}");
    assert_names_file_and_world(&error, "high_value.wasm", World::DiscountRule);
    assert!(error.to_string().contains("smartmart:rules/discount@"), "{error}");
    // And a discount rule as a warehouse selector.
    let error = load_err(&rule_runtime(), &wasm("gold_loyalty"), World::WarehouseSelector);
    assert!(matches!(&error, LoadError::WrongWorld { .. }), "{error:?}");
    assert_names_file_and_world(&error, "gold_loyalty.wasm", World::WarehouseSelector);
}

#[test]
fn a_missing_file_is_a_read_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let error = load_err(&rule_runtime(), &dir.path().join("no_such_rule.wasm"), World::DiscountRule);
    let LoadError::Read { file, error: cause, .. } = &error else {
        panic!("expected a read error, got {error:?}");
    };
    assert!(file.ends_with("no_such_rule.wasm"));
    assert_eq!(cause.kind(), std::io::ErrorKind::NotFound);
    assert!(error.to_string().contains("no_such_rule.wasm"), "{error}");
    // The OS error is said once, also when the chain is printed whole.
    let os_error = cause.to_string();
    let whole = format!("{:#}", anyhow::Error::new(error));
    assert_eq!(whole.matches(&os_error).count(), 1, "{whole}");
}

#[test]
fn a_missing_file_refusal_names_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let error = load_err(&rule_runtime(), &dir.path().join("no_such_rule.wasm"), World::DiscountRule);
    assert_names_file_and_world(&error, "no_such_rule.wasm", World::DiscountRule);
}

#[test]
fn unusable_budgets_are_refused_naming_the_file_and_the_world() {
    let zero_time = Budgets { time_ms: 0, ..Budgets::default() };
    let error = rule_runtime()
        .load(&wasm("gold_loyalty"), World::DiscountRule, ModuleConfig::new(), zero_time)
        .map(|m| m.identity().clone())
        .unwrap_err();
    assert!(matches!(&error, LoadError::Budgets { .. }), "{error:?}");
    assert_names_file_and_world(&error, "gold_loyalty.wasm", World::DiscountRule);
    assert!(error.to_string().contains("time_ms"), "{error}");
}

#[test]
fn a_module_called_through_another_world_fails_without_running() {
    let gold = load_rule(&rule_runtime(), "gold_loyalty", World::DiscountRule, &[], budgets());
    let input = example_order("gold-basic");
    let cause = failure(gold.select_warehouses(&input.order, &input.candidates));
    assert!(matches!(&cause, FailureCause::Instantiate(m) if m.contains("warehouse-selector")), "{cause:?}");
}

// ---- a fresh instance per call -----------------------------------------------------------------

#[test]
fn every_call_gets_a_fresh_instance() {
    let gold = load_rule(&rule_runtime(), "gold_loyalty", World::DiscountRule, &[], budgets());
    let (gold_order, silver_order) = (order("gold-basic"), order("silver-out-of-stock"));
    let first = gold.apply_discount(&gold_order).unwrap();
    assert_eq!(first.value, gold_basic_discount());
    assert!(first.usage.fuel > 0, "{:?}", first.usage);
    assert!(first.usage.peak_memory_bytes > 0, "{:?}", first.usage);
    assert!(first.usage.elapsed > Duration::ZERO, "{:?}", first.usage);
    for i in 0..1_000 {
        // Interleave another customer: a leak from one call would show in the next.
        if i % 10 == 0 {
            assert_eq!(discount(&gold, &silver_order), [], "call {i}");
        }
        let call = gold.apply_discount(&gold_order).unwrap();
        assert_eq!(call.value, first.value, "call {i}");
        // A fresh instance runs the same instructions on the same input.
        assert_eq!(call.usage.fuel, first.usage.fuel, "call {i}");
        assert_eq!(call.usage.peak_memory_bytes, first.usage.peak_memory_bytes, "call {i}");
    }
}

#[test]
fn every_call_of_a_stateful_looking_rule_is_fresh_too() {
    // The warehouse selector allocates (a HashMap with a seeded hasher): the
    // seed is fixed, and no allocation survives the call.
    let selector = load_rule(&rule_runtime(), "nearest_warehouse", World::WarehouseSelector, &[], budgets());
    let input = example_order("gold-basic");
    let first = selector.select_warehouses(&input.order, &input.candidates).unwrap();
    assert!(first.usage.fuel > 0);
    for i in 0..200 {
        let call = selector.select_warehouses(&input.order, &input.candidates).unwrap();
        assert_eq!(call.value, first.value, "call {i}");
        assert_eq!(call.usage.fuel, first.usage.fuel, "call {i}");
    }
}

// ---- the compiled-artifact cache ---------------------------------------------------------------

fn cached_runtime(dir: &Path) -> RuleRuntime {
    RuleRuntime::new(RuntimeOptions { cache_dir: Some(dir.to_owned()), max_instances: 8 }).unwrap()
}

fn cwasm_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

fn all_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[cfg(unix)]
fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

#[cfg(not(unix))]
fn inode(_path: &Path) -> u64 {
    0
}

#[test]
fn compiled_artifacts_are_cached_by_digest_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first = load_rule(&cached_runtime(dir.path()), "gold_loyalty", World::DiscountRule, &[], budgets());
    let files = cwasm_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(all_files(dir.path()), 1, "a temporary file was left behind");
    let artifact = &files[0];
    let hex = first.identity().digest.strip_prefix("sha256:").unwrap();
    let file_name = artifact.file_name().unwrap().to_string_lossy();
    assert!(file_name.starts_with(hex), "{file_name} is not named by the digest {hex}");
    let (written, ino) = (std::fs::metadata(artifact).unwrap().modified().unwrap(), inode(artifact));

    // Another runtime (same engine configuration) takes it from the cache.
    let runtime = cached_runtime(dir.path());
    let second = load_rule(&runtime, "gold_loyalty", World::DiscountRule, &[], budgets());
    assert_eq!(cwasm_files(dir.path()), files);
    assert_eq!(std::fs::metadata(artifact).unwrap().modified().unwrap(), written, "the artifact was rewritten");
    assert_eq!(inode(artifact), ino, "the artifact was replaced");
    assert_eq!(second.identity(), first.identity());
    assert_eq!(discount(&second, &order("gold-basic")), gold_basic_discount());

    // Another module gets its own artifact.
    load_rule(&runtime, "coupons", World::DiscountRule, COUPON_CONFIG, budgets());
    assert_eq!(cwasm_files(dir.path()).len(), 2);
}

#[test]
fn a_corrupted_cached_artifact_is_discarded_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    load_rule(&cached_runtime(dir.path()), "gold_loyalty", World::DiscountRule, &[], budgets());
    let artifact = cwasm_files(dir.path()).pop().unwrap();
    let good = std::fs::read(&artifact).unwrap();

    let garbage = b"definitely not an ELF artifact".to_vec();
    let truncated = good[..good.len() / 2].to_vec();
    for (what, corrupt) in [("garbage", garbage), ("truncated", truncated), ("empty", Vec::new())] {
        std::fs::write(&artifact, &corrupt).unwrap();
        let module = load_rule(&cached_runtime(dir.path()), "gold_loyalty", World::DiscountRule, &[], budgets());
        assert_eq!(discount(&module, &order("gold-basic")), gold_basic_discount(), "{what}");
        assert_eq!(cwasm_files(dir.path()), std::slice::from_ref(&artifact), "{what}");
        let rewritten = std::fs::read(&artifact).unwrap();
        assert_ne!(rewritten, corrupt, "{what}: the corrupted artifact was kept");
        assert!(rewritten.starts_with(b"\x7fELF"), "{what}: not an artifact");
    }
}
