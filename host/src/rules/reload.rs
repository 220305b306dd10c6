//! Hot reload of the plug-in directory. A watcher (notify) reports changes;
//! once the directory has been quiet for a moment and every file it names
//! reads the same twice in a row (nothing half-copied), a new rule set is
//! built off the request path: read, digest, compile (or take the cached
//! artifact), check against the worlds and signatures, then a smoke test on
//! an example order, then the [`ReloadHooks`] the host adds: canaries keep
//! their live state, stored rollout states apply, and every module or
//! configuration new to the set must pass the replay gate (`release::gate`).
//! Only then is it swapped in, atomically; on any failure the last good set
//! keeps serving and the error is kept for operators.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::manifest::Manifest;
use super::native::Rule;
use super::ruleset::SignatureError;
use super::types::{Candidate, OrderContext, PaymentSummary, RuleCustomer, StockLevel};
use super::{HostDefaults, LoadError, RuleError, RuleRuntime, RuleSet};
use crate::domain::customer::{AccountStatus, Tier};
use crate::domain::geo::GeoPoint;
use crate::domain::order::CartLine;
use crate::domain::status::Slot;

/// How long the directory must be quiet before a reload is tried.
pub const QUIET: Duration = Duration::from_millis(150);

/// A refused reload, as `GET /v1/admin/plugins` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadError {
    pub file: String,
    pub error: String,
    pub at: String,
    /// The manifest entry refused by the replay gate (`discount[2] flat.wasm / shadow`).
    pub entry: Option<String>,
    /// The stored order (or example file) it failed on.
    pub order_id: Option<String>,
}

impl ReloadError {
    /// A refusal of `file` that names no entry or order.
    pub fn of_file(file: impl Into<String>, error: impl Into<String>) -> ReloadError {
        ReloadError {
            file: file.into(),
            error: error.into(),
            at: crate::clock::now_rfc3339(),
            entry: None,
            order_id: None,
        }
    }
}

/// A boxed future (the hooks' asynchronous part).
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What the host adds to every reload, beside the rules layer's own checks.
pub trait ReloadHooks: Send + Sync {
    /// Applies the stored state of each canary (rolled back, promoted) to
    /// `set`; blocking (called on a rule thread).
    fn restore(&self, set: &RuleSet);
    /// Checks what `next` runs that `previous` did not; blocking.
    fn gate(&self, previous: &RuleSet, next: &RuleSet) -> Result<(), ReloadError>;
    /// Told of a swap (`Ok(new set)`) or a refusal, after the fact.
    fn outcome<'a>(&'a self, previous: &'a RuleSet, outcome: Result<&'a RuleSet, &'a ReloadError>) -> HookFuture<'a>;
}

/// Reload history since start.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadStatus {
    /// Errors of the attempts since the last successful load.
    pub errors: Vec<ReloadError>,
    pub reloads: u64,
    pub refused: u64,
    pub last_reload_at: Option<String>,
}

/// What the reloader needs; shared with the admin API.
#[derive(Clone)]
pub struct Reloader {
    pub runtime: RuleRuntime,
    pub dir: PathBuf,
    pub defaults: HostDefaults,
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub status: Arc<Mutex<ReloadStatus>>,
    /// The host's gate and records (none: the rules layer's checks only).
    pub hooks: Option<Arc<dyn ReloadHooks>>,
}

impl Reloader {
    /// Builds, checks and (if good) swaps in a new rule set now.
    pub async fn reload_now(&self) -> Result<(), ReloadError> {
        let this = self.clone();
        let previous = self.rules.load_full();
        let before = previous.clone();
        let built = super::run_blocking(move || {
            let mut set = RuleSet::load_unshared(&this.runtime, &this.dir, &this.defaults)
                .map_err(|e| describe(&this.dir, &e))?;
            smoke_test(&set).map_err(|(file, error)| ReloadError::of_file(file, error))?;
            set.carry_over(&before);
            if let Some(hooks) = &this.hooks {
                hooks.restore(&set);
                hooks.gate(&before, &set)?;
            }
            Ok::<_, ReloadError>(Arc::new(set))
        })
        .await;
        let result = {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            match &built {
                Ok(set) => {
                    let summary: Vec<String> =
                        set.all().map(|(slot, r)| format!("{slot}:{}", r.module_label())).collect();
                    self.rules.store(set.clone());
                    status.reloads += 1;
                    status.errors.clear();
                    status.last_reload_at = Some(crate::clock::now_rfc3339());
                    tracing::info!(rules = ?summary, "plug-in directory reloaded");
                    Ok(())
                }
                Err(error) => {
                    status.refused += 1;
                    status.errors.push(error.clone());
                    let excess = status.errors.len().saturating_sub(20);
                    status.errors.drain(..excess);
                    tracing::warn!(
                        file = %error.file,
                        entry = error.entry.as_deref().unwrap_or(""),
                        order_id = error.order_id.as_deref().unwrap_or(""),
                        error = %error.error,
                        "reload refused; the last good rule set keeps serving"
                    );
                    Err(error.clone())
                }
            }
        };
        if let Some(hooks) = &self.hooks {
            hooks.outcome(&previous, built.as_deref()).await;
        }
        result
    }
}

