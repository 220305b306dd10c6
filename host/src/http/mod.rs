//! The HTTP edge (docs/api.md; the document at `/openapi.json`): `app(state)`
//! builds the router; `serve` runs it until shutdown. Handlers only
//! translate: the pipeline and the store do the work.
//!
//! - [`auth`]: channel and admin keys, customer tokens;
//! - [`carts`], [`orders`], [`admin`], [`rollouts`], [`ops`]: the endpoints;
//! - [`dashboard`]: the operators' page at `/admin` (HTML, script, style sheet);
//! - [`server`]: the connection loop, its timeouts and connection limits; [`openapi`]: the document;
//! - [`error`]: the one error type; [`json`]: body extraction; [`validate`]: value checks;
//! - [`request_id`]: `X-Request-Id` and `traceparent`, for the answer, the log and the gateway.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod carts;
pub(crate) mod credentials;
pub(crate) mod dashboard;
pub(crate) mod error;
pub(crate) mod json;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod orders;
pub(crate) mod request_id;
pub(crate) mod rollouts;
pub(crate) mod server;
pub(crate) mod validate;

pub use credentials::Credentials;
pub use server::{ConnectionLimits, serve, serve_with};

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::Engine;
use crate::domain::status::ErrorCode;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub credentials: Arc<Credentials>,
    pub key_locks: Arc<orders::KeyLocks>,
    /// The OpenAPI document, rendered once.
    pub openapi: Arc<serde_json::Value>,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    pub shutting_down: CancellationToken,
}

impl AppState {
    pub fn new(
        engine: Arc<Engine>,
        credentials: Credentials,
        body_limit_bytes: usize,
        request_timeout: Duration,
    ) -> AppState {
        AppState {
            engine,
            credentials: Arc::new(credentials),
            key_locks: Arc::default(),
            openapi: Arc::new(openapi_document()),
            request_timeout,
            body_limit_bytes,
            shutting_down: CancellationToken::new(),
        }
    }
}

/// Every route with its OpenAPI description: the document cannot list a
/// route the router does not serve, nor miss one.
fn api_router() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(carts::put_cart, carts::get_cart))
        .routes(routes!(orders::post_order))
        .routes(routes!(orders::get_order))
        .routes(routes!(admin::put_customer))
        .routes(routes!(admin::put_product))
        .routes(routes!(admin::put_warehouse))
        .routes(routes!(admin::put_stock))
        .routes(routes!(admin::get_stock))
        .routes(routes!(admin::get_plugins))
        .routes(routes!(admin::get_experiments))
        .routes(routes!(admin::get_escalations))
        .routes(routes!(admin::get_rule_errors))
        .routes(routes!(admin::get_pending_payments))
        .routes(routes!(rollouts::get_rollouts))
        .routes(routes!(rollouts::promote))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style))
}

/// The OpenAPI 3.1 document of [`app`], as served at `/openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = serde_json::to_value(api_router().split_for_parts().1).expect("the OpenAPI document serialises");
    openapi::complete(&mut doc);
    doc
}

/// The service's router.
pub fn app(state: AppState) -> Router {
    let (router, _) = api_router().split_for_parts();
    router
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed here") })
        .layer(DefaultBodyLimit::max(state.body_limit_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Per request, outermost of every layer (so that it also sees the answers
/// the others make: 404, 405, 413, the timeout): the request id and trace
/// context ([`request_id`]), a span naming them, the request timeout, the
/// `X-Request-Id` answer header, a debug line without personal data, and
/// the metrics.
///
/// The span is at ERROR level: a span's level only decides whether it is
/// recorded, and every line written while the request is handled, a
/// warning or an error too, must carry its `request_id`.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let context = request_id::RequestContext::of(request.headers());
    let span = tracing::error_span!(
        "request",
        %method,
        %route,
        request_id = %context.id,
        trace_id = tracing::field::Empty,
        status = tracing::field::Empty,
        // Recorded only when the span is exported (`RequestContext::traced_by`).
        otel.kind = tracing::field::Empty,
    );
    let context = Arc::new(context.traced_by(&span));
    if let Some(trace) = &context.trace {
        span.record("trace_id", trace.trace_id.as_str());
    }
    let timeout = state.request_timeout;
    let handled = async move {
        match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                ApiError::new(ErrorCode::StageTimeout, "the request took longer than the configured request timeout")
                    .into_response()
            }
        }
    };
    let mut response = request_id::scope(context.clone(), handled.instrument(span.clone())).await;
    if let Ok(id) = HeaderValue::from_str(&context.id) {
        response.headers_mut().insert(request_id::X_REQUEST_ID, id);
    }
    let status = response.status().as_u16();
    span.record("status", status);
    let seconds = started.elapsed().as_secs_f64();
    // Not `info`: one line per request is too many at thousands a second;
    // failures are logged where they happen (5xx: `error::ApiError`).
    span.in_scope(|| tracing::debug!(status, elapsed_ms = seconds * 1e3, "request"));
    let labels = crate::metrics::RequestLabels { method, route, status: status.to_string() };
    state.engine.metrics().http_request(&labels, seconds);
    response
}
