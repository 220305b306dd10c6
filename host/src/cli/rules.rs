//! `smartmart rules …`: the rule author's and operator's tools (keys and
//! signatures, a new rule project and its TypeScript types, test and
//! watch a project, check, run, replay).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use crate::domain::status::Channel;
use crate::release::replay;
use crate::rules::project::{self, Project};
use crate::rules::scaffold::{self, Lang};
use crate::rules::{Budgets, Channels, ModuleConfig, RuleRuntime, RuntimeOptions, World, runner};
use crate::store::{PostgresOptions, Store, StoreOptions};

#[derive(Debug, Subcommand)]
pub(super) enum RulesCommand {
    /// Generate an ed25519 key pair for signing modules: writes the secret
    /// key (hex) to FILE (mode 0600) and prints the public key for
    /// SMARTMART_TRUSTED_KEYS.
    Keygen { file: PathBuf },
    /// Sign a module: writes `FILE.sig`, an ed25519 signature over its
    /// `sha256:` digest, with the secret key of `rules keygen`.
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Start a rule project in a new or empty folder: the contract (a copy
    /// of wit/), the rule's source for its world, an example input with the
    /// expected answer, a test, a README with the build command and the
    /// manifest entry. It builds wherever the folder is.
    New {
        /// Rule name, kebab-case (e.g. `spring-sale`); the component is `spring_sale.wasm`.
        name: String,
        /// The slot the rule serves: discount, warehouse or fraud.
        #[arg(long, value_parser = parse_world)]
        world: World,
        /// The language: rust (a wit-bindgen crate) or js (arrow functions
        /// over the order, built with componentize-qjs; needs Node.js and npm).
        #[arg(long, default_value = "rust", value_parser = parse_lang)]
        lang: Lang,
        /// The project folder (created if absent, else it must be empty); default: ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the TypeScript definitions of a world as a JavaScript rule
    /// sees it (order, config, log, answer, error codes), generated from the
    /// WIT package in `--wit` (a project's vendored `wit/`; by default the
    /// contract this binary implements).
    Types {
        /// The world: discount, warehouse or fraud.
        #[arg(long, value_parser = parse_world)]
        world: World,
        /// The folder of the WIT package.
        #[arg(long)]
        wit: Option<PathBuf>,
        /// Write here instead of stdout (e.g. `types.d.ts`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the JavaScript engine a JavaScript rule embeds (QuickJS, from
    /// the project's componentize-qjs install) without a clock or a random
    /// hash seed, for `componentize-qjs --runtime`: the same rule source then
    /// always builds to the same component. The template's `npm run build`
    /// runs it.
    JsEngine {
        /// Where to write the engine (a core WebAssembly module).
        #[arg(long)]
        out: PathBuf,
        /// The project folder, whose node_modules holds componentize-qjs.
        #[arg(long, default_value = ".")]
        project: PathBuf,
    },
    /// Build a rule project (a folder of `rules new`) with its own build
    /// command, load the component as the service would, and run it on every
    /// `examples/NAME.input.json`, comparing with `NAME.expected.json`.
    /// Exit code 0 when every example matches, 1 otherwise.
    Test(ProjectArgs),
    /// `rules test` now and again after every save of a file of the project
    /// (not its build output, node_modules, target or smartmart-data), until
    /// stopped with Ctrl-C.
    Watch(ProjectArgs),
    /// Load a module as the service would and print its world, name,
    /// version, digest and imports.
    Check {
        /// The component file (`.wasm`).
        file: PathBuf,
        /// The world to check against; by default, whichever it implements.
        #[arg(long, value_parser = parse_world)]
        world: Option<World>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Call a module once on an example input and print its answer, what it
    /// logged, and the fuel, peak memory, wall time and output size it used
    /// against its budgets. Exit code 2 when the rule failed; with
    /// `--expect`, 0 when the answer is the expected one and 1 when it
    /// differs.
    Run {
        /// The component file (`.wasm`).
        file: PathBuf,
        /// Input JSON: `{"order": …, "candidates": […], "payment": {…},
        /// "config": {…}}` (see examples/orders/).
        #[arg(long)]
        input: PathBuf,
        /// Compare with this expected result, `{"outcome": "ok", "result": …}`,
        /// and print every difference.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Module configuration, repeatable, over the input's `config`:
        /// `--config code.WELCOME10=percent:10`.
        #[arg(long = "config", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// A per-call budget, repeatable, as in the manifest's `budgets`:
        /// `--budget fuel=200000000` (keys fuel, memory_bytes, time_ms, output_bytes).
        #[arg(long = "budget", value_parser = parse_key_value)]
        budgets: Vec<(String, String)>,
        /// The world to load it as; by default, whichever it implements.
        #[arg(long, value_parser = parse_world)]
        world: Option<World>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Run a candidate rule on the inputs the active rule at the same place
    /// saw in the last N stored orders, and print per order and in total the
    /// active result against the candidate's, the money difference, the
    /// candidate's failures and its budget percentiles. Exit code 2 when the
    /// candidate failed (trap, budget, error) on any order.
    #[command(long_about = REPLAY_HELP)]
    Replay {
        /// The candidate component file (`.wasm`): a discount rule or a fraud check.
        file: PathBuf,
        /// Module configuration, repeatable, over the replaced rule's
        /// manifest config: `--config percent=15`.
        #[arg(long = "config", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// A per-call budget, repeatable, over the replaced rule's:
        /// `--budget fuel=200000000` (keys fuel, memory_bytes, time_ms, output_bytes).
        #[arg(long = "budget", value_parser = parse_key_value)]
        budgets: Vec<(String, String)>,
        /// Put the candidate, as a new discount rule, at this 1-based
        /// position of the stack (before the rule now there); default: the end.
        #[arg(long, value_name = "N", conflicts_with = "replace")]
        slot_position: Option<usize>,
        /// Put the candidate in place of the rule whose module file is NAME
        /// (`gold_loyalty.wasm`; `.wasm` may be left out).
        #[arg(long, value_name = "NAME")]
        replace: Option<String>,
        /// Replay the orders of this sales channel (web, mobile, partner),
        /// repeatable; with --replace, also which entry is meant when the
        /// slot holds the module once per channel. Default: the replaced
        /// entry's channels (every channel for a new rule).
        #[arg(long = "channel", value_name = "CHANNEL", value_parser = parse_channel)]
        channels: Vec<Channel>,
        /// How many of the last settled orders (CONFIRMED, PAYMENT_FAILED) to replay.
        #[arg(long, value_name = "N")]
        last: usize,
        /// The plug-in directory whose manifest gives the stack order and the
        /// replaced rule's config and budgets (the service's).
        #[arg(long, env = "SMARTMART_PLUGINS_DIR", default_value = "plugins/bundled")]
        plugins_dir: PathBuf,
        /// Passed to a fraud candidate as `threshold_cents` unless its config sets it (as the service does).
        #[arg(long, env = "SMARTMART_FRAUD_THRESHOLD_CENTS", default_value_t = 500_000)]
        fraud_threshold_cents: u64,
        /// Read the orders from this PostgreSQL database (read-only) instead
        /// of the data dir's SQLite file: the service's own setting (or
        /// `SMARTMART_DATABASE_URL_FILE`, a file holding it).
        #[arg(long, env = "SMARTMART_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The service's data dir: its database is opened read-only, and
        /// `cache/modules/` keeps the compiled candidate.
        #[command(flatten)]
        cache: CacheArgs,
    },
}

/// How long `rules watch` lets a burst of saves settle before it rebuilds.
const WATCH_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// `rules replay --help`: where the inputs come from.
const REPLAY_HELP: &str = "\
Run a candidate rule on the inputs the active rule at the same place saw in the
last N stored orders, and print per order and in total: the active result and
the candidate's, the money difference, the candidate's errors and traps (cause
kind and escaped message), and its fuel, peak memory and wall time (p50, p90,
p99, max against its budgets). Exit code 0 when the candidate answered on
every order, 2 when it failed (trap, budget, error) on any, 1 when the replay
could not run (a malformed command line exits 2, as for every command).

Where the inputs come from: each settled order's stored invoice (CONFIRMED and
PAYMENT_FAILED orders) is turned back into the order the rules saw, as the
fraud worker does for its checks, and a warehouse selector's candidates are the
ones its order was offered, kept with the order; no personal data beyond what
the order holds is involved.

- Discount rules stack, each on what is left to pay. The candidate's input is
  the order with payable_cents = subtotal minus the invoice's discount lines
  granted by the rules before its place (each line names its module; the
  manifest of --plugins-dir gives the stack order). With --replace, the active
  result is what the replaced rule granted on the invoice (0 if nothing); a new
  rule (no --replace) goes at the end of the stack, or at --slot-position, and
  its active result is 0. The candidate's lines are capped as the pipeline caps
  them. Later rules are not re-run. The difference is the candidate's discount
  minus the active one, in cents: +120 = the customer pays 1.20 less with the
  candidate. Orders whose lines do not fit the manifest's stack (it changed
  since) are listed as skipped.
- Fraud checks run on the order as the fraud worker rebuilds it; the active
  result is the stored fraud review (all checks combined).
- A warehouse selector takes the place of the manifest's selector (--replace
  or neither) and sees the order and the candidate warehouses with the stock
  its order was offered (kept with each order since schema version 15, up to
  4096 bytes). Its plan is checked as the service checks it: a plan the
  service would refuse (a warehouse not offered, more than its stock, not
  every ordered unit exactly once) FAILS the order, as a trap or an error
  does; a valid plan is compared with what the order holds (same or DIFFERS,
  not a failure); cannot-fulfil is a refusal of the order. Orders with no
  kept input (older, or over the bound) are skipped, saying why.

Sales channels: a rule limited to channels (`channels = [\"mobile\"]` in the
manifest) ran on their orders only, so replacing it replays the last N orders
of those channels; --channel asks for a channel (and says which entry is meant
when the slot holds the module once per channel). A rule's window (`from`,
`until`) does not limit the replay: the candidate meets the orders whatever
their time.

The candidate starts from the replaced rule's manifest config and budgets;
--config and --budget go over them. The database is opened read-only (no
writer, no migration), so replay runs beside a running service and never
writes to it; a database of another schema version is refused.";

/// The project `rules test` and `rules watch` work on.
#[derive(Debug, clap::Args)]
pub(super) struct ProjectArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// A per-call budget, repeatable, as in the manifest's `budgets`.
    #[arg(long = "budget", value_parser = parse_key_value)]
    budgets: Vec<(String, String)>,
    #[command(flatten)]
    cache: CacheArgs,
}

