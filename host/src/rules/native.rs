//! Rules as native Rust closures, behind the same calls as a WebAssembly
//! module. Not for production rule sets (they are not sandboxed, nor
//! replaceable without a rebuild): they are the baseline that measures what
//! the sandbox costs (benches/pipeline.rs).

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument as _;

use super::module::{Called, ModuleIdentity, RuleModule, Usage};
use super::types::{Candidate, OrderContext, PaymentSummary, Plan, Refusal, Verdict};
use super::{RuleError, World};
use crate::domain::order::DiscountLine;

type DiscountFn = dyn Fn(&OrderContext) -> Result<Vec<DiscountLine>, Refusal> + Send + Sync;
type SelectFn = dyn Fn(&OrderContext, &[Candidate]) -> Result<Plan, Refusal> + Send + Sync;
type FraudFn = dyn Fn(&OrderContext, &PaymentSummary) -> Verdict + Send + Sync;

/// A rule's logic as a closure.
#[derive(Clone)]
pub enum NativeLogic {
    Discount(Arc<DiscountFn>),
    Warehouse(Arc<SelectFn>),
    Fraud(Arc<FraudFn>),
}

/// A native rule with an identity, so invoices name it like a module.
#[derive(Clone)]
pub struct NativeRule {
    identity: Arc<ModuleIdentity>,
    logic: NativeLogic,
}

impl NativeRule {
    pub fn new(name: &str, logic: NativeLogic) -> NativeRule {
        let world = match logic {
            NativeLogic::Discount(_) => World::DiscountRule,
            NativeLogic::Warehouse(_) => World::WarehouseSelector,
            NativeLogic::Fraud(_) => World::FraudCheck,
        };
        NativeRule {
            identity: Arc::new(ModuleIdentity {
                world,
                file: format!("native:{name}"),
                name: name.into(),
                version: "native".into(),
                description: "native closure (benchmark baseline)".into(),
                digest: "native".into(),
            }),
            logic,
        }
    }
}

/// A rule of a slot: a sandboxed module, or a native closure.
#[derive(Clone)]
pub enum Rule {
    Wasm(RuleModule),
    Native(NativeRule),
}

impl From<RuleModule> for Rule {
    fn from(module: RuleModule) -> Self {
        Rule::Wasm(module)
    }
}

fn usage(started: Instant) -> Usage {
    Usage { elapsed: started.elapsed(), fuel: 0, peak_memory_bytes: 0, output_bytes: None }
}

impl Rule {
    pub fn identity(&self) -> &Arc<ModuleIdentity> {
        match self {
            Rule::Wasm(m) => m.identity(),
            Rule::Native(n) => &n.identity,
        }
    }

    /// The module's configuration (empty for a native rule).
    pub fn config(&self) -> super::ModuleConfig {
        match self {
            Rule::Wasm(m) => m.config().clone(),
            Rule::Native(_) => super::ModuleConfig::new(),
        }
    }

