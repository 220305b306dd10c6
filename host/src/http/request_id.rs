//! Request ids and trace context (docs/api.md, "Errors"): what ties an
//! answer, the log lines written for it and the calls made to the payment
//! gateway to one request.
//!
//! - **`X-Request-Id`.** A request may carry one: 1 to 128 visible ASCII
//!   characters (0x21–0x7E), kept as sent. Anything else (empty, longer, a
//!   space, a control or non-ASCII byte, the header given twice) is
//!   replaced by a generated `req_` + UUIDv7 (simple form), as is a missing
//!   one. Every answer carries the id in its `X-Request-Id` header, every
//!   fresh error body as `error.request_id`, and the `request` span of the
//!   log (`request_id`), which the order's own span and its rule calls sit
//!   in.
//! - **`traceparent`** (W3C Trace Context, version `00` only): a valid
//!   `00-<32 hex>-<16 hex>-<2 hex>` (lowercase hex, trace id and parent id
//!   not all zeros) is taken up: the request span logs its `trace_id`, and
//!   the gateway calls of the order carry a `traceparent` with the same
//!   trace id and flags and a new parent id, this request's own span id (one
//!   per request, the parent of its gateway calls). A malformed one is
//!   ignored, as is a missing one: without an exporter no trace is started.
//! - **Exported traces** (`SMARTMART_OTLP_ENDPOINT`, see
//!   [`RequestContext::traced_by`]): the request span is the exported server
//!   span, its parent the client's span when a valid `traceparent` came,
//!   else the root of a new trace. Its ids are then the request's: the
//!   `trace_id` logged, and the trace id, parent id (the exported request
//!   span) and flags (the sampling decision) the gateway calls carry, with
//!   or without an incoming `traceparent`.
//!
//! The id travels in a task-local ([`scope`], read by [`current`]) set by
//! the `observe` middleware around the whole handling of the request,
//! timeouts included, so that the error body (`super::error`) is written
//! with it wherever the error is made.

use std::sync::Arc;

use axum::http::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header both ways, and to the gateway.
pub const X_REQUEST_ID: &str = "x-request-id";

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// The longest `X-Request-Id` kept.
pub const MAX_REQUEST_ID: usize = 128;

/// What identifies one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The client's `X-Request-Id` when valid, else a generated one.
    pub id: String,
    /// The request's trace: the client's, when it sent a valid
    /// `traceparent`; with an exporter, the exported one (the client's
    /// continued, or a new one).
    pub trace: Option<TraceParent>,
}

impl RequestContext {
    /// The context of a request with these headers.
    pub fn of(headers: &HeaderMap) -> RequestContext {
        let id = single(headers, X_REQUEST_ID)
            .filter(|value| is_valid_request_id(value.as_bytes()))
            .map_or_else(generate_request_id, |value| {
                String::from_utf8(value.as_bytes().to_vec()).unwrap_or_else(|_| generate_request_id())
            });
        let trace = single(headers, TRACEPARENT).and_then(|value| TraceParent::parse(value.to_str().ok()?));
        RequestContext { id, trace }
    }

    /// The `traceparent` to send downstream: the request's trace, if it has one.
    pub fn outgoing_traceparent(&self) -> Option<String> {
        self.trace.as_ref().map(TraceParent::outgoing)
    }

    /// This request as its span `span` is exported, when traces are: the span
    /// continues the client's trace (its parent the client's span) or starts
    /// one, becomes a server span, and its ids become the request's trace
    /// (the trace id, this request's span id, the sampling flags). Without an
    /// exporter `set_parent` fails (there is no OpenTelemetry layer) and the
    /// request stays as it came. Call before `span` is first entered: a
    /// started span's parent and kind are fixed.
    pub fn traced_by(mut self, span: &tracing::Span) -> RequestContext {
        let parent = self.trace.as_ref().and_then(TraceParent::remote_context).unwrap_or_default();
        if span.set_parent(parent).is_err() {
            return self;
        }
        span.record("otel.kind", "server");
        let exported = span.context().span().span_context().clone();
        if exported.is_valid() {
            self.trace = Some(TraceParent {
                trace_id: exported.trace_id().to_string(),
                parent_id: self.trace.and_then(|client| client.parent_id),
                flags: format!("{:02x}", exported.trace_flags().to_u8()),
                span_id: exported.span_id().to_string(),
            });
        }
        self
    }
}

/// The value of a header given exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a axum::http::HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// 1 to 128 visible ASCII characters.
pub fn is_valid_request_id(bytes: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// `req_` and a UUIDv7 (time-ordered, so ids sort by arrival).
pub fn generate_request_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
}

/// A request's trace: a valid incoming `traceparent` or the exported
/// trace, and this request's own span id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The caller's span (16 lowercase hex digits), when the client sent one.
    pub parent_id: Option<String>,
    /// 2 lowercase hex digits (`01`: sampled).
    pub flags: String,
    /// This request's span id: the parent of the calls it makes.
    pub span_id: String,
}

impl TraceParent {
    /// `00-<trace id>-<parent id>-<flags>`, or `None` when malformed.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let valid = parts.next().is_none()
            && version == "00"
            && lower_hex(trace_id, 32)
            && lower_hex(parent_id, 16)
            && lower_hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        valid.then(|| TraceParent {
            trace_id: trace_id.to_string(),
            parent_id: Some(parent_id.to_string()),
            flags: flags.to_string(),
            span_id: new_span_id(),
        })
    }

    /// The header for a call made by this request: same trace, this
    /// request's span as the parent.
    pub fn outgoing(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    /// The client's span as the remote parent of an exported span.
    fn remote_context(&self) -> Option<opentelemetry::Context> {
        let span_context = SpanContext::new(
            TraceId::from_hex(&self.trace_id).ok()?,
            SpanId::from_hex(self.parent_id.as_deref()?).ok()?,
            TraceFlags::new(u8::from_str_radix(&self.flags, 16).ok()?),
            true,
            TraceState::default(),
        );
        Some(opentelemetry::Context::new().with_remote_span_context(span_context))
    }
}

