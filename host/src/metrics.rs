//! Prometheus metrics, in a registry owned by the engine (no global state,
//! so several engines can live in one process, as the tests do).

use crate::domain::status::Slot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub slot: String,
    pub module: String,
    pub version: String,
    pub variant: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub canary: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the engine exports.
pub struct Metrics {
    pub registry: Registry,
    pub orders: Family<OutcomeLabels, Counter>,
    pub stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    pub rule_calls: Family<RuleLabels, Counter>,
    pub rule_seconds: Family<RuleLabels, Histogram, fn() -> Histogram>,
    pub payment_attempts: Family<OutcomeLabels, Counter>,
    pub payments_pending: Gauge,
    /// The SQLite writer's totals, as last exported (see [`Metrics::store_writer`]).
    store_writer: StoreWriterFamilies,
    /// The PostgreSQL wire's totals, as last exported (see [`Metrics::store_wire`]).
    store_wire: StoreWireFamilies,
    pub payment_reconciliations: Family<OutcomeLabels, Counter>,
    pub payment_gateway_errors: Family<OutcomeLabels, Counter>,
    pub outbox_depth: Gauge,
    pub outbox_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub requests: Family<RequestLabels, Counter>,
    /// Reloads of the plug-in directory by outcome (`ok`, `refused`).
    pub reloads: Family<OutcomeLabels, Counter>,
    /// Canary calls by canary and outcome.
    pub canary_calls: Family<CanaryLabels, Counter>,
    /// Automatic canary rollbacks by canary (`outcome` = `rolled_back`).
    pub canary_rollbacks: Family<CanaryLabels, Counter>,
    /// How long the service took to answer, by method, route and status
    /// (`smartmart_http_request_duration_seconds`).
    pub http_request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Rows deleted by retention, by table (`smartmart_retention_pruned_total`).
    pub retention_pruned: Family<TableLabels, Counter>,
    /// Connections the HTTP server closed to keep room for others, by reason
    /// (`smartmart_http_connections_shed_total`; counted by the server itself).
    pub http_connections_shed: Family<ReasonLabels, Counter>,
}