    /// `sha256:…` of the module's configuration; a native rule has none
    /// (the hash of the empty configuration).
    pub fn config_hash(&self) -> &str {
        // Computed once, like a module's (it is read on the order path).
        static EMPTY: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| super::config_hash::config_hash(&super::ModuleConfig::new()));
        match self {
            Rule::Wasm(m) => m.config_hash(),
            Rule::Native(_) => &EMPTY,
        }
    }

    /// The module's budgets (the defaults for a native rule).
    pub fn budgets(&self) -> super::Budgets {
        match self {
            Rule::Wasm(m) => m.budgets(),
            Rule::Native(_) => super::Budgets::default(),
        }
    }

    /// The largest of fuel, memory, wall time and output `usage` took of
    /// the budgets, each as its budget charges it (0 for a native rule,
    /// which has none).
    pub fn budget_use(&self, usage: &Usage) -> f64 {
        let Rule::Wasm(m) = self else { return 0.0 };
        let b = m.budgets();
        let fuel = usage.fuel as f64 / b.fuel.max(1) as f64;
        let memory = usage.peak_memory_bytes as f64 / b.memory_bytes.max(1) as f64;
        let time = usage.elapsed.as_secs_f64() * 1e3 / b.time_ms.max(1) as f64;
        let output = usage.output_bytes.unwrap_or(0) as f64 / b.output_bytes.max(1) as f64;
        fuel.max(memory).max(time).max(output)
    }

    fn wrong_world(&self) -> RuleError {
        RuleError::Failed {
            module: self.identity().clone(),
            cause: super::FailureCause::Instantiate("native rule of another slot".into()),
        }
    }

    fn refused(&self, refusal: Refusal) -> RuleError {
        RuleError::Refused { module: self.identity().clone(), refusal }
    }

    pub fn apply_discount(&self, order: &OrderContext) -> Result<Called<Vec<DiscountLine>>, RuleError> {
        self.traced(|| match self {
            Rule::Wasm(m) => m.apply_discount(order),
            Rule::Native(_) => self.apply_discount_natively(order),
        })
    }

    fn apply_discount_natively(&self, order: &OrderContext) -> Result<Called<Vec<DiscountLine>>, RuleError> {
        let Rule::Native(NativeRule { logic: NativeLogic::Discount(f), .. }) = self else {
            return Err(self.wrong_world());
        };
        let started = Instant::now();
        let value = f(order).map_err(|r| self.refused(r))?;
        Ok(Called { value, usage: usage(started) })
    }

    pub fn select_warehouses(&self, order: &OrderContext, candidates: &[Candidate]) -> Result<Called<Plan>, RuleError> {
        self.traced(|| match self {
            Rule::Wasm(m) => m.select_warehouses(order, candidates),
            Rule::Native(_) => self.select_warehouses_natively(order, candidates),
        })
    }

    fn select_warehouses_natively(
        &self,
        order: &OrderContext,
        candidates: &[Candidate],
    ) -> Result<Called<Plan>, RuleError> {
        let Rule::Native(NativeRule { logic: NativeLogic::Warehouse(f), .. }) = self else {
            return Err(self.wrong_world());
        };
        let started = Instant::now();
        let value = f(order, candidates).map_err(|r| self.refused(r))?;
        Ok(Called { value, usage: usage(started) })
    }

    pub fn check_fraud(&self, order: &OrderContext, payment: &PaymentSummary) -> Result<Called<Verdict>, RuleError> {
        self.traced(|| match self {
            Rule::Wasm(m) => m.check_fraud(order, payment),
            Rule::Native(NativeRule { logic: NativeLogic::Fraud(f), .. }) => {
                let started = Instant::now();
                Ok(Called { value: f(order, payment), usage: usage(started) })
            }
            Rule::Native(_) => Err(self.wrong_world()),
        })
    }

    /// [`Rule::apply_discount`] on the calling task: a module's call runs
    /// there, yielding at every epoch tick (see [`RuleModule`]).
    pub async fn apply_discount_async(&self, order: &OrderContext) -> Result<Called<Vec<DiscountLine>>, RuleError> {
        let span = self.span();
        let result = match self {
            Rule::Wasm(m) => m.apply_discount_async(order).instrument(span.clone()).await,
            Rule::Native(_) => span.in_scope(|| self.apply_discount_natively(order)),
        };
        record_outcome(&span, &result);
        result
    }

    /// [`Rule::select_warehouses`] on the calling task: a module's call runs
    /// there, yielding at every epoch tick (see [`RuleModule`]).
    pub async fn select_warehouses_async(
        &self,
        order: &OrderContext,
        candidates: &[Candidate],
    ) -> Result<Called<Plan>, RuleError> {
        let span = self.span();
        let result = match self {
            Rule::Wasm(m) => m.select_warehouses_async(order, candidates).instrument(span.clone()).await,
            Rule::Native(_) => span.in_scope(|| self.select_warehouses_natively(order, candidates)),
        };
        record_outcome(&span, &result);
        result
    }

    /// Makes `call` in a `rule` span naming the module (`DEBUG`: exported
    /// with the traces, in the log only when `RUST_LOG` asks for it), a
    /// child of the caller's span (on a rule thread, the span `pool::run`
    /// carried over), with the call's outcome: `ok`, `refused` (the
    /// order's fault) or `failed` (also the span's error status).
    fn traced<T>(&self, call: impl FnOnce() -> Result<Called<T>, RuleError>) -> Result<Called<T>, RuleError> {
        let span = self.span();
        let result = span.in_scope(call);
        record_outcome(&span, &result);
        result
    }

    /// The `rule` span of a call (see [`Rule::traced`]), its outcome not yet known.
    fn span(&self) -> tracing::Span {
        let identity = self.identity();
        tracing::debug_span!(
            "rule",
            rule.name = identity.name.as_str(),
            rule.version = identity.version.as_str(),
            rule.digest = identity.digest.as_str(),
            rule.world = identity.world.name(),
            rule.file = identity.file.as_str(),
            rule.outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    }
}

/// Records a call's outcome on its `rule` span: `ok`, `refused` (the
/// order's fault) or `failed` (also the span's error status).
fn record_outcome<T>(span: &tracing::Span, result: &Result<Called<T>, RuleError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(RuleError::Refused { .. }) => "refused",
        Err(RuleError::Failed { .. }) => {
            span.record("otel.status_code", "ERROR");
            "failed"
        }
    };
    span.record("rule.outcome", outcome);
}