impl ProjectArgs {
    fn open(&self) -> anyhow::Result<(RuleRuntime, Project, Budgets)> {
        Ok((self.cache.runtime()?, Project::open(&self.dir)?, budgets_from(&self.budgets)?))
    }
}

/// Where compiled modules are cached: the service's own cache, so a module
/// is compiled once for the tools and the service alike.
#[derive(Debug, clap::Args)]
pub(super) struct CacheArgs {
    /// The data dir whose `cache/modules/` keeps compiled modules.
    #[arg(long, env = "SMARTMART_DATA_DIR", default_value = "smartmart-data")]
    data_dir: PathBuf,
}

impl CacheArgs {
    /// The runtime of the rule tools: the data dir's cache, and a word on
    /// stderr while a module is compiled (a first load can take seconds).
    fn runtime(&self) -> anyhow::Result<RuleRuntime> {
        let cache_dir = crate::rules::engine::module_cache_dir(&self.data_dir);
        let runtime = RuleRuntime::new(RuntimeOptions { cache_dir: Some(cache_dir), max_instances: 8 })?;
        runtime.report_compiles(true);
        Ok(runtime)
    }
}

fn parse_world(s: &str) -> Result<World, String> {
    World::parse(s).ok_or_else(|| {
        format!(
            "unknown world `{s}` (one of: discount, warehouse, fraud, or the world names \
             discount-rule, warehouse-selector, fraud-check)"
        )
    })
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    s.parse().map_err(|_| format!("unknown sales channel `{s}` (one of: {})", Channel::names()))
}