/// `smartmart_build_info{version="…"} 1`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("smartmart");
        let orders = Family::<OutcomeLabels, Counter>::default();
        registry.register("orders", "Orders by outcome (CONFIRMED, PAYMENT_FAILED or an error code)", orders.clone());
        let stage_seconds =
            Family::<StageLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("stage_duration_seconds", "Time spent in each pipeline stage", stage_seconds.clone());
        let rule_calls = Family::<RuleLabels, Counter>::default();
        registry.register("rule_calls", "Rule calls by slot, module, version, variant and outcome", rule_calls.clone());
        let rule_seconds = Family::<RuleLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("rule_call_duration_seconds", "Duration of rule calls", rule_seconds.clone());
        let payment_attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register("payment_attempts", "Gateway attempts by outcome", payment_attempts.clone());
        let store_writer = StoreWriterFamilies::register(&mut registry);
        let store_wire = StoreWireFamilies::register(&mut registry);
        let payments_pending = Gauge::default();
        registry.register(
            "payments_pending",
            "Orders answered PAYMENT_PENDING whose payment outcome the reconciler has not resolved yet",
            payments_pending.clone(),
        );
        let payment_reconciliations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "payment_reconciliations",
            "Payments resolved after their order's answer or a crash, by outcome (confirmed, failed, undecided)",
            payment_reconciliations.clone(),
        );
        let payment_gateway_errors = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "payment_gateway_errors",
            "Failed gateway requests by kind (unknown, unreachable, untrusted: a refused TLS certificate)",
            payment_gateway_errors.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register("outbox_depth", "Events not yet delivered", outbox_depth.clone());
        let outbox_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register("outbox_lag_seconds", "Age of the oldest undelivered event", outbox_lag_seconds.clone());
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by method, route and status", requests.clone());
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "plugin_reloads",
            "Reloads of the plug-in directory by outcome (ok, refused: by a check or the replay gate)",
            reloads.clone(),
        );
        let canary_calls = Family::<CanaryLabels, Counter>::default();
        registry.register("canary_calls", "Canary calls by canary and outcome", canary_calls.clone());
        let canary_rollbacks = Family::<CanaryLabels, Counter>::default();
        registry.register("canary_rollbacks", "Automatic canary rollbacks by canary", canary_rollbacks.clone());
        let http_request_seconds =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method, route and status",
            http_request_seconds.clone(),
        );
        let retention_pruned = Family::<TableLabels, Counter>::default();
        registry.register(
            "retention_pruned",
            "Rows deleted by retention past their window or row cap, by table \
             (idempotency, outbox, shadow_runs, rollout_events)",
            retention_pruned.clone(),
        );
        let http_connections_shed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_connections_shed",
            "Connections the HTTP server closed to keep room for others, by reason (no_request: no whole \
             request yet, the oldest first; idle: an idle keep-alive one; per_client: over the per-client \
             cap; full: a new one while every other had a request in flight)",
            http_connections_shed.clone(),
        );
        registry.register(
            "build",
            "The running build (the crate's version)",
            prometheus_client::metrics::info::Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION").to_string() }),
        );
        Metrics {
            reloads,
            canary_calls,
            canary_rollbacks,
            registry,
            orders,
            stage_seconds,
            rule_calls,
            rule_seconds,
            payment_attempts,
            payments_pending,
            store_writer,
            store_wire,
            payment_reconciliations,
            payment_gateway_errors,
            outbox_depth,
            outbox_lag_seconds,
            requests,
            http_request_seconds,
            retention_pruned,
            http_connections_shed,
        }
    }
}

/// The SQLite writer's counters: batches (one commit each), the commands
/// they carried, and the writer's time running commands against
/// committing (the commit's `fdatasync` included).
#[derive(Default)]
struct StoreWriterFamilies {
    commits: Counter,
    commands: Counter,
    running_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    committing_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    wal_bytes: Counter,
    /// What was exported so far: counters only go up by the difference.
    exported: std::sync::Mutex<crate::store::stats::WriterTotals>,
}

impl StoreWriterFamilies {
    fn register(registry: &mut Registry) -> StoreWriterFamilies {
        let families = StoreWriterFamilies::default();
        registry.register(
            "store_commits",
            "SQLite writer transactions committed (one per group commit)",
            families.commits.clone(),
        );
        registry.register("store_commands", "Store commands carried by those commits", families.commands.clone());
        registry.register(
            "store_running_seconds",
            "Writer time spent running commands (statements and savepoints)",
            families.running_seconds.clone(),
        );
        registry.register(
            "store_committing_seconds",
            "Writer time spent in COMMIT (WAL write and fdatasync), running nothing else",
            families.committing_seconds.clone(),
        );
        registry.register(
            "store_wal_bytes",
            "Bytes the writer's commits appended to the WAL (a frame of page size + 24 bytes per changed page)",
            families.wal_bytes.clone(),
        );
        families
    }
}

/// The PostgreSQL back-end's counters, counted on the wire: round trips to
/// the server (each `Sync` or simple `Query` sent) and transactions ended
/// (each `ReadyForQuery` saying the session is idle).
#[derive(Default)]
struct StoreWireFamilies {
    round_trips: Counter,
    transactions: Counter,
    /// What was exported so far: counters only go up by the difference.
    exported: std::sync::Mutex<crate::store::stats::WireTotals>,
}

impl StoreWireFamilies {
    fn register(registry: &mut Registry) -> StoreWireFamilies {
        let families = StoreWireFamilies::default();
        registry.register(
            "store_round_trips",
            "Round trips to the PostgreSQL server (Sync and simple Query messages sent)",
            families.round_trips.clone(),
        );
        registry.register(
            "store_transactions",
            "PostgreSQL transactions ended, implicit or explicit (ReadyForQuery, idle)",
            families.transactions.clone(),
        );
        families
    }
}

