//! The `smartmart` command: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use smartmart::rules::scaffold::{self, Lang};
use smartmart::rules::{Budgets, ModuleConfig, RuleRuntime, RuntimeOptions, World, runner};

/// SmartMart order fulfillment engine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `Serve` carries the whole configuration; the enum lives once, in `main`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (the API of docs/api.md) until SIGTERM or SIGINT.
    Serve {
        #[command(flatten)]
        config: smartmart::config::ServeConfig,
        /// A TOML file with the same keys (file < environment < command line).
        #[arg(long = "config")]
        config_file: Option<PathBuf>,
        /// Without configured credentials, generate random ones (kept in the
        /// data dir) and print them, instead of refusing to start.
        #[arg(long)]
        dev: bool,
        /// Load this data set (e.g. examples/demo/dataset.json) if the store has no customers yet.
        #[arg(long)]
        demo_data: Option<PathBuf>,
    },
    /// Sign a customer identity token (HS256, 1 hour) with the configured
    /// secret (SMARTMART_IDENTITY_SECRET) or the `serve --dev` credentials.
    Token {
        customer_id: String,
        /// The data dir of a `serve --dev` instance.
        #[arg(long, env = "SMARTMART_DATA_DIR", default_value = "smartmart-data")]
        data_dir: PathBuf,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Tools for rule authors: start a rule project, inspect and run one
    /// rule module locally, sign modules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Load the demo data set into a fresh data dir and run the use cases
    /// UC1–UC5 through the real pipeline, printing each outcome.
    Demo {
        /// Data dir (must be empty or absent); default: a new temp dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Plug-in directory with `manifest.toml`.
        #[arg(long, default_value = "plugins/bundled")]
        plugins_dir: PathBuf,
        /// The demo data set.
        #[arg(long, default_value = "examples/demo/dataset.json")]
        dataset: PathBuf,
    },
    /// Crash drills: place orders in a loop on a data dir (see `soak.rs`).
    #[command(hide = true)]
    Soak {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "plugins/bundled")]
        plugins_dir: PathBuf,
        /// Loaded only into an empty store.
        #[arg(long, default_value = "examples/demo/dataset.json")]
        dataset: PathBuf,
        #[arg(long, default_value_t = 1000)]
        orders: usize,
        #[arg(long, default_value_t = 4)]
        tasks: usize,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
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
        /// over the order, built with ComponentizeJS; needs Node.js and npm).
        #[arg(long, default_value = "rust", value_parser = parse_lang)]
        lang: Lang,
        /// The project folder (created if absent, else it must be empty); default: ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
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
}

/// Where compiled modules are cached: the service's own cache, so a module
/// is compiled once for the tools and the service alike.
#[derive(Debug, clap::Args)]
struct CacheArgs {
    /// The data dir whose `cache/modules/` keeps compiled modules.
    #[arg(long, env = "SMARTMART_DATA_DIR", default_value = "smartmart-data")]
    data_dir: PathBuf,
}

impl CacheArgs {
    fn runtime(&self) -> anyhow::Result<RuleRuntime> {
        let cache_dir = smartmart::rules::engine::module_cache_dir(&self.data_dir);
        RuleRuntime::new(RuntimeOptions { cache_dir: Some(cache_dir), max_instances: 8 })
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

fn parse_lang(s: &str) -> Result<Lang, String> {
    Lang::parse(s).ok_or_else(|| format!("unknown language `{s}` (one of: rust, js)"))
}

/// `--budget` pairs over the default budgets.
fn budgets_from(pairs: &[(String, String)]) -> anyhow::Result<Budgets> {
    let mut budgets = Budgets::default();
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Rules(command) => rules(command),
        Command::Serve { config, config_file, dev, demo_data } => {
            let config = match config_file {
                Some(path) => config.or(smartmart::config::ServeConfig::from_file(&path)?),
                None => config,
            };
            tokio::runtime::Runtime::new()?.block_on(smartmart::serve::run(config, dev, demo_data))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { customer_id, data_dir, ttl_secs } => {
            let secret = smartmart::serve::identity_secret_for_tokens(&data_dir)?;
            println!(
                "{}",
                smartmart::pipeline::validate::mint_token(
                    secret.as_bytes(),
                    &customer_id,
                    std::time::Duration::from_secs(ttl_secs)
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { data_dir, plugins_dir, dataset } => {
            let data_dir = smartmart::demo::fresh_data_dir(data_dir.as_deref())?;
            tokio::runtime::Runtime::new()?.block_on(smartmart::demo::run(&data_dir, &plugins_dir, &dataset))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Soak { data_dir, plugins_dir, dataset, orders, tasks } => {
            let options = smartmart::soak::SoakOptions { data_dir, plugins_dir, dataset, orders, tasks };
            tokio::runtime::Runtime::new()?.block_on(smartmart::soak::run(&options))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rules(command: RulesCommand) -> anyhow::Result<ExitCode> {
    match &command {
        RulesCommand::Keygen { file } => {
            let public = smartmart::rules::signing::keygen(file)?;
            println!("{public}");
            return Ok(ExitCode::SUCCESS);
        }
        RulesCommand::Sign { file, key } => {
            let sig = smartmart::rules::signing::sign_file(file, key)?;
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
        _ => {}
    }
    match command {
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
        RulesCommand::Keygen { .. } | RulesCommand::Sign { .. } | RulesCommand::New { .. } => {
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