/// 16 lowercase hex digits, not all zeros.
fn new_span_id() -> String {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return format!("{id:016x}");
        }
    }
}

tokio::task_local! {
    /// The request being answered by this task.
    static CURRENT: Arc<RequestContext>;
}

/// Runs `future` as the handling of the request of `context`.
pub async fn scope<F: Future>(context: Arc<RequestContext>, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// The request this task is answering, if any.
pub fn current() -> Option<Arc<RequestContext>> {
    CURRENT.try_with(Arc::clone).ok()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn a_valid_request_id_is_kept_and_anything_else_replaced() {
        let kept = |value: &[u8]| RequestContext::of(&headers(&[(X_REQUEST_ID, value)])).id;
        assert_eq!(kept(b"abc-123"), "abc-123");
        assert_eq!(kept(b"!~"), "!~");
        let longest = "x".repeat(128);
        assert_eq!(kept(longest.as_bytes()), longest);
        for bad in [&b"x".repeat(129)[..], b"has space", b"tab\there", "caf\u{e9}".as_bytes(), b"\x80"] {
            let id = kept(bad);
            assert!(id.starts_with("req_") && id.len() == 36, "{bad:?} -> {id}");
        }
        let missing = RequestContext::of(&HeaderMap::new()).id;
        assert!(missing.starts_with("req_"), "{missing}");
        let twice = RequestContext::of(&headers(&[(X_REQUEST_ID, b"a"), (X_REQUEST_ID, b"b")])).id;
        assert!(twice.starts_with("req_"), "{twice}");
        assert_ne!(RequestContext::of(&HeaderMap::new()).id, missing, "generated ids differ");
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_parent_id() {
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = RequestContext::of(&headers(&[(TRACEPARENT, sent.as_bytes())]));
        let trace = context.trace.clone().expect("taken up");
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        let outgoing = context.outgoing_traceparent().unwrap();
        let parts: Vec<&str> = outgoing.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1], parts[3]), ("00", trace.trace_id.as_str(), "01"));
        assert_eq!(parts[2].len(), 16);
        assert_ne!(parts[2], "00f067aa0ba902b7", "a new span id, not the caller's");
        assert_ne!(parts[2], "0000000000000000");
    }

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let context = RequestContext::of(&headers(&[(TRACEPARENT, b"nonsense")]));
        assert_eq!(context.trace, None);
        assert_eq!(context.outgoing_traceparent(), None);
    }

    /// Runs `f` under a subscriber with the exporter's layer (an SDK
    /// provider without an exporter: the ids are what is looked at), and
    /// returns what it made with the request span's exported span id.
    fn exported(f: impl FnOnce(&tracing::Span) -> RequestContext) -> (RequestContext, String) {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = tracing::error_span!("request", otel.kind = tracing::field::Empty);
            let context = f(&span);
            (context, span.context().span().span_context().span_id().to_string())
        })
    }

    #[test]
    fn an_exported_request_continues_the_callers_trace_from_its_own_span() {
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let incoming = RequestContext::of(&headers(&[(TRACEPARENT, sent.as_bytes())]));
        let (context, span_id) = exported(|span| incoming.clone().traced_by(span));
        let trace = context.trace.clone().expect("traced");
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "the caller's trace");
        assert_eq!(trace.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(trace.flags, "01", "sampled, as the caller asked");
        assert_eq!(trace.span_id, span_id, "the exported request span is the gateway calls' parent");
        assert_ne!(trace.span_id, incoming.trace.expect("taken up").span_id, "not the id made without an exporter");
        assert_eq!(context.outgoing_traceparent(), Some(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span_id}-01")));
        assert_eq!(context.id, incoming.id);

        // A caller that did not sample: neither does the service, and it says so downstream.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let incoming = RequestContext::of(&headers(&[(TRACEPARENT, unsampled.as_bytes())]));
        let (context, _) = exported(|span| incoming.traced_by(span));
        assert!(context.outgoing_traceparent().is_some_and(|t| t.ends_with("-00")), "{context:?}");
    }

    #[test]
    fn an_exported_request_without_a_traceparent_starts_a_trace() {
        let (context, span_id) = exported(|span| RequestContext::of(&HeaderMap::new()).traced_by(span));
        let trace = context.trace.clone().expect("a new trace");
        assert!(trace.trace_id.len() == 32 && trace.trace_id.bytes().any(|b| b != b'0'), "{trace:?}");
        assert_eq!(trace.parent_id, None, "a root span");
        let expected = format!("00-{}-{span_id}-01", trace.trace_id);
        assert_eq!(context.outgoing_traceparent(), Some(expected), "the gateway hears the exported trace");
    }

    #[test]
    fn without_an_exporter_a_request_is_traced_as_it_came() {
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::error_span!("request", otel.kind = tracing::field::Empty);
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let incoming = RequestContext::of(&headers(&[(TRACEPARENT, sent.as_bytes())]));
        assert_eq!(incoming.clone().traced_by(&span), incoming);
        assert_eq!(RequestContext::of(&HeaderMap::new()).traced_by(&span).trace, None, "no trace is started");
    }

    #[tokio::test]
    async fn the_current_request_is_known_inside_its_scope_only() {
        assert!(current().is_none());
        let context = Arc::new(RequestContext { id: "req-1".into(), trace: None });
        let seen = scope(context, async { current().map(|c| c.id.clone()) }).await;
        assert_eq!(seen.as_deref(), Some("req-1"));
        assert!(current().is_none());
    }
}