fn parse_lang(s: &str) -> Result<Lang, String> {
    Lang::parse(s).ok_or_else(|| format!("unknown language `{s}` (one of: rust, js)"))
}

/// `--budget` pairs over the default budgets.
fn budgets_from(pairs: &[(String, String)]) -> anyhow::Result<Budgets> {
    budgets_over(Budgets::default(), pairs)
}

/// `--budget` pairs over `budgets`.
fn budgets_over(mut budgets: Budgets, pairs: &[(String, String)]) -> anyhow::Result<Budgets> {
    for (key, value) in pairs {
        let number = |what: &str| -> anyhow::Result<u64> {
            value
                .trim()
                .parse()
                .with_context(|| format!("--budget {key}: {what} must be a whole number, got {value:?}"))
        };
        match key.as_str() {
            "fuel" => budgets.fuel = number("fuel")?,
            "time_ms" => budgets.time_ms = number("time_ms")?,
            "memory_bytes" => budgets.memory_bytes = number("memory_bytes")? as usize,
            "output_bytes" => budgets.output_bytes = number("output_bytes")? as usize,
            _ => anyhow::bail!("--budget {key}: unknown budget (one of: fuel, memory_bytes, time_ms, output_bytes)"),
        }
    }
    budgets.validate().map_err(|reason| anyhow::anyhow!("--budget: {reason}"))?;
    Ok(budgets)
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (key, value) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))?;
    if key.is_empty() {
        return Err(format!("empty key in `{s}`"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Runs one `smartmart rules` command.
pub(super) fn run(command: RulesCommand) -> anyhow::Result<ExitCode> {
    match &command {
        RulesCommand::Keygen { file } => {
            let public = crate::rules::signing::keygen(file)?;
            println!("{public}");
            return Ok(ExitCode::SUCCESS);
        }
        RulesCommand::Sign { file, key } => {
            let sig = crate::rules::signing::sign_file(file, key)?;
            println!("{}", sig.display());
            return Ok(ExitCode::SUCCESS);
        }
        RulesCommand::New { name, world, lang, dir } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            let spec = scaffold::NewRule { name: name.clone(), world: *world, lang: *lang, dir: dir.clone() };
            let files = scaffold::create(&spec)?;
            println!("created {} ({} rule in {}, world {world}):", dir.display(), world.slot(), lang_name(*lang));
            for file in files {
                println!("  {file}");
            }
            println!("next: see {} (build, then `smartmart rules run … --expect`)", dir.join("README.md").display());
            return Ok(ExitCode::SUCCESS);
        }
        RulesCommand::JsEngine { out, project } => {
            let engine = crate::rules::js_engine::from_project(project, crate::rules::js_engine::COMPONENTIZE_QJS)?;
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(out, engine).with_context(|| format!("writing {}", out.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        RulesCommand::Types { world, wit, out } => {
            let text = match wit {
                Some(dir) => crate::rules::typescript::from_dir(dir, *world)?,
                None => crate::rules::typescript::from_sources(&scaffold::WIT, *world)?,
            };
            match out {
                Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    match command {
        RulesCommand::Test(args) => {
            let (runtime, project, budgets) = args.open()?;
            let round = project::round(&runtime, &project, budgets)?;
            Ok(if round.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        RulesCommand::Watch(args) => {
            let (runtime, project, budgets) = args.open()?;
            project::watch(&runtime, &project, budgets, WATCH_SETTLE)?;
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Check { file, world, json, cache } => {
            let runtime = cache.runtime()?;
            let report = runner::check(&runtime, &file, world)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("file:     {}", file.display());
                println!("world:    {}", report.world_name);
                println!("name:     {}", report.identity.name);
                println!("version:  {}", report.identity.version);
                println!("about:    {}", report.identity.description);
                println!("digest:   {}", report.identity.digest);
                println!("size:     {} bytes", report.size_bytes);
                println!("imports:");
                for import in &report.imports {
                    println!("  {import}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Replay {
            file,
            config,
            budgets,
            slot_position,
            replace,
            channels,
            last,
            plugins_dir,
            fraud_threshold_cents,
            database_url,
            json,
            cache,
        } => {
            if last == 0 {
                anyhow::bail!("--last 0: replay needs at least one order (--last N, N >= 1)");
            }
            let place = match (replace, slot_position) {
                (Some(name), _) => replay::Place::Replace(name),
                (None, Some(n)) => replay::Place::Position(n),
                (None, None) => replay::Place::End,
            };
            let runtime = cache.runtime()?;
            // Which world it implements decides the slot, hence its base config.
            let world = runner::load(&runtime, &file, None, ModuleConfig::new(), Budgets::default())?.identity().world;
            let manifest = crate::rules::manifest::Manifest::read(&plugins_dir)?;
            let asked = (!channels.is_empty()).then(|| Channels::of(&channels));
            let target = replay::resolve(&manifest, world, &place, asked)?;
            let mut module_config = target.base_config();
            if world == World::FraudCheck {
                module_config.entry("threshold_cents".into()).or_insert_with(|| fraud_threshold_cents.to_string());
            }
            module_config.extend(config);
            let budgets = budgets_over(target.base_budgets(), &budgets)?;
            let module = runner::load(&runtime, &file, Some(world), module_config, budgets)?;
            // As the service: the flag, else the variable or `SMARTMART_DATABASE_URL_FILE` (not both).
            let from_file = crate::config::secret_from_file("SMARTMART_DATABASE_URL", &crate::config::process_env)?;
            let database_url = database_url.filter(|url| !url.is_empty()).or(from_file);
            let store = match database_url {
                Some(url) => {
                    let options = PostgresOptions { read_only: true, pool_size: 1, ..PostgresOptions::default() };
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(Store::open_postgres(&url, &options))
                        .context("opening the PostgreSQL database read-only")?
                }
                None => {
                    let database = cache.data_dir.join("smartmart.sqlite");
                    Store::open_read_only(&database, &StoreOptions::default())
                        .with_context(|| format!("opening {} read-only", database.display()))?
                }
            };
            let orders = replay::recent_orders(&store, last, target.channels)?;
            if orders.is_empty() {
                anyhow::bail!(
                    "{} holds no settled order of {}: nothing to replay",
                    store.describe(),
                    if target.channels.is_all() { "any channel".to_string() } else { target.channels.to_string() }
                );
            }
            let report = replay::replay(&module, &target, &orders);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text(&target));
            }
            Ok(if report.candidate_failed() { ExitCode::from(2) } else { ExitCode::SUCCESS })
        }
        RulesCommand::Keygen { .. }
        | RulesCommand::Sign { .. }
        | RulesCommand::New { .. }
        | RulesCommand::Types { .. }
        | RulesCommand::JsEngine { .. } => {
            unreachable!("handled above")
        }
        RulesCommand::Run { file, input, expect, config, budgets, world, json, cache } => {
            let input_path = input;
            let input: runner::RunInput = read_json(&input_path)?;
            let expected: Option<runner::Expected> = expect.as_deref().map(read_json).transpose()?;
            let budgets = budgets_from(&budgets)?;
            let mut module_config: ModuleConfig = input.config.clone();
            module_config.extend(config);
            let runtime = cache.runtime()?;
            let module = runner::load(&runtime, &file, world, module_config, budgets)?;
            let report = runner::run(&module, &input)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            let Some(expected) = expected else {
                return Ok(if report.outcome == "failed" { ExitCode::from(2) } else { ExitCode::SUCCESS });
            };
            let expect_path = expect.expect("expected was read from it");
            let differences = runner::differences(&report, &expected);
            let mut verdict = if differences.is_empty() {
                format!("expect:   matches {}\n", expect_path.display())
            } else {
                format!("expect:   {} difference(s) from {}:\n", differences.len(), expect_path.display())
            };
            for difference in &differences {
                verdict.push_str(&format!("  {difference}\n"));
            }
            // JSON on stdout stays parseable; the verdict is for the person.
            if json {
                eprint!("{verdict}");
            } else {
                print!("{verdict}");
            }
            Ok(if differences.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Js => "JavaScript",
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
