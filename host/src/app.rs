//! The assembled engine: store, rule runtime and rule set, payment gateway,
//! pipeline and its background workers (fraud reviews, event dispatch,
//! reconciliation, retention in `app::retention`), from one set of settings.

mod retention;

pub use retention::RetentionSettings;

/// The clock orders read their start from (`EngineSettings::clock`).
pub use crate::clock::{Clock, ManualClock};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::customer::Customer;
use crate::events::{EventSink, SinkChoice, run_dispatcher};
use crate::metrics::Metrics;
use crate::payment::{Charge, HttpGateway, HttpGatewayOptions, PaymentGateway, RetryPolicy, SandboxGateway};
use crate::pipeline::canary::{Canaries, run_recorder};
use crate::pipeline::experiments::ExperimentFigures;
use crate::pipeline::{Faults, Pipeline, PipelineConfig, fraud, recovery};
use crate::release::rollouts::Rollouts;
use crate::rules::reload::{ReloadError, ReloadHooks, ReloadStatus, Reloader, Watch};
use crate::rules::{HostDefaults, ModuleConfig, RuleRuntime, RuleSet, RuntimeOptions};
use crate::store::catalog::{Product, Warehouse};
use crate::store::{Database, PostgresOptions, Store, StoreError, StoreOptions};

/// Which payment gateway orders are charged through.
#[derive(Debug, Clone)]
pub enum GatewayChoice {
    /// The built-in sandbox (the tokens of docs/api.md), its ledger in the store.
    Sandbox,
    /// An external gateway speaking the protocol of `payment::http`, over
    /// HTTP or verified HTTPS.
    Http { url: String, options: HttpGatewayOptions },
}

/// Everything the engine needs to start.
#[derive(Clone)]
pub struct EngineSettings {
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub currency: String,
    pub identity_secret: Vec<u8>,
    pub pseudonym_key: Vec<u8>,
    pub fraud_threshold_cents: u64,
    pub stage_timeout: Duration,
    pub retry: RetryPolicy,
    pub gateway: GatewayChoice,
    pub store: StoreOptions,
    /// The embedded SQLite file in the data dir (default) or a PostgreSQL database.
    pub database: Database,
    pub postgres: PostgresOptions,
    pub faults: Faults,
    /// Key of the A/B variant assignment (stable across restarts).
    pub experiment_key: Vec<u8>,
    /// Longest lifetime a customer token may have left when checked.
    pub max_token_lifetime: Duration,
    /// When non-empty, modules must be signed by one of these keys.
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// Watch the plug-in directory and hot-reload it.
    pub watch_plugins: bool,
    /// Benchmark baseline only: stage 3's legs one after the other.
    pub sequential_legs: bool,
    /// How often the janitor reconciles stuck orders, and how old they must be.
    pub janitor_every: Duration,
    pub janitor_min_age: Duration,
    /// Where events are delivered: the JSON Lines files (default), NATS JetStream or Kafka.
    pub event_sink: SinkChoice,
    /// Stored orders a reload's replay gate replays each new module on (0: examples only).
    pub reload_replay_orders: usize,
    /// How long idempotency keys, delivered events, shadow runs and rollout
    /// events are kept (the retention worker).
    pub retention: RetentionSettings,
    /// Where an order reads its start from, the instant a scheduled rule's
    /// window is asked at: the system clock; a [`ManualClock`] in tests.
    pub clock: Clock,
}

impl EngineSettings {
    /// Defaults for a data dir and plug-in dir; the secrets must still be set.
    pub fn new(data_dir: &Path, plugins_dir: &Path, identity_secret: &[u8]) -> EngineSettings {
        EngineSettings {
            data_dir: data_dir.to_owned(),
            plugins_dir: plugins_dir.to_owned(),
            currency: "USD".into(),
            identity_secret: identity_secret.to_vec(),
            pseudonym_key: [identity_secret, b"/analytics-pseudonym"].concat(),
            experiment_key: [identity_secret, b"/experiment-assignment"].concat(),
            max_token_lifetime: Duration::from_secs(24 * 3600),
            trusted_keys: Vec::new(),
            watch_plugins: true,
            fraud_threshold_cents: 500_000,
            stage_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            gateway: GatewayChoice::Sandbox,
            store: StoreOptions::default(),
            database: Database::Sqlite(data_dir.join("smartmart.sqlite")),
            postgres: PostgresOptions::default(),
            faults: Faults::default(),
            sequential_legs: false,
            janitor_every: Duration::from_secs(1),
            janitor_min_age: Duration::from_secs(60),
            event_sink: SinkChoice::Jsonl,
            reload_replay_orders: 200,
            retention: RetentionSettings::default(),
            clock: Clock::system(),
        }
    }
}

