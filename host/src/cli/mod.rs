//! The `smartmart` command line, one module per command group: `serve`
//! (the service), `rules` (the rule author's and operator's tools),
//! `demo` and `soak`; `token` is here. `main.rs` only calls [`main`].

mod demo;
mod logging;
mod rules;
pub(crate) mod serve;
pub(crate) mod soak;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        config: crate::config::ServeConfig,
        /// A TOML file with the same keys (file < environment, `<NAME>_FILE` < command line).
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
    Rules(rules::RulesCommand),
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

/// The `smartmart` command: parses the command line, sets up the log,
/// runs the command.
pub fn main() -> ExitCode {
    let outcome = prepare(Cli::parse().command).and_then(|command| {
        let traces = logging::install(&command.log)?;
        let outcome = run(command.command);
        // The command's runtime is gone: every span has ended and is queued.
        if let Some(traces) = traces {
            traces.shutdown();
        }
        outcome
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command ready to run, and how it logs.
struct Prepared {
    command: Command,
    log: logging::LogSettings,
}

/// Reads what the log needs before anything logs: `serve`'s configuration
/// file is merged into its settings here (so that `log_format` may come
/// from the file, the environment or the flag), the other commands read
/// `SMARTMART_LOG_FORMAT` alone.
fn prepare(command: Command) -> anyhow::Result<Prepared> {
    Ok(match command {
        Command::Serve { config, config_file, dev, demo_data } => {
            // `<NAME>_FILE` secrets rank with the environment: above the file, below the flags.
            let config = config.with_secret_files(&crate::config::process_env)?;
            let config = match config_file {
                Some(path) => config.or(crate::config::ServeConfig::from_file(&path)?),
                None => config,
            };
            let log =
                logging::LogSettings::serve(config.log_format.unwrap_or_default(), config.otlp_traces_endpoint()?);
            Prepared { command: Command::Serve { config, config_file: None, dev, demo_data }, log }
        }
        other => Prepared { command: other, log: logging::LogSettings::tool(crate::config::LogFormat::from_env()?) },
    })
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Rules(command) => rules::run(command),
        Command::Serve { config, config_file: _, dev, demo_data } => {
            tokio::runtime::Runtime::new()?.block_on(serve::run(config, dev, demo_data))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { customer_id, data_dir, ttl_secs } => {
            let secret = serve::identity_secret_for_tokens(&data_dir)?;
            println!(
                "{}",
                crate::pipeline::validate::mint_token(
                    secret.as_bytes(),
                    &customer_id,
                    std::time::Duration::from_secs(ttl_secs)
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { data_dir, plugins_dir, dataset } => {
            let data_dir = demo::fresh_data_dir(data_dir.as_deref())?;
            tokio::runtime::Runtime::new()?.block_on(demo::run(&data_dir, &plugins_dir, &dataset))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Soak { data_dir, plugins_dir, dataset, orders, tasks } => {
            let options = soak::SoakOptions { data_dir, plugins_dir, dataset, orders, tasks };
            tokio::runtime::Runtime::new()?.block_on(soak::run(&options))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