impl Metrics {
    /// Brings the store writer's counters up to `totals` (read from the
    /// store at scrape time).
    pub fn store_writer(&self, totals: crate::store::stats::WriterTotals) {
        let families = &self.store_writer;
        let mut exported = families.exported.lock().unwrap_or_else(|p| p.into_inner());
        families.commits.inc_by(totals.commits.saturating_sub(exported.commits));
        families.commands.inc_by(totals.commands.saturating_sub(exported.commands));
        families.running_seconds.inc_by(totals.running.saturating_sub(exported.running).as_secs_f64());
        families.committing_seconds.inc_by(totals.committing.saturating_sub(exported.committing).as_secs_f64());
        families.wal_bytes.inc_by(totals.wal_bytes.saturating_sub(exported.wal_bytes));
        *exported = totals;
    }

    /// Brings the PostgreSQL wire's counters up to `totals` (read from the
    /// store at scrape time).
    pub fn store_wire(&self, totals: crate::store::stats::WireTotals) {
        let families = &self.store_wire;
        let mut exported = families.exported.lock().unwrap_or_else(|p| p.into_inner());
        families.round_trips.inc_by(totals.round_trips.saturating_sub(exported.round_trips));
        families.transactions.inc_by(totals.transactions.saturating_sub(exported.transactions));
        *exported = totals;
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub fn order(&self, outcome: &str) {
        self.orders.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
    }

    pub fn stage(&self, stage: &str, seconds: f64) {
        self.stage_seconds.get_or_create(&StageLabels { stage: stage.to_string() }).observe(seconds);
    }

    pub fn rule_call(
        &self,
        slot: Slot,
        module: &crate::rules::ModuleIdentity,
        variant: Option<&str>,
        outcome: &str,
        seconds: f64,
    ) {
        let labels = RuleLabels {
            slot: slot.to_string(),
            module: module.file.clone(),
            version: module.version.clone(),
            variant: variant.unwrap_or("").to_string(),
            outcome: outcome.to_string(),
        };
        self.rule_calls.get_or_create(&labels).inc();
        self.rule_seconds.get_or_create(&labels).observe(seconds);
    }

    pub fn reload(&self, outcome: &str) {
        self.reloads.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
    }

    pub fn canary_call(&self, canary: &str, outcome: &str) {
        self.canary_calls
            .get_or_create(&CanaryLabels { canary: canary.to_string(), outcome: outcome.to_string() })
            .inc();
    }

    pub fn canary_rollback(&self, canary: &str) {
        self.canary_rollbacks
            .get_or_create(&CanaryLabels { canary: canary.to_string(), outcome: "rolled_back".into() })
            .inc();
    }

    /// One resolution of a payment by the reconciler.
    pub fn payment_reconciliation(&self, outcome: &str) {
        self.payment_reconciliations.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
    }

    /// One failed gateway request, by the kind of its failure.
    pub fn payment_gateway_error(&self, kind: &str) {
        self.payment_gateway_errors.get_or_create(&OutcomeLabels { outcome: kind.to_string() }).inc();
    }

    /// One answered HTTP request: counted, and its duration observed.
    pub fn http_request(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.http_request_seconds.get_or_create(labels).observe(seconds);
    }

    /// Rows of `table` one retention batch deleted.
    pub fn retention_pruned(&self, table: &str, rows: u64) {
        self.retention_pruned.get_or_create(&TableLabels { table: table.to_string() }).inc_by(rows);
    }

    pub fn payment_attempts(&self, outcome: &str, attempts: u32) {
        self.payment_attempts
            .get_or_create(&OutcomeLabels { outcome: outcome.to_string() })
            .inc_by(u64::from(attempts));
    }
}