/// The running engine. Dropping it does not stop the workers: call `shutdown`.
pub struct Engine {
    pipeline: Pipeline,
    rollouts: Arc<Rollouts>,
    reloader: Reloader,
    sink: Arc<dyn EventSink>,
    sandbox: Option<SandboxGateway>,
    settings: EngineSettings,
    shutdown: CancellationToken,
    workers: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Opens the data dir, loads the rules, reconciles what a previous run
    /// left unfinished, and starts the background workers.
    pub async fn start(settings: EngineSettings) -> anyhow::Result<Engine> {
        let data_dir = &settings.data_dir;
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let store = Store::connect(&settings.database, &settings.store, &settings.postgres)
            .await
            .context("opening the store")?;
        tracing::info!(database = %store.describe(), "store open");
        let runtime = RuleRuntime::new(RuntimeOptions {
            cache_dir: Some(data_dir.join("cache").join("modules")),
            ..RuntimeOptions::default()
        })?;
        let defaults = HostDefaults {
            fraud: ModuleConfig::from([("threshold_cents".to_string(), settings.fraud_threshold_cents.to_string())]),
            experiment_key: settings.experiment_key.clone(),
            trusted_keys: settings.trusted_keys.clone(),
        };
        // Watch before the first load: a change that lands while the engine
        // starts is queued, not missed.
        let watch = if settings.watch_plugins {
            match Watch::install(&settings.plugins_dir) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch the plug-in directory; hot reload is off");
                    None
                }
            }
        } else {
            None
        };
        let metrics = Arc::new(Metrics::default());
        let retention_metrics = metrics.clone();
        let rollouts = Rollouts::new(store.clone(), metrics.clone(), settings.reload_replay_orders);
        let (canaries, recorder) = Canaries::new(metrics.clone(), Arc::default());
        // The first set is not gated (there is nothing to keep serving
        // instead), but stored canary states apply to it: a rollback
        // survives the restart.
        let rules = {
            let (runtime, dir, defaults) = (runtime.clone(), settings.plugins_dir.clone(), defaults.clone());
            let rollouts = rollouts.clone();
            crate::rules::run_blocking(move || {
                let set = RuleSet::load(&runtime, &dir, &defaults)?;
                rollouts.restore(&set);
                Ok::<_, anyhow::Error>(set)
            })
            .await?
        };
        let (gateway, sandbox): (Arc<dyn PaymentGateway>, _) = match &settings.gateway {
            GatewayChoice::Sandbox => {
                let sandbox = SandboxGateway::new(store.clone());
                (Arc::new(sandbox.clone()), Some(sandbox))
            }
            GatewayChoice::Http { url, options } => (Arc::new(HttpGateway::new(url, options)?), None),
        };
        // Before any delivery: cut what a crash left unrecorded in the sink.
        let replica = if store.is_shared() { Some(replica_id(data_dir)?) } else { None };
        let sink = crate::events::open_sink(
            &settings.event_sink,
            &data_dir.join("events"),
            &store.sink_positions().await?,
            replica.as_deref(),
        )
        .await?;
        let rules = Arc::new(ArcSwap::new(rules));
        let reloader = Reloader {
            runtime: runtime.clone(),
            dir: settings.plugins_dir.clone(),
            defaults,
            rules: rules.clone(),
            status: Arc::default(),
            hooks: Some(rollouts.clone() as Arc<dyn ReloadHooks>),
        };
        let store_shared = store.is_shared();
        let experiments = Arc::new(ExperimentFigures::default());
        let config = PipelineConfig {
            currency: settings.currency.clone(),
            identity_secret: settings.identity_secret.clone(),
            max_token_lifetime: settings.max_token_lifetime,
            pseudonym_key: settings.pseudonym_key.clone(),
            stage_timeout: settings.stage_timeout,
            retry: settings.retry.clone(),
            faults: settings.faults.clone(),
            sequential_legs: settings.sequential_legs,
            clock: settings.clock.clone(),
        };
        let pipeline = Pipeline::new(store.clone(), rules, gateway, config, metrics, experiments.clone(), canaries);
        // On SQLite every PENDING order now is from a process that died; on
        // a shared database only those too old to be running on a replica.
        let interrupted_after = if store_shared { settings.janitor_min_age } else { Duration::ZERO };
        let report = recovery::reconcile(&pipeline, interrupted_after).await?;
        if report.undecided > 0 {
            tracing::warn!(?report, "some interrupted orders await the gateway; the janitor will retry");
        }
        let shutdown = CancellationToken::new();
        let mut workers = vec![
            tokio::spawn(run_recorder(store.clone(), recorder, shutdown.clone())),
            tokio::spawn(fraud::run_worker(pipeline.clone(), shutdown.clone())),
            tokio::spawn(run_dispatcher(pipeline.outbox(), sink.clone(), shutdown.clone())),
            tokio::spawn(retention::run_pruner(
                store.clone(),
                retention_metrics,
                settings.retention.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(experiments.run_flusher(store, shutdown.clone())),
            tokio::spawn(recovery::run_janitor(
                pipeline.clone(),
                settings.janitor_every,
                settings.janitor_min_age,
                shutdown.clone(),
            )),
        ];
        if let Some(watch) = watch {
            let (reloader, stop) = (reloader.clone(), shutdown.clone());
            workers.push(tokio::spawn(async move {
                if let Err(e) = watch.run(reloader, stop).await {
                    tracing::error!(error = %e, "the plug-in directory watch stopped; hot reload is off");
                }
            }));
        }
        Ok(Engine { pipeline, rollouts, reloader, sink, sandbox, settings, shutdown, workers })
    }

    /// Places orders (cheap to clone into a task).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The store: the catalog and carts the admin and cart APIs edit, the
    /// orders they read back.
    pub fn store(&self) -> &Store {
        self.pipeline.store()
    }

    /// The rule set serving orders now.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.pipeline.rules()
    }

    /// Serves `rules` from the next order on, as a reload does but without
    /// its replay gate: for a benchmark's native baseline, not for operators.
    pub fn serve_rules(&self, rules: Arc<RuleSet>) {
        self.reloader.rules.store(rules);
    }

    /// Reloads the plug-in directory now (through the replay gate), rather
    /// than when the watch notices a change.
    pub async fn reload_now(&self) -> Result<(), ReloadError> {
        self.reloader.reload_now().await
    }

    /// A copy of what the reloader has done so far.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reloader.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What `/metrics` renders; the HTTP edge adds its request counts.
    pub fn metrics(&self) -> &Metrics {
        self.pipeline.metrics()
    }

    /// Canaries: their events and their promotion.
    pub fn rollouts(&self) -> &Rollouts {
        &self.rollouts
    }

    /// Records the pending experiment figures now (see [`Pipeline::flush_experiments`]).
    pub async fn flush_experiments(&self) -> Result<(), StoreError> {
        self.pipeline.flush_experiments().await
    }

    /// The sandbox gateway's captured charges by idempotency key; `None` when
    /// orders are charged through an external gateway.
    pub fn sandbox_charges(&self) -> Option<Vec<(String, Charge)>> {
        self.sandbox.as_ref().map(SandboxGateway::charges)
    }

    /// The settings the engine started with (to start another on the same data dir).
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Reviews and delivers everything pending now, and records the pending
    /// experiment figures (for the demo and tests).
    pub async fn drain(&self) -> anyhow::Result<()> {
        fraud::review_pending(&self.pipeline).await?;
        crate::events::deliver_due(&self.pipeline.outbox(), &self.sink).await?;
        self.pipeline.flush_experiments().await?;
        Ok(())
    }

    /// Stops the workers after their current pass (the dispatcher makes a last one).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for worker in self.workers {
            let _ = worker.await;
        }
    }
}

/// This replica's id among those sharing a database, kept in its data dir
/// (made at the first start): what its event files' positions are named after.
fn replica_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::now_v7().simple().to_string();
            std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
    }
}

/// A catalog in the shapes of the admin API's bodies (examples/demo/dataset.json).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub customers: Vec<Customer>,
    pub products: Vec<Product>,
    pub warehouses: Vec<Warehouse>,
    pub stock: Vec<DatasetStock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetStock {
    pub warehouse_id: String,
    pub sku: String,
    pub on_hand: u64,
}

impl Dataset {
    pub fn read(path: &Path) -> anyhow::Result<Dataset> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the whole data set in one transaction.
    pub async fn load_into(self, store: &Store) -> anyhow::Result<()> {
        let stock = self.stock.into_iter().map(|s| (s.warehouse_id, s.sku, s.on_hand)).collect();
        store.load_catalog(self.customers, self.products, self.warehouses, stock).await?;
        Ok(())
    }
}
