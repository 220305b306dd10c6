//! The rule runtime: one wasmtime `Engine` for the whole process, the
//! `Linker`s rules are instantiated against (one with synchronous WASI for
//! calls on a thread of their own, one with asynchronous WASI for calls on
//! an async worker), the epoch ticker ([`super::epoch`]), and the on-disk
//! cache of compiled modules.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::discount_world::DiscountRule;
use super::budgets::{Budgets, MAX_MEMORY_BYTES};
use super::epoch::{EpochTicker, InFlight};
use super::error::LoadError;
use super::module::RuleModule;
use super::state::{ModuleConfig, RuleState};
use super::world::{self, BinaryKind, World};

/// Settings of the rule runtime as a whole.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled modules are cached, keyed by module digest and engine
    /// configuration; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Rule instances that may be alive at once (the pool's size).
    pub max_instances: u32,
}

/// Where a data dir keeps compiled modules (`<data dir>/cache/modules`):
/// shared by the service and the rule tools, so each compiles a module once.
pub fn module_cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache").join("modules")
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { cache_dir: None, max_instances: 256 }
    }
}

/// Shared by every module: cheap to clone.
#[derive(Clone)]
pub struct RuleRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    /// WASI's synchronous bindings: for the synchronous calls (rule tools,
    /// reload checks, fraud checks and shadows on the rule threads).
    linker: Linker<RuleState>,
    /// WASI's asynchronous bindings: for the async calls (the order path, on
    /// its own task), where a WASI call must not block on a runtime.
    async_linker: Linker<RuleState>,
    cache_dir: Option<PathBuf>,
    /// Hex digest of the engine's compatibility hash: part of every cache key,
    /// because an artifact compiled under another configuration must not load.
    engine_key: String,
    /// Whether a compile is announced on stderr (the rule tools), see
    /// [`RuleRuntime::report_compiles`].
    report_compiles: AtomicBool,
    /// Ticks while a call is in flight (see [`RuleRuntime::call_started`]).
    ticker: Arc<EpochTicker>,
}

/// A module file read and compiled, before it is bound to a world.
#[derive(Clone)]
pub(crate) struct Compiled {
    pub(crate) component: Component,
    pub(crate) digest: String,
    pub(crate) imports: Vec<String>,
}

