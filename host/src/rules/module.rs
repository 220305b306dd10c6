//! A loaded rule module: its identity, its pre-linked instance, and the
//! calls into it. Every call gets a fresh instance in a fresh store, so no
//! state leaks from one order into the next, and a trapped instance is
//! simply dropped.
//!
//! Each call comes in two forms. The synchronous one (`apply_discount`, …)
//! runs the guest to the end on the calling thread: the rule tools, reload
//! checks, and the fraud checks and shadows on the rule threads. The async
//! one (`apply_discount_async`, …) runs it on the calling task, the order's
//! own, without a hand-off to another thread: the guest runs on a fiber and
//! yields to the executor at every epoch tick ([`super::epoch::EPOCH_TICK`]), so a guest
//! that loops holds a worker for at most a tick at a time, and its time
//! budget ends it as in a synchronous call ([`FailureCause::TimeBudget`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{DiscountRulePre, FraudCheckPre, GuestError, WarehouseSelectorPre, wit};
use super::budgets::{Budgets, OutputCharge};
use super::engine::{Compiled, RuleRuntime};
use super::error::{FailureCause, LoadError, RuleError};
use super::state::{LogLine, ModuleConfig, RuleState};
use super::text;
use super::types::{Candidate, OrderContext, PaymentSummary, Plan, RuleInfo, Verdict};
use super::world::World;
use crate::domain::order::DiscountLine;

/// Wall-clock deadline of the `meta.info` call made while loading, in ms.
const LOAD_TIME_MS: u64 = 2_000;

/// Longest name or version a module may report (`meta.info`), in bytes. A
/// name or version is also refused when it is empty (or only whitespace) or
/// holds a control character ([`text::is_unsafe_char`]): it names the module
/// in logs, terminals, metrics and invoices, verbatim.
pub const MAX_NAME_BYTES: usize = 64;

/// What wasmtime's error says when a lift ran out of hostcall fuel (its
/// error type is private). `=48.0.8` is pinned; the hostile-output tests
/// fail if a new version words it otherwise.
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

thread_local! {
    /// Set on the rule threads (see [`super::pool`]).
    static ON_RULE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as a rule thread: calls run on it directly.
pub(crate) fn mark_rule_thread() {
    ON_RULE_THREAD.set(true);
}

/// Runs synchronous rule calls on the rule threads (see [`super::pool`]):
/// they never stall an async worker, and WASI calls a guest makes (a panic
/// message) work there. The order path needs none: it makes the async calls.
pub async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    super::pool::run(f).await
}

/// Who a module is, everywhere it is named: invoices, events, metrics, errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleIdentity {
    /// The world it implements.
    pub world: World,
    /// Its file name, e.g. `gold_loyalty.wasm`.
    pub file: String,
    /// Name and version the module reports (`meta.info`).
    pub name: String,
    pub version: String,
    pub description: String,
    /// `sha256:` and the hex digest of the file's bytes.
    pub digest: String,
}

impl std::fmt::Display for ModuleIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}@{} ({})", self.file, self.name, self.version, short_digest(&self.digest))
    }
}

fn short_digest(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// The module's instance, pre-linked for its world.
#[derive(Clone)]
enum Prepared {
    Discount(DiscountRulePre<RuleState>),
    Warehouse(WarehouseSelectorPre<RuleState>),
    Fraud(FraudCheckPre<RuleState>),
}

/// A module ready to be called. Cloning is cheap (reference counted).
#[derive(Clone)]
pub struct RuleModule {
    identity: Arc<ModuleIdentity>,
    path: PathBuf,
    imports: Arc<[String]>,
    /// Whether any import is a WASI interface (see [`RuleModule::call`]).
    uses_wasi: bool,
    /// Linked with synchronous WASI, for the synchronous calls.
    prepared: Arc<Prepared>,
    /// Linked with asynchronous WASI, for the async calls: a guest's WASI
    /// call (its panic message on stderr) must not block the worker. The
    /// same as `prepared` for a module without WASI imports.
    prepared_async: Arc<Prepared>,
    runtime: RuleRuntime,
    config: Arc<ModuleConfig>,
    /// [`super::config_hash::config_hash`] of `config`, computed once.
    config_hash: Arc<str>,
    label: Arc<str>,
    budgets: Budgets,
}

/// What one call used.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    #[serde(serialize_with = "as_micros")]
    pub elapsed: Duration,
    pub fuel: u64,
    pub peak_memory_bytes: usize,
    /// What the output budget charged for the answer (or typed error), as
    /// [`OutputCharge`] counts it; `None` when the call produced none (a
    /// trap, an exhausted budget) or for a native rule, which has no budget.
    pub output_bytes: Option<usize>,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e6)
}

