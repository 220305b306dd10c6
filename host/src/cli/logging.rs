//! The log: one `tracing` subscriber writing to standard error, set up once
//! by [`super::main`] before the command runs.
//!
//! - **Format** (`SMARTMART_LOG_FORMAT`, `serve`'s `log_format` key and
//!   `--log-format` flag): `text` (the default), or `json`, one object per
//!   line: `timestamp`, `level`, `target`, `message` and the event's own
//!   fields at the top level, and `spans`, the fields of every span the
//!   event happened in, outermost first (`request` with its `request_id`,
//!   `order` with its `order_id`, …).
//! - **Colour** only when standard error is a terminal, in both formats: a
//!   file or a pipe never gets escape codes.
//! - **Which lines**: `RUST_LOG` (an `EnvFilter`), else the command's
//!   default: `warn,smartmart=info` for `serve` (the service's own
//!   start-up, reload, reconciliation and shutdown lines, nothing per order
//!   when all goes well), `warn` for the tools. An unreadable `RUST_LOG` is
//!   reported and the default used.
//! - **Traces** (`serve` with `SMARTMART_OTLP_ENDPOINT`): a second layer
//!   beside the log's, with a filter of its own, exports the spans over
//!   OTLP (`super::telemetry`). Each layer sees only what its own filter
//!   lets through, so the log writes the same lines with or without it
//!   (its `request` span then also has `otel.kind`, the exported span's kind).
//!
//! `serve` reads its format before the subscriber exists: `super::prepare`
//! merges the configuration file into the command line and environment
//! first, and only then is anything logged.

use std::io::IsTerminal as _;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::Registry;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use super::telemetry;
use crate::config::LogFormat;

/// `serve`'s lines without `RUST_LOG`: the service's own at `info`, its
/// dependencies' at `warn`.
pub(super) const SERVE_DEFAULT_FILTER: &str = "warn,smartmart=info";

/// The tools' lines without `RUST_LOG`.
pub(super) const TOOL_DEFAULT_FILTER: &str = "warn";

/// How a command logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LogSettings {
    pub format: LogFormat,
    /// The filter when `RUST_LOG` is unset or empty.
    pub default_filter: &'static str,
    /// Where traces are exported (`…/v1/traces`), when they are (`serve` only).
    pub traces_endpoint: Option<String>,
}

impl LogSettings {
    pub fn serve(format: LogFormat, traces_endpoint: Option<String>) -> LogSettings {
        LogSettings { format, default_filter: SERVE_DEFAULT_FILTER, traces_endpoint }
    }

    pub fn tool(format: LogFormat) -> LogSettings {
        LogSettings { format, default_filter: TOOL_DEFAULT_FILTER, traces_endpoint: None }
    }
}

/// The filter: `RUST_LOG` when set and readable, else the default (and why
/// `RUST_LOG` was not used, to be reported once the log exists).
fn filter(rust_log: Option<&str>, default: &str) -> (EnvFilter, Option<String>) {
    match rust_log.map(str::trim).filter(|value| !value.is_empty()) {
        None => (EnvFilter::new(default), None),
        Some(value) => match EnvFilter::try_new(value) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new(default), Some(format!("RUST_LOG ignored ({error}); using `{default}`"))),
        },
    }
}

/// Installs the subscriber for the process: the log, and the trace
/// exporter when one is configured (returned, to be flushed at the end).
pub(super) fn install(settings: &LogSettings) -> anyhow::Result<Option<telemetry::Exporter>> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, ignored) = filter(rust_log.as_deref(), settings.default_filter);
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let log = match settings.format {
        LogFormat::Text => log.with_filter(filter).boxed(),
        LogFormat::Json => {
            log.json().flatten_event(true).with_current_span(false).with_span_list(true).with_filter(filter).boxed()
        }
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![log];
    let exporter = match &settings.traces_endpoint {
        Some(endpoint) => {
            let (exporter, layer) = telemetry::exporter(endpoint)?;
            layers.push(layer);
            Some(exporter)
        }
        None => None,
    };
    tracing_subscriber::registry().with(layers).init();
    if let Some(why) = ignored {
        tracing::warn!("{why}");
    }
    if let Some(endpoint) = &settings.traces_endpoint {
        tracing::info!(endpoint, "exporting traces over OTLP/HTTP");
    }
    Ok(exporter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_and_an_empty_or_bad_one_falls_back_to_the_default() {
        let shown = |rust_log: Option<&str>| {
            let (filter, ignored) = filter(rust_log, SERVE_DEFAULT_FILTER);
            (filter.to_string(), ignored.is_some())
        };
        assert_eq!(shown(None), (EnvFilter::new(SERVE_DEFAULT_FILTER).to_string(), false));
        assert_eq!(shown(Some("  ")), shown(None));
        assert_eq!(shown(Some("debug")), ("debug".to_string(), false));
        let (fallback, ignored) = shown(Some("smartmart=loud"));
        assert_eq!(fallback, shown(None).0);
        assert!(ignored);
    }

    #[test]
    fn serve_logs_its_own_info_lines_and_the_tools_warnings_only() {
        assert_eq!(LogSettings::serve(LogFormat::Json, None).default_filter, "warn,smartmart=info");
        assert_eq!(LogSettings::tool(LogFormat::Text).default_filter, "warn");
    }
}
