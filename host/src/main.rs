//! The `smartmart` command: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use smartmart::rules::{ModuleConfig, RuleRuntime, RuntimeOptions, World, runner};

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
    /// Run the HTTP service (shared/API.md) until SIGTERM or SIGINT.
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
    /// Tools for rule authors: inspect and run one rule module locally.
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
    },
    /// Call a module on an example input and print its answer with the
    /// time, fuel and memory it used.
    Run {
        /// The component file (`.wasm`).
        file: PathBuf,
        /// Input JSON: `{"order": …, "candidates": […], "payment": {…}}`
        /// (see examples/orders/).
        #[arg(long)]
        input: PathBuf,
        /// Module configuration, repeatable: `--config code.WELCOME10=percent:10`.
        #[arg(long = "config", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// The world to load it as; by default, whichever it implements.
        #[arg(long, value_parser = parse_world)]
        world: Option<World>,
    },
}

fn parse_world(s: &str) -> Result<World, String> {
    World::ALL
        .into_iter()
        .find(|w| w.name() == s)
        .ok_or_else(|| format!("unknown world `{s}` (one of: discount-rule, warehouse-selector, fraud-check)"))
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
        _ => {}
    }
    let runtime = RuleRuntime::new(RuntimeOptions { max_instances: 8, ..RuntimeOptions::default() })?;
    match command {
        RulesCommand::Check { file, world, json } => {
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
        RulesCommand::Keygen { .. } | RulesCommand::Sign { .. } => unreachable!("handled above"),
        RulesCommand::Run { file, input, config, world } => {
            let text = std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?;
            let input: runner::RunInput =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", input.display()))?;
            let config: ModuleConfig = config.into_iter().collect();
            let module = runner::load(&runtime, &file, world, config)?;
            let report = runner::run(&module, &input)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.outcome == "failed" { ExitCode::from(2) } else { ExitCode::SUCCESS })
        }
    }
}