/// A watch on the plug-in directory. Changes are queued from the moment it
/// is installed, so that one installed before the first load misses
/// nothing, however late [`Watch::run`] starts.
pub struct Watch {
    watcher: notify::RecommendedWatcher,
    events: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Watch {
    /// Starts watching `dir` (non-recursive; access events ignored).
    pub fn install(dir: &Path) -> anyhow::Result<Watch> {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        })?;
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        tracing::info!(dir = %dir.display(), "watching the plug-in directory");
        Ok(Watch { watcher, events })
    }

    /// Reloads through `reloader` after every change, once the directory
    /// has settled, until `shutdown`.
    pub async fn run(self, reloader: Reloader, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Watch { watcher: _watcher, events: mut rx } = self;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = rx.recv() => if event.is_none() { return Ok(()) },
            }
            // Debounce, then wait until every file reads the same twice.
            loop {
                loop {
                    match tokio::time::timeout(QUIET, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return Ok(()),
                        Err(_) => break,
                    }
                }
                let before = fingerprint(&reloader.dir);
                tokio::time::sleep(QUIET / 2).await;
                if rx.is_empty() && fingerprint(&reloader.dir) == before {
                    break;
                }
            }
            let _ = reloader.reload_now().await;
        }
    }
}

/// Digest of the manifest and every file it names (and their signatures).
fn fingerprint(dir: &Path) -> Vec<u8> {
    let mut hasher = Sha256::new();
    let mut files = vec!["manifest.toml".to_string()];
    if let Ok(manifest) = Manifest::read(dir) {
        for file in manifest.module_files() {
            files.push(format!("{file}.sig"));
            files.push(file);
        }
    }
    for file in files {
        hasher.update(file.as_bytes());
        match std::fs::read(dir.join(&file)) {
            Ok(bytes) => hasher.update(Sha256::digest(&bytes)),
            Err(_) => hasher.update(b"-"),
        }
    }
    hasher.finalize().to_vec()
}

fn describe(dir: &Path, error: &anyhow::Error) -> ReloadError {
    let file = error
        .chain()
        .find_map(|e| {
            e.downcast_ref::<LoadError>()
                .map(LoadError::file)
                .or_else(|| e.downcast_ref::<SignatureError>().map(|e| e.file.as_path()))
        })
        .map(|file| file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| {
            let text = format!("{error:#}");
            if text.contains("manifest") { "manifest.toml".into() } else { dir.display().to_string() }
        });
    ReloadError::of_file(file, format!("{error:#}"))
}

/// An order every rule must be able to answer (a refusal is an answer; a
/// trap, an exhausted budget or an error is not).
fn smoke_order() -> (OrderContext, Vec<Candidate>, PaymentSummary) {
    let lines = vec![
        CartLine {
            sku: "SMOKE-TV".into(),
            name: "Smoke test TV".into(),
            category: "electronics".into(),
            quantity: 1,
            unit_price_cents: 89_900,
        },
        CartLine {
            sku: "SMOKE-CABLE".into(),
            name: "Smoke test cable".into(),
            category: "accessories".into(),
            quantity: 2,
            unit_price_cents: 1_500,
        },
    ];
    let order = OrderContext {
        order_id: "ord_smoke_test".into(),
        channel: "web".into(),
        currency: "USD".into(),
        customer: RuleCustomer { id: "C-SMOKE".into(), tier: Tier::Gold, status: AccountStatus::Active },
        lines,
        subtotal_cents: 92_900,
        payable_cents: 92_900,
        coupon_code: None,
        ship_to: GeoPoint { lat: 12.97, lon: 77.59 },
        ordered_at_ms: 1_795_600_800_000,
    };
    let candidates = vec![Candidate {
        id: "WH-SMOKE".into(),
        name: "Smoke test warehouse".into(),
        location: GeoPoint { lat: 13.0, lon: 77.6 },
        stock: vec![
            StockLevel { sku: "SMOKE-TV".into(), available: 100 },
            StockLevel { sku: "SMOKE-CABLE".into(), available: 100 },
        ],
    }];
    let payment =
        PaymentSummary { status: "CAPTURED".into(), amount_cents: 92_900, attempts: 1, gateway: "sandbox".into() };
    (order, candidates, payment)
}

/// Runs every rule of `set` (variants and shadows too) on an example
/// order; the first that fails is named with why. One span holds the
/// calls' spans (one exported trace per smoke test).
fn smoke_test(set: &RuleSet) -> Result<(), (String, String)> {
    let _span = tracing::debug_span!("smoke_test").entered();
    let (order, candidates, payment) = smoke_order();
    for (slot, rule) in set.all() {
        let mut rules: Vec<&Rule> = rule.module.iter().collect();
        if let Some(experiment) = &rule.experiment {
            rules.extend(experiment.variants.iter().filter_map(|v| v.rule.as_ref()));
        }
        rules.extend(rule.shadow.iter());
        rules.extend(rule.canary.iter().map(|c| &c.rule));
        for candidate in rules {
            let outcome = match slot {
                Slot::Discount => candidate.apply_discount(&order).map(|_| ()),
                Slot::Warehouse => candidate.select_warehouses(&order, &candidates).map(|_| ()),
                Slot::Fraud => candidate.check_fraud(&order, &payment).map(|_| ()),
            };
            if let Err(RuleError::Failed { module, cause }) = outcome {
                return Err((module.file.clone(), format!("smoke test on an example order failed: {module} {cause}")));
            }
        }
    }
    Ok(())
}