/// A rule's answer together with what producing it cost.
#[derive(Debug, Clone)]
pub struct Called<T> {
    pub value: T,
    pub usage: Usage,
}

/// Everything one call produced, whatever its outcome: the answer or why
/// there is none, what the call used, what the rule logged. The order path
/// needs only [`Called`]; rule authors' tools (`smartmart rules run`) show
/// the rest, above all on a failure.
#[derive(Debug)]
pub struct Traced<T> {
    pub result: Result<T, RuleError>,
    pub usage: Usage,
    /// Lines the rule logged, within the host's log budget.
    pub log: Vec<LogLine>,
}

impl<T> Traced<T> {
    /// A call that failed before the rule ran: nothing used, nothing logged.
    fn not_run(error: RuleError) -> Self {
        Traced {
            result: Err(error),
            usage: Usage { elapsed: Duration::ZERO, fuel: 0, peak_memory_bytes: 0, output_bytes: None },
            log: Vec::new(),
        }
    }

    /// The answer with its usage, as the order path takes it.
    pub fn into_called(self) -> Result<Called<T>, RuleError> {
        self.result.map(|value| Called { value, usage: self.usage })
    }
}

impl RuleModule {
    /// Binds a compiled component to `world`, failing if it does not
    /// implement it, then asks it who it is.
    pub(crate) fn bind(
        runtime: &RuleRuntime,
        file: &Path,
        compiled: Compiled,
        world: World,
        config: Arc<ModuleConfig>,
        budgets: Budgets,
    ) -> Result<RuleModule, LoadError> {
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            file: file.to_owned(),
            expected: world,
            reason: format!("{e:#}"),
        };
        let prepare = |linker: &wasmtime::component::Linker<RuleState>| -> wasmtime::Result<Prepared> {
            let pre = linker.instantiate_pre(&compiled.component)?;
            Ok(match world {
                World::DiscountRule => Prepared::Discount(DiscountRulePre::new(pre)?),
                World::WarehouseSelector => Prepared::Warehouse(WarehouseSelectorPre::new(pre)?),
                World::FraudCheck => Prepared::Fraud(FraudCheckPre::new(pre)?),
            })
        };
        let uses_wasi = compiled.imports.iter().any(|import| import.starts_with("wasi:"));
        let prepared = Arc::new(prepare(runtime.linker()).map_err(wrong_world)?);
        // Without WASI imports nothing of the linkers differs: one pre serves both.
        let prepared_async =
            if uses_wasi { Arc::new(prepare(runtime.async_linker()).map_err(wrong_world)?) } else { prepared.clone() };
        let file_name =
            file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());
        let mut module = RuleModule {
            identity: Arc::new(ModuleIdentity {
                world,
                file: file_name.clone(),
                name: String::new(),
                version: String::new(),
                description: String::new(),
                digest: compiled.digest,
            }),
            path: file.to_owned(),
            uses_wasi,
            imports: compiled.imports.into(),
            prepared,
            prepared_async,
            runtime: runtime.clone(),
            config_hash: Arc::from(super::config_hash::config_hash(&config)),
            config,
            label: Arc::from(file_name.as_str()),
            budgets,
        };
        // Loading is off the order path, and a module's first instance pays
        // for page faults of its fresh memory: a generous deadline here keeps
        // a busy machine from refusing a good module (fuel still bounds it).
        let describe_budgets = Budgets { time_ms: budgets.time_ms.max(LOAD_TIME_MS), ..budgets };
        let info = module.with_budgets(describe_budgets).info().map_err(|e| LoadError::Describe {
            file: file.to_owned(),
            expected: world,
            cause: e.to_string(),
        })?;
        for (field, value) in [("name", &info.value.name), ("version", &info.value.version)] {
            check_identity_field(value).map_err(|reason| LoadError::BadIdentity {
                file: file.to_owned(),
                expected: world,
                field,
                reason,
            })?;
        }
        let identity = Arc::make_mut(&mut module.identity);
        identity.name = info.value.name;
        identity.version = info.value.version;
        identity.description = info.value.description;
        module.label = Arc::from(format!("{}@{}", identity.name, identity.version));
        Ok(module)
    }

    pub fn identity(&self) -> &Arc<ModuleIdentity> {
        &self.identity
    }

    /// The same module under other budgets.
    pub fn with_budgets(&self, budgets: Budgets) -> RuleModule {
        RuleModule { budgets, ..self.clone() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    pub fn config(&self) -> &ModuleConfig {
        &self.config
    }

    /// `sha256:…` of the configuration (see [`super::config_hash`]).
    pub fn config_hash(&self) -> &str {
        &self.config_hash
    }

    /// The module's own description of itself.
    pub fn info(&self) -> Result<Called<RuleInfo>, RuleError> {
        self.info_traced().into_called()
    }

    /// [`RuleModule::info`], with the call's usage and log whatever its outcome.
    pub fn info_traced(&self) -> Traced<RuleInfo> {
        self.call(|store, prepared| {
            let info = match prepared {
                Prepared::Discount(pre) => {
                    pre.instantiate(&mut *store)?.smartmart_rules_meta().call_info(store)?.into()
                }
                Prepared::Warehouse(pre) => {
                    pre.instantiate(&mut *store)?.smartmart_rules_meta().call_info(store)?.into()
                }
                Prepared::Fraud(pre) => pre.instantiate(&mut *store)?.smartmart_rules_meta().call_info(store)?.into(),
            };
            Ok(Ok(info))
        })
    }

    /// Runs a discount rule on an order.
    pub fn apply_discount(&self, order: &OrderContext) -> Result<Called<Vec<DiscountLine>>, RuleError> {
        self.apply_discount_traced(order).into_called()
    }

    /// [`RuleModule::apply_discount`], with the call's usage and log whatever its outcome.
    pub fn apply_discount_traced(&self, order: &OrderContext) -> Traced<Vec<DiscountLine>> {
        let Prepared::Discount(pre) = &*self.prepared else {
            return Traced::not_run(self.not_this_world(World::DiscountRule));
        };
        let input = wit::OrderContext::from(order);
        self.call(|store, _| {
            let instance = pre.instantiate(&mut *store)?;
            let answer = instance.smartmart_rules_discount().call_apply(&mut *store, &input)?;
            let answer = charged(store, answer);
            Ok(answer.map(|lines| lines.into_iter().map(Into::into).collect()).map_err(Into::into))
        })
    }

    /// Asks a warehouse selector for an allocation plan.
    pub fn select_warehouses(&self, order: &OrderContext, candidates: &[Candidate]) -> Result<Called<Plan>, RuleError> {
        self.select_warehouses_traced(order, candidates).into_called()
    }

    /// [`RuleModule::select_warehouses`], with the call's usage and log whatever its outcome.
    pub fn select_warehouses_traced(&self, order: &OrderContext, candidates: &[Candidate]) -> Traced<Plan> {
        let Prepared::Warehouse(pre) = &*self.prepared else {
            return Traced::not_run(self.not_this_world(World::WarehouseSelector));
        };
        let input = wit::OrderContext::from(order);
        let candidates: Vec<_> = candidates.iter().map(Into::into).collect();
        self.call(|store, _| {
            let instance = pre.instantiate(&mut *store)?;
            let answer = instance.smartmart_rules_warehouse().call_select(&mut *store, &input, &candidates)?;
            let answer = charged(store, answer);
            Ok(answer.map(Into::into).map_err(Into::into))
        })
    }

    /// Runs a fraud check on a placed order.
    pub fn check_fraud(&self, order: &OrderContext, payment: &PaymentSummary) -> Result<Called<Verdict>, RuleError> {
        self.check_fraud_traced(order, payment).into_called()
    }

    /// [`RuleModule::check_fraud`], with the call's usage and log whatever its outcome.
    pub fn check_fraud_traced(&self, order: &OrderContext, payment: &PaymentSummary) -> Traced<Verdict> {
        let Prepared::Fraud(pre) = &*self.prepared else {
            return Traced::not_run(self.not_this_world(World::FraudCheck));
        };
        let input = wit::OrderContext::from(order);
        let payment = payment.into();
        self.call(|store, _| {
            let instance = pre.instantiate(&mut *store)?;
            let answer = instance.smartmart_rules_fraud().call_check(&mut *store, &input, &payment)?;
            let answer = charged(store, answer);
            Ok(answer.map(Into::into).map_err(Into::into))
        })
    }

    /// [`RuleModule::info`] on the calling task (see the module's doc).
    pub async fn info_async(&self) -> Result<Called<RuleInfo>, RuleError> {
        let (mut store, started) = self.fresh_async_store()?;
        let outcome: wasmtime::Result<Result<RuleInfo, GuestError>> = async {
            let store = &mut store;
            Ok(Ok(match &*self.prepared_async {
                Prepared::Discount(pre) => {
                    let meta = pre.instantiate_async(&mut *store).await?;
                    let (info,) = meta.smartmart_rules_meta().func_info().call_async(store, ()).await?;
                    info.into()
                }
                Prepared::Warehouse(pre) => {
                    let meta = pre.instantiate_async(&mut *store).await?;
                    let (info,) = meta.smartmart_rules_meta().func_info().call_async(store, ()).await?;
                    info.into()
                }
                Prepared::Fraud(pre) => {
                    let meta = pre.instantiate_async(&mut *store).await?;
                    let (info,) = meta.smartmart_rules_meta().func_info().call_async(store, ()).await?;
                    info.into()
                }
            }))
        }
        .await;
        self.finish(store, started, outcome).into_called()
    }

    /// [`RuleModule::apply_discount`] on the calling task (see the module's doc).
    pub async fn apply_discount_async(&self, order: &OrderContext) -> Result<Called<Vec<DiscountLine>>, RuleError> {
        let Prepared::Discount(pre) = &*self.prepared_async else {
            return Err(self.not_this_world(World::DiscountRule));
        };
        let input = wit::OrderContext::from(order);
        let (mut store, started) = self.fresh_async_store()?;
        let outcome = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let (answer,) = instance.smartmart_rules_discount().func_apply().call_async(&mut store, (&input,)).await?;
            let answer = charged(&mut store, answer);
            Ok(answer.map(|lines| lines.into_iter().map(Into::into).collect()).map_err(Into::into))
        }
        .await;
        self.finish(store, started, outcome).into_called()
    }

    /// [`RuleModule::select_warehouses`] on the calling task (see the module's doc).
    pub async fn select_warehouses_async(
        &self,
        order: &OrderContext,
        candidates: &[Candidate],
    ) -> Result<Called<Plan>, RuleError> {
        let Prepared::Warehouse(pre) = &*self.prepared_async else {
            return Err(self.not_this_world(World::WarehouseSelector));
        };
        let input = wit::OrderContext::from(order);
        let candidates: Vec<_> = candidates.iter().map(Into::into).collect();
        let (mut store, started) = self.fresh_async_store()?;
        let outcome = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let selector = instance.smartmart_rules_warehouse().func_select();
            let (answer,) = selector.call_async(&mut store, (&input, &candidates)).await?;
            let answer = charged(&mut store, answer);
            Ok(answer.map(Into::into).map_err(Into::into))
        }
        .await;
        self.finish(store, started, outcome).into_called()
    }

    fn not_this_world(&self, wanted: World) -> RuleError {
        self.failed(FailureCause::Instantiate(format!("module implements {}, not {wanted}", self.identity.world)))
    }

    fn failed(&self, cause: FailureCause) -> RuleError {
        RuleError::Failed { module: self.identity.clone(), cause }
    }

    /// Instantiates the module in a fresh store under its budgets and drops
    /// the instance without calling it: the part of every call that comes
    /// before the guest runs (the rules benchmark sets it beside the calls).
    pub fn instantiate(&self) -> Result<Called<()>, RuleError> {
        self.call(|store, prepared| {
            // The instance is dropped at once: its store ends with the call.
            match prepared {
                Prepared::Discount(pre) => pre.instantiate(store).map(|_| ())?,
                Prepared::Warehouse(pre) => pre.instantiate(store).map(|_| ())?,
                Prepared::Fraud(pre) => pre.instantiate(store).map(|_| ())?,
            }
            Ok(Ok(()))
        })
        .into_called()
    }

    /// Builds the fresh store of a call under the module's budgets and drops
    /// it, instantiating nothing: the host's own per-call set-up, for the
    /// rules benchmark.
    #[doc(hidden)]
    pub fn fresh_store_only(&self) -> Result<(), RuleError> {
        self.fresh_store().map(drop)
    }

    /// The store of one call: the call's state (log, config, meters), its
    /// memory limiter, fuel, epoch deadline and output budget.
    fn fresh_store(&self) -> Result<Store<RuleState>, RuleError> {
        let budgets = self.budgets;
        let mut state = RuleState::new(self.label.clone(), self.config.clone(), budgets.memory_bytes);
        state.in_flight = Some(self.runtime.call_started());
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|state| state);
        store.set_fuel(budgets.fuel).map_err(|e| self.failed(FailureCause::Instantiate(e.to_string())))?;
        store.set_epoch_deadline(budgets.time_ms.div_ceil(super::epoch::EPOCH_TICK.as_millis() as u64));
        // The output budget, enforced while wasmtime lifts what the guest
        // hands over (the answer, each host call's arguments): a string or
        // list is charged before it is copied, so an answer of a thousand
        // strings aliasing one buffer is refused at the budget, not after
        // the host has copied every alias.
        store.set_hostcall_fuel(budgets.output_bytes);
        Ok(store)
    }

    /// The store of one async call and the instant its time budget counts
    /// from: as [`RuleModule::fresh_store`], except that at every epoch tick
    /// the guest yields to the executor (so that other tasks of its worker
    /// run), until the call's wall-clock budget is spent: then it traps with
    /// [`Trap::Interrupt`], as a synchronous call does at its deadline.
    fn fresh_async_store(&self) -> Result<(Store<RuleState>, Instant), RuleError> {
        let started = Instant::now();
        let mut store = self.fresh_store()?;
        let budget = Duration::from_millis(self.budgets.time_ms);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() >= budget {
                return Ok(UpdateDeadline::Interrupt);
            }
            // Tokio's own yield (which wasmtime's documentation recommends
            // under tokio) puts the task behind the worker's other tasks and
            // lets its driver run, rather than polling it again at once.
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        Ok((store, started))
    }

    /// One call in a fresh store under the module's budgets; classifies
    /// every way it can go wrong.
    fn call<T: Send>(
        &self,
        body: impl FnOnce(&mut Store<RuleState>, &Prepared) -> wasmtime::Result<Result<T, GuestError>> + Send,
    ) -> Traced<T> {
        let started = Instant::now();
        let mut store = match self.fresh_store() {
            Ok(store) => store,
            Err(error) => return Traced::not_run(error),
        };
        // wasmtime-wasi's synchronous WASI bindings block on the current
        // Tokio runtime (`in_tokio`), which panics on a thread that drives
        // one: a guest touching WASI (its panic message on stderr, a hostile
        // file or socket call) would bring down the order's task instead of
        // failing the rule. On a rule thread (`run_blocking`) there is no
        // runtime; anywhere else inside a runtime the guest runs on a thread
        // of its own, unless it imports no WASI at all (the bundled rules):
        // then nothing it can call blocks on a runtime. (The async calls
        // need none of this: their WASI is asynchronous.)
        let outcome = if self.uses_wasi && !ON_RULE_THREAD.get() && tokio::runtime::Handle::try_current().is_ok() {
            let prepared = &*self.prepared;
            let store = &mut store;
            std::thread::scope(|scope| scope.spawn(move || body(store, prepared)).join())
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        } else {
            body(&mut store, &self.prepared)
        };
        self.finish(store, started, outcome)
    }

    /// What a call left in its store, once the guest is done: its usage,
    /// its log, and its outcome classified.
    fn finish<T>(
        &self,
        mut store: Store<RuleState>,
        started: Instant,
        outcome: wasmtime::Result<Result<T, GuestError>>,
    ) -> Traced<T> {
        let budgets = self.budgets;
        let fuel = budgets.fuel - store.get_fuel().unwrap_or(0);
        let usage = Usage {
            elapsed: started.elapsed(),
            fuel,
            peak_memory_bytes: store.data().peak_memory,
            output_bytes: store.data().answer_charge,
        };
        if let Some((lines, bytes)) = store.data().log_dropped() {
            tracing::warn!(
                module = %self.label, dropped_lines = lines, dropped_bytes = bytes,
                "rule log budget exceeded ({} lines, {} bytes per call): dropped {lines} lines, {bytes} bytes",
                super::state::MAX_LOG_LINES, super::state::MAX_LOG_BYTES,
            );
        }
        let log = std::mem::take(&mut store.data_mut().logged);
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(GuestError::Refused(refusal))) => Err(RuleError::Refused { module: self.identity.clone(), refusal }),
            Ok(Err(GuestError::Failed(message))) => Err(self.failed(FailureCause::Guest(message))),
            Err(error) => Err(self.failed(self.classify_trap(&error, store.data()))),
        };
        Traced { result, usage, log }
    }

    fn classify_trap(&self, error: &wasmtime::Error, state: &RuleState) -> FailureCause {
        let budgets = self.budgets;
        if state.memory_denied {
            return FailureCause::MemoryBudget(budgets.memory_bytes);
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => FailureCause::FuelBudget(budgets.fuel),
            Some(Trap::Interrupt) => FailureCause::TimeBudget(budgets.time_ms),
            Some(trap) => {
                let output = state.guest_output();
                let detail = if output.is_empty() { trap.to_string() } else { format!("{trap}; guest said: {output}") };
                FailureCause::Trap(detail)
            }
            // The instance pool is full: calls in flight are bounded by it.
            None if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                FailureCause::Instantiate(error.to_string())
            }
            None if error.chain().any(|e| e.to_string().contains(HOSTCALL_FUEL_EXHAUSTED)) => {
                FailureCause::OutputTooLarge { limit: budgets.output_bytes }
            }
            // The chain may quote the guest (its function names in a backtrace).
            None => FailureCause::Trap(text::failure_text(&format!("{error:#}"))),
        }
    }
}

/// Notes in the call's state what the output budget charged for `answer`
/// (the lifted answer or typed error, before it is converted): the one
/// measure of output every report shows.
fn charged<A: OutputCharge>(store: &mut Store<RuleState>, answer: A) -> A {
    store.data_mut().answer_charge = Some(answer.output_charge());
    answer
}

/// Why a name or version reported by `meta.info` cannot name a module.
fn check_identity_field(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("it is empty".into());
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(format!("{} bytes, more than {MAX_NAME_BYTES}", value.len()));
    }
    if text::has_unsafe_chars(value) {
        return Err(format!("\"{}\" holds control characters", text::escape(value)));
    }
    Ok(())
}