impl RuleRuntime {
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(options.max_instances)?)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from).context("linking WASI")?;
        let mut async_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut async_linker)
            .map_err(anyhow::Error::from)
            .context("linking asynchronous WASI")?;
        // `log` and `config` are shared by the three worlds (see bindings);
        // they never block, so both linkers take the same synchronous ones.
        for linker in [&mut linker, &mut async_linker] {
            DiscountRule::add_to_linker::<RuleState, HasSelf<RuleState>>(linker, |state| state)
                .map_err(anyhow::Error::from)
                .context("linking the host interfaces")?;
        }
        let ticker = EpochTicker::start(&engine).context("starting the epoch thread")?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        if let Some(dir) = &options.cache_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating cache dir {}", dir.display()))?;
        }
        let report_compiles = AtomicBool::new(false);
        let inner = RuntimeInner {
            engine,
            linker,
            async_linker,
            cache_dir: options.cache_dir,
            engine_key,
            report_compiles,
            ticker,
        };
        Ok(RuleRuntime { inner: Arc::new(inner) })
    }

    /// Says on stderr when a module is compiled, and every few seconds while
    /// it compiles, so that a first `rules check` of a large component is
    /// not seconds of silence. The service logs compiles instead.
    pub fn report_compiles(&self, on: bool) {
        self.inner.report_compiles.store(on, Ordering::Relaxed);
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Marks a call in flight while the guard lives (it goes into the
    /// call's store): the epoch ticks only while some call is in flight.
    pub(crate) fn call_started(&self) -> InFlight {
        self.inner.ticker.call_started()
    }

    pub(crate) fn linker(&self) -> &Linker<RuleState> {
        &self.inner.linker
    }

    pub(crate) fn async_linker(&self) -> &Linker<RuleState> {
        &self.inner.async_linker
    }

    /// Loads `file` as a module of `world`: reads, digests, compiles (or
    /// takes the cached artifact), checks its imports and exports, asks it
    /// for its name and version.
    pub fn load(
        &self,
        file: &Path,
        world: World,
        config: ModuleConfig,
        budgets: Budgets,
    ) -> Result<RuleModule, LoadError> {
        let bytes =
            std::fs::read(file).map_err(|error| LoadError::Read { file: file.to_owned(), expected: world, error })?;
        self.load_bytes(file, &bytes, world, config, budgets)
    }

    /// As [`RuleRuntime::load`], from bytes already read; `file` names them.
    pub fn load_bytes(
        &self,
        file: &Path,
        bytes: &[u8],
        world: World,
        config: ModuleConfig,
        budgets: Budgets,
    ) -> Result<RuleModule, LoadError> {
        budgets.validate().map_err(|reason| LoadError::Budgets { file: file.to_owned(), expected: world, reason })?;
        let compiled = self.compile(file, bytes, world)?;
        RuleModule::bind(self, file, compiled, world, Arc::new(config), budgets)
    }

    /// Finds which rule world a module implements, trying each in turn.
    /// Compiles once, then tries to bind each world in turn.
    pub fn detect_world(&self, file: &Path, bytes: &[u8]) -> Result<RuleModule, Vec<LoadError>> {
        self.load_any_world(file, bytes, ModuleConfig::new(), Budgets::default())
    }

    /// As [`RuleRuntime::load_bytes`] for whichever world the module
    /// implements: compiled (or taken from the cache) once, then bound to
    /// each world in turn; the errors of every attempt when none fits.
    pub fn load_any_world(
        &self,
        file: &Path,
        bytes: &[u8],
        config: ModuleConfig,
        budgets: Budgets,
    ) -> Result<RuleModule, Vec<LoadError>> {
        let expected = World::DiscountRule;
        budgets.validate().map_err(|reason| vec![LoadError::Budgets { file: file.to_owned(), expected, reason }])?;
        let compiled = self.compile(file, bytes, expected).map_err(|e| vec![e])?;
        let config = Arc::new(config);
        let mut errors = Vec::new();
        for world in World::ALL {
            match RuleModule::bind(self, file, compiled.clone(), world, config.clone(), budgets) {
                Ok(module) => return Ok(module),
                Err(e) => errors.push(e),
            }
        }
        Err(errors)
    }

    fn compile(&self, file: &Path, bytes: &[u8], expected: World) -> Result<Compiled, LoadError> {
        let not_a_component = |reason: String| LoadError::NotAComponent { file: file.to_owned(), expected, reason };
        match world::binary_kind(bytes) {
            BinaryKind::Component => {}
            BinaryKind::CoreModule => {
                return Err(not_a_component(
                    "it is a core WebAssembly module, not a component; build rules with \
                     `--target wasm32-wasip2` (or wrap with `wasm-tools component new`)"
                        .into(),
                ));
            }
            BinaryKind::NotWasm => {
                return Err(not_a_component("it is not WebAssembly (bad magic number)".into()));
            }
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let component = self.cached_or_compiled(bytes, &digest).map_err(|e| not_a_component(format!("{e:#}")))?;
        let engine = self.engine();
        let imports: Vec<String> =
            component.component_type().imports(engine).map(|(name, _)| name.to_string()).collect();
        let forbidden: Vec<String> = imports.iter().filter(|i| !world::is_granted(i)).cloned().collect();
        if !forbidden.is_empty() {
            return Err(LoadError::ForbiddenImport { file: file.to_owned(), expected, imports: forbidden });
        }
        Ok(Compiled { component, digest, imports })
    }

    /// Takes the compiled artifact from the cache when one matches the digest
    /// and this engine; otherwise compiles and stores it for next time.
    fn cached_or_compiled(&self, bytes: &[u8], digest: &str) -> anyhow::Result<Component> {
        let engine = self.engine();
        let Some(dir) = &self.inner.cache_dir else {
            return Ok(Component::new(engine, bytes)?);
        };
        let hex_digest = digest.trim_start_matches("sha256:");
        let path = dir.join(format!("{hex_digest}-{}.cwasm", self.inner.engine_key));
        if path.exists() {
            match deserialize_own_artifact(engine, &path) {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached artifact"),
            }
        }
        let artifact = self.compile_reporting(bytes)?;
        // Write beside, then rename: a crash never leaves a torn artifact.
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
        if let Err(e) = std::fs::write(&tmp, &artifact).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled module");
            let _ = std::fs::remove_file(&tmp);
        }
        deserialize_fresh_artifact(engine, &artifact)
    }
}

impl RuleRuntime {
    /// Compiles `bytes` for this machine, announcing it as configured.
    fn compile_reporting(&self, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
        let started = std::time::Instant::now();
        let size = format!("{:.1} MB", bytes.len() as f64 / 1e6);
        tracing::info!(size = %size, "compiling a rule module");
        if !self.inner.report_compiles.load(Ordering::Relaxed) {
            return Ok(self.inner.engine.precompile_component(bytes)?);
        }
        eprintln!("compiling the module ({size}) for this machine: once, the result is cached…");
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let ticker = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(COMPILE_TICK) {
                eprintln!("  still compiling ({} s)…", started.elapsed().as_secs());
            }
        });
        let artifact = self.inner.engine.precompile_component(bytes);
        drop(done);
        let _ = ticker.join();
        eprintln!("compiled in {:.1} s", started.elapsed().as_secs_f64());
        Ok(artifact?)
    }
}

/// How often a long compile says it is still going.
const COMPILE_TICK: Duration = Duration::from_secs(3);

/// Loads a compiled artifact from the cache.
#[allow(unsafe_code)]
fn deserialize_own_artifact(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: wasmtime requires that the file be an artifact produced by
    // `Engine::precompile_component` of a compatible engine and not modified
    // since. The cache directory is written only by this host (atomically,
    // above), and its file names carry the engine's compatibility hash, which
    // wasmtime also re-checks in the artifact's header.
    Ok(unsafe { Component::deserialize_file(engine, path)? })
}

/// Loads an artifact this engine compiled a moment ago (no second compile).
#[allow(unsafe_code)]
fn deserialize_fresh_artifact(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: `artifact` comes straight from `engine.precompile_component`.
    Ok(unsafe { Component::deserialize(engine, artifact)? })
}

fn engine_config(max_instances: u32) -> anyhow::Result<Config> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances * 4)
        .total_memories(max_instances * 2)
        .total_tables(max_instances * 2)
        .max_memory_size(MAX_MEMORY_BYTES)
        // Keep the first pages of a freed slot mapped: the next instance of
        // a small rule then starts without page faults.
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        // An async call runs on a fiber stack of the pool, one per call in
        // flight: as many as there may be instances.
        .total_stacks(max_instances)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(config)
}

impl std::fmt::Debug for RuleRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleRuntime").field("cache_dir", &self.inner.cache_dir).finish()
    }
}
