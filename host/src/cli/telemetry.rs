//! Traces over OTLP/HTTP (`SMARTMART_OTLP_ENDPOINT`, `serve` only): the
//! service's own `tracing` spans, exported as OpenTelemetry spans.
//!
//! - **What is exported**: the spans of the `smartmart` crate at `DEBUG`
//!   and above (`request`, `order`, a span per pipeline stage, a span per
//!   rule call; see the README, "Traces"), and the warnings and errors
//!   written inside them, as span events. Nothing of the dependencies, and
//!   no other log line: the log keeps its own filter (`RUST_LOG`), and the
//!   stage and rule spans (`DEBUG`) stay out of it unless `RUST_LOG` asks.
//! - **How**: the SDK's batch processor, on a thread of its own: a span is
//!   handed over when it ends (`try_send` into a bounded queue, 2048 spans
//!   by default: a full queue drops the span, it never blocks an order),
//!   and batches go out every 5 s (`OTEL_BSP_SCHEDULE_DELAY`, and the other
//!   `OTEL_BSP_*` settings) as protobuf `POST <endpoint>/v1/traces`, through
//!   reqwest's blocking client (rustls, the system's roots) on that thread.
//!   [`Exporter::shutdown`] flushes what is queued when the command ends.
//!   A batch the collector does not take is dropped; the SDK logs it
//!   (`internal-logs`: an error line of target `opentelemetry_sdk`).
//! - **Settings the SDK reads itself**: `OTEL_SERVICE_NAME` (else
//!   `smartmart`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`
//!   (e.g. a collector's API key), `OTEL_EXPORTER_OTLP_TIMEOUT`,
//!   `OTEL_TRACES_SAMPLER` (default: parent-based, always on).
//!
//! Unset, nothing here runs: no layer, no thread, and the `DEBUG` spans are
//! disabled at their call sites like any other line the log filters out.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::registry::Registry;

/// The service name when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` gives one.
const SERVICE_NAME: &str = "smartmart";

/// What the SDK names a service nobody named.
const UNNAMED_SERVICE: &str = "unknown_service";

/// The export pipeline: flushed by [`Exporter::shutdown`].
pub(super) struct Exporter {
    provider: SdkTracerProvider,
}

/// The exporter to `traces_endpoint` (the whole URL, `…/v1/traces`), and
/// the layer that hands it the service's spans.
pub(super) fn exporter(
    traces_endpoint: &str,
) -> anyhow::Result<(Exporter, Box<dyn Layer<Registry> + Send + Sync + 'static>)> {
    let spans = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_endpoint)
        .build()
        .with_context(|| format!("SMARTMART_OTLP_ENDPOINT: cannot export traces to {traces_endpoint}"))?;
    let provider = SdkTracerProvider::builder().with_batch_exporter(spans).with_resource(resource()).build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("smartmart"))
        // Source paths and line numbers say nothing an operator reads a trace for.
        .with_location(false)
        .with_filter(exported())
        .boxed();
    Ok((Exporter { provider }, layer))
}

impl Exporter {
    /// Exports what is still queued and stops the processor's thread
    /// (bounded by the SDK's shutdown timeout). Called once the command's
    /// runtime has ended: the spans of the last requests are closed by then.
    pub(super) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "could not flush the last traces to the OTLP endpoint");
        }
    }
}

/// The filter of the exported spans and events: [`is_exported`].
fn exported() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    FilterFn::new(|metadata: &Metadata<'_>| is_exported(metadata.target(), *metadata.level(), metadata.is_span()))
        .with_max_level_hint(LevelFilter::DEBUG)
}

/// The service's spans at `DEBUG` and above, and the warnings and errors
/// written inside them: nothing of the dependencies (the HTTP client the
/// exporter itself uses among them).
fn is_exported(target: &str, level: Level, is_span: bool) -> bool {
    let ours = target == "smartmart" || target.starts_with("smartmart::");
    ours && level <= if is_span { Level::DEBUG } else { Level::WARN }
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named
/// `smartmart` unless they name it, with the service's version.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str() == UNNAMED_SERVICE);
    let builder =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if unnamed { builder.with_service_name(SERVICE_NAME).build() } else { builder.build() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_spans_and_its_warnings_are_exported_and_nothing_else() {
        assert!(is_exported("smartmart::pipeline", Level::DEBUG, true), "a stage");
        assert!(is_exported("smartmart::http", Level::ERROR, true), "the request");
        assert!(is_exported("smartmart", Level::INFO, true));
        assert!(!is_exported("smartmart::rules", Level::TRACE, true));
        assert!(is_exported("smartmart::pipeline", Level::WARN, false), "a warning, as a span event");
        assert!(!is_exported("smartmart::pipeline", Level::INFO, false), "not every log line");
        assert!(!is_exported("hyper::client", Level::ERROR, true), "not the dependencies");
        assert!(!is_exported("smartmartian", Level::ERROR, true));
    }
}
